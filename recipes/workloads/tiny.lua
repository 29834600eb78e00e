-- A few short requests, closed loop at concurrency 2: for CI tests and
-- quick A/A sanity checks (each run takes well under a second on dsv3-tiny).
return {
  requests = 4,
  prompt_len = { 8, 16 },     -- uniform integer range of prompt tokens
  output_len = 8,            -- new tokens per request (EOS ignored)
  arrival = { closed = 2 },  -- closed loop: 2 requests in flight
  shared_prefix = 0,         -- fraction of requests starting with a common prefix
  sampling = { temperature = 0 },
  text = "tests/data/val.txt",
  seed = 1,
}
