-- tide: the Lua API. `local tide = require "tide"`.
local F = require "tide.ffi"
local T = require "tide.tensor"
local ffi, C = F.ffi, F.C

local tide = {
  _VERSION = ffi.string(C.tide_version()),
  Tensor = T.Tensor,
  tensor = T.tensor,
  zeros = T.zeros,
  is_tensor = T.is_tensor,
  set_threads = T.set_threads,
  dtypes = T.dtypes,
}

-- File formats (implemented in tide.safetensors / tide.gguf).
function tide.load_safetensors(path) return require("tide.safetensors").load(path) end
function tide.save_safetensors(path, tensors, metadata) return require("tide.safetensors").save(path, tensors, metadata) end

-- A short map of the API, for the REPL.
function tide.help()
  print([[
tide.tensor(data [, dtype])      tensor from nested tables (f32 default; "bf16", "f16", ...)
tide.zeros(shape [, dtype])      zero-filled tensor
t:shape() t:dtype() t:totable()  inspect; tostring(t) shows shape, dtype, values
t:matmul(b) t:linear(w) a+b a*b  ops (also :softmax :rmsnorm :silu :topk :get_rows ...)
t:t() t:narrow(d,s,n) t:reshape  views (no copy); t:copy(dtype) / t:to(dtype) convert
tide.load_safetensors(path)      name -> tensor (file, folder or sharded index; mmapped)
tide.save_safetensors(path, tbl) write tensors
tide.gguf.open(path)             :metadata() :tensors();  tide.gguf.write(path, md, tensors)
tide.load(path [, opts])         a model (Hugging Face folder or .gguf)
tide.tokenizer(path)             :encode(text) :decode(ids) :apply_chat_template(msgs)
tide.set_threads(n)              threads used by ops
Runtime failures return nil, message; programmer errors raise.]])
end

function tide.threads() return C.tide_pool_threads(T.default_pool()) end

-- Lazily loaded submodules: tide.gguf, tide.json, ...
setmetatable(tide, {
  __index = function(t, k)
    local ok, mod = pcall(require, "tide." .. k)
    if ok then rawset(t, k, mod) return mod end
    if not tostring(mod):find("module 'tide." .. k .. "' not found", 1, true) then error(mod, 2) end
    return nil
  end,
})

-- Models (implemented in tide.model): tide.load(path, opts) -> model or nil, err.
function tide.load(path, opts) return require("tide.model").load(path, opts) end

-- Tokenizers (implemented in tide.tokenizer): tide.tokenizer(path) -> tokenizer or nil, err.
function tide.tokenizer(path, opts) return require("tide.tokenizer").load(path, opts) end

-- A/B trials (implemented in tide.ab): tide.ab{ arms = {"a.lua", "b.lua"}, workload = "tiny", repeats = 10, out = DIR }
-- -> result (res.verdicts[2].headline.verdict) or nil, err; tide.ab.sweep{...} sweeps one setting.
tide.ab = setmetatable({}, { __index = function(_, k) return require("tide.ab")[k] end,
  __call = function(_, o) return require("tide.ab").trial(o) end })

-- Profiling (implemented in tide.profile): tide.profile(fn [, opts]) -> report (per-op summary,
-- :print(), :write_trace(path)) and fn's results.
function tide.profile(fn, opts) return require("tide.profile").run(fn, opts) end

return tide
