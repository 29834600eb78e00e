-- MTP speculative decoding on dsv3-tiny: token-for-token the greedy output
-- of plain decoding (and of the fixture) on every public fixture prompt,
-- with some drafts accepted and the KV rolled back after rejections.
local H = require "helpers"
local tide = require "tide"
local S = require "tide.speculative"
local cjson = require "cjson"

local T = {}

function T.greedy_identical_on_fixture_prompts()
  local m = assert(tide.load("models/dsv3-tiny"))
  local fx = cjson.decode(assert(io.open("tests/fixtures/dsv3-tiny.json")):read("a"))
  local drafted, accepted = 0, 0
  for i, p in ipairs(fx.public) do
    local n = #p.greedy
    local ref = assert(m:generate(p.ids, { max_tokens = n, temperature = 0, ignore_eos = true }))
    for _, chunk in ipairs({ #p.ids, 5 }) do
      local out, info = S.generate(m, p.ids, { max_tokens = n, ignore_eos = true, chunk = chunk })
      H.truthy(out, info)
      H.same(out, ref, "prompt " .. i .. " against plain greedy")
      H.same(out, p.greedy, "prompt " .. i .. " against the fixture")
      drafted, accepted = drafted + info.drafted, accepted + info.accepted
    end
  end
  H.truthy(accepted > 0 and accepted < drafted, string.format("acceptance %d / %d", accepted, drafted))
  H.eq(m:kv_cache():seq_count(), 0, "sequences freed")
  -- short budgets and refusals
  local out = assert(S.generate(m, fx.public[1].ids, { max_tokens = 1, ignore_eos = true }))
  H.eq(#out, 1, "one token")
  H.eq((S.generate(m, fx.public[1].ids, { temperature = 0.5, top_p = 0.9 })), nil, "top_p refused")
  -- sampling: valid ids, reproducible by seed; a near-zero temperature is greedy
  local a = assert(S.generate(m, fx.public[2].ids, { temperature = 0.8, seed = 3, max_tokens = 12, ignore_eos = true }))
  local b = assert(S.generate(m, fx.public[2].ids, { temperature = 0.8, seed = 3, max_tokens = 12, ignore_eos = true }))
  H.same(a, b, "same seed, same tokens")
  for _, t in ipairs(a) do H.truthy(t >= 0 and t < m.n_vocab, "id in the vocabulary") end
  local g = assert(S.generate(m, fx.public[2].ids, { temperature = 1e-4, max_tokens = 12, ignore_eos = true }))
  H.same(g, assert(m:generate(fx.public[2].ids, { max_tokens = 12, temperature = 0, ignore_eos = true })),
    "temperature 1e-4 equals greedy")
  local ll = assert(tide.load("models/llama-tiny"))
  H.eq((S.generate(ll, { 1, 2 })), nil, "no MTP layer")
end

-- The rejection rule keeps the target distribution: drafts drawn from q,
-- verified against p, come out distributed as p.
function T.rejection_rule_preserves_the_target()
  local ffi = require "ffi"
  local V = 5
  local p = ffi.new("double[?]", V, { 0.5, 0.2, 0.15, 0.1, 0.05 })
  local q = ffi.new("double[?]", V, { 0.1, 0.6, 0.1, 0.0, 0.2 })
  local tmp = ffi.new("double[?]", V)
  local rng = S.rng_new(42)
  local n, counts, kept = 200000, { 0, 0, 0, 0, 0 }, 0
  for _ = 1, n do
    local d = S.draw(q, V, rng())
    local t, k = S.verify(p, q, d, V, rng, tmp)
    counts[t + 1] = counts[t + 1] + 1
    if k then kept = kept + 1 end
  end
  for i = 1, V do H.near(counts[i] / n, p[i - 1], 0.006, "frequency of token " .. (i - 1)) end
  -- acceptance = sum min(p, q) = 0.1 + 0.2 + 0.1 + 0 + 0.05
  H.near(kept / n, 0.45, 0.006, "acceptance rate")
end

return T
