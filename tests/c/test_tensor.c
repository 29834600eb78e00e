/* Tests of storage, tensors, views, dtype conversions, the arena and the pool. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dtype.h"
#include "pool.h"

static void test_tensor_new_contiguous(void **state) {
  (void)state;
  tide_tensor_t *t;
  tide_err_t err;
  int64_t shape[3] = {2, 3, 4};
  assert_int_equal(tide_tensor_new(TIDE_DTYPE_F32, 3, shape, &t, &err), 0);
  assert_int_equal(t->ndim, 3);
  assert_int_equal(t->stride[2], 4);
  assert_int_equal(t->stride[1], 16);
  assert_int_equal(t->stride[0], 48);
  assert_int_equal(tide_tensor_numel(t), 24);
  assert_int_equal(tide_tensor_nbytes(t), 96);
  assert_true(tide_tensor_is_contiguous(t));
  assert_true(((uintptr_t)t->data % 64) == 0);
  for (int i = 0; i < 24; i++) assert_true(((float *)t->data)[i] == 0.0f);
  tide_tensor_release(t);
}

static void test_tensor_rejects_bad_shapes(void **state) {
  (void)state;
  tide_tensor_t *t = NULL;
  tide_err_t err;
  int64_t five[5] = {1, 1, 1, 1, 1};
  assert_int_equal(tide_tensor_new(TIDE_DTYPE_F32, 5, five, &t, &err), TIDE_EINVAL);
  assert_non_null(strstr(err.msg, "dimensions"));
  int64_t neg[2] = {2, -1};
  assert_int_equal(tide_tensor_new(TIDE_DTYPE_F32, 2, neg, &t, &err), TIDE_EINVAL);
  int64_t q[2] = {2, 33};
  assert_int_equal(tide_tensor_new(TIDE_DTYPE_Q8_0, 2, q, &t, &err), TIDE_ESHAPE);
  assert_int_equal(tide_tensor_new(99, 2, q, &t, &err), TIDE_EDTYPE);
  int64_t huge[4] = {1ll << 40, 1ll << 40, 1, 1};
  assert_int_equal(tide_tensor_new(TIDE_DTYPE_F32, 2, huge, &t, &err), TIDE_EINVAL);
  assert_null(t);
}

static void test_tensor_views_share_storage(void **state) {
  (void)state;
  tide_tensor_t *t, *v, *tr, *c;
  tide_err_t err;
  int64_t shape[2] = {3, 4};
  assert_int_equal(tide_tensor_new(TIDE_DTYPE_F32, 2, shape, &t, &err), 0);
  for (int i = 0; i < 12; i++) ((float *)t->data)[i] = (float)i;
  assert_int_equal(tide_tensor_narrow(t, 1, 1, 2, &v, &err), 0); /* columns 1..2 */
  assert_int_equal(v->shape[0], 3);
  assert_int_equal(v->shape[1], 2);
  assert_false(tide_tensor_is_contiguous(v));
  assert_true(tide_tensor_get(v, 0) == 1.0);
  assert_true(tide_tensor_get(v, 3) == 6.0);
  assert_int_equal(t->storage->refcount, 2);
  assert_int_equal(tide_tensor_transpose(t, 0, 1, &tr, &err), 0);
  assert_true(tide_tensor_get(tr, 1) == 4.0); /* tr[0][1] = t[1][0] */
  assert_int_equal(tide_tensor_copy(tr, TIDE_DTYPE_F32, &c, &err), 0);
  assert_true(tide_tensor_is_contiguous(c));
  assert_true(((float *)c->data)[1] == 4.0f);
  tide_tensor_release(t); /* views keep the storage alive */
  assert_true(tide_tensor_get(v, 5) == 10.0);
  tide_tensor_release(v);
  tide_tensor_release(tr);
  tide_tensor_release(c);
}

static void test_tensor_view_bounds_checked(void **state) {
  (void)state;
  tide_tensor_t *t, *v = NULL;
  tide_err_t err;
  int64_t shape[1] = {8};
  assert_int_equal(tide_tensor_new(TIDE_DTYPE_F32, 1, shape, &t, &err), 0);
  int64_t big[1] = {9};
  assert_int_equal(tide_tensor_view(t, 0, 1, big, NULL, &v, &err), TIDE_ERANGE);
  int64_t four[1] = {4};
  assert_int_equal(tide_tensor_view(t, 20, 1, four, NULL, &v, &err), TIDE_ERANGE);
  assert_int_equal(tide_tensor_view(t, 16, 1, four, NULL, &v, &err), 0);
  tide_tensor_release(v);
  assert_int_equal(tide_tensor_narrow(t, 0, 6, 3, &v, &err), TIDE_ERANGE);
  assert_int_equal(tide_tensor_narrow(t, 1, 0, 1, &v, &err), TIDE_EINVAL);
  int64_t r[2] = {3, 3};
  assert_int_equal(tide_tensor_reshape(t, 2, r, &v, &err), TIDE_ESHAPE);
  tide_tensor_release(t);
}

static void test_dtype_roundtrips(void **state) {
  (void)state;
  /* f16: exact for representable values, round-to-nearest-even otherwise */
  float vals[] = {0.0f, -0.0f, 1.0f, -2.5f, 65504.0f, 6.1035156e-05f, 5.9604645e-08f, 0.1f};
  for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++) {
    float back = tide_f16_to_f32(tide_f32_to_f16(vals[i]));
    assert_true(fabsf(back - vals[i]) <= fabsf(vals[i]) * 1e-3f);
  }
  assert_int_equal(tide_f32_to_f16(1.0f), 0x3c00);
  assert_int_equal(tide_f32_to_f16(65520.0f), 0x7c00); /* overflow -> inf */
  assert_int_equal(tide_f32_to_f16(5.9604645e-08f), 0x0001);
  /* every f16 bit pattern survives f16 -> f32 -> f16 (NaNs stay NaN) */
  for (uint32_t h = 0; h < 65536; h++) {
    float f = tide_f16_to_f32((uint16_t)h);
    uint16_t back = tide_f32_to_f16(f);
    if (isnan(f)) assert_true((back & 0x7c00) == 0x7c00 && (back & 0x3ff));
    else assert_int_equal(back, h);
  }
  /* bf16: round to nearest even */
  assert_int_equal(tide_f32_to_bf16(1.0f), 0x3f80);
  assert_true(tide_bf16_to_f32(tide_f32_to_bf16(3.140625f)) == 3.140625f);
  for (uint32_t h = 0; h < 65536; h++) {
    float f = tide_bf16_to_f32((uint16_t)h);
    if (!isnan(f)) assert_int_equal(tide_f32_to_bf16(f), h);
  }
  /* f8 e4m3fn: all 256 codes round-trip; 448 is the max; 0x7f is NaN */
  for (uint32_t v = 0; v < 256; v++) {
    float f = tide_f8e4m3_to_f32((uint8_t)v);
    if ((v & 0x7f) == 0x7f) {
      assert_true(isnan(f));
      continue;
    }
    assert_int_equal(tide_f32_to_f8e4m3(f), v);
  }
  assert_true(tide_f8e4m3_to_f32(0x7e) == 448.0f);
  assert_true(tide_f8e4m3_to_f32(0x01) == ldexpf(1.0f, -9));
  assert_int_equal(tide_f32_to_f8e4m3(1000.0f), 0x7e);
}

static void test_dtype_traits_table(void **state) {
  (void)state;
  for (int32_t i = 0; i < TIDE_DTYPE_COUNT; i++) {
    const tide_dtype_traits_t *t = tide_dtype_traits(i);
    assert_non_null(t);
    assert_non_null(t->name);
    assert_true(t->block_size >= 1 && t->block_bytes >= 1);
    assert_int_equal(tide_dtype_from_name(t->name), i);
  }
  assert_null(tide_dtype_traits(-1));
  assert_null(tide_dtype_traits(TIDE_DTYPE_COUNT));
  assert_int_equal(tide_dtype_from_name("bfloat16"), TIDE_DTYPE_BF16);
  assert_int_equal(tide_dtype_from_name("F8_E4M3"), TIDE_DTYPE_F8_E4M3);
  assert_int_equal(tide_dtype_from_name("nope"), -1);
  assert_int_equal(tide_dtype_row_bytes(TIDE_DTYPE_Q4_K, 512), 288);
  assert_int_equal(tide_dtype_row_bytes(TIDE_DTYPE_Q8_0, 33), -1);
}

static void test_tensor_copy_converts(void **state) {
  (void)state;
  tu_rng_t rng = {42};
  int64_t shape[2] = {5, 7};
  tide_tensor_t *a = tu_rand_tensor(&rng, 2, shape, 3.0f), *b, *c;
  tide_err_t err;
  assert_int_equal(tide_tensor_copy(a, TIDE_DTYPE_BF16, &b, &err), 0);
  assert_int_equal(b->dtype, TIDE_DTYPE_BF16);
  assert_int_equal(tide_tensor_copy(b, TIDE_DTYPE_F32, &c, &err), 0);
  assert_true(tu_maxdiff(a, c) <= 3.0 / 128);
  assert_true(tu_nmse(c, a) < 1e-4);
  tide_tensor_release(a);
  tide_tensor_release(b);
  tide_tensor_release(c);
}

static void test_tensor_block_scales(void **state) {
  (void)state;
  /* FP8 weight (3, 5) with 2x2 scale blocks -> scales (2, 3) */
  tide_tensor_t *w, *s, *bad;
  tide_err_t err;
  int64_t shape[2] = {3, 5}, sshape[2] = {2, 3}, bshape[2] = {2, 2};
  assert_int_equal(tide_tensor_new(TIDE_DTYPE_F8_E4M3, 2, shape, &w, &err), 0);
  for (int i = 0; i < 15; i++) ((uint8_t *)w->data)[i] = tide_f32_to_f8e4m3(1.0f);
  assert_int_equal(tide_tensor_new(TIDE_DTYPE_F32, 2, sshape, &s, &err), 0);
  for (int i = 0; i < 6; i++) ((float *)s->data)[i] = (float)(i + 1);
  assert_int_equal(tide_tensor_new(TIDE_DTYPE_F32, 2, bshape, &bad, &err), 0);
  assert_int_equal(tide_tensor_set_scale(w, bad, 2, 2, &err), TIDE_ESHAPE);
  assert_int_equal(tide_tensor_set_scale(w, s, 2, 2, &err), 0);
  assert_true(tide_tensor_get(w, 0) == 1.0);      /* row 0, col 0 -> scale[0][0] */
  assert_true(tide_tensor_get(w, 4) == 3.0);      /* row 0, col 4 -> scale[0][2] */
  assert_true(tide_tensor_get(w, 2 * 5 + 3) == 5.0); /* row 2, col 3 -> scale[1][1] */
  float out[15];
  assert_int_equal(tide_tensor_to_f32(w, out, &err), 0);
  assert_true(out[14] == 6.0f);
  tide_tensor_release(w);
  tide_tensor_release(s);
  tide_tensor_release(bad);
}

static void test_storage_mmap_readonly(void **state) {
  (void)state;
  char *dir = tu_tmpdir();
  char path[256];
  snprintf(path, sizeof path, "%s/f.bin", dir);
  float data[6] = {1, 2, 3, 4, 5, 6};
  tu_write_file(path, data, sizeof data);
  tide_storage_t *s;
  tide_tensor_t *t;
  tide_err_t err;
  assert_int_equal(tide_storage_mmap(path, 8, 16, &s, &err), 0);
  int64_t shape[1] = {4};
  assert_int_equal(tide_tensor_from_storage(s, 0, TIDE_DTYPE_F32, 1, shape, &t, &err), 0);
  assert_true(tide_tensor_get(t, 0) == 3.0);
  assert_true(tide_tensor_get(t, 3) == 6.0);
  assert_int_equal(tide_tensor_set(t, 0, 1.0, &err), TIDE_ESTATE);
  int64_t five[1] = {5};
  tide_tensor_t *t2 = NULL;
  assert_int_equal(tide_tensor_from_storage(s, 0, TIDE_DTYPE_F32, 1, five, &t2, &err), TIDE_ERANGE);
  tide_storage_release(s);
  tide_tensor_release(t);
  assert_int_equal(tide_storage_mmap(path, 8, 100, &s, &err), TIDE_ERANGE);
  assert_non_null(strstr(err.msg, path));
  assert_int_equal(tide_storage_mmap("/nonexistent/x", 0, -1, &s, &err), TIDE_EIO);
  assert_int_equal(tide_storage_mmap(dir, 0, -1, &s, &err), TIDE_EIO);
  unlink(path);
  rmdir(dir);
  free(dir);
}

static void test_arena_bump_and_reset(void **state) {
  (void)state;
  tide_arena_t *a;
  tide_err_t err;
  assert_int_equal(tide_arena_new(1024, &a, &err), 0);
  void *p = tide_arena_alloc(a, 100, &err);
  void *q = tide_arena_alloc(a, 100, &err);
  assert_non_null(p);
  assert_non_null(q);
  assert_true((uintptr_t)q % 64 == 0);
  assert_int_equal((char *)q - (char *)p, 128);
  assert_null(tide_arena_alloc(a, 2000, &err));
  assert_int_equal(err.code, TIDE_ENOMEM);
  tide_tensor_t *t;
  int64_t shape[2] = {4, 4};
  assert_int_equal(tide_arena_tensor(a, TIDE_DTYPE_F32, 2, shape, &t, &err), 0);
  assert_true(t->flags & TIDE_TENSOR_ARENA);
  tide_tensor_release(t);
  assert_int_equal(tide_arena_used(a), 320);
  tide_arena_reset(a);
  assert_int_equal(tide_arena_used(a), 0);
  assert_int_equal(tide_arena_high_water(a), 320);
  assert_ptr_equal(tide_arena_alloc(a, 8, &err), p);
  tide_arena_free(a);
}

typedef struct {
  int64_t n;
  int64_t *hits;
  int64_t sum_after_barrier[8];
  int64_t partial[8];
} pool_job_t;

static void pool_job(void *ctx, int32_t ith, int32_t nth) {
  pool_job_t *j = ctx;
  int64_t lo, hi;
  tide_split_range(j->n, ith, nth, &lo, &hi);
  int64_t s = 0;
  for (int64_t i = lo; i < hi; i++) {
    j->hits[i]++;
    s += i;
  }
  j->partial[ith] = s;
  tide_pool_barrier(NULL); /* no-op */
}

typedef struct {
  tide_pool_t *pool;
  int64_t partial[8];
  int64_t total[8];
} barrier_job_t;

static void barrier_job(void *ctx, int32_t ith, int32_t nth) {
  barrier_job_t *j = ctx;
  for (int round = 0; round < 50; round++) {
    j->partial[ith] = ith + round;
    tide_pool_barrier(j->pool);
    int64_t s = 0;
    for (int32_t t = 0; t < nth; t++) s += j->partial[t];
    j->total[ith] = s;
    tide_pool_barrier(j->pool);
  }
}

static void test_pool_splits_work_and_barrier(void **state) {
  (void)state;
  tide_pool_t *p;
  tide_err_t err;
  assert_int_equal(tide_pool_new(0, &p, &err), TIDE_EINVAL);
  assert_int_equal(tide_pool_new(4, &p, &err), 0);
  assert_int_equal(tide_pool_threads(p), 4);
  for (int32_t nt = 1; nt <= 4; nt++) {
    assert_int_equal(tide_pool_set_threads(p, nt, &err), 0);
    pool_job_t j = {.n = 1001};
    j.hits = calloc(1001, sizeof(int64_t));
    for (int rep = 0; rep < 20; rep++) tide_pool_run(p, pool_job, &j);
    int64_t total = 0;
    for (int i = 0; i < 1001; i++) assert_int_equal(j.hits[i], 20);
    for (int i = 0; i < nt; i++) total += j.partial[i];
    assert_int_equal(total, 1001 * 1000 / 2);
    free(j.hits);
    barrier_job_t b = {.pool = p};
    tide_pool_run(p, barrier_job, &b);
    int64_t expect = 0;
    for (int32_t t = 0; t < nt; t++) expect += t + 49;
    for (int32_t t = 0; t < nt; t++) assert_int_equal(b.total[t], expect);
  }
  tide_pool_free(p);
  /* NULL pool runs on the caller */
  pool_job_t j = {.n = 10};
  j.hits = calloc(10, sizeof(int64_t));
  tide_pool_run(NULL, pool_job, &j);
  for (int i = 0; i < 10; i++) assert_int_equal(j.hits[i], 1);
  free(j.hits);
}

typedef struct {
  int32_t calls;
} count_job_t;

static void count_job(void *ctx, int32_t ith, int32_t nth) {
  (void)ith;
  (void)nth;
  __atomic_add_fetch(&((count_job_t *)ctx)->calls, 1, __ATOMIC_RELAXED);
}

/* Regression: workers started by set_threads after earlier runs must not
 * re-run the last job (they once started with a stale generation). */
static void test_pool_new_workers_do_not_rerun_old_jobs(void **state) {
  (void)state;
  tide_pool_t *p;
  tide_err_t err;
  assert_int_equal(tide_pool_new(2, &p, &err), 0);
  count_job_t a = {0};
  tide_pool_run(p, count_job, &a);
  tide_pool_run(p, count_job, &a);
  assert_int_equal(a.calls, 4);
  assert_int_equal(tide_pool_set_threads(p, 4, &err), 0);
  usleep(50 * 1000); /* give stray workers time to misbehave */
  assert_int_equal(__atomic_load_n(&a.calls, __ATOMIC_RELAXED), 4);
  count_job_t b = {0};
  tide_pool_run(p, count_job, &b);
  assert_int_equal(b.calls, 4);
  assert_int_equal(a.calls, 4);
  tide_pool_free(p);
}

static void test_split_range_covers(void **state) {
  (void)state;
  for (int64_t n = 0; n < 50; n++)
    for (int32_t nth = 1; nth <= 9; nth++) {
      int64_t prev = 0;
      for (int32_t i = 0; i < nth; i++) {
        int64_t lo, hi;
        tide_split_range(n, i, nth, &lo, &hi);
        assert_int_equal(lo, prev);
        assert_true(hi >= lo && hi - lo <= n / nth + 1);
        prev = hi;
      }
      assert_int_equal(prev, n);
    }
}

static void test_error_strings(void **state) {
  (void)state;
  for (int c = 0; c >= -10; c--) assert_string_not_equal(tide_strerror(c), "unknown error");
  tide_err_t err;
  assert_int_equal(tide_err_set(&err, TIDE_EIO, "file %s", "x"), TIDE_EIO);
  assert_string_equal(err.msg, "file x");
  assert_int_equal(tide_err_set(NULL, TIDE_EIO, "ignored"), TIDE_EIO);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_tensor_new_contiguous),   cmocka_unit_test(test_tensor_rejects_bad_shapes),
      cmocka_unit_test(test_tensor_views_share_storage), cmocka_unit_test(test_tensor_view_bounds_checked),
      cmocka_unit_test(test_dtype_roundtrips),        cmocka_unit_test(test_dtype_traits_table),
      cmocka_unit_test(test_tensor_copy_converts),    cmocka_unit_test(test_tensor_block_scales),
      cmocka_unit_test(test_storage_mmap_readonly),   cmocka_unit_test(test_arena_bump_and_reset),
      cmocka_unit_test(test_pool_splits_work_and_barrier), cmocka_unit_test(test_split_range_covers),
      cmocka_unit_test(test_pool_new_workers_do_not_rerun_old_jobs),
      cmocka_unit_test(test_error_strings),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
