-- tide synth: random-weight checkpoints load and run, follow the preset's
-- shapes, are deterministic per seed and scaled as asked.
local tide = require "tide"
local H = require "helpers"
local S = require "tide.synth"
local ffi = require "ffi"

local T = {}

local function read(p)
  local f = assert(io.open(p, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

function T.dsv3_tiny_preset_loads_and_generates()
  local d = H.tmpdir() .. "/m"
  local ok, info = S.write({ preset = "dsv3-moe-tiny", arch = "deepseek_v3", out = d, seed = 7, shard_bytes = 4e6 })
  H.truthy(ok, tostring(info))
  H.truthy(info.shards > 1, "several shards")
  local m = assert(tide.load(d))
  local p = S.presets["dsv3-moe-tiny"]
  H.eq(m.config.hidden_size, p.hidden_size, "hidden")
  H.eq(m.config.n_routed_experts, p.n_routed_experts, "experts")
  H.eq(m.n_vocab, p.vocab_size, "vocab")
  H.truthy(m.tokenizer, "tokenizer copied")
  local logits = assert(m:forward(m.tokenizer:encode("Hello world")))
  local lp = ffi.cast("float*", logits:cdata().data)
  for i = 0, logits:numel() - 1 do
    local v = lp[i]
    if v ~= v or v == math.huge or v == -math.huge then error("non-finite logit at " .. i) end
  end
  -- weights: N(0, 0.02), norms 1
  local w = m.tensors["model.layers.1.mlp.experts.3.up_proj.weight"]:to("f32")
  local n, s1, s2 = w:numel(), 0, 0
  local wp = ffi.cast("float*", w:cdata().data)
  for i = 0, n - 1 do s1 = s1 + wp[i]; s2 = s2 + wp[i] * wp[i] end
  local mean, sd = s1 / n, math.sqrt(s2 / n - (s1 / n) ^ 2)
  H.truthy(math.abs(mean) < 0.002, "mean near 0: " .. mean)
  H.truthy(math.abs(sd - 0.02) < 0.001, "std near 0.02: " .. sd)
  H.eq(m.tensors["model.layers.0.input_layernorm.weight"]:get(5), 1, "norm weight")
end

function T.same_seed_same_bytes_other_seed_differs()
  local a, b, c = H.tmpdir(), H.tmpdir(), H.tmpdir()
  assert(S.write({ preset = "llama-tiny", out = a, seed = 3 }))
  assert(S.write({ preset = "llama-tiny", out = b, seed = 3 }))
  assert(S.write({ preset = "llama-tiny", out = c, seed = 4 }))
  local f = "/model-00001-of-00001.safetensors"
  H.truthy(read(a .. f) == read(b .. f), "same seed: same file")
  H.truthy(read(a .. f) ~= read(c .. f), "other seed: other weights")
  local m = assert(tide.load(a))
  H.eq(#m:generate({ 0, 5, 6 }, { max_tokens = 4, temperature = 0 }), 4, "generates")
end

function T.big_presets_have_the_issue_shapes()
  local function params(name)
    local n = 0
    for _, t in ipairs(S.tensor_list(S.presets[name])) do
      local k = 1
      for _, d in ipairs(t[2]) do k = k * d end
      n = n + k
    end
    return n
  end
  -- llama-1b: 16 x (4 D^2/... ) ; checked against the formula
  local D, F, V, L = 2048, 5632, 32000, 16
  local kv = 8 * 64
  H.eq(params("llama-1b"), 2 * V * D + D + L * (2 * D + D * D * 2 + 2 * D * kv + 3 * D * F), "llama-1b params")
  local c = S.config(S.presets["dsv3-moe-1b"])
  H.eq(c.n_routed_experts, 64); H.eq(c.num_experts_per_tok, 6); H.eq(c.n_shared_experts, 2)
  H.eq(c.first_k_dense_replace, 1); H.eq(c.intermediate_size, 2816); H.eq(c.moe_intermediate_size, 512)
  H.eq(c.q_lora_rank, 384); H.eq(c.kv_lora_rank, 256); H.eq(c.qk_rope_head_dim, 32); H.eq(c.n_group, 1)
end

-- A preset whose vocabulary is larger than the copied tokenizer's: the
-- extra ids become "<synth_ID>" entries, so anything the model generates
-- decodes, and encoding is unchanged.
function T.tokenizer_covers_the_model_vocabulary()
  local p = {}
  for k, v in pairs(S.presets["llama-tiny"]) do p[k] = v end
  p.vocab_size = 8300
  local d = H.tmpdir()
  assert(S.write({ preset = p, out = d, seed = 2 }))
  local m = assert(tide.load(d))
  H.eq(m.n_vocab, 8300, "vocab")
  H.eq(m.tokenizer:decode({ 8192, 8299 }), "<synth_8192><synth_8299>", "padded ids decode")
  local base = assert(tide.load("models/dsv3-tiny"))
  H.eq(table.concat(m.tokenizer:encode("Hello world, synth"), ","),
    table.concat(base.tokenizer:encode("Hello world, synth"), ","), "encoding unchanged")
  -- the text edit keeps the file valid JSON, also for an empty vocabulary
  local t = assert(S.pad_vocab('{"model": {"type": "BPE", "vocab": {}, "merges": []}}', 3))
  local j = require("cjson").decode(t)
  H.eq(j.model.vocab["<synth_2>"], 2, "empty vocab padded")
  H.eq(S.pad_vocab('{"model": {"vocab": {"a": 0, "b": 1}}}', 2), '{"model": {"vocab": {"a": 0, "b": 1}}}', "no-op when covered")
  H.fails("not a tokenizer", S.pad_vocab("[]", 4))
end

function T.bad_options_are_errors()
  H.fails("unknown preset", S.write({ preset = "nope", out = H.tmpdir() }))
  H.fails("arch", S.write({ preset = "llama-tiny", arch = "deepseek_v3", out = H.tmpdir() }))
  H.fails("dtype", S.write({ preset = "llama-tiny", dtype = "q4_0", out = H.tmpdir() }))
  local out, code = H.sh(H.q(H.tide) .. " synth --preset llama-tiny")
  H.eq(code, 1, "missing --out: " .. out)
end

return T
