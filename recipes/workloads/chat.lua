-- Chat-like load: medium prompts, half of them sharing a 32-token system
-- prompt, closed loop at concurrency 4, sampled output.
return {
  requests = 16,
  prompt_len = { 32, 96 },
  output_len = { 16, 48 },
  arrival = { closed = 4 },
  shared_prefix = 0.5,
  prefix_len = 32,
  sampling = { temperature = 0.8, top_p = 0.95 },
  text = "tests/data/val.txt",
  seed = 1,
}
