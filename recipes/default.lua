-- The default job (`make run`): until models land, a short demo on tensors.
local tide = require "tide"
local a = tide.tensor({ { 1, 2 }, { 3, 4 } })
print("a =", a)
print("a @ a =", a:matmul(a))
print("softmax(a) =", a:softmax())
return 0
