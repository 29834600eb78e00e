-- tide.parallel.tp: tensor parallelism for Llama-style models (GQA attention
-- and dense SwiGLU MLPs) and DeepSeek-V3 (MLA heads, dense MLPs and experts
-- split; see apply_dsv3), applied to a loaded model:
--
--   local plan = assert(require("tide.parallel.tp").apply(model, comm))
--
-- Attention: every rank keeps n_head / tp query heads and n_kv_head / tp
-- K/V heads (column split of q/k/v: rows of their weights), its share of
-- the KV cache, and the matching columns of o_proj (row split); the partial
-- outputs are summed with one allreduce. MLP: gate/up split by rows
-- (column-parallel), down by columns (row-parallel), one allreduce.
-- Embedding, norms and lm_head are replicated, so every rank computes the
-- same logits (and samples the same tokens) in lockstep.
-- FP8 weights with block scales (DeepSeek-V3's released format) stay FP8:
-- each shard copies its e4m3 bytes and takes the block scales with them
-- (scaled_slice), on 128 x 128 block boundaries when the shard starts on one,
-- with finer blocks carrying the original block's scale when it does not.
local ffi = require "ffi"
local T = require "tide.tensor"
local Attention = require "tide.nn.attention"
local MLP = require "tide.nn.mlp"

local M = {}

local function has_scales(w) return w:cdata().scale ~= nil end

local function gcd(a, b)
  while b ~= 0 do a, b = b, a % b end
  return a
end

-- Rows [r0, r0 + nr) x cols [c0, c0 + nc) of a 2-D weight with block scales
-- (FP8 e4m3 + weight_scale_inv): the stored bytes are copied as they are,
-- and the scales go with them. A shard that starts on a block boundary keeps
-- the blocks (br x bc, 128 x 128 for DeepSeek-V3) and takes its rows and
-- columns of the scale grid; one that starts inside a block (a small model
-- split finer than its blocks) gets blocks of gcd(br, r0) x gcd(bc, c0),
-- each inside one original block, with that block's scale: every weight
-- keeps its value, only the kernels' per-block partial sums get shorter.
local function scaled_slice(w, r0, nr, c0, nc)
  local p = w:cdata()
  local sc = p.scale
  local br, bc = tonumber(p.scale_block[0]), tonumber(p.scale_block[1])
  local es = w:nbytes() / w:numel()
  if es ~= 1 then error("tensor parallelism: block-scaled weights of " .. tostring(w:dtype()) .. " are not split (FP8 only)", 0) end
  local br2, bc2 = gcd(br, r0), gcd(bc, c0)
  local out = T.zeros({ nr, nc }, w:dtype())
  local dst = ffi.cast("uint8_t *", out:cdata().data)
  local src = ffi.cast("const uint8_t *", p.data)
  local s0, s1 = tonumber(p.stride[0]), tonumber(p.stride[1])
  for i = 0, nr - 1 do
    local row = src + (r0 + i) * s0 + c0 * s1
    if s1 == 1 then ffi.copy(dst + i * nc, row, nc)
    else for j = 0, nc - 1 do dst[i * nc + j] = row[j * s1] end end
  end
  local nsr, nsc = math.ceil(nr / br2), math.ceil(nc / bc2)
  local scale = T.zeros({ nsr, nsc })
  local sd = ffi.cast("float *", scale:cdata().data)
  local ss = ffi.cast("const uint8_t *", sc.data)
  local t0, t1 = tonumber(sc.stride[0]), tonumber(sc.stride[1])
  for a = 0, nsr - 1 do
    local oa = math.floor((r0 + a * br2) / br)
    for b = 0, nsc - 1 do
      local ob = math.floor((c0 + b * bc2) / bc)
      sd[a * nsc + b] = ffi.cast("const float *", ss + oa * t0 + ob * t1)[0]
    end
  end
  assert(out:set_scale(scale, br2, bc2))
  return out
end
M.scaled_slice = scaled_slice

local function rows(w, r, n) -- rows [r*len, (r+1)*len) of a 2-D weight, contiguous
  local len = w:shape()[1] / n
  if has_scales(w) then return scaled_slice(w, r * len, len, 0, w:shape()[2]) end
  return w:narrow(1, r * len + 1, len):copy()
end

local function cols(w, r, n)
  local len = w:shape()[2] / n
  if has_scales(w) then return scaled_slice(w, 0, w:shape()[1], r * len, len) end
  return w:narrow(2, r * len + 1, len):copy()
end

local function reduced(comm, what)
  return function(t)
    local ok, err = comm:allreduce(t)
    if not ok then error("tp " .. what .. ": " .. tostring(err), 0) end
    return t
  end
end

local function split_mlp(m, r, tp)
  return MLP.new(rows(m.gate.weight, r, tp), rows(m.up.weight, r, tp), cols(m.down.weight, r, tp))
end

-- DeepSeek-V3: MLA heads split (q_b / kv_b rows of this rank's heads, o_proj
-- columns; q_a, kv_a and the latent cache replicated, as every head reads
-- the same latent rows), dense MLPs split, and each routed and shared
-- expert split along its intermediate dimension (the router is replicated,
-- so every rank routes the same way); one allreduce after attention and one
-- after the MLP / MoE.
local function apply_dsv3(model, comm)
  local tp, r = comm:size(), comm:rank()
  local MLA = require "tide.nn.mla"
  local arch = model.arch
  local c = arch.c
  if c.n_head % tp ~= 0 then
    return nil, string.format("tensor parallelism: %d MLA heads do not divide over %d ranks", c.n_head, tp)
  end
  local function check_width(w, what)
    if w % tp ~= 0 then error(string.format("tensor parallelism: %s width %d does not divide over %d ranks", what, w, tp), 0) end
  end
  local okc, cerr = pcall(function()
    for _, L in ipairs(arch.layers) do
      if L.mlp then check_width(L.mlp.hidden, "MLP") end
      if L.moe then
        check_width(L.moe.inter, "expert")
        if L.moe.shared then check_width(L.moe.shared.hidden, "shared expert") end
      end
    end
  end)
  if not okc then return nil, cerr end
  local ar_attn, ar_mlp = reduced(comm, "attention"), reduced(comm, "mlp")
  local Hl = c.n_head / tp
  for _, L in ipairs(arch.layers) do
    local a = L.attn
    local w = { kv_a = a.kv_a.weight, kv_a_norm = a.kv_norm.weight,
      kv_b = rows(a.kv_b.weight, r, tp), o = cols(a.o.weight, r, tp) }
    if a.q_a then
      w.q_a, w.q_a_norm, w.q_b = a.q_a.weight, a.q_a_norm.weight, rows(a.q_b.weight, r, tp)
    else
      w.q = rows(a.q_proj.weight, r, tp)
    end
    local na = MLA.new(w, { n_head = Hl, kv_lora_rank = c.kvl, qk_nope = c.dn, qk_rope = c.dr, v_head_dim = c.dv,
      rope = c.rope, scale = c.scale, eps = c.eps, mode = a.mode })
    local fwd = na.forward
    na.forward = function(self, ctx, layer, x) return ar_attn(fwd(self, ctx, layer, x)) end
    L.attn = na
    if L.mlp then
      local nm = split_mlp(L.mlp, r, tp)
      local mf = nm.forward
      nm.forward = function(self, ws, key, x, out) return ar_mlp(mf(self, ws, key, x, out)) end
      L.mlp = nm
    end
    if L.moe then
      local moe = L.moe
      for e = 1, moe.n_expert do moe.experts[e] = split_mlp(moe.experts[e], r, tp) end
      moe.inter = moe.experts[1].hidden
      if moe.shared then moe.shared = split_mlp(moe.shared, r, tp) end
      moe.forward = function(self, ctx, x, key) return ar_mlp(getmetatable(self).forward(self, ctx, x, key)) end
    end
  end
  model.kv = nil
  return { comm = comm, tp = tp, rank = r }
end

-- Split model (Llama or DeepSeek-V3) over comm. Returns the plan or nil, message.
function M.apply(model, comm)
  local tp, r = comm:size(), comm:rank()
  local arch = model.arch
  if model.config.model_type == "deepseek_v3" then return apply_dsv3(model, comm) end
  if model.config.model_type ~= "llama" and not tostring(model.config.architectures and model.config.architectures[1]):match("Llama") then
    return nil, "tensor parallelism: only Llama-style models (GQA attention, dense MLP) are split; got " .. tostring(model.config.model_type)
  end
  local L1 = arch.layers[1]
  local nh, nkv, hd = L1.attn.n_head, L1.attn.n_kv_head, L1.attn.head_dim
  if nh % tp ~= 0 or nkv % tp ~= 0 then
    return nil, string.format("tensor parallelism: %d query heads / %d K/V heads do not divide over %d ranks", nh, nkv, tp)
  end
  if L1.mlp.hidden % tp ~= 0 then
    return nil, string.format("tensor parallelism: MLP width %d does not divide over %d ranks", L1.mlp.hidden, tp)
  end
  local ar_attn, ar_mlp = reduced(comm, "attention"), reduced(comm, "mlp")
  for _, L in ipairs(arch.layers) do
    local a = L.attn
    local na = Attention.new({ q = rows(a.q.weight, r, tp), k = rows(a.k.weight, r, tp), v = rows(a.v.weight, r, tp),
      o = cols(a.o.weight, r, tp) }, { n_head = nh / tp, n_kv_head = nkv / tp, head_dim = hd, rope = a.rope })
    na.scale = a.scale
    local fwd = na.forward
    na.forward = function(self, ctx, layer, x) return ar_attn(fwd(self, ctx, layer, x)) end
    L.attn = na
    local m = L.mlp
    local nm = MLP.new(rows(m.gate.weight, r, tp), rows(m.up.weight, r, tp), cols(m.down.weight, r, tp))
    local mf = nm.forward
    nm.forward = function(self, ws, key, x, out) return ar_mlp(mf(self, ws, key, x, out)) end
    L.mlp = nm
  end
  model.kv = nil -- the cache is rebuilt with this rank's K/V heads
  return { comm = comm, tp = tp, rank = r }
end

return M
