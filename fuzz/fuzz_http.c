/* fuzz_http: the HTTP/1.1 request parser of the server (src/server.c) on
 * arbitrary bytes, fed in pieces whose sizes come from the input itself, with
 * keep-alive resets after each complete request. */
#include <stdint.h>
#include <string.h>

#include "server.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  tide_http_req_t *h = NULL;
  if (tide_http_req_new(4096, 8192, &h, NULL)) return 0;
  size_t off = 0;
  size_t step = size ? (size_t)(data[0] % 17) + 1 : 1;
  while (off < size) {
    size_t n = size - off < step ? size - off : step;
    size_t used = 0;
    int rc = tide_http_req_feed(h, (const char *)data + off, n, &used);
    if (used > n) __builtin_trap();
    if (rc == 1) {
      int64_t bl = 0;
      const char *b = tide_http_req_body(h, &bl);
      if (bl < 0 || bl > 8192 || strlen(tide_http_req_path(h)) > 4096) __builtin_trap();
      (void)b;
      (void)tide_http_auth_ok(tide_http_req_auth(h), "key");
      (void)tide_http_req_keep_alive(h);
      tide_http_req_reset(h);
      off += used;
      continue;
    }
    if (rc != 0) break;
    off += n;
  }
  tide_http_req_free(h);
  return 0;
}
