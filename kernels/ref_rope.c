/* ref_rope.c: rotary frequencies (as Hugging Face transformers computes them,
 * in float32) and the scalar reference rotation. */
#include <math.h>
#include <stdlib.h>

#include "kern.h"

static const double two_pi = 6.283185307179586476925286766559;

/* HF find_correction_dim: dims whose wavelength makes n_rot rotations over orig_max_pos. */
static double corr_dim(double n_rot, int32_t dim, double theta, int32_t orig_max_pos) {
  return (double)dim * log((double)orig_max_pos / (n_rot * two_pi)) / (2.0 * log(theta));
}

int tide_rope_inv_freq(const tide_rope_t *cfg, float *inv_freq, tide_err_t *err) {
  if (!cfg || !inv_freq) return tide_err_set(err, TIDE_EINVAL, "rope: cfg or inv_freq is NULL");
  int32_t dim = cfg->dim, half = dim / 2;
  if (dim <= 0 || dim % 2) return tide_err_set(err, TIDE_EINVAL, "rope: dim %d must be even and positive", (int)dim);
  if (!(cfg->theta > 0.0f)) return tide_err_set(err, TIDE_EINVAL, "rope: theta %g must be positive", cfg->theta);
  if (cfg->scaling != TIDE_ROPE_NONE && !(cfg->factor > 0.0f))
    return tide_err_set(err, TIDE_EINVAL, "rope: factor %g must be positive", cfg->factor);
  if ((cfg->scaling == TIDE_ROPE_LLAMA3 || cfg->scaling == TIDE_ROPE_YARN) && cfg->orig_max_pos <= 0)
    return tide_err_set(err, TIDE_EINVAL, "rope: orig_max_pos %d must be positive", (int)cfg->orig_max_pos);
  if (cfg->scaling == TIDE_ROPE_LLAMA3 && !(cfg->high_freq_factor != cfg->low_freq_factor && cfg->low_freq_factor > 0 &&
                                            cfg->high_freq_factor > 0))
    return tide_err_set(err, TIDE_EINVAL, "rope: llama3 needs distinct positive low/high frequency factors");
  if (cfg->scaling == TIDE_ROPE_YARN && !(cfg->beta_fast > 0 && cfg->beta_slow > 0))
    return tide_err_set(err, TIDE_EINVAL, "rope: yarn needs positive beta_fast and beta_slow");
  /* base: 1 / theta^(arange(0, dim, 2).float() / dim), every step in float32 */
  for (int32_t i = 0; i < half; i++) {
    float e = (float)(2 * i) / (float)dim;
    inv_freq[i] = 1.0f / powf(cfg->theta, e);
  }
  switch (cfg->scaling) {
  case TIDE_ROPE_NONE: break;
  case TIDE_ROPE_LINEAR:
    for (int32_t i = 0; i < half; i++) inv_freq[i] /= cfg->factor;
    break;
  case TIDE_ROPE_LLAMA3: {
    float old = (float)cfg->orig_max_pos, lf = cfg->low_freq_factor, hf = cfg->high_freq_factor, f = cfg->factor;
    float low_wl = (float)((double)cfg->orig_max_pos / lf), high_wl = (float)((double)cfg->orig_max_pos / hf);
    for (int32_t i = 0; i < half; i++) {
      float inv = inv_freq[i];
      float wl = (float)two_pi / inv;
      if (wl > low_wl) {
        inv_freq[i] = inv / f;
      } else if (wl < high_wl) {
        inv_freq[i] = inv;
      } else {
        float smooth = (old / wl - lf) / (hf - lf);
        inv_freq[i] = (1.0f - smooth) * inv / f + smooth * inv;
      }
    }
    break;
  }
  case TIDE_ROPE_YARN: {
    double theta = cfg->theta;
    double lo = floor(corr_dim(cfg->beta_fast, dim, theta, cfg->orig_max_pos));
    double hi = ceil(corr_dim(cfg->beta_slow, dim, theta, cfg->orig_max_pos));
    if (lo < 0) lo = 0;
    if (hi > dim - 1) hi = dim - 1;
    if (lo == hi) hi += 0.001;
    for (int32_t i = 0; i < half; i++) {
      float pos_freq = powf(cfg->theta, (float)(2 * i) / (float)dim);
      float extrap = 1.0f / pos_freq;
      float interp = 1.0f / (cfg->factor * pos_freq);
      float ramp = ((float)i - (float)lo) / (float)(hi - lo);
      ramp = ramp < 0.0f ? 0.0f : ramp > 1.0f ? 1.0f : ramp;
      float ef = 1.0f - ramp; /* extrapolation factor */
      inv_freq[i] = interp * (1.0f - ef) + extrap * ef;
    }
    break;
  }
  default: return tide_err_set(err, TIDE_EINVAL, "rope: unknown scaling %d", (int)cfg->scaling);
  }
  return 0;
}

int tide_ref_rope(tide_tensor_t *x, const tide_tensor_t *pos, const tide_rope_t *cfg, tide_err_t *err) {
  int64_t n_tok, n_head;
  int rc = tide_k_check_rope(x, pos, cfg, &n_tok, &n_head, err);
  if (rc) return rc;
  int32_t half = cfg->dim / 2;
  float *inv = malloc((size_t)half * sizeof(float));
  if (!inv) return tide_err_set(err, TIDE_ENOMEM, "rope: out of memory");
  if ((rc = tide_rope_inv_freq(cfg, inv, err))) {
    free(inv);
    return rc;
  }
  int64_t cs = tide_k_col_stride(x);
  for (int64_t t = 0; t < n_tok; t++) {
    float p = (float)tide_k_i32(pos, t);
    for (int64_t h = 0; h < n_head; h++) {
      char *row = tide_k_row(x, t * n_head + h);
      for (int32_t i = 0; i < half; i++) {
        float ang = p * inv[i];
        float c = cosf(ang) * cfg->attn_factor, s = sinf(ang) * cfg->attn_factor;
        int64_t i0 = cfg->interleaved ? 2 * i : i, i1 = cfg->interleaved ? 2 * i + 1 : i + half;
        float *e0 = (float *)(void *)(row + i0 * cs), *e1 = (float *)(void *)(row + i1 * cs);
        float x0 = *e0, x1 = *e1;
        *e0 = x0 * c - x1 * s;
        *e1 = x1 * c + x0 * s;
      }
    }
  }
  free(inv);
  return 0;
}
