-- The fleet facts of DeepSeek's day-6 post ("DeepSeek-V3/R1 Inference System
-- Overview", open-source week day 6, 2025-03-01), 24 h from 2025-02-27 12:00
-- to 2025-02-28 12:00 UTC+8, V3 and R1 services together, for
-- tide.plan.fleet (bench/plan_day6.lua):
--   "608B input tokens, of which 342B (56.3%) hit the on-disk KV cache";
--   "168B output tokens"; "average output speed 20-22 tokens per second";
--   "average kvcache length per output token 4,989" (in the workload file);
--   "peak node occupancy 278, average 226.75 nodes (8 H800 GPUs each)";
--   prefill units of 4 nodes (EP32), decode units of 18 nodes (EP144);
--   "$2 per H800 GPU-hour" -> $87,072 per day.
-- The per-node figures it reports (73.7k input tok/s prefill, 14.8k output
-- tok/s decode) are what the planner is compared with, never an input.
return {
  seconds = 86400,
  input_tokens = 608e9, cached_tokens = 342e9, output_tokens = 168e9,
  speed = { 20, 22 },
  nodes = { average = 226.75, peak = 278 },
  gpus_per_node = 8,
  units = { prefill = 4, decode = 18 },
  price = 2.0,
  published = { prefill = 73.7e3, decode = 14.8e3 },
}
