-- tide.plan.calib: microbenchmarks of this machine, with Tide's own kernels,
-- that make a CPU hardware profile for the planner (tide.plan.hardware's
-- `cpu` section). Nothing here times a model step: each number is one
-- kernel on synthetic operands, at shape classes taken from the model's
-- cost walk (tide.plan.cost), so a step is *predicted* from them.
--
--   local calib = require "tide.plan.calib"
--   local need = calib.needs(recipe, cases)          -- shape classes of a model's steps
--   local prof = calib.measure(need, { threads = 2 }) -- a profile table (plain data)
--
-- What is measured (all medians of repeats):
--   gemm[dtype]["n x k"][m]     flop/s of out (m, n) = x (m, k) @ W^T, W (n, k) in the
--                               model's weight dtype, cycling through enough copies of W
--                               (>= 96 MB) that weights come from DRAM as in a step;
--   experts["dim x inter"][r]   seconds per expert hit of the grouped expert kernel
--                               (gate, up, swiglu, down) with r rows per hit expert;
--   attn["H/nkv/qk/v"]          fixed seconds per call + flop/s of the attention kernel
--                               over the paged cache (two points: decode-like, prefill-like);
--   bw, bw1, bw_all             streaming bandwidth of a weight matvec (this thread count,
--                               one thread, all cores) and of an elementwise op;
--   op_overhead                 seconds of one tiny op call from Lua (FFI + pool dispatch).
local T = require "tide.tensor"
local cost = require "tide.plan.cost"

local M = {}

local function median(t)
  local s = {}
  for i = 1, #t do s[i] = t[i] end
  table.sort(s)
  local n = #s
  if n % 2 == 1 then return s[(n + 1) / 2] end
  return 0.5 * (s[n / 2] + s[n / 2 + 1])
end
M.median = median

-- median over `reps` rounds of the time of f() (one warm-up round first)
local function time_med(reps, f)
  f()
  local ts = {}
  for r = 1, reps do
    local t0 = T.now()
    f()
    ts[r] = T.now() - t0
  end
  return median(ts)
end
M.time_med = time_med

local function key2(a, b) return string.format("%d x %d", a, b) end
M.key2 = key2

-- Shape classes of the ops a set of planned steps runs: walks the planner's
-- own cost recorder (tide.plan) for each case { phase, batch, workload } of
-- recipe and collects GEMM weight shapes, grouped-expert shapes and attention
-- layouts. Returns { gemm = {{n,k}}, experts = {{E,dim,inter}}, attn = {{H,nkv,qk,v,kv_row}} }.
function M.needs(recipe, cases)
  local plan = require "tide.plan"
  local ctx = assert(plan.context(recipe, { hardware = M.placeholder() }))
  local seen, out = {}, { gemm = {}, experts = {}, attn = {}, ms = {}, rpe = {} }
  for _, c in ipairs(cases) do
    ctx.w = plan.workload(c.workload)
    local r = plan.phase(ctx, c.phase, c.batch)
    for _, op in ipairs(r.ops) do
      if op.kind == "gemm" and op.grouped then out.rpe[#out.rpe + 1] = op.m / math.max(op.experts or 1, 1e-9)
      elseif op.kind == "gemm" then out.ms[#out.ms + 1] = op.m end
      if op.kind == "gemm" and op.grouped and op.per_slot then
        local m = op.m / math.max(op.experts or 1, 1e-9)
        out.ms[#out.ms + 1] = m
        for _, sh in ipairs({ { op.n / 3, op.k }, { op.k, op.n / 3 } }) do
          local k = "g" .. key2(sh[1], sh[2])
          if not seen[k] then seen[k] = { n = sh[1], k = sh[2], ms = {} } out.gemm[#out.gemm + 1] = seen[k] end
          seen[k].ms[#seen[k].ms + 1] = m
        end
      elseif op.kind == "gemm" and op.grouped then
        local k = "e" .. key2(op.k, op.n / 3)
        if not seen[k] then
          seen[k] = true
          out.experts[#out.experts + 1] = { E = ctx.cfg.n_routed_experts, dim = op.k, inter = op.n / 3 }
        end
      elseif op.kind == "gemm" then
        local k = "g" .. key2(op.n, op.k)
        if not seen[k] then seen[k] = { n = op.n, k = op.k, ms = {} } out.gemm[#out.gemm + 1] = seen[k] end
        seen[k].ms[#seen[k].ms + 1] = op.m -- the rows this shape runs at
      elseif op.kind == "attn" then
        local lay = { H = op.heads, qk = op.qk_dim, v = op.v_dim }
        if op.v_dim == op.qk_dim then lay.nkv = math.floor(op.kv_row / (2 * op.qk_dim) + 0.5) -- GQA
        elseif op.kv_row == op.qk_dim then lay.nkv, lay.v_from_k = 1, op.v_dim -- MLA absorbed: V = latent part of K
        else lay.nkv = op.heads end                                            -- MLA naive: K, V decompressed per head
        local k = string.format("a%d/%d/%d/%d", lay.H, lay.nkv, lay.qk, lay.v)
        if not seen[k] then seen[k] = true out.attn[#out.attn + 1] = lay end
      end
    end
  end
  return out
end

-- The points of `base` (sorted) that bracket each of `values`: the grid a
-- set of rows needs for log-log interpolation.
function M.bracket(values, base)
  base = base or { 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096 }
  local set = {}
  for _, v in ipairs(values) do
    local lo, hi = base[1], base[#base]
    for _, g in ipairs(base) do
      if g <= v then lo = g end
      if g >= v and hi == base[#base] and g < hi then hi = g end
    end
    if v >= base[#base] then hi = base[#base] end
    set[lo] = true
    set[math.max(hi, lo)] = true
  end
  local out = {}
  for g in pairs(set) do out[#out + 1] = g end
  table.sort(out)
  return out
end

-- Two measurements of the same things (before and after what they are
-- compared with, on a shared machine) -> their geometric mean, leaf by leaf.
function M.merge(a, b)
  if type(a) == "number" and type(b) == "number" then return math.sqrt(a * b) end
  if type(a) ~= "table" or type(b) ~= "table" then return a end
  local o = {}
  for k, v in pairs(a) do o[k] = (b[k] ~= nil) and M.merge(v, b[k]) or v end
  for k, v in pairs(b) do if o[k] == nil then o[k] = v end end
  return o
end

-- Several measurements of the same things (interleaved with what they are
-- compared with) -> their median, leaf by leaf.
function M.median_merge(list)
  local a = list[1]
  if type(a) == "number" then
    local v = {}
    for i = 1, #list do v[i] = list[i] end
    return median(v)
  end
  if type(a) ~= "table" then return a end
  local o = {}
  for k in pairs(a) do
    local sub = {}
    for i = 1, #list do if list[i][k] ~= nil then sub[#sub + 1] = list[i][k] end end
    o[k] = M.median_merge(sub)
  end
  return o
end

-- A minimal profile to walk costs with before anything is measured.
function M.placeholder()
  return { name = "placeholder", gpus_per_node = 1, peak = { bf16 = 1e11, f32 = 1e11 },
    mem = { capacity = 1e12, bw = 1e10 }, intra = { bw = 1e10, latency = 1e-6 }, inter = { bw = 1e10, latency = 1e-6 },
    eff = { gemm_fp8 = 1, gemm_bf16 = 1, attn_bf16 = 1, mem = 1, intra = 1, inter = 1 } }
end

-- ---- the microbenchmarks ----------------------------------------------------------

local function weight(n, k, dt)
  local w = T.zeros({ n, k })
  if dt == "f32" then return w end
  local c = w:copy(dt)
  w:free()
  return c
end

-- flop/s of out (m, n) = x (m, k) @ W^T over `copies` weights (cycled)
local function gemm_rate(ws, m, n, k, reps)
  local x, o = T.zeros({ m, k }), T.zeros({ m, n })
  local t = time_med(reps, function() for i = 1, #ws do T.op.matmul(o, x, ws[i]) end end) / #ws
  x:free(); o:free()
  return 2 * m * n * k / t, t
end

-- Seconds per expert hit of the grouped expert kernel, E experts of (dim,
-- inter), r rows on each of `hit` experts.
local function experts_time(ex, E, dim, inter, r, hit, reps)
  local rows = r * hit
  local x, g, u, y = T.zeros({ rows, dim }), T.zeros({ rows, inter }), T.zeros({ rows, inter }), T.zeros({ rows, dim })
  local ffi = require "ffi"
  local off = ffi.new("int32_t[?]", E + 1)
  for e = 0, E do off[e] = math.min(e, hit) * r end -- the first `hit` experts get r rows each
  local t = time_med(reps, function() T.op.moe_experts(y, x, g, u, off, E, ex) end)
  x:free(); g:free(); u:free(); y:free()
  return t / hit
end

-- Time of one attention call: `seqs` sequences each with `n` new query
-- tokens on top of `past` cached positions.
local function attn_time(lay, seqs, n, past, reps)
  local KV = require "tide.kv"
  local blk = 16
  local per = math.ceil((past + n) / blk) + 1
  local kv = assert(KV.new({ { n_kv_head = lay.nkv, k_dim = lay.qk, v_dim = lay.v_from_k and 0 or lay.v,
    v_from_k = lay.v_from_k } }, { block = blk, blocks = per * seqs + 4, dtype = "f32" }))
  local ss, c0, c1 = {}, {}, {}
  for i = 1, seqs do ss[i] = kv:seq_new(); c0[i] = past; c1[i] = n end
  if past > 0 then assert(kv:step(ss, c0)) end
  local batch = assert(kv:step(ss, c1))
  local q = T.zeros({ seqs * n, lay.H, lay.qk })
  local o = T.zeros({ seqs * n, lay.H, lay.v })
  -- each timed call starts with cold caches, as in a step, where a layer's attention follows the
  -- GEMMs that stream megabytes of weights (a repeated call on hot caches ran ~2x faster than in steps)
  local ev = T.zeros({ 2 ^ 23 }) -- 32 MB: more than this machine's caches
  local ts = {}
  T.op.attention(o, q, kv.k[1], kv.v[1], batch, 0.1)
  for r = 1, math.max(reps, 3) do
    T.op.scale(ev, ev, 1.0)
    local t0 = T.now()
    T.op.attention(o, q, kv.k[1], kv.v[1], batch, 0.1)
    ts[r] = T.now() - t0
  end
  local t = median(ts)
  ev:free()
  local ctx = past + (n + 1) / 2
  local flops = 2 * seqs * n * ctx * lay.H * (lay.qk + lay.v)
  q:free(); o:free()
  return t, flops
end

-- Streaming rate (bytes/s) of a 1-row matvec over `total` bytes of dt weights.
local function stream_rate(dt, total, reps)
  local k = 4096
  local n = math.max(64, math.floor(total / (k * (T.elem_bytes and T.elem_bytes[dt] or 2))))
  local w = weight(n, k, dt)
  local x, o = T.zeros({ 1, k }), T.zeros({ 1, n })
  local t = time_med(reps, function() T.op.matmul(o, x, w) end)
  local b = w:nbytes()
  w:free(); x:free(); o:free()
  return b / t
end

-- need: from M.needs. o: threads, dtype (weights, default bf16), mgrid
-- (rows m), rpe (rows per expert hit), reps, copies_bytes, quick, log(fn).
function M.measure(need, o)
  o = o or {}
  local log = o.log or function() end
  if o.threads then assert(T.set_threads(o.threads)) end
  local dt = o.dtype or "bf16"
  local reps = o.reps or 3
  local mgrid = o.mgrid or { 1, 8, 32, 128, 512 }
  local rgrid = o.rpe or { 1, 2, 4, 8, 32 }
  local min_bytes = o.copies_bytes or 96e6
  local prof = { threads = o.threads, dtype = dt, gemm = { [dt] = {} }, experts = { [dt] = {} }, attn = {} }
  -- per-call overhead of a tiny op from Lua
  local a, b = T.zeros({ 1, 16 }), T.zeros({ 1, 16 })
  local calls = 2000
  prof.op_overhead = time_med(3, function() for _ = 1, calls do T.op.add(b, a, a) end end) / calls
  -- elementwise bandwidth (read + write of a large f32 array)
  local ne = o.quick and 2 ^ 20 or 2 ^ 24
  local xe, ye = T.zeros({ ne }), T.zeros({ ne })
  prof.elt_bw = 8 * ne / time_med(reps, function() T.op.scale(ye, xe, 1.0) end)
  xe:free(); ye:free()
  -- weight streaming (1-row matvec) at this thread count
  prof.bw = stream_rate(dt, o.quick and 16e6 or 128e6, reps)
  log(string.format("op call %.2f us, elementwise %.1f GB/s, %s matvec stream %.1f GB/s", prof.op_overhead * 1e6,
    prof.elt_bw / 1e9, dt, prof.bw / 1e9))
  -- GEMM by weight shape and rows
  for _, s in ipairs(need.gemm or {}) do
    local wb = s.n * s.k * (dt == "f32" and 4 or 2)
    local copies = math.max(1, math.min(256, math.ceil(min_bytes / wb)))
    local ws = {}
    for i = 1, copies do ws[i] = weight(s.n, s.k, dt) end
    local row = {}
    -- o.per_shape: only the rows this shape runs at (bracketed), else the grid
    local grid = (o.per_shape and s.ms and #s.ms > 0) and M.bracket(s.ms) or mgrid
    for _, m in ipairs(grid) do
      local r = gemm_rate(ws, m, s.n, s.k, reps)
      row[m] = r
    end
    prof.gemm[dt][key2(s.n, s.k)] = row
    log(string.format("gemm %-12s %s", key2(s.n, s.k), (function()
      local p = {}
      for _, m in ipairs(grid) do p[#p + 1] = string.format("m=%d %.1f", m, row[m] / 1e9) end
      return table.concat(p, "  ") .. " GFLOP/s"
    end)()))
    for i = 1, copies do ws[i]:free() end
    collectgarbage()
  end
  -- grouped experts
  for _, e in ipairs(need.experts or {}) do
    local ffi = require "ffi"
    local E = e.E
    local ex = ffi.new("const tide_tensor_t *[?]", 3 * E)
    local keep = {}
    for i = 0, E - 1 do
      local gw, uw, dw = weight(e.inter, e.dim, dt), weight(e.inter, e.dim, dt), weight(e.dim, e.inter, dt)
      keep[#keep + 1] = gw; keep[#keep + 1] = uw; keep[#keep + 1] = dw
      ex[3 * i], ex[3 * i + 1], ex[3 * i + 2] = gw._p, uw._p, dw._p
    end
    local row = {}
    for _, r in ipairs(rgrid) do row[r] = experts_time(ex, E, e.dim, e.inter, r, E, reps) end
    prof.experts[dt][key2(e.dim, e.inter)] = row
    log(string.format("experts %s (E=%d): %s", key2(e.dim, e.inter), E, (function()
      local p = {}
      for _, r in ipairs(rgrid) do p[#p + 1] = string.format("r=%d %.3f ms", r, row[r] * 1e3) end
      return table.concat(p, "  ") .. " per expert hit"
    end)()))
    for i = 1, #keep do keep[i]:free() end
    collectgarbage()
  end
  -- attention: a tiny call (the fixed cost), then the flop rate at a
  -- decode-like point (8 sequences x 1 query over 64 cached) and a
  -- prefill-like one (256 queries over 256 cached + themselves); every
  -- timed call on cold caches (attn_time)
  for _, lay in ipairs(need.attn or {}) do
    local t0 = attn_time(lay, 1, 1, 16, reps)
    local t1, f1 = attn_time(lay, 8, 1, 64, reps)
    local t2, f2 = attn_time(lay, 1, 256, 256, reps)
    local k = string.format("%d/%d/%d/%d", lay.H, lay.nkv, lay.qk, lay.v)
    prof.attn[k] = { per_call = t0, rate_decode = f1 / math.max(t1 - t0, 1e-9), rate = f2 / math.max(t2 - t0, 1e-9) }
    log(string.format("attention %s: %.1f us per call; %.2f GFLOP/s decode-like, %.2f GFLOP/s prefill-like", k, t0 * 1e6,
      prof.attn[k].rate_decode / 1e9, prof.attn[k].rate / 1e9))
  end
  return prof
end

-- A fixed probe for how much slower one thread runs when several ranks share
-- the machine: (a) 20 compute-bound GEMMs (64 rows, 1024 x 1024 weights),
-- (b) one-row matvecs streaming 64 MB of weights. Run it alone, then in
-- every rank of a job at once; the ratios are the measured oversubscription
-- (on an otherwise idle box about ranks / cores). Returns medians (s).
-- sync (optional, a barrier of the ranks running the probe together): each round then runs from one
-- barrier to the next, so it lasts until the slowest rank is done, as a step synchronized by its
-- all-to-alls does (timed per rank alone, rounds that ran while other ranks waited came out fast:
-- compute x1.55 / streaming x1.23 for 4 ranks on 2 cores in some runs, x2.03 / x1.95 in others).
function M.probe(dt, quick, sync)
  dt = dt or "bf16"
  local n = quick and 3 or 5
  local wc = {}
  for i = 1, 4 do wc[i] = weight(1024, 1024, dt) end
  local ws = {}
  -- 64 MB of streamed weights and rounds of tens of ms even when quick: a round
  -- shorter than a few scheduler slices, or weights that fit the L3 alone,
  -- measure the scheduler or the cache instead of the sharing (--quick gave x170)
  for i = 1, 8 do ws[i] = weight(1024, 4096, dt) end
  local x, o = T.zeros({ 64, 1024 }), T.zeros({ 64, 1024 })
  local x1, o1 = T.zeros({ 1, 4096 }), T.zeros({ 1, 1024 })
  local function timed(f)
    if not sync then return time_med(n, f) end
    f()
    local ts = {}
    for r = 1, n do
      sync()
      local t0 = T.now()
      f()
      sync()
      ts[r] = T.now() - t0
    end
    return median(ts)
  end
  -- rounds of tens of ms (streaming: 16 passes over 64 MB of weights), several scheduler slices
  local tc = timed(function() for k = 1, 20 do T.op.matmul(o, x, wc[(k - 1) % 4 + 1]) end end)
  local passes = 16
  local ts = timed(function() for k = 1, passes * #ws do T.op.matmul(o1, x1, ws[(k - 1) % #ws + 1]) end end)
  for i = 1, #wc do wc[i]:free() end
  for i = 1, #ws do ws[i]:free() end
  return tc, ts
end

-- Streaming bandwidth at 1 thread and at `all` threads (for the shared-core
-- model of several ranks on one box); restores `threads` afterwards.
function M.bandwidth_pair(dt, all, threads, quick)
  local b1, ball = {}, {}
  for r = 1, quick and 1 or 5 do -- interleaved, medians: the two are compared with each other
    assert(T.set_threads(1))
    b1[r] = stream_rate(dt or "bf16", quick and 16e6 or 128e6, 1)
    assert(T.set_threads(all))
    ball[r] = stream_rate(dt or "bf16", quick and 16e6 or 128e6, 1)
  end
  if threads then assert(T.set_threads(threads)) end
  return median(b1), median(ball)
end

-- A CPU hardware profile for tide.plan from the measurements: prof from
-- M.measure; extra: { cores, ranks, a2a = { latency, bw }, bw1, bw_all }.
-- ranks > cores * threads... is modelled in tide.plan.hardware (oversub).
function M.profile(prof, extra)
  extra = extra or {}
  local cap = 0
  local f = io.open("/proc/meminfo", "r")
  if f then
    local s = f:read("*a")
    f:close()
    cap = (tonumber(s:match("MemTotal:%s+(%d+)")) or 0) * 1024
  end
  local peak = 0
  for _, row in pairs(prof.gemm[prof.dtype] or {}) do for _, r in pairs(row) do peak = math.max(peak, r) end end
  local a2a = extra.a2a or { latency = prof.op_overhead, bw = prof.elt_bw / 2 }
  local hw = {
    name = "local", label = "this machine (tide calibrate)", gpus_per_node = extra.ranks or 1,
    peak = { f32 = peak, bf16 = peak, f16 = peak, fp8 = peak, int8 = peak },
    mem = { capacity = cap, bw = prof.bw },
    intra = { bw = a2a.bw, latency = a2a.latency }, inter = { bw = a2a.bw, latency = a2a.latency },
    eff = { gemm_fp8 = 1, gemm_bf16 = 1, attn_bf16 = 1, mem = 1, intra = 1, inter = 1 },
    price = 0,
    cpu = {
      threads = prof.threads, gemm = prof.gemm, experts = prof.experts, attn = prof.attn,
      op_overhead = prof.op_overhead, elt_bw = prof.elt_bw, bw = prof.bw,
      -- several single-threaded ranks sharing `cores` cores (see hardware.cpu_op_time)
      cores = extra.cores, ranks = extra.ranks, bw1 = extra.bw1, bw_all = extra.bw_all,
      -- measured slowdown of one rank among `ranks` vs one thread alone (M.probe):
      -- { compute = , stream = }; when present it replaces the ranks / cores model
      oversub = extra.oversub,
      comm_calls = { dispatch = 2, combine = 1 }, -- alltoallv calls per EP exchange (counts + rows; rows)
      -- seconds per step of the engine's own work between kernels (M.host_time on
      -- the model's shadow, at the case being predicted)
      host_step = extra.host_step,
      -- host_step / host are CPU seconds of one rank (M.host_cpu), shared out like compute
      host_cpu = extra.host_cpu,
      -- or by phase and batch: host[phase][batch] = seconds per step (tide calibrate)
      host = extra.host,
    },
  }
  return hw
end

-- ---- the engine's own work between kernels ------------------------------------------
--
-- A step is kernels plus the engine's work around them: the modules' Lua,
-- workspace lookups, tensor views, FFI calls. That part does not depend on
-- the widths of the model, only on its structure (layers, heads, experts,
-- top-k, the batch's sequences). It is measured on the model's *shadow*: the
-- same architecture and structure with every width shrunk to a few elements,
-- so its kernels take next to no time, and whatever of them remains is taken
-- out by timing them (tide.profile). Nothing of the model being predicted is
-- timed.

-- shadow_preset(cfg) -> a tide.synth preset with cfg's structure (layers,
-- heads, KV heads, vocabulary, routed/shared experts, top-k, groups, dense
-- layers, q LoRA or not) and widths of a few elements. An MoE model's shadow
-- keeps the hidden size: under EP the engine's Lua copies every routed row
-- (hidden-size wide) four times per layer (pack, gather by slot, back,
-- reorder), and MPI moves the same rows; on 8-wide rows that work vanished
-- (dsv3-moe-1b EP4 decode at batch 32: 4-8 ms per step on the shadow with
-- 64-wide rows, 26-34 ms with the model's 1024, against ~40 ms of the real
-- step's CPU between kernels shared out over the cores).
function M.shadow_preset(cfg)
  local H = cfg.num_attention_heads
  local ds = cfg.kv_lora_rank ~= nil
  local p = { arch = ds and "deepseek_v3" or "llama", vocab_size = cfg.vocab_size, num_hidden_layers = cfg.num_hidden_layers,
    num_attention_heads = H, num_key_value_heads = cfg.num_key_value_heads or H, intermediate_size = 64 }
  if ds then
    p.kv_lora_rank, p.qk_rope_head_dim, p.qk_nope_head_dim, p.v_head_dim = 32, 8, 8, 8
    -- the attention widths above are set on their own; the hidden size only widens the
    -- projections' inputs and outputs (a few elements by the model's hidden)
    p.hidden_size = (cfg.n_routed_experts or 0) > 0 and cfg.hidden_size or 64
    p.q_lora_rank = cfg.q_lora_rank and 32 or nil
    p.moe_intermediate_size = 16
    for _, k in ipairs({ "n_routed_experts", "num_experts_per_tok", "n_shared_experts", "first_k_dense_replace",
      "n_group", "topk_group" }) do p[k] = cfg[k] end
  else
    p.hidden_size = H * 8 -- head_dim 8
  end
  return p
end

-- shadow_dir(model_dir, out) -> the shadow of the checkpoint at model_dir,
-- written to `out` by tide.synth once (kept while its config matches).
function M.shadow_dir(model_dir, out, tokenizer)
  local config = require "tide.config"
  local cfg = assert(config.load(model_dir .. "/config.json"))
  local p = M.shadow_preset(cfg)
  local S = require "tide.synth"
  -- the model's own weight dtype: the modules' paths may differ by dtype
  local dt = ({ float32 = "f32", float16 = "f16" })[cfg.torch_dtype or ""] or "bf16"
  local sc = S.config(p)
  sc.torch_dtype = ({ bf16 = "bfloat16", f16 = "float16", f32 = "float32" })[dt]
  local want = require("tide.cmd.args").json(sc)
  local f = io.open(out .. "/config.json")
  if f then
    local have = f:read("*a")
    f:close()
    local idx = io.open(out .. "/model.safetensors.index.json")
    if idx then idx:close() end
    if idx and have:gsub("%s+$", "") == want then return out end
  end
  local ok, e = S.write({ preset = p, out = out, seed = 7, dtype = dt,
    tokenizer = tokenizer or (require("tide.plan.hardware").root() .. "/models/dsv3-tiny") })
  if not ok then return nil, e end
  return out
end

-- A function that writes `bytes` (default 4 MB) of a scratch buffer, a new
-- value each call: run before each of the shadow's kernel calls (host_time);
-- nil for 0 bytes.
local function evictor(bytes)
  local eb = bytes or 4 * 1024 * 1024
  if eb <= 0 then return nil end
  local ffi = require "ffi"
  local scratch, salt = ffi.new("uint8_t[?]", eb), 0
  return function()
    salt = (salt + 1) % 251
    ffi.fill(scratch, eb, salt)
  end
end

-- host_time(run, n, o) -> seconds per step of the engine's work outside
-- kernels and collectives (median over n steps), and the kernel calls per
-- step. run(i) runs step i under tide.profile, which measures the gaps
-- between kernel calls directly; its own bookkeeping (calls x the cost of one
-- wrapped empty op) is taken out. In a step of the real model every kernel
-- streams megabytes and the engine's Lua data comes back from DRAM after it,
-- so each kernel call of the shadow is preceded by writing o.evict_bytes
-- (default 4 MB, 4x a zen4 core's L2) of a scratch buffer, inside the call's
-- timed span. o.sync() runs before each step (a barrier under MPI), o.prep(i)
-- and o.done(i) untimed around it.
function M.host_time(run, n, o)
  o = o or {}
  local nop = function() end
  local sync, prep, done = o.sync or nop, o.prep or nop, o.done or nop
  local evict = evictor(o.evict_bytes)
  local plain = {}
  if evict then
    for name, f in pairs(T.op) do
      plain[name] = f
      T.op[name] = function(...)
        evict()
        return f(...)
      end
    end
  end
  local ok, rep = pcall(require("tide.profile").run, function(span)
    for i = 1, n do
      prep(i)
      sync()
      span("step" .. i, run, i)
      done(i)
    end
  end, { max_events = 16 })
  for name, f in pairs(plain) do T.op[name] = f end
  if not ok then error(rep, 0) end
  local host, calls = {}, {}
  for i = 1, n do
    local sp = rep.spans["step" .. i]
    host[i], calls[i] = sp.seconds - sp.op_seconds - sp.op_calls * rep.per_call_overhead, sp.op_calls
  end
  return math.max(0, median(host)), median(calls)
end

-- host_cpu(run, n, o) -> as host_time, in this thread's CPU seconds: per
-- step, the step's CPU time less the CPU time inside kernel calls (each
-- preceded by the o.evict_bytes write, as in host_time) and collectives, less
-- the wrappers' own cost. For ranks that share cores: the wall time of a gap
-- depends on whether the rank was descheduled in it (the shadow of
-- dsv3-moe-1b under EP4 on 2 cores measured 9-30 ms per step at batch 32 from
-- one run to the next), its CPU time does not; the planner shares the CPU time
-- out over the cores as it does a kernel's (hw.cpu.host_cpu).
function M.host_cpu(run, n, o)
  o = o or {}
  local nop = function() end
  local sync, prep, done = o.sync or nop, o.prep or nop, o.done or nop
  local comm = require "tide.comm"
  local cpu = comm.thread_cpu
  local evict = evictor(o.evict_bytes)
  local inside, calls, depth = 0, 0, 0
  local function finish(c0, ...)
    inside, calls, depth = inside + cpu() - c0, calls + 1, 0
    return ...
  end
  local function wrap(f, evict_first)
    return function(...)
      if depth > 0 then return f(...) end
      depth = 1
      local c0 = cpu()
      if evict_first and evict then evict() end
      return finish(c0, f(...))
    end
  end
  -- the wrapper's own CPU outside the span it counts, per call (an empty op)
  local function noop(a) return a end
  local w = wrap(noop, false)
  local ovh = math.huge
  for _ = 1, 5 do
    local i0, c0 = inside, cpu()
    for _ = 1, 2000 do w(1) end
    local c1 = cpu()
    for _ = 1, 2000 do noop(1) end
    local c2 = cpu()
    ovh = math.min(ovh, ((c1 - c0) - (inside - i0) - (c2 - c1)) / 2000)
  end
  ovh = math.max(ovh, 0)
  local plain, plain_comm = {}, {}
  for name, f in pairs(T.op) do
    plain[name] = f
    T.op[name] = wrap(f, true)
  end
  for _, name in ipairs(require("tide.profile").COMM_CALLS) do
    local f = comm.Comm[name]
    if f then
      plain_comm[name] = f
      comm.Comm[name] = wrap(f, false)
    end
  end
  local host, ncalls = {}, {}
  local ok, err = pcall(function()
    for i = 1, n do
      prep(i)
      sync()
      depth = 0
      local i0, k0, c0 = inside, calls, cpu()
      run(i)
      local c1 = cpu()
      host[i] = (c1 - c0) - (inside - i0) - (calls - k0) * ovh
      ncalls[i] = calls - k0
      done(i)
    end
  end)
  for name, f in pairs(plain) do T.op[name] = f end
  for name, f in pairs(plain_comm) do comm.Comm[name] = f end
  if not ok then error(err, 0) end
  return math.max(0, median(host)), median(ncalls)
end

-- host_table(sm, cases, o) -> { prefill = { [tokens] = s }, decode = { [batch] = s } }:
-- M.host_time on the loaded shadow sm at each case { phase, batch } (decode
-- after 32-token prompts, o.n steps (9); prefill of `batch` tokens in one
-- sequence, o.n_prefill (3)). o.sync runs before each step (a barrier under
-- MPI); o.salt varies the tokens (per rank); o.clock = "cpu" measures with
-- M.host_cpu (CPU seconds, for ranks that share cores).
function M.host_table(sm, cases, o)
  o = o or {}
  local salt, sync = (o.salt or 0) * 7919, o.sync
  local measure = o.clock == "cpu" and M.host_cpu or M.host_time
  local out = { prefill = {}, decode = {} }
  local kv = sm:kv_cache()
  for _, c in ipairs(cases) do
    if c.phase == "prefill" then
      local s
      local toks = {}
      for j = 1, c.batch do toks[j] = (j * 37 + salt) % 8000 + 3 end
      out.prefill[c.batch] = measure(function() assert(sm:step({ s }, { toks }, "last")) end, o.n_prefill or 3,
        { sync = sync, prep = function() s = assert(kv:seq_new()) end, done = function() kv:seq_free(s) end })
    else
      local seqs, toks = {}, {}
      for i = 1, c.batch do
        seqs[i] = assert(kv:seq_new())
        local p = {}
        for j = 1, 32 do p[j] = (i * 131 + j * 17 + salt) % 8000 + 3 end
        toks[i] = p
      end
      assert(sm:step(seqs, toks, "last"))
      local function one(r)
        local t = {}
        for i = 1, c.batch do t[i] = { (i * 29 + r * 7 + salt) % 8000 + 3 } end
        assert(sm:step(seqs, t, "last"))
      end
      one(0)
      out.decode[c.batch] = measure(one, o.n or 9, { sync = sync })
      for i = 1, c.batch do kv:seq_free(seqs[i]) end
    end
  end
  return out
end

-- count of the model's kernel calls per step is in the cost walk (op.calls);
-- exposed for the bench's per-case table
function M.op_count(r)
  local n = 0
  for _, op in ipairs(r.ops) do n = n + (op.calls or 1) end
  return n
end

M.cost = cost
return M
