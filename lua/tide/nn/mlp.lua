-- nn.MLP: the SwiGLU feed-forward down(silu(gate(x)) * up(x)).
local T = require "tide.tensor"
local Linear = require "tide.nn.linear"

local MLP = {}
MLP.__index = MLP

function MLP.new(gate_w, up_w, down_w)
  return setmetatable({ gate = Linear.new(gate_w), up = Linear.new(up_w), down = Linear.new(down_w),
    hidden = gate_w:shape()[1], keys = {} }, MLP)
end

-- x (n, dim) -> (n, dim) in workspace slot key (or out).
function MLP:forward(ws, key, x, out)
  local k = self.keys[key]
  if not k then
    k = { key .. ".g", key .. ".u" }
    self.keys[key] = k
  end
  local g = self.gate:forward(ws, k[1], x)
  local u = self.up:forward(ws, k[2], x)
  ws.op.swiglu(g, g, u)
  return self.down:forward(ws, key, g, out)
end

-- Same with explicit scratch (used by MoE experts over row ranges).
function MLP:forward_into(out, x, g, u)
  T.op.matmul(g, x, self.gate.weight)
  T.op.matmul(u, x, self.up.weight)
  T.op.swiglu(g, g, u)
  T.op.matmul(out, g, self.down.weight)
  return out
end

-- Cost over n rows: gate and up GEMMs, swiglu, down GEMM (as forward).
function MLP:cost(rec, name, n)
  self.gate:cost(rec, name .. ".gate", n)
  self.up:cost(rec, name .. ".up", n)
  rec:elt(name .. ".swiglu", n * self.hidden, 4)
  self.down:cost(rec, name .. ".down", n)
end

return MLP
