/* ggml_logits.c: llama.cpp's greedy tokens and top logits for fixture prompts
 * (tests/fixtures/ggml_numerics.json, made by gen_ggml_fixture.lua).
 *
 * Links against libllama / libggml from the npm package @node-llama-cpp/linux-x64
 * (the prebuilt CPU llama.cpp) and needs llama.h / ggml*.h of the same
 * llama.cpp release (node-llama-cpp ships its source as
 * node_modules/node-llama-cpp/llama/gitRelease.bundle: `git clone` it).
 *
 *   L=tests/node-llama/node_modules/@node-llama-cpp/linux-x64/bins/linux-x64
 *   cc -O2 -o /tmp/ggml_logits tests/node-llama/ggml_logits.c -I$SRC/include -I$SRC/ggml/include \
 *      $L/libllama.v*.so $L/libggml.v*.so $L/libggml-base.so -Wl,-rpath,$L
 *   /tmp/ggml_logits $L MODEL.gguf N_NEW TOPK "ids;ids;..."
 *
 * llama.cpp runs as Tide's numerics = "ggml" reproduces it: one thread, F32
 * KV cache, flash attention off, each prompt one batch then one token per
 * step. Prints one JSON line per prompt: {"tokens": [...], "top": [[[id,
 * logit], ...] per step]} with logits printed to 9 significant digits (exact
 * for float32). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ggml-backend.h"
#include "llama.h"

int main(int argc, char **argv) {
  if (argc < 6) {
    fprintf(stderr, "usage: %s BACKEND_DIR MODEL.gguf N_NEW TOPK 'ids;ids;...'\n", argv[0]);
    return 2;
  }
  ggml_backend_load_all_from_path(argv[1]);
  llama_backend_init();
  struct llama_model_params mp = llama_model_default_params();
  struct llama_model *m = llama_model_load_from_file(argv[2], mp);
  if (!m) return 1;
  int nnew = atoi(argv[3]), topk = atoi(argv[4]);
  int nv = llama_vocab_n_tokens(llama_model_get_vocab(m));
  char *prompts = strdup(argv[5]), *save = NULL;
  for (char *p = strtok_r(prompts, ";", &save); p; p = strtok_r(NULL, ";", &save)) {
    int ids[1024], n = 0;
    char *s2 = NULL, *q = strdup(p);
    for (char *t = strtok_r(q, ",", &s2); t && n < 1024; t = strtok_r(NULL, ",", &s2)) ids[n++] = atoi(t);
    free(q);
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t)(n + nnew + 8 > 64 ? n + nnew + 8 : 64);
    cp.n_batch = cp.n_ubatch = 1024;
    cp.n_threads = cp.n_threads_batch = 1;
    cp.type_k = cp.type_v = GGML_TYPE_F32;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_DISABLED;
    struct llama_context *c = llama_init_from_model(m, cp);
    if (!c) return 1;
    struct llama_batch b = llama_batch_get_one(ids, n);
    int tok;
    printf("{\"tokens\":[");
    char *top = malloc((size_t)nnew * (size_t)topk * 40 + 16);
    size_t tl = 0;
    top[0] = 0;
    for (int k = 0; k < nnew; k++) {
      if (llama_decode(c, b)) return 1;
      const float *lg = llama_get_logits_ith(c, -1);
      int best = 0;
      for (int i = 1; i < nv; i++)
        if (lg[i] > lg[best]) best = i;
      printf("%s%d", k ? "," : "", best);
      tl += (size_t)sprintf(top + tl, "%s[", k ? "," : "");
      char *used = calloc((size_t)nv, 1);
      for (int j = 0; j < topk; j++) {
        int bi = -1;
        for (int i = 0; i < nv; i++)
          if (!used[i] && (bi < 0 || lg[i] > lg[bi])) bi = i;
        used[bi] = 1;
        tl += (size_t)sprintf(top + tl, "%s[%d,%.9g]", j ? "," : "", bi, lg[bi]);
      }
      free(used);
      tl += (size_t)sprintf(top + tl, "]");
      tok = best;
      b = llama_batch_get_one(&tok, 1);
    }
    printf("],\"top\":[%s]}\n", top);
    free(top);
    llama_free(c);
  }
  free(prompts);
  llama_model_free(m);
  return 0;
}
