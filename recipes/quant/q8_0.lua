-- Every matrix Q8_0 (llama.cpp's Q8_0 file type), round to nearest.
return { method = "rtn", default = "q8_0", file_type = "q8_0", rules = {} }
