/* probe.c: read-bandwidth probe (see probe.h). */
#include "probe.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
  const uint64_t *buf; /* (n) */
  int64_t n;
  uint64_t *sums; /* (nth) per-thread results, keeps the reads alive */
} probe_ctx_t;

static void read_slice(void *vctx, int32_t ith, int32_t nth) {
  probe_ctx_t *c = vctx;
  int64_t per = (c->n + nth - 1) / nth;
  int64_t a = (int64_t)ith * per;
  int64_t b = a + per < c->n ? a + per : c->n;
  uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
  int64_t i = a;
  for (; i + 4 <= b; i += 4) {
    s0 += c->buf[i];
    s1 += c->buf[i + 1];
    s2 += c->buf[i + 2];
    s3 += c->buf[i + 3];
  }
  for (; i < b; i++) s0 += c->buf[i];
  c->sums[ith] = s0 + s1 + s2 + s3;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int tide_probe_read_bw(tide_pool_t *pool, int64_t bytes, int32_t reps, double *gbps, tide_err_t *err) {
  if (!gbps) return tide_err_set(err, TIDE_EINVAL, "probe: gbps is NULL");
  if (bytes < (int64_t)(1 << 20) || reps < 1) return tide_err_set(err, TIDE_EINVAL, "probe: need bytes >= 1 MiB and reps >= 1");
  int64_t n = bytes / (int64_t)sizeof(uint64_t);
  uint64_t *buf = malloc((size_t)n * sizeof(uint64_t));
  int32_t nth = pool ? tide_pool_threads(pool) : 1;
  uint64_t *sums = calloc((size_t)(nth > 0 ? nth : 1), sizeof(uint64_t));
  if (!buf || !sums) {
    free(buf);
    free(sums);
    return tide_err_set(err, TIDE_ENOMEM, "probe: cannot allocate %lld bytes", (long long)bytes);
  }
  for (int64_t i = 0; i < n; i++) buf[i] = (uint64_t)i;
  probe_ctx_t c = {buf, n, sums};
  double best = 0;
  for (int32_t r = 0; r < reps; r++) {
    double t0 = now_s();
    tide_pool_run(pool, read_slice, &c);
    double dt = now_s() - t0;
    double g = dt > 0 ? (double)n * sizeof(uint64_t) / dt / 1e9 : 0;
    if (g > best) best = g;
  }
  *gbps = best;
  free(buf);
  free(sums);
  return 0;
}
