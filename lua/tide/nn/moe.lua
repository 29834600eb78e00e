-- nn.MoE: DeepSeekMoE as route -> dispatch -> experts -> combine.
--   route:    router logits x @ gate^T in f32, sigmoid scores; choice scores
--             = scores + e_score_correction_bias; group score = sum of the
--             top-2 choice scores of each group; keep topk_group groups;
--             top num_experts_per_tok experts among them (others count as 0,
--             as in the reference); weights = unbiased scores of the chosen,
--             normalized (norm_topk_prob) and times routed_scaling_factor.
--   dispatch: token rows gathered in expert order (one permutation);
--   experts:  each expert runs one GEMM per projection over its rows;
--   combine:  weighted scatter-add back to token order, plus shared experts.
-- With one rank dispatch/combine are a permutation; a communicator can take
-- their place without touching the model.
local ffi = require "ffi"
local T = require "tide.tensor"
local MLP = require "tide.nn.mlp"

local MoE = {}
MoE.__index = MoE

-- w: gate (E, dim), bias (E) or nil, experts {gate, up, down}[E], shared {gate, up, down} or nil
-- cfg: n_group, topk_group, top_k, norm_topk_prob, routed_scaling_factor
function MoE.new(w, cfg)
  local E = w.gate:shape()[1]
  local self = setmetatable({
    gate = w.gate, n_expert = E, dim = w.gate:shape()[2],
    n_group = cfg.n_group or 1, topk_group = cfg.topk_group or 1, top_k = cfg.top_k,
    norm = cfg.norm_topk_prob, rscale = cfg.routed_scaling_factor or 1.0,
    experts = {}, bias = ffi.new("float[?]", E),
    loads = ffi.new("int64_t[?]", E), -- tokens routed to each expert (statistics)
  }, MoE)
  if w.bias then
    local b = w.bias:tolist()
    for e = 1, E do self.bias[e - 1] = b[e] end
  end
  for e = 1, E do
    local x = w.experts[e]
    self.experts[e] = MLP.new(x.gate, x.up, x.down)
  end
  self.inter = self.experts[1].hidden
  if w.shared then self.shared = MLP.new(w.shared.gate, w.shared.up, w.shared.down) end
  if E % self.n_group ~= 0 then error("moe: n_routed_experts " .. E .. " not divisible by n_group " .. self.n_group) end
  return self
end

-- Routing of n tokens from scores (n, E) f32: fills sel[t*k + j] (expert id)
-- and wt[t*k + j] (weight). ggml: as llama.cpp (see forward_ggml).
function MoE:route(scores, n, sel, wt, ggml)
  local E, G, TG, K = self.n_expert, self.n_group, self.topk_group, self.top_k
  local per = E / G
  local bias = self.bias
  local s = ffi.cast("float*", scores._p.data)
  local choice = self.choice_buf
  if not choice then
    choice = ffi.new("float[?]", E)
    self.choice_buf = choice
    self.gscore = ffi.new("float[?]", G)
    self.gkeep = ffi.new("uint8_t[?]", G)
  end
  local gscore, gkeep = self.gscore, self.gkeep
  for t = 0, n - 1 do
    local row = s + t * E
    for e = 0, E - 1 do choice[e] = row[e] + bias[e] end
    if G > 1 then
      for g = 0, G - 1 do
        local a, b = -math.huge, -math.huge
        for e = g * per, g * per + per - 1 do
          local v = choice[e]
          if v > a then a, b = v, a elseif v > b then b = v end
        end
        gscore[g] = per >= 2 and a + b or a
        gkeep[g] = 0
      end
      for _ = 1, TG do
        local best = -1
        for g = 0, G - 1 do
          if gkeep[g] == 0 and (best < 0 or gscore[g] > gscore[best]) then best = g end
        end
        gkeep[best] = 1
      end
      local drop = ggml and -math.huge or 0.0
      for g = 0, G - 1 do
        if gkeep[g] == 0 then for e = g * per, g * per + per - 1 do choice[e] = drop end end
      end
    end
    -- top K by choice score (ties to the lower id); mark taken with -inf (first-best once all are -inf)
    local sum = 0.0
    for j = 0, K - 1 do
      local best = -1
      local bv = -math.huge
      for e = 0, E - 1 do
        local v = choice[e]
        if v > bv or best < 0 then best, bv = e, v end
      end
      choice[best] = -math.huge
      sel[t * K + j] = best
      local w = row[best]
      wt[t * K + j] = w
      sum = sum + w
    end
    if ggml then
      -- llama.cpp: the sum rounded to float and clamped, each weight divided by it, then scaled
      sum = math.max(T.f32(sum), 6.103515625e-5)
      for j = 0, K - 1 do
        local w = wt[t * K + j]
        if self.norm then w = T.f32(w / sum) end
        if self.rscale ~= 1.0 then w = T.f32(w * self.rscale) end
        wt[t * K + j] = w
      end
    else
      local f = self.rscale
      if self.norm then f = f / (sum + 1e-20) end
      for j = 0, K - 1 do wt[t * K + j] = wt[t * K + j] * f end
    end
  end
end

-- The experts' weights as the array the grouped op takes (gate, up, down
-- per expert), rebuilt for any expert replaced since (tensor parallelism
-- splits experts after load). The MLPs in self.experts keep the tensors alive.
function MoE:expert_weights()
  local E = self.n_expert
  local wp, src = self.wp, self.wp_src
  if not wp then
    wp = ffi.new("const tide_tensor_t *[?]", 3 * E)
    src = {}
    self.wp, self.wp_src = wp, src
  end
  local ex = self.experts
  for e = 1, E do
    local m = ex[e]
    if src[e] ~= m then
      src[e] = m
      local b = 3 * (e - 1)
      wp[b], wp[b + 1], wp[b + 2] = m.gate.weight._p, m.up.weight._p, m.down.weight._p
    end
  end
  return wp
end

-- x (n, dim) -> (n, dim) in workspace slot key.
function MoE:forward(ctx, x, key)
  if ctx.ws.numerics == "ggml" then return self:forward_ggml(ctx, x, key) end
  local ws, n = ctx.ws, tonumber(x._p.shape[0])
  local E, K, dim, I = self.n_expert, self.top_k, self.dim, self.inter
  -- route
  local logits = ws:get("moe.logits", n, E)
  T.op.matmul(logits, x, self.gate)
  T.op.sigmoid(logits, logits)
  local nk = n * K
  local sel = ws:get_i32("moe.sel", nk)
  local wt = ws:get("moe.wt", nk)
  local selp, wtp = ffi.cast("int32_t*", sel._p.data), ffi.cast("float*", wt._p.data)
  self:route(logits, n, selp, wtp)
  -- dispatch: rows ordered by expert (counting sort, stable in token order)
  local cnt = self.cnt or ffi.new("int32_t[?]", E + 1)
  self.cnt = cnt
  ffi.fill(cnt, (E + 1) * 4)
  for i = 0, nk - 1 do cnt[selp[i] + 1] = cnt[selp[i] + 1] + 1 end
  for e = 1, E do cnt[e] = cnt[e] + cnt[e - 1] end
  local tok = ws:get_i32("moe.tok", nk)   -- token of each dispatched row
  local rw = ws:get("moe.rw", nk)         -- its weight
  local tokp, rwp = ffi.cast("int32_t*", tok._p.data), ffi.cast("float*", rw._p.data)
  local fill = self.fill or ffi.new("int32_t[?]", E)
  self.fill = fill
  for e = 0, E - 1 do fill[e] = cnt[e] end
  for i = 0, nk - 1 do
    local e = selp[i]
    local r = fill[e]
    fill[e] = r + 1
    tokp[r] = math.floor(i / K)
    rwp[r] = wtp[i]
  end
  local xg = ws:get("moe.xg", nk, dim)
  T.op.get_rows(xg, x, tok)
  -- experts: one GEMM per projection over each expert's rows, all experts in one call
  local g = ws:get("moe.g", nk, I)
  local u = ws:get("moe.u", nk, I)
  local y = ws:get("moe.y", nk, dim)
  local loads = self.loads
  for e = 0, E - 1 do loads[e] = loads[e] + (cnt[e + 1] - cnt[e]) end
  T.op.moe_experts(y, xg, g, u, cnt, E, self:expert_weights())
  -- combine (+ shared experts)
  local out
  if self.shared then
    out = self.shared:forward(ws, key, x)
  else
    out = ws:get(key, n, dim)
    T.fill_zero(out)
  end
  T.op.scatter_add(out, y, tok, rw)
  return out
end

-- numerics = "ggml": the layer as llama.cpp's CPU backend computes it, each
-- float operation rounded where it rounds. Router logits through its f32
-- dot order; scores 1 / (1 + expf(-x)); choice = score + bias; group score =
-- the sum of its top 2 choices; dropped groups at -inf (where the reference
-- implementation uses 0); top-k in descending choice order; weights =
-- score / sum(scores) then * routed_scaling_factor, each rounded to float;
-- each token's experts one row at a time (its per-row kernels), weighted
-- outputs summed in top-k order, then the shared experts added.
pcall(ffi.cdef, "float expf(float x);")

function MoE:forward_ggml(ctx, x, key)
  local ws, n = ctx.ws, tonumber(x._p.shape[0])
  local E, K, dim = self.n_expert, self.top_k, self.dim
  local logits = ws:get("moe.logits", n, E)
  ws.op.matmul(logits, x, self.gate)
  local lp = ffi.cast("float*", logits._p.data)
  for i = 0, n * E - 1 do lp[i] = T.f32(1.0 / T.f32(1.0 + ffi.C.expf(-lp[i]))) end -- its sigmoid, libm's expf
  local sel = ffi.new("int32_t[?]", n * K)
  local wt = ffi.new("float[?]", n * K)
  self:route(logits, n, sel, wt, true)
  local out = self.shared and self.shared:forward(ws, key, x) or T.zeros({ n, dim })
  local acc, tmp = ws:get("moe.acc", 1, dim), ws:get("moe.tmp", 1, dim)
  for t = 0, n - 1 do
    local xr = ws:view("moe.xr", x, t * dim, 1, dim)
    for j = 0, K - 1 do
      local e = sel[t * K + j]
      self.loads[e] = self.loads[e] + 1
      local y = self.experts[e + 1]:forward(ws, "moe.ey", xr)
      T.op.scale(j == 0 and acc or tmp, y, wt[t * K + j])
      if j > 0 then T.op.add(acc, acc, tmp) end
    end
    local orow = ws:view("moe.or", out, t * dim, 1, dim)
    T.op.add(orow, acc, orow)
  end
  if not self.shared then
    local o = ws:get(key, n, dim)
    T.op.convert(o, out)
    return o
  end
  return out
end

-- Tokens routed to each expert since load (or the last reset).
function MoE:expert_loads(reset)
  local t = {}
  for e = 0, self.n_expert - 1 do
    t[e + 1] = tonumber(self.loads[e])
    if reset then self.loads[e] = 0 end
  end
  return t
end

-- Cost over n tokens (as forward): router GEMM and routing, dispatch of the
-- n * top_k routed rows, the expert GEMMs (gate, up: inter x dim; down:
-- dim x inter per row), combine, then the shared experts. The recorder
-- decides where rows and experts live (one device, or EP with redundancy).
function MoE:cost(rec, name, n)
  rec:gemm(name .. ".router", n, self.n_expert, self.dim)
  rec:elt(name .. ".route", n * self.n_expert, 8)
  local rows = n * self.top_k
  rec:dispatch(name .. ".dispatch", n, self.top_k, self.dim)
  rec:experts(name .. ".experts", rows, self.n_expert, self.dim, self.inter)
  rec:combine(name .. ".combine", n, self.top_k, self.dim)
  if self.shared then self.shared:cost(rec, name .. ".shared", n) end
end

return MoE
