-- Open loop: 24 requests arriving as a Poisson process at 8 requests/s.
return {
  requests = 24,
  prompt_len = { 16, 64 },
  output_len = { 8, 32 },
  arrival = { rate = 8 },
  shared_prefix = 0,
  sampling = { temperature = 0 },
  text = "tests/data/val.txt",
  seed = 1,
}
