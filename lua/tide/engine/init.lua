-- tide.engine: continuous batching. Requests queue up; each step the
-- scheduler (policy in tide.engine.policy) picks sequences and token counts
-- under max_batch_tokens and max_seqs (long prompts are cut into chunks and
-- mixed with decodes), one ragged forward runs them all (Model:step), and
-- every request samples with its own sampler, streams through its callback
-- and stops on EOS / stop ids / stop strings / max_tokens / cancellation.
--
--   local E = require("tide.engine").new(model, { max_batch_tokens = 256, max_seqs = 8 })
--   local r = E:add({ ids = ids, max_tokens = 32, temperature = 0, on_token = function(req, id) end })
--   E:run()                 -- until every request is done; r.out holds the new ids
--
-- When KV blocks run out, waiting requests stay queued, and (preempt =
-- "recompute", the default) running ones are preempted from the end of the
-- policy order: their blocks are freed and they start again later from
-- their prompt + generated tokens. A request that could never fit fails
-- with an error instead.
local ffi = require "ffi"
local Sampler = require "tide.sampler"
local Policy = require "tide.engine.policy"
local Prefix = require "tide.engine.prefix"
local Spec = require "tide.engine.spec"
local clock = require("tide.generate").clock

local M = {}
local Engine = {}
Engine.__index = Engine
M.Engine = Engine

local REUSE = { reuse = true }

-- Latency histograms (seconds): cumulative bucket counts, sum, count.
local BOUNDS = { 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10 }
M.BOUNDS = BOUNDS
local function hist() local b = {} for i = 1, #BOUNDS do b[i] = 0 end return { buckets = b, sum = 0, count = 0 } end
local function observe(h, v)
  for i = 1, #BOUNDS do if v <= BOUNDS[i] then h.buckets[i] = h.buckets[i] + 1 end end
  h.sum, h.count = h.sum + v, h.count + 1
end

-- opts: max_batch_tokens (256), max_seqs (16), chunk (max prompt tokens of
-- one request per step; default max_batch_tokens), policy ("fcfs" |
-- "priority" | function), preempt ("recompute" | "none"), prefix_cache (bool),
-- prefix_spill ({ dir = PATH, max_bytes = N, level = 3 }: evicted prefix
-- blocks go to disk compressed with zstd and come back on a hit; see
-- tide.engine.prefix), speculative ({ method = "mtp", k = 1 }: greedy
-- requests draft with the model's MTP layer; see tide.engine.spec).
function M.new(model, opts)
  opts = opts or {}
  local less, pe = Policy.get(opts.policy)
  if not less then return nil, pe end
  local mbt = opts.max_batch_tokens or 256
  local ms = opts.max_seqs or 16
  if type(mbt) ~= "number" or mbt < 1 then return nil, "engine: max_batch_tokens must be >= 1" end
  if type(ms) ~= "number" or ms < 1 then return nil, "engine: max_seqs must be >= 1" end
  local preempt = opts.preempt or "recompute"
  if preempt ~= "recompute" and preempt ~= "none" then return nil, "engine: preempt must be 'recompute' or 'none'" end
  local kv = model:kv_cache()
  local self = setmetatable({
    model = model, kv = kv, bs = kv.block_size, less = less, max_batch_tokens = mbt, max_seqs = ms,
    chunk = opts.chunk or mbt, preempt = preempt, waiting = {}, running = {}, by_id = {}, n_arrival = 0,
    stats = { requests = 0, finished = 0, prompt_tokens = 0, generated_tokens = 0, steps = 0, preemptions = 0,
      batch_tokens = 0, batch_seqs = 0, errors = 0, cancelled = 0, spec_drafted = 0, spec_accepted = 0,
      spec_errors = 0 },
    ttft = hist(), itl = hist(),
  }, Engine)
  if opts.prefix_cache then
    local pc, ce = Prefix.new(kv, { spill = opts.prefix_spill })
    if not pc then return nil, ce end
    self.prefix = pc
  end
  if opts.speculative then
    local sp, se = Spec.new(model, opts.speculative)
    if not sp then return nil, se end
    self.spec = sp
  end
  return self
end

local function fail(self, req, msg)
  req.error = msg
  req.finish_reason = "error"
  self.stats.errors = self.stats.errors + 1
end

-- Add a request: { ids (prompt token ids), max_tokens (16), sampler options
-- (temperature, top_k, top_p, min_p, penalties, seed), stop (strings),
-- stop_ids, ignore_eos, priority, logprobs, top_logprobs, on_token(req, id),
-- on_done(req) }. Returns the request (req.id, later req.out,
-- req.finish_reason, req.error) or nil, err.
function Engine:add(r)
  local model = self.model
  local ids = r.ids
  if type(ids) ~= "table" or #ids == 0 then return nil, "engine: ids must be a non-empty list of token ids" end
  for i = 1, #ids do
    local v = ids[i]
    if type(v) ~= "number" or v ~= math.floor(v) or v < 0 or v >= model.n_vocab then
      return nil, string.format("engine: token id %s at index %d is outside the vocabulary", tostring(v), i)
    end
  end
  local max_tokens = r.max_tokens or 16
  if type(max_tokens) ~= "number" or max_tokens < 0 or max_tokens ~= math.floor(max_tokens) then
    return nil, "engine: max_tokens must be a non-negative integer"
  end
  if #ids >= model.max_ctx then
    return nil, string.format("engine: prompt of %d tokens does not fit the context of %d", #ids, model.max_ctx)
  end
  local need = math.ceil(math.min(#ids + max_tokens, model.max_ctx) / self.bs)
  if need > self.kv.n_blocks then
    return nil, string.format("engine: request needs %d KV blocks, the cache has %d", need, self.kv.n_blocks)
  end
  local sampler, se = Sampler.new(r, model.n_vocab)
  if not sampler then return nil, "engine: " .. se end
  local stop_ids = {}
  if not r.ignore_eos then
    local eos = model.eos_id
    if type(eos) == "table" then for _, v in ipairs(eos) do stop_ids[v] = true end
    elseif eos then stop_ids[eos] = true end
  end
  for _, v in ipairs(r.stop_ids or {}) do stop_ids[v] = true end
  local stops = r.stop
  if type(stops) == "string" then stops = { stops } end
  if stops and #stops == 0 then stops = nil end
  if stops and not model.tokenizer then return nil, "engine: stop strings need a tokenizer" end
  for _, t in ipairs(ids) do sampler:accept(t) end
  self.n_arrival = self.n_arrival + 1
  local req = setmetatable({}, { __index = r })
  req.id, req.arrival, req.state = self.n_arrival, self.n_arrival, "waiting"
  req.prompt, req.all, req.out, req.fed = ids, {}, {}, 0
  for i = 1, #ids do req.all[i] = ids[i] end
  req.max_tokens, req.sampler, req.stop_ids, req.stops = max_tokens, sampler, stop_ids, stops
  req.priority = r.priority or 0
  req.lps = r.logprobs and {} or nil
  req.spec = self.spec ~= nil and Spec.eligible(r)
  req.t_add = clock()
  self.by_id[req.id] = req
  self.stats.requests = self.stats.requests + 1
  self.stats.prompt_tokens = self.stats.prompt_tokens + #ids
  if max_tokens == 0 then
    req.finish_reason = "length"
    self:finish(req)
  else
    self.waiting[#self.waiting + 1] = req
  end
  return req
end

local function remove(list, req)
  for i = 1, #list do if list[i] == req then table.remove(list, i) return true end end
  return false
end

-- Release the request's sequence and report it done.
function Engine:finish(req)
  if req.seq then
    self.kv:seq_free(req.seq)
    req.seq = nil
  end
  remove(self.running, req)
  remove(self.waiting, req)
  req.state = "done"
  req.t_done = clock()
  self.by_id[req.id] = nil
  self.stats.finished = self.stats.finished + 1
  if req.on_done then req.on_done(req) end
end

-- Cancel a request (by id or object): frees its sequence and blocks now.
function Engine:cancel(id)
  local req = type(id) == "table" and id or self.by_id[id]
  if not req or req.state == "done" then return false end
  req.finish_reason = "cancelled"
  self.stats.cancelled = self.stats.cancelled + 1
  self:finish(req)
  return true
end

function Engine:pending() return #self.waiting + #self.running end

-- Blocks a sequence needs to take n more tokens (fresh ones and a copy of a
-- shared partial last block).
local function blocks_needed(self, req, n)
  local bs = self.bs
  if not req.seq then return math.ceil(n / bs) end
  local len = self.kv:seq_len(req.seq)
  local need = math.ceil((len + n) / bs) - math.ceil(len / bs)
  if len % bs ~= 0 then
    local t = self.kv:seq_table(req.seq)
    if t and self.kv:block_refs(t[#t]) > 1 then need = need + 1 end
  end
  return need
end

local function preempt(self, req)
  self.kv:seq_free(req.seq)
  req.seq, req.fed, req.reg, req.draft = nil, 0, nil, nil
  req.state = "waiting"
  remove(self.running, req)
  self.waiting[#self.waiting + 1] = req
  self.stats.preemptions = self.stats.preemptions + 1
end

-- Start a waiting request's sequence (adopting its cached prefix).
local function admit(self, req)
  local kv = self.kv
  local seq, e = kv:seq_new()
  if not seq then return nil, e end
  req.seq, req.fed = seq, 0
  if self.prefix then
    local blocks, eids = self.prefix:lookup(req.all)
    local len = #blocks * self.bs
    if len >= #req.all then len = #req.all - 1 end -- keep one token to compute the next logits
    if #blocks > 0 and len > (#blocks - 1) * self.bs then
      kv:seq_adopt(seq, blocks, len)
      req.fed = len
      local nr = len < #blocks * self.bs and #blocks - 1 or #blocks
      req.reg = { n = nr, parent = eids[nr] or 0 }
    end
    if not req.counted then self.prefix:count(#req.prompt, req.fed) req.counted = true end
  end
  req.reg = req.reg or { n = 0, parent = 0 }
  req.state = "running"
  remove(self.waiting, req)
  self.running[#self.running + 1] = req
  if not req.t_start then req.t_start = clock() end
  return true
end

-- The plan of one step: list of { req, n_tokens }.
function Engine:schedule()
  local budget, plan, kv = self.max_batch_tokens, {}, self.kv
  table.sort(self.running, self.less)
  table.sort(self.waiting, self.less)
  local committed = 0 -- blocks the plan will take
  local function avail_now()
    return kv:free_blocks() + (self.prefix and self.prefix:evictable() or 0) - committed
  end
  local avail = avail_now()
  local i = 1
  while i <= #self.running and budget > 0 and #plan < self.max_seqs do
    local req = self.running[i]
    local n = math.min(#req.all - req.fed, self.chunk, budget)
    if req.draft then
      -- a decode with a draft takes two rows: [t_L, draft]
      if n == 1 and budget >= 2 and self.chunk >= 2 and #req.out + 2 <= req.max_tokens
        and kv:seq_len(req.seq) + 2 <= self.model.max_ctx then
        n = 2
      else
        req.draft = nil
      end
    end
    local need = blocks_needed(self, req, n)
    while need > avail and self.preempt == "recompute" and #self.running > i do
      local victim = self.running[#self.running]
      local freed = #(kv:seq_table(victim.seq) or {})
      preempt(self, victim)
      avail = avail_now()
      if freed == 0 then break end
    end
    if need > avail and n == 2 and req.draft then
      req.draft, n = nil, 1
      need = blocks_needed(self, req, n)
    end
    if need <= avail then
      plan[#plan + 1] = { req, n }
      committed, budget = committed + need, budget - n
      avail = avail - need
    end
    i = i + 1
  end
  local w = 1
  while w <= #self.waiting and budget > 0 and #plan < self.max_seqs do
    local req = self.waiting[w]
    local n = math.min(#req.all, self.chunk, budget)
    if self.prefix then
      -- cached blocks are counted as available; compute what is left after the hit
      local blocks = self.prefix:lookup(req.all)
      local hit = math.min(#blocks * self.bs, #req.all - 1)
      n = math.min(#req.all - hit, self.chunk, budget)
      if math.ceil((hit + n) / self.bs) - #blocks + 1 > avail then break end
    elseif math.ceil(n / self.bs) > avail then
      break
    end
    local ok, e = admit(self, req)
    if not ok then fail(self, req, e) self:finish(req) else
      n = math.min(#req.all - req.fed, self.chunk, budget)
      local need = blocks_needed(self, req, n)
      if need > avail_now() then
        -- the adopted prefix left too little room after all: back to the queue
        preempt(self, req)
        self.stats.preemptions = self.stats.preemptions - 1
        break
      end
      plan[#plan + 1] = { req, n }
      committed, budget = committed + need, budget - n
      avail = avail_now()
    end
  end
  if self.prefix then
    local need = 0
    for _, p in ipairs(plan) do need = need + blocks_needed(self, p[1], p[2]) end
    self.prefix:make_room(need)
  end
  return plan
end

-- Sample the next token of req from its logits row; returns true while the
-- request goes on.
local function sample(self, req, row)
  local tok, serr = req.sampler:sample(row)
  if not tok then fail(self, req, serr) return false end
  if req.lps then
    local lp, top = req.sampler:logprobs(row, tok, req.top_logprobs or 0)
    req.lps[#req.lps + 1] = { id = tok, logprob = lp, top = top }
  end
  local now = clock()
  if not req.t_first then
    req.t_first = now
    observe(self.ttft, now - req.t_add)
  elseif req.t_last then
    observe(self.itl, now - req.t_last)
  end
  req.t_last = now
  if req.stop_ids[tok] then req.finish_reason = "stop" return false end
  req.out[#req.out + 1] = tok
  req.all[#req.all + 1] = tok
  self.stats.generated_tokens = self.stats.generated_tokens + 1
  req.sampler:accept(tok)
  if req.on_token then req.on_token(req, tok) end
  if req.state == "done" then return false end -- cancelled from the callback
  if req.stops then
    local text = self.model.tokenizer:decode(req.out)
    local cut
    for _, s in ipairs(req.stops) do
      local a = text:find(s, 1, true)
      if a and (not cut or a < cut) then cut = a end
    end
    if cut then
      req.finish_reason = "stop"
      req.stop_text = text:sub(1, cut - 1)
      return false
    end
  end
  if #req.out >= req.max_tokens then req.finish_reason = "length" return false end
  if #req.all > self.model.max_ctx then req.finish_reason = "context" return false end
  return true
end

-- Prefix-cache registration of the blocks a request has stored.
local function register(self, req)
  if self.prefix and req.seq then self.prefix:insert(req.all, self.kv:seq_table(req.seq), req.fed, req.reg) end
end

-- One scheduler step. Returns the number of tokens run (0: nothing to do).
function Engine:step()
  local plan = self:schedule()
  if #plan == 0 then
    if #self.waiting > 0 and #self.running == 0 then
      -- nothing fits even alone: cannot happen for admitted sizes, but never spin
      local req = self.waiting[1]
      fail(self, req, "engine: out of KV blocks")
      self:finish(req)
    end
    return 0
  end
  local seqs, toks, n_tok = {}, {}, 0
  local spec, any_spec = self.spec, false
  for i, p in ipairs(plan) do
    local req, n = p[1], p[2]
    local t = {}
    if req.draft and n == #req.all - req.fed + 1 then
      p.drafted = true
      t[1], t[2] = req.all[req.fed + 1], req.draft
    else
      for j = 1, n do t[j] = req.all[req.fed + j] end
    end
    if req.spec then any_spec = true end
    seqs[i], toks[i] = req.seq, t
    n_tok = n_tok + n
  end
  local sopts = REUSE
  if spec and any_spec then
    spec.step_opts = spec.step_opts or { reuse = true, on_hidden = spec:hook() }
    sopts = spec.step_opts
  end
  local logits, e = self.model:step(seqs, toks, "last", sopts)
  if not logits then
    for _, p in ipairs(plan) do fail(self, p[1], e) self:finish(p[1]) end
    return 0
  end
  local st = self.stats
  st.steps, st.batch_tokens, st.batch_seqs = st.steps + 1, st.batch_tokens + n_tok, st.batch_seqs + #plan
  local V = self.model.n_vocab
  local base = ffi.cast("float*", logits._p.data)
  -- rows of t_L of the drafted requests: their logits, one GEMM
  local vbase, vrow
  if spec and any_spec then
    local rows, off = {}, 0
    vrow = {}
    for i, p in ipairs(plan) do
      if p.drafted then
        rows[#rows + 1] = off
        vrow[i] = #rows - 1
      end
      off = off + p[2]
    end
    if #rows > 0 then vbase = spec:row_logits(rows) end
  end
  local done, items, want = {}, spec and any_spec and {} or nil, {}
  local row0 = 0
  for i, p in ipairs(plan) do
    local req, n = p[1], p[2]
    local fed0 = req.fed
    if req.state ~= "done" then
      if p.drafted then
        local d = req.draft
        req.draft = nil
        st.spec_drafted = st.spec_drafted + 1
        req.fed = req.fed + 1 -- t_L is stored
        local go = sample(self, req, vbase + vrow[i] * V)
        if go and req.all[#req.all] == d then
          st.spec_accepted = st.spec_accepted + 1
          req.fed = req.fed + 1 -- and so is the draft
          register(self, req)
          go = sample(self, req, base + (i - 1) * V)
        else
          if req.state ~= "done" then self.kv:seq_truncate(req.seq, req.fed) end
          register(self, req)
        end
        if not go then done[#done + 1] = req end
      else
        req.fed = req.fed + n
        register(self, req)
        if req.fed == #req.all then
          if not sample(self, req, base + (i - 1) * V) then done[#done + 1] = req end
        end
      end
    end
    if items and req.spec and req.state ~= "done" and req.seq and #req.all > req.fed then
      local go_on = true
      for _, r in ipairs(done) do if r == req then go_on = false break end end
      if go_on then
        items[#items + 1] = { req, row0, fed0, req.fed - fed0 }
        -- a draft is wanted when the next step decodes
        if #req.all == req.fed + 1 then want[req] = true end
      end
    end
    row0 = row0 + n
  end
  if items and #items > 0 then
    local ok, de = spec:draft(items, want)
    if not ok then
      st.spec_errors = st.spec_errors + 1
      self.spec_error = de
      for _, it in ipairs(items) do it[1].draft = nil end
    end
  end
  for _, req in ipairs(done) do if req.state ~= "done" then self:finish(req) end end
  return n_tok
end

-- Step until no request is left (or max_steps).
function Engine:run(max_steps)
  local k = 0
  while self:pending() > 0 do
    self:step()
    k = k + 1
    if max_steps and k >= max_steps then break end
  end
end

local function st_rate(a, b) return b > 0 and a / b or 0 end

-- Counters for /metrics.
function Engine:metrics()
  local kv = self.kv
  local m = {}
  for k, v in pairs(self.stats) do m[k] = v end
  m.waiting, m.running = #self.waiting, #self.running
  m.kv_blocks_total, m.kv_blocks_free = kv.n_blocks, kv:free_blocks()
  m.kv_blocks_cached = self.prefix and self.prefix.n_entries or 0
  m.kv_blocks_used = kv.n_blocks - kv:free_blocks()
  m.prefix_hit_tokens = self.prefix and self.prefix.hit_tokens or 0
  m.prefix_query_tokens = self.prefix and self.prefix.query_tokens or 0
  m.prefix_hit_rate = self.prefix and self.prefix:hit_rate() or 0
  m.spec_acceptance = st_rate(self.stats.spec_accepted, self.stats.spec_drafted)
  if self.prefix and self.prefix.spill then
    local sp = self.prefix.spill
    m.prefix_spilled_blocks, m.prefix_restored_blocks = sp.spilled, sp.restored
    m.prefix_spill_bytes, m.prefix_spill_files = sp.bytes, sp.n_files
    m.prefix_disk_hit_tokens = self.prefix.disk_hit_tokens
  end
  return m
end

return M
