-- Every matrix BF16 (the benchmark baseline).
return { method = "rtn", default = "bf16", file_type = "bf16", rules = {} }
