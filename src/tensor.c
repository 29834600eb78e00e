#include "tensor.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define TIDE_ALIGN 64

/* ---- storage --------------------------------------------------------- */

int tide_storage_new(int64_t nbytes, tide_storage_t **out, tide_err_t *err) {
  *out = NULL;
  if (nbytes < 0) return tide_err_set(err, TIDE_EINVAL, "storage: negative size %lld", (long long)nbytes);
  tide_storage_t *s = calloc(1, sizeof *s);
  if (!s) return tide_err_set(err, TIDE_ENOMEM, "storage: out of memory");
  size_t sz = (size_t)((nbytes + TIDE_ALIGN - 1) / TIDE_ALIGN * TIDE_ALIGN);
  if (sz == 0) sz = TIDE_ALIGN;
  s->data = aligned_alloc(TIDE_ALIGN, sz);
  if (!s->data) {
    free(s);
    return tide_err_set(err, TIDE_ENOMEM, "storage: cannot allocate %lld bytes", (long long)nbytes);
  }
  memset(s->data, 0, sz);
  s->nbytes = nbytes;
  s->kind = TIDE_STORAGE_OWNED;
  s->refcount = 1;
  *out = s;
  return 0;
}

int tide_storage_mmap(const char *path, int64_t offset, int64_t len, tide_storage_t **out, tide_err_t *err) {
  *out = NULL;
  if (!path) return tide_err_set(err, TIDE_EINVAL, "mmap: no path");
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return tide_err_set(err, TIDE_EIO, "%s: cannot open: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int e = errno;
    close(fd);
    return tide_err_set(err, TIDE_EIO, "%s: cannot stat: %s", path, strerror(e));
  }
  if (!S_ISREG(st.st_mode)) {
    close(fd);
    return tide_err_set(err, TIDE_EIO, "%s: not a regular file", path);
  }
  int64_t fsize = (int64_t)st.st_size;
  if (offset < 0 || offset > fsize) {
    close(fd);
    return tide_err_set(err, TIDE_ERANGE, "%s: offset %lld beyond file size %lld", path, (long long)offset,
                        (long long)fsize);
  }
  if (len < 0) len = fsize - offset;
  if (len > fsize - offset) {
    close(fd);
    return tide_err_set(err, TIDE_ERANGE, "%s: region [%lld, %lld) beyond file size %lld", path, (long long)offset,
                        (long long)(offset + len), (long long)fsize);
  }
  tide_storage_t *s = calloc(1, sizeof *s);
  if (!s) {
    close(fd);
    return tide_err_set(err, TIDE_ENOMEM, "%s: out of memory", path);
  }
  long pg = sysconf(_SC_PAGESIZE);
  int64_t aligned = offset / pg * pg;
  int64_t maplen = len + (offset - aligned);
  void *base = NULL;
  if (maplen > 0) {
    base = mmap(NULL, (size_t)maplen, PROT_READ, MAP_PRIVATE, fd, (off_t)aligned);
    if (base == MAP_FAILED) {
      int e = errno;
      close(fd);
      free(s);
      return tide_err_set(err, TIDE_EIO, "%s: mmap failed: %s", path, strerror(e));
    }
  }
  close(fd);
  s->map_base = base;
  s->map_len = maplen;
  s->data = base ? (char *)base + (offset - aligned) : NULL;
  s->nbytes = len;
  s->kind = TIDE_STORAGE_MMAP;
  s->readonly = 1;
  s->refcount = 1;
  *out = s;
  return 0;
}

void tide_storage_retain(tide_storage_t *s) {
  if (s) __atomic_add_fetch(&s->refcount, 1, __ATOMIC_RELAXED);
}

void tide_storage_release(tide_storage_t *s) {
  if (!s) return;
  if (__atomic_sub_fetch(&s->refcount, 1, __ATOMIC_ACQ_REL) != 0) return;
  switch (s->kind) {
  case TIDE_STORAGE_OWNED: free(s->data); break;
  case TIDE_STORAGE_MMAP:
    if (s->map_base) munmap(s->map_base, (size_t)s->map_len);
    break;
  default: break;
  }
  if (s->owner) tide_storage_release(s->owner);
  free(s);
}

/* ---- tensors ---------------------------------------------------------- */

static int check_shape(int32_t dtype, int32_t ndim, const int64_t *shape, int64_t *numel, tide_err_t *err) {
  const tide_dtype_traits_t *tr = tide_dtype_traits(dtype);
  if (!tr) return tide_err_set(err, TIDE_EDTYPE, "tensor: unknown dtype %d", (int)dtype);
  if (ndim < 0 || ndim > TIDE_MAX_DIMS)
    return tide_err_set(err, TIDE_EINVAL, "tensor: %d dimensions (at most %d)", (int)ndim, TIDE_MAX_DIMS);
  int64_t n = 1;
  for (int32_t i = 0; i < ndim; i++) {
    if (shape[i] < 0) return tide_err_set(err, TIDE_EINVAL, "tensor: negative dimension %lld", (long long)shape[i]);
    if (shape[i] > 0 && n > INT64_MAX / 16 / shape[i])
      return tide_err_set(err, TIDE_EINVAL, "tensor: element count overflows");
    n *= shape[i];
  }
  if (tr->block_size > 1 && (ndim == 0 || shape[ndim - 1] % tr->block_size != 0))
    return tide_err_set(err, TIDE_ESHAPE, "tensor: innermost dimension %lld is not a multiple of %s's block of %d",
                        ndim ? (long long)shape[ndim - 1] : 0LL, tr->name, (int)tr->block_size);
  *numel = n;
  return 0;
}

/* Fill contiguous byte strides for (dtype, ndim, shape). */
static void contiguous_strides(int32_t dtype, int32_t ndim, const int64_t *shape, int64_t *stride) {
  const tide_dtype_traits_t *tr = tide_dtype_traits(dtype);
  for (int i = 0; i < TIDE_MAX_DIMS; i++) stride[i] = 0;
  if (ndim == 0) return;
  int64_t s = tr->block_bytes;
  stride[ndim - 1] = s;
  s = shape[ndim - 1] / tr->block_size * tr->block_bytes;
  for (int32_t i = ndim - 2; i >= 0; i--) {
    stride[i] = s;
    s *= shape[i];
  }
}

static int64_t contiguous_bytes(int32_t dtype, int32_t ndim, const int64_t *shape) {
  const tide_dtype_traits_t *tr = tide_dtype_traits(dtype);
  int64_t n = 1;
  for (int32_t i = 0; i < ndim; i++) n *= shape[i];
  return n / tr->block_size * tr->block_bytes;
}

static tide_tensor_t *tensor_alloc(int32_t dtype, int32_t ndim, const int64_t *shape) {
  tide_tensor_t *t = calloc(1, sizeof *t);
  if (!t) return NULL;
  t->dtype = dtype;
  t->ndim = ndim;
  for (int i = 0; i < TIDE_MAX_DIMS; i++) t->shape[i] = i < ndim ? shape[i] : 1;
  contiguous_strides(dtype, ndim, shape, t->stride);
  t->refcount = 1;
  return t;
}

int tide_tensor_new(int32_t dtype, int32_t ndim, const int64_t *shape, tide_tensor_t **out, tide_err_t *err) {
  *out = NULL;
  int64_t numel;
  int rc = check_shape(dtype, ndim, shape, &numel, err);
  if (rc) return rc;
  tide_storage_t *s;
  rc = tide_storage_new(contiguous_bytes(dtype, ndim, shape), &s, err);
  if (rc) return rc;
  rc = tide_tensor_from_storage(s, 0, dtype, ndim, shape, out, err);
  tide_storage_release(s);
  return rc;
}

int tide_tensor_from_storage(tide_storage_t *s, int64_t offset, int32_t dtype, int32_t ndim, const int64_t *shape,
                             tide_tensor_t **out, tide_err_t *err) {
  *out = NULL;
  int64_t numel;
  int rc = check_shape(dtype, ndim, shape, &numel, err);
  if (rc) return rc;
  int64_t nb = contiguous_bytes(dtype, ndim, shape);
  if (offset < 0 || offset > s->nbytes || nb > s->nbytes - offset)
    return tide_err_set(err, TIDE_ERANGE, "tensor: %lld bytes at offset %lld exceed storage of %lld bytes",
                        (long long)nb, (long long)offset, (long long)s->nbytes);
  tide_tensor_t *t = tensor_alloc(dtype, ndim, shape);
  if (!t) return tide_err_set(err, TIDE_ENOMEM, "tensor: out of memory");
  t->data = (char *)s->data + offset;
  t->storage = s;
  tide_storage_retain(s);
  if (s->readonly) t->flags |= TIDE_TENSOR_READONLY;
  *out = t;
  return 0;
}

/* Byte extent [lo, hi) touched by a strided layout relative to its data pointer. */
static void extent(const tide_tensor_t *t, int64_t *lo, int64_t *hi) {
  const tide_dtype_traits_t *tr = tide_dtype_traits(t->dtype);
  int64_t a = 0, b = 0;
  for (int32_t i = 0; i < t->ndim; i++) {
    if (t->shape[i] == 0) {
      *lo = *hi = 0;
      return;
    }
    int64_t n = t->shape[i] - 1;
    if (i == t->ndim - 1) n = t->shape[i] / tr->block_size - 1;
    int64_t d = n * t->stride[i];
    if (d < 0) a += d; else b += d;
  }
  *lo = a;
  *hi = b + tr->block_bytes;
}

static int check_bounds(const tide_tensor_t *t, tide_err_t *err) {
  if (!t->storage) return 0; /* arena or external: caller's responsibility */
  int64_t lo, hi;
  extent(t, &lo, &hi);
  if (lo == hi) return 0;
  int64_t base = (char *)t->data - (char *)t->storage->data;
  if (base + lo < 0 || base + hi > t->storage->nbytes)
    return tide_err_set(err, TIDE_ERANGE, "view: bytes [%lld, %lld) outside storage of %lld bytes",
                        (long long)(base + lo), (long long)(base + hi), (long long)t->storage->nbytes);
  return 0;
}

static tide_tensor_t *clone_header(const tide_tensor_t *t) {
  tide_tensor_t *v = calloc(1, sizeof *v);
  if (!v) return NULL;
  *v = *t;
  v->refcount = 1;
  if (v->storage) tide_storage_retain(v->storage);
  if (v->scale) tide_tensor_retain(v->scale);
  return v;
}

int tide_tensor_view(tide_tensor_t *t, int64_t offset, int32_t ndim, const int64_t *shape, const int64_t *stride,
                     tide_tensor_t **out, tide_err_t *err) {
  *out = NULL;
  int64_t numel;
  int rc = check_shape(t->dtype, ndim, shape, &numel, err);
  if (rc) return rc;
  tide_tensor_t v = *t;
  v.data = (char *)t->data + offset;
  v.ndim = ndim;
  for (int i = 0; i < TIDE_MAX_DIMS; i++) v.shape[i] = i < ndim ? shape[i] : 1;
  if (stride) {
    for (int i = 0; i < TIDE_MAX_DIMS; i++) v.stride[i] = i < ndim ? stride[i] : 0;
    const tide_dtype_traits_t *tr = tide_dtype_traits(t->dtype);
    if (tr->block_size > 1 && ndim > 0 && v.stride[ndim - 1] != tr->block_bytes)
      return tide_err_set(err, TIDE_EINVAL, "view: innermost dimension of %s must be contiguous", tr->name);
  } else {
    contiguous_strides(t->dtype, ndim, shape, v.stride);
  }
  v.scale = NULL; /* scales describe the original layout only */
  if ((rc = check_bounds(&v, err))) return rc;
  tide_tensor_t *r = clone_header(&v);
  if (!r) return tide_err_set(err, TIDE_ENOMEM, "view: out of memory");
  *out = r;
  return 0;
}

int tide_tensor_narrow(tide_tensor_t *t, int32_t dim, int64_t start, int64_t len, tide_tensor_t **out, tide_err_t *err) {
  *out = NULL;
  if (dim < 0 || dim >= t->ndim) return tide_err_set(err, TIDE_EINVAL, "narrow: dim %d of a %d-D tensor", dim, t->ndim);
  if (start < 0 || len < 0 || start > t->shape[dim] || len > t->shape[dim] - start)
    return tide_err_set(err, TIDE_ERANGE, "narrow: [%lld, %lld) outside dimension %d of size %lld", (long long)start,
                        (long long)(start + len), dim, (long long)t->shape[dim]);
  const tide_dtype_traits_t *tr = tide_dtype_traits(t->dtype);
  int64_t off;
  if (dim == t->ndim - 1) {
    if (start % tr->block_size || len % tr->block_size)
      return tide_err_set(err, TIDE_EINVAL, "narrow: %s rows split only at block boundaries", tr->name);
    off = start / tr->block_size * t->stride[dim];
  } else {
    off = start * t->stride[dim];
  }
  int64_t shape[TIDE_MAX_DIMS];
  memcpy(shape, t->shape, sizeof shape);
  shape[dim] = len;
  return tide_tensor_view(t, off, t->ndim, shape, t->stride, out, err);
}

int tide_tensor_is_contiguous(const tide_tensor_t *t) {
  int64_t s[TIDE_MAX_DIMS];
  contiguous_strides(t->dtype, t->ndim, t->shape, s);
  for (int32_t i = 0; i < t->ndim; i++)
    if (t->shape[i] > 1 && s[i] != t->stride[i]) return 0;
  return 1;
}

int tide_tensor_reshape(tide_tensor_t *t, int32_t ndim, const int64_t *shape, tide_tensor_t **out, tide_err_t *err) {
  *out = NULL;
  if (!tide_tensor_is_contiguous(t)) return tide_err_set(err, TIDE_EINVAL, "reshape: tensor is not contiguous");
  int64_t numel;
  int rc = check_shape(t->dtype, ndim, shape, &numel, err);
  if (rc) return rc;
  if (numel != tide_tensor_numel(t))
    return tide_err_set(err, TIDE_ESHAPE, "reshape: %lld elements into a shape of %lld",
                        (long long)tide_tensor_numel(t), (long long)numel);
  rc = tide_tensor_view(t, 0, ndim, shape, NULL, out, err);
  if (rc == 0 && t->scale && t->ndim == ndim) { /* same-rank reshape keeps scales only if shape is unchanged */
    int same = 1;
    for (int i = 0; i < ndim; i++) same &= t->shape[i] == shape[i];
    if (same) {
      (*out)->scale = t->scale;
      tide_tensor_retain(t->scale);
      memcpy((*out)->scale_block, t->scale_block, sizeof t->scale_block);
    }
  }
  return rc;
}

int tide_tensor_transpose(tide_tensor_t *t, int32_t d0, int32_t d1, tide_tensor_t **out, tide_err_t *err) {
  *out = NULL;
  if (d0 < 0 || d1 < 0 || d0 >= t->ndim || d1 >= t->ndim)
    return tide_err_set(err, TIDE_EINVAL, "transpose: dims %d,%d of a %d-D tensor", d0, d1, t->ndim);
  const tide_dtype_traits_t *tr = tide_dtype_traits(t->dtype);
  if (tr->block_size > 1 && (d0 == t->ndim - 1 || d1 == t->ndim - 1) && d0 != d1)
    return tide_err_set(err, TIDE_EINVAL, "transpose: the innermost dimension of %s cannot move", tr->name);
  int64_t shape[TIDE_MAX_DIMS], stride[TIDE_MAX_DIMS];
  memcpy(shape, t->shape, sizeof shape);
  memcpy(stride, t->stride, sizeof stride);
  int64_t x = shape[d0];
  shape[d0] = shape[d1];
  shape[d1] = x;
  x = stride[d0];
  stride[d0] = stride[d1];
  stride[d1] = x;
  return tide_tensor_view(t, 0, t->ndim, shape, stride, out, err);
}

int tide_tensor_set_scale(tide_tensor_t *t, tide_tensor_t *scale, int32_t br, int32_t bc, tide_err_t *err) {
  if (!scale) {
    if (t->scale) tide_tensor_release(t->scale);
    t->scale = NULL;
    return 0;
  }
  if (t->ndim != 2 || scale->ndim != 2 || scale->dtype != TIDE_DTYPE_F32 || br <= 0 || bc <= 0)
    return tide_err_set(err, TIDE_EINVAL, "scale: needs a 2-D tensor and 2-D f32 scales with positive block sizes");
  int64_t er = (t->shape[0] + br - 1) / br, ec = (t->shape[1] + bc - 1) / bc;
  if (scale->shape[0] != er || scale->shape[1] != ec)
    return tide_err_set(err, TIDE_ESHAPE, "scale: expected (%lld, %lld) scales for (%lld, %lld) in %dx%d blocks, got (%lld, %lld)",
                        (long long)er, (long long)ec, (long long)t->shape[0], (long long)t->shape[1], br, bc,
                        (long long)scale->shape[0], (long long)scale->shape[1]);
  tide_tensor_retain(scale);
  if (t->scale) tide_tensor_release(t->scale);
  t->scale = scale;
  t->scale_block[0] = br;
  t->scale_block[1] = bc;
  return 0;
}

void tide_tensor_retain(tide_tensor_t *t) {
  if (t) __atomic_add_fetch(&t->refcount, 1, __ATOMIC_RELAXED);
}

void tide_tensor_release(tide_tensor_t *t) {
  if (!t) return;
  if (__atomic_sub_fetch(&t->refcount, 1, __ATOMIC_ACQ_REL) != 0) return;
  if (t->storage) tide_storage_release(t->storage);
  if (t->scale) tide_tensor_release(t->scale);
  free(t);
}

int64_t tide_tensor_numel(const tide_tensor_t *t) {
  int64_t n = 1;
  for (int32_t i = 0; i < t->ndim; i++) n *= t->shape[i];
  return n;
}

int64_t tide_tensor_row_bytes(const tide_tensor_t *t) {
  if (t->ndim == 0) return tide_dtype_traits(t->dtype)->block_bytes;
  return tide_dtype_row_bytes(t->dtype, t->shape[t->ndim - 1]);
}

int64_t tide_tensor_nbytes(const tide_tensor_t *t) { return contiguous_bytes(t->dtype, t->ndim, t->shape); }

/* Address of the row holding flat index i, and the element index within that row. */
static const char *row_of(const tide_tensor_t *t, int64_t i, int64_t *col, int64_t *r_out) {
  if (t->ndim == 0) {
    *col = 0;
    *r_out = 0;
    return t->data;
  }
  int64_t inner = t->shape[t->ndim - 1];
  int64_t r = i / inner;
  *col = i % inner;
  const char *p = t->data;
  int64_t rr = r;
  for (int32_t d = t->ndim - 2; d >= 0; d--) {
    p += (rr % t->shape[d]) * t->stride[d];
    rr /= t->shape[d];
  }
  *r_out = r;
  return p;
}

static float scale_at(const tide_tensor_t *t, int64_t row, int64_t col) {
  if (!t->scale) return 1.0f;
  int64_t r = row % t->shape[0]; /* 2-D only */
  return (float)tide_tensor_get(t->scale, (r / t->scale_block[0]) * t->scale->shape[1] + col / t->scale_block[1]);
}

double tide_tensor_get(const tide_tensor_t *t, int64_t i) {
  if (i < 0 || i >= tide_tensor_numel(t)) return 0.0;
  int64_t col, row;
  const char *p = row_of(t, i, &col, &row);
  const tide_dtype_traits_t *tr = tide_dtype_traits(t->dtype);
  double v;
  switch (t->dtype) {
  case TIDE_DTYPE_I32: v = ((const int32_t *)(const void *)(p + col * t->stride[t->ndim ? t->ndim - 1 : 0]))[0]; return v;
  case TIDE_DTYPE_I64: v = (double)((const int64_t *)(const void *)(p + col * t->stride[t->ndim ? t->ndim - 1 : 0]))[0]; return v;
  case TIDE_DTYPE_F64: v = ((const double *)(const void *)(p + col * t->stride[t->ndim ? t->ndim - 1 : 0]))[0]; return v;
  default: break;
  }
  float f = 0.0f;
  if (tr->block_size == 1) {
    const char *e = p + (t->ndim ? col * t->stride[t->ndim - 1] : 0);
    if (tr->to_float) tr->to_float(e, &f, 1);
  } else {
    float buf[256];
    const char *blk = p + col / tr->block_size * tr->block_bytes;
    if (!tr->to_float) return 0.0 / 0.0 * 0.0; /* NaN: opaque block type */
    tr->to_float(blk, buf, tr->block_size);
    f = buf[col % tr->block_size];
  }
  return (double)f * scale_at(t, row, col);
}

int tide_tensor_set(tide_tensor_t *t, int64_t i, double v, tide_err_t *err) {
  if (t->flags & TIDE_TENSOR_READONLY) return tide_err_set(err, TIDE_ESTATE, "set: tensor is read-only");
  if (i < 0 || i >= tide_tensor_numel(t))
    return tide_err_set(err, TIDE_ERANGE, "set: index %lld outside %lld elements", (long long)i,
                        (long long)tide_tensor_numel(t));
  const tide_dtype_traits_t *tr = tide_dtype_traits(t->dtype);
  if (tr->block_size != 1 || t->scale)
    return tide_err_set(err, TIDE_EUNSUPPORTED, "set: cannot write single elements of %s tensors", tr->name);
  int64_t col, row;
  char *p = (char *)row_of(t, i, &col, &row) + (t->ndim ? col * t->stride[t->ndim - 1] : 0);
  switch (t->dtype) {
  case TIDE_DTYPE_I32: *(int32_t *)(void *)p = (int32_t)v; return 0;
  case TIDE_DTYPE_I64: *(int64_t *)(void *)p = (int64_t)v; return 0;
  case TIDE_DTYPE_F64: *(double *)(void *)p = v; return 0;
  case TIDE_DTYPE_I16: *(int16_t *)(void *)p = (int16_t)v; return 0;
  case TIDE_DTYPE_U8: *(uint8_t *)p = (uint8_t)v; return 0;
  default: break;
  }
  if (!tr->from_float) return tide_err_set(err, TIDE_EUNSUPPORTED, "set: no conversion to %s", tr->name);
  float f = (float)v;
  tr->from_float(&f, p, 1);
  return 0;
}

int tide_tensor_to_f32(const tide_tensor_t *t, float *dst, tide_err_t *err) {
  const tide_dtype_traits_t *tr = tide_dtype_traits(t->dtype);
  if (!tr || !tr->to_float)
    return tide_err_set(err, TIDE_EUNSUPPORTED, "to_f32: no conversion from %s", tr ? tr->name : "?");
  int64_t n = tide_tensor_numel(t);
  if (n == 0) return 0;
  int64_t inner = t->ndim ? t->shape[t->ndim - 1] : 1;
  int64_t rows = n / inner;
  int contiguous_rows = tr->block_size > 1 || t->ndim == 0 || t->stride[t->ndim - 1] == tr->block_bytes;
  for (int64_t r = 0; r < rows; r++) {
    int64_t col, rr;
    const char *p = row_of(t, r * inner, &col, &rr);
    float *d = dst + r * inner;
    if (contiguous_rows) {
      tr->to_float(p, d, inner);
    } else {
      for (int64_t c = 0; c < inner; c++) tr->to_float(p + c * t->stride[t->ndim - 1], d + c, 1);
    }
    if (t->scale)
      for (int64_t c = 0; c < inner; c++) d[c] *= scale_at(t, r, c);
  }
  return 0;
}

int tide_tensor_copy(const tide_tensor_t *t, int32_t dtype, tide_tensor_t **out, tide_err_t *err) {
  *out = NULL;
  const tide_dtype_traits_t *dst_tr = tide_dtype_traits(dtype);
  const tide_dtype_traits_t *src_tr = tide_dtype_traits(t->dtype);
  if (!dst_tr) return tide_err_set(err, TIDE_EDTYPE, "copy: unknown dtype %d", (int)dtype);
  tide_tensor_t *r;
  int rc = tide_tensor_new(dtype, t->ndim, t->shape, &r, err);
  if (rc) return rc;
  int64_t n = tide_tensor_numel(t);
  if (dtype == t->dtype && !t->scale) { /* byte copy row by row */
    int64_t inner = t->ndim ? t->shape[t->ndim - 1] : 1;
    int64_t rb = tide_dtype_row_bytes(dtype, inner);
    int rows_contig = src_tr->block_size > 1 || t->ndim == 0 || t->stride[t->ndim - 1] == src_tr->block_bytes;
    for (int64_t row = 0; n > 0 && row < n / inner; row++) {
      int64_t col, rr;
      const char *p = row_of(t, row * inner, &col, &rr);
      char *d = (char *)r->data + row * rb;
      if (rows_contig) {
        memcpy(d, p, (size_t)rb);
      } else {
        for (int64_t c = 0; c < inner; c++)
          memcpy(d + c * src_tr->block_bytes, p + c * t->stride[t->ndim - 1], (size_t)src_tr->block_bytes);
      }
    }
    *out = r;
    return 0;
  }
  if (!dst_tr->from_float) {
    tide_tensor_release(r);
    return tide_err_set(err, TIDE_EUNSUPPORTED, "copy: no conversion to %s", dst_tr->name);
  }
  float *tmp = malloc((size_t)(n ? n : 1) * sizeof(float));
  if (!tmp) {
    tide_tensor_release(r);
    return tide_err_set(err, TIDE_ENOMEM, "copy: out of memory");
  }
  rc = tide_tensor_to_f32(t, tmp, err);
  if (rc == 0) dst_tr->from_float(tmp, r->data, n);
  free(tmp);
  if (rc) {
    tide_tensor_release(r);
    return rc;
  }
  *out = r;
  return 0;
}

/* ---- arena ------------------------------------------------------------ */

struct tide_arena {
  char *base;
  int64_t cap;
  int64_t used;
  int64_t high;
};

int tide_arena_new(int64_t capacity, tide_arena_t **out, tide_err_t *err) {
  *out = NULL;
  if (capacity <= 0) return tide_err_set(err, TIDE_EINVAL, "arena: capacity must be positive");
  tide_arena_t *a = calloc(1, sizeof *a);
  if (!a) return tide_err_set(err, TIDE_ENOMEM, "arena: out of memory");
  a->cap = (capacity + TIDE_ALIGN - 1) / TIDE_ALIGN * TIDE_ALIGN;
  a->base = aligned_alloc(TIDE_ALIGN, (size_t)a->cap);
  if (!a->base) {
    free(a);
    return tide_err_set(err, TIDE_ENOMEM, "arena: cannot allocate %lld bytes", (long long)capacity);
  }
  *out = a;
  return 0;
}

void tide_arena_free(tide_arena_t *a) {
  if (!a) return;
  free(a->base);
  free(a);
}

void *tide_arena_alloc(tide_arena_t *a, int64_t nbytes, tide_err_t *err) {
  if (nbytes < 0) {
    tide_err_set(err, TIDE_EINVAL, "arena: negative size");
    return NULL;
  }
  int64_t sz = (nbytes + TIDE_ALIGN - 1) / TIDE_ALIGN * TIDE_ALIGN;
  if (sz > a->cap - a->used) {
    tide_err_set(err, TIDE_ENOMEM, "arena: %lld bytes requested, %lld of %lld free", (long long)nbytes,
                 (long long)(a->cap - a->used), (long long)a->cap);
    return NULL;
  }
  void *p = a->base + a->used;
  a->used += sz;
  if (a->used > a->high) a->high = a->used;
  return p;
}

int tide_arena_tensor(tide_arena_t *a, int32_t dtype, int32_t ndim, const int64_t *shape, tide_tensor_t **out,
                      tide_err_t *err) {
  *out = NULL;
  int64_t numel;
  int rc = check_shape(dtype, ndim, shape, &numel, err);
  if (rc) return rc;
  void *p = tide_arena_alloc(a, contiguous_bytes(dtype, ndim, shape), err);
  if (!p) return err ? err->code : TIDE_ENOMEM;
  tide_tensor_t *t = tensor_alloc(dtype, ndim, shape);
  if (!t) return tide_err_set(err, TIDE_ENOMEM, "arena: out of memory");
  t->data = p;
  t->flags |= TIDE_TENSOR_ARENA;
  *out = t;
  return 0;
}

void tide_arena_reset(tide_arena_t *a) { a->used = 0; }
int64_t tide_arena_used(const tide_arena_t *a) { return a->used; }
int64_t tide_arena_high_water(const tide_arena_t *a) { return a->high; }
