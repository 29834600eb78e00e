-- Prefill/decode disaggregation on dsv3-tiny: rank 0 prefills every request
-- and sends its MLA latent KV blocks (and the last logits) to one of the 3
-- decode ranks (round-robin), which decodes it.
--   mpirun -np 4 tide run recipes/dsv3-tiny-pd.lua        (or `tide run ...`: 4 threads)
return require("tide.parallel.recipe").new {
  model = "models/dsv3-tiny",
  mla = "absorb",
  kv = { block = 16, dtype = "f32" },
  parallel = { ranks = 4, pd = { prefill = 1, decode = 3 } },
  prompts = { "The quick brown fox jumps over the lazy dog.", "Once upon a time", "In the beginning",
    "The capital of France is" },
  max_tokens = 24,
  temperature = 0,
}
