-- Assertion helpers for the Lua tests. Each raises with a message naming
-- the expected and actual values.
local H = {}

local function fmt(v)
  if type(v) == "table" then
    local ok, s = pcall(function() return require("tide.repl").pretty(v) end)
    return ok and s or tostring(v)
  end
  return tostring(v)
end

function H.eq(actual, expected, what)
  if actual ~= expected then
    error(string.format("%s: expected %s, got %s", what or "eq", fmt(expected), fmt(actual)), 2)
  end
end

local function deep_eq(a, b)
  if type(a) ~= type(b) then return false end
  if type(a) ~= "table" then return a == b end
  for k, v in pairs(a) do if not deep_eq(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end
H.deep_eq = deep_eq

function H.same(actual, expected, what)
  if not deep_eq(actual, expected) then
    error(string.format("%s: expected %s, got %s", what or "same", fmt(expected), fmt(actual)), 2)
  end
end

function H.near(actual, expected, tol, what)
  tol = tol or 1e-6
  if type(actual) == "table" then
    H.eq(#actual, #expected, (what or "near") .. " (length)")
    for i = 1, #expected do H.near(actual[i], expected[i], tol, (what or "near") .. "[" .. i .. "]") end
    return
  end
  if not (math.abs(actual - expected) <= tol) then
    error(string.format("%s: expected %.9g, got %.9g (tol %g)", what or "near", expected, actual, tol), 2)
  end
end

function H.truthy(v, what)
  if not v then error((what or "expected a true value") .. ", got " .. fmt(v), 2) end
  return v
end

-- f(...) must raise an error whose message contains `pattern` (plain find).
function H.raises(pattern, f, ...)
  local ok, e = pcall(f, ...)
  if ok then error("expected an error matching '" .. pattern .. "', got success", 2) end
  if not tostring(e):find(pattern, 1, true) then
    error("expected an error matching '" .. pattern .. "', got: " .. tostring(e), 2)
  end
  return e
end

-- v, err = f(...): must be nil plus a message containing `pattern`.
function H.fails(pattern, v, e)
  if v ~= nil then error("expected nil, err; got " .. fmt(v), 2) end
  if not tostring(e):find(pattern, 1, true) then
    error("expected an error matching '" .. pattern .. "', got: " .. tostring(e), 2)
  end
  return e
end

-- Shell-quote a string.
function H.q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- Run a shell command; returns its output (stdout+stderr) and exit code.
function H.sh(cmd)
  local p = io.popen("(" .. cmd .. ") 2>&1; echo \"__EXIT:$?\"")
  local out = p:read("*a")
  p:close()
  local code = tonumber(out:match("__EXIT:(%d+)%s*$"))
  return (out:gsub("__EXIT:%d+%s*$", "")), code
end

-- The tide executable running the tests (tests/lua/run.lua is run by it).
H.tide = (arg and arg[-1]) or "./tide"

-- MPI runs for the parallel tests: true when mpirun is installed, and a
-- launcher `H.mpirun(opts, np, args)` running `tide ARGS` on np ranks
-- (oversubscribed, allowed as root, 60 s limit) -> output, exit code.
function H.have_mpirun()
  local _, code = H.sh("command -v mpirun")
  return code == 0
end
H.MPIRUN = "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 ASAN_OPTIONS=detect_leaks=0 "
  .. "timeout 60 mpirun --oversubscribe "
function H.mpirun(opts, np, args)
  return H.sh(H.MPIRUN .. opts .. " -np " .. np .. " " .. H.q(H.tide) .. " " .. args .. " 2>&1")
end

-- A fresh temporary directory (removed at exit by the OS's tmp cleaning).
function H.tmpdir()
  local p = io.popen("mktemp -d")
  local d = p:read("*l")
  p:close()
  return d
end

return H
