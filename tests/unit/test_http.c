/* test_http.c - the operator HTTP server on a real loop, driven by a client
 * thread with plain blocking sockets; the loop runs under a timer deadline. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "fb_error.h"
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
    bool api;        /* route /v1/ to api_handler */
    int want_aborts; /* after the client is done, wait for this many aborts */
    bool expect_eof;
    bool half_close; /* shutdown(SHUT_WR) right after the last send */
    /* results, written by the client thread before it signals */
    char resp[RESP_MAX];
    size_t resp_len;
    int got_resp;
    bool got_eof;
    bool io_error;
    int aborts, aborts_while_open;
    bool order_bad;
} script;

typedef struct harness {
    uv_loop_t loop;
    uv_async_t done;
    uv_timer_t deadline;
    fb_http *http;
    uint16_t port;
    script *sc;
    void (*client)(struct harness *hs); /* NULL: run_script */
    bool timed_out, server_closed, shutting;
    bool client_done;
    int aborts, aborts_while_open;
    bool later_pending, order_bad; /* a request dispatched before the previous answer */
    fb_http_req *orphan;           /* held past fb_http_free, answered afterwards */
} harness;

#define TEST_MAX_BODY 1000

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
    if (head)
        return hlen;
    if (memmem(buf, hlen, "Transfer-Encoding: chunked\r\n", 28) != NULL) {
        for (size_t off = hlen;;) {
            const char *eol = memmem(buf + off, len - off, "\r\n", 2);
            if (eol == NULL)
                return 0;
            size_t n = strtoul(buf + off, NULL, 16);
            off = (size_t)(eol - buf) + 2 + n + 2;
            if (off > len)
                return 0;
            if (n == 0)
                return off;
        }
    }
    /* No Content-Length: an interim (100 Continue) response. */
    const char *cl = memmem(buf, hlen, "Content-Length: ", 16);
    size_t body = cl != NULL ? strtoul(cl + 16, NULL, 10) : 0;
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
    if (hs->shutting)
        return;
    hs->shutting = true;
    fb_http_close(hs->http, on_server_closed, hs);
    uv_close((uv_handle_t *)&hs->done, NULL);
    uv_close((uv_handle_t *)&hs->deadline, NULL);
}

static void on_done(uv_async_t *a)
{
    harness *hs = a->data;
    hs->client_done = true;
    if (hs->aborts >= hs->sc->want_aborts)
        shut_down(hs);
}

static void on_deadline(uv_timer_t *t)
{
    harness *hs = t->data;
    hs->timed_out = true;
    shut_down(hs);
}

/* --- The API route: a handler that answers now, later, or as a stream. --- */

typedef struct job {
    uv_timer_t timer;
    fb_http_req *req;
    harness *hs;
    int step, steps; /* stream chunks sent / to send */
    char body[64];
} job;

static void on_job_closed(uv_handle_t *h)
{
    free(h->data);
}

static void job_done(job *j)
{
    uv_timer_stop(&j->timer);
    uv_close((uv_handle_t *)&j->timer, on_job_closed);
}

static void count_abort(harness *hs)
{
    hs->aborts++;
    if (!hs->shutting)
        hs->aborts_while_open++;
    if (hs->client_done && hs->aborts >= hs->sc->want_aborts)
        shut_down(hs);
}

/* The owner's side of an abort: cancel the work, forget the request. */
static void on_job_abort(void *ud)
{
    job *j = ud;
    count_abort(j->hs);
    job_done(j);
}

static void on_hold_abort(void *ud)
{
    count_abort(ud);
}

static void on_later(uv_timer_t *t)
{
    job *j = t->data;
    char *b = malloc(80);
    int n = snprintf(b, 80, "later:%s", j->body);
    j->hs->later_pending = false;
    fb_http_reply(j->req, 200, "text/plain", b, (size_t)n, NULL);
    job_done(j);
}

static void on_stream_tick(uv_timer_t *t)
{
    job *j = t->data;
    char line[32];
    if (j->step == j->steps) {
        fb_http_stream_write(j->req, "data: [DONE]\n\n", 14);
        fb_http_stream_end(j->req);
        job_done(j);
        return;
    }
    int n = snprintf(line, sizeof line, "data: {\"i\":%d}\n\n", j->step++);
    int rc = fb_http_stream_write(j->req, line, (size_t)n);
    /* FB_ESTATE: the client is gone and the abort callback follows. */
    assert_true(rc == 0 || rc == FB_ESTATE);
}

static job *job_start(harness *hs, fb_http_req *req, const fb_http_req_info *info, uv_timer_cb cb,
                      uint64_t timeout, uint64_t repeat)
{
    job *j = calloc(1, sizeof *j);
    j->req = req;
    j->hs = hs;
    snprintf(j->body, sizeof j->body, "%s", info->body);
    uv_timer_init(&hs->loop, &j->timer);
    j->timer.data = j;
    uv_timer_start(&j->timer, cb, timeout, repeat);
    fb_http_req_on_abort(req, on_job_abort, j);
    return j;
}

static void api_handler(void *arg, fb_http_req *req, const fb_http_req_info *info)
{
    harness *hs = arg;
    if (hs->later_pending)
        hs->order_bad = true;
    if (strcmp(info->path, "/v1/echo") == 0) {
        char *b = malloc(4096); /* holds any echo of a body up to TEST_MAX_BODY */
        int n = snprintf(b, 4096, "method=%s path=%s ctype=%s auth=%s peer=%s len=%zu body=%s|",
                         info->method, info->path, info->content_type, info->authorization,
                         info->peer, info->body_len, info->body);
        fb_http_reply(req, 200, "text/plain", b, (size_t)n, NULL);
    } else if (strcmp(info->path, "/v1/later") == 0) {
        hs->later_pending = true;
        job_start(hs, req, info, on_later, 20, 0);
    } else if (strcmp(info->path, "/v1/stream") == 0) {
        assert_int_equal(fb_http_stream_begin(req, 200, "text/event-stream"), 0);
        job *j = job_start(hs, req, info, on_stream_tick, 5, 5);
        j->steps = 5;
    } else if (strcmp(info->path, "/v1/endless") == 0) {
        assert_int_equal(fb_http_stream_begin(req, 200, "text/event-stream"), 0);
        job *j = job_start(hs, req, info, on_stream_tick, 1, 1);
        j->steps = 1000000;
    } else if (strcmp(info->path, "/v1/busy") == 0) {
        fb_http_reply(req, 429, "application/json", strdup("{}"), 2, "Retry-After: 1\r\n");
    } else if (strcmp(info->path, "/v1/hold") == 0) {
        fb_http_req_on_abort(req, on_hold_abort, hs);
    } else if (strcmp(info->path, "/v1/close") == 0) {
        /* The server goes away under a pending request with an abort callback... */
        fb_http_req_on_abort(req, on_hold_abort, hs);
        fb_http_close(hs->http, on_server_closed, hs);
    } else if (strcmp(info->path, "/v1/orphan") == 0) {
        /* ...and under one without: its owner answers after fb_http_free. */
        hs->orphan = req;
        fb_http_close(hs->http, on_server_closed, hs);
    } else {
        fb_http_reply(req, 404, "text/plain", strdup("no\n"), 3, NULL);
    }
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
    if (sc->api)
        assert_int_equal(fb_http_set_api(hs.http, "/v1/", TEST_MAX_BODY, api_handler, &hs), 0);
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
    /* An answer to a request whose server is gone is discarded safely. */
    if (hs.orphan != NULL)
        fb_http_reply(hs.orphan, 200, "text/plain", strdup("late"), 4, NULL);
    sc->aborts = hs.aborts;
    sc->aborts_while_open = hs.aborts_while_open;
    sc->order_bad = hs.order_bad;
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

/* --- API route ------------------------------------------------------------ */

/* The body of the chunked response starting at resp, de-chunked into out. */
static size_t dechunk(const char *resp, char *out, size_t cap)
{
    const char *p = strstr(resp, "\r\n\r\n");
    assert_non_null(p);
    p += 4;
    size_t len = 0;
    for (;;) {
        char *eol;
        size_t n = strtoul(p, &eol, 16);
        assert_int_equal(memcmp(eol, "\r\n", 2), 0);
        p = eol + 2;
        if (n == 0)
            break;
        assert_true(len + n < cap);
        memcpy(out + len, p, n);
        len += n;
        p += n;
        assert_int_equal(memcmp(p, "\r\n", 2), 0);
        p += 2;
    }
    out[len] = '\0';
    return len;
}

static script *api_script(void)
{
    script *sc = calloc(1, sizeof *sc);
    sc->api = true;
    return sc;
}

static void test_api_post_fields(void **state)
{
    (void)state;
    script *sc = api_script();
    sc->steps[0] = (step){"POST /v1/echo?stream=1 HTTP/1.1\r\nHost: a\r\n"
                          "Content-Type: application/json  \r\n"
                          "Authorization: Bearer sk-123\r\n"
                          "Content-Length: 7\r\n\r\n{\"a\":1}",
                          0, 1, false};
    run(sc);
    assert_false(sc->io_error);
    assert_non_null(strstr(sc->resp, "HTTP/1.1 200 OK\r\n"));
    assert_non_null(strstr(sc->resp, "\r\n\r\nmethod=POST path=/v1/echo ctype=application/json "
                                     "auth=Bearer sk-123 peer=127.0.0.1 len=7 body={\"a\":1}|"));
    free(sc);
}

static void test_api_no_body_and_expect(void **state)
{
    (void)state;
    script *sc = api_script();
    /* GET on the API route has an empty body; Expect gets 100 Continue. */
    sc->steps[0] = (step){"GET /v1/echo HTTP/1.1\r\n\r\n", 0, 1, false};
    sc->steps[1] = (step){"POST /v1/echo HTTP/1.1\r\nExpect: 100-continue\r\n"
                          "Content-Length: 2\r\n\r\nhi",
                          0, 2, false};
    run(sc);
    assert_false(sc->io_error);
    assert_non_null(strstr(sc->resp, "method=GET path=/v1/echo ctype= auth= "));
    assert_non_null(strstr(sc->resp, "len=0 body=|"));
    assert_non_null(strstr(sc->resp, "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n"));
    assert_non_null(strstr(sc->resp, "len=2 body=hi|"));
    free(sc);
}

static void test_api_async_keep_alive(void **state)
{
    (void)state;
    script *sc = api_script();
    sc->steps[0] = (step){"POST /v1/later HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc", 0, 1, false};
    sc->steps[1] = (step){"GET /health HTTP/1.1\r\n\r\n", 0, 1, false};
    run(sc);
    assert_false(sc->io_error);
    assert_int_equal(sc->got_resp, 2);
    assert_non_null(strstr(sc->resp, "Connection: keep-alive\r\n"));
    assert_non_null(strstr(sc->resp, "\r\n\r\nlater:abc"));
    assert_non_null(strstr(sc->resp, "\r\n\r\nok\n"));
    free(sc);
}

static void test_api_pipelined_waits(void **state)
{
    (void)state;
    script *sc = api_script();
    sc->steps[0] = (step){"POST /v1/later HTTP/1.1\r\nContent-Length: 5\r\n\r\nfirst"
                          "POST /v1/echo HTTP/1.1\r\nContent-Length: 6\r\n\r\nsecond"
                          "GET /health HTTP/1.1\r\n\r\n",
                          0, 3, false};
    run(sc);
    assert_false(sc->io_error);
    assert_int_equal(sc->got_resp, 3);
    assert_false(sc->order_bad);
    char *a = strstr(sc->resp, "later:first");
    char *b = strstr(sc->resp, "body=second|");
    char *c = strstr(sc->resp, "ok\n");
    assert_true(a != NULL && b != NULL && c != NULL && a < b && b < c);
    free(sc);
}

static void test_api_413(void **state)
{
    (void)state;
    script *sc = api_script();
    size_t n = TEST_MAX_BODY + 1;
    char *req = malloc(n + 128);
    int h = snprintf(req, 128, "POST /v1/echo HTTP/1.1\r\nContent-Length: %zu\r\n\r\n", n);
    memset(req + h, 'x', n);
    sc->steps[0] = (step){req, (size_t)h + n, 1, false};
    sc->expect_eof = true;
    run(sc);
    assert_false(sc->io_error);
    assert_true(sc->got_eof);
    assert_non_null(strstr(sc->resp, "HTTP/1.1 413 Payload Too Large\r\n"));
    assert_non_null(strstr(sc->resp, "Connection: close\r\n"));
    assert_null(strstr(sc->resp, "method="));
    free(req);
    free(sc);
}

static void test_api_at_max_body(void **state)
{
    (void)state;
    script *sc = api_script();
    size_t n = TEST_MAX_BODY;
    char *req = malloc(n + 128);
    int h = snprintf(req, 128, "POST /v1/echo HTTP/1.1\r\nContent-Length: %zu\r\n\r\n", n);
    memset(req + h, 'x', n);
    sc->steps[0] = (step){req, (size_t)h + n, 1, false};
    run(sc);
    assert_false(sc->io_error);
    assert_non_null(strstr(sc->resp, "len=1000 body=xxx"));
    free(req);
    free(sc);
}

static void test_api_chunked_411(void **state)
{
    (void)state;
    script *sc = api_script();
    sc->steps[0] = (step){"POST /v1/echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                          "2\r\nhi\r\n0\r\n\r\n",
                          0, 1, false};
    sc->expect_eof = true;
    run(sc);
    assert_true(sc->got_eof);
    assert_non_null(strstr(sc->resp, "HTTP/1.1 411 Length Required\r\n"));
    free(sc);
}

static void test_api_long_header_431(void **state)
{
    (void)state;
    script *sc = api_script();
    char req[1024];
    char auth[HTTP_MAX_HEADER_VALUE + 2];
    memset(auth, 'k', sizeof auth - 1);
    auth[sizeof auth - 1] = '\0';
    snprintf(req, sizeof req, "POST /v1/echo HTTP/1.1\r\nAuthorization: %s\r\n\r\n", auth);
    sc->steps[0] = (step){req, 0, 1, false};
    sc->expect_eof = true;
    run(sc);
    assert_true(sc->got_eof);
    assert_non_null(strstr(sc->resp, "HTTP/1.1 431 "));
    free(sc);
}

static void test_api_extra_headers(void **state)
{
    (void)state;
    script *sc = api_script();
    sc->steps[0] = (step){"POST /v1/busy HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 0, 1, false};
    sc->steps[1] = (step){"GET /health HTTP/1.1\r\n\r\n", 0, 1, false};
    run(sc);
    assert_false(sc->io_error);
    assert_non_null(strstr(sc->resp, "HTTP/1.1 429 Too Many Requests\r\n"));
    assert_non_null(strstr(sc->resp, "\r\nRetry-After: 1\r\n"));
    assert_non_null(strstr(sc->resp, "Content-Type: application/json\r\n"));
    assert_non_null(strstr(sc->resp, "\r\n\r\nok\n"));
    free(sc);
}

static void test_api_stream_keep_alive(void **state)
{
    (void)state;
    script *sc = api_script();
    sc->steps[0] = (step){"POST /v1/stream HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", 0, 1, false};
    sc->steps[1] = (step){"GET /health HTTP/1.1\r\n\r\n", 0, 1, false};
    run(sc);
    assert_false(sc->io_error);
    assert_int_equal(sc->got_resp, 2);
    assert_int_equal(strncmp(sc->resp, "HTTP/1.1 200 OK\r\n", 17), 0);
    char *head_end = strstr(sc->resp, "\r\n\r\n");
    assert_non_null(head_end);
    *head_end = '\0';
    assert_non_null(strstr(sc->resp, "Transfer-Encoding: chunked"));
    assert_non_null(strstr(sc->resp, "Cache-Control: no-cache"));
    assert_non_null(strstr(sc->resp, "Content-Type: text/event-stream"));
    assert_null(strstr(sc->resp, "Content-Length"));
    *head_end = '\r';
    char body[1024];
    dechunk(sc->resp, body, sizeof body);
    assert_string_equal(body, "data: {\"i\":0}\n\ndata: {\"i\":1}\n\ndata: {\"i\":2}\n\n"
                              "data: {\"i\":3}\n\ndata: {\"i\":4}\n\ndata: [DONE]\n\n");
    assert_non_null(strstr(sc->resp, "0\r\n\r\nHTTP/1.1 200 OK\r\n"));
    assert_non_null(strstr(sc->resp, "\r\n\r\nok\n"));
    free(sc);
}

static void test_api_stream_http10(void **state)
{
    (void)state;
    script *sc = api_script();
    /* No chunks for HTTP/1.0: raw bytes, ended by the close. */
    sc->steps[0] = (step){"POST /v1/stream HTTP/1.0\r\nContent-Length: 0\r\n\r\n", 0, 0, false};
    sc->expect_eof = true;
    run(sc);
    assert_true(sc->got_eof);
    assert_null(strstr(sc->resp, "chunked"));
    assert_non_null(strstr(sc->resp, "Connection: close\r\n"));
    assert_non_null(strstr(sc->resp, "\r\n\r\ndata: {\"i\":0}\n\ndata: {\"i\":1}\n\n"));
    assert_non_null(strstr(sc->resp, "data: [DONE]\n\n"));
    free(sc);
}

/* Send a request and go away without waiting for the answer. */
static void hangup_client(harness *hs)
{
    int fd = connect_to(hs->port);
    const char *req = hs->sc->steps[0].req;
    if (fd < 0 || send(fd, req, strlen(req), MSG_NOSIGNAL) != (ssize_t)strlen(req))
        hs->sc->io_error = true;
    /* For a stream, wait for its first bytes so the hang-up lands mid-stream. */
    char buf[256];
    if (fd >= 0 && hs->sc->steps[0].nresp > 0 && recv(fd, buf, sizeof buf, 0) <= 0)
        hs->sc->io_error = true;
    if (fd >= 0)
        close(fd);
}

static void test_api_client_gone_pending(void **state)
{
    (void)state;
    script *sc = api_script();
    sc->steps[0] = (step){"POST /v1/hold HTTP/1.1\r\nContent-Length: 1\r\n\r\nx", 0, 0, false};
    sc->want_aborts = 1;
    run_with(sc, hangup_client);
    assert_false(sc->io_error);
    assert_int_equal(sc->aborts, 1);
    assert_int_equal(sc->aborts_while_open, 1);
    free(sc);
}

static void test_api_client_gone_async(void **state)
{
    (void)state;
    script *sc = api_script();
    /* The owner's timer is cancelled from the abort callback. */
    sc->steps[0] = (step){"POST /v1/later HTTP/1.1\r\nContent-Length: 1\r\n\r\nx", 0, 0, false};
    sc->want_aborts = 1;
    run_with(sc, hangup_client);
    assert_int_equal(sc->aborts, 1);
    assert_int_equal(sc->aborts_while_open, 1);
    free(sc);
}

static void test_api_client_gone_streaming(void **state)
{
    (void)state;
    script *sc = api_script();
    sc->steps[0] = (step){"POST /v1/endless HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 0, 1, false};
    sc->want_aborts = 1;
    run_with(sc, hangup_client);
    assert_false(sc->io_error);
    assert_int_equal(sc->aborts, 1);
    assert_int_equal(sc->aborts_while_open, 1);
    free(sc);
}

static void test_api_server_close_pending(void **state)
{
    (void)state;
    script *sc = api_script();
    sc->steps[0] = (step){"POST /v1/close HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 0, 0, false};
    sc->expect_eof = true;
    run(sc);
    assert_true(sc->got_eof);
    assert_int_equal(sc->aborts, 1);
    assert_null(strstr(sc->resp, "HTTP/1.1"));
    free(sc);
}

static void test_api_orphan_reply_after_free(void **state)
{
    (void)state;
    script *sc = api_script();
    sc->steps[0] = (step){"POST /v1/orphan HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 0, 0, false};
    sc->expect_eof = true;
    run(sc); /* replies to the held request after fb_http_free */
    assert_true(sc->got_eof);
    assert_int_equal(sc->aborts, 0);
    free(sc);
}

static void test_api_other_paths_unchanged(void **state)
{
    (void)state;
    script *sc = api_script();
    sc->steps[0] = (step){"POST /health HTTP/1.1\r\nContent-Length: 4\r\n\r\nabcd", 0, 1, false};
    sc->steps[1] = (step){"GET /v1x HTTP/1.1\r\n\r\n", 0, 1, false};
    run(sc);
    assert_false(sc->io_error);
    assert_non_null(strstr(sc->resp, "HTTP/1.1 405 Method Not Allowed\r\n"));
    assert_non_null(strstr(sc->resp, "HTTP/1.1 404 Not Found\r\n"));
    free(sc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_get_200),
        cmocka_unit_test(test_404),
        cmocka_unit_test(test_keep_alive),
        cmocka_unit_test(test_pipelined),
        cmocka_unit_test(test_head),
        cmocka_unit_test(test_post_405),
        cmocka_unit_test(test_garbage_400),
        cmocka_unit_test(test_oversized_413),
        cmocka_unit_test(test_at_limit_ok),
        cmocka_unit_test(test_connection_close),
        cmocka_unit_test(test_http10_closes),
        cmocka_unit_test(test_bad_bind),
        cmocka_unit_test(test_max_conns),
        cmocka_unit_test(test_half_close),
        cmocka_unit_test(test_api_post_fields),
        cmocka_unit_test(test_api_no_body_and_expect),
        cmocka_unit_test(test_api_async_keep_alive),
        cmocka_unit_test(test_api_pipelined_waits),
        cmocka_unit_test(test_api_413),
        cmocka_unit_test(test_api_at_max_body),
        cmocka_unit_test(test_api_chunked_411),
        cmocka_unit_test(test_api_long_header_431),
        cmocka_unit_test(test_api_extra_headers),
        cmocka_unit_test(test_api_stream_keep_alive),
        cmocka_unit_test(test_api_stream_http10),
        cmocka_unit_test(test_api_client_gone_pending),
        cmocka_unit_test(test_api_client_gone_async),
        cmocka_unit_test(test_api_client_gone_streaming),
        cmocka_unit_test(test_api_server_close_pending),
        cmocka_unit_test(test_api_orphan_reply_after_free),
        cmocka_unit_test(test_api_other_paths_unchanged),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
