/* kern.c: row access, conversion and validation helpers shared by the ops. */
#include "kern.h"

#include <stdio.h>

void tide_k_run(tide_pool_t *pool, tide_pool_fn fn, void *ctx, int64_t work) {
  if (!pool || work < TIDE_K_MIN_PARALLEL || tide_pool_threads(pool) == 1)
    fn(ctx, 0, 1);
  else
    tide_pool_run(pool, fn, ctx);
}

/* Build with -DTIDE_NO_AVX2 to run (and test) the portable paths on an AVX2 machine. */
int tide_k_has_avx2(void) {
#if (defined(__x86_64__) || defined(__i386__)) && !defined(TIDE_NO_AVX2)
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
#else
  return 0;
#endif
}

static float scale_value(const tide_tensor_t *s, int64_t i, int64_t j) {
  const char *p = (const char *)s->data + i * s->stride[0] + j * s->stride[1];
  float v;
  memcpy(&v, p, 4);
  return v;
}

float tide_k_scale_at(const tide_tensor_t *t, int64_t row, int64_t col) {
  if (!t->scale) return 1.0f;
  int64_t r = t->ndim >= 2 ? row % t->shape[t->ndim - 2] : 0;
  return scale_value(t->scale, r / t->scale_block[0], col / t->scale_block[1]);
}

static void convert_dense(const tide_tensor_t *t, const char *p, int64_t n, float *dst) {
  switch (t->dtype) {
  case TIDE_DTYPE_F32:
    if ((const void *)dst != (const void *)p) memmove(dst, p, (size_t)n * 4);
    return;
  case TIDE_DTYPE_BF16:
  case TIDE_DTYPE_F16:
  case TIDE_DTYPE_F8_E4M3: tide_vec_to_f32(dst, p, t->dtype, n); return;
  default: tide_dtype_traits(t->dtype)->to_float(p, dst, n); return;
  }
}

void tide_k_load_ptr(const tide_tensor_t *t, const char *row, int64_t r, int64_t c0, int64_t n, float *dst) {
  const tide_dtype_traits_t *tr = tide_dtype_traits(t->dtype);
  if (tide_k_row_dense(t)) {
    convert_dense(t, row + c0 / tr->block_size * tr->block_bytes, n, dst);
  } else {
    int64_t cs = tide_k_col_stride(t);
    for (int64_t c = 0; c < n; c++) convert_dense(t, row + (c0 + c) * cs, 1, dst + c);
  }
  if (t->scale) {
    int64_t bc = t->scale_block[1];
    for (int64_t c = 0; c < n;) {
      int64_t col = c0 + c;
      int64_t end = (col / bc + 1) * bc - c0;
      if (end > n) end = n;
      tide_vec_scale(dst + c, dst + c, tide_k_scale_at(t, r, col), end - c);
      c = end;
    }
  }
}

void tide_k_load(const tide_tensor_t *t, int64_t r, int64_t c0, int64_t n, float *dst) {
  tide_k_load_ptr(t, tide_k_row(t, r), r, c0, n, dst);
}

float tide_k_get(const tide_tensor_t *t, int64_t r, int64_t c) {
  const tide_dtype_traits_t *tr = tide_dtype_traits(t->dtype);
  float buf[TIDE_K_CHUNK];
  int64_t c0 = c / tr->block_size * tr->block_size;
  tide_k_load(t, r, c0, tr->block_size, buf);
  return buf[c - c0];
}

void tide_k_store_ptr(tide_tensor_t *t, char *row, int64_t c0, int64_t n, const float *src) {
  const tide_dtype_traits_t *tr = tide_dtype_traits(t->dtype);
  if (t->dtype == TIDE_DTYPE_F32 && tide_k_row_dense(t)) {
    if ((const void *)(row + c0 * 4) != (const void *)src) memmove(row + c0 * 4, src, (size_t)n * 4);
  } else if (tide_k_row_dense(t)) {
    tr->from_float(src, row + c0 / tr->block_size * tr->block_bytes, n);
  } else {
    int64_t cs = tide_k_col_stride(t);
    for (int64_t c = 0; c < n; c++) tr->from_float(src + c, row + (c0 + c) * cs, 1);
  }
}

void tide_k_store(tide_tensor_t *t, int64_t r, int64_t c0, int64_t n, const float *src) {
  tide_k_store_ptr(t, tide_k_row(t, r), c0, n, src);
}

const char *tide_k_shape_str(const tide_tensor_t *t, char *buf, size_t n) {
  size_t k = 0;
  k += (size_t)snprintf(buf + k, n - k, "(");
  for (int32_t i = 0; i < t->ndim && k < n; i++)
    k += (size_t)snprintf(buf + k, n - k, "%s%lld", i ? ", " : "", (long long)t->shape[i]);
  if (k < n) snprintf(buf + k, n - k, ")");
  return buf;
}

int tide_k_check_tensor(const tide_tensor_t *t, const char *op, const char *name, tide_err_t *err) {
  if (!t) return tide_err_set(err, TIDE_EINVAL, "%s: %s is NULL", op, name);
  if (!tide_dtype_traits(t->dtype))
    return tide_err_set(err, TIDE_EDTYPE, "%s: %s has unknown dtype %d", op, name, (int)t->dtype);
  if (t->ndim < 0 || t->ndim > TIDE_MAX_DIMS)
    return tide_err_set(err, TIDE_EINVAL, "%s: %s has %d dimensions", op, name, (int)t->ndim);
  if (!t->data && tide_tensor_numel(t) > 0) return tide_err_set(err, TIDE_EINVAL, "%s: %s has no data", op, name);
  return 0;
}

int tide_k_check_float(const tide_tensor_t *t, const char *op, const char *name, tide_err_t *err) {
  int rc = tide_k_check_tensor(t, op, name, err);
  if (rc) return rc;
  const tide_dtype_traits_t *tr = tide_dtype_traits(t->dtype);
  if (!tr->is_float || !tr->to_float)
    return tide_err_set(err, TIDE_EDTYPE, "%s: %s has dtype %s, expected a float dtype", op, name, tr->name);
  if (t->scale && (t->ndim != 2 || !t->scale->data || t->scale->dtype != TIDE_DTYPE_F32 || t->scale->ndim != 2 ||
                   t->scale_block[0] <= 0 || t->scale_block[1] <= 0 ||
                   t->scale->shape[0] < (t->shape[0] + t->scale_block[0] - 1) / t->scale_block[0] ||
                   t->scale->shape[1] < (t->shape[1] + t->scale_block[1] - 1) / t->scale_block[1]))
    return tide_err_set(err, TIDE_EINVAL, "%s: %s has malformed block scales", op, name);
  return 0;
}

int tide_k_check_writable(const tide_tensor_t *t, const char *op, const char *name, tide_err_t *err) {
  int rc = tide_k_check_tensor(t, op, name, err);
  if (rc) return rc;
  if ((t->flags & TIDE_TENSOR_READONLY) || (t->storage && t->storage->readonly))
    return tide_err_set(err, TIDE_EINVAL, "%s: %s is read-only", op, name);
  return 0;
}

int tide_k_check_out_f32(const tide_tensor_t *t, const char *op, const char *name, tide_err_t *err) {
  int rc = tide_k_check_writable(t, op, name, err);
  if (rc) return rc;
  if (t->dtype != TIDE_DTYPE_F32)
    return tide_err_set(err, TIDE_EDTYPE, "%s: %s has dtype %s, expected f32", op, name,
                        tide_dtype_traits(t->dtype)->name);
  if (!tide_tensor_is_contiguous(t)) return tide_err_set(err, TIDE_EINVAL, "%s: %s must be contiguous", op, name);
  return 0;
}

int tide_k_check_i32(const tide_tensor_t *t, int64_t n, const char *op, const char *name, tide_err_t *err) {
  int rc = tide_k_check_tensor(t, op, name, err);
  if (rc) return rc;
  if (t->dtype != TIDE_DTYPE_I32)
    return tide_err_set(err, TIDE_EDTYPE, "%s: %s has dtype %s, expected i32", op, name,
                        tide_dtype_traits(t->dtype)->name);
  if (tide_tensor_numel(t) != n)
    return tide_err_set(err, TIDE_ESHAPE, "%s: %s has %lld elements, expected %lld", op, name,
                        (long long)tide_tensor_numel(t), (long long)n);
  return 0;
}

int tide_k_same_shape(const tide_tensor_t *a, const tide_tensor_t *b) {
  if (a->ndim != b->ndim) return 0;
  for (int32_t i = 0; i < a->ndim; i++)
    if (a->shape[i] != b->shape[i]) return 0;
  return 1;
}
