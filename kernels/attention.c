/* attention.c: fast kv_store and causal attention over the paged KV cache.
 *
 * attention: items (token, kv head, a chunk of up to 64 of the query heads
 * sharing that kv head) are claimed one at a time from an atomic counter
 * (causal spans differ in length, so a static split is uneven). Per item:
 * q rows to f32, scores q.k for positions 0..pos read through the block
 * table, each K row read once for all heads of the chunk (AVX2 multi-row dot
 * in the cache's own dtype), softmax per head, then the weighted sum of V
 * rows (each V row read once, AVX2 multi-row axpy), divided by the sum at
 * the end. Scratch (q, scores, a row buffer per thread) is allocated once
 * per call. A block-quantized cache (q8_0 KV, GGML's block layout) is read
 * a row at a time: the row's blocks are dequantized into the row buffer,
 * then the same AVX2 f32 multi-row dot / axpy run on it; kv_store quantizes
 * whole blocks (a row is a whole number of blocks, see tide_k_check_kv_store). */
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "kern.h"

static int vec_dtype(int32_t dt) {
  return dt == TIDE_DTYPE_F32 || dt == TIDE_DTYPE_F16 || dt == TIDE_DTYPE_BF16 || dt == TIDE_DTYPE_F8_E4M3;
}

typedef struct {
  tide_tensor_t *cache;
  const tide_tensor_t *src;
  const tide_batch_t *b;
  tide_k_cache_t cd;
} kvs_ctx_t;

static char *slot(const tide_tensor_t *c, const tide_k_cache_t *cd, const tide_batch_t *b, int64_t t, int64_t p,
                  int64_t h) {
  int32_t s = b->tok_seq[t];
  int32_t blk = b->block_table[(int64_t)s * b->max_blocks + p / b->block_size];
  return tide_k_cache_row(c, cd, blk, p % b->block_size, h);
}

static void kv_store_task(void *arg, int32_t ith, int32_t nth) {
  kvs_ctx_t *c = arg;
  float buf[TIDE_K_CHUNK];
  int64_t lo, hi;
  tide_split_range(c->b->n_tok, ith, nth, &lo, &hi);
  int direct = c->cache->dtype == TIDE_DTYPE_F32 && c->cd.dense;
  for (int64_t t = lo; t < hi; t++)
    for (int64_t h = 0; h < c->cd.n_kv; h++) {
      char *row = slot(c->cache, &c->cd, c->b, t, c->b->tok_pos[t], h);
      int64_t r = t * c->cd.n_kv + h;
      if (direct) {
        tide_k_load(c->src, r, 0, c->cd.d, (float *)(void *)row);
        continue;
      }
      for (int64_t c0 = 0; c0 < c->cd.d; c0 += TIDE_K_CHUNK) {
        int64_t m = c->cd.d - c0 < TIDE_K_CHUNK ? c->cd.d - c0 : TIDE_K_CHUNK;
        tide_k_load(c->src, r, c0, m, buf);
        if (c->cd.dense) { /* chunks are whole blocks of a block-quantized cache (q8_0 KV) */
          tide_dtype_traits(c->cache->dtype)->from_float(buf, row + tide_dtype_row_bytes(c->cache->dtype, c0), m);
        } else {
          for (int64_t j = 0; j < m; j++)
            tide_dtype_traits(c->cache->dtype)->from_float(buf + j, row + (c0 + j) * c->cd.s_col, 1);
        }
      }
    }
}

int tide_op_kv_store(tide_pool_t *pool, tide_tensor_t *cache, const tide_tensor_t *src, const tide_batch_t *batch,
                     tide_err_t *err) {
  kvs_ctx_t c = {.cache = cache, .src = src, .b = batch};
  int rc = tide_k_check_kv_store(cache, src, batch, &c.cd, err);
  if (rc) return rc;
  tide_k_run(pool, kv_store_task, &c, (int64_t)batch->n_tok * c.cd.n_kv * c.cd.d / 2);
  return 0;
}

typedef struct {
  tide_tensor_t *out;
  const tide_tensor_t *q, *kc, *vc;
  const tide_batch_t *b;
  tide_k_attn_t at;
  float scale;
  int32_t G;          /* query heads per work item (sharing one kv head) */
  int64_t chunks;     /* items per (token, kv head) */
  float *scratch;
  int64_t per_thread; /* floats of scratch per thread */
  atomic_llong next;
} attn_ctx_t;

/* Cache row as something tide_vec_* can read: the row itself when dense in a
 * vector dtype, else converted into buf (f32). */
static const void *row_view(const tide_tensor_t *c, const tide_k_cache_t *cd, const char *row, int64_t n, float *buf,
                            int32_t *dt) {
  if (cd->dense && vec_dtype(c->dtype)) {
    *dt = c->dtype;
    return row;
  }
  const tide_dtype_traits_t *tr = tide_dtype_traits(c->dtype);
  if (tr->block_size > 1) { /* q8_0 KV: the row's blocks at once (n is a whole number of blocks) */
    tr->to_float(row, buf, n);
    *dt = TIDE_DTYPE_F32;
    return buf;
  }
  for (int64_t i = 0; i < n; i++) tr->to_float(row + i * cd->s_col, buf + i, 1);
  *dt = TIDE_DTYPE_F32;
  return buf;
}

/* Rows of one kv head are block_size * n_kv * d apart, beyond what the
 * hardware prefetcher follows (it stays inside a 4 KiB page): ask for the
 * row PF positions ahead. */
#define PF 16
static inline void prefetch_row(const char *row, int64_t bytes) {
  for (int64_t o = 0; o < bytes; o += 64) __builtin_prefetch(row + o, 0, 3);
}

/* One item: token t, kv head kvh, query heads h0 .. h0+ng-1 of its group.
 * Each K and V row is read once for all ng heads. */
static void attention_task(void *arg, int32_t ith, int32_t nth) {
  (void)nth;
  attn_ctx_t *c = arg;
  const tide_k_attn_t *at = &c->at;
  int64_t dk = at->dk, dv = at->dv, L = at->max_len;
  float *qf = c->scratch + ith * c->per_thread; /* (G, dk) */
  float *p = qf + c->G * dk;                    /* (G, L) */
  float *rb = p + c->G * L;                     /* one converted row */
  int64_t group = at->n_head / at->k.n_kv, total = at->n_tok * at->k.n_kv * c->chunks;
  /* dispatch once per task, not per cache row */
  int avx = tide_k_has_avx2();
  void (*dotn)(const float *, int64_t, int32_t, const void *, int32_t, int64_t, float *) =
      avx ? tide_vec_dotn_avx2 : tide_vec_dotn_c;
  void (*axpyn)(float *, int64_t, const float *, int32_t, const void *, int32_t, int64_t) =
      avx ? tide_vec_axpyn_avx2 : tide_vec_axpyn_c;
  for (;;) {
    int64_t item = atomic_fetch_add(&c->next, 1);
    if (item >= total) break;
    int64_t t = item / (at->k.n_kv * c->chunks), rest = item % (at->k.n_kv * c->chunks);
    int64_t kvh = rest / c->chunks, h0 = kvh * group + rest % c->chunks * c->G;
    int32_t ng = (int32_t)(kvh * group + group - h0 < c->G ? kvh * group + group - h0 : c->G);
    int64_t len = (int64_t)c->b->tok_pos[t] + 1;
    for (int32_t g = 0; g < ng; g++) tide_k_load(c->q, t * at->n_head + h0 + g, 0, dk, qf + g * dk);
    float sc[8];
    int64_t kbytes = at->k.dense ? tide_dtype_row_bytes(c->kc->dtype, dk) : 0;
    int64_t vbytes = at->v.dense ? tide_dtype_row_bytes(c->vc->dtype, dv) : 0;
    for (int64_t j = 0; j < len; j++) {
      int32_t dt;
      if (j + PF < len) prefetch_row(slot(c->kc, &at->k, c->b, t, j + PF, kvh), kbytes);
      const void *kr = row_view(c->kc, &at->k, slot(c->kc, &at->k, c->b, t, j, kvh), dk, rb, &dt);
      for (int32_t g0 = 0; g0 < ng; g0 += 8) {
        int32_t gn = ng - g0 < 8 ? ng - g0 : 8;
        dotn(qf + g0 * dk, dk, gn, kr, dt, dk, sc);
        for (int32_t g = 0; g < gn; g++) p[(g0 + g) * L + j] = sc[g] * c->scale;
      }
    }
    float *o = (float *)c->out->data + (t * at->n_head + h0) * dv;
    float inv[64];
    for (int32_t g = 0; g < ng; g++) {
      float *pg = p + g * L;
      float m = tide_vec_max(pg, len);
      float sum = m == -INFINITY ? 0.0f : tide_vec_exp_sum(pg, pg, 1.0f, m, len);
      if (m == -INFINITY)
        for (int64_t j = 0; j < len; j++) pg[j] = 0.0f;
      inv[g] = sum > 0.0f ? 1.0f / sum : 0.0f;
      for (int64_t i = 0; i < dv; i++) o[g * dv + i] = 0.0f;
    }
    for (int64_t j = 0; j < len; j++) {
      int32_t dt;
      if (j + PF < len) prefetch_row(slot(c->vc, &at->v, c->b, t, j + PF, kvh), vbytes);
      const void *vr = row_view(c->vc, &at->v, slot(c->vc, &at->v, c->b, t, j, kvh), dv, rb, &dt);
      for (int32_t g0 = 0; g0 < ng; g0 += 8) {
        int32_t gn = ng - g0 < 8 ? ng - g0 : 8;
        for (int32_t g = 0; g < gn; g++) sc[g] = p[(g0 + g) * L + j];
        axpyn(o + g0 * dv, dv, sc, gn, vr, dt, dv);
      }
    }
    for (int32_t g = 0; g < ng; g++) tide_vec_scale(o + g * dv, o + g * dv, inv[g], dv);
  }
}

int tide_op_attention(tide_pool_t *pool, tide_tensor_t *out, const tide_tensor_t *q, const tide_tensor_t *k_cache,
                      const tide_tensor_t *v_cache, const tide_batch_t *batch, float scale, tide_err_t *err) {
  attn_ctx_t c = {.out = out, .q = q, .kc = k_cache, .vc = v_cache, .b = batch, .scale = scale};
  int rc = tide_k_check_attention(out, q, k_cache, v_cache, batch, &c.at, err);
  if (rc) return rc;
  int32_t nth = tide_pool_threads(pool);
  int64_t group = c.at.n_head / c.at.k.n_kv;
  /* heads per item: up to 64 of a group, fewer when that leaves threads idle */
  c.G = (int32_t)(group < 64 ? group : 64);
  while (c.G > 1 && c.at.n_tok * c.at.k.n_kv * ((group + c.G - 1) / c.G) < 2 * nth) c.G = (c.G + 1) / 2;
  c.chunks = (group + c.G - 1) / c.G;
  c.per_thread = c.G * c.at.dk + c.G * c.at.max_len + (c.at.dk > c.at.dv ? c.at.dk : c.at.dv) + 16;
  c.per_thread = (c.per_thread + 15) / 16 * 16; /* keep threads' scratch on separate cache lines */
  c.scratch = malloc((size_t)(c.per_thread * nth) * sizeof(float));
  if (!c.scratch) return tide_err_set(err, TIDE_ENOMEM, "attention: out of memory");
  atomic_init(&c.next, 0);
  int64_t work = 0;
  for (int64_t t = 0; t < c.at.n_tok; t++) work += ((int64_t)batch->tok_pos[t] + 1) * c.at.n_head * (c.at.dk + c.at.dv) / 8;
  tide_k_run(pool, attention_task, &c, work);
  free(c.scratch);
  return 0;
}
