-- Planner vs DeepSeek's published day-6 figures (issue 9, acceptance 2):
-- per-node prefill input tok/s (cache hits included) and decode output tok/s
-- from recipes/plans/deepseek-v3-day6-{prefill,decode}.lua on the H800
-- profile, whose efficiency factors come from microbenchmarks only.
--   tide run bench/plan_day6.lua
local plan = require "tide.plan"
local published = { prefill = 73.7e3, decode = 14.8e3 }
print("phase\tpredicted_per_node\tpublished_per_node\tratio\tbatch\tstep_ms\tuser_tok_s")
for _, ph in ipairs({ "prefill", "decode" }) do
  local r = assert(plan.load_recipe("recipes/plans/deepseek-v3-day6-" .. ph .. ".lua"))
  local x = assert(plan.evaluate(r, {}))[ph]
  local v = ph == "decode" and x.per_node.output_tok_s or x.per_node.input_tok_s
  print(string.format("%s\t%.0f\t%.0f\t%.2f\t%d\t%.2f\t%s", ph, v, published[ph], v / published[ph], x.batch,
    x.step * 1e3, x.user_tok_s and string.format("%.1f", x.user_tok_s) or "-"))
end
