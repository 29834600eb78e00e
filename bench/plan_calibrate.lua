-- Planner vs measurement on this machine (issue 9, acceptance 1), in one run:
--   1. per synthetic preset (tide synth: llama-1b, dsv3-moe-1b; written once to
--      DIR/tide-plan-PRESET), single process: for each case (prefill of P tokens;
--      decode at batch 1, 8, 32 after 32-token prompts) kernel microbenchmarks
--      at the shape classes the model's cost walk asks for (tide.plan.calib:
--      GEMM rate by weight shape at the rows it runs at, grouped experts per
--      hit, attention per call + rate, op call overhead, streaming bandwidth),
--      in NB + 1 rounds (--blocks NB, default 5), with a block of timed steps
--      between each two (the box is shared and its load drifts, and a burst
--      of load spoils a round or a block): each block is predicted by tide.plan from the profile of the
--      two rounds around it, and the case reports the block whose
--      predicted / measured is the median of the NB (an untimed prefill
--      first: the first at a size faults in its buffers). The steps run back
--      to back after two untimed ones: a step right after a microbenchmark
--      round (~100 MB of weights cycled through) measured 1.2-3x its steady
--      time, which is not the time the planner predicts;
--   2. dsv3-moe-1b under MPI, R ranks of EP (mpirun --oversubscribe, one thread
--      per rank, DP-attention: each rank steps its own batch): one-thread
--      microbenchmarks here before and after the job; inside the job the
--      all-to-all latency and bandwidth, and NB + 1 rounds of an
--      oversubscription probe (the same fixed GEMM / streaming work alone vs
--      in all ranks at once; --modelled uses R / cores and the bandwidth model
--      instead) around NB blocks of the same steps per rank; each block
--      is predicted with the probe rounds around it, and the median block
--      reported, as in 1.
-- Step times are never used to set the profile. Prints one JSON line per case
-- ({"bench":"plan_calibrate", ..., "predicted_ms", "measured_ms", "ratio"}) and a table.
--
--   tide run bench/plan_calibrate.lua [--presets llama-1b,dsv3-moe-1b] [--ranks 4] [--no-mpi]
--        [--prefill 512] [--batches 1,8,32] [--reps 3] [--dir /tmp] [--threads N] [--save FILE]
--        [--explain] [--modelled] [--quick] [--blocks 5]
local opts = { presets = "llama-1b,dsv3-moe-1b", ranks = 4, prefill = 512, batches = "1,8,32", reps = 3, blocks = 5,
  dir = "/tmp", threads = 0, worker = nil, shadow = nil, ["no-mpi"] = false, quick = false, save = nil, explain = false, modelled = false }
do
  local i = 1
  while arg and arg[i] do
    local k = arg[i]:gsub("^%-%-", "")
    if opts[k] == false then opts[k] = true; i = i + 1
    elseif opts[k] ~= nil or k == "worker" or k == "save" or k == "shadow" then opts[k] = arg[i + 1]; i = i + 2
    else error("plan_calibrate: unknown option " .. arg[i]) end
  end
end
local P, REPS, NB = tonumber(opts.prefill), tonumber(opts.reps), tonumber(opts.blocks)
assert(NB and NB >= 1 and NB % 2 == 1, "plan_calibrate: --blocks must be odd (the median block is reported)")
local BATCHES = {}
for b in tostring(opts.batches):gmatch("%d+") do BATCHES[#BATCHES + 1] = tonumber(b) end

local T = require "tide.tensor"
local calib = require "tide.plan.calib"
local median = calib.median
local PROMPT = 32

local function model_dir(preset) return opts.dir .. "/tide-plan-" .. preset end

local function ensure_model(preset)
  local d = model_dir(preset)
  local f = io.open(d .. "/config.json")
  if f then f:close() return d end
  local S = require "tide.synth"
  assert(S.write({ preset = preset, out = d, seed = 1 }))
  return d
end

-- The engine's steps on model m (its own sequences; sync() runs before each
-- timed step: a barrier under MPI). Medians over REPS.
local function measure_prefill(m, sync, salt, between, reps)
  local kv = m:kv_cache()
  local ts = {}
  for r = 1, reps or REPS do
    local s = assert(kv:seq_new())
    local toks = {}
    for i = 1, P do toks[i] = (i * 37 + salt * 7919 + r) % 8000 + 3 end
    if between then between(r) end
    sync()
    local t0 = T.now()
    assert(m:step({ s }, { toks }, "last"))
    ts[r] = T.now() - t0
    kv:seq_free(s)
  end
  return median(ts)
end

-- decode at batch B after PROMPT-token prompts (2 untimed steps, then 3 * REPS timed)
local function measure_decode(m, B, sync, salt, between)
  local kv = m:kv_cache()
  local seqs, toks = {}, {}
  for i = 1, B do
    seqs[i] = assert(kv:seq_new())
    local p = {}
    for j = 1, PROMPT do p[j] = (i * 131 + j * 17 + salt * 7919) % 8000 + 3 end
    toks[i] = p
  end
  sync()
  assert(m:step(seqs, toks, "last"))
  local dt = {}
  for r = 1, 3 * REPS + 2 do -- the first two untimed; decode steps are short, so three times the repeats
    local one = {}
    for i = 1, B do one[i] = { (i * 29 + r * 7 + salt) % 8000 + 3 } end
    if between then between(r) end
    sync()
    local t0 = T.now()
    assert(m:step(seqs, one, "last"))
    if r > 2 then dt[#dt + 1] = T.now() - t0 end
  end
  for i = 1, B do kv:seq_free(seqs[i]) end
  return median(dt)
end

-- The engine's own work between kernels in a step of case c, measured on the
-- model's shadow sm (tide.plan.calib.host_time: same structure, widths of a
-- few elements but an MoE model's hidden size, each kernel call preceded by a
-- cache-evicting write; clock "cpu": calib.host_cpu, for ranks sharing cores)
local function shadow_host(sm, c, sync, salt, clock)
  local t = calib.host_table(sm, { c }, { sync = sync, salt = salt, n = 15, n_prefill = 5, clock = clock })
  return t[c.phase][c.batch]
end

local function load(dir, kvseqs)
  local tide = require "tide"
  return assert(tide.load(dir, { kv = { seqs = kvseqs }, max_ctx = math.max(P, PROMPT + 3 * REPS + 4) + 16 }))
end

-- ---- the MPI worker (one rank of the EP job) -------------------------------------------

if opts.worker then
  local comm = require "tide.comm"
  local res = assert(comm.launch(function(c)
    local ffi = require "ffi"
    local ep = require "tide.parallel.ep"
    T.set_threads(1)
    local m = load(opts.worker, math.max(BATCHES[#BATCHES], 1) + 2)
    assert(ep.apply(m, c, {}))
    local n = c:size()
    -- all-to-all microbenchmark: alltoallv of `b` bytes to each peer
    local function a2a(b)
      local sb, rb = ffi.new("uint8_t[?]", b * n), ffi.new("uint8_t[?]", b * n)
      local cnt = {}
      for i = 1, n do cnt[i] = b end
      local ts = {}
      for r = 1, 25 do
        c:barrier()
        local t0 = T.now()
        assert(c:alltoallv(sb, cnt, rb, cnt))
        ts[r] = T.now() - t0
      end
      return median(ts)
    end
    -- the oversubscription probe, all ranks at once (tide.plan.calib.probe): rank-averaged times
    local function probe()
      c:barrier()
      local pc, ps = calib.probe("bf16", false, function() c:barrier() end)
      local pm = c:allreduce_table({ pc, ps }, "sum")
      return { pm[1] / n, pm[2] / n }
    end
    local t_small, big = a2a(64), 256 * 1024
    local t_big = a2a(big)
    local lat = t_small
    local bw = big * (n - 1) / math.max(t_big - t_small, 1e-9)
    local sync = function() c:barrier() end
    -- NB + 1 probe rounds around NB blocks of steps (as the single-process cases); the step of the
    -- job is the slowest rank's
    measure_prefill(m, sync, c:rank() + 11, nil, 1) -- untimed: faults in the prefill buffers
    -- the engine's own work between kernels, on the shadow (EP applied the same way), per case and
    -- block, right after the block's steps (the box drifts); rank mean, in CPU seconds: the wall time
    -- of a gap depends on whether the rank was descheduled in it (9-30 ms per step at batch 32 from
    -- one run to the next), its CPU time much less
    local sm
    if opts.shadow then
      sm = load(opts.shadow, math.max(BATCHES[#BATCHES], 1) + 2)
      assert(ep.apply(sm, c, {}))
    end
    local function shadow_hosts(b)
      if not sm then return {} end
      local h = { shadow_host(sm, { phase = "prefill", batch = P }, sync, c:rank() + 3 + b, "cpu") }
      for _, B in ipairs(BATCHES) do
        h[#h + 1] = shadow_host(sm, { phase = "decode", batch = B }, sync, c:rank() + 5 + b, "cpu")
      end
      h = c:allreduce_table(h, "sum")
      for i = 1, #h do h[i] = h[i] / n end
      return h
    end
    local probes, blocks, hosts = { probe() }, {}, {}
    for b = 1, NB do
      local vals = { measure_prefill(m, sync, c:rank() + 1 + 4 * b, nil, 1) }
      for _, B in ipairs(BATCHES) do vals[#vals + 1] = measure_decode(m, B, sync, c:rank() + 1 + 4 * b) end
      blocks[b] = c:allreduce_table(vals, "max")
      hosts[b] = shadow_hosts(b)
      probes[b + 1] = probe()
    end
    if sm then sm:free() end
    local A = require "tide.cmd.args"
    return A.json({ latency = lat, bw = bw, probes = probes, blocks = blocks, hosts = hosts })
  end, {}))
  if res[1] then print("EPRESULT " .. res[1]) end
  return 0
end

-- ---- the driver ---------------------------------------------------------------------

local plan = require "tide.plan"
local C = require("tide.ffi").C
local cores = tonumber(C.tide_pool_cpu_count())
local threads = tonumber(opts.threads) > 0 and tonumber(opts.threads) or (tonumber(os.getenv("TIDE_THREADS") or "") or cores)
local rows = {}
local function log(s) io.stderr:write("# ", s, "\n") end

local function recipe_for(dir, wd, ep)
  return { model = dir, mla = "auto", prefill_mla = "auto",
    quant = { weights = wd, kv = "f32", act = "f32", dispatch = "f32", combine = "f32" }, parallel = { ep = ep } }
end
local function cases()
  local c = { { phase = "prefill", batch = P, name = "prefill" .. P,
    workload = { input = { mean = P, cv = 0 }, output = { mean = 1, cv = 0 }, prefix_hit = 0 } } }
  for _, B in ipairs(BATCHES) do
    -- decode steps run at KV lengths PROMPT+1 .. PROMPT+REPS+2
    c[#c + 1] = { phase = "decode", batch = B, name = "decode_b" .. B,
      workload = { input = { mean = PROMPT, cv = 0 }, output = { mean = 1, cv = 0 }, kv_len = PROMPT + 1 + (3 * REPS + 2) / 2 } }
  end
  return c
end

local function predict(recipe, hw, c)
  local r = assert(plan.evaluate(recipe, { hardware = hw, phase = c.phase, batch = c.batch, workload = c.workload }))
  return r[c.phase]
end

-- "pred/meas=ratio" per block, in the order given
local function block_list(blocks)
  local t = {}
  for _, b in ipairs(blocks) do t[#t + 1] = string.format("%.1f/%.1f=%.3f", b.pred.step * 1e3, b.meas * 1e3, b.ratio) end
  return table.concat(t, "  ")
end

local saved = {}
local function report(preset, mode, c, pred, meas)
  if opts.explain then print(require("tide.cmd.plan").explain(pred)) end
  local row = { preset = preset, mode = mode, case = c.name, predicted = pred.step, measured = meas,
    ops = calib.op_count(pred) }
  rows[#rows + 1] = row
  print(string.format('{"bench":"plan_calibrate","preset":"%s","mode":"%s","case":"%s","threads":%d,"ops_per_step":%d,'
    .. '"predicted_ms":%.3f,"measured_ms":%.3f,"ratio":%.3f}', preset, mode, c.name, mode == "single" and threads or 1,
    row.ops, pred.step * 1e3, meas * 1e3, pred.step / meas))
  io.stdout:flush()
end

T.set_threads(threads)
log(string.format("%d cores, %d threads (single process), %d ranks under MPI", cores, threads, opts.ranks))
local moe_dir
for preset in opts.presets:gmatch("[^,]+") do
  local dir = ensure_model(preset)
  local m = load(dir, math.max(BATCHES[#BATCHES], 1) + 2)
  local wd = m.arch.lm_head.weight:dtype()
  local recipe = recipe_for(dir, wd, 1)
  local cs = cases()
  local sdir = assert(calib.shadow_dir(dir, dir .. "-shadow"))
  local sm = load(sdir, math.max(BATCHES[#BATCHES], 1) + 2)
  -- per case: microbenchmarks at the shape classes and rows this case uses
  -- in NB + 1 rounds, and between each two a block of timed steps (a shared
  -- machine's load drifts: each block is predicted from the two rounds around
  -- it); the case reports the block whose predicted / measured is the median
  for _, c in ipairs(cs) do
    local need = calib.needs(recipe, { c })
    local mo = { threads = threads, dtype = wd, reps = 1, quick = opts.quick, per_shape = true,
      mgrid = calib.bracket(need.ms), rpe = calib.bracket(need.rpe) }
    log(string.format("%s %s: microbenchmarks (%d threads; rows %s), %d rounds around %d blocks of steps", preset, c.name,
      threads, table.concat(mo.mgrid, ","), NB + 1, NB))
    mo.log = log
    local profs = { calib.measure(need, mo) }
    mo.log = nil
    local blocks = {}
    local host = shadow_host(sm, c, function() end, 3)
    log(string.format("%s %s: engine work between kernels on the shadow %.3f ms per step", preset, c.name, host * 1e3))
    -- the first prefill at this size allocates and faults in its buffers: one untimed before the blocks
    if c.phase == "prefill" then measure_prefill(m, function() end, 9, nil, 1) end
    for b = 1, NB do
      local meas = c.phase == "prefill" and measure_prefill(m, function() end, b, nil, 1)
        or measure_decode(m, c.batch, function() end, b)
      profs[b + 1] = calib.measure(need, mo)
      local hw = calib.profile(calib.median_merge({ profs[b], profs[b + 1] }), { host_step = host })
      local pred = predict(recipe, hw, c)
      blocks[b] = { meas = meas, pred = pred, hw = hw, ratio = pred.step / meas }
    end
    table.sort(blocks, function(a, b) return a.ratio < b.ratio end)
    log(string.format("%s %s: predicted / measured ms per block (sorted by ratio) %s", preset, c.name, block_list(blocks)))
    local mid = blocks[(NB + 1) / 2]
    saved[preset .. "/single/" .. c.name] = mid.hw
    report(preset, "single", c, mid.pred, mid.meas)
  end
  if m.arch.layers[#m.arch.layers].moe then moe_dir = { dir = dir, wd = wd, preset = preset, shadow = sdir } end
  m:free()
  sm:free()
  collectgarbage()
end

-- EP under MPI
local R = tonumber(opts.ranks)
local function have_mpirun() return os.execute("command -v mpirun >/dev/null 2>&1") == 0 end
if moe_dir and not opts["no-mpi"] and R > 1 and have_mpirun() then
  local recipe = recipe_for(moe_dir.dir, moe_dir.wd, R)
  local cs = cases()
  log(moe_dir.preset .. ": calibrating one thread (for " .. R .. " single-threaded ranks)")
  local need = calib.needs(recipe, cs)
  local mo = { threads = 1, dtype = moe_dir.wd, reps = REPS, log = log, quick = opts.quick, per_shape = true,
    mgrid = calib.bracket(need.ms), rpe = calib.bracket(need.rpe) }
  local prof1 = calib.measure(need, mo)
  local bw1, bw_all = calib.bandwidth_pair(moe_dir.wd, cores, 1, opts.quick)
  T.set_threads(1)
  local pc1, ps1 = calib.probe("bf16", opts.quick)
  log(string.format("matvec stream: 1 thread %.1f GB/s, %d threads %.1f GB/s", bw1 / 1e9, cores, bw_all / 1e9))
  local exe = arg[-1] or "tide"
  local cmd = string.format("OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 mpirun --oversubscribe -np %d %s run %s"
    .. " --worker %s --shadow %s --prefill %d --batches %s --reps %d --blocks %d 2>&1", R, exe,
    arg[0] or "bench/plan_calibrate.lua", moe_dir.dir, moe_dir.shadow, P, opts.batches, REPS, NB)
  log("running: " .. cmd)
  local p = io.popen(cmd)
  local outp = p:read("*a")
  p:close()
  -- the same microbenchmarks again after the job, merged with the first
  mo.log = nil
  local prof = calib.merge(prof1, calib.measure(need, mo))
  local b1b, bab = calib.bandwidth_pair(moe_dir.wd, cores, 1, opts.quick)
  bw1, bw_all = math.sqrt(bw1 * b1b), math.sqrt(bw_all * bab)
  T.set_threads(1)
  local pc2, ps2 = calib.probe("bf16", opts.quick)
  local pc_alone, ps_alone = math.sqrt(pc1 * pc2), math.sqrt(ps1 * ps2)
  local js = outp:match("EPRESULT (%b{})")
  if not js then
    io.stderr:write(outp, "\nplan_calibrate: the MPI job gave no result\n")
  else
    local res = require("cjson").decode(js)
    log(string.format("all-to-all among %d ranks: latency %.1f us, %.2f GB/s per rank", R, res.latency * 1e6, res.bw / 1e9))
    -- block b of steps ran between probe rounds b and b + 1: its sharing factors are their mean over the
    -- one-thread probe alone
    local function over_of(b)
      local p0, p1 = res.probes[b], res.probes[b + 1]
      return { compute = (p0[1] + p1[1]) / 2 / pc_alone, stream = (p0[2] + p1[2]) / 2 / ps_alone }
    end
    for b = 1, NB do
      local o = over_of(b)
      log(string.format("block %d: oversubscription measured by the probe: compute x%.2f, streaming x%.2f (%d ranks / %d"
        .. " cores = %.2f; the modelled streaming factor would be x%.2f)", b, o.compute, o.stream, R, cores, R / cores,
        R / cores * bw1 / (bw_all / cores)))
    end
    for ci, c in ipairs(cs) do
      local hs = {}
      for b = 1, NB do hs[b] = string.format("%.2f", ((res.hosts[b] or {})[ci] or 0) * 1e3) end
      log(string.format("%s ep%d %s: engine work between kernels on the shadow, ms CPU per step by block (rank mean;"
        .. " shared out over the cores like compute): %s", moe_dir.preset, R, c.name, table.concat(hs, " ")))
      local blocks = {}
      for b = 1, NB do
        local hw = calib.profile(prof, { ranks = R, cores = cores, a2a = { latency = res.latency, bw = res.bw },
          bw1 = bw1, bw_all = bw_all, oversub = not opts.modelled and over_of(b) or nil, host_step = (res.hosts[b] or {})[ci], host_cpu = true })
        local meas = res.blocks[b][ci]
        local pred = predict(recipe, hw, c)
        blocks[b] = { meas = meas, pred = pred, hw = hw, ratio = pred.step / meas }
      end
      table.sort(blocks, function(x, y) return x.ratio < y.ratio end)
      log(string.format("%s ep%d %s: predicted / measured ms per block (sorted by ratio) %s", moe_dir.preset, R, c.name,
        block_list(blocks)))
      local mid = blocks[(NB + 1) / 2]
      saved[moe_dir.preset .. "/ep" .. R .. "/" .. c.name] = mid.hw
      report(moe_dir.preset, "ep" .. R .. "-mpi", c, mid.pred, mid.meas)
    end
  end
end

if opts.save then
  local f = assert(io.open(opts.save, "w"))
  f:write("-- profiles measured by bench/plan_calibrate.lua\nreturn ", require("tide.cmd.calibrate").serialize(saved), "\n")
  f:close()
end
print(string.format("\n%-12s %-9s %-11s %6s %12s %12s %7s", "preset", "mode", "case", "ops", "measured ms", "predicted ms",
  "ratio"))
local worst = 0
for _, r in ipairs(rows) do
  local ratio = r.predicted / r.measured
  worst = math.max(worst, math.abs(ratio - 1))
  print(string.format("%-12s %-9s %-11s %6d %12.2f %12.2f %7.2f", r.preset, r.mode, r.case, r.ops, r.measured * 1e3,
    r.predicted * 1e3, ratio))
end
print(string.format("worst |predicted/measured - 1| = %.1f%% over %d cases (target 20%%)", 100 * worst, #rows))
return 0
