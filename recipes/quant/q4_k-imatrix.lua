-- q4_k with importance-weighted rounding (needs --calib text); output head Q6_K.
return { method = "imatrix", default = "q4_k", file_type = "q4_k", rules = { { match = "lm_head", type = "q6_k" } } }
