-- NVIDIA H100 SXM5 80GB. Datasheet peaks (dense); efficiency factors are the
-- H800 microbenchmark ratios (same SM90 silicon and kernels; docs/planner.md).
return {
  name = "h100", label = "NVIDIA H100 SXM5 80GB", gpus_per_node = 8,
  peak = { bf16 = 989e12, fp8 = 1979e12, int8 = 1979e12 }, -- H100 SXM datasheet, dense
  mem = { capacity = 80e9, bw = 3.35e12 },                  -- HBM3 80 GB, 3.35 TB/s
  intra = { bw = 450e9, latency = 3e-6 },                   -- NVLink 4: 900 GB/s bidirectional
  inter = { bw = 50e9, latency = 5e-6 },                    -- 400 Gb/s IB NDR per GPU
  eff_from = "h800",
  sms = 132, comm_sms = 24, -- SXM5 Hopper: 132 SMs; DeepEP normal kernels reserve 24 (see h800.lua)
  price = 2.5,
}
