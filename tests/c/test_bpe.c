/* Tests of the BPE merge loop (src/bpe.c): the heap-based loop against a
 * plain quadratic reference (merge the lowest-ranked adjacent pair, leftmost
 * first, until none is left), plus byte fallback, unknowns, ignore_merges,
 * buffer limits and the utf8proc normalizers. */
#include "testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bpe.h"

#define MAXTOK 512

typedef struct {
  char str[MAXTOK][32];
  int32_t n;
  int32_t mleft[MAXTOK], mright[MAXTOK], mout[MAXTOK]; /* merges by rank */
  int32_t nmerges;
} toyvocab_t;

static int32_t toy_find(const toyvocab_t *v, const char *s) {
  for (int32_t i = 0; i < v->n; i++)
    if (strcmp(v->str[i], s) == 0) return i;
  return -1;
}

/* single bytes a..f, then random merges of existing tokens */
static void toy_build(toyvocab_t *v, tu_rng_t *rng, int32_t nmerges) {
  memset(v, 0, sizeof *v);
  for (int c = 'a'; c <= 'f'; c++) {
    v->str[v->n][0] = (char)c;
    v->n++;
  }
  int guard = 0;
  while (v->nmerges < nmerges && guard++ < 100000) {
    int32_t l = (int32_t)tu_randint(rng, 0, v->n - 1), r = (int32_t)tu_randint(rng, 0, v->n - 1);
    if (strlen(v->str[l]) + strlen(v->str[r]) >= 31) continue;
    int dup = 0;
    for (int32_t k = 0; k < v->nmerges; k++) dup |= v->mleft[k] == l && v->mright[k] == r;
    if (dup) continue;
    char buf[32] = {0};
    size_t ll = strlen(v->str[l]), lr = strlen(v->str[r]);
    memcpy(buf, v->str[l], ll);
    memcpy(buf + ll, v->str[r], lr);
    int32_t o = toy_find(v, buf);
    if (o < 0) {
      if (v->n >= MAXTOK) break;
      o = v->n++;
      memcpy(v->str[o], buf, sizeof buf);
    }
    v->mleft[v->nmerges] = l;
    v->mright[v->nmerges] = r;
    v->mout[v->nmerges] = o;
    v->nmerges++;
  }
}

/* reference: quadratic scan */
static size_t ref_encode(const toyvocab_t *v, const char *w, int32_t *out) {
  size_t n = strlen(w);
  for (size_t i = 0; i < n; i++) out[i] = w[i] - 'a';
  for (;;) {
    int32_t best = -1;
    size_t at = 0;
    for (size_t i = 0; i + 1 < n; i++) {
      for (int32_t k = 0; k < v->nmerges; k++) {
        if (v->mleft[k] == out[i] && v->mright[k] == out[i + 1]) {
          if (best < 0 || k < best) {
            best = k;
            at = i;
          }
          break;
        }
      }
    }
    if (best < 0) return n;
    out[at] = v->mout[best];
    memmove(&out[at + 1], &out[at + 2], (n - at - 2) * sizeof *out);
    n--;
  }
}

static tide_bpe_t *toy_bpe(const toyvocab_t *v, int32_t flags) {
  tide_bpe_t *b = NULL;
  tide_err_t err;
  assert_int_equal(tide_bpe_new(flags, -1, &b, &err), 0);
  for (int32_t i = 0; i < v->n; i++) assert_int_equal(tide_bpe_add_token(b, v->str[i], strlen(v->str[i]), i, &err), 0);
  for (int32_t k = 0; k < v->nmerges; k++)
    assert_int_equal(tide_bpe_add_merge(b, v->mleft[k], v->mright[k], v->mout[k], k, &err), 0);
  return b;
}

static void test_bpe_heap_matches_reference(void **state) {
  (void)state;
  tu_rng_t rng = {12345};
  for (int round = 0; round < 8; round++) {
    toyvocab_t *v = malloc(sizeof *v);
    assert_non_null(v);
    toy_build(v, &rng, 40 + 50 * round);
    tide_bpe_t *b = toy_bpe(v, TIDE_BPE_BYTE_LEVEL);
    tide_err_t err;
    for (int t = 0; t < 300; t++) {
      char w[200];
      int len = (int)tu_randint(&rng, 1, 199);
      for (int i = 0; i < len; i++) w[i] = (char)('a' + tu_randint(&rng, 0, round < 4 ? 5 : 1));
      w[len] = 0;
      int32_t want[200], got[200];
      size_t nw = ref_encode(v, w, want), ng = 0;
      assert_int_equal(tide_bpe_encode_word(b, w, (size_t)len, got, 200, &ng, &err), 0);
      assert_int_equal(ng, nw);
      assert_memory_equal(got, want, nw * sizeof *got);
    }
    tide_bpe_release(b);
    free(v);
  }
}

static void test_bpe_buffer_too_small(void **state) {
  (void)state;
  toyvocab_t *v = calloc(1, sizeof *v);
  assert_non_null(v);
  for (int c = 'a'; c <= 'f'; c++) v->str[v->n++][0] = (char)c;
  tide_bpe_t *b = toy_bpe(v, TIDE_BPE_BYTE_LEVEL);
  tide_err_t err;
  int32_t out[2];
  size_t n = 0;
  assert_int_equal(tide_bpe_encode_word(b, "abcd", 4, out, 2, &n, &err), TIDE_ERANGE);
  assert_int_equal(n, 4);
  assert_int_equal(tide_bpe_encode_word(b, "", 0, out, 2, &n, &err), 0);
  assert_int_equal(n, 0);
  assert_int_equal(tide_bpe_encode_word(NULL, "a", 1, out, 2, &n, &err), TIDE_EINVAL);
  assert_int_equal(tide_bpe_add_merge(b, 0, 1, -3, 0, &err), TIDE_EINVAL);
  tide_bpe_release(b);
  free(v);
}

static void test_bpe_unknown_fallback_and_ignore_merges(void **state) {
  (void)state;
  tide_err_t err;
  tide_bpe_t *b = NULL;
  /* characters mode: é is one symbol; z unknown */
  assert_int_equal(tide_bpe_new(TIDE_BPE_BYTE_FALLBACK | TIDE_BPE_FUSE_UNK, 9, &b, &err), 0);
  assert_int_equal(tide_bpe_add_token(b, "a", 1, 0, &err), 0);
  assert_int_equal(tide_bpe_add_token(b, "\xc3\xa9", 2, 1, &err), 0);
  assert_int_equal(tide_bpe_add_token(b, "a\xc3\xa9", 3, 2, &err), 0);
  assert_int_equal(tide_bpe_add_token(b, "<0x7A>", 6, 3, &err), 0); /* byte z */
  assert_int_equal(tide_bpe_add_merge(b, 0, 1, 2, 0, &err), 0);
  assert_int_equal(tide_bpe_token_id(b, "a\xc3\xa9", 3), 2);
  assert_int_equal(tide_bpe_token_id(b, "zz", 2), -1);
  int32_t out[16];
  size_t n = 0;
  assert_int_equal(tide_bpe_encode_word(b, "a\xc3\xa9z", 4, out, 16, &n, &err), 0);
  assert_int_equal(n, 2);
  assert_int_equal(out[0], 2);
  assert_int_equal(out[1], 3); /* byte fallback */
  /* q has no byte token: unk, and consecutive unknowns fuse */
  assert_int_equal(tide_bpe_encode_word(b, "qqa", 3, out, 16, &n, &err), 0);
  assert_int_equal(n, 2);
  assert_int_equal(out[0], 9);
  assert_int_equal(out[1], 0);
  /* invalid UTF-8 in character mode: one symbol per bad byte, no crash */
  assert_int_equal(tide_bpe_encode_word(b, "\xff\xc3", 2, out, 16, &n, &err), 0);
  assert_int_equal(n, 1);
  tide_bpe_release(b);

  assert_int_equal(tide_bpe_new(TIDE_BPE_BYTE_LEVEL | TIDE_BPE_IGNORE_MERGES, -1, &b, &err), 0);
  const char *toks[] = {"a", "b", "ab", "bb", "abb"};
  for (int i = 0; i < 5; i++) assert_int_equal(tide_bpe_add_token(b, toks[i], strlen(toks[i]), i, &err), 0);
  assert_int_equal(tide_bpe_add_merge(b, 1, 1, 3, 0, &err), 0);
  assert_int_equal(tide_bpe_add_merge(b, 0, 1, 2, 1, &err), 0);
  assert_int_equal(tide_bpe_encode_word(b, "abb", 3, out, 16, &n, &err), 0);
  assert_int_equal(n, 1);
  assert_int_equal(out[0], 4);
  assert_int_equal(tide_bpe_encode_word(b, "abbb", 4, out, 16, &n, &err), 0);
  assert_int_equal(n, 3); /* a, bb, b: b+b (rank 0) first, no merge joins a and bb */
  assert_int_equal(out[0], 0);
  assert_int_equal(out[1], 3);
  assert_int_equal(out[2], 1);
  tide_bpe_release(b);
}

static void test_bpe_normalize(void **state) {
  (void)state;
  tide_err_t err;
  char *out = NULL;
  size_t n = 0;
  assert_int_equal(tide_bpe_normalize("e\xcc\x81", 3, 0, &out, &n, &err), 0); /* NFC */
  assert_int_equal(n, 2);
  assert_memory_equal(out, "\xc3\xa9", 2);
  tide_bpe_free(out);
  assert_int_equal(tide_bpe_normalize("\xef\xbc\xa1", 3, 2, &out, &n, &err), 0); /* NFKC fullwidth A */
  assert_int_equal(n, 1);
  assert_int_equal(out[0], 'A');
  tide_bpe_free(out);
  assert_int_equal(tide_bpe_normalize("\xc3\x80" "B\xff", 4, 4, &out, &n, &err), 0); /* lowercase keeps bad bytes */
  assert_int_equal(n, 4);
  assert_memory_equal(out, "\xc3\xa0" "b\xff", 4);
  tide_bpe_free(out);
  assert_int_equal(tide_bpe_normalize("\xff", 1, 0, &out, &n, &err), TIDE_EINVAL);
  assert_null(out);
  assert_int_equal(tide_bpe_normalize("a", 1, 7, &out, &n, &err), TIDE_EINVAL);
}

static void test_bpe_encode_words_cache(void **state) {
  (void)state;
  tu_rng_t rng = {777};
  toyvocab_t *v = malloc(sizeof *v);
  assert_non_null(v);
  toy_build(v, &rng, 200);
  tide_bpe_t *b = toy_bpe(v, TIDE_BPE_BYTE_LEVEL);
  tide_err_t err;
  /* 150000 distinct 8-letter words (more than the cache holds), twice */
  enum { NW = 150000, WL = 8 };
  char *text = malloc(NW * WL);
  int32_t *bounds = malloc((NW + 1) * sizeof *bounds);
  int32_t *out = malloc(NW * WL * sizeof *out);
  assert_true(text && bounds && out);
  for (int i = 0; i < NW; i++) {
    uint32_t x = (uint32_t)i * 2654435761u;
    for (int k = 0; k < WL; k++) text[i * WL + k] = (char)('a' + (x >> (3 * k)) % 6);
    bounds[i] = i * WL;
  }
  bounds[NW] = NW * WL;
  for (int pass = 0; pass < 2; pass++) {
    size_t n = 0;
    assert_int_equal(tide_bpe_encode_words(b, text, NW * WL, bounds, NW, out, NW * WL, &n, &err), 0);
    assert_true(tide_bpe_cache_size(b) <= 131072);
    /* spot-check words against the reference */
    size_t at = 0;
    for (int i = 0; i < NW; i++) {
      char w[WL + 1];
      memcpy(w, text + i * WL, WL);
      w[WL] = 0;
      int32_t want[WL];
      size_t nw = ref_encode(v, w, want);
      if (i % 997 == 0) assert_memory_equal(out + at, want, nw * sizeof *want);
      at += nw;
    }
    assert_int_equal(at, n);
  }
  bounds[1] = -5;
  size_t n = 0;
  assert_int_equal(tide_bpe_encode_words(b, text, NW * WL, bounds, 2, out, NW * WL, &n, &err), TIDE_EINVAL);
  tide_bpe_cache_clear(b);
  assert_int_equal(tide_bpe_cache_size(b), 0);
  free(text);
  free(bounds);
  free(out);
  tide_bpe_release(b);
  free(v);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_bpe_heap_matches_reference),
      cmocka_unit_test(test_bpe_buffer_too_small),
      cmocka_unit_test(test_bpe_unknown_fallback_and_ignore_merges),
      cmocka_unit_test(test_bpe_normalize),
      cmocka_unit_test(test_bpe_encode_words_cache),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
