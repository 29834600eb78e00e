-- numerics = "ggml": Tide computes every op with llama.cpp's CPU arithmetic
-- in its order (kernels/ggml_order.c), and reproduces llama.cpp bit for bit.
-- tests/fixtures/ggml_numerics.json holds llama.cpp's own greedy tokens and
-- top logits (tests/node-llama/gen_ggml_fixture.lua) on the GGUFs `tide
-- quantize` makes of llama-tiny and dsv3-tiny (q8_0; q4_k with its q4_0 /
-- q6_k tensors), for every fixture prompt; Tide must produce the same tokens
-- and the same float32 logits.
local tide = require "tide"
local H = require "helpers"
local G = require "tide.quant.ggml_fixture"

local T = {}

local f32 = require("tide.tensor").f32

local function fixture()
  local f = assert(io.open("tests/fixtures/ggml_numerics.json", "rb"))
  local d = require("cjson").decode(f:read("*a"))
  f:close()
  return d
end

function T.llama_cpp_tokens_and_logits_bit_for_bit()
  local fx = fixture()
  H.eq(#fx.cases, #G.CASES, "cases")
  local d = H.tmpdir()
  for _, c in ipairs(fx.cases) do
    local path = d .. "/" .. c.model .. "-" .. c.format .. ".gguf"
    assert(require("tide.quant.quantize").run({ model = "models/" .. c.model, scheme = c.format, out = path }))
    local h, bytes = G.file_hash(path)
    H.eq(h .. "/" .. bytes, c.fnv1a .. "/" .. c.bytes, c.model .. " " .. c.format ..
      ": tide quantize wrote another file than the fixture's (regenerate it: tests/node-llama/gen_ggml_fixture.lua)")
    local m = assert(tide.load(path, { numerics = "ggml" }))
    local V = m.n_vocab
    for pi, p in ipairs(c.prompts) do
      local kv = m:kv_cache()
      local seq = assert(kv:seq_new())
      local feed = p.ids
      for s = 1, fx.n do
        local lg = assert(m:step({ seq }, { feed }))
        local x = lg:data_ptr()
        local best = 0
        for i = 1, V - 1 do if x[i] > x[best] then best = i end end
        local what = string.format("%s %s prompt %d step %d", c.model, c.format, pi, s)
        H.eq(best, p.tokens[s], what .. ": greedy token")
        for _, e in ipairs(p.top[s]) do H.eq(x[e[1]], f32(e[2]), what .. ": logit of token " .. e[1]) end
        feed = { best }
      end
      kv:seq_free(seq)
    end
  end
end

-- The same models with Tide's own kernels agree with llama.cpp only to a
-- tolerance (their sums run in another order): the ggml numerics are what
-- makes the fixture above exact, not a property of the files.
function T.tide_numerics_differ_in_the_last_bits()
  local fx = fixture()
  local c = fx.cases[1]
  local d = H.tmpdir()
  local path = d .. "/x.gguf"
  assert(require("tide.quant.quantize").run({ model = "models/" .. c.model, scheme = c.format, out = path }))
  local m = assert(tide.load(path))
  local p = c.prompts[1]
  local lg = assert(m:forward(p.ids))
  local x = lg:data_ptr() + (#p.ids - 1) * m.n_vocab
  local exact, worst = 0, 0
  for _, e in ipairs(p.top[1]) do
    local want = f32(e[2])
    if x[e[1]] == want then exact = exact + 1 end
    worst = math.max(worst, math.abs(x[e[1]] - want))
  end
  H.truthy(exact < #p.top[1], "Tide's kernels matched llama.cpp's bits exactly (the fixture would not test the ggml order)")
  H.truthy(worst < 0.1, "Tide's kernels within 0.1 of llama.cpp: " .. worst)
end

function T.bad_numerics_is_an_error()
  H.fails("numerics must be 'tide' or 'ggml'", tide.load("models/llama-tiny", { numerics = "fast" }))
end

return T
