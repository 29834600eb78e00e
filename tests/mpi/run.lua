-- Driver: `tide run tests/mpi/run.lua [RANKS] [ARG]` runs tests/mpi/comm_check.lua
-- on RANKS threads, or once per process under `mpirun -np N`. Prints one
-- "rank R: RESULT" line per rank this process ran.
local comm = require "tide.comm"
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "tests/mpi"
local res, err = comm.launch(here .. "/comm_check.lua", { ranks = tonumber(arg[1]) or 4, arg = arg[2] or "" })
if not res then
  io.stderr:write("tide: ", err, "\n")
  return 1
end
for r = 1, 64 do if res[r] then print(string.format("rank %d: %s", r - 1, res[r])) end end
return 0
