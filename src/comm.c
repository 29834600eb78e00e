/* comm.c: the communicator front (argument checks, timing, byte counts,
 * requests) and the "local" backend (ranks as threads of one process).
 * The MPI backend is in comm_mpi.c. See comm.h for the design. */
#define TIDE_COMM_INTERNAL
#include "comm.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "dtype.h"

_Static_assert(TIDE_COMM_OP_COUNT == 8, "tide_comm_stats_t arrays have 8 entries");

/* ---- common helpers --------------------------------------------------------- */

int64_t tide_comm_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int64_t tide_comm_thread_cpu_ns(void) {
  struct timespec ts;
  if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0) return 0;
  return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int tide_comm_dtype_size(int32_t dtype) {
  switch (dtype) {
  case TIDE_DTYPE_F32: return 4;
  case TIDE_DTYPE_F64: return 8;
  case TIDE_DTYPE_I32: return 4;
  case TIDE_DTYPE_I64: return 8;
  default: return 0;
  }
}

#define REDUCE_LOOP(T)                                                            \
  do {                                                                            \
    T *a = (T *)acc;                                                              \
    const T *b = (const T *)x;                                                    \
    if (op == TIDE_COMM_SUM)                                                      \
      for (int64_t i = 0; i < count; i++) a[i] += b[i];                           \
    else if (op == TIDE_COMM_MAX)                                                 \
      for (int64_t i = 0; i < count; i++) a[i] = b[i] > a[i] ? b[i] : a[i];       \
    else                                                                          \
      for (int64_t i = 0; i < count; i++) a[i] = b[i] < a[i] ? b[i] : a[i];       \
  } while (0)

void tide_comm_reduce_into(void *acc, const void *x, int64_t count, int32_t dtype, int32_t op) {
  switch (dtype) {
  case TIDE_DTYPE_F32: REDUCE_LOOP(float); break;
  case TIDE_DTYPE_F64: REDUCE_LOOP(double); break;
  case TIDE_DTYPE_I32: REDUCE_LOOP(int32_t); break;
  case TIDE_DTYPE_I64: REDUCE_LOOP(int64_t); break;
  default: break;
  }
}

static const char *const op_names[TIDE_COMM_OP_COUNT] = {"barrier", "allreduce", "allgather", "alltoallv",
                                                         "bcast",   "send",      "recv",      "split"};

const char *tide_comm_op_name(int32_t op) {
  return (op >= 0 && op < TIDE_COMM_OP_COUNT) ? op_names[op] : "?";
}

int32_t tide_comm_rank(const tide_comm_t *c) { return c ? c->rank : -1; }
int32_t tide_comm_size(const tide_comm_t *c) { return c ? c->size : 0; }
const char *tide_comm_backend(const tide_comm_t *c) { return c ? c->vt->name : "none"; }
void tide_comm_set_timeout(tide_comm_t *c, int64_t timeout_ms) {
  if (c) c->timeout_ms = timeout_ms > 0 ? timeout_ms : 0;
}

void tide_comm_stats(const tide_comm_t *c, tide_comm_stats_t *out) {
  if (!out) return;
  if (!c) {
    memset(out, 0, sizeof *out);
    return;
  }
  *out = c->stats;
}

void tide_comm_stats_reset(tide_comm_t *c) {
  if (c) memset(&c->stats, 0, sizeof c->stats);
}

void tide_comm_free(tide_comm_t *c) {
  if (c) c->vt->free(c);
}

/* ---- the front: checks, requests, timing ------------------------------------- */

static int check_comm(const tide_comm_t *c, const char *what, tide_err_t *err) {
  if (!c) return tide_err_set(err, TIDE_EINVAL, "comm %s: communicator is NULL", what);
  return 0;
}

/* Report a failed argument check to the backend, then return rc. */
static int bad_call(tide_comm_t *c, int rc, tide_err_t *err) {
  if (rc && c && c->vt->bad_call) c->vt->bad_call(c, err);
  return rc;
}

static tide_comm_req_t *req_new(tide_comm_t *c, int32_t op, int64_t bytes, tide_err_t *err) {
  tide_comm_req_t *r = calloc(1, sizeof *r);
  if (!r) {
    tide_err_set(err, TIDE_ENOMEM, "comm %s: out of memory", tide_comm_op_name(op));
    return NULL;
  }
  r->comm = c;
  r->op = op;
  r->bytes = bytes;
  r->t_post = tide_comm_now_ns();
  r->t_post_cpu = tide_comm_thread_cpu_ns();
  return r;
}

static void req_free(tide_comm_req_t *r) {
  if (!r) return;
  if (r->comm && r->comm->vt->req_release) r->comm->vt->req_release(r);
  free(r);
}

static void req_account(tide_comm_req_t *r) {
  tide_comm_stats_t *s = &r->comm->stats;
  int64_t now = tide_comm_now_ns();
  s->calls[r->op] += 1;
  s->bytes[r->op] += r->bytes;
  s->ns[r->op] += r->inside_ns;
  s->span_ns[r->op] += now - r->t_post;
  s->cpu_ns[r->op] += r->inside_cpu_ns;
}

/* Post finished (rc from the backend): either complete it now (blocking) or
 * hand the request out. */
static int post_done(tide_comm_req_t *r, int rc, tide_comm_req_t **out, tide_err_t *err) {
  if (rc != 0) {
    req_free(r);
    return rc;
  }
  if (out) {
    r->inside_ns += tide_comm_now_ns() - r->t_post;
    r->inside_cpu_ns += tide_comm_thread_cpu_ns() - r->t_post_cpu;
    *out = r;
    return 0;
  }
  int32_t done = 0;
  rc = r->comm->vt->progress(r, 1, &done, err);
  r->inside_ns = tide_comm_now_ns() - r->t_post;
  r->inside_cpu_ns = tide_comm_thread_cpu_ns() - r->t_post_cpu;
  if (rc == 0) req_account(r);
  req_free(r);
  return rc;
}

int tide_comm_wait(tide_comm_req_t *r, tide_err_t *err) {
  if (!r) return tide_err_set(err, TIDE_EINVAL, "comm wait: request is NULL");
  int64_t t0 = tide_comm_now_ns(), c0 = tide_comm_thread_cpu_ns();
  int32_t done = 0;
  int rc = r->comm->vt->progress(r, 1, &done, err);
  r->inside_ns += tide_comm_now_ns() - t0;
  r->inside_cpu_ns += tide_comm_thread_cpu_ns() - c0;
  if (rc == 0) req_account(r);
  req_free(r);
  return rc;
}

int tide_comm_test(tide_comm_req_t *r, int32_t *done, tide_err_t *err) {
  if (!r || !done) return tide_err_set(err, TIDE_EINVAL, "comm test: request or done is NULL");
  int64_t t0 = tide_comm_now_ns(), c0 = tide_comm_thread_cpu_ns();
  *done = 0;
  int rc = r->comm->vt->progress(r, 0, done, err);
  r->inside_ns += tide_comm_now_ns() - t0;
  r->inside_cpu_ns += tide_comm_thread_cpu_ns() - c0;
  if (rc != 0) {
    *done = 1;
    req_free(r);
    return rc;
  }
  if (*done) {
    req_account(r);
    req_free(r);
  }
  return 0;
}

int tide_comm_barrier(tide_comm_t *c, tide_err_t *err) {
  int rc = check_comm(c, "barrier", err);
  if (rc) return rc;
  tide_comm_req_t *r = req_new(c, TIDE_COMM_OP_BARRIER, 0, err);
  if (!r) return TIDE_ENOMEM;
  return post_done(r, c->vt->barrier(c, r, err), NULL, err);
}

static int allreduce_common_checked(tide_comm_t *c, const void *s, void *d, int64_t count, int32_t dtype, int32_t op,
                            tide_comm_req_t **out, tide_err_t *err) {
  int rc = check_comm(c, "allreduce", err);
  if (rc) return rc;
  int es = tide_comm_dtype_size(dtype);
  if (!es) return tide_err_set(err, TIDE_EDTYPE, "comm allreduce: dtype %d not supported (f32, f64, i32, i64)", dtype);
  if (op < TIDE_COMM_SUM || op > TIDE_COMM_MIN) return tide_err_set(err, TIDE_EINVAL, "comm allreduce: bad op %d", op);
  if (count < 0) return tide_err_set(err, TIDE_EINVAL, "comm allreduce: negative count %lld", (long long)count);
  if (count > 0 && (!s || !d)) return tide_err_set(err, TIDE_EINVAL, "comm allreduce: NULL buffer");
  tide_comm_req_t *r = req_new(c, TIDE_COMM_OP_ALLREDUCE, count * es, err);
  if (!r) return TIDE_ENOMEM;
  return post_done(r, c->vt->allreduce(c, s, d, count, dtype, op, r, err), out, err);
}

static int allreduce_common(tide_comm_t *c, const void *s, void *d, int64_t count, int32_t dtype, int32_t op,
                            tide_comm_req_t **out, tide_err_t *err) {
  return bad_call(c, allreduce_common_checked(c, s, d, count, dtype, op, out, err), err);
}

int tide_comm_allreduce(tide_comm_t *c, const void *s, void *d, int64_t count, int32_t dtype, int32_t op,
                        tide_err_t *err) {
  return allreduce_common(c, s, d, count, dtype, op, NULL, err);
}

int tide_comm_iallreduce(tide_comm_t *c, const void *s, void *d, int64_t count, int32_t dtype, int32_t op,
                         tide_comm_req_t **req, tide_err_t *err) {
  if (!req) return tide_err_set(err, TIDE_EINVAL, "comm iallreduce: req is NULL");
  return allreduce_common(c, s, d, count, dtype, op, req, err);
}

static int allgather_common_checked(tide_comm_t *c, const void *s, void *d, int64_t n, tide_comm_req_t **out,
                            tide_err_t *err) {
  int rc = check_comm(c, "allgather", err);
  if (rc) return rc;
  if (n < 0) return tide_err_set(err, TIDE_EINVAL, "comm allgather: negative size %lld", (long long)n);
  if (n > 0 && (!s || !d)) return tide_err_set(err, TIDE_EINVAL, "comm allgather: NULL buffer");
  tide_comm_req_t *r = req_new(c, TIDE_COMM_OP_ALLGATHER, n, err);
  if (!r) return TIDE_ENOMEM;
  return post_done(r, c->vt->allgather(c, s, d, n, r, err), out, err);
}

static int allgather_common(tide_comm_t *c, const void *s, void *d, int64_t n, tide_comm_req_t **out,
                            tide_err_t *err) {
  return bad_call(c, allgather_common_checked(c, s, d, n, out, err), err);
}

int tide_comm_allgather(tide_comm_t *c, const void *s, void *d, int64_t n, tide_err_t *err) {
  return allgather_common(c, s, d, n, NULL, err);
}

int tide_comm_iallgather(tide_comm_t *c, const void *s, void *d, int64_t n, tide_comm_req_t **req,
                         tide_err_t *err) {
  if (!req) return tide_err_set(err, TIDE_EINVAL, "comm iallgather: req is NULL");
  return allgather_common(c, s, d, n, req, err);
}

/* Counts non-negative, displacements non-negative, buffer present when needed. */
static int check_vec(const char *what, int32_t size, const void *buf, const int64_t *cnt, const int64_t *dsp,
                     int64_t *total, tide_err_t *err) {
  if (!cnt || !dsp) return tide_err_set(err, TIDE_EINVAL, "comm alltoallv: %s counts/displacements are NULL", what);
  int64_t t = 0;
  for (int32_t i = 0; i < size; i++) {
    if (cnt[i] < 0 || dsp[i] < 0)
      return tide_err_set(err, TIDE_EINVAL, "comm alltoallv: negative %s count or displacement for peer %d", what, i);
    t += cnt[i];
  }
  if (t > 0 && !buf) return tide_err_set(err, TIDE_EINVAL, "comm alltoallv: %s buffer is NULL", what);
  *total = t;
  return 0;
}

static int alltoallv_common_checked(tide_comm_t *c, const void *s, const int64_t *sc, const int64_t *sd, void *d,
                            const int64_t *rc_, const int64_t *rd, tide_comm_req_t **out, tide_err_t *err) {
  int rc = check_comm(c, "alltoallv", err);
  if (rc) return rc;
  int64_t st = 0, rt = 0;
  if ((rc = check_vec("send", c->size, s, sc, sd, &st, err))) return rc;
  if ((rc = check_vec("recv", c->size, d, rc_, rd, &rt, err))) return rc;
  tide_comm_req_t *r = req_new(c, TIDE_COMM_OP_ALLTOALLV, st, err);
  if (!r) return TIDE_ENOMEM;
  return post_done(r, c->vt->alltoallv(c, s, sc, sd, d, rc_, rd, r, err), out, err);
}

static int alltoallv_common(tide_comm_t *c, const void *s, const int64_t *sc, const int64_t *sd, void *d,
                            const int64_t *rc, const int64_t *rd, tide_comm_req_t **out, tide_err_t *err) {
  return bad_call(c, alltoallv_common_checked(c, s, sc, sd, d, rc, rd, out, err), err);
}

int tide_comm_alltoallv(tide_comm_t *c, const void *s, const int64_t *sc, const int64_t *sd, void *d,
                        const int64_t *rc, const int64_t *rd, tide_err_t *err) {
  return alltoallv_common(c, s, sc, sd, d, rc, rd, NULL, err);
}

int tide_comm_ialltoallv(tide_comm_t *c, const void *s, const int64_t *sc, const int64_t *sd, void *d,
                         const int64_t *rc, const int64_t *rd, tide_comm_req_t **req, tide_err_t *err) {
  if (!req) return tide_err_set(err, TIDE_EINVAL, "comm ialltoallv: req is NULL");
  return alltoallv_common(c, s, sc, sd, d, rc, rd, req, err);
}

int tide_comm_bcast(tide_comm_t *c, void *buf, int64_t n, int32_t root, tide_err_t *err) {
  int rc = check_comm(c, "bcast", err);
  if (rc) return rc;
  if (n < 0 || (n > 0 && !buf))
    return bad_call(c, tide_err_set(err, TIDE_EINVAL, "comm bcast: bad buffer or size"), err);
  if (root < 0 || root >= c->size)
    return bad_call(c, tide_err_set(err, TIDE_EINVAL, "comm bcast: root %d out of range [0, %d)", root, c->size),
                    err);
  tide_comm_req_t *r = req_new(c, TIDE_COMM_OP_BCAST, c->rank == root ? n : 0, err);
  if (!r) return TIDE_ENOMEM;
  return post_done(r, c->vt->bcast(c, buf, n, root, r, err), NULL, err);
}

static int p2p_check(tide_comm_t *c, const char *what, const void *buf, int64_t n, int32_t peer, int32_t tag,
                     tide_err_t *err) {
  int rc = check_comm(c, what, err);
  if (rc) return rc;
  if (n < 0 || (n > 0 && !buf)) return tide_err_set(err, TIDE_EINVAL, "comm %s: bad buffer or size", what);
  if (peer < 0 || peer >= c->size)
    return tide_err_set(err, TIDE_EINVAL, "comm %s: peer %d out of range [0, %d)", what, peer, c->size);
  if (tag < 0) return tide_err_set(err, TIDE_EINVAL, "comm %s: negative tag %d", what, tag);
  return 0;
}

int tide_comm_isend(tide_comm_t *c, const void *buf, int64_t n, int32_t dest, int32_t tag, tide_comm_req_t **req,
                    tide_err_t *err) {
  int rc = p2p_check(c, "send", buf, n, dest, tag, err);
  if (rc) return bad_call(c, rc, err);
  tide_comm_req_t *r = req_new(c, TIDE_COMM_OP_SEND, n, err);
  if (!r) return TIDE_ENOMEM;
  return post_done(r, c->vt->send(c, buf, n, dest, tag, r, err), req, err);
}

int tide_comm_send(tide_comm_t *c, const void *buf, int64_t n, int32_t dest, int32_t tag, tide_err_t *err) {
  return tide_comm_isend(c, buf, n, dest, tag, NULL, err);
}

int tide_comm_irecv(tide_comm_t *c, void *buf, int64_t n, int32_t src, int32_t tag, tide_comm_req_t **req,
                    tide_err_t *err) {
  int rc = p2p_check(c, "recv", buf, n, src, tag, err);
  if (rc) return bad_call(c, rc, err);
  tide_comm_req_t *r = req_new(c, TIDE_COMM_OP_RECV, n, err);
  if (!r) return TIDE_ENOMEM;
  return post_done(r, c->vt->recv(c, buf, n, src, tag, r, err), req, err);
}

int tide_comm_recv(tide_comm_t *c, void *buf, int64_t n, int32_t src, int32_t tag, tide_err_t *err) {
  return tide_comm_irecv(c, buf, n, src, tag, NULL, err);
}

int tide_comm_split(tide_comm_t *c, int32_t color, int32_t key, tide_comm_t **out, tide_err_t *err) {
  int rc = check_comm(c, "split", err);
  if (rc) return rc;
  if (!out) return tide_err_set(err, TIDE_EINVAL, "comm split: out is NULL");
  *out = NULL;
  if (color < TIDE_COMM_UNDEFINED) return tide_err_set(err, TIDE_EINVAL, "comm split: negative color %d", color);
  int64_t t0 = tide_comm_now_ns(), c0 = tide_comm_thread_cpu_ns();
  rc = c->vt->split(c, color, key, out, err);
  int64_t dt = tide_comm_now_ns() - t0;
  if (rc == 0) {
    c->stats.calls[TIDE_COMM_OP_SPLIT] += 1;
    c->stats.cpu_ns[TIDE_COMM_OP_SPLIT] += tide_comm_thread_cpu_ns() - c0;
    c->stats.ns[TIDE_COMM_OP_SPLIT] += dt;
    c->stats.span_ns[TIDE_COMM_OP_SPLIT] += dt;
    if (*out) (*out)->timeout_ms = c->timeout_ms;
  }
  return rc;
}

/* ==== local backend ============================================================ */

typedef struct lgroup lgroup_t;

typedef struct lpost { /* what one rank posted for a collective */
  const void *sbuf;
  void *rbuf;
  const int64_t *sc, *sd, *rc, *rd;
  int64_t count;
  int32_t dtype, op, root, color, key, posted;
  lgroup_t *newgroup; /* split: set by the leader of each color */
} lpost_t;

/* One collective in flight on a group, found by its sequence number (every
 * member numbers its collectives on the group 0, 1, 2, ...). Any number may
 * be in flight; a slot is recycled when every member has left it. */
typedef struct lslot {
  struct lslot *next;
  int64_t seq;
  int32_t kind, nposted, ndone, nleft;
  int64_t t_all; /* ns when the last member posted (the emulated link starts then) */
  lpost_t *p;    /* one per member */
} lslot_t;

typedef struct lmsg {
  struct lmsg *next;
  int32_t src, tag;
  int64_t nbytes;
  unsigned char data[];
} lmsg_t;

struct lgroup {
  lgroup_t *next; /* ctx->groups */
  int32_t size, refs;
  lslot_t *active, *spare; /* collectives in flight; recycled slots */
  lmsg_t **mbox; /* per member: messages to it, in arrival order */
};

typedef struct lcomm {
  tide_comm_t base;
  tide_comm_local_t *ctx;
  lgroup_t *g;
  int64_t seq; /* next collective's sequence number */
  int64_t link_free; /* emulated link: ns when this rank's link is free again */
  int is_world;
  struct lcomm *prev, *next; /* ctx->splits */
} lcomm_t;

struct tide_comm_local {
  int32_t n;
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int aborted;
  char why[512];
  int64_t link_latency_ns; /* emulated link (tide_comm_local_set_link); 0 and 0: none */
  double link_bytes_per_ns;
  lcomm_t **world;
  lgroup_t *groups;
  lcomm_t *splits;
};

typedef struct lreq { /* backend part of a request */
  int64_t seq;
  int32_t kind, state; /* 0 posted, 1 data moved, 2 complete */
  int64_t ready;       /* emulated link: ns when the data has arrived (0: not planned yet) */
  lslot_t *slot;       /* the collective's slot, until this rank leaves it */
  void *tmp;           /* allreduce: the sum until all have read */
  int32_t err_code;
  char err_msg[256];
  /* recv */
  void *buf;
  int64_t nbytes;
  int32_t src, tag;
} lreq_t;

static const tide_comm_vtbl_t local_vtbl;

static lgroup_t *lgroup_new(int32_t size) {
  lgroup_t *g = calloc(1, sizeof *g);
  if (!g) return NULL;
  g->size = size;
  g->mbox = calloc((size_t)size, sizeof *g->mbox);
  if (!g->mbox) {
    free(g);
    return NULL;
  }
  return g;
}

static void slot_list_free(lslot_t *s) {
  while (s) {
    lslot_t *nx = s->next;
    free(s->p);
    free(s);
    s = nx;
  }
}

/* The slot of collective seq on g, made (or recycled) on first use (ctx->mu held). */
static lslot_t *slot_get(lgroup_t *g, int64_t seq, int32_t kind) {
  for (lslot_t *s = g->active; s; s = s->next)
    if (s->seq == seq) return s;
  lslot_t *s = g->spare;
  if (s) {
    g->spare = s->next;
  } else {
    s = calloc(1, sizeof *s);
    if (!s) return NULL;
    s->p = calloc((size_t)g->size, sizeof(lpost_t));
    if (!s->p) {
      free(s);
      return NULL;
    }
  }
  s->seq = seq;
  s->kind = kind;
  s->nposted = s->ndone = s->nleft = 0;
  s->t_all = 0;
  memset(s->p, 0, (size_t)g->size * sizeof(lpost_t));
  s->next = g->active;
  g->active = s;
  return s;
}

/* A member leaves slot s; the last one recycles it (ctx->mu held). */
static void slot_leave(lgroup_t *g, lslot_t *s) {
  if (++s->nleft < g->size) return;
  for (lslot_t **pp = &g->active; *pp; pp = &(*pp)->next)
    if (*pp == s) {
      *pp = s->next;
      break;
    }
  s->next = g->spare;
  g->spare = s;
}

static void lgroup_destroy(lgroup_t *g) {
  slot_list_free(g->active);
  slot_list_free(g->spare);
  for (int32_t r = 0; r < g->size; r++) {
    lmsg_t *m = g->mbox[r];
    while (m) {
      lmsg_t *nx = m->next;
      free(m);
      m = nx;
    }
  }
  free(g->mbox);
  free(g);
}

/* ctx->mu held. */
static void lgroup_unref(tide_comm_local_t *ctx, lgroup_t *g) {
  if (--g->refs > 0) return;
  for (lgroup_t **pp = &ctx->groups; *pp; pp = &(*pp)->next)
    if (*pp == g) {
      *pp = g->next;
      break;
    }
  lgroup_destroy(g);
}

static lcomm_t *lcomm_new(tide_comm_local_t *ctx, lgroup_t *g, int32_t rank) {
  lcomm_t *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  c->base.vt = &local_vtbl;
  c->base.rank = rank;
  c->base.size = g->size;
  c->base.impl = c;
  c->ctx = ctx;
  c->g = g;
  g->refs++;
  return c;
}

int tide_comm_local_new(int32_t n, tide_comm_local_t **out, tide_err_t *err) {
  if (!out) return tide_err_set(err, TIDE_EINVAL, "comm local: out is NULL");
  *out = NULL;
  if (n < 1 || n > 4096) return tide_err_set(err, TIDE_EINVAL, "comm local: rank count %d out of range [1, 4096]", n);
  tide_comm_local_t *ctx = calloc(1, sizeof *ctx);
  if (!ctx) return tide_err_set(err, TIDE_ENOMEM, "comm local: out of memory");
  ctx->n = n;
  pthread_mutex_init(&ctx->mu, NULL);
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_cond_init(&ctx->cv, &ca);
  pthread_condattr_destroy(&ca);
  ctx->world = calloc((size_t)n, sizeof *ctx->world);
  lgroup_t *g = lgroup_new(n);
  if (!ctx->world || !g) {
    if (g) lgroup_destroy(g);
    free(ctx->world);
    free(ctx);
    return tide_err_set(err, TIDE_ENOMEM, "comm local: out of memory");
  }
  ctx->groups = g;
  for (int32_t r = 0; r < n; r++) {
    ctx->world[r] = lcomm_new(ctx, g, r);
    if (!ctx->world[r]) {
      tide_comm_local_free(ctx);
      return tide_err_set(err, TIDE_ENOMEM, "comm local: out of memory");
    }
    ctx->world[r]->is_world = 1;
  }
  *out = ctx;
  return 0;
}

void tide_comm_local_free(tide_comm_local_t *ctx) {
  if (!ctx) return;
  while (ctx->splits) {
    lcomm_t *c = ctx->splits;
    ctx->splits = c->next;
    lgroup_unref(ctx, c->g);
    free(c);
  }
  for (int32_t r = 0; r < ctx->n; r++)
    if (ctx->world[r]) {
      lgroup_unref(ctx, ctx->world[r]->g);
      free(ctx->world[r]);
    }
  while (ctx->groups) { /* not reachable unless refs were lost; be safe */
    lgroup_t *g = ctx->groups;
    ctx->groups = g->next;
    lgroup_destroy(g);
  }
  free(ctx->world);
  pthread_cond_destroy(&ctx->cv);
  pthread_mutex_destroy(&ctx->mu);
  free(ctx);
}

int32_t tide_comm_local_size(const tide_comm_local_t *ctx) { return ctx ? ctx->n : 0; }

int tide_comm_local_set_link(tide_comm_local_t *ctx, int64_t latency_ns, double bytes_per_ns, tide_err_t *err) {
  if (!ctx) return tide_err_set(err, TIDE_EINVAL, "comm local link: context is NULL");
  if (latency_ns < 0 || !(bytes_per_ns >= 0) || bytes_per_ns > 1e12)
    return tide_err_set(err, TIDE_EINVAL, "comm local link: bad latency %lld ns or bandwidth %g bytes/ns",
                        (long long)latency_ns, bytes_per_ns);
  pthread_mutex_lock(&ctx->mu);
  ctx->link_latency_ns = latency_ns;
  ctx->link_bytes_per_ns = bytes_per_ns;
  pthread_mutex_unlock(&ctx->mu);
  return 0;
}

tide_comm_t *tide_comm_local_world(tide_comm_local_t *ctx, int32_t r) {
  if (!ctx || r < 0 || r >= ctx->n) return NULL;
  return &ctx->world[r]->base;
}

/* ctx->mu held. */
static void abort_locked(tide_comm_local_t *ctx, int32_t rank, const char *why) {
  if (!ctx->aborted) {
    ctx->aborted = 1;
    snprintf(ctx->why, sizeof ctx->why, "rank %d: %s", rank, why ? why : "aborted");
  }
  pthread_cond_broadcast(&ctx->cv);
}

void tide_comm_local_abort(tide_comm_local_t *ctx, int32_t rank, const char *why) {
  if (!ctx) return;
  pthread_mutex_lock(&ctx->mu);
  abort_locked(ctx, rank, why);
  pthread_mutex_unlock(&ctx->mu);
}

int tide_comm_local_aborted(const tide_comm_local_t *ctx, char *msg, size_t n) {
  if (!ctx) return 0;
  tide_comm_local_t *m = (tide_comm_local_t *)ctx; /* the lock is not part of the value */
  pthread_mutex_lock(&m->mu);
  int a = m->aborted;
  if (a && msg && n) snprintf(msg, n, "%s", m->why);
  pthread_mutex_unlock(&m->mu);
  return a;
}

/* The world rank behind rank r of c (for messages naming ranks). */
static int32_t lworld_rank(const lcomm_t *c) { return c->base.rank; }

static int64_t deadline_of(const tide_comm_t *c) {
  return c->timeout_ms > 0 ? tide_comm_now_ns() + c->timeout_ms * 1000000LL : 0;
}

/* Wait on the context's condition (ctx->mu held). Returns 0, or an error when
 * the context is aborted or the deadline passed (then the context is
 * aborted, naming `what` and, with a slot, the ranks that have not posted). */
static int lwait(lcomm_t *c, int64_t deadline, const char *what, const lslot_t *s, tide_err_t *err) {
  tide_comm_local_t *ctx = c->ctx;
  if (ctx->aborted) return tide_err_set(err, TIDE_ESTATE, "comm aborted: %s", ctx->why);
  if (deadline == 0) {
    pthread_cond_wait(&ctx->cv, &ctx->mu);
  } else {
    struct timespec ts = {(time_t)(deadline / 1000000000LL), (long)(deadline % 1000000000LL)};
    pthread_cond_timedwait(&ctx->cv, &ctx->mu, &ts);
    if (!ctx->aborted && tide_comm_now_ns() >= deadline) {
      char why[400];
      int len = snprintf(why, sizeof why, "%s timed out after %lld ms", what, (long long)c->base.timeout_ms);
      if (s && s->nposted < c->base.size) {
        len += snprintf(why + len, sizeof why - (size_t)len, " waiting for rank(s)");
        for (int32_t i = 0; i < c->base.size && len < (int)sizeof why - 12; i++)
          if (!s->p[i].posted) len += snprintf(why + len, sizeof why - (size_t)len, " %d", i);
      }
      abort_locked(ctx, lworld_rank(c), why);
      return tide_err_set(err, TIDE_ESTATE, "comm: %s", ctx->why);
    }
  }
  if (ctx->aborted) return tide_err_set(err, TIDE_ESTATE, "comm aborted: %s", ctx->why);
  return 0;
}

static void lreq_fail(lreq_t *q, int code, const char *fmt, const char *a, long long x, long long y, long long z) {
  if (q->err_code) return;
  q->err_code = code;
  snprintf(q->err_msg, sizeof q->err_msg, fmt, a, x, y, z);
}

/* Post this rank's part of a collective into its slot. */
static int lpost(lcomm_t *c, tide_comm_req_t *r, int32_t kind, const lpost_t *mine, size_t tmp_bytes,
                 tide_err_t *err) {
  lreq_t *q = calloc(1, sizeof *q);
  if (!q) return tide_err_set(err, TIDE_ENOMEM, "comm %s: out of memory", tide_comm_op_name(kind));
  if (tmp_bytes) {
    q->tmp = malloc(tmp_bytes);
    if (!q->tmp) {
      free(q);
      return tide_err_set(err, TIDE_ENOMEM, "comm %s: out of memory", tide_comm_op_name(kind));
    }
  }
  r->impl = q;
  q->kind = kind;
  q->seq = c->seq++;
  tide_comm_local_t *ctx = c->ctx;
  int rc = 0;
  pthread_mutex_lock(&ctx->mu);
  lslot_t *s = NULL;
  if (ctx->aborted) rc = tide_err_set(err, TIDE_ESTATE, "comm aborted: %s", ctx->why);
  if (rc == 0 && !(s = slot_get(c->g, q->seq, kind))) {
    abort_locked(ctx, lworld_rank(c), "out of memory");
    rc = tide_err_set(err, TIDE_ENOMEM, "comm %s: out of memory", tide_comm_op_name(kind));
  }
  if (rc == 0) {
    if (s->kind != kind) {
      char why[200];
      snprintf(why, sizeof why, "collective mismatch: called %s while other ranks called %s",
               tide_comm_op_name(kind), tide_comm_op_name(s->kind));
      abort_locked(ctx, lworld_rank(c), why);
      rc = tide_err_set(err, TIDE_ESTATE, "comm: %s", ctx->why);
    }
  }
  if (rc == 0) {
    s->p[c->base.rank] = *mine;
    s->p[c->base.rank].posted = 1;
    s->p[c->base.rank].newgroup = NULL;
    s->nposted++;
    if (s->nposted == c->base.size) s->t_all = tide_comm_now_ns();
    q->slot = s;
    pthread_cond_broadcast(&ctx->cv);
  }
  pthread_mutex_unlock(&ctx->mu);
  return rc;
}

/* Move the data of a collective once every rank posted (ctx->mu not held). */
static void lmove(lcomm_t *c, lslot_t *s, lreq_t *q) {
  int32_t me = c->base.rank, n = c->base.size;
  lpost_t *p = s->p, *m = &s->p[me];
  switch (q->kind) {
  case TIDE_COMM_OP_ALLREDUCE: {
    for (int32_t i = 0; i < n; i++)
      if (p[i].count != m->count || p[i].dtype != m->dtype || p[i].op != m->op) {
        lreq_fail(q, TIDE_EINVAL, "comm %s: rank %lld passed count %lld, this rank %lld", "allreduce", i,
                  (long long)p[i].count, (long long)m->count);
        return;
      }
    size_t nb = (size_t)m->count * (size_t)tide_comm_dtype_size(m->dtype);
    if (nb == 0) return;
    memcpy(q->tmp, p[0].sbuf, nb);
    for (int32_t i = 1; i < n; i++) tide_comm_reduce_into(q->tmp, p[i].sbuf, m->count, m->dtype, m->op);
    break;
  }
  case TIDE_COMM_OP_ALLGATHER:
    for (int32_t i = 0; i < n; i++) {
      if (p[i].count != m->count) {
        lreq_fail(q, TIDE_EINVAL, "comm %s: rank %lld passed %lld bytes, this rank %lld", "allgather", i,
                  (long long)p[i].count, (long long)m->count);
        return;
      }
      unsigned char *dst = (unsigned char *)m->rbuf + (size_t)i * (size_t)m->count;
      if (m->count > 0 && p[i].sbuf != dst) memcpy(dst, p[i].sbuf, (size_t)m->count);
    }
    break;
  case TIDE_COMM_OP_ALLTOALLV:
    for (int32_t i = 0; i < n; i++) {
      int64_t nb = p[i].sc[me];
      if (nb != m->rc[i]) {
        lreq_fail(q, TIDE_EINVAL, "comm %s: rank %lld sends %lld bytes to this rank, which expects %lld", "alltoallv",
                  i, (long long)nb, (long long)m->rc[i]);
        continue;
      }
      if (nb > 0)
        memcpy((unsigned char *)m->rbuf + m->rd[i], (const unsigned char *)p[i].sbuf + p[i].sd[me], (size_t)nb);
    }
    break;
  case TIDE_COMM_OP_BCAST: {
    int32_t root = m->root;
    for (int32_t i = 0; i < n; i++)
      if (p[i].root != root || p[i].count != m->count) {
        lreq_fail(q, TIDE_EINVAL, "comm %s: rank %lld passed root %lld or size %lld unlike this rank", "bcast", i,
                  (long long)p[i].root, (long long)p[i].count);
        return;
      }
    if (me != root && m->count > 0) memcpy(m->rbuf, p[root].rbuf, (size_t)m->count);
    break;
  }
  default: break;
  }
}

/* Bytes this rank receives from the others in collective s (the emulated
 * link's payload; ctx->mu held, every member posted). */
static int64_t lrecv_bytes(const lcomm_t *c, const lslot_t *s) {
  int32_t me = c->base.rank, n = c->base.size;
  const lpost_t *m = &s->p[me];
  int64_t b = 0;
  switch (s->kind) {
  case TIDE_COMM_OP_ALLTOALLV:
    for (int32_t i = 0; i < n; i++)
      if (i != me && m->rc) b += m->rc[i];
    break;
  case TIDE_COMM_OP_ALLREDUCE: b = (int64_t)(n - 1) * m->count * tide_comm_dtype_size(m->dtype); break;
  case TIDE_COMM_OP_ALLGATHER: b = (int64_t)(n - 1) * m->count; break;
  case TIDE_COMM_OP_BCAST: b = me == m->root ? 0 : m->count; break;
  default: break;
  }
  return b;
}

static int lprogress_coll(tide_comm_req_t *r, int wait, int32_t *done, tide_err_t *err) {
  lcomm_t *c = r->comm->impl;
  lreq_t *q = r->impl;
  tide_comm_local_t *ctx = c->ctx;
  lslot_t *s = q->slot;
  int64_t deadline = wait ? deadline_of(&c->base) : 0;
  const char *what = tide_comm_op_name(q->kind);
  int rc = 0;
  pthread_mutex_lock(&ctx->mu);
  if (q->state == 0) {
    while (s->nposted < c->base.size && rc == 0) {
      if (!wait) {
        rc = ctx->aborted ? tide_err_set(err, TIDE_ESTATE, "comm aborted: %s", ctx->why) : 0;
        pthread_mutex_unlock(&ctx->mu);
        return rc;
      }
      rc = lwait(c, deadline, what, s, err);
    }
    if (rc == 0 && ctx->aborted) rc = tide_err_set(err, TIDE_ESTATE, "comm aborted: %s", ctx->why);
    if (rc == 0 && (ctx->link_latency_ns > 0 || ctx->link_bytes_per_ns > 0)) {
      /* the emulated link: this rank's data arrives latency + bytes / bandwidth after the last
       * post, or after the link finished the transfers before it (one link per rank, in the
       * order this rank first finds its collectives posted) */
      if (q->ready == 0) {
        int64_t start = s->t_all + ctx->link_latency_ns;
        if (start < c->link_free) start = c->link_free;
        q->ready = start + (ctx->link_bytes_per_ns > 0 ? (int64_t)((double)lrecv_bytes(c, s) / ctx->link_bytes_per_ns) : 0);
        c->link_free = q->ready;
      }
      int64_t ready = q->ready;
      while (rc == 0 && tide_comm_now_ns() < ready) {
        if (!wait) {
          pthread_mutex_unlock(&ctx->mu);
          return 0;
        }
        struct timespec ts = {(time_t)(ready / 1000000000LL), (long)(ready % 1000000000LL)};
        pthread_cond_timedwait(&ctx->cv, &ctx->mu, &ts);
        if (ctx->aborted) rc = tide_err_set(err, TIDE_ESTATE, "comm aborted: %s", ctx->why);
      }
    }
    if (rc) {
      pthread_mutex_unlock(&ctx->mu);
      return rc;
    }
    pthread_mutex_unlock(&ctx->mu);
    lmove(c, s, q);
    pthread_mutex_lock(&ctx->mu);
    s->ndone++;
    q->state = 1;
    pthread_cond_broadcast(&ctx->cv);
  }
  if (q->state == 1) {
    while (s->ndone < c->base.size && rc == 0) {
      if (!wait) {
        rc = ctx->aborted ? tide_err_set(err, TIDE_ESTATE, "comm aborted: %s", ctx->why) : 0;
        pthread_mutex_unlock(&ctx->mu);
        return rc;
      }
      rc = lwait(c, deadline, what, NULL, err);
    }
    if (rc) {
      pthread_mutex_unlock(&ctx->mu);
      return rc;
    }
    lpost_t *m = &s->p[c->base.rank];
    if (q->kind == TIDE_COMM_OP_ALLREDUCE && !q->err_code && m->count > 0)
      memcpy(m->rbuf, q->tmp, (size_t)m->count * (size_t)tide_comm_dtype_size(m->dtype));
    q->state = 2;
    q->slot = NULL;
    slot_leave(c->g, s);
    pthread_cond_broadcast(&ctx->cv);
  }
  pthread_mutex_unlock(&ctx->mu);
  *done = 1;
  if (q->err_code) return tide_err_set(err, q->err_code, "%s", q->err_msg);
  return 0;
}

static int lprogress_recv(tide_comm_req_t *r, int wait, int32_t *done, tide_err_t *err) {
  lcomm_t *c = r->comm->impl;
  lreq_t *q = r->impl;
  tide_comm_local_t *ctx = c->ctx;
  int64_t deadline = wait ? deadline_of(&c->base) : 0;
  int rc = 0;
  pthread_mutex_lock(&ctx->mu);
  for (;;) {
    if (ctx->aborted) {
      rc = tide_err_set(err, TIDE_ESTATE, "comm aborted: %s", ctx->why);
      break;
    }
    lmsg_t **pp = &c->g->mbox[c->base.rank];
    while (*pp && !((*pp)->src == q->src && (*pp)->tag == q->tag)) pp = &(*pp)->next;
    if (*pp) {
      lmsg_t *m = *pp;
      *pp = m->next;
      if (m->nbytes != q->nbytes)
        rc = tide_err_set(err, TIDE_EINVAL, "comm recv: message from rank %d tag %d has %lld bytes, expected %lld",
                          q->src, q->tag, (long long)m->nbytes, (long long)q->nbytes);
      else if (m->nbytes > 0)
        memcpy(q->buf, m->data, (size_t)m->nbytes);
      free(m);
      *done = 1;
      break;
    }
    if (!wait) break;
    char what[64];
    snprintf(what, sizeof what, "recv from rank %d", q->src);
    if ((rc = lwait(c, deadline, what, NULL, err))) break;
  }
  pthread_mutex_unlock(&ctx->mu);
  return rc;
}

static int l_progress(tide_comm_req_t *r, int wait, int32_t *done, tide_err_t *err) {
  lreq_t *q = r->impl;
  if (q->state == 2) {
    *done = 1;
    return 0;
  }
  if (q->kind == TIDE_COMM_OP_SEND) {
    *done = 1;
    return 0;
  }
  if (q->kind == TIDE_COMM_OP_RECV) return lprogress_recv(r, wait, done, err);
  return lprogress_coll(r, wait, done, err);
}

static void l_req_release(tide_comm_req_t *r) {
  lreq_t *q = r->impl;
  if (!q) return;
  free(q->tmp);
  free(q);
  r->impl = NULL;
}

/* A bad argument on one rank would leave the others waiting: abort the group. */
static void l_bad_call(tide_comm_t *base, const tide_err_t *err) {
  lcomm_t *c = base->impl;
  tide_comm_local_abort(c->ctx, lworld_rank(c), err && err->msg[0] ? err->msg : "bad call");
}

static int l_barrier(tide_comm_t *base, tide_comm_req_t *r, tide_err_t *err) {
  lpost_t m = {0};
  return lpost(base->impl, r, TIDE_COMM_OP_BARRIER, &m, 0, err);
}

static int l_allreduce(tide_comm_t *base, const void *s, void *d, int64_t count, int32_t dtype, int32_t op,
                       tide_comm_req_t *r, tide_err_t *err) {
  lpost_t m = {.sbuf = s, .rbuf = d, .count = count, .dtype = dtype, .op = op};
  return lpost(base->impl, r, TIDE_COMM_OP_ALLREDUCE, &m, (size_t)count * (size_t)tide_comm_dtype_size(dtype), err);
}

static int l_allgather(tide_comm_t *base, const void *s, void *d, int64_t n, tide_comm_req_t *r, tide_err_t *err) {
  lpost_t m = {.sbuf = s, .rbuf = d, .count = n};
  return lpost(base->impl, r, TIDE_COMM_OP_ALLGATHER, &m, 0, err);
}

static int l_alltoallv(tide_comm_t *base, const void *s, const int64_t *sc, const int64_t *sd, void *d,
                       const int64_t *rc, const int64_t *rd, tide_comm_req_t *r, tide_err_t *err) {
  lpost_t m = {.sbuf = s, .rbuf = d, .sc = sc, .sd = sd, .rc = rc, .rd = rd};
  return lpost(base->impl, r, TIDE_COMM_OP_ALLTOALLV, &m, 0, err);
}

static int l_bcast(tide_comm_t *base, void *buf, int64_t n, int32_t root, tide_comm_req_t *r, tide_err_t *err) {
  lpost_t m = {.rbuf = buf, .count = n, .root = root};
  return lpost(base->impl, r, TIDE_COMM_OP_BCAST, &m, 0, err);
}

static int l_send(tide_comm_t *base, const void *buf, int64_t n, int32_t dest, int32_t tag, tide_comm_req_t *r,
                  tide_err_t *err) {
  lcomm_t *c = base->impl;
  lreq_t *q = calloc(1, sizeof *q);
  lmsg_t *m = malloc(sizeof *m + (size_t)n);
  if (!q || !m) {
    free(q);
    free(m);
    return tide_err_set(err, TIDE_ENOMEM, "comm send: out of memory for %lld bytes", (long long)n);
  }
  q->kind = TIDE_COMM_OP_SEND;
  q->state = 2;
  r->impl = q;
  m->next = NULL;
  m->src = base->rank;
  m->tag = tag;
  m->nbytes = n;
  if (n > 0) memcpy(m->data, buf, (size_t)n);
  tide_comm_local_t *ctx = c->ctx;
  pthread_mutex_lock(&ctx->mu);
  int rc = 0;
  if (ctx->aborted) {
    rc = tide_err_set(err, TIDE_ESTATE, "comm aborted: %s", ctx->why);
    free(m);
  } else {
    lmsg_t **pp = &c->g->mbox[dest];
    while (*pp) pp = &(*pp)->next;
    *pp = m;
    pthread_cond_broadcast(&ctx->cv);
  }
  pthread_mutex_unlock(&ctx->mu);
  return rc;
}

static int l_recv(tide_comm_t *base, void *buf, int64_t n, int32_t src, int32_t tag, tide_comm_req_t *r,
                  tide_err_t *err) {
  lreq_t *q = calloc(1, sizeof *q);
  if (!q) return tide_err_set(err, TIDE_ENOMEM, "comm recv: out of memory");
  (void)base;
  q->kind = TIDE_COMM_OP_RECV;
  q->buf = buf;
  q->nbytes = n;
  q->src = src;
  q->tag = tag;
  r->impl = q;
  return 0;
}

static int cmp_member(const void *a, const void *b, const lpost_t *p) {
  int32_t i = *(const int32_t *)a, j = *(const int32_t *)b;
  if (p[i].key != p[j].key) return p[i].key < p[j].key ? -1 : 1;
  return i < j ? -1 : (i > j);
}

static int l_split(tide_comm_t *base, int32_t color, int32_t key, tide_comm_t **out, tide_err_t *err) {
  lcomm_t *c = base->impl;
  tide_comm_local_t *ctx = c->ctx;
  int32_t n = base->size, me = base->rank;
  int32_t *mem = malloc((size_t)n * sizeof *mem);
  tide_comm_req_t r = {.comm = base, .op = TIDE_COMM_OP_SPLIT};
  if (!mem) return tide_err_set(err, TIDE_ENOMEM, "comm split: out of memory");
  lpost_t m = {.color = color, .key = key};
  int rc = lpost(c, &r, TIDE_COMM_OP_SPLIT, &m, 0, err);
  if (rc) {
    free(mem);
    l_req_release(&r);
    return rc;
  }
  lreq_t *q = r.impl;
  lslot_t *s = q->slot;
  int64_t deadline = deadline_of(base);
  lcomm_t *nc = NULL;
  pthread_mutex_lock(&ctx->mu);
  while (rc == 0 && s->nposted < n) rc = lwait(c, deadline, "split", s, err);
  int32_t cnt = 0, myidx = -1;
  if (rc == 0 && color != TIDE_COMM_UNDEFINED) {
    for (int32_t i = 0; i < n; i++)
      if (s->p[i].color == color) mem[cnt++] = i;
    /* insertion sort by (key, rank): n is small */
    for (int32_t i = 1; i < cnt; i++)
      for (int32_t j = i; j > 0 && cmp_member(&mem[j - 1], &mem[j], s->p) > 0; j--) {
        int32_t t = mem[j];
        mem[j] = mem[j - 1];
        mem[j - 1] = t;
      }
    for (int32_t i = 0; i < cnt; i++)
      if (mem[i] == me) myidx = i;
    int32_t leader = mem[0];
    if (leader == me) {
      lgroup_t *g = lgroup_new(cnt);
      if (!g) {
        abort_locked(ctx, me, "split: out of memory");
        rc = tide_err_set(err, TIDE_ENOMEM, "comm split: out of memory");
      } else {
        g->next = ctx->groups;
        ctx->groups = g;
        s->p[me].newgroup = g;
        pthread_cond_broadcast(&ctx->cv);
      }
    }
    while (rc == 0 && !s->p[leader].newgroup) rc = lwait(c, deadline, "split", NULL, err);
    if (rc == 0) {
      nc = lcomm_new(ctx, s->p[leader].newgroup, myidx);
      if (!nc) {
        abort_locked(ctx, me, "split: out of memory");
        rc = tide_err_set(err, TIDE_ENOMEM, "comm split: out of memory");
      } else {
        nc->next = ctx->splits;
        if (ctx->splits) ctx->splits->prev = nc;
        ctx->splits = nc;
      }
    }
  }
  if (rc == 0) {
    s->ndone++;
    pthread_cond_broadcast(&ctx->cv);
    while (rc == 0 && s->ndone < n) rc = lwait(c, deadline, "split", NULL, err);
  }
  if (rc == 0) {
    q->slot = NULL;
    slot_leave(c->g, s);
    pthread_cond_broadcast(&ctx->cv);
  }
  pthread_mutex_unlock(&ctx->mu);
  free(mem);
  l_req_release(&r);
  if (rc) return rc; /* a half-made comm stays on ctx->splits; freed with ctx */
  *out = nc ? &nc->base : NULL;
  return 0;
}

static void l_free(tide_comm_t *base) {
  lcomm_t *c = base->impl;
  if (c->is_world) return;
  tide_comm_local_t *ctx = c->ctx;
  pthread_mutex_lock(&ctx->mu);
  if (c->prev) c->prev->next = c->next;
  else ctx->splits = c->next;
  if (c->next) c->next->prev = c->prev;
  lgroup_unref(ctx, c->g);
  pthread_mutex_unlock(&ctx->mu);
  free(c);
}

static const tide_comm_vtbl_t local_vtbl = {
    .name = "local",
    .barrier = l_barrier,
    .allreduce = l_allreduce,
    .allgather = l_allgather,
    .alltoallv = l_alltoallv,
    .bcast = l_bcast,
    .send = l_send,
    .recv = l_recv,
    .split = l_split,
    .progress = l_progress,
    .req_release = l_req_release,
    .free = l_free,
    .bad_call = l_bad_call,
};

/* ---- running ranks on threads --------------------------------------------------- */

typedef struct lrun {
  tide_comm_local_t *ctx;
  int32_t rank;
  tide_comm_rank_fn fn;
  void *arg;
  int rc;
  /* Lua */
  const char *lua_path, *chunk, *larg;
  int64_t len, larg_len;
  int32_t is_path;
  char **results;
} lrun_t;

static void *run_c_thread(void *p) {
  lrun_t *a = p;
  a->rc = a->fn(tide_comm_local_world(a->ctx, a->rank), a->arg);
  if (a->rc) {
    char why[64];
    snprintf(why, sizeof why, "rank function failed (%s)", tide_strerror(a->rc));
    tide_comm_local_abort(a->ctx, a->rank, why);
  }
  return NULL;
}

static int lua_traceback_handler(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (!msg) msg = "(error object is not a string)";
  luaL_traceback(L, L, msg, 1);
  return 1;
}

static void *run_lua_thread(void *p) {
  lrun_t *a = p;
  lua_State *L = luaL_newstate();
  if (!L) {
    tide_comm_local_abort(a->ctx, a->rank, "cannot create a Lua state");
    a->rc = TIDE_ENOMEM;
    return NULL;
  }
  luaL_openlibs(L);
  if (a->lua_path) {
    lua_getglobal(L, "package");
    lua_pushstring(L, a->lua_path);
    lua_setfield(L, -2, "path");
    lua_pop(L, 1);
  }
  lua_pushcfunction(L, lua_traceback_handler);
  int st = a->is_path ? luaL_loadfile(L, a->chunk) : luaL_loadbuffer(L, a->chunk, (size_t)a->len, "=rank chunk");
  if (st == 0) st = lua_pcall(L, 0, 1, 1); /* the chunk returns the function */
  if (st == 0 && !lua_isfunction(L, -1)) {
    lua_pushstring(L, "the chunk did not return a function");
    st = 1;
  }
  if (st == 0) {
    lua_pushlightuserdata(L, tide_comm_local_world(a->ctx, a->rank));
    lua_pushlstring(L, a->larg ? a->larg : "", a->larg ? (size_t)a->larg_len : 0);
    st = lua_pcall(L, 2, 1, 1);
    if (st == 0 && lua_type(L, -1) == LUA_TSTRING && a->results) {
      size_t n = 0;
      const char *s = lua_tolstring(L, -1, &n);
      char *copy = malloc(n + 1);
      if (copy) {
        memcpy(copy, s, n);
        copy[n] = 0;
      }
      a->results[a->rank] = copy;
    }
  }
  if (st != 0) {
    const char *msg = lua_tostring(L, -1);
    tide_comm_local_abort(a->ctx, a->rank, msg ? msg : "Lua error");
    a->rc = TIDE_ESTATE;
  }
  lua_close(L);
  return NULL;
}

static int run_threads(tide_comm_local_t *ctx, lrun_t *proto, void *(*body)(void *), tide_err_t *err) {
  int32_t n = ctx->n;
  lrun_t *a = calloc((size_t)n, sizeof *a);
  pthread_t *th = calloc((size_t)n, sizeof *th);
  if (!a || !th) {
    free(a);
    free(th);
    return tide_err_set(err, TIDE_ENOMEM, "comm local run: out of memory");
  }
  int32_t started = 0;
  int rc = 0;
  for (int32_t r = 0; r < n; r++) {
    a[r] = *proto;
    a[r].rank = r;
    if (pthread_create(&th[r], NULL, body, &a[r]) != 0) {
      tide_comm_local_abort(ctx, r, "cannot start a thread");
      rc = tide_err_set(err, TIDE_ESTATE, "comm local run: cannot start thread for rank %d", r);
      break;
    }
    started++;
  }
  for (int32_t r = 0; r < started; r++) pthread_join(th[r], NULL);
  if (rc == 0) {
    char why[512];
    if (tide_comm_local_aborted(ctx, why, sizeof why)) rc = tide_err_set(err, TIDE_ESTATE, "%s", why);
  }
  free(a);
  free(th);
  return rc;
}

int tide_comm_local_run(tide_comm_local_t *ctx, tide_comm_rank_fn fn, void *arg, tide_err_t *err) {
  if (!ctx || !fn) return tide_err_set(err, TIDE_EINVAL, "comm local run: NULL context or function");
  lrun_t proto = {.ctx = ctx, .fn = fn, .arg = arg};
  return run_threads(ctx, &proto, run_c_thread, err);
}

int tide_comm_local_run_lua(tide_comm_local_t *ctx, const char *lua_path, const char *chunk, int64_t len,
                            int32_t is_path, const char *arg, int64_t arg_len, char **results, tide_err_t *err) {
  if (!ctx || !chunk || (!is_path && len < 0) || (arg && arg_len < 0))
    return tide_err_set(err, TIDE_EINVAL, "comm local run_lua: bad arguments");
  if (results)
    for (int32_t r = 0; r < ctx->n; r++) results[r] = NULL;
  lrun_t proto = {.ctx = ctx, .lua_path = lua_path, .chunk = chunk, .len = len, .is_path = is_path,
                  .larg = arg, .larg_len = arg_len, .results = results};
  return run_threads(ctx, &proto, run_lua_thread, err);
}

void tide_comm_string_free(char *s) { free(s); }
