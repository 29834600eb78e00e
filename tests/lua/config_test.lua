-- tide.config: the shipped models' configs, transformers' defaults, the
-- rope key styles, and broken variants (each: nil, "config.json: field: problem").
local H = require "helpers"
local cjson = require "cjson"
local C = require "tide.config"

local T = {}

function T.llama_tiny()
  local c = assert(C.load("models/llama-tiny"))
  H.eq(c.model_type, "llama")
  H.eq(c.hidden_size, 256); H.eq(c.num_attention_heads, 8); H.eq(c.num_key_value_heads, 2)
  H.eq(c.head_dim, 32); H.eq(c.num_hidden_layers, 4); H.eq(c.vocab_size, 8192)
  H.eq(c.rope_theta, 10000); H.eq(c.rope_scaling, nil)
  H.same(c.rope_parameters, { rope_type = "default", rope_theta = 10000 })
  H.eq(c.rms_norm_eps, 1e-6); H.eq(c.tie_word_embeddings, false); H.eq(c.mlp_bias, false)
  H.eq(c.raw.rope_scaling, cjson.null, "raw keeps the file's table")
end

function T.dsv3_tiny_and_fp8()
  local c = assert(C.load("models/dsv3-tiny/config.json"))
  H.eq(c.model_type, "deepseek_v3")
  H.eq(c.q_lora_rank, 96); H.eq(c.kv_lora_rank, 64); H.eq(c.qk_head_dim, 48); H.eq(c.head_dim, 16)
  H.eq(c.rope_interleave, true, "default rope_interleave")
  H.eq(c.n_group, 4); H.eq(c.topk_group, 2); H.eq(c.num_experts_per_tok, 4); H.eq(c.n_routed_experts, 16)
  H.eq(c.first_k_dense_replace, 1); H.eq(c.moe_layer_freq, 1); H.eq(c.num_nextn_predict_layers, 1)
  H.eq(c.norm_topk_prob, true); H.eq(c.scoring_func, "sigmoid"); H.eq(c.routed_scaling_factor, 2.5)
  local rp = c.rope_parameters
  H.eq(rp.rope_type, "yarn"); H.eq(rp.factor, 4); H.eq(rp.original_max_position_embeddings, 512)
  H.eq(rp.beta_fast, 32); H.eq(rp.beta_slow, 1); H.eq(rp.mscale, 1); H.eq(rp.mscale_all_dim, 1)
  H.eq(rp.rope_theta, 10000)
  H.eq(c.rope_scaling.type, "yarn"); H.eq(c.rope_scaling.rope_type, "yarn")
  H.eq(c.quantization_config, nil)
  local f = assert(C.load("models/dsv3-tiny-fp8"))
  H.same(f.quantization_config, { quant_method = "fp8", fmt = "e4m3", activation_scheme = "dynamic",
    weight_block_size = { 128, 128 } })
end

local LLAMA_MIN = { model_type = "llama", vocab_size = 100, hidden_size = 64, intermediate_size = 128,
  num_hidden_layers = 2, num_attention_heads = 4 }

local function with(base, changes)
  local t = {}
  for k, v in pairs(base) do t[k] = v end
  for k, v in pairs(changes) do t[k] = v end
  return t
end

function T.transformers_defaults()
  local c = assert(C.normalize(LLAMA_MIN))
  H.eq(c.head_dim, 16); H.eq(c.num_key_value_heads, 4); H.eq(c.rope_theta, 10000)
  H.eq(c.max_position_embeddings, 2048); H.eq(c.rms_norm_eps, 1e-6); H.eq(c.hidden_act, "silu")
  H.eq(c.bos_token_id, 1); H.eq(c.eos_token_id, 2); H.eq(c.tie_word_embeddings, false)
  local d = assert(C.normalize({ model_type = "deepseek_v3", vocab_size = 100, hidden_size = 64,
    intermediate_size = 128, num_hidden_layers = 4, num_attention_heads = 4, moe_intermediate_size = 32,
    n_routed_experts = 16, num_experts_per_tok = 4, kv_lora_rank = 32, qk_rope_head_dim = 8,
    qk_nope_head_dim = 16, v_head_dim = 16, n_group = 4, topk_group = 2, q_lora_rank = cjson.null }))
  H.eq(d.q_lora_rank, nil, "null q_lora_rank: no q compression")
  H.eq(d.num_nextn_predict_layers, 0); H.eq(d.rope_interleave, true); H.eq(d.first_k_dense_replace, 3)
  H.eq(d.num_key_value_heads, 4); H.eq(d.norm_topk_prob, true); H.eq(d.topk_method, "noaux_tc")
end

function T.rope_key_styles()
  local c = assert(C.normalize(with(LLAMA_MIN, { rope_scaling = { type = "linear", factor = 2 } })))
  H.eq(c.rope_parameters.rope_type, "linear"); H.eq(c.rope_parameters.factor, 2)
  c = assert(C.normalize(with(LLAMA_MIN, { rope_theta = 500000, rope_scaling = { rope_type = "llama3", factor = 8,
    low_freq_factor = 1, high_freq_factor = 4, original_max_position_embeddings = 8192 } })))
  H.eq(c.rope_parameters.rope_type, "llama3"); H.eq(c.rope_theta, 500000); H.eq(c.rope_scaling.type, "llama3")
  c = assert(C.normalize(with(LLAMA_MIN, { rope_parameters = { rope_type = "yarn", rope_theta = 1e6, factor = 4 } })))
  H.eq(c.rope_theta, 1e6); H.eq(c.rope_parameters.beta_fast, 32)
  H.eq(c.rope_parameters.original_max_position_embeddings, 2048)
  c = assert(C.normalize(with(LLAMA_MIN, { rope_parameters = { rope_type = "default", rope_theta = 5e5 } })))
  H.eq(c.rope_theta, 5e5); H.eq(c.rope_scaling, nil)
end

-- Each broken config is written to a temp folder and loaded from there.
function T.broken_configs()
  local dir = H.tmpdir()
  local function load(tbl_or_text)
    local f = assert(io.open(dir .. "/config.json", "wb"))
    f:write(type(tbl_or_text) == "string" and tbl_or_text or cjson.encode(tbl_or_text))
    f:close()
    return C.load(dir)
  end
  local dsv3 = assert(io.open("models/dsv3-tiny/config.json")):read("*a")
  local D = cjson.decode(dsv3)
  local cases = {
    { with(LLAMA_MIN, { model_type = "gpt2" }), "config.json: model_type: unknown 'gpt2'" },
    { with(LLAMA_MIN, { model_type = cjson.null }), "config.json: model_type: missing" },
    { with(LLAMA_MIN, { hidden_size = cjson.null }), "config.json: hidden_size: missing" },
    { with(LLAMA_MIN, { hidden_size = "64" }), "config.json: hidden_size: expected a positive integer" },
    { with(LLAMA_MIN, { num_attention_heads = 6 }), "config.json: num_attention_heads: 6 does not divide hidden_size 64" },
    { with(LLAMA_MIN, { num_key_value_heads = 3 }), "config.json: num_key_value_heads: 3 does not divide num_attention_heads 4" },
    { with(LLAMA_MIN, { rms_norm_eps = -1 }), "config.json: rms_norm_eps: expected a positive number" },
    { with(LLAMA_MIN, { rope_scaling = { type = "weird", factor = 2 } }), "config.json: rope_scaling.rope_type: unknown 'weird'" },
    { with(LLAMA_MIN, { rope_scaling = { type = "linear", rope_type = "yarn", factor = 2 } }), "disagree" },
    { with(LLAMA_MIN, { rope_scaling = { type = "linear" } }), "config.json: rope_scaling.factor: expected a number >= 1" },
    { with(LLAMA_MIN, { rope_scaling = { rope_type = "llama3", factor = 8 } }), "config.json: rope_scaling.low_freq_factor: missing" },
    { with(D, { topk_group = 5 }), "config.json: topk_group: 5 exceeds n_group 4" },
    { with(D, { num_experts_per_tok = 17 }), "config.json: num_experts_per_tok: 17 exceeds n_routed_experts 16" },
    { with(D, { n_group = 3 }), "config.json: n_group: 3 does not divide n_routed_experts 16" },
    { with(D, { first_k_dense_replace = 9 }), "config.json: first_k_dense_replace: 9 exceeds num_hidden_layers 4" },
    { with(D, { kv_lora_rank = cjson.null }), "config.json: kv_lora_rank: missing" },
    { with(D, { q_lora_rank = 0 }), "config.json: q_lora_rank: expected a positive integer" },
    { with(D, { quantization_config = { quant_method = "fp8", fmt = "e5m2" } }), "config.json: quantization_config.fmt" },
    { "{\"model_type\": \"llama\",", "config.json: invalid JSON" },
    { "[1, 2]", "config.json: model_type: missing" },
  }
  for i, c in ipairs(cases) do
    local v, e = load(c[1])
    if v ~= nil or not tostring(e):find(c[2], 1, true) then
      error(string.format("case %d: expected nil, '%s'; got %s, %s", i, c[2], tostring(v), tostring(e)))
    end
  end
  H.fails("cannot open config.json", C.load(dir .. "/nothing"))
end

return T
