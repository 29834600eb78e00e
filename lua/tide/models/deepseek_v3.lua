-- DeepSeek-V3 decoder: MLA attention (q_lora or plain q_proj; interleaved
-- YaRN rope on the qk_rope_head_dim part; naive or absorbed execution over
-- the latent cache), DeepSeekMoE after the first first_k_dense_replace dense
-- layers, and the MTP layers stored after the main ones. Weight names as in
-- the released checkpoints (Hugging Face layout); FP8 weights carry their
-- weight_scale_inv blocks (attached by the loader).
local T = require "tide.tensor"
local llama = require "tide.models.llama"
local nn = {
  Embedding = require "tide.nn.embedding",
  RMSNorm = require "tide.nn.rmsnorm",
  Linear = require "tide.nn.linear",
  MLP = require "tide.nn.mlp",
  MLA = require "tide.nn.mla",
  MoE = require "tide.nn.moe",
  rope = require "tide.nn.rope",
}

local need_int = llama.need_int

local DSV3 = {}
DSV3.__index = DSV3

local M = { DeepseekV3 = DSV3 }

local function build_layer(self, W, i, c)
  local p = "model.layers." .. i .. "."
  local dim, H = c.dim, c.n_head
  local L = {}
  L.attn_norm = nn.RMSNorm.new(W:get(p .. "input_layernorm.weight", { dim }), c.eps)
  L.mlp_norm = nn.RMSNorm.new(W:get(p .. "post_attention_layernorm.weight", { dim }), c.eps)
  local a = p .. "self_attn."
  local w = {
    kv_a = W:get(a .. "kv_a_proj_with_mqa.weight", { c.kvl + c.dr, dim }),
    kv_a_norm = W:get(a .. "kv_a_layernorm.weight", { c.kvl }),
    kv_b = W:get(a .. "kv_b_proj.weight", { H * (c.dn + c.dv), c.kvl }),
    o = W:get(a .. "o_proj.weight", { dim, H * c.dv }),
  }
  if c.qlr then
    w.q_a = W:get(a .. "q_a_proj.weight", { c.qlr, dim })
    w.q_a_norm = W:get(a .. "q_a_layernorm.weight", { c.qlr })
    w.q_b = W:get(a .. "q_b_proj.weight", { H * (c.dn + c.dr), c.qlr })
  else
    w.q = W:get(a .. "q_proj.weight", { H * (c.dn + c.dr), dim })
  end
  L.attn = nn.MLA.new(w, { n_head = H, kv_lora_rank = c.kvl, qk_nope = c.dn, qk_rope = c.dr, v_head_dim = c.dv,
    rope = c.rope, scale = c.scale, eps = c.eps, mode = c.mla })
  local m = p .. "mlp."
  if i < c.first_dense or (i - c.first_dense) % c.moe_freq ~= 0 then
    L.mlp = nn.MLP.new(W:get(m .. "gate_proj.weight", { c.inter, dim }), W:get(m .. "up_proj.weight", { c.inter, dim }),
      W:get(m .. "down_proj.weight", { dim, c.inter }))
  else
    local E, I = c.n_expert, c.moe_inter
    local mw = { gate = W:get(m .. "gate.weight", { E, dim }), experts = {} }
    if W:has(m .. "gate.e_score_correction_bias") then mw.bias = W:get(m .. "gate.e_score_correction_bias", { E }) end
    for e = 0, E - 1 do
      local x = m .. "experts." .. e .. "."
      mw.experts[e + 1] = { gate = W:get(x .. "gate_proj.weight", { I, dim }), up = W:get(x .. "up_proj.weight", { I, dim }),
        down = W:get(x .. "down_proj.weight", { dim, I }) }
    end
    if c.n_shared > 0 then
      local S = c.n_shared * I
      local x = m .. "shared_experts."
      mw.shared = { gate = W:get(x .. "gate_proj.weight", { S, dim }), up = W:get(x .. "up_proj.weight", { S, dim }),
        down = W:get(x .. "down_proj.weight", { dim, S }) }
    end
    L.moe = nn.MoE.new(mw, { n_group = c.n_group, topk_group = c.topk_group, top_k = c.top_k,
      norm_topk_prob = c.norm_topk_prob, routed_scaling_factor = c.rscale })
  end
  return L
end

function M.build(cfg, W, opts)
  opts = opts or {}
  local c = {}
  c.dim = need_int(cfg, "hidden_size")
  c.n_layer = need_int(cfg, "num_hidden_layers")
  c.n_head = need_int(cfg, "num_attention_heads")
  c.vocab = need_int(cfg, "vocab_size")
  c.inter = need_int(cfg, "intermediate_size")
  c.kvl = need_int(cfg, "kv_lora_rank")
  c.dn = need_int(cfg, "qk_nope_head_dim")
  c.dr = need_int(cfg, "qk_rope_head_dim")
  c.dv = need_int(cfg, "v_head_dim")
  if cfg.q_lora_rank ~= nil then c.qlr = need_int(cfg, "q_lora_rank") end
  c.eps = cfg.rms_norm_eps or 1e-6
  c.first_dense = cfg.first_k_dense_replace or 0
  c.moe_freq = cfg.moe_layer_freq or 1
  c.n_expert = cfg.n_routed_experts or 0
  if c.n_expert > 0 then
    c.moe_inter = need_int(cfg, "moe_intermediate_size")
    c.top_k = need_int(cfg, "num_experts_per_tok")
    c.n_group = cfg.n_group or 1
    c.topk_group = cfg.topk_group or c.n_group
    if c.n_expert % c.n_group ~= 0 then
      error(string.format("config: n_routed_experts %d is not a multiple of n_group %d", c.n_expert, c.n_group), 0)
    end
    if c.topk_group > c.n_group or c.top_k > c.n_expert / c.n_group * c.topk_group then
      error(string.format("config: num_experts_per_tok %d cannot be chosen from topk_group %d of n_group %d groups",
        c.top_k, c.topk_group, c.n_group), 0)
    end
    if (cfg.scoring_func or "sigmoid") ~= "sigmoid" then
      error("config: scoring_func '" .. tostring(cfg.scoring_func) .. "' not supported (sigmoid)", 0)
    end
  else
    c.first_dense = c.n_layer
  end
  c.n_shared = cfg.n_shared_experts or 0
  c.norm_topk_prob = cfg.norm_topk_prob
  c.rscale = cfg.routed_scaling_factor or 1.0
  c.n_mtp = cfg.num_nextn_predict_layers or 0
  c.mla = opts.mla or "auto"
  if c.mla ~= "naive" and c.mla ~= "absorb" and c.mla ~= "auto" then
    error("option mla must be 'naive', 'absorb' or 'auto' (got '" .. tostring(c.mla) .. "')", 0)
  end
  local interleave = cfg.rope_interleave
  if interleave == nil then interleave = true end
  local rope, rerr = nn.rope.from_config(cfg, c.dr, interleave)
  if not rope then error("config: " .. rerr, 0) end
  c.rope = rope
  -- softmax scale with YaRN's mscale_all_dim correction
  c.scale = 1 / math.sqrt(c.dn + c.dr)
  local rs, ty = nn.rope.scaling(cfg)
  if rs and ty == "yarn" and rs.mscale_all_dim and rs.mscale_all_dim ~= 0 then
    local ms = nn.rope.get_mscale(rs.factor, rs.mscale_all_dim)
    c.scale = c.scale * ms * ms
  end
  local self = setmetatable({ cfg = cfg, c = c, dim = c.dim, n_layer = c.n_layer, n_vocab = c.vocab, eps = c.eps,
    layers = {}, mtp = {} }, DSV3)
  self.embed = nn.Embedding.new(W:get("model.embed_tokens.weight", { c.vocab, c.dim }))
  for i = 0, c.n_layer - 1 do self.layers[i + 1] = build_layer(self, W, i, c) end
  self.norm = nn.RMSNorm.new(W:get("model.norm.weight", { c.dim }), c.eps)
  if cfg.tie_word_embeddings and not W:has("lm_head.weight") then
    self.lm_head = nn.Linear.new(self.embed.weight)
  else
    self.lm_head = nn.Linear.new(W:get("lm_head.weight", { c.vocab, c.dim }))
  end
  -- MTP layers (stored as layers n_layer .. n_layer + n_mtp - 1); skipped when absent
  if opts.mtp ~= false then
    for k = 0, c.n_mtp - 1 do
      local i = c.n_layer + k
      local p = "model.layers." .. i .. "."
      if not W:has(p .. "eh_proj.weight") then
        if k == 0 then break end
        error("checkpoint: MTP layer " .. i .. " is missing (" .. p .. "eh_proj.weight)", 0)
      end
      local L = build_layer(self, W, i, c)
      L.enorm = nn.RMSNorm.new(W:get(p .. "enorm.weight", { c.dim }), c.eps)
      L.hnorm = nn.RMSNorm.new(W:get(p .. "hnorm.weight", { c.dim }), c.eps)
      L.eh_proj = nn.Linear.new(W:get(p .. "eh_proj.weight", { c.dim, 2 * c.dim }))
      L.head_norm = nn.RMSNorm.new(W:get(p .. "shared_head.norm.weight", { c.dim }), c.eps)
      if W:has(p .. "shared_head.head.weight") then
        L.head = nn.Linear.new(W:get(p .. "shared_head.head.weight", { c.vocab, c.dim }))
      end
      if W:has(p .. "embed_tokens.weight") then
        L.embed = nn.Embedding.new(W:get(p .. "embed_tokens.weight", { c.vocab, c.dim }))
      end
      self.mtp[k + 1] = L
    end
  end
  return self
end

function DSV3:kv_layouts()
  local t = {}
  for i, L in ipairs(self.layers) do t[i] = L.attn:kv_layout() end
  for k, L in ipairs(self.mtp) do t[#self.layers + k] = L.attn:kv_layout() end
  return t
end

function DSV3:forward_hidden(ctx, ids)
  local x = self.embed:forward(ctx.ws, "x", ids)
  for i, L in ipairs(self.layers) do x = llama.layer_forward(ctx, L, i, x) end
  return x
end

-- MTP head k (1-based): hn (n, dim) main hidden states after the final norm,
-- next_ids (n) i32 the following tokens; ctx positions are those of hn's rows.
-- Returns logits (n, vocab), a new tensor.
function DSV3:mtp_forward(ctx, k, hn, next_ids)
  local L = self.mtp[k]
  local ws, n, dim = ctx.ws, tonumber(hn._p.shape[0]), self.dim
  local emb = (L.embed or self.embed):forward(ws, "mtp.emb", next_ids)
  local cat = ws:get("mtp.cat", n, 2 * dim)
  local en = L.enorm:forward(ws, "mtp.en", emb)
  T.op.convert(cat:as_strided({ n, dim }, { 2 * dim, 1 }, 0), en)
  local hh = L.hnorm:forward(ws, "mtp.hn", hn)
  T.op.convert(cat:as_strided({ n, dim }, { 2 * dim, 1 }, dim), hh)
  local x = L.eh_proj:forward(ws, "x", cat)
  llama.layer_forward(ctx, L, #self.layers + k, x)
  local h = L.head_norm:forward(ws, "mtp.out", x)
  local logits = T.zeros({ n, self.n_vocab })
  T.op.matmul(logits, h, (L.head or self.lm_head).weight)
  return logits
end

return M
