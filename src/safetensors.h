/* safetensors.h: read (mmapped) and write safetensors files, single or
 * sharded (model.safetensors.index.json). Every tensor returned is a
 * read-only view on the file mapping; nothing is copied. */
#ifndef TIDE_SAFETENSORS_H
#define TIDE_SAFETENSORS_H

#ifndef TIDE_FFI
#include <stdint.h>
#endif
#include "error.h"
#include "tensor.h"

typedef struct tide_st tide_st_t;

/* path: a .safetensors file, a model.safetensors.index.json, or a folder
 * holding either (index preferred). All shards are validated on open. */
int tide_st_open(const char *path, tide_st_t **out, tide_err_t *err);
/* The same checks on a file image held in memory (the bytes are copied);
 * name labels error messages. Used by the fuzzer and by tests. */
int tide_st_open_memory(const void *data, int64_t n, const char *name, tide_st_t **out, tide_err_t *err);
void tide_st_close(tide_st_t *st); /* tensors already returned stay valid */
int64_t tide_st_count(const tide_st_t *st);
/* Name of tensor i (sorted by name), or NULL when out of range. */
const char *tide_st_name(const tide_st_t *st, int64_t i);
/* Index of a tensor by name, or -1. */
int64_t tide_st_find(const tide_st_t *st, const char *name);
/* New reference to tensor i (read-only view of the mapping). */
int tide_st_get(tide_st_t *st, int64_t i, tide_tensor_t **out, tide_err_t *err);
/* The file dtype string of tensor i ("BF16", "F8_E4M3", ...), or NULL. */
const char *tide_st_dtype_name(const tide_st_t *st, int64_t i);
/* The shard file a tensor lives in, or NULL. */
const char *tide_st_file(const tide_st_t *st, int64_t i);
/* Byte offset of tensor i's data in its shard file, or -1. */
int64_t tide_st_file_offset(const tide_st_t *st, int64_t i);
/* __metadata__ entries (string values) of the first file: count, key, value. */
int64_t tide_st_meta_count(const tide_st_t *st);
const char *tide_st_meta_key(const tide_st_t *st, int64_t i);
const char *tide_st_meta_value(const tide_st_t *st, int64_t i);

/* Write n tensors (any layout; written contiguous, sorted by name) and
 * n_meta string pairs (meta[2*i] key, meta[2*i+1] value) to path. The file
 * is written to path.tmp and renamed, so a failed write leaves no partial file. */
int tide_st_save(const char *path, int32_t n, const char *const *names, const tide_tensor_t *const *tensors,
                 int32_t n_meta, const char *const *meta, tide_err_t *err);

#endif
