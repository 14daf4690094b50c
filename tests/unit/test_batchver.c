/* test_batchver.c - the batch verifier: same answers as one-by-one, delivery
 * order, completion through a real libuv loop (uv_async), cache, bounds. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "batchver.h"
#include "fb_error.h"
#include "sig.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#define NKEYS 4
#define DEADLINE_MS 60000

typedef struct {
    uint8_t digest[FB_DIGEST_LEN];
    uint8_t sig[FB_SIG_LEN];
    int key;
    int valid; /* expected answer, from fb_sig_verify */
} signed_item;

static fb_identity keys[NKEYS];

/* n signed digests; every third one is spoiled in a rotating way (bad
 * signature byte, wrong key, wrong digest), and the expected answer is taken
 * from one-by-one verification. */
static signed_item *make_items(size_t n)
{
    signed_item *v = calloc(n, sizeof *v);
    for (size_t i = 0; i < n; i++) {
        uint64_t x = i;
        fb_digest(FB_DOM_REQUEST, &x, sizeof x, v[i].digest);
        v[i].key = (int)(i % NKEYS);
        fb_sig_sign(&keys[v[i].key], v[i].digest, v[i].sig);
        if (i % 3 == 1) {
            switch ((i / 3) % 3) {
            case 0:
                v[i].sig[i % FB_SIG_LEN] ^= 0x20;
                break;
            case 1:
                v[i].key = (v[i].key + 1) % NKEYS;
                break;
            default:
                v[i].digest[0] ^= 1;
                break;
            }
        }
        v[i].valid = fb_sig_verify(keys[v[i].key].pk, v[i].digest, v[i].sig) == 0;
    }
    return v;
}

static void to_verify_items(const signed_item *v, size_t n, fb_verify_item *out)
{
    for (size_t i = 0; i < n; i++) {
        out[i].pk = keys[v[i].key].pk;
        out[i].digest = v[i].digest;
        out[i].sig = v[i].sig;
    }
}

/* ---- a libuv loop that receives completions */

typedef struct {
    uv_loop_t loop;
    uv_async_t async;
    uv_timer_t deadline;
    fb_batchver *bv;
    pthread_t loop_thread;
    size_t delivered, expected;
    int timed_out;
    int wrong_thread;
    /* per-job bookkeeping */
    size_t order[64];
    size_t norder;
} harness;

typedef struct {
    harness *h;
    size_t id;
    const signed_item *items;
    size_t n;
    int mismatches;
} job_ctx;

static void wake_cb(void *arg)
{
    uv_async_send(&((harness *)arg)->async);
}

static void async_cb(uv_async_t *a)
{
    harness *h = a->data;
    fb_batchver_poll(h->bv);
    if (h->delivered >= h->expected)
        uv_stop(&h->loop);
}

static void deadline_cb(uv_timer_t *t)
{
    harness *h = t->data;
    h->timed_out = 1;
    uv_stop(&h->loop);
}

static void done_cb(void *arg, const uint8_t *ok, size_t n)
{
    job_ctx *j = arg;
    if (!pthread_equal(pthread_self(), j->h->loop_thread))
        j->h->wrong_thread = 1;
    assert_int_equal(n, j->n);
    for (size_t i = 0; i < n; i++)
        j->mismatches += ok[i] != j->items[i].valid;
    if (j->h->norder < 64)
        j->h->order[j->h->norder++] = j->id;
    j->h->delivered++;
}

static void harness_init(harness *h, unsigned threads, fb_sigcache *cache, size_t max_pending)
{
    memset(h, 0, sizeof *h);
    assert_int_equal(uv_loop_init(&h->loop), 0);
    assert_int_equal(uv_async_init(&h->loop, &h->async, async_cb), 0);
    h->async.data = h;
    uv_timer_init(&h->loop, &h->deadline);
    h->deadline.data = h;
    h->loop_thread = pthread_self();
    fb_batchver_config cfg = {.threads = threads,
                              .max_pending = max_pending,
                              .cache = cache,
                              .wake = wake_cb,
                              .wake_arg = h};
    assert_int_equal(fb_batchver_new(&cfg, &h->bv), 0);
}

/* Run the loop until `expected` jobs were delivered, or fail at the deadline. */
static void harness_wait(harness *h, size_t expected)
{
    h->expected = expected;
    uv_timer_start(&h->deadline, deadline_cb, DEADLINE_MS, 0);
    if (h->delivered < expected)
        uv_run(&h->loop, UV_RUN_DEFAULT);
    uv_timer_stop(&h->deadline);
    assert_false(h->timed_out);
    assert_false(h->wrong_thread);
}

static void harness_close(harness *h)
{
    fb_batchver_free(h->bv);
    uv_close((uv_handle_t *)&h->async, NULL);
    uv_close((uv_handle_t *)&h->deadline, NULL);
    uv_run(&h->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&h->loop), 0);
}

static void run_one_batch(unsigned threads, size_t n)
{
    harness h;
    harness_init(&h, threads, NULL, 0);
    signed_item *items = make_items(n);
    fb_verify_item *vi = calloc(n ? n : 1, sizeof *vi);
    to_verify_items(items, n, vi);
    job_ctx j = {.h = &h, .items = items, .n = n};
    assert_int_equal(fb_batchver_submit(h.bv, vi, n, done_cb, &j), 0);
    memset(vi, 0, n * sizeof *vi); /* submit copied the triples */
    harness_wait(&h, 1);
    assert_int_equal(j.mismatches, 0);
    fb_batchver_stats st;
    fb_batchver_get_stats(h.bv, &st);
    assert_int_equal(st.verified, n);
    assert_int_equal(st.failed, n / 3 + (n % 3 == 2));
    assert_int_equal(st.pending, 0);
    harness_close(&h);
    free(vi);
    free(items);
}

static void test_same_answers_as_one_by_one(void **state)
{
    (void)state;
    unsigned threads[] = {1, 2, 4, 0};
    for (size_t i = 0; i < 4; i++) {
        run_one_batch(threads[i], 1000);
        run_one_batch(threads[i], 1);
        run_one_batch(threads[i], 0);
        run_one_batch(threads[i], 33);
    }
}

/* Jobs of very different sizes finish in any order on the workers but are
 * delivered in submission order. */
static void test_delivery_in_submission_order(void **state)
{
    (void)state;
    enum { NJOBS = 24 };
    harness h;
    harness_init(&h, 4, NULL, 0);
    signed_item *items = make_items(600);
    fb_verify_item vi[600];
    to_verify_items(items, 600, vi);
    job_ctx jobs[NJOBS];
    for (size_t k = 0; k < NJOBS; k++) {
        size_t n = (k % 3 == 0) ? 200 : (k % 3 == 1 ? 1 : 7);
        size_t off = (k * 13) % 400;
        jobs[k] = (job_ctx){.h = &h, .id = k, .items = items + off, .n = n};
        assert_int_equal(fb_batchver_submit(h.bv, vi + off, n, done_cb, &jobs[k]), 0);
    }
    harness_wait(&h, NJOBS);
    for (size_t k = 0; k < NJOBS; k++) {
        assert_int_equal(h.order[k], k);
        assert_int_equal(jobs[k].mismatches, 0);
    }
    harness_close(&h);
    free(items);
}

static void test_cache_spares_repeat_verification(void **state)
{
    (void)state;
    fb_sigcache *cache;
    assert_int_equal(fb_sigcache_new(1024, &cache), 0);
    harness h;
    harness_init(&h, 2, cache, 0);
    signed_item *items = make_items(300);
    fb_verify_item vi[300];
    to_verify_items(items, 300, vi);

    job_ctx first = {.h = &h, .id = 0, .items = items, .n = 300};
    assert_int_equal(fb_batchver_submit(h.bv, vi, 300, done_cb, &first), 0);
    harness_wait(&h, 1);
    /* the same triples again: valid ones come from the cache, invalid ones
     * are checked again (only successes are cached) */
    job_ctx second = {.h = &h, .id = 1, .items = items, .n = 300};
    assert_int_equal(fb_batchver_submit(h.bv, vi, 300, done_cb, &second), 0);
    harness_wait(&h, 2);
    assert_int_equal(first.mismatches, 0);
    assert_int_equal(second.mismatches, 0);

    fb_batchver_stats st;
    fb_sigcache_stats cs;
    fb_batchver_get_stats(h.bv, &st);
    fb_sigcache_get_stats(cache, &cs);
    assert_int_equal(st.cache_hits, 200);
    assert_int_equal(st.verified, 300 + 100);
    assert_int_equal(cs.size, 200);

    /* a job answered wholly from the cache is still delivered through poll */
    job_ctx third = {.h = &h, .id = 2, .items = items, .n = 1};
    assert_int_equal(fb_batchver_submit(h.bv, vi, 1, done_cb, &third), 0);
    assert_int_equal(h.delivered, 2); /* not from inside submit */
    harness_wait(&h, 3);
    assert_int_equal(third.mismatches, 0);
    harness_close(&h);
    fb_sigcache_free(cache);
    free(items);
}

static void test_bounded_pending(void **state)
{
    (void)state;
    harness h;
    harness_init(&h, 1, NULL, 100);
    signed_item *items = make_items(100);
    fb_verify_item vi[100];
    to_verify_items(items, 100, vi);
    job_ctx a = {.h = &h, .items = items, .n = 60};
    job_ctx b = {.h = &h, .items = items, .n = 40};
    job_ctx c = {.h = &h, .items = items, .n = 1};
    assert_int_equal(fb_batchver_submit(h.bv, vi, 60, done_cb, &a), 0);
    assert_int_equal(fb_batchver_submit(h.bv, vi, 41, done_cb, &b), FB_EBUSY);
    assert_int_equal(fb_batchver_submit(h.bv, vi, 40, done_cb, &b), 0);
    assert_int_equal(fb_batchver_submit(h.bv, vi, 1, done_cb, &c), FB_EBUSY);
    fb_batchver_stats st;
    fb_batchver_get_stats(h.bv, &st);
    assert_int_equal(st.rejected_busy, 42);
    assert_int_equal(st.pending, 100);
    harness_wait(&h, 2);
    /* capacity is back once delivered */
    assert_int_equal(fb_batchver_submit(h.bv, vi, 1, done_cb, &c), 0);
    harness_wait(&h, 3);
    assert_int_equal(a.mismatches + b.mismatches + c.mismatches, 0);
    harness_close(&h);
    free(items);
}

static void test_drain_and_free_with_pending(void **state)
{
    (void)state;
    harness h;
    harness_init(&h, 2, NULL, 0);
    signed_item *items = make_items(200);
    fb_verify_item vi[200];
    to_verify_items(items, 200, vi);
    job_ctx a = {.h = &h, .items = items, .n = 200};
    assert_int_equal(fb_batchver_submit(h.bv, vi, 200, done_cb, &a), 0);
    fb_batchver_drain(h.bv);
    assert_int_equal(h.delivered, 1);
    assert_int_equal(a.mismatches, 0);
    /* free with undelivered work must neither hang nor leak (ASan checks) */
    assert_int_equal(fb_batchver_submit(h.bv, vi, 200, done_cb, &a), 0);
    harness_close(&h);
    free(items);
}

static void test_bad_config(void **state)
{
    (void)state;
    fb_batchver *bv = NULL;
    fb_batchver_config cfg = {.threads = 2};
    assert_int_equal(fb_batchver_new(&cfg, &bv), FB_EINVAL); /* no wake */
    cfg.wake = wake_cb;
    cfg.threads = FB_BATCHVER_MAX_THREADS + 1;
    assert_int_equal(fb_batchver_new(&cfg, &bv), FB_EINVAL);
    assert_null(bv);
}

int main(void)
{
    if (fb_crypto_init() != 0)
        return 1;
    for (int i = 0; i < NKEYS; i++) {
        uint8_t seed[FB_SEED_LEN] = {(uint8_t)(i + 1)};
        fb_key_from_seed(seed, &keys[i]);
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_same_answers_as_one_by_one),
        cmocka_unit_test(test_delivery_in_submission_order),
        cmocka_unit_test(test_cache_spares_repeat_verification),
        cmocka_unit_test(test_bounded_pending),
        cmocka_unit_test(test_drain_and_free_with_pending),
        cmocka_unit_test(test_bad_config),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
