-- safetensors from Lua: the reference models (every tensor, and one known
-- value per model decoded by hand from the file's bytes), save -> load round
-- trips of every dtype, and errors.
local tide = require "tide"
local H = require "helpers"
local cjson = require "cjson"
local ffi = require "ffi"

local T = {}

-- ---- an independent reader: header and raw bytes straight from the file ----

local function u64le(s)
  local v = 0
  for i = 8, 1, -1 do v = v * 256 + s:byte(i) end
  return v
end

-- header table and data start of a safetensors file
local function raw_header(path)
  local f = assert(io.open(path, "rb"))
  local n = u64le(f:read(8))
  local hdr = cjson.decode(f:read(n))
  f:close()
  return hdr, 8 + n
end

local function raw_bytes(path, offset, n)
  local f = assert(io.open(path, "rb"))
  f:seek("set", offset)
  local s = f:read(n)
  f:close()
  return s
end

local function f32_from_bits(bits)
  local sign = bits >= 2 ^ 31 and -1 or 1
  local exp = math.floor(bits / 2 ^ 23) % 256
  local man = bits % 2 ^ 23
  if exp == 255 then return man == 0 and sign * math.huge or 0 / 0 end
  if exp == 0 then return sign * man * 2 ^ -149 end
  return sign * (1 + man / 2 ^ 23) * 2 ^ (exp - 127)
end

local DECODE = {
  F32 = { 4, function(s, i)
    return f32_from_bits(s:byte(i) + s:byte(i + 1) * 256 + s:byte(i + 2) * 65536 + s:byte(i + 3) * 16777216)
  end },
  BF16 = { 2, function(s, i) return f32_from_bits((s:byte(i) + s:byte(i + 1) * 256) * 65536) end },
  F8_E4M3 = { 1, function(s, i)
    local v = s:byte(i)
    local sign = v >= 128 and -1 or 1
    local exp, man = math.floor(v / 8) % 16, v % 8
    if exp == 15 and man == 7 then return 0 / 0 end
    if exp == 0 then return sign * man / 8 * 2 ^ -6 end
    return sign * (1 + man / 8) * 2 ^ (exp - 7)
  end },
}

-- Element k (1-based, flat) of a tensor decoded from the file by hand.
local function file_value(dir, shard, name, k)
  local path = dir .. "/" .. shard
  local hdr, start = raw_header(path)
  local e = assert(hdr[name], name)
  local d = DECODE[e.dtype]
  local s = raw_bytes(path, start + e.data_offsets[1] + (k - 1) * d[1], d[1])
  return d[2](s, 1), e
end

local function weight_map(dir)
  local f = assert(io.open(dir .. "/model.safetensors.index.json"))
  local idx = cjson.decode(f:read("*a"))
  f:close()
  return idx.weight_map
end

-- ---- reference models ------------------------------------------------------

function T.load_dsv3_fp8_every_tensor()
  local dir = "models/dsv3-tiny-fp8"
  local ts, meta = tide.load_safetensors(dir)
  H.truthy(ts, meta)
  H.eq(meta.format, "pt", "metadata")
  local wm = weight_map(dir)
  local n, dtypes = 0, {}
  for name, t in pairs(ts) do
    n = n + 1
    H.truthy(wm[name], "tensor " .. name .. " is in the index")
    dtypes[t:dtype()] = (dtypes[t:dtype()] or 0) + 1
  end
  local n_index = 0
  for _ in pairs(wm) do n_index = n_index + 1 end
  H.eq(n, n_index, "tensor count")
  H.truthy(dtypes.bf16 and dtypes.f8_e4m3 and dtypes.f32, "three dtypes")
  H.eq(dtypes.bf16 + dtypes.f8_e4m3 + dtypes.f32, n, "only those three")
  -- one known value per dtype, decoded by hand from the file
  local checks = {
    { "model.layers.1.self_attn.kv_a_proj_with_mqa.weight", 7 },
    { "model.layers.1.self_attn.kv_a_proj_with_mqa.weight_scale_inv", 1 },
    { "model.embed_tokens.weight", 300 },
    { "model.norm.weight", 5 },
  }
  for _, c in ipairs(checks) do
    local name, k = c[1], c[2]
    local want, e = file_value(dir, wm[name], name, k)
    local t = ts[name]
    H.same(t:shape(), e.shape, name .. " shape")
    H.eq(t:get(k), want, name .. "[" .. k .. "]")
  end
end

function T.load_llama_sharded_every_tensor()
  local dir = "models/llama-tiny"
  local ts = assert(tide.load_safetensors(dir .. "/model.safetensors.index.json"))
  local wm = weight_map(dir)
  local shards = {}
  for name, shard in pairs(wm) do
    local t = H.truthy(ts[name], name)
    H.eq(t:dtype(), "bf16", name)
    shards[shard] = true
  end
  local n = 0
  for _ in pairs(ts) do n = n + 1 end
  H.eq(n, 39, "tensor count")
  H.truthy(shards["model-00001-of-00002.safetensors"] and shards["model-00002-of-00002.safetensors"], "two shards")
  local name = "model.layers.3.mlp.up_proj.weight" -- in the second shard
  local want = file_value(dir, wm[name], name, 1234)
  H.eq(ts[name]:get(1234), want, name)
  H.truthy(bit.band(ts[name]:cdata().flags, 1) == 1, "read-only view")
end

-- ---- round trips ------------------------------------------------------------

local VALUES = { 1, -2, 3.5, 0, 0.25, -7, 100, 1.5 }
local INT_VALUES = { 1, -2, 3, 0, 120, -7, 100, 5 }

function T.save_load_round_trip_every_dtype()
  local dir = H.tmpdir()
  local tensors = {}
  local dts = { "f32", "f16", "bf16", "f8_e4m3", "i32", "i64", "u8", "f64", "i8", "i16" }
  for _, dt in ipairs(dts) do
    local t = tide.zeros({ 8 }, dt)
    local ints = dt:sub(1, 1) == "i" or dt == "u8"
    for k = 1, 8 do
      local v = ints and INT_VALUES[k] or VALUES[k]
      if dt == "u8" then v = math.abs(v) end
      t:set(k, v)
    end
    tensors["w." .. dt] = t:reshape({ 2, 4 })
  end
  tensors["w.view"] = tensors["w.f32"]:t() -- strided: written contiguous
  local path = dir .. "/rt.safetensors"
  H.eq(tide.save_safetensors(path, tensors, { format = "pt", step = 3 }), true, "save")
  local back, meta = assert(tide.load_safetensors(path))
  H.same(meta, { format = "pt", step = "3" }, "metadata")
  for name, t in pairs(tensors) do
    local b = H.truthy(back[name], name)
    H.eq(b:dtype(), t:dtype(), name .. " dtype")
    H.same(b:shape(), t:shape(), name .. " shape")
    for k = 1, t:numel() do H.eq(b:get(k), t:get(k), name .. "[" .. k .. "]") end
  end
  -- the stored bytes equal the tensor's bytes
  local hdr, start = raw_header(path)
  local e = hdr["w.bf16"]
  local s = raw_bytes(path, start + e.data_offsets[1], 16)
  local t = tensors["w.bf16"]
  H.eq(s, ffi.string(t:cdata().data, 16), "bf16 bytes")
  os.remove(path)
end

function T.save_and_load_errors()
  local dir = H.tmpdir()
  local t = tide.tensor({ 1, 2 })
  H.raises("not a tensor", tide.save_safetensors, dir .. "/a.safetensors", { w = { 1, 2 } })
  H.raises("must be a string", tide.save_safetensors, 5, { w = t })
  H.raises("metadata must map strings", tide.save_safetensors, dir .. "/a.safetensors", { w = t }, { x = {} })
  H.fails("cannot create", tide.save_safetensors(dir .. "/no/such/dir.safetensors", { w = t }))
  local q = tide.zeros({ 1, 32 }, "q8_0")
  H.fails("cannot be stored in safetensors", tide.save_safetensors(dir .. "/q.safetensors", { q = q }))
  H.fails("No such file", tide.load_safetensors(dir .. "/missing.safetensors"))
  local bad = dir .. "/bad.safetensors"
  local f = assert(io.open(bad, "wb"))
  f:write("\16\0\0\0\0\0\0\0{\"a\":{\"dtype\":\"F32\"") -- a header cut short
  f:close()
  local _, e = tide.load_safetensors(bad)
  H.truthy(e:find(bad, 1, true) and e:find("not valid JSON", 1, true), e)
end

return T
