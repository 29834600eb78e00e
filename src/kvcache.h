/* kvcache.h: the paged KV cache. Memory is cut into fixed-size blocks of
 * block_size token slots; every layer has its own K (and V) tensor indexed
 * by the same physical block ids, so one block table per sequence serves all
 * layers. Blocks are reference counted: a forked sequence shares its
 * parent's blocks, and a shared block is copied before it is written
 * (copy on write). The layout of a layer is chosen by the model:
 *   Llama:  n_kv_head K heads of head_dim and as many V heads,
 *   MLA:    one latent row of kv_lora_rank + qk_rope_head_dim (v_dim = 0:
 *           attention reads V as a view of the first kv_lora_rank of K).
 * The cache owns no policy: who gets blocks and when is decided in Lua.
 *
 * KV dtype (one for all layers): f32, bf16, f16, f8_e4m3 (no scale: values
 * must stay within e4m3's range, +-448, which RMS-normalized MLA latents and
 * attention K/V of the shipped models do), or q8_0 (GGML's block layout: per
 * 32 values an f16 scale and 32 int8, 34 bytes; k_dim and v_dim must be
 * multiples of 32). Attention dequantizes q8_0 rows as it reads them. */
#ifndef TIDE_KVCACHE_H
#define TIDE_KVCACHE_H

#ifndef TIDE_FFI
#include <stdint.h>
#endif
#include "error.h"
#include "ops.h"
#include "tensor.h"

typedef struct tide_kv_layout {
  int32_t n_kv_head; /* heads stored per token slot (1 for MLA's latent) */
  int32_t k_dim;     /* elements of one K head row (MLA: kv_lora_rank + qk_rope_head_dim) */
  int32_t v_dim;     /* elements of one V head row; 0: no V tensor (MLA reads V from K) */
  int32_t pad_;
} tide_kv_layout_t;

typedef struct tide_kvcache tide_kvcache_t;

/* n_layer layouts; n_blocks blocks of block_size slots; dtype f32, bf16, f16, f8_e4m3 or q8_0. */
int tide_kvcache_new(int32_t n_layer, const tide_kv_layout_t *layouts, int32_t block_size, int32_t n_blocks,
                     int32_t dtype, tide_kvcache_t **out, tide_err_t *err);
void tide_kvcache_free(tide_kvcache_t *kv);

int32_t tide_kvcache_n_layer(const tide_kvcache_t *kv);
int32_t tide_kvcache_block_size(const tide_kvcache_t *kv);
int32_t tide_kvcache_n_blocks(const tide_kvcache_t *kv);
int32_t tide_kvcache_free_blocks(const tide_kvcache_t *kv);
int32_t tide_kvcache_dtype(const tide_kvcache_t *kv);
/* Reference count of a physical block (0 when free), or -1 when out of range. */
int32_t tide_kvcache_block_refs(const tide_kvcache_t *kv, int32_t block);

/* Borrowed layer tensors: K (n_blocks, block_size, n_kv_head, k_dim) and
 * V (n_blocks, block_size, n_kv_head, v_dim); V is NULL when v_dim == 0.
 * NULL when layer is out of range. */
tide_tensor_t *tide_kvcache_k(tide_kvcache_t *kv, int32_t layer);
tide_tensor_t *tide_kvcache_v(tide_kvcache_t *kv, int32_t layer);

/* Bytes one token takes in a layer (K and V rows of every head, whole q8_0 blocks with their scales), or summed
 * over all layers when layer < 0; -1 when layer >= n_layer. */
int64_t tide_kvcache_bytes_per_token(const tide_kvcache_t *kv, int32_t layer);
/* Bytes of all layer tensors. */
int64_t tide_kvcache_nbytes(const tide_kvcache_t *kv);

/* ---- sequences ---------------------------------------------------------- */

/* A new empty sequence; its id goes to *seq. */
int tide_kvcache_seq_new(tide_kvcache_t *kv, int32_t *seq, tide_err_t *err);
/* A new sequence sharing all of src's blocks and length (prefix sharing). */
int tide_kvcache_seq_fork(tide_kvcache_t *kv, int32_t src, int32_t *dst, tide_err_t *err);
/* Release the sequence and its references to blocks. */
int tide_kvcache_seq_free(tide_kvcache_t *kv, int32_t seq, tide_err_t *err);
/* Tokens stored for seq, or -1 when seq is not a live sequence. */
int32_t tide_kvcache_seq_len(const tide_kvcache_t *kv, int32_t seq);
/* Forget tokens from position len on (len <= current length); frees blocks past it. */
int tide_kvcache_seq_truncate(tide_kvcache_t *kv, int32_t seq, int32_t len, tide_err_t *err);
/* The sequence's block table: *n blocks at *table (valid until the next change). */
int tide_kvcache_seq_table(const tide_kvcache_t *kv, int32_t seq, const int32_t **table, int32_t *n,
                           tide_err_t *err);
/* Live sequences. */
int32_t tide_kvcache_seq_count(const tide_kvcache_t *kv);

/* ---- one forward step --------------------------------------------------- */

/* Plan a step that appends n_new[i] tokens to sequence seqs[i] (i < n_seq):
 * reserve blocks (copying shared blocks that will be written), fill
 * tok_seq/tok_pos (sum(n_new) entries, sequence i's tokens contiguous and in
 * order, positions continuing each sequence) and block_table (n_seq rows of
 * max_blocks entries, unused entries -1), describe them in *batch and advance
 * each sequence's length. cap_tok and cap_table are the capacities of the
 * arrays. On failure (out of blocks, bad sequence, capacity) nothing changes. */
int tide_kvcache_step(tide_kvcache_t *kv, int32_t n_seq, const int32_t *seqs, const int32_t *n_new,
                      tide_batch_t *batch, int32_t *tok_seq, int32_t *tok_pos, int32_t cap_tok, int32_t *block_table,
                      int32_t cap_table, tide_err_t *err);

/* ---- prefix caching and views (engine) ----------------------------------- */

/* Take (+1) or drop (-1) a reference to a block that is in use (a prefix
 * cache holds its blocks this way); a block whose count falls to 0 is freed. */
int tide_kvcache_block_ref(tide_kvcache_t *kv, int32_t block, tide_err_t *err);
int tide_kvcache_block_unref(tide_kvcache_t *kv, int32_t block, tide_err_t *err);
/* Give the empty sequence seq the n blocks (each referenced once more) and
 * length len (0 < len <= n * block_size, len > (n - 1) * block_size). A later
 * write into a shared partial block copies it first. */
int tide_kvcache_seq_adopt(tide_kvcache_t *kv, int32_t seq, const int32_t *blocks, int32_t n, int32_t len,
                           tide_err_t *err);
/* Describe, without changing anything, a batch over tokens already stored:
 * for sequence seqs[i], positions start[i] .. start[i] + n[i] - 1 (all below
 * its length). Arrays as in tide_kvcache_step. */
int tide_kvcache_view(const tide_kvcache_t *kv, int32_t n_seq, const int32_t *seqs, const int32_t *start,
                      const int32_t *n, tide_batch_t *batch, int32_t *tok_seq, int32_t *tok_pos, int32_t cap_tok,
                      int32_t *block_table, int32_t cap_table, tide_err_t *err);

#endif
