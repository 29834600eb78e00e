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

return tide
