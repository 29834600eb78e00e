-- q4_0 with importance-weighted rounding (needs --calib text).
return { method = "imatrix", default = "q4_0", file_type = "q4_0", rules = { { match = "lm_head", type = "q6_k" } } }
