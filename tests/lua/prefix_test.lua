-- Prefix caching: outputs with the cache equal outputs without it; 16
-- requests sharing a long prefix hit the cache for > 90% of their prompt
-- tokens; a fully cached prompt (block-aligned) copies its shared last block
-- before writing it; LRU eviction frees unreferenced cached blocks when the
-- cache runs out; no block leaks.
local H = require "helpers"
local tide = require "tide"
local E = require "tide.engine"

local m
local function model()
  m = m or assert(tide.load("models/dsv3-tiny", { kv = { blocks = 160 } }))
  return m
end

local function key(t) return table.concat(t, ",") end

local function shared_prompts(mm, n, prefix_len)
  local text = io.open("tests/data/val.txt"):read("a")
  local base = mm.tokenizer:encode(text, { add_special = true })
  local ps = {}
  for i = 1, n do
    local p = {}
    for j = 1, prefix_len do p[j] = base[j] end
    for j = 1, 3 + i do p[#p + 1] = base[prefix_len + 50 * i + j] end
    ps[i] = p
  end
  return ps
end

local T = {}

function T.same_outputs_with_and_without()
  local mm = model()
  local ps = shared_prompts(mm, 8, 200)
  local outs = {}
  for _, on in ipairs({ false, true }) do
    local e = assert(E.new(mm, { max_batch_tokens = 256, prefix_cache = on, max_seqs = 4 }))
    -- the first request warms the cache, the others follow
    local rs = { assert(e:add({ ids = ps[1], max_tokens = 6, temperature = 0 })) }
    e:run()
    for i = 2, #ps do rs[i] = assert(e:add({ ids = ps[i], max_tokens = 6, temperature = 0 })) end
    e:run()
    outs[on] = {}
    for i = 1, #ps do outs[on][i] = key(rs[i].out) end
    if on then
      H.truthy(e.prefix:hit_rate() > 0.8, "hit rate " .. e.prefix:hit_rate())
      H.truthy(e:metrics().kv_blocks_cached > 0, "cached blocks")
      e.prefix:clear()
    end
    H.eq(mm:kv_cache():free_blocks(), 160, "every block free again")
  end
  for i = 1, #ps do H.eq(outs[true][i], outs[false][i], "request " .. i .. " with and without the cache") end
  local ref = key(assert(mm:generate(ps[5], { max_tokens = 6, temperature = 0 })))
  H.eq(outs[true][5], ref, "equals generate")
end

function T.hit_rate_16_requests_sharing_1000_tokens()
  local mm = model()
  local ps = shared_prompts(mm, 16, 1000)
  local e = assert(E.new(mm, { max_batch_tokens = 512, prefix_cache = true, max_seqs = 8 }))
  local rs = { assert(e:add({ ids = ps[1], max_tokens = 4, temperature = 0 })) }
  e:run()
  for i = 2, #ps do rs[i] = assert(e:add({ ids = ps[i], max_tokens = 4, temperature = 0 })) end
  e:run()
  local hr = e.prefix:hit_rate()
  H.truthy(hr > 0.9, "hit rate " .. hr)
  e.prefix:clear()
  H.eq(key(rs[16].out), key(assert(mm:generate(ps[16], { max_tokens = 4, temperature = 0 }))), "request 16")
  H.eq(mm:kv_cache():free_blocks(), 160, "every block free again")
end

function T.fully_cached_prompt_copies_on_write()
  local mm = model()
  local ps = shared_prompts(mm, 1, 64) -- 64 = 4 full blocks of 16 ...
  local p = {}
  for j = 1, 64 do p[j] = ps[1][j] end -- ... and nothing else
  local ref = key(assert(mm:generate(p, { max_tokens = 8, temperature = 0 })))
  local e = assert(E.new(mm, { prefix_cache = true }))
  local r1 = assert(e:add({ ids = p, max_tokens = 8, temperature = 0 }))
  e:run()
  local r2 = assert(e:add({ ids = p, max_tokens = 8, temperature = 0 }))
  local r3 = assert(e:add({ ids = p, max_tokens = 8, temperature = 0 }))
  e:run()
  H.eq(key(r1.out), ref, "first")
  H.eq(key(r2.out), ref, "second (63 cached tokens)")
  H.eq(key(r3.out), ref, "third, concurrently")
  H.eq(e.prefix.hit_tokens, 2 * 63, "hit tokens")
  e.prefix:clear()
  H.eq(mm:kv_cache():free_blocks(), 160, "no leak")
end

function T.lru_eviction()
  local mm = assert(tide.load("models/llama-tiny", { kv = { blocks = 24 } }))
  local text = io.open("tests/data/val.txt"):read("a")
  local base = mm.tokenizer:encode(text, { add_special = true })
  local refs, rs, ps = {}, {}, {}
  for i = 1, 6 do
    local p = {}
    for j = 1, 100 do p[j] = base[i * 120 + j] end
    ps[i] = p
    refs[i] = key(assert(mm:generate(p, { max_tokens = 4, temperature = 0 })))
  end
  local e = assert(E.new(mm, { prefix_cache = true }))
  for i = 1, 6 do
    local p = ps[i]
    rs[i] = assert(e:add({ ids = p, max_tokens = 4, temperature = 0 }))
    e:run()
    H.eq(rs[i].error, nil, "request " .. i)
    H.eq(key(rs[i].out), refs[i], "request " .. i)
  end
  H.truthy(e.prefix.evictions > 0, "evictions happened")
  H.truthy(e.prefix.n_entries <= 24, "cache within the pool")
  e.prefix:clear()
  H.eq(mm:kv_cache():free_blocks(), 24, "no leak")
end

-- A small cache, shared prefixes, chunked prefill and preemption together:
-- every request still equals generate's output and nothing leaks.
function T.pressure_with_sharing_and_preemption()
  local mm = assert(tide.load("models/llama-tiny", { kv = { blocks = 20 } }))
  local base = mm.tokenizer:encode(io.open("tests/data/val.txt"):read("a"), { add_special = true })
  local ps, refs = {}, {}
  for i = 1, 8 do
    local p = {}
    for j = 1, 48 do p[j] = base[j] end
    for j = 1, 5 + 5 * i do p[#p + 1] = base[200 + 60 * i + j] end
    ps[i] = p
    refs[i] = key(assert(mm:generate(p, { max_tokens = 20, temperature = 0 })))
  end
  local e = assert(E.new(mm, { prefix_cache = true, max_batch_tokens = 64, chunk = 16 }))
  local rs = {}
  for i = 1, 8 do rs[i] = assert(e:add({ ids = ps[i], max_tokens = 20, temperature = 0 })) end
  e:run(5000)
  for i = 1, 8 do
    H.eq(rs[i].error, nil, "request " .. i .. " error")
    H.eq(key(rs[i].out), refs[i], "request " .. i)
  end
  H.truthy(e.prefix.hit_tokens > 0, "prefix hits")
  H.truthy(e.stats.preemptions > 0 or e.prefix.evictions > 0, "the cache was under pressure")
  e.prefix:clear()
  H.eq(mm:kv_cache():free_blocks(), 20, "no leak")
  H.eq(mm:kv_cache():seq_count(), 0, "no live sequences")
end

-- Disk spill: with a small cache, a prompt's blocks are evicted by later
-- requests and written to disk (zstd); the same prompt again brings them
-- back (counted as hits and as disk hits), its output equals generate, and
-- the files are gone after clear. Without the spill the same run hits
-- nothing the second time. Corrupt files are dropped, never used.
function T.spill_to_disk_and_restore()
  local mm = assert(tide.load("models/dsv3-tiny", { kv = { blocks = 40 } }))
  local text = io.open("tests/data/val.txt"):read("a")
  local base = mm.tokenizer:encode(text, { add_special = true })
  local function prompt(k)
    local p = {}
    for j = 1, 200 do p[j] = base[k * 300 + j] end
    return p
  end
  local ref = key(assert(mm:generate(prompt(0), { max_tokens = 6, temperature = 0 })))
  local ref1 = key(assert(mm:generate(prompt(1), { max_tokens = 6, temperature = 0 })))
  local function files(dir)
    local n = 0
    local ph = io.popen("ls '" .. dir .. "'")
    for line in ph:lines() do if line:match("^tide%-kv%-.*%.zst$") then n = n + 1 end end
    ph:close()
    return n
  end
  local hits = {}
  for _, spill in ipairs({ false, true }) do
    local dir = H.tmpdir()
    local e = assert(E.new(mm, { max_batch_tokens = 256, prefix_cache = true,
      prefix_spill = spill and { dir = dir } or nil }))
    local r = assert(e:add({ ids = prompt(0), max_tokens = 6, temperature = 0 }))
    e:run()
    H.eq(key(r.out), ref, "first run")
    for k = 1, 4 do
      assert(e:add({ ids = prompt(k), max_tokens = 6, temperature = 0 }))
      e:run()
    end
    local before = e.prefix.hit_tokens
    local r2 = assert(e:add({ ids = prompt(0), max_tokens = 6, temperature = 0 }))
    if spill then
      H.truthy(e.prefix.spill.spilled >= 12, "blocks spilled: " .. e.prefix.spill.spilled)
      H.truthy(files(dir) > 0, "files on disk")
    end
    e:run()
    H.eq(key(r2.out), ref, "second run, spill " .. tostring(spill))
    hits[spill] = e.prefix.hit_tokens - before
    if spill then
      local mt = e:metrics()
      H.truthy(mt.prefix_restored_blocks >= 12, "restored " .. mt.prefix_restored_blocks)
      H.truthy(mt.prefix_disk_hit_tokens >= 12 * 16, "disk hit tokens " .. mt.prefix_disk_hit_tokens)
      H.truthy(mt.prefix_spill_bytes > 0 and mt.prefix_spill_bytes < 16 * mm.kv:bytes_per_token() * mt.prefix_spill_files,
        "compressed below raw size")
      -- a corrupt file is dropped (and recomputed), never read into the cache
      local p1 = prompt(1)
      local first = {}
      for j = 1, 16 do first[j] = p1[j] end
      local victim = e.prefix.map["0:" .. table.concat(first, ",")]
      H.truthy(victim and victim.file, "the first block of prompt 1 is on disk")
      local f = assert(io.open(victim.file, "wb"))
      f:write("not zstd")
      f:close()
      victim.size = 8
      local r3 = assert(e:add({ ids = prompt(1), max_tokens = 6, temperature = 0 }))
      e:run()
      H.eq(key(r3.out), ref1, "after a corrupt file")
      H.truthy(e.prefix.spill.errors >= 1, "the corrupt file was noticed")
    end
    e.prefix:clear()
    H.eq(files(dir), 0, "no files left")
    H.eq(mm:kv_cache():free_blocks(), 40, "every block free again")
    os.remove(dir)
  end
  H.eq(hits[false], 0, "without the spill the evicted prefix is gone")
  H.truthy(hits[true] >= 192, "with the spill the prefix is a hit: " .. hits[true])
  H.eq((E.new(mm, { prefix_cache = true, prefix_spill = { dir = "/nonexistent/x" } })), nil, "unwritable folder refused")
end

return T
