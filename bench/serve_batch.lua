-- Continuous batching speed (issue 6, acceptance 2, first part): aggregate
-- decode throughput of the engine at 1, 4 and 8 concurrent sequences and
-- the ratio to 1 sequence.
--   tide run bench/serve_batch.lua [MODEL] [new tokens]
-- MODEL: a model folder (default models/dsv3-tiny), or "llama-1b" for the
-- synthetic 1B model (written once to /tmp/tide-synth-llama-1b by tide.synth).
local tide = require "tide"
local E = require "tide.engine"
local clock = require("tide.generate").clock
local path = arg and arg[1] or "models/dsv3-tiny"
local K = tonumber(arg and arg[2]) or 48
if path == "llama-1b" then
  path = "/tmp/tide-synth-llama-1b"
  local f = io.open(path .. "/config.json")
  if f then f:close() else
    local ok, S = pcall(require, "tide.synth")
    assert(ok, "tide.synth is not available")
    assert(S.write({ arch = "llama", preset = "llama-1b", out = path }))
  end
end
local m = assert(tide.load(path, { kv = { blocks = 512 } }))
local base = m.tokenizer:encode(io.open("tests/data/val.txt"):read("a"), { add_special = true })
print(string.format("%s, %d new tokens per sequence, greedy", tostring(m), K))
local one
for _, n in ipairs({ 1, 4, 8 }) do
  local e = assert(E.new(m, { max_seqs = n, max_batch_tokens = 512 }))
  local rs = {}
  for i = 1, n do
    local p = {}
    for j = 1, 32 do p[j] = base[100 * i + j] end
    rs[i] = assert(e:add({ ids = p, max_tokens = K, temperature = 0, ignore_eos = true }))
  end
  -- prefill everything first, then time the decode steps alone
  while true do
    local all = true
    for i = 1, n do if not rs[i].t_first then all = false end end
    if all then break end
    e:step()
  end
  local t0, steps0, toks0 = clock(), e.stats.steps, e.stats.generated_tokens
  e:run()
  local dt = clock() - t0
  local toks = e.stats.generated_tokens - toks0
  local tps = toks / dt
  one = one or tps
  print(string.format("concurrency %d: %d decode steps, %d tokens in %.3f s = %.1f tok/s aggregate (%.2fx of 1)",
    n, e.stats.steps - steps0, toks, dt, tps, tps / one))
end
