/* gen_quant_fixture.c: write tests/fixtures/quant/ from llama.cpp's own quantizers.
 *
 * Loads libggml-base.so from the npm package @node-llama-cpp/linux-x64
 * (installed by `npm install` in tests/node-llama) with dlopen, quantizes
 * deterministic float rows with its quantize_row_{q8_0,q4_0,q4_K,q6_K}_ref and
 * writes the input and the four outputs as raw little-endian files. Nothing
 * from Tide is used, so the bytes are llama.cpp's.
 *
 *   cc -O2 -o /tmp/gen_quant_fixture tests/node-llama/gen_quant_fixture.c -ldl -lm
 *   /tmp/gen_quant_fixture tests/node-llama/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64/libggml-base.so \
 *       tests/fixtures/quant
 *
 * Rows (QUANT_FIX_N = 512 values each, see tests/fixtures/quant/README.md):
 *  0 gaussian sigma 1      1 gaussian sigma 0.02 (weight-like)   2 uniform [0, 1) (all positive)
 *  3 gaussian with 4 outliers of +-20   4 half the sub-blocks zero, the rest gaussian
 *  5 uniform [-1e-3, 0) (all negative)  6 constant 0.5 then ramp   7 all zero */
#include <dlfcn.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#define ROWS 8
#define N 512

typedef void (*qfn)(const float *x, void *y, int64_t k);

static uint64_t st = 0x9e3779b97f4a7c15ull;
static double unif(void) { /* [0, 1) */
  st ^= st << 13;
  st ^= st >> 7;
  st ^= st << 17;
  return (double)(st >> 11) / 9007199254740992.0;
}
static float gauss(void) {
  double u = unif(), v = unif();
  return (float)(sqrt(-2.0 * log(1.0 - u)) * cos(6.283185307179586 * v));
}

static int write_file(const char *dir, const char *name, const void *p, size_t n) {
  char path[1024];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(p, 1, n, f) != n) {
    fprintf(stderr, "cannot write %s\n", path);
    if (f) fclose(f);
    return 1;
  }
  fclose(f);
  printf("wrote %s (%zu bytes)\n", path, n);
  return 0;
}

int main(int argc, char **argv) {
  if (argc != 3) {
    fprintf(stderr, "usage: %s LIBGGML_BASE_SO OUTDIR\n", argv[0]);
    return 2;
  }
  void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    fprintf(stderr, "dlopen: %s\n", dlerror());
    return 1;
  }
  static float x[ROWS][N];
  for (int j = 0; j < N; j++) {
    x[0][j] = gauss();
    x[1][j] = 0.02f * gauss();
    x[2][j] = (float)unif();
    x[3][j] = gauss();
    x[4][j] = (j / 32) % 2 ? gauss() : 0.0f;
    x[5][j] = (float)(-1e-3 * unif());
    x[6][j] = j < N / 2 ? 0.5f : (float)(j - N / 2) / 64.0f - 1.0f;
    x[7][j] = 0.0f;
  }
  x[3][5] = 20.0f;
  x[3][100] = -20.0f;
  x[3][300] = 20.0f;
  x[3][511] = -20.0f;
  if (write_file(argv[2], "input.f32", x, sizeof x)) return 1;
  const struct {
    const char *sym, *file;
    int bs, bytes;
  } fm[] = {{"quantize_row_q8_0_ref", "q8_0.bin", 32, 34},
            {"quantize_row_q4_0_ref", "q4_0.bin", 32, 18},
            {"quantize_row_q4_K_ref", "q4_k.bin", 256, 144},
            {"quantize_row_q6_K_ref", "q6_k.bin", 256, 210}};
  static uint8_t out[ROWS * N / 32 * 34];
  for (int f = 0; f < 4; f++) {
    qfn q = (qfn)dlsym(h, fm[f].sym);
    if (!q) {
      fprintf(stderr, "dlsym %s: %s\n", fm[f].sym, dlerror());
      return 1;
    }
    size_t rb = (size_t)N / fm[f].bs * fm[f].bytes;
    for (int r = 0; r < ROWS; r++) q(x[r], out + r * rb, N);
    if (write_file(argv[2], fm[f].file, out, rb * ROWS)) return 1;
  }
  dlclose(h);
  return 0;
}
