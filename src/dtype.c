#include "dtype.h"
#include "../kernels/quant.h" /* block formats (kernels/quant.c) */

#include <math.h>
#include <string.h>
#include <strings.h>

float tide_f16_to_f32(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  uint32_t u;
  if (exp == 0) {
    if (man == 0) {
      u = sign;
    } else { /* subnormal: normalize */
      int e = -1;
      do {
        e++;
        man <<= 1;
      } while ((man & 0x400u) == 0);
      u = sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3ffu) << 13);
    }
  } else if (exp == 31) {
    u = sign | 0x7f800000u | (man << 13);
  } else {
    u = sign | ((exp + 127 - 15) << 23) | (man << 13);
  }
  float f;
  memcpy(&f, &u, 4);
  return f;
}

uint16_t tide_f32_to_f16(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t absx = x & 0x7fffffffu;
  if (absx >= 0x7f800000u) /* inf or nan */
    return (uint16_t)(sign | 0x7c00u | (absx > 0x7f800000u ? 0x200u : 0));
  if (absx >= 0x477ff000u) /* rounds to >= 65520: overflow to inf */
    return (uint16_t)(sign | 0x7c00u);
  if (absx < 0x38800000u) { /* below smallest normal: subnormal or zero */
    if (absx < 0x33000000u) return (uint16_t)sign; /* < 2^-25 rounds to 0 */
    uint32_t e = absx >> 23;
    uint32_t m = (absx & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - e; /* 14..24 */
    uint32_t r = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (r & 1))) r++;
    return (uint16_t)(sign | r);
  }
  /* normal: round to nearest even on the 13 dropped bits */
  uint32_t r = absx + 0xfffu + ((absx >> 13) & 1u);
  r -= (uint32_t)(127 - 15) << 23;
  return (uint16_t)(sign | (r >> 13));
}

float tide_bf16_to_f32(uint16_t h) { return tide_bf16_to_f32_inline(h); }

uint16_t tide_f32_to_bf16(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  if ((x & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((x >> 16) | 0x40u); /* quiet nan */
  x += 0x7fffu + ((x >> 16) & 1u);
  return (uint16_t)(x >> 16);
}

/* float8_e4m3fn: 1 sign, 4 exponent (bias 7), 3 mantissa; no infinities,
 * S.1111.111 is NaN; max finite 448. */
float tide_f8e4m3_to_f32(uint8_t v) {
  uint32_t sign = (uint32_t)(v & 0x80u) << 24;
  uint32_t exp = (v >> 3) & 0xfu;
  uint32_t man = v & 0x7u;
  float r;
  if (exp == 0xf && man == 0x7) {
    r = NAN;
  } else if (exp == 0) {
    r = ldexpf((float)man, -9); /* subnormal: man * 2^-6 / 8 */
  } else {
    r = ldexpf(1.0f + (float)man / 8.0f, (int)exp - 7);
  }
  uint32_t u;
  memcpy(&u, &r, 4);
  u |= sign;
  memcpy(&r, &u, 4);
  return r;
}

uint8_t tide_f32_to_f8e4m3(float f) {
  uint32_t x;
  memcpy(&x, &f, 4);
  uint8_t sign = (uint8_t)((x >> 24) & 0x80u);
  float a = fabsf(f);
  if (isnan(f)) return (uint8_t)(sign | 0x7f);
  if (a >= 464.0f) return (uint8_t)(sign | 0x7e); /* saturate to 448 (torch casts overflow to nan; we saturate) */
  /* search the nearest representable value, ties to even mantissa */
  int e = 0;
  if (a > 0.0f) frexpf(a, &e); /* a = m * 2^e, m in [0.5,1) -> exponent of leading bit is e-1 */
  int be = e - 1 + 7;
  uint8_t out;
  if (a < 0.015625f) { /* below 2^-6, the smallest normal: subnormal steps of 2^-9 */
    float q = a * 512.0f;
    float r = nearbyintf(q); /* default rounding mode: nearest even */
    out = (uint8_t)r;        /* r <= 8 -> 8 becomes exponent 1, mantissa 0: correct encoding */
  } else {
    float step = ldexpf(1.0f, e - 1 - 3);
    float q = a / step; /* in [8,16) */
    float r = nearbyintf(q);
    int m = (int)r - 8;
    if (m == 8) {
      m = 0;
      be++;
    }
    out = (uint8_t)((be << 3) | m);
  }
  return (uint8_t)(sign | out);
}

static void f32_to_float(const void *src, float *dst, int64_t n) { memcpy(dst, src, (size_t)n * 4); }
static void f32_from_float(const float *src, void *dst, int64_t n) { memcpy(dst, src, (size_t)n * 4); }
static void f16_to_float(const void *src, float *dst, int64_t n) {
  const uint16_t *s = src;
  for (int64_t i = 0; i < n; i++) dst[i] = tide_f16_to_f32(s[i]);
}
static void f16_from_float(const float *src, void *dst, int64_t n) {
  uint16_t *d = dst;
  for (int64_t i = 0; i < n; i++) d[i] = tide_f32_to_f16(src[i]);
}
static void bf16_to_float(const void *src, float *dst, int64_t n) {
  const uint16_t *s = src;
  for (int64_t i = 0; i < n; i++) dst[i] = tide_bf16_to_f32_inline(s[i]);
}
static void bf16_from_float(const float *src, void *dst, int64_t n) {
  uint16_t *d = dst;
  for (int64_t i = 0; i < n; i++) d[i] = tide_f32_to_bf16(src[i]);
}
static void f8_to_float(const void *src, float *dst, int64_t n) {
  const uint8_t *s = src;
  for (int64_t i = 0; i < n; i++) dst[i] = tide_f8e4m3_to_f32(s[i]);
}
static void f8_from_float(const float *src, void *dst, int64_t n) {
  uint8_t *d = dst;
  for (int64_t i = 0; i < n; i++) d[i] = tide_f32_to_f8e4m3(src[i]);
}
static void i32_to_float(const void *src, float *dst, int64_t n) {
  const int32_t *s = src;
  for (int64_t i = 0; i < n; i++) dst[i] = (float)s[i];
}
static void i32_from_float(const float *src, void *dst, int64_t n) {
  int32_t *d = dst;
  for (int64_t i = 0; i < n; i++) d[i] = (int32_t)src[i];
}
static void i8_to_float(const void *src, float *dst, int64_t n) {
  const int8_t *s = src;
  for (int64_t i = 0; i < n; i++) dst[i] = (float)s[i];
}
static void i8_from_float(const float *src, void *dst, int64_t n) {
  int8_t *d = dst;
  for (int64_t i = 0; i < n; i++) {
    float v = nearbyintf(src[i]);
    d[i] = (int8_t)(v > 127.f ? 127.f : v < -128.f ? -128.f : v);
  }
}
static void i64_to_float(const void *src, float *dst, int64_t n) {
  const int64_t *s = src;
  for (int64_t i = 0; i < n; i++) dst[i] = (float)s[i];
}
static void i64_from_float(const float *src, void *dst, int64_t n) {
  int64_t *d = dst;
  for (int64_t i = 0; i < n; i++) d[i] = (int64_t)src[i];
}
static void u8_to_float(const void *src, float *dst, int64_t n) {
  const uint8_t *s = src;
  for (int64_t i = 0; i < n; i++) dst[i] = (float)s[i];
}
static void f64_to_float(const void *src, float *dst, int64_t n) {
  const double *s = src;
  for (int64_t i = 0; i < n; i++) dst[i] = (float)s[i];
}
static void f64_from_float(const float *src, void *dst, int64_t n) {
  double *d = dst;
  for (int64_t i = 0; i < n; i++) d[i] = src[i];
}
static void i16_to_float(const void *src, float *dst, int64_t n) {
  const int16_t *s = src;
  for (int64_t i = 0; i < n; i++) dst[i] = (float)s[i];
}

/* The traits table: read-only data, one row per dtype. The quantization
 * work fills in the block types' conversion functions. */
static const tide_dtype_traits_t traits[TIDE_DTYPE_COUNT] = {
    [TIDE_DTYPE_F32] = {"f32", 1, 4, 1, f32_to_float, f32_from_float},
    [TIDE_DTYPE_F16] = {"f16", 1, 2, 1, f16_to_float, f16_from_float},
    [TIDE_DTYPE_BF16] = {"bf16", 1, 2, 1, bf16_to_float, bf16_from_float},
    [TIDE_DTYPE_F8_E4M3] = {"f8_e4m3", 1, 1, 1, f8_to_float, f8_from_float},
    [TIDE_DTYPE_I32] = {"i32", 1, 4, 0, i32_to_float, i32_from_float},
    [TIDE_DTYPE_I8] = {"i8", 1, 1, 0, i8_to_float, i8_from_float},
    [TIDE_DTYPE_I64] = {"i64", 1, 8, 0, i64_to_float, i64_from_float},
    [TIDE_DTYPE_U8] = {"u8", 1, 1, 0, u8_to_float, NULL},
    [TIDE_DTYPE_F64] = {"f64", 1, 8, 1, f64_to_float, f64_from_float},
    [TIDE_DTYPE_I16] = {"i16", 1, 2, 0, i16_to_float, NULL},
    [TIDE_DTYPE_Q4_0] = {"q4_0", 32, 18, 1, tide_quant_to_float_q4_0, tide_quant_from_float_q4_0},
    [TIDE_DTYPE_Q4_1] = {"q4_1", 32, 20, 1, NULL, NULL},
    [TIDE_DTYPE_Q5_0] = {"q5_0", 32, 22, 1, tide_quant_to_float_q5_0, tide_quant_from_float_q5_0},
    [TIDE_DTYPE_Q5_1] = {"q5_1", 32, 24, 1, NULL, NULL},
    [TIDE_DTYPE_Q8_0] = {"q8_0", 32, 34, 1, tide_quant_to_float_q8_0, tide_quant_from_float_q8_0},
    [TIDE_DTYPE_Q8_1] = {"q8_1", 32, 36, 1, NULL, NULL},
    [TIDE_DTYPE_Q2_K] = {"q2_k", 256, 84, 1, NULL, NULL},
    [TIDE_DTYPE_Q3_K] = {"q3_k", 256, 110, 1, NULL, NULL},
    [TIDE_DTYPE_Q4_K] = {"q4_k", 256, 144, 1, tide_quant_to_float_q4_k, tide_quant_from_float_q4_k},
    [TIDE_DTYPE_Q5_K] = {"q5_k", 256, 176, 1, NULL, NULL},
    [TIDE_DTYPE_Q6_K] = {"q6_k", 256, 210, 1, tide_quant_to_float_q6_k, tide_quant_from_float_q6_k},
    [TIDE_DTYPE_Q8_K] = {"q8_k", 256, 292, 1, tide_quant_to_float_q8_k, tide_quant_from_float_q8_k},
};

const tide_dtype_traits_t *tide_dtype_traits(int32_t dt) {
  if (dt < 0 || dt >= TIDE_DTYPE_COUNT) return NULL;
  return &traits[dt];
}

int32_t tide_dtype_from_name(const char *name) {
  if (!name) return -1;
  static const struct {
    const char *alias;
    int32_t dt;
  } aliases[] = {
      {"float32", TIDE_DTYPE_F32}, {"float", TIDE_DTYPE_F32},      {"float16", TIDE_DTYPE_F16},
      {"half", TIDE_DTYPE_F16},    {"bfloat16", TIDE_DTYPE_BF16}, {"float8_e4m3fn", TIDE_DTYPE_F8_E4M3},
      {"f8_e4m3fn", TIDE_DTYPE_F8_E4M3}, {"fp8", TIDE_DTYPE_F8_E4M3}, {"int32", TIDE_DTYPE_I32},
      {"int8", TIDE_DTYPE_I8},     {"int64", TIDE_DTYPE_I64},     {"uint8", TIDE_DTYPE_U8},
      {"float64", TIDE_DTYPE_F64}, {"double", TIDE_DTYPE_F64},     {"int16", TIDE_DTYPE_I16},
  };
  for (int32_t i = 0; i < TIDE_DTYPE_COUNT; i++)
    if (strcasecmp(name, traits[i].name) == 0) return i;
  for (size_t i = 0; i < sizeof aliases / sizeof aliases[0]; i++)
    if (strcasecmp(name, aliases[i].alias) == 0) return aliases[i].dt;
  return -1;
}

int64_t tide_dtype_row_bytes(int32_t dt, int64_t n) {
  const tide_dtype_traits_t *t = tide_dtype_traits(dt);
  if (!t || n < 0 || n % t->block_size != 0) return -1;
  return n / t->block_size * t->block_bytes;
}
