/* batchver.c - a fixed pool of threads that verifies submitted signature jobs.
 *
 * Jobs form one FIFO in submission order.  Workers claim chunks of the first
 * job that still has unclaimed signatures, so one large job spreads over every
 * worker while small jobs are not split needlessly.  The owner thread delivers
 * finished jobs from the head of the FIFO only, which keeps delivery in
 * submission order no matter which worker finished first.
 */
#include "batchver.h"

#include "fb_cpus.h"
#include "fb_error.h"
#include "sig.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TRIPLE_LEN (FB_PK_LEN + FB_DIGEST_LEN + FB_SIG_LEN)
#define CHUNK_MAX 32

typedef struct job {
    struct job *next;
    fb_batchver_done_fn done;
    void *arg;
    size_t total;     /* items submitted */
    size_t nmiss;     /* items the workers must verify */
    size_t claimed;   /* of nmiss, handed to a worker (guarded by mu) */
    size_t remaining; /* of nmiss, not yet verified (guarded by mu) */
    size_t chunk;
    uint8_t *ok;                    /* [total] results */
    uint32_t *miss_index;           /* [nmiss] position in ok[] of each triple */
    uint8_t (*triples)[TRIPLE_LEN]; /* [nmiss] pk || digest || sig */
} job;

struct fb_batchver {
    pthread_mutex_t mu;
    pthread_cond_t work_cv; /* workers wait here for unclaimed signatures */
    pthread_cond_t done_cv; /* drain waits here for completions */
    job *head, *tail;       /* undelivered jobs, in submission order */
    job *work;              /* first job with unclaimed signatures, or NULL */
    int stopping;
    size_t pending;
    size_t max_pending;
    fb_sigcache *cache;
    fb_batchver_wake_fn wake;
    void *wake_arg;
    unsigned nthreads;
    pthread_t *threads;
    fb_batchver_stats stats;
};

/* Advance bv->work past jobs whose signatures are all claimed.  Holds mu. */
static void advance_work(fb_batchver *bv)
{
    while (bv->work && bv->work->claimed == bv->work->nmiss)
        bv->work = bv->work->next;
}

static void *worker_main(void *p)
{
    fb_batchver *bv = p;
    pthread_mutex_lock(&bv->mu);
    for (;;) {
        advance_work(bv);
        while (!bv->stopping && !bv->work) {
            pthread_cond_wait(&bv->work_cv, &bv->mu);
            advance_work(bv);
        }
        if (bv->stopping)
            break;
        job *j = bv->work;
        size_t start = j->claimed;
        size_t end = start + j->chunk < j->nmiss ? start + j->chunk : j->nmiss;
        j->claimed = end;
        pthread_mutex_unlock(&bv->mu);

        size_t bad = 0;
        for (size_t i = start; i < end; i++) {
            const uint8_t *t = j->triples[i];
            int ok = fb_sig_verify(t, t + FB_PK_LEN, t + FB_PK_LEN + FB_DIGEST_LEN) == 0;
            j->ok[j->miss_index[i]] = (uint8_t)ok;
            bad += !ok;
        }

        pthread_mutex_lock(&bv->mu);
        bv->stats.verified += end - start;
        bv->stats.failed += bad;
        j->remaining -= end - start;
        if (j->remaining == 0) {
            pthread_cond_broadcast(&bv->done_cv);
            pthread_mutex_unlock(&bv->mu);
            bv->wake(bv->wake_arg);
            pthread_mutex_lock(&bv->mu);
        }
    }
    pthread_mutex_unlock(&bv->mu);
    return NULL;
}

static unsigned default_threads(void)
{
    return fb_usable_cpus(); /* a container's CPU limit, not the host's cores */
}

int fb_batchver_new(const fb_batchver_config *cfg, fb_batchver **out)
{
    if (!cfg || !cfg->wake || cfg->threads > FB_BATCHVER_MAX_THREADS)
        return FB_EINVAL;
    fb_batchver *bv = calloc(1, sizeof *bv);
    if (!bv)
        return FB_ENOMEM;
    bv->nthreads = cfg->threads ? cfg->threads : default_threads();
    if (bv->nthreads > FB_BATCHVER_MAX_THREADS)
        bv->nthreads = FB_BATCHVER_MAX_THREADS;
    bv->max_pending = cfg->max_pending ? cfg->max_pending : FB_BATCHVER_DEFAULT_MAX_PENDING;
    bv->cache = cfg->cache;
    bv->wake = cfg->wake;
    bv->wake_arg = cfg->wake_arg;
    bv->stats.threads = bv->nthreads;
    pthread_mutex_init(&bv->mu, NULL);
    pthread_cond_init(&bv->work_cv, NULL);
    pthread_cond_init(&bv->done_cv, NULL);
    bv->threads = calloc(bv->nthreads, sizeof *bv->threads);
    if (!bv->threads) {
        fb_batchver_free(bv);
        return FB_ENOMEM;
    }
    for (unsigned i = 0; i < bv->nthreads; i++) {
        if (pthread_create(&bv->threads[i], NULL, worker_main, bv) != 0) {
            bv->nthreads = i; /* join only the ones that started */
            fb_batchver_free(bv);
            return FB_ENOMEM;
        }
        /* Named, so that top -H, perf and `fedbft bench` can tell verifying
         * from the loop's own work. */
        char name[16];
        snprintf(name, sizeof name, "fb-verify%u", i % 1000u);
        pthread_setname_np(bv->threads[i], name);
    }
    *out = bv;
    return 0;
}

static void job_free(job *j)
{
    free(j);
}

void fb_batchver_free(fb_batchver *bv)
{
    if (!bv)
        return;
    pthread_mutex_lock(&bv->mu);
    bv->stopping = 1;
    pthread_cond_broadcast(&bv->work_cv);
    pthread_mutex_unlock(&bv->mu);
    for (unsigned i = 0; bv->threads && i < bv->nthreads; i++)
        pthread_join(bv->threads[i], NULL);
    while (bv->head) {
        job *j = bv->head;
        bv->head = j->next;
        job_free(j);
    }
    free(bv->threads);
    pthread_cond_destroy(&bv->done_cv);
    pthread_cond_destroy(&bv->work_cv);
    pthread_mutex_destroy(&bv->mu);
    free(bv);
}

/* One allocation per job: header, results, miss indexes, then the triples. */
static job *job_alloc(size_t n)
{
    size_t off_ok = sizeof(job);
    size_t off_idx = (off_ok + n + 7) & ~(size_t)7;
    size_t off_tri = off_idx + n * sizeof(uint32_t);
    uint8_t *mem = calloc(1, off_tri + n * TRIPLE_LEN);
    if (!mem)
        return NULL;
    job *j = (job *)mem;
    j->ok = mem + off_ok;
    j->miss_index = (uint32_t *)(mem + off_idx);
    j->triples = (uint8_t(*)[TRIPLE_LEN])(mem + off_tri);
    j->total = n;
    return j;
}

int fb_batchver_submit(fb_batchver *bv, const fb_verify_item *items, size_t n,
                       fb_batchver_done_fn done, void *arg)
{
    if (!done || (n > 0 && !items) || n > UINT32_MAX)
        return FB_EINVAL;
    /* pending is only decremented by the owner thread (poll), so reading it
     * here without the lock cannot over-admit. */
    if (bv->pending + n > bv->max_pending) {
        bv->stats.rejected_busy += n;
        return FB_EBUSY;
    }
    job *j = job_alloc(n);
    if (!j)
        return FB_ENOMEM;
    j->done = done;
    j->arg = arg;
    for (size_t i = 0; i < n; i++) {
        const fb_verify_item *it = &items[i];
        if (bv->cache && fb_sigcache_lookup(bv->cache, it->pk, it->digest, it->sig)) {
            j->ok[i] = 1;
            bv->stats.cache_hits++;
            continue;
        }
        uint8_t *t = j->triples[j->nmiss];
        memcpy(t, it->pk, FB_PK_LEN);
        memcpy(t + FB_PK_LEN, it->digest, FB_DIGEST_LEN);
        memcpy(t + FB_PK_LEN + FB_DIGEST_LEN, it->sig, FB_SIG_LEN);
        j->miss_index[j->nmiss++] = (uint32_t)i;
    }
    j->remaining = j->nmiss;
    /* Split across the pool, in chunks small enough to balance and large
     * enough that the lock is not taken per signature. */
    size_t per_thread = (j->nmiss + bv->nthreads - 1) / bv->nthreads;
    j->chunk = per_thread < 1 ? 1 : per_thread > CHUNK_MAX ? CHUNK_MAX : per_thread;

    pthread_mutex_lock(&bv->mu);
    if (bv->tail)
        bv->tail->next = j;
    else
        bv->head = j;
    bv->tail = j;
    if (!bv->work && j->nmiss > 0)
        bv->work = j;
    bv->pending += n;
    bv->stats.jobs++;
    bv->stats.submitted += n;
    /* Wake one worker per chunk to claim, no more: a lone signature (the
     * common case at low load) costs one worker's wake-up, not the pool's. */
    size_t chunks = (j->nmiss + j->chunk - 1) / j->chunk;
    for (size_t c = 0; c < chunks && c < bv->nthreads; c++)
        pthread_cond_signal(&bv->work_cv);
    pthread_mutex_unlock(&bv->mu);
    if (j->nmiss == 0)
        bv->wake(bv->wake_arg); /* answered from the cache; deliver on the next poll */
    return 0;
}

size_t fb_batchver_poll(fb_batchver *bv)
{
    size_t delivered = 0;
    for (;;) {
        pthread_mutex_lock(&bv->mu);
        job *j = bv->head;
        if (!j || j->remaining > 0) {
            pthread_mutex_unlock(&bv->mu);
            return delivered;
        }
        bv->head = j->next;
        if (!bv->head)
            bv->tail = NULL;
        if (bv->work == j)
            bv->work = j->next;
        bv->pending -= j->total;
        pthread_mutex_unlock(&bv->mu);

        if (bv->cache) {
            for (size_t i = 0; i < j->nmiss; i++) {
                const uint8_t *t = j->triples[i];
                if (j->ok[j->miss_index[i]])
                    fb_sigcache_insert(bv->cache, t, t + FB_PK_LEN, t + FB_PK_LEN + FB_DIGEST_LEN);
            }
        }
        j->done(j->arg, j->ok, j->total);
        job_free(j);
        delivered++;
    }
}

void fb_batchver_drain(fb_batchver *bv)
{
    pthread_mutex_lock(&bv->mu);
    for (;;) {
        int busy = 0;
        for (job *j = bv->head; j; j = j->next)
            busy |= j->remaining > 0;
        if (!busy)
            break;
        pthread_cond_wait(&bv->done_cv, &bv->mu);
    }
    pthread_mutex_unlock(&bv->mu);
    fb_batchver_poll(bv);
}

void fb_batchver_get_stats(fb_batchver *bv, fb_batchver_stats *out)
{
    pthread_mutex_lock(&bv->mu);
    *out = bv->stats;
    out->pending = bv->pending;
    pthread_mutex_unlock(&bv->mu);
}
