-- tide kld: KL divergence, top-1 agreement and perplexity ratio of a model
-- against a base; dsv3-tiny against its Q8_0 and Q4_0 GGUFs on a prefix of
-- tests/data/val.txt.
local tide = require "tide"
local H = require "helpers"
local K = require "tide.cmd.kld"
local P = require "tide.cmd.ppl"

local T = {}

local function text_tokens(m, n)
  local f = assert(io.open("tests/data/val.txt", "rb"))
  local s = f:read(20000)
  f:close()
  return P.token_stream(m, P.documents(s), n)
end

function T.base_against_itself_is_zero()
  local m = assert(tide.load("models/dsv3-tiny", { kv = { blocks = 12 } }))
  local toks = text_tokens(m, 97)
  local r = assert(K.compare(m, m, toks, 48))
  H.eq(r.tokens, 96)
  H.near(r.kld_mean, 0, 1e-9, "kld")
  H.eq(r.top1, 1, "top-1")
  H.near(r.ppl_ratio, 1, 1e-12, "ppl ratio")
  -- the perplexity is tide ppl's
  local nll = P.score(m, toks, 48)
  H.near(math.log(r.ppl_base), nll, 1e-5, "ppl as tide ppl")
end

function T.q8_0_is_closer_than_q4_0()
  local Q = require "tide.quant.quantize"
  local d = H.tmpdir()
  local base = assert(tide.load("models/dsv3-tiny", { kv = { blocks = 20 } }))
  local toks = text_tokens(base, 257)
  local res = {}
  for _, s in ipairs({ "q8_0", "q4_0" }) do
    local path = d .. "/" .. s .. ".gguf"
    assert(Q.run({ model = "models/dsv3-tiny", scheme = s, out = path }))
    local m = assert(tide.load(path, { kv = { blocks = 20 } }))
    res[s] = assert(K.compare(base, m, toks, 128))
  end
  local a, b = res.q8_0, res.q4_0
  H.truthy(a.kld_mean > 0 and a.kld_mean < b.kld_mean, string.format("KLD q8_0 %.5f < q4_0 %.5f", a.kld_mean, b.kld_mean))
  H.truthy(a.kld_p99 >= a.kld_mean, "p99 >= mean")
  H.truthy(a.top1 > 0.9, "q8_0 top-1 " .. a.top1)
  H.truthy(math.abs(a.ppl_ratio - 1) < 0.01, "q8_0 ppl ratio " .. a.ppl_ratio)
  H.truthy(b.ppl_ratio < 1.1, "q4_0 ppl ratio " .. b.ppl_ratio)
end

function T.command_prints_json()
  local out, code = H.sh(H.q(H.tide) .. " kld --base models/llama-tiny --model models/llama-tiny --file tests/data/val.txt" ..
    " --ctx 32 --max-tokens 32 --json")
  H.eq(code, 0, out)
  H.truthy(out:match('"top1":1') and out:match('"tokens":32'), out)
  out, code = H.sh(H.q(H.tide) .. " kld --base models/llama-tiny --file tests/data/val.txt")
  H.eq(code, 1, out)
end

return T
