/* serve.c - the node's inference API: OpenAI-style completions over the
 * batcher, with a single-flight response cache and a per-client rate limit
 * (see serve.h). */
#include "serve.h"

#include "batcher.h"
#include "fb_error.h"
#include "log.h"
#include "model.h"
#include "ratelimit.h"
#include "rcache.h"

#include <inttypes.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <xxhash.h>

#define API_PREFIX "/v1/"
#define API_MAX_BODY (256 * 1024) /* a request body; prompts up to ~250 KB */
#define EVQ_MAX 4096              /* batcher events waiting for the loop */
#define RL_MAX_CLIENTS 4096       /* rate-limit buckets kept */
#define DEFAULT_MAX_TOKENS 16     /* OpenAI's default */

typedef struct inflight inflight;

/* One batcher event copied for the loop thread. */
typedef struct evmsg {
    inflight *f;
    int kind;
    char *data; /* TOKEN: the piece; DONE: the text */
    size_t len;
    int32_t *tokens; /* DONE */
    int n_tokens, n_prompt, err;
    char finish[16];
    char errmsg[160];
} evmsg;

struct serve {
    uv_loop_t *loop;
    cfg_inference cfg;
    llm_model *model;
    batcher *bat;
    rcache *cache;
    ratelimit *rl;
    char model_id[128];
    char digest_hex[33];
    uv_async_t async;
    bool async_open, closing;
    pthread_mutex_t mu;
    pthread_cond_t room;
    evmsg *q; /* ring of EVQ_MAX */
    size_t q_head, q_len;
    uint64_t dropped_events;
    inflight *live; /* requests in the batcher, doubly linked */
    void (*close_cb)(void *);
    void *close_arg;
    struct {
        fb_metric *ok, *bad, *limited, *full, *failed, *cache_hit, *cache_miss, *coalesced,
            *evictions, *tokens, *prompt_tokens, *latency;
        uint64_t last[6];
    } m;
};

/* A request running in the batcher on behalf of an HTTP client (req NULL
 * once the client went away) and, for a cacheable request, of the cache's
 * followers. */
struct inflight {
    serve *s;
    fb_http_req *req;
    serve_infer_cb icb; /* an INFER through consensus instead of an HTTP client */
    void *iud;
    uint64_t id;
    bool stream, leader;
    rcache_key key;
    char cmpl_id[48];
    int64_t created;
    double t0;
    inflight *prev, *next;
    /* streaming: the text so far, and how much of it went out.  The last
     * `hold` bytes wait (they may begin a stop string), and so does an
     * incomplete UTF-8 character. */
    char *buf;
    size_t len, cap, sent, hold;
    char stop[BATCHER_MAX_STOP][BATCHER_MAX_STOP_LEN + 1];
    int n_stop;
};

/* A client waiting for another request's result (single-flight). */
typedef struct follower {
    serve *s;
    fb_http_req *req;
    rcache_waiter handle;
    char cmpl_id[48];
    int64_t created;
    double t0;
} follower;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t now_ms(void)
{
    return (uint64_t)(now_s() * 1e3);
}

/* ---- responses ---- */

static void reply_json(fb_http_req *req, int status, json_t *o, const char *extra)
{
    char *body = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (!body) {
        fb_http_reply(req, 500, "text/plain", strdup("out of memory\n"), 14, NULL);
        return;
    }
    fb_http_reply(req, status, "application/json", body, strlen(body), extra);
}

/* OpenAI's error shape. */
static void reply_error(serve *s, fb_http_req *req, int status, const char *type, const char *code,
                        const char *extra, const char *fmt, ...)
    __attribute__((format(printf, 7, 8)));
static void reply_error(serve *s, fb_http_req *req, int status, const char *type, const char *code,
                        const char *extra, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (s && status == 400)
        fb_metric_add(s->m.bad, 1);
    json_t *e = json_pack("{s:{s:s, s:s, s:n, s:s?}}", "error", "message", msg, "type", type,
                          "param", "code", code);
    reply_json(req, status, e, extra);
}

static void new_cmpl_id(char *out, size_t cap)
{
    uint8_t r[12];
    randombytes_buf(r, sizeof r);
    char hex[25];
    sodium_bin2hex(hex, sizeof hex, r, sizeof r);
    snprintf(out, cap, "cmpl-%s", hex);
}

/* The output digest covers the model and the generated ids (as
 * little-endian int32), so replicas, and clients comparing them, agree on
 * exactly what was produced. */
static void output_digest(const serve *s, const int32_t *tokens, int n, uint8_t out[16])
{
    XXH3_state_t *st = XXH3_createState();
    XXH3_128bits_reset(st);
    XXH3_128bits_update(st, llm_model_digest(s->model), 16);
    XXH3_128bits_update(st, tokens, (size_t)n * sizeof *tokens);
    XXH128_canonical_t c;
    XXH128_canonicalFromHash(&c, XXH3_128bits_digest(st));
    XXH3_freeState(st);
    memcpy(out, c.digest, 16);
}

/* The cached / computed result of a completion: what every answer to it
 * is built from. */
static json_t *result_json(const serve *s, const char *text, size_t len, const int32_t *tokens,
                           int n_tokens, const char *finish, int n_prompt)
{
    json_t *ids = json_array();
    for (int i = 0; i < n_tokens; i++)
        json_array_append_new(ids, json_integer(tokens[i]));
    uint8_t d[16];
    output_digest(s, tokens, n_tokens, d);
    char hex[33];
    sodium_bin2hex(hex, sizeof hex, d, sizeof d);
    json_t *t = json_stringn(text, len);
    if (!t) { /* not valid UTF-8 (a cut multi-byte character): keep it printable */
        char *fixed = malloc(len + 1);
        for (size_t i = 0; fixed && i < len; i++)
            fixed[i] = (unsigned char)text[i] < 0x80 ? text[i] : '?';
        t = json_stringn(fixed ? fixed : "", fixed ? len : 0);
        free(fixed);
    }
    return json_pack("{s:o, s:o, s:s, s:i, s:s}", "text", t, "tokens", ids, "finish", finish,
                     "n_prompt", n_prompt, "output_digest", hex);
}

static const char *openai_finish(const char *finish)
{
    return strcmp(finish, "length") == 0 || strcmp(finish, "deadline") == 0 ? "length" : "stop";
}

static json_t *completion_json(const serve *s, const char *cmpl_id, int64_t created,
                               json_t *result /* borrowed */, bool cached)
{
    json_t *tokens = json_object_get(result, "tokens");
    int n_gen = (int)json_array_size(tokens);
    int n_prompt = (int)json_integer_value(json_object_get(result, "n_prompt"));
    const char *finish = json_string_value(json_object_get(result, "finish"));
    return json_pack("{s:s, s:s, s:I, s:s, s:[{s:O, s:i, s:n, s:s}], s:{s:i, s:i, s:i}, "
                     "s:{s:O, s:O, s:s, s:s, s:b}}",
                     "id", cmpl_id, "object", "text_completion", "created", (json_int_t)created,
                     "model", s->model_id, "choices", "text", json_object_get(result, "text"),
                     "index", 0, "logprobs", "finish_reason", openai_finish(finish), "usage",
                     "prompt_tokens", n_prompt, "completion_tokens", n_gen, "total_tokens",
                     n_prompt + n_gen, "fedbft", "tokens", tokens, "output_digest",
                     json_object_get(result, "output_digest"), "model_digest", s->digest_hex,
                     "finish", finish, "cached", cached);
}

/* Send stream bytes.  A client that has over HTTP_STREAM_UNSENT_MAX bytes
 * unread is too slow to keep: its stream ends and its request is cancelled
 * (a cache leader keeps computing for the followers). */
static void stream_send(serve *s, inflight *f, const char *data, size_t len)
{
    if (!f->req)
        return;
    int rc = fb_http_stream_write(f->req, data, len);
    if (rc == FB_EBUSY) {
        LOG_WARN("inference: %s: client too slow to read its stream; ending it", f->cmpl_id);
        fb_http_stream_end(f->req);
        f->req = NULL;
        if (!f->leader)
            batcher_cancel(s->bat, f->id);
    }
}

/* Bytes at the end of b[from, to) that start a UTF-8 character not yet
 * complete: the chunk must stop before them. */
static size_t complete_utf8(const char *b, size_t from, size_t to)
{
    for (size_t back = 1; back <= 3 && back <= to - from; back++) {
        unsigned char c = (unsigned char)b[to - back];
        if ((c & 0xc0) == 0x80)
            continue; /* a continuation byte: keep looking for the lead */
        size_t need = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : c >= 0xc0 ? 2 : 1;
        return need > back ? to - back : to;
    }
    return to;
}

static void stream_text(serve *s, inflight *f, const char *text, size_t len);

/* A streamed piece: add it to the text, send what can no longer be part of
 * a stop string or of an unfinished character. */
static void stream_piece(serve *s, inflight *f, const char *piece, size_t n)
{
    if (f->len + n > f->cap) {
        size_t cap = (f->len + n) * 2 + 64;
        char *b = realloc(f->buf, cap);
        if (!b)
            return;
        f->buf = b;
        f->cap = cap;
    }
    memcpy(f->buf + f->len, piece, n);
    f->len += n;
    /* The piece that completes a stop string arrives before the end of the
     * request: never send from its start on. */
    size_t limit = f->len;
    for (int i = 0; i < f->n_stop; i++) {
        size_t sl = strlen(f->stop[i]);
        size_t from = f->sent > sl ? f->sent - sl : 0;
        const char *at =
            f->len - from >= sl ? memmem(f->buf + from, f->len - from, f->stop[i], sl) : NULL;
        if (at && (size_t)(at - f->buf) < limit)
            limit = (size_t)(at - f->buf);
    }
    if (limit < f->len) {
        if (limit > f->sent) {
            size_t end = complete_utf8(f->buf, f->sent, limit);
            stream_text(s, f, f->buf + f->sent, end - f->sent);
            f->sent = end;
        }
        f->hold = f->len; /* the rest is cut: DONE follows */
        return;
    }
    if (f->len <= f->sent + f->hold)
        return;
    size_t end = complete_utf8(f->buf, f->sent, f->len - f->hold);
    if (end > f->sent) {
        stream_text(s, f, f->buf + f->sent, end - f->sent);
        f->sent = end;
    }
}

/* SSE: one event with one completion chunk. */
static void stream_chunk(serve *s, inflight *f, const char *text, size_t len, const char *finish)
{
    if (!f->req)
        return;
    json_t *t = json_stringn(text, len);
    if (!t) { /* bytes that never formed a character: shown as '?' */
        char *fixed = malloc(len + 1);
        for (size_t i = 0; fixed && i < len; i++)
            fixed[i] = (unsigned char)text[i] < 0x80 ? text[i] : '?';
        t = json_stringn(fixed ? fixed : "", fixed ? len : 0);
        free(fixed);
    }
    json_t *o = json_pack("{s:s, s:s, s:I, s:s, s:[{s:o, s:i, s:n, s:o}]}", "id", f->cmpl_id,
                          "object", "text_completion", "created", (json_int_t)f->created, "model",
                          s->model_id, "choices", "text", t, "index", 0, "logprobs",
                          "finish_reason", finish ? json_string(finish) : json_null());
    char *body = json_dumps(o, JSON_COMPACT);
    json_decref(o);
    if (!body)
        return;
    size_t n = strlen(body);
    char *ev = malloc(n + 9);
    if (ev) {
        memcpy(ev, "data: ", 6);
        memcpy(ev + 6, body, n);
        memcpy(ev + 6 + n, "\n\n", 2);
        stream_send(s, f, ev, n + 8);
        free(ev);
    }
    free(body);
}

static void stream_text(serve *s, inflight *f, const char *text, size_t len)
{
    stream_chunk(s, f, text, len, NULL);
}

/* ---- batcher events (batcher thread -> loop) ---- */

static void evmsg_free(evmsg *e)
{
    free(e->data);
    free(e->tokens);
}

/* Batcher thread: copy and queue.  When the queue is full the batcher waits
 * for room (back-pressure on inference, never on consensus), except while
 * closing, when the loop is not draining and events are dropped. */
static void on_batcher_event(void *ud, const batcher_event *ev)
{
    inflight *f = ud;
    serve *s = f->s;
    evmsg e = {.f = f, .kind = ev->kind};
    if (ev->kind == BATCHER_TOKEN) {
        e.data = malloc(ev->piece_len + 1);
        if (e.data)
            memcpy(e.data, ev->piece, ev->piece_len);
        e.len = e.data ? ev->piece_len : 0;
    } else {
        e.data = malloc(ev->text_len + 1);
        e.tokens = malloc(((size_t)ev->n_tokens + 1) * sizeof *e.tokens);
        if (e.data)
            memcpy(e.data, ev->text, ev->text_len);
        if (e.tokens)
            memcpy(e.tokens, ev->tokens, (size_t)ev->n_tokens * sizeof *e.tokens);
        e.len = e.data ? ev->text_len : 0;
        e.n_tokens = e.tokens ? ev->n_tokens : 0;
        e.n_prompt = ev->n_prompt;
        e.err = ev->err;
        snprintf(e.finish, sizeof e.finish, "%s", ev->finish ? ev->finish : "error");
        snprintf(e.errmsg, sizeof e.errmsg, "%s", ev->errmsg ? ev->errmsg : "");
    }
    pthread_mutex_lock(&s->mu);
    while (s->q_len == EVQ_MAX && !s->closing)
        pthread_cond_wait(&s->room, &s->mu);
    if (s->q_len == EVQ_MAX && ev->kind == BATCHER_TOKEN) {
        s->dropped_events++;
        evmsg_free(&e);
    } else if (s->q_len == EVQ_MAX) {
        /* DONE must arrive (it frees the request): make room by dropping the
         * oldest token event, which a closing node no longer streams. */
        evmsg *old = &s->q[s->q_head];
        evmsg_free(old);
        *old = e;
        s->dropped_events++;
    } else {
        s->q[(s->q_head + s->q_len++) % EVQ_MAX] = e;
    }
    pthread_mutex_unlock(&s->mu);
    if (s->async_open)
        uv_async_send(&s->async);
}

static void live_remove(serve *s, inflight *f)
{
    if (f->prev)
        f->prev->next = f->next;
    else
        s->live = f->next;
    if (f->next)
        f->next->prev = f->prev;
}

static void infer_done(serve *s, inflight *f, evmsg *e)
{
    bool ok = strcmp(e->finish, "error") != 0 && strcmp(e->finish, "cancelled") != 0;
    char why[400];
    serve_infer_result r = {.text = e->data ? e->data : "",
                            .text_len = e->len,
                            .tokens = e->tokens,
                            .n_tokens = e->n_tokens,
                            .finish = e->finish};
    if (!ok) {
        snprintf(why, sizeof why, "inference did not complete (%s)%s%s", e->finish,
                 e->errmsg[0] ? ": " : "", e->errmsg);
        r.error = why;
    }
    output_digest(s, e->tokens, e->n_tokens, r.output_digest);
    memcpy(r.model_digest, llm_model_digest(s->model), 16);
    f->icb(f->iud, &r);
    fb_metric_add(ok ? s->m.ok : s->m.failed, 1);
}

static void on_done(serve *s, inflight *f, evmsg *e)
{
    if (f->icb) {
        infer_done(s, f, e);
        live_remove(s, f);
        free(f);
        return;
    }
    bool ok = strcmp(e->finish, "error") != 0 && strcmp(e->finish, "cancelled") != 0;
    json_t *result = ok ? result_json(s, e->data ? e->data : "", e->len, e->tokens, e->n_tokens,
                                      e->finish, e->n_prompt)
                        : NULL;
    if (f->leader) {
        if (result) {
            char *blob = json_dumps(result, JSON_COMPACT);
            if (blob)
                rcache_complete(s->cache, &f->key, (const uint8_t *)blob, strlen(blob), now_ms());
            else
                rcache_abandon(s->cache, &f->key, FB_ENOMEM);
            free(blob);
        } else {
            rcache_abandon(s->cache, &f->key, e->err ? e->err : FB_ESTATE);
        }
    }
    if (f->req) {
        if (f->stream) {
            /* The final text (cut before a stop string) less what went out. */
            if (result && e->len > f->sent)
                stream_text(s, f, e->data + f->sent, e->len - f->sent);
            if (result)
                stream_chunk(s, f, "", 0, openai_finish(e->finish));
            stream_send(s, f, "data: [DONE]\n\n", 14);
            if (f->req)
                fb_http_stream_end(f->req);
        } else if (result) {
            reply_json(f->req, 200, completion_json(s, f->cmpl_id, f->created, result, false),
                       NULL);
        } else {
            reply_error(s, f->req, 503, "server_error", "inference_failed", NULL,
                        "inference did not complete (%s)%s%s", e->finish, e->errmsg[0] ? ": " : "",
                        e->errmsg);
        }
        fb_metric_observe(s->m.latency, now_s() - f->t0);
    }
    fb_metric_add(result ? s->m.ok : s->m.failed, 1);
    json_decref(result);
    live_remove(s, f);
    free(f->buf);
    free(f);
}

static void on_async(uv_async_t *a)
{
    serve *s = a->data;
    for (;;) {
        evmsg e;
        pthread_mutex_lock(&s->mu);
        bool have = s->q_len > 0;
        if (have) {
            e = s->q[s->q_head];
            s->q_head = (s->q_head + 1) % EVQ_MAX;
            s->q_len--;
            pthread_cond_signal(&s->room);
        }
        pthread_mutex_unlock(&s->mu);
        if (!have)
            break;
        if (e.kind == BATCHER_TOKEN) {
            if (e.f->req && e.f->stream && e.len > 0)
                stream_piece(s, e.f, e.data, e.len);
        } else {
            on_done(s, e.f, &e);
        }
        evmsg_free(&e);
    }
}

/* ---- the API ---- */

static void on_inflight_abort(void *ud)
{
    inflight *f = ud;
    f->req = NULL;
    /* A cacheable request keeps running for the cache's followers. */
    if (!f->leader)
        batcher_cancel(f->s->bat, f->id);
}

static void on_follower_result(void *ud, const uint8_t *value, size_t len, int err)
{
    follower *w = ud;
    serve *s = w->s;
    json_t *result = NULL;
    if (!err && value) {
        json_error_t je;
        result = json_loadb((const char *)value, len, 0, &je);
    }
    if (result)
        reply_json(w->req, 200, completion_json(s, w->cmpl_id, w->created, result, true), NULL);
    else
        reply_error(s, w->req, 503, "server_error", "inference_failed", NULL,
                    "the identical request this one waited for failed: %s", fb_strerror(err));
    fb_metric_observe(s->m.latency, now_s() - w->t0);
    fb_metric_add(result ? s->m.ok : s->m.failed, 1);
    json_decref(result);
    free(w);
}

static void on_follower_abort(void *ud)
{
    follower *w = ud;
    rcache_waiter_cancel(w->s->cache, w->handle);
    free(w);
}

/* A completion request, parsed and checked. */
typedef struct completion_req {
    int32_t *prompt;
    int n_prompt;
    int max_tokens;
    sampler_params sp;
    bool seeded, stream;
    char stop[BATCHER_MAX_STOP][BATCHER_MAX_STOP_LEN + 1];
    int n_stop;
} completion_req;

static int get_number(json_t *o, const char *key, double min, double max, double *out, char *err,
                      size_t errlen)
{
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v))
        return 0;
    if (!json_is_number(v))
        return fb_errf(err, errlen, FB_EINVAL, "'%s' must be a number", key);
    double d = json_number_value(v);
    if (!(d >= min && d <= max))
        return fb_errf(err, errlen, FB_EINVAL, "'%s' must be between %g and %g, not %g", key, min,
                       max, d);
    *out = d;
    return 0;
}

static int parse_prompt(serve *s, json_t *p, completion_req *r, char *err, size_t errlen)
{
    const tok *tk = llm_model_tok(s->model);
    if (json_is_array(p) && json_array_size(p) == 1 && json_is_string(json_array_get(p, 0)))
        p = json_array_get(p, 0);
    if (json_is_string(p)) {
        size_t len = json_string_length(p), cap = len + 2, n = 0;
        r->prompt = malloc(cap * sizeof *r->prompt);
        if (!r->prompt)
            return fb_errf(err, errlen, FB_ENOMEM, "out of memory");
        int rc = tok_encode(tk, json_string_value(p), len, llm_model_hparams(s->model)->add_bos,
                            r->prompt, cap, &n);
        if (rc < 0)
            return fb_errf(err, errlen, rc, "cannot tokenize the prompt: %s", fb_strerror(rc));
        r->n_prompt = (int)n;
        return 0;
    }
    if (json_is_array(p) && json_array_size(p) > 0 && json_is_integer(json_array_get(p, 0))) {
        size_t n = json_array_size(p);
        if (n > (size_t)s->cfg.n_ctx + 1)
            return fb_errf(err, errlen, FB_ETOOBIG, "the prompt has %zu tokens; at most %u", n,
                           s->cfg.n_ctx);
        r->prompt = malloc(n * sizeof *r->prompt);
        if (!r->prompt)
            return fb_errf(err, errlen, FB_ENOMEM, "out of memory");
        for (size_t i = 0; i < n; i++) {
            json_t *v = json_array_get(p, i);
            json_int_t id = json_is_integer(v) ? json_integer_value(v) : -1;
            if (id < 0 || id >= (json_int_t)tok_n_vocab(tk))
                return fb_errf(err, errlen, FB_EINVAL,
                               "prompt token %zu is not a token id of "
                               "this model (0..%zu)",
                               i, tok_n_vocab(tk) - 1);
            r->prompt[i] = (int32_t)id;
        }
        r->n_prompt = (int)n;
        return 0;
    }
    return fb_errf(err, errlen, FB_EINVAL,
                   "'prompt' must be a string, an array of one string, or an array of token ids");
}

static int parse_stop(json_t *v, completion_req *r, char *err, size_t errlen)
{
    if (!v || json_is_null(v))
        return 0;
    json_t *one = json_is_string(v) ? v : NULL;
    size_t n = one ? 1 : json_is_array(v) ? json_array_size(v) : (size_t)-1;
    if (n == (size_t)-1 || n > BATCHER_MAX_STOP)
        return fb_errf(err, errlen, FB_EINVAL,
                       "'stop' must be a string or an array of at most %d strings",
                       BATCHER_MAX_STOP);
    for (size_t i = 0; i < n; i++) {
        json_t *e = one ? one : json_array_get(v, i);
        if (!json_is_string(e) || json_string_length(e) == 0 ||
            json_string_length(e) > BATCHER_MAX_STOP_LEN)
            return fb_errf(err, errlen, FB_EINVAL,
                           "each stop sequence must be a non-empty string of at most %d bytes",
                           BATCHER_MAX_STOP_LEN);
        snprintf(r->stop[r->n_stop++], sizeof r->stop[0], "%s", json_string_value(e));
    }
    return 0;
}

static int parse_completion(serve *s, const fb_http_req_info *info, completion_req *r, char *err,
                            size_t errlen)
{
    json_error_t je;
    json_t *o = json_loadb(info->body, info->body_len, 0, &je);
    if (!o)
        return fb_errf(err, errlen, FB_EINVAL, "the body is not valid JSON: %s (line %d)", je.text,
                       je.line);
    int rc = 0;
    double max_tokens = DEFAULT_MAX_TOKENS, temperature = 1, top_p = 1, top_k = 0, n = 1, seed = -1;
    double penalty = 0;
    json_t *stream = json_object_get(o, "stream"), *echo = json_object_get(o, "echo");
    if (!json_is_object(o))
        rc = fb_errf(err, errlen, FB_EINVAL, "the body must be a JSON object");
    else if (!json_object_get(o, "prompt"))
        rc = fb_errf(err, errlen, FB_EINVAL, "'prompt' is required");
    if (!rc)
        rc = get_number(o, "max_tokens", 1, s->cfg.max_tokens, &max_tokens, err, errlen);
    if (!rc)
        rc = get_number(o, "temperature", 0, 2, &temperature, err, errlen);
    if (!rc)
        rc = get_number(o, "top_p", 0, 1, &top_p, err, errlen);
    if (!rc)
        rc = get_number(o, "top_k", 0, 1e6, &top_k, err, errlen);
    if (!rc)
        rc = get_number(o, "seed", 0, 9007199254740991.0, &seed, err, errlen);
    if (!rc)
        rc = get_number(o, "n", 1, 1, &n, err, errlen);
    if (!rc)
        rc = get_number(o, "presence_penalty", 0, 0, &penalty, err, errlen);
    if (!rc)
        rc = get_number(o, "frequency_penalty", 0, 0, &penalty, err, errlen);
    if (!rc && stream && !json_is_boolean(stream) && !json_is_null(stream))
        rc = fb_errf(err, errlen, FB_EINVAL, "'stream' must be true or false");
    if (!rc && echo && json_is_true(echo))
        rc = fb_errf(err, errlen, FB_EINVAL, "'echo' is not supported");
    if (!rc)
        rc = parse_stop(json_object_get(o, "stop"), r, err, errlen);
    if (!rc)
        rc = parse_prompt(s, json_object_get(o, "prompt"), r, err, errlen);
    if (!rc) {
        r->max_tokens = (int)max_tokens;
        r->stream = json_is_true(stream);
        r->seeded = seed >= 0;
        uint64_t sv = r->seeded ? (uint64_t)seed : 0;
        if (!r->seeded)
            randombytes_buf(&sv, sizeof sv);
        r->sp = (sampler_params){.temperature = (float)temperature,
                                 .top_k = (int)top_k,
                                 .top_p = (float)top_p,
                                 .seed = sv};
        /* Greedy ignores the sampling knobs: normalize them so identical
         * greedy requests share a cache key. */
        if (temperature <= 0)
            r->sp = (sampler_params){.top_p = 1};
    }
    json_decref(o);
    return rc;
}

static int submit(serve *s, inflight *f, const completion_req *r, char *err, size_t errlen)
{
    batcher_request br = {.prompt = r->prompt,
                          .n_prompt = r->n_prompt,
                          .max_tokens = r->max_tokens,
                          .sampling = r->sp,
                          .deadline_ms = (int64_t)now_ms() + s->cfg.deadline_ms,
                          .stream = f->stream,
                          .cb = on_batcher_event,
                          .ud = f};
    for (int i = 0; i < r->n_stop; i++)
        br.stop[i] = r->stop[i];
    int rc = batcher_submit(s->bat, &br, &f->id, err, errlen);
    if (rc == 0) {
        f->next = s->live;
        if (s->live)
            s->live->prev = f;
        s->live = f;
    }
    return rc;
}

static void reply_submit_error(serve *s, fb_http_req *req, int rc, const char *err)
{
    if (rc == FB_EBUSY) {
        fb_metric_add(s->m.full, 1);
        reply_error(s, req, 429, "server_error", "queue_full", "Retry-After: 1\r\n", "%s", err);
    } else if (rc == FB_ESTATE) {
        reply_error(s, req, 503, "server_error", "shutting_down", NULL, "%s", err);
    } else {
        reply_error(s, req, 400, "invalid_request_error", NULL, NULL, "%s", err);
    }
}

static void completions(serve *s, fb_http_req *req, const fb_http_req_info *info)
{
    double retry = 0;
    const char *who = info->authorization[0] ? info->authorization : info->peer;
    if (!ratelimit_take(s->rl, who, now_ms(), &retry)) {
        char extra[64];
        snprintf(extra, sizeof extra, "Retry-After: %d\r\n", (int)(retry + 0.999));
        fb_metric_add(s->m.limited, 1);
        reply_error(s, req, 429, "rate_limit_error", "rate_limit_exceeded", extra,
                    "rate limit: at most %u requests per second (burst %u) per client; retry in "
                    "%.2f s",
                    s->cfg.rate_per_s, s->cfg.rate_burst, retry);
        return;
    }
    char err[512];
    completion_req r = {0};
    int rc = parse_completion(s, info, &r, err, sizeof err);
    if (rc < 0) {
        free(r.prompt);
        reply_error(s, req, 400, "invalid_request_error", NULL, NULL, "%s", err);
        return;
    }
    /* Reproducible requests (greedy, or sampled with a seed) go through the
     * cache; identical ones in flight share one computation.  Streams are
     * computed for their own client. */
    bool cacheable = !r.stream && (r.sp.temperature <= 0 || r.seeded) && s->cache != NULL;
    rcache_key key;
    if (cacheable) {
        const char *stops[BATCHER_MAX_STOP];
        for (int i = 0; i < r.n_stop; i++)
            stops[i] = r.stop[i];
        rcache_key_of(&key, llm_model_digest(s->model), r.prompt, r.n_prompt, r.sp.temperature,
                      r.sp.top_k, r.sp.top_p, r.sp.seed, r.max_tokens, stops, r.n_stop);
        follower *w = calloc(1, sizeof *w);
        if (!w) {
            free(r.prompt);
            reply_error(s, req, 503, "server_error", NULL, NULL, "out of memory");
            return;
        }
        *w = (follower){.s = s, .req = req, .created = (int64_t)time(NULL), .t0 = now_s()};
        new_cmpl_id(w->cmpl_id, sizeof w->cmpl_id);
        const uint8_t *value = NULL;
        size_t len = 0;
        int lr = rcache_lookup(s->cache, &key, now_ms(), on_follower_result, w, &w->handle, &value,
                               &len);
        if (lr == RCACHE_HIT) {
            on_follower_result(w, value, len, 0);
            free(r.prompt);
            return;
        }
        if (lr == RCACHE_FOLLOWER) {
            fb_http_req_on_abort(req, on_follower_abort, w);
            free(r.prompt);
            return;
        }
        free(w);
        if (lr < 0) {
            free(r.prompt);
            reply_error(s, req, 429, "server_error", "busy", "Retry-After: 1\r\n",
                        "too many identical requests in flight");
            return;
        }
    }
    inflight *f = calloc(1, sizeof *f);
    if (!f) {
        if (cacheable)
            rcache_abandon(s->cache, &key, FB_ENOMEM);
        free(r.prompt);
        reply_error(s, req, 503, "server_error", NULL, NULL, "out of memory");
        return;
    }
    *f = (inflight){.s = s,
                    .req = req,
                    .stream = r.stream,
                    .leader = cacheable,
                    .created = (int64_t)time(NULL),
                    .t0 = now_s()};
    if (cacheable)
        f->key = key;
    for (int i = 0; i < r.n_stop; i++) {
        if (strlen(r.stop[i]) > f->hold + 1)
            f->hold = strlen(r.stop[i]) - 1;
        memcpy(f->stop[i], r.stop[i], sizeof f->stop[i]);
    }
    f->n_stop = r.n_stop;
    new_cmpl_id(f->cmpl_id, sizeof f->cmpl_id);
    rc = submit(s, f, &r, err, sizeof err);
    free(r.prompt);
    if (rc < 0) {
        if (cacheable)
            rcache_abandon(s->cache, &key, rc);
        reply_submit_error(s, req, rc, err);
        free(f);
        return;
    }
    fb_http_req_on_abort(req, on_inflight_abort, f);
    if (r.stream)
        fb_http_stream_begin(req, 200, "text/event-stream");
}

static void models(serve *s, fb_http_req *req)
{
    json_t *o = json_pack("{s:s, s:[{s:s, s:s, s:I, s:s, s:s}]}", "object", "list", "data", "id",
                          s->model_id, "object", "model", "created", (json_int_t)0, "owned_by",
                          "fedbft", "digest", s->digest_hex);
    reply_json(req, 200, o, NULL);
}

static void on_api(void *arg, fb_http_req *req, const fb_http_req_info *info)
{
    serve *s = arg;
    bool is_completions = strcmp(info->path, "/v1/completions") == 0;
    bool is_models = strcmp(info->path, "/v1/models") == 0;
    if (!is_completions && !is_models) {
        reply_error(s, req, 404, "invalid_request_error", "not_found", NULL,
                    "no such endpoint %s (this node serves POST /v1/completions and GET "
                    "/v1/models)",
                    info->path);
        return;
    }
    const char *want = is_completions ? "POST" : "GET";
    if (strcmp(info->method, want) != 0 && !(is_models && strcmp(info->method, "HEAD") == 0)) {
        reply_error(s, req, 405, "invalid_request_error", "method_not_allowed", NULL,
                    "%s needs %s, not %s", info->path, want, info->method);
        return;
    }
    if (!s->model) {
        reply_error(s, req, 503, "server_error", "no_model", NULL,
                    "this node serves no model (set inference.model in node.json)");
        return;
    }
    if (s->closing) {
        reply_error(s, req, 503, "server_error", "shutting_down", NULL, "the node is stopping");
        return;
    }
    if (is_models)
        models(s, req);
    else
        completions(s, req, info);
}

static void infer_refused(serve_infer_cb cb, void *ud, const char *why)
{
    serve_infer_result r = {.error = why, .finish = "error"};
    cb(ud, &r);
}

void serve_infer(serve *s, const char *prompt, int max_tokens, float temperature, int top_k,
                 float top_p, uint64_t seed, serve_infer_cb cb, void *ud)
{
    char err[512];
    if (!s->model || !s->bat || s->closing) {
        infer_refused(cb, ud, s->model ? "the node is stopping" : "this replica serves no model");
        return;
    }
    size_t len = strlen(prompt), cap = len + 2, n = 0;
    completion_req r = {
        .max_tokens = max_tokens,
        .sp = {.temperature = temperature, .top_k = top_k, .top_p = top_p, .seed = seed}};
    r.prompt = malloc(cap * sizeof *r.prompt);
    int rc = r.prompt ? tok_encode(llm_model_tok(s->model), prompt, len,
                                   llm_model_hparams(s->model)->add_bos, r.prompt, cap, &n)
                      : FB_ENOMEM;
    r.n_prompt = (int)n;
    inflight *f = rc == 0 ? calloc(1, sizeof *f) : NULL;
    if (!f) {
        free(r.prompt);
        infer_refused(cb, ud, rc ? "cannot tokenize the prompt" : "out of memory");
        return;
    }
    *f = (inflight){.s = s, .icb = cb, .iud = ud, .t0 = now_s()};
    snprintf(f->cmpl_id, sizeof f->cmpl_id, "infer");
    rc = submit(s, f, &r, err, sizeof err);
    free(r.prompt);
    if (rc < 0) {
        free(f);
        infer_refused(cb, ud, err);
    }
}

const uint8_t *serve_model_digest(const serve *s)
{
    return s && s->model ? llm_model_digest(s->model) : NULL;
}

/* ---- lifecycle, admin, metrics ---- */

static double g_queue(void *arg)
{
    serve *s = arg;
    batcher_stats st = {0};
    if (s->bat)
        batcher_get_stats(s->bat, &st);
    return st.queue_depth;
}

static double g_active(void *arg)
{
    serve *s = arg;
    batcher_stats st = {0};
    if (s->bat)
        batcher_get_stats(s->bat, &st);
    return st.active_slots;
}

static void register_metrics(serve *s, fb_metrics *m)
{
    const char *rq = "fedbft_inference_requests_total";
    const char *rh = "Inference API requests by result";
    s->m.ok = fb_metrics_counter(m, rq, rh, "result=\"ok\"");
    s->m.bad = fb_metrics_counter(m, rq, rh, "result=\"bad_request\"");
    s->m.limited = fb_metrics_counter(m, rq, rh, "result=\"rate_limited\"");
    s->m.full = fb_metrics_counter(m, rq, rh, "result=\"queue_full\"");
    s->m.failed = fb_metrics_counter(m, rq, rh, "result=\"failed\"");
    s->m.cache_hit = fb_metrics_counter(m, "fedbft_inference_cache_hits_total",
                                        "Completions answered from the response cache", NULL);
    s->m.cache_miss = fb_metrics_counter(m, "fedbft_inference_cache_misses_total",
                                         "Cacheable completions not in the cache", NULL);
    s->m.coalesced = fb_metrics_counter(m, "fedbft_inference_cache_coalesced_total",
                                        "Completions that waited for an identical one", NULL);
    s->m.evictions = fb_metrics_counter(m, "fedbft_inference_cache_evictions_total",
                                        "Cache entries evicted (memory, count or TTL)", NULL);
    s->m.tokens = fb_metrics_counter(m, "fedbft_inference_tokens_generated_total",
                                     "Tokens generated by the batcher", NULL);
    s->m.prompt_tokens = fb_metrics_counter(m, "fedbft_inference_prompt_tokens_total",
                                            "Prompt tokens processed by the batcher", NULL);
    static const double lat[] = {0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
    s->m.latency = fb_metrics_histogram(m, "fedbft_inference_request_seconds",
                                        "Completion latency, request to last byte", NULL, lat,
                                        sizeof lat / sizeof lat[0]);
    fb_metrics_gauge_fn(m, "fedbft_inference_queue_depth", "Requests waiting for a batch slot",
                        NULL, g_queue, s);
    fb_metrics_gauge_fn(m, "fedbft_inference_active_slots", "Sequences being decoded", NULL,
                        g_active, s);
}

static void sync_counter(fb_metric *c, uint64_t now, uint64_t *last)
{
    if (now > *last)
        fb_metric_add(c, now - *last);
    *last = now;
}

void serve_sync_metrics(serve *s)
{
    if (!s->bat)
        return;
    batcher_stats bs;
    batcher_get_stats(s->bat, &bs);
    rcache_stats cs = {0};
    if (s->cache)
        rcache_get_stats(s->cache, &cs);
    sync_counter(s->m.tokens, bs.tokens_generated, &s->m.last[0]);
    sync_counter(s->m.prompt_tokens, bs.prompt_tokens, &s->m.last[1]);
    sync_counter(s->m.cache_hit, cs.hits, &s->m.last[2]);
    sync_counter(s->m.cache_miss, cs.misses, &s->m.last[3]);
    sync_counter(s->m.coalesced, cs.coalesced, &s->m.last[4]);
    sync_counter(s->m.evictions, cs.evictions + cs.expirations, &s->m.last[5]);
}

json_t *serve_admin_batcher(void *arg, json_t *request, const char **err)
{
    (void)request;
    serve *s = arg;
    if (!s || !s->bat) {
        *err = "this node serves no model (set inference.model in node.json)";
        return NULL;
    }
    batcher_stats st;
    batcher_get_stats(s->bat, &st);
    static const char *const labels[9] = {"1",     "2",     "3-4",    "5-8", "9-16",
                                          "17-32", "33-64", "65-128", "129+"};
    json_t *hist = json_object();
    for (int i = 0; i < 9; i++)
        json_object_set_new(hist, labels[i], json_integer((json_int_t)st.batch_hist[i]));
    const batcher_config *c = batcher_get_config(s->bat);
    return json_pack(
        "{s:s, s:s, s:i, s:i, s:i, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:f, s:o, s:I, "
        "s:{s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i}}",
        "model", s->model_id, "model_digest", s->digest_hex, "queue_depth", st.queue_depth,
        "active_slots", st.active_slots, "max_batch", st.max_batch, "submitted",
        (json_int_t)st.submitted, "rejected_queue_full", (json_int_t)st.rejected_full, "completed",
        (json_int_t)st.completed, "deadline_expired", (json_int_t)st.deadline_expired, "cancelled",
        (json_int_t)st.cancelled, "steps", (json_int_t)st.steps, "tokens_generated",
        (json_int_t)st.tokens_generated, "prompt_tokens", (json_int_t)st.prompt_tokens,
        "tokens_per_s", st.tokens_per_s, "batch_size_histogram", hist, "events_dropped",
        (json_int_t)s->dropped_events, "config", "max_batch", c->max_batch, "max_queue",
        c->max_queue, "max_queue_delay_ms", c->max_queue_delay_ms, "prefill_chunk",
        c->prefill_chunk, "max_tokens", c->max_tokens_limit, "n_ctx", c->n_ctx, "threads",
        c->threads, "nice", c->nice);
}

json_t *serve_admin_cache(void *arg, json_t *request, const char **err)
{
    serve *s = arg;
    if (!s || !s->cache) {
        *err = s && s->model ? "the response cache is off (inference.cache_entries is 0)"
                             : "this node serves no model, so it has no response cache";
        return NULL;
    }
    json_t *clear = json_object_get(request, "clear");
    bool cleared =
        clear && (json_is_true(clear) ||
                  (json_is_string(clear) && strcmp(json_string_value(clear), "true") == 0));
    if (cleared)
        rcache_clear(s->cache);
    rcache_stats st;
    rcache_get_stats(s->cache, &st);
    return json_pack("{s:b, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}", "cleared",
                     cleared, "entries", (json_int_t)st.entries, "bytes", (json_int_t)st.bytes,
                     "hits", (json_int_t)st.hits, "misses", (json_int_t)st.misses, "coalesced",
                     (json_int_t)st.coalesced, "evictions", (json_int_t)st.evictions, "expirations",
                     (json_int_t)st.expirations, "inflight", (json_int_t)st.inflight, "max_entries",
                     (json_int_t)s->cfg.cache_entries, "max_bytes", (json_int_t)s->cfg.cache_bytes,
                     "ttl_ms", (json_int_t)s->cfg.cache_ttl_ms);
}

int serve_new(uv_loop_t *loop, const cfg_inference *cfg, fb_metrics *m, serve **out, char *err,
              size_t errlen)
{
    serve *s = calloc(1, sizeof *s);
    if (!s)
        return fb_errf(err, errlen, FB_ENOMEM, "out of memory");
    s->loop = loop;
    s->cfg = *cfg;
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->room, NULL);
    register_metrics(s, m);
    *out = s;
    if (!cfg->model[0])
        return 0;
    int rc = llm_model_load(cfg->model, &s->model, err, errlen);
    if (rc < 0)
        return rc;
    snprintf(s->model_id, sizeof s->model_id, "%s", llm_model_name(s->model));
    sodium_bin2hex(s->digest_hex, sizeof s->digest_hex, llm_model_digest(s->model), 16);
    s->q = calloc(EVQ_MAX, sizeof *s->q);
    if (!s->q)
        return fb_errf(err, errlen, FB_ENOMEM, "out of memory");
    rcache_config rcc;
    rcache_config_default(&rcc);
    rcc.max_entries = cfg->cache_entries;
    rcc.max_bytes = (size_t)cfg->cache_bytes;
    rcc.ttl_ms = cfg->cache_ttl_ms;
    /* cache_entries 0 (or cache_bytes 0) turns the cache off. */
    if (cfg->cache_entries > 0 && cfg->cache_bytes > 0 && (rc = rcache_new(&rcc, &s->cache)) < 0)
        return fb_errf(err, errlen, rc, "response cache: %s", fb_strerror(rc));
    if ((rc = ratelimit_new(cfg->rate_per_s, cfg->rate_burst, RL_MAX_CLIENTS, &s->rl)) < 0)
        return fb_errf(err, errlen, rc, "rate limit: %s", fb_strerror(rc));
    if (uv_async_init(loop, &s->async, on_async) != 0)
        return fb_errf(err, errlen, FB_EIO, "uv_async_init failed");
    s->async.data = s;
    s->async_open = true;
    batcher_config bc;
    batcher_config_default(&bc);
    bc.max_batch = (int)cfg->max_batch;
    bc.max_queue = (int)cfg->max_queue;
    bc.max_queue_delay_ms = (int)cfg->max_queue_delay_ms;
    bc.prefill_chunk = (int)cfg->prefill_chunk;
    bc.max_tokens_limit = (int)cfg->max_tokens;
    bc.n_ctx = (int)cfg->n_ctx;
    bc.threads = (int)cfg->threads;
    bc.nice = (int)cfg->nice;
    bc.sched_idle = cfg->sched_idle;
    rc = batcher_new(s->model, &bc, &s->bat, err, errlen);
    if (rc == 0)
        LOG_INFO("inference: serving %s (%.1f MB, digest %s) with %u threads, %u slots",
                 s->model_id, (double)llm_model_file_bytes(s->model) / 1e6, s->digest_hex,
                 cfg->threads, cfg->max_batch);
    return rc;
}

void serve_attach_http(serve *s, fb_http *h)
{
    fb_http_set_api(h, API_PREFIX, API_MAX_BODY, on_api, s);
}

static void on_async_closed(uv_handle_t *h)
{
    serve *s = h->data;
    if (s->close_cb)
        s->close_cb(s->close_arg);
}

void serve_close(serve *s, void (*cb)(void *arg), void *arg)
{
    s->close_cb = cb;
    s->close_arg = arg;
    pthread_mutex_lock(&s->mu);
    s->closing = true;
    pthread_cond_broadcast(&s->room);
    pthread_mutex_unlock(&s->mu);
    batcher_free(s->bat); /* its last events end every request */
    s->bat = NULL;
    if (s->async_open) {
        on_async(&s->async); /* answer them now */
        s->async_open = false;
        uv_close((uv_handle_t *)&s->async, on_async_closed);
    } else if (cb) {
        cb(arg);
    }
}

void serve_free(serve *s)
{
    if (!s)
        return;
    batcher_free(s->bat);
    for (size_t i = 0; s->q && i < s->q_len; i++)
        evmsg_free(&s->q[(s->q_head + i) % EVQ_MAX]);
    while (s->live) {
        inflight *f = s->live;
        s->live = f->next;
        free(f->buf);
        free(f);
    }
    free(s->q);
    rcache_free(s->cache);
    ratelimit_free(s->rl);
    llm_model_free(s->model);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->room);
    free(s);
}
