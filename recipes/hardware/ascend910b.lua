-- Huawei Ascend 910B (Atlas 800T A2 node of 8 NPUs). Vendor figures: FP16/BF16
-- ~313 TFLOPS (910B3), INT8 ~626 TOPS; no FP8 (FP8 checkpoints run as W8A8
-- INT8); HBM2e 64 GB at ~1.6 TB/s; HCCS 392 GB/s per chip (196 per
-- direction); 200 Gb/s RoCE per NPU. No published microbenchmarks of the
-- kind used for Hopper: the efficiency factors are the H800 ratios, flagged
-- `borrowed` (treat results as indicative only).
return {
  name = "ascend910b", label = "Huawei Ascend 910B 64GB", gpus_per_node = 8,
  peak = { bf16 = 313e12, int8 = 626e12 },
  mem = { capacity = 64e9, bw = 1.6e12 },
  intra = { bw = 196e9, latency = 5e-6 },
  inter = { bw = 25e9, latency = 8e-6 },
  eff_from = "h800", borrowed = true,
  price = 1.5,
}
