-- Planner vs measurement on this machine (issue 9, acceptance 1, partial):
-- calibrate (tide.cmd.calibrate.measure), then time the engine's own steps
-- (prefill of P tokens; decode at batch 1, 8, 32 after a 32-token prompt per
-- sequence) and predict the same steps with `tide.plan` on the measured
-- profile, in one run. One TSV line per case with predicted / measured.
--   tide run bench/plan_calibrate.lua [MODEL_DIR ...]     (default: models/llama-tiny models/dsv3-tiny)
-- For the acceptance shapes: tide synth --preset llama-1b --out /tmp/llama-1b, then pass /tmp/llama-1b.
local tide = require "tide"
local T = require "tide.tensor"
local plan = require "tide.plan"
local cal = require "tide.cmd.calibrate"

local dirs = {}
for i = 1, #(arg or {}) do dirs[#dirs + 1] = arg[i] end
if #dirs == 0 then dirs = { "models/llama-tiny", "models/dsv3-tiny" } end
local P = 512

local hw = cal.measure({})
print(string.format("# profile: memory %.1f GB/s, GEMM f32 %.1f / bf16 %.1f GFLOP/s, op %.2f us", hw.mem.bw / 1e9,
  (hw.peak.f32 or 0) / 1e9, (hw.peak.bf16 or 0) / 1e9, hw.op_overhead * 1e6))
print("model\tcase\tmeasured_ms\tpredicted_ms\tratio")

local function median(t) table.sort(t) return t[math.ceil(#t / 2)] end

for _, dir in ipairs(dirs) do
  local m = assert(tide.load(dir, { mla = "absorb", kv = { seqs = 40 }, max_ctx = 1024 }))
  local wd = m.arch.lm_head.weight:dtype()
  local recipe = { model = dir, mla = "absorb", quant = { weights = wd, kv = "f32", act = "f32" }, parallel = { ep = 1 } }
  local kv = m:kv_cache()
  -- prefill P tokens, one sequence
  local times = {}
  for r = 1, 3 do
    local s = assert(kv:seq_new())
    local toks = {}
    for i = 1, P do toks[i] = (i * 37) % 4000 + 3 end
    local t0 = T.now()
    assert(m:step({ s }, { toks }, "last"))
    times[r] = T.now() - t0
    kv:seq_free(s)
  end
  local pr = assert(plan.evaluate(recipe, { hardware = hw, phase = "prefill", batch = P,
    workload = { input = { mean = P, cv = 0 }, output = { mean = 1, cv = 0 }, prefix_hit = 0 } })).prefill
  local meas = median(times)
  print(string.format("%s\tprefill%d\t%.3f\t%.3f\t%.2f", dir, P, meas * 1e3, pr.step * 1e3, pr.step / meas))
  for _, B in ipairs({ 1, 8, 32 }) do
    local seqs, toks = {}, {}
    for i = 1, B do
      seqs[i] = assert(kv:seq_new())
      local p = {}
      for j = 1, 32 do p[j] = (i * 131 + j * 17) % 4000 + 3 end
      toks[i] = p
    end
    assert(m:step(seqs, toks, "last"))
    local one = {}
    for i = 1, B do one[i] = { 5 } end
    local dt = {}
    for r = 1, 7 do
      local t0 = T.now()
      assert(m:step(seqs, one, "last"))
      dt[r] = T.now() - t0
    end
    for i = 1, B do kv:seq_free(seqs[i]) end
    local dr = assert(plan.evaluate(recipe, { hardware = hw, phase = "decode", batch = B,
      workload = { input = { mean = 36, cv = 0 }, output = { mean = 1, cv = 0 }, kv_len = 36 } })).decode
    local mm = median(dt)
    print(string.format("%s\tdecode_b%d\t%.3f\t%.3f\t%.2f", dir, B, mm * 1e3, dr.step * 1e3, dr.step / mm))
  end
end
