-- The Lua sampler wrapper and the KV cache wrapper (C behaviour is covered
-- by tests/c/test_sampler.c and test_kvcache.c).
local H = require "helpers"
local ffi = require "ffi"
local Sampler = require "tide.sampler"
local KV = require "tide.kv"

local T = {}

function T.sampler_greedy_logprobs_and_errors()
  local s = assert(Sampler.new({ temperature = 0 }, 4))
  local l = ffi.new("float[4]", { 0.5, 2.0, -1.0, 1.0 })
  H.eq(s:sample(l), 1, "argmax")
  local lp, top = s:logprobs(l, 1, 2)
  local z = math.exp(0.5) + math.exp(2) + math.exp(-1) + math.exp(1)
  H.near(lp, 2 - math.log(z), 1e-5, "logprob")
  H.eq(top[1].id, 1, "top 1")
  H.eq(top[2].id, 3, "top 2")
  H.fails("temperature", Sampler.new({ temperature = -2 }, 4))
  H.fails("must be a number", Sampler.new({ top_p = "x" }, 4))
  H.fails("outside the vocabulary", s:accept(9))
end

function T.kv_wrapper_steps_and_layouts()
  local kv = assert(KV.new({ { n_kv_head = 2, k_dim = 8, v_dim = 8 }, { n_kv_head = 1, k_dim = 12, v_dim = 0, v_from_k = 8 } },
    { block = 4, blocks = 6 }))
  H.eq(kv:bytes_per_token(1), 2 * 16 * 4, "GQA layer bytes")
  H.eq(kv:bytes_per_token(2), 12 * 4, "MLA layer bytes")
  H.same(kv.v[2]:shape(), { 6, 4, 1, 8 }, "V view of the latent rows")
  local a, b = kv:seq_new(), kv:seq_new()
  local batch, pos = assert(kv:step({ a, b }, { 5, 2 }))
  H.eq(batch.n_tok, 7, "tokens")
  H.same(pos:tolist(), { 0, 1, 2, 3, 4, 0, 1 }, "positions")
  H.eq(kv:free_blocks(), 3, "blocks used")
  H.fails("out of blocks", kv:step({ a }, { 40 }))
  H.eq(kv:seq_len(a), 5, "unchanged after a refused step")
  local c = assert(kv:seq_fork(a))
  H.eq(kv:seq_len(c), 5, "fork keeps the length")
  assert(kv:seq_truncate(a, 1))
  assert(kv:seq_free(a))
  assert(kv:seq_free(b))
  assert(kv:seq_free(c))
  H.eq(kv:free_blocks(), 6, "all blocks back")
  H.fails("unknown sequence", kv:seq_free(a))
end

return T
