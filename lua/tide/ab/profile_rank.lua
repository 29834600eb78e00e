-- The rank function of `tide profile` on a parallel recipe: runs the
-- recipe's rank job (tide.parallel.recipe.rank_job) under tide.profile in
-- this rank's Lua state, then gathers every rank's trace events and op
-- summary to rank 0 (absolute CLOCK_MONOTONIC timestamps, pid = rank).
return function(c, arg)
  local P = require "tide.profile"
  local R = require "tide.parallel.recipe"
  local me = c:rank()
  local rep = P.run(function() return R.rank_job(c, arg) end, { pid = me, name = "rank " .. me, origin = 0 })
  local ops = {}
  for i, r in ipairs(rep.ops) do ops[i] = { name = r.name, calls = r.calls, seconds = r.seconds, bytes = r.bytes, flops = r.flops } end
  local mine = R.ser({ rank = me, wall = rep.wall, ops = ops, events = table.concat(rep:trace_events(), ",\n") })
  local all = assert(c:allgather_string(mine))
  if me ~= 0 then return "" end
  return "{" .. table.concat(all, ",") .. "}"
end
