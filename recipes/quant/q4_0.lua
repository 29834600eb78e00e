-- Every matrix Q4_0 but the output head (Q6_K, as llama.cpp's Q4_0 does), round to nearest.
return { method = "rtn", default = "q4_0", file_type = "q4_0", rules = { { match = "lm_head", type = "q6_k" } } }
