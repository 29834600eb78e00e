-- tide inspect PATH: list the tensors (name, dtype, shape, bytes) and the
-- metadata of a safetensors file, a model folder / index, or a GGUF file.
local M = {}

M.usage = [[
usage: tide inspect PATH [--json]

PATH is a .safetensors file, a model.safetensors.index.json, a model folder,
or a .gguf file. Prints the metadata, then one line per tensor: name, dtype,
shape and bytes (and the file it lives in for sharded checkpoints).

  --json   print one JSON object instead: {format, path, metadata,
           metadata_types (GGUF), tensors = [{name, dtype, shape, bytes, offset, file}]}]]

local function is_gguf(path)
  local f = io.open(path, "rb")
  if not f then return false end
  local magic = f:read(4)
  f:close()
  return magic == "GGUF"
end

local function fmt_shape(s)
  local parts = {}
  for i, v in ipairs(s) do parts[i] = tostring(v) end
  return "(" .. table.concat(parts, ", ") .. ")"
end

local function fmt_value(v)
  if type(v) == "table" then
    local n = #v
    local parts = {}
    for i = 1, math.min(n, 8) do parts[i] = fmt_value(v[i]) end
    if n > 8 then parts[#parts + 1] = "... (" .. n .. " values)" end
    return "[" .. table.concat(parts, ", ") .. "]"
  end
  if type(v) == "string" then
    local s = v:gsub("\n", "\\n")
    if #s > 80 then s = s:sub(1, 77) .. "..." end
    return (string.format("%q", s):gsub("\\\n", "\\n"))
  end
  if type(v) == "cdata" then return (tostring(v):gsub("U?LL$", "")) end
  return tostring(v)
end

-- JSON-friendly copy (64-bit cdata become strings).
local function plain(v)
  if type(v) == "table" then
    local r = {}
    for k, x in pairs(v) do r[k] = plain(x) end
    return r
  end
  if type(v) == "cdata" then return (tostring(v):gsub("U?LL$", "")) end
  return v
end

local function collect(path)
  if is_gguf(path) then
    local g, err = require("tide.gguf").open(path)
    if not g then return nil, err end
    local info, e2 = g:tensor_info()
    if not info then g:close() return nil, e2 end
    local r = { format = "gguf", version = g:version(), alignment = g:alignment(), path = path,
      metadata = g:metadata(), metadata_types = g:metadata_types(), keys = g:keys(), tensors = info }
    g:close()
    return r
  end
  local f, err = require("tide.safetensors").open(path)
  if not f then return nil, err end
  local list, e2 = f:entries()
  local meta = f:metadata()
  f:close()
  if not list then return nil, e2 end
  local keys = {}
  for k in pairs(meta) do keys[#keys + 1] = k end
  table.sort(keys)
  return { format = "safetensors", path = path, metadata = meta, keys = keys, tensors = list }
end

function M.main(args)
  local path, json = nil, false
  for _, a in ipairs(args) do
    if a == "--json" then json = true
    elseif a:sub(1, 1) == "-" then io.stderr:write("tide inspect: unknown option ", a, "\n") return 2
    elseif path then io.stderr:write("tide inspect: one PATH only\n") return 2
    else path = a end
  end
  if not path then io.stderr:write("tide inspect: missing PATH (see tide inspect --help)\n") return 2 end
  local r, err = collect(path)
  if not r then io.stderr:write("tide inspect: ", err, "\n") return 1 end
  if json then
    local cjson = require "cjson"
    local out = { format = r.format, path = r.path, version = r.version, alignment = r.alignment,
      metadata = plain(r.metadata), metadata_types = r.metadata_types, tensors = plain(r.tensors) }
    io.write(cjson.encode(out), "\n")
    return 0
  end
  local total = 0
  for _, t in ipairs(r.tensors) do total = total + t.bytes end
  io.write(string.format("%s: %s%s, %d tensors, %d bytes of data\n", r.path, r.format,
    r.version and (" v" .. r.version .. ", alignment " .. r.alignment) or "", #r.tensors, total))
  if #r.keys > 0 then
    io.write("metadata:\n")
    for _, k in ipairs(r.keys) do
      local ty = r.metadata_types and (" (" .. r.metadata_types[k] .. ")") or ""
      io.write(string.format("  %s%s = %s\n", k, ty, fmt_value(r.metadata[k])))
    end
  end
  io.write("tensors:\n")
  local files = {}
  for _, t in ipairs(r.tensors) do if t.file then files[t.file] = true end end
  local sharded = next(files) ~= nil and next(files, next(files)) ~= nil
  local w = 4
  for _, t in ipairs(r.tensors) do w = math.max(w, #t.name) end
  for _, t in ipairs(r.tensors) do
    local where = sharded and ("  " .. t.file:match("[^/]*$")) or ""
    io.write(string.format("  %-" .. w .. "s  %-8s %-20s %12d%s\n", t.name, t.dtype, fmt_shape(t.shape), t.bytes, where))
  end
  return 0
end

return M
