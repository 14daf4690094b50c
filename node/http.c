/* http.c - the operator HTTP/1.1 server: libuv TCP, one http-parser per
 * connection, keep-alive and pipelining, bounded requests; GET/HEAD with a
 * synchronous handler, plus one path prefix served by an asynchronous API
 * handler (POST bodies, late replies, chunked streams). */
#include "http.h"

#include "fb_error.h"

#include <http_parser.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define URL_MAX 4096
#define PREFIX_MAX 64
#define HNAME_MAX 32
/* Stop reading from a client that pipelines faster than it reads replies. */
#define WRITE_QUEUE_MAX (256 * 1024)
/* While an API request is pending, what the client sends next is kept
 * unparsed; past this much, reading stops until the answer is queued. */
#define BACKLOG_MAX (64 * 1024)
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
    char api_prefix[PREFIX_MAX]; /* "" when there is no API route */
    size_t api_max_body;
    fb_http_api_handler api_handler;
    void *api_arg;
    http_parser_settings settings;
    conn *conns; /* doubly linked list of live connections */
    size_t nconns;
    uint16_t port;
    bool closing, listener_closed, close_notified;
    void (*close_cb)(void *arg);
    void *close_arg;
};

/* The headers an API handler sees. */
enum { HDR_CTYPE, HDR_AUTH, HDR_EXPECT, HDR_COUNT, HDR_OTHER = HDR_COUNT };

struct fb_http_req {
    conn *c; /* NULL once the connection is gone (the request is aborted) */
    fb_http_req_info info;
    void (*abort_cb)(void *ud);
    void *abort_ud;
    char *path, *body;
    bool keep_alive, head_only, raw_stream;
    bool streaming, in_abort_cb;
    char ctype[HTTP_MAX_HEADER_VALUE + 1];
    char auth[HTTP_MAX_HEADER_VALUE + 1];
};

struct conn {
    uv_tcp_t tcp;
    uv_timer_t timer; /* idle timeout, linger, or the deferred resume */
    http_parser parser;
    fb_http *srv;
    conn *prev, *next;
    int open_handles;
    size_t msg_bytes; /* bytes of the current request seen so far */
    size_t msg_limit; /* budget for the current request */
    char url[URL_MAX];
    size_t url_len;
    bool url_overflow;
    /* Per-request state for the API route, filled while parsing. */
    bool is_api;
    int reject_status; /* why on_headers_complete refused the request */
    char hname[HNAME_MAX];
    size_t hname_len;
    bool in_value; /* the last header callback was a value */
    int cur_hdr;
    char hval[HDR_COUNT][HTTP_MAX_HEADER_VALUE + 1];
    size_t hval_len[HDR_COUNT];
    bool hseen[HDR_COUNT];
    bool hdr_overflow, hdr_dup;
    char *body; /* API request body being received (NUL-terminated) */
    size_t body_len, body_cap;
    /* The API request awaiting its answer; while it (or the deferred
     * resume) is outstanding, received bytes go to backlog unparsed. */
    fb_http_req *req;
    bool resume_scheduled;
    char *backlog;
    size_t backlog_len;
    char peer[64];
    bool reading;
    bool in_handler; /* the API handler is running for c->req */
    bool finishing;  /* last response queued; draining until FIN or linger */
    bool closing;
    bool peer_eof;  /* the client has half-closed */
    bool shut_done; /* our responses are flushed and FIN sent */
    uv_shutdown_t shutdown;
};

typedef struct wreq {
    uv_write_t req;
    conn *c;
    char *head, *body;
} wreq;

enum dispatch_result { DISPATCH_NEXT, DISPATCH_LAST, DISPATCH_HOLD };

static void conn_update_read(conn *c);
static void conn_finish(conn *c);

static void maybe_notify_closed(fb_http *h)
{
    if (h->closing && h->listener_closed && h->nconns == 0 && !h->close_notified) {
        h->close_notified = true;
        if (h->close_cb != NULL)
            h->close_cb(h->close_arg);
    }
}

static void req_free(fb_http_req *r)
{
    free(r->path);
    free(r->body);
    free(r);
}

/* The connection is gone with r unanswered: tell the owner, or leave r for
 * the owner's eventual answer to release. */
static void req_abort(fb_http_req *r)
{
    r->c = NULL;
    if (r->abort_cb == NULL)
        return;
    r->in_abort_cb = true;
    r->abort_cb(r->abort_ud);
    req_free(r);
}

static void conn_handle_closed(uv_handle_t *handle)
{
    conn *c = handle->data;
    if (--c->open_handles > 0)
        return;
    fb_http *h = c->srv;
    if (c->req != NULL)
        req_abort(c->req);
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        h->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    h->nconns--;
    free(c->body);
    free(c->backlog);
    free(c);
    maybe_notify_closed(h);
}

static void conn_close(conn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    /* Pending writes and the shutdown request are cancelled by uv_close and
     * their callbacks run (with UV_ECANCELED) before the close callback; an
     * unanswered API request is aborted from the close callback, so its
     * owner never hears of it inside one of our calls. */
    uv_close((uv_handle_t *)&c->timer, conn_handle_closed);
    uv_close((uv_handle_t *)&c->tcp, conn_handle_closed);
}

static const char *reason_phrase(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 411:
        return "Length Required";
    case 413:
        return "Payload Too Large";
    case 414:
        return "URI Too Long";
    case 415:
        return "Unsupported Media Type";
    case 422:
        return "Unprocessable Entity";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return "Unknown";
    }
}

static void on_write(uv_write_t *req, int status)
{
    wreq *w = (wreq *)req;
    conn *c = w->c;
    free(w->head);
    free(w->body);
    free(w);
    if (c->closing)
        return;
    if (status < 0) {
        conn_close(c);
        return;
    }
    conn_update_read(c);
}

/* Queue head then body (either may be NULL); both are taken over.  Returns
 * false, with the connection closing, if they could not be queued. */
static bool conn_write(conn *c, char *head, size_t hlen, char *body, size_t blen)
{
    wreq *w = c->closing ? NULL : calloc(1, sizeof *w);
    if (w == NULL) {
        free(head);
        free(body);
        conn_close(c);
        return false;
    }
    w->c = c;
    w->head = head;
    w->body = body;
    uv_buf_t bufs[2];
    unsigned n = 0;
    if (head != NULL && hlen > 0)
        bufs[n++] = uv_buf_init(head, (unsigned)hlen);
    if (body != NULL && blen > 0)
        bufs[n++] = uv_buf_init(body, (unsigned)blen);
    if (n == 0 || uv_write(&w->req, (uv_stream_t *)&c->tcp, bufs, n, on_write) != 0) {
        free(head);
        free(body);
        free(w);
        if (n == 0)
            return true;
        conn_close(c);
        return false;
    }
    return true;
}

/* A status line and headers in a malloc'd buffer; NULL when out of memory.
 * length is -1 for a chunked or close-delimited body. */
static char *format_head(int status, const char *ctype, long long length, const char *extra,
                         bool chunked, bool keep_alive, size_t *len)
{
    const char *type = ctype != NULL ? ctype : "text/plain";
    const char *more = extra != NULL ? extra : "";
    size_t cap = 256 + strlen(type) + strlen(more);
    char *head = malloc(cap);
    if (head == NULL)
        return NULL;
    char clen[48] = "";
    if (length >= 0)
        snprintf(clen, sizeof clen, "Content-Length: %lld\r\n", length);
    int n = snprintf(head, cap,
                     "HTTP/1.1 %d %s\r\n"
                     "Content-Type: %s\r\n"
                     "%s%s%s"
                     "Connection: %s\r\n\r\n",
                     status, reason_phrase(status), type, clen,
                     chunked      ? "Transfer-Encoding: chunked\r\nCache-Control: no-cache\r\n"
                     : length < 0 ? "Cache-Control: no-cache\r\n"
                                  : "",
                     more, keep_alive ? "keep-alive" : "close");
    if (n < 0 || (size_t)n >= cap) {
        free(head);
        return NULL;
    }
    *len = (size_t)n;
    return head;
}

/* Queue one response.  body is taken over (freed after the write); with
 * head_only the Content-Length still describes the body that GET would get. */
static void send_response(conn *c, int status, const char *ctype, char *body, size_t len,
                          bool head_only, bool keep_alive, const char *extra)
{
    size_t hlen = 0;
    char *head = format_head(status, ctype, (long long)len,
                             extra != NULL   ? extra
                             : status == 405 ? "Allow: GET, HEAD\r\n"
                                             : "",
                             false, keep_alive, &hlen);
    if (head == NULL) {
        free(body);
        conn_close(c);
        return;
    }
    if (head_only) {
        free(body);
        body = NULL;
    }
    conn_write(c, head, hlen, body, len);
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
    send_response(c, status, "text/plain; charset=utf-8", body, len, false, keep_alive, NULL);
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
    c->resume_scheduled = false;
    uv_timer_start(&c->timer, on_linger_timeout, LINGER_MS, 0);
    c->shutdown.data = c;
    if (uv_shutdown(&c->shutdown, (uv_stream_t *)&c->tcp, on_shutdown) != 0)
        conn_close(c);
    else
        conn_update_read(c);
}

/* Bytes received now are parsed later: an API answer is outstanding. */
static bool conn_held(const conn *c)
{
    return c->req != NULL || c->resume_scheduled;
}

static int on_message_begin(http_parser *p)
{
    conn *c = p->data;
    c->url_len = 0;
    c->url_overflow = false;
    c->is_api = false;
    c->reject_status = 0;
    c->hname_len = 0;
    c->in_value = false;
    c->cur_hdr = HDR_OTHER;
    memset(c->hval_len, 0, sizeof c->hval_len);
    memset(c->hseen, 0, sizeof c->hseen);
    c->hdr_overflow = c->hdr_dup = false;
    free(c->body);
    c->body = NULL;
    c->body_len = c->body_cap = 0;
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

static int on_header_field(http_parser *p, const char *at, size_t len)
{
    conn *c = p->data;
    if (c->in_value) {
        c->in_value = false;
        c->hname_len = 0;
    }
    /* A name longer than the buffer is none of ours: its length, set to
     * the buffer size, matches no name we look for. */
    if (len >= sizeof c->hname - c->hname_len) {
        c->hname_len = sizeof c->hname;
        return 0;
    }
    memcpy(c->hname + c->hname_len, at, len);
    c->hname_len += len;
    return 0;
}

static int classify_header(const char *name, size_t len)
{
    static const char *const names[HDR_COUNT] = {"content-type", "authorization", "expect"};
    for (int i = 0; i < HDR_COUNT; i++)
        if (strlen(names[i]) == len && strncasecmp(name, names[i], len) == 0)
            return i;
    return HDR_OTHER;
}

static int on_header_value(http_parser *p, const char *at, size_t len)
{
    conn *c = p->data;
    if (!c->in_value) {
        c->in_value = true;
        c->cur_hdr = classify_header(c->hname, c->hname_len);
        if (c->cur_hdr != HDR_OTHER) {
            if (c->hseen[c->cur_hdr])
                c->hdr_dup = true;
            c->hseen[c->cur_hdr] = true;
            c->hval_len[c->cur_hdr] = 0;
        }
    }
    if (c->cur_hdr == HDR_OTHER)
        return 0;
    size_t *vlen = &c->hval_len[c->cur_hdr];
    if (len > HTTP_MAX_HEADER_VALUE - *vlen) {
        c->hdr_overflow = true;
        return 0;
    }
    memcpy(c->hval[c->cur_hdr] + *vlen, at, len);
    *vlen += len;
    return 0;
}

/* The path of the current request into out (URL_MAX bytes); false if the
 * URL is malformed or has no path. */
static bool request_path(conn *c, char *out)
{
    struct http_parser_url u;
    http_parser_url_init(&u);
    if (c->url_overflow || http_parser_parse_url(c->url, c->url_len, 0, &u) != 0 ||
        !(u.field_set & (1 << UF_PATH)))
        return false;
    memcpy(out, c->url + u.field_data[UF_PATH].off, u.field_data[UF_PATH].len);
    out[u.field_data[UF_PATH].len] = '\0';
    return true;
}

/* Decide whether the request goes to the API handler and, if so, whether
 * its head is acceptable; a refusal stops the parser with reject_status. */
static int on_headers_complete(http_parser *p)
{
    conn *c = p->data;
    fb_http *h = c->srv;
    char path[URL_MAX];
    if (h->api_handler == NULL || !request_path(c, path) ||
        strncmp(path, h->api_prefix, strlen(h->api_prefix)) != 0)
        return 0;
    c->is_api = true;
    if (c->hdr_overflow)
        c->reject_status = 431;
    else if (c->hdr_dup)
        c->reject_status = 400;
    else if (p->flags & F_CHUNKED)
        c->reject_status = 411;
    else if ((p->flags & F_CONTENTLENGTH) && p->content_length > h->api_max_body)
        c->reject_status = 413;
    if (c->reject_status != 0)
        return -1;
    size_t len = (p->flags & F_CONTENTLENGTH) ? (size_t)p->content_length : 0;
    c->body = malloc(len + 1);
    if (c->body == NULL) {
        c->reject_status = 503;
        return -1;
    }
    c->body_cap = len;
    c->body[0] = '\0';
    c->msg_limit = HTTP_MAX_REQUEST + h->api_max_body;
    if (len > 0 && c->hseen[HDR_EXPECT] && c->hval_len[HDR_EXPECT] == 12 &&
        strncasecmp(c->hval[HDR_EXPECT], "100-continue", 12) == 0) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        char *msg = malloc(sizeof cont - 1);
        if (msg == NULL)
            return -1;
        memcpy(msg, cont, sizeof cont - 1);
        conn_write(c, msg, sizeof cont - 1, NULL, 0);
    }
    return 0;
}

static int on_body(http_parser *p, const char *at, size_t len)
{
    conn *c = p->data;
    if (c->body == NULL)
        return 0; /* not an API request: the body is skipped */
    if (len > c->body_cap - c->body_len)
        return -1; /* cannot happen with Content-Length; refuse rather than overflow */
    memcpy(c->body + c->body_len, at, len);
    c->body_len += len;
    c->body[c->body_len] = '\0';
    return 0;
}

/* Pause so the read loop sees each message boundary: that is where the
 * per-request size budget restarts and where Connection: close stops us. */
static int on_message_complete(http_parser *p)
{
    http_parser_pause(p, 1);
    return 0;
}

/* Copy a header value, dropping trailing blanks. */
static void copy_value(char *dst, const char *src, size_t len)
{
    while (len > 0 && (src[len - 1] == ' ' || src[len - 1] == '\t'))
        len--;
    memcpy(dst, src, len);
    dst[len] = '\0';
}

/* Hand the completed API request to its handler. */
static enum dispatch_result dispatch_api(conn *c, bool keep_alive)
{
    http_parser *p = &c->parser;
    /* A client that already sent its FIN is gone as far as the API goes. */
    if (c->peer_eof)
        return DISPATCH_LAST;
    fb_http_req *r = calloc(1, sizeof *r);
    char *path = malloc(URL_MAX);
    if (r == NULL || path == NULL || !request_path(c, path)) {
        bool oom = r == NULL || path == NULL;
        free(r);
        free(path);
        send_error(c, oom ? 503 : 400, oom ? "out of memory\n" : "bad request URI\n", false);
        return DISPATCH_LAST;
    }
    r->c = c;
    r->path = path;
    r->body = c->body; /* on_headers_complete allocated it for every API request */
    c->body = NULL;
    r->keep_alive = keep_alive;
    r->head_only = p->method == HTTP_HEAD;
    r->raw_stream = p->http_major == 1 && p->http_minor == 0;
    copy_value(r->ctype, c->hval[HDR_CTYPE], c->hval_len[HDR_CTYPE]);
    copy_value(r->auth, c->hval[HDR_AUTH], c->hval_len[HDR_AUTH]);
    r->info = (fb_http_req_info){http_method_str((enum http_method)p->method),
                                 r->path,
                                 r->body,
                                 c->body_len,
                                 r->ctype,
                                 r->auth,
                                 c->peer};
    c->req = r;
    /* No idle timeout while the answer is being produced. */
    uv_timer_stop(&c->timer);
    fb_http *h = c->srv;
    c->in_handler = true;
    h->api_handler(h->api_arg, r, &r->info);
    c->in_handler = false;
    if (c->req != NULL)
        return DISPATCH_HOLD;
    return keep_alive && !c->finishing ? DISPATCH_NEXT : DISPATCH_LAST;
}

/* Answer the request the parser just completed. */
static enum dispatch_result dispatch(conn *c)
{
    http_parser *p = &c->parser;
    bool keep_alive = http_should_keep_alive(p) && !p->upgrade && !c->srv->closing;
    if (c->url_overflow) {
        send_error(c, 414, "request URI too long\n", false);
        return DISPATCH_LAST;
    }
    if (c->is_api)
        return dispatch_api(c, keep_alive);
    if (p->method != HTTP_GET && p->method != HTTP_HEAD) {
        send_error(c, 405, "method not allowed\n", keep_alive);
        return keep_alive ? DISPATCH_NEXT : DISPATCH_LAST;
    }
    char path[URL_MAX];
    if (!request_path(c, path)) {
        send_error(c, 400, "bad request URI\n", false);
        return DISPATCH_LAST;
    }
    fb_http_response resp = {0, NULL, NULL, 0};
    c->srv->handler(c->srv->arg, path, &resp);
    if (resp.status < 100 || resp.status > 999 || (resp.body == NULL && resp.len > 0)) {
        free(resp.body);
        resp = (fb_http_response){500, NULL, NULL, 0};
    }
    send_response(c, resp.status, resp.content_type, resp.body, resp.len, p->method == HTTP_HEAD,
                  keep_alive, NULL);
    return keep_alive ? DISPATCH_NEXT : DISPATCH_LAST;
}

static const char *parse_error_text(int status)
{
    switch (status) {
    case 411:
        return "request body needs Content-Length\n";
    case 413:
        return "request too large\n";
    case 431:
        return "request header field too large\n";
    case 503:
        return "out of memory\n";
    default:
        return "bad request\n";
    }
}

/* Keep data the parser has not reached, to parse once the pending answer
 * is queued.  Appends; bounded by conn_update_read stopping the reads. */
static void conn_stash(conn *c, const char *data, size_t len)
{
    if (len == 0 || c->closing || c->finishing)
        return;
    char *grown = realloc(c->backlog, c->backlog_len + len);
    if (grown == NULL) {
        conn_close(c);
        return;
    }
    memcpy(grown + c->backlog_len, data, len);
    c->backlog = grown;
    c->backlog_len += len;
}

/* Feed bytes to the parser in slices no longer than the remaining request
 * budget, so an oversized request is caught at its first byte over. */
static void conn_parse(conn *c, const char *data, size_t len)
{
    size_t off = 0;
    while (off < len && !c->finishing && !c->closing) {
        size_t room = c->msg_limit - c->msg_bytes;
        size_t slice = len - off < room + 1 ? len - off : room + 1;
        size_t n = http_parser_execute(&c->parser, &c->srv->settings, data + off, slice);
        off += n;
        c->msg_bytes += n;
        enum http_errno err = HTTP_PARSER_ERRNO(&c->parser);
        if (err == HPE_PAUSED) {
            http_parser_pause(&c->parser, 0);
            c->msg_bytes = 0;
            c->msg_limit = HTTP_MAX_REQUEST;
            enum dispatch_result d = dispatch(c);
            if (d == DISPATCH_LAST) {
                conn_finish(c);
            } else if (d == DISPATCH_HOLD) {
                conn_stash(c, data + off, len - off);
                return;
            }
        } else if (err != HPE_OK) {
            int status = c->reject_status != 0        ? c->reject_status
                         : err == HPE_HEADER_OVERFLOW ? 413
                                                      : 400;
            send_error(c, status, parse_error_text(status), false);
            conn_finish(c);
        } else if (c->msg_bytes > c->msg_limit) {
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
        /* EOF or error: nothing more will arrive.  A client that half-closed
         * after a GET still gets the queued responses via shutdown; one that
         * did so before an API answer is complete has gone away. */
        free(buf->base);
        c->peer_eof = true;
        conn_update_read(c);
        if (nread != UV_EOF || c->req != NULL) {
            conn_close(c);
        } else if (!c->closing && !c->resume_scheduled) {
            /* Closing before the shutdown completes would cancel the
             * responses still queued, so wait for on_shutdown. */
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
        } else if (conn_held(c)) {
            conn_stash(c, buf->base, (size_t)nread);
        } else {
            uv_timer_start(&c->timer, on_idle_timeout, HTTP_IDLE_MS, 0);
            conn_parse(c, buf->base, (size_t)nread);
        }
        conn_update_read(c);
    }
    free(buf->base);
}

/* Read unless the client is done, we are closing, the client pipelines
 * faster than it reads responses, or the backlog behind a pending API
 * request is full.  Reading continues while an answer is pending so that a
 * client going away is noticed. */
static void conn_update_read(conn *c)
{
    if (c->closing)
        return;
    bool want = !c->peer_eof;
    if (want && conn_held(c)) {
        want = c->backlog_len < BACKLOG_MAX;
    } else if (want && !c->finishing) {
        size_t queued = uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp);
        want = queued < (c->reading ? WRITE_QUEUE_MAX : WRITE_QUEUE_MAX / 2);
    }
    if (want && !c->reading) {
        if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0) {
            conn_close(c);
            return;
        }
        c->reading = true;
    } else if (!want && c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
    }
}

/* The API answer is queued: parse what arrived meanwhile, from a fresh
 * loop iteration so the owner's reply call never re-enters its handler. */
static void on_resume(uv_timer_t *t)
{
    conn *c = t->data;
    c->resume_scheduled = false;
    char *data = c->backlog;
    size_t len = c->backlog_len;
    c->backlog = NULL;
    c->backlog_len = 0;
    uv_timer_start(&c->timer, on_idle_timeout, HTTP_IDLE_MS, 0);
    conn_parse(c, data, len);
    free(data);
    if (c->closing)
        return;
    if (c->peer_eof && !conn_held(c))
        conn_finish(c);
    conn_update_read(c);
}

/* The pending answer is complete and queued: r is released and the
 * connection carries on (or finishes). */
static void conn_answered(conn *c, fb_http_req *r, bool keep_alive)
{
    c->req = NULL;
    req_free(r);
    if (c->closing)
        return;
    if (!keep_alive) {
        conn_finish(c);
        return;
    }
    /* Inside the handler, conn_parse simply carries on. */
    if (!c->in_handler && !c->resume_scheduled) {
        c->resume_scheduled = true;
        uv_timer_start(&c->timer, on_resume, 0, 0);
    }
}

/* Header lines each ending in CRLF, no bare CR or LF, no empty line. */
static bool valid_extra_headers(const char *extra)
{
    size_t len = strlen(extra);
    if (len > HTTP_MAX_EXTRA_HEADERS || (len > 0 && (len < 2 || extra[len - 1] != '\n')))
        return false;
    for (size_t i = 0; i < len; i++) {
        if (extra[i] == '\r' && extra[i + 1] != '\n')
            return false;
        if (extra[i] == '\n' && (i == 0 || extra[i - 1] != '\r'))
            return false;
        if (extra[i] == '\n' && (i < 2 || extra[i - 2] == '\n'))
            return false; /* an empty line would end the head early */
    }
    return true;
}

static bool valid_content_type(const char *ctype)
{
    return ctype == NULL || strpbrk(ctype, "\r\n") == NULL;
}

void fb_http_reply(fb_http_req *req, int status, const char *content_type, char *body, size_t len,
                   const char *extra_headers)
{
    if (req == NULL) {
        free(body);
        return;
    }
    if (req->in_abort_cb) {
        free(body); /* released when the abort callback returns */
        return;
    }
    if (req->streaming) {
        free(body);
        fb_http_stream_end(req);
        return;
    }
    conn *c = req->c;
    if (c == NULL) {
        free(body);
        req_free(req);
        return;
    }
    if (status < 200 || status > 999 || (body == NULL && len > 0) ||
        !valid_content_type(content_type) ||
        (extra_headers != NULL && !valid_extra_headers(extra_headers))) {
        free(body);
        static const char text[] = "internal error: invalid response\n";
        body = malloc(sizeof text - 1);
        len = body != NULL ? sizeof text - 1 : 0;
        if (body != NULL)
            memcpy(body, text, len);
        status = 500;
        content_type = "text/plain; charset=utf-8";
        extra_headers = NULL;
    }
    if (status == 204 || status == 304) {
        free(body); /* these never carry a body */
        body = NULL;
        len = 0;
    }
    if (!c->closing)
        send_response(c, status, content_type, body, len, req->head_only, req->keep_alive,
                      extra_headers != NULL ? extra_headers : "");
    else
        free(body);
    conn_answered(c, req, req->keep_alive);
}

int fb_http_stream_begin(fb_http_req *req, int status, const char *content_type)
{
    if (req == NULL || status < 200 || status > 999 || !valid_content_type(content_type))
        return FB_EINVAL;
    conn *c = req->c;
    if (c == NULL || c->closing || req->streaming || req->in_abort_cb)
        return FB_ESTATE;
    if (req->raw_stream)
        req->keep_alive = false; /* HTTP/1.0 has no chunks: the close ends the body */
    size_t hlen = 0;
    char *head =
        format_head(status, content_type, -1, "", !req->raw_stream, req->keep_alive, &hlen);
    if (head == NULL)
        return FB_ENOMEM;
    if (!conn_write(c, head, hlen, NULL, 0))
        return FB_ESTATE;
    req->streaming = true;
    return FB_OK;
}

int fb_http_stream_write(fb_http_req *req, const char *data, size_t len)
{
    if (req == NULL || (data == NULL && len > 0))
        return FB_EINVAL;
    conn *c = req->c;
    if (!req->streaming || c == NULL || c->closing || req->in_abort_cb)
        return FB_ESTATE;
    /* An empty chunk would end the stream; a HEAD request gets no body. */
    if (len == 0 || req->head_only)
        return FB_OK;
    if (uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) >= HTTP_STREAM_UNSENT_MAX)
        return FB_EBUSY;
    char size_line[24];
    int n = req->raw_stream ? 0 : snprintf(size_line, sizeof size_line, "%zx\r\n", len);
    size_t total = (size_t)n + len + (req->raw_stream ? 0 : 2);
    char *chunk = malloc(total);
    if (chunk == NULL)
        return FB_ENOMEM;
    memcpy(chunk, size_line, (size_t)n);
    memcpy(chunk + n, data, len);
    if (!req->raw_stream)
        memcpy(chunk + n + len, "\r\n", 2);
    return conn_write(c, chunk, total, NULL, 0) ? FB_OK : FB_ESTATE;
}

void fb_http_stream_end(fb_http_req *req)
{
    if (req == NULL || req->in_abort_cb)
        return;
    conn *c = req->c;
    if (c == NULL) {
        req_free(req);
        return;
    }
    if (req->streaming && !req->raw_stream && !req->head_only && !c->closing) {
        static const char last[] = "0\r\n\r\n";
        char *msg = malloc(sizeof last - 1);
        if (msg != NULL)
            memcpy(msg, last, sizeof last - 1);
        if (msg == NULL || !conn_write(c, msg, sizeof last - 1, NULL, 0))
            conn_close(c);
    } else if (!req->streaming && !c->closing) {
        /* Ended without a begin: the client still needs an answer. */
        send_error(c, 500, "internal error: empty stream\n", false);
        req->keep_alive = false;
    }
    conn_answered(c, req, req->keep_alive);
}

void fb_http_req_on_abort(fb_http_req *req, void (*cb)(void *ud), void *ud)
{
    if (req == NULL || req->c == NULL)
        return;
    req->abort_cb = cb;
    req->abort_ud = ud;
}

int fb_http_set_api(fb_http *h, const char *prefix, size_t max_body, fb_http_api_handler handler,
                    void *arg)
{
    if (h == NULL || prefix == NULL || handler == NULL || prefix[0] != '/' ||
        strlen(prefix) >= sizeof h->api_prefix || max_body > HTTP_MAX_API_BODY)
        return FB_EINVAL;
    strcpy(h->api_prefix, prefix);
    h->api_max_body = max_body;
    h->api_handler = handler;
    h->api_arg = arg;
    return FB_OK;
}

static void on_reject_closed(uv_handle_t *handle)
{
    free(handle);
}

static void conn_set_peer(conn *c)
{
    struct sockaddr_storage ss;
    int len = sizeof ss;
    strcpy(c->peer, "unknown");
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) != 0)
        return;
    if (ss.ss_family == AF_INET)
        uv_ip4_name((struct sockaddr_in *)&ss, c->peer, sizeof c->peer);
    else if (ss.ss_family == AF_INET6)
        uv_ip6_name((struct sockaddr_in6 *)&ss, c->peer, sizeof c->peer);
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
    c->msg_limit = HTTP_MAX_REQUEST;
    http_parser_init(&c->parser, HTTP_REQUEST);
    c->parser.data = c;
    c->next = h->conns;
    if (h->conns != NULL)
        h->conns->prev = c;
    h->conns = c;
    h->nconns++;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        conn_close(c);
        return;
    }
    conn_update_read(c);
    if (c->closing)
        return;
    conn_set_peer(c);
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
    h->settings.on_header_field = on_header_field;
    h->settings.on_header_value = on_header_value;
    h->settings.on_headers_complete = on_headers_complete;
    h->settings.on_body = on_body;
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
