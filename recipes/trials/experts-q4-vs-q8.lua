-- Is Q4_0 for the routed experts (everything else Q8_0) good enough against
-- all-Q8_0? DeepSeek-V3-tiny on the serving engine: speed, memory (weights,
-- KV, peak RSS) and quality against the float checkpoint (perplexity ratio,
-- KL divergence, top-1 agreement on tests/data/val.txt).
--   tide ab recipes/trials/experts-q4-vs-q8.lua [--repeats N] [--out DIR]
local base = {
  model = "models/dsv3-tiny",
  mla = "absorb",
  threads = 1,
  kv = { block = 16, blocks = 64, dtype = "f32" },
  engine = { max_seqs = 4, max_batch_tokens = 128 },
}
local function arm(name, scheme)
  local t = {}
  for k, v in pairs(base) do t[k] = v end
  t.name, t.quant = name, scheme
  return t
end
return {
  arms = { arm("all q8_0", "q8_0"), arm("experts q4_0", "experts-q4") },
  workload = "tiny",
  repeats = 10,
  quality = { base = "models/dsv3-tiny", file = "tests/data/val.txt", tokens = 256, ctx = 128 },
  out = "ab-experts-q4-vs-q8",
}
