-- Every matrix Q6_K (rows not a multiple of 256: Q8_0).
return { method = "rtn", default = "q6_k", file_type = "q6_k", rules = {} }
