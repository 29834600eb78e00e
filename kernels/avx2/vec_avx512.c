/* vec_avx512.c: AVX-512 versions of the multi-row f32 primitives the
 * attention kernel runs per cache row (tide_vec_dotn / tide_vec_axpyn with an
 * f32 row, head sizes of 64-128). Compiled with the AVX2 flags; the functions
 * carry target attributes and are called by the AVX2 entry points only when
 * the CPU has AVX-512F (checked inline there, as tide_k_has_avx512 does). Per row of 64 floats they
 * run half the loop iterations of the AVX2 ones, and dotn reduces 4 rows'
 * accumulators together (one transpose-add tree instead of 4 reductions). */
#include <immintrin.h>

#include "kern.h"

#define A512_TARGET __attribute__((target("avx2,fma,f16c,avx512f")))

int tide_k_has_avx512(void) {
#if (defined(__x86_64__) || defined(__i386__)) && !defined(TIDE_NO_AVX2)
  return __builtin_cpu_supports("avx512f") && tide_k_has_avx2();
#else
  return 0;
#endif
}

/* The 4 sums of a0..a3's lanes, in order. */
A512_TARGET static inline __m128 hsum4(__m512 a0, __m512 a1, __m512 a2, __m512 a3) {
  __m512 x0 = _mm512_add_ps(_mm512_shuffle_f32x4(a0, a1, 0x44), _mm512_shuffle_f32x4(a0, a1, 0xEE));
  __m512 x1 = _mm512_add_ps(_mm512_shuffle_f32x4(a2, a3, 0x44), _mm512_shuffle_f32x4(a2, a3, 0xEE));
  /* 128-bit lane k of y: 4 partial sums of row k */
  __m512 y = _mm512_add_ps(_mm512_shuffle_f32x4(x0, x1, 0x88), _mm512_shuffle_f32x4(x0, x1, 0xDD));
  y = _mm512_add_ps(y, _mm512_permute_ps(y, 0x4E));
  y = _mm512_add_ps(y, _mm512_permute_ps(y, 0xB1));
  return _mm512_castps512_ps128(_mm512_permutexvar_ps(_mm512_setr_epi32(0, 4, 8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), y));
}

/* out[g] = dot(q + g*ldq, x) for g < 4, x f32; n a multiple of 16. */
A512_TARGET static void dot4_f32(const float *q, int64_t ldq, const float *x, int64_t n, float *out) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
  for (int64_t i = 0; i < n; i += 16) {
    __m512 xv = _mm512_loadu_ps(x + i);
    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), xv, a0);
    a1 = _mm512_fmadd_ps(_mm512_loadu_ps(q + ldq + i), xv, a1);
    a2 = _mm512_fmadd_ps(_mm512_loadu_ps(q + 2 * ldq + i), xv, a2);
    a3 = _mm512_fmadd_ps(_mm512_loadu_ps(q + 3 * ldq + i), xv, a3);
  }
  _mm_storeu_ps(out, hsum4(a0, a1, a2, a3));
}

A512_TARGET static float dot1_f32(const float *q, const float *x, int64_t n) {
  __m512 a0 = _mm512_setzero_ps(), a1 = a0;
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), _mm512_loadu_ps(x + i), a0);
    a1 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i + 16), _mm512_loadu_ps(x + i + 16), a1);
  }
  for (; i < n; i += 16) a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + i), _mm512_loadu_ps(x + i), a0);
  return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
}

/* tide_vec_dotn for an f32 row x with n a multiple of 16 (the caller checks). */
A512_TARGET void tide_vec_dotn_f32_avx512(const float *q, int64_t ldq, int32_t ng, const float *x, int64_t n,
                                          float *out) {
  int32_t g = 0;
  for (; g + 4 <= ng; g += 4) dot4_f32(q + g * ldq, ldq, x, n, out + g);
  for (; g < ng; g++) out[g] = dot1_f32(q + g * ldq, x, n);
}

/* tide_vec_axpyn for an f32 row x with n a multiple of 16 (the caller checks). */
A512_TARGET void tide_vec_axpyn_f32_avx512(float *y, int64_t ldy, const float *s, int32_t ng, const float *x,
                                           int64_t n) {
  for (int64_t i = 0; i < n; i += 16) {
    __m512 xv = _mm512_loadu_ps(x + i);
    for (int32_t g = 0; g < ng; g++) {
      float *yy = y + g * ldy + i;
      _mm512_storeu_ps(yy, _mm512_fmadd_ps(_mm512_set1_ps(s[g]), xv, _mm512_loadu_ps(yy)));
    }
  }
}
