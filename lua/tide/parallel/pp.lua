-- tide.parallel.pp: pipeline parallelism, applied to a loaded model:
--
--   local plan = assert(require("tide.parallel.pp").apply(model, comm, { micro_batches = 4 }))
--
-- Stage s of pp (= comm's ranks) runs a contiguous share of the decoder
-- layers (the first n_layer % pp stages one more). Every stage steps the
-- same sequences in lockstep: stage 0 embeds the tokens and runs its layers,
-- each stage sends its hidden states (n_tok, dim) to the next, and the last
-- stage sends the final hidden states back to every other stage, so all of
-- them compute the same logits and sample the same tokens. Each stage only
-- touches the KV cache layers of its own layers.
--
-- Micro-batches (opts.micro_batches = M > 1): the step's tokens are cut into
-- M contiguous ranges of about equal size (a range may end inside a
-- sequence: its later tokens come in a later micro-batch, as a chunked
-- prefill would feed them, and attend to the earlier ones already in the
-- cache). A stage runs its layers on micro-batch m and posts it to the next
-- stage (isend) before starting m + 1, so with P stages up to P micro-batches
-- are in flight: a step costs about (M + P - 1) / M stage-times instead of P.
-- M = 1 is the unsplit step (the same ops in the same order as one process).
local ffi = require "ffi"

local M = {}

local TAG = 77

-- Token ranges of about n / k tokens each: { {t0, t1}, ... } (0-based, t1 exclusive).
function M.ranges(n, k)
  k = math.max(1, math.min(k, n))
  local out, t0 = {}, 0
  for i = 1, k do
    local t1 = math.floor(n * i / k)
    if t1 > t0 then out[#out + 1] = { t0, t1 } end
    t0 = t1
  end
  return out
end

-- The ctx of tokens [t0, t1) of ctx's batch: a sub-batch over the same KV
-- cache (its sequences re-indexed from 0, block table rows and positions
-- shared), the positions and per-sequence context lengths of those tokens.
local function sub_ctx(ctx, t0, t1, keep)
  local b = ctx.batch
  local s0, s1 = b.tok_seq[t0], b.tok_seq[t1 - 1]
  local n, ns = t1 - t0, s1 - s0 + 1
  local seq = ffi.new("int32_t[?]", n)
  local L = {}
  for t = t0, t1 - 1 do
    local s = b.tok_seq[t] - s0
    seq[t - t0] = s
    local len = b.tok_pos[t] + 1
    if not L[s] or len > L[s] then L[s] = len end
  end
  local sb = ffi.new("tide_batch_t")
  sb.n_tok, sb.n_seq, sb.max_blocks, sb.block_size = n, ns, b.max_blocks, b.block_size
  sb.tok_seq, sb.tok_pos, sb.block_table = seq, b.tok_pos + t0, b.block_table + s0 * b.max_blocks
  keep[#keep + 1] = seq
  local c = {}
  for k, v in pairs(ctx) do c[k] = v end
  c.batch, c.pos, c.seq_ctx_len = sb, ctx.pos:narrow(1, t0 + 1, n), L
  return c
end
M.sub_ctx = sub_ctx

function M.apply(model, comm, opts)
  opts = opts or {}
  local pp, s = comm:size(), comm:rank()
  local arch = model.arch
  local n = #arch.layers
  if pp > n then return nil, string.format("pipeline parallelism: %d stages for %d layers", pp, n) end
  local mb = opts.micro_batches or 1
  if type(mb) ~= "number" or mb < 1 or mb ~= math.floor(mb) then
    return nil, "pipeline parallelism: micro_batches must be a positive integer, got " .. tostring(mb)
  end
  local base, extra = math.floor(n / pp), n % pp
  local lo = s * base + math.min(s, extra) + 1
  local hi = lo + base - 1 + (s < extra and 1 or 0)
  local layer_forward = require("tide.models.llama").layer_forward
  local plan = { comm = comm, pp = pp, stage = s, first = lo, last = hi, bytes = 0, micro_batches = mb, steps = 0,
    in_flight = 0 }
  local function xfer(ok, err)
    if not ok then error("pp: " .. tostring(err), 0) end
    return ok
  end
  arch.forward_hidden = function(self, ctx, ids)
    local x = self.embed:forward(ctx.ws, "x", ids)
    local nb = x:nbytes()
    local n_tok = tonumber(ids._p.shape[0])
    local rg = mb > 1 and M.ranges(n_tok, mb) or { { 0, n_tok } }
    local keep, sends = {}, {}
    plan.steps = plan.steps + 1
    for _, r in ipairs(rg) do
      local t0, t1 = r[1], r[2]
      local xm = #rg == 1 and x or x:narrow(1, t0 + 1, t1 - t0)
      local c = #rg == 1 and ctx or sub_ctx(ctx, t0, t1, keep)
      if s > 0 then xfer(comm:recv(xm, s - 1, TAG)) end
      for i = lo, hi do layer_forward(c, self.layers[i], i, xm) end
      if s < pp - 1 then
        sends[#sends + 1] = xfer(comm:isend(xm, s + 1, TAG))
        plan.bytes = plan.bytes + xm:nbytes()
      end
    end
    plan.in_flight = math.max(plan.in_flight, math.min(#rg, pp))
    for _, q in ipairs(sends) do xfer(q:wait()) end
    if s < pp - 1 then
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
