#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

const char *tide_strerror(int code) {
  switch (code) {
  case TIDE_OK: return "ok";
  case TIDE_EINVAL: return "invalid argument";
  case TIDE_ENOMEM: return "out of memory";
  case TIDE_EIO: return "i/o error";
  case TIDE_EFORMAT: return "malformed file";
  case TIDE_EDTYPE: return "unsupported dtype";
  case TIDE_ESHAPE: return "shape mismatch";
  case TIDE_ERANGE: return "out of range";
  case TIDE_ENOTFOUND: return "not found";
  case TIDE_EUNSUPPORTED: return "unsupported";
  case TIDE_ESTATE: return "invalid state";
  default: return "unknown error";
  }
}

int tide_err_set(tide_err_t *err, int code, const char *fmt, ...) {
  if (err) {
    err->code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof err->msg, fmt, ap);
    va_end(ap);
  }
  return code;
}

void tide_err_clear(tide_err_t *err) {
  if (err) {
    err->code = 0;
    err->msg[0] = '\0';
  }
}

const char *tide_version(void) { return "0.1.0"; }
