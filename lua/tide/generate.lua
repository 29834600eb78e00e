-- tide.generate: the generation loop of one sequence through the paged KV
-- cache: prefill (optionally in chunks), then one decode step per token,
-- sampling in C, stop ids / EOS / stop strings checked here.
local ffi = require "ffi"
local Sampler = require "tide.sampler"

local M = {}

local REUSE = { reuse = true }

-- Wall-clock seconds (CLOCK_MONOTONIC).
pcall(ffi.cdef, "struct timespec { long tv_sec; long tv_nsec; }; int clock_gettime(int, struct timespec *);")
local ts = ffi.new("struct timespec")
local function clock()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end
M.clock = clock

-- Returns new ids (list), info {finish_reason, timings, logprobs?, text?}, or nil, err.
function M.generate(model, ids, opts)
  if type(ids) ~= "table" or #ids == 0 then return nil, "generate: ids must be a non-empty list of token ids" end
  local max_tokens = opts.max_tokens or 16
  if type(max_tokens) ~= "number" or max_tokens < 0 then return nil, "generate: max_tokens must be >= 0" end
  if #ids >= model.max_ctx then
    return nil, string.format("generate: prompt of %d tokens does not fit the context of %d", #ids, model.max_ctx)
  end
  local sampler, e = Sampler.new(opts, model.n_vocab)
  if not sampler then return nil, e end
  local stop_ids = {}
  if not opts.ignore_eos then
    local eos = model.eos_id
    if type(eos) == "table" then for _, v in ipairs(eos) do stop_ids[v] = true end
    elseif eos then stop_ids[eos] = true end
  end
  for _, v in ipairs(opts.stop_ids or {}) do stop_ids[v] = true end
  local stops = opts.stop
  if type(stops) == "string" then stops = { stops } end
  if stops and #stops > 0 and not model.tokenizer then return nil, "generate: stop strings need a tokenizer" end
  for _, t in ipairs(ids) do
    local ok, se = sampler:accept(t)
    if not ok then return nil, "generate: " .. se end
  end
  local kv = model:kv_cache()
  local seq, se = kv:seq_new()
  if not seq then return nil, se end
  local info = { timings = {}, finish_reason = "length" }
  local t0 = clock()
  local chunk = opts.chunk or #ids
  local logits, err
  for i = 1, #ids, chunk do
    local part = {}
    for j = i, math.min(i + chunk - 1, #ids) do part[#part + 1] = ids[j] end
    logits, err = model:step({ seq }, { part }, "last", REUSE)
    if not logits then
      kv:seq_free(seq)
      return nil, err
    end
  end
  local t1 = clock()
  info.timings.prefill_s = t1 - t0
  info.timings.prompt_tokens = #ids
  local out = {}
  local lps = opts.logprobs and {} or nil
  local text = ""
  for k = 1, max_tokens do
    local row = ffi.cast("float*", logits._p.data)
    local tok, serr = sampler:sample(row)
    if not tok then
      kv:seq_free(seq)
      return nil, serr
    end
    if lps then
      local lp, top = sampler:logprobs(row, tok, opts.top_logprobs or 0)
      lps[#lps + 1] = { id = tok, logprob = lp, top = top }
    end
    if stop_ids[tok] then
      info.finish_reason = "stop"
      break
    end
    out[#out + 1] = tok
    sampler:accept(tok)
    if opts.on_token then opts.on_token(tok) end
    if stops and #stops > 0 then
      text = model.tokenizer:decode(out)
      local cut
      for _, s in ipairs(stops) do
        local a = text:find(s, 1, true)
        if a and (not cut or a < cut) then cut = a end
      end
      if cut then
        info.finish_reason = "stop"
        info.stop_text = text:sub(1, cut - 1)
        break
      end
    end
    if k == max_tokens then break end
    if kv:seq_len(seq) + 1 > model.max_ctx then
      info.finish_reason = "context"
      break
    end
    logits, err = model:step({ seq }, { { tok } }, "last", REUSE)
    if not logits then
      kv:seq_free(seq)
      return nil, err
    end
  end
  info.timings.decode_s = clock() - t1
  info.timings.generated_tokens = #out
  info.logprobs = lps
  kv:seq_free(seq)
  return out, info
end

return M
