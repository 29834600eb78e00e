-- tide.profile: where the time of a piece of work goes, op by op.
--
--   local rep = tide.profile(function(span) span("decode step", model.step, model, ...) end)
--   rep:print()                      -- per op type and per layer: calls, ms, share, GB/s, GFLOP/s
--   rep:write_trace("trace.json")    -- Chrome trace-event JSON (Perfetto, chrome://tracing)
--
-- While fn runs, every entry of tide.tensor's `op` table is wrapped with a
-- CLOCK_MONOTONIC timer (the model code calls the kernels through it), the
-- decoder-layer function (tide.models.llama.layer_forward, which
-- DeepSeek-V3 shares) marks the current layer, and tide.comm's collectives
-- are timed as "comm.*" ops. Bytes are those of the op's tensors (the
-- weight's stored size for matmuls, so quantized weights count as stored);
-- FLOPs are counted for matmuls (2*M*N*K). Time outside any op is reported
-- as "lua/other" = wall - sum(ops), so the accounting always adds up and
-- says how much of it the kernels explain.
--
-- Kernels run on the calling thread and hand work to the pool's workers
-- inside C, so the trace has one lane per calling thread (tid 0 here; one
-- pid per rank when traces of several ranks are merged with M.merge).
local ffi = require "ffi"
local T = require "tide.tensor"
local C = ffi.C

local M = {}
local Report = {}
Report.__index = Report

local function nbytes(t)
  if type(t) ~= "table" or not t._p then return 0 end
  return tonumber(C.tide_tensor_nbytes(t._p))
end

local function mm_flops(out, a)
  if type(out) ~= "table" or not out._p or type(a) ~= "table" or not a._p then return 0 end
  local o, x = out._p, a._p
  local K = tonumber(x.shape[x.ndim - 1])
  local MN = tonumber(C.tide_tensor_numel(o))
  return 2 * MN * K
end

-- bytes and flops of one call of op `name` with its arguments
local function cost(name, a1, a2, a3)
  if name == "matmul" then return nbytes(a1) + nbytes(a2) + nbytes(a3), mm_flops(a1, a2) end
  if name == "rope" or name == "kv_store" then return 2 * nbytes(a1) + (name == "kv_store" and nbytes(a2) or 0), 0 end
  if name == "get_rows" then return 2 * nbytes(a1), 0 end
  if name == "topk" then return nbytes(a3), 0 end
  if name == "attention" then return nbytes(a1) + nbytes(a2), 0 end -- the cache reads depend on the batch: not counted
  return nbytes(a1) + nbytes(a2) + (type(a3) == "table" and nbytes(a3) or 0), 0
end

-- Collectives and point-to-point calls timed as "comm.*" (for the nonblocking
-- ones, the time to post the call; the wait shows up in the op that waits).
local COMM = { "barrier", "allreduce", "iallreduce", "allreduce_table", "allgather", "allgather_string", "alltoallv",
  "ialltoallv", "bcast", "bcast_string", "send", "recv", "isend", "irecv", "send_string", "recv_string" }

-- run(fn, opts) -> report, fn's results. opts: max_events (200000), pid (0), name, origin (seconds)
function M.run(fn, opts)
  opts = opts or {}
  local max_events = opts.max_events or 200000
  local events, stats, layers = {}, {}, {}
  local cur_layer = nil
  local ops_ev = { n = 0, name = {}, cat = {}, t0 = {}, d = {}, layer = {}, bytes = {}, flops = {} }
  local overhead = { 0 } -- seconds the profiler's own bookkeeping took (reported, not hidden in lua/other)
  local t_origin = opts.origin or T.now() -- origin = 0: absolute CLOCK_MONOTONIC (ranks of one machine line up)
  local plain = {}
  local function record(name, t0, t1, b, f, cat)
    local s = stats[name]
    if not s then s = { calls = 0, seconds = 0, bytes = 0, flops = 0 } stats[name] = s end
    local d = t1 - t0
    s.calls, s.seconds, s.bytes, s.flops = s.calls + 1, s.seconds + d, s.bytes + b, s.flops + f
    if cur_layer then
      local l = layers[cur_layer]
      l.op_seconds, l.bytes, l.flops = l.op_seconds + d, l.bytes + b, l.flops + f
    end
    local n = ops_ev.n
    if n < max_events then
      -- flat arrays: cheaper than a table per event
      n = n + 1
      ops_ev.n, ops_ev.name[n], ops_ev.cat[n], ops_ev.t0[n], ops_ev.d[n] = n, name, cat or "op", t0, d
      ops_ev.layer[n], ops_ev.bytes[n], ops_ev.flops[n] = cur_layer or 0, b, f
    end
  end
  for name, f in pairs(T.op) do
    plain[name] = f
    T.op[name] = function(a1, a2, a3, a4, a5, a6)
      local t0 = T.now()
      local r1, r2 = f(a1, a2, a3, a4, a5, a6)
      local t1 = T.now()
      local b, fl = cost(name, a1, a2, a3)
      record(name, t0, t1, b, fl)
      overhead[1] = overhead[1] + (T.now() - t1)
      return r1, r2
    end
  end
  -- layers
  local okl, llama = pcall(require, "tide.models.llama")
  local plain_layer = okl and llama.layer_forward
  if plain_layer then
    llama.layer_forward = function(ctx, L, i, x)
      local prev = cur_layer
      cur_layer = i
      layers[i] = layers[i] or { layer = i, seconds = 0, op_seconds = 0, bytes = 0, flops = 0, calls = 0 }
      local t0 = T.now()
      local r1, r2 = plain_layer(ctx, L, i, x)
      local t1 = T.now()
      local l = layers[i]
      l.seconds, l.calls = l.seconds + (t1 - t0), l.calls + 1
      cur_layer = prev
      if #events < max_events then
        events[#events + 1] = { name = "layer " .. (i - 1), cat = "layer", ts = (t0 - t_origin) * 1e6, dur = (t1 - t0) * 1e6 }
      end
      return r1, r2
    end
  end
  -- communication
  local okc, comm = pcall(require, "tide.comm")
  local plain_comm = {}
  if okc and comm.Comm then
    for _, name in ipairs(COMM) do
      local f = comm.Comm[name]
      if f then
        plain_comm[name] = f
        comm.Comm[name] = function(self, ...)
          local t0 = T.now()
          local r1, r2, r3 = f(self, ...)
          record("comm." .. name, t0, T.now(), 0, 0, "comm")
          return r1, r2, r3
        end
      end
    end
  end
  local function restore()
    for name, f in pairs(plain) do T.op[name] = f end
    if plain_layer then llama.layer_forward = plain_layer end
    for name, f in pairs(plain_comm) do comm.Comm[name] = f end
  end
  -- span(name, f, ...): time f(...) as a named span on the trace (e.g. "decode step")
  local spans = {}
  local function span(name, f, ...)
    local s0 = T.now()
    local r1, r2, r3 = f(...)
    local s1 = T.now()
    local sp = spans[name] or { calls = 0, seconds = 0 }
    spans[name] = sp
    sp.calls, sp.seconds = sp.calls + 1, sp.seconds + (s1 - s0)
    if #events < max_events then
      events[#events + 1] = { name = name, cat = "span", ts = (s0 - t_origin) * 1e6, dur = (s1 - s0) * 1e6 }
    end
    return r1, r2, r3
  end
  local t0 = T.now()
  local res = { pcall(fn, span) }
  local wall = T.now() - t0
  restore()
  if not res[1] then error(res[2], 0) end
  for k = 1, ops_ev.n do
    if #events >= max_events then break end
    events[#events + 1] = { name = ops_ev.name[k], cat = ops_ev.cat[k], ts = (ops_ev.t0[k] - t_origin) * 1e6,
      dur = ops_ev.d[k] * 1e6, layer = ops_ev.layer[k] > 0 and ops_ev.layer[k] or nil, bytes = ops_ev.bytes[k],
      flops = ops_ev.flops[k] }
  end
  table.sort(events, function(a, b) return a.ts < b.ts end)
  local rep = setmetatable({ wall = wall, stats = stats, layers = layers, events = events, spans = spans, overhead = overhead[1], pid = opts.pid or 0,
    name = opts.name or "tide", t_start = (t0 - t_origin) * 1e6, dropped = 0 }, Report)
  rep:summarize()
  return rep, unpack(res, 2)
end

function Report:summarize()
  local ops, sum = {}, 0
  for name, s in pairs(self.stats) do
    ops[#ops + 1] = { name = name, calls = s.calls, seconds = s.seconds, bytes = s.bytes, flops = s.flops,
      gbps = s.bytes > 0 and s.bytes / s.seconds / 1e9 or nil, gflops = s.flops > 0 and s.flops / s.seconds / 1e9 or nil }
    sum = sum + s.seconds
  end
  table.sort(ops, function(a, b) return a.seconds > b.seconds end)
  local prof = math.min(self.overhead or 0, math.max(0, self.wall - sum))
  local other = math.max(0, self.wall - sum - prof)
  ops[#ops + 1] = { name = "profiler", calls = 0, seconds = prof, bytes = 0, flops = 0 }
  ops[#ops + 1] = { name = "lua/other", calls = 0, seconds = other, bytes = 0, flops = 0 }
  self.ops, self.op_seconds, self.other_seconds, self.profiler_seconds = ops, sum, other, prof
  self.ops_share = self.wall > 0 and sum / self.wall or 0
  self.accounted = self.wall > 0 and (sum + prof + other) / self.wall or 0
  local ls = {}
  for _, l in pairs(self.layers) do ls[#ls + 1] = l end
  table.sort(ls, function(a, b) return a.layer < b.layer end)
  self.layer_list = ls
  return self
end

function Report:text(top)
  local o = {}
  local w = math.max(self.wall, 1e-12)
  o[#o + 1] = string.format("wall %.3f ms = ops %.3f ms (%.1f%%) + profiler %.3f ms (%.1f%%) + lua/other %.3f ms (%.1f%%); accounted %.1f%%",
    self.wall * 1e3, self.op_seconds * 1e3, 100 * self.ops_share, self.profiler_seconds * 1e3,
    100 * self.profiler_seconds / w, self.other_seconds * 1e3, 100 * self.other_seconds / w, 100 * self.accounted)
  o[#o + 1] = string.format("%-16s %8s %10s %7s %9s %9s", "op", "calls", "ms", "share", "GB/s", "GFLOP/s")
  for i, r in ipairs(self.ops) do
    if top and i > top and r.name ~= "lua/other" and r.name ~= "profiler" then goto continue end
    o[#o + 1] = string.format("%-16s %8d %10.3f %6.1f%% %9s %9s", r.name, r.calls, r.seconds * 1e3,
      100 * r.seconds / math.max(self.wall, 1e-12), r.gbps and string.format("%.2f", r.gbps) or "-",
      r.gflops and string.format("%.2f", r.gflops) or "-")
    ::continue::
  end
  if #self.layer_list > 0 then
    o[#o + 1] = string.format("%-8s %8s %10s %10s %7s %9s", "layer", "calls", "ms", "ops ms", "share", "GFLOP/s")
    for _, l in ipairs(self.layer_list) do
      o[#o + 1] = string.format("%-8d %8d %10.3f %10.3f %6.1f%% %9s", l.layer - 1, l.calls, l.seconds * 1e3,
        l.op_seconds * 1e3, 100 * l.seconds / math.max(self.wall, 1e-12),
        l.flops > 0 and string.format("%.2f", l.flops / math.max(l.op_seconds, 1e-12) / 1e9) or "-")
    end
  end
  return table.concat(o, "\n")
end

function Report:print(top) print(self:text(top)) end

local function jstr(s) return '"' .. tostring(s):gsub('[%c"\\]', function(c) return string.format("\\u%04x", c:byte()) end) .. '"' end

-- trace events as JSON strings (one per event), for this report's pid
function Report:trace_events()
  local ev = {}
  local pid = self.pid
  ev[#ev + 1] = string.format('{"name":"process_name","ph":"M","pid":%d,"tid":0,"args":{"name":%s}}', pid, jstr(self.name))
  ev[#ev + 1] = string.format('{"name":"thread_name","ph":"M","pid":%d,"tid":0,"args":{"name":"main"}}', pid)
  ev[#ev + 1] = string.format('{"name":"profile","cat":"run","ph":"X","ts":%.3f,"dur":%.3f,"pid":%d,"tid":0}',
    self.t_start, self.wall * 1e6, pid)
  for _, e in ipairs(self.events) do
    local args = ""
    if e.cat == "op" or e.cat == "comm" then
      args = string.format(',"args":{"bytes":%d,"flops":%d%s}', e.bytes or 0, e.flops or 0,
        e.layer and string.format(',"layer":%d', e.layer - 1) or "")
    end
    ev[#ev + 1] = string.format('{"name":%s,"cat":%s,"ph":"X","ts":%.3f,"dur":%.3f,"pid":%d,"tid":0%s}',
      jstr(e.name), jstr(e.cat), e.ts, e.dur, pid, args)
  end
  return ev
end

local function write(path, s)
  local f, e = io.open(path, "wb")
  if not f then return nil, e end
  f:write(s)
  f:close()
  return true
end

function Report:write_trace(path)
  return write(path, '{"traceEvents":[\n' .. table.concat(self:trace_events(), ",\n") .. '\n],"displayTimeUnit":"ms"}\n')
end

-- merge(reports, path): one trace file, one pid per report (per rank: report.pid = rank)
function M.merge(reports, path)
  local all = {}
  for _, r in ipairs(reports) do for _, e in ipairs(r:trace_events()) do all[#all + 1] = e end end
  return write(path, '{"traceEvents":[\n' .. table.concat(all, ",\n") .. '\n],"displayTimeUnit":"ms"}\n')
end

-- A JSON summary (ops, layers, totals).
function Report:json()
  local J = require("tide.cmd.args").json
  local ops = {}
  for i, r in ipairs(self.ops) do ops[i] = r end
  return J({ wall_s = self.wall, op_seconds = self.op_seconds, other_seconds = self.other_seconds,
    profiler_seconds = self.profiler_seconds,
    ops_share = self.ops_share, accounted = self.accounted, ops = ops, layers = self.layer_list })
end

return M
