-- tide.engine.prefix: the prefix cache. Full KV blocks are keyed by their
-- token prefix (a chain: the parent block's entry id + this block's tokens,
-- so a key names the whole prefix exactly, with no hash collisions); the
-- cache holds one reference to each block it knows (src/kvcache.c refcounts),
-- a new sequence adopts the blocks of its longest cached prefix, and blocks
-- that only the cache still references are evicted least recently used first.
local M = {}

local Cache = {}
Cache.__index = Cache
M.Cache = Cache

function M.new(kv)
  return setmetatable({ kv = kv, bs = kv.block_size, map = {}, n_entries = 0, next_id = 1, tick = 0,
    hit_tokens = 0, query_tokens = 0, evictions = 0 }, Cache)
end

local function key_of(parent, toks, first, bs)
  local t = {}
  for i = 1, bs do t[i] = toks[first + i - 1] end
  return parent .. ":" .. table.concat(t, ",")
end

-- Longest cached prefix of toks in full blocks: returns the list of block ids
-- and their entry ids. Marks them used.
function Cache:lookup(toks)
  local bs, parent, blocks, ids = self.bs, 0, {}, {}
  self.tick = self.tick + 1
  for b = 1, math.floor(#toks / bs) do
    local e = self.map[key_of(parent, toks, (b - 1) * bs + 1, bs)]
    if not e then break end
    e.last = self.tick
    blocks[#blocks + 1] = e.block
    ids[#ids + 1] = e.id
    parent = e.id
  end
  return blocks, ids
end

-- Record a query (prompt tokens) and how many of them came from the cache.
function Cache:count(prompt_tokens, hit_tokens)
  self.query_tokens = self.query_tokens + prompt_tokens
  self.hit_tokens = self.hit_tokens + hit_tokens
end

-- Register the full blocks of a sequence: toks are its tokens (at least
-- n_blocks * block_size of them stored in the cache), table its block ids;
-- st = { n = blocks already registered, parent = their last entry id }.
function Cache:insert(toks, table_, n_stored, st)
  local bs = self.bs
  while (st.n + 1) * bs <= n_stored do
    local b = st.n + 1
    local key = key_of(st.parent, toks, (b - 1) * bs + 1, bs)
    local e = self.map[key]
    if not e then
      local ok = self.kv:block_ref(table_[b])
      if not ok then return end
      e = { id = self.next_id, block = table_[b], key = key, last = self.tick }
      self.next_id = self.next_id + 1
      self.map[key] = e
      self.n_entries = self.n_entries + 1
    end
    st.parent, st.n = e.id, b
  end
end

-- Blocks held by nobody but the cache (could be evicted now).
function Cache:evictable()
  local n = 0
  for _, e in pairs(self.map) do if self.kv:block_refs(e.block) == 1 then n = n + 1 end end
  return n
end

-- Evict least recently used unreferenced blocks until `want` blocks are free
-- (or nothing more can go). Returns the number of free blocks.
function Cache:make_room(want)
  local kv = self.kv
  if kv:free_blocks() >= want then return kv:free_blocks() end
  local cands = {}
  for _, e in pairs(self.map) do if kv:block_refs(e.block) == 1 then cands[#cands + 1] = e end end
  table.sort(cands, function(a, b) if a.last ~= b.last then return a.last < b.last end return a.id > b.id end)
  for _, e in ipairs(cands) do
    if kv:free_blocks() >= want then break end
    self.map[e.key] = nil
    self.n_entries = self.n_entries - 1
    self.evictions = self.evictions + 1
    kv:block_unref(e.block)
  end
  return kv:free_blocks()
end

-- Drop every block the cache holds.
function Cache:clear()
  for k, e in pairs(self.map) do
    self.kv:block_unref(e.block)
    self.map[k] = nil
  end
  self.n_entries = 0
end

function Cache:hit_rate()
  if self.query_tokens == 0 then return 0 end
  return self.hit_tokens / self.query_tokens
end

return M
