-- tide.cmd.args: a small --flag parser shared by the commands.
-- spec: name -> "string" | "number" | "flag"; returns opts or nil, err.
local M = {}

function M.parse(args, spec)
  local o, rest = {}, {}
  local i = 1
  while i <= #args do
    local a = args[i]
    local name, val = a:match("^%-%-([%w%-_]+)=(.*)$")
    if not name then name = a:match("^%-%-([%w%-_]+)$") end
    if name then
      local key = name:gsub("%-", "_")
      local ty = spec[key]
      if not ty then return nil, "unknown option --" .. name end
      if ty == "flag" then
        o[key] = true
      else
        if val == nil then
          i = i + 1
          val = args[i]
          if val == nil then return nil, "option --" .. name .. " needs a value" end
        end
        if ty == "number" then
          local n = tonumber(val)
          if not n then return nil, "option --" .. name .. " expects a number, got '" .. val .. "'" end
          val = n
        end
        o[key] = val
      end
    else
      rest[#rest + 1] = a
    end
    i = i + 1
  end
  return o, rest
end

-- Minimal JSON encoder for command output (numbers, strings, booleans, lists, maps).
local function esc(s)
  return '"' .. s:gsub('[%c"\\]', function(c)
    local m = { ['"'] = '\\"', ["\\"] = "\\\\", ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }
    return m[c] or string.format("\\u%04x", c:byte())
  end) .. '"'
end

function M.json(v)
  local t = type(v)
  if t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then return "null" end
    if v == math.floor(v) and math.abs(v) < 2 ^ 53 then return string.format("%d", v) end
    return string.format("%.17g", v)
  elseif t == "string" then return esc(v)
  elseif t == "boolean" then return tostring(v)
  elseif t == "nil" then return "null"
  elseif t == "table" then
    if #v > 0 or next(v) == nil then
      local p = {}
      for i = 1, #v do p[i] = M.json(v[i]) end
      return "[" .. table.concat(p, ",") .. "]"
    end
    local keys = {}
    for k in pairs(v) do keys[#keys + 1] = tostring(k) end
    table.sort(keys)
    local p = {}
    for _, k in ipairs(keys) do p[#p + 1] = esc(k) .. ":" .. M.json(v[k]) end
    return "{" .. table.concat(p, ",") .. "}"
  end
  return "null"
end

return M
