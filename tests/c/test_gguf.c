/* Tests of the GGUF reader and writer: the writer's bytes against the GGUF
 * v3 layout built independently here, read-back of every value type and
 * several tensor types, and one test per kind of bad input (each must fail
 * with a message naming the file and the problem). */
#include "testutil.h"

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gguf.h"


/* ---- an independent little-endian byte builder --------------------------- */

typedef struct {
  uint8_t *p;
  size_t n, cap;
} bb_t;

static void bput(bb_t *b, const void *src, size_t n) {
  if (b->n + n > b->cap) {
    b->cap = (b->n + n) * 2 + 64;
    b->p = realloc(b->p, b->cap);
    assert_non_null(b->p);
  }
  memcpy(b->p + b->n, src, n);
  b->n += n;
}
static void bu8(bb_t *b, uint8_t v) { bput(b, &v, 1); }
static void ble(bb_t *b, uint64_t v, int size) {
  for (int i = 0; i < size; i++) bu8(b, (uint8_t)(v >> (8 * i)));
}
static void bu32(bb_t *b, uint32_t v) { ble(b, v, 4); }
static void bu64(bb_t *b, uint64_t v) { ble(b, v, 8); }
static void bstr(bb_t *b, const char *s) {
  bu64(b, strlen(s));
  bput(b, s, strlen(s));
}
static void bf32(bb_t *b, float f) {
  uint32_t u;
  memcpy(&u, &f, 4);
  bu32(b, u);
}
static void bf64(bb_t *b, double d) {
  uint64_t u;
  memcpy(&u, &d, 8);
  bu64(b, u);
}
static void bpad(bb_t *b, size_t align) {
  while (b->n % align) bu8(b, 0);
}
static void bheader(bb_t *b, uint32_t version, uint64_t n_t, uint64_t n_kv) {
  bput(b, "GGUF", 4);
  bu32(b, version);
  bu64(b, n_t);
  bu64(b, n_kv);
}
/* tensor info: dims given innermost first, as stored */
static void binfo(bb_t *b, const char *name, uint32_t nd, const uint64_t *dims, uint32_t type, uint64_t off) {
  bstr(b, name);
  bu32(b, nd);
  for (uint32_t i = 0; i < nd; i++) bu64(b, dims[i]);
  bu32(b, type);
  bu64(b, off);
}

static uint8_t *read_file(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  assert_non_null(f);
  fseek(f, 0, SEEK_END);
  long len = ftell(f);
  fseek(f, 0, SEEK_SET);
  uint8_t *p = malloc((size_t)len + 1);
  assert_int_equal(fread(p, 1, (size_t)len, f), (size_t)len);
  fclose(f);
  *n = (size_t)len;
  return p;
}

static void expect_bad(bb_t *b, const char *name, int code, const char *needle) {
  const char *path = tu_tmp_path(name);
  tu_write_file(path, b->p, b->n);
  tide_gguf_t *g = (tide_gguf_t *)1;
  tide_err_t err;
  int rc = tide_gguf_open(path, &g, &err);
  if (rc == 0 || (code && rc != code) || !strstr(err.msg, path) || !strstr(err.msg, needle))
    fail_msg("open %s: rc %d (want %d), message '%s' (want '%s')", name, rc, code, rc ? err.msg : "", needle);
  assert_null(g);
  free(b->p);
  memset(b, 0, sizeof *b);
}

/* ---- the writer against the published layout ----------------------------- */

static tide_tensor_t *tensor_with_bytes(int32_t dtype, int32_t nd, const int64_t *shape, uint8_t seed) {
  tide_tensor_t *t;
  tide_err_t err;
  assert_int_equal(tide_tensor_new(dtype, nd, shape, &t, &err), 0);
  uint8_t *p = t->data;
  for (int64_t i = 0; i < tide_tensor_nbytes(t); i++) p[i] = (uint8_t)(seed + i * 7);
  return t;
}

/* Writes the file used by the layout and read-back tests. */
static void write_sample(const char *path, tide_tensor_t **ts) {
  tide_gguf_writer_t *w;
  tide_err_t err;
  assert_int_equal(tide_gguf_writer_new(&w, &err), 0);
  assert_int_equal(tide_gguf_writer_kv_str(w, "general.architecture", "llama", -1, &err), 0);
  assert_int_equal(tide_gguf_writer_kv_int(w, "k.u8", TIDE_GGUF_UINT8, 200, &err), 0);
  assert_int_equal(tide_gguf_writer_kv_int(w, "k.i8", TIDE_GGUF_INT8, -100, &err), 0);
  assert_int_equal(tide_gguf_writer_kv_int(w, "k.u16", TIDE_GGUF_UINT16, 60000, &err), 0);
  assert_int_equal(tide_gguf_writer_kv_int(w, "k.i16", TIDE_GGUF_INT16, -30000, &err), 0);
  assert_int_equal(tide_gguf_writer_kv_int(w, "k.u32", TIDE_GGUF_UINT32, 4000000000ll, &err), 0);
  assert_int_equal(tide_gguf_writer_kv_int(w, "k.i32", TIDE_GGUF_INT32, -2000000000ll, &err), 0);
  assert_int_equal(tide_gguf_writer_kv_float(w, "k.f32", TIDE_GGUF_FLOAT32, 0.1, &err), 0);
  assert_int_equal(tide_gguf_writer_kv_int(w, "k.bool", TIDE_GGUF_BOOL, 1, &err), 0);
  assert_int_equal(tide_gguf_writer_kv_str(w, "k.str", "a\0b", 3, &err), 0); /* NUL inside */
  assert_int_equal(tide_gguf_writer_kv_uint(w, "k.u64", 0x8000000000000005ull, &err), 0);
  assert_int_equal(tide_gguf_writer_kv_int(w, "k.i64", TIDE_GGUF_INT64, -(1ll << 62), &err), 0);
  assert_int_equal(tide_gguf_writer_kv_float(w, "k.f64", TIDE_GGUF_FLOAT64, 1e300, &err), 0);
  int64_t ai[3] = {1, -2, 3};
  assert_int_equal(tide_gguf_writer_kv_arr_int(w, "a.i32", TIDE_GGUF_INT32, ai, 3, &err), 0);
  double af[2] = {1.5, -2.0};
  assert_int_equal(tide_gguf_writer_kv_arr_float(w, "a.f32", TIDE_GGUF_FLOAT32, af, 2, &err), 0);
  const char *as[2] = {"a", "\xc3\xbc" "ber"};
  assert_int_equal(tide_gguf_writer_kv_arr_str(w, "a.str", as, NULL, 2, &err), 0);
  int64_t ab[2] = {1, 0};
  assert_int_equal(tide_gguf_writer_kv_arr_int(w, "a.bool", TIDE_GGUF_BOOL, ab, 2, &err), 0);
  assert_int_equal(tide_gguf_writer_kv_arr_int(w, "a.empty", TIDE_GGUF_UINT8, NULL, 0, &err), 0);
  int64_t s23[2] = {2, 3}, s2x32[2] = {2, 32}, s3[1] = {3};
  ts[0] = tensor_with_bytes(TIDE_DTYPE_F32, 2, s23, 1);
  ts[1] = tensor_with_bytes(TIDE_DTYPE_Q8_0, 2, s2x32, 2);
  ts[2] = tensor_with_bytes(TIDE_DTYPE_F16, 1, s3, 3);
  assert_int_equal(tide_gguf_writer_add_tensor(w, "t.f32", ts[0], &err), 0);
  assert_int_equal(tide_gguf_writer_add_tensor(w, "t.q8_0", ts[1], &err), 0);
  assert_int_equal(tide_gguf_writer_add_tensor(w, "t.f16", ts[2], &err), 0);
  assert_int_equal(tide_gguf_writer_write(w, path, &err), 0);
  tide_gguf_writer_free(w);
}

static void test_gguf_writer_matches_v3_layout(void **state) {
  (void)state;
  tide_tensor_t *ts[3];
  const char *path = tu_tmp_path("layout.gguf");
  write_sample(path, ts);
  assert_int_equal(access(tu_tmp_path("layout.gguf.tmp"), F_OK), -1);

  bb_t e = {0};
  bheader(&e, 3, 3, 18);
  bstr(&e, "general.architecture"), bu32(&e, 8), bstr(&e, "llama");
  bstr(&e, "k.u8"), bu32(&e, 0), bu8(&e, 200);
  bstr(&e, "k.i8"), bu32(&e, 1), bu8(&e, 0x9c); /* -100 */
  bstr(&e, "k.u16"), bu32(&e, 2), ble(&e, 60000, 2);
  bstr(&e, "k.i16"), bu32(&e, 3), ble(&e, 0x8ad0, 2); /* -30000 */
  bstr(&e, "k.u32"), bu32(&e, 4), bu32(&e, 4000000000u);
  bstr(&e, "k.i32"), bu32(&e, 5), bu32(&e, 0x88ca6c00u); /* -2000000000 */
  bstr(&e, "k.f32"), bu32(&e, 6), bf32(&e, 0.1f);
  bstr(&e, "k.bool"), bu32(&e, 7), bu8(&e, 1);
  bstr(&e, "k.str"), bu32(&e, 8), bu64(&e, 3), bput(&e, "a\0b", 3);
  bstr(&e, "k.u64"), bu32(&e, 10), bu64(&e, 0x8000000000000005ull);
  bstr(&e, "k.i64"), bu32(&e, 11), bu64(&e, 0xc000000000000000ull); /* -2^62 */
  bstr(&e, "k.f64"), bu32(&e, 12), bf64(&e, 1e300);
  bstr(&e, "a.i32"), bu32(&e, 9), bu32(&e, 5), bu64(&e, 3), bu32(&e, 1), bu32(&e, 0xfffffffeu), bu32(&e, 3);
  bstr(&e, "a.f32"), bu32(&e, 9), bu32(&e, 6), bu64(&e, 2), bf32(&e, 1.5f), bf32(&e, -2.0f);
  bstr(&e, "a.str"), bu32(&e, 9), bu32(&e, 8), bu64(&e, 2), bstr(&e, "a"), bu64(&e, 5), bput(&e, "\xc3\xbc" "ber", 5);
  bstr(&e, "a.bool"), bu32(&e, 9), bu32(&e, 7), bu64(&e, 2), bu8(&e, 1), bu8(&e, 0);
  bstr(&e, "a.empty"), bu32(&e, 9), bu32(&e, 0), bu64(&e, 0);
  /* tensor infos: dims innermost first; offsets 0, 32 (24 bytes padded), 128 (32 + 68 padded to 96) */
  uint64_t d0[2] = {3, 2}, d1[2] = {32, 2}, d2[1] = {3};
  binfo(&e, "t.f32", 2, d0, 0, 0);
  binfo(&e, "t.q8_0", 2, d1, 8, 32);
  binfo(&e, "t.f16", 1, d2, 1, 128);
  bpad(&e, 32);
  size_t data_start = e.n;
  bput(&e, ts[0]->data, 24), bpad(&e, 32);
  bput(&e, ts[1]->data, 68), bpad(&e, 32);
  bput(&e, ts[2]->data, 6), bpad(&e, 32);
  assert_int_equal(e.n - data_start, 160);

  size_t n;
  uint8_t *got = read_file(path, &n);
  assert_int_equal(n, e.n);
  for (size_t i = 0; i < n; i++)
    if (got[i] != e.p[i]) fail_msg("byte %zu: wrote 0x%02x, the layout says 0x%02x", i, got[i], e.p[i]);
  free(got);
  free(e.p);
  for (int i = 0; i < 3; i++) tide_tensor_release(ts[i]);
}

static int64_t kv_typed(const tide_gguf_t *g, const char *name, int32_t type) {
  int64_t i = tide_gguf_kv_find(g, name);
  assert_true(i >= 0);
  assert_int_equal(tide_gguf_kv_type(g, i), type);
  return i;
}

static void test_gguf_read_back_every_type(void **state) {
  (void)state;
  tide_tensor_t *ts[3];
  const char *path = tu_tmp_path("rt.gguf");
  write_sample(path, ts);
  tide_gguf_t *g;
  tide_err_t err;
  assert_int_equal(tide_gguf_open(path, &g, &err), 0);
  assert_int_equal(tide_gguf_version(g), 3);
  assert_int_equal(tide_gguf_alignment(g), 32);
  assert_int_equal(tide_gguf_data_offset(g) % 32, 0);
  assert_int_equal(tide_gguf_kv_count(g), 18);
  int64_t i;
  int64_t len;
  i = kv_typed(g, "general.architecture", TIDE_GGUF_STRING);
  assert_string_equal(tide_gguf_kv_str(g, i, 0, &len), "llama");
  assert_int_equal(len, 5);
  assert_int_equal(tide_gguf_kv_int(g, i = kv_typed(g, "k.u8", TIDE_GGUF_UINT8), 0), 200);
  assert_int_equal(tide_gguf_kv_int(g, i = kv_typed(g, "k.i8", TIDE_GGUF_INT8), 0), -100);
  assert_int_equal(tide_gguf_kv_int(g, i = kv_typed(g, "k.u16", TIDE_GGUF_UINT16), 0), 60000);
  assert_int_equal(tide_gguf_kv_int(g, i = kv_typed(g, "k.i16", TIDE_GGUF_INT16), 0), -30000);
  assert_int_equal(tide_gguf_kv_int(g, i = kv_typed(g, "k.u32", TIDE_GGUF_UINT32), 0), 4000000000ll);
  assert_int_equal(tide_gguf_kv_int(g, i = kv_typed(g, "k.i32", TIDE_GGUF_INT32), 0), -2000000000ll);
  assert_true(tide_gguf_kv_float(g, i = kv_typed(g, "k.f32", TIDE_GGUF_FLOAT32), 0) == (double)0.1f);
  assert_int_equal(tide_gguf_kv_int(g, i = kv_typed(g, "k.bool", TIDE_GGUF_BOOL), 0), 1);
  const char *s = tide_gguf_kv_str(g, i = kv_typed(g, "k.str", TIDE_GGUF_STRING), 0, &len);
  assert_int_equal(len, 3);
  assert_memory_equal(s, "a\0b", 4); /* and NUL-terminated */
  assert_true(tide_gguf_kv_uint(g, i = kv_typed(g, "k.u64", TIDE_GGUF_UINT64), 0) == 0x8000000000000005ull);
  assert_int_equal(tide_gguf_kv_int(g, i = kv_typed(g, "k.i64", TIDE_GGUF_INT64), 0), -(1ll << 62));
  assert_true(tide_gguf_kv_float(g, i = kv_typed(g, "k.f64", TIDE_GGUF_FLOAT64), 0) == 1e300);
  i = kv_typed(g, "a.i32", TIDE_GGUF_ARRAY);
  assert_int_equal(tide_gguf_kv_arr_type(g, i), TIDE_GGUF_INT32);
  assert_int_equal(tide_gguf_kv_arr_len(g, i), 3);
  assert_int_equal(tide_gguf_kv_int(g, i, 1), -2);
  assert_int_equal(tide_gguf_kv_int(g, i, 2), 3);
  assert_int_equal(tide_gguf_kv_int(g, i, 3), 0); /* out of range: 0 */
  i = kv_typed(g, "a.f32", TIDE_GGUF_ARRAY);
  assert_true(tide_gguf_kv_float(g, i, 0) == 1.5 && tide_gguf_kv_float(g, i, 1) == -2.0);
  i = kv_typed(g, "a.str", TIDE_GGUF_ARRAY);
  assert_int_equal(tide_gguf_kv_arr_type(g, i), TIDE_GGUF_STRING);
  assert_string_equal(tide_gguf_kv_str(g, i, 1, &len), "\xc3\xbc" "ber");
  assert_int_equal(len, 5);
  assert_null(tide_gguf_kv_str(g, i, 2, &len));
  i = kv_typed(g, "a.bool", TIDE_GGUF_ARRAY);
  assert_int_equal(tide_gguf_kv_int(g, i, 0), 1);
  assert_int_equal(tide_gguf_kv_int(g, i, 1), 0);
  i = kv_typed(g, "a.empty", TIDE_GGUF_ARRAY);
  assert_int_equal(tide_gguf_kv_arr_len(g, i), 0);
  assert_int_equal(tide_gguf_kv_find(g, "nope"), -1);
  assert_int_equal(tide_gguf_tensor_count(g), 3);
  static const char *names[3] = {"t.f32", "t.q8_0", "t.f16"};
  static const int32_t ggml[3] = {0, 8, 1};
  for (int k = 0; k < 3; k++) {
    int64_t ti = tide_gguf_tensor_find(g, names[k]);
    assert_int_equal(ti, k);
    assert_int_equal(tide_gguf_tensor_ggml_type(g, ti), ggml[k]);
    tide_tensor_t *t;
    assert_int_equal(tide_gguf_tensor(g, ti, &t, &err), 0);
    assert_int_equal(t->dtype, ts[k]->dtype);
    assert_int_equal(t->ndim, ts[k]->ndim);
    for (int d = 0; d < t->ndim; d++) assert_int_equal(t->shape[d], ts[k]->shape[d]); /* outermost first again */
    assert_memory_equal(t->data, ts[k]->data, (size_t)tide_tensor_nbytes(t));
    assert_true(t->flags & TIDE_TENSOR_READONLY);
    assert_int_equal(((uintptr_t)t->data) % 32, 0);
    tide_tensor_release(t);
  }
  tide_gguf_close(g);
  for (int k = 0; k < 3; k++) tide_tensor_release(ts[k]);
}

static void test_gguf_read_back_tensor_types_and_alignment(void **state) {
  (void)state;
  static const int32_t dts[] = {TIDE_DTYPE_F32, TIDE_DTYPE_F16, TIDE_DTYPE_BF16, TIDE_DTYPE_Q8_0, TIDE_DTYPE_Q4_0,
                                TIDE_DTYPE_Q4_K, TIDE_DTYPE_Q6_K, TIDE_DTYPE_I8,  TIDE_DTYPE_I16,  TIDE_DTYPE_I32,
                                TIDE_DTYPE_I64, TIDE_DTYPE_F64};
  enum { N = sizeof dts / sizeof dts[0] };
  tide_gguf_writer_t *w;
  tide_err_t err;
  tide_tensor_t *ts[N], *tr;
  char names[N][16];
  assert_int_equal(tide_gguf_writer_new(&w, &err), 0);
  assert_int_equal(tide_gguf_writer_set_alignment(w, 64, &err), 0);
  for (int k = 0; k < N; k++) {
    int32_t bs = tide_dtype_traits(dts[k])->block_size;
    int64_t shape[3] = {2, 3, 2 * bs};
    ts[k] = tensor_with_bytes(dts[k], 3, shape, (uint8_t)k);
    snprintf(names[k], sizeof names[k], "w%d", k);
    assert_int_equal(tide_gguf_writer_add_tensor(w, names[k], ts[k], &err), 0);
  }
  /* a strided view is written contiguous */
  assert_int_equal(tide_tensor_transpose(ts[0], 0, 1, &tr, &err), 0);
  assert_int_equal(tide_gguf_writer_add_tensor(w, "transposed", tr, &err), 0);
  const char *path = tu_tmp_path("types.gguf");
  assert_int_equal(tide_gguf_writer_write(w, path, &err), 0);
  tide_gguf_writer_free(w);
  tide_gguf_t *g;
  assert_int_equal(tide_gguf_open(path, &g, &err), 0);
  assert_int_equal(tide_gguf_alignment(g), 64);
  int64_t ai = tide_gguf_kv_find(g, "general.alignment");
  assert_int_equal(tide_gguf_kv_type(g, ai), TIDE_GGUF_UINT32);
  assert_int_equal(tide_gguf_kv_int(g, ai, 0), 64);
  assert_int_equal(tide_gguf_data_offset(g) % 64, 0);
  for (int k = 0; k < N; k++) {
    tide_tensor_t *t;
    int64_t ti = tide_gguf_tensor_find(g, names[k]);
    assert_int_equal(tide_gguf_tensor_offset(g, ti) % 64, 0);
    assert_int_equal(tide_gguf_tensor(g, ti, &t, &err), 0);
    assert_int_equal(t->dtype, dts[k]);
    assert_int_equal(t->shape[2], ts[k]->shape[2]);
    assert_memory_equal(t->data, ts[k]->data, (size_t)tide_tensor_nbytes(t));
    tide_tensor_release(t);
  }
  tide_tensor_t *t;
  assert_int_equal(tide_gguf_tensor(g, tide_gguf_tensor_find(g, "transposed"), &t, &err), 0);
  assert_int_equal(t->shape[0], 3);
  for (int64_t e = 0; e < tide_tensor_numel(t); e++) assert_true(tide_tensor_get(t, e) == tide_tensor_get(tr, e) ||
                                                                 isnan(tide_tensor_get(t, e)));
  tide_tensor_release(t);
  tide_gguf_close(g);
  for (int k = 0; k < N; k++) tide_tensor_release(ts[k]);
  tide_tensor_release(tr);
}

static void test_gguf_reads_version_2_and_empty_file(void **state) {
  (void)state;
  bb_t b = {0};
  bheader(&b, 2, 1, 1);
  bstr(&b, "general.name"), bu32(&b, 8), bstr(&b, "v2");
  uint64_t d[1] = {2};
  binfo(&b, "x", 1, d, 0, 0);
  bpad(&b, 32);
  bf32(&b, 1.0f), bf32(&b, -1.0f);
  tide_gguf_t *g;
  tide_err_t err;
  assert_int_equal(tide_gguf_open_memory(b.p, (int64_t)b.n, "v2", &g, &err), 0);
  assert_int_equal(tide_gguf_version(g), 2);
  tide_tensor_t *t;
  assert_int_equal(tide_gguf_tensor(g, 0, &t, &err), 0);
  assert_true(tide_tensor_get(t, 1) == -1.0);
  tide_tensor_release(t);
  tide_gguf_close(g);
  free(b.p);
  memset(&b, 0, sizeof b);
  bheader(&b, 3, 0, 0); /* nothing but a header */
  assert_int_equal(tide_gguf_open_memory(b.p, (int64_t)b.n, "empty", &g, &err), 0);
  assert_int_equal(tide_gguf_tensor_count(g), 0);
  tide_gguf_close(g);
  free(b.p);
}

static void test_gguf_writer_rejects_bad_input(void **state) {
  (void)state;
  tide_gguf_writer_t *w;
  tide_err_t err;
  assert_int_equal(tide_gguf_writer_new(&w, &err), 0);
  assert_int_equal(tide_gguf_writer_kv_int(w, "a", TIDE_GGUF_UINT32, 1, &err), 0);
  assert_int_equal(tide_gguf_writer_kv_int(w, "a", TIDE_GGUF_UINT32, 2, &err), TIDE_EINVAL);
  assert_non_null(strstr(err.msg, "twice"));
  assert_int_equal(tide_gguf_writer_kv_int(w, "b", TIDE_GGUF_UINT8, 256, &err), TIDE_EINVAL);
  assert_int_equal(tide_gguf_writer_kv_int(w, "b", TIDE_GGUF_INT8, -129, &err), TIDE_EINVAL);
  assert_int_equal(tide_gguf_writer_kv_int(w, "b", TIDE_GGUF_BOOL, 2, &err), TIDE_EINVAL);
  assert_int_equal(tide_gguf_writer_kv_int(w, "b", TIDE_GGUF_STRING, 2, &err), TIDE_EINVAL);
  assert_int_equal(tide_gguf_writer_kv_float(w, "b", TIDE_GGUF_INT32, 1.5, &err), TIDE_EINVAL);
  assert_int_equal(tide_gguf_writer_kv_int(w, "", TIDE_GGUF_INT32, 1, &err), TIDE_EINVAL);
  assert_int_equal(tide_gguf_writer_kv_str(w, "\xff", "x", -1, &err), TIDE_EINVAL);
  assert_int_equal(tide_gguf_writer_set_alignment(w, 24, &err), TIDE_EINVAL);
  assert_int_equal(tide_gguf_writer_kv_int(w, "general.alignment", TIDE_GGUF_UINT64, 32, &err), TIDE_EINVAL);
  tide_tensor_t *f8, *f;
  int64_t s[1] = {4};
  assert_int_equal(tide_tensor_new(TIDE_DTYPE_F8_E4M3, 1, s, &f8, &err), 0);
  assert_int_equal(tide_tensor_new(TIDE_DTYPE_F32, 1, s, &f, &err), 0);
  assert_int_equal(tide_gguf_writer_add_tensor(w, "f8", f8, &err), TIDE_EDTYPE);
  assert_non_null(strstr(err.msg, "'f8'"));
  assert_int_equal(tide_gguf_writer_add_tensor(w, "x", f, &err), 0);
  assert_int_equal(tide_gguf_writer_add_tensor(w, "x", f, &err), TIDE_EINVAL);
  assert_int_equal(tide_gguf_writer_write(w, tu_tmp_path("no/such/dir.gguf"), &err), TIDE_EIO);
  tide_gguf_writer_free(w);
  tide_tensor_release(f8);
  tide_tensor_release(f);
}

/* ---- bad input: one test per kind ------------------------------------------ */

/* A valid file whose last tensor's data ends the file (no trailing padding). */
static bb_t valid_img(void) {
  bb_t b = {0};
  bheader(&b, 3, 2, 2);
  bstr(&b, "general.architecture"), bu32(&b, 8), bstr(&b, "llama");
  bstr(&b, "a.i32"), bu32(&b, 9), bu32(&b, 5), bu64(&b, 2), bu32(&b, 7), bu32(&b, 8);
  uint64_t d0[2] = {2, 2}, d1[1] = {32};
  binfo(&b, "x", 2, d0, 0, 0);
  binfo(&b, "q", 1, d1, 8, 32);
  bpad(&b, 32);
  for (int i = 0; i < 4; i++) bf32(&b, (float)i);
  bpad(&b, 32);
  for (int i = 0; i < 34; i++) bu8(&b, (uint8_t)i);
  return b;
}

static void test_gguf_bad_truncated_everywhere(void **state) {
  (void)state;
  bb_t b = valid_img();
  tide_gguf_t *g;
  tide_err_t err;
  assert_int_equal(tide_gguf_open_memory(b.p, (int64_t)b.n, "whole", &g, &err), 0);
  tide_gguf_close(g);
  for (size_t cut = 0; cut < b.n; cut++) {
    err.msg[0] = 0;
    if (tide_gguf_open_memory(b.p, (int64_t)cut, "cut.gguf", &g, &err) == 0) fail_msg("cut at %zu of %zu opened", cut, b.n);
    assert_non_null(strstr(err.msg, "cut.gguf"));
  }
  size_t cuts[] = {3, 20, 150, b.n - 1};
  const char *needles[] = {"truncated", "truncated", "truncated", "past the end"};
  for (size_t i = 0; i < 4; i++) {
    bb_t c = {0};
    bput(&c, b.p, cuts[i]);
    expect_bad(&c, "trunc.gguf", 0, needles[i]);
  }
  free(b.p);
}

static void test_gguf_bad_magic_and_version(void **state) {
  (void)state;
  bb_t b = valid_img();
  b.p[3] = 'X';
  expect_bad(&b, "magic.gguf", TIDE_EFORMAT, "bad magic");
  b = valid_img();
  b.p[4] = 1;
  expect_bad(&b, "v1.gguf", TIDE_EUNSUPPORTED, "version 1");
  b = valid_img();
  b.p[4] = 4;
  expect_bad(&b, "v4.gguf", TIDE_EUNSUPPORTED, "version 4");
}

static void test_gguf_bad_absurd_counts(void **state) {
  (void)state;
  bb_t b = {0};
  bheader(&b, 3, 1ull << 62, 0);
  expect_bad(&b, "nt.gguf", TIDE_EFORMAT, "tensor count 4611686018427387904 cannot fit");
  bheader(&b, 3, 0, UINT64_MAX);
  expect_bad(&b, "nkv.gguf", TIDE_EFORMAT, "metadata count");
  bheader(&b, 3, 0, 1);
  bstr(&b, "a"), bu32(&b, 9), bu32(&b, 4), bu64(&b, 1ull << 60);
  expect_bad(&b, "arr.gguf", TIDE_EFORMAT, "does not fit in the file");
  bheader(&b, 3, 0, 1);
  bstr(&b, "a"), bu32(&b, 9), bu32(&b, 8), bu64(&b, 3), bstr(&b, "x");
  expect_bad(&b, "arrstr.gguf", TIDE_EFORMAT, "does not fit in the file");
}

static void test_gguf_bad_string_length(void **state) {
  (void)state;
  bb_t b = {0};
  bheader(&b, 3, 0, 1);
  bu64(&b, 1ull << 40), bput(&b, "key", 3), bput(&b, "0123456789abcdef", 16);
  expect_bad(&b, "keylen.gguf", TIDE_EFORMAT, "beyond the end of the file");
  bheader(&b, 3, 0, 1);
  bstr(&b, "k"), bu32(&b, 8), bu64(&b, UINT64_MAX), bput(&b, "xx", 2);
  expect_bad(&b, "strlen.gguf", TIDE_EFORMAT, "beyond the end of the file");
  bheader(&b, 3, 1, 0);
  bu64(&b, 100), bput(&b, "name", 4), bput(&b, "0123456789abcdef", 16);
  expect_bad(&b, "namelen.gguf", TIDE_EFORMAT, "beyond the end of the file");
}

static void test_gguf_bad_value_types(void **state) {
  (void)state;
  bb_t b = {0};
  bheader(&b, 3, 0, 1);
  bstr(&b, "k"), bu32(&b, 13), bu32(&b, 0);
  expect_bad(&b, "type.gguf", TIDE_EFORMAT, "unknown value type 13");
  bheader(&b, 3, 0, 1);
  bstr(&b, "k"), bu32(&b, 9), bu32(&b, 99), bu64(&b, 1), bu32(&b, 0);
  expect_bad(&b, "atype.gguf", TIDE_EFORMAT, "unknown array element type 99");
  bheader(&b, 3, 0, 1);
  bstr(&b, "k"), bu32(&b, 9), bu32(&b, 9), bu64(&b, 1), bu32(&b, 4), bu64(&b, 1), bu32(&b, 5);
  expect_bad(&b, "nested.gguf", TIDE_EUNSUPPORTED, "arrays of arrays");
  bheader(&b, 3, 0, 1);
  bstr(&b, "k"), bu32(&b, 7), bu8(&b, 2);
  expect_bad(&b, "bool.gguf", TIDE_EFORMAT, "neither 0 nor 1");
  bheader(&b, 3, 0, 2);
  bstr(&b, "k"), bu32(&b, 4), bu32(&b, 1);
  bstr(&b, "k"), bu32(&b, 4), bu32(&b, 2);
  expect_bad(&b, "dupkey.gguf", TIDE_EFORMAT, "'k' appears twice");
  bheader(&b, 3, 0, 1);
  bstr(&b, "k\xc3"), bu32(&b, 4), bu32(&b, 1);
  expect_bad(&b, "utf8.gguf", TIDE_EFORMAT, "not valid UTF-8");
  bheader(&b, 3, 0, 1);
  bu64(&b, 3), bput(&b, "k\0k", 3), bu32(&b, 4), bu32(&b, 1);
  expect_bad(&b, "nulkey.gguf", TIDE_EFORMAT, "not valid UTF-8");
}

static void test_gguf_bad_alignment_key(void **state) {
  (void)state;
  bb_t b = {0};
  bheader(&b, 3, 0, 1);
  bstr(&b, "general.alignment"), bu32(&b, 10), bu64(&b, 32);
  expect_bad(&b, "altype.gguf", TIDE_EFORMAT, "expected uint32");
  bheader(&b, 3, 0, 1);
  bstr(&b, "general.alignment"), bu32(&b, 4), bu32(&b, 48);
  expect_bad(&b, "al48.gguf", TIDE_EFORMAT, "48 is not a power of two");
  bheader(&b, 3, 0, 1);
  bstr(&b, "general.alignment"), bu32(&b, 4), bu32(&b, 0);
  expect_bad(&b, "al0.gguf", TIDE_EFORMAT, "not a power of two");
}

static void test_gguf_bad_unknown_ggml_type(void **state) {
  (void)state;
  uint64_t d[1] = {4};
  bb_t b = {0};
  bheader(&b, 3, 1, 0);
  binfo(&b, "t", 1, d, 4, 0); /* 4 was Q4_2, removed from GGML */
  bpad(&b, 32), bput(&b, "0123456789abcdef", 16);
  expect_bad(&b, "ggml4.gguf", TIDE_EDTYPE, "tensor 't': unknown or unsupported GGML type 4");
  bheader(&b, 3, 1, 0);
  binfo(&b, "t", 1, d, 0xffffffffu, 0);
  expect_bad(&b, "ggmlmax.gguf", TIDE_EDTYPE, "GGML type 4294967295");
}

static void test_gguf_bad_dimensions(void **state) {
  (void)state;
  bb_t b = {0};
  uint64_t d5[5] = {1, 1, 1, 1, 1};
  bheader(&b, 3, 1, 0);
  binfo(&b, "t", 5, d5, 0, 0);
  expect_bad(&b, "dims5.gguf", TIDE_EFORMAT, "5 dimensions (at most 4)");
  bheader(&b, 3, 1, 0);
  bstr(&b, "t"), bu32(&b, 0x7fffffffu), bput(&b, "0123456789abcdef0123456789abcdef", 32);
  expect_bad(&b, "dimsbig.gguf", TIDE_EFORMAT, "2147483647 dimensions");
  uint64_t big[3] = {1ull << 32, 1ull << 32, 1ull << 32};
  bheader(&b, 3, 1, 0);
  binfo(&b, "t", 3, big, 0, 0);
  expect_bad(&b, "overflow.gguf", TIDE_EFORMAT, "overflows");
  uint64_t neg[1] = {UINT64_MAX};
  bheader(&b, 3, 1, 0);
  binfo(&b, "t", 1, neg, 0, 0);
  expect_bad(&b, "negdim.gguf", TIDE_EFORMAT, "dimension 0 is 18446744073709551615");
  uint64_t q[2] = {16, 2}; /* Q8_0 rows must hold whole 32-element blocks */
  bheader(&b, 3, 1, 0);
  binfo(&b, "t", 2, q, 8, 0);
  bpad(&b, 32), bput(&b, "0123456789abcdef0123456789abcdef0123456789abcdef", 48);
  expect_bad(&b, "block.gguf", TIDE_ESHAPE, "not a multiple of q8_0's block of 32");
}

static void test_gguf_bad_offsets(void **state) {
  (void)state;
  bb_t b = {0};
  uint64_t d[1] = {2};
  bheader(&b, 3, 1, 0);
  binfo(&b, "t", 1, d, 0, 4);
  bpad(&b, 32), bput(&b, "0123456789abcdef", 16);
  expect_bad(&b, "unaligned.gguf", TIDE_EFORMAT, "offset 4 is not a multiple of the alignment 32");
  bheader(&b, 3, 1, 0);
  binfo(&b, "t", 1, d, 0, 32);
  bpad(&b, 32), bput(&b, "0123456789abcdef", 16);
  expect_bad(&b, "past.gguf", TIDE_ERANGE, "go past the end of the file");
  bheader(&b, 3, 1, 0);
  binfo(&b, "t", 1, d, 0, 0xffffffffffffffe0ull);
  bpad(&b, 32), bput(&b, "0123456789abcdef", 16);
  expect_bad(&b, "huge.gguf", TIDE_ERANGE, "out of range");
  uint64_t d16[1] = {16}; /* 64 bytes at 0 and 8 bytes at 32 share bytes */
  bheader(&b, 3, 2, 0);
  binfo(&b, "a", 1, d16, 0, 0);
  binfo(&b, "b", 1, d, 0, 32);
  bpad(&b, 32);
  for (int i = 0; i < 16; i++) bf32(&b, 0);
  expect_bad(&b, "overlap.gguf", TIDE_EFORMAT, "tensors 'a' and 'b' overlap");
  bheader(&b, 3, 2, 0);
  binfo(&b, "a", 1, d, 0, 0);
  binfo(&b, "a", 1, d, 0, 32);
  bpad(&b, 32);
  for (int i = 0; i < 16; i++) bf32(&b, 0);
  expect_bad(&b, "dupname.gguf", TIDE_EFORMAT, "tensor 'a' appears twice");
}

/* ---- fuzz seeds and crash regressions ------------------------------------- */

static void test_gguf_fuzz_seeds_and_crashes_replay(void **state) {
  (void)state;
  static const char *dirs[] = {"fuzz/seeds/gguf", "fuzz/crashes"};
  int seeds = 0;
  for (int k = 0; k < 2; k++) {
    DIR *d = opendir(dirs[k]);
    if (!d) continue;
    struct dirent *de;
    while ((de = readdir(d))) {
      if (de->d_name[0] == '.') continue;
      char p[1024];
      snprintf(p, sizeof p, "%s/%s", dirs[k], de->d_name);
      size_t n;
      uint8_t *buf = read_file(p, &n);
      tide_gguf_t *g;
      tide_err_t err;
      int rc = tide_gguf_open_memory(buf, (int64_t)n, p, &g, &err);
      if (k == 0) { /* seeds are valid files */
        if (rc) fail_msg("seed %s: %s", p, err.msg);
        seeds++;
      }
      if (rc == 0) {
        for (int64_t i = 0; i < tide_gguf_kv_count(g); i++)
          for (int64_t j = 0; j < tide_gguf_kv_arr_len(g, i); j++) (void)tide_gguf_kv_float(g, i, j);
        for (int64_t i = 0; i < tide_gguf_tensor_count(g); i++) {
          tide_tensor_t *t;
          if (tide_gguf_tensor(g, i, &t, &err) == 0) tide_tensor_release(t);
        }
        tide_gguf_close(g);
      } else {
        assert_non_null(strstr(err.msg, p));
      }
      free(buf);
    }
    closedir(d);
  }
  if (seeds == 0) skip(); /* not run from the repository root */
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_gguf_writer_matches_v3_layout),
      cmocka_unit_test(test_gguf_read_back_every_type),
      cmocka_unit_test(test_gguf_read_back_tensor_types_and_alignment),
      cmocka_unit_test(test_gguf_reads_version_2_and_empty_file),
      cmocka_unit_test(test_gguf_writer_rejects_bad_input),
      cmocka_unit_test(test_gguf_bad_truncated_everywhere),
      cmocka_unit_test(test_gguf_bad_magic_and_version),
      cmocka_unit_test(test_gguf_bad_absurd_counts),
      cmocka_unit_test(test_gguf_bad_string_length),
      cmocka_unit_test(test_gguf_bad_value_types),
      cmocka_unit_test(test_gguf_bad_alignment_key),
      cmocka_unit_test(test_gguf_bad_unknown_ggml_type),
      cmocka_unit_test(test_gguf_bad_dimensions),
      cmocka_unit_test(test_gguf_bad_offsets),
      cmocka_unit_test(test_gguf_fuzz_seeds_and_crashes_replay),
  };
  return cmocka_run_group_tests(tests, tu_group_setup, tu_group_teardown);
}
