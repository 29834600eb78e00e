#include "pool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#define TIDE_POOL_MAX 256
#define TIDE_POOL_SPIN 4000 /* pause iterations (~50 µs) a thread spins before sleeping */

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

struct tide_pool {
  int32_t nthreads;         /* threads taking part in a run, caller included */
  int32_t nworkers;         /* worker threads started (nthreads - 1) */
  pthread_t workers[TIDE_POOL_MAX];
  pthread_mutex_t mu;
  pthread_cond_t cv_start;
  pthread_cond_t cv_done;
  int64_t generation;       /* bumped for each run */
  int32_t pending;          /* workers still running the current job */
  int32_t quit;
  tide_pool_fn fn;
  void *ctx;
  /* sense-reversing barrier */
  atomic_int barrier_count;
  atomic_int barrier_sense;
};

typedef struct {
  tide_pool_t *p;
  int32_t ith;
  int64_t generation; /* the pool's generation when the worker started */
} worker_arg_t;

static void *worker_main(void *arg) {
  worker_arg_t wa = *(worker_arg_t *)arg;
  free(arg);
  tide_pool_t *p = wa.p;
  int64_t seen = wa.generation; /* runs before this worker existed are not its to do */
  for (;;) {
    /* Spin briefly before sleeping: ops come in quick succession during a
     * forward pass and a condition-variable wake-up costs tens of µs. */
    for (int i = 0; i < TIDE_POOL_SPIN && __atomic_load_n(&p->generation, __ATOMIC_ACQUIRE) == seen; i++)
      cpu_relax();
    pthread_mutex_lock(&p->mu);
    while (!p->quit && p->generation == seen) pthread_cond_wait(&p->cv_start, &p->mu);
    if (p->quit) {
      pthread_mutex_unlock(&p->mu);
      return NULL;
    }
    seen = p->generation;
    tide_pool_fn fn = p->fn;
    void *ctx = p->ctx;
    int32_t nth = p->nthreads;
    pthread_mutex_unlock(&p->mu);
    fn(ctx, wa.ith, nth);
    pthread_mutex_lock(&p->mu);
    if (__atomic_sub_fetch(&p->pending, 1, __ATOMIC_ACQ_REL) == 0) pthread_cond_signal(&p->cv_done);
    pthread_mutex_unlock(&p->mu);
  }
}

static void stop_workers(tide_pool_t *p) {
  pthread_mutex_lock(&p->mu);
  p->quit = 1;
  pthread_cond_broadcast(&p->cv_start);
  pthread_mutex_unlock(&p->mu);
  for (int32_t i = 0; i < p->nworkers; i++) pthread_join(p->workers[i], NULL);
  p->nworkers = 0;
  p->quit = 0;
}

static int start_workers(tide_pool_t *p, int32_t n, tide_err_t *err) {
  for (int32_t i = 0; i < n - 1; i++) {
    worker_arg_t *wa = malloc(sizeof *wa);
    if (!wa) {
      stop_workers(p);
      return tide_err_set(err, TIDE_ENOMEM, "pool: out of memory");
    }
    wa->p = p;
    wa->ith = i + 1;
    pthread_mutex_lock(&p->mu);
    wa->generation = p->generation;
    pthread_mutex_unlock(&p->mu);
    if (pthread_create(&p->workers[i], NULL, worker_main, wa) != 0) {
      free(wa);
      stop_workers(p);
      return tide_err_set(err, TIDE_ENOMEM, "pool: cannot start thread %d", (int)(i + 1));
    }
    p->nworkers = i + 1;
  }
  p->nthreads = n;
  return 0;
}

int tide_pool_new(int32_t nthreads, tide_pool_t **out, tide_err_t *err) {
  *out = NULL;
  if (nthreads < 1 || nthreads > TIDE_POOL_MAX)
    return tide_err_set(err, TIDE_EINVAL, "pool: thread count %d outside 1..%d", (int)nthreads, TIDE_POOL_MAX);
  tide_pool_t *p = calloc(1, sizeof *p);
  if (!p) return tide_err_set(err, TIDE_ENOMEM, "pool: out of memory");
  pthread_mutex_init(&p->mu, NULL);
  pthread_cond_init(&p->cv_start, NULL);
  pthread_cond_init(&p->cv_done, NULL);
  p->nthreads = 1;
  int rc = start_workers(p, nthreads, err);
  if (rc) {
    tide_pool_free(p);
    return rc;
  }
  *out = p;
  return 0;
}

void tide_pool_free(tide_pool_t *p) {
  if (!p) return;
  stop_workers(p);
  pthread_mutex_destroy(&p->mu);
  pthread_cond_destroy(&p->cv_start);
  pthread_cond_destroy(&p->cv_done);
  free(p);
}

int tide_pool_set_threads(tide_pool_t *p, int32_t nthreads, tide_err_t *err) {
  if (nthreads < 1 || nthreads > TIDE_POOL_MAX)
    return tide_err_set(err, TIDE_EINVAL, "pool: thread count %d outside 1..%d", (int)nthreads, TIDE_POOL_MAX);
  if (nthreads == p->nthreads) return 0;
  stop_workers(p);
  p->nthreads = 1;
  return start_workers(p, nthreads, err);
}

int32_t tide_pool_threads(const tide_pool_t *p) { return p ? p->nthreads : 1; }

void tide_pool_run(tide_pool_t *p, tide_pool_fn fn, void *ctx) {
  if (!p || p->nthreads == 1) {
    fn(ctx, 0, 1);
    return;
  }
  atomic_store(&p->barrier_count, 0);
  pthread_mutex_lock(&p->mu);
  p->fn = fn;
  p->ctx = ctx;
  __atomic_store_n(&p->pending, p->nworkers, __ATOMIC_RELEASE);
  __atomic_add_fetch(&p->generation, 1, __ATOMIC_RELEASE);
  pthread_cond_broadcast(&p->cv_start);
  pthread_mutex_unlock(&p->mu);
  fn(ctx, 0, p->nthreads);
  for (int i = 0; i < TIDE_POOL_SPIN && __atomic_load_n(&p->pending, __ATOMIC_ACQUIRE) > 0; i++) cpu_relax();
  pthread_mutex_lock(&p->mu);
  while (p->pending > 0) pthread_cond_wait(&p->cv_done, &p->mu);
  pthread_mutex_unlock(&p->mu);
}

void tide_pool_barrier(tide_pool_t *p) {
  if (!p || p->nthreads == 1) return;
  int sense = atomic_load(&p->barrier_sense);
  if (atomic_fetch_add(&p->barrier_count, 1) == p->nthreads - 1) {
    atomic_store(&p->barrier_count, 0);
    atomic_store(&p->barrier_sense, !sense);
  } else {
    int spins = 0;
    while (atomic_load(&p->barrier_sense) == sense)
      if (++spins > 1000) sched_yield();
  }
}

int32_t tide_pool_cpu_count(void) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n < 1 ? 1 : n > TIDE_POOL_MAX ? TIDE_POOL_MAX : (int32_t)n;
}

void tide_split_range(int64_t n, int32_t ith, int32_t nth, int64_t *lo, int64_t *hi) {
  int64_t per = n / nth, rem = n % nth;
  *lo = ith * per + (ith < rem ? ith : rem);
  *hi = *lo + per + (ith < rem ? 1 : 0);
}
