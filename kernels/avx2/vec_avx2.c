/* vec_avx2.c: AVX2 + FMA + F16C vector primitives (compiled with -mavx2 -mfma -mf16c;
 * called only after tide_k_has_avx2()). Tails fall back to scalar code that
 * rounds the same way as the portable versions in kernels/vec.c. */
#include <immintrin.h>
#include <math.h>

#include "kern.h"

static inline float hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_movehdup_ps(lo));
  return _mm_cvtss_f32(lo);
}

/* 8 elements of x (dtype dt) at index i as f32. f8_e4m3 is rebuilt as f16 bits
 * (sign, then exponent+mantissa shifted into place: the value times 2^-8, exact
 * for normals and subnormals) and scaled back by 256; its NaN code (never used
 * in weights) is not preserved. */
static inline __m256 load8(const void *x, int32_t dt, int64_t i) {
  switch (dt) {
  case TIDE_DTYPE_F16: return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)((const uint16_t *)x + i)));
  case TIDE_DTYPE_BF16: {
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)x + i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
  case TIDE_DTYPE_F8_E4M3: {
    __m128i b = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)((const uint8_t *)x + i)));
    __m128i s = _mm_slli_epi16(_mm_and_si128(b, _mm_set1_epi16(0x80)), 8);
    __m128i em = _mm_slli_epi16(_mm_and_si128(b, _mm_set1_epi16(0x7f)), 7);
    return _mm256_mul_ps(_mm256_cvtph_ps(_mm_or_si128(s, em)), _mm256_set1_ps(256.0f));
  }
  default: return _mm256_loadu_ps((const float *)x + i);
  }
}

static inline float load1(const void *x, int32_t dt, int64_t i) {
  switch (dt) {
  case TIDE_DTYPE_F16: return tide_f16_to_f32(((const uint16_t *)x)[i]);
  case TIDE_DTYPE_BF16: return tide_bf16_to_f32_inline(((const uint16_t *)x)[i]);
  case TIDE_DTYPE_F8_E4M3: return tide_k_f8_table[((const uint8_t *)x)[i]];
  default: return ((const float *)x)[i];
  }
}

float tide_vec_dot_avx2(const float *a, const void *b, int32_t dt, int64_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), load8(b, dt, i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), load8(b, dt, i + 8), s1);
    s2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), load8(b, dt, i + 16), s2);
    s3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), load8(b, dt, i + 24), s3);
  }
  for (; i + 8 <= n; i += 8) s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), load8(b, dt, i), s0);
  float s = hsum(_mm256_add_ps(_mm256_add_ps(s0, s1), _mm256_add_ps(s2, s3)));
  for (; i < n; i++) s += a[i] * load1(b, dt, i);
  return s;
}

/* Four rows at once; dt is a constant after inlining (one loop per dtype, no
 * dtype test per load). pf: four rows read next (the caller's next group), each
 * prefetched as far as these rows are read (once per 64-byte line): a decode matvec reads every row of
 * b once, and rows of a few KiB are too short for the hardware prefetcher to
 * ramp up on (measured single-thread: see kernels/matmul.c). */
static inline __attribute__((always_inline)) void dot4(const float *a, const void *const *b, int32_t dt, int64_t n,
                                                        float *out, const void *const *pf) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps(), s2 = _mm256_setzero_ps(), s3 = _mm256_setzero_ps();
  __m256 t0 = _mm256_setzero_ps(), t1 = _mm256_setzero_ps(), t2 = _mm256_setzero_ps(), t3 = _mm256_setzero_ps();
  int64_t es = dt == TIDE_DTYPE_F32 ? 4 : dt == TIDE_DTYPE_F8_E4M3 ? 1 : 2;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) { /* two accumulators per row: 8 FMAs in flight */
    if (pf && ((i * es) & 63) == 0) {
      _mm_prefetch((const char *)pf[0] + i * es, _MM_HINT_T0);
      _mm_prefetch((const char *)pf[1] + i * es, _MM_HINT_T0);
      _mm_prefetch((const char *)pf[2] + i * es, _MM_HINT_T0);
      _mm_prefetch((const char *)pf[3] + i * es, _MM_HINT_T0);
    }
    __m256 x = _mm256_loadu_ps(a + i), y = _mm256_loadu_ps(a + i + 8);
    s0 = _mm256_fmadd_ps(x, load8(b[0], dt, i), s0);
    s1 = _mm256_fmadd_ps(x, load8(b[1], dt, i), s1);
    s2 = _mm256_fmadd_ps(x, load8(b[2], dt, i), s2);
    s3 = _mm256_fmadd_ps(x, load8(b[3], dt, i), s3);
    t0 = _mm256_fmadd_ps(y, load8(b[0], dt, i + 8), t0);
    t1 = _mm256_fmadd_ps(y, load8(b[1], dt, i + 8), t1);
    t2 = _mm256_fmadd_ps(y, load8(b[2], dt, i + 8), t2);
    t3 = _mm256_fmadd_ps(y, load8(b[3], dt, i + 8), t3);
  }
  s0 = _mm256_add_ps(s0, t0);
  s1 = _mm256_add_ps(s1, t1);
  s2 = _mm256_add_ps(s2, t2);
  s3 = _mm256_add_ps(s3, t3);
  for (; i + 8 <= n; i += 8) {
    __m256 x = _mm256_loadu_ps(a + i);
    s0 = _mm256_fmadd_ps(x, load8(b[0], dt, i), s0);
    s1 = _mm256_fmadd_ps(x, load8(b[1], dt, i), s1);
    s2 = _mm256_fmadd_ps(x, load8(b[2], dt, i), s2);
    s3 = _mm256_fmadd_ps(x, load8(b[3], dt, i), s3);
  }
  float r0 = hsum(s0), r1 = hsum(s1), r2 = hsum(s2), r3 = hsum(s3);
  for (; i < n; i++) {
    r0 += a[i] * load1(b[0], dt, i);
    r1 += a[i] * load1(b[1], dt, i);
    r2 += a[i] * load1(b[2], dt, i);
    r3 += a[i] * load1(b[3], dt, i);
  }
  out[0] = r0;
  out[1] = r1;
  out[2] = r2;
  out[3] = r3;
}

void tide_vec_dot4_pf_avx2(const float *a, const void *const *b, int32_t dt, int64_t n, float *out,
                           const void *const *pf) {
  switch (dt) {
  case TIDE_DTYPE_BF16: dot4(a, b, TIDE_DTYPE_BF16, n, out, pf); break;
  case TIDE_DTYPE_F16: dot4(a, b, TIDE_DTYPE_F16, n, out, pf); break;
  case TIDE_DTYPE_F8_E4M3: dot4(a, b, TIDE_DTYPE_F8_E4M3, n, out, pf); break;
  default: dot4(a, b, TIDE_DTYPE_F32, n, out, pf); break;
  }
}

void tide_vec_dot4_avx2(const float *a, const void *const *b, int32_t dt, int64_t n, float *out) {
  tide_vec_dot4_pf_avx2(a, b, dt, n, out, NULL);
}

void tide_vec_axpy_avx2(float *y, float s, const void *x, int32_t dt, int64_t n) {
  __m256 vs = _mm256_set1_ps(s);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(vs, load8(x, dt, i), _mm256_loadu_ps(y + i)));
  for (; i < n; i++) y[i] += s * load1(x, dt, i);
}

void tide_vec_to_f32_avx2(float *dst, const void *src, int32_t dt, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, load8(src, dt, i));
  for (; i < n; i++) dst[i] = load1(src, dt, i);
}

void tide_vec_add_avx2(float *o, const float *a, const float *b, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(o + i, _mm256_add_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
  for (; i < n; i++) o[i] = a[i] + b[i];
}

void tide_vec_mul_avx2(float *o, const float *a, const float *b, int64_t n) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(o + i, _mm256_mul_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i)));
  for (; i < n; i++) o[i] = a[i] * b[i];
}

void tide_vec_scale_avx2(float *o, const float *a, float s, int64_t n) {
  __m256 vs = _mm256_set1_ps(s);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(o + i, _mm256_mul_ps(_mm256_loadu_ps(a + i), vs));
  for (; i < n; i++) o[i] = a[i] * s;
}

/* exp(x) for 8 floats: x = n ln2 + r, |r| <= ln2/2, degree-6 polynomial (Cephes
 * coefficients, ~1-2 ulp), 2^n built in the exponent bits. Inputs below
 * -87.33 give 0 (so -inf gives 0); above 88 saturate. */
static inline __m256 exp8(__m256 x) {
  const __m256 hi = _mm256_set1_ps(88.0f), lo = _mm256_set1_ps(-87.3365478515625f);
  __m256 under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
  x = _mm256_min_ps(_mm256_max_ps(x, lo), hi);
  __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500E-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507E-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073E-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894E-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459E-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201E-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  __m256 res = _mm256_mul_ps(p, _mm256_castsi256_ps(e));
  return _mm256_andnot_ps(under, res);
}

void tide_vec_silu_avx2(float *o, const float *x, int64_t n) {
  const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_loadu_ps(x + i);
    _mm256_storeu_ps(o + i, _mm256_div_ps(v, _mm256_add_ps(one, exp8(_mm256_sub_ps(zero, v)))));
  }
  for (; i < n; i++) o[i] = x[i] / (1.0f + expf(-x[i]));
}

void tide_vec_sigmoid_avx2(float *o, const float *x, int64_t n) {
  const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_loadu_ps(x + i);
    _mm256_storeu_ps(o + i, _mm256_div_ps(one, _mm256_add_ps(one, exp8(_mm256_sub_ps(zero, v)))));
  }
  for (; i < n; i++) o[i] = 1.0f / (1.0f + expf(-x[i]));
}

void tide_vec_swiglu_avx2(float *o, const float *g, const float *u, int64_t n) {
  const __m256 one = _mm256_set1_ps(1.0f), zero = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_loadu_ps(g + i);
    __m256 s = _mm256_div_ps(v, _mm256_add_ps(one, exp8(_mm256_sub_ps(zero, v))));
    _mm256_storeu_ps(o + i, _mm256_mul_ps(s, _mm256_loadu_ps(u + i)));
  }
  for (; i < n; i++) o[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

double tide_vec_sumsq_avx2(const float *x, int64_t n) {
  __m256d s0 = _mm256_setzero_pd(), s1 = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 a = _mm256_loadu_ps(x + i), q = _mm256_mul_ps(a, a); /* squares rounded to f32, as ggml */
    s0 = _mm256_add_pd(s0, _mm256_cvtps_pd(_mm256_castps256_ps128(q)));
    s1 = _mm256_add_pd(s1, _mm256_cvtps_pd(_mm256_extractf128_ps(q, 1)));
  }
  double t[4];
  _mm256_storeu_pd(t, _mm256_add_pd(s0, s1));
  double s = (t[0] + t[1]) + (t[2] + t[3]);
  for (; i < n; i++) s += (double)(x[i] * x[i]);
  return s;
}

float tide_vec_max_avx2(const float *x, int64_t n) {
  __m256 m = _mm256_set1_ps(-INFINITY);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) m = _mm256_max_ps(m, _mm256_loadu_ps(x + i));
  __m128 h = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
  h = _mm_max_ps(h, _mm_movehl_ps(h, h));
  h = _mm_max_ss(h, _mm_movehdup_ps(h));
  float r = _mm_cvtss_f32(h);
  for (; i < n; i++) r = x[i] > r ? x[i] : r;
  return r;
}

float tide_vec_exp_sum_avx2(float *o, const float *x, float s, float m, int64_t n) {
  __m256 vs = _mm256_set1_ps(s), vm = _mm256_set1_ps(m), acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 e = exp8(_mm256_sub_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), vs), vm));
    _mm256_storeu_ps(o + i, e);
    acc = _mm256_add_ps(acc, e);
  }
  float sum = hsum(acc);
  for (; i < n; i++) {
    o[i] = expf(x[i] * s - m);
    sum += o[i];
  }
  return sum;
}

/* ---- several rows at once ---- */

/* The AVX-512 check inlined (one test of libgcc's CPU flags): dotn / axpyn run per KV-cache row, and the
 * out-of-line tide_k_has_avx512 measured 0.5% of a llama-1b prefill. */
static inline int has_avx512f(void) {
#if !defined(TIDE_NO_AVX2)
  return __builtin_cpu_supports("avx512f");
#else
  return 0;
#endif
}

/* out[g] = dot(q + g*ldq, x) for g < NG: x is converted once per 8 elements for all rows. */
static inline __attribute__((always_inline)) void dotn(const float *q, int64_t ldq, const void *x, int32_t dt,
                                                       int64_t n, float *out, const int NG) {
  __m256 acc[8];
#pragma GCC unroll 8
  for (int g = 0; g < NG; g++) acc[g] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 xv = load8(x, dt, i);
#pragma GCC unroll 8
    for (int g = 0; g < NG; g++) acc[g] = _mm256_fmadd_ps(_mm256_loadu_ps(q + g * ldq + i), xv, acc[g]);
  }
  for (int g = 0; g < NG; g++) {
    float s = hsum(acc[g]);
    for (int64_t j = i; j < n; j++) s += q[g * ldq + j] * load1(x, dt, j);
    out[g] = s;
  }
}

void tide_vec_dotn_avx2(const float *q, int64_t ldq, int32_t ng, const void *x, int32_t dt, int64_t n, float *out) {
  if (dt == TIDE_DTYPE_F32 && n > 0 && n % 16 == 0 && has_avx512f()) { /* kernels/avx2/vec_avx512.c */
    tide_vec_dotn_f32_avx512(q, ldq, ng, x, n, out);
    return;
  }
  while (ng > 0) {
    int32_t g = ng > 8 ? 8 : ng;
    switch (g) {
    case 1: dotn(q, ldq, x, dt, n, out, 1); break;
    case 2: dotn(q, ldq, x, dt, n, out, 2); break;
    case 3: dotn(q, ldq, x, dt, n, out, 3); break;
    case 4: dotn(q, ldq, x, dt, n, out, 4); break;
    case 5: dotn(q, ldq, x, dt, n, out, 5); break;
    case 6: dotn(q, ldq, x, dt, n, out, 6); break;
    case 7: dotn(q, ldq, x, dt, n, out, 7); break;
    default: dotn(q, ldq, x, dt, n, out, 8); break;
    }
    q += g * ldq;
    out += g;
    ng -= g;
  }
}

/* y + g*ldy += s[g] * x for g < ng: x converted once per 8 elements. */
void tide_vec_axpyn_avx2(float *y, int64_t ldy, const float *s, int32_t ng, const void *x, int32_t dt, int64_t n) {
  if (dt == TIDE_DTYPE_F32 && n > 0 && n % 16 == 0 && has_avx512f()) {
    tide_vec_axpyn_f32_avx512(y, ldy, s, ng, x, n);
    return;
  }
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 xv = load8(x, dt, i);
    for (int32_t g = 0; g < ng; g++) {
      float *yy = y + g * ldy + i;
      _mm256_storeu_ps(yy, _mm256_fmadd_ps(_mm256_set1_ps(s[g]), xv, _mm256_loadu_ps(yy)));
    }
  }
  for (; i < n; i++) {
    float v = load1(x, dt, i);
    for (int32_t g = 0; g < ng; g++) y[g * ldy + i] += s[g] * v;
  }
}

/* f8_e4m3 bytes as f16 bit patterns: the value times 2^-8 (see load8). */
static inline __m256 f8raw8(const uint8_t *p) {
  __m128i b = _mm_cvtepu8_epi16(_mm_loadl_epi64((const __m128i *)p));
  __m128i s = _mm_slli_epi16(_mm_and_si128(b, _mm_set1_epi16(0x80)), 8);
  __m128i em = _mm_slli_epi16(_mm_and_si128(b, _mm_set1_epi16(0x7f)), 7);
  return _mm256_cvtph_ps(_mm_or_si128(s, em));
}

/* 16 f8_e4m3 bytes the same way with fewer integer ops: interleaving zero
 * bytes below each byte gives b << 8; an arithmetic shift by one puts
 * exponent and mantissa in place (sign stays in bit 15); the mask clears the
 * copy of the sign in bit 14. */
static inline void f8raw16(const uint8_t *p, __m256 *lo, __m256 *hi) {
  __m128i v = _mm_loadu_si128((const __m128i *)p), z = _mm_setzero_si128();
  const __m128i mask = _mm_set1_epi16((short)0xBF80);
  __m128i a = _mm_and_si128(_mm_srai_epi16(_mm_unpacklo_epi8(z, v), 1), mask);
  __m128i b = _mm_and_si128(_mm_srai_epi16(_mm_unpackhi_epi8(z, v), 1), mask);
  *lo = _mm256_cvtph_ps(a);
  *hi = _mm256_cvtph_ps(b);
}

void tide_vec_dot_f8s4_avx2(const float *a, const uint8_t *const *b, const float *const *srow, int64_t n, int64_t seg,
                            float *out) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps(), acc2 = _mm256_setzero_ps(), acc3 = _mm256_setzero_ps();
  float tail[4] = {0, 0, 0, 0};
  for (int64_t k0 = 0, j = 0; k0 < n; k0 += seg, j++) {
    int64_t len = n - k0 < seg ? n - k0 : seg, i = 0;
    __m256 p0 = _mm256_setzero_ps(), p1 = _mm256_setzero_ps(), p2 = _mm256_setzero_ps(), p3 = _mm256_setzero_ps();
    for (; i + 16 <= len; i += 16) {
      __m256 x0 = _mm256_loadu_ps(a + k0 + i), x1 = _mm256_loadu_ps(a + k0 + i + 8), lo, hi;
      f8raw16(b[0] + k0 + i, &lo, &hi);
      p0 = _mm256_fmadd_ps(x1, hi, _mm256_fmadd_ps(x0, lo, p0));
      f8raw16(b[1] + k0 + i, &lo, &hi);
      p1 = _mm256_fmadd_ps(x1, hi, _mm256_fmadd_ps(x0, lo, p1));
      f8raw16(b[2] + k0 + i, &lo, &hi);
      p2 = _mm256_fmadd_ps(x1, hi, _mm256_fmadd_ps(x0, lo, p2));
      f8raw16(b[3] + k0 + i, &lo, &hi);
      p3 = _mm256_fmadd_ps(x1, hi, _mm256_fmadd_ps(x0, lo, p3));
    }
    for (; i + 8 <= len; i += 8) {
      __m256 x = _mm256_loadu_ps(a + k0 + i);
      p0 = _mm256_fmadd_ps(x, f8raw8(b[0] + k0 + i), p0);
      p1 = _mm256_fmadd_ps(x, f8raw8(b[1] + k0 + i), p1);
      p2 = _mm256_fmadd_ps(x, f8raw8(b[2] + k0 + i), p2);
      p3 = _mm256_fmadd_ps(x, f8raw8(b[3] + k0 + i), p3);
    }
    float s0 = srow[0][j], s1 = srow[1][j], s2 = srow[2][j], s3 = srow[3][j];
    acc0 = _mm256_fmadd_ps(p0, _mm256_set1_ps(s0 * 256.0f), acc0);
    acc1 = _mm256_fmadd_ps(p1, _mm256_set1_ps(s1 * 256.0f), acc1);
    acc2 = _mm256_fmadd_ps(p2, _mm256_set1_ps(s2 * 256.0f), acc2);
    acc3 = _mm256_fmadd_ps(p3, _mm256_set1_ps(s3 * 256.0f), acc3);
    for (; i < len; i++) {
      float x = a[k0 + i];
      tail[0] += x * tide_k_f8_table[b[0][k0 + i]] * s0;
      tail[1] += x * tide_k_f8_table[b[1][k0 + i]] * s1;
      tail[2] += x * tide_k_f8_table[b[2][k0 + i]] * s2;
      tail[3] += x * tide_k_f8_table[b[3][k0 + i]] * s3;
    }
  }
  out[0] = hsum(acc0) + tail[0];
  out[1] = hsum(acc1) + tail[1];
  out[2] = hsum(acc2) + tail[2];
  out[3] = hsum(acc3) + tail[3];
}

/* A tile of small-M matmul: out[m*ldo + j] = dot(a + m*lda, b_j) for m < MA and
 * the two rows b0, b1. Each 8 elements of b are converted once for all MA rows
 * of a; 2*MA independent FMA chains. */
/* pf0, pf1 (or NULL): the two rows read next, prefetched once per 64-byte line as far as b0, b1 are read. */
static inline __attribute__((always_inline)) void tile2(const float *a, int64_t lda, const void *b0, const void *b1,
                                                        const int32_t dt, int64_t n, float *out, int64_t ldo,
                                                        const int MA, const void *pf0, const void *pf1) {
  __m256 c0[4], c1[4];
  const int64_t es = dt == TIDE_DTYPE_F32 ? 4 : dt == TIDE_DTYPE_F8_E4M3 ? 1 : 2;
#pragma GCC unroll 4
  for (int m = 0; m < MA; m++) c0[m] = c1[m] = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    if (pf0 && ((i * es) & 63) == 0) {
      _mm_prefetch((const char *)pf0 + i * es, _MM_HINT_T0);
      _mm_prefetch((const char *)pf1 + i * es, _MM_HINT_T0);
    }
    __m256 x0 = load8(b0, dt, i), x1 = load8(b1, dt, i);
#pragma GCC unroll 4
    for (int m = 0; m < MA; m++) {
      __m256 av = _mm256_loadu_ps(a + m * lda + i);
      c0[m] = _mm256_fmadd_ps(av, x0, c0[m]);
      c1[m] = _mm256_fmadd_ps(av, x1, c1[m]);
    }
  }
  for (int m = 0; m < MA; m++) {
    float s0 = hsum(c0[m]), s1 = hsum(c1[m]);
    for (int64_t j = i; j < n; j++) {
      s0 += a[m * lda + j] * load1(b0, dt, j);
      s1 += a[m * lda + j] * load1(b1, dt, j);
    }
    out[m * ldo] = s0;
    out[m * ldo + 1] = s1;
  }
}

/* The dtype and row count as compile-time constants, so the conversion is
 * resolved outside the loop and the accumulators stay in registers. */
#define TILE2_MA(DT)                                           \
  switch (g) {                                                 \
  case 1: tile2(a, lda, b0, b1, DT, n, out, ldo, 1, pf0, pf1); break;    \
  case 2: tile2(a, lda, b0, b1, DT, n, out, ldo, 2, pf0, pf1); break;    \
  case 3: tile2(a, lda, b0, b1, DT, n, out, ldo, 3, pf0, pf1); break;    \
  default: tile2(a, lda, b0, b1, DT, n, out, ldo, 4, pf0, pf1); break;   \
  }

void tide_vec_tile2_pf_avx2(const float *a, int64_t lda, int32_t ma, const void *b0, const void *b1, int32_t dt,
                            int64_t n, float *out, int64_t ldo, const void *pf0, const void *pf1) {
  while (ma > 0) {
    int32_t g = ma > 4 ? 4 : ma;
    switch (dt) {
    case TIDE_DTYPE_F16: TILE2_MA(TIDE_DTYPE_F16); break;
    case TIDE_DTYPE_BF16: TILE2_MA(TIDE_DTYPE_BF16); break;
    case TIDE_DTYPE_F8_E4M3: TILE2_MA(TIDE_DTYPE_F8_E4M3); break;
    default: TILE2_MA(TIDE_DTYPE_F32); break;
    }
    a += g * lda;
    out += g * ldo;
    ma -= g;
    pf0 = pf1 = NULL; /* later groups of a re-read b0, b1 from cache */
  }
}

void tide_vec_tile2_avx2(const float *a, int64_t lda, int32_t ma, const void *b0, const void *b1, int32_t dt,
                         int64_t n, float *out, int64_t ldo) {
  tide_vec_tile2_pf_avx2(a, lda, ma, b0, b1, dt, n, out, ldo, NULL, NULL);
}
