-- tide profile: per-op profile of decode steps of a recipe's model, and a
-- Chrome trace of them.
local M = {}

M.usage = [==[
usage: tide profile RECIPE.lua|MODEL [--steps N] [--batch B] [--prompt-len P] [--out DIR] [--top N] [--json]

  Loads the recipe's model (a recipe returns {model=, mla=, threads=, kv=}; a model path works too),
  prefills B sequences of P tokens (not profiled), then profiles N batched decode steps:
  time per op type and per layer with bytes, GB/s and GFLOP/s, and "lua/other" (the measured gaps
  between ops, which hold the profiler's small bookkeeping, estimated and shown), so the step's time
  is accounted in full; the same steps are also timed without the profiler. Writes DIR/trace.json (Chrome trace-event format:
  open in Perfetto or chrome://tracing), DIR/profile.json and DIR/profile.txt.
  A parallel recipe (parallel = {ranks = N, ...}, e.g. recipes/dsv3-tiny-ep4.lua) runs its
  multi-rank job (threads, or MPI under mpirun) with every rank profiled: one trace with one
  pid per rank, communication calls (comm.alltoallv, ...) included; N = tokens generated.

  --steps N        decode steps profiled (default 16)
  --batch B        sequences decoded together (default 1)
  --prompt-len P   prompt tokens per sequence (default 32)
  --out DIR        output folder (default profile-out)
  --top N          op rows printed (default all)
  --json           print profile.json instead of the table]==]

local spec = { steps = "number", batch = "number", prompt_len = "number", out = "string", top = "number", json = "flag" }

-- profile_decode(model, opts) -> report: prefill opts.batch sequences, then
-- profile opts.steps decode steps (each a "decode step" span).
function M.profile_decode(model, o)
  local P = require "tide.profile"
  local kv = model:kv_cache()
  local B, plen, steps = o.batch or 1, o.prompt_len or 32, o.steps or 16
  local seqs, toks = {}, {}
  for b = 1, B do
    seqs[b] = assert(kv:seq_new())
    local p = {}
    for i = 1, plen do p[i] = (i * 37 + b * 101) % (model.n_vocab - 3) + 3 end
    toks[b] = p
  end
  local ok, e = model:step(seqs, toks, "last")
  if not ok then for _, s in ipairs(seqs) do kv:seq_free(s) end return nil, e end
  local k = 0
  local function decode()
    k = k + 1
    local t = {}
    for b = 1, B do t[b] = { (k * 53 + b) % (model.n_vocab - 3) + 3 } end
    return model:step(seqs, t, "last", { reuse = true })
  end
  for _ = 1, 3 do decode() end -- warm-up: JIT, workspace
  -- the same steps without the profiler, to show what profiling costs (median step)
  local T = require "tide.tensor"
  local plain = {}
  for i = 1, steps do
    local t0 = T.now()
    assert(decode())
    plain[i] = T.now() - t0
  end
  collectgarbage()
  local rep = P.run(function(span, reset)
    for _ = 1, o.warmup or 10 do assert(decode()) end -- warm-up of the profiled path (JIT traces), then zero everything
    reset()
    for _ = 1, steps do assert(span("decode step", decode)) end
  end, { name = "decode" })
  for _, s in ipairs(seqs) do kv:seq_free(s) end
  rep.steps, rep.batch = steps, B
  local S = require "tide.ab.stats"
  rep.plain_step_s = S.median(plain)
  local prof = {}
  for _, e in ipairs(rep.span_ev) do if e[1] == "decode step" then prof[#prof + 1] = e[3] end end
  rep.step_s = S.median(prof)
  return rep
end

-- profile_parallel(recipe, opts) -> { ranks = { {rank, wall, ops, events}, ... } } or nil, err:
-- the recipe's multi-rank job (threads, or MPI under mpirun) with every rank profiled.
function M.profile_parallel(r, o)
  local R = require "tide.parallel.recipe"
  local comm = require "tide.comm"
  local p = r.parallel or {}
  local mpi = comm.in_mpi_job() and p.backend ~= "threads"
  local size = mpi and tonumber(os.getenv("OMPI_COMM_WORLD_SIZE") or os.getenv("PMI_SIZE") or "1") or (p.ranks or 1)
  local ok, err = R.check(r, size)
  if not ok then return nil, err end
  local prompts = {}
  for i, t in ipairs(r.prompts or { r.prompt or "Hello" }) do prompts[i] = { text = t } end
  local job = { recipe = r, prompts = prompts, max_tokens = o.steps or 16, ignore_eos = true }
  local file = package.searchpath("tide.ab.profile_rank", package.path)
  local res, le = comm.launch(file, { ranks = size, arg = R.ser(job), threads = not mpi or nil, timeout = p.timeout })
  if not res then return nil, le end
  if not res[1] or res[1] == "" then return false end
  return { ranks = R.deser(res[1]) }
end

function M.write_parallel(out, dir)
  local ev = {}
  for _, rk in ipairs(out.ranks) do ev[#ev + 1] = rk.events end
  local f, e = io.open(dir .. "/trace.json", "wb")
  if not f then return nil, e end
  f:write('{"traceEvents":[\n', table.concat(ev, ",\n"), '\n],"displayTimeUnit":"ms"}\n')
  f:close()
  return true
end

function M.parallel_text(out)
  local o = {}
  for _, rk in ipairs(out.ranks) do
    local opsum, comm, other = 0, 0, 0
    local top = {}
    for _, r in ipairs(rk.ops) do
      if r.name == "lua/other" then other = other + r.seconds
      elseif r.name:match("^comm%.") then comm = comm + r.seconds
      else opsum = opsum + r.seconds end
      if r.name:match("^comm%.") then top[#top + 1] = string.format("%s %d calls %.2f ms", r.name, r.calls, r.seconds * 1e3) end
    end
    o[#o + 1] = string.format("rank %d: wall %.2f ms = kernels %.2f + comm %.2f + lua/other %.2f ms; %s", rk.rank, rk.wall * 1e3,
      opsum * 1e3, comm * 1e3, other * 1e3, table.concat(top, ", "))
  end
  return table.concat(o, "\n")
end

function M.main(args)
  local A = require "tide.cmd.args"
  local o, rest = A.parse(args, spec)
  if not o then io.stderr:write("tide profile: ", rest, "\n") return 2 end
  if #rest ~= 1 then io.stderr:write("tide profile: need one RECIPE or MODEL (see --help)\n") return 2 end
  local r
  if rest[1]:match("%.lua$") then
    local e
    r, e = require("tide.ab.runner").load_recipe(rest[1])
    if not r then io.stderr:write("tide profile: ", e, "\n") return 1 end
  else
    r = { model = rest[1] }
  end
  local dir = o.out or "profile-out"
  if r.parallel and (r.parallel.ranks or 1) > 1 then
    local out, pe = M.profile_parallel(r, o)
    if out == nil then io.stderr:write("tide profile: ", tostring(pe), "\n") return 1 end
    if out == false then return 0 end -- MPI rank > 0
    os.execute("mkdir -p '" .. dir:gsub("'", "") .. "'")
    local ok, we = M.write_parallel(out, dir)
    if not ok then io.stderr:write("tide profile: ", tostring(we), "\n") return 1 end
    print(M.parallel_text(out))
    print("trace (one pid per rank): " .. dir .. "/trace.json")
    return 0
  end
  local model, e = require("tide").load(r.model, { mla = r.mla, threads = r.threads, kv = r.kv })
  if not model then io.stderr:write("tide profile: ", tostring(e), "\n") return 1 end
  local rep, pe = M.profile_decode(model, o)
  if not rep then io.stderr:write("tide profile: ", tostring(pe), "\n") return 1 end
  os.execute("mkdir -p '" .. dir:gsub("'", "") .. "'")
  local ok, we = rep:write_trace(dir .. "/trace.json")
  if not ok then io.stderr:write("tide profile: ", tostring(we), "\n") return 1 end
  local head = string.format("%s: %d decode steps, batch %d: median %.3f ms/step profiled, %.3f ms/step unprofiled (same run)",
    r.model, rep.steps, rep.batch, rep.step_s * 1e3, rep.plain_step_s * 1e3)
  -- what profiling costs in all (clock reads, cost functions, events, cache
  -- effects), from the two medians; it falls mostly in lua/other below
  local cost = rep.step_s - rep.plain_step_s
  head = head .. string.format("\nprofiling adds %.3f ms/step (%.1f%% of a profiled step; the difference of the two medians, mostly inside lua/other)",
    cost * 1e3, 100 * cost / math.max(rep.step_s, 1e-12))
  local text = head .. "\n" .. rep:text(o.top)
  local f = io.open(dir .. "/profile.txt", "wb") if f then f:write(text, "\n") f:close() end
  f = io.open(dir .. "/profile.json", "wb") if f then f:write(rep:json(), "\n") f:close() end
  if o.json then print(rep:json()) else print(text) print("trace: " .. dir .. "/trace.json") end
  return 0
end

return M
