-- tide.parallel.tbo: two-batch overlap across layers (DeepSeek's and
-- SGLang's "TBO") for an expert-parallel plan (tide.parallel.ep):
--
--   local plan = assert(ep.apply(model, comm, { overlap = "tbo" }))
--
-- The step's tokens are cut in two halves A and B (tide.parallel.pp's token
-- ranges: a cut may fall inside a sequence; B's tokens then attend to A's,
-- which are in the cache by then), each with its own workspace, and the
-- layers run interleaved so that one half's communication is in flight
-- while the other half computes:
--
--   layer i:  A attention, A dispatch posted (+ A's shared experts)
--             B's combine of layer i-1 finished      (in flight during A's attention)
--             B attention, B dispatch posted          (A's dispatch in flight)
--             A experts, A combine posted             (B's dispatch in flight)
--             B experts, B combine posted             (A's combine in flight)
--             A's combine finished
--
-- so a half's dispatch hides behind the other half's attention and its
-- combine behind the other half's experts or next attention (the in-layer
-- mode, ep's overlap = true, has only the shared experts and the other
-- half's experts to hide behind). Every rank posts its collectives in the
-- same order (counts A, dispatch A, counts B, dispatch B, combine A,
-- combine B per MoE layer); a rank with no tokens (Plan:drain) makes the
-- same posts with empty halves. Results equal the unsplit step up to the
-- summation order of matmuls over fewer rows.
local ffi = require "ffi"
local T = require "tide.tensor"
local pp = require "tide.parallel.pp"

local M = {}

local EP = require "tide.parallel.ep"
local grow = EP.grow

-- Half st's MoE layer, phase 1: route, exchange the per-slot counts
-- (blocking), post the dispatch, run the shared experts. x (n, dim), n >= 0.
function M.post(plan, st, moe, x, n, tick)
  local li = moe.ep_layer
  local K, dim, per, R = moe.top_k, plan.dim, plan.per, plan.ranks
  local ws = st.ws
  if tick then plan:tick(li) end
  local nk = n * K
  local selp, wtp, slot0, scnt = plan:route_rows(moe, ws, x, n, li)
  st.moe, st.n, st.nk, st.selp, st.wtp, st.out = moe, n, nk, selp, wtp, nil
  local S = plan.slots
  for p = 1, S do scnt[p] = scnt[p] + scnt[p - 1] end
  local order = grow(st, "order", "int32_t[?]", nk + 1)
  local fill = grow(st, "fill", "int32_t[?]", S + 1)
  for p = 0, S - 1 do fill[p] = scnt[p] end
  for i = 0, nk - 1 do
    local p = slot0[i]
    order[fill[p]] = i
    fill[p] = fill[p] + 1
  end
  local W = per + 1
  local cs, cr = grow(st, "cs", "int32_t[?]", R * W), grow(st, "cr", "int32_t[?]", R * W)
  st.cc = st.cc or {}
  local srows = {}
  for d = 0, R - 1 do
    st.cc[d + 1] = W * 4
    local tot = 0
    for j = 0, per - 1 do
      local p = d * per + j
      cs[d * W + j] = scnt[p + 1] - scnt[p]
      tot = tot + cs[d * W + j]
    end
    cs[d * W + per] = n > 0 and 1 or 0
    srows[d + 1] = tot
  end
  local ok, err = plan.comm:alltoallv(cs, st.cc, cr, st.cc)
  if not ok then error("ep dispatch: " .. tostring(err), 0) end
  local rrows, active, rtot = {}, false, 0
  for s = 0, R - 1 do
    local tot = 0
    for j = 0, per - 1 do tot = tot + cr[s * W + j] end
    rrows[s + 1] = tot
    rtot = rtot + tot
    if cr[s * W + per] ~= 0 then active = true end
  end
  st.active, st.rtot, st.srows, st.rrows = active, rtot, srows, rrows
  if not active then return false end
  local sb, rb = {}, {}
  for r = 1, R do sb[r] = srows[r] * dim * 4; rb[r] = rrows[r] * dim * 4 end
  st.sb, st.rb = sb, rb
  local xs = grow(st, "xs", "float[?]", nk * dim + 1)
  local xp = n > 0 and ffi.cast("float*", x._p.data) or nil
  for r = 0, nk - 1 do ffi.copy(xs + r * dim, xp + math.floor(order[r] / K) * dim, dim * 4) end
  st.xr = grow(st, "xr", "float[?]", rtot * dim + 1)
  st.dreq = assert(plan.comm:ialltoallv(xs, sb, st.xr, rb))
  plan.bytes.dispatch = plan.bytes.dispatch + nk * dim * 4
  if n > 0 then
    if moe.shared then st.out = moe.shared:forward(ws, "ffn.out", x) else
      st.out = ws:get("ffn.out", n, dim)
      T.fill_zero(st.out)
    end
  end
  return true
end

-- Phase 2: wait for the dispatch, run this rank's experts on the received
-- rows (slot by slot, all sources), post the combine.
function M.experts(plan, st)
  if not st.active then return end
  local li = st.moe.ep_layer
  local dim, I, per, R = plan.dim, plan.inter, plan.per, plan.ranks
  local ws, cr, W = st.ws, st.cr, per + 1
  local ok, err = st.dreq:wait()
  if not ok then error("ep dispatch: " .. tostring(err), 0) end
  st.dreq = nil
  local rtot = st.rtot
  local yr = grow(st, "yr", "float[?]", rtot * dim + 1)
  if rtot > 0 then
    EP.run_received(ws, st, st.xr, yr, rtot, st.rrows, cr, W, per, R, dim, I, plan.local_experts[li],
      plan.slot_loads[li])
  end
  st.yb = grow(st, "yb", "float[?]", st.nk * dim + 1)
  st.creq = assert(plan.comm:ialltoallv(yr, st.rb, st.yb, st.sb))
  plan.bytes.combine = plan.bytes.combine + rtot * dim * 4
end

-- Phase 3: wait for the combine; the rows in the single-process order,
-- scatter-added with the routing weights onto the shared experts' output.
-- Returns that output (n, dim) or nil (no tokens).
function M.finish(plan, st)
  if not st.active then return nil end
  local ok, err = st.creq:wait()
  if not ok then error("ep combine: " .. tostring(err), 0) end
  st.creq = nil
  if st.n == 0 then return nil end
  local moe = st.moe
  local nk, K, dim = st.nk, moe.top_k, plan.dim
  local pos, tok, rw, y, yp = plan.single_process_order(plan, st.ws, st.selp, st.wtp, nk, plan.n_expert, K, dim)
  local order = st.order
  for r = 0, nk - 1 do ffi.copy(yp + pos[order[r]] * dim, st.yb + r * dim, dim * 4) end
  T.op.scatter_add(st.out, y, tok, rw)
  return st.out
end

-- Attention half of a decoder layer (llama.layer_forward's first part):
-- x += attn(norm(x)); returns norm2(x) for the FFN.
local function attend(c, L, li, x)
  local ws = c.ws
  local h = L.attn_norm:forward(ws, "h", x)
  T.op.add(x, x, L.attn:forward(c, li, h))
  return L.mlp_norm:forward(ws, "h", x)
end

-- The halves' states (workspaces and scratch), kept on the plan.
local function halves(plan)
  if not plan.tbo_halves then
    plan.tbo_halves = { { ws = T.workspace(), name = "A" }, { ws = T.workspace(), name = "B" } }
  end
  return plan.tbo_halves[1], plan.tbo_halves[2]
end

-- forward_hidden for arch under the TBO schedule (see the top of the file).
function M.forward_hidden(plan, arch, ctx, ids)
  local x = arch.embed:forward(ctx.ws, "x", ids)
  local n = tonumber(ids._p.shape[0])
  local A, B = halves(plan)
  local n1 = math.ceil(n / 2)
  local keep = {}
  local cA = n1 > 0 and pp.sub_ctx(ctx, 0, n1, keep) or nil
  local cB = n > n1 and pp.sub_ctx(ctx, n1, n, keep) or nil
  local xA = n1 > 0 and x:narrow(1, 1, n1) or nil
  local xB = n > n1 and x:narrow(1, n1 + 1, n - n1) or nil
  if cA then cA.ws = A.ws end
  if cB then cB.ws = B.ws end
  local layer_forward = require("tide.models.llama").layer_forward
  local b_pending = false -- B's combine of the previous MoE layer is in flight
  local function finish_b()
    if not b_pending then return end
    local m = M.finish(plan, B)
    if m and xB then T.op.add(xB, xB, m) end
    b_pending = false
  end
  for i, L in ipairs(arch.layers) do
    if not L.moe or not L.moe.ep_plan then
      if cA then layer_forward(cA, L, i, xA) end
      finish_b()
      if cB then layer_forward(cB, L, i, xB) end
    else
      local hA = cA and attend(cA, L, i, xA) or nil
      M.post(plan, A, L.moe, hA, cA and n1 or 0, true)
      finish_b()
      local hB = cB and attend(cB, L, i, xB) or nil
      M.post(plan, B, L.moe, hB, cB and n - n1 or 0, false)
      M.experts(plan, A)
      M.experts(plan, B)
      local m = M.finish(plan, A)
      if m then T.op.add(xA, xA, m) end
      b_pending = true
    end
  end
  finish_b()
  return x
end

-- One pass of a rank with no tokens through the MoE layers, posting what
-- the stepping ranks post; false when no rank had tokens.
function M.idle_pass(plan)
  local A, B = halves(plan)
  for li, l in ipairs(plan.layers) do
    local act = M.post(plan, A, l.moe, nil, 0, true)
    M.post(plan, B, l.moe, nil, 0, false)
    if li == 1 and not act then return false end
    M.experts(plan, A)
    M.experts(plan, B)
    M.finish(plan, A)
    M.finish(plan, B)
  end
  return true
end

return M
