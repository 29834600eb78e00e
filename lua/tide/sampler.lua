-- tide.sampler: token sampling. The per-token work (penalties, temperature,
-- top-k/top-p/min-p, the seeded draw, logprobs) runs in C (src/sampler.c);
-- this wrapper turns options into parameters and owns the C object.
--
--   local s = require("tide.sampler").new({ temperature = 0.8, top_p = 0.95, seed = 1 }, n_vocab)
--   local id = s:sample(logits_row_ptr)   -- float* of n_vocab values
local F = require "tide.ffi"
local ffi, C = F.ffi, F.C
local err = F.err

local Sampler = {}
Sampler.__index = Sampler

local M = { Sampler = Sampler }

-- opts: temperature (0: greedy), top_k, top_p, min_p, repetition_penalty,
-- presence_penalty, frequency_penalty, penalty_last_n, seed.
function M.params(opts)
  local p = ffi.new("tide_sampler_params_t")
  C.tide_sampler_params_default(p)
  if opts.temperature ~= nil then p.temperature = opts.temperature end
  if opts.top_k ~= nil then p.top_k = opts.top_k end
  if opts.top_p ~= nil then p.top_p = opts.top_p end
  if opts.min_p ~= nil then p.min_p = opts.min_p end
  if opts.repetition_penalty ~= nil then p.repetition_penalty = opts.repetition_penalty end
  if opts.presence_penalty ~= nil then p.presence_penalty = opts.presence_penalty end
  if opts.frequency_penalty ~= nil then p.frequency_penalty = opts.frequency_penalty end
  if opts.penalty_last_n ~= nil then p.penalty_last_n = opts.penalty_last_n end
  if opts.seed ~= nil then p.seed = opts.seed end
  return p
end

function M.new(opts, n_vocab)
  opts = opts or {}
  for _, k in ipairs({ "temperature", "top_k", "top_p", "min_p", "repetition_penalty", "presence_penalty",
    "frequency_penalty", "penalty_last_n", "seed" }) do
    if opts[k] ~= nil and type(opts[k]) ~= "number" then return nil, "sampler: " .. k .. " must be a number" end
  end
  local p = M.params(opts)
  local out = ffi.new("tide_sampler_t*[1]")
  if C.tide_sampler_new(p, n_vocab, out, err) ~= 0 then return nil, F.errmsg() end
  return setmetatable({ _c = ffi.gc(out[0], C.tide_sampler_free), n_vocab = n_vocab,
    tok = ffi.new("int32_t[1]"), lp = ffi.new("float[1]") }, Sampler)
end

-- logits: float* (n_vocab) or a Tensor row (contiguous f32).
local function fptr(logits)
  if type(logits) == "table" then return ffi.cast("float*", logits._p.data) end
  return logits
end

function Sampler:sample(logits)
  if C.tide_sampler_sample(self._c, fptr(logits), self.tok, err) ~= 0 then return nil, F.errmsg() end
  return self.tok[0]
end

function Sampler:accept(id)
  if C.tide_sampler_accept(self._c, id, err) ~= 0 then return nil, F.errmsg() end
  return true
end

function Sampler:reset(seed) C.tide_sampler_reset(self._c, seed or 0) end

-- Log-probability of `chosen` and the n_top most likely {id, logprob} under
-- the model's distribution (before penalties and temperature).
function Sampler:logprobs(logits, chosen, n_top)
  n_top = n_top or 0
  local ids = ffi.new("int32_t[?]", math.max(n_top, 1))
  local lps = ffi.new("float[?]", math.max(n_top, 1))
  if C.tide_sampler_logprobs(fptr(logits), self.n_vocab, chosen, self.lp, n_top, ids, lps, err) ~= 0 then
    return nil, F.errmsg()
  end
  local top = {}
  for i = 0, n_top - 1 do top[i + 1] = { id = ids[i], logprob = lps[i] } end
  return self.lp[0], top
end

return M
