/* batcher.h - the embedded continuous batcher: requests queue, join the
 * running batch at step boundaries, and leave when done, while one thread
 * decodes one token for every active sequence per step.
 *
 * Model.  A fixed number of slots (max_batch), each an llm_ctx slot with its
 * KV cache.  The batcher thread loops: admit queued requests into free slots
 * (when idle, it waits up to max_queue_delay_ms after the first arrival for
 * more to arrive, so they start together); build one llm_decode call holding
 * one token for every decoding sequence plus up to prefill_chunk prompt
 * tokens for each sequence still prefilling (long prompts are prefilled in
 * chunks between decode steps); sample; deliver events; retire finished
 * sequences.  Because llm_decode's logits do not depend on the batch, a
 * request's output is identical whatever else was batched with it.
 *
 * Bounded: the queue holds at most max_queue requests (batcher_submit
 * returns FB_EBUSY at once beyond that); prompts longer than the slot context
 * minus max_tokens, and max_tokens above max_tokens_limit, are refused with
 * FB_ETOOBIG at submit.  A request whose deadline passes (queued or running)
 * ends with finish "deadline" and the tokens it had.
 *
 * Threads.  batcher_submit, batcher_cancel and batcher_get_stats may be
 * called from any thread.  Events are delivered on the batcher thread through
 * the request's callback, which must not block and must copy what it keeps
 * (pointers in the event are valid only during the call); the node wraps it
 * in a uv_async.  The batcher thread (and its kernel pool) run at the
 * configured nice level, below the event loop and the signature verifier, and
 * block on a condition variable when idle.
 */
#ifndef FB_BATCHER_H
#define FB_BATCHER_H

#include "model.h"
#include "sampler.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BATCHER_MAX_STOP 4      /* stop strings per request */
#define BATCHER_MAX_STOP_LEN 64 /* bytes per stop string */

typedef struct batcher_config {
    int max_batch;          /* slots: sequences decoded together (default 8) */
    int max_queue;          /* queued, not yet admitted requests (default 64) */
    int max_queue_delay_ms; /* an idle batcher waits this long for company (default 5) */
    int prefill_chunk;      /* prompt tokens per sequence per step (default 64) */
    int max_tokens_limit;   /* largest max_tokens accepted (default 512) */
    int n_ctx;              /* positions per slot; 0: the model's, capped at 2048 */
    int threads;            /* inference threads (default 2) */
    int nice;               /* added niceness of the inference threads (default 5; 0 none) */
    bool sched_idle;        /* run them as SCHED_IDLE: only when nothing else wants a core
                             * (default true) */
    bool kv_f32;            /* F32 KV cache instead of F16 */
} batcher_config;

/* Defaults for every field. */
void batcher_config_default(batcher_config *c);

enum batcher_event_kind {
    BATCHER_TOKEN = 1, /* one generated token (streaming) */
    BATCHER_DONE = 2,  /* the request finished (always the last event) */
};

typedef struct batcher_event {
    int kind;    /* enum batcher_event_kind */
    uint64_t id; /* from batcher_submit */
    /* BATCHER_TOKEN: the token and its text (bytes, not NUL-terminated) */
    int32_t token;
    const char *piece;
    size_t piece_len;
    /* BATCHER_DONE: all generated tokens and the text (a stop string, when
     * one ended the request, is cut from text but its tokens are kept);
     * finish is "stop" (EOS or a stop string), "length", "deadline",
     * "cancelled" or "error" (then err is an FB_E* code and errmsg says why). */
    const int32_t *tokens;
    int n_tokens;
    const char *text;
    size_t text_len;
    const char *finish;
    int err;
    const char *errmsg;
    int n_prompt;
    double queue_ms, prefill_ms, decode_ms; /* time queued, prefilling, decoding */
} batcher_event;

typedef void (*batcher_event_fn)(void *ud, const batcher_event *ev);

typedef struct batcher_request {
    const int32_t *prompt; /* token ids, BOS included if wanted; copied */
    int n_prompt;
    int max_tokens; /* 1..max_tokens_limit */
    sampler_params sampling;
    const char *stop[BATCHER_MAX_STOP]; /* NUL-terminated, copied; NULL entries unused */
    int64_t deadline_ms;                /* CLOCK_MONOTONIC ms; 0: none */
    bool stream;                        /* deliver BATCHER_TOKEN events too */
    batcher_event_fn cb;
    void *ud;
} batcher_request;

typedef struct batcher_stats {
    int queue_depth, active_slots, max_batch;
    uint64_t submitted, rejected_full, completed, deadline_expired, cancelled;
    uint64_t steps, tokens_generated, prompt_tokens;
    uint64_t batch_hist[9]; /* steps by decoding sequences: 1, 2, 3-4, 5-8, 9-16, 17-32,
                             * 33-64, 65-128, more */
    double tokens_per_s;    /* generated tokens per second over the last ~10 s */
} batcher_stats;

typedef struct batcher batcher;

/* Start the batcher thread for model m (which must outlive the batcher). */
int batcher_new(const llm_model *m, const batcher_config *cfg, batcher **out, char *err,
                size_t errlen);
/* Stop: running and queued requests end with finish "cancelled"; joins the
 * thread.  Events may be delivered during this call. */
void batcher_free(batcher *b);

/* Queue a request.  0 and *id; FB_EBUSY (queue full), FB_ETOOBIG or
 * FB_EINVAL (with err saying why); FB_ESTATE when stopping.  No event is
 * delivered for a refused request. */
int batcher_submit(batcher *b, const batcher_request *r, uint64_t *id, char *err, size_t errlen);
/* End request id early (finish "cancelled"); FB_ENOENT if it is not known
 * (already finished). */
int batcher_cancel(batcher *b, uint64_t id);
void batcher_get_stats(batcher *b, batcher_stats *out);
const batcher_config *batcher_get_config(const batcher *b);

#endif
