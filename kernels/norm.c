/* norm.c: fast rmsnorm and softmax, rows split across the pool.
 * Each row is first converted into its (contiguous f32) output row, then
 * worked on in place there, so no scratch is needed for any input dtype. */
#include <math.h>

#include "kern.h"

typedef struct {
  tide_tensor_t *out;
  const tide_tensor_t *x, *w;
  const float *wf; /* w when it is dense f32, else NULL */
  float eps, scale;
  int64_t rows, n;
} norm_ctx_t;

static void rmsnorm_task(void *arg, int32_t ith, int32_t nth) {
  norm_ctx_t *c = arg;
  float wb[TIDE_K_CHUNK];
  int64_t lo, hi;
  tide_split_range(c->rows, ith, nth, &lo, &hi);
  for (int64_t r = lo; r < hi; r++) {
    float *o = (float *)c->out->data + r * c->n;
    tide_k_load(c->x, r, 0, c->n, o);
    /* as ggml: the mean of the squares from a double sum, rounded to f32, then f32 from there */
    float mean = (float)(tide_vec_sumsq(o, c->n) / (double)c->n);
    float inv = 1.0f / sqrtf(mean + c->eps);
    tide_vec_scale(o, o, inv, c->n);
    if (c->wf) {
      tide_vec_mul(o, o, c->wf, c->n);
    } else {
      for (int64_t c0 = 0; c0 < c->n; c0 += TIDE_K_CHUNK) {
        int64_t m = c->n - c0 < TIDE_K_CHUNK ? c->n - c0 : TIDE_K_CHUNK;
        tide_k_load(c->w, 0, c0, m, wb);
        tide_vec_mul(o + c0, o + c0, wb, m);
      }
    }
  }
}

int tide_op_rmsnorm(tide_pool_t *pool, tide_tensor_t *out, const tide_tensor_t *x, const tide_tensor_t *w, float eps,
                    tide_err_t *err) {
  int rc = tide_k_check_rmsnorm(out, x, w, err);
  if (rc) return rc;
  norm_ctx_t c = {.out = out, .x = x, .w = w, .eps = eps, .rows = tide_k_rows(x), .n = tide_k_inner(x)};
  if (w->dtype == TIDE_DTYPE_F32 && !w->scale && tide_k_row_dense(w) && tide_k_rows(w) == 1)
    c.wf = (const float *)(void *)tide_k_row(w, 0);
  if (c.rows * c.n == 0) return 0;
  tide_k_run(pool, rmsnorm_task, &c, c.rows * c.n / 2);
  return 0;
}

static void softmax_task(void *arg, int32_t ith, int32_t nth) {
  norm_ctx_t *c = arg;
  int64_t lo, hi;
  tide_split_range(c->rows, ith, nth, &lo, &hi);
  for (int64_t r = lo; r < hi; r++) {
    float *o = (float *)c->out->data + r * c->n;
    tide_k_load(c->x, r, 0, c->n, o);
    if (c->scale != 1.0f) tide_vec_scale(o, o, c->scale, c->n);
    float m = tide_vec_max(o, c->n);
    if (m == -INFINITY) { /* every entry masked: zeros, not NaN */
      for (int64_t i = 0; i < c->n; i++) o[i] = 0.0f;
      continue;
    }
    float sum = tide_vec_exp_sum(o, o, 1.0f, m, c->n);
    tide_vec_scale(o, o, 1.0f / sum, c->n);
  }
}

int tide_op_softmax(tide_pool_t *pool, tide_tensor_t *out, const tide_tensor_t *x, float scale, tide_err_t *err) {
  int rc = tide_k_check_softmax(out, x, err);
  if (rc) return rc;
  norm_ctx_t c = {.out = out, .x = x, .scale = scale, .rows = tide_k_rows(x), .n = tide_k_inner(x)};
  if (c.rows * c.n == 0) return 0;
  tide_k_run(pool, softmax_task, &c, c.rows * c.n * 3 / 2);
  return 0;
}
