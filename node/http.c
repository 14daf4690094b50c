/* http.c - the operator HTTP/1.1 server: libuv TCP, one http-parser per
 * connection, GET/HEAD only, keep-alive and pipelining, bounded requests. */
#include "http.h"

#include "fb_error.h"

#include <http_parser.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define URL_MAX 4096
/* Stop reading from a client that pipelines faster than it reads replies. */
#define WRITE_QUEUE_MAX (256 * 1024)
/* After the last response, wait this long for the client's FIN before
 * closing, so unread request bytes do not turn our close into a RST that
 * destroys the response in flight. */
#define LINGER_MS 2000

typedef struct conn conn;

struct fb_http {
    uv_loop_t *loop;
    uv_tcp_t listener;
    fb_http_handler handler;
    void *arg;
    http_parser_settings settings;
    conn *conns; /* doubly linked list of live connections */
    size_t nconns;
    uint16_t port;
    bool closing, listener_closed, close_notified;
    void (*close_cb)(void *arg);
    void *close_arg;
};

struct conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    http_parser parser;
    fb_http *srv;
    conn *prev, *next;
    int open_handles;
    size_t msg_bytes; /* bytes of the current request seen so far */
    char url[URL_MAX];
    size_t url_len;
    bool url_overflow;
    bool finishing; /* last response queued; draining until FIN or linger */
    bool closing;
    bool read_paused; /* reading stopped for write back-pressure */
    bool peer_eof;    /* the client has half-closed */
    bool shut_done;   /* our responses are flushed and FIN sent */
    uv_shutdown_t shutdown;
};

typedef struct wreq {
    uv_write_t req;
    conn *c;
    char *body;
    char head[256];
} wreq;

static void conn_resume_read(conn *c);

static void maybe_notify_closed(fb_http *h)
{
    if (h->closing && h->listener_closed && h->nconns == 0 && !h->close_notified) {
        h->close_notified = true;
        if (h->close_cb != NULL)
            h->close_cb(h->close_arg);
    }
}

static void conn_handle_closed(uv_handle_t *handle)
{
    conn *c = handle->data;
    if (--c->open_handles > 0)
        return;
    fb_http *h = c->srv;
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        h->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    h->nconns--;
    free(c);
    maybe_notify_closed(h);
}

static void conn_close(conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    /* Pending writes and the shutdown request are cancelled by uv_close and
     * their callbacks run (with UV_ECANCELED) before the close callback. */
    uv_close((uv_handle_t *)&c->timer, conn_handle_closed);
    uv_close((uv_handle_t *)&c->tcp, conn_handle_closed);
}

static const char *reason_phrase(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 204:
        return "No Content";
    case 400:
        return "Bad Request";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 413:
        return "Payload Too Large";
    case 414:
        return "URI Too Long";
    case 500:
        return "Internal Server Error";
    case 503:
        return "Service Unavailable";
    default:
        return "Unknown";
    }
}

static void on_write(uv_write_t *req, int status)
{
    wreq *w = (wreq *)req;
    conn *c = w->c;
    free(w->body);
    free(w);
    if (c->closing)
        return;
    if (status < 0) {
        conn_close(c);
        return;
    }
    if (c->read_paused && !c->finishing &&
        uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) < WRITE_QUEUE_MAX / 2) {
        c->read_paused = false;
        /* Bytes already buffered were parsed before pausing; resume the socket. */
        conn_resume_read(c);
    }
}

/* Queue one response.  body is taken over (freed after the write); with
 * head_only the Content-Length still describes the body that GET would get. */
static void send_response(conn *c, int status, const char *ctype, char *body, size_t len,
                          bool head_only, bool keep_alive)
{
    wreq *w = calloc(1, sizeof *w);
    if (w == NULL) {
        free(body);
        conn_close(c);
        return;
    }
    w->c = c;
    int n =
        snprintf(w->head, sizeof w->head,
                 "HTTP/1.1 %d %s\r\n"
                 "Content-Type: %s\r\n"
                 "Content-Length: %zu\r\n"
                 "%s"
                 "Connection: %s\r\n\r\n",
                 status, reason_phrase(status), ctype != NULL ? ctype : "text/plain", len,
                 status == 405 ? "Allow: GET, HEAD\r\n" : "", keep_alive ? "keep-alive" : "close");
    if (n < 0 || (size_t)n >= sizeof w->head) {
        free(body);
        free(w);
        conn_close(c);
        return;
    }
    uv_buf_t bufs[2] = {uv_buf_init(w->head, (unsigned)n), uv_buf_init(body, (unsigned)len)};
    unsigned nbufs = (head_only || len == 0) ? 1 : 2;
    if (head_only) {
        free(body);
        body = NULL;
    }
    w->body = body;
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, bufs, nbufs, on_write) != 0) {
        free(w->body);
        free(w);
        conn_close(c);
    }
}

static void send_error(conn *c, int status, const char *text, bool keep_alive)
{
    size_t len = strlen(text);
    char *body = malloc(len);
    if (body == NULL) {
        conn_close(c);
        return;
    }
    memcpy(body, text, len);
    send_response(c, status, "text/plain; charset=utf-8", body, len, false, keep_alive);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    conn *c = req->data;
    if (c->closing)
        return;
    c->shut_done = true;
    /* Both directions are done once the client has also sent its FIN. */
    if (status < 0 || c->peer_eof)
        conn_close(c);
}

static void on_linger_timeout(uv_timer_t *t)
{
    conn_close(t->data);
}

/* The last response is queued: send FIN once it is written, then drain
 * whatever the client still sends until it closes or LINGER_MS passes. */
static void conn_finish(conn *c)
{
    if (c->finishing || c->closing)
        return;
    c->finishing = true;
    uv_timer_start(&c->timer, on_linger_timeout, LINGER_MS, 0);
    c->shutdown.data = c;
    if (uv_shutdown(&c->shutdown, (uv_stream_t *)&c->tcp, on_shutdown) != 0)
        conn_close(c);
}

static int on_message_begin(http_parser *p)
{
    conn *c = p->data;
    c->url_len = 0;
    c->url_overflow = false;
    return 0;
}

static int on_url(http_parser *p, const char *at, size_t len)
{
    conn *c = p->data;
    if (len >= sizeof c->url - c->url_len) {
        c->url_overflow = true;
        return 0;
    }
    memcpy(c->url + c->url_len, at, len);
    c->url_len += len;
    return 0;
}

/* Pause so the read loop sees each message boundary: that is where the
 * per-request size budget restarts and where Connection: close stops us. */
static int on_message_complete(http_parser *p)
{
    http_parser_pause(p, 1);
    return 0;
}

/* Answer the request the parser just completed; returns false if the
 * connection must not carry another request. */
static bool dispatch(conn *c)
{
    http_parser *p = &c->parser;
    bool keep_alive = http_should_keep_alive(p) && !p->upgrade && !c->srv->closing;
    if (c->url_overflow) {
        send_error(c, 414, "request URI too long\n", false);
        return false;
    }
    if (p->method != HTTP_GET && p->method != HTTP_HEAD) {
        send_error(c, 405, "method not allowed\n", keep_alive);
        return keep_alive;
    }
    struct http_parser_url u;
    http_parser_url_init(&u);
    if (http_parser_parse_url(c->url, c->url_len, 0, &u) != 0 || !(u.field_set & (1 << UF_PATH))) {
        send_error(c, 400, "bad request URI\n", false);
        return false;
    }
    char path[URL_MAX];
    memcpy(path, c->url + u.field_data[UF_PATH].off, u.field_data[UF_PATH].len);
    path[u.field_data[UF_PATH].len] = '\0';

    fb_http_response resp = {0, NULL, NULL, 0};
    c->srv->handler(c->srv->arg, path, &resp);
    if (resp.status < 100 || resp.status > 999 || (resp.body == NULL && resp.len > 0)) {
        free(resp.body);
        resp = (fb_http_response){500, NULL, NULL, 0};
    }
    send_response(c, resp.status, resp.content_type, resp.body, resp.len, p->method == HTTP_HEAD,
                  keep_alive);
    return keep_alive;
}

/* Feed bytes to the parser in slices no longer than the remaining request
 * budget, so an oversized request is caught at its 16385th byte. */
static void conn_parse(conn *c, const char *data, size_t len)
{
    size_t off = 0;
    while (off < len && !c->finishing && !c->closing) {
        size_t room = HTTP_MAX_REQUEST - c->msg_bytes;
        size_t slice = len - off < room + 1 ? len - off : room + 1;
        size_t n = http_parser_execute(&c->parser, &c->srv->settings, data + off, slice);
        off += n;
        c->msg_bytes += n;
        enum http_errno err = HTTP_PARSER_ERRNO(&c->parser);
        if (err == HPE_PAUSED) {
            http_parser_pause(&c->parser, 0);
            c->msg_bytes = 0;
            if (!dispatch(c))
                conn_finish(c);
        } else if (err != HPE_OK) {
            send_error(c, err == HPE_HEADER_OVERFLOW ? 413 : 400,
                       err == HPE_HEADER_OVERFLOW ? "request too large\n" : "bad request\n", false);
            conn_finish(c);
        } else if (c->msg_bytes > HTTP_MAX_REQUEST) {
            send_error(c, 413, "request too large\n", false);
            conn_finish(c);
        } else if (n < slice) {
            /* The parser stopped without an error or pause: treat as malformed. */
            send_error(c, 400, "bad request\n", false);
            conn_finish(c);
        }
    }
}

static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
    (void)handle;
    if (suggested > 65536)
        suggested = 65536;
    buf->base = malloc(suggested);
    buf->len = buf->base != NULL ? suggested : 0;
}

static void on_idle_timeout(uv_timer_t *t)
{
    conn_close(t->data);
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    conn *c = stream->data;
    if (nread < 0) {
        /* EOF or error: nothing more will arrive; a client that half-closed
         * after its request still gets the queued responses via shutdown. */
        free(buf->base);
        uv_read_stop(stream);
        if (nread != UV_EOF) {
            conn_close(c);
        } else if (!c->closing) {
            /* Closing before the shutdown completes would cancel the
             * responses still queued, so wait for on_shutdown. */
            c->peer_eof = true;
            if (!c->finishing)
                conn_finish(c);
            else if (c->shut_done)
                conn_close(c);
        }
        return;
    }
    if (nread > 0 && !c->closing) {
        if (c->finishing) {
            /* Draining after the last response: discard. */
        } else {
            uv_timer_start(&c->timer, on_idle_timeout, HTTP_IDLE_MS, 0);
            conn_parse(c, buf->base, (size_t)nread);
            if (!c->finishing && !c->closing &&
                uv_stream_get_write_queue_size(stream) >= WRITE_QUEUE_MAX) {
                c->read_paused = true;
                uv_read_stop(stream);
            }
        }
    }
    free(buf->base);
}

static void conn_resume_read(conn *c)
{
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0)
        conn_close(c);
}

static void on_reject_closed(uv_handle_t *handle)
{
    free(handle);
}

static void on_connection(uv_stream_t *server, int status)
{
    fb_http *h = server->data;
    if (status < 0 || h->closing)
        return;
    if (h->nconns >= HTTP_MAX_CONNS) {
        /* Accept and drop: leaving it in the backlog would wake us forever. */
        uv_tcp_t *t = malloc(sizeof *t);
        if (t == NULL || uv_tcp_init(h->loop, t) != 0) {
            free(t);
            return;
        }
        uv_accept(server, (uv_stream_t *)t);
        uv_close((uv_handle_t *)t, on_reject_closed);
        return;
    }
    conn *c = calloc(1, sizeof *c);
    if (c == NULL)
        return;
    c->srv = h;
    if (uv_tcp_init(h->loop, &c->tcp) != 0) {
        free(c);
        return;
    }
    uv_timer_init(h->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->open_handles = 2;
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    c->next = h->conns;
    if (h->conns != NULL)
        h->conns->prev = c;
    h->conns = c;
    h->nconns++;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0 ||
        uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0) {
        conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    uv_timer_start(&c->timer, on_idle_timeout, HTTP_IDLE_MS, 0);
}

static void on_failed_listener_closed(uv_handle_t *handle)
{
    free(handle->data);
}

int fb_http_new(uv_loop_t *loop, const char *host, uint16_t port, fb_http_handler handler,
                void *arg, fb_http **out, char *err, size_t errlen)
{
    if (loop == NULL || handler == NULL || out == NULL)
        return fb_errf(err, errlen, FB_EINVAL, "http: loop, handler and out are required");
    const char *bind_host = host != NULL ? host : "127.0.0.1";
    struct sockaddr_storage ss;
    if (uv_ip4_addr(bind_host, port, (struct sockaddr_in *)&ss) != 0 &&
        uv_ip6_addr(bind_host, port, (struct sockaddr_in6 *)&ss) != 0)
        return fb_errf(err, errlen, FB_EINVAL,
                       "http: '%s' is not an IPv4 or IPv6 address; give a numeric host", bind_host);
    fb_http *h = calloc(1, sizeof *h);
    if (h == NULL)
        return fb_errf(err, errlen, FB_ENOMEM, "http: out of memory");
    h->loop = loop;
    h->handler = handler;
    h->arg = arg;
    h->settings.on_message_begin = on_message_begin;
    h->settings.on_url = on_url;
    h->settings.on_message_complete = on_message_complete;
    int rc = uv_tcp_init(loop, &h->listener);
    if (rc != 0) {
        free(h);
        return fb_errf(err, errlen, FB_EIO, "http: tcp init: %s", uv_strerror(rc));
    }
    h->listener.data = h;
    rc = uv_tcp_bind(&h->listener, (const struct sockaddr *)&ss, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&h->listener, 128, on_connection);
    struct sockaddr_storage bound;
    int blen = sizeof bound;
    if (rc == 0)
        rc = uv_tcp_getsockname(&h->listener, (struct sockaddr *)&bound, &blen);
    if (rc != 0) {
        /* The handle is initialised, so it must be closed; free the struct
         * from its close callback via the listener_closed path. */
        h->closing = true;
        h->close_notified = true;
        uv_close((uv_handle_t *)&h->listener, on_failed_listener_closed);
        return fb_errf(err, errlen, FB_EIO, "http: cannot listen on %s:%u: %s; is the port in use?",
                       bind_host, (unsigned)port, uv_strerror(rc));
    }
    h->port = bound.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&bound)->sin6_port)
                                          : ntohs(((struct sockaddr_in *)&bound)->sin_port);
    *out = h;
    return FB_OK;
}

uint16_t fb_http_port(const fb_http *h)
{
    return h != NULL ? h->port : 0;
}

static void on_listener_closed(uv_handle_t *handle)
{
    fb_http *h = handle->data;
    h->listener_closed = true;
    maybe_notify_closed(h);
}

void fb_http_close(fb_http *h, void (*cb)(void *arg), void *arg)
{
    if (h == NULL || h->closing)
        return;
    h->closing = true;
    h->close_cb = cb;
    h->close_arg = arg;
    uv_close((uv_handle_t *)&h->listener, on_listener_closed);
    for (conn *c = h->conns; c != NULL; c = c->next)
        conn_close(c);
}

void fb_http_free(fb_http *h)
{
    /* Only valid once fb_http_close's callback has run (or the loop never
     * ran): every handle lives inside h or its connections. */
    free(h);
}
