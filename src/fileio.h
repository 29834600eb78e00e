/* fileio.h: helpers shared by the model-file readers and writers
 * (safetensors.c, gguf.c). Internal to libtide: not part of the FFI. */
#ifndef TIDE_FILEIO_H
#define TIDE_FILEIO_H

#include <stdint.h>
#include <stdio.h>

#include "error.h"
#include "tensor.h"

/* Offset of the first byte that breaks UTF-8 (overlong forms, surrogates,
 * code points above U+10FFFF, truncated sequences), or -1 if s is valid. */
int64_t tide_fileio_utf8_check(const void *s, int64_t n);

/* Storage holding a private copy of n bytes (exactly n bytes are allocated,
 * so a sanitizer sees any read past them). */
int tide_fileio_storage_copy(const void *data, int64_t n, tide_storage_t **out, tide_err_t *err);

/* Read-only contiguous tensor at byte offset of s. When the address is not
 * aligned to the dtype's element size, the bytes are copied into an aligned
 * buffer instead, so no reader ever sees a misaligned element. */
int tide_fileio_tensor_at(tide_storage_t *s, int64_t offset, int32_t dtype, int32_t ndim, const int64_t *shape,
                          tide_tensor_t **out, tide_err_t *err);

/* Write the bytes of t in row-major order (contiguous, any strides). */
int tide_fileio_write_tensor(FILE *f, const tide_tensor_t *t, const char *what, tide_err_t *err);

/* Atomic file writing: open path.tmp, write, then commit (flush, fsync,
 * rename to path) or abort (close and unlink). */
typedef struct tide_fileio_out {
  FILE *f;
  char *path;
  char *tmp;
} tide_fileio_out_t;
int tide_fileio_out_open(tide_fileio_out_t *o, const char *path, tide_err_t *err);
int tide_fileio_out_write(tide_fileio_out_t *o, const void *p, size_t n, tide_err_t *err);
int tide_fileio_out_commit(tide_fileio_out_t *o, tide_err_t *err);
void tide_fileio_out_abort(tide_fileio_out_t *o);

/* Read a whole (small) file into a NUL-terminated malloc'd buffer; files
 * larger than max_bytes are refused. */
int tide_fileio_read_all(const char *path, int64_t max_bytes, char **out, int64_t *len, tide_err_t *err);

#endif
