-- One rank of a parallel A/B arm (tide.ab.parallel launches this file with
-- tide.comm.launch; each rank runs it in its own Lua state). Loads the
-- model, applies the plan (EP with DP-attention, or TP), serves a warm-up
-- round, then the timed round; returns (rank 0) every rank's timings,
-- communicator bytes, KV bytes and expert/slot loads, serialized.
return function(c, arg)
  local R = require "tide.parallel.recipe"
  local T = require "tide.tensor"
  local job = R.deser(arg)
  local r = job.recipe
  local p = r.parallel
  local me, n = c:rank(), c:size()
  local model = assert(require("tide").load(r.model, { mla = r.mla, kv = r.kv, threads = r.threads, max_ctx = r.max_ctx }))
  local plan
  if p.ep then
    local ep = require "tide.parallel.ep"
    local e = p.eplb or {}
    local loads = e.loads
    if type(loads) == "string" then
      -- per-layer rows of a JSON file's expert_loads_val (as tide.parallel.recipe reads them)
      local f = assert(io.open(loads, "rb"))
      local j = assert(require("cjson.safe").decode(f:read("*a")))
      f:close()
      local rows = assert(j.expert_loads_val or j.loads, loads .. " has no expert_loads_val")
      loads = {}
      for _, l in ipairs(ep.moe_layers(model)) do loads[#loads + 1] = assert(rows[l.index], "no loads row for a layer") end
    end
    plan = assert(ep.apply(model, c, { redundant = e.redundant or 0, loads = loads, wire = p.wire, nodes = e.nodes,
      every = e.every, overlap = p.overlap }))
  else
    assert(require("tide.parallel.tp").apply(model, c))
  end
  local mine = {}
  for i = 1, #job.requests do
    if not p.ep or (i - 1) % n == me then mine[#mine + 1] = i end
  end
  local function serve(i, max_tokens, rec)
    local q = job.requests[i]
    local opts = { max_tokens = max_tokens, ignore_eos = true }
    for k, v in pairs(q.sampling or {}) do opts[k] = v end
    if rec then opts.on_token = function() rec.times[#rec.times + 1] = T.now() end end
    local out, e = model:generate(q.ids, opts)
    if not out and rec then rec.error = tostring(e) end
  end
  -- warm-up round: every rank serves its first request briefly, then all drain
  if mine[1] then serve(mine[1], job.warmup_tokens or 4) end
  if plan then plan:drain() plan:expert_loads(true) plan:slot_loads_table(true) end
  assert(c:barrier())
  c:stats_reset()
  local t0 = T.now()
  local reqs, t1 = {}, t0
  for _, i in ipairs(mine) do
    local rec = { t_add = T.now(), times = {} }
    reqs[i] = rec
    serve(i, job.requests[i].max_tokens, rec)
    t1 = T.now()
  end
  if plan then plan:drain() end
  local comm = c:stats()
  local kv = model:kv_cache()
  local mystats = { rank = me, t0 = t0, t1 = t1, reqs = reqs, comm = comm, kv_bytes = kv:nbytes(),
    kv_bytes_per_token = kv:bytes_per_token() }
  if plan then
    mystats.expert_loads = plan:expert_loads() -- collective: every rank calls it
    mystats.slot_loads = plan:slot_loads_table()
  end
  local all = assert(c:allgather_string(R.ser(mystats)))
  if me ~= 0 then return "" end
  local out = {}
  for k = 1, n do out[k] = R.deser(all[k]) end
  return R.ser(out)
end
