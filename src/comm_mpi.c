/* comm_mpi.c: the Open MPI backend of the communicator (see comm.h).
 *
 * - MPI is initialised lazily (tide_comm_mpi_init), never at startup; the
 *   state lives in MPI itself (MPI_Initialized/MPI_Finalized), so this file
 *   keeps no globals.
 * - Communicators use MPI_ERRORS_RETURN: MPI errors come back as TIDE_EIO
 *   with MPI's message; nothing here aborts except tide_comm_mpi_abort.
 * - Every op is posted non-blocking (MPI_I*) and completed by polling
 *   MPI_Test, so a blocking call can give up after the communicator's timeout
 *   instead of hanging when a peer is stuck.
 * - allreduce is an allgather followed by a sum in rank order, so every rank
 *   (and the local backend) gets bit-identical results; fine for the tensor
 *   sizes Tide reduces (TP partial sums), and what "same tokens" needs. */
#define TIDE_COMM_INTERNAL
#include "comm.h"

#ifdef TIDE_NO_MPI
/* Built without MPI (no mpicc found by the Makefile): the API is there and
 * says so; the local backend is unaffected. */
int tide_comm_mpi_initialized(void) { return 0; }
int tide_comm_mpi_init(tide_err_t *err) {
  return tide_err_set(err, TIDE_EUNSUPPORTED, "comm mpi: this build of tide has no MPI (install Open MPI, rebuild)");
}
int tide_comm_mpi_finalize(tide_err_t *err) {
  (void)err;
  return 0;
}
int tide_comm_mpi_world(tide_comm_t **out, tide_err_t *err) {
  if (out) *out = NULL;
  return tide_comm_mpi_init(err);
}
int tide_comm_mpi_abort(tide_comm_t *c, int32_t code) {
  (void)c;
  (void)code;
  return TIDE_EINVAL;
}
#else

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mpi.h>

typedef struct mcomm {
  tide_comm_t base;
  MPI_Comm comm;
} mcomm_t;

typedef struct mreq {
  MPI_Request req;
  int32_t kind, done;
  /* allreduce: gathered inputs, reduced into dst at completion */
  void *gathered, *dst;
  int64_t count;
  int32_t dtype, op;
  /* alltoallv: int copies of the counts */
  int *ic;
  /* recv */
  int64_t nbytes;
  int32_t peer, tag;
} mreq_t;

static const tide_comm_vtbl_t mpi_vtbl;

static int mpi_fail(tide_err_t *err, int mrc, const char *what, int32_t rank) {
  char msg[MPI_MAX_ERROR_STRING + 1];
  int len = 0;
  if (MPI_Error_string(mrc, msg, &len) != MPI_SUCCESS) len = 0;
  msg[len] = 0;
  return tide_err_set(err, TIDE_EIO, "comm mpi: rank %d: %s failed: %s", rank, what, msg);
}

int tide_comm_mpi_initialized(void) {
  int init = 0, fin = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  return init && !fin;
}

int tide_comm_mpi_init(tide_err_t *err) {
  int init = 0, fin = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  if (fin) return tide_err_set(err, TIDE_ESTATE, "comm mpi: MPI was already finalized in this process");
  if (init) return 0;
  int provided = 0;
  int mrc = MPI_Init_thread(NULL, NULL, MPI_THREAD_SERIALIZED, &provided);
  if (mrc != MPI_SUCCESS) return tide_err_set(err, TIDE_EIO, "comm mpi: MPI_Init_thread failed (code %d)", mrc);
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  if (provided < MPI_THREAD_FUNNELED)
    return tide_err_set(err, TIDE_EUNSUPPORTED, "comm mpi: thread level %d is below MPI_THREAD_FUNNELED", provided);
  return 0;
}

int tide_comm_mpi_finalize(tide_err_t *err) {
  if (!tide_comm_mpi_initialized()) return 0;
  int mrc = MPI_Finalize();
  if (mrc != MPI_SUCCESS) return mpi_fail(err, mrc, "MPI_Finalize", -1);
  return 0;
}

static mcomm_t *mcomm_wrap(MPI_Comm comm) {
  mcomm_t *c = calloc(1, sizeof *c);
  if (!c) return NULL;
  int rank = 0, size = 0;
  MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
  MPI_Comm_rank(comm, &rank);
  MPI_Comm_size(comm, &size);
  c->base.vt = &mpi_vtbl;
  c->base.rank = rank;
  c->base.size = size;
  c->base.impl = c;
  c->comm = comm;
  return c;
}

int tide_comm_mpi_world(tide_comm_t **out, tide_err_t *err) {
  if (!out) return tide_err_set(err, TIDE_EINVAL, "comm mpi world: out is NULL");
  *out = NULL;
  int rc = tide_comm_mpi_init(err);
  if (rc) return rc;
  MPI_Comm dup;
  int mrc = MPI_Comm_dup(MPI_COMM_WORLD, &dup);
  if (mrc != MPI_SUCCESS) return mpi_fail(err, mrc, "MPI_Comm_dup", -1);
  mcomm_t *c = mcomm_wrap(dup);
  if (!c) {
    MPI_Comm_free(&dup);
    return tide_err_set(err, TIDE_ENOMEM, "comm mpi world: out of memory");
  }
  *out = &c->base;
  return 0;
}

int tide_comm_mpi_abort(tide_comm_t *c, int32_t code) {
  if (!c || c->vt != &mpi_vtbl || !tide_comm_mpi_initialized()) return TIDE_EINVAL;
  mcomm_t *m = c->impl;
  MPI_Abort(m->comm, code);
  return TIDE_ESTATE; /* not reached */
}

static mreq_t *mreq_new(tide_comm_req_t *r, int32_t kind, tide_err_t *err) {
  mreq_t *q = calloc(1, sizeof *q);
  if (!q) {
    tide_err_set(err, TIDE_ENOMEM, "comm mpi %s: out of memory", tide_comm_op_name(kind));
    return NULL;
  }
  q->req = MPI_REQUEST_NULL;
  q->kind = kind;
  r->impl = q;
  return q;
}

static int fits_int(int64_t v) { return v >= 0 && v <= INT_MAX; }

static int m_barrier(tide_comm_t *base, tide_comm_req_t *r, tide_err_t *err) {
  mcomm_t *c = base->impl;
  mreq_t *q = mreq_new(r, TIDE_COMM_OP_BARRIER, err);
  if (!q) return TIDE_ENOMEM;
  int mrc = MPI_Ibarrier(c->comm, &q->req);
  return mrc == MPI_SUCCESS ? 0 : mpi_fail(err, mrc, "MPI_Ibarrier", base->rank);
}

static int m_allreduce(tide_comm_t *base, const void *s, void *d, int64_t count, int32_t dtype, int32_t op,
                       tide_comm_req_t *r, tide_err_t *err) {
  mcomm_t *c = base->impl;
  int64_t nb = count * tide_comm_dtype_size(dtype);
  if (!fits_int(nb)) return tide_err_set(err, TIDE_ERANGE, "comm mpi allreduce: %lld bytes is too many", (long long)nb);
  mreq_t *q = mreq_new(r, TIDE_COMM_OP_ALLREDUCE, err);
  if (!q) return TIDE_ENOMEM;
  q->gathered = malloc((size_t)nb * (size_t)base->size + 1);
  if (!q->gathered) return tide_err_set(err, TIDE_ENOMEM, "comm mpi allreduce: out of memory");
  q->dst = d;
  q->count = count;
  q->dtype = dtype;
  q->op = op;
  /* s == d (in place) is fine: d is written only at completion */
  int mrc = MPI_Iallgather(s, (int)nb, MPI_BYTE, q->gathered, (int)nb, MPI_BYTE, c->comm, &q->req);
  return mrc == MPI_SUCCESS ? 0 : mpi_fail(err, mrc, "MPI_Iallgather (allreduce)", base->rank);
}

static int m_allgather(tide_comm_t *base, const void *s, void *d, int64_t n, tide_comm_req_t *r, tide_err_t *err) {
  mcomm_t *c = base->impl;
  if (!fits_int(n)) return tide_err_set(err, TIDE_ERANGE, "comm mpi allgather: %lld bytes is too many", (long long)n);
  mreq_t *q = mreq_new(r, TIDE_COMM_OP_ALLGATHER, err);
  if (!q) return TIDE_ENOMEM;
  const void *src = (n > 0 && s == (const unsigned char *)d + (size_t)base->rank * (size_t)n) ? MPI_IN_PLACE : s;
  int mrc = MPI_Iallgather(src, (int)n, MPI_BYTE, d, (int)n, MPI_BYTE, c->comm, &q->req);
  return mrc == MPI_SUCCESS ? 0 : mpi_fail(err, mrc, "MPI_Iallgather", base->rank);
}

static int m_alltoallv(tide_comm_t *base, const void *s, const int64_t *sc, const int64_t *sd, void *d,
                       const int64_t *rc, const int64_t *rd, tide_comm_req_t *r, tide_err_t *err) {
  mcomm_t *c = base->impl;
  int32_t n = base->size;
  mreq_t *q = mreq_new(r, TIDE_COMM_OP_ALLTOALLV, err);
  if (!q) return TIDE_ENOMEM;
  q->ic = malloc(4 * (size_t)n * sizeof(int));
  if (!q->ic) return tide_err_set(err, TIDE_ENOMEM, "comm mpi alltoallv: out of memory");
  for (int32_t i = 0; i < n; i++) {
    if (!fits_int(sc[i]) || !fits_int(sd[i]) || !fits_int(rc[i]) || !fits_int(rd[i]))
      return tide_err_set(err, TIDE_ERANGE, "comm mpi alltoallv: counts or displacements for peer %d exceed 2^31", i);
    q->ic[i] = (int)sc[i];
    q->ic[n + i] = (int)sd[i];
    q->ic[2 * n + i] = (int)rc[i];
    q->ic[3 * n + i] = (int)rd[i];
  }
  /* MPI wants non-NULL buffers even when every count is zero */
  static const unsigned char empty[1] = {0};
  const void *sb = s ? s : empty;
  void *db = d ? d : q->ic; /* nothing is written when all counts are zero */
  int mrc = MPI_Ialltoallv(sb, q->ic, q->ic + n, MPI_BYTE, db, q->ic + 2 * n, q->ic + 3 * n, MPI_BYTE, c->comm,
                           &q->req);
  return mrc == MPI_SUCCESS ? 0 : mpi_fail(err, mrc, "MPI_Ialltoallv", base->rank);
}

static int m_bcast(tide_comm_t *base, void *buf, int64_t n, int32_t root, tide_comm_req_t *r, tide_err_t *err) {
  mcomm_t *c = base->impl;
  if (!fits_int(n)) return tide_err_set(err, TIDE_ERANGE, "comm mpi bcast: %lld bytes is too many", (long long)n);
  mreq_t *q = mreq_new(r, TIDE_COMM_OP_BCAST, err);
  if (!q) return TIDE_ENOMEM;
  int mrc = MPI_Ibcast(buf, (int)n, MPI_BYTE, root, c->comm, &q->req);
  return mrc == MPI_SUCCESS ? 0 : mpi_fail(err, mrc, "MPI_Ibcast", base->rank);
}

static int m_send(tide_comm_t *base, const void *buf, int64_t n, int32_t dest, int32_t tag, tide_comm_req_t *r,
                  tide_err_t *err) {
  mcomm_t *c = base->impl;
  if (!fits_int(n)) return tide_err_set(err, TIDE_ERANGE, "comm mpi send: %lld bytes is too many", (long long)n);
  mreq_t *q = mreq_new(r, TIDE_COMM_OP_SEND, err);
  if (!q) return TIDE_ENOMEM;
  q->peer = dest;
  q->tag = tag;
  int mrc = MPI_Isend(buf, (int)n, MPI_BYTE, dest, tag, c->comm, &q->req);
  return mrc == MPI_SUCCESS ? 0 : mpi_fail(err, mrc, "MPI_Isend", base->rank);
}

static int m_recv(tide_comm_t *base, void *buf, int64_t n, int32_t src, int32_t tag, tide_comm_req_t *r,
                  tide_err_t *err) {
  mcomm_t *c = base->impl;
  if (!fits_int(n)) return tide_err_set(err, TIDE_ERANGE, "comm mpi recv: %lld bytes is too many", (long long)n);
  mreq_t *q = mreq_new(r, TIDE_COMM_OP_RECV, err);
  if (!q) return TIDE_ENOMEM;
  q->nbytes = n;
  q->peer = src;
  q->tag = tag;
  /* a longer message fails with MPI's truncation error; a shorter one is caught at completion */
  int mrc = MPI_Irecv(buf, (int)n, MPI_BYTE, src, tag, c->comm, &q->req);
  return mrc == MPI_SUCCESS ? 0 : mpi_fail(err, mrc, "MPI_Irecv", base->rank);
}

static int m_split(tide_comm_t *base, int32_t color, int32_t key, tide_comm_t **out, tide_err_t *err) {
  mcomm_t *c = base->impl;
  MPI_Comm nc;
  int mrc = MPI_Comm_split(c->comm, color == TIDE_COMM_UNDEFINED ? MPI_UNDEFINED : color, key, &nc);
  if (mrc != MPI_SUCCESS) return mpi_fail(err, mrc, "MPI_Comm_split", base->rank);
  if (nc == MPI_COMM_NULL) return 0;
  mcomm_t *m = mcomm_wrap(nc);
  if (!m) {
    MPI_Comm_free(&nc);
    return tide_err_set(err, TIDE_ENOMEM, "comm mpi split: out of memory");
  }
  *out = &m->base;
  return 0;
}

static void sleep_ns(long ns) {
  struct timespec ts = {0, ns};
  nanosleep(&ts, NULL);
}

static int m_progress(tide_comm_req_t *r, int wait, int32_t *done, tide_err_t *err) {
  mreq_t *q = r->impl;
  tide_comm_t *base = r->comm;
  if (q->done) {
    *done = 1;
    return 0;
  }
  int64_t deadline = (wait && base->timeout_ms > 0) ? tide_comm_now_ns() + base->timeout_ms * 1000000LL : 0;
  MPI_Status st;
  int flag = 0;
  long nap = 20000;
  int64_t t_start = tide_comm_now_ns();
  for (int64_t spins = 0;; spins++) {
    int mrc = MPI_Test(&q->req, &flag, &st);
    if (mrc != MPI_SUCCESS) {
      q->done = 1; /* the request is gone or unusable */
      return mpi_fail(err, mrc, tide_comm_op_name(q->kind), base->rank);
    }
    if (flag || !wait) break;
    if (deadline && tide_comm_now_ns() >= deadline) {
      if (q->kind == TIDE_COMM_OP_SEND || q->kind == TIDE_COMM_OP_RECV)
        return tide_err_set(err, TIDE_ESTATE, "comm mpi: rank %d: %s %s rank %d timed out after %lld ms", base->rank,
                            tide_comm_op_name(q->kind), q->kind == TIDE_COMM_OP_SEND ? "to" : "from", q->peer,
                            (long long)base->timeout_ms);
      return tide_err_set(err, TIDE_ESTATE,
                          "comm mpi: rank %d: %s timed out after %lld ms (a peer rank died or is stuck)", base->rank,
                          tide_comm_op_name(q->kind), (long long)base->timeout_ms);
    }
    /* Spin briefly for latency, then sleep with a growing pause (20 us,
     * doubling to 200 us; to 2 ms once the wait passed 50 ms, as for a
     * serving rank idle between requests): with more ranks than cores a
     * waiting rank must leave the core to the ranks still computing
     * (a sched_yield loop kept it runnable; bench/overlap.lua's a2a_cpu_s
     * is the CPU time spent inside the waits). */
    if (spins < 100) continue;
    sleep_ns(nap);
    long cap = tide_comm_now_ns() - t_start > 50000000 ? 2000000 : 200000;
    nap = nap * 2 > cap ? cap : nap * 2;
  }
  if (!flag) return 0;
  q->done = 1;
  *done = 1;
  if (q->kind == TIDE_COMM_OP_RECV) {
    int got = 0;
    MPI_Get_count(&st, MPI_BYTE, &got);
    if (got != q->nbytes)
      return tide_err_set(err, TIDE_EINVAL, "comm mpi: rank %d: recv from rank %d tag %d got %d bytes, expected %lld",
                          base->rank, q->peer, q->tag, got, (long long)q->nbytes);
  }
  if (q->kind == TIDE_COMM_OP_ALLREDUCE && q->count > 0) {
    size_t nb = (size_t)q->count * (size_t)tide_comm_dtype_size(q->dtype);
    unsigned char *g = q->gathered;
    memcpy(q->dst, g, nb);
    for (int32_t i = 1; i < base->size; i++) tide_comm_reduce_into(q->dst, g + (size_t)i * nb, q->count, q->dtype, q->op);
  }
  return 0;
}

static void m_req_release(tide_comm_req_t *r) {
  mreq_t *q = r->impl;
  if (!q) return;
  /* A request abandoned after a timeout stays with MPI (collectives can be
   * neither cancelled nor freed); its state is leaked on purpose rather than
   * freed under MPI's feet. The job is expected to end. */
  if (!q->done && q->req != MPI_REQUEST_NULL) {
    r->impl = NULL;
    return;
  }
  free(q->gathered);
  free(q->ic);
  free(q);
  r->impl = NULL;
}

static void m_free(tide_comm_t *base) {
  mcomm_t *c = base->impl;
  int fin = 0;
  MPI_Finalized(&fin);
  if (!fin && c->comm != MPI_COMM_NULL) MPI_Comm_free(&c->comm);
  free(c);
}

static const tide_comm_vtbl_t mpi_vtbl = {
    .name = "mpi",
    .barrier = m_barrier,
    .allreduce = m_allreduce,
    .allgather = m_allgather,
    .alltoallv = m_alltoallv,
    .bcast = m_bcast,
    .send = m_send,
    .recv = m_recv,
    .split = m_split,
    .progress = m_progress,
    .req_release = m_req_release,
    .free = m_free,
    .bad_call = NULL,
};

#endif /* TIDE_NO_MPI */
