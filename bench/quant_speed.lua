-- Decode and prefill speed of the synthetic presets in BF16, Q8_0, Q4_0 and
-- Q4_K, against the machine's limits measured in the same run (a read-
-- bandwidth probe and GEMM probes) and against llama.cpp (node-llama-cpp) on
-- the same GGUF with the same thread count when that package is installed.
--
--   build/tide run bench/quant_speed.lua [--dir /tmp/tide-bench] [--presets llama-1b,dsv3-moe-1b]
--       [--types bf16,q8_0,q4_0,q4_k] [--prompt 512] [--gen 128] [--repeats 3] [--threads 2]
--       [--no-llama-cpp]
--
-- Missing checkpoints are made first (tide synth, tide quantize; ~2 GB each
-- in bf16, never committed). Each case prints one JSON line (medians over the
-- repeats); a table follows. Decode roofline: bytes read per token (weights
-- used by one token: all matrices but the embedding table, routed experts
-- scaled by top-k / n_experts; plus the KV cache read at the mean decode
-- position) / measured bandwidth. Prefill: matmul + attention FLOPs / the
-- GEMM peak measured for the same weight kind (f32 OpenBLAS for bf16, the
-- quantized matmul at a compute-bound shape for the others).
local ffi = require "ffi"
local tide = require "tide"
local T = require "tide.tensor"
local F = require "tide.ffi"
local A = require "tide.cmd.args"
local clock = require("tide.generate").clock

local spec = { dir = "string", presets = "string", types = "string", prompt = "number", gen = "number",
  repeats = "number", threads = "number", no_llama_cpp = "flag", bw_mib = "number" }
local o = assert(A.parse(arg or {}, spec))
local dir = o.dir or "/tmp/tide-bench"
local presets = {}
for p in (o.presets or "llama-1b,dsv3-moe-1b"):gmatch("[^,]+") do presets[#presets + 1] = p end
local types = {}
for t in (o.types or "bf16,q8_0,q4_0,q4_k"):gmatch("[^,]+") do types[#types + 1] = t end
local NP, NG, R, TH = o.prompt or 512, o.gen or 128, o.repeats or 3, o.threads or 2
T.set_threads(TH)
os.execute("mkdir -p " .. dir)

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

-- ---- the checkpoints ----
local S = require "tide.synth"
local function ensure(preset, ty)
  local hf = dir .. "/" .. preset
  if not exists(hf .. "/config.json") then
    log("synth %s -> %s", preset, hf)
    assert(S.write({ preset = preset, out = hf, progress = function(m) log("  %s", m) end }))
  end
  local g = dir .. "/" .. preset .. "-" .. ty .. ".gguf"
  if not exists(g) then
    log("quantize %s %s -> %s", preset, ty, g)
    assert(require("tide.quant.quantize").run({ model = hf, scheme = ty, out = g }))
  end
  return g
end

-- ---- probes ----
local function probe_bw()
  local g = ffi.new("double[1]")
  local bytes = (o.bw_mib or 1024) * 2 ^ 20
  if F.C.tide_probe_read_bw(T.default_pool(), bytes, 5, g, F.err) ~= 0 then error(F.errmsg()) end
  return g[0]
end

-- GFLOP/s of out (M, N) = x (M, K) @ W^T with W (N, K) stored as wdt
local function probe_gemm(wdt, M, N, K)
  local x = T.zeros({ M, K })
  local xp = ffi.cast("float*", x:cdata().data)
  for i = 0, M * K - 1 do xp[i] = ((i * 7919) % 1000) / 1000 - 0.5 end
  local w32 = T.zeros({ N, K })
  local wp = ffi.cast("float*", w32:cdata().data)
  for i = 0, N * K - 1 do wp[i] = ((i * 104729) % 1000) / 50000 - 0.01 end
  local w = w32:to(wdt)
  local out = T.zeros({ M, N })
  T.op.matmul(out, x, w)
  local best = 0
  for _ = 1, 3 do
    local t0 = clock()
    T.op.matmul(out, x, w)
    local dt = clock() - t0
    best = math.max(best, 2 * M * N * K / dt / 1e9)
  end
  return best
end

-- ---- model accounting ----
local function model_costs(m, ctx_mean)
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
local function node_ok()
  if o.no_llama_cpp then return false, "disabled (--no-llama-cpp)" end
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
local function llama_cpp(g, seed)
  local p = io.popen(string.format("node tests/node-llama/bench_gguf.mjs '%s' %d %d %d %d 2>/dev/null", g, NP, NG, TH, seed))
  local out = p:read("*a")
  p:close()
  local pre, dec = out:match('"prefill_s":([%d%.e%-]+)'), out:match('"decode_s":([%d%.e%-]+)')
  local gen = out:match('"generated":(%d+)')
  if not pre then return nil, out end
  return tonumber(pre), tonumber(dec), tonumber(gen)
end

-- ---- run ----
local have_node, why = node_ok()
if not have_node then log("llama.cpp comparison skipped: %s", why) end
local bw = probe_bw()
local peak = { f32 = probe_gemm("f32", 256, 2048, 2048) }
for _, ty in ipairs(types) do
  if ty ~= "bf16" then peak[ty] = probe_gemm(ty, 256, 2048, 2048) end
end
peak.bf16 = probe_gemm("bf16", 256, 2048, 2048)
print(A.json({ probe = "read_bw", threads = TH, gbps = bw }))
for k, v in pairs(peak) do print(A.json({ probe = "gemm", wtype = k, threads = TH, gflops = v, shape = "256x2048x2048" })) end

local rows = {}
for _, preset in ipairs(presets) do
  for _, ty in ipairs(types) do
    local g = ensure(preset, ty)
    local m = assert(tide.load(g, { kv = { blocks = math.ceil((NP + NG) / 16) + 4 }, max_ctx = NP + NG + 16 }))
    local cost = model_costs(m, NP + NG / 2)
    local pre, dec = {}, {}
    local seed = 1
    for r = 1, R do
      local ids = {}
      for i = 1, NP do seed = (seed * 1103515245 + 12345) % 2147483648; ids[i] = 3 + seed % 8000 end
      local out, info = m:generate(ids, { max_tokens = NG, temperature = 0, ignore_eos = true })
      assert(out, info)
      pre[#pre + 1] = info.timings.prefill_s
      dec[#dec + 1] = info.timings.decode_s / math.max(1, info.timings.generated_tokens - 1)
    end
    m:free()
    m = nil
    collectgarbage()
    local pre_tps, dec_tps = NP / median(pre), 1 / median(dec)
    local roof = bw * 1e9 / cost.bytes_token
    local flops_tok = 2 * cost.params + cost.attn_flops_pos * NP / 2
    local pk = ty == "bf16" and peak.f32 or peak[ty]
    local row = { case = preset .. "/" .. ty, preset = preset, type = ty, threads = TH, prompt = NP, gen = NG,
      repeats = R, decode_tps = dec_tps, prefill_tps = pre_tps, bytes_per_token = cost.bytes_token,
      bw_gbps = bw, roofline_tps = roof, decode_roofline_frac = dec_tps / roof,
      prefill_gflops = pre_tps * flops_tok / 1e9, gemm_peak_gflops = pk,
      prefill_peak_frac = pre_tps * flops_tok / 1e9 / pk }
    if have_node then
      local lp, ld = {}, {}
      for r = 1, R do
        local a, b, n = llama_cpp(g, r)
        if a then
          lp[#lp + 1] = a
          ld[#ld + 1] = b / math.max(1, n)
        else
          log("llama.cpp failed on %s: %s", g, tostring(b))
        end
      end
      if #lp > 0 then
        row.llama_decode_tps = 1 / median(ld)
        row.llama_prefill_tps = NP / median(lp)
        row.decode_vs_llama = row.decode_tps / row.llama_decode_tps
        row.prefill_vs_llama = row.prefill_tps / row.llama_prefill_tps
      end
    end
    print(A.json(row))
    io.stdout:flush()
    rows[#rows + 1] = row
  end
end

local function f(v, fmt) return v and string.format(fmt, v) or "-" end
print(string.format("\nread bandwidth %.1f GB/s, GEMM peak f32 %.1f GFLOP/s (%d threads)", bw, peak.f32, TH))
print(string.format("%-20s %9s %8s %7s %9s %8s %7s %9s %9s %7s %7s", "case", "decode", "roof", "of", "prefill",
  "peak", "of", "llama.dec", "llama.pp", "dec x", "pp x"))
for _, r in ipairs(rows) do
  print(string.format("%-20s %9.2f %8.2f %6.0f%% %9.1f %8.1f %6.0f%% %9s %9s %7s %7s", r.case, r.decode_tps,
    r.roofline_tps, 100 * r.decode_roofline_frac, r.prefill_tps, r.gemm_peak_gflops, 100 * r.prefill_peak_frac,
    f(r.llama_decode_tps, "%.2f"), f(r.llama_prefill_tps, "%.1f"), f(r.decode_vs_llama, "%.2f"),
    f(r.prefill_vs_llama, "%.2f")))
end
print("(tokens/s; roof = bandwidth roofline for decode; peak = measured GEMM GFLOP/s for prefill)")
