-- llama-tiny with tensor parallelism over 2 ranks: attention heads (8 query,
-- 2 K/V) and the MLP split in halves, one allreduce after each.
--   mpirun -np 2 tide run recipes/llama-tiny-tp2.lua    (or `tide run ...`: 2 threads)
return require("tide.parallel.recipe").new {
  model = "models/llama-tiny",
  kv = { block = 16, dtype = "f32" },
  parallel = { ranks = 2, tp = 2 },
  prompt = "The quick brown fox jumps over the lazy dog.",
  max_tokens = 24,
  temperature = 0,
}
