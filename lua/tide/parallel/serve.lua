-- tide.parallel.serve: `tide serve --recipe RECIPE` on many ranks. Rank 0
-- serves HTTP (tide.serve, unchanged) and runs the scheduler; every rank
-- steps the model together with it:
--
--   mpirun -np 4 tide serve --recipe recipes/dsv3-tiny-ep4.lua --port 8080
--   tide serve --recipe recipes/dsv3-tiny-ep4.lua      (parallel.ranks threads)
--
-- Two ways to keep the ranks in step, chosen from the recipe:
--   "lead"   (parallel.ep): only rank 0 holds sequences (attention and KV
--            cache); before each forward it broadcasts "step" and the other
--            ranks make one pass through the MoE layers (ep.Plan:idle_pass),
--            serving their expert slots to rank 0's tokens.
--   "mirror" (parallel.tp / parallel.pp): every rank runs the same engine.
--            Before each engine step rank 0 broadcasts what changed since the
--            last one (requests added, with their options; requests
--            cancelled), the other ranks apply it and step too: the same
--            scheduling, the same batches, and (TP/PP give every rank the
--            same logits) the same sampled tokens.
-- On shutdown (SIGINT/SIGTERM to rank 0) rank 0 finishes as tide serve does,
-- then broadcasts "stop" and every rank returns.
local comm_mod = require "tide.comm"
local R = require "tide.parallel.recipe"

local M = {}

-- The mode for a recipe: "lead", "mirror", or nil, message.
function M.mode(r)
  local p = r.parallel or {}
  if p.pd then return nil, "tide serve --recipe: PD recipes (parallel.pd) are not supported yet" end
  if p.ep then return "lead" end
  return "mirror"
end

-- The options of tide.serve.new from tide serve's parsed command line.
local function server_opts(o, r)
  local eng = type(r.engine) == "table" and r.engine or {}
  local name = o.name or (r.model and r.model:match("([^/]+)/*$")) or "tide"
  return {
    host = o.host, port = o.port, api_key = o.api_key or os.getenv("TIDE_API_KEY"), max_body = o.max_body,
    timeout_ms = o.timeout_ms, max_conns = o.max_conns, grace_s = o.grace_s, name = name,
    engine = {
      max_batch_tokens = o.max_batch_tokens or eng.max_batch_tokens, max_seqs = o.max_seqs or eng.max_seqs,
      chunk = o.chunk or eng.chunk, policy = o.policy or eng.policy, preempt = eng.preempt,
      prefix_cache = not o.no_prefix_cache and eng.prefix_cache ~= false,
    },
  }
end

-- The fields of an engine request another rank can rebuild (no callbacks).
local function request_fields(r)
  local t = {}
  for k, v in pairs(r) do
    local ty = type(v)
    if ty == "number" or ty == "string" or ty == "boolean" then t[k] = v
    elseif ty == "table" and k ~= "on_token" and k ~= "on_done" then
      local c = {}
      for i, x in pairs(v) do if type(x) ~= "function" and type(x) ~= "table" then c[i] = x end end
      t[k] = c
    end
  end
  return t
end

-- Rank 0 in mirror mode: log adds and cancels, send them before each step.
local function lead_engine(eng, c)
  local log = {}
  local add, cancel, step = eng.add, eng.cancel, eng.step
  eng.add = function(self, r)
    log[#log + 1] = { "add", request_fields(r) }
    return add(self, r)
  end
  eng.cancel = function(self, id)
    local req = type(id) == "table" and id or self.by_id[id]
    if req and req.id then log[#log + 1] = { "cancel", req.id } end
    return cancel(self, id)
  end
  eng.step = function(self)
    local msg = R.ser({ op = "step", log = log })
    log = {}
    assert(c:bcast_string(msg, 0))
    return step(self)
  end
end

-- Rank 0 in lead mode: one "step" message before each forward.
local function lead_model(model, c)
  local arch = model.arch
  local fwd = arch.forward_hidden
  local msg = R.ser({ op = "step" })
  arch.forward_hidden = function(self, ctx, ids)
    assert(c:bcast_string(msg, 0))
    return fwd(self, ctx, ids)
  end
end

-- The other ranks: follow rank 0's messages until "stop".
local function follow(c, mode, model, plan, eng)
  local steps = 0
  while true do
    local s = assert(c:bcast_string("", 0))
    local m = R.deser(s)
    if m.op == "stop" then break end
    if mode == "lead" then
      plan:idle_pass()
    else
      for _, e in ipairs(m.log or {}) do
        if e[1] == "add" then eng:add(e[2]) else eng:cancel(e[2]) end
      end
      eng:step()
    end
    steps = steps + 1
  end
  return steps
end

-- One rank of the job (arg: serialized { recipe, opts }).
function M.rank_main(c, arg)
  local job = R.deser(arg)
  local r, o = job.recipe, job.opts
  local mode = assert(M.mode(r))
  local model, plan = R.setup_rank(r, c, { threads = o.threads })
  local me = c:rank()
  local sopts = server_opts(o, r)
  if me ~= 0 then
    local eng
    if mode == "mirror" then eng = assert(require("tide.engine").new(model, sopts.engine)) end
    follow(c, mode, model, plan, eng)
    if plan then plan:remove() end
    return ""
  end
  local S = require "tide.serve"
  local srv, se = S.new(model, sopts)
  if not srv then
    assert(c:bcast_string(R.ser({ op = "stop" }), 0))
    error("tide serve: " .. tostring(se), 0)
  end
  if mode == "mirror" then lead_engine(srv.engine, c) else lead_model(model, c) end
  io.stdout:write(string.format("tide serve: %s on http://%s:%d (%d ranks, %s backend, %s mode, rank 0 pid %s)\n",
    tostring(model), o.host or "127.0.0.1", srv.port, c:size(), c:backend(), mode, M.pid() or "?"))
  io.stdout:flush()
  local ok, rc = pcall(srv.run, srv)
  assert(c:bcast_string(R.ser({ op = "stop" }), 0))
  if plan then plan:remove() end
  io.stdout:write("tide serve: stopped\n")
  io.stdout:flush()
  if not ok then error(rc, 0) end
  return tostring(rc)
end

function M.pid()
  local f = io.open("/proc/self/stat")
  if not f then return nil end
  local s = f:read("*l")
  f:close()
  return s and s:match("^(%d+)")
end

-- `tide serve --recipe PATH [options]` (o: tide serve's parsed options).
function M.main(o)
  local function fail(msg) io.stderr:write("tide serve: ", msg, "\n") return 1 end
  local okr, r = pcall(dofile, o.recipe)
  if not okr then return fail("recipe: " .. tostring(r)) end
  if type(r) ~= "table" or type(r.model) ~= "string" then return fail("recipe " .. o.recipe .. " must return a table with a 'model' path") end
  if o.model then r.model = o.model end
  if o.mla then r.mla = o.mla end
  if o.kv_blocks then r.kv = r.kv or {} r.kv.blocks = o.kv_blocks end
  local p = r.parallel or {}
  local mode, merr = M.mode(r)
  if not mode then return fail(merr) end
  local mpi = comm_mod.in_mpi_job() and p.backend ~= "threads"
  local size = mpi and tonumber(os.getenv("OMPI_COMM_WORLD_SIZE") or os.getenv("PMI_SIZE") or "1") or (p.ranks or 1)
  local ok, err = R.check(r, size)
  if not ok then return fail(err) end
  local job = { recipe = r, opts = {} }
  for k, v in pairs(o) do if k ~= "recipe" then job.opts[k] = v end end
  local res, lerr = comm_mod.launch(function(c, a) return require("tide.parallel.serve").rank_main(c, a) end,
    { ranks = size, arg = R.ser(job), threads = not mpi or nil })
  if not res then return fail(lerr) end
  return 0
end

return M
