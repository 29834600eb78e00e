#include "ffi_layout.h"

#include <stddef.h>

#include "dtype.h"
#include "error.h"
#include "ops.h"
#include "tensor.h"
#include "kvcache.h"
#include "sampler.h"
#include "comm.h"

#define SIZE(T) {#T, "", (int64_t)sizeof(T)}
#define FIELD(T, f) {#T, #f, (int64_t)offsetof(T, f)}

/* Every struct declared in the FFI headers appears here with each field;
 * tests/lua/ffi_test.lua checks the list is complete against the cdef. */
static const tide_layout_entry_t layout[] = {
    SIZE(struct tide_err),
    FIELD(struct tide_err, code),
    FIELD(struct tide_err, msg),
    SIZE(struct tide_dtype_traits),
    FIELD(struct tide_dtype_traits, name),
    FIELD(struct tide_dtype_traits, block_size),
    FIELD(struct tide_dtype_traits, block_bytes),
    FIELD(struct tide_dtype_traits, is_float),
    FIELD(struct tide_dtype_traits, to_float),
    FIELD(struct tide_dtype_traits, from_float),
    SIZE(struct tide_storage),
    FIELD(struct tide_storage, data),
    FIELD(struct tide_storage, nbytes),
    FIELD(struct tide_storage, kind),
    FIELD(struct tide_storage, readonly),
    FIELD(struct tide_storage, refcount),
    FIELD(struct tide_storage, pad_),
    FIELD(struct tide_storage, map_base),
    FIELD(struct tide_storage, map_len),
    FIELD(struct tide_storage, owner),
    SIZE(struct tide_tensor),
    FIELD(struct tide_tensor, data),
    FIELD(struct tide_tensor, storage),
    FIELD(struct tide_tensor, dtype),
    FIELD(struct tide_tensor, ndim),
    FIELD(struct tide_tensor, shape),
    FIELD(struct tide_tensor, stride),
    FIELD(struct tide_tensor, refcount),
    FIELD(struct tide_tensor, flags),
    FIELD(struct tide_tensor, scale),
    FIELD(struct tide_tensor, scale_block),
    SIZE(struct tide_rope),
    FIELD(struct tide_rope, dim),
    FIELD(struct tide_rope, interleaved),
    FIELD(struct tide_rope, scaling),
    FIELD(struct tide_rope, orig_max_pos),
    FIELD(struct tide_rope, theta),
    FIELD(struct tide_rope, factor),
    FIELD(struct tide_rope, beta_fast),
    FIELD(struct tide_rope, beta_slow),
    FIELD(struct tide_rope, low_freq_factor),
    FIELD(struct tide_rope, high_freq_factor),
    FIELD(struct tide_rope, attn_factor),
    SIZE(struct tide_batch),
    FIELD(struct tide_batch, n_tok),
    FIELD(struct tide_batch, n_seq),
    FIELD(struct tide_batch, max_blocks),
    FIELD(struct tide_batch, block_size),
    FIELD(struct tide_batch, tok_seq),
    FIELD(struct tide_batch, tok_pos),
    FIELD(struct tide_batch, block_table),
    SIZE(struct tide_layout_entry),
    FIELD(struct tide_layout_entry, type),
    FIELD(struct tide_layout_entry, field),
    FIELD(struct tide_layout_entry, value),
    SIZE(struct tide_kv_layout),
    FIELD(struct tide_kv_layout, n_kv_head),
    FIELD(struct tide_kv_layout, k_dim),
    FIELD(struct tide_kv_layout, v_dim),
    FIELD(struct tide_kv_layout, pad_),
    SIZE(struct tide_sampler_params),
    FIELD(struct tide_sampler_params, temperature),
    FIELD(struct tide_sampler_params, top_k),
    FIELD(struct tide_sampler_params, top_p),
    FIELD(struct tide_sampler_params, min_p),
    FIELD(struct tide_sampler_params, repetition_penalty),
    FIELD(struct tide_sampler_params, presence_penalty),
    FIELD(struct tide_sampler_params, frequency_penalty),
    FIELD(struct tide_sampler_params, penalty_last_n),
    FIELD(struct tide_sampler_params, seed),
    SIZE(struct tide_comm_stats),
    FIELD(struct tide_comm_stats, calls),
    FIELD(struct tide_comm_stats, bytes),
    FIELD(struct tide_comm_stats, ns),
    FIELD(struct tide_comm_stats, span_ns),
    FIELD(struct tide_comm_stats, cpu_ns),
    {NULL, NULL, 0},
};

const tide_layout_entry_t *tide_ffi_layout(void) { return layout; }
