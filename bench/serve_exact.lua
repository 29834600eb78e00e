-- Batching changes nothing (issue 6, acceptance 1): 32 concurrent greedy
-- requests of different lengths through /v1/completions of `tide serve`
-- return exactly model:generate's tokens for each prompt alone, with the
-- prefix cache on and off and prefill chunks of 16 and 512 (compared as the
-- decoded text plus the token count, as the API returns text). Needs curl.
--   tide run bench/serve_exact.lua [model folder]
local tide = require "tide"
local cjson = require "cjson"
local H = { q = function(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end }
local path = arg and arg[1] or "models/dsv3-tiny"
local tide_bin = arg and arg[-1] or "./tide"
local m = assert(tide.load(path))
local tok = m.tokenizer
local prompts, refs, ref_text = {}, {}, {}
local base = tok:encode(io.open("tests/data/val.txt"):read("a"), { add_special = false })
for i = 1, 32 do
  local ids = { m.bos_id or 0 }
  -- half the prompts share a 40-token prefix (so the prefix cache is used)
  if i % 2 == 0 then for j = 1, 40 do ids[#ids + 1] = base[j] end end
  for j = 1, 3 + 7 * i do ids[#ids + 1] = base[40 * i + j] end
  prompts[i] = ids
  refs[i] = assert(m:generate(ids, { max_tokens = 16, temperature = 0, ignore_eos = true }))
end
for i = 1, 32 do ref_text[i] = tok:decode(refs[i]) end
local dir = io.popen("mktemp -d"):read("*l")
local total_ok = 0
for _, cfg in ipairs({ { "--chunk 16", "on" }, { "--chunk 512", "on" }, { "--chunk 16 --no-prefix-cache", "off" },
  { "--chunk 512 --no-prefix-cache", "off" } }) do
  os.remove(dir .. "/log")
  os.execute(string.format("(%s serve --model %s --port 0 %s --max-batch-tokens 512 --max-seqs 32 > %s/log 2>&1 & echo $! > %s/pid) ",
    H.q(tide_bin), H.q(path), cfg[1], dir, dir))
  local port
  for _ = 1, 200 do
    local f = io.open(dir .. "/log")
    local s = f and f:read("a") or ""
    if f then f:close() end
    port = tonumber(s:match("127%.0%.0%.1:(%d+)"))
    if port then break end
    os.execute("sleep 0.05")
  end
  assert(port, "server did not start")
  local pid = io.open(dir .. "/pid"):read("a"):match("%d+")
  local cmds = {}
  for i = 1, 32 do
    local body = cjson.encode({ prompt = prompts[i], max_tokens = 16, temperature = 0, ignore_eos = true })
    local f = io.open(dir .. "/req" .. i, "w")
    f:write(body)
    f:close()
    cmds[#cmds + 1] = string.format("curl -s -d @%s/req%d http://127.0.0.1:%d/v1/completions > %s/out%d &", dir, i,
      port, dir, i)
  end
  os.execute(table.concat(cmds, " ") .. " wait")
  local same = 0
  for i = 1, 32 do
    local j = cjson.decode(io.open(dir .. "/out" .. i):read("a"))
    if j and j.choices and j.choices[1].text == ref_text[i] and j.usage.completion_tokens == 16 then same = same + 1 end
  end
  local metrics = io.popen(string.format("curl -s http://127.0.0.1:%d/metrics", port)):read("a")
  os.execute("kill -TERM " .. pid)
  print(string.format("%-32s prefix cache %-3s: %d/32 identical to model:generate (mean batch %.1f seqs, hit rate %s)",
    cfg[1], cfg[2], same, tonumber(metrics:match("tide_batch_size_avg ([%d%.]+)")) or 0,
    metrics:match("tide_prefix_cache_hit_rate ([%d%.e%-]+)") or "?"))
  total_ok = total_ok + same
  os.execute("sleep 0.3")
end
os.execute("rm -rf " .. dir)
print(string.format("total: %d/128 identical", total_ok))
