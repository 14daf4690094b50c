/* test_http.c - the operator HTTP server on a real loop, driven by a client
 * thread with plain blocking sockets; the loop runs under a timer deadline. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "http.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#define DEADLINE_MS 10000
#define RECV_TIMEOUT_S 5
#define MAX_STEPS 4
#define RESP_MAX 65536

/* One client conversation: each step sends bytes and reads nresp complete
 * responses; then, if expect_eof, reads until the server closes. */
typedef struct step {
    const char *req;
    size_t reqlen; /* 0: strlen(req) */
    int nresp;
    bool head; /* responses carry no body */
} step;

typedef struct script {
    step steps[MAX_STEPS];
    bool expect_eof;
    bool half_close; /* shutdown(SHUT_WR) right after the last send */
    /* results, written by the client thread before it signals */
    char resp[RESP_MAX];
    size_t resp_len;
    int got_resp;
    bool got_eof;
    bool io_error;
} script;

typedef struct harness {
    uv_loop_t loop;
    uv_async_t done;
    uv_timer_t deadline;
    fb_http *http;
    uint16_t port;
    script *sc;
    void (*client)(struct harness *hs); /* NULL: run_script */
    bool timed_out, server_closed;
} harness;

static void handler(void *arg, const char *path, fb_http_response *resp)
{
    (void)arg;
    if (strcmp(path, "/health") == 0) {
        resp->status = 200;
        resp->content_type = "text/plain";
        resp->body = strdup("ok\n");
        resp->len = 3;
    } else if (strcmp(path, "/metrics") == 0) {
        resp->status = 200;
        resp->content_type = "text/plain; version=0.0.4";
        resp->body = strdup("fedbft_up 1\n");
        resp->len = strlen(resp->body);
    } else {
        resp->status = 404;
        resp->content_type = "text/plain";
        resp->body = strdup("not found\n");
        resp->len = 10;
    }
}

/* Length of the first complete response in buf, or 0 if incomplete. */
static size_t response_length(const char *buf, size_t len, bool head)
{
    const char *end = memmem(buf, len, "\r\n\r\n", 4);
    if (end == NULL)
        return 0;
    size_t hlen = (size_t)(end - buf) + 4;
    const char *cl = memmem(buf, hlen, "Content-Length: ", 16);
    assert_non_null(cl);
    size_t body = head ? 0 : strtoul(cl + 16, NULL, 10);
    return hlen + body <= len ? hlen + body : 0;
}

static void run_script(script *sc, uint16_t port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct timeval tv = {RECV_TIMEOUT_S, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        sc->io_error = true;
        close(fd);
        return;
    }
    size_t parsed = 0; /* bytes of resp already counted as responses */
    for (int i = 0; i < MAX_STEPS && sc->steps[i].req != NULL; i++) {
        step *st = &sc->steps[i];
        size_t len = st->reqlen ? st->reqlen : strlen(st->req);
        if (send(fd, st->req, len, MSG_NOSIGNAL) != (ssize_t)len) {
            sc->io_error = true;
            break;
        }
        if (sc->half_close && (i + 1 == MAX_STEPS || sc->steps[i + 1].req == NULL))
            shutdown(fd, SHUT_WR);
        for (int r = 0; r < st->nresp;) {
            size_t n = response_length(sc->resp + parsed, sc->resp_len - parsed, st->head);
            if (n > 0) {
                parsed += n;
                sc->got_resp++;
                r++;
                continue;
            }
            ssize_t got = recv(fd, sc->resp + sc->resp_len, RESP_MAX - 1 - sc->resp_len, 0);
            if (got <= 0) {
                sc->io_error = true;
                goto out;
            }
            sc->resp_len += (size_t)got;
            sc->resp[sc->resp_len] = '\0';
        }
    }
    if (sc->expect_eof) {
        for (;;) {
            ssize_t got = recv(fd, sc->resp + sc->resp_len, RESP_MAX - 1 - sc->resp_len, 0);
            if (got == 0) {
                sc->got_eof = true;
                break;
            }
            if (got < 0) {
                sc->io_error = true;
                break;
            }
            sc->resp_len += (size_t)got;
            sc->resp[sc->resp_len] = '\0';
        }
    }
out:
    close(fd);
}

static void *client_thread(void *arg)
{
    harness *hs = arg;
    if (hs->client != NULL)
        hs->client(hs);
    else
        run_script(hs->sc, hs->port);
    uv_async_send(&hs->done);
    return NULL;
}

static void on_server_closed(void *arg)
{
    harness *hs = arg;
    hs->server_closed = true;
}

static void shut_down(harness *hs)
{
    fb_http_close(hs->http, on_server_closed, hs);
    uv_close((uv_handle_t *)&hs->done, NULL);
    uv_close((uv_handle_t *)&hs->deadline, NULL);
}

static void on_done(uv_async_t *a)
{
    shut_down(a->data);
}

static void on_deadline(uv_timer_t *t)
{
    harness *hs = t->data;
    hs->timed_out = true;
    shut_down(hs);
}

/* Start a server, run the script against it from a thread, close everything. */
static void run_with(script *sc, void (*client)(harness *hs))
{
    harness hs = {0};
    hs.sc = sc;
    hs.client = client;
    char err[256];
    assert_int_equal(uv_loop_init(&hs.loop), 0);
    assert_int_equal(
        fb_http_new(&hs.loop, "127.0.0.1", 0, handler, NULL, &hs.http, err, sizeof err), 0);
    hs.port = fb_http_port(hs.http);
    assert_true(hs.port != 0);
    uv_async_init(&hs.loop, &hs.done, on_done);
    hs.done.data = &hs;
    uv_timer_init(&hs.loop, &hs.deadline);
    hs.deadline.data = &hs;
    uv_timer_start(&hs.deadline, on_deadline, DEADLINE_MS, 0);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, client_thread, &hs), 0);
    uv_run(&hs.loop, UV_RUN_DEFAULT);
    pthread_join(t, NULL);
    assert_true(hs.server_closed);
    fb_http_free(hs.http);
    assert_int_equal(uv_loop_close(&hs.loop), 0);
    assert_false(hs.timed_out);
}

static void run(script *sc)
{
    run_with(sc, NULL);
}

static int count(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = strstr(hay, needle); p != NULL; p = strstr(p + 1, needle))
        n++;
    return n;
}

static void test_get_200(void **state)
{
    (void)state;
    script *sc = calloc(1, sizeof *sc);
    sc->steps[0] = (step){"GET /health?x=1 HTTP/1.1\r\nHost: a\r\n\r\n", 0, 1, false};
    run(sc);
    assert_false(sc->io_error);
    assert_int_equal(sc->got_resp, 1);
    assert_non_null(strstr(sc->resp, "HTTP/1.1 200 OK\r\n"));
    assert_non_null(strstr(sc->resp, "Content-Type: text/plain\r\n"));
    assert_non_null(strstr(sc->resp, "Content-Length: 3\r\n"));
    assert_non_null(strstr(sc->resp, "Connection: keep-alive\r\n"));
    assert_non_null(strstr(sc->resp, "\r\n\r\nok\n"));
    free(sc);
}

static void test_404(void **state)
{
    (void)state;
    script *sc = calloc(1, sizeof *sc);
    sc->steps[0] = (step){"GET /nope HTTP/1.1\r\n\r\n", 0, 1, false};
    run(sc);
    assert_int_equal(sc->got_resp, 1);
    assert_non_null(strstr(sc->resp, "HTTP/1.1 404 Not Found\r\n"));
    assert_non_null(strstr(sc->resp, "not found\n"));
    free(sc);
}

static void test_keep_alive(void **state)
{
    (void)state;
    script *sc = calloc(1, sizeof *sc);
    sc->steps[0] = (step){"GET /health HTTP/1.1\r\n\r\n", 0, 1, false};
    sc->steps[1] = (step){"GET /metrics HTTP/1.1\r\n\r\n", 0, 1, false};
    run(sc);
    assert_false(sc->io_error);
    assert_int_equal(sc->got_resp, 2);
    assert_int_equal(count(sc->resp, "HTTP/1.1 200 OK"), 2);
    assert_non_null(strstr(sc->resp, "\r\n\r\nfedbft_up 1\n"));
    free(sc);
}

static void test_pipelined(void **state)
{
    (void)state;
    script *sc = calloc(1, sizeof *sc);
    sc->steps[0] = (step){"GET /health HTTP/1.1\r\n\r\n"
                          "GET /nope HTTP/1.1\r\n\r\n"
                          "GET /metrics HTTP/1.1\r\n\r\n",
                          0, 3, false};
    run(sc);
    assert_false(sc->io_error);
    assert_int_equal(sc->got_resp, 3);
    /* In request order. */
    char *a = strstr(sc->resp, "ok\n");
    char *b = strstr(sc->resp, "404 Not Found");
    char *c = strstr(sc->resp, "fedbft_up 1");
    assert_true(a != NULL && b != NULL && c != NULL && a < b && b < c);
    free(sc);
}

static void test_head(void **state)
{
    (void)state;
    script *sc = calloc(1, sizeof *sc);
    sc->steps[0] = (step){"HEAD /health HTTP/1.1\r\n\r\n", 0, 1, true};
    sc->steps[1] = (step){"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n", 0, 1, false};
    sc->expect_eof = true;
    run(sc);
    assert_false(sc->io_error);
    assert_true(sc->got_eof);
    /* HEAD: same Content-Length, no body; the next response follows directly. */
    assert_int_equal(strncmp(sc->resp, "HTTP/1.1 200 OK\r\n", 17), 0);
    assert_int_equal(count(sc->resp, "Content-Length: 3\r\n"), 2);
    char *second = strstr(sc->resp + 1, "HTTP/1.1 200 OK");
    assert_non_null(second);
    assert_int_equal(memcmp(second - 4, "\r\n\r\n", 4), 0);
    assert_int_equal(count(sc->resp, "ok\n"), 1);
    free(sc);
}

static void test_post_405(void **state)
{
    (void)state;
    script *sc = calloc(1, sizeof *sc);
    sc->steps[0] = (step){"POST /health HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcd", 0, 1, false};
    sc->steps[1] = (step){"GET /health HTTP/1.1\r\n\r\n", 0, 1, false};
    run(sc);
    assert_false(sc->io_error);
    assert_non_null(strstr(sc->resp, "HTTP/1.1 405 Method Not Allowed\r\n"));
    assert_non_null(strstr(sc->resp, "Allow: GET, HEAD\r\n"));
    /* The body was consumed, so the connection stays usable. */
    assert_non_null(strstr(sc->resp, "HTTP/1.1 200 OK\r\n"));
    free(sc);
}

static void test_garbage_400(void **state)
{
    (void)state;
    script *sc = calloc(1, sizeof *sc);
    sc->steps[0] = (step){"\x01\x02 garbage \xff\r\n\r\n", 0, 1, false};
    sc->expect_eof = true;
    run(sc);
    assert_false(sc->io_error);
    assert_true(sc->got_eof);
    assert_int_equal(sc->got_resp, 1);
    assert_non_null(strstr(sc->resp, "HTTP/1.1 400 Bad Request\r\n"));
    assert_non_null(strstr(sc->resp, "Connection: close\r\n"));
    free(sc);
}

static void test_oversized_413(void **state)
{
    (void)state;
    script *sc = calloc(1, sizeof *sc);
    size_t n = HTTP_MAX_REQUEST + 4096;
    char *req = malloc(n + 1);
    int h = snprintf(req, n, "GET /health HTTP/1.1\r\nX-Big: ");
    memset(req + h, 'a', n - (size_t)h - 4);
    memcpy(req + n - 4, "\r\n\r\n", 4);
    req[n] = '\0';
    sc->steps[0] = (step){req, n, 1, false};
    sc->expect_eof = true;
    run(sc);
    assert_false(sc->io_error);
    assert_true(sc->got_eof);
    assert_non_null(strstr(sc->resp, "HTTP/1.1 413 Payload Too Large\r\n"));
    assert_non_null(strstr(sc->resp, "Connection: close\r\n"));
    free(req);
    free(sc);
}

static void test_at_limit_ok(void **state)
{
    (void)state;
    /* Exactly HTTP_MAX_REQUEST bytes is still accepted. */
    script *sc = calloc(1, sizeof *sc);
    size_t n = HTTP_MAX_REQUEST;
    char *req = malloc(n + 1);
    int h = snprintf(req, n, "GET /health HTTP/1.1\r\nX-Big: ");
    memset(req + h, 'a', n - (size_t)h - 4);
    memcpy(req + n - 4, "\r\n\r\n", 4);
    req[n] = '\0';
    sc->steps[0] = (step){req, n, 1, false};
    run(sc);
    assert_false(sc->io_error);
    assert_non_null(strstr(sc->resp, "HTTP/1.1 200 OK\r\n"));
    free(req);
    free(sc);
}

static void test_connection_close(void **state)
{
    (void)state;
    script *sc = calloc(1, sizeof *sc);
    /* The request after Connection: close must not be answered. */
    sc->steps[0] = (step){"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n"
                          "GET /metrics HTTP/1.1\r\n\r\n",
                          0, 1, false};
    sc->expect_eof = true;
    run(sc);
    assert_false(sc->io_error);
    assert_true(sc->got_eof);
    assert_int_equal(count(sc->resp, "HTTP/1.1 "), 1);
    assert_non_null(strstr(sc->resp, "Connection: close\r\n"));
    assert_null(strstr(sc->resp, "fedbft_up"));
    free(sc);
}

static void test_http10_closes(void **state)
{
    (void)state;
    script *sc = calloc(1, sizeof *sc);
    sc->steps[0] = (step){"GET /health HTTP/1.0\r\n\r\n", 0, 1, false};
    sc->expect_eof = true;
    run(sc);
    assert_true(sc->got_eof);
    assert_non_null(strstr(sc->resp, "Connection: close\r\n"));
    free(sc);
}

static void test_half_close(void **state)
{
    (void)state;
    /* A client that sends its request and then its FIN still gets the
     * pipelined responses before the server closes. */
    script *sc = calloc(1, sizeof *sc);
    sc->steps[0] = (step){"GET /health HTTP/1.1\r\n\r\nGET /metrics HTTP/1.1\r\n\r\n", 0, 2, false};
    sc->half_close = true;
    sc->expect_eof = true;
    run(sc);
    assert_false(sc->io_error);
    assert_int_equal(sc->got_resp, 2);
    assert_true(sc->got_eof);
    assert_non_null(strstr(sc->resp, "fedbft_up 1"));
    free(sc);
}

static int connect_to(uint16_t port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct timeval tv = {RECV_TIMEOUT_S, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* HTTP_MAX_CONNS connections are served; one more is closed unanswered. */
static void max_conns_client(harness *hs)
{
    script *sc = hs->sc;
    int fds[HTTP_MAX_CONNS];
    const char *req = "GET /health HTTP/1.1\r\n\r\n";
    char buf[512];
    for (int i = 0; i < HTTP_MAX_CONNS; i++) {
        fds[i] = connect_to(hs->port);
        /* A round trip proves the server has accepted this one. */
        if (fds[i] < 0 || send(fds[i], req, strlen(req), MSG_NOSIGNAL) < 0 ||
            recv(fds[i], buf, sizeof buf, 0) <= 0)
            sc->io_error = true;
        else
            sc->got_resp++;
    }
    int extra = connect_to(hs->port);
    if (extra >= 0) {
        send(extra, req, strlen(req), MSG_NOSIGNAL);
        ssize_t got = recv(extra, buf, sizeof buf, 0);
        sc->got_eof = got <= 0; /* EOF, or RST if the request raced the close */
        close(extra);
    }
    for (int i = 0; i < HTTP_MAX_CONNS; i++)
        if (fds[i] >= 0)
            close(fds[i]);
}

static void test_max_conns(void **state)
{
    (void)state;
    script *sc = calloc(1, sizeof *sc);
    run_with(sc, max_conns_client);
    assert_false(sc->io_error);
    assert_int_equal(sc->got_resp, HTTP_MAX_CONNS);
    assert_true(sc->got_eof);
    free(sc);
}

static void test_bad_bind(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_loop_init(&loop);
    fb_http *h = NULL;
    char err[256] = "";
    assert_int_equal(fb_http_new(&loop, "not-an-ip", 0, handler, NULL, &h, err, sizeof err), -1);
    assert_non_null(strstr(err, "not-an-ip"));
    assert_null(h);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_200),       cmocka_unit_test(test_404),
        cmocka_unit_test(test_keep_alive),    cmocka_unit_test(test_pipelined),
        cmocka_unit_test(test_head),          cmocka_unit_test(test_post_405),
        cmocka_unit_test(test_garbage_400),   cmocka_unit_test(test_oversized_413),
        cmocka_unit_test(test_at_limit_ok),   cmocka_unit_test(test_connection_close),
        cmocka_unit_test(test_http10_closes), cmocka_unit_test(test_bad_bind),
        cmocka_unit_test(test_max_conns),     cmocka_unit_test(test_half_close),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
