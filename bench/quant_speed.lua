-- Decode and prefill speed of the synthetic presets in BF16, Q8_0, Q4_0 and
-- Q4_K, against the machine's limits measured in the same run (a read-
-- bandwidth probe and GEMM probes) and against llama.cpp (node-llama-cpp) on
-- the same GGUF with the same thread count when that package is installed.
--
--   build/tide run bench/quant_speed.lua [--dir /tmp/tide-bench] [--presets llama-1b,dsv3-moe-1b]
--       [--types bf16,q8_0,q4_0,q4_k] [--prompt 512] [--gen 128] [--repeats 3] [--threads 2]
--       [--no-llama-cpp] [--bw-mib 1024]
--
-- Missing checkpoints are made first (tide synth, tide quantize; ~2 GB each
-- in bf16, never committed). Each case prints one JSON line (medians over the
-- repeats); a table follows. Decode roofline: bytes read per token (weights
-- used by one token: all matrices but the embedding table, routed experts
-- scaled by top-k / n_experts; plus the KV cache read at the mean decode
-- position) / measured bandwidth. Prefill: matmul + attention FLOPs / the
-- GEMM peak measured for the same weight kind (f32 OpenBLAS for bf16, the
-- quantized matmul at a compute-bound shape for the others).
--
-- The machine may be shared: each repeat runs Tide, then llama.cpp, then a
-- read-bandwidth probe, back to back, so load from elsewhere falls on both
-- sides of a ratio alike; a case's roofline uses the median of its own probes
-- (`bw_gbps`; the probe of the run's start is printed as `probe`). The rows also
-- carry the same ratios in CPU seconds of each process (`cpu_*_vs_llama`; Tide's
-- prefill share from one more, prefill-only run per repeat): the time a process
-- waited for a core is not counted there (at 1 thread the cleanest comparison on
-- a loaded machine; with more threads spinning workers count).
--
-- As a library (the functions stay callable by `tide bench`):
--   local B = dofile("bench/quant_speed.lua")   -- runs nothing unless arg[0] names this file
--   B.probe_bw(mib) -> GB/s; B.probe_gemm(wdt, M, N, K[, threads]) -> GFLOP/s, GFLOP/s in CPU time per thread;
--   B.model_costs(m, ctx_mean);
--   B.node_ok(no_llama_cpp) -> ok, why; B.llama_cpp(gguf, np, ng, threads, seed) -> prefill_s, decode_s, n;
--   B.ensure(dir, preset, type) -> gguf path;
--   B.tide_run(m, np, ng, seed, cpu) -> prefill_s, decode_s_per_token[, cpu_prefill_s, cpu_decode_s_per_token];
--   B.run_case(o) -> row (o: dir, preset, type, prompt, gen, repeats, threads, peak, peak_cpu, have_node, bw_mib,
--     cpu = false to skip the CPU-time columns and their extra prefill);
--   B.main(argv).
local ffi = require "ffi"
local tide = require "tide"
local T = require "tide.tensor"
local F = require "tide.ffi"
local A = require "tide.cmd.args"
local clock = require("tide.generate").clock

local B = {}

local function log(...) io.stderr:write(string.format(...), "\n") end
local function exists(p) local f = io.open(p, "rb") if f then f:close() return true end return false end
local function median(t)
  local s = {}
  for i, v in ipairs(t) do s[i] = v end
  table.sort(s)
  local n = #s
  if n == 0 then return nil end
  return n % 2 == 1 and s[(n + 1) / 2] or (s[n / 2] + s[n / 2 + 1]) / 2
end
B.median = median

-- ---- the checkpoints ----
function B.ensure(dir, preset, ty)
  local S = require "tide.synth"
  local hf = dir .. "/" .. preset
  if not exists(hf .. "/config.json") then
    log("synth %s -> %s", preset, hf)
    assert(S.write({ preset = preset, out = hf, progress = function(m) log("  %s", m) end }))
  end
  local g = dir .. "/" .. preset .. "-" .. ty .. ".gguf"
  if not exists(g) then
    log("quantize %s %s -> %s", preset, ty, g)
    local tmp = g .. ".part.gguf" -- an interrupted run leaves no half-written GGUF under the real name
    assert(require("tide.quant.quantize").run({ model = hf, scheme = ty, out = tmp }))
    assert(os.rename(tmp, g))
  end
  return g
end

-- ---- probes ----
function B.probe_bw(mib)
  local g = ffi.new("double[1]")
  local bytes = (mib or 1024) * 2 ^ 20
  if F.C.tide_probe_read_bw(T.default_pool(), bytes, 5, g, F.err) ~= 0 then error(F.errmsg()) end
  return g[0]
end

-- GFLOP/s of out (M, N) = x (M, K) @ W^T with W (N, K) stored as wdt (best of 3), and the same rate
-- in process CPU time per thread (a second value: ops / (CPU seconds / threads))
function B.probe_gemm(wdt, M, N, K, threads)
  local x = T.zeros({ M, K })
  local xp = ffi.cast("float*", x:cdata().data)
  for i = 0, M * K - 1 do xp[i] = ((i * 7919) % 1000) / 1000 - 0.5 end
  local w32 = T.zeros({ N, K })
  local wp = ffi.cast("float*", w32:cdata().data)
  for i = 0, N * K - 1 do wp[i] = ((i * 104729) % 1000) / 50000 - 0.01 end
  local w = w32:to(wdt)
  local out = T.zeros({ M, N })
  T.op.matmul(out, x, w)
  local best, best_cpu = 0, 0
  for _ = 1, 3 do
    local t0, c0 = clock(), os.clock()
    T.op.matmul(out, x, w)
    local dt, dc = clock() - t0, os.clock() - c0
    best = math.max(best, 2 * M * N * K / dt / 1e9)
    best_cpu = math.max(best_cpu, 2 * M * N * K / math.max(dc / (threads or 1), 1e-9) / 1e9)
  end
  return best, best_cpu
end

-- ---- model accounting ----
function B.model_costs(m, ctx_mean)
  local cfg = m.config
  local E = cfg.n_routed_experts or 0
  local frac = E > 0 and (cfg.num_experts_per_tok / E) or 1
  local wbytes, params = 0, 0
  for name, t in pairs(m.tensors) do
    if t:ndim() >= 2 and not name:match("^model%.layers%.(%d+)%.") or
      (t:ndim() >= 2 and tonumber(name:match("^model%.layers%.(%d+)%.")) < cfg.num_hidden_layers) then
      local b, p = t:nbytes(), t:numel()
      if name:match("embed_tokens") then
        b, p = b / t:size(1), 0
      elseif name:match("mlp%.experts%.") then
        b, p = b * frac, p * frac
      end
      wbytes, params = wbytes + b, params + p
    end
  end
  -- KV bytes per position (all layers) in the cache's dtype (f32)
  local kvb = 0
  for _, l in ipairs(m.arch:kv_layouts()) do kvb = kvb + l.n_kv_head * (l.k_dim + l.v_dim) * 4 end
  -- attention FLOPs per token per context position (QK^T and PV)
  local H = cfg.num_attention_heads
  local dq = cfg.head_dim or (cfg.qk_nope_head_dim and (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim)) or
    cfg.hidden_size / H
  local dv = cfg.v_head_dim or dq
  local attn = 2 * H * (dq + dv) * cfg.num_hidden_layers
  return { weight_bytes = wbytes, kv_bytes_pos = kvb, bytes_token = wbytes + kvb * ctx_mean, params = params,
    attn_flops_pos = attn }
end

-- ---- llama.cpp ----
function B.node_ok(no_llama_cpp)
  if no_llama_cpp then return false, "disabled (--no-llama-cpp)" end
  local ph = io.popen("command -v node")
  local node = ph:read("*a")
  ph:close()
  if node == "" then return false, "node not found" end
  local dirs = { os.getenv("TIDE_NODE_LLAMA_DIR"), "tests/node-llama" }
  for _, d in pairs(dirs) do
    if exists(d .. "/node_modules/node-llama-cpp/dist/index.js") then return true end
  end
  return false, "node-llama-cpp not installed (set TIDE_NODE_LLAMA_DIR to a folder with node_modules/node-llama-cpp)"
end

function B.llama_cpp(g, np, ng, th, seed)
  local p = io.popen(string.format("node tests/node-llama/bench_gguf.mjs '%s' %d %d %d %d 2>/dev/null", g, np, ng, th, seed))
  local out = p:read("*a")
  p:close()
  local pre, dec = out:match('"prefill_s":([%d%.e%-]+)'), out:match('"decode_s":([%d%.e%-]+)')
  local gen = out:match('"generated":(%d+)')
  if not pre then return nil, out end
  local cpre, cdec = out:match('"cpu_prefill_s":([%d%.e%-]+)'), out:match('"cpu_decode_s":([%d%.e%-]+)')
  return tonumber(pre), tonumber(dec), tonumber(gen), tonumber(cpre), tonumber(cdec)
end

-- One Tide generation: prefill seconds and decode seconds per token (wall clock); with cpu = true
-- also the process CPU seconds of the prefill and per decoded token (a second, prefill-only run
-- gives the prefill's share).
function B.tide_run(m, np, ng, seed, cpu)
  local ids = {}
  for i = 1, np do seed = (seed * 1103515245 + 12345) % 2147483648; ids[i] = 3 + seed % 8000 end
  local c0 = os.clock()
  local out, info = m:generate(ids, { max_tokens = ng, temperature = 0, ignore_eos = true })
  local c_all = os.clock() - c0
  assert(out, info)
  local n = math.max(1, info.timings.generated_tokens - 1)
  local cpre, cdec
  if cpu then
    c0 = os.clock()
    assert(m:generate(ids, { max_tokens = 1, temperature = 0, ignore_eos = true }))
    cpre = os.clock() - c0
    cdec = (c_all - cpre) / n
  end
  return info.timings.prefill_s, info.timings.decode_s / n, cpre, cdec
end

-- One case (preset x type): repeats of Tide, llama.cpp and a bandwidth probe, interleaved.
function B.run_case(o)
  local NP, NG, R, TH = o.prompt or 512, o.gen or 128, o.repeats or 3, o.threads or 2
  local g = B.ensure(o.dir, o.preset, o.type)
  local m = assert(tide.load(g, { kv = { blocks = math.ceil((NP + NG) / 16) + 4 }, max_ctx = NP + NG + 16 }))
  local cost = B.model_costs(m, NP + NG / 2)
  local pre, dec, lp, ld, bws = {}, {}, {}, {}, {}
  local cpre, cdec, clp, cld = {}, {}, {}, {}
  for r = 1, R do
    local a, b, ca, cb = B.tide_run(m, NP, NG, r, o.cpu ~= false)
    pre[#pre + 1], dec[#dec + 1] = a, b
    if ca then cpre[#cpre + 1], cdec[#cdec + 1] = ca, cb end
    if o.have_node then
      local p, d, n, cp, cd = B.llama_cpp(g, NP, NG, TH, r)
      if p then
        lp[#lp + 1], ld[#ld + 1] = p, d / math.max(1, n)
        if cp then clp[#clp + 1], cld[#cld + 1] = cp, cd / math.max(1, n) end
      else
        log("llama.cpp failed on %s: %s", g, tostring(d))
      end
    end
    bws[#bws + 1] = B.probe_bw(o.bw_mib)
  end
  m:free()
  m = nil
  collectgarbage()
  local bw = median(bws)
  local pre_tps, dec_tps = NP / median(pre), 1 / median(dec)
  local roof = bw * 1e9 / cost.bytes_token
  local flops_tok = 2 * cost.params + cost.attn_flops_pos * NP / 2
  local pk = o.peak and (o.type == "bf16" and o.peak.f32 or o.peak[o.type]) or nil
  local pk_cpu = o.peak_cpu and (o.type == "bf16" and o.peak_cpu.f32 or o.peak_cpu[o.type]) or nil
  local row = { case = o.preset .. "/" .. o.type, preset = o.preset, type = o.type, threads = TH, prompt = NP, gen = NG,
    repeats = R, decode_tps = dec_tps, prefill_tps = pre_tps, bytes_per_token = cost.bytes_token,
    bw_gbps = bw, roofline_tps = roof, decode_roofline_frac = dec_tps / roof,
    prefill_gflops = pre_tps * flops_tok / 1e9, gemm_peak_gflops = pk,
    prefill_peak_frac = pk and pre_tps * flops_tok / 1e9 / pk or nil }
  if #lp > 0 then
    row.llama_decode_tps = 1 / median(ld)
    row.llama_prefill_tps = NP / median(lp)
    row.decode_vs_llama = row.decode_tps / row.llama_decode_tps
    row.prefill_vs_llama = row.prefill_tps / row.llama_prefill_tps
    row.llama_decode_roofline_frac = row.llama_decode_tps / roof
  end
  -- the same ratios in CPU seconds (all threads of each process): on a shared machine the time a
  -- process waits for a core is not counted; with several threads, spinning workers are
  if #cpre > 0 and pk_cpu then -- prefill FLOP rate in CPU time per thread, against the probe's in the same terms
    row.prefill_peak_frac_cpu = NP * flops_tok / (median(cpre) / TH) / 1e9 / pk_cpu
    row.gemm_peak_gflops_cpu = pk_cpu
  end
  if #cpre > 0 and #clp > 0 then
    row.cpu_prefill_vs_llama = median(clp) / median(cpre)
    row.cpu_decode_vs_llama = median(cld) / median(cdec)
  end
  return row
end

function B.print_table(rows, bw, peak, TH)
  local function f(v, fmt) return v and string.format(fmt, v) or "-" end
  print(string.format("\nread bandwidth %.1f GB/s at the start, GEMM peak f32 %.1f GFLOP/s (%d threads)", bw, peak.f32, TH))
  print(string.format("%-20s %9s %8s %7s %9s %8s %7s %7s %9s %9s %7s %7s %7s %7s", "case", "decode", "roof", "of",
    "prefill", "peak", "of", "cpu.of", "llama.dec", "llama.pp", "dec x", "pp x", "cpu.dx", "cpu.px"))
  for _, r in ipairs(rows) do
    print(string.format("%-20s %9.2f %8.2f %6.0f%% %9.1f %8s %7s %7s %9s %9s %7s %7s %7s %7s", r.case, r.decode_tps,
      r.roofline_tps, 100 * r.decode_roofline_frac, r.prefill_tps, f(r.gemm_peak_gflops, "%.1f"),
      f(r.prefill_peak_frac and 100 * r.prefill_peak_frac, "%.0f%%"),
      f(r.prefill_peak_frac_cpu and 100 * r.prefill_peak_frac_cpu, "%.0f%%"),
      f(r.llama_decode_tps, "%.2f"), f(r.llama_prefill_tps, "%.1f"), f(r.decode_vs_llama, "%.2f"),
      f(r.prefill_vs_llama, "%.2f"), f(r.cpu_decode_vs_llama, "%.2f"), f(r.cpu_prefill_vs_llama, "%.2f")))
  end
  print("(tokens/s; roof = bandwidth roofline for decode (bandwidth probed between repeats); peak = measured GEMM")
  print(" GFLOP/s for prefill, cpu.of = the same fraction with both rates in CPU time per thread; dec x / pp x =")
  print(" Tide / llama.cpp tokens/s; cpu.dx / cpu.px = the same in CPU time)")
end

function B.main(argv)
  local spec = { dir = "string", presets = "string", types = "string", prompt = "number", gen = "number",
    repeats = "number", threads = "number", no_llama_cpp = "flag", bw_mib = "number" }
  local o = assert(A.parse(argv or {}, spec))
  local dir = o.dir or "/tmp/tide-bench"
  local presets, types = {}, {}
  for p in (o.presets or "llama-1b,dsv3-moe-1b"):gmatch("[^,]+") do presets[#presets + 1] = p end
  for t in (o.types or "bf16,q8_0,q4_0,q4_k"):gmatch("[^,]+") do types[#types + 1] = t end
  local TH = o.threads or 2
  T.set_threads(TH)
  os.execute("mkdir -p " .. dir)
  local have_node, why = B.node_ok(o.no_llama_cpp)
  if not have_node then log("llama.cpp comparison skipped: %s", why) end
  local bw = B.probe_bw(o.bw_mib)
  local peak, peak_cpu = {}, {}
  peak.f32, peak_cpu.f32 = B.probe_gemm("f32", 256, 2048, 2048, TH)
  for _, ty in ipairs(types) do
    if ty ~= "bf16" then peak[ty], peak_cpu[ty] = B.probe_gemm(ty, 256, 2048, 2048, TH) end
  end
  peak.bf16, peak_cpu.bf16 = B.probe_gemm("bf16", 256, 2048, 2048, TH)
  print(A.json({ probe = "read_bw", threads = TH, gbps = bw }))
  for k, v in pairs(peak) do
    print(A.json({ probe = "gemm", wtype = k, threads = TH, gflops = v, gflops_cpu = peak_cpu[k], shape = "256x2048x2048" }))
  end
  io.stdout:flush()
  local rows = {}
  for _, preset in ipairs(presets) do
    for _, ty in ipairs(types) do
      local row = B.run_case({ dir = dir, preset = preset, type = ty, prompt = o.prompt, gen = o.gen,
        repeats = o.repeats, threads = TH, peak = peak, peak_cpu = peak_cpu, have_node = have_node, bw_mib = o.bw_mib })
      print(A.json(row))
      io.stdout:flush()
      rows[#rows + 1] = row
    end
  end
  B.print_table(rows, bw, peak, TH)
  return 0
end

-- Run when this file is the script (`tide run bench/quant_speed.lua ...`); as a library otherwise.
if _G.arg and type(_G.arg[0]) == "string" and _G.arg[0]:match("quant_speed%.lua$") then
  B.main(_G.arg)
end
return B
