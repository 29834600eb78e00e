/* ops_bench.c: throughput of the hot ops, as ratios to limits measured in the same run.
 *
 * Build and run (after `make B=build-kernels`):
 *   cc -std=c11 -D_GNU_SOURCE -O2 -Isrc -Ikernels -I/usr/include/x86_64-linux-gnu/openblas-pthread \
 *      bench/ops_bench.c build-kernels/libtide.a -lopenblas -lm -lpthread -o build-kernels/ops_bench
 *   build-kernels/ops_bench [threads]
 *
 * One JSON object per line. Limits measured here: `peak` = single-thread
 * cblas_sgemm GFLOP/s at 1024^3; `bw` = read bandwidth (GB/s) summing a
 * 256 MiB f32 array with the pool. Timings are best of several runs. */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kern.h"
#include "ops.h"

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static tide_tensor_t *mk(int32_t dt, int64_t r, int64_t c) {
  tide_tensor_t *f, *t;
  tide_err_t err;
  int64_t s[2] = {r, c};
  if (tide_tensor_new(TIDE_DTYPE_F32, 2, s, &f, &err)) return NULL;
  float *d = f->data;
  uint64_t x = 88172645463325252ull;
  for (int64_t i = 0; i < r * c; i++) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    d[i] = (float)((x >> 40) * (1.0 / (1 << 24))) - 0.5f;
  }
  if (dt == TIDE_DTYPE_F32) return f;
  if (tide_tensor_copy(f, dt, &t, &err)) t = NULL;
  tide_tensor_release(f);
  return t;
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

#define BEST(reps, expr)                         \
  ({                                             \
    double best_ = 1e30;                         \
    for (int r_ = 0; r_ < (reps); r_++) {        \
      double t0_ = now();                        \
      expr;                                      \
      double dt_ = now() - t0_;                  \
      if (dt_ < best_) best_ = dt_;              \
    }                                            \
    best_;                                       \
  })

int main(int argc, char **argv) {
  int nth = argc > 1 ? atoi(argv[1]) : 2;
  tide_err_t err;
  tide_pool_t *pool;
  if (tide_pool_new(nth, &pool, &err)) return 1;

  /* limits */
  openblas_set_num_threads(1);
  tide_tensor_t *A = mk(TIDE_DTYPE_F32, 1024, 1024), *B = mk(TIDE_DTYPE_F32, 1024, 1024),
                *C = mk(TIDE_DTYPE_F32, 1024, 1024);
  double t = BEST(3, cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, 1024, 1024, 1024, 1.0f, A->data, 1024,
                                 B->data, 1024, 0.0f, C->data, 1024));
  double peak = 2.0 * 1024 * 1024 * 1024 / t * 1e-9;
  printf("{\"case\":\"sgemm_peak_1thread\",\"gflops\":%.1f}\n", peak);
  int64_t nbw = 64ll << 20;
  float *big = malloc((size_t)nbw * 4);
  for (int64_t i = 0; i < nbw; i++) big[i] = (float)(i & 7);
  bw_ctx_t bc = {.x = big, .n = nbw};
  t = BEST(5, tide_pool_run(pool, bw_task, &bc));
  double bw = nbw * 4.0 / t * 1e-9;
  printf("{\"case\":\"read_bw\",\"threads\":%d,\"gbs\":%.1f}\n", nth, bw);
  free(big);

  /* OpenBLAS threading: pool split (OpenBLAS at 1 thread) vs one sgemm with OpenBLAS threads */
  {
    int64_t M = 512, N = 2048, K = 2048;
    tide_tensor_t *a = mk(TIDE_DTYPE_F32, M, K), *b = mk(TIDE_DTYPE_F32, N, K), *o = mk(TIDE_DTYPE_F32, M, N);
    double fl = 2.0 * M * N * K;
    double tp = BEST(3, tide_op_matmul(pool, o, a, b, 1, &err));
    openblas_set_num_threads(nth);
    double to = BEST(3, cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)M, (int)N, (int)K, 1.0f, a->data,
                                    (int)K, b->data, (int)K, 0.0f, o->data, (int)N));
    openblas_set_num_threads(1);
    printf("{\"case\":\"matmul_threads\",\"M\":%lld,\"N\":%lld,\"K\":%lld,\"threads\":%d,\"pool_split_gflops\":%.1f,"
           "\"openblas_threads_gflops\":%.1f,\"split_over_openblas\":%.2f}\n",
           (long long)M, (long long)N, (long long)K, nth, fl / tp * 1e-9, fl / to * 1e-9, to / tp);
    tide_tensor_release(a);
    tide_tensor_release(b);
    tide_tensor_release(o);
  }

  /* matmul per weight dtype: decode (M=1, bandwidth-bound) and prefill (M=128, compute-bound) */
  const int32_t dts[4] = {TIDE_DTYPE_F32, TIDE_DTYPE_BF16, TIDE_DTYPE_F16, TIDE_DTYPE_F8_E4M3};
  const char *names[4] = {"f32", "bf16", "f16", "f8_e4m3"};
  for (int d = 0; d < 4; d++) {
    int64_t N = 4096, K = 4096;
    tide_tensor_t *w = mk(dts[d], N, K), *sc = NULL;
    if (dts[d] == TIDE_DTYPE_F8_E4M3) {
      sc = mk(TIDE_DTYPE_F32, N / 128, K / 128);
      tide_tensor_set_scale(w, sc, 128, 128, &err);
    }
    double wbytes = (double)N * K * tide_dtype_traits(dts[d])->block_bytes;
    const int64_t Ms[3] = {1, 8, 128};
    for (int mi = 0; mi < 3; mi++) {
      int64_t M = Ms[mi];
      tide_tensor_t *a = mk(TIDE_DTYPE_F32, M, K), *o = mk(TIDE_DTYPE_F32, M, N);
      double tm = BEST(5, tide_op_matmul(pool, o, a, w, 1, &err));
      double gf = 2.0 * M * N * K / tm * 1e-9;
      if (M < 128)
        printf("{\"case\":\"matmul_decode\",\"b\":\"%s\",\"M\":%lld,\"N\":%lld,\"K\":%lld,\"threads\":%d,"
               "\"b_gbs\":%.1f,\"of_read_bw\":%.2f,\"gflops\":%.1f}\n",
               names[d], (long long)M, (long long)N, (long long)K, nth, wbytes / tm * 1e-9, wbytes / tm * 1e-9 / bw, gf);
      else
        printf("{\"case\":\"matmul_prefill\",\"b\":\"%s\",\"M\":%lld,\"N\":%lld,\"K\":%lld,\"threads\":%d,"
               "\"gflops\":%.1f,\"of_threads_x_peak\":%.2f}\n",
               names[d], (long long)M, (long long)N, (long long)K, nth, gf, gf / (peak * nth));
      tide_tensor_release(a);
      tide_tensor_release(o);
    }
    tide_tensor_release(w);
    if (sc) tide_tensor_release(sc);
  }

  /* attention decode: 8 sequences x 1 token at position 1023, 32 heads, 8 kv heads, d 128, bf16 cache */
  {
    int32_t n_seq = 8, bs = 16, mb = 64, nh = 32, nkv = 8, d = 128, pos = 1023;
    int64_t sc[4] = {n_seq * mb, bs, nkv, d}, sq[3] = {n_seq, nh, d};
    tide_tensor_t *kc, *vc, *q, *o;
    tide_tensor_new(TIDE_DTYPE_BF16, 4, sc, &kc, &err);
    tide_tensor_new(TIDE_DTYPE_BF16, 4, sc, &vc, &err);
    tide_tensor_new(TIDE_DTYPE_F32, 3, sq, &q, &err);
    tide_tensor_new(TIDE_DTYPE_F32, 3, sq, &o, &err);
    int32_t *table = malloc(sizeof(int32_t) * n_seq * mb), seq[8], tp[8];
    for (int i = 0; i < n_seq * mb; i++) table[i] = (i * 37) % (n_seq * mb);
    for (int s = 0; s < n_seq; s++) {
      seq[s] = s;
      tp[s] = pos;
    }
    tide_batch_t b = {.n_tok = n_seq, .n_seq = n_seq, .max_blocks = mb, .block_size = bs, .tok_seq = seq,
                      .tok_pos = tp, .block_table = table};
    double ta = BEST(5, tide_op_attention(pool, o, q, kc, vc, &b, 0.088f, &err));
    double bytes = 2.0 * n_seq * (pos + 1) * nkv * d * 2 * (nh / nkv); /* K and V read once per q head */
    printf("{\"case\":\"attention_decode\",\"threads\":%d,\"kv_gbs_per_head\":%.1f,\"of_read_bw\":%.2f}\n", nth,
           bytes / ta * 1e-9, bytes / ta * 1e-9 / bw);
    free(table);
    tide_tensor_release(kc);
    tide_tensor_release(vc);
    tide_tensor_release(q);
    tide_tensor_release(o);
  }

  /* rmsnorm and softmax over (512, 4096) */
  {
    tide_tensor_t *x = mk(TIDE_DTYPE_F32, 512, 4096), *w = mk(TIDE_DTYPE_F32, 1, 4096), *o = mk(TIDE_DTYPE_F32, 512, 4096);
    tide_tensor_t *w1;
    int64_t s1[1] = {4096};
    tide_tensor_reshape(w, 1, s1, &w1, &err);
    double bytes = 2.0 * 512 * 4096 * 4;
    double tr = BEST(5, tide_op_rmsnorm(pool, o, x, w1, 1e-6f, &err));
    double ts = BEST(5, tide_op_softmax(pool, o, x, 1.0f, &err));
    double ti = BEST(5, tide_ref_softmax(o, x, 1.0f, &err));
    printf("{\"case\":\"rmsnorm\",\"threads\":%d,\"gbs\":%.1f,\"of_read_bw\":%.2f}\n", nth, bytes / tr * 1e-9,
           bytes / tr * 1e-9 / bw);
    printf("{\"case\":\"softmax\",\"threads\":%d,\"gbs\":%.1f,\"of_read_bw\":%.2f,\"speedup_over_ref\":%.1f}\n", nth,
           bytes / ts * 1e-9, bytes / ts * 1e-9 / bw, ti / ts);
    tide_tensor_release(x);
    tide_tensor_release(w);
    tide_tensor_release(w1);
    tide_tensor_release(o);
  }
  tide_tensor_release(A);
  tide_tensor_release(B);
  tide_tensor_release(C);
  tide_pool_free(pool);
  return 0;
}
