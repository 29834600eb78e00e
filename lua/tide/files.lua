-- Whole-file helpers for the Lua side (reports, traces, written checkpoints).
local M = {}

-- Write s to path (replacing it); true, or nil and the error.
function M.write(path, s)
  local f, e = io.open(path, "wb")
  if not f then return nil, e end
  local ok, we = f:write(s)
  f:close()
  if not ok then return nil, we end
  return true
end

return M
