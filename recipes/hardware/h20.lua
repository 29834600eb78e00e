-- NVIDIA H20 96GB (HGX H20). Datasheet peaks (dense): BF16 148 TFLOPS,
-- FP8 296 TFLOPS, INT8 296 TOPS; HBM3 96 GB at 4.0 TB/s; NVLink 900 GB/s.
-- Efficiency factors: the H800 microbenchmark ratios (same SM90 kernels);
-- the DeepEP low-latency timings are NIC-bound, so they carry over too.
return {
  name = "h20", label = "NVIDIA H20 96GB", gpus_per_node = 8,
  peak = { bf16 = 148e12, fp8 = 296e12, int8 = 296e12 },
  mem = { capacity = 96e9, bw = 4.0e12 },
  intra = { bw = 450e9, latency = 3e-6 },
  inter = { bw = 50e9, latency = 5e-6 },   -- 400 Gb/s NIC per GPU
  eff_from = "h800",
  -- 78 SMs (not in NVIDIA's datasheet; reported by Geekbench 6 listings of the H20);
  -- DeepEP's normal kernels reserve 24 of them as on H800 (see h800.lua)
  sms = 78, comm_sms = 24,
  price = 1.2,
}
