-- GGUF from Lua: write -> read round trips of metadata of every type (typed
-- helpers and plain Lua values) and of F32, F16, BF16 and raw-block Q8_0
-- tensors; ordering, alignment and errors.
local tide = require "tide"
local H = require "helpers"
local ffi = require "ffi"

local T = {}
local G = tide.gguf

function T.metadata_of_every_type_round_trips()
  local dir = H.tmpdir()
  local path = dir .. "/meta.gguf"
  local big = ffi.new("uint64_t", 2) ^ 63 + 5
  local md = {
    ["t.u8"] = G.u8(200), ["t.i8"] = G.i8(-100), ["t.u16"] = G.u16(60000), ["t.i16"] = G.i16(-30000),
    ["t.u32"] = G.u32(4000000000), ["t.i32"] = G.i32(-2000000000), ["t.f32"] = G.f32(0.5),
    ["t.bool"] = G.bool(true), ["t.str"] = G.str("h\0llo"), ["t.u64"] = G.u64(big),
    ["t.i64"] = G.i64(-2 ^ 40), ["t.f64"] = G.f64(1e300),
    ["a.u8"] = G.array("u8", { 1, 255 }), ["a.i16"] = G.array("i16", { -1, 2 }),
    ["a.f64"] = G.array("f64", { 0.1, -3 }), ["a.bool"] = G.array("bool", { true, false }),
    ["a.str"] = G.array("str", { "x", "", "\xc3\xbc" }), ["a.empty"] = G.array("i32", {}),
    -- plain Lua values
    ["p.str"] = "llama", ["p.bool"] = false, ["p.int"] = 4096, ["p.neg"] = -3, ["p.huge"] = 2 ^ 40,
    ["p.float"] = 1e-5, ["p.ints"] = { 1, -2, 3 }, ["p.floats"] = { 0.5, 1 }, ["p.strs"] = { "a", "b" },
    ["p.i64"] = ffi.new("int64_t", -7),
  }
  H.eq(G.write(path, md, {}), true, "write")
  local g = assert(G.open(path))
  H.eq(g:version(), 3)
  local m, ty = g:metadata(), g:metadata_types()
  local want_types = {
    ["t.u8"] = "uint8", ["t.i8"] = "int8", ["t.u16"] = "uint16", ["t.i16"] = "int16", ["t.u32"] = "uint32",
    ["t.i32"] = "int32", ["t.f32"] = "float32", ["t.bool"] = "bool", ["t.str"] = "string", ["t.u64"] = "uint64",
    ["t.i64"] = "int64", ["t.f64"] = "float64", ["a.u8"] = "array[uint8]", ["a.i16"] = "array[int16]",
    ["a.f64"] = "array[float64]", ["a.bool"] = "array[bool]", ["a.str"] = "array[string]",
    ["a.empty"] = "array[int32]", ["p.str"] = "string", ["p.bool"] = "bool", ["p.int"] = "uint32",
    ["p.neg"] = "int32", ["p.huge"] = "int64", ["p.float"] = "float32", ["p.ints"] = "array[int32]",
    ["p.floats"] = "array[float32]", ["p.strs"] = "array[string]", ["p.i64"] = "int64",
  }
  H.same(ty, want_types, "types")
  H.eq(m["t.u8"], 200); H.eq(m["t.i8"], -100); H.eq(m["t.u16"], 60000); H.eq(m["t.i16"], -30000)
  H.eq(m["t.u32"], 4000000000); H.eq(m["t.i32"], -2000000000); H.eq(m["t.f32"], 0.5)
  H.eq(m["t.bool"], true); H.eq(m["t.str"], "h\0llo"); H.eq(m["t.i64"], -2 ^ 40); H.eq(m["t.f64"], 1e300)
  H.truthy(type(m["t.u64"]) == "cdata" and m["t.u64"] == big, "u64 beyond 2^53 as cdata")
  H.same(m["a.u8"], { 1, 255 }); H.same(m["a.i16"], { -1, 2 }); H.same(m["a.f64"], { 0.1, -3 })
  H.same(m["a.bool"], { true, false }); H.same(m["a.str"], { "x", "", "\xc3\xbc" }); H.same(m["a.empty"], {})
  H.eq(m["p.str"], "llama"); H.eq(m["p.bool"], false); H.eq(m["p.int"], 4096); H.eq(m["p.neg"], -3)
  H.eq(m["p.huge"], 2 ^ 40); H.near(m["p.float"], 1e-5, 1e-12); H.same(m["p.ints"], { 1, -2, 3 })
  H.same(m["p.floats"], { 0.5, 1 }); H.same(m["p.strs"], { "a", "b" }); H.eq(m["p.i64"], -7)
  H.eq(g:get("nope"), nil)
  g:close()
  g:close() -- safe twice
  H.raises("closed", function() return g:metadata() end)
end

function T.tensors_round_trip_f32_f16_bf16_q8_0()
  local dir = H.tmpdir()
  local path = dir .. "/t.gguf"
  local a = tide.tensor({ { 1, 2, 3 }, { 4, 5, 6 } })
  local q = tide.zeros({ 2, 64 }, "q8_0") -- 4 blocks of 34 bytes, filled by hand
  local qb = ffi.cast("uint8_t*", q:cdata().data)
  for i = 0, 4 * 34 - 1 do qb[i] = (i * 37 + 11) % 256 end
  local ts = { a = a, h = a:to("f16"), b = a:to("bf16"), q = q }
  H.eq(G.write(path, { ["general.architecture"] = "llama" }, ts, { alignment = 64 }), true)
  local g = assert(G.open(path))
  H.eq(g:alignment(), 64)
  H.eq(g:get("general.alignment"), 64)
  local back = assert(g:tensors())
  for _, n in ipairs({ "a", "h", "b" }) do
    H.eq(back[n]:dtype(), ts[n]:dtype(), n)
    H.same(back[n]:totable(), { { 1, 2, 3 }, { 4, 5, 6 } }, n)
  end
  local bq = back.q
  H.eq(bq:dtype(), "q8_0")
  H.same(bq:shape(), { 2, 64 })
  H.eq(ffi.string(bq:cdata().data, 136), ffi.string(qb, 136), "q8_0 blocks")
  -- the same bytes sit at the offset the file states, aligned to 64
  local info
  for _, t in ipairs(g:tensor_info()) do if t.name == "q" then info = t end end
  H.eq(info.offset % 64, 0, "aligned")
  H.eq(info.bytes, 136)
  local f = assert(io.open(path, "rb"))
  f:seek("set", info.offset)
  H.eq(f:read(136), ffi.string(qb, 136), "bytes in the file")
  f:close()
  H.eq(g:tensor("h"):get(2, 3), 6)
  H.fails("no tensor", g:tensor("zz"))
  g:close()
end

function T.order_of_pairs_is_kept()
  local dir = H.tmpdir()
  local path = dir .. "/o.gguf"
  local a, b = tide.tensor({ 1 }), tide.tensor({ 2 })
  assert(G.write(path, { { "z.first", 1 }, { "a.second", "x" } }, { { "zz", a }, { "aa", b } }))
  local g = assert(G.open(path))
  H.same(g:keys(), { "z.first", "a.second" })
  local names = {}
  for i, t in ipairs(g:tensor_info()) do names[i] = t.name end
  H.same(names, { "zz", "aa" })
  g:close()
end

function T.errors()
  local dir = H.tmpdir()
  local t = tide.tensor({ 1 })
  H.fails("No such file", G.open(dir .. "/missing.gguf"))
  local bad = dir .. "/bad.gguf"
  local f = assert(io.open(bad, "wb"))
  f:write("GGUF\3\0\0\0\1\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0") -- one tensor promised, none there
  f:close()
  local _, e = G.open(bad)
  H.truthy(e and e:find(bad, 1, true) and e:find("tensor count", 1, true), e)
  H.fails("cannot create", G.write(dir .. "/no/dir.gguf", {}, { t = t }))
  H.raises("not a tensor", G.write, dir .. "/x.gguf", {}, { t = 1 })
  H.raises("empty array", G.write, dir .. "/x.gguf", { a = {} })
  H.raises("mixes", G.write, dir .. "/x.gguf", { a = { 1, "x" } })
  H.raises("unknown value type", G.array, "u7", { 1 })
  H.raises("does not fit in uint8", G.write, dir .. "/x.gguf", { a = G.u8(300) })
  H.raises("has no GGML type", G.write, dir .. "/x.gguf", {}, { f8 = t:to("f8_e4m3") })
end

return T
