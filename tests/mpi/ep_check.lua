-- Same tokens under a parallel recipe: `tide run tests/mpi/ep_check.lua RECIPE
-- [VARIANT]` runs every "public" prompt of tests/fixtures/dsv3-tiny.json (or
-- llama-tiny.json for llama recipes) greedily for 24 tokens through RECIPE's
-- parallel plan (threads, or one rank per process under mpirun) and prints,
-- on rank 0, "same K/N" plus one "prompt i: ok|DIFF" line per prompt.
-- VARIANT: "" | "noeplb" (no redundant experts) | "q8" (Q8 dispatch) |
-- "threads" (force the in-process backend) | "die" (rank 2 kills itself) |
-- "rebalance" (EPLB placement recomputed from the counted loads every 4 steps) |
-- "overlap" (two-micro-batch mode: non-blocking dispatch/combine) |
-- "tbo" (two-batch overlap across layers, tide.parallel.tbo).
local R = require "tide.parallel.recipe"
local cjson = require "cjson.safe"
local path, variant = arg[1] or "recipes/dsv3-tiny-ep4.lua", arg[2] or ""
local r = R.new(dofile(path))
local fx_path = r.model:match("llama") and "tests/fixtures/llama-tiny.json"
  or (r.model:match("fp8") and "tests/fixtures/dsv3-tiny-fp8.json" or "tests/fixtures/dsv3-tiny.json")
local fx = assert(cjson.decode(assert(io.open(fx_path)):read("*a")))
if variant == "noeplb" then r.parallel.eplb = nil end
if variant == "q8" then r.parallel.wire = "q8" end
if variant == "threads" then r.parallel.backend = "threads" end
if variant == "die" then r.die_rank = 2 end
if variant == "rebalance" then r.parallel.eplb.every = 4 end
if variant == "overlap" then r.parallel.overlap = true end
if variant == "tbo" then r.parallel.overlap = "tbo" end
local prompts = {}
for i, p in ipairs(fx.public) do prompts[i] = { ids = p.ids } end
local out, err = R.launch({ recipe = r, prompts = prompts, max_tokens = #fx.public[1].greedy, ignore_eos = true })
if out == nil then
  io.stderr:write("tide: ", tostring(err), "\n")
  return 1
end
if out == false then return 0 end
local same = 0
for i, p in ipairs(fx.public) do
  local got = out.results[i].ids
  local ok = #got == #p.greedy
  for j = 1, #p.greedy do if got[j] ~= p.greedy[j] then ok = false end end
  if ok then same = same + 1 end
  print(string.format("prompt %d: %s (rank %s)", i, ok and "ok" or ("DIFF " .. table.concat(got, ",")), tostring(out.results[i].rank)))
end
local st = out.stats[1]
if st and st.rebalances then
  print(string.format("rebalances %d moved %d (rank 0 sent %d weight bytes)", st.rebalances, st.moved, st.moved_bytes or 0))
end
print(string.format("same %d/%d", same, #fx.public))
return same == #fx.public and 0 or 1
