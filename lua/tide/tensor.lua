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

local function wrap(p)
  return setmetatable({ _p = ffi.gc(p, C.tide_tensor_release) }, Tensor)
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
    ffi.gc(p, nil)
    C.tide_tensor_release(p)
    self._p = nil
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
  local a, n = shape_array(shape)
  -- one dimension may be -1 (inferred)
  local known, neg = 1, nil
  for i = 1, n do if shape[i] == -1 then neg = i else known = known * shape[i] end end
  if neg then a[neg - 1] = math.floor(tonumber(C.tide_tensor_numel(p)) / known) end
  local out = ptr_out()
  if C.tide_tensor_reshape(p, n, a, out, err) ~= 0 then F.raise(2) end
  return wrap(out[0])
end
Tensor.view = Tensor.reshape

function Tensor:narrow(dim, start, len)
  local out = ptr_out()
  if C.tide_tensor_narrow(ptr(self), dim - 1, start - 1, len, out, err) ~= 0 then F.raise(2) end
  return wrap(out[0])
end

function Tensor:transpose(d0, d1)
  local p = ptr(self)
  d0, d1 = d0 or p.ndim - 1, d1 or p.ndim
  local out = ptr_out()
  if C.tide_tensor_transpose(p, d0 - 1, d1 - 1, out, err) ~= 0 then F.raise(2) end
  return wrap(out[0])
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
}
return M
