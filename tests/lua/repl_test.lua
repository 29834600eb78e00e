-- The REPL as a person uses it: expressions print, multi-line input
-- continues, errors do not end the session; under tmux (a real terminal)
-- the up arrow recalls history and Ctrl-D exits.
local H = require "helpers"

local T = {}
local tide_bin = H.tide
local sh, q = H.sh, H.q

function T.piped_session_prints_values_and_survives_errors()
  local dir = H.tmpdir()
  local input = table.concat({
    "x = 1 + 2",
    "x",
    "function f(a)",
    "  return a * 2",
    "end",
    "f(21)",
    "error('boom')",
    "{1, 2, {a = 3}}",
    "t = tide.tensor({{1,2},{3,4}})",
    "t:matmul(t)",
    "'still here'",
  }, "\n") .. "\n"
  local f = io.open(dir .. "/in.txt", "w")
  f:write(input)
  f:close()
  local out, code = sh("HOME=" .. q(dir) .. " " .. q(tide_bin) .. " < " .. q(dir .. "/in.txt"))
  H.eq(code, 0, "exit code; output:\n" .. out)
  H.truthy(out:find("\n?3\n"), "x printed: " .. out)
  H.truthy(out:find("42", 1, true), "multi-line function: " .. out)
  H.truthy(out:find("boom", 1, true), "error shown: " .. out)
  H.truthy(out:find("{ 1, 2, { a = 3 } }", 1, true), "table pretty-printed: " .. out)
  H.truthy(out:find("[7, 10]", 1, true) and out:find("[15, 22]", 1, true), "matmul printed: " .. out)
  H.truthy(out:find('"still here"', 1, true), "session survived: " .. out)
  os.execute("rm -rf " .. q(dir))
end

local function have_tmux() return os.execute("command -v tmux >/dev/null 2>&1") == 0 end

function T.tmux_session_history_and_ctrl_d()
  if not have_tmux() then
    print("  (skipped: tmux not installed)")
    return
  end
  local dir = H.tmpdir()
  local sess = "tide_repl_test_" .. tostring(os.time()) .. tostring(math.random(1e6))
  local tmux = "tmux -L " .. sess
  local function keys(...)
    local parts = {}
    for i = 1, select("#", ...) do parts[i] = q(select(i, ...)) end
    os.execute(tmux .. " send-keys -t " .. sess .. " " .. table.concat(parts, " "))
  end
  local function screen() return (sh(tmux .. " capture-pane -p -t " .. sess)) end
  local function wait_for(pattern, what)
    for _ = 1, 300 do -- up to 30 s: the machine may be busy
      local s = screen()
      if s:find(pattern, 1, true) then return s end
      os.execute("sleep 0.1")
    end
    error("timed out waiting for " .. what .. "; screen:\n" .. screen())
  end
  local cmd = "env HOME=" .. q(dir) .. " " .. q(tide_bin) .. "; echo TIDE_EXITED_$?; sleep 30"
  os.execute(tmux .. " new-session -d -s " .. sess .. " -x 100 -y 30 " .. q(cmd))
  local ok, err = pcall(function()
    wait_for("Ctrl-D", "the banner")
    os.execute("sleep 0.2")
    keys("t = tide.tensor({{1,2},{3,4}})", "Enter")
    keys("t:matmul(t)", "Enter")
    wait_for("[15, 22]", "the matmul result")
    keys("Up")
    -- the recalled line appears as the last non-blank line of the screen
    local last
    for _ = 1, 200 do
      last = nil
      for line in screen():gmatch("[^\n]+") do if line:find("%S") then last = line end end
      if last and last:find("> t:matmul(t)", 1, true) then break end
      os.execute("sleep 0.1")
    end
    H.truthy(last and last:find("> t:matmul(t)", 1, true), "up arrow recalls the last line: " .. tostring(last))
    keys("C-u")
    keys("C-d")
    wait_for("TIDE_EXITED_0", "exit on Ctrl-D")
  end)
  os.execute(tmux .. " kill-server >/dev/null 2>&1")
  local hist = io.open(dir .. "/.tide_history")
  local htext = hist and hist:read("*a") or ""
  if hist then hist:close() end
  os.execute("rm -rf " .. q(dir))
  if not ok then error(err, 0) end
  H.truthy(htext:find("t:matmul(t)", 1, true), "history saved to ~/.tide_history")
end

return T
