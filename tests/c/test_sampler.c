/* Tests of the sampler: greedy, seeded reproducibility, the empirical
 * distribution against softmax, top-k/top-p/min-p supports, penalties and
 * their window, logprobs against a direct computation, bad parameters. */
#include "testutil.h"

#include <math.h>
#include <string.h>

#include "sampler.h"

static tide_sampler_t *make(tide_sampler_params_t *p, int32_t V) {
  tide_sampler_t *s = NULL;
  tide_err_t err;
  assert_int_equal(tide_sampler_new(p, V, &s, &err), 0);
  return s;
}

static int32_t draw(tide_sampler_t *s, const float *logits) {
  int32_t t = -1;
  tide_err_t err;
  assert_int_equal(tide_sampler_sample(s, logits, &t, &err), 0);
  return t;
}

static void test_sampler_greedy_argmax(void **state) {
  (void)state;
  tide_sampler_params_t p;
  tide_sampler_params_default(&p);
  tide_sampler_t *s = make(&p, 6);
  float l[6] = {0.1f, 2.0f, -1.0f, 2.0f, 1.9f, NAN};
  assert_int_equal(draw(s, l), 1); /* tie goes to the lower id; nan never wins */
  float l2[6] = {-5, -4, -3, -2, -1, 0};
  assert_int_equal(draw(s, l2), 5);
  tide_sampler_free(s);
}

static void test_sampler_seed_reproducible(void **state) {
  (void)state;
  tide_sampler_params_t p;
  tide_sampler_params_default(&p);
  p.temperature = 1.0f;
  p.seed = 1234;
  float l[16];
  for (int i = 0; i < 16; i++) l[i] = (float)(i % 5) * 0.3f;
  tide_sampler_t *a = make(&p, 16), *b = make(&p, 16);
  int32_t first[50];
  int same_as_other_seed = 1;
  for (int i = 0; i < 50; i++) {
    first[i] = draw(a, l);
    assert_int_equal(first[i], draw(b, l));
  }
  tide_sampler_reset(a, 1234);
  for (int i = 0; i < 50; i++) assert_int_equal(draw(a, l), first[i]);
  tide_sampler_reset(b, 99);
  for (int i = 0; i < 50; i++)
    if (draw(b, l) != first[i]) same_as_other_seed = 0;
  assert_false(same_as_other_seed);
  tide_sampler_free(a);
  tide_sampler_free(b);
}

static void test_sampler_matches_softmax(void **state) {
  (void)state;
  tide_sampler_params_t p;
  tide_sampler_params_default(&p);
  p.temperature = 2.0f;
  p.seed = 7;
  const int V = 5, N = 100000;
  float l[5] = {1.0f, 2.0f, 0.0f, 3.0f, -1.0f};
  double z = 0, prob[5];
  for (int i = 0; i < V; i++) z += exp(l[i] / 2.0);
  for (int i = 0; i < V; i++) prob[i] = exp(l[i] / 2.0) / z;
  tide_sampler_t *s = make(&p, V);
  int cnt[5] = {0};
  for (int i = 0; i < N; i++) cnt[draw(s, l)]++;
  for (int i = 0; i < V; i++) {
    double f = (double)cnt[i] / N;
    double sd = sqrt(prob[i] * (1 - prob[i]) / N);
    assert_true(fabs(f - prob[i]) < 6 * sd + 1e-4);
  }
  tide_sampler_free(s);
}

static void support(tide_sampler_params_t *p, const float *l, int V, int *seen) {
  tide_sampler_t *s = make(p, V);
  memset(seen, 0, sizeof(int) * (size_t)V);
  for (int i = 0; i < 4000; i++) seen[draw(s, l)]++;
  tide_sampler_free(s);
}

static void test_sampler_filters_restrict_support(void **state) {
  (void)state;
  /* probabilities 0.5, 0.3, 0.15, 0.05 at temperature 1 */
  float l[4] = {logf(0.15f), logf(0.5f), logf(0.05f), logf(0.3f)};
  int seen[4];
  tide_sampler_params_t p;
  tide_sampler_params_default(&p);
  p.temperature = 1.0f;
  p.seed = 3;
  support(&p, l, 4, seen);
  for (int i = 0; i < 4; i++) assert_true(seen[i] > 0);
  p.top_k = 2;
  support(&p, l, 4, seen);
  assert_true(seen[1] > 0 && seen[3] > 0);
  assert_int_equal(seen[0] + seen[2], 0);
  p.top_k = 1;
  support(&p, l, 4, seen);
  assert_int_equal(seen[1], 4000);
  p.top_k = 0;
  p.top_p = 0.7f; /* 0.5 + 0.3 reaches it */
  support(&p, l, 4, seen);
  assert_true(seen[1] > 0 && seen[3] > 0);
  assert_int_equal(seen[0] + seen[2], 0);
  p.top_p = 0.9f; /* needs the third token too */
  support(&p, l, 4, seen);
  assert_true(seen[0] > 0);
  assert_int_equal(seen[2], 0);
  p.top_p = 1.0f;
  p.min_p = 0.5f; /* keep p >= 0.25 */
  support(&p, l, 4, seen);
  assert_true(seen[1] > 0 && seen[3] > 0);
  assert_int_equal(seen[0] + seen[2], 0);
  /* top-p over a large flat-ish vocabulary (exercises the pruning path) */
  enum { V = 5000 };
  static float big[V];
  for (int i = 0; i < V; i++) big[i] = (i < 10) ? 5.0f : 0.0f;
  tide_sampler_params_default(&p);
  p.temperature = 1.0f;
  p.top_p = 0.5f; /* the ten heavy tokens hold e^5*10/(e^5*10+4990) ~ 0.23: must go into the tail */
  tide_sampler_t *s = make(&p, V);
  int tail = 0;
  for (int i = 0; i < 2000; i++) tail += draw(s, big) >= 10;
  assert_true(tail > 0);
  tide_sampler_free(s);
}

static void test_sampler_penalties(void **state) {
  (void)state;
  tide_sampler_params_t p;
  tide_sampler_params_default(&p);
  p.repetition_penalty = 2.0f;
  p.penalty_last_n = 2;
  float l[3] = {1.0f, 1.5f, -1.0f};
  tide_sampler_t *s = make(&p, 3);
  tide_err_t err;
  assert_int_equal(draw(s, l), 1);
  assert_int_equal(tide_sampler_accept(s, 1, &err), 0); /* 1.5 -> 0.75 < 1.0 */
  assert_int_equal(draw(s, l), 0);
  assert_int_equal(tide_sampler_accept(s, 0, &err), 0); /* both penalized: 0.5 vs 0.75 */
  assert_int_equal(draw(s, l), 1);
  assert_int_equal(tide_sampler_accept(s, 2, &err), 0); /* window of 2: token 1 leaves */
  assert_int_equal(draw(s, l), 1);
  assert_int_equal(tide_sampler_accept(s, 7, &err), TIDE_ERANGE);
  tide_sampler_free(s);

  tide_sampler_params_default(&p);
  p.frequency_penalty = 0.4f;
  p.penalty_last_n = -1;
  s = make(&p, 3);
  assert_int_equal(tide_sampler_accept(s, 1, &err), 0);
  assert_int_equal(draw(s, l), 1); /* 1.5 - 0.4 = 1.1 > 1.0 */
  assert_int_equal(tide_sampler_accept(s, 1, &err), 0);
  assert_int_equal(draw(s, l), 0); /* 1.5 - 0.8 = 0.7 */
  tide_sampler_free(s);

  tide_sampler_params_default(&p);
  p.presence_penalty = 0.6f;
  s = make(&p, 3);
  assert_int_equal(tide_sampler_accept(s, 1, &err), 0);
  assert_int_equal(draw(s, l), 0); /* 1.5 - 0.6 = 0.9 */
  tide_sampler_free(s);
}

static void test_sampler_logprobs(void **state) {
  (void)state;
  float l[6] = {0.5f, -1.0f, 3.0f, 2.0f, 3.0f, 0.0f};
  double z = 0;
  for (int i = 0; i < 6; i++) z += exp(l[i]);
  float lp;
  int32_t ids[3];
  float lps[3];
  tide_err_t err;
  assert_int_equal(tide_sampler_logprobs(l, 6, 3, &lp, 3, ids, lps, &err), 0);
  assert_true(fabs(lp - (2.0 - log(z))) < 1e-5);
  assert_int_equal(ids[0], 2); /* tie with 4: lower id first */
  assert_int_equal(ids[1], 4);
  assert_int_equal(ids[2], 3);
  for (int j = 0; j < 3; j++) assert_true(fabs(lps[j] - (l[ids[j]] - log(z))) < 1e-5);
  assert_int_equal(tide_sampler_logprobs(l, 6, 6, &lp, 0, NULL, NULL, &err), TIDE_ERANGE);
  assert_int_equal(tide_sampler_logprobs(l, 6, 0, NULL, 7, ids, lps, &err), TIDE_EINVAL);
}

static void test_sampler_rejects_bad_params(void **state) {
  (void)state;
  tide_sampler_params_t p;
  tide_sampler_t *s = NULL;
  tide_err_t err;
  tide_sampler_params_default(&p);
  p.temperature = -1;
  assert_int_equal(tide_sampler_new(&p, 10, &s, &err), TIDE_EINVAL);
  assert_non_null(strstr(err.msg, "temperature"));
  tide_sampler_params_default(&p);
  p.top_p = 0;
  assert_int_equal(tide_sampler_new(&p, 10, &s, &err), TIDE_EINVAL);
  tide_sampler_params_default(&p);
  p.min_p = 2;
  assert_int_equal(tide_sampler_new(&p, 10, &s, &err), TIDE_EINVAL);
  tide_sampler_params_default(&p);
  p.repetition_penalty = 0;
  assert_int_equal(tide_sampler_new(&p, 10, &s, &err), TIDE_EINVAL);
  tide_sampler_params_default(&p);
  assert_int_equal(tide_sampler_new(&p, 0, &s, &err), TIDE_EINVAL);
  assert_null(s);
  /* every logit -inf at temperature > 0 */
  p.temperature = 1;
  s = make(&p, 2);
  float l[2] = {-INFINITY, -INFINITY};
  int32_t t;
  assert_int_equal(tide_sampler_sample(s, l, &t, &err), TIDE_EINVAL);
  tide_sampler_free(s);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_sampler_greedy_argmax),
      cmocka_unit_test(test_sampler_seed_reproducible),
      cmocka_unit_test(test_sampler_matches_softmax),
      cmocka_unit_test(test_sampler_filters_restrict_support),
      cmocka_unit_test(test_sampler_penalties),
      cmocka_unit_test(test_sampler_logprobs),
      cmocka_unit_test(test_sampler_rejects_bad_params),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
