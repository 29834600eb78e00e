/* ffi.h: the headers whose declarations LuaJIT sees. scripts/gen_cdef.sh
 * runs the preprocessor over this file with TIDE_FFI defined and writes
 * lua/tide/cdef.lua; nothing is declared twice by hand. */
#include "error.h"
#include "dtype.h"
#include "tensor.h"
#include "pool.h"
#include "ops.h"
#include "safetensors.h"
#include "gguf.h"
#include "repl.h"
#include "ffi_layout.h"
#include "kvcache.h"
#include "sampler.h"
#include "bpe.h"
#include "comm.h"
#include "server.h"
#include "probe.h"
