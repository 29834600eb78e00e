-- tide.model: load a model (Hugging Face folder or .gguf) and run it.
--
--   local m = tide.load("models/dsv3-tiny", { mla = "absorb", kv = { block = 16, dtype = "f32" } })
--   local logits = m:forward(ids)                 -- (#ids, vocab) f32, one sequence from an empty cache
--   local logits, mtp = m:forward(ids, { mtp = true })
--   local new_ids = m:generate(ids, { max_tokens = 24, temperature = 0 })
--
-- Every forward goes through one ragged-batch step (Model:step): tokens of
-- many sequences, each with positions and a block table into the paged KV
-- cache; prefill chunks and decode tokens take the same path.
local F = require "tide.ffi"
local T = require "tide.tensor"
local KV = require "tide.kv"
local ffi, C = F.ffi, F.C

local M = {}

local Model = {}
Model.__index = Model
M.Model = Model

local ARCHS = {
  llama = "tide.models.llama",
  LlamaForCausalLM = "tide.models.llama",
  deepseek_v3 = "tide.models.deepseek_v3",
  DeepseekV3ForCausalLM = "tide.models.deepseek_v3",
}

-- ---- weights ------------------------------------------------------------------

-- W:get(name, shape) returns the tensor (with FP8 block scales attached) or
-- raises "checkpoint: ..." naming the tensor; W:has(name).
local Weights = {}
Weights.__index = Weights

local function shape_str(s) return "(" .. table.concat(s, ", ") .. ")" end

function M.weights(tensors, block)
  return setmetatable({ t = tensors, block = block or { 128, 128 }, used = {} }, Weights)
end

function Weights:has(name) return self.t[name] ~= nil end

function Weights:get(name, shape)
  local w = self.t[name]
  if w == nil then error("checkpoint: missing tensor '" .. name .. "'", 0) end
  if shape then
    local s = w:shape()
    local ok = #s == #shape
    for i = 1, #shape do if s[i] ~= shape[i] then ok = false end end
    if not ok then
      error(string.format("checkpoint: tensor '%s' has shape %s, expected %s", name, shape_str(s), shape_str(shape)), 0)
    end
  end
  local sc = self.t[name .. "_scale_inv"]
  if sc and w:cdata().scale == nil then
    local br, bc = self.block[1], self.block[2]
    local ok, e = w:set_scale(sc, br, bc)
    if not ok then error("checkpoint: scales of '" .. name .. "': " .. tostring(e), 0) end
  end
  self.used[name] = true
  return w
end

-- ---- loading ---------------------------------------------------------------------

-- config.json through tide.config (normalized, defaults filled in).
local function load_config(dir)
  return require("tide.config").load(dir .. "/config.json")
end

local function attach_tokenizer(model, dir)
  local ok, tok, e = pcall(function() return require("tide.tokenizer").load(dir) end)
  if not ok then e, tok = tok, nil end
  if tok then model.tokenizer = tok else model.tokenizer_error = "tokenizer: " .. tostring(e) end
end

local function arch_of(cfg)
  local mt = cfg.model_type
  if mt and ARCHS[mt] then return ARCHS[mt] end
  for _, a in ipairs(cfg.architectures or {}) do if ARCHS[a] then return ARCHS[a] end end
  return nil
end

local function build(cfg, tensors, opts, source)
  local archmod = arch_of(cfg)
  if not archmod then
    return nil, string.format("%s: unsupported model_type '%s' (llama, deepseek_v3)", source, tostring(cfg.model_type))
  end
  local qc = cfg.quantization_config
  local block
  if type(qc) == "table" and qc.weight_block_size then block = qc.weight_block_size end
  if type(qc) == "table" and qc.quant_method and qc.quant_method ~= "fp8" then
    return nil, source .. ": quantization method '" .. tostring(qc.quant_method) .. "' not supported (fp8)"
  end
  if opts.numerics ~= nil and opts.numerics ~= "tide" and opts.numerics ~= "ggml" then
    return nil, source .. ": numerics must be 'tide' or 'ggml', not '" .. tostring(opts.numerics) .. "'"
  end
  if opts.numerics == "ggml" and opts.mla == nil then
    -- llama.cpp runs MLA in its naive form on GGUFs with attn_kv_b; the ggml-order ops cover that form
    opts = setmetatable({ mla = "naive" }, { __index = opts })
  end
  local W = M.weights(tensors, block)
  local ok, arch = pcall(require(archmod).build, cfg, W, opts)
  if not ok then return nil, source .. ": " .. tostring(arch) end
  local self = setmetatable({
    arch = arch, config = cfg, opts = opts, source = source,
    n_vocab = arch.n_vocab, max_ctx = opts.max_ctx or cfg.max_position_embeddings or 4096,
    ws = T.workspace(opts.numerics), tmp_batch = ffi.new("tide_batch_t"), tensors = tensors,
    bos_id = cfg.bos_token_id, eos_id = cfg.eos_token_id,
  }, Model)
  return self
end

-- A model from a config table and a name -> Tensor table (as a loader gives
-- them); used by the GGUF reader and by tests. Returns the model or nil, err.
function M.from_tensors(cfg, tensors, opts, source)
  if type(cfg) ~= "table" then return nil, "config must be a table" end
  return build(cfg, tensors, opts or {}, source or "model")
end

-- tide.load(path, opts): path is a Hugging Face folder (config.json +
-- safetensors) or a .gguf file. opts: mla ("auto" (default) | "naive" | "absorb"), kv = {block,
-- dtype, blocks}, threads, max_ctx, numerics ("tide" (default) | "ggml": every op
-- this model runs computes with llama.cpp's CPU arithmetic, in its order, where
-- kernels/ggml_order.c covers it; slower, for bit-for-bit comparisons).
-- Returns the model or nil, err.
function M.load(path, opts)
  opts = opts or {}
  if type(path) ~= "string" then return nil, "tide.load: path must be a string" end
  if opts.threads then
    local ok, e = T.set_threads(opts.threads)
    if not ok then return nil, e end
  end
  local model, err
  if path:match("%.gguf$") then
    local okg, gg = pcall(require, "tide.model_gguf")
    if not okg then return nil, "tide.load: GGUF loading is not available: " .. tostring(gg) end
    local cfg, tensors, md = gg.read(path)
    if not cfg then return nil, tensors end
    model, err = build(cfg, tensors, opts, path)
    if not model then return nil, err end
    local tok, te = gg.tokenizer(path, md)
    if tok then model.tokenizer = tok else model.tokenizer_error = "tokenizer: " .. tostring(te) end
    return model
  end
  local cfg, e = load_config(path)
  if not cfg then return nil, e end
  local tide = require "tide"
  local okt, tensors, te = pcall(tide.load_safetensors, path)
  if not okt then return nil, tostring(tensors) end
  if not tensors then return nil, te end
  model, err = build(cfg, tensors, opts, path)
  if not model then return nil, err end
  attach_tokenizer(model, path)
  return model
end

-- ---- the KV cache ------------------------------------------------------------------

function Model:kv_cache()
  if self.kv then return self.kv end
  local o = self.opts.kv or {}
  local block = o.block or 16
  local blocks = o.blocks or math.ceil(math.min(self.max_ctx, 8192) / block) * (o.seqs or 4)
  local kv, e = KV.new(self.arch:kv_layouts(), { block = block, blocks = blocks, dtype = o.dtype or "f32" })
  if not kv then error("kv cache: " .. tostring(e), 2) end
  self.kv = kv
  return kv
end

-- ---- one ragged step ------------------------------------------------------------------

-- Validate a list of token ids (Lua table, 0-based ids) against the vocabulary.
local function check_ids(self, ids)
  if type(ids) ~= "table" then return nil, "ids must be a table of token ids" end
  for i = 1, #ids do
    local v = ids[i]
    if type(v) ~= "number" or v ~= math.floor(v) or v < 0 or v >= self.n_vocab then
      return nil, string.format("token id %s at index %d is outside the vocabulary [0, %d)", tostring(v), i, self.n_vocab)
    end
  end
  return true
end

-- step(seqs, toks, want): append toks[i] (list of ids) to sequence seqs[i] and
-- run one forward over all of them. want: "last" (logits of each sequence's
-- last new token: (n_seq, vocab)) or "all" ((n_tok, vocab)). opts.hidden = true
-- also returns the final-normed hidden states of the returned rows (a
-- workspace tensor valid until the next step) and the ctx.
-- Returns logits (a new f32 tensor) or nil, err (the cache is left unchanged).
function Model:step(seqs, toks, want, opts)
  local kv = self:kv_cache()
  local counts, n_tok = {}, 0
  for i = 1, #seqs do
    local ok, e = check_ids(self, toks[i])
    if not ok then return nil, e end
    local len = kv:seq_len(seqs[i])
    if len < 0 then return nil, "unknown sequence " .. tostring(seqs[i]) end
    if len + #toks[i] > self.max_ctx then
      return nil, string.format("sequence of %d tokens exceeds the context of %d", len + #toks[i], self.max_ctx)
    end
    counts[i] = #toks[i]
    n_tok = n_tok + #toks[i]
  end
  if n_tok == 0 then return nil, "step: no tokens" end
  local before = {}
  for i = 1, #seqs do before[i] = kv:seq_len(seqs[i]) end
  local batch, pos = kv:step(seqs, counts)
  if not batch then return nil, pos end
  local ws = self.ws
  local ids = ws:get_i32("ids", n_tok)
  local idp = ffi.cast("int32_t*", ids._p.data)
  local k = 0
  local ctx_len = {}
  for i = 1, #seqs do
    for j = 1, counts[i] do idp[k] = toks[i][j]; k = k + 1 end
    ctx_len[i - 1] = before[i] + counts[i]
  end
  local ctx = { ws = ws, batch = batch, pos = pos, kv = kv, seq_ctx_len = ctx_len, tmp_batch = self.tmp_batch,
    mla = self.opts.mla }
  local ok, logits, hn = pcall(self.run_step, self, ctx, ids, seqs, counts, want, opts)
  if not ok then
    for i = 1, #seqs do kv:seq_truncate(seqs[i], before[i]) end
    return nil, tostring(logits)
  end
  return logits, hn, ctx
end

function Model:run_step(ctx, ids, seqs, counts, want, opts)
  local arch, ws = self.arch, self.ws
  local n_tok = tonumber(ids._p.shape[0])
  local sel
  if want ~= "all" and #seqs ~= n_tok then
    sel = ws:get_i32("rows", #seqs)
    local sp = ffi.cast("int32_t*", sel._p.data)
    local off = 0
    for i = 1, #seqs do
      off = off + counts[i]
      sp[i - 1] = off - 1
    end
  end
  -- numerics = "ggml": the last layer's FFN runs on the selected rows only, as in llama.cpp (its
  -- kernels' order depends on the row count)
  local early = sel and ws.numerics == "ggml" and not (opts and opts.on_hidden) and arch.layers
  if early then ctx.out_rows, ctx.out_layer = sel, #arch.layers end
  local x = arch:forward_hidden(ctx, ids)
  ctx.out_rows, ctx.out_layer = nil, nil
  -- opts.on_hidden(x): every row's hidden state (n_tok, dim) before the final norm (speculative decoding)
  if opts and opts.on_hidden then opts.on_hidden(x) end
  local rows = x
  if sel and not early then
    rows = ws:get("sel", #seqs, arch.dim)
    T.op.get_rows(rows, x, sel)
  end
  local n = tonumber(rows._p.shape[0])
  local hn = arch.norm:forward(ws, "hn", rows)
  -- opts.reuse: logits in a workspace slot, valid until the next step (the generation loop)
  local logits = (opts and opts.reuse) and ws:get("logits", n, self.n_vocab) or T.zeros({ n, self.n_vocab })
  ws.op.matmul(logits, hn, arch.lm_head.weight)
  return logits, hn
end

-- ---- the public API ---------------------------------------------------------------------

local function ids_list(ids)
  if T.is_tensor(ids) then
    local t = {}
    local n = ids:numel()
    for i = 1, n do t[i] = math.floor(ids:get(i) + 0.5) end
    return t
  end
  return ids
end

-- forward(ids, opts) -> logits (#ids, vocab) f32 for one sequence from an
-- empty cache; with opts.mtp, also the MTP logits (#ids - 1, vocab) for the
-- pairs (h[i], ids[i+1]). Returns nil, err on bad input.
function Model:forward(ids, opts)
  opts = opts or {}
  ids = ids_list(ids)
  if type(ids) ~= "table" or #ids == 0 then return nil, "forward: ids must be a non-empty list of token ids" end
  local kv = self:kv_cache()
  local seq, e = kv:seq_new()
  if not seq then return nil, e end
  local logits, hn, ctx = self:step({ seq }, { ids }, "all")
  if not logits then
    kv:seq_free(seq)
    return nil, hn
  end
  local mtp
  if opts.mtp and self.arch.mtp and #self.arch.mtp > 0 and #ids > 1 then
    local n = #ids - 1
    local ws = self.ws
    -- h[0..n-1] (post final norm) paired with ids[1..n]
    local h = ws:get("mtp.h", n, self.arch.dim)
    T.op.convert(h, hn:as_strided({ n, self.arch.dim }))
    local nxt = ws:get_i32("mtp.next", n)
    local np = ffi.cast("int32_t*", nxt._p.data)
    for i = 1, n do np[i - 1] = ids[i + 1] end
    -- the MTP layer's cache rows for positions 0..n-1 of this sequence
    local b = ctx.batch
    local mb = ffi.new("tide_batch_t", b)
    mb.n_tok = n
    local mctx = { ws = ws, batch = mb, pos = ctx.pos:as_strided({ n }), kv = kv, seq_ctx_len = { [0] = n },
      tmp_batch = self.tmp_batch, mla = self.opts.mla, keep = b }
    local ok, r = pcall(self.arch.mtp_forward, self.arch, mctx, 1, h, nxt)
    if not ok then
      kv:seq_free(seq)
      return nil, tostring(r)
    end
    mtp = r
  end
  kv:seq_free(seq)
  return logits, mtp
end

-- generate(ids, opts) -> list of new ids. opts: max_tokens (16), temperature
-- (0 = greedy), top_k, top_p, min_p, penalties, seed, stop (list of strings),
-- stop_ids, ignore_eos, chunk (prefill chunk size), on_token(id, piece).
function Model:generate(ids, opts)
  return require("tide.generate").generate(self, ids_list(ids), opts or {})
end

-- Tokens routed to each expert of each MoE layer (statistics).
function Model:expert_loads(reset)
  local t = {}
  for i, L in ipairs(self.arch.layers) do
    if L.moe then t[i] = L.moe:expert_loads(reset) end
  end
  return t
end

function Model:__tostring()
  local a = self.arch
  return string.format("model(%s, %d layers%s, dim %d, vocab %d, from %s)", tostring(self.config.model_type),
    a.n_layer, (a.mtp and #a.mtp > 0) and (" + " .. #a.mtp .. " MTP") or "", a.dim, self.n_vocab, self.source)
end

function Model:free()
  self.kv = nil
  self.ws:clear()
end

return M
