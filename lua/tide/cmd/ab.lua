-- tide ab: an A/B (or A/B/C ...) trial of recipes on the serving engine.
local M = {}

M.usage = [==[
usage: tide ab TRIAL.lua | A.lua B.lua [C.lua ...] [--workload W] [--repeats N] [--warmup N] [--out DIR]
               [--quality-base PATH [--quality-file TEXT] [--quality-tokens N]] [--seed N] [--json]

  A TRIAL file returns { arms = {recipe, ...}, workload =, repeats =, quality =, out = }
  (e.g. recipes/trials/experts-q4-vs-q8.lua); flags override its fields.
  Runs every arm (a recipe file returning {model=, mla=, threads=, kv=, engine=, ...}) on the
  same workload, interleaved A B A B ... after a warm-up, and reports per arm and relative to A:
  req/s, output tok/s, TTFT and ITL p50/p90/p99, peak RSS, KV bytes, bytes communicated, each
  difference with a 95% CI over repeats and a plain verdict ("B is 18.0% faster (95% CI ...)" /
  "no difference detected"). An arm with parallel = {ranks = N, ep = N, eplb = ...} (or tp = N)
  runs on N rank threads: its all-to-all bytes and per-slot expert loads are reported
  (e.g. recipes/trials/ep4-eplb-vs-none.lua).

  --workload W       a name under recipes/workloads/ or a .lua file (default tiny)
  --repeats N        measured runs per arm (default 10)
  --out DIR          report folder (default ab-out): report.md, report.json, report.html, ttft.svg,
                     itl.svg, and where they apply expert_loads.svg (MoE: tokens per expert and
                     layer), slot_loads.svg (EP: rows per physical slot), quality.svg (quality vs size)
  --quality-base P   also compare each arm's model against base model P (ppl ratio, KL, top-1)
  --json             print report.json instead of the summary]==]

local spec = { workload = "string", repeats = "number", warmup = "number", out = "string", seed = "number",
  quality_base = "string", quality_file = "string", quality_tokens = "number", json = "flag" }

function M.main(args)
  local A = require "tide.cmd.args"
  local o, rest = A.parse(args, spec)
  if not o then io.stderr:write("tide ab: ", rest, "\n") return 2 end
  local trial = {}
  if #rest == 1 then
    -- a trial file: returns { arms = {...}, workload =, repeats =, quality =, out = }
    local chunk, le = loadfile(rest[1])
    if not chunk then io.stderr:write("tide ab: ", tostring(le), "\n") return 1 end
    local ok, t = pcall(chunk)
    if not ok or type(t) ~= "table" or type(t.arms) ~= "table" then
      io.stderr:write("tide ab: ", rest[1], " is not a trial file (a table with arms): ", tostring(t), "\n")
      return 1
    end
    trial = t
  elseif #rest < 2 then
    io.stderr:write("tide ab: need a trial file or at least two recipes (see tide ab --help)\n")
    return 2
  else
    trial.arms = rest
  end
  local ab = require "tide.ab"
  local q = trial.quality
  if o.quality_base then q = { base = o.quality_base, file = o.quality_file, tokens = o.quality_tokens } end
  local res, e = ab.trial{ arms = trial.arms, workload = o.workload or trial.workload, repeats = o.repeats or trial.repeats or 10,
    warmup = o.warmup or trial.warmup, seed = o.seed or trial.seed, out = o.out or trial.out or "ab-out", quality = q }
  if not res then io.stderr:write("tide ab: ", tostring(e), "\n") return 1 end
  local R = require "tide.ab.report"
  if o.json then io.write(R.json(res)) else print(R.summary(res)) end
  return 0
end

return M
