/* test_ggml_order.c: the ops in llama.cpp's arithmetic (kernels/ggml_order.c)
 * against Tide's scalar references. They compute the same functions with
 * sums in another order, so they agree to float rounding; their exact bits
 * against llama.cpp are checked by tests/lua/ggml_numerics_test.lua. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kern.h"
#include "ops.h"
#include "quant.h"
#include "testutil.h"

static tide_tensor_t *mk(int32_t dt, int32_t ndim, const int64_t *shape) {
  tide_tensor_t *t = NULL;
  tide_err_t err;
  assert_int_equal(tide_tensor_new(dt, ndim, shape, &t, &err), 0);
  return t;
}

static void fill(tu_rng_t *r, float *x, int64_t n, float scale) {
  for (int64_t i = 0; i < n; i++) x[i] = tu_rand(r) * scale;
}

/* |a - b| <= atol + rtol * max|b| over all elements */
static void expect_close(const tide_tensor_t *a, const tide_tensor_t *b, double atol, double rtol, const char *what) {
  int64_t n = tide_tensor_numel(b);
  const float *x = a->data, *y = b->data;
  double mx = 0, worst = 0;
  for (int64_t i = 0; i < n; i++) mx = fmax(mx, fabs(y[i]));
  for (int64_t i = 0; i < n; i++) worst = fmax(worst, fabs((double)x[i] - y[i]));
  if (!(worst <= atol + rtol * mx)) {
    fprintf(stderr, "%s: max |diff| %.3g, max |ref| %.3g\n", what, worst, mx);
    fail();
  }
}

/* Every weight dtype, row counts 1..9 (q4_k and q4_0 change order at groups of 4 rows and at a multiple of
 * 8 weight rows), 1..3 threads: against the double product of the dequantized weights and the activations
 * rounded through llama.cpp's format (every |error| < 1e-5 of the sum of |terms|); threads give the same
 * bits. */
static void test_ggml_order_matmul(void **state) {
  (void)state;
  tide_pool_t *pool[4] = {NULL};
  tide_err_t err;
  for (int i = 1; i <= 3; i++) assert_int_equal(tide_pool_new(i, &pool[i], &err), 0);
  tu_rng_t rng = {5};
  const int32_t dts[] = {TIDE_DTYPE_F32, TIDE_DTYPE_Q8_0, TIDE_DTYPE_Q5_0, TIDE_DTYPE_Q4_0, TIDE_DTYPE_Q4_K,
                         TIDE_DTYPE_Q6_K};
  const int64_t Ms[] = {1, 3, 4, 5, 9}, Ns[] = {8, 12, 16};
  for (size_t f = 0; f < sizeof dts / sizeof dts[0]; f++) {
    int32_t dt = dts[f];
    assert_true(tide_ggml_matmul_supports(dt));
    int64_t bs = tide_dtype_traits(dt)->block_size;
    int64_t K = dt == TIDE_DTYPE_F32 ? 80 : bs * (bs == 32 ? 5 : 2);
    for (size_t mi = 0; mi < sizeof Ms / sizeof Ms[0]; mi++)
      for (size_t ni = 0; ni < sizeof Ns / sizeof Ns[0]; ni++) {
        int64_t M = Ms[mi], N = Ns[ni];
        if (dt == TIDE_DTYPE_Q4_K && N % 8) continue; /* llama.cpp's other q4_k kernel: not reproduced */
        int64_t sa[2] = {M, K}, sw[2] = {N, K}, so[2] = {M, N};
        tide_tensor_t *a = mk(TIDE_DTYPE_F32, 2, sa), *w = mk(dt, 2, sw), *o = mk(TIDE_DTYPE_F32, 2, so),
                      *o1 = mk(TIDE_DTYPE_F32, 2, so);
        float *wf = malloc((size_t)(N * K) * 4), *af = malloc((size_t)(M * K) * 4);
        fill(&rng, a->data, M * K, 2.0f);
        fill(&rng, wf, N * K, 0.1f);
        for (int64_t n = 0; n < N; n++) tide_dtype_traits(dt)->from_float(wf + n * K, tide_k_row(w, n), K);
        for (int64_t n = 0; n < N; n++) tide_k_load(w, n, 0, K, wf + n * K);
        int32_t adt = dt == TIDE_DTYPE_F32 ? -1 : tide_quant_ggml_act_dtype(dt);
        uint8_t *aq = malloc((size_t)K * 2);
        for (int64_t m = 0; m < M; m++) {
          if (adt < 0) {
            memcpy(af + m * K, (float *)a->data + m * K, (size_t)K * 4);
            continue;
          }
          tide_quant_act_ref(adt, (float *)a->data + m * K, aq, K);
          tide_dtype_traits(adt)->to_float(aq, af + m * K, K);
        }
        assert_int_equal(tide_op_matmul_ggml(pool[1], o1, a, w, &err), 0);
        for (int th = 2; th <= 3; th++) {
          assert_int_equal(tide_op_matmul_ggml(pool[th], o, a, w, &err), 0);
          assert_memory_equal(o->data, o1->data, (size_t)(M * N) * 4);
        }
        for (int64_t m = 0; m < M; m++)
          for (int64_t n = 0; n < N; n++) {
            double s = 0, mag = 0;
            for (int64_t k = 0; k < K; k++) {
              s += (double)af[m * K + k] * wf[n * K + k];
              mag += fabs((double)af[m * K + k] * wf[n * K + k]);
            }
            double e = fabs(((float *)o->data)[m * N + n] - s);
            if (!(e <= 1e-5 * mag + 1e-30)) {
              fprintf(stderr, "%s M=%lld N=%lld: %.9g vs %.9g (sum |terms| %.3g)\n", tide_dtype_traits(dt)->name,
                      (long long)M, (long long)N, ((float *)o->data)[m * N + n], s, mag);
              fail();
            }
          }
        free(wf);
        free(af);
        free(aq);
        tide_tensor_release(a);
        tide_tensor_release(w);
        tide_tensor_release(o);
        tide_tensor_release(o1);
      }
  }
  for (int i = 1; i <= 3; i++) tide_pool_free(pool[i]);
}

/* The f32 dots and the exp against double precision. */
static void test_ggml_order_dots_and_exp(void **state) {
  (void)state;
  tu_rng_t rng = {7};
  float x[300], y[300];
  const int64_t ns[] = {1, 15, 16, 32, 48, 63, 64, 65, 128, 256, 300};
  for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++) {
    int64_t n = ns[i];
    fill(&rng, x, n, 1.0f);
    fill(&rng, y, n, 1.0f);
    double s = 0, mag = 0;
    for (int64_t k = 0; k < n; k++) {
      s += (double)x[k] * y[k];
      mag += fabs((double)x[k] * y[k]);
    }
    assert_true(fabs(tide_ggml_dot_f32(x, y, n) - s) <= 1e-6 * mag);
    if (n % 16 == 0) assert_true(fabs(tide_ggml_dot_f32_tile(x, y, n) - s) <= 1e-6 * mag);
  }
  for (float v = -87.0f; v <= 88.0f; v += 0.37f) {
    double e = exp((double)v);
    assert_true(fabs(tide_ggml_expf(v) - e) <= 3e-7 * e);
  }
  assert_true(tide_ggml_expf(-1000.0f) == 0.0f);
  assert_true(isinf(tide_ggml_expf(1000.0f)));
  assert_true(tide_ggml_expf(-INFINITY) == 0.0f);
}

/* RoPE without scaling (both pair layouts), linear and YaRN scaling, against the reference. */
static void test_ggml_order_rope(void **state) {
  (void)state;
  tu_rng_t rng = {11};
  tide_err_t err;
  for (int c = 0; c < 4; c++) {
    tide_rope_t cfg = {.dim = c == 3 ? 16 : 32, .interleaved = c != 1, .theta = 10000.0f, .factor = 1.0f,
                       .beta_fast = 32, .beta_slow = 1, .low_freq_factor = 1, .high_freq_factor = 4,
                       .attn_factor = 1.0f, .scaling = TIDE_ROPE_NONE};
    if (c == 2) {
      cfg.scaling = TIDE_ROPE_LINEAR;
      cfg.factor = 2.0f;
    }
    if (c == 3) {
      cfg.scaling = TIDE_ROPE_YARN;
      cfg.factor = 4.0f;
      cfg.orig_max_pos = 512;
    }
    int64_t sx[3] = {7, 3, 40}, sp[1] = {7};
    tide_tensor_t *x = mk(TIDE_DTYPE_F32, 3, sx), *r = mk(TIDE_DTYPE_F32, 3, sx), *pos = mk(TIDE_DTYPE_I32, 1, sp);
    fill(&rng, x->data, 7 * 3 * 40, 3.0f);
    memcpy(r->data, x->data, 7 * 3 * 40 * 4);
    for (int t = 0; t < 7; t++) ((int32_t *)pos->data)[t] = t * 97 + (t == 6 ? 1500 : 0);
    assert_int_equal(tide_op_rope_ggml(NULL, x, pos, &cfg, &err), 0);
    assert_int_equal(tide_ref_rope(r, pos, &cfg, &err), 0);
    char what[64];
    snprintf(what, sizeof what, "rope case %d", c);
    /* positions up to 2082: llama.cpp's theta (the position times base^(-2i/d), accumulated in float) is off
     * by ~1e-4 rad there; the reference computes it in one product */
    expect_close(x, r, 0, c == 3 ? 1e-4 : 2e-5, what);
    tide_tensor_release(x);
    tide_tensor_release(r);
    tide_tensor_release(pos);
  }
}

/* SwiGLU (a row length with a tail past the groups of 16). */
static void test_ggml_order_swiglu(void **state) {
  (void)state;
  tu_rng_t rng = {13};
  tide_err_t err;
  int64_t s[2] = {3, 40};
  tide_tensor_t *g = mk(TIDE_DTYPE_F32, 2, s), *u = mk(TIDE_DTYPE_F32, 2, s), *o = mk(TIDE_DTYPE_F32, 2, s),
                *r = mk(TIDE_DTYPE_F32, 2, s);
  fill(&rng, g->data, 120, 8.0f);
  fill(&rng, u->data, 120, 2.0f);
  assert_int_equal(tide_op_swiglu_ggml(NULL, o, g, u, &err), 0);
  assert_int_equal(tide_ref_swiglu(r, g, u, &err), 0);
  expect_close(o, r, 0, 1e-6, "swiglu");
  tide_tensor_release(g);
  tide_tensor_release(u);
  tide_tensor_release(o);
  tide_tensor_release(r);
}

/* Attention, prompt batches (several tokens per sequence) and single-token steps, GQA, contexts across the
 * 16- and 64-position groups of the sums; and a non-f32 cache is refused with a message. */
static void test_ggml_order_attention(void **state) {
  (void)state;
  tu_rng_t rng = {17};
  tide_err_t err;
  enum { BS = 16, MB = 12 };
  for (int c = 0; c < 4; c++) {
    int32_t n_seq = 1 + c % 2, table[2 * MB], seq[64], pos[64], n_tok = 0;
    for (int32_t i = 0; i < n_seq * MB; i++) table[i] = (i * 5 + 1) % (n_seq * MB);
    for (int32_t s = 0; s < n_seq; s++) {
      int32_t start = c < 2 ? 0 : (int32_t)tu_randint(&rng, 60, 150), nnew = c < 2 ? 1 + 13 * (c + 1) : 1;
      for (int32_t j = 0; j < nnew; j++, n_tok++) {
        seq[n_tok] = s;
        pos[n_tok] = start + j;
      }
    }
    int64_t n_kv = 2, n_head = 6, dk = c == 3 ? 72 : 48, dv = 32;
    int64_t sk[4] = {n_seq * MB, BS, n_kv, dk}, sv[4] = {n_seq * MB, BS, n_kv, dv}, sq[3] = {n_tok, n_head, dk},
            so[3] = {n_tok, n_head, dv};
    tide_tensor_t *kc = tu_rand_tensor(&rng, 4, sk, 1.0f), *vc = tu_rand_tensor(&rng, 4, sv, 1.0f),
                  *q = tu_rand_tensor(&rng, 3, sq, 1.0f), *o = mk(TIDE_DTYPE_F32, 3, so), *r = mk(TIDE_DTYPE_F32, 3, so);
    tide_batch_t b = {.n_tok = n_tok, .n_seq = n_seq, .max_blocks = MB, .block_size = BS, .tok_seq = seq,
                      .tok_pos = pos, .block_table = table};
    float scale = 1.0f / sqrtf((float)dk);
    assert_int_equal(tide_op_attention_ggml(NULL, o, q, kc, vc, &b, scale, &err), 0);
    assert_int_equal(tide_ref_attention(r, q, kc, vc, &b, scale, &err), 0);
    char what[64];
    snprintf(what, sizeof what, "attention case %d", c);
    expect_close(o, r, 1e-7, 1e-5, what);
    if (c == 0) {
      tide_tensor_t *kh;
      assert_int_equal(tide_tensor_copy(kc, TIDE_DTYPE_BF16, &kh, &err), 0);
      assert_int_not_equal(tide_op_attention_ggml(NULL, o, q, kh, vc, &b, scale, &err), 0);
      assert_non_null(strstr(err.msg, "f32 KV cache"));
      tide_tensor_release(kh);
    }
    tide_tensor_t *ts[5] = {kc, vc, q, o, r};
    for (int i = 0; i < 5; i++) tide_tensor_release(ts[i]);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_ggml_order_matmul), cmocka_unit_test(test_ggml_order_dots_and_exp),
      cmocka_unit_test(test_ggml_order_rope), cmocka_unit_test(test_ggml_order_swiglu),
      cmocka_unit_test(test_ggml_order_attention),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
