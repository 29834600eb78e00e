/* error.h: status codes and the per-call error record.
 *
 * Every fallible libtide function returns 0 or a negative TIDE_E* code and,
 * when the caller passes a tide_err_t, fills it with the code and a message
 * naming the object and the problem. There is no global "last error". */
#ifndef TIDE_ERROR_H
#define TIDE_ERROR_H

#ifndef TIDE_FFI
#include <stdint.h>
#include <stddef.h>
#endif

enum {
  TIDE_OK = 0,
  TIDE_EINVAL = -1,    /* bad argument (shape, dtype, value) */
  TIDE_ENOMEM = -2,    /* allocation failed */
  TIDE_EIO = -3,       /* open/read/write/mmap failed */
  TIDE_EFORMAT = -4,   /* malformed file contents */
  TIDE_EDTYPE = -5,    /* unknown or unsupported dtype */
  TIDE_ESHAPE = -6,    /* shape mismatch */
  TIDE_ERANGE = -7,    /* index or offset out of range */
  TIDE_ENOTFOUND = -8, /* missing tensor, key or file */
  TIDE_EUNSUPPORTED = -9,
  TIDE_ESTATE = -10    /* object in the wrong state for this call */
};

typedef struct tide_err {
  int32_t code;   /* 0 or a TIDE_E* code */
  char msg[512];  /* NUL-terminated message, "" when code == 0 */
} tide_err_t;

/* Static description of a code ("invalid argument", ...). */
const char *tide_strerror(int code);

/* Fill err (may be NULL) and return code. printf-style message. */
int tide_err_set(tide_err_t *err, int code, const char *fmt, ...)
#ifndef TIDE_FFI
    __attribute__((format(printf, 3, 4)))
#endif
    ;
void tide_err_clear(tide_err_t *err);

/* Library version string, e.g. "0.1.0". */
const char *tide_version(void);

#endif
