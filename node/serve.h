/* serve.h - inference served by the node: the model, its batcher, the
 * response cache and the per-client rate limit behind an OpenAI-compatible
 * HTTP API (POST /v1/completions, GET /v1/models), plus the admin commands
 * `batcher` and `cache` and the inference metrics.
 *
 * Threads: everything here runs on the loop thread, except the batcher's
 * event callback, which only copies the event into a bounded queue and wakes
 * the loop with a uv_async.
 */
#ifndef FB_SERVE_H
#define FB_SERVE_H

#include "config.h"
#include "http.h"
#include "metrics.h"

#include <jansson.h>
#include <uv.h>

typedef struct serve serve;

/* Load cfg->model (if set) and start its batcher; with no model the API
 * answers 503.  Metrics are registered in m. */
int serve_new(uv_loop_t *loop, const cfg_inference *cfg, fb_metrics *m, serve **out, char *err,
              size_t errlen);
/* Route /v1/ on h to the API. */
void serve_attach_http(serve *s, fb_http *h);
/* Advance the counters kept by the batcher, cache and rate limit (called
 * before each scrape). */
void serve_sync_metrics(serve *s);
/* Admin: `batcher` (queue, slots, batch-size histogram, tokens/s, config)
 * and `cache` (stats; clear=true empties it). */
json_t *serve_admin_batcher(void *arg, json_t *request, const char **err);
json_t *serve_admin_cache(void *arg, json_t *request, const char **err);
/* Stop the batcher (requests in flight end; their clients get an error or
 * the end of their stream), then release the uv_async; cb(arg) runs when
 * the handle is closed.  serve_free after that. */
void serve_close(serve *s, void (*cb)(void *arg), void *arg);
void serve_free(serve *s);

#endif
