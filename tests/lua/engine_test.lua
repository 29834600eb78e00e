-- The engine (continuous batching): greedy outputs under any batching equal
-- model:generate's for each prompt alone (dsv3-tiny and llama-tiny, several
-- concurrent requests of different lengths, chunk sizes 7 / 16 / 512, small
-- and large token budgets, both policies), preemption when KV blocks run
-- out, sampling with per-request seeds, stop ids, cancellation, streaming
-- callbacks, bad requests, and no leaked blocks afterwards.
local H = require "helpers"
local tide = require "tide"
local E = require "tide.engine"

local models = {}
local function model(name, opts)
  local key = name .. (opts and "+" or "")
  if not models[key] then models[key] = assert(tide.load("models/" .. name, opts)) end
  return models[key]
end

local function prompts(m, n)
  local ps, k = {}, 0
  for l in io.lines("tests/data/val.txt") do
    if #l > 30 then
      k = k + 1
      ps[k] = m.tokenizer:encode(l:sub(1, 20 + 37 * k), { add_special = true })
      if k >= n then break end
    end
  end
  return ps
end

local function key(t) return table.concat(t, ",") end

local function check_same(m, ps, cfgs, max_tokens)
  local ref = {}
  for i, p in ipairs(ps) do ref[i] = key(assert(m:generate(p, { max_tokens = max_tokens, temperature = 0 }))) end
  local free0 = m:kv_cache():free_blocks()
  for _, cfg in ipairs(cfgs) do
    local e = assert(E.new(m, cfg))
    local rs = {}
    for i, p in ipairs(ps) do rs[i] = assert(e:add({ ids = p, max_tokens = max_tokens, temperature = 0, priority = i % 3 })) end
    e:run()
    for i = 1, #ps do H.eq(key(rs[i].out), ref[i], "request " .. i .. " with " .. require("tide.repl").pretty(cfg)) end
    if e.prefix then e.prefix:clear() end
    H.eq(m:kv_cache():free_blocks(), free0, "free blocks after the run")
  end
end

local T = {}

function T.greedy_batched_equals_alone_dsv3()
  local m = model("dsv3-tiny")
  check_same(m, prompts(m, 6), {
    { max_batch_tokens = 16, chunk = 16 },
    { max_batch_tokens = 512, chunk = 512 },
    { max_batch_tokens = 40, chunk = 7, max_seqs = 3, policy = "priority" },
  }, 10)
end

function T.greedy_batched_equals_alone_llama()
  local m = model("llama-tiny")
  check_same(m, prompts(m, 5), {
    { max_batch_tokens = 16, chunk = 16 },
    { max_batch_tokens = 512, chunk = 512, max_seqs = 2 },
  }, 10)
end

function T.preemption_when_blocks_run_out()
  -- 12 blocks of 16 slots: the requests cannot all be resident at once
  local m = assert(tide.load("models/llama-tiny", { kv = { blocks = 12 } }))
  local ps = prompts(m, 5)
  local ref = {}
  for i, p in ipairs(ps) do ref[i] = key(assert(m:generate(p, { max_tokens = 24, temperature = 0 }))) end
  local e = assert(E.new(m, { max_batch_tokens = 64, chunk = 32 }))
  local rs = {}
  for i, p in ipairs(ps) do rs[i] = assert(e:add({ ids = p, max_tokens = 24, temperature = 0 })) end
  e:run(2000)
  for i = 1, #ps do
    H.eq(rs[i].error, nil, "request " .. i .. " error")
    H.eq(key(rs[i].out), ref[i], "request " .. i)
  end
  H.truthy(e.stats.preemptions > 0, "some preemption happened")
  H.eq(m:kv_cache():free_blocks(), 12, "every block free")
  -- a request larger than the whole cache is refused, not crashed on
  local r, err = e:add({ ids = ps[1], max_tokens = 400 })
  H.eq(r, nil, "too large a request")
  H.truthy(err:find("KV blocks"), err)
end

function T.sampling_seeds_stop_cancel_stream()
  local m = model("dsv3-tiny")
  local p = prompts(m, 2)
  local ref = key(assert(m:generate(p[1], { max_tokens = 12, temperature = 0.9, top_p = 0.9, seed = 7 })))
  local e = assert(E.new(m, { max_batch_tokens = 32 }))
  local streamed = {}
  local r1 = assert(e:add({ ids = p[1], max_tokens = 12, temperature = 0.9, top_p = 0.9, seed = 7,
    on_token = function(req, id) streamed[#streamed + 1] = id end }))
  local r2 = assert(e:add({ ids = p[2], max_tokens = 50, temperature = 0 }))
  local done2
  r2.on_done = function(req) done2 = req.finish_reason end
  local greedy2 = assert(m:generate(p[2], { max_tokens = 5, temperature = 0 }))
  local r3 = assert(e:add({ ids = p[2], max_tokens = 50, temperature = 0, stop_ids = { greedy2[3] } }))
  for _ = 1, 4 do e:step() end
  e:cancel(r2.id)
  e:run()
  H.eq(key(r1.out), ref, "seeded sampling equals generate's")
  H.eq(key(streamed), ref, "streamed tokens")
  H.eq(done2, "cancelled", "cancel reported")
  H.eq(r3.finish_reason, "stop", "stop id")
  H.eq(key(r3.out), key({ greedy2[1], greedy2[2] }), "output before the stop id")
  H.eq(m:kv_cache():seq_count(), 0, "no live sequences")
end

function T.bad_requests()
  local m = model("dsv3-tiny")
  local e = assert(E.new(m))
  H.eq((e:add({ ids = {} })), nil, "empty prompt")
  H.eq((e:add({ ids = { -1 } })), nil, "negative id")
  H.eq((e:add({ ids = { m.n_vocab } })), nil, "id past the vocabulary")
  H.eq((e:add({ ids = { 1, 2 }, max_tokens = -3 })), nil, "negative max_tokens")
  H.eq((e:add({ ids = { 1, 2 }, temperature = "hot" })), nil, "non-numeric temperature")
  local long = {}
  for i = 1, m.max_ctx + 1 do long[i] = 5 end
  H.eq((e:add({ ids = long })), nil, "prompt longer than the context")
  H.eq((E.new(m, { policy = "nope" })), nil, "unknown policy")
  H.eq(e:pending(), 0, "nothing queued")
end

return T
