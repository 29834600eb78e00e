-- Serving throughput (issue 6, acceptance 2): aggregate output tokens/s of
-- the serving engine (tide.engine, in process: the scheduler, continuous
-- batching and sampling that `tide serve` runs on its engine thread, without
-- HTTP) on the synthetic llama-1b preset quantized Q8_0, at concurrency 1, 4,
-- 16 and 64, next to two roofs measured in the same run and llama.cpp with
-- the same number of sequences batched in one context.
--
--   build/tide run bench/serve.lua [--dir /tmp/tide-serve-bench] [--threads 2] [--conc 1,4,16,64]
--       [--prompt 32] [--gen 33] [--windows 4] [--llama-conc 1,16] [--no-llama-cpp] [--bw-mib 1024]
--       [--type q8_0] [--preset llama-1b]
--
-- Each concurrency N: N requests with distinct prompts of
-- --prompt tokens each and --gen new tokens (greedy, EOS ignored) are added
-- at once; the engine prefills them (chunked, mixed), then every step
-- decodes one token of each of the N sequences in one ragged forward (one
-- GEMM per weight over the N rows, attention per sequence through the paged
-- cache). Timed: the decode, from the step after every request has its first
-- token, cut into --windows equal windows of steps; the reported throughput
-- is the median window's N * steps / seconds. The decode also runs under
-- tide.profile, and the op split (matmul / attention / rest / lua) is
-- printed, with the matmul GFLOP/s reached inside the model.
--
-- Roofs, per N, from probes run in the same process just before:
--   bw roof      = N * read_bandwidth / weight bytes read per step (every
--                  matrix once, the embedding table's N rows only);
--   compute roof = gemm_peak(N) / FLOPs of one token's step (2 * matrix
--                  parameters + attention 4 * heads * head_dim * layers *
--                  mean context), where gemm_peak(N) is the GFLOP/s of the
--                  same weight format at N rows on the model's own layer
--                  shapes (q, k, v, o, gate, up, down of size 2048 x 5632
--                  etc.; each weight timed back to back so it stays in L3:
--                  the kernel's compute peak at N rows, not bandwidth).
--   lower roof   = min of the two.
-- llama.cpp: tests/node-llama/bench_batched.mjs (node-llama-cpp, `sequences:
-- N`) on the same GGUF and thread count, same prompt/gen lengths, same
-- windowed timing. Cached checkpoints (never committed) live in --dir.
-- Timings on a shared machine are noisy: rerun on a quiet one. Next to
-- every wall-clock rate the bench also prints a CPU-time rate (`*_cpu`:
-- work / (process CPU seconds / threads), getrusage), what the rate would be
-- with the threads' cores to itself. Tide's pool spins ~50 us at most before
-- sleeping, so its CPU time is close to its work; llama.cpp's threads poll
-- longer, so its CPU-time rate is a lower bound of its quiet-machine rate.
local ffi = require "ffi"
local tide = require "tide"
local T = require "tide.tensor"
local F = require "tide.ffi"
local A = require "tide.cmd.args"
local E = require "tide.engine"
local P = require "tide.profile"
local clock = require("tide.generate").clock

local spec = { dir = "string", threads = "number", conc = "string", prompt = "number", gen = "number",
  windows = "number", llama_conc = "string", no_llama_cpp = "flag", bw_mib = "number", type = "string",
  preset = "string" }
local o = assert(A.parse(arg or {}, spec))
local dir = o.dir or "/tmp/tide-serve-bench"
local TH, NP, NG, NW = o.threads or 2, o.prompt or 32, o.gen or 33, o.windows or 4
local ty, preset = o.type or "q8_0", o.preset or "llama-1b"
local concs = {}
for c in (o.conc or "1,4,16,64"):gmatch("[^,]+") do concs[#concs + 1] = tonumber(c) end
local llama_concs = {}
for c in (o.llama_conc or "1,16"):gmatch("[^,]+") do llama_concs[tonumber(c)] = true end
assert(NG - 1 >= NW, "--gen must leave at least one decode step per window")
T.set_threads(TH)
os.execute("mkdir -p '" .. dir .. "'")

local function log(...) io.stderr:write(string.format(...), "\n") end
pcall(ffi.cdef, [[
  struct tide_bench_rusage { long utime_s, utime_us, stime_s, stime_us; long rest[14]; };
  int getrusage(int who, struct tide_bench_rusage *usage);
]])
local ru = ffi.new("struct tide_bench_rusage")
-- CPU seconds of the whole process (all threads)
local function cpu()
  ffi.C.getrusage(0, ru)
  return tonumber(ru.utime_s) + tonumber(ru.utime_us) * 1e-6 + tonumber(ru.stime_s) + tonumber(ru.stime_us) * 1e-6
end
-- the checkpoint (made once, cached) and medians: shared with bench/quant_speed.lua
local here = (arg and type(arg[0]) == "string" and arg[0]:match("^(.*)/[^/]*$")) or "bench"
local QS = dofile(here .. "/quant_speed.lua")
local function exists(p) local f = io.open(p, "rb") if f then f:close() return true end return false end
local median = QS.median
local function ensure() return QS.ensure(dir, preset, ty) end

-- ---- probes ----
local function probe_bw()
  local g = ffi.new("double[1]")
  local bytes = (o.bw_mib or 1024) * 2 ^ 20
  if F.C.tide_probe_read_bw(T.default_pool(), bytes, 5, g, F.err) ~= 0 then error(F.errmsg()) end
  return g[0]
end

local function filled(shape, mul, div, off)
  local t = T.zeros(shape)
  local p = ffi.cast("float*", t:cdata().data)
  local n = 1
  for _, d in ipairs(shape) do n = n * d end
  for i = 0, n - 1 do p[i] = ((i * mul) % 1000) / div - off end
  return t
end

-- GFLOP/s of the weight format at M rows over a list of (N, K) weight shapes:
-- each shape warmed once, then timed 4 times back to back (its weight, at most
-- ~12 MB in Q8_0, stays in L3), best per shape; total FLOPs / sum of the bests.
local function probe_gemm(M, shapes, ws)
  local flops, secs, csecs = 0, 0, 0
  for i, s in ipairs(shapes) do
    local x = filled({ M, s[2] }, 7919, 1000, 0.5)
    local out = T.zeros({ M, s[1] })
    T.op.matmul(out, x, ws[i])
    local best, c0 = math.huge, cpu()
    for _ = 1, 4 do
      local t0 = clock()
      T.op.matmul(out, x, ws[i])
      best = math.min(best, clock() - t0)
    end
    flops, secs, csecs = flops + 2 * M * s[1] * s[2], secs + best, csecs + (cpu() - c0) / 4
  end
  return flops / secs / 1e9, flops / (csecs / TH) / 1e9
end

-- ---- model accounting ----
local function model_costs(m, n_seq, ctx_mean)
  local cfg = m.config
  local wbytes, params = 0, 0
  for name, t in pairs(m.tensors) do
    if t:ndim() >= 2 then
      local b, p = t:nbytes(), t:numel()
      if name:match("embed_tokens") then b, p = b / t:size(1) * n_seq, 0 end
      wbytes, params = wbytes + b, params + p
    end
  end
  local H = cfg.num_attention_heads
  local hd = cfg.head_dim or cfg.hidden_size / H
  local attn = 2 * H * (hd + hd) * cfg.num_hidden_layers * ctx_mean
  return { weight_bytes = wbytes, params = params, flops_token = 2 * params + attn }
end

-- ---- llama.cpp ----
local function node_ok()
  if o.no_llama_cpp then return false, "disabled (--no-llama-cpp)" end
  local ph = io.popen("command -v node")
  local node = ph:read("*a")
  ph:close()
  if node == "" then return false, "node not found" end
  for _, d in pairs({ os.getenv("TIDE_NODE_LLAMA_DIR"), "tests/node-llama" }) do
    if exists(d .. "/node_modules/node-llama-cpp/dist/index.js") then return true end
  end
  return false, "node-llama-cpp not installed (set TIDE_NODE_LLAMA_DIR to a folder with node_modules/node-llama-cpp)"
end

local function llama_cpp(g, n)
  local p = io.popen(string.format("node tests/node-llama/bench_batched.mjs '%s' %d %d %d %d 1 %d 2>/dev/null", g, n,
    NP, NG, TH, NW))
  local out = p:read("*a")
  p:close()
  local w = out:match('"window_tps":%[([^%]]*)%]')
  if not w then return nil, out end
  local t = {}
  for v in w:gmatch("[^,]+") do t[#t + 1] = tonumber(v) end
  local c = {}
  for v in (out:match('"window_tps_cpu":%[([^%]]*)%]') or ""):gmatch("[^,]+") do c[#c + 1] = tonumber(v) end
  return median(t), tonumber(out:match('"prefill_s":([%d%.e%-]+)')), t, median(c)
end

-- ---- the engine at concurrency n ----
local function engine_run(m, n)
  local e = assert(E.new(m, { max_seqs = math.max(n, 1), max_batch_tokens = math.max(512, n) }))
  local rs, seed = {}, n
  for i = 1, n do
    local ids = {}
    for j = 1, NP do seed = (seed * 1103515245 + 12345) % 2147483648; ids[j] = 3 + seed % 8000 end
    rs[i] = assert(e:add({ ids = ids, max_tokens = NG, temperature = 0, ignore_eos = true }))
  end
  local t0 = clock()
  while true do
    local all = true
    for i = 1, n do if not rs[i].t_first then all = false break end end
    if all then break end
    e:step()
  end
  local prefill_s = clock() - t0
  local per = math.floor((NG - 1) / NW)
  local wins, wcpu = {}, {}
  local rep = P.run(function(span)
    for w = 1, NW do
      local s0, c0 = clock(), cpu()
      local toks = 0
      for _ = 1, per do toks = toks + span("step", e.step, e) end
      wins[w] = toks / (clock() - s0)
      wcpu[w] = toks / ((cpu() - c0) / TH)
    end
  end)
  e:run()
  for i = 1, n do assert(#rs[i].out == NG, "request ended early") end
  assert(m.kv:free_blocks() == m.kv.n_blocks, "KV blocks leaked")
  local split = { matmul = 0, attention = 0, other_ops = 0, lua = rep.other_seconds }
  local mm_flops = 0
  for _, op in ipairs(rep.ops) do
    if op.name == "matmul" then split.matmul, mm_flops = op.seconds, op.flops
    elseif op.name == "attention" then split.attention = op.seconds
    elseif op.name ~= "lua/other" then split.other_ops = split.other_ops + op.seconds end
  end
  for k, v in pairs(split) do split[k] = v / rep.wall end
  return { tps = median(wins), windows = wins, tps_cpu = median(wcpu), prefill_s = prefill_s, split = split,
    matmul_gflops = mm_flops / (split.matmul * rep.wall) / 1e9, ctx_mean = NP + NG / 2 }
end

-- ---- run ----
local g = ensure()
local have_node, why = node_ok()
if not have_node then log("llama.cpp comparison skipped: %s", why) end
local maxn = 0
for _, n in ipairs(concs) do maxn = math.max(maxn, n) end
local m = assert(tide.load(g, { kv = { blocks = maxn * math.ceil((NP + NG + 1) / 16) + 16 }, max_ctx = NP + NG + 16 }))
print(A.json({ model = tostring(m), gguf = g, threads = TH, prompt = NP, gen = NG, windows = NW,
  engine = "tide.engine in process (continuous batching scheduler, no HTTP)" }))

local bw = probe_bw()
print(A.json({ probe = "read_bw", threads = TH, gbps = bw, mib = o.bw_mib or 1024 }))
-- the model's own matrix shapes for one layer
local cfg = m.config
local D, I = cfg.hidden_size, cfg.intermediate_size
local hd = cfg.head_dim or D / cfg.num_attention_heads
local shapes = { { cfg.num_attention_heads * hd, D }, { cfg.num_key_value_heads * hd, D },
  { cfg.num_key_value_heads * hd, D }, { D, cfg.num_attention_heads * hd }, { I, D }, { I, D }, { D, I } }
local ws = {}
for i, s in ipairs(shapes) do ws[i] = filled(s, 104729, 50000, 0.01):to(ty) end
local peak, peak_cpu = {}, {}
for _, n in ipairs(concs) do
  peak[n], peak_cpu[n] = probe_gemm(n, shapes, ws)
  print(A.json({ probe = "gemm", wtype = ty, rows = n, threads = TH, gflops = peak[n], gflops_cpu = peak_cpu[n],
    shapes = "one llama-1b layer (q,k,v,o,gate,up,down)" }))
end
ws = nil
collectgarbage()

local rows = {}
for _, n in ipairs(concs) do
  local r = engine_run(m, n)
  local cost = model_costs(m, n, r.ctx_mean)
  local bw_roof = n * bw * 1e9 / cost.weight_bytes
  local fl_roof = peak[n] * 1e9 / cost.flops_token
  local low = math.min(bw_roof, fl_roof)
  local fl_roof_cpu = peak_cpu[n] * 1e9 / cost.flops_token
  local row = { case = "engine", concurrency = n, threads = TH, tps = r.tps, windows = r.windows,
    tps_cpu = r.tps_cpu, compute_roof_tps_cpu = fl_roof_cpu, of_compute_roof_cpu = r.tps_cpu / fl_roof_cpu,
    gemm_peak_gflops_cpu = peak_cpu[n],
    prefill_s = r.prefill_s, bw_roof_tps = bw_roof, compute_roof_tps = fl_roof, lower_roof_tps = low,
    of_lower_roof = r.tps / low, gemm_peak_gflops = peak[n], matmul_gflops_in_model = r.matmul_gflops,
    matmul_share = r.split.matmul, attention_share = r.split.attention, other_ops_share = r.split.other_ops,
    lua_share = r.split.lua, weight_bytes_step = cost.weight_bytes, flops_token = cost.flops_token,
    read_bw_gbps = bw }
  rows[#rows + 1] = row
  print(A.json(row))
  io.stdout:flush()
end
m:free()
m = nil
collectgarbage()

local llama, llama_cpu = {}, {}
if have_node then
  for _, n in ipairs(concs) do
    if llama_concs[n] then
      local tps, pre, wins, tcpu = llama_cpp(g, n)
      if tps then
        llama[n], llama_cpu[n] = tps, tcpu
        print(A.json({ case = "llama.cpp", concurrency = n, threads = TH, tps = tps, windows = wins, prefill_s = pre,
          tps_cpu_lower_bound = tcpu }))
      else
        log("llama.cpp failed at %d sequences: %s", n, tostring(pre))
      end
      io.stdout:flush()
    end
  end
end

print(string.format("\n%s %s, %d threads, prompt %d, %d new tokens; read bandwidth %.1f GB/s", preset, ty, TH, NP, NG, bw))
print(string.format("%5s %9s %9s %9s %9s %6s %9s %7s %6s %6s %5s %9s %7s", "conc", "tok/s", "bw roof", "fl roof",
  "gemm pk", "of low", "mm GF/s", "matmul", "attn", "other", "lua", "llama.cpp", "x llama"))
for _, r in ipairs(rows) do
  local l = llama[r.concurrency]
  print(string.format("%5d %9.2f %9.1f %9.1f %9.1f %5.0f%% %9.1f %6.1f%% %5.1f%% %5.1f%% %4.1f%% %9s %7s", r.concurrency,
    r.tps, r.bw_roof_tps, r.compute_roof_tps, r.gemm_peak_gflops, 100 * r.of_lower_roof, r.matmul_gflops_in_model,
    100 * r.matmul_share, 100 * r.attention_share, 100 * r.other_ops_share, 100 * r.lua_share,
    l and string.format("%.2f", l) or "-", l and string.format("%.2f", r.tps / l) or "-"))
end
print("(wall clock: aggregate decode tokens/s, median of windows; roofs per concurrency from probes in this run;"
  .. " split = share of decode wall time by tide.profile)")
print(string.format("\n%5s %9s %9s %9s %6s %12s %7s", "conc", "tok/s cpu", "fl roof", "gemm pk", "of fl",
  "llama.cpp>=", "x llama"))
for _, r in ipairs(rows) do
  local l = llama_cpu[r.concurrency]
  print(string.format("%5d %9.2f %9.1f %9.1f %5.0f%% %12s %7s", r.concurrency, r.tps_cpu, r.compute_roof_tps_cpu,
    r.gemm_peak_gflops_cpu, 100 * r.of_compute_roof_cpu, l and string.format("%.2f", l) or "-",
    l and string.format("<=%.2f", r.tps_cpu / l) or "-"))
end
print("(CPU time: rates as work / (process CPU seconds / threads), against the compute roof from the CPU-time GEMM"
  .. " probe; llama.cpp's is a lower bound of its rate, so the ratio is an upper bound)")
