/* dtype.h: element types and their traits table.
 *
 * A dtype is one row of a traits table: the size of a block (1 for scalar
 * types), the bytes one block takes, and conversions to and from float32.
 * Block-quantized types (GGUF's Q8_0, Q4_K, ...) are rows too; until their
 * kernels exist their conversion functions are NULL and they are carried as
 * opaque blocks. */
#ifndef TIDE_DTYPE_H
#define TIDE_DTYPE_H

#ifndef TIDE_FFI
#include <stdint.h>
#include <stddef.h>
#endif

typedef enum tide_dtype {
  TIDE_DTYPE_F32 = 0,
  TIDE_DTYPE_F16 = 1,
  TIDE_DTYPE_BF16 = 2,
  TIDE_DTYPE_F8_E4M3 = 3, /* float8_e4m3fn; optional per-block f32 scales on the tensor */
  TIDE_DTYPE_I32 = 4,
  TIDE_DTYPE_I8 = 5,
  TIDE_DTYPE_I64 = 6,
  TIDE_DTYPE_U8 = 7,
  TIDE_DTYPE_F64 = 8,
  TIDE_DTYPE_I16 = 9,
  /* GGUF block-quantized types (layouts as in GGML) */
  TIDE_DTYPE_Q4_0 = 10,
  TIDE_DTYPE_Q4_1 = 11,
  TIDE_DTYPE_Q5_0 = 12,
  TIDE_DTYPE_Q5_1 = 13,
  TIDE_DTYPE_Q8_0 = 14,
  TIDE_DTYPE_Q8_1 = 15,
  TIDE_DTYPE_Q2_K = 16,
  TIDE_DTYPE_Q3_K = 17,
  TIDE_DTYPE_Q4_K = 18,
  TIDE_DTYPE_Q5_K = 19,
  TIDE_DTYPE_Q6_K = 20,
  TIDE_DTYPE_Q8_K = 21,
  TIDE_DTYPE_COUNT = 22
} tide_dtype_t;

typedef void (*tide_to_float_fn)(const void *src, float *dst, int64_t n);
typedef void (*tide_from_float_fn)(const float *src, void *dst, int64_t n);

typedef struct tide_dtype_traits {
  const char *name;        /* "f32", "bf16", "q4_k", ... */
  int32_t block_size;      /* elements per block (1 for scalar types) */
  int32_t block_bytes;     /* bytes per block */
  int32_t is_float;        /* 1 for float types (incl. quantized), 0 for ints */
  tide_to_float_fn to_float;     /* n is a multiple of block_size; NULL if opaque */
  tide_from_float_fn from_float; /* NULL if not supported */
} tide_dtype_traits_t;

/* Traits row for dt, or NULL when dt is out of range. */
const tide_dtype_traits_t *tide_dtype_traits(int32_t dt);
/* Dtype by name ("f32", "BF16", "float8_e4m3fn", "q8_0", ...), or -1. */
int32_t tide_dtype_from_name(const char *name);
/* Bytes needed for n elements of dt (n must be a multiple of the block size), or -1. */
int64_t tide_dtype_row_bytes(int32_t dt, int64_t n);

/* Scalar conversions (exported for Lua and tests). */
float tide_f16_to_f32(uint16_t h);
uint16_t tide_f32_to_f16(float f);
float tide_bf16_to_f32(uint16_t h);
uint16_t tide_f32_to_bf16(float f);
float tide_f8e4m3_to_f32(uint8_t v);
uint8_t tide_f32_to_f8e4m3(float f);

#ifndef TIDE_FFI
#include <string.h>
static inline float tide_bf16_to_f32_inline(uint16_t h) {
  uint32_t u = (uint32_t)h << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
#endif

#endif
