-- tide.parallel.recipe: a recipe with a parallel plan, run on many ranks.
--
--   -- recipes/dsv3-tiny-ep4.lua
--   return require("tide.parallel.recipe").new {
--     model = "models/dsv3-tiny", mla = "absorb",
--     parallel = { ranks = 4, ep = 4, dp_attention = true,
--                  eplb = { redundant = 4, loads = "tests/fixtures/dsv3-tiny.json" },
--                  wire = "f32", backend = nil },   -- "threads" | "mpi" | nil (mpi under mpirun)
--     prompt = "...", max_tokens = 24, temperature = 0,
--   }
--
-- `tide run RECIPE` (or `mpirun -np N tide run RECIPE`) runs it; `tide
-- generate --recipe RECIPE ...` takes the model and parallel plan from it.
-- Under mpirun each process is a rank; otherwise parallel.ranks threads are
-- (parallel.backend = "threads" forces threads). Prompts are owned by DP
-- ranks round-robin; every rank serves its expert slots until all are done
-- (ep.Plan:drain); rank 0 gathers and prints the results.
local comm_mod = require "tide.comm"

local M = {}

local Recipe = {}
Recipe.__index = Recipe
M.Recipe = Recipe

-- ---- a tiny serializer for the job description and the results ---------------------

local function ser(v)
  local t = type(v)
  if t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then return "0" end
    return string.format("%.17g", v)
  elseif t == "string" then return string.format("%q", v)
  elseif t == "boolean" or t == "nil" then return tostring(v)
  elseif t == "table" then
    local parts = {}
    for k, x in pairs(v) do
      if type(x) ~= "function" then
        local kk = type(k) == "number" and "[" .. ser(k) .. "]" or "[" .. string.format("%q", tostring(k)) .. "]"
        parts[#parts + 1] = kk .. "=" .. ser(x)
      end
    end
    return "{" .. table.concat(parts, ",") .. "}"
  end
  return "nil"
end
M.ser = ser

local function deser(s)
  local f, err = loadstring("return " .. s, "=job")
  if not f then error("recipe: bad job description: " .. tostring(err), 0) end
  setfenv(f, {})
  return f()
end
M.deser = deser

-- ---- checks ---------------------------------------------------------------------------

local function read_json(path)
  local cjson = require "cjson.safe"
  local f, e = io.open(path, "rb")
  if not f then return nil, e end
  local s = f:read("*a")
  f:close()
  local v, je = cjson.decode(s)
  if v == nil then return nil, path .. ": " .. tostring(je) end
  return v
end

-- The model's MoE shape from its config.json (nil when it has none).
local function moe_config(model_path)
  local cfg = read_json(model_path .. "/config.json")
  if not cfg or not cfg.n_routed_experts or cfg.n_routed_experts == 0 then return nil end
  return cfg
end

-- Validate the parallel plan against the job size before anything starts.
-- Returns true or nil, message.
function M.check(r, size)
  local p = r.parallel or {}
  size = size or p.ranks or 1
  if p.ranks and p.ranks ~= size then
    return nil, string.format("recipe: parallel.ranks is %d but the job has %d ranks", p.ranks, size)
  end
  if p.pd then
    local np, nd = p.pd.prefill or 1, p.pd.decode or (size - (p.pd.prefill or 1))
    if np < 1 or nd < 1 or np + nd ~= size then
      return nil, string.format("recipe: pd needs prefill %d + decode %d = %d ranks, but the job has %d", np, nd, np + nd, size)
    end
    if p.ep or (p.tp or 1) > 1 or (p.pp or 1) > 1 then return nil, "recipe: pd with ep/tp/pp is not supported yet" end
  end
  local ep = p.ep
  if ep then
    if ep ~= size then return nil, string.format("recipe: parallel.ep %d must equal the number of ranks %d (DP-attention + EP)", ep, size) end
    local cfg = r.model and moe_config(r.model)
    if r.model and not cfg then return nil, "recipe: parallel.ep set but " .. r.model .. " has no routed experts" end
    if cfg then
      local red = (p.eplb and p.eplb.redundant) or 0
      local ok, err = require("tide.parallel.mesh").check_moe(cfg.n_routed_experts, ep, red)
      if not ok then return nil, "recipe: " .. err end
    end
  end
  local tp, pp = p.tp or 1, p.pp or 1
  if tp > 1 or pp > 1 then
    if tp > 1 and pp > 1 then return nil, "recipe: tp and pp together are not supported yet" end
    if p.ep then return nil, "recipe: ep with tp or pp is not supported yet" end
    if tp * pp ~= size then return nil, string.format("recipe: tp %d x pp %d does not match %d ranks", tp, pp, size) end
  end
  return true
end

-- ---- one rank --------------------------------------------------------------------------

-- Per-MoE-layer loads from a JSON file with `expert_loads_val` (rows for
-- every layer) or a table of rows.
local function eplb_loads(spec, model)
  local src = spec.loads
  if src == nil then return nil end
  local rows = src
  if type(src) == "string" then
    local j, e = read_json(src)
    if not j then error("recipe: eplb.loads: " .. tostring(e), 0) end
    rows = j.expert_loads_val or j.loads
    if not rows then error("recipe: eplb.loads: " .. src .. " has no expert_loads_val", 0) end
  end
  local out = {}
  for _, l in ipairs(require("tide.parallel.ep").moe_layers(model)) do
    out[#out + 1] = rows[l.index] or error("recipe: eplb.loads has no row for layer " .. l.index, 0)
  end
  return out
end

-- Load the recipe's model on rank c and apply its TP / PP / EP plan (every
-- rank of c calls it). opts.threads: compute threads. Returns the model and
-- the EP plan (nil without EP).
function M.setup_rank(r, c, opts)
  local p = r.parallel or {}
  local tide = require "tide"
  local model = assert(tide.load(r.model, { mla = r.mla, kv = r.kv, threads = (opts and opts.threads) or r.threads }))
  if (p.tp or 1) > 1 then assert(require("tide.parallel.tp").apply(model, c)) end
  if (p.pp or 1) > 1 then assert(require("tide.parallel.pp").apply(model, c, { micro_batches = p.micro_batches })) end
  local plan
  if p.ep then
    local ep = require "tide.parallel.ep"
    local e = p.eplb or {}
    plan = assert(ep.apply(model, c, { redundant = e.redundant or 0, loads = eplb_loads(e, model), wire = p.wire,
      nodes = e.nodes, every = e.every, overlap = p.overlap }))
  end
  return model, plan
end

-- Runs the job on rank c (called by tide.comm.launch through rank_job.lua).
-- Returns, on rank 0, the serialized results { [i] = {prompt_ids, ids, text,
-- finish_reason, timings} } in prompt order plus stats.
function M.rank_job(c, arg)
  local job = deser(arg)
  local r = job.recipe
  local p = r.parallel or {}
  local me, n = c:rank(), c:size()
  local ok, err = M.check(r, n)
  if not ok then error(err, 0) end
  local ctx = { rank = me, ranks = n, comm = c }
  local model, plan = M.setup_rank(r, c, job)
  ctx.plan = plan
  local pdp
  if p.pd then
    pdp = assert(require("tide.parallel.pd").apply(model, c, p.pd))
    ctx.pd = pdp
  end
  -- DP: prompt i belongs to rank (i - 1) % n (all ranks when there is no DP);
  -- PD: prefilled by a prefill rank, decoded by a decode rank
  local dp = p.ep ~= nil or pdp ~= nil
  local results = {}
  local tok = model.tokenizer
  for i, pr in ipairs(job.prompts) do
    local ids = pr.ids or tok:encode(pr.text, { add_special = true })
    if pdp and pdp.role == "prefill" and pdp:prefill_rank(i) == pdp.index then
      pdp:prefill(ids, pdp:decode_rank(i), 1000 + i)
    end
    local mine
    if pdp then mine = pdp.role == "decode" and pdp:decode_rank(i) == me
    else mine = not dp or (i - 1) % n == me end
    if mine then
      if pdp then pdp:expect(pdp:prefill_rank(i), 1000 + i) end
      local gopts = { max_tokens = job.max_tokens or r.max_tokens or 24, temperature = job.temperature or r.temperature or 0,
        seed = job.seed or 0, ignore_eos = job.ignore_eos or r.ignore_eos, top_k = job.top_k, top_p = job.top_p,
        min_p = job.min_p, repetition_penalty = job.repetition_penalty, stop = job.stop }
      local new, info = model:generate(ids, gopts)
      if not new then error("generate: " .. tostring(info), 0) end
      local text = info.stop_text or (tok and tok:decode(new)) or ""
      if r.die_rank == me then -- fault test: this rank dies mid-run
        local pid = io.open("/proc/self/stat"):read("*l"):match("^(%d+)")
        os.execute("kill -9 " .. pid)
      end
      results[i] = { prompt_ids = ids, ids = new, text = text, finish_reason = info.finish_reason, timings = info.timings,
        rank = me }
    end
  end
  local stats = {}
  if pdp then
    assert(pdp:finish())
    stats.pd = pdp.stats
    stats.role = pdp.role
  end
  if plan then
    plan:drain()
    stats.expert_loads = plan:expert_loads()
    stats.bytes = plan.bytes
    stats.rebalances, stats.moved, stats.moved_bytes = plan.rebalances, plan.moved, plan.moved_bytes
    stats.memory = plan:memory()
  end
  stats.comm = c:stats()
  -- gather to rank 0
  local all = assert(c:allgather_string(ser({ results = results, stats = stats })))
  if me ~= 0 then return "" end
  local merged, per_rank = {}, {}
  for rk = 1, n do
    local t = deser(all[rk])
    for i, v in pairs(t.results) do if not merged[i] or dp then merged[i] = v end end
    per_rank[rk] = t.stats
  end
  return ser({ results = merged, stats = per_rank })
end

-- ---- launching ------------------------------------------------------------------------

local function rank_file()
  local f = package.searchpath("tide.parallel.rank_job", package.path)
  if not f then error("recipe: tide.parallel.rank_job not found on package.path", 0) end
  return f
end

-- Run a job: { recipe = r, prompts = { {text=} | {ids=} }, max_tokens, ... }.
-- Returns (on rank 0, or in-process) { results = {...}, stats = {...} }, or
-- false on other MPI ranks, or nil, message.
function M.launch(job, opts)
  opts = opts or {}
  local r = job.recipe
  local p = r.parallel or {}
  local mpi = comm_mod.in_mpi_job() and p.backend ~= "threads"
  local size = mpi and tonumber(os.getenv("OMPI_COMM_WORLD_SIZE") or os.getenv("PMI_SIZE") or "1") or (p.ranks or 1)
  local ok, err = M.check(r, size)
  if not ok then return nil, err end
  local res, lerr = comm_mod.launch(rank_file(), { ranks = size, arg = ser(job), threads = not mpi or nil,
    timeout = opts.timeout or p.timeout })
  if not res then return nil, lerr end
  if not res[1] or res[1] == "" then return false end
  return deser(res[1])
end

-- Recipe objects: fields as given; :run(args) generates the recipe's
-- prompt(s) and prints (rank 0) one line per prompt (or JSON with --json).
function M.new(spec)
  if type(spec) ~= "table" then error("recipe.new: expected a table", 2) end
  return setmetatable(spec, Recipe)
end

function Recipe:run(args)
  args = args or {}
  local json = false
  for _, a in ipairs(args) do if a == "--json" then json = true end end
  local prompts = {}
  if self.prompts then
    for i, t in ipairs(self.prompts) do prompts[i] = { text = t } end
  else
    prompts[1] = { text = self.prompt or "Hello" }
  end
  local out, err = M.launch({ recipe = self, prompts = prompts })
  if out == nil then
    io.stderr:write("tide: ", tostring(err), "\n")
    return 1
  end
  if out == false then return 0 end
  local A = require "tide.cmd.args"
  for i = 1, #prompts do
    local v = out.results[i]
    if json then print(A.json({ prompt = prompts[i].text, ids = v.ids, text = v.text, rank = v.rank }))
    else print(prompts[i].text .. v.text) end
  end
  for rk, st in ipairs(out.stats) do
    if st.pd then
      local q = st.pd
      io.stderr:write(string.format("[rank %d (%s): %d requests, %d KV bytes (%.0f per request), %s %.4fs]\n", rk - 1,
        st.role, q.requests, q.kv_bytes, q.requests > 0 and q.kv_bytes / q.requests or 0,
        st.role == "prefill" and "send" or "receive", st.role == "prefill" and q.send_s or q.recv_s))
    end
  end
  for rk, st in ipairs(out.stats) do
    local m = st.memory
    if m then
      io.stderr:write(string.format("[rank %d: expert weights %.0f KiB in its slots of %.0f KiB for all experts; "
        .. "checkpoint resident %s of %.0f KiB mapped; RSS %s]\n", rk - 1, m.slot_bytes / 1024, m.all_bytes / 1024,
        m.resident and string.format("%.0f KiB", m.resident / 1024) or "?", (m.file_bytes or 0) / 1024,
        m.rss and string.format("%.1f MiB", m.rss / 1048576) or "?"))
    end
  end
  local st = out.stats[1]
  if st and st.bytes then
    io.stderr:write(string.format("[%d ranks: rank 0 sent %d dispatch bytes, %d combine bytes]\n", #out.stats,
      st.bytes.dispatch, st.bytes.combine))
  end
  return 0
end

-- `tide generate --recipe R` (o: the parsed options of tide generate).
function M.generate_cli(o)
  local function fail(msg) io.stderr:write("tide generate: ", msg, "\n") return 1 end
  local okr, r = pcall(dofile, o.recipe)
  if not okr then return fail("recipe: " .. tostring(r)) end
  if type(r) ~= "table" then return fail("recipe " .. o.recipe .. " does not return a table") end
  r = M.new(r)
  if o.model then r.model = o.model end
  if o.mla then r.mla = o.mla end
  if o.chat then return fail("--chat is not supported with --recipe") end
  local out, err = M.launch({ recipe = r, prompts = { { text = o.prompt } }, max_tokens = o.max_tokens or 64,
    temperature = o.temp or 0, top_k = o.top_k, top_p = o.top_p, min_p = o.min_p, repetition_penalty = o.repeat_penalty,
    seed = o.seed or 0, stop = o.stop, ignore_eos = o.ignore_eos, threads = o.threads })
  if out == nil then return fail(err) end
  if out == false then return 0 end
  local v = out.results[1]
  local text = v.text
  if o.json then
    local A = require "tide.cmd.args"
    local t = v.timings
    local new = v.ids
    print(A.json({ prompt_ids = v.prompt_ids, ids = new, text = text, finish_reason = v.finish_reason,
      timings = { prefill_s = t.prefill_s, decode_s = t.decode_s, prompt_tokens = t.prompt_tokens,
        generated_tokens = t.generated_tokens,
        decode_tok_s = (t.decode_s > 0 and #new > 1) and (#new - 1) / t.decode_s or nil } }))
  else
    io.write(text, "\n")
  end
  return 0
end

return M
