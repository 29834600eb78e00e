-- bench/quant_roundtrip.lua: GGUFs between Tide and llama.cpp, both ways
-- (tide.quant.roundtrip): per model x format x direction x fixture prompt,
-- how many of the first N greedy tokens Tide and llama.cpp agree on.
--
--   TIDE_NODE_LLAMA_DIR=/path/with/node_modules build/tide run bench/quant_roundtrip.lua [N] [models] [formats]
--   e.g. ... bench/quant_roundtrip.lua 24 llama-tiny,dsv3-tiny q8_0,q4_k
--
-- match: positions where the free-running greedy sequences agree; prefix:
-- tokens before the first difference; forced: positions where Tide, fed
-- llama.cpp's tokens so far, picks llama.cpp's next token (gap: Tide's largest
-- logit margin for another token where not). llama.cpp runs with an F32 KV
-- cache and flash attention off (as Tide computes); TIDE_LLAMA_KV=default
-- keeps llama.cpp's F16 KV / auto flash attention; TIDE_KV=f16 (or any KV
-- dtype) sets Tide's.
-- Prints a table and one JSON line per row; exits 1 when a row has fewer
-- than 20 of 24 (scaled to N) forced agreements, 0 otherwise (2: packages missing).
local R = require "tide.quant.roundtrip"
local A = require "tide.cmd.args"

local args = { ... }
local n = tonumber(args[1]) or 24
local function list(s, d)
  if not s then return d end
  local t = {}
  for x in s:gmatch("[^,]+") do t[#t + 1] = x end
  return t
end
local models = list(args[2], { "llama-tiny", "dsv3-tiny" })
local formats = list(args[3], { "q8_0", "q4_k" })

local env, why = R.env()
if not env then
  io.stderr:write("quant_roundtrip: skipped: ", why, "\n")
  os.exit(2)
end
local dir = io.popen("mktemp -d"):read("*l")
local rows, e = R.run(env, { models = models, formats = formats, n = n, dir = dir, llama_kv = os.getenv("TIDE_LLAMA_KV"),
  tide_kv = os.getenv("TIDE_KV"),
  log = function(m) io.stderr:write("roundtrip: ", m, "\n") end })
if not rows then
  io.stderr:write("quant_roundtrip: ", tostring(e), "\n")
  os.exit(1)
end
local need = math.ceil(n * 20 / 24)
local bad = 0
local tot = { match = 0, forced = 0, n = 0 }
print(string.format("%-11s %-6s %-16s %6s %8s %8s %8s %7s", "model", "format", "direction", "prompt", "match", "prefix",
  "forced", "gap"))
for _, r in ipairs(rows) do
  print(string.format("%-11s %-6s %-16s %6d %5d/%-2d %5d/%-2d %5d/%-2d %7.4f", r.model, r.format, r.direction, r.prompt,
    r.match, r.n, r.prefix, r.n, r.forced, r.n, r.gap))
  if r.forced < need then bad = bad + 1 end
  tot.match, tot.forced, tot.n = tot.match + r.match, tot.forced + r.forced, tot.n + r.n
end
print(string.format("total: match %d/%d, forced %d/%d", tot.match, tot.n, tot.forced, tot.n))
for _, r in ipairs(rows) do
  print(A.json({ bench = "quant_roundtrip", model = r.model, format = r.format, direction = r.direction,
    prompt = r.prompt, match = r.match, prefix = r.prefix, forced = r.forced, gap = r.gap, n = r.n, tide = r.tide, llama_cpp = r.llama_cpp }))
end
os.execute("rm -rf '" .. dir .. "'")
io.stderr:write(string.format("quant_roundtrip: %d rows, %d below %d/%d\n", #rows, bad, need, n))
os.exit(bad == 0 and 0 or 1)
