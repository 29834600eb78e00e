-- A rank function exercising the communicator; the same file runs on threads
-- (tide.comm.local_group) and under mpirun (tests/mpi/run.lua). Raises on a
-- wrong result; returns "ok <backend> <rank>/<size>".
-- arg: "" (checks), "die" (rank 2 kills its process mid-run), "error" (rank 1
-- raises mid-run), "hang" (rank 1 never calls the barrier; others time out).
return function(c, arg)
  local ffi = require "ffi"
  local tide = require "tide"
  local me, n = c:rank(), c:size()
  local function check(cond, what) if not cond then error(string.format("rank %d: %s", me, what), 2) end end

  -- allreduce on a tensor (in place), f32, and on tables (f64, i64 max)
  local t = tide.zeros({ 3, 5 })
  for i = 1, 3 do for j = 1, 5 do t:set(i, j, me * 100 + i * 10 + j) end end
  assert(c:allreduce(t))
  for i = 1, 3 do for j = 1, 5 do
    check(t:get(i, j) == 100 * n * (n - 1) / 2 + n * (i * 10 + j), "allreduce tensor")
  end end
  local mx = assert(c:allreduce_table({ me, -me }, "max", "i64"))
  check(mx[1] == n - 1 and mx[2] == 0, "allreduce max")

  -- allgather of strings of different lengths
  local all = assert(c:allgather_string(string.rep("x", me) .. me))
  for r = 0, n - 1 do check(all[r + 1] == string.rep("x", r) .. r, "allgather_string") end

  -- alltoallv: rank s sends (s + d) % 3 int32 values (s*1000 + d) to rank d
  local scounts, rcounts, stot, rtot = {}, {}, 0, 0
  for p = 0, n - 1 do
    scounts[p + 1] = ((me + p) % 3) * 4; stot = stot + scounts[p + 1]
    rcounts[p + 1] = ((p + me) % 3) * 4; rtot = rtot + rcounts[p + 1]
  end
  local send = ffi.new("int32_t[?]", stot / 4 + 1)
  local k = 0
  for p = 0, n - 1 do for _ = 1, scounts[p + 1] / 4 do send[k] = me * 1000 + p; k = k + 1 end end
  local recv = ffi.new("int32_t[?]", rtot / 4 + 1)
  local req = assert(c:ialltoallv(send, scounts, recv, rcounts))
  assert(req:wait())
  k = 0
  for p = 0, n - 1 do for _ = 1, rcounts[p + 1] / 4 do check(recv[k] == p * 1000 + me, "alltoallv"); k = k + 1 end end

  -- ring of strings over send/recv
  if n > 1 then
    assert(c:send_string("from " .. me, (me + 1) % n, 3))
    check(assert(c:recv_string((me + n - 1) % n, 3)) == "from " .. (me + n - 1) % n, "ring")
  end

  -- split into even/odd ranks; sum of world ranks inside each
  local sub = assert(c:split(me % 2, me))
  local s = assert(sub:allreduce_table({ me }))[1]
  local e = 0
  for r = me % 2, n - 1, 2 do e = e + r end
  check(s == e and sub:size() == math.ceil((n - me % 2) / 2), "split")
  sub:free()
  check(assert(c:bcast_string(me == 0 and "hello" or "", 0)) == "hello", "bcast")

  -- faults
  if arg == "die" and me == 2 then
    local pid = io.open("/proc/self/stat"):read("*l"):match("^(%d+)")
    os.execute("kill -9 " .. pid)
  end
  if arg == "error" and me == 1 then error("deliberate failure on rank 1") end
  if arg == "hang" then
    c:set_timeout(1)
    if me == 1 then return "skipped" end
  end
  assert(c:barrier())

  local st = c:stats()
  check(st.alltoallv and st.alltoallv.calls == 1 and st.alltoallv.bytes == stot, "stats alltoallv")
  check(st.allreduce.calls >= 3, "stats allreduce")
  return string.format("ok %s %d/%d", c:backend(), me, n)
end
