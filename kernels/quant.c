/* quant.c: GGML block formats q8_0, q4_0, q4_k, q6_k and q8_k: dequantization
 * and the reference quantizers.
 *
 * The quantizers follow GGML's quantize_row_*_ref algorithms step for step
 * (same float operations in the same order, no FMA contraction: this file is
 * compiled without -mfma and C11 mode does not contract), so they produce the
 * same bytes; tests/c/test_quant.c checks that against blocks written by
 * llama.cpp's own build. Only dtype.h is needed here, so the traits table
 * (src/dtype.c) can point at these functions in every build, fuzzers included. */
#include <math.h>
#include <string.h>

#include "quant.h"

#define GROUP_MAX_EPS 1e-15f

/* Round to nearest, ties to even, through the float mantissa (GGML's nearest_int);
 * exact for |v| < 2^22, never undefined for other inputs. */
static inline int nearest_int(float v) {
  float t = v + 12582912.0f;
  int32_t i;
  memcpy(&i, &t, 4);
  return (i & 0x007fffff) - 0x00400000;
}

static inline float half_at(const uint8_t *p) {
  uint16_t h;
  memcpy(&h, p, 2);
  return tide_f16_to_f32(h);
}
static inline void put_half(uint8_t *p, float f) {
  uint16_t h = tide_f32_to_f16(f);
  memcpy(p, &h, 2);
}
static inline int imin(int a, int b) { return a < b ? a : b; }
static inline int imax(int a, int b) { return a > b ? a : b; }

/* ---- q8_0 ---- */
void tide_quant_to_float_q8_0(const void *src, float *dst, int64_t n) {
  const uint8_t *b = src;
  for (int64_t i = 0; i < n / TIDE_QK; i++, b += 34) {
    float d = half_at(b);
    const int8_t *q = (const int8_t *)(b + 2);
    for (int j = 0; j < TIDE_QK; j++) dst[i * TIDE_QK + j] = d * (float)q[j];
  }
}

void tide_quant_from_float_q8_0(const float *src, void *dst, int64_t n) {
  uint8_t *b = dst;
  for (int64_t i = 0; i < n / TIDE_QK; i++, b += 34) {
    const float *x = src + i * TIDE_QK;
    float amax = 0.0f;
    for (int j = 0; j < TIDE_QK; j++) amax = fmaxf(amax, fabsf(x[j]));
    float d = amax / 127.0f;
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    put_half(b, d);
    for (int j = 0; j < TIDE_QK; j++) {
      float v = roundf(x[j] * id); /* within [-127, 127] for finite input */
      b[2 + j] = (uint8_t)(int8_t)(v >= -128.0f && v <= 127.0f ? (int)v : 0);
    }
  }
}

/* ---- q4_0 ---- */
void tide_quant_to_float_q4_0(const void *src, float *dst, int64_t n) {
  const uint8_t *b = src;
  for (int64_t i = 0; i < n / TIDE_QK; i++, b += 18) {
    float d = half_at(b);
    float *y = dst + i * TIDE_QK;
    for (int j = 0; j < 16; j++) {
      y[j] = d * (float)((b[2 + j] & 15) - 8);
      y[j + 16] = d * (float)((b[2 + j] >> 4) - 8);
    }
  }
}

/* the value with the largest magnitude, its sign kept (the first on ties) */
static float signed_absmax(const float *x, int n, float *amax_out) {
  float amax = 0.0f, max = 0.0f;
  for (int j = 0; j < n; j++) {
    float a = fabsf(x[j]);
    if (a > amax) {
      amax = a;
      max = x[j];
    }
  }
  *amax_out = amax;
  return max;
}

void tide_quant_from_float_q4_0(const float *src, void *dst, int64_t n) {
  uint8_t *b = dst;
  for (int64_t i = 0; i < n / TIDE_QK; i++, b += 18) {
    const float *x = src + i * TIDE_QK;
    float amax, max = signed_absmax(x, TIDE_QK, &amax);
    float d = max / -8.0f; /* the largest magnitude maps to -8 */
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    put_half(b, d);
    for (int j = 0; j < 16; j++) {
      /* truncation of v + 8.5 (v >= -8), capped at 15 */
      float v0 = x[j] * id + 8.5f, v1 = x[j + 16] * id + 8.5f;
      int q0 = v0 >= 0.0f && v0 < 16.0f ? (int)v0 : v0 >= 16.0f ? 15 : 0;
      int q1 = v1 >= 0.0f && v1 < 16.0f ? (int)v1 : v1 >= 16.0f ? 15 : 0;
      b[2 + j] = (uint8_t)(imin(15, q0) | (imin(15, q1) << 4));
    }
  }
}

/* ---- q8_k ---- */
void tide_quant_to_float_q8_k(const void *src, float *dst, int64_t n) {
  const uint8_t *b = src;
  for (int64_t i = 0; i < n / TIDE_QK_K; i++, b += 292) {
    float d;
    memcpy(&d, b, 4);
    const int8_t *q = (const int8_t *)(b + 4);
    for (int j = 0; j < TIDE_QK_K; j++) dst[i * TIDE_QK_K + j] = d * (float)q[j];
  }
}

void tide_quant_from_float_q8_k(const float *src, void *dst, int64_t n) {
  uint8_t *b = dst;
  for (int64_t i = 0; i < n / TIDE_QK_K; i++, b += 292) {
    const float *x = src + i * TIDE_QK_K;
    int8_t *q = (int8_t *)(b + 4);
    float amax, max = signed_absmax(x, TIDE_QK_K, &amax);
    if (amax == 0.0f || !isfinite(amax)) { /* all zero (or not finite: stored as zeros) */
      memset(b, 0, 292);
      continue;
    }
    float iscale = -127.0f / max;
    for (int j = 0; j < TIDE_QK_K; j++) q[j] = (int8_t)imax(-128, imin(127, nearest_int(iscale * x[j])));
    for (int g = 0; g < 16; g++) {
      int s = 0;
      for (int j = 0; j < 16; j++) s += q[16 * g + j];
      int16_t s16 = (int16_t)s;
      memcpy(b + 260 + 2 * g, &s16, 2);
    }
    float d = 1.0f / iscale;
    memcpy(b, &d, 4);
  }
}

/* ---- q4_k ---- */

/* 6-bit scale and min of sub-block j from the 12 packed bytes. */
static inline void scale_min_k4(int j, const uint8_t *s, int *sc, int *m) {
  if (j < 4) {
    *sc = s[j] & 63;
    *m = s[j + 4] & 63;
  } else {
    *sc = (s[j + 4] & 15) | ((s[j - 4] >> 6) << 4);
    *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

void tide_quant_to_float_q4_k(const void *src, float *dst, int64_t n) {
  const uint8_t *b = src;
  for (int64_t i = 0; i < n / TIDE_QK_K; i++, b += 144) {
    float d = half_at(b), dmin = half_at(b + 2);
    const uint8_t *sc = b + 4, *q = b + 16;
    float *y = dst + i * TIDE_QK_K;
    for (int c = 0; c < 4; c++) {
      int s0, m0, s1, m1;
      scale_min_k4(2 * c, sc, &s0, &m0);
      scale_min_k4(2 * c + 1, sc, &s1, &m1);
      float d0 = d * (float)s0, n0 = dmin * (float)m0, d1 = d * (float)s1, n1 = dmin * (float)m1;
      for (int l = 0; l < 32; l++) {
        y[64 * c + l] = d0 * (float)(q[32 * c + l] & 15) - n0;
        y[64 * c + 32 + l] = d1 * (float)(q[32 * c + l] >> 4) - n1;
      }
    }
  }
}

/* Asymmetric n-value quantization to 0..nmax with weights: x ~ scale*L - the_min.
 * Starts from the min/max grid, then tries nstep+1 other grids (iscale from
 * (rmin + rdelta*is + nmax)/(max - min)) and, for each, the weighted
 * least-squares scale and min for its levels; keeps the lowest weighted squared
 * error. Returns the scale; the_min gets the (non-negative) min. As GGML's
 * make_qkx2_quants with use_mad = false. */
static float make_qkx2_quants(int n, int nmax, const float *x, const float *w, uint8_t *L, float *the_min,
                              uint8_t *Laux, float rmin, float rdelta, int nstep) {
  float min = x[0], max = x[0];
  float sum_w = w[0], sum_x = sum_w * x[0];
  for (int i = 1; i < n; i++) {
    if (x[i] < min) min = x[i];
    if (x[i] > max) max = x[i];
    sum_w += w[i];
    sum_x += w[i] * x[i];
  }
  if (min > 0) min = 0;
  if (max == min) {
    memset(L, 0, (size_t)n);
    *the_min = -min;
    return 0.0f;
  }
  float iscale = (float)nmax / (max - min);
  float scale = 1.0f / iscale;
  float best = 0.0f;
  for (int i = 0; i < n; i++) {
    int l = nearest_int(iscale * (x[i] - min));
    L[i] = (uint8_t)imax(0, imin(nmax, l));
    float diff = scale * (float)L[i] + min - x[i];
    best += w[i] * (diff * diff);
  }
  for (int is = 0; is <= nstep; is++) {
    iscale = (rmin + rdelta * (float)is + (float)nmax) / (max - min);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; i++) {
      int l = imax(0, imin(nmax, nearest_int(iscale * (x[i] - min))));
      Laux[i] = (uint8_t)l;
      float wl = w[i] * (float)l;
      sum_l += wl;
      sum_l2 += wl * (float)l;
      sum_xl += wl * x[i];
    }
    float D = sum_w * sum_l2 - sum_l * sum_l;
    if (D > 0) {
      float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
      float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
      if (this_min > 0) {
        this_min = 0;
        this_scale = sum_xl / sum_l2;
      }
      float err = 0;
      for (int i = 0; i < n; i++) {
        float diff = this_scale * (float)Laux[i] + this_min - x[i];
        err += w[i] * (diff * diff);
      }
      if (err < best) {
        memcpy(L, Laux, (size_t)n);
        best = err;
        scale = this_scale;
        min = this_min;
      }
    }
  }
  *the_min = -min;
  return scale;
}

void tide_quant_from_float_q4_k(const float *src, void *dst, int64_t n) {
  uint8_t *b = dst;
  for (int64_t i = 0; i < n / TIDE_QK_K; i++, b += 144) {
    const float *x = src + i * TIDE_QK_K;
    uint8_t L[TIDE_QK_K], Laux[32];
    float w[32], mins[8], scales[8];
    float max_scale = 0, max_min = 0;
    for (int j = 0; j < 8; j++) {
      float sum_x2 = 0;
      for (int l = 0; l < 32; l++) sum_x2 += x[32 * j + l] * x[32 * j + l];
      float av_x = sqrtf(sum_x2 / 32);
      for (int l = 0; l < 32; l++) w[l] = av_x + fabsf(x[32 * j + l]);
      scales[j] = make_qkx2_quants(32, 15, x + 32 * j, w, L + 32 * j, &mins[j], Laux, -1.0f, 0.1f, 20);
      if (scales[j] > max_scale) max_scale = scales[j];
      if (mins[j] > max_min) max_min = mins[j];
    }
    float inv_scale = max_scale > 0 ? 63.0f / max_scale : 0.0f;
    float inv_min = max_min > 0 ? 63.0f / max_min : 0.0f;
    uint8_t *sc = b + 4;
    memset(sc, 0, 12);
    for (int j = 0; j < 8; j++) {
      int ls = imax(0, imin(63, nearest_int(inv_scale * scales[j])));
      int lm = imax(0, imin(63, nearest_int(inv_min * mins[j])));
      if (j < 4) {
        sc[j] = (uint8_t)ls;
        sc[j + 4] = (uint8_t)lm;
      } else {
        sc[j + 4] = (uint8_t)((ls & 15) | ((lm & 15) << 4));
        sc[j - 4] |= (uint8_t)((ls >> 4) << 6);
        sc[j] |= (uint8_t)((lm >> 4) << 6);
      }
    }
    put_half(b, max_scale / 63.0f);
    put_half(b + 2, max_min / 63.0f);
    float d = half_at(b), dmin = half_at(b + 2);
    for (int j = 0; j < 8; j++) {
      int s, m;
      scale_min_k4(j, sc, &s, &m);
      float dj = d * (float)s;
      if (dj == 0.0f) continue;
      float dm = dmin * (float)m;
      for (int l = 0; l < 32; l++) L[32 * j + l] = (uint8_t)imax(0, imin(15, nearest_int((x[32 * j + l] + dm) / dj)));
    }
    uint8_t *q = b + 16;
    for (int c = 0; c < 4; c++)
      for (int l = 0; l < 32; l++) q[32 * c + l] = (uint8_t)(L[64 * c + l] | (L[64 * c + 32 + l] << 4));
  }
}

/* ---- q6_k ---- */
void tide_quant_to_float_q6_k(const void *src, float *dst, int64_t n) {
  const uint8_t *b = src;
  for (int64_t i = 0; i < n / TIDE_QK_K; i++, b += 210) {
    const uint8_t *ql = b, *qh = b + 128;
    const int8_t *sc = (const int8_t *)(b + 192);
    float d = half_at(b + 208);
    float *y = dst + i * TIDE_QK_K;
    for (int h = 0; h < 2; h++, ql += 64, qh += 32, sc += 8, y += 128) {
      for (int l = 0; l < 32; l++) {
        int is = l / 16;
        int q1 = ((ql[l] & 15) | ((qh[l] & 3) << 4)) - 32;
        int q2 = ((ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4)) - 32;
        int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
        int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
        y[l] = d * (float)sc[is] * (float)q1;
        y[l + 32] = d * (float)sc[is + 2] * (float)q2;
        y[l + 64] = d * (float)sc[is + 4] * (float)q3;
        y[l + 96] = d * (float)sc[is + 6] * (float)q4;
      }
    }
  }
}

/* Symmetric n-value quantization to -nmax..nmax-1 (stored offset by nmax in L)
 * weighted by x^2: the grid of the largest magnitude, then 18 nearby grids,
 * keeping the one with the largest sumlx^2/suml2 (least weighted squared
 * error at its optimal scale). As GGML's make_qx_quants with rmse_type 1 and
 * no importance weights. Returns the scale. */
static float make_qx_quants(int n, int nmax, const float *x, uint8_t *L) {
  float amax, max = signed_absmax(x, n, &amax);
  if (amax < GROUP_MAX_EPS) {
    memset(L, 0, (size_t)n);
    return 0.0f;
  }
  float iscale = (float)(-nmax) / max;
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; i++) {
    int l = imax(-nmax, imin(nmax - 1, nearest_int(iscale * x[i])));
    L[i] = (uint8_t)(l + nmax);
    float w = x[i] * x[i];
    sumlx += w * x[i] * (float)l;
    suml2 += w * (float)l * (float)l;
  }
  float scale = suml2 != 0.0f ? sumlx / suml2 : 0.0f;
  float best = scale * sumlx;
  for (int is = -9; is <= 9; is++) {
    if (is == 0) continue;
    iscale = -((float)nmax + 0.1f * (float)is) / max;
    sumlx = suml2 = 0;
    for (int i = 0; i < n; i++) {
      int l = imax(-nmax, imin(nmax - 1, nearest_int(iscale * x[i])));
      float w = x[i] * x[i];
      sumlx += w * x[i] * (float)l;
      suml2 += w * (float)l * (float)l;
    }
    if (suml2 > 0 && sumlx * sumlx > best * suml2) {
      for (int i = 0; i < n; i++) L[i] = (uint8_t)(nmax + imax(-nmax, imin(nmax - 1, nearest_int(iscale * x[i]))));
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

void tide_quant_from_float_q6_k(const float *src, void *dst, int64_t n) {
  uint8_t *b = dst;
  for (int64_t i = 0; i < n / TIDE_QK_K; i++, b += 210) {
    const float *x = src + i * TIDE_QK_K;
    uint8_t L[TIDE_QK_K];
    float scales[16];
    float max_scale = 0, max_abs_scale = 0;
    for (int g = 0; g < 16; g++) {
      scales[g] = make_qx_quants(16, 32, x + 16 * g, L + 16 * g);
      float a = fabsf(scales[g]);
      if (a > max_abs_scale) {
        max_abs_scale = a;
        max_scale = scales[g];
      }
    }
    if (max_abs_scale < GROUP_MAX_EPS) {
      memset(b, 0, 210);
      continue;
    }
    float iscale = -128.0f / max_scale;
    put_half(b + 208, 1.0f / iscale);
    int8_t *sc = (int8_t *)(b + 192);
    for (int g = 0; g < 16; g++) sc[g] = (int8_t)imax(-128, imin(127, nearest_int(iscale * scales[g])));
    float d0 = half_at(b + 208);
    for (int g = 0; g < 16; g++) {
      float d = d0 * (float)sc[g];
      if (d == 0.0f) continue;
      for (int l = 0; l < 16; l++) L[16 * g + l] = (uint8_t)(imax(-32, imin(31, nearest_int(x[16 * g + l] / d))) + 32);
    }
    uint8_t *ql = b, *qh = b + 128;
    for (int h = 0; h < 2; h++, ql += 64, qh += 32) {
      const uint8_t *Lh = L + 128 * h;
      for (int l = 0; l < 32; l++) {
        ql[l] = (uint8_t)((Lh[l] & 15) | ((Lh[l + 64] & 15) << 4));
        ql[l + 32] = (uint8_t)((Lh[l + 32] & 15) | ((Lh[l + 96] & 15) << 4));
        qh[l] = (uint8_t)((Lh[l] >> 4) | ((Lh[l + 32] >> 4) << 2) | ((Lh[l + 64] >> 4) << 4) | ((Lh[l + 96] >> 4) << 6));
      }
    }
  }
}

/* ---- q5_0 (llama.cpp's fallback for q4_k rows that are not a multiple of 256) ---- */
void tide_quant_to_float_q5_0(const void *src, float *dst, int64_t n) {
  const uint8_t *b = src;
  for (int64_t i = 0; i < n / TIDE_QK; i++, b += 22) {
    float d = half_at(b);
    uint32_t qh;
    memcpy(&qh, b + 2, 4);
    const uint8_t *qs = b + 6;
    float *y = dst + i * TIDE_QK;
    for (int j = 0; j < 16; j++) {
      int h0 = (int)((qh >> j) & 1u) << 4, h1 = (int)((qh >> (j + 16)) & 1u) << 4;
      y[j] = d * (float)(((qs[j] & 15) | h0) - 16);
      y[j + 16] = d * (float)(((qs[j] >> 4) | h1) - 16);
    }
  }
}

void tide_quant_from_float_q5_0(const float *src, void *dst, int64_t n) {
  uint8_t *b = dst;
  for (int64_t i = 0; i < n / TIDE_QK; i++, b += 22) {
    const float *x = src + i * TIDE_QK;
    float amax, max = signed_absmax(x, TIDE_QK, &amax);
    float d = max / -16.0f; /* the largest magnitude maps to -16 */
    float id = d != 0.0f ? 1.0f / d : 0.0f;
    put_half(b, d);
    uint32_t qh = 0;
    for (int j = 0; j < 16; j++) {
      /* truncation of v + 16.5 (v >= -16), capped at 31 */
      float v0 = x[j] * id + 16.5f, v1 = x[j + 16] * id + 16.5f;
      int q0 = v0 >= 0.0f && v0 < 32.0f ? (int)v0 : v0 >= 32.0f ? 31 : 0;
      int q1 = v1 >= 0.0f && v1 < 32.0f ? (int)v1 : v1 >= 32.0f ? 31 : 0;
      q0 = imin(31, q0);
      q1 = imin(31, q1);
      b[6 + j] = (uint8_t)((q0 & 15) | ((q1 & 15) << 4));
      qh |= (uint32_t)((q0 >> 4) & 1) << j;
      qh |= (uint32_t)((q1 >> 4) & 1) << (j + 16);
    }
    memcpy(b + 2, &qh, 4);
  }
}
