-- tide.safetensors: load and save safetensors checkpoints (single file,
-- folder, or sharded through model.safetensors.index.json). Loaded tensors
-- are read-only views on the mmapped files; nothing is copied.
--   local tensors, meta = tide.load_safetensors("models/llama-tiny")
--   assert(tide.save_safetensors("out.safetensors", { w = t }, { format = "pt" }))
local F = require "tide.ffi"
local T = require "tide.tensor"
local ffi, C = F.ffi, F.C

local M = {}

local st_out = ffi.typeof("tide_st_t*[1]")
local t_out = ffi.typeof("tide_tensor_t*[1]")
local err = F.err

local File = {}
File.__index = File

-- Low level: an open checkpoint. :entries() lists {name, dtype, file_dtype,
-- shape, bytes, file, offset}; :get(name) returns a Tensor; :metadata().
function M.open(path)
  if type(path) ~= "string" then error("safetensors.open: path must be a string", 2) end
  local out = st_out()
  if C.tide_st_open(path, out, err) ~= 0 then return nil, F.errmsg() end
  return setmetatable({ _p = ffi.gc(out[0], C.tide_st_close), path = path }, File)
end

local function handle(self)
  local p = rawget(self, "_p")
  if p == nil then error("safetensors file was closed", 3) end
  return p
end

function File:count() return tonumber(C.tide_st_count(handle(self))) end

function File:metadata()
  local p = handle(self)
  local m = {}
  for i = 0, tonumber(C.tide_st_meta_count(p)) - 1 do
    m[ffi.string(C.tide_st_meta_key(p, i))] = ffi.string(C.tide_st_meta_value(p, i))
  end
  return m
end

local function get_index(self, i)
  local out = t_out()
  if C.tide_st_get(handle(self), i, out, err) ~= 0 then return nil, F.errmsg() end
  return T.wrap(out[0])
end

-- Tensor by name, or nil, err.
function File:get(name)
  local i = C.tide_st_find(handle(self), name)
  if i < 0 then return nil, self.path .. ": no tensor '" .. tostring(name) .. "'" end
  return get_index(self, i)
end

function File:entries()
  local p = handle(self)
  local list = {}
  for i = 0, tonumber(C.tide_st_count(p)) - 1 do
    local t, e = get_index(self, i)
    if not t then return nil, e end
    list[#list + 1] = {
      name = ffi.string(C.tide_st_name(p, i)),
      dtype = t:dtype(),
      file_dtype = ffi.string(C.tide_st_dtype_name(p, i)),
      shape = t:shape(),
      bytes = t:nbytes(),
      file = ffi.string(C.tide_st_file(p, i)),
      offset = tonumber(C.tide_st_file_offset(p, i)),
    }
    t:free()
  end
  return list
end

function File:close()
  local p = rawget(self, "_p")
  if p ~= nil then
    ffi.gc(p, nil)
    C.tide_st_close(p)
    self._p = nil
  end
end

-- tide.load_safetensors(path) -> { name = Tensor, ... }, metadata  |  nil, err
function M.load(path)
  if type(path) ~= "string" then error("load_safetensors: path must be a string", 2) end
  local f, e = M.open(path)
  if not f then return nil, e end
  local p = f._p
  local tensors = {}
  for i = 0, tonumber(C.tide_st_count(p)) - 1 do
    local t, e2 = get_index(f, i)
    if not t then f:close() return nil, e2 end
    tensors[ffi.string(C.tide_st_name(p, i))] = t
  end
  local meta = f:metadata()
  f:close() -- the tensors keep their mappings alive
  return tensors, meta
end

-- tide.save_safetensors(path, { name = Tensor, ... }, metadata?) -> true | nil, err
function M.save(path, tensors, metadata)
  if type(path) ~= "string" then error("save_safetensors: path must be a string", 2) end
  if type(tensors) ~= "table" then error("save_safetensors: tensors must be a table name -> tensor", 2) end
  if metadata ~= nil and type(metadata) ~= "table" then error("save_safetensors: metadata must be a table", 2) end
  local names = {}
  for name, t in pairs(tensors) do
    if type(name) ~= "string" then error("save_safetensors: tensor names must be strings", 2) end
    if not T.is_tensor(t) then error("save_safetensors: '" .. name .. "' is not a tensor", 2) end
    names[#names + 1] = name
  end
  table.sort(names)
  local n = #names
  local cnames = ffi.new("const char*[?]", math.max(n, 1))
  local cts = ffi.new("const tide_tensor_t*[?]", math.max(n, 1))
  for i, name in ipairs(names) do
    cnames[i - 1] = name
    cts[i - 1] = T.ptr(tensors[name])
  end
  local keep, nm = {}, 0
  for k, v in pairs(metadata or {}) do
    local tv = type(v)
    if type(k) ~= "string" or (tv ~= "string" and tv ~= "number" and tv ~= "boolean") then
      error("save_safetensors: metadata must map strings to strings", 2)
    end
    keep[#keep + 1] = k
    keep[#keep + 1] = tostring(v)
    nm = nm + 1
  end
  local cmeta = ffi.new("const char*[?]", math.max(2 * nm, 1))
  for i, s in ipairs(keep) do cmeta[i - 1] = s end
  if C.tide_st_save(path, n, cnames, cts, nm, cmeta, err) ~= 0 then return nil, F.errmsg() end
  return true
end

return M
