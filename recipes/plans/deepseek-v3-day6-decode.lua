-- DeepSeek's published decode deployment (day-6 post): each unit is 18 H800
-- nodes (144 GPUs), routed experts EP144, MLA and shared expert DP144, 32
-- redundant routed experts (2 routed + 1 shared per GPU), FP8 GEMMs and FP8
-- dispatch, BF16 core attention (absorbed MLA, FlashMLA) and combine,
-- DeepEP low-latency kernels, two micro-batches overlapped (the 5-stage
-- pipeline), MTP with one draft token (acceptance 85-90% per the V3 report:
-- 0.85 here). The batch per GPU is the largest that meets the observed
-- per-user speed (20 tok/s) and fits memory.
return {
  model = "recipes/plans/deepseek-v3-config.lua",
  hardware = "h800",
  phase = "decode",
  quant = { weights = "fp8", kv = "bf16", dispatch = "fp8", combine = "bf16" },
  mla = "absorb",
  mtp = { draft = 1, accept = 0.85 },
  parallel = { ep = 144, dp_attention = true, eplb = { redundant = 32 }, overlap = "two-micro-batch", comm = "low-latency" },
  slo = { speed = 20 },
  workload_file = "recipes/plans/deepseek-v3-day6-workload.lua",
}
