/* Tests of the server: the request parser (whole, byte by byte, pipelined,
 * chunked bodies, limits, malformed input, keep-alive), the constant-time
 * key check, and one live round trip through the loop thread and the
 * engine-side queue (poll, respond, stream) over loopback. */
#include "testutil.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "server.h"

static tide_http_req_t *parser(int64_t max_header, int64_t max_body) {
  tide_http_req_t *h = NULL;
  tide_err_t err;
  assert_int_equal(tide_http_req_new(max_header, max_body, &h, &err), 0);
  return h;
}

static const char REQ[] = "POST /v1/completions?x=1 HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer k1\r\n"
                          "Content-Length: 5\r\n\r\nhello";

static void test_server_parse_whole_and_bytewise(void **state) {
  (void)state;
  tide_http_req_t *h = parser(4096, 1024);
  size_t used;
  assert_int_equal(tide_http_req_feed(h, REQ, sizeof REQ - 1, &used), 1);
  assert_int_equal(used, sizeof REQ - 1);
  assert_string_equal(tide_http_req_method(h), "POST");
  assert_string_equal(tide_http_req_path(h), "/v1/completions?x=1");
  assert_string_equal(tide_http_req_auth(h), "Bearer k1");
  int64_t bl;
  assert_memory_equal(tide_http_req_body(h, &bl), "hello", 5);
  assert_int_equal(bl, 5);
  assert_true(tide_http_req_keep_alive(h));
  tide_http_req_reset(h);
  int rc = 0;
  for (size_t i = 0; i < sizeof REQ - 1; i++) {
    assert_int_equal(rc, 0);
    assert_true(i == 0 || tide_http_req_partial(h));
    rc = tide_http_req_feed(h, REQ + i, 1, &used);
    assert_int_equal(used, 1);
  }
  assert_int_equal(rc, 1);
  assert_memory_equal(tide_http_req_body(h, &bl), "hello", 5);
  tide_http_req_free(h);
}

static void test_server_parse_pipelined_and_chunked(void **state) {
  (void)state;
  tide_http_req_t *h = parser(4096, 1024);
  const char two[] = "GET /health HTTP/1.1\r\n\r\nPOST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                     "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
  size_t used;
  assert_int_equal(tide_http_req_feed(h, two, sizeof two - 1, &used), 1);
  assert_string_equal(tide_http_req_path(h), "/health");
  assert_string_equal(tide_http_req_auth(h), "");
  tide_http_req_reset(h);
  size_t rest = sizeof two - 1 - used, used2;
  assert_int_equal(tide_http_req_feed(h, two + used, rest, &used2), 1);
  assert_int_equal(used2, rest);
  int64_t bl;
  assert_memory_equal(tide_http_req_body(h, &bl), "abcde", 5);
  assert_int_equal(bl, 5);
  tide_http_req_free(h);
}

static void test_server_parse_limits_and_garbage(void **state) {
  (void)state;
  size_t used;
  tide_http_req_t *h = parser(32, 4);
  assert_int_equal(tide_http_req_feed(h, REQ, sizeof REQ - 1, &used), 431); /* header bytes over 32 */
  tide_http_req_free(h);
  h = parser(4096, 4);
  assert_int_equal(tide_http_req_feed(h, REQ, sizeof REQ - 1, &used), 413); /* body of 5 over 4 */
  tide_http_req_reset(h);
  const char chunked[] = "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n9\r\n123456789\r\n0\r\n\r\n";
  assert_int_equal(tide_http_req_feed(h, chunked, sizeof chunked - 1, &used), 413);
  tide_http_req_reset(h);
  assert_int_equal(tide_http_req_feed(h, "GARBAGE\r\n\r\n", 11, &used), 400);
  tide_http_req_reset(h);
  const char cl[] = "POST / HTTP/1.1\r\nContent-Length: -5\r\n\r\n";
  assert_int_equal(tide_http_req_feed(h, cl, sizeof cl - 1, &used), 400);
  tide_http_req_reset(h);
  const char close[] = "GET / HTTP/1.0\r\n\r\n";
  assert_int_equal(tide_http_req_feed(h, close, sizeof close - 1, &used), 1);
  assert_false(tide_http_req_keep_alive(h));
  tide_http_req_free(h);
}

static void test_server_auth(void **state) {
  (void)state;
  assert_true(tide_http_auth_ok("Bearer secret", "secret"));
  assert_false(tide_http_auth_ok("Bearer secre", "secret"));
  assert_false(tide_http_auth_ok("Bearer secretx", "secret"));
  assert_false(tide_http_auth_ok("bearer secret", "secret"));
  assert_false(tide_http_auth_ok("", "secret"));
  assert_true(tide_http_auth_ok("", NULL));
  assert_true(tide_http_auth_ok("anything", ""));
}

static int dial(int port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  struct sockaddr_in a = {0};
  a.sin_family = AF_INET;
  a.sin_port = htons((uint16_t)port);
  a.sin_addr.s_addr = htonl(0x7f000001);
  assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
  return fd;
}

static size_t read_until_close(int fd, char *buf, size_t cap) {
  size_t n = 0;
  ssize_t r;
  while (n < cap - 1 && (r = read(fd, buf + n, cap - 1 - n)) > 0) n += (size_t)r;
  buf[n] = 0;
  return n;
}

static void test_server_round_trip(void **state) {
  (void)state;
  tide_server_t *s = NULL;
  tide_err_t err;
  assert_int_equal(tide_server_start("127.0.0.1", 0, "k1", 1024, 4096, 5000, 16, &s, &err), 0);
  int port = tide_server_port(s);
  assert_true(port > 0);
  /* unauthorized: answered by the loop, never reaches the queue */
  int fd = dial(port);
  const char bad[] = "GET /v1/models HTTP/1.1\r\nConnection: close\r\n\r\n";
  assert_int_equal(write(fd, bad, sizeof bad - 1), (ssize_t)(sizeof bad - 1));
  char buf[4096];
  read_until_close(fd, buf, sizeof buf);
  close(fd);
  assert_non_null(strstr(buf, "HTTP/1.1 401"));
  /* a whole response, then a stream on the same keep-alive connection */
  fd = dial(port);
  const char req[] = "POST /v1/completions HTTP/1.1\r\nAuthorization: Bearer k1\r\nContent-Length: 2\r\n\r\n{}"
                     "GET /s HTTP/1.1\r\nAuthorization: Bearer k1\r\nConnection: close\r\n\r\n";
  assert_int_equal(write(fd, req, sizeof req - 1), (ssize_t)(sizeof req - 1));
  int64_t id, bl;
  const char *method, *path, *body;
  int k = TIDE_SERVER_NONE;
  for (int i = 0; i < 50 && k == TIDE_SERVER_NONE; i++) k = tide_server_poll(s, 100, &id, &method, &path, &body, &bl);
  assert_int_equal(k, TIDE_SERVER_REQUEST);
  assert_string_equal(method, "POST");
  assert_string_equal(path, "/v1/completions");
  assert_int_equal(bl, 2);
  assert_int_equal(tide_server_respond(s, id, 200, "application/json", "{\"ok\":1}", 8), 0);
  k = TIDE_SERVER_NONE;
  for (int i = 0; i < 50 && k == TIDE_SERVER_NONE; i++) k = tide_server_poll(s, 100, &id, &method, &path, &body, &bl);
  assert_int_equal(k, TIDE_SERVER_REQUEST);
  assert_string_equal(path, "/s");
  assert_int_equal(tide_server_stream_start(s, id), 0);
  assert_int_equal(tide_server_stream_send(s, id, "data: a\n\n", 9), 0);
  assert_int_equal(tide_server_stream_end(s, id), 0);
  read_until_close(fd, buf, sizeof buf);
  close(fd);
  assert_non_null(strstr(buf, "Content-Length: 8\r\n"));
  assert_non_null(strstr(buf, "{\"ok\":1}HTTP/1.1 200 OK"));
  assert_non_null(strstr(buf, "text/event-stream"));
  assert_non_null(strstr(buf, "9\r\ndata: a\n\n\r\n0\r\n\r\n"));
  assert_int_equal(tide_server_stat(s, 4), 1);
  assert_int_equal(tide_server_stat(s, 99), -1);
  tide_server_free(s);
  /* bad arguments */
  assert_int_not_equal(tide_server_start("127.0.0.1", 70000, NULL, 1, 1, 1, 1, &s, &err), 0);
  assert_int_not_equal(tide_server_start("not an address", 0, NULL, 1, 1, 1, 1, &s, &err), 0);
}

/* A client that vanishes while its stream is being written: the loop's
 * writes fail with EPIPE/ECONNRESET on its own thread, the process (whose
 * SIGPIPE stays at the default action, which would kill it) lives on, the
 * engine hears that the request is gone, and the server's start left the
 * process-wide SIGPIPE disposition untouched. */
static void test_server_peer_gone_mid_stream(void **state) {
  (void)state;
  struct sigaction before, after;
  assert_int_equal(sigaction(SIGPIPE, NULL, &before), 0);
  assert_true(before.sa_handler == SIG_DFL);
  tide_server_t *s = NULL;
  tide_err_t err;
  assert_int_equal(tide_server_start("127.0.0.1", 0, NULL, 1024, 4096, 5000, 16, &s, &err), 0);
  assert_int_equal(sigaction(SIGPIPE, NULL, &after), 0);
  assert_true(after.sa_handler == SIG_DFL);
  int fd = dial(tide_server_port(s));
  const char req[] = "GET /s HTTP/1.1\r\n\r\n";
  assert_int_equal(write(fd, req, sizeof req - 1), (ssize_t)(sizeof req - 1));
  int64_t id, bl, gone_id = -1;
  const char *method, *path, *body;
  int k = TIDE_SERVER_NONE;
  for (int i = 0; i < 50 && k == TIDE_SERVER_NONE; i++) k = tide_server_poll(s, 100, &id, &method, &path, &body, &bl);
  assert_int_equal(k, TIDE_SERVER_REQUEST);
  assert_int_equal(tide_server_stream_start(s, id), 0);
  /* reset the connection (no graceful close) and keep streaming into it */
  struct linger lg = {1, 0};
  assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg), 0);
  close(fd);
  static char chunk[256 * 1024];
  memset(chunk, 'x', sizeof chunk);
  for (int i = 0; i < 64 && gone_id < 0; i++) {
    tide_server_stream_send(s, id, chunk, (int64_t)sizeof chunk);
    k = tide_server_poll(s, 20, &gone_id, &method, &path, &body, &bl);
    if (k != TIDE_SERVER_GONE) gone_id = -1;
  }
  assert_int_equal(gone_id, id);
  /* still serving */
  fd = dial(tide_server_port(s));
  const char req2[] = "GET /t HTTP/1.1\r\nConnection: close\r\n\r\n";
  assert_int_equal(write(fd, req2, sizeof req2 - 1), (ssize_t)(sizeof req2 - 1));
  k = TIDE_SERVER_NONE;
  for (int i = 0; i < 50 && k != TIDE_SERVER_REQUEST; i++) k = tide_server_poll(s, 100, &id, &method, &path, &body, &bl);
  assert_int_equal(k, TIDE_SERVER_REQUEST);
  assert_string_equal(path, "/t");
  assert_int_equal(tide_server_respond(s, id, 200, "text/plain", "ok", 2), 0);
  char buf[4096];
  read_until_close(fd, buf, sizeof buf);
  close(fd);
  assert_non_null(strstr(buf, "HTTP/1.1 200"));
  tide_server_free(s);
  assert_int_equal(sigaction(SIGPIPE, NULL, &after), 0);
  assert_true(after.sa_handler == SIG_DFL);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_server_parse_whole_and_bytewise),
      cmocka_unit_test(test_server_parse_pipelined_and_chunked),
      cmocka_unit_test(test_server_parse_limits_and_garbage),
      cmocka_unit_test(test_server_auth),
      cmocka_unit_test(test_server_round_trip),
      cmocka_unit_test(test_server_peer_gone_mid_stream),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
