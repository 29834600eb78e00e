-- nn.Embedding: rows of a (vocab, dim) table, converted to f32.
local T = require "tide.tensor"

local Embedding = {}
Embedding.__index = Embedding

function Embedding.new(weight)
  local s = weight:shape()
  return setmetatable({ weight = weight, n_vocab = s[1], dim = s[2] }, Embedding)
end

-- ids: i32 tensor (n) -> (n, dim)
function Embedding:forward(ws, key, ids, out)
  out = out or ws:get(key, tonumber(ids._p.shape[0]), self.dim)
  T.op.get_rows(out, self.weight, ids)
  return out
end

-- Cost of gathering n rows (no flops; one row of the table read per token).
function Embedding:cost(rec, name, n)
  rec:elt(name, n * self.dim, 0)
end

return Embedding
