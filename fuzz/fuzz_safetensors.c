/* libFuzzer target for the safetensors parser: open the bytes as a file
 * image, then touch every tensor (all bytes, converted where possible) and
 * every metadata entry. Build and run with `make fuzz`. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  tide_st_t *st = NULL;
  tide_err_t err;
  if (tide_st_open_memory(data, (int64_t)size, "fuzz.safetensors", &st, &err) != 0) {
    if (err.msg[0] == '\0') abort(); /* every failure carries a message */
    return 0;
  }
  volatile uint32_t sink = 0;
  for (int64_t i = 0; i < tide_st_count(st); i++) {
    const char *name = tide_st_name(st, i);
    if (!name || tide_st_find(st, name) != i) abort();
    sink += (uint32_t)strlen(tide_st_dtype_name(st, i)) + (uint32_t)tide_st_file_offset(st, i);
    tide_tensor_t *t;
    if (tide_st_get(st, i, &t, &err) != 0) continue;
    const uint8_t *p = t->data;
    int64_t nb = tide_tensor_nbytes(t);
    for (int64_t k = 0; k < nb; k++) sink += p[k];
    int64_t n = tide_tensor_numel(t);
    if (n <= 4096) {
      float *f = malloc((size_t)(n ? n : 1) * sizeof *f);
      if (f && tide_tensor_to_f32(t, f, &err) == 0)
        for (int64_t k = 0; k < n; k++) sink += (uint32_t)(f[k] == f[k]);
      free(f);
    }
    tide_tensor_release(t);
  }
  for (int64_t i = 0; i < tide_st_meta_count(st); i++)
    sink += (uint32_t)strlen(tide_st_meta_key(st, i)) + (uint32_t)strlen(tide_st_meta_value(st, i));
  (void)sink;
  tide_st_close(st);
  return 0;
}
