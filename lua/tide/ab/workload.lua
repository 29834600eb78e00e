-- tide.ab.workload: workloads as Lua data, and the requests they make.
--
-- A workload table (see recipes/workloads/*.lua):
--   requests     number of requests (default 8)
--   prompt_len   N | {min, max} (uniform integers) | {list = {...}} (cycled)
--   output_len   same forms; new tokens per request (EOS is ignored so the
--                length is what the workload says)
--   arrival      { closed = C } (C requests in flight) | { rate = R } (Poisson, R req/s)
--   shared_prefix  fraction of requests that start with one common prefix
--   prefix_len   tokens of that prefix (default half the shortest prompt)
--   sampling     sampler options (temperature, top_k, top_p, min_p, seed ...)
--   text         file the prompt tokens are drawn from (tokenized with the model's tokenizer)
--   seed         seeds lengths, offsets into the text and arrivals
-- Everything is deterministic given the seed, so every arm and every repeat
-- gets exactly the same requests.
local S = require "tide.ab.stats"

local M = {}

-- Load a workload: a table, a file path, or a name under recipes/workloads/.
function M.load(w)
  if type(w) == "table" then return M.check(w) end
  if type(w) ~= "string" then return nil, "workload must be a table, a file or a name" end
  local path = w
  if not path:match("%.lua$") then path = "recipes/workloads/" .. w .. ".lua" end
  local chunk, e = loadfile(path)
  if not chunk then return nil, "workload: " .. tostring(e) end
  local ok, t = pcall(chunk)
  if not ok then return nil, "workload " .. path .. ": " .. tostring(t) end
  if type(t) ~= "table" then return nil, "workload " .. path .. " must return a table" end
  t.name = t.name or path:match("([^/]+)%.lua$")
  return M.check(t)
end

local function check_len(v, what)
  if type(v) == "number" then
    if v < 1 or v ~= math.floor(v) then return nil, what .. " must be a positive integer" end
    return true
  end
  if type(v) == "table" and v.list then
    if #v.list == 0 then return nil, what .. ".list is empty" end
    return true
  end
  if type(v) == "table" and type(v[1]) == "number" and type(v[2]) == "number" and v[1] >= 1 and v[2] >= v[1] then
    return true
  end
  return nil, what .. " must be N, {min, max} or {list = {...}}"
end

function M.check(w)
  local o = {}
  for k, v in pairs(w) do o[k] = v end
  o.requests = o.requests or 8
  o.prompt_len = o.prompt_len or 16
  o.output_len = o.output_len or 16
  o.arrival = o.arrival or { closed = 4 }
  o.shared_prefix = o.shared_prefix or 0
  o.sampling = o.sampling or { temperature = 0 }
  o.seed = o.seed or 1
  o.name = o.name or "workload"
  if type(o.requests) ~= "number" or o.requests < 1 then return nil, "workload: requests must be >= 1" end
  local ok, e = check_len(o.prompt_len, "workload: prompt_len")
  if not ok then return nil, e end
  ok, e = check_len(o.output_len, "workload: output_len")
  if not ok then return nil, e end
  local a = o.arrival
  if type(a) ~= "table" or not ((a.closed and a.closed >= 1) or (a.rate and a.rate > 0)) then
    return nil, "workload: arrival must be {closed = C} or {rate = R}"
  end
  if o.shared_prefix < 0 or o.shared_prefix > 1 then return nil, "workload: shared_prefix must be in [0, 1]" end
  return o
end

local function draw(v, rng, i)
  if type(v) == "number" then return v end
  if v.list then return v.list[(i - 1) % #v.list + 1] end
  return v[1] + math.floor(rng() * (v[2] - v[1] + 1))
end

-- Token pool from the text file (or synthetic ids when there is no text or tokenizer).
local function token_pool(w, model)
  if w.text and model.tokenizer then
    local f = io.open(w.text, "rb")
    if f then
      local s = f:read("*a")
      f:close()
      local ids = model.tokenizer:encode(s:sub(1, 200000), { add_special = false })
      if ids and #ids > 0 then return ids end
    end
  end
  local ids = {}
  for i = 1, 4096 do ids[i] = (i * 7919) % (model.n_vocab - 3) + 3 end
  return ids
end

-- requests(w, model) -> list of { ids, max_tokens, t (arrival offset in s), sampling }
function M.requests(w, model)
  local rng = S.rng(w.seed * 2654435761 % 2147483647 + 1)
  local pool = token_pool(w, model)
  local max_prompt = model.max_ctx - 1
  local shortest = type(w.prompt_len) == "number" and w.prompt_len or (w.prompt_len.list and w.prompt_len.list[1] or w.prompt_len[1])
  local plen = math.min(w.prefix_len or math.max(1, math.floor(shortest / 2)), shortest)
  local prefix = {}
  for i = 1, plen do prefix[i] = pool[(i - 1) % #pool + 1] end
  local out, t = {}, 0
  for i = 1, w.requests do
    local n = math.min(draw(w.prompt_len, rng, i), max_prompt)
    local m = draw(w.output_len, rng, i)
    local ids, k0 = {}, 0
    if rng() < w.shared_prefix then
      for j = 1, math.min(plen, n) do ids[j] = prefix[j] end
      k0 = #ids
    end
    local off = math.floor(rng() * #pool)
    for j = k0 + 1, n do ids[j] = pool[(off + j) % #pool + 1] end
    if w.arrival.rate then t = t - math.log(1 - rng()) / w.arrival.rate end
    local s = {}
    for k, v in pairs(w.sampling) do s[k] = v end
    if s.temperature and s.temperature > 0 then s.seed = (s.seed or 0) + i end
    out[i] = { ids = ids, max_tokens = m, t = w.arrival.rate and t or 0, sampling = s }
  end
  return out
end

return M
