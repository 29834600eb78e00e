-- Decode overhead: on dsv3-tiny, batch 1, float32, the share of a decode
-- step spent outside the kernels (Lua model code, dispatch, KV planning,
-- sampling), measured with Tide's per-op timing (tide.tensor profile).
-- One JSON line per case:
--   {"bench":"decode_overhead","model":...,"mla":...,"threads":...,"steps":N,"repeats":5 (median),
--    "step_ms":..., "kernel_ms":..., "outside_us":..., "timer_us":..., "overhead_ratio":...,
--    "overhead_ratio_raw":..., "tok_s_unprofiled":...}
-- outside_us is the profiled step's wall time minus its kernel time. Part
-- of it is the per-op timer itself (two clock reads and the bookkeeping of
-- each op), which an unprofiled step does not pay: timer_us measures that
-- cost in the same run (the same wrapper around an empty op, times the ops
-- per step). overhead_ratio = (outside - timer) / (step - timer), the share
-- of an unprofiled step spent outside kernels; overhead_ratio_raw keeps the
-- timer in.
-- usage: tide run bench/decode_overhead.lua [MODEL] [STEPS]
local tide = require "tide"
local T = require "tide.tensor"
local Sampler = require "tide.sampler"
local ffi = require "ffi"

local model_dir = arg and arg[1] or "models/dsv3-tiny"
local steps = tonumber(arg and arg[2]) or 200

-- Cost of the per-op timer: the profiler's wrapper around an empty op.
local function timer_cost()
  T.op.nop_ = function() end
  T.profile(true)
  local f = T.op.nop_
  for _ = 1, 1000 do f() end
  local best = math.huge
  for _ = 1, 5 do
    local t0 = T.now()
    for _ = 1, 20000 do f() end
    best = math.min(best, (T.now() - t0) / 20000)
  end
  T.profile_report()
  T.profile(false)
  T.op.nop_ = nil
  return best
end

local function run(m, profiled)
  local kv = m:kv_cache()
  local seq = assert(kv:seq_new())
  local prompt = { 0 }
  for i = 1, 31 do prompt[#prompt + 1] = (i * 37) % 8000 + 3 end
  local logits = assert(m:step({ seq }, { prompt }, "last"))
  local s = assert(Sampler.new({ temperature = 0 }, m.n_vocab))
  local function one()
    local tok = s:sample(ffi.cast("float*", logits:cdata().data))
    logits = assert(m:step({ seq }, { { tok } }, "last", { reuse = true }))
  end
  for _ = 1, 10 do one() end -- warm up (JIT, workspace)
  if profiled then T.profile(true) T.profile_report() end
  collectgarbage()
  local t0 = T.now()
  for _ = 1, steps do one() end
  local wall = T.now() - t0
  local rep = profiled and T.profile_report() or {}
  if profiled then T.profile(false) end
  kv:seq_free(seq)
  local k, calls = 0, 0
  for _, r in pairs(rep) do k = k + r.seconds; calls = calls + r.calls end
  return wall, k, calls, rep
end

for _, threads in ipairs({ 1, 2 }) do
  for _, mla in ipairs({ "absorb", "naive" }) do
    local m = assert(tide.load(model_dir, { mla = mla, threads = threads }))
    -- the machine is shared: quote medians over repetitions
    local plain = {}
    for i = 1, 3 do plain[i] = (run(m, false)) end
    table.sort(plain)
    local wall_plain = plain[2]
    local reps = {}
    for i = 1, 5 do
      local w, k, c, r = run(m, true)
      reps[i] = { wall = w, kern = k, calls = c, rep = r, ratio = 1 - k / w }
    end
    table.sort(reps, function(a, b) return a.ratio < b.ratio end)
    local med = reps[3] -- the repetition with the median overhead ratio
    local wall, kern, calls, rep = med.wall, med.kern, med.calls, med.rep
    local timer = timer_cost() * calls -- seconds of timer over the run
    local names = {}
    for n in pairs(rep) do names[#names + 1] = n end
    table.sort(names, function(a, b) return rep[a].seconds > rep[b].seconds end)
    local top = {}
    for i = 1, math.min(4, #names) do top[i] = string.format('"%s":%.4f', names[i], rep[names[i]].seconds / wall) end
    print(string.format('{"bench":"decode_overhead","model":"%s","mla":"%s","threads":%d,"steps":%d,' ..
      '"step_ms":%.4f,"kernel_ms":%.4f,"outside_us":%.1f,"timer_us":%.1f,"ops_per_step":%.1f,"overhead_ratio":%.4f,' ..
      '"overhead_ratio_raw":%.4f,"tok_s_unprofiled":%.1f,' ..
      '"profiled_slowdown":%.3f,"top_ops_share":{%s}}',
      model_dir, mla, threads, steps, wall / steps * 1e3, kern / steps * 1e3, (wall - kern) / steps * 1e6,
      timer / steps * 1e6, calls / steps, (wall - kern - timer) / (wall - timer), 1 - kern / wall,
      steps / wall_plain, wall / wall_plain, table.concat(top, ",")))
  end
end
return 0
