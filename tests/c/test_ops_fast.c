/* Fast paths against the scalar references: random shapes with ragged edges,
 * strided and transposed inputs, every accepted input dtype, pools of 1..4
 * threads. Bounded by normalized MSE and max-abs difference. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kern.h"
#include "ops.h"

typedef struct {
  tide_pool_t *pool[5]; /* index = thread count; [0] is NULL (caller only) */
} pools_t;

static void pools_new(pools_t *p) {
  tide_err_t err;
  p->pool[0] = NULL;
  for (int i = 1; i <= 4; i++) assert_int_equal(tide_pool_new(i, &p->pool[i], &err), 0);
}

static void pools_free(pools_t *p) {
  for (int i = 1; i <= 4; i++) tide_pool_free(p->pool[i]);
}

static tide_tensor_t *mk(int32_t dt, int32_t ndim, const int64_t *shape) {
  tide_tensor_t *t = NULL;
  tide_err_t err;
  assert_int_equal(tide_tensor_new(dt, ndim, shape, &t, &err), 0);
  return t;
}

enum { L_CONTIG = 0, L_PADDED = 1, L_TRANSPOSED = 2 };

/* Random tensor of dtype and logical shape, laid out as asked:
 * L_PADDED: rows padded (a narrow of a wider tensor); L_TRANSPOSED (2-D):
 * a transposed view, so elements of a row are strided. */
static tide_tensor_t *rnd(tu_rng_t *r, int32_t dt, int32_t ndim, const int64_t *shape, int layout, float scale) {
  tide_err_t err;
  int64_t s[4];
  memcpy(s, shape, (size_t)ndim * 8);
  tide_tensor_t *base, *v;
  if (layout == L_TRANSPOSED && ndim == 2) {
    s[0] = shape[1];
    s[1] = shape[0];
    base = tu_rand_tensor_dtype(r, dt, 2, s, scale);
    assert_int_equal(tide_tensor_transpose(base, 0, 1, &v, &err), 0);
  } else if (layout == L_PADDED) {
    s[ndim - 1] += 3;
    base = tu_rand_tensor_dtype(r, dt, ndim, s, scale);
    assert_int_equal(tide_tensor_narrow(base, ndim - 1, 2, shape[ndim - 1], &v, &err), 0);
  } else {
    return tu_rand_tensor_dtype(r, dt, ndim, shape, scale);
  }
  tide_tensor_release(base);
  return v;
}

static void expect_close(const tide_tensor_t *fast, const tide_tensor_t *ref, double nmse_max, double abs_max,
                         const char *what) {
  double e = tu_nmse(fast, ref), m = tu_maxdiff(fast, ref);
  if (!(e <= nmse_max) || !(m <= abs_max)) {
    fprintf(stderr, "%s: nmse %.3g (max %.3g), maxdiff %.3g (max %.3g)\n", what, e, nmse_max, m, abs_max);
    fail();
  }
}

static const int32_t float_dts[3] = {TIDE_DTYPE_F32, TIDE_DTYPE_F16, TIDE_DTYPE_BF16};

/* ---- matmul ---- */

static void test_ops_fast_matmul(void **state) {
  (void)state;
  pools_t P;
  pools_new(&P);
  tu_rng_t rng = {7};
  tide_err_t err;
  const int64_t Ms[] = {1, 3, 4, 5, 9, 16, 33};
  const int64_t NK[][2] = {{1, 7}, {7, 33}, {65, 1}, {33, 257}, {257, 130}};
  int iter = 0;
  for (size_t mi = 0; mi < sizeof Ms / sizeof Ms[0]; mi++)
    for (size_t nk = 0; nk < sizeof NK / sizeof NK[0]; nk++)
      for (int adt = 0; adt < 3; adt++)
        for (int bdt = 0; bdt < 3; bdt++)
          for (int tb = 0; tb < 2; tb++) {
            int64_t M = Ms[mi], N = NK[nk][0], K = NK[nk][1];
            int la = (iter % 3 == 1) ? L_PADDED : L_CONTIG;
            int lb = iter % 4 == 2 ? L_TRANSPOSED : iter % 4 == 3 ? L_PADDED : L_CONTIG;
            int64_t sa[2] = {M, K}, sb[2] = {tb ? N : K, tb ? K : N}, so[2] = {M, N};
            tide_tensor_t *a = rnd(&rng, float_dts[adt], 2, sa, la, 1.0f);
            tide_tensor_t *b = rnd(&rng, float_dts[bdt], 2, sb, lb, 1.0f);
            tide_tensor_t *o = mk(TIDE_DTYPE_F32, 2, so), *r = mk(TIDE_DTYPE_F32, 2, so);
            assert_int_equal(tide_ref_matmul(r, a, b, tb, &err), 0);
            tide_pool_t *pool = P.pool[iter % 5];
            assert_int_equal(tide_op_matmul(pool, o, a, b, tb, &err), 0);
            char what[128];
            snprintf(what, sizeof what, "matmul M%lld N%lld K%lld a%d b%d tb%d la%d lb%d", (long long)M, (long long)N,
                     (long long)K, adt, bdt, tb, la, lb);
            expect_close(o, r, 1e-10, 1e-4, what);
            tide_tensor_release(a);
            tide_tensor_release(b);
            tide_tensor_release(o);
            tide_tensor_release(r);
            iter++;
          }
  pools_free(&P);
}

/* FP8 e4m3 weights with 128x128 block scales (partial edge blocks), decode and prefill sizes. */
static void test_ops_fast_matmul_fp8_scaled(void **state) {
  (void)state;
  pools_t P;
  pools_new(&P);
  tu_rng_t rng = {11};
  tide_err_t err;
  const int64_t Ms[] = {1, 2, 4, 9, 13};
  const int64_t NK[][2] = {{257, 300}, {130, 128}, {5, 129}};
  int iter = 0;
  for (size_t mi = 0; mi < 5; mi++)
    for (size_t nk = 0; nk < 3; nk++)
      for (int tb = 0; tb < 2; tb++) {
        int64_t M = Ms[mi], N = NK[nk][0], K = NK[nk][1];
        int64_t sa[2] = {M, K}, sb[2] = {tb ? N : K, tb ? K : N}, so[2] = {M, N};
        tide_tensor_t *a = rnd(&rng, float_dts[iter % 3], 2, sa, L_CONTIG, 1.0f);
        tide_tensor_t *b = tu_rand_tensor_dtype(&rng, TIDE_DTYPE_F8_E4M3, 2, sb, 2.0f);
        int64_t ss[2] = {(sb[0] + 127) / 128, (sb[1] + 127) / 128};
        tide_tensor_t *s = tu_rand_tensor(&rng, 2, ss, 1.0f);
        for (int64_t i = 0; i < ss[0] * ss[1]; i++) ((float *)s->data)[i] = 0.01f + fabsf(((float *)s->data)[i]);
        assert_int_equal(tide_tensor_set_scale(b, s, 128, 128, &err), 0);
        tide_tensor_t *o = mk(TIDE_DTYPE_F32, 2, so), *r = mk(TIDE_DTYPE_F32, 2, so);
        assert_int_equal(tide_ref_matmul(r, a, b, tb, &err), 0);
        assert_int_equal(tide_op_matmul(P.pool[1 + iter % 4], o, a, b, tb, &err), 0);
        char what[96];
        snprintf(what, sizeof what, "matmul fp8 M%lld N%lld K%lld tb%d", (long long)M, (long long)N, (long long)K, tb);
        expect_close(o, r, 1e-10, 1e-4, what);
        tide_tensor_release(a);
        tide_tensor_release(b);
        tide_tensor_release(s);
        tide_tensor_release(o);
        tide_tensor_release(r);
        iter++;
      }
  pools_free(&P);
}

/* ---- element-wise ---- */

static void test_ops_fast_elementwise(void **state) {
  (void)state;
  pools_t P;
  pools_new(&P);
  tu_rng_t rng = {3};
  tide_err_t err;
  const int64_t shapes[][2] = {{1, 1}, {7, 33}, {65, 257}, {3, 1030}, {257, 65}};
  int iter = 0;
  for (size_t si = 0; si < 5; si++)
    for (int dt = 0; dt < 3; dt++)
      for (int layout = 0; layout < 3; layout++) {
        int64_t *s = (int64_t *)shapes[si];
        tide_pool_t *pool = P.pool[iter++ % 5];
        tide_tensor_t *a = rnd(&rng, float_dts[dt], 2, s, layout, 4.0f);
        tide_tensor_t *b = rnd(&rng, float_dts[(dt + 1) % 3], 2, s, (layout + 1) % 3, 4.0f);
        int64_t sr[1] = {s[1]}, s1[1] = {1};
        tide_tensor_t *brow = rnd(&rng, float_dts[dt], 1, sr, L_CONTIG, 4.0f);
        tide_tensor_t *bsc = rnd(&rng, TIDE_DTYPE_F32, 1, s1, L_CONTIG, 4.0f);
        tide_tensor_t *o = mk(TIDE_DTYPE_F32, 2, s), *r = mk(TIDE_DTYPE_F32, 2, s);
        const tide_tensor_t *bs[3] = {b, brow, bsc};
        for (int k = 0; k < 3; k++) {
          assert_int_equal(tide_ref_add(r, a, bs[k], &err), 0);
          assert_int_equal(tide_op_add(pool, o, a, bs[k], &err), 0);
          expect_close(o, r, 0, 0, "add");
          assert_int_equal(tide_ref_mul(r, a, bs[k], &err), 0);
          assert_int_equal(tide_op_mul(pool, o, a, bs[k], &err), 0);
          expect_close(o, r, 0, 0, "mul");
        }
        assert_int_equal(tide_ref_scale(r, a, -0.37f, &err), 0);
        assert_int_equal(tide_op_scale(pool, o, a, -0.37f, &err), 0);
        expect_close(o, r, 0, 0, "scale");
        assert_int_equal(tide_ref_silu(r, a, &err), 0);
        assert_int_equal(tide_op_silu(pool, o, a, &err), 0);
        expect_close(o, r, 1e-12, 1e-5, "silu");
        assert_int_equal(tide_ref_sigmoid(r, a, &err), 0);
        assert_int_equal(tide_op_sigmoid(pool, o, a, &err), 0);
        expect_close(o, r, 1e-12, 1e-6, "sigmoid");
        assert_int_equal(tide_ref_swiglu(r, a, b, &err), 0);
        assert_int_equal(tide_op_swiglu(pool, o, a, b, &err), 0);
        expect_close(o, r, 1e-12, 1e-5, "swiglu");
        /* in place (out == a) on a contiguous f32 copy */
        tide_tensor_t *ip;
        assert_int_equal(tide_tensor_copy(a, TIDE_DTYPE_F32, &ip, &err), 0);
        assert_int_equal(tide_op_swiglu(pool, ip, ip, b, &err), 0);
        expect_close(ip, r, 1e-12, 1e-5, "swiglu in place");
        tide_tensor_release(ip);
        /* convert to each float dtype and back */
        for (int odt = 0; odt < 4; odt++) {
          int32_t dto = odt < 3 ? float_dts[odt] : TIDE_DTYPE_F8_E4M3;
          tide_tensor_t *co = mk(dto, 2, s), *cr = mk(dto, 2, s);
          assert_int_equal(tide_ref_convert(cr, a, &err), 0);
          assert_int_equal(tide_op_convert(pool, co, a, &err), 0);
          assert_memory_equal(co->data, cr->data, (size_t)tide_tensor_nbytes(co));
          tide_tensor_release(co);
          tide_tensor_release(cr);
        }
        tide_tensor_release(a);
        tide_tensor_release(b);
        tide_tensor_release(brow);
        tide_tensor_release(bsc);
        tide_tensor_release(o);
        tide_tensor_release(r);
      }
  pools_free(&P);
}

/* ---- rmsnorm, softmax ---- */

static void test_ops_fast_rmsnorm_softmax(void **state) {
  (void)state;
  pools_t P;
  pools_new(&P);
  tu_rng_t rng = {5};
  tide_err_t err;
  const int64_t shapes[][2] = {{1, 1}, {1, 7}, {33, 65}, {7, 257}, {65, 33}, {2, 3000}};
  int iter = 0;
  for (size_t si = 0; si < 6; si++)
    for (int dt = 0; dt < 3; dt++)
      for (int layout = 0; layout < 3; layout++) {
        int64_t *s = (int64_t *)shapes[si];
        tide_pool_t *pool = P.pool[iter++ % 5];
        tide_tensor_t *x = rnd(&rng, float_dts[dt], 2, s, layout, 3.0f);
        int64_t sw[1] = {s[1]};
        tide_tensor_t *w = rnd(&rng, float_dts[(dt + layout) % 3], 1, sw, L_CONTIG, 1.0f);
        tide_tensor_t *o = mk(TIDE_DTYPE_F32, 2, s), *r = mk(TIDE_DTYPE_F32, 2, s);
        assert_int_equal(tide_ref_rmsnorm(r, x, w, 1e-6f, &err), 0);
        assert_int_equal(tide_op_rmsnorm(pool, o, x, w, 1e-6f, &err), 0);
        expect_close(o, r, 1e-11, 1e-5, "rmsnorm");
        const float scales[3] = {1.0f, 0.125f, 30.0f};
        for (int k = 0; k < 3; k++) {
          assert_int_equal(tide_ref_softmax(r, x, scales[k], &err), 0);
          assert_int_equal(tide_op_softmax(pool, o, x, scales[k], &err), 0);
          expect_close(o, r, 1e-11, 1e-6, "softmax");
        }
        /* masked entries and a fully masked row, in place */
        tide_tensor_t *m;
        assert_int_equal(tide_tensor_copy(x, TIDE_DTYPE_F32, &m, &err), 0);
        float *md = m->data;
        for (int64_t i = 0; i < s[0] * s[1]; i += 3) md[i] = -INFINITY;
        for (int64_t j = 0; j < s[1]; j++) md[j] = -INFINITY;
        assert_int_equal(tide_ref_softmax(r, m, 1.0f, &err), 0);
        assert_int_equal(tide_op_softmax(pool, m, m, 1.0f, &err), 0);
        expect_close(m, r, 1e-11, 1e-6, "softmax masked");
        for (int64_t j = 0; j < s[1]; j++) assert_true(md[j] == 0.0f);
        tide_tensor_release(m);
        tide_tensor_release(x);
        tide_tensor_release(w);
        tide_tensor_release(o);
        tide_tensor_release(r);
      }
  pools_free(&P);
}

/* ---- rope ---- */

static void test_ops_fast_rope(void **state) {
  (void)state;
  pools_t P;
  pools_new(&P);
  tu_rng_t rng = {9};
  tide_err_t err;
  int iter = 0;
  for (int scaling = 0; scaling < 4; scaling++)
    for (int inter = 0; inter < 2; inter++)
      for (int strided = 0; strided < 2; strided++) {
        int64_t n_tok = 1 + iter % 3 * 16, n_head = 1 + iter % 4, hd = 96, dim = strided ? 64 : 32;
        tide_rope_t cfg = {.dim = (int32_t)dim, .interleaved = inter, .scaling = scaling, .orig_max_pos = 4096,
                           .theta = 10000.0f, .factor = 40.0f, .beta_fast = 32.0f, .beta_slow = 1.0f,
                           .low_freq_factor = 1.0f, .high_freq_factor = 4.0f, .attn_factor = 1.0f + 0.1f * scaling};
        int64_t s[3] = {n_tok, n_head, hd};
        tide_tensor_t *base = tu_rand_tensor(&rng, 3, s, 1.0f), *x1, *x2, *basecopy;
        assert_int_equal(tide_tensor_copy(base, TIDE_DTYPE_F32, &basecopy, &err), 0);
        if (strided) { /* MLA: rope on the last 64 dims of each head, a strided view */
          assert_int_equal(tide_tensor_narrow(base, 2, hd - dim, dim, &x1, &err), 0);
          assert_int_equal(tide_tensor_narrow(basecopy, 2, hd - dim, dim, &x2, &err), 0);
        } else {
          x1 = base;
          x2 = basecopy;
          tide_tensor_retain(x1);
          tide_tensor_retain(x2);
        }
        int64_t sp[1] = {n_tok};
        tide_tensor_t *pos = mk(TIDE_DTYPE_I32, 1, sp);
        for (int64_t t = 0; t < n_tok; t++) ((int32_t *)pos->data)[t] = (int32_t)tu_randint(&rng, 0, 5000);
        assert_int_equal(tide_ref_rope(x1, pos, &cfg, &err), 0);
        assert_int_equal(tide_op_rope(P.pool[iter % 5], x2, pos, &cfg, &err), 0);
        expect_close(basecopy, base, 0, 0, "rope"); /* same float32 operations: bit-exact */
        tide_tensor_release(x1);
        tide_tensor_release(x2);
        tide_tensor_release(base);
        tide_tensor_release(basecopy);
        tide_tensor_release(pos);
        iter++;
      }
  pools_free(&P);
}

/* ---- get_rows, scatter_add, topk ---- */

static void test_ops_fast_index(void **state) {
  (void)state;
  pools_t P;
  pools_new(&P);
  tu_rng_t rng = {13};
  tide_err_t err;
  int iter = 0;
  const int64_t dims[][2] = {{1, 1}, {33, 7}, {257, 65}, {100, 300}};
  for (size_t di = 0; di < 4; di++)
    for (int dt = 0; dt < 3; dt++) {
      int64_t V = dims[di][0], D = dims[di][1], n = 1 + iter * 5 % 40;
      tide_pool_t *pool = P.pool[iter++ % 5];
      int64_t st[2] = {V, D}, sn[1] = {n}, so[2] = {n, D};
      tide_tensor_t *t = rnd(&rng, float_dts[dt], 2, st, dt == 1 ? L_PADDED : L_CONTIG, 1.0f);
      tide_tensor_t *ids = mk(TIDE_DTYPE_I32, 1, sn);
      for (int64_t i = 0; i < n; i++) ((int32_t *)ids->data)[i] = (int32_t)tu_randint(&rng, 0, V - 1);
      tide_tensor_t *o = mk(TIDE_DTYPE_F32, 2, so), *r = mk(TIDE_DTYPE_F32, 2, so);
      assert_int_equal(tide_ref_get_rows(r, t, ids, &err), 0);
      assert_int_equal(tide_op_get_rows(pool, o, t, ids, &err), 0);
      expect_close(o, r, 0, 0, "get_rows");
      /* scatter_add of n rows (with repeats) into V rows: bit-exact */
      tide_tensor_t *src = rnd(&rng, float_dts[(dt + 1) % 3], 2, so, L_PADDED, 1.0f);
      tide_tensor_t *w = rnd(&rng, TIDE_DTYPE_F32, 1, sn, L_CONTIG, 1.0f);
      tide_tensor_t *acc1 = tu_rand_tensor(&rng, 2, st, 1.0f), *acc2;
      assert_int_equal(tide_tensor_copy(acc1, TIDE_DTYPE_F32, &acc2, &err), 0);
      assert_int_equal(tide_ref_scatter_add(acc1, src, ids, iter % 2 ? w : NULL, &err), 0);
      assert_int_equal(tide_op_scatter_add(pool, acc2, src, ids, iter % 2 ? w : NULL, &err), 0);
      expect_close(acc2, acc1, 0, 0, "scatter_add");
      /* topk with many ties (values on a coarse grid) */
      int64_t sx[2] = {n, V};
      tide_tensor_t *x = mk(TIDE_DTYPE_F32, 2, sx);
      for (int64_t i = 0; i < n * V; i++) ((float *)x->data)[i] = (float)tu_randint(&rng, -4, 4);
      if (V > 2) ((float *)x->data)[1] = NAN;
      int32_t k = (int32_t)(V < 8 ? V : 8);
      int64_t sk[2] = {n, k};
      tide_tensor_t *v1 = mk(TIDE_DTYPE_F32, 2, sk), *v2 = mk(TIDE_DTYPE_F32, 2, sk);
      tide_tensor_t *i1 = mk(TIDE_DTYPE_I32, 2, sk), *i2 = mk(TIDE_DTYPE_I32, 2, sk);
      assert_int_equal(tide_ref_topk(v1, i1, x, k, &err), 0);
      assert_int_equal(tide_op_topk(pool, v2, i2, x, k, &err), 0);
      assert_memory_equal(i1->data, i2->data, (size_t)(n * k) * 4);
      assert_memory_equal(v1->data, v2->data, (size_t)(n * k) * 4);
      for (int64_t i = 0; i < n; i++) /* descending, ties by lower index */
        for (int32_t j = 1; j < k; j++) {
          float a = ((float *)v1->data)[i * k + j - 1], b = ((float *)v1->data)[i * k + j];
          int32_t ia = ((int32_t *)i1->data)[i * k + j - 1], ib = ((int32_t *)i1->data)[i * k + j];
          assert_true(isnan(a) || a > b || (a == b && ia < ib));
        }
      tide_tensor_release(t);
      tide_tensor_release(ids);
      tide_tensor_release(o);
      tide_tensor_release(r);
      tide_tensor_release(src);
      tide_tensor_release(w);
      tide_tensor_release(acc1);
      tide_tensor_release(acc2);
      tide_tensor_release(x);
      tide_tensor_release(v1);
      tide_tensor_release(v2);
      tide_tensor_release(i1);
      tide_tensor_release(i2);
    }
  pools_free(&P);
}

/* ---- kv_store + attention ---- */

/* A random batch: n_seq sequences, each with a few new tokens at the end of
 * its context, blocks assigned by a random permutation of the cache. */
typedef struct {
  int32_t n_tok, n_seq, max_blocks, bs, n_blocks;
  int32_t seq[64], pos[64], table[8 * 16];
} rb_t;

static void random_batch(tu_rng_t *r, rb_t *b, int32_t bs) {
  b->bs = bs;
  b->n_seq = (int32_t)tu_randint(r, 1, 3);
  b->max_blocks = 16;
  int32_t perm[128];
  b->n_blocks = b->n_seq * b->max_blocks + 2;
  for (int32_t i = 0; i < b->n_blocks; i++) perm[i] = i;
  for (int32_t i = b->n_blocks - 1; i > 0; i--) {
    int32_t j = (int32_t)tu_randint(r, 0, i), t = perm[i];
    perm[i] = perm[j];
    perm[j] = t;
  }
  for (int32_t i = 0; i < b->n_seq * b->max_blocks; i++) b->table[i] = perm[i];
  b->n_tok = 0;
  for (int32_t s = 0; s < b->n_seq; s++) {
    int32_t ctx = (int32_t)tu_randint(r, 0, bs * 3 + 1), nnew = (int32_t)tu_randint(r, 1, 9);
    for (int32_t j = 0; j < nnew; j++) {
      b->seq[b->n_tok] = s;
      b->pos[b->n_tok] = ctx + j;
      b->n_tok++;
    }
  }
}

static void test_ops_fast_attention(void **state) {
  (void)state;
  pools_t P;
  pools_new(&P);
  tu_rng_t rng = {17};
  tide_err_t err;
  int iter = 0;
  for (int cdt = 0; cdt < 3; cdt++)
    for (int mla = 0; mla < 2; mla++)
      for (int rep = 0; rep < 3; rep++) {
        rb_t rb;
        random_batch(&rng, &rb, rep == 0 ? 1 : rep == 1 ? 4 : 16);
        int64_t n_kv = mla ? 1 : 1 + rep % 2, n_head = mla ? (rep == 2 ? 20 : 1 + rep) : n_kv * (1 + iter % 3), dk = mla ? 40 : 33, dv = mla ? 32 : 17;
        /* fill the whole cache with random rows: every (seq, pos <= max) slot then holds data */
        int64_t sk[4] = {rb.n_blocks, rb.bs, n_kv, dk}, sv[4] = {rb.n_blocks, rb.bs, n_kv, dv};
        tide_tensor_t *kc = tu_rand_tensor_dtype(&rng, float_dts[cdt], 4, sk, 1.0f), *vc;
        if (mla) /* v = the first dv columns of the latent rows */
          assert_int_equal(tide_tensor_narrow(kc, 3, 0, dv, &vc, &err), 0);
        else
          vc = tu_rand_tensor_dtype(&rng, float_dts[cdt], 4, sv, 1.0f);
        /* kv_store new rows for the batch tokens, fast and ref into copies: identical bytes */
        int64_t ss[3] = {rb.n_tok, n_kv, dk};
        tide_tensor_t *src = rnd(&rng, float_dts[(cdt + 1) % 3], 3, ss, iter % 2 ? L_PADDED : L_CONTIG, 1.0f);
        tide_batch_t b = {.n_tok = rb.n_tok, .n_seq = rb.n_seq, .max_blocks = rb.max_blocks, .block_size = rb.bs,
                          .tok_seq = rb.seq, .tok_pos = rb.pos, .block_table = rb.table};
        tide_tensor_t *kc2;
        assert_int_equal(tide_tensor_copy(kc, kc->dtype, &kc2, &err), 0);
        assert_int_equal(tide_ref_kv_store(kc, src, &b, &err), 0);
        assert_int_equal(tide_op_kv_store(P.pool[iter % 5], kc2, src, &b, &err), 0);
        assert_memory_equal(kc->data, kc2->data, (size_t)tide_tensor_nbytes(kc));
        /* attention, q strided (padded heads) */
        int64_t sq[3] = {rb.n_tok, n_head, dk}, so[3] = {rb.n_tok, n_head, dv};
        tide_tensor_t *q = rnd(&rng, float_dts[iter % 3], 3, sq, iter % 2 ? L_CONTIG : L_PADDED, 1.0f);
        tide_tensor_t *o = mk(TIDE_DTYPE_F32, 3, so), *r = mk(TIDE_DTYPE_F32, 3, so);
        float scale = 1.0f / sqrtf((float)dk);
        assert_int_equal(tide_ref_attention(r, q, kc, vc, &b, scale, &err), 0);
        for (int th = 1; th <= 4; th++) {
          assert_int_equal(tide_op_attention(P.pool[th], o, q, kc, vc, &b, scale, &err), 0);
          char what[128];
          snprintf(what, sizeof what, "attention cdt%d mla%d rep%d th%d", cdt, mla, rep, th);
          expect_close(o, r, 1e-10, 1e-5, what);
        }
        tide_tensor_release(kc);
        tide_tensor_release(kc2);
        tide_tensor_release(vc);
        tide_tensor_release(src);
        tide_tensor_release(q);
        tide_tensor_release(o);
        tide_tensor_release(r);
        iter++;
      }
  pools_free(&P);
}

/* Decode over long contexts with few (token, kv head) pairs: the fast op splits each pair's positions into
 * ranges and combines the partial softmax results (kernels/attention.c, combine_splits). MLA-shaped (one
 * latent kv head, V = the first dv columns of K) and GQA-shaped, 1..3 tokens at positions 120..700,
 * against the reference on 1..4 threads; one case masks nothing but holds a huge score range, so a range
 * whose max is far below another's must weigh almost nothing. */
static void test_ops_fast_attention_split_positions(void **state) {
  (void)state;
  pools_t P;
  pools_new(&P);
  tu_rng_t rng = {23};
  tide_err_t err;
  enum { BS = 16, MB = 48 };
  for (int c = 0; c < 6; c++) {
    int mla = c % 2 == 0;
    int32_t n_seq = 1 + c / 2, table[3 * MB], seq[3], pos[3];
    for (int32_t i = 0; i < n_seq * MB; i++) table[i] = (i * 7 + 3) % (n_seq * MB);
    for (int32_t s = 0; s < n_seq; s++) {
      seq[s] = s;
      pos[s] = (int32_t)tu_randint(&rng, 120, MB * BS - 64);
    }
    int64_t n_kv = mla ? 1 : 2, n_head = mla ? 16 : 8, dk = mla ? 72 : 32, dv = mla ? 64 : 32;
    int64_t sk[4] = {n_seq * MB, BS, n_kv, dk}, sv[4] = {n_seq * MB, BS, n_kv, dv};
    tide_tensor_t *kc = tu_rand_tensor_dtype(&rng, TIDE_DTYPE_F32, 4, sk, c == 4 ? 8.0f : 1.0f), *vc;
    if (mla)
      assert_int_equal(tide_tensor_narrow(kc, 3, 0, dv, &vc, &err), 0);
    else
      vc = tu_rand_tensor_dtype(&rng, TIDE_DTYPE_F32, 4, sv, 1.0f);
    tide_batch_t b = {.n_tok = n_seq, .n_seq = n_seq, .max_blocks = MB, .block_size = BS, .tok_seq = seq,
                      .tok_pos = pos, .block_table = table};
    int64_t sq[3] = {n_seq, n_head, dk}, so[3] = {n_seq, n_head, dv};
    tide_tensor_t *q = rnd(&rng, TIDE_DTYPE_F32, 3, sq, L_CONTIG, c == 4 ? 4.0f : 1.0f);
    tide_tensor_t *o = mk(TIDE_DTYPE_F32, 3, so), *r = mk(TIDE_DTYPE_F32, 3, so);
    float scale = 1.0f / sqrtf((float)dk);
    assert_int_equal(tide_ref_attention(r, q, kc, vc, &b, scale, &err), 0);
    for (int th = 1; th <= 4; th++) {
      assert_int_equal(tide_op_attention(P.pool[th], o, q, kc, vc, &b, scale, &err), 0);
      char what[128];
      snprintf(what, sizeof what, "split attention case %d th%d", c, th);
      expect_close(o, r, 1e-10, c == 4 ? 1e-4 : 1e-5, what); /* case 4: scores of ~+-100, f32 rounding in them */
    }
    tide_tensor_t *ts[5] = {kc, vc, q, o, r};
    for (int i = 0; i < 5; i++) tide_tensor_release(ts[i]);
  }
  pools_free(&P);
}

/* ---- vector primitives: AVX2 against the portable versions ---- */

static void test_ops_fast_vec_avx2_matches_portable(void **state) {
  (void)state;
  if (!tide_k_has_avx2()) skip();
  tu_rng_t rng = {23};
  const int64_t ns[] = {0, 1, 7, 8, 9, 31, 33, 64, 96, 128, 257, 1000}; /* multiples of 16: the AVX-512 f32 dotn / axpyn */
  float a[1000], b[1000], y1[1000], y2[1000];
  uint16_t h[1000], bf[1000];
  uint8_t f8[1000];
  for (size_t ni = 0; ni < sizeof ns / sizeof ns[0]; ni++) {
    int64_t n = ns[ni];
    for (int64_t i = 0; i < n; i++) {
      a[i] = tu_rand(&rng) * 10.0f;
      b[i] = tu_rand(&rng) * 3.0f;
      h[i] = tide_f32_to_f16(b[i]);
      bf[i] = tide_f32_to_bf16(b[i]);
      f8[i] = tide_f32_to_f8e4m3(b[i] * 100.0f);
    }
    const void *src[4] = {b, h, bf, f8};
    const int32_t dts[4] = {TIDE_DTYPE_F32, TIDE_DTYPE_F16, TIDE_DTYPE_BF16, TIDE_DTYPE_F8_E4M3};
    for (int d = 0; d < 4; d++) {
      double c = tide_vec_dot_c(a, src[d], dts[d], n), v = tide_vec_dot_avx2(a, src[d], dts[d], n);
      assert_true(fabs(c - v) <= 1e-5 * (1.0 + fabs(c)) * (1.0 + n / 64.0) * (d == 3 ? 100.0 : 1.0));
      tide_vec_to_f32_c(y1, src[d], dts[d], n);
      tide_vec_to_f32_avx2(y2, src[d], dts[d], n);
      assert_memory_equal(y1, y2, (size_t)n * 4);
      for (int64_t i = 0; i < n; i++) y1[i] = y2[i] = b[i];
      tide_vec_axpy_c(y1, 0.3f, src[d], dts[d], n);
      tide_vec_axpy_avx2(y2, 0.3f, src[d], dts[d], n);
      for (int64_t i = 0; i < n; i++) assert_true(fabsf(y1[i] - y2[i]) <= 1e-5f * (1.0f + fabsf(y1[i])));
      if (n >= 4) {
        const void *rows[4] = {src[d], src[d], src[d], src[d]};
        float out4[4];
        tide_vec_dot4_avx2(a, rows, dts[d], n, out4);
        for (int k = 0; k < 4; k++) assert_true(fabs(out4[k] - c) <= 1e-5 * (1.0 + fabs(c)) * (1.0 + n / 64.0) * (d == 3 ? 100.0 : 1.0));
      }
    }
    /* several rows at once: 11 query rows against one row in each dtype; f8 rows with segment scales */
    {
      static float q[11 * 1000], yy1[11 * 1000], yy2[11 * 1000];
      float o1[11], o2[11], sv[11];
      for (int64_t i = 0; i < 11 * n; i++) q[i] = tu_rand(&rng);
      for (int g = 0; g < 11; g++) sv[g] = tu_rand(&rng);
      for (int d = 0; d < 4; d++) {
        tide_vec_dotn_c(q, n, 11, src[d], dts[d], n, o1);
        tide_vec_dotn_avx2(q, n, 11, src[d], dts[d], n, o2);
        for (int g = 0; g < 11; g++) assert_true(fabsf(o1[g] - o2[g]) <= 1e-4f * (1.0f + fabsf(o1[g])) * (d == 3 ? 100 : 1));
        for (int64_t i = 0; i < 11 * n; i++) yy1[i] = yy2[i] = q[i];
        tide_vec_axpyn_c(yy1, n, sv, 11, src[d], dts[d], n);
        tide_vec_axpyn_avx2(yy2, n, sv, 11, src[d], dts[d], n);
        for (int64_t i = 0; i < 11 * n; i++) assert_true(fabsf(yy1[i] - yy2[i]) <= 1e-5f * (1.0f + fabsf(yy1[i])) * (d == 3 ? 100 : 1));
      }
      for (int d = 0; d < 4; d++) { /* 2 rows of b x 11 rows of q (4 + 4 + 3) */
        int64_t half = n / 2;
        const char *b0 = src[d], *b1 = (const char *)src[d] + half / 2 * (d == 0 ? 4 : d == 3 ? 1 : 2);
        float t1[22], t2[22];
        tide_vec_tile2_c(q, n, 11, b0, b1, dts[d], half, t1, 2);
        tide_vec_tile2_avx2(q, n, 11, b0, b1, dts[d], half, t2, 2);
        for (int g = 0; g < 22; g++) assert_true(fabsf(t1[g] - t2[g]) <= 1e-4f * (1.0f + fabsf(t1[g])) * (d == 3 ? 100 : 1));
      }
      const uint8_t *rows[4] = {f8, f8 + n / 4, f8 + n / 3, f8 + n / 2};
      const float *srow[4] = {sv, sv + 1, sv + 2, sv + 3};
      int64_t len = n - n / 2, seg = 1 + n / 7;
      if (len > 0 && (len + seg - 1) / seg <= 8) {
        tide_vec_dot_f8s4_c(a, rows, srow, len, seg, o1);
        tide_vec_dot_f8s4_avx2(a, rows, srow, len, seg, o2);
        for (int r = 0; r < 4; r++) assert_true(fabsf(o1[r] - o2[r]) <= 1e-4f * (1.0f + fabsf(o1[r])) * 100);
      }
    }
    tide_vec_silu_c(y1, a, n);
    tide_vec_silu_avx2(y2, a, n);
    for (int64_t i = 0; i < n; i++) assert_true(fabsf(y1[i] - y2[i]) <= 2e-6f * (1.0f + fabsf(y1[i])));
    tide_vec_sigmoid_c(y1, a, n);
    tide_vec_sigmoid_avx2(y2, a, n);
    for (int64_t i = 0; i < n; i++) assert_true(fabsf(y1[i] - y2[i]) <= 2e-7f);
    float m1 = tide_vec_max_c(a, n), m2 = tide_vec_max_avx2(a, n);
    assert_true(m1 == m2);
    float s1 = tide_vec_exp_sum_c(y1, a, 0.5f, 5.0f, n), s2 = tide_vec_exp_sum_avx2(y2, a, 0.5f, 5.0f, n);
    assert_true(fabsf(s1 - s2) <= 1e-5f * (1.0f + s1));
    for (int64_t i = 0; i < n; i++) assert_true(fabsf(y1[i] - y2[i]) <= 3e-7f * y1[i] + 1e-38f);
    double q1 = tide_vec_sumsq_c(a, n), q2 = tide_vec_sumsq_avx2(a, n);
    assert_true(fabs(q1 - q2) <= 1e-13 * (1.0 + q1)); /* double sums of the same f32 squares */
    if (n > 0) assert_true((float)(q1 / (double)n) == (float)(q2 / (double)n)); /* the mean RMSNorm uses: same float */
  }
  /* exp at the edges: -inf gives 0, large negative gives 0, 0 gives 1 */
  float e[8] = {-INFINITY, -100.0f, -87.0f, 0.0f, 1.0f, -1.0f, 80.0f, 10.0f}, o[8];
  tide_vec_exp_sum_avx2(o, e, 1.0f, 0.0f, 8);
  assert_true(o[0] == 0.0f && o[1] == 0.0f && o[3] == 1.0f);
  for (int i = 2; i < 8; i++) assert_true(fabs(o[i] - exp((double)e[i])) <= 3e-7 * exp((double)e[i]));
}

/* Sizes above the threshold where the ops hand work to the pool (see
 * TIDE_K_MIN_PARALLEL in kernels/kern.h), at 2..4 threads. */
static void test_ops_fast_threaded_sizes(void **state) {
  (void)state;
  pools_t P;
  pools_new(&P);
  tu_rng_t rng = {29};
  tide_err_t err;
  for (int th = 2; th <= 4; th++) {
    tide_pool_t *pool = P.pool[th];
    { /* element-wise, rmsnorm, softmax over (400, 1030) */
      int64_t s[2] = {400, 1030}, sw[1] = {1030};
      tide_tensor_t *a = rnd(&rng, TIDE_DTYPE_BF16, 2, s, L_PADDED, 3.0f), *b = rnd(&rng, TIDE_DTYPE_F32, 2, s, L_CONTIG, 3.0f);
      tide_tensor_t *w = rnd(&rng, TIDE_DTYPE_F32, 1, sw, L_CONTIG, 1.0f);
      tide_tensor_t *o = mk(TIDE_DTYPE_F32, 2, s), *r = mk(TIDE_DTYPE_F32, 2, s);
      assert_int_equal(tide_ref_add(r, a, b, &err), 0);
      assert_int_equal(tide_op_add(pool, o, a, b, &err), 0);
      expect_close(o, r, 0, 0, "threaded add");
      assert_int_equal(tide_ref_swiglu(r, a, b, &err), 0);
      assert_int_equal(tide_op_swiglu(pool, o, a, b, &err), 0);
      expect_close(o, r, 1e-12, 1e-5, "threaded swiglu");
      assert_int_equal(tide_ref_rmsnorm(r, a, w, 1e-6f, &err), 0);
      assert_int_equal(tide_op_rmsnorm(pool, o, a, w, 1e-6f, &err), 0);
      expect_close(o, r, 1e-12, 1e-5, "threaded rmsnorm");
      assert_int_equal(tide_ref_softmax(r, a, 0.5f, &err), 0);
      assert_int_equal(tide_op_softmax(pool, o, a, 0.5f, &err), 0);
      expect_close(o, r, 1e-12, 1e-6, "threaded softmax");
      tide_tensor_release(a);
      tide_tensor_release(b);
      tide_tensor_release(w);
      tide_tensor_release(o);
      tide_tensor_release(r);
    }
    { /* matmul: prefill panels (bf16), f32 in place, decode rows (bf16, fp8 with scales) */
      const int64_t cases[][4] = {{64, 300, 257, TIDE_DTYPE_BF16}, {64, 300, 257, TIDE_DTYPE_F32},
                                  {2, 1000, 300, TIDE_DTYPE_BF16}, {1, 1000, 300, TIDE_DTYPE_F8_E4M3}};
      for (int ci = 0; ci < 4; ci++) {
        int64_t M = cases[ci][0], N = cases[ci][1], K = cases[ci][2];
        int64_t sa[2] = {M, K}, sb[2] = {N, K}, so[2] = {M, N};
        tide_tensor_t *a = rnd(&rng, TIDE_DTYPE_F32, 2, sa, L_CONTIG, 1.0f);
        tide_tensor_t *b = tu_rand_tensor_dtype(&rng, (int32_t)cases[ci][3], 2, sb, 1.0f), *sc = NULL;
        if (cases[ci][3] == TIDE_DTYPE_F8_E4M3) {
          int64_t ss[2] = {(N + 127) / 128, (K + 127) / 128};
          sc = tu_rand_tensor(&rng, 2, ss, 1.0f);
          assert_int_equal(tide_tensor_set_scale(b, sc, 128, 128, &err), 0);
        }
        tide_tensor_t *o = mk(TIDE_DTYPE_F32, 2, so), *r = mk(TIDE_DTYPE_F32, 2, so);
        assert_int_equal(tide_ref_matmul(r, a, b, 1, &err), 0);
        assert_int_equal(tide_op_matmul(pool, o, a, b, 1, &err), 0);
        expect_close(o, r, 1e-10, 1e-4, "threaded matmul");
        tide_tensor_release(a);
        tide_tensor_release(b);
        if (sc) tide_tensor_release(sc);
        tide_tensor_release(o);
        tide_tensor_release(r);
      }
    }
    { /* rope (64 tokens, 16 heads), get_rows/scatter_add (256 x 1024), topk (64 x 1000) */
      int64_t sx[3] = {64, 16, 64}, sp[1] = {64};
      tide_tensor_t *x1 = tu_rand_tensor(&rng, 3, sx, 1.0f), *x2, *pos = mk(TIDE_DTYPE_I32, 1, sp);
      assert_int_equal(tide_tensor_copy(x1, TIDE_DTYPE_F32, &x2, &err), 0);
      for (int i = 0; i < 64; i++) ((int32_t *)pos->data)[i] = (int32_t)tu_randint(&rng, 0, 3000);
      tide_rope_t cfg = {.dim = 64, .interleaved = th % 2, .scaling = TIDE_ROPE_YARN, .orig_max_pos = 4096,
                         .theta = 10000.0f, .factor = 40.0f, .beta_fast = 32.0f, .beta_slow = 1.0f,
                         .attn_factor = 1.2f};
      assert_int_equal(tide_ref_rope(x1, pos, &cfg, &err), 0);
      assert_int_equal(tide_op_rope(pool, x2, pos, &cfg, &err), 0);
      expect_close(x2, x1, 0, 0, "threaded rope");
      int64_t st[2] = {300, 1024}, sn[1] = {256}, so[2] = {256, 1024};
      tide_tensor_t *t = rnd(&rng, TIDE_DTYPE_BF16, 2, st, L_CONTIG, 1.0f), *ids = mk(TIDE_DTYPE_I32, 1, sn);
      for (int i = 0; i < 256; i++) ((int32_t *)ids->data)[i] = (int32_t)tu_randint(&rng, 0, 299);
      tide_tensor_t *o = mk(TIDE_DTYPE_F32, 2, so), *r = mk(TIDE_DTYPE_F32, 2, so);
      assert_int_equal(tide_ref_get_rows(r, t, ids, &err), 0);
      assert_int_equal(tide_op_get_rows(pool, o, t, ids, &err), 0);
      expect_close(o, r, 0, 0, "threaded get_rows");
      tide_tensor_t *acc1 = mk(TIDE_DTYPE_F32, 2, st), *acc2 = mk(TIDE_DTYPE_F32, 2, st);
      assert_int_equal(tide_ref_scatter_add(acc1, o, ids, NULL, &err), 0);
      assert_int_equal(tide_op_scatter_add(pool, acc2, o, ids, NULL, &err), 0);
      expect_close(acc2, acc1, 0, 0, "threaded scatter_add");
      int64_t sxk[2] = {64, 1000}, sk[2] = {64, 6};
      tide_tensor_t *xk = mk(TIDE_DTYPE_F32, 2, sxk);
      for (int64_t i = 0; i < 64000; i++) ((float *)xk->data)[i] = (float)tu_randint(&rng, 0, 50);
      tide_tensor_t *v1 = mk(TIDE_DTYPE_F32, 2, sk), *v2 = mk(TIDE_DTYPE_F32, 2, sk);
      tide_tensor_t *i1 = mk(TIDE_DTYPE_I32, 2, sk), *i2 = mk(TIDE_DTYPE_I32, 2, sk);
      assert_int_equal(tide_ref_topk(v1, i1, xk, 6, &err), 0);
      assert_int_equal(tide_op_topk(pool, v2, i2, xk, 6, &err), 0);
      assert_memory_equal(i1->data, i2->data, 64 * 6 * 4);
      tide_tensor_release(x1);
      tide_tensor_release(x2);
      tide_tensor_release(pos);
      tide_tensor_release(t);
      tide_tensor_release(ids);
      tide_tensor_release(o);
      tide_tensor_release(r);
      tide_tensor_release(acc1);
      tide_tensor_release(acc2);
      tide_tensor_release(xk);
      tide_tensor_release(v1);
      tide_tensor_release(v2);
      tide_tensor_release(i1);
      tide_tensor_release(i2);
    }
    { /* kv_store of a 300-token prefill (2 kv heads x 256) and attention of 64 tokens at positions 100..163 */
      int32_t bs = 16, mb = 20, seq[300], pos[300], table[20];
      for (int i = 0; i < mb; i++) table[i] = (i * 7 + 3) % mb;
      for (int i = 0; i < 300; i++) {
        seq[i] = 0;
        pos[i] = i;
      }
      int64_t sc[4] = {mb, bs, 2, 256}, ss[3] = {300, 2, 256};
      tide_tensor_t *c1 = mk(TIDE_DTYPE_F16, 4, sc), *c2 = mk(TIDE_DTYPE_F16, 4, sc);
      tide_tensor_t *src = rnd(&rng, TIDE_DTYPE_F32, 3, ss, L_CONTIG, 1.0f);
      tide_batch_t b = {.n_tok = 300, .n_seq = 1, .max_blocks = mb, .block_size = bs, .tok_seq = seq, .tok_pos = pos,
                        .block_table = table};
      assert_int_equal(tide_ref_kv_store(c1, src, &b, &err), 0);
      assert_int_equal(tide_op_kv_store(pool, c2, src, &b, &err), 0);
      assert_memory_equal(c1->data, c2->data, (size_t)tide_tensor_nbytes(c1));
      tide_tensor_t *kc, *vc; /* k: the first 64 columns, v: the next 64 */
      assert_int_equal(tide_tensor_narrow(c1, 3, 0, 64, &kc, &err), 0);
      assert_int_equal(tide_tensor_narrow(c1, 3, 64, 64, &vc, &err), 0);
      int64_t sq[3] = {64, 4, 64};
      tide_tensor_t *q = rnd(&rng, TIDE_DTYPE_F32, 3, sq, L_CONTIG, 1.0f);
      tide_tensor_t *o = mk(TIDE_DTYPE_F32, 3, sq), *r = mk(TIDE_DTYPE_F32, 3, sq);
      b.n_tok = 64;
      b.tok_pos = pos + 100;
      assert_int_equal(tide_ref_attention(r, q, kc, vc, &b, 0.125f, &err), 0);
      assert_int_equal(tide_op_attention(pool, o, q, kc, vc, &b, 0.125f, &err), 0);
      expect_close(o, r, 1e-10, 1e-5, "threaded attention");
      tide_tensor_release(c1);
      tide_tensor_release(c2);
      tide_tensor_release(src);
      tide_tensor_release(kc);
      tide_tensor_release(vc);
      tide_tensor_release(q);
      tide_tensor_release(o);
      tide_tensor_release(r);
    }
  }
  pools_free(&P);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_ops_fast_matmul),
      cmocka_unit_test(test_ops_fast_matmul_fp8_scaled),
      cmocka_unit_test(test_ops_fast_elementwise),
      cmocka_unit_test(test_ops_fast_rmsnorm_softmax),
      cmocka_unit_test(test_ops_fast_rope),
      cmocka_unit_test(test_ops_fast_index),
      cmocka_unit_test(test_ops_fast_attention), cmocka_unit_test(test_ops_fast_attention_split_positions),
      cmocka_unit_test(test_ops_fast_vec_avx2_matches_portable),
      cmocka_unit_test(test_ops_fast_threaded_sizes),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
