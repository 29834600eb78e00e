-- A small serving arm on dsv3-tiny (the baseline of the example trials).
return {
  name = "dsv3-tiny absorb",
  model = "models/dsv3-tiny",
  mla = "absorb",
  threads = 1,
  kv = { block = 16, blocks = 64, dtype = "f32" },
  engine = { max_seqs = 4, max_batch_tokens = 128 },
}
