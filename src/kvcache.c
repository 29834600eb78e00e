#include "kvcache.h"

#include <stdlib.h>
#include <string.h>

typedef struct kv_seq {
  int32_t live;
  int32_t len;     /* tokens stored */
  int32_t n_block; /* entries used in table */
  int32_t cap;     /* entries allocated in table */
  int32_t *table;  /* (cap) physical block ids */
} kv_seq_t;

struct tide_kvcache {
  int32_t n_layer;
  int32_t block_size;
  int32_t n_blocks;
  int32_t dtype;
  int32_t n_free;
  tide_kv_layout_t *layouts; /* (n_layer) */
  tide_tensor_t **k;         /* (n_layer) (n_blocks, block_size, n_kv_head, k_dim) */
  tide_tensor_t **v;         /* (n_layer) (n_blocks, block_size, n_kv_head, v_dim) or NULL */
  int32_t *refs;             /* (n_blocks) reference count per block */
  int32_t *free_list;        /* (n_blocks) stack of free block ids, n_free valid */
  kv_seq_t *seqs;            /* (n_seq_cap) */
  int32_t n_seq_cap;
  int32_t n_live;
};

int tide_kvcache_new(int32_t n_layer, const tide_kv_layout_t *layouts, int32_t block_size, int32_t n_blocks,
                     int32_t dtype, tide_kvcache_t **out, tide_err_t *err) {
  if (!out) return tide_err_set(err, TIDE_EINVAL, "kvcache: no output pointer");
  *out = NULL;
  if (n_layer <= 0 || n_layer > 4096) return tide_err_set(err, TIDE_EINVAL, "kvcache: bad layer count %d", n_layer);
  if (!layouts) return tide_err_set(err, TIDE_EINVAL, "kvcache: no layouts");
  if (block_size <= 0 || block_size > 65536)
    return tide_err_set(err, TIDE_EINVAL, "kvcache: bad block size %d", block_size);
  if (n_blocks <= 0) return tide_err_set(err, TIDE_EINVAL, "kvcache: bad block count %d", n_blocks);
  if (dtype != TIDE_DTYPE_F32 && dtype != TIDE_DTYPE_BF16 && dtype != TIDE_DTYPE_F16 && dtype != TIDE_DTYPE_F8_E4M3 &&
      dtype != TIDE_DTYPE_Q8_0)
    return tide_err_set(err, TIDE_EDTYPE, "kvcache: dtype must be f32, bf16, f16, f8_e4m3 or q8_0 (got %d)", dtype);
  int32_t qk = tide_dtype_traits(dtype)->block_size;
  for (int32_t l = 0; l < n_layer; l++) {
    const tide_kv_layout_t *lo = &layouts[l];
    if (lo->n_kv_head <= 0 || lo->k_dim <= 0 || lo->v_dim < 0 || lo->n_kv_head > 65536 || lo->k_dim > 1 << 20 ||
        lo->v_dim > 1 << 20)
      return tide_err_set(err, TIDE_EINVAL, "kvcache: layer %d: bad layout (heads %d, k_dim %d, v_dim %d)", l,
                          lo->n_kv_head, lo->k_dim, lo->v_dim);
    if (lo->k_dim % qk || lo->v_dim % qk)
      return tide_err_set(err, TIDE_EINVAL,
                          "kvcache: layer %d: %s rows need k_dim %d and v_dim %d to be multiples of %d", l,
                          tide_dtype_traits(dtype)->name, lo->k_dim, lo->v_dim, qk);
  }
  tide_kvcache_t *kv = calloc(1, sizeof *kv);
  if (!kv) return tide_err_set(err, TIDE_ENOMEM, "kvcache: out of memory");
  kv->n_layer = n_layer;
  kv->block_size = block_size;
  kv->n_blocks = n_blocks;
  kv->dtype = dtype;
  kv->layouts = calloc((size_t)n_layer, sizeof *kv->layouts);
  kv->k = calloc((size_t)n_layer, sizeof *kv->k);
  kv->v = calloc((size_t)n_layer, sizeof *kv->v);
  kv->refs = calloc((size_t)n_blocks, sizeof *kv->refs);
  kv->free_list = calloc((size_t)n_blocks, sizeof *kv->free_list);
  if (!kv->layouts || !kv->k || !kv->v || !kv->refs || !kv->free_list) {
    tide_kvcache_free(kv);
    return tide_err_set(err, TIDE_ENOMEM, "kvcache: out of memory");
  }
  memcpy(kv->layouts, layouts, (size_t)n_layer * sizeof *layouts);
  for (int32_t l = 0; l < n_layer; l++) {
    int64_t shape[4] = {n_blocks, block_size, layouts[l].n_kv_head, layouts[l].k_dim};
    int rc = tide_tensor_new(dtype, 4, shape, &kv->k[l], err);
    if (rc == 0 && layouts[l].v_dim > 0) {
      shape[3] = layouts[l].v_dim;
      rc = tide_tensor_new(dtype, 4, shape, &kv->v[l], err);
    }
    if (rc) {
      tide_kvcache_free(kv);
      return rc;
    }
  }
  /* Free stack popped from the end: hand out low block ids first. */
  for (int32_t i = 0; i < n_blocks; i++) kv->free_list[i] = n_blocks - 1 - i;
  kv->n_free = n_blocks;
  *out = kv;
  return 0;
}

void tide_kvcache_free(tide_kvcache_t *kv) {
  if (!kv) return;
  for (int32_t l = 0; l < kv->n_layer; l++) {
    if (kv->k && kv->k[l]) tide_tensor_release(kv->k[l]);
    if (kv->v && kv->v[l]) tide_tensor_release(kv->v[l]);
  }
  for (int32_t s = 0; s < kv->n_seq_cap; s++) free(kv->seqs[s].table);
  free(kv->seqs);
  free(kv->layouts);
  free(kv->k);
  free(kv->v);
  free(kv->refs);
  free(kv->free_list);
  free(kv);
}

int32_t tide_kvcache_n_layer(const tide_kvcache_t *kv) { return kv->n_layer; }
int32_t tide_kvcache_block_size(const tide_kvcache_t *kv) { return kv->block_size; }
int32_t tide_kvcache_n_blocks(const tide_kvcache_t *kv) { return kv->n_blocks; }
int32_t tide_kvcache_free_blocks(const tide_kvcache_t *kv) { return kv->n_free; }
int32_t tide_kvcache_dtype(const tide_kvcache_t *kv) { return kv->dtype; }
int32_t tide_kvcache_seq_count(const tide_kvcache_t *kv) { return kv->n_live; }

int32_t tide_kvcache_block_refs(const tide_kvcache_t *kv, int32_t block) {
  if (block < 0 || block >= kv->n_blocks) return -1;
  return kv->refs[block];
}

tide_tensor_t *tide_kvcache_k(tide_kvcache_t *kv, int32_t layer) {
  if (layer < 0 || layer >= kv->n_layer) return NULL;
  return kv->k[layer];
}

tide_tensor_t *tide_kvcache_v(tide_kvcache_t *kv, int32_t layer) {
  if (layer < 0 || layer >= kv->n_layer) return NULL;
  return kv->v[layer];
}

static int64_t layer_token_bytes(const tide_kvcache_t *kv, int32_t l) {
  const tide_kv_layout_t *lo = &kv->layouts[l];
  /* whole blocks per row (q8_0: 34 bytes per 32 values, the scale included) */
  return (int64_t)lo->n_kv_head * (tide_dtype_row_bytes(kv->dtype, lo->k_dim) + tide_dtype_row_bytes(kv->dtype, lo->v_dim));
}

int64_t tide_kvcache_bytes_per_token(const tide_kvcache_t *kv, int32_t layer) {
  if (layer >= kv->n_layer) return -1;
  if (layer >= 0) return layer_token_bytes(kv, layer);
  int64_t s = 0;
  for (int32_t l = 0; l < kv->n_layer; l++) s += layer_token_bytes(kv, l);
  return s;
}

int64_t tide_kvcache_nbytes(const tide_kvcache_t *kv) {
  int64_t s = 0;
  for (int32_t l = 0; l < kv->n_layer; l++) {
    s += tide_tensor_nbytes(kv->k[l]);
    if (kv->v[l]) s += tide_tensor_nbytes(kv->v[l]);
  }
  return s;
}

/* ---- blocks ------------------------------------------------------------- */

static int32_t block_take(tide_kvcache_t *kv) {
  if (kv->n_free == 0) return -1;
  int32_t b = kv->free_list[--kv->n_free];
  kv->refs[b] = 1;
  return b;
}

static void block_drop(tide_kvcache_t *kv, int32_t b) {
  if (--kv->refs[b] == 0) kv->free_list[kv->n_free++] = b;
}

/* Copy every layer's slots of block src into block dst. */
static void block_copy(tide_kvcache_t *kv, int32_t dst, int32_t src) {
  for (int32_t l = 0; l < kv->n_layer; l++) {
    tide_tensor_t *ts[2] = {kv->k[l], kv->v[l]};
    for (int i = 0; i < 2; i++) {
      if (!ts[i]) continue;
      int64_t bb = ts[i]->stride[0];
      memcpy((char *)ts[i]->data + dst * bb, (char *)ts[i]->data + src * bb, (size_t)bb);
    }
  }
}

/* ---- sequences ---------------------------------------------------------- */

static kv_seq_t *seq_get(const tide_kvcache_t *kv, int32_t seq) {
  if (seq < 0 || seq >= kv->n_seq_cap || !kv->seqs[seq].live) return NULL;
  return &kv->seqs[seq];
}

static int seq_alloc(tide_kvcache_t *kv, int32_t *seq, tide_err_t *err) {
  for (int32_t s = 0; s < kv->n_seq_cap; s++) {
    if (!kv->seqs[s].live) {
      *seq = s;
      return 0;
    }
  }
  int32_t cap = kv->n_seq_cap ? kv->n_seq_cap * 2 : 8;
  kv_seq_t *ns = realloc(kv->seqs, (size_t)cap * sizeof *ns);
  if (!ns) return tide_err_set(err, TIDE_ENOMEM, "kvcache: out of memory for sequences");
  memset(ns + kv->n_seq_cap, 0, (size_t)(cap - kv->n_seq_cap) * sizeof *ns);
  kv->seqs = ns;
  *seq = kv->n_seq_cap;
  kv->n_seq_cap = cap;
  return 0;
}

static int seq_reserve_table(kv_seq_t *s, int32_t n, tide_err_t *err) {
  if (n <= s->cap) return 0;
  int32_t cap = s->cap ? s->cap : 4;
  while (cap < n) cap *= 2;
  int32_t *t = realloc(s->table, (size_t)cap * sizeof *t);
  if (!t) return tide_err_set(err, TIDE_ENOMEM, "kvcache: out of memory for a block table");
  s->table = t;
  s->cap = cap;
  return 0;
}

int tide_kvcache_seq_new(tide_kvcache_t *kv, int32_t *seq, tide_err_t *err) {
  int32_t s;
  int rc = seq_alloc(kv, &s, err);
  if (rc) return rc;
  kv_seq_t *q = &kv->seqs[s];
  q->live = 1;
  q->len = 0;
  q->n_block = 0;
  kv->n_live++;
  *seq = s;
  return 0;
}

int tide_kvcache_seq_fork(tide_kvcache_t *kv, int32_t src, int32_t *dst, tide_err_t *err) {
  if (!seq_get(kv, src)) return tide_err_set(err, TIDE_EINVAL, "kvcache: fork of unknown sequence %d", src);
  int32_t d;
  int rc = seq_alloc(kv, &d, err);
  if (rc) return rc;
  kv_seq_t *s = &kv->seqs[src]; /* after seq_alloc: seqs may have moved */
  kv_seq_t *q = &kv->seqs[d];
  rc = seq_reserve_table(q, s->n_block, err);
  if (rc) return rc;
  memcpy(q->table, s->table, (size_t)s->n_block * sizeof *q->table);
  for (int32_t i = 0; i < s->n_block; i++) kv->refs[s->table[i]]++;
  q->n_block = s->n_block;
  q->len = s->len;
  q->live = 1;
  kv->n_live++;
  *dst = d;
  return 0;
}

int tide_kvcache_seq_free(tide_kvcache_t *kv, int32_t seq, tide_err_t *err) {
  kv_seq_t *s = seq_get(kv, seq);
  if (!s) return tide_err_set(err, TIDE_EINVAL, "kvcache: free of unknown sequence %d", seq);
  for (int32_t i = 0; i < s->n_block; i++) block_drop(kv, s->table[i]);
  s->n_block = 0;
  s->len = 0;
  s->live = 0;
  kv->n_live--;
  return 0;
}

int32_t tide_kvcache_seq_len(const tide_kvcache_t *kv, int32_t seq) {
  kv_seq_t *s = seq_get(kv, seq);
  return s ? s->len : -1;
}

int tide_kvcache_seq_truncate(tide_kvcache_t *kv, int32_t seq, int32_t len, tide_err_t *err) {
  kv_seq_t *s = seq_get(kv, seq);
  if (!s) return tide_err_set(err, TIDE_EINVAL, "kvcache: truncate of unknown sequence %d", seq);
  if (len < 0 || len > s->len)
    return tide_err_set(err, TIDE_ERANGE, "kvcache: truncate sequence %d to %d tokens (it has %d)", seq, len, s->len);
  int32_t keep = (len + kv->block_size - 1) / kv->block_size;
  for (int32_t i = keep; i < s->n_block; i++) block_drop(kv, s->table[i]);
  s->n_block = keep;
  s->len = len;
  return 0;
}

int tide_kvcache_seq_table(const tide_kvcache_t *kv, int32_t seq, const int32_t **table, int32_t *n,
                           tide_err_t *err) {
  kv_seq_t *s = seq_get(kv, seq);
  if (!s) return tide_err_set(err, TIDE_EINVAL, "kvcache: unknown sequence %d", seq);
  *table = s->table;
  *n = s->n_block;
  return 0;
}

/* ---- one forward step --------------------------------------------------- */

int tide_kvcache_step(tide_kvcache_t *kv, int32_t n_seq, const int32_t *seqs, const int32_t *n_new,
                      tide_batch_t *batch, int32_t *tok_seq, int32_t *tok_pos, int32_t cap_tok, int32_t *block_table,
                      int32_t cap_table, tide_err_t *err) {
  if (n_seq <= 0 || !seqs || !n_new || !batch || !tok_seq || !tok_pos || !block_table)
    return tide_err_set(err, TIDE_EINVAL, "kvcache step: missing arguments or no sequences");
  const int32_t bs = kv->block_size;
  int64_t n_tok = 0;
  int32_t max_blocks = 1;
  int64_t need_new = 0; /* fresh blocks + copies of shared blocks */
  for (int32_t i = 0; i < n_seq; i++) {
    kv_seq_t *s = seq_get(kv, seqs[i]);
    if (!s) return tide_err_set(err, TIDE_EINVAL, "kvcache step: unknown sequence %d", seqs[i]);
    for (int32_t j = 0; j < i; j++)
      if (seqs[j] == seqs[i]) return tide_err_set(err, TIDE_EINVAL, "kvcache step: sequence %d twice", seqs[i]);
    if (n_new[i] < 0) return tide_err_set(err, TIDE_EINVAL, "kvcache step: negative token count");
    int64_t end = (int64_t)s->len + n_new[i];
    if (end > INT32_MAX - bs) return tide_err_set(err, TIDE_ERANGE, "kvcache step: sequence too long");
    int32_t nb = (int32_t)((end + bs - 1) / bs);
    if (nb > max_blocks) max_blocks = nb;
    if (nb > s->n_block) need_new += nb - s->n_block;
    /* the partially filled last block gets written: copy it if shared */
    if (n_new[i] > 0 && s->len % bs != 0 && kv->refs[s->table[s->len / bs]] > 1) need_new++;
    n_tok += n_new[i];
  }
  if (n_tok > cap_tok)
    return tide_err_set(err, TIDE_ERANGE, "kvcache step: %lld tokens exceed capacity %d", (long long)n_tok, cap_tok);
  if ((int64_t)max_blocks * n_seq > cap_table)
    return tide_err_set(err, TIDE_ERANGE, "kvcache step: block table of %d x %d exceeds capacity %d", n_seq,
                        max_blocks, cap_table);
  if (need_new > kv->n_free)
    return tide_err_set(err, TIDE_ENOMEM, "kvcache: out of blocks (%lld needed, %d free of %d)", (long long)need_new,
                        kv->n_free, kv->n_blocks);
  /* table growth can fail on malloc: do it before anything changes */
  for (int32_t i = 0; i < n_seq; i++) {
    kv_seq_t *s = &kv->seqs[seqs[i]];
    int32_t nb = (int32_t)(((int64_t)s->len + n_new[i] + bs - 1) / bs);
    int rc = seq_reserve_table(s, nb, err);
    if (rc) return rc;
  }
  int32_t t = 0;
  for (int32_t i = 0; i < n_seq; i++) {
    kv_seq_t *s = &kv->seqs[seqs[i]];
    if (n_new[i] > 0 && s->len % bs != 0) {
      int32_t bi = s->len / bs;
      int32_t old = s->table[bi];
      if (kv->refs[old] > 1) {
        int32_t nbk = block_take(kv);
        block_copy(kv, nbk, old);
        block_drop(kv, old);
        s->table[bi] = nbk;
      }
    }
    int32_t nb = (int32_t)(((int64_t)s->len + n_new[i] + bs - 1) / bs);
    while (s->n_block < nb) s->table[s->n_block++] = block_take(kv);
    for (int32_t j = 0; j < n_new[i]; j++) {
      tok_seq[t] = i;
      tok_pos[t] = s->len + j;
      t++;
    }
    for (int32_t b = 0; b < max_blocks; b++) block_table[(int64_t)i * max_blocks + b] = b < s->n_block ? s->table[b] : -1;
    s->len += n_new[i];
  }
  batch->n_tok = (int32_t)n_tok;
  batch->n_seq = n_seq;
  batch->max_blocks = max_blocks;
  batch->block_size = bs;
  batch->tok_seq = tok_seq;
  batch->tok_pos = tok_pos;
  batch->block_table = block_table;
  return 0;
}

/* ---- prefix caching and views (engine) ----------------------------------- */

int tide_kvcache_block_ref(tide_kvcache_t *kv, int32_t block, tide_err_t *err) {
  if (block < 0 || block >= kv->n_blocks || kv->refs[block] <= 0)
    return tide_err_set(err, TIDE_EINVAL, "kvcache: reference to block %d that is not in use", block);
  kv->refs[block]++;
  return 0;
}

int tide_kvcache_block_unref(tide_kvcache_t *kv, int32_t block, tide_err_t *err) {
  if (block < 0 || block >= kv->n_blocks || kv->refs[block] <= 0)
    return tide_err_set(err, TIDE_EINVAL, "kvcache: release of block %d that is not in use", block);
  block_drop(kv, block);
  return 0;
}

int tide_kvcache_seq_adopt(tide_kvcache_t *kv, int32_t seq, const int32_t *blocks, int32_t n, int32_t len,
                           tide_err_t *err) {
  kv_seq_t *s = seq_get(kv, seq);
  if (!s) return tide_err_set(err, TIDE_EINVAL, "kvcache: adopt into unknown sequence %d", seq);
  if (s->len != 0 || s->n_block != 0) return tide_err_set(err, TIDE_EINVAL, "kvcache: adopt into a non-empty sequence");
  if (n <= 0 || !blocks || len <= 0 || (int64_t)len > (int64_t)n * kv->block_size ||
      (int64_t)len <= (int64_t)(n - 1) * kv->block_size)
    return tide_err_set(err, TIDE_EINVAL, "kvcache: adopt of %d blocks with length %d", n, len);
  for (int32_t i = 0; i < n; i++)
    if (blocks[i] < 0 || blocks[i] >= kv->n_blocks || kv->refs[blocks[i]] <= 0)
      return tide_err_set(err, TIDE_EINVAL, "kvcache: adopt of block %d that is not in use", blocks[i]);
  int rc = seq_reserve_table(s, n, err);
  if (rc) return rc;
  for (int32_t i = 0; i < n; i++) {
    s->table[i] = blocks[i];
    kv->refs[blocks[i]]++;
  }
  s->n_block = n;
  s->len = len;
  return 0;
}

int tide_kvcache_view(const tide_kvcache_t *kv, int32_t n_seq, const int32_t *seqs, const int32_t *start,
                      const int32_t *n, tide_batch_t *batch, int32_t *tok_seq, int32_t *tok_pos, int32_t cap_tok,
                      int32_t *block_table, int32_t cap_table, tide_err_t *err) {
  if (n_seq <= 0 || !seqs || !start || !n || !batch || !tok_seq || !tok_pos || !block_table)
    return tide_err_set(err, TIDE_EINVAL, "kvcache view: missing arguments or no sequences");
  int64_t n_tok = 0;
  int32_t max_blocks = 1;
  for (int32_t i = 0; i < n_seq; i++) {
    kv_seq_t *s = seq_get(kv, seqs[i]);
    if (!s) return tide_err_set(err, TIDE_EINVAL, "kvcache view: unknown sequence %d", seqs[i]);
    if (start[i] < 0 || n[i] < 0 || (int64_t)start[i] + n[i] > s->len)
      return tide_err_set(err, TIDE_ERANGE, "kvcache view: positions %d..+%d outside sequence %d of %d tokens",
                          start[i], n[i], seqs[i], s->len);
    if (s->n_block > max_blocks) max_blocks = s->n_block;
    n_tok += n[i];
  }
  if (n_tok > cap_tok || (int64_t)max_blocks * n_seq > cap_table)
    return tide_err_set(err, TIDE_ERANGE, "kvcache view: capacity exceeded");
  int32_t t = 0;
  for (int32_t i = 0; i < n_seq; i++) {
    const kv_seq_t *s = &kv->seqs[seqs[i]];
    for (int32_t j = 0; j < n[i]; j++) {
      tok_seq[t] = i;
      tok_pos[t] = start[i] + j;
      t++;
    }
    for (int32_t b = 0; b < max_blocks; b++) block_table[(int64_t)i * max_blocks + b] = b < s->n_block ? s->table[b] : -1;
  }
  batch->n_tok = (int32_t)n_tok;
  batch->n_seq = n_seq;
  batch->max_blocks = max_blocks;
  batch->block_size = kv->block_size;
  batch->tok_seq = tok_seq;
  batch->tok_pos = tok_pos;
  batch->block_table = block_table;
  return 0;
}
