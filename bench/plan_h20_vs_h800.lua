-- Planner contrast (issue 9, acceptance 3): the same recipe (DeepSeek-V3
-- day-6 decode, EP144 + DP-attention, MTP) on H20 and H800, decode output
-- rate per device at batch 1..256, the prefill rate, and the crossover batch
-- (largest batch at which H20 still delivers >= 90% of H800). One TSV line
-- per case; ratios only come from the same run.
--   tide run bench/plan_h20_vs_h800.lua
local plan = require "tide.plan"
local dec = assert(plan.load_recipe("recipes/plans/deepseek-v3-day6-decode.lua"))
local pre = assert(plan.load_recipe("recipes/plans/deepseek-v3-day6-prefill.lua"))
print("case\tbatch\th20_tok_s\th800_tok_s\tratio\th20_bound\th800_bound")
local function top_bound(r)
  local t = r.split
  if t.compute >= t.memory and t.compute >= t.comm then return "compute" end
  if t.memory >= t.comm then return "memory" end
  return "link"
end
for _, B in ipairs({ 1, 2, 4, 8, 16, 32, 64, 128, 256 }) do
  local ratio, a, b = plan.decode_ratio(dec, "h20", "h800", B)
  print(string.format("decode\t%d\t%.0f\t%.0f\t%.3f\t%s\t%s", B, a.out_tok_s, b.out_tok_s, ratio, top_bound(a), top_bound(b)))
end
local p20 = assert(plan.evaluate(pre, { hardware = "h20" })).prefill
local p800 = assert(plan.evaluate(pre, { hardware = "h800" })).prefill
print(string.format("prefill\t%d\t%.0f\t%.0f\t%.3f\t%s\t%s", p20.batch, p20.in_tok_s, p800.in_tok_s,
  p20.in_tok_s / p800.in_tok_s, top_bound(p20), top_bound(p800)))
print(string.format("crossover_90pct\t%d", plan.crossover(dec, "h20", "h800", 0.9, 256)))
print(string.format("crossover_equal\t%d", plan.crossover(dec, "h20", "h800", 1.0, 256)))
local nomtp = {}
for k, v in pairs(dec) do nomtp[k] = v end
nomtp.mtp = nil
print(string.format("crossover_equal_no_mtp\t%d", plan.crossover(nomtp, "h20", "h800", 1.0, 256)))
