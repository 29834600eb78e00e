/* rope.c: fast rotary embedding. Tokens are split across the pool; each
 * thread builds the cos/sin table of its token once (float32, as the
 * reference) and rotates every head of it. Scratch (inv_freq and one
 * cos/sin table per thread) is allocated once per call. */
#include <math.h>
#include <stdlib.h>

#include "kern.h"

typedef struct {
  tide_tensor_t *x;
  const tide_tensor_t *pos;
  const tide_rope_t *cfg;
  const float *inv;
  float *scratch; /* nth * dim floats: cos (dim/2) then sin (dim/2) */
  int64_t n_tok, n_head;
} rope_ctx_t;

static void rope_task(void *arg, int32_t ith, int32_t nth) {
  rope_ctx_t *c = arg;
  int32_t half = c->cfg->dim / 2;
  float *cs = c->scratch + (int64_t)ith * 2 * half, *sn = cs + half;
  float af = c->cfg->attn_factor;
  int64_t col = tide_k_col_stride(c->x);
  int dense = col == 4;
  int64_t i0s = c->cfg->interleaved ? 2 : 1, off1 = c->cfg->interleaved ? 1 : half;
  int64_t lo, hi;
  tide_split_range(c->n_tok, ith, nth, &lo, &hi);
  for (int64_t t = lo; t < hi; t++) {
    float p = (float)tide_k_i32(c->pos, t);
    for (int32_t i = 0; i < half; i++) {
      float ang = p * c->inv[i];
      cs[i] = cosf(ang) * af;
      sn[i] = sinf(ang) * af;
    }
    for (int64_t h = 0; h < c->n_head; h++) {
      char *row = tide_k_row(c->x, t * c->n_head + h);
      if (dense) {
        float *r = (float *)(void *)row;
        for (int32_t i = 0; i < half; i++) {
          float *e0 = r + i * i0s, *e1 = e0 + off1;
          float x0 = *e0, x1 = *e1;
          *e0 = x0 * cs[i] - x1 * sn[i];
          *e1 = x1 * cs[i] + x0 * sn[i];
        }
      } else {
        for (int32_t i = 0; i < half; i++) {
          float *e0 = (float *)(void *)(row + i * i0s * col), *e1 = (float *)(void *)(row + (i * i0s + off1) * col);
          float x0 = *e0, x1 = *e1;
          *e0 = x0 * cs[i] - x1 * sn[i];
          *e1 = x1 * cs[i] + x0 * sn[i];
        }
      }
    }
  }
}

int tide_op_rope(tide_pool_t *pool, tide_tensor_t *x, const tide_tensor_t *pos, const tide_rope_t *cfg, tide_err_t *err) {
  rope_ctx_t c = {.x = x, .pos = pos, .cfg = cfg};
  int rc = tide_k_check_rope(x, pos, cfg, &c.n_tok, &c.n_head, err);
  if (rc) return rc;
  int32_t nth = tide_pool_threads(pool);
  int32_t half = cfg->dim / 2;
  float *buf = malloc((size_t)(half + (int64_t)nth * 2 * half) * sizeof(float));
  if (!buf) return tide_err_set(err, TIDE_ENOMEM, "rope: out of memory");
  if ((rc = tide_rope_inv_freq(cfg, buf, err))) {
    free(buf);
    return rc;
  }
  c.inv = buf;
  c.scratch = buf + half;
  tide_k_run(pool, rope_task, &c, c.n_tok * (c.n_head * cfg->dim / 2 + cfg->dim * 10));
  free(buf);
  return 0;
}
