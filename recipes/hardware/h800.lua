-- NVIDIA H800 SXM5 80GB (the GPU of DeepSeek's published deployment).
-- Datasheet numbers are dense (no sparsity). Efficiency factors are ratios of
-- published microbenchmarks on H800 to these peaks, fixed here once; they are
-- never fitted to end-to-end results (docs/planner.md).
return {
  name = "h800", label = "NVIDIA H800 SXM5 80GB", gpus_per_node = 8,
  -- H800 SXM keeps H100 SXM's tensor-core peaks (NVIDIA H100/H800 datasheet):
  -- BF16 989.4 TFLOPS, FP8 1978.9 TFLOPS, INT8 1978.9 TOPS (dense)
  peak = { bf16 = 989e12, fp8 = 1979e12, int8 = 1979e12 },
  mem = { capacity = 80e9, bw = 3.35e12 },         -- HBM3 80 GB, 3.35 TB/s
  -- NVLink 400 GB/s bidirectional on H800 (export variant) = 200 GB/s per direction
  intra = { bw = 200e9, latency = 3e-6 },
  -- one 400 Gb/s InfiniBand NIC (CX7) per GPU = 50 GB/s per direction
  inter = { bw = 50e9, latency = 5e-6 },
  eff = {
    -- DeepGEMM README: "up to 1350+ FP8 TFLOPS" on Hopper (H800): 1350 / 1979
    gemm_fp8 = 1350 / 1979,
    -- FlashMLA README: "up to 3000 GB/s in memory-bound configuration and
    -- 580 TFLOPS in computation-bound configuration on H800 SXM5" (BF16)
    attn_bf16 = 580 / 989,
    gemm_bf16 = 580 / 989, -- no separate BF16 GEMM figure published; FlashMLA's ratio
    mem = 3000 / 3350,
    -- DeepEP README, normal kernels (H800, 4096 tokens, 7168 hidden, top-8):
    -- intranode dispatch 153 GB/s / combine 158 GB/s (NVLink bottleneck)
    intra = 153 / 200,
    -- internode EP16/32/64 dispatch 43/44/46 GB/s, combine 43/47/45 GB/s (RDMA)
    inter = 45 / 50,
    -- DeepEP README, low-latency kernels (H800, 128 tokens per batch, 7168
    -- hidden, top-8, FP8 dispatch, BF16 combine), seconds per call by EP size
    ll = { tokens = 128,
      dispatch = { [8] = 77e-6, [16] = 118e-6, [32] = 155e-6, [64] = 173e-6, [128] = 192e-6, [256] = 194e-6 },
      combine = { [8] = 114e-6, [16] = 195e-6, [32] = 273e-6, [64] = 314e-6, [128] = 369e-6, [256] = 360e-6 } },
  },
  -- 132 SMs on H800/H100 SXM5 (NVIDIA Hopper architecture whitepaper: "132 SMs" on
  -- the SXM5 part). DeepEP's normal (NVLink/RDMA) kernels run on SMs: its README's
  -- usage example reserves 24 of them (`Buffer.set_num_sms(24)`); the low-latency
  -- kernels overlap through a receiving hook and take no SM (same README).
  sms = 132, comm_sms = 24,
  price = 2.0, -- $ per GPU-hour (DeepSeek's day-6 assumption)
}
