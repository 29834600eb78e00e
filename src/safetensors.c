/* safetensors.c: the safetensors format. A file is an 8-byte little-endian
 * header length N, N bytes of UTF-8 JSON (an object: tensor name ->
 * {dtype, shape, data_offsets: [begin, end]} plus an optional
 * "__metadata__" object of strings), then the data section that the
 * offsets index. Everything in the header is validated before a tensor is
 * handed out; tensors are read-only views on the file mapping. */
#include "safetensors.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fileio.h"

#define ST_MAX_HEADER (100ll * 1000 * 1000) /* larger headers are refused as absurd */
#define ST_MAX_INDEX (100ll * 1000 * 1000)
#define ST_INDEX_NAME "model.safetensors.index.json"

typedef struct st_file {
  char *path;          /* as opened; names the file in messages */
  tide_storage_t *map; /* the whole file */
  int64_t data_start;  /* 8 + header length */
} st_file_t;

typedef struct st_entry {
  char *name;
  int32_t file;   /* index into files */
  int32_t dtype;  /* tide_dtype_t */
  int32_t ndim;
  int32_t dname;  /* index into st_dtypes */
  int64_t shape[TIDE_MAX_DIMS]; /* outermost first */
  int64_t begin, end;           /* relative to the file's data section */
} st_entry_t;

struct tide_st {
  st_file_t *files;
  int32_t n_files;
  st_entry_t *ents; /* sorted by name once open */
  int64_t n, cap;
  char **meta; /* key, value, key, value, ... */
  int64_t n_meta;
};

static const struct {
  const char *name;
  int32_t dtype;
} st_dtypes[] = {
    {"F32", TIDE_DTYPE_F32}, {"F16", TIDE_DTYPE_F16}, {"BF16", TIDE_DTYPE_BF16}, {"F8_E4M3", TIDE_DTYPE_F8_E4M3},
    {"I32", TIDE_DTYPE_I32}, {"I64", TIDE_DTYPE_I64}, {"U8", TIDE_DTYPE_U8},     {"F64", TIDE_DTYPE_F64},
    {"I8", TIDE_DTYPE_I8},   {"I16", TIDE_DTYPE_I16},
};
#define N_ST_DTYPES ((int32_t)(sizeof st_dtypes / sizeof st_dtypes[0]))

static int32_t st_dtype_index_by_name(const char *s) {
  for (int32_t i = 0; i < N_ST_DTYPES; i++)
    if (strcmp(s, st_dtypes[i].name) == 0) return i;
  return -1;
}

static int32_t st_dtype_index_by_dtype(int32_t dt) {
  for (int32_t i = 0; i < N_ST_DTYPES; i++)
    if (st_dtypes[i].dtype == dt) return i;
  return -1;
}

static uint64_t le64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
  return v;
}

void tide_st_close(tide_st_t *st) {
  if (!st) return;
  for (int32_t i = 0; i < st->n_files; i++) {
    free(st->files[i].path);
    tide_storage_release(st->files[i].map);
  }
  for (int64_t i = 0; i < st->n; i++) free(st->ents[i].name);
  for (int64_t i = 0; i < 2 * st->n_meta; i++) free(st->meta[i]);
  free(st->files);
  free(st->ents);
  free(st->meta);
  free(st);
}

static int add_file(tide_st_t *st, const char *path, tide_storage_t *map, tide_err_t *err) {
  st_file_t *f = realloc(st->files, (size_t)(st->n_files + 1) * sizeof *f);
  if (!f) return tide_err_set(err, TIDE_ENOMEM, "%s: out of memory", path);
  st->files = f;
  f[st->n_files].path = strdup(path);
  f[st->n_files].map = map;
  f[st->n_files].data_start = 0;
  if (!f[st->n_files].path) return tide_err_set(err, TIDE_ENOMEM, "%s: out of memory", path);
  st->n_files++;
  return 0;
}

static int add_entry(tide_st_t *st, st_entry_t *e, const char *path, tide_err_t *err) {
  if (st->n == st->cap) {
    int64_t cap = st->cap ? st->cap * 2 : 64;
    st_entry_t *p = realloc(st->ents, (size_t)cap * sizeof *p);
    if (!p) return tide_err_set(err, TIDE_ENOMEM, "%s: out of memory", path);
    st->ents = p;
    st->cap = cap;
  }
  e->name = strdup(e->name);
  if (!e->name) return tide_err_set(err, TIDE_ENOMEM, "%s: out of memory", path);
  st->ents[st->n++] = *e;
  return 0;
}

static int parse_metadata(tide_st_t *st, const char *path, json_t *obj, tide_err_t *err) {
  if (!json_is_object(obj)) return tide_err_set(err, TIDE_EFORMAT, "%s: __metadata__ is not a JSON object", path);
  size_t n = json_object_size(obj);
  const char *k;
  json_t *v;
  json_object_foreach(obj, k, v) {
    if (!json_is_string(v))
      return tide_err_set(err, TIDE_EFORMAT, "%s: __metadata__ value of '%s' is not a string", path, k);
  }
  if (st->meta) return 0; /* only the first file's metadata is kept */
  st->meta = calloc(2 * n + 1, sizeof *st->meta);
  if (!st->meta) return tide_err_set(err, TIDE_ENOMEM, "%s: out of memory", path);
  json_object_foreach(obj, k, v) {
    char *a = strdup(k), *b = strdup(json_string_value(v));
    st->meta[2 * st->n_meta] = a;
    st->meta[2 * st->n_meta + 1] = b;
    st->n_meta++;
    if (!a || !b) return tide_err_set(err, TIDE_ENOMEM, "%s: out of memory", path);
  }
  return 0;
}

/* One tensor entry of a header: fills e (name borrowed from the JSON). */
static int parse_entry(const char *path, const char *name, json_t *v, int64_t data_size, st_entry_t *e,
                       tide_err_t *err) {
  memset(e, 0, sizeof *e);
  e->name = (char *)name;
  if (!json_is_object(v)) return tide_err_set(err, TIDE_EFORMAT, "%s: tensor '%s': entry is not a JSON object", path, name);
  json_t *jd = json_object_get(v, "dtype"), *js = json_object_get(v, "shape"), *jo = json_object_get(v, "data_offsets");
  if (!json_is_string(jd))
    return tide_err_set(err, TIDE_EFORMAT, "%s: tensor '%s': \"dtype\" is %s", path, name, jd ? "not a string" : "missing");
  e->dname = st_dtype_index_by_name(json_string_value(jd));
  if (e->dname < 0)
    return tide_err_set(err, TIDE_EDTYPE, "%s: tensor '%s': unknown or unsupported dtype '%s'", path, name,
                        json_string_value(jd));
  e->dtype = st_dtypes[e->dname].dtype;
  if (!json_is_array(js))
    return tide_err_set(err, TIDE_EFORMAT, "%s: tensor '%s': \"shape\" is %s", path, name, js ? "not an array" : "missing");
  size_t nd = json_array_size(js);
  if (nd > TIDE_MAX_DIMS)
    return tide_err_set(err, TIDE_EFORMAT, "%s: tensor '%s': shape has %zu dimensions (at most %d)", path, name, nd,
                        TIDE_MAX_DIMS);
  e->ndim = (int32_t)nd;
  int64_t numel = 1;
  for (size_t i = 0; i < nd; i++) {
    json_t *d = json_array_get(js, i);
    if (!json_is_integer(d))
      return tide_err_set(err, TIDE_EFORMAT, "%s: tensor '%s': shape[%zu] is not an integer", path, name, i);
    json_int_t x = json_integer_value(d);
    if (x < 0)
      return tide_err_set(err, TIDE_EFORMAT, "%s: tensor '%s': shape[%zu] is negative (%lld)", path, name, i, (long long)x);
    if (x > 0 && numel > INT64_MAX / 16 / x)
      return tide_err_set(err, TIDE_EFORMAT, "%s: tensor '%s': element count overflows", path, name);
    e->shape[i] = x;
    numel *= x;
  }
  for (int i = (int)nd; i < TIDE_MAX_DIMS; i++) e->shape[i] = 1;
  if (!json_is_array(jo) || json_array_size(jo) != 2 || !json_is_integer(json_array_get(jo, 0)) ||
      !json_is_integer(json_array_get(jo, 1)))
    return tide_err_set(err, TIDE_EFORMAT, "%s: tensor '%s': \"data_offsets\" is %s", path, name,
                        jo ? "not an array of two integers" : "missing");
  e->begin = json_integer_value(json_array_get(jo, 0));
  e->end = json_integer_value(json_array_get(jo, 1));
  if (e->begin < 0 || e->end < 0)
    return tide_err_set(err, TIDE_EFORMAT, "%s: tensor '%s': negative data_offsets [%lld, %lld]", path, name,
                        (long long)e->begin, (long long)e->end);
  if (e->end < e->begin)
    return tide_err_set(err, TIDE_EFORMAT, "%s: tensor '%s': data_offsets end %lld is before begin %lld", path, name,
                        (long long)e->end, (long long)e->begin);
  if (e->end > data_size)
    return tide_err_set(err, TIDE_ERANGE,
                        "%s: tensor '%s': data_offsets [%lld, %lld) go past the end of the data section (%lld bytes)",
                        path, name, (long long)e->begin, (long long)e->end, (long long)data_size);
  int64_t want = numel * tide_dtype_traits(e->dtype)->block_bytes;
  if (e->end - e->begin != want)
    return tide_err_set(err, TIDE_ESHAPE, "%s: tensor '%s': %lld bytes in the file but shape and dtype %s need %lld",
                        path, name, (long long)(e->end - e->begin), st_dtypes[e->dname].name, (long long)want);
  return 0;
}

static int cmp_by_begin(const void *a, const void *b) {
  const st_entry_t *x = (const st_entry_t *)a, *y = (const st_entry_t *)b;
  if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
  return x->end < y->end ? -1 : (x->end > y->end);
}

/* Tensors of one file must not share bytes. ents is a scratch copy. */
static int check_overlaps(const char *path, st_entry_t *ents, int64_t n, tide_err_t *err) {
  if (n > 1) qsort(ents, (size_t)n, sizeof *ents, cmp_by_begin);
  int64_t max_end = 0;
  const char *owner = NULL;
  for (int64_t i = 0; i < n; i++) {
    if (ents[i].end == ents[i].begin) continue; /* empty tensors occupy nothing */
    if (owner && ents[i].begin < max_end)
      return tide_err_set(err, TIDE_EFORMAT, "%s: tensors '%s' and '%s' overlap (data_offsets [%lld, %lld) inside [.., %lld))",
                          path, owner, ents[i].name, (long long)ents[i].begin, (long long)ents[i].end,
                          (long long)max_end);
    if (ents[i].end > max_end) {
      max_end = ents[i].end;
      owner = ents[i].name;
    }
  }
  return 0;
}

/* Parse and validate the header of the file just added (st->files[fi]). */
static int parse_file(tide_st_t *st, int32_t fi, tide_err_t *err) {
  st_file_t *f = &st->files[fi];
  const char *path = f->path;
  int64_t size = f->map->nbytes;
  const uint8_t *base = f->map->data;
  if (size < 8)
    return tide_err_set(err, TIDE_EFORMAT, "%s: truncated: %lld bytes, too short for the 8-byte header length", path,
                        (long long)size);
  uint64_t hlen = le64(base);
  if (hlen > (uint64_t)(size - 8))
    return tide_err_set(err, TIDE_EFORMAT, "%s: header length %llu goes beyond the file (%lld bytes after the length)",
                        path, (unsigned long long)hlen, (long long)(size - 8));
  if (hlen > (uint64_t)ST_MAX_HEADER)
    return tide_err_set(err, TIDE_EFORMAT, "%s: header length %llu is absurd (limit %lld)", path,
                        (unsigned long long)hlen, (long long)ST_MAX_HEADER);
  if (hlen < 2) return tide_err_set(err, TIDE_EFORMAT, "%s: header of %llu bytes is empty", path, (unsigned long long)hlen);
  const char *hdr = (const char *)base + 8;
  int64_t bad = tide_fileio_utf8_check(hdr, (int64_t)hlen);
  if (bad >= 0)
    return tide_err_set(err, TIDE_EFORMAT, "%s: header is not valid UTF-8 (byte %lld of the header)", path, (long long)bad);
  f->data_start = 8 + (int64_t)hlen;
  int64_t data_size = size - f->data_start;
  json_error_t je;
  json_t *root = json_loadb(hdr, (size_t)hlen, JSON_REJECT_DUPLICATES, &je);
  if (!root)
    return tide_err_set(err, TIDE_EFORMAT, "%s: header is not valid JSON: %s (line %d, column %d)", path, je.text,
                        je.line, je.column);
  int rc = 0;
  if (!json_is_object(root)) rc = tide_err_set(err, TIDE_EFORMAT, "%s: header is not a JSON object", path);
  int64_t first = st->n;
  const char *k;
  json_t *v;
  if (rc == 0) {
    json_object_foreach(root, k, v) {
      if (strcmp(k, "__metadata__") == 0) {
        rc = parse_metadata(st, path, v, err);
      } else {
        st_entry_t e;
        rc = parse_entry(path, k, v, data_size, &e, err);
        if (rc == 0) {
          e.file = fi;
          rc = add_entry(st, &e, path, err);
        }
      }
      if (rc) break;
    }
  }
  if (rc == 0 && st->n > first) {
    int64_t n = st->n - first;
    st_entry_t *tmp = malloc((size_t)n * sizeof *tmp);
    if (!tmp) rc = tide_err_set(err, TIDE_ENOMEM, "%s: out of memory", path);
    else {
      memcpy(tmp, st->ents + first, (size_t)n * sizeof *tmp);
      rc = check_overlaps(path, tmp, n, err);
      free(tmp);
    }
  }
  json_decref(root);
  return rc;
}

static int cmp_by_name(const void *a, const void *b) {
  return strcmp(((const st_entry_t *)a)->name, ((const st_entry_t *)b)->name);
}

/* Sort by name; a name twice (in one index's shards) is an error. */
static int finish(tide_st_t *st, tide_err_t *err) {
  if (st->n > 1) qsort(st->ents, (size_t)st->n, sizeof *st->ents, cmp_by_name);
  for (int64_t i = 1; i < st->n; i++) {
    if (strcmp(st->ents[i - 1].name, st->ents[i].name) == 0) {
      const st_entry_t *a = &st->ents[i - 1], *b = &st->ents[i];
      return tide_err_set(err, TIDE_EFORMAT, "tensor '%s' appears twice: in %s and in %s", a->name,
                          st->files[a->file].path, st->files[b->file].path);
    }
  }
  return 0;
}

static int open_one(tide_st_t *st, const char *path, tide_err_t *err) {
  tide_storage_t *map;
  tide_err_t e2;
  int rc = tide_storage_mmap(path, 0, -1, &map, &e2);
  if (rc) {
    if (err) *err = e2;
    return rc;
  }
  rc = add_file(st, path, map, err);
  if (rc) {
    tide_storage_release(map);
    return rc;
  }
  return parse_file(st, st->n_files - 1, err);
}

static int path_exists(const char *p, int want_dir) {
  struct stat s;
  if (stat(p, &s) != 0) return 0;
  return want_dir ? S_ISDIR(s.st_mode) : S_ISREG(s.st_mode);
}

static char *join(const char *dir, const char *name) {
  size_t a = strlen(dir), b = strlen(name);
  char *p = malloc(a + b + 2);
  if (!p) return NULL;
  memcpy(p, dir, a);
  p[a] = '/';
  memcpy(p + a + 1, name, b + 1);
  return p;
}

static char *dir_of(const char *path) {
  const char *s = strrchr(path, '/');
  if (!s) return strdup(".");
  if (s == path) return strdup("/");
  return strndup(path, (size_t)(s - path));
}

static int cmp_str(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int64_t find_entry(const tide_st_t *st, const char *name) {
  int64_t lo = 0, hi = st->n - 1;
  while (lo <= hi) {
    int64_t mid = lo + (hi - lo) / 2;
    int c = strcmp(st->ents[mid].name, name);
    if (c == 0) return mid;
    if (c < 0) lo = mid + 1;
    else hi = mid - 1;
  }
  return -1;
}

static int open_index(tide_st_t *st, const char *path, tide_err_t *err) {
  char *text;
  int64_t len;
  int rc = tide_fileio_read_all(path, ST_MAX_INDEX, &text, &len, err);
  if (rc) return rc;
  int64_t bad = tide_fileio_utf8_check(text, len);
  if (bad >= 0) {
    free(text);
    return tide_err_set(err, TIDE_EFORMAT, "%s: not valid UTF-8 (byte %lld)", path, (long long)bad);
  }
  json_error_t je;
  json_t *root = json_loadb(text, (size_t)len, JSON_REJECT_DUPLICATES, &je);
  free(text);
  if (!root)
    return tide_err_set(err, TIDE_EFORMAT, "%s: not valid JSON: %s (line %d, column %d)", path, je.text, je.line,
                        je.column);
  json_t *wm = json_is_object(root) ? json_object_get(root, "weight_map") : NULL;
  char *dir = dir_of(path);
  const char **shards = NULL;
  size_t n_shards = 0;
  if (!json_is_object(wm)) {
    rc = tide_err_set(err, TIDE_EFORMAT, "%s: \"weight_map\" is %s", path, wm ? "not an object" : "missing");
    goto done;
  }
  if (!dir) {
    rc = tide_err_set(err, TIDE_ENOMEM, "%s: out of memory", path);
    goto done;
  }
  shards = calloc(json_object_size(wm) + 1, sizeof *shards);
  if (!shards) {
    rc = tide_err_set(err, TIDE_ENOMEM, "%s: out of memory", path);
    goto done;
  }
  const char *k;
  json_t *v;
  json_object_foreach(wm, k, v) {
    const char *s = json_is_string(v) ? json_string_value(v) : NULL;
    if (!s || !*s || s[0] == '/' || strstr(s, "..")) {
      rc = tide_err_set(err, TIDE_EFORMAT, "%s: weight_map entry of '%s' is not a relative file name", path, k);
      goto done;
    }
    shards[n_shards++] = s;
  }
  if (n_shards > 1) qsort(shards, n_shards, sizeof *shards, cmp_str);
  size_t u = 0;
  for (size_t i = 0; i < n_shards; i++)
    if (u == 0 || strcmp(shards[u - 1], shards[i]) != 0) shards[u++] = shards[i];
  n_shards = u;
  for (size_t i = 0; i < n_shards && rc == 0; i++) {
    char *sp = join(dir, shards[i]);
    if (!sp) {
      rc = tide_err_set(err, TIDE_ENOMEM, "%s: out of memory", path);
      break;
    }
    if (!path_exists(sp, 0)) {
      const char *who = "";
      json_object_foreach(wm, k, v) {
        if (strcmp(json_string_value(v), shards[i]) == 0) {
          who = k;
          break;
        }
      }
      rc = tide_err_set(err, TIDE_ENOTFOUND, "%s: shard '%s' (listed for tensor '%s') is missing: %s", path, shards[i],
                        who, sp);
    } else {
      rc = open_one(st, sp, err);
    }
    free(sp);
  }
  if (rc == 0) rc = finish(st, err);
  if (rc == 0) { /* every listed tensor is in the shard the index names */
    json_object_foreach(wm, k, v) {
      int64_t i = find_entry(st, k);
      const char *want = json_string_value(v);
      /* shard paths are dir + "/" + name */
      const char *got = i >= 0 ? st->files[st->ents[i].file].path + strlen(dir) + 1 : NULL;
      if (i < 0 || strcmp(got, want) != 0) {
        rc = tide_err_set(err, TIDE_EFORMAT, "%s: tensor '%s' is listed in shard '%s' but is not in that file", path, k,
                          want);
        break;
      }
    }
  }
done:
  free(shards);
  free(dir);
  json_decref(root);
  return rc;
}

static int has_suffix(const char *s, const char *suf) {
  size_t a = strlen(s), b = strlen(suf);
  return a >= b && strcmp(s + a - b, suf) == 0;
}

/* A folder: the index if present, else model.safetensors, else its only .safetensors file. */
static int open_dir(tide_st_t *st, const char *path, tide_err_t *err) {
  char *p = join(path, ST_INDEX_NAME);
  if (!p) return tide_err_set(err, TIDE_ENOMEM, "%s: out of memory", path);
  if (path_exists(p, 0)) {
    int rc = open_index(st, p, err);
    free(p);
    return rc;
  }
  free(p);
  p = join(path, "model.safetensors");
  if (!p) return tide_err_set(err, TIDE_ENOMEM, "%s: out of memory", path);
  if (path_exists(p, 0)) {
    int rc = open_one(st, p, err);
    free(p);
    return rc ? rc : finish(st, err);
  }
  free(p);
  DIR *d = opendir(path);
  if (!d) return tide_err_set(err, TIDE_EIO, "%s: cannot open folder: %s", path, strerror(errno));
  char *only = NULL;
  int count = 0;
  struct dirent *de;
  while ((de = readdir(d))) {
    if (de->d_name[0] != '.' && has_suffix(de->d_name, ".safetensors")) {
      if (++count == 1) only = strdup(de->d_name);
    }
  }
  closedir(d);
  int rc;
  if (count == 0) {
    rc = tide_err_set(err, TIDE_ENOTFOUND, "%s: no %s and no .safetensors file in this folder", path, ST_INDEX_NAME);
  } else if (count > 1) {
    rc = tide_err_set(err, TIDE_EFORMAT, "%s: %d .safetensors files but no %s", path, count, ST_INDEX_NAME);
  } else if (!only || !(p = join(path, only))) {
    rc = tide_err_set(err, TIDE_ENOMEM, "%s: out of memory", path);
  } else {
    rc = open_one(st, p, err);
    if (rc == 0) rc = finish(st, err);
    free(p);
  }
  free(only);
  return rc;
}

int tide_st_open(const char *path, tide_st_t **out, tide_err_t *err) {
  *out = NULL;
  if (!path || !*path) return tide_err_set(err, TIDE_EINVAL, "safetensors: empty path");
  struct stat sb;
  if (stat(path, &sb) != 0)
    return tide_err_set(err, errno == ENOENT ? TIDE_ENOTFOUND : TIDE_EIO, "%s: %s", path, strerror(errno));
  tide_st_t *st = calloc(1, sizeof *st);
  if (!st) return tide_err_set(err, TIDE_ENOMEM, "%s: out of memory", path);
  int rc;
  if (S_ISDIR(sb.st_mode)) {
    rc = open_dir(st, path, err);
  } else if (has_suffix(path, ".json")) {
    rc = open_index(st, path, err);
  } else {
    rc = open_one(st, path, err);
    if (rc == 0) rc = finish(st, err);
  }
  if (rc) {
    tide_st_close(st);
    return rc;
  }
  *out = st;
  return 0;
}

int tide_st_open_memory(const void *data, int64_t n, const char *name, tide_st_t **out, tide_err_t *err) {
  *out = NULL;
  if (!name) name = "(memory)";
  if (!data && n > 0) return tide_err_set(err, TIDE_EINVAL, "%s: no data", name);
  tide_storage_t *s;
  int rc = tide_fileio_storage_copy(data, n, &s, err);
  if (rc) return rc;
  tide_st_t *st = calloc(1, sizeof *st);
  if (!st) {
    tide_storage_release(s);
    return tide_err_set(err, TIDE_ENOMEM, "%s: out of memory", name);
  }
  rc = add_file(st, name, s, err);
  if (rc) tide_storage_release(s);
  if (rc == 0) rc = parse_file(st, 0, err);
  if (rc == 0) rc = finish(st, err);
  if (rc) {
    tide_st_close(st);
    return rc;
  }
  *out = st;
  return 0;
}

int64_t tide_st_count(const tide_st_t *st) { return st ? st->n : 0; }

const char *tide_st_name(const tide_st_t *st, int64_t i) {
  return st && i >= 0 && i < st->n ? st->ents[i].name : NULL;
}

int64_t tide_st_find(const tide_st_t *st, const char *name) {
  if (!st || !name) return -1;
  return find_entry(st, name);
}

int tide_st_get(tide_st_t *st, int64_t i, tide_tensor_t **out, tide_err_t *err) {
  *out = NULL;
  if (!st || i < 0 || i >= st->n)
    return tide_err_set(err, TIDE_ERANGE, "safetensors: tensor index %lld out of range", (long long)i);
  const st_entry_t *e = &st->ents[i];
  const st_file_t *f = &st->files[e->file];
  tide_err_t e2;
  int rc = tide_fileio_tensor_at(f->map, f->data_start + e->begin, e->dtype, e->ndim, e->shape, out, &e2);
  if (rc) return tide_err_set(err, rc, "%s: tensor '%s': %s", f->path, e->name, e2.msg);
  return 0;
}

const char *tide_st_dtype_name(const tide_st_t *st, int64_t i) {
  return st && i >= 0 && i < st->n ? st_dtypes[st->ents[i].dname].name : NULL;
}

const char *tide_st_file(const tide_st_t *st, int64_t i) {
  return st && i >= 0 && i < st->n ? st->files[st->ents[i].file].path : NULL;
}

int64_t tide_st_file_offset(const tide_st_t *st, int64_t i) {
  if (!st || i < 0 || i >= st->n) return -1;
  return st->files[st->ents[i].file].data_start + st->ents[i].begin;
}

int64_t tide_st_meta_count(const tide_st_t *st) { return st ? st->n_meta : 0; }
const char *tide_st_meta_key(const tide_st_t *st, int64_t i) {
  return st && i >= 0 && i < st->n_meta ? st->meta[2 * i] : NULL;
}
const char *tide_st_meta_value(const tide_st_t *st, int64_t i) {
  return st && i >= 0 && i < st->n_meta ? st->meta[2 * i + 1] : NULL;
}

/* ---- writer ------------------------------------------------------------ */

typedef struct {
  const char *name;
  const tide_tensor_t *t;
  int64_t size;   /* element (block) bytes */
  int64_t nbytes; /* data bytes */
  int64_t offset; /* in the data section */
} save_item_t;

static int cmp_item(const void *a, const void *b) {
  return strcmp(((const save_item_t *)a)->name, ((const save_item_t *)b)->name);
}

static int cmp_item_layout(const void *a, const void *b) {
  const save_item_t *x = a, *y = b;
  if (x->size != y->size) return x->size > y->size ? -1 : 1;
  return strcmp(x->name, y->name);
}

static json_t *json_i64_pair(int64_t a, int64_t b) {
  json_t *arr = json_array();
  if (arr) {
    json_array_append_new(arr, json_integer(a));
    json_array_append_new(arr, json_integer(b));
  }
  return arr;
}

int tide_st_save(const char *path, int32_t n, const char *const *names, const tide_tensor_t *const *tensors,
                 int32_t n_meta, const char *const *meta, tide_err_t *err) {
  if (!path || !*path) return tide_err_set(err, TIDE_EINVAL, "safetensors: empty path");
  if (n < 0 || n_meta < 0 || (n > 0 && (!names || !tensors)) || (n_meta > 0 && !meta))
    return tide_err_set(err, TIDE_EINVAL, "%s: bad tensor or metadata arrays", path);
  save_item_t *items = calloc((size_t)n + 1, sizeof *items);
  json_t *root = json_object(), *md = NULL;
  char *hdr = NULL;
  int rc = 0;
  if (!items || !root) {
    rc = tide_err_set(err, TIDE_ENOMEM, "%s: out of memory", path);
    goto done;
  }
  for (int32_t i = 0; i < n; i++) {
    if (!names[i] || !*names[i] || !tensors[i]) {
      rc = tide_err_set(err, TIDE_EINVAL, "%s: tensor %d has no name or no tensor", path, (int)i);
      goto done;
    }
    if (strcmp(names[i], "__metadata__") == 0) {
      rc = tide_err_set(err, TIDE_EINVAL, "%s: '__metadata__' cannot name a tensor", path);
      goto done;
    }
    items[i].name = names[i];
    items[i].t = tensors[i];
  }
  if (n > 1) qsort(items, (size_t)n, sizeof *items, cmp_item);
  if (n_meta > 0) {
    md = json_object();
    if (!md || json_object_set_new(root, "__metadata__", md) != 0) {
      rc = tide_err_set(err, TIDE_ENOMEM, "%s: out of memory", path);
      goto done;
    }
    for (int32_t i = 0; i < n_meta; i++) {
      const char *k = meta[2 * i], *v = meta[2 * i + 1];
      json_t *js = v ? json_string(v) : NULL;
      if (!k || !js || json_object_set_new(md, k, js) != 0) {
        rc = tide_err_set(err, TIDE_EINVAL, "%s: metadata entry %d is not a pair of UTF-8 strings", path, (int)i);
        goto done;
      }
    }
  }
  /* Data layout: larger elements first (then by name), so that with the
   * 8-byte aligned header every tensor is aligned to its element size and
   * reads back as a view; the header lists the names in sorted order. */
  for (int32_t i = 0; i < n; i++) {
    const tide_tensor_t *t = items[i].t;
    const tide_dtype_traits_t *tr = tide_dtype_traits(t->dtype);
    items[i].size = tr ? tr->block_bytes : 0;
    items[i].nbytes = tr ? tide_tensor_nbytes(t) : 0;
  }
  if (n > 1) qsort(items, (size_t)n, sizeof *items, cmp_item_layout);
  int64_t off = 0;
  for (int32_t i = 0; i < n; i++) {
    items[i].offset = off;
    off += items[i].nbytes;
  }
  if (n > 1) qsort(items, (size_t)n, sizeof *items, cmp_item);
  for (int32_t i = 0; i < n; i++) {
    const tide_tensor_t *t = items[i].t;
    if (i > 0 && strcmp(items[i - 1].name, items[i].name) == 0) {
      rc = tide_err_set(err, TIDE_EINVAL, "%s: tensor name '%s' given twice", path, items[i].name);
      goto done;
    }
    int32_t di = st_dtype_index_by_dtype(t->dtype);
    if (di < 0) {
      const tide_dtype_traits_t *tr = tide_dtype_traits(t->dtype);
      rc = tide_err_set(err, TIDE_EDTYPE, "%s: tensor '%s': dtype %s cannot be stored in safetensors", path,
                        items[i].name, tr ? tr->name : "?");
      goto done;
    }
    json_t *e = json_object(), *shape = json_array();
    if (!e || !shape) {
      json_decref(e);
      json_decref(shape);
      rc = tide_err_set(err, TIDE_ENOMEM, "%s: out of memory", path);
      goto done;
    }
    for (int32_t d = 0; d < t->ndim; d++) json_array_append_new(shape, json_integer(t->shape[d]));
    json_object_set_new(e, "dtype", json_string(st_dtypes[di].name));
    json_object_set_new(e, "shape", shape);
    json_object_set_new(e, "data_offsets", json_i64_pair(items[i].offset, items[i].offset + items[i].nbytes));
    if (json_object_set_new(root, items[i].name, e) != 0) {
      rc = tide_err_set(err, TIDE_EINVAL, "%s: tensor name '%s' is not valid UTF-8", path, items[i].name);
      goto done;
    }
  }
  if (n > 1) qsort(items, (size_t)n, sizeof *items, cmp_item_layout);
  hdr = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
  if (!hdr) {
    rc = tide_err_set(err, TIDE_ENOMEM, "%s: cannot encode the header", path);
    goto done;
  }
  size_t hl = strlen(hdr), padded = (hl + 7) / 8 * 8;
  uint8_t len8[8];
  for (int i = 0; i < 8; i++) len8[i] = (uint8_t)((uint64_t)padded >> (8 * i));
  tide_fileio_out_t o;
  if ((rc = tide_fileio_out_open(&o, path, err))) goto done;
  static const char spaces[8] = "        ";
  rc = tide_fileio_out_write(&o, len8, 8, err);
  if (!rc) rc = tide_fileio_out_write(&o, hdr, hl, err);
  if (!rc) rc = tide_fileio_out_write(&o, spaces, padded - hl, err);
  for (int32_t i = 0; i < n && !rc; i++) {
    char what[300];
    snprintf(what, sizeof what, "%s: tensor '%s'", path, items[i].name);
    rc = tide_fileio_write_tensor(o.f, items[i].t, what, err);
  }
  if (rc) tide_fileio_out_abort(&o);
  else rc = tide_fileio_out_commit(&o, err);
done:
  free(hdr);
  free(items);
  json_decref(root);
  return rc;
}
