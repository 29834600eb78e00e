-- Long outputs from short prompts at concurrency 8: stresses batched decode.
return {
  requests = 16,
  prompt_len = 16,
  output_len = 64,
  arrival = { closed = 8 },
  sampling = { temperature = 0 },
  text = "tests/data/val.txt",
  seed = 1,
}
