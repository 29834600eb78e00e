/* pool.h: a thread pool that runs one function on nth threads (the caller
 * is thread 0), with a barrier. Kernels split rows by ith/nth (or claim
 * chunks from an atomic counter kept in their own context) and never
 * allocate. A NULL pool means "run on the calling thread".
 * A pool belongs to whoever created it; two models may share one or own
 * their own. Calls into one pool must not overlap (not reentrant). */
#ifndef TIDE_POOL_H
#define TIDE_POOL_H

#ifndef TIDE_FFI
#include <stdint.h>
#endif
#include "error.h"

typedef struct tide_pool tide_pool_t;

/* Work item: called once on each of nth threads with ith in [0, nth). */
typedef void (*tide_pool_fn)(void *ctx, int32_t ith, int32_t nth);

int tide_pool_new(int32_t nthreads, tide_pool_t **out, tide_err_t *err);
void tide_pool_free(tide_pool_t *p);
/* Change the thread count between runs (1..256). */
int tide_pool_set_threads(tide_pool_t *p, int32_t nthreads, tide_err_t *err);
int32_t tide_pool_threads(const tide_pool_t *p);
/* Run fn on all threads and wait. With p == NULL, runs fn(ctx, 0, 1). */
void tide_pool_run(tide_pool_t *p, tide_pool_fn fn, void *ctx);
/* Inside fn: wait until all nth threads reach the barrier. */
void tide_pool_barrier(tide_pool_t *p);
/* Number of CPUs online (for defaults). */
int32_t tide_pool_cpu_count(void);

/* Split [0, n) into nth contiguous parts; part ith is [*lo, *hi). */
void tide_split_range(int64_t n, int32_t ith, int32_t nth, int64_t *lo, int64_t *hi);

#endif
