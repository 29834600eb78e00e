/* gguf.c: GGUF v2/v3 (llama.cpp's format), little-endian.
 *
 *   magic "GGUF" | u32 version | u64 n_tensors | u64 n_kv
 *   n_kv x (string key | u32 type | value)
 *   n_tensors x (string name | u32 n_dims | u64 dims[n_dims] (innermost first)
 *                | u32 ggml type | u64 offset into the data section)
 *   zero padding to general.alignment (default 32) | data section
 *
 * A string is u64 length + bytes (no NUL); an array value is u32 element
 * type + u64 count + elements. Every length and count is checked against
 * the bytes left in the file before anything is allocated from it. */
#include "gguf.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fileio.h"

#define GGUF_MAGIC "GGUF"
#define GGUF_DEFAULT_ALIGNMENT 32u
#define GGUF_MAX_DIMS 4

/* ---- GGML type ids ----------------------------------------------------- */

static const struct {
  int32_t ggml;
  int32_t dtype;
} ggml_map[] = {
    {0, TIDE_DTYPE_F32},   {1, TIDE_DTYPE_F16},   {2, TIDE_DTYPE_Q4_0},  {3, TIDE_DTYPE_Q4_1},
    {6, TIDE_DTYPE_Q5_0},  {7, TIDE_DTYPE_Q5_1},  {8, TIDE_DTYPE_Q8_0},  {9, TIDE_DTYPE_Q8_1},
    {10, TIDE_DTYPE_Q2_K}, {11, TIDE_DTYPE_Q3_K}, {12, TIDE_DTYPE_Q4_K}, {13, TIDE_DTYPE_Q5_K},
    {14, TIDE_DTYPE_Q6_K}, {15, TIDE_DTYPE_Q8_K}, {24, TIDE_DTYPE_I8},   {25, TIDE_DTYPE_I16},
    {26, TIDE_DTYPE_I32},  {27, TIDE_DTYPE_I64},  {28, TIDE_DTYPE_F64},  {30, TIDE_DTYPE_BF16},
};
#define N_GGML_MAP ((int)(sizeof ggml_map / sizeof ggml_map[0]))

int32_t tide_gguf_dtype_from_ggml(int32_t ggml_type) {
  for (int i = 0; i < N_GGML_MAP; i++)
    if (ggml_map[i].ggml == ggml_type) return ggml_map[i].dtype;
  return -1;
}

int32_t tide_gguf_ggml_from_dtype(int32_t dtype) {
  for (int i = 0; i < N_GGML_MAP; i++)
    if (ggml_map[i].dtype == dtype) return ggml_map[i].ggml;
  return -1;
}

/* Bytes of one value of a scalar type; 0 for STRING/ARRAY/unknown. */
static int type_size(int32_t t) {
  switch (t) {
  case TIDE_GGUF_UINT8: case TIDE_GGUF_INT8: case TIDE_GGUF_BOOL: return 1;
  case TIDE_GGUF_UINT16: case TIDE_GGUF_INT16: return 2;
  case TIDE_GGUF_UINT32: case TIDE_GGUF_INT32: case TIDE_GGUF_FLOAT32: return 4;
  case TIDE_GGUF_UINT64: case TIDE_GGUF_INT64: case TIDE_GGUF_FLOAT64: return 8;
  default: return 0;
  }
}

static const char *type_name(int32_t t) {
  static const char *names[] = {"uint8", "int8",   "uint16", "int16", "uint32", "int32", "float32",
                                "bool",  "string", "array",  "uint64", "int64", "float64"};
  return t >= 0 && t <= 12 ? names[t] : "unknown";
}

/* ---- reader ------------------------------------------------------------ */

typedef struct gguf_kv {
  int64_t key;      /* strtab offset */
  int32_t type;     /* tide_gguf_type_t */
  int32_t arr_type; /* element type for arrays, else -1 */
  int64_t n;        /* 1 for scalars, count for arrays */
  int64_t pos;      /* numeric: file offset of the first value */
  int64_t str0;     /* strings: index of the first in g->strs */
} gguf_kv_t;

typedef struct gguf_str {
  int64_t off, len; /* strtab offset (NUL-terminated copy) and length */
} gguf_str_t;

typedef struct gguf_tensor {
  int64_t name;     /* strtab offset */
  int32_t ggml, dtype, ndim, pad_;
  int64_t shape[TIDE_MAX_DIMS]; /* outermost first */
  int64_t offset;               /* relative to the data section */
  int64_t nbytes;
} gguf_tensor_t;

struct tide_gguf {
  char *path;
  tide_storage_t *map;
  uint32_t version, alignment;
  int64_t data_start;
  gguf_kv_t *kvs;
  int64_t n_kv;
  gguf_tensor_t *ts;
  int64_t n_t;
  int64_t *by_name;   /* tensor indices sorted by name */
  int64_t *kv_by_key; /* key indices sorted by key */
  gguf_str_t *strs;
  int64_t n_strs, cap_strs;
  char *strtab;
  int64_t strtab_len, strtab_cap;
};

typedef struct rd {
  const uint8_t *p;
  int64_t n, pos;
  const char *path;
  tide_err_t *err;
} rd_t;

static int truncated(rd_t *r, const char *what) {
  return tide_err_set(r->err, TIDE_EFORMAT, "%s: truncated at byte %lld while reading %s (file has %lld bytes)",
                      r->path, (long long)r->pos, what, (long long)r->n);
}

static int rd_raw(rd_t *r, void *dst, int64_t k, const char *what) {
  if (k > r->n - r->pos) return truncated(r, what);
  memcpy(dst, r->p + r->pos, (size_t)k);
  r->pos += k;
  return 0;
}

static int rd_u32(rd_t *r, uint32_t *v, const char *what) {
  uint8_t b[4] = {0};
  int rc = rd_raw(r, b, 4, what);
  if (rc) return rc;
  *v = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
  return 0;
}

static int rd_u64(rd_t *r, uint64_t *v, const char *what) {
  uint8_t b[8] = {0};
  int rc = rd_raw(r, b, 8, what);
  if (rc) return rc;
  uint64_t x = 0;
  for (int i = 7; i >= 0; i--) x = (x << 8) | b[i];
  *v = x;
  return 0;
}

static uint64_t le_at(const uint8_t *p, int size) {
  uint64_t x = 0;
  for (int i = size - 1; i >= 0; i--) x = (x << 8) | p[i];
  return x;
}

/* Copy a string into the string table (NUL-terminated); returns its offset. */
static int strtab_add(tide_gguf_t *g, const uint8_t *s, int64_t len, int64_t *off, tide_err_t *err) {
  if (len + 1 > g->strtab_cap - g->strtab_len) {
    int64_t cap = g->strtab_cap ? g->strtab_cap : 4096;
    while (cap - g->strtab_len < len + 1) cap *= 2;
    char *p = realloc(g->strtab, (size_t)cap);
    if (!p) return tide_err_set(err, TIDE_ENOMEM, "%s: out of memory for strings", g->path);
    g->strtab = p;
    g->strtab_cap = cap;
  }
  *off = g->strtab_len;
  if (len) memcpy(g->strtab + g->strtab_len, s, (size_t)len);
  g->strtab[g->strtab_len + len] = '\0';
  g->strtab_len += len + 1;
  return 0;
}

/* Read a GGUF string into the string table. check_utf8 for keys and names. */
static int rd_str(tide_gguf_t *g, rd_t *r, int64_t *off, int64_t *len, int check_utf8, const char *what) {
  uint64_t n;
  int64_t at = r->pos;
  int rc = rd_u64(r, &n, what);
  if (rc) return rc;
  if (n > (uint64_t)(r->n - r->pos))
    return tide_err_set(r->err, TIDE_EFORMAT, "%s: %s at byte %lld has length %llu, beyond the end of the file",
                        r->path, what, (long long)at, (unsigned long long)n);
  const uint8_t *s = r->p + r->pos;
  if (check_utf8) {
    int64_t bad = tide_fileio_utf8_check(s, (int64_t)n);
    if (bad >= 0 || memchr(s, 0, (size_t)n))
      return tide_err_set(r->err, TIDE_EFORMAT, "%s: %s at byte %lld is not valid UTF-8 text", r->path, what,
                          (long long)at);
  }
  r->pos += (int64_t)n;
  *len = (int64_t)n;
  return strtab_add(g, s, (int64_t)n, off, r->err);
}

static int strs_reserve(tide_gguf_t *g, int64_t more, tide_err_t *err) {
  if (more <= g->cap_strs - g->n_strs) return 0;
  int64_t cap = g->cap_strs ? g->cap_strs : 64;
  while (cap - g->n_strs < more) cap *= 2;
  gguf_str_t *p = realloc(g->strs, (size_t)cap * sizeof *p);
  if (!p) return tide_err_set(err, TIDE_ENOMEM, "%s: out of memory", g->path);
  g->strs = p;
  g->cap_strs = cap;
  return 0;
}

static const char *key_of(const tide_gguf_t *g, const gguf_kv_t *kv) { return g->strtab + kv->key; }

static int read_kv(tide_gguf_t *g, rd_t *r, gguf_kv_t *kv, int64_t idx) {
  char what[96];
  int64_t klen;
  snprintf(what, sizeof what, "the key of metadata entry %lld", (long long)idx);
  int rc = rd_str(g, r, &kv->key, &klen, 1, what);
  if (rc) return rc;
  const char *key = g->strtab + kv->key;
  uint32_t t;
  if ((rc = rd_u32(r, &t, "a metadata value type"))) return rc;
  kv->type = (int32_t)t;
  kv->arr_type = -1;
  kv->n = 1;
  uint32_t et = t;
  if (t == TIDE_GGUF_ARRAY) {
    uint64_t n;
    if ((rc = rd_u32(r, &et, "an array element type"))) return rc;
    if ((rc = rd_u64(r, &n, "an array length"))) return rc;
    if (et == TIDE_GGUF_ARRAY)
      return tide_err_set(r->err, TIDE_EUNSUPPORTED, "%s: metadata '%s': arrays of arrays are not supported", r->path,
                          key);
    int64_t min = et == TIDE_GGUF_STRING ? 8 : type_size((int32_t)et);
    if (min == 0)
      return tide_err_set(r->err, TIDE_EFORMAT, "%s: metadata '%s': unknown array element type %u", r->path, key, et);
    if (n > (uint64_t)((r->n - r->pos) / min))
      return tide_err_set(r->err, TIDE_EFORMAT, "%s: metadata '%s': array of %llu %s values does not fit in the file",
                          r->path, key, (unsigned long long)n, type_name((int32_t)et));
    kv->arr_type = (int32_t)et;
    kv->n = (int64_t)n;
  } else if (t != TIDE_GGUF_STRING && type_size((int32_t)t) == 0) {
    return tide_err_set(r->err, TIDE_EFORMAT, "%s: metadata '%s': unknown value type %u", r->path, key, t);
  }
  if (et == TIDE_GGUF_STRING) {
    if ((rc = strs_reserve(g, kv->n, r->err))) return rc;
    kv->str0 = g->n_strs;
    for (int64_t j = 0; j < kv->n; j++) {
      gguf_str_t *s = &g->strs[g->n_strs];
      snprintf(what, sizeof what, "string %lld of '%.32s'", (long long)j, key);
      if ((rc = rd_str(g, r, &s->off, &s->len, 0, what))) return rc;
      key = g->strtab + kv->key; /* the table may have moved */
      g->n_strs++;
    }
    return 0;
  }
  int64_t sz = type_size((int32_t)et);
  kv->pos = r->pos;
  if (kv->n > (r->n - r->pos) / sz) return truncated(r, "a metadata value");
  if (et == TIDE_GGUF_BOOL) {
    for (int64_t j = 0; j < kv->n; j++)
      if (r->p[r->pos + j] > 1)
        return tide_err_set(r->err, TIDE_EFORMAT, "%s: metadata '%s': bool value %u is neither 0 nor 1", r->path, key,
                            r->p[r->pos + j]);
  }
  r->pos += kv->n * sz;
  return 0;
}

static int read_tensor_info(tide_gguf_t *g, rd_t *r, gguf_tensor_t *t, int64_t idx) {
  char what[96];
  int64_t nlen;
  snprintf(what, sizeof what, "the name of tensor %lld", (long long)idx);
  int rc = rd_str(g, r, &t->name, &nlen, 1, what);
  if (rc) return rc;
  uint32_t nd;
  if ((rc = rd_u32(r, &nd, "a tensor's dimension count"))) return rc;
  const char *name = g->strtab + t->name;
  if (nd > GGUF_MAX_DIMS)
    return tide_err_set(r->err, TIDE_EFORMAT, "%s: tensor '%s': %u dimensions (at most %d)", r->path, name, nd,
                        GGUF_MAX_DIMS);
  t->ndim = (int32_t)nd;
  uint64_t dims[GGUF_MAX_DIMS];
  for (uint32_t d = 0; d < nd; d++)
    if ((rc = rd_u64(r, &dims[d], "a tensor dimension"))) return rc;
  uint32_t type;
  uint64_t off;
  if ((rc = rd_u32(r, &type, "a tensor type"))) return rc;
  if ((rc = rd_u64(r, &off, "a tensor offset"))) return rc;
  t->ggml = (int32_t)type;
  t->dtype = type > 1000 ? -1 : tide_gguf_dtype_from_ggml((int32_t)type);
  if (t->dtype < 0)
    return tide_err_set(r->err, TIDE_EDTYPE, "%s: tensor '%s': unknown or unsupported GGML type %u", r->path, name,
                        type);
  const tide_dtype_traits_t *tr = tide_dtype_traits(t->dtype);
  int64_t numel = 1;
  for (uint32_t d = 0; d < nd; d++) {
    if (dims[d] > (uint64_t)INT64_MAX)
      return tide_err_set(r->err, TIDE_EFORMAT, "%s: tensor '%s': dimension %u is %llu", r->path, name, d,
                          (unsigned long long)dims[d]);
    int64_t x = (int64_t)dims[d];
    if (x > 0 && numel > INT64_MAX / 16 / x)
      return tide_err_set(r->err, TIDE_EFORMAT, "%s: tensor '%s': element count overflows", r->path, name);
    numel *= x;
    t->shape[nd - 1 - d] = x; /* outermost first */
  }
  for (int d = (int)nd; d < TIDE_MAX_DIMS; d++) t->shape[d] = 1;
  if (tr->block_size > 1 && (nd == 0 || dims[0] % (uint64_t)tr->block_size != 0))
    return tide_err_set(r->err, TIDE_ESHAPE, "%s: tensor '%s': innermost dimension %llu is not a multiple of %s's block of %d",
                        r->path, name, nd ? (unsigned long long)dims[0] : 0ULL, tr->name, (int)tr->block_size);
  t->nbytes = numel / tr->block_size * tr->block_bytes;
  if (off > (uint64_t)INT64_MAX)
    return tide_err_set(r->err, TIDE_ERANGE, "%s: tensor '%s': offset %llu is out of range", r->path, name,
                        (unsigned long long)off);
  t->offset = (int64_t)off;
  return 0;
}

static int cmp_tensor_off(const void *a, const void *b, void *ctx) {
  const gguf_tensor_t *ts = ctx;
  const gguf_tensor_t *x = &ts[*(const int64_t *)a], *y = &ts[*(const int64_t *)b];
  if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
  return (x->nbytes > y->nbytes) - (x->nbytes < y->nbytes);
}

static int cmp_tensor_name(const void *a, const void *b, void *ctx) {
  const tide_gguf_t *g = ctx;
  return strcmp(g->strtab + g->ts[*(const int64_t *)a].name, g->strtab + g->ts[*(const int64_t *)b].name);
}

static int check_tensors(tide_gguf_t *g, tide_err_t *err) {
  int64_t data_size = g->map->nbytes - g->data_start;
  if (data_size < 0) data_size = 0;
  for (int64_t i = 0; i < g->n_t; i++) {
    const gguf_tensor_t *t = &g->ts[i];
    const char *name = g->strtab + t->name;
    if (t->offset % g->alignment != 0)
      return tide_err_set(err, TIDE_EFORMAT, "%s: tensor '%s': offset %lld is not a multiple of the alignment %u",
                          g->path, name, (long long)t->offset, g->alignment);
    if (t->nbytes > 0 && (t->offset > data_size || t->nbytes > data_size - t->offset))
      return tide_err_set(err, TIDE_ERANGE,
                          "%s: tensor '%s': %lld bytes at offset %lld go past the end of the file (data section has %lld bytes)",
                          g->path, name, (long long)t->nbytes, (long long)t->offset, (long long)data_size);
  }
  int64_t *idx = malloc((size_t)(g->n_t ? g->n_t : 1) * sizeof *idx);
  if (!idx) return tide_err_set(err, TIDE_ENOMEM, "%s: out of memory", g->path);
  for (int64_t i = 0; i < g->n_t; i++) idx[i] = i;
  if (g->n_t > 1) qsort_r(idx, (size_t)g->n_t, sizeof *idx, cmp_tensor_off, g->ts);
  int64_t max_end = 0, owner = -1;
  for (int64_t k = 0; k < g->n_t; k++) {
    const gguf_tensor_t *t = &g->ts[idx[k]];
    if (t->nbytes == 0) continue;
    if (owner >= 0 && t->offset < max_end) {
      int rc = tide_err_set(err, TIDE_EFORMAT, "%s: tensors '%s' and '%s' overlap (offset %lld < %lld)", g->path,
                            g->strtab + g->ts[owner].name, g->strtab + t->name, (long long)t->offset,
                            (long long)max_end);
      free(idx);
      return rc;
    }
    if (t->offset + t->nbytes > max_end) {
      max_end = t->offset + t->nbytes;
      owner = idx[k];
    }
  }
  for (int64_t i = 0; i < g->n_t; i++) idx[i] = i;
  if (g->n_t > 1) qsort_r(idx, (size_t)g->n_t, sizeof *idx, cmp_tensor_name, g);
  for (int64_t k = 1; k < g->n_t; k++) {
    if (strcmp(g->strtab + g->ts[idx[k - 1]].name, g->strtab + g->ts[idx[k]].name) == 0) {
      int rc = tide_err_set(err, TIDE_EFORMAT, "%s: tensor '%s' appears twice", g->path,
                            g->strtab + g->ts[idx[k]].name);
      free(idx);
      return rc;
    }
  }
  g->by_name = idx;
  return 0;
}

static int cmp_kv_key(const void *a, const void *b, void *ctx) {
  const tide_gguf_t *g = ctx;
  return strcmp(key_of(g, &g->kvs[*(const int64_t *)a]), key_of(g, &g->kvs[*(const int64_t *)b]));
}

/* Sorted index of the keys (for lookups); a key twice is an error. */
static int index_keys(tide_gguf_t *g, tide_err_t *err) {
  g->kv_by_key = malloc((size_t)(g->n_kv ? g->n_kv : 1) * sizeof *g->kv_by_key);
  if (!g->kv_by_key) return tide_err_set(err, TIDE_ENOMEM, "%s: out of memory", g->path);
  for (int64_t i = 0; i < g->n_kv; i++) g->kv_by_key[i] = i;
  if (g->n_kv > 1) qsort_r(g->kv_by_key, (size_t)g->n_kv, sizeof *g->kv_by_key, cmp_kv_key, g);
  for (int64_t k = 1; k < g->n_kv; k++) {
    const char *a = key_of(g, &g->kvs[g->kv_by_key[k - 1]]), *b = key_of(g, &g->kvs[g->kv_by_key[k]]);
    if (strcmp(a, b) == 0) return tide_err_set(err, TIDE_EFORMAT, "%s: metadata key '%s' appears twice", g->path, a);
  }
  return 0;
}

static int parse(tide_gguf_t *g, tide_err_t *err) {
  rd_t r = {g->map->data, g->map->nbytes, 0, g->path, err};
  char magic[4];
  int rc = rd_raw(&r, magic, 4, "the magic");
  if (rc) return rc;
  if (memcmp(magic, GGUF_MAGIC, 4) != 0) return tide_err_set(err, TIDE_EFORMAT, "%s: not a GGUF file (bad magic)", g->path);
  uint32_t version;
  uint64_t n_t, n_kv;
  if ((rc = rd_u32(&r, &version, "the version"))) return rc;
  if (version != 2 && version != 3)
    return tide_err_set(err, TIDE_EUNSUPPORTED, "%s: GGUF version %u is not supported (2 or 3)", g->path, version);
  g->version = version;
  if ((rc = rd_u64(&r, &n_t, "the tensor count"))) return rc;
  if ((rc = rd_u64(&r, &n_kv, "the metadata count"))) return rc;
  /* A tensor info takes at least 8+4+4+8 bytes, a key/value at least 8+4+1. */
  int64_t left = r.n - r.pos;
  if (n_kv > (uint64_t)(left / 13))
    return tide_err_set(err, TIDE_EFORMAT, "%s: metadata count %llu cannot fit in the %lld bytes left", g->path,
                        (unsigned long long)n_kv, (long long)left);
  if (n_t > (uint64_t)(left / 24))
    return tide_err_set(err, TIDE_EFORMAT, "%s: tensor count %llu cannot fit in the %lld bytes left", g->path,
                        (unsigned long long)n_t, (long long)left);
  g->kvs = calloc((size_t)n_kv + 1, sizeof *g->kvs);
  g->ts = calloc((size_t)n_t + 1, sizeof *g->ts);
  if (!g->kvs || !g->ts) return tide_err_set(err, TIDE_ENOMEM, "%s: out of memory", g->path);
  g->alignment = GGUF_DEFAULT_ALIGNMENT;
  for (uint64_t i = 0; i < n_kv; i++) {
    gguf_kv_t *kv = &g->kvs[i];
    if ((rc = read_kv(g, &r, kv, (int64_t)i))) return rc;
    g->n_kv++;
    if (strcmp(key_of(g, kv), "general.alignment") == 0) {
      if (kv->type != TIDE_GGUF_UINT32)
        return tide_err_set(err, TIDE_EFORMAT, "%s: general.alignment has type %s (expected uint32)", g->path,
                            type_name(kv->type));
      uint32_t a = (uint32_t)le_at(r.p + kv->pos, 4);
      if (a == 0 || (a & (a - 1)) != 0)
        return tide_err_set(err, TIDE_EFORMAT, "%s: general.alignment %u is not a power of two", g->path, a);
      g->alignment = a;
    }
  }
  if ((rc = index_keys(g, err))) return rc;
  for (uint64_t i = 0; i < n_t; i++) {
    if ((rc = read_tensor_info(g, &r, &g->ts[i], (int64_t)i))) return rc;
    g->n_t++;
  }
  int64_t a = g->alignment;
  g->data_start = (r.pos + a - 1) / a * a;
  return check_tensors(g, err);
}

void tide_gguf_close(tide_gguf_t *g) {
  if (!g) return;
  tide_storage_release(g->map);
  free(g->path);
  free(g->kvs);
  free(g->ts);
  free(g->by_name);
  free(g->kv_by_key);
  free(g->strs);
  free(g->strtab);
  free(g);
}

static int open_storage(const char *path, tide_storage_t *map, tide_gguf_t **out, tide_err_t *err) {
  tide_gguf_t *g = calloc(1, sizeof *g);
  if (!g || !(g->path = strdup(path))) {
    free(g);
    tide_storage_release(map);
    return tide_err_set(err, TIDE_ENOMEM, "%s: out of memory", path);
  }
  g->map = map;
  int rc = parse(g, err);
  if (rc) {
    tide_gguf_close(g);
    return rc;
  }
  *out = g;
  return 0;
}

int tide_gguf_open(const char *path, tide_gguf_t **out, tide_err_t *err) {
  *out = NULL;
  if (!path || !*path) return tide_err_set(err, TIDE_EINVAL, "gguf: empty path");
  tide_storage_t *map;
  int rc = tide_storage_mmap(path, 0, -1, &map, err);
  if (rc) return rc;
  return open_storage(path, map, out, err);
}

int tide_gguf_open_memory(const void *data, int64_t n, const char *name, tide_gguf_t **out, tide_err_t *err) {
  *out = NULL;
  if (!name) name = "(memory)";
  if (!data && n > 0) return tide_err_set(err, TIDE_EINVAL, "%s: no data", name);
  tide_storage_t *s;
  int rc = tide_fileio_storage_copy(data, n, &s, err);
  if (rc) return rc;
  return open_storage(name, s, out, err);
}

uint32_t tide_gguf_version(const tide_gguf_t *g) { return g ? g->version : 0; }
uint32_t tide_gguf_alignment(const tide_gguf_t *g) { return g ? g->alignment : 0; }
int64_t tide_gguf_data_offset(const tide_gguf_t *g) { return g ? g->data_start : -1; }

int64_t tide_gguf_kv_count(const tide_gguf_t *g) { return g ? g->n_kv : 0; }

static const gguf_kv_t *kv_at(const tide_gguf_t *g, int64_t i) {
  return g && i >= 0 && i < g->n_kv ? &g->kvs[i] : NULL;
}

const char *tide_gguf_kv_key(const tide_gguf_t *g, int64_t i) {
  const gguf_kv_t *kv = kv_at(g, i);
  return kv ? key_of(g, kv) : NULL;
}

int64_t tide_gguf_kv_find(const tide_gguf_t *g, const char *key) {
  if (!g || !key || !g->kv_by_key) return -1;
  int64_t lo = 0, hi = g->n_kv - 1;
  while (lo <= hi) {
    int64_t mid = lo + (hi - lo) / 2;
    int c = strcmp(key_of(g, &g->kvs[g->kv_by_key[mid]]), key);
    if (c == 0) return g->kv_by_key[mid];
    if (c < 0) lo = mid + 1;
    else hi = mid - 1;
  }
  return -1;
}

int32_t tide_gguf_kv_type(const tide_gguf_t *g, int64_t i) {
  const gguf_kv_t *kv = kv_at(g, i);
  return kv ? kv->type : -1;
}

int32_t tide_gguf_kv_arr_type(const tide_gguf_t *g, int64_t i) {
  const gguf_kv_t *kv = kv_at(g, i);
  return kv ? kv->arr_type : -1;
}

int64_t tide_gguf_kv_arr_len(const tide_gguf_t *g, int64_t i) {
  const gguf_kv_t *kv = kv_at(g, i);
  return kv ? (kv->type == TIDE_GGUF_ARRAY ? kv->n : 1) : -1;
}

/* Element j of a numeric key as its raw bits, with its type; 0 when none. */
static int raw_value(const tide_gguf_t *g, int64_t i, int64_t j, uint64_t *bits, int32_t *type) {
  const gguf_kv_t *kv = kv_at(g, i);
  if (!kv || j < 0 || j >= kv->n) return 0;
  int32_t t = kv->type == TIDE_GGUF_ARRAY ? kv->arr_type : kv->type;
  int sz = type_size(t);
  if (sz == 0) return 0;
  *bits = le_at((const uint8_t *)g->map->data + kv->pos + j * sz, sz);
  *type = t;
  return 1;
}

static double bits_to_double(uint64_t b, int32_t t) {
  switch (t) {
  case TIDE_GGUF_UINT8: case TIDE_GGUF_UINT16: case TIDE_GGUF_UINT32: case TIDE_GGUF_UINT64: case TIDE_GGUF_BOOL:
    return (double)b;
  case TIDE_GGUF_INT8: return (int8_t)(uint8_t)b;
  case TIDE_GGUF_INT16: return (int16_t)(uint16_t)b;
  case TIDE_GGUF_INT32: return (int32_t)(uint32_t)b;
  case TIDE_GGUF_INT64: return (double)(int64_t)b;
  case TIDE_GGUF_FLOAT32: {
    uint32_t u = (uint32_t)b;
    float f;
    memcpy(&f, &u, 4);
    return f;
  }
  case TIDE_GGUF_FLOAT64: {
    double d;
    memcpy(&d, &b, 8);
    return d;
  }
  default: return 0;
  }
}

int64_t tide_gguf_kv_int(const tide_gguf_t *g, int64_t i, int64_t j) {
  uint64_t b;
  int32_t t;
  if (!raw_value(g, i, j, &b, &t)) return 0;
  switch (t) {
  case TIDE_GGUF_INT8: return (int8_t)(uint8_t)b;
  case TIDE_GGUF_INT16: return (int16_t)(uint16_t)b;
  case TIDE_GGUF_INT32: return (int32_t)(uint32_t)b;
  case TIDE_GGUF_INT64: case TIDE_GGUF_UINT64: return (int64_t)b;
  case TIDE_GGUF_FLOAT32: case TIDE_GGUF_FLOAT64: {
    double d = bits_to_double(b, t);
    if (!(d > -9.2e18 && d < 9.2e18)) return 0; /* NaN or out of int64 range */
    return (int64_t)d;
  }
  default: return (int64_t)b;
  }
}

uint64_t tide_gguf_kv_uint(const tide_gguf_t *g, int64_t i, int64_t j) {
  uint64_t b;
  int32_t t;
  if (!raw_value(g, i, j, &b, &t)) return 0;
  if (t == TIDE_GGUF_FLOAT32 || t == TIDE_GGUF_FLOAT64) {
    double d = bits_to_double(b, t);
    return d >= 0 && d < 1.8e19 ? (uint64_t)d : 0;
  }
  return (uint64_t)tide_gguf_kv_int(g, i, j);
}

double tide_gguf_kv_float(const tide_gguf_t *g, int64_t i, int64_t j) {
  uint64_t b;
  int32_t t;
  if (!raw_value(g, i, j, &b, &t)) return 0;
  return bits_to_double(b, t);
}

const char *tide_gguf_kv_str(const tide_gguf_t *g, int64_t i, int64_t j, int64_t *len) {
  const gguf_kv_t *kv = kv_at(g, i);
  if (len) *len = 0;
  if (!kv || j < 0 || j >= kv->n) return NULL;
  int32_t t = kv->type == TIDE_GGUF_ARRAY ? kv->arr_type : kv->type;
  if (t != TIDE_GGUF_STRING) return NULL;
  const gguf_str_t *s = &g->strs[kv->str0 + j];
  if (len) *len = s->len;
  return g->strtab + s->off;
}

int64_t tide_gguf_tensor_count(const tide_gguf_t *g) { return g ? g->n_t : 0; }

static const gguf_tensor_t *t_at(const tide_gguf_t *g, int64_t i) {
  return g && i >= 0 && i < g->n_t ? &g->ts[i] : NULL;
}

const char *tide_gguf_tensor_name(const tide_gguf_t *g, int64_t i) {
  const gguf_tensor_t *t = t_at(g, i);
  return t ? g->strtab + t->name : NULL;
}

int64_t tide_gguf_tensor_find(const tide_gguf_t *g, const char *name) {
  if (!g || !name || !g->by_name) return -1;
  int64_t lo = 0, hi = g->n_t - 1;
  while (lo <= hi) {
    int64_t mid = lo + (hi - lo) / 2;
    int c = strcmp(g->strtab + g->ts[g->by_name[mid]].name, name);
    if (c == 0) return g->by_name[mid];
    if (c < 0) lo = mid + 1;
    else hi = mid - 1;
  }
  return -1;
}

int32_t tide_gguf_tensor_ggml_type(const tide_gguf_t *g, int64_t i) {
  const gguf_tensor_t *t = t_at(g, i);
  return t ? t->ggml : -1;
}

int64_t tide_gguf_tensor_offset(const tide_gguf_t *g, int64_t i) {
  const gguf_tensor_t *t = t_at(g, i);
  return t ? t->offset : -1;
}

int64_t tide_gguf_tensor_nbytes(const tide_gguf_t *g, int64_t i) {
  const gguf_tensor_t *t = t_at(g, i);
  return t ? t->nbytes : -1;
}

int tide_gguf_tensor(tide_gguf_t *g, int64_t i, tide_tensor_t **out, tide_err_t *err) {
  *out = NULL;
  const gguf_tensor_t *t = t_at(g, i);
  if (!t) return tide_err_set(err, TIDE_ERANGE, "gguf: tensor index %lld out of range", (long long)i);
  /* empty tensors may sit at an offset past the end: give them offset 0 */
  int64_t at = t->nbytes ? g->data_start + t->offset : 0;
  tide_err_t e2;
  int rc = tide_fileio_tensor_at(g->map, at, t->dtype, t->ndim, t->shape, out, &e2);
  if (rc) return tide_err_set(err, rc, "%s: tensor '%s': %s", g->path, g->strtab + t->name, e2.msg);
  return 0;
}

/* ---- writer ------------------------------------------------------------ */

typedef struct buf {
  uint8_t *p;
  size_t len, cap;
  int failed;
} buf_t;

static void buf_put(buf_t *b, const void *src, size_t n) {
  if (b->failed) return;
  if (n > b->cap - b->len) {
    size_t cap = b->cap ? b->cap : 64;
    while (cap - b->len < n) cap *= 2;
    uint8_t *p = realloc(b->p, cap);
    if (!p) {
      b->failed = 1;
      return;
    }
    b->p = p;
    b->cap = cap;
  }
  if (n) memcpy(b->p + b->len, src, n);
  b->len += n;
}

static void buf_le(buf_t *b, uint64_t v, int size) {
  uint8_t x[8];
  for (int i = 0; i < size; i++) x[i] = (uint8_t)(v >> (8 * i));
  buf_put(b, x, (size_t)size);
}

static void buf_str(buf_t *b, const char *s, uint64_t len) {
  buf_le(b, len, 8);
  buf_put(b, s, (size_t)len);
}

typedef struct wkv {
  char *key;
  buf_t val; /* encoded type + value */
} wkv_t;

typedef struct wtensor {
  char *name;
  tide_tensor_t *t;
  int32_t ggml;
} wtensor_t;

struct tide_gguf_writer {
  wkv_t *kvs;
  int64_t n_kv, cap_kv;
  wtensor_t *ts;
  int64_t n_t, cap_t;
  uint32_t alignment;
};

int tide_gguf_writer_new(tide_gguf_writer_t **out, tide_err_t *err) {
  *out = calloc(1, sizeof **out);
  if (!*out) return tide_err_set(err, TIDE_ENOMEM, "gguf writer: out of memory");
  (*out)->alignment = GGUF_DEFAULT_ALIGNMENT;
  return 0;
}

void tide_gguf_writer_free(tide_gguf_writer_t *w) {
  if (!w) return;
  for (int64_t i = 0; i < w->n_kv; i++) {
    free(w->kvs[i].key);
    free(w->kvs[i].val.p);
  }
  for (int64_t i = 0; i < w->n_t; i++) {
    free(w->ts[i].name);
    tide_tensor_release(w->ts[i].t);
  }
  free(w->kvs);
  free(w->ts);
  free(w);
}

static int check_name(const char *s, const char *what, tide_err_t *err) {
  if (!s || !*s) return tide_err_set(err, TIDE_EINVAL, "gguf writer: empty %s", what);
  if (tide_fileio_utf8_check(s, (int64_t)strlen(s)) >= 0)
    return tide_err_set(err, TIDE_EINVAL, "gguf writer: %s '%s' is not valid UTF-8", what, s);
  return 0;
}

/* Take ownership of the encoded value v for key (replacing an existing one
 * only for general.alignment, which set_alignment may rewrite). */
static int add_kv(tide_gguf_writer_t *w, const char *key, buf_t *v, int replace, tide_err_t *err) {
  int rc = check_name(key, "key", err);
  if (rc == 0 && v->failed) rc = tide_err_set(err, TIDE_ENOMEM, "gguf writer: out of memory");
  for (int64_t i = 0; rc == 0 && i < w->n_kv; i++) {
    if (strcmp(w->kvs[i].key, key) == 0) {
      if (!replace) {
        rc = tide_err_set(err, TIDE_EINVAL, "gguf writer: metadata key '%s' given twice", key);
        break;
      }
      free(w->kvs[i].val.p);
      w->kvs[i].val = *v;
      return 0;
    }
  }
  if (rc == 0 && w->n_kv == w->cap_kv) {
    int64_t cap = w->cap_kv ? w->cap_kv * 2 : 16;
    wkv_t *p = realloc(w->kvs, (size_t)cap * sizeof *p);
    if (!p) rc = tide_err_set(err, TIDE_ENOMEM, "gguf writer: out of memory");
    else {
      w->kvs = p;
      w->cap_kv = cap;
    }
  }
  char *k = rc == 0 ? strdup(key) : NULL;
  if (rc == 0 && !k) rc = tide_err_set(err, TIDE_ENOMEM, "gguf writer: out of memory");
  if (rc) {
    free(v->p);
    return rc;
  }
  w->kvs[w->n_kv].key = k;
  w->kvs[w->n_kv].val = *v;
  w->n_kv++;
  return 0;
}

static int int_in_range(int32_t type, int64_t v) {
  switch (type) {
  case TIDE_GGUF_UINT8: return v >= 0 && v <= UINT8_MAX;
  case TIDE_GGUF_INT8: return v >= INT8_MIN && v <= INT8_MAX;
  case TIDE_GGUF_UINT16: return v >= 0 && v <= UINT16_MAX;
  case TIDE_GGUF_INT16: return v >= INT16_MIN && v <= INT16_MAX;
  case TIDE_GGUF_UINT32: return v >= 0 && v <= (int64_t)UINT32_MAX;
  case TIDE_GGUF_INT32: return v >= INT32_MIN && v <= INT32_MAX;
  case TIDE_GGUF_UINT64: return v >= 0;
  case TIDE_GGUF_INT64: return 1;
  case TIDE_GGUF_BOOL: return v == 0 || v == 1;
  default: return 0;
  }
}

static int is_int_type(int32_t t) { return type_size(t) > 0 && t != TIDE_GGUF_FLOAT32 && t != TIDE_GGUF_FLOAT64; }
static int is_float_type(int32_t t) { return t == TIDE_GGUF_FLOAT32 || t == TIDE_GGUF_FLOAT64; }

static void put_float(buf_t *b, int32_t type, double v) {
  if (type == TIDE_GGUF_FLOAT32) {
    float f = (float)v;
    uint32_t u;
    memcpy(&u, &f, 4);
    buf_le(b, u, 4);
  } else {
    uint64_t u;
    memcpy(&u, &v, 8);
    buf_le(b, u, 8);
  }
}

static int alignment_value(const char *key, int32_t type, int64_t v, tide_err_t *err) {
  if (strcmp(key, "general.alignment") != 0) return 0;
  if (type != TIDE_GGUF_UINT32 || v <= 0 || (v & (v - 1)) != 0)
    return tide_err_set(err, TIDE_EINVAL, "gguf writer: general.alignment must be a uint32 power of two");
  return 1;
}

int tide_gguf_writer_kv_int(tide_gguf_writer_t *w, const char *key, int32_t type, int64_t v, tide_err_t *err) {
  if (is_float_type(type)) return tide_gguf_writer_kv_float(w, key, type, (double)v, err);
  if (!is_int_type(type)) return tide_err_set(err, TIDE_EINVAL, "gguf writer: '%s': type %d is not numeric", key ? key : "", (int)type);
  if (!int_in_range(type, v))
    return tide_err_set(err, TIDE_EINVAL, "gguf writer: '%s': %lld does not fit in %s", key ? key : "", (long long)v,
                        type_name(type));
  int al = key ? alignment_value(key, type, v, err) : 0;
  if (al < 0) return al;
  buf_t b = {0};
  buf_le(&b, (uint64_t)type, 4);
  buf_le(&b, (uint64_t)v, type_size(type));
  int rc = add_kv(w, key, &b, 0, err);
  if (rc == 0 && al == 1) w->alignment = (uint32_t)v;
  return rc;
}

int tide_gguf_writer_kv_uint(tide_gguf_writer_t *w, const char *key, uint64_t v, tide_err_t *err) {
  buf_t b = {0};
  buf_le(&b, TIDE_GGUF_UINT64, 4);
  buf_le(&b, v, 8);
  return add_kv(w, key, &b, 0, err);
}

int tide_gguf_writer_kv_float(tide_gguf_writer_t *w, const char *key, int32_t type, double v, tide_err_t *err) {
  if (is_int_type(type)) {
    if (!(v == floor(v) && v >= -9.2e18 && v <= 9.2e18))
      return tide_err_set(err, TIDE_EINVAL, "gguf writer: '%s': %g is not an integer for %s", key ? key : "", v,
                          type_name(type));
    return tide_gguf_writer_kv_int(w, key, type, (int64_t)v, err);
  }
  if (!is_float_type(type))
    return tide_err_set(err, TIDE_EINVAL, "gguf writer: '%s': type %d is not numeric", key ? key : "", (int)type);
  buf_t b = {0};
  buf_le(&b, (uint64_t)type, 4);
  put_float(&b, type, v);
  return add_kv(w, key, &b, 0, err);
}

int tide_gguf_writer_kv_str(tide_gguf_writer_t *w, const char *key, const char *s, int64_t len, tide_err_t *err) {
  if (!s && len > 0) return tide_err_set(err, TIDE_EINVAL, "gguf writer: '%s': no string", key ? key : "");
  if (len < 0) len = s ? (int64_t)strlen(s) : 0;
  buf_t b = {0};
  buf_le(&b, TIDE_GGUF_STRING, 4);
  buf_str(&b, s, (uint64_t)len);
  return add_kv(w, key, &b, 0, err);
}

int tide_gguf_writer_kv_arr_int(tide_gguf_writer_t *w, const char *key, int32_t type, const int64_t *v, int64_t n,
                                tide_err_t *err) {
  if (n < 0 || (n > 0 && !v)) return tide_err_set(err, TIDE_EINVAL, "gguf writer: '%s': bad array", key ? key : "");
  if (!is_int_type(type) && !is_float_type(type))
    return tide_err_set(err, TIDE_EINVAL, "gguf writer: '%s': array element type %d is not numeric", key ? key : "",
                        (int)type);
  buf_t b = {0};
  buf_le(&b, TIDE_GGUF_ARRAY, 4);
  buf_le(&b, (uint64_t)type, 4);
  buf_le(&b, (uint64_t)n, 8);
  for (int64_t i = 0; i < n; i++) {
    if (is_float_type(type)) {
      put_float(&b, type, (double)v[i]);
    } else if (!int_in_range(type, v[i])) {
      free(b.p);
      return tide_err_set(err, TIDE_EINVAL, "gguf writer: '%s': element %lld (%lld) does not fit in %s", key ? key : "",
                          (long long)i, (long long)v[i], type_name(type));
    } else {
      buf_le(&b, (uint64_t)v[i], type_size(type));
    }
  }
  return add_kv(w, key, &b, 0, err);
}

int tide_gguf_writer_kv_arr_float(tide_gguf_writer_t *w, const char *key, int32_t type, const double *v, int64_t n,
                                  tide_err_t *err) {
  if (n < 0 || (n > 0 && !v)) return tide_err_set(err, TIDE_EINVAL, "gguf writer: '%s': bad array", key ? key : "");
  if (is_int_type(type)) {
    int64_t *iv = malloc((size_t)(n ? n : 1) * sizeof *iv);
    if (!iv) return tide_err_set(err, TIDE_ENOMEM, "gguf writer: out of memory");
    for (int64_t i = 0; i < n; i++) {
      if (!(v[i] == floor(v[i]) && v[i] >= -9.2e18 && v[i] <= 9.2e18)) {
        free(iv);
        return tide_err_set(err, TIDE_EINVAL, "gguf writer: '%s': element %lld (%g) is not an integer", key ? key : "",
                            (long long)i, v[i]);
      }
      iv[i] = (int64_t)v[i];
    }
    int rc = tide_gguf_writer_kv_arr_int(w, key, type, iv, n, err);
    free(iv);
    return rc;
  }
  if (!is_float_type(type))
    return tide_err_set(err, TIDE_EINVAL, "gguf writer: '%s': array element type %d is not numeric", key ? key : "",
                        (int)type);
  buf_t b = {0};
  buf_le(&b, TIDE_GGUF_ARRAY, 4);
  buf_le(&b, (uint64_t)type, 4);
  buf_le(&b, (uint64_t)n, 8);
  for (int64_t i = 0; i < n; i++) put_float(&b, type, v[i]);
  return add_kv(w, key, &b, 0, err);
}

int tide_gguf_writer_kv_arr_str(tide_gguf_writer_t *w, const char *key, const char *const *s, const int64_t *lens,
                                int64_t n, tide_err_t *err) {
  if (n < 0 || (n > 0 && !s)) return tide_err_set(err, TIDE_EINVAL, "gguf writer: '%s': bad array", key ? key : "");
  buf_t b = {0};
  buf_le(&b, TIDE_GGUF_ARRAY, 4);
  buf_le(&b, TIDE_GGUF_STRING, 4);
  buf_le(&b, (uint64_t)n, 8);
  for (int64_t i = 0; i < n; i++) {
    int64_t len = lens ? lens[i] : (s[i] ? (int64_t)strlen(s[i]) : 0);
    if (len < 0 || (!s[i] && len > 0)) {
      free(b.p);
      return tide_err_set(err, TIDE_EINVAL, "gguf writer: '%s': bad string %lld", key ? key : "", (long long)i);
    }
    buf_str(&b, s[i], (uint64_t)len);
  }
  return add_kv(w, key, &b, 0, err);
}

int tide_gguf_writer_set_alignment(tide_gguf_writer_t *w, uint32_t alignment, tide_err_t *err) {
  if (alignment == 0 || (alignment & (alignment - 1)) != 0)
    return tide_err_set(err, TIDE_EINVAL, "gguf writer: alignment %u is not a power of two", alignment);
  buf_t b = {0};
  buf_le(&b, TIDE_GGUF_UINT32, 4);
  buf_le(&b, alignment, 4);
  int rc = add_kv(w, "general.alignment", &b, 1, err);
  if (rc == 0) w->alignment = alignment;
  return rc;
}

int tide_gguf_writer_add_tensor(tide_gguf_writer_t *w, const char *name, const tide_tensor_t *t, tide_err_t *err) {
  int rc = check_name(name, "tensor name", err);
  if (rc) return rc;
  if (!t) return tide_err_set(err, TIDE_EINVAL, "gguf writer: tensor '%s' is NULL", name);
  int32_t ggml = tide_gguf_ggml_from_dtype(t->dtype);
  if (ggml < 0) {
    const tide_dtype_traits_t *tr = tide_dtype_traits(t->dtype);
    return tide_err_set(err, TIDE_EDTYPE, "gguf writer: tensor '%s': dtype %s has no GGML type", name,
                        tr ? tr->name : "?");
  }
  for (int64_t i = 0; i < w->n_t; i++)
    if (strcmp(w->ts[i].name, name) == 0)
      return tide_err_set(err, TIDE_EINVAL, "gguf writer: tensor '%s' given twice", name);
  if (w->n_t == w->cap_t) {
    int64_t cap = w->cap_t ? w->cap_t * 2 : 16;
    wtensor_t *p = realloc(w->ts, (size_t)cap * sizeof *p);
    if (!p) return tide_err_set(err, TIDE_ENOMEM, "gguf writer: out of memory");
    w->ts = p;
    w->cap_t = cap;
  }
  char *n = strdup(name);
  if (!n) return tide_err_set(err, TIDE_ENOMEM, "gguf writer: out of memory");
  w->ts[w->n_t].name = n;
  w->ts[w->n_t].t = (tide_tensor_t *)t;
  w->ts[w->n_t].ggml = ggml;
  tide_tensor_retain((tide_tensor_t *)t);
  w->n_t++;
  return 0;
}

static int64_t pad_to(int64_t x, int64_t a) { return (x + a - 1) / a * a; }

int tide_gguf_writer_write(tide_gguf_writer_t *w, const char *path, tide_err_t *err) {
  if (!w) return tide_err_set(err, TIDE_EINVAL, "gguf writer: NULL writer");
  int64_t a = w->alignment;
  buf_t h = {0};
  buf_put(&h, GGUF_MAGIC, 4);
  buf_le(&h, 3, 4);
  buf_le(&h, (uint64_t)w->n_t, 8);
  buf_le(&h, (uint64_t)w->n_kv, 8);
  for (int64_t i = 0; i < w->n_kv; i++) {
    buf_str(&h, w->kvs[i].key, strlen(w->kvs[i].key));
    buf_put(&h, w->kvs[i].val.p, w->kvs[i].val.len);
  }
  int64_t off = 0;
  for (int64_t i = 0; i < w->n_t; i++) {
    const tide_tensor_t *t = w->ts[i].t;
    buf_str(&h, w->ts[i].name, strlen(w->ts[i].name));
    int32_t nd = t->ndim > 0 ? t->ndim : 1;
    buf_le(&h, (uint64_t)nd, 4);
    if (t->ndim == 0) buf_le(&h, 1, 8);
    for (int32_t d = t->ndim - 1; d >= 0; d--) buf_le(&h, (uint64_t)t->shape[d], 8); /* innermost first */
    buf_le(&h, (uint64_t)w->ts[i].ggml, 4);
    buf_le(&h, (uint64_t)off, 8);
    off = pad_to(off + tide_tensor_nbytes(t), a);
  }
  static const uint8_t zeros[256] = {0};
  size_t hp = (size_t)pad_to((int64_t)h.len, a);
  while (h.len < hp) buf_put(&h, zeros, hp - h.len > sizeof zeros ? sizeof zeros : hp - h.len);
  if (h.failed) {
    free(h.p);
    return tide_err_set(err, TIDE_ENOMEM, "%s: out of memory", path ? path : "gguf");
  }
  tide_fileio_out_t o;
  int rc = tide_fileio_out_open(&o, path, err);
  if (rc) {
    free(h.p);
    return rc;
  }
  rc = tide_fileio_out_write(&o, h.p, h.len, err);
  free(h.p);
  for (int64_t i = 0; i < w->n_t && rc == 0; i++) {
    char what[300];
    snprintf(what, sizeof what, "%s: tensor '%s'", path, w->ts[i].name);
    int64_t nb = tide_tensor_nbytes(w->ts[i].t);
    rc = tide_fileio_write_tensor(o.f, w->ts[i].t, what, err);
    for (int64_t pad = pad_to(nb, a) - nb; rc == 0 && pad > 0;) {
      size_t k = pad > (int64_t)sizeof zeros ? sizeof zeros : (size_t)pad;
      rc = tide_fileio_out_write(&o, zeros, k, err);
      pad -= (int64_t)k;
    }
  }
  if (rc) {
    tide_fileio_out_abort(&o);
    return rc;
  }
  return tide_fileio_out_commit(&o, err);
}
