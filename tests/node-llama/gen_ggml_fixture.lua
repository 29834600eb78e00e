-- gen_ggml_fixture.lua: write tests/fixtures/ggml_numerics.json, llama.cpp's
-- greedy tokens and top logits on GGUFs that `tide quantize` makes, for
-- tests/lua/ggml_numerics_test.lua (Tide with numerics = "ggml" must
-- reproduce them bit for bit).
--
--   build /tmp/ggml_logits (see tests/node-llama/ggml_logits.c), then
--   build/tide run tests/node-llama/gen_ggml_fixture.lua /tmp/ggml_logits BACKEND_DIR
--
-- BACKEND_DIR holds libggml-cpu-*.so of @node-llama-cpp/linux-x64. The
-- fixture records which CPU backend llama.cpp picked: Tide reproduces the
-- AVX-512 ones (zen4, icelake, sapphirerapids, ...).
local R = require "tide.quant.roundtrip"
local A = require "tide.cmd.args"
local G = require "tide.quant.ggml_fixture"

local exe, backends = ...
assert(exe and backends, "usage: gen_ggml_fixture.lua GGML_LOGITS_EXE BACKEND_DIR")
local N, TOPK = G.N, G.TOPK
local dir = io.popen("mktemp -d"):read("*l")
local cases = {}
for _, c in ipairs(G.CASES) do
  local path = dir .. "/" .. c.model .. "-" .. c.format .. ".gguf"
  assert(require("tide.quant.quantize").run({ model = "models/" .. c.model, scheme = c.format, out = path }))
  local prompts = assert(R.prompts(c.model))
  local parts = {}
  for i, p in ipairs(prompts) do parts[i] = table.concat(p, ",") end
  local cmd = string.format("'%s' '%s' '%s' %d %d '%s' 2>/dev/null", exe, backends, path, N, TOPK,
    table.concat(parts, ";"))
  local f = io.popen(cmd)
  local out = {}
  for line in f:lines() do out[#out + 1] = assert(require("cjson").decode(line)) end
  f:close()
  assert(#out == #prompts, "llama.cpp gave " .. #out .. " results for " .. #prompts .. " prompts")
  local fnv, bytes = G.file_hash(path)
  local ps = {}
  for i, p in ipairs(prompts) do ps[i] = { ids = p, tokens = out[i].tokens, top = out[i].top } end
  cases[#cases + 1] = { model = c.model, format = c.format, fnv1a = fnv, bytes = bytes, prompts = ps }
  io.stderr:write(c.model, " ", c.format, ": ", #ps, " prompts\n")
end
os.execute("rm -rf '" .. dir .. "'")
local f = assert(io.open("tests/fixtures/ggml_numerics.json", "w"))
f:write(A.json({ source = "llama.cpp (node-llama-cpp 3.22.1 prebuilt x64 CPU build, AVX-512 backend), " ..
  "1 thread, F32 KV cache, flash attention off; tests/node-llama/ggml_logits.c", n = N, topk = TOPK, cases = cases }), "\n")
f:close()
