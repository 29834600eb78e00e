-- nn.MLA: DeepSeek multi-head latent attention over a paged cache of
-- latent rows [kv_a_layernorm(latent) (kv_lora_rank) | rope(k_pe) (qk_rope_head_dim)],
-- one row per token shared by all heads. Two modes read the same cache:
--   naive:  gather each sequence's latent rows, decompress K/V per head with
--           kv_b_proj, attend (good for long prefill);
--   absorb: fold kv_b_proj's K part into the query (attend over the latent
--           rows as MQA, V = the latent part of the same rows), then apply
--           kv_b_proj's V part per head (good for decode).
local ffi = require "ffi"
local T = require "tide.tensor"
local Linear = require "tide.nn.linear"
local RMSNorm = require "tide.nn.rmsnorm"

local MLA = {}
MLA.__index = MLA

-- w: q_a, q_a_norm, q_b (or q), kv_a, kv_a_norm, kv_b, o; cfg: n_head,
-- q_lora_rank, kv_lora_rank, qk_nope, qk_rope, v_head_dim, rope, scale, eps, mode
function MLA.new(w, cfg)
  local self = setmetatable({
    n_head = cfg.n_head, kvl = cfg.kv_lora_rank, dn = cfg.qk_nope, dr = cfg.qk_rope, dv = cfg.v_head_dim,
    rope = cfg.rope, scale = cfg.scale, mode = cfg.mode or "naive",
    kv_a = Linear.new(w.kv_a), kv_norm = RMSNorm.new(w.kv_a_norm, cfg.eps),
    kv_b = Linear.new(w.kv_b), o = Linear.new(w.o),
  }, MLA)
  if w.q_a then
    self.q_a = Linear.new(w.q_a)
    self.q_a_norm = RMSNorm.new(w.q_a_norm, cfg.eps)
    self.q_b = Linear.new(w.q_b)
  else
    self.q_proj = Linear.new(w.q)
  end
  return self
end

function MLA:kv_layout()
  return { n_kv_head = 1, k_dim = self.kvl + self.dr, v_dim = 0, v_from_k = self.kvl }
end

-- Per-head parts of kv_b_proj for the absorbed mode: W_uv (H, dv, kvl), a
-- view of the stored weight, and W_uk transposed, (H, kvl, dn), so both
-- products take the weight as (N, K) rows, the layout every weight format's
-- fast matmul reads. The transposed W_uk is a copy, in f32 when the weight
-- is block-quantized or carries block scales (FP8: a 64-row slice does not
-- line up with its 128x128 scale blocks), else in the weight's own dtype;
-- it costs H * dn * kvl elements per layer. A block-quantized weight also
-- keeps W_uk as stored, (H, dn, kvl): steps of up to 4 query rows (decode)
-- add its rows up in their own format (matmul with trans_b = 0), reading a
-- quarter of the f32 copy's bytes; the copy is then made only when a
-- larger step needs it.
function MLA:absorb_weights()
  if self.wuv then return end
  local w = self.kv_b.weight
  local block = T.elem_bytes[w:cdata().dtype] == nil
  if w:cdata().scale ~= nil then w = w:copy("f32") end
  local per = self.dn + self.dv
  local w3 = w:reshape({ self.n_head, per, self.kvl })
  self.wuv = w3:narrow(2, self.dn + 1, self.dv)
  if block and w:cdata().scale == nil then self.wuk_rows = w3:narrow(2, 1, self.dn) end
  self.uk_src = { w = w, block = block }
end

-- W_uk transposed (H, kvl, dn), made on first use (see absorb_weights).
function MLA:wuk_t()
  if self.wuk then return self.wuk end
  self:absorb_weights()
  local s = self.uk_src
  local uk = (s.block and s.w:copy("f32") or s.w):reshape({ self.n_head, self.dn + self.dv, self.kvl })
    :narrow(2, 1, self.dn)
  self.wuk = uk:transpose(2, 3):copy()
  return self.wuk
end

-- Views of the latent cache of a layer: the whole row, its [start, start+len) columns,
-- and the (n_blocks * block_size, row) table used to gather rows.
local function cache_views(kv, layer, kvl, dr)
  kv.mla_views = kv.mla_views or {}
  local v = kv.mla_views[layer]
  if v then return v end
  local c = kv.k[layer]
  local nb, bs, D = kv.n_blocks, kv.block_size, kvl + dr
  v = {
    full = c,
    lat = c:as_strided({ nb, bs, 1, kvl }, { bs * D, D, D, 1 }, 0),
    pe = c:as_strided({ nb, bs, 1, dr }, { bs * D, D, D, 1 }, kvl),
    flat = c:as_strided({ nb * bs, D }),
    v = kv.v[layer],
  }
  kv.mla_views[layer] = v
  return v
end

function MLA:forward(ctx, layer, x)
  local ws, n = ctx.ws, tonumber(x._p.shape[0])
  local H, dn, dr, dv, kvl = self.n_head, self.dn, self.dr, self.dv, self.kvl
  local dq = dn + dr
  -- queries (n, H, dn + dr); rope on the last dr of each head
  local q
  if self.q_a then
    local qa = self.q_a:forward(ws, "mla.qa", x)
    self.q_a_norm:forward(ws, nil, qa, qa)
    q = self.q_b:forward(ws, "mla.q", qa)
  else
    q = self.q_proj:forward(ws, "mla.q", x)
  end
  local q_pe = ws:view("mla.qpe", q, dn, n, H, dr, nil, H * dq, dq, 1)
  ws.op.rope(q_pe, ctx.pos, self.rope)
  -- the latent row of each new token, into the cache
  local kva = self.kv_a:forward(ws, "mla.kva", x) -- (n, kvl + dr)
  local lat = self.kv_norm:forward(ws, "mla.lat", ws:view("mla.latin", kva, 0, n, kvl, nil, nil, kvl + dr, 1))
  local k_pe = ws:view("mla.kpe", kva, kvl, n, 1, dr, nil, kvl + dr, dr, 1)
  ws.op.rope(k_pe, ctx.pos, self.rope)
  local cv = cache_views(ctx.kv, layer, kvl, dr)
  T.op.kv_store(cv.lat, ws:view("mla.lat3", lat, 0, n, 1, kvl), ctx.batch)
  T.op.kv_store(cv.pe, k_pe, ctx.batch)
  local attn
  local mode = ctx.mla or self.mode
  -- auto: absorbed for decode-sized steps (reads the latent cache, no K/V
  -- rebuilt over the whole context per step), naive for prefill chunks;
  -- decided by the new tokens per sequence, so a batch of many decoding
  -- sequences stays absorbed
  if mode == "auto" then mode = n <= 16 * ctx.batch.n_seq and "absorb" or "naive" end
  if mode == "absorb" then
    attn = self:attend_absorbed(ctx, cv, q, q_pe, n)
  else
    attn = self:attend_naive(ctx, cv, q, n)
  end
  return self.o:forward(ws, "mla.out", attn)
end

function MLA:attend_absorbed(ctx, cv, q, q_pe, n)
  local ws = ctx.ws
  local H, dn, dr, dv, kvl = self.n_head, self.dn, self.dr, self.dv, self.kvl
  local dq, D = dn + dr, kvl + dr
  self:absorb_weights()
  -- fold W_uk into the queries, one product per head in one call:
  -- qa[:, h, :kvl] = q_nope[:, h] @ W_uk[h] (W_uk stored transposed)
  local qa = ws:get("mla.qabs", n, H, D)
  local qah, qnh = ws:view("mla.qah", qa, 0, H, n, kvl, nil, D, H * D, 1), ws:view("mla.qnh", q, 0, H, n, dn, nil, dq, H * dq, 1)
  if self.wuk_rows and n <= 4 then
    T.op.matmul_heads(qah, qnh, self.wuk_rows, false)
  else
    T.op.matmul_heads(qah, qnh, self:wuk_t())
  end
  T.op.convert(ws:view("mla.qape", qa, kvl, n, H, dr, nil, H * D, D, 1), q_pe)
  local o = ws:get("mla.olat", n, H, kvl)
  T.op.attention(o, qa, cv.full, cv.v, ctx.batch, self.scale)
  -- and W_uv into the outputs: attn[:, h] = o[:, h] @ W_uv[h]^T
  local attn = ws:get("mla.attn", n, H * dv)
  T.op.matmul_heads(ws:view("mla.ath", attn, 0, H, n, dv, nil, dv, H * dv, 1),
    ws:view("mla.olh", o, 0, H, n, kvl, nil, kvl, H * kvl, 1), self.wuv)
  return attn
end

function MLA:attend_naive(ctx, cv, q, n)
  local ws, b, kv = ctx.ws, ctx.batch, ctx.kv
  local H, dn, dr, dv, kvl = self.n_head, self.dn, self.dr, self.dv, self.kvl
  local dq, D, per = dn + dr, kvl + dr, dn + dv
  -- context length of each sequence in the step
  local ns, bs, mb = b.n_seq, b.block_size, b.max_blocks
  local L = ctx.seq_ctx_len
  local Lmax = 0
  for s = 0, ns - 1 do if L[s] > Lmax then Lmax = L[s] end end
  local R = ns * Lmax
  -- gather every sequence's latent rows (padding repeats a valid slot)
  local ids = ws:get_i32("mla.gids", R)
  local idp = ffi.cast("int32_t*", ids._p.data)
  for s = 0, ns - 1 do
    for p = 0, Lmax - 1 do
      local pp = p < L[s] and p or 0
      idp[s * Lmax + p] = b.block_table[s * mb + math.floor(pp / bs)] * bs + pp % bs
    end
  end
  local rows = ws:get("mla.rows", R, D)
  T.op.get_rows(rows, cv.flat, ids)
  -- decompress: (R, H * (dn + dv))
  local kvd = ws:get("mla.kvd", R, H * per)
  ws.op.matmul(kvd, ws:view("mla.rlat", rows, 0, R, kvl, nil, nil, D, 1), self.kv_b.weight)
  -- K (ns, Lmax, H, dn + dr) = [k_nope | k_pe broadcast over heads]
  local K = ws:get("mla.K", ns, Lmax, H, dq)
  T.op.convert(ws:view("mla.Kn", K, 0, R, H, dn, nil, H * dq, dq, 1), ws:view("mla.kvn", kvd, 0, R, H, dn, nil, H * per, per, 1))
  local bids = ws:get_i32("mla.bids", R * H)
  local bp = ffi.cast("int32_t*", bids._p.data)
  for i = 0, R - 1 do for h = 0, H - 1 do bp[i * H + h] = i end end
  local pe = ws:get("mla.peb", R * H, dr)
  T.op.get_rows(pe, ws:view("mla.rpe", rows, kvl, R, dr, nil, nil, D, 1), bids)
  T.op.convert(ws:view("mla.Kpe", K, dn, R * H, dr, nil, nil, dq, 1), pe)
  local V = ws:view("mla.V", kvd, dn, ns, Lmax, H, dv, Lmax * H * per, H * per, per, 1)
  -- a batch over this temporary cache: one block per sequence
  local tb = ctx.tmp_batch
  local tt = ws:get_i32("mla.ttab", ns)
  local ttp = ffi.cast("int32_t*", tt._p.data)
  for s = 0, ns - 1 do ttp[s] = s end
  tb.n_tok, tb.n_seq, tb.max_blocks, tb.block_size = b.n_tok, ns, 1, Lmax
  tb.tok_seq, tb.tok_pos, tb.block_table = b.tok_seq, b.tok_pos, ttp
  local o = ws:get("mla.o", n, H, dv)
  ws.op.attention(o, ws:view("mla.q3", q, 0, n, H, dq), K, V, tb, self.scale)
  return ws:view("mla.o2", o, 0, n, H * dv)
end

-- Cost of one call (as forward) for a batch b (see nn.Attention:cost): the
-- projections, the latent cache row written per token, then per mode
--   naive:  kv_b decompresses every cached row of each sequence, MHA with
--           qk = qk_nope + qk_rope and v = v_head_dim per head;
--   absorb: W_uk folded into q (n H dn kvl), MQA over latent rows with
--           qk = kvl + qk_rope and v = kvl, W_uv applied per head (n H kvl dv).
-- The cache (kvl + qk_rope per token) is read once per sequence.
function MLA:cost(rec, name, b, mode)
  mode = mode or self.mode
  local n, H, kvl, dn, dr, dv = b.n, self.n_head, self.kvl, self.dn, self.dr, self.dv
  if mode == "auto" then mode = n <= 16 * math.max(b.seqs or 1, 1) and "absorb" or "naive" end -- as in forward
  if self.q_a then
    self.q_a:cost(rec, name .. ".q_a", n)
    self.q_a_norm:cost(rec, name .. ".q_a_norm", n)
    self.q_b:cost(rec, name .. ".q_b", n)
  else
    self.q_proj:cost(rec, name .. ".q", n)
  end
  self.kv_a:cost(rec, name .. ".kv_a", n)
  self.kv_norm:cost(rec, name .. ".kv_norm", n)
  rec:elt(name .. ".rope", n * (H + 1) * dr, 6)
  local row = kvl + dr
  if mode == "absorb" then
    -- W_uk and W_uv: one call each (matmul_heads), which runs a GEMM of n rows per head through that
    -- head's (kvl x dn) / (dv x kvl) slice: H GEMMs at m = n, not one at m = n H
    local function per_head(op)
      op.calls, op.m, op.flops = 1, n, op.flops * H
      op.a_bytes = op.a_bytes * H
      return op
    end
    per_head(rec:gemm(name .. ".absorb_uk", n, kvl, dn, self.kv_b, H * dn * kvl)).heads = H
    rec:attn(name .. ".core", { flops = 2 * n * b.ctx * H * (row + kvl), kv_read = b.seqs * b.kv * row,
      kv_write = n * row, act = n * H * (row + kvl), heads = H, qk_dim = row, v_dim = kvl, kv_row = row })
    per_head(rec:gemm(name .. ".absorb_uv", n, dv, kvl, self.kv_b, H * dv * kvl)).heads = H
  else
    local rows = b.seqs * b.kv -- every cached row is decompressed
    rec:gemm(name .. ".kv_b", rows, H * (dn + dv), kvl)
    rec:attn(name .. ".core", { flops = 2 * n * b.ctx * H * (dn + dr + dv), kv_read = b.seqs * b.kv * row,
      kv_write = n * row, act = n * H * (dn + dr + dv) + rows * H * (dn + dv), heads = H, qk_dim = dn + dr,
      v_dim = dv, kv_row = row })
  end
  self.o:cost(rec, name .. ".o", n)
end

return MLA
