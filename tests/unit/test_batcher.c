/* test_batcher.c - the continuous batcher on the synthesized tiny model:
 * batched output equals each request run alone and a direct llm_decode +
 * sampler loop (greedy and seeded sampling, chunked prefill); the queue
 * limit, deadlines (queued and running), cancel, stop strings, EOS,
 * streaming, stats, refused submits and the threads' niceness.
 *
 * Events are awaited on a condition variable with a deadline, never by
 * sleeping.  To hold the batcher in a known state (a request running, others
 * queued) a test's callback waits on a gate the test opens: that blocks the
 * batcher thread, which the contract forbids in production callbacks but
 * which makes the states here deterministic. */
#include "batcher.h"
#include "fb_error.h"
#include "kernels.h"
#include "model.h"
#include "sampler.h"
#include "synth.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#define WAIT_MS 20000 /* longest wait for an event (ASan builds are slow) */
#define MAX_GEN 256
#define TEXT_CAP 65536

static char g_dir[] = "/tmp/test_batcher.XXXXXX";
static char g_path[64];
static llm_model *g_m;
static int g_vocab, g_ctx;

/* ---- time and waiting ---- */

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static struct timespec ts_at(double ms)
{
    struct timespec ts = {.tv_sec = (time_t)(ms / 1e3)};
    ts.tv_nsec = (long)((ms - (double)ts.tv_sec * 1e3) * 1e6);
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

/* Everything the callbacks record, under one lock. */
static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t g_cv;
static bool g_gate_open;

/* One request's events, copied in the callback. */
typedef struct rec {
    uint64_t id;
    batcher *b;
    int n_events;
    bool done, event_after_done;
    int32_t stream_tok[MAX_GEN];
    int n_stream;
    char stream_text[TEXT_CAP];
    size_t stream_len;
    int32_t tokens[MAX_GEN];
    int n_tokens, n_prompt;
    char text[TEXT_CAP];
    size_t text_len;
    char finish[16];
    int err;
    double queue_ms, prefill_ms, decode_ms;
    /* Hooks, run on the batcher thread at the k-th TOKEN event (k >= 1). */
    int gate_at; /* signal that it is there, then wait for g_gate_open */
    bool at_gate;
    int cancel_at; /* batcher_cancel(b, id) */
    int cancel_rc;
    int pause_at; /* wait until the clock passes pause_until */
    double pause_until;
    int nice_seen; /* the batcher thread's niceness, read in the callback */
} rec;

static void on_event(void *ud, const batcher_event *ev)
{
    rec *r = ud;
    pthread_mutex_lock(&g_mu);
    r->n_events++;
    if (r->done)
        r->event_after_done = true;
    errno = 0;
    r->nice_seen = getpriority(PRIO_PROCESS, (id_t)gettid());
    if (ev->kind == BATCHER_TOKEN) {
        if (r->n_stream < MAX_GEN)
            r->stream_tok[r->n_stream] = ev->token;
        r->n_stream++;
        if (r->stream_len + ev->piece_len <= TEXT_CAP) {
            memcpy(r->stream_text + r->stream_len, ev->piece, ev->piece_len);
            r->stream_len += ev->piece_len;
        }
        int k = r->n_stream;
        if (k == r->gate_at) {
            r->at_gate = true;
            pthread_cond_broadcast(&g_cv);
            while (!g_gate_open)
                pthread_cond_wait(&g_cv, &g_mu);
        }
        if (k == r->cancel_at) {
            pthread_mutex_unlock(&g_mu);
            int rc = batcher_cancel(r->b, ev->id);
            pthread_mutex_lock(&g_mu);
            r->cancel_rc = rc;
        }
        if (k == r->pause_at) {
            struct timespec ts = ts_at(r->pause_until);
            while (now_ms() < r->pause_until)
                pthread_cond_timedwait(&g_cv, &g_mu, &ts);
        }
    } else if (ev->kind == BATCHER_DONE) {
        r->done = true;
        r->n_tokens = ev->n_tokens;
        r->n_prompt = ev->n_prompt;
        if (ev->n_tokens <= MAX_GEN)
            memcpy(r->tokens, ev->tokens, (size_t)ev->n_tokens * sizeof *ev->tokens);
        r->text_len = ev->text_len;
        if (ev->text_len <= TEXT_CAP)
            memcpy(r->text, ev->text, ev->text_len);
        snprintf(r->finish, sizeof r->finish, "%s", ev->finish);
        r->err = ev->err;
        r->queue_ms = ev->queue_ms;
        r->prefill_ms = ev->prefill_ms;
        r->decode_ms = ev->decode_ms;
        pthread_cond_broadcast(&g_cv);
    }
    pthread_mutex_unlock(&g_mu);
}

/* Wait (with a deadline) until *flag is true. */
static void wait_flag(const bool *flag, const char *what)
{
    double until = now_ms() + WAIT_MS;
    struct timespec ts = ts_at(until);
    pthread_mutex_lock(&g_mu);
    while (!*flag && now_ms() < until)
        pthread_cond_timedwait(&g_cv, &g_mu, &ts);
    bool ok = *flag;
    pthread_mutex_unlock(&g_mu);
    if (!ok)
        fail_msg("timed out waiting for %s", what);
}

static void wait_done(rec *r)
{
    wait_flag(&r->done, "BATCHER_DONE");
}

static void gate(bool open)
{
    pthread_mutex_lock(&g_mu);
    g_gate_open = open;
    pthread_cond_broadcast(&g_cv);
    pthread_mutex_unlock(&g_mu);
}

/* ---- model, prompts and the reference ---- */

static int setup(void **state)
{
    (void)state;
    char err[512];
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&g_cv, &ca);
    pthread_condattr_destroy(&ca);
    if (!mkdtemp(g_dir))
        return -1;
    snprintf(g_path, sizeof g_path, "%s/tiny.gguf", g_dir);
    const synth_config *sc = synth_preset("tiny");
    if (!sc || synth_write(sc, KN_F32, SYNTH_DEFAULT_SEED, g_path, 0, NULL, err, sizeof err) != 0 ||
        llm_model_load(g_path, &g_m, err, sizeof err) != 0) {
        fprintf(stderr, "setup: %s\n", err);
        return -1;
    }
    g_vocab = llm_model_hparams(g_m)->n_vocab;
    g_ctx = llm_model_hparams(g_m)->n_ctx_train;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    llm_model_free(g_m);
    unlink(g_path);
    rmdir(g_dir);
    pthread_cond_destroy(&g_cv);
    return 0;
}

/* Prompt s of n tokens: BOS, then a deterministic pseudo-random list. */
static int make_prompt(int s, int n, int32_t *ids)
{
    uint32_t x = 4242u + (uint32_t)s * 7919u;
    ids[0] = tok_bos(llm_model_tok(g_m));
    for (int i = 1; i < n; i++) {
        x = x * 1103515245u + 12345u;
        ids[i] = 3 + (int32_t)((x >> 8) % (uint32_t)(g_vocab - 3));
    }
    return n;
}

typedef struct ref_out {
    int32_t tokens[MAX_GEN];
    int n_tokens;
    char text[TEXT_CAP];
    size_t text_len;
    bool eos;
} ref_out;

/* The reference: one slot, the whole prompt in one llm_decode, then one
 * token per call, sampled as the batcher does; EOS ends it (not kept). */
static void ref_run(const int32_t *prompt, int n_prompt, int max_tokens, const sampler_params *sp,
                    ref_out *out)
{
    char err[256];
    llm_ctx *c = NULL;
    llm_ctx_params p = {.n_slots = 1, .n_ctx = 0, .n_threads = 1, .path = -1, .max_tokens = 256};
    if (llm_ctx_new(g_m, &p, &c, err, sizeof err) != 0)
        fail_msg("llm_ctx_new: %s", err);
    sampler *smp = NULL;
    assert_int_equal(sampler_new(g_vocab, sp, &smp), 0);
    float *logits = malloc((size_t)g_vocab * sizeof *logits);
    assert_non_null(logits);
    memset(out, 0, sizeof *out);
    llm_seq q = {.slot = 0, .tokens = prompt, .n_tokens = n_prompt, .logits = logits};
    for (;;) {
        if (llm_decode(c, &q, 1, err, sizeof err) != 0)
            fail_msg("llm_decode: %s", err);
        int32_t id = sampler_next(smp, logits);
        if (id == tok_eos(llm_model_tok(g_m))) {
            out->eos = true;
            break;
        }
        out->tokens[out->n_tokens++] = id;
        size_t n = 0;
        assert_int_equal(tok_decode_piece(llm_model_tok(g_m), id, out->text + out->text_len,
                                          TEXT_CAP - out->text_len, &n),
                         0);
        out->text_len += n;
        if (out->n_tokens == max_tokens)
            break;
        q.tokens = &out->tokens[out->n_tokens - 1];
        q.n_tokens = 1;
    }
    free(logits);
    sampler_free(smp);
    llm_ctx_free(c);
}

static batcher *start(int max_batch, int max_queue, int delay_ms, int chunk, int threads)
{
    char err[256];
    batcher_config cfg;
    batcher_config_default(&cfg);
    cfg.max_batch = max_batch;
    cfg.max_queue = max_queue;
    cfg.max_queue_delay_ms = delay_ms;
    cfg.prefill_chunk = chunk;
    cfg.threads = threads;
    batcher *b = NULL;
    if (batcher_new(g_m, &cfg, &b, err, sizeof err) != 0)
        fail_msg("batcher_new: %s", err);
    return b;
}

static batcher_request request(const int32_t *prompt, int n_prompt, int max_tokens, rec *r)
{
    batcher_request q = {.prompt = prompt,
                         .n_prompt = n_prompt,
                         .max_tokens = max_tokens,
                         .sampling = {.temperature = 0},
                         .stream = true,
                         .cb = on_event,
                         .ud = r};
    return q;
}

static uint64_t submit(batcher *b, const batcher_request *q, rec *r)
{
    char err[256];
    uint64_t id = 0;
    r->b = b;
    int rc = batcher_submit(b, q, &id, err, sizeof err);
    if (rc != 0)
        fail_msg("batcher_submit: %s (%s)", err, fb_strerror(rc));
    pthread_mutex_lock(&g_mu);
    r->id = id;
    pthread_mutex_unlock(&g_mu);
    return id;
}

static rec *new_recs(int n)
{
    rec *r = calloc((size_t)n, sizeof *r);
    assert_non_null(r);
    return r;
}

/* r's events against the reference, and the streaming rules: one DONE,
 * last; TOKEN events concatenate to the tokens and the text. */
static void check_against(const rec *r, const ref_out *ref, const char *what, int i)
{
    if (r->n_tokens != ref->n_tokens ||
        memcmp(r->tokens, ref->tokens, (size_t)ref->n_tokens * sizeof *ref->tokens) != 0)
        fail_msg("%s: request %d: %d tokens differ from the reference's %d", what, i, r->n_tokens,
                 ref->n_tokens);
    if (r->text_len != ref->text_len || memcmp(r->text, ref->text, ref->text_len) != 0)
        fail_msg("%s: request %d: text differs from the reference", what, i);
    assert_string_equal(r->finish, ref->eos ? "stop" : "length");
    assert_false(r->event_after_done);
    assert_int_equal(r->n_events, r->n_stream + 1);
    assert_int_equal(r->n_stream, r->n_tokens);
    assert_memory_equal(r->stream_tok, r->tokens, (size_t)r->n_tokens * sizeof *r->tokens);
    assert_int_equal(r->stream_len, r->text_len);
    assert_memory_equal(r->stream_text, r->text, r->text_len);
}

/* ---- (1) batching correctness, and the figure max_batch 8 vs 1 ---- */

#define N_REQ 8

typedef struct req_spec {
    int32_t prompt[64];
    int n_prompt, max_tokens;
    sampler_params sp;
} req_spec;

static void make_specs(req_spec *s)
{
    for (int i = 0; i < N_REQ; i++) {
        s[i].n_prompt = make_prompt(i, 3 + 5 * i, s[i].prompt);
        s[i].max_tokens = 10 + 7 * i;
        if (i % 2)
            s[i].sp = (sampler_params){
                .temperature = 0.8f, .top_k = 40, .top_p = 0.95f, .seed = 1000u + (uint64_t)i};
        else
            s[i].sp = (sampler_params){.temperature = 0};
    }
}

/* Submit all specs at once to b; returns the wall time until the last DONE. */
static double run_all(batcher *b, const req_spec *s, rec *recs)
{
    double t0 = now_ms();
    for (int i = 0; i < N_REQ; i++) {
        batcher_request q = request(s[i].prompt, s[i].n_prompt, s[i].max_tokens, &recs[i]);
        q.sampling = s[i].sp;
        submit(b, &q, &recs[i]);
    }
    for (int i = 0; i < N_REQ; i++)
        wait_done(&recs[i]);
    return now_ms() - t0;
}

static void test_batching_matches_alone(void **state)
{
    (void)state;
    req_spec s[N_REQ];
    make_specs(s);
    ref_out *ref = malloc(N_REQ * sizeof *ref);
    assert_non_null(ref);
    int total = 0;
    for (int i = 0; i < N_REQ; i++) {
        ref_run(s[i].prompt, s[i].n_prompt, s[i].max_tokens, &s[i].sp, &ref[i]);
        total += ref[i].n_tokens;
    }

    /* Batched: a long queue delay so that all 8 start in the same step. */
    rec *batched = new_recs(N_REQ);
    batcher *b = start(N_REQ, 64, 1000, 64, 2);
    double ms8 = run_all(b, s, batched);
    batcher_stats st;
    batcher_get_stats(b, &st);
    batcher_free(b);
    assert_true(st.batch_hist[3] >= 1); /* steps of 5-8 sequences */
    for (int i = 0; i < N_REQ; i++)
        check_against(&batched[i], &ref[i], "max_batch 8", i);

    /* Alone: one slot, the requests queue and run one after the other. */
    rec *alone = new_recs(N_REQ);
    b = start(1, 64, 0, 64, 2);
    double ms1 = run_all(b, s, alone);
    batcher_get_stats(b, &st);
    batcher_free(b);
    assert_int_equal(st.batch_hist[0], st.steps);
    for (int i = 0; i < N_REQ; i++)
        check_against(&alone[i], &ref[i], "max_batch 1", i);

    print_message("8 concurrent requests, %d tokens: max_batch 8 %.1f ms (%.0f tokens/s), "
                  "max_batch 1 %.1f ms (%.0f tokens/s)\n",
                  total, ms8, total / (ms8 / 1e3), ms1, total / (ms1 / 1e3));
    free(batched);
    free(alone);
    free(ref);
}

/* ---- (2) chunked prefill ---- */

static void test_chunked_prefill(void **state)
{
    (void)state;
    int32_t longp[200], short1[8], short2[12];
    int nl = make_prompt(77, 150, longp), n1 = make_prompt(78, 8, short1),
        n2 = make_prompt(79, 12, short2);
    sampler_params greedy = {.temperature = 0},
                   hot = {.temperature = 1.0f, .top_k = 0, .top_p = 0.9f, .seed = 99};
    ref_out *ref = malloc(4 * sizeof *ref);
    assert_non_null(ref);
    ref_run(longp, nl, 40, &greedy, &ref[0]);
    ref_run(longp, nl, 40, &hot, &ref[1]);
    ref_run(short1, n1, 60, &greedy, &ref[2]);
    ref_run(short2, n2, 60, &hot, &ref[3]);

    /* Chunks of 4: the long prompts take ~38 steps to prefill while the short
     * requests decode alongside. */
    rec *r = new_recs(4);
    batcher *b = start(4, 64, 1000, 4, 2);
    batcher_request q[4] = {request(longp, nl, 40, &r[0]), request(longp, nl, 40, &r[1]),
                            request(short1, n1, 60, &r[2]), request(short2, n2, 60, &r[3])};
    q[1].sampling = hot;
    q[3].sampling = hot;
    for (int i = 0; i < 4; i++)
        submit(b, &q[i], &r[i]);
    for (int i = 0; i < 4; i++)
        wait_done(&r[i]);
    batcher_stats st;
    batcher_get_stats(b, &st);
    batcher_free(b);
    for (int i = 0; i < 4; i++)
        check_against(&r[i], &ref[i], "prefill_chunk 4", i);
    assert_true(st.steps >= (uint64_t)(nl + 3) / 4 + 39);
    assert_int_equal(st.prompt_tokens, (uint64_t)(2 * nl + n1 + n2));
    assert_true(r[0].prefill_ms > 0);
    free(r);
    free(ref);
}

/* ---- (3) queue full ---- */

static void test_queue_full(void **state)
{
    (void)state;
    int32_t p[16];
    int n = make_prompt(5, 16, p);
    rec *r = new_recs(4);
    batcher *b = start(1, 2, 0, 64, 1);
    gate(false);
    r[0].gate_at = 1;
    batcher_request q = request(p, n, 50, &r[0]);
    submit(b, &q, &r[0]);
    wait_flag(&r[0].at_gate, "the first request to run");
    /* The slot is taken: two more fill the queue, the fourth is refused. */
    q.ud = &r[1];
    submit(b, &q, &r[1]);
    q.ud = &r[2];
    submit(b, &q, &r[2]);
    q.ud = &r[3];
    char err[256] = "";
    uint64_t id = 0;
    assert_int_equal(batcher_submit(b, &q, &id, err, sizeof err), FB_EBUSY);
    assert_non_null(strstr(err, "inference queue full (2 waiting)"));
    batcher_stats st;
    batcher_get_stats(b, &st);
    assert_int_equal(st.queue_depth, 2);
    assert_int_equal(st.active_slots, 1);
    assert_int_equal(st.rejected_full, 1);
    assert_int_equal(st.submitted, 3);
    gate(true);
    for (int i = 0; i < 3; i++) {
        wait_done(&r[i]);
        assert_string_equal(r[i].finish, "length");
        assert_int_equal(r[i].n_tokens, 50);
    }
    /* FIFO: the second waited for the first, the third for both. */
    assert_true(r[2].queue_ms >= r[1].queue_ms);
    batcher_free(b);
    pthread_mutex_lock(&g_mu);
    assert_int_equal(r[3].n_events, 0);
    pthread_mutex_unlock(&g_mu);
    free(r);
}

/* ---- (4) deadlines ---- */

static void test_deadline_queued(void **state)
{
    (void)state;
    int32_t p[16];
    int n = make_prompt(6, 16, p);
    rec *r = new_recs(3);
    batcher *b = start(1, 8, 0, 64, 1);
    gate(false);
    r[0].gate_at = 2;
    batcher_request q = request(p, n, 30, &r[0]);
    submit(b, &q, &r[0]);
    wait_flag(&r[0].at_gate, "the first request to run");
    double dl = now_ms() + 30;
    q.ud = &r[1];
    q.deadline_ms = (int64_t)dl;
    submit(b, &q, &r[1]);
    q.ud = &r[2];
    q.deadline_ms = (int64_t)now_ms() + 60000;
    submit(b, &q, &r[2]);
    /* Let the clock pass r[1]'s deadline while it is still queued. */
    struct timespec ts = ts_at(dl + 1);
    pthread_mutex_lock(&g_mu);
    while (now_ms() < dl + 1)
        pthread_cond_timedwait(&g_cv, &g_mu, &ts);
    pthread_mutex_unlock(&g_mu);
    gate(true);
    for (int i = 0; i < 3; i++)
        wait_done(&r[i]);
    assert_string_equal(r[0].finish, "length");
    assert_string_equal(r[1].finish, "deadline");
    assert_int_equal(r[1].n_tokens, 0);
    assert_int_equal(r[1].n_events, 1);
    assert_true(r[1].queue_ms >= 29);
    assert_string_equal(r[2].finish, "length");
    batcher_stats st;
    batcher_get_stats(b, &st);
    assert_int_equal(st.deadline_expired, 1);
    assert_int_equal(st.completed, 2);
    batcher_free(b);
    free(r);
}

static void test_deadline_running(void **state)
{
    (void)state;
    int32_t p[10];
    int n = make_prompt(7, 10, p);
    sampler_params greedy = {.temperature = 0};
    ref_out *ref = malloc(sizeof *ref);
    assert_non_null(ref);
    ref_run(p, n, 100, &greedy, ref);
    rec *r = new_recs(1);
    batcher *b = start(2, 8, 0, 64, 1);
    batcher_request q = request(p, n, 100, &r[0]);
    double dl = now_ms() + 800; /* ample for 5 tokens of the tiny model */
    q.deadline_ms = (int64_t)dl;
    /* After its 5th token the callback waits past the deadline: the next
     * step boundary ends the request with those 5 tokens. */
    r[0].pause_at = 5;
    r[0].pause_until = dl + 1;
    submit(b, &q, &r[0]);
    wait_done(&r[0]);
    assert_string_equal(r[0].finish, "deadline");
    assert_int_equal(r[0].n_tokens, 5);
    assert_memory_equal(r[0].tokens, ref->tokens, 5 * sizeof(int32_t));
    assert_int_equal(r[0].n_stream, 5);
    assert_true(r[0].decode_ms > 0);
    batcher_stats st;
    batcher_get_stats(b, &st);
    assert_int_equal(st.deadline_expired, 1);
    assert_int_equal(st.active_slots, 0);
    batcher_free(b);
    free(r);
    free(ref);
}

/* ---- (5) cancel ---- */

static void test_cancel(void **state)
{
    (void)state;
    int32_t p[12];
    int n = make_prompt(8, 12, p);
    rec *r = new_recs(3);
    batcher *b = start(1, 8, 0, 64, 1);
    /* Running: cancelled from its own callback at the 3rd token. */
    r[0].cancel_at = 3;
    batcher_request q = request(p, n, 60, &r[0]);
    uint64_t id0 = submit(b, &q, &r[0]);
    wait_done(&r[0]);
    assert_int_equal(r[0].cancel_rc, 0);
    assert_string_equal(r[0].finish, "cancelled");
    assert_int_equal(r[0].n_tokens, 3);
    assert_int_equal(batcher_cancel(b, id0), FB_ENOENT);

    /* Queued: cancelled while the slot is held. */
    gate(false);
    r[1].gate_at = 1;
    q.ud = &r[1];
    submit(b, &q, &r[1]);
    wait_flag(&r[1].at_gate, "the second request to run");
    q.ud = &r[2];
    uint64_t id2 = submit(b, &q, &r[2]);
    assert_int_equal(batcher_cancel(b, id2), 0);
    assert_int_equal(batcher_cancel(b, 987654321), FB_ENOENT);
    gate(true);
    wait_done(&r[2]);
    wait_done(&r[1]);
    assert_string_equal(r[2].finish, "cancelled");
    assert_int_equal(r[2].n_tokens, 0);
    assert_int_equal(r[2].n_events, 1);
    assert_string_equal(r[1].finish, "length");
    assert_int_equal(batcher_cancel(b, id2), FB_ENOENT);
    batcher_stats st;
    batcher_get_stats(b, &st);
    assert_int_equal(st.cancelled, 2);
    assert_int_equal(st.completed, 1);
    batcher_free(b);
    free(r);
}

typedef struct free_arg {
    batcher *b;
} free_arg;

static void *free_thread(void *p)
{
    batcher_free(((free_arg *)p)->b);
    return NULL;
}

/* batcher_free ends the running and the queued requests with "cancelled". */
static void test_free_cancels(void **state)
{
    (void)state;
    int32_t p[12];
    int n = make_prompt(9, 12, p);
    rec *r = new_recs(3);
    batcher *b = start(1, 1, 0, 64, 1);
    gate(false);
    r[0].gate_at = 1;
    batcher_request q = request(p, n, 60, &r[0]);
    submit(b, &q, &r[0]);
    wait_flag(&r[0].at_gate, "the first request to run");
    q.ud = &r[1];
    submit(b, &q, &r[1]);
    free_arg fa = {b};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, free_thread, &fa), 0);
    /* The queue is full, so submit answers FB_EBUSY until batcher_free has
     * marked the batcher stopping, then FB_ESTATE (b stays valid until the
     * gate opens: the batcher thread is held in r[0]'s callback). */
    q.ud = &r[2];
    int rc = FB_EBUSY;
    double until = now_ms() + WAIT_MS;
    while (rc == FB_EBUSY && now_ms() < until) {
        uint64_t id;
        rc = batcher_submit(b, &q, &id, NULL, 0);
        if (rc == FB_EBUSY)
            sched_yield();
    }
    assert_int_equal(rc, FB_ESTATE);
    gate(true);
    pthread_join(t, NULL);
    assert_true(r[0].done && r[1].done);
    assert_string_equal(r[0].finish, "cancelled");
    assert_int_equal(r[0].n_tokens, 1);
    assert_string_equal(r[1].finish, "cancelled");
    assert_int_equal(r[1].n_tokens, 0);
    assert_int_equal(r[2].n_events, 0);
    free(r);
}

/* ---- (6) stop strings and EOS ---- */

static void test_stop_string(void **state)
{
    (void)state;
    int32_t p[20];
    int n = make_prompt(11, 20, p);
    sampler_params greedy = {.temperature = 0};
    ref_out *ref = malloc(sizeof *ref);
    assert_non_null(ref);
    ref_run(p, n, 80, &greedy, ref);
    /* A stop string from the middle of the text: 4 printable bytes. */
    size_t k = ref->text_len / 2, sl = 4;
    while (k + sl <= ref->text_len) {
        bool ok = true;
        for (size_t j = 0; j < sl; j++)
            ok = ok && ref->text[k + j] > ' ' && ref->text[k + j] < 0x7f;
        if (ok)
            break;
        k++;
    }
    assert_true(k + sl <= ref->text_len);
    char stop[8] = {0};
    memcpy(stop, ref->text + k, sl);
    size_t at = (size_t)((const char *)memmem(ref->text, ref->text_len, stop, sl) - ref->text);
    /* The tokens kept: up to the one whose text completes the stop string. */
    int want_tokens = 0;
    size_t len = 0;
    while (len < at + sl) {
        size_t pn;
        char piece[TOK_MAX_PIECE_LEN];
        assert_int_equal(tok_decode_piece(llm_model_tok(g_m), ref->tokens[want_tokens], piece,
                                          sizeof piece, &pn),
                         0);
        len += pn;
        want_tokens++;
    }

    rec *r = new_recs(1);
    batcher *b = start(2, 8, 0, 64, 1);
    batcher_request q = request(p, n, 80, &r[0]);
    q.stop[0] = "\x01never appears\x02";
    q.stop[2] = stop;
    submit(b, &q, &r[0]);
    wait_done(&r[0]);
    batcher_free(b);
    print_message("stop string \"%s\" at byte %zu of %zu, token %d of %d\n", stop, at,
                  ref->text_len, want_tokens, ref->n_tokens);
    assert_string_equal(r[0].finish, "stop");
    assert_int_equal(r[0].text_len, at);
    assert_memory_equal(r[0].text, ref->text, at);
    assert_int_equal(r[0].n_tokens, want_tokens);
    assert_memory_equal(r[0].tokens, ref->tokens, (size_t)want_tokens * sizeof(int32_t));
    /* The stream carried every kept token's whole piece, the stop string
     * included: the DONE text is its prefix. */
    assert_int_equal(r[0].n_stream, want_tokens);
    assert_true(r[0].stream_len >= at + sl);
    assert_memory_equal(r[0].stream_text, r[0].text, at);
    free(r);
    free(ref);
}

/* Find, with the reference loop, a prompt and seed whose sampled output
 * reaches EOS after at least one token; the batcher must end there with
 * finish "stop" and leave EOS out of tokens and text.  The model and the
 * sampler are deterministic, so the search always finds the same one. */
static void test_eos(void **state)
{
    (void)state;
    ref_out *ref = malloc(sizeof *ref);
    assert_non_null(ref);
    int32_t p[16];
    int n = 0, found = -1;
    sampler_params sp = {.temperature = 1.5f};
    for (int s = 0; s < 200 && found < 0; s++) {
        n = make_prompt(300 + s, 4 + s % 8, p);
        sp.seed = 5000u + (uint64_t)s;
        ref_run(p, n, 200, &sp, ref);
        if (ref->eos && ref->n_tokens >= 1)
            found = s;
    }
    if (found < 0)
        fail_msg("no prompt among 200 reaches EOS: cannot test EOS on this model");
    print_message("EOS after %d tokens (prompt %d, seed %llu)\n", ref->n_tokens, found,
                  (unsigned long long)sp.seed);
    rec *r = new_recs(1);
    batcher *b = start(2, 8, 0, 64, 1);
    batcher_request q = request(p, n, 200, &r[0]);
    q.sampling = sp;
    submit(b, &q, &r[0]);
    wait_done(&r[0]);
    batcher_free(b);
    check_against(&r[0], ref, "eos", 0);
    assert_string_equal(r[0].finish, "stop");
    assert_true(r[0].n_tokens < 200);
    for (int i = 0; i < r[0].n_tokens; i++)
        assert_int_not_equal(r[0].tokens[i], tok_eos(llm_model_tok(g_m)));
    free(r);
    free(ref);
}

/* ---- (7) streaming ---- */

static void test_streaming(void **state)
{
    (void)state;
    int32_t p[4][20];
    int n[4];
    rec *r = new_recs(4);
    batcher *b = start(4, 8, 5, 3, 2);
    for (int i = 0; i < 4; i++) {
        n[i] = make_prompt(40 + i, 5 + 4 * i, p[i]);
        batcher_request q = request(p[i], n[i], 20 + 10 * i, &r[i]);
        q.sampling = (sampler_params){.temperature = 0.7f, .seed = (uint64_t)i};
        q.stream = i != 3; /* the last one: DONE only */
        submit(b, &q, &r[i]);
    }
    for (int i = 0; i < 4; i++)
        wait_done(&r[i]);
    batcher_free(b);
    for (int i = 0; i < 3; i++) {
        assert_false(r[i].event_after_done);
        assert_int_equal(r[i].n_events, r[i].n_tokens + 1);
        assert_int_equal(r[i].n_stream, r[i].n_tokens);
        assert_memory_equal(r[i].stream_tok, r[i].tokens, (size_t)r[i].n_tokens * sizeof(int32_t));
        assert_int_equal(r[i].stream_len, r[i].text_len);
        assert_memory_equal(r[i].stream_text, r[i].text, r[i].text_len);
        assert_int_equal(r[i].n_prompt, n[i]);
    }
    assert_int_equal(r[3].n_events, 1);
    assert_int_equal(r[3].n_stream, 0);
    assert_true(r[3].n_tokens > 0);
    free(r);
}

/* ---- (8) stats, and the threads' niceness ---- */

/* The niceness of this process's threads named comm: -2000 if there is
 * none, -1000 if two differ. */
static int thread_nice(const char *comm)
{
    DIR *d = opendir("/proc/self/task");
    assert_non_null(d);
    int nice = -2000;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        char path[300], buf[512];
        snprintf(path, sizeof path, "/proc/self/task/%s/stat", e->d_name);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        size_t len = fread(buf, 1, sizeof buf - 1, f);
        fclose(f);
        buf[len] = '\0';
        /* pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt
         * majflt cmajflt utime stime cutime cstime priority nice */
        char *open = strchr(buf, '('), *close = strrchr(buf, ')');
        if (!open || !close || (size_t)(close - open - 1) != strlen(comm) ||
            strncmp(open + 1, comm, strlen(comm)) != 0)
            continue;
        int v = 0;
        char *s = close + 2;
        for (int field = 3; field < 19 && s; field++)
            s = strchr(s, ' ') ? strchr(s, ' ') + 1 : NULL;
        assert_non_null(s);
        v = atoi(s);
        nice = nice == -2000 || nice == v ? v : -1000;
    }
    closedir(d);
    return nice;
}

static void test_stats_and_nice(void **state)
{
    (void)state;
    errno = 0;
    int base = getpriority(PRIO_PROCESS, (id_t)gettid());
    assert_int_equal(errno, 0);
    int want_nice = base + 3 > 19 ? 19 : base + 3;

    char err[256];
    batcher_config cfg;
    batcher_config_default(&cfg);
    assert_int_equal(cfg.max_batch, 8);
    assert_int_equal(cfg.max_queue, 64);
    assert_int_equal(cfg.prefill_chunk, 64);
    assert_int_equal(cfg.nice, 5);
    cfg.max_queue_delay_ms = 1000;
    cfg.nice = 3;
    cfg.threads = 2;
    batcher *b = NULL;
    assert_int_equal(batcher_new(g_m, &cfg, &b, err, sizeof err), 0);
    assert_int_equal(batcher_get_config(b)->nice, 3);
    assert_int_equal(thread_nice("fb-batcher"), want_nice);
    assert_int_equal(thread_nice("fb-kn1"), want_nice); /* the pool inherited it */
    assert_int_equal(getpriority(PRIO_PROCESS, (id_t)gettid()), base);

    req_spec s[N_REQ];
    make_specs(s);
    rec *r = new_recs(N_REQ);
    run_all(b, s, r);
    batcher_stats st;
    batcher_get_stats(b, &st);
    batcher_free(b);

    uint64_t gen = 0, prompt = 0, hist = 0;
    for (int i = 0; i < N_REQ; i++) {
        gen += (uint64_t)r[i].n_tokens;
        prompt += (uint64_t)s[i].n_prompt;
        assert_int_equal(r[i].nice_seen, want_nice);
    }
    for (int i = 0; i < 9; i++)
        hist += st.batch_hist[i];
    assert_int_equal(st.submitted, N_REQ);
    assert_int_equal(st.completed, N_REQ);
    assert_int_equal(st.rejected_full + st.cancelled + st.deadline_expired, 0);
    assert_int_equal(st.queue_depth, 0);
    assert_int_equal(st.active_slots, 0);
    assert_int_equal(st.max_batch, 8);
    assert_int_equal(st.tokens_generated, gen);
    assert_int_equal(st.prompt_tokens, prompt);
    assert_int_equal(hist, st.steps);
    /* All 8 start together; the longest has 59 tokens, so 59 steps. */
    assert_int_equal(st.steps, (uint64_t)s[N_REQ - 1].max_tokens);
    assert_true(st.batch_hist[3] >= 1);
    assert_true(st.tokens_per_s > 0);
    print_message("stats: %llu steps, %llu tokens, hist 1:%llu 2:%llu 3-4:%llu 5-8:%llu\n",
                  (unsigned long long)st.steps, (unsigned long long)st.tokens_generated,
                  (unsigned long long)st.batch_hist[0], (unsigned long long)st.batch_hist[1],
                  (unsigned long long)st.batch_hist[2], (unsigned long long)st.batch_hist[3]);
    free(r);
}

/* ---- (9) refused submits and bad configs ---- */

static void expect_refused(batcher *b, const batcher_request *q, int code, const char *words)
{
    char err[256] = "";
    uint64_t id = 77;
    int rc = batcher_submit(b, q, &id, err, sizeof err);
    if (rc != code)
        fail_msg("submit returned %d (%s), wanted %d; err: %s", rc, fb_strerror(rc), code, err);
    if (!strstr(err, words))
        fail_msg("error \"%s\" does not say \"%s\"", err, words);
    assert_int_equal(id, 77);
}

static void test_refused(void **state)
{
    (void)state;
    char err[256];
    batcher_config cfg;
    batcher_config_default(&cfg);
    cfg.n_ctx = 64;
    cfg.max_tokens_limit = 40;
    cfg.threads = 1;
    batcher *b = NULL;
    assert_int_equal(batcher_new(g_m, &cfg, &b, err, sizeof err), 0);
    rec *r = new_recs(1);
    int32_t p[64];
    make_prompt(12, 64, p);
    batcher_request q = request(p, 8, 10, &r[0]);

    p[3] = g_vocab;
    expect_refused(b, &q, FB_EINVAL, "out of the vocabulary");
    p[3] = -1;
    expect_refused(b, &q, FB_EINVAL, "out of the vocabulary");
    p[3] = 5;
    q.n_prompt = 0;
    expect_refused(b, &q, FB_EINVAL, "empty prompt");
    q.n_prompt = 8;
    q.max_tokens = 0;
    expect_refused(b, &q, FB_EINVAL, "max_tokens");
    q.max_tokens = 41;
    expect_refused(b, &q, FB_ETOOBIG, "exceeds the limit of 40");
    q.max_tokens = 10;
    q.n_prompt = 55;
    expect_refused(b, &q, FB_ETOOBIG, "context of 64");
    q.n_prompt = 8;
    q.sampling.temperature = NAN;
    expect_refused(b, &q, FB_EINVAL, "sampling");
    q.sampling.temperature = 0;
    q.sampling.top_k = -1;
    expect_refused(b, &q, FB_EINVAL, "sampling");
    q.sampling.top_k = 0;
    q.stop[1] = "";
    expect_refused(b, &q, FB_EINVAL, "stop string 1");
    q.stop[1] = "0123456789012345678901234567890123456789012345678901234567890123456789";
    expect_refused(b, &q, FB_EINVAL, "stop string 1");
    q.stop[1] = NULL;
    q.cb = NULL;
    expect_refused(b, &q, FB_EINVAL, "callback");
    q.cb = on_event;

    batcher_stats st;
    batcher_get_stats(b, &st);
    assert_int_equal(st.submitted, 0);
    assert_int_equal(st.rejected_full, 0);

    /* At the limits: accepted. */
    q.n_prompt = 54;
    submit(b, &q, &r[0]);
    wait_done(&r[0]);
    assert_string_equal(r[0].finish, "length");
    assert_int_equal(r[0].n_tokens, 10);
    batcher_free(b);

    batcher_config bad = cfg;
    bad.max_batch = 0;
    assert_int_equal(batcher_new(g_m, &bad, &b, err, sizeof err), FB_EINVAL);
    assert_non_null(strstr(err, "max_batch"));
    bad = cfg;
    bad.prefill_chunk = 0;
    assert_int_equal(batcher_new(g_m, &bad, &b, err, sizeof err), FB_EINVAL);
    assert_non_null(strstr(err, "prefill_chunk"));
    bad = cfg;
    bad.max_batch = LLM_MAX_SLOTS + 1;
    assert_int_equal(batcher_new(g_m, &bad, &b, err, sizeof err), FB_EINVAL);
    free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_batching_matches_alone),
        cmocka_unit_test(test_chunked_prefill),
        cmocka_unit_test(test_queue_full),
        cmocka_unit_test(test_deadline_queued),
        cmocka_unit_test(test_deadline_running),
        cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_free_cancels),
        cmocka_unit_test(test_stop_string),
        cmocka_unit_test(test_eos),
        cmocka_unit_test(test_streaming),
        cmocka_unit_test(test_stats_and_nice),
        cmocka_unit_test(test_refused),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
