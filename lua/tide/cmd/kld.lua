-- tide kld: how far a (quantized) model's token distributions are from a
-- base model's on the same text, in one run: mean and p99 of
-- KL(P_base || P_model) per token, top-1 agreement, and the perplexity
-- ratio ppl(model) / ppl(base). Tokens as tide ppl makes them (documents
-- split on blank lines, BOS ... EOS), windows of ctx tokens from an empty cache.
local ffi = require "ffi"

local M = {}

M.usage = [[
usage: tide kld --base PATH --model PATH --file TEXT [--ctx 256] [--max-tokens 4096] [--kv-dtype T] [--json]

  --base PATH        reference model (Hugging Face folder or .gguf)
  --model PATH       model compared against it (e.g. a quantized .gguf)
  --file TEXT        the text (the base model's tokenizer encodes it)
  --ctx N            window length (default 256)
  --max-tokens N     tokens scored (default 4096)
  --kv-dtype T       KV cache dtype of --model (f32, bf16, f16, f8_e4m3, q8_0; the base keeps f32):
                     with --model the same as --base, the cost of a quantized KV cache alone
  --threads N        compute threads
  --json             one JSON line: kld_mean, kld_p99, kld_max, top1, ppl_base, ppl_model, ppl_ratio, tokens]]

local spec = { base = "string", model = "string", file = "string", ctx = "number", max_tokens = "number", kv_dtype = "string",
  json = "flag", threads = "number" }

-- log-softmax statistics of one row: returns max, log-sum-exp
local function lse(p, V)
  local mx = -math.huge
  for j = 0, V - 1 do if p[j] > mx then mx = p[j] end end
  local s = 0
  for j = 0, V - 1 do s = s + math.exp(p[j] - mx) end
  return mx + math.log(s)
end

-- compare(base, model, toks, ctx) -> result table or nil, err
function M.compare(base, model, toks, ctx)
  if base.n_vocab ~= model.n_vocab then
    return nil, string.format("vocabularies differ (%d vs %d)", base.n_vocab, model.n_vocab)
  end
  local V = base.n_vocab
  local kls = {}
  local agree, nll_b, nll_m = 0, 0, 0
  for s = 1, #toks - 1, ctx do
    local n = math.min(ctx, #toks - s)
    local win = {}
    for i = 0, n - 1 do win[i + 1] = toks[s + i] end
    local lb, e = base:forward(win)
    if not lb then return nil, e end
    local lm, e2 = model:forward(win)
    if not lm then return nil, e2 end
    local pb = ffi.cast("float*", lb:cdata().data)
    local pm = ffi.cast("float*", lm:cdata().data)
    for i = 0, n - 1 do
      local a, b = pb + i * V, pm + i * V
      local za, zb = lse(a, V), lse(b, V)
      local kl, ia, ib = 0, 0, 0
      for j = 0, V - 1 do
        local la = a[j] - za
        local pa = math.exp(la)
        kl = kl + pa * (la - (b[j] - zb))
        if a[j] > a[ia] then ia = j end
        if b[j] > b[ib] then ib = j end
      end
      kls[#kls + 1] = math.max(kl, 0)
      if ia == ib then agree = agree + 1 end
      local nxt = toks[s + i + 1]
      nll_b = nll_b - (a[nxt] - za)
      nll_m = nll_m - (b[nxt] - zb)
    end
    lb:free()
    lm:free()
  end
  local n = #kls
  local sum = 0
  for i = 1, n do sum = sum + kls[i] end
  table.sort(kls)
  local p99 = kls[math.max(1, math.ceil(0.99 * n))]
  local ppl_b, ppl_m = math.exp(nll_b / n), math.exp(nll_m / n)
  return { kld_mean = sum / n, kld_p99 = p99, kld_max = kls[n], top1 = agree / n, ppl_base = ppl_b,
    ppl_model = ppl_m, ppl_ratio = ppl_m / ppl_b, tokens = n }
end

function M.main(args)
  local A = require "tide.cmd.args"
  local o, e = A.parse(args, spec)
  local function fail(msg) io.stderr:write("tide kld: ", msg, "\n") return 1 end
  if not o then return fail(e .. " (see tide kld --help)") end
  if not o.base or not o.model or not o.file then return fail("--base, --model and --file are required") end
  local f = io.open(o.file, "rb")
  if not f then return fail("cannot read " .. o.file) end
  local text = f:read("*a")
  f:close()
  local ctx, max_tokens = o.ctx or 256, o.max_tokens or 4096
  if ctx < 1 or max_tokens < 1 then return fail("--ctx and --max-tokens must be positive") end
  local tide = require "tide"
  local kvo = { blocks = math.ceil(ctx / 16) + 2 }
  local base, be = tide.load(o.base, { threads = o.threads, kv = kvo })
  if not base then return fail(be) end
  local model, me = tide.load(o.model, { kv = { blocks = kvo.blocks, dtype = o.kv_dtype } })
  if not model then return fail(me) end
  local okc, ce = pcall(model.kv_cache, model)
  if not okc then return fail(tostring(ce):gsub("^.-kv cache: ", "")) end
  if not base.tokenizer then return fail(base.tokenizer_error or "the base model has no tokenizer") end
  local P = require "tide.cmd.ppl"
  local toks = P.token_stream(base, P.documents(text), max_tokens + 1)
  if #toks < 2 then return fail("not enough text to score") end
  local r, ce = M.compare(base, model, toks, ctx)
  if not r then return fail(ce) end
  if o.json then
    r.base, r.model, r.kv_dtype, r.kv_bytes_per_token = o.base, o.model, model.kv.dtype, model.kv:bytes_per_token()
    print(A.json(r))
  else
    print(string.format("KLD mean %.6f  p99 %.6f  max %.6f  top-1 %.2f%%  ppl %.4f / %.4f = %.4f  (%d tokens, ctx %d)",
      r.kld_mean, r.kld_p99, r.kld_max, 100 * r.top1, r.ppl_model, r.ppl_base, r.ppl_ratio, r.tokens, ctx))
  end
  return 0
end

return M
