-- tide.ab.runner: load an arm (a recipe table) and drive the serving engine
-- (tide.engine) in-process with a workload, recording per-request TTFT and
-- inter-token latencies, throughput, peak RSS and KV bytes.
--
-- An arm recipe is a Lua file returning e.g.
--   { name = "q8", model = "models/dsv3-tiny", mla = "absorb", threads = 1,
--     kv = { block = 16, blocks = 64, dtype = "f32" },
--     engine = { max_seqs = 8, max_batch_tokens = 256, chunk = 64, prefix_cache = true },
--     extra_work = 0, quant = nil }
-- quant = a scheme (a name under recipes/quant or a .lua file; calib = text
-- for imatrix/AWQ) quantizes the checkpoint into a temporary GGUF first.
-- extra_work = f plants a real slowdown for testing the trial machinery:
-- after every engine step, matmuls run for f times that step's wall time.
-- A recipe with parallel = { ranks = N, ep = N | tp = N, ... } runs on N
-- rank threads instead (tide.ab.parallel).
local ffi = require "ffi"
local T = require "tide.tensor"
local S = require "tide.ab.stats"

local M = {}

function M.load_recipe(r)
  if type(r) == "table" then return r end
  local chunk, e = loadfile(r)
  if not chunk then return nil, "arm: " .. tostring(e) end
  local ok, t = pcall(chunk)
  if not ok then return nil, "arm " .. r .. ": " .. tostring(t) end
  if type(t) ~= "table" then return nil, "arm " .. r .. " must return a table" end
  t.name = t.name or r:match("([^/]+)%.lua$")
  t.file = r
  return t
end

-- Apply "a.b.c=v" overrides (sweeps) to a copy of a recipe.
function M.with(recipe, path, value)
  local function copy(t)
    local o = {}
    for k, v in pairs(t) do o[k] = type(v) == "table" and copy(v) or v end
    return o
  end
  local o = copy(recipe)
  local t, keys = o, {}
  for k in path:gmatch("[^%.]+") do keys[#keys + 1] = k end
  for i = 1, #keys - 1 do
    if type(t[keys[i]]) ~= "table" then t[keys[i]] = {} end
    t = t[keys[i]]
  end
  t[keys[#keys]] = value
  return o
end

-- Process memory from /proc/self/status, in bytes (nil where unavailable).
function M.proc_status(key)
  local f = io.open("/proc/self/status", "r")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  local kb = s:match(key .. ":%s*(%d+)%s*kB")
  return kb and tonumber(kb) * 1024 or nil
end

-- Reset the peak-RSS mark (Linux: writing 5 to clear_refs); true if it worked.
function M.reset_peak()
  local f = io.open("/proc/self/clear_refs", "w")
  if not f then return false end
  local ok = f:write("5")
  f:close()
  return ok and true or false
end

-- Bytes of a model's weight files: the file itself, or a folder's
-- *.safetensors / *.gguf files (nil when none can be read).
function M.weights_bytes(path)
  local function size(f)
    local h = io.open(f, "rb")
    if not h then return nil end
    local n = h:seek("end")
    h:close()
    return n
  end
  if path:match("%.gguf$") or path:match("%.safetensors$") then return size(path) end
  local p = io.popen("ls '" .. path:gsub("'", "") .. "' 2>/dev/null")
  if not p then return nil end
  local total
  for name in p:lines() do
    if name:match("%.safetensors$") or name:match("%.gguf$") then
      local n = size(path .. "/" .. name)
      if n then total = (total or 0) + n end
    end
  end
  p:close()
  return total
end

-- open(recipe) -> arm { recipe, model, engine } or nil, err
function M.open(recipe)
  local tide = require "tide"
  local r, e = M.load_recipe(recipe)
  if not r then return nil, e end
  if type(r.model) ~= "string" then return nil, "arm " .. tostring(r.name) .. ": model must be a path" end
  local par = require "tide.ab.parallel"
  if par.is_parallel(r) then
    if r.quant then return nil, "arm " .. tostring(r.name) .. ": quant with a parallel plan is not supported yet" end
    return par.open(r)
  end
  local path = r.model
  if r.quant then
    -- quantize the checkpoint with the scheme into a temporary GGUF (tide quantize's code)
    local tmp = os.tmpname()
    os.remove(tmp)
    path = tmp .. ".gguf"
    local ok, qe = require("tide.quant.quantize").run({ model = r.model, scheme = r.quant, calib = r.calib,
      calib_tokens = r.calib_tokens, out = path, log = function() end })
    if not ok then return nil, "arm " .. tostring(r.name) .. ": quantize: " .. tostring(qe) end
    local f = io.open(path, "rb")
    local size = f and f:seek("end") or nil
    if f then f:close() end
    r.weights_bytes = size
  end
  local model, me = tide.load(path, { mla = r.mla, threads = r.threads, kv = r.kv, max_ctx = r.max_ctx })
  if r.quant then os.remove(path) end -- the weights are mapped or copied; the name is not needed
  if not model then return nil, "arm " .. tostring(r.name) .. ": " .. tostring(me) end
  local eng, ee = require("tide.engine").new(model, r.engine or {})
  if not eng then return nil, "arm " .. tostring(r.name) .. ": " .. tostring(ee) end
  return { recipe = r, name = r.name or "arm", model = model, engine = eng }
end

local function burn(seconds, ws)
  local t0 = T.now()
  while T.now() - t0 < seconds do T.op.matmul(ws.c, ws.a, ws.b) end
end

-- run(arm, reqs) -> result: per-request ttft (s), itl (s, all gaps), and
-- totals: wall_s, requests, out_tokens, req_s, tok_s, peak_rss, kv_bytes.
function M.run(arm, reqs)
  if arm.parallel then return require("tide.ab.parallel").run(arm, reqs) end
  local r, eng = arm.recipe, arm.engine
  local moe = require("tide.parallel.ep").moe_layers(arm.model)
  for _, l in ipairs(moe) do l.moe:expert_loads(true) end
  if r.threads then T.set_threads(r.threads) end
  local ws
  if (r.extra_work or 0) > 0 then
    ws = { a = T.zeros({ 64, 64 }), b = T.zeros({ 64, 64 }), c = T.zeros({ 64, 64 }) }
  end
  local has_peak = M.reset_peak()
  collectgarbage()
  local n, next_i, inflight = #reqs, 1, 0
  local closed = reqs.closed
  local recs, errors = {}, 0
  local t0 = T.now()
  local function submit(i)
    local q = reqs[i]
    local rec = { t_add = T.now(), times = {} }
    recs[i] = rec
    local spec = { ids = q.ids, max_tokens = q.max_tokens, ignore_eos = true,
      on_token = function() rec.times[#rec.times + 1] = T.now() end,
      on_done = function(req)
        rec.t_done = T.now()
        if req.error then rec.error = req.error end
        inflight = inflight - 1
      end }
    for k, v in pairs(q.sampling or {}) do spec[k] = v end
    local ok, e = eng:add(spec)
    if not ok then rec.error = e rec.t_done = T.now() errors = errors + 1 return end
    inflight = inflight + 1
  end
  while next_i <= n or eng:pending() > 0 do
    local now = T.now() - t0
    while next_i <= n and ((closed and inflight < closed) or (not closed and reqs[next_i].t <= now)) do
      submit(next_i)
      next_i = next_i + 1
    end
    if eng:pending() > 0 then
      local s0 = T.now()
      eng:step()
      if ws then burn((T.now() - s0) * r.extra_work, ws) end
    elseif next_i <= n then
      -- open loop, idle until the next arrival
      local wait = reqs[next_i].t - (T.now() - t0)
      if wait > 0 then ffi.C.poll(nil, 0, math.max(1, math.floor(wait * 1000))) end
    end
  end
  local wall = T.now() - t0
  local loads = #moe > 0 and {} or nil
  for li, l in ipairs(moe) do loads[li] = l.moe:expert_loads() end
  local ttft, itl, out_tokens = {}, {}, 0
  for i = 1, n do
    local rec = recs[i]
    if rec and not rec.error and #rec.times > 0 then
      ttft[#ttft + 1] = rec.times[1] - rec.t_add
      for j = 2, #rec.times do itl[#itl + 1] = rec.times[j] - rec.times[j - 1] end
      out_tokens = out_tokens + #rec.times
    elseif rec and rec.error then
      errors = errors + 1
    end
  end
  return {
    wall_s = wall, requests = n, errors = errors, out_tokens = out_tokens,
    req_s = n / wall, tok_s = out_tokens / wall, ttft = ttft, itl = itl,
    peak_rss = has_peak and M.proc_status("VmHWM") or nil, peak_rss_process = M.proc_status("VmHWM"),
    kv_bytes = arm.engine.kv:nbytes(),
    kv_bytes_per_token = arm.engine.kv:bytes_per_token(),
    comm_bytes = 0, -- one process: nothing crosses a communicator
    expert_loads = loads,
  }
end

pcall(ffi.cdef, "int poll(void *fds, unsigned long nfds, int timeout);")

-- The per-repeat scalar metrics of a run (used for verdicts).
M.METRICS = {
  { key = "req_s", label = "requests/s", higher = true },
  { key = "tok_s", label = "output tok/s", higher = true },
  { key = "ttft_p50", label = "TTFT p50 (ms)", higher = false, ms = true },
  { key = "ttft_p90", label = "TTFT p90 (ms)", higher = false, ms = true },
  { key = "ttft_p99", label = "TTFT p99 (ms)", higher = false, ms = true },
  { key = "itl_p50", label = "ITL p50 (ms)", higher = false, ms = true },
  { key = "itl_p90", label = "ITL p90 (ms)", higher = false, ms = true },
  { key = "itl_p99", label = "ITL p99 (ms)", higher = false, ms = true },
}

function M.summarize(res)
  local s = { req_s = res.req_s, tok_s = res.tok_s }
  for _, p in ipairs({ 50, 90, 99 }) do
    s["ttft_p" .. p] = S.percentile(res.ttft, p)
    s["itl_p" .. p] = S.percentile(res.itl, p)
  end
  return s
end

return M
