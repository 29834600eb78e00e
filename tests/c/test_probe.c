/* Tests of the read-bandwidth probe: a positive rate on one and two
 * threads, bad arguments rejected. (No timing assertions beyond > 0.) */
#include "testutil.h"

#include "pool.h"
#include "probe.h"

static void test_probe_read_bw_positive(void **state) {
  (void)state;
  tide_err_t err;
  double g = -1;
  assert_int_equal(tide_probe_read_bw(NULL, 4 << 20, 2, &g, &err), 0);
  assert_true(g > 0);
  tide_pool_t *p;
  assert_int_equal(tide_pool_new(2, &p, &err), 0);
  g = -1;
  assert_int_equal(tide_probe_read_bw(p, (4 << 20) + 24, 1, &g, &err), 0);
  assert_true(g > 0);
  tide_pool_free(p);
}

static void test_probe_rejects_bad_arguments(void **state) {
  (void)state;
  tide_err_t err;
  double g;
  assert_int_equal(tide_probe_read_bw(NULL, 1024, 1, &g, &err), TIDE_EINVAL);
  assert_int_equal(tide_probe_read_bw(NULL, 4 << 20, 0, &g, &err), TIDE_EINVAL);
  assert_int_equal(tide_probe_read_bw(NULL, 4 << 20, 1, NULL, &err), TIDE_EINVAL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_probe_read_bw_positive),
      cmocka_unit_test(test_probe_rejects_bad_arguments),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
