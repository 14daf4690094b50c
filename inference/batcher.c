/* batcher.c - the continuous batcher (contract in batcher.h): a bounded FIFO
 * of requests feeding a fixed set of llm_ctx slots, and one thread that steps
 * every active sequence through a single llm_decode call per step.
 *
 * Locking.  mu guards the queue, the slot table, the cancel flags, the
 * counters and the start/stop flags.  The batcher thread takes it at step
 * boundaries only: it never holds it during llm_decode, sampling or a
 * callback, so callbacks may call batcher_submit, batcher_cancel and
 * batcher_get_stats, and submitters never wait for a forward pass.  Only the
 * batcher thread writes the slot table (under mu), so it reads its own slots
 * without the lock.
 *
 * Lifetime of a request: batcher_submit validates and copies it (the sampler
 * is made there, so bad sampling parameters are refused at once) and queues
 * it; the thread admits it into a free slot, feeds its prompt in chunks, then
 * one token per step, and finally takes it out of the table under mu (after
 * which batcher_cancel answers FB_ENOENT), delivers BATCHER_DONE and frees
 * it.  A request ended while queued (cancel, deadline, stop) is taken out of
 * the queue the same way. */
#include "batcher.h"

#include "fb_error.h"

#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define RATE_WINDOW_S 10          /* tokens_per_s averages over this many seconds */
#define MAX_STEP_TOKENS (1 << 16) /* llm_ctx's limit on tokens per llm_decode */
#define NCTX_DEFAULT_CAP 2048     /* n_ctx 0: the model's, at most this */
#define TEXT_INITIAL 256          /* first size of a request's text buffer */

typedef struct breq {
    struct breq *next; /* queue, or a list of finished requests */
    uint64_t id;
    int32_t *prompt;
    int n_prompt, max_tokens;
    sampler *smp;
    char stop[BATCHER_MAX_STOP][BATCHER_MAX_STOP_LEN + 1];
    size_t stop_len[BATCHER_MAX_STOP];
    int n_stop;
    int64_t deadline_ms; /* 0: none */
    bool stream;
    batcher_event_fn cb;
    void *ud;
    bool cancel; /* batcher_cancel asked (guarded by mu) */
    /* Progress: the batcher thread only. */
    int slot;
    int n_fed;       /* prompt tokens decoded so far */
    int32_t *tokens; /* [max_tokens] generated, EOS excluded */
    int n_tokens;
    char *text; /* generated text, NUL-terminated */
    size_t text_len, text_cap, text_max;
    double t_submit, t_admit, t_prefilled;
    bool admitted, prefilled;
    const char *finish; /* set when the request has ended */
    int err;
    char errmsg[256];
} breq;

/* Requests waiting for their BATCHER_DONE, in the order they ended. */
typedef struct breq_list {
    breq *head, *tail;
} breq_list;

struct batcher {
    const llm_model *m;
    batcher_config cfg;
    int n_vocab;
    int32_t eos;
    int n_ctx;       /* positions per slot: fixed before batcher_new returns */
    int step_tokens; /* llm_decode budget per step */
    pthread_t thread;
    bool thread_started;

    pthread_mutex_t mu;
    pthread_cond_t cv;       /* the thread sleeps here: submit, cancel, stop */
    pthread_cond_t start_cv; /* batcher_new waits here for the thread's start */
    bool started;
    int start_rc;
    char start_err[256];
    bool stopping;
    breq *q_head, *q_tail;
    int q_len;
    breq **slots; /* [max_batch]: the running requests (written by the thread under mu) */
    int n_active;
    uint64_t next_id;
    batcher_stats st;
    int64_t rate_sec[RATE_WINDOW_S + 1]; /* per-second buckets of generated tokens */
    uint64_t rate_tok[RATE_WINDOW_S + 1];
    double t_start;

    /* The batcher thread only. */
    llm_ctx *ctx;
    float *logits; /* [max_batch][n_vocab] */
    llm_seq *seqs; /* [max_batch] */
    int *seq_fed;  /* [max_batch]: prompt tokens each sequence of a step feeds */
    char piece[TOK_MAX_PIECE_LEN];
};

static const char FINISH_STOP[] = "stop", FINISH_LENGTH[] = "length",
                  FINISH_DEADLINE[] = "deadline", FINISH_CANCELLED[] = "cancelled",
                  FINISH_ERROR[] = "error";

static double mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static struct timespec ms_to_ts(double ms)
{
    struct timespec ts;
    ts.tv_sec = (time_t)(ms / 1e3);
    ts.tv_nsec = (long)((ms - (double)ts.tv_sec * 1e3) * 1e6);
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    if (ts.tv_nsec < 0)
        ts.tv_nsec = 0;
    return ts;
}

void batcher_config_default(batcher_config *c)
{
    memset(c, 0, sizeof *c);
    c->max_batch = 8;
    c->max_queue = 64;
    c->max_queue_delay_ms = 5;
    c->prefill_chunk = 64;
    c->max_tokens_limit = 512;
    c->n_ctx = 0;
    c->threads = 2;
    c->nice = 5;
    c->sched_idle = true;
    c->kv_f32 = false;
}

static void req_free(breq *r)
{
    if (!r)
        return;
    sampler_free(r->smp);
    free(r->prompt);
    free(r->tokens);
    free(r->text);
    free(r);
}

static void list_push(breq_list *l, breq *r)
{
    r->next = NULL;
    if (l->tail)
        l->tail->next = r;
    else
        l->head = r;
    l->tail = r;
}

/* ---- counters (mu held) ---- */

static int hist_bucket(int n)
{
    int k = 0;
    while (k < 8 && (1 << k) < n)
        k++;
    return k; /* 1 -> 0, 2 -> 1, 3-4 -> 2, ..., 129+ -> 8 */
}

static void rate_add(batcher *b, double now, uint64_t n)
{
    int64_t sec = (int64_t)(now / 1e3);
    int i = (int)(sec % (RATE_WINDOW_S + 1));
    if (b->rate_sec[i] != sec) {
        b->rate_sec[i] = sec;
        b->rate_tok[i] = 0;
    }
    b->rate_tok[i] += n;
}

/* Tokens generated in the current second and the RATE_WINDOW_S - 1 before
 * it, over the time that window covers (shorter just after the start). */
static double rate_get(const batcher *b, double now)
{
    int64_t sec = (int64_t)(now / 1e3);
    uint64_t sum = 0;
    for (int i = 0; i <= RATE_WINDOW_S; i++)
        if (b->rate_sec[i] > sec - RATE_WINDOW_S && b->rate_sec[i] <= sec)
            sum += b->rate_tok[i];
    double from = (double)(sec - RATE_WINDOW_S + 1) * 1e3;
    if (from < b->t_start)
        from = b->t_start;
    double span = (now - from) / 1e3;
    return (double)sum / (span < 1.0 ? 1.0 : span);
}

/* Count how r ended. */
static void count_end_locked(batcher *b, const breq *r)
{
    if (r->finish == FINISH_DEADLINE)
        b->st.deadline_expired++;
    else if (r->finish == FINISH_CANCELLED)
        b->st.cancelled++;
    else
        b->st.completed++; /* stop, length, and the (internal) error end */
}

/* ---- events (the batcher thread, mu not held) ---- */

static void deliver_token(const breq *r, int32_t token, const char *piece, size_t len)
{
    batcher_event ev = {.kind = BATCHER_TOKEN,
                        .id = r->id,
                        .token = token,
                        .piece = piece,
                        .piece_len = len,
                        .n_prompt = r->n_prompt};
    r->cb(r->ud, &ev);
}

static void deliver_done(breq *r, double now)
{
    batcher_event ev = {.kind = BATCHER_DONE,
                        .id = r->id,
                        .tokens = r->tokens,
                        .n_tokens = r->n_tokens,
                        .text = r->text ? r->text : "",
                        .text_len = r->text_len,
                        .finish = r->finish,
                        .err = r->err,
                        .errmsg = r->err ? r->errmsg : NULL,
                        .n_prompt = r->n_prompt};
    ev.queue_ms = (r->admitted ? r->t_admit : now) - r->t_submit;
    if (r->admitted)
        ev.prefill_ms = (r->prefilled ? r->t_prefilled : now) - r->t_admit;
    if (r->prefilled)
        ev.decode_ms = now - r->t_prefilled;
    r->cb(r->ud, &ev);
}

/* Deliver BATCHER_DONE for each request of l, then free it. */
static void deliver_list(breq_list *l)
{
    double now = mono_ms();
    breq *r = l->head;
    while (r) {
        breq *next = r->next;
        deliver_done(r, now);
        req_free(r);
        r = next;
    }
    l->head = l->tail = NULL;
}

/* ---- the queue and the slots (mu held) ---- */

/* End queued request r (unlinked by the caller) or running request r. */
static void end_locked(batcher *b, breq *r, const char *finish, breq_list *done)
{
    r->finish = finish;
    if (r->admitted && b->slots[r->slot] == r) {
        b->slots[r->slot] = NULL;
        b->n_active--;
    }
    count_end_locked(b, r);
    list_push(done, r);
}

/* Why r must end now, if it must: a cancel, or its deadline. */
static const char *must_end(const breq *r, double now)
{
    if (r->cancel)
        return FINISH_CANCELLED;
    if (r->deadline_ms > 0 && now >= (double)r->deadline_ms)
        return FINISH_DEADLINE;
    return NULL;
}

/* End every queued and running request that was cancelled or whose deadline
 * has passed. */
static void sweep_locked(batcher *b, double now, breq_list *done)
{
    breq **pp = &b->q_head, *prev = NULL;
    while (*pp) {
        breq *r = *pp;
        const char *why = must_end(r, now);
        if (!why) {
            prev = r;
            pp = &r->next;
            continue;
        }
        *pp = r->next;
        if (b->q_tail == r)
            b->q_tail = prev;
        b->q_len--;
        end_locked(b, r, why, done);
    }
    for (int i = 0; i < b->cfg.max_batch; i++) {
        breq *r = b->slots[i];
        const char *why = r ? must_end(r, now) : NULL;
        if (why)
            end_locked(b, r, why, done);
    }
}

/* Stopping: everything ends "cancelled". */
static void end_all_locked(batcher *b, breq_list *done)
{
    while (b->q_head) {
        breq *r = b->q_head;
        b->q_head = r->next;
        b->q_len--;
        end_locked(b, r, FINISH_CANCELLED, done);
    }
    b->q_tail = NULL;
    for (int i = 0; i < b->cfg.max_batch; i++)
        if (b->slots[i])
            end_locked(b, b->slots[i], FINISH_CANCELLED, done);
}

/* Move queued requests into free slots, oldest first.  An idle batcher
 * holds a queue that cannot fill its slots until max_queue_delay_ms after
 * the oldest arrival, so that requests arriving together start together;
 * then *wake_at is when to look again (-1: no reason to). */
static void admit_locked(batcher *b, double now, double *wake_at)
{
    *wake_at = -1;
    int free_slots = b->cfg.max_batch - b->n_active;
    if (!b->q_head || free_slots == 0)
        return;
    if (b->n_active == 0 && b->q_len < free_slots) {
        double start_by = b->q_head->t_submit + b->cfg.max_queue_delay_ms;
        if (now < start_by) {
            *wake_at = start_by;
            for (breq *r = b->q_head; r; r = r->next)
                if (r->deadline_ms > 0 && (double)r->deadline_ms < *wake_at)
                    *wake_at = (double)r->deadline_ms;
            return;
        }
    }
    for (int i = 0; i < b->cfg.max_batch && b->q_head; i++) {
        if (b->slots[i])
            continue;
        breq *r = b->q_head;
        b->q_head = r->next;
        if (!b->q_head)
            b->q_tail = NULL;
        b->q_len--;
        r->next = NULL;
        r->slot = i;
        r->admitted = true;
        r->t_admit = now;
        llm_ctx_reset_slot(b->ctx, i);
        b->slots[i] = r;
        b->n_active++;
    }
}

/* ---- one step (the batcher thread, mu not held) ---- */

static void end_with_error(breq *r, int code, const char *msg)
{
    r->finish = FINISH_ERROR;
    r->err = code;
    snprintf(r->errmsg, sizeof r->errmsg, "%s", msg);
}

static int text_append(breq *r, const char *s, size_t n)
{
    if (r->text_len + n + 1 > r->text_cap) {
        size_t cap = r->text_cap ? r->text_cap : TEXT_INITIAL;
        while (cap < r->text_len + n + 1)
            cap *= 2;
        if (cap > r->text_max)
            cap = r->text_max;
        if (cap < r->text_len + n + 1)
            return FB_ETOOBIG; /* cannot happen: text_max fits max_tokens pieces */
        char *t = realloc(r->text, cap);
        if (!t)
            return FB_ENOMEM;
        r->text = t;
        r->text_cap = cap;
    }
    memcpy(r->text + r->text_len, s, n);
    r->text_len += n;
    r->text[r->text_len] = '\0';
    return 0;
}

/* Where the first stop string that ends within the last n_new bytes of the
 * text starts, or -1.  A stop string is searched for only where it can end
 * in the new bytes, since the request would have ended earlier otherwise. */
static long find_stop(const breq *r, size_t n_new)
{
    long best = -1;
    size_t old = r->text_len - n_new;
    for (int i = 0; i < r->n_stop; i++) {
        size_t sl = r->stop_len[i];
        size_t from = old >= sl - 1 ? old - (sl - 1) : 0;
        const char *hit = memmem(r->text + from, r->text_len - from, r->stop[i], sl);
        if (hit && (best < 0 || hit - r->text < best))
            best = hit - r->text;
    }
    return best;
}

/* r produced token id: record it, stream it, and check whether r ends.
 * Returns the number of tokens added to r (0 or 1). */
static int take_token(batcher *b, breq *r, int32_t id)
{
    if (id == b->eos) {
        r->finish = FINISH_STOP; /* EOS stays out of tokens and text */
        return 0;
    }
    r->tokens[r->n_tokens++] = id;
    size_t n = 0;
    if (tok_decode_piece(llm_model_tok(b->m), id, b->piece, sizeof b->piece, &n) != 0)
        n = 0; /* cannot happen: the id is in range and pieces fit TOK_MAX_PIECE_LEN */
    int rc = text_append(r, b->piece, n);
    if (rc != 0) {
        end_with_error(r, rc, "out of memory for the generated text");
        return 1;
    }
    if (r->stream)
        deliver_token(r, id, b->piece, n);
    long at = r->n_stop ? find_stop(r, n) : -1;
    if (at >= 0) {
        r->text_len = (size_t)at;
        r->text[at] = '\0';
        r->finish = FINISH_STOP;
    } else if (r->n_tokens == r->max_tokens) {
        r->finish = FINISH_LENGTH;
    }
    return 1;
}

/* Build one llm_decode call: one token for every decoding sequence first,
 * then up to prefill_chunk prompt tokens for each prefilling sequence within
 * the step's budget (which always leaves prefilling sequences at least one
 * token between them).  Returns the number of sequences. */
static int build_step(batcher *b, int *n_prompt_tok)
{
    int n = 0, budget = b->step_tokens;
    *n_prompt_tok = 0;
    for (int pass = 0; pass < 2; pass++) {
        for (int i = 0; i < b->cfg.max_batch; i++) {
            breq *r = b->slots[i];
            if (!r || (r->n_fed < r->n_prompt) != (pass == 1))
                continue;
            llm_seq *q = &b->seqs[n];
            *q = (llm_seq){.slot = i, .logits = NULL, .logits_all = false};
            if (pass == 0) {
                q->tokens = &r->tokens[r->n_tokens - 1];
                q->n_tokens = 1;
                b->seq_fed[n] = 0;
            } else {
                int len = r->n_prompt - r->n_fed;
                if (len > b->cfg.prefill_chunk)
                    len = b->cfg.prefill_chunk;
                if (len > budget)
                    len = budget;
                if (len == 0)
                    continue;
                q->tokens = r->prompt + r->n_fed;
                q->n_tokens = len;
                b->seq_fed[n] = len;
                *n_prompt_tok += len;
            }
            budget -= q->n_tokens;
            /* Logits only where a token is sampled: a decode step, or the
             * chunk that ends the prompt. */
            if (pass == 0 || r->n_fed + q->n_tokens == r->n_prompt)
                q->logits = b->logits + (size_t)n * (size_t)b->n_vocab;
            n++;
        }
    }
    return n;
}

static void step(batcher *b)
{
    char err[256];
    int n_prompt_tok;
    int n = build_step(b, &n_prompt_tok);
    if (n == 0)
        return;
    int rc = llm_decode(b->ctx, b->seqs, n, err, sizeof err);
    double now = mono_ms();
    uint64_t generated = 0;
    for (int k = 0; k < n; k++) {
        const llm_seq *q = &b->seqs[k];
        breq *r = b->slots[q->slot];
        if (rc != 0) {
            end_with_error(r, rc, err);
            continue;
        }
        r->n_fed += b->seq_fed[k];
        if (!q->logits)
            continue;
        if (!r->prefilled) {
            r->prefilled = true;
            r->t_prefilled = now;
        }
        generated += (uint64_t)take_token(b, r, sampler_next(r->smp, q->logits));
    }

    breq_list done = {0};
    pthread_mutex_lock(&b->mu);
    b->st.steps++;
    b->st.batch_hist[hist_bucket(n)]++;
    b->st.tokens_generated += generated;
    b->st.prompt_tokens += rc == 0 ? (uint64_t)n_prompt_tok : 0;
    rate_add(b, now, generated);
    for (int k = 0; k < n; k++) {
        breq *r = b->slots[b->seqs[k].slot];
        if (r && r->finish)
            end_locked(b, r, r->finish, &done);
    }
    pthread_mutex_unlock(&b->mu);
    deliver_list(&done);
}

/* ---- the thread ---- */

/* Lower this thread's priority by nice (Linux niceness is per thread, and
 * threads created afterwards - the kernel pool's workers - inherit it).
 * Raising niceness needs no privilege; should it fail anyway (EPERM/EACCES
 * under some sandbox or seccomp policy) inference runs at normal priority,
 * which changes nothing but scheduling, so the failure is not reported. */
static void lower_priority(int nice, bool idle)
{
    /* SCHED_IDLE: the thread runs only when no normal thread wants the CPU,
     * so consensus (event loop, verifier) always goes first; unprivileged
     * threads may choose it for themselves. */
    struct sched_param sp = {.sched_priority = 0};
    if (idle)
        (void)pthread_setschedparam(pthread_self(), SCHED_IDLE, &sp);
    if (nice <= 0)
        return;
    pid_t tid = gettid();
    errno = 0;
    int cur = getpriority(PRIO_PROCESS, (id_t)tid);
    if (cur == -1 && errno != 0)
        return;
    int want = cur + nice > 19 ? 19 : cur + nice;
    (void)setpriority(PRIO_PROCESS, (id_t)tid, want);
}

static void run(batcher *b)
{
    breq_list done = {0};
    pthread_mutex_lock(&b->mu);
    for (;;) {
        double now = mono_ms();
        if (b->stopping) {
            end_all_locked(b, &done);
            pthread_mutex_unlock(&b->mu);
            deliver_list(&done);
            return;
        }
        sweep_locked(b, now, &done);
        double wake_at;
        admit_locked(b, now, &wake_at);
        if (!done.head && b->n_active == 0) {
            if (wake_at < 0) {
                pthread_cond_wait(&b->cv, &b->mu);
            } else {
                struct timespec ts = ms_to_ts(wake_at);
                pthread_cond_timedwait(&b->cv, &b->mu, &ts);
            }
            continue;
        }
        pthread_mutex_unlock(&b->mu);
        deliver_list(&done);
        if (b->n_active > 0) /* written by this thread only */
            step(b);
        pthread_mutex_lock(&b->mu);
    }
}

static void *batcher_main(void *arg)
{
    batcher *b = arg;
    char err[256] = "";
    lower_priority(b->cfg.nice, b->cfg.sched_idle);
    llm_ctx_params p = {.n_slots = b->cfg.max_batch,
                        .n_ctx = b->n_ctx,
                        .n_threads = b->cfg.threads,
                        .path = -1,
                        .max_tokens = b->step_tokens,
                        .kv_f32 = b->cfg.kv_f32};
    int rc = llm_ctx_new(b->m, &p, &b->ctx, err, sizeof err);
    pthread_mutex_lock(&b->mu);
    b->started = true;
    b->start_rc = rc;
    if (rc != 0)
        snprintf(b->start_err, sizeof b->start_err, "%s", err);
    else
        b->n_ctx = llm_ctx_n_ctx(b->ctx);
    pthread_cond_broadcast(&b->start_cv);
    pthread_mutex_unlock(&b->mu);
    if (rc == 0)
        run(b);
    return NULL;
}

/* ---- the API ---- */

static int check_config(const batcher_config *c, char *err, size_t errlen)
{
#define CHECK_RANGE(field, lo, hi)                                                                 \
    do {                                                                                           \
        if (c->field < (lo) || c->field > (hi))                                                    \
            return fb_errf(err, errlen, FB_EINVAL, "batcher: " #field " must be %d..%d, not %d",   \
                           (int)(lo), (int)(hi), c->field);                                        \
    } while (0)
    CHECK_RANGE(max_batch, 1, LLM_MAX_SLOTS);
    CHECK_RANGE(max_queue, 1, 1 << 20);
    CHECK_RANGE(max_queue_delay_ms, 0, 60000);
    CHECK_RANGE(prefill_chunk, 1, MAX_STEP_TOKENS);
    CHECK_RANGE(max_tokens_limit, 1, 1 << 20);
    CHECK_RANGE(n_ctx, 0, 1 << 24);
    CHECK_RANGE(threads, 1, 256);
    CHECK_RANGE(nice, 0, 19);
#undef CHECK_RANGE
    return 0;
}

void batcher_free(batcher *b)
{
    if (!b)
        return;
    if (b->thread_started) {
        pthread_mutex_lock(&b->mu);
        b->stopping = true;
        pthread_cond_signal(&b->cv);
        pthread_mutex_unlock(&b->mu);
        pthread_join(b->thread, NULL);
    }
    /* The thread ended everything; what is left was never started. */
    while (b->q_head) {
        breq *r = b->q_head;
        b->q_head = r->next;
        req_free(r);
    }
    llm_ctx_free(b->ctx);
    pthread_cond_destroy(&b->cv);
    pthread_cond_destroy(&b->start_cv);
    pthread_mutex_destroy(&b->mu);
    free(b->slots);
    free(b->logits);
    free(b->seqs);
    free(b->seq_fed);
    free(b);
}

int batcher_new(const llm_model *m, const batcher_config *cfg, batcher **out, char *err,
                size_t errlen)
{
    if (!m || !cfg || !out)
        return fb_errf(err, errlen, FB_EINVAL, "batcher: no model or config");
    int rc = check_config(cfg, err, errlen);
    if (rc != 0)
        return rc;
    const llm_hparams *hp = llm_model_hparams(m);
    batcher *b = calloc(1, sizeof *b);
    if (!b)
        return fb_errf(err, errlen, FB_ENOMEM, "batcher: out of memory");
    b->m = m;
    b->cfg = *cfg;
    b->n_vocab = hp->n_vocab;
    b->eos = tok_eos(llm_model_tok(m));
    b->n_ctx = cfg->n_ctx
                   ? cfg->n_ctx
                   : (hp->n_ctx_train < NCTX_DEFAULT_CAP ? hp->n_ctx_train : NCTX_DEFAULT_CAP);
    /* Every slot prefilling a full chunk fits one step; past llm_ctx's limit
     * build_step shares the budget out instead. */
    long want = (long)cfg->max_batch * cfg->prefill_chunk;
    b->step_tokens = want > MAX_STEP_TOKENS ? MAX_STEP_TOKENS : (int)want;
    b->next_id = 1;
    b->t_start = mono_ms();
    for (int i = 0; i <= RATE_WINDOW_S; i++)
        b->rate_sec[i] = -1;
    pthread_mutex_init(&b->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&b->cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_cond_init(&b->start_cv, NULL);
    b->slots = calloc((size_t)cfg->max_batch, sizeof *b->slots);
    b->logits = malloc((size_t)cfg->max_batch * (size_t)hp->n_vocab * sizeof *b->logits);
    b->seqs = calloc((size_t)cfg->max_batch, sizeof *b->seqs);
    b->seq_fed = calloc((size_t)cfg->max_batch, sizeof *b->seq_fed);
    if (!b->slots || !b->logits || !b->seqs || !b->seq_fed) {
        batcher_free(b);
        return fb_errf(err, errlen, FB_ENOMEM, "batcher: out of memory for %d slots",
                       cfg->max_batch);
    }
    if (pthread_create(&b->thread, NULL, batcher_main, b) != 0) {
        batcher_free(b);
        return fb_errf(err, errlen, FB_ENOMEM, "batcher: cannot start its thread");
    }
    b->thread_started = true;
    pthread_setname_np(b->thread, "fb-batcher");
    pthread_mutex_lock(&b->mu);
    while (!b->started)
        pthread_cond_wait(&b->start_cv, &b->mu);
    rc = b->start_rc;
    pthread_mutex_unlock(&b->mu);
    if (rc != 0) {
        fb_errf(err, errlen, rc, "batcher: %s", b->start_err);
        batcher_free(b); /* the thread has returned; the join is immediate */
        return rc;
    }
    *out = b;
    return 0;
}

/* Validate r against the model and the limits (no lock needed: n_ctx and
 * the config are fixed once batcher_new returns). */
static int check_request(const batcher *b, const batcher_request *r, char *err, size_t errlen)
{
    if (!r->cb)
        return fb_errf(err, errlen, FB_EINVAL, "request has no callback");
    if (r->n_prompt < 1 || !r->prompt)
        return fb_errf(err, errlen, FB_EINVAL, "empty prompt: give at least one token");
    for (int i = 0; i < r->n_prompt; i++)
        if (r->prompt[i] < 0 || r->prompt[i] >= b->n_vocab)
            return fb_errf(err, errlen, FB_EINVAL,
                           "prompt token %d (at %d) is out of the vocabulary 0..%d", r->prompt[i],
                           i, b->n_vocab - 1);
    if (r->max_tokens < 1)
        return fb_errf(err, errlen, FB_EINVAL, "max_tokens must be at least 1, not %d",
                       r->max_tokens);
    if (r->max_tokens > b->cfg.max_tokens_limit)
        return fb_errf(err, errlen, FB_ETOOBIG, "max_tokens %d exceeds the limit of %d",
                       r->max_tokens, b->cfg.max_tokens_limit);
    if ((long)r->n_prompt + r->max_tokens > b->n_ctx)
        return fb_errf(err, errlen, FB_ETOOBIG,
                       "prompt of %d tokens plus max_tokens %d exceeds the context of %d "
                       "positions: shorten the prompt or ask for fewer tokens",
                       r->n_prompt, r->max_tokens, b->n_ctx);
    for (int i = 0; i < BATCHER_MAX_STOP; i++) {
        if (!r->stop[i])
            continue;
        size_t len = strlen(r->stop[i]);
        if (len == 0 || len > BATCHER_MAX_STOP_LEN)
            return fb_errf(err, errlen, FB_EINVAL, "stop string %d must be 1..%d bytes, not %zu", i,
                           BATCHER_MAX_STOP_LEN, len);
    }
    return 0;
}

/* A copy of r with its sampler, ready to queue. */
static int make_request(const batcher *b, const batcher_request *r, breq **out, char *err,
                        size_t errlen)
{
    breq *q = calloc(1, sizeof *q);
    if (!q)
        return fb_errf(err, errlen, FB_ENOMEM, "out of memory for the request");
    int rc = sampler_new(b->n_vocab, &r->sampling, &q->smp);
    if (rc != 0) {
        req_free(q);
        return rc == FB_EINVAL ? fb_errf(err, errlen, FB_EINVAL,
                                         "bad sampling parameters: temperature, top_k and "
                                         "top_p must be numbers, top_k and top_p not negative")
                               : fb_errf(err, errlen, rc, "out of memory for the sampler");
    }
    q->prompt = malloc((size_t)r->n_prompt * sizeof *q->prompt);
    q->tokens = malloc((size_t)r->max_tokens * sizeof *q->tokens);
    if (!q->prompt || !q->tokens) {
        req_free(q);
        return fb_errf(err, errlen, FB_ENOMEM, "out of memory for the request");
    }
    memcpy(q->prompt, r->prompt, (size_t)r->n_prompt * sizeof *q->prompt);
    q->n_prompt = r->n_prompt;
    q->max_tokens = r->max_tokens;
    for (int i = 0; i < BATCHER_MAX_STOP; i++) {
        if (!r->stop[i])
            continue;
        q->stop_len[q->n_stop] = strlen(r->stop[i]);
        memcpy(q->stop[q->n_stop], r->stop[i], q->stop_len[q->n_stop] + 1);
        q->n_stop++;
    }
    q->deadline_ms = r->deadline_ms;
    q->stream = r->stream;
    q->cb = r->cb;
    q->ud = r->ud;
    q->text_max = (size_t)r->max_tokens * TOK_MAX_PIECE_LEN + 1;
    *out = q;
    return 0;
}

/* FB_ESTATE or FB_EBUSY (counted) when r cannot be queued now. */
static int check_room_locked(batcher *b, char *err, size_t errlen)
{
    if (b->stopping)
        return fb_errf(err, errlen, FB_ESTATE, "the inference batcher is stopping");
    if (b->q_len >= b->cfg.max_queue) {
        b->st.rejected_full++;
        return fb_errf(err, errlen, FB_EBUSY, "inference queue full (%d waiting)", b->q_len);
    }
    return 0;
}

int batcher_submit(batcher *b, const batcher_request *r, uint64_t *id, char *err, size_t errlen)
{
    if (!b || !r || !id)
        return fb_errf(err, errlen, FB_EINVAL, "batcher_submit: missing argument");
    int rc = check_request(b, r, err, errlen);
    if (rc != 0)
        return rc;
    /* Refuse a full queue before allocating anything (the sampler's scratch
     * is n_vocab entries); checked again when queueing. */
    pthread_mutex_lock(&b->mu);
    rc = check_room_locked(b, err, errlen);
    pthread_mutex_unlock(&b->mu);
    if (rc != 0)
        return rc;
    breq *q = NULL;
    rc = make_request(b, r, &q, err, errlen);
    if (rc != 0)
        return rc;

    pthread_mutex_lock(&b->mu);
    rc = check_room_locked(b, err, errlen);
    if (rc != 0) {
        pthread_mutex_unlock(&b->mu);
        req_free(q);
        return rc;
    }
    q->id = b->next_id++;
    q->t_submit = mono_ms();
    if (b->q_tail)
        b->q_tail->next = q;
    else
        b->q_head = q;
    b->q_tail = q;
    b->q_len++;
    b->st.submitted++;
    *id = q->id;
    pthread_cond_signal(&b->cv);
    pthread_mutex_unlock(&b->mu);
    return 0;
}

int batcher_cancel(batcher *b, uint64_t id)
{
    int rc = FB_ENOENT;
    pthread_mutex_lock(&b->mu);
    breq *found = NULL;
    for (breq *r = b->q_head; r && !found; r = r->next)
        if (r->id == id)
            found = r;
    for (int i = 0; i < b->cfg.max_batch && !found; i++)
        if (b->slots[i] && b->slots[i]->id == id)
            found = b->slots[i];
    if (found) {
        found->cancel = true;
        pthread_cond_signal(&b->cv);
        rc = 0;
    }
    pthread_mutex_unlock(&b->mu);
    return rc;
}

void batcher_get_stats(batcher *b, batcher_stats *out)
{
    pthread_mutex_lock(&b->mu);
    *out = b->st;
    out->queue_depth = b->q_len;
    out->active_slots = b->n_active;
    out->max_batch = b->cfg.max_batch;
    out->tokens_per_s = rate_get(b, mono_ms());
    pthread_mutex_unlock(&b->mu);
}

const batcher_config *batcher_get_config(const batcher *b)
{
    return &b->cfg;
}
