-- tide.tensor: the Lua face of tide_tensor_t. A Tensor is a small table
-- holding the cdata pointer (released by the GC or by :free(), safe twice).
-- Ops run on the default pool (tide.set_threads) unless one is given.
local F = require "tide.ffi"
local ffi, C = F.ffi, F.C

local Tensor = {}
Tensor.__index = Tensor

local err = F.err
local int64_4 = ffi.typeof("int64_t[4]")
local ptr_out = ffi.typeof("tide_tensor_t*[1]")

local DTYPES = {}     -- name -> id
local DTYPE_NAMES = {} -- id -> name
for i = 0, C.TIDE_DTYPE_COUNT - 1 do
  local tr = C.tide_dtype_traits(i)
  local name = ffi.string(tr.name)
  DTYPES[name] = i
  DTYPE_NAMES[i] = name
end

local function dtype_id(d)
  if d == nil then return C.TIDE_DTYPE_F32 end
  if type(d) == "number" then return d end
  local id = C.tide_dtype_from_name(d)
  if id < 0 then error("unknown dtype '" .. tostring(d) .. "'", 3) end
  return id
end

-- Pool used by ops when none is given: created lazily.
local state = { pool = nil, threads = nil }

local function default_pool()
  if state.pool == nil then
    local n = tonumber(os.getenv("TIDE_THREADS") or "") or C.tide_pool_cpu_count()
    local p = ffi.new("tide_pool_t*[1]")
    if C.tide_pool_new(n, p, err) ~= 0 then F.raise(2) end
    state.pool = ffi.gc(p[0], C.tide_pool_free)
  end
  return state.pool
end

local function set_threads(n)
  assert(type(n) == "number" and n >= 1, "set_threads: expects a positive number")
  if C.tide_pool_set_threads(default_pool(), n, err) ~= 0 then return nil, F.errmsg() end
  return true
end

-- A Tensor owns a C tensor (released by the GC or :free()), or holds a
-- tide_tensor_t struct built in Lua over memory kept alive by `_keep`
-- (workspace scratch and views of it: no C allocation on the hot path).
local function wrap(p, keep)
  return setmetatable({ _p = ffi.gc(p, C.tide_tensor_release), _own = true, _keep = keep }, Tensor)
end

local function ptr(t, level)
  local p = rawget(t, "_p")
  if p == nil then error("tensor was freed", (level or 2) + 1) end
  return p
end

local function shape_array(shape)
  local n = #shape
  if n > 4 then error("at most 4 dimensions, got " .. n, 3) end
  local a = int64_4()
  for i = 1, n do
    local v = shape[i]
    if type(v) ~= "number" or v < 0 or v ~= math.floor(v) then
      error("bad dimension " .. tostring(v), 3)
    end
    a[i - 1] = v
  end
  return a, n
end

-- tide.empty(shape, dtype): new zero-filled tensor (shape is a table of sizes).
local function zeros(shape, dtype)
  local a, n = shape_array(shape)
  local out = ptr_out()
  if C.tide_tensor_new(dtype_id(dtype), n, a, out, err) ~= 0 then F.raise(2) end
  return wrap(out[0])
end

-- Shape of a nested table of numbers; errors on ragged input.
local function nested_shape(data, shape, depth)
  shape = shape or {}
  depth = depth or 1
  if type(data) == "table" then
    local n = #data
    if shape[depth] == nil then shape[depth] = n
    elseif shape[depth] ~= n then error("ragged nested table at depth " .. depth, 4) end
    for i = 1, n do nested_shape(data[i], shape, depth + 1) end
    if n == 0 and depth > 4 then error("too deep", 4) end
  elseif type(data) ~= "number" and type(data) ~= "boolean" then
    error("tensor data must be numbers, got " .. type(data), 4)
  end
  return shape
end

-- tide.tensor(nested_table, dtype) or tide.tensor(nested_table, {dtype=...}).
local function tensor(data, opts)
  local dtype = type(opts) == "table" and opts.dtype or opts
  if type(data) == "number" then data = { data } end
  if type(data) ~= "table" then error("tide.tensor expects a (nested) table of numbers", 2) end
  local shape = nested_shape(data)
  if #shape > 4 then error("at most 4 dimensions", 2) end
  local t = zeros(shape, C.TIDE_DTYPE_F32)
  local p = t._p
  local d = ffi.cast("float*", p.data)
  local k = 0
  local function fill(x)
    if type(x) == "table" then
      for i = 1, #x do fill(x[i]) end
    else
      d[k] = x == true and 1 or (x == false and 0 or x)
      k = k + 1
    end
  end
  fill(data)
  local id = dtype_id(dtype)
  if id ~= C.TIDE_DTYPE_F32 then return t:to(id) end
  return t
end

-- tide.from_pointer is not offered: tensors own or share storage only.

function Tensor:shape()
  local p = ptr(self)
  local s = {}
  for i = 0, p.ndim - 1 do s[i + 1] = tonumber(p.shape[i]) end
  return s
end

function Tensor:size(dim)
  local p = ptr(self)
  if dim < 0 then dim = p.ndim + dim + 1 end
  if dim < 1 or dim > p.ndim then error("dimension " .. dim .. " out of range", 2) end
  return tonumber(p.shape[dim - 1])
end

function Tensor:ndim() return ptr(self).ndim end
function Tensor:dtype() return DTYPE_NAMES[ptr(self).dtype] end
function Tensor:numel() return tonumber(C.tide_tensor_numel(ptr(self))) end
function Tensor:nbytes() return tonumber(C.tide_tensor_nbytes(ptr(self))) end
function Tensor:is_contiguous() return C.tide_tensor_is_contiguous(ptr(self)) == 1 end
function Tensor:cdata() return ptr(self) end

-- Explicit release; safe to call twice.
function Tensor:free()
  local p = rawget(self, "_p")
  if p ~= nil then
    if rawget(self, "_own") then
      ffi.gc(p, nil)
      C.tide_tensor_release(p)
    end
    self._p = nil
    self._keep = nil
  end
end

-- Element at 1-based indices (one per dimension), or flat 1-based index.
function Tensor:get(...)
  local p = ptr(self)
  local n = select("#", ...)
  local flat = 0
  if n == 1 and p.ndim ~= 1 then
    flat = (...) - 1
  else
    if n ~= p.ndim then error("get: expected " .. p.ndim .. " indices, got " .. n, 2) end
    for i = 1, n do
      local idx = select(i, ...)
      local dim = tonumber(p.shape[i - 1])
      if idx < 1 or idx > dim then error("get: index " .. idx .. " out of range 1.." .. dim, 2) end
      flat = flat * dim + (idx - 1)
    end
  end
  if flat < 0 or flat >= C.tide_tensor_numel(p) then error("get: index out of range", 2) end
  return tonumber(C.tide_tensor_get(p, flat))
end

function Tensor:set(...)
  local p = ptr(self)
  local n = select("#", ...)
  local v = select(n, ...)
  local flat = 0
  for i = 1, n - 1 do
    local idx = select(i, ...)
    local dim = tonumber(p.shape[i - 1])
    if idx < 1 or idx > dim then error("set: index " .. idx .. " out of range 1.." .. dim, 2) end
    flat = flat * dim + (idx - 1)
  end
  if n - 1 ~= p.ndim then
    if n == 2 then flat = select(1, ...) - 1 else error("set: expected " .. p.ndim .. " indices", 2) end
  end
  if C.tide_tensor_set(p, flat, v, err) ~= 0 then F.raise(2) end
  return self
end

-- Nested Lua tables of numbers (float32 values, block scales applied).
function Tensor:totable()
  local p = ptr(self)
  local n = tonumber(C.tide_tensor_numel(p))
  local flat
  local tr = C.tide_dtype_traits(p.dtype)
  if p.dtype == C.TIDE_DTYPE_I32 or p.dtype == C.TIDE_DTYPE_I64 or tr.to_float == nil then
    flat = function(i) return tonumber(C.tide_tensor_get(p, i)) end
  else
    local buf = ffi.new("float[?]", math.max(n, 1))
    if C.tide_tensor_to_f32(p, buf, err) ~= 0 then F.raise(2) end
    flat = function(i) return tonumber(buf[i]) end
  end
  if p.ndim == 0 then return flat(0) end
  local k = 0
  local function build(d)
    local t = {}
    local dim = tonumber(p.shape[d])
    for i = 1, dim do
      if d == p.ndim - 1 then t[i] = flat(k); k = k + 1
      else t[i] = build(d + 1) end
    end
    return t
  end
  return build(0)
end

-- Flat list of all values.
function Tensor:tolist()
  local p = ptr(self)
  local n = tonumber(C.tide_tensor_numel(p))
  local buf = ffi.new("float[?]", math.max(n, 1))
  if C.tide_tensor_to_f32(p, buf, err) ~= 0 then F.raise(2) end
  local t = {}
  for i = 0, n - 1 do t[i + 1] = tonumber(buf[i]) end
  return t
end

local function fmt_num(v)
  if v ~= v then return "nan" end
  if v == math.floor(v) and math.abs(v) < 1e15 then return string.format("%d", v) end
  return string.format("%.4g", v)
end

function Tensor:__tostring()
  local p = rawget(self, "_p")
  if p == nil then return "tensor(freed)" end
  local shape = table.concat(self:shape(), "x")
  local n = tonumber(C.tide_tensor_numel(p))
  local parts = {}
  local limit = 6
  if p.ndim == 2 and n <= 64 then
    local rows = {}
    local t = self:totable()
    for i = 1, #t do
      local r = {}
      for j = 1, #t[i] do r[j] = fmt_num(t[i][j]) end
      rows[i] = "  [" .. table.concat(r, ", ") .. "]"
    end
    return string.format("tensor(%s, %s)\n%s", shape == "" and "scalar" or shape, self:dtype(),
      table.concat(rows, "\n"))
  end
  for i = 0, math.min(n, limit) - 1 do parts[#parts + 1] = fmt_num(tonumber(C.tide_tensor_get(p, i))) end
  if n > limit then parts[#parts + 1] = "..." end
  return string.format("tensor(%s, %s) [%s]", shape == "" and "scalar" or shape, self:dtype(), table.concat(parts, ", "))
end

-- ---- views -------------------------------------------------------------

function Tensor:reshape(shape, ...)
  if type(shape) == "number" then shape = { shape, ... } end
  local p = ptr(self)
  -- one dimension may be -1 (inferred)
  local known, neg = 1, nil
  for i = 1, #shape do if shape[i] == -1 then neg = i else known = known * shape[i] end end
  if neg then
    local s = {}
    for i = 1, #shape do s[i] = shape[i] end
    s[neg] = known > 0 and math.floor(tonumber(C.tide_tensor_numel(p)) / known) or 0
    shape = s
  end
  local a, n = shape_array(shape)
  local out = ptr_out()
  if C.tide_tensor_reshape(p, n, a, out, err) ~= 0 then F.raise(2) end
  return wrap(out[0], self)
end
Tensor.view = Tensor.reshape

function Tensor:narrow(dim, start, len)
  local out = ptr_out()
  if C.tide_tensor_narrow(ptr(self), dim - 1, start - 1, len, out, err) ~= 0 then F.raise(2) end
  return wrap(out[0], self)
end

function Tensor:transpose(d0, d1)
  local p = ptr(self)
  d0, d1 = d0 or p.ndim - 1, d1 or p.ndim
  local out = ptr_out()
  if C.tide_tensor_transpose(p, d0 - 1, d1 - 1, out, err) ~= 0 then F.raise(2) end
  return wrap(out[0], self)
end
function Tensor:t() return self:transpose(1, 2) end

-- Contiguous copy, optionally converted to dtype.
function Tensor:copy(dtype)
  local p = ptr(self)
  local out = ptr_out()
  if C.tide_tensor_copy(p, dtype and dtype_id(dtype) or p.dtype, out, err) ~= 0 then F.raise(2) end
  return wrap(out[0])
end
function Tensor:to(dtype)
  if dtype_id(dtype) == ptr(self).dtype and ptr(self).scale == nil then return self end
  return self:copy(dtype)
end
function Tensor:contiguous()
  if self:is_contiguous() then return self end
  return self:copy()
end

-- ---- ops ----------------------------------------------------------------

local function new_like_shape(shape) return zeros(shape, C.TIDE_DTYPE_F32) end

local function check(rc, level)
  if rc ~= 0 then F.raise((level or 2) + 1) end
end

local function as_tensor(x)
  if getmetatable(x) == Tensor then return x end
  if type(x) == "number" then return tensor({ x }) end
  if type(x) == "table" then return tensor(x) end
  error("expected a tensor or number, got " .. type(x), 3)
end

-- a @ b (b is (K, N)), or with trans_b, a @ b^T (b is (N, K), nn.Linear layout).
function Tensor:matmul(b, trans_b, pool)
  local a = ptr(self)
  b = as_tensor(b)
  local bp = ptr(b)
  if a.ndim ~= 2 or bp.ndim ~= 2 then error("matmul: expects 2-D tensors", 2) end
  local n = trans_b and bp.shape[0] or bp.shape[1]
  local out = new_like_shape({ tonumber(a.shape[0]), tonumber(n) })
  check(C.tide_op_matmul(pool or default_pool(), out._p, a, bp, trans_b and 1 or 0, err))
  return out
end
-- x (M, K) @ w^T with w (N, K): the nn.Linear convention.
function Tensor:linear(w, pool) return self:matmul(w, true, pool) end

local function binop(cfun, name)
  return function(a, b)
    if type(a) == "number" then a, b = b, a end -- commutative ops only
    local ta = as_tensor(a)
    local tb = as_tensor(b)
    local out = new_like_shape(ta:shape())
    check(cfun(default_pool(), out._p, ptr(ta), ptr(tb), err))
    return out
  end
end
Tensor.add = binop(C.tide_op_add, "add")
Tensor.mul = binop(C.tide_op_mul, "mul")
Tensor.__add = Tensor.add
Tensor.__mul = function(a, b)
  if type(b) == "number" then return a:scale(b) end
  if type(a) == "number" then return b:scale(a) end
  return Tensor.mul(a, b)
end
function Tensor:scale(s)
  local out = new_like_shape(self:shape())
  check(C.tide_op_scale(default_pool(), out._p, ptr(self), s, err))
  return out
end
Tensor.__sub = function(a, b)
  if type(b) == "number" then return Tensor.add(a, -b) end
  return Tensor.add(a, as_tensor(b):scale(-1))
end
Tensor.__unm = function(a) return a:scale(-1) end
Tensor.__div = function(a, b)
  if type(b) ~= "number" then error("division by a tensor is not supported", 2) end
  return a:scale(1 / b)
end
Tensor.__len = function(a) return a:size(1) end

local function unop(cfun)
  return function(self)
    local out = new_like_shape(self:shape())
    check(cfun(default_pool(), out._p, ptr(self), err), 2)
    return out
  end
end
Tensor.silu = unop(C.tide_op_silu)
Tensor.sigmoid = unop(C.tide_op_sigmoid)

function Tensor:swiglu(up)
  local out = new_like_shape(self:shape())
  check(C.tide_op_swiglu(default_pool(), out._p, ptr(self), ptr(up), err))
  return out
end

function Tensor:rmsnorm(w, eps)
  local out = new_like_shape(self:shape())
  check(C.tide_op_rmsnorm(default_pool(), out._p, ptr(self), ptr(w), eps or 1e-6, err))
  return out
end

function Tensor:softmax(scale)
  local out = new_like_shape(self:shape())
  check(C.tide_op_softmax(default_pool(), out._p, ptr(self), scale or 1.0, err))
  return out
end

-- k largest per row: values (M, k), indices (M, k) as 0-based i32.
function Tensor:topk(k)
  local p = ptr(self)
  local rows = p.ndim == 1 and 1 or tonumber(p.shape[0])
  local x = p.ndim == 1 and self:reshape({ 1, tonumber(p.shape[0]) }) or self
  local vals = zeros({ rows, k }, C.TIDE_DTYPE_F32)
  local idx = zeros({ rows, k }, C.TIDE_DTYPE_I32)
  check(C.tide_op_topk(default_pool(), vals._p, idx._p, ptr(x), k, err))
  return vals, idx
end

-- Rows of this (V, D) table at ids (a Lua table of 0-based ids or an i32 tensor).
function Tensor:get_rows(ids)
  if getmetatable(ids) ~= Tensor then
    local t = zeros({ #ids }, C.TIDE_DTYPE_I32)
    local d = ffi.cast("int32_t*", t._p.data)
    for i = 1, #ids do d[i - 1] = ids[i] end
    ids = t
  end
  local out = new_like_shape({ ids:numel(), self:size(-1) })
  check(C.tide_op_get_rows(default_pool(), out._p, ptr(self), ptr(ids), err))
  return out
end


-- ---- Lua-built tensors, scratch, and ops with output arguments ----------
-- The model code runs on these: outputs are preallocated (from a Workspace)
-- and views are tide_tensor_t structs built in Lua, so a decode step makes no
-- C allocation. Each op raises on failure (a failure here is a programming
-- error: shapes are checked by the model before it runs).

local tensor_t = ffi.typeof("tide_tensor_t")
local ELEM = {} -- dtype id -> bytes per element (scalar dtypes only)
for i = 0, C.TIDE_DTYPE_COUNT - 1 do
  local tr = C.tide_dtype_traits(i)
  if tr.block_size == 1 then ELEM[i] = tr.block_bytes end
end

-- A Tensor over a new struct: dtype id, shape {…}, element strides {…} (nil:
-- contiguous), data pointer; keep anchors the memory.
local function lua_tensor(dt, data, keep, nd, d0, d1, d2, d3, s0, s1, s2, s3)
  local p = tensor_t()
  local esz = ELEM[dt]
  p.data = data
  p.dtype = dt
  p.ndim = nd
  p.shape[0], p.shape[1], p.shape[2], p.shape[3] = d0 or 1, d1 or 1, d2 or 1, d3 or 1
  if s0 == nil then
    local st = esz
    for i = nd - 1, 0, -1 do p.stride[i] = st; st = st * p.shape[i] end
  else
    p.stride[0], p.stride[1], p.stride[2], p.stride[3] = s0 * esz, (s1 or 1) * esz, (s2 or 1) * esz, (s3 or 1) * esz
  end
  p.refcount = 1
  return setmetatable({ _p = p, _keep = keep }, Tensor)
end

-- View of this tensor (scalar dtypes): shape and strides in elements, offset
-- in elements from this tensor's first element. Bounds are the caller's duty.
function Tensor:as_strided(shape, stride, offset)
  local p = ptr(self)
  local esz = ELEM[p.dtype]
  if not esz then error("as_strided: block-quantized tensors are not supported", 2) end
  local data = ffi.cast("char*", p.data) + (offset or 0) * esz
  local nd = #shape
  if stride then
    return lua_tensor(p.dtype, data, self, nd, shape[1], shape[2], shape[3], shape[4], stride[1], stride[2], stride[3],
      stride[4])
  end
  return lua_tensor(p.dtype, data, self, nd, shape[1], shape[2], shape[3], shape[4])
end

-- Attach block scales (e.g. FP8 weight_scale_inv): one f32 per (br x bc) block.
function Tensor:set_scale(scale, br, bc)
  if C.tide_tensor_set_scale(ptr(self), ptr(scale), br or 128, bc or 128, err) ~= 0 then return nil, F.errmsg() end
  self._scale = scale
  return self
end

function Tensor:data_ptr(ct) return ffi.cast(ct or "float*", ptr(self).data) end

-- i32 tensor from a Lua list of integers (0-based ids).
local function from_ints(list, n)
  n = n or #list
  local t = zeros({ n }, C.TIDE_DTYPE_I32)
  local d = ffi.cast("int32_t*", t._p.data)
  for i = 1, n do d[i - 1] = list[i] end
  return t
end

-- Workspace: named scratch tensors reused across steps. ws:get(key, d0, d1,
-- d2, d3) returns a contiguous f32 tensor (ws:get_i32 for int32); the same key
-- with the same shape returns the same object, so a decode step allocates
-- nothing. Contents are not cleared.
local Workspace = {}
Workspace.__index = Workspace

-- x rounded to the nearest float32 (Lua numbers are doubles)
local f32buf = ffi.new("float[1]")
local function f32(x)
  f32buf[0] = x
  return f32buf[0]
end

-- The op tables by numerics (filled below, once `op` is defined).
local op_tables = {}

-- numerics: nil / "tide", or "ggml" (the model's ops take llama.cpp's arithmetic; see tide.load).
-- ws.op is the op table the modules call through: T.op, or for "ggml" T.op with matmul, rope,
-- swiglu and attention taking their _ggml versions.
local function workspace(numerics)
  return setmetatable({ slots = {}, views = {}, numerics = numerics, op = op_tables[numerics or "tide"] },
    Workspace)
end

local function ws_get(self, key, dt, d0, d1, d2, d3)
  d0, d1, d2, d3 = tonumber(d0), d1 and tonumber(d1), d2 and tonumber(d2), d3 and tonumber(d3)
  local slot = self.slots[key]
  -- the hot path (same key, same shape every step) compares plain Lua
  -- numbers kept in the slot, not the tensor's int64 fields
  if slot then
    if slot.dt == dt and slot.d0 == d0 and slot.d1 == d1 and slot.d2 == d2 and slot.d3 == d3 then return slot.t end
  else
    slot = { cap = 0 }
    self.slots[key] = slot
  end
  local nd = d3 and 4 or d2 and 3 or d1 and 2 or 1
  local bytes = d0 * (d1 or 1) * (d2 or 1) * (d3 or 1) * ELEM[dt]
  if bytes > slot.cap then
    local cap = math.max(bytes, math.floor(slot.cap * 1.5), 64)
    slot.buf = zeros({ cap }, C.TIDE_DTYPE_U8)
    slot.cap = cap
  end
  slot.t = lua_tensor(dt, slot.buf._p.data, slot.buf, nd, d0, d1, d2, d3)
  slot.dt, slot.d0, slot.d1, slot.d2, slot.d3 = dt, d0, d1, d2, d3
  return slot.t
end

function Workspace:get(key, d0, d1, d2, d3) return ws_get(self, key, C.TIDE_DTYPE_F32, d0, d1, d2, d3) end
function Workspace:get_i32(key, d0, d1, d2, d3) return ws_get(self, key, C.TIDE_DTYPE_I32, d0, d1, d2, d3) end
-- Reused view: ws:view(key, base, offset, d0, d1, d2, d3, s0, s1, s2, s3) is
-- base:as_strided({d0..}, {s0..} or contiguous, offset) (elements), built
-- into the same struct each time the key comes back (no allocation). The
-- previous view under that key is overwritten: use a key per call site.
local charp = ffi.typeof("char*")
function Workspace:view(key, base, off, d0, d1, d2, d3, s0, s1, s2, s3)
  local t = self.views[key]
  local bp = base._p
  if t == nil then
    t = setmetatable({ _p = tensor_t() }, Tensor)
    self.views[key] = t
  end
  local p = t._p
  t._keep = base
  local dt = bp.dtype
  local esz = ELEM[dt]
  p.data = ffi.cast(charp, bp.data) + off * esz
  p.dtype = dt
  p.refcount = 1
  local nd = d3 and 4 or d2 and 3 or d1 and 2 or 1
  p.ndim = nd
  local sh, st = p.shape, p.stride
  sh[0], sh[1], sh[2], sh[3] = d0, d1 or 1, d2 or 1, d3 or 1
  if s0 then
    st[0], st[1], st[2], st[3] = s0 * esz, (s1 or 1) * esz, (s2 or 1) * esz, (s3 or 1) * esz
  else
    local acc = esz
    for i = nd - 1, 0, -1 do st[i] = acc; acc = acc * sh[i] end
    for i = nd, 3 do st[i] = 0 end
  end
  return t
end

function Workspace:clear() self.slots = {} self.views = {} end
function Workspace:bytes()
  local n = 0
  for _, s in pairs(self.slots) do n = n + s.cap end
  return n
end

-- Zero a contiguous tensor.
local function fill_zero(t)
  local p = ptr(t)
  ffi.fill(p.data, C.tide_tensor_nbytes(p))
end

-- Ops with explicit outputs, on the default pool. `op` is a table so a
-- profiler can wrap its entries (tide.profile).
local op = {}
local function ck(rc) if rc ~= 0 then F.raise(2) end end
function op.matmul(out, a, b, trans_b)
  ck(C.tide_op_matmul(default_pool(), out._p, a._p, b._p, trans_b == false and 0 or 1, err))
  return out
end
-- One product per group (head): out (G, M, N), a (G, M, K), b (G, N, K) (or (G, K, N) with trans_b false).
-- llama.cpp's arithmetic, operation for operation (kernels/ggml_order.c; numerics = "ggml")
function op.matmul_ggml(out, a, b)
  ck(C.tide_op_matmul_ggml(default_pool(), out._p, a._p, b._p, err))
  return out
end
function op.rope_ggml(x, pos, cfg) ck(C.tide_op_rope_ggml(default_pool(), x._p, pos._p, cfg, err)) return x end
function op.swiglu_ggml(out, g, u) ck(C.tide_op_swiglu_ggml(default_pool(), out._p, g._p, u._p, err)) return out end
function op.matmul_heads(out, a, b, trans_b)
  ck(C.tide_op_matmul_heads(default_pool(), out._p, a._p, b._p, trans_b == false and 0 or 1, err))
  return out
end
-- The routed experts of an MoE layer: rows of expert e are [offsets[e], offsets[e+1]); w: 3 weights per expert.
function op.moe_experts(y, x, g, u, offsets, n_expert, w)
  ck(C.tide_op_moe_experts(default_pool(), y._p, x._p, g._p, u._p, offsets, n_expert, w, err))
  return y
end
function op.add(out, a, b) ck(C.tide_op_add(default_pool(), out._p, a._p, b._p, err)) return out end
function op.mul(out, a, b) ck(C.tide_op_mul(default_pool(), out._p, a._p, b._p, err)) return out end
function op.scale(out, a, s) ck(C.tide_op_scale(default_pool(), out._p, a._p, s, err)) return out end
function op.silu(out, x) ck(C.tide_op_silu(default_pool(), out._p, x._p, err)) return out end
function op.sigmoid(out, x) ck(C.tide_op_sigmoid(default_pool(), out._p, x._p, err)) return out end
function op.swiglu(out, g, u) ck(C.tide_op_swiglu(default_pool(), out._p, g._p, u._p, err)) return out end
function op.convert(out, x) ck(C.tide_op_convert(default_pool(), out._p, x._p, err)) return out end
function op.rmsnorm(out, x, w, eps) ck(C.tide_op_rmsnorm(default_pool(), out._p, x._p, w._p, eps, err)) return out end
function op.softmax(out, x, s) ck(C.tide_op_softmax(default_pool(), out._p, x._p, s or 1.0, err)) return out end
function op.rope(x, pos, cfg) ck(C.tide_op_rope(default_pool(), x._p, pos._p, cfg, err)) return x end
function op.get_rows(out, tbl, ids) ck(C.tide_op_get_rows(default_pool(), out._p, tbl._p, ids._p, err)) return out end
function op.scatter_add(out, src, idx, w)
  ck(C.tide_op_scatter_add(default_pool(), out._p, src._p, idx._p, w and w._p or nil, err))
  return out
end
function op.topk(vals, idx, x, k) ck(C.tide_op_topk(default_pool(), vals._p, idx._p, x._p, k, err)) return vals, idx end
function op.kv_store(cache, src, batch) ck(C.tide_op_kv_store(default_pool(), cache._p, src._p, batch, err)) end
function op.attention(out, q, k, v, batch, s)
  ck(C.tide_op_attention(default_pool(), out._p, q._p, k._p, v._p, batch, s, err))
  return out
end
function op.attention_ggml(out, q, k, v, batch, s)
  ck(C.tide_op_attention_ggml(default_pool(), out._p, q._p, k._p, v._p, batch, s, err))
  return out
end
-- T.op with llama.cpp's arithmetic where ggml_order.c has it; looked up at call time, so a
-- profiler's wrappers of T.op entries apply
local op_ggml = setmetatable({
  matmul = function(out, a, b) return op.matmul_ggml(out, a, b) end,
  rope = function(x, pos, cfg) return op.rope_ggml(x, pos, cfg) end,
  swiglu = function(out, g, u) return op.swiglu_ggml(out, g, u) end,
  attention = function(out, q, k, v, batch, s) return op.attention_ggml(out, q, k, v, batch, s) end,
}, { __index = op })
op_tables.tide, op_tables.ggml = op, op_ggml

-- Per-op timing: profile(true) wraps every entry of `op` with a wall-clock
-- timer (CLOCK_MONOTONIC); profile_report() returns {name -> {calls, seconds}}
-- and resets; profile(false) restores the plain entries.
pcall(ffi.cdef, "struct timespec { long tv_sec; long tv_nsec; }; int clock_gettime(int, struct timespec *);")
local ts_now = ffi.new("struct timespec")
local function now()
  C.clock_gettime(1, ts_now)
  return tonumber(ts_now.tv_sec) + tonumber(ts_now.tv_nsec) * 1e-9
end
local plain_op, prof = nil, nil
local function profile(on)
  if on and not plain_op then
    plain_op, prof = {}, {}
    for name, f in pairs(op) do
      plain_op[name] = f
      local rec = { calls = 0, seconds = 0 }
      prof[name] = rec
      op[name] = function(...)
        local t0 = now()
        local a, b = f(...)
        rec.seconds = rec.seconds + (now() - t0)
        rec.calls = rec.calls + 1
        return a, b
      end
    end
  elseif not on and plain_op then
    for name, f in pairs(plain_op) do op[name] = f end
    plain_op, prof = nil, nil
  end
end
local function profile_report()
  local r = {}
  if prof then
    for name, rec in pairs(prof) do
      if rec.calls > 0 then r[name] = { calls = rec.calls, seconds = rec.seconds } end
      rec.calls, rec.seconds = 0, 0
    end
  end
  return r
end

local M = {
  Tensor = Tensor,
  tensor = tensor,
  zeros = zeros,
  wrap = wrap,
  ptr = ptr,
  dtype_id = dtype_id,
  dtypes = DTYPES,
  dtype_names = DTYPE_NAMES,
  default_pool = default_pool,
  set_threads = set_threads,
  is_tensor = function(x) return getmetatable(x) == Tensor end,
  lua_tensor = lua_tensor,
  from_ints = from_ints,
  workspace = workspace,
  f32 = f32,
  Workspace = Workspace,
  fill_zero = fill_zero,
  op = op,
  elem_bytes = ELEM,
  now = now,
  profile = profile,
  profile_report = profile_report,
}
return M
