#include "sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct tide_sampler {
  tide_sampler_params_t p;
  int32_t n_vocab;
  uint64_t rng[4];  /* xoshiro256** state */
  int32_t *counts;  /* (n_vocab) occurrences of each token in the window */
  int32_t *hist;    /* (hist_cap) ring of accepted tokens (window) */
  int32_t hist_cap; /* window length (0 when the window is "all": counts only) */
  int32_t hist_len;
  int32_t hist_head;
  float *work;      /* (n_vocab) transformed logits, then probabilities */
  int32_t *cand;    /* (n_vocab) candidate ids */
};

void tide_sampler_params_default(tide_sampler_params_t *p) {
  memset(p, 0, sizeof *p);
  p->temperature = 0.0f;
  p->top_k = 0;
  p->top_p = 1.0f;
  p->min_p = 0.0f;
  p->repetition_penalty = 1.0f;
  p->presence_penalty = 0.0f;
  p->frequency_penalty = 0.0f;
  p->penalty_last_n = 64;
  p->seed = 0;
}

/* ---- random numbers: splitmix64 seeding, xoshiro256** --------------------- */

static uint64_t splitmix64(uint64_t *x) {
  uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t xoshiro_next(uint64_t *s) {
  uint64_t r = rotl(s[1] * 5, 7) * 9;
  uint64_t t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = rotl(s[3], 45);
  return r;
}

static void seed_rng(tide_sampler_t *s, uint64_t seed) {
  uint64_t x = seed;
  for (int i = 0; i < 4; i++) s->rng[i] = splitmix64(&x);
}

double tide_sampler_uniform(tide_sampler_t *s) { return (double)(xoshiro_next(s->rng) >> 11) * 0x1.0p-53; }

/* ---- life cycle ----------------------------------------------------------- */

static int check_params(const tide_sampler_params_t *p, tide_err_t *err) {
  if (!(p->temperature >= 0.0f) || !isfinite(p->temperature))
    return tide_err_set(err, TIDE_EINVAL, "sampler: temperature must be >= 0 (got %g)", (double)p->temperature);
  if (!(p->top_p > 0.0f) || isnan(p->top_p))
    return tide_err_set(err, TIDE_EINVAL, "sampler: top_p must be in (0, 1] (got %g)", (double)p->top_p);
  if (!(p->min_p >= 0.0f && p->min_p <= 1.0f))
    return tide_err_set(err, TIDE_EINVAL, "sampler: min_p must be in [0, 1] (got %g)", (double)p->min_p);
  if (!(p->repetition_penalty > 0.0f) || !isfinite(p->repetition_penalty))
    return tide_err_set(err, TIDE_EINVAL, "sampler: repetition_penalty must be > 0 (got %g)",
                        (double)p->repetition_penalty);
  if (!isfinite(p->presence_penalty) || !isfinite(p->frequency_penalty))
    return tide_err_set(err, TIDE_EINVAL, "sampler: penalties must be finite");
  return 0;
}

int tide_sampler_new(const tide_sampler_params_t *p, int32_t n_vocab, tide_sampler_t **out, tide_err_t *err) {
  if (!out) return tide_err_set(err, TIDE_EINVAL, "sampler: no output pointer");
  *out = NULL;
  if (n_vocab <= 0) return tide_err_set(err, TIDE_EINVAL, "sampler: bad vocabulary size %d", n_vocab);
  tide_sampler_params_t def;
  if (!p) {
    tide_sampler_params_default(&def);
    p = &def;
  }
  int rc = check_params(p, err);
  if (rc) return rc;
  tide_sampler_t *s = calloc(1, sizeof *s);
  if (!s) return tide_err_set(err, TIDE_ENOMEM, "sampler: out of memory");
  s->p = *p;
  s->n_vocab = n_vocab;
  s->hist_cap = p->penalty_last_n > 0 ? p->penalty_last_n : 0;
  s->counts = calloc((size_t)n_vocab, sizeof *s->counts);
  s->work = malloc((size_t)n_vocab * sizeof *s->work);
  s->cand = malloc((size_t)n_vocab * sizeof *s->cand);
  s->hist = s->hist_cap ? malloc((size_t)s->hist_cap * sizeof *s->hist) : NULL;
  if (!s->counts || !s->work || !s->cand || (s->hist_cap && !s->hist)) {
    tide_sampler_free(s);
    return tide_err_set(err, TIDE_ENOMEM, "sampler: out of memory for a vocabulary of %d", n_vocab);
  }
  seed_rng(s, p->seed);
  *out = s;
  return 0;
}

void tide_sampler_free(tide_sampler_t *s) {
  if (!s) return;
  free(s->counts);
  free(s->hist);
  free(s->work);
  free(s->cand);
  free(s);
}

void tide_sampler_reset(tide_sampler_t *s, uint64_t seed) {
  memset(s->counts, 0, (size_t)s->n_vocab * sizeof *s->counts);
  s->hist_len = 0;
  s->hist_head = 0;
  s->p.seed = seed;
  seed_rng(s, seed);
}

int tide_sampler_accept(tide_sampler_t *s, int32_t token, tide_err_t *err) {
  if (token < 0 || token >= s->n_vocab)
    return tide_err_set(err, TIDE_ERANGE, "sampler: token %d outside the vocabulary of %d", token, s->n_vocab);
  if (s->p.penalty_last_n == 0) return 0;
  if (s->hist_cap > 0) {
    if (s->hist_len == s->hist_cap) {
      s->counts[s->hist[s->hist_head]]--;
      s->hist_len--;
      s->hist_head = (s->hist_head + 1) % s->hist_cap;
    }
    s->hist[(s->hist_head + s->hist_len) % s->hist_cap] = token;
    s->hist_len++;
  }
  s->counts[token]++;
  return 0;
}

/* ---- sampling ------------------------------------------------------------- */

/* Index of the largest value (ties to the lower index; nan never wins). */
static int32_t argmax(const float *x, int32_t n) {
  int32_t best = 0;
  float bv = -INFINITY;
  for (int32_t i = 0; i < n; i++) {
    if (x[i] > bv) {
      bv = x[i];
      best = i;
    }
  }
  return best;
}

/* Descending by value, ties to the lower id. */
static int cmp_desc(const void *a, const void *b, void *ctx) {
  const float *v = ctx;
  int32_t ia = *(const int32_t *)a, ib = *(const int32_t *)b;
  if (v[ia] > v[ib]) return -1;
  if (v[ia] < v[ib]) return 1;
  return ia < ib ? -1 : (ia > ib);
}

static void sort_cands(int32_t *cand, int32_t n, const float *vals) {
  qsort_r(cand, (size_t)n, sizeof *cand, cmp_desc, (void *)vals);
}

/* Sift-down for a min-heap of ids keyed by vals (smallest value, then higher id, on top). */
static int heap_less(const float *v, int32_t a, int32_t b) { return v[a] < v[b] || (v[a] == v[b] && a > b); }

static void heap_down(int32_t *h, int32_t n, int32_t i, const float *v) {
  for (;;) {
    int32_t l = 2 * i + 1, r = l + 1, m = i;
    if (l < n && heap_less(v, h[l], h[m])) m = l;
    if (r < n && heap_less(v, h[r], h[m])) m = r;
    if (m == i) return;
    int32_t t = h[i];
    h[i] = h[m];
    h[m] = t;
    i = m;
  }
}

/* The k largest of vals[0..n) into cand (sorted descending). */
static int32_t top_k_ids(const float *vals, int32_t n, int32_t k, int32_t *cand) {
  if (k > n) k = n;
  for (int32_t i = 0; i < k; i++) cand[i] = i;
  for (int32_t i = k / 2 - 1; i >= 0; i--) heap_down(cand, k, i, vals);
  for (int32_t i = k; i < n; i++) {
    if (heap_less(vals, cand[0], i)) {
      cand[0] = i;
      heap_down(cand, k, 0, vals);
    }
  }
  sort_cands(cand, k, vals);
  return k;
}

int tide_sampler_sample(tide_sampler_t *s, const float *logits, int32_t *token, tide_err_t *err) {
  if (!logits || !token) return tide_err_set(err, TIDE_EINVAL, "sampler: missing logits or output");
  const int32_t V = s->n_vocab;
  float *w = s->work;
  const tide_sampler_params_t *p = &s->p;
  int penal = p->penalty_last_n != 0 &&
              (p->repetition_penalty != 1.0f || p->presence_penalty != 0.0f || p->frequency_penalty != 0.0f);
  if (p->temperature <= 0.0f && !penal) { /* plain greedy: no copy */
    *token = argmax(logits, V);
    return 0;
  }
  memcpy(w, logits, (size_t)V * sizeof *w);
  for (int32_t i = 0; i < V; i++)
    if (isnan(w[i])) w[i] = -INFINITY;
  /* penalties over the tokens seen in the window */
  if (penal) {
    for (int32_t i = 0; i < V; i++) {
      int32_t c = s->counts[i];
      if (c <= 0) continue;
      float x = w[i];
      if (p->repetition_penalty != 1.0f) x = x > 0 ? x / p->repetition_penalty : x * p->repetition_penalty;
      x -= p->presence_penalty + p->frequency_penalty * (float)c;
      w[i] = x;
    }
  }
  if (p->temperature <= 0.0f) {
    *token = argmax(w, V);
    return 0;
  }
  const float inv_t = 1.0f / p->temperature;
  for (int32_t i = 0; i < V; i++) w[i] *= inv_t;
  int32_t *cand = s->cand;
  int32_t n;
  int sorted = 0;
  if (p->top_k > 0 && p->top_k < V) {
    n = top_k_ids(w, V, p->top_k, cand);
    sorted = 1;
  } else {
    n = V;
    for (int32_t i = 0; i < V; i++) cand[i] = i;
  }
  /* probabilities over the candidates (in w, indexed by id) */
  float mx = -INFINITY;
  for (int32_t j = 0; j < n; j++) mx = fmaxf(mx, w[cand[j]]);
  if (mx == -INFINITY) return tide_err_set(err, TIDE_EINVAL, "sampler: every logit is -inf or nan");
  double sum = 0;
  for (int32_t j = 0; j < n; j++) {
    float e = expf(w[cand[j]] - mx);
    w[cand[j]] = e;
    sum += e;
  }
  for (int32_t j = 0; j < n; j++) w[cand[j]] = (float)(w[cand[j]] / sum);
  if (p->top_p < 1.0f) {
    if (!sorted) {
      /* Only tokens with p >= tau can be in the nucleus once the mass at or
       * above tau reaches top_p: shrink tau until it does, then sort those. */
      float tau = 1e-3f;
      for (;;) {
        double mass = 0;
        int32_t m = 0;
        for (int32_t j = 0; j < n; j++) {
          if (w[cand[j]] >= tau) {
            mass += w[cand[j]];
            cand[m++] = cand[j];
          }
        }
        if (mass >= p->top_p || tau == 0.0f) {
          /* keep the pruned set (restore the rest is unnecessary: excluded anyway) */
          n = m;
          break;
        }
        /* re-fill and lower the bar */
        for (int32_t i = 0; i < V; i++) cand[i] = i;
        tau = tau > 1e-12f ? tau * 1e-3f : 0.0f;
      }
      sort_cands(cand, n, w);
      sorted = 1;
    }
    double cum = 0;
    int32_t keep = n;
    for (int32_t j = 0; j < n; j++) {
      cum += w[cand[j]];
      if (cum >= p->top_p) {
        keep = j + 1;
        break;
      }
    }
    n = keep;
  }
  if (p->min_p > 0.0f) {
    float pmax = 0;
    for (int32_t j = 0; j < n; j++) pmax = fmaxf(pmax, w[cand[j]]);
    float bar = p->min_p * pmax;
    int32_t m = 0;
    for (int32_t j = 0; j < n; j++)
      if (w[cand[j]] >= bar) cand[m++] = cand[j];
    n = m;
  }
  double tot = 0;
  for (int32_t j = 0; j < n; j++) tot += w[cand[j]];
  double u = tide_sampler_uniform(s) * tot;
  double acc = 0;
  int32_t pick = cand[n - 1];
  for (int32_t j = 0; j < n; j++) {
    acc += w[cand[j]];
    if (u < acc) {
      pick = cand[j];
      break;
    }
  }
  *token = pick;
  return 0;
}

int tide_sampler_logprobs(const float *logits, int32_t n_vocab, int32_t chosen, float *chosen_lp, int32_t n_top,
                          int32_t *top_ids, float *top_lps, tide_err_t *err) {
  if (!logits || n_vocab <= 0) return tide_err_set(err, TIDE_EINVAL, "logprobs: no logits");
  if (chosen_lp && (chosen < 0 || chosen >= n_vocab))
    return tide_err_set(err, TIDE_ERANGE, "logprobs: token %d outside the vocabulary of %d", chosen, n_vocab);
  if (n_top < 0 || n_top > n_vocab || (n_top > 0 && (!top_ids || !top_lps)))
    return tide_err_set(err, TIDE_EINVAL, "logprobs: bad top-n request %d", n_top);
  float mx = -INFINITY;
  for (int32_t i = 0; i < n_vocab; i++)
    if (logits[i] > mx) mx = logits[i];
  double sum = 0;
  for (int32_t i = 0; i < n_vocab; i++) sum += exp((double)logits[i] - mx);
  double lse = mx + log(sum);
  if (chosen_lp) *chosen_lp = (float)(logits[chosen] - lse);
  /* insertion into a small sorted list: n_top is small */
  int32_t have = 0;
  for (int32_t i = 0; i < n_vocab && n_top > 0; i++) {
    float v = logits[i];
    if (have == n_top && !(v > logits[top_ids[have - 1]])) continue;
    int32_t j = have < n_top ? have++ : n_top - 1;
    while (j > 0 && v > logits[top_ids[j - 1]]) {
      top_ids[j] = top_ids[j - 1];
      j--;
    }
    top_ids[j] = i;
  }
  for (int32_t j = 0; j < n_top; j++) top_lps[j] = (float)(logits[top_ids[j]] - lse);
  return 0;
}
