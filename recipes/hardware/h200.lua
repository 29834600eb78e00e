-- NVIDIA H200 SXM 141GB. Datasheet peaks (dense); efficiency factors are the
-- H800 microbenchmark ratios (same SM90 kernels; docs/planner.md).
return {
  name = "h200", label = "NVIDIA H200 SXM 141GB", gpus_per_node = 8,
  peak = { bf16 = 989e12, fp8 = 1979e12, int8 = 1979e12 }, -- H200 SXM datasheet, dense
  mem = { capacity = 141e9, bw = 4.8e12 },                  -- HBM3e 141 GB, 4.8 TB/s
  intra = { bw = 450e9, latency = 3e-6 },                   -- NVLink 4: 900 GB/s bidirectional
  inter = { bw = 50e9, latency = 5e-6 },                    -- 400 Gb/s IB NDR per GPU
  eff_from = "h800",
  sms = 132, comm_sms = 24, -- SXM5 Hopper: 132 SMs; DeepEP normal kernels reserve 24 (see h800.lua)
  price = 3.0,
}
