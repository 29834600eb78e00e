/* grouped.c: many matmuls in one call — per-head products over a group
 * dimension (MLA's absorbed attention) and the routed experts of an MoE
 * layer. Each group runs the ordinary matmul (kernels/matmul.c, or the
 * scalar reference for the ref entry points), so every weight format works
 * unchanged; what the grouping saves is the per-call dispatch from Lua, one
 * call per head or per expert projection. */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "kern.h"
#include "ops.h"

/* Which implementation a group runs: the fast ops on a pool, or the references. */
typedef struct runner {
  tide_pool_t *pool;
  int ref;
} runner_t;

static int run_matmul(const runner_t *r, tide_tensor_t *out, const tide_tensor_t *a, const tide_tensor_t *b,
                      int32_t trans_b, tide_err_t *err) {
  return r->ref ? tide_ref_matmul(out, a, b, trans_b, err) : tide_op_matmul(r->pool, out, a, b, trans_b, err);
}

static int run_swiglu(const runner_t *r, tide_tensor_t *out, const tide_tensor_t *g, const tide_tensor_t *u,
                      tide_err_t *err) {
  return r->ref ? tide_ref_swiglu(out, g, u, err) : tide_op_swiglu(r->pool, out, g, u, err);
}

/* A 2-D view (rows, cols) of t starting `off` bytes after t->data, with the
 * given row and column strides in bytes. Lives on the caller's stack: it
 * borrows t's storage without a reference, for the duration of one call. */
static tide_tensor_t view2(const tide_tensor_t *t, int64_t off, int64_t rows, int64_t cols, int64_t st_row,
                           int64_t st_col) {
  tide_tensor_t v = *t;
  v.data = (char *)t->data + off;
  v.ndim = 2;
  v.shape[0] = rows;
  v.shape[1] = cols;
  v.shape[2] = v.shape[3] = 1;
  v.stride[0] = st_row;
  v.stride[1] = st_col;
  v.stride[2] = v.stride[3] = 0;
  v.scale = NULL;
  return v;
}

/* Decode-sized head products (a few rows per head) spread whole heads over the pool's threads, each head's
 * product on one thread: one pool run instead of one per head (MLA's absorbed W_uk / W_uv at batch 1 were
 * 16 tiny products of ~16k weights each, every one waking the threads). */
enum { HEADS_SPREAD_MAX_ROWS = 4 };

typedef struct {
  tide_tensor_t *out;
  const tide_tensor_t *a, *b;
  int32_t trans_b;
  float *tmp; /* (G, M, N) when out's rows are not packed, else NULL */
  atomic_llong next;
  atomic_int failed;
  tide_err_t err; /* written by the first thread that fails */
} heads_ctx_t;

static int head_product(const runner_t *r, tide_tensor_t *out, const tide_tensor_t *a, const tide_tensor_t *b,
                        int32_t trans_b, int64_t g, float *tmp, tide_err_t *err) {
  int64_t M = out->shape[1], N = out->shape[2];
  tide_tensor_t av = view2(a, g * a->stride[0], a->shape[1], a->shape[2], a->stride[1], a->stride[2]);
  tide_tensor_t bv = view2(b, g * b->stride[0], b->shape[1], b->shape[2], b->stride[1], b->stride[2]);
  tide_tensor_t ov = view2(out, g * out->stride[0], M, N, N * 4, 4);
  if (tmp) ov.data = tmp;
  int rc = run_matmul(r, &ov, &av, &bv, trans_b, err);
  if (rc == 0 && tmp)
    for (int64_t m = 0; m < M; m++)
      memcpy((char *)out->data + g * out->stride[0] + m * out->stride[1], tmp + m * N, (size_t)N * sizeof(float));
  return rc;
}

static void heads_task(void *arg, int32_t ith, int32_t nth) {
  (void)ith;
  (void)nth;
  heads_ctx_t *c = arg;
  runner_t one = {NULL, 0};
  int64_t G = c->a->shape[0], MN = c->out->shape[1] * c->out->shape[2];
  for (;;) {
    int64_t g = atomic_fetch_add(&c->next, 1);
    if (g >= G || atomic_load(&c->failed)) break;
    tide_err_t err;
    if (head_product(&one, c->out, c->a, c->b, c->trans_b, g, c->tmp ? c->tmp + g * MN : NULL, &err) &&
        atomic_exchange(&c->failed, 1) == 0)
      c->err = err;
  }
}

static int heads(const runner_t *r, tide_tensor_t *out, const tide_tensor_t *a, const tide_tensor_t *b,
                 int32_t trans_b, tide_err_t *err) {
  int rc;
  if ((rc = tide_k_check_tensor(out, "matmul_heads", "out", err)) ||
      (rc = tide_k_check_tensor(a, "matmul_heads", "a", err)) ||
      (rc = tide_k_check_tensor(b, "matmul_heads", "b", err)))
    return rc;
  char s1[96], s2[96], s3[96];
  if (a->ndim != 3 || b->ndim != 3 || out->ndim != 3 || a->shape[0] != b->shape[0] || a->shape[0] != out->shape[0])
    return tide_err_set(err, TIDE_ESHAPE, "matmul_heads: a %s, b %s and out %s must be 3-D with the same groups",
                        tide_k_shape_str(a, s1, 96), tide_k_shape_str(b, s2, 96), tide_k_shape_str(out, s3, 96));
  if (a->scale || b->scale)
    return tide_err_set(err, TIDE_EINVAL, "matmul_heads: tensors with block scales cannot be split by group");
  if (out->dtype != TIDE_DTYPE_F32 || out->stride[2] != 4)
    return tide_err_set(err, TIDE_EINVAL, "matmul_heads: out must be f32 with contiguous rows");
  int64_t G = a->shape[0], M = out->shape[1], N = out->shape[2];
  if (G == 0 || M == 0 || N == 0) return 0;
  /* out groups whose rows are not packed go through scratch (one group's worth, or every group's when spread) */
  int packed = M == 1 || out->stride[1] == N * 4;
  int spread = !r->ref && r->pool && tide_pool_threads(r->pool) >= 2 && G >= 2 && M <= HEADS_SPREAD_MAX_ROWS;
  float *tmp = NULL;
  if (!packed) {
    tmp = malloc((size_t)((spread ? G : 1) * M * N) * sizeof(float));
    if (!tmp) return tide_err_set(err, TIDE_ENOMEM, "matmul_heads: out of memory");
  }
  if (spread) {
    heads_ctx_t c = {.out = out, .a = a, .b = b, .trans_b = trans_b, .tmp = tmp};
    atomic_init(&c.next, 0);
    atomic_init(&c.failed, 0);
    int64_t K = a->shape[2];
    tide_k_run(r->pool, heads_task, &c, G * (M * N * K / 20 + N * K / 5)); /* ~ns on one core, as matmul's */
    free(tmp);
    if (atomic_load(&c.failed)) {
      if (err) *err = c.err;
      return c.err.code ? c.err.code : TIDE_EINVAL;
    }
    return 0;
  }
  for (int64_t g = 0; g < G && rc == 0; g++) rc = head_product(r, out, a, b, trans_b, g, tmp, err);
  free(tmp);
  return rc;
}

int tide_op_matmul_heads(tide_pool_t *pool, tide_tensor_t *out, const tide_tensor_t *a, const tide_tensor_t *b,
                         int32_t trans_b, tide_err_t *err) {
  runner_t r = {pool, 0};
  return heads(&r, out, a, b, trans_b, err);
}

int tide_ref_matmul_heads(tide_tensor_t *out, const tide_tensor_t *a, const tide_tensor_t *b, int32_t trans_b,
                          tide_err_t *err) {
  runner_t r = {NULL, 1};
  return heads(&r, out, a, b, trans_b, err);
}

static int check_rows(const tide_tensor_t *t, int64_t rows, const char *name, tide_err_t *err) {
  int rc = tide_k_check_tensor(t, "moe_experts", name, err);
  if (rc) return rc;
  if (t->ndim != 2 || t->shape[0] != rows || t->dtype != TIDE_DTYPE_F32 || !tide_tensor_is_contiguous(t)) {
    char s[96];
    return tide_err_set(err, TIDE_ESHAPE, "moe_experts: %s %s must be f32, contiguous, (%lld, n)", name,
                        tide_k_shape_str(t, s, 96), (long long)rows);
  }
  return 0;
}

/* Decode-sized MoE steps (a few rows on each of several experts) spread
 * whole experts over the pool's threads, each expert's products (gate, up,
 * swiglu, down: its rows of g, u and y are its own) on one thread: one pool
 * run per layer instead of one per product, each of which costs a wake-up
 * of the threads. */
enum { SPREAD_MAX_ROWS = 4 };

static int few_rows(tide_pool_t *pool, const int32_t *offsets, int32_t n_expert) {
  if (!pool || tide_pool_threads(pool) < 2) return 0;
  int32_t active = 0;
  for (int32_t e = 0; e < n_expert; e++) {
    int32_t m = offsets[e + 1] - offsets[e];
    if (m > SPREAD_MAX_ROWS) return 0;
    active += m > 0;
  }
  return active >= 2;
}

typedef struct {
  tide_tensor_t *y, *g, *u;
  const tide_tensor_t *x;
  const int32_t *offsets;
  const tide_tensor_t *const *w;
  int32_t n_expert;
  atomic_int next, failed;
  tide_err_t err; /* written by the first thread that fails */
} spread_ctx_t;

static void spread_task(void *arg, int32_t ith, int32_t nth) {
  (void)ith;
  (void)nth;
  spread_ctx_t *c = arg;
  int64_t dim = c->x->shape[1], I = c->g->shape[1];
  for (;;) {
    int32_t e = atomic_fetch_add(&c->next, 1);
    if (e >= c->n_expert || atomic_load(&c->failed)) break;
    int64_t r0 = c->offsets[e], m = c->offsets[e + 1] - r0;
    if (m == 0) continue;
    tide_tensor_t gv = view2(c->g, r0 * I * 4, m, I, I * 4, 4);
    tide_err_t err;
    int rc;
    tide_tensor_t xv = view2(c->x, r0 * dim * 4, m, dim, dim * 4, 4);
    tide_tensor_t uv = view2(c->u, r0 * I * 4, m, I, I * 4, 4);
    tide_tensor_t yv = view2(c->y, r0 * dim * 4, m, dim, dim * 4, 4);
    if (!(rc = tide_op_matmul(NULL, &gv, &xv, c->w[3 * e], 1, &err)) &&
        !(rc = tide_op_matmul(NULL, &uv, &xv, c->w[3 * e + 1], 1, &err)) &&
        !(rc = tide_op_swiglu(NULL, &gv, &gv, &uv, &err)))
      rc = tide_op_matmul(NULL, &yv, &gv, c->w[3 * e + 2], 1, &err);
    if (rc && atomic_exchange(&c->failed, 1) == 0) c->err = err;
  }
}

static int experts_spread(tide_pool_t *pool, tide_tensor_t *y, const tide_tensor_t *x, tide_tensor_t *g,
                          tide_tensor_t *u, const int32_t *offsets, int32_t n_expert, const tide_tensor_t *const *w,
                          tide_err_t *err) {
  for (int32_t e = 0; e < n_expert; e++)
    if (offsets[e + 1] > offsets[e] && (!w[3 * e] || !w[3 * e + 1] || !w[3 * e + 2]))
      return tide_err_set(err, TIDE_EINVAL, "moe_experts: expert %d has rows but no weights", e);
  spread_ctx_t c = {.y = y, .g = g, .u = u, .x = x, .offsets = offsets, .w = w, .n_expert = n_expert};
  /* ~ns on one core, as matmul estimates it: tiny experts stay on the caller */
  int64_t dim = x->shape[1], I = g->shape[1], work = 0;
  for (int32_t e = 0; e < n_expert; e++) {
    int64_t m = offsets[e + 1] - offsets[e];
    if (m) work += m * I * dim / 20 + I * dim / 5;
  }
  atomic_init(&c.next, 0);
  atomic_init(&c.failed, 0);
  tide_k_run(pool, spread_task, &c, 3 * work);
  if (atomic_load(&c.failed)) {
    if (err) *err = c.err;
    return c.err.code ? c.err.code : TIDE_EINVAL;
  }
  return 0;
}

static int experts(const runner_t *r, tide_tensor_t *y, const tide_tensor_t *x, tide_tensor_t *g, tide_tensor_t *u,
                   const int32_t *offsets, int32_t n_expert, const tide_tensor_t *const *w, tide_err_t *err) {
  if (!x || !offsets || !w || n_expert < 0)
    return tide_err_set(err, TIDE_EINVAL, "moe_experts: missing rows, offsets or weights");
  int64_t R = x->shape[0];
  int rc;
  if ((rc = check_rows(x, R, "x", err)) || (rc = check_rows(y, R, "y", err)) || (rc = check_rows(g, R, "g", err)) ||
      (rc = check_rows(u, R, "u", err)))
    return rc;
  if (g->shape[1] != u->shape[1] || y->shape[1] != x->shape[1])
    return tide_err_set(err, TIDE_ESHAPE, "moe_experts: g/u widths (%lld, %lld) or y/x widths (%lld, %lld) differ",
                        (long long)g->shape[1], (long long)u->shape[1], (long long)y->shape[1],
                        (long long)x->shape[1]);
  if (offsets[0] != 0 || offsets[n_expert] != R)
    return tide_err_set(err, TIDE_EINVAL, "moe_experts: offsets run from %d to %d, expected 0 to %lld", offsets[0],
                        offsets[n_expert], (long long)R);
  for (int32_t e = 0; e < n_expert; e++)
    if (offsets[e + 1] < offsets[e])
      return tide_err_set(err, TIDE_EINVAL, "moe_experts: offsets decrease at expert %d", e);
  int64_t dim = x->shape[1], I = g->shape[1];
  if (!r->ref && few_rows(r->pool, offsets, n_expert)) return experts_spread(r->pool, y, x, g, u, offsets, n_expert, w, err);
  for (int32_t e = 0; e < n_expert && rc == 0; e++) {
    int64_t r0 = offsets[e], m = offsets[e + 1] - r0;
    if (m == 0) continue;
    const tide_tensor_t *wg = w[3 * e], *wu = w[3 * e + 1], *wd = w[3 * e + 2];
    if (!wg || !wu || !wd) return tide_err_set(err, TIDE_EINVAL, "moe_experts: expert %d has rows but no weights", e);
    tide_tensor_t xv = view2(x, r0 * dim * 4, m, dim, dim * 4, 4);
    tide_tensor_t yv = view2(y, r0 * dim * 4, m, dim, dim * 4, 4);
    tide_tensor_t gv = view2(g, r0 * I * 4, m, I, I * 4, 4);
    tide_tensor_t uv = view2(u, r0 * I * 4, m, I, I * 4, 4);
    if ((rc = run_matmul(r, &gv, &xv, wg, 1, err)) || (rc = run_matmul(r, &uv, &xv, wu, 1, err)) ||
        (rc = run_swiglu(r, &gv, &gv, &uv, err)) || (rc = run_matmul(r, &yv, &gv, wd, 1, err)))
      break;
  }
  return rc;
}

int tide_op_moe_experts(tide_pool_t *pool, tide_tensor_t *y, const tide_tensor_t *x, tide_tensor_t *g,
                        tide_tensor_t *u, const int32_t *offsets, int32_t n_expert, const tide_tensor_t *const *w,
                        tide_err_t *err) {
  runner_t r = {pool, 0};
  return experts(&r, y, x, g, u, offsets, n_expert, w, err);
}

int tide_ref_moe_experts(tide_tensor_t *y, const tide_tensor_t *x, tide_tensor_t *g, tide_tensor_t *u,
                         const int32_t *offsets, int32_t n_expert, const tide_tensor_t *const *w, tide_err_t *err) {
  runner_t r = {NULL, 1};
  return experts(&r, y, x, g, u, offsets, n_expert, w, err);
}
