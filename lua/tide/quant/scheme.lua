-- tide.quant.scheme: quantization schemes as Lua data.
--
-- A scheme (recipes/quant/NAME.lua returns one):
--   {
--     name = "mixed",
--     method = "rtn" | "imatrix" | "awq",   -- how weights are rounded
--     default = "q8_0",                      -- type of matrices no rule names
--     file_type = "q4_0",                    -- general.file_type (else the most common type)
--     rules = {                               -- the first matching rule wins
--       { match = "embed_tokens", type = "keep" },        -- Lua pattern on the Hugging Face name
--       { match = "mlp%.experts%.", type = "q4_0" },
--       { layers = { 0, 0 }, type = "q8_0" },             -- layer range (negative: from the end)
--       { match = "self_attn", layers = { 1, -2 }, type = "bf16" },
--     },
--     fallback = { q4_k = "q8_0", ... },     -- when a row does not fit the block size
--   }
-- Types: f32, f16, bf16, keep (the checkpoint's float type), q8_0, q4_0, q4_k, q6_k.
-- Vectors (norms, biases) and MoE routers are always f32. A rule may use `match = {"a", "b"}` (any).
local M = {}

M.TYPES = { f32 = 1, f16 = 1, bf16 = 1, keep = 1, q8_0 = 32, q4_0 = 32, q4_k = 256, q6_k = 256 }
M.METHODS = { rtn = true, imatrix = true, awq = true }

-- llama.cpp's llama_ftype numbers for general.file_type
M.FILE_TYPE = { f32 = 0, f16 = 1, q4_0 = 2, q8_0 = 7, q4_k = 15, q6_k = 18, bf16 = 32 }

local DEFAULT_FALLBACK = { q4_k = "q4_0", q6_k = "q8_0", q4_0 = "f16", q8_0 = "f16" }

-- Check a scheme table; returns it (with defaults filled in) or nil, err.
function M.validate(s)
  if type(s) ~= "table" then return nil, "a scheme must be a table" end
  s.method = s.method or "rtn"
  if not M.METHODS[s.method] then return nil, "unknown method '" .. tostring(s.method) .. "' (rtn, imatrix, awq)" end
  s.default = s.default or "q8_0"
  if not M.TYPES[s.default] then return nil, "unknown default type '" .. tostring(s.default) .. "'" end
  s.rules = s.rules or {}
  if type(s.rules) ~= "table" then return nil, "rules must be a list" end
  for i, r in ipairs(s.rules) do
    if type(r) ~= "table" then return nil, "rule " .. i .. " must be a table" end
    if not M.TYPES[r.type] then return nil, "rule " .. i .. ": unknown type '" .. tostring(r.type) .. "'" end
    if r.match ~= nil and type(r.match) ~= "string" and type(r.match) ~= "table" then
      return nil, "rule " .. i .. ": match must be a pattern or a list of patterns"
    end
    if r.layers ~= nil and (type(r.layers) ~= "table" or type(r.layers[1]) ~= "number" or type(r.layers[2]) ~= "number") then
      return nil, "rule " .. i .. ": layers must be { first, last }"
    end
  end
  if s.file_type ~= nil and not M.FILE_TYPE[s.file_type] then
    return nil, "unknown file_type '" .. tostring(s.file_type) .. "'"
  end
  local fb = {}
  for k, v in pairs(DEFAULT_FALLBACK) do fb[k] = v end
  for k, v in pairs(s.fallback or {}) do fb[k] = v end
  s.fallback = fb
  return s
end

-- load(name_or_file) -> scheme or nil, err: a path ending in .lua, or a name
-- under recipes/quant/ (looked up from the current folder and next to the
-- executable's lua/ folder).
function M.load(name)
  if type(name) == "table" then return M.validate(name) end
  if type(name) ~= "string" then return nil, "scheme must be a name or a file" end
  local cands = {}
  if name:match("%.lua$") then
    cands[1] = name
  else
    cands[1] = "recipes/quant/" .. name .. ".lua"
    local lp = package.searchpath and package.searchpath("tide", package.path)
    if lp then cands[2] = lp:gsub("lua/tide/init%.lua$", "") .. "recipes/quant/" .. name .. ".lua" end
  end
  for _, f in ipairs(cands) do
    local fh = io.open(f, "rb")
    if fh then
      fh:close()
      local chunk, e = loadfile(f)
      if not chunk then return nil, e end
      local ok, s = pcall(chunk)
      if not ok then return nil, f .. ": " .. tostring(s) end
      local v, ve = M.validate(s)
      if not v then return nil, f .. ": " .. ve end
      v.name = v.name or name:match("([^/]+)%.lua$") or name
      return v
    end
  end
  return nil, "scheme '" .. name .. "' not found (looked for " .. table.concat(cands, ", ") .. ")"
end

local function matches(pat, name)
  if pat == nil then return true end
  if type(pat) == "string" then return name:match(pat) ~= nil end
  for _, p in ipairs(pat) do if name:match(p) then return true end end
  return false
end

local function in_layers(r, layer, n_layers)
  if r.layers == nil then return true end
  if layer == nil then return false end
  local a, b = r.layers[1], r.layers[2]
  if a < 0 then a = n_layers + a end
  if b < 0 then b = n_layers + b end
  return layer >= a and layer <= b
end

-- type_for(scheme, hf_name, shape, n_layers, src_dtype) -> dtype name.
-- shape: the matrix shape (the last dimension is the row length).
function M.type_for(s, name, shape, n_layers, src_dtype)
  if #shape < 2 then return "f32" end
  if name:match("mlp%.gate%.weight$") then return "f32" end -- MoE router: never quantized (as llama.cpp)
  local layer = tonumber(name:match("layers%.(%d+)%."))
  local t = s.default
  for _, r in ipairs(s.rules) do
    if matches(r.match, name) and in_layers(r, layer, n_layers) then
      t = r.type
      break
    end
  end
  if t == "keep" then
    t = (src_dtype == "f32" or src_dtype == "f16" or src_dtype == "bf16") and src_dtype or "f16"
  end
  local K = shape[#shape]
  local guard = 0
  while K % M.TYPES[t] ~= 0 and guard < 4 do
    t = s.fallback[t] or "f16"
    guard = guard + 1
  end
  return t
end

-- general.file_type of a scheme given the chosen types (name -> dtype).
function M.file_type(s, types)
  if s.file_type then return M.FILE_TYPE[s.file_type] end
  local count, best, bn = {}, nil, -1
  for _, t in pairs(types) do
    if t ~= "f32" then count[t] = (count[t] or 0) + 1 end
  end
  for t, n in pairs(count) do if n > bn or (n == bn and t < best) then best, bn = t, n end end
  return M.FILE_TYPE[best or "f32"]
end

return M
