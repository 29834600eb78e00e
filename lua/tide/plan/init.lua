-- tide.plan: the deployment planner. A recipe (the engine's own, or a plan
-- file under recipes/plans/) + a hardware profile + a workload -> step times,
-- throughput, latency, memory and cost, from the model's own cost methods
-- (tide.plan.cost) and a roofline over the profile (tide.plan.hardware).
--
--   local plan = require "tide.plan"
--   local r = plan.evaluate(plan.load_recipe("recipes/plans/deepseek-v3-day6-decode.lua"), { hardware = "h800" })
--   r.per_node.output_tok_s, r.tpot, r.split, r.ops
local cost = require "tide.plan.cost"
local hwmod = require "tide.plan.hardware"

local M = { hardware = hwmod, cost = cost }

-- ---- recipes and models -----------------------------------------------------------

-- A recipe file: an engine recipe (tide.parallel.recipe) or a plan table.
function M.load_recipe(path)
  if type(path) == "table" then return path end
  local chunk, err = loadfile(path)
  if not chunk then return nil, err end
  local ok, r = pcall(chunk)
  if not ok then return nil, path .. ": " .. tostring(r) end
  if type(r) ~= "table" then return nil, path .. ": a recipe must return a table" end
  r._path = path
  return r
end

local function resolve(path)
  local f = io.open(path, "r")
  if f then f:close() return path end
  return hwmod.root() .. "/" .. path
end

-- The model's normalized config: recipe.model is a folder (config.json), a
-- .lua file returning config.json's values, or such a table.
function M.model_config(recipe)
  local m = recipe.model
  local raw, err
  if type(m) == "table" then raw = m
  elseif type(m) == "string" and m:match("%.lua$") then
    raw, err = hwmod.load_data(resolve(m))
    if not raw then return nil, err end
  elseif type(m) == "string" then
    return require("tide.config").load(resolve(m) .. "/config.json")
  else
    return nil, "recipe: model must be a folder, a .lua config or a table"
  end
  local copy = {}
  for k, v in pairs(raw) do copy[k] = v end
  return require("tide.config").normalize(copy, tostring(m))
end

-- ---- workload ------------------------------------------------------------------------

local DEFAULT_WORKLOAD = {
  input = { mean = 2048, cv = 1.0 },    -- prompt tokens per request (mean, coefficient of variation)
  output = { mean = 512, cv = 1.0 },    -- generated tokens per request
  prefix_hit = 0.0,                     -- fraction of prompt tokens found in the prefix cache
  kv_len = nil,                         -- mean KV length seen by a decode step (default input + output / 2)
  expert_load_cv = 0.0,                 -- assumed spread of expert loads (0: uniform)
  arrival = nil,                        -- requests per second (for queueing in TTFT)
}

function M.workload(w)
  w = w or {}
  local o = {}
  for k, v in pairs(DEFAULT_WORKLOAD) do o[k] = v end
  for k, v in pairs(w) do o[k] = v end
  o.kv_len = o.kv_len or (o.input.mean + o.output.mean / 2)
  return o
end

-- ---- load imbalance ----------------------------------------------------------------

-- E[max of n independent standard normals] = integral of x n phi(x) Phi(x)^(n-1) dx, by the
-- trapezoid rule on [-8, 8] (1.0294 for n = 4, 2.5 for n = 144); 0 for n = 1.
local emax_cache = {}
function M.expected_max_normal(n)
  if n <= 1 then return 0 end
  if emax_cache[n] then return emax_cache[n] end
  local function Phi(x) -- Abramowitz-Stegun 7.1.26 erf, |error| < 1.5e-7
    local z = math.abs(x) / math.sqrt(2)
    local t = 1 / (1 + 0.3275911 * z)
    local y = 1 - (((((1.061405429 * t - 1.453152027) * t) + 1.421413741) * t - 0.284496736) * t + 0.254829592) * t *
      math.exp(-z * z)
    return x >= 0 and 0.5 * (1 + y) or 0.5 * (1 - y)
  end
  local h, sum = 0.005, 0
  for i = 0, 3200 do
    local x = -8 + i * h
    local f = x * n * math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi) * Phi(x) ^ (n - 1)
    sum = sum + ((i == 0 or i == 3200) and 0.5 or 1) * f
  end
  emax_cache[n] = sum * h
  return emax_cache[n]
end

-- Deterministic standard normals (LCG + Box-Muller) for assumed loads.
local function normals(n, seed)
  local s, out = seed or 12345, {}
  local function u()
    s = (s * 1103515245 + 12345) % 2147483648
    return (s + 0.5) / 2147483648
  end
  for i = 1, n do out[i] = math.sqrt(-2 * math.log(u())) * math.cos(2 * math.pi * u()) end
  return out
end

-- Static MoE imbalance (max / mean GPU load) after EPLB places E experts
-- plus R redundant copies on D GPUs for the assumed or given loads.
function M.eplb_imbalance(E, R, D, n_group, gpus_per_node, loads_or_cv)
  if D <= 1 then return 1 end
  local loads = loads_or_cv
  if type(loads) ~= "table" then
    local cv = tonumber(loads) or 0
    local sigma = math.sqrt(math.log(1 + cv * cv))
    local z = normals(E)
    loads = {}
    for e = 1, E do loads[e] = math.exp(sigma * z[e]) end
  end
  local slots = E + R
  if slots % D ~= 0 then return nil, string.format("%d experts + %d redundant do not divide over %d GPUs", E, R, D) end
  local nodes = math.max(1, math.floor(D / gpus_per_node))
  local groups = n_group
  if groups % nodes ~= 0 or D % nodes ~= 0 then groups, nodes = 1, 1 end
  local eplb = require "tide.parallel.eplb"
  local phy2log, _, logcnt = eplb.rebalance({ loads }, slots, groups, nodes, D)
  local per = slots / D
  local gpu = {}
  local total = 0
  for p = 1, slots do
    local e = phy2log[1][p]
    local g = math.floor((p - 1) / per) + 1
    local l = loads[e + 1] / logcnt[1][e + 1]
    gpu[g] = (gpu[g] or 0) + l
    total = total + l
  end
  local mx = 0
  for g = 1, D do mx = math.max(mx, gpu[g] or 0) end
  return mx / (total / D)
end

-- ---- one phase on one device ------------------------------------------------------

local function dispatch_row_bytes(dtype, dim)
  if dtype == "fp8" then return dim + dim / 128 * 4 end -- e4m3 + a float scale per 128
  if dtype == "f32" then return 4 * dim end
  return 2 * dim
end

local WBYTES = { fp8 = 1 + 4 / (128 * 128), int8 = 1, bf16 = 2, f16 = 2, f32 = 4, q8_0 = 34 / 32, q4_0 = 18 / 32 }

-- Normalize a recipe into the strategy knobs the planner uses.
function M.strategy(recipe, opts)
  opts = opts or {}
  local p = recipe.parallel or {}
  local q = recipe.quant or {}
  local s = {
    ep = opts.ep or p.ep or p.ranks or 1,
    tp = p.tp or 1, pp = p.pp or 1,
    dp_attention = p.dp_attention ~= false,
    redundant = opts.redundant or (p.eplb and p.eplb.redundant) or 0,
    overlap = opts.overlap or p.overlap,           -- "two-micro-batch" or nil
    hide = p.hide,                                  -- fraction of communication hidden when overlapped (default 1)
    comm = opts.comm or p.comm,                      -- "auto" (or nil): by phase and size                                  -- "low-latency" | "normal" | nil (by phase)
    wdtype = opts.weights or q.weights or recipe.weights or "bf16",
    kvdtype = q.kv or (recipe.kv and recipe.kv.dtype) or "bf16",
    dispatch = q.dispatch or p.wire or "bf16", combine = q.combine or "bf16",
    mla = recipe.mla or "absorb", prefill_mla = recipe.prefill_mla or "naive",
    mtp = recipe.mtp, -- { draft = 1, accept = 0.85 }
    mem_frac = recipe.mem_frac or 0.9,
    abytes = (q.act == "f32") and 4 or 2,           -- activations (the CPU engine runs f32)
  }
  if s.wdtype == "q8" then s.wdtype = "q8_0" end
  if s.dispatch == "q8" then s.dispatch = "fp8" end
  return s
end

local function kvb(dt) return (dt == "fp8" or dt == "int8") and 1 or (dt == "f32" and 4 or 2) end

-- Evaluate one phase ("prefill" | "decode") at a batch: decode B sequences
-- per device, prefill T new tokens per device. Returns a result table.
function M.phase(ctx, phase, batch)
  local hw, s, w, m, cfg = ctx.hw, ctx.s, ctx.w, ctx.m, ctx.cfg
  local D, tp = s.ep, s.tp
  local abytes, kvbytes, wbytes = s.abytes, kvb(s.kvdtype), WBYTES[s.wdtype] or 2
  local b, seqs, out_per_step, in_per_step
  local draft = (phase == "decode" and s.mtp) and (s.mtp.draft or 1) or 0
  if phase == "decode" then
    seqs = batch
    b = { n = batch * (1 + draft), seqs = batch, ctx = w.kv_len, kv = w.kv_len }
    out_per_step = batch * (1 + (draft > 0 and (s.mtp.accept or 0.8) * draft or 0))
  else
    local L = w.input.mean
    local new = math.max(1, L * (1 - w.prefix_hit))
    seqs = batch / new
    local cached = L - new
    b = { n = batch, seqs = seqs, ctx = cached + (new + 1) / 2, kv = L, logits = seqs }
    in_per_step = batch / (1 - w.prefix_hit)
  end
  local mode = phase == "decode" and s.mla or s.prefill_mla
  -- micro-batches: two when overlapping (each op at half the batch, twice)
  local nmb = s.overlap and 2 or 1
  local bm = { n = b.n / nmb, seqs = b.seqs / nmb, ctx = b.ctx, kv = b.kv, logits = (b.logits or b.n) / nmb }
  local E = cfg.n_routed_experts or 0
  local imb_static = ctx.imb_static or 1
  local gpn = hw.gpus_per_node
  -- DeepEP's low-latency kernels (pure RDMA) for decode across nodes; the
  -- normal NVLink/RDMA kernels for prefill and within one node
  local comm_kind = s.comm
  if comm_kind == nil or comm_kind == "auto" then
    comm_kind = (phase == "decode" and D > gpn) and "low-latency" or "normal"
  end
  local rec = cost.recorder({ wbytes = wbytes, abytes = abytes, kvbytes = kvbytes })
  rec.on_experts = function(r, name, rows, E_, dim, inter)
    local slots = (E_ + s.redundant) / D
    local mu = rows -- rows this device receives on average (= rows it sends)
    -- the step waits for the most loaded device: mean + E[max of D standard normals] standard deviations
    -- (sqrt(mu), Poisson-like routing noise); sqrt(2 ln D), the bound used before, is 1.6x that at D = 4
    local imb_stat = D > 1 and (1 + M.expected_max_normal(D) / math.sqrt(math.max(mu, 1))) or 1
    local rows_dev = rows * imb_static * imb_stat
    local hit = slots * (1 - (1 - 1 / slots) ^ rows_dev)
    return r:add({ name = name, kind = "gemm", grouped = true, m = rows_dev, n = 3 * inter, k = dim, experts = hit,
      calls = 4 * hit,
      flops = 2 * rows_dev * 3 * dim * inter, w_bytes = hit * 3 * dim * inter * r.wbytes,
      a_bytes = rows_dev * (2 * dim + 3 * inter) * r.abytes, imbalance = imb_static * imb_stat,
      -- Tide's EP (tide.parallel.ep) runs each local slot as its own MLP (3 GEMMs + swiglu)
      per_slot = D > 1 })
  end
  rec.on_comm = function(r, name, kind, n, top_k, dim)
    if D <= 1 then
      return r:add({ name = name, kind = "elt", elems = n * top_k * dim, flops = 0, a_bytes = 2 * n * top_k * dim * abytes })
    end
    if kind == "combine" and hw.cpu then
      -- Tide's EP sums the combined rows into the tokens in a kernel of its own
      -- (T.op.scatter_add; DeepEP's combine kernel does it on the GPU)
      r:add({ name = name .. "_sum", kind = "elt", elems = n * top_k * dim, flops = 2 * n * top_k * dim,
        a_bytes = (n * top_k + n) * dim * abytes })
    end
    local row = dispatch_row_bytes(kind == "dispatch" and s.dispatch or s.combine, dim)
    if comm_kind == "low-latency" then
      local t = hwmod.ll_time(hw, kind, D, n)
      if t then
        return r:add({ name = name, kind = "comm", link = "rdma(ll)", comm_bytes = n * top_k * row, time = t,
          formula = string.format("DeepEP LL %s at EP%d scaled to %.0f tokens", kind, D, n) })
      end
    end
    local nodes = math.max(1, math.ceil(D / gpn))
    local per_node = math.min(gpn, D)
    -- NVLink: rows to the other GPUs of a node; RDMA: one copy per remote node hit
    local nvl = n * top_k * row * (per_node - 1) / per_node
    local rdma = 0
    if nodes > 1 then
      local limit = math.min(nodes, cfg.topk_group or nodes)
      local hit = math.min(limit, nodes * (1 - (1 - 1 / nodes) ^ top_k))
      rdma = n * row * hit * (nodes - 1) / nodes
    end
    -- a calibrated CPU profile: Tide's EP makes comm_calls alltoallv per exchange
    local calls = hw.cpu and hw.cpu.comm_calls and hw.cpu.comm_calls[kind] or 1
    local t_nvl = nvl / (hw.intra.bw * hw.eff.intra) + calls * hw.intra.latency
    local t_rdma = nodes > 1 and (rdma / (hw.inter.bw * hw.eff.inter) + hw.inter.latency) or 0
    local link = t_rdma > t_nvl and "rdma" or "nvlink"
    return r:add({ name = name, kind = "comm", link = link, comm_bytes = nvl + rdma, time = math.max(t_nvl, t_rdma),
      formula = string.format("nvlink %.3g B / %.3g B/s, rdma %.3g B / %.3g B/s", nvl, hw.intra.bw * hw.eff.intra,
        rdma, hw.inter.bw * hw.eff.inter) })
  end
  cost.step(m, rec, bm, { mla = mode, mtp = draft > 0 })
  -- a calibrated CPU profile with a measured oversubscription: the step's
  -- streaming share rho first (tide.plan.hardware.stream_factor)
  local over = hw.cpu and hw.cpu.oversub and (hw.cpu.ranks or 1) > 1 and hw.cpu.oversub
  if over then
    over.rho = nil
    local st, stb = 0, 0
    for _, op in ipairs(rec.ops) do
      if op.kind ~= "comm" then
        local t = hwmod.op_time(hw, op, s.wdtype, true)
        st, stb = st + t, stb + hwmod.cpu_stream_part(hw.cpu, op, t)
      end
    end
    over.rho = hwmod.stream_share(over, st, stb)
  end
  -- time each op; tensor parallelism splits the non-expert work tp ways and
  -- adds two all-reduces of the activations per layer
  local layers = {}
  local split = { compute = 0, memory = 0, comm = 0, exposed = 0 }
  for _, op in ipairs(rec.ops) do
    if tp > 1 and op.kind ~= "comm" and not op.grouped then
      op.flops, op.w_bytes, op.a_bytes, op.kv_bytes = op.flops / tp, op.w_bytes / tp, op.a_bytes / tp, op.kv_bytes / tp
    end
    local t, bound, info
    if op.kind == "comm" then t, bound, info = op.time, "link", { formula = op.formula, link = op.link }
    else
      t, bound, info = hwmod.op_time(hw, op, s.wdtype)
      if op.kind == "attn" and ctx.imb_attn and phase == "decode" then t = t * ctx.imb_attn end
    end
    op.t, op.bound, op.info = t * nmb, bound, info
    local L = layers[op.layer] or { c = 0, x = 0 }
    layers[op.layer] = L
    if bound == "link" then L.x = L.x + op.t else L.c = L.c + op.t end
  end
  if over then over.rho = nil end
  if tp > 1 then
    local bytes = b.n * cfg.hidden_size * abytes * 2 * (tp - 1) / tp
    local t = 2 * (bytes / (hw.intra.bw * hw.eff.intra) + hw.intra.latency)
    for i = 1, #m.layers do
      local L = layers[i]
      L.x = L.x + t
      rec.ops[#rec.ops + 1] = { name = "L" .. (i - 1) .. ".tp_allreduce", kind = "comm", layer = i, t = t, bound = "link",
        flops = 0, w_bytes = 0, a_bytes = 0, kv_bytes = 0, comm_bytes = 2 * bytes, info = { link = "nvlink" } }
    end
  end
  for _, op in ipairs(rec.ops) do
    if op.bound == "link" then split.comm = split.comm + op.t
    elseif op.bound == "memory" then split.memory = split.memory + op.t
    else split.compute = split.compute + op.t end -- compute, or a measured kernel time (CPU profiles)
  end
  local hide = s.overlap and (s.hide or 1) or 0
  -- SMs taken by the normal (NVLink/RDMA) EP kernels while they overlap the
  -- other micro-batch's compute: that compute runs on (S - s) of S SMs, so
  -- the min(X, C) of it that overlaps communication takes S / (S - s) as
  -- long (hw.comm_sms, hw.sms; the low-latency kernels use no SMs).
  local sm_slow = 0
  if s.overlap and comm_kind ~= "low-latency" and D > 1 and hw.comm_sms and hw.sms then
    sm_slow = hw.comm_sms / (hw.sms - hw.comm_sms)
  end
  local step = 0
  split.sm_share = 0
  for _, L in pairs(layers) do
    local c = L.c + math.min(L.x, L.c) * sm_slow
    split.sm_share = split.sm_share + (c - L.c)
    local exposed = math.max(0, L.x - hide * c)
    split.exposed = split.exposed + exposed
    step = step + c + exposed
  end
  -- the engine's work between kernels (Lua, workspace lookups, FFI) per step,
  -- where a calibrated CPU profile measured it on the model's shadow
  -- (tide.plan.calib.host_time): at this case (host_step, bench/plan_calibrate.lua),
  -- or by phase and batch (host[phase][batch], tide calibrate; log-log in the batch)
  local host = 0
  if hw.cpu and hw.cpu.host_step then host = hw.cpu.host_step
  elseif hw.cpu and hw.cpu.host and hw.cpu.host[phase] and next(hw.cpu.host[phase]) then
    host = hwmod.interp(hw.cpu.host[phase], batch)
  end
  -- measured as CPU time (hw.cpu.host_cpu: ranks sharing cores), it stretches like a kernel's compute
  if host > 0 and hw.cpu.host_cpu then host = host * hwmod.cpu_share(hw.cpu) end
  split.host = host
  step = step + split.host
  if s.pp > 1 then step = step + (s.pp - 1) * (b.n * cfg.hidden_size * abytes / (hw.inter.bw * hw.eff.inter) + hw.inter.latency) end
  -- memory per device
  local parts = ctx.parts
  local slots = E > 0 and (E + s.redundant) / D or 0
  local weights = (parts.dense / tp + slots * parts.expert * parts.n_moe) / s.pp * wbytes
  local kv = seqs * b.kv * ctx.kv_per_token * kvbytes / 2 / s.pp
  local act = b.n * cfg.hidden_size * abytes * 8
  local r = {
    phase = phase, batch = batch, seqs = seqs, tokens = b.n, step = step, split = split, ops = rec.ops,
    memory = { weights = weights, kv = kv, act = act, total = weights + kv + act, capacity = hw.mem.capacity },
    imbalance = { moe_static = imb_static, attn = ctx.imb_attn },
  }
  if phase == "decode" then
    r.out_tok_s = out_per_step / step
    r.tpot = step / (out_per_step / batch)
    r.user_tok_s = 1 / r.tpot
  else
    r.in_tok_s = in_per_step / step
    r.ttft = step
  end
  return r
end

-- ---- a whole evaluation ---------------------------------------------------------------

-- ctx for a recipe on hardware: model (meta), config, strategy, workload.
function M.context(recipe, opts)
  opts = opts or {}
  local hw, e = hwmod.load(opts.hardware or recipe.hardware or "h800")
  if not hw then return nil, e end
  local cfg, ce = M.model_config(recipe)
  if not cfg then return nil, ce end
  local s = M.strategy(recipe, opts)
  local wl = opts.workload or recipe.workload
  if not wl and recipe.workload_file then
    local we
    wl, we = hwmod.load_data(resolve(recipe.workload_file))
    if not wl then return nil, we end
  end
  local w = M.workload(wl)
  local ok, m = pcall(cost.meta_model, cfg, { mla = s.mla, mtp = s.mtp ~= nil })
  if not ok then return nil, tostring(m) end
  local ctx = { hw = hw, cfg = cfg, s = s, w = w, m = m, recipe = recipe }
  local wb = cost.weight_parts(m, 1)
  ctx.parts = wb
  ctx.kv_per_token = cost.kv_bytes_per_token(m, 2)
  local E = cfg.n_routed_experts or 0
  if E > 0 and s.ep > 1 then
    local imb, ie = M.eplb_imbalance(E, s.redundant, s.ep, cfg.n_group or 1, hw.gpus_per_node,
      w.expert_loads or w.expert_load_cv)
    if not imb then return nil, ie end
    ctx.imb_static = imb
  end
  return ctx
end

-- DP-attention imbalance at B sequences per rank over D ranks: the slowest
-- rank's KV sum. Requests are balanced across ranks (DeepSeek's decode load
-- balancer); what remains is about one sequence's spread of lengths.
local function attn_imbalance(ctx, B)
  if ctx.s.ep <= 1 or not ctx.s.dp_attention then return 1 end
  local cv = ctx.w.kv_cv or ctx.w.input.cv or 0
  return 1 + cv / math.max(B, 1)
end

-- A decode step at B sequences per device, with the attention imbalance of that batch
local function decode_at(ctx, B)
  ctx.imb_attn = attn_imbalance(ctx, B)
  return M.phase(ctx, "decode", B)
end

-- Largest decode batch per device that fits memory and the latency target
-- (slo.tpot seconds per output token, or slo.speed tokens/s per user).
function M.decode_batch(ctx, slo)
  slo = slo or {}
  local hi = 1
  local function eval(B) return decode_at(ctx, B) end
  local function ok(r)
    if r.memory.total > ctx.hw.mem.capacity * ctx.s.mem_frac then return false end
    if slo.tpot and r.tpot > slo.tpot then return false end
    if slo.speed and r.user_tok_s < slo.speed then return false end
    return true
  end
  local first = eval(1)
  if not ok(first) then return first, false end
  while hi < 65536 and ok(eval(hi * 2)) do hi = hi * 2 end
  local lo, up = hi, hi * 2
  while up - lo > 1 do
    local mid = math.floor((lo + up) / 2)
    if ok(eval(mid)) then lo = mid else up = mid end
  end
  return eval(lo), true
end

-- Evaluate a recipe: opts.hardware, opts.nodes, opts.slo {tpot, ttft, speed},
-- opts.batch (decode sequences or prefill tokens per device; default: the
-- recipe's, else the largest under the SLO), opts.arrival (requests/s; else
-- the workload's; with one, M.queue adds the load: see there). Returns prefill and/or decode
-- results with per-node throughput and cost.
function M.evaluate(recipe, opts)
  opts = opts or {}
  local ctx, e = M.context(recipe, opts)
  if not ctx then return nil, e end
  if opts.arrival then ctx.w.arrival = opts.arrival end
  local hw, s = ctx.hw, ctx.s
  local slo = opts.slo or recipe.slo or {}
  local phases = opts.phase and { opts.phase } or (recipe.phase and { recipe.phase } or { "prefill", "decode" })
  local out = { hardware = hw.name, model = ctx.cfg.model_type, strategy = s, workload = ctx.w, devices = s.ep * s.tp * s.pp }
  out.nodes = opts.nodes or math.max(1, math.ceil(out.devices / hw.gpus_per_node))
  local price = opts.price or hw.price or 2
  local gpn = math.min(hw.gpus_per_node, out.devices)
  for _, ph in ipairs(phases) do
    local r
    if ph == "decode" then
      local B = (opts.phase == "decode" or #phases == 1) and opts.batch or (recipe.decode and recipe.decode.batch)
      if B then r = decode_at(ctx, B); r.slo_ok = true
      else local okb; r, okb = M.decode_batch(ctx, slo); r.slo_ok = okb end
      r.per_node = { output_tok_s = r.out_tok_s * gpn }
      r.usd_per_mtok = price / 3600 / r.out_tok_s * 1e6
      out.decode = r
    else
      local T = ((opts.phase == "prefill" or #phases == 1) and opts.batch) or (recipe.prefill and recipe.prefill.tokens) or 16384
      ctx.imb_attn = 1
      r = M.phase(ctx, "prefill", T)
      r.slo_ok = not slo.ttft or r.ttft <= slo.ttft
      r.per_node = { input_tok_s = r.in_tok_s * gpn }
      r.usd_per_mtok = price / 3600 / r.in_tok_s * 1e6
      out.prefill = r
    end
  end
  if ctx.w.arrival then
    for _, ph in ipairs(phases) do M.queue(ctx, out, ph, slo, opts.batch ~= nil) end
  end
  out.ctx = ctx
  return out
end

-- Queueing at the workload's arrival rate (requests/s to the out.nodes nodes
-- serving the phase; D devices):
--   prefill: tokens arrive at a = arrival x input / D per device against the
--     batch's rate; utilization rho = a / in_tok_s; a request waits for the
--     batches ahead of it as in an M/D/1 queue whose service is one batch:
--     W = rho s / (2 (1 - rho)), TTFT = s + W (rho >= 1: the queue grows
--     without bound).
--   decode: Little's law, sequences decoding at once per device
--     L = arrival x output x TPOT(L) / D; the step runs at the batch B where
--     B = L (bisection; TPOT grows with B). Above the largest batch that fits
--     memory and the SLO the decode pool is overloaded. The result is the
--     step at B, delivering arrival x output / nodes tokens/s per node;
--     queue.capacity keeps the full-batch result.
function M.queue(ctx, out, ph, slo, fixed)
  local lam = ctx.w.arrival
  local r = out[ph]
  local D = out.nodes * ctx.hw.gpus_per_node
  local gpn = math.min(ctx.hw.gpus_per_node, out.devices)
  if ph == "prefill" then
    local a = lam * ctx.w.input.mean / D
    local rho = a / r.in_tok_s
    local wait = rho < 1 and rho * r.step / (2 * (1 - rho)) or math.huge
    r.queue = { arrival = lam, devices = D, utilization = rho, wait = wait, overloaded = rho >= 1 }
    r.ttft = r.step + wait
    r.slo_ok = r.slo_ok and rho < 1 and (not slo.ttft or r.ttft <= slo.ttft)
    return
  end
  local per = lam * ctx.w.output.mean / D -- output tokens per second per device
  local function eval(B) return decode_at(ctx, B) end
  local cap = r
  local L = per * cap.tpot -- sequences in flight per device if the step ran at the full batch
  local q = { arrival = lam, devices = D, capacity = { batch = cap.batch, out_tok_s = cap.out_tok_s,
    per_node = cap.per_node, tpot = cap.tpot } }
  if L > cap.batch then
    q.utilization, q.overloaded, q.concurrency = L / cap.batch, true, L
    r.queue, r.slo_ok = q, false
    return
  end
  if fixed then -- a batch given on the command line: report the load against it
    q.utilization, q.concurrency = L / cap.batch, L
    r.queue = q
    return
  end
  -- smallest B (continuous) with B >= per x TPOT(B)
  local lo, hi = 0, cap.batch
  if per * eval(1).tpot <= 1 then hi = 1 end
  for _ = 1, 40 do
    local mid = 0.5 * (lo + hi)
    if mid >= per * eval(mid).tpot then hi = mid else lo = mid end
  end
  local x = eval(hi)
  x.slo_ok = cap.slo_ok
  x.per_node = { output_tok_s = x.out_tok_s * gpn }
  x.usd_per_mtok = cap.usd_per_mtok * cap.out_tok_s / x.out_tok_s
  q.utilization, q.concurrency = hi / cap.batch, hi
  x.queue = q
  out[ph] = x
end

-- The throughput / latency curve of a phase: opts as M.evaluate (phase is
-- set here); decode at 1, 2, 4, ... sequences per device, prefill at 512,
-- 1k, 2k, ... tokens per device, while the memory fits (mem_frac). Returns
-- { { batch, latency (TPOT or TTFT, s), per_node (tok/s), result } }.
function M.curve(recipe, opts, phase)
  local pts = {}
  local o = {}
  for k, v in pairs(opts or {}) do o[k] = v end
  o.phase = phase
  local b = phase == "decode" and 1 or 512
  while b <= (phase == "decode" and 65536 or 1048576) do
    o.batch = b
    local r = M.evaluate(recipe, o)
    local x = r and r[phase]
    if not x or x.memory.total > x.memory.capacity * r.ctx.s.mem_frac then break end
    pts[#pts + 1] = { batch = b, latency = phase == "decode" and x.tpot or x.ttft,
      per_node = phase == "decode" and x.per_node.output_tok_s or x.per_node.input_tok_s, result = x }
    b = b * 2
  end
  return pts
end

-- ---- hardware contrast ------------------------------------------------------------------

-- Decode output rate of hardware a relative to b at batch B per device
-- (same recipe), and the crossover: the largest batch (1..max_batch) at
-- which a still delivers at least `threshold` of b's rate.
function M.decode_ratio(recipe, a, b, B)
  local ra = assert(M.evaluate(recipe, { hardware = a, batch = B, phase = "decode" })).decode
  local rb = assert(M.evaluate(recipe, { hardware = b, batch = B, phase = "decode" })).decode
  return ra.out_tok_s / rb.out_tok_s, ra, rb
end

function M.crossover(recipe, a, b, threshold, max_batch)
  threshold, max_batch = threshold or 1, max_batch or 1024
  if M.decode_ratio(recipe, a, b, 1) < threshold then return 0 end
  local lo, hi = 1, 2
  while hi <= max_batch and M.decode_ratio(recipe, a, b, hi) >= threshold do lo, hi = hi, hi * 2 end
  if hi > max_batch then return max_batch end
  while hi - lo > 1 do
    local mid = math.floor((lo + hi) / 2)
    if M.decode_ratio(recipe, a, b, mid) >= threshold then lo = mid else hi = mid end
  end
  return lo
end

-- ---- search ---------------------------------------------------------------------------

-- Try EP sizes (powers of two and the recipe's own, up to nodes * gpus per
-- node), weight formats and batches under the SLO; the P:D split follows the
-- workload's input:output ratio. Returns the best (highest requests/s per
-- node) and the list of candidates.
function M.search(recipe, opts)
  local hw = assert(hwmod.load(opts.hardware or "h800"))
  local cfg = assert(M.model_config(recipe))
  local nodes = opts.nodes or 1
  local total = nodes * hw.gpus_per_node
  local E = cfg.n_routed_experts or 0
  local sizes, seen = {}, {}
  local function add(d) if d >= 1 and d <= total and not seen[d] then seen[d] = true sizes[#sizes + 1] = d end end
  local d = 1
  while d <= total do add(d) d = d * 2 end
  if recipe.parallel and recipe.parallel.ep then add(recipe.parallel.ep) end
  add(total)
  local fmts = opts.formats or { "fp8", "bf16" }
  local best_p, best_d = {}, {}
  local cands = {}
  for _, fmt in ipairs(fmts) do
    for _, D in ipairs(sizes) do
      local R = 0
      if E > 0 and D > 1 then R = (D - E % D) % D end -- the fewest redundant slots that divide evenly
      if E == 0 or E + R >= D then
        local o = { hardware = hw, ep = D, redundant = R, weights = fmt, slo = opts.slo, workload = opts.workload,
          overlap = D > 1 and "two-micro-batch" or nil, comm = "auto" }
        for _, pt in ipairs({ { "prefill", 4096 }, { "prefill", 8192 }, { "prefill", 16384 }, { "decode" } }) do
          local ph = pt[1]
          o.phase, o.batch = ph, pt[2]
          local r = M.evaluate(recipe, o)
          local x = r and r[ph]
          do
            if x and x.slo_ok and x.memory.total <= hw.mem.capacity * 0.95 then
              local rate = ph == "decode" and x.out_tok_s or x.in_tok_s
              local c = { phase = ph, ep = D, redundant = R, weights = fmt, batch = x.batch, rate = rate,
                tpot = x.tpot, ttft = x.ttft, result = x }
              cands[#cands + 1] = c
              local bb = ph == "decode" and best_d or best_p
              if not bb.rate or rate > bb.rate then for k, v in pairs(c) do bb[k] = v end end
            end
          end
        end
      end
    end
  end
  if not best_p.rate or not best_d.rate then return nil, "no configuration meets the SLO", cands end
  -- P:D split: prefill devices / decode devices = (in tokens / p rate) : (out tokens / d rate)
  local w = M.context(recipe, opts).w
  local in_t, out_t = w.input.mean, w.output.mean
  local need_p, need_d = in_t / best_p.rate, out_t / best_d.rate
  local share = need_p / (need_p + need_d)
  local req_s_per_device = 1 / (need_p + need_d)
  return { prefill = best_p, decode = best_d, prefill_share = share, nodes = nodes,
    requests_per_s = req_s_per_device * total, per_node_requests_per_s = req_s_per_device * hw.gpus_per_node,
    hardware = hw.name }, nil, cands
end

-- The best configuration as a plan recipe (Lua source); the model, MTP,
-- workload and hardware carry over from the searched recipe.
local function lua_value(v)
  if type(v) == "string" then return string.format("%q", v) end
  if type(v) ~= "table" then return tostring(v) end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
  local parts = {}
  for _, k in ipairs(keys) do
    local key = type(k) == "number" and "" or (tostring(k):match("^[%a_][%w_]*$") and k .. " = " or "[" .. string.format("%q", k) .. "] = ")
    parts[#parts + 1] = key .. lua_value(v[k])
  end
  return "{ " .. table.concat(parts, ", ") .. " }"
end

function M.to_recipe(recipe, best, phase)
  local c = best[phase]
  local st = M.strategy(recipe)
  local lines = {
    string.format("-- written by `tide plan --search` (%s, %s): %.0f %s tok/s per device", best.hardware, phase, c.rate,
      phase == "decode" and "output" or "input"),
    "return {",
    "  model = " .. lua_value(recipe.model) .. ",",
    string.format("  hardware = %q,", best.hardware),
    string.format("  phase = %q,", phase),
    string.format("  quant = { weights = %q, kv = %q, dispatch = %q, combine = %q },", c.weights, st.kvdtype, st.dispatch,
      st.combine),
    string.format("  mla = %q, prefill_mla = \"naive\",", recipe.mla or "absorb"),
    string.format("  parallel = { ep = %d, dp_attention = true, eplb = { redundant = %d }, overlap = %s },",
      c.ep, c.redundant, c.ep > 1 and '"two-micro-batch"' or "nil"),
  }
  if phase == "decode" then lines[#lines + 1] = string.format("  decode = { batch = %d },", c.batch)
  else lines[#lines + 1] = string.format("  prefill = { tokens = %d },", c.batch) end
  if recipe.mtp then lines[#lines + 1] = "  mtp = " .. lua_value(recipe.mtp) .. "," end
  if recipe.workload then lines[#lines + 1] = "  workload = " .. lua_value(recipe.workload) .. "," end
  if recipe.workload_file then lines[#lines + 1] = "  workload_file = " .. lua_value(recipe.workload_file) .. "," end
  lines[#lines + 1] = "}"
  return table.concat(lines, "\n") .. "\n"
end

return M
