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
#include "error.h"
#include "pool.h"
#include "tensor.h"

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
/* q5_0 (32 values, 22 bytes): half d; uint32 qh (5th bits); uint8 qs[16]   x[j] = d * (q - 16) */
void tide_quant_to_float_q5_0(const void *src, float *dst, int64_t n);
void tide_quant_from_float_q5_0(const float *src, void *dst, int64_t n);

/* ---- dots (kernels/quant_dot.c, kernels/avx2/quant_avx2.c) ----
 * dot(w, a) over n values, w a row in a weight format, a the activation row
 * made by tide_quant_act_quantize for w's dtype. */
typedef float (*tide_quant_dot_fn)(const void *w, const void *a, int64_t n);
/* Activation format for weight dtype dt (q8_0 for q8_0/q4_0, q8_k for q4_k/q6_k), or -1. */
int32_t tide_quant_act_dtype(int32_t dt);
/* An activation row for the dots of weight dtype dt: K values quantized to
 * tide_quant_act_dtype(dt) blocks, and for q4_0 weights followed by two floats
 * per 32-value block, {d, d * sum(q)} (the block's scale as f32 and its scaled
 * sum, so the q4_0 dot can take the weights' -8 offset out of the inner loop).
 * Bytes per row, and the quantizer (x: K floats). */
int64_t tide_quant_act_row_bytes(int32_t dt, int64_t K);
void tide_quant_act_quantize(int32_t dt, const float *x, void *a, int64_t K);
/* AVX2 activation quantizers, byte-identical to the references (q8_0: with the
 * {d, d * sum q} floats written to aux when aux is not NULL). */
void tide_quant_act_q8_0_avx2(const float *x, void *dst, int64_t n, void *aux);
void tide_quant_act_q8_k_avx2(const float *x, void *dst, int64_t n);
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

/* Tiles: out[m] = dot(w, a[m]) for the 4 activation rows a[0..3] (repeat a pointer
 * for fewer rows); the weight row is decoded once per block for all 4. */
typedef void (*tide_quant_tile4_fn)(const void *w, const void *const *a, int64_t n, float *out);
tide_quant_tile4_fn tide_quant_tile4(int32_t dt);   /* dispatched */
tide_quant_tile4_fn tide_quant_tile4_c(int32_t dt); /* portable: four dots of tide_quant_dot_c */
tide_quant_tile4_fn tide_quant_tile4_avx2(int32_t dt);
void tide_quant_tile4_q8_0_avx2(const void *w, const void *const *a, int64_t n, float *out);
void tide_quant_tile4_q4_0_avx2(const void *w, const void *const *a, int64_t n, float *out);
void tide_quant_tile4_q4_k_avx2(const void *w, const void *const *a, int64_t n, float *out);
void tide_quant_tile4_q6_k_avx2(const void *w, const void *const *a, int64_t n, float *out);

/* tide_quant_matmul uses the integer dots up to this many rows of a (unless the
 * packed tiles apply); beyond, panels of b dequantized to f32 and sgemm.
 * (History: measured before the packed tiles and the AVX2 dequantizers.)
 * Measured with bench/quant_bench.c, 2 threads, K = 4096, on this shared
 * 2-core machine (so +-20% between runs), GOP/s: integer dots flat at 70-100
 * from M = 4 to 256; panels + sgemm 25-40 at M = 16, 47-71 at 32, 59-74 at 64,
 * then 53-90 at 128 and 57-99 at 256 (two runs). The dots win clearly up to 64;
 * past it neither wins consistently here, and the panels keep f32 activations. */
#define TIDE_QUANT_DOT_MAX_M 64

/* The activation format llama.cpp's CPU backend quantizes rows of a to for block weights of dtype dt (its
 * vec_dot_type): q8_0 for q8_0 / q4_0 / q5_0, q8_k for q4_k / q6_k; -1 for others. Paths that multiply
 * block weights in f32 (dequantized panels + sgemm, at large M or for dtypes without a dot kernel) first
 * round a through this format (tide_quant_act_round), so that every path computes the products llama.cpp
 * computes on the same GGUF, up to the order of float sums: on small models with near ties, activations
 * kept in f32 on some paths moved logits by ~0.1 against llama.cpp. */
int32_t tide_quant_ggml_act_dtype(int32_t dt);
/* The portable activation quantizer for activation format adt (q8_0: llama.cpp's activation arithmetic,
 * tide_quant_act_q8_0_c; q8_k: the format's from_float); the AVX2 ones write the same bytes. */
void tide_quant_act_ref(int32_t adt, const float *x, void *dst, int64_t n);
void tide_quant_act_q8_0_c(const float *x, void *dst, int64_t n);
/* dst (M, K, dense) = rows of A (stride lda) quantized to tide_quant_ggml_act_dtype(dt) and back; K a
 * multiple of that format's block. Returns 0, or -1 when dt has no such format or K does not fit. */
int tide_quant_act_round(int32_t dt, const float *A, int64_t lda, int64_t M, int64_t K, float *dst);

/* out (M, N) = A (M, K) @ b^T for b (N, K) in a dtype with a dot kernel (dense
 * rows, no block scales, K a multiple of its block size): each row of A is
 * quantized once to the activation format, then dots run threaded over N
 * (or, from tide_quant_packed_min_m rows on with AVX-512 VNNI, the packed tiles). */
int tide_quant_matmul(tide_pool_t *pool, float *out, const float *A, int64_t lda, const tide_tensor_t *b, int64_t M,
                      int64_t N, int64_t K, tide_err_t *err);
/* The integer-dot path alone (tide_quant_matmul picks it or the packed tiles). */
int tide_quant_matmul_dots(tide_pool_t *pool, float *out, const float *A, int64_t lda, const tide_tensor_t *b,
                           int64_t M, int64_t N, int64_t K, tide_err_t *err);

/* ---- M = 1 (decode): AVX-512 VNNI dots of q8_0 / q4_0 rows (kernels/avx2/quant_avx512.c) ----
 * The activation row (q8_0 blocks from tide_quant_act_quantize) repacked per group of 4 blocks
 * (TIDE_QUANT_A512_GROUP bytes; a last partial group is padded): 128 activation bytes (q8_0 weights: the
 * 4 blocks in order; q4_0 weights: the 4 blocks' values 0..15, then their values 16..31), int32
 * accumulator starts per vpdpbusd lane (q8_0: 32 lanes, -128 x the sum of the lane's 4 activation bytes;
 * q4_0: 16 lanes, -8 x the sum of the lane's 8), then the 4 blocks' scales as f32 (offset TIDE_QUANT_A512_DA). */
#define TIDE_QUANT_A512_GROUP 272
#define TIDE_QUANT_A512_DA 256
int64_t tide_quant_act512_bytes(int64_t K);
void tide_quant_act512_pack(int32_t dt, const void *aq, int64_t K, void *dst);
/* The dot for weight dtype dt on a repacked activation row (NULL: none, or the CPU lacks AVX-512 VNNI). */
tide_quant_dot_fn tide_quant_dot512(int32_t dt);
float tide_quant_dot512_q8_0(const void *w, const void *a, int64_t n);
float tide_quant_dot512_q4_0(const void *w, const void *a, int64_t n);

/* ---- prefill, q8_0 / q4_0 weights: 16 weight rows interleaved per 4 bytes (AVX-512 VNNI) ----
 * A panel of 16 rows of K values (nb = K/32 blocks): per block b, 512 bytes: for kk = 0..7 and row r, the
 * 4 unsigned bytes x of values 32b + 4kk .. +3 of row r at b*512 + kk*64 + 4r (q8_0: q + 128; q4_0: the
 * 4-bit values); then nb*16 floats d (row r's block scale at b*16 + r) and nb*16 floats c (q8_0: -128 d;
 * q4_0: -8 d); rows past the tensor's end are zeros. Activation rows as tide_quant_pack_act makes them for
 * q4_0 weights (signed bytes, then kp/32 floats da, then kp/32 floats da * sum q), so that
 *   out[j][r] = sum_b d_rb da_jb (x_r . a_j)_b + c_rb (da sum a)_jb. */
/* tide_quant_matmul uses these from this many rows of A on (q8_0 / q4_0, AVX-512 VNNI). Measured with
 * bench/quant_bench.c (QB_CPU=1 QB_PREFILL=1, 1 thread, K = 2048, N = 5632), GOP/s 4 x 4 tiles vs
 * interleaved: q8_0 M=16 135/114, 32 146/168, 64 206/256, 512 224/370; q4_0 M=16 158/150, 32 196/212,
 * 64 222/300, 512 213/399 (N = 2048: q8_0 237/388, q4_0 226/379). */
#define TIDE_QUANT_IL_MIN_M 32
int64_t tide_quant_il_panel_bytes(int64_t K);
void tide_quant_pack_il(int32_t dt, const tide_tensor_t *b, int64_t n0, int nr, int64_t K, uint8_t *dst);
void tide_quant_pack_il_c(int32_t dt, const tide_tensor_t *b, int64_t n0, int nr, int64_t K, uint8_t *dst);
void tide_quant_pack_il_avx2(int32_t dt, const tide_tensor_t *b, int64_t n0, int nr, int64_t K, uint8_t *dst);
/* out[j * ldo + r] for j < na (<= 4; a[] holds 4 rows, repeated past na) and r < nr (<= 16). */
void tide_quant_il_tile(const uint8_t *wp, int64_t nb, const uint8_t *const *a, int64_t kp, float *out, int64_t ldo,
                        int nr, int na);
void tide_quant_il_tile_c(const uint8_t *wp, int64_t nb, const uint8_t *const *a, int64_t kp, float *out,
                          int64_t ldo, int nr, int na);
/* out (M, N) = A @ b^T through the interleaved panels (q8_0 / q4_0 b); use_vnni = 0: the portable tile. */
int tide_quant_matmul_il(tide_pool_t *pool, float *out, const float *A, int64_t lda, const tide_tensor_t *b, int64_t M,
                         int64_t N, int64_t K, int use_vnni, tide_err_t *err);

/* ---- large M: AVX-512 VNNI tiles on packed rows (kernels/quant_dot.c drives, quant_avx2.c computes) ----
 * q8_0, q4_0 and q4_k weights, activations quantized to q8_0 (also for q4_k). A packed row of K values:
 * kp = K rounded up to 512 bytes (zero padded), then kp/32 floats d and kp/32 floats c (zero padded), per
 * 32-value block b, so that
 *   dot(w, a) = sum_b dx[b] dy[b] (x . y)_b + sum_b cx[b] cy[b]
 * with x the row whose bytes are unsigned (vpdpbusd's first operand), y the signed one:
 *   q8_0: x = activation, bytes q + 128, d = c = da; y = weight, bytes q, d = dw, c = -128 dw sum(q)
 *   q4_0: x = weight, bytes the 4-bit values 0..15, d = dw, c = -8 dw;
 *   q4_k: x = weight, bytes the 4-bit values, d = d sc_j, c = -dmin m_j (sub-block j);
 *         for both y = activation, bytes q, d = da, c = da sum(q). */
int tide_quant_has_vnni512(void);
/* tide_quant_matmul takes q8_0 / q4_0 / q4_k weights through the packed tiles (when the CPU has AVX-512 VNNI)
 * from M = 8 / 8 / 48 rows of A on, the integer dots below (each call packs all of b, ~N*K/32 AVX2 steps).
 * Measured with bench/quant_bench.c (QB_CPU=1 QB_PREFILL=1 QB_M=..., 1 thread, K = 2048, N = 5632, CPU time
 * on a shared machine), GOP/s dots vs packed: q8_0 M=4 84/61, 6 57/72, 8 75/99, 16 82/141, 32 85/176;
 * q4_0 M=4 93/84, 6 66/83, 8 84/126, 16 86/160, 32 87/193; q4_k M=16 93/60, 32 98/98 (earlier: 48 70/76).
 * (Before the register-blocked tile and the AVX2 packers the crossovers were 16 / 32 / 48.) */
int64_t tide_quant_packed_min_m(int32_t dt); /* 0: no packed tiles for dt */
/* 1 when tide_op_matmul should hand b of dtype dt and M rows of a to tide_quant_matmul (which picks the
 * packed tiles, the integer dots up to TIDE_QUANT_DOT_MAX_M rows, else AVX2-dequantized panels + sgemm). */
int tide_quant_matmul_wants(int32_t dt, int64_t M);
/* The activation format whose values tide_op_matmul multiplies for M rows of a and block weights of dtype
 * dt (the panels use f32 rows rounded through it): llama.cpp's for that dtype (tide_quant_ggml_act_dtype),
 * on every path; -1 where none. */
int32_t tide_quant_matmul_act_dtype(int32_t dt, int64_t M);
int64_t tide_quant_packed_kp(int64_t K);
/* out[j] (nblk * 32 values) = sum_k s[k] * row k of q8_0 / q4_0 blocks starting at w + k * rstride, dequantized
 * in registers (AVX2); matmul's path for small M and trans_b = 0 (kernels/matmul.c, rows_task). */
void tide_quant_rows_axpy_avx2(int32_t dt, const uint8_t *w, int64_t rstride, int64_t K, const float *s,
                               int64_t nblk, float *out);
/* A q8_k activation row (K values) packed for q4_k weights: signed bytes, d = the 256-block's scale, c = d sum(q)
 * per 32 values, so the packed tiles compute exactly the q4_k . q8_k dots. */
void tide_quant_pack_act_q8_k(const void *a, int64_t K, uint8_t *dst);
/* Pack one activation row (made by tide_quant_act_quantize for weight dtype dt) or one weight row. */
void tide_quant_pack_act(int32_t dt, const void *a, int64_t K, uint8_t *dst);
void tide_quant_pack_weight(int32_t dt, const void *w, int64_t K, uint8_t *dst);
/* The portable packer, and the AVX2 part for q8_0 / q4_0 (the K values only; tide_quant_pack_weight clears
 * the padding). */
void tide_quant_pack_weight_c(int32_t dt, const void *w, int64_t K, uint8_t *dst);
void tide_quant_pack_act_c(int32_t dt, const void *a, int64_t K, uint8_t *dst);
void tide_quant_pack_act_avx2(int32_t dt, const void *a, int64_t K, uint8_t *dst);
void tide_quant_pack_weight_avx2(int32_t dt, const void *w, int64_t K, uint8_t *dst);
/* The packed-row product above for 4 x rows x 4 y rows (portable reference and AVX-512 VNNI). */
void tide_quant_vnni_tile44(const uint8_t *const *x, const uint8_t *const *y, int64_t kp, float *out, int64_t si,
                            int64_t sj, int mi, int nj);
void tide_quant_packed_tile44_c(const uint8_t *const *x, const uint8_t *const *y, int64_t kp, float *out, int64_t si,
                                int64_t sj, int mi, int nj);
/* out (M, N) = A @ b^T through packed tiles (q8_0 / q4_0 / q4_k b); use_vnni = 0 runs the portable tile. */
int tide_quant_matmul_packed(tide_pool_t *pool, float *out, const float *A, int64_t lda, const tide_tensor_t *b,
                             int64_t M, int64_t N, int64_t K, int use_vnni, tide_err_t *err);

/* The same product through panels of b dequantized to f32 (tide_quant_to_float) and cblas_sgemm,
 * threaded over panels of N. */
int tide_quant_matmul_panels(tide_pool_t *pool, float *out, const float *A, int64_t lda, const tide_tensor_t *b,
                             int64_t M, int64_t N, int64_t K, tide_err_t *err);
/* Row dequantizer for dt (the AVX2 one when the CPU has it, else the reference); NULL if none. */
typedef void (*tide_quant_to_float_fn)(const void *src, float *dst, int64_t n);
tide_quant_to_float_fn tide_quant_to_float(int32_t dt);
/* AVX2 dequantizers: the same floats as the references (same operations, same order). */
tide_quant_to_float_fn tide_quant_to_float_avx2(int32_t dt);
void tide_quant_to_float_q8_0_avx2(const void *src, float *dst, int64_t n);
void tide_quant_to_float_q4_0_avx2(const void *src, float *dst, int64_t n);
void tide_quant_to_float_q4_k_avx2(const void *src, float *dst, int64_t n);
void tide_quant_to_float_q6_k_avx2(const void *src, float *dst, int64_t n);

#endif
