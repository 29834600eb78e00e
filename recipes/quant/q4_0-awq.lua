-- q4_0 with AWQ-style per-channel scales folded into the norms, then
-- importance-weighted rounding (needs --calib text).
return { method = "awq", default = "q4_0", file_type = "q4_0", rules = { { match = "lm_head", type = "q6_k" } } }
