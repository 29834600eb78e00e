#include "bpe.h"

#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

/* ---- hash maps --------------------------------------------------------- */

typedef struct {
  uint64_t key; /* (left << 32) | right, UINT64_MAX = empty */
  int32_t rank;
  int32_t merged;
} merge_slot_t;

typedef struct {
  uint32_t hash;
  uint32_t len;
  uint64_t off; /* into bytes; UINT64_MAX = empty */
  int32_t id;
} vocab_slot_t;

typedef struct {
  uint32_t hash;
  uint32_t len;
  uint64_t key_off; /* into ckeys; UINT64_MAX = empty */
  uint32_t ids_off; /* into cids */
  uint32_t nids;
} cache_slot_t;

#define CACHE_MAX_SLOTS ((size_t)1 << 18) /* at most half full: 131072 words */
#define PAIR_UNKNOWN INT64_MIN
#define PAIR_NONE ((int64_t)-1)

struct tide_bpe {
  int32_t flags;
  int32_t unk_id;
  merge_slot_t *merges; /* (merge_cap) */
  size_t merge_cap, merge_n;
  vocab_slot_t *vocab; /* (vocab_cap) */
  size_t vocab_cap, vocab_n;
  char *bytes; /* token bytes arena (bytes_cap) */
  size_t bytes_len, bytes_cap;
  int32_t byte_id[256];     /* id of the single-byte token, -1 if none */
  int32_t fallback_id[256]; /* id of <0xXX>, -1 if none */
  /* scratch for encode_word */
  int32_t *sym_id, *sym_prev, *sym_next, *sym_len; /* (scratch_cap) */
  struct heap_item *heap;                          /* (heap_cap) */
  size_t scratch_cap, heap_cap;
  /* merges of two single-byte tokens, by (byte0 << 8 | byte1): a small table
   * for the first round of a byte-level word; PAIR_UNKNOWN until looked up */
  int64_t *pair; /* (65536) */
  /* word cache */
  cache_slot_t *cslots; /* (ccap) */
  size_t ccap, cn;
  char *ckeys; /* (ckeys_cap) */
  size_t ckeys_len, ckeys_cap;
  int32_t *cids; /* (cids_cap) */
  size_t cids_len, cids_cap;
};

typedef struct heap_item {
  int32_t rank;
  int32_t pos;
  int32_t merged;
  int32_t left, right; /* the pair when pushed: a stale item no longer matches */
} heap_item_t;

static uint64_t mix64(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return x;
}

static uint32_t hash_bytes(const char *s, size_t n) {
  uint32_t h = 2166136261u;
  for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 16777619u;
  return h;
}

static int merge_grow(tide_bpe_t *b, tide_err_t *err) {
  size_t cap = b->merge_cap ? b->merge_cap * 2 : 1024;
  merge_slot_t *m = malloc(cap * sizeof *m);
  if (!m) return tide_err_set(err, TIDE_ENOMEM, "bpe: out of memory (%zu merges)", cap);
  for (size_t i = 0; i < cap; i++) m[i].key = UINT64_MAX;
  for (size_t i = 0; i < b->merge_cap; i++) {
    if (b->merges[i].key == UINT64_MAX) continue;
    size_t j = mix64(b->merges[i].key) & (cap - 1);
    while (m[j].key != UINT64_MAX) j = (j + 1) & (cap - 1);
    m[j] = b->merges[i];
  }
  free(b->merges);
  b->merges = m;
  b->merge_cap = cap;
  return 0;
}

static const merge_slot_t *merge_find(const tide_bpe_t *b, int32_t l, int32_t r) {
  if (!b->merge_cap) return NULL;
  uint64_t key = ((uint64_t)(uint32_t)l << 32) | (uint32_t)r;
  size_t j = mix64(key) & (b->merge_cap - 1);
  while (b->merges[j].key != UINT64_MAX) {
    if (b->merges[j].key == key) return &b->merges[j];
    j = (j + 1) & (b->merge_cap - 1);
  }
  return NULL;
}

static int vocab_grow(tide_bpe_t *b, tide_err_t *err) {
  size_t cap = b->vocab_cap ? b->vocab_cap * 2 : 1024;
  vocab_slot_t *v = malloc(cap * sizeof *v);
  if (!v) return tide_err_set(err, TIDE_ENOMEM, "bpe: out of memory (%zu tokens)", cap);
  for (size_t i = 0; i < cap; i++) v[i].off = UINT64_MAX;
  for (size_t i = 0; i < b->vocab_cap; i++) {
    if (b->vocab[i].off == UINT64_MAX) continue;
    size_t j = b->vocab[i].hash & (cap - 1);
    while (v[j].off != UINT64_MAX) j = (j + 1) & (cap - 1);
    v[j] = b->vocab[i];
  }
  free(b->vocab);
  b->vocab = v;
  b->vocab_cap = cap;
  return 0;
}

static vocab_slot_t *vocab_slot(const tide_bpe_t *b, const char *s, size_t n, uint32_t h) {
  size_t j = h & (b->vocab_cap - 1);
  while (b->vocab[j].off != UINT64_MAX) {
    vocab_slot_t *e = &b->vocab[j];
    if (e->hash == h && e->len == n && memcmp(b->bytes + e->off, s, n) == 0) return e;
    j = (j + 1) & (b->vocab_cap - 1);
  }
  return &b->vocab[j];
}

/* ---- object ------------------------------------------------------------ */

int tide_bpe_new(int32_t flags, int32_t unk_id, tide_bpe_t **out, tide_err_t *err) {
  if (!out) return tide_err_set(err, TIDE_EINVAL, "bpe_new: out is NULL");
  *out = NULL;
  tide_bpe_t *b = calloc(1, sizeof *b);
  if (!b) return tide_err_set(err, TIDE_ENOMEM, "bpe_new: out of memory");
  b->flags = flags;
  b->unk_id = unk_id;
  for (int i = 0; i < 256; i++) b->byte_id[i] = b->fallback_id[i] = -1;
  int rc = merge_grow(b, err);
  if (rc == 0) rc = vocab_grow(b, err);
  if (rc) {
    tide_bpe_release(b);
    return rc;
  }
  *out = b;
  return 0;
}

void tide_bpe_release(tide_bpe_t *b) {
  if (!b) return;
  free(b->merges);
  free(b->vocab);
  free(b->bytes);
  free(b->sym_id);
  free(b->sym_prev);
  free(b->sym_next);
  free(b->sym_len);
  free(b->heap);
  free(b->pair);
  free(b->cslots);
  free(b->ckeys);
  free(b->cids);
  free(b);
}

static int hexval(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

int tide_bpe_add_token(tide_bpe_t *b, const char *tok, size_t len, int32_t id, tide_err_t *err) {
  if (!b || (!tok && len)) return tide_err_set(err, TIDE_EINVAL, "bpe_add_token: NULL argument");
  if (len > UINT32_MAX) return tide_err_set(err, TIDE_EINVAL, "bpe_add_token: token too long");
  if ((b->vocab_n + 1) * 2 > b->vocab_cap) {
    int rc = vocab_grow(b, err);
    if (rc) return rc;
  }
  uint32_t h = hash_bytes(tok, len);
  vocab_slot_t *e = vocab_slot(b, tok, len, h);
  if (e->off != UINT64_MAX) {
    e->id = id;
  } else {
    if (b->bytes_len + len > b->bytes_cap) {
      size_t cap = b->bytes_cap ? b->bytes_cap * 2 : 65536;
      while (cap < b->bytes_len + len) cap *= 2;
      char *nb = realloc(b->bytes, cap);
      if (!nb) return tide_err_set(err, TIDE_ENOMEM, "bpe_add_token: out of memory");
      b->bytes = nb;
      b->bytes_cap = cap;
    }
    if (len) memcpy(b->bytes + b->bytes_len, tok, len);
    e->off = b->bytes_len;
    e->len = (uint32_t)len;
    e->hash = h;
    e->id = id;
    b->bytes_len += len;
    b->vocab_n++;
  }
  if (len == 1) {
    b->byte_id[(uint8_t)tok[0]] = id;
    free(b->pair); /* byte ids changed: rebuild lazily */
    b->pair = NULL;
  }
  if (len == 6 && tok[0] == '<' && tok[1] == '0' && tok[2] == 'x' && tok[5] == '>') {
    int hi = hexval(tok[3]), lo = hexval(tok[4]);
    if (hi >= 0 && lo >= 0) b->fallback_id[hi * 16 + lo] = id;
  }
  return 0;
}

int32_t tide_bpe_token_id(const tide_bpe_t *b, const char *tok, size_t len) {
  if (!b || (!tok && len)) return -1;
  vocab_slot_t *e = vocab_slot(b, tok, len, hash_bytes(tok, len));
  return e->off == UINT64_MAX ? -1 : e->id;
}

int tide_bpe_add_merge(tide_bpe_t *b, int32_t left, int32_t right, int32_t merged, int32_t rank,
                       tide_err_t *err) {
  if (!b) return tide_err_set(err, TIDE_EINVAL, "bpe_add_merge: NULL object");
  if (left < 0 || right < 0 || merged < 0 || rank < 0)
    return tide_err_set(err, TIDE_EINVAL, "bpe_add_merge: negative id or rank (%d %d -> %d, rank %d)", (int)left,
                        (int)right, (int)merged, (int)rank);
  if ((b->merge_n + 1) * 2 > b->merge_cap) {
    int rc = merge_grow(b, err);
    if (rc) return rc;
  }
  uint64_t key = ((uint64_t)(uint32_t)left << 32) | (uint32_t)right;
  size_t j = mix64(key) & (b->merge_cap - 1);
  while (b->merges[j].key != UINT64_MAX) {
    if (b->merges[j].key == key) return 0; /* keep the first rank */
    j = (j + 1) & (b->merge_cap - 1);
  }
  b->merges[j].key = key;
  b->merges[j].rank = rank;
  b->merges[j].merged = merged;
  b->merge_n++;
  free(b->pair); /* merges changed: rebuild lazily */
  b->pair = NULL;
  return 0;
}

int tide_bpe_add_merges(tide_bpe_t *b, const int32_t *rows, int32_t n, int32_t rank0, tide_err_t *err) {
  if (!b || (!rows && n)) return tide_err_set(err, TIDE_EINVAL, "bpe_add_merges: NULL argument");
  for (int32_t i = 0; i < n; i++) {
    int rc = tide_bpe_add_merge(b, rows[3 * i], rows[3 * i + 1], rows[3 * i + 2], rank0 + i, err);
    if (rc) return rc;
  }
  return 0;
}

/* ---- merge loop --------------------------------------------------------- */

static int scratch(tide_bpe_t *b, size_t n, tide_err_t *err) {
  if (n <= b->scratch_cap && 2 * n <= b->heap_cap) return 0;
  size_t cap = b->scratch_cap ? b->scratch_cap : 64;
  while (cap < n) cap *= 2;
  int32_t *p[4];
  int32_t **dst[4] = {&b->sym_id, &b->sym_prev, &b->sym_next, &b->sym_len};
  for (int k = 0; k < 4; k++) {
    p[k] = realloc(*dst[k], cap * sizeof(int32_t));
    if (!p[k]) return tide_err_set(err, TIDE_ENOMEM, "bpe: out of memory for a %zu-byte word", n);
    *dst[k] = p[k];
  }
  b->scratch_cap = cap;
  heap_item_t *h = realloc(b->heap, 2 * cap * sizeof *h);
  if (!h) return tide_err_set(err, TIDE_ENOMEM, "bpe: out of memory for a %zu-byte word", n);
  b->heap = h;
  b->heap_cap = 2 * cap;
  return 0;
}

static int heap_less(const heap_item_t *a, const heap_item_t *c) {
  return a->rank < c->rank || (a->rank == c->rank && a->pos < c->pos);
}

static void heap_push(heap_item_t *h, size_t *n, heap_item_t it) {
  size_t i = (*n)++;
  while (i > 0) {
    size_t p = (i - 1) / 2;
    if (!heap_less(&it, &h[p])) break;
    h[i] = h[p];
    i = p;
  }
  h[i] = it;
}

static heap_item_t heap_pop(heap_item_t *h, size_t *n) {
  heap_item_t top = h[0];
  heap_item_t last = h[--(*n)];
  size_t i = 0;
  for (;;) {
    size_t l = 2 * i + 1, r = l + 1, m = i;
    const heap_item_t *best = &last;
    if (l < *n && heap_less(&h[l], best)) {
      m = l;
      best = &h[l];
    }
    if (r < *n && heap_less(&h[r], best)) m = r;
    if (m == i) break;
    h[i] = h[m];
    i = m;
  }
  if (*n) h[i] = last;
  return top;
}

static size_t utf8_len(const uint8_t *s, size_t n) {
  uint8_t c = s[0];
  size_t k = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
  if (k > n) k = 1;
  for (size_t i = 1; i < k; i++)
    if ((s[i] & 0xC0) != 0x80) return 1;
  return k;
}

static void try_push(tide_bpe_t *b, size_t *hn, int32_t pos) {
  int32_t nx = b->sym_next[pos];
  if (nx < 0) return;
  const merge_slot_t *m = merge_find(b, b->sym_id[pos], b->sym_id[nx]);
  if (m) heap_push(b->heap, hn, (heap_item_t){m->rank, pos, m->merged, b->sym_id[pos], b->sym_id[nx]});
}

int tide_bpe_encode_word(tide_bpe_t *b, const char *word, size_t len, int32_t *out, size_t cap,
                         size_t *n_out, tide_err_t *err) {
  if (!b || !n_out || (!word && len) || (!out && cap))
    return tide_err_set(err, TIDE_EINVAL, "bpe_encode_word: NULL argument");
  *n_out = 0;
  if (len == 0) return 0;
  if (len > INT32_MAX / 4) return tide_err_set(err, TIDE_EINVAL, "bpe_encode_word: word too long");
  if (b->flags & TIDE_BPE_IGNORE_MERGES) {
    int32_t id = tide_bpe_token_id(b, word, len);
    if (id >= 0) {
      *n_out = 1;
      if (cap < 1) return tide_err_set(err, TIDE_ERANGE, "bpe_encode_word: output buffer too small");
      out[0] = id;
      return 0;
    }
  }
  /* up to 4 symbols per byte with byte fallback of a 4-byte char: no, one per byte */
  int rc = scratch(b, len, err);
  if (rc) return rc;
  const uint8_t *s = (const uint8_t *)word;
  int32_t n = 0;
  int prev_unk = 0;
  for (size_t i = 0; i < len;) {
    size_t k = (b->flags & TIDE_BPE_BYTE_LEVEL) ? 1 : utf8_len(s + i, len - i);
    int32_t id = k == 1 ? b->byte_id[s[i]] : tide_bpe_token_id(b, word + i, k);
    if (id >= 0) {
      b->sym_id[n] = id;
      b->sym_len[n] = (int32_t)k;
      n++;
      prev_unk = 0;
    } else if (b->flags & TIDE_BPE_BYTE_FALLBACK) {
      int ok = 1;
      for (size_t j = 0; j < k; j++) ok = ok && b->fallback_id[s[i + j]] >= 0;
      if (ok) {
        for (size_t j = 0; j < k; j++) {
          b->sym_id[n] = b->fallback_id[s[i + j]];
          b->sym_len[n] = 1;
          n++;
        }
        prev_unk = 0;
      } else if (b->unk_id >= 0) {
        goto unk;
      }
    } else if (b->unk_id >= 0) {
    unk:
      if ((b->flags & TIDE_BPE_FUSE_UNK) && prev_unk) {
        b->sym_len[n - 1] += (int32_t)k;
      } else {
        b->sym_id[n] = b->unk_id;
        b->sym_len[n] = (int32_t)k;
        n++;
      }
      prev_unk = 1;
    }
    i += k;
  }
  for (int32_t i = 0; i < n; i++) {
    b->sym_prev[i] = i - 1;
    b->sym_next[i] = i + 1 < n ? i + 1 : -1;
  }
  size_t hn = 0;
  if ((b->flags & TIDE_BPE_BYTE_LEVEL) && (size_t)n == len && !b->pair) {
    b->pair = malloc(65536 * sizeof *b->pair);
    if (b->pair)
      for (size_t k = 0; k < 65536; k++) b->pair[k] = PAIR_UNKNOWN;
  }
  if ((b->flags & TIDE_BPE_BYTE_LEVEL) && (size_t)n == len && b->pair) {
    /* every symbol is one byte: first-round pairs come from the small table */
    for (int32_t i = 0; i + 1 < n; i++) {
      int64_t *e = &b->pair[(size_t)s[i] << 8 | s[i + 1]];
      if (*e == PAIR_UNKNOWN) {
        const merge_slot_t *m = merge_find(b, b->sym_id[i], b->sym_id[i + 1]);
        *e = m ? ((int64_t)m->rank << 32 | (uint32_t)m->merged) : PAIR_NONE;
      }
      if (*e != PAIR_NONE)
        heap_push(b->heap, &hn,
                  (heap_item_t){(int32_t)(*e >> 32), i, (int32_t)(uint32_t)*e, b->sym_id[i], b->sym_id[i + 1]});
    }
  } else {
    for (int32_t i = 0; i + 1 < n; i++) try_push(b, &hn, i);
  }
  while (hn) {
    heap_item_t top = heap_pop(b->heap, &hn);
    int32_t pos = top.pos;
    if (b->sym_len[pos] == 0) continue;
    int32_t nx = b->sym_next[pos];
    if (nx < 0) continue;
    if (b->sym_id[pos] != top.left || b->sym_id[nx] != top.right) continue;
    /* merge nx into pos */
    b->sym_id[pos] = top.merged;
    b->sym_len[pos] += b->sym_len[nx];
    b->sym_len[nx] = 0;
    int32_t nn = b->sym_next[nx];
    b->sym_next[pos] = nn;
    if (nn >= 0) b->sym_prev[nn] = pos;
    if (hn + 2 > b->heap_cap) { /* cannot happen: each merge pushes at most 2 and removes a symbol */
      return tide_err_set(err, TIDE_ESTATE, "bpe_encode_word: heap overflow");
    }
    int32_t pv = b->sym_prev[pos];
    if (nn >= 0) {
      uint64_t key = ((uint64_t)(uint32_t)b->sym_id[pos] << 32) | (uint32_t)b->sym_id[nn];
      __builtin_prefetch(&b->merges[mix64(key) & (b->merge_cap - 1)]);
    }
    if (pv >= 0) try_push(b, &hn, pv);
    try_push(b, &hn, pos);
  }
  size_t cnt = 0;
  for (int32_t i = 0; i < n && i >= 0; i = b->sym_next[i]) {
    if (cnt < cap) out[cnt] = b->sym_id[i];
    cnt++;
  }
  *n_out = cnt;
  if (cnt > cap) return tide_err_set(err, TIDE_ERANGE, "bpe_encode_word: output buffer too small (%zu ids)", cnt);
  return 0;
}

/* ---- word cache and batches of words ------------------------------------ */

void tide_bpe_cache_clear(tide_bpe_t *b) {
  if (!b) return;
  for (size_t i = 0; i < b->ccap; i++) b->cslots[i].key_off = UINT64_MAX;
  b->cn = 0;
  b->ckeys_len = 0;
  b->cids_len = 0;
}

int64_t tide_bpe_cache_size(const tide_bpe_t *b) { return b ? (int64_t)b->cn : 0; }

static int cache_grow(tide_bpe_t *b, tide_err_t *err) {
  size_t cap = b->ccap ? b->ccap * 2 : 4096;
  cache_slot_t *c = malloc(cap * sizeof *c);
  if (!c) return tide_err_set(err, TIDE_ENOMEM, "bpe: out of memory for the word cache");
  for (size_t i = 0; i < cap; i++) c[i].key_off = UINT64_MAX;
  for (size_t i = 0; i < b->ccap; i++) {
    if (b->cslots[i].key_off == UINT64_MAX) continue;
    size_t j = b->cslots[i].hash & (cap - 1);
    while (c[j].key_off != UINT64_MAX) j = (j + 1) & (cap - 1);
    c[j] = b->cslots[i];
  }
  free(b->cslots);
  b->cslots = c;
  b->ccap = cap;
  return 0;
}

static int reserve(void **buf, size_t *cap, size_t need, size_t elem, tide_err_t *err) {
  if (need <= *cap) return 0;
  size_t c = *cap ? *cap : 4096;
  while (c < need) c *= 2;
  void *nb = realloc(*buf, c * elem);
  if (!nb) return tide_err_set(err, TIDE_ENOMEM, "bpe: out of memory for the word cache");
  *buf = nb;
  *cap = c;
  return 0;
}

/* encode one word through the cache; appends to out */
static int cached_word(tide_bpe_t *b, const char *w, size_t n, int32_t *out, size_t cap, size_t *pos,
                       tide_err_t *err) {
  uint32_t h = hash_bytes(w, n);
  cache_slot_t *e = NULL;
  if (b->ccap) {
    size_t j = h & (b->ccap - 1);
    while (b->cslots[j].key_off != UINT64_MAX) {
      cache_slot_t *c = &b->cslots[j];
      if (c->hash == h && c->len == n && memcmp(b->ckeys + c->key_off, w, n) == 0) {
        e = c;
        break;
      }
      j = (j + 1) & (b->ccap - 1);
    }
  }
  if (e) {
    if (*pos + e->nids > cap) return tide_err_set(err, TIDE_ERANGE, "bpe_encode_words: output buffer too small");
    memcpy(out + *pos, b->cids + e->ids_off, e->nids * sizeof *out);
    *pos += e->nids;
    return 0;
  }
  size_t k = 0;
  int rc = tide_bpe_encode_word(b, w, n, out + *pos, cap - *pos, &k, err);
  if (rc) return rc;
  /* remember it */
  if ((b->cn + 1) * 2 > b->ccap) {
    if (b->ccap >= CACHE_MAX_SLOTS) tide_bpe_cache_clear(b);
    else if ((rc = cache_grow(b, err))) return rc;
  }
  if ((rc = reserve((void **)&b->ckeys, &b->ckeys_cap, b->ckeys_len + n, 1, err))) return rc;
  if ((rc = reserve((void **)&b->cids, &b->cids_cap, b->cids_len + k, sizeof(int32_t), err))) return rc;
  if (b->cids_len + k > UINT32_MAX) tide_bpe_cache_clear(b);
  size_t j = h & (b->ccap - 1);
  while (b->cslots[j].key_off != UINT64_MAX) j = (j + 1) & (b->ccap - 1);
  cache_slot_t *c = &b->cslots[j];
  if (n) memcpy(b->ckeys + b->ckeys_len, w, n);
  memcpy(b->cids + b->cids_len, out + *pos, k * sizeof *out);
  c->hash = h;
  c->len = (uint32_t)n;
  c->key_off = b->ckeys_len;
  c->ids_off = (uint32_t)b->cids_len;
  c->nids = (uint32_t)k;
  b->ckeys_len += n;
  b->cids_len += k;
  b->cn++;
  *pos += k;
  return 0;
}

int tide_bpe_encode_words(tide_bpe_t *b, const char *text, size_t len, const int32_t *bounds, int32_t n,
                          int32_t *out, size_t cap, size_t *n_out, tide_err_t *err) {
  if (!b || !n_out || (!text && len) || (!bounds && n > 0) || (!out && cap))
    return tide_err_set(err, TIDE_EINVAL, "bpe_encode_words: NULL argument");
  *n_out = 0;
  size_t pos = 0;
  for (int32_t i = 0; i < n; i++) {
    int32_t a = bounds[i], e = bounds[i + 1];
    if (a < 0 || e < a || (size_t)e > len)
      return tide_err_set(err, TIDE_EINVAL, "bpe_encode_words: bad word bounds [%d, %d) for %zu bytes", (int)a,
                          (int)e, len);
    if (e == a) continue;
    int rc = cached_word(b, text + a, (size_t)(e - a), out, cap, &pos, err);
    if (rc) {
      *n_out = pos;
      return rc;
    }
  }
  *n_out = pos;
  return 0;
}

/* ---- normalizers ---------------------------------------------------------- */

int tide_bpe_normalize(const char *s, size_t len, int32_t form, char **out, size_t *out_len, tide_err_t *err) {
  if (!out || !out_len || (!s && len)) return tide_err_set(err, TIDE_EINVAL, "bpe_normalize: NULL argument");
  *out = NULL;
  *out_len = 0;
  if (len > (size_t)INT32_MAX) return tide_err_set(err, TIDE_EINVAL, "bpe_normalize: text too long");
  if (form == 4) {
    char *buf = malloc(len * 2 + 4); /* lowercase never grows a char by more than 2x */
    if (!buf) return tide_err_set(err, TIDE_ENOMEM, "bpe_normalize: out of memory");
    size_t o = 0;
    for (size_t i = 0; i < len;) {
      utf8proc_int32_t cp;
      utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)s + i, (utf8proc_ssize_t)(len - i), &cp);
      if (k <= 0) {
        buf[o++] = s[i++]; /* invalid byte: keep as is */
        continue;
      }
      utf8proc_int32_t lc = utf8proc_tolower(cp);
      o += (size_t)utf8proc_encode_char(lc, (utf8proc_uint8_t *)buf + o);
      i += (size_t)k;
    }
    *out = buf;
    *out_len = o;
    return 0;
  }
  int opts = UTF8PROC_STABLE;
  switch (form) {
  case 0: opts |= UTF8PROC_COMPOSE; break;
  case 1: opts |= UTF8PROC_DECOMPOSE; break;
  case 2: opts |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT; break;
  case 3: opts |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT; break;
  default: return tide_err_set(err, TIDE_EINVAL, "bpe_normalize: unknown form %d", (int)form);
  }
  utf8proc_uint8_t *res = NULL;
  utf8proc_ssize_t n = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)len, &res, opts);
  if (n < 0) return tide_err_set(err, TIDE_EINVAL, "bpe_normalize: %s", utf8proc_errmsg(n));
  *out = (char *)res;
  *out_len = (size_t)n;
  return 0;
}

void tide_bpe_free(void *p) { free(p); }
