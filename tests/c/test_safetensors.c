/* Tests of the safetensors reader and writer: round trips of every dtype,
 * files built by hand, the reference models, one test per kind of bad
 * input (each must fail with a message naming the file and the problem),
 * and a replay of the fuzzers' seeds and crash inputs. */
#include "testutil.h"

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gguf.h"
#include "safetensors.h"

/* ---- helpers ------------------------------------------------------------ */


/* A file image: 8-byte LE header length, header, data. */
typedef struct {
  uint8_t *p;
  size_t n;
} img_t;

static img_t make_img(const char *hdr, size_t hl, const void *data, size_t dn) {
  img_t m;
  m.n = 8 + hl + dn;
  m.p = malloc(m.n);
  assert_non_null(m.p);
  for (int i = 0; i < 8; i++) m.p[i] = (uint8_t)((uint64_t)hl >> (8 * i));
  memcpy(m.p + 8, hdr, hl);
  if (dn) memcpy(m.p + 8 + hl, data, dn);
  return m;
}

static img_t make_json_img(const char *json, const void *data, size_t dn) {
  return make_img(json, strlen(json), data, dn);
}

/* Write the image to NAME in the temp folder and open it: it must fail with
 * code (when code != 0) and a message holding the path and `needle`. */
static void expect_bad_file(img_t m, const char *name, int code, const char *needle) {
  const char *path = tu_tmp_path(name);
  tu_write_file(path, m.p, m.n);
  tide_st_t *st = (tide_st_t *)1;
  tide_err_t err;
  int rc = tide_st_open(path, &st, &err);
  if (rc == 0 || (code && rc != code) || !strstr(err.msg, path) || !strstr(err.msg, needle))
    fail_msg("open %s: rc %d (want %d), message '%s' (want '%s')", name, rc, code, rc ? err.msg : "", needle);
  assert_null(st);
  free(m.p);
}

static float rd_f32(const uint8_t *p) {
  float f;
  memcpy(&f, p, 4);
  return f;
}

/* ---- round trips ---------------------------------------------------------- */

static void test_safetensors_save_load_every_dtype(void **state) {
  (void)state;
  tu_rng_t rng = {42};
  static const int32_t dts[] = {TIDE_DTYPE_F32, TIDE_DTYPE_F16, TIDE_DTYPE_BF16, TIDE_DTYPE_F8_E4M3, TIDE_DTYPE_I32,
                                TIDE_DTYPE_I64, TIDE_DTYPE_U8,  TIDE_DTYPE_F64,  TIDE_DTYPE_I8,      TIDE_DTYPE_I16};
  enum { ND = sizeof dts / sizeof dts[0] };
  tide_tensor_t *ts[ND + 2];
  const char *names[ND + 2];
  char namebuf[ND + 2][32];
  tide_err_t err;
  for (int i = 0; i < ND; i++) {
    int64_t shape[3] = {2, 3, 5};
    assert_int_equal(tide_tensor_new(dts[i], 3, shape, &ts[i], &err), 0);
    uint8_t *b = ts[i]->data;
    for (int64_t k = 0; k < tide_tensor_nbytes(ts[i]); k++) b[k] = (uint8_t)(tu_randint(&rng, 0, 255));
    if (dts[i] == TIDE_DTYPE_F32) /* keep floats finite so equality is meaningful */
      for (int k = 0; k < 30; k++) ((float *)b)[k] = tu_rand(&rng);
    snprintf(namebuf[i], sizeof namebuf[i], "t%02d.%s", ND - i, tide_dtype_traits(dts[i])->name);
    names[i] = namebuf[i];
  }
  /* a strided view (transpose) and a 0-d tensor */
  assert_int_equal(tide_tensor_transpose(ts[0], 0, 2, &ts[ND], &err), 0);
  names[ND] = "transposed";
  int64_t one = 1;
  assert_int_equal(tide_tensor_new(TIDE_DTYPE_F32, 0, &one, &ts[ND + 1], &err), 0);
  ((float *)ts[ND + 1]->data)[0] = 3.25f;
  names[ND + 1] = "scalar";
  const char *meta[] = {"format", "pt", "note", "caf\xc3\xa9"};
  const char *path = tu_tmp_path("all.safetensors");
  assert_int_equal(tide_st_save(path, ND + 2, names, (const tide_tensor_t *const *)ts, 2, meta, &err), 0);
  assert_int_equal(access(tu_tmp_path("all.safetensors.tmp"), F_OK), -1); /* renamed */

  /* the layout: header length padded to 8 with spaces, __metadata__ first, names sorted */
  FILE *f = fopen(path, "rb");
  assert_non_null(f);
  uint8_t len8[8];
  assert_int_equal(fread(len8, 1, 8, f), 8);
  uint64_t hl = 0;
  for (int i = 7; i >= 0; i--) hl = hl << 8 | len8[i];
  assert_int_equal(hl % 8, 0);
  char *hdr = calloc(1, hl + 1);
  assert_int_equal(fread(hdr, 1, hl, f), hl);
  fclose(f);
  assert_true(strncmp(hdr, "{\"__metadata__\":{", 17) == 0);
  size_t end = strlen(hdr);
  while (end > 0 && hdr[end - 1] == ' ') end--;
  assert_true(end > 0 && hdr[end - 1] == '}');
  assert_true(hl - end < 8);
  const char *prev = strstr(hdr, "\"scalar\"");
  assert_non_null(prev);
  for (int i = ND - 1; i >= 0; i--) { /* t01.. < t10.. < transposed, all after scalar */
    const char *p = strstr(hdr, names[i]);
    assert_non_null(p);
    assert_true(p > prev);
    prev = p;
  }
  assert_true(strstr(hdr, "\"transposed\"") > prev);
  free(hdr);

  tide_st_t *st;
  assert_int_equal(tide_st_open(path, &st, &err), 0);
  assert_int_equal(tide_st_count(st), ND + 2);
  assert_int_equal(tide_st_meta_count(st), 2);
  int seen_note = 0;
  for (int64_t i = 0; i < 2; i++)
    if (strcmp(tide_st_meta_key(st, i), "note") == 0) seen_note = strcmp(tide_st_meta_value(st, i), "caf\xc3\xa9") == 0;
  assert_true(seen_note);
  for (int i = 0; i < ND + 2; i++) {
    int64_t k = tide_st_find(st, names[i]);
    assert_true(k >= 0);
    assert_string_equal(tide_st_name(st, k), names[i]);
    tide_tensor_t *t;
    assert_int_equal(tide_st_get(st, k, &t, &err), 0);
    assert_int_equal(t->dtype, ts[i]->dtype);
    assert_int_equal(t->ndim, ts[i]->ndim);
    for (int d = 0; d < t->ndim; d++) assert_int_equal(t->shape[d], ts[i]->shape[d]);
    assert_true(t->flags & TIDE_TENSOR_READONLY);
    if (i < ND) {
      assert_memory_equal(t->data, ts[i]->data, (size_t)tide_tensor_nbytes(t));
      assert_int_equal(t->storage->kind, TIDE_STORAGE_MMAP); /* a view, not a copy */
    } else {
      int64_t n = tide_tensor_numel(t);
      for (int64_t e = 0; e < n; e++) assert_true(tide_tensor_get(t, e) == tide_tensor_get(ts[i], e));
    }
    tide_tensor_release(t);
  }
  assert_string_equal(tide_st_dtype_name(st, tide_st_find(st, names[3])), "F8_E4M3");
  assert_string_equal(tide_st_file(st, 0), path);
  tide_st_close(st);
  for (int i = 0; i < ND + 2; i++) tide_tensor_release(ts[i]);
}

static void test_safetensors_reads_hand_written_file(void **state) {
  (void)state;
  /* bytes laid out by hand: a 2x2 f32 at [0,16), a bf16 pair at [16,20) */
  const char *json = "{\"b\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[16,20]},"
                     "\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]}}";
  size_t jl = strlen(json), padded = (jl + 7) / 8 * 8;
  char hdr[256];
  memset(hdr, ' ', sizeof hdr);
  memcpy(hdr, json, jl);
  uint8_t data[20];
  float fv[4] = {1.5f, -2.0f, 0.25f, 1e30f};
  memcpy(data, fv, 16);
  data[16] = 0x80, data[17] = 0x3f, data[18] = 0x40, data[19] = 0xc0; /* bf16 1.0, -3.0 */
  img_t m = make_img(hdr, padded, data, sizeof data);
  const char *path = tu_tmp_path("hand.safetensors");
  tu_write_file(path, m.p, m.n);
  tide_st_t *st;
  tide_err_t err;
  assert_int_equal(tide_st_open(path, &st, &err), 0);
  assert_int_equal(tide_st_count(st), 2);
  assert_string_equal(tide_st_name(st, 0), "a"); /* sorted by name */
  assert_int_equal(tide_st_file_offset(st, 0), (int64_t)(8 + padded));
  tide_tensor_t *a, *b;
  assert_int_equal(tide_st_get(st, 0, &a, &err), 0);
  assert_int_equal(tide_st_get(st, 1, &b, &err), 0);
  tide_st_close(st); /* tensors outlive the handle */
  for (int i = 0; i < 4; i++) assert_true(tide_tensor_get(a, i) == fv[i]);
  assert_true(rd_f32(m.p + 8 + padded + 4) == -2.0f);
  assert_true(tide_tensor_get(b, 0) == 1.0 && tide_tensor_get(b, 1) == -3.0);
  assert_int_equal(tide_tensor_set(a, 0, 1.0, &err), TIDE_ESTATE); /* read-only */
  tide_tensor_release(a);
  tide_tensor_release(b);
  free(m.p);
}

static void test_safetensors_misaligned_data_is_copied(void **state) {
  (void)state;
  /* a header of odd length puts the f32 data at an odd file offset */
  char json[80] = "{\"x\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]}}";
  if ((8 + strlen(json)) % 4 == 0) strcat(json, " ");
  float v[3] = {1.0f, 2.0f, -4.0f};
  img_t m = make_json_img(json, v, sizeof v);
  assert_true((8 + strlen(json)) % 4 != 0);
  tide_st_t *st;
  tide_err_t err;
  assert_int_equal(tide_st_open_memory(m.p, (int64_t)m.n, "odd", &st, &err), 0);
  tide_tensor_t *t;
  assert_int_equal(tide_st_get(st, 0, &t, &err), 0);
  assert_int_equal((uintptr_t)t->data % 4, 0);
  for (int i = 0; i < 3; i++) assert_true(tide_tensor_get(t, i) == v[i]);
  assert_true(t->flags & TIDE_TENSOR_READONLY);
  tide_tensor_release(t);
  tide_st_close(st);
  free(m.p);
}

static void test_safetensors_sharded_index(void **state) {
  (void)state;
  tide_err_t err;
  tide_tensor_t *a, *b;
  int64_t s2[2] = {2, 2};
  assert_int_equal(tide_tensor_new(TIDE_DTYPE_F32, 2, s2, &a, &err), 0);
  assert_int_equal(tide_tensor_new(TIDE_DTYPE_BF16, 2, s2, &b, &err), 0);
  ((float *)a->data)[3] = 7.0f;
  const char *na[] = {"w.a"}, *nb[] = {"w.b"};
  char *dir = tu_tmp_path("sharded");
  assert_int_equal(mkdir(dir, 0700), 0);
  char p1[600], p2[600], idx[600];
  snprintf(p1, sizeof p1, "%s/s-1.safetensors", dir);
  snprintf(p2, sizeof p2, "%s/s-2.safetensors", dir);
  snprintf(idx, sizeof idx, "%s/model.safetensors.index.json", dir);
  assert_int_equal(tide_st_save(p1, 1, na, (const tide_tensor_t *const *)&a, 0, NULL, &err), 0);
  assert_int_equal(tide_st_save(p2, 1, nb, (const tide_tensor_t *const *)&b, 0, NULL, &err), 0);
  const char *good = "{\"metadata\":{},\"weight_map\":{\"w.a\":\"s-1.safetensors\",\"w.b\":\"s-2.safetensors\"}}";
  tu_write_file(idx, good, strlen(good));
  tide_st_t *st;
  assert_int_equal(tide_st_open(dir, &st, &err), 0); /* the folder finds the index */
  assert_int_equal(tide_st_count(st), 2);
  assert_string_equal(tide_st_file(st, tide_st_find(st, "w.b")), p2);
  tide_tensor_t *t;
  assert_int_equal(tide_st_get(st, tide_st_find(st, "w.a"), &t, &err), 0);
  assert_true(tide_tensor_get(t, 3) == 7.0);
  tide_tensor_release(t);
  tide_st_close(st);
  assert_int_equal(tide_st_open(idx, &st, &err), 0); /* the index itself */
  tide_st_close(st);

  /* a shard listed but missing */
  const char *missing = "{\"weight_map\":{\"w.a\":\"s-1.safetensors\",\"w.c\":\"s-3.safetensors\"}}";
  tu_write_file(idx, missing, strlen(missing));
  assert_int_equal(tide_st_open(dir, &st, &err), TIDE_ENOTFOUND);
  assert_non_null(strstr(err.msg, "model.safetensors.index.json"));
  assert_non_null(strstr(err.msg, "s-3.safetensors"));
  assert_non_null(strstr(err.msg, "missing"));
  /* a tensor listed in the wrong shard */
  const char *wrong = "{\"weight_map\":{\"w.a\":\"s-2.safetensors\",\"w.b\":\"s-2.safetensors\"}}";
  tu_write_file(idx, wrong, strlen(wrong));
  assert_int_equal(tide_st_open(dir, &st, &err), TIDE_EFORMAT);
  assert_non_null(strstr(err.msg, "'w.a'"));
  /* the same tensor name in two shards */
  assert_int_equal(tide_st_save(p2, 1, na, (const tide_tensor_t *const *)&b, 0, NULL, &err), 0);
  tu_write_file(idx, good, strlen(good));
  assert_int_equal(tide_st_open(dir, &st, &err), TIDE_EFORMAT);
  assert_non_null(strstr(err.msg, "'w.a' appears twice"));
  assert_non_null(strstr(err.msg, p1));
  assert_non_null(strstr(err.msg, p2));
  /* a broken index */
  tu_write_file(idx, "{\"weight_map\": [", 16);
  assert_int_equal(tide_st_open(dir, &st, &err), TIDE_EFORMAT);
  assert_non_null(strstr(err.msg, "not valid JSON"));
  tu_write_file(idx, "{\"meta\": {}}", 12);
  assert_int_equal(tide_st_open(dir, &st, &err), TIDE_EFORMAT);
  assert_non_null(strstr(err.msg, "weight_map"));
  tu_write_file(idx, "{\"weight_map\":{\"w.a\":\"../etc/passwd\"}}", 38);
  assert_int_equal(tide_st_open(dir, &st, &err), TIDE_EFORMAT);
  assert_non_null(strstr(err.msg, "relative file name"));
  tide_tensor_release(a);
  tide_tensor_release(b);
}

static void test_safetensors_folder_without_weights(void **state) {
  (void)state;
  char *dir = tu_tmp_path("emptydir");
  assert_int_equal(mkdir(dir, 0700), 0);
  tide_st_t *st;
  tide_err_t err;
  assert_int_equal(tide_st_open(dir, &st, &err), TIDE_ENOTFOUND);
  assert_non_null(strstr(err.msg, dir));
  assert_int_equal(tide_st_open(tu_tmp_path("nope.safetensors"), &st, &err), TIDE_ENOTFOUND);
  assert_non_null(strstr(err.msg, "nope.safetensors"));
}

/* Open a reference model (skipped when run outside the repository root). */
static tide_st_t *open_model(const char *dir, int64_t *n_index) {
  char idx[256];
  snprintf(idx, sizeof idx, "%s/model.safetensors.index.json", dir);
  FILE *f = fopen(idx, "rb");
  if (!f) return NULL;
  /* count the weight_map entries independently: one `"...": "model-...` per line */
  char line[1024];
  int64_t n = 0;
  while (fgets(line, sizeof line, f))
    if (strstr(line, "\": \"model-")) n++;
  fclose(f);
  *n_index = n;
  tide_st_t *st;
  tide_err_t err;
  int rc = tide_st_open(dir, &st, &err);
  if (rc) fail_msg("%s: %s", dir, err.msg);
  return st;
}

static void test_safetensors_reference_models(void **state) {
  (void)state;
  int64_t n_index;
  tide_st_t *st = open_model("models/dsv3-tiny-fp8", &n_index);
  if (!st) skip();
  assert_true(n_index > 0);
  assert_int_equal(tide_st_count(st), n_index);
  int seen[TIDE_DTYPE_COUNT] = {0};
  tide_err_t err;
  for (int64_t i = 0; i < tide_st_count(st); i++) {
    tide_tensor_t *t;
    assert_int_equal(tide_st_get(st, i, &t, &err), 0);
    seen[t->dtype]++;
    tide_tensor_release(t);
  }
  assert_true(seen[TIDE_DTYPE_BF16] > 0 && seen[TIDE_DTYPE_F8_E4M3] > 0 && seen[TIDE_DTYPE_F32] > 0);
  assert_int_equal(seen[TIDE_DTYPE_BF16] + seen[TIDE_DTYPE_F8_E4M3] + seen[TIDE_DTYPE_F32], tide_st_count(st));
  /* a known value, read independently: the first f32 scale of layer 0's down_proj */
  int64_t k = tide_st_find(st, "model.layers.0.mlp.down_proj.weight_scale_inv");
  assert_true(k >= 0);
  tide_tensor_t *t;
  assert_int_equal(tide_st_get(st, k, &t, &err), 0);
  FILE *f = fopen(tide_st_file(st, k), "rb");
  assert_non_null(f);
  uint8_t raw[4];
  assert_int_equal(fseek(f, tide_st_file_offset(st, k), SEEK_SET), 0);
  assert_int_equal(fread(raw, 1, 4, f), 4);
  fclose(f);
  assert_true(tide_tensor_get(t, 0) == rd_f32(raw));
  assert_true(rd_f32(raw) > 0);
  tide_tensor_release(t);
  tide_st_close(st);

  st = open_model("models/llama-tiny", &n_index);
  if (!st) skip();
  assert_int_equal(tide_st_count(st), n_index);
  for (int64_t i = 0; i < tide_st_count(st); i++) {
    assert_int_equal(tide_st_get(st, i, &t, &err), 0);
    assert_int_equal(t->dtype, TIDE_DTYPE_BF16);
    tide_tensor_release(t);
  }
  tide_st_close(st);
}

/* ---- bad input: one test per kind ----------------------------------------- */

static img_t good_img(void) {
  const char *json = "{\"__metadata__\":{\"format\":\"pt\"},"
                     "\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
                     "\"b\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[16,24]}}  ";
  uint8_t data[24];
  for (int i = 0; i < 24; i++) data[i] = (uint8_t)i;
  return make_json_img(json, data, sizeof data);
}

static void test_safetensors_bad_truncated_everywhere(void **state) {
  (void)state;
  img_t m = good_img();
  tide_st_t *st;
  tide_err_t err;
  assert_int_equal(tide_st_open_memory(m.p, (int64_t)m.n, "whole", &st, &err), 0);
  tide_st_close(st);
  for (size_t cut = 0; cut < m.n; cut++) { /* every cut point, from memory */
    err.msg[0] = 0;
    int rc = tide_st_open_memory(m.p, (int64_t)cut, "cut.safetensors", &st, &err);
    if (rc == 0) fail_msg("cut at %zu of %zu opened", cut, m.n);
    assert_non_null(strstr(err.msg, "cut.safetensors"));
  }
  /* and a few through the file path */
  size_t cuts[] = {0, 5, 8, 40, m.n - 1};
  for (size_t i = 0; i < sizeof cuts / sizeof cuts[0]; i++) {
    img_t c = {malloc(cuts[i] + 1), cuts[i]};
    memcpy(c.p, m.p, cuts[i]);
    expect_bad_file(c, "trunc.safetensors", 0, cuts[i] < 8 ? "truncated" : (cuts[i] < 60 ? "beyond" : "past the end"));
  }
  free(m.p);
}

static void test_safetensors_bad_header_length_beyond_file(void **state) {
  (void)state;
  img_t m = good_img();
  m.p[0] = 0xff, m.p[1] = 0x10; /* 4351 bytes of header in a ~130-byte file */
  expect_bad_file(m, "hlen.safetensors", TIDE_EFORMAT, "header length 4351 goes beyond the file");
  m = good_img();
  memset(m.p, 0xff, 8); /* 2^64-1 */
  expect_bad_file(m, "hlen2.safetensors", TIDE_EFORMAT, "header length");
  /* over the 100 MB limit, in a (sparse) file big enough to hold it */
  const char *big = tu_tmp_path("absurd.safetensors");
  uint64_t hl = 150000000ull;
  uint8_t len8[8];
  for (int i = 0; i < 8; i++) len8[i] = (uint8_t)(hl >> (8 * i));
  tu_write_file(big, len8, 8);
  assert_int_equal(truncate(big, (off_t)(8 + hl + 16)), 0);
  tide_st_t *st;
  tide_err_t err;
  assert_int_equal(tide_st_open(big, &st, &err), TIDE_EFORMAT);
  assert_non_null(strstr(err.msg, big));
  assert_non_null(strstr(err.msg, "header length 150000000 is absurd"));
  unlink(big);
}

static void test_safetensors_bad_offsets_past_end(void **state) {
  (void)state;
  float d[4] = {0};
  expect_bad_file(make_json_img("{\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[4,20]}}", d, 16),
                  "past.safetensors", TIDE_ERANGE, "past the end");
  expect_bad_file(make_json_img("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[9223372036854775800,"
                                "9223372036854775804]}}", d, 16),
                  "past2.safetensors", TIDE_ERANGE, "past the end");
  expect_bad_file(make_json_img("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,4]}}", d, 16),
                  "endbegin.safetensors", TIDE_EFORMAT, "before begin");
  expect_bad_file(make_json_img("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[-4,0]}}", d, 16),
                  "neg.safetensors", TIDE_EFORMAT, "negative data_offsets");
}

static void test_safetensors_bad_overlapping_tensors(void **state) {
  (void)state;
  float d[4] = {0};
  expect_bad_file(make_json_img("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                                "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", d, 16),
                  "overlap.safetensors", TIDE_EFORMAT, "overlap");
  expect_bad_file(make_json_img("{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                                "\"b\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[7,8]}}", d, 16),
                  "inside.safetensors", TIDE_EFORMAT, "overlap");
  /* empty tensors may share an offset */
  img_t m = make_json_img("{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]},"
                          "\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}", d, 16);
  tide_st_t *st;
  tide_err_t err;
  assert_int_equal(tide_st_open_memory(m.p, (int64_t)m.n, "empty-ok", &st, &err), 0);
  tide_st_close(st);
  free(m.p);
}

static void test_safetensors_bad_unknown_dtype(void **state) {
  (void)state;
  float d[2] = {0};
  expect_bad_file(make_json_img("{\"a\":{\"dtype\":\"F4\",\"shape\":[2],\"data_offsets\":[0,1]}}", d, 8),
                  "dtype.safetensors", TIDE_EDTYPE, "unknown or unsupported dtype 'F4'");
  expect_bad_file(make_json_img("{\"a\":{\"dtype\":\"f32\",\"shape\":[2],\"data_offsets\":[0,8]}}", d, 8),
                  "dtype2.safetensors", TIDE_EDTYPE, "dtype 'f32'");
}

static void test_safetensors_bad_shape_size_mismatch(void **state) {
  (void)state;
  float d[4] = {0};
  expect_bad_file(make_json_img("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,16]}}", d, 16),
                  "size.safetensors", TIDE_ESHAPE, "16 bytes in the file but shape and dtype F32 need 12");
  expect_bad_file(make_json_img("{\"a\":{\"dtype\":\"BF16\",\"shape\":[2,2],\"data_offsets\":[0,4]}}", d, 16),
                  "size2.safetensors", TIDE_ESHAPE, "need 8");
}

static void test_safetensors_bad_absurd_dimensions(void **state) {
  (void)state;
  float d[1] = {0};
  expect_bad_file(make_json_img("{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1],\"data_offsets\":[0,4]}}", d, 4),
                  "dims5.safetensors", TIDE_EFORMAT, "5 dimensions (at most 4)");
  char big[4200];
  int k = snprintf(big, sizeof big, "{\"a\":{\"dtype\":\"F32\",\"shape\":[");
  for (int i = 0; i < 1000; i++) k += snprintf(big + k, sizeof big - (size_t)k, i ? ",1" : "1");
  snprintf(big + k, sizeof big - (size_t)k, "],\"data_offsets\":[0,4]}}");
  expect_bad_file(make_json_img(big, d, 4), "dims1000.safetensors", TIDE_EFORMAT, "1000 dimensions");
  expect_bad_file(make_json_img("{\"a\":{\"dtype\":\"F32\",\"shape\":[2,-1],\"data_offsets\":[0,4]}}", d, 4),
                  "negdim.safetensors", TIDE_EFORMAT, "negative");
  expect_bad_file(make_json_img("{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],"
                                "\"data_offsets\":[0,4]}}", d, 4),
                  "overflow.safetensors", TIDE_EFORMAT, "overflows");
  expect_bad_file(make_json_img("{\"a\":{\"dtype\":\"F32\",\"shape\":[1e3],\"data_offsets\":[0,4]}}", d, 4),
                  "floatdim.safetensors", TIDE_EFORMAT, "not an integer");
  expect_bad_file(make_json_img("{\"a\":{\"dtype\":\"F32\",\"shape\":[99999999999999999999],\"data_offsets\":[0,4]}}",
                                d, 4),
                  "hugedim.safetensors", TIDE_EFORMAT, "not valid JSON");
}

static void test_safetensors_bad_invalid_utf8(void **state) {
  (void)state;
  float d[1] = {0};
  static const char *bad[] = {
      "{\"a\xff\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",     /* 0xff is never UTF-8 */
      "{\"a\xc0\xaf\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", /* overlong '/' */
      "{\"a\xed\xa0\x80\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", /* surrogate */
      "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}\xe2\x82",   /* cut sequence */
      "{\"__metadata__\":{\"k\":\"\xf4\x90\x80\x80\"}}",                           /* above U+10FFFF */
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    expect_bad_file(make_json_img(bad[i], d, 4), "utf8.safetensors", TIDE_EFORMAT, "not valid UTF-8");
  /* valid multi-byte names are fine */
  img_t m = make_json_img("{\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                          d, 4);
  tide_st_t *st;
  tide_err_t err;
  assert_int_equal(tide_st_open_memory(m.p, (int64_t)m.n, "utf8ok", &st, &err), 0);
  tide_st_close(st);
  free(m.p);
}

static void test_safetensors_bad_invalid_json(void **state) {
  (void)state;
  float d[1] = {0};
  static const char *bad[] = {
      "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}",   /* unclosed */
      "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}x", /* trailing garbage */
      "{'a': 1}",
      "{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[0,4]}}", /* duplicate key */
      "{\"a\\u0000b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",        /* NUL in a name */
  };
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
    expect_bad_file(make_json_img(bad[i], d, 4), "json.safetensors", TIDE_EFORMAT, "not valid JSON");
  expect_bad_file(make_json_img("[1, 2]   ", d, 4), "array.safetensors", TIDE_EFORMAT, "not a JSON object");
  uint8_t nul[4] = {'{', 0, '}', ' '};
  expect_bad_file(make_img((const char *)nul, 4, d, 4), "nul.safetensors", TIDE_EFORMAT, "not valid JSON");
}

static void test_safetensors_bad_missing_or_mistyped_fields(void **state) {
  (void)state;
  float d[1] = {0};
  static const struct {
    const char *json, *needle;
  } cases[] = {
      {"{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", "\"dtype\" is missing"},
      {"{\"a\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,4]}}", "\"dtype\" is not a string"},
      {"{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", "\"shape\" is missing"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":\"1\",\"data_offsets\":[0,4]}}", "\"shape\" is not an array"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", "\"data_offsets\" is missing"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4,8]}}", "not an array of two integers"},
      {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4.0]}}", "not an array of two integers"},
      {"{\"a\":[1,2]}", "entry is not a JSON object"},
      {"{\"__metadata__\":{\"k\":1}}", "__metadata__ value of 'k' is not a string"},
      {"{\"__metadata__\":[]}", "__metadata__ is not a JSON object"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    expect_bad_file(make_json_img(cases[i].json, d, 4), "fields.safetensors", TIDE_EFORMAT, cases[i].needle);
}

static void test_safetensors_save_rejects_bad_input(void **state) {
  (void)state;
  tide_err_t err;
  tide_tensor_t *q, *f;
  int64_t s[2] = {1, 32};
  assert_int_equal(tide_tensor_new(TIDE_DTYPE_Q8_0, 2, s, &q, &err), 0);
  assert_int_equal(tide_tensor_new(TIDE_DTYPE_F32, 2, s, &f, &err), 0);
  const char *names[] = {"q"};
  assert_int_equal(tide_st_save(tu_tmp_path("q.safetensors"), 1, names, (const tide_tensor_t *const *)&q, 0, NULL, &err),
                   TIDE_EDTYPE);
  assert_non_null(strstr(err.msg, "'q'"));
  assert_int_equal(access(tu_tmp_path("q.safetensors"), F_OK), -1);
  assert_int_equal(access(tu_tmp_path("q.safetensors.tmp"), F_OK), -1);
  const char *dup[] = {"x", "x"};
  const tide_tensor_t *two[] = {f, f};
  assert_int_equal(tide_st_save(tu_tmp_path("d.safetensors"), 2, dup, two, 0, NULL, &err), TIDE_EINVAL);
  assert_non_null(strstr(err.msg, "twice"));
  const char *nm[] = {"f"};
  assert_int_equal(tide_st_save(tu_tmp_path("no/such/dir.safetensors"), 1, nm, two, 0, NULL, &err), TIDE_EIO);
  const char *badmeta[] = {"k", "\xff"};
  assert_int_equal(tide_st_save(tu_tmp_path("m.safetensors"), 1, nm, two, 1, badmeta, &err), TIDE_EINVAL);
  tide_tensor_release(q);
  tide_tensor_release(f);
}

/* ---- fuzz seeds and crash regressions ------------------------------------- */

/* Run every file of dir through both parsers; returns how many opened. */
static int replay_dir(const char *dir, int *files) {
  DIR *d = opendir(dir);
  *files = 0;
  if (!d) return 0;
  int ok = 0;
  struct dirent *de;
  while ((de = readdir(d))) {
    if (de->d_name[0] == '.') continue;
    char p[1024];
    snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
    FILE *f = fopen(p, "rb");
    if (!f) continue;
    uint8_t *buf = malloc(1 << 20);
    size_t n = fread(buf, 1, 1 << 20, f);
    fclose(f);
    tide_err_t err;
    tide_st_t *st;
    tide_gguf_t *g;
    (*files)++;
    if (tide_st_open_memory(buf, (int64_t)n, p, &st, &err) == 0) {
      for (int64_t i = 0; i < tide_st_count(st); i++) {
        tide_tensor_t *t;
        if (tide_st_get(st, i, &t, &err) == 0) tide_tensor_release(t);
      }
      tide_st_close(st);
      ok++;
    } else {
      assert_non_null(strstr(err.msg, p));
    }
    if (tide_gguf_open_memory(buf, (int64_t)n, p, &g, &err) == 0) {
      for (int64_t i = 0; i < tide_gguf_tensor_count(g); i++) {
        tide_tensor_t *t;
        if (tide_gguf_tensor(g, i, &t, &err) == 0) tide_tensor_release(t);
      }
      tide_gguf_close(g);
      ok++;
    } else {
      assert_non_null(strstr(err.msg, p));
    }
    free(buf);
  }
  closedir(d);
  return ok;
}

static void test_safetensors_fuzz_seeds_and_crashes_replay(void **state) {
  (void)state;
  int files;
  int ok = replay_dir("fuzz/seeds/safetensors", &files);
  if (files == 0) skip(); /* not run from the repository root */
  assert_int_equal(ok, files); /* every seed is a valid file */
  replay_dir("fuzz/crashes", &files); /* crash inputs: must fail cleanly or open, never crash */
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_safetensors_save_load_every_dtype),
      cmocka_unit_test(test_safetensors_reads_hand_written_file),
      cmocka_unit_test(test_safetensors_misaligned_data_is_copied),
      cmocka_unit_test(test_safetensors_sharded_index),
      cmocka_unit_test(test_safetensors_folder_without_weights),
      cmocka_unit_test(test_safetensors_reference_models),
      cmocka_unit_test(test_safetensors_bad_truncated_everywhere),
      cmocka_unit_test(test_safetensors_bad_header_length_beyond_file),
      cmocka_unit_test(test_safetensors_bad_offsets_past_end),
      cmocka_unit_test(test_safetensors_bad_overlapping_tensors),
      cmocka_unit_test(test_safetensors_bad_unknown_dtype),
      cmocka_unit_test(test_safetensors_bad_shape_size_mismatch),
      cmocka_unit_test(test_safetensors_bad_absurd_dimensions),
      cmocka_unit_test(test_safetensors_bad_invalid_utf8),
      cmocka_unit_test(test_safetensors_bad_invalid_json),
      cmocka_unit_test(test_safetensors_bad_missing_or_mistyped_fields),
      cmocka_unit_test(test_safetensors_save_rejects_bad_input),
      cmocka_unit_test(test_safetensors_fuzz_seeds_and_crashes_replay),
  };
  return cmocka_run_group_tests(tests, tu_group_setup, tu_group_teardown);
}
