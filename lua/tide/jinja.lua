-- tide.jinja: the Jinja subset that Hugging Face chat templates use,
-- rendered the way transformers does (trim_blocks and lstrip_blocks on,
-- loop controls on, Python-like values).
--
--   local jinja = require "tide.jinja"
--   local t = assert(jinja.compile(template_source))
--   local text = t:render({ messages = msgs, add_generation_prompt = true })
--
-- The template is split into text and tags by an LPeg pattern, expressions
-- are lexed by LPeg and parsed by a small precedence parser. Supported:
-- {{ }}, {% if/elif/else %}, {% for x in xs [if cond] %} (+ else, loop.*),
-- {% set %} (names, ns.attr, tuples, block set), {% macro %}/{% call %}-less
-- macros, {% break/continue %}, {% raw %}, {% generation %}, {# #}, the
-- whitespace markers - and +; filters, tests, string/dict/list methods and
-- globals (range, namespace, raise_exception, strftime_now, dict) that real
-- templates use. Values: Lua strings, numbers, booleans, tables (lists and
-- dicts), jinja.none (cjson.null counts as none), jinja.undefined.
-- Dicts are Lua tables, which have no key order: tojson, items() and loops
-- follow the insertion order that jinja.json_decode / jinja.ordered record
-- (and dict literals in templates), and sorted order otherwise.
-- Known difference: Lua numbers do not tell 1.0 from 1, so a float with no
-- fraction prints as an integer.
local lpeg = require "lpeg"
local P, R, S, C, Ct, Cp, V = lpeg.P, lpeg.R, lpeg.S, lpeg.C, lpeg.Ct, lpeg.Cp, lpeg.V

local M = {}

local NONE = setmetatable({}, { __tostring = function() return "None" end })
local UNDEF = setmetatable({}, { __tostring = function() return "" end })
M.none, M.undefined = NONE, UNDEF

local cjson_null
do
  local ok, cjson = pcall(require, "cjson")
  if ok then cjson_null = cjson.null end
end

local function is_none(v) return v == nil or v == NONE or (cjson_null ~= nil and v == cjson_null) end

local Namespace = {}
local KW = {} -- metatable marking a keyword-arguments table passed last
local Loop = {}
Loop.__index = Loop

local function jfail(fmt, ...) error({ jinja = string.format(fmt, ...) }, 0) end

---------------------------------------------------------------------------
-- Value helpers (Python semantics)

local function is_list(v)
  if type(v) ~= "table" or v == NONE or v == UNDEF or getmetatable(v) == Namespace then return false end
  if v[1] ~= nil then return true end
  return next(v) == nil
end

local function is_dict(v)
  if type(v) ~= "table" or v == NONE or v == UNDEF then return false end
  if getmetatable(v) == Namespace then return true end
  return v[1] == nil
end

local function truthy(v)
  if v == nil or v == false or v == UNDEF or is_none(v) then return false end
  if v == "" or v == 0 then return false end
  if type(v) == "table" and getmetatable(v) ~= Namespace and next(v) == nil then return false end
  return true
end

local function fmt_number(n)
  if n == math.floor(n) and math.abs(n) < 1e15 then return string.format("%d", n) end
  local s = string.format("%.17g", n)
  for prec = 1, 17 do
    local t = string.format("%." .. prec .. "g", n)
    if tonumber(t) == n then s = t break end
  end
  if not s:find("[%.eEn]") then s = s .. ".0" end
  return s
end

local repr

-- Key order of dicts: Lua tables have none, so a dict may carry its
-- insertion order here (M.ordered, M.json_decode); others iterate sorted.
local key_order = setmetatable({}, { __mode = "k" })

local function sorted_keys(t)
  local ks = {}
  local order = key_order[t]
  if order then
    local seen = {}
    for _, k in ipairs(order) do
      if t[k] ~= nil and not seen[k] then ks[#ks + 1] = k; seen[k] = true end
    end
    local rest = {}
    for k in pairs(t) do if not seen[k] then rest[#rest + 1] = k end end
    table.sort(rest, function(a, b) return tostring(a) < tostring(b) end)
    for _, k in ipairs(rest) do ks[#ks + 1] = k end
    return ks
  end
  for k in pairs(t) do ks[#ks + 1] = k end
  table.sort(ks, function(a, b) return tostring(a) < tostring(b) end)
  return ks
end

-- Give dict t the key order `keys` (as Python's insertion order); returns t.
function M.ordered(t, keys)
  key_order[t] = keys
  return t
end

local function py_str(v)
  local t = type(v)
  if t == "string" then return v end
  if t == "number" then return fmt_number(v) end
  if t == "boolean" then return v and "True" or "False" end
  if v == UNDEF then return "" end
  if is_none(v) then return "None" end
  if t == "table" then return repr(v) end
  return tostring(v)
end
M.str = py_str

local function py_quote(s)
  local q = (s:find("'", 1, true) and not s:find('"', 1, true)) and '"' or "'"
  s = s:gsub("\\", "\\\\"):gsub("\n", "\\n"):gsub("\r", "\\r"):gsub("\t", "\\t")
  if q == "'" then s = s:gsub("'", "\\'") end
  return q .. s .. q
end

function repr(v)
  local t = type(v)
  if t == "string" then return py_quote(v) end
  if t ~= "table" or v == NONE or v == UNDEF then return py_str(v) end
  if is_list(v) and getmetatable(v) ~= Namespace then
    local parts = {}
    for i = 1, #v do parts[i] = repr(v[i]) end
    return "[" .. table.concat(parts, ", ") .. "]"
  end
  local parts = {}
  for _, k in ipairs(sorted_keys(v)) do parts[#parts + 1] = repr(k) .. ": " .. repr(v[k]) end
  return "{" .. table.concat(parts, ", ") .. "}"
end

local function json_str(s)
  s = s:gsub('[%c"\\]', function(c)
    if c == '"' then return '\\"' elseif c == "\\" then return "\\\\"
    elseif c == "\n" then return "\\n" elseif c == "\r" then return "\\r" elseif c == "\t" then return "\\t"
    elseif c == "\b" then return "\\b" elseif c == "\f" then return "\\f" end
    return string.format("\\u%04x", c:byte())
  end)
  return '"' .. s .. '"'
end

local function tojson(v, indent, level)
  level = level or 0
  local t = type(v)
  if t == "string" then return json_str(v) end
  if t == "number" then return fmt_number(v) end
  if t == "boolean" then return v and "true" or "false" end
  if is_none(v) or v == UNDEF then return "null" end
  if t ~= "table" then return json_str(tostring(v)) end
  local nl, pad, pad2 = "", "", ""
  if indent then
    nl = "\n"; pad = string.rep(" ", indent * (level + 1)); pad2 = string.rep(" ", indent * level)
  end
  local sep = indent and "," or ", "
  if is_list(v) then
    if #v == 0 then return "[]" end
    local parts = {}
    for i = 1, #v do parts[i] = pad .. tojson(v[i], indent, level + 1) end
    return "[" .. nl .. table.concat(parts, sep .. nl) .. nl .. pad2 .. "]"
  end
  local parts = {}
  for _, k in ipairs(sorted_keys(v)) do
    parts[#parts + 1] = pad .. json_str(tostring(k)) .. ": " .. tojson(v[k], indent, level + 1)
  end
  if #parts == 0 then return "{}" end
  return "{" .. nl .. table.concat(parts, sep .. nl) .. nl .. pad2 .. "}"
end
M.tojson = tojson

local function equal(a, b)
  if is_none(a) and is_none(b) then return true end
  if type(a) ~= type(b) then return false end
  if type(a) ~= "table" then return a == b end
  if a == b then return true end
  for k, x in pairs(a) do if not equal(x, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

local function length(v)
  if type(v) == "string" then
    local n = 0
    for _ in v:gmatch("[^\128-\191]") do n = n + 1 end
    return n
  end
  if type(v) == "table" and v ~= UNDEF and v ~= NONE then
    if is_list(v) then return #v end
    local n = 0
    for _ in pairs(v) do n = n + 1 end
    return n
  end
  if v == UNDEF then return 0 end
  jfail("object of type %s has no len()", type(v))
end

-- UTF-8 aware character list (for string indexing and slicing)
local function chars(s)
  local t = {}
  for ch in s:gmatch("[%z\1-\127\194-\244][\128-\191]*") do t[#t + 1] = ch end
  return t
end

local function iterate(v)
  if v == UNDEF or is_none(v) then return {} end
  if type(v) == "string" then return chars(v) end
  if type(v) ~= "table" then jfail("object of type %s is not iterable", type(v)) end
  if is_list(v) then return v end
  return sorted_keys(v)
end

local function contains(hay, needle)
  if type(hay) == "string" then
    return type(needle) == "string" and hay:find(needle, 1, true) ~= nil
  end
  if type(hay) == "table" then
    if is_list(hay) then
      for _, x in ipairs(hay) do if equal(x, needle) then return true end end
      return false
    end
    return hay[needle] ~= nil
  end
  if hay == UNDEF or is_none(hay) then jfail("argument of type 'NoneType' is not iterable") end
  return false
end

local function strip_chars(s, set, left, right)
  local cls = set and ("[" .. set:gsub("[%]%%%^%-]", "%%%0") .. "]") or "%s"
  if left then s = s:gsub("^" .. cls .. "+", "") end
  if right then s = s:gsub(cls .. "+$", "") end
  return s
end

local function split_str(s, sep, maxsplit)
  local out = {}
  maxsplit = maxsplit or -1
  if sep == nil or is_none(sep) then
    for w in s:gmatch("%S+") do out[#out + 1] = w end
    return out
  end
  if sep == "" then jfail("empty separator") end
  local pos = 1
  while maxsplit ~= 0 do
    local a, b = s:find(sep, pos, true)
    if not a then break end
    out[#out + 1] = s:sub(pos, a - 1)
    pos = b + 1
    maxsplit = maxsplit - 1
  end
  out[#out + 1] = s:sub(pos)
  return out
end

local function title(s)
  return (s:gsub("(%a)([%w]*)", function(a, b) return a:upper() .. b:lower() end))
end

---------------------------------------------------------------------------
-- Methods, filters, tests, globals

local str_methods = {
  startswith = function(s, p)
    if type(p) == "table" then for _, x in ipairs(p) do if s:sub(1, #x) == x then return true end end return false end
    return s:sub(1, #p) == p
  end,
  endswith = function(s, p)
    if type(p) == "table" then for _, x in ipairs(p) do if #x == 0 or s:sub(-#x) == x then return true end end return false end
    return #p == 0 or s:sub(-#p) == p
  end,
  strip = function(s, c) return strip_chars(s, (not is_none(c)) and c or nil, true, true) end,
  lstrip = function(s, c) return strip_chars(s, (not is_none(c)) and c or nil, true, false) end,
  rstrip = function(s, c) return strip_chars(s, (not is_none(c)) and c or nil, false, true) end,
  split = function(s, sep, n) return split_str(s, sep, n) end,
  upper = function(s) return s:upper() end,
  lower = function(s) return s:lower() end,
  title = title,
  capitalize = function(s) return s:sub(1, 1):upper() .. s:sub(2):lower() end,
  replace = function(s, a, b, n)
    local out, pos, cnt = {}, 1, 0
    n = n or -1
    if a == "" then return s end
    while n < 0 or cnt < n do
      local i, j = s:find(a, pos, true)
      if not i then break end
      out[#out + 1] = s:sub(pos, i - 1); out[#out + 1] = b
      pos = j + 1; cnt = cnt + 1
    end
    out[#out + 1] = s:sub(pos)
    return table.concat(out)
  end,
  find = function(s, sub) local i = s:find(sub, 1, true) return i and (i - 1) or -1 end,
  count = function(s, sub)
    local n, pos = 0, 1
    while true do
      local i, j = s:find(sub, pos, true)
      if not i then return n end
      n = n + 1; pos = j + 1
    end
  end,
  join = function(s, list)
    local parts = {}
    for i, x in ipairs(iterate(list)) do parts[i] = py_str(x) end
    return table.concat(parts, s)
  end,
  splitlines = function(s)
    local out = {}
    for line in (s .. "\n"):gmatch("(.-)\r?\n") do out[#out + 1] = line end
    if s == "" or s:sub(-1) == "\n" then out[#out] = nil end
    return out
  end,
  isdigit = function(s) return s ~= "" and not s:find("%D") end,
  isspace = function(s) return s ~= "" and not s:find("%S") end,
  format = function(s, ...)
    local args, i = { ... }, 0
    return (s:gsub("{}", function() i = i + 1 return py_str(args[i]) end))
  end,
}

local dict_methods = {
  items = function(d)
    local out = {}
    for _, k in ipairs(sorted_keys(d)) do out[#out + 1] = { k, d[k] } end
    return out
  end,
  keys = function(d) return sorted_keys(d) end,
  values = function(d)
    local out = {}
    for _, k in ipairs(sorted_keys(d)) do out[#out + 1] = d[k] end
    return out
  end,
  get = function(d, k, default)
    local v = d[k]
    if v == nil then return default == nil and NONE or default end
    return v
  end,
}

local list_methods = {
  index = function(l, x)
    for i, y in ipairs(l) do if equal(x, y) then return i - 1 end end
    jfail("value not in list")
  end,
  count = function(l, x)
    local n = 0
    for _, y in ipairs(l) do if equal(x, y) then n = n + 1 end end
    return n
  end,
}

local tests
tests = {
  defined = function(v) return v ~= UNDEF end,
  undefined = function(v) return v == UNDEF end,
  none = function(v) return v ~= UNDEF and is_none(v) end,
  string = function(v) return type(v) == "string" end,
  number = function(v) return type(v) == "number" end,
  integer = function(v) return type(v) == "number" and v == math.floor(v) end,
  float = function(v) return type(v) == "number" and v ~= math.floor(v) end,
  boolean = function(v) return type(v) == "boolean" end,
  ["true"] = function(v) return v == true end,
  ["false"] = function(v) return v == false end,
  mapping = function(v) return is_dict(v) end,
  sequence = function(v) return type(v) == "string" or is_list(v) end,
  iterable = function(v) return type(v) == "string" or (type(v) == "table" and v ~= UNDEF and not is_none(v)) end,
  callable = function(v) return type(v) == "function" end,
  even = function(v) return v % 2 == 0 end,
  odd = function(v) return v % 2 == 1 end,
  divisibleby = function(v, n) return v % n == 0 end,
  eq = function(a, b) return equal(a, b) end,
  ne = function(a, b) return not equal(a, b) end,
  sameas = function(a, b) return a == b end,
  lower = function(v) return type(v) == "string" and v:lower() == v end,
  upper = function(v) return type(v) == "string" and v:upper() == v end,
  ["in"] = function(v, c) return contains(c, v) end,
  gt = function(a, b) return a > b end,
  lt = function(a, b) return a < b end,
  ge = function(a, b) return a >= b end,
  le = function(a, b) return a <= b end,
}
tests.equalto = tests.eq
tests["=="] = tests.eq
tests["!="] = tests.ne
tests.greaterthan = tests.gt
tests.lessthan = tests.lt

local function attr_of(v, name)
  if type(v) ~= "table" or v == UNDEF or is_none(v) then return UNDEF end
  local x = v[name]
  if x == nil then
    local num = tonumber(name)
    if num and is_list(v) then x = v[num + 1] end
  end
  if x == nil then return UNDEF end
  return x
end

local function dotted(v, path)
  for part in tostring(path):gmatch("[^%.]+") do v = attr_of(v, part) end
  return v
end

local filters
filters = {
  trim = function(s, c) return strip_chars(py_str(s), c, true, true) end,
  tojson = function(v, kw) return tojson(v, kw and kw.indent) end,
  length = length,
  count = length,
  upper = function(s) return py_str(s):upper() end,
  lower = function(s) return py_str(s):lower() end,
  title = function(s) return title(py_str(s)) end,
  capitalize = function(s) s = py_str(s) return s:sub(1, 1):upper() .. s:sub(2):lower() end,
  string = py_str,
  safe = function(s) return s end,
  e = function(s)
    return (py_str(s):gsub("[&<>\"']", { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&#34;", ["'"] = "&#39;" }))
  end,
  default = function(v, d, bool)
    if v == UNDEF or (bool and not truthy(v)) then return d == nil and "" or d end
    return v
  end,
  first = function(v) local it = iterate(v) return it[1] == nil and UNDEF or it[1] end,
  last = function(v) local it = iterate(v) return it[#it] == nil and UNDEF or it[#it] end,
  join = function(v, sep, kw)
    if getmetatable(sep) == KW then sep, kw = nil, sep end
    local parts = {}
    local attr = kw and kw.attribute
    for i, x in ipairs(iterate(v)) do parts[i] = py_str(attr and dotted(x, attr) or x) end
    return table.concat(parts, (sep == nil or sep == UNDEF) and "" or py_str(sep))
  end,
  int = function(v)
    local n = tonumber(v)
    if v == true then return 1 elseif v == false then return 0 end
    if not n then return 0 end
    return n >= 0 and math.floor(n) or math.ceil(n)
  end,
  float = function(v) return tonumber(v) or 0 end,
  abs = function(v) return math.abs(v) end,
  round = function(v, prec)
    local m = 10 ^ (prec or 0)
    return math.floor(v * m + 0.5) / m
  end,
  list = function(v) local out = {} for i, x in ipairs(iterate(v)) do out[i] = x end return out end,
  items = function(v) return dict_methods.items(v) end,
  dictsort = function(v) return dict_methods.items(v) end,
  reverse = function(v)
    if type(v) == "string" then local c = chars(v) local o = {} for i = #c, 1, -1 do o[#o + 1] = c[i] end return table.concat(o) end
    local out = {}
    local it = iterate(v)
    for i = #it, 1, -1 do out[#out + 1] = it[i] end
    return out
  end,
  unique = function(v)
    local out = {}
    for _, x in ipairs(iterate(v)) do
      local seen = false
      for _, y in ipairs(out) do if equal(x, y) then seen = true break end end
      if not seen then out[#out + 1] = x end
    end
    return out
  end,
  sum = function(v) local s = 0 for _, x in ipairs(iterate(v)) do s = s + x end return s end,
  max = function(v) local m for _, x in ipairs(iterate(v)) do if m == nil or x > m then m = x end end return m == nil and UNDEF or m end,
  min = function(v) local m for _, x in ipairs(iterate(v)) do if m == nil or x < m then m = x end end return m == nil and UNDEF or m end,
  replace = function(s, a, b, n) return str_methods.replace(py_str(s), py_str(a), py_str(b), n) end,
  indent = function(s, width, first)
    width = width or 4
    local pad = type(width) == "string" and width or string.rep(" ", width)
    s = py_str(s)
    local lines = split_str(s, "\n")
    for i = 1, #lines do
      if (i > 1 or first) and lines[i] ~= "" then lines[i] = pad .. lines[i] end
    end
    return table.concat(lines, "\n")
  end,
  map = function(v, name, kw)
    if getmetatable(name) == KW then name, kw = nil, name end
    local out = {}
    for i, x in ipairs(iterate(v)) do
      if kw and kw.attribute then out[i] = dotted(x, kw.attribute)
      elseif name and filters[name] then out[i] = filters[name](x)
      else jfail("map: unsupported arguments") end
    end
    return out
  end,
  sort = function(v, kw)
    local out = {}
    for i, x in ipairs(iterate(v)) do out[i] = x end
    local attr = kw and kw.attribute
    table.sort(out, function(a, b)
      if attr then a, b = dotted(a, attr), dotted(b, attr) end
      if kw and kw.reverse then return a > b end
      return a < b
    end)
    return out
  end,
  wordcount = function(s) local n = 0 for _ in py_str(s):gmatch("%S+") do n = n + 1 end return n end,
}
filters.d = filters.default
filters.escape = filters.e
filters.strip = filters.trim

local function select_by(v, keep, name, arg, attr)
  local out = {}
  for _, x in ipairs(iterate(v)) do
    local val = attr and dotted(x, attr) or x
    local ok
    if name == nil then ok = truthy(val)
    else
      local t = tests[name]
      if not t then jfail("no test named %q", name) end
      ok = t(val, arg)
    end
    if ok == keep then out[#out + 1] = x end
  end
  return out
end
filters.select = function(v, name, arg) return select_by(v, true, name, arg) end
filters.reject = function(v, name, arg) return select_by(v, false, name, arg) end
filters.selectattr = function(v, attr, name, arg) return select_by(v, true, name, arg, attr) end
filters.rejectattr = function(v, attr, name, arg) return select_by(v, false, name, arg, attr) end

local globals = {
  range = function(a, b, step)
    if b == nil then a, b = 0, a end
    step = step or 1
    local out = {}
    if step > 0 then for i = a, b - 1, step do out[#out + 1] = i end
    else for i = a, b + 1, step do out[#out + 1] = i end end
    return out
  end,
  namespace = function(kw)
    local ns = setmetatable({}, Namespace)
    if kw then for k, v in pairs(kw) do ns[k] = v end end
    return ns
  end,
  raise_exception = function(msg) jfail("%s", py_str(msg)) end,
  strftime_now = function(f) return os.date(f) end,
  dict = function(kw) local d = {} if kw then for k, v in pairs(kw) do d[k] = v end end return d end,
}
M.filters, M.tests, M.globals = filters, tests, globals

---------------------------------------------------------------------------
-- JSON decoding that keeps the key order of objects (LPeg), for request
-- bodies and fixtures whose dicts reach tojson or items().

local json_value
do
  local jws = S(" \t\r\n") ^ 0
  local hex = R("09", "af", "AF")
  local utf8c = require("tide.utf8").encode
  local jesc = { ['"'] = '"', ["\\"] = "\\", ["/"] = "/", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t" }
  local function decode_str(s)
    s = s:gsub("\\u([dD][89abAB]%x%x)\\u([dD][c-fC-F]%x%x)", function(a, b)
      return utf8c(0x10000 + (tonumber(a, 16) - 0xD800) * 1024 + (tonumber(b, 16) - 0xDC00))
    end)
    s = s:gsub("\\u(%x%x%x%x)", function(h) return utf8c(tonumber(h, 16)) end)
    return (s:gsub("\\(.)", function(c) return jesc[c] or c end))
  end
  local str = P('"') * C(((P("\\") * (S('"\\/bfnrt') + P("u") * hex * hex * hex * hex)) + (1 - S('"\\'))) ^ 0) * P('"')
    / decode_str
  local num = C(P("-") ^ -1 * (P("0") + R("19") * R("09") ^ 0) * (P(".") * R("09") ^ 1) ^ -1
    * (S("eE") * S("+-") ^ -1 * R("09") ^ 1) ^ -1) / tonumber
  local function mkobj(...)
    local kv = { ... }
    local t, keys = {}, {}
    for i = 1, #kv, 2 do
      if t[kv[i]] == nil then keys[#keys + 1] = kv[i] end
      t[kv[i]] = kv[i + 1]
    end
    key_order[t] = keys
    return t
  end
  local function mkarr(...) return { ... } end
  json_value = P({
    "V",
    V = jws * (V("O") + V("A") + str + num + P("true") * lpeg.Cc(true) + P("false") * lpeg.Cc(false)
      + P("null") * lpeg.Cc(NONE)) * jws,
    O = P("{") * jws * (((str * jws * P(":") * V("V")) * (P(",") * jws * str * jws * P(":") * V("V")) ^ 0) ^ -1
      / mkobj) * P("}"),
    A = P("[") * jws * ((V("V") * (P(",") * V("V")) ^ 0) ^ -1 / mkarr) * P("]"),
  }) * -1
end

-- Decode JSON keeping object key order (null becomes jinja.none).
-- Returns the value or nil, err. Arrays with null holes are not supported.
function M.json_decode(s)
  local v = json_value:match(s)
  if v == nil then return nil, "jinja.json_decode: invalid JSON" end
  return v
end

---------------------------------------------------------------------------
-- Expression lexer (LPeg)

local ws = S(" \t\r\n") ^ 0
local name_start = R("az", "AZ") + P("_")
local name_char = name_start + R("09")
local tok_name = C(name_start * name_char ^ 0) / function(s) return { "name", s } end
local digits = R("09") ^ 1
local tok_num = C(digits * (P(".") * digits) ^ -1 * (S("eE") * S("+-") ^ -1 * digits) ^ -1)
  / function(s) return { "num", tonumber(s) } end
local escapes = { n = "\n", t = "\t", r = "\r", ["\\"] = "\\", ["'"] = "'", ['"'] = '"', ["0"] = "\0",
  b = "\b", f = "\f", v = "\v", a = "\a" }
local function unescape(s)
  s = s:gsub("\\u(%x%x%x%x)", function(h)
    local cp = tonumber(h, 16)
    if cp < 0x80 then return string.char(cp)
    elseif cp < 0x800 then return string.char(0xC0 + math.floor(cp / 64), 0x80 + cp % 64) end
    return string.char(0xE0 + math.floor(cp / 4096), 0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
  end)
  s = s:gsub("\\x(%x%x)", function(h) return string.char(tonumber(h, 16)) end)
  return (s:gsub("\\(.)", function(c) return escapes[c] or ("\\" .. c) end))
end
local function strlit(q) return P(q) * C(((P("\\") * P(1)) + (1 - P(q))) ^ 0) * P(q) end
local tok_str = (strlit("'") + strlit('"')) / function(s) return { "str", unescape(s) } end
local ops = { "//", "**", "==", "!=", "<=", ">=", "+", "-", "*", "/", "%", "~", "<", ">", "(", ")", "[", "]",
  "{", "}", ",", ".", ":", "|", "=" }
local tok_op
for _, o in ipairs(ops) do
  local p = P(o) / function() return { "op", o } end
  tok_op = tok_op and (tok_op + p) or p
end
local expr_lexer = Ct((ws * (tok_str + tok_num + tok_name + tok_op)) ^ 0) * ws * Cp()

local function lex_expr(src)
  local toks, pos = expr_lexer:match(src)
  if pos <= #src then jfail("unexpected character %q in expression %q", src:sub(pos, pos), src) end
  return toks
end

---------------------------------------------------------------------------
-- Expression parser -> AST

local Parser = {}
Parser.__index = Parser

local function new_parser(toks, src)
  return setmetatable({ toks = toks, i = 1, src = src }, Parser)
end

function Parser:peek(k) return self.toks[self.i + (k or 0)] end
function Parser:is(kind, val, k)
  local t = self:peek(k)
  return t and t[1] == kind and (val == nil or t[2] == val)
end
function Parser:next() local t = self.toks[self.i]; self.i = self.i + 1; return t end
function Parser:expect(kind, val)
  local t = self:next()
  if not t or t[1] ~= kind or (val ~= nil and t[2] ~= val) then
    jfail("expected %s in %q", val or kind, self.src)
  end
  return t
end
function Parser:accept(kind, val)
  if self:is(kind, val) then return self:next() end
end
function Parser:done() return self.i > #self.toks end

function Parser:expr()
  local e = self:or_expr()
  if self:is("name", "if") then
    self:next()
    local cond = self:or_expr()
    local other = { "lit", UNDEF }
    if self:accept("name", "else") then other = self:expr() end
    return { "cond", cond, e, other }
  end
  return e
end

function Parser:or_expr()
  local e = self:and_expr()
  while self:accept("name", "or") do e = { "or", e, self:and_expr() } end
  return e
end

function Parser:and_expr()
  local e = self:not_expr()
  while self:accept("name", "and") do e = { "and", e, self:not_expr() } end
  return e
end

function Parser:not_expr()
  if self:accept("name", "not") then return { "not", self:not_expr() } end
  return self:compare()
end

local cmp_ops = { ["=="] = true, ["!="] = true, ["<"] = true, [">"] = true, ["<="] = true, [">="] = true }

function Parser:compare()
  local e = self:math1()
  while true do
    local t = self:peek()
    if t and t[1] == "op" and cmp_ops[t[2]] then
      self:next()
      e = { "cmp", t[2], e, self:math1() }
    elseif self:is("name", "in") then
      self:next()
      e = { "in", e, self:math1() }
    elseif self:is("name", "not") and self:is("name", "in", 1) then
      self:next(); self:next()
      e = { "not", { "in", e, self:math1() } }
    else
      break
    end
  end
  return e
end

function Parser:math1()
  local e = self:concat()
  while self:is("op", "+") or self:is("op", "-") do
    local op = self:next()[2]
    e = { "bin", op, e, self:concat() }
  end
  return e
end

function Parser:concat()
  local e = self:math2()
  while self:accept("op", "~") do e = { "bin", "~", e, self:math2() } end
  return e
end

function Parser:math2()
  local e = self:pow()
  while self:is("op", "*") or self:is("op", "/") or self:is("op", "//") or self:is("op", "%") do
    local op = self:next()[2]
    e = { "bin", op, e, self:pow() }
  end
  return e
end

function Parser:pow()
  local e = self:unary()
  while self:accept("op", "**") do e = { "bin", "**", e, self:unary() } end
  return e
end

function Parser:unary(no_filter)
  local e
  if self:accept("op", "-") then e = { "neg", self:unary(true) }
  elseif self:accept("op", "+") then e = self:unary(true)
  else e = self:primary() end
  e = self:postfix(e)
  if not no_filter then e = self:filters(e) end
  return e
end

function Parser:args()
  -- after '(' ; returns positional list and kwargs map
  local args, kw = {}, nil
  if self:accept("op", ")") then return args, kw end
  repeat
    if self:is("name") and self:is("op", "=", 1) then
      local k = self:next()[2]
      self:next()
      kw = kw or {}
      kw[k] = self:expr()
    else
      args[#args + 1] = self:expr()
    end
  until not self:accept("op", ",")
  self:expect("op", ")")
  return args, kw
end

function Parser:postfix(e)
  while true do
    if self:accept("op", ".") then
      local t = self:next()
      if not t or (t[1] ~= "name" and t[1] ~= "num") then jfail("bad attribute in %q", self.src) end
      e = { "getattr", e, t[2] }
    elseif self:accept("op", "[") then
      local a, b, c
      local is_slice = false
      if not self:is("op", ":") then a = self:expr() end
      if self:accept("op", ":") then
        is_slice = true
        if not self:is("op", "]") and not self:is("op", ":") then b = self:expr() end
        if self:accept("op", ":") then
          if not self:is("op", "]") then c = self:expr() end
        end
      end
      self:expect("op", "]")
      if is_slice then e = { "slice", e, a, b, c } else e = { "getitem", e, a } end
    elseif self:accept("op", "(") then
      local args, kw = self:args()
      e = { "call", e, args, kw }
    else
      return e
    end
  end
end

function Parser:filters(e)
  while true do
    if self:accept("op", "|") then
      local name = self:expect("name")[2]
      local args, kw = {}, nil
      if self:accept("op", "(") then args, kw = self:args() end
      e = { "filter", name, e, args, kw }
    elseif self:is("name", "is") then
      self:next()
      local neg = self:accept("name", "not") ~= nil
      local t = self:next()
      if not t then jfail("missing test name in %q", self.src) end
      local name = t[2]
      if t[1] == "op" and (name == "==" or name == "!=") then name = name
      elseif t[1] ~= "name" then jfail("bad test in %q", self.src) end
      local args = {}
      if self:accept("op", "(") then args = self:args()
      elseif self:peek() and (self:is("str") or self:is("num") or (self:is("name") and not ({ ["and"] = 1, ["or"] = 1,
        ["else"] = 1, ["if"] = 1, ["in"] = 1, ["is"] = 1, ["not"] = 1 })[self:peek()[2]])) then
        args = { self:primary() }
      end
      e = { "test", name, e, args }
      if neg then e = { "not", e } end
    else
      return e
    end
  end
end

local consts = { ["true"] = true, ["True"] = true, ["false"] = false, ["False"] = false }

function Parser:primary()
  local t = self:next()
  if not t then jfail("unexpected end of expression %q", self.src) end
  if t[1] == "str" then
    local s = t[2]
    while self:is("str") do s = s .. self:next()[2] end
    return { "lit", s }
  elseif t[1] == "num" then
    return { "lit", t[2] }
  elseif t[1] == "name" then
    local n = t[2]
    if consts[n] ~= nil then return { "lit", consts[n] } end
    if n == "none" or n == "None" then return { "lit", NONE } end
    return { "var", n }
  elseif t[1] == "op" and t[2] == "(" then
    if self:accept("op", ")") then return { "tuple" } end
    local e = self:expr()
    if self:is("op", ",") then
      local items = { e }
      while self:accept("op", ",") do
        if self:is("op", ")") then break end
        items[#items + 1] = self:expr()
      end
      self:expect("op", ")")
      items[0] = "tuple"
      return { "list", items }
    end
    self:expect("op", ")")
    return e
  elseif t[1] == "op" and t[2] == "[" then
    local items = {}
    if not self:accept("op", "]") then
      repeat
        if self:is("op", "]") then break end
        items[#items + 1] = self:expr()
      until not self:accept("op", ",")
      self:expect("op", "]")
    end
    return { "list", items }
  elseif t[1] == "op" and t[2] == "{" then
    local pairs_ = {}
    if not self:accept("op", "}") then
      repeat
        if self:is("op", "}") then break end
        local k = self:expr()
        self:expect("op", ":")
        pairs_[#pairs_ + 1] = { k, self:expr() }
      until not self:accept("op", ",")
      self:expect("op", "}")
    end
    return { "dict", pairs_ }
  end
  jfail("unexpected %q in expression %q", tostring(t[2]), self.src)
end

local function parse_expr(src)
  local p = new_parser(lex_expr(src), src)
  local e = p:expr()
  if not p:done() then jfail("unexpected %q in expression %q", tostring(p:peek()[2]), src) end
  return e
end

---------------------------------------------------------------------------
-- Evaluation

local eval

local function new_scope(parent) return { vars = {}, parent = parent } end
local function lookup(scope, name)
  while scope do
    local v = scope.vars[name]
    if v ~= nil then return v end
    scope = scope.parent
  end
  return nil
end

local function call_method(obj, name, args, kw)
  if type(obj) == "string" then
    local m = str_methods[name]
    if not m then jfail("str has no method %q", name) end
    return m(obj, unpack(args))
  end
  if type(obj) == "table" and obj ~= UNDEF and not is_none(obj) then
    local f = rawget(obj, name)
    if type(f) == "function" then return f(unpack(args)) end
    if is_list(obj) and list_methods[name] then return list_methods[name](obj, unpack(args)) end
    if dict_methods[name] and (is_dict(obj) or next(obj) == nil) then return dict_methods[name](obj, unpack(args)) end
  end
  if obj == UNDEF then jfail("undefined value has no method %q", name) end
  jfail("object has no method %q", name)
end

local function index(obj, key)
  if type(obj) == "string" and type(key) == "number" then
    local c = chars(obj)
    if key < 0 then key = #c + key end
    local ch = c[key + 1]
    if ch == nil then jfail("string index out of range") end
    return ch
  end
  if type(obj) ~= "table" or obj == UNDEF or is_none(obj) then return UNDEF end
  if type(key) == "number" and is_list(obj) then
    if key < 0 then key = #obj + key end
    local v = obj[key + 1]
    if v == nil then return UNDEF end
    return v
  end
  local v = obj[key]
  if v == nil then return UNDEF end
  return v
end

local function slice(obj, a, b, c)
  local seq = type(obj) == "string" and chars(obj) or iterate(obj)
  local n = #seq
  c = c or 1
  if c == 0 then jfail("slice step cannot be zero") end
  local function norm(x, default)
    if x == nil or is_none(x) then return default end
    if x < 0 then x = x + n end
    return x
  end
  local out = {}
  if c > 0 then
    local lo, hi = math.max(0, norm(a, 0)), math.min(n, norm(b, n))
    for i = lo, hi - 1, c do out[#out + 1] = seq[i + 1] end
  else
    local lo, hi = math.min(n - 1, norm(a, n - 1)), norm(b, -1)
    if b ~= nil and not is_none(b) then hi = math.max(-1, hi) end
    for i = lo, hi + 1, c do out[#out + 1] = seq[i + 1] end
  end
  if type(obj) == "string" then return table.concat(out) end
  return out
end

local function arith(op, a, b)
  if op == "~" then return py_str(a) .. py_str(b) end
  if op == "+" then
    if type(a) == "string" and type(b) == "string" then return a .. b end
    if type(a) == "table" and type(b) == "table" then
      local out = {}
      for _, x in ipairs(a) do out[#out + 1] = x end
      for _, x in ipairs(b) do out[#out + 1] = x end
      return out
    end
    if type(a) == "number" and type(b) == "number" then return a + b end
    local function tn(v)
      if v == UNDEF then return "undefined" elseif is_none(v) then return "None" end
      return type(v) == "table" and (is_list(v) and "list" or "dict") or type(v)
    end
    jfail("unsupported operand types for +: %s and %s", tn(a), tn(b))
  end
  if op == "*" and type(a) == "string" and type(b) == "number" then return string.rep(a, b) end
  if type(a) ~= "number" or type(b) ~= "number" then jfail("unsupported operand types for %s", op) end
  if op == "-" then return a - b
  elseif op == "*" then return a * b
  elseif op == "/" then return a / b
  elseif op == "//" then return math.floor(a / b)
  elseif op == "%" then return a % b
  elseif op == "**" then return a ^ b end
end

local function compare(op, a, b)
  if op == "==" then return equal(a, b) end
  if op == "!=" then return not equal(a, b) end
  if type(a) ~= type(b) or (type(a) ~= "number" and type(a) ~= "string") then
    jfail("cannot compare %s and %s with %s", type(a), type(b), op)
  end
  if op == "<" then return a < b elseif op == ">" then return a > b
  elseif op == "<=" then return a <= b else return a >= b end
end

local function eval_args(args, kw, scope)
  local a = {}
  for i, x in ipairs(args) do a[i] = eval(x, scope) end
  local k
  if kw then
    k = {}
    for name, x in pairs(kw) do k[name] = eval(x, scope) end
  end
  return a, k
end

function eval(e, scope)
  local k = e[1]
  if k == "lit" then return e[2]
  elseif k == "var" then
    local v = lookup(scope, e[2])
    if v == nil then v = globals[e[2]] end
    if v == nil then return UNDEF end
    return v
  elseif k == "getattr" then
    local obj = eval(e[2], scope)
    return attr_of(obj, e[3])
  elseif k == "getitem" then
    return index(eval(e[2], scope), eval(e[3], scope))
  elseif k == "slice" then
    local obj = eval(e[2], scope)
    return slice(obj, e[3] and eval(e[3], scope), e[4] and eval(e[4], scope), e[5] and eval(e[5], scope))
  elseif k == "call" then
    local f = e[2]
    local args, kw = eval_args(e[3], e[4], scope)
    if f[1] == "getattr" then
      local obj = eval(f[2], scope)
      if type(obj) == "table" and getmetatable(obj) == Namespace then
        local m = rawget(obj, f[3])
        if type(m) == "function" then return m(unpack(args)) end
      end
      if kw and next(kw) then args[#args + 1] = setmetatable(kw, KW) end
      return call_method(obj, f[3], args, kw)
    end
    local fn = eval(f, scope)
    if type(fn) ~= "function" then jfail("%s is not callable", f[1] == "var" and f[2] or "value") end
    if f[1] == "var" and (f[2] == "namespace" or f[2] == "dict") then return fn(kw) end
    if kw and next(kw) then args[#args + 1] = setmetatable(kw, KW) end
    return fn(unpack(args))
  elseif k == "filter" then
    local fn = filters[e[2]]
    if not fn then jfail("unknown filter %q", e[2]) end
    local v = eval(e[3], scope)
    local args, kw = eval_args(e[4], e[5], scope)
    if kw then args[#args + 1] = setmetatable(kw, KW) end
    if e[2] == "tojson" then return fn(v, kw) end
    return fn(v, unpack(args))
  elseif k == "test" then
    local fn = tests[e[2]]
    if not fn then jfail("unknown test %q", e[2]) end
    local v = eval(e[3], scope)
    local args = eval_args(e[4], nil, scope)
    return fn(v, unpack(args))
  elseif k == "not" then return not truthy(eval(e[2], scope))
  elseif k == "and" then
    local a = eval(e[2], scope)
    if not truthy(a) then return a end
    return eval(e[3], scope)
  elseif k == "or" then
    local a = eval(e[2], scope)
    if truthy(a) then return a end
    return eval(e[3], scope)
  elseif k == "cond" then
    if truthy(eval(e[2], scope)) then return eval(e[3], scope) end
    return eval(e[4], scope)
  elseif k == "bin" then
    return arith(e[2], eval(e[3], scope), eval(e[4], scope))
  elseif k == "neg" then
    local v = eval(e[2], scope)
    if type(v) ~= "number" then jfail("bad operand for unary -") end
    return -v
  elseif k == "cmp" then
    return compare(e[2], eval(e[3], scope), eval(e[4], scope))
  elseif k == "in" then
    return contains(eval(e[3], scope), eval(e[2], scope))
  elseif k == "list" then
    local out = {}
    for i, x in ipairs(e[2]) do out[i] = eval(x, scope) end
    return out
  elseif k == "tuple" then
    return {}
  elseif k == "dict" then
    local out, keys = {}, {}
    for _, kv in ipairs(e[2]) do
      local key = eval(kv[1], scope)
      if out[key] == nil then keys[#keys + 1] = key end
      out[key] = eval(kv[2], scope)
    end
    key_order[out] = keys
    return out
  end
  jfail("bad expression node %s", tostring(k))
end

---------------------------------------------------------------------------
-- Template lexer: text and tags, whitespace control

-- tag: { kind = "text"|"var"|"block"|"comment", body, lstrip = "-"|"+"|nil, rstrip = ... }
local function lex_template(src)
  local items = {}
  local pos = 1
  local n = #src
  while pos <= n do
    local a = src:find("{[{%%#]", pos)
    if not a then
      items[#items + 1] = { kind = "text", body = src:sub(pos) }
      break
    end
    if a > pos then items[#items + 1] = { kind = "text", body = src:sub(pos, a - 1) } end
    local open = src:sub(a + 1, a + 1)
    local close = ({ ["{"] = "}}", ["%"] = "%}", ["#"] = "#}" })[open]
    local kind = ({ ["{"] = "var", ["%"] = "block", ["#"] = "comment" })[open]
    local bstart = a + 2
    local lmark
    local c = src:sub(bstart, bstart)
    if c == "-" or c == "+" then lmark = c; bstart = bstart + 1 end
    -- find the close, skipping string literals inside expressions
    local i = bstart
    local e
    if kind == "comment" then
      e = src:find("#}", i, true)
      if not e then jfail("unclosed comment") end
    else
      while i <= n do
        local ch = src:sub(i, i)
        if ch == "'" or ch == '"' then
          local j = i + 1
          while j <= n do
            local cj = src:sub(j, j)
            if cj == "\\" then j = j + 2
            elseif cj == ch then break
            else j = j + 1 end
          end
          i = j + 1
        elseif src:sub(i, i + 1) == close or ((ch == "-" or ch == "+") and src:sub(i + 1, i + 2) == close) then
          e = i
          break
        else
          i = i + 1
        end
      end
      if not e then jfail("unclosed tag starting at offset %d", a - 1) end
    end
    local rmark
    local body_end = e - 1
    local cc = src:sub(e, e)
    if (cc == "-" or cc == "+") and src:sub(e + 1, e + 2) == close then
      rmark = cc
      pos = e + 3
    else
      if kind == "comment" then
        local prev = src:sub(e - 1, e - 1)
        if (prev == "-" or prev == "+") and e - 1 >= bstart then rmark = prev; body_end = e - 2 end
      end
      pos = e + 2
    end
    items[#items + 1] = { kind = kind, body = src:sub(bstart, body_end), lmark = lmark, rmark = rmark }
  end
  -- whitespace control: '-' markers, trim_blocks, lstrip_blocks
  for _, it in ipairs(items) do if it.kind == "text" then it.orig = it.body end end
  for idx, it in ipairs(items) do
    if it.kind ~= "text" then
      local prev, nxt = items[idx - 1], items[idx + 1]
      if prev and prev.kind == "text" then
        if it.lmark == "-" then
          prev.body = prev.body:gsub("%s+$", "")
        elseif it.kind ~= "var" and it.lmark ~= "+" then
          -- lstrip_blocks: spaces/tabs between a line start (in the source) and the tag
          local orig = prev.orig
          if orig:find("\n[ \t]*$") or (idx - 1 == 1 and orig:find("^[ \t]*$")) then
            prev.body = prev.body:gsub("[ \t]*$", "")
          end
        end
      end
      if nxt and nxt.kind == "text" then
        if it.rmark == "-" then
          nxt.body = nxt.body:gsub("^%s+", "")
        elseif it.kind ~= "var" and it.rmark ~= "+" then
          -- trim_blocks: one newline after a block tag
          nxt.body = nxt.body:gsub("^\r?\n", "", 1)
        end
      end
    end
  end
  return items
end

---------------------------------------------------------------------------
-- Statements: parse into a tree

local function parse_template(src)
  -- Jinja drops one trailing newline of the source (keep_trailing_newline=False)
  src = src:gsub("\r?\n$", "", 1)
  local items = lex_template(src)
  local i = 1

  local function block_words(body)
    local w = body:match("^%s*(%a+)")
    return w, body:gsub("^%s*%a+", "", 1)
  end

  local parse_body

  local function parse_target(s)
    -- "a", "a, b", "ns.attr"
    local names = {}
    for part in s:gmatch("[^,]+") do
      local n = part:match("^%s*(.-)%s*$")
      if n:find("^[%a_][%w_]*$") then names[#names + 1] = n
      elseif n:find("^[%a_][%w_]*%.[%a_][%w_]*$") then names[#names + 1] = n
      elseif n:find("^%(") then
        n = n:gsub("[()]", "")
        names[#names + 1] = n
      else jfail("unsupported assignment target %q", s) end
    end
    return names
  end

  -- returns list of nodes, and the terminating block word + its rest
  function parse_body(stop)
    local nodes = {}
    while i <= #items do
      local it = items[i]
      i = i + 1
      if it.kind == "text" then
        if it.body ~= "" then nodes[#nodes + 1] = { "text", it.body } end
      elseif it.kind == "var" then
        nodes[#nodes + 1] = { "out", parse_expr(it.body) }
      elseif it.kind == "block" then
        local w, rest = block_words(it.body)
        if stop and stop[w] then return nodes, w, rest end
        if w == "if" then
          local node = { "if", branches = {} }
          local cond = parse_expr(rest)
          while true do
            local body, ew, erest = parse_body({ elif = true, ["else"] = true, endif = true })
            node.branches[#node.branches + 1] = { cond, body }
            if ew == "elif" then cond = parse_expr(erest)
            elseif ew == "else" then
              local eb, ew2 = parse_body({ endif = true })
              if ew2 ~= "endif" then jfail("missing endif") end
              node.branches[#node.branches + 1] = { nil, eb }
              break
            elseif ew == "endif" then break
            else jfail("missing endif") end
          end
          nodes[#nodes + 1] = node
        elseif w == "for" then
          local tgt, iter = rest:match("^%s*(.-)%s+in%s+(.*)$")
          if not tgt then jfail("bad for tag %q", it.body) end
          local names = parse_target(tgt)
          -- optional "if cond" filter (outside of brackets/strings)
          local p = new_parser(lex_expr(iter), iter)
          local iter_e = p:or_expr()
          local filter_e
          if p:accept("name", "if") then filter_e = p:expr() end
          local recursive = p:accept("name", "recursive")
          if recursive or not p:done() then jfail("unsupported for loop %q", it.body) end
          local body, ew = parse_body({ ["else"] = true, endfor = true })
          local else_body
          if ew == "else" then
            local eb, ew2 = parse_body({ endfor = true })
            if ew2 ~= "endfor" then jfail("missing endfor") end
            else_body = eb
          elseif ew ~= "endfor" then jfail("missing endfor") end
          nodes[#nodes + 1] = { "for", names, iter_e, body, else_body, filter_e }
        elseif w == "set" then
          local tgt, val = rest:match("^%s*([^=]-)%s*=%s*(.*)$")
          if tgt and not tgt:find("[%(%[]") then
            nodes[#nodes + 1] = { "set", parse_target(tgt), parse_expr(val) }
          else
            local name = rest:match("^%s*([%a_][%w_%.]*)%s*$")
            if not name then jfail("bad set tag %q", it.body) end
            local body, ew = parse_body({ endset = true })
            if ew ~= "endset" then jfail("missing endset") end
            nodes[#nodes + 1] = { "setblock", name, body }
          end
        elseif w == "macro" then
          local name, params = rest:match("^%s*([%a_][%w_]*)%s*%((.*)%)%s*$")
          if not name then jfail("bad macro tag %q", it.body) end
          local plist = {}
          for part in params:gmatch("[^,]+") do
            local pn, def = part:match("^%s*([%a_][%w_]*)%s*=%s*(.-)%s*$")
            if pn then plist[#plist + 1] = { pn, parse_expr(def) }
            else
              pn = part:match("^%s*([%a_][%w_]*)%s*$")
              if not pn then jfail("bad macro parameter %q", part) end
              plist[#plist + 1] = { pn }
            end
          end
          local body, ew = parse_body({ endmacro = true })
          if ew ~= "endmacro" then jfail("missing endmacro") end
          nodes[#nodes + 1] = { "macro", name, plist, body }
        elseif w == "break" or w == "continue" then
          nodes[#nodes + 1] = { w }
        elseif w == "raw" then
          local parts = {}
          while i <= #items do
            local r = items[i]
            i = i + 1
            if r.kind == "block" and block_words(r.body) == "endraw" then break end
            if r.kind == "text" then parts[#parts + 1] = r.body
            else
              local o = ({ var = "{{", block = "{%", comment = "{#" })[r.kind]
              local c = ({ var = "}}", block = "%}", comment = "#}" })[r.kind]
              parts[#parts + 1] = o .. (r.lmark or "") .. r.body .. (r.rmark or "") .. c
            end
          end
          nodes[#nodes + 1] = { "text", table.concat(parts) }
        elseif w == "generation" then
          local body, ew = parse_body({ endgeneration = true })
          if ew ~= "endgeneration" then jfail("missing endgeneration") end
          for _, nd in ipairs(body) do nodes[#nodes + 1] = nd end
        elseif w == "filter" then
          local fname = rest:match("^%s*([%a_][%w_]*)")
          local body, ew = parse_body({ endfilter = true })
          if ew ~= "endfilter" then jfail("missing endfilter") end
          nodes[#nodes + 1] = { "filterblock", fname, body }
        else
          jfail("unsupported tag %q", w or it.body)
        end
      end
    end
    if stop then
      local want = {}
      for k in pairs(stop) do want[#want + 1] = k end
      table.sort(want)
      jfail("unexpected end of template, expected %s", table.concat(want, " or "))
    end
    return nodes
  end
  return parse_body(nil)
end

---------------------------------------------------------------------------
-- Rendering

local BREAK, CONTINUE = {}, {}

local exec

local function assign(scope, names, value)
  if #names == 1 then
    local n = names[1]
    local obj, attr = n:match("^([%a_][%w_]*)%.([%a_][%w_]*)$")
    if obj then
      local o = lookup(scope, obj)
      if type(o) ~= "table" or getmetatable(o) ~= Namespace then
        jfail("cannot assign attribute on a non-namespace object %q", obj)
      end
      o[attr] = value
    else
      scope.vars[n] = value
    end
    return
  end
  local vals = iterate(value)
  for j, n in ipairs(names) do scope.vars[n] = vals[j] == nil and UNDEF or vals[j] end
end

local function exec_body(nodes, scope, out)
  for _, nd in ipairs(nodes) do
    local r = exec(nd, scope, out)
    if r then return r end
  end
end

function exec(nd, scope, out)
  local k = nd[1]
  if k == "text" then
    out[#out + 1] = nd[2]
  elseif k == "out" then
    out[#out + 1] = py_str(eval(nd[2], scope))
  elseif k == "if" then
    for _, br in ipairs(nd.branches) do
      if br[1] == nil or truthy(eval(br[1], scope)) then
        return exec_body(br[2], scope, out)
      end
    end
  elseif k == "for" then
    local seq = iterate(eval(nd[3], scope))
    if nd[6] then
      local filtered = {}
      for _, x in ipairs(seq) do
        local s2 = new_scope(scope)
        assign(s2, nd[2], x)
        if truthy(eval(nd[6], s2)) then filtered[#filtered + 1] = x end
      end
      seq = filtered
    end
    local n = #seq
    if n == 0 then
      if nd[5] then return exec_body(nd[5], scope, out) end
      return
    end
    for idx = 1, n do
      local s2 = new_scope(scope)
      assign(s2, nd[2], seq[idx])
      s2.vars.loop = setmetatable({
        index = idx, index0 = idx - 1, revindex = n - idx + 1, revindex0 = n - idx,
        first = idx == 1, last = idx == n, length = n,
        previtem = idx > 1 and seq[idx - 1] or UNDEF, nextitem = idx < n and seq[idx + 1] or UNDEF,
        cycle = function(...) local a = { ... } return a[(idx - 1) % #a + 1] end,
      }, Loop)
      local r = exec_body(nd[4], s2, out)
      if r == BREAK then break end
    end
  elseif k == "set" then
    assign(scope, nd[2], eval(nd[3], scope))
  elseif k == "setblock" then
    local buf = {}
    exec_body(nd[3], scope, buf)
    assign(scope, { nd[2] }, table.concat(buf))
  elseif k == "macro" then
    local params, body = nd[3], nd[4]
    scope.vars[nd[2]] = function(...)
      local args = { ... }
      local kw
      if getmetatable(args[#args]) == KW then kw = table.remove(args) end
      local s2 = new_scope(scope)
      for j, p in ipairs(params) do
        local v = args[j]
        if v == nil and kw then v = kw[p[1]] end
        if v == nil then v = p[2] and eval(p[2], scope) or UNDEF end
        s2.vars[p[1]] = v
      end
      local buf = {}
      exec_body(body, s2, buf)
      return table.concat(buf)
    end
  elseif k == "filterblock" then
    local buf = {}
    exec_body(nd[3], scope, buf)
    local fn = filters[nd[2]]
    if not fn then jfail("unknown filter %q", nd[2]) end
    out[#out + 1] = py_str(fn(table.concat(buf)))
  elseif k == "break" then return BREAK
  elseif k == "continue" then return CONTINUE
  end
end

local Template = {}
Template.__index = Template

-- Compile a template source. Returns a template or nil, err.
function M.compile(src)
  if type(src) ~= "string" then return nil, "jinja: template must be a string" end
  local ok, tree = pcall(parse_template, src)
  if not ok then
    if type(tree) == "table" and tree.jinja then return nil, "jinja: " .. tree.jinja end
    return nil, "jinja: " .. tostring(tree)
  end
  return setmetatable({ tree = tree, source = src }, Template)
end

-- Render with the variables in env. Returns the string or nil, err.
function Template:render(env)
  local scope = new_scope(nil)
  for k, v in pairs(env or {}) do scope.vars[k] = v end
  local out = {}
  local ok, err = pcall(exec_body, self.tree, scope, out)
  if not ok then
    if type(err) == "table" and err.jinja then return nil, "jinja: " .. err.jinja end
    return nil, "jinja: " .. tostring(err)
  end
  return table.concat(out)
end

-- One-shot helper.
function M.render(src, env)
  local t, err = M.compile(src)
  if not t then return nil, err end
  return t:render(env)
end

return M
