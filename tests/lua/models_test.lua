-- Models against the transformers fixtures (tests/fixtures, computed in
-- float32 from the shipped checkpoints): logits, greedy generation through
-- the paged cache (whole prompt and chunks of 5, block size 16), MTP logits,
-- both MLA modes, FP8; the ragged batch; and bad input.
local H = require "helpers"
local tide = require "tide"
local ffi = require "ffi"

local TOL = 1e-3
local fixtures = {}
local function fixture(name)
  if not fixtures[name] then
    fixtures[name] = assert(tide.load_safetensors("tests/fixtures/" .. name .. ".safetensors"))
  end
  return fixtures[name]
end

local function ints(t)
  local l = t:tolist()
  for i = 1, #l do l[i] = math.floor(l[i] + 0.5) end
  return l
end

-- max |a - b| over the last rows of got (n, V) against ref (r, V)
local function max_diff_tail(got, ref)
  local V = ref:size(-1)
  local r = ref:numel() / V
  local n = got:size(1)
  local gp = ffi.cast("float*", got:cdata().data)
  local rr = ref:contiguous()
  local rp = ffi.cast("float*", rr:cdata().data)
  local worst = 0
  for i = 0, r * V - 1 do
    local d = math.abs(gp[(n - r) * V + i] - rp[i])
    if not (d <= worst) then worst = d end
  end
  return worst
end

local models = {}
local function model(name, mla)
  local key = name .. "/" .. tostring(mla)
  if not models[key] then models[key] = assert(tide.load("models/" .. name, { mla = mla })) end
  return models[key]
end

local function check_logits(name, mla)
  local m = model(name, mla)
  local fx = fixture(name)
  for i = 0, 3 do
    local ids = ints(fx["p" .. i .. ".ids"])
    local logits, mtp = m:forward(ids, { mtp = true })
    H.truthy(logits, "forward")
    H.eq(logits:size(1), #ids, "logits rows")
    H.eq(logits:size(2), m.n_vocab, "logits cols")
    local d = max_diff_tail(logits, fx["p" .. i .. ".logits"])
    if d > TOL then error(string.format("%s/%s p%d: logits differ by %g", name, tostring(mla), i, d)) end
    local ref_mtp = fx["p" .. i .. ".mtp_logits"]
    if ref_mtp then
      H.truthy(mtp, "mtp logits")
      H.eq(mtp:size(1), #ids - 1, "mtp rows")
      local dm = max_diff_tail(mtp, ref_mtp)
      if dm > TOL then error(string.format("%s/%s p%d: MTP logits differ by %g", name, tostring(mla), i, dm)) end
    end
  end
end

local function check_generate(name, mla, kv)
  local m = model(name, mla)
  local fx = fixture(name)
  for i = 0, 3 do
    local ids = ints(fx["p" .. i .. ".ids"])
    local want = ints(fx["p" .. i .. ".greedy"])
    local g = assert(m:generate(ids, { max_tokens = 24, temperature = 0 }))
    H.same(g, want, name .. " p" .. i .. " greedy")
    local g5 = assert(m:generate(ids, { max_tokens = 24, temperature = 0, chunk = 5 }))
    H.same(g5, want, name .. " p" .. i .. " greedy, prompt in chunks of 5")
    -- prompt + greedy scored in one pass
    local all = {}
    for _, v in ipairs(ids) do all[#all + 1] = v end
    for _, v in ipairs(want) do all[#all + 1] = v end
    local lg = assert(m:forward(all))
    local d = max_diff_tail(lg, fx["p" .. i .. ".gen_logits_last"])
    if d > TOL then error(string.format("%s p%d: gen_logits_last differ by %g", name, i, d)) end
  end
  -- every block went back to the cache
  H.eq(m.kv:free_blocks(), m.kv.n_blocks, "blocks freed")
  H.eq(m.kv.block_size, 16, "block size")
end

local T = {}

function T.llama_logits() check_logits("llama-tiny") end
function T.llama_generate() check_generate("llama-tiny") end
function T.dsv3_naive_logits_and_mtp() check_logits("dsv3-tiny", "naive") end
function T.dsv3_absorb_logits_and_mtp() check_logits("dsv3-tiny", "absorb") end
function T.dsv3_naive_generate() check_generate("dsv3-tiny", "naive") end
function T.dsv3_absorb_generate() check_generate("dsv3-tiny", "absorb") end
function T.dsv3_fp8_naive() check_logits("dsv3-tiny-fp8", "naive") check_generate("dsv3-tiny-fp8", "naive") end
function T.dsv3_fp8_absorb() check_logits("dsv3-tiny-fp8", "absorb") check_generate("dsv3-tiny-fp8", "absorb") end

-- the default: absorbed for decode-sized steps, naive for prefill chunks
function T.dsv3_auto() check_logits("dsv3-tiny", "auto") check_generate("dsv3-tiny", "auto") end
function T.dsv3_fp8_auto() check_logits("dsv3-tiny-fp8", "auto") check_generate("dsv3-tiny-fp8", "auto") end

function T.fp8_weights_stay_fp8()
  local m = model("dsv3-tiny-fp8", "naive")
  local w = m.arch.layers[1].mlp.gate.weight
  H.eq(w:dtype(), "f8_e4m3", "stored dtype")
  H.truthy(w:cdata().scale ~= nil, "block scales attached")
end

-- Two sequences in one ragged step give the logits each gives alone, for
-- prefill and for a decode step that mixes them.
local function ragged(name, mla)
  local m = model(name, mla)
  local fx = fixture(name)
  local a, b = ints(fx["p1.ids"]), ints(fx["p2.ids"])
  local kv = m:kv_cache()
  local sa, sb = kv:seq_new(), kv:seq_new()
  local both = assert(m:step({ sa, sb }, { a, b }, "last"))
  local la = assert(m:forward(a))
  local lb = assert(m:forward(b))
  local V = m.n_vocab
  local function row_diff(t, r, ref, rr)
    local p = ffi.cast("float*", t:cdata().data) + (r - 1) * V
    local q = ffi.cast("float*", ref:cdata().data) + (rr - 1) * V
    local w = 0
    for i = 0, V - 1 do w = math.max(w, math.abs(p[i] - q[i])) end
    return w
  end
  H.truthy(row_diff(both, 1, la, #a) < 1e-4, "seq a in a ragged prefill")
  H.truthy(row_diff(both, 2, lb, #b) < 1e-4, "seq b in a ragged prefill")
  -- decode one token for each, in one step
  local step = assert(m:step({ sa, sb }, { { 5 }, { 7 } }, "last"))
  local a2, b2 = { unpack(a) }, { unpack(b) }
  a2[#a2 + 1] = 5
  b2[#b2 + 1] = 7
  local la2, lb2 = assert(m:forward(a2)), assert(m:forward(b2))
  H.truthy(row_diff(step, 1, la2, #a2) < 1e-4, "seq a decode")
  H.truthy(row_diff(step, 2, lb2, #b2) < 1e-4, "seq b decode")
  kv:seq_free(sa)
  kv:seq_free(sb)
end
function T.ragged_batch_llama() ragged("llama-tiny") end
function T.ragged_batch_dsv3_naive() ragged("dsv3-tiny", "naive") end
function T.ragged_batch_dsv3_absorb() ragged("dsv3-tiny", "absorb") end

-- MLA "auto" decides by new tokens per sequence: a decode step of 20
-- sequences (20 rows) runs absorbed, a 20-token prefill of one runs naive.
function T.dsv3_auto_decides_per_sequence()
  local T0 = require "tide.tensor"
  local m = model("dsv3-tiny", "auto")
  local kv = m:kv_cache()
  local seqs, prompts, steps = {}, {}, {}
  for i = 1, 20 do
    seqs[i] = kv:seq_new()
    prompts[i] = { 3 + i, 40 + i }
    steps[i] = { 100 + i }
  end
  assert(m:step(seqs, prompts, "last"))
  local function heads_calls(fn)
    T0.profile(true)
    T0.profile_report()
    fn()
    local r = T0.profile_report()
    T0.profile(false)
    return r.matmul_heads and r.matmul_heads.calls or 0
  end
  H.truthy(heads_calls(function() assert(m:step(seqs, steps, "last")) end) > 0, "20 decoding sequences: absorbed")
  for i = 1, 20 do kv:seq_free(seqs[i]) end
  local long = {}
  for i = 1, 20 do long[i] = 3 + i end
  H.eq(heads_calls(function() assert(m:forward(long)) end), 0, "a 20-token prefill: naive")
end

function T.kv_dtypes_and_bytes()
  local fx = fixture("dsv3-tiny")
  local ids = ints(fx["p0.ids"])
  for _, dt in ipairs({ "bf16", "f16" }) do
    local m = assert(tide.load("models/dsv3-tiny", { mla = "absorb", kv = { block = 8, dtype = dt } }))
    local kv = m:kv_cache()
    H.eq(kv.dtype, dt, "kv dtype")
    -- MLA: one latent row of kv_lora_rank + qk_rope_head_dim per token and layer (main + MTP)
    H.eq(kv:bytes_per_token(1), (64 + 16) * 2, "bytes per token per layer")
    H.eq(kv:bytes_per_token(), 5 * (64 + 16) * 2, "bytes per token")
    local lg = assert(m:forward(ids))
    local d = max_diff_tail(lg, fx["p0.logits"])
    H.truthy(d < 0.1, "logits with a " .. dt .. " cache close to the reference (" .. d .. ")")
  end
  local l = model("llama-tiny")
  -- GQA: K and V of 2 heads x 32 in f32
  H.eq(l:kv_cache():bytes_per_token(1), 2 * 2 * 32 * 4, "llama bytes per token per layer")
end

function T.sampling_is_seeded()
  local m = model("llama-tiny")
  local ids = ints(fixture("llama-tiny")["p0.ids"])
  local o = { max_tokens = 12, temperature = 0.9, top_p = 0.95, top_k = 50, seed = 11 }
  local a = assert(m:generate(ids, o))
  local b = assert(m:generate(ids, o))
  H.same(a, b, "same seed, same tokens")
  o.seed = 12
  local c = assert(m:generate(ids, o))
  H.eq(#c, 12, "length")
  -- stop ids end generation before the stop token
  local g = ints(fixture("llama-tiny")["p0.greedy"])
  local s = assert(m:generate(ids, { max_tokens = 24, temperature = 0, stop_ids = { g[4] } }))
  H.eq(#s, 3, "stopped at the stop id")
end

-- ---- bad input -----------------------------------------------------------------------

local function base_parts(name)
  local m = model(name, "naive")
  local cfg = {}
  for k, v in pairs(m.config) do cfg[k] = v end
  local t = {}
  for k, v in pairs(m.tensors) do t[k] = v end
  return cfg, t
end

function T.bad_config_is_refused()
  local M = require "tide.model"
  local cfg, t = base_parts("llama-tiny")
  cfg.hidden_size = nil
  H.fails("hidden_size", M.from_tensors(cfg, t))
  cfg, t = base_parts("llama-tiny")
  cfg.num_key_value_heads = 3
  H.fails("num_key_value_heads", M.from_tensors(cfg, t))
  cfg, t = base_parts("llama-tiny")
  cfg.hidden_size = 128 -- inconsistent with the weights
  H.fails("shape", M.from_tensors(cfg, t))
  cfg, t = base_parts("llama-tiny")
  cfg.model_type, cfg.architectures = "gpt2", nil
  H.fails("unsupported model_type", M.from_tensors(cfg, t))
  cfg, t = base_parts("llama-tiny")
  cfg.rope_parameters = { rope_type = "dynamic", factor = 2, rope_theta = 10000 }
  cfg.rope_scaling = { type = "dynamic", factor = 2 }
  H.fails("not supported", M.from_tensors(cfg, t))
  cfg, t = base_parts("dsv3-tiny")
  cfg.n_group = 3
  H.fails("n_group", M.from_tensors(cfg, t))
  cfg, t = base_parts("dsv3-tiny")
  cfg.kv_lora_rank = nil
  H.fails("kv_lora_rank", M.from_tensors(cfg, t))
  H.fails("mla", M.from_tensors(base_parts("dsv3-tiny"), select(2, base_parts("dsv3-tiny")), { mla = "fast" }))
end

function T.bad_checkpoint_is_refused()
  local M = require "tide.model"
  local cfg, t = base_parts("dsv3-tiny")
  t["model.layers.2.mlp.experts.7.up_proj.weight"] = nil
  H.fails("missing tensor 'model.layers.2.mlp.experts.7.up_proj.weight'", M.from_tensors(cfg, t))
  cfg, t = base_parts("llama-tiny")
  t["model.layers.1.self_attn.k_proj.weight"] = tide.zeros({ 32, 256 }, "bf16")
  H.fails("expected (64, 256)", M.from_tensors(cfg, t))
  -- on disk: no config, bad JSON
  local dir = H.tmpdir()
  H.fails("config.json", tide.load(dir))
  local f = io.open(dir .. "/config.json", "w")
  f:write("{ not json")
  f:close()
  local m, e = tide.load(dir)
  H.eq(m, nil, "bad json")
  H.truthy(e and #e > 0, "an error message")
  os.execute("rm -rf '" .. dir .. "'")
end

function T.bad_ids_and_long_prompts_are_refused()
  local m = model("llama-tiny")
  H.fails("outside the vocabulary", m:forward({ 0, 5, 8192 }))
  H.fails("outside the vocabulary", m:forward({ 0, -1 }))
  H.fails("outside the vocabulary", m:generate({ 0, 1.5 }, { max_tokens = 2 }))
  H.fails("non-empty", m:forward({}))
  local long = {}
  for i = 1, m.max_ctx + 1 do long[i] = i % 100 end
  H.fails("context", m:forward(long))
  H.fails("context", m:generate(long, { max_tokens = 2 }))
  H.fails("temperature", m:generate({ 0, 5 }, { temperature = -1 }))
  -- the model still works and no block leaked
  local lg = assert(m:forward({ 0, 5, 6 }))
  H.eq(lg:size(1), 3, "rows after errors")
  H.eq(m.kv:free_blocks(), m.kv.n_blocks, "no leaked blocks")
  H.eq(m.kv:seq_count(), 0, "no leaked sequences")
end

-- Short perplexity through tide.cmd.ppl's scorer, against the same number
-- computed another way (log-softmax in Lua over the logits of one pass).
function T.ppl_short_prefix()
  local P = require "tide.cmd.ppl"
  local m = model("llama-tiny")
  local f = assert(io.open("tests/data/val.txt", "rb"))
  local text = f:read("*a")
  f:close()
  local toks = P.token_stream(m, P.documents(text), 65)
  H.eq(#toks, 65, "tokens")
  H.eq(toks[1], m.bos_id, "starts with BOS")
  local nll, n = P.score(m, toks, 32)
  H.eq(n, 64, "predictions")
  local sum = 0
  for s = 1, 64, 32 do
    local win = {}
    for i = 0, 31 do win[i + 1] = toks[s + i] end
    local lg = assert(m:forward(win)):totable()
    for i = 1, 32 do
      local row, mx = lg[i], -math.huge
      for v = 1, #row do if row[v] > mx then mx = row[v] end end
      local z = 0
      for v = 1, #row do z = z + math.exp(row[v] - mx) end
      sum = sum - (row[toks[s + i] + 1] - mx - math.log(z))
    end
  end
  H.near(nll, sum / 64, 1e-4, "mean nll")
end

return T
