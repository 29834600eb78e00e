-- tide.parallel.mesh: where a rank sits in a parallel layout, and the
-- sub-communicators of each axis. The ground the TP/EP/DP/PP/PD strategies
-- stand on; it knows nothing about models.
--
--   local mesh = require "tide.parallel.mesh"
--   local m = assert(mesh.new(world, { pp = 2, dp = 1, tp = 2 }))
--   m.coord.tp, m.tp:size()       -- this rank's TP index, its TP group
--   m.ep                          -- every rank of this PP stage (EP spans DP x TP)
--
-- Ranks are laid out PP-major, then DP, then TP (TP neighbours are adjacent
-- ranks, so on real nodes a TP group stays inside a node):
--   rank = (pp_i * dp + dp_i) * tp + tp_i
--
-- Roles split the world into disjoint parts first (prefill vs decode ranks):
--   local r = assert(mesh.roles(world, { prefill = 1, decode = 3 }))
--   r.role, r.comm                -- "prefill"/"decode", the role's communicator
-- Roles are taken in the order given (a list of {name, count} pairs, or a
-- table whose keys are sorted by name).
local M = {}

local AXES = { "pp", "dp", "tp" }

local function posint(v) return type(v) == "number" and v >= 1 and v == math.floor(v) end

-- Coordinates of `rank` in a layout of sizes { pp, dp, tp }.
function M.coords(rank, sizes)
  local tp, dp = sizes.tp, sizes.dp
  return { tp = rank % tp, dp = math.floor(rank / tp) % dp, pp = math.floor(rank / (tp * dp)) }
end

-- Check a layout against a world size: nil, message when it does not fit.
function M.check(size, dims)
  dims = dims or {}
  local s = {}
  for _, a in ipairs(AXES) do
    local v = dims[a] or 1
    if not posint(v) then return nil, string.format("parallel layout: %s must be a positive integer, got %s", a, tostring(v)) end
    s[a] = v
  end
  for k in pairs(dims) do
    if k ~= "pp" and k ~= "dp" and k ~= "tp" then return nil, "parallel layout: unknown axis '" .. tostring(k) .. "' (pp, dp, tp)" end
  end
  local prod = s.pp * s.dp * s.tp
  if prod ~= size then
    return nil, string.format("parallel layout: pp %d x dp %d x tp %d = %d ranks, but the job has %d", s.pp, s.dp, s.tp, prod, size)
  end
  return s
end

-- Check an expert-parallel plan: num_experts routed experts over ep ranks
-- with `redundant` extra replicas (EPLB). nil, message when it cannot work.
function M.check_moe(num_experts, ep, redundant)
  redundant = redundant or 0
  if not posint(num_experts) then return nil, "expert parallelism: the model has no routed experts" end
  if not posint(ep) then return nil, "expert parallelism: EP size must be a positive integer" end
  if type(redundant) ~= "number" or redundant < 0 or redundant ~= math.floor(redundant) then
    return nil, "expert parallelism: redundant experts must be a non-negative integer"
  end
  if ep > num_experts + redundant then
    return nil, string.format("expert parallelism: %d ranks but only %d expert slots (%d experts + %d redundant); use at most %d ranks",
      ep, num_experts + redundant, num_experts, redundant, num_experts + redundant)
  end
  if (num_experts + redundant) % ep ~= 0 then
    return nil, string.format("expert parallelism: %d expert slots (%d experts + %d redundant) do not divide over %d ranks",
      num_experts + redundant, num_experts, redundant, ep)
  end
  return { slots = num_experts + redundant, per_rank = (num_experts + redundant) / ep }
end

local Mesh = {}
Mesh.__index = Mesh

-- Split comm into the layout's groups (a collective: every rank calls it).
-- Returns a mesh { comm, sizes, coord, tp, dp, pp, ep } or nil, message.
function M.new(comm, dims)
  local sizes, err = M.check(comm:size(), dims)
  if not sizes then return nil, err end
  local r = comm:rank()
  local c = M.coords(r, sizes)
  local m = setmetatable({ comm = comm, sizes = sizes, coord = c, rank = r }, Mesh)
  -- tp group: same (pp, dp); dp group: same (pp, tp); pp group: same (dp, tp); ep: same pp
  local splits = {
    { "tp", c.pp * sizes.dp + c.dp, c.tp },
    { "dp", c.pp * sizes.tp + c.tp, c.dp },
    { "pp", c.dp * sizes.tp + c.tp, c.pp },
    { "ep", c.pp, c.dp * sizes.tp + c.tp },
  }
  for _, s in ipairs(splits) do
    local sub, e = comm:split(s[2], s[3])
    if not sub then m:free() return nil, e end
    m[s[1]] = sub
  end
  return m
end

function Mesh:free()
  for _, a in ipairs({ "tp", "dp", "pp", "ep" }) do
    if self[a] then self[a]:free() self[a] = nil end
  end
end

-- Split comm into roles. spec: { {"prefill", 1}, {"decode", 3} } or
-- { prefill = 1, decode = 3 } (then in name order). Returns
-- { role =, index = (rank within the role), comm =, sizes = {name = n} }.
function M.roles(comm, spec)
  local list = {}
  if spec[1] then
    for _, p in ipairs(spec) do list[#list + 1] = { p[1], p[2] } end
  else
    for k, v in pairs(spec) do list[#list + 1] = { k, v } end
    table.sort(list, function(a, b) return a[1] < b[1] end)
  end
  local total, sizes = 0, {}
  for _, p in ipairs(list) do
    if type(p[1]) ~= "string" or not posint(p[2]) then
      return nil, "roles: each role needs a name and a positive rank count"
    end
    sizes[p[1]] = p[2]
    total = total + p[2]
  end
  if total ~= comm:size() then
    return nil, string.format("roles: %d ranks requested, but the job has %d", total, comm:size())
  end
  local r, acc = comm:rank(), 0
  for i, p in ipairs(list) do
    if r < acc + p[2] then
      local sub, err = comm:split(i - 1, r)
      if not sub then return nil, err end
      return { role = p[1], index = r - acc, comm = sub, sizes = sizes, first = acc }
    end
    acc = acc + p[2]
  end
end

return M
