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
/* INFER through consensus: after an INFER executed at some seq, the node
 * runs it here and sends the client what cb receives. */
typedef struct serve_infer_result {
    const char *error; /* non-NULL: not run (no model, queue full, bad prompt) */
    const char *text;
    size_t text_len;
    const int32_t *tokens;
    int n_tokens;
    const char *finish;
    uint8_t output_digest[16]; /* XXH3-128 over (model digest, tokens) */
    uint8_t model_digest[16];
} serve_infer_result;
typedef void (*serve_infer_cb)(void *ud, const serve_infer_result *r);

/* Run prompt through the batcher (BOS added) with these sampling settings;
 * cb(ud, result) runs exactly once on the loop thread, possibly before this
 * returns (when the request is refused). */
void serve_infer(serve *s, const char *prompt, int max_tokens, float temperature, int top_k,
                 float top_p, uint64_t seed, serve_infer_cb cb, void *ud);
/* The served model's digest (16 bytes), or NULL without a model. */
const uint8_t *serve_model_digest(const serve *s);

/* Stop the batcher (requests in flight end; their clients get an error or
 * the end of their stream), then release the uv_async; cb(arg) runs when
 * the handle is closed.  serve_free after that. */
void serve_close(serve *s, void (*cb)(void *arg), void *arg);
void serve_free(serve *s);

#endif
