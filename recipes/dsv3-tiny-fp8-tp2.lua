-- dsv3-tiny in the released DeepSeek-V3 FP8 layout (e4m3 weights, a f32
-- scale per 128x128 block) under TP over 2 ranks: MLA heads, dense MLPs and
-- experts split, the FP8 bytes and their block scales sharded together
-- (tide.parallel.tp). The checkpoint is stored and computed in FP8: nothing
-- is dequantized at load.
--   mpirun -np 2 tide run recipes/dsv3-tiny-fp8-tp2.lua      (MPI)
--   tide run recipes/dsv3-tiny-fp8-tp2.lua                   (2 threads)
return require("tide.parallel.recipe").new {
  model = "models/dsv3-tiny-fp8",
  mla = "absorb",
  kv = { block = 16, dtype = "f32" },
  parallel = { ranks = 2, tp = 2 },
  prompt = "The quick brown fox jumps over the lazy dog.",
  max_tokens = 24,
  temperature = 0,
}
