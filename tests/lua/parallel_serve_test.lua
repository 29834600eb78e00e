-- `tide serve --recipe R` on many ranks (tide.parallel.serve): rank 0 serves
-- HTTP, every rank steps the model. Greedy completions sent concurrently (so
-- they share engine steps) equal single-process model:generate, for the
-- dsv3-tiny EP recipe (lead mode: rank 0 attends, the experts are spread)
-- and the llama-tiny TP2 recipe (mirror mode: every rank runs the engine),
-- on threads and (when installed) under mpirun --oversubscribe; SIGTERM to
-- rank 0 stops every rank and the job exits 0.
local H = require "helpers"
local cjson = require "cjson"
local tide = require "tide"

local T = {}

local PROMPTS = { "The quick brown fox jumps over", "Once upon a time", "The capital of France is" }

local function sleep(s) os.execute("sleep " .. s) end

local function read(path)
  local f = io.open(path)
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

-- Start `prefix tide serve --recipe recipe --port 0` in the background;
-- returns port, rank 0's pid, the folder with out.log and exit.
local function start(prefix, recipe)
  local dir = H.tmpdir()
  os.execute(string.format("(%s %s serve --recipe %s --port 0 --max-batch-tokens 64 > %s/out.log 2>&1; echo $? > %s/exit) "
    .. ">/dev/null 2>&1 &", prefix, H.q(H.tide), H.q(recipe), dir, dir))
  for _ = 1, 600 do
    local s = read(dir .. "/out.log") or ""
    local port, pid = s:match("http://127%.0%.0%.1:(%d+) .-rank 0 pid (%d+)")
    if port then return tonumber(port), tonumber(pid), dir end
    if read(dir .. "/exit") then error("the server exited:\n" .. s, 0) end
    sleep(0.1)
  end
  error("the server did not start:\n" .. (read(dir .. "/out.log") or ""), 0)
end

local function stop(pid, dir)
  os.execute("kill -TERM " .. pid)
  local code
  for _ = 1, 300 do
    code = tonumber(read(dir .. "/exit") or "")
    if code then break end
    sleep(0.1)
  end
  local log = read(dir .. "/out.log") or ""
  os.execute("rm -rf " .. H.q(dir))
  return code, log
end

-- The prompts posted concurrently (curl in the background); the decoded answers.
local function complete_all(port, max_tokens)
  local dir = H.tmpdir()
  local cmds = {}
  for i, p in ipairs(PROMPTS) do
    local body = cjson.encode({ prompt = p, max_tokens = max_tokens, temperature = 0 })
    cmds[#cmds + 1] = string.format("curl -s -m 120 -H 'Content-Type: application/json' -d %s http://127.0.0.1:%d/v1/completions > %s/r%d &",
      H.q(body), port, dir, i)
  end
  os.execute(table.concat(cmds, " ") .. " wait")
  local out = {}
  for i = 1, #PROMPTS do
    local s = read(dir .. "/r" .. i) or ""
    local ok, j = pcall(cjson.decode, s)
    H.truthy(ok and type(j) == "table" and j.choices, "completion " .. i .. ": " .. s)
    out[i] = j
  end
  os.execute("rm -rf " .. H.q(dir))
  return out
end

local function check_served(prefix, recipe, model_path, mla)
  local m = assert(tide.load(model_path, { mla = mla }))
  local tok = m.tokenizer
  local refs = {}
  for i, p in ipairs(PROMPTS) do
    local ids = tok:encode(p, { add_special = true })
    local new = assert(m:generate(ids, { max_tokens = 10, temperature = 0 }))
    refs[i] = { text = tok:decode(new), n = #new, prompt = #ids }
  end
  m:free()
  local port, pid, dir = start(prefix, recipe)
  local ok, err = pcall(function()
    local got = complete_all(port, 10)
    for i = 1, #PROMPTS do
      H.eq(got[i].choices[1].text, refs[i].text, recipe .. ": prompt " .. i .. " text")
      H.eq(got[i].usage.completion_tokens, refs[i].n, recipe .. ": prompt " .. i .. " tokens")
      H.eq(got[i].usage.prompt_tokens, refs[i].prompt, recipe .. ": prompt " .. i .. " prompt tokens")
    end
  end)
  local code, log = stop(pid, dir)
  if not ok then error(tostring(err) .. "\nserver log:\n" .. log, 0) end
  H.eq(code, 0, recipe .. ": exit status after SIGTERM to rank 0; log:\n" .. log)
  H.truthy(log:find("tide serve: stopped", 1, true), "rank 0 stopped cleanly:\n" .. log)
end

function T.mode_refuses_pd_recipes()
  local S = require "tide.parallel.serve"
  H.eq(S.mode({ parallel = { ep = 4 } }), "lead", "EP: lead")
  H.eq(S.mode({ parallel = { tp = 2 } }), "mirror", "TP: mirror")
  H.fails("PD recipes", S.mode({ parallel = { pd = { prefill = 1 } } }))
  local out, code = H.sh(H.q(H.tide) .. " serve --recipe recipes/dsv3-tiny-pd.lua --port 0 2>&1")
  H.truthy(code ~= 0 and out:find("not supported", 1, true), "PD refused before start: " .. out)
end

function T.threads_ep4_and_tp2_serve_single_process_tokens()
  check_served("", "recipes/dsv3-tiny-ep4.lua", "models/dsv3-tiny", "absorb")
  check_served("", "recipes/llama-tiny-tp2.lua", "models/llama-tiny")
end

function T.mpi_ep4_and_tp2_serve_single_process_tokens()
  if not H.have_mpirun() then print("  (skipped: no mpirun)") return end
  local pre = "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 ASAN_OPTIONS=detect_leaks=0 timeout 120 mpirun --oversubscribe -np "
  check_served(pre .. "4", "recipes/dsv3-tiny-ep4.lua", "models/dsv3-tiny", "absorb")
  check_served(pre .. "2", "recipes/llama-tiny-tp2.lua", "models/llama-tiny")
end

return T
