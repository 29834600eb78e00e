-- Expert parallelism with DP-attention (tide.parallel.ep) and parallel
-- recipes (tide.parallel.recipe): placements, refusals, f32 agreement with
-- the single-process MoE, and same greedy tokens as one process for every
-- fixture prompt of dsv3-tiny on threads and (when installed) under mpirun.
local H = require "helpers"
local ep = require "tide.parallel.ep"
local R = require "tide.parallel.recipe"
local T = {}

local RECIPE = "recipes/dsv3-tiny-ep4.lua"

function T.contiguous_and_eplb_placements()
  local p = assert(ep.placement(2, 16, 4))
  H.eq(#p, 2, "rows")
  for s = 1, 16 do H.eq(p[1][s], s - 1, "contiguous slot " .. s) end
  local loads = { {}, {} }
  for e = 1, 16 do loads[1][e] = e == 3 and 1000 or 10; loads[2][e] = e end
  local q = assert(ep.placement(2, 16, 4, { redundant = 4, loads = loads }))
  for l = 1, 2 do
    H.eq(#q[l], 20, "slots")
    local seen = {}
    for _, e in ipairs(q[l]) do seen[e] = (seen[e] or 0) + 1 end
    for e = 0, 15 do H.truthy(seen[e] and seen[e] >= 1, "expert " .. e .. " has a replica") end
  end
  local cnt = 0
  for _, e in ipairs(q[1]) do if e == 2 then cnt = cnt + 1 end end
  H.truthy(cnt >= 2, "the hot expert is replicated")
end

-- Acceptance 3 on the fixture's loads (bench/eplb_balance.lua measures them):
-- EPLB with 4 redundant experts over 4 ranks brings every MoE layer to
-- max/mean <= 1.15 from above it.
function T.eplb_balances_the_fixture_loads()
  local cjson = require "cjson"
  local eplb = require "tide.parallel.eplb"
  local fx = cjson.decode(io.open("tests/fixtures/dsv3-tiny.json"):read("*a"))
  local rows = { fx.expert_loads_val[2], fx.expert_loads_val[3], fx.expert_loads_val[4] }
  local p = assert(ep.placement(3, 16, 4, { redundant = 4, loads = rows, groups = 4 }))
  for l = 1, 3 do
    local cnt = {}
    for e = 1, 16 do cnt[e] = 0 end
    for _, e in ipairs(p[l]) do cnt[e + 1] = cnt[e + 1] + 1 end
    local _, before = eplb.rank_loads(rows[l], 4)
    local _, after = eplb.rank_loads(rows[l], 4, p[l], cnt)
    H.truthy(before > 1.15, "layer " .. l .. " unbalanced without EPLB: " .. before)
    H.truthy(after <= 1.15, "layer " .. l .. " balanced with EPLB: " .. after)
  end
end

function T.mismatched_recipes_are_refused_before_start()
  local r = R.new(dofile(RECIPE))
  H.truthy(R.check(r, 4), "the recipe fits 4 ranks")
  H.fails("parallel.ranks is 4 but the job has 3", R.check(r, 3))
  r.parallel.ranks, r.parallel.ep = 3, 3
  H.fails("do not divide over 3 ranks", R.check(r, 3))
  r.parallel.ranks, r.parallel.ep, r.parallel.eplb = 32, 32, nil
  H.fails("32 ranks but only 16 expert slots", R.check(r, 32))
  H.fails("do not divide", R.launch({ recipe = (function() local x = R.new(dofile(RECIPE)); x.parallel.ranks = 3; x.parallel.ep = 3; x.parallel.backend = "threads"; return x end)(), prompts = {} }))
  H.fails("16 expert slots", ep.placement(1, 16, 32))
end

-- Rank function: logits of rank r's prompt under EP vs the same model without
-- it (the plan removed): max abs difference.
local function logits_diff(c, arg)
  local tide = require "tide"
  local ep = require "tide.parallel.ep"
  local cjson = require "cjson"
  local fx = cjson.decode(io.open("tests/fixtures/dsv3-tiny.json"):read("*a"))
  local m = assert(tide.load("models/dsv3-tiny", { mla = "absorb" }))
  local loads = {}
  for i = 2, 4 do loads[#loads + 1] = fx.expert_loads_val[i] end
  local plan = assert(ep.apply(m, c, { redundant = arg == "eplb" and 4 or 0, loads = arg == "eplb" and loads or nil,
    overlap = (arg == "tbo" and "tbo") or (arg == "overlap") }))
  local ids = fx.public[c:rank() % #fx.public + 1].ids
  local a = assert(m:forward(ids))
  plan:drain()
  local st = c:stats()
  plan:remove()
  local b = assert(m:forward(ids))
  local d, mx = 0, 0
  for i = 1, #ids do for j = 1, m.n_vocab, 7 do
    d = math.max(d, math.abs(a:get(i, j) - b:get(i, j)))
    mx = math.max(mx, math.abs(b:get(i, j)))
  end end
  -- relative to the largest logit: float32 round-off of GEMMs over other row batches
  return string.format("%.9g %d", d / math.max(mx, 1), st.alltoallv and st.alltoallv.calls or 0)
end

function T.ep_logits_match_one_process()
  local comm = require "tide.comm"
  for _, v in ipairs({ { 1, "" }, { 4, "" }, { 4, "eplb" }, { 4, "overlap" }, { 4, "tbo" }, { 1, "tbo" } }) do
    local res = assert(comm.local_group(v[1], logits_diff, v[2]))
    for r = 1, v[1] do
      local d, calls = res[r]:match("^(%S+) (%d+)$")
      H.truthy(tonumber(d) <= 1e-5, string.format("%d ranks %s rank %d: max |diff| / max |logit| %s", v[1], v[2], r - 1, d))
      H.truthy(tonumber(calls) > 0, "alltoallv used")
      if v[1] == 1 and v[2] == "" then H.eq(tonumber(d), 0, "one rank: a permutation, exact") end
      -- TBO: counts, dispatch and combine per half per MoE layer, then drain's last pass (two counts exchanges)
      if v[2] == "tbo" then H.eq(tonumber(calls), 3 * 2 * 3 + 2, "TBO all-to-alls") end
    end
  end
end

local function check_out(out, code, what)
  H.eq(code, 0, what .. ": exit code; output:\n" .. out)
  H.truthy(out:find("same 4/4", 1, true), what .. ": same tokens:\n" .. out)
end

function T.same_tokens_on_threads()
  for _, v in ipairs({ "threads", "q8" }) do
    local out, code = H.sh(H.q(H.tide) .. " run tests/mpi/ep_check.lua " .. RECIPE .. " " .. v .. " 2>&1")
    if v ~= "q8" then check_out(out, code, v) else H.eq(code == 0 or code == 1, true, "q8 runs:\n" .. out) end
  end
  local out, code = H.sh(H.q(H.tide) .. " run tests/mpi/ep_check.lua " .. RECIPE .. " noeplb 2>&1")
  check_out(out, code, "threads, no EPLB")
  out, code = H.sh(H.q(H.tide) .. " run tests/mpi/ep_check.lua " .. RECIPE .. " rebalance 2>&1")
  check_out(out, code, "threads, EPLB rebalanced every 4 steps")
  local rb, mv, wb = out:match("rebalances (%d+) moved (%d+) %(rank 0 sent (%d+) weight bytes%)")
  H.truthy(tonumber(rb) and tonumber(rb) >= 5, "rebalanced at run time:\n" .. out)
  H.truthy(tonumber(mv) > 0 and tonumber(wb) > 0, "experts moved, their weights sent")
  out, code = H.sh(H.q(H.tide) .. " run tests/mpi/ep_check.lua " .. RECIPE .. " overlap 2>&1")
  check_out(out, code, "threads, two-micro-batch overlap")
  out, code = H.sh(H.q(H.tide) .. " run tests/mpi/ep_check.lua " .. RECIPE .. " tbo 2>&1")
  check_out(out, code, "threads, two-batch overlap across layers")
  out, code = H.sh(H.q(H.tide) .. " run tests/mpi/ep_check.lua recipes/dsv3-tiny-pd.lua 2>&1")
  check_out(out, code, "threads, PD 1P+3D")
end

-- ---- MPI (skipped when mpirun is missing) ----------------------------------------------

local have_mpirun, mpirun = H.have_mpirun, H.mpirun

function T.mpi_same_tokens_ep_eplb_and_tcp()
  if not have_mpirun() then print("  (skipped: no mpirun)") return end
  local out, code = mpirun("", 4, "run tests/mpi/ep_check.lua " .. RECIPE .. " noeplb")
  check_out(out, code, "mpirun EP")
  out, code = mpirun("", 4, "run tests/mpi/ep_check.lua " .. RECIPE)
  check_out(out, code, "mpirun EP + EPLB")
  out, code = mpirun("--mca btl tcp,self", 4, "run tests/mpi/ep_check.lua " .. RECIPE)
  check_out(out, code, "mpirun over TCP")
  out, code = mpirun("", 4, "run tests/mpi/ep_check.lua " .. RECIPE .. " tbo")
  check_out(out, code, "mpirun EP + EPLB, two-batch overlap across layers")
  out, code = mpirun("", 4, "run tests/mpi/ep_check.lua " .. RECIPE .. " rebalance")
  check_out(out, code, "mpirun EP + EPLB rebalanced every 4 steps")
  out, code = mpirun("", 4, "run tests/mpi/ep_check.lua recipes/dsv3-tiny-pd.lua")
  check_out(out, code, "mpirun PD 1P+3D")
end

function T.mpi_generate_recipe_json_equals_single_process()
  if not have_mpirun() then print("  (skipped: no mpirun)") return end
  local cjson = require "cjson"
  local args = " --prompt 'The quick brown fox' --max-tokens 12 --temp 0 --json"
  local one, c1 = H.sh(H.q(H.tide) .. " generate --model models/dsv3-tiny --mla absorb" .. args)
  H.eq(c1, 0, one)
  local many, c2 = mpirun("", 4, "generate --recipe " .. RECIPE .. args)
  H.eq(c2, 0, many)
  local lines = {}
  for l in many:gmatch("[^\n]+") do if l:sub(1, 1) == "{" then lines[#lines + 1] = l end end
  H.eq(#lines, 1, "only rank 0 prints:\n" .. many)
  local a, b = cjson.decode(one), cjson.decode(lines[1])
  H.same(b.ids, a.ids, "ids")
  H.same(b.prompt_ids, a.prompt_ids, "prompt ids")
  H.eq(b.text, a.text, "text")
end

-- Each MPI rank pages in only the experts of its slots: the checkpoint is
-- mmapped and nothing reads the other ranks' experts, so at least half of
-- their bytes are missing from the rank's resident pages.
function T.mpi_ranks_hold_only_their_experts()
  if not have_mpirun() then print("  (skipped: no mpirun)") return end
  local out, code = mpirun("", 4, "run " .. RECIPE)
  H.eq(code, 0, out)
  local n = 0
  for rk, slot, all, res, mapped in out:gmatch("%[rank (%d+): expert weights (%d+) KiB in its slots of (%d+) KiB for all experts; checkpoint resident (%d+) KiB of (%d+) KiB") do
    slot, all, res, mapped = tonumber(slot), tonumber(all), tonumber(res), tonumber(mapped)
    H.eq(slot, 5 * 3 * all / (16 * 3), "rank " .. rk .. ": 5 slots in each of 3 MoE layers")
    H.truthy(res < mapped - (all - slot) / 2, string.format("rank %s: %d KiB resident of %d KiB, other experts %d KiB", rk, res, mapped, all - slot))
    n = n + 1
  end
  H.eq(n, 4, "a memory line per rank:\n" .. out)
end

function T.mpi_killed_rank_ends_the_recipe_job()
  if not have_mpirun() then print("  (skipped: no mpirun)") return end
  local t0 = os.time()
  local out, code = mpirun("", 4, "run tests/mpi/ep_check.lua " .. RECIPE .. " die")
  H.truthy(code ~= 0 and code ~= 124, "job ended with an error (not the timeout): " .. tostring(code) .. "\n" .. out)
  H.truthy(out:find("rank 2", 1, true), "names rank 2:\n" .. out)
  H.truthy(os.time() - t0 < 30, "ended within seconds")
end

return T
