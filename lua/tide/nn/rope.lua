-- nn.rope: a tide_rope_t from a Hugging Face config (rope_theta and
-- rope_scaling / rope_parameters of type default, linear, llama3 or yarn).
local ffi = require "ffi"
local C = require("tide.ffi").C

local M = {}

-- YaRN's magnitude correction (as in the reference implementations).
function M.get_mscale(scale, mscale)
  if not scale or scale <= 1 then return 1.0 end
  return 0.1 * (mscale or 1) * math.log(scale) + 1.0
end

-- The scaling table of a config (nil when none), and its type.
function M.scaling(cfg)
  local rs = cfg.rope_parameters or cfg.rope_scaling
  if type(rs) ~= "table" then return nil, "default" end
  local ty = rs.rope_type or rs.type or "default"
  return rs, ty
end

-- cfg: the model config; dim: rotated dims; interleaved: pairs (2i, 2i+1).
-- Returns a tide_rope_t or nil, err.
function M.from_config(cfg, dim, interleaved)
  local r = ffi.new("tide_rope_t")
  local rs, ty = M.scaling(cfg)
  r.dim = dim
  r.interleaved = interleaved and 1 or 0
  r.theta = (rs and rs.rope_theta) or cfg.rope_theta or 10000.0
  r.factor = 1.0
  r.attn_factor = 1.0
  r.beta_fast, r.beta_slow = 32, 1
  r.low_freq_factor, r.high_freq_factor = 1, 4
  r.scaling = C.TIDE_ROPE_NONE
  if dim <= 0 or dim % 2 ~= 0 then return nil, "rope: rotated dimension " .. tostring(dim) .. " must be even and positive" end
  if ty == "default" or ty == nil then return r end
  local factor = rs.factor
  if type(factor) ~= "number" or factor <= 0 then return nil, "rope_scaling: '" .. ty .. "' needs a positive factor" end
  r.factor = factor
  if ty == "linear" then
    r.scaling = C.TIDE_ROPE_LINEAR
  elseif ty == "llama3" then
    r.scaling = C.TIDE_ROPE_LLAMA3
    r.low_freq_factor = rs.low_freq_factor or 1
    r.high_freq_factor = rs.high_freq_factor or 4
    r.orig_max_pos = rs.original_max_position_embeddings or 8192
  elseif ty == "yarn" then
    r.scaling = C.TIDE_ROPE_YARN
    r.beta_fast = rs.beta_fast or 32
    r.beta_slow = rs.beta_slow or 1
    r.orig_max_pos = rs.original_max_position_embeddings or cfg.max_position_embeddings or 4096
    local af = rs.attention_factor
    if not af then
      if rs.mscale and rs.mscale_all_dim then
        af = M.get_mscale(factor, rs.mscale) / M.get_mscale(factor, rs.mscale_all_dim)
      else
        af = M.get_mscale(factor)
      end
    end
    r.attn_factor = af
  else
    return nil, "rope_scaling type '" .. tostring(ty) .. "' is not supported (default, linear, llama3, yarn)"
  end
  return r
end

return M
