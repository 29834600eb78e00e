-- The workload of DeepSeek's day-6 post ("DeepSeek-V3/R1 Inference System
-- Overview", 2025-03-01), 24 h of production traffic:
--   608B input tokens, 342B (56.3%) hitting the on-disk KV cache;
--   168B output tokens; average KV length per output token 4,989;
--   average output speed 20-22 tokens/s per user.
-- Input/output means are the ratio 608:168 scaled to the KV length: a
-- request of I input and O output tokens sees on average I + O/2 cached
-- positions per output token, I/O = 608/168 = 3.62, so I + O/2 = 4989 gives
-- O = 1206, I = 4366. Length spread (cv) is an assumption: 1.0 (exponential-like).
return {
  input = { mean = 4366, cv = 1.0 },
  output = { mean = 1206, cv = 1.0 },
  prefix_hit = 0.563,
  kv_len = 4989,
  expert_load_cv = 0.5,  -- assumed spread of expert loads before EPLB (not published)
}
