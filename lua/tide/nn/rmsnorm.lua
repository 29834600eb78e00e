-- nn.RMSNorm: y = x / sqrt(mean(x^2) + eps) * w over the last dimension.
local T = require "tide.tensor"

local RMSNorm = {}
RMSNorm.__index = RMSNorm

function RMSNorm.new(weight, eps)
  return setmetatable({ weight = weight, eps = eps or 1e-6, dim = weight:numel() }, RMSNorm)
end

-- x (n, dim), may be a row-strided view; out contiguous (workspace key or given).
function RMSNorm:forward(ws, key, x, out)
  out = out or ws:get(key, tonumber(x._p.shape[0]), self.dim)
  T.op.rmsnorm(out, x, self.weight, self.eps)
  return out
end

-- Cost over n rows: read x, write y (elementwise, ~4 flops per element).
function RMSNorm:cost(rec, name, n)
  rec:elt(name, n * self.dim, 4)
end

return RMSNorm
