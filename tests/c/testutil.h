/* testutil.h: shared helpers for the cmocka tests. */
#ifndef TIDE_TESTUTIL_H
#define TIDE_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "tensor.h"

/* Deterministic xorshift generator: uniform in [-1, 1). */
typedef struct { uint64_t s; } tu_rng_t;
float tu_rand(tu_rng_t *r);
int64_t tu_randint(tu_rng_t *r, int64_t lo, int64_t hi); /* [lo, hi] */

/* New f32 tensor filled with uniform values in [-scale, scale). */
tide_tensor_t *tu_rand_tensor(tu_rng_t *r, int32_t ndim, const int64_t *shape, float scale);
/* New tensor of dtype with values converted from a random f32 tensor. */
tide_tensor_t *tu_rand_tensor_dtype(tu_rng_t *r, int32_t dtype, int32_t ndim, const int64_t *shape, float scale);
/* Normalized mean squared error sum((a-b)^2)/sum(b^2) over all elements (any dtype, strided). */
double tu_nmse(const tide_tensor_t *a, const tide_tensor_t *b);
/* Max absolute difference. */
double tu_maxdiff(const tide_tensor_t *a, const tide_tensor_t *b);
/* Write bytes to a fresh temp file; returns its path (static buffer per call index). */
void tu_write_file(const char *path, const void *data, size_t n);
/* mkdtemp-based directory; caller frees. */
char *tu_tmpdir(void);
/* cmocka group fixtures: a fresh temp folder per group run, removed after;
 * tu_tmp_path(name) is a path inside it (8 rotating static buffers). */
int tu_group_setup(void **state);
int tu_group_teardown(void **state);
char *tu_tmp_path(const char *name);

#endif
