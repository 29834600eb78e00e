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

-- MTP speculation inside the batching engine (engine option speculative):
-- every fixture prompt at once, greedy, with prefill chunks of 5 and of the
-- whole prompt, prefix cache on and off: token for token the plain greedy
-- output; drafts are made and some accepted; a sampled request in the same
-- batch is left alone; no block leaks; models without MTP are refused.
function T.engine_mtp_equals_plain_greedy()
  local E = require "tide.engine"
  local m = assert(tide.load("models/dsv3-tiny", { kv = { blocks = 96 } }))
  local fx = cjson.decode(assert(io.open("tests/fixtures/dsv3-tiny.json")):read("a"))
  local refs = {}
  for i, p in ipairs(fx.public) do
    refs[i] = assert(m:generate(p.ids, { max_tokens = #p.greedy, temperature = 0, ignore_eos = true }))
  end
  local drafted, accepted = 0, 0
  for _, cfg in ipairs({ { chunk = 5, prefix_cache = false }, { chunk = 512, prefix_cache = true } }) do
    local e = assert(E.new(m, { max_batch_tokens = 512, chunk = cfg.chunk, prefix_cache = cfg.prefix_cache,
      speculative = { method = "mtp", k = 1 } }))
    local rs = {}
    for i, p in ipairs(fx.public) do
      rs[i] = assert(e:add({ ids = p.ids, max_tokens = #p.greedy, temperature = 0, ignore_eos = true }))
    end
    local sampled = assert(e:add({ ids = fx.public[1].ids, max_tokens = 10, temperature = 0.9, seed = 5,
      ignore_eos = true }))
    e:run()
    for i, p in ipairs(fx.public) do
      H.same(rs[i].out, refs[i], "prompt " .. i .. " against plain greedy (chunk " .. cfg.chunk .. ")")
      H.same(rs[i].out, p.greedy, "prompt " .. i .. " against the fixture")
    end
    H.eq(#sampled.out, 10, "the sampled request runs to its length")
    local mt = e:metrics()
    H.truthy(mt.spec_drafted > 0 and mt.spec_accepted > 0, "drafts accepted")
    H.truthy(mt.spec_acceptance > 0 and mt.spec_acceptance < 1, "acceptance " .. mt.spec_acceptance)
    H.eq(mt.spec_errors, 0, "no drafting errors")
    drafted, accepted = drafted + mt.spec_drafted, accepted + mt.spec_accepted
    -- fewer steps than tokens: accepted drafts emit two tokens in one step
    H.truthy(mt.steps < mt.generated_tokens, string.format("%d steps for %d tokens", mt.steps, mt.generated_tokens))
    if e.prefix then e.prefix:clear() end
    H.eq(m:kv_cache():free_blocks(), 96, "every block free again")
  end
  -- the same through a short budget (one token: no draft used) and a stop id
  local e = assert(E.new(m, { speculative = { method = "mtp" } }))
  local p = fx.public[2]
  local r1 = assert(e:add({ ids = p.ids, max_tokens = 1, temperature = 0, ignore_eos = true }))
  local r2 = assert(e:add({ ids = p.ids, max_tokens = 24, temperature = 0, ignore_eos = true, stop_ids = { p.greedy[7] } }))
  e:run()
  H.same(r1.out, { p.greedy[1] }, "one token")
  local want = {}
  for j = 1, #p.greedy do
    if p.greedy[j] == p.greedy[7] then break end
    want[j] = p.greedy[j]
  end
  H.same(r2.out, want, "stops at the stop id")
  H.eq(r2.finish_reason, "stop", "finish reason")
  -- refusals
  H.eq((E.new(m, { speculative = { method = "eagle" } })), nil, "unknown method")
  H.eq((E.new(m, { speculative = { method = "mtp", k = 3 } })), nil, "k > 1")
  local ll = assert(tide.load("models/llama-tiny"))
  local none, ne = E.new(ll, { speculative = { method = "mtp" } })
  H.eq(none, nil, "no MTP layer")
  H.truthy(ne:match("MTP"), ne)
end

return T
