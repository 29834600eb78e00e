-- Every matrix Q4_K, output head Q6_K (llama.cpp's Q4_K_M keeps more in Q6_K), round to nearest.
-- Rows whose length is not a multiple of 256 fall back to Q4_0.
return { method = "rtn", default = "q4_k", file_type = "q4_k", rules = { { match = "lm_head", type = "q6_k" } } }
