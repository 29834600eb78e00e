/* Tests of the op references on small cases computed independently here
 * (by hand or in double precision from the formulas), and of the error paths
 * of both the references and the fast ops. Fast-vs-reference comparisons are
 * in test_ops_fast.c. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"

static tide_tensor_t *mk(int32_t dt, int32_t ndim, const int64_t *shape) {
  tide_tensor_t *t = NULL;
  tide_err_t err;
  assert_int_equal(tide_tensor_new(dt, ndim, shape, &t, &err), 0);
  return t;
}

static tide_tensor_t *mkf(int32_t ndim, const int64_t *shape, const float *v) {
  tide_tensor_t *t = mk(TIDE_DTYPE_F32, ndim, shape);
  memcpy(t->data, v, (size_t)tide_tensor_numel(t) * 4);
  return t;
}

static tide_tensor_t *mki(int64_t n, const int32_t *v) {
  int64_t s[1] = {n};
  tide_tensor_t *t = mk(TIDE_DTYPE_I32, 1, s);
  memcpy(t->data, v, (size_t)n * 4);
  return t;
}

static float at(const tide_tensor_t *t, int64_t i) { return ((const float *)t->data)[i]; }

static void test_ops_matmul_ref_by_hand(void **state) {
  (void)state;
  tide_err_t err;
  int64_t sa[2] = {2, 3}, sb[2] = {3, 2}, sbt[2] = {2, 3}, so[2] = {2, 2};
  float av[6] = {1, 2, 3, 4, 5, 6};
  float bv[6] = {7, 8, 9, 10, 11, 12};   /* (3, 2) */
  float btv[6] = {7, 9, 11, 8, 10, 12};  /* the same, stored (2, 3) */
  tide_tensor_t *a = mkf(2, sa, av), *b = mkf(2, sb, bv), *bt = mkf(2, sbt, btv), *o = mk(TIDE_DTYPE_F32, 2, so);
  /* [1 2 3; 4 5 6] @ [7 8; 9 10; 11 12] = [58 64; 139 154] */
  const float want[4] = {58, 64, 139, 154};
  assert_int_equal(tide_ref_matmul(o, a, b, 0, &err), 0);
  for (int i = 0; i < 4; i++) assert_true(at(o, i) == want[i]);
  memset(o->data, 0, 16);
  assert_int_equal(tide_ref_matmul(o, a, bt, 1, &err), 0);
  for (int i = 0; i < 4; i++) assert_true(at(o, i) == want[i]);
  memset(o->data, 0, 16);
  assert_int_equal(tide_op_matmul(NULL, o, a, bt, 1, &err), 0);
  for (int i = 0; i < 4; i++) assert_true(at(o, i) == want[i]);
  memset(o->data, 0, 16);
  assert_int_equal(tide_op_matmul(NULL, o, a, b, 0, &err), 0);
  for (int i = 0; i < 4; i++) assert_true(at(o, i) == want[i]);
  tide_tensor_release(a);
  tide_tensor_release(b);
  tide_tensor_release(bt);
  tide_tensor_release(o);
}

static void test_ops_matmul_fp8_block_scales_by_hand(void **state) {
  (void)state;
  tide_err_t err;
  /* b (2, 4) in f8 with 1x2 scale blocks: row 0 scales (2, 0.5), row 1 (1, -1) */
  int64_t sb[2] = {2, 4}, ss[2] = {2, 2}, sa[2] = {1, 4}, so[2] = {1, 2};
  tide_tensor_t *b = mk(TIDE_DTYPE_F8_E4M3, 2, sb), *s = mk(TIDE_DTYPE_F32, 2, ss);
  const float bvals[8] = {1, 2, 0.5f, -1, 3, 0.25f, 1.5f, 4}; /* all exact in e4m3 */
  for (int i = 0; i < 8; i++) ((uint8_t *)b->data)[i] = tide_f32_to_f8e4m3(bvals[i]);
  const float sv[4] = {2, 0.5f, 1, -1};
  memcpy(s->data, sv, 16);
  assert_int_equal(tide_tensor_set_scale(b, s, 1, 2, &err), 0);
  const float av[4] = {1, -2, 3, 0.5f};
  tide_tensor_t *a = mkf(2, sa, av), *o = mk(TIDE_DTYPE_F32, 2, so);
  double w0 = (1 * 1 + -2 * 2) * 2.0 + (3 * 0.5 + 0.5 * -1) * 0.5;
  double w1 = (1 * 3 + -2 * 0.25) * 1.0 + (3 * 1.5 + 0.5 * 4) * -1.0;
  assert_int_equal(tide_ref_matmul(o, a, b, 1, &err), 0);
  assert_true(fabs(at(o, 0) - w0) < 1e-6 && fabs(at(o, 1) - w1) < 1e-6);
  memset(o->data, 0, 8);
  assert_int_equal(tide_op_matmul(NULL, o, a, b, 1, &err), 0);
  assert_true(fabs(at(o, 0) - w0) < 1e-6 && fabs(at(o, 1) - w1) < 1e-6);
  tide_tensor_release(a);
  tide_tensor_release(b);
  tide_tensor_release(s);
  tide_tensor_release(o);
}

static void test_ops_elementwise_ref_by_hand(void **state) {
  (void)state;
  tide_err_t err;
  int64_t s23[2] = {2, 3}, s3[1] = {3}, s1[1] = {1};
  const float av[6] = {1, -2, 3, 0, 5, -6}, rv[3] = {10, 20, 30}, one[1] = {0.5f};
  tide_tensor_t *a = mkf(2, s23, av), *r = mkf(1, s3, rv), *sc = mkf(1, s1, one), *o = mk(TIDE_DTYPE_F32, 2, s23);
  assert_int_equal(tide_ref_add(o, a, r, &err), 0); /* row broadcast */
  for (int i = 0; i < 6; i++) assert_true(at(o, i) == av[i] + rv[i % 3]);
  assert_int_equal(tide_ref_mul(o, a, sc, &err), 0); /* scalar */
  for (int i = 0; i < 6; i++) assert_true(at(o, i) == av[i] * 0.5f);
  assert_int_equal(tide_ref_mul(o, a, a, &err), 0); /* full */
  for (int i = 0; i < 6; i++) assert_true(at(o, i) == av[i] * av[i]);
  assert_int_equal(tide_ref_scale(o, a, -3.0f, &err), 0);
  for (int i = 0; i < 6; i++) assert_true(at(o, i) == av[i] * -3.0f);
  assert_int_equal(tide_ref_sigmoid(o, a, &err), 0);
  for (int i = 0; i < 6; i++) assert_true(fabs(at(o, i) - 1.0 / (1.0 + exp(-(double)av[i]))) < 1e-6);
  assert_int_equal(tide_ref_silu(o, a, &err), 0);
  for (int i = 0; i < 6; i++) assert_true(fabs(at(o, i) - av[i] / (1.0 + exp(-(double)av[i]))) < 1e-6);
  assert_true(at(o, 3) == 0.0f);
  assert_int_equal(tide_ref_swiglu(o, a, a, &err), 0);
  for (int i = 0; i < 6; i++) assert_true(fabs(at(o, i) - av[i] * av[i] / (1.0 + exp(-(double)av[i]))) < 1e-5);
  /* in place: out == a */
  assert_int_equal(tide_op_add(NULL, a, a, r, &err), 0);
  for (int i = 0; i < 6; i++) assert_true(at(a, i) == av[i] + rv[i % 3]);
  tide_tensor_release(a);
  tide_tensor_release(r);
  tide_tensor_release(sc);
  tide_tensor_release(o);
}

static void test_ops_convert_ref_roundtrip(void **state) {
  (void)state;
  tide_err_t err;
  int64_t s[2] = {2, 3};
  const float v[6] = {1.5f, -2.25f, 0.1f, 65504.0f, -0.0f, 3.0f};
  tide_tensor_t *x = mkf(2, s, v), *h = mk(TIDE_DTYPE_F16, 2, s), *b = mk(TIDE_DTYPE_BF16, 2, s),
                *o = mk(TIDE_DTYPE_F32, 2, s);
  assert_int_equal(tide_ref_convert(h, x, &err), 0);
  for (int i = 0; i < 6; i++) assert_int_equal(((uint16_t *)h->data)[i], tide_f32_to_f16(v[i]));
  assert_int_equal(tide_op_convert(NULL, b, x, &err), 0);
  for (int i = 0; i < 6; i++) assert_int_equal(((uint16_t *)b->data)[i], tide_f32_to_bf16(v[i]));
  assert_int_equal(tide_ref_convert(o, h, &err), 0);
  for (int i = 0; i < 6; i++) assert_true(at(o, i) == tide_f16_to_f32(tide_f32_to_f16(v[i])));
  tide_tensor_release(x);
  tide_tensor_release(h);
  tide_tensor_release(b);
  tide_tensor_release(o);
}

static void test_ops_rmsnorm_ref_known_vector(void **state) {
  (void)state;
  tide_err_t err;
  int64_t s[2] = {1, 4}, sw[1] = {4};
  const float xv[4] = {1, 2, 3, 4}, wv[4] = {1, 1, 2, 0.5f};
  tide_tensor_t *x = mkf(2, s, xv), *w = mkf(1, sw, wv), *o = mk(TIDE_DTYPE_F32, 2, s);
  double eps = 1e-5, rms = sqrt((1 + 4 + 9 + 16) / 4.0 + eps);
  assert_int_equal(tide_ref_rmsnorm(o, x, w, (float)eps, &err), 0);
  for (int i = 0; i < 4; i++) assert_true(fabs(at(o, i) - xv[i] / rms * wv[i]) < 1e-6);
  tide_tensor_release(x);
  tide_tensor_release(w);
  tide_tensor_release(o);
}

static void test_ops_softmax_ref_rows(void **state) {
  (void)state;
  tide_err_t err;
  int64_t s[2] = {3, 3};
  const float xv[9] = {0, logf(2.0f), -INFINITY, /* -> 1/3, 2/3, 0 */
                       -INFINITY, -INFINITY, -INFINITY, /* -> zeros, not NaN */
                       1000, 999, -5};
  tide_tensor_t *x = mkf(2, s, xv), *o = mk(TIDE_DTYPE_F32, 2, s);
  for (int fast = 0; fast < 2; fast++) {
    assert_int_equal(fast ? tide_op_softmax(NULL, o, x, 1.0f, &err) : tide_ref_softmax(o, x, 1.0f, &err), 0);
    assert_true(fabs(at(o, 0) - 1.0 / 3) < 1e-6 && fabs(at(o, 1) - 2.0 / 3) < 1e-6 && at(o, 2) == 0.0f);
    for (int i = 3; i < 6; i++) assert_true(at(o, i) == 0.0f);
    double sum = at(o, 6) + at(o, 7) + at(o, 8);
    assert_true(fabs(sum - 1.0) < 1e-6);
    assert_true(fabs(at(o, 6) - 1.0 / (1.0 + exp(-1.0) + exp(-1005.0))) < 1e-6);
  }
  /* scale multiplies before the max */
  assert_int_equal(tide_ref_softmax(o, x, 0.5f, &err), 0);
  assert_true(fabs(at(o, 0) - 1.0 / (1.0 + sqrt(2.0))) < 1e-6);
  tide_tensor_release(x);
  tide_tensor_release(o);
}

static void test_ops_topk_ref_order_and_ties(void **state) {
  (void)state;
  tide_err_t err;
  int64_t s[2] = {2, 6}, sk[2] = {2, 4};
  const float xv[12] = {3, 1, 3, 7, -2, 3, /* 7@3, then the 3s by index: 0, 2, 5 */
                        0, 0, 0, 0, 0, 0};
  tide_tensor_t *x = mkf(2, s, xv), *v = mk(TIDE_DTYPE_F32, 2, sk), *ix = mk(TIDE_DTYPE_I32, 2, sk);
  const int32_t wi[8] = {3, 0, 2, 5, 0, 1, 2, 3};
  const float wv[8] = {7, 3, 3, 3, 0, 0, 0, 0};
  for (int fast = 0; fast < 2; fast++) {
    assert_int_equal(fast ? tide_op_topk(NULL, v, ix, x, 4, &err) : tide_ref_topk(v, ix, x, 4, &err), 0);
    for (int i = 0; i < 8; i++) {
      assert_int_equal(((int32_t *)ix->data)[i], wi[i]);
      assert_true(at(v, i) == wv[i]);
    }
  }
  tide_tensor_release(x);
  tide_tensor_release(v);
  tide_tensor_release(ix);
}

static void test_ops_get_rows_and_scatter_add_by_hand(void **state) {
  (void)state;
  tide_err_t err;
  int64_t st[2] = {3, 2}, so[2] = {3, 2};
  const float tv[6] = {1, 2, 3, 4, 5, 6};
  const int32_t ids[3] = {2, 0, 2};
  tide_tensor_t *t = mkf(2, st, tv), *id = mki(3, ids), *o = mk(TIDE_DTYPE_F32, 2, so);
  assert_int_equal(tide_ref_get_rows(o, t, id, &err), 0);
  const float want[6] = {5, 6, 1, 2, 5, 6};
  for (int i = 0; i < 6; i++) assert_true(at(o, i) == want[i]);
  /* out[idx[i]] += w[i] * src[i]: rows 2 and 0 */
  int64_t sw[1] = {3};
  const float wv[3] = {2, -1, 0.5f};
  tide_tensor_t *w = mkf(1, sw, wv), *acc = mk(TIDE_DTYPE_F32, 2, so);
  for (int fast = 0; fast < 2; fast++) {
    memset(acc->data, 0, 24);
    assert_int_equal(fast ? tide_op_scatter_add(NULL, acc, t, id, w, &err) : tide_ref_scatter_add(acc, t, id, w, &err), 0);
    /* row 2 = 2*(1,2) + 0.5*(5,6); row 0 = -1*(3,4); row 1 untouched */
    const float wa[6] = {-3, -4, 0, 0, 2 + 2.5f, 4 + 3};
    for (int i = 0; i < 6; i++) assert_true(at(acc, i) == wa[i]);
  }
  memset(acc->data, 0, 24);
  assert_int_equal(tide_ref_scatter_add(acc, t, id, NULL, &err), 0); /* w NULL: weight 1 */
  assert_true(at(acc, 4) == 1 + 5 && at(acc, 0) == 3);
  tide_tensor_release(t);
  tide_tensor_release(id);
  tide_tensor_release(o);
  tide_tensor_release(w);
  tide_tensor_release(acc);
}

/* ---- rope ---- */

static tide_rope_t rope_cfg(int32_t dim, int32_t interleaved, int32_t scaling) {
  tide_rope_t c = {.dim = dim, .interleaved = interleaved, .scaling = scaling, .orig_max_pos = 4096, .theta = 10000.0f,
                   .factor = 8.0f, .beta_fast = 32.0f, .beta_slow = 1.0f, .low_freq_factor = 1.0f,
                   .high_freq_factor = 4.0f, .attn_factor = 1.0f};
  return c;
}

static void test_ops_rope_rotates_unit_vector(void **state) {
  (void)state;
  tide_err_t err;
  for (int inter = 0; inter < 2; inter++)
    for (int fast = 0; fast < 2; fast++) {
      /* head_dim 6, rope on the first 4 dims; pair 0 has inv_freq 1 */
      tide_rope_t cfg = rope_cfg(4, inter, TIDE_ROPE_NONE);
      cfg.attn_factor = 2.0f;
      int64_t s[3] = {1, 2, 6};
      tide_tensor_t *x = mk(TIDE_DTYPE_F32, 3, s);
      float *d = x->data;
      d[0] = 1.0f;  /* head 0: e0 */
      d[6 + 5] = 7; /* head 1: beyond dim, untouched */
      int32_t p = 3;
      tide_tensor_t *pos = mki(1, &p);
      assert_int_equal(fast ? tide_op_rope(NULL, x, pos, &cfg, &err) : tide_ref_rope(x, pos, &cfg, &err), 0);
      int partner = inter ? 1 : 2; /* (2i, 2i+1) or (i, i + dim/2) */
      assert_true(fabs(d[0] - 2.0 * cos(3.0)) < 1e-6);
      assert_true(fabs(d[partner] - 2.0 * sin(3.0)) < 1e-6);
      for (int i = 1; i < 6; i++)
        if (i != partner) assert_true(d[i] == 0.0f);
      assert_true(d[11] == 7.0f);
      tide_tensor_release(x);
      tide_tensor_release(pos);
    }
}

static void test_ops_rope_inv_freq_matches_formulas(void **state) {
  (void)state;
  tide_err_t err;
  const int dim = 64;
  float inv[32];
  double theta = 10000.0;
  /* plain */
  tide_rope_t cfg = rope_cfg(dim, 0, TIDE_ROPE_NONE);
  assert_int_equal(tide_rope_inv_freq(&cfg, inv, &err), 0);
  for (int i = 0; i < dim / 2; i++) {
    double w = 1.0 / pow(theta, 2.0 * i / dim);
    assert_true(fabs(inv[i] - w) <= 2e-6 * w);
  }
  /* linear */
  cfg.scaling = TIDE_ROPE_LINEAR;
  assert_int_equal(tide_rope_inv_freq(&cfg, inv, &err), 0);
  for (int i = 0; i < dim / 2; i++) {
    double w = 1.0 / pow(theta, 2.0 * i / dim) / 8.0;
    assert_true(fabs(inv[i] - w) <= 2e-6 * w);
  }
  /* llama3: factor 8, low 1, high 4, original 4096 (theta 500000 like Llama 3.1) */
  cfg = rope_cfg(dim, 0, TIDE_ROPE_LLAMA3);
  cfg.theta = 500000.0f;
  cfg.orig_max_pos = 8192;
  assert_int_equal(tide_rope_inv_freq(&cfg, inv, &err), 0);
  int seen_mid = 0;
  for (int i = 0; i < dim / 2; i++) {
    double base = 1.0 / pow(500000.0, 2.0 * i / dim), wl = 2 * M_PI / base, w;
    if (wl > 8192.0 / 1.0) {
      w = base / 8.0;
    } else if (wl < 8192.0 / 4.0) {
      w = base;
    } else {
      double sm = (8192.0 / wl - 1.0) / (4.0 - 1.0);
      w = (1 - sm) * base / 8.0 + sm * base;
      seen_mid++;
    }
    assert_true(fabs(inv[i] - w) <= 1e-5 * w);
  }
  assert_true(seen_mid > 0);
  /* yarn, DeepSeek-V3's settings: factor 40, beta 32/1, original 4096 */
  cfg = rope_cfg(dim, 1, TIDE_ROPE_YARN);
  cfg.factor = 40.0f;
  assert_int_equal(tide_rope_inv_freq(&cfg, inv, &err), 0);
  double cd_fast = dim * log(4096.0 / (32.0 * 2 * M_PI)) / (2 * log(theta));
  double cd_slow = dim * log(4096.0 / (1.0 * 2 * M_PI)) / (2 * log(theta));
  double lo = fmax(floor(cd_fast), 0), hi = fmin(ceil(cd_slow), dim - 1);
  if (lo == hi) hi += 0.001;
  int seen_blend = 0;
  for (int i = 0; i < dim / 2; i++) {
    double pf = pow(theta, 2.0 * i / dim);
    double ramp = fmin(fmax((i - lo) / (hi - lo), 0.0), 1.0);
    double ef = 1.0 - ramp;
    double w = (1.0 / (40.0 * pf)) * (1.0 - ef) + (1.0 / pf) * ef;
    if (ef > 0 && ef < 1) seen_blend++;
    assert_true(fabs(inv[i] - w) <= 1e-5 * w);
  }
  assert_true(seen_blend > 0);
  /* bad configs */
  cfg.dim = 5;
  assert_int_equal(tide_rope_inv_freq(&cfg, inv, &err), TIDE_EINVAL);
  cfg = rope_cfg(dim, 0, TIDE_ROPE_YARN);
  cfg.factor = 0;
  assert_int_equal(tide_rope_inv_freq(&cfg, inv, &err), TIDE_EINVAL);
  cfg = rope_cfg(dim, 0, 9);
  assert_int_equal(tide_rope_inv_freq(&cfg, inv, &err), TIDE_EINVAL);
}

/* ---- attention ---- */

/* Dense K/V (n_pos, n_kv, d) in double, written into a paged cache whose
 * physical blocks are a permutation; attention computed here in double. */
static void test_ops_attention_paged_gqa_matches_direct(void **state) {
  (void)state;
  tide_err_t err;
  tu_rng_t rng = {42};
  const int n_head = 4, n_kv = 2, dk = 5, dv = 3, bs = 4, n_pos = 11, n_blocks = 6, max_blocks = 3;
  float K[11][2][5], V[11][2][3];
  for (int p = 0; p < n_pos; p++)
    for (int h = 0; h < n_kv; h++) {
      for (int c = 0; c < dk; c++) K[p][h][c] = tu_rand(&rng);
      for (int c = 0; c < dv; c++) V[p][h][c] = tu_rand(&rng);
    }
  const int32_t table_contig[3] = {0, 1, 2}, table_shuf[3] = {4, 1, 5};
  for (int shuffled = 0; shuffled < 2; shuffled++) {
    const int32_t *table = shuffled ? table_shuf : table_contig;
    int64_t sc[4] = {n_blocks, bs, n_kv, dk}, svc[4] = {n_blocks, bs, n_kv, dv};
    tide_tensor_t *kc = mk(TIDE_DTYPE_F32, 4, sc), *vc = mk(TIDE_DTYPE_F32, 4, svc);
    for (int p = 0; p < n_pos; p++)
      for (int h = 0; h < n_kv; h++) {
        int64_t blk = table[p / bs], row = p % bs;
        memcpy((float *)kc->data + ((blk * bs + row) * n_kv + h) * dk, K[p][h], sizeof K[p][h]);
        memcpy((float *)vc->data + ((blk * bs + row) * n_kv + h) * dv, V[p][h], sizeof V[p][h]);
      }
    /* two tokens of one sequence at positions 10 and 3 */
    int32_t tok_seq[2] = {0, 0}, tok_pos[2] = {10, 3};
    tide_batch_t b = {.n_tok = 2, .n_seq = 1, .max_blocks = max_blocks, .block_size = bs, .tok_seq = tok_seq,
                      .tok_pos = tok_pos, .block_table = table};
    int64_t sq[3] = {2, n_head, dk}, so[3] = {2, n_head, dv};
    tide_tensor_t *q = mk(TIDE_DTYPE_F32, 3, sq), *o = mk(TIDE_DTYPE_F32, 3, so);
    for (int i = 0; i < 2 * n_head * dk; i++) ((float *)q->data)[i] = tu_rand(&rng);
    float scale = 0.7f;
    for (int fast = 0; fast < 2; fast++) {
      memset(o->data, 0xff, (size_t)(2 * n_head * dv) * 4);
      assert_int_equal(fast ? tide_op_attention(NULL, o, q, kc, vc, &b, scale, &err)
                            : tide_ref_attention(o, q, kc, vc, &b, scale, &err),
                       0);
      for (int t = 0; t < 2; t++)
        for (int h = 0; h < n_head; h++) {
          int kvh = h / (n_head / n_kv);
          const float *qr = (const float *)q->data + (t * n_head + h) * dk;
          double s[11], m = -1e300, sum = 0;
          for (int p = 0; p <= tok_pos[t]; p++) {
            s[p] = 0;
            for (int c = 0; c < dk; c++) s[p] += (double)qr[c] * K[p][kvh][c];
            s[p] *= scale;
            m = fmax(m, s[p]);
          }
          for (int p = 0; p <= tok_pos[t]; p++) sum += exp(s[p] - m);
          for (int c = 0; c < dv; c++) {
            double want = 0;
            for (int p = 0; p <= tok_pos[t]; p++) want += exp(s[p] - m) / sum * V[p][kvh][c];
            assert_true(fabs(at(o, (t * n_head + h) * dv + c) - want) < 1e-5);
          }
        }
    }
    tide_tensor_release(kc);
    tide_tensor_release(vc);
    tide_tensor_release(q);
    tide_tensor_release(o);
  }
}

static void test_ops_kv_store_writes_slots(void **state) {
  (void)state;
  tide_err_t err;
  int64_t sc[4] = {3, 2, 1, 4}, ss[3] = {3, 1, 4};
  tide_tensor_t *c = mk(TIDE_DTYPE_BF16, 4, sc);
  const float sv[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
  tide_tensor_t *src = mkf(3, ss, sv);
  int32_t seq[3] = {0, 0, 1}, pos[3] = {0, 3, 1}, table[4] = {2, 0, 1, 1}; /* 2 seqs x 2 blocks */
  tide_batch_t b = {.n_tok = 3, .n_seq = 2, .max_blocks = 2, .block_size = 2, .tok_seq = seq, .tok_pos = pos,
                    .block_table = table};
  for (int fast = 0; fast < 2; fast++) {
    memset(c->data, 0, (size_t)tide_tensor_nbytes(c));
    assert_int_equal(fast ? tide_op_kv_store(NULL, c, src, &b, &err) : tide_ref_kv_store(c, src, &b, &err), 0);
    const uint16_t *d = c->data;
    /* token 0 -> block 2 row 0; token 1 (pos 3) -> block 0 row 1; token 2 (seq 1 pos 1) -> block 1 row 1 */
    const int64_t slot[3] = {2 * 2 + 0, 0 * 2 + 1, 1 * 2 + 1};
    for (int t = 0; t < 3; t++)
      for (int j = 0; j < 4; j++) assert_true(tide_bf16_to_f32(d[slot[t] * 4 + j]) == sv[t * 4 + j]);
    assert_true(d[0] == 0); /* block 0 row 0 untouched */
  }
  tide_tensor_release(c);
  tide_tensor_release(src);
}

/* ---- error paths ---- */

static void test_ops_errors_shapes_and_dtypes(void **state) {
  (void)state;
  tide_err_t err;
  int64_t s23[2] = {2, 3}, s32[2] = {3, 2}, s22[2] = {2, 2}, s24[2] = {2, 4};
  tide_tensor_t *a = mk(TIDE_DTYPE_F32, 2, s23), *b = mk(TIDE_DTYPE_F32, 2, s32), *o = mk(TIDE_DTYPE_F32, 2, s22);
  tide_tensor_t *ai = mk(TIDE_DTYPE_I32, 2, s23), *o24 = mk(TIDE_DTYPE_F32, 2, s24), *oh = mk(TIDE_DTYPE_F16, 2, s22);
  /* trans_b = 1 wants b (N, K) = (2, 3) */
  assert_int_equal(tide_op_matmul(NULL, o, a, b, 1, &err), TIDE_ESHAPE);
  assert_int_equal(tide_ref_matmul(o, a, b, 1, &err), TIDE_ESHAPE);
  assert_non_null(strstr(err.msg, "matmul"));
  assert_int_equal(tide_op_matmul(NULL, o24, a, b, 0, &err), TIDE_ESHAPE);
  assert_int_equal(tide_op_matmul(NULL, o, ai, b, 0, &err), TIDE_EDTYPE);
  assert_int_equal(tide_op_matmul(NULL, oh, a, b, 0, &err), TIDE_EDTYPE);
  assert_int_equal(tide_op_matmul(NULL, o, a, b, 2, &err), TIDE_EINVAL);
  assert_int_equal(tide_op_matmul(NULL, o, a, NULL, 0, &err), TIDE_EINVAL);
  /* non-contiguous out */
  tide_tensor_t *big = mk(TIDE_DTYPE_F32, 2, s24), *view;
  assert_int_equal(tide_tensor_narrow(big, 1, 0, 2, &view, &err), 0);
  assert_int_equal(tide_op_matmul(NULL, view, a, b, 0, &err), TIDE_EINVAL);
  /* element-wise: b that does not broadcast */
  assert_int_equal(tide_op_add(NULL, a, a, o, &err), TIDE_ESHAPE);
  assert_int_equal(tide_ref_mul(a, a, o, &err), TIDE_ESHAPE);
  assert_int_equal(tide_op_silu(NULL, o, a, &err), TIDE_ESHAPE);
  assert_int_equal(tide_op_swiglu(NULL, a, a, b, &err), TIDE_ESHAPE);
  assert_int_equal(tide_op_convert(NULL, ai, a, &err), 0); /* f32 -> i32 has a conversion */
  assert_int_equal(tide_op_sigmoid(NULL, a, ai, &err), TIDE_EDTYPE);
  /* rmsnorm weight of the wrong length; softmax out of the wrong shape */
  assert_int_equal(tide_op_rmsnorm(NULL, a, a, o, 1e-6f, &err), TIDE_ESHAPE);
  assert_int_equal(tide_ref_softmax(o, a, 1.0f, &err), TIDE_ESHAPE);
  /* topk k > N */
  int64_t sk[2] = {2, 4};
  tide_tensor_t *v = mk(TIDE_DTYPE_F32, 2, sk), *ix = mk(TIDE_DTYPE_I32, 2, sk);
  assert_int_equal(tide_op_topk(NULL, v, ix, a, 4, &err), TIDE_EINVAL);
  assert_int_equal(tide_ref_topk(v, ix, a, 0, &err), TIDE_EINVAL);
  /* rope: odd dim, dim beyond head_dim, i32 x */
  tide_rope_t cfg = rope_cfg(3, 0, TIDE_ROPE_NONE);
  int32_t pp[2] = {0, 1};
  tide_tensor_t *pos = mki(2, pp);
  assert_int_equal(tide_op_rope(NULL, a, pos, &cfg, &err), TIDE_EINVAL);
  cfg.dim = 4;
  assert_int_equal(tide_ref_rope(a, pos, &cfg, &err), TIDE_EINVAL);
  cfg.dim = 2;
  assert_int_equal(tide_op_rope(NULL, ai, pos, &cfg, &err), TIDE_EDTYPE);
  assert_int_equal(tide_op_rope(NULL, a, a, &cfg, &err), TIDE_EDTYPE);
  tide_tensor_release(a);
  tide_tensor_release(b);
  tide_tensor_release(o);
  tide_tensor_release(ai);
  tide_tensor_release(o24);
  tide_tensor_release(oh);
  tide_tensor_release(big);
  tide_tensor_release(view);
  tide_tensor_release(v);
  tide_tensor_release(ix);
  tide_tensor_release(pos);
}

static void test_ops_errors_indices_out_of_range(void **state) {
  (void)state;
  tide_err_t err;
  int64_t st[2] = {5, 2}, so[2] = {2, 2};
  tide_tensor_t *t = mk(TIDE_DTYPE_BF16, 2, st), *o = mk(TIDE_DTYPE_F32, 2, so);
  int32_t bad[2] = {1, 12345};
  tide_tensor_t *ids = mki(2, bad);
  assert_int_equal(tide_op_get_rows(NULL, o, t, ids, &err), TIDE_ERANGE);
  assert_non_null(strstr(err.msg, "12345"));
  assert_int_equal(tide_ref_get_rows(o, t, ids, &err), TIDE_ERANGE);
  assert_non_null(strstr(err.msg, "12345"));
  bad[1] = -1;
  memcpy(ids->data, bad, 8);
  assert_int_equal(tide_op_get_rows(NULL, o, t, ids, &err), TIDE_ERANGE);
  assert_non_null(strstr(err.msg, "-1"));
  /* scatter_add: idx beyond out rows */
  tide_tensor_t *src = mk(TIDE_DTYPE_F32, 2, so);
  int32_t ix[2] = {0, 2};
  tide_tensor_t *idx = mki(2, ix);
  assert_int_equal(tide_op_scatter_add(NULL, o, src, idx, NULL, &err), TIDE_ERANGE);
  assert_int_equal(tide_ref_scatter_add(o, src, idx, NULL, &err), TIDE_ERANGE);
  tide_tensor_release(t);
  tide_tensor_release(o);
  tide_tensor_release(ids);
  tide_tensor_release(src);
  tide_tensor_release(idx);
}

static void test_ops_errors_attention_batch(void **state) {
  (void)state;
  tide_err_t err;
  int64_t sc[4] = {2, 4, 1, 8}, sq[3] = {1, 2, 8}, so[3] = {1, 2, 8}, ss[3] = {1, 1, 8};
  tide_tensor_t *kc = mk(TIDE_DTYPE_F32, 4, sc), *q = mk(TIDE_DTYPE_F32, 3, sq), *o = mk(TIDE_DTYPE_F32, 3, so);
  tide_tensor_t *src = mk(TIDE_DTYPE_F32, 3, ss);
  int32_t seq = 0, pos = 5, table[2] = {1, 0};
  tide_batch_t b = {.n_tok = 1, .n_seq = 1, .max_blocks = 2, .block_size = 4, .tok_seq = &seq, .tok_pos = &pos,
                    .block_table = table};
  assert_int_equal(tide_op_attention(NULL, o, q, kc, kc, &b, 1.0f, &err), 0);
  assert_int_equal(tide_op_kv_store(NULL, kc, src, &b, &err), 0);
  for (int fast = 0; fast < 2; fast++) {
#define ATT() (fast ? tide_op_attention(NULL, o, q, kc, kc, &b, 1.0f, &err) : tide_ref_attention(o, q, kc, kc, &b, 1.0f, &err))
#define KVS() (fast ? tide_op_kv_store(NULL, kc, src, &b, &err) : tide_ref_kv_store(kc, src, &b, &err))
    table[0] = 2; /* block id out of range (for a block the token reads, not the one it writes) */
    assert_int_equal(ATT(), TIDE_ERANGE);
    assert_non_null(strstr(err.msg, "block"));
    table[0] = -1;
    assert_int_equal(ATT(), TIDE_ERANGE);
    table[0] = 1;
    table[1] = 7; /* the block of the token's own slot */
    assert_int_equal(ATT(), TIDE_ERANGE);
    assert_int_equal(KVS(), TIDE_ERANGE);
    table[1] = 0;
    pos = 8; /* 8 / 4 = logical block 2 >= max_blocks */
    assert_int_equal(ATT(), TIDE_ERANGE);
    assert_int_equal(KVS(), TIDE_ERANGE);
    pos = -1;
    assert_int_equal(ATT(), TIDE_ERANGE);
    assert_int_equal(KVS(), TIDE_ERANGE);
    pos = 5;
    seq = 1; /* n_seq is 1 */
    assert_int_equal(ATT(), TIDE_ERANGE);
    assert_int_equal(KVS(), TIDE_ERANGE);
    seq = 0;
    b.block_size = 2; /* disagrees with the cache */
    assert_int_equal(ATT(), TIDE_ESHAPE);
    b.block_size = 4;
    b.n_tok = 2; /* disagrees with q */
    assert_int_equal(ATT(), TIDE_ESHAPE);
    assert_int_equal(KVS(), TIDE_ESHAPE);
    b.n_tok = 1;
    assert_int_equal(ATT(), 0);
#undef ATT
#undef KVS
  }
  /* n_head not a multiple of n_kv_head */
  int64_t sc3[4] = {2, 4, 3, 8};
  tide_tensor_t *kc3 = mk(TIDE_DTYPE_F32, 4, sc3);
  assert_int_equal(tide_op_attention(NULL, o, q, kc3, kc3, &b, 1.0f, &err), TIDE_ESHAPE);
  assert_int_equal(tide_op_attention(NULL, o, q, kc, kc, NULL, 1.0f, &err), TIDE_EINVAL);
  tide_tensor_release(kc);
  tide_tensor_release(kc3);
  tide_tensor_release(q);
  tide_tensor_release(o);
  tide_tensor_release(src);
}

static void test_ops_empty_shapes(void **state) {
  (void)state;
  tide_err_t err;
  /* K = 0: out is all zeros; M = 0: nothing to do */
  int64_t sa[2] = {2, 0}, sb[2] = {3, 0}, so[2] = {2, 3}, s0[2] = {0, 3}, sa0[2] = {0, 4}, sb4[2] = {3, 4};
  tide_tensor_t *a = mk(TIDE_DTYPE_F32, 2, sa), *b = mk(TIDE_DTYPE_BF16, 2, sb), *o = mk(TIDE_DTYPE_F32, 2, so);
  for (int i = 0; i < 6; i++) ((float *)o->data)[i] = 5.0f;
  assert_int_equal(tide_op_matmul(NULL, o, a, b, 1, &err), 0);
  for (int i = 0; i < 6; i++) assert_true(at(o, i) == 0.0f);
  for (int i = 0; i < 6; i++) ((float *)o->data)[i] = 5.0f;
  assert_int_equal(tide_ref_matmul(o, a, b, 1, &err), 0);
  for (int i = 0; i < 6; i++) assert_true(at(o, i) == 0.0f);
  tide_tensor_t *a0 = mk(TIDE_DTYPE_F32, 2, sa0), *b4 = mk(TIDE_DTYPE_F32, 2, sb4), *o0 = mk(TIDE_DTYPE_F32, 2, s0);
  assert_int_equal(tide_op_matmul(NULL, o0, a0, b4, 1, &err), 0);
  assert_int_equal(tide_op_softmax(NULL, o0, o0, 1.0f, &err), 0);
  assert_int_equal(tide_op_silu(NULL, o0, o0, &err), 0);
  int64_t sw[1] = {3};
  tide_tensor_t *w = mk(TIDE_DTYPE_F32, 1, sw);
  assert_int_equal(tide_op_rmsnorm(NULL, o0, o0, w, 1e-6f, &err), 0);
  int64_t sn[1] = {0};
  tide_tensor_t *ids = mk(TIDE_DTYPE_I32, 1, sn);
  int64_t sg[2] = {0, 4};
  tide_tensor_t *g0 = mk(TIDE_DTYPE_F32, 2, sg);
  assert_int_equal(tide_op_get_rows(NULL, g0, b4, ids, &err), 0);
  tide_tensor_release(g0);
  tide_tensor_release(a);
  tide_tensor_release(b);
  tide_tensor_release(o);
  tide_tensor_release(a0);
  tide_tensor_release(b4);
  tide_tensor_release(o0);
  tide_tensor_release(w);
  tide_tensor_release(ids);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_ops_matmul_ref_by_hand),
      cmocka_unit_test(test_ops_matmul_fp8_block_scales_by_hand),
      cmocka_unit_test(test_ops_elementwise_ref_by_hand),
      cmocka_unit_test(test_ops_convert_ref_roundtrip),
      cmocka_unit_test(test_ops_rmsnorm_ref_known_vector),
      cmocka_unit_test(test_ops_softmax_ref_rows),
      cmocka_unit_test(test_ops_topk_ref_order_and_ties),
      cmocka_unit_test(test_ops_get_rows_and_scatter_add_by_hand),
      cmocka_unit_test(test_ops_rope_rotates_unit_vector),
      cmocka_unit_test(test_ops_rope_inv_freq_matches_formulas),
      cmocka_unit_test(test_ops_attention_paged_gqa_matches_direct),
      cmocka_unit_test(test_ops_kv_store_writes_slots),
      cmocka_unit_test(test_ops_errors_shapes_and_dtypes),
      cmocka_unit_test(test_ops_errors_indices_out_of_range),
      cmocka_unit_test(test_ops_errors_attention_batch),
      cmocka_unit_test(test_ops_empty_shapes),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
