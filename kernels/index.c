/* index.c: fast get_rows, scatter_add and topk.
 * get_rows splits ids across the pool; scatter_add splits the columns (each
 * thread walks i in increasing order over its columns, so the sum order is
 * the reference's, bit for bit); topk splits rows and keeps a sorted list of
 * the k best per row by insertion. */
#include "kern.h"

typedef struct {
  tide_tensor_t *out;
  const tide_tensor_t *t, *ids, *w;
  int64_t n, D;
} gr_ctx_t;

static void get_rows_task(void *arg, int32_t ith, int32_t nth) {
  gr_ctx_t *c = arg;
  int64_t lo, hi;
  tide_split_range(c->n, ith, nth, &lo, &hi);
  for (int64_t i = lo; i < hi; i++) tide_k_load(c->t, tide_k_i32(c->ids, i), 0, c->D, (float *)c->out->data + i * c->D);
}

int tide_op_get_rows(tide_pool_t *pool, tide_tensor_t *out, const tide_tensor_t *table, const tide_tensor_t *ids,
                     tide_err_t *err) {
  int rc = tide_k_check_get_rows(out, table, ids, err);
  if (rc) return rc;
  gr_ctx_t c = {.out = out, .t = table, .ids = ids, .n = tide_tensor_numel(ids), .D = table->shape[1]};
  tide_k_run(pool, get_rows_task, &c, c.n * c.D / 2);
  return 0;
}

static void scatter_task(void *arg, int32_t ith, int32_t nth) {
  gr_ctx_t *c = arg;
  float buf[TIDE_K_CHUNK];
  int64_t bs = tide_dtype_traits(c->t->dtype)->block_size;
  int64_t blocks = (c->D + bs - 1) / bs, lo, hi;
  tide_split_range(blocks, ith, nth, &lo, &hi);
  lo *= bs;
  hi = hi * bs < c->D ? hi * bs : c->D;
  float *o = c->out->data;
  for (int64_t i = 0; i < c->n; i++) {
    int64_t r = tide_k_i32(c->ids, i);
    float wi = 1.0f;
    if (c->w) {
      int64_t wn = tide_k_inner(c->w);
      wi = *(const float *)(const void *)(tide_k_row(c->w, i / wn) + i % wn * tide_k_col_stride(c->w));
    }
    for (int64_t c0 = lo; c0 < hi; c0 += TIDE_K_CHUNK) {
      int64_t m = hi - c0 < TIDE_K_CHUNK ? hi - c0 : TIDE_K_CHUNK;
      tide_k_load(c->t, i, c0, m, buf);
      float *orow = o + r * c->D + c0;
      for (int64_t j = 0; j < m; j++) orow[j] = orow[j] + wi * buf[j]; /* product then sum, as the reference */
    }
  }
}

int tide_op_scatter_add(tide_pool_t *pool, tide_tensor_t *out, const tide_tensor_t *src, const tide_tensor_t *idx,
                        const tide_tensor_t *w, tide_err_t *err) {
  int rc = tide_k_check_scatter_add(out, src, idx, w, err);
  if (rc) return rc;
  gr_ctx_t c = {.out = out, .t = src, .ids = idx, .w = w, .n = src->shape[0], .D = src->shape[1]};
  tide_k_run(pool, scatter_task, &c, c.n * c.D / 2);
  return 0;
}

typedef struct {
  tide_tensor_t *vals, *idx;
  const tide_tensor_t *x;
  int32_t k;
  int64_t M, N;
} topk_ctx_t;

static void topk_task(void *arg, int32_t ith, int32_t nth) {
  topk_ctx_t *c = arg;
  float buf[TIDE_K_CHUNK];
  int32_t k = c->k;
  int64_t lo, hi;
  tide_split_range(c->M, ith, nth, &lo, &hi);
  for (int64_t r = lo; r < hi; r++) {
    float *bv = (float *)c->vals->data + r * k;
    int32_t *bi = (int32_t *)c->idx->data + r * k;
    int32_t have = 0;
    for (int64_t c0 = 0; c0 < c->N; c0 += TIDE_K_CHUNK) {
      int64_t m = c->N - c0 < TIDE_K_CHUNK ? c->N - c0 : TIDE_K_CHUNK;
      tide_k_load(c->x, r, c0, m, buf);
      for (int64_t j = 0; j < m; j++) {
        float v = buf[j];
        int64_t col = c0 + j;
        /* columns arrive in increasing order, so an equal value never beats a kept one */
        if (have == k && !tide_k_topk_before(v, col, bv[k - 1], bi[k - 1])) continue;
        int32_t p = have < k ? have++ : k - 1;
        while (p > 0 && tide_k_topk_before(v, col, bv[p - 1], bi[p - 1])) {
          bv[p] = bv[p - 1];
          bi[p] = bi[p - 1];
          p--;
        }
        bv[p] = v;
        bi[p] = (int32_t)col;
      }
    }
  }
}

int tide_op_topk(tide_pool_t *pool, tide_tensor_t *vals, tide_tensor_t *idx, const tide_tensor_t *x, int32_t k,
                 tide_err_t *err) {
  int rc = tide_k_check_topk(vals, idx, x, k, err);
  if (rc) return rc;
  topk_ctx_t c = {.vals = vals, .idx = idx, .x = x, .k = k, .M = tide_k_rows(x), .N = tide_k_inner(x)};
  tide_k_run(pool, topk_task, &c, c.M * c.N * 2);
  return 0;
}
