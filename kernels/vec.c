/* vec.c: portable vector primitives and the run-time dispatch to the AVX2 ones. */
#include <math.h>

#include "kern.h"

static inline float load1(const void *x, int32_t dt, int64_t i) {
  switch (dt) {
  case TIDE_DTYPE_F16: return tide_f16_to_f32(((const uint16_t *)x)[i]);
  case TIDE_DTYPE_BF16: return tide_bf16_to_f32_inline(((const uint16_t *)x)[i]);
  case TIDE_DTYPE_F8_E4M3: return tide_k_f8_table[((const uint8_t *)x)[i]];
  default: return ((const float *)x)[i];
  }
}

float tide_vec_dot_c(const float *a, const void *b, int32_t dt, int64_t n) {
  float s = 0.0f;
  for (int64_t i = 0; i < n; i++) s += a[i] * load1(b, dt, i);
  return s;
}

void tide_vec_axpy_c(float *y, float s, const void *x, int32_t dt, int64_t n) {
  for (int64_t i = 0; i < n; i++) y[i] += s * load1(x, dt, i);
}

void tide_vec_to_f32_c(float *dst, const void *src, int32_t dt, int64_t n) {
  for (int64_t i = 0; i < n; i++) dst[i] = load1(src, dt, i);
}

void tide_vec_add_c(float *o, const float *a, const float *b, int64_t n) {
  for (int64_t i = 0; i < n; i++) o[i] = a[i] + b[i];
}
void tide_vec_mul_c(float *o, const float *a, const float *b, int64_t n) {
  for (int64_t i = 0; i < n; i++) o[i] = a[i] * b[i];
}
void tide_vec_scale_c(float *o, const float *a, float s, int64_t n) {
  for (int64_t i = 0; i < n; i++) o[i] = a[i] * s;
}
void tide_vec_silu_c(float *o, const float *x, int64_t n) {
  for (int64_t i = 0; i < n; i++) o[i] = x[i] / (1.0f + expf(-x[i]));
}
void tide_vec_sigmoid_c(float *o, const float *x, int64_t n) {
  for (int64_t i = 0; i < n; i++) o[i] = 1.0f / (1.0f + expf(-x[i]));
}
void tide_vec_swiglu_c(float *o, const float *g, const float *u, int64_t n) {
  for (int64_t i = 0; i < n; i++) o[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}
double tide_vec_sumsq_c(const float *x, int64_t n) {
  double s = 0.0; /* one long serial float sum would lose ~n ulps */
  for (int64_t i = 0; i < n; i++) s += (double)(x[i] * x[i]);
  return s;
}
float tide_vec_max_c(const float *x, int64_t n) {
  float m = -INFINITY;
  for (int64_t i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
  return m;
}
float tide_vec_exp_sum_c(float *o, const float *x, float s, float m, int64_t n) {
  float sum = 0.0f;
  for (int64_t i = 0; i < n; i++) {
    o[i] = expf(x[i] * s - m);
    sum += o[i];
  }
  return sum;
}

void tide_vec_dotn_c(const float *q, int64_t ldq, int32_t ng, const void *x, int32_t dt, int64_t n, float *out) {
  for (int32_t g = 0; g < ng; g++) out[g] = tide_vec_dot_c(q + g * ldq, x, dt, n);
}

void tide_vec_axpyn_c(float *y, int64_t ldy, const float *s, int32_t ng, const void *x, int32_t dt, int64_t n) {
  for (int32_t g = 0; g < ng; g++) tide_vec_axpy_c(y + g * ldy, s[g], x, dt, n);
}

void tide_vec_dot_f8s4_c(const float *a, const uint8_t *const *b, const float *const *srow, int64_t n, int64_t seg,
                         float *out) {
  for (int r = 0; r < 4; r++) {
    float acc = 0.0f;
    for (int64_t k0 = 0, j = 0; k0 < n; k0 += seg, j++)
      acc += tide_vec_dot_c(a + k0, b[r] + k0, TIDE_DTYPE_F8_E4M3, n - k0 < seg ? n - k0 : seg) * srow[r][j];
    out[r] = acc;
  }
}

void tide_vec_tile2_c(const float *a, int64_t lda, int32_t ma, const void *b0, const void *b1, int32_t dt, int64_t n,
                      float *out, int64_t ldo) {
  for (int32_t m = 0; m < ma; m++) {
    out[m * ldo] = tide_vec_dot_c(a + m * lda, b0, dt, n);
    out[m * ldo + 1] = tide_vec_dot_c(a + m * lda, b1, dt, n);
  }
}

/* ---- dispatch ---- */
#define DISPATCH(call_avx2, call_c) \
  do {                              \
    if (tide_k_has_avx2()) {        \
      call_avx2;                    \
    } else {                        \
      call_c;                       \
    }                               \
  } while (0)

float tide_vec_dot(const float *a, const void *b, int32_t dt, int64_t n) {
  return tide_k_has_avx2() ? tide_vec_dot_avx2(a, b, dt, n) : tide_vec_dot_c(a, b, dt, n);
}
void tide_vec_axpy(float *y, float s, const void *x, int32_t dt, int64_t n) {
  DISPATCH(tide_vec_axpy_avx2(y, s, x, dt, n), tide_vec_axpy_c(y, s, x, dt, n));
}
void tide_vec_to_f32(float *dst, const void *src, int32_t dt, int64_t n) {
  DISPATCH(tide_vec_to_f32_avx2(dst, src, dt, n), tide_vec_to_f32_c(dst, src, dt, n));
}
void tide_vec_add(float *o, const float *a, const float *b, int64_t n) {
  DISPATCH(tide_vec_add_avx2(o, a, b, n), tide_vec_add_c(o, a, b, n));
}
void tide_vec_mul(float *o, const float *a, const float *b, int64_t n) {
  DISPATCH(tide_vec_mul_avx2(o, a, b, n), tide_vec_mul_c(o, a, b, n));
}
void tide_vec_scale(float *o, const float *a, float s, int64_t n) {
  DISPATCH(tide_vec_scale_avx2(o, a, s, n), tide_vec_scale_c(o, a, s, n));
}
void tide_vec_silu(float *o, const float *x, int64_t n) {
  DISPATCH(tide_vec_silu_avx2(o, x, n), tide_vec_silu_c(o, x, n));
}
void tide_vec_sigmoid(float *o, const float *x, int64_t n) {
  DISPATCH(tide_vec_sigmoid_avx2(o, x, n), tide_vec_sigmoid_c(o, x, n));
}
void tide_vec_swiglu(float *o, const float *g, const float *u, int64_t n) {
  DISPATCH(tide_vec_swiglu_avx2(o, g, u, n), tide_vec_swiglu_c(o, g, u, n));
}
double tide_vec_sumsq(const float *x, int64_t n) {
  return tide_k_has_avx2() ? tide_vec_sumsq_avx2(x, n) : tide_vec_sumsq_c(x, n);
}
float tide_vec_max(const float *x, int64_t n) {
  return tide_k_has_avx2() ? tide_vec_max_avx2(x, n) : tide_vec_max_c(x, n);
}
float tide_vec_exp_sum(float *o, const float *x, float s, float m, int64_t n) {
  return tide_k_has_avx2() ? tide_vec_exp_sum_avx2(o, x, s, m, n) : tide_vec_exp_sum_c(o, x, s, m, n);
}
void tide_vec_dotn(const float *q, int64_t ldq, int32_t ng, const void *x, int32_t dt, int64_t n, float *out) {
  DISPATCH(tide_vec_dotn_avx2(q, ldq, ng, x, dt, n, out), tide_vec_dotn_c(q, ldq, ng, x, dt, n, out));
}
void tide_vec_axpyn(float *y, int64_t ldy, const float *s, int32_t ng, const void *x, int32_t dt, int64_t n) {
  DISPATCH(tide_vec_axpyn_avx2(y, ldy, s, ng, x, dt, n), tide_vec_axpyn_c(y, ldy, s, ng, x, dt, n));
}
void tide_vec_dot_f8s4(const float *a, const uint8_t *const *b, const float *const *srow, int64_t n, int64_t seg,
                       float *out) {
  DISPATCH(tide_vec_dot_f8s4_avx2(a, b, srow, n, seg, out), tide_vec_dot_f8s4_c(a, b, srow, n, seg, out));
}
void tide_vec_tile2(const float *a, int64_t lda, int32_t ma, const void *b0, const void *b1, int32_t dt, int64_t n,
                    float *out, int64_t ldo) {
  DISPATCH(tide_vec_tile2_avx2(a, lda, ma, b0, b1, dt, n, out, ldo), tide_vec_tile2_c(a, lda, ma, b0, b1, dt, n, out, ldo));
}
