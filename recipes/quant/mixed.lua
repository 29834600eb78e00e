-- A mixed scheme: routed experts Q4_0, shared experts and dense MLPs Q8_0,
-- attention kept in the checkpoint's float type, the first and last layers
-- Q8_0, embeddings and the output head kept; importance-weighted rounding
-- when calibration text is given (else round to nearest).
return {
  method = "imatrix",
  default = "q8_0",
  file_type = "q4_0",
  rules = {
    { match = { "embed_tokens", "lm_head" }, type = "keep" },
    { match = "self_attn", type = "keep" },
    { layers = { 0, 0 }, type = "q8_0" },
    { layers = { -1, -1 }, type = "q8_0" },
    { match = "mlp%.experts%.", type = "q4_0" },
    { match = "shared_experts", type = "q8_0" },
  },
}
