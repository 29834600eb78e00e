/* sampler.h: the hot part of token sampling. A sampler object owns its
 * parameters, its random generator (xoshiro256**, seeded) and the token
 * history used by the penalties, plus scratch sized to the vocabulary, so a
 * sampling call allocates nothing. Order of the transforms:
 *   penalties (repetition, then frequency/presence, over the last
 *   penalty_last_n accepted tokens) -> greedy if temperature <= 0 ->
 *   logits / temperature -> top-k -> top-p -> min-p -> draw.
 * Stop strings, stop ids and EOS are handled by the caller (Lua). */
#ifndef TIDE_SAMPLER_H
#define TIDE_SAMPLER_H

#ifndef TIDE_FFI
#include <stdint.h>
#endif
#include "error.h"

typedef struct tide_sampler_params {
  float temperature;        /* <= 0: greedy (argmax, ties to the lower id) */
  int32_t top_k;            /* keep the k most likely; <= 0: off */
  float top_p;              /* keep the smallest set with mass >= top_p; >= 1: off */
  float min_p;              /* drop p < min_p * p_max; <= 0: off */
  float repetition_penalty; /* seen tokens: logit > 0 ? logit / r : logit * r; 1: off */
  float presence_penalty;   /* seen tokens: logit -= presence; 0: off */
  float frequency_penalty;  /* seen tokens: logit -= frequency * count; 0: off */
  int32_t penalty_last_n;   /* history window for penalties; < 0: all accepted tokens */
  uint64_t seed;
} tide_sampler_params_t;

typedef struct tide_sampler tide_sampler_t;

/* Defaults: greedy, no filters, no penalties, window 64, seed 0. */
void tide_sampler_params_default(tide_sampler_params_t *p);
int tide_sampler_new(const tide_sampler_params_t *p, int32_t n_vocab, tide_sampler_t **out, tide_err_t *err);
void tide_sampler_free(tide_sampler_t *s);
/* Forget the history and reseed. */
void tide_sampler_reset(tide_sampler_t *s, uint64_t seed);
/* Record a token (prompt or generated) in the penalty history. */
int tide_sampler_accept(tide_sampler_t *s, int32_t token, tide_err_t *err);
/* Pick a token from logits (n_vocab floats; not modified). */
int tide_sampler_sample(tide_sampler_t *s, const float *logits, int32_t *token, tide_err_t *err);
/* Uniform double in [0, 1) from the sampler's generator (for tests and policies). */
double tide_sampler_uniform(tide_sampler_t *s);

/* Log-probabilities under log_softmax(logits) (n_vocab): of token `chosen`
 * (when chosen_lp is not NULL) and of the n_top most likely tokens, sorted
 * descending, ties to the lower id (top_ids/top_lps hold n_top entries). */
int tide_sampler_logprobs(const float *logits, int32_t n_vocab, int32_t chosen, float *chosen_lp, int32_t n_top,
                          int32_t *top_ids, float *top_lps, tide_err_t *err);

#endif
