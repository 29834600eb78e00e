-- The default job (`make run`): greedy generation from the shipped default
-- model, DeepSeek-V3-tiny (MLA absorbed for decode, paged f32 KV cache).
local tide = require "tide"

local recipe = {
  model = "models/dsv3-tiny",
  mla = "absorb",
  kv = { block = 16, dtype = "f32" },
  prompt = "The quick brown fox jumps over the lazy dog.",
  max_tokens = 48,
  temperature = 0,
}

local m = assert(tide.load(recipe.model, { mla = recipe.mla, kv = recipe.kv }))
local ids = m.tokenizer:encode(recipe.prompt, { add_special = true })
local out, info = assert(m:generate(ids, { max_tokens = recipe.max_tokens, temperature = recipe.temperature }))
print(recipe.prompt .. m.tokenizer:decode(out))
local t = info.timings
io.stderr:write(string.format("[%s: %d prompt tokens in %.3fs, %d generated at %.1f tok/s]\n", recipe.model,
  t.prompt_tokens, t.prefill_s, t.generated_tokens, (#out - 1) / math.max(t.decode_s, 1e-9)))
return 0
