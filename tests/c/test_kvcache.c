/* Tests of the paged KV cache: layouts and byte accounting, block tables
 * across block boundaries, reference counts, fork + copy on write,
 * truncation, and refusal of bad input without changing state. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvcache.h"
#include "pool.h"

static tide_kvcache_t *make_cache(int32_t n_blocks, int32_t block_size, int32_t dtype) {
  tide_kv_layout_t lo[2] = {{2, 8, 8, 0}, {1, 20, 0, 0}}; /* GQA-like, MLA-like */
  tide_kvcache_t *kv = NULL;
  tide_err_t err;
  assert_int_equal(tide_kvcache_new(2, lo, block_size, n_blocks, dtype, &kv, &err), 0);
  return kv;
}

typedef struct {
  tide_batch_t b;
  int32_t tok_seq[256];
  int32_t tok_pos[256];
  int32_t table[256];
} step_t;

static int step(tide_kvcache_t *kv, step_t *s, int32_t n_seq, const int32_t *seqs, const int32_t *n_new,
                tide_err_t *err) {
  return tide_kvcache_step(kv, n_seq, seqs, n_new, &s->b, s->tok_seq, s->tok_pos, 256, s->table, 256, err);
}

static void test_kvcache_layout_and_bytes(void **state) {
  (void)state;
  tide_kvcache_t *kv = make_cache(10, 16, TIDE_DTYPE_F32);
  tide_tensor_t *k0 = tide_kvcache_k(kv, 0), *v0 = tide_kvcache_v(kv, 0);
  tide_tensor_t *k1 = tide_kvcache_k(kv, 1), *v1 = tide_kvcache_v(kv, 1);
  assert_non_null(k0);
  assert_non_null(v0);
  assert_non_null(k1);
  assert_null(v1); /* MLA: V is read from K */
  assert_int_equal(k0->shape[0], 10);
  assert_int_equal(k0->shape[1], 16);
  assert_int_equal(k0->shape[2], 2);
  assert_int_equal(k0->shape[3], 8);
  assert_int_equal(k1->shape[2], 1);
  assert_int_equal(k1->shape[3], 20);
  /* bytes per token: layer 0 = 2 heads * (8 + 8) * 4, layer 1 = 20 * 4 */
  assert_int_equal(tide_kvcache_bytes_per_token(kv, 0), 2 * 16 * 4);
  assert_int_equal(tide_kvcache_bytes_per_token(kv, 1), 20 * 4);
  assert_int_equal(tide_kvcache_bytes_per_token(kv, -1), 2 * 16 * 4 + 80);
  assert_int_equal(tide_kvcache_bytes_per_token(kv, 2), -1);
  /* total = bytes per token * slots */
  assert_int_equal(tide_kvcache_nbytes(kv), tide_kvcache_bytes_per_token(kv, -1) * 10 * 16);
  assert_null(tide_kvcache_k(kv, 2));
  assert_null(tide_kvcache_k(kv, -1));
  tide_kvcache_free(kv);

  kv = make_cache(4, 8, TIDE_DTYPE_BF16);
  assert_int_equal(tide_kvcache_bytes_per_token(kv, 0), 2 * 16 * 2);
  assert_int_equal(tide_kvcache_k(kv, 0)->dtype, TIDE_DTYPE_BF16);
  assert_int_equal(tide_kvcache_nbytes(kv), tide_kvcache_bytes_per_token(kv, -1) * 4 * 8);
  tide_kvcache_free(kv);
}

static void test_kvcache_rejects_bad_config(void **state) {
  (void)state;
  tide_kvcache_t *kv = (tide_kvcache_t *)1;
  tide_err_t err;
  tide_kv_layout_t lo = {0, 8, 8, 0};
  assert_int_equal(tide_kvcache_new(1, &lo, 16, 4, TIDE_DTYPE_F32, &kv, &err), TIDE_EINVAL);
  assert_null(kv);
  assert_non_null(strstr(err.msg, "layout"));
  lo.n_kv_head = 1;
  assert_int_equal(tide_kvcache_new(1, &lo, 0, 4, TIDE_DTYPE_F32, &kv, &err), TIDE_EINVAL);
  assert_int_equal(tide_kvcache_new(1, &lo, 16, 0, TIDE_DTYPE_F32, &kv, &err), TIDE_EINVAL);
  assert_int_equal(tide_kvcache_new(0, &lo, 16, 4, TIDE_DTYPE_F32, &kv, &err), TIDE_EINVAL);
  assert_int_equal(tide_kvcache_new(1, &lo, 16, 4, TIDE_DTYPE_I32, &kv, &err), TIDE_EDTYPE);
  assert_int_equal(tide_kvcache_new(1, NULL, 16, 4, TIDE_DTYPE_F32, &kv, &err), TIDE_EINVAL);
}

static void test_kvcache_step_crosses_blocks(void **state) {
  (void)state;
  tide_kvcache_t *kv = make_cache(8, 4, TIDE_DTYPE_F32);
  tide_err_t err;
  int32_t a, b;
  assert_int_equal(tide_kvcache_seq_new(kv, &a, &err), 0);
  assert_int_equal(tide_kvcache_seq_new(kv, &b, &err), 0);
  assert_int_not_equal(a, b);
  step_t s;
  /* prefill 6 tokens of a and 3 of b in one ragged step */
  int32_t seqs[2] = {a, b}, n1[2] = {6, 3};
  assert_int_equal(step(kv, &s, 2, seqs, n1, &err), 0);
  assert_int_equal(s.b.n_tok, 9);
  assert_int_equal(s.b.n_seq, 2);
  assert_int_equal(s.b.block_size, 4);
  assert_int_equal(s.b.max_blocks, 2);
  for (int i = 0; i < 6; i++) {
    assert_int_equal(s.tok_seq[i], 0);
    assert_int_equal(s.tok_pos[i], i);
  }
  for (int i = 0; i < 3; i++) {
    assert_int_equal(s.tok_seq[6 + i], 1);
    assert_int_equal(s.tok_pos[6 + i], i);
  }
  assert_true(s.table[0] >= 0 && s.table[1] >= 0 && s.table[2] >= 0);
  assert_int_equal(s.table[3], -1); /* b has one block */
  /* distinct physical blocks */
  assert_int_not_equal(s.table[0], s.table[1]);
  assert_int_not_equal(s.table[0], s.table[2]);
  assert_int_not_equal(s.table[1], s.table[2]);
  assert_int_equal(tide_kvcache_free_blocks(kv), 5);
  assert_int_equal(tide_kvcache_seq_len(kv, a), 6);
  assert_int_equal(tide_kvcache_seq_len(kv, b), 3);
  /* decode: one token each; b's fills its first block, a's stays in block 2 */
  int32_t n2[2] = {1, 1};
  int32_t a_blk1 = s.table[1];
  assert_int_equal(step(kv, &s, 2, seqs, n2, &err), 0);
  assert_int_equal(s.b.n_tok, 2);
  assert_int_equal(s.tok_pos[0], 6);
  assert_int_equal(s.tok_pos[1], 3);
  assert_int_equal(s.table[1], a_blk1);
  assert_int_equal(tide_kvcache_free_blocks(kv), 5);
  /* b crosses into a second block */
  int32_t one[1] = {1};
  assert_int_equal(step(kv, &s, 1, &seqs[1], one, &err), 0);
  assert_int_equal(s.tok_pos[0], 4);
  assert_int_equal(s.b.max_blocks, 2);
  assert_true(s.table[1] >= 0);
  assert_int_equal(tide_kvcache_free_blocks(kv), 4);
  /* block table getter agrees */
  const int32_t *tab;
  int32_t nb;
  assert_int_equal(tide_kvcache_seq_table(kv, b, &tab, &nb, &err), 0);
  assert_int_equal(nb, 2);
  assert_int_equal(tab[1], s.table[1]);
  assert_int_equal(tide_kvcache_seq_free(kv, a, &err), 0);
  assert_int_equal(tide_kvcache_seq_free(kv, b, &err), 0);
  assert_int_equal(tide_kvcache_free_blocks(kv), 8);
  assert_int_equal(tide_kvcache_seq_count(kv), 0);
  tide_kvcache_free(kv);
}

static void test_kvcache_fork_copies_on_write(void **state) {
  (void)state;
  tide_kvcache_t *kv = make_cache(8, 4, TIDE_DTYPE_F32);
  tide_err_t err;
  int32_t a, c;
  assert_int_equal(tide_kvcache_seq_new(kv, &a, &err), 0);
  step_t s;
  int32_t six[1] = {6};
  assert_int_equal(step(kv, &s, 1, &a, six, &err), 0);
  int32_t blk0 = s.table[0], blk1 = s.table[1];
  /* mark the partially filled block's slots in every layer tensor */
  tide_tensor_t *k0 = tide_kvcache_k(kv, 0);
  float *d = (float *)((char *)k0->data + blk1 * k0->stride[0]);
  d[0] = 42.0f;
  assert_int_equal(tide_kvcache_seq_fork(kv, a, &c, &err), 0);
  assert_int_equal(tide_kvcache_seq_len(kv, c), 6);
  assert_int_equal(tide_kvcache_block_refs(kv, blk0), 2);
  assert_int_equal(tide_kvcache_block_refs(kv, blk1), 2);
  assert_int_equal(tide_kvcache_free_blocks(kv), 6);
  /* writing into c's shared partial block copies it first */
  int32_t one[1] = {1};
  assert_int_equal(step(kv, &s, 1, &c, one, &err), 0);
  assert_int_equal(s.table[0], blk0);        /* full block still shared */
  assert_int_not_equal(s.table[1], blk1);    /* partial block copied */
  assert_int_equal(tide_kvcache_block_refs(kv, blk1), 1);
  assert_int_equal(tide_kvcache_block_refs(kv, blk0), 2);
  float *dc = (float *)((char *)k0->data + s.table[1] * k0->stride[0]);
  assert_true(dc[0] == 42.0f);               /* contents came along */
  assert_int_equal(tide_kvcache_free_blocks(kv), 5);
  /* a writes its own block without copying now */
  assert_int_equal(step(kv, &s, 1, &a, one, &err), 0);
  assert_int_equal(s.table[1], blk1);
  assert_int_equal(tide_kvcache_free_blocks(kv), 5);
  assert_int_equal(tide_kvcache_seq_free(kv, a, &err), 0);
  assert_int_equal(tide_kvcache_block_refs(kv, blk0), 1);
  assert_int_equal(tide_kvcache_block_refs(kv, blk1), 0);
  assert_int_equal(tide_kvcache_seq_free(kv, c, &err), 0);
  assert_int_equal(tide_kvcache_free_blocks(kv), 8);
  tide_kvcache_free(kv);
}

static void test_kvcache_truncate_frees_blocks(void **state) {
  (void)state;
  tide_kvcache_t *kv = make_cache(8, 4, TIDE_DTYPE_F16);
  tide_err_t err;
  int32_t a;
  assert_int_equal(tide_kvcache_seq_new(kv, &a, &err), 0);
  step_t s;
  int32_t ten[1] = {10};
  assert_int_equal(step(kv, &s, 1, &a, ten, &err), 0);
  assert_int_equal(tide_kvcache_free_blocks(kv), 5);
  assert_int_equal(tide_kvcache_seq_truncate(kv, a, 5, &err), 0);
  assert_int_equal(tide_kvcache_seq_len(kv, a), 5);
  assert_int_equal(tide_kvcache_free_blocks(kv), 6);
  assert_int_equal(tide_kvcache_seq_truncate(kv, a, 7, &err), TIDE_ERANGE);
  int32_t two[1] = {2};
  assert_int_equal(step(kv, &s, 1, &a, two, &err), 0);
  assert_int_equal(s.tok_pos[0], 5);
  assert_int_equal(s.tok_pos[1], 6);
  assert_int_equal(tide_kvcache_seq_truncate(kv, a, 0, &err), 0);
  assert_int_equal(tide_kvcache_free_blocks(kv), 8);
  tide_kvcache_free(kv);
}

static void test_kvcache_step_refuses_without_change(void **state) {
  (void)state;
  tide_kvcache_t *kv = make_cache(3, 4, TIDE_DTYPE_F32);
  tide_err_t err;
  int32_t a, b;
  assert_int_equal(tide_kvcache_seq_new(kv, &a, &err), 0);
  assert_int_equal(tide_kvcache_seq_new(kv, &b, &err), 0);
  step_t s;
  int32_t seqs[2] = {a, b};
  int32_t big[2] = {8, 8}; /* needs 4 blocks, 3 exist */
  assert_int_equal(step(kv, &s, 2, seqs, big, &err), TIDE_ENOMEM);
  assert_non_null(strstr(err.msg, "out of blocks"));
  assert_int_equal(tide_kvcache_free_blocks(kv), 3);
  assert_int_equal(tide_kvcache_seq_len(kv, a), 0);
  int32_t bad[1] = {99};
  int32_t one[1] = {1};
  assert_int_equal(step(kv, &s, 1, bad, one, &err), TIDE_EINVAL);
  int32_t dup[2] = {a, a}, ones[2] = {1, 1};
  assert_int_equal(step(kv, &s, 2, dup, ones, &err), TIDE_EINVAL);
  int32_t neg[1] = {-1};
  assert_int_equal(step(kv, &s, 1, &a, neg, &err), TIDE_EINVAL);
  /* token capacity */
  int32_t n5[1] = {5};
  assert_int_equal(tide_kvcache_step(kv, 1, &a, n5, &s.b, s.tok_seq, s.tok_pos, 4, s.table, 16, &err), TIDE_ERANGE);
  assert_int_equal(tide_kvcache_seq_len(kv, a), 0);
  assert_int_equal(tide_kvcache_seq_free(kv, 99, &err), TIDE_EINVAL);
  assert_int_equal(tide_kvcache_seq_len(kv, 99), -1);
  assert_int_equal(tide_kvcache_seq_free(kv, a, &err), 0);
  assert_int_equal(tide_kvcache_seq_free(kv, a, &err), TIDE_EINVAL); /* twice */
  int32_t c;
  assert_int_equal(tide_kvcache_seq_fork(kv, a, &c, &err), TIDE_EINVAL);
  tide_kvcache_free(kv);
}

static void test_kvcache_many_sequences_reuse_ids(void **state) {
  (void)state;
  tide_kvcache_t *kv = make_cache(64, 2, TIDE_DTYPE_F32);
  tide_err_t err;
  int32_t ids[20];
  for (int i = 0; i < 20; i++) assert_int_equal(tide_kvcache_seq_new(kv, &ids[i], &err), 0);
  assert_int_equal(tide_kvcache_seq_count(kv), 20);
  step_t s;
  int32_t n[20];
  for (int i = 0; i < 20; i++) n[i] = 1 + i % 3;
  assert_int_equal(step(kv, &s, 20, ids, n, &err), 0);
  assert_int_equal(s.b.n_seq, 20);
  assert_int_equal(s.b.max_blocks, 2);
  assert_int_equal(tide_kvcache_seq_free(kv, ids[3], &err), 0);
  int32_t again;
  assert_int_equal(tide_kvcache_seq_new(kv, &again, &err), 0);
  assert_int_equal(again, ids[3]);
  assert_int_equal(tide_kvcache_seq_len(kv, again), 0);
  tide_kvcache_free(kv);
}

/* ---- quantized KV (q8_0, f8_e4m3) ---------------------------------------- */

/* q8_0 is GGML's block format: 34 bytes per 32 values (f16 scale + 32 int8),
 * rows must be whole blocks; f8_e4m3 is one byte per value. */
static void test_kvcache_quantized_dtypes_bytes(void **state) {
  (void)state;
  tide_err_t err;
  tide_kv_layout_t lo[2] = {{2, 64, 32, 0}, {1, 96, 0, 0}}; /* GQA, MLA latent (64 + 32 rope) */
  tide_kvcache_t *kv = NULL;
  assert_int_equal(tide_kvcache_new(2, lo, 16, 4, TIDE_DTYPE_Q8_0, &kv, &err), 0);
  assert_int_equal(tide_kvcache_k(kv, 0)->dtype, TIDE_DTYPE_Q8_0);
  assert_int_equal(tide_kvcache_bytes_per_token(kv, 0), 2 * (2 * 34 + 1 * 34));
  assert_int_equal(tide_kvcache_bytes_per_token(kv, 1), 3 * 34);
  assert_int_equal(tide_kvcache_nbytes(kv), tide_kvcache_bytes_per_token(kv, -1) * 4 * 16);
  tide_kvcache_free(kv);
  assert_int_equal(tide_kvcache_new(2, lo, 16, 4, TIDE_DTYPE_F8_E4M3, &kv, &err), 0);
  assert_int_equal(tide_kvcache_bytes_per_token(kv, -1), 2 * 96 + 96);
  tide_kvcache_free(kv);
  /* q8_0 rows that are not whole blocks (dsv3-tiny's 64 + 16 latent row) are refused */
  tide_kv_layout_t bad = {1, 80, 0, 0};
  kv = (tide_kvcache_t *)1;
  assert_int_equal(tide_kvcache_new(1, &bad, 16, 4, TIDE_DTYPE_Q8_0, &kv, &err), TIDE_EINVAL);
  assert_null(kv);
  assert_non_null(strstr(err.msg, "multiples of 32"));
  assert_int_equal(tide_kvcache_new(1, &bad, 16, 4, TIDE_DTYPE_Q4_0, &kv, &err), TIDE_EDTYPE);
}

/* One sequence stepped in chunks over a q8_0 cache (GQA layer + MLA latent
 * layer whose V is a block-aligned view of K) and an f32 cache: kv_store's
 * fast path writes the same bytes as the reference; attention's fast path
 * (rows dequantized, AVX2 dots) matches the scalar reference on the q8_0
 * cache to float rounding, and stays within the q8_0 rounding error of the
 * f32-cache attention (measured nmse 2.2e-5 at seed 5; bound 1e-4). */
static void test_kvcache_q8_0_store_and_attention(void **state) {
  (void)state;
  tide_err_t err;
  tide_pool_t *pool = NULL;
  assert_int_equal(tide_pool_new(2, &pool, &err), 0);
  tide_kv_layout_t lo[2] = {{2, 64, 32, 0}, {1, 96, 0, 0}};
  tide_kvcache_t *qa = NULL, *qb = NULL, *f = NULL;
  assert_int_equal(tide_kvcache_new(2, lo, 16, 8, TIDE_DTYPE_Q8_0, &qa, &err), 0);
  assert_int_equal(tide_kvcache_new(2, lo, 16, 8, TIDE_DTYPE_Q8_0, &qb, &err), 0);
  assert_int_equal(tide_kvcache_new(2, lo, 16, 8, TIDE_DTYPE_F32, &f, &err), 0);
  /* V of the MLA layer: the first 64 values (2 blocks) of each latent row */
  tide_tensor_t *vq[2], *vf;
  for (int i = 0; i < 2; i++) {
    tide_tensor_t *k = tide_kvcache_k(i ? qb : qa, 1);
    int64_t sh[4] = {8, 16, 1, 64}, st[4] = {k->stride[0], k->stride[1], k->stride[2], 34};
    assert_int_equal(tide_tensor_view(k, 0, 4, sh, st, &vq[i], &err), 0);
  }
  {
    tide_tensor_t *k = tide_kvcache_k(f, 1);
    assert_int_equal(tide_tensor_narrow(k, 3, 0, 64, &vf, &err), 0);
  }
  int32_t sa, sb, sf;
  assert_int_equal(tide_kvcache_seq_new(qa, &sa, &err), 0);
  assert_int_equal(tide_kvcache_seq_new(qb, &sb, &err), 0);
  assert_int_equal(tide_kvcache_seq_new(f, &sf, &err), 0);
  tu_rng_t rng = {5};
  const int32_t chunks[3] = {20, 13, 1};
  double worst_ref = 0.0, worst_f32 = 0.0;
  for (int c = 0; c < 3; c++) {
    step_t A, Bs, Fs;
    int32_t n = chunks[c];
    assert_int_equal(step(qa, &A, 1, &sa, &n, &err), 0);
    assert_int_equal(step(qb, &Bs, 1, &sb, &n, &err), 0);
    assert_int_equal(step(f, &Fs, 1, &sf, &n, &err), 0);
    for (int layer = 0; layer < 2; layer++) {
      int64_t nkv = layer ? 1 : 2, dk = layer ? 96 : 64, dv = layer ? 64 : 32, nh = layer ? 4 : 4;
      int64_t sk[3] = {n, nkv, dk}, sv[3] = {n, nkv, dv}, sq[3] = {n, nh, dk}, so[3] = {n, nh, dv};
      tide_tensor_t *ks = tu_rand_tensor(&rng, 3, sk, 1.0f), *q = tu_rand_tensor(&rng, 3, sq, 1.0f);
      tide_tensor_t *vs = layer ? NULL : tu_rand_tensor(&rng, 3, sv, 1.0f);
      assert_int_equal(tide_op_kv_store(pool, tide_kvcache_k(qa, layer), ks, &A.b, &err), 0);
      assert_int_equal(tide_ref_kv_store(tide_kvcache_k(qb, layer), ks, &Bs.b, &err), 0);
      assert_int_equal(tide_op_kv_store(pool, tide_kvcache_k(f, layer), ks, &Fs.b, &err), 0);
      if (vs) {
        assert_int_equal(tide_op_kv_store(pool, tide_kvcache_v(qa, layer), vs, &A.b, &err), 0);
        assert_int_equal(tide_ref_kv_store(tide_kvcache_v(qb, layer), vs, &Bs.b, &err), 0);
        assert_int_equal(tide_op_kv_store(pool, tide_kvcache_v(f, layer), vs, &Fs.b, &err), 0);
      }
      /* the same floats into the same slots: the same q8_0 bytes */
      assert_memory_equal(tide_kvcache_k(qa, layer)->data, tide_kvcache_k(qb, layer)->data,
                          (size_t)tide_tensor_nbytes(tide_kvcache_k(qa, layer)));
      tide_tensor_t *vqa = layer ? vq[0] : tide_kvcache_v(qa, layer), *vqb = layer ? vq[1] : tide_kvcache_v(qb, layer);
      tide_tensor_t *vff = layer ? vf : tide_kvcache_v(f, layer);
      tide_tensor_t *o = NULL, *r = NULL, *of = NULL;
      assert_int_equal(tide_tensor_new(TIDE_DTYPE_F32, 3, so, &o, &err), 0);
      assert_int_equal(tide_tensor_new(TIDE_DTYPE_F32, 3, so, &r, &err), 0);
      assert_int_equal(tide_tensor_new(TIDE_DTYPE_F32, 3, so, &of, &err), 0);
      float scale = 1.0f / sqrtf((float)dk);
      assert_int_equal(tide_op_attention(pool, o, q, tide_kvcache_k(qa, layer), vqa, &A.b, scale, &err), 0);
      assert_int_equal(tide_ref_attention(r, q, tide_kvcache_k(qb, layer), vqb, &Bs.b, scale, &err), 0);
      assert_int_equal(tide_op_attention(pool, of, q, tide_kvcache_k(f, layer), vff, &Fs.b, scale, &err), 0);
      double e_ref = tu_maxdiff(o, r), e_f32 = tu_nmse(o, of);
      if (e_ref > worst_ref) worst_ref = e_ref;
      if (e_f32 > worst_f32) worst_f32 = e_f32;
      tide_tensor_release(ks);
      tide_tensor_release(q);
      if (vs) tide_tensor_release(vs);
      tide_tensor_release(o);
      tide_tensor_release(r);
      tide_tensor_release(of);
    }
  }
  if (getenv("TIDE_KV_VERBOSE")) fprintf(stderr, "q8_0 attention: fast vs ref maxdiff %.3g, vs f32 cache nmse %.3g\n",
                                         worst_ref, worst_f32);
  assert_true(worst_ref < 1e-5);
  assert_true(worst_f32 < 1e-4 && worst_f32 > 0.0);
  tide_tensor_release(vq[0]);
  tide_tensor_release(vq[1]);
  tide_tensor_release(vf);
  tide_kvcache_free(qa);
  tide_kvcache_free(qb);
  tide_kvcache_free(f);
  tide_pool_free(pool);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_kvcache_layout_and_bytes),
      cmocka_unit_test(test_kvcache_rejects_bad_config),
      cmocka_unit_test(test_kvcache_step_crosses_blocks),
      cmocka_unit_test(test_kvcache_fork_copies_on_write),
      cmocka_unit_test(test_kvcache_truncate_frees_blocks),
      cmocka_unit_test(test_kvcache_step_refuses_without_change),
      cmocka_unit_test(test_kvcache_many_sequences_reuse_ids),
      cmocka_unit_test(test_kvcache_quantized_dtypes_bytes),
      cmocka_unit_test(test_kvcache_q8_0_store_and_attention),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
