-- Prefix caching benchmark (issue 6, acceptance 3): 16 requests sharing a
-- 1,000-token system prompt, one after another, with the prefix cache on
-- and off in one run: prefix hit rate and mean time to first token.
--   tide run bench/serve_prefix.lua [model folder]
local tide = require "tide"
local E = require "tide.engine"
local path = arg and arg[1] or "models/dsv3-tiny"
local m = assert(tide.load(path, { kv = { blocks = 256 } }))
local base = m.tokenizer:encode(io.open("tests/data/val.txt"):read("a"), { add_special = true })
local ps = {}
for i = 1, 16 do
  local p = {}
  for j = 1, 1000 do p[j] = base[j] end
  for j = 1, 12 do p[#p + 1] = base[1000 + 40 * i + j] end
  ps[i] = p
end
local res = {}
for _, on in ipairs({ false, true }) do
  local e = assert(E.new(m, { max_batch_tokens = 512, prefix_cache = on }))
  local ttft, outs = 0, {}
  for i = 1, #ps do
    local r = assert(e:add({ ids = ps[i], max_tokens = 8, temperature = 0 }))
    e:run()
    ttft = ttft + (r.t_first - r.t_add)
    outs[i] = table.concat(r.out, ",")
  end
  res[on] = { ttft = ttft / #ps, hit = on and e.prefix:hit_rate() or 0, outs = outs }
  if e.prefix then e.prefix:clear() end
end
local same = true
for i = 1, #ps do if res[true].outs[i] ~= res[false].outs[i] then same = false end end
print(string.format("model %s, 16 requests x (1000 shared + 12 own tokens), 8 new tokens each", path))
print(string.format("prefix cache off: mean TTFT %.2f ms", res[false].ttft * 1e3))
print(string.format("prefix cache on:  mean TTFT %.2f ms, hit rate %.1f%%", res[true].ttft * 1e3, res[true].hit * 100))
print(string.format("TTFT ratio off/on: %.1fx; outputs identical: %s", res[false].ttft / res[true].ttft, tostring(same)))
