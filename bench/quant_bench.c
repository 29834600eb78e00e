/* quant_bench.c: matmul with GGML block weights (q8_0, q4_0, q4_k, q6_k; bf16 as
 * the float baseline), as ratios to limits measured in the same run.
 *
 * Build and run (after `make B=build-quant`):
 *   cc -std=c11 -D_GNU_SOURCE -O2 -Isrc -Ikernels -I/usr/include/x86_64-linux-gnu/openblas-pthread \
 *      bench/quant_bench.c build-quant/libtide.a -lopenblas -lm -lpthread -o build-quant/quant_bench
 *   build-quant/quant_bench [threads]
 *
 * One JSON object per line. `read_bw`: GB/s summing a 256 MiB f32 array with
 * the pool (the decode roofline). Per (format, M): out (M, N) = a (M, K) @ w^T
 * with w (N, K = 4096), N chosen for ~128 MB of weights in every format (an
 * L3 of 32 MiB per core complex; two cores may sit on two), best of several runs; `w_gbs` = weight bytes / time, `of_read_bw` = w_gbs / read_bw
 * (1.0 = bandwidth roofline, meaningful at small M), `gops` = 2*M*N*K / time.
 *
 * QB_PREFILL=1 (QB_M=rows, default 512): prefill shapes only, M x 2048 x {2048, 5632}; per format the
 * dispatched matmul and each path of kernels/quant_dot.c (integer dots, AVX2-dequantized panels + sgemm,
 * AVX-512 VNNI packed 4 x 4 tiles, `il_gops`: interleaved 16-row panels) against f32 sgemm in the same run,
 * medians of 5:
 *   QB_PREFILL=1 build-quant/quant_bench 1
 * QB_CPU=1 (with QB_PREFILL): time in process CPU seconds / threads (a loaded machine's waits not counted).
 * QB_KERNELS=1: single-thread kernel throughput in L2, in thread CPU time (see kernels_bench).
 * QB_MIN_M / QB_MAX_M: limit the M of the matmul sweep. */
#include <dlfcn.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kern.h"
#include "ops.h"
#include "quant.h"

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

typedef struct {
  const float *x;
  int64_t n;
  double part[64];
} bw_ctx_t;

static void bw_task(void *arg, int32_t ith, int32_t nth) {
  bw_ctx_t *c = arg;
  int64_t lo, hi;
  tide_split_range(c->n, ith, nth, &lo, &hi);
  c->part[ith] = tide_vec_sumsq(c->x + lo, hi - lo);
}

static uint64_t rs = 88172645463325252ull;
static float rnd(void) { /* [-0.5, 0.5) */
  rs ^= rs << 13;
  rs ^= rs >> 7;
  rs ^= rs << 17;
  return (float)((rs >> 40) * (1.0 / (1 << 24))) - 0.5f;
}

/* (N, K) weight of dtype dt: 64 distinct random rows, repeated (quantizing all N rows would dominate the run). */
static tide_tensor_t *weight(int32_t dt, int64_t N, int64_t K) {
  tide_tensor_t *w;
  tide_err_t err;
  int64_t s[2] = {N, K};
  if (tide_tensor_new(dt, 2, s, &w, &err)) return NULL;
  float *row = malloc((size_t)K * 4);
  int64_t rb = w->stride[0];
  for (int64_t n = 0; n < 64 && n < N; n++) {
    for (int64_t k = 0; k < K; k++) row[k] = 0.1f * rnd();
    tide_dtype_traits(dt)->from_float(row, (char *)w->data + n * rb, K);
  }
  for (int64_t n = 64; n < N; n++) memcpy((char *)w->data + n * rb, (char *)w->data + (n % 64) * rb, (size_t)rb);
  free(row);
  return w;
}

/* ---- single-thread dot throughput against llama.cpp's own kernels ----
 * With the npm package installed (tests/node-llama), its CPU backends are
 * loaded with dlopen and their ggml_vec_dot_* run on the same blocks: the
 * AVX2 build (haswell) and the one llama.cpp picks on this CPU when it has
 * AVX-512 (zen4). Weights in L2 (64 rows of 4096), so this is compute speed,
 * reported as GB/s of weight bytes per thread. */
#define GGML_DIR "tests/node-llama/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64/"
typedef void (*ggml_dot_fn)(int n, float *s, size_t bs, const void *x, size_t bx, const void *y, size_t by, int nrc);

static double dot_rate(tide_quant_dot_fn tdot, ggml_dot_fn gdot, const char *w, int64_t rb,
                       const char *aq, int64_t rows, int64_t K) {
  volatile float sink = 0;
  double best = 1e30;
  for (int rep = 0; rep < 5; rep++) {
    double t0 = now();
    for (int it = 0; it < 20; it++)
      for (int64_t r = 0; r < rows; r++) {
        float v;
        if (tdot)
          v = tdot(w + r * rb, aq, K);
        else
          gdot((int)K, &v, 0, w + r * rb, 0, aq, 0, 1);
        sink += v;
      }
    double dt = now() - t0;
    if (dt < best) best = dt;
  }
  (void)sink;
  return 20.0 * rows * rb / best * 1e-9;
}

static void dot_vs_llama(void) {
  static const char *variants[2] = {"haswell", "zen4"};
  void *h[2] = {NULL, NULL};
  void *base = dlopen(GGML_DIR "libggml-base.so", RTLD_NOW | RTLD_GLOBAL);
  if (!base) {
    printf("{\"case\":\"dot_vs_llama_cpp\",\"skipped\":\"llama.cpp npm package not installed (npm install in "
           "tests/node-llama)\"}\n");
    return;
  }
  for (int v = 0; v < 2; v++) {
    char path[512];
    snprintf(path, sizeof path, GGML_DIR "libggml-cpu-%s.so", variants[v]);
    h[v] = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (h[v]) {
      void (*init)(void) = (void (*)(void))dlsym(h[v], "ggml_cpu_init");
      if (init) init();
    }
  }
  static const struct {
    int32_t dt;
    const char *sym;
  } fm[] = {{TIDE_DTYPE_Q8_0, "ggml_vec_dot_q8_0_q8_0"},
            {TIDE_DTYPE_Q4_0, "ggml_vec_dot_q4_0_q8_0"},
            {TIDE_DTYPE_Q4_K, "ggml_vec_dot_q4_K_q8_K"},
            {TIDE_DTYPE_Q6_K, "ggml_vec_dot_q6_K_q8_K"}};
  const int64_t K = 4096, rows = 64;
  float *x = malloc((size_t)K * 4);
  char *aq = malloc((size_t)K * 2);
  for (size_t f = 0; f < sizeof fm / sizeof fm[0]; f++) {
    int32_t dt = fm[f].dt;
    int64_t rb = tide_dtype_row_bytes(dt, K);
    char *w = malloc((size_t)(rb * rows));
    for (int64_t r = 0; r < rows; r++) {
      for (int64_t k = 0; k < K; k++) x[k] = 0.1f * rnd();
      tide_dtype_traits(dt)->from_float(x, w + r * rb, K);
    }
    for (int64_t k = 0; k < K; k++) x[k] = rnd();
    tide_quant_act_quantize(dt, x, aq, K);
    double t = dot_rate(tide_quant_dot(dt), NULL, w, rb, aq, rows, K);
    printf("{\"case\":\"dot_vs_llama_cpp\",\"dtype\":\"%s\",\"K\":%lld,\"tide_gbs\":%.1f", tide_dtype_traits(dt)->name,
           (long long)K, t);
    if (tide_quant_dot512(dt)) { /* the decode dot on the repacked activation (AVX-512 VNNI) */
      char *ap = malloc((size_t)tide_quant_act512_bytes(K));
      tide_quant_act512_pack(dt, aq, K, ap);
      printf(",\"tide512_gbs\":%.1f", dot_rate(tide_quant_dot512(dt), NULL, w, rb, ap, rows, K));
      free(ap);
    }
    for (int v = 0; v < 2; v++) {
      ggml_dot_fn g = h[v] ? (ggml_dot_fn)dlsym(h[v], fm[f].sym) : NULL;
      if (!g) continue;
      float a1, a2 = tide_quant_dot(dt)(w, aq, K);
      g((int)K, &a1, 0, w, 0, aq, 0, 1);
      double gr = dot_rate(NULL, g, w, rb, aq, rows, K);
      printf(",\"llama_%s_gbs\":%.1f,\"tide_over_%s\":%.2f,\"rel_diff_%s\":%.1e", variants[v], gr, variants[v],
             t / gr, variants[v], fabs(a1 - a2) / (fabs(a1) + 1e-30));
    }
    printf("}\n");
    fflush(stdout);
    free(w);
  }
  free(x);
  free(aq);
  for (int v = 0; v < 2; v++)
    if (h[v]) dlclose(h[v]);
  dlclose(base);
}

/* ---- QB_KERNELS=1: single-thread kernel throughput on data in L2, timed in thread CPU time ----
 * (CLOCK_THREAD_CPUTIME_ID: time the thread was descheduled on a shared machine is not counted, so
 * two kernels can be compared between runs; clock and cache sharing still move it a little):
 * the packed VNNI 4 x 4 tile (GOP/s, 2 per multiply-add) and the M = 1 dots (GB/s of weight rows). */
/* CPU seconds of the whole process (all threads): `cpu_gops` in the sweep = ops / (CPU seconds / threads),
 * the wall-clock rate the run would have had with its threads never descheduled (spinning counts). */
static double proc_cpu(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static double cpu_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void kernels_bench(void) {
  const int64_t K = 2048, rows = 32;
  int64_t kp = tide_quant_packed_kp(K), prb = kp + kp / 32 * 8;
  float *x = malloc((size_t)K * 4);
  if (tide_quant_has_vnni512()) {
    uint8_t *px = malloc((size_t)(prb * rows)), *py = malloc((size_t)(prb * 4));
    char *aq = malloc((size_t)K * 2), *wq = malloc((size_t)K * 2);
    for (int r = 0; r < 4 + rows; r++) {
      for (int64_t k = 0; k < K; k++) x[k] = rnd();
      tide_quant_act_quantize(TIDE_DTYPE_Q8_0, x, aq, K);
      tide_dtype_traits(TIDE_DTYPE_Q4_0)->from_float(x, wq, K);
      if (r < 4)
        tide_quant_pack_act(TIDE_DTYPE_Q4_0, aq, K, py + r * prb); /* the signed side */
      else
        tide_quant_pack_weight(TIDE_DTYPE_Q4_0, wq, K, px + (r - 4) * prb);
    }
    float out[16];
    double best = 1e30;
    for (int rep = 0; rep < 5; rep++) {
      double t0 = cpu_now();
      for (int it = 0; it < 50; it++)
        for (int64_t r = 0; r + 4 <= rows; r += 4) {
          const uint8_t *xr[4] = {px + r * prb, px + (r + 1) * prb, px + (r + 2) * prb, px + (r + 3) * prb};
          const uint8_t *yr[4] = {py, py + prb, py + 2 * prb, py + 3 * prb};
          tide_quant_vnni_tile44(xr, yr, kp, out, 4, 1, 4, 4);
        }
      double dt = cpu_now() - t0;
      if (dt < best) best = dt;
    }
    printf("{\"case\":\"kernel\",\"name\":\"vnni_tile44\",\"K\":%lld,\"gops\":%.1f}\n", (long long)K,
           50.0 * rows * 4 * 2 * kp / best * 1e-9);
    free(px);
    free(py);
    free(aq);
    free(wq);
  }
  const int32_t dts[] = {TIDE_DTYPE_Q8_0, TIDE_DTYPE_Q4_0, TIDE_DTYPE_Q4_K, TIDE_DTYPE_Q6_K};
  for (size_t d = 0; d < 4; d++) {
    int32_t dt = dts[d];
    int64_t rb = tide_dtype_row_bytes(dt, K);
    char *w = malloc((size_t)(rb * rows)), *aq = malloc((size_t)tide_quant_act_row_bytes(dt, K));
    char *ap = malloc((size_t)tide_quant_act512_bytes(K));
    for (int64_t r = 0; r < rows; r++) {
      for (int64_t k = 0; k < K; k++) x[k] = 0.1f * rnd();
      tide_dtype_traits(dt)->from_float(x, w + r * rb, K);
    }
    for (int64_t k = 0; k < K; k++) x[k] = rnd();
    tide_quant_act_quantize(dt, x, aq, K);
    for (int path = 0; path < 2; path++) {
      tide_quant_dot_fn f = path ? tide_quant_dot512(dt) : tide_quant_dot(dt);
      if (!f) continue;
      const char *a = aq;
      if (path) {
        tide_quant_act512_pack(dt, aq, K, ap);
        a = ap;
      }
      volatile float sink = 0;
      double best = 1e30;
      for (int rep = 0; rep < 5; rep++) {
        double t0 = cpu_now();
        for (int it = 0; it < 200; it++)
          for (int64_t r = 0; r < rows; r++) sink += f(w + r * rb, a, K);
        double dt2 = cpu_now() - t0;
        if (dt2 < best) best = dt2;
      }
      printf("{\"case\":\"kernel\",\"name\":\"dot%s_%s\",\"K\":%lld,\"w_gbs\":%.1f}\n", path ? "512" : "",
             tide_dtype_traits(dt)->name, (long long)K, 200.0 * rows * rb / best * 1e-9);
    }
    free(w);
    free(aq);
    free(ap);
  }
  free(x);
}

/* ---- prefill shapes: out (512, N) = a (512, 2048) @ w^T, N = 2048 and 5632 (llama-1b attention / MLP) ----
 * Per format: `gops` of tide_op_matmul (what the model runs), `int_gops` of the integer dots
 * (tide_quant_matmul_dots), `panel_gops` of dequantized panels + sgemm (tide_quant_matmul_panels) and
 * `vnni_gops` of the packed tiles (tide_quant_matmul_packed; 0 where they do not apply), each a median of
 * 5 runs, against `sgemm_gops`, f32 b through the same tide_op_matmul, same run. */
static double median5(double *t) {
  for (int i = 0; i < 5; i++)
    for (int j = i + 1; j < 5; j++)
      if (t[j] < t[i]) {
        double x = t[i];
        t[i] = t[j];
        t[j] = x;
      }
  return t[2];
}

static int prefill(tide_pool_t *pool) {
  tide_err_t err;
  const int32_t dts[] = {TIDE_DTYPE_F32, TIDE_DTYPE_BF16, TIDE_DTYPE_Q8_0, TIDE_DTYPE_Q4_0, TIDE_DTYPE_Q4_K,
                         TIDE_DTYPE_Q6_K};
  const int64_t Ns[] = {2048, 5632};
  const int64_t M = getenv("QB_M") ? atoi(getenv("QB_M")) : 512, K = 2048;
  for (size_t ni = 0; ni < 2; ni++) {
    int64_t N = Ns[ni];
    int64_t sa[2] = {M, K}, so[2] = {M, N};
    tide_tensor_t *a, *o;
    if (tide_tensor_new(TIDE_DTYPE_F32, 2, sa, &a, &err) || tide_tensor_new(TIDE_DTYPE_F32, 2, so, &o, &err)) return 1;
    for (int64_t i = 0; i < M * K; i++) ((float *)a->data)[i] = rnd();
    double peak = 0;
    for (size_t d = 0; d < sizeof dts / sizeof dts[0]; d++) {
      tide_tensor_t *w = weight(dts[d], N, K);
      if (!w) return 1;
      double g[5] = {0, 0, 0, 0, 0};
      for (int path = 0; path < 5; path++) {
        if (path > 0 && !tide_quant_has_dot(dts[d])) break;
        if (path == 3 && ((dts[d] != TIDE_DTYPE_Q8_0 && dts[d] != TIDE_DTYPE_Q4_0 && dts[d] != TIDE_DTYPE_Q4_K) ||
                          !tide_quant_has_vnni512()))
          break;
        if (path == 4 && dts[d] == TIDE_DTYPE_Q4_K) break;
        double t[5];
        int use_cpu = getenv("QB_CPU") != NULL; /* process CPU seconds / threads instead of wall time */
        for (int r = 0; r < 5; r++) {
          double t0 = use_cpu ? proc_cpu() / tide_pool_threads(pool) : now();
          int rc = path == 0   ? tide_op_matmul(pool, o, a, w, 1, &err)
                   : path == 1 ? tide_quant_matmul_dots(pool, o->data, a->data, K, w, M, N, K, &err)
                   : path == 2 ? tide_quant_matmul_panels(pool, o->data, a->data, K, w, M, N, K, &err)
                   : path == 3 ? tide_quant_matmul_packed(pool, o->data, a->data, K, w, M, N, K, 1, &err)
                               : tide_quant_matmul_il(pool, o->data, a->data, K, w, M, N, K, 1, &err);
          if (rc) {
            fprintf(stderr, "matmul: %s\n", err.msg);
            return 1;
          }
          t[r] = (use_cpu ? proc_cpu() / tide_pool_threads(pool) : now()) - t0;
        }
        g[path] = 2.0 * M * N * K / median5(t) * 1e-9;
      }
      if (dts[d] == TIDE_DTYPE_F32) peak = g[0];
      printf("{\"case\":\"prefill\",\"dtype\":\"%s\",\"M\":%lld,\"N\":%lld,\"K\":%lld,\"threads\":%d,"
             "\"gops\":%.1f,\"int_gops\":%.1f,\"panel_gops\":%.1f,\"vnni_gops\":%.1f,\"il_gops\":%.1f,"
             "\"sgemm_gops\":%.1f,\"of_sgemm\":%.2f}\n",
             tide_dtype_traits(dts[d])->name, (long long)M, (long long)N, (long long)K, tide_pool_threads(pool), g[0],
             g[1], g[2], g[3], g[4], peak, g[0] / peak);
      fflush(stdout);
      tide_tensor_release(w);
    }
    tide_tensor_release(a);
    tide_tensor_release(o);
  }
  tide_pool_free(pool);
  return 0;
}

int main(int argc, char **argv) {
  int nth = argc > 1 ? atoi(argv[1]) : 2;
  tide_err_t err;
  tide_pool_t *pool;
  if (tide_pool_new(nth, &pool, &err)) return 1;

  int64_t nbw = 64ll << 20;
  float *big = malloc((size_t)nbw * 4);
  for (int64_t i = 0; i < nbw; i++) big[i] = (float)(i & 7);
  bw_ctx_t bc = {.x = big, .n = nbw};
  double bw_t = 1e30;
  for (int r = 0; r < 5; r++) {
    double t0 = now();
    tide_pool_run(pool, bw_task, &bc);
    double dt = now() - t0;
    if (dt < bw_t) bw_t = dt;
  }
  free(big);
  double bw = nbw * 4.0 / bw_t * 1e-9;
  printf("{\"case\":\"read_bw\",\"threads\":%d,\"gbs\":%.1f}\n", nth, bw);
  fflush(stdout);

  if (getenv("QB_KERNELS")) {
    kernels_bench();
    tide_pool_free(pool);
    return 0;
  }
  if (getenv("QB_PREFILL")) return prefill(pool);
  dot_vs_llama();
  if (getenv("QB_DOTS_ONLY")) return 0;

  const int32_t dts[] = {TIDE_DTYPE_BF16, TIDE_DTYPE_Q8_0, TIDE_DTYPE_Q4_0, TIDE_DTYPE_Q4_K, TIDE_DTYPE_Q6_K};
  const int64_t Ms[] = {1, 4, 16, 32, 64, 128, 256};
  const int64_t K = 4096;
  for (size_t d = 0; d < sizeof dts / sizeof dts[0]; d++) {
    /* ~128 MB of weights whatever the format: 2x the L3 two cores may see (2 x 32 MiB on this EPYC) */
    int64_t N = (128ll << 20) / tide_dtype_row_bytes(dts[d], K) / 256 * 256;
    tide_tensor_t *w = weight(dts[d], N, K);
    if (!w) return 1;
    double wbytes = (double)tide_tensor_nbytes(w);
    for (size_t mi = 0; mi < sizeof Ms / sizeof Ms[0]; mi++) {
      int64_t M = Ms[mi];
      if ((getenv("QB_MIN_M") && M < atoi(getenv("QB_MIN_M"))) || (getenv("QB_MAX_M") && M > atoi(getenv("QB_MAX_M"))))
        continue;
      int64_t sa[2] = {M, K}, so[2] = {M, N};
      tide_tensor_t *a, *o;
      if (tide_tensor_new(TIDE_DTYPE_F32, 2, sa, &a, &err) || tide_tensor_new(TIDE_DTYPE_F32, 2, so, &o, &err)) return 1;
      for (int64_t i = 0; i < M * K; i++) ((float *)a->data)[i] = rnd();
      int reps = M >= 64 ? 2 : 4;
      double best = 1e30, best_cpu = 1e30;
      for (int r = 0; r < reps; r++) {
        double t0 = now(), c0 = proc_cpu();
        if (tide_op_matmul(pool, o, a, w, 1, &err)) {
          fprintf(stderr, "matmul: %s\n", err.msg);
          return 1;
        }
        double dt = now() - t0, dc = proc_cpu() - c0;
        if (dt < best) best = dt;
        if (dc < best_cpu) best_cpu = dc;
      }
      printf("{\"case\":\"quant_matmul\",\"dtype\":\"%s\",\"M\":%lld,\"N\":%lld,\"K\":%lld,\"threads\":%d,"
             "\"w_mb\":%.1f,\"ms\":%.2f,\"w_gbs\":%.1f,\"of_read_bw\":%.2f,\"gops\":%.1f,\"cpu_gops\":%.1f}\n",
             tide_dtype_traits(dts[d])->name, (long long)M, (long long)N, (long long)K, nth, wbytes * 1e-6,
             best * 1e3, wbytes / best * 1e-9, wbytes / best * 1e-9 / bw, 2.0 * M * N * K / best * 1e-9,
             2.0 * M * N * K / best_cpu * 1e-9 / nth);
      fflush(stdout);
      tide_tensor_release(a);
      tide_tensor_release(o);
    }
    tide_tensor_release(w);
  }
  tide_pool_free(pool);
  return 0;
}
