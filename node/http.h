/* http.h - a small HTTP/1.1 server on libuv with http-parser, for the
 * node's operator endpoints (GET /metrics, /health, /ready).  Loop thread only.
 *
 * Keep-alive (HTTP/1.1 default, `Connection: close` honoured); request size
 * limits (headers + body at most HTTP_MAX_REQUEST bytes, else 413 and close);
 * a malformed request gets 400 and the connection is closed; methods other
 * than GET/HEAD get 405; unknown paths 404 (the handler decides).  At most
 * HTTP_MAX_CONNS connections; idle ones close after HTTP_IDLE_MS.
 */
#ifndef FB_HTTP_H
#define FB_HTTP_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define HTTP_MAX_REQUEST 16384
#define HTTP_MAX_CONNS 64
#define HTTP_IDLE_MS 30000

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

#endif
