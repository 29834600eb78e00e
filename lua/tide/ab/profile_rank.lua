-- The rank function of `tide profile` on a parallel recipe: runs the
-- recipe's rank job (tide.parallel.recipe.rank_job) under tide.profile in
-- this rank's Lua state, then gathers every rank's trace events and op
-- summary to rank 0 (absolute CLOCK_MONOTONIC timestamps, pid = rank).
-- The profile starts when the rank's model is loaded (tide.load is wrapped
-- in this rank's state to call the profiler's reset), so the accounting
-- covers the plan's setup and the serving, not reading the checkpoint.
return function(c, arg)
  local P = require "tide.profile"
  local R = require "tide.parallel.recipe"
  local tide = require "tide"
  local me = c:rank()
  local rep = P.run(function(_, reset)
    local load = tide.load
    tide.load = function(...)
      local m, e = load(...)
      reset()
      return m, e
    end
    local ok, res = pcall(R.rank_job, c, arg)
    tide.load = load
    if not ok then error(res, 0) end
    return res
  end, { pid = me, name = "rank " .. me, origin = 0 })
  local ops = {}
  for i, r in ipairs(rep.ops) do ops[i] = { name = r.name, calls = r.calls, seconds = r.seconds, bytes = r.bytes, flops = r.flops } end
  local mine = R.ser({ rank = me, wall = rep.wall, ops = ops, events = table.concat(rep:trace_events(), ",\n") })
  local all = assert(c:allgather_string(mine))
  if me ~= 0 then return "" end
  return "{" .. table.concat(all, ",") .. "}"
end
