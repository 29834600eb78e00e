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
-- dtype) sets Tide's. TIDE_NUMERICS lists Tide's numerics to run (default
-- "ggml,tide": llama.cpp's arithmetic op for op, then Tide's own kernels).
-- Prints a table and one JSON line per row; exits 1 when a row of the first
-- numerics has fewer than 20 of 24 (scaled to N) free-running matches, 0
-- otherwise (2: packages missing).
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
local numerics = list(os.getenv("TIDE_NUMERICS"), { "ggml", "tide" })
local rows = {}
for _, nm in ipairs(numerics) do
  local r, e = R.run(env, { models = models, formats = formats, n = n, dir = dir, llama_kv = os.getenv("TIDE_LLAMA_KV"),
    tide_kv = os.getenv("TIDE_KV"), numerics = nm,
    log = function(m) io.stderr:write("roundtrip: ", m, "\n") end })
  if not r then
    io.stderr:write("quant_roundtrip: ", tostring(e), "\n")
    os.exit(1)
  end
  for _, x in ipairs(r) do
    x.numerics = nm
    rows[#rows + 1] = x
  end
end
local need = math.ceil(n * 20 / 24)
local bad = 0
local tot = {}
print(string.format("%-8s %-11s %-6s %-16s %6s %8s %8s %8s %7s", "numerics", "model", "format", "direction", "prompt",
  "match", "prefix", "forced", "gap"))
for _, r in ipairs(rows) do
  print(string.format("%-8s %-11s %-6s %-16s %6d %5d/%-2d %5d/%-2d %5d/%-2d %7.4f", r.numerics, r.model, r.format,
    r.direction, r.prompt, r.match, r.n, r.prefix, r.n, r.forced, r.n, r.gap))
  if r.numerics == numerics[1] and r.match < need then bad = bad + 1 end
  local t = tot[r.numerics] or { match = 0, forced = 0, n = 0, low = 0 }
  tot[r.numerics] = t
  t.match, t.forced, t.n = t.match + r.match, t.forced + r.forced, t.n + r.n
  if r.match < need then t.low = t.low + 1 end
end
for _, nm in ipairs(numerics) do
  local t = tot[nm]
  print(string.format("total (numerics %s): match %d/%d, forced %d/%d, rows below %d/%d: %d", nm, t.match, t.n,
    t.forced, t.n, need, n, t.low))
end
for _, r in ipairs(rows) do
  print(A.json({ bench = "quant_roundtrip", numerics = r.numerics, model = r.model, format = r.format, direction = r.direction,
    prompt = r.prompt, match = r.match, prefix = r.prefix, forced = r.forced, gap = r.gap, n = r.n, tide = r.tide, llama_cpp = r.llama_cpp }))
end
os.execute("rm -rf '" .. dir .. "'")
io.stderr:write(string.format("quant_roundtrip: %d rows, %d of numerics %s below %d/%d\n", #rows, bad, numerics[1],
  need, n))
os.exit(bad == 0 and 0 or 1)
