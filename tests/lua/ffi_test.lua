-- The FFI declarations are generated from the C headers; these tests check
-- that LuaJIT lays out every shared struct exactly as the C compiler does,
-- and that the layout table in src/ffi_layout.c covers every struct field.
local H = require "helpers"
local F = require "tide.ffi"
local ffi, C = F.ffi, F.C

local T = {}

local function layout_entries()
  local out = {}
  local e = C.tide_ffi_layout()
  local i = 0
  while e[i].type ~= nil do
    out[#out + 1] = { type = ffi.string(e[i].type), field = ffi.string(e[i].field), value = tonumber(e[i].value) }
    i = i + 1
  end
  return out
end

-- struct name -> list of field names, parsed from the generated cdef text.
local function cdef_structs()
  local src = require "tide.cdef"
  local structs = {}
  for name, body in src:gmatch("struct%s+(tide_[%w_]+)%s*(%b{})") do
    local fields = {}
    body = body:sub(2, -2)
    for decl in body:gmatch("([^;]+);") do
      -- the field name is the last identifier before an optional array suffix,
      -- or the name inside (*name) for function pointers
      local fp = decl:match("%(%s*%*%s*([%w_]+)%s*%)")
      local name2 = fp or decl:match("([%w_]+)%s*%[[^%]]*%]%s*$") or decl:match("([%w_]+)%s*$")
      fields[#fields + 1] = name2
    end
    structs[name] = fields
  end
  return structs
end

function T.every_layout_entry_matches_luajit()
  local entries = layout_entries()
  H.truthy(#entries > 20, "layout table has entries")
  for _, e in ipairs(entries) do
    if e.field == "" then
      H.eq(ffi.sizeof(e.type), e.value, "sizeof(" .. e.type .. ")")
    else
      H.eq(ffi.offsetof(e.type, e.field), e.value, "offsetof(" .. e.type .. ", " .. e.field .. ")")
    end
  end
end

function T.every_cdef_struct_is_in_the_layout_table()
  local covered = {}
  for _, e in ipairs(layout_entries()) do
    covered[e.type] = covered[e.type] or {}
    covered[e.type][e.field] = true
  end
  local structs = cdef_structs()
  local n = 0
  for name, fields in pairs(structs) do
    n = n + 1
    local key = "struct " .. name
    H.truthy(covered[key], key .. " has a SIZE entry in src/ffi_layout.c")
    H.truthy(covered[key][""], key .. " size is listed")
    for _, f in ipairs(fields) do
      H.truthy(covered[key][f], key .. "." .. tostring(f) .. " is listed in src/ffi_layout.c")
    end
  end
  H.truthy(n >= 5, "found the shared structs in the cdef")
end

function T.cdef_is_generated_from_headers()
  local src = require "tide.cdef"
  H.truthy(src:find("tide_tensor_new", 1, true), "tensor API declared")
  H.truthy(not src:find("#include", 1, true), "no preprocessor lines left")
  H.eq(ffi.string(C.tide_version()), require("tide")._VERSION, "version")
end

return T
