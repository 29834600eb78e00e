-- llama-tiny with pipeline parallelism over 2 ranks: layers 0-1 on rank 0,
-- layers 2-3 on rank 1, hidden states passed with send/recv. Each step's
-- tokens are cut into up to 4 micro-batches, so both stages work at once
-- (rank 1 on micro-batch m while rank 0 runs m + 1); micro_batches = 1
-- passes the whole step at once.
--   mpirun -np 2 tide run recipes/llama-tiny-pp2.lua    (or `tide run ...`: 2 threads)
return require("tide.parallel.recipe").new {
  model = "models/llama-tiny",
  kv = { block = 16, dtype = "f32" },
  parallel = { ranks = 2, pp = 2, micro_batches = 4 },
  prompt = "The quick brown fox jumps over the lazy dog.",
  max_tokens = 24,
  temperature = 0,
}
