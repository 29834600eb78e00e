-- tide.plan.fleet: from per-device capacity (tide.plan.evaluate at full
-- load) to what a fleet averages over a day of production traffic, which is
-- how operators publish throughput: tokens per day / (node-seconds deployed
-- in that role).
--
--   local fleet = require "tide.plan.fleet"
--   local f = fleet.evaluate(day, prefill_result, decode_result)
--   f.per_node.prefill, f.per_node.decode, f.utilization, f.nodes.prefill, f.decode_batch.avg
--
-- day (plain data, e.g. recipes/plans/deepseek-v3-day6-fleet.lua):
--   seconds, input_tokens (cache hits included), output_tokens, speed = { lo, hi }
--   (output tok/s per user), nodes = { average, peak } (node occupancy of the
--   service), gpus_per_node, units = { prefill, decode } (nodes per instance).
--
-- The model, all of it:
--   load:        R_in = input_tokens / seconds, R_out = output_tokens / seconds;
--   need:        N_p = R_in / C_p, N_d = R_out / C_d   (nodes at full load; C from the planner);
--   deployment:  the day's average node occupancy N (published, like the EP sizes) is
--                split over the two roles in proportion to need -- the operator sizes
--                each pool for its share of the same traffic, so both run at the same
--                load factor U = (N_p + N_d) / N;
--   published:   per-node rate = R / (nodes in the role) = C * U.
-- So the planner's capacities fix the P:D split and the ratio of the two
-- per-node rates; the level is set by the published node-time. U is reported,
-- not chosen. Little's law checks the decode side independently: the users
-- decoding at once are R_out / speed; per decode GPU that is the average
-- batch, to compare with the batch the planner's memory and SLO allow.
local M = {}

function M.evaluate(day, pre, dec)
  local S = day.seconds or 86400
  local gpn = day.gpus_per_node or 8
  local r_in, r_out = day.input_tokens / S, day.output_tokens / S
  local c_p, c_d = pre.per_node.input_tok_s, dec.per_node.output_tok_s
  local n_p, n_d = r_in / c_p, r_out / c_d
  local N = day.nodes.average
  local U = (n_p + n_d) / N
  local nodes_p, nodes_d = n_p / U, n_d / U
  local speed = day.speed and (day.speed[1] + day.speed[2]) / 2 or dec.user_tok_s
  local users = r_out / speed
  local f = {
    rates = { input = r_in, output = r_out },
    capacity = { prefill = c_p, decode = c_d },
    need = { prefill = n_p, decode = n_d, total = n_p + n_d },
    utilization = U,
    nodes = { prefill = nodes_p, decode = nodes_d, average = N, peak = day.nodes.peak,
      units_prefill = day.units and nodes_p / day.units.prefill, units_decode = day.units and nodes_d / day.units.decode },
    per_node = { prefill = r_in / nodes_p, decode = r_out / nodes_d },
    decode_batch = { users = users, avg = users / (nodes_d * gpn), max = dec.batch, speed = speed,
      planner_speed = dec.user_tok_s },
    cost = day.price and { usd_per_day = N * gpn * 24 * day.price } or nil,
  }
  return f
end

-- Lines of text explaining f (for benches and `tide plan --explain`).
function M.explain(f, published)
  local L = {}
  local function add(...) L[#L + 1] = string.format(...) end
  add("load: %.3gM input tok/s (cache hits included), %.3gM output tok/s", f.rates.input / 1e6, f.rates.output / 1e6)
  add("capacity per node at full load (planner): prefill %.1fk input tok/s, decode %.1fk output tok/s",
    f.capacity.prefill / 1e3, f.capacity.decode / 1e3)
  add("nodes needed at full load: prefill %.1f + decode %.1f = %.1f; deployed on average %.2f (peak %s)",
    f.need.prefill, f.need.decode, f.need.total, f.nodes.average, tostring(f.nodes.peak or "?"))
  add("load factor U = %.1f / %.2f = %.3f (reported, not fitted)", f.need.total, f.nodes.average, f.utilization)
  add("split of the deployed nodes by need: prefill %.1f nodes (%.1f units), decode %.1f nodes (%.1f units)",
    f.nodes.prefill, f.nodes.units_prefill or 0, f.nodes.decode, f.nodes.units_decode or 0)
  add("per-node day average: prefill %.1fk input tok/s, decode %.1fk output tok/s", f.per_node.prefill / 1e3,
    f.per_node.decode / 1e3)
  if published then
    add("published: prefill %.1fk (ratio %.2f), decode %.1fk (ratio %.2f)", published.prefill / 1e3,
      f.per_node.prefill / published.prefill, published.decode / 1e3, f.per_node.decode / published.decode)
  end
  add("Little's law: %.1fk users decoding at %.1f tok/s -> %.0f per decode GPU on average (planner's batch limit %d, at %.1f tok/s)",
    f.decode_batch.users / 1e3, f.decode_batch.speed, f.decode_batch.avg, f.decode_batch.max,
    f.decode_batch.planner_speed or 0)
  return table.concat(L, "\n")
end

return M
