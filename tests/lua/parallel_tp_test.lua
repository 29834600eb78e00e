-- Tensor and pipeline parallelism for llama-tiny (tide.parallel.tp / .pp):
-- logits against one process, same greedy tokens for every fixture prompt
-- on threads and (when installed) under mpirun, refusals.
local H = require "helpers"
local comm = require "tide.comm"
local T = {}

-- Rank function: max |logits(plan) - logits(one process)| / max |logit| for
-- the first fixture prompt; arg "tp" or "pp".
local function logits_diff(c, arg)
  local tide = require "tide"
  local cjson = require "cjson"
  local fx = cjson.decode(io.open("tests/fixtures/llama-tiny.json"):read("*a"))
  local ids = fx.public[1].ids
  local ref = assert(assert(tide.load("models/llama-tiny")):forward(ids))
  local m = assert(tide.load("models/llama-tiny"))
  assert(require("tide.parallel." .. arg).apply(m, c))
  local a = assert(m:forward(ids))
  local d, mx = 0, 0
  for i = 1, #ids do for j = 1, m.n_vocab, 5 do
    d = math.max(d, math.abs(a:get(i, j) - ref:get(i, j)))
    mx = math.max(mx, math.abs(ref:get(i, j)))
  end end
  local st = c:stats()
  return string.format("%.9g %d %d", d / math.max(mx, 1), st.allreduce and st.allreduce.calls or 0,
    (st.send and st.send.calls or 0) + (st.recv and st.recv.calls or 0))
end

function T.tp2_logits_match_one_process_to_roundoff()
  local res = assert(comm.local_group(2, logits_diff, "tp"))
  for r = 1, 2 do
    local d, ar = res[r]:match("^(%S+) (%d+)")
    H.truthy(tonumber(d) <= 1e-5, "rank " .. (r - 1) .. ": relative diff " .. d)
    H.eq(tonumber(ar), 2 * 4, "two allreduces per layer")
  end
end

function T.pp2_logits_equal_one_process()
  local res = assert(comm.local_group(2, logits_diff, "pp"))
  for r = 1, 2 do
    local d, _, sr = res[r]:match("^(%S+) (%d+) (%d+)")
    H.eq(tonumber(d), 0, "rank " .. (r - 1) .. ": the same ops in the same order")
    H.eq(tonumber(sr), 2, "one send and one recv per step")
  end
end

function T.tp_refuses_heads_that_do_not_divide()
  local res, err = comm.local_group(3, function(c)
    local m = assert(require("tide").load("models/llama-tiny"))
    local ok, e = require("tide.parallel.tp").apply(m, c)
    return ok and "applied" or e
  end)
  assert(res, err)
  H.truthy(res[1]:find("do not divide over 3 ranks", 1, true), res[1])
  local R = require "tide.parallel.recipe"
  local r = R.new(dofile("recipes/llama-tiny-tp2.lua"))
  H.fails("parallel.ranks is 2 but the job has 4", R.check(r, 4))
end

local function check_out(out, code, what)
  H.eq(code, 0, what .. ": exit code; output:\n" .. out)
  H.truthy(out:find("same 4/4", 1, true), what .. ": same tokens:\n" .. out)
end

function T.same_tokens_on_threads()
  for _, r in ipairs({ "llama-tiny-tp2", "llama-tiny-pp2", "dsv3-tiny-tp2" }) do
    local out, code = H.sh(H.q(H.tide) .. " run tests/mpi/ep_check.lua recipes/" .. r .. ".lua 2>&1")
    check_out(out, code, r)
  end
end

function T.dsv3_tp2_logits_match_one_process_to_roundoff()
  local res = assert(comm.local_group(2, function(c)
    local tide = require "tide"
    local cjson = require "cjson"
    local fx = cjson.decode(io.open("tests/fixtures/dsv3-tiny.json"):read("*a"))
    local ids = fx.public[2].ids
    local ref = assert(assert(tide.load("models/dsv3-tiny", { mla = "absorb" })):forward(ids))
    local m = assert(tide.load("models/dsv3-tiny", { mla = "absorb" }))
    assert(require("tide.parallel.tp").apply(m, c))
    local a = assert(m:forward(ids))
    local d, mx = 0, 0
    for i = 1, #ids do for j = 1, m.n_vocab, 5 do
      d = math.max(d, math.abs(a:get(i, j) - ref:get(i, j)))
      mx = math.max(mx, math.abs(ref:get(i, j)))
    end end
    return string.format("%.9g %d", d / math.max(mx, 1), m.arch.layers[1].attn.n_head)
  end))
  for r = 1, 2 do
    local d, heads = res[r]:match("^(%S+) (%d+)")
    H.truthy(tonumber(d) <= 1e-5, "rank " .. (r - 1) .. ": relative diff " .. d)
    H.eq(tonumber(heads), 2, "2 of 4 MLA heads per rank")
  end
end

local have_mpirun = H.have_mpirun

function T.mpi_same_tokens_tp2_pp2()
  if not have_mpirun() then print("  (skipped: no mpirun)") return end
  for _, r in ipairs({ "llama-tiny-tp2", "llama-tiny-pp2", "dsv3-tiny-tp2" }) do
    local out, code = H.mpirun("", 2, "run tests/mpi/ep_check.lua recipes/" .. r .. ".lua")
    check_out(out, code, "mpirun " .. r)
  end
end

return T
