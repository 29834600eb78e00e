/* test_comm.c: the local (threads) backend of the communicator. Each test
 * runs a rank function on 1..8 threads and checks the results against values
 * every rank can compute on its own. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm.h"
#include "dtype.h"
#include "testutil.h"

#define MAX_RANKS 8

/* Shared test state: per-rank failure messages (a cmocka assert may not run
 * off the main thread, so rank functions record and the main thread checks). */
typedef struct {
  uint64_t seed;
  char fail[MAX_RANKS][1024];
  int64_t extra[MAX_RANKS];
} tstate_t;

#define RCHECK(st, rank, cond, ...)                                              \
  do {                                                                           \
    if (!(cond)) {                                                               \
      if (!(st)->fail[rank][0]) snprintf((st)->fail[rank], 1024, __VA_ARGS__);    \
      return TIDE_EINVAL;                                                        \
    }                                                                            \
  } while (0)

static void run_ranks(int32_t n, tide_comm_rank_fn fn, tstate_t *st) {
  tide_comm_local_t *ctx = NULL;
  tide_err_t err = {0};
  assert_int_equal(tide_comm_local_new(n, &ctx, &err), 0);
  int rc = tide_comm_local_run(ctx, fn, st, &err);
  for (int32_t r = 0; r < n; r++)
    if (st->fail[r][0]) fail_msg("n=%d rank %d: %s", n, r, st->fail[r]);
  if (rc) fail_msg("n=%d: %s", n, err.msg);
  tide_comm_local_free(ctx);
}

/* Deterministic value of element i contributed by rank r. */
static int64_t val(uint64_t seed, int32_t r, int64_t i) {
  uint64_t x = seed * 0x9E3779B97F4A7C15ULL + (uint64_t)r * 1000003ULL + (uint64_t)i * 7919ULL;
  x ^= x >> 29;
  x *= 0xBF58476D1CE4E5B9ULL;
  x ^= x >> 32;
  return (int64_t)(x % 2001) - 1000;
}

/* ---- allreduce ----------------------------------------------------------------- */

static int rank_allreduce(tide_comm_t *c, void *arg) {
  tstate_t *st = arg;
  int32_t me = tide_comm_rank(c), n = tide_comm_size(c);
  tide_err_t err = {0};
  tu_rng_t rng = {st->seed + 1}; /* same on every rank: same counts */
  for (int iter = 0; iter < 6; iter++) {
    int64_t count = tu_randint(&rng, 0, 300);
    int32_t op = (int32_t)(iter % 3);
    float *f = malloc((size_t)count * 4 + 4), *fo = malloc((size_t)count * 4 + 4);
    int32_t *i32 = malloc((size_t)count * 4 + 4);
    int64_t *i64 = malloc((size_t)count * 8 + 8);
    for (int64_t i = 0; i < count; i++) {
      f[i] = (float)val(st->seed + (uint64_t)iter, me, i) * 0.125f;
      i32[i] = (int32_t)val(st->seed + (uint64_t)iter, me, i);
      i64[i] = val(st->seed + (uint64_t)iter, me, i) * 4000000000LL;
    }
    int rc = tide_comm_allreduce(c, f, fo, count, TIDE_DTYPE_F32, op, &err);         /* out of place */
    rc = rc ? rc : tide_comm_allreduce(c, i32, i32, count, TIDE_DTYPE_I32, op, &err); /* in place */
    rc = rc ? rc : tide_comm_allreduce(c, i64, i64, count, TIDE_DTYPE_I64, op, &err);
    RCHECK(st, me, rc == 0, "allreduce: %s", err.msg);
    for (int64_t i = 0; i < count; i++) {
      int64_t e = val(st->seed + (uint64_t)iter, 0, i);
      for (int32_t r = 1; r < n; r++) {
        int64_t v = val(st->seed + (uint64_t)iter, r, i);
        e = op == TIDE_COMM_SUM ? e + v : op == TIDE_COMM_MAX ? (v > e ? v : e) : (v < e ? v : e);
      }
      RCHECK(st, me, fo[i] == (float)e * 0.125f, "f32 op %d [%lld]: %g vs %g", op, (long long)i, fo[i],
             (float)e * 0.125f);
      RCHECK(st, me, i32[i] == (int32_t)e, "i32 op %d [%lld]: %d vs %lld", op, (long long)i, i32[i], (long long)e);
      RCHECK(st, me, i64[i] == e * 4000000000LL, "i64 op %d [%lld]", op, (long long)i);
    }
    free(f);
    free(fo);
    free(i32);
    free(i64);
  }
  /* f32 sums with rounding: every rank gets the same bits */
  float x[64], all[64 * MAX_RANKS];
  for (int i = 0; i < 64; i++) x[i] = 1.0f / (float)(1 + me + i * 3) + 1e7f * (float)(me % 2);
  int rc = tide_comm_allreduce(c, x, x, 64, TIDE_DTYPE_F32, TIDE_COMM_SUM, &err);
  rc = rc ? rc : tide_comm_allgather(c, x, all, sizeof x, &err);
  RCHECK(st, me, rc == 0, "allreduce/allgather: %s", err.msg);
  for (int32_t r = 0; r < n; r++) RCHECK(st, me, memcmp(all + r * 64, x, sizeof x) == 0, "rank %d differs", r);
  return 0;
}

static void test_comm_allreduce(void **state) {
  (void)state;
  for (int32_t n = 1; n <= MAX_RANKS; n++) {
    tstate_t st = {.seed = 17 + (uint64_t)n};
    run_ranks(n, rank_allreduce, &st);
  }
}

/* ---- allgather ------------------------------------------------------------------- */

static int rank_allgather(tide_comm_t *c, void *arg) {
  tstate_t *st = arg;
  int32_t me = tide_comm_rank(c), n = tide_comm_size(c);
  tide_err_t err = {0};
  tu_rng_t rng = {st->seed};
  for (int iter = 0; iter < 8; iter++) {
    int64_t nb = iter == 0 ? 0 : tu_randint(&rng, 0, 200);
    unsigned char *send = malloc((size_t)nb + 1), *recv = malloc((size_t)nb * (size_t)n + 1);
    for (int64_t i = 0; i < nb; i++) send[i] = (unsigned char)val(st->seed, me, i + iter);
    int in_place = iter % 2;
    if (in_place) memcpy(recv + (size_t)me * (size_t)nb, send, (size_t)nb);
    int rc = tide_comm_allgather(c, in_place ? recv + (size_t)me * (size_t)nb : send, recv, nb, &err);
    RCHECK(st, me, rc == 0, "allgather: %s", err.msg);
    for (int32_t r = 0; r < n; r++)
      for (int64_t i = 0; i < nb; i++)
        RCHECK(st, me, recv[r * nb + i] == (unsigned char)val(st->seed, r, i + iter), "block %d byte %lld", r,
               (long long)i);
    free(send);
    free(recv);
  }
  return 0;
}

static void test_comm_allgather(void **state) {
  (void)state;
  for (int32_t n = 1; n <= MAX_RANKS; n++) {
    tstate_t st = {.seed = 5 + (uint64_t)n};
    run_ranks(n, rank_allgather, &st);
  }
}

/* ---- alltoallv ---------------------------------------------------------------------- */

/* Bytes rank s sends to rank d in iteration it (zero often). */
static int64_t a2a_count(uint64_t seed, int it, int32_t s, int32_t d) {
  int64_t v = val(seed + (uint64_t)it, s, d * 31 + 7);
  return (v % 3 == 0) ? 0 : (v < 0 ? -v : v) % 97;
}

static unsigned char a2a_byte(int32_t s, int32_t d, int64_t i) { return (unsigned char)(s * 31 + d * 7 + i); }

static int a2a_round(tide_comm_t *c, tstate_t *st, int it, int nonblocking) {
  int32_t me = tide_comm_rank(c), n = tide_comm_size(c);
  tide_err_t err = {0};
  int64_t sc[MAX_RANKS], sd[MAX_RANKS], rc_[MAX_RANKS], rd[MAX_RANKS], st_ = 0, rt = 0;
  for (int32_t p = 0; p < n; p++) {
    sc[p] = a2a_count(st->seed, it, me, p);
    rc_[p] = a2a_count(st->seed, it, p, me);
  }
  /* send blocks in reverse peer order with gaps, receive in order */
  for (int32_t p = n - 1; p >= 0; p--) {
    sd[p] = st_ + 3;
    st_ += sc[p] + 3;
  }
  for (int32_t p = 0; p < n; p++) {
    rd[p] = rt;
    rt += rc_[p];
  }
  unsigned char *sb = st_ ? malloc((size_t)st_) : NULL, *rb = rt ? malloc((size_t)rt) : NULL;
  for (int32_t p = 0; p < n; p++)
    for (int64_t i = 0; i < sc[p]; i++) sb[sd[p] + i] = a2a_byte(me, p, i);
  int rc;
  if (nonblocking) {
    tide_comm_req_t *req = NULL;
    rc = tide_comm_ialltoallv(c, sb, sc, sd, rb, rc_, rd, &req, &err);
    if (rc == 0) {
      int32_t done = 0;
      for (int k = 0; k < 3 && !done && rc == 0; k++) rc = tide_comm_test(req, &done, &err);
      if (rc == 0 && !done) rc = tide_comm_wait(req, &err);
    }
  } else {
    rc = tide_comm_alltoallv(c, sb, sc, sd, rb, rc_, rd, &err);
  }
  RCHECK(st, me, rc == 0, "alltoallv: %s", err.msg);
  for (int32_t p = 0; p < n; p++)
    for (int64_t i = 0; i < rc_[p]; i++)
      RCHECK(st, me, rb[rd[p] + i] == a2a_byte(p, me, i), "from %d byte %lld", p, (long long)i);
  for (int32_t p = 0; p < n; p++) st->extra[me] += sc[p]; /* payload, without the gaps */
  free(sb);
  free(rb);
  return 0;
}

static int rank_alltoallv(tide_comm_t *c, void *arg) {
  tstate_t *st = arg;
  for (int it = 0; it < 10; it++)
    if (a2a_round(c, st, it, it % 2)) return TIDE_EINVAL;
  return 0;
}

static void test_comm_alltoallv(void **state) {
  (void)state;
  for (int32_t n = 1; n <= MAX_RANKS; n++) {
    tstate_t st = {.seed = 99 + (uint64_t)n};
    run_ranks(n, rank_alltoallv, &st);
  }
}

/* ---- send / recv ---------------------------------------------------------------------- */

static int rank_sendrecv(tide_comm_t *c, void *arg) {
  tstate_t *st = arg;
  int32_t me = tide_comm_rank(c), n = tide_comm_size(c);
  tide_err_t err = {0};
  int32_t right = (me + 1) % n, left = (me + n - 1) % n;
  /* three messages on two tags to the right; receive them in another order */
  int64_t a[3] = {me, me * 10, me * 100};
  int rc = tide_comm_send(c, &a[0], 8, right, 1, &err);
  rc = rc ? rc : tide_comm_send(c, &a[1], 8, right, 2, &err);
  rc = rc ? rc : tide_comm_send(c, &a[2], 8, right, 1, &err);
  int64_t b[3] = {-1, -1, -1};
  rc = rc ? rc : tide_comm_recv(c, &b[1], 8, left, 2, &err);
  rc = rc ? rc : tide_comm_recv(c, &b[0], 8, left, 1, &err);
  rc = rc ? rc : tide_comm_recv(c, &b[2], 8, left, 1, &err);
  RCHECK(st, me, rc == 0, "send/recv: %s", err.msg);
  RCHECK(st, me, b[0] == left && b[1] == left * 10 && b[2] == left * 100, "ring values %lld %lld %lld",
         (long long)b[0], (long long)b[1], (long long)b[2]);
  /* non-blocking: post the receive first, then send, empty message too */
  tide_comm_req_t *rq = NULL, *sq = NULL;
  int64_t x = -1, y = me + 1000;
  rc = tide_comm_irecv(c, &x, 8, left, 7, &rq, &err);
  rc = rc ? rc : tide_comm_isend(c, &y, 8, right, 7, &sq, &err);
  rc = rc ? rc : tide_comm_wait(sq, &err);
  rc = rc ? rc : tide_comm_wait(rq, &err);
  rc = rc ? rc : tide_comm_send(c, NULL, 0, right, 8, &err);
  rc = rc ? rc : tide_comm_recv(c, NULL, 0, left, 8, &err);
  RCHECK(st, me, rc == 0, "isend/irecv: %s", err.msg);
  RCHECK(st, me, x == left + 1000, "irecv value %lld", (long long)x);
  /* bcast from the last rank */
  int64_t v[4] = {me, me, me, me};
  rc = tide_comm_bcast(c, v, sizeof v, n - 1, &err);
  RCHECK(st, me, rc == 0, "bcast: %s", err.msg);
  for (int i = 0; i < 4; i++) RCHECK(st, me, v[i] == n - 1, "bcast value %lld", (long long)v[i]);
  return 0;
}

static void test_comm_send_recv(void **state) {
  (void)state;
  for (int32_t n = 1; n <= MAX_RANKS; n++) {
    tstate_t st = {.seed = 1};
    run_ranks(n, rank_sendrecv, &st);
  }
}

/* ---- split -------------------------------------------------------------------------------- */

static int rank_split(tide_comm_t *c, void *arg) {
  tstate_t *st = arg;
  int32_t me = tide_comm_rank(c), n = tide_comm_size(c);
  tide_err_t err = {0};
  /* colors: even/odd ranks; key reverses the order; rank 0 of an n>=3 group opts out */
  int32_t color = (n >= 3 && me == 0) ? TIDE_COMM_UNDEFINED : me % 2;
  tide_comm_t *sub = NULL;
  int rc = tide_comm_split(c, color, -me, &sub, &err);
  RCHECK(st, me, rc == 0, "split: %s", err.msg);
  if (color == TIDE_COMM_UNDEFINED) {
    RCHECK(st, me, sub == NULL, "undefined color gave a communicator");
  } else {
    int32_t members[MAX_RANKS], cnt = 0;
    for (int32_t r = n - 1; r >= 0; r--) /* descending rank = ascending key */
      if (r % 2 == color && !(n >= 3 && r == 0)) members[cnt++] = r;
    RCHECK(st, me, sub && tide_comm_size(sub) == cnt, "sub size %d, expected %d", tide_comm_size(sub), cnt);
    int32_t myidx = -1;
    for (int32_t i = 0; i < cnt; i++)
      if (members[i] == me) myidx = i;
    RCHECK(st, me, tide_comm_rank(sub) == myidx, "sub rank %d, expected %d", tide_comm_rank(sub), myidx);
    /* the sub-communicator works and sees only its members */
    int64_t x = me, sum = 0;
    rc = tide_comm_allreduce(sub, &x, &x, 1, TIDE_DTYPE_I64, TIDE_COMM_SUM, &err);
    RCHECK(st, me, rc == 0, "sub allreduce: %s", err.msg);
    for (int32_t i = 0; i < cnt; i++) sum += members[i];
    RCHECK(st, me, x == sum, "sub sum %lld, expected %lld", (long long)x, (long long)sum);
    /* nested split of the sub-communicator: singletons */
    tide_comm_t *one = NULL;
    rc = tide_comm_split(sub, tide_comm_rank(sub), 0, &one, &err);
    RCHECK(st, me, rc == 0 && one && tide_comm_size(one) == 1 && tide_comm_rank(one) == 0, "nested split: %s",
           err.msg);
    rc = tide_comm_barrier(one, &err);
    RCHECK(st, me, rc == 0, "singleton barrier: %s", err.msg);
    tide_comm_free(one);
    tide_comm_free(sub);
  }
  /* the parent is still usable after splitting */
  rc = tide_comm_barrier(c, &err);
  RCHECK(st, me, rc == 0, "barrier: %s", err.msg);
  return 0;
}

static void test_comm_split(void **state) {
  (void)state;
  for (int32_t n = 1; n <= MAX_RANKS; n++) {
    tstate_t st = {.seed = 3};
    run_ranks(n, rank_split, &st);
  }
}

/* ---- non-blocking, several in flight ------------------------------------------------------- */

static int rank_nonblocking(tide_comm_t *c, void *arg) {
  tstate_t *st = arg;
  int32_t me = tide_comm_rank(c), n = tide_comm_size(c);
  tide_err_t err = {0};
  enum { K = 5, CNT = 100 };
  float buf[K][CNT];
  tide_comm_req_t *req[K];
  for (int k = 0; k < K; k++) {
    for (int i = 0; i < CNT; i++) buf[k][i] = (float)(me + k * i);
    int rc = tide_comm_iallreduce(c, buf[k], buf[k], CNT, TIDE_DTYPE_F32, TIDE_COMM_SUM, &req[k], &err);
    RCHECK(st, me, rc == 0, "iallreduce %d: %s", k, err.msg);
  }
  /* complete out of order: the last with test, then the rest with wait */
  int32_t done = 0;
  while (!done) {
    int rc = tide_comm_test(req[K - 1], &done, &err);
    RCHECK(st, me, rc == 0, "test: %s", err.msg);
  }
  for (int k = K - 2; k >= 0; k--) {
    int rc = tide_comm_wait(req[k], &err);
    RCHECK(st, me, rc == 0, "wait %d: %s", k, err.msg);
  }
  for (int k = 0; k < K; k++)
    for (int i = 0; i < CNT; i++) {
      float e = (float)(n * (n - 1) / 2 + n * k * i);
      RCHECK(st, me, buf[k][i] == e, "iallreduce %d [%d]: %g vs %g", k, i, buf[k][i], e);
    }
  /* interleave a blocking collective with a pending one */
  tide_comm_req_t *q = NULL;
  int64_t a = me, b = 1;
  int rc = tide_comm_iallreduce(c, &a, &a, 1, TIDE_DTYPE_I64, TIDE_COMM_MAX, &q, &err);
  rc = rc ? rc : tide_comm_allreduce(c, &b, &b, 1, TIDE_DTYPE_I64, TIDE_COMM_SUM, &err);
  rc = rc ? rc : tide_comm_wait(q, &err);
  RCHECK(st, me, rc == 0, "mixed: %s", err.msg);
  RCHECK(st, me, a == n - 1 && b == n, "mixed values %lld %lld", (long long)a, (long long)b);
  return 0;
}

/* A non-blocking collective left pending across many blocking ones, and many
 * pending at once: any number may be in flight. */
static int rank_long_pending(tide_comm_t *c, void *arg) {
  tstate_t *st = arg;
  int32_t me = tide_comm_rank(c), n = tide_comm_size(c);
  tide_err_t err = {0};
  int64_t a = me + 1;
  tide_comm_req_t *q = NULL;
  int rc = tide_comm_iallreduce(c, &a, &a, 1, TIDE_DTYPE_I64, TIDE_COMM_SUM, &q, &err);
  for (int k = 0; k < 40 && rc == 0; k++) rc = tide_comm_barrier(c, &err);
  rc = rc ? rc : tide_comm_wait(q, &err);
  RCHECK(st, me, rc == 0 && a == (int64_t)n * (n + 1) / 2, "long pending: %s", err.msg);
  enum { K = 50 };
  int32_t v[K];
  tide_comm_req_t *reqs[K];
  for (int k = 0; k < K && rc == 0; k++) {
    v[k] = k * me;
    rc = tide_comm_iallreduce(c, &v[k], &v[k], 1, TIDE_DTYPE_I32, TIDE_COMM_MAX, &reqs[k], &err);
  }
  for (int k = K - 1; k >= 0 && rc == 0; k--) rc = tide_comm_wait(reqs[k], &err);
  RCHECK(st, me, rc == 0, "many pending: %s", err.msg);
  for (int k = 0; k < K; k++) RCHECK(st, me, v[k] == k * (n - 1), "many pending [%d] = %d", k, v[k]);
  return 0;
}

static void test_comm_nonblocking(void **state) {
  (void)state;
  for (int32_t n = 1; n <= MAX_RANKS; n++) {
    tstate_t st = {.seed = 3};
    run_ranks(n, rank_nonblocking, &st);
    tstate_t st2 = {.seed = 4};
    run_ranks(n, rank_long_pending, &st2);
  }
}

/* ---- stats ---------------------------------------------------------------------------------- */

static int rank_stats(tide_comm_t *c, void *arg) {
  tstate_t *st = arg;
  int32_t me = tide_comm_rank(c);
  tide_comm_stats_reset(c);
  st->extra[me] = 0;
  for (int it = 0; it < 4; it++)
    if (a2a_round(c, st, it, it % 2)) return TIDE_EINVAL;
  tide_err_t err = {0};
  float x[10] = {0};
  for (int i = 0; i < 3; i++)
    if (tide_comm_allreduce(c, x, x, 10, TIDE_DTYPE_F32, TIDE_COMM_SUM, &err)) return TIDE_EINVAL;
  if (tide_comm_barrier(c, &err)) return TIDE_EINVAL;
  tide_comm_stats_t s;
  tide_comm_stats(c, &s);
  RCHECK(st, me, s.calls[TIDE_COMM_OP_ALLTOALLV] == 4, "alltoallv calls %lld", (long long)s.calls[3]);
  RCHECK(st, me, s.bytes[TIDE_COMM_OP_ALLTOALLV] == st->extra[me], "alltoallv bytes %lld, expected %lld",
         (long long)s.bytes[3], (long long)st->extra[me]);
  RCHECK(st, me, s.calls[TIDE_COMM_OP_ALLREDUCE] == 3 && s.bytes[TIDE_COMM_OP_ALLREDUCE] == 120,
         "allreduce calls %lld bytes %lld", (long long)s.calls[1], (long long)s.bytes[1]);
  RCHECK(st, me, s.calls[TIDE_COMM_OP_BARRIER] == 1 && s.calls[TIDE_COMM_OP_SEND] == 0, "barrier/send calls");
  for (int k = 0; k < TIDE_COMM_OP_COUNT; k++)
    RCHECK(st, me, s.ns[k] >= 0 && s.span_ns[k] >= s.ns[k] - 1000 && (s.calls[k] > 0 || s.ns[k] == 0),
           "times of %s", tide_comm_op_name(k));
  RCHECK(st, me, s.ns[TIDE_COMM_OP_ALLREDUCE] > 0, "allreduce time counted");
  for (int k = 0; k < TIDE_COMM_OP_COUNT; k++) /* one thread's CPU time cannot exceed its wall time */
    RCHECK(st, me, s.cpu_ns[k] >= 0 && s.cpu_ns[k] <= s.ns[k] + 1000000, "cpu time of %s: %lld of %lld ns",
           tide_comm_op_name(k), (long long)s.cpu_ns[k], (long long)s.ns[k]);
  return 0;
}

/* A rank waiting for a late peer sleeps (condition variable) instead of
 * spinning: its CPU time inside the wait stays a small part of the wait. */
static int rank_sleepy_wait(tide_comm_t *c, void *arg) {
  tstate_t *st = arg;
  int32_t me = tide_comm_rank(c);
  tide_err_t err = {0};
  tide_comm_stats_reset(c);
  if (me == 1) {
    struct timespec ts = {0, 200000000}; /* the late rank: 200 ms */
    nanosleep(&ts, NULL);
  }
  if (tide_comm_barrier(c, &err)) return TIDE_EINVAL;
  tide_comm_stats_t s;
  tide_comm_stats(c, &s);
  if (me == 0) {
    int64_t ns = s.ns[TIDE_COMM_OP_BARRIER], cpu = s.cpu_ns[TIDE_COMM_OP_BARRIER];
    RCHECK(st, me, ns >= 100000000, "the barrier waited %lld ns for the late rank", (long long)ns);
    RCHECK(st, me, cpu * 4 < ns, "waiting used %lld ns of CPU in %lld ns: spinning?", (long long)cpu, (long long)ns);
  }
  RCHECK(st, me, tide_comm_thread_cpu_ns() > 0, "thread CPU clock");
  return 0;
}

static void test_comm_stats(void **state) {
  (void)state;
  for (int32_t n = 1; n <= 4; n++) {
    tstate_t st = {.seed = 11};
    run_ranks(n, rank_stats, &st);
  }
  tstate_t st2 = {.seed = 12};
  run_ranks(2, rank_sleepy_wait, &st2);
  assert_string_equal(tide_comm_op_name(TIDE_COMM_OP_ALLTOALLV), "alltoallv");
  assert_string_equal(tide_comm_op_name(99), "?");
}

/* ---- the emulated link: data arrives latency + bytes / bandwidth after the last post ------------- */

static int64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int rank_link(tide_comm_t *c, void *arg) {
  tstate_t *st = arg;
  int32_t me = tide_comm_rank(c), n = tide_comm_size(c);
  tide_err_t err = {0};
  int64_t cnt[MAX_RANKS], dsp[MAX_RANKS];
  unsigned char sb[MAX_RANKS * 1000], rb[MAX_RANKS * 1000];
  for (int32_t i = 0; i < n; i++) {
    cnt[i] = 1000;
    dsp[i] = i * 1000;
    memset(sb + i * 1000, (int)(me * 16 + i), 1000);
  }
  if (tide_comm_barrier(c, &err)) return TIDE_EINVAL;
  tide_comm_stats_reset(c);
  int64_t t0 = now_ns();
  tide_comm_req_t *q = NULL;
  if (tide_comm_ialltoallv(c, sb, cnt, dsp, rb, cnt, dsp, &q, &err)) return TIDE_EINVAL;
  int32_t done = 0;
  if (tide_comm_test(q, &done, &err)) return TIDE_EINVAL;
  RCHECK(st, me, !done || now_ns() - t0 >= 300000000, "the data came before the link delivered it");
  if (!done && tide_comm_wait(q, &err)) return TIDE_EINVAL;
  int64_t dt = now_ns() - t0;
  RCHECK(st, me, dt >= 300000000, "the link's 300 ms latency took %lld ns", (long long)dt);
  for (int32_t i = 0; i < n; i++)
    RCHECK(st, me, rb[i * 1000] == (unsigned char)(i * 16 + me) && rb[i * 1000 + 999] == (unsigned char)(i * 16 + me),
           "bytes from rank %d", i);
  tide_comm_stats_t s;
  tide_comm_stats(c, &s);
  RCHECK(st, me, s.span_ns[TIDE_COMM_OP_ALLTOALLV] >= 300000000 && s.cpu_ns[TIDE_COMM_OP_ALLTOALLV] * 4 < dt,
         "span %lld ns, cpu %lld ns", (long long)s.span_ns[3], (long long)s.cpu_ns[3]);
  return 0;
}

static void test_comm_emulated_link(void **state) {
  (void)state;
  tide_comm_local_t *ctx = NULL;
  tide_err_t err = {0};
  assert_int_equal(tide_comm_local_new(3, &ctx, &err), 0);
  assert_int_equal(tide_comm_local_set_link(ctx, -1, 0, &err), TIDE_EINVAL);
  assert_int_equal(tide_comm_local_set_link(ctx, 300000000, 1.0, &err), 0); /* 300 ms + 1 GB/s */
  tstate_t st = {.seed = 21};
  int rc = tide_comm_local_run(ctx, rank_link, &st, &err);
  for (int32_t r = 0; r < 3; r++)
    if (st.fail[r][0]) fail_msg("rank %d: %s", r, st.fail[r]);
  assert_int_equal(rc, 0);
  tide_comm_local_free(ctx);
}

/* ---- faults: a bad call or a missing rank aborts the group, naming the rank ------------------- */

static int rank_badcall(tide_comm_t *c, void *arg) {
  tstate_t *st = arg;
  int32_t me = tide_comm_rank(c);
  tide_err_t err = {0};
  float x = 1;
  int rc = me == 2 ? tide_comm_allreduce(c, &x, &x, 1, 12345, TIDE_COMM_SUM, &err) /* bad dtype */
                   : tide_comm_allreduce(c, &x, &x, 1, TIDE_DTYPE_F32, TIDE_COMM_SUM, &err);
  RCHECK(st, me, rc != 0, "the call should fail");
  if (me == 2) RCHECK(st, me, rc == TIDE_EDTYPE, "rank 2 gets the dtype error, got %d", rc);
  else RCHECK(st, me, rc == TIDE_ESTATE && strstr(err.msg, "rank 2:"), "others: %s", err.msg);
  /* later calls fail at once */
  rc = tide_comm_barrier(c, &err);
  RCHECK(st, me, rc == TIDE_ESTATE, "barrier after abort returned %d", rc);
  return 0;
}

static int rank_timeout(tide_comm_t *c, void *arg) {
  tstate_t *st = arg;
  int32_t me = tide_comm_rank(c);
  tide_err_t err = {0};
  tide_comm_set_timeout(c, 200);
  if (me == 1) return 0; /* never arrives */
  int rc = tide_comm_barrier(c, &err);
  RCHECK(st, me, rc == TIDE_ESTATE, "barrier returned %d", rc);
  RCHECK(st, me, strstr(err.msg, "timed out") && strstr(err.msg, " 1"), "message: %s", err.msg);
  return 0;
}

static void test_comm_faults(void **state) {
  (void)state;
  tide_err_t err = {0};
  tide_comm_local_t *ctx = NULL;
  tstate_t st = {.seed = 0};
  assert_int_equal(tide_comm_local_new(4, &ctx, &err), 0);
  assert_int_equal(tide_comm_local_run(ctx, rank_badcall, &st, &err), TIDE_ESTATE);
  for (int r = 0; r < 4; r++)
    if (st.fail[r][0]) fail_msg("rank %d: %s", r, st.fail[r]);
  assert_non_null(strstr(err.msg, "rank 2:"));
  tide_comm_local_free(ctx);

  memset(&st, 0, sizeof st);
  assert_int_equal(tide_comm_local_new(3, &ctx, &err), 0);
  assert_int_equal(tide_comm_local_run(ctx, rank_timeout, &st, &err), TIDE_ESTATE);
  for (int r = 0; r < 3; r++)
    if (st.fail[r][0]) fail_msg("rank %d: %s", r, st.fail[r]);
  assert_non_null(strstr(err.msg, "timed out"));
  tide_comm_local_free(ctx);

  /* argument checks without a group */
  assert_int_equal(tide_comm_local_new(0, &ctx, &err), TIDE_EINVAL);
  assert_int_equal(tide_comm_barrier(NULL, &err), TIDE_EINVAL);
  assert_null(tide_comm_local_world(NULL, 0));
}

/* ---- Lua on rank threads ---------------------------------------------------------------------- */

static void test_comm_lua_ranks(void **state) {
  (void)state;
  tide_err_t err = {0};
  tide_comm_local_t *ctx = NULL;
  char *res[3];
  assert_int_equal(tide_comm_local_new(3, &ctx, &err), 0);
  const char *ok = "return function(comm, arg) return type(comm) .. ':' .. arg end";
  assert_int_equal(tide_comm_local_run_lua(ctx, NULL, ok, (int64_t)strlen(ok), 0, "hi", 2, res, &err), 0);
  for (int r = 0; r < 3; r++) {
    assert_non_null(res[r]);
    assert_string_equal(res[r], "userdata:hi");
    tide_comm_string_free(res[r]);
  }
  tide_comm_local_free(ctx);

  assert_int_equal(tide_comm_local_new(3, &ctx, &err), 0);
  const char *bad = "return function(comm, arg) if arg == 'x' then error('boom on a rank') end end";
  assert_int_equal(tide_comm_local_run_lua(ctx, NULL, bad, (int64_t)strlen(bad), 0, "x", 1, res, &err), TIDE_ESTATE);
  assert_non_null(strstr(err.msg, "boom on a rank"));
  assert_non_null(strstr(err.msg, "rank "));
  tide_comm_local_free(ctx);

  assert_int_equal(tide_comm_local_new(2, &ctx, &err), 0);
  const char *notfn = "return 42";
  assert_int_equal(tide_comm_local_run_lua(ctx, NULL, notfn, (int64_t)strlen(notfn), 0, NULL, 0, NULL, &err),
                   TIDE_ESTATE);
  assert_non_null(strstr(err.msg, "did not return a function"));
  tide_comm_local_free(ctx);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_comm_allreduce),  cmocka_unit_test(test_comm_allgather),
      cmocka_unit_test(test_comm_alltoallv),  cmocka_unit_test(test_comm_send_recv),
      cmocka_unit_test(test_comm_split),      cmocka_unit_test(test_comm_nonblocking),
      cmocka_unit_test(test_comm_stats),      cmocka_unit_test(test_comm_faults),
      cmocka_unit_test(test_comm_emulated_link),
      cmocka_unit_test(test_comm_lua_ranks),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
