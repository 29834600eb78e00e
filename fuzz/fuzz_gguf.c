/* libFuzzer target for the GGUF parser: open the bytes as a file image,
 * read every metadata value (each array element) and every tensor's bytes.
 * Build and run with `make fuzz`. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  tide_gguf_t *g = NULL;
  tide_err_t err;
  if (tide_gguf_open_memory(data, (int64_t)size, "fuzz.gguf", &g, &err) != 0) {
    if (err.msg[0] == '\0') abort(); /* every failure carries a message */
    return 0;
  }
  volatile uint64_t sink = tide_gguf_version(g) + tide_gguf_alignment(g) + (uint64_t)tide_gguf_data_offset(g);
  for (int64_t i = 0; i < tide_gguf_kv_count(g); i++) {
    const char *key = tide_gguf_kv_key(g, i);
    if (!key || tide_gguf_kv_find(g, key) != i) abort();
    int64_t n = tide_gguf_kv_arr_len(g, i);
    sink += (uint64_t)tide_gguf_kv_type(g, i) + (uint64_t)tide_gguf_kv_arr_type(g, i);
    for (int64_t j = 0; j < n; j++) {
      int64_t len;
      const char *s = tide_gguf_kv_str(g, i, j, &len);
      if (s) {
        for (int64_t k = 0; k < len; k++) sink += (uint8_t)s[k];
        if (s[len] != '\0') abort();
      } else {
        sink += (uint64_t)tide_gguf_kv_int(g, i, j) + tide_gguf_kv_uint(g, i, j);
        double d = tide_gguf_kv_float(g, i, j);
        sink += d == d;
      }
    }
  }
  for (int64_t i = 0; i < tide_gguf_tensor_count(g); i++) {
    const char *name = tide_gguf_tensor_name(g, i);
    if (!name || tide_gguf_tensor_find(g, name) != i) abort();
    sink += (uint64_t)tide_gguf_tensor_ggml_type(g, i) + (uint64_t)tide_gguf_tensor_offset(g, i);
    tide_tensor_t *t;
    if (tide_gguf_tensor(g, i, &t, &err) != 0) continue;
    const uint8_t *p = t->data;
    int64_t nb = tide_tensor_nbytes(t);
    if (nb != tide_gguf_tensor_nbytes(g, i)) abort();
    for (int64_t k = 0; k < nb; k++) sink += p[k];
    tide_tensor_release(t);
  }
  (void)sink;
  tide_gguf_close(g);
  return 0;
}
