-- tide.comm: the local backend through Lua (one Lua state per rank thread)
-- and, when mpirun is installed, the MPI backend: the same rank function
-- (tests/mpi/comm_check.lua) runs on threads and under mpirun.
local H = require "helpers"
local comm = require "tide.comm"
local T = {}

local CHECK = "tests/mpi/comm_check.lua"

function T.same_rank_function_on_1_to_4_threads()
  for n = 1, 4 do
    local res = assert(comm.local_group(n, CHECK))
    for r = 0, n - 1 do H.eq(res[r + 1], string.format("ok local %d/%d", r, n), "rank " .. r) end
  end
end

function T.launch_without_mpirun_uses_threads()
  H.eq(comm.in_mpi_job(), false, "not under mpirun")
  local res = assert(comm.launch(function(c, arg)
    return c:backend() .. " " .. c:rank() .. " " .. arg
  end, { ranks = 3, arg = "x" }))
  H.same(res, { "local 0 x", "local 1 x", "local 2 x" }, "results")
end

function T.tensor_allreduce_and_alltoallv_on_threads()
  local res = assert(comm.local_group(4, function(c)
    local tide = require "tide"
    local ffi = require "ffi"
    local me, n = c:rank(), c:size()
    -- in place non-blocking allreduce of a tensor
    local t = tide.tensor({ { me, 1 }, { 2 * me, 0 } })
    local rq = assert(c:iallreduce(t))
    assert(rq:wait())
    local v = t:totable()
    assert(v[1][1] == 6 and v[1][2] == 4 and v[2][1] == 12 and v[2][2] == 0, "iallreduce")
    -- alltoallv of one f32 per peer, from a tensor into a tensor
    local send = tide.zeros({ n })
    for p = 1, n do send:set(p, me * 10 + p - 1) end
    local recv = tide.zeros({ n })
    local c4 = {}
    for p = 1, n do c4[p] = 4 end
    assert(c:alltoallv(send, c4, recv, c4))
    for p = 1, n do assert(recv:get(p) == (p - 1) * 10 + me, "alltoallv") end
    -- allgather of tensors: every rank's 2 floats, in rank order
    local mine = tide.tensor({ me, -me })
    local all = tide.zeros({ n, 2 })
    assert(c:allgather(mine, all))
    for r = 1, n do assert(all:get(r, 1) == r - 1 and all:get(r, 2) == 1 - r, "allgather") end
    -- non-blocking point to point
    local x = ffi.new("double[1]", me)
    local y = ffi.new("double[1]")
    local r1 = assert(c:irecv(y, (me + n - 1) % n, 5, 8))
    local r2 = assert(c:isend(x, (me + 1) % n, 5, 8))
    assert(r2:wait()); assert(r1:wait())
    assert(y[0] == (me + n - 1) % n, "ring")
    local st = c:stats()
    assert(st.allreduce.calls == 1 and st.allreduce.bytes == 16, "stats allreduce")
    assert(st.alltoallv.bytes == 4 * n and st.send.calls == 1 and st.recv.calls == 1, "stats p2p")
    assert(st.allreduce.ns >= 0 and st.allreduce.span_ns >= st.allreduce.ns, "stats times")
    return "ok"
  end))
  H.same(res, { "ok", "ok", "ok", "ok" }, "all ranks")
end

function T.split_groups_for_tp_and_ep()
  -- 4 ranks: TP groups {0,1},{2,3}; EP group across: {0,2},{1,3}
  local res = assert(comm.local_group(4, function(c)
    local me = c:rank()
    local tp = assert(c:split(me >= 2 and 1 or 0, me))
    local ep = assert(c:split(me % 2, me))
    local undefined = c:split(nil)
    return table.concat({ tp:rank(), tp:size(), ep:rank(), ep:size(), tostring(undefined),
      assert(tp:allreduce_table({ me }))[1], assert(ep:allreduce_table({ me }))[1] }, ",")
  end))
  H.same(res, { "0,2,0,2,false,1,2", "1,2,0,2,false,1,4", "0,2,1,2,false,5,2", "1,2,1,2,false,5,4" }, "splits")
end

function T.rank_error_names_the_rank_and_stops_the_others()
  local res, err = comm.local_group(3, CHECK, "error")
  H.fails("rank 1: ", res, err)
  H.truthy(err:find("deliberate failure on rank 1", 1, true), "message kept: " .. err)
end

function T.timeout_instead_of_hang()
  local res, err = comm.local_group(3, CHECK, "hang")
  H.fails("timed out", res, err)
  H.truthy(err:find("waiting for rank(s) 1", 1, true), "names the missing rank: " .. err)
end

function T.bad_arguments_raise()
  H.raises("n must be a positive integer", comm.local_group, 0, CHECK)
  H.raises("expected a function or a file path", comm.local_group, 2, 42)
  local upvalue = 1
  H.raises("cannot use upvalues (it uses 'upvalue')", comm.local_group, 2, function() return upvalue end)
  local res, err = comm.local_group(2, function(c) c:allreduce({ 1, 2 }) end)
  H.fails("expects a tensor", res, err)
end

-- ---- tide.parallel.mesh: layouts and groups over the communicator ------------------------

function T.mesh_layout_checks()
  local mesh = require "tide.parallel.mesh"
  H.same(mesh.check(8, { pp = 2, tp = 2, dp = 2 }), { pp = 2, dp = 2, tp = 2 }, "fits")
  H.same(mesh.check(1, nil), { pp = 1, dp = 1, tp = 1 }, "one rank")
  H.same(mesh.check(4, { dp = 4 }), { pp = 1, dp = 4, tp = 1 }, "DP-attention over 4 ranks")
  H.fails("= 1 ranks, but the job has 4", mesh.check(4, {}))
  H.fails("= 4 ranks, but the job has 8", mesh.check(8, { tp = 4 }))
  H.fails("unknown axis 'ep'", mesh.check(4, { ep = 4 }))
  H.fails("tp must be a positive integer", mesh.check(4, { tp = 0 }))
  H.same(mesh.coords(5, { pp = 2, dp = 2, tp = 2 }), { pp = 1, dp = 0, tp = 1 }, "coords")
  -- MoE plans (acceptance 5: refused before start, with the reason)
  H.same(mesh.check_moe(16, 4, 4), { slots = 20, per_rank = 5 }, "dsv3-tiny EP4 + 4 redundant")
  H.fails("only 16 expert slots", mesh.check_moe(16, 32))
  H.fails("do not divide over 3 ranks", mesh.check_moe(16, 3))
  H.fails("do not divide over 4 ranks", mesh.check_moe(16, 4, 2))
  H.fails("no routed experts", mesh.check_moe(nil, 4))
end

function T.mesh_groups_on_8_threads()
  local res = assert(comm.local_group(8, function(c)
    local mesh = require "tide.parallel.mesh"
    local m = assert(mesh.new(c, { pp = 2, dp = 2, tp = 2 }))
    local me = c:rank()
    -- members of each group, as world ranks
    local function members(g) return table.concat(assert(g:allgather_string(me)), " ") end
    local out = string.format("tp[%s] dp[%s] pp[%s] ep[%s]", members(m.tp), members(m.dp), members(m.pp), members(m.ep))
    m:free()
    return out
  end))
  H.eq(res[1], "tp[0 1] dp[0 2] pp[0 4] ep[0 1 2 3]", "rank 0")
  H.eq(res[6], "tp[4 5] dp[5 7] pp[1 5] ep[4 5 6 7]", "rank 5")
  H.eq(res[8], "tp[6 7] dp[5 7] pp[3 7] ep[4 5 6 7]", "rank 7")
end

function T.prefill_and_decode_roles()
  local res = assert(comm.local_group(4, function(c)
    local mesh = require "tide.parallel.mesh"
    local r = assert(mesh.roles(c, { { "prefill", 1 }, { "decode", 3 } }))
    return string.format("%s %d/%d first %d", r.role, r.index, r.comm:size(), r.first)
  end))
  H.same(res, { "prefill 0/1 first 0", "decode 0/3 first 1", "decode 1/3 first 1", "decode 2/3 first 1" }, "roles")
  local bad, err = comm.local_group(4, function(c)
    return select(2, require("tide.parallel.mesh").roles(c, { prefill = 1, decode = 2 }))
  end)
  H.eq(bad and bad[1], "roles: 3 ranks requested, but the job has 4", "refused: " .. tostring(err))
end

-- ---- MPI (skipped when mpirun is missing) ----------------------------------------------

local function have_mpirun()
  local _, code = H.sh("command -v mpirun")
  return code == 0
end

-- Root may run mpirun in CI containers. Open MPI's own allocations are not
-- freed at exit, so LeakSanitizer is off for the ranks when the suite runs on
-- an ASan build of tide (ASan's other checks stay on).
local MPIRUN = "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 ASAN_OPTIONS=detect_leaks=0 "
  .. "timeout 60 mpirun --oversubscribe "

local function mpirun(opts, np, args)
  return H.sh(MPIRUN .. opts .. " -np " .. np .. " " .. H.q(H.tide) .. " run tests/mpi/run.lua 4 " .. (args or ""))
end

local function expect_ok(out, code, np)
  H.eq(code, 0, "exit code; output:\n" .. out)
  for r = 0, np - 1 do
    H.truthy(out:find(string.format("rank %d: ok mpi %d/%d", r, r, np), 1, true), "rank " .. r .. " ok in:\n" .. out)
  end
end

function T.mpi_same_rank_function_under_mpirun()
  if not have_mpirun() then print("  (skipped: no mpirun)") return end
  local out, code = mpirun("", 4)
  expect_ok(out, code, 4)
end

function T.mpi_over_tcp()
  if not have_mpirun() then print("  (skipped: no mpirun)") return end
  local out, code = mpirun("--mca btl tcp,self", 3)
  expect_ok(out, code, 3)
end

function T.mpi_killed_rank_ends_the_job_naming_it()
  if not have_mpirun() then print("  (skipped: no mpirun)") return end
  local out, code = mpirun("", 4, "die")
  H.truthy(code ~= 0 and code ~= 124, "job ended with an error (not the 60 s timeout): " .. tostring(code))
  H.truthy(out:find("rank 2", 1, true), "names rank 2:\n" .. out)
end

function T.mpi_failing_rank_aborts_the_job_naming_it()
  if not have_mpirun() then print("  (skipped: no mpirun)") return end
  local out, code = mpirun("", 4, "error")
  H.truthy(code ~= 0 and code ~= 124, "job ended with an error: " .. tostring(code))
  H.truthy(out:find("tide: rank 1 of 4 failed:", 1, true), "names rank 1:\n" .. out)
  H.truthy(out:find("deliberate failure on rank 1", 1, true), "carries the message")
end

return T
