-- tide.parallel.pp: pipeline parallelism, applied to a loaded model:
--
--   local plan = assert(require("tide.parallel.pp").apply(model, comm))
--
-- Stage s of pp (= comm's ranks) runs a contiguous share of the decoder
-- layers (the first n_layer % pp stages one more). Every stage steps the
-- same sequences in lockstep: stage 0 embeds the tokens and runs its layers,
-- each stage sends its hidden states (n_tok, dim) to the next with
-- send/recv, and the last stage sends the final hidden states back to every
-- other stage, so all of them compute the same logits and sample the same
-- tokens. Each stage only touches the KV cache layers of its own layers.
-- (One micro-batch in flight: a step's batch is not split.)
local M = {}

local TAG = 77

function M.apply(model, comm)
  local pp, s = comm:size(), comm:rank()
  local arch = model.arch
  local n = #arch.layers
  if pp > n then return nil, string.format("pipeline parallelism: %d stages for %d layers", pp, n) end
  local base, extra = math.floor(n / pp), n % pp
  local lo = s * base + math.min(s, extra) + 1
  local hi = lo + base - 1 + (s < extra and 1 or 0)
  local layer_forward = require("tide.models.llama").layer_forward
  local plan = { comm = comm, pp = pp, stage = s, first = lo, last = hi, bytes = 0 }
  local function xfer(ok, err)
    if not ok then error("pp: " .. tostring(err), 0) end
  end
  arch.forward_hidden = function(self, ctx, ids)
    local x = self.embed:forward(ctx.ws, "x", ids)
    local nb = x:nbytes()
    if s > 0 then xfer(comm:recv(x, s - 1, TAG)) end
    for i = lo, hi do layer_forward(ctx, self.layers[i], i, x) end
    if s < pp - 1 then
      xfer(comm:send(x, s + 1, TAG))
      plan.bytes = plan.bytes + nb
      xfer(comm:recv(x, pp - 1, TAG + 1))
    else
      for d = 0, pp - 2 do
        xfer(comm:send(x, d, TAG + 1))
        plan.bytes = plan.bytes + nb
      end
    end
    return x
  end
  plan.remove = function() arch.forward_hidden = nil end
  return plan
end

return M
