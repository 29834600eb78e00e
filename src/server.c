#include "server.h"

#include <http_parser.h>
#include <pthread.h>
#include <stdatomic.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

/* ---- one request's parser ------------------------------------------------ */

typedef struct buf {
  char *p;
  size_t n, cap;
} buf_t;

static int buf_add(buf_t *b, const char *d, size_t n) {
  if (b->n + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->n + n + 1) cap *= 2;
    char *q = realloc(b->p, cap);
    if (!q) return -1;
    b->p = q;
    b->cap = cap;
  }
  if (n) memcpy(b->p + b->n, d, n);
  b->n += n;
  b->p[b->n] = 0;
  return 0;
}

struct tide_http_req {
  http_parser parser;
  http_parser_settings settings;
  int64_t max_header, max_body;
  int64_t header_bytes;
  buf_t url, body, field, auth;
  int in_value;     /* the last header callback was a value */
  int is_auth;      /* the current header is Authorization */
  int error;        /* HTTP status our callbacks chose */
  int complete;
  int started;
  char method[16];
};

static tide_http_req_t *req_of(http_parser *p) { return (tide_http_req_t *)p->data; }

static int header_budget(tide_http_req_t *h, size_t n) {
  h->header_bytes += (int64_t)n;
  if (h->header_bytes > h->max_header) {
    h->error = 431;
    return -1;
  }
  return 0;
}

static int on_begin(http_parser *p) {
  req_of(p)->started = 1;
  return 0;
}

static int on_url(http_parser *p, const char *at, size_t n) {
  tide_http_req_t *h = req_of(p);
  if (header_budget(h, n) || buf_add(&h->url, at, n)) return h->error ? -1 : (h->error = 500, -1);
  return 0;
}

static int on_field(http_parser *p, const char *at, size_t n) {
  tide_http_req_t *h = req_of(p);
  if (header_budget(h, n)) return -1;
  if (h->in_value) {
    h->field.n = 0;
    h->in_value = 0;
  }
  if (h->field.n + n < 64 && buf_add(&h->field, at, n)) return (h->error = 500, -1);
  return 0;
}

static int on_value(http_parser *p, const char *at, size_t n) {
  tide_http_req_t *h = req_of(p);
  if (header_budget(h, n)) return -1;
  if (!h->in_value) {
    h->in_value = 1;
    h->is_auth = h->field.n == 13 && strncasecmp(h->field.p, "authorization", 13) == 0;
    if (h->is_auth) h->auth.n = 0;
  }
  if (h->is_auth && h->auth.n + n < 1024 && buf_add(&h->auth, at, n)) return (h->error = 500, -1);
  return 0;
}

static int on_headers_complete(http_parser *p) {
  tide_http_req_t *h = req_of(p);
  if ((p->flags & F_CONTENTLENGTH) && p->content_length > (uint64_t)h->max_body) {
    h->error = 413;
    return -1;
  }
  snprintf(h->method, sizeof h->method, "%s", http_method_str((enum http_method)p->method));
  return 0;
}

static int on_body(http_parser *p, const char *at, size_t n) {
  tide_http_req_t *h = req_of(p);
  if ((int64_t)(h->body.n + n) > h->max_body) {
    h->error = 413;
    return -1;
  }
  if (buf_add(&h->body, at, n)) return (h->error = 500, -1);
  return 0;
}

static int on_complete(http_parser *p) {
  tide_http_req_t *h = req_of(p);
  h->complete = 1;
  http_parser_pause(p, 1);
  return 0;
}

int tide_http_req_new(int64_t max_header, int64_t max_body, tide_http_req_t **out, tide_err_t *err) {
  if (!out) return tide_err_set(err, TIDE_EINVAL, "http: no output pointer");
  *out = NULL;
  if (max_header <= 0 || max_body < 0) return tide_err_set(err, TIDE_EINVAL, "http: bad limits");
  tide_http_req_t *h = calloc(1, sizeof *h);
  if (!h) return tide_err_set(err, TIDE_ENOMEM, "http: out of memory");
  h->max_header = max_header;
  h->max_body = max_body;
  http_parser_settings_init(&h->settings);
  h->settings.on_message_begin = on_begin;
  h->settings.on_url = on_url;
  h->settings.on_header_field = on_field;
  h->settings.on_header_value = on_value;
  h->settings.on_headers_complete = on_headers_complete;
  h->settings.on_body = on_body;
  h->settings.on_message_complete = on_complete;
  tide_http_req_reset(h);
  *out = h;
  return 0;
}

void tide_http_req_free(tide_http_req_t *h) {
  if (!h) return;
  free(h->url.p);
  free(h->body.p);
  free(h->field.p);
  free(h->auth.p);
  free(h);
}

void tide_http_req_reset(tide_http_req_t *h) {
  http_parser_init(&h->parser, HTTP_REQUEST);
  h->parser.data = h;
  h->header_bytes = 0;
  h->url.n = h->body.n = h->field.n = h->auth.n = 0;
  buf_add(&h->url, "", 0);
  buf_add(&h->body, "", 0);
  buf_add(&h->auth, "", 0);
  h->in_value = h->is_auth = h->error = h->complete = h->started = 0;
  h->method[0] = 0;
}

int tide_http_req_feed(tide_http_req_t *h, const char *data, size_t len, size_t *used) {
  *used = 0;
  if (h->complete) return 1;
  if (len == 0) return 0;
  size_t n = http_parser_execute(&h->parser, &h->settings, data, len);
  enum http_errno e = HTTP_PARSER_ERRNO(&h->parser);
  *used = n > len ? len : n;
  if (h->complete) {
    if (!h->url.p || !h->body.p || !h->auth.p) return 500;
    return 1;
  }
  if (h->error) return h->error;
  if (e != HPE_OK) return 400;
  if (n != len) return 400;
  return 0;
}

const char *tide_http_req_method(const tide_http_req_t *h) { return h->method; }
const char *tide_http_req_path(const tide_http_req_t *h) { return h->url.p ? h->url.p : ""; }
const char *tide_http_req_body(const tide_http_req_t *h, int64_t *len) {
  if (len) *len = (int64_t)h->body.n;
  return h->body.p ? h->body.p : "";
}
const char *tide_http_req_auth(const tide_http_req_t *h) { return h->auth.p ? h->auth.p : ""; }
int tide_http_req_keep_alive(const tide_http_req_t *h) { return http_should_keep_alive(&h->parser); }
int tide_http_req_partial(const tide_http_req_t *h) { return h->started && !h->complete; }

int tide_http_auth_ok(const char *header, const char *key) {
  if (!key || !key[0]) return 1;
  if (!header) return 0;
  size_t hn = strlen(header), kn = strlen(key);
  const char *pre = "Bearer ";
  unsigned diff = hn != kn + 7;
  /* walk the expected length whatever the header holds */
  for (size_t i = 0; i < kn + 7; i++) {
    char want = i < 7 ? pre[i] : key[i - 7];
    char got = i < hn ? header[i] : 0;
    diff |= (unsigned)(unsigned char)(want ^ got);
  }
  return diff == 0;
}

/* ---- the server ------------------------------------------------------------- */

enum { C_READ, C_BUSY, C_STREAM };
enum { M_RESP, M_START, M_CHUNK, M_END };

typedef struct conn {
  uv_tcp_t tcp;
  uv_timer_t timer;
  tide_server_t *srv;
  tide_http_req_t *http;
  struct conn *prev, *next;
  int64_t id;
  int state;
  int closing;
  int open_handles;
  int keep_alive;
  int failed; /* an error response is on its way; the connection closes */
  int writes; /* writes in flight */
  buf_t pending; /* bytes after a complete request, parsed once it is answered */
} conn_t;

typedef struct event {
  struct event *next;
  int kind;
  int64_t id;
  char method[16];
  char *path, *body;
  int64_t body_len;
} event_t;

typedef struct msg {
  struct msg *next;
  int kind;
  int64_t id;
  int32_t status;
  char *data;
  size_t len;
} msg_t;

struct tide_server {
  uv_loop_t loop;
  uv_tcp_t listener;
  uv_async_t wake;
  uv_signal_t sigint, sigterm;
  pthread_t thread;
  int thread_started;
  int32_t port;
  char *api_key;
  int64_t max_body, max_header;
  int32_t timeout_ms, max_conns;
  conn_t *conns;
  int64_t next_id;
  int listening;
  /* shared between the threads, under mu */
  pthread_mutex_t mu;
  pthread_cond_t cv;
  event_t *ev_head, *ev_tail;
  msg_t *msg_head, *msg_tail;
  int stop_signal;   /* a signal arrived */
  int stop_reported; /* poll told the engine */
  int quit;          /* tide_server_free asked the loop to end */
  event_t *last;     /* the event the engine holds */
  uv_timer_t drain;  /* at quit: wait for writes in flight (up to a second) */
  int drain_ticks;
  _Atomic int64_t stats[7];
};

static void push_event(tide_server_t *s, int kind, int64_t id, conn_t *c) {
  event_t *e = calloc(1, sizeof *e);
  if (!e) return;
  e->kind = kind;
  e->id = id;
  if (c) {
    int64_t bl;
    const char *body = tide_http_req_body(c->http, &bl);
    snprintf(e->method, sizeof e->method, "%s", tide_http_req_method(c->http));
    e->path = strdup(tide_http_req_path(c->http));
    e->body = malloc((size_t)bl + 1);
    if (!e->path || !e->body) {
      free(e->path);
      free(e->body);
      free(e);
      return;
    }
    memcpy(e->body, body, (size_t)bl);
    e->body[bl] = 0;
    e->body_len = bl;
  }
  pthread_mutex_lock(&s->mu);
  if (s->ev_tail) s->ev_tail->next = e;
  else s->ev_head = e;
  s->ev_tail = e;
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
}

static void event_free(event_t *e) {
  if (!e) return;
  free(e->path);
  free(e->body);
  free(e);
}

static void on_handle_closed(uv_handle_t *h) {
  conn_t *c = (conn_t *)h->data;
  if (--c->open_handles > 0) return;
  tide_http_req_free(c->http);
  free(c->pending.p);
  free(c);
}

static void conn_close(conn_t *c) {
  if (c->closing) return;
  c->closing = 1;
  tide_server_t *s = c->srv;
  if (c->id && c->state != C_READ) push_event(s, TIDE_SERVER_GONE, c->id, NULL);
  c->id = 0;
  if (c->prev) c->prev->next = c->next;
  else s->conns = c->next;
  if (c->next) c->next->prev = c->prev;
  s->stats[1]--;
  uv_timer_stop(&c->timer);
  uv_close((uv_handle_t *)&c->timer, on_handle_closed);
  uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
}

typedef struct wreq {
  uv_write_t w;
  conn_t *c;
  int close_after;
  char data[];
} wreq_t;

static void on_written(uv_write_t *w, int status) {
  wreq_t *r = (wreq_t *)w;
  conn_t *c = r->c;
  c->writes--;
  if ((status < 0 || r->close_after) && !c->closing) conn_close(c);
  free(r);
}

/* Queue bytes on the socket; close afterwards when close_after. */
static void conn_write(conn_t *c, const char *head, size_t hn, const char *body, size_t bn, const char *tail, size_t tn,
                       int close_after) {
  if (c->closing) return;
  wreq_t *r = malloc(sizeof *r + hn + bn + tn);
  if (!r) {
    conn_close(c);
    return;
  }
  r->c = c;
  r->close_after = close_after;
  if (hn) memcpy(r->data, head, hn);
  if (bn) memcpy(r->data + hn, body, bn);
  if (tn) memcpy(r->data + hn + bn, tail, tn);
  uv_buf_t b = uv_buf_init(r->data, (unsigned)(hn + bn + tn));
  c->writes++;
  if (uv_write(&r->w, (uv_stream_t *)&c->tcp, &b, 1, on_written) != 0) {
    c->writes--;
    free(r);
    conn_close(c);
  }
}

static const char *reason(int status) {
  switch (status) {
  case 200: return "OK";
  case 400: return "Bad Request";
  case 401: return "Unauthorized";
  case 404: return "Not Found";
  case 405: return "Method Not Allowed";
  case 408: return "Request Timeout";
  case 413: return "Payload Too Large";
  case 422: return "Unprocessable Entity";
  case 429: return "Too Many Requests";
  case 431: return "Request Header Fields Too Large";
  case 500: return "Internal Server Error";
  case 503: return "Service Unavailable";
  default: return status < 500 ? "Client Error" : "Server Error";
  }
}

static void send_response(conn_t *c, int status, const char *ctype, const char *body, size_t len, int close_after) {
  char head[512];
  int hn = snprintf(head, sizeof head,
                    "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\nConnection: %s\r\n%s\r\n", status,
                    reason(status), ctype, len, close_after ? "close" : "keep-alive",
                    status == 401 ? "WWW-Authenticate: Bearer\r\n" : "");
  conn_write(c, head, (size_t)hn, body, len, NULL, 0, close_after);
}

/* An error produced by the loop itself (OpenAI-shaped JSON); the connection closes. */
static void send_error(conn_t *c, int status, const char *msg, int close_after) {
  char body[256];
  int n = snprintf(body, sizeof body, "{\"error\":{\"message\":\"%s\",\"type\":\"invalid_request_error\",\"code\":%d}}",
                   msg, status);
  c->srv->stats[3]++;
  c->failed = close_after;
  send_response(c, status, "application/json", body, (size_t)n, close_after);
}

static void process(conn_t *c);

static void on_timeout(uv_timer_t *t) {
  conn_t *c = (conn_t *)t->data;
  if (c->closing || c->state != C_READ) return;
  c->srv->stats[6]++;
  if (tide_http_req_partial(c->http) || c->pending.n) send_error(c, 408, "request timed out", 1);
  else conn_close(c);
}

/* Parse what is in c->pending while the connection waits for a request. */
static void process(conn_t *c) {
  tide_server_t *s = c->srv;
  while (!c->closing && !c->failed && c->state == C_READ && c->pending.n > 0) {
    size_t used = 0;
    int rc = tide_http_req_feed(c->http, c->pending.p, c->pending.n, &used);
    memmove(c->pending.p, c->pending.p + used, c->pending.n - used);
    c->pending.n -= used;
    if (rc == 0) return;
    if (rc != 1) {
      send_error(c, rc, rc == 413 ? "request body too large"
                        : rc == 431 ? "request headers too large"
                                    : "malformed HTTP request",
                 1);
      return;
    }
    uv_timer_stop(&c->timer);
    s->stats[2]++;
    c->keep_alive = tide_http_req_keep_alive(c->http);
    const char *path = tide_http_req_path(c->http);
    int health = strcmp(path, "/health") == 0;
    if (!health && !tide_http_auth_ok(tide_http_req_auth(c->http), s->api_key)) {
      s->stats[4]++;
      s->stats[3]--; /* counted apart */
      send_error(c, 401, "missing or wrong API key", !c->keep_alive);
      tide_http_req_reset(c->http);
      uv_timer_start(&c->timer, on_timeout, (uint64_t)s->timeout_ms, 0);
      continue;
    }
    c->id = ++s->next_id;
    c->state = C_BUSY;
    push_event(s, TIDE_SERVER_REQUEST, c->id, c);
  }
}

/* The answer to the current request is out: on to the next one. */
static void request_done(conn_t *c) {
  c->id = 0;
  c->state = C_READ;
  if (!c->keep_alive) return; /* the write closes it */
  tide_http_req_reset(c->http);
  uv_timer_start(&c->timer, on_timeout, (uint64_t)c->srv->timeout_ms, 0);
  process(c);
}

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b) {
  (void)h;
  size_t n = hint < 65536 ? hint : 65536;
  b->base = malloc(n);
  b->len = b->base ? n : 0;
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *b) {
  conn_t *c = (conn_t *)st->data;
  if (nread < 0) {
    free(b->base);
    if (!c->closing) conn_close(c);
    return;
  }
  if (nread > 0 && !c->closing) {
    tide_server_t *s = c->srv;
    if ((int64_t)(c->pending.n + (size_t)nread) > s->max_body + s->max_header + 65536) {
      free(b->base);
      if (c->state == C_READ && !c->failed) send_error(c, 413, "too much data", 1);
      else conn_close(c);
      return;
    }
    if (buf_add(&c->pending, b->base, (size_t)nread)) {
      free(b->base);
      conn_close(c);
      return;
    }
    process(c);
  }
  free(b->base);
}

static void on_connection(uv_stream_t *server, int status) {
  tide_server_t *s = (tide_server_t *)server->data;
  if (status < 0) return;
  conn_t *c = calloc(1, sizeof *c);
  if (!c) return;
  c->srv = s;
  if (tide_http_req_new(s->max_header, s->max_body, &c->http, NULL)) {
    free(c);
    return;
  }
  uv_tcp_init(&s->loop, &c->tcp);
  uv_timer_init(&s->loop, &c->timer);
  c->tcp.data = c->timer.data = c;
  c->open_handles = 2;
  c->next = s->conns;
  if (s->conns) s->conns->prev = c;
  s->conns = c;
  s->stats[1]++;
  if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
    conn_close(c);
    return;
  }
  s->stats[0]++;
  if (s->stats[1] > s->max_conns) {
    s->stats[5]++;
    send_error(c, 503, "too many connections", 1);
    return;
  }
  uv_timer_start(&c->timer, on_timeout, (uint64_t)s->timeout_ms, 0);
  uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

static conn_t *conn_by_id(tide_server_t *s, int64_t id) {
  for (conn_t *c = s->conns; c; c = c->next)
    if (c->id == id && !c->closing) return c;
  return NULL;
}

static void shutdown_loop(tide_server_t *s) {
  while (s->conns) conn_close(s->conns);
  if (s->listening) {
    uv_close((uv_handle_t *)&s->listener, NULL);
    s->listening = 0;
  }
  if (!uv_is_closing((uv_handle_t *)&s->sigint)) uv_close((uv_handle_t *)&s->sigint, NULL);
  if (!uv_is_closing((uv_handle_t *)&s->sigterm)) uv_close((uv_handle_t *)&s->sigterm, NULL);
  if (!uv_is_closing((uv_handle_t *)&s->wake)) uv_close((uv_handle_t *)&s->wake, NULL);
}

static void on_drain(uv_timer_t *t) {
  tide_server_t *s = (tide_server_t *)t->data;
  int busy = 0;
  for (conn_t *c = s->conns; c; c = c->next) busy += c->writes;
  if (busy && ++s->drain_ticks < 100) return;
  uv_timer_stop(t);
  uv_close((uv_handle_t *)t, NULL);
  shutdown_loop(s);
}

static void on_wake(uv_async_t *a) {
  tide_server_t *s = (tide_server_t *)a->data;
  pthread_mutex_lock(&s->mu);
  msg_t *m = s->msg_head;
  s->msg_head = s->msg_tail = NULL;
  int quit = s->quit;
  pthread_mutex_unlock(&s->mu);
  while (m) {
    msg_t *next = m->next;
    conn_t *c = conn_by_id(s, m->id);
    if (c) {
      if (m->kind == M_RESP && c->state == C_BUSY) {
        send_response(c, m->status, m->data, m->data + strlen(m->data) + 1, m->len, !c->keep_alive);
        request_done(c);
      } else if (m->kind == M_START && c->state == C_BUSY) {
        static const char head[] = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                                   "Transfer-Encoding: chunked\r\n";
        char h2[64];
        int n = snprintf(h2, sizeof h2, "Connection: %s\r\n\r\n", c->keep_alive ? "keep-alive" : "close");
        conn_write(c, head, sizeof head - 1, h2, (size_t)n, NULL, 0, 0);
        c->state = C_STREAM;
      } else if (m->kind == M_CHUNK && c->state == C_STREAM && m->len > 0) {
        char h[32];
        int n = snprintf(h, sizeof h, "%zx\r\n", m->len);
        conn_write(c, h, (size_t)n, m->data, m->len, "\r\n", 2, 0);
      } else if (m->kind == M_END && c->state == C_STREAM) {
        conn_write(c, "0\r\n\r\n", 5, NULL, 0, NULL, 0, !c->keep_alive);
        request_done(c);
      }
    }
    free(m->data);
    free(m);
    m = next;
  }
  if (quit && !uv_is_active((uv_handle_t *)&s->drain)) uv_timer_start(&s->drain, on_drain, 0, 10);
}

static void on_signal(uv_signal_t *h, int sig) {
  (void)sig;
  tide_server_t *s = (tide_server_t *)h->data;
  if (s->listening) {
    uv_close((uv_handle_t *)&s->listener, NULL);
    s->listening = 0;
  }
  pthread_mutex_lock(&s->mu);
  s->stop_signal = 1;
  pthread_cond_broadcast(&s->cv);
  pthread_mutex_unlock(&s->mu);
}

/* SIGPIPE without a process-wide side effect: every socket write happens on
 * a thread that blocks SIGPIPE, so a write to a peer that went away fails
 * with EPIPE (the connection is closed) instead of killing the process, and
 * the signal disposition the embedding program chose is left alone. A write
 * raises SIGPIPE for the writing thread only; while blocked it stays pending
 * there and is taken back (pipe_unblock) before the old mask returns. */
static void pipe_block(sigset_t *old) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &set, old);
}

static void pipe_unblock(const sigset_t *old) {
  sigset_t set, pend;
  sigemptyset(&set);
  sigaddset(&set, SIGPIPE);
  struct timespec zero = {0, 0};
  while (sigpending(&pend) == 0 && sigismember(&pend, SIGPIPE) && sigtimedwait(&set, NULL, &zero) == SIGPIPE) {
  }
  pthread_sigmask(SIG_SETMASK, old, NULL);
}

static void *loop_main(void *arg) {
  tide_server_t *s = (tide_server_t *)arg;
  sigset_t old;
  pipe_block(&old); /* this thread does all the socket writes */
  uv_run(&s->loop, UV_RUN_DEFAULT);
  pipe_unblock(&old);
  return NULL;
}

int tide_server_start(const char *host, int32_t port, const char *api_key, int64_t max_body, int64_t max_header,
                      int32_t timeout_ms, int32_t max_conns, tide_server_t **out, tide_err_t *err) {
  if (!out) return tide_err_set(err, TIDE_EINVAL, "server: no output pointer");
  *out = NULL;
  if (!host) host = "127.0.0.1";
  if (port < 0 || port > 65535) return tide_err_set(err, TIDE_EINVAL, "server: bad port %d", port);
  if (max_body <= 0 || max_header <= 0 || timeout_ms <= 0 || max_conns <= 0)
    return tide_err_set(err, TIDE_EINVAL, "server: limits must be positive");
  tide_server_t *s = calloc(1, sizeof *s);
  if (!s) return tide_err_set(err, TIDE_ENOMEM, "server: out of memory");
  s->max_body = max_body;
  s->max_header = max_header;
  s->timeout_ms = timeout_ms;
  s->max_conns = max_conns;
  if (api_key && api_key[0]) {
    s->api_key = strdup(api_key);
    if (!s->api_key) {
      free(s);
      return tide_err_set(err, TIDE_ENOMEM, "server: out of memory");
    }
  }
  pthread_mutex_init(&s->mu, NULL);
  pthread_cond_init(&s->cv, NULL);
  int rc = uv_loop_init(&s->loop);
  if (rc) {
    free(s->api_key);
    free(s);
    return tide_err_set(err, TIDE_EIO, "server: loop: %s", uv_strerror(rc));
  }
  struct sockaddr_storage addr;
  rc = uv_ip4_addr(host, port, (struct sockaddr_in *)&addr);
  if (rc) rc = uv_ip6_addr(host, port, (struct sockaddr_in6 *)&addr);
  uv_tcp_init(&s->loop, &s->listener);
  s->listener.data = s;
  if (!rc) rc = uv_tcp_bind(&s->listener, (const struct sockaddr *)&addr, 0);
  if (!rc) rc = uv_listen((uv_stream_t *)&s->listener, 1024, on_connection);
  if (rc) {
    tide_err_set(err, TIDE_EIO, "server: cannot listen on %s:%d: %s", host, port, uv_strerror(rc));
    uv_close((uv_handle_t *)&s->listener, NULL);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    uv_loop_close(&s->loop);
    free(s->api_key);
    free(s);
    return TIDE_EIO;
  }
  s->listening = 1;
  struct sockaddr_storage got;
  int len = sizeof got;
  uv_tcp_getsockname(&s->listener, (struct sockaddr *)&got, &len);
  s->port = got.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&got)->sin6_port)
                                      : ntohs(((struct sockaddr_in *)&got)->sin_port);
  uv_async_init(&s->loop, &s->wake, on_wake);
  s->wake.data = s;
  uv_timer_init(&s->loop, &s->drain);
  s->drain.data = s;
  uv_signal_init(&s->loop, &s->sigint);
  uv_signal_init(&s->loop, &s->sigterm);
  s->sigint.data = s->sigterm.data = s;
  uv_signal_start(&s->sigint, on_signal, SIGINT);
  uv_signal_start(&s->sigterm, on_signal, SIGTERM);
  if (pthread_create(&s->thread, NULL, loop_main, s) != 0) {
    s->quit = 1;
    uv_close((uv_handle_t *)&s->drain, NULL);
    shutdown_loop(s);
    sigset_t old;
    pipe_block(&old);
    uv_run(&s->loop, UV_RUN_DEFAULT);
    pipe_unblock(&old);
    uv_loop_close(&s->loop);
    free(s->api_key);
    free(s);
    return tide_err_set(err, TIDE_EIO, "server: cannot start the loop thread");
  }
  s->thread_started = 1;
  *out = s;
  return 0;
}

int32_t tide_server_port(const tide_server_t *s) { return s->port; }

int64_t tide_server_stat(const tide_server_t *s, int32_t which) {
  if (which < 0 || which >= 7) return -1;
  return s->stats[which];
}

int tide_server_poll(tide_server_t *s, int32_t timeout_ms, int64_t *id, const char **method, const char **path,
                     const char **body, int64_t *body_len) {
  event_free(s->last);
  s->last = NULL;
  pthread_mutex_lock(&s->mu);
  if (!s->ev_head && !(s->stop_signal && !s->stop_reported) && timeout_ms > 0) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += timeout_ms / 1000;
    ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
      ts.tv_sec++;
      ts.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&s->cv, &s->mu, &ts);
  }
  int kind = TIDE_SERVER_NONE;
  event_t *e = s->ev_head;
  if (e) {
    s->ev_head = e->next;
    if (!s->ev_head) s->ev_tail = NULL;
    kind = e->kind;
  } else if (s->stop_signal && !s->stop_reported) {
    s->stop_reported = 1;
    kind = TIDE_SERVER_STOP;
  }
  pthread_mutex_unlock(&s->mu);
  if (e) {
    s->last = e;
    if (id) *id = e->id;
    if (method) *method = e->method;
    if (path) *path = e->path ? e->path : "";
    if (body) *body = e->body ? e->body : "";
    if (body_len) *body_len = e->body_len;
  }
  return kind;
}

static int post(tide_server_t *s, int kind, int64_t id, int32_t status, const char *a, size_t an, const char *b,
                size_t bn) {
  msg_t *m = calloc(1, sizeof *m);
  if (!m) return TIDE_ENOMEM;
  m->data = malloc(an + bn + 1);
  if (!m->data) {
    free(m);
    return TIDE_ENOMEM;
  }
  if (an) memcpy(m->data, a, an);
  if (bn) memcpy(m->data + an, b, bn);
  m->data[an + bn] = 0;
  m->kind = kind;
  m->id = id;
  m->status = status;
  m->len = kind == M_RESP ? bn : an;
  pthread_mutex_lock(&s->mu);
  if (s->msg_tail) s->msg_tail->next = m;
  else s->msg_head = m;
  s->msg_tail = m;
  pthread_mutex_unlock(&s->mu);
  uv_async_send(&s->wake);
  return 0;
}

int tide_server_respond(tide_server_t *s, int64_t id, int32_t status, const char *content_type, const char *body,
                        int64_t len) {
  if (!content_type || strlen(content_type) > 100 || len < 0 || (len > 0 && !body)) return TIDE_EINVAL;
  return post(s, M_RESP, id, status, content_type, strlen(content_type) + 1, body, (size_t)len);
}

int tide_server_stream_start(tide_server_t *s, int64_t id) { return post(s, M_START, id, 200, NULL, 0, NULL, 0); }

int tide_server_stream_send(tide_server_t *s, int64_t id, const char *data, int64_t len) {
  if (len < 0 || (len > 0 && !data)) return TIDE_EINVAL;
  return post(s, M_CHUNK, id, 200, data, (size_t)len, NULL, 0);
}

int tide_server_stream_end(tide_server_t *s, int64_t id) { return post(s, M_END, id, 200, NULL, 0, NULL, 0); }

void tide_server_free(tide_server_t *s) {
  if (!s) return;
  if (s->thread_started) {
    pthread_mutex_lock(&s->mu);
    s->quit = 1;
    pthread_mutex_unlock(&s->mu);
    uv_async_send(&s->wake);
    pthread_join(s->thread, NULL);
  }
  sigset_t old;
  pipe_block(&old); /* closing may still flush on this thread */
  uv_run(&s->loop, UV_RUN_DEFAULT);
  pipe_unblock(&old);
  uv_loop_close(&s->loop);
  event_free(s->last);
  for (event_t *e = s->ev_head; e;) {
    event_t *n = e->next;
    event_free(e);
    e = n;
  }
  for (msg_t *m = s->msg_head; m;) {
    msg_t *n = m->next;
    free(m->data);
    free(m);
    m = n;
  }
  pthread_mutex_destroy(&s->mu);
  pthread_cond_destroy(&s->cv);
  free(s->api_key);
  free(s);
}
