/* ggml_order.c: ops computed with llama.cpp's CPU arithmetic, operation for
 * operation (numerics = "ggml").
 *
 * Tide's own kernels compute the same sums in another order. On tiny random
 * models that difference alone flips near-tied greedy tokens: a matmul's
 * inputs are rounded to 8-bit blocks, so a 1e-7 change in one activation can
 * move a block value by one step. This file reproduces, in portable scalar C,
 * the order and rounding in which the x86 AVX2/AVX-512 build of ggml's CPU
 * backend (as shipped in node-llama-cpp's prebuilt llama.cpp) evaluates each
 * op, so that Tide and llama.cpp produce the same bits on the same GGUF. It
 * was derived by comparing tensors dumped from llama.cpp against candidate
 * formulas, element by element:
 *
 *  - q8_0 x q8_0 dots: 8 float lanes, lane k holding the int sum of values
 *    4k..4k+3 of each block; per block lane += (dx * dy) * sum with one fused
 *    multiply-add; lanes reduced as ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)).
 *  - f32 dots of n values (attention): 4 accumulators of 16 lanes over
 *    blocks of 64 (fused multiply-adds), accumulators folded 0+=2, 1+=3,
 *    0+=1, the 16 lanes reduced pairwise (8+8, 4+4, {0,1}+{2,3}, 0+1), then
 *    the n % 64 remaining products added one by one (multiply, then add).
 *    Matrix products of 2 or more rows whose length is a multiple of 16 take
 *    one 16-lane accumulator over the whole row instead (the attention's
 *    probabilities times V during prefill).
 *  - exp (softmax, SiLU): a range reduction x = n ln2 + b and a degree-5
 *    polynomial in b, both with fused multiply-adds, scaled by 2^n; n
 *    beyond +-192 saturates to 0 or inf. Softmax sums 16 exps at a time
 *    (reduced as above) into a double, and multiplies by (float)(1 / sum).
 *  - RoPE: theta starts at the position and is multiplied by base^(-2/d) per
 *    pair, in float; YaRN mixes s theta and theta with one fused
 *    multiply-add and multiplies cos and sin by its attention factor;
 *    cosf/sinf; x0 c - x1 s and x0 s + x1 c each with one fused
 *    multiply-add.
 * Every op here has the plain reference of the same name without _ggml in
 * kernels/ref_*.c as its oracle (tests/c/test_ggml_order.c), and
 * tests/fixtures/ggml_order holds tensors dumped from llama.cpp that these
 * ops reproduce bit for bit. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "kern.h"
#include "quant.h"

/* ---- reductions ---- */

static float red8(const float *l) { return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7])); }

static float red16(const float *x) {
  float a[8], b[4];
  for (int i = 0; i < 8; i++) a[i] = x[8 + i] + x[i];
  for (int i = 0; i < 4; i++) b[i] = a[4 + i] + a[i];
  return (b[0] + b[2]) + (b[1] + b[3]);
}

/* volatile keeps the compiler from fusing a * b + c into one rounding */
static float mul_add(float a, float b, float c) {
  volatile float p = a * b;
  return c + p;
}

float tide_ggml_dot_f32(const float *x, const float *y, int64_t n) {
  float acc[4][16];
  memset(acc, 0, sizeof acc);
  int64_t np = n & ~(int64_t)63;
  for (int64_t i = 0; i < np; i += 64)
    for (int j = 0; j < 4; j++)
      for (int l = 0; l < 16; l++) acc[j][l] = fmaf(x[i + 16 * j + l], y[i + 16 * j + l], acc[j][l]);
  for (int l = 0; l < 16; l++) {
    acc[0][l] += acc[2][l];
    acc[1][l] += acc[3][l];
  }
  for (int l = 0; l < 16; l++) acc[0][l] += acc[1][l];
  float s = red16(acc[0]);
  for (int64_t i = np; i < n; i++) s = mul_add(x[i], y[i], s);
  return s;
}

/* the 16-lane tile product (n a multiple of 16) */
float tide_ggml_dot_f32_tile(const float *x, const float *y, int64_t n) {
  float acc[16] = { 0 };
  for (int64_t i = 0; i < n; i += 16)
    for (int l = 0; l < 16; l++) acc[l] = fmaf(x[i + l], y[i + l], acc[l]);
  return red16(acc);
}

float tide_ggml_expf(float x) {
  const float r = 0x1.8p23f;
  float z = fmaf(x, 0x1.715476p+0f, r);
  float n = z - r;
  float b = fmaf(-n, 0x1.7f7d1cp-20f, fmaf(-n, 0x1.62e4p-1f, x));
  float u = b * b;
  float j = fmaf(fmaf(fmaf(0x1.0e4020p-7f, b, 0x1.573e2ep-5f), u, fmaf(0x1.555e66p-3f, b, 0x1.fffdb6p-2f)), u,
                 fmaf(0x1.ffffecp-1f, b, 1.0f));
  if (!(fabsf(n) <= 192.0f)) return n <= 0.0f ? 0.0f : INFINITY;
  return ldexpf(j, (int)n);
}

/* ---- block dots ---- */

static float f16_at(const uint8_t *p) {
  uint16_t h;
  memcpy(&h, p, 2);
  return tide_f16_to_f32(h);
}

/* q8_0 / q5_0 weights (as signed bytes, 32 per block; dw: block scales) x q8_0 activations */
static float dot_q8_lanes(const int8_t *w, const float *dw, const uint8_t *y, int64_t nb) {
  float acc[8] = { 0 };
  for (int64_t b = 0; b < nb; b++, y += 34) {
    float d = dw[b] * f16_at(y);
    const int8_t *qx = w + 32 * b, *qy = (const int8_t *)(y + 2);
    for (int k = 0; k < 8; k++) {
      int32_t s = 0;
      for (int j = 0; j < 4; j++) s += qx[4 * k + j] * qy[4 * k + j];
      acc[k] = fmaf(d, (float)s, acc[k]);
    }
  }
  return red8(acc);
}

/* The same products for q4_0 weights repacked as llama.cpp does when a matrix has a multiple of 8 rows:
 * one float accumulator per output, += (d_w d_a) * (the block's integer sum) per block. */
static float dot_q4_0_blocks(const int8_t *w, const float *dw, const uint8_t *y, int64_t nb) {
  float acc = 0.0f;
  for (int64_t b = 0; b < nb; b++, y += 34) {
    const int8_t *qx = w + 32 * b, *qy = (const int8_t *)(y + 2);
    int32_t s = 0;
    for (int j = 0; j < 32; j++) s += qx[j] * qy[j];
    acc = fmaf((float)s, dw[b] * f16_at(y), acc);
  }
  return acc;
}

/* A q8_0, q5_0 or q4_0 weight row as signed bytes w (K) and block scales dw (K / 32). */
static void row_q_bytes(int32_t dt, const uint8_t *x, int64_t nb, int8_t *w, float *dw) {
  for (int64_t b = 0; b < nb; b++) {
    if (dt == TIDE_DTYPE_Q8_0) {
      dw[b] = f16_at(x + 34 * b);
      memcpy(w + 32 * b, x + 34 * b + 2, 32);
    } else if (dt == TIDE_DTYPE_Q4_0) { /* d, 16 bytes of nibbles; value = q - 8 */
      const uint8_t *blk = x + 18 * b;
      dw[b] = f16_at(blk);
      for (int j = 0; j < 16; j++) {
        w[32 * b + j] = (int8_t)((blk[2 + j] & 15) - 8);
        w[32 * b + 16 + j] = (int8_t)((blk[2 + j] >> 4) - 8);
      }
    } else { /* q5_0: d, 4 bytes of fifth bits, 16 bytes of nibbles; value = q - 16 */
      const uint8_t *blk = x + 22 * b;
      uint32_t qh;
      memcpy(&qh, blk + 2, 4);
      dw[b] = f16_at(blk);
      for (int j = 0; j < 16; j++) {
        int lo = (blk[6 + j] & 15) | (int)(((qh >> j) & 1) << 4);
        int hi = (blk[6 + j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
        w[32 * b + j] = (int8_t)(lo - 16);
        w[32 * b + 16 + j] = (int8_t)(hi - 16);
      }
    }
  }
}

/* 6-bit scale and min j (0..7) of a q4_k super-block */
static void q4_k_scale_min(const uint8_t *sc, int j, int *s, int *m) {
  if (j < 4) {
    *s = sc[j] & 63;
    *m = sc[j + 4] & 63;
  } else {
    *s = (sc[j + 4] & 0xF) | ((sc[j - 4] >> 6) << 4);
    *m = (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4);
  }
}

/* q4_k x q8_k. Per super-block and pair p of 32-value sub-blocks: the integer sums
 * s_p = sc[2p] (q.a over the low nibbles) + sc[2p+1] (q.a over the high nibbles) and
 * m_p = min[2p] sum(a) + min[2p+1] sum(a). llama.cpp's repacked q4_k kernels add them into float
 * accumulators per pair (per_pair: rows multiplied 4 at a time) or per super-block (the rows left
 * over), with d_w d_a and dmin_w d_a; the result is acc - acc_min. */
static float dot_q4_k(const uint8_t *x, const uint8_t *y, int64_t n, int per_pair) {
  float acc = 0.0f, accm = 0.0f;
  for (int64_t b = 0; b < n / 256; b++, x += 144, y += 292) {
    float da;
    memcpy(&da, y, 4);
    const int8_t *a = (const int8_t *)(y + 4);
    int16_t bs[16];
    memcpy(bs, y + 260, 32);
    float d = f16_at(x) * da, dm = f16_at(x + 2) * da;
    const uint8_t *sc = x + 4, *qs = x + 16;
    int32_t sb = 0, mb = 0;
    for (int p = 0; p < 4; p++) {
      int s0, m0, s1, m1;
      q4_k_scale_min(sc, 2 * p, &s0, &m0);
      q4_k_scale_min(sc, 2 * p + 1, &s1, &m1);
      int32_t lo = 0, hi = 0;
      for (int l = 0; l < 32; l++) {
        lo += (qs[32 * p + l] & 15) * a[64 * p + l];
        hi += (qs[32 * p + l] >> 4) * a[64 * p + 32 + l];
      }
      int32_t sp = s0 * lo + s1 * hi;
      int32_t mp = m0 * (bs[4 * p] + bs[4 * p + 1]) + m1 * (bs[4 * p + 2] + bs[4 * p + 3]);
      if (per_pair) {
        acc = fmaf((float)sp, d, acc);
        accm = fmaf((float)mp, dm, accm);
      } else {
        sb += sp;
        mb += mp;
      }
    }
    if (!per_pair) {
      acc = fmaf((float)sb, d, acc);
      accm = fmaf((float)mb, dm, accm);
    }
  }
  return acc - accm;
}

/* q6_k x q8_k: 8 integer lanes per super-block; lane k takes values 4k..4k+3 of each 32-value chunk
 * (times its 16-value group's scale), less 32 (bsum[2k] sc[2k] + bsum[2k+1] sc[2k+1]) for the -32 offset;
 * lane accumulators += (d_a d_w) lane, reduced by red8. */
static float dot_q6_k(const uint8_t *x, const uint8_t *y, int64_t n) {
  float acc[8] = { 0 };
  for (int64_t b = 0; b < n / 256; b++, x += 210, y += 292) {
    const uint8_t *ql = x, *qh = x + 128;
    const int8_t *sc = (const int8_t *)(x + 192);
    float da;
    memcpy(&da, y, 4);
    const int8_t *a = (const int8_t *)(y + 4);
    int16_t bs[16];
    memcpy(bs, y + 260, 32);
    float d = da * f16_at(x + 208);
    int32_t lane[8] = { 0 };
    for (int j = 0; j < 2; j++)
      for (int c = 0; c < 4; c++) /* values 128j + 32c .. +31 */
        for (int l = 0; l < 32; l++) {
          uint8_t lb = ql[64 * j + 32 * (c & 1) + l], hb = qh[32 * j + l];
          int q = (c < 2 ? (lb & 15) : (lb >> 4)) | (((hb >> (2 * c)) & 3) << 4);
          int v = 128 * j + 32 * c + l;
          lane[l / 4] += sc[v / 16] * q * a[v];
        }
    for (int k = 0; k < 8; k++) {
      int32_t sub = 32 * (bs[2 * k] * sc[2 * k] + bs[2 * k + 1] * sc[2 * k + 1]);
      acc[k] = fmaf(d, (float)(lane[k] - sub), acc[k]);
    }
  }
  return red8(acc);
}

/* 1 when tide_op_matmul_ggml computes weights of dtype dt in llama.cpp's order */
int tide_ggml_matmul_supports(int32_t dt) {
  return dt == TIDE_DTYPE_F32 || dt == TIDE_DTYPE_Q8_0 || dt == TIDE_DTYPE_Q5_0 || dt == TIDE_DTYPE_Q4_0 ||
         dt == TIDE_DTYPE_Q4_K || dt == TIDE_DTYPE_Q6_K;
}

typedef struct {
  const tide_tensor_t *b;
  tide_tensor_t *out;
  int64_t M, N, K;
  const uint8_t *act; /* rows of a in the activation format (block dtypes) */
  int64_t act_row;
  const float *af; /* a as dense f32 rows */
  int8_t *wq;      /* per thread: a q8_0 / q5_0 weight row as bytes (K) and its block scales (K / 32 floats) */
} mm_job_t;

static void mm_task(void *arg, int32_t ith, int32_t nth) {
  mm_job_t *j = arg;
  int64_t i0, i1;
  tide_split_range(j->N, ith, nth, &i0, &i1);
  float *o = j->out->data;
  int32_t dt = j->b->dtype;
  int8_t *wq = j->wq ? j->wq + (size_t)ith * (size_t)(j->K + 4 * (j->K / 32)) : NULL;
  float *dw = wq ? (float *)(void *)(wq + j->K) : NULL;
  int64_t m4 = j->M - j->M % 4; /* q4_k: rows in groups of 4 take the per-pair order */
  for (int64_t n = i0; n < i1; n++) {
    const uint8_t *w = (const uint8_t *)tide_k_row(j->b, n);
    if (wq) row_q_bytes(dt, w, j->K / 32, wq, dw);
    for (int64_t m = 0; m < j->M; m++) {
      const uint8_t *am = j->act ? j->act + m * j->act_row : NULL;
      float v;
      if (wq && dt == TIDE_DTYPE_Q4_0 && j->N % 8 == 0)
        v = dot_q4_0_blocks(wq, dw, am, j->K / 32);
      else if (wq)
        v = dot_q8_lanes(wq, dw, am, j->K / 32);
      else if (dt == TIDE_DTYPE_Q4_K)
        v = dot_q4_k(w, am, j->K, m < m4);
      else if (dt == TIDE_DTYPE_Q6_K)
        v = dot_q6_k(w, am, j->K);
      else if (j->M >= 2 && j->K % 16 == 0)
        v = tide_ggml_dot_f32_tile((const float *)(const void *)w, j->af + m * j->K, j->K);
      else
        v = tide_ggml_dot_f32((const float *)(const void *)w, j->af + m * j->K, j->K);
      o[m * j->N + n] = v;
    }
  }
}

int tide_op_matmul_ggml(tide_pool_t *pool, tide_tensor_t *out, const tide_tensor_t *a, const tide_tensor_t *b,
                        tide_err_t *err) {
  /* llama.cpp multiplies q4_k matrices whose row count is not a multiple of 8 with another kernel (its
   * vec_dot order), not reproduced here */
  if (!b || !tide_ggml_matmul_supports(b->dtype) || b->scale || (b->dtype == TIDE_DTYPE_Q4_K && b->shape[0] % 8))
    return tide_op_matmul(pool, out, a, b, 1, err);
  tide_k_mm_t mm;
  int rc = tide_k_check_matmul(out, a, b, 1, &mm, err);
  if (rc) return rc;
  mm_job_t j = { .b = b, .out = out, .M = mm.M, .N = mm.N, .K = mm.K };
  int32_t adt = b->dtype == TIDE_DTYPE_F32 ? -1 : tide_quant_ggml_act_dtype(b->dtype);
  int32_t nth = pool ? tide_pool_threads(pool) : 1;
  int bytes = b->dtype == TIDE_DTYPE_Q8_0 || b->dtype == TIDE_DTYPE_Q5_0 || b->dtype == TIDE_DTYPE_Q4_0;
  if (adt >= 0) j.act_row = mm.K / tide_dtype_traits(adt)->block_size * tide_dtype_traits(adt)->block_bytes;
  float *row = malloc((size_t)(mm.K * mm.M) * sizeof(float));
  uint8_t *act = adt >= 0 ? malloc((size_t)(j.act_row * mm.M)) : NULL;
  int8_t *wq = bytes ? malloc((size_t)nth * (size_t)(mm.K + 4 * (mm.K / 32))) : NULL;
  if (!row || (adt >= 0 && !act) || (bytes && !wq)) {
    free(row);
    free(act);
    free(wq);
    return tide_err_set(err, TIDE_ENOMEM, "matmul: out of memory");
  }
  for (int64_t m = 0; m < mm.M; m++)
    for (int64_t k = 0; k < mm.K; k++) row[m * mm.K + k] = tide_k_get(a, m, k);
  for (int64_t m = 0; act && m < mm.M; m++) tide_quant_act_ref(adt, row + m * mm.K, act + m * j.act_row, mm.K);
  j.act = act;
  j.af = row;
  j.wq = wq;
  tide_pool_run(pool, mm_task, &j);
  free(wq);
  free(act);
  free(row);
  return 0;
}

/* ---- RoPE ---- */

/* YaRN's correction dimension for n_rot rotations over the original context */
static float yarn_corr_dim(int n_dims, int n_ctx_orig, float n_rot, float base) {
  return (float)n_dims * logf((float)n_ctx_orig / (n_rot * 2.0f * 3.14159265358979323846f)) / (2.0f * logf(base));
}

int tide_op_rope_ggml(tide_pool_t *pool, tide_tensor_t *x, const tide_tensor_t *pos, const tide_rope_t *cfg,
                      tide_err_t *err) {
  int64_t n_tok, n_head;
  int rc = tide_k_check_rope(x, pos, cfg, &n_tok, &n_head, err);
  if (rc) return rc;
  if (cfg->scaling != TIDE_ROPE_NONE && cfg->scaling != TIDE_ROPE_LINEAR && cfg->scaling != TIDE_ROPE_YARN)
    return tide_op_rope(pool, x, pos, cfg, err);
  int d = cfg->dim;
  int64_t half = d / 2;
  float theta_scale = powf(cfg->theta, -2.0f / (float)d);
  /* llama.cpp's parameters for this scaling: frequency scale, extrapolation mix, and the attention factor
   * its context passes (for YaRN divided by the magnitude correction the rope multiplies back in) */
  float fs = cfg->scaling == TIDE_ROPE_NONE ? 1.0f : 1.0f / cfg->factor;
  float ext = cfg->scaling == TIDE_ROPE_YARN ? 1.0f : 0.0f;
  float mscale = cfg->attn_factor, cd0 = 0.0f, cd1 = 0.0f;
  if (ext != 0.0f) {
    float af = cfg->attn_factor * (1.0f / (1.0f + 0.1f * logf(cfg->factor)));
    mscale = af * (1.0f + 0.1f * logf(1.0f / fs));
    float lo = floorf(yarn_corr_dim(d, cfg->orig_max_pos, cfg->beta_fast, cfg->theta));
    float hi = ceilf(yarn_corr_dim(d, cfg->orig_max_pos, cfg->beta_slow, cfg->theta));
    cd0 = lo > 0.0f ? lo : 0.0f;
    cd1 = hi < (float)(d - 1) ? hi : (float)(d - 1);
  }
  float *c = malloc((size_t)d * sizeof(float));
  if (!c) return tide_err_set(err, TIDE_ENOMEM, "rope: out of memory");
  int64_t col = tide_k_col_stride(x);
  for (int64_t t = 0; t < n_tok; t++) {
    float theta = (float)tide_k_i32(pos, t);
    for (int64_t i = 0; i < half; i++) {
      float th = fs * theta;
      if (ext != 0.0f) {
        float y = ((float)i - cd0) / fmaxf(0.001f, cd1 - cd0);
        float mix = (1.0f - fminf(1.0f, fmaxf(0.0f, y))) * ext;
        volatile float e = theta * mix;
        th = fmaf(th, 1.0f - mix, e);
      }
      c[2 * i] = cosf(th) * mscale;
      c[2 * i + 1] = sinf(th) * mscale;
      theta *= theta_scale;
    }
    for (int64_t h = 0; h < n_head; h++) {
      char *r = tide_k_row(x, t * n_head + h);
      for (int64_t i = 0; i < half; i++) {
        int64_t i0 = cfg->interleaved ? 2 * i : i, i1 = cfg->interleaved ? 2 * i + 1 : i + half;
        float *e0 = (float *)(void *)(r + i0 * col), *e1 = (float *)(void *)(r + i1 * col);
        float x0 = *e0, x1 = *e1, cs = c[2 * i], sn = c[2 * i + 1];
        volatile float p1 = x1 * sn, p2 = x1 * cs;
        *e0 = fmaf(x0, cs, -p1);
        *e1 = fmaf(x0, sn, p2);
      }
    }
  }
  free(c);
  return 0;
}

/* ---- SwiGLU ---- */

int tide_op_swiglu_ggml(tide_pool_t *pool, tide_tensor_t *out, const tide_tensor_t *gate, const tide_tensor_t *up,
                        tide_err_t *err) {
  (void)pool;
  int rc = tide_k_check_swiglu(out, gate, up, err);
  if (rc) return rc;
  int64_t F = tide_k_inner(out), M = tide_tensor_numel(out) / F;
  float *o = out->data;
  int64_t n16 = F / 16 * 16; /* whole groups of 16 take the vector exp, the rest libm's */
  for (int64_t m = 0; m < M; m++)
    for (int64_t i = 0; i < F; i++) {
      float g = tide_k_get(gate, m, i), u = tide_k_get(up, m, i);
      o[m * F + i] = g / (1.0f + (i < n16 ? tide_ggml_expf(-g) : expf(-g))) * u;
    }
  return 0;
}

/* ---- attention ---- */

static const char *cache_row(const tide_tensor_t *c, const tide_k_cache_t *cd, const tide_batch_t *b, int64_t t,
                             int64_t p, int64_t h) {
  int32_t s = b->tok_seq[t];
  int32_t blk = b->block_table[(int64_t)s * b->max_blocks + p / b->block_size];
  return tide_k_cache_row(c, cd, blk, p % b->block_size, h);
}

int tide_op_attention_ggml(tide_pool_t *pool, tide_tensor_t *out, const tide_tensor_t *q,
                           const tide_tensor_t *k_cache, const tide_tensor_t *v_cache, const tide_batch_t *batch,
                           float scale, tide_err_t *err) {
  (void)pool;
  tide_k_attn_t at;
  int rc = tide_k_check_attention(out, q, k_cache, v_cache, batch, &at, err);
  if (rc) return rc;
  if (k_cache->dtype != TIDE_DTYPE_F32 || v_cache->dtype != TIDE_DTYPE_F32 || !at.k.dense || !at.v.dense)
    return tide_err_set(err, TIDE_EINVAL, "attention: numerics 'ggml' needs an f32 KV cache");
  int64_t cap = (at.max_len + 63) / 64 * 64;
  float *w = calloc((size_t)(cap * 3 + at.dk), sizeof(float));
  if (!w) return tide_err_set(err, TIDE_ENOMEM, "attention: out of memory");
  float *p = w + cap, *vt = p + cap, *qr = vt + cap;
  int64_t group = at.n_head / at.k.n_kv;
  int prefill = batch->n_tok >= 2;
  float *o = out->data;
  for (int64_t t = 0; t < at.n_tok; t++) {
    int64_t len = (int64_t)batch->tok_pos[t] + 1, n16 = (len + 15) / 16 * 16, n64 = (len + 63) / 64 * 64;
    for (int64_t h = 0; h < at.n_head; h++) {
      int64_t kvh = h / group;
      for (int64_t c = 0; c < at.dk; c++) qr[c] = tide_k_get(q, t * at.n_head + h, c);
      float mx = -INFINITY;
      for (int64_t j = 0; j < len; j++) {
        const float *kr = (const float *)(const void *)cache_row(k_cache, &at.k, batch, t, j, kvh);
        w[j] = tide_ggml_dot_f32(kr, qr, at.dk) * scale;
        if (w[j] > mx) mx = w[j];
      }
      double sum = 0.0;
      for (int64_t j = 0; j < n16; j += 16) {
        float e[16];
        for (int l = 0; l < 16; l++) e[l] = p[j + l] = j + l < len ? tide_ggml_expf(w[j + l] - mx) : 0.0f;
        sum += (double)red16(e);
      }
      float inv = (float)(1.0 / sum);
      for (int64_t j = 0; j < n64; j++) p[j] = j < len ? p[j] * inv : 0.0f;
      float *orow = o + (t * at.n_head + h) * at.dv;
      for (int64_t c = 0; c < at.dv; c++) {
        for (int64_t j = 0; j < n64; j++)
          vt[j] = j < len ? ((const float *)(const void *)cache_row(v_cache, &at.v, batch, t, j, kvh))[c] : 0.0f;
        orow[c] = prefill ? tide_ggml_dot_f32_tile(vt, p, n16) : tide_ggml_dot_f32(vt, p, n64);
      }
    }
  }
  free(w);
  return 0;
}
