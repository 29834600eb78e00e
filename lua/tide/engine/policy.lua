-- tide.engine.policy: scheduling policies. A policy orders requests: the
-- scheduler serves running requests in this order first (decodes and the
-- next chunks of prefills), then admits waiting ones in this order while the
-- token budget, the sequence cap and the KV blocks allow; when blocks run out
-- it preempts from the end of the order. Operators may pass their own
-- `less(a, b)` as engine option `policy`.
local M = {}

-- First come, first served.
function M.fcfs(a, b) return a.arrival < b.arrival end

-- Higher `priority` first, then arrival.
function M.priority(a, b)
  local pa, pb = a.priority or 0, b.priority or 0
  if pa ~= pb then return pa > pb end
  return a.arrival < b.arrival
end

function M.get(p)
  if p == nil then return M.fcfs end
  if type(p) == "function" then return p end
  local f = M[p]
  if type(f) ~= "function" or p == "get" then return nil, "engine: unknown policy '" .. tostring(p) .. "' (fcfs, priority)" end
  return f
end

return M
