-- nn.GQAAttention: Llama-style attention with grouped K/V heads over the
-- paged KV cache. One call handles a ragged batch (prefill chunks and decode
-- tokens alike): project, rotate, store K/V at each token's slot, attend
-- through the block tables, project out.
local T = require "tide.tensor"
local Linear = require "tide.nn.linear"

local Attention = {}
Attention.__index = Attention

-- w: {q, k, v, o} weights; cfg: n_head, n_kv_head, head_dim, rope (tide_rope_t)
function Attention.new(w, cfg)
  return setmetatable({
    q = Linear.new(w.q), k = Linear.new(w.k), v = Linear.new(w.v), o = Linear.new(w.o),
    n_head = cfg.n_head, n_kv_head = cfg.n_kv_head, head_dim = cfg.head_dim, rope = cfg.rope,
    scale = 1 / math.sqrt(cfg.head_dim),
  }, Attention)
end

-- KV layout of this layer.
function Attention:kv_layout()
  return { n_kv_head = self.n_kv_head, k_dim = self.head_dim, v_dim = self.head_dim }
end

-- x (n_tok, dim) -> (n_tok, dim). ctx: ws, batch, pos, kv; layer: 1-based cache layer.
function Attention:forward(ctx, layer, x)
  local ws, n = ctx.ws, tonumber(x._p.shape[0])
  local nh, nkv, hd = self.n_head, self.n_kv_head, self.head_dim
  local q = ws:view("attn.q3", self.q:forward(ws, "attn.q", x), 0, n, nh, hd)
  local k = ws:view("attn.k3", self.k:forward(ws, "attn.k", x), 0, n, nkv, hd)
  local v = ws:view("attn.v3", self.v:forward(ws, "attn.v", x), 0, n, nkv, hd)
  ws.op.rope(q, ctx.pos, self.rope)
  ws.op.rope(k, ctx.pos, self.rope)
  local kc, vc = ctx.kv.k[layer], ctx.kv.v[layer]
  T.op.kv_store(kc, k, ctx.batch)
  T.op.kv_store(vc, v, ctx.batch)
  local o = ws:get("attn.o", n, nh, hd)
  ws.op.attention(o, q, kc, vc, ctx.batch, self.scale)
  return self.o:forward(ws, "attn.out", ws:view("attn.o2", o, 0, n, nh * hd))
end

-- Cost of one call (as forward) for a batch b: b.n tokens of b.seqs
-- sequences, each token attending b.ctx positions on average, each sequence
-- holding b.kv cached positions after the step. Q.K^T and P.V are 2 flops
-- per multiply-add over head_dim; the cache is read once per sequence and KV
-- head (flash-style) and written once per new token.
function Attention:cost(rec, name, b)
  local n, nh, nkv, hd = b.n, self.n_head, self.n_kv_head, self.head_dim
  self.q:cost(rec, name .. ".q", n)
  self.k:cost(rec, name .. ".k", n)
  self.v:cost(rec, name .. ".v", n)
  rec:elt(name .. ".rope", n * (nh + nkv) * hd, 6)
  rec:attn(name .. ".core", {
    flops = 2 * n * b.ctx * nh * (hd + hd),
    kv_read = b.seqs * b.kv * nkv * 2 * hd, kv_write = n * nkv * 2 * hd, act = 2 * n * nh * hd,
    heads = nh, qk_dim = hd, v_dim = hd, kv_row = nkv * 2 * hd,
  })
  self.o:cost(rec, name .. ".o", n)
end

return Attention
