/* gguf.h: read (mmapped) and write GGUF v3 files (llama.cpp's format).
 * Tensor dims are reported outermost first (GGUF stores them innermost
 * first; the reader reverses them). Block-quantized tensors are returned
 * with their block dtype (see dtype.h). */
#ifndef TIDE_GGUF_H
#define TIDE_GGUF_H

#ifndef TIDE_FFI
#include <stdint.h>
#endif
#include "error.h"
#include "tensor.h"

/* GGUF metadata value types (as in the GGUF specification). */
typedef enum tide_gguf_type {
  TIDE_GGUF_UINT8 = 0,
  TIDE_GGUF_INT8 = 1,
  TIDE_GGUF_UINT16 = 2,
  TIDE_GGUF_INT16 = 3,
  TIDE_GGUF_UINT32 = 4,
  TIDE_GGUF_INT32 = 5,
  TIDE_GGUF_FLOAT32 = 6,
  TIDE_GGUF_BOOL = 7,
  TIDE_GGUF_STRING = 8,
  TIDE_GGUF_ARRAY = 9,
  TIDE_GGUF_UINT64 = 10,
  TIDE_GGUF_INT64 = 11,
  TIDE_GGUF_FLOAT64 = 12
} tide_gguf_type_t;

typedef struct tide_gguf tide_gguf_t;

int tide_gguf_open(const char *path, tide_gguf_t **out, tide_err_t *err);
/* The same checks on a file image held in memory (the bytes are copied);
 * name labels error messages. Used by the fuzzer and by tests. */
int tide_gguf_open_memory(const void *data, int64_t n, const char *name, tide_gguf_t **out, tide_err_t *err);
void tide_gguf_close(tide_gguf_t *g); /* tensors already returned stay valid */
uint32_t tide_gguf_version(const tide_gguf_t *g);
uint32_t tide_gguf_alignment(const tide_gguf_t *g);
/* Byte offset of the (aligned) tensor data section in the file. */
int64_t tide_gguf_data_offset(const tide_gguf_t *g);

/* Metadata: key i's name and type; for arrays, element type and length. */
int64_t tide_gguf_kv_count(const tide_gguf_t *g);
const char *tide_gguf_kv_key(const tide_gguf_t *g, int64_t i);
int64_t tide_gguf_kv_find(const tide_gguf_t *g, const char *key);
int32_t tide_gguf_kv_type(const tide_gguf_t *g, int64_t i);
int32_t tide_gguf_kv_arr_type(const tide_gguf_t *g, int64_t i);
int64_t tide_gguf_kv_arr_len(const tide_gguf_t *g, int64_t i);
/* Value j of key i (j = 0 for scalars): as integer, float, or string (len out).
 * Strings are NUL-terminated copies (they may hold NUL bytes: use len).
 * Arrays of arrays are refused on open (TIDE_EUNSUPPORTED), as llama.cpp does. */
int64_t tide_gguf_kv_int(const tide_gguf_t *g, int64_t i, int64_t j);
uint64_t tide_gguf_kv_uint(const tide_gguf_t *g, int64_t i, int64_t j);
double tide_gguf_kv_float(const tide_gguf_t *g, int64_t i, int64_t j);
const char *tide_gguf_kv_str(const tide_gguf_t *g, int64_t i, int64_t j, int64_t *len);

int64_t tide_gguf_tensor_count(const tide_gguf_t *g);
const char *tide_gguf_tensor_name(const tide_gguf_t *g, int64_t i);
int64_t tide_gguf_tensor_find(const tide_gguf_t *g, const char *name);
int32_t tide_gguf_tensor_ggml_type(const tide_gguf_t *g, int64_t i);
/* Tensor i's offset relative to the data section, and its size in bytes (-1 when out of range). */
int64_t tide_gguf_tensor_offset(const tide_gguf_t *g, int64_t i);
int64_t tide_gguf_tensor_nbytes(const tide_gguf_t *g, int64_t i);
/* New reference: read-only view of tensor i on the mapping. */
int tide_gguf_tensor(tide_gguf_t *g, int64_t i, tide_tensor_t **out, tide_err_t *err);

/* GGML type id <-> tide dtype (-1 when there is none). */
int32_t tide_gguf_dtype_from_ggml(int32_t ggml_type);
int32_t tide_gguf_ggml_from_dtype(int32_t dtype);

/* Writer: collect typed metadata and tensors, then write (to path.tmp, renamed). */
typedef struct tide_gguf_writer tide_gguf_writer_t;
int tide_gguf_writer_new(tide_gguf_writer_t **out, tide_err_t *err);
void tide_gguf_writer_free(tide_gguf_writer_t *w);
int tide_gguf_writer_set_alignment(tide_gguf_writer_t *w, uint32_t alignment, tide_err_t *err);
/* Scalar of type (one of the numeric types or BOOL): integer or float value as given.
 * A value that does not fit the type (or BOOL other than 0/1) is refused (TIDE_EINVAL);
 * kv_int with a float type converts, kv_float with an integer type needs an integral value.
 * Setting "general.alignment" (UINT32, a power of two) also sets the writer's alignment. */
int tide_gguf_writer_kv_int(tide_gguf_writer_t *w, const char *key, int32_t type, int64_t v, tide_err_t *err);
/* UINT64 scalar over its full range. */
int tide_gguf_writer_kv_uint(tide_gguf_writer_t *w, const char *key, uint64_t v, tide_err_t *err);
int tide_gguf_writer_kv_float(tide_gguf_writer_t *w, const char *key, int32_t type, double v, tide_err_t *err);
int tide_gguf_writer_kv_str(tide_gguf_writer_t *w, const char *key, const char *s, int64_t len, tide_err_t *err);
/* Arrays: numeric (ints or floats given as double/int64 arrays) or of strings. */
int tide_gguf_writer_kv_arr_int(tide_gguf_writer_t *w, const char *key, int32_t type, const int64_t *v, int64_t n,
                                tide_err_t *err);
int tide_gguf_writer_kv_arr_float(tide_gguf_writer_t *w, const char *key, int32_t type, const double *v, int64_t n,
                                  tide_err_t *err);
int tide_gguf_writer_kv_arr_str(tide_gguf_writer_t *w, const char *key, const char *const *s, const int64_t *lens,
                                int64_t n, tide_err_t *err);
/* Add a tensor (retained until the writer is freed); written contiguous. */
int tide_gguf_writer_add_tensor(tide_gguf_writer_t *w, const char *name, const tide_tensor_t *t, tide_err_t *err);
int tide_gguf_writer_write(tide_gguf_writer_t *w, const char *path, tide_err_t *err);

#endif
