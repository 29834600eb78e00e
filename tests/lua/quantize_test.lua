-- tide quantize: GGUFs with a scheme's per-tensor types, llama.cpp names and
-- file type, that Tide loads and runs (and llama.cpp, when node-llama-cpp is
-- installed: tests/node-llama/check_gguf.mjs).
local tide = require "tide"
local H = require "helpers"
local Q = require "tide.quant.quantize"
local ffi = require "ffi"

local T = {}

local function info_types(path)
  local g = assert(tide.gguf.open(path))
  local types = {}
  for _, ti in ipairs(g:tensor_info()) do types[ti.name] = ti.dtype end
  local md = g:metadata()
  g:close()
  return types, md
end

local function node_llama()
  local dirs = { os.getenv("TIDE_NODE_LLAMA_DIR"), "tests/node-llama" }
  for _, d in pairs(dirs) do
    local f = io.open(d .. "/node_modules/node-llama-cpp/dist/index.js", "rb")
    if f then f:close() return true end
  end
  return false
end

local PROMPT = { 0, 400, 500, 600, 700 }

local function same_tokens_in_llama_cpp(path, m, n)
  if not node_llama() or select(2, H.sh("command -v node")) ~= 0 then
    io.stderr:write("  (skipped the llama.cpp check: node or node-llama-cpp not installed;",
      " set TIDE_NODE_LLAMA_DIR to a folder with node_modules/node-llama-cpp)\n")
    return
  end
  local out, code = H.sh("node tests/node-llama/check_gguf.mjs " .. H.q(path) .. " " .. table.concat(PROMPT, ",") .. " " .. n)
  H.eq(code, 0, "node check: " .. out)
  local toks = out:match('"tokens":%[([%d,]*)%]')
  H.truthy(toks, "llama.cpp output: " .. out)
  local ours = m:generate(PROMPT, { max_tokens = n, temperature = 0 })
  local same = 0
  local i = 1
  for t in toks:gmatch("%d+") do
    if tonumber(t) == ours[i] then same = same + 1 else break end
    i = i + 1
  end
  -- greedy tokens agree at least up to the first near tie (q8 activation rounding)
  H.truthy(same >= n / 2, string.format("llama.cpp greedy tokens %s vs tide %s", toks, table.concat(ours, ",")))
end

function T.dsv3_q8_0_and_mixed_load_in_tide_and_llama_cpp()
  local d = H.tmpdir()
  for _, s in ipairs({ "q8_0", "mixed" }) do
    local path = d .. "/" .. s .. ".gguf"
    local ok, info = Q.run({ model = "models/dsv3-tiny", scheme = s, out = path })
    H.truthy(ok, tostring(info))
    local types, md = info_types(path)
    H.eq(md["general.architecture"], "deepseek2")
    if s == "q8_0" then
      H.eq(md["general.file_type"], 7, "file type Q8_0")
      H.eq(types["blk.1.ffn_up_exps.weight"], "q8_0")
      H.eq(types["token_embd.weight"], "q8_0")
    else
      H.eq(types["blk.1.ffn_up_exps.weight"], "q4_0", "routed experts")
      H.eq(types["blk.1.ffn_up_shexp.weight"], "q8_0", "shared experts")
      H.eq(types["blk.1.attn_kv_a_mqa.weight"], "bf16", "attention kept")
      H.eq(types["blk.0.ffn_up.weight"], "q8_0", "first layer")
      H.eq(types["output.weight"], "bf16", "lm_head kept")
    end
    H.eq(types["blk.1.attn_norm.weight"], "f32", "norms f32")
    H.eq(types["blk.1.ffn_gate_inp.weight"], "f32", "router f32")
    local m = assert(tide.load(path))
    H.eq(#m:generate(PROMPT, { max_tokens = 6, temperature = 0 }), 6)
    same_tokens_in_llama_cpp(path, m, 8)
  end
end

function T.llama_imatrix_and_awq_with_calibration()
  local d = H.tmpdir()
  local ref = assert(tide.load("models/llama-tiny"))
  for _, s in ipairs({ "q4_0-imatrix", "q4_0-awq" }) do
    local path = d .. "/" .. s .. ".gguf"
    local ok, info = Q.run({ model = "models/llama-tiny", scheme = s, out = path, calib = "tests/data/val.txt",
      calib_tokens = 256 })
    H.truthy(ok, tostring(info))
    H.eq(info.method, s:match("%-(%w+)$"))
    local types, md = info_types(path)
    H.eq(md["general.file_type"], 2, "file type Q4_0")
    H.eq(types["blk.0.attn_q.weight"], "q4_0")
    H.eq(types["output.weight"], "q6_k")
    local m = assert(tide.load(path))
    local ids = ref.tokenizer:encode("The quick brown fox jumps over the lazy dog. It was a sunny day in the city.")
    local r = assert(require("tide.cmd.kld").compare(ref, m, ids, 64))
    H.truthy(r.kld_mean < 0.2 and r.top1 > 0.6, string.format("close to bf16: KLD %.4f top-1 %.2f", r.kld_mean, r.top1))
    same_tokens_in_llama_cpp(path, m, 6)
  end
end

function T.command_line_and_errors()
  local d = H.tmpdir()
  local out, code = H.sh(H.q(H.tide) .. " quantize --model models/llama-tiny --scheme q8_0 --quiet --json --out " ..
    H.q(d .. "/x.gguf"))
  H.eq(code, 0, out)
  H.truthy(out:match('"scheme":"q8_0"'), out)
  out, code = H.sh(H.q(H.tide) .. " quantize --model models/llama-tiny --scheme nope --out " .. H.q(d .. "/y.gguf"))
  H.eq(code, 1, out)
  H.truthy(out:match("not found"), out)
  H.fails("Hugging Face folder", Q.run({ model = d .. "/x.gguf", scheme = "q8_0", out = d .. "/z.gguf" }))
end

-- Acceptance 2 both ways (tide.quant.roundtrip, also bench/quant_roundtrip.lua):
-- llama.cpp's own quantizer (libllama from the npm package) makes Q8_0 and
-- Q4_K_M GGUFs of Tide's F32 GGUF of llama-tiny and dsv3-tiny; `tide
-- quantize` makes q8_0 / q4_k ones; Tide (numerics = "ggml": llama.cpp's
-- arithmetic op for op) and llama.cpp decode every fixture prompt greedily
-- for 24 tokens. Each free-running sequence must agree on >= 20 of 24 (they
-- agree on all: the logits are the same bits). Also: llama.cpp's fallback
-- q5_0 blocks are byte-identical to Tide's q5_0 quantizer on the same floats.
function T.llama_cpp_quantized_ggufs_run_in_tide_and_back()
  local R = require "tide.quant.roundtrip"
  local env, why = R.env()
  if not env then
    io.stderr:write("  (skipped the llama.cpp round trip: ", why, ")\n")
    return
  end
  local d = H.tmpdir()
  -- Tide's ggml numerics follow llama.cpp's AVX-512 CPU backends; on a CPU without AVX-512 llama.cpp runs
  -- its AVX2 one (other sums), and Tide's own kernels are held to the teacher-forced agreement instead
  local exact = R.llama_cpp_avx512()
  if not exact then io.stderr:write("  (no AVX-512 here: llama.cpp runs its AVX2 kernels; checking forced agreement)\n") end
  local rows = assert(R.run(env, { dir = d, n = 24, numerics = exact and "ggml" or "tide" }))
  H.eq(#rows, 2 * 2 * 2 * 4, "model x format x direction x prompt")
  local match, total = 0, 0
  for _, r in ipairs(rows) do
    local got = exact and r.match or r.forced
    H.truthy(got >= 20, string.format("%s %s %s prompt %d: %d/24 (tide %s, llama.cpp %s)", r.model,
      r.format, r.direction, r.prompt, got, table.concat(r.tide, ","), table.concat(r.llama_cpp, ",")))
    match, total = match + got, total + r.n
  end
  if exact then H.eq(match, total, "free-running agreement") end
  -- llama.cpp's q5_0 (its fallback for q4_k rows of 64..160 columns) against Tide's quantizer
  local base = assert(tide.gguf.open(d .. "/dsv3-tiny-f32.gguf"))
  local lc = assert(tide.gguf.open(d .. "/dsv3-tiny-q4_k-llamacpp.gguf"))
  local n5 = 0
  for _, ti in ipairs(lc:tensor_info()) do
    if ti.dtype == "q5_0" then
      local q = assert(lc:tensor(ti.name))
      local mine = assert(base:tensor(ti.name)):to("q5_0")
      H.eq(mine:nbytes(), q:nbytes(), ti.name)
      H.truthy(ffi.string(mine:data_ptr("char*"), mine:nbytes()) == ffi.string(q:data_ptr("char*"), q:nbytes()),
        "q5_0 bytes of " .. ti.name)
      n5 = n5 + 1
    end
  end
  H.truthy(n5 > 0, "llama.cpp's Q4_K_M file has q5_0 tensors")
  base:close()
  lc:close()
end

-- tide bench (acceptance 5): a table a person reads and a JSON line per case,
-- on the smallest preset so the test stays quick; bad options are refused.
function T.bench_command_prints_table_and_json()
  local out, code = H.sh(H.q(H.tide) .. " bench --help")
  H.eq(code, 0, out)
  H.truthy(out:match("usage: tide bench") and out:match("%-%-formats"), out)
  local d = H.tmpdir()
  out, code = H.sh(H.q(H.tide) .. " bench --preset llama-tiny --formats q8_0,q4_k --prompt 8 --gen 3 --repeats 1" ..
    " --threads 1 --no-llama-cpp --bw-mib 16 --dir " .. H.q(d))
  H.eq(code, 0, out)
  local cases = {}
  for line in out:gmatch("[^\n]+") do
    if line:match('^{"bench":"quant_speed"') then
      local r = require("cjson").decode(line)
      cases[r.case] = r
      H.truthy(r.decode_tps > 0 and r.prefill_tps > 0 and r.bw_gbps > 0 and r.decode_roofline_frac > 0, line)
      H.eq(r.threads, 1)
      H.eq(r.llama_decode_tps, nil, "no llama.cpp columns with --no-llama-cpp")
    end
  end
  H.truthy(cases["llama-tiny/q8_0"] and cases["llama-tiny/q4_k"], out)
  H.truthy(out:match('"probe":"read_bw"') and out:match('"probe":"gemm"'), "probes in the same run")
  H.truthy(out:match("case%s+decode t/s%s+of roofline") and out:match("\nllama%-tiny/q4_k%s+[%d%.]+"), "table: " .. out)
  H.truthy(out:match("llama.cpp skipped: disabled"), "says why llama.cpp is missing")
  out, code = H.sh(H.q(H.tide) .. " bench --formats q3_x --no-llama-cpp")
  H.eq(code, 1, out)
  H.truthy(out:match("unknown format"), out)
  out, code = H.sh(H.q(H.tide) .. " bench --preset nope")
  H.eq(code, 1, out)
  H.truthy(out:match("unknown preset"), out)
end

return T
