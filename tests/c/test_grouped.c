/* Grouped matmuls (kernels/grouped.c): per-head products over interleaved
 * head layouts and the routed experts of an MoE layer in one call. The
 * references are checked against products computed here in double
 * precision; the fast paths against the references, for several weight
 * dtypes and thread counts; bad offsets and missing weights are refused. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"

static tide_tensor_t *mk(int32_t ndim, const int64_t *shape) {
  tide_tensor_t *t = NULL;
  tide_err_t err;
  assert_int_equal(tide_tensor_new(TIDE_DTYPE_F32, ndim, shape, &t, &err), 0);
  return t;
}

/* (rows, G, cols) storage seen as (G, rows, cols): the head-interleaved
 * layout of q (n_tok, n_head, d) read head by head. */
static tide_tensor_t *by_group(tide_tensor_t *t) {
  int64_t shape[3] = {t->shape[1], t->shape[0], t->shape[2]};
  int64_t stride[3] = {t->stride[1], t->stride[0], t->stride[2]};
  tide_tensor_t *v = NULL;
  tide_err_t err;
  assert_int_equal(tide_tensor_view(t, 0, 3, shape, stride, &v, &err), 0);
  return v;
}

static float at3(const tide_tensor_t *t, int64_t i, int64_t j, int64_t k) {
  return *(const float *)((const char *)t->data + i * t->stride[0] + j * t->stride[1] + k * t->stride[2]);
}

static void check_close(const tide_tensor_t *a, const tide_tensor_t *b, double nmse_max, const char *what) {
  double e = tu_nmse(a, b);
  if (!(e <= nmse_max)) {
    fprintf(stderr, "%s: nmse %.3g (max %.3g)\n", what, e, nmse_max);
    fail();
  }
}

/* One grouped product: G groups of M rows (a and out read head-interleaved), fast on pool against the
 * reference; for f32 weights the reference also against a product computed here in double. */
static void heads_case(tide_pool_t *pool, tu_rng_t *rng, int32_t dt, int64_t G, int64_t M, int64_t K, int64_t N,
                       int trans, const char *what) {
  tide_err_t err;
  int64_t as[3] = {M, G, K}, os[3] = {M, G, N};
  int64_t bs[3] = {G, trans ? N : K, trans ? K : N};
  tide_tensor_t *a_st = tu_rand_tensor(rng, 3, as, 1.0f);
  tide_tensor_t *b = tu_rand_tensor_dtype(rng, dt, 3, bs, 0.5f);
  tide_tensor_t *o_fast = mk(3, os), *o_ref = mk(3, os);
  tide_tensor_t *a = by_group(a_st), *of = by_group(o_fast), *orf = by_group(o_ref);
  assert_int_equal(tide_ref_matmul_heads(orf, a, b, trans, &err), 0);
  assert_int_equal(tide_op_matmul_heads(pool, of, a, b, trans, &err), 0);
  if (dt == TIDE_DTYPE_F32) { /* the reference against a product computed here */
    double num = 0, den = 0;
    for (int64_t g = 0; g < G; g++)
      for (int64_t m = 0; m < M; m++)
        for (int64_t n = 0; n < N; n++) {
          double sum = 0;
          for (int64_t k = 0; k < K; k++) sum += (double)at3(a, g, m, k) * (trans ? at3(b, g, n, k) : at3(b, g, k, n));
          double d = sum - at3(orf, g, m, n);
          num += d * d;
          den += sum * sum;
        }
    assert_true(num / den < 1e-10);
  }
  /* q8_0 with trans_b = 1 quantizes the activations (the reference keeps them f32) */
  check_close(o_fast, o_ref, dt == TIDE_DTYPE_Q8_0 && trans ? 2e-3 : 1e-8, what);
  tide_tensor_t *ts[7] = {a_st, b, o_fast, o_ref, a, of, orf};
  for (int i = 0; i < 7; i++) tide_tensor_release(ts[i]);
}

static void test_grouped_heads_match_reference(void **state) {
  (void)state;
  tu_rng_t rng = {11};
  tide_err_t err;
  tide_pool_t *pool = NULL;
  assert_int_equal(tide_pool_new(2, &pool, &err), 0);
  const int32_t dts[3] = {TIDE_DTYPE_F32, TIDE_DTYPE_BF16, TIDE_DTYPE_Q8_0};
  const int64_t Ms[3] = {1, 5, 17};
  for (int trans = 0; trans <= 1; trans++)
    for (int di = 0; di < 3; di++)
      for (int mi = 0; mi < 3; mi++) {
        if (!trans && dts[di] == TIDE_DTYPE_Q8_0) continue; /* rows of 40 are not whole q8_0 blocks */
        char what[64];
        snprintf(what, sizeof what, "heads dt %d M %lld trans %d", dts[di], (long long)Ms[mi], trans);
        heads_case(pool, &rng, dts[di], 3, Ms[mi], 64, 40, trans, what);
      }
  tide_pool_free(pool);
}

/* Decode-sized head products spread whole heads over the pool's threads: shapes large enough that the
 * pool really wakes its threads (16 heads of 256 x 512 weights, MLA's absorbed W_uk at batch 1), out rows
 * packed (M = 1) and interleaved (M = 3, through per-head scratch), q8_0 weights both as (N, K) rows and as
 * stored (K, N) (trans_b = 0: their rows added up in their format), against the reference. */
static void test_grouped_heads_spread_threads(void **state) {
  (void)state;
  tu_rng_t rng = {13};
  tide_err_t err;
  const int32_t dts[2] = {TIDE_DTYPE_F32, TIDE_DTYPE_Q8_0};
  for (int th = 2; th <= 3; th++) {
    tide_pool_t *pool = NULL;
    assert_int_equal(tide_pool_new(th, &pool, &err), 0);
    for (int di = 0; di < 2; di++)
      for (int trans = 0; trans <= 1; trans++)
        for (int64_t M = 1; M <= 3; M += 2) {
          char what[80];
          snprintf(what, sizeof what, "spread heads dt %d M %lld trans %d threads %d", dts[di], (long long)M, trans, th);
          heads_case(pool, &rng, dts[di], 16, M, 512, 256, trans, what);
        }
    tide_pool_free(pool);
  }
}

static void test_grouped_heads_refuse_bad_shapes(void **state) {
  (void)state;
  tu_rng_t rng = {5};
  tide_err_t err;
  int64_t as[3] = {2, 3, 8}, bs[3] = {3, 4, 8}, os[3] = {2, 3, 4}, b2[2] = {4, 8};
  tide_tensor_t *a = tu_rand_tensor(&rng, 3, as, 1.0f), *b = tu_rand_tensor(&rng, 3, bs, 1.0f);
  tide_tensor_t *bad_b = tu_rand_tensor(&rng, 2, b2, 1.0f), *o = mk(3, os);
  /* a has 2 groups, b 3 */
  assert_int_not_equal(tide_op_matmul_heads(NULL, o, a, b, 1, &err), 0);
  assert_non_null(strstr(err.msg, "matmul_heads"));
  assert_int_not_equal(tide_op_matmul_heads(NULL, o, a, bad_b, 1, &err), 0);
  tide_tensor_t *ts[4] = {a, b, bad_b, o};
  for (int i = 0; i < 4; i++) tide_tensor_release(ts[i]);
}

static double silu(double x) { return x / (1.0 + exp(-x)); }

static void test_grouped_moe_experts_match_reference(void **state) {
  (void)state;
  tu_rng_t rng = {29};
  tide_err_t err;
  enum { E = 5, R = 9, DIM = 256, I = 256 }; /* big enough that 2+ threads are woken */
  /* expert 1 has no rows; with at most 4 rows per expert, pools of 2+
   * threads spread whole experts over threads, else each product is split */
  const int32_t offs[2][E + 1] = {{0, 2, 2, 5, 6, 9}, {0, 1, 1, 1, 8, 9}};
  const int32_t dts[2] = {TIDE_DTYPE_F32, TIDE_DTYPE_Q8_0};
  for (int case_ = 0; case_ < 4; case_++) {
    int32_t dt = dts[case_ % 2];
    const int32_t *off = offs[case_ / 2];
    int64_t xs[2] = {R, DIM}, gs[2] = {R, I}, wgs[2] = {I, DIM}, wds[2] = {DIM, I};
    tide_tensor_t *x = tu_rand_tensor(&rng, 2, xs, 1.0f);
    tide_tensor_t *w[3 * E] = {0};
    for (int e = 0; e < E; e++) {
      if (e == 1) continue; /* no rows, no weights */
      w[3 * e] = tu_rand_tensor_dtype(&rng, dt, 2, wgs, 0.3f);
      w[3 * e + 1] = tu_rand_tensor_dtype(&rng, dt, 2, wgs, 0.3f);
      w[3 * e + 2] = tu_rand_tensor_dtype(&rng, dt, 2, wds, 0.3f);
    }
    tide_tensor_t *yf = mk(2, xs), *yr = mk(2, xs), *g = mk(2, gs), *u = mk(2, gs);
    assert_int_equal(tide_ref_moe_experts(yr, x, g, u, off, E, (const tide_tensor_t *const *)w, &err), 0);
    if (dt == TIDE_DTYPE_F32) { /* the reference against the expert MLPs computed here */
      const float *xp = x->data, *yp = yr->data;
      double num = 0, den = 0;
      for (int e = 0; e < E; e++)
        for (int r = off[e]; r < off[e + 1]; r++) {
          const float *wg = w[3 * e]->data, *wu = w[3 * e + 1]->data, *wd = w[3 * e + 2]->data;
          double h[I];
          for (int i = 0; i < I; i++) {
            double sg = 0, su = 0;
            for (int k = 0; k < DIM; k++) {
              sg += (double)xp[r * DIM + k] * wg[i * DIM + k];
              su += (double)xp[r * DIM + k] * wu[i * DIM + k];
            }
            h[i] = silu(sg) * su;
          }
          for (int d = 0; d < DIM; d++) {
            double s = 0;
            for (int i = 0; i < I; i++) s += h[i] * wd[d * I + i];
            num += (s - yp[r * DIM + d]) * (s - yp[r * DIM + d]);
            den += s * s;
          }
        }
      assert_true(num / den < 1e-9);
    }
    for (int t = 1; t <= 3; t++) {
      tide_pool_t *pool = NULL;
      assert_int_equal(tide_pool_new(t, &pool, &err), 0);
      memset(yf->data, 0, R * DIM * sizeof(float));
      assert_int_equal(tide_op_moe_experts(pool, yf, x, g, u, off, E, (const tide_tensor_t *const *)w, &err), 0);
      check_close(yf, yr, dt == TIDE_DTYPE_Q8_0 ? 2e-3 : 1e-8, "moe_experts");
      tide_pool_free(pool);
    }
    for (int i = 0; i < 3 * E; i++) tide_tensor_release(w[i]);
    tide_tensor_t *ts[5] = {x, yf, yr, g, u};
    for (int i = 0; i < 5; i++) tide_tensor_release(ts[i]);
  }
}

static void test_grouped_moe_experts_refuse_bad_input(void **state) {
  (void)state;
  tu_rng_t rng = {3};
  tide_err_t err;
  int64_t xs[2] = {4, 8}, gs[2] = {4, 16}, wgs[2] = {16, 8}, wds[2] = {8, 16};
  tide_tensor_t *x = tu_rand_tensor(&rng, 2, xs, 1.0f), *y = mk(2, xs), *g = mk(2, gs), *u = mk(2, gs);
  tide_tensor_t *w[6] = {tu_rand_tensor(&rng, 2, wgs, 1.0f), tu_rand_tensor(&rng, 2, wgs, 1.0f),
                         tu_rand_tensor(&rng, 2, wds, 1.0f), NULL, NULL, NULL};
  const tide_tensor_t *const *wp = (const tide_tensor_t *const *)w;
  const int32_t decreasing[3] = {0, 3, 2}, short_end[3] = {0, 2, 3}, ok[3] = {0, 4, 4}, needs_w[3] = {0, 2, 4};
  assert_int_not_equal(tide_op_moe_experts(NULL, y, x, g, u, decreasing, 2, wp, &err), 0);
  assert_non_null(strstr(err.msg, "offsets"));
  assert_int_not_equal(tide_op_moe_experts(NULL, y, x, g, u, short_end, 2, wp, &err), 0);
  assert_int_not_equal(tide_op_moe_experts(NULL, y, x, g, u, needs_w, 2, wp, &err), 0);
  assert_non_null(strstr(err.msg, "expert 1"));
  assert_int_not_equal(tide_op_moe_experts(NULL, y, x, g, u, ok, 2, NULL, &err), 0);
  assert_int_not_equal(tide_op_moe_experts(NULL, y, x, g, x, ok, 2, wp, &err), 0); /* u of the wrong width */
  assert_int_equal(tide_op_moe_experts(NULL, y, x, g, u, ok, 2, wp, &err), 0);
  for (int i = 0; i < 3; i++) tide_tensor_release(w[i]);
  tide_tensor_t *ts[4] = {x, y, g, u};
  for (int i = 0; i < 4; i++) tide_tensor_release(ts[i]);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_grouped_heads_match_reference),
      cmocka_unit_test(test_grouped_heads_spread_threads), cmocka_unit_test(test_grouped_heads_refuse_bad_shapes),
      cmocka_unit_test(test_grouped_moe_experts_match_reference),
      cmocka_unit_test(test_grouped_moe_experts_refuse_bad_input),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
