/* kern.h: helpers shared by the op implementations (not part of the public API).
 *
 * A tensor is seen as rows: the innermost dimension is the row, every outer
 * index (flattened, row-major) picks one row. Rows may be strided anywhere;
 * elements inside a row may be strided too for scalar dtypes. */
#ifndef TIDE_KERN_H
#define TIDE_KERN_H

#include <stdint.h>
#include <string.h>

#include "dtype.h"
#include "error.h"
#include "ops.h"
#include "tensor.h"

/* Chunk of columns converted at a time on the stack (a multiple of every block size). */
#define TIDE_K_CHUNK 256

static inline int64_t tide_k_inner(const tide_tensor_t *t) { return t->ndim ? t->shape[t->ndim - 1] : 1; }
static inline int64_t tide_k_rows(const tide_tensor_t *t) {
  int64_t n = 1;
  for (int32_t i = 0; i + 1 < t->ndim; i++) n *= t->shape[i];
  return n;
}
/* Address of row r (flat index over all but the innermost dim). */
static inline char *tide_k_row(const tide_tensor_t *t, int64_t r) {
  char *p = t->data;
  for (int32_t d = t->ndim - 2; d >= 0; d--) {
    int64_t n = t->shape[d];
    p += (r % n) * t->stride[d];
    r /= n;
  }
  return p;
}
/* Element stride (bytes) inside a row. */
static inline int64_t tide_k_col_stride(const tide_tensor_t *t) {
  return t->ndim ? t->stride[t->ndim - 1] : tide_dtype_traits(t->dtype)->block_bytes;
}
/* 1 when the elements of each row are adjacent. */
static inline int tide_k_row_dense(const tide_tensor_t *t) {
  const tide_dtype_traits_t *tr = tide_dtype_traits(t->dtype);
  return tr->block_size > 1 || tide_k_col_stride(t) == tr->block_bytes || tide_k_inner(t) <= 1;
}

/* Convert n elements of row r starting at column c0 to float32 in dst; block
 * scales are applied. c0 and n must be multiples of the block size (n may end the row). */
void tide_k_load(const tide_tensor_t *t, int64_t r, int64_t c0, int64_t n, float *dst);
/* Same for a row pointer already computed (row index r only used for scales). */
void tide_k_load_ptr(const tide_tensor_t *t, const char *row, int64_t r, int64_t c0, int64_t n, float *dst);
/* Element (row r, column c) as float32 with scales (any float dtype, incl. block types). */
float tide_k_get(const tide_tensor_t *t, int64_t r, int64_t c);
/* Store n floats into row r of t from column c0, converting to t's dtype. */
void tide_k_store(tide_tensor_t *t, int64_t r, int64_t c0, int64_t n, const float *src);
void tide_k_store_ptr(tide_tensor_t *t, char *row, int64_t c0, int64_t n, const float *src);
/* Scale value covering (row, col) of a 2-D tensor with block scales (1 without). */
float tide_k_scale_at(const tide_tensor_t *t, int64_t row, int64_t col);

/* Element i of an i32 tensor seen as a flat vector (any strides). */
static inline int32_t tide_k_i32(const tide_tensor_t *t, int64_t i) {
  const char *p = tide_k_row(t, i / tide_k_inner(t));
  int32_t v;
  memcpy(&v, p + (i % tide_k_inner(t)) * tide_k_col_stride(t), 4);
  return v;
}

/* Validation; each returns 0 or fills err ("op: name ...") and returns the code. */
int tide_k_check_tensor(const tide_tensor_t *t, const char *op, const char *name, tide_err_t *err);
/* readable float tensor with a conversion to f32 */
int tide_k_check_float(const tide_tensor_t *t, const char *op, const char *name, tide_err_t *err);
/* contiguous, writable f32 */
int tide_k_check_out_f32(const tide_tensor_t *t, const char *op, const char *name, tide_err_t *err);
/* writable (any layout) */
int tide_k_check_writable(const tide_tensor_t *t, const char *op, const char *name, tide_err_t *err);
/* i32 with n elements */
int tide_k_check_i32(const tide_tensor_t *t, int64_t n, const char *op, const char *name, tide_err_t *err);
/* Same ndim and sizes. */
int tide_k_same_shape(const tide_tensor_t *a, const tide_tensor_t *b);
/* "(2, 3, 4)" into buf. */
const char *tide_k_shape_str(const tide_tensor_t *t, char *buf, size_t n);

/* ---- vector primitives: portable versions (kernels/vec.c) and AVX2 (kernels/avx2/vec_avx2.c) ---- */

/* dot(a f32, b in dtype dt) over n contiguous elements (f32, f16, bf16, f8_e4m3 without scales). */
float tide_vec_dot(const float *a, const void *b, int32_t dt, int64_t n);
/* y[i] += s * x[i], x in dtype dt (f32, f16, bf16, f8_e4m3). */
void tide_vec_axpy(float *y, float s, const void *x, int32_t dt, int64_t n);
/* dst[i] = float(src[i]) for f32/f16/bf16/f8_e4m3 contiguous. */
void tide_vec_to_f32(float *dst, const void *src, int32_t dt, int64_t n);
/* Elementwise f32. */
void tide_vec_add(float *o, const float *a, const float *b, int64_t n);
void tide_vec_mul(float *o, const float *a, const float *b, int64_t n);
void tide_vec_scale(float *o, const float *a, float s, int64_t n);
void tide_vec_silu(float *o, const float *x, int64_t n);
void tide_vec_sigmoid(float *o, const float *x, int64_t n);
void tide_vec_swiglu(float *o, const float *g, const float *u, int64_t n);
/* Sum of x[i]^2 with each square rounded to f32 and the sum kept in double (ggml's RMSNorm arithmetic);
 * max; and o = exp(x*s - m) returning the sum. */
double tide_vec_sumsq(const float *x, int64_t n);
float tide_vec_max(const float *x, int64_t n);
float tide_vec_exp_sum(float *o, const float *x, float s, float m, int64_t n);

/* Portable implementations (always present). */
float tide_vec_dot_c(const float *a, const void *b, int32_t dt, int64_t n);
void tide_vec_axpy_c(float *y, float s, const void *x, int32_t dt, int64_t n);
void tide_vec_to_f32_c(float *dst, const void *src, int32_t dt, int64_t n);
void tide_vec_add_c(float *o, const float *a, const float *b, int64_t n);
void tide_vec_mul_c(float *o, const float *a, const float *b, int64_t n);
void tide_vec_scale_c(float *o, const float *a, float s, int64_t n);
void tide_vec_silu_c(float *o, const float *x, int64_t n);
void tide_vec_sigmoid_c(float *o, const float *x, int64_t n);
void tide_vec_swiglu_c(float *o, const float *g, const float *u, int64_t n);
double tide_vec_sumsq_c(const float *x, int64_t n);
float tide_vec_max_c(const float *x, int64_t n);
float tide_vec_exp_sum_c(float *o, const float *x, float s, float m, int64_t n);

/* AVX2 + FMA + F16C implementations (call only when tide_k_has_avx2()). */
float tide_vec_dot_avx2(const float *a, const void *b, int32_t dt, int64_t n);
void tide_vec_axpy_avx2(float *y, float s, const void *x, int32_t dt, int64_t n);
void tide_vec_to_f32_avx2(float *dst, const void *src, int32_t dt, int64_t n);
void tide_vec_add_avx2(float *o, const float *a, const float *b, int64_t n);
void tide_vec_mul_avx2(float *o, const float *a, const float *b, int64_t n);
void tide_vec_scale_avx2(float *o, const float *a, float s, int64_t n);
void tide_vec_silu_avx2(float *o, const float *x, int64_t n);
void tide_vec_sigmoid_avx2(float *o, const float *x, int64_t n);
void tide_vec_swiglu_avx2(float *o, const float *g, const float *u, int64_t n);
double tide_vec_sumsq_avx2(const float *x, int64_t n);
float tide_vec_max_avx2(const float *x, int64_t n);
float tide_vec_exp_sum_avx2(float *o, const float *x, float s, float m, int64_t n);
/* Four dot products of one f32 vector a with rows b0..b3 (same dtype) at once. */
void tide_vec_dot4_avx2(const float *a, const void *const *b, int32_t dt, int64_t n, float *out);
/* As tide_vec_dot4_avx2, also prefetching the four rows pf (read next; NULL: none) as far as b is read. */
void tide_vec_dot4_pf_avx2(const float *a, const void *const *b, int32_t dt, int64_t n, float *out,
                           const void *const *pf);

/* Run fn on the pool when work (a rough estimate of the single-thread time in
 * nanoseconds) is large enough to pay for waking the threads; otherwise on the
 * caller only. Waking the pool measured ~60 us per run on this 2-core machine
 * (condition variables), so small decode-time ops stay on one thread. The
 * split does not change results: every output element is computed by the
 * same code whichever thread runs it (sgemm on column slices aside, whose
 * sums OpenBLAS blocks along K only). */
#define TIDE_K_MIN_PARALLEL 50000
void tide_k_run(tide_pool_t *pool, tide_pool_fn fn, void *ctx, int64_t work);
/* out[g] = dot(q + g*ldq, x) for g < ng (x in dtype dt, read once for all rows). */
void tide_vec_dotn(const float *q, int64_t ldq, int32_t ng, const void *x, int32_t dt, int64_t n, float *out);
void tide_vec_dotn_c(const float *q, int64_t ldq, int32_t ng, const void *x, int32_t dt, int64_t n, float *out);
void tide_vec_dotn_avx2(const float *q, int64_t ldq, int32_t ng, const void *x, int32_t dt, int64_t n, float *out);
/* y + g*ldy += s[g] * x for g < ng. */
void tide_vec_axpyn(float *y, int64_t ldy, const float *s, int32_t ng, const void *x, int32_t dt, int64_t n);
void tide_vec_axpyn_c(float *y, int64_t ldy, const float *s, int32_t ng, const void *x, int32_t dt, int64_t n);
void tide_vec_axpyn_avx2(float *y, int64_t ldy, const float *s, int32_t ng, const void *x, int32_t dt, int64_t n);
/* Four f8_e4m3 rows b[r] against a: sum over segments j of seg columns of
 * dot(segment) * srow[r][j] (per-segment block scales). */
void tide_vec_dot_f8s4_c(const float *a, const uint8_t *const *b, const float *const *srow, int64_t n, int64_t seg,
                         float *out);
void tide_vec_dot_f8s4_avx2(const float *a, const uint8_t *const *b, const float *const *srow, int64_t n, int64_t seg,
                            float *out);
void tide_vec_dot_f8s4(const float *a, const uint8_t *const *b, const float *const *srow, int64_t n, int64_t seg,
                       float *out);

/* out[m*ldo + j] = dot(a + m*lda, b_j) for m < ma and the two rows b_0 = b0, b_1 = b1 (dtype dt). */
void tide_vec_tile2(const float *a, int64_t lda, int32_t ma, const void *b0, const void *b1, int32_t dt, int64_t n,
                    float *out, int64_t ldo);
void tide_vec_tile2_c(const float *a, int64_t lda, int32_t ma, const void *b0, const void *b1, int32_t dt, int64_t n,
                      float *out, int64_t ldo);
void tide_vec_tile2_avx2(const float *a, int64_t lda, int32_t ma, const void *b0, const void *b1, int32_t dt,
                         int64_t n, float *out, int64_t ldo);
/* As tide_vec_tile2_avx2, also prefetching the rows pf0, pf1 (read next; NULL: none) as far as b0, b1 are read. */
void tide_vec_tile2_pf_avx2(const float *a, int64_t lda, int32_t ma, const void *b0, const void *b1, int32_t dt,
                            int64_t n, float *out, int64_t ldo, const void *pf0, const void *pf1);

/* 1 when the CPU runs the AVX2 paths (AVX2, FMA and F16C). */
int tide_k_has_avx2(void);
/* 1 when it also has AVX-512F (kernels/avx2/vec_avx512.c); the AVX2 entry points of dotn / axpyn hand
 * f32 rows with n a multiple of 16 to these (the attention kernel's per-row products). */
int tide_k_has_avx512(void);
void tide_vec_dotn_f32_avx512(const float *q, int64_t ldq, int32_t ng, const float *x, int64_t n, float *out);
void tide_vec_axpyn_f32_avx512(float *y, int64_t ldy, const float *s, int32_t ng, const float *x, int64_t n);
/* float8_e4m3fn -> f32 table (256 entries). */
extern const float tide_k_f8_table[256];

/* ---- argument checks (kernels/check.c), shared by references and fast paths ---- */
typedef struct tide_k_mm {
  int64_t M, N, K;
} tide_k_mm_t;
enum { TIDE_K_BCAST_FULL = 0, TIDE_K_BCAST_ROW = 1, TIDE_K_BCAST_SCALAR = 2 };
typedef struct tide_k_cache { /* a cache (n_blocks, block_size, n_kv, d); strides in bytes */
  int64_t n_blocks, block_size, n_kv, d;
  int64_t s_block, s_row, s_head, s_col;
  int dense; /* elements of a row adjacent */
} tide_k_cache_t;
typedef struct tide_k_attn {
  int64_t n_tok, n_head, dk, dv;
  int64_t max_len; /* longest causal span (max pos + 1) */
  tide_k_cache_t k, v;
} tide_k_attn_t;

int tide_k_check_matmul(const tide_tensor_t *out, const tide_tensor_t *a, const tide_tensor_t *b, int32_t trans_b,
                        tide_k_mm_t *mm, tide_err_t *err);
int tide_k_check_binary(const char *op, const tide_tensor_t *out, const tide_tensor_t *a, const tide_tensor_t *b,
                        int *bmode, tide_err_t *err);
int tide_k_check_unary(const char *op, const tide_tensor_t *out, const tide_tensor_t *x, tide_err_t *err);
int tide_k_check_swiglu(const tide_tensor_t *out, const tide_tensor_t *gate, const tide_tensor_t *up, tide_err_t *err);
int tide_k_check_convert(const tide_tensor_t *out, const tide_tensor_t *x, tide_err_t *err);
int tide_k_check_rmsnorm(const tide_tensor_t *out, const tide_tensor_t *x, const tide_tensor_t *w, tide_err_t *err);
int tide_k_check_softmax(const tide_tensor_t *out, const tide_tensor_t *x, tide_err_t *err);
int tide_k_check_rope(const tide_tensor_t *x, const tide_tensor_t *pos, const tide_rope_t *cfg, int64_t *n_tok,
                      int64_t *n_head, tide_err_t *err);
int tide_k_check_get_rows(const tide_tensor_t *out, const tide_tensor_t *table, const tide_tensor_t *ids,
                          tide_err_t *err);
int tide_k_check_scatter_add(const tide_tensor_t *out, const tide_tensor_t *src, const tide_tensor_t *idx,
                             const tide_tensor_t *w, tide_err_t *err);
int tide_k_check_topk(const tide_tensor_t *vals, const tide_tensor_t *idx, const tide_tensor_t *x, int32_t k,
                      tide_err_t *err);
int tide_k_check_kv_store(const tide_tensor_t *cache, const tide_tensor_t *src, const tide_batch_t *batch,
                          tide_k_cache_t *cd, tide_err_t *err);
int tide_k_check_attention(const tide_tensor_t *out, const tide_tensor_t *q, const tide_tensor_t *k_cache,
                           const tide_tensor_t *v_cache, const tide_batch_t *batch, tide_k_attn_t *at,
                           tide_err_t *err);
/* topk order: 1 when (va, ia) ranks before (vb, ib) (larger first, NaN largest, ties to lower index). */
int tide_k_topk_before(float va, int64_t ia, float vb, int64_t ib);
/* Address of cache row (block, row-in-block, head). */
static inline char *tide_k_cache_row(const tide_tensor_t *c, const tide_k_cache_t *cd, int64_t blk, int64_t row,
                                     int64_t head) {
  return (char *)c->data + blk * cd->s_block + row * cd->s_row + head * cd->s_head;
}

#endif
