-- tide calibrate: measure this machine and write its hardware profile in the
-- format of recipes/hardware/*.lua (peaks and bandwidth are the measured
-- rates, so the efficiency factors are 1), for `tide plan --hardware FILE`.
local M = {}

M.usage = [[
usage: tide calibrate [--model DIR] [--out FILE] [--threads N] [--prefill P] [--batches 1,8,32] [--quick]

  Measures this machine with Tide's own kernels at the shape classes that the
  model's steps use (tide.plan.calib; the shapes come from the planner's cost
  walk of DIR, default models/llama-tiny): GEMM rate by weight shape and rows,
  grouped experts per hit, attention per call + rate, one op call, streaming
  bandwidth, and the engine's work between kernels per step (on the model's
  shadow: same structure, widths of a few elements; see tide.plan.calib).
  Writes a profile (default recipes/hardware/local.lua) that
  `tide plan --hardware FILE` reads. --quick uses small sizes (tests).
  bench/plan_calibrate.lua also measures MPI all-to-all costs.]]

local spec = { out = "string", threads = "number", quick = "flag", model = "string", prefill = "number", batches = "string" }

-- Returns the profile table (tide.plan.hardware format with a `cpu` section).
function M.measure(o)
  o = o or {}
  local T = require "tide.tensor"
  local calib = require "tide.plan.calib"
  local dir = o.model or (require("tide.plan.hardware").root() .. "/models/llama-tiny")
  local cfg = assert(require("tide.config").load(dir .. "/config.json"))
  local wd = (cfg.torch_dtype == "float32" and "f32") or (cfg.torch_dtype == "float16" and "f16") or "bf16"
  local recipe = { model = dir, mla = "auto", prefill_mla = "auto",
    quant = { weights = wd, kv = "f32", act = "f32", dispatch = "f32", combine = "f32" }, parallel = { ep = 1 } }
  local P = o.prefill or (o.quick and 32 or 512)
  local cases = { { phase = "prefill", batch = P, workload = { input = { mean = P, cv = 0 }, output = { mean = 1, cv = 0 } } } }
  for b in tostring(o.batches or (o.quick and "1,4" or "1,8,32")):gmatch("%d+") do
    cases[#cases + 1] = { phase = "decode", batch = tonumber(b),
      workload = { input = { mean = 32, cv = 0 }, output = { mean = 1, cv = 0 }, kv_len = 36 } }
  end
  local threads = o.threads or tonumber(require("tide.ffi").C.tide_pool_cpu_count())
  local need = calib.needs(recipe, cases)
  local prof = calib.measure(need, { threads = threads, dtype = wd, quick = o.quick, reps = o.quick and 1 or 3,
    mgrid = o.quick and { 1, 8, 32 } or nil, rpe = o.quick and { 1, 4 } or nil, copies_bytes = o.quick and 4e6 or nil,
    log = o.log })
  -- the engine's work between kernels, on the model's shadow at the same cases
  local host
  if not o.no_host then
    local sdir, se = calib.shadow_dir(dir, (o.shadow_dir or os.getenv("TMPDIR") or "/tmp") .. "/tide-shadow-"
      .. dir:gsub("[^%w]", "_"):sub(-80))
    if not sdir then error("tide calibrate: writing the model's shadow: " .. tostring(se), 0) end
    if o.log then o.log("engine work between kernels on the shadow " .. sdir) end
    T.set_threads(threads)
    local sm = assert(require("tide").load(sdir, { kv = { seqs = 40 }, max_ctx = math.max(P, 48) + 16 }))
    host = calib.host_table(sm, cases, { n = o.quick and 3 or nil })
    sm:free()
  end
  local hw = calib.profile(prof, { host = host })
  hw.op_overhead = prof.op_overhead
  local _ = T
  return hw
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
      local key = type(kk) == "number" and "[" .. kk .. "]"
        or (kk:match("^[%a_][%w_]*$") and kk or "[" .. string.format("%q", kk) .. "]")
      parts[#parts + 1] = ind .. "  " .. key .. " = " .. ser(v[kk], ind .. "  ") .. ","
    end
    return "{\n" .. table.concat(parts, "\n") .. "\n" .. ind .. "}"
  elseif type(v) == "string" then return string.format("%q", v)
  elseif type(v) == "boolean" then return tostring(v)
  elseif type(v) == "number" then return string.format("%.6g", v)
  else error("calibrate: cannot write a " .. type(v) .. " into a profile", 0) end
end
M.serialize = ser

function M.main(args)
  local A = require "tide.cmd.args"
  local o, rest = A.parse(args, spec)
  local function fail(msg) io.stderr:write("tide calibrate: ", msg, "\n") return 1 end
  if not o then return fail(rest .. " (see tide calibrate --help)") end
  o.log = function(l) io.stderr:write("# ", l, "\n") end
  local prof = M.measure(o)
  local out = o.out or (require("tide.plan.hardware").root() .. "/recipes/hardware/local.lua")
  local f, e = io.open(out, "w")
  if not f then return fail(e) end
  f:write("-- written by `tide calibrate` (measured rates; efficiency factors are 1)\nreturn ", ser(prof), "\n")
  f:close()
  print(string.format("weight streaming %.1f GB/s; best GEMM %.1f GFLOP/s; op call %.2f us -> %s",
    prof.mem.bw / 1e9, (prof.peak.bf16 or 0) / 1e9, prof.op_overhead * 1e6, out))
  return 0
end

return M
