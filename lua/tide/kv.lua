-- tide.kv: the paged KV cache (src/kvcache.c) seen from Lua. The cache owns
-- blocks and block tables; this wrapper adds the step arrays (a ragged batch
-- of tokens of many sequences) and the layer tensors as Tensors.
--
--   local kv = require("tide.kv").new({ {n_kv_head=2, k_dim=32, v_dim=32}, ... },
--                                      { block = 16, blocks = 256, dtype = "f32" })
--   local s = kv:seq_new()
--   local batch, pos = kv:step({ s }, { 5 })   -- tide_batch_t*, i32 positions (n_tok)
local F = require "tide.ffi"
local T = require "tide.tensor"
local ffi, C = F.ffi, F.C
local err = F.err

local KV = {}
KV.__index = KV

local M = { KV = KV }

-- A view of a block-quantized cache tensor (byte offset, shape, byte strides:
-- the innermost dimension whole blocks), anchored to the cache.
local function block_view(self, t, offset, shape, stride)
  local sh, st = ffi.new("int64_t[4]"), ffi.new("int64_t[4]")
  for i = 1, #shape do sh[i - 1], st[i - 1] = shape[i], stride[i] end
  local out = ffi.new("tide_tensor_t*[1]")
  if C.tide_tensor_view(t._p, offset, #shape, sh, st, out, err) ~= 0 then return nil, F.errmsg() end
  return setmetatable({ _p = ffi.gc(out[0], C.tide_tensor_release), _own = true, _keep = self }, T.Tensor)
end

-- The MLA views of a q8_0 latent cache (rows of kvl + dr values, both whole
-- 32-value blocks), under the names nn.MLA's cache_views uses (kv.mla_views):
-- full row, latent part, rope part, rows as a 2-D table, V = the latent part.
local function mla_block_views(self, l, kvl)
  local k, lo = self.k[l], self.layouts[l]
  local D, nb, bs = lo.k_dim, self.n_blocks, self.block_size
  local dr, dt = D - kvl, k._p.dtype -- both whole blocks (checked in M.new)
  local rb = tonumber(C.tide_dtype_row_bytes(dt, D))
  local lb = tonumber(C.tide_dtype_row_bytes(dt, kvl))
  local blk = tonumber(C.tide_dtype_traits(dt).block_bytes)
  local v, e = {}, nil
  v.full = k
  v.lat, e = block_view(self, k, 0, { nb, bs, 1, kvl }, { bs * rb, rb, rb, blk })
  if not v.lat then return nil, e end
  v.pe, e = block_view(self, k, lb, { nb, bs, 1, dr }, { bs * rb, rb, rb, blk })
  if not v.pe then return nil, e end
  v.flat, e = block_view(self, k, 0, { nb * bs, D }, { rb, blk })
  if not v.flat then return nil, e end
  v.v = v.lat
  return v
end

-- layouts: one {n_kv_head, k_dim, v_dim} per layer (v_dim 0: V is read from
-- the first `v_from_k` columns of K, MLA). opts: block (16), blocks (count),
-- dtype ("f32" | "bf16" | "f16" | "f8_e4m3" | "q8_0"; see src/kvcache.h:
-- q8_0 is GGML's block format, rows must be whole 32-value blocks; f8_e4m3
-- has no scale).
function M.new(layouts, opts)
  opts = opts or {}
  local n = #layouts
  if n == 0 then return nil, "kv: no layers" end
  local lo = ffi.new("tide_kv_layout_t[?]", n)
  for i, l in ipairs(layouts) do
    lo[i - 1].n_kv_head = l.n_kv_head
    lo[i - 1].k_dim = l.k_dim
    lo[i - 1].v_dim = l.v_dim or 0
  end
  local block = opts.block or 16
  local blocks = opts.blocks or 256
  local okd, dt = pcall(T.dtype_id, opts.dtype or "f32")
  if not okd then return nil, "kv: unknown dtype '" .. tostring(opts.dtype) .. "'" end
  local qk = C.tide_dtype_traits(dt) ~= nil and C.tide_dtype_traits(dt).block_size or 1
  for _, l in ipairs(layouts) do
    local vf = l.v_from_k
    if qk > 1 and vf and (vf % qk ~= 0 or (l.k_dim - vf) % qk ~= 0) then
      return nil, string.format("kv: a %s cache needs the MLA latent (kv_lora_rank %d) and rope (qk_rope_head_dim %d) "
        .. "widths to be multiples of %d; use kv dtype f8_e4m3, bf16 or f16 for this model", tostring(opts.dtype), vf,
        l.k_dim - vf, qk)
    end
  end
  local out = ffi.new("tide_kvcache_t*[1]")
  if C.tide_kvcache_new(n, lo, block, blocks, dt, out, err) ~= 0 then return nil, F.errmsg() end
  local self = setmetatable({
    _c = ffi.gc(out[0], C.tide_kvcache_free),
    n_layer = n,
    block_size = block,
    n_blocks = blocks,
    dtype = T.dtype_names[dt],
    layouts = layouts,
    k = {}, v = {},
    cap_tok = 0, cap_table = 0,
    batch = ffi.new("tide_batch_t"),
    seqs_arr = ffi.new("int32_t[?]", 64), n_new_arr = ffi.new("int32_t[?]", 64), cap_seq = 64,
  }, KV)
  for l = 1, n do
    -- borrowed from the cache: anchor the cache in the Tensor
    local kp = C.tide_kvcache_k(self._c, l - 1)
    self.k[l] = setmetatable({ _p = kp, _keep = self }, T.Tensor)
    local vp = C.tide_kvcache_v(self._c, l - 1)
    if vp ~= nil then
      self.v[l] = setmetatable({ _p = vp, _keep = self }, T.Tensor)
    else
      local vf = layouts[l].v_from_k
      if vf and C.tide_dtype_traits(dt).block_size > 1 then
        local v, e = mla_block_views(self, l, vf)
        if not v then return nil, e end
        self.mla_views = self.mla_views or {}
        self.mla_views[l] = v
        self.v[l] = v.v
      elseif vf then
        local k = self.k[l]
        local kd = layouts[l].k_dim * layouts[l].n_kv_head
        self.v[l] = k:as_strided({ blocks, block, layouts[l].n_kv_head, vf },
          { block * kd, kd, layouts[l].k_dim, 1 }, 0)
      end
    end
  end
  return self
end

function KV:free_blocks() return C.tide_kvcache_free_blocks(self._c) end
function KV:bytes_per_token(layer) return tonumber(C.tide_kvcache_bytes_per_token(self._c, layer and layer - 1 or -1)) end
function KV:nbytes() return tonumber(C.tide_kvcache_nbytes(self._c)) end
function KV:seq_count() return C.tide_kvcache_seq_count(self._c) end

function KV:seq_new()
  local s = ffi.new("int32_t[1]")
  if C.tide_kvcache_seq_new(self._c, s, err) ~= 0 then return nil, F.errmsg() end
  return s[0]
end

function KV:seq_fork(src)
  local s = ffi.new("int32_t[1]")
  if C.tide_kvcache_seq_fork(self._c, src, s, err) ~= 0 then return nil, F.errmsg() end
  return s[0]
end

function KV:seq_free(seq)
  if C.tide_kvcache_seq_free(self._c, seq, err) ~= 0 then return nil, F.errmsg() end
  return true
end

function KV:seq_len(seq) return C.tide_kvcache_seq_len(self._c, seq) end

function KV:seq_truncate(seq, len)
  if C.tide_kvcache_seq_truncate(self._c, seq, len, err) ~= 0 then return nil, F.errmsg() end
  return true
end

local function grow(self, n_tok, n_table)
  if n_tok > self.cap_tok then
    local cap = math.max(n_tok, self.cap_tok * 2, 64)
    self.tok_seq = T.zeros({ cap }, "i32")
    self.tok_pos = T.zeros({ cap }, "i32")
    self.cap_tok = cap
  end
  if n_table > self.cap_table then
    local cap = math.max(n_table, self.cap_table * 2, 256)
    self.table = T.zeros({ cap }, "i32")
    self.cap_table = cap
  end
end

-- Plan one step: n_new[i] tokens appended to seqs[i]. Returns the batch
-- (tide_batch_t, valid until the next step) and the positions as an i32
-- tensor (n_tok), or nil, err (nothing changed then).
function KV:step(seqs, n_new)
  local ns = #seqs
  if ns > self.cap_seq then
    self.cap_seq = ns * 2
    self.seqs_arr = ffi.new("int32_t[?]", self.cap_seq)
    self.n_new_arr = ffi.new("int32_t[?]", self.cap_seq)
  end
  local n_tok, max_blocks = 0, 1
  local bs = self.block_size
  for i = 1, ns do
    self.seqs_arr[i - 1] = seqs[i]
    self.n_new_arr[i - 1] = n_new[i]
    n_tok = n_tok + n_new[i]
    local len = C.tide_kvcache_seq_len(self._c, seqs[i])
    local nb = math.ceil((math.max(len, 0) + n_new[i]) / bs)
    if nb > max_blocks then max_blocks = nb end
  end
  grow(self, n_tok, max_blocks * ns)
  local rc = C.tide_kvcache_step(self._c, ns, self.seqs_arr, self.n_new_arr, self.batch,
    ffi.cast("int32_t*", self.tok_seq._p.data), ffi.cast("int32_t*", self.tok_pos._p.data), self.cap_tok,
    ffi.cast("int32_t*", self.table._p.data), self.cap_table, err)
  if rc ~= 0 then return nil, F.errmsg() end
  local pos = self.pos_view
  if pos == nil or tonumber(pos._p.shape[0]) ~= n_tok or pos._keep ~= self.tok_pos then
    pos = T.lua_tensor(C.TIDE_DTYPE_I32, self.tok_pos._p.data, self.tok_pos, 1, n_tok)
    self.pos_view = pos
  end
  return self.batch, pos
end

-- ---- prefix caching and views (engine) ----------------------------------------

function KV:block_refs(b) return C.tide_kvcache_block_refs(self._c, b) end

function KV:block_ref(b)
  if C.tide_kvcache_block_ref(self._c, b, err) ~= 0 then return nil, F.errmsg() end
  return true
end

function KV:block_unref(b)
  if C.tide_kvcache_block_unref(self._c, b, err) ~= 0 then return nil, F.errmsg() end
  return true
end

-- The sequence's block ids (Lua list) or nil, err.
function KV:seq_table(seq)
  local tp, np = ffi.new("const int32_t*[1]"), ffi.new("int32_t[1]")
  if C.tide_kvcache_seq_table(self._c, seq, tp, np, err) ~= 0 then return nil, F.errmsg() end
  local t = {}
  for i = 0, np[0] - 1 do t[i + 1] = tp[0][i] end
  return t
end

-- Give the empty sequence `seq` the blocks (list) and length len.
function KV:seq_adopt(seq, blocks, len)
  local a = ffi.new("int32_t[?]", #blocks)
  for i = 1, #blocks do a[i - 1] = blocks[i] end
  if C.tide_kvcache_seq_adopt(self._c, seq, a, #blocks, len, err) ~= 0 then return nil, F.errmsg() end
  return true
end

-- A batch over stored tokens: positions start[i] .. start[i] + n[i] - 1 of
-- seqs[i]; returns the batch (tide_batch_t, in its own arrays, valid until the
-- next view) and the positions (i32 tensor), or nil, err.
function KV:view(seqs, start, n)
  local ns = #seqs
  local n_tok, max_blocks = 0, 1
  for i = 1, ns do
    n_tok = n_tok + n[i]
    local nb = math.ceil(math.max(C.tide_kvcache_seq_len(self._c, seqs[i]), 0) / self.block_size)
    if nb > max_blocks then max_blocks = nb end
  end
  local v = self.vw
  if not v or v.cap_tok < n_tok or v.cap_table < max_blocks * ns or v.cap_seq < ns then
    local ct, cb, cs = math.max(n_tok, 64), math.max(max_blocks * ns, 256), math.max(ns, 16)
    v = { cap_tok = ct, cap_table = cb, cap_seq = cs, seq = T.zeros({ ct }, "i32"), pos = T.zeros({ ct }, "i32"),
      table = T.zeros({ cb }, "i32"), s = ffi.new("int32_t[?]", cs), st = ffi.new("int32_t[?]", cs),
      n = ffi.new("int32_t[?]", cs), batch = ffi.new("tide_batch_t") }
    self.vw = v
  end
  for i = 1, ns do v.s[i - 1], v.st[i - 1], v.n[i - 1] = seqs[i], start[i], n[i] end
  local rc = C.tide_kvcache_view(self._c, ns, v.s, v.st, v.n, v.batch, ffi.cast("int32_t*", v.seq._p.data),
    ffi.cast("int32_t*", v.pos._p.data), v.cap_tok, ffi.cast("int32_t*", v.table._p.data), v.cap_table, err)
  if rc ~= 0 then return nil, F.errmsg() end
  return v.batch, T.lua_tensor(C.TIDE_DTYPE_I32, v.pos._p.data, v.pos, 1, n_tok)
end

return M
