/* ops.h: the compute ops the models are built from.
 *
 * Every op has two entry points with the same arguments:
 *   tide_op_<name>(pool, ...)   the fast path (threaded on pool; may use AVX2,
 *                               OpenBLAS); pool may be NULL (calling thread only)
 *   tide_ref_<name>(...)        the plain scalar C reference: single thread,
 *                               obvious loops; the oracle the tests compare to.
 * Ops validate dtypes and shapes and return 0 or a TIDE_E* code with err
 * filled; they never abort. Outputs are preallocated by the caller and must
 * not alias inputs unless the op says "in place allowed". Unless stated,
 * inputs may be strided views; outputs must be contiguous; float inputs may
 * be any float dtype and are computed in float32; outputs are f32 unless a
 * dtype is stated. Shapes are written outermost first. */
#ifndef TIDE_OPS_H
#define TIDE_OPS_H

#ifndef TIDE_FFI
#include <stdint.h>
#endif
#include "error.h"
#include "pool.h"
#include "tensor.h"

/* ---- matrix products ---------------------------------------------------- */

/* out (M, N) = a (M, K) @ b^T where b is (N, K)        when trans_b = 1 (nn.Linear: x @ W^T)
 * out (M, N) = a (M, K) @ b   where b is (K, N)        when trans_b = 0
 * a: f32/f16/bf16; b: any float dtype (f32 via OpenBLAS; others converted
 * row-panel by row-panel to f32, never whole; FP8 applies b's block scales).
 * out: f32 contiguous. */
int tide_op_matmul(tide_pool_t *pool, tide_tensor_t *out, const tide_tensor_t *a, const tide_tensor_t *b,
                   int32_t trans_b, tide_err_t *err);
int tide_ref_matmul(tide_tensor_t *out, const tide_tensor_t *a, const tide_tensor_t *b, int32_t trans_b,
                    tide_err_t *err);

/* Batched matmul over a leading group dimension (e.g. one product per head):
 * out[g] (M, N) = a[g] (M, K) @ b[g]^T (b[g] (N, K)) when trans_b = 1, or
 * a[g] @ b[g] (b[g] (K, N)) when trans_b = 0, for g in [0, G). All three are
 * 3-D with G groups; any strides in the two outer dimensions (views into
 * interleaved head layouts work), innermost contiguous. out: f32. Each group
 * runs the matmul above, so every weight format it takes works here. */
int tide_op_matmul_heads(tide_pool_t *pool, tide_tensor_t *out, const tide_tensor_t *a, const tide_tensor_t *b,
                         int32_t trans_b, tide_err_t *err);
int tide_ref_matmul_heads(tide_tensor_t *out, const tide_tensor_t *a, const tide_tensor_t *b, int32_t trans_b,
                          tide_err_t *err);

/* The routed experts of an MoE layer in one call. x (R, dim) holds the
 * dispatched rows in expert order: expert e owns rows [offsets[e],
 * offsets[e+1]) (offsets has n_expert + 1 entries, non-decreasing, ending at
 * R). For each expert with rows: g = x_e @ gate_e^T, u = x_e @ up_e^T,
 * g = silu(g) * u, y_e = g @ down_e^T. w holds 3 * n_expert weights, in the
 * order gate_0, up_0, down_0, gate_1, ...: gate/up (I, dim), down (dim, I),
 * any weight format matmul takes; an expert with no rows may have NULL
 * weights. g, u: (R, I) f32 scratch; y: (R, dim) f32. All contiguous. */
int tide_op_moe_experts(tide_pool_t *pool, tide_tensor_t *y, const tide_tensor_t *x, tide_tensor_t *g,
                        tide_tensor_t *u, const int32_t *offsets, int32_t n_expert, const tide_tensor_t *const *w,
                        tide_err_t *err);
int tide_ref_moe_experts(tide_tensor_t *y, const tide_tensor_t *x, tide_tensor_t *g, tide_tensor_t *u,
                         const int32_t *offsets, int32_t n_expert, const tide_tensor_t *const *w, tide_err_t *err);

/* ---- element-wise ------------------------------------------------------- */

/* out = a + b, out = a * b. b has a's shape, or (a's last dim) and broadcasts
 * over rows, or a single element. In place allowed (out == a). */
int tide_op_add(tide_pool_t *pool, tide_tensor_t *out, const tide_tensor_t *a, const tide_tensor_t *b, tide_err_t *err);
int tide_ref_add(tide_tensor_t *out, const tide_tensor_t *a, const tide_tensor_t *b, tide_err_t *err);
int tide_op_mul(tide_pool_t *pool, tide_tensor_t *out, const tide_tensor_t *a, const tide_tensor_t *b, tide_err_t *err);
int tide_ref_mul(tide_tensor_t *out, const tide_tensor_t *a, const tide_tensor_t *b, tide_err_t *err);
/* out = a * s. In place allowed. */
int tide_op_scale(tide_pool_t *pool, tide_tensor_t *out, const tide_tensor_t *a, float s, tide_err_t *err);
int tide_ref_scale(tide_tensor_t *out, const tide_tensor_t *a, float s, tide_err_t *err);
/* out = silu(x) = x * sigmoid(x); out = sigmoid(x). In place allowed. */
int tide_op_silu(tide_pool_t *pool, tide_tensor_t *out, const tide_tensor_t *x, tide_err_t *err);
int tide_ref_silu(tide_tensor_t *out, const tide_tensor_t *x, tide_err_t *err);
int tide_op_sigmoid(tide_pool_t *pool, tide_tensor_t *out, const tide_tensor_t *x, tide_err_t *err);
int tide_ref_sigmoid(tide_tensor_t *out, const tide_tensor_t *x, tide_err_t *err);
/* out (M, F) = silu(gate (M, F)) * up (M, F). In place allowed (out == gate). */
int tide_op_swiglu(tide_pool_t *pool, tide_tensor_t *out, const tide_tensor_t *gate, const tide_tensor_t *up,
                   tide_err_t *err);
int tide_ref_swiglu(tide_tensor_t *out, const tide_tensor_t *gate, const tide_tensor_t *up, tide_err_t *err);
/* out = x converted to out's dtype (any dtype with conversions; strides and
 * block scales honoured). Shapes must match in element count per row. */
int tide_op_convert(tide_pool_t *pool, tide_tensor_t *out, const tide_tensor_t *x, tide_err_t *err);
int tide_ref_convert(tide_tensor_t *out, const tide_tensor_t *x, tide_err_t *err);

/* ---- normalization and softmax ------------------------------------------ */

/* out (M, N) = x / sqrt(mean(x^2) + eps) * w (N). In place allowed. */
int tide_op_rmsnorm(tide_pool_t *pool, tide_tensor_t *out, const tide_tensor_t *x, const tide_tensor_t *w, float eps,
                    tide_err_t *err);
int tide_ref_rmsnorm(tide_tensor_t *out, const tide_tensor_t *x, const tide_tensor_t *w, float eps, tide_err_t *err);
/* Row-wise softmax of x * scale over the last dim. In place allowed. */
int tide_op_softmax(tide_pool_t *pool, tide_tensor_t *out, const tide_tensor_t *x, float scale, tide_err_t *err);
int tide_ref_softmax(tide_tensor_t *out, const tide_tensor_t *x, float scale, tide_err_t *err);

/* ---- rotary position embedding ------------------------------------------ */

typedef enum tide_rope_scaling {
  TIDE_ROPE_NONE = 0,
  TIDE_ROPE_LINEAR = 1, /* positions divided by factor */
  TIDE_ROPE_LLAMA3 = 2, /* llama 3.1 frequency-dependent scaling */
  TIDE_ROPE_YARN = 3    /* YaRN: blended frequencies + attention factor on cos/sin */
} tide_rope_scaling_t;

typedef struct tide_rope {
  int32_t dim;              /* rotated dims (even), applied to the first `dim` of each head */
  int32_t interleaved;      /* 1: pairs (2i, 2i+1) (GPT-J / DeepSeek rope_interleave);
                               0: pairs (i, i + dim/2) (NeoX / HF Llama rotate_half) */
  int32_t scaling;          /* tide_rope_scaling_t */
  int32_t orig_max_pos;     /* original_max_position_embeddings (llama3, yarn) */
  float theta;              /* base, e.g. 10000 */
  float factor;             /* scaling factor (linear, llama3, yarn) */
  float beta_fast;          /* yarn (default 32) */
  float beta_slow;          /* yarn (default 1) */
  float low_freq_factor;    /* llama3 (default 1) */
  float high_freq_factor;   /* llama3 (default 4) */
  float attn_factor;        /* multiplies cos and sin (yarn mscale ratio); 1 when unused */
} tide_rope_t;

/* inv_freq (dim/2) for cfg, as the reference implementations compute it. */
int tide_rope_inv_freq(const tide_rope_t *cfg, float *inv_freq, tide_err_t *err);
/* Rotate x (n_tok, n_head, head_dim) in place, token t at position pos[t] (i32, n_tok). */
int tide_op_rope(tide_pool_t *pool, tide_tensor_t *x, const tide_tensor_t *pos, const tide_rope_t *cfg, tide_err_t *err);
int tide_ref_rope(tide_tensor_t *x, const tide_tensor_t *pos, const tide_rope_t *cfg, tide_err_t *err);

/* ---- indexing ----------------------------------------------------------- */

/* out (n, D) f32 = table (V, D)[ids (n) i32]; table any float dtype. An id
 * outside [0, V) is an error naming the id. */
int tide_op_get_rows(tide_pool_t *pool, tide_tensor_t *out, const tide_tensor_t *table, const tide_tensor_t *ids,
                     tide_err_t *err);
int tide_ref_get_rows(tide_tensor_t *out, const tide_tensor_t *table, const tide_tensor_t *ids, tide_err_t *err);
/* out (N, D) += w[i] * src (M, D) row i, into row idx[i] (idx (M) i32); w (M) f32 or NULL for 1.
 * Deterministic: rows are accumulated in increasing i. */
int tide_op_scatter_add(tide_pool_t *pool, tide_tensor_t *out, const tide_tensor_t *src, const tide_tensor_t *idx,
                        const tide_tensor_t *w, tide_err_t *err);
int tide_ref_scatter_add(tide_tensor_t *out, const tide_tensor_t *src, const tide_tensor_t *idx, const tide_tensor_t *w,
                         tide_err_t *err);
/* Per row of x (M, N): the k largest values (M, k) f32 and their indices (M, k) i32,
 * sorted descending; ties go to the lower index. */
int tide_op_topk(tide_pool_t *pool, tide_tensor_t *vals, tide_tensor_t *idx, const tide_tensor_t *x, int32_t k,
                 tide_err_t *err);
int tide_ref_topk(tide_tensor_t *vals, tide_tensor_t *idx, const tide_tensor_t *x, int32_t k, tide_err_t *err);

/* ---- attention over a paged KV cache ------------------------------------ */

/* The ragged batch of one forward step: tokens of many sequences, flattened. */
typedef struct tide_batch {
  int32_t n_tok;              /* tokens in this step */
  int32_t n_seq;              /* sequences in this step */
  int32_t max_blocks;         /* row length of block_table */
  int32_t block_size;         /* tokens per KV block */
  const int32_t *tok_seq;     /* (n_tok) sequence index of each token, in [0, n_seq) */
  const int32_t *tok_pos;     /* (n_tok) position of each token in its sequence */
  const int32_t *block_table; /* (n_seq, max_blocks) physical block of each logical block */
} tide_batch_t;

/* Store rows src (n_tok, n_kv_head, d) into cache (n_blocks, block_size, n_kv_head, d)
 * at each token's (sequence, position) slot; converts to the cache dtype. */
int tide_op_kv_store(tide_pool_t *pool, tide_tensor_t *cache, const tide_tensor_t *src, const tide_batch_t *batch,
                     tide_err_t *err);
int tide_ref_kv_store(tide_tensor_t *cache, const tide_tensor_t *src, const tide_batch_t *batch, tide_err_t *err);

/* Causal attention: token t of sequence s at position p attends to cache
 * positions 0..p of s. q (n_tok, n_head, dk); k_cache (n_blocks, block_size,
 * n_kv_head, dk); v_cache (n_blocks, block_size, n_kv_head, dv) (may be a view
 * of k_cache: MLA's latent cache); n_head a multiple of n_kv_head (GQA/MQA);
 * out (n_tok, n_head, dv) f32. Softmax of q.k * scale in float32. */
int tide_op_attention(tide_pool_t *pool, tide_tensor_t *out, const tide_tensor_t *q, const tide_tensor_t *k_cache,
                      const tide_tensor_t *v_cache, const tide_batch_t *batch, float scale, tide_err_t *err);
int tide_ref_attention(tide_tensor_t *out, const tide_tensor_t *q, const tide_tensor_t *k_cache,
                       const tide_tensor_t *v_cache, const tide_batch_t *batch, float scale, tide_err_t *err);


/* ---- llama.cpp's arithmetic (kernels/ggml_order.c) ----------------------- */

/* The ops above with each sum and rounding done in the order of the x86
 * build of llama.cpp's CPU backend, in portable scalar C (numerics = "ggml"
 * in the Lua API): for comparing Tide and llama.cpp bit for bit. Same
 * arguments and checks as their counterparts. matmul: trans_b = 1; weight
 * dtypes tide_ggml_matmul_supports() names, others go to tide_op_matmul.
 * rope: scaling NONE, LINEAR, YARN (LLAMA3 goes to tide_op_rope). attention: f32 caches;
 * batch->n_tok >= 2 takes llama.cpp's prompt-batch order for P.V. */
int tide_ggml_matmul_supports(int32_t dtype);
int tide_op_matmul_ggml(tide_pool_t *pool, tide_tensor_t *out, const tide_tensor_t *a, const tide_tensor_t *b,
                        tide_err_t *err);
int tide_op_rope_ggml(tide_pool_t *pool, tide_tensor_t *x, const tide_tensor_t *pos, const tide_rope_t *cfg,
                      tide_err_t *err);
int tide_op_swiglu_ggml(tide_pool_t *pool, tide_tensor_t *out, const tide_tensor_t *gate, const tide_tensor_t *up,
                        tide_err_t *err);
int tide_op_attention_ggml(tide_pool_t *pool, tide_tensor_t *out, const tide_tensor_t *q,
                           const tide_tensor_t *k_cache, const tide_tensor_t *v_cache, const tide_batch_t *batch,
                           float scale, tide_err_t *err);
/* The scalar pieces: ggml's f32 dot of n values; its 16-lane tile dot (n a
 * multiple of 16); its vector exp. */
float tide_ggml_dot_f32(const float *x, const float *y, int64_t n);
float tide_ggml_dot_f32_tile(const float *x, const float *y, int64_t n);
float tide_ggml_expf(float x);

#endif
