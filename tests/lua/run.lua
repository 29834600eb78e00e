-- Lua test runner: runs tests/lua/*_test.lua (or the files given), prints a
-- line per test and ends with `N passed, N failed`. A test file returns a
-- table mapping test names to functions; helpers are in tests/lua/helpers.lua.
-- usage: tide run tests/lua/run.lua [FILE_test.lua ...] [--filter PATTERN]
local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "tests/lua"
package.path = here .. "/?.lua;" .. package.path

local files, filter = {}, nil
local i = 1
while arg[i] do
  if arg[i] == "--filter" then filter = arg[i + 1]; i = i + 1
  else files[#files + 1] = arg[i] end
  i = i + 1
end
if #files == 0 then
  local p = io.popen('ls "' .. here .. '"/*_test.lua 2>/dev/null')
  for f in p:lines() do files[#files + 1] = f end
  p:close()
end

local passed, failed = 0, 0
local clock = os.clock
for _, file in ipairs(files) do
  local chunk, err = loadfile(file)
  local tests = chunk and select(2, pcall(chunk))
  if not chunk or type(tests) ~= "table" then
    print("FAIL " .. file .. ": cannot load: " .. tostring(err or tests))
    failed = failed + 1
  else
    local names = {}
    for name in pairs(tests) do names[#names + 1] = name end
    table.sort(names)
    for _, name in ipairs(names) do
      if not filter or name:find(filter) then
        local t0 = clock()
        local ok, e = xpcall(tests[name], debug.traceback)
        local label = file:match("([^/]*)%.lua$") .. "." .. name
        if ok then
          passed = passed + 1
          print(string.format("ok   %s (%.2fs)", label, clock() - t0))
        else
          failed = failed + 1
          print("FAIL " .. label .. ": " .. tostring(e))
        end
        collectgarbage()
      end
    end
  end
end
print(string.format("%d passed, %d failed", passed, failed))
return failed == 0 and 0 or 1
