-- tide.parallel.ep: expert parallelism for the MoE layers of a loaded model,
-- with DP-attention (DeepSeek's decode layout): every rank runs attention and
-- keeps the KV cache of its own sequences; the routed experts are spread over
-- the ranks of an EP communicator, each rank holding `per_rank` physical
-- slots (slot p on rank floor(p / per_rank)) that serve the logical experts
-- of a physical -> logical map (contiguous, or EPLB's with redundant copies).
--
--   local ep = require "tide.parallel.ep"
--   local plan = assert(ep.apply(model, comm, { redundant = 4, loads = L, wire = "q8" }))
--   ... model:step / model:generate as usual (every rank steps in lockstep) ...
--   plan:drain()          -- a rank with no more work serves the others' MoE layers
--
-- Each MoE layer keeps nn.MoE's route -> dispatch -> experts -> combine; the
-- plan replaces dispatch and combine:
--   route:    MoE:route on the local tokens (as one process would);
--   dispatch: every (token, expert) row picks a replica of its expert (the
--             one on this rank when there is one, else the replicas take
--             turns), rows are ordered by slot and sent with one alltoallv
--             (f32 or Q8 rows: int8 + a per-row f32 scale), after an
--             alltoallv of the per-slot row counts (plus an "active" flag);
--   experts:  the received rows are gathered slot by slot (all sources) and
--             each slot's expert runs one GEMM per projection;
--   combine:  the results go back by the reverse alltoallv, are put in the
--             single-process row order (by logical expert, token order) and
--             scatter-added with the routing weights onto the shared
--             experts' output (computed locally) -- the same additions in the
--             same order as nn.MoE, so f32 results match it.
-- With one rank the exchange is a permutation.
local ffi = require "ffi"
local T = require "tide.tensor"
local mesh = require "tide.parallel.mesh"
local eplb = require "tide.parallel.eplb"
local MLP = require "tide.nn.mlp"

local M = {}

local Plan = {}
Plan.__index = Plan
M.Plan = Plan

-- The MoE layers of a model (main layers only; MTP heads stay local).
local function moe_layers(model)
  local t = {}
  for i, L in ipairs(model.arch.layers) do
    if L.moe then t[#t + 1] = { index = i, moe = L.moe } end
  end
  return t
end
M.moe_layers = moe_layers

-- Physical -> logical maps (one row of 0-based expert ids per MoE layer).
-- opts.redundant (0): extra slots; opts.loads: per-MoE-layer loads (rows of
-- E numbers) for EPLB; opts.groups, opts.nodes: EPLB's hierarchy.
function M.placement(n_layers, E, ep, opts)
  opts = opts or {}
  local R = opts.redundant or 0
  local chk, err = mesh.check_moe(E, ep, R)
  if not chk then return nil, err end
  if R == 0 and not opts.loads then
    local rows = {}
    for l = 1, n_layers do
      local row = {}
      for p = 1, E do row[p] = p - 1 end
      rows[l] = row
    end
    return rows
  end
  local loads = opts.loads
  if not loads then
    loads = {}
    for l = 1, n_layers do
      loads[l] = {}
      for e = 1, E do loads[l][e] = 1 end
    end
  end
  if #loads ~= n_layers then
    return nil, string.format("expert parallelism: %d rows of expert loads for %d MoE layers", #loads, n_layers)
  end
  local w = {}
  for l = 1, n_layers do
    if #loads[l] ~= E then return nil, string.format("expert parallelism: loads of MoE layer %d have %d entries, expected %d", l, #loads[l], E) end
    -- a layer that saw no tokens gets uniform weights (EPLB needs a total)
    local s, row = 0, {}
    for e = 1, E do s = s + loads[l][e] end
    for e = 1, E do row[e] = s > 0 and loads[l][e] or 1 end
    w[l] = row
  end
  local groups, nodes = opts.groups or 1, opts.nodes or 1
  if groups % nodes ~= 0 or E % groups ~= 0 or ep % nodes ~= 0 then groups, nodes = 1, 1 end
  local phy2log = eplb.rebalance(w, E + R, groups, nodes, ep)
  return phy2log
end

-- Per layer: replicas of each logical expert (0-based slots) from a phy2log row.
local function replicas(row, E)
  local rep = {}
  for e = 0, E - 1 do rep[e] = {} end
  for p = 1, #row do
    local e = row[p]
    rep[e][#rep[e] + 1] = p - 1
  end
  for e = 0, E - 1 do
    if #rep[e] == 0 then error("expert parallelism: placement holds no replica of expert " .. e, 0) end
  end
  return rep
end

-- apply(model, comm, opts): EP over comm (every rank calls it, same opts).
-- opts: redundant, loads, groups, nodes (placement), phy2log (a placement to
-- use as is), wire ("f32" | "q8"), every (rebalance from the loads counted
-- at run time every N steps), overlap (two-micro-batch mode, f32 wire).
-- Returns the plan or nil, message.
function M.apply(model, comm, opts)
  opts = opts or {}
  local layers = moe_layers(model)
  if #layers == 0 then return nil, "expert parallelism: the model has no MoE layers" end
  local E = layers[1].moe.n_expert
  local n = comm:size()
  local groups = opts.groups or layers[1].moe.n_group
  local phy2log, err = opts.phy2log, nil
  if not phy2log then
    phy2log, err = M.placement(#layers, E, n, { redundant = opts.redundant, loads = opts.loads, groups = groups,
      nodes = opts.nodes })
    if not phy2log then return nil, err end
  end
  local S = #phy2log[1]
  local chk, cerr = mesh.check_moe(E, n, S - E)
  if not chk then return nil, cerr end
  local wire = opts.wire or "f32"
  if wire ~= "f32" and wire ~= "q8" then return nil, "expert parallelism: wire must be 'f32' or 'q8', got '" .. tostring(wire) .. "'" end
  if opts.overlap and wire ~= "f32" then return nil, "expert parallelism: the two-micro-batch mode sends f32 rows (wire = 'f32')" end
  if opts.overlap ~= nil and opts.overlap ~= true and opts.overlap ~= false and opts.overlap ~= "tbo" then
    return nil, "expert parallelism: overlap must be true (in-layer two micro-batches), 'tbo' (across layers) or false"
  end
  local self = setmetatable({ comm = comm, model = model, layers = layers, n_expert = E, slots = S, per = chk.per_rank,
    ranks = n, me = comm:rank(), wire = wire, dim = layers[1].moe.dim, inter = layers[1].moe.inter,
    bytes = { dispatch = 0, combine = 0 }, steps = 0, passes = 0, every = opts.every, rebalances = 0, moved = 0, moved_bytes = 0,
    groups = groups, nodes = opts.nodes, overlap = opts.overlap }, Plan)
  -- scratch (grown as needed)
  self.cnt_send = ffi.new("int32_t[?]", n * (self.per + 1))
  self.cnt_recv = ffi.new("int32_t[?]", n * (self.per + 1))
  self.ccounts = {}
  for r = 1, n do self.ccounts[r] = (self.per + 1) * 4 end
  self:set_placement(phy2log)
  for li, l in ipairs(layers) do
    local moe = l.moe
    moe.ep_plan, moe.ep_layer = self, li
    moe.forward = function(m, ctx, x, key) return self:forward(m, ctx, x, key) end
  end
  if opts.overlap == "tbo" then
    local tbo = require "tide.parallel.tbo"
    model.arch.forward_hidden = function(arch, ctx, ids) return tbo.forward_hidden(self, arch, ctx, ids) end
  end
  return self
end

-- Swap the physical -> logical maps (between steps; a collective when a
-- placement is already set). A slot's expert that this rank did not hold
-- before arrives from a rank that held it (eplb.moves: isend of the gate/up/
-- down weights, recv into new tensors); FP8 weights (with block scales) are
-- not sent: every rank has them loaded, the slot takes its own copy.
-- Returns the moves per layer (none on the first placement).
function Plan:set_placement(phy2log)
  if #phy2log ~= #self.layers then error("ep: placement has " .. #phy2log .. " rows for " .. #self.layers .. " MoE layers", 2) end
  local old, oldloc = self.phy2log, self.local_experts
  local per, me = self.per, self.me
  local newloc, moves, sends, recvs = {}, {}, {}, {}
  local first = self.layers[1].moe.experts[1]
  local transfer = first.gate.weight:cdata().scale == nil
  for li, l in ipairs(self.layers) do
    local row = phy2log[li]
    if #row ~= self.slots then error("ep: placement row " .. li .. " has " .. #row .. " slots, expected " .. self.slots, 2) end
    local loc = {}
    if not old or not transfer then
      for j = 1, per do loc[j] = l.moe.experts[row[me * per + j] + 1] end
      if old then moves[li] = eplb.moves(old[li], row, self.ranks) end
    else
      local held = {}
      for j = 1, per do held[old[li][me * per + j]] = oldloc[li][j] end
      local mv = eplb.moves(old[li], row, self.ranks)
      moves[li] = mv
      for _, m in ipairs(mv) do
        local tag = 1 + (li * 65536 + m.slot) * 4
        if m.from == me then
          local src = held[m.expert]
          for k, w in ipairs({ src.gate.weight, src.up.weight, src.down.weight }) do
            sends[#sends + 1] = assert(self.comm:isend(w, m.to, tag + k))
            self.moved_bytes = self.moved_bytes + w:nbytes()
          end
        end
        if m.to == me then recvs[#recvs + 1] = { li = li, j = m.slot - me * per + 1, expert = m.expert, from = m.from, tag = tag } end
      end
      for j = 1, per do loc[j] = held[row[me * per + j]] end
    end
    newloc[li] = loc
  end
  for _, r in ipairs(recvs) do
    local proto = self.layers[r.li].moe.experts[r.expert + 1] -- shapes and dtypes only
    local ws = {}
    for k, w in ipairs({ proto.gate.weight, proto.up.weight, proto.down.weight }) do
      local t = T.zeros(w:shape(), w:dtype())
      local ok, err = self.comm:recv(t, r.from, r.tag + k)
      if not ok then error("ep: receiving expert " .. r.expert .. ": " .. tostring(err), 0) end
      ws[k] = t
    end
    newloc[r.li][r.j] = MLP.new(ws[1], ws[2], ws[3])
  end
  for _, q in ipairs(sends) do
    local ok, err = q:wait()
    if not ok then error("ep: sending an expert: " .. tostring(err), 0) end
  end
  for li = 1, #self.layers do
    for j = 1, per do
      if not newloc[li][j] then error("ep: slot " .. (me * per + j - 1) .. " of MoE layer " .. li .. " got no expert", 0) end
    end
  end
  self.phy2log, self.local_experts, self.rep = phy2log, newloc, {}
  self.slot_loads = self.slot_loads or {}
  for li = 1, #self.layers do
    self.rep[li] = replicas(phy2log[li], self.n_expert)
    self.slot_loads[li] = self.slot_loads[li] or ffi.new("int64_t[?]", per)
  end
  self.rr = {}
  for li = 1, #self.layers do self.rr[li] = ffi.new("int32_t[?]", self.n_expert) end
  if old then return moves end
end

local function grow(self, name, ct, n)
  local b = self[name]
  if not b or self[name .. "_n"] < n then
    n = math.max(n, 16, math.floor((self[name .. "_n"] or 0) * 1.5))
    b = ffi.new(ct, n)
    self[name], self[name .. "_n"] = b, n
  end
  return b
end
M.grow = grow

-- This rank's experts over the rows it received: xr holds rtot rows from R
-- sources in source order (rrows[s + 1] from source s, of which cr[s * W + j]
-- for local slot j, slots in order). Rows are gathered slot-major, each slot
-- runs its expert once over all its rows (loc[j + 1], slot loads in sl), and
-- the results land in yr in received order. Scratch lives in ws and holder.
function M.run_received(ws, holder, xr, yr, rtot, rrows, cr, W, per, R, dim, I, loc, sl)
  local xg, yg = ws:get("ep.xg", rtot, dim), ws:get("ep.yg", rtot, dim)
  local g, u = ws:get("ep.g", rtot, I), ws:get("ep.u", rtot, I)
  local xgp, ygp = ffi.cast("float*", xg._p.data), ffi.cast("float*", yg._p.data)
  local back = grow(holder, "b_back", "int32_t[?]", rtot) -- slot-major row -> received row
  local src_off, acc = {}, 0
  for s = 0, R - 1 do src_off[s] = acc; acc = acc + rrows[s + 1] end
  local k = 0
  for j = 0, per - 1 do
    local k0 = k
    for s = 0, R - 1 do
      local base = src_off[s]
      for jj = 0, j - 1 do base = base + cr[s * W + jj] end
      for q = 0, cr[s * W + j] - 1 do
        back[k] = base + q
        ffi.copy(xgp + k * dim, xr + (base + q) * dim, dim * 4)
        k = k + 1
      end
    end
    local m = k - k0
    if m > 0 then
      sl[j] = sl[j] + m
      loc[j + 1]:forward_into(ws:view("ep.y" .. j, yg, k0 * dim, m, dim), ws:view("ep.x" .. j, xg, k0 * dim, m, dim),
        ws:view("ep.g" .. j, g, k0 * I, m, I), ws:view("ep.u" .. j, u, k0 * I, m, I))
    end
  end
  for q = 0, rtot - 1 do ffi.copy(yr + back[q] * dim, ygp + q * dim, dim * 4) end
end

-- Rows of a step's routed (token, expert) pairs in the single-process order
-- (by logical expert, stable in token order): pos maps routed index -> row;
-- tok/rw hold each row's token and routing weight; y (nk, dim) receives the rows.
local function single_process_order(self, ws, selp, wtp, nk, E, K, dim)
  local cnt = grow(self, "b_ecnt", "int32_t[?]", E + 1)
  ffi.fill(cnt, (E + 1) * 4)
  for i = 0, nk - 1 do cnt[selp[i] + 1] = cnt[selp[i] + 1] + 1 end
  for e = 1, E do cnt[e] = cnt[e] + cnt[e - 1] end
  local pos = grow(self, "b_pos", "int32_t[?]", nk)
  local tok = ws:get_i32("moe.tok", nk)
  local rw = ws:get("moe.rw", nk)
  local tokp, rwp = ffi.cast("int32_t*", tok._p.data), ffi.cast("float*", rw._p.data)
  for i = 0, nk - 1 do
    local e = selp[i]
    local r = cnt[e]
    cnt[e] = r + 1
    pos[i] = r
    tokp[r] = math.floor(i / K)
    rwp[r] = wtp[i]
  end
  local y = ws:get("moe.y", nk, dim)
  return pos, tok, rw, y, ffi.cast("float*", y._p.data)
end
Plan.single_process_order = single_process_order

-- Q8 rows on the wire: per row an f32 scale then dim int8 values.

local function q8_pack(dst, src, rows, dim)
  local stride = dim + 4
  for r = 0, rows - 1 do
    local s = src + r * dim
    local amax = 0
    for i = 0, dim - 1 do
      local v = s[i]
      if v < 0 then v = -v end
      if v > amax then amax = v end
    end
    local d = dst + r * stride
    local sc = amax / 127
    ffi.cast("float*", d)[0] = sc
    local q = ffi.cast("int8_t*", d + 4)
    local inv = sc > 0 and 1 / sc or 0
    for i = 0, dim - 1 do
      local v = s[i] * inv
      q[i] = v >= 0 and math.floor(v + 0.5) or -math.floor(-v + 0.5)
    end
  end
end

local function q8_unpack(dst, src, rows, dim)
  local stride = dim + 4
  for r = 0, rows - 1 do
    local d = src + r * stride
    local sc = ffi.cast("float*", d)[0]
    local q = ffi.cast("int8_t*", d + 4)
    local o = dst + r * dim
    for i = 0, dim - 1 do o[i] = q[i] * sc end
  end
end

-- Route this rank's n tokens and pick a physical slot for every routed row:
-- returns sel, wt (cdata, n*K), slot (n*K) and per-slot row counts scnt
-- (slots + 1 entries, counts at [p + 1]).
function Plan:route_rows(moe, ws, x, n, li)
  local E, K = self.n_expert, moe.top_k
  local per, me = self.per, self.me
  local nk = n * K
  local selp, wtp
  if n > 0 then
    local logits = ws:get("moe.logits", n, E)
    T.op.matmul(logits, x, moe.gate)
    T.op.sigmoid(logits, logits)
    local sel = ws:get_i32("moe.sel", nk)
    local wt = ws:get("moe.wt", nk)
    selp, wtp = ffi.cast("int32_t*", sel._p.data), ffi.cast("float*", wt._p.data)
    moe:route(logits, n, selp, wtp)
  end
  -- replica (physical slot) of every routed row; rows sorted by slot
  local rep, rr = self.rep[li], self.rr[li]
  local slot = grow(self, "b_slot", "int32_t[?]", nk + 1)
  local scnt = grow(self, "b_scnt", "int32_t[?]", self.slots + 1)
  ffi.fill(scnt, (self.slots + 1) * 4)
  local loads = moe.loads
  for i = 0, nk - 1 do
    local e = selp[i]
    loads[e] = loads[e] + 1
    local r = rep[e]
    local p
    if #r == 1 then p = r[1] else
      for _, q in ipairs(r) do if math.floor(q / per) == me then p = q break end end
      if not p then
        p = r[rr[e] % #r + 1]
        rr[e] = rr[e] + 1
      end
    end
    slot[i] = p
    scnt[p + 1] = scnt[p + 1] + 1
  end
  return selp, wtp, slot, scnt
end

-- Every rank (stepping or idle) passes layer 1 once per step: a runtime
-- rebalance (opts.every) happens at the same step everywhere.
function Plan:tick(li)
  if li ~= 1 then return end
  self.passes = self.passes + 1
  if self.every and self.every > 0 and self.passes % self.every == 0 then
    local moves = assert(self:rebalance())
    local nmv = 0
    for _, mv in ipairs(moves or {}) do nmv = nmv + #mv end
    self.rebalances = self.rebalances + 1
    self.moved = self.moved + nmv
  end
end

-- One MoE layer on this rank's tokens x (n, dim), n may be 0 (an idle rank
-- still serves its slots). Returns the output in workspace slot key (nil
-- when n == 0) and whether any rank had tokens.
function Plan:exchange(moe, ws, x, n, key)
  local li = moe.ep_layer
  local E, K, dim, I, per, R = self.n_expert, moe.top_k, self.dim, self.inter, self.per, self.ranks
  local comm, me = self.comm, self.me
  self:tick(li)
  if self.overlap then return self:exchange2(moe, ws, x, n, key) end
  local nk = n * K
  local selp, wtp, slot, scnt = self:route_rows(moe, ws, x, n, li)
  for p = 1, self.slots do scnt[p] = scnt[p] + scnt[p - 1] end
  local order = grow(self, "b_order", "int32_t[?]", nk + 1) -- send row -> routed index i
  local fill = grow(self, "b_fill", "int32_t[?]", self.slots + 1)
  for p = 0, self.slots - 1 do fill[p] = scnt[p] end
  for i = 0, nk - 1 do
    local p = slot[i]
    order[fill[p]] = i
    fill[p] = fill[p] + 1
  end
  -- counts per destination slot (+ active flag), exchanged first
  local cs, cr = self.cnt_send, self.cnt_recv
  local srows = {}
  for d = 0, R - 1 do
    local tot = 0
    for j = 0, per - 1 do
      local p = d * per + j
      local c = scnt[p + 1] - scnt[p]
      cs[d * (per + 1) + j] = c
      tot = tot + c
    end
    cs[d * (per + 1) + per] = n > 0 and 1 or 0
    srows[d + 1] = tot
  end
  local ok, err = comm:alltoallv(cs, self.ccounts, cr, self.ccounts)
  if not ok then error("ep dispatch: " .. tostring(err), 0) end
  local rrows, active, rtot = {}, false, 0
  for s = 0, R - 1 do
    local tot = 0
    for j = 0, per - 1 do tot = tot + cr[s * (per + 1) + j] end
    rrows[s + 1] = tot
    rtot = rtot + tot
    if cr[s * (per + 1) + per] ~= 0 then active = true end
  end
  if not active then return nil, false end
  -- dispatch the rows
  local rowb = self.wire == "q8" and dim + 4 or dim * 4
  local sbytes, rbytes = {}, {}
  for r = 1, R do sbytes[r] = srows[r] * rowb; rbytes[r] = rrows[r] * rowb end
  local xs = grow(self, "b_xs", "float[?]", nk * dim + 1)
  local xp = n > 0 and ffi.cast("float*", x._p.data) or nil
  for r = 0, nk - 1 do
    local t = math.floor(order[r] / K)
    ffi.copy(xs + r * dim, xp + t * dim, dim * 4)
  end
  local xr = grow(self, "b_xr", "float[?]", rtot * dim + 1)
  if self.wire == "q8" then
    local qs = grow(self, "b_qs", "uint8_t[?]", nk * rowb + 1)
    local qr = grow(self, "b_qr", "uint8_t[?]", rtot * rowb + 1)
    q8_pack(qs, xs, nk, dim)
    ok, err = comm:alltoallv(qs, sbytes, qr, rbytes)
    if ok then q8_unpack(xr, qr, rtot, dim) end
  else
    ok, err = comm:alltoallv(xs, sbytes, xr, rbytes)
  end
  if not ok then error("ep dispatch: " .. tostring(err), 0) end
  self.bytes.dispatch = self.bytes.dispatch + nk * rowb
  -- experts: gather received rows slot-major (source order inside a slot)
  if rtot > 0 then
    local yr = grow(self, "b_yr", "float[?]", rtot * dim)
    M.run_received(ws, self, xr, yr, rtot, rrows, cr, per + 1, per, R, dim, I, self.local_experts[li],
      self.slot_loads[li])
    self.yr_buf = yr
  end
  -- combine: the reverse exchange
  for r = 1, R do sbytes[r] = srows[r] * dim * 4; rbytes[r] = rrows[r] * dim * 4 end
  local yb = grow(self, "b_yb", "float[?]", nk * dim + 1)
  ok, err = comm:alltoallv(rtot > 0 and self.yr_buf or xr, rbytes, yb, sbytes)
  if not ok then error("ep combine: " .. tostring(err), 0) end
  self.bytes.combine = self.bytes.combine + rtot * dim * 4
  if n == 0 then return nil, true end
  -- rows in the single-process order (by logical expert, stable in token order)
  local pos, tok, rw, y, yp = single_process_order(self, ws, selp, wtp, nk, E, K, dim)
  for r = 0, nk - 1 do ffi.copy(yp + pos[order[r]] * dim, yb + r * dim, dim * 4) end
  local out
  if moe.shared then
    out = moe.shared:forward(ws, key, x)
  else
    out = ws:get(key, n, dim)
    T.fill_zero(out)
  end
  T.op.scatter_add(out, y, tok, rw)
  return out, true
end

-- Two-micro-batch mode (opts.overlap): the local tokens are split in two
-- halves; both dispatches are posted (ialltoallv) before the shared experts
-- run, half 1's experts run while half 2's dispatch is in flight, half 1's
-- combine is posted before half 2's experts run, and pending requests are
-- polled (test) between expert GEMMs so they progress. f32 rows on the wire.
function Plan:exchange2(moe, ws, x, n, key)
  local li = moe.ep_layer
  local E, K, dim, I, per, R = self.n_expert, moe.top_k, self.dim, self.inter, self.per, self.ranks
  local comm = self.comm
  local nk = n * K
  local selp, wtp, slot = self:route_rows(moe, ws, x, n, li)
  local n1 = math.ceil(n / 2)
  local S = self.slots
  -- per half: rows sorted by slot
  local H = {}
  for h = 1, 2 do
    local t0, t1 = h == 1 and 0 or n1, h == 1 and n1 or n
    local cnt = grow(self, "b2_cnt" .. h, "int32_t[?]", S + 1)
    ffi.fill(cnt, (S + 1) * 4)
    for i = t0 * K, t1 * K - 1 do cnt[slot[i] + 1] = cnt[slot[i] + 1] + 1 end
    for p = 1, S do cnt[p] = cnt[p] + cnt[p - 1] end
    local rows = t1 * K - t0 * K
    local order = grow(self, "b2_order" .. h, "int32_t[?]", rows + 1)
    local fill = grow(self, "b2_fill" .. h, "int32_t[?]", S + 1)
    for p = 0, S - 1 do fill[p] = cnt[p] end
    for i = t0 * K, t1 * K - 1 do
      local p = slot[i]
      order[fill[p]] = i
      fill[p] = fill[p] + 1
    end
    H[h] = { cnt = cnt, order = order, rows = rows }
  end
  -- counts of both halves (+ the active flag) in one exchange
  local W = 2 * per + 1
  local cs = grow(self, "b2_cs", "int32_t[?]", R * W)
  local cr = grow(self, "b2_cr", "int32_t[?]", R * W)
  local cc = {}
  for d = 0, R - 1 do
    cc[d + 1] = W * 4
    for h = 1, 2 do
      for j = 0, per - 1 do
        local p = d * per + j
        cs[d * W + (h - 1) * per + j] = H[h].cnt[p + 1] - H[h].cnt[p]
      end
    end
    cs[d * W + 2 * per] = n > 0 and 1 or 0
  end
  local ok, err = comm:alltoallv(cs, cc, cr, cc)
  if not ok then error("ep dispatch: " .. tostring(err), 0) end
  local active = false
  for s = 0, R - 1 do if cr[s * W + 2 * per] ~= 0 then active = true end end
  if not active then return nil, false end
  local xp = n > 0 and ffi.cast("float*", x._p.data) or nil
  -- post both dispatches
  for h = 1, 2 do
    local hh = H[h]
    local sb, rb, rtot = {}, {}, 0
    for d = 0, R - 1 do
      local tot = 0
      for j = 0, per - 1 do tot = tot + cs[d * W + (h - 1) * per + j] end
      sb[d + 1] = tot * dim * 4
      local rt = 0
      for j = 0, per - 1 do rt = rt + cr[d * W + (h - 1) * per + j] end
      rb[d + 1] = rt * dim * 4
      rtot = rtot + rt
    end
    hh.sb, hh.rb, hh.rtot = sb, rb, rtot
    local xs = grow(self, "b2_xs" .. h, "float[?]", hh.rows * dim + 1)
    for r = 0, hh.rows - 1 do ffi.copy(xs + r * dim, xp + math.floor(hh.order[r] / K) * dim, dim * 4) end
    hh.xr = grow(self, "b2_xr" .. h, "float[?]", rtot * dim + 1)
    hh.req = assert(comm:ialltoallv(xs, sb, hh.xr, rb))
    self.bytes.dispatch = self.bytes.dispatch + hh.rows * dim * 4
  end
  -- requests in flight (dispatch 1, 2, combine 1, 2); a done request is
  -- dropped from the list (a hole would end an ipairs walk early)
  local pending = { H[1].req, H[2].req }
  local function poll()
    local k = 1
    while k <= #pending do
      local r, e = pending[k]:test()
      if r == nil then error("ep: " .. tostring(e), 0) end
      if r then table.remove(pending, k) else k = k + 1 end
    end
  end
  -- shared experts while the dispatches are in flight
  local out
  if n > 0 then
    if moe.shared then out = moe.shared:forward(ws, key, x) else
      out = ws:get(key, n, dim)
      T.fill_zero(out)
    end
  end
  poll()
  local loc, sl = self.local_experts[li], self.slot_loads[li]
  for h = 1, 2 do
    local hh = H[h]
    ok, err = hh.req:wait()
    if not ok then error("ep dispatch: " .. tostring(err), 0) end
    for k = #pending, 1, -1 do if pending[k] == hh.req then table.remove(pending, k) end end
    local rtot = hh.rtot
    local yr = grow(self, "b2_yr" .. h, "float[?]", rtot * dim + 1)
    if rtot > 0 then
      local xg = ws:get("ep.xg" .. h, rtot, dim)
      local yg = ws:get("ep.yg" .. h, rtot, dim)
      local g = ws:get("ep.g" .. h, rtot, I)
      local u = ws:get("ep.u" .. h, rtot, I)
      local xgp, ygp = ffi.cast("float*", xg._p.data), ffi.cast("float*", yg._p.data)
      local back = grow(self, "b2_back" .. h, "int32_t[?]", rtot)
      local src_off, acc = {}, 0
      for s = 0, R - 1 do
        src_off[s] = acc
        for j = 0, per - 1 do acc = acc + cr[s * W + (h - 1) * per + j] end
      end
      local k = 0
      for j = 0, per - 1 do
        local k0 = k
        for s = 0, R - 1 do
          local base = src_off[s]
          for jj = 0, j - 1 do base = base + cr[s * W + (h - 1) * per + jj] end
          for q = 0, cr[s * W + (h - 1) * per + j] - 1 do
            back[k] = base + q
            ffi.copy(xgp + k * dim, hh.xr + (base + q) * dim, dim * 4)
            k = k + 1
          end
        end
        local m = k - k0
        if m > 0 then
          sl[j] = sl[j] + m
          loc[j + 1]:forward_into(ws:view("ep.y" .. h .. "." .. j, yg, k0 * dim, m, dim),
            ws:view("ep.x" .. h .. "." .. j, xg, k0 * dim, m, dim), ws:view("ep.g" .. h .. "." .. j, g, k0 * I, m, I),
            ws:view("ep.u" .. h .. "." .. j, u, k0 * I, m, I))
          poll()
        end
      end
      for q = 0, rtot - 1 do ffi.copy(yr + back[q] * dim, ygp + q * dim, dim * 4) end
    end
    hh.yb = grow(self, "b2_yb" .. h, "float[?]", hh.rows * dim + 1)
    hh.creq = assert(comm:ialltoallv(yr, hh.rb, hh.yb, hh.sb))
    pending[#pending + 1] = hh.creq
    self.bytes.combine = self.bytes.combine + rtot * dim * 4
  end
  for h = 1, 2 do
    ok, err = H[h].creq:wait()
    if not ok then error("ep combine: " .. tostring(err), 0) end
  end
  if n == 0 then return nil, true end
  -- single-process row order, then the weighted scatter-add
  local pos, tok, rw, y, yp = single_process_order(self, ws, selp, wtp, nk, E, K, dim)
  for h = 1, 2 do
    local hh = H[h]
    for r = 0, hh.rows - 1 do ffi.copy(yp + pos[hh.order[r]] * dim, hh.yb + r * dim, dim * 4) end
  end
  T.op.scatter_add(out, y, tok, rw)
  return out, true
end

function Plan:forward(moe, ctx, x, key)
  local n = tonumber(x._p.shape[0])
  if moe.ep_layer == 1 then self.steps = self.steps + 1 end
  return (self:exchange(moe, ctx.ws, x, n, key))
end

-- One pass of an idle rank through the MoE layers; false when no rank had
-- tokens (every rank is draining: they all see it in the same pass).
function Plan:idle_pass()
  if self.overlap == "tbo" then return require("tide.parallel.tbo").idle_pass(self) end
  local ws = self.model.ws
  for li, l in ipairs(self.layers) do
    local _, active = self:exchange(l.moe, ws, nil, 0, "ffn.out")
    if li == 1 and not active then return false end
  end
  return true
end

-- Serve the other ranks' MoE layers until every rank has called drain.
function Plan:drain()
  local passes = 0
  while self:idle_pass() do passes = passes + 1 end
  return passes
end

-- Loads of this rank's slots per MoE layer ({ {slot0, slot1, ...}, ... }).
function Plan:slot_loads_table(reset)
  local t = {}
  for li = 1, #self.layers do
    local row, sl = {}, self.slot_loads[li]
    for j = 0, self.per - 1 do
      row[j + 1] = tonumber(sl[j])
      if reset then sl[j] = 0 end
    end
    t[li] = row
  end
  return t
end

-- Logical expert loads per MoE layer summed over the EP ranks (collective).
function Plan:expert_loads(reset)
  local flat = {}
  for _, l in ipairs(self.layers) do
    for _, v in ipairs(l.moe:expert_loads(reset)) do flat[#flat + 1] = v end
  end
  local sum, err = self.comm:allreduce_table(flat, "sum", "i64")
  if not sum then return nil, err end
  local out, k = {}, 0
  for li = 1, #self.layers do
    local row = {}
    for e = 1, self.n_expert do k = k + 1; row[e] = sum[k] end
    out[li] = row
  end
  return out
end

-- Rebalance from the loads counted so far (collective; between steps).
-- Returns the weight moves per layer (eplb.moves) or nil, message.
function Plan:rebalance(opts)
  opts = opts or {}
  local loads, err = self:expert_loads(opts.reset)
  if not loads then return nil, err end
  local p, perr = M.placement(#self.layers, self.n_expert, self.ranks, { redundant = self.slots - self.n_expert,
    loads = loads, groups = opts.groups or self.groups, nodes = opts.nodes or self.nodes })
  if not p then return nil, perr end
  return self:set_placement(p)
end

-- Bytes of the checkpoint files (*.safetensors under dir, or all) resident
-- in this process, and their mapped size, from /proc/self/smaps (nil when
-- it cannot be read).
function M.resident(dir)
  dir = type(dir) == "string" and dir:gsub("^%./", ""):gsub("/+$", "") or nil
  local f = io.open("/proc/self/smaps")
  if not f then return nil end
  local res, size, cur = 0, 0, false
  for line in f:lines() do
    local path = line:match("^%x+%-%x+ %S+ %x+ %S+ %d+%s+(.+)$")
    if path then cur = path:match("%.safetensors$") ~= nil and (not dir or path:find(dir, 1, true) ~= nil)
    elseif cur then
      local k, v = line:match("^(%a+):%s+(%d+) kB")
      if k == "Rss" then res = res + tonumber(v) * 1024 elseif k == "Size" then size = size + tonumber(v) * 1024 end
    end
  end
  f:close()
  return res, size
end

-- Memory of the routed experts on this rank: the weights are mmapped
-- views of the checkpoint, so a rank pages in only the experts it runs (its
-- slots); nothing reads the others. Returns { slot_bytes = bytes of the
-- experts in this rank's slots, all_bytes = bytes of every routed expert,
-- resident = bytes of the model's checkpoint files resident in this process (from
-- /proc/self/smaps; nil where unreadable), file_bytes = their mapped size,
-- rss = the process's resident set }. With thread ranks the process
-- numbers cover every rank of the process.
function Plan:memory()
  local function mlp_bytes(m) return m.gate.weight:nbytes() + m.up.weight:nbytes() + m.down.weight:nbytes() end
  local slot, all = 0, 0
  for li, l in ipairs(self.layers) do
    for _, e in ipairs(l.moe.experts) do all = all + mlp_bytes(e) end
    for _, e in ipairs(self.local_experts[li]) do slot = slot + mlp_bytes(e) end
  end
  local out = { slot_bytes = slot, all_bytes = all }
  out.resident, out.file_bytes = M.resident(self.model.source)
  local st = io.open("/proc/self/status")
  if st then
    local s = st:read("*a")
    st:close()
    local kb = s:match("VmRSS:%s+(%d+) kB")
    out.rss = kb and tonumber(kb) * 1024 or nil
  end
  return out
end

-- Undo apply: the MoE layers run locally again.
function Plan:remove()
  for _, l in ipairs(self.layers) do
    l.moe.forward, l.moe.ep_plan, l.moe.ep_layer = nil, nil, nil
  end
  if self.overlap == "tbo" then self.model.arch.forward_hidden = nil end
end

return M
