-- tide.synth: random-weight checkpoints with real shapes, for speed work on
-- models larger than the caches. Writes a Hugging Face folder (config.json,
-- sharded safetensors + index, the tokenizer of models/dsv3-tiny).
--
--   require("tide.synth").write({ arch = "llama", preset = "llama-1b", out = "/tmp/l1b" })
--
-- Weights: N(0, std) (std 0.02) for matrices, 1 for norms, 0 for biases,
-- drawn from a 32-bit xorshift seeded by opts.seed, so a seed gives the same
-- bytes. The tokenizer has 8192 tokens; presets keep their own vocabulary
-- size (32000 for the 1B ones): ids >= 8192 are never produced by the
-- tokenizer, and the GGUF writer pads the token list to the vocabulary.
local ffi = require "ffi"
local bit = require "bit"
local T = require "tide.tensor"
local C = require("tide.ffi").C

local M = {}

local band, bxor, lshift, rshift = bit.band, bit.bxor, bit.lshift, bit.rshift

M.presets = {
  ["llama-1b"] = { arch = "llama", vocab_size = 32000, hidden_size = 2048, num_hidden_layers = 16,
    num_attention_heads = 32, num_key_value_heads = 8, intermediate_size = 5632 },
  ["llama-tiny"] = { arch = "llama", vocab_size = 8192, hidden_size = 256, num_hidden_layers = 2,
    num_attention_heads = 8, num_key_value_heads = 2, intermediate_size = 512 },
  ["dsv3-moe-1b"] = { arch = "deepseek_v3", vocab_size = 32000, hidden_size = 1024, num_hidden_layers = 12,
    num_attention_heads = 16, q_lora_rank = 384, kv_lora_rank = 256, qk_rope_head_dim = 32, qk_nope_head_dim = 64,
    v_head_dim = 64, n_routed_experts = 64, moe_intermediate_size = 512, num_experts_per_tok = 6,
    n_shared_experts = 2, first_k_dense_replace = 1, intermediate_size = 2816, n_group = 1, topk_group = 1 },
  ["dsv3-moe-tiny"] = { arch = "deepseek_v3", vocab_size = 8192, hidden_size = 256, num_hidden_layers = 2,
    num_attention_heads = 4, q_lora_rank = 96, kv_lora_rank = 64, qk_rope_head_dim = 16, qk_nope_head_dim = 32,
    v_head_dim = 32, n_routed_experts = 8, moe_intermediate_size = 128, num_experts_per_tok = 2,
    n_shared_experts = 1, first_k_dense_replace = 1, intermediate_size = 512, n_group = 1, topk_group = 1 },
}

-- config.json table for a preset
function M.config(p)
  local c = {
    vocab_size = p.vocab_size, hidden_size = p.hidden_size, intermediate_size = p.intermediate_size,
    num_hidden_layers = p.num_hidden_layers, num_attention_heads = p.num_attention_heads,
    num_key_value_heads = p.num_key_value_heads or p.num_attention_heads,
    hidden_act = "silu", max_position_embeddings = 4096, initializer_range = 0.02, rms_norm_eps = 1e-6,
    bos_token_id = 0, eos_token_id = 1, pad_token_id = 2, tie_word_embeddings = false, rope_theta = 10000.0,
    attention_bias = false, torch_dtype = "bfloat16",
  }
  if p.arch == "llama" then
    c.architectures = { "LlamaForCausalLM" }
    c.model_type = "llama"
    c.head_dim = p.hidden_size / p.num_attention_heads
  else
    c.architectures = { "DeepseekV3ForCausalLM" }
    c.model_type = "deepseek_v3"
    for _, k in ipairs({ "q_lora_rank", "kv_lora_rank", "qk_rope_head_dim", "qk_nope_head_dim", "v_head_dim",
      "n_routed_experts", "moe_intermediate_size", "num_experts_per_tok", "n_shared_experts",
      "first_k_dense_replace", "n_group", "topk_group" }) do c[k] = p[k] end
    c.num_nextn_predict_layers = 0
    c.routed_scaling_factor = 2.5
    c.topk_method = "noaux_tc"
    c.scoring_func = "sigmoid"
    c.norm_topk_prob = true
    c.moe_layer_freq = 1
  end
  return c
end

-- List of { name, shape, kind } ("w" random matrix, "one" norm, "zero" bias).
function M.tensor_list(p)
  local D, L = p.hidden_size, {}
  local function add(n, s, k) L[#L + 1] = { n, s, k or "w" } end
  add("model.embed_tokens.weight", { p.vocab_size, D })
  for i = 0, p.num_hidden_layers - 1 do
    local a = "model.layers." .. i .. "."
    add(a .. "input_layernorm.weight", { D }, "one")
    add(a .. "post_attention_layernorm.weight", { D }, "one")
    local H = p.num_attention_heads
    if p.arch == "llama" then
      local hd, kvh = D / H, p.num_key_value_heads
      add(a .. "self_attn.q_proj.weight", { H * hd, D })
      add(a .. "self_attn.k_proj.weight", { kvh * hd, D })
      add(a .. "self_attn.v_proj.weight", { kvh * hd, D })
      add(a .. "self_attn.o_proj.weight", { D, H * hd })
    else
      local dq = p.qk_nope_head_dim + p.qk_rope_head_dim
      add(a .. "self_attn.q_a_proj.weight", { p.q_lora_rank, D })
      add(a .. "self_attn.q_a_layernorm.weight", { p.q_lora_rank }, "one")
      add(a .. "self_attn.q_b_proj.weight", { H * dq, p.q_lora_rank })
      add(a .. "self_attn.kv_a_proj_with_mqa.weight", { p.kv_lora_rank + p.qk_rope_head_dim, D })
      add(a .. "self_attn.kv_a_layernorm.weight", { p.kv_lora_rank }, "one")
      add(a .. "self_attn.kv_b_proj.weight", { H * (p.qk_nope_head_dim + p.v_head_dim), p.kv_lora_rank })
      add(a .. "self_attn.o_proj.weight", { D, H * p.v_head_dim })
    end
    local dense = p.arch == "llama" or i < p.first_k_dense_replace
    if dense then
      add(a .. "mlp.gate_proj.weight", { p.intermediate_size, D })
      add(a .. "mlp.up_proj.weight", { p.intermediate_size, D })
      add(a .. "mlp.down_proj.weight", { D, p.intermediate_size })
    else
      local E, I = p.n_routed_experts, p.moe_intermediate_size
      add(a .. "mlp.gate.weight", { E, D })
      add(a .. "mlp.gate.e_score_correction_bias", { E }, "zero")
      for e = 0, E - 1 do
        local x = a .. "mlp.experts." .. e .. "."
        add(x .. "gate_proj.weight", { I, D })
        add(x .. "up_proj.weight", { I, D })
        add(x .. "down_proj.weight", { D, I })
      end
      local S = I * p.n_shared_experts
      add(a .. "mlp.shared_experts.gate_proj.weight", { S, D })
      add(a .. "mlp.shared_experts.up_proj.weight", { S, D })
      add(a .. "mlp.shared_experts.down_proj.weight", { D, S })
    end
  end
  add("model.norm.weight", { D }, "one")
  add("lm_head.weight", { p.vocab_size, D })
  return L
end

-- 65536 bf16 values at the quantiles of N(0, std): a 16-bit random index
-- picks one (a discretized normal, exact enough for random weights).
local function normal_table(std)
  local tb = ffi.new("uint16_t[65536]")
  -- inverse normal CDF (Acklam's rational approximation)
  local a = { -3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02, 1.383577518672690e+02,
    -3.066479806614716e+01, 2.506628277459239e+00 }
  local b = { -5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02, 6.680131188771972e+01,
    -1.328068155288572e+01 }
  local c = { -7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00, -2.549732539343734e+00,
    4.374664141464968e+00, 2.938163982698783e+00 }
  local d = { 7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00, 3.754408661907416e+00 }
  local function inv(pv)
    if pv < 0.02425 then
      local q = math.sqrt(-2 * math.log(pv))
      return (((((c[1] * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) * q + c[6]) /
        ((((d[1] * q + d[2]) * q + d[3]) * q + d[4]) * q + 1)
    elseif pv > 1 - 0.02425 then
      return -inv(1 - pv)
    end
    local q = pv - 0.5
    local r = q * q
    return (((((a[1] * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * r + a[6]) * q /
      (((((b[1] * r + b[2]) * r + b[3]) * r + b[4]) * r + b[5]) * r + 1)
  end
  for i = 0, 65535 do
    tb[i] = C.tide_f32_to_bf16(std * inv((i + 0.5) / 65536))
  end
  return tb
end

-- Fill a bf16 tensor with draws from tb; state is {s} (xorshift32, nonzero).
local function fill(t, kind, tb, st)
  local n = t:numel()
  local p = ffi.cast("uint16_t*", t:cdata().data)
  if kind == "one" then
    for i = 0, n - 1 do p[i] = 0x3f80 end
    return
  elseif kind == "zero" then
    ffi.fill(p, n * 2)
    return
  end
  local s = st[1]
  for i = 0, n - 1, 2 do
    s = bxor(s, lshift(s, 13)); s = bxor(s, rshift(s, 17)); s = bxor(s, lshift(s, 5))
    p[i] = tb[band(s, 0xffff)]
    if i + 1 < n then p[i + 1] = tb[rshift(s, 16)] end
  end
  st[1] = s
end

local write_file = require("tide.files").write

local function copy_file(src, dst)
  local f = io.open(src, "rb")
  if not f then return nil, "cannot read " .. src end
  local s = f:read("*a")
  f:close()
  return write_file(dst, s)
end

-- write(opts) -> true or nil, err. opts: preset (name or table), arch (checked
-- against the preset), out (folder), dtype (bf16 | f16 | f32), seed, std,
-- shard_bytes, tokenizer (folder to copy tokenizer files from), progress(msg).
function M.write(opts)
  local p = opts.preset
  if type(p) == "string" then
    local name = p
    p = M.presets[name]
    if not p then
      local names = {}
      for k in pairs(M.presets) do names[#names + 1] = k end
      table.sort(names)
      return nil, "unknown preset '" .. name .. "' (" .. table.concat(names, ", ") .. ")"
    end
  end
  if type(p) ~= "table" then return nil, "missing preset" end
  if opts.arch and opts.arch ~= p.arch then
    return nil, "preset is for arch '" .. p.arch .. "', not '" .. opts.arch .. "'"
  end
  local dt = opts.dtype or "bf16"
  if dt ~= "bf16" and dt ~= "f16" and dt ~= "f32" then return nil, "dtype must be bf16, f16 or f32" end
  local out = opts.out
  if type(out) ~= "string" then return nil, "missing out folder" end
  os.execute("mkdir -p '" .. out:gsub("'", "") .. "'")
  local A = require "tide.cmd.args"
  local cfg = M.config(p)
  cfg.torch_dtype = ({ bf16 = "bfloat16", f16 = "float16", f32 = "float32" })[dt]
  local ok, e = write_file(out .. "/config.json", A.json(cfg) .. "\n")
  if not ok then return nil, e end
  local tokdir = opts.tokenizer or "models/dsv3-tiny"
  for _, f in ipairs({ "tokenizer.json", "tokenizer_config.json" }) do
    local fo = io.open(tokdir .. "/" .. f, "rb")
    if fo then
      fo:close()
      ok, e = copy_file(tokdir .. "/" .. f, out .. "/" .. f)
      if not ok then return nil, e end
    end
  end
  local tb = normal_table(opts.std or 0.02)
  local st = { bit.tobit(((opts.seed or 1) * 2654435761 + 12345) % 4294967296) }
  if st[1] == 0 then st[1] = 1 end
  local list = M.tensor_list(p)
  local esz = dt == "f32" and 4 or 2
  local shard_bytes = opts.shard_bytes or 512 * 1024 * 1024
  -- group tensors into shards
  local shards, cur, cur_b, total = {}, {}, 0, 0
  for _, t in ipairs(list) do
    local n = 1
    for _, d in ipairs(t[2]) do n = n * d end
    local b = n * esz
    if #cur > 0 and cur_b + b > shard_bytes then shards[#shards + 1] = cur; cur, cur_b = {}, 0 end
    cur[#cur + 1] = t
    cur_b = cur_b + b
    total = total + b
  end
  if #cur > 0 then shards[#shards + 1] = cur end
  local weight_map, done, params = {}, 0, 0
  local progress = opts.progress
  for si, sh in ipairs(shards) do
    local fname = string.format("model-%05d-of-%05d.safetensors", si, #shards)
    local ts = {}
    for _, t in ipairs(sh) do
      local x = T.zeros(t[2], "bf16")
      fill(x, t[3], tb, st)
      if dt ~= "bf16" then
        local y = x:to(dt)
        x:free()
        x = y
      end
      ts[t[1]] = x
      weight_map[t[1]] = fname
      done = done + x:nbytes()
      params = params + x:numel()
    end
    ok, e = require("tide.safetensors").save(out .. "/" .. fname, ts, { format = "pt" })
    if not ok then return nil, e end
    for _, x in pairs(ts) do x:free() end
    if progress then progress(string.format("%s  %d/%d shards  %.0f/%.0f MiB", fname, si, #shards,
      done / 2 ^ 20, total / 2 ^ 20)) end
  end
  ok, e = write_file(out .. "/model.safetensors.index.json",
    A.json({ metadata = { total_size = total }, weight_map = weight_map }) .. "\n")
  if not ok then return nil, e end
  return true, { params = params, bytes = total, shards = #shards, config = cfg }
end

return M
