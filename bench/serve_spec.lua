-- MTP speculative decoding benchmark (issue 6, acceptance 4): greedy output
-- of speculative decoding against plain decoding on the first N prompts of
-- tests/data/val.txt (default 100; 32 new tokens each); acceptance rate of
-- the MTP draft and the speed-up in wall time.
--   tide run bench/serve_spec.lua [N] [max_tokens] [engine batch]
local tide = require "tide"
local S = require "tide.speculative"
local clock = require("tide.generate").clock
local N = tonumber(arg and arg[1]) or 100
local K = tonumber(arg and arg[2]) or 32
local m = assert(tide.load("models/dsv3-tiny"))
local n, same, drafted, accepted, tp, ts = 0, 0, 0, 0, 0, 0
for line in io.lines("tests/data/val.txt") do
  if #line > 20 then
    n = n + 1
    local ids = m.tokenizer:encode(line:sub(1, 300), { add_special = true })
    local t0 = clock()
    local ref = assert(m:generate(ids, { max_tokens = K, temperature = 0, ignore_eos = true }))
    local t1 = clock()
    local out, info = S.generate(m, ids, { max_tokens = K, ignore_eos = true })
    local t2 = clock()
    assert(out, info)
    tp, ts = tp + (t1 - t0), ts + (t2 - t1)
    if table.concat(out, ",") == table.concat(ref, ",") then same = same + 1
    else print("MISMATCH on prompt " .. n) end
    drafted, accepted = drafted + info.drafted, accepted + info.accepted
    if n >= N then break end
  end
end
print(string.format("%d prompts x %d tokens: identical to plain greedy on %d/%d", n, K, same, n))
print(string.format("MTP draft acceptance: %.3f (%d/%d)", accepted / drafted, accepted, drafted))
print(string.format("wall: plain %.2fs, speculative %.2fs, speed-up %.2fx", tp, ts, tp / ts))

-- The same through the serving engine (engine option speculative): the
-- prompts in batches of B at once, greedy, with and without MTP drafting;
-- identical outputs, acceptance, steps and wall time.
local E = require "tide.engine"
local B = tonumber(arg and arg[3]) or 16
local prompts = {}
for line in io.lines("tests/data/val.txt") do
  if #line > 20 then
    prompts[#prompts + 1] = m.tokenizer:encode(line:sub(1, 300), { add_special = true })
    if #prompts >= N then break end
  end
end
local res = {}
for _, spec in ipairs({ false, true }) do
  local e = assert(E.new(m, { max_seqs = B, max_batch_tokens = 1024,
    speculative = spec and { method = "mtp", k = 1 } or nil }))
  local outs, t0 = {}, clock()
  for i0 = 1, #prompts, B do
    local rs = {}
    for i = i0, math.min(i0 + B - 1, #prompts) do
      rs[i] = assert(e:add({ ids = prompts[i], max_tokens = K, temperature = 0, ignore_eos = true }))
    end
    e:run()
    for i, r in pairs(rs) do outs[i] = table.concat(r.out, ",") end
  end
  res[spec] = { outs = outs, wall = clock() - t0, m = e:metrics() }
end
local same_e = 0
for i = 1, #prompts do if res[true].outs[i] == res[false].outs[i] then same_e = same_e + 1 end end
local ms = res[true].m
print(string.format("engine, batches of %d: identical %d/%d; acceptance %.3f (%d/%d); steps %d -> %d;"
  .. " wall %.2fs -> %.2fs, speed-up %.2fx", B, same_e, #prompts, ms.spec_acceptance, ms.spec_accepted,
  ms.spec_drafted, res[false].m.steps, ms.steps, res[false].wall, res[true].wall, res[false].wall / res[true].wall))
