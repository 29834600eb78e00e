/* matmul.c: out (M, N) = a (M, K) @ b^T (trans_b = 1, b (N, K)) or a @ b (trans_b = 0, b (K, N)).
 *
 * Paths, chosen per call:
 *  - b in a GGML block format with a dot kernel (q8_0, q4_0, q4_k, q6_k; trans_b = 1):
 *    kernels/quant_dot.c (tide_quant_matmul: by M and CPU, AVX-512 VNNI dots on a
 *    repacked activation row (M = 1), integer dots on rows of a quantized to q8
 *    blocks, VNNI tiles on packed rows, interleaved 16-row VNNI panels (prefill),
 *    or dequantized panels + sgemm).
 *  - small M (decode and small MoE expert batches; trans_b = 1, b rows dense,
 *    b f32/f16/bf16/f8_e4m3): direct dot kernels read b's rows in their own
 *    format, no conversion pass. M = 1: 4 rows of b at a time; M > 1: tiles
 *    of 2 rows of b x up to 4 rows of a, so each 8 elements of b are
 *    converted once per 4 rows of a; f8 block scales applied per 128-column
 *    segment. Up to M = 4 for f32 (sgemm is as fast beyond), 12 for scaled
 *    f8, 16 for f16/bf16 (measured below). Bound by reading b once. With AVX2
 *    each group of rows of b prefetches the next group's rows as it reads its
 *    own: rows of a few KiB are too short for the hardware prefetcher, and
 *    the single-thread bf16 matvec (512 x 1024, cold weights) went from
 *    62-71 us (~15 GB/s) to ~30 us (~33 GB/s) with it.
 *  - b f32 (no scales) with one unit stride: cblas_sgemm on b in place.
 *  - otherwise: panels of NB output columns; each thread converts its panel of
 *    b (NB rows of b, or NB columns for trans_b = 0) to f32 in its own scratch
 *    (allocated once per call, never the whole matrix) and calls sgemm on it.
 *  a is used in place when it is dense-row f32, else converted once per call.
 *
 * OpenBLAS threading: the pool splits N across its threads and every thread
 * calls sgemm on its slice with OpenBLAS itself at 1 thread
 * (openblas_set_num_threads(1), set here when it is not 1 already: a
 * process-wide setting of the library, not state of ours; several threads
 * calling into an OpenBLAS that runs its own threads would share its one
 * thread server). The other choice was one
 * sgemm from thread 0 with OpenBLAS at 2 threads. Measured on this 2-core
 * machine in the same run (bench/ops_bench.c, `matmul_threads`: f32
 * 512 x 2048 x 2048, 2 threads): the pool split ran 1.02x to 1.20x the speed
 * of the OpenBLAS-threaded call over four runs (51-106 vs 50-102 GFLOP/s; the
 * machine is shared, so absolute numbers move a lot). Beyond being no slower,
 * the split keeps one set of threads for every op: OpenBLAS's workers spin
 * after each call and take the second core from the pool's next op on a
 * 2-core box, and panels converted from bf16/f16/f8 have to be produced by
 * the pool threads anyway.
 * So: one threading system (the pool), OpenBLAS single-threaded inside it. */
#include <cblas.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "kern.h"
#include "quant.h"

#define SMALL_M 16 /* largest M of the direct path (f16/bf16 b); f32 and f8 b use it up to M = 4 */
#define NB_T 128 /* panel width, trans_b = 1 (rows of b) */
#define NB_N 256 /* panel width, trans_b = 0 (columns of b; a multiple of every block size) */

typedef struct {
  float *out;
  const float *A;
  int64_t lda;
  const tide_tensor_t *b;
  int32_t trans_b;
  int64_t M, N, K;
  /* direct f32 b */
  const char *bp;
  int64_t ldb;
  int b_rowmajor_nk; /* 1: b seen as (N, K) row-major (CblasTrans), 0: as (K, N) (CblasNoTrans) */
  /* panels */
  float *scratch;
  int64_t nb;
  atomic_llong next;
} mm_ctx_t;

static int vec_dtype(int32_t dt) {
  return dt == TIDE_DTYPE_F32 || dt == TIDE_DTYPE_F16 || dt == TIDE_DTYPE_BF16 || dt == TIDE_DTYPE_F8_E4M3;
}

/* ---- small M: direct dots over b rows ---- */
static void small_task(void *arg, int32_t ith, int32_t nth) {
  mm_ctx_t *c = arg;
  const tide_tensor_t *b = c->b;
  int64_t lo, hi;
  tide_split_range(c->N, ith, nth, &lo, &hi);
  int32_t dt = b->dtype;
  if (dt == TIDE_DTYPE_F8_E4M3 && b->scale && c->M >= 4) {
    /* 2 rows of b x all rows of a per scale segment, each partial sum times its block scale */
    int64_t seg = b->scale_block[1];
    int64_t n = lo;
    for (; n + 2 <= hi; n += 2) {
      const uint8_t *b0 = (const uint8_t *)tide_k_row(b, n), *b1 = (const uint8_t *)tide_k_row(b, n + 1);
      for (int64_t m = 0; m < c->M; m++) c->out[m * c->N + n] = c->out[m * c->N + n + 1] = 0.0f;
      for (int64_t k0 = 0; k0 < c->K; k0 += seg) {
        int64_t len = c->K - k0 < seg ? c->K - k0 : seg;
        float tmp[2 * SMALL_M], s0 = tide_k_scale_at(b, n, k0), s1 = tide_k_scale_at(b, n + 1, k0);
        tide_vec_tile2(c->A + k0, c->lda, (int32_t)c->M, b0 + k0, b1 + k0, dt, len, tmp, 2);
        for (int64_t m = 0; m < c->M; m++) {
          c->out[m * c->N + n] += tmp[2 * m] * s0;
          c->out[m * c->N + n + 1] += tmp[2 * m + 1] * s1;
        }
      }
    }
    lo = n; /* an odd last row goes through the generic loop below */
  } else if (dt == TIDE_DTYPE_F8_E4M3 && (!b->scale || b->scale->stride[1] == 4)) {
    /* f8 rows 4 at a time, block scales folded in per segment */
    static const float one[1] = {1.0f};
    int64_t seg = b->scale ? b->scale_block[1] : c->K;
    for (int64_t n = lo; n < hi; n += 4) {
      const uint8_t *rows[4];
      const float *srow[4];
      for (int r = 0; r < 4; r++) {
        int64_t nn = n + r < hi ? n + r : hi - 1;
        rows[r] = (const uint8_t *)tide_k_row(b, nn);
        srow[r] = b->scale ? (const float *)(const void *)((const char *)b->scale->data +
                                                           nn / b->scale_block[0] * b->scale->stride[0])
                           : one;
      }
      for (int64_t m = 0; m < c->M; m++) {
        float tmp[4];
        tide_vec_dot_f8s4(c->A + m * c->lda, rows, srow, c->K, seg, tmp);
        for (int r = 0; r < 4 && n + r < hi; r++) c->out[m * c->N + n + r] = tmp[r];
      }
    }
    return;
  }
  int64_t n = lo;
  if (!b->scale && c->M == 1 && tide_k_has_avx2()) { /* one row of a: 4 rows of b at a time */
    for (; n + 4 <= hi; n += 4) {
      const void *rows[4] = {tide_k_row(b, n), tide_k_row(b, n + 1), tide_k_row(b, n + 2), tide_k_row(b, n + 3)};
      const void *next[4];
      for (int r = 0; r < 4; r++) next[r] = tide_k_row(b, n + 4 + r < hi ? n + 4 + r : hi - 1);
      tide_vec_dot4_pf_avx2(c->A, rows, dt, c->K, c->out + n, next);
    }
  } else if (!b->scale) { /* 2 rows of b x up to 4 rows of a: b converted once per 4 rows of a */
    if (tide_k_has_avx2()) /* the next two rows prefetched while these are read (see tide_vec_dot4_pf_avx2) */
      for (; n + 2 <= hi; n += 2)
        tide_vec_tile2_pf_avx2(c->A, c->lda, (int32_t)c->M, tide_k_row(b, n), tide_k_row(b, n + 1), dt, c->K,
                               c->out + n, c->N, tide_k_row(b, n + 2 < hi ? n + 2 : n),
                               tide_k_row(b, n + 3 < hi ? n + 3 : n + 1));
    for (; n + 2 <= hi; n += 2)
      tide_vec_tile2(c->A, c->lda, (int32_t)c->M, tide_k_row(b, n), tide_k_row(b, n + 1), dt, c->K, c->out + n, c->N);
  }
  int64_t es = tide_dtype_traits(dt)->block_bytes;
  for (; n < hi; n++) {
    const char *row = tide_k_row(b, n);
    if (!b->scale) {
      for (int64_t m = 0; m < c->M; m++) c->out[m * c->N + n] = tide_vec_dot(c->A + m * c->lda, row, dt, c->K);
      continue;
    }
    float acc[SMALL_M] = {0};
    int64_t seg = b->scale_block[1];
    for (int64_t k0 = 0; k0 < c->K; k0 += seg) {
      int64_t len = c->K - k0 < seg ? c->K - k0 : seg;
      float s = tide_k_scale_at(b, n, k0);
      for (int64_t m = 0; m < c->M; m++) acc[m] += tide_vec_dot(c->A + m * c->lda + k0, row + k0 * es, dt, len) * s;
    }
    for (int64_t m = 0; m < c->M; m++) c->out[m * c->N + n] = acc[m];
  }
}

/* ---- small M, trans_b = 0, block weights: rows of b added up ----
 * b (K, N) with its blocks along N (MLA's W_uk read as stored, (dn, kvl) per head): out[m] = sum_k a[m][k] *
 * row k of b. Each thread owns block-aligned segments of columns; each row segment is dequantized once
 * (AVX2 where the format has it) into a buffer on the stack and added to the M output rows, so the weights
 * are read once, in their own format, with no transposed copy. */
enum { ROWS_MAX_M = 4, ROWS_SEG = 512 };

static void rows_task(void *arg, int32_t ith, int32_t nth) {
  mm_ctx_t *c = arg;
  const tide_tensor_t *b = c->b;
  int64_t lo, hi;
  tide_split_range((c->N + ROWS_SEG - 1) / ROWS_SEG, ith, nth, &lo, &hi);
  tide_quant_to_float_fn to_float = tide_quant_to_float(b->dtype);
  int64_t bs = tide_dtype_traits(b->dtype)->block_size, bb = tide_dtype_traits(b->dtype)->block_bytes;
  float buf[ROWS_SEG];
  int fused = (b->dtype == TIDE_DTYPE_Q8_0 || b->dtype == TIDE_DTYPE_Q4_0) && tide_k_has_avx2();
  for (int64_t sg = lo; sg < hi; sg++) {
    int64_t n0 = sg * ROWS_SEG, len = c->N - n0 < ROWS_SEG ? c->N - n0 : ROWS_SEG;
    if (fused) { /* dequantized in registers, one row of a at a time */
      for (int64_t m = 0; m < c->M; m++)
        tide_quant_rows_axpy_avx2(b->dtype, (const uint8_t *)tide_k_row(b, 0) + n0 / bs * bb, b->stride[0], c->K,
                                  c->A + m * c->lda, len / bs, c->out + m * c->N + n0);
      continue;
    }
    for (int64_t m = 0; m < c->M; m++) memset(c->out + m * c->N + n0, 0, (size_t)len * sizeof(float));
    for (int64_t k = 0; k < c->K; k++) {
      const char *seg = tide_k_row(b, k) + n0 / bs * bb;
      if (to_float)
        to_float(seg, buf, len);
      else
        tide_k_load(b, k, n0, len, buf);
      for (int64_t m = 0; m < c->M; m++) tide_vec_axpy(c->out + m * c->N + n0, c->A[m * c->lda + k], buf, TIDE_DTYPE_F32, len);
    }
  }
}

/* ---- f32 b in place ---- */
static void direct_task(void *arg, int32_t ith, int32_t nth) {
  mm_ctx_t *c = arg;
  int64_t lo, hi;
  tide_split_range((c->N + 15) / 16, ith, nth, &lo, &hi); /* 16-column granules */
  lo *= 16;
  hi = hi * 16 < c->N ? hi * 16 : c->N;
  if (hi <= lo) return;
  const float *B = (const float *)(const void *)(c->bp + (c->b_rowmajor_nk ? lo * c->ldb * 4 : lo * 4));
  cblas_sgemm(CblasRowMajor, CblasNoTrans, c->b_rowmajor_nk ? CblasTrans : CblasNoTrans, (int)c->M, (int)(hi - lo),
              (int)c->K, 1.0f, c->A, (int)c->lda, B, (int)c->ldb, 0.0f, c->out + lo, (int)c->N);
}

/* ---- converted panels ---- */
static void panel_task(void *arg, int32_t ith, int32_t nth) {
  (void)nth;
  mm_ctx_t *c = arg;
  float *P = c->scratch + (int64_t)ith * c->nb * c->K;
  int64_t panels = (c->N + c->nb - 1) / c->nb;
  for (;;) {
    int64_t pi = atomic_fetch_add(&c->next, 1);
    if (pi >= panels) break;
    int64_t n0 = pi * c->nb, nb = c->N - n0 < c->nb ? c->N - n0 : c->nb;
    if (c->trans_b) {
      for (int64_t j = 0; j < nb; j++) tide_k_load(c->b, n0 + j, 0, c->K, P + j * c->K);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)c->M, (int)nb, (int)c->K, 1.0f, c->A, (int)c->lda, P,
                  (int)c->K, 0.0f, c->out + n0, (int)c->N);
    } else {
      for (int64_t k = 0; k < c->K; k++) tide_k_load(c->b, k, n0, nb, P + k * nb);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)c->M, (int)nb, (int)c->K, 1.0f, c->A, (int)c->lda,
                  P, (int)nb, 0.0f, c->out + n0, (int)c->N);
    }
  }
}

static void zero_task(void *arg, int32_t ith, int32_t nth) {
  mm_ctx_t *c = arg;
  int64_t lo, hi;
  tide_split_range(c->M * c->N, ith, nth, &lo, &hi);
  for (int64_t i = lo; i < hi; i++) c->out[i] = 0.0f;
}

int tide_op_matmul(tide_pool_t *pool, tide_tensor_t *out, const tide_tensor_t *a, const tide_tensor_t *b,
                   int32_t trans_b, tide_err_t *err) {
  tide_k_mm_t mm;
  int rc = tide_k_check_matmul(out, a, b, trans_b, &mm, err);
  if (rc) return rc;
  mm_ctx_t c = {.out = out->data, .b = b, .trans_b = trans_b, .M = mm.M, .N = mm.N, .K = mm.K};
  if (c.M == 0 || c.N == 0) return 0;
  if (c.K == 0) {
    tide_k_run(pool, zero_task, &c, c.M * c.N / 4);
    return 0;
  }
  if (c.M > INT32_MAX || c.N > INT32_MAX || c.K > INT32_MAX)
    return tide_err_set(err, TIDE_EINVAL, "matmul: dimensions beyond BLAS int range");
  if (openblas_get_num_threads() != 1) openblas_set_num_threads(1);
  int64_t work = c.M * c.N * c.K / 20 + c.N * c.K / 5; /* ~ns on one core: compute, or reading b */

  /* a as dense f32 rows */
  float *abuf = NULL;
  if (a->dtype == TIDE_DTYPE_F32 && !a->scale && tide_k_row_dense(a) && a->stride[0] % 4 == 0 &&
      (c.M == 1 || a->stride[0] >= c.K * 4)) {
    c.A = a->data;
    c.lda = c.M == 1 ? c.K : a->stride[0] / 4;
  } else {
    abuf = malloc((size_t)(c.M * c.K) * sizeof(float));
    if (!abuf) return tide_err_set(err, TIDE_ENOMEM, "matmul: out of memory");
    for (int64_t m = 0; m < c.M; m++) tide_k_load(a, m, 0, c.K, abuf + m * c.K);
    c.A = abuf;
    c.lda = c.K;
  }

  /* GGML block weights (q8_0, q4_0, q4_k, q6_k): kernels/quant_dot.c picks per dtype and M among AVX-512 VNNI
   * tiles on packed rows, integer dots against rows of a quantized on the fly, and AVX2-dequantized panels +
   * sgemm */
  if (trans_b && tide_quant_matmul_wants(b->dtype, c.M) && !b->scale) {
    rc = tide_quant_matmul(pool, c.out, c.A, c.lda, b, c.M, c.N, c.K, err);
    free(abuf);
    return rc;
  }

  const tide_dtype_traits_t *tr = tide_dtype_traits(b->dtype);
  int b_dense_rows = tide_k_row_dense(b) && tr->block_size == 1;
  /* Measured (CPU time, one thread, 4096 x 4096 b): bf16 b direct at M = 5/8/16 took 4.6/5.2/8.7 ms against
   * 8.9/7.3/9.5 ms converting panels; f32 b through sgemm is as fast from M = 5 on. f8 with block scales:
   * one pass per row of a up to M = 3, then per 128-column segment 2 rows of b x all rows of a (M = 8:
   * 8.9 ms against 17 ms for panels; M = 16: 17 ms, panels 15 ms, so panels from M = 13 on). */
  int64_t small_max = b->dtype == TIDE_DTYPE_F32 || (b->dtype == TIDE_DTYPE_F8_E4M3 && !b->scale) ? 4
                      : b->dtype == TIDE_DTYPE_F8_E4M3                                         ? 12
                                                                                               : SMALL_M;
  if (trans_b && c.M <= small_max && b_dense_rows && vec_dtype(b->dtype)) {
    tide_k_run(pool, small_task, &c, work);
    free(abuf);
    return 0;
  }

  if (!trans_b && tr->block_size > 1 && !b->scale && c.M <= ROWS_MAX_M && c.N % tr->block_size == 0 &&
      ROWS_SEG % tr->block_size == 0 && tide_k_row_dense(b)) {
    tide_k_run(pool, rows_task, &c, c.N * c.K / 5);
    free(abuf);
    return 0;
  }

  if (b->dtype == TIDE_DTYPE_F32 && !b->scale) {
    /* b's element (n, k) (trans_b) or (k, n) at s_n * n + s_k * k bytes */
    int64_t s_n = trans_b ? b->stride[0] : b->stride[1], s_k = trans_b ? b->stride[1] : b->stride[0];
    if ((s_k == 4 || c.K == 1) && s_n % 4 == 0 && (c.N == 1 || s_n >= c.K * 4)) {
      c.b_rowmajor_nk = 1;
      c.ldb = c.N == 1 ? c.K : s_n / 4;
    } else if ((s_n == 4 || c.N == 1) && s_k % 4 == 0 && (c.K == 1 || s_k >= c.N * 4)) {
      c.b_rowmajor_nk = 0;
      c.ldb = c.K == 1 ? c.N : s_k / 4;
    } else {
      c.ldb = 0;
    }
    if (c.ldb > 0 && c.ldb <= INT32_MAX) {
      c.bp = b->data;
      tide_k_run(pool, direct_task, &c, work);
      free(abuf);
      return 0;
    }
  }

  /* block weights without a dot kernel (q5_0): activations rounded through llama.cpp's format first, as the
   * integer dots would see them (kernels/quant.h, tide_quant_act_round) */
  if (trans_b && tr->block_size > 1 && tide_quant_ggml_act_dtype(b->dtype) >= 0) {
    float *ar = malloc((size_t)(c.M * c.K) * sizeof(float));
    if (!ar) {
      free(abuf);
      return tide_err_set(err, TIDE_ENOMEM, "matmul: out of memory");
    }
    if (!tide_quant_act_round(b->dtype, c.A, c.lda, c.M, c.K, ar)) {
      free(abuf);
      abuf = ar;
      c.A = ar;
      c.lda = c.K;
    } else {
      free(ar);
    }
  }
  int32_t nth = tide_pool_threads(pool);
  c.nb = trans_b ? NB_T : NB_N;
  if (!trans_b && tr->block_size > 1 && c.nb % tr->block_size) c.nb = tr->block_size;
  c.scratch = malloc((size_t)(c.nb * c.K * nth) * sizeof(float));
  if (!c.scratch) {
    free(abuf);
    return tide_err_set(err, TIDE_ENOMEM, "matmul: out of memory");
  }
  atomic_init(&c.next, 0);
  tide_k_run(pool, panel_task, &c, work);
  free(c.scratch);
  free(abuf);
  return 0;
}
