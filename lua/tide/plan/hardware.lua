-- tide.plan.hardware: hardware profiles (recipes/hardware/NAME.lua, plain
-- data) and the roofline time of one recorded op on them.
local M = {}

-- Repository root: the current directory when it holds recipes/, else the
-- folder above lua/ (where the running tide found its modules).
function M.root()
  local f = io.open("recipes/hardware/h800.lua", "r")
  if f then f:close() return "." end
  local p = package.searchpath("tide.plan.hardware", package.path)
  if p then return (p:gsub("/?lua/tide/plan/hardware%.lua$", "")) end
  return "."
end

local function load_data(path)
  local chunk, err = loadfile(path)
  if not chunk then return nil, err end
  setfenv(chunk, {})
  local ok, t = pcall(chunk)
  if not ok then return nil, path .. ": " .. tostring(t) end
  if type(t) ~= "table" then return nil, path .. ": expected a table" end
  return t
end
M.load_data = load_data

-- A profile by name (h800, h100, h200, h20, ascend910b) or by path.
function M.load(name)
  if type(name) == "table" then return name end
  local path = name
  if not name:match("%.lua$") then path = M.root() .. "/recipes/hardware/" .. name:lower() .. ".lua" end
  local hw, err = load_data(path)
  if not hw then return nil, "hardware '" .. tostring(name) .. "': " .. tostring(err) end
  if hw.eff_from then
    local base, e = M.load(hw.eff_from)
    if not base then return nil, e end
    hw.eff = base.eff
  end
  for _, k in ipairs({ "peak", "mem", "intra", "inter", "eff" }) do
    if type(hw[k]) ~= "table" then return nil, path .. ": missing table '" .. k .. "'" end
  end
  return hw
end

-- Peak FLOP/s and efficiency for a GEMM whose weights are in dtype wd.
-- A format the device lacks (FP8 on Ascend) runs as INT8, else BF16.
function M.gemm_rate(hw, wd)
  local peak = hw.peak[wd]
  if not peak and wd == "fp8" then wd = "int8"; peak = hw.peak.int8 end
  if not peak then wd = "bf16"; peak = hw.peak.bf16 end
  local eff = (wd == "bf16") and (hw.eff.gemm_bf16 or hw.eff.attn_bf16) or hw.eff.gemm_fp8
  return peak * eff, wd, peak, eff
end

-- The attention kernel's operand layout for a recorded attention op:
-- GQA (K and V heads), MLA absorbed (one latent head, V = its first v_dim
-- columns) or MLA naive (K, V decompressed per head).
function M.attn_layout(op)
  local lay = { H = op.heads, qk = op.qk_dim, v = op.v_dim }
  if op.v_dim == op.qk_dim then lay.nkv = math.floor(op.kv_row / (2 * op.qk_dim) + 0.5)
  elseif op.kv_row == op.qk_dim then lay.nkv, lay.v_from_k = 1, op.v_dim
  else lay.nkv = op.heads end
  lay.key = string.format("%d/%d/%d/%d", lay.H, lay.nkv, lay.qk, lay.v)
  return lay
end

-- nearest measured shape class "n x k" to (n, k) (log distance in both)
local function nearest(tab, n, k)
  local best, bd
  for key, row in pairs(tab) do
    local a, b = key:match("^(%d+) x (%d+)$")
    a, b = tonumber(a), tonumber(b)
    if a then
      local d = math.abs(math.log(a / n)) + math.abs(math.log(b / k))
      if not bd or d < bd then best, bd = row, d end
    end
  end
  return best
end
M.nearest = nearest

-- Time of op on a calibrated CPU profile (hw.cpu from tide.plan.calib):
-- measured kernel rates at the op's shape class, times the sharing of the
-- cores when more single-threaded ranks run than there are cores.
--   GEMM:    flops / rate(n x k, m)                  (rate log-interpolated in m)
--   experts: hits * t_hit(dim x inter, rows per hit)
--   attn:    per_call + flops / rate
--   other:   op_overhead + bytes / elementwise bandwidth
-- Ranks (R single-threaded ranks on c cores, R > c): compute stretches by
-- R / c; a weight-streaming op also loses bandwidth, from bw1 (one thread
-- alone) to bw_all / c (each of c running ranks): t' = R/c * (t + w_bytes *
-- (c / bw_all - 1 / bw1))+.
-- The part of an op's time alone t that its weight bytes take at one
-- thread's streaming rate (GEMMs only; at most t).
function M.cpu_stream_part(cpu, op, t)
  return (op.kind == "gemm" and cpu.bw1 and cpu.bw1 > 0) and math.min(t, op.w_bytes / cpu.bw1) or 0
end

-- The streaming slowdown of one rank among R sharing c cores. The probe
-- (oversub.stream) measures it with every rank streaming at once: the core
-- share (oversub.compute) times the contention for memory bandwidth. In a
-- step, a rank's weight streaming meets another rank's only for the share
-- rho of the time the ranks spend streaming (oversub.rho, set per step by
-- tide.plan), so the contention part scales with rho:
-- fs = fc (1 + (fs_probe / fc - 1) rho). Without rho, the probe's factor.
function M.stream_factor(o)
  if not o.rho then return o.stream end
  return o.compute * (1 + (o.stream / o.compute - 1) * o.rho)
end

-- rho for a step whose ops alone take t_i with streaming parts tb_i: the
-- share of a rank's shared time spent streaming, the fixed point of
-- rho = fs(rho) sum tb / (fc sum (t - tb) + fs(rho) sum tb).
function M.stream_share(o, sum_t, sum_tb)
  if sum_tb <= 0 then return 0 end
  local rho = 1
  for _ = 1, 20 do
    local fs = o.compute * (1 + (o.stream / o.compute - 1) * rho)
    rho = fs * sum_tb / (o.compute * (sum_t - sum_tb) + fs * sum_tb)
  end
  return rho
end

-- The factor by which one rank's CPU work stretches among cpu.ranks
-- single-threaded ranks on cpu.cores cores: the compute probe's when
-- measured (oversub.compute), else ranks / cores; 1 when they fit.
function M.cpu_share(cpu)
  local R, c = cpu.ranks or 1, cpu.cores or 1
  if cpu.oversub and R > 1 then return cpu.oversub.compute end
  if R > c then return R / c end
  return 1
end

function M.cpu_op_time(hw, op, wd, alone)
  local cpu = hw.cpu
  local t, bound, info
  local dt = cpu.gemm[wd] and wd or next(cpu.gemm)
  if op.kind == "gemm" and op.grouped and op.per_slot then
    -- each hit slot: gate and up (inter x dim), down (dim x inter) at rows/hit, + swiglu
    local hits = math.max(op.experts or 1, 1e-9)
    local m, inter, dim = math.max(op.m / hits, 1), op.n / 3, op.k
    local function g(n, k)
      local row = cpu.gemm[dt][string.format("%d x %d", n, k)] or nearest(cpu.gemm[dt], n, k)
      return 2 * m * n * k / M.interp(row, m)
    end
    local per = 2 * g(inter, dim) + g(dim, inter) + cpu.op_overhead + m * inter * 12 / cpu.elt_bw
    t = hits * per
    bound, info = "measured", { formula = string.format("%.2f slots x %.3f ms (3 GEMMs at m=%.2f + swiglu)", hits,
      per * 1e3, m), flops = op.flops, bytes = op.w_bytes + op.a_bytes }
  elseif op.kind == "gemm" and op.grouped and cpu.experts[dt] and next(cpu.experts[dt]) then
    local row = cpu.experts[dt][string.format("%d x %d", op.k, op.n / 3)] or nearest(cpu.experts[dt], op.k, op.n / 3)
    local hits = math.max(op.experts or 1, 1e-9)
    local per = M.interp(row, math.max(op.m / hits, 1e-3))
    -- fewer rows than one per hit expert (rare): scale down linearly
    t = hits * per
    bound, info = "measured", { formula = string.format("%.2f expert hits x %.3f ms at %.2f rows/hit", hits, per * 1e3,
      op.m / hits), flops = op.flops, bytes = op.w_bytes + op.a_bytes }
  elseif op.kind == "gemm" then
    local row = cpu.gemm[dt][string.format("%d x %d", op.n, op.k)] or nearest(cpu.gemm[dt], op.n, op.k)
    local rate = M.interp(row, math.max(op.m, 1))
    t = op.flops / rate
    bound, info = "measured", { formula = string.format("%.3g flop / %.2f GFLOP/s (%d x %d at m=%g)", op.flops,
      rate / 1e9, op.n, op.k, op.m), flops = op.flops, bytes = op.w_bytes + op.a_bytes }
  elseif op.kind == "attn" then
    local lay = M.attn_layout(op)
    local a = cpu.attn[lay.key]
    if not a then for _, v in pairs(cpu.attn) do a = v break end end
    a = a or { per_call = cpu.op_overhead, rate = hw.peak.bf16 }
    -- the rate measured at the nearer point: decode-like (a few queries per
    -- sequence) or prefill-like
    local rate = (op.q_per_seq and op.q_per_seq <= 16 and a.rate_decode) or a.rate
    t = a.per_call * (op.calls or 1) + op.flops / rate
    bound, info = "measured", { formula = string.format("%.1f us + %.3g flop / %.2f GFLOP/s", a.per_call * 1e6, op.flops,
      rate / 1e9), flops = op.flops, bytes = op.kv_bytes + op.a_bytes }
  else
    local bytes = op.w_bytes + op.a_bytes + op.kv_bytes
    t = cpu.op_overhead * (op.calls or 1) + bytes / cpu.elt_bw
    bound, info = "memory", { formula = string.format("%.2f us + %.3g B / %.1f GB/s", cpu.op_overhead * 1e6, bytes,
      cpu.elt_bw / 1e9), flops = op.flops, bytes = bytes }
  end
  local R, c = alone and 1 or cpu.ranks or 1, cpu.cores or 1
  if cpu.oversub and R > 1 then
    -- measured: an op's time alone splits into what its weight bytes take at
    -- one thread's streaming rate (tb = w_bytes / bw1, at most t) and the
    -- rest (arithmetic, conversion, dispatch); among R ranks on c cores the
    -- first slows like the streaming probe and the rest like the compute
    -- probe: t' = fc (t - tb) + fs tb. (Scaling all of a few-row GEMM by the
    -- streaming factor counted its arithmetic as streaming: a bf16 expert at
    -- ~4 rows is about half streaming alone, and 4-rank EP decode came out
    -- 13-28% slow.)
    local fc, fs = cpu.oversub.compute, M.stream_factor(cpu.oversub)
    local tb = M.cpu_stream_part(cpu, op, t)
    info.shared = string.format("%.3f ms compute x %.2f + %.3f ms streaming x %.2f (measured with %d ranks on %d cores%s)",
      (t - tb) * 1e3, fc, tb * 1e3, fs, R, c, cpu.oversub.rho and string.format(", %.0f%% of the step streaming",
        100 * cpu.oversub.rho) or "")
    t = fc * (t - tb) + fs * tb
  elseif R > c then
    local extra = 0
    if cpu.bw1 and cpu.bw_all and op.kind == "gemm" then
      extra = math.max(0, op.w_bytes * (c / cpu.bw_all - 1 / cpu.bw1))
    end
    info.shared = string.format("x %d ranks / %d cores%s", R, c, extra > 0 and string.format(" (+%.3f ms bandwidth)", extra * 1e3) or "")
    t = R / c * (t + extra)
  end
  info.tc, info.tm, info.overhead = t, 0, 0
  return t, bound, info
end

-- Roofline time of op (from tide.plan.cost) on hw with GEMM weights in wd:
-- t = max(flops / (peak * eff), bytes / (bw * eff_mem)); returns t, bound,
-- and the inputs used (for --explain).
-- alone (calibrated CPU profiles): one rank's time without the sharing of cores.
function M.op_time(hw, op, wd, alone)
  if hw.cpu then return M.cpu_op_time(hw, op, wd, alone) end
  local rate, used, peak, eff
  if op.kind == "gemm" then
    rate, used, peak, eff = M.gemm_rate(hw, wd)
    -- a calibrated profile measured the GEMM rate by rows: use it at this op's
    -- rows per call (grouped expert GEMMs: rows per expert hit)
    local tab = hw.gemm_by_m and (hw.gemm_by_m[wd] or hw.gemm_by_m[used])
    if tab then
      local m = op.m / (op.grouped and math.max(op.experts or 1, 1) or 1)
      rate = M.interp(tab, m)
      eff = rate / peak
    end
  elseif op.kind == "attn" then
    used, peak, eff = "bf16", hw.peak.bf16, hw.eff.attn_bf16
    rate = peak * eff
  else
    used, peak, eff = "bf16", hw.peak.bf16, hw.eff.attn_bf16
    rate = peak * eff
  end
  local bytes = op.w_bytes + op.a_bytes + op.kv_bytes
  local bw = hw.mem.bw * hw.eff.mem
  local tc, tm = op.flops / rate, bytes / bw
  -- a calibrated profile knows the rate at which its GEMM kernels stream
  -- weights of each dtype (dequantizing on the fly), which bounds them
  local stream = op.kind == "gemm" and hw.mem.stream and hw.mem.stream[wd]
  if stream then tm = op.w_bytes / stream + (op.a_bytes + op.kv_bytes) / bw end
  -- a measured fixed cost per kernel call (calibrated CPU profiles; 0 on GPUs)
  local ov = (hw.op_overhead or 0) * (op.calls or 1)
  local info = { dtype = used, peak = peak, eff = eff, flops = op.flops, bytes = bytes, bw = bw, tc = tc, tm = tm,
    overhead = ov }
  if tc >= tm then return tc + ov, "compute", info end
  return tm + ov, "memory", info
end

-- Log-log interpolation in a table size -> value (clamped at the ends).
function M.interp(tab, x)
  local ks = {}
  for k in pairs(tab) do ks[#ks + 1] = k end
  table.sort(ks)
  if x <= ks[1] then return tab[ks[1]] end
  if x >= ks[#ks] then return tab[ks[#ks]] end
  for i = 1, #ks - 1 do
    local a, b = ks[i], ks[i + 1]
    if x >= a and x <= b then
      local f = (math.log(x) - math.log(a)) / (math.log(b) - math.log(a))
      return math.exp(math.log(tab[a]) + f * (math.log(tab[b]) - math.log(tab[a])))
    end
  end
  return tab[ks[#ks]]
end

-- Low-latency EP kernel time for `tokens` tokens at EP size ep (the DeepEP
-- table, log-interpolated between sizes, linear in tokens per 128-token
-- call); nil when the profile has no table.
function M.ll_time(hw, kind, ep, tokens)
  local ll = hw.eff.ll
  if not ll or not ll[kind] then return nil end
  local sizes = {}
  for s in pairs(ll[kind]) do sizes[#sizes + 1] = s end
  table.sort(sizes)
  local t
  if ep <= sizes[1] then t = ll[kind][sizes[1]]
  elseif ep >= sizes[#sizes] then t = ll[kind][sizes[#sizes]]
  else
    for i = 1, #sizes - 1 do
      local a, b = sizes[i], sizes[i + 1]
      if ep >= a and ep <= b then
        local f = (math.log(ep) - math.log(a)) / (math.log(b) - math.log(a))
        t = ll[kind][a] + f * (ll[kind][b] - ll[kind][a])
        break
      end
    end
  end
  -- the table's 128-token time, scaled linearly in tokens above a floor of
  -- two network latencies (a call always pays one round trip)
  local floor = 2 * hw.inter.latency
  return floor + math.max(0, t - floor) * tokens / ll.tokens
end

return M
