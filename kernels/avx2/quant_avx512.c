/* quant_avx512.c: AVX-512 VNNI dots of q8_0 / q4_0 weight rows with one
 * activation row repacked for them (tide_quant_act512_pack, kernels/quant_dot.c),
 * the decode (matrix-vector) path. Compiled with the AVX2 flags; the AVX-512
 * functions carry target attributes and run only after tide_quant_has_vnni512().
 *
 * A weight row is read in groups of 4 GGML blocks (128 values):
 *   q8_0 (4 x 34 bytes): the 128 signed bytes, flipped to unsigned (w ^ 0x80 = w + 128)
 *        as vpdpbusd's first operand; the activation bytes a are the signed one. Each
 *        int32 lane sums 4 products; its accumulator starts at -128 * (sum of those
 *        4 activation bytes) (precomputed in the pack), so the lane ends as sum w * a.
 *   q4_0 (4 x 18 bytes): the 16 bytes of nibbles of each block in one 128-bit lane,
 *        low nibbles and high nibbles (0..15, unsigned) against the activation bytes
 *        rearranged to match; the accumulator starts at -8 * (sum of the 8 activation
 *        bytes of the lane), which is the q4_0 offset of 8.
 * The 4 fp16 scales of a group come from one word permute of the group's bytes;
 * times the activation's 4 block scales they multiply the lanes' int32 sums
 * converted to float. Same integer sums per block as kernels/quant_dot.c; only
 * the float summation order differs. Blocks past the last full group go through
 * a scalar loop on the same pack. */
#include <immintrin.h>

#include "kern.h"
#include "quant.h"

#define V512_TARGET __attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))

static inline float half_at(const uint8_t *p) {
  uint16_t h;
  memcpy(&h, p, 2);
  return tide_f16_to_f32(h);
}

/* Scalar tail: block j (0..3) of a partial group g. Kept out of line: inlined into the AVX-512 VNNI
 * functions, GCC 12 vectorized the signed x signed byte products with vpdpbusd (unsigned x signed) and
 * got them wrong (caught by test_quant_dot512_vs_ref). */
__attribute__((noinline)) static float tail_q8_0(const uint8_t *x, const uint8_t *grp, int j) {
  const int8_t *a = (const int8_t *)(grp + 32 * j);
  float da;
  memcpy(&da, grp + TIDE_QUANT_A512_DA + 4 * j, 4);
  int32_t s = 0;
  for (int l = 0; l < 32; l++) s += (int8_t)x[2 + l] * a[l];
  return half_at(x) * da * (float)s;
}

__attribute__((noinline)) static float tail_q4_0(const uint8_t *x, const uint8_t *grp, int j) {
  const int8_t *lo = (const int8_t *)(grp + 16 * j), *hi = (const int8_t *)(grp + 64 + 16 * j);
  float da;
  memcpy(&da, grp + TIDE_QUANT_A512_DA + 4 * j, 4);
  int32_t s = 0;
  for (int l = 0; l < 16; l++) s += ((x[2 + l] & 15) - 8) * lo[l] + ((x[2 + l] >> 4) - 8) * hi[l];
  return half_at(x) * da * (float)s;
}

/* lanes 0..7 = s[0], 8..15 = s[1] (lo) and s[2], s[3] (hi) of a 4-float vector */
V512_TARGET static inline __m512 expand_2x8(__m128 s, int hi) {
  __m512 v = _mm512_castps128_ps512(s);
  return hi ? _mm512_permutexvar_ps(_mm512_setr_epi32(2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3), v)
            : _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1), v);
}

V512_TARGET float tide_quant_dot512_q8_0(const void *w, const void *a, int64_t n) {
  const uint8_t *x = w, *g = a;
  int64_t nb = n / TIDE_QK, ng = nb / 4;
  const __m512i flip = _mm512_set1_epi8((char)0x80);
  /* words 0, 17, 34, 51 of the 136 bytes of a group: the 4 fp16 scales */
  const __m512i widx = _mm512_setr_epi32(17 << 16, 34 | 51 << 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  for (int64_t i = 0; i < ng; i++, x += 136, g += TIDE_QUANT_A512_GROUP) {
    __m512i w01 = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(x + 2))),
                                     _mm256_loadu_si256((const __m256i *)(x + 36)), 1);
    __m512i w23 = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(x + 70))),
                                     _mm256_loadu_si256((const __m256i *)(x + 104)), 1);
    __m512i s01 = _mm512_dpbusd_epi32(_mm512_loadu_si512((const void *)(g + 128)), _mm512_xor_si512(w01, flip),
                                      _mm512_loadu_si512((const void *)g));
    __m512i s23 = _mm512_dpbusd_epi32(_mm512_loadu_si512((const void *)(g + 192)), _mm512_xor_si512(w23, flip),
                                      _mm512_loadu_si512((const void *)(g + 64)));
    __m512i h = _mm512_permutex2var_epi16(_mm512_loadu_si512((const void *)x), widx,
                                          _mm512_loadu_si512((const void *)(x + 64)));
    __m128 s = _mm_mul_ps(_mm_cvtph_ps(_mm512_castsi512_si128(h)),
                          _mm_loadu_ps((const float *)(const void *)(g + TIDE_QUANT_A512_DA)));
    acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s01), expand_2x8(s, 0), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s23), expand_2x8(s, 1), acc1);
  }
  float r = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
  for (int j = 0; j < (int)(nb % 4); j++, x += 34) r += tail_q8_0(x, g, j);
  return r;
}

V512_TARGET float tide_quant_dot512_q4_0(const void *w, const void *a, int64_t n) {
  const uint8_t *x = w, *g = a;
  int64_t nb = n / TIDE_QK, ng = nb / 4;
  const __m512i m4 = _mm512_set1_epi8(15);
  /* words 0, 9, 18, 27 of the 72 bytes of a group: the 4 fp16 scales */
  const __m512i widx = _mm512_setr_epi32(9 << 16, 18 | 27 << 16, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
  /* lanes 4j..4j+3 = s[j] */
  const __m512i sidx = _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3);
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  int64_t i = 0;
  /* (Gathering the nibbles with one AVX-512 VBMI byte permute of two overlapping loads instead of four
   * 16-byte inserts measured the same: the vector ALU work, not the loads, bounds this loop.) */
  for (; i + 2 <= ng; i += 2, x += 144, g += 2 * TIDE_QUANT_A512_GROUP) {
#define Q4G(acc, X, G)                                                                                             \
  do {                                                                                                             \
    __m512i q = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)((X) + 2)));                               \
    q = _mm512_inserti32x4(q, _mm_loadu_si128((const __m128i *)((X) + 20)), 1);                                    \
    q = _mm512_inserti32x4(q, _mm_loadu_si128((const __m128i *)((X) + 38)), 2);                                    \
    q = _mm512_inserti32x4(q, _mm_loadu_si128((const __m128i *)((X) + 56)), 3);                                    \
    __m512i sum = _mm512_dpbusd_epi32(_mm512_loadu_si512((const void *)((G) + 128)), _mm512_and_si512(q, m4),     \
                                      _mm512_loadu_si512((const void *)(G)));                                      \
    sum = _mm512_dpbusd_epi32(sum, _mm512_and_si512(_mm512_srli_epi16(q, 4), m4),                                  \
                              _mm512_loadu_si512((const void *)((G) + 64)));                                       \
    __m512i h = _mm512_permutexvar_epi16(widx, _mm512_loadu_si512((const void *)(X)));                             \
    __m128 s = _mm_mul_ps(_mm_cvtph_ps(_mm512_castsi512_si128(h)),                                                 \
                          _mm_loadu_ps((const float *)(const void *)((G) + TIDE_QUANT_A512_DA)));                  \
    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), _mm512_permutexvar_ps(sidx, _mm512_castps128_ps512(s)), acc); \
  } while (0)
    Q4G(acc0, x, g);
    Q4G(acc1, x + 72, g + TIDE_QUANT_A512_GROUP);
  }
  for (; i < ng; i++, x += 72, g += TIDE_QUANT_A512_GROUP) Q4G(acc0, x, g);
#undef Q4G
  float r = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
  for (int j = 0; j < (int)(nb % 4); j++, x += 18) r += tail_q4_0(x, g, j);
  return r;
}

static inline int32_t ld32(const uint8_t *p) {
  int32_t v;
  memcpy(&v, p, 4);
  return v;
}

/* ---- prefill: 16 weight rows interleaved x 4 activation rows (layout in quant.h, tide_quant_pack_il) ----
 * Each int32 lane of a vpdpbusd accumulator is one output (weight row r of the 16), summing 4 products of a
 * block; the 4 activation bytes come broadcast from memory. Per block of 32 values and activation row: 8
 * vpdpbusd (two chains of 4), one conversion, one scale multiply and two FMAs for 16 outputs, where the
 * 4 x 4 tile above spends a conversion, a multiply and an FMA per output pair and 64 values. */
V512_TARGET void tide_quant_il_tile(const uint8_t *wp, int64_t nb, const uint8_t *const *a, int64_t kp,
                                    float *out, int64_t ldo, int nr, int na) {
  const float *wd = (const float *)(const void *)(wp + nb * 512), *wc = wd + nb * 16;
  const uint8_t *a0 = a[0], *a1 = a[1], *a2 = a[2], *a3 = a[3];
  const float *d0 = (const float *)(const void *)(a0 + kp), *d1 = (const float *)(const void *)(a1 + kp);
  const float *d2 = (const float *)(const void *)(a2 + kp), *d3 = (const float *)(const void *)(a3 + kp);
  const int64_t cb = kp / 32; /* offset of the c floats after the d floats of an activation row */
  __m512 f0 = _mm512_setzero_ps(), f1 = f0, f2 = f0, f3 = f0;
  for (int64_t b = 0; b < nb; b++) {
    const uint8_t *w = wp + b * 512;
    __m512i w0 = _mm512_loadu_si512((const void *)w), w1 = _mm512_loadu_si512((const void *)(w + 64));
    __m512i w2 = _mm512_loadu_si512((const void *)(w + 128)), w3 = _mm512_loadu_si512((const void *)(w + 192));
    __m512i w4 = _mm512_loadu_si512((const void *)(w + 256)), w5 = _mm512_loadu_si512((const void *)(w + 320));
    __m512i w6 = _mm512_loadu_si512((const void *)(w + 384)), w7 = _mm512_loadu_si512((const void *)(w + 448));
    __m512 sd = _mm512_loadu_ps(wd + b * 16), sc = _mm512_loadu_ps(wc + b * 16);
#define BC(p, o) _mm512_set1_epi32(ld32((p) + 32 * b + (o)))
#define ILROW(F, A, D)                                                                                         \
  do {                                                                                                         \
    __m512i s = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w0, BC(A, 0));                                      \
    __m512i t = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w1, BC(A, 4));                                      \
    s = _mm512_dpbusd_epi32(s, w2, BC(A, 8));                                                                   \
    t = _mm512_dpbusd_epi32(t, w3, BC(A, 12));                                                                  \
    s = _mm512_dpbusd_epi32(s, w4, BC(A, 16));                                                                  \
    t = _mm512_dpbusd_epi32(t, w5, BC(A, 20));                                                                  \
    s = _mm512_dpbusd_epi32(s, w6, BC(A, 24));                                                                  \
    t = _mm512_dpbusd_epi32(t, w7, BC(A, 28));                                                                  \
    F = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(s, t)), _mm512_mul_ps(sd, _mm512_set1_ps((D)[b])), F); \
    F = _mm512_fmadd_ps(sc, _mm512_set1_ps((D)[cb + b]), F);                                                    \
  } while (0)
    ILROW(f0, a0, d0);
    ILROW(f1, a1, d1);
    ILROW(f2, a2, d2);
    ILROW(f3, a3, d3);
#undef ILROW
#undef BC
  }
  __mmask16 m = (__mmask16)((1u << nr) - 1u);
  __m512 f[4] = {f0, f1, f2, f3};
  for (int j = 0; j < na; j++) _mm512_mask_storeu_ps(out + j * ldo, m, f[j]);
}
