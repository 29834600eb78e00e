-- Planner vs DeepSeek's published day-6 figures (issue 9, acceptance 2):
-- 1. capacity: per-node prefill input tok/s (cache hits included) and decode
--    output tok/s at full load, from recipes/plans/deepseek-v3-day6-{prefill,decode}.lua
--    on the H800 profile (efficiency factors from published microbenchmarks only);
-- 2. day average: the day's traffic and node occupancy
--    (recipes/plans/deepseek-v3-day6-fleet.lua) through tide.plan.fleet --
--    the published per-node figures are tokens/day over node-seconds deployed.
-- One JSON line per phase and quantity, then the derivation.
--   tide run bench/plan_day6.lua
local plan = require "tide.plan"
local fleet = require "tide.plan.fleet"
local hw = require "tide.plan.hardware"
local day = assert(hw.load_data(hw.root() .. "/recipes/plans/deepseek-v3-day6-fleet.lua"))
local pub = day.published
local res = {}
for _, ph in ipairs({ "prefill", "decode" }) do
  local r = assert(plan.load_recipe(hw.root() .. "/recipes/plans/deepseek-v3-day6-" .. ph .. ".lua"))
  res[ph] = assert(plan.evaluate(r, {}))[ph]
end
local f = fleet.evaluate(day, res.prefill, res.decode)
for _, ph in ipairs({ "prefill", "decode" }) do
  local x = res[ph]
  local cap = ph == "decode" and x.per_node.output_tok_s or x.per_node.input_tok_s
  print(string.format('{"bench":"plan_day6","phase":"%s","quantity":"capacity","predicted_per_node":%.0f,'
    .. '"published_per_node":%.0f,"ratio":%.3f,"batch":%d,"step_ms":%.2f%s}', ph, cap, pub[ph], cap / pub[ph], x.batch,
    x.step * 1e3, x.user_tok_s and string.format(',"user_tok_s":%.1f', x.user_tok_s) or ""))
  print(string.format('{"bench":"plan_day6","phase":"%s","quantity":"day_average","predicted_per_node":%.0f,'
    .. '"published_per_node":%.0f,"ratio":%.3f,"nodes":%.1f,"load_factor":%.3f}', ph, f.per_node[ph], pub[ph],
    f.per_node[ph] / pub[ph], f.nodes[ph], f.utilization))
end
print(fleet.explain(f, pub))
