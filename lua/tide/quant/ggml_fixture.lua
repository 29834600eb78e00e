-- tide.quant.ggml_fixture: what tests/fixtures/ggml_numerics.json covers
-- (shared by its generator, tests/node-llama/gen_ggml_fixture.lua, and
-- tests/lua/ggml_numerics_test.lua): the GGUFs `tide quantize` makes of the
-- tiny models, N greedy tokens per fixture prompt, the TOPK largest logits
-- of each step.
local ffi = require "ffi"
local bit = require "bit"

local M = {}

M.N, M.TOPK = 32, 4
M.CASES = {
  { model = "llama-tiny", format = "q8_0" }, { model = "llama-tiny", format = "q4_k" },
  { model = "dsv3-tiny", format = "q8_0" }, { model = "dsv3-tiny", format = "q4_k" },
}

-- FNV-1a (32-bit) of a file's bytes as 8 hex digits, and its size.
function M.file_hash(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  local p = ffi.cast("const uint8_t *", s)
  local h = 0x811c9dc5
  for i = 0, #s - 1 do h = bit.tobit(bit.bxor(h, p[i]) * 0x01000193 % 0x100000000) end
  return bit.tohex(h), #s
end

return M
