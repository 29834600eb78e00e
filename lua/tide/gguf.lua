-- tide.gguf: read and write GGUF files (llama.cpp's format).
--   local g = assert(tide.gguf.open("model.gguf"))
--   g:metadata()["general.architecture"], g:tensors()["token_embd.weight"]
--   assert(tide.gguf.write("out.gguf", { ["general.architecture"] = "llama",
--     ["llama.block_count"] = tide.gguf.u32(4) }, { ["w"] = t }))
-- Plain Lua values get a type: string -> string, boolean -> bool, integer
-- number -> uint32 (int32 if negative, int64 when out of range), other
-- number -> float32, int64/uint64 cdata -> int64/uint64, table -> array of
-- the elements' type (integers -> int32, or int64 when out of range).
-- Use the helpers (u8 ... f64, str, bool, array) to choose the type.
local F = require "tide.ffi"
local T = require "tide.tensor"
local ffi, C = F.ffi, F.C

local M = {}
local err = F.err
local g_out = ffi.typeof("tide_gguf_t*[1]")
local w_out = ffi.typeof("tide_gguf_writer_t*[1]")
local t_out = ffi.typeof("tide_tensor_t*[1]")
local len_out = ffi.typeof("int64_t[1]")

-- GGUF value type ids and names.
local TYPE_NAMES = { [0] = "uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "bool", "string",
  "array", "uint64", "int64", "float64" }
local TYPE_IDS = {}
for id = 0, 12 do TYPE_IDS[TYPE_NAMES[id]] = id end
local ALIASES = { u8 = "uint8", i8 = "int8", u16 = "uint16", i16 = "int16", u32 = "uint32", i32 = "int32",
  f32 = "float32", u64 = "uint64", i64 = "int64", f64 = "float64", str = "string" }
M.types = TYPE_IDS

local function type_id(name, level)
  local id = TYPE_IDS[ALIASES[name] or name]
  if id == nil or id == TYPE_IDS.array then error("gguf: unknown value type '" .. tostring(name) .. "'", level + 1) end
  return id
end

local TWO53 = 2 ^ 53

-- ---- reading ------------------------------------------------------------------

local Gguf = {}
Gguf.__index = Gguf

function M.open(path)
  if type(path) ~= "string" then error("gguf.open: path must be a string", 2) end
  local out = g_out()
  if C.tide_gguf_open(path, out, err) ~= 0 then return nil, F.errmsg() end
  return setmetatable({ _p = ffi.gc(out[0], C.tide_gguf_close), path = path }, Gguf)
end

local function handle(self)
  local p = rawget(self, "_p")
  if p == nil then error("gguf file was closed", 3) end
  return p
end

local function value(p, i, j, t)
  if t == 8 then
    local len = len_out()
    local s = C.tide_gguf_kv_str(p, i, j, len)
    return ffi.string(s, len[0])
  elseif t == 7 then
    return C.tide_gguf_kv_int(p, i, j) ~= 0
  elseif t == 6 or t == 12 then
    return tonumber(C.tide_gguf_kv_float(p, i, j))
  elseif t == 10 then
    local v = C.tide_gguf_kv_uint(p, i, j)
    if v < TWO53 then return tonumber(v) end
    return v
  else
    local v = C.tide_gguf_kv_int(p, i, j)
    if v < TWO53 and v > -TWO53 then return tonumber(v) end
    return v
  end
end

function Gguf:version() return tonumber(C.tide_gguf_version(handle(self))) end
function Gguf:alignment() return tonumber(C.tide_gguf_alignment(handle(self))) end

-- Value of one key (arrays as Lua tables) and its type name ("uint32",
-- "array[string]", ...); nil when the key is absent.
function Gguf:get(key)
  local p = handle(self)
  local i = C.tide_gguf_kv_find(p, key)
  if i < 0 then return nil end
  local t = C.tide_gguf_kv_type(p, i)
  if t == 9 then
    local et = C.tide_gguf_kv_arr_type(p, i)
    local arr = {}
    for j = 0, tonumber(C.tide_gguf_kv_arr_len(p, i)) - 1 do arr[j + 1] = value(p, i, j, et) end
    return arr, "array[" .. TYPE_NAMES[et] .. "]"
  end
  return value(p, i, 0, t), TYPE_NAMES[t]
end

local function keys(self)
  local p = handle(self)
  local list = {}
  for i = 0, tonumber(C.tide_gguf_kv_count(p)) - 1 do list[#list + 1] = ffi.string(C.tide_gguf_kv_key(p, i)) end
  return list
end
Gguf.keys = keys -- in file order

-- key -> value (arrays as Lua tables; 64-bit integers beyond 2^53 as cdata).
function Gguf:metadata()
  local m = {}
  for _, k in ipairs(keys(self)) do m[k] = self:get(k) end
  return m
end

-- key -> type name ("uint32", "string", "array[int32]", ...).
function Gguf:metadata_types()
  local m = {}
  for _, k in ipairs(keys(self)) do m[k] = select(2, self:get(k)) end
  return m
end

local function tensor_at(self, i)
  local out = t_out()
  if C.tide_gguf_tensor(handle(self), i, out, err) ~= 0 then return nil, F.errmsg() end
  return T.wrap(out[0])
end

-- Tensor by name (a read-only view of the mapping), or nil, err.
function Gguf:tensor(name)
  local i = C.tide_gguf_tensor_find(handle(self), name)
  if i < 0 then return nil, self.path .. ": no tensor '" .. tostring(name) .. "'" end
  return tensor_at(self, i)
end

-- name -> Tensor for every tensor.
function Gguf:tensors()
  local p = handle(self)
  local r = {}
  for i = 0, tonumber(C.tide_gguf_tensor_count(p)) - 1 do
    local t, e = tensor_at(self, i)
    if not t then return nil, e end
    r[ffi.string(C.tide_gguf_tensor_name(p, i))] = t
  end
  return r
end

-- List of {name, dtype, ggml_type, shape, offset, bytes} in file order.
function Gguf:tensor_info()
  local p = handle(self)
  local list = {}
  for i = 0, tonumber(C.tide_gguf_tensor_count(p)) - 1 do
    local t, e = tensor_at(self, i)
    if not t then return nil, e end
    list[#list + 1] = {
      name = ffi.string(C.tide_gguf_tensor_name(p, i)),
      dtype = t:dtype(),
      ggml_type = tonumber(C.tide_gguf_tensor_ggml_type(p, i)),
      shape = t:shape(),
      offset = tonumber(C.tide_gguf_data_offset(p) + C.tide_gguf_tensor_offset(p, i)),
      bytes = tonumber(C.tide_gguf_tensor_nbytes(p, i)),
    }
    t:free()
  end
  return list
end

function Gguf:close()
  local p = rawget(self, "_p")
  if p ~= nil then
    ffi.gc(p, nil)
    C.tide_gguf_close(p)
    self._p = nil
  end
end

-- ---- typed values for writing ------------------------------------------------

local Typed = {}
Typed.__index = Typed
Typed.__tostring = function(v) return "gguf." .. v.type .. "(" .. tostring(v.value) .. ")" end

local function typed(tname)
  local full = ALIASES[tname] or tname
  return function(v) return setmetatable({ type = full, value = v }, Typed) end
end
for _, n in ipairs({ "u8", "i8", "u16", "i16", "u32", "i32", "f32", "u64", "i64", "f64", "bool", "str" }) do
  M[n] = typed(n)
end
M.string = M.str

-- tide.gguf.array("i32", {1, 2, 3})
function M.array(elem, list)
  type_id(elem, 2)
  if type(list) ~= "table" then error("gguf.array: expects a type and a table", 2) end
  return setmetatable({ type = "array", elem = ALIASES[elem] or elem, value = list }, Typed)
end

local function is_int(v) return v == math.floor(v) and v > -math.huge and v < math.huge end

local function scalar_type(v, level)
  local tv = type(v)
  if tv == "string" then return "string" end
  if tv == "boolean" then return "bool" end
  if tv == "number" then
    if not is_int(v) then return "float32" end
    if v >= 0 and v <= 4294967295 then return "uint32" end
    if v < 0 and v >= -2147483648 then return "int32" end
    if v >= -2 ^ 63 and v < 2 ^ 63 then return "int64" end
    return v > 0 and "uint64" or "float64"
  end
  if tv == "cdata" then
    if ffi.istype("uint64_t", v) then return "uint64" end
    if ffi.istype("int64_t", v) then return "int64" end
  end
  error("gguf.write: cannot store a " .. tv .. " as a GGUF value", level + 1)
end

local function array_type(list, level)
  local n = #list
  if n == 0 then error("gguf.write: empty array: give its type with tide.gguf.array(type, {})", level + 1) end
  local kind = type(list[1])
  local function mixed(v) error("gguf.write: array mixes " .. kind .. " and " .. type(v) .. " values", level + 2) end
  if kind == "string" or kind == "boolean" then
    for i = 2, n do if type(list[i]) ~= kind then mixed(list[i]) end end
    return kind == "string" and "string" or "bool"
  end
  local all_int, wide, lo, hi = true, false, 0, 0
  for i = 1, n do
    local v = list[i]
    if type(v) == "number" then
      if is_int(v) then lo, hi = math.min(lo, v), math.max(hi, v) else all_int = false end
    elseif type(v) == "cdata" and (ffi.istype("int64_t", v) or ffi.istype("uint64_t", v)) then
      wide = true
    else
      mixed(v)
    end
  end
  if not all_int then
    if wide then error("gguf.write: array mixes 64-bit integers and fractions", level + 1) end
    return "float32"
  end
  if not wide and lo >= -2147483648 and hi <= 2147483647 then return "int32" end
  return "int64"
end

local FLOAT = { float32 = true, float64 = true }

local function check(rc, level)
  if rc ~= 0 then error(F.errmsg(), level + 1) end
end

local function to_int64(v, level)
  if type(v) == "boolean" then return v and 1 or 0 end
  if type(v) == "number" then
    if not is_int(v) then error("gguf.write: " .. v .. " is not an integer", level + 1) end
    return v
  end
  if type(v) == "cdata" then return v end
  error("gguf.write: expected an integer, got " .. type(v), level + 1)
end

local function add_kv(w, key, v, level)
  local tname, val, elem
  if getmetatable(v) == Typed then
    tname, val, elem = v.type, v.value, v.elem
  elseif type(v) == "table" then
    tname, val, elem = "array", v, array_type(v, level + 1)
  else
    tname, val = scalar_type(v, level + 1), v
  end
  if tname == "array" then
    local et = type_id(elem, level + 1)
    local n = #val
    if elem == "string" then
      local ptrs, lens = ffi.new("const char*[?]", math.max(n, 1)), ffi.new("int64_t[?]", math.max(n, 1))
      for i = 1, n do
        local s = val[i]
        if type(s) ~= "string" then error("gguf.write: '" .. key .. "': element " .. i .. " is not a string", level + 1) end
        ptrs[i - 1], lens[i - 1] = s, #s
      end
      check(C.tide_gguf_writer_kv_arr_str(w, key, ptrs, lens, n, err), level + 1)
    elseif FLOAT[elem] then
      local a = ffi.new("double[?]", math.max(n, 1))
      for i = 1, n do
        if type(val[i]) ~= "number" then error("gguf.write: '" .. key .. "': element " .. i .. " is not a number", level + 1) end
        a[i - 1] = val[i]
      end
      check(C.tide_gguf_writer_kv_arr_float(w, key, et, a, n, err), level + 1)
    else
      local a = ffi.new("int64_t[?]", math.max(n, 1))
      for i = 1, n do a[i - 1] = to_int64(val[i], level + 1) end
      check(C.tide_gguf_writer_kv_arr_int(w, key, et, a, n, err), level + 1)
    end
    return
  end
  local t = type_id(tname, level + 1)
  if tname == "string" then
    if type(val) ~= "string" then error("gguf.write: '" .. key .. "' is not a string", level + 1) end
    check(C.tide_gguf_writer_kv_str(w, key, val, #val, err), level + 1)
  elseif FLOAT[tname] then
    if type(val) ~= "number" then error("gguf.write: '" .. key .. "' is not a number", level + 1) end
    check(C.tide_gguf_writer_kv_float(w, key, t, val, err), level + 1)
  elseif tname == "uint64" then
    if type(val) == "number" and (val < 0 or not is_int(val)) then
      error("gguf.write: '" .. key .. "': " .. val .. " does not fit in uint64", level + 1)
    end
    check(C.tide_gguf_writer_kv_uint(w, key, val, err), level + 1)
  else
    check(C.tide_gguf_writer_kv_int(w, key, t, to_int64(val, level + 1), err), level + 1)
  end
end

-- A map or a list of {key, value} pairs -> ordered list of pairs.
local function ordered(tbl, what, level)
  local list = {}
  if tbl == nil then return list end
  if type(tbl) ~= "table" then error("gguf.write: " .. what .. " must be a table", level + 1) end
  if #tbl > 0 and type(tbl[1]) == "table" and getmetatable(tbl[1]) ~= Typed and not T.is_tensor(tbl[1]) then
    for i, pair in ipairs(tbl) do
      if type(pair[1]) ~= "string" then error("gguf.write: " .. what .. " entry " .. i .. " needs a string name", level + 1) end
      list[i] = pair
    end
    return list
  end
  for k, v in pairs(tbl) do
    if type(k) ~= "string" then error("gguf.write: " .. what .. " names must be strings", level + 1) end
    list[#list + 1] = { k, v }
  end
  table.sort(list, function(a, b) return a[1] < b[1] end)
  return list
end

-- tide.gguf.write(path, metadata, tensors, opts) -> true | nil, err
-- metadata and tensors: maps (written sorted by name) or lists of {name, value}
-- pairs (written in that order); opts.alignment (default 32).
function M.write(path, metadata, tensors, opts)
  if type(path) ~= "string" then error("gguf.write: path must be a string", 2) end
  opts = opts or {}
  local md = ordered(metadata, "metadata", 2)
  local ts = ordered(tensors, "tensors", 2)
  local out = w_out()
  check(C.tide_gguf_writer_new(out, err), 2)
  local w = ffi.gc(out[0], C.tide_gguf_writer_free)
  if opts.alignment then check(C.tide_gguf_writer_set_alignment(w, opts.alignment, err), 2) end
  for _, kv in ipairs(md) do add_kv(w, kv[1], kv[2], 2) end
  for _, nt in ipairs(ts) do
    if not T.is_tensor(nt[2]) then error("gguf.write: '" .. nt[1] .. "' is not a tensor", 2) end
    check(C.tide_gguf_writer_add_tensor(w, nt[1], T.ptr(nt[2]), err), 2)
  end
  local rc = C.tide_gguf_writer_write(w, path, err)
  local msg = rc ~= 0 and F.errmsg() or nil
  ffi.gc(w, nil)
  C.tide_gguf_writer_free(w)
  if rc ~= 0 then return nil, msg end
  return true
end

M.type_names = TYPE_NAMES
return M
