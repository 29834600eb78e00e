-- nn.Linear: y (n, out) = x (n, in) @ W^T, W (out, in) in its stored dtype
-- (f32/bf16/f16, or FP8 with block scales attached); no bias.
local T = require "tide.tensor"

local Linear = {}
Linear.__index = Linear

function Linear.new(weight)
  local s = weight:shape()
  return setmetatable({ weight = weight, out_features = s[1], in_features = s[2] }, Linear)
end

-- out: a workspace tensor named key (or the given out tensor).
function Linear:forward(ws, key, x, out)
  out = out or ws:get(key, tonumber(x._p.shape[0]), self.out_features)
  ws.op.matmul(out, x, self.weight)
  return out
end

-- Cost of y = x @ W^T for n rows, recorded as one GEMM (tide.plan.cost):
-- flops 2 n out in, the weight read once, x and y moved once.
function Linear:cost(rec, name, n)
  rec:gemm(name, n, self.out_features, self.in_features)
end

return Linear
