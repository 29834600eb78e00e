-- tide.speculative: greedy speculative decoding with the model's own MTP
-- head (DeepSeek-V3's multi-token prediction layer) as the drafter.
--
-- State between iterations: the main KV holds positions 0..L-1, t_L is the
-- last emitted token (not yet in the KV), and the MTP layer's KV rows (the
-- cache layer after the main layers) hold positions 0..L-2. One iteration:
--   1. MTP rows for the positions the last main step produced, each pairing
--      the main hidden state h_i with the token t_{i+1} that followed; the
--      last row's logits give the draft d (a guess of t_{L+1});
--   2. one main step over [t_L, d] ("all" logits): g1 = argmax at t_L; if
--      d == g1 the draft is accepted and g2 = argmax at d is emitted too,
--      otherwise d's KV row is rolled back (truncate).
-- Every emitted token is the main model's argmax given the true prefix, so
-- the output equals plain greedy decoding. With temperature > 0 the draft is
-- sampled from the MTP distribution q and kept with probability
-- min(1, p(d) / q(d)) under the main model's p, else the token is drawn from
-- normalize(max(0, p - q)): the standard rejection rule, so every token is
-- distributed exactly as in plain sampling from softmax(logits / T).
local ffi = require "ffi"
local T = require "tide.tensor"

local M = {}

local REUSE = { reuse = true }

local function argmax(p, V)
  local best, bi = p[0], 0
  for i = 1, V - 1 do if p[i] > best then best, bi = p[i], i end end
  return bi
end

-- ---- sampling helpers (temperature only) ------------------------------------------

-- xorshift64* as doubles in [0, 1), seeded.
local function rng_new(seed)
  local st = ffi.new("uint64_t[1]", 0x9E3779B97F4A7C15ULL + (seed or 0) * 0x100000001B3ULL)
  if st[0] == 0 then st[0] = 1 end
  return function()
    local x = st[0]
    x = bit.bxor(x, bit.rshift(x, 12))
    x = bit.bxor(x, bit.lshift(x, 25))
    x = bit.bxor(x, bit.rshift(x, 27))
    st[0] = x
    return tonumber(bit.rshift(x * 0x2545F4914F6CDD1DULL, 11)) / 9007199254740992
  end
end
M.rng_new = rng_new

-- softmax(row / temp) into out (a double array of V).
local function probs(row, V, temp, out)
  local mx = row[0]
  for i = 1, V - 1 do if row[i] > mx then mx = row[i] end end
  local z = 0
  for i = 0, V - 1 do
    local e = math.exp((row[i] - mx) / temp)
    out[i] = e
    z = z + e
  end
  for i = 0, V - 1 do out[i] = out[i] / z end
  return out
end
M.probs = probs

-- A draw from the distribution p (V entries summing to total).
local function draw(p, V, u, total)
  local x, c = u * (total or 1), 0
  for i = 0, V - 1 do
    c = c + p[i]
    if x < c then return i end
  end
  for i = V - 1, 0, -1 do if p[i] > 0 then return i end end
  return V - 1
end
M.draw = draw

-- The rejection rule: the draft d (drawn from q) is kept with probability
-- min(1, p[d] / q[d]); otherwise a token is drawn from max(0, p - q)
-- normalized (written into tmp). Returns the token and whether d was kept.
function M.verify(p, q, d, V, rng, tmp)
  if q[d] > 0 and rng() * q[d] < p[d] then return d, true end
  local z = 0
  for i = 0, V - 1 do
    local r = p[i] - q[i]
    if r < 0 then r = 0 end
    tmp[i] = r
    z = z + r
  end
  if z <= 0 then return draw(p, V, rng()), false end
  return draw(tmp, V, rng(), z), false
end

-- MTP forward for positions a .. a + n - 1 of seq: rows h (n, dim) f32 and
-- next ids nxt (Lua list of n). Returns the logits row (float*) of the last
-- position.
local function mtp_draft(model, seq, a, h, nxt)
  local kv, ws, arch = model.kv, model.ws, model.arch
  local n = #nxt
  local batch, pos = kv:view({ seq }, { a }, { n })
  assert(batch, pos)
  local ids = ws:get_i32("spec.next", n)
  local ip = ffi.cast("int32_t*", ids._p.data)
  for i = 1, n do ip[i - 1] = nxt[i] end
  local ctx = { ws = ws, batch = batch, pos = pos, kv = kv, seq_ctx_len = { [0] = a + n }, tmp_batch = model.tmp_batch,
    mla = model.opts.mla }
  local logits = arch:mtp_forward(ctx, 1, h, ids)
  return ffi.cast("float*", logits._p.data) + (n - 1) * model.n_vocab, logits
end

-- generate(model, ids, opts) -> new ids, info {finish_reason, drafted,
-- accepted, acceptance, steps}. opts: max_tokens (16), stop_ids, ignore_eos,
-- chunk (prefill chunk), on_token(id), temperature (0: greedy; > 0: plain
-- temperature sampling, no top-k/top-p), seed.
function M.generate(model, ids, opts)
  opts = opts or {}
  local arch = model.arch
  if not arch.mtp or #arch.mtp == 0 then return nil, "speculative: the model has no MTP layer" end
  if type(ids) ~= "table" or #ids == 0 then return nil, "speculative: ids must be a non-empty list" end
  local temp = opts.temperature or 0
  if type(temp) ~= "number" or temp < 0 then return nil, "speculative: temperature must be >= 0" end
  for _, k in ipairs({ "top_k", "top_p", "min_p", "repetition_penalty" }) do
    if opts[k] ~= nil then return nil, "speculative: " .. k .. " is not supported (temperature sampling only)" end
  end
  local max_tokens = opts.max_tokens or 16
  if #ids >= model.max_ctx then return nil, "speculative: prompt does not fit the context" end
  local stop_ids = {}
  if not opts.ignore_eos then
    local eos = model.eos_id
    if type(eos) == "table" then for _, v in ipairs(eos) do stop_ids[v] = true end
    elseif eos then stop_ids[eos] = true end
  end
  for _, v in ipairs(opts.stop_ids or {}) do stop_ids[v] = true end
  local kv = model:kv_cache()
  local seq, se = kv:seq_new()
  if not seq then return nil, se end
  local V, dim = model.n_vocab, arch.dim
  local rng = rng_new(opts.seed)
  local pbuf, qbuf, tbuf = ffi.new("double[?]", V), ffi.new("double[?]", V), ffi.new("double[?]", V)
  -- the next token from a logits row: argmax, or a draw from softmax(row / temp)
  local function pick(row)
    if temp == 0 then return argmax(row, V) end
    return draw(probs(row, V, temp, pbuf), V, rng())
  end
  local info = { finish_reason = "length", drafted = 0, accepted = 0, steps = 0 }
  local out = {}
  local ok, e = pcall(function()
    -- prefill, keeping every hidden row for the MTP catch-up
    local chunk = opts.chunk or #ids
    local hs = T.zeros({ #ids, dim })
    local logits
    for i = 1, #ids, chunk do
      local part = {}
      for j = i, math.min(i + chunk - 1, #ids) do part[#part + 1] = ids[j] end
      -- logits of the last row only; every row's hidden state through the hook
      local e
      logits, e = model:step({ seq }, { part }, "last", { reuse = true, on_hidden = function(x)
        local hn = arch.norm:forward(model.ws, "spec.hn", x)
        T.op.convert(hs:as_strided({ #part, dim }, { dim, 1 }, (i - 1) * dim), hn)
      end })
      if not logits then error(e, 0) end
    end
    local lp = ffi.cast("float*", logits._p.data)
    local last = pick(lp)
    -- pending MTP rows: start position a, hidden rows h, next ids
    local a, h, nxt = 0, hs, {}
    local hbuf, flip = { T.zeros({ 2, dim }), T.zeros({ 2, dim }) }, 1
    for i = 2, #ids do nxt[#nxt + 1] = ids[i] end
    while true do
      if stop_ids[last] then info.finish_reason = "stop" break end
      out[#out + 1] = last
      if opts.on_token then opts.on_token(last) end
      if #out >= max_tokens then break end
      local L = kv:seq_len(seq)
      if L + 1 > model.max_ctx then info.finish_reason = "context" break end
      nxt[#nxt + 1] = last
      local drow = mtp_draft(model, seq, a, h, nxt)
      local d
      if temp == 0 then d = argmax(drow, V) else d = draw(probs(drow, V, temp, qbuf), V, rng()) end
      local two = L + 2 <= model.max_ctx and #out + 1 < max_tokens + 1
      local toks = two and { last, d } or { last }
      local lg, hn = model:step({ seq }, { toks }, "all", REUSE)
      if not lg then error(hn, 0) end
      info.steps = info.steps + 1
      local p = ffi.cast("float*", lg._p.data)
      local g1, kept
      if temp == 0 then
        g1 = argmax(p, V)
        kept = two and g1 == d
      elseif two then
        g1, kept = M.verify(probs(p, V, temp, pbuf), qbuf, d, V, rng, tbuf)
      else
        g1 = pick(p)
      end
      -- the hidden rows outlive this step: copy them (two buffers, alternating)
      flip = 3 - flip
      local hcopy = hbuf[flip]:as_strided({ #toks, dim })
      T.op.convert(hcopy, hn)
      if two then info.drafted = info.drafted + 1 end
      if kept and not stop_ids[g1] and #out + 1 < max_tokens then
        info.accepted = info.accepted + 1
        out[#out + 1] = g1
        if opts.on_token then opts.on_token(g1) end
        local g2 = pick(p + V)
        a, h, nxt, last = L, hcopy, { d }, g2
      else
        if two then kv:seq_truncate(seq, L + 1) end
        a, h, nxt, last = L, hcopy:as_strided({ 1, dim }), {}, g1
        if kept then info.accepted = info.accepted + 1 end
      end
    end
  end)
  kv:seq_free(seq)
  if not ok then return nil, tostring(e) end
  info.acceptance = info.drafted > 0 and info.accepted / info.drafted or 0
  return out, info
end

return M
