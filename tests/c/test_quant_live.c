/* Live byte-identity check against llama.cpp's quantizers: loads
 * libggml-base.so from the npm package @node-llama-cpp/linux-x64 (run
 * `npm install` in tests/node-llama) with dlopen and compares, on many rows of
 * varied data, Tide's quantizers with ggml's quantize_row_*_ref and
 * ggml_quantize_chunk (bytes), and Tide's dequantizers with ggml's
 * dequantize_row_* (floats, bit for bit). Skipped, saying so, when the package
 * is not installed. */
#include "testutil.h"

#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quant.h"

#define GGML_LIB "tests/node-llama/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64/libggml-base.so"

typedef void (*quant_ref_fn)(const float *x, void *y, int64_t k);
typedef void (*dequant_fn)(const void *x, float *y, int64_t k);
typedef size_t (*quantize_chunk_fn)(int type, const float *src, void *dst, int64_t start, int64_t nrows,
                                    int64_t n_per_row, const float *imatrix);

static float gauss(tu_rng_t *r) {
  float u = 0.5f * (tu_rand(r) + 1.0f), v = 0.5f * (tu_rand(r) + 1.0f);
  return sqrtf(-2.0f * logf(1.0f - u)) * cosf(6.2831853f * v);
}

/* Row kind k of n values: gaussian at several scales, uniform, all-positive,
 * all-negative, outliers, zero sub-blocks, values on a coarse grid (rounding
 * ties), small integers. */
static void make_row(tu_rng_t *r, int kind, float *x, int64_t n) {
  static const float scales[] = {1.0f, 0.02f, 1e-4f, 300.0f};
  for (int64_t i = 0; i < n; i++) {
    float g = gauss(r), u = tu_rand(r);
    switch (kind % 9) {
    case 0: x[i] = g * scales[(kind / 9) % 4]; break;
    case 1: x[i] = u; break;
    case 2: x[i] = fabsf(u) + 0.1f; break;
    case 3: x[i] = -fabsf(g) * 0.01f; break;
    case 4: x[i] = tu_randint(r, 0, 99) == 0 ? 40.0f * g : g; break;
    case 5: x[i] = (i / 16) % 3 == 0 ? 0.0f : g; break;
    case 6: x[i] = 0.125f * (float)tu_randint(r, -16, 16); break;
    case 7: x[i] = (float)tu_randint(r, -3, 3); break;
    default: x[i] = (i / 32) % 2 ? g * 1e-3f : g; break;
    }
  }
}

static void test_quant_live_llama_cpp(void **state) {
  (void)state;
  const char *lib = getenv("TIDE_GGML_LIB") ? getenv("TIDE_GGML_LIB") : GGML_LIB; /* override: another build */
  void *h = dlopen(lib, RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    fprintf(stderr,
            "SKIP test_quant_live: llama.cpp's libggml-base.so not loaded (%s); run `npm install` in tests/node-llama "
            "to enable the live byte-identity check (the committed fixture is checked by test_quant)\n",
            dlerror());
    skip();
  }
  static const struct {
    int32_t dt;
    int ggml_type;
    const char *qsym, *dsym;
  } fm[] = {
      {TIDE_DTYPE_Q8_0, 8, "quantize_row_q8_0_ref", "dequantize_row_q8_0"},
      {TIDE_DTYPE_Q4_0, 2, "quantize_row_q4_0_ref", "dequantize_row_q4_0"},
      {TIDE_DTYPE_Q4_K, 12, "quantize_row_q4_K_ref", "dequantize_row_q4_K"},
      {TIDE_DTYPE_Q6_K, 14, "quantize_row_q6_K_ref", "dequantize_row_q6_K"},
      {TIDE_DTYPE_Q8_K, 15, "quantize_row_q8_K_ref", "dequantize_row_q8_K"},
  };
  quantize_chunk_fn chunk = (quantize_chunk_fn)dlsym(h, "ggml_quantize_chunk");
  assert_non_null(chunk);
  tu_rng_t rng = {2024};
  const int64_t lens[] = {256, 512, 1024, 4096};
  const int64_t max_n = 4096;
  float *x = malloc((size_t)max_n * 4), *y0 = malloc((size_t)max_n * 4), *y1 = malloc((size_t)max_n * 4);
  uint8_t *q0 = malloc((size_t)max_n * 2), *q1 = malloc((size_t)max_n * 2), *q2 = malloc((size_t)max_n * 2);
  int rows = 0;
  for (size_t f = 0; f < sizeof fm / sizeof fm[0]; f++) {
    quant_ref_fn qref = (quant_ref_fn)dlsym(h, fm[f].qsym);
    dequant_fn deq = (dequant_fn)dlsym(h, fm[f].dsym);
    assert_non_null(qref);
    assert_non_null(deq);
    const tide_dtype_traits_t *tr = tide_dtype_traits(fm[f].dt);
    for (int kind = 0; kind < 36; kind++) {
      int64_t n = lens[kind % 4];
      int64_t rb = tide_dtype_row_bytes(fm[f].dt, n);
      make_row(&rng, kind, x, n);
      memset(q0, 0, (size_t)rb);
      memset(q1, 0, (size_t)rb);
      tr->from_float(x, q0, n);
      qref(x, q1, n);
      if (fm[f].dt == TIDE_DTYPE_Q8_K) { /* ggml leaves bsums unset for an all-zero block: compare d and qs */
        for (int64_t b = 0; b < n / 256; b++) assert_memory_equal(q0 + 292 * b, q1 + 292 * b, 260);
      } else {
        int64_t bad = 0, first = -1;
        for (int64_t i = 0; i < rb; i++)
          if (q0[i] != q1[i] && bad++ == 0) first = i;
        if (bad)
          fprintf(stderr, "%s row kind %d (n %lld): %lld bytes differ from llama.cpp, first at %lld (block %lld)\n",
                  tr->name, kind, (long long)n, (long long)bad, (long long)first,
                  (long long)(first / tr->block_bytes));
        assert_int_equal(bad, 0);
        /* the public entry llama-quantize uses, without an importance matrix */
        memset(q2, 0, (size_t)rb);
        assert_int_equal(chunk(fm[f].ggml_type, x, q2, 0, 1, n, NULL), (size_t)rb);
        assert_memory_equal(q0, q2, (size_t)rb);
      }
      tr->to_float(q1, y0, n);
      deq(q1, y1, n);
      assert_memory_equal(y0, y1, (size_t)n * 4);
      rows++;
    }
  }
  fprintf(stderr, "test_quant_live: %d rows identical to llama.cpp (%s)\n", rows, lib);
  free(x);
  free(y0);
  free(y1);
  free(q0);
  free(q1);
  free(q2);
  dlclose(h);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_quant_live_llama_cpp)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
