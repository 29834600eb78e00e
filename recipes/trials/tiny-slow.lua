-- The baseline arm with a planted slowdown: after every engine step, extra
-- matmuls run for as long as the step took (about 2x the work).
local r = dofile("recipes/trials/tiny-a.lua")
r.name = "dsv3-tiny +extra_work 1.0"
r.extra_work = 1.0
return r
