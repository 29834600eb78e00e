-- dsv3-tiny with tensor parallelism over 2 ranks: MLA heads split (the
-- latent KV cache is replicated), dense MLP and every expert split along its
-- intermediate dimension, one allreduce after attention and after the FFN.
--   mpirun -np 2 tide run recipes/dsv3-tiny-tp2.lua    (or `tide run ...`: 2 threads)
return require("tide.parallel.recipe").new {
  model = "models/dsv3-tiny",
  mla = "absorb",
  kv = { block = 16, dtype = "f32" },
  parallel = { ranks = 2, tp = 2 },
  prompt = "The quick brown fox jumps over the lazy dog.",
  max_tokens = 24,
  temperature = 0,
}
