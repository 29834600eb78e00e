-- tide.engine.spec: MTP speculative decoding inside the batching engine
-- (engine option `speculative = { method = "mtp", k = 1 }`).
--
-- Per request (greedy ones only: temperature 0, no logprobs), the state is
-- one draft token d, a guess of the token after the last sampled one t_L.
-- A decode step feeds [t_L, d] for such a request (two rows of the same
-- ragged forward as every other sequence). The main model's token after
-- t_L, g1, comes from the request's own sampler on t_L's row; if g1 == d,
-- d's KV row is right and the token after it, g2, is sampled from d's row
-- too (two tokens in one step); otherwise d's row is cut off the cache
-- (kv:seq_truncate). Every emitted token is what the sampler picks from the
-- main model's logits given the true prefix, so the output is token for
-- token the plain greedy output.
--
-- Drafting: after the step's sampling, the MTP layer runs once, batched over
-- every speculative request of the step, on the rows this step stored in the
-- cache: row at position p pairs the main model's final-normed hidden state
-- h_p with the token at p + 1 (DeepSeek-V3's MTP convention), writes the MTP
-- layer's KV row for p and predicts the token at p + 2; the last row's
-- argmax is the next draft. Prefill chunks take part the same way, so the
-- MTP cache rows follow the main ones. Rows adopted from the prefix cache
-- keep whatever MTP rows they hold: at worst a worse draft, never a wrong
-- token. k = 1 (one MTP layer, one draft per step).
local ffi = require "ffi"
local T = require "tide.tensor"

local M = {}
local Spec = {}
Spec.__index = Spec
M.Spec = Spec

-- cfg: { method = "mtp", k = 1 }. Returns the drafter or nil, err.
function M.new(model, cfg)
  if type(cfg) ~= "table" then return nil, "engine: speculative must be a table like { method = \"mtp\", k = 1 }" end
  local method = cfg.method or "mtp"
  if method ~= "mtp" then return nil, "engine: speculative method '" .. tostring(method) .. "' is not supported (mtp)" end
  local k = cfg.k or 1
  if k ~= 1 then return nil, "engine: speculative k = " .. tostring(k) .. " is not supported (k = 1: one MTP draft per step)" end
  local arch = model.arch
  if not arch.mtp or #arch.mtp == 0 or not arch.mtp_forward then
    return nil, "engine: speculative mtp needs a model with an MTP layer (DeepSeek-V3 num_nextn_predict_layers)"
  end
  return setmetatable({ model = model, arch = arch, k = k, V = model.n_vocab, dim = arch.dim }, Spec)
end

-- Whether a request takes part: greedy sampling (deterministic, so a draft
-- that equals the sampler's pick is the plain decoding's token) and no logprobs.
function M.eligible(r)
  return r.temperature == 0 and not r.logprobs
end

-- The on_hidden hook of Model:step: final-normed hidden states of every row
-- of the step, kept in a workspace slot until the drafting is done.
function Spec:hook()
  local arch, ws = self.arch, self.model.ws
  return function(x)
    self.hn = arch.norm:forward(ws, "spec.eng.hn", x) -- (n_tok, dim)
  end
end

local function argmax(p, V)
  local best, bi = p[0], 0
  for i = 1, V - 1 do if p[i] > best then best, bi = p[i], i end end
  return bi
end

-- Logits of the given rows of this step's hidden states (rows: 0-based
-- Lua list) -> float* of (#rows, vocab), valid until the next call.
function Spec:row_logits(rows)
  local ws, n = self.model.ws, #rows
  local sel = ws:get_i32("spec.eng.vsel", n)
  local sp = ffi.cast("int32_t*", sel._p.data)
  for i = 1, n do sp[i - 1] = rows[i] end
  local h = ws:get("spec.eng.vh", n, self.dim)
  T.op.get_rows(h, self.hn, sel)
  local lg = ws:get("spec.eng.vlogits", n, self.V)
  T.op.matmul(lg, h, self.arch.lm_head.weight)
  return ffi.cast("float*", lg._p.data)
end

-- Draft after a step. items: list of { req, row0 (first row of the step
-- for this request, 0-based), start (its position), count (rows stored this
-- step) }; each req has .seq and .all (tokens, 1-based: position p holds
-- all[p + 1]). Sets req.draft for the requests in `want` (a set). Returns
-- true or nil, err.
function Spec:draft(items, want)
  if #items == 0 then return true end
  local model, ws, kv = self.model, self.model.ws, self.model.kv
  local n = 0
  for _, it in ipairs(items) do n = n + it[4] end
  local sel = ws:get_i32("spec.eng.msel", n)
  local ids = ws:get_i32("spec.eng.mids", n)
  local sp, ip = ffi.cast("int32_t*", sel._p.data), ffi.cast("int32_t*", ids._p.data)
  local seqs, starts, counts, ctx_len = {}, {}, {}, {}
  local k = 0
  for i, it in ipairs(items) do
    local req, row0, start, count = it[1], it[2], it[3], it[4]
    for j = 0, count - 1 do
      sp[k] = row0 + j
      ip[k] = req.all[start + j + 2]
      k = k + 1
    end
    seqs[i], starts[i], counts[i] = req.seq, start, count
    ctx_len[i - 1] = start + count
  end
  local h = ws:get("spec.eng.mh", n, self.dim)
  T.op.get_rows(h, self.hn, sel)
  local batch, pos = kv:view(seqs, starts, counts)
  if not batch then return nil, pos end
  -- MLA "auto" picks by the tokens of each sequence here (a batch of
  -- decodes is absorbed however many sequences it holds)
  local mla = model.opts.mla
  if mla == nil or mla == "auto" then
    local most = 0
    for i = 1, #counts do if counts[i] > most then most = counts[i] end end
    mla = most <= 16 and "absorb" or "naive"
  end
  local ctx = { ws = ws, batch = batch, pos = pos, kv = kv, seq_ctx_len = ctx_len, tmp_batch = model.tmp_batch,
    mla = mla }
  local ok, logits = pcall(self.arch.mtp_forward, self.arch, ctx, 1, h, ids)
  if not ok then return nil, tostring(logits) end
  local base = ffi.cast("float*", logits._p.data)
  local V, off = self.V, 0
  for _, it in ipairs(items) do
    off = off + it[4]
    if want[it[1]] then it[1].draft = argmax(base + (off - 1) * V, V) end
  end
  return true
end

return M
