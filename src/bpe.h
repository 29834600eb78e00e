/* bpe.h: the byte-pair-encoding merge loop of the tokenizer (tide.tokenizer).
 *
 * A tide_bpe_t holds a vocabulary (token bytes -> id) and the merge table
 * ((left id, right id) -> (rank, merged id)), both in open-addressing hash
 * maps. tide_bpe_encode_word runs the merges on one pre-tokenized word with
 * a binary heap (lowest rank first, leftmost first on ties), the order the
 * Hugging Face tokenizers library uses; tide_bpe_encode_words encodes many
 * words per call through a bounded word cache.
 *
 * Symbols of a word start as single bytes (byte-level models, whose vocab
 * the caller has mapped back to raw bytes) or single UTF-8 characters, with
 * byte fallback (<0xXX> tokens) or an unknown token for characters that are
 * not in the vocabulary. An object is not safe for concurrent calls (it
 * keeps scratch buffers); two objects are independent. */
#ifndef TIDE_BPE_H
#define TIDE_BPE_H

#ifndef TIDE_FFI
#include <stddef.h>
#include <stdint.h>
#endif
#include "error.h"

typedef struct tide_bpe tide_bpe_t;

enum {
  TIDE_BPE_BYTE_LEVEL = 1,    /* initial symbols are bytes, not UTF-8 characters */
  TIDE_BPE_BYTE_FALLBACK = 2, /* unknown characters become <0xXX> byte tokens */
  TIDE_BPE_IGNORE_MERGES = 4, /* a word that is a whole token is emitted as is */
  TIDE_BPE_FUSE_UNK = 8       /* consecutive unknown characters give one unk id */
};

int tide_bpe_new(int32_t flags, int32_t unk_id, tide_bpe_t **out, tide_err_t *err);
void tide_bpe_release(tide_bpe_t *b);

/* Add a token (raw bytes) with its id. Ids need not be dense; the last
 * add of the same bytes wins. */
int tide_bpe_add_token(tide_bpe_t *b, const char *tok, size_t len, int32_t id, tide_err_t *err);
/* Id of a token, or -1. */
int32_t tide_bpe_token_id(const tide_bpe_t *b, const char *tok, size_t len);
/* Add a merge: left + right -> merged, with rank (lower merges first). A
 * pair added twice keeps its first (lowest) rank. */
int tide_bpe_add_merge(tide_bpe_t *b, int32_t left, int32_t right, int32_t merged, int32_t rank,
                       tide_err_t *err);
/* Add merges in bulk: (n, 3) int32 rows {left, right, merged}; rank = row index + rank0. */
int tide_bpe_add_merges(tide_bpe_t *b, const int32_t *rows, int32_t n, int32_t rank0, tide_err_t *err);

/* Encode one word (len bytes). Writes at most cap ids to out and the count
 * to *n_out; if more than cap are needed, returns TIDE_ERANGE with *n_out
 * set to the number needed (call again with a larger buffer). */
int tide_bpe_encode_word(tide_bpe_t *b, const char *word, size_t len, int32_t *out, size_t cap,
                         size_t *n_out, tide_err_t *err);

/* Encode the words of one pre-tokenized text: word i is the bytes
 * [bounds[i], bounds[i+1]) of text (0-based, non-decreasing, bounds[n] <= len),
 * for i in [0, n). Each word goes through a word cache kept in the object
 * (bounded; cleared when full), then the merge loop. Ids are appended to out
 * (cap of them at most; len is always enough, as a word never gives more ids
 * than bytes); *n_out is the count written. */
int tide_bpe_encode_words(tide_bpe_t *b, const char *text, size_t len, const int32_t *bounds, int32_t n,
                          int32_t *out, size_t cap, size_t *n_out, tide_err_t *err);
/* Drop every cached word. */
void tide_bpe_cache_clear(tide_bpe_t *b);
/* Number of words in the cache. */
int64_t tide_bpe_cache_size(const tide_bpe_t *b);

/* Unicode helpers for the normalizers (utf8proc): form 0 NFC, 1 NFD,
 * 2 NFKC, 3 NFKD, 4 lowercase. *out is malloc'ed; free it with
 * tide_bpe_free. Invalid UTF-8 gives TIDE_EINVAL. */
int tide_bpe_normalize(const char *s, size_t len, int32_t form, char **out, size_t *out_len, tide_err_t *err);
void tide_bpe_free(void *p);

#endif
