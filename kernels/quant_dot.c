#include <math.h>
/* quant_dot.c: portable dot products of GGML block rows with quantized
 * activation rows, their run-time dispatch, and the quantized matmul.
 *
 * Each dot sums integer products inside a block (exact) and scales the block
 * sum by the product of the two blocks' scales in float:
 *   q8_0 . q8_0, q4_0 . q8_0: sum_b dw_b * da_b * sum_j qw_j * qa_j
 *   q4_k . q8_k: sum_B da_B * (d_B * sum_s sc_s * sum_j q_j * qa_j - dmin_B * sum_s m_s * sum_j qa_j)
 *   q6_k . q8_k: sum_B da_B * d_B * sum_g sc_g * sum_j (q_j - 32) * qa_j
 * The AVX2 versions (kernels/avx2/quant_avx2.c) compute the same integer sums
 * (for q4_0 split as sum (qw+8)*qa - 8 * sum qa, the second from the
 * activation row's per-block {da, da * sum qa}); only the order of the float
 * sums over blocks differs.
 *
 * With AVX-512 VNNI (run-time check) two more paths take q8_0 / q4_0 weights:
 *  - M = 1 (decode): tide_quant_dot512_* (kernels/avx2/quant_avx512.c) on the activation row repacked once
 *    per call, 4 blocks per step; the rows of b two ahead are prefetched (rows of ~1-2 KiB are too short for
 *    the hardware prefetcher). Single thread, weights in L2 (bench/quant_bench.c QB_KERNELS=1, thread CPU
 *    time): q8_0 38 -> 55 GB/s, q4_0 18 -> 33 GB/s of weight rows against the AVX2 dots.
 *  - M >= TIDE_QUANT_IL_MIN_M (prefill): panels of 16 weight rows interleaved per 4 bytes, so that each
 *    vpdpbusd lane is one output and the per-block float work is shared by 16 outputs (~380 GOP/s against
 *    ~220 for the 4 x 4 tiles on packed rows, which keep M = 8..31 and q4_k).
 *
 * Single-thread speed against llama.cpp's own ggml_vec_dot_* on the same blocks
 * (bench/quant_bench.c, `dot_vs_llama_cpp`, weights in L2, K = 4096; ratios
 * over its AVX2 build / its AVX-512 build picked on this EPYC): q8_0
 * 1.10 / 1.09, q4_0 1.15 / 1.07, q4_k 0.98 / 0.95, q6_k 0.94 / 0.89. */
#include <cblas.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "kern.h"
#include "quant.h"

static inline float half_at(const uint8_t *p) {
  uint16_t h;
  memcpy(&h, p, 2);
  return tide_f16_to_f32(h);
}

float tide_quant_dot_q8_0_c(const void *w, const void *a, int64_t n) {
  const uint8_t *x = w, *y = a;
  float s = 0.0f;
  for (int64_t b = 0; b < n / TIDE_QK; b++, x += 34, y += 34) {
    const int8_t *qx = (const int8_t *)(x + 2), *qy = (const int8_t *)(y + 2);
    int32_t sumi = 0;
    for (int j = 0; j < TIDE_QK; j++) sumi += qx[j] * qy[j];
    s += (float)sumi * (half_at(x) * half_at(y));
  }
  return s;
}

float tide_quant_dot_q4_0_c(const void *w, const void *a, int64_t n) {
  const uint8_t *x = w, *y = a;
  float s = 0.0f;
  for (int64_t b = 0; b < n / TIDE_QK; b++, x += 18, y += 34) {
    const uint8_t *qx = x + 2;
    const int8_t *qy = (const int8_t *)(y + 2);
    int32_t sumi = 0;
    for (int j = 0; j < 16; j++) sumi += ((qx[j] & 15) - 8) * qy[j] + ((qx[j] >> 4) - 8) * qy[j + 16];
    s += (float)sumi * (half_at(x) * half_at(y));
  }
  return s;
}

float tide_quant_dot_q4_k_c(const void *w, const void *a, int64_t n) {
  const uint8_t *x = w, *y = a;
  float s = 0.0f;
  for (int64_t b = 0; b < n / TIDE_QK_K; b++, x += 144, y += 292) {
    float da;
    memcpy(&da, y, 4);
    const int8_t *qy = (const int8_t *)(y + 4);
    const uint8_t *sc = x + 4, *q = x + 16;
    int32_t sumi = 0, summ = 0;
    for (int j = 0; j < 8; j++) {
      int scj, mj;
      if (j < 4) {
        scj = sc[j] & 63;
        mj = sc[j + 4] & 63;
      } else {
        scj = (sc[j + 4] & 15) | ((sc[j - 4] >> 6) << 4);
        mj = (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4);
      }
      const uint8_t *qj = q + 32 * (j / 2);
      int shift = 4 * (j % 2);
      int32_t dot = 0, sy = 0;
      for (int l = 0; l < 32; l++) {
        dot += ((qj[l] >> shift) & 15) * qy[32 * j + l];
        sy += qy[32 * j + l];
      }
      sumi += scj * dot;
      summ += mj * sy;
    }
    s += da * half_at(x) * (float)sumi - da * half_at(x + 2) * (float)summ;
  }
  return s;
}

float tide_quant_dot_q6_k_c(const void *w, const void *a, int64_t n) {
  const uint8_t *x = w, *y = a;
  float s = 0.0f;
  for (int64_t b = 0; b < n / TIDE_QK_K; b++, x += 210, y += 292) {
    float da;
    memcpy(&da, y, 4);
    const int8_t *qy = (const int8_t *)(y + 4), *sc = (const int8_t *)(x + 192);
    int32_t sumi = 0;
    for (int h = 0; h < 2; h++) {
      const uint8_t *ql = x + 64 * h, *qh = x + 128 + 32 * h;
      int32_t g[8] = {0}; /* the 8 groups of 16 of this half */
      for (int l = 0; l < 32; l++) {
        int q1 = ((ql[l] & 15) | ((qh[l] & 3) << 4)) - 32;
        int q2 = ((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) - 32;
        int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        const int8_t *yy = qy + 128 * h;
        g[l / 16] += q1 * yy[l];
        g[2 + l / 16] += q2 * yy[l + 32];
        g[4 + l / 16] += q3 * yy[l + 64];
        g[6 + l / 16] += q4 * yy[l + 96];
      }
      for (int k = 0; k < 8; k++) sumi += sc[8 * h + k] * g[k];
    }
    s += da * half_at(x + 208) * (float)sumi;
  }
  return s;
}

/* llama.cpp's activation quantizer (its x86 quantize_row_q8_0, not the reference quantize_row_q8_0_ref
 * that writes weight files): id = 127 / amax and ties to even, where the weight quantizer uses
 * 1 / (amax / 127) and ties away from zero. The two give other bytes for about 1e-5 of random values,
 * and a single flipped activation moved the tiny test models' logits by up to ~0.04. */
void tide_quant_act_q8_0_c(const float *x, void *dst, int64_t n) {
  uint8_t *b = dst;
  for (int64_t i = 0; i < n / TIDE_QK; i++, b += 34, x += TIDE_QK) {
    float amax = 0.0f;
    for (int j = 0; j < TIDE_QK; j++) amax = fmaxf(amax, fabsf(x[j]));
    float d = amax / 127.0f, id = amax != 0.0f ? 127.0f / amax : 0.0f;
    uint16_t h = tide_f32_to_f16(d);
    memcpy(b, &h, 2);
    for (int j = 0; j < TIDE_QK; j++) {
      float v = rintf(x[j] * id); /* the default rounding mode: ties to even */
      b[2 + j] = (uint8_t)(int8_t)(v >= -128.0f && v <= 127.0f ? (int)v : 0);
    }
  }
}

void tide_quant_act_ref(int32_t adt, const float *x, void *dst, int64_t n) {
  if (adt == TIDE_DTYPE_Q8_0)
    tide_quant_act_q8_0_c(x, dst, n);
  else
    tide_dtype_traits(adt)->from_float(x, dst, n);
}

/* the dtypes with dot kernels: llama.cpp's activation format for each (q5_0 has none here) */
int32_t tide_quant_act_dtype(int32_t dt) { return dt == TIDE_DTYPE_Q5_0 ? -1 : tide_quant_ggml_act_dtype(dt); }

int64_t tide_quant_act_row_bytes(int32_t dt, int64_t K) {
  int64_t rb = tide_dtype_row_bytes(tide_quant_act_dtype(dt), K);
  return dt == TIDE_DTYPE_Q4_0 ? rb + K / TIDE_QK * 8 : rb;
}

void tide_quant_act_quantize(int32_t dt, const float *x, void *a, int64_t K) {
  int32_t adt = tide_quant_act_dtype(dt);
  if (tide_k_has_avx2()) { /* same bytes, ~10x faster (roundf is a libm call here) */
    if (adt == TIDE_DTYPE_Q8_K)
      tide_quant_act_q8_k_avx2(x, a, K);
    else
      tide_quant_act_q8_0_avx2(x, a, K, dt == TIDE_DTYPE_Q4_0 ? (uint8_t *)a + K / TIDE_QK * 34 : NULL);
    return;
  }
  tide_quant_act_ref(adt, x, a, K);
  if (dt != TIDE_DTYPE_Q4_0) return;
  const uint8_t *q = a;
  uint8_t *aux = (uint8_t *)a + K / TIDE_QK * 34;
  for (int64_t b = 0; b < K / TIDE_QK; b++, q += 34) {
    int32_t sum = 0;
    for (int j = 0; j < TIDE_QK; j++) sum += (int8_t)q[2 + j];
    float ds[2] = {half_at(q), half_at(q) * (float)sum};
    memcpy(aux + 8 * b, ds, 8);
  }
}

int32_t tide_quant_ggml_act_dtype(int32_t dt) {
  switch (dt) {
  case TIDE_DTYPE_Q8_0:
  case TIDE_DTYPE_Q4_0:
  case TIDE_DTYPE_Q5_0: return TIDE_DTYPE_Q8_0;
  case TIDE_DTYPE_Q4_K:
  case TIDE_DTYPE_Q6_K: return TIDE_DTYPE_Q8_K;
  default: return -1;
  }
}

int tide_quant_act_round(int32_t dt, const float *A, int64_t lda, int64_t M, int64_t K, float *dst) {
  int32_t adt = tide_quant_ggml_act_dtype(dt);
  if (adt < 0) return -1;
  const tide_dtype_traits_t *tr = tide_dtype_traits(adt);
  if (K % tr->block_size) return -1;
  /* one row's blocks, on the stack: up to 8 KiB of values per piece (a multiple of both block sizes) */
  enum { PIECE = 2048 };
  uint8_t q[PIECE / 256 * 292];
  for (int64_t m = 0; m < M; m++)
    for (int64_t k = 0; k < K; k += PIECE) {
      int64_t n = K - k < PIECE ? K - k : PIECE;
      /* the activation quantizer of a weight dtype with that format and no aux (q4_k: q8_k, q8_0: q8_0) */
      tide_quant_act_quantize(adt == TIDE_DTYPE_Q8_K ? TIDE_DTYPE_Q4_K : TIDE_DTYPE_Q8_0, A + m * lda + k, q, n);
      tr->to_float(q, dst + m * K + k, n);
    }
  return 0;
}

int tide_quant_has_dot(int32_t dt) { return tide_quant_act_dtype(dt) >= 0; }

tide_quant_dot_fn tide_quant_dot_c(int32_t dt) {
  switch (dt) {
  case TIDE_DTYPE_Q8_0: return tide_quant_dot_q8_0_c;
  case TIDE_DTYPE_Q4_0: return tide_quant_dot_q4_0_c;
  case TIDE_DTYPE_Q4_K: return tide_quant_dot_q4_k_c;
  case TIDE_DTYPE_Q6_K: return tide_quant_dot_q6_k_c;
  default: return NULL;
  }
}

tide_quant_dot_fn tide_quant_dot_avx2(int32_t dt) {
  switch (dt) {
  case TIDE_DTYPE_Q8_0: return tide_quant_dot_q8_0_avx2;
  case TIDE_DTYPE_Q4_0: return tide_quant_dot_q4_0_avx2;
  case TIDE_DTYPE_Q4_K: return tide_quant_dot_q4_k_avx2;
  case TIDE_DTYPE_Q6_K: return tide_quant_dot_q6_k_avx2;
  default: return NULL;
  }
}

tide_quant_dot_fn tide_quant_dot(int32_t dt) { return tide_k_has_avx2() ? tide_quant_dot_avx2(dt) : tide_quant_dot_c(dt); }

#define TILE_C(name)                                                                 \
  static void tile4_##name##_c(const void *w, const void *const *a, int64_t n, float *out) { \
    for (int r = 0; r < 4; r++) out[r] = tide_quant_dot_##name##_c(w, a[r], n);    \
  }
TILE_C(q8_0)
TILE_C(q4_0)
TILE_C(q4_k)
TILE_C(q6_k)

tide_quant_tile4_fn tide_quant_tile4_c(int32_t dt) {
  switch (dt) {
  case TIDE_DTYPE_Q8_0: return tile4_q8_0_c;
  case TIDE_DTYPE_Q4_0: return tile4_q4_0_c;
  case TIDE_DTYPE_Q4_K: return tile4_q4_k_c;
  case TIDE_DTYPE_Q6_K: return tile4_q6_k_c;
  default: return NULL;
  }
}

tide_quant_tile4_fn tide_quant_tile4_avx2(int32_t dt) {
  switch (dt) {
  case TIDE_DTYPE_Q8_0: return tide_quant_tile4_q8_0_avx2;
  case TIDE_DTYPE_Q4_0: return tide_quant_tile4_q4_0_avx2;
  case TIDE_DTYPE_Q4_K: return tide_quant_tile4_q4_k_avx2;
  case TIDE_DTYPE_Q6_K: return tide_quant_tile4_q6_k_avx2;
  default: return NULL;
  }
}

tide_quant_tile4_fn tide_quant_tile4(int32_t dt) {
  return tide_k_has_avx2() ? tide_quant_tile4_avx2(dt) : tide_quant_tile4_c(dt);
}

/* ---- M = 1 on AVX-512 VNNI: the activation row repacked (layout in quant.h) ---- */
int64_t tide_quant_act512_bytes(int64_t K) { return (K / TIDE_QK + 3) / 4 * TIDE_QUANT_A512_GROUP; }

void tide_quant_act512_pack(int32_t dt, const void *aq, int64_t K, void *dst) {
  int64_t nb = K / TIDE_QK;
  uint8_t *o = dst;
  memset(o, 0, (size_t)tide_quant_act512_bytes(K));
  const uint8_t *q = aq;
  for (int64_t b = 0; b < nb; b++, q += 34) {
    uint8_t *g = o + b / 4 * TIDE_QUANT_A512_GROUP;
    int j = (int)(b % 4);
    float da = half_at(q);
    memcpy(g + TIDE_QUANT_A512_DA + 4 * j, &da, 4);
    if (dt == TIDE_DTYPE_Q8_0) {
      memcpy(g + 32 * j, q + 2, 32);
      for (int l = 0; l < 8; l++) { /* lane 8j + l: activation bytes 4l..4l+3 of block j */
        int32_t s = 0;
        for (int t = 0; t < 4; t++) s += (int8_t)q[2 + 4 * l + t];
        s *= -128;
        memcpy(g + 128 + 4 * (8 * j + l), &s, 4);
      }
    } else { /* q4_0: values 0..15 then 16..31; lane 4j + l: bytes 4l..4l+3 of both halves */
      memcpy(g + 16 * j, q + 2, 16);
      memcpy(g + 64 + 16 * j, q + 18, 16);
      for (int l = 0; l < 4; l++) {
        int32_t s = 0;
        for (int t = 0; t < 4; t++) s += (int8_t)q[2 + 4 * l + t] + (int8_t)q[18 + 4 * l + t];
        s *= -8;
        memcpy(g + 128 + 4 * (4 * j + l), &s, 4);
      }
    }
  }
}

tide_quant_dot_fn tide_quant_dot512(int32_t dt) {
  if (!tide_quant_has_vnni512()) return NULL;
  switch (dt) {
  case TIDE_DTYPE_Q8_0: return tide_quant_dot512_q8_0;
  case TIDE_DTYPE_Q4_0: return tide_quant_dot512_q4_0;
  default: return NULL;
  }
}

/* ---- matmul ---- */
#define QMM_NB 8 /* rows of b per step: their bytes stay in L1/L2 while every row of A passes */
#define QMM_PF 2 /* M = 1: rows read ahead of the one being summed are prefetched this far (rows of a
                  * few KiB are too short for the hardware prefetcher, as for the bf16 matvec) */

typedef struct {
  float *out;
  const char *aq; /* (M, act row bytes) */
  int64_t arb;
  const tide_tensor_t *b;
  int64_t M, N, K;
  int64_t wrb; /* bytes of a row of b */
  tide_quant_dot_fn dot;
  tide_quant_tile4_fn tile4;
} qmm_ctx_t;

static void qmm_task(void *arg, int32_t ith, int32_t nth) {
  qmm_ctx_t *c = arg;
  int64_t lo, hi;
  tide_split_range((c->N + QMM_NB - 1) / QMM_NB, ith, nth, &lo, &hi);
  lo *= QMM_NB;
  hi = hi * QMM_NB < c->N ? hi * QMM_NB : c->N;
  for (int64_t n0 = lo; n0 < hi; n0 += QMM_NB) {
    int64_t n1 = n0 + QMM_NB < hi ? n0 + QMM_NB : hi;
    const char *rows[QMM_NB];
    for (int64_t n = n0; n < n1; n++) rows[n - n0] = tide_k_row(c->b, n);
    if (c->M == 1) {
      for (int64_t n = n0; n < n1; n++) {
        if (n + QMM_PF < hi) {
          const char *pf = tide_k_row(c->b, n + QMM_PF);
          for (int64_t off = 0; off < c->wrb; off += 64) __builtin_prefetch(pf + off, 0, 3);
        }
        c->out[n] = c->dot(rows[n - n0], c->aq, c->K);
      }
      continue;
    }
    for (int64_t m0 = 0; m0 < c->M; m0 += 4) { /* 4 rows of A per weight row (the last ones repeated) */
      int64_t mr = c->M - m0 < 4 ? c->M - m0 : 4;
      const void *ar[4];
      for (int64_t r = 0; r < 4; r++) ar[r] = c->aq + (m0 + (r < mr ? r : mr - 1)) * c->arb;
      for (int64_t n = n0; n < n1; n++) {
        float t[4];
        c->tile4(rows[n - n0], ar, c->K, t);
        for (int64_t r = 0; r < mr; r++) c->out[(m0 + r) * c->N + n] = t[r];
      }
    }
  }
}

int64_t tide_quant_packed_min_m(int32_t dt) {
  switch (dt) {
  case TIDE_DTYPE_Q8_0: return 8;
  case TIDE_DTYPE_Q4_0: return 8;
  case TIDE_DTYPE_Q4_K: return 48;
  default: return 0;
  }
}

static int packed_fits(int32_t dt, int64_t M) {
  int64_t m0 = tide_quant_packed_min_m(dt);
  return m0 > 0 && M >= m0 && tide_quant_has_vnni512();
}

int32_t tide_quant_matmul_act_dtype(int32_t dt, int64_t M) {
  /* packed tiles: q8_0 activations (q8_k for q4_k weights); dots: the dot's format; dequantized panels
   * (large M, or weights without a dot kernel such as q5_0): f32 rounded through llama.cpp's format */
  if (packed_fits(dt, M)) return dt == TIDE_DTYPE_Q4_K ? TIDE_DTYPE_Q8_K : TIDE_DTYPE_Q8_0;
  return M > TIDE_QUANT_DOT_MAX_M || !tide_quant_has_dot(dt) ? tide_quant_ggml_act_dtype(dt) : tide_quant_act_dtype(dt);
}

int tide_quant_matmul_wants(int32_t dt, int64_t M) {
  (void)M;
  return tide_quant_has_dot(dt);
}

int tide_quant_matmul(tide_pool_t *pool, float *out, const float *A, int64_t lda, const tide_tensor_t *b, int64_t M,
                      int64_t N, int64_t K, tide_err_t *err) {
  /* from TIDE_QUANT_IL_MIN_M rows on, q8_0 / q4_0 weights go through the interleaved 16-row panels */
  if (M >= TIDE_QUANT_IL_MIN_M && (b->dtype == TIDE_DTYPE_Q8_0 || b->dtype == TIDE_DTYPE_Q4_0) && !b->scale &&
      tide_quant_has_vnni512())
    return tide_quant_matmul_il(pool, out, A, lda, b, M, N, K, 1, err);
  if (packed_fits(b->dtype, M) && !b->scale) return tide_quant_matmul_packed(pool, out, A, lda, b, M, N, K, 1, err);
  if (M > TIDE_QUANT_DOT_MAX_M) return tide_quant_matmul_panels(pool, out, A, lda, b, M, N, K, err);
  return tide_quant_matmul_dots(pool, out, A, lda, b, M, N, K, err);
}

int tide_quant_matmul_dots(tide_pool_t *pool, float *out, const float *A, int64_t lda, const tide_tensor_t *b,
                           int64_t M, int64_t N, int64_t K, tide_err_t *err) {
  if (tide_quant_act_dtype(b->dtype) < 0 || b->scale || K % tide_dtype_traits(b->dtype)->block_size)
    return tide_err_set(err, TIDE_EINVAL, "matmul: no quantized kernel for b of dtype %s",
                        tide_dtype_traits(b->dtype)->name);
  qmm_ctx_t c = {.out = out, .b = b, .M = M, .N = N, .K = K, .dot = tide_quant_dot(b->dtype),
                 .tile4 = tide_quant_tile4(b->dtype)};
  c.arb = tide_quant_act_row_bytes(b->dtype, K);
  c.wrb = tide_dtype_row_bytes(b->dtype, K);
  tide_quant_dot_fn d512 = M == 1 ? tide_quant_dot512(b->dtype) : NULL;
  int64_t extra = d512 ? tide_quant_act512_bytes(K) : 0;
  char *aq = malloc((size_t)(M * c.arb + extra));
  if (!aq) return tide_err_set(err, TIDE_ENOMEM, "matmul: out of memory");
  for (int64_t m = 0; m < M; m++) tide_quant_act_quantize(b->dtype, A + m * lda, aq + m * c.arb, K);
  c.aq = aq;
  if (d512) { /* decode: the AVX-512 VNNI dots on the repacked row */
    tide_quant_act512_pack(b->dtype, aq, K, aq + c.arb);
    c.aq = aq + c.arb;
    c.dot = d512;
  }
  tide_k_run(pool, qmm_task, &c, M * N * K / 40 + N * K / 8);
  free(aq);
  return 0;
}

/* ---- converted panels + sgemm ---- */
#define QP_NB 64 /* rows of b per panel: 64 x K floats (512 KiB at K = 2048) per thread */

typedef struct {
  float *out;
  const float *A;
  int64_t lda;
  const tide_tensor_t *b;
  int64_t M, N, K;
  float *scratch;
  void (*to_float)(const void *src, float *dst, int64_t n);
  atomic_llong next;
} qpan_ctx_t;

static void qpan_task(void *arg, int32_t ith, int32_t nth) {
  (void)nth;
  qpan_ctx_t *c = arg;
  float *P = c->scratch + (int64_t)ith * QP_NB * c->K;
  int64_t panels = (c->N + QP_NB - 1) / QP_NB;
  for (;;) {
    int64_t pi = atomic_fetch_add(&c->next, 1);
    if (pi >= panels) break;
    int64_t n0 = pi * QP_NB, nb = c->N - n0 < QP_NB ? c->N - n0 : QP_NB;
    for (int64_t j = 0; j < nb; j++) c->to_float(tide_k_row(c->b, n0 + j), P + j * c->K, c->K);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)c->M, (int)nb, (int)c->K, 1.0f, c->A, (int)c->lda, P,
                (int)c->K, 0.0f, c->out + n0, (int)c->N);
  }
}

int tide_quant_matmul_panels(tide_pool_t *pool, float *out, const float *A, int64_t lda, const tide_tensor_t *b,
                             int64_t M, int64_t N, int64_t K, tide_err_t *err) {
  if (tide_quant_act_dtype(b->dtype) < 0 || b->scale || K % tide_dtype_traits(b->dtype)->block_size)
    return tide_err_set(err, TIDE_EINVAL, "matmul: no quantized kernel for b of dtype %s",
                        tide_dtype_traits(b->dtype)->name);
  if (M > INT32_MAX || N > INT32_MAX || K > INT32_MAX || lda > INT32_MAX)
    return tide_err_set(err, TIDE_EINVAL, "matmul: dimensions beyond BLAS int range");
  qpan_ctx_t c = {.out = out, .A = A, .lda = lda, .b = b, .M = M, .N = N, .K = K,
                  .to_float = tide_quant_to_float(b->dtype)};
  int32_t nth = tide_pool_threads(pool);
  /* activations rounded as the integer dots would see them (tide_quant_act_round), after the scratch */
  c.scratch = malloc((size_t)(QP_NB * K * nth + M * K) * sizeof(float));
  if (!c.scratch) return tide_err_set(err, TIDE_ENOMEM, "matmul: out of memory");
  float *ar = c.scratch + QP_NB * K * nth;
  if (!tide_quant_act_round(b->dtype, A, lda, M, K, ar)) {
    c.A = ar;
    c.lda = K;
  }
  if (openblas_get_num_threads() != 1) openblas_set_num_threads(1);
  atomic_init(&c.next, 0);
  tide_k_run(pool, qpan_task, &c, M * N * K / 20 + N * K / 5);
  free(c.scratch);
  return 0;
}

tide_quant_to_float_fn tide_quant_to_float_avx2(int32_t dt) {
  switch (dt) {
  case TIDE_DTYPE_Q8_0: return tide_quant_to_float_q8_0_avx2;
  case TIDE_DTYPE_Q4_0: return tide_quant_to_float_q4_0_avx2;
  case TIDE_DTYPE_Q4_K: return tide_quant_to_float_q4_k_avx2;
  case TIDE_DTYPE_Q6_K: return tide_quant_to_float_q6_k_avx2;
  default: return NULL;
  }
}

tide_quant_to_float_fn tide_quant_to_float(int32_t dt) {
  if (tide_k_has_avx2()) return tide_quant_to_float_avx2(dt);
  switch (dt) {
  case TIDE_DTYPE_Q8_0: return tide_quant_to_float_q8_0;
  case TIDE_DTYPE_Q4_0: return tide_quant_to_float_q4_0;
  case TIDE_DTYPE_Q4_K: return tide_quant_to_float_q4_k;
  case TIDE_DTYPE_Q6_K: return tide_quant_to_float_q6_k;
  default: return NULL;
  }
}

/* ---- packed rows for the VNNI tiles (layout in quant.h) ---- */
int tide_quant_has_vnni512(void) {
#if defined(__x86_64__) && defined(__GNUC__)
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512vnni");
#else
  return 0;
#endif
}

int64_t tide_quant_packed_kp(int64_t K) { return (K + 511) / 512 * 512; }

static int64_t packed_row_bytes(int64_t K) {
  int64_t kp = tide_quant_packed_kp(K);
  return kp + kp / 32 * 8;
}

static void pack_clear(uint8_t *dst, int64_t K) { memset(dst, 0, (size_t)packed_row_bytes(K)); }

/* Zero only the padding of a packed row (past K, and the scale slots past
 * the last block): the fast packers write everything else. */
static void pack_clear_tail(uint8_t *dst, int64_t K) {
  int64_t kp = tide_quant_packed_kp(K), nb = K / TIDE_QK;
  float *d = (float *)(void *)(dst + kp), *c = d + kp / 32;
  memset(dst + K, 0, (size_t)(kp - K));
  memset(d + nb, 0, (size_t)(kp / 32 - nb) * 4);
  memset(c + nb, 0, (size_t)(kp / 32 - nb) * 4);
}

void tide_quant_pack_act(int32_t dt, const void *a, int64_t K, uint8_t *dst) {
  if (tide_k_has_avx2()) { /* same bytes, several x faster */
    pack_clear_tail(dst, K);
    tide_quant_pack_act_avx2(dt, a, K, dst);
    return;
  }
  tide_quant_pack_act_c(dt, a, K, dst);
}

void tide_quant_pack_act_q8_k(const void *a, int64_t K, uint8_t *dst) {
  int64_t kp = tide_quant_packed_kp(K), nb = K / TIDE_QK;
  float *d = (float *)(void *)(dst + kp), *c = d + kp / 32;
  pack_clear_tail(dst, K);
  const uint8_t *blk = a;
  for (int64_t b = 0; b < nb; b++) {
    if (b % 8 == 0 && b) blk += 292;
    float dk;
    memcpy(&dk, blk, 4);
    const int8_t *q = (const int8_t *)(blk + 4) + (b % 8) * TIDE_QK;
    int32_t sum = 0;
    for (int j = 0; j < TIDE_QK; j++) sum += q[j];
    memcpy(dst + b * TIDE_QK, q, TIDE_QK);
    d[b] = dk;
    c[b] = dk * (float)sum;
  }
}

void tide_quant_pack_act_c(int32_t dt, const void *a, int64_t K, uint8_t *dst) {
  int64_t kp = tide_quant_packed_kp(K), nb = K / TIDE_QK;
  float *d = (float *)(void *)(dst + kp), *c = d + kp / 32;
  pack_clear(dst, K);
  const uint8_t *q = a;
  for (int64_t b = 0; b < nb; b++, q += 34) {
    float da = half_at(q);
    int32_t sum = 0;
    for (int j = 0; j < TIDE_QK; j++) {
      int v = (int8_t)q[2 + j];
      sum += v;
      dst[b * TIDE_QK + j] = dt == TIDE_DTYPE_Q8_0 ? (uint8_t)(v + 128) : (uint8_t)v;
    }
    d[b] = da;
    c[b] = dt == TIDE_DTYPE_Q8_0 ? da : da * (float)sum;
  }
}

void tide_quant_pack_weight(int32_t dt, const void *w, int64_t K, uint8_t *dst) {
  if ((dt == TIDE_DTYPE_Q8_0 || dt == TIDE_DTYPE_Q4_0) && tide_k_has_avx2()) { /* same bytes, several x faster */
    pack_clear_tail(dst, K);
    tide_quant_pack_weight_avx2(dt, w, K, dst);
    return;
  }
  tide_quant_pack_weight_c(dt, w, K, dst);
}

void tide_quant_pack_weight_c(int32_t dt, const void *w, int64_t K, uint8_t *dst) {
  int64_t kp = tide_quant_packed_kp(K), nb = K / TIDE_QK;
  float *d = (float *)(void *)(dst + kp), *c = d + kp / 32;
  pack_clear(dst, K);
  const uint8_t *q = w;
  if (dt == TIDE_DTYPE_Q8_0) {
    for (int64_t b = 0; b < nb; b++, q += 34) {
      int32_t sum = 0;
      for (int j = 0; j < TIDE_QK; j++) sum += (int8_t)q[2 + j];
      memcpy(dst + b * TIDE_QK, q + 2, TIDE_QK);
      d[b] = half_at(q);
      c[b] = -128.0f * d[b] * (float)sum;
    }
  } else if (dt == TIDE_DTYPE_Q4_0) {
    for (int64_t b = 0; b < nb; b++, q += 18) {
      for (int j = 0; j < 16; j++) {
        dst[b * TIDE_QK + j] = q[2 + j] & 15;
        dst[b * TIDE_QK + 16 + j] = q[2 + j] >> 4;
      }
      d[b] = half_at(q);
      c[b] = -8.0f * d[b];
    }
  } else { /* q4_k: sub-block j of 32 values has scale d * sc_j and offset -dmin * m_j */
    for (int64_t B = 0; B < K / TIDE_QK_K; B++, q += 144) {
      float dd = half_at(q), dmin = half_at(q + 2);
      const uint8_t *sc = q + 4, *qs = q + 16;
      uint8_t *o = dst + B * TIDE_QK_K;
      for (int j = 0; j < 8; j++) {
        int scj, mj;
        if (j < 4) {
          scj = sc[j] & 63;
          mj = sc[j + 4] & 63;
        } else {
          scj = (sc[j + 4] & 15) | ((sc[j - 4] >> 6) << 4);
          mj = (sc[j + 4] >> 4) | ((sc[j] >> 6) << 4);
        }
        const uint8_t *qj = qs + 32 * (j / 2);
        for (int l = 0; l < 32; l++) o[32 * j + l] = (qj[l] >> (4 * (j % 2))) & 15;
        d[8 * B + j] = dd * (float)scj;
        c[8 * B + j] = -dmin * (float)mj;
      }
    }
  }
}

void tide_quant_packed_tile44_c(const uint8_t *const *x, const uint8_t *const *y, int64_t kp, float *out, int64_t si,
                                int64_t sj, int mi, int nj) {
  int64_t nb = kp / 32;
  for (int i = 0; i < mi; i++)
    for (int j = 0; j < nj; j++) {
      const float *dx = (const float *)(const void *)(x[i] + kp), *dy = (const float *)(const void *)(y[j] + kp);
      float s = 0.0f;
      for (int64_t b = 0; b < nb; b++) {
        int32_t sumi = 0;
        for (int l = 0; l < 32; l++) sumi += (int)x[i][32 * b + l] * (int)(int8_t)y[j][32 * b + l];
        s += dx[b] * dy[b] * (float)sumi + dx[nb + b] * dy[nb + b];
      }
      out[i * si + j * sj] = s;
    }
}

#define QV_NB 64 /* weight rows packed per step (per thread): 64 x 2.5 KiB at K = 2048, in L2 */

typedef struct {
  float *out;
  const uint8_t *ap; /* (M, prb) packed activation rows */
  int64_t prb, kp;
  const tide_tensor_t *b;
  int64_t M, N, K;
  uint8_t *wbuf; /* (threads, QV_NB, prb) */
  int use_vnni;
  atomic_llong next;
} qv_ctx_t;

/* Bytes of b's rows [n0, n0 + nb) when they are one contiguous span (else 0). */
static int64_t panel_span(const tide_tensor_t *b, int64_t n0, int64_t nb, const uint8_t **base) {
  int64_t rb = tide_tensor_row_bytes(b);
  if (nb <= 0 || b->stride[0] != rb) return 0;
  *base = (const uint8_t *)tide_k_row(b, n0);
  return nb * rb;
}

static void qv_task(void *arg, int32_t ith, int32_t nth) {
  (void)nth;
  qv_ctx_t *c = arg;
  uint8_t *W = c->wbuf + (int64_t)ith * QV_NB * c->prb;
  int q8 = c->b->dtype == TIDE_DTYPE_Q8_0;
  int64_t panels = (c->N + QV_NB - 1) / QV_NB;
  /* panels are claimed one ahead: while one is computed, the raw weight rows
   * of the next are prefetched a slice per tile, so that packing it finds
   * them in cache (streamed from memory, packing alone left the cores
   * waiting on DRAM for about a quarter of a 16-row product) */
  int64_t pi = atomic_fetch_add(&c->next, 1);
  while (pi < panels) {
    int64_t pn = atomic_fetch_add(&c->next, 1);
    int64_t n0 = pi * QV_NB, nb = c->N - n0 < QV_NB ? c->N - n0 : QV_NB;
    const uint8_t *pf = NULL;
    int64_t pf_bytes = 0;
    if (pn < panels) {
      int64_t n1 = pn * QV_NB;
      pf_bytes = panel_span(c->b, n1, c->N - n1 < QV_NB ? c->N - n1 : QV_NB, &pf);
    }
    int64_t tiles = (c->M + 3) / 4 * ((nb + 3) / 4), pf_step = (pf_bytes / tiles + 63) / 64 * 64, pf_off = 0;
    for (int64_t j = 0; j < nb; j++) tide_quant_pack_weight(c->b->dtype, tide_k_row(c->b, n0 + j), c->K, W + j * c->prb);
    for (int64_t m0 = 0; m0 < c->M; m0 += 4) {
      int mi = c->M - m0 < 4 ? (int)(c->M - m0) : 4;
      const uint8_t *ar[4];
      for (int r = 0; r < 4; r++) ar[r] = c->ap + (m0 + (r < mi ? r : mi - 1)) * c->prb;
      for (int64_t j0 = 0; j0 < nb; j0 += 4) {
        for (int64_t e = pf_off + pf_step; pf_off < pf_bytes && pf_off < e; pf_off += 64)
          __builtin_prefetch(pf + pf_off, 0, 2);
        int nj = nb - j0 < 4 ? (int)(nb - j0) : 4;
        const uint8_t *wr[4];
        for (int r = 0; r < 4; r++) wr[r] = W + (j0 + (r < nj ? r : nj - 1)) * c->prb;
        float *o = c->out + m0 * c->N + n0 + j0;
        if (q8) { /* x = activations */
          if (c->use_vnni)
            tide_quant_vnni_tile44(ar, wr, c->kp, o, c->N, 1, mi, nj);
          else
            tide_quant_packed_tile44_c(ar, wr, c->kp, o, c->N, 1, mi, nj);
        } else { /* x = weights */
          if (c->use_vnni)
            tide_quant_vnni_tile44(wr, ar, c->kp, o, 1, c->N, nj, mi);
          else
            tide_quant_packed_tile44_c(wr, ar, c->kp, o, 1, c->N, nj, mi);
        }
      }
    }
    pi = pn;
  }
}

typedef struct {
  const float *A;
  int64_t lda, K;
  int32_t dt;
  uint8_t *tmp; /* (threads, arb) */
  int64_t arb;
  uint8_t *ap; /* (M, prb) */
  int64_t prb, M;
} qv_act_ctx_t;

static void qv_act_task(void *arg, int32_t ith, int32_t nth) {
  qv_act_ctx_t *c = arg;
  int64_t lo, hi;
  tide_split_range(c->M, ith, nth, &lo, &hi);
  uint8_t *tmp = c->tmp + ith * c->arb;
  for (int64_t m = lo; m < hi; m++) {
    if (c->dt == TIDE_DTYPE_Q4_K) { /* q8_k activations, as the q4_k dots (and llama.cpp) use */
      tide_quant_act_quantize(TIDE_DTYPE_Q4_K, c->A + m * c->lda, tmp, c->K);
      tide_quant_pack_act_q8_k(tmp, c->K, c->ap + m * c->prb);
    } else {
      tide_quant_act_quantize(TIDE_DTYPE_Q8_0, c->A + m * c->lda, tmp, c->K);
      tide_quant_pack_act(c->dt, tmp, c->K, c->ap + m * c->prb);
    }
  }
}

int tide_quant_matmul_packed(tide_pool_t *pool, float *out, const float *A, int64_t lda, const tide_tensor_t *b,
                             int64_t M, int64_t N, int64_t K, int use_vnni, tide_err_t *err) {
  if ((b->dtype != TIDE_DTYPE_Q8_0 && b->dtype != TIDE_DTYPE_Q4_0 && b->dtype != TIDE_DTYPE_Q4_K) || b->scale ||
      K % tide_dtype_traits(b->dtype)->block_size)
    return tide_err_set(err, TIDE_EINVAL, "matmul: no packed kernel for b of dtype %s",
                        tide_dtype_traits(b->dtype)->name);
  if (use_vnni && !tide_quant_has_vnni512())
    return tide_err_set(err, TIDE_EINVAL, "matmul: the CPU has no AVX-512 VNNI");
  qv_ctx_t c = {.out = out, .b = b, .M = M, .N = N, .K = K, .use_vnni = use_vnni};
  c.kp = tide_quant_packed_kp(K);
  c.prb = packed_row_bytes(K);
  /* q8_0 activations (no aux) for q8_0 / q4_0 weights, q8_k for q4_k */
  int64_t arb = b->dtype == TIDE_DTYPE_Q4_K ? tide_quant_act_row_bytes(TIDE_DTYPE_Q4_K, K)
                                            : tide_quant_act_row_bytes(TIDE_DTYPE_Q8_0, K);
  int32_t nth = tide_pool_threads(pool);
  uint8_t *ap = malloc((size_t)(M * c.prb)), *wbuf = malloc((size_t)(QV_NB * c.prb * nth)),
          *tmp = malloc((size_t)(arb * nth));
  if (!ap || !wbuf || !tmp) {
    free(ap);
    free(wbuf);
    free(tmp);
    return tide_err_set(err, TIDE_ENOMEM, "matmul: out of memory");
  }
  /* rows of A quantized and packed on all threads (serial, this was ~3% of a 1-thread prefill) */
  qv_act_ctx_t ac = {.A = A, .lda = lda, .K = K, .dt = b->dtype, .tmp = tmp, .arb = arb, .ap = ap, .prb = c.prb, .M = M};
  tide_k_run(pool, qv_act_task, &ac, M * K * 2);
  c.ap = ap;
  c.wbuf = wbuf;
  atomic_init(&c.next, 0);
  tide_k_run(pool, qv_task, &c, M * N * K / 100 + N * K / 8);
  free(ap);
  free(wbuf);
  free(tmp);
  return 0;
}

/* ---- prefill: interleaved panels of 16 weight rows (layout in quant.h) ---- */
int64_t tide_quant_il_panel_bytes(int64_t K) { return K / TIDE_QK * (512 + 16 * 8); }

void tide_quant_pack_il(int32_t dt, const tide_tensor_t *b, int64_t n0, int nr, int64_t K, uint8_t *dst) {
  if (nr < 16) memset(dst, 0, (size_t)tide_quant_il_panel_bytes(K));
  /* (16-lane AVX-512 gathers, one per 4-byte slice of the 16 rows, measured no faster than this: ~20 cycles
   * per row and block either way on this CPU) */
  if (tide_k_has_avx2()) { /* same bytes, faster */
    tide_quant_pack_il_avx2(dt, b, n0, nr, K, dst);
    return;
  }
  tide_quant_pack_il_c(dt, b, n0, nr, K, dst);
}

void tide_quant_pack_il_c(int32_t dt, const tide_tensor_t *b, int64_t n0, int nr, int64_t K, uint8_t *dst) {
  int64_t nb = K / TIDE_QK;
  float *d = (float *)(void *)(dst + nb * 512), *c = d + nb * 16;
  if (nr < 16) memset(dst, 0, (size_t)tide_quant_il_panel_bytes(K));
  for (int r = 0; r < nr; r++) {
    const uint8_t *q = (const uint8_t *)tide_k_row(b, n0 + r);
    for (int64_t blk = 0; blk < nb; blk++) {
      uint8_t v[32];
      float dw;
      if (dt == TIDE_DTYPE_Q8_0) {
        const uint8_t *p = q + blk * 34;
        for (int l = 0; l < 32; l++) v[l] = (uint8_t)(p[2 + l] ^ 0x80); /* q + 128 */
        dw = half_at(p);
        c[blk * 16 + r] = -128.0f * dw;
      } else {
        const uint8_t *p = q + blk * 18;
        for (int l = 0; l < 16; l++) {
          v[l] = p[2 + l] & 15;
          v[16 + l] = p[2 + l] >> 4;
        }
        dw = half_at(p);
        c[blk * 16 + r] = -8.0f * dw;
      }
      d[blk * 16 + r] = dw;
      uint8_t *o = dst + blk * 512 + 4 * r;
      for (int kk = 0; kk < 8; kk++) memcpy(o + kk * 64, v + 4 * kk, 4);
    }
  }
}

void tide_quant_il_tile_c(const uint8_t *wp, int64_t nb, const uint8_t *const *a, int64_t kp, float *out,
                          int64_t ldo, int nr, int na) {
  const float *wd = (const float *)(const void *)(wp + nb * 512), *wc = wd + nb * 16;
  for (int j = 0; j < na; j++) {
    const float *da = (const float *)(const void *)(a[j] + kp), *ca = da + kp / 32;
    for (int r = 0; r < nr; r++) {
      float s = 0.0f;
      for (int64_t blk = 0; blk < nb; blk++) {
        int32_t sumi = 0;
        for (int kk = 0; kk < 8; kk++)
          for (int t = 0; t < 4; t++)
            sumi += (int)wp[blk * 512 + kk * 64 + 4 * r + t] * (int)(int8_t)a[j][32 * blk + 4 * kk + t];
        s += (float)sumi * (wd[blk * 16 + r] * da[blk]) + wc[blk * 16 + r] * ca[blk];
      }
      out[j * ldo + r] = s;
    }
  }
}

#define QIL_SUPER 4 /* panels of 16 rows packed per claim: 64 rows, 160 KiB at K = 2048 (in L2) */

typedef struct {
  float *out;
  const uint8_t *ap; /* (M, prb) packed activation rows */
  int64_t prb, kp;
  const tide_tensor_t *b;
  int64_t M, N, K;
  uint8_t *wbuf; /* (threads, QIL_SUPER, panel bytes) */
  int64_t pb;
  int use_vnni;
  atomic_llong next;
} qil_ctx_t;

static void qil_task(void *arg, int32_t ith, int32_t nth) {
  (void)nth;
  qil_ctx_t *c = arg;
  uint8_t *W = c->wbuf + (int64_t)ith * QIL_SUPER * c->pb;
  int64_t nb = c->K / TIDE_QK, supers = (c->N + 16 * QIL_SUPER - 1) / (16 * QIL_SUPER);
  for (;;) {
    int64_t si = atomic_fetch_add(&c->next, 1);
    if (si >= supers) break;
    int64_t n0 = si * 16 * QIL_SUPER;
    int np = 0, nrs[QIL_SUPER];
    for (int p = 0; p < QIL_SUPER && n0 + 16 * p < c->N; p++, np++) {
      int64_t left = c->N - (n0 + 16 * p);
      nrs[p] = left < 16 ? (int)left : 16;
      tide_quant_pack_il(c->b->dtype, c->b, n0 + 16 * p, nrs[p], c->K, W + p * c->pb);
    }
    for (int64_t m0 = 0; m0 < c->M; m0 += 4) {
      int na = c->M - m0 < 4 ? (int)(c->M - m0) : 4;
      const uint8_t *ar[4];
      for (int r = 0; r < 4; r++) ar[r] = c->ap + (m0 + (r < na ? r : na - 1)) * c->prb;
      for (int p = 0; p < np; p++) {
        float *o = c->out + m0 * c->N + n0 + 16 * p;
        if (c->use_vnni)
          tide_quant_il_tile(W + p * c->pb, nb, ar, c->kp, o, c->N, nrs[p], na);
        else
          tide_quant_il_tile_c(W + p * c->pb, nb, ar, c->kp, o, c->N, nrs[p], na);
      }
    }
  }
}

int tide_quant_matmul_il(tide_pool_t *pool, float *out, const float *A, int64_t lda, const tide_tensor_t *b, int64_t M,
                         int64_t N, int64_t K, int use_vnni, tide_err_t *err) {
  if ((b->dtype != TIDE_DTYPE_Q8_0 && b->dtype != TIDE_DTYPE_Q4_0) || b->scale || K % TIDE_QK)
    return tide_err_set(err, TIDE_EINVAL, "matmul: no interleaved kernel for b of dtype %s",
                        tide_dtype_traits(b->dtype)->name);
  if (use_vnni && !tide_quant_has_vnni512())
    return tide_err_set(err, TIDE_EINVAL, "matmul: the CPU has no AVX-512 VNNI");
  qil_ctx_t c = {.out = out, .b = b, .M = M, .N = N, .K = K, .use_vnni = use_vnni};
  c.kp = tide_quant_packed_kp(K);
  c.prb = packed_row_bytes(K);
  c.pb = tide_quant_il_panel_bytes(K);
  int64_t arb = tide_quant_act_row_bytes(TIDE_DTYPE_Q8_0, K);
  int32_t nth = tide_pool_threads(pool);
  uint8_t *ap = malloc((size_t)(M * c.prb)), *wbuf = malloc((size_t)(QIL_SUPER * c.pb * nth)),
          *tmp = malloc((size_t)(arb * nth));
  if (!ap || !wbuf || !tmp) {
    free(ap);
    free(wbuf);
    free(tmp);
    return tide_err_set(err, TIDE_ENOMEM, "matmul: out of memory");
  }
  /* activation rows: q8_0 blocks repacked as for q4_0 weights (signed bytes, da, da * sum q) */
  qv_act_ctx_t ac = {.A = A, .lda = lda, .K = K, .dt = TIDE_DTYPE_Q4_0, .tmp = tmp, .arb = arb, .ap = ap,
                     .prb = c.prb, .M = M};
  tide_k_run(pool, qv_act_task, &ac, M * K * 2);
  c.ap = ap;
  c.wbuf = wbuf;
  atomic_init(&c.next, 0);
  tide_k_run(pool, qil_task, &c, M * N * K / 200 + N * K / 8);
  free(ap);
  free(wbuf);
  free(tmp);
  return 0;
}
