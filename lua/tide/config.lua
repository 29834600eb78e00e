-- tide.config: read a Hugging Face config.json and return it normalized for
-- the model types Tide runs ("llama", "deepseek_v3"): every field present,
-- defaults filled in as transformers fills them, rope settings gathered in
-- `rope_parameters` (from `rope_parameters`, or the legacy `rope_scaling`
-- with `type`/`rope_type` and `rope_theta`), the file's table kept as `.raw`.
--   local cfg, err = require("tide.config").load("models/llama-tiny")
-- Errors are nil, "PATH: field: problem".
local cjson = require "cjson.safe"

local M = {}

local NULL = cjson.null

-- Defaults as in transformers' LlamaConfig / DeepseekV3Config.
local COMMON = {
  hidden_act = "silu",
  max_position_embeddings = 2048,
  initializer_range = 0.02,
  rms_norm_eps = 1e-6,
  use_cache = true,
  tie_word_embeddings = false,
  rope_theta = 10000.0,
  attention_bias = false,
  attention_dropout = 0.0,
  pretraining_tp = 1,
}

local LLAMA = {
  required = { "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads" },
  defaults = { bos_token_id = 1, eos_token_id = 2, mlp_bias = false },
}

local DSV3 = {
  required = { "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "moe_intermediate_size", "n_routed_experts", "num_experts_per_tok", "kv_lora_rank", "qk_rope_head_dim",
    "qk_nope_head_dim", "v_head_dim" },
  defaults = {
    max_position_embeddings = 4096,
    bos_token_id = 0,
    eos_token_id = 1,
    n_shared_experts = 1,
    routed_scaling_factor = 2.5,
    q_lora_rank = 1536, -- an explicit null means no q compression
    n_group = 8,
    topk_group = 4,
    topk_method = "noaux_tc",
    scoring_func = "sigmoid",
    first_k_dense_replace = 3,
    moe_layer_freq = 1,
    norm_topk_prob = true,
    rope_interleave = true,
    num_nextn_predict_layers = 0,
    ep_size = 1,
  },
}

local TYPES = { llama = LLAMA, deepseek_v3 = DSV3 }

local ROPE_TYPES = { default = true, linear = true, dynamic = true, yarn = true, longrope = true, llama3 = true }

local function fail(label, field, problem)
  error({ msg = label .. ": " .. field .. ": " .. problem }, 0)
end

local function show(v)
  if type(v) == "string" then return "'" .. v .. "'" end
  if v == NULL then return "null" end
  return tostring(v)
end

local function is_int(v) return type(v) == "number" and v == math.floor(v) and v > -math.huge and v < math.huge end

local function pos_int(cfg, label, k, allow_zero)
  local v = cfg[k]
  if not is_int(v) or v < 0 or (v == 0 and not allow_zero) then
    fail(label, k, "expected a " .. (allow_zero and "non-negative" or "positive") .. " integer, got " .. show(v))
  end
end

local function pos_num(cfg, label, k)
  local v = cfg[k]
  if type(v) ~= "number" or not (v > 0) or v == math.huge then
    fail(label, k, "expected a positive number, got " .. show(v))
  end
end

local function boolean(cfg, label, k)
  if type(cfg[k]) ~= "boolean" then fail(label, k, "expected true or false, got " .. show(cfg[k])) end
end

local function divides(label, a_name, a, b_name, b)
  if b % a ~= 0 then fail(label, a_name, a .. " does not divide " .. b_name .. " " .. b) end
end

-- rope_parameters: { rope_type, rope_theta, factor, ... } from either style.
local function normalize_rope(cfg, raw, label)
  local src, field
  if type(raw.rope_parameters) == "table" then
    src, field = raw.rope_parameters, "rope_parameters"
  elseif raw.rope_parameters ~= nil and raw.rope_parameters ~= NULL then
    fail(label, "rope_parameters", "expected an object, got " .. show(raw.rope_parameters))
  elseif type(raw.rope_scaling) == "table" then
    src, field = raw.rope_scaling, "rope_scaling"
  elseif raw.rope_scaling ~= nil and raw.rope_scaling ~= NULL then
    fail(label, "rope_scaling", "expected an object or null, got " .. show(raw.rope_scaling))
  end
  local rp = {}
  for k, v in pairs(src or {}) do if v ~= NULL then rp[k] = v end end
  local rt = rp.rope_type or rp.type or "default"
  if rp.rope_type and rp.type and rp.rope_type ~= rp.type then
    fail(label, field, "'type' " .. show(rp.type) .. " and 'rope_type' " .. show(rp.rope_type) .. " disagree")
  end
  if rt == "su" then rt = "longrope" end
  if type(rt) ~= "string" or not ROPE_TYPES[rt] then fail(label, field .. ".rope_type", "unknown " .. show(rt)) end
  rp.type = nil
  rp.rope_type = rt
  rp.rope_theta = rp.rope_theta or cfg.rope_theta
  if type(rp.rope_theta) ~= "number" or not (rp.rope_theta > 0) then
    fail(label, "rope_theta", "expected a positive number, got " .. show(rp.rope_theta))
  end
  if rt ~= "default" then
    if type(rp.factor) ~= "number" or not (rp.factor >= 1) then
      fail(label, field .. ".factor", "expected a number >= 1 for " .. rt .. " scaling, got " .. show(rp.factor))
    end
  end
  if rt == "yarn" then
    rp.beta_fast = rp.beta_fast or 32
    rp.beta_slow = rp.beta_slow or 1
    rp.original_max_position_embeddings = rp.original_max_position_embeddings or cfg.max_position_embeddings
    for _, k in ipairs({ "beta_fast", "beta_slow", "original_max_position_embeddings" }) do
      if type(rp[k]) ~= "number" or not (rp[k] > 0) then fail(label, field .. "." .. k, "expected a positive number") end
    end
  elseif rt == "llama3" then
    for _, k in ipairs({ "low_freq_factor", "high_freq_factor", "original_max_position_embeddings" }) do
      if type(rp[k]) ~= "number" or not (rp[k] > 0) then fail(label, field .. "." .. k, "missing for llama3 scaling") end
    end
    if rp.high_freq_factor <= rp.low_freq_factor then
      fail(label, field .. ".high_freq_factor", "must exceed low_freq_factor")
    end
  end
  cfg.rope_theta = rp.rope_theta
  cfg.rope_parameters = rp
  -- legacy view: nil for plain rope, else the table with both key spellings
  if rt == "default" then
    cfg.rope_scaling = nil
  else
    local rs = {}
    for k, v in pairs(rp) do rs[k] = v end
    rs.rope_theta = nil
    rs.type = rt
    cfg.rope_scaling = rs
  end
end

local function normalize_quant(cfg, raw, label)
  local q = raw.quantization_config
  if q == nil or q == NULL then cfg.quantization_config = nil return end
  if type(q) ~= "table" then fail(label, "quantization_config", "expected an object, got " .. show(q)) end
  local n = {}
  for k, v in pairs(q) do if v ~= NULL then n[k] = v end end
  if type(n.quant_method) ~= "string" then fail(label, "quantization_config.quant_method", "missing") end
  if n.quant_method == "fp8" then
    n.fmt = n.fmt or "e4m3"
    if n.fmt ~= "e4m3" then fail(label, "quantization_config.fmt", "unsupported " .. show(n.fmt) .. " (only e4m3)") end
    n.activation_scheme = n.activation_scheme or "dynamic"
    local b = n.weight_block_size
    if b ~= nil then
      if type(b) ~= "table" or #b ~= 2 or not is_int(b[1]) or not is_int(b[2]) or b[1] <= 0 or b[2] <= 0 then
        fail(label, "quantization_config.weight_block_size", "expected two positive integers")
      end
      n.weight_block_size = { b[1], b[2] }
    end
  end
  cfg.quantization_config = n
end

-- Normalize a decoded config table; label names it in errors.
function M.normalize(raw, label)
  label = label or "config.json"
  if type(raw) ~= "table" then return nil, label .. ": expected a JSON object" end
  local ok, res = pcall(function()
    local mt = raw.model_type
    if mt == nil or mt == NULL then fail(label, "model_type", "missing") end
    local spec = TYPES[mt]
    if not spec then fail(label, "model_type", "unknown " .. show(mt) .. " (expected llama or deepseek_v3)") end
    local cfg = {}
    for k, v in pairs(COMMON) do cfg[k] = v end
    for k, v in pairs(spec.defaults) do cfg[k] = v end
    for k, v in pairs(raw) do
      if v == NULL then cfg[k] = nil else cfg[k] = v end
    end
    if mt == "deepseek_v3" and raw.q_lora_rank == NULL then cfg.q_lora_rank = nil end
    for _, k in ipairs(spec.required) do
      if cfg[k] == nil then fail(label, k, "missing") end
      pos_int(cfg, label, k)
    end
    -- attention heads
    if cfg.num_key_value_heads == nil then cfg.num_key_value_heads = cfg.num_attention_heads end
    pos_int(cfg, label, "num_key_value_heads")
    divides(label, "num_key_value_heads", cfg.num_key_value_heads, "num_attention_heads", cfg.num_attention_heads)
    if mt == "llama" then
      if cfg.head_dim == nil then
        divides(label, "num_attention_heads", cfg.num_attention_heads, "hidden_size", cfg.hidden_size)
        cfg.head_dim = math.floor(cfg.hidden_size / cfg.num_attention_heads)
      end
      pos_int(cfg, label, "head_dim")
      boolean(cfg, label, "mlp_bias")
    else
      cfg.qk_head_dim = cfg.qk_nope_head_dim + cfg.qk_rope_head_dim
      if cfg.head_dim == nil then cfg.head_dim = cfg.qk_rope_head_dim end
      pos_int(cfg, label, "head_dim")
      if cfg.q_lora_rank ~= nil then pos_int(cfg, label, "q_lora_rank") end
      for _, k in ipairs({ "n_group", "topk_group", "moe_layer_freq" }) do pos_int(cfg, label, k) end
      for _, k in ipairs({ "n_shared_experts", "first_k_dense_replace", "num_nextn_predict_layers" }) do
        pos_int(cfg, label, k, true)
      end
      pos_num(cfg, label, "routed_scaling_factor")
      boolean(cfg, label, "norm_topk_prob")
      boolean(cfg, label, "rope_interleave")
      if cfg.topk_group > cfg.n_group then
        fail(label, "topk_group", cfg.topk_group .. " exceeds n_group " .. cfg.n_group)
      end
      divides(label, "n_group", cfg.n_group, "n_routed_experts", cfg.n_routed_experts)
      if cfg.num_experts_per_tok > cfg.n_routed_experts then
        fail(label, "num_experts_per_tok", cfg.num_experts_per_tok .. " exceeds n_routed_experts " .. cfg.n_routed_experts)
      end
      local per_group = cfg.n_routed_experts / cfg.n_group
      if cfg.num_experts_per_tok > cfg.topk_group * per_group then
        fail(label, "num_experts_per_tok", cfg.num_experts_per_tok .. " exceeds the " .. cfg.topk_group * per_group ..
          " experts of topk_group " .. cfg.topk_group .. " groups")
      end
      if cfg.first_k_dense_replace > cfg.num_hidden_layers then
        fail(label, "first_k_dense_replace", cfg.first_k_dense_replace .. " exceeds num_hidden_layers " ..
          cfg.num_hidden_layers)
      end
      if cfg.scoring_func ~= "sigmoid" and cfg.scoring_func ~= "softmax" then
        fail(label, "scoring_func", "unknown " .. show(cfg.scoring_func))
      end
    end
    pos_int(cfg, label, "max_position_embeddings")
    pos_num(cfg, label, "rms_norm_eps")
    boolean(cfg, label, "tie_word_embeddings")
    boolean(cfg, label, "attention_bias")
    if type(cfg.hidden_act) ~= "string" then fail(label, "hidden_act", "expected a string, got " .. show(cfg.hidden_act)) end
    normalize_rope(cfg, raw, label)
    normalize_quant(cfg, raw, label)
    cfg.raw = raw
    return cfg
  end)
  if ok then return res end
  if type(res) == "table" and res.msg then return nil, res.msg end
  error(res, 0)
end

-- Load PATH (a config.json or a folder holding one).
function M.load(path)
  if type(path) ~= "string" then error("config.load: path must be a string", 2) end
  local file = path
  local f = io.open(path .. "/config.json", "rb")
  if f then file = path .. "/config.json" else f = io.open(path, "rb") end
  if not f then return nil, path .. ": cannot open config.json" end
  local text = f:read("*a")
  f:close()
  if text == nil then return nil, file .. ": cannot read" end
  local raw, e = cjson.decode(text)
  if raw == nil then return nil, file .. ": invalid JSON: " .. tostring(e) end
  return M.normalize(raw, file)
end

return M
