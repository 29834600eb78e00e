/* ffi_layout.h: the C view of every struct shared with Lua, so a test can
 * compare ffi.sizeof/ffi.offsetof against what the compiler laid out. */
#ifndef TIDE_FFI_LAYOUT_H
#define TIDE_FFI_LAYOUT_H

#ifndef TIDE_FFI
#include <stdint.h>
#endif

typedef struct tide_layout_entry {
  const char *type;  /* "struct tide_tensor" */
  const char *field; /* field name, or "" for the struct's own size */
  int64_t value;     /* offsetof(type, field), or sizeof(type) when field is "" */
} tide_layout_entry_t;

/* Table of entries, terminated by an entry with type == NULL. */
const tide_layout_entry_t *tide_ffi_layout(void);

#endif
