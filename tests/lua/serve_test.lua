-- tide serve end to end on dsv3-tiny over loopback: completions, chat,
-- streaming (SSE ending in [DONE]) equal to model:generate, API key (401
-- without or with a wrong key), malformed and hostile requests (bad JSON,
-- unknown fields, negative max_tokens, invalid UTF-8, oversized bodies, a
-- short body, a bad request line, huge headers, a prompt past the context,
-- a slowloris client) answered with 4xx while a steady client streams
-- unaffected, 1,000 connections opened and dropped, no leaked KV blocks in
-- /metrics afterwards, and a clean exit 0 on SIGTERM. The HTTP client is
-- plain POSIX sockets through the FFI.
local H = require "helpers"
local ffi = require "ffi"
local cjson = require "cjson"
local tide = require "tide"

pcall(ffi.cdef, [[
int socket(int domain, int type, int protocol);
int connect(int fd, const void *addr, unsigned int len);
long send(int fd, const void *buf, size_t n, int flags);
long recv(int fd, void *buf, size_t n, int flags);
int close(int fd);
int setsockopt(int fd, int level, int name, const void *val, unsigned int len);
int usleep(unsigned int usec);
struct tide_test_sockaddr_in { uint16_t family; uint16_t port; uint32_t addr; uint8_t zero[8]; };
struct tide_test_timeval { long sec; long usec; };
]])
local C = ffi.C

local function htons(p) return bit.bor(bit.rshift(p, 8), bit.lshift(bit.band(p, 0xff), 8)) end

local function dial(port, timeout_s)
  local fd = C.socket(2, 1, 0) -- AF_INET, SOCK_STREAM
  assert(fd >= 0, "socket")
  local tv = ffi.new("struct tide_test_timeval", { timeout_s or 20, 0 })
  C.setsockopt(fd, 1, 20, tv, ffi.sizeof(tv)) -- SOL_SOCKET, SO_RCVTIMEO
  local a = ffi.new("struct tide_test_sockaddr_in")
  a.family, a.port, a.addr = 2, htons(port), 0x0100007f
  if C.connect(fd, a, ffi.sizeof(a)) ~= 0 then C.close(fd) return nil end
  return fd
end

local function send_all(fd, s)
  local off = 0
  while off < #s do
    local n = tonumber(C.send(fd, ffi.cast("const char*", s) + off, #s - off, 0x4000)) -- MSG_NOSIGNAL
    if n <= 0 then return false end
    off = off + n
  end
  return true
end

local function read_all(fd)
  local buf = ffi.new("char[65536]")
  local parts = {}
  while true do
    local n = tonumber(C.recv(fd, buf, 65536, 0))
    if n <= 0 then break end
    parts[#parts + 1] = ffi.string(buf, n)
  end
  return table.concat(parts)
end

-- One request on its own connection (Connection: close); returns status, body, raw.
local function raw(port, bytes, timeout_s)
  local fd = dial(port, timeout_s)
  if not fd then return nil end
  send_all(fd, bytes)
  local r = read_all(fd)
  C.close(fd)
  local status = tonumber(r:match("^HTTP/1%.1 (%d+)"))
  local body = r:match("\r\n\r\n(.*)$") or ""
  return status, body, r
end

local function request(port, method, path, body, headers)
  local h = { method .. " " .. path .. " HTTP/1.1", "Host: 127.0.0.1", "Connection: close" }
  for _, x in ipairs(headers or {}) do h[#h + 1] = x end
  if body then
    h[#h + 1] = "Content-Type: application/json"
    h[#h + 1] = "Content-Length: " .. #body
  end
  return raw(port, table.concat(h, "\r\n") .. "\r\n\r\n" .. (body or ""))
end

local function dechunk(s)
  local out, i = {}, 1
  while true do
    local len, e = s:match("^(%x+)\r\n()", i)
    if not len then break end
    len = tonumber(len, 16)
    if len == 0 then break end
    out[#out + 1] = s:sub(e, e + len - 1)
    i = e + len + 2
  end
  return table.concat(out)
end

-- SSE events (data lines) of a chunked stream body.
local function events(body)
  local ev = {}
  for d in dechunk(body):gmatch("data: ([^\n]*)\n\n") do ev[#ev + 1] = d end
  return ev
end

local KEY = "test-key-123"
local AUTH = { "Authorization: Bearer " .. KEY }

local function start_server(dir, extra)
  local cmd = string.format("cd %s && (%s serve --model models/dsv3-tiny --port 0 --api-key %s --timeout-ms 1500 " ..
    "--max-body 65536 --max-batch-tokens 64 %s > %s/out.log 2>&1 & echo $! > %s/pid; wait $!; echo $? > %s/exit) " ..
    ">/dev/null 2>&1 &", H.q(os.getenv("PWD") or "."), H.q(H.tide), KEY, extra or "", dir, dir, dir)
  os.execute(cmd)
  for _ = 1, 400 do
    local f = io.open(dir .. "/out.log")
    local s = f and f:read("a") or ""
    if f then f:close() end
    local port = tonumber(s:match("http://127%.0%.0%.1:(%d+)"))
    if port then
      local pf = io.open(dir .. "/pid")
      local pid = tonumber(pf:read("a"))
      pf:close()
      return port, pid
    end
    C.usleep(50000)
  end
  error("the server did not start")
end

local T = {}

function T.serve_end_to_end()
  local dir = H.tmpdir()
  local port, pid = start_server(dir)
  local ok, err = pcall(function()
    local m = assert(tide.load("models/dsv3-tiny"))
    local tok = m.tokenizer
    -- health needs no key; everything else does
    H.eq((request(port, "GET", "/health")), 200, "health without a key")
    H.eq((request(port, "GET", "/v1/models")), 401, "models without a key")
    H.eq((request(port, "GET", "/v1/models", nil, { "Authorization: Bearer wrong" })), 401, "wrong key")
    H.eq((request(port, "GET", "/v1/models", nil, { "Authorization: Bearer " .. KEY .. "x" })), 401, "longer key")
    local st, body = request(port, "GET", "/v1/models", nil, AUTH)
    H.eq(st, 200, "models with the key")
    H.eq(cjson.decode(body).data[1].id, "dsv3-tiny", "model id")

    -- a completion equals model:generate
    local prompt = "The quick brown fox jumps over"
    local ids = tok:encode(prompt, { add_special = true })
    local ref = tok:decode(assert(m:generate(ids, { max_tokens = 12, temperature = 0 })))
    st, body = request(port, "POST", "/v1/completions", cjson.encode({ prompt = prompt, max_tokens = 12,
      temperature = 0 }), AUTH)
    H.eq(st, 200, "completion: " .. body)
    local j = cjson.decode(body)
    H.eq(j.choices[1].text, ref, "completion text")
    H.eq(j.usage.prompt_tokens, #ids, "usage")

    -- chat, plain and streamed, agree
    local chat = { messages = { { role = "user", content = "Tell me a story." } }, max_tokens = 10, temperature = 0 }
    st, body = request(port, "POST", "/v1/chat/completions", cjson.encode(chat), AUTH)
    H.eq(st, 200, "chat: " .. body)
    local content = cjson.decode(body).choices[1].message.content
    chat.stream = true
    local _, sbody, rawr = request(port, "POST", "/v1/chat/completions", cjson.encode(chat), AUTH)
    H.truthy(rawr:find("text/event-stream", 1, true), "SSE content type")
    local ev = events(sbody)
    H.eq(ev[#ev], "[DONE]", "stream ends with [DONE]")
    H.truthy(#ev >= 4, "several chunks")
    local acc = {}
    for i = 1, #ev - 1 do
      local d = cjson.decode(ev[i]).choices[1].delta
      acc[#acc + 1] = d.content or ""
    end
    H.eq(table.concat(acc), content, "streamed chat equals the plain answer")

    -- the official openai npm client (when node is present; installed into tests/node-openai/node_modules)
    if H.sh("command -v node") ~= "" then
      local have = io.open("tests/node-openai/node_modules/openai/package.json")
      if have then have:close() else
        H.sh("cd tests/node-openai && timeout 180 npm install --no-audit --no-fund")
      end
      have = io.open("tests/node-openai/node_modules/openai/package.json")
      if have then
        have:close()
        local out, code = H.sh(string.format("timeout 60 node tests/node-openai/chat.js %d %s", port, KEY))
        H.eq(code, 0, "openai client: " .. out)
        local r = cjson.decode(out:match("{.*}"))
        H.eq(r.plain, content, "openai client: chat answer")
        H.eq(r.streamed, content, "openai client: streamed answer")
        H.truthy(r.chunks >= 3, "openai client: chunks")
        H.eq(r.unauthorized, true, "openai client: wrong key is a 401")
      else
        io.stderr:write("serve_test: openai npm package not installable here; client check skipped\n")
      end
    end

    -- a steady streaming client in the background (curl when present, else skipped)
    local steady_prompt = "Once upon a time"
    local sids = tok:encode(steady_prompt, { add_special = true })
    local steady_ref = tok:decode(assert(m:generate(sids, { max_tokens = 200, temperature = 0, ignore_eos = true })))
    local have_curl = H.sh("command -v curl") ~= ""
    if have_curl then
      os.execute(string.format("curl -sN -H 'Authorization: Bearer %s' -d '%s' http://127.0.0.1:%d/v1/completions > %s/steady.txt 2>&1 &",
        KEY, cjson.encode({ prompt = steady_prompt, max_tokens = 200, temperature = 0, ignore_eos = true,
          stream = true }), port, dir))
    end

    -- hostile and malformed requests: 4xx, never a crash
    local function post(b) return (request(port, "POST", "/v1/completions", b, AUTH)) end
    H.eq(post("{not json"), 400, "bad JSON")
    H.eq(post("[1,2,3]"), 400, "not an object")
    H.eq(post(cjson.encode({ prompt = "hi", bogus = 1 })), 400, "unknown field")
    H.eq(post(cjson.encode({ prompt = "hi", max_tokens = -5 })), 400, "negative max_tokens")
    H.eq(post(cjson.encode({ prompt = "hi", max_tokens = 1e12 })), 400, "max_tokens beyond the limit")
    H.eq(post(cjson.encode({ prompt = 5 })), 400, "wrong prompt type")
    H.eq(post(cjson.encode({ prompt = "hi", temperature = "hot" })), 400, "wrong temperature type")
    H.eq(post(cjson.encode({ prompt = { 1, 2, 9999999 } })), 400, "token id outside the vocabulary")
    H.eq(post('{"prompt":"\255\254 bad"}'), 400, "invalid UTF-8")
    H.eq(post(cjson.encode({ prompt = string.rep("hello ", 9000) })), 400, "prompt longer than the context")
    H.eq((request(port, "POST", "/v1/chat/completions", cjson.encode({ messages = { { role = "wizard", content = "x" } } }),
      AUTH)), 400, "bad role")
    H.eq((request(port, "GET", "/v1/nothing", nil, AUTH)), 404, "unknown path")
    H.eq((request(port, "GET", "/v1/completions", nil, AUTH)), 405, "wrong method")
    H.eq((raw(port, "POST /v1/completions HTTP/1.1\r\nAuthorization: Bearer " .. KEY ..
      "\r\nContent-Length: 99999999\r\n\r\n")), 413, "oversized body")
    H.eq((raw(port, "GARBAGE\r\n\r\n")), 400, "bad request line")
    H.eq((raw(port, "GET /health HTTP/1.1\r\nX-Big: " .. string.rep("a", 40000) .. "\r\n\r\n")), 431, "huge header")
    -- a body shorter than its Content-Length: the server waits, then times out
    local t408 = raw(port, "POST /v1/completions HTTP/1.1\r\nAuthorization: Bearer " .. KEY ..
      "\r\nContent-Length: 100\r\n\r\n{\"prompt\"", 10)
    H.eq(t408, 408, "short body times out")
    -- slowloris: headers never finish
    local fd = dial(port, 10)
    send_all(fd, "GET /health HTTP/1.1\r\nX-Slow: ")
    C.usleep(300000)
    send_all(fd, "a")
    local slow = read_all(fd)
    C.close(fd)
    H.eq(tonumber(slow:match("^HTTP/1%.1 (%d+)")), 408, "slowloris timed out")

    -- 1,000 connections open at once (some mid-request, some mid-stream), then all dropped
    local fds = {}
    for i = 1, 1000 do
      local f = dial(port, 5)
      if f then
        if i % 3 == 0 then send_all(f, "POST /v1/completions HTTP/1.1\r\nContent-Length: 50\r\n\r\n{") end
        if i % 50 == 1 then
          local b = cjson.encode({ prompt = "drop me", max_tokens = 100, stream = true })
          send_all(f, "POST /v1/completions HTTP/1.1\r\nAuthorization: Bearer " .. KEY ..
            "\r\nContent-Length: " .. #b .. "\r\n\r\n" .. b)
        end
        fds[#fds + 1] = f
      end
    end
    H.truthy(#fds >= 900, "connections open at once: " .. #fds)
    C.usleep(200000)
    for _, f in ipairs(fds) do C.close(f) end
    H.eq((request(port, "GET", "/health")), 200, "still up")

    -- the steady client got exactly the tokens it would have alone
    if have_curl then
      local text
      for _ = 1, 600 do
        local f = io.open(dir .. "/steady.txt")
        text = f and f:read("a") or ""
        if f then f:close() end
        if text:find("data: [DONE]", 1, true) then break end
        C.usleep(50000)
      end
      local acc2 = {}
      for d in text:gmatch("data: ([^\n]*)\n\n") do
        if d ~= "[DONE]" then acc2[#acc2 + 1] = cjson.decode(d).choices[1].text end
      end
      H.eq(table.concat(acc2), steady_ref, "steady stream unaffected")
    end

    -- no leaked sequences or blocks once idle
    local metrics
    for _ = 1, 100 do
      st, metrics = request(port, "GET", "/metrics", nil, AUTH)
      if metrics:match("tide_kv_sequences (%d+)") == "0" then break end
      C.usleep(50000)
    end
    H.eq(st, 200, "metrics")
    H.eq(metrics:match("tide_kv_sequences (%d+)"), "0", "live sequences")
    H.eq(metrics:match("tide_kv_blocks_used (%d+)"), metrics:match("tide_kv_blocks_cached (%d+)"),
      "blocks in use are only the prefix cache's")
    H.truthy(tonumber(metrics:match("tide_http_unauthorized_total (%d+)")) >= 3, "401s counted")
    H.truthy(tonumber(metrics:match("tide_connections_open (%d+)")) <= 2, "dropped connections closed")
    H.truthy(tonumber(metrics:match("tide_time_to_first_token_seconds_count (%d+)")) >= 3, "TTFT histogram")
  end)
  -- SIGTERM: clean exit 0
  os.execute("kill -TERM " .. pid)
  local code
  for _ = 1, 200 do
    local f = io.open(dir .. "/exit")
    code = f and tonumber(f:read("a"))
    if f then f:close() end
    if code then break end
    C.usleep(50000)
  end
  if not code then os.execute("kill -KILL " .. pid .. " 2>/dev/null") end
  os.execute("rm -rf " .. H.q(dir))
  if not ok then error(err, 0) end
  H.eq(code, 0, "exit status after SIGTERM")
end

local function stop_server(dir, pid)
  os.execute("kill -TERM " .. pid)
  local code
  for _ = 1, 200 do
    local f = io.open(dir .. "/exit")
    code = f and tonumber(f:read("a"))
    if f then f:close() end
    if code then break end
    C.usleep(50000)
  end
  if not code then os.execute("kill -KILL " .. pid .. " 2>/dev/null") end
  return code
end

-- `tide serve --speculative mtp --prefix-spill DIR`: greedy completions equal
-- model:generate, /metrics reports drafts and the spill counters, clean exit.
function T.serve_speculative_and_spill()
  local dir = H.tmpdir()
  os.execute("mkdir -p " .. H.q(dir .. "/spill"))
  local port, pid = start_server(dir, "--speculative mtp --prefix-spill " .. H.q(dir .. "/spill"))
  local ok, err = pcall(function()
    local m = assert(tide.load("models/dsv3-tiny"))
    for _, prompt in ipairs({ "The quick brown fox jumps over", "Once upon a time there was" }) do
      local ids = m.tokenizer:encode(prompt, { add_special = true })
      local ref = m.tokenizer:decode(assert(m:generate(ids, { max_tokens = 20, temperature = 0 })))
      local st, body = request(port, "POST", "/v1/completions", cjson.encode({ prompt = prompt, max_tokens = 20,
        temperature = 0 }), AUTH)
      H.eq(st, 200, "completion: " .. body)
      H.eq(cjson.decode(body).choices[1].text, ref, "speculative completion equals generate")
    end
    local st, body = request(port, "GET", "/metrics", nil, AUTH)
    H.eq(st, 200, "metrics")
    local drafted = tonumber(body:match("\ntide_spec_drafted_total (%d+)"))
    H.truthy(drafted and drafted > 0, "drafts reported")
    H.truthy(body:match("\ntide_spec_acceptance_rate [%d%.e%-]+"), "acceptance reported")
    H.truthy(body:match("\ntide_prefix_spill_blocks_total %d+"), "spill counters reported")
  end)
  local code = stop_server(dir, pid)
  os.execute("rm -rf " .. H.q(dir))
  if not ok then error(err, 0) end
  H.eq(code, 0, "exit status after SIGTERM")
end

return T
