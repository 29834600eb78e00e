/* quant.h: GGML-compatible block quantization formats and their dot kernels
 * (internal to the library; not part of the FFI).
 *
 * Block layouts, byte for byte as GGML (little-endian; "half" is IEEE fp16):
 *   q8_0 (32 values, 34 bytes):  half d; int8 qs[32]                 x = d * q
 *   q4_0 (32 values, 18 bytes):  half d; uint8 qs[16]                x[j] = d * ((qs[j] & 15) - 8),
 *                                                                     x[j+16] = d * ((qs[j] >> 4) - 8)
 *   q4_k (256 values, 144 bytes): half d; half dmin; uint8 scales[12]; uint8 qs[128]
 *        8 sub-blocks of 32 with 6-bit scale sc and 6-bit min m packed in scales[12];
 *        x = d*sc*q - dmin*m, q 4 bits; qs[32*c + l] holds values 64c + l (low nibble)
 *        and 64c + 32 + l (high nibble)
 *   q6_k (256 values, 210 bytes): uint8 ql[128]; uint8 qh[64]; int8 scales[16]; half d
 *        x = d * scales[i/16] * (q - 32), q 6 bits: low 4 bits in ql, high 2 bits in qh
 *   q8_k (256 values, 292 bytes): float d; int8 qs[256]; int16 bsums[16] (sums of 16 qs)
 *        the activation format of the k-quant dots (not stored in files)
 * Fields are read with memcpy: blocks sit at any byte offset inside a row. */
#ifndef TIDE_QUANT_H
#define TIDE_QUANT_H

#include <stdint.h>

#include "dtype.h"

#define TIDE_QK 32   /* q8_0 / q4_0 block */
#define TIDE_QK_K 256 /* k-quant super-block */

/* ---- formats (kernels/quant.c): n is a multiple of the block size ---- */
void tide_quant_to_float_q8_0(const void *src, float *dst, int64_t n);
void tide_quant_to_float_q4_0(const void *src, float *dst, int64_t n);
void tide_quant_to_float_q4_k(const void *src, float *dst, int64_t n);
void tide_quant_to_float_q6_k(const void *src, float *dst, int64_t n);
void tide_quant_to_float_q8_k(const void *src, float *dst, int64_t n);
/* Reference quantizers: the same bytes as GGML's quantize_row_*_ref. */
void tide_quant_from_float_q8_0(const float *src, void *dst, int64_t n);
void tide_quant_from_float_q4_0(const float *src, void *dst, int64_t n);
void tide_quant_from_float_q4_k(const float *src, void *dst, int64_t n);
void tide_quant_from_float_q6_k(const float *src, void *dst, int64_t n);
void tide_quant_from_float_q8_k(const float *src, void *dst, int64_t n);

/* ---- dots (kernels/quant_dot.c, kernels/avx2/quant_avx2.c) ----
 * dot(w, a) over n values, w a row in a weight format, a the activation row
 * already quantized to the format tide_quant_act_dtype(w's dtype) gives. */
typedef float (*tide_quant_dot_fn)(const void *w, const void *a, int64_t n);
/* Activation format for weight dtype dt (q8_0 for q8_0/q4_0, q8_k for q4_k/q6_k), or -1. */
int32_t tide_quant_act_dtype(int32_t dt);
/* 1 when dt has a quantized dot kernel. */
int tide_quant_has_dot(int32_t dt);
/* The dot for weight dtype dt: the AVX2 one when the CPU has it, else the portable one; NULL if none. */
tide_quant_dot_fn tide_quant_dot(int32_t dt);
/* Portable references, always present (NULL for dtypes without a dot). */
tide_quant_dot_fn tide_quant_dot_c(int32_t dt);
tide_quant_dot_fn tide_quant_dot_avx2(int32_t dt);

float tide_quant_dot_q8_0_c(const void *w, const void *a, int64_t n);
float tide_quant_dot_q4_0_c(const void *w, const void *a, int64_t n);
float tide_quant_dot_q4_k_c(const void *w, const void *a, int64_t n);
float tide_quant_dot_q6_k_c(const void *w, const void *a, int64_t n);
float tide_quant_dot_q8_0_avx2(const void *w, const void *a, int64_t n);
float tide_quant_dot_q4_0_avx2(const void *w, const void *a, int64_t n);
float tide_quant_dot_q4_k_avx2(const void *w, const void *a, int64_t n);
float tide_quant_dot_q6_k_avx2(const void *w, const void *a, int64_t n);

#endif
