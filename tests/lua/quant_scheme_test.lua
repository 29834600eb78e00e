-- Quantization schemes (tide.quant.scheme): rule resolution, recipes, and
-- the importance-weighted rounding of tide.quant.imatrix against round to
-- nearest.
local H = require "helpers"
local S = require "tide.quant.scheme"
local IM = require "tide.quant.imatrix"
local Tn = require "tide.tensor"
local ffi = require "ffi"

local T = {}

function T.rules_first_match_layers_and_fallbacks()
  local s = assert(S.validate({
    default = "q4_0",
    rules = {
      { match = { "embed_tokens", "lm_head" }, type = "keep" },
      { layers = { 0, 0 }, type = "q8_0" },
      { layers = { -1, -1 }, type = "q6_k" },
      { match = "mlp%.experts%.", type = "q4_k" },
      { match = "self_attn", layers = { 1, -2 }, type = "bf16" },
    },
  }))
  local nl = 6
  H.eq(S.type_for(s, "model.embed_tokens.weight", { 100, 256 }, nl, "bf16"), "bf16", "keep = source float type")
  H.eq(S.type_for(s, "lm_head.weight", { 100, 256 }, nl, "f8_e4m3"), "f16", "keep of a non-float source")
  H.eq(S.type_for(s, "model.layers.0.mlp.experts.3.up_proj.weight", { 64, 256 }, nl), "q8_0", "first layer wins")
  H.eq(S.type_for(s, "model.layers.5.self_attn.o_proj.weight", { 64, 512 }, nl), "q6_k", "last layer (-1)")
  H.eq(S.type_for(s, "model.layers.2.mlp.experts.3.up_proj.weight", { 64, 512 }, nl), "q4_k", "pattern")
  H.eq(S.type_for(s, "model.layers.2.mlp.experts.3.down_proj.weight", { 64, 160 }, nl), "q4_0",
    "q4_k falls back to q4_0 when rows are not a multiple of 256")
  H.eq(S.type_for(s, "model.layers.3.self_attn.q_proj.weight", { 64, 256 }, nl), "bf16", "layer range 1..-2")
  H.eq(S.type_for(s, "model.layers.3.mlp.gate_proj.weight", { 64, 256 }, nl), "q4_0", "default")
  H.eq(S.type_for(s, "model.layers.3.mlp.gate_proj.weight", { 64, 48 }, nl), "f16", "q4_0 -> f16 for 48")
  H.eq(S.type_for(s, "model.norm.weight", { 256 }, nl), "f32", "vectors stay f32")
  H.eq(S.type_for(s, "model.layers.2.mlp.gate.weight", { 64, 256 }, nl), "f32", "routers stay f32")
  H.eq(S.file_type(s, { a = "q4_0", b = "q4_0", c = "q8_0", d = "f32" }), S.FILE_TYPE.q4_0, "most common type")
end

function T.every_recipe_loads()
  for _, n in ipairs({ "q8_0", "q4_0", "q4_k", "q6_k", "bf16", "q4_0-imatrix", "q4_0-awq", "q4_k-imatrix", "experts-q4", "mixed" }) do
    local s, e = S.load(n)
    H.truthy(s, tostring(e))
    H.eq(s.name, n)
  end
  local s = assert(S.load("recipes/quant/mixed.lua"))
  H.eq(s.method, "imatrix")
end

function T.bad_schemes_are_errors()
  H.fails("unknown method", S.validate({ method = "magic" }))
  H.fails("unknown default", S.validate({ default = "q3_x" }))
  H.fails("rule 1: unknown type", S.validate({ rules = { { match = "x", type = "int3" } } }))
  H.fails("layers", S.validate({ rules = { { layers = { 1 }, type = "q8_0" } } }))
  H.fails("not found", S.load("no-such-scheme"))
end

-- weighted squared error of q (dequantized) against w, importance imp (or 1)
local function werr(w, q, imp)
  local K = w:size(2)
  local a = ffi.cast("float*", w:cdata().data)
  local d = q:to("f32")
  local b = ffi.cast("float*", d:cdata().data)
  local e = 0
  for i = 0, w:numel() - 1 do
    local x = a[i] - b[i]
    e = e + (imp and imp[i % K] or 1) * x * x
  end
  return e
end

function T.imatrix_rounding_beats_round_to_nearest()
  local R, K = 32, 256
  local w = Tn.zeros({ R, K })
  local p = ffi.cast("float*", w:cdata().data)
  local s = 12345
  local function rnd() s = (s * 1103515245 + 12345) % 2147483648; return s / 2147483648 end
  for i = 0, R * K - 1 do p[i] = (rnd() - 0.5) * (rnd() < 0.05 and 6 or 1) end
  local imp = ffi.new("double[?]", K)
  for j = 0, K - 1 do imp[j] = math.exp(4 * (rnd() - 0.5)) end
  for _, dt in ipairs({ "q4_0", "q8_0", "q4_k" }) do
    local rtn = w:to(dt)
    local uni = IM.quantize(w, dt, nil)
    local wq = IM.quantize(w, dt, imp)
    H.eq(wq:dtype(), dt)
    if dt ~= "q4_k" then
      H.truthy(werr(w, uni) <= werr(w, rtn), dt .. ": search no worse than round to nearest")
    else
      H.truthy(werr(w, uni) < 1.1 * werr(w, rtn), dt .. ": uniform weights close to the reference")
    end
    H.truthy(werr(w, wq, imp) < 0.97 * werr(w, rtn, imp),
      string.format("%s: weighted error %.4g vs %.4g", dt, werr(w, wq, imp), werr(w, rtn, imp)))
    -- stacked (E, rows, K) with one importance vector per matrix
    local st = w:reshape({ 2, R / 2, K })
    local sq = IM.quantize(st, dt, { imp, imp })
    H.eq(werr(w, sq:reshape({ R, K }), imp), werr(w, wq, imp), dt .. ": stacked = per matrix")
  end
  -- a zero block stays zero
  local z = Tn.zeros({ 1, 32 })
  H.eq(IM.quantize(z, "q4_0"):to("f32"):get(1, 7), 0)
end

return T
