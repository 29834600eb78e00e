/* comm.h: the communicator. One interface, two engines behind it.
 *
 * A tide_comm_t is one rank's handle on a group of ranks. Collectives
 * (barrier, allreduce, allgather, alltoallv, bcast), point-to-point
 * (send/recv) and sub-communicators (split by color/key, as MPI_Comm_split)
 * work the same on both backends:
 *
 *   "local"  N ranks as threads of one process. The caller creates a shared
 *            context (tide_comm_local_new) that owns one world communicator
 *            per rank; there is no global state, so several groups can live
 *            in one process. Collectives are pull-based: a rank posts its
 *            buffers into a slot, and each rank copies what it needs from
 *            the others once all have posted; buffers stay valid until every
 *            rank has read them. Non-blocking calls post and return; the data
 *            moves when wait/test is called; any number of collectives may
 *            be in flight. Sends are buffered (copied).
 *   "mpi"    Open MPI (src/comm_mpi.c): one rank per process, launched with
 *            mpirun. MPI is initialised lazily (tide_comm_mpi_init, called by
 *            tide_comm_mpi_world), never at program start, so `tide` runs
 *            without mpirun. Errors return (MPI_ERRORS_RETURN); blocking calls
 *            poll a non-blocking request and give up after the communicator's
 *            timeout (tide_comm_set_timeout) with an error naming the rank.
 *
 * Progress: on both backends a non-blocking op advances only inside
 * tide_comm calls (Open MPI's non-blocking collectives also progress inside
 * MPI calls), so code that overlaps communication with compute calls
 * tide_comm_test between compute chunks; stats ns vs span_ns then tell how
 * much of the communication was hidden.
 *
 * "The same code" on both: Lua code is written as a function of a
 * communicator, fn(comm, arg). tide.comm.launch(fn, {ranks = N}) (in
 * lua/tide/comm.lua) calls it once on the MPI world communicator when the
 * process was started by mpirun, and otherwise runs it on N threads with the
 * local backend, each thread with its own lua_State
 * (tide_comm_local_run_lua below: LuaJIT states are single-threaded, so the
 * function travels as bytecode or as a file path, not as a closure).
 *
 * Faults: on the local backend, an error on one rank (bad argument,
 * mismatched collective, timeout, a Lua error in a rank thread) aborts the
 * whole context: every rank blocked in, or later entering, a call returns
 * TIDE_ESTATE with a message naming the failing rank. On MPI, a failing rank
 * returns the error to its caller; tide.comm.launch then prints
 * "rank R: message" and ends the job with tide_comm_mpi_abort (the only
 * call of MPI_Abort: an explicit fatal path requested by the caller). A
 * killed process is detected by mpirun, which ends the job naming the rank.
 *
 * Every call is timed and its bytes counted per communicator and op kind
 * (tide_comm_stats): `ns` is the time spent inside tide_comm calls (for
 * non-blocking ops: post + wait/test, the exposed time), `span_ns` the time
 * from post to completion; `bytes` is the payload this rank hands to the op
 * (allreduce: count*elsize; allgather: its block; alltoallv: the sum of its
 * send counts; bcast: nbytes at the root; send: nbytes; recv: nbytes);
 * `cpu_ns` the calling thread's CPU time inside the calls, so ns - cpu_ns is
 * time spent asleep waiting for peers (a blocking wait that polls shows up as
 * cpu_ns close to ns: it competes for cores with computing ranks). */
#ifndef TIDE_COMM_H
#define TIDE_COMM_H

#ifndef TIDE_FFI
#include <stdint.h>
#include <stddef.h>
#endif

#include "error.h"

typedef struct tide_comm tide_comm_t;             /* one rank's handle */
typedef struct tide_comm_req tide_comm_req_t;     /* a pending non-blocking op */
typedef struct tide_comm_local tide_comm_local_t; /* shared context of the local backend */

enum {
  TIDE_COMM_OP_BARRIER = 0,
  TIDE_COMM_OP_ALLREDUCE = 1,
  TIDE_COMM_OP_ALLGATHER = 2,
  TIDE_COMM_OP_ALLTOALLV = 3,
  TIDE_COMM_OP_BCAST = 4,
  TIDE_COMM_OP_SEND = 5,
  TIDE_COMM_OP_RECV = 6,
  TIDE_COMM_OP_SPLIT = 7,
  TIDE_COMM_OP_COUNT = 8
};

/* Reductions for allreduce. */
enum { TIDE_COMM_SUM = 0, TIDE_COMM_MAX = 1, TIDE_COMM_MIN = 2 };

/* color for tide_comm_split: this rank joins no sub-communicator. */
enum { TIDE_COMM_UNDEFINED = -1 };

typedef struct tide_comm_stats {
  int64_t calls[8];   /* TIDE_COMM_OP_COUNT entries, indexed by TIDE_COMM_OP_* */
  int64_t bytes[8];   /* payload bytes this rank handed to the op */
  int64_t ns[8];      /* time spent inside tide_comm calls (exposed time) */
  int64_t span_ns[8]; /* post to completion (equals ns for blocking calls) */
  int64_t cpu_ns[8];  /* CPU time of the calling thread inside tide_comm calls: the part of
                         ns spent copying, reducing or polling (ns - cpu_ns: asleep, waiting
                         for peers) */
} tide_comm_stats_t;

/* ---- any backend ---------------------------------------------------------- */
int32_t tide_comm_rank(const tide_comm_t *c);
int32_t tide_comm_size(const tide_comm_t *c);
const char *tide_comm_backend(const tide_comm_t *c); /* "local" or "mpi" */
const char *tide_comm_op_name(int32_t op);           /* "allreduce", ... or "?" */
/* Watchdog for blocking waits, in ms (0: wait forever, the default). A wait
 * that runs past it fails with TIDE_ESTATE and a message naming the ranks
 * that did not arrive (local) or the op and rank (MPI). Inherited by splits. */
void tide_comm_set_timeout(tide_comm_t *c, int64_t timeout_ms);

int tide_comm_barrier(tide_comm_t *c, tide_err_t *err);
/* count elements of dtype (TIDE_DTYPE_F32, F64, I32 or I64); sendbuf may
 * equal recvbuf (in place). Sums are taken in rank order, so every rank gets
 * bit-identical results. */
int tide_comm_allreduce(tide_comm_t *c, const void *sendbuf, void *recvbuf, int64_t count, int32_t dtype,
                        int32_t op, tide_err_t *err);
/* Each rank contributes nbytes; recvbuf receives size*nbytes in rank order.
 * sendbuf may be recvbuf + rank*nbytes (in place). */
int tide_comm_allgather(tide_comm_t *c, const void *sendbuf, void *recvbuf, int64_t nbytes, tide_err_t *err);
/* Byte counts and displacements, one per peer (size entries each). What rank
 * i sends to j (sendcounts_i[j]) must equal what j expects from i
 * (recvcounts_j[i]). Zero counts are fine; buffers may be NULL when all their
 * counts are zero. */
int tide_comm_alltoallv(tide_comm_t *c, const void *sendbuf, const int64_t *sendcounts, const int64_t *sdispls,
                        void *recvbuf, const int64_t *recvcounts, const int64_t *rdispls, tide_err_t *err);
int tide_comm_bcast(tide_comm_t *c, void *buf, int64_t nbytes, int32_t root, tide_err_t *err);
/* Point-to-point; a recv must name the exact source, tag and size of the
 * message. Messages between a pair with one tag arrive in order. */
int tide_comm_send(tide_comm_t *c, const void *buf, int64_t nbytes, int32_t dest, int32_t tag, tide_err_t *err);
int tide_comm_recv(tide_comm_t *c, void *buf, int64_t nbytes, int32_t src, int32_t tag, tide_err_t *err);

/* Non-blocking variants: buffers must stay untouched until the request
 * completes. *req is freed by wait (always) or by test when *done = 1. */
int tide_comm_iallreduce(tide_comm_t *c, const void *sendbuf, void *recvbuf, int64_t count, int32_t dtype,
                         int32_t op, tide_comm_req_t **req, tide_err_t *err);
int tide_comm_iallgather(tide_comm_t *c, const void *sendbuf, void *recvbuf, int64_t nbytes,
                         tide_comm_req_t **req, tide_err_t *err);
int tide_comm_ialltoallv(tide_comm_t *c, const void *sendbuf, const int64_t *sendcounts, const int64_t *sdispls,
                         void *recvbuf, const int64_t *recvcounts, const int64_t *rdispls, tide_comm_req_t **req,
                         tide_err_t *err);
int tide_comm_isend(tide_comm_t *c, const void *buf, int64_t nbytes, int32_t dest, int32_t tag,
                    tide_comm_req_t **req, tide_err_t *err);
int tide_comm_irecv(tide_comm_t *c, void *buf, int64_t nbytes, int32_t src, int32_t tag, tide_comm_req_t **req,
                    tide_err_t *err);
int tide_comm_wait(tide_comm_req_t *req, tide_err_t *err);
int tide_comm_test(tide_comm_req_t *req, int32_t *done, tide_err_t *err);

/* Collective over c: ranks with the same color form a new communicator,
 * ordered by (key, rank in c). color TIDE_COMM_UNDEFINED gives *out = NULL.
 * The new communicator is freed with tide_comm_free. */
int tide_comm_split(tide_comm_t *c, int32_t color, int32_t key, tide_comm_t **out, tide_err_t *err);
/* Free a communicator from tide_comm_split or tide_comm_mpi_world (NULL ok).
 * The local backend's world communicators belong to their context: freeing
 * one is a no-op. */
void tide_comm_free(tide_comm_t *c);

void tide_comm_stats(const tide_comm_t *c, tide_comm_stats_t *out);
/* CPU time of the calling thread in ns (CLOCK_THREAD_CPUTIME_ID): the clock
 * of stats.cpu_ns, for callers that split their own time the same way. */
int64_t tide_comm_thread_cpu_ns(void);
void tide_comm_stats_reset(tide_comm_t *c);

/* ---- local backend: ranks as threads ------------------------------------- */
int tide_comm_local_new(int32_t n, tide_comm_local_t **out, tide_err_t *err);
/* Frees the context, its world communicators and any split communicator not
 * yet freed. No rank may be inside a call. */
void tide_comm_local_free(tide_comm_local_t *ctx);
int32_t tide_comm_local_size(const tide_comm_local_t *ctx);
/* Rank r's world communicator (owned by ctx), or NULL when r is out of range. */
tide_comm_t *tide_comm_local_world(tide_comm_local_t *ctx, int32_t r);
/* Emulate a network link for measurements (off by default): the data of a
 * collective reaches each rank latency_ns + (bytes it receives from the
 * others) / bytes_per_ns after the last rank posted (each rank's link carries
 * one transfer at a time, so concurrent collectives queue); until then wait blocks
 * (asleep, using no CPU) and test says "not done". Models a NIC or NVLink that
 * moves data without the computing cores, which thread ranks sharing cores
 * cannot show otherwise (bench/overlap.lua --link-gbps). 0, 0: off. */
int tide_comm_local_set_link(tide_comm_local_t *ctx, int64_t latency_ns, double bytes_per_ns, tide_err_t *err);
/* Abort every rank's pending and future calls with "rank R: why". */
void tide_comm_local_abort(tide_comm_local_t *ctx, int32_t rank, const char *why);
/* 1 when aborted; the first reason is copied into msg (msg may be NULL). */
int tide_comm_local_aborted(const tide_comm_local_t *ctx, char *msg, size_t n);

#ifndef TIDE_FFI
/* Run fn(world comm of rank r, arg) on n threads and join them. A non-zero
 * return of fn aborts the context; the result is the first failure. */
typedef int (*tide_comm_rank_fn)(tide_comm_t *comm, void *arg);
int tide_comm_local_run(tide_comm_local_t *ctx, tide_comm_rank_fn fn, void *arg, tide_err_t *err);
#endif

/* Run a Lua chunk on every rank, each on its own thread with its own
 * lua_State (standard libraries open, package.path = lua_path). The chunk
 * (source or LuaJIT bytecode, len bytes) must return a function; it is called
 * as fn(comm, arg) where comm is a lightuserdata (tide_comm_t *) and arg the
 * string arg (arg_len bytes). A string returned by fn is stored in
 * results[r] (malloc'd, free with tide_comm_string_free; NULL otherwise).
 * The first Lua error aborts the context and is returned as TIDE_ESTATE with
 * "rank R: message". When is_path is 1, chunk is a file name instead. */
int tide_comm_local_run_lua(tide_comm_local_t *ctx, const char *lua_path, const char *chunk, int64_t len,
                            int32_t is_path, const char *arg, int64_t arg_len, char **results, tide_err_t *err);
void tide_comm_string_free(char *s);

/* ---- MPI backend ------------------------------------------------------------ */
/* Initialise MPI once per process (thread level SERIALIZED, or FUNNELED if
 * that is all the library gives). Idempotent; also fine when MPI was
 * initialised by someone else. */
int tide_comm_mpi_init(tide_err_t *err);
/* 1 between a successful init and finalize. */
int tide_comm_mpi_initialized(void);
/* Finalize if we initialised MPI and it is not finalized yet (idempotent). */
int tide_comm_mpi_finalize(tide_err_t *err);
/* A new communicator over (a duplicate of) MPI_COMM_WORLD; inits MPI. */
int tide_comm_mpi_world(tide_comm_t **out, tide_err_t *err);
/* Explicit fatal path: MPI_Abort(the communicator, code). Only returns when
 * c is not an MPI communicator (TIDE_EINVAL). */
int tide_comm_mpi_abort(tide_comm_t *c, int32_t code);

/* ---- internal: shared by comm.c and comm_mpi.c ----------------------------- */
#if defined(TIDE_COMM_INTERNAL) && !defined(TIDE_FFI)
typedef struct tide_comm_vtbl {
  const char *name;
  int (*barrier)(tide_comm_t *c, tide_comm_req_t *r, tide_err_t *err);
  int (*allreduce)(tide_comm_t *c, const void *s, void *d, int64_t count, int32_t dtype, int32_t op,
                   tide_comm_req_t *r, tide_err_t *err);
  int (*allgather)(tide_comm_t *c, const void *s, void *d, int64_t nbytes, tide_comm_req_t *r, tide_err_t *err);
  int (*alltoallv)(tide_comm_t *c, const void *s, const int64_t *sc, const int64_t *sd, void *d,
                   const int64_t *rc, const int64_t *rd, tide_comm_req_t *r, tide_err_t *err);
  int (*bcast)(tide_comm_t *c, void *buf, int64_t nbytes, int32_t root, tide_comm_req_t *r, tide_err_t *err);
  int (*send)(tide_comm_t *c, const void *buf, int64_t nbytes, int32_t dest, int32_t tag, tide_comm_req_t *r,
              tide_err_t *err);
  int (*recv)(tide_comm_t *c, void *buf, int64_t nbytes, int32_t src, int32_t tag, tide_comm_req_t *r,
              tide_err_t *err);
  int (*split)(tide_comm_t *c, int32_t color, int32_t key, tide_comm_t **out, tide_err_t *err);
  /* Progress r: block (wait=1, honouring the timeout) or not; *done = 1 when complete. */
  int (*progress)(tide_comm_req_t *r, int wait, int32_t *done, tide_err_t *err);
  void (*req_release)(tide_comm_req_t *r); /* backend part of a request */
  void (*free)(tide_comm_t *c);
  /* A call on c failed its argument checks (err filled): the local backend
   * aborts the group so the other ranks do not wait forever. */
  void (*bad_call)(tide_comm_t *c, const tide_err_t *err);
} tide_comm_vtbl_t;

struct tide_comm {
  const tide_comm_vtbl_t *vt;
  int32_t rank, size;
  int64_t timeout_ms;
  tide_comm_stats_t stats;
  void *impl;
};

struct tide_comm_req {
  tide_comm_t *comm;
  int32_t op;
  int64_t t_post;  /* ns, monotonic */
  int64_t t_post_cpu; /* thread CPU ns at post */
  int64_t bytes;
  int64_t inside_ns; /* time spent inside tide_comm calls so far */
  int64_t inside_cpu_ns; /* thread CPU time inside tide_comm calls so far */
  void *impl;      /* backend state */
};

int64_t tide_comm_now_ns(void);
int tide_comm_dtype_size(int32_t dtype); /* bytes, or 0 if not reducible */
/* Element-wise acc = acc (op) x over count elements. */
void tide_comm_reduce_into(void *acc, const void *x, int64_t count, int32_t dtype, int32_t op);
#endif

#endif
