-- tide.serve: the OpenAI-compatible API on top of the engine. The HTTP side
-- (sockets, keep-alive, limits, timeouts, API key, SSE framing) is C on its
-- own libuv thread (src/server.c); this module runs on the engine thread:
-- it takes complete requests from the server's queue, validates the JSON,
-- adds requests to the engine, steps the engine, and streams answers back.
-- Nothing a request carries is executed or used as a path.
--
--   local S = require("tide.serve").new(model, { port = 8080, api_key = "k" })
--   S:run()   -- until SIGINT/SIGTERM; returns 0
local F = require "tide.ffi"
local E = require "tide.engine"
local cjson = require("cjson.safe").new()
local clock = require("tide.generate").clock
local ffi, C = F.ffi, F.C

cjson.decode_max_depth(64)
cjson.encode_sparse_array(true)

local M = {}
local Server = {}
Server.__index = Server
M.Server = Server

local NULL = cjson.null

-- ---- helpers ----------------------------------------------------------------------

-- Strict UTF-8 (no overlongs, no surrogates, <= U+10FFFF).
local function valid_utf8(s)
  local i, n = 1, #s
  local byte = string.byte
  while i <= n do
    local c = byte(s, i)
    if c < 0x80 then i = i + 1
    else
      local len, min
      if c >= 0xC2 and c <= 0xDF then len, min = 2, 0x80
      elseif c >= 0xE0 and c <= 0xEF then len, min = 3, 0x800
      elseif c >= 0xF0 and c <= 0xF4 then len, min = 4, 0x10000
      else return false end
      if i + len - 1 > n then return false end
      local cp = c % (2 ^ (7 - len))
      for k = 1, len - 1 do
        local b = byte(s, i + k)
        if b < 0x80 or b > 0xBF then return false end
        cp = cp * 64 + (b - 0x80)
      end
      if cp < min or cp > 0x10FFFF or (cp >= 0xD800 and cp <= 0xDFFF) then return false end
      i = i + len
    end
  end
  return true
end
M.valid_utf8 = valid_utf8

local function is_int(v) return type(v) == "number" and v == math.floor(v) and v > -2 ^ 53 and v < 2 ^ 53 end

local KNOWN = {}
for _, k in ipairs({ "model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p",
  "top_k", "min_p", "seed", "stop", "n", "stream", "stream_options", "logprobs", "top_logprobs", "user",
  "presence_penalty", "frequency_penalty", "repetition_penalty", "echo", "best_of", "suffix", "priority",
  "ignore_eos" }) do
  KNOWN[k] = true
end

-- ---- the server ---------------------------------------------------------------------

-- opts: host ("127.0.0.1"), port (8080; 0 = any free port), api_key,
-- max_body (1 MiB), max_header (16 KiB), timeout_ms (10000), max_conns
-- (2048), name (model id), grace_s (5), engine = engine options
-- (max_batch_tokens, max_seqs, chunk, policy, preempt, prefix_cache, prefix_spill,
-- speculative; see tide.engine).
function M.new(model, opts)
  opts = opts or {}
  if not model.tokenizer then return nil, "serve: the model has no tokenizer" end
  local eng, e = E.new(model, opts.engine or { prefix_cache = true })
  if not eng then return nil, e end
  local out = ffi.new("tide_server_t*[1]")
  if C.tide_server_start(opts.host or "127.0.0.1", opts.port or 8080, opts.api_key, opts.max_body or 1048576,
    opts.max_header or 16384, opts.timeout_ms or 10000, opts.max_conns or 2048, out, F.err) ~= 0 then
    return nil, F.errmsg()
  end
  local self = setmetatable({
    srv = out[0], model = model, tok = model.tokenizer, engine = eng, name = opts.name or "tide",
    grace_s = opts.grace_s or 5, reqs = {}, created = os.time(), n_id = 0,
    counters = { http_requests = 0, http_errors = 0, completions = 0, chat = 0, streams = 0, gone = 0 },
    ev_id = ffi.new("int64_t[1]"), ev_method = ffi.new("const char*[1]"), ev_path = ffi.new("const char*[1]"),
    ev_body = ffi.new("const char*[1]"), ev_len = ffi.new("int64_t[1]"),
  }, Server)
  self.port = C.tide_server_port(self.srv)
  return self
end

function Server:respond(id, status, body, ctype)
  C.tide_server_respond(self.srv, id, status, ctype or "application/json", body, #body)
end

function Server:error(id, status, msg, typ)
  self.counters.http_errors = self.counters.http_errors + 1
  self:respond(id, status, cjson.encode({ error = { message = msg, type = typ or "invalid_request_error",
    param = NULL, code = status } }))
end

function Server:sse(id, obj)
  local s = "data: " .. (type(obj) == "string" and obj or cjson.encode(obj)) .. "\n\n"
  C.tide_server_stream_send(self.srv, id, s, #s)
end

-- ---- validation -------------------------------------------------------------------------

-- Validate the common fields; returns engine request options or nil, err.
local function common(self, q, chat)
  for k in pairs(q) do
    if type(k) ~= "string" or not KNOWN[k] then return nil, "unknown field '" .. tostring(k) .. "'" end
  end
  if q.model ~= nil and type(q.model) ~= "string" then return nil, "'model' must be a string" end
  local r = {}
  local mt = q.max_tokens
  if mt == nil or mt == NULL then mt = q.max_completion_tokens end
  if mt == nil or mt == NULL then mt = 16 end
  if not is_int(mt) or mt < 0 then return nil, "'max_tokens' must be a non-negative integer" end
  if mt > self.model.max_ctx then return nil, "'max_tokens' exceeds the context of " .. self.model.max_ctx end
  r.max_tokens = mt
  local function num(name, lo, hi)
    local v = q[name]
    if v == nil or v == NULL then return true end
    if type(v) ~= "number" or v ~= v or v < lo or v > hi then
      return nil, string.format("'%s' must be a number in [%g, %g]", name, lo, hi)
    end
    r[name] = v
    return true
  end
  local ok, e = num("temperature", 0, 2)
  if ok then ok, e = num("top_p", 0, 1) end
  if ok then ok, e = num("min_p", 0, 1) end
  if ok then ok, e = num("presence_penalty", -2, 2) end
  if ok then ok, e = num("frequency_penalty", -2, 2) end
  if ok then ok, e = num("repetition_penalty", 0.01, 10) end
  if not ok then return nil, e end
  if r.temperature == nil then r.temperature = 1 end
  if q.top_k ~= nil and q.top_k ~= NULL then
    if not is_int(q.top_k) or q.top_k < 0 then return nil, "'top_k' must be a non-negative integer" end
    r.top_k = q.top_k
  end
  if q.seed ~= nil and q.seed ~= NULL then
    if not is_int(q.seed) then return nil, "'seed' must be an integer" end
    r.seed = q.seed % 2 ^ 32
  end
  if q.n ~= nil and q.n ~= NULL and q.n ~= 1 then return nil, "only 'n' = 1 is supported" end
  if q.best_of ~= nil and q.best_of ~= NULL and q.best_of ~= 1 then return nil, "only 'best_of' = 1 is supported" end
  if q.echo ~= nil and q.echo ~= NULL and q.echo ~= false then return nil, "'echo' is not supported" end
  if q.suffix ~= nil and q.suffix ~= NULL then return nil, "'suffix' is not supported" end
  if q.stream ~= nil and q.stream ~= NULL and type(q.stream) ~= "boolean" then return nil, "'stream' must be a boolean" end
  r.stream = q.stream == true
  if q.ignore_eos ~= nil and type(q.ignore_eos) ~= "boolean" then return nil, "'ignore_eos' must be a boolean" end
  r.ignore_eos = q.ignore_eos == true
  if q.priority ~= nil then
    if not is_int(q.priority) then return nil, "'priority' must be an integer" end
    r.priority = q.priority
  end
  local stop = q.stop
  if stop ~= nil and stop ~= NULL then
    if type(stop) == "string" then stop = { stop } end
    if type(stop) ~= "table" or #stop > 4 then return nil, "'stop' must be a string or a list of up to 4 strings" end
    for k, s in pairs(stop) do
      if type(k) ~= "number" or type(s) ~= "string" or #s == 0 or #s > 256 then
        return nil, "'stop' must be a string or a list of up to 4 strings"
      end
    end
    if #stop > 0 then r.stop = stop end
  end
  local lp = q.logprobs
  if lp ~= nil and lp ~= NULL then
    if chat then
      if type(lp) ~= "boolean" then return nil, "'logprobs' must be a boolean" end
      local tl = q.top_logprobs
      if tl ~= nil and tl ~= NULL and (not is_int(tl) or tl < 0 or tl > 20) then
        return nil, "'top_logprobs' must be an integer in [0, 20]"
      end
      r.logprobs, r.top_logprobs = lp, (tl ~= NULL and tl) or 0
    else
      if not is_int(lp) or lp < 0 or lp > 5 then return nil, "'logprobs' must be an integer in [0, 5]" end
      r.logprobs, r.top_logprobs = true, lp
    end
  end
  return r
end

local function prompt_ids(self, q)
  local p = q.prompt
  if type(p) == "table" and #p == 1 and type(p[1]) == "string" then p = p[1] end
  if type(p) == "string" then
    local ok, ids = pcall(self.tok.encode, self.tok, p, { add_special = true })
    if not ok then return nil, "cannot tokenize the prompt" end
    return ids
  end
  if type(p) == "table" and #p > 0 then
    for k, v in pairs(p) do
      if type(k) ~= "number" or not is_int(v) or v < 0 or v >= self.model.n_vocab then
        return nil, "'prompt' must be a string or a list of token ids"
      end
    end
    local ids = {}
    for i = 1, #p do ids[i] = p[i] end
    return ids
  end
  return nil, "'prompt' must be a non-empty string or a list of token ids"
end

local ROLES = { system = true, user = true, assistant = true, tool = true, developer = true }

local function chat_ids(self, q)
  local ms = q.messages
  if type(ms) ~= "table" or #ms == 0 then return nil, "'messages' must be a non-empty list" end
  local msgs = {}
  for i, m in ipairs(ms) do
    if type(m) ~= "table" or not ROLES[m.role] then return nil, "message " .. i .. ": bad or missing 'role'" end
    local c = m.content
    if type(c) == "table" then -- [{type = "text", text = ...}]
      local parts = {}
      for _, part in ipairs(c) do
        if type(part) ~= "table" or part.type ~= "text" or type(part.text) ~= "string" then
          return nil, "message " .. i .. ": only text content is supported"
        end
        parts[#parts + 1] = part.text
      end
      c = table.concat(parts)
    end
    if type(c) ~= "string" then return nil, "message " .. i .. ": 'content' must be a string" end
    msgs[i] = { role = m.role == "developer" and "system" or m.role, content = c }
  end
  if not self.tok:chat_template() then
    -- no template in the checkpoint: a plain transcript
    local parts = {}
    for i, m in ipairs(msgs) do parts[i] = m.role:sub(1, 1):upper() .. m.role:sub(2) .. ": " .. m.content end
    parts[#parts + 1] = "Assistant:"
    local ok, ids = pcall(self.tok.encode, self.tok, table.concat(parts, "\n"), { add_special = true })
    if not ok then return nil, "cannot tokenize the conversation" end
    return ids
  end
  local ok, t, te = pcall(self.tok.apply_chat_template, self.tok, msgs, { add_generation_prompt = true })
  if not ok or (type(t) ~= "string" and type(t) ~= "table") then
    return nil, "chat template: " .. tostring(ok and te or t)
  end
  if type(t) == "table" then return t end
  local ok2, ids = pcall(self.tok.encode, self.tok, t, { add_special = false })
  if not ok2 then return nil, "cannot tokenize the conversation" end
  return ids
end

-- ---- completions --------------------------------------------------------------------------

local FINISH = { stop = "stop", length = "length", context = "length", cancelled = "length", error = "error" }

function Server:generate(id, body, chat)
  if not valid_utf8(body) then return self:error(id, 400, "the body is not valid UTF-8") end
  local q = cjson.decode(body)
  if type(q) ~= "table" or (next(q) ~= nil and #q > 0) then return self:error(id, 400, "the body must be a JSON object") end
  local r, e = common(self, q, chat)
  if not r then return self:error(id, 400, e) end
  local ids
  if chat then
    if q.prompt ~= nil then return self:error(id, 400, "unknown field 'prompt' for chat completions") end
    ids, e = chat_ids(self, q)
  else
    if q.messages ~= nil then return self:error(id, 400, "unknown field 'messages' for completions") end
    ids, e = prompt_ids(self, q)
  end
  if not ids then return self:error(id, 400, e) end
  local ctx = self.model.max_ctx
  if #ids >= ctx then
    return self:error(id, 400, string.format("the prompt has %d tokens; the context is %d", #ids, ctx),
      "context_length_exceeded")
  end
  if #ids + r.max_tokens > ctx then r.max_tokens = ctx - #ids end
  self.n_id = self.n_id + 1
  local rid = (chat and "chatcmpl-" or "cmpl-") .. self.n_id
  local tok = self.tok
  local stream = r.stream
  local hold = 0
  for _, s in ipairs(r.stop or {}) do if #s - 1 > hold then hold = #s - 1 end end
  local sent = ""
  local model_name = type(q.model) == "string" and q.model or self.name
  local function chunk(text, finish)
    if chat then
      local delta = {}
      if text then delta.content = text end
      if sent == "" and not finish then delta.role = "assistant" end
      return { id = rid, object = "chat.completion.chunk", created = os.time(), model = model_name,
        choices = { { index = 0, delta = delta, logprobs = NULL, finish_reason = finish or NULL } } }
    end
    return { id = rid, object = "text_completion", created = os.time(), model = model_name,
      choices = { { index = 0, text = text or "", logprobs = NULL, finish_reason = finish or NULL } } }
  end
  r.ids = ids
  r.on_token = stream and function(req)
    local text = tok:decode(req.out)
    if text:sub(-3) == "\239\191\189" then return end -- an incomplete character: wait
    local upto = #text - hold
    if upto > #sent and text:sub(1, #sent) == sent then
      local piece = text:sub(#sent + 1, upto)
      if valid_utf8(piece) then
        self:sse(id, chunk(piece))
        sent = sent .. piece
      end
    end
  end or nil
  r.on_done = function(req)
    self.reqs[id] = nil
    if req.gone then return end
    if req.finish_reason == "error" then
      if stream then
        self:sse(id, { error = { message = tostring(req.error), type = "server_error" } })
        C.tide_server_stream_end(self.srv, id)
      else
        self:error(id, 500, tostring(req.error), "server_error")
      end
      return
    end
    local text = req.stop_text or tok:decode(req.out)
    local fin = FINISH[req.finish_reason] or "stop"
    local usage = { prompt_tokens = #ids, completion_tokens = #req.out, total_tokens = #ids + #req.out }
    if stream then
      if #text > #sent and text:sub(1, #sent) == sent then self:sse(id, chunk(text:sub(#sent + 1))) end
      local last = chunk(nil, fin)
      if type(q.stream_options) == "table" and q.stream_options.include_usage then last.usage = usage end
      self:sse(id, last)
      self:sse(id, "[DONE]")
      C.tide_server_stream_end(self.srv, id)
      return
    end
    local lps = NULL
    if req.lps then
      local content = {}
      for i, l in ipairs(req.lps) do
        local top = {}
        for j, t in ipairs(l.top or {}) do top[j] = { token = tok:decode({ t.id }), logprob = t.logprob } end
        content[i] = { token = tok:decode({ l.id }), logprob = l.logprob, top_logprobs = top }
      end
      lps = chat and { content = content } or {
        tokens = (function() local t = {} for i, c in ipairs(content) do t[i] = c.token end return t end)(),
        token_logprobs = (function() local t = {} for i, c in ipairs(content) do t[i] = c.logprob end return t end)(),
      }
    end
    local choice = chat and { index = 0, message = { role = "assistant", content = text }, logprobs = lps,
      finish_reason = fin } or { index = 0, text = text, logprobs = lps, finish_reason = fin }
    self:respond(id, 200, cjson.encode({ id = rid, object = chat and "chat.completion" or "text_completion",
      created = os.time(), model = model_name, choices = { choice }, usage = usage }))
  end
  if stream then
    C.tide_server_stream_start(self.srv, id)
    self.counters.streams = self.counters.streams + 1
  end
  self.reqs[id] = true
  local req, ae = self.engine:add(r)
  if not req then
    self.reqs[id] = nil
    if stream then
      self:sse(id, { error = { message = ae, type = "invalid_request_error" } })
      C.tide_server_stream_end(self.srv, id)
      return
    end
    return self:error(id, 400, ae)
  end
  if req.state ~= "done" then self.reqs[id] = req end
  if chat then self.counters.chat = self.counters.chat + 1 else self.counters.completions = self.counters.completions + 1 end
end

-- ---- other endpoints ------------------------------------------------------------------------

local function eng_h(self, k) return self.engine[k] end

function Server:metrics_text()
  local m = self.engine:metrics()
  local c = self.counters
  local st = function(i) return tonumber(C.tide_server_stat(self.srv, i)) end
  local L = {}
  local function g(name, typ, help, v)
    L[#L + 1] = "# HELP tide_" .. name .. " " .. help
    L[#L + 1] = "# TYPE tide_" .. name .. " " .. typ
    L[#L + 1] = string.format("tide_%s %s", name, tostring(v))
  end
  g("requests_total", "counter", "Generation requests accepted by the engine.", m.requests)
  g("requests_finished_total", "counter", "Generation requests finished.", m.finished)
  g("requests_cancelled_total", "counter", "Generation requests cancelled (client gone).", m.cancelled)
  g("http_requests_total", "counter", "HTTP requests parsed.", st(2))
  g("http_errors_total", "counter", "HTTP error responses.", st(3) + c.http_errors)
  g("http_unauthorized_total", "counter", "Requests rejected for a missing or wrong API key.", st(4))
  g("http_timeouts_total", "counter", "Connections timed out.", st(6))
  g("connections_total", "counter", "Connections accepted.", st(0))
  g("connections_open", "gauge", "Connections open.", st(1))
  g("connections_rejected_total", "counter", "Connections refused over the limit.", st(5))
  g("prompt_tokens_total", "counter", "Prompt tokens.", m.prompt_tokens)
  g("generated_tokens_total", "counter", "Generated tokens.", m.generated_tokens)
  g("queue_length", "gauge", "Requests waiting.", m.waiting)
  g("running_sequences", "gauge", "Requests running.", m.running)
  g("engine_steps_total", "counter", "Engine steps.", m.steps)
  g("batch_tokens_avg", "gauge", "Mean tokens per step.", m.steps > 0 and m.batch_tokens / m.steps or 0)
  g("batch_size_avg", "gauge", "Mean sequences per step.", m.steps > 0 and m.batch_seqs / m.steps or 0)
  g("preemptions_total", "counter", "Sequences preempted for KV blocks.", m.preemptions)
  g("kv_blocks_total", "gauge", "KV cache blocks.", m.kv_blocks_total)
  g("kv_blocks_free", "gauge", "Free KV blocks.", m.kv_blocks_free)
  g("kv_blocks_used", "gauge", "KV blocks in use (sequences and prefix cache).", m.kv_blocks_used)
  g("kv_blocks_cached", "gauge", "KV blocks held by the prefix cache.", m.kv_blocks_cached)
  g("kv_sequences", "gauge", "Live KV sequences.", self.engine.kv:seq_count())
  g("prefix_cache_hit_tokens_total", "counter", "Prompt tokens served from the prefix cache.", m.prefix_hit_tokens)
  g("prefix_cache_hit_rate", "gauge", "Prompt tokens served from the prefix cache / prompt tokens.", m.prefix_hit_rate)
  if m.prefix_spilled_blocks then
    g("prefix_spill_blocks_total", "counter", "Evicted prefix blocks written to disk (zstd).", m.prefix_spilled_blocks)
    g("prefix_restored_blocks_total", "counter", "Prefix blocks read back from disk on a hit.", m.prefix_restored_blocks)
    g("prefix_spill_bytes", "gauge", "Compressed bytes of prefix blocks on disk.", m.prefix_spill_bytes)
    g("prefix_disk_hit_tokens_total", "counter", "Prompt tokens served from blocks restored from disk.",
      m.prefix_disk_hit_tokens)
  end
  if self.engine.spec then
    g("spec_drafted_total", "counter", "MTP draft tokens verified.", m.spec_drafted)
    g("spec_accepted_total", "counter", "MTP draft tokens accepted.", m.spec_accepted)
    g("spec_acceptance_rate", "gauge", "Accepted / drafted MTP tokens.", m.spec_acceptance)
  end
  local bounds = require("tide.engine").BOUNDS
  for _, hh in ipairs({ { "time_to_first_token_seconds", "Time from arrival to the first token.", eng_h(self, "ttft") },
    { "inter_token_latency_seconds", "Time between consecutive tokens of a request.", eng_h(self, "itl") } }) do
    local name, help, h = hh[1], hh[2], hh[3]
    L[#L + 1] = "# HELP tide_" .. name .. " " .. help
    L[#L + 1] = "# TYPE tide_" .. name .. " histogram"
    for i, b in ipairs(bounds) do L[#L + 1] = string.format('tide_%s_bucket{le="%g"} %d', name, b, h.buckets[i]) end
    L[#L + 1] = string.format('tide_%s_bucket{le="+Inf"} %d', name, h.count)
    L[#L + 1] = string.format("tide_%s_sum %.6f", name, h.sum)
    L[#L + 1] = string.format("tide_%s_count %d", name, h.count)
  end
  return table.concat(L, "\n") .. "\n"
end

function Server:handle(id, method, path, body)
  self.counters.http_requests = self.counters.http_requests + 1
  path = path:match("^[^?#]*")
  if self.stopping then return self:error(id, 503, "the server is shutting down", "server_error") end
  local get = method == "GET"
  if path == "/health" then
    if not get then return self:error(id, 405, "use GET") end
    return self:respond(id, 200, '{"status":"ok"}')
  elseif path == "/v1/models" then
    if not get then return self:error(id, 405, "use GET") end
    return self:respond(id, 200, cjson.encode({ object = "list", data = { { id = self.name, object = "model",
      created = self.created, owned_by = "tide" } } }))
  elseif path == "/metrics" then
    if not get then return self:error(id, 405, "use GET") end
    return self:respond(id, 200, self:metrics_text(), "text/plain; version=0.0.4")
  elseif path == "/v1/completions" or path == "/v1/chat/completions" then
    if method ~= "POST" then return self:error(id, 405, "use POST") end
    return self:generate(id, body, path == "/v1/chat/completions")
  end
  return self:error(id, 404, "no such endpoint")
end

function Server:gone(id)
  local req = self.reqs[id]
  self.reqs[id] = nil
  self.counters.gone = self.counters.gone + 1
  if type(req) == "table" then
    req.gone = true
    self.engine:cancel(req)
  end
end

-- Serve until SIGINT/SIGTERM, then finish in-flight requests for up to
-- grace_s seconds, cancel the rest, close. Returns 0.
function Server:run()
  local srv, eng = self.srv, self.engine
  local deadline
  while true do
    local busy = eng:pending() > 0
    local first = true
    while true do
      local k = C.tide_server_poll(srv, (first and not busy) and 100 or 0, self.ev_id, self.ev_method, self.ev_path,
        self.ev_body, self.ev_len)
      first = false
      if k == C.TIDE_SERVER_NONE then break end
      local id = tonumber(self.ev_id[0])
      if k == C.TIDE_SERVER_REQUEST then
        local ok, e = pcall(self.handle, self, id, ffi.string(self.ev_method[0]), ffi.string(self.ev_path[0]),
          ffi.string(self.ev_body[0], self.ev_len[0]))
        if not ok then
          self.reqs[id] = nil
          self:error(id, 500, "internal error: " .. tostring(e), "server_error")
        end
      elseif k == C.TIDE_SERVER_GONE then
        self:gone(id)
      elseif k == C.TIDE_SERVER_STOP then
        self.stopping = true
        deadline = clock() + self.grace_s
      end
    end
    if eng:pending() > 0 then
      local ok, e = pcall(eng.step, eng)
      if not ok then io.stderr:write("tide serve: engine step failed: ", tostring(e), "\n") end
    end
    if self.stopping and (eng:pending() == 0 or clock() > deadline) then break end
  end
  for _, req in pairs(self.reqs) do if type(req) == "table" then eng:cancel(req) end end
  if eng.prefix then eng.prefix:clear() end
  C.tide_server_free(srv)
  self.srv = nil
  return 0
end

return M
