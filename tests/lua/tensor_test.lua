-- The Lua tensor API: construction, shape/dtype, totable, views, printing,
-- errors, explicit free, and arithmetic through the C ops.
local H = require "helpers"
local tide = require "tide"

local T = {}

function T.tensor_from_nested_tables()
  local t = tide.tensor({ { 1, 2, 3 }, { 4, 5, 6 } })
  H.same(t:shape(), { 2, 3 })
  H.eq(t:dtype(), "f32")
  H.eq(t:numel(), 6)
  H.same(t:totable(), { { 1, 2, 3 }, { 4, 5, 6 } })
  H.eq(t:get(2, 3), 6)
  t:set(2, 3, 7.5)
  H.eq(t:get(2, 3), 7.5)
  H.same(tide.tensor({ 1, 2 }):totable(), { 1, 2 })
end

function T.dtypes_convert()
  local t = tide.tensor({ 1.5, -2.25, 3 }, "bf16")
  H.eq(t:dtype(), "bf16")
  H.same(t:totable(), { 1.5, -2.25, 3 })
  local h = t:to("f16")
  H.eq(h:dtype(), "f16")
  H.same(h:to("f32"):totable(), { 1.5, -2.25, 3 })
  H.raises("unknown dtype", function() tide.tensor({ 1 }, "f7") end)
end

function T.bad_construction_raises()
  H.raises("ragged", function() tide.tensor({ { 1, 2 }, { 3 } }) end)
  H.raises("numbers", function() tide.tensor({ "a" }) end)
  H.raises("at most 4", function() tide.zeros({ 1, 1, 1, 1, 1 }) end)
end

function T.views_and_copies()
  local t = tide.tensor({ { 1, 2, 3 }, { 4, 5, 6 } })
  local tr = t:t()
  H.same(tr:shape(), { 3, 2 })
  H.same(tr:totable(), { { 1, 4 }, { 2, 5 }, { 3, 6 } })
  H.eq(tr:is_contiguous(), false)
  H.eq(tr:contiguous():is_contiguous(), true)
  local n = t:narrow(2, 2, 2)
  H.same(n:totable(), { { 2, 3 }, { 5, 6 } })
  H.same(t:reshape({ 3, 2 }):totable(), { { 1, 2 }, { 3, 4 }, { 5, 6 } })
  H.same(t:reshape({ -1 }):shape(), { 6 })
  H.raises("elements", function() t:reshape({ 4, 2 }) end)
  H.raises("outside", function() t:narrow(2, 3, 2) end)
end

function T.tostring_shows_shape_dtype_values()
  local s = tostring(tide.tensor({ { 1, 2 }, { 3, 4 } }))
  H.truthy(s:find("2x2", 1, true), s)
  H.truthy(s:find("f32", 1, true), s)
  H.truthy(s:find("[3, 4]", 1, true), s)
  local big = tostring(tide.zeros({ 100 }))
  H.truthy(big:find("...", 1, true), big)
end

function T.free_is_safe_twice()
  local t = tide.tensor({ 1, 2 })
  t:free()
  t:free()
  H.eq(tostring(t), "tensor(freed)")
  H.raises("freed", function() return t:shape() end)
end

function T.matmul_and_arithmetic()
  local a = tide.tensor({ { 1, 2 }, { 3, 4 } })
  H.same(a:matmul(a):totable(), { { 7, 10 }, { 15, 22 } })
  H.same(a:linear(a):totable(), { { 5, 11 }, { 11, 25 } }) -- a @ a^T
  H.same((a + a):totable(), { { 2, 4 }, { 6, 8 } })
  H.same((a * a):totable(), { { 1, 4 }, { 9, 16 } })
  H.same((a * 2):totable(), { { 2, 4 }, { 6, 8 } })
  H.same((a - 1):totable(), { { 0, 1 }, { 2, 3 } })
  H.same((-a):totable(), { { -1, -2 }, { -3, -4 } })
  local s = a:softmax():totable()
  H.near(s[1][1] + s[1][2], 1, 1e-6)
  H.raises("matmul", function() a:matmul(tide.tensor({ 1, 2 })) end)
end

function T.threads_are_settable()
  local n = tide.threads()
  H.truthy(tide.set_threads(1))
  H.eq(tide.threads(), 1)
  H.truthy(tide.set_threads(n))
  local ok, err = tide.set_threads(1000)
  H.eq(ok, nil)
  H.truthy(err:find("thread count", 1, true), err)
end

return T
