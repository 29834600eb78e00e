/* GGML block formats and their kernels: Tide's quantizers against blocks
 * written by llama.cpp (tests/fixtures/quant/, made by
 * tests/node-llama/gen_quant_fixture.c), round-trip error bounds, the AVX2 dots
 * against the portable ones, and matmul / get_rows with quantized weights
 * against references, on ragged shapes and pools of 1..4 threads. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kern.h"
#include "ops.h"
#include "quant.h"

#define FIX_ROWS 8
#define FIX_N 512

static const int32_t qdts[4] = {TIDE_DTYPE_Q8_0, TIDE_DTYPE_Q4_0, TIDE_DTYPE_Q4_K, TIDE_DTYPE_Q6_K};

static void *read_all(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "cannot open %s\n", path);
    return NULL;
  }
  fseek(f, 0, SEEK_END);
  long len = ftell(f);
  rewind(f);
  void *p = malloc((size_t)len + 1);
  *n = fread(p, 1, (size_t)len, f);
  fclose(f);
  return p;
}

static float gauss(tu_rng_t *r) {
  float u = 0.5f * (tu_rand(r) + 1.0f), v = 0.5f * (tu_rand(r) + 1.0f); /* [0, 1) */
  return sqrtf(-2.0f * logf(1.0f - u)) * cosf(6.2831853f * v);
}

static void fill_gauss(tu_rng_t *r, float *x, int64_t n, float sigma) {
  for (int64_t i = 0; i < n; i++) x[i] = sigma * gauss(r);
}

static double nmse(const float *a, const float *ref, int64_t n) {
  double e = 0, s = 0;
  for (int64_t i = 0; i < n; i++) {
    e += ((double)a[i] - ref[i]) * ((double)a[i] - ref[i]);
    s += (double)ref[i] * ref[i];
  }
  return s > 0 ? e / s : e;
}

/* ---- byte identity with llama.cpp (committed fixture) ---- */

static void test_quant_fixture_bytes(void **state) {
  (void)state;
  size_t n;
  float *x = read_all("tests/fixtures/quant/input.f32", &n);
  assert_non_null(x);
  assert_int_equal(n, FIX_ROWS * FIX_N * 4);
  static const char *files[4] = {"q8_0.bin", "q4_0.bin", "q4_k.bin", "q6_k.bin"};
  for (int f = 0; f < 4; f++) {
    char path[256];
    snprintf(path, sizeof path, "tests/fixtures/quant/%s", files[f]);
    size_t m;
    uint8_t *want = read_all(path, &m);
    assert_non_null(want);
    const tide_dtype_traits_t *tr = tide_dtype_traits(qdts[f]);
    int64_t rb = tide_dtype_row_bytes(qdts[f], FIX_N);
    assert_int_equal(m, (size_t)(rb * FIX_ROWS));
    uint8_t *got = calloc(m, 1);
    for (int r = 0; r < FIX_ROWS; r++) tr->from_float(x + r * FIX_N, got + r * rb, FIX_N);
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < m; i++)
      if (got[i] != want[i] && bad++ == 0) first = i;
    if (bad) fprintf(stderr, "%s: %zu bytes differ from llama.cpp's, first at %zu\n", tr->name, bad, first);
    assert_int_equal(bad, 0);
    free(got);
    free(want);
  }
  free(x);
}

/* Dequantizing llama.cpp's blocks gives back values close to the input (checks
 * to_float reads GGML's layout: a wrong nibble or scale order would not). */
static void test_quant_fixture_dequant(void **state) {
  (void)state;
  size_t n;
  float *x = read_all("tests/fixtures/quant/input.f32", &n);
  assert_non_null(x);
  static const char *files[4] = {"q8_0.bin", "q4_0.bin", "q4_k.bin", "q6_k.bin"};
  /* layout check, not a quality bound: measured worst rows (the outlier row 3) 1.3e-4, 3.3e-2, 1.0e-2, 8.2e-4 */
  static const double bound[4] = {3e-4, 5e-2, 2e-2, 2e-3};
  float y[FIX_N];
  int bad = 0;
  for (int f = 0; f < 4; f++) {
    char path[256];
    snprintf(path, sizeof path, "tests/fixtures/quant/%s", files[f]);
    size_t m;
    uint8_t *q = read_all(path, &m);
    assert_non_null(q);
    int64_t rb = tide_dtype_row_bytes(qdts[f], FIX_N);
    for (int r = 0; r < FIX_ROWS - 1; r++) { /* the last row is all zero */
      tide_dtype_traits(qdts[f])->to_float(q + r * rb, y, FIX_N);
      double e = nmse(y, x + r * FIX_N, FIX_N);
      if (getenv("TIDE_QUANT_VERBOSE")) fprintf(stderr, "%s row %d: nmse %.3g\n", tide_dtype_traits(qdts[f])->name, r, e);
      if (!(e < bound[f])) {
        fprintf(stderr, "%s row %d: nmse %.3g\n", tide_dtype_traits(qdts[f])->name, r, e);
        bad++;
      }
    }
    tide_dtype_traits(qdts[f])->to_float(q + (FIX_ROWS - 1) * rb, y, FIX_N);
    for (int i = 0; i < FIX_N; i++) assert_true(y[i] == 0.0f);
    free(q);
  }
  assert_int_equal(bad, 0);
  free(x);
}

/* ---- round trip ---- */

/* Quantize -> dequantize NMSE of N(0, 1) data, 64 rows of 4096 (262144 values,
 * so the estimate moves by well under 1% between seeds). Measured (seed 11):
 * q8_0 2.87e-5 (theory: step amax/127 with amax ~2.1 over 32 values, step^2/12
 * ~ 2.3e-5), q8_k 4.81e-5 (amax over 256 values is larger), q6_k 3.15e-4,
 * q4_k 5.09e-3 (the asymmetric min grid buys little on symmetric data; these
 * are llama.cpp's bytes, so its numbers), q4_0 7.39e-3. Bounds: measured x1.3,
 * tight enough that one lost bit (x4 error) or a broken search fails. */
static void test_quant_roundtrip_error(void **state) {
  (void)state;
  const int32_t dts[5] = {TIDE_DTYPE_Q8_0, TIDE_DTYPE_Q6_K, TIDE_DTYPE_Q4_K, TIDE_DTYPE_Q4_0, TIDE_DTYPE_Q8_K};
  const double bound[5] = {3.8e-5, 4.1e-4, 6.6e-3, 9.6e-3, 6.3e-5};
  const int64_t n = 64 * 4096;
  tu_rng_t rng = {11};
  float *x = malloc((size_t)n * 4), *y = malloc((size_t)n * 4);
  uint8_t *q = malloc((size_t)n * 2);
  fill_gauss(&rng, x, n, 1.0f);
  int bad = 0;
  for (int f = 0; f < 5; f++) {
    const tide_dtype_traits_t *tr = tide_dtype_traits(dts[f]);
    assert_non_null(tr->from_float);
    assert_non_null(tr->to_float);
    tr->from_float(x, q, n);
    tr->to_float(q, y, n);
    double e = nmse(y, x, n);
    if (getenv("TIDE_QUANT_VERBOSE") || !(e < bound[f]))
      fprintf(stderr, "round trip %s: nmse %.3g (bound %.3g)\n", tr->name, e, bound[f]);
    bad += !(e < bound[f]);
  }
  assert_int_equal(bad, 0);
  free(x);
  free(y);
  free(q);
}

/* Zeros, constants, huge and non-finite values: no crash, no sanitizer report;
 * zeros stay zeros, a constant positive block comes back close. */
static void test_quant_edge_values(void **state) {
  (void)state;
  const int32_t dts[5] = {TIDE_DTYPE_Q8_0, TIDE_DTYPE_Q4_0, TIDE_DTYPE_Q4_K, TIDE_DTYPE_Q6_K, TIDE_DTYPE_Q8_K};
  float x[256], y[256];
  uint8_t q[512];
  for (int f = 0; f < 5; f++) {
    const tide_dtype_traits_t *tr = tide_dtype_traits(dts[f]);
    memset(x, 0, sizeof x);
    tr->from_float(x, q, 256);
    tr->to_float(q, y, 256);
    for (int i = 0; i < 256; i++) assert_true(y[i] == 0.0f);
    for (int i = 0; i < 256; i++) x[i] = 0.75f;
    tr->from_float(x, q, 256);
    tr->to_float(q, y, 256);
    for (int i = 0; i < 256; i++) assert_true(fabsf(y[i] - 0.75f) < 0.1f);
    for (int i = 0; i < 256; i++) x[i] = i % 3 == 0 ? INFINITY : i % 3 == 1 ? NAN : 1e30f;
    tr->from_float(x, q, 256);
    tr->to_float(q, y, 256);
    for (int i = 0; i < 256; i++) x[i] = i == 7 ? 1e-30f : 0.0f;
    tr->from_float(x, q, 256);
    tr->to_float(q, y, 256);
  }
}

/* q8_k keeps the sums of each 16 values, which the k-quant dots rely on. */
static void test_quant_q8_k_bsums(void **state) {
  (void)state;
  tu_rng_t rng = {5};
  float x[512];
  uint8_t q[2 * 292];
  fill_gauss(&rng, x, 512, 3.0f);
  tide_quant_from_float_q8_k(x, q, 512);
  for (int b = 0; b < 2; b++) {
    const int8_t *qs = (const int8_t *)(q + 292 * b + 4);
    for (int g = 0; g < 16; g++) {
      int s = 0;
      for (int j = 0; j < 16; j++) s += qs[16 * g + j];
      int16_t bs;
      memcpy(&bs, q + 292 * b + 260 + 2 * g, 2);
      assert_int_equal(bs, s);
    }
  }
}

/* The activation quantizer the matmul uses (AVX2 when the CPU has it) gives
 * the reference quantizer's bytes, and for q4_0 the right {d, d * sum q}. */
/* The activation quantizer is llama.cpp's (id = 127 / amax, ties to even), not the weight quantizer
 * (1 / (amax / 127), ties away): on a tie they differ (0.5 * d rounds to 0, not 1), and the weight
 * quantizer's bytes stay those llama-quantize writes (test_quant_fixture_bytes). */
static void test_quant_act_q8_0_is_llama_cpp_activation_rounding(void **state) {
  (void)state;
  float x[32] = {127.0f, 0.5f, -0.5f, 1.5f, 2.5f, -2.5f};
  uint8_t a[34], w[34];
  tide_quant_act_q8_0_c(x, a, 32);
  tide_quant_from_float_q8_0(x, w, 32);
  const int8_t want_a[6] = {127, 0, 0, 2, 2, -2}, want_w[6] = {127, 1, -1, 2, 3, -3};
  for (int j = 0; j < 6; j++) {
    assert_int_equal((int8_t)a[2 + j], want_a[j]);
    assert_int_equal((int8_t)w[2 + j], want_w[j]);
  }
  assert_memory_equal(a, w, 2); /* the same scale */
}

static void test_quant_act_quantize_matches_ref(void **state) {
  (void)state;
  tu_rng_t rng = {21};
  enum { K = 1024 };
  static float x[K];
  static uint8_t fast[2 * K], ref[2 * K];
  for (int kind = 0; kind < 6; kind++) {
    for (int i = 0; i < K; i++) {
      float g = gauss(&rng);
      x[i] = kind == 0   ? g
             : kind == 1 ? 1e-3f * g
             : kind == 2 ? 0.125f * (float)tu_randint(&rng, -20, 20) /* rounding ties */
             : kind == 3 ? (i % 64 < 32 ? 0.0f : g)                  /* zero blocks */
             : kind == 4 ? (float)tu_randint(&rng, -2, 2) * (i % 7 == 0 ? -1.0f : 1.0f)
                         : (i % 97 == 0 ? NAN : i % 89 == 0 ? INFINITY : g); /* non-finite: no crash, same bytes */
    }
    for (int f = 0; f < 4; f++) {
      int32_t dt = qdts[f], adt = tide_quant_act_dtype(dt);
      int64_t rb = tide_dtype_row_bytes(adt, K);
      memset(fast, 0xAA, sizeof fast);
      tide_quant_act_quantize(dt, x, fast, K);
      tide_quant_act_ref(adt, x, ref, K); /* q8_0: llama.cpp's activation arithmetic */
      if (memcmp(fast, ref, (size_t)rb) != 0) {
        fprintf(stderr, "act quantizer for %s, row kind %d: bytes differ from the reference\n",
                tide_dtype_traits(dt)->name, kind);
        fail();
      }
      if (dt == TIDE_DTYPE_Q4_0)
        for (int b = 0; b < K / 32; b++) {
          float ds[2];
          memcpy(ds, fast + rb + 8 * b, 8);
          int s = 0;
          for (int j = 0; j < 32; j++) s += (int8_t)ref[34 * b + 2 + j];
          uint16_t h;
          memcpy(&h, ref + 34 * b, 2);
          float want[2] = {tide_f16_to_f32(h), tide_f16_to_f32(h) * (float)s};
          assert_memory_equal(ds, want, 8); /* bits: an inf scale gives the same NaN */
        }
    }
  }
}

/* ---- dots ---- */

/* For each format, K from one block to many: the dispatched and AVX2 dots
 * against the portable one (same integer block sums, only the float order of
 * the block sums differs: relative error ~1e-6), and the portable one against
 * the double-precision dot of the dequantized rows. */
static void test_quant_dot_fast_vs_ref(void **state) {
  (void)state;
  tu_rng_t rng = {3};
  const int64_t Ks[] = {256, 512, 768, 2048, 4864};
  float *w = malloc(4864 * 4), *a = malloc(4864 * 4), *wf = malloc(4864 * 4), *af = malloc(4864 * 4);
  uint8_t *wq = malloc(4864 * 2), *aq = malloc(4864 * 2);
  for (int f = 0; f < 4; f++) {
    int32_t dt = qdts[f], adt = tide_quant_act_dtype(dt);
    assert_true(tide_quant_has_dot(dt));
    for (size_t ki = 0; ki < sizeof Ks / sizeof Ks[0]; ki++) {
      int64_t K = Ks[ki];
      for (int rep = 0; rep < 4; rep++) {
        fill_gauss(&rng, w, K, 0.05f);
        fill_gauss(&rng, a, K, rep == 3 ? 100.0f : 1.0f);
        if (rep == 2)
          for (int64_t i = 0; i < K; i++) a[i] = fabsf(a[i]); /* biased activations (the q4_k min term) */
        tide_dtype_traits(dt)->from_float(w, wq, K);
        tide_quant_act_quantize(dt, a, aq, K);
        tide_dtype_traits(dt)->to_float(wq, wf, K);
        tide_dtype_traits(adt)->to_float(aq, af, K);
        double exact = 0, mag = 0;
        for (int64_t i = 0; i < K; i++) {
          exact += (double)wf[i] * af[i];
          mag += fabs((double)wf[i] * af[i]);
        }
        float ref = tide_quant_dot_c(dt)(wq, aq, K);
        float fast = tide_quant_dot(dt)(wq, aq, K);
        if (!(fabs(ref - exact) <= 1e-5 * mag) || !(fabs(fast - ref) <= 1e-5 * mag)) {
          fprintf(stderr, "%s K=%lld rep %d: exact %.9g ref %.9g fast %.9g (sum |terms| %.3g)\n",
                  tide_dtype_traits(dt)->name, (long long)K, rep, exact, ref, fast, mag);
          fail();
        }
        if (tide_k_has_avx2()) {
          float v = tide_quant_dot_avx2(dt)(wq, aq, K);
          assert_true(fabs(v - ref) <= 1e-5 * mag);
        }
        /* the 4-row tiles (one row repeated), dispatched and portable */
        const void *rows[4] = {aq, aq, aq, aq};
        float t[4], tc[4];
        tide_quant_tile4(dt)(wq, rows, K, t);
        tide_quant_tile4_c(dt)(wq, rows, K, tc);
        for (int r = 0; r < 4; r++) assert_true(fabs(t[r] - ref) <= 1e-5 * mag && tc[r] == ref);
      }
    }
  }
  free(w);
  free(a);
  free(wf);
  free(af);
  free(wq);
  free(aq);
}

/* The decode dots on the repacked activation row (AVX-512 VNNI, q8_0 / q4_0) against the portable dot on
 * the same q8_0 activation blocks, K from 1 block to many, including counts of blocks that leave a partial
 * group of 4 (the scalar tail), weights read from an unaligned offset. Skipped where the CPU has no VNNI. */
static void test_quant_dot512_vs_ref(void **state) {
  (void)state;
  if (!tide_quant_has_vnni512()) {
    assert_null(tide_quant_dot512(TIDE_DTYPE_Q8_0));
    skip();
  }
  assert_null(tide_quant_dot512(TIDE_DTYPE_Q4_K));
  tu_rng_t rng = {11};
  const int64_t Ks[] = {32, 64, 96, 128, 160, 224, 256, 2048, 2080, 4096 + 96};
  const int64_t KMAX = 4096 + 96;
  float *w = malloc(KMAX * 4), *a = malloc(KMAX * 4);
  uint8_t *wq = malloc(KMAX * 2 + 1), *aq = malloc(KMAX * 2), *ap = malloc((size_t)tide_quant_act512_bytes(KMAX));
  for (int f = 0; f < 2; f++) {
    int32_t dt = f ? TIDE_DTYPE_Q4_0 : TIDE_DTYPE_Q8_0;
    for (size_t ki = 0; ki < sizeof Ks / sizeof Ks[0]; ki++) {
      int64_t K = Ks[ki];
      for (int rep = 0; rep < 4; rep++) {
        fill_gauss(&rng, w, K, 0.05f);
        fill_gauss(&rng, a, K, rep == 3 ? 100.0f : 1.0f);
        if (rep == 2)
          for (int64_t i = 0; i < K; i++) a[i] = fabsf(a[i]);
        tide_dtype_traits(dt)->from_float(w, wq + 1, K);
        tide_quant_act_quantize(dt, a, aq, K);
        tide_quant_act512_pack(dt, aq, K, ap);
        double mag = 0;
        const uint8_t *qa = aq;
        for (int64_t b = 0; b < K / 32; b++, qa += 34)
          for (int l = 0; l < 32; l++) mag += fabs(0.06 * (double)(int8_t)qa[2 + l]) * tide_f16_to_f32((uint16_t)(qa[0] | qa[1] << 8));
        float ref = tide_quant_dot_c(dt)(wq + 1, aq, K);
        float v = tide_quant_dot512(dt)(wq + 1, ap, K);
        if (!(fabs(v - ref) <= 1e-5 * mag + 1e-30)) {
          fprintf(stderr, "dot512 %s K=%lld rep %d: ref %.9g fast %.9g (bound %.3g)\n", tide_dtype_traits(dt)->name,
                  (long long)K, rep, ref, v, 1e-5 * mag);
          fail();
        }
      }
    }
  }
  free(w);
  free(a);
  free(wq);
  free(aq);
  free(ap);
}

/* ---- matmul and get_rows through the ops ---- */

static tide_tensor_t *mk(int32_t dt, int32_t ndim, const int64_t *shape) {
  tide_tensor_t *t = NULL;
  tide_err_t err;
  assert_int_equal(tide_tensor_new(dt, ndim, shape, &t, &err), 0);
  return t;
}

static tide_tensor_t *quant_weight(tu_rng_t *r, int32_t dt, int64_t N, int64_t K, float sigma) {
  int64_t s[2] = {N, K};
  tide_tensor_t *w = mk(dt, 2, s);
  float *row = malloc((size_t)K * 4);
  for (int64_t n = 0; n < N; n++) {
    fill_gauss(r, row, K, sigma);
    tide_dtype_traits(dt)->from_float(row, (char *)w->data + n * w->stride[0], K);
  }
  free(row);
  return w;
}

/* out = a @ w^T with w quantized, M ragged (1..50, and one M past
 * TIDE_QUANT_DOT_MAX_M) and N ragged (1..64), on 1..4 threads. Every path
 * (integer dots, packed tiles, interleaved panels, dequantized panels + sgemm,
 * and q5_0 which has no dot kernel) is checked against the double-precision
 * product of the dequantized weights and the activations rounded through
 * llama.cpp's activation format for that weight dtype (q8_0, or q8_k for
 * k-quants): what llama.cpp computes on the same GGUF, up to float rounding
 * (every |error| < 1e-5 * sum |terms|). Before the panels rounded their
 * activations, the q5_0 cases and M = 67 were off by the whole q8 rounding
 * (~1e-2 of sum |terms|), and q4_k at M = 50 (packed tiles on q8_0
 * activations) too. Over all shapes, the error against tide_ref_matmul (f32
 * activations) is the activations' q8 rounding: measured nmse 1.5e-5 (q8_0
 * activations), 2.0e-5 and 2.6e-5 (q8_k), bound 2e-4. */
static void test_quant_matmul_fast_vs_ref(void **state) {
  (void)state;
  tide_pool_t *pool[5] = {NULL};
  tide_err_t err;
  for (int i = 1; i <= 4; i++) assert_int_equal(tide_pool_new(i, &pool[i], &err), 0);
  tu_rng_t rng = {9};
  const int64_t Ms[] = {1, 2, 3, 5, 16, 50, TIDE_QUANT_DOT_MAX_M + 3}; /* the last: converted panels + sgemm */
  const int32_t dts[5] = {TIDE_DTYPE_Q8_0, TIDE_DTYPE_Q4_0, TIDE_DTYPE_Q4_K, TIDE_DTYPE_Q6_K, TIDE_DTYPE_Q5_0};
  const int64_t Ns[] = {1, 7, 37, 64};
  int cases = 0;
  for (int f = 0; f < 5; f++) {
    int32_t dt = dts[f];
    int64_t bs = tide_dtype_traits(dt)->block_size;
    double err2 = 0, sig2 = 0; /* over all shapes: one small dot alone can cancel to ~0 */
    for (size_t mi = 0; mi < sizeof Ms / sizeof Ms[0]; mi++)
      for (size_t ni = 0; ni < sizeof Ns / sizeof Ns[0]; ni++) {
        int64_t M = Ms[mi], N = Ns[ni], K = bs * (1 + (int64_t)((mi + ni + f) % 3)) * (bs == 32 ? 4 : 1);
        int th = 1 + (int)((mi + ni) % 4);
        int32_t adt = tide_quant_matmul_act_dtype(dt, M);
        int64_t sa[2] = {M, K}, so[2] = {M, N};
        tide_tensor_t *a = mk(TIDE_DTYPE_F32, 2, sa), *o = mk(TIDE_DTYPE_F32, 2, so), *oref = mk(TIDE_DTYPE_F32, 2, so);
        fill_gauss(&rng, a->data, M * K, 1.0f);
        tide_tensor_t *w = quant_weight(&rng, dt, N, K, 0.05f);
        /* cover the threaded split: run once on the pool with the work forced over the threshold */
        assert_int_equal(tide_op_matmul(pool[th], o, a, w, 1, &err), 0);
        float *wf = malloc((size_t)(N * K) * 4), *af = malloc((size_t)(M * K) * 4);
        uint8_t *aq = malloc((size_t)K * 2);
        for (int64_t n = 0; n < N; n++) tide_k_load(w, n, 0, K, wf + n * K);
        assert_int_equal(adt, tide_quant_ggml_act_dtype(dt));
        for (int64_t m = 0; m < M; m++) {
          tide_quant_act_ref(adt, (float *)a->data + m * K, aq, K);
          tide_dtype_traits(adt)->to_float(aq, af + m * K, K);
        }
        float *exact = oref->data, *of = o->data;
        double *mag = malloc((size_t)(M * N) * sizeof(double)); /* sum of |terms|: float rounding scales with it */
        for (int64_t m = 0; m < M; m++)
          for (int64_t n = 0; n < N; n++) {
            double s = 0, sa = 0;
            for (int64_t k = 0; k < K; k++) {
              s += (double)af[m * K + k] * wf[n * K + k];
              sa += fabs((double)af[m * K + k] * wf[n * K + k]);
            }
            exact[m * N + n] = (float)s;
            mag[m * N + n] = sa;
          }
        double e1 = 0, e_ref = 0; /* worst |error| / sum |terms| */
        for (int64_t i = 0; i < M * N; i++) e1 = fmax(e1, fabs((double)of[i] - exact[i]) / mag[i]);
        assert_int_equal(tide_ref_matmul(oref, a, w, 1, &err), 0);
        for (int64_t i = 0; i < M * N; i++) e_ref = fmax(e_ref, fabs((double)of[i] - exact[i]) / mag[i]);
        for (int64_t i = 0; i < M * N; i++) {
          double d = (double)((float *)o->data)[i] - ((float *)oref->data)[i];
          err2 += d * d;
          sig2 += (double)((float *)oref->data)[i] * ((float *)oref->data)[i];
        }
        if (!(e1 < 1e-5)) {
          fprintf(stderr, "%s M=%lld N=%lld K=%lld threads %d: error / sum|terms| vs exact %.3g, vs reference %.3g\n",
                  tide_dtype_traits(dt)->name, (long long)M, (long long)N, (long long)K, th, e1, e_ref);
          fail();
        }
        cases++;
        free(mag);
        free(wf);
        free(af);
        free(aq);
        tide_tensor_release(a);
        tide_tensor_release(o);
        tide_tensor_release(oref);
        tide_tensor_release(w);
      }
    if (getenv("TIDE_QUANT_VERBOSE") || !(err2 / sig2 < 2e-4))
      fprintf(stderr, "matmul %s: nmse vs f32 activations %.3g\n", tide_dtype_traits(dt)->name, err2 / sig2);
    assert_true(err2 / sig2 < 2e-4);
  }
  assert_int_equal(cases, 5 * 7 * 4);
  for (int i = 1; i <= 4; i++) tide_pool_free(pool[i]);
}

/* out = a @ b with b (K, N) block-quantized along N (trans_b = 0; MLA's W_uk as stored) and M = 1..4: the
 * rows-added-up path (each row segment dequantized once) against tide_ref_matmul, on 1..3 threads, for every
 * block format, N spanning several 512-column segments and a ragged last one. */
static void test_quant_matmul_rows_trans0(void **state) {
  (void)state;
  tu_rng_t rng = {41};
  tide_err_t err;
  tide_pool_t *pool[4] = {NULL};
  for (int i = 1; i <= 3; i++) assert_int_equal(tide_pool_new(i, &pool[i], &err), 0);
  const int32_t dts[5] = {TIDE_DTYPE_Q8_0, TIDE_DTYPE_Q4_0, TIDE_DTYPE_Q4_K, TIDE_DTYPE_Q6_K, TIDE_DTYPE_Q5_0};
  for (int f = 0; f < 5; f++)
    for (int64_t M = 1; M <= 4; M++) {
      int32_t dt = dts[f];
      int64_t K = 64 + 3 * M, N = tide_dtype_traits(dt)->block_size == 256 ? 256 * (M + 1) : 32 * (5 + 13 * M);
      int th = 1 + (int)((M + f) % 3);
      tide_tensor_t *w = quant_weight(&rng, dt, K, N, 0.05f);
      int64_t sa[2] = {M, K}, so[2] = {M, N};
      tide_tensor_t *a = mk(TIDE_DTYPE_F32, 2, sa), *o = mk(TIDE_DTYPE_F32, 2, so), *oref = mk(TIDE_DTYPE_F32, 2, so);
      fill_gauss(&rng, a->data, M * K, 1.0f);
      for (int64_t i = 0; i < M * N; i++) ((float *)o->data)[i] = NAN;
      assert_int_equal(tide_op_matmul(pool[th], o, a, w, 0, &err), 0);
      assert_int_equal(tide_ref_matmul(oref, a, w, 0, &err), 0);
      double e = nmse(o->data, oref->data, M * N);
      if (getenv("TIDE_QUANT_VERBOSE") || !(e < 1e-12))
        fprintf(stderr, "rows trans_b=0 %s M=%lld N=%lld K=%lld threads %d: nmse %.3g\n", tide_dtype_traits(dt)->name,
                (long long)M, (long long)N, (long long)K, th, e);
      assert_true(e < 1e-12);
      tide_tensor_release(a);
      tide_tensor_release(o);
      tide_tensor_release(oref);
      tide_tensor_release(w);
    }
  for (int i = 1; i <= 3; i++) tide_pool_free(pool[i]);
}

/* tide_quant_act_round: rows quantized to llama.cpp's activation format for the weight dtype and back, the
 * same floats as tide_quant_act_ref then the format's to_float; refused for dtypes without one and for K that is not
 * a whole number of its blocks. */
static void test_quant_act_round(void **state) {
  (void)state;
  tu_rng_t rng = {31};
  const int32_t dts[5] = {TIDE_DTYPE_Q8_0, TIDE_DTYPE_Q4_0, TIDE_DTYPE_Q5_0, TIDE_DTYPE_Q4_K, TIDE_DTYPE_Q6_K};
  const int64_t M = 3, K = 2304 + 256, lda = K + 5; /* K past one 2048-value piece */
  float *a = malloc((size_t)(M * lda) * 4), *got = malloc((size_t)(M * K) * 4), *want = malloc((size_t)K * 4);
  uint8_t *q = malloc((size_t)K * 2);
  fill_gauss(&rng, a, M * lda, 1.0f);
  for (int f = 0; f < 5; f++) {
    int32_t adt = tide_quant_ggml_act_dtype(dts[f]);
    assert_int_equal(adt, f < 3 ? TIDE_DTYPE_Q8_0 : TIDE_DTYPE_Q8_K);
    assert_int_equal(tide_quant_act_round(dts[f], a, lda, M, K, got), 0);
    for (int64_t m = 0; m < M; m++) {
      tide_quant_act_ref(adt, a + m * lda, q, K);
      tide_dtype_traits(adt)->to_float(q, want, K);
      assert_memory_equal(got + m * K, want, (size_t)K * 4);
    }
  }
  assert_int_equal(tide_quant_ggml_act_dtype(TIDE_DTYPE_F32), -1);
  assert_int_equal(tide_quant_act_round(TIDE_DTYPE_BF16, a, lda, M, K, got), -1);
  assert_int_equal(tide_quant_act_round(TIDE_DTYPE_Q4_K, a, lda, M, 96, got), -1);
  free(a);
  free(got);
  free(want);
  free(q);
}

/* AVX2 dequantizers against the references: the same floats, bit for bit, on
 * random rows (the same products in the same order). */
static void test_quant_to_float_fast_vs_ref(void **state) {
  (void)state;
  if (!tide_k_has_avx2()) skip();
  tu_rng_t rng = {33};
  const int64_t K = 1024;
  float *x = malloc((size_t)K * 4), *y0 = malloc((size_t)K * 4), *y1 = malloc((size_t)K * 4);
  uint8_t *q = malloc((size_t)K * 2);
  for (int f = 0; f < 4; f++)
    for (int rep = 0; rep < 8; rep++) {
      fill_gauss(&rng, x, K, rep == 0 ? 1e-3f : 0.5f * (float)rep);
      tide_dtype_traits(qdts[f])->from_float(x, q, K);
      tide_dtype_traits(qdts[f])->to_float(q, y0, K);
      tide_quant_to_float_avx2(qdts[f])(q, y1, K);
      assert_memory_equal(y0, y1, (size_t)K * 4);
    }
  free(x);
  free(y0);
  free(y1);
  free(q);
}

/* The AVX2 weight and activation packers for the VNNI tiles write the portable packers' bytes (padding
 * included). */
static void test_quant_pack_weight_fast_vs_ref(void **state) {
  (void)state;
  tu_rng_t rng = {13};
  const int64_t Ks[] = {32, 96, 512, 544, 2048 + 32};
  float *x = malloc((2048 + 32) * 4);
  uint8_t *wq = malloc(2 * (2048 + 32));
  int64_t kp = tide_quant_packed_kp(2048 + 32), prb = kp + kp / 32 * 8;
  uint8_t *p1 = malloc((size_t)prb), *p2 = malloc((size_t)prb);
  for (int f = 0; f < 2; f++) {
    int32_t dt = f ? TIDE_DTYPE_Q4_0 : TIDE_DTYPE_Q8_0;
    for (size_t ki = 0; ki < sizeof Ks / sizeof Ks[0]; ki++) {
      int64_t K = Ks[ki], rb = tide_quant_packed_kp(K) + tide_quant_packed_kp(K) / 32 * 8;
      fill_gauss(&rng, x, K, 1.0f);
      tide_dtype_traits(dt)->from_float(x, wq, K);
      memset(p1, 0xAB, (size_t)prb);
      memset(p2, 0xCD, (size_t)prb);
      tide_quant_pack_weight(dt, wq, K, p1);
      tide_quant_pack_weight_c(dt, wq, K, p2);
      assert_memory_equal(p1, p2, (size_t)rb);
      /* activation rows (q8_0 blocks) for both roles */
      tide_quant_act_quantize(TIDE_DTYPE_Q8_0, x, wq, K);
      memset(p1, 0xAB, (size_t)prb);
      memset(p2, 0xCD, (size_t)prb);
      tide_quant_pack_act(dt, wq, K, p1);
      tide_quant_pack_act_c(dt, wq, K, p2);
      assert_memory_equal(p1, p2, (size_t)rb);
    }
    /* interleaved 16-row panels: full and partial (5 rows), rows at a stride */
    int64_t K = 2048 + 32;
    tide_tensor_t *w = quant_weight(&rng, dt, 21, K, 0.05f);
    int64_t pb = tide_quant_il_panel_bytes(K);
    uint8_t *q1 = malloc((size_t)pb), *q2 = malloc((size_t)pb);
    for (int t = 0; t < 2; t++) {
      int nr = t ? 5 : 16;
      memset(q1, 0xAB, (size_t)pb);
      memset(q2, 0xCD, (size_t)pb);
      tide_quant_pack_il(dt, w, t ? 16 : 0, nr, K, q1);
      tide_quant_pack_il_c(dt, w, t ? 16 : 0, nr, K, q2);
      assert_memory_equal(q1, q2, (size_t)pb);
      if (tide_k_has_avx2()) { /* the AVX2 packer called directly (the caller clears a partial panel) */
        memset(q1, 0, (size_t)pb);
        tide_quant_pack_il_avx2(dt, w, t ? 16 : 0, nr, K, q1);
        assert_memory_equal(q1, q2, (size_t)pb);
      }
    }
    free(q1);
    free(q2);
    tide_tensor_release(w);
  }
  free(x);
  free(wq);
  free(p1);
  free(p2);
}

/* Packed tiles (q8_0 / q4_0 / q4_k, any M): the portable tile and, when the CPU
 * has it, the AVX-512 VNNI tile, through tide_quant_matmul_packed on ragged
 * shapes (M and N not multiples of 4, K not a multiple of the 512-byte packing)
 * and pools of 1..4 threads, against the double-precision product of the
 * dequantized weights and the dequantized q8_0 activation rows (what the tiles
 * compute, up to float rounding: measured nmse <= 3e-13, bound 1e-10). */
static void test_quant_packed_fast_vs_ref(void **state) {
  (void)state;
  tide_pool_t *pool[5] = {NULL};
  tide_err_t err;
  for (int i = 1; i <= 4; i++) assert_int_equal(tide_pool_new(i, &pool[i], &err), 0);
  tu_rng_t rng = {21};
  const int64_t Ms[] = {1, 3, 6, 17}, Ns[] = {1, 6, 13, 70}, Ks[] = {256, 768, 2304};
  const int32_t dts[3] = {TIDE_DTYPE_Q8_0, TIDE_DTYPE_Q4_0, TIDE_DTYPE_Q4_K};
  int vnni = tide_quant_has_vnni512();
  for (int f = 0; f < 3; f++)
    for (size_t mi = 0; mi < 4; mi++)
      for (size_t ni = 0; ni < 4; ni++) {
        int32_t dt = dts[f];
        int64_t M = Ms[mi], N = Ns[ni], K = Ks[(mi + ni) % 3] / (dt == TIDE_DTYPE_Q4_K ? 1 : 8); /* 32 / 96 / 288 for 32-blocks */
        int th = 1 + (int)((mi + 3 * ni + f) % 4);
        tide_tensor_t *w = quant_weight(&rng, dt, N, K, 0.05f);
        float *a = malloc((size_t)(M * K) * 4), *o = malloc((size_t)(M * N) * 4), *ref = malloc((size_t)(M * N) * 4);
        fill_gauss(&rng, a, M * K, 1.0f);
        uint8_t *aq = malloc((size_t)K * 2);
        float *af = malloc((size_t)(M * K) * 4), *wf = malloc((size_t)(N * K) * 4);
        for (int64_t m = 0; m < M; m++) { /* q8_k activations for q4_k weights, as its dots */
          if (dt == TIDE_DTYPE_Q4_K) {
            tide_quant_from_float_q8_k(a + m * K, aq, K);
            tide_quant_to_float_q8_k(aq, af + m * K, K);
            continue;
          }
          tide_quant_act_ref(TIDE_DTYPE_Q8_0, a + m * K, aq, K);
          tide_quant_to_float_q8_0(aq, af + m * K, K);
        }
        for (int64_t n = 0; n < N; n++) tide_k_load(w, n, 0, K, wf + n * K);
        for (int64_t m = 0; m < M; m++)
          for (int64_t n = 0; n < N; n++) {
            double sum = 0;
            for (int64_t k = 0; k < K; k++) sum += (double)af[m * K + k] * wf[n * K + k];
            ref[m * N + n] = (float)sum;
          }
        free(af);
        free(wf);
        for (int v = 0; v <= vnni; v++) {
          for (int64_t i = 0; i < M * N; i++) o[i] = NAN;
          assert_int_equal(tide_quant_matmul_packed(pool[th], o, a, K, w, M, N, K, v, &err), 0);
          double e = nmse(o, ref, M * N);
          if (getenv("TIDE_QUANT_VERBOSE") || !(e < 1e-10))
            fprintf(stderr, "packed %s vnni %d M=%lld N=%lld K=%lld threads %d: nmse %.3g\n",
                    tide_dtype_traits(dt)->name, v, (long long)M, (long long)N, (long long)K, th, e);
          assert_true(e < 1e-10);
          if (dt == TIDE_DTYPE_Q4_K) continue;
          /* the interleaved 16-row panels (portable tile, then AVX-512 VNNI) */
          for (int64_t i = 0; i < M * N; i++) o[i] = NAN;
          assert_int_equal(tide_quant_matmul_il(pool[th], o, a, K, w, M, N, K, v, &err), 0);
          e = nmse(o, ref, M * N);
          if (getenv("TIDE_QUANT_VERBOSE") || !(e < 1e-10))
            fprintf(stderr, "interleaved %s vnni %d M=%lld N=%lld K=%lld threads %d: nmse %.3g\n",
                    tide_dtype_traits(dt)->name, v, (long long)M, (long long)N, (long long)K, th, e);
          assert_true(e < 1e-10);
        }
        free(a);
        free(o);
        free(ref);
        free(aq);
        tide_tensor_release(w);
      }
  /* other dtypes are refused */
  tide_tensor_t *w6 = quant_weight(&rng, TIDE_DTYPE_Q6_K, 4, 256, 0.05f);
  float a6[256] = {0}, o6[4];
  assert_int_equal(tide_quant_matmul_packed(pool[1], o6, a6, 256, w6, 1, 4, 256, 0, &err), TIDE_EINVAL);
  assert_int_equal(tide_quant_matmul_il(pool[1], o6, a6, 256, w6, 1, 4, 256, 0, &err), TIDE_EINVAL);
  tide_tensor_release(w6);
  for (int i = 1; i <= 4; i++) tide_pool_free(pool[i]);
}

/* A shape large enough that tide_k_run really wakes the pool: threaded result
 * equals the one-thread result bit for bit (each output is one dot, computed
 * by the same code whichever thread runs it). */
static void test_quant_matmul_threads_same(void **state) {
  (void)state;
  tide_pool_t *p1, *p4;
  tide_err_t err;
  assert_int_equal(tide_pool_new(1, &p1, &err), 0);
  assert_int_equal(tide_pool_new(4, &p4, &err), 0);
  tu_rng_t rng = {13};
  for (int f = 0; f < 4; f++) {
    int64_t M = 3, N = 301, K = 1024;
    int64_t sa[2] = {M, K}, so[2] = {M, N};
    tide_tensor_t *a = mk(TIDE_DTYPE_F32, 2, sa), *o1 = mk(TIDE_DTYPE_F32, 2, so), *o4 = mk(TIDE_DTYPE_F32, 2, so);
    fill_gauss(&rng, a->data, M * K, 1.0f);
    tide_tensor_t *w = quant_weight(&rng, qdts[f], N, K, 0.05f);
    assert_int_equal(tide_op_matmul(p1, o1, a, w, 1, &err), 0);
    assert_int_equal(tide_op_matmul(p4, o4, a, w, 1, &err), 0);
    assert_memory_equal(o1->data, o4->data, (size_t)(M * N) * 4);
    /* trans_b = 0 (b (K', N') quantized along N'): the converted-panel path, against the reference */
    int64_t sb[2] = {M * 2, 512}, so2[2] = {M, 512}, sa2[2] = {M, M * 2};
    tide_tensor_t *b0 = quant_weight(&rng, qdts[f], sb[0], sb[1], 0.05f);
    tide_tensor_t *a2 = mk(TIDE_DTYPE_F32, 2, sa2), *x = mk(TIDE_DTYPE_F32, 2, so2), *xr = mk(TIDE_DTYPE_F32, 2, so2);
    fill_gauss(&rng, a2->data, M * M * 2, 1.0f);
    assert_int_equal(tide_op_matmul(p4, x, a2, b0, 0, &err), 0);
    assert_int_equal(tide_ref_matmul(xr, a2, b0, 0, &err), 0);
    assert_true(tu_nmse(x, xr) < 1e-10);
    tide_tensor_release(b0);
    tide_tensor_release(a2);
    tide_tensor_release(x);
    tide_tensor_release(xr);
    tide_tensor_release(a);
    tide_tensor_release(o1);
    tide_tensor_release(o4);
    tide_tensor_release(w);
  }
  tide_pool_free(p1);
  tide_pool_free(p4);
}

/* a with padded rows (a narrowed view) and a in bf16: the quantized path reads
 * a through the same conversion as the other paths (against the reference:
 * only the activations' q8 rounding, nmse bound 2e-4 as above). */
static void test_quant_matmul_strided_a(void **state) {
  (void)state;
  tide_pool_t *pool;
  tide_err_t err;
  assert_int_equal(tide_pool_new(2, &pool, &err), 0);
  tu_rng_t rng = {29};
  for (int f = 0; f < 4; f++) {
    int64_t M = 5, N = 40, K = 512;
    int64_t sw[2] = {M, K + 64}, so[2] = {M, N};
    tide_tensor_t *wide = mk(TIDE_DTYPE_F32, 2, sw), *a, *ab, *o = mk(TIDE_DTYPE_F32, 2, so),
                  *oref = mk(TIDE_DTYPE_F32, 2, so);
    fill_gauss(&rng, wide->data, M * (K + 64), 1.0f);
    assert_int_equal(tide_tensor_narrow(wide, 1, 32, K, &a, &err), 0);
    tide_tensor_t *w = quant_weight(&rng, qdts[f], N, K, 0.05f);
    assert_int_equal(tide_op_matmul(pool, o, a, w, 1, &err), 0);
    assert_int_equal(tide_ref_matmul(oref, a, w, 1, &err), 0);
    assert_true(tu_nmse(o, oref) < 2e-4);
    assert_int_equal(tide_tensor_copy(a, TIDE_DTYPE_BF16, &ab, &err), 0);
    assert_int_equal(tide_op_matmul(pool, o, ab, w, 1, &err), 0);
    assert_int_equal(tide_ref_matmul(oref, ab, w, 1, &err), 0);
    assert_true(tu_nmse(o, oref) < 2e-4);
    tide_tensor_release(wide);
    tide_tensor_release(a);
    tide_tensor_release(ab);
    tide_tensor_release(o);
    tide_tensor_release(oref);
    tide_tensor_release(w);
  }
  tide_pool_free(pool);
}

/* get_rows of a quantized table: the rows' dequantized values, bit for bit. */
static void test_quant_get_rows(void **state) {
  (void)state;
  tide_pool_t *pool;
  tide_err_t err;
  assert_int_equal(tide_pool_new(3, &pool, &err), 0);
  tu_rng_t rng = {17};
  for (int f = 0; f < 4; f++) {
    int64_t V = 50, D = 512, n = 300;
    tide_tensor_t *t = quant_weight(&rng, qdts[f], V, D, 1.0f);
    int64_t si[1] = {n}, so[2] = {n, D};
    tide_tensor_t *ids = mk(TIDE_DTYPE_I32, 1, si), *o = mk(TIDE_DTYPE_F32, 2, so), *oref = mk(TIDE_DTYPE_F32, 2, so);
    for (int64_t i = 0; i < n; i++) ((int32_t *)ids->data)[i] = (int32_t)tu_randint(&rng, 0, V - 1);
    assert_int_equal(tide_op_get_rows(pool, o, t, ids, &err), 0);
    assert_int_equal(tide_ref_get_rows(oref, t, ids, &err), 0);
    assert_memory_equal(o->data, oref->data, (size_t)(n * D) * 4);
    float row[512];
    for (int64_t i = 0; i < n; i++) {
      int32_t r = ((int32_t *)ids->data)[i];
      tide_dtype_traits(qdts[f])->to_float((char *)t->data + r * t->stride[0], row, D);
      assert_memory_equal(row, (float *)o->data + i * D, (size_t)D * 4);
    }
    tide_tensor_release(t);
    tide_tensor_release(ids);
    tide_tensor_release(o);
    tide_tensor_release(oref);
  }
  tide_pool_free(pool);
}

/* q5_0 (llama.cpp's fallback for q4_k rows not a multiple of 256; its bytes
 * are checked against llama.cpp's in tests/lua/quantize_test.lua when the npm
 * package is installed): the round trip error on gaussian data (theory: step
 * amax/16, a quarter of q4_0's squared error; measured 1.82e-3 at seed 11,
 * bound x1.3), and edge values (zeros, constants, non-finite) without a crash. */
static void test_quant_q5_0_roundtrip(void **state) {
  (void)state;
  const tide_dtype_traits_t *tr = tide_dtype_traits(TIDE_DTYPE_Q5_0);
  assert_non_null(tr->from_float);
  assert_non_null(tr->to_float);
  const int64_t n = 64 * 4096;
  tu_rng_t rng = {11};
  float *x = malloc((size_t)n * 4), *y = malloc((size_t)n * 4);
  uint8_t *q = malloc((size_t)n);
  fill_gauss(&rng, x, n, 1.0f);
  tr->from_float(x, q, n);
  tr->to_float(q, y, n);
  double e = nmse(y, x, n);
  if (getenv("TIDE_QUANT_VERBOSE")) fprintf(stderr, "round trip q5_0: nmse %.3g\n", e);
  assert_true(e < 2.4e-3 && e > 1.0e-4);
  /* every value within half a step (+ the f16 rounding of d) of the input;
   * the largest magnitude maps to -16, so a value of the other sign near it
   * clips at +15: one step there */
  for (int64_t b = 0; b < 64; b++) {
    float amax = 0.0f;
    for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[b * 32 + j]));
    for (int j = 0; j < 32; j++) {
      float step = amax / 16.0f, err = fabsf(y[b * 32 + j] - x[b * 32 + j]);
      assert_true(err <= (fabsf(x[b * 32 + j]) > amax - step ? step : 0.5f * step) + amax * 2e-3f);
    }
  }
  float z[64], w[64];
  memset(z, 0, sizeof z);
  tr->from_float(z, q, 64);
  tr->to_float(q, w, 64);
  for (int i = 0; i < 64; i++) assert_true(w[i] == 0.0f);
  for (int i = 0; i < 64; i++) z[i] = i % 3 == 0 ? INFINITY : i % 3 == 1 ? NAN : -1e30f;
  tr->from_float(z, q, 64);
  tr->to_float(q, w, 64);
  free(x);
  free(y);
  free(q);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_quant_fixture_bytes),      cmocka_unit_test(test_quant_fixture_dequant),
      cmocka_unit_test(test_quant_roundtrip_error),    cmocka_unit_test(test_quant_edge_values),
      cmocka_unit_test(test_quant_q8_k_bsums),         cmocka_unit_test(test_quant_act_quantize_matches_ref),
      cmocka_unit_test(test_quant_dot_fast_vs_ref),    cmocka_unit_test(test_quant_dot512_vs_ref),
      cmocka_unit_test(test_quant_pack_weight_fast_vs_ref),
      cmocka_unit_test(test_quant_matmul_fast_vs_ref), cmocka_unit_test(test_quant_matmul_threads_same),
      cmocka_unit_test(test_quant_matmul_strided_a),   cmocka_unit_test(test_quant_get_rows),
      cmocka_unit_test(test_quant_packed_fast_vs_ref), cmocka_unit_test(test_quant_to_float_fast_vs_ref),
      cmocka_unit_test(test_quant_q5_0_roundtrip),      cmocka_unit_test(test_quant_act_round),
      cmocka_unit_test(test_quant_act_q8_0_is_llama_cpp_activation_rounding),
      cmocka_unit_test(test_quant_matmul_rows_trans0),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
