/* llama_quantize.c: quantize a GGUF with llama.cpp's own quantizer.
 *
 * Loads libllama from the npm package @node-llama-cpp/linux-x64 with dlopen
 * and calls llama_model_quantize (what llama.cpp's llama-quantize tool does),
 * so the output file is llama.cpp's, not Tide's. Used by
 * lua/tide/quant/roundtrip.lua (tests/lua/quantize_test.lua and
 * bench/quant_roundtrip.lua) to check that Tide runs llama.cpp-quantized
 * GGUFs.
 *
 *   cc -O2 -o /tmp/llama_quantize tests/node-llama/llama_quantize.c -ldl
 *   /tmp/llama_quantize LIBLLAMA_SO IN.gguf OUT.gguf FTYPE [THREADS]
 *
 * FTYPE is llama.cpp's llama_ftype number: 7 = MOSTLY_Q8_0, 14 = MOSTLY_Q4_K_S,
 * 15 = MOSTLY_Q4_K_M, 2 = MOSTLY_Q4_0. */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The head of llama.cpp's llama_model_quantize_params (stable since 2023):
 * int32 nthread, enum llama_ftype ftype, then more fields. The struct is
 * returned by value from llama_model_quantize_default_params; we give it
 * generous room so the callee's real (larger) layout fits, and only touch
 * the first two fields. */
typedef struct {
  int32_t nthread;
  int32_t ftype;
  unsigned char rest[512];
} quant_params_t;

typedef quant_params_t (*default_params_fn)(void);
typedef uint32_t (*quantize_fn)(const char *, const char *, const quant_params_t *);
typedef void (*backend_init_fn)(void);

int main(int argc, char **argv) {
  if (argc < 5) {
    fprintf(stderr, "usage: %s LIBLLAMA_SO IN.gguf OUT.gguf FTYPE [THREADS]\n", argv[0]);
    return 2;
  }
  void *h = dlopen(argv[1], RTLD_NOW | RTLD_GLOBAL);
  if (!h) {
    fprintf(stderr, "dlopen: %s\n", dlerror());
    return 1;
  }
  default_params_fn defaults;
  quantize_fn quantize;
  backend_init_fn init;
  *(void **)&defaults = dlsym(h, "llama_model_quantize_default_params");
  *(void **)&quantize = dlsym(h, "llama_model_quantize");
  *(void **)&init = dlsym(h, "llama_backend_init");
  if (!defaults || !quantize) {
    fprintf(stderr, "llama_model_quantize not found in %s\n", argv[1]);
    return 1;
  }
  if (init) init();
  quant_params_t p = defaults();
  p.ftype = atoi(argv[4]);
  p.nthread = argc > 5 ? atoi(argv[5]) : 1;
  uint32_t rc = quantize(argv[2], argv[3], &p);
  if (rc != 0) {
    fprintf(stderr, "llama_model_quantize failed (%u)\n", rc);
    return 1;
  }
  printf("{\"ok\":true,\"out\":\"%s\",\"ftype\":%d}\n", argv[3], p.ftype);
  return 0;
}
