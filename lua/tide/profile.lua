-- tide.profile: where the time of a piece of work goes, op by op.
--
--   local rep = tide.profile(function(span, reset)
--     span("decode step", model.step, model, ...)
--   end)
--   rep:print()                      -- per op type and per layer: calls, ms, share, GB/s, GFLOP/s
--   rep:write_trace("trace.json")    -- Chrome trace-event JSON (Perfetto, chrome://tracing)
--
-- While fn runs, every entry of tide.tensor's `op` table is wrapped with a
-- CLOCK_MONOTONIC timer (the model code calls the kernels through it), the
-- decoder-layer function (tide.models.llama.layer_forward, which
-- DeepSeek-V3 shares) marks the current layer, and tide.comm's collectives
-- are timed as "comm.*" ops. Bytes are those of the op's tensors (the
-- weight's stored size for matmuls, so quantized weights count as stored);
-- FLOPs are counted for matmuls (2*M*N*K).
--
-- Accounting. Each op reads the clock twice (when it starts and when it
-- ends); the time from the end of one op to the start of the next is added
-- to "lua/other" as it happens (the first gap starts when fn starts, the
-- last ends when it returns), so ops + lua/other is the wall time by
-- construction, both measured, nothing inferred. Per op the bookkeeping is
-- a few FFI array updates (no table allocation; the counters and the event
-- ring are preallocated FFI arrays), and it runs inside the measured gaps:
-- its cost is estimated after the run (calls x the measured cost of one
-- wrapped call of an empty op) and printed as the part of lua/other that is
-- the profiler's own. span(name, f, ...) times a named span (e.g. one decode
-- step) and splits it the same way; reset() (fn's second argument) zeroes
-- everything, for warm-up inside the profiled function.
--
-- Kernels run on the calling thread and hand work to the pool's workers
-- inside C, so the trace has one lane per calling thread (tid 0 here; one
-- pid per rank when traces of several ranks are merged with M.merge).
local ffi = require "ffi"
local T = require "tide.tensor"
local C = ffi.C
local now = T.now

local M = {}
local Report = {}
Report.__index = Report

local MAX_LAYERS = 1024
local NF = 4 -- per-id counters: calls, seconds, bytes, flops

local function nb(t)
  if type(t) ~= "table" then return 0 end
  local p = t._p
  if p == nil then return 0 end
  return tonumber(C.tide_tensor_nbytes(p))
end

-- bytes and flops of one call, by op (chosen once, when the op is wrapped)
local COST = {
  matmul = function(out, a, b)
    if type(out) ~= "table" or type(a) ~= "table" or out._p == nil or a._p == nil then return nb(out) + nb(a) + nb(b), 0 end
    local x = a._p
    return nb(out) + nb(a) + nb(b), 2 * tonumber(C.tide_tensor_numel(out._p)) * tonumber(x.shape[x.ndim - 1])
  end,
  -- routed experts: y (rows, dim), x (rows, dim), g/u (rows, inter): gate, up, down per row
  moe_experts = function(y, x, g)
    if type(x) ~= "table" or type(g) ~= "table" or x._p == nil or g._p == nil then return nb(y) + nb(x), 0 end
    local xp = x._p
    return nb(y) + nb(x) + 2 * nb(g), 6 * tonumber(C.tide_tensor_numel(g._p)) * tonumber(xp.shape[xp.ndim - 1])
  end,
  rope = function(x) return 2 * nb(x), 0 end,                -- in place: read + write x
  kv_store = function(_, src) return 2 * nb(src), 0 end,     -- src rows read, written into the cache
  get_rows = function(out) return 2 * nb(out), 0 end,        -- rows read + written
  topk = function(_, _, x) return nb(x), 0 end,
  attention = function(out, q) return nb(out) + nb(q), 0 end, -- cache reads depend on the batch: not counted
}
COST.matmul_heads = COST.matmul -- out (G, M, N), a (G, M, K): 2*G*M*N*K
local function cost_default(a1, a2, a3) return nb(a1) + nb(a2) + nb(a3), 0 end

-- Collectives and point-to-point calls timed as "comm.*" (for the nonblocking
-- ones, the time to post the call; the wait shows up in the op that waits).
local COMM = { "barrier", "allreduce", "iallreduce", "allreduce_table", "allgather", "allgather_string", "alltoallv",
  "ialltoallv", "bcast", "bcast_string", "send", "recv", "isend", "irecv", "send_string", "recv_string" }

M.COMM_CALLS = COMM

-- A recorder: preallocated counters and event ring, and the op wrappers that
-- fill them. Everything mutable lives in this closure (one per profile run).
local function recorder(max_events, n_ids)
  local acc = ffi.new("double[?]", n_ids * NF)              -- (n_ids, 4): calls, seconds, bytes, flops
  local lacc = ffi.new("double[?]", (MAX_LAYERS + 1) * 5)   -- (layer, 5): calls, seconds, op seconds, bytes, flops
  local ev_t0 = ffi.new("double[?]", max_events)            -- (max_events,) start, seconds (CLOCK_MONOTONIC)
  local ev_d = ffi.new("double[?]", max_events)             -- (max_events,) duration, seconds
  local ev_id = ffi.new("int32_t[?]", max_events)           -- (max_events,) op id, or -1 for a layer
  local ev_layer = ffi.new("int32_t[?]", max_events)        -- (max_events,) 1-based layer or 0
  local ev_b = ffi.new("double[?]", max_events)             -- (max_events,) bytes
  local ev_f = ffi.new("double[?]", max_events)             -- (max_events,) flops
  local n_ev, dropped, cur_layer = 0, 0, 0
  local last, gap, op_total, op_calls = 0, 0, 0, 0
  local r = {}

  local function event(id, t0, d, layer, b, f)
    local n = n_ev
    if n < max_events then
      ev_t0[n], ev_d[n], ev_id[n], ev_layer[n], ev_b[n], ev_f[n] = t0, d, id, layer, b, f
      n_ev = n + 1
    else
      dropped = dropped + 1
    end
  end

  -- the op wrapper: two clock reads, the gap since the previous op, counters, one event
  function r.wrap(id, f, costf)
    local k = id * NF
    return function(a1, a2, a3, a4, a5, a6, a7, a8, a9, a10)
      local t0 = now()
      local r1, r2 = f(a1, a2, a3, a4, a5, a6, a7, a8, a9, a10)
      local t1 = now()
      local d = t1 - t0
      gap = gap + (t0 - last)
      last = t1
      local b, fl = costf(a1, a2, a3)
      acc[k], acc[k + 1], acc[k + 2], acc[k + 3] = acc[k] + 1, acc[k + 1] + d, acc[k + 2] + b, acc[k + 3] + fl
      op_total, op_calls = op_total + d, op_calls + 1
      local l = cur_layer
      if l > 0 then
        local j = l * 5
        lacc[j + 2], lacc[j + 3], lacc[j + 4] = lacc[j + 2] + d, lacc[j + 3] + b, lacc[j + 4] + fl
      end
      event(id, t0, d, l, b, fl)
      return r1, r2
    end
  end
  -- the same for methods with any arguments (comm calls)
  function r.wrap_varg(id, f)
    local k = id * NF
    return function(...)
      local t0 = now()
      local r1, r2, r3 = f(...)
      local t1 = now()
      local d = t1 - t0
      gap = gap + (t0 - last)
      last = t1
      acc[k], acc[k + 1] = acc[k] + 1, acc[k + 1] + d
      op_total, op_calls = op_total + d, op_calls + 1
      local l = cur_layer
      if l > 0 then lacc[l * 5 + 2] = lacc[l * 5 + 2] + d end
      event(id, t0, d, l, 0, 0)
      return r1, r2, r3
    end
  end
  -- the decoder-layer wrapper: marks the current layer
  function r.wrap_layer(f)
    return function(ctx, L, i, x)
      local prev = cur_layer
      local li = (i >= 1 and i <= MAX_LAYERS) and i or 0
      cur_layer = li
      local t0 = now()
      local r1, r2 = f(ctx, L, i, x)
      local d = now() - t0
      cur_layer = prev
      local j = li * 5
      lacc[j], lacc[j + 1] = lacc[j] + 1, lacc[j + 1] + d
      event(-1, t0, d, li, 0, 0)
      return r1, r2
    end
  end
  function r.start(t) last, gap, op_total, op_calls = t, 0, 0, 0 end
  function r.finish(t) gap = gap + (t - last) last = t end
  function r.totals() return op_total, op_calls, gap, last end
  function r.reset(t)
    ffi.fill(acc, ffi.sizeof("double") * n_ids * NF)
    ffi.fill(lacc, ffi.sizeof("double") * (MAX_LAYERS + 1) * 5)
    n_ev, dropped = 0, 0
    r.start(t)
  end
  function r.data()
    return { acc = acc, lacc = lacc, n = n_ev, dropped = dropped, t0 = ev_t0, d = ev_d, id = ev_id, layer = ev_layer,
      b = ev_b, f = ev_f }
  end
  return r
end

-- Seconds one wrapped call adds over a plain call, from rounds of n wrapped
-- calls (tw) and n plain calls (tp) of an empty op: the fastest round of each,
-- then the difference. A minimum is robust to a burst of load in one round;
-- the minimum of per-round differences is not (a burst in a plain round made
-- it 0 or negative).
function M.per_call_cost(tw, tp, n)
  local bw, bp = math.huge, math.huge
  for i = 1, #tw do bw = math.min(bw, tw[i]) end
  for i = 1, #tp do bp = math.min(bp, tp[i]) end
  return math.max((bw - bp) / n, 0)
end

local function calibrate()
  local rec = recorder(2048, 1)
  local x = T.zeros({ 4 })
  local function noop(a) return a end
  local w = rec.wrap(0, noop, cost_default)
  rec.start(now())
  local tw, tp = {}, {}
  for r = 1, 7 do
    local t0 = now()
    for _ = 1, 1000 do w(x, x, x) end
    local t1 = now()
    for _ = 1, 1000 do noop(x, x, x) end
    local t2 = now()
    tw[r], tp[r] = t1 - t0, t2 - t1
    rec.reset(now())
  end
  return M.per_call_cost(tw, tp, 1000)
end

-- run(fn, opts) -> report, fn's results. fn(span, reset).
-- opts: max_events (200000), pid (0), name, origin (seconds; 0 = absolute CLOCK_MONOTONIC)
function M.run(fn, opts)
  opts = opts or {}
  local max_events = opts.max_events or 200000
  local names, cats = {}, {}
  for name in pairs(T.op) do names[#names + 1] = name end
  table.sort(names)
  for i = 1, #names do cats[i] = "op" end
  local okc, comm = pcall(require, "tide.comm")
  if okc and comm.Comm then
    for _, name in ipairs(COMM) do
      if comm.Comm[name] then
        local id = #names + 1
        names[id], cats[id] = "comm." .. name, "comm"
      end
    end
  end
  local rec = recorder(max_events, #names)
  local t_origin = opts.origin or now() -- origin = 0: absolute CLOCK_MONOTONIC (ranks of one machine line up)
  local plain, plain_comm = {}, {}
  for id, name in ipairs(names) do
    if cats[id] == "op" then
      local f = T.op[name]
      plain[name] = f
      T.op[name] = rec.wrap(id - 1, f, COST[name] or cost_default)
    end
  end
  for id, name in ipairs(names) do
    if cats[id] == "comm" then
      local short = name:sub(6)
      local f = comm.Comm[short]
      plain_comm[short] = f
      comm.Comm[short] = rec.wrap_varg(id - 1, f)
    end
  end
  local okl, llama = pcall(require, "tide.models.llama")
  local plain_layer = okl and llama.layer_forward
  if plain_layer then llama.layer_forward = rec.wrap_layer(plain_layer) end
  local function restore()
    for name, f in pairs(plain) do T.op[name] = f end
    if plain_layer then llama.layer_forward = plain_layer end
    for name, f in pairs(plain_comm) do comm.Comm[name] = f end
  end
  -- span(name, f, ...): time f(...) as a named span, split into ops and lua/other
  local spans, span_ev = {}, {}
  local function span(name, f, ...)
    local o0, c0 = rec.totals()
    local s0 = now()
    local r1, r2, r3 = f(...)
    local s1 = now()
    local o1, c1 = rec.totals()
    local sp = spans[name]
    if not sp then sp = { calls = 0, seconds = 0, op_seconds = 0, op_calls = 0 } spans[name] = sp end
    sp.calls, sp.seconds = sp.calls + 1, sp.seconds + (s1 - s0)
    sp.op_seconds, sp.op_calls = sp.op_seconds + (o1 - o0), sp.op_calls + (c1 - c0)
    if #span_ev < max_events then span_ev[#span_ev + 1] = { name, s0, s1 - s0 } end
    return r1, r2, r3
  end
  local t0
  local function reset()
    for k in pairs(spans) do spans[k] = nil end
    for k = #span_ev, 1, -1 do span_ev[k] = nil end
    t0 = now()
    rec.reset(t0)
  end
  t0 = now()
  rec.start(t0)
  local res = { pcall(fn, span, reset) }
  local t1 = now()
  rec.finish(t1)
  restore()
  if not res[1] then error(res[2], 0) end
  local op_total, op_calls, gap = rec.totals()
  local rep = setmetatable({ wall = t1 - t0, names = names, cats = cats, data = rec.data(), spans = spans,
    span_ev = span_ev, op_seconds = op_total, op_calls = op_calls, other_seconds = gap, pid = opts.pid or 0,
    name = opts.name or "tide", t_start = (t0 - t_origin) * 1e6, t_origin = t_origin }, Report)
  rep.per_call_overhead = opts.calibrate == false and 0 or calibrate()
  rep:summarize()
  return rep, unpack(res, 2)
end

function Report:summarize()
  local d = self.data
  local ops = {}
  for id, name in ipairs(self.names) do
    local k = (id - 1) * NF
    local calls = d.acc[k]
    if calls > 0 then
      local s, b, f = d.acc[k + 1], d.acc[k + 2], d.acc[k + 3]
      ops[#ops + 1] = { name = name, calls = calls, seconds = s, bytes = b, flops = f,
        gbps = b > 0 and s > 0 and b / s / 1e9 or nil, gflops = f > 0 and s > 0 and f / s / 1e9 or nil }
    end
  end
  table.sort(ops, function(a, b) return a.seconds > b.seconds end)
  ops[#ops + 1] = { name = "lua/other", calls = 0, seconds = self.other_seconds, bytes = 0, flops = 0 }
  self.ops = ops
  local w = self.wall > 0 and self.wall or 1e-300
  self.ops_share = self.op_seconds / w
  self.other_share = self.other_seconds / w
  -- measured buckets over the independently measured wall (1 up to clock-read rounding)
  self.accounted = (self.op_seconds + self.other_seconds) / w
  -- the profiler's own bookkeeping (inside lua/other): an estimate
  self.profiler_seconds = math.min(self.other_seconds, self.op_calls * (self.per_call_overhead or 0))
  self.profiler_share = self.profiler_seconds / w
  for _, sp in pairs(self.spans) do
    sp.other_seconds = sp.seconds - sp.op_seconds
    sp.profiler_seconds = math.min(sp.other_seconds, sp.op_calls * (self.per_call_overhead or 0))
  end
  local ls = {}
  for l = 1, MAX_LAYERS do
    local j = l * 5
    if d.lacc[j] > 0 then
      ls[#ls + 1] = { layer = l, calls = d.lacc[j], seconds = d.lacc[j + 1], op_seconds = d.lacc[j + 2],
        bytes = d.lacc[j + 3], flops = d.lacc[j + 4] }
    end
  end
  self.layer_list = ls
  self.layers = {}
  for _, l in ipairs(ls) do self.layers[l.layer] = l end
  self.dropped = d.dropped
  return self
end

local function pct(x, w) return 100 * x / math.max(w, 1e-300) end

function Report:text(top)
  local o = {}
  local w = self.wall
  o[#o + 1] = string.format("wall %.3f ms = ops %.3f ms (%.1f%%) + lua/other %.3f ms (%.1f%%); accounted %.1f%%",
    w * 1e3, self.op_seconds * 1e3, pct(self.op_seconds, w), self.other_seconds * 1e3, pct(self.other_seconds, w),
    100 * self.accounted)
  o[#o + 1] = string.format("  lua/other includes the profiler's wrapper, at least ~%.3f ms (%.1f%%) = %d op calls x %.0f ns (timed on an empty op; cost functions, events and cache effects add more)",
    self.profiler_seconds * 1e3, 100 * self.profiler_share, self.op_calls, (self.per_call_overhead or 0) * 1e9)
  local names = {}
  for n in pairs(self.spans) do names[#names + 1] = n end
  table.sort(names)
  for _, n in ipairs(names) do
    local sp = self.spans[n]
    o[#o + 1] = string.format("span %-12s %5d calls, %.3f ms each = ops %.1f%% + lua/other %.1f%% (profiler ~%.1f%%)", n,
      sp.calls, sp.seconds / sp.calls * 1e3, pct(sp.op_seconds, sp.seconds), pct(sp.other_seconds, sp.seconds),
      pct(sp.profiler_seconds, sp.seconds))
  end
  o[#o + 1] = string.format("%-16s %8s %10s %7s %9s %9s", "op", "calls", "ms", "share", "GB/s", "GFLOP/s")
  for i, r in ipairs(self.ops) do
    if not top or i <= top or r.name == "lua/other" then
      o[#o + 1] = string.format("%-16s %8d %10.3f %6.1f%% %9s %9s", r.name, r.calls, r.seconds * 1e3,
        pct(r.seconds, w), r.gbps and string.format("%.2f", r.gbps) or "-",
        r.gflops and string.format("%.2f", r.gflops) or "-")
    end
  end
  if #self.layer_list > 0 then
    o[#o + 1] = string.format("%-8s %8s %10s %10s %7s %9s", "layer", "calls", "ms", "ops ms", "share", "GFLOP/s")
    for _, l in ipairs(self.layer_list) do
      o[#o + 1] = string.format("%-8d %8d %10.3f %10.3f %6.1f%% %9s", l.layer - 1, l.calls, l.seconds * 1e3,
        l.op_seconds * 1e3, pct(l.seconds, w),
        l.flops > 0 and string.format("%.2f", l.flops / math.max(l.op_seconds, 1e-12) / 1e9) or "-")
    end
  end
  if self.dropped > 0 then o[#o + 1] = string.format("(%d trace events dropped: raise max_events)", self.dropped) end
  return table.concat(o, "\n")
end

function Report:print(top) print(self:text(top)) end

local function jstr(s) return '"' .. tostring(s):gsub('[%c"\\]', function(c) return string.format("\\u%04x", c:byte()) end) .. '"' end

-- trace events as JSON strings (one per event), for this report's pid
function Report:trace_events()
  local ev = {}
  local pid, org = self.pid, self.t_origin
  ev[#ev + 1] = string.format('{"name":"process_name","ph":"M","pid":%d,"tid":0,"args":{"name":%s}}', pid, jstr(self.name))
  ev[#ev + 1] = string.format('{"name":"thread_name","ph":"M","pid":%d,"tid":0,"args":{"name":"main"}}', pid)
  ev[#ev + 1] = string.format('{"name":"profile","cat":"run","ph":"X","ts":%.3f,"dur":%.3f,"pid":%d,"tid":0}',
    self.t_start, self.wall * 1e6, pid)
  for _, s in ipairs(self.span_ev) do
    ev[#ev + 1] = string.format('{"name":%s,"cat":"span","ph":"X","ts":%.3f,"dur":%.3f,"pid":%d,"tid":0}',
      jstr(s[1]), (s[2] - org) * 1e6, s[3] * 1e6, pid)
  end
  local d = self.data
  local qnames = {}
  for i, n in ipairs(self.names) do qnames[i - 1] = jstr(n) end
  for k = 0, d.n - 1 do
    local id, l = d.id[k], d.layer[k]
    if id < 0 then
      ev[#ev + 1] = string.format('{"name":"layer %d","cat":"layer","ph":"X","ts":%.3f,"dur":%.3f,"pid":%d,"tid":0}',
        l - 1, (d.t0[k] - org) * 1e6, d.d[k] * 1e6, pid)
    else
      ev[#ev + 1] = string.format('{"name":%s,"cat":"%s","ph":"X","ts":%.3f,"dur":%.3f,"pid":%d,"tid":0,"args":{"bytes":%.0f,"flops":%.0f%s}}',
        qnames[id], self.cats[id + 1], (d.t0[k] - org) * 1e6, d.d[k] * 1e6, pid, d.b[k], d.f[k],
        l > 0 and string.format(',"layer":%d', l - 1) or "")
    end
  end
  return ev
end

local write = require("tide.files").write

function Report:write_trace(path)
  return write(path, '{"traceEvents":[\n' .. table.concat(self:trace_events(), ",\n") .. '\n],"displayTimeUnit":"ms"}\n')
end

-- merge(reports, path): one trace file, one pid per report (per rank: report.pid = rank)
function M.merge(reports, path)
  local all = {}
  for _, r in ipairs(reports) do for _, e in ipairs(r:trace_events()) do all[#all + 1] = e end end
  return write(path, '{"traceEvents":[\n' .. table.concat(all, ",\n") .. '\n],"displayTimeUnit":"ms"}\n')
end

-- A JSON summary (ops, layers, spans, totals).
function Report:json()
  local J = require("tide.cmd.args").json
  local ops = {}
  for i, r in ipairs(self.ops) do ops[i] = r end
  return J({ wall_s = self.wall, op_seconds = self.op_seconds, other_seconds = self.other_seconds,
    profiler_seconds_estimate = self.profiler_seconds, per_call_overhead_s = self.per_call_overhead,
    op_calls = self.op_calls, ops_share = self.ops_share, accounted = self.accounted, ops = ops,
    layers = self.layer_list, spans = self.spans })
end

return M
