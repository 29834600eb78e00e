-- GGUF round trip: a GGUF written by Tide from each Hugging Face checkpoint
-- (F16 and F32 tensors) loads through tide.load and gives the fixtures'
-- greedy tokens; its embedded tokenizer encodes like the original.
local H = require "helpers"
local tide = require "tide"
local G = require "tide.model_gguf"

local function ints(t)
  local l = t:tolist()
  for i = 1, #l do l[i] = math.floor(l[i] + 0.5) end
  return l
end

local dir
local function tmp()
  dir = dir or H.tmpdir()
  return dir
end

local function round_trip(name, dt, mla)
  local out = tmp() .. "/" .. name .. "-" .. dt .. ".gguf"
  assert(G.convert("models/" .. name, out, { dtype = dt }))
  local m = assert(tide.load(out, { mla = mla }))
  local fx = assert(tide.load_safetensors("tests/fixtures/" .. name .. ".safetensors"))
  for i = 0, 3 do
    local ids = ints(fx["p" .. i .. ".ids"])
    local g = assert(m:generate(ids, { max_tokens = 24, temperature = 0 }))
    H.same(g, ints(fx["p" .. i .. ".greedy"]), name .. " " .. dt .. " p" .. i .. " greedy")
  end
  H.truthy(m.tokenizer, "tokenizer from GGUF metadata")
  local ids = m.tokenizer:encode("The quick brown fox jumps over the lazy dog.", { add_special = true })
  H.same(ids, ints(fx["p0.ids"]), "GGUF tokenizer ids")
  os.remove(out)
  return m
end

local T = {}
function T.llama_f16() round_trip("llama-tiny", "f16") end
function T.llama_f32() round_trip("llama-tiny", "f32") end
function T.dsv3_f16_with_mtp()
  local m = round_trip("dsv3-tiny", "f16", "absorb")
  H.eq(#m.arch.mtp, 1, "MTP layer kept")
  local fx = assert(tide.load_safetensors("tests/fixtures/dsv3-tiny.safetensors"))
  local ids = ints(fx["p0.ids"])
  local _, mtp = assert(m:forward(ids, { mtp = true }))
  H.eq(mtp:size(1), #ids - 1, "MTP rows")
end
function T.dsv3_fp8_to_f32() round_trip("dsv3-tiny-fp8", "f32") end

-- Absorbed MLA keeps W_uk transposed ((H, kvl, dn)) so both per-head
-- products read (N, K) weight rows: from a block-quantized kv_b it is the
-- exact dequantized weight; from bf16 the absorbed and naive modes agree.
function T.absorbed_weights_from_gguf()
  local Q = require "tide.quant.quantize"
  local function logits(path, mla, ids)
    return assert(tide.load(path, { mla = mla })):forward(ids):tolist()
  end
  local fx = assert(tide.load_safetensors("tests/fixtures/dsv3-tiny.safetensors"))
  local ids = ints(fx["p1.ids"])
  local q4 = tmp() .. "/dsv3-q4_0.gguf"
  assert(Q.run({ model = "models/dsv3-tiny", scheme = "q4_0", out = q4 }))
  local m = assert(tide.load(q4, { mla = "absorb" }))
  local attn = m.arch.layers[2].attn
  attn:absorb_weights()
  H.eq(attn.kv_b.weight:dtype(), "q4_0", "kv_b stays q4_0")
  local wk = attn:wuk_t():tolist()              -- (H, kvl, dn), flat
  local w = attn.kv_b.weight:copy("f32"):tolist() -- (H * (dn + dv), kvl), flat
  local Hh, dn, dv, kvl = attn.n_head, attn.dn, attn.dv, attn.kvl
  local worst = 0
  for h = 0, Hh - 1 do
    for k = 0, kvl - 1 do
      for j = 0, dn - 1 do
        local a = wk[(h * kvl + k) * dn + j + 1]
        local b = w[(h * (dn + dv) + j) * kvl + k + 1]
        worst = math.max(worst, math.abs(a - b))
      end
    end
  end
  H.eq(worst, 0, "W_uk^T is the dequantized weight")
  os.remove(q4)
  local bf = tmp() .. "/dsv3-bf16.gguf"
  assert(Q.run({ model = "models/dsv3-tiny", scheme = "bf16", out = bf }))
  local a, b = logits(bf, "absorb", ids), logits(bf, "naive", ids)
  local d = 0
  for i = 1, #a do d = math.max(d, math.abs(a[i] - b[i])) end
  H.truthy(d <= 1e-3, "bf16 absorbed vs naive logits differ by " .. d)
  os.remove(bf)
end

function T.bad_gguf_is_refused()
  local path = tmp() .. "/bad.gguf"
  local f = io.open(path, "wb")
  f:write("GGUF not really")
  f:close()
  local m, e = tide.load(path)
  H.eq(m, nil, "no model")
  H.truthy(e and #e > 0, "an error message")
  H.fails("dtype must be f16 or f32", G.convert("models/llama-tiny", tmp() .. "/x.gguf", { dtype = "q4_k" }))
end

return T
