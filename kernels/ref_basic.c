/* ref_basic.c: scalar references for matmul, element-wise ops, convert,
 * rmsnorm and softmax. Single thread, obvious loops, element by element;
 * the oracle the fast paths are tested against. */
#include <math.h>
#include <stdlib.h>

#include "kern.h"

int tide_ref_matmul(tide_tensor_t *out, const tide_tensor_t *a, const tide_tensor_t *b, int32_t trans_b,
                    tide_err_t *err) {
  tide_k_mm_t mm;
  int rc = tide_k_check_matmul(out, a, b, trans_b, &mm, err);
  if (rc) return rc;
  int64_t M = mm.M, N = mm.N, K = mm.K;
  float *fa = malloc((size_t)(M * K + 1) * sizeof(float));
  float *fb = malloc((size_t)(N * K + 1) * sizeof(float));
  if (!fa || !fb) {
    free(fa);
    free(fb);
    return tide_err_set(err, TIDE_ENOMEM, "matmul: out of memory");
  }
  /* tide_tensor_to_f32 (src/tensor.c) is an independent conversion path. */
  if ((rc = tide_tensor_to_f32(a, fa, err)) == 0) rc = tide_tensor_to_f32(b, fb, err);
  if (rc == 0) {
    float *o = out->data;
    for (int64_t m = 0; m < M; m++)
      for (int64_t n = 0; n < N; n++) {
        double s = 0.0;
        for (int64_t k = 0; k < K; k++) s += (double)fa[m * K + k] * (trans_b ? fb[n * K + k] : fb[k * N + n]);
        o[m * N + n] = (float)s;
      }
  }
  free(fa);
  free(fb);
  return rc;
}

static int binary(const char *op, tide_tensor_t *out, const tide_tensor_t *a, const tide_tensor_t *b, int is_mul,
                  tide_err_t *err) {
  int bmode;
  int rc = tide_k_check_binary(op, out, a, b, &bmode, err);
  if (rc) return rc;
  int64_t rows = tide_k_rows(a), n = tide_k_inner(a);
  float *o = out->data;
  for (int64_t r = 0; r < rows; r++)
    for (int64_t c = 0; c < n; c++) {
      float x = tide_k_get(a, r, c);
      float y = bmode == TIDE_K_BCAST_FULL ? tide_k_get(b, r, c)
                : bmode == TIDE_K_BCAST_ROW ? tide_k_get(b, 0, c)
                                            : tide_k_get(b, 0, 0);
      o[r * n + c] = is_mul ? x * y : x + y;
    }
  return 0;
}

int tide_ref_add(tide_tensor_t *out, const tide_tensor_t *a, const tide_tensor_t *b, tide_err_t *err) {
  return binary("add", out, a, b, 0, err);
}

int tide_ref_mul(tide_tensor_t *out, const tide_tensor_t *a, const tide_tensor_t *b, tide_err_t *err) {
  return binary("mul", out, a, b, 1, err);
}

enum { U_SCALE, U_SILU, U_SIGMOID };

static int unary(const char *op, tide_tensor_t *out, const tide_tensor_t *x, int kind, float s, tide_err_t *err) {
  int rc = tide_k_check_unary(op, out, x, err);
  if (rc) return rc;
  int64_t rows = tide_k_rows(x), n = tide_k_inner(x);
  float *o = out->data;
  for (int64_t r = 0; r < rows; r++)
    for (int64_t c = 0; c < n; c++) {
      float v = tide_k_get(x, r, c);
      o[r * n + c] = kind == U_SCALE ? v * s : kind == U_SILU ? v / (1.0f + expf(-v)) : 1.0f / (1.0f + expf(-v));
    }
  return 0;
}

int tide_ref_scale(tide_tensor_t *out, const tide_tensor_t *a, float s, tide_err_t *err) {
  return unary("scale", out, a, U_SCALE, s, err);
}
int tide_ref_silu(tide_tensor_t *out, const tide_tensor_t *x, tide_err_t *err) {
  return unary("silu", out, x, U_SILU, 0, err);
}
int tide_ref_sigmoid(tide_tensor_t *out, const tide_tensor_t *x, tide_err_t *err) {
  return unary("sigmoid", out, x, U_SIGMOID, 0, err);
}

int tide_ref_swiglu(tide_tensor_t *out, const tide_tensor_t *gate, const tide_tensor_t *up, tide_err_t *err) {
  int rc = tide_k_check_swiglu(out, gate, up, err);
  if (rc) return rc;
  int64_t rows = tide_k_rows(gate), n = tide_k_inner(gate);
  float *o = out->data;
  for (int64_t r = 0; r < rows; r++)
    for (int64_t c = 0; c < n; c++) {
      float g = tide_k_get(gate, r, c), u = tide_k_get(up, r, c);
      o[r * n + c] = g / (1.0f + expf(-g)) * u;
    }
  return 0;
}

int tide_ref_convert(tide_tensor_t *out, const tide_tensor_t *x, tide_err_t *err) {
  int rc = tide_k_check_convert(out, x, err);
  if (rc) return rc;
  int64_t rows = tide_k_rows(x), n = tide_k_inner(x);
  int32_t bs = tide_dtype_traits(out->dtype)->block_size;
  float buf[TIDE_K_CHUNK];
  for (int64_t r = 0; r < rows; r++)
    for (int64_t c = 0; c < n; c += bs) {
      for (int32_t j = 0; j < bs; j++) buf[j] = tide_k_get(x, r, c + j);
      tide_k_store(out, r, c, bs, buf);
    }
  return 0;
}

int tide_ref_rmsnorm(tide_tensor_t *out, const tide_tensor_t *x, const tide_tensor_t *w, float eps, tide_err_t *err) {
  int rc = tide_k_check_rmsnorm(out, x, w, err);
  if (rc) return rc;
  int64_t rows = tide_k_rows(x), n = tide_k_inner(x);
  float *o = out->data;
  for (int64_t r = 0; r < rows; r++) {
    double ss = 0.0;
    for (int64_t c = 0; c < n; c++) {
      float v = tide_k_get(x, r, c);
      ss += (double)v * v;
    }
    float inv = 1.0f / sqrtf((float)(ss / (double)n) + eps);
    for (int64_t c = 0; c < n; c++) {
      float v = tide_k_get(x, r, c) * inv; /* read before the write: in place allowed */
      o[r * n + c] = v * tide_k_get(w, 0, c);
    }
  }
  return 0;
}

int tide_ref_softmax(tide_tensor_t *out, const tide_tensor_t *x, float scale, tide_err_t *err) {
  int rc = tide_k_check_softmax(out, x, err);
  if (rc) return rc;
  int64_t rows = tide_k_rows(x), n = tide_k_inner(x);
  float *o = out->data;
  for (int64_t r = 0; r < rows; r++) {
    float m = -INFINITY;
    for (int64_t c = 0; c < n; c++) {
      float v = tide_k_get(x, r, c) * scale;
      if (v > m) m = v;
    }
    if (m == -INFINITY) { /* every entry masked: zeros, not NaN */
      for (int64_t c = 0; c < n; c++) o[r * n + c] = 0.0f;
      continue;
    }
    double sum = 0.0;
    for (int64_t c = 0; c < n; c++) {
      float e = expf(tide_k_get(x, r, c) * scale - m);
      o[r * n + c] = e;
      sum += e;
    }
    float fs = (float)sum;
    for (int64_t c = 0; c < n; c++) o[r * n + c] /= fs;
  }
  return 0;
}
