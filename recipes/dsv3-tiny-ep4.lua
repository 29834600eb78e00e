-- DeepSeek's decode layout on dsv3-tiny: 4 ranks, DP-attention (each rank
-- runs attention and the KV cache of its own sequences) + EP for the MoE
-- layers (16 routed experts + 4 redundant copies placed by EPLB from the
-- expert loads measured on val.txt), 5 slots per rank.
--   mpirun -np 4 tide run recipes/dsv3-tiny-ep4.lua        (MPI)
--   tide run recipes/dsv3-tiny-ep4.lua                     (4 threads)
return require("tide.parallel.recipe").new {
  model = "models/dsv3-tiny",
  mla = "absorb",
  kv = { block = 16, dtype = "f32" },
  parallel = {
    ranks = 4, ep = 4, dp_attention = true,
    eplb = { redundant = 4, loads = "tests/fixtures/dsv3-tiny.json" },
    wire = "f32",          -- "q8": int8 rows + a scale per row for the dispatch
  },
  prompts = { "The quick brown fox jumps over the lazy dog.", "Once upon a time", "In the beginning",
    "The capital of France is" },
  max_tokens = 24,
  temperature = 0,
}
