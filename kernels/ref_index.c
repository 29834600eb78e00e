/* ref_index.c: scalar references for get_rows, scatter_add and topk. */
#include <math.h>

#include "kern.h"

int tide_ref_get_rows(tide_tensor_t *out, const tide_tensor_t *table, const tide_tensor_t *ids, tide_err_t *err) {
  int rc = tide_k_check_get_rows(out, table, ids, err);
  if (rc) return rc;
  int64_t n = tide_tensor_numel(ids), D = table->shape[1];
  float *o = out->data;
  for (int64_t i = 0; i < n; i++) {
    int32_t id = tide_k_i32(ids, i);
    for (int64_t c = 0; c < D; c++) o[i * D + c] = tide_k_get(table, id, c);
  }
  return 0;
}

int tide_ref_scatter_add(tide_tensor_t *out, const tide_tensor_t *src, const tide_tensor_t *idx, const tide_tensor_t *w,
                         tide_err_t *err) {
  int rc = tide_k_check_scatter_add(out, src, idx, w, err);
  if (rc) return rc;
  int64_t M = src->shape[0], D = src->shape[1];
  float *o = out->data;
  for (int64_t i = 0; i < M; i++) {
    int64_t r = tide_k_i32(idx, i);
    float wi = 1.0f;
    if (w) {
      int64_t wc = i % tide_k_inner(w);
      wi = *(const float *)(const void *)(tide_k_row(w, i / tide_k_inner(w)) + wc * tide_k_col_stride(w));
    }
    for (int64_t c = 0; c < D; c++) {
      float p = wi * tide_k_get(src, i, c);
      o[r * D + c] = o[r * D + c] + p;
    }
  }
  return 0;
}

/* Total order used by topk: larger value first, NaN above everything (as torch),
 * ties to the lower index. Returns 1 when (va, ia) comes before (vb, ib). */
int tide_k_topk_before(float va, int64_t ia, float vb, int64_t ib) {
  int na = isnan(va), nb = isnan(vb);
  if (na || nb) return na && nb ? ia < ib : na;
  if (va != vb) return va > vb;
  return ia < ib;
}

int tide_ref_topk(tide_tensor_t *vals, tide_tensor_t *idx, const tide_tensor_t *x, int32_t k, tide_err_t *err) {
  int rc = tide_k_check_topk(vals, idx, x, k, err);
  if (rc) return rc;
  int64_t M = tide_k_rows(x), N = tide_k_inner(x);
  float *ov = vals->data;
  int32_t *oi = idx->data;
  /* Selection: pick j is the first element in the total order that comes
   * after pick j-1. */
  for (int64_t r = 0; r < M; r++) {
    float pv = 0.0f;
    int64_t pi = -1;
    for (int32_t j = 0; j < k; j++) {
      int64_t best = -1;
      float bv = 0.0f;
      for (int64_t c = 0; c < N; c++) {
        float v = tide_k_get(x, r, c);
        if (pi >= 0 && !tide_k_topk_before(pv, pi, v, c)) continue; /* already taken */
        if (best < 0 || tide_k_topk_before(v, c, bv, best)) {
          best = c;
          bv = v;
        }
      }
      ov[r * k + j] = bv;
      oi[r * k + j] = (int32_t)best;
      pv = bv;
      pi = best;
    }
  }
  return 0;
}
