-- tide.parallel.pd: prefill/decode disaggregation. Prefill ranks run the
-- prompt of a request through the model, then send its KV blocks (for
-- DeepSeek the MLA latent blocks of every layer) and the logits of the last
-- prompt token to a decode rank, which adopts them into its own paged cache
-- and carries on decoding as if it had prefilled itself.
--
--   local pd = require "tide.parallel.pd"
--   local plan = assert(pd.apply(model, world, { prefill = 1, decode = 3 }))
--   if plan.role == "prefill" then plan:prefill(ids, dest_world_rank, tag)
--   else plan:expect(src_world_rank, tag); model:generate(ids, opts) end
--   plan:finish()          -- waits for the prefill sends
--
-- Wire format of one request (one message per request and tag): int64
-- header {n_tok, n_blocks, block_bytes_total, vocab}, the blocks of layer 1
-- (K, then V where the layer has a separate V), layer 2, ..., then the f32
-- logits row. plan.stats: requests, kv_bytes, send/recv seconds.
local ffi = require "ffi"
local mesh = require "tide.parallel.mesh"
local clock = require("tide.generate").clock

local M = {}

local Plan = {}
Plan.__index = Plan

-- Per layer the cache tensors whose blocks travel (the main layers: MTP
-- heads' cache layers are not filled by a prefill).
local function block_tensors(kv, n_main)
  local t = {}
  for l = 1, math.min(kv.n_layer, n_main) do
    t[#t + 1] = kv.k[l]
    local v = kv.v[l]
    if v and v:is_contiguous() and v._p.data ~= kv.k[l]._p.data then t[#t + 1] = v end
  end
  return t
end

-- spec: { prefill = P, decode = D }: the first P ranks prefill.
function M.apply(model, comm, spec)
  local roles, err = mesh.roles(comm, { { "prefill", spec.prefill or 1 }, { "decode", spec.decode or comm:size() - 1 } })
  if not roles then return nil, err end
  local self = setmetatable({ comm = comm, model = model, role = roles.role, index = roles.index, roles = roles,
    n_prefill = roles.sizes.prefill, n_decode = roles.sizes.decode, pending = {},
    stats = { requests = 0, kv_bytes = 0, send_s = 0, recv_s = 0, prefill_s = 0 } }, Plan)
  if self.role == "decode" then
    local run_step = model.run_step
    model.run_step = function(m, ctx, ids, seqs, counts, want, opts)
      local inc = self.incoming
      if inc and #seqs == 1 then
        self.incoming = nil
        return self:receive(m, ctx, seqs[1], counts[1], inc)
      end
      return run_step(m, ctx, ids, seqs, counts, want, opts)
    end
  end
  return self
end

-- World rank of the prefill / decode rank serving request i (1-based).
function Plan:prefill_rank(i) return (i - 1) % self.n_prefill end
function Plan:decode_rank(i) return self.n_prefill + (i - 1) % self.n_decode end

local function block_bytes(t, kv) return t:nbytes() / kv.n_blocks end

-- Prefill ids (a list) and send the request to world rank dest (non-blocking).
function Plan:prefill(ids, dest, tag)
  local m = self.model
  local kv = m:kv_cache()
  local seq = assert(kv:seq_new())
  local t0 = clock()
  local logits = assert(m:step({ seq }, { ids }, "last"))
  local t1 = clock()
  local blocks = assert(kv:seq_table(seq))
  local tens = block_tensors(kv, #self.model.arch.layers)
  local per = 0
  for _, t in ipairs(tens) do per = per + block_bytes(t, kv) end
  local V = m.n_vocab
  local kvb = per * #blocks
  local total = 32 + kvb + V * 4
  local buf = ffi.new("uint8_t[?]", total)
  local h = ffi.cast("int64_t*", buf)
  h[0], h[1], h[2], h[3] = #ids, #blocks, kvb, V
  local off = 32
  for _, t in ipairs(tens) do
    local bb = block_bytes(t, kv)
    local base = ffi.cast("uint8_t*", t._p.data)
    for _, b in ipairs(blocks) do
      ffi.copy(buf + off, base + b * bb, bb)
      off = off + bb
    end
  end
  ffi.copy(buf + off, logits._p.data, V * 4)
  logits:free()
  kv:seq_free(seq)
  local req = assert(self.comm:isend(buf, dest, tag, total))
  self.pending[#self.pending + 1] = { req = req, buf = buf }
  local st = self.stats
  st.requests, st.kv_bytes = st.requests + 1, st.kv_bytes + kvb
  st.prefill_s, st.send_s = st.prefill_s + (t1 - t0), st.send_s + (clock() - t1)
  return kvb
end

-- The next prefill step of this decode rank comes from world rank src.
function Plan:expect(src, tag) self.incoming = { src = src, tag = tag } end

-- run_step replacement for an incoming request: the cache step has given
-- seq its blocks; fill them and return the prefill rank's logits.
function Plan:receive(m, ctx, seq, n_tok, inc)
  local kv = ctx.kv
  local t0 = clock()
  local blocks = assert(kv:seq_table(seq))
  local tens = block_tensors(kv, #self.model.arch.layers)
  local per = 0
  for _, t in ipairs(tens) do per = per + block_bytes(t, kv) end
  local V = m.n_vocab
  local kvb = per * #blocks
  local total = 32 + kvb + V * 4
  local buf = ffi.new("uint8_t[?]", total)
  local ok, err = self.comm:recv(buf, inc.src, inc.tag, total)
  if not ok then error("pd: receiving a request: " .. tostring(err), 0) end
  local h = ffi.cast("int64_t*", buf)
  if tonumber(h[0]) ~= n_tok or tonumber(h[1]) ~= #blocks or tonumber(h[2]) ~= kvb or tonumber(h[3]) ~= V then
    error(string.format("pd: request of %d tokens / %d blocks does not match the decode rank's %d / %d",
      tonumber(h[0]), tonumber(h[1]), n_tok, #blocks), 0)
  end
  local off = 32
  for _, t in ipairs(tens) do
    local bb = block_bytes(t, kv)
    local base = ffi.cast("uint8_t*", t._p.data)
    for _, b in ipairs(blocks) do
      ffi.copy(base + b * bb, buf + off, bb)
      off = off + bb
    end
  end
  local logits = ctx.ws:get("logits", 1, V)
  ffi.copy(logits._p.data, buf + off, V * 4)
  local st = self.stats
  st.requests, st.kv_bytes, st.recv_s = st.requests + 1, st.kv_bytes + kvb, st.recv_s + (clock() - t0)
  return logits, nil
end

-- Wait for this rank's outstanding sends.
function Plan:finish()
  for _, p in ipairs(self.pending) do
    local ok, err = p.req:wait()
    if not ok then return nil, err end
  end
  self.pending = {}
  return true
end

return M
