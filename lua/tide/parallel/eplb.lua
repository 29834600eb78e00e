-- tide.parallel.eplb: DeepSeek's expert-parallel load balancer (EPLB).
--
--   local eplb = require "tide.parallel.eplb"
--   local phy2log, log2phy, logcnt = eplb.rebalance(weight, num_replicas, num_groups, num_nodes, num_gpus)
--
-- weight: rows (one per MoE layer) of per-logical-expert loads. Result, as
-- Lua tables of rows with 0-based expert ids (as in the reference):
--   phy2log[l][p]  logical expert held by physical slot p (slots are
--                  num_replicas, num_replicas / num_gpus per GPU, GPU-major)
--   log2phy[l][e]  the physical slots of logical expert e (maxcnt entries,
--                  padded with -1), in replica order
--   logcnt[l][e]   replicas of logical expert e
--
-- Policy, as DeepSeek's eplb.py: when num_groups % num_nodes == 0 the
-- hierarchical one (pack expert groups onto nodes with balanced packing,
-- replicate the heaviest experts within each node, pack the physical experts
-- onto the node's GPUs), otherwise the global one (the same with one group
-- and one node). Ties break as the reference does: a stable descending sort
-- (items of equal weight keep index order), the first lightest pack, the
-- first heaviest expert; loads are rounded to float32 at the same points as
-- the reference's float32 tensors, so equal loads compare equal.
local ffi = require "ffi"

local M = {}

local f32 = require("tide.tensor").f32

-- Indices 0..n-1 of w (0-based array) sorted by descending weight, stable.
local function argsort_desc(w, n)
  local idx = {}
  for i = 0, n - 1 do idx[i + 1] = i end
  table.sort(idx, function(a, b)
    if w[a] ~= w[b] then return w[a] > w[b] end
    return a < b
  end)
  return idx
end

-- Pack n weighted items (0-based array w) into num_packs packs of n/num_packs
-- items each, heaviest first onto the lightest pack that has room.
-- Returns pack_index[i], rank_in_pack[i] (0-based arrays).
local function balanced_packing(w, n, num_packs)
  local per_pack = math.floor(n / num_packs)
  local pack_index, rank_in_pack = {}, {}
  if per_pack == 1 then
    for i = 0, n - 1 do pack_index[i], rank_in_pack[i] = i, 0 end
    return pack_index, rank_in_pack
  end
  local pack_w, pack_n = {}, {}
  for p = 0, num_packs - 1 do pack_w[p], pack_n[p] = 0, 0 end
  for _, item in ipairs(argsort_desc(w, n)) do
    local best
    for p = 0, num_packs - 1 do
      if pack_n[p] < per_pack and (best == nil or pack_w[p] < pack_w[best]) then best = p end
    end
    pack_index[item] = best
    rank_in_pack[item] = pack_n[best]
    pack_w[best] = f32(pack_w[best] + w[item])
    pack_n[best] = pack_n[best] + 1
  end
  return pack_index, rank_in_pack
end

-- Replicate num_log experts (0-based loads w) into num_phy slots: each extra
-- slot goes to the expert with the largest load per replica (first on ties).
-- Returns phy2log[p], phyrank[p] (replica index), logcnt[e] (0-based).
local function replicate_experts(w, num_log, num_phy)
  local phy2log, phyrank, logcnt = {}, {}, {}
  for e = 0, num_log - 1 do phy2log[e], phyrank[e], logcnt[e] = e, 0, 1 end
  for p = num_log, num_phy - 1 do
    local best, best_v
    for e = 0, num_log - 1 do
      local v = f32(w[e] / logcnt[e])
      if best == nil or v > best_v then best, best_v = e, v end
    end
    phy2log[p] = best
    phyrank[p] = logcnt[best]
    logcnt[best] = logcnt[best] + 1
  end
  return phy2log, phyrank, logcnt
end

-- One layer, hierarchical policy. w: 0-based loads (float32 values).
-- Returns 0-based arrays phy2log[num_phy], phyrank[num_phy], logcnt[num_log].
local function rebalance_layer(w, num_log, num_phy, num_groups, num_nodes, num_gpus)
  local group_size = math.floor(num_log / num_groups)
  local groups_per_node = math.floor(num_groups / num_nodes)
  local log_per_node = math.floor(num_log / num_nodes)
  local phy_per_node = math.floor(num_phy / num_nodes)
  local gpus_per_node = math.floor(num_gpus / num_nodes)
  local phy_per_gpu = math.floor(num_phy / num_gpus)

  -- 1. groups onto nodes
  local gw = {}
  for g = 0, num_groups - 1 do
    local s = 0
    for j = 0, group_size - 1 do s = f32(s + w[g * group_size + j]) end
    gw[g] = s
  end
  local gpack, grank = balanced_packing(gw, num_groups, num_nodes)
  -- log2mlog: logical expert -> node-major "middle" logical id; mlog2log its inverse
  local log2mlog, mlog2log = {}, {}
  for g = 0, num_groups - 1 do
    for j = 0, group_size - 1 do
      local m = (gpack[g] * groups_per_node + grank[g]) * group_size + j
      log2mlog[g * group_size + j] = m
      mlog2log[m] = g * group_size + j
    end
  end

  -- 2. replicate within each node; 3. pack the node's physical experts onto its GPUs
  local phy2log, phyrank, logcnt = {}, {}, {}
  for node = 0, num_nodes - 1 do
    local mw = {}
    for k = 0, log_per_node - 1 do mw[k] = w[mlog2log[node * log_per_node + k]] end
    local p2m, prank, mcnt = replicate_experts(mw, log_per_node, phy_per_node)
    local tw = {}
    for p = 0, phy_per_node - 1 do tw[p] = f32(mw[p2m[p]] / mcnt[p2m[p]]) end
    local pack, rin = balanced_packing(tw, phy_per_node, gpus_per_node)
    for p = 0, phy_per_node - 1 do
      local slot = pack[p] * phy_per_gpu + rin[p] -- position within the node
      local out = node * phy_per_node + slot
      phy2log[out] = mlog2log[node * log_per_node + p2m[p]]
      phyrank[out] = prank[p]
    end
    for k = 0, log_per_node - 1 do logcnt[mlog2log[node * log_per_node + k]] = mcnt[k] end
  end
  return phy2log, phyrank, logcnt
end

local function check_int(v, name, min)
  if type(v) ~= "number" or v ~= math.floor(v) or v < min then
    error(string.format("eplb.rebalance: %s must be an integer >= %d, got %s", name, min, tostring(v)), 3)
  end
end

-- See the top of the file. Raises on bad arguments (programmer errors).
function M.rebalance(weight, num_replicas, num_groups, num_nodes, num_gpus)
  if type(weight) ~= "table" or #weight == 0 then
    error("eplb.rebalance: weight must be a non-empty table of rows (one per layer)", 2)
  end
  check_int(num_replicas, "num_replicas", 1)
  check_int(num_groups, "num_groups", 1)
  check_int(num_nodes, "num_nodes", 1)
  check_int(num_gpus, "num_gpus", 1)
  local num_log = type(weight[1]) == "table" and #weight[1] or 0
  if num_log == 0 then error("eplb.rebalance: weight rows must be non-empty tables of loads", 2) end
  for l, row in ipairs(weight) do
    if type(row) ~= "table" or #row ~= num_log then
      error(string.format("eplb.rebalance: weight row %d has %s entries, expected %d", l,
        type(row) == "table" and tostring(#row) or "no", num_log), 2)
    end
    for e = 1, num_log do
      local v = row[e]
      if type(v) ~= "number" or v ~= v or v < 0 then
        error(string.format("eplb.rebalance: weight[%d][%d] must be a non-negative number, got %s", l, e, tostring(v)), 2)
      end
    end
  end
  if num_replicas < num_log then
    error(string.format("eplb.rebalance: num_replicas (%d) is less than the number of experts (%d)", num_replicas, num_log), 2)
  end
  if num_replicas % num_gpus ~= 0 then
    error(string.format("eplb.rebalance: num_replicas (%d) is not a multiple of num_gpus (%d)", num_replicas, num_gpus), 2)
  end
  if num_gpus % num_nodes ~= 0 then
    error(string.format("eplb.rebalance: num_gpus (%d) is not a multiple of num_nodes (%d)", num_gpus, num_nodes), 2)
  end
  if num_log % num_groups ~= 0 then
    error(string.format("eplb.rebalance: the %d experts do not split into %d groups", num_log, num_groups), 2)
  end
  -- hierarchical when groups divide evenly over nodes, else global (one group, one node)
  local g, n = num_groups, num_nodes
  if num_groups % num_nodes ~= 0 then g, n = 1, 1 end
  if num_log % n ~= 0 or num_replicas % n ~= 0 then
    error(string.format("eplb.rebalance: %d experts / %d replicas do not split over %d nodes", num_log, num_replicas, n), 2)
  end

  local phy2log, log2phy, logcnt = {}, {}, {}
  local layers = {}
  local maxcnt = 1
  for l, row in ipairs(weight) do
    local w = {}
    for e = 0, num_log - 1 do w[e] = f32(row[e + 1]) end
    local p2l, prank, cnt = rebalance_layer(w, num_log, num_replicas, g, n, num_gpus)
    layers[l] = { p2l, prank, cnt }
    for e = 0, num_log - 1 do if cnt[e] > maxcnt then maxcnt = cnt[e] end end
  end
  for l, t in ipairs(layers) do
    local p2l, prank, cnt = t[1], t[2], t[3]
    local prow, crow, lrow = {}, {}, {}
    for p = 0, num_replicas - 1 do prow[p + 1] = p2l[p] end
    for e = 0, num_log - 1 do
      crow[e + 1] = cnt[e]
      local r = {}
      for k = 1, maxcnt do r[k] = -1 end
      lrow[e + 1] = r
    end
    for p = 0, num_replicas - 1 do lrow[p2l[p] + 1][prank[p] + 1] = p end
    phy2log[l], log2phy[l], logcnt[l] = prow, lrow, crow
  end
  return phy2log, log2phy, logcnt
end

-- Per-rank loads of a placement: rank r holds slots [r*k, (r+1)*k) and each
-- replica of expert e takes load[e] / logcnt[e]. Returns loads (1-based by
-- rank) and max/mean. With phy2log = nil, expert e sits on rank
-- floor(e / (num_experts / num_ranks)) (no replication).
function M.rank_loads(load, num_ranks, phy2log_row, logcnt_row)
  local loads = {}
  for r = 1, num_ranks do loads[r] = 0 end
  if phy2log_row then
    local k = #phy2log_row / num_ranks
    for p, e in ipairs(phy2log_row) do
      local r = math.floor((p - 1) / k) + 1
      loads[r] = loads[r] + load[e + 1] / logcnt_row[e + 1]
    end
  else
    local k = #load / num_ranks
    for e, v in ipairs(load) do
      local r = math.floor((e - 1) / k) + 1
      loads[r] = loads[r] + v
    end
  end
  local sum, mx = 0, 0
  for _, v in ipairs(loads) do sum = sum + v; if v > mx then mx = v end end
  local mean = sum / num_ranks
  return loads, mean > 0 and mx / mean or 1
end

-- Physical slot serving the i-th (0-based) token routed to logical expert e
-- (0-based): the replicas take turns. Row arguments are one layer's rows.
function M.replica_for(log2phy_row, logcnt_row, e, i)
  local cnt = logcnt_row[e + 1]
  return log2phy_row[e + 1][(i % cnt) + 1]
end

-- Experts (0-based, slot order) held by each rank: ranks[r + 1] = { e, ... }.
function M.rank_experts(phy2log_row, num_ranks)
  local k = #phy2log_row / num_ranks
  if k ~= math.floor(k) then error("eplb.rank_experts: slots do not divide over ranks", 2) end
  local ranks = {}
  for r = 1, num_ranks do
    local t = {}
    for j = 1, k do t[j] = phy2log_row[(r - 1) * k + j] end
    ranks[r] = t
  end
  return ranks
end

-- Weight transfers to go from one placement to another (one layer): for
-- every slot whose new expert its rank does not hold already, a source rank
-- holding it in the old placement (the rank itself never; among holders the
-- one with the fewest transfers so far, then the lowest). Returns a list of
-- { slot =, expert =, to =, from = } (0-based), in slot order.
function M.moves(old_row, new_row, num_ranks)
  if #old_row ~= #new_row then error("eplb.moves: placements have different slot counts", 2) end
  local old = M.rank_experts(old_row, num_ranks)
  local holders, held = {}, {}
  for r = 1, num_ranks do
    held[r] = {}
    for _, e in ipairs(old[r]) do
      held[r][e] = true
      holders[e] = holders[e] or {}
      if holders[e][#holders[e]] ~= r - 1 then holders[e][#holders[e] + 1] = r - 1 end
    end
  end
  local k = #new_row / num_ranks
  local sent, out = {}, {}
  for r = 0, num_ranks - 1 do sent[r] = 0 end
  for p = 1, #new_row do
    local e, to = new_row[p], math.floor((p - 1) / k)
    if not held[to + 1][e] then
      local from
      for _, h in ipairs(holders[e] or {}) do
        if from == nil or sent[h] < sent[from] then from = h end
      end
      if from == nil then error("eplb.moves: expert " .. e .. " is held by no rank in the old placement", 2) end
      sent[from] = sent[from] + 1
      out[#out + 1] = { slot = p - 1, expert = e, to = to, from = from }
    end
  end
  return out
end

-- Per-layer expert load counter: counter:add(layer, ids [, n]) counts the
-- 0-based expert ids of a routed batch (a Lua array, or cdata int32_t* with
-- n entries); counter:loads() is the weight argument of rebalance;
-- counter:allreduce(comm) sums the counts over ranks (EP: each rank sees
-- its own tokens).
local Counter = {}
Counter.__index = Counter

function M.counter(num_layers, num_experts)
  local n = num_layers * num_experts
  return setmetatable({ layers = num_layers, experts = num_experts, c = ffi.new("int64_t[?]", n) }, Counter)
end

function Counter:add(layer, ids, n)
  if layer < 1 or layer > self.layers then error("eplb counter: layer " .. tostring(layer) .. " out of range", 2) end
  local base, E, c = (layer - 1) * self.experts, self.experts, self.c
  n = n or #ids
  local off = type(ids) == "table" and 1 or 0
  for i = 0, n - 1 do
    local e = ids[i + off]
    if e < 0 or e >= E then error("eplb counter: expert id " .. tostring(e) .. " out of range", 2) end
    c[base + e] = c[base + e] + 1
  end
  return self
end

function Counter:loads()
  local out = {}
  for l = 1, self.layers do
    local row = {}
    for e = 1, self.experts do row[e] = tonumber(self.c[(l - 1) * self.experts + e - 1]) end
    out[l] = row
  end
  return out
end

function Counter:reset()
  ffi.fill(self.c, ffi.sizeof("int64_t") * self.layers * self.experts)
  return self
end

-- Sum the counts over comm's ranks (tide.comm communicator). true or nil, err.
function Counter:allreduce(comm)
  local C = require("tide.ffi").C
  local F = require "tide.ffi"
  if C.tide_comm_allreduce(comm._p, self.c, self.c, self.layers * self.experts, C.TIDE_DTYPE_I64, C.TIDE_COMM_SUM, F.err) ~= 0 then
    return nil, F.errmsg()
  end
  return true
end

return M
