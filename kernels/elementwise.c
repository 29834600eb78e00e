/* elementwise.c: fast add, mul, scale, silu, sigmoid, swiglu and convert.
 *
 * Work is cut into (row, column chunk) items split across the pool by ith/nth;
 * each item converts its inputs to f32 on the stack when they are not dense
 * f32 already, and runs a vector primitive (AVX2 when available). */
#include "kern.h"

#define EW_CHUNK 1024 /* columns per item (a multiple of every block size) */

enum { EW_ADD, EW_MUL, EW_SCALE, EW_SILU, EW_SIGMOID, EW_SWIGLU, EW_CONVERT };

typedef struct {
  int kind, bmode;
  tide_tensor_t *out;
  const tide_tensor_t *a, *b;
  float s;
  int64_t rows, n, chunks;
} ew_ctx_t;

/* f32 view of n columns of row r starting at c0: a direct pointer when the row is dense f32, else converted into buf. */
static const float *view_f32(const tide_tensor_t *t, int64_t r, int64_t c0, int64_t n, float *buf) {
  if (t->dtype == TIDE_DTYPE_F32 && !t->scale && tide_k_row_dense(t)) return (const float *)(void *)tide_k_row(t, r) + c0;
  tide_k_load(t, r, c0, n, buf);
  return buf;
}

static void ew_task(void *arg, int32_t ith, int32_t nth) {
  ew_ctx_t *c = arg;
  float ba[EW_CHUNK], bb[EW_CHUNK];
  int64_t lo, hi;
  tide_split_range(c->rows * c->chunks, ith, nth, &lo, &hi);
  for (int64_t it = lo; it < hi; it++) {
    int64_t r = it / c->chunks, c0 = it % c->chunks * EW_CHUNK;
    int64_t n = c->n - c0 < EW_CHUNK ? c->n - c0 : EW_CHUNK;
    const float *x = view_f32(c->a, r, c0, n, ba);
    if (c->kind == EW_CONVERT) {
      tide_k_store(c->out, r, c0, n, x);
      continue;
    }
    float *o = (float *)c->out->data + r * c->n + c0;
    switch (c->kind) {
    case EW_ADD:
    case EW_MUL: {
      const float *y;
      if (c->bmode == TIDE_K_BCAST_SCALAR) {
        float v = tide_k_get(c->b, 0, 0);
        for (int64_t i = 0; i < n; i++) bb[i] = v;
        y = bb;
      } else {
        y = view_f32(c->b, c->bmode == TIDE_K_BCAST_ROW ? 0 : r, c0, n, bb);
      }
      if (c->kind == EW_ADD)
        tide_vec_add(o, x, y, n);
      else
        tide_vec_mul(o, x, y, n);
      break;
    }
    case EW_SCALE: tide_vec_scale(o, x, c->s, n); break;
    case EW_SILU: tide_vec_silu(o, x, n); break;
    case EW_SIGMOID: tide_vec_sigmoid(o, x, n); break;
    case EW_SWIGLU: tide_vec_swiglu(o, x, view_f32(c->b, r, c0, n, bb), n); break;
    default: break;
    }
  }
}

static void ew_run(tide_pool_t *pool, ew_ctx_t *c) {
  c->rows = tide_k_rows(c->a);
  c->n = tide_k_inner(c->a);
  c->chunks = (c->n + EW_CHUNK - 1) / EW_CHUNK;
  if (c->rows * c->n == 0) return;
  tide_k_run(pool, ew_task, c, c->rows * c->n / (c->kind >= EW_SILU && c->kind <= EW_SWIGLU ? 1 : 2));
}

static int binary(tide_pool_t *pool, const char *op, int kind, tide_tensor_t *out, const tide_tensor_t *a,
                  const tide_tensor_t *b, tide_err_t *err) {
  ew_ctx_t c = {.kind = kind, .out = out, .a = a, .b = b};
  int rc = tide_k_check_binary(op, out, a, b, &c.bmode, err);
  if (rc) return rc;
  ew_run(pool, &c);
  return 0;
}

int tide_op_add(tide_pool_t *pool, tide_tensor_t *out, const tide_tensor_t *a, const tide_tensor_t *b, tide_err_t *err) {
  return binary(pool, "add", EW_ADD, out, a, b, err);
}

int tide_op_mul(tide_pool_t *pool, tide_tensor_t *out, const tide_tensor_t *a, const tide_tensor_t *b, tide_err_t *err) {
  return binary(pool, "mul", EW_MUL, out, a, b, err);
}

static int unary(tide_pool_t *pool, const char *op, int kind, tide_tensor_t *out, const tide_tensor_t *x, float s,
                 tide_err_t *err) {
  int rc = tide_k_check_unary(op, out, x, err);
  if (rc) return rc;
  ew_ctx_t c = {.kind = kind, .out = out, .a = x, .s = s};
  ew_run(pool, &c);
  return 0;
}

int tide_op_scale(tide_pool_t *pool, tide_tensor_t *out, const tide_tensor_t *a, float s, tide_err_t *err) {
  return unary(pool, "scale", EW_SCALE, out, a, s, err);
}

int tide_op_silu(tide_pool_t *pool, tide_tensor_t *out, const tide_tensor_t *x, tide_err_t *err) {
  return unary(pool, "silu", EW_SILU, out, x, 0, err);
}

int tide_op_sigmoid(tide_pool_t *pool, tide_tensor_t *out, const tide_tensor_t *x, tide_err_t *err) {
  return unary(pool, "sigmoid", EW_SIGMOID, out, x, 0, err);
}

int tide_op_swiglu(tide_pool_t *pool, tide_tensor_t *out, const tide_tensor_t *gate, const tide_tensor_t *up,
                   tide_err_t *err) {
  int rc = tide_k_check_swiglu(out, gate, up, err);
  if (rc) return rc;
  ew_ctx_t c = {.kind = EW_SWIGLU, .out = out, .a = gate, .b = up};
  ew_run(pool, &c);
  return 0;
}

int tide_op_convert(tide_pool_t *pool, tide_tensor_t *out, const tide_tensor_t *x, tide_err_t *err) {
  int rc = tide_k_check_convert(out, x, err);
  if (rc) return rc;
  ew_ctx_t c = {.kind = EW_CONVERT, .out = out, .a = x};
  ew_run(pool, &c);
  return 0;
}
