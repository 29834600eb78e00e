-- Two-micro-batch overlap (issue 7, acceptance 4): the synthetic dsv3-moe-1b
-- shape (fewer layers by default, to fit a small box) under EP over 4 ranks,
-- each rank stepping its own batch of tokens; the same steps with blocking
-- dispatch/combine and with the two-micro-batch mode (both dispatches posted
-- before the shared experts, half 1's experts while half 2's dispatch flies,
-- requests polled between expert GEMMs). Reports the step time and the
-- all-to-all time: exposed (inside comm calls) vs span (post to completion);
-- hidden share = 1 - exposed / span.
--
--   tide run bench/overlap.lua [--layers 3] [--tokens 64] [--steps 6] [--ranks 4]
--   mpirun -np 4 tide run bench/overlap.lua ...
local opts = { layers = 3, tokens = 64, steps = 6, ranks = 4 }
local i = 1
while arg and arg[i] do
  local k = arg[i]:gsub("^%-%-", "")
  if opts[k] == nil then error("unknown option " .. arg[i]) end
  opts[k] = tonumber(arg[i + 1])
  i = i + 2
end

local comm = require "tide.comm"
local R = require "tide.parallel.recipe"
local dir = string.format("/tmp/tide-bench-dsv3-moe-1b-L%d", opts.layers)

-- the checkpoint (written once; under mpirun by rank 0 before the others look)
local function ensure_model()
  local f = io.open(dir .. "/config.json")
  if f then f:close() return end
  local S = require "tide.synth"
  local p = {}
  for k, v in pairs(S.presets["dsv3-moe-1b"]) do p[k] = v end
  p.num_hidden_layers = opts.layers
  assert(S.write({ preset = p, arch = "deepseek_v3", out = dir, seed = 1 }))
end
if not comm.in_mpi_job() then ensure_model()
elseif os.getenv("OMPI_COMM_WORLD_RANK") == "0" then ensure_model() end

local res = assert(comm.launch(function(c, arg)
  local tide = require "tide"
  local ep = require "tide.parallel.ep"
  local R = require "tide.parallel.recipe"
  local clock = require("tide.generate").clock
  local o = R.deser(arg)
  c:barrier() -- rank 0 has written the checkpoint
  tide.set_threads(1)
  local m = assert(tide.load(o.dir, { mla = "absorb", kv = { blocks = 64 } }))
  local ids = {}
  for k = 1, o.tokens do ids[k] = (c:rank() * 7919 + k * 104729) % 8000 + 3 end
  local out = {}
  for _, mode in ipairs({ "blocking", "overlap" }) do
    local plan = assert(ep.apply(m, c, { overlap = mode == "overlap" }))
    assert(m:forward(ids)):free() -- warm-up
    assert(c:barrier())
    c:stats_reset()
    local t0 = clock()
    for _ = 1, o.steps do assert(m:forward(ids)):free() end
    local dt = (clock() - t0) / o.steps
    plan:drain()
    local st = c:stats().alltoallv or { ns = 0, span_ns = 0, bytes = 0, calls = 0 }
    out[mode] = { step_s = dt, exposed_s = st.ns * 1e-9 / o.steps, span_s = st.span_ns * 1e-9 / o.steps,
      bytes = st.bytes / o.steps, calls = st.calls / o.steps }
    plan:remove()
  end
  return R.ser(out)
end, { ranks = opts.ranks, arg = R.ser({ dir = dir, tokens = opts.tokens, steps = opts.steps }) }))

if not res[1] then return 0 end
local function row(name, v)
  print(string.format("  %-9s step %.4f s   all-to-all exposed %.4f s  span %.4f s  hidden %5.1f%%  (%d calls, %.0f KiB/step)",
    name, v.step_s, v.exposed_s, v.span_s, v.span_s > 0 and 100 * (1 - v.exposed_s / v.span_s) or 0, v.calls, v.bytes / 1024))
end
print(string.format("dsv3-moe-1b shape, %d layers (%s), EP over %d ranks (%s), %d tokens per rank per step, %d steps",
  opts.layers, dir, opts.ranks, comm.in_mpi_job() and "mpi" or "threads", opts.tokens, opts.steps))
for r, s in pairs(res) do
  local v = R.deser(s)
  print("rank " .. (r - 1) .. ":")
  row("blocking", v.blocking)
  row("overlap", v.overlap)
  local saved = v.blocking.exposed_s - v.overlap.exposed_s
  print(string.format("  exposed all-to-all time saved by overlap: %.4f s of %.4f s (%.1f%%); step time %.4f -> %.4f s",
    saved, v.blocking.exposed_s, v.blocking.exposed_s > 0 and 100 * saved / v.blocking.exposed_s or 0,
    v.blocking.step_s, v.overlap.step_s))
end
return 0
