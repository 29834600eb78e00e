-- tide ab / tide sweep: trials on the serving engine with dsv3-tiny and a
-- tiny workload (each trial takes about a second). Timing is never asserted
-- as a number: only the verdicts the trial draws from its measured samples.
local H = require "helpers"
local ab = require "tide.ab"
local W = require "tide.ab.workload"
local R = require "tide.ab.runner"

local T = {}

local ARM = { name = "tiny", model = "models/dsv3-tiny", mla = "absorb", threads = 1,
  kv = { block = 16, blocks = 32 }, engine = { max_seqs = 4, max_batch_tokens = 64 } }
local WL = { name = "ci", requests = 3, prompt_len = { 6, 10 }, output_len = 6, arrival = { closed = 2 },
  text = "tests/data/val.txt", seed = 3 }

local function with(t, k, v) return R.with(t, k, v) end

function T.workloads_are_deterministic_and_shaped()
  for _, name in ipairs({ "tiny", "chat", "poisson", "decode-heavy" }) do assert(W.load(name), name) end
  local m = assert(require("tide").load("models/dsv3-tiny", { kv = { blocks = 8 } }))
  local w = assert(W.load{ requests = 20, prompt_len = { 8, 12 }, output_len = { list = { 3, 5 } },
    arrival = { rate = 50 }, shared_prefix = 1, prefix_len = 4, text = "tests/data/val.txt", seed = 9 })
  local a, b = W.requests(w, m), W.requests(w, m)
  H.eq(#a, 20)
  for i = 1, 20 do
    H.same(a[i].ids, b[i].ids, "same seed, same prompts")
    H.truthy(#a[i].ids >= 8 and #a[i].ids <= 12, "prompt length in range")
    H.eq(a[i].max_tokens, i % 2 == 1 and 3 or 5, "output lengths cycle the list")
    for j = 1, 4 do H.eq(a[i].ids[j], a[1].ids[j], "shared prefix") end
    if i > 1 then H.truthy(a[i].t > a[i - 1].t, "Poisson arrivals increase") end
  end
  H.truthy(#a[20].ids > 4 and a[2].ids[6] ~= nil)
  H.fails("arrival", W.load{ arrival = { foo = 1 } })
  H.fails("prompt_len", W.load{ prompt_len = { 5, 2 } })
end

function T.runner_records_latencies()
  local arm = assert(R.open(ARM))
  local w = assert(W.load(WL))
  local reqs = W.requests(w, arm.model)
  reqs.closed = 2
  local res = R.run(arm, reqs)
  H.eq(res.errors, 0)
  H.eq(res.out_tokens, 3 * 6, "every request generates its output length")
  H.eq(#res.ttft, 3)
  H.eq(#res.itl, 3 * 5)
  H.truthy(res.req_s > 0 and res.tok_s > 0 and res.kv_bytes > 0)
  H.truthy(res.peak_rss_process == nil or res.peak_rss_process > 1e6, "peak RSS from /proc")
end

-- A/A: the same recipe twice, 10 repeats: no difference. A correct 5% test
-- alarms in about 1 of 20 A/A trials, so a second, independent trial is run
-- when the first alarms; both alarming (<= 0.25% for a correct procedure) fails.
function T.aa_trial_reports_no_difference()
  local function trial(seed)
    local w = with(WL, "seed", seed)
    return assert(ab.trial{ arms = { ARM, ARM }, workload = w, repeats = 10, seed = seed })
  end
  local res = trial(3)
  if res.verdicts[2].headline.significant then res = trial(4) end
  local v = res.verdicts[2].headline
  H.eq(v.significant, false, v.verdict)
  H.truthy(v.verdict:match("^no difference detected"), v.verdict)
  H.truthy(v.lo <= 0 and v.hi >= 0, "CI holds zero")
end

-- B has a real planted slowdown of about 20%: after each step, extra
-- matmuls for a quarter of the step's time (tok/s x 1/1.25). 20 interleaved
-- repeats keep the verdict stable on a loaded 2-core machine.
function T.planted_slowdown_is_detected()
  local dir = H.tmpdir()
  local slow = with(ARM, "extra_work", 0.25)
  slow.name = "tiny+work"
  local res = assert(ab.trial{ arms = { ARM, slow }, workload = WL, repeats = 20, out = dir })
  local v = res.verdicts[2].headline
  H.truthy(v.significant, v.verdict)
  H.truthy(v.hi < 0, "CI of B/A - 1 for tok/s excludes zero: " .. v.verdict)
  H.truthy(v.verdict:match("^B is [%d%.]+%% slower"), v.verdict)
  H.truthy(res.verdicts[2].itl_p50.lo > 0, "inter-token latency higher")
  -- the folder
  local md = assert(io.open(dir .. "/report.md")):read("*a")
  H.truthy(md:find("B is [%d%.]+%% slower"), "verdict in report.md")
  H.truthy(md:find("TTFT p99", 1, true) and md:find("KV cache bytes", 1, true) and md:find("peak RSS", 1, true))
  local js = assert(io.open(dir .. "/report.json")):read("*a")
  H.truthy(js:find('"comparisons"', 1, true) and js:find('"per_repeat"', 1, true))
  for _, f in ipairs({ "ttft.svg", "itl.svg" }) do
    local svg = assert(io.open(dir .. "/" .. f)):read("*a")
    H.truthy(svg:match("^<svg") and svg:find("</svg>", 1, true), f .. " is an SVG")
    local _, n = svg:gsub("<polyline", "")
    H.eq(n, 2, f .. ": one curve per arm")
  end
  os.execute("rm -rf " .. H.q(dir))
end

function T.sweep_draws_throughput_vs_latency()
  local dir = H.tmpdir()
  local res = assert(ab.sweep{ recipe = ARM, key = "engine.max_seqs", values = { 1, 2 }, workload = WL, repeats = 2,
    warmup = 0, out = dir })
  H.eq(#res.arms, 2)
  H.eq(res.arms[2].label, "engine.max_seqs=2")
  local svg = assert(io.open(dir .. "/sweep.svg")):read("*a")
  local _, n = svg:gsub("<circle", "")
  H.eq(n, 4, "two points on each of two curves")
  H.truthy(assert(io.open(dir .. "/report.md")):read("*a"):find("2 repeats", 1, true))
  os.execute("rm -rf " .. H.q(dir))
end

function T.cli_ab_and_sweep()
  local dir = H.tmpdir()
  local tide = H.tide
  local out = H.sh(H.q(tide) .. " ab recipes/trials/tiny-a.lua recipes/trials/tiny-a.lua --repeats 2 --warmup 0 --out "
    .. H.q(dir .. "/ab"))
  H.truthy(out:find("B vs A (output tok/s):", 1, true), out)
  H.truthy(io.open(dir .. "/ab/report.json") ~= nil)
  out = H.sh(H.q(tide) .. " sweep recipes/trials/tiny-a.lua --set engine.max_seqs=1,2 --repeats 1 --warmup 0 --out "
    .. H.q(dir .. "/sw"))
  H.truthy(out:find("engine.max_seqs=2", 1, true), out)
  H.truthy(io.open(dir .. "/sw/sweep.svg") ~= nil)
  os.execute("rm -rf " .. H.q(dir))
end

-- Arms with quantization schemes (a temporary GGUF each) and quality against the float model.
function T.quant_arms_and_quality()
  local q8, q4 = with(ARM, "quant", "q8_0"), with(ARM, "quant", "experts-q4")
  local res = assert(ab.trial{ arms = { q8, q4 }, workload = WL, repeats = 2, warmup = 0,
    quality = { base = "models/dsv3-tiny", tokens = 48, ctx = 48 } })
  local a, b = res.arms[1], res.arms[2]
  H.truthy(b.weights_bytes < a.weights_bytes, "Q4 experts make a smaller file")
  H.truthy(a.quality.kld_mean >= 0 and b.quality.kld_mean > a.quality.kld_mean, "Q4 experts drift further than Q8")
  H.truthy(a.quality.top1 > 0.5 and a.quality.top1 <= 1)
  H.truthy(require("tide.ab.report").markdown(res):find("quality: kld_mean", 1, true))
  H.truthy(res.verdicts[2].headline.verdict:match("fewer than 6 repeats"), "2 repeats: no claim, and it says why")
end

return T
