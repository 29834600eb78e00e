/* check.c: argument validation shared by the references and the fast paths,
 * so both accept and refuse exactly the same inputs. */
#include "kern.h"

int tide_k_check_matmul(const tide_tensor_t *out, const tide_tensor_t *a, const tide_tensor_t *b, int32_t trans_b,
                        tide_k_mm_t *mm, tide_err_t *err) {
  int rc;
  if ((rc = tide_k_check_float(a, "matmul", "a", err)) || (rc = tide_k_check_float(b, "matmul", "b", err)) ||
      (rc = tide_k_check_out_f32(out, "matmul", "out", err)))
    return rc;
  char s1[96], s2[96], s3[96];
  if (a->ndim != 2 || b->ndim != 2 || out->ndim != 2)
    return tide_err_set(err, TIDE_ESHAPE, "matmul: a %s, b %s and out %s must be 2-D", tide_k_shape_str(a, s1, 96),
                        tide_k_shape_str(b, s2, 96), tide_k_shape_str(out, s3, 96));
  if (trans_b != 0 && trans_b != 1) return tide_err_set(err, TIDE_EINVAL, "matmul: trans_b must be 0 or 1");
  int64_t M = a->shape[0], K = a->shape[1];
  int64_t N = trans_b ? b->shape[0] : b->shape[1];
  int64_t Kb = trans_b ? b->shape[1] : b->shape[0];
  if (Kb != K || out->shape[0] != M || out->shape[1] != N)
    return tide_err_set(err, TIDE_ESHAPE, "matmul: a %s @ b%s %s does not give out %s", tide_k_shape_str(a, s1, 96),
                        trans_b ? "^T" : "", tide_k_shape_str(b, s2, 96), tide_k_shape_str(out, s3, 96));
  mm->M = M;
  mm->N = N;
  mm->K = K;
  return 0;
}

/* out: f32 contiguous with x's rows and row length. */
static int check_out_like(const tide_tensor_t *out, const tide_tensor_t *x, const char *op, tide_err_t *err) {
  int rc = tide_k_check_out_f32(out, op, "out", err);
  if (rc) return rc;
  if (tide_tensor_numel(out) != tide_tensor_numel(x) || tide_k_inner(out) != tide_k_inner(x)) {
    char s1[96], s2[96];
    return tide_err_set(err, TIDE_ESHAPE, "%s: out %s does not match input %s", op, tide_k_shape_str(out, s1, 96),
                        tide_k_shape_str(x, s2, 96));
  }
  return 0;
}

int tide_k_check_binary(const char *op, const tide_tensor_t *out, const tide_tensor_t *a, const tide_tensor_t *b,
                        int *bmode, tide_err_t *err) {
  int rc;
  if ((rc = tide_k_check_float(a, op, "a", err)) || (rc = tide_k_check_float(b, op, "b", err)) ||
      (rc = check_out_like(out, a, op, err)))
    return rc;
  if (tide_k_same_shape(a, b)) {
    *bmode = TIDE_K_BCAST_FULL;
  } else if (tide_k_rows(b) == 1 && tide_k_inner(b) == tide_k_inner(a)) {
    *bmode = TIDE_K_BCAST_ROW;
  } else if (tide_tensor_numel(b) == 1) {
    *bmode = TIDE_K_BCAST_SCALAR;
  } else {
    char s1[96], s2[96];
    return tide_err_set(err, TIDE_ESHAPE, "%s: b %s does not broadcast to a %s", op, tide_k_shape_str(b, s1, 96),
                        tide_k_shape_str(a, s2, 96));
  }
  return 0;
}

int tide_k_check_unary(const char *op, const tide_tensor_t *out, const tide_tensor_t *x, tide_err_t *err) {
  int rc;
  if ((rc = tide_k_check_float(x, op, "x", err)) || (rc = check_out_like(out, x, op, err))) return rc;
  return 0;
}

int tide_k_check_swiglu(const tide_tensor_t *out, const tide_tensor_t *gate, const tide_tensor_t *up, tide_err_t *err) {
  int rc;
  if ((rc = tide_k_check_float(gate, "swiglu", "gate", err)) || (rc = tide_k_check_float(up, "swiglu", "up", err)) ||
      (rc = check_out_like(out, gate, "swiglu", err)))
    return rc;
  if (!tide_k_same_shape(gate, up)) {
    char s1[96], s2[96];
    return tide_err_set(err, TIDE_ESHAPE, "swiglu: gate %s and up %s differ", tide_k_shape_str(gate, s1, 96),
                        tide_k_shape_str(up, s2, 96));
  }
  return 0;
}

int tide_k_check_convert(const tide_tensor_t *out, const tide_tensor_t *x, tide_err_t *err) {
  int rc;
  if ((rc = tide_k_check_float(x, "convert", "x", err)) || (rc = tide_k_check_writable(out, "convert", "out", err)))
    return rc;
  const tide_dtype_traits_t *tr = tide_dtype_traits(out->dtype);
  if (!tr->from_float)
    return tide_err_set(err, TIDE_EUNSUPPORTED, "convert: no conversion to %s", tr->name);
  if (out->scale) return tide_err_set(err, TIDE_EUNSUPPORTED, "convert: out with block scales");
  if (tide_tensor_numel(out) != tide_tensor_numel(x) || tide_k_inner(out) != tide_k_inner(x)) {
    char s1[96], s2[96];
    return tide_err_set(err, TIDE_ESHAPE, "convert: out %s does not match x %s", tide_k_shape_str(out, s1, 96),
                        tide_k_shape_str(x, s2, 96));
  }
  return 0;
}

int tide_k_check_rmsnorm(const tide_tensor_t *out, const tide_tensor_t *x, const tide_tensor_t *w, tide_err_t *err) {
  int rc;
  if ((rc = tide_k_check_float(x, "rmsnorm", "x", err)) || (rc = tide_k_check_float(w, "rmsnorm", "w", err)) ||
      (rc = check_out_like(out, x, "rmsnorm", err)))
    return rc;
  if (tide_tensor_numel(w) != tide_k_inner(x) || tide_k_inner(w) != tide_k_inner(x)) {
    char s1[96], s2[96];
    return tide_err_set(err, TIDE_ESHAPE, "rmsnorm: w %s does not match the rows of x %s", tide_k_shape_str(w, s1, 96),
                        tide_k_shape_str(x, s2, 96));
  }
  return 0;
}

int tide_k_check_softmax(const tide_tensor_t *out, const tide_tensor_t *x, tide_err_t *err) {
  return tide_k_check_unary("softmax", out, x, err);
}

int tide_k_check_rope(const tide_tensor_t *x, const tide_tensor_t *pos, const tide_rope_t *cfg, int64_t *n_tok,
                      int64_t *n_head, tide_err_t *err) {
  int rc;
  if ((rc = tide_k_check_writable(x, "rope", "x", err))) return rc;
  if (!cfg) return tide_err_set(err, TIDE_EINVAL, "rope: cfg is NULL");
  if (x->dtype != TIDE_DTYPE_F32)
    return tide_err_set(err, TIDE_EDTYPE, "rope: x has dtype %s, expected f32", tide_dtype_traits(x->dtype)->name);
  if (x->ndim != 2 && x->ndim != 3)
    return tide_err_set(err, TIDE_ESHAPE, "rope: x must be (n_tok, n_head, head_dim) or (n_tok, head_dim)");
  *n_tok = x->shape[0];
  *n_head = x->ndim == 3 ? x->shape[1] : 1;
  if ((rc = tide_k_check_i32(pos, *n_tok, "rope", "pos", err))) return rc;
  if (cfg->dim <= 0 || cfg->dim % 2 || cfg->dim > tide_k_inner(x))
    return tide_err_set(err, TIDE_EINVAL, "rope: dim %d must be even and in (0, head_dim %lld]", (int)cfg->dim,
                        (long long)tide_k_inner(x));
  return 0;
}

int tide_k_check_get_rows(const tide_tensor_t *out, const tide_tensor_t *table, const tide_tensor_t *ids,
                          tide_err_t *err) {
  int rc;
  if ((rc = tide_k_check_float(table, "get_rows", "table", err)) ||
      (rc = tide_k_check_out_f32(out, "get_rows", "out", err)) || (rc = tide_k_check_tensor(ids, "get_rows", "ids", err)))
    return rc;
  if (table->ndim != 2) return tide_err_set(err, TIDE_ESHAPE, "get_rows: table must be 2-D (V, D)");
  int64_t n = tide_tensor_numel(ids), D = table->shape[1], V = table->shape[0];
  if ((rc = tide_k_check_i32(ids, n, "get_rows", "ids", err))) return rc;
  if (tide_tensor_numel(out) != n * D || tide_k_inner(out) != D) {
    char s1[96];
    return tide_err_set(err, TIDE_ESHAPE, "get_rows: out %s is not (%lld, %lld)", tide_k_shape_str(out, s1, 96),
                        (long long)n, (long long)D);
  }
  for (int64_t i = 0; i < n; i++) {
    int32_t id = tide_k_i32(ids, i);
    if (id < 0 || id >= V)
      return tide_err_set(err, TIDE_ERANGE, "get_rows: id %d (at %lld) outside [0, %lld)", (int)id, (long long)i,
                          (long long)V);
  }
  return 0;
}

int tide_k_check_scatter_add(const tide_tensor_t *out, const tide_tensor_t *src, const tide_tensor_t *idx,
                             const tide_tensor_t *w, tide_err_t *err) {
  int rc;
  if ((rc = tide_k_check_out_f32(out, "scatter_add", "out", err)) ||
      (rc = tide_k_check_float(src, "scatter_add", "src", err)))
    return rc;
  if (out->ndim != 2 || src->ndim != 2 || out->shape[1] != src->shape[1]) {
    char s1[96], s2[96];
    return tide_err_set(err, TIDE_ESHAPE, "scatter_add: out %s and src %s must be (N, D) and (M, D)",
                        tide_k_shape_str(out, s1, 96), tide_k_shape_str(src, s2, 96));
  }
  int64_t M = src->shape[0], N = out->shape[0];
  if ((rc = tide_k_check_i32(idx, M, "scatter_add", "idx", err))) return rc;
  if (w) {
    if ((rc = tide_k_check_tensor(w, "scatter_add", "w", err))) return rc;
    if (w->dtype != TIDE_DTYPE_F32)
      return tide_err_set(err, TIDE_EDTYPE, "scatter_add: w has dtype %s, expected f32",
                          tide_dtype_traits(w->dtype)->name);
    if (tide_tensor_numel(w) != M)
      return tide_err_set(err, TIDE_ESHAPE, "scatter_add: w has %lld elements, expected %lld",
                          (long long)tide_tensor_numel(w), (long long)M);
  }
  for (int64_t i = 0; i < M; i++) {
    int32_t r = tide_k_i32(idx, i);
    if (r < 0 || r >= N)
      return tide_err_set(err, TIDE_ERANGE, "scatter_add: idx %d (at %lld) outside [0, %lld)", (int)r, (long long)i,
                          (long long)N);
  }
  return 0;
}

int tide_k_check_topk(const tide_tensor_t *vals, const tide_tensor_t *idx, const tide_tensor_t *x, int32_t k,
                      tide_err_t *err) {
  int rc;
  if ((rc = tide_k_check_float(x, "topk", "x", err)) || (rc = tide_k_check_out_f32(vals, "topk", "vals", err)) ||
      (rc = tide_k_check_writable(idx, "topk", "idx", err)))
    return rc;
  if (idx->dtype != TIDE_DTYPE_I32 || !tide_tensor_is_contiguous(idx))
    return tide_err_set(err, TIDE_EDTYPE, "topk: idx must be contiguous i32");
  int64_t N = tide_k_inner(x), M = tide_k_rows(x);
  if (k < 1 || k > N)
    return tide_err_set(err, TIDE_EINVAL, "topk: k %d outside [1, %lld]", (int)k, (long long)N);
  if (tide_k_inner(vals) != k || tide_k_rows(vals) != M || tide_k_inner(idx) != k || tide_k_rows(idx) != M) {
    char s1[96], s2[96];
    return tide_err_set(err, TIDE_ESHAPE, "topk: vals %s and idx %s must be (%lld, %d)", tide_k_shape_str(vals, s1, 96),
                        tide_k_shape_str(idx, s2, 96), (long long)M, (int)k);
  }
  return 0;
}

/* Views a cache (n_blocks, block_size, n_kv_head, d) or (n_blocks, block_size, d). */
static int cache_dims(const tide_tensor_t *c, const char *op, const char *name, tide_k_cache_t *cd, tide_err_t *err) {
  if (c->ndim == 4) {
    cd->n_blocks = c->shape[0];
    cd->block_size = c->shape[1];
    cd->n_kv = c->shape[2];
    cd->d = c->shape[3];
    cd->s_block = c->stride[0];
    cd->s_row = c->stride[1];
    cd->s_head = c->stride[2];
  } else if (c->ndim == 3) {
    cd->n_blocks = c->shape[0];
    cd->block_size = c->shape[1];
    cd->n_kv = 1;
    cd->d = c->shape[2];
    cd->s_block = c->stride[0];
    cd->s_row = c->stride[1];
    cd->s_head = 0;
  } else {
    return tide_err_set(err, TIDE_ESHAPE, "%s: %s must be (n_blocks, block_size, n_kv_head, d)", op, name);
  }
  const tide_dtype_traits_t *tr = tide_dtype_traits(c->dtype);
  if (tr->block_size != 1) {
    /* a block-quantized cache (q8_0 KV): whole blocks per row, rows dense;
     * kernels convert rows (or block-aligned chunks of them) at once */
    if (!tr->to_float || !tr->from_float || cd->d % tr->block_size || c->stride[c->ndim - 1] != tr->block_bytes)
      return tide_err_set(err, TIDE_EUNSUPPORTED, "%s: %s of dtype %s needs rows of whole %d-value blocks", op, name,
                          tr->name, (int)tr->block_size);
    cd->s_col = 0;
    cd->dense = 1;
    if (c->scale) return tide_err_set(err, TIDE_EUNSUPPORTED, "%s: %s with block scales", op, name);
    return 0;
  }
  cd->s_col = tide_k_col_stride(c);
  cd->dense = tide_k_row_dense(c);
  if (c->scale) return tide_err_set(err, TIDE_EUNSUPPORTED, "%s: %s with block scales", op, name);
  return 0;
}

/* Token t's (seq, pos) slot; ERANGE for anything outside the table or cache. */
static int check_token(const tide_batch_t *b, int64_t t, const char *op, tide_err_t *err) {
  int32_t s = b->tok_seq[t], p = b->tok_pos[t];
  if (s < 0 || s >= b->n_seq)
    return tide_err_set(err, TIDE_ERANGE, "%s: token %lld has sequence %d outside [0, %d)", op, (long long)t, (int)s,
                        (int)b->n_seq);
  if (p < 0 || p / b->block_size >= b->max_blocks)
    return tide_err_set(err, TIDE_ERANGE, "%s: token %lld has position %d outside [0, %lld)", op, (long long)t, (int)p,
                        (long long)b->max_blocks * b->block_size);
  return 0;
}

static int check_batch(const tide_batch_t *b, int64_t n_tok, const tide_k_cache_t *cd, const char *op, tide_err_t *err) {
  if (!b) return tide_err_set(err, TIDE_EINVAL, "%s: batch is NULL", op);
  if (b->n_tok != n_tok)
    return tide_err_set(err, TIDE_ESHAPE, "%s: batch has %d tokens, tensors have %lld", op, (int)b->n_tok,
                        (long long)n_tok);
  if (b->n_tok > 0 && (!b->tok_seq || !b->tok_pos || !b->block_table))
    return tide_err_set(err, TIDE_EINVAL, "%s: batch arrays are NULL", op);
  if (b->n_seq < 0 || b->max_blocks < 0 || b->block_size <= 0)
    return tide_err_set(err, TIDE_EINVAL, "%s: batch has n_seq %d, max_blocks %d, block_size %d", op, (int)b->n_seq,
                        (int)b->max_blocks, (int)b->block_size);
  if (b->block_size != cd->block_size)
    return tide_err_set(err, TIDE_ESHAPE, "%s: batch block_size %d but cache blocks hold %lld tokens", op,
                        (int)b->block_size, (long long)cd->block_size);
  return 0;
}

static int check_block(const tide_batch_t *b, int64_t n_blocks, int64_t t, int32_t lb, const char *op,
                       tide_err_t *err) {
  int32_t s = b->tok_seq[t];
  int32_t blk = b->block_table[(int64_t)s * b->max_blocks + lb];
  if (blk < 0 || blk >= n_blocks)
    return tide_err_set(err, TIDE_ERANGE, "%s: sequence %d logical block %d maps to block %d outside [0, %lld)", op,
                        (int)s, (int)lb, (int)blk, (long long)n_blocks);
  return 0;
}

int tide_k_check_kv_store(const tide_tensor_t *cache, const tide_tensor_t *src, const tide_batch_t *batch,
                          tide_k_cache_t *cd, tide_err_t *err) {
  int rc;
  if ((rc = tide_k_check_writable(cache, "kv_store", "cache", err)) ||
      (rc = tide_k_check_float(src, "kv_store", "src", err)))
    return rc;
  if (!tide_dtype_traits(cache->dtype)->from_float)
    return tide_err_set(err, TIDE_EDTYPE, "kv_store: no conversion to cache dtype %s",
                        tide_dtype_traits(cache->dtype)->name);
  if ((rc = cache_dims(cache, "kv_store", "cache", cd, err))) return rc;
  int64_t n_tok = src->ndim ? src->shape[0] : 1;
  int64_t per_tok = n_tok ? tide_tensor_numel(src) / n_tok : 0;
  if (src->ndim < 2 || src->ndim > 3 || tide_k_inner(src) != cd->d || per_tok != cd->n_kv * cd->d) {
    char s1[96], s2[96];
    return tide_err_set(err, TIDE_ESHAPE, "kv_store: src %s does not fit cache %s", tide_k_shape_str(src, s1, 96),
                        tide_k_shape_str(cache, s2, 96));
  }
  if ((rc = check_batch(batch, n_tok, cd, "kv_store", err))) return rc;
  for (int64_t t = 0; t < n_tok; t++) {
    if ((rc = check_token(batch, t, "kv_store", err))) return rc;
    if ((rc = check_block(batch, cd->n_blocks, t, batch->tok_pos[t] / batch->block_size, "kv_store", err))) return rc;
  }
  return 0;
}

int tide_k_check_attention(const tide_tensor_t *out, const tide_tensor_t *q, const tide_tensor_t *k_cache,
                           const tide_tensor_t *v_cache, const tide_batch_t *batch, tide_k_attn_t *at,
                           tide_err_t *err) {
  int rc;
  if ((rc = tide_k_check_float(q, "attention", "q", err)) ||
      (rc = tide_k_check_float(k_cache, "attention", "k_cache", err)) ||
      (rc = tide_k_check_float(v_cache, "attention", "v_cache", err)) ||
      (rc = tide_k_check_out_f32(out, "attention", "out", err)))
    return rc;
  if ((rc = cache_dims(k_cache, "attention", "k_cache", &at->k, err)) ||
      (rc = cache_dims(v_cache, "attention", "v_cache", &at->v, err)))
    return rc;
  char s1[96], s2[96], s3[96];
  if (q->ndim != 3 || out->ndim != 3)
    return tide_err_set(err, TIDE_ESHAPE, "attention: q %s and out %s must be (n_tok, n_head, d)",
                        tide_k_shape_str(q, s1, 96), tide_k_shape_str(out, s2, 96));
  at->n_tok = q->shape[0];
  at->n_head = q->shape[1];
  at->dk = q->shape[2];
  at->dv = at->v.d;
  if (at->k.d != at->dk || at->k.n_blocks != at->v.n_blocks || at->k.block_size != at->v.block_size ||
      at->k.n_kv != at->v.n_kv)
    return tide_err_set(err, TIDE_ESHAPE, "attention: q %s, k_cache %s and v_cache %s do not fit",
                        tide_k_shape_str(q, s1, 96), tide_k_shape_str(k_cache, s2, 96),
                        tide_k_shape_str(v_cache, s3, 96));
  if (at->k.n_kv <= 0 || at->n_head % at->k.n_kv)
    return tide_err_set(err, TIDE_ESHAPE, "attention: n_head %lld is not a multiple of n_kv_head %lld",
                        (long long)at->n_head, (long long)at->k.n_kv);
  if (out->shape[0] != at->n_tok || out->shape[1] != at->n_head || out->shape[2] != at->dv)
    return tide_err_set(err, TIDE_ESHAPE, "attention: out %s is not (%lld, %lld, %lld)", tide_k_shape_str(out, s1, 96),
                        (long long)at->n_tok, (long long)at->n_head, (long long)at->dv);
  if ((rc = check_batch(batch, at->n_tok, &at->k, "attention", err))) return rc;
  at->max_len = 0;
  for (int64_t t = 0; t < at->n_tok; t++) {
    if ((rc = check_token(batch, t, "attention", err))) return rc;
    int32_t p = batch->tok_pos[t];
    for (int32_t lb = 0; lb <= p / batch->block_size; lb++)
      if ((rc = check_block(batch, at->k.n_blocks, t, lb, "attention", err))) return rc;
    if (p + 1 > at->max_len) at->max_len = p + 1;
  }
  return 0;
}
