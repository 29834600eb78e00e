#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

float tu_rand(tu_rng_t *r) {
  uint64_t x = r->s ? r->s : 0x9e3779b97f4a7c15ull;
  x ^= x << 13;
  x ^= x >> 7;
  x ^= x << 17;
  r->s = x;
  return (float)((x >> 40) * (1.0 / (double)(1ull << 24))) * 2.0f - 1.0f;
}

int64_t tu_randint(tu_rng_t *r, int64_t lo, int64_t hi) {
  float u = (tu_rand(r) + 1.0f) * 0.5f;
  int64_t v = lo + (int64_t)(u * (float)(hi - lo + 1));
  return v > hi ? hi : v;
}

tide_tensor_t *tu_rand_tensor(tu_rng_t *r, int32_t ndim, const int64_t *shape, float scale) {
  tide_tensor_t *t = NULL;
  tide_err_t err;
  assert_int_equal(tide_tensor_new(TIDE_DTYPE_F32, ndim, shape, &t, &err), 0);
  float *d = t->data;
  int64_t n = tide_tensor_numel(t);
  for (int64_t i = 0; i < n; i++) d[i] = tu_rand(r) * scale;
  return t;
}

tide_tensor_t *tu_rand_tensor_dtype(tu_rng_t *r, int32_t dtype, int32_t ndim, const int64_t *shape, float scale) {
  tide_tensor_t *f = tu_rand_tensor(r, ndim, shape, scale);
  if (dtype == TIDE_DTYPE_F32) return f;
  tide_tensor_t *t = NULL;
  tide_err_t err;
  assert_int_equal(tide_tensor_copy(f, dtype, &t, &err), 0);
  tide_tensor_release(f);
  return t;
}

static float *to_f32(const tide_tensor_t *t) {
  int64_t n = tide_tensor_numel(t);
  float *d = malloc((size_t)(n ? n : 1) * sizeof(float));
  tide_err_t err;
  assert_non_null(d);
  assert_int_equal(tide_tensor_to_f32(t, d, &err), 0);
  return d;
}

double tu_nmse(const tide_tensor_t *a, const tide_tensor_t *b) {
  int64_t n = tide_tensor_numel(a);
  assert_int_equal(n, tide_tensor_numel(b));
  float *x = to_f32(a), *y = to_f32(b);
  double num = 0, den = 0;
  for (int64_t i = 0; i < n; i++) {
    double d = (double)x[i] - y[i];
    num += d * d;
    den += (double)y[i] * y[i];
  }
  free(x);
  free(y);
  return den > 0 ? num / den : num;
}

double tu_maxdiff(const tide_tensor_t *a, const tide_tensor_t *b) {
  int64_t n = tide_tensor_numel(a);
  assert_int_equal(n, tide_tensor_numel(b));
  float *x = to_f32(a), *y = to_f32(b);
  double m = 0;
  for (int64_t i = 0; i < n; i++) {
    double d = fabs((double)x[i] - y[i]);
    if (d > m || isnan(d)) m = isnan(d) ? INFINITY : d;
  }
  free(x);
  free(y);
  return m;
}

void tu_write_file(const char *path, const void *data, size_t n) {
  FILE *f = fopen(path, "wb");
  assert_non_null(f);
  if (n) assert_int_equal(fwrite(data, 1, n, f), n);
  fclose(f);
}

char *tu_tmpdir(void) {
  char *t = strdup("/tmp/tide_test_XXXXXX");
  assert_non_null(mkdtemp(t));
  return t;
}

static char *group_dir; /* the current group's temp folder (tests run one group at a time) */

int tu_group_setup(void **state) {
  (void)state;
  group_dir = tu_tmpdir();
  return 0;
}

int tu_group_teardown(void **state) {
  (void)state;
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", group_dir);
  if (system(cmd) != 0) fprintf(stderr, "cannot remove %s\n", group_dir);
  free(group_dir);
  group_dir = NULL;
  return 0;
}

char *tu_tmp_path(const char *name) {
  static char buf[8][512];
  static int k;
  char *p = buf[k++ % 8];
  snprintf(p, 512, "%s/%s", group_dir, name);
  return p;
}
