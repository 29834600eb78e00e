-- tide calibrate: measure this machine and write its hardware profile in the
-- format of recipes/hardware/*.lua (peaks and bandwidth are the measured
-- rates, so the efficiency factors are 1), for `tide plan --hardware FILE`.
local M = {}

M.usage = [[
usage: tide calibrate [--out FILE] [--threads N] [--quick]

  Measures, with Tide's own kernels: memory bandwidth (a large elementwise
  op), GEMM rates per weight dtype (f32, bf16, f16) at a compute-bound shape
  and a weight-streaming one, and the fixed cost of one op call; writes a
  profile (default recipes/hardware/local.lua) that `tide plan --hardware`
  reads. --quick uses smaller shapes (for tests).]]

local spec = { out = "string", threads = "number", quick = "flag" }

local function best_of(reps, f)
  local T = require "tide.tensor"
  local best = math.huge
  f() -- warm up
  for _ = 1, reps do
    local t0 = T.now()
    f()
    best = math.min(best, T.now() - t0)
  end
  return best
end

-- Returns the profile table.
function M.measure(o)
  o = o or {}
  local T = require "tide.tensor"
  if o.threads then assert(T.set_threads(o.threads)) end
  local quick = o.quick
  -- memory: y = 1.0 * x over a large f32 array (read + write)
  local n = quick and 2 ^ 20 or 2 ^ 25
  local x, y = T.zeros({ n }), T.zeros({ n })
  local tb = best_of(quick and 2 or 5, function() T.op.scale(y, x, 1.0) end)
  local bw = 2 * 4 * n / tb
  -- fixed cost of a kernel call: a tiny matmul through the thread pool
  local a, wt, b = T.zeros({ 1, 32 }), T.zeros({ 32, 32 }), T.zeros({ 1, 32 })
  local calls = quick and 200 or 2000
  local tov = best_of(3, function() for _ = 1, calls do T.op.matmul(b, a, wt) end end) / calls
  -- GEMMs: out (m, n_out) = x (m, k) @ W^T, W (n_out, k) in each dtype
  local peak, stream, by_m = {}, {}, {}
  local k = quick and 256 or 1024
  local mrows = quick and 64 or 256
  for _, dt in ipairs({ "f32", "bf16", "f16" }) do
    local w = T.zeros({ k, k })
    local ok, wd = pcall(function() return w:copy(dt) end)
    if ok and wd then
      local xin, out = T.zeros({ mrows, k }), T.zeros({ mrows, k })
      local t = best_of(quick and 2 or 4, function() T.op.matmul(out, xin, wd) end)
      peak[dt] = 2 * mrows * k * k / t
      -- rate by rows: small-m GEMMs run far below the peak on CPU
      by_m[dt] = {}
      for _, mm in ipairs(quick and { 1, 16 } or { 1, 4, 16, 64, 256, 1024 }) do
        local xm, om = T.zeros({ mm, k }), T.zeros({ mm, k })
        local tm = best_of(quick and 1 or 3, function() T.op.matmul(om, xm, wd) end)
        by_m[dt][mm] = 2 * mm * k * k / tm
      end
      -- weight streaming: one row through a weight larger than the caches
      local ks = quick and 512 or 4096
      local ws = T.zeros({ ks, ks }):copy(dt)
      local x1, o1 = T.zeros({ 1, ks }), T.zeros({ 1, ks })
      local t1 = best_of(quick and 2 or 5, function() T.op.matmul(o1, x1, ws) end)
      stream[dt] = ws:nbytes() / t1
    end
  end
  local cap = 0
  local f = io.open("/proc/meminfo", "r")
  if f then
    local s = f:read("*a")
    f:close()
    cap = (tonumber(s:match("MemTotal:%s+(%d+)")) or 0) * 1024
  end
  return {
    name = "local", label = "this machine (tide calibrate)", gpus_per_node = 1,
    -- FP8 weights are dequantized on CPU: costed at the bf16 rate
    peak = { f32 = peak.f32, bf16 = peak.bf16 or peak.f32, f16 = peak.f16, fp8 = peak.bf16 or peak.f32,
      int8 = peak.bf16 or peak.f32 },
    mem = { capacity = cap, bw = bw, stream = stream },
    intra = { bw = bw / 2, latency = tov }, -- ranks on one machine exchange through memory
    inter = { bw = bw / 2, latency = tov },
    eff = { gemm_fp8 = 1, gemm_bf16 = 1, attn_bf16 = 1, mem = 1, intra = 1, inter = 1 },
    op_overhead = tov,
    gemm_by_m = by_m, -- measured GEMM flop/s by rows m, per weight dtype (k = n = 1024)
    price = 0,
  }
end

local function ser(v, ind)
  ind = ind or ""
  if type(v) == "table" then
    local keys = {}
    for kk in pairs(v) do keys[#keys + 1] = kk end
    table.sort(keys, function(a, b)
      if type(a) == type(b) then return a < b end
      return type(a) == "number"
    end)
    local parts = {}
    for _, kk in ipairs(keys) do
      local key = type(kk) == "number" and "[" .. kk .. "]" or kk
      parts[#parts + 1] = ind .. "  " .. key .. " = " .. ser(v[kk], ind .. "  ") .. ","
    end
    return "{\n" .. table.concat(parts, "\n") .. "\n" .. ind .. "}"
  elseif type(v) == "string" then return string.format("%q", v)
  else return string.format("%.6g", v) end
end
M.serialize = ser

function M.main(args)
  local A = require "tide.cmd.args"
  local o, rest = A.parse(args, spec)
  local function fail(msg) io.stderr:write("tide calibrate: ", msg, "\n") return 1 end
  if not o then return fail(rest .. " (see tide calibrate --help)") end
  local prof = M.measure(o)
  local out = o.out or (require("tide.plan.hardware").root() .. "/recipes/hardware/local.lua")
  local f, e = io.open(out, "w")
  if not f then return fail(e) end
  f:write("-- written by `tide calibrate` (measured rates; efficiency factors are 1)\nreturn ", ser(prof), "\n")
  f:close()
  print(string.format("memory %.1f GB/s; GEMM f32 %.1f GFLOP/s, bf16 %.1f GFLOP/s; op call %.2f us -> %s",
    prof.mem.bw / 1e9, (prof.peak.f32 or 0) / 1e9, (prof.peak.bf16 or 0) / 1e9, prof.op_overhead * 1e6, out))
  return 0
end

return M
