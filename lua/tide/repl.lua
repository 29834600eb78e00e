-- tide.repl: the interactive REPL. Line editing and history through libedit;
-- expressions are printed (tensors and tables pretty-printed); multi-line
-- input continues while a chunk is incomplete; errors never end the session.
local F = require "tide.ffi"
local ffi, C = F.ffi, F.C

local M = {}

local function is_identifier(s) return type(s) == "string" and s:match("^[%a_][%w_]*$") ~= nil end

-- Pretty-print a value: tables sorted by key, nested with indentation, cycles marked.
function M.pretty(v, indent, seen)
  indent = indent or ""
  seen = seen or {}
  local tv = type(v)
  if tv == "string" then return string.format("%q", v) end
  if tv ~= "table" then return tostring(v) end
  local mt = getmetatable(v)
  if mt and mt.__tostring then return tostring(v) end
  if seen[v] then return "<cycle>" end
  seen[v] = true
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  if #keys == 0 then seen[v] = nil return "{}" end
  local n = #v
  table.sort(keys, function(a, b)
    local ta, tb = type(a), type(b)
    if ta ~= tb then return ta < tb end
    if ta == "number" or ta == "string" then return a < b end
    return tostring(a) < tostring(b)
  end)
  local parts = {}
  local inner = indent .. "  "
  local count = 0
  for _, k in ipairs(keys) do
    count = count + 1
    if count > 100 then parts[#parts + 1] = inner .. "... (" .. (#keys - 100) .. " more)" break end
    local ks
    if type(k) == "number" and k >= 1 and k <= n and k == math.floor(k) then ks = ""
    elseif is_identifier(k) then ks = k .. " = "
    else ks = "[" .. M.pretty(k, inner, seen) .. "] = " end
    parts[#parts + 1] = inner .. ks .. M.pretty(v[k], inner, seen)
  end
  seen[v] = nil
  local flat = {}
  local short = true
  for i, p in ipairs(parts) do
    flat[i] = p:gsub("^%s+", "")
    if flat[i]:find("\n") then short = false end
  end
  local one = "{ " .. table.concat(flat, ", ") .. " }"
  if short and #one <= 78 then return one end
  return "{\n" .. table.concat(parts, ",\n") .. "\n" .. indent .. "}"
end

local function print_results(ok, ...)
  local n = select("#", ...)
  if not ok then
    io.stderr:write(tostring((...)), "\n")
    return
  end
  local out = {}
  for i = 1, n do out[i] = M.pretty((select(i, ...))) end
  if n > 0 then io.write(table.concat(out, "\t"), "\n") end
end

local function traceback(e)
  if type(e) ~= "string" then e = M.pretty(e) end
  return debug.traceback(e, 2):gsub("\n[^\n]*tide/repl%.lua.*$", "")
end

-- Compile a line: first as an expression (`return ...`), then as a statement.
-- Returns chunk, or nil + "incomplete", or nil + error message.
local function compile(src)
  local chunk = loadstring("return " .. src, "=stdin")
  if chunk then return chunk end
  local err
  chunk, err = loadstring(src, "=stdin")
  if chunk then return chunk end
  if err:match("<eof>$") or err:match("'<eof>'") then return nil, "incomplete" end
  return nil, err
end

function M.history_path()
  local home = os.getenv("HOME")
  return os.getenv("TIDE_HISTORY") or (home and (home .. "/.tide_history")) or nil
end

local function readline(prompt)
  local line = C.tide_repl_readline(prompt)
  if line == nil then return nil end
  local s = ffi.string(line)
  C.tide_repl_free(line)
  return s
end

function M.run()
  local tide = require "tide"
  _G.tide = tide
  local tty = C.tide_repl_isatty() == 1
  local hist = M.history_path()
  if hist then C.tide_repl_history_load(hist) end
  if tty then
    io.write(string.format("Tide %s (LuaJIT) -- `tide` is loaded; help: tide.help(); exit: Ctrl-D\n", tide._VERSION))
  end
  local buffer = nil
  while true do
    local line = readline(buffer and ">> " or "> ")
    if line == nil then
      if tty then io.write("\n") end
      break
    end
    local src = buffer and (buffer .. "\n" .. line) or line
    if src:match("^%s*$") then
      buffer = nil
    else
      local chunk, err = compile(src)
      if chunk then
        buffer = nil
        C.tide_repl_add_history(src)
        print_results(xpcall(chunk, traceback))
        io.stdout:flush()
      elseif err == "incomplete" then
        buffer = src
      else
        buffer = nil
        C.tide_repl_add_history(src)
        io.stderr:write(err, "\n")
      end
    end
  end
  if hist then C.tide_repl_history_save(hist) end
  return 0
end

return M
