-- tide.comm: the communicator from Lua (C side: src/comm.h).
--
-- Code that runs on many ranks is a function of a communicator:
--
--   local comm = require "tide.comm"
--   local results = comm.launch(function(c, arg)
--     local t = ...                      -- a contiguous tensor
--     assert(c:allreduce(t))             -- in place, sum over ranks
--     return tostring(c:rank())
--   end, { ranks = 4 })
--
-- Under mpirun (`mpirun -np 4 tide run script.lua`) launch calls the function
-- once, on the MPI world communicator; otherwise it starts `ranks` threads,
-- each with its own Lua state, on the in-process ("local") backend. Because
-- each thread has its own Lua state the function travels as bytecode
-- (string.dump): it must not use upvalues; require what it needs inside.
-- It may also be given as the path of a file that returns the function.
--
-- Methods return true (or a value) on success and nil, message on a runtime
-- failure (a peer failed, a timeout, MPI errors); bad arguments raise.
-- Buffers are contiguous tensors or cdata pointers with a byte count.
local F = require "tide.ffi"
local ffi, C = F.ffi, F.C

local M = {}

local OPS = { sum = C.TIDE_COMM_SUM, max = C.TIDE_COMM_MAX, min = C.TIDE_COMM_MIN }
local DTYPES = { f32 = C.TIDE_DTYPE_F32, f64 = C.TIDE_DTYPE_F64, i32 = C.TIDE_DTYPE_I32, i64 = C.TIDE_DTYPE_I64 }
local CTYPES = { f32 = "float[?]", f64 = "double[?]", i32 = "int32_t[?]", i64 = "int64_t[?]" }
local OP_NAMES = {}
for i = 0, C.TIDE_COMM_OP_COUNT - 1 do OP_NAMES[i] = ffi.string(C.tide_comm_op_name(i)) end
M.op_names = OP_NAMES

local function is_tensor(x) return type(x) == "table" and type(x.cdata) == "function" and type(x.nbytes) == "function" end

local DT_NAMES = { [tonumber(C.TIDE_DTYPE_F32)] = "f32", [tonumber(C.TIDE_DTYPE_F64)] = "f64",
                   [tonumber(C.TIDE_DTYPE_I32)] = "i32", [tonumber(C.TIDE_DTYPE_I64)] = "i64" }

-- (pointer, nbytes, anchor) of a buffer argument: a tensor, or cdata + nbytes.
local function buffer(x, nbytes, what)
  if is_tensor(x) then
    if not x:is_contiguous() then error("comm " .. what .. ": tensor must be contiguous", 3) end
    return x:cdata().data, nbytes or x:nbytes(), x
  end
  if x == nil then
    if nbytes and nbytes > 0 then error("comm " .. what .. ": nil buffer for " .. nbytes .. " bytes", 3) end
    return nil, 0, nil
  end
  if type(x) == "cdata" then
    if not nbytes then error("comm " .. what .. ": a cdata buffer needs a byte count", 3) end
    return ffi.cast("void *", x), nbytes, x
  end
  error("comm " .. what .. ": buffer must be a tensor or cdata, got " .. type(x), 3)
end

local function fail() return nil, F.errmsg() end

-- ---- requests ------------------------------------------------------------------------

local Request = {}
Request.__index = Request

local function request(pp, anchors)
  return setmetatable({ _p = pp[0], _anchors = anchors }, Request)
end

-- Block until done: true, or nil, message.
function Request:wait()
  if not self._p then return true end
  local p = self._p
  self._p = nil
  local rc = C.tide_comm_wait(p, F.err)
  self._anchors = nil
  if rc ~= 0 then return fail() end
  return true
end

-- true when done, false when not yet; nil, message on failure.
function Request:test()
  if not self._p then return true end
  local done = ffi.new("int32_t[1]")
  local rc = C.tide_comm_test(self._p, done, F.err)
  if rc ~= 0 then
    self._p, self._anchors = nil, nil
    return fail()
  end
  if done[0] == 0 then return false end
  self._p, self._anchors = nil, nil
  return true
end

-- ---- communicators ----------------------------------------------------------------------

local Comm = {}
Comm.__index = Comm
M.Comm = Comm

local function wrap(p, owned)
  if owned then p = ffi.gc(p, C.tide_comm_free) end
  return setmetatable({ _p = p }, Comm)
end

-- A communicator from a tide_comm_t pointer or lightuserdata (not owned).
function M.wrap(p) return wrap(ffi.cast("tide_comm_t *", p), false) end

function Comm:rank() return tonumber(C.tide_comm_rank(self._p)) end
function Comm:size() return tonumber(C.tide_comm_size(self._p)) end
function Comm:backend() return ffi.string(C.tide_comm_backend(self._p)) end
function Comm:__tostring()
  return string.format("tide.comm(%s, rank %d of %d)", self:backend(), self:rank(), self:size())
end

-- Blocking waits give up after `seconds` (0 or nil: never).
function Comm:set_timeout(seconds)
  C.tide_comm_set_timeout(self._p, math.floor((seconds or 0) * 1000))
  return self
end

function Comm:barrier()
  if C.tide_comm_barrier(self._p, F.err) ~= 0 then return fail() end
  return true
end

local function reduce_args(x, op, what)
  local o = OPS[op or "sum"]
  if not o then error("comm " .. what .. ": op must be sum, max or min, got " .. tostring(op), 3) end
  if not is_tensor(x) then error("comm " .. what .. ": expects a tensor (or use allreduce_table)", 3) end
  local dt = DT_NAMES[tonumber(x:cdata().dtype)]
  if not dt then error("comm " .. what .. ": dtype " .. tostring(x:dtype()) .. " is not f32, f64, i32 or i64", 3) end
  local p = buffer(x, nil, what)
  return p, x:numel(), DTYPES[dt], o
end

-- In place over a contiguous f32/f64/i32/i64 tensor. Returns x.
function Comm:allreduce(x, op)
  local p, n, dt, o = reduce_args(x, op, "allreduce")
  if C.tide_comm_allreduce(self._p, p, p, n, dt, o, F.err) ~= 0 then return fail() end
  return x
end

function Comm:iallreduce(x, op)
  local p, n, dt, o = reduce_args(x, op, "iallreduce")
  local pp = ffi.new("tide_comm_req_t *[1]")
  if C.tide_comm_iallreduce(self._p, p, p, n, dt, o, pp, F.err) ~= 0 then return fail() end
  return request(pp, { x })
end

-- Reduce a Lua array of numbers; dtype "f64" (default), "f32", "i32", "i64".
-- Returns a new array.
function Comm:allreduce_table(values, op, dtype)
  dtype = dtype or "f64"
  local ct = CTYPES[dtype]
  if not ct then error("comm allreduce_table: dtype must be f32, f64, i32 or i64", 2) end
  local o = OPS[op or "sum"]
  if not o then error("comm allreduce_table: op must be sum, max or min", 2) end
  local n = #values
  local buf = ffi.new(ct, math.max(n, 1))
  for i = 1, n do buf[i - 1] = values[i] end
  if C.tide_comm_allreduce(self._p, buf, buf, n, DTYPES[dtype], o, F.err) ~= 0 then return fail() end
  local out = {}
  for i = 1, n do out[i] = tonumber(buf[i - 1]) end
  return out
end

-- Every rank's `nbytes` from send (tensor or cdata) into recv (size * nbytes).
function Comm:allgather(send, recv, nbytes)
  local sp, n = buffer(send, nbytes, "allgather")
  local rp, rn = buffer(recv, recv and not is_tensor(recv) and n * self:size() or nil, "allgather")
  if rn < n * self:size() then error("comm allgather: receive buffer is too small", 2) end
  if C.tide_comm_allgather(self._p, sp, rp, n, F.err) ~= 0 then return fail() end
  return recv
end

-- Every rank's string, as an array indexed by rank + 1.
function Comm:allgather_string(s)
  s = tostring(s)
  local len = self:allreduce_table({ #s }, "max", "i64")
  if not len then return fail() end
  local m = len[1] + 8
  local send = ffi.new("uint8_t[?]", m)
  ffi.cast("int64_t *", send)[0] = #s
  ffi.copy(send + 8, s, #s)
  local n = self:size()
  local recv = ffi.new("uint8_t[?]", m * n)
  if C.tide_comm_allgather(self._p, send, recv, m, F.err) ~= 0 then return fail() end
  local out = {}
  for r = 0, n - 1 do
    local base = recv + r * m
    out[r + 1] = ffi.string(base + 8, tonumber(ffi.cast("int64_t *", base)[0]))
  end
  return out
end

local function i64_array(t, n, what)
  if type(t) ~= "table" or #t ~= n then error("comm " .. what .. ": expected " .. n .. " entries", 4) end
  local a = ffi.new("int64_t[?]", n)
  for i = 1, n do a[i - 1] = t[i] end
  return a
end

local function prefix(counts, n)
  local d, acc = {}, 0
  for i = 1, n do d[i] = acc; acc = acc + counts[i] end
  return d
end

local function a2a_args(self, send, scounts, recv, rcounts, sdispls, rdispls, what)
  local n = self:size()
  sdispls = sdispls or prefix(scounts, n)
  rdispls = rdispls or prefix(rcounts, n)
  local sc, sd = i64_array(scounts, n, what), i64_array(sdispls, n, what)
  local rc, rd = i64_array(rcounts, n, what), i64_array(rdispls, n, what)
  local smax, rmax = 0, 0
  for i = 1, n do
    if scounts[i] > 0 then smax = math.max(smax, sdispls[i] + scounts[i]) end
    if rcounts[i] > 0 then rmax = math.max(rmax, rdispls[i] + rcounts[i]) end
  end
  local sp, sn = buffer(send, not is_tensor(send) and smax or nil, what)
  local rp, rn = buffer(recv, not is_tensor(recv) and rmax or nil, what)
  if sn < smax or rn < rmax then error("comm " .. what .. ": buffer smaller than counts + displacements", 3) end
  return sp, sc, sd, rp, rc, rd
end

-- Bytes per peer (Lua arrays indexed by peer + 1); displacements default to
-- the prefix sums of the counts. Buffers: tensors or cdata.
function Comm:alltoallv(send, scounts, recv, rcounts, sdispls, rdispls)
  local sp, sc, sd, rp, rc, rd = a2a_args(self, send, scounts, recv, rcounts, sdispls, rdispls, "alltoallv")
  if C.tide_comm_alltoallv(self._p, sp, sc, sd, rp, rc, rd, F.err) ~= 0 then return fail() end
  return recv
end

function Comm:ialltoallv(send, scounts, recv, rcounts, sdispls, rdispls)
  local sp, sc, sd, rp, rc, rd = a2a_args(self, send, scounts, recv, rcounts, sdispls, rdispls, "ialltoallv")
  local pp = ffi.new("tide_comm_req_t *[1]")
  if C.tide_comm_ialltoallv(self._p, sp, sc, sd, rp, rc, rd, pp, F.err) ~= 0 then return fail() end
  return request(pp, { send, recv, sc, sd, rc, rd })
end

function Comm:bcast(buf, root, nbytes)
  local p, n = buffer(buf, nbytes, "bcast")
  if C.tide_comm_bcast(self._p, p, n, root or 0, F.err) ~= 0 then return fail() end
  return buf
end

-- root's string on every rank.
function Comm:bcast_string(s, root)
  root = root or 0
  local len = ffi.new("int64_t[1]", self:rank() == root and #s or 0)
  if C.tide_comm_bcast(self._p, len, 8, root, F.err) ~= 0 then return fail() end
  local n = tonumber(len[0])
  local buf = ffi.new("uint8_t[?]", math.max(n, 1))
  if self:rank() == root then ffi.copy(buf, s, n) end
  if C.tide_comm_bcast(self._p, buf, n, root, F.err) ~= 0 then return fail() end
  return ffi.string(buf, n)
end

function Comm:send(buf, dest, tag, nbytes)
  local p, n = buffer(buf, nbytes, "send")
  if C.tide_comm_send(self._p, p, n, dest, tag or 0, F.err) ~= 0 then return fail() end
  return true
end

function Comm:recv(buf, src, tag, nbytes)
  local p, n = buffer(buf, nbytes, "recv")
  if C.tide_comm_recv(self._p, p, n, src, tag or 0, F.err) ~= 0 then return fail() end
  return buf
end

function Comm:isend(buf, dest, tag, nbytes)
  local p, n = buffer(buf, nbytes, "isend")
  local pp = ffi.new("tide_comm_req_t *[1]")
  if C.tide_comm_isend(self._p, p, n, dest, tag or 0, pp, F.err) ~= 0 then return fail() end
  return request(pp, { buf })
end

function Comm:irecv(buf, src, tag, nbytes)
  local p, n = buffer(buf, nbytes, "irecv")
  local pp = ffi.new("tide_comm_req_t *[1]")
  if C.tide_comm_irecv(self._p, p, n, src, tag or 0, pp, F.err) ~= 0 then return fail() end
  return request(pp, { buf })
end

-- Strings over send/recv: the length, then the bytes (two messages on `tag`).
function Comm:send_string(s, dest, tag)
  local len = ffi.new("int64_t[1]", #s)
  local ok, err = self:send(len, dest, tag, 8)
  if not ok then return nil, err end
  return self:send(ffi.cast("const char *", s), dest, tag, #s)
end

function Comm:recv_string(src, tag)
  local len = ffi.new("int64_t[1]")
  local ok, err = self:recv(len, src, tag, 8)
  if not ok then return nil, err end
  local n = tonumber(len[0])
  local buf = ffi.new("uint8_t[?]", math.max(n, 1))
  ok, err = self:recv(buf, src, tag, n)
  if not ok then return nil, err end
  return ffi.string(buf, n)
end

-- Ranks with the same color form a new communicator ordered by (key, rank).
-- color nil or negative: this rank joins none (returns false).
function Comm:split(color, key)
  local pp = ffi.new("tide_comm_t *[1]")
  local col = (color == nil or color < 0) and C.TIDE_COMM_UNDEFINED or color
  if C.tide_comm_split(self._p, col, key or self:rank(), pp, F.err) ~= 0 then return fail() end
  if pp[0] == nil then return false end
  return wrap(pp[0], true)
end

-- { op_name = { calls =, bytes =, ns =, span_ns =, cpu_ns = } } for ops called at
-- least once (cpu_ns: this thread's CPU time inside the calls; ns - cpu_ns
-- was spent asleep waiting for peers).
function Comm:stats()
  local s = ffi.new("tide_comm_stats_t")
  C.tide_comm_stats(self._p, s)
  local out = {}
  for i = 0, C.TIDE_COMM_OP_COUNT - 1 do
    if s.calls[i] > 0 then
      out[OP_NAMES[i]] = { calls = tonumber(s.calls[i]), bytes = tonumber(s.bytes[i]), ns = tonumber(s.ns[i]),
                           span_ns = tonumber(s.span_ns[i]), cpu_ns = tonumber(s.cpu_ns[i]) }
    end
  end
  return out
end

function Comm:stats_reset() C.tide_comm_stats_reset(self._p) return self end

-- CPU seconds of the calling thread so far (the clock of stats().cpu_ns).
function M.thread_cpu() return tonumber(C.tide_comm_thread_cpu_ns()) * 1e-9 end

-- Free a split or MPI communicator now (safe twice; a local world comm is
-- owned by its group).
function Comm:free()
  if self._p then
    local p = self._p
    self._p = nil
    ffi.gc(p, nil)
    C.tide_comm_free(p)
  end
end

-- ---- MPI ---------------------------------------------------------------------------------

-- True when this process was started by mpirun (Open MPI, or a PMI launcher).
function M.in_mpi_job()
  return os.getenv("OMPI_COMM_WORLD_SIZE") ~= nil or os.getenv("PMI_SIZE") ~= nil or os.getenv("PMIX_RANK") ~= nil
end

local mpi_state = {} -- per Lua state: the world communicator and the finalizer

-- The MPI world communicator (MPI is initialised on the first call).
function M.world()
  if mpi_state.world then return mpi_state.world end
  local pp = ffi.new("tide_comm_t *[1]")
  if C.tide_comm_mpi_world(pp, F.err) ~= 0 then return fail() end
  -- The world comm has no finalizer of its own: the sentinel frees it, then
  -- finalizes MPI, when this Lua state closes (finalizers run in no set order).
  local world = wrap(pp[0], false)
  mpi_state.world = world
  mpi_state.sentinel = ffi.gc(ffi.new("char[1]"), function()
    world:free()
    C.tide_comm_mpi_finalize(nil)
  end)
  return mpi_state.world
end

-- Free the world communicator and finalize MPI (idempotent).
function M.finalize()
  if mpi_state.world then mpi_state.world:free() mpi_state.world = nil end
  if mpi_state.sentinel then ffi.gc(mpi_state.sentinel, nil) mpi_state.sentinel = nil end
  if C.tide_comm_mpi_finalize(F.err) ~= 0 then return fail() end
  return true
end

-- ---- running a function on ranks ------------------------------------------------------------

-- Packs what a rank thread needs into one string: kind ("fn"/"path"),
-- payload, user argument, timeout in ms.
local function pack(kind, payload, arg, timeout_ms)
  return string.format("%s %d %d %d\n", kind, #payload, #arg, timeout_ms) .. payload .. arg
end

local function unpack_packet(s)
  local kind, np, na, tmo, rest = s:match("^(%a+) (%d+) (%d+) (%d+)\n()")
  np, na = tonumber(np), tonumber(na)
  return kind, s:sub(rest, rest + np - 1), s:sub(rest + np, rest + np + na - 1), tonumber(tmo)
end

local function load_fn(kind, payload)
  if kind == "path" then
    local chunk, err = loadfile(payload)
    if not chunk then error(err, 0) end
    local fn = chunk()
    if type(fn) ~= "function" then error(payload .. " did not return a function", 0) end
    return fn
  end
  local fn, err = loadstring(payload, "=rank function")
  if not fn then error(err, 0) end
  return fn
end

-- Entry of a rank thread (called through the bootstrap chunk below).
function M._rank_main(lud, packet)
  local kind, payload, arg, tmo = unpack_packet(packet)
  local c = M.wrap(lud)
  if tmo > 0 then c:set_timeout(tmo / 1000) end
  local fn = load_fn(kind, payload)
  local res = fn(c, arg)
  if res ~= nil then return tostring(res) end
end

local BOOT = "return function(lud, packet) return require('tide.comm')._rank_main(lud, packet) end"

local function fn_packet(fn, arg, timeout)
  local kind, payload
  if type(fn) == "function" then
    local up = debug.getupvalue(fn, 1)
    if up then
      error("comm: a rank function runs in a fresh Lua state and cannot use upvalues (it uses '" .. up
        .. "'); require what it needs inside it", 3)
    end
    kind, payload = "fn", string.dump(fn)
  elseif type(fn) == "string" then kind, payload = "path", fn
  else error("comm: expected a function or a file path, got " .. type(fn), 3) end
  return pack(kind, payload, arg ~= nil and tostring(arg) or "", math.floor((timeout or 0) * 1000))
end

-- Run fn(comm, arg) on n threads (the local backend). Returns an array of
-- what each rank returned (as strings; nil entries for none), or nil and the
-- first failure ("rank R: message"). opts.timeout: seconds for blocking waits;
-- opts.link = { latency_us =, gbs = }: an emulated network link (collectives'
-- data arrives latency + bytes / (gbs GB/s) after the last post, without CPU).
function M.local_group(n, fn, arg, opts)
  if type(n) ~= "number" or n < 1 or n ~= math.floor(n) then error("comm.local_group: n must be a positive integer", 2) end
  local packet = fn_packet(fn, arg, opts and opts.timeout)
  local pp = ffi.new("tide_comm_local_t *[1]")
  if C.tide_comm_local_new(n, pp, F.err) ~= 0 then return fail() end
  local ctx = pp[0]
  local link = opts and opts.link
  if link then
    -- emulated link for measurements (comm.h: tide_comm_local_set_link)
    local lat, gbs = (link.latency_us or 0) * 1000, link.gbs or 0
    if C.tide_comm_local_set_link(ctx, lat, gbs, F.err) ~= 0 then
      C.tide_comm_local_free(ctx)
      return fail()
    end
  end
  local results = ffi.new("char *[?]", n)
  local rc = C.tide_comm_local_run_lua(ctx, package.path, BOOT, #BOOT, 0, packet, #packet, results, F.err)
  local out = {}
  for r = 0, n - 1 do
    if results[r] ~= nil then
      out[r + 1] = ffi.string(results[r])
      C.tide_comm_string_free(results[r])
    end
  end
  C.tide_comm_local_free(ctx)
  if rc ~= 0 then return fail() end
  return out
end

-- Run fn(comm, arg) on every rank: once per process on the MPI world under
-- mpirun, else on opts.ranks threads (default 1). opts.arg, opts.timeout
-- (seconds). Returns the per-rank results this process saw (all ranks with
-- threads, its own under MPI, at index rank + 1), or nil, message. Under MPI
-- a failing rank prints "tide: rank R of N failed: ..." and ends the whole
-- job (MPI_Abort): peers would otherwise wait for it forever.
function M.launch(fn, opts)
  opts = opts or {}
  if M.in_mpi_job() and not opts.threads then
    local world, err = M.world()
    if not world then return nil, err end
    if opts.timeout then world:set_timeout(opts.timeout) end
    local ok, res = xpcall(function()
      local f = type(fn) == "string" and load_fn("path", fn) or fn
      return f(world, opts.arg ~= nil and tostring(opts.arg) or "")
    end, debug.traceback)
    if not ok then
      io.stderr:write(string.format("tide: rank %d of %d failed: %s\n", world:rank(), world:size(), tostring(res)))
      io.stderr:flush()
      C.tide_comm_mpi_abort(world._p, 1)
    end
    local out = {}
    out[world:rank() + 1] = res ~= nil and tostring(res) or nil
    return out
  end
  return M.local_group(opts.ranks or 1, fn, opts.arg, opts)
end

return M
