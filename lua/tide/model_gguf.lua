-- tide.model_gguf: models in GGUF files (llama.cpp's layout) for the
-- `llama` and `deepseek2` architectures: write one from a Hugging Face
-- checkpoint (F32 or F16 tensors) and read one back as a config plus tensors
-- under Hugging Face names, so the same model code runs both.
--
--   assert(require("tide.model_gguf").convert("models/dsv3-tiny", "/tmp/dsv3.gguf", { dtype = "f16" }))
--   local m = tide.load("/tmp/dsv3.gguf")
--
-- Conventions kept from llama.cpp's converter: tensor names (blk.N.attn_q,
-- ffn_gate_exps, ...), routed experts stacked into one (n_expert, rows, cols)
-- tensor per projection, Llama's Q/K rows permuted to the interleaved rope
-- layout (read back with interleaved rope instead of un-permuting: the
-- attention scores are the same), norms in F32, MTP layers counted in
-- block_count with their extra tensors under blk.N.nextn.*.
local T = require "tide.tensor"
local gguf = require "tide.gguf"

local M = {}

local LAYER_COMMON = {
  { "input_layernorm.weight", "attn_norm.weight" },
  { "post_attention_layernorm.weight", "ffn_norm.weight" },
  { "self_attn.o_proj.weight", "attn_output.weight" },
  { "mlp.gate_proj.weight", "ffn_gate.weight" },
  { "mlp.up_proj.weight", "ffn_up.weight" },
  { "mlp.down_proj.weight", "ffn_down.weight" },
}
local LAYER_LLAMA = {
  { "self_attn.q_proj.weight", "attn_q.weight" },
  { "self_attn.k_proj.weight", "attn_k.weight" },
  { "self_attn.v_proj.weight", "attn_v.weight" },
}
local LAYER_DSV3 = {
  { "self_attn.q_a_proj.weight", "attn_q_a.weight" },
  { "self_attn.q_a_layernorm.weight", "attn_q_a_norm.weight" },
  { "self_attn.q_b_proj.weight", "attn_q_b.weight" },
  { "self_attn.q_proj.weight", "attn_q.weight" },
  { "self_attn.kv_a_proj_with_mqa.weight", "attn_kv_a_mqa.weight" },
  { "self_attn.kv_a_layernorm.weight", "attn_kv_a_norm.weight" },
  { "self_attn.kv_b_proj.weight", "attn_kv_b.weight" },
  { "mlp.gate.weight", "ffn_gate_inp.weight" },
  { "mlp.gate.e_score_correction_bias", "exp_probs_b.bias" },
  { "mlp.shared_experts.gate_proj.weight", "ffn_gate_shexp.weight" },
  { "mlp.shared_experts.up_proj.weight", "ffn_up_shexp.weight" },
  { "mlp.shared_experts.down_proj.weight", "ffn_down_shexp.weight" },
  { "eh_proj.weight", "nextn.eh_proj.weight" },
  { "enorm.weight", "nextn.enorm.weight" },
  { "hnorm.weight", "nextn.hnorm.weight" },
  { "shared_head.norm.weight", "nextn.shared_head_norm.weight" },
  { "shared_head.head.weight", "nextn.shared_head_head.weight" },
  { "embed_tokens.weight", "nextn.embed_tokens.weight" },
}
local GLOBAL = {
  { "model.embed_tokens.weight", "token_embd.weight" },
  { "model.norm.weight", "output_norm.weight" },
  { "lm_head.weight", "output.weight" },
}
local EXPERT_PROJ = { { "gate_proj", "ffn_gate_exps" }, { "up_proj", "ffn_up_exps" }, { "down_proj", "ffn_down_exps" } }

-- ---- writing --------------------------------------------------------------------

-- Convert src (any float dtype, scales applied) to a new tensor of dtype dt.
local function converted(src, dt)
  local out = T.zeros(src:shape(), dt)
  T.op.convert(out, src)
  return out
end

-- llama.cpp's Q/K permutation: rows (h, half, i) -> (h, i, half).
local function permuted(src, n_head, dt)
  local s = src:shape()
  local hd = s[1] / n_head
  local ids = {}
  for h = 0, n_head - 1 do
    for i = 0, hd / 2 - 1 do
      for half = 0, 1 do ids[#ids + 1] = h * hd + half * (hd / 2) + i end
    end
  end
  local rows = T.zeros(s, "f32")
  T.op.get_rows(rows, src, T.from_ints(ids))
  if dt == "f32" then return rows end
  return converted(rows, dt)
end

local function tokenizer_metadata(dir, cfg, md)
  local f = io.open(dir .. "/tokenizer.json", "rb")
  if not f then return end
  local s = f:read("*a")
  f:close()
  local ok, cjson = pcall(require, "cjson.safe")
  if not ok then return end
  local t = cjson.decode(s)
  if type(t) ~= "table" or type(t.model) ~= "table" or t.model.type ~= "BPE" then return end
  -- only pre-tokenizers llama.cpp (and tide.tokenizer's GGUF reader) name
  local pre
  local pt = t.pre_tokenizer
  if type(pt) == "table" and pt.type == "Sequence" and type(pt.pretokenizers) == "table" then
    local first = pt.pretokenizers[1]
    if first and first.type == "Split" and type(first.pattern) == "table" and first.pattern.Regex == "\\p{N}{1,3}" and
      #pt.pretokenizers == 4 then
      pre = "deepseek-v3"
    end
  end
  if not pre then return end
  local tokens, types = {}, {}
  local n = 0
  for tok, id in pairs(t.model.vocab) do
    tokens[id + 1] = tok
    types[id + 1] = 1
    if id + 1 > n then n = id + 1 end
  end
  for _, a in ipairs(t.added_tokens or {}) do
    tokens[a.id + 1] = a.content
    types[a.id + 1] = a.special and 3 or 4
    if a.id + 1 > n then n = a.id + 1 end
  end
  n = math.max(n, cfg.vocab_size or 0) -- pad to the model's vocabulary (llama.cpp checks it)
  for i = 1, n do
    if tokens[i] == nil then tokens[i] = "[PAD" .. (i - 1) .. "]"; types[i] = 5 end
  end
  local merges = {}
  for i, mg in ipairs(t.model.merges or {}) do
    merges[i] = type(mg) == "table" and (mg[1] .. " " .. mg[2]) or mg
  end
  md["tokenizer.ggml.model"] = "gpt2"
  md["tokenizer.ggml.pre"] = pre
  md["tokenizer.ggml.tokens"] = gguf.array("string", tokens)
  md["tokenizer.ggml.token_type"] = gguf.array("int32", types)
  md["tokenizer.ggml.merges"] = gguf.array("string", merges)
  if cfg.bos_token_id then md["tokenizer.ggml.bos_token_id"] = gguf.u32(cfg.bos_token_id) end
  if type(cfg.eos_token_id) == "number" then md["tokenizer.ggml.eos_token_id"] = gguf.u32(cfg.eos_token_id) end
  md["tokenizer.ggml.add_bos_token"] = true
  local tf = io.open(dir .. "/tokenizer_config.json", "rb")
  if tf then
    local tc = cjson.decode(tf:read("*a"))
    tf:close()
    if type(tc) == "table" and type(tc.chat_template) == "string" then md["tokenizer.chat_template"] = tc.chat_template end
  end
end

-- convert(hf_dir, out_path, {dtype = "f16" | "f32"}) -> true or nil, err
-- Quantizing writers (tide.quant) also pass: tensors (name -> tensor,
-- replacing the checkpoint's), type_of(gguf_name, hf_name, t) -> dtype of a
-- matrix, quantize(gguf_name, hf_name, t, dtype) -> tensor or nil (custom
-- rounding), file_type (general.file_type).
function M.convert(dir, out, opts)
  opts = opts or {}
  local dt = opts.dtype or "f16"
  if dt ~= "f16" and dt ~= "f32" and not opts.type_of then return nil, "convert: dtype must be f16 or f32" end
  local tide = require "tide"
  local m, e = tide.load(dir, { mtp = true })
  if not m then return nil, e end
  local cfg, src = m.config, m.tensors
  if opts.tensors then src = setmetatable(opts.tensors, { __index = m.tensors }) end
  local mt = cfg.model_type
  local arch = (mt == "llama") and "llama" or (mt == "deepseek_v3") and "deepseek2" or nil
  if not arch then return nil, "convert: model_type '" .. tostring(mt) .. "' has no GGUF architecture here" end
  local A = arch .. "."
  local md = { ["general.architecture"] = arch, ["general.name"] = dir:match("([^/]+)/*$") or dir,
    ["general.file_type"] = gguf.u32(opts.file_type or (dt == "f16" and 1 or 0)) }
  if opts.file_type then md["general.quantization_version"] = gguf.u32(2) end
  local nl = cfg.num_hidden_layers
  local n_mtp = (arch == "deepseek2") and #m.arch.mtp or 0
  md[A .. "context_length"] = gguf.u32(cfg.max_position_embeddings or 4096)
  md[A .. "embedding_length"] = gguf.u32(cfg.hidden_size)
  md[A .. "block_count"] = gguf.u32(nl + n_mtp)
  md[A .. "feed_forward_length"] = gguf.u32(cfg.intermediate_size)
  md[A .. "attention.head_count"] = gguf.u32(cfg.num_attention_heads)
  md[A .. "attention.head_count_kv"] = gguf.u32(cfg.num_key_value_heads or cfg.num_attention_heads)
  md[A .. "attention.layer_norm_rms_epsilon"] = gguf.f32(cfg.rms_norm_eps or 1e-6)
  md[A .. "vocab_size"] = gguf.u32(cfg.vocab_size)
  md[A .. "rope.freq_base"] = gguf.f32(cfg.rope_theta or 10000)
  local rp = cfg.rope_parameters or cfg.rope_scaling
  local rtype = rp and (rp.rope_type or rp.type) or "default"
  if rtype ~= "default" then
    md[A .. "rope.scaling.type"] = rtype
    md[A .. "rope.scaling.factor"] = gguf.f32(rp.factor)
    if rp.original_max_position_embeddings then
      md[A .. "rope.scaling.original_context_length"] = gguf.u32(rp.original_max_position_embeddings)
    end
    if rtype == "yarn" then
      md[A .. "rope.scaling.yarn_beta_fast"] = gguf.f32(rp.beta_fast or 32)
      md[A .. "rope.scaling.yarn_beta_slow"] = gguf.f32(rp.beta_slow or 1)
      if rp.mscale_all_dim then md[A .. "rope.scaling.yarn_log_multiplier"] = gguf.f32(0.1 * rp.mscale_all_dim) end
      if rp.mscale then md[A .. "rope.scaling.yarn_mscale"] = gguf.f32(rp.mscale) end
      if rp.attention_factor then md[A .. "rope.scaling.attn_factor"] = gguf.f32(rp.attention_factor) end
    elseif rtype == "llama3" then
      md[A .. "rope.scaling.low_freq_factor"] = gguf.f32(rp.low_freq_factor)
      md[A .. "rope.scaling.high_freq_factor"] = gguf.f32(rp.high_freq_factor)
    end
  end
  local hd
  if arch == "llama" then
    hd = cfg.head_dim or cfg.hidden_size / cfg.num_attention_heads
    md[A .. "rope.dimension_count"] = gguf.u32(hd)
    md[A .. "attention.key_length"] = gguf.u32(hd)
    md[A .. "attention.value_length"] = gguf.u32(hd)
  else
    md[A .. "rope.dimension_count"] = gguf.u32(cfg.qk_rope_head_dim)
    md[A .. "attention.key_length"] = gguf.u32(cfg.qk_nope_head_dim + cfg.qk_rope_head_dim)
    md[A .. "attention.value_length"] = gguf.u32(cfg.v_head_dim)
    md[A .. "attention.kv_lora_rank"] = gguf.u32(cfg.kv_lora_rank)
    md[A .. "attention.q_lora_rank"] = gguf.u32(cfg.q_lora_rank or 0)
    md[A .. "expert_feed_forward_length"] = gguf.u32(cfg.moe_intermediate_size)
    md[A .. "expert_count"] = gguf.u32(cfg.n_routed_experts)
    md[A .. "expert_shared_count"] = gguf.u32(cfg.n_shared_experts or 0)
    md[A .. "expert_used_count"] = gguf.u32(cfg.num_experts_per_tok)
    md[A .. "expert_weights_scale"] = gguf.f32(cfg.routed_scaling_factor or 1)
    md[A .. "expert_weights_norm"] = cfg.norm_topk_prob and true or false
    md[A .. "expert_gating_func"] = gguf.u32(2) -- sigmoid
    md[A .. "leading_dense_block_count"] = gguf.u32(cfg.first_k_dense_replace or 0)
    md[A .. "expert_group_count"] = gguf.u32(cfg.n_group or 1)
    md[A .. "expert_group_used_count"] = gguf.u32(cfg.topk_group or 1)
    md[A .. "nextn_predict_layers"] = gguf.u32(n_mtp)
    md[A .. "rope.interleave"] = cfg.rope_interleave ~= false
  end
  tokenizer_metadata(dir, cfg, md)

  local out_t = {}
  local function finish(name, hf, t, force_f32)
    local d = (force_f32 or t:ndim() == 1) and "f32" or (opts.type_of and opts.type_of(name, hf, t)) or dt
    return (d ~= "f32" and opts.quantize and opts.quantize(name, hf, t, d)) or converted(t, d)
  end
  local function put(name, t, force_f32, hf) out_t[name] = finish(name, hf, t, force_f32) end
  for _, g in ipairs(GLOBAL) do if src[g[1]] then put(g[2], src[g[1]], nil, g[1]) end end
  if not src["lm_head.weight"] and cfg.tie_word_embeddings then out_t["output.weight"] = nil end
  local per_layer = { LAYER_COMMON, arch == "llama" and LAYER_LLAMA or LAYER_DSV3 }
  local n_kv = cfg.num_key_value_heads or cfg.num_attention_heads
  for i = 0, nl + n_mtp - 1 do
    local p, q = "model.layers." .. i .. ".", "blk." .. i .. "."
    for _, list in ipairs(per_layer) do
      for _, pair in ipairs(list) do
        local t = src[p .. pair[1]]
        if t then
          if arch == "llama" and pair[1] == "self_attn.q_proj.weight" then
            out_t[q .. pair[2]] = finish(q .. pair[2], p .. pair[1], permuted(t, cfg.num_attention_heads, "f32"))
          elseif arch == "llama" and pair[1] == "self_attn.k_proj.weight" then
            out_t[q .. pair[2]] = finish(q .. pair[2], p .. pair[1], permuted(t, n_kv, "f32"))
          else
            put(q .. pair[2], t, pair[1]:match("e_score_correction_bias"), p .. pair[1])
          end
        end
      end
    end
    -- routed experts, stacked
    local E = cfg.n_routed_experts or 0
    if arch == "deepseek2" and src[p .. "mlp.experts.0.gate_proj.weight"] then
      for _, pr in ipairs(EXPERT_PROJ) do
        local s0 = src[p .. "mlp.experts.0." .. pr[1] .. ".weight"]:shape()
        local st = T.zeros({ E, s0[1], s0[2] }, opts.type_of and "f32" or dt)
        for e = 0, E - 1 do
          local w = src[p .. "mlp.experts." .. e .. "." .. pr[1] .. ".weight"]
          if not w then return nil, "convert: missing expert " .. e .. " of layer " .. i end
          T.op.convert(st:as_strided({ s0[1], s0[2] }, nil, e * s0[1] * s0[2]), w)
        end
        local fin = opts.type_of and finish(q .. pr[2] .. ".weight", p .. "mlp.experts.*." .. pr[1] .. ".weight", st) or st
        if fin ~= st then st:free() end -- the f32 stack was a temporary
        out_t[q .. pr[2] .. ".weight"] = fin
      end
    end
  end
  local ok, werr = gguf.write(out, md, out_t)
  if not ok then return nil, werr end
  return true
end

-- ---- reading ----------------------------------------------------------------------

local function num(md, k, default)
  local v = md[k]
  if v == nil then return default end
  return tonumber(v)
end

-- read(path) -> cfg, tensors (Hugging Face names), or nil, err.
function M.read(path)
  local g, e = gguf.open(path)
  if not g then return nil, e end
  local md = g:metadata()
  local ts, te = g:tensors()
  if not ts then return nil, te end
  local arch = md["general.architecture"]
  if arch ~= "llama" and arch ~= "deepseek2" then
    return nil, path .. ": GGUF architecture '" .. tostring(arch) .. "' is not supported (llama, deepseek2)"
  end
  local A = arch .. "."
  local emb = ts["token_embd.weight"]
  if not emb then return nil, path .. ": missing tensor 'token_embd.weight'" end
  local cfg = {
    model_type = arch == "llama" and "llama" or "deepseek_v3",
    hidden_size = num(md, A .. "embedding_length"),
    intermediate_size = num(md, A .. "feed_forward_length"),
    num_attention_heads = num(md, A .. "attention.head_count"),
    num_key_value_heads = num(md, A .. "attention.head_count_kv"),
    rms_norm_eps = num(md, A .. "attention.layer_norm_rms_epsilon", 1e-6),
    rope_theta = num(md, A .. "rope.freq_base", 10000),
    max_position_embeddings = num(md, A .. "context_length", 4096),
    vocab_size = num(md, A .. "vocab_size") or emb:size(1),
    bos_token_id = num(md, "tokenizer.ggml.bos_token_id"),
    eos_token_id = num(md, "tokenizer.ggml.eos_token_id"),
    tie_word_embeddings = ts["output.weight"] == nil,
  }
  local blocks = num(md, A .. "block_count")
  local n_mtp = num(md, A .. "nextn_predict_layers", 0)
  if not blocks then return nil, path .. ": missing " .. A .. "block_count" end
  cfg.num_hidden_layers = blocks - n_mtp
  local rt = md[A .. "rope.scaling.type"]
  if rt and rt ~= "none" then
    local lm = num(md, A .. "rope.scaling.yarn_log_multiplier")
    cfg.rope_scaling = { type = rt, factor = num(md, A .. "rope.scaling.factor"),
      original_max_position_embeddings = num(md, A .. "rope.scaling.original_context_length"),
      beta_fast = num(md, A .. "rope.scaling.yarn_beta_fast"), beta_slow = num(md, A .. "rope.scaling.yarn_beta_slow"),
      mscale_all_dim = lm and lm / 0.1, mscale = num(md, A .. "rope.scaling.yarn_mscale") or (lm and lm / 0.1),
      attention_factor = num(md, A .. "rope.scaling.attn_factor"),
      low_freq_factor = num(md, A .. "rope.scaling.low_freq_factor"),
      high_freq_factor = num(md, A .. "rope.scaling.high_freq_factor") }
  end
  if arch == "llama" then
    cfg.head_dim = num(md, A .. "attention.key_length") or num(md, A .. "rope.dimension_count")
    cfg.tide_rope_interleave = true -- Q/K rows are in llama.cpp's permuted order
  else
    local dr = num(md, A .. "rope.dimension_count")
    cfg.qk_rope_head_dim = dr
    cfg.qk_nope_head_dim = num(md, A .. "attention.key_length", 0) - (dr or 0)
    cfg.v_head_dim = num(md, A .. "attention.value_length")
    cfg.kv_lora_rank = num(md, A .. "attention.kv_lora_rank")
    local qlr = num(md, A .. "attention.q_lora_rank", 0)
    cfg.q_lora_rank = qlr > 0 and qlr or nil
    cfg.moe_intermediate_size = num(md, A .. "expert_feed_forward_length")
    cfg.n_routed_experts = num(md, A .. "expert_count", 0)
    cfg.n_shared_experts = num(md, A .. "expert_shared_count", 0)
    cfg.num_experts_per_tok = num(md, A .. "expert_used_count")
    cfg.routed_scaling_factor = num(md, A .. "expert_weights_scale", 1)
    cfg.norm_topk_prob = md[A .. "expert_weights_norm"] == true
    cfg.first_k_dense_replace = num(md, A .. "leading_dense_block_count", 0)
    cfg.n_group = num(md, A .. "expert_group_count", 1)
    cfg.topk_group = num(md, A .. "expert_group_used_count", 1)
    cfg.num_nextn_predict_layers = n_mtp
    local gf = num(md, A .. "expert_gating_func", 2)
    cfg.scoring_func = gf == 2 and "sigmoid" or "softmax"
    local il = md[A .. "rope.interleave"]
    cfg.rope_interleave = il == nil and true or il
  end
  -- tensors under Hugging Face names
  local hf = {}
  for _, gp in ipairs(GLOBAL) do if ts[gp[2]] then hf[gp[1]] = ts[gp[2]] end end
  local per_layer = { LAYER_COMMON, arch == "llama" and LAYER_LLAMA or LAYER_DSV3 }
  for i = 0, blocks - 1 do
    local p, q = "model.layers." .. i .. ".", "blk." .. i .. "."
    for _, list in ipairs(per_layer) do
      for _, pair in ipairs(list) do
        local t = ts[q .. pair[2]]
        if t then hf[p .. pair[1]] = t end
      end
    end
    for _, pr in ipairs(EXPERT_PROJ) do
      local st = ts[q .. pr[2] .. ".weight"]
      if st then
        local s = st:shape()
        if #s ~= 3 then return nil, path .. ": " .. q .. pr[2] .. ".weight must be 3-D" end
        for e = 0, s[1] - 1 do
          hf[p .. "mlp.experts." .. e .. "." .. pr[1] .. ".weight"] = st:narrow(1, e + 1, 1):reshape({ s[2], s[3] })
        end
      end
    end
  end
  return cfg, hf, md
end

-- The tokenizer stored in a GGUF's metadata, or nil, err.
function M.tokenizer(path, md)
  if not md then
    local g, e = gguf.open(path)
    if not g then return nil, e end
    md = g:metadata()
  end
  local ok, tk = pcall(require, "tide.tokenizer")
  if not ok then return nil, tk end
  return tk.from_gguf_metadata(md)
end

return M
