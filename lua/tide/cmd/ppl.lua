-- tide ppl: perplexity of a model on a text file. Documents are split on
-- blank lines, each encoded with BOS and followed by EOS, concatenated; the
-- first max-tokens + 1 tokens are scored in non-overlapping windows of ctx
-- tokens (each window predicts its next ctx tokens from an empty cache).
local ffi = require "ffi"

local M = {}

M.usage = [[
usage: tide ppl [--model PATH] --file TEXT [--ctx 256] [--max-tokens 65536] [--kv-dtype T] [--json]

  --model PATH       Hugging Face folder or .gguf (default models/dsv3-tiny)
  --file TEXT        the text (documents separated by blank lines)
  --ctx N            window length (default 256)
  --max-tokens N     tokens scored (default 65536)
  --mla MODE         auto | naive | absorb (DeepSeek-V3; default auto)
  --kv-dtype T       KV cache dtype: f32 (default), bf16, f16, f8_e4m3, q8_0 (GGML blocks of 32)
  --numerics N       tide (default) | ggml: llama.cpp's CPU arithmetic and order, op for op
  --threads N        compute threads
  --json             print {"nll": ..., "ppl": ..., "tokens": ...}]]

local spec = { model = "string", file = "string", ctx = "number", max_tokens = "number", json = "flag", kv_dtype = "string",
  mla = "string", threads = "number", numerics = "string" }

local function fail(msg)
  io.stderr:write("tide ppl: ", msg, "\n")
  return 1
end

-- Documents of a text: split on blank lines, trimmed of surrounding newlines, empty ones dropped.
function M.documents(text)
  local docs = {}
  text = text:gsub("\r\n", "\n")
  local start = 1
  while true do
    local a, b = text:find("\n[ \t]*\n", start)
    local piece = text:sub(start, a and a - 1 or #text)
    piece = piece:gsub("^\n+", ""):gsub("\n+$", "")
    if piece:match("%S") then docs[#docs + 1] = piece end
    if not a then break end
    start = b + 1
  end
  return docs
end

-- Token stream of the documents: BOS doc EOS ..., up to limit tokens.
function M.token_stream(model, docs, limit)
  local tok = model.tokenizer
  local bos, eos = model.bos_id, model.eos_id
  if type(eos) == "table" then eos = eos[1] end
  local out = {}
  for _, d in ipairs(docs) do
    if #out >= limit then break end
    local ids = tok:encode(d, { add_special = false })
    if bos then out[#out + 1] = bos end
    for _, v in ipairs(ids) do out[#out + 1] = v end
    if eos then out[#out + 1] = eos end
  end
  while #out > limit do out[#out] = nil end
  return out
end

-- Mean NLL of toks (a list) in windows of ctx: returns nll, count.
function M.score(model, toks, ctx)
  local C = require("tide.ffi").C
  local err = require("tide.ffi").err
  local lp = ffi.new("float[1]")
  local V = model.n_vocab
  local sum, cnt = 0.0, 0
  for s = 1, #toks - 1, ctx do
    local n = math.min(ctx, #toks - s)
    local win = {}
    for i = 0, n - 1 do win[i + 1] = toks[s + i] end
    local logits, e = model:forward(win)
    if not logits then return nil, e end
    local p = ffi.cast("float*", logits:cdata().data)
    for i = 0, n - 1 do
      if C.tide_sampler_logprobs(p + i * V, V, toks[s + i + 1], lp, 0, nil, nil, err) ~= 0 then
        return nil, require("tide.ffi").errmsg()
      end
      sum = sum - lp[0]
      cnt = cnt + 1
    end
    logits:free()
  end
  return sum / cnt, cnt
end

function M.main(args)
  local A = require "tide.cmd.args"
  local o, e = A.parse(args, spec)
  if not o then return fail(e .. " (see tide ppl --help)") end
  if not o.file then return fail("missing --file (see tide ppl --help)") end
  local f = io.open(o.file, "rb")
  if not f then return fail("cannot read " .. o.file) end
  local text = f:read("*a")
  f:close()
  local ctx = o.ctx or 256
  local max_tokens = o.max_tokens or 65536
  if ctx < 1 or max_tokens < 1 then return fail("--ctx and --max-tokens must be positive") end
  local tide = require "tide"
  local m, le = tide.load(o.model or "models/dsv3-tiny", { mla = o.mla, threads = o.threads, numerics = o.numerics,
    kv = { blocks = math.ceil(ctx / 16) + 2, dtype = o.kv_dtype } })
  if not m then return fail(le) end
  local okc, ce = pcall(m.kv_cache, m)
  if not okc then return fail(tostring(ce):gsub("^.-kv cache: ", "")) end
  if not m.tokenizer then return fail(m.tokenizer_error or "the model has no tokenizer") end
  local toks = M.token_stream(m, M.documents(text), max_tokens + 1)
  if #toks < 2 then return fail("not enough text to score") end
  local nll, cnt = M.score(m, toks, ctx)
  if not nll then return fail(cnt) end
  if o.json then
    print(A.json({ nll = nll, ppl = math.exp(nll), tokens = cnt, kv_dtype = m.kv.dtype,
      kv_bytes_per_token = m.kv:bytes_per_token() }))
  else
    print(string.format("nll %.6f  ppl %.4f  tokens %d  (ctx %d, kv %s, %d bytes/token)", nll, math.exp(nll), cnt, ctx,
      m.kv.dtype, m.kv:bytes_per_token()))
  end
  return 0
end

return M
