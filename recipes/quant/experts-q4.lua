-- Routed experts Q4_0, everything else Q8_0 (embeddings and output head
-- included); importance-weighted rounding when --calib is given.
return {
  method = "imatrix",
  default = "q8_0",
  file_type = "q4_0",
  rules = { { match = "mlp%.experts%.", type = "q4_0" } },
}
