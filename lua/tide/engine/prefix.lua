-- tide.engine.prefix: the prefix cache. Full KV blocks are keyed by their
-- token prefix (a chain: the parent block's entry id + this block's tokens,
-- so a key names the whole prefix exactly, with no hash collisions); the
-- cache holds one reference to each block it knows (src/kvcache.c refcounts),
-- a new sequence adopts the blocks of its longest cached prefix, and blocks
-- that only the cache still references are evicted least recently used first.
--
-- Disk spill (opts.spill = { dir = PATH, max_bytes = 1 GiB, level = 3 }): an
-- evicted block's rows (every layer's K and V for its block_size positions)
-- are compressed with zstd (libzstd through the FFI) into PATH/tide-kv-<pid>-
-- <n>-<entry>.zst and its entry stays in the chain, on disk. A later lookup
-- that reaches a disk entry takes a free block (evicting a colder one if
-- needed, never one of the prefix being looked up), decompresses the rows
-- into it and goes on: the prefix comes back bit for bit. Counters: spilled,
-- restored, bytes on disk, dropped (over max_bytes: the least recently used
-- disk entries are deleted first), disk_hit_tokens (prompt tokens served
-- from restored blocks). File names come from counters only.
local ffi = require "ffi"
local C = ffi.C

local M = {}

local Cache = {}
Cache.__index = Cache
M.Cache = Cache

-- ---- zstd (libzstd, loaded on first use) ----
local zstd
local function zlib()
  if zstd ~= nil then return zstd or nil, "libzstd is not available" end
  pcall(ffi.cdef, [[
    size_t ZSTD_compressBound(size_t srcSize);
    size_t ZSTD_compress(void *dst, size_t dstCapacity, const void *src, size_t srcSize, int compressionLevel);
    size_t ZSTD_decompress(void *dst, size_t dstCapacity, const void *src, size_t compressedSize);
    unsigned ZSTD_isError(size_t code);
    const char *ZSTD_getErrorName(size_t code);
  ]])
  zstd = false
  for _, name in ipairs({ "zstd", "libzstd.so.1" }) do
    local ok, lib = pcall(ffi.load, name)
    if ok then zstd = lib break end
  end
  if not zstd then return nil, "libzstd is not available" end
  return zstd
end
M.zstd = zlib

local n_caches = 0 -- file-name counter (several caches may share one folder)

-- opts.spill: nil (evicted blocks are dropped) or { dir, max_bytes, level }.
function M.new(kv, opts)
  opts = opts or {}
  local self = setmetatable({ kv = kv, bs = kv.block_size, map = {}, n_entries = 0, next_id = 1, tick = 0,
    hit_tokens = 0, query_tokens = 0, evictions = 0, disk_hit_tokens = 0 }, Cache)
  local sp = opts.spill
  if sp then
    if type(sp) ~= "table" or type(sp.dir) ~= "string" or sp.dir == "" then
      return nil, "engine: prefix_spill must be a table { dir = PATH, max_bytes = N, level = L }"
    end
    local z, ze = zlib()
    if not z then return nil, "engine: prefix_spill: " .. ze end
    local max_bytes, level = sp.max_bytes or 2 ^ 30, sp.level or 3
    if type(max_bytes) ~= "number" or max_bytes < 0 then return nil, "engine: prefix_spill.max_bytes must be >= 0" end
    if type(level) ~= "number" or level < 1 or level > 19 then return nil, "engine: prefix_spill.level must be 1..19" end
    local probe = sp.dir .. "/.tide-spill-probe"
    local f = io.open(probe, "wb")
    if not f then return nil, "engine: prefix_spill: cannot write in " .. sp.dir end
    f:close()
    os.remove(probe)
    n_caches = n_caches + 1
    -- the rows of one block: every layer's K (and V when stored apart)
    local parts = {}
    for l = 1, kv.n_layer do
      for _, t in ipairs({ C.tide_kvcache_k(kv._c, l - 1), C.tide_kvcache_v(kv._c, l - 1) }) do
        if t ~= nil then
          local per = tonumber(C.tide_tensor_nbytes(t)) / kv.n_blocks
          parts[#parts + 1] = { t = t, per = per }
        end
      end
    end
    local total = 0
    for _, p in ipairs(parts) do total = total + p.per end
    self.spill = { dir = sp.dir, max_bytes = max_bytes, level = level, parts = parts, block_bytes = total,
      raw = ffi.new("uint8_t[?]", total), zbuf = ffi.new("uint8_t[?]", tonumber(z.ZSTD_compressBound(total))),
      spilled = 0, restored = 0, dropped = 0, bytes = 0, n_files = 0, errors = 0 }
    pcall(ffi.cdef, "int getpid(void);")
    self.spill.prefix = string.format("%s/tide-kv-%d-%d-", sp.dir, C.getpid(), n_caches)
  end
  return self
end

local function key_of(parent, toks, first, bs)
  local t = {}
  for i = 1, bs do t[i] = toks[first + i - 1] end
  return parent .. ":" .. table.concat(t, ",")
end

-- ---- spill and restore ----

local function block_ptr(part, block)
  return ffi.cast("uint8_t*", part.t.data) + part.per * block
end

-- Write the entry's block to disk (compressed); true when it is on disk now.
local function spill_out(self, e)
  local sp = self.spill
  local z = zstd
  local off = 0
  for _, p in ipairs(sp.parts) do
    ffi.copy(sp.raw + off, block_ptr(p, e.block), p.per)
    off = off + p.per
  end
  local n = z.ZSTD_compress(sp.zbuf, z.ZSTD_compressBound(sp.block_bytes), sp.raw, sp.block_bytes, sp.level)
  if z.ZSTD_isError(n) ~= 0 then sp.errors = sp.errors + 1 return false end
  n = tonumber(n)
  if n > sp.max_bytes then return false end
  -- room on disk: drop the least recently used disk entries first
  if sp.bytes + n > sp.max_bytes then
    local cands = {}
    for _, d in pairs(self.map) do if d.file then cands[#cands + 1] = d end end
    table.sort(cands, function(a, b) if a.last ~= b.last then return a.last < b.last end return a.id > b.id end)
    for _, d in ipairs(cands) do
      if sp.bytes + n <= sp.max_bytes then break end
      self:drop_disk(d)
    end
  end
  local path = sp.prefix .. e.id .. ".zst"
  local f = io.open(path, "wb")
  if not f then sp.errors = sp.errors + 1 return false end
  local ok = f:write(ffi.string(sp.zbuf, n))
  f:close()
  if not ok then os.remove(path) sp.errors = sp.errors + 1 return false end
  e.file, e.size = path, n
  sp.bytes, sp.n_files, sp.spilled = sp.bytes + n, sp.n_files + 1, sp.spilled + 1
  return true
end

function Cache:drop_disk(e)
  local sp = self.spill
  os.remove(e.file)
  sp.bytes, sp.n_files, sp.dropped = sp.bytes - e.size, sp.n_files - 1, sp.dropped + 1
  e.file, e.size = nil, nil
  self.map[e.key] = nil
end

-- A fresh block (refcount 1, held by the cache) or nil.
local function take_block(self)
  local kv = self.kv
  if kv:free_blocks() < 1 then self:make_room(1, self.tick) end
  if kv:free_blocks() < 1 then return nil end
  local s = kv:seq_new()
  if not s then return nil end
  local b
  if kv:step({ s }, { self.bs }) then
    local t = kv:seq_table(s)
    b = t and t[1]
    if b and not kv:block_ref(b) then b = nil end
  end
  kv:seq_free(s)
  return b
end

-- Bring a disk entry back into a block; true on success (the entry is then
-- an ordinary cached block), false when it cannot come back now.
local function restore(self, e)
  local sp = self.spill
  local f = io.open(e.file, "rb")
  local data = f and f:read("a")
  if f then f:close() end
  if not data or #data ~= e.size then
    sp.errors = sp.errors + 1
    self:drop_disk(e)
    return false
  end
  -- the block first: making room may spill another block through sp.raw
  local b = take_block(self)
  if not b then return false end
  local n = zstd.ZSTD_decompress(sp.raw, sp.block_bytes, data, #data)
  if zstd.ZSTD_isError(n) ~= 0 or tonumber(n) ~= sp.block_bytes then
    sp.errors = sp.errors + 1
    self.kv:block_unref(b)
    self:drop_disk(e)
    return false
  end
  local off = 0
  for _, p in ipairs(sp.parts) do
    ffi.copy(block_ptr(p, b), sp.raw + off, p.per)
    off = off + p.per
  end
  os.remove(e.file)
  sp.bytes, sp.n_files, sp.restored = sp.bytes - e.size, sp.n_files - 1, sp.restored + 1
  e.file, e.size, e.block = nil, nil, b
  self.n_entries = self.n_entries + 1
  self.disk_hit_tokens = self.disk_hit_tokens + self.bs
  return true
end

-- ---- the cache ----

-- Longest cached prefix of toks in full blocks: returns the list of block ids
-- and their entry ids. Marks them used; blocks on disk come back on the way.
function Cache:lookup(toks)
  local bs, parent, blocks, ids = self.bs, 0, {}, {}
  self.tick = self.tick + 1
  for b = 1, math.floor(#toks / bs) do
    local e = self.map[key_of(parent, toks, (b - 1) * bs + 1, bs)]
    if not e then break end
    e.last = self.tick
    if e.file and not restore(self, e) then break end
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
    if e and e.file then
      -- the same rows were computed again: the entry (and its id, which its
      -- children's keys name) takes this block and leaves the disk
      if not self.kv:block_ref(table_[b]) then return end
      local sp = self.spill
      os.remove(e.file)
      sp.bytes, sp.n_files = sp.bytes - e.size, sp.n_files - 1
      e.file, e.size, e.block, e.last = nil, nil, table_[b], self.tick
      self.n_entries = self.n_entries + 1
    end
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
  for _, e in pairs(self.map) do if e.block and self.kv:block_refs(e.block) == 1 then n = n + 1 end end
  return n
end

-- Evict least recently used unreferenced blocks until `want` blocks are free
-- (or nothing more can go); entries used at tick `keep` stay. With a spill
-- folder, evicted blocks go to disk. Returns the number of free blocks.
function Cache:make_room(want, keep)
  local kv = self.kv
  if kv:free_blocks() >= want then return kv:free_blocks() end
  local cands = {}
  for _, e in pairs(self.map) do
    if e.block and kv:block_refs(e.block) == 1 and e.last ~= keep then cands[#cands + 1] = e end
  end
  table.sort(cands, function(a, b) if a.last ~= b.last then return a.last < b.last end return a.id > b.id end)
  for _, e in ipairs(cands) do
    if kv:free_blocks() >= want then break end
    if not (self.spill and spill_out(self, e)) then self.map[e.key] = nil end
    self.n_entries = self.n_entries - 1
    self.evictions = self.evictions + 1
    kv:block_unref(e.block)
    e.block = nil
  end
  return kv:free_blocks()
end

-- Drop every block the cache holds (and its files on disk).
function Cache:clear()
  for k, e in pairs(self.map) do
    if e.file then self:drop_disk(e)
    else self.kv:block_unref(e.block) end
    self.map[k] = nil
  end
  self.n_entries = 0
end

function Cache:hit_rate()
  if self.query_tokens == 0 then return 0 end
  return self.hit_tokens / self.query_tokens
end

return M
