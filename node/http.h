/* http.h - a small HTTP/1.1 server on libuv with http-parser, for the
 * node's operator endpoints (GET /metrics, /health, /ready).  Loop thread only.
 *
 * Keep-alive (HTTP/1.1 default, `Connection: close` honoured); request size
 * limits (headers + body at most HTTP_MAX_REQUEST bytes, else 413 and close);
 * a malformed request gets 400 and the connection is closed; outside the API
 * prefix, methods other than GET/HEAD get 405; unknown paths 404 (the handler
 * decides).  At most HTTP_MAX_CONNS connections; idle ones close after
 * HTTP_IDLE_MS (never while an API answer is pending or streaming).
 *
 * Optionally one path prefix (e.g. "/v1/") is routed to an asynchronous API
 * handler instead: any method, a Content-Length body, and an answer given now
 * or later as one response or as a chunked stream (server-sent events); see
 * fb_http_set_api below.
 */
#ifndef FB_HTTP_H
#define FB_HTTP_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define HTTP_MAX_REQUEST 16384
#define HTTP_MAX_CONNS 64
#define HTTP_IDLE_MS 30000
/* Longest Content-Type / Authorization value handed to the API handler;
 * a longer one is answered with 431 and the connection closed. */
#define HTTP_MAX_HEADER_VALUE 256
/* fb_http_stream_write refuses (FB_EBUSY) while this much is still unsent. */
#define HTTP_STREAM_UNSENT_MAX (1024 * 1024)
/* Largest max_body fb_http_set_api accepts. */
#define HTTP_MAX_API_BODY (64 * 1024 * 1024)
/* Longest extra_headers string fb_http_reply accepts. */
#define HTTP_MAX_EXTRA_HEADERS 1024

typedef struct fb_http fb_http;

typedef struct fb_http_response {
    int status;               /* e.g. 200, 404, 503 */
    const char *content_type; /* e.g. "text/plain; version=0.0.4" */
    char *body;               /* malloc'd by the handler; the server frees it */
    size_t len;
} fb_http_response;

/* Called for each complete GET/HEAD request (path without the query string). */
typedef void (*fb_http_handler)(void *arg, const char *path, fb_http_response *resp);

int fb_http_new(uv_loop_t *loop, const char *host, uint16_t port, fb_http_handler handler,
                void *arg, fb_http **out, char *err, size_t errlen);
/* The port actually bound (useful with port 0). */
uint16_t fb_http_port(const fb_http *h);
void fb_http_close(fb_http *h, void (*cb)(void *arg), void *arg);
void fb_http_free(fb_http *h);

/* --- Asynchronous API requests -------------------------------------------
 *
 * Requests whose path starts with the API prefix go to the API handler with
 * any method.  The body must come with Content-Length and be at most max_body
 * bytes (else 413, and a chunked request body gets 411; both close the
 * connection); the head is still bounded by HTTP_MAX_REQUEST.  An
 * `Expect: 100-continue` is answered with 100 Continue.  A repeated
 * Content-Type or Authorization header gets 400, an over-long one 431.
 *
 * The handler answers exactly once, now or later, on the loop thread: with
 * fb_http_reply, or with fb_http_stream_begin, any number of
 * fb_http_stream_write and fb_http_stream_end.  Until then, later pipelined
 * requests on that connection wait (their bytes are buffered, boundedly) and
 * the idle timeout is off.  Keep-alive continues after either kind of answer.
 *
 * The client going away before the answer is complete -- connection reset,
 * closed, or a FIN (half-close counts as gone for API requests, as in nginx),
 * or the server being closed with fb_http_close -- aborts the request: its
 * abort callback runs once, from a later loop iteration, never from inside an
 * fb_http_* call.  A request is released by exactly one of: fb_http_reply,
 * fb_http_stream_end, or the return of its abort callback.  Without an abort
 * callback an aborted request stays allocated until the owner answers, and
 * that answer is discarded -- so an owner that always answers never touches
 * freed memory, even after fb_http_free. */
typedef struct fb_http_req fb_http_req; /* one in-flight API request */

/* What the handler learns about a request; valid until the request is released. */
typedef struct fb_http_req_info {
    const char *method;        /* "POST", "GET", ... */
    const char *path;          /* without the query string */
    const char *body;          /* NUL-terminated copy; "" when there is none */
    size_t body_len;           /* bytes before the added NUL */
    const char *content_type;  /* header value or "" */
    const char *authorization; /* header value or "" */
    const char *peer;          /* client IP as text */
} fb_http_req_info;

typedef void (*fb_http_api_handler)(void *arg, fb_http_req *req, const fb_http_req_info *info);

/* Route paths starting with prefix (starts with '/', at most 63 bytes; copied)
 * to handler; max_body at most HTTP_MAX_API_BODY.  Call before serving;
 * calling again replaces the route.  0, or FB_EINVAL. */
int fb_http_set_api(fb_http *h, const char *prefix, size_t max_body, fb_http_api_handler handler,
                    void *arg);

/* Answer with one response and release req.  body (malloc'd, may be NULL when
 * len is 0) is taken over in every case.  extra_headers: NULL, or complete
 * header lines each ending in CRLF, e.g. "Retry-After: 1\r\n", at most
 * HTTP_MAX_EXTRA_HEADERS bytes.  A status outside 200..999, a Content-Type with
 * CR/LF or malformed extra_headers are replaced by a plain 500.  On a HEAD
 * request only the head is sent; 204 and 304 drop the body.  On an aborted
 * req the answer is discarded; on a streaming req the body is discarded and
 * the stream ended. */
void fb_http_reply(fb_http_req *req, int status, const char *content_type, char *body, size_t len,
                   const char *extra_headers);

/* Start a streamed answer: Transfer-Encoding: chunked, Cache-Control: no-cache
 * (to an HTTP/1.0 client: raw bytes, then the connection closes).  0;
 * FB_EINVAL for a status outside 200..999 or a bad content_type; FB_ESTATE if
 * req is aborted or already streaming.  Whatever it returns, the owner still
 * releases req with fb_http_stream_end or fb_http_reply. */
int fb_http_stream_begin(fb_http_req *req, int status, const char *content_type);

/* Queue data (copied) as one chunk; len 0 sends nothing.  0; FB_EBUSY when
 * HTTP_STREAM_UNSENT_MAX or more bytes are still unsent (nothing queued: keep
 * the data and retry later, or give up with fb_http_stream_end); FB_ESTATE if
 * the stream was not begun or the client is gone (the abort callback, if set,
 * follows); FB_ENOMEM. */
int fb_http_stream_write(fb_http_req *req, const char *data, size_t len);

/* Send the terminating empty chunk and release req (without a successful
 * fb_http_stream_begin the client gets a 500 and the connection closes). */
void fb_http_stream_end(fb_http_req *req);

/* Ask for cb(ud) if the client goes away before the answer is complete; after
 * cb returns req is released and must not be used (cancel the work, forget
 * req).  Set it from the handler; it replaces an earlier one.  On a req that
 * is already aborted it is never called. */
void fb_http_req_on_abort(fb_http_req *req, void (*cb)(void *ud), void *ud);

#endif
