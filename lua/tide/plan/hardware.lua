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

-- Roofline time of op (from tide.plan.cost) on hw with GEMM weights in wd:
-- t = max(flops / (peak * eff), bytes / (bw * eff_mem)); returns t, bound,
-- and the inputs used (for --explain).
function M.op_time(hw, op, wd)
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
