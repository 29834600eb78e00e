-- tide.plan.cost: FLOPs and bytes of a model step, taken from the model
-- definition itself. The real builders (tide.models.llama / deepseek_v3)
-- build the module tree from config.json with *meta* weights (shapes only, no
-- data); each nn module's :cost(rec, ...) method, kept next to its :forward,
-- records what its forward would do. A recorder collects the ops:
--
--   local cost = require "tide.plan.cost"
--   local m = cost.meta_model(cfg, { mla = "absorb", mtp = true })
--   local rec = cost.recorder { wbytes = 1, abytes = 2, kvbytes = 2 }
--   cost.step(m, rec, { n = 64, seqs = 64, ctx = 4096, kv = 4096, logits = 64 })
--   rec.ops   -- { name, kind = gemm|attn|elt|comm, flops, w_bytes, a_bytes, kv_bytes, comm_bytes, ... }
--   rec:totals()
--
-- Batch b: n tokens of seqs sequences; each token attends ctx positions on
-- average; each sequence holds kv positions after the step; logits rows go
-- through lm_head (n in decode, seqs in prefill).
local M = {}

-- ---- meta weights: what the builders ask for, as shapes ---------------------------

local Meta = {}
Meta.__index = Meta
function Meta:shape() return { unpack(self.s) } end
function Meta:numel()
  local k = 1
  for i = 1, #self.s do k = k * self.s[i] end
  return k
end
function Meta:cdata() return { scale = nil } end
function Meta:dtype() return "meta" end

local MetaW = {}
MetaW.__index = MetaW
function MetaW:get(name, shape)
  if not shape then error("plan.cost: meta weight '" .. name .. "' requested without a shape", 0) end
  self.params = self.params + (function() local k = 1 for i = 1, #shape do k = k * shape[i] end return k end)()
  self.names[name] = shape
  return setmetatable({ s = shape, name = name }, Meta)
end
-- Optional tensors: the MTP layers when asked for; never the router bias
-- (values, not shapes), MTP's own embed/head (shared with the main model).
function MetaW:has(name)
  if name:match("eh_proj%.weight$") then return self.mtp end
  if name == "lm_head.weight" then return true end
  return false
end

-- Module tree of the model described by cfg (a normalized config table),
-- built by the engine's own builders over meta weights. opts: mla
-- ("naive" | "absorb"), mtp (build the MTP layers; default false).
function M.meta_model(cfg, opts)
  opts = opts or {}
  local mt = cfg.model_type
  local arch = (mt == "deepseek_v3") and "tide.models.deepseek_v3" or "tide.models.llama"
  local W = setmetatable({ mtp = opts.mtp == true, params = 0, names = {} }, MetaW)
  local m = require(arch).build(cfg, W, { mla = opts.mla, mtp = opts.mtp == true })
  m.meta_params = W.params
  m.meta_names = W.names
  m.arch_name = mt
  return m
end

-- ---- the recorder -------------------------------------------------------------------

local Rec = {}
Rec.__index = Rec

-- o: wbytes (bytes per weight element, default 2), abytes (activations, 2),
-- kvbytes (cache, 2), dispatch_bytes (per element on the wire, default abytes),
-- combine_bytes (default abytes), on_experts(rec, name, rows, E, dim, inter)
-- and on_comm(rec, name, kind, n, top_k, dim) to place MoE work (strategies).
function M.recorder(o)
  o = o or {}
  return setmetatable({ ops = {}, wbytes = o.wbytes or 2, abytes = o.abytes or 2, kvbytes = o.kvbytes or 2,
    dispatch_bytes = o.dispatch_bytes or o.abytes or 2, combine_bytes = o.combine_bytes or o.abytes or 2,
    layer = 0, on_experts = o.on_experts, on_comm = o.on_comm, scale = o.scale or 1 }, Rec)
end

function Rec:add(op)
  op.layer = self.layer
  op.flops = op.flops or 0
  op.w_bytes = op.w_bytes or 0
  op.a_bytes = op.a_bytes or 0
  op.kv_bytes = op.kv_bytes or 0
  op.comm_bytes = op.comm_bytes or 0
  op.calls = op.calls or 1 -- kernel calls the engine makes for it
  self.ops[#self.ops + 1] = op
  return op
end

-- m rows through an (n_out x k_in) weight; wparams overrides the weight size
-- (a slice of a stored weight, as MLA's absorbed halves of kv_b).
function Rec:gemm(name, m, n_out, k_in, _, wparams)
  wparams = wparams or n_out * k_in
  return self:add({ name = name, kind = "gemm", m = m, n = n_out, k = k_in, dtype = "w",
    flops = 2 * m * n_out * k_in, w_bytes = wparams * self.wbytes, a_bytes = m * (k_in + n_out) * self.abytes })
end

function Rec:elt(name, elems, flops_per)
  return self:add({ name = name, kind = "elt", elems = elems, flops = elems * flops_per, a_bytes = 2 * elems * self.abytes })
end

function Rec:attn(name, a)
  return self:add({ name = name, kind = "attn", dtype = "bf16", flops = a.flops,
    kv_bytes = (a.kv_read + a.kv_write) * self.kvbytes, a_bytes = a.act * self.abytes, heads = a.heads,
    qk_dim = a.qk_dim, v_dim = a.v_dim, kv_row = a.kv_row,
    q_per_seq = self.batch and self.batch.n / math.max(self.batch.seqs, 1e-9) or nil })
end

-- MoE: by default one device holds every expert; rows spread over the experts
-- they hit (expected distinct experts for rows uniform picks among E).
function Rec:experts(name, rows, E, dim, inter)
  if self.on_experts then return self.on_experts(self, name, rows, E, dim, inter) end
  local tokens = rows -- distinct experts touched by `rows` picks, uniform routing
  local hit = E * (1 - (1 - 1 / E) ^ tokens)
  return self:add({ name = name, kind = "gemm", grouped = true, m = rows, n = 3 * inter, k = dim, experts = hit,
    calls = 4 * hit, -- gate, up, swiglu, down per expert hit
    flops = 2 * rows * 3 * dim * inter, w_bytes = hit * 3 * dim * inter * self.wbytes,
    a_bytes = rows * (2 * dim + 3 * inter) * self.abytes })
end

function Rec:dispatch(name, n, top_k, dim)
  if self.on_comm then return self.on_comm(self, name, "dispatch", n, top_k, dim) end
  return self:add({ name = name, kind = "elt", flops = 0, a_bytes = 2 * n * top_k * dim * self.abytes })
end

function Rec:combine(name, n, top_k, dim)
  if self.on_comm then return self.on_comm(self, name, "combine", n, top_k, dim) end
  return self:add({ name = name, kind = "elt", flops = 2 * n * top_k * dim, a_bytes = 2 * n * top_k * dim * self.abytes })
end

function Rec:totals()
  local t = { flops = 0, w_bytes = 0, a_bytes = 0, kv_bytes = 0, comm_bytes = 0, ops = #self.ops }
  for _, op in ipairs(self.ops) do
    for k in pairs(t) do if k ~= "ops" then t[k] = t[k] + op[k] end end
  end
  t.bytes = t.w_bytes + t.a_bytes + t.kv_bytes
  return t
end

-- ---- walking a model ------------------------------------------------------------------

local function layer_cost(L, rec, b, mode, pre)
  L.attn_norm:cost(rec, pre .. "attn_norm", b.n)
  L.attn:cost(rec, pre .. "attn", b, mode)
  L.mlp_norm:cost(rec, pre .. "mlp_norm", b.n)
  if L.moe then L.moe:cost(rec, pre .. "moe", b.n) else L.mlp:cost(rec, pre .. "mlp", b.n) end
end

-- One step of model m (from meta_model) on batch b into rec. opts: layers
-- (a list of 1-based layer indices to walk; default all), mtp (walk the MTP
-- layers too, b.n tokens each), mla (mode override).
function M.step(m, rec, b, opts)
  opts = opts or {}
  b.logits = b.logits or b.n
  rec.batch = b
  rec.layer = 0
  m.embed:cost(rec, "embed", b.n)
  local list = opts.layers
  if not list then
    list = {}
    for i = 1, #m.layers do list[i] = i end
  end
  for _, i in ipairs(list) do
    rec.layer = i
    layer_cost(m.layers[i], rec, b, opts.mla, "L" .. (i - 1) .. ".")
  end
  rec.layer = #m.layers + 1
  m.norm:cost(rec, "norm", b.logits)
  m.lm_head:cost(rec, "lm_head", b.logits)
  if opts.mtp and m.mtp then
    for k, L in ipairs(m.mtp) do
      rec.layer = #m.layers + 1 + k
      local pre = "mtp" .. k .. "."
      L.enorm:cost(rec, pre .. "enorm", b.n)
      L.hnorm:cost(rec, pre .. "hnorm", b.n)
      L.eh_proj:cost(rec, pre .. "eh_proj", b.n)
      layer_cost(L, rec, b, opts.mla, pre)
      L.head_norm:cost(rec, pre .. "head_norm", b.logits)
      m.lm_head:cost(rec, pre .. "head", b.logits)
    end
  end
  return rec
end

-- KV cache bytes per token (all layers, + MTP layers when built) from the
-- modules' kv_layout, as the engine's cache allocates them.
function M.kv_bytes_per_token(m, kvbytes)
  local total = 0
  for _, lay in ipairs(m:kv_layouts()) do
    local per = lay.n_kv_head * (lay.k_dim + (lay.v_dim or 0))
    total = total + per * (kvbytes or 2)
  end
  return total
end

-- Weight bytes of the model by part: dense (everything but routed experts),
-- routed experts (per expert per layer), number of MoE layers.
function M.weight_parts(m, wbytes)
  local dense, expert_params, n_moe = 0, 0, 0
  for name, s in pairs(m.meta_names) do
    local k = 1
    for i = 1, #s do k = k * s[i] end
    if name:match("%.experts%.%d+%.") then expert_params = expert_params + k else dense = dense + k end
  end
  local per_expert = 0
  local function walk(L)
    if L.moe then
      n_moe = n_moe + 1
      per_expert = 3 * L.moe.dim * L.moe.inter
    end
  end
  for _, L in ipairs(m.layers) do walk(L) end
  for _, L in ipairs(m.mtp or {}) do walk(L) end
  return { dense = dense * wbytes, expert = per_expert * wbytes, n_moe = n_moe, routed_total = expert_params * wbytes }
end

return M
