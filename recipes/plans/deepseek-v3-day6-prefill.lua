-- DeepSeek's published prefill deployment (day-6 post): each unit is 4 H800
-- nodes (32 GPUs), routed experts EP32, MLA and shared expert DP32, 32
-- redundant routed experts (9 routed + 1 shared per GPU), FP8 GEMMs and FP8
-- dispatch, BF16 core attention and combine, two micro-batches overlapping
-- communication with computation. 16K tokens per GPU per batch is the
-- setting of DeepSeek's profile-data release for prefill (EP32, 4K prompts).
return {
  model = "recipes/plans/deepseek-v3-config.lua",
  hardware = "h800",
  phase = "prefill",
  quant = { weights = "fp8", kv = "bf16", dispatch = "fp8", combine = "bf16" },
  prefill_mla = "naive",
  parallel = { ep = 32, dp_attention = true, eplb = { redundant = 32 }, overlap = "two-micro-batch", comm = "normal" },
  prefill = { tokens = 16384 },
  workload_file = "recipes/plans/deepseek-v3-day6-workload.lua",
}
