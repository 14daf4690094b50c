/* batchver.h - verify many signatures at once on a fixed pool of worker threads.
 *
 * The node collects every signature that arrived in one event-loop turn and
 * submits them as one job.  Workers split the job into chunks and verify them
 * in parallel; the loop thread never verifies a signature itself.  Results
 * are exactly what fb_sig_verify would return for each triple.
 *
 * Completion: when a job finishes, a worker calls cfg.wake (e.g. a wrapper
 * around uv_async_send, which is safe from any thread).  The owner thread then
 * calls fb_batchver_poll, which runs the done callbacks of finished jobs in
 * submission order, so messages can be stepped in arrival order.
 *
 * Cache: if cfg.cache is set, submit answers triples found there without
 * queueing them, and poll inserts the triples that verified.  Both happen on
 * the owner thread, which also owns the cache.
 *
 * Bounds: at most cfg.max_pending signatures may be queued or in flight;
 * submit beyond that returns FB_EBUSY at once (counted in stats).
 *
 * Thread-safety: new/submit/poll/free from the owner thread only; workers
 * block on a condition variable when idle (they never spin).
 */
#ifndef FB_BATCHVER_H
#define FB_BATCHVER_H

#include "sigcache.h"

#include <stddef.h>
#include <stdint.h>

#define FB_BATCHVER_DEFAULT_MAX_PENDING 65536
#define FB_BATCHVER_MAX_THREADS 256

typedef struct fb_verify_item {
    const uint8_t *pk;     /* FB_PK_LEN bytes */
    const uint8_t *digest; /* FB_DIGEST_LEN bytes */
    const uint8_t *sig;    /* FB_SIG_LEN bytes */
} fb_verify_item;

/* ok[i] is 1 if item i verified, 0 if not.  ok is valid only during the call. */
typedef void (*fb_batchver_done_fn)(void *arg, const uint8_t *ok, size_t n);
typedef void (*fb_batchver_wake_fn)(void *arg);

typedef struct fb_batchver_config {
    unsigned threads;         /* worker threads; 0 = number of online CPUs */
    size_t max_pending;       /* 0 = FB_BATCHVER_DEFAULT_MAX_PENDING */
    fb_sigcache *cache;       /* optional, owned by the caller */
    fb_batchver_wake_fn wake; /* required; called on a worker thread */
    void *wake_arg;
} fb_batchver_config;

typedef struct fb_batchver_stats {
    uint64_t jobs;          /* jobs accepted */
    uint64_t submitted;     /* signatures accepted */
    uint64_t cache_hits;    /* answered from the cache at submit */
    uint64_t verified;      /* checked by workers */
    uint64_t failed;        /* of those, invalid */
    uint64_t rejected_busy; /* signatures refused with FB_EBUSY */
    size_t pending;         /* signatures queued or in flight now */
    unsigned threads;
} fb_batchver_stats;

typedef struct fb_batchver fb_batchver;

int fb_batchver_new(const fb_batchver_config *cfg, fb_batchver **out);

/* Stops and joins the workers.  Jobs not yet delivered are dropped without
 * their callbacks. */
void fb_batchver_free(fb_batchver *bv);

/* Queue n triples (copied; the caller's buffers may be reused at once).
 * done(arg, ok, n) runs later from fb_batchver_poll, never from inside submit.
 * n == 0 is allowed.  FB_EBUSY if the pending bound would be exceeded. */
int fb_batchver_submit(fb_batchver *bv, const fb_verify_item *items, size_t n,
                       fb_batchver_done_fn done, void *arg);

/* Deliver finished jobs in submission order; returns how many were delivered. */
size_t fb_batchver_poll(fb_batchver *bv);

/* Block until every submitted job has finished, then deliver them (for tools
 * and shutdown, not for the event loop). */
void fb_batchver_drain(fb_batchver *bv);

void fb_batchver_get_stats(fb_batchver *bv, fb_batchver_stats *out);

#endif
