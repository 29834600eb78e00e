/* ref_attention.c: scalar references for kv_store and paged causal attention
 * (caches in f32, bf16, f16, f8_e4m3 or the q8_0 block format). */
#include <math.h>
#include <stdlib.h>

#include "kern.h"

/* Element c of a cache row as float32. */
static float cache_get(const tide_tensor_t *c, const tide_k_cache_t *cd, const char *row, int64_t col) {
  const tide_dtype_traits_t *tr = tide_dtype_traits(c->dtype);
  float v;
  if (tr->block_size > 1) { /* block-quantized cache (q8_0 KV): dequantize the block holding col */
    float blk[256];
    if (tr->block_size > 256) return NAN;
    tr->to_float(row + col / tr->block_size * tr->block_bytes, blk, tr->block_size);
    return blk[col % tr->block_size];
  }
  tr->to_float(row + col * cd->s_col, &v, 1);
  return v;
}

/* Cache row holding (seq of token t, position p), head h. */
static char *slot(const tide_tensor_t *c, const tide_k_cache_t *cd, const tide_batch_t *b, int64_t t, int64_t p,
                  int64_t h) {
  int32_t s = b->tok_seq[t];
  int32_t blk = b->block_table[(int64_t)s * b->max_blocks + p / b->block_size];
  return tide_k_cache_row(c, cd, blk, p % b->block_size, h);
}

int tide_ref_kv_store(tide_tensor_t *cache, const tide_tensor_t *src, const tide_batch_t *batch, tide_err_t *err) {
  tide_k_cache_t cd;
  int rc = tide_k_check_kv_store(cache, src, batch, &cd, err);
  if (rc) return rc;
  const tide_dtype_traits_t *tr = tide_dtype_traits(cache->dtype);
  if (tr->block_size > 1) { /* block-quantized cache: gather the row, quantize its blocks */
    float *tmp = malloc((size_t)cd.d * sizeof(float));
    if (!tmp) return tide_err_set(err, TIDE_ENOMEM, "kv_store: out of memory");
    for (int64_t t = 0; t < batch->n_tok; t++)
      for (int64_t h = 0; h < cd.n_kv; h++) {
        for (int64_t c = 0; c < cd.d; c++) tmp[c] = tide_k_get(src, t * cd.n_kv + h, c);
        tr->from_float(tmp, slot(cache, &cd, batch, t, batch->tok_pos[t], h), cd.d);
      }
    free(tmp);
    return 0;
  }
  for (int64_t t = 0; t < batch->n_tok; t++)
    for (int64_t h = 0; h < cd.n_kv; h++) {
      char *row = slot(cache, &cd, batch, t, batch->tok_pos[t], h);
      for (int64_t c = 0; c < cd.d; c++) {
        float v = tide_k_get(src, t * cd.n_kv + h, c);
        tr->from_float(&v, row + c * cd.s_col, 1);
      }
    }
  return 0;
}

int tide_ref_attention(tide_tensor_t *out, const tide_tensor_t *q, const tide_tensor_t *k_cache,
                       const tide_tensor_t *v_cache, const tide_batch_t *batch, float scale, tide_err_t *err) {
  tide_k_attn_t at;
  int rc = tide_k_check_attention(out, q, k_cache, v_cache, batch, &at, err);
  if (rc) return rc;
  float *p = malloc((size_t)(at.max_len + 1) * sizeof(float));
  if (!p) return tide_err_set(err, TIDE_ENOMEM, "attention: out of memory");
  int64_t group = at.n_head / at.k.n_kv;
  float *o = out->data;
  for (int64_t t = 0; t < at.n_tok; t++) {
    int64_t len = (int64_t)batch->tok_pos[t] + 1;
    for (int64_t h = 0; h < at.n_head; h++) {
      int64_t kvh = h / group;
      float m = -INFINITY;
      for (int64_t j = 0; j < len; j++) {
        const char *kr = slot(k_cache, &at.k, batch, t, j, kvh);
        float s = 0.0f;
        for (int64_t c = 0; c < at.dk; c++) s += tide_k_get(q, t * at.n_head + h, c) * cache_get(k_cache, &at.k, kr, c);
        p[j] = s * scale;
        if (p[j] > m) m = p[j];
      }
      double sum = 0.0;
      for (int64_t j = 0; j < len; j++) {
        p[j] = m == -INFINITY ? 0.0f : expf(p[j] - m);
        sum += p[j];
      }
      for (int64_t j = 0; j < len; j++) p[j] = sum > 0 ? p[j] / (float)sum : 0.0f;
      float *orow = o + (t * at.n_head + h) * at.dv;
      for (int64_t c = 0; c < at.dv; c++) {
        float acc = 0.0f;
        for (int64_t j = 0; j < len; j++)
          acc += p[j] * cache_get(v_cache, &at.v, slot(v_cache, &at.v, batch, t, j, kvh), c);
        orow[c] = acc;
      }
    }
  }
  free(p);
  return 0;
}
