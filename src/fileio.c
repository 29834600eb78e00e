#include "fileio.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int64_t tide_fileio_utf8_check(const void *s, int64_t n) {
  const uint8_t *p = s;
  int64_t i = 0;
  while (i < n) {
    uint8_t c = p[i];
    if (c < 0x80) {
      i++;
      continue;
    }
    int len;
    uint32_t cp, min;
    if ((c & 0xe0) == 0xc0) {
      len = 2, cp = c & 0x1f, min = 0x80;
    } else if ((c & 0xf0) == 0xe0) {
      len = 3, cp = c & 0x0f, min = 0x800;
    } else if ((c & 0xf8) == 0xf0) {
      len = 4, cp = c & 0x07, min = 0x10000;
    } else {
      return i; /* continuation byte or 0xf8..0xff as a lead byte */
    }
    if (len > n - i) return i;
    for (int k = 1; k < len; k++) {
      if ((p[i + k] & 0xc0) != 0x80) return i;
      cp = (cp << 6) | (p[i + k] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return i;
    i += len;
  }
  return -1;
}

int tide_fileio_storage_copy(const void *data, int64_t n, tide_storage_t **out, tide_err_t *err) {
  *out = NULL;
  if (n < 0) return tide_err_set(err, TIDE_EINVAL, "storage: negative size");
  tide_storage_t *s = calloc(1, sizeof *s);
  void *d = malloc(n > 0 ? (size_t)n : 1);
  if (!s || !d) {
    free(s);
    free(d);
    return tide_err_set(err, TIDE_ENOMEM, "storage: cannot allocate %lld bytes", (long long)n);
  }
  if (n > 0) memcpy(d, data, (size_t)n);
  s->data = d;
  s->nbytes = n;
  s->kind = TIDE_STORAGE_OWNED;
  s->readonly = 1;
  s->refcount = 1;
  *out = s;
  return 0;
}

int tide_fileio_tensor_at(tide_storage_t *s, int64_t offset, int32_t dtype, int32_t ndim, const int64_t *shape,
                          tide_tensor_t **out, tide_err_t *err) {
  *out = NULL;
  const tide_dtype_traits_t *tr = tide_dtype_traits(dtype);
  if (!tr) return tide_err_set(err, TIDE_EDTYPE, "tensor: unknown dtype %d", (int)dtype);
  /* element alignment: the scalar size, or 2 for block types (their fp16 scales) */
  int64_t al = tr->block_size == 1 ? tr->block_bytes : 2;
  if (offset < 0 || offset > s->nbytes || !s->data || ((uintptr_t)((char *)s->data + offset) % (uintptr_t)al) == 0)
    return tide_tensor_from_storage(s, offset, dtype, ndim, shape, out, err);
  /* misaligned: validate against the storage, then copy into an aligned tensor */
  tide_tensor_t *v;
  int rc = tide_tensor_from_storage(s, offset, dtype, ndim, shape, &v, err);
  if (rc) return rc;
  tide_tensor_t *c;
  rc = tide_tensor_new(dtype, ndim, shape, &c, err);
  if (rc == 0) {
    memcpy(c->data, v->data, (size_t)tide_tensor_nbytes(v));
    c->flags |= TIDE_TENSOR_READONLY;
    c->storage->readonly = 1;
    *out = c;
  }
  tide_tensor_release(v);
  return rc;
}

int tide_fileio_write_tensor(FILE *f, const tide_tensor_t *t, const char *what, tide_err_t *err) {
  const tide_dtype_traits_t *tr = tide_dtype_traits(t->dtype);
  if (!tr) return tide_err_set(err, TIDE_EDTYPE, "%s: unknown dtype %d", what, (int)t->dtype);
  int64_t numel = tide_tensor_numel(t);
  if (numel == 0) return 0;
  if (tide_tensor_is_contiguous(t)) {
    size_t nb = (size_t)tide_tensor_nbytes(t);
    if (fwrite(t->data, 1, nb, f) != nb)
      return tide_err_set(err, TIDE_EIO, "%s: write failed: %s", what, strerror(errno));
    return 0;
  }
  /* strided: walk the outer indices, write one row at a time */
  int32_t nd = t->ndim;
  int64_t inner = t->shape[nd - 1];
  int64_t rows = numel / inner;
  int64_t rb = tide_dtype_row_bytes(t->dtype, inner);
  int contig_rows = tr->block_size > 1 || t->stride[nd - 1] == tr->block_bytes;
  char *buf = contig_rows ? NULL : malloc((size_t)rb);
  if (!contig_rows && !buf) return tide_err_set(err, TIDE_ENOMEM, "%s: out of memory", what);
  int64_t idx[TIDE_MAX_DIMS] = {0, 0, 0, 0};
  int rc = 0;
  for (int64_t r = 0; r < rows && rc == 0; r++) {
    const char *p = t->data;
    for (int32_t d = 0; d < nd - 1; d++) p += idx[d] * t->stride[d];
    const char *src = p;
    if (!contig_rows) {
      for (int64_t c = 0; c < inner; c++)
        memcpy(buf + c * tr->block_bytes, p + c * t->stride[nd - 1], (size_t)tr->block_bytes);
      src = buf;
    }
    if (fwrite(src, 1, (size_t)rb, f) != (size_t)rb)
      rc = tide_err_set(err, TIDE_EIO, "%s: write failed: %s", what, strerror(errno));
    for (int32_t d = nd - 2; d >= 0; d--) { /* odometer over the outer dims */
      if (++idx[d] < t->shape[d]) break;
      idx[d] = 0;
    }
  }
  free(buf);
  return rc;
}

int tide_fileio_out_open(tide_fileio_out_t *o, const char *path, tide_err_t *err) {
  memset(o, 0, sizeof *o);
  if (!path || !*path) return tide_err_set(err, TIDE_EINVAL, "write: empty path");
  size_t n = strlen(path);
  o->path = strdup(path);
  o->tmp = malloc(n + 5);
  if (!o->path || !o->tmp) {
    free(o->path);
    free(o->tmp);
    return tide_err_set(err, TIDE_ENOMEM, "%s: out of memory", path);
  }
  memcpy(o->tmp, path, n);
  memcpy(o->tmp + n, ".tmp", 5);
  o->f = fopen(o->tmp, "wb");
  if (!o->f) {
    int e = errno;
    free(o->path);
    free(o->tmp);
    memset(o, 0, sizeof *o);
    return tide_err_set(err, TIDE_EIO, "%s.tmp: cannot create: %s", path, strerror(e));
  }
  return 0;
}

int tide_fileio_out_write(tide_fileio_out_t *o, const void *p, size_t n, tide_err_t *err) {
  if (n && fwrite(p, 1, n, o->f) != n)
    return tide_err_set(err, TIDE_EIO, "%s: write failed: %s", o->tmp, strerror(errno));
  return 0;
}

void tide_fileio_out_abort(tide_fileio_out_t *o) {
  if (o->f) fclose(o->f);
  if (o->tmp) unlink(o->tmp);
  free(o->path);
  free(o->tmp);
  memset(o, 0, sizeof *o);
}

int tide_fileio_out_commit(tide_fileio_out_t *o, tide_err_t *err) {
  int rc = 0;
  if (fflush(o->f) != 0 || fsync(fileno(o->f)) != 0)
    rc = tide_err_set(err, TIDE_EIO, "%s: write failed: %s", o->tmp, strerror(errno));
  int c = fclose(o->f);
  o->f = NULL;
  if (rc == 0 && c != 0) rc = tide_err_set(err, TIDE_EIO, "%s: close failed: %s", o->tmp, strerror(errno));
  if (rc == 0 && rename(o->tmp, o->path) != 0)
    rc = tide_err_set(err, TIDE_EIO, "%s: cannot rename to %s: %s", o->tmp, o->path, strerror(errno));
  if (rc) {
    tide_fileio_out_abort(o);
    return rc;
  }
  free(o->path);
  free(o->tmp);
  memset(o, 0, sizeof *o);
  return 0;
}

int tide_fileio_read_all(const char *path, int64_t max_bytes, char **out, int64_t *len, tide_err_t *err) {
  *out = NULL;
  *len = 0;
  FILE *f = fopen(path, "rb");
  if (!f) {
    int e = errno;
    return tide_err_set(err, e == ENOENT ? TIDE_ENOTFOUND : TIDE_EIO, "%s: cannot open: %s", path, strerror(e));
  }
  struct stat st;
  if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
    fclose(f);
    return tide_err_set(err, TIDE_EIO, "%s: not a regular file", path);
  }
  if ((int64_t)st.st_size > max_bytes) {
    fclose(f);
    return tide_err_set(err, TIDE_EFORMAT, "%s: %lld bytes is absurd for this file (limit %lld)", path,
                        (long long)st.st_size, (long long)max_bytes);
  }
  size_t n = (size_t)st.st_size;
  char *buf = malloc(n + 1);
  if (!buf) {
    fclose(f);
    return tide_err_set(err, TIDE_ENOMEM, "%s: out of memory", path);
  }
  size_t got = n ? fread(buf, 1, n, f) : 0;
  fclose(f);
  if (got != n) {
    free(buf);
    return tide_err_set(err, TIDE_EIO, "%s: short read", path);
  }
  buf[n] = '\0';
  *out = buf;
  *len = (int64_t)n;
  return 0;
}
