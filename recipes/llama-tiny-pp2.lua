-- llama-tiny with pipeline parallelism over 2 ranks: layers 0-1 on rank 0,
-- layers 2-3 on rank 1, hidden states passed with send/recv.
--   mpirun -np 2 tide run recipes/llama-tiny-pp2.lua    (or `tide run ...`: 2 threads)
return require("tide.parallel.recipe").new {
  model = "models/llama-tiny",
  kv = { block = 16, dtype = "f32" },
  parallel = { ranks = 2, pp = 2 },
  prompt = "The quick brown fox jumps over the lazy dog.",
  max_tokens = 24,
  temperature = 0,
}
