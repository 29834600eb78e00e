/* server.h: the HTTP/1.1 front of `tide serve`. One libuv loop thread owns
 * the sockets (keep-alive, limits, timeouts, API key, SSE framing) and parses
 * requests with http_parser; the engine thread (Lua) takes complete requests
 * from a queue (tide_server_poll) and answers through another queue
 * (tide_server_respond / tide_server_stream_*), which wakes the loop with
 * uv_async. Nothing here interprets request bodies: routing and JSON are the
 * engine's (lua/tide/serve.lua). */
#ifndef TIDE_SERVER_H
#define TIDE_SERVER_H

#ifndef TIDE_FFI
#include <stddef.h>
#include <stdint.h>
#endif
#include "error.h"

/* ---- one request's parser (also what fuzz/fuzz_http.c drives) ----------- */

typedef struct tide_http_req tide_http_req_t;

/* A request parser with limits: max_header bytes of request line + headers,
 * max_body bytes of body. */
int tide_http_req_new(int64_t max_header, int64_t max_body, tide_http_req_t **out, tide_err_t *err);
void tide_http_req_free(tide_http_req_t *h);
/* Feed bytes; *used gets how many were taken. Returns 1 when a request is
 * complete (the rest of data is the next request's), 0 when more bytes are
 * needed, or an HTTP error status (400, 413, 431, ...) after which the
 * connection must be closed. */
int tide_http_req_feed(tide_http_req_t *h, const char *data, size_t len, size_t *used);
/* Ready for the next request on the same connection. */
void tide_http_req_reset(tide_http_req_t *h);
/* Parts of the complete request (valid until reset/free). */
const char *tide_http_req_method(const tide_http_req_t *h);
const char *tide_http_req_path(const tide_http_req_t *h);
const char *tide_http_req_body(const tide_http_req_t *h, int64_t *len);
/* The Authorization header ("" when absent) and whether to keep the connection. */
const char *tide_http_req_auth(const tide_http_req_t *h);
int tide_http_req_keep_alive(const tide_http_req_t *h);
/* Nonzero when some bytes of a request have arrived but it is not complete. */
int tide_http_req_partial(const tide_http_req_t *h);

/* Constant-time check of an Authorization header against "Bearer KEY". */
int tide_http_auth_ok(const char *header, const char *key);

/* ---- the server ----------------------------------------------------------- */

typedef struct tide_server tide_server_t;

/* Bind host:port (port 0: any free port) and start the loop thread. api_key
 * NULL or "": no authentication. max_body, max_header in bytes; timeout_ms
 * for a request to arrive completely and for an idle keep-alive connection;
 * max_conns open connections (more are closed at once). SIGINT and SIGTERM
 * make the server stop accepting and tide_server_poll report it. */
int tide_server_start(const char *host, int32_t port, const char *api_key, int64_t max_body, int64_t max_header,
                      int32_t timeout_ms, int32_t max_conns, tide_server_t **out, tide_err_t *err);
int32_t tide_server_port(const tide_server_t *s);

/* Event kinds from tide_server_poll. */
enum { TIDE_SERVER_NONE = 0, TIDE_SERVER_REQUEST = 1, TIDE_SERVER_GONE = 2, TIDE_SERVER_STOP = 3 };

/* Wait up to timeout_ms for an event: TIDE_SERVER_REQUEST (a complete,
 * authorized request: *id, *method, *path, *body, *body_len valid until the
 * next poll), TIDE_SERVER_GONE (the client of request *id went away),
 * TIDE_SERVER_STOP (a signal asked to stop; reported once), or
 * TIDE_SERVER_NONE on timeout. */
int tide_server_poll(tide_server_t *s, int32_t timeout_ms, int64_t *id, const char **method, const char **path,
                     const char **body, int64_t *body_len);
/* A whole response to request id. */
int tide_server_respond(tide_server_t *s, int64_t id, int32_t status, const char *content_type, const char *body,
                        int64_t len);
/* A streamed response: 200 with text/event-stream, chunked; then raw bytes; then the end. */
int tide_server_stream_start(tide_server_t *s, int64_t id);
int tide_server_stream_send(tide_server_t *s, int64_t id, const char *data, int64_t len);
int tide_server_stream_end(tide_server_t *s, int64_t id);
/* Counters: 0 connections accepted, 1 open, 2 requests, 3 HTTP errors sent
 * by the loop (4xx/5xx before the engine), 4 unauthorized, 5 rejected
 * connections (over max_conns), 6 timeouts. -1 for an unknown index. */
int64_t tide_server_stat(const tide_server_t *s, int32_t which);
/* Stop the loop (closing every connection), join its thread and free. */
void tide_server_free(tide_server_t *s);

#endif
