-- Two-micro-batch overlap (issue 7, acceptance 4): the synthetic dsv3-moe-1b
-- shape (fewer layers by default, to fit a small box) under EP over 4 ranks,
-- each rank stepping its own batch of tokens; the same steps with blocking
-- dispatch/combine ("blocking"), with the in-layer two-micro-batch mode
-- ("overlap": both dispatches posted before the shared experts, half 1's
-- experts while half 2's dispatch flies, requests polled between expert
-- GEMMs), and with two-batch overlap across layers ("tbo",
-- tide.parallel.tbo: one half's dispatch behind the other half's attention,
-- its combine behind the other half's experts).
--
-- The two modes alternate in one run (repeat k runs blocking then overlap,
-- repeat k+1 overlap then blocking) and medians over the repeats are
-- reported, so load from other processes hits both modes alike. Per mode:
--   step_s        wall time of one forward (slowest rank: the ranks step in lockstep)
--   exposed_s     all-to-all time inside comm calls (on the critical path), mean over ranks
--   span_s        all-to-all post to completion; hidden = 1 - exposed / span
--   a2a_cpu_s     CPU time inside the all-to-all calls (copies, polling);
--                 exposed - a2a_cpu is time asleep, waiting for slower peers
--   cores_busy    sum over ranks of their CPU time / step wall time: how many
--                 cores the job kept busy. When it equals the cores the job
--                 can get, no core is idle while a rank waits, and there is
--                 no idle time for the overlap to fill (see the README note).
-- One JSON line per mode ("bench": "overlap"), then a readable summary.
--
--   tide run bench/overlap.lua [--layers 3] [--tokens 64] [--steps 3] [--repeats 5] [--ranks 4]
--                              [--link-gbs G --link-us L]
--   mpirun -np 4 tide run bench/overlap.lua ...
--
-- --link-gbs / --link-us (thread ranks only): an emulated network link
-- (tide_comm_local_set_link): each collective's data reaches a rank L us +
-- its bytes / (G GB/s) after the last rank posted, and waiting for it takes
-- no CPU, as with a NIC or NVLink moving the data. Without it thread ranks
-- move data with memcpy on the cores they compute on, so there is no
-- transfer time to hide; with it the run shows what the two-micro-batch
-- mode hides of a transfer that does not use the computing cores.
local opts = { layers = 3, tokens = 64, steps = 3, repeats = 5, ranks = 4, link_gbs = 0, link_us = 0 }
local i = 1
while arg and arg[i] do
  local k = arg[i]:gsub("^%-%-", ""):gsub("%-", "_")
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

local function loadavg()
  local f = io.open("/proc/loadavg")
  if not f then return "?" end
  local s = f:read("*l")
  f:close()
  return s:match("^(%S+)") or "?"
end
local function ncores()
  local p = io.popen("nproc 2>/dev/null")
  local n = p and tonumber(p:read("*l") or "")
  if p then p:close() end
  return n or 0
end
local load0 = loadavg()

local res = assert(comm.launch(function(c, arg)
  local tide = require "tide"
  local ep = require "tide.parallel.ep"
  local R = require "tide.parallel.recipe"
  local cm = require "tide.comm"
  local clock = require("tide.generate").clock
  local o = R.deser(arg)
  c:barrier() -- rank 0 has written the checkpoint
  tide.set_threads(1)
  local m = assert(tide.load(o.dir, { mla = "absorb", kv = { blocks = 64 } }))
  local ids = {}
  for k = 1, o.tokens do ids[k] = (c:rank() * 7919 + k * 104729) % 8000 + 3 end
  local runs = { blocking = {}, overlap = {}, tbo = {} }
  local modes = { "blocking", "overlap", "tbo" }
  local knob = { blocking = false, overlap = true, tbo = "tbo" }
  for rep = 1, o.repeats do
    for k = 0, #modes - 1 do
      local mode = modes[(rep + k - 1) % #modes + 1] -- each repeat starts with the next mode
      local plan = assert(ep.apply(m, c, { overlap = knob[mode] }))
      assert(m:forward(ids)):free() -- warm-up
      assert(c:barrier())
      c:stats_reset()
      local t0, c0 = clock(), cm.thread_cpu()
      for _ = 1, o.steps do assert(m:forward(ids)):free() end
      local dt, dc = (clock() - t0) / o.steps, (cm.thread_cpu() - c0) / o.steps
      local st = c:stats().alltoallv or { ns = 0, span_ns = 0, cpu_ns = 0, bytes = 0, calls = 0 }
      plan:drain()
      plan:remove()
      local r = runs[mode]
      r[#r + 1] = { step_s = dt, cpu_s = dc, exposed_s = st.ns * 1e-9 / o.steps, span_s = st.span_ns * 1e-9 / o.steps,
        a2a_cpu_s = st.cpu_ns * 1e-9 / o.steps, bytes = st.bytes / o.steps, calls = st.calls / o.steps }
    end
  end
  local all = assert(c:allgather_string(R.ser(runs)))
  if c:rank() ~= 0 then return "" end
  return R.ser(all)
end, { ranks = opts.ranks, arg = R.ser({ dir = dir, tokens = opts.tokens, steps = opts.steps, repeats = opts.repeats }),
  link = (opts.link_gbs > 0 or opts.link_us > 0) and { gbs = opts.link_gbs, latency_us = opts.link_us } or nil }))

if not res[1] or res[1] == "" then return 0 end
local per_rank = {}
for r, s in ipairs(R.deser(res[1])) do per_rank[r] = R.deser(s) end
local nr = #per_rank

local function median(t)
  table.sort(t)
  local n = #t
  if n == 0 then return 0 end
  return n % 2 == 1 and t[(n + 1) / 2] or (t[n / 2] + t[n / 2 + 1]) / 2
end

-- per repeat: the job's numbers (slowest rank's step, means over ranks, sum of CPU)
local function per_repeat(mode, k)
  local step, exposed, span, a2a_cpu, cpu, bytes = 0, 0, 0, 0, 0, 0
  for r = 1, nr do
    local v = per_rank[r][mode][k]
    step = math.max(step, v.step_s)
    exposed, span, a2a_cpu = exposed + v.exposed_s / nr, span + v.span_s / nr, a2a_cpu + v.a2a_cpu_s / nr
    cpu, bytes = cpu + v.cpu_s, bytes + v.bytes / nr
  end
  return { step_s = step, exposed_s = exposed, span_s = span, a2a_cpu_s = a2a_cpu, cores_busy = cpu / step,
    rank_cpu_s = cpu / nr, hidden = span > 0 and 1 - exposed / span or 0, bytes = bytes }
end

local backend = comm.in_mpi_job() and "mpi" or "threads"
local link = "none"
if not comm.in_mpi_job() and (opts.link_gbs > 0 or opts.link_us > 0) then
  link = string.format("%g GB/s + %g us", opts.link_gbs, opts.link_us)
end
local summary = {}
for _, mode in ipairs({ "blocking", "overlap", "tbo" }) do
  local cols = {}
  for k = 1, opts.repeats do
    for key, v in pairs(per_repeat(mode, k)) do
      cols[key] = cols[key] or {}
      cols[key][k] = v
    end
  end
  local med = {}
  for key, t in pairs(cols) do med[key] = median(t) end
  local per = {}
  for r = 1, nr do
    local e, s = {}, {}
    for k = 1, opts.repeats do e[k] = per_rank[r][mode][k].exposed_s s[k] = per_rank[r][mode][k].step_s end
    per[r] = string.format('{"rank":%d,"step_s":%.4f,"exposed_s":%.4f}', r - 1, median(s), median(e))
  end
  summary[mode] = med
  print(string.format('{"bench":"overlap","mode":"%s","backend":"%s","link":"%s","ranks":%d,"cores":%d,"layers":%d,"tokens":%d,'
    .. '"steps":%d,"repeats":%d,"step_s":%.4f,"exposed_s":%.4f,"span_s":%.4f,"hidden":%.3f,"a2a_cpu_s":%.4f,'
    .. '"a2a_wait_s":%.4f,"rank_cpu_s":%.4f,"cores_busy":%.2f,"bytes_per_rank":%d,"per_rank":[%s]}',
    mode, backend, link, nr, ncores(), opts.layers, opts.tokens, opts.steps, opts.repeats, med.step_s, med.exposed_s,
    med.span_s, med.hidden, med.a2a_cpu_s, med.exposed_s - med.a2a_cpu_s, med.rank_cpu_s, med.cores_busy, med.bytes,
    table.concat(per, ",")))
end
local b, o, t = summary.blocking, summary.overlap, summary.tbo
print(string.format("dsv3-moe-1b shape, %d layers, EP over %d ranks (%s, emulated link: %s) on %d cores (load average %s -> %s), "
  .. "%d tokens per rank per step, medians of %d alternating repeats x %d steps:", opts.layers, nr, backend, link, ncores(),
  load0, loadavg(), opts.tokens, opts.repeats, opts.steps))
for _, row in ipairs({ { "blocking", b }, { "overlap", o }, { "tbo", t } }) do
  local v = row[2]
  print(string.format("  %-9s step %.4f s  all-to-all exposed %.4f s (CPU %.4f, asleep %.4f) of span %.4f s: hidden %4.1f%%;"
    .. " %.2f cores busy", row[1], v.step_s, v.exposed_s, v.a2a_cpu_s, v.exposed_s - v.a2a_cpu_s, v.span_s,
    100 * v.hidden, v.cores_busy))
end
for _, row in ipairs({ { "overlap", o }, { "tbo", t } }) do
  local v = row[2]
  print(string.format("  %s vs blocking: exposed all-to-all %.4f -> %.4f s (%+.1f%%), step %.4f -> %.4f s (%+.1f%%)",
    row[1], b.exposed_s, v.exposed_s, b.exposed_s > 0 and 100 * (v.exposed_s / b.exposed_s - 1) or 0, b.step_s, v.step_s,
    100 * (v.step_s / b.step_s - 1)))
end
return 0
