/* quant_avx2.c: AVX2 dots of GGML block rows with quantized activations
 * (compiled with -mavx2 -mfma -mf16c; called only after tide_k_has_avx2()).
 *
 * Integer products go through _mm256_maddubs_epi16 (unsigned x signed bytes,
 * pairs summed to int16) and _mm256_madd_epi16 (pairs to int32). Its int16
 * saturation is never reached: q8 activations are within [-127, 127] (our
 * quantizers), so a pair is at most 2*128*127 for signed q8 weights (made
 * unsigned with _mm256_sign_epi8), 2*15*127 for 4-bit and 2*63*127 for 6-bit
 * values. Same integer sums per block as kernels/quant_dot.c. */
#include <immintrin.h>
#include <math.h>

#include "kern.h"
#include "quant.h"

static inline float half_at(const uint8_t *p) {
  uint16_t h;
  memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

static inline float hsum_ps(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
  return _mm_cvtss_f32(lo);
}

static inline int32_t hsum_epi32(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(s);
}

/* 8 int32 partial sums of x . y for 32 signed bytes each. */
static inline __m256i dot_i8(__m256i x, __m256i y) {
  __m256i p = _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
  return _mm256_madd_epi16(p, _mm256_set1_epi16(1));
}

float tide_quant_dot_q8_0_avx2(const void *w, const void *a, int64_t n) {
  const uint8_t *x = w, *y = a;
  int64_t nb = n / TIDE_QK, b = 0;
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  for (; b + 2 <= nb; b += 2, x += 68, y += 68) {
    __m256i p0 = dot_i8(_mm256_loadu_si256((const __m256i *)(x + 2)), _mm256_loadu_si256((const __m256i *)(y + 2)));
    __m256i p1 = dot_i8(_mm256_loadu_si256((const __m256i *)(x + 36)), _mm256_loadu_si256((const __m256i *)(y + 36)));
    acc0 = _mm256_fmadd_ps(_mm256_set1_ps(half_at(x) * half_at(y)), _mm256_cvtepi32_ps(p0), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_set1_ps(half_at(x + 34) * half_at(y + 34)), _mm256_cvtepi32_ps(p1), acc1);
  }
  for (; b < nb; b++, x += 34, y += 34) {
    __m256i p = dot_i8(_mm256_loadu_si256((const __m256i *)(x + 2)), _mm256_loadu_si256((const __m256i *)(y + 2)));
    acc0 = _mm256_fmadd_ps(_mm256_set1_ps(half_at(x) * half_at(y)), _mm256_cvtepi32_ps(p), acc0);
  }
  return hsum_ps(_mm256_add_ps(acc0, acc1));
}

/* 32 unsigned values 0..15 of a q4_0 block (the value + 8): low nibbles first, then high nibbles. */
static inline __m256i q4_0_values_u(const uint8_t *qs) {
  __m128i t = _mm_loadu_si128((const __m128i *)qs);
  return _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(t, 4), t), _mm256_set1_epi8(15));
}

/* q4_0: sum_b dw_b * (da_b * sum_j u_j * qa_j - 8 * da_b * sum_j qa_j) with u = q + 8 unsigned, so
 * maddubs takes the weights directly; {da_b, da_b * sum qa} come with the activation row. */
float tide_quant_dot_q4_0_avx2(const void *w, const void *a, int64_t n) {
  const uint8_t *x = w, *y = a;
  int64_t nb = n / TIDE_QK, b = 0;
  const uint8_t *aux = y + nb * 34;
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  float off0 = 0.0f, off1 = 0.0f;
  for (; b + 2 <= nb; b += 2, x += 36, y += 68) {
    float ds[4], d0 = half_at(x), d1 = half_at(x + 18);
    memcpy(ds, aux + 8 * b, 16);
    __m256i p0 = _mm256_madd_epi16(
        _mm256_maddubs_epi16(q4_0_values_u(x + 2), _mm256_loadu_si256((const __m256i *)(y + 2))), ones);
    __m256i p1 = _mm256_madd_epi16(
        _mm256_maddubs_epi16(q4_0_values_u(x + 20), _mm256_loadu_si256((const __m256i *)(y + 36))), ones);
    acc0 = _mm256_fmadd_ps(_mm256_set1_ps(d0 * ds[0]), _mm256_cvtepi32_ps(p0), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_set1_ps(d1 * ds[2]), _mm256_cvtepi32_ps(p1), acc1);
    off0 += d0 * ds[1];
    off1 += d1 * ds[3];
  }
  for (; b < nb; b++, x += 18, y += 34) {
    float ds[2], d0 = half_at(x);
    memcpy(ds, aux + 8 * b, 8);
    __m256i p = _mm256_madd_epi16(
        _mm256_maddubs_epi16(q4_0_values_u(x + 2), _mm256_loadu_si256((const __m256i *)(y + 2))), ones);
    acc0 = _mm256_fmadd_ps(_mm256_set1_ps(d0 * ds[0]), _mm256_cvtepi32_ps(p), acc0);
    off0 += d0 * ds[1];
  }
  return hsum_ps(_mm256_add_ps(acc0, acc1)) - 8.0f * (off0 + off1);
}

/* q4_k: the 6-bit scales and mins of a super-block unpacked to bytes,
 * scales in bytes 0..7 and mins in bytes 8..15. */
static inline __m128i q4_k_scales_mins(const uint8_t *s) {
  uint32_t u[4];
  memcpy(u, s, 12);
  u[3] = ((u[2] >> 4) & 0x0f0f0f0fu) | (((u[1] >> 6) & 0x03030303u) << 4); /* mins 4..7 */
  uint32_t m03 = u[1] & 0x3f3f3f3fu;                                         /* mins 0..3 */
  u[1] = (u[2] & 0x0f0f0f0fu) | (((u[0] >> 6) & 0x03030303u) << 4);         /* scales 4..7 */
  u[2] = m03;
  u[0] &= 0x3f3f3f3fu; /* scales 0..3 */
  return _mm_loadu_si128((const __m128i *)u);
}

/* pshufb control broadcasting the int16 element j of each 128-bit lane */
static inline __m256i bcast16_ctrl(int j) { return _mm256_set1_epi16((int16_t)(((2 * j + 1) << 8) | (2 * j))); }

float tide_quant_dot_q4_k_avx2(const void *w, const void *a, int64_t n) {
  const uint8_t *x = w, *y = a;
  const __m256i m4 = _mm256_set1_epi8(15);
  __m256 acc = _mm256_setzero_ps();
  __m128 accm = _mm_setzero_ps();
  for (int64_t b = 0; b < n / TIDE_QK_K; b++, x += 144, y += 292) {
    float da;
    memcpy(&da, y, 4);
    const uint8_t *q = x + 16;
    const int8_t *qy = (const int8_t *)(y + 4);
    __m256i sm = _mm256_cvtepu8_epi16(q4_k_scales_mins(x + 4)); /* int16: scales 0..7 | mins 0..7 */
    /* mins against the sums of each 32 activations (pairs of the 16-value sums) */
    __m128i bs = _mm_hadd_epi16(_mm_loadu_si128((const __m128i *)(y + 260)), _mm_loadu_si128((const __m128i *)(y + 276)));
    __m128i pm = _mm_madd_epi16(_mm256_extracti128_si256(sm, 1), bs);
    accm = _mm_fmadd_ps(_mm_set1_ps(da * half_at(x + 2)), _mm_cvtepi32_ps(pm), accm);
    __m256i sc = _mm256_permute2x128_si256(sm, sm, 0x00); /* scales in both lanes */
    __m256i sumi = _mm256_setzero_si256();
#pragma GCC unroll 4
    for (int c = 0; c < 4; c++) {
      __m256i q4 = _mm256_loadu_si256((const __m256i *)(q + 32 * c));
      __m256i lo = _mm256_and_si256(q4, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q4, 4), m4);
      __m256i p0 = _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)(qy + 64 * c)));
      __m256i p1 = _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(qy + 64 * c + 32)));
      p0 = _mm256_madd_epi16(p0, _mm256_shuffle_epi8(sc, bcast16_ctrl(2 * c)));
      p1 = _mm256_madd_epi16(p1, _mm256_shuffle_epi8(sc, bcast16_ctrl(2 * c + 1)));
      sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(p0, p1));
    }
    acc = _mm256_fmadd_ps(_mm256_set1_ps(da * half_at(x)), _mm256_cvtepi32_ps(sumi), acc);
  }
  __m128 m = _mm_add_ps(accm, _mm_movehl_ps(accm, accm));
  m = _mm_add_ss(m, _mm_movehdup_ps(m));
  return hsum_ps(acc) - _mm_cvtss_f32(m);
}

/* q6_k: the 64 6-bit values (0..63) of one half's four 32-value chunks. */
static inline void q6_k_values(const uint8_t *ql, const uint8_t *qh, __m256i q[4]) {
  const __m256i m4 = _mm256_set1_epi8(15), m2 = _mm256_set1_epi8(3);
  __m256i l0 = _mm256_loadu_si256((const __m256i *)ql), l1 = _mm256_loadu_si256((const __m256i *)(ql + 32));
  __m256i hb = _mm256_loadu_si256((const __m256i *)qh);
  q[0] = _mm256_or_si256(_mm256_and_si256(l0, m4), _mm256_slli_epi16(_mm256_and_si256(hb, m2), 4));
  q[1] = _mm256_or_si256(_mm256_and_si256(l1, m4), _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 2), m2), 4));
  q[2] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l0, 4), m4),
                         _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 4), m2), 4));
  q[3] = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(l1, 4), m4),
                         _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hb, 6), m2), 4));
}

/* q6_k: int16 scales for chunk k of half h: scale 8h+2k in the low lane, 8h+2k+1 in the high lane.
 * sc8 holds the 16 int8 scales. */
static const uint8_t q6_k_shuf[8][16] = { /* pshufb controls: 8 x byte g, then 8 x byte g+1, for g = 0, 2, .. 14 */
    {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1},         {2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3},
    {4, 4, 4, 4, 4, 4, 4, 4, 5, 5, 5, 5, 5, 5, 5, 5},         {6, 6, 6, 6, 6, 6, 6, 6, 7, 7, 7, 7, 7, 7, 7, 7},
    {8, 8, 8, 8, 8, 8, 8, 8, 9, 9, 9, 9, 9, 9, 9, 9},         {10, 10, 10, 10, 10, 10, 10, 10, 11, 11, 11, 11, 11, 11, 11, 11},
    {12, 12, 12, 12, 12, 12, 12, 12, 13, 13, 13, 13, 13, 13, 13, 13}, {14, 14, 14, 14, 14, 14, 14, 14, 15, 15, 15, 15, 15, 15, 15, 15},
};
static inline __m256i q6_k_scale(__m128i sc8, int g) {
  return _mm256_cvtepi8_epi16(_mm_shuffle_epi8(sc8, _mm_loadu_si128((const __m128i *)q6_k_shuf[g / 2])));
}

float tide_quant_dot_q6_k_avx2(const void *w, const void *a, int64_t n) {
  const uint8_t *x = w, *y = a;
  __m256 acc = _mm256_setzero_ps();
  for (int64_t b = 0; b < n / TIDE_QK_K; b++, x += 210, y += 292) {
    float da;
    memcpy(&da, y, 4);
    const int8_t *qy = (const int8_t *)(y + 4);
    __m128i sc8 = _mm_loadu_si128((const __m128i *)(x + 192));
    /* the -32 offset: 32 * sum_g sc_g * bsum_g */
    __m256i bias = _mm256_madd_epi16(_mm256_cvtepi8_epi16(sc8), _mm256_loadu_si256((const __m256i *)(y + 260)));
    __m256i sumi = _mm256_setzero_si256();
#pragma GCC unroll 2
    for (int h = 0; h < 2; h++) {
      __m256i q[4];
      q6_k_values(x + 64 * h, x + 128 + 32 * h, q);
#pragma GCC unroll 4
      for (int k = 0; k < 4; k++) {
        __m256i p = _mm256_maddubs_epi16(q[k], _mm256_loadu_si256((const __m256i *)(qy + 128 * h + 32 * k)));
        sumi = _mm256_add_epi32(sumi, _mm256_madd_epi16(p, q6_k_scale(sc8, 8 * h + 2 * k)));
      }
    }
    sumi = _mm256_sub_epi32(sumi, _mm256_slli_epi32(bias, 5));
    acc = _mm256_fmadd_ps(_mm256_set1_ps(da * half_at(x + 208)), _mm256_cvtepi32_ps(sumi), acc);
  }
  return hsum_ps(acc);
}

/* ---- tiles: one weight row against 4 activation rows, the weight decoded once per block ----
 * out[m] = dot(w, y[m]) for m < 4 (callers repeat a row pointer to fill the 4). */

void tide_quant_tile4_q8_0_avx2(const void *w, const void *const *a, int64_t n, float *out) {
  const uint8_t *x = w, *y0 = a[0], *y1 = a[1], *y2 = a[2], *y3 = a[3];
  __m256 c0 = _mm256_setzero_ps(), c1 = _mm256_setzero_ps(), c2 = _mm256_setzero_ps(), c3 = _mm256_setzero_ps();
  const __m256i ones = _mm256_set1_epi16(1);
  for (int64_t b = 0; b < n / TIDE_QK; b++, x += 34, y0 += 34, y1 += 34, y2 += 34, y3 += 34) {
    __m256i q = _mm256_loadu_si256((const __m256i *)(x + 2));
    __m256i aq = _mm256_sign_epi8(q, q);
    float d = half_at(x);
#define ROW(c, y)                                                                                             \
  c = _mm256_fmadd_ps(                                                                                        \
      _mm256_set1_ps(d * half_at(y)),                                                                         \
      _mm256_cvtepi32_ps(_mm256_madd_epi16(                                                                   \
          _mm256_maddubs_epi16(aq, _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)((y) + 2)), q)), ones)), \
      c)
    ROW(c0, y0);
    ROW(c1, y1);
    ROW(c2, y2);
    ROW(c3, y3);
#undef ROW
  }
  out[0] = hsum_ps(c0);
  out[1] = hsum_ps(c1);
  out[2] = hsum_ps(c2);
  out[3] = hsum_ps(c3);
}

void tide_quant_tile4_q4_0_avx2(const void *w, const void *const *a, int64_t n, float *out) {
  const uint8_t *x = w;
  int64_t nb = n / TIDE_QK;
  const uint8_t *y[4] = {a[0], a[1], a[2], a[3]};
  const uint8_t *aux[4] = {y[0] + nb * 34, y[1] + nb * 34, y[2] + nb * 34, y[3] + nb * 34};
  const __m256i ones = _mm256_set1_epi16(1);
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  float off[4] = {0, 0, 0, 0};
  for (int64_t b = 0; b < nb; b++, x += 18) {
    __m256i u = q4_0_values_u(x + 2);
    float d = half_at(x);
#pragma GCC unroll 4
    for (int r = 0; r < 4; r++) {
      float ds[2];
      memcpy(ds, aux[r] + 8 * b, 8);
      __m256i p = _mm256_madd_epi16(
          _mm256_maddubs_epi16(u, _mm256_loadu_si256((const __m256i *)(y[r] + 34 * b + 2))), ones);
      acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(d * ds[0]), _mm256_cvtepi32_ps(p), acc[r]);
      off[r] += d * ds[1];
    }
  }
  for (int r = 0; r < 4; r++) out[r] = hsum_ps(acc[r]) - 8.0f * off[r];
}

void tide_quant_tile4_q4_k_avx2(const void *w, const void *const *a, int64_t n, float *out) {
  const uint8_t *x = w;
  const uint8_t *y[4] = {a[0], a[1], a[2], a[3]};
  const __m256i m4 = _mm256_set1_epi8(15);
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  __m128 accm[4] = {_mm_setzero_ps(), _mm_setzero_ps(), _mm_setzero_ps(), _mm_setzero_ps()};
  for (int64_t b = 0; b < n / TIDE_QK_K; b++, x += 144) {
    const uint8_t *q = x + 16;
    __m256i sm = _mm256_cvtepu8_epi16(q4_k_scales_mins(x + 4));
    __m128i m16 = _mm256_extracti128_si256(sm, 1);
    __m256i sc = _mm256_permute2x128_si256(sm, sm, 0x00);
    float d = half_at(x), dmin = half_at(x + 2);
    __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
#pragma GCC unroll 4
    for (int c = 0; c < 4; c++) {
      __m256i q4 = _mm256_loadu_si256((const __m256i *)(q + 32 * c));
      __m256i lo = _mm256_and_si256(q4, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q4, 4), m4);
      __m256i slo = _mm256_shuffle_epi8(sc, bcast16_ctrl(2 * c)), shi = _mm256_shuffle_epi8(sc, bcast16_ctrl(2 * c + 1));
#define ROWK(acc_i, yi)                                                                                             \
  do {                                                                                                              \
    const int8_t *qy = (const int8_t *)((yi) + 4) + 64 * c;                                                         \
    __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)qy)), slo);         \
    __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(qy + 32))), shi); \
    acc_i = _mm256_add_epi32(acc_i, _mm256_add_epi32(p0, p1));                                                      \
  } while (0)
      ROWK(s0, y[0]);
      ROWK(s1, y[1]);
      ROWK(s2, y[2]);
      ROWK(s3, y[3]);
#undef ROWK
    }
    __m256i si[4] = {s0, s1, s2, s3};
    for (int r = 0; r < 4; r++) {
      float da;
      memcpy(&da, y[r], 4);
      acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(da * d), _mm256_cvtepi32_ps(si[r]), acc[r]);
      __m128i bs = _mm_hadd_epi16(_mm_loadu_si128((const __m128i *)(y[r] + 260)),
                                  _mm_loadu_si128((const __m128i *)(y[r] + 276)));
      accm[r] = _mm_fmadd_ps(_mm_set1_ps(da * dmin), _mm_cvtepi32_ps(_mm_madd_epi16(m16, bs)), accm[r]);
      y[r] += 292;
    }
  }
  for (int r = 0; r < 4; r++) {
    __m128 m = _mm_add_ps(accm[r], _mm_movehl_ps(accm[r], accm[r]));
    m = _mm_add_ss(m, _mm_movehdup_ps(m));
    out[r] = hsum_ps(acc[r]) - _mm_cvtss_f32(m);
  }
}

void tide_quant_tile4_q6_k_avx2(const void *w, const void *const *a, int64_t n, float *out) {
  const uint8_t *x = w;
  const uint8_t *y[4] = {a[0], a[1], a[2], a[3]};
  __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
  for (int64_t b = 0; b < n / TIDE_QK_K; b++, x += 210) {
    __m128i sc8 = _mm_loadu_si128((const __m128i *)(x + 192));
    __m256i sc16 = _mm256_cvtepi8_epi16(sc8);
    __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
#pragma GCC unroll 2
    for (int h = 0; h < 2; h++) {
      __m256i q[4];
      q6_k_values(x + 64 * h, x + 128 + 32 * h, q);
#pragma GCC unroll 4
      for (int k = 0; k < 4; k++) {
        __m256i s = q6_k_scale(sc8, 8 * h + 2 * k);
        int64_t off = 4 + 128 * h + 32 * k;
#define ROW6(acc_i, yi) \
  acc_i = _mm256_add_epi32(acc_i, _mm256_madd_epi16(_mm256_maddubs_epi16(q[k], _mm256_loadu_si256((const __m256i *)((yi) + off))), s))
        ROW6(s0, y[0]);
        ROW6(s1, y[1]);
        ROW6(s2, y[2]);
        ROW6(s3, y[3]);
#undef ROW6
      }
    }
    float d = half_at(x + 208);
    __m256i si[4] = {s0, s1, s2, s3};
    for (int r = 0; r < 4; r++) {
      float da;
      memcpy(&da, y[r], 4);
      __m256i bias = _mm256_madd_epi16(sc16, _mm256_loadu_si256((const __m256i *)(y[r] + 260)));
      __m256i v = _mm256_sub_epi32(si[r], _mm256_slli_epi32(bias, 5));
      acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(da * d), _mm256_cvtepi32_ps(v), acc[r]);
      y[r] += 292;
    }
  }
  for (int r = 0; r < 4; r++) out[r] = hsum_ps(acc[r]);
}

/* ---- activation quantizers: the same bytes as the references in kernels/quant.c ---- */

/* 32 int32 lanes (4 vectors) to 32 int8 in order (saturating). */
static inline __m256i pack_i32_i8(__m256i i0, __m256i i1, __m256i i2, __m256i i3) {
  __m256i a = _mm256_packs_epi32(i0, i1), b = _mm256_packs_epi32(i2, i3);
  return _mm256_permutevar8x32_epi32(_mm256_packs_epi16(a, b), _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

static inline float hmax_ps(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}

/* Nearest integer, ties to even (a NaN lane gives 0, as the portable quantizer). */
static inline __m256i round_even_epi32(__m256 p) {
  __m256 t = _mm256_round_ps(p, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  t = _mm256_and_ps(t, _mm256_cmp_ps(p, p, _CMP_ORD_Q));
  return _mm256_cvttps_epi32(t);
}

/* q8_0 rows; when aux is not NULL, also {d, d * sum q} per block there (floats, any alignment). */
void tide_quant_act_q8_0_avx2(const float *x, void *dst, int64_t n, void *aux) {
  uint8_t *b = dst, *ax = aux;
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (int64_t i = 0; i < n / TIDE_QK; i++, b += 34, x += TIDE_QK) {
    __m256 v[4];
    __m256 m = _mm256_setzero_ps();
    for (int k = 0; k < 4; k++) {
      v[k] = _mm256_loadu_ps(x + 8 * k);
      m = _mm256_max_ps(_mm256_andnot_ps(sign, v[k]), m); /* a NaN value is skipped, as fmaxf does */
    }
    float amax = hmax_ps(m);
    float d = amax / 127.0f;
    float id = amax != 0.0f ? 127.0f / amax : 0.0f; /* as llama.cpp's activation quantizer (see quant.h) */
    uint16_t h = tide_f32_to_f16(d);
    memcpy(b, &h, 2);
    __m256 vid = _mm256_set1_ps(id);
    __m256i q[4];
    for (int k = 0; k < 4; k++) q[k] = round_even_epi32(_mm256_mul_ps(v[k], vid));
    _mm256_storeu_si256((__m256i *)(b + 2), pack_i32_i8(q[0], q[1], q[2], q[3]));
    if (ax) {
      int32_t s = hsum_epi32(_mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3])));
      float ds[2] = {_cvtsh_ss(h), _cvtsh_ss(h) * (float)s};
      memcpy(ax + 8 * i, ds, 8);
    }
  }
}

void tide_quant_act_q8_k_avx2(const float *x, void *dst, int64_t n) {
  uint8_t *b = dst;
  const __m256 sign = _mm256_set1_ps(-0.0f);
  for (int64_t i = 0; i < n / TIDE_QK_K; i++, b += 292, x += TIDE_QK_K) {
    __m256 m = _mm256_setzero_ps();
    for (int k = 0; k < 32; k++) m = _mm256_max_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + 8 * k)), m);
    float amax = hmax_ps(m);
    if (amax == 0.0f || !(amax <= 3.4028235e38f)) { /* zero or not finite: zeros, as the reference */
      memset(b, 0, 292);
      continue;
    }
    float max = 0.0f; /* the first value of largest magnitude, sign kept */
    for (int j = 0; j < TIDE_QK_K; j++)
      if (fabsf(x[j]) == amax) {
        max = x[j];
        break;
      }
    float iscale = -127.0f / max;
    __m256 vs = _mm256_set1_ps(iscale);
    for (int g = 0; g < 8; g++) { /* 32 values: 2 groups of 16 for bsums */
      __m256i q[4];
      for (int k = 0; k < 4; k++) {
        __m256 p = _mm256_mul_ps(_mm256_loadu_ps(x + 32 * g + 8 * k), vs);
        __m256 r = _mm256_round_ps(p, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); /* ties to even, as nearest_int */
        q[k] = _mm256_cvtps_epi32(_mm256_and_ps(r, _mm256_cmp_ps(p, p, _CMP_ORD_Q)));
        q[k] = _mm256_min_epi32(q[k], _mm256_set1_epi32(127));
      }
      _mm256_storeu_si256((__m256i *)(b + 4 + 32 * g), pack_i32_i8(q[0], q[1], q[2], q[3]));
      int16_t s[2] = {(int16_t)hsum_epi32(_mm256_add_epi32(q[0], q[1])), (int16_t)hsum_epi32(_mm256_add_epi32(q[2], q[3]))};
      memcpy(b + 260 + 4 * g, s, 4);
    }
    float d = 1.0f / iscale;
    memcpy(b, &d, 4);
  }
}

/* ---- AVX-512 VNNI gemm tiles on packed rows (see tide_quant_gemm_vnni in quant.h) ----
 * Compiled for avx512f/bw/vl/vnni through target attributes; called only when
 * tide_quant_has_vnni512(). A packed row: kp bytes (kp a multiple of 512), then
 * kp/32 floats d, then kp/32 floats c. Roles: the x rows give vpdpbusd's
 * unsigned bytes, the y rows its signed bytes. (Interleaving the two blocks of
 * each 64 bytes by 4 bytes, so one vbroadcastf32x2 gives the lanes' scales,
 * measured no faster.) */
#define VNNI_TARGET __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))

VNNI_TARGET static inline __m512 scales2(const float *d) { /* d[0] x 8 | d[1] x 8: one 8-byte load, one permute */
  const __m512i idx = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
  return _mm512_permutexvar_ps(idx, _mm512_castpd_ps(_mm512_castpd128_pd512(_mm_load_sd((const double *)(const void *)d))));
}

VNNI_TARGET static inline float hsum512(__m512 v) { return _mm512_reduce_add_ps(v); }

/* out[i * si + j * sj] = sum_b dx_i[b] dy_j[b] (x_i . y_j)_b + sum_b cx_i[b] cy_j[b], i < mi, j < nj
 * (all 4 x 4 computed: callers repeat row pointers). */
VNNI_TARGET void tide_quant_vnni_tile44(const uint8_t *const *x, const uint8_t *const *y, int64_t kp, float *out,
                                        int64_t si, int64_t sj, int mi, int nj) {
  /* Written out by hand: with arrays of accumulators GCC 12 kept the 4 y rows and their scales on the
   * stack and reloaded them for every x row (43 spill moves per 64 bytes); this form keeps the 16
   * accumulators, 4 y vectors and 4 y scale vectors in registers (1.3x the throughput). */
  const uint8_t *x0 = x[0], *x1 = x[1], *x2 = x[2], *x3 = x[3], *y0 = y[0], *y1 = y[1], *y2 = y[2], *y3 = y[3];
  const float *fx0 = (const float *)(const void *)(x0 + kp), *fx1 = (const float *)(const void *)(x1 + kp);
  const float *fx2 = (const float *)(const void *)(x2 + kp), *fx3 = (const float *)(const void *)(x3 + kp);
  const float *fy0 = (const float *)(const void *)(y0 + kp), *fy1 = (const float *)(const void *)(y1 + kp);
  const float *fy2 = (const float *)(const void *)(y2 + kp), *fy3 = (const float *)(const void *)(y3 + kp);
  __m512 a00 = _mm512_setzero_ps(), a01 = a00, a02 = a00, a03 = a00, a10 = a00, a11 = a00, a12 = a00, a13 = a00;
  __m512 a20 = a00, a21 = a00, a22 = a00, a23 = a00, a30 = a00, a31 = a00, a32 = a00, a33 = a00;
  const int64_t nb = kp / 32;
  for (int64_t k = 0, b = 0; k < kp; k += 64, b += 2) {
    __m512i v0 = _mm512_loadu_si512((const void *)(y0 + k)), v1 = _mm512_loadu_si512((const void *)(y1 + k));
    __m512i v2 = _mm512_loadu_si512((const void *)(y2 + k)), v3 = _mm512_loadu_si512((const void *)(y3 + k));
    __m512 e0 = scales2(fy0 + b), e1 = scales2(fy1 + b), e2 = scales2(fy2 + b), e3 = scales2(fy3 + b);
#define TROW(X, FX, A0, A1, A2, A3)                                                                         \
  do {                                                                                                      \
    __m512i xv = _mm512_loadu_si512((const void *)((X) + k));                                               \
    __m512 dx = scales2((FX) + b);                                                                          \
    A0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), xv, v0)),           \
                         _mm512_mul_ps(dx, e0), A0);                                                        \
    A1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), xv, v1)),           \
                         _mm512_mul_ps(dx, e1), A1);                                                        \
    A2 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), xv, v2)),           \
                         _mm512_mul_ps(dx, e2), A2);                                                        \
    A3 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_dpbusd_epi32(_mm512_setzero_si512(), xv, v3)),           \
                         _mm512_mul_ps(dx, e3), A3);                                                        \
  } while (0)
    TROW(x0, fx0, a00, a01, a02, a03);
    TROW(x1, fx1, a10, a11, a12, a13);
    TROW(x2, fx2, a20, a21, a22, a23);
    TROW(x3, fx3, a30, a31, a32, a33);
#undef TROW
  }
  __m512 acc[4][4] = {{a00, a01, a02, a03}, {a10, a11, a12, a13}, {a20, a21, a22, a23}, {a30, a31, a32, a33}};
  for (int i = 0; i < mi; i++) {
    const float *cx = (const float *)(const void *)(x[i] + kp) + nb;
    for (int j = 0; j < nj; j++) {
      const float *cy = (const float *)(const void *)(y[j] + kp) + nb;
      __m512 o = acc[i][j];
      for (int64_t b = 0; b < nb; b += 16) o = _mm512_fmadd_ps(_mm512_loadu_ps(cx + b), _mm512_loadu_ps(cy + b), o);
      out[i * si + j * sj] = hsum512(o);
    }
  }
}

/* ---- packing rows for the VNNI tiles (layout in quant.h): q8_0 / q4_0 weights, the same bytes and
 * floats as tide_quant_pack_weight (K a multiple of 32; the padding past K is left to the caller) ---- */
void tide_quant_pack_weight_avx2(int32_t dt, const void *w, int64_t K, uint8_t *dst) {
  int64_t kp = tide_quant_packed_kp(K), nb = K / TIDE_QK;
  float *d = (float *)(void *)(dst + kp), *c = d + kp / 32;
  const uint8_t *q = w;
  if (dt == TIDE_DTYPE_Q8_0) {
    const __m256i ones = _mm256_set1_epi8(1);
    for (int64_t b = 0; b < nb; b++, q += 34) {
      __m256i v = _mm256_loadu_si256((const __m256i *)(q + 2));
      _mm256_storeu_si256((__m256i *)(dst + b * TIDE_QK), v);
      /* sum of the 32 signed bytes: maddubs(1, v) gives pairs as int16, madd to int32 */
      int32_t sum = hsum_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(ones, v), _mm256_set1_epi16(1)));
      d[b] = half_at(q);
      c[b] = -128.0f * d[b] * (float)sum;
    }
  } else {
    for (int64_t b = 0; b < nb; b++, q += 18) {
      _mm256_storeu_si256((__m256i *)(dst + b * TIDE_QK), q4_0_values_u(q + 2));
      d[b] = half_at(q);
      c[b] = -8.0f * d[b];
    }
  }
}

/* q8_0 activation rows packed: for q8_0 weights (x side) the bytes + 128 and c = d; for q4_0 / q4_k
 * weights (y side) the bytes and c = d * sum(q). */
void tide_quant_pack_act_avx2(int32_t dt, const void *a, int64_t K, uint8_t *dst) {
  int64_t kp = tide_quant_packed_kp(K), nb = K / TIDE_QK;
  float *d = (float *)(void *)(dst + kp), *c = d + kp / 32;
  const uint8_t *q = a;
  const __m256i ones = _mm256_set1_epi8(1), flip = _mm256_set1_epi8((char)0x80);
  for (int64_t b = 0; b < nb; b++, q += 34) {
    __m256i v = _mm256_loadu_si256((const __m256i *)(q + 2));
    d[b] = half_at(q);
    if (dt == TIDE_DTYPE_Q8_0) {
      _mm256_storeu_si256((__m256i *)(dst + b * TIDE_QK), _mm256_xor_si256(v, flip));
      c[b] = d[b];
    } else {
      _mm256_storeu_si256((__m256i *)(dst + b * TIDE_QK), v);
      int32_t sum = hsum_epi32(_mm256_madd_epi16(_mm256_maddubs_epi16(ones, v), _mm256_set1_epi16(1)));
      c[b] = d[b] * (float)sum;
    }
  }
}

/* Rows n0 .. n0+nr-1 of b into an interleaved 16-row panel (layout in quant.h; tide_quant_pack_il clears a
 * partial panel first): the same bytes and floats as the portable loop. */
void tide_quant_pack_il_avx2(int32_t dt, const tide_tensor_t *b, int64_t n0, int nr, int64_t K, uint8_t *dst) {
  int64_t nb = K / TIDE_QK;
  float *d = (float *)(void *)(dst + nb * 512), *c = d + nb * 16;
  const __m256i flip = _mm256_set1_epi8((char)0x80);
  for (int r = 0; r < nr; r++) {
    const uint8_t *q = (const uint8_t *)tide_k_row(b, n0 + r);
    for (int64_t blk = 0; blk < nb; blk++) {
      __m256i v;
      float dw;
      if (dt == TIDE_DTYPE_Q8_0) {
        const uint8_t *p = q + blk * 34;
        v = _mm256_xor_si256(_mm256_loadu_si256((const __m256i *)(p + 2)), flip);
        dw = half_at(p);
        c[blk * 16 + r] = -128.0f * dw;
      } else {
        const uint8_t *p = q + blk * 18;
        v = q4_0_values_u(p + 2);
        dw = half_at(p);
        c[blk * 16 + r] = -8.0f * dw;
      }
      d[blk * 16 + r] = dw;
      uint8_t *o = dst + blk * 512 + 4 * r;
      __m128i lo = _mm256_castsi256_si128(v), hi = _mm256_extracti128_si256(v, 1);
      int32_t w[8] = {_mm_cvtsi128_si32(lo), _mm_extract_epi32(lo, 1), _mm_extract_epi32(lo, 2), _mm_extract_epi32(lo, 3),
                      _mm_cvtsi128_si32(hi), _mm_extract_epi32(hi, 1), _mm_extract_epi32(hi, 2), _mm_extract_epi32(hi, 3)};
      for (int kk = 0; kk < 8; kk++) memcpy(o + kk * 64, &w[kk], 4);
    }
  }
}

/* ---- dequantization to f32 (panels for sgemm): the same floats as kernels/quant.c,
 * same operations in the same order (products, then the q4_k min subtracted, no FMA) ---- */

/* y[0..15] = s_lo * x[0..15], y[16..31] = s_hi * x[16..31] for 32 signed bytes x. */
static inline void store_i8x32(float *y, __m256i x, __m256 s_lo, __m256 s_hi) {
  __m128i lo = _mm256_castsi256_si128(x), hi = _mm256_extracti128_si256(x, 1);
  _mm256_storeu_ps(y, _mm256_mul_ps(s_lo, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo))));
  _mm256_storeu_ps(y + 8, _mm256_mul_ps(s_lo, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8)))));
  _mm256_storeu_ps(y + 16, _mm256_mul_ps(s_hi, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi))));
  _mm256_storeu_ps(y + 24, _mm256_mul_ps(s_hi, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8)))));
}

void tide_quant_to_float_q8_0_avx2(const void *src, float *dst, int64_t n) {
  const uint8_t *b = src;
  for (int64_t i = 0; i < n / TIDE_QK; i++, b += 34) {
    __m256 d = _mm256_set1_ps(half_at(b));
    store_i8x32(dst + i * TIDE_QK, _mm256_loadu_si256((const __m256i *)(b + 2)), d, d);
  }
}

void tide_quant_to_float_q4_0_avx2(const void *src, float *dst, int64_t n) {
  const uint8_t *b = src;
  for (int64_t i = 0; i < n / TIDE_QK; i++, b += 18) {
    __m256 d = _mm256_set1_ps(half_at(b));
    store_i8x32(dst + i * TIDE_QK, _mm256_sub_epi8(q4_0_values_u(b + 2), _mm256_set1_epi8(8)), d, d);
  }
}

/* 32 unsigned 4-bit values times d, minus m. */
static inline void store_u4x32(float *y, __m256i x, __m256 d, __m256 m) {
  __m128i lo = _mm256_castsi256_si128(x), hi = _mm256_extracti128_si256(x, 1);
  __m128i p[4] = {lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)};
  for (int k = 0; k < 4; k++)
    _mm256_storeu_ps(y + 8 * k, _mm256_sub_ps(_mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(p[k]))), m));
}

void tide_quant_to_float_q4_k_avx2(const void *src, float *dst, int64_t n) {
  const uint8_t *b = src;
  const __m256i m4 = _mm256_set1_epi8(15);
  for (int64_t i = 0; i < n / TIDE_QK_K; i++, b += 144) {
    float d = half_at(b), dmin = half_at(b + 2);
    uint8_t sm[16];
    _mm_storeu_si128((__m128i *)sm, q4_k_scales_mins(b + 4)); /* scales 0..7, mins 8..15 */
    const uint8_t *q = b + 16;
    float *y = dst + i * TIDE_QK_K;
    for (int c = 0; c < 4; c++) {
      __m256i q4 = _mm256_loadu_si256((const __m256i *)(q + 32 * c));
      store_u4x32(y + 64 * c, _mm256_and_si256(q4, m4), _mm256_set1_ps(d * (float)sm[2 * c]),
                  _mm256_set1_ps(dmin * (float)sm[8 + 2 * c]));
      store_u4x32(y + 64 * c + 32, _mm256_and_si256(_mm256_srli_epi16(q4, 4), m4),
                  _mm256_set1_ps(d * (float)sm[2 * c + 1]), _mm256_set1_ps(dmin * (float)sm[8 + 2 * c + 1]));
    }
  }
}

void tide_quant_to_float_q6_k_avx2(const void *src, float *dst, int64_t n) {
  const uint8_t *b = src;
  for (int64_t i = 0; i < n / TIDE_QK_K; i++, b += 210) {
    const int8_t *sc = (const int8_t *)(b + 192);
    float d = half_at(b + 208);
    float *y = dst + i * TIDE_QK_K;
    for (int h = 0; h < 2; h++) {
      __m256i q[4];
      q6_k_values(b + 64 * h, b + 128 + 32 * h, q);
      for (int k = 0; k < 4; k++)
        store_i8x32(y + 128 * h + 32 * k, _mm256_sub_epi8(q[k], _mm256_set1_epi8(32)),
                    _mm256_set1_ps(d * (float)sc[8 * h + 2 * k]), _mm256_set1_ps(d * (float)sc[8 * h + 2 * k + 1]));
    }
  }
}

/* 32 values of a q8_0 (signed) or q4_0 (unsigned 0..15) block as 4 x 8 floats, times c, added to acc. */
static inline void rows_block_fma(int q8, const uint8_t *p, __m256 cv, __m256 acc[4]) {
  __m256i q = q8 ? _mm256_loadu_si256((const __m256i *)(p + 2)) : q4_0_values_u(p + 2);
  __m128i lo = _mm256_castsi256_si128(q), hi = _mm256_extracti128_si256(q, 1);
  if (q8) {
    acc[0] = _mm256_fmadd_ps(cv, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo)), acc[0]);
    acc[1] = _mm256_fmadd_ps(cv, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8))), acc[1]);
    acc[2] = _mm256_fmadd_ps(cv, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi)), acc[2]);
    acc[3] = _mm256_fmadd_ps(cv, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8))), acc[3]);
  } else {
    acc[0] = _mm256_fmadd_ps(cv, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(lo)), acc[0]);
    acc[1] = _mm256_fmadd_ps(cv, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(lo, 8))), acc[1]);
    acc[2] = _mm256_fmadd_ps(cv, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(hi)), acc[2]);
    acc[3] = _mm256_fmadd_ps(cv, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(hi, 8))), acc[3]);
  }
}

/* out[j] = sum_k s[k] * row_k[j] for nblk 32-value blocks of q8_0 / q4_0 rows (row k at w + k * rstride),
 * dequantized in registers: the rows-added-up matmul path (kernels/matmul.c, trans_b = 0) without a
 * buffer. Two block columns at a time (8 accumulators: the FMA chains overlap). q4_0's -8 offset is one
 * scalar per block column: sum_k -8 d_k s[k]. */
void tide_quant_rows_axpy_avx2(int32_t dt, const uint8_t *w, int64_t rstride, int64_t K, const float *s,
                               int64_t nblk, float *out) {
  const int q8 = dt == TIDE_DTYPE_Q8_0;
  const int64_t bb = q8 ? 34 : 18;
  /* the passes below walk the rows with a stride of a whole row: cold weights would miss on every row of
   * every pass, so all of their lines are requested first, in address order (W_uk per head, cold, from ~31
   * to ~13 us for 16 heads on 2 threads) */
  for (int64_t k = 0; k < K; k++)
    for (int64_t o = 0; o < nblk * bb; o += 64) _mm_prefetch((const char *)(w + k * rstride + o), _MM_HINT_T0);
  _mm_prefetch((const char *)(w + (K - 1) * rstride + nblk * bb - 1), _MM_HINT_T0);
  for (int64_t j = 0; j < nblk; j += 2) {
    int two = j + 1 < nblk;
    __m256 acc[2][4];
    for (int h = 0; h < 2; h++)
      for (int i = 0; i < 4; i++) acc[h][i] = _mm256_setzero_ps();
    float off0 = 0.0f, off1 = 0.0f;
    const uint8_t *p = w + j * bb;
    for (int64_t k = 0; k < K; k++, p += rstride) {
      float c0 = s[k] * half_at(p);
      rows_block_fma(q8, p, _mm256_set1_ps(c0), acc[0]);
      off0 -= 8.0f * c0;
      if (two) {
        float c1 = s[k] * half_at(p + bb);
        rows_block_fma(q8, p + bb, _mm256_set1_ps(c1), acc[1]);
        off1 -= 8.0f * c1;
      }
    }
    __m256 o0 = _mm256_set1_ps(q8 ? 0.0f : off0), o1 = _mm256_set1_ps(q8 ? 0.0f : off1);
    for (int i = 0; i < 4; i++) _mm256_storeu_ps(out + j * 32 + 8 * i, _mm256_add_ps(acc[0][i], o0));
    if (two)
      for (int i = 0; i < 4; i++) _mm256_storeu_ps(out + (j + 1) * 32 + 8 * i, _mm256_add_ps(acc[1][i], o1));
  }
}
