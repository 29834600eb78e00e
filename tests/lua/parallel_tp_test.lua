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

-- PP with 4 micro-batches in flight: token ranges cut inside sequences
-- too (a chunked prefill's order), the logits of every token close to one
-- process (matmuls of fewer rows may sum in another order), one send per
-- micro-batch from stage 0.
function T.pp2_micro_batches_match_one_process()
  local pp = require "tide.parallel.pp"
  H.same(pp.ranges(10, 4), { { 0, 2 }, { 2, 5 }, { 5, 7 }, { 7, 10 } }, "ranges")
  H.same(pp.ranges(2, 4), { { 0, 1 }, { 1, 2 } }, "no more ranges than tokens")
  local res = assert(comm.local_group(2, function(c)
    local tide = require "tide"
    local cjson = require "cjson"
    local fx = cjson.decode(io.open("tests/fixtures/llama-tiny.json"):read("*a"))
    local ref_m = assert(tide.load("models/llama-tiny"))
    local m = assert(tide.load("models/llama-tiny"))
    local plan = assert(require("tide.parallel.pp").apply(m, c, { micro_batches = 4 }))
    -- two sequences in one step (a ragged batch), then one more token each
    local kv, rkv = m:kv_cache(), ref_m:kv_cache()
    local a1, a2 = fx.public[1].ids, fx.public[2].ids
    local s1, s2, r1, r2 = kv:seq_new(), kv:seq_new(), rkv:seq_new(), rkv:seq_new()
    local d, mx = 0, 0
    local function cmp(a, b)
      for i = 1, a:shape()[1] do for j = 1, m.n_vocab, 3 do
        d = math.max(d, math.abs(a:get(i, j) - b:get(i, j)))
        mx = math.max(mx, math.abs(b:get(i, j)))
      end end
    end
    cmp(assert(m:step({ s1, s2 }, { a1, a2 }, "all")), assert(ref_m:step({ r1, r2 }, { a1, a2 }, "all")))
    cmp(assert(m:step({ s1, s2 }, { { 5 }, { 7 } }, "all")), assert(ref_m:step({ r1, r2 }, { { 5 }, { 7 } }, "all")))
    local st = c:stats()
    return string.format("%.9g %d %d", d / math.max(mx, 1), st.send and st.send.calls or 0, plan.in_flight)
  end))
  for r = 1, 2 do
    local d, sends, fl = res[r]:match("^(%S+) (%d+) (%d+)")
    H.truthy(tonumber(d) <= 1e-5, "rank " .. (r - 1) .. ": relative diff " .. d)
    H.eq(tonumber(fl), 2, "rank " .. (r - 1) .. ": 2 micro-batches in flight")
    -- stage 0 sends 4 + 2 micro-batches (the 2-token step makes 2); stage 1 sends the result back twice
    H.eq(tonumber(sends), r == 1 and 6 or 2, "rank " .. (r - 1) .. ": sends")
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
  for _, r in ipairs({ "llama-tiny-tp2", "llama-tiny-pp2", "dsv3-tiny-tp2", "dsv3-tiny-fp8-tp2" }) do
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

-- FP8 shards: the stored e4m3 bytes move as they are and the block scales go
-- with them, on block boundaries (the 128 x 128 blocks kept) and inside a
-- block (finer blocks, each with its original block's scale): every weight
-- of a shard dequantizes to exactly the value it has in the full tensor.
function T.fp8_shards_keep_block_scales_and_values()
  local tp = require "tide.parallel.tp"
  local m = assert(require("tide").load("models/dsv3-tiny-fp8", { mla = "absorb" }))
  local L = m.arch.layers[2]
  local cases = {
    { L.attn.o.weight, 0, 128, 0, 128 }, { L.attn.o.weight, 128, 128, 64, 64 }, { L.attn.o.weight, 96, 100, 32, 60 },
    { L.moe.experts[3].down.weight, 0, 256, 80, 80 }, { L.moe.experts[3].gate.weight, 80, 80, 0, 256 },
  }
  local checked = 0
  for k, cs in ipairs(cases) do
    local w, r0, nr, c0, nc = cs[1], cs[2], cs[3], cs[4], cs[5]
    H.truthy(w:cdata().scale ~= nil and w:dtype() == m.arch.layers[2].attn.o.weight:dtype(), "case " .. k .. ": a block-scaled FP8 weight")
    local s = tp.scaled_slice(w, r0, nr, c0, nc)
    H.eq(s:dtype(), w:dtype(), "case " .. k .. ": stays " .. w:dtype())
    H.same(s:shape(), { nr, nc }, "case " .. k .. ": shape")
    local p = s:cdata()
    local br, bc = tonumber(p.scale_block[0]), tonumber(p.scale_block[1])
    if r0 % 128 == 0 and c0 % 128 == 0 then H.same({ br, bc }, { 128, 128 }, "case " .. k .. ": blocks kept") end
    H.truthy(r0 % br == 0 and c0 % bc == 0 and 128 % br == 0 and 128 % bc == 0, "case " .. k .. ": blocks nest")
    local full, part = w:copy("f32"), s:copy("f32")
    local fp, pp = full:data_ptr(), part:data_ptr()
    local W = w:shape()[2]
    local bad = 0
    for i = 0, nr - 1 do
      for j = 0, nc - 1 do
        if pp[i * nc + j] ~= fp[(r0 + i) * W + c0 + j] then bad = bad + 1 end
        checked = checked + 1
      end
    end
    H.eq(bad, 0, "case " .. k .. ": dequantized values differ")
  end
  H.truthy(checked > 50000, "values compared: " .. checked)
end

function T.fp8_tp2_logits_close_to_one_process()
  local res = assert(comm.local_group(2, function(c)
    local tide = require "tide"
    local cjson = require "cjson"
    local fx = cjson.decode(io.open("tests/fixtures/dsv3-tiny-fp8.json"):read("*a"))
    local ids = fx.public[2].ids
    local ref = assert(assert(tide.load("models/dsv3-tiny-fp8", { mla = "absorb" })):forward(ids))
    local m = assert(tide.load("models/dsv3-tiny-fp8", { mla = "absorb" }))
    assert(require("tide.parallel.tp").apply(m, c))
    local o = m.arch.layers[2].attn.o.weight
    local a = assert(m:forward(ids))
    local d, mx = 0, 0
    for i = 1, #ids do for j = 1, m.n_vocab, 5 do
      d = math.max(d, math.abs(a:get(i, j) - ref:get(i, j)))
      mx = math.max(mx, math.abs(ref:get(i, j)))
    end end
    return string.format("%.9g %s %d", d / math.max(mx, 1), o:dtype(), o:shape()[2])
  end))
  for r = 1, 2 do
    local d, dt, w = res[r]:match("^(%S+) (%S+) (%d+)")
    H.truthy(tonumber(d) <= 1e-4, "rank " .. (r - 1) .. ": relative diff " .. d)
    H.truthy(dt:match("8"), "o_proj stays FP8 on the rank: " .. dt)
    H.eq(tonumber(w), 64, "o_proj columns of 2 of 4 heads")
  end
end

local have_mpirun = H.have_mpirun

function T.mpi_same_tokens_tp2_pp2()
  if not have_mpirun() then print("  (skipped: no mpirun)") return end
  for _, r in ipairs({ "llama-tiny-tp2", "llama-tiny-pp2", "dsv3-tiny-tp2", "dsv3-tiny-fp8-tp2" }) do
    local out, code = H.mpirun("", 2, "run tests/mpi/ep_check.lua recipes/" .. r .. ".lua")
    check_out(out, code, "mpirun " .. r)
  end
end

return T
