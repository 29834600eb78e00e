/* tensor.h: refcounted storage, tensors (up to 4-D, byte strides, views),
 * and the arena for step-local scratch.
 *
 * Storage is either owned (aligned allocation), a read-only mmap of a file
 * region, or borrowed memory kept alive by an owner callback. A tensor holds
 * a reference to its storage; a view holds another reference to the same
 * storage. Strides are in bytes. For block-quantized dtypes the innermost
 * dimension is always contiguous and a multiple of the block size, and
 * stride[ndim-1] holds the bytes of one block (it steps one block, not one
 * element); use tide_tensor_row_bytes() for the bytes of a row. */
#ifndef TIDE_TENSOR_H
#define TIDE_TENSOR_H

#ifndef TIDE_FFI
#include <stdint.h>
#include <stddef.h>
#endif
#include "error.h"
#include "dtype.h"

#define TIDE_MAX_DIMS 4

typedef enum tide_storage_kind {
  TIDE_STORAGE_OWNED = 0, /* aligned allocation, freed on last release */
  TIDE_STORAGE_MMAP = 1,  /* read-only mapping of a file, unmapped on last release */
  TIDE_STORAGE_EXTERN = 2 /* borrowed memory; `owner` released with it */
} tide_storage_kind_t;

typedef struct tide_storage {
  void *data;          /* first byte (for MMAP: the mapped file start + map_offset) */
  int64_t nbytes;      /* usable bytes from data */
  int32_t kind;        /* tide_storage_kind_t */
  int32_t readonly;    /* 1 for mmap: writes through tensors are refused */
  int32_t refcount;
  int32_t pad_;
  void *map_base;      /* MMAP: address returned by mmap */
  int64_t map_len;     /* MMAP: length passed to munmap */
  struct tide_storage *owner; /* EXTERN: storage kept alive by this one, or NULL */
} tide_storage_t;

typedef struct tide_tensor {
  void *data;                    /* address of element [0,0,0,0] */
  tide_storage_t *storage;       /* holds a reference; NULL for arena tensors */
  int32_t dtype;                 /* tide_dtype_t */
  int32_t ndim;                  /* 0..4 */
  int64_t shape[TIDE_MAX_DIMS];  /* elements per dimension; unused dims are 1 */
  int64_t stride[TIDE_MAX_DIMS]; /* bytes between consecutive indices */
  int32_t refcount;
  int32_t flags;                 /* TIDE_TENSOR_* bits */
  struct tide_tensor *scale;     /* optional block scales (f32), e.g. FP8 weight_scale_inv */
  int32_t scale_block[2];        /* rows, cols covered by one scale (e.g. 128,128) */
} tide_tensor_t;

enum {
  TIDE_TENSOR_READONLY = 1, /* data must not be written */
  TIDE_TENSOR_ARENA = 2     /* data lives in an arena: freed by tide_arena_reset */
};

/* --- storage ----------------------------------------------------------- */
int tide_storage_new(int64_t nbytes, tide_storage_t **out, tide_err_t *err);
/* Map [offset, offset+len) of a file read-only. len < 0 maps to the end. */
int tide_storage_mmap(const char *path, int64_t offset, int64_t len, tide_storage_t **out, tide_err_t *err);
void tide_storage_retain(tide_storage_t *s);
void tide_storage_release(tide_storage_t *s);

/* --- tensors ----------------------------------------------------------- */
/* New contiguous zero-filled tensor. shape has ndim entries (outermost first). */
int tide_tensor_new(int32_t dtype, int32_t ndim, const int64_t *shape, tide_tensor_t **out, tide_err_t *err);
/* Contiguous tensor over existing storage at a byte offset (checked against storage bounds). */
int tide_tensor_from_storage(tide_storage_t *s, int64_t offset, int32_t dtype, int32_t ndim, const int64_t *shape,
                             tide_tensor_t **out, tide_err_t *err);
/* View with a new shape/stride over the same storage; offset in bytes relative to t->data.
 * stride may be NULL for contiguous. Bounds are checked. */
int tide_tensor_view(tide_tensor_t *t, int64_t offset, int32_t ndim, const int64_t *shape, const int64_t *stride,
                     tide_tensor_t **out, tide_err_t *err);
/* Narrow dimension dim to [start, start+len). */
int tide_tensor_narrow(tide_tensor_t *t, int32_t dim, int64_t start, int64_t len, tide_tensor_t **out, tide_err_t *err);
/* Reshape a contiguous tensor (same element count). */
int tide_tensor_reshape(tide_tensor_t *t, int32_t ndim, const int64_t *shape, tide_tensor_t **out, tide_err_t *err);
/* Swap two dimensions (a view). */
int tide_tensor_transpose(tide_tensor_t *t, int32_t d0, int32_t d1, tide_tensor_t **out, tide_err_t *err);
/* Contiguous copy, optionally converting dtype (to float types or from them). */
int tide_tensor_copy(const tide_tensor_t *t, int32_t dtype, tide_tensor_t **out, tide_err_t *err);
/* Attach block scales: scale is a 2-D f32 tensor, one value per (br x bc) block of t's last two dims. */
int tide_tensor_set_scale(tide_tensor_t *t, tide_tensor_t *scale, int32_t br, int32_t bc, tide_err_t *err);
void tide_tensor_retain(tide_tensor_t *t);
void tide_tensor_release(tide_tensor_t *t);

int64_t tide_tensor_numel(const tide_tensor_t *t);
/* Bytes of one contiguous row (innermost dim), or -1. */
int64_t tide_tensor_row_bytes(const tide_tensor_t *t);
/* Total bytes when contiguous. */
int64_t tide_tensor_nbytes(const tide_tensor_t *t);
int tide_tensor_is_contiguous(const tide_tensor_t *t);
/* Read element i (flat, row-major logical order) as double; applies block scales. */
double tide_tensor_get(const tide_tensor_t *t, int64_t i);
/* Write element i (flat) from double; refused on read-only or block-quantized tensors. */
int tide_tensor_set(tide_tensor_t *t, int64_t i, double v, tide_err_t *err);
/* Convert the whole tensor (any dtype, strided, scales applied) to contiguous float32 in dst (numel floats). */
int tide_tensor_to_f32(const tide_tensor_t *t, float *dst, tide_err_t *err);

/* --- arena: bump allocator for step-local scratch ------------------------ */
typedef struct tide_arena tide_arena_t;
int tide_arena_new(int64_t capacity, tide_arena_t **out, tide_err_t *err);
void tide_arena_free(tide_arena_t *a);
/* 64-byte aligned; NULL (and err set) when the arena is full. */
void *tide_arena_alloc(tide_arena_t *a, int64_t nbytes, tide_err_t *err);
/* Tensor whose data lives in the arena; it must not outlive the next reset. */
int tide_arena_tensor(tide_arena_t *a, int32_t dtype, int32_t ndim, const int64_t *shape, tide_tensor_t **out,
                      tide_err_t *err);
void tide_arena_reset(tide_arena_t *a);
int64_t tide_arena_used(const tide_arena_t *a);
int64_t tide_arena_high_water(const tide_arena_t *a);

#endif
