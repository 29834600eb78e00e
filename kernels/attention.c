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
#include <stdint.h>
#include <stdlib.h>

#include "kern.h"

/* Query rows per item: heads of a group sharing a kv head (at most), and tokens x heads of a prefill block
 * (aimed at): each K/V row read by an item serves this many dot products / axpys. */
#define TIDE_ATTN_MAX_ROWS 64
#define TIDE_ATTN_BLOCK_ROWS 16

typedef struct {
  int32_t t0, nt;
} tide_k_qblk_t;

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
  int64_t chunks;     /* head chunks per (token, kv head) */
  int64_t splits;     /* position ranges per chunk (> 1: partial results in part, combined after) */
  const tide_k_qblk_t *blk; /* query blocks: consecutive tokens of one sequence (see attention_task) */
  int64_t nblk;
  int32_t tb;         /* most tokens in a block */
  float *part;        /* per item: o (G, dv) unnormalized, then max (G) and exp-sum (G) */
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

/* One item: a block of nt tokens of one sequence at consecutive positions (prefill; nt = 1 in decode), kv
 * head kvh, query heads h0 .. h0+ng-1 of its group: R = nt * ng query rows, ordered by token then head.
 * Each K and V row is read once for all the rows whose causal span reaches it (the block's tokens at or
 * after its position), so a prefill reads the cache once per block instead of once per token. With
 * position splits (decode, nt = 1) the item covers one range of the positions and leaves an unnormalized
 * partial result for combine_splits. */
static void attention_task(void *arg, int32_t ith, int32_t nth) {
  (void)nth;
  attn_ctx_t *c = arg;
  const tide_k_attn_t *at = &c->at;
  int64_t dk = at->dk, dv = at->dv, L = at->max_len, Rmax = (int64_t)c->tb * c->G;
  float *qf = c->scratch + ith * c->per_thread; /* (Rmax, dk) */
  float *p = qf + Rmax * dk;                    /* (Rmax, L) */
  float *ob = p + Rmax * L;                     /* (Rmax, dv) */
  float *rb = ob + Rmax * dv;                   /* one converted row */
  int64_t group = at->n_head / at->k.n_kv, total = c->nblk * at->k.n_kv * c->chunks * c->splits;
  /* dispatch once per task, not per cache row */
  int avx = tide_k_has_avx2();
  void (*dotn)(const float *, int64_t, int32_t, const void *, int32_t, int64_t, float *) =
      avx ? tide_vec_dotn_avx2 : tide_vec_dotn_c;
  void (*axpyn)(float *, int64_t, const float *, int32_t, const void *, int32_t, int64_t) =
      avx ? tide_vec_axpyn_avx2 : tide_vec_axpyn_c;
  int64_t kbytes = at->k.dense ? tide_dtype_row_bytes(c->kc->dtype, dk) : 0;
  int64_t vbytes = at->v.dense ? tide_dtype_row_bytes(c->vc->dtype, dv) : 0;
  for (;;) {
    int64_t item = atomic_fetch_add(&c->next, 1);
    if (item >= total) break;
    int64_t split = item % c->splits, head_item = item / c->splits;
    int64_t bi = head_item / (at->k.n_kv * c->chunks), rest = head_item % (at->k.n_kv * c->chunks);
    int64_t kvh = rest / c->chunks, h0 = kvh * group + rest % c->chunks * c->G;
    int32_t ng = (int32_t)(kvh * group + group - h0 < c->G ? kvh * group + group - h0 : c->G);
    int64_t t0 = c->blk[bi].t0, nt = c->blk[bi].nt, R = nt * ng;
    int64_t pos0 = c->b->tok_pos[t0];
    /* positions [j0, jend): 0 .. the last token's, or one of c->splits ranges of a single token's */
    int64_t jend = pos0 + nt, j0 = 0;
    if (c->splits > 1) {
      j0 = jend * split / c->splits;
      jend = jend * (split + 1) / c->splits;
    }
    for (int64_t i = 0; i < nt; i++)
      for (int32_t g = 0; g < ng; g++) tide_k_load(c->q, (t0 + i) * at->n_head + h0 + g, 0, dk, qf + (i * ng + g) * dk);
    float sc[8];
    /* rows of token i see positions <= pos0 + i: at position j, the rows from token max(0, j - pos0) on */
    for (int64_t j = j0; j < jend; j++) {
      int32_t dt;
      if (j + PF < jend) prefetch_row(slot(c->kc, &at->k, c->b, t0, j + PF, kvh), kbytes);
      const void *kr = row_view(c->kc, &at->k, slot(c->kc, &at->k, c->b, t0, j, kvh), dk, rb, &dt);
      for (int64_t r0 = (j > pos0 ? j - pos0 : 0) * ng; r0 < R; r0 += 8) {
        int32_t gn = (int32_t)(R - r0 < 8 ? R - r0 : 8);
        dotn(qf + r0 * dk, dk, gn, kr, dt, dk, sc);
        for (int32_t g = 0; g < gn; g++) p[(r0 + g) * L + j - j0] = sc[g] * c->scale;
      }
    }
    float *pt = c->splits > 1 ? c->part + item * c->G * (dv + 2) : NULL; /* partial result of this split */
    float *o = pt ? pt : ob;
    float inv[TIDE_ATTN_MAX_ROWS];
    for (int64_t r = 0; r < R; r++) {
      float *pr = p + r * L;
      int64_t end = pos0 + r / ng + 1 < jend ? pos0 + r / ng + 1 : jend, len = end - j0;
      float m = len > 0 ? tide_vec_max(pr, len) : -INFINITY;
      float sum = m == -INFINITY ? 0.0f : tide_vec_exp_sum(pr, pr, 1.0f, m, len);
      if (m == -INFINITY)
        for (int64_t j = 0; j < len; j++) pr[j] = 0.0f;
      inv[r] = sum > 0.0f ? 1.0f / sum : 0.0f;
      if (pt) { /* kept unnormalized, with this range's max and sum, for the combine */
        inv[r] = 1.0f;
        pt[c->G * dv + r] = m;
        pt[c->G * dv + c->G + r] = sum;
      }
      for (int64_t i = 0; i < dv; i++) o[r * dv + i] = 0.0f;
    }
    for (int64_t j = j0; j < jend; j++) {
      int32_t dt;
      if (j + PF < jend) prefetch_row(slot(c->vc, &at->v, c->b, t0, j + PF, kvh), vbytes);
      const void *vr = row_view(c->vc, &at->v, slot(c->vc, &at->v, c->b, t0, j, kvh), dv, rb, &dt);
      for (int64_t r0 = (j > pos0 ? j - pos0 : 0) * ng; r0 < R; r0 += 8) {
        int32_t gn = (int32_t)(R - r0 < 8 ? R - r0 : 8);
        for (int32_t g = 0; g < gn; g++) sc[g] = p[(r0 + g) * L + j - j0];
        axpyn(o + r0 * dv, dv, sc, gn, vr, dt, dv);
      }
    }
    if (pt) continue;
    for (int64_t r = 0; r < R; r++)
      tide_vec_scale((float *)c->out->data + ((t0 + r / ng) * at->n_head + h0 + r % ng) * dv, o + r * dv, inv[r], dv);
  }
}

/* Splits of one (token, head chunk) combined: out = sum_s o_s e^(m_s - M) / sum_s l_s e^(m_s - M), M = max_s m_s
 * (a split whose scores were all masked has m_s = -inf and weighs nothing). */
static void combine_splits(const attn_ctx_t *c) {
  const tide_k_attn_t *at = &c->at;
  int64_t dv = at->dv, group = at->n_head / at->k.n_kv, per = c->G * (dv + 2);
  for (int64_t hi = 0; hi < c->nblk * at->k.n_kv * c->chunks; hi++) {
    int64_t t = c->blk[hi / (at->k.n_kv * c->chunks)].t0, rest = hi % (at->k.n_kv * c->chunks);
    int64_t kvh = rest / c->chunks, h0 = kvh * group + rest % c->chunks * c->G;
    int32_t ng = (int32_t)(kvh * group + group - h0 < c->G ? kvh * group + group - h0 : c->G);
    const float *ps = c->part + hi * c->splits * per;
    for (int32_t g = 0; g < ng; g++) {
      float *o = (float *)c->out->data + (t * at->n_head + h0 + g) * dv;
      float M = -INFINITY, L = 0.0f;
      for (int64_t s = 0; s < c->splits; s++) M = fmaxf(M, ps[s * per + c->G * dv + g]);
      for (int64_t i = 0; i < dv; i++) o[i] = 0.0f;
      if (M == -INFINITY) continue;
      for (int64_t s = 0; s < c->splits; s++) {
        float ms = ps[s * per + c->G * dv + g];
        if (ms == -INFINITY) continue;
        float w = expf(ms - M);
        L += w * ps[s * per + c->G * dv + c->G + g];
        tide_vec_axpy(o, w, ps + s * per + g * dv, TIDE_DTYPE_F32, dv);
      }
      tide_vec_scale(o, o, L > 0.0f ? 1.0f / L : 0.0f, dv);
    }
  }
}

int tide_op_attention(tide_pool_t *pool, tide_tensor_t *out, const tide_tensor_t *q, const tide_tensor_t *k_cache,
                      const tide_tensor_t *v_cache, const tide_batch_t *batch, float scale, tide_err_t *err) {
  attn_ctx_t c = {.out = out, .q = q, .kc = k_cache, .vc = v_cache, .b = batch, .scale = scale};
  int rc = tide_k_check_attention(out, q, k_cache, v_cache, batch, &c.at, err);
  if (rc) return rc;
  int32_t nth = tide_pool_threads(pool);
  int64_t group = c.at.n_head / c.at.k.n_kv;
  /* Query blocks: runs of tokens of one sequence at consecutive positions, cut to at most tb tokens, so
   * that a block's rows (tokens x heads of a chunk) stay within TIDE_ATTN_MAX_ROWS. */
  c.G = (int32_t)(group < TIDE_ATTN_MAX_ROWS ? group : TIDE_ATTN_MAX_ROWS);
  c.tb = (int32_t)(TIDE_ATTN_BLOCK_ROWS / c.G > 1 ? TIDE_ATTN_BLOCK_ROWS / c.G : 1);
  tide_k_qblk_t *blk = malloc((size_t)(c.at.n_tok > 0 ? c.at.n_tok : 1) * sizeof *blk);
  if (!blk) return tide_err_set(err, TIDE_ENOMEM, "attention: out of memory");
  c.nblk = 0;
  for (int64_t t = 0; t < c.at.n_tok; t++) {
    tide_k_qblk_t *last = c.nblk ? &blk[c.nblk - 1] : NULL;
    if (last && last->nt < c.tb && batch->tok_seq[t] == batch->tok_seq[last->t0] &&
        batch->tok_pos[t] == batch->tok_pos[last->t0] + last->nt)
      last->nt++;
    else
      blk[c.nblk++] = (tide_k_qblk_t){.t0 = (int32_t)t, .nt = 1};
  }
  c.blk = blk;
  /* Heads per item: up to TIDE_ATTN_MAX_ROWS of a group. When (block, kv head) pairs alone leave threads
   * idle (decode of a few sequences, MLA's one latent head above all), each pair's positions are split
   * into ranges, every K/V row still read once, and the ranges' partial softmax results combined after
   * (combine_splits): splitting the heads instead would read every row once per head chunk. Ranges of
   * fewer than ATTN_MIN_SPLIT positions are not worth the combine; short contexts split the heads. */
  enum { ATTN_MIN_SPLIT = 64 };
  c.splits = 1;
  int64_t pairs = c.nblk * c.at.k.n_kv, shortest = INT64_MAX;
  int single = 1;
  for (int64_t i = 0; i < c.nblk; i++) {
    single &= blk[i].nt == 1;
    if ((int64_t)batch->tok_pos[blk[i].t0] + 1 < shortest) shortest = (int64_t)batch->tok_pos[blk[i].t0] + 1;
  }
  if (nth > 1 && single && pairs * ((group + c.G - 1) / c.G) < 2 * nth && shortest >= 2 * ATTN_MIN_SPLIT) {
    c.splits = (2 * nth + pairs - 1) / pairs;
    if (c.splits > shortest / ATTN_MIN_SPLIT) c.splits = shortest / ATTN_MIN_SPLIT;
  }
  while (c.splits == 1 && c.G > 1 && pairs * ((group + c.G - 1) / c.G) < 2 * nth) c.G = (c.G + 1) / 2;
  c.chunks = (group + c.G - 1) / c.G;
  int64_t R = (int64_t)c.tb * c.G;
  c.per_thread = R * c.at.dk + R * c.at.max_len + R * c.at.dv + (c.at.dk > c.at.dv ? c.at.dk : c.at.dv) + 16;
  c.per_thread = (c.per_thread + 15) / 16 * 16; /* keep threads' scratch on separate cache lines */
  int64_t nitems = pairs * c.chunks * c.splits, part = c.splits > 1 ? nitems * c.G * (c.at.dv + 2) : 0;
  c.scratch = malloc((size_t)(c.per_thread * nth + part) * sizeof(float));
  if (!c.scratch) {
    free(blk);
    return tide_err_set(err, TIDE_ENOMEM, "attention: out of memory");
  }
  c.part = c.splits > 1 ? c.scratch + c.per_thread * nth : NULL;
  atomic_init(&c.next, 0);
  int64_t work = 0;
  for (int64_t t = 0; t < c.at.n_tok; t++) work += ((int64_t)batch->tok_pos[t] + 1) * c.at.n_head * (c.at.dk + c.at.dv) / 8;
  tide_k_run(pool, attention_task, &c, work);
  if (c.splits > 1) combine_splits(&c);
  free(c.scratch);
  free(blk);
  return 0;
}
