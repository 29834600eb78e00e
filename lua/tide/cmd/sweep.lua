-- tide sweep: one recipe over values of one setting, through the A/B machinery.
local M = {}

M.usage = [==[
usage: tide sweep RECIPE.lua --set KEY=V1,V2,... [--workload W] [--repeats N] [--out DIR] [--json]

  e.g. tide sweep recipes/trials/tiny-a.lua --set engine.max_seqs=1,2,4,8 --workload decode-heavy
  Runs the recipe once per value (interleaved, repeated), compares each with the first value and
  draws throughput vs latency (sweep.svg) next to report.md and report.json (default out: sweep-out).]==]

local spec = { set = "string", workload = "string", repeats = "number", warmup = "number", out = "string",
  seed = "number", json = "flag" }

function M.main(args)
  local A = require "tide.cmd.args"
  local o, rest = A.parse(args, spec)
  if not o then io.stderr:write("tide sweep: ", rest, "\n") return 2 end
  if #rest ~= 1 or not o.set then io.stderr:write("tide sweep: need RECIPE and --set KEY=V1,V2 (see --help)\n") return 2 end
  local key, list = o.set:match("^([%w_%.]+)=(.+)$")
  if not key then io.stderr:write("tide sweep: --set must look like KEY=V1,V2,...\n") return 2 end
  local values = {}
  for v in list:gmatch("[^,]+") do
    if v == "true" then values[#values + 1] = true
    elseif v == "false" then values[#values + 1] = false
    else values[#values + 1] = tonumber(v) or v end
  end
  local res, e = require("tide.ab").sweep{ recipe = rest[1], key = key, values = values, workload = o.workload,
    repeats = o.repeats or 3, warmup = o.warmup, seed = o.seed, out = o.out or "sweep-out" }
  if not res then io.stderr:write("tide sweep: ", tostring(e), "\n") return 1 end
  local R = require "tide.ab.report"
  if o.json then io.write(R.json(res)) else print(R.summary(res)) end
  return 0
end

return M
