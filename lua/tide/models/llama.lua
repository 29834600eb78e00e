-- Llama (and Llama-like) decoder: GQA attention with RoPE (rotate_half
-- layout; rope_scaling linear/llama3/yarn), SwiGLU MLP, RMSNorm, tied or
-- untied embeddings. Weight names as in Hugging Face LlamaForCausalLM.
local T = require "tide.tensor"
local nn = {
  Embedding = require "tide.nn.embedding",
  RMSNorm = require "tide.nn.rmsnorm",
  Linear = require "tide.nn.linear",
  MLP = require "tide.nn.mlp",
  Attention = require "tide.nn.attention",
  rope = require "tide.nn.rope",
}

local Llama = {}
Llama.__index = Llama

local M = { Llama = Llama }

local function need_int(cfg, key, min)
  local v = cfg[key]
  if type(v) ~= "number" or v ~= math.floor(v) or v < (min or 1) then
    error(string.format("config: '%s' must be an integer >= %d (got %s)", key, min or 1, tostring(v)), 0)
  end
  return v
end
M.need_int = need_int

-- cfg: config table; W: weight getter (W:get(name, shape), W:has(name)).
-- Raises a message on bad config or weights (tide.load turns it into nil, err).
function M.build(cfg, W, opts)
  local dim = need_int(cfg, "hidden_size")
  local n_layer = need_int(cfg, "num_hidden_layers")
  local n_head = need_int(cfg, "num_attention_heads")
  local n_kv = cfg.num_key_value_heads or n_head
  if type(n_kv) ~= "number" or n_kv < 1 or n_head % n_kv ~= 0 then
    error(string.format("config: num_attention_heads %d is not a multiple of num_key_value_heads %s", n_head,
      tostring(n_kv)), 0)
  end
  local hd = cfg.head_dim
  if hd == nil then
    if dim % n_head ~= 0 then
      error(string.format("config: hidden_size %d is not a multiple of num_attention_heads %d", dim, n_head), 0)
    end
    hd = dim / n_head
  end
  need_int({ head_dim = hd }, "head_dim")
  local inter = need_int(cfg, "intermediate_size")
  local vocab = need_int(cfg, "vocab_size")
  local eps = cfg.rms_norm_eps or 1e-6
  if (cfg.hidden_act or "silu") ~= "silu" then error("config: hidden_act '" .. tostring(cfg.hidden_act) .. "' not supported", 0) end
  -- rotate_half layout, or interleaved pairs for Q/K rows stored in llama.cpp's permuted order (GGUF)
  local rope, rerr = nn.rope.from_config(cfg, hd, cfg.tide_rope_interleave == true)
  if not rope then error("config: " .. rerr, 0) end
  local self = setmetatable({ cfg = cfg, dim = dim, n_layer = n_layer, n_vocab = vocab, eps = eps, layers = {} }, Llama)
  self.embed = nn.Embedding.new(W:get("model.embed_tokens.weight", { vocab, dim }))
  for i = 0, n_layer - 1 do
    local p = "model.layers." .. i .. "."
    local L = {}
    L.attn_norm = nn.RMSNorm.new(W:get(p .. "input_layernorm.weight", { dim }), eps)
    L.mlp_norm = nn.RMSNorm.new(W:get(p .. "post_attention_layernorm.weight", { dim }), eps)
    L.attn = nn.Attention.new({
      q = W:get(p .. "self_attn.q_proj.weight", { n_head * hd, dim }),
      k = W:get(p .. "self_attn.k_proj.weight", { n_kv * hd, dim }),
      v = W:get(p .. "self_attn.v_proj.weight", { n_kv * hd, dim }),
      o = W:get(p .. "self_attn.o_proj.weight", { dim, n_head * hd }),
    }, { n_head = n_head, n_kv_head = n_kv, head_dim = hd, rope = rope })
    L.mlp = nn.MLP.new(W:get(p .. "mlp.gate_proj.weight", { inter, dim }), W:get(p .. "mlp.up_proj.weight", { inter, dim }),
      W:get(p .. "mlp.down_proj.weight", { dim, inter }))
    self.layers[i + 1] = L
  end
  self.norm = nn.RMSNorm.new(W:get("model.norm.weight", { dim }), eps)
  if cfg.tie_word_embeddings and not W:has("lm_head.weight") then
    self.lm_head = nn.Linear.new(self.embed.weight)
  else
    self.lm_head = nn.Linear.new(W:get("lm_head.weight", { vocab, dim }))
  end
  return self
end

-- One KV layout per cache layer.
function Llama:kv_layouts()
  local t = {}
  for i, L in ipairs(self.layers) do t[i] = L.attn:kv_layout() end
  return t
end

-- A pre-norm residual decoder layer; li is its cache layer (1-based).
-- Returns x (updated in place), or with ctx.out_rows (numerics = "ggml")
-- at layer ctx.out_layer only those rows, kept after the attention as
-- llama.cpp does before its last layer's FFN.
function M.layer_forward(ctx, L, li, x)
  local ws = ctx.ws
  local h = L.attn_norm:forward(ws, "h", x)
  local a = L.attn:forward(ctx, li, h)
  if ctx.out_rows and li == ctx.out_layer then
    local ns, dim = tonumber(ctx.out_rows._p.shape[0]), tonumber(x._p.shape[1])
    local xs, as = ws:get("x.sel", ns, dim), ws:get("attn.sel", ns, dim)
    T.op.get_rows(xs, x, ctx.out_rows)
    T.op.get_rows(as, a, ctx.out_rows)
    x, a = xs, as
  end
  T.op.add(x, x, a)
  h = L.mlp_norm:forward(ws, "h", x)
  local m
  if L.moe then m = L.moe:forward(ctx, h, "ffn.out") else m = L.mlp:forward(ws, "ffn.out", h) end
  T.op.add(x, x, m)
  return x
end

-- ids (n_tok) i32 -> hidden states (n_tok, dim) before the final norm.
function Llama:forward_hidden(ctx, ids)
  local x = self.embed:forward(ctx.ws, "x", ids)
  for i, L in ipairs(self.layers) do x = M.layer_forward(ctx, L, i, x) end
  return x
end

return M
