-- tide.ffi: the only door between Lua and C. Declares the generated cdef
-- (from the C headers) and returns the C namespace holding libtide: the
-- `tide` executable exports it (ffi.C); plain LuaJIT loads libtide.so.
local ffi = require "ffi"

ffi.cdef(require "tide.cdef")

local function has_core(ns)
  return pcall(function() return ns.tide_version end)
end

local C
if has_core(ffi.C) then
  C = ffi.C
else
  local dir = package.tide_lua_dir or (debug.getinfo(1, "S").source:match("^@(.*)/tide/ffi%.lua$") or "lua")
  local candidates = { os.getenv("TIDE_LIB"), dir .. "/../build/libtide.so", "libtide.so" }
  local err
  for _, p in ipairs(candidates) do
    if p then
      local ok, lib = pcall(ffi.load, p)
      if ok then C = lib break end
      err = lib
    end
  end
  if not C then error("tide: cannot load libtide: " .. tostring(err)) end
end

local M = { C = C, ffi = ffi }

-- One error record reused by the wrappers (a Lua state is single-threaded).
M.err = ffi.new("tide_err_t")

-- Message of the last failed call.
function M.errmsg()
  local e = M.err
  if e.msg[0] ~= 0 then return ffi.string(e.msg) end
  return ffi.string(C.tide_strerror(e.code))
end

-- Raise the last error as a programmer error (level 3: the caller's caller).
function M.raise(level)
  error(M.errmsg(), (level or 2) + 1)
end

return M
