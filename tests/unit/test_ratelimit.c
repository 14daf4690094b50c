/* test_ratelimit.c - per-client token buckets: burst, refill, retry_after, bounds. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "fb_error.h"
#include "ratelimit.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static ratelimit *make(double rate, double burst, size_t max_clients)
{
    ratelimit *rl = NULL;
    assert_int_equal(ratelimit_new(rate, burst, max_clients, &rl), 0);
    return rl;
}

static ratelimit_stats stats_of(const ratelimit *rl)
{
    ratelimit_stats st;
    ratelimit_get_stats(rl, &st);
    return st;
}

static void test_new_validates(void **state)
{
    (void)state;
    ratelimit *rl = NULL;
    assert_int_equal(ratelimit_new(1.0, 0.5, 10, &rl), FB_EINVAL);
    assert_int_equal(ratelimit_new(1.0, 5, 0, &rl), FB_EINVAL);
    assert_int_equal(ratelimit_new(1.0, 5, RATELIMIT_MAX_CLIENTS_LIMIT + 1, &rl), FB_EINVAL);
    assert_int_equal(ratelimit_new(NAN, 5, 10, &rl), FB_EINVAL);
    assert_int_equal(ratelimit_new(INFINITY, 5, 10, &rl), FB_EINVAL);
    assert_int_equal(ratelimit_new(1.0, INFINITY, 10, &rl), FB_EINVAL);
    ratelimit_free(NULL);
}

static void test_burst_then_refusal(void **state)
{
    (void)state;
    ratelimit *rl = make(2.0, 3, 16);
    double retry = -1;
    for (int i = 0; i < 3; i++)
        assert_true(ratelimit_take(rl, "alice", 1000, &retry));
    assert_false(ratelimit_take(rl, "alice", 1000, &retry));
    assert_float_equal(retry, 0.5, 1e-9); /* one token at 2/s */
    assert_false(ratelimit_take(rl, "alice", 1000, NULL));
    ratelimit_stats st = stats_of(rl);
    assert_int_equal(st.allowed, 3);
    assert_int_equal(st.limited, 2);
    assert_int_equal(st.clients, 1);
    ratelimit_free(rl);
}

static void test_refill_and_retry_after(void **state)
{
    (void)state;
    ratelimit *rl = make(2.0, 3, 16);
    double retry = -1;
    for (int i = 0; i < 3; i++)
        assert_true(ratelimit_take(rl, "bob", 0, &retry));
    /* Half a token after 250 ms: 250 ms more to go. */
    assert_false(ratelimit_take(rl, "bob", 250, &retry));
    assert_float_equal(retry, 0.25, 1e-9);
    /* Retrying exactly when told succeeds. */
    assert_true(ratelimit_take(rl, "bob", 500, &retry));
    assert_false(ratelimit_take(rl, "bob", 500, &retry));
    assert_float_equal(retry, 0.5, 1e-9);
    /* A long idle refills to burst, never beyond. */
    for (int i = 0; i < 3; i++)
        assert_true(ratelimit_take(rl, "bob", 100000, &retry));
    assert_false(ratelimit_take(rl, "bob", 100000, &retry));
    /* A clock reading from the past credits nothing. */
    assert_false(ratelimit_take(rl, "bob", 50000, &retry));
    assert_float_equal(retry, 0.5, 1e-9);
    assert_false(ratelimit_take(rl, "bob", 100250, &retry));
    assert_float_equal(retry, 0.25, 1e-9);
    ratelimit_free(rl);
}

/* A rate that does not divide 1000 ms: retry_after is rounded up to whole ms and a
 * retry after exactly that long succeeds, over many rounds (no drift). */
static void test_retry_after_is_sufficient(void **state)
{
    (void)state;
    ratelimit *rl = make(3.0, 1, 16);
    uint64_t now = 7;
    assert_true(ratelimit_take(rl, "carol", now, NULL));
    for (int round = 0; round < 1000; round++) {
        double retry = 0;
        assert_false(ratelimit_take(rl, "carol", now, &retry));
        assert_true(retry > 0.33 && retry <= 0.334 + 1e-9);
        uint64_t wait = (uint64_t)(retry * 1000 + 0.5);
        if (wait > 1)
            assert_false(ratelimit_take(rl, "carol", now + wait - 1, &retry));
        now += wait;
        assert_true(ratelimit_take(rl, "carol", now, NULL));
    }
    /* 1000 tokens at 3/s took about 333.3 s, not more than a ms per round extra. */
    assert_true(now - 7 <= 334000);
    ratelimit_free(rl);
}

static void test_clients_independent(void **state)
{
    (void)state;
    ratelimit *rl = make(1.0, 2, 16);
    assert_true(ratelimit_take(rl, "a", 0, NULL));
    assert_true(ratelimit_take(rl, "a", 0, NULL));
    assert_false(ratelimit_take(rl, "a", 0, NULL));
    assert_true(ratelimit_take(rl, "b", 0, NULL));
    assert_true(ratelimit_take(rl, "b", 0, NULL));
    assert_false(ratelimit_take(rl, "b", 0, NULL));
    assert_true(ratelimit_take(rl, "10.0.0.1:5000", 0, NULL));
    /* NULL is the client "". */
    assert_true(ratelimit_take(rl, NULL, 0, NULL));
    assert_true(ratelimit_take(rl, "", 0, NULL));
    assert_false(ratelimit_take(rl, NULL, 0, NULL));
    assert_int_equal(stats_of(rl).clients, 4);
    ratelimit_free(rl);
}

static void test_long_names_share_prefix_bucket(void **state)
{
    (void)state;
    ratelimit *rl = make(1.0, 1, 16);
    char a[300], b[300];
    memset(a, 'k', sizeof a - 1);
    a[sizeof a - 1] = 0;
    memcpy(b, a, sizeof b);
    b[RATELIMIT_CLIENT_MAX] = 'x'; /* differs only beyond the compared prefix */
    assert_true(ratelimit_take(rl, a, 0, NULL));
    assert_false(ratelimit_take(rl, b, 0, NULL));
    b[RATELIMIT_CLIENT_MAX - 1] = 'x'; /* differs within it */
    assert_true(ratelimit_take(rl, b, 0, NULL));
    ratelimit_free(rl);
}

static void test_unlimited(void **state)
{
    (void)state;
    ratelimit *rl = make(0, 0, 0);
    for (int i = 0; i < 10000; i++)
        assert_true(ratelimit_take(rl, "flood", 0, NULL));
    ratelimit_stats st = stats_of(rl);
    assert_int_equal(st.allowed, 10000);
    assert_int_equal(st.limited, 0);
    assert_int_equal(st.clients, 0);
    ratelimit_free(rl);
    rl = make(-1, 0, 0);
    assert_true(ratelimit_take(rl, "x", 0, NULL));
    ratelimit_free(rl);
}

static void test_table_bound_and_eviction(void **state)
{
    (void)state;
    ratelimit *rl = make(1.0, 1, 3);
    char name[32];
    assert_true(ratelimit_take(rl, "c0", 0, NULL));
    assert_true(ratelimit_take(rl, "c1", 0, NULL));
    assert_true(ratelimit_take(rl, "c2", 0, NULL));
    assert_false(ratelimit_take(rl, "c0", 0, NULL)); /* c0 becomes most recent */
    /* c3 evicts c1, the least recently used, whose bucket is still empty. */
    assert_true(ratelimit_take(rl, "c3", 0, NULL));
    ratelimit_stats st = stats_of(rl);
    assert_int_equal(st.clients, 3);
    assert_int_equal(st.evictions, 1);
    assert_int_equal(st.evictions_early, 1);
    assert_false(ratelimit_take(rl, "c0", 0, NULL)); /* kept: still drained */
    assert_false(ratelimit_take(rl, "c3", 0, NULL));
    /* The documented cost of an early eviction: c1 comes back with a full bucket
     * (evicting c2, which has not refilled either). */
    assert_true(ratelimit_take(rl, "c1", 0, NULL));
    assert_int_equal(stats_of(rl).evictions_early, 2);

    /* Once buckets have refilled, eviction is harmless and counted as such. */
    for (int i = 0; i < 100; i++) {
        snprintf(name, sizeof name, "n%d", i);
        assert_true(ratelimit_take(rl, name, 10000 + (uint64_t)i * 1000, NULL));
    }
    st = stats_of(rl);
    assert_int_equal(st.clients, 3);
    assert_int_equal(st.max_clients, 3);
    assert_int_equal(st.evictions, 102);
    assert_int_equal(st.evictions_early, 2);
    ratelimit_free(rl);
}

/* Many clients churning through a small table: the structure stays consistent. */
static void test_churn(void **state)
{
    (void)state;
    ratelimit *rl = make(10.0, 5, 64);
    char name[32];
    uint64_t allowed = 0, limited = 0;
    for (uint32_t i = 0; i < 20000; i++) {
        snprintf(name, sizeof name, "client-%u", (i * 2654435761u) % 200);
        if (ratelimit_take(rl, name, i / 4, NULL))
            allowed++;
        else
            limited++;
    }
    ratelimit_stats st = stats_of(rl);
    assert_int_equal(st.allowed, allowed);
    assert_int_equal(st.limited, limited);
    assert_int_equal(st.clients, 64);
    assert_true(st.evictions > 0);
    ratelimit_free(rl);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_new_validates),
        cmocka_unit_test(test_burst_then_refusal),
        cmocka_unit_test(test_refill_and_retry_after),
        cmocka_unit_test(test_retry_after_is_sufficient),
        cmocka_unit_test(test_clients_independent),
        cmocka_unit_test(test_long_names_share_prefix_bucket),
        cmocka_unit_test(test_unlimited),
        cmocka_unit_test(test_table_bound_and_eviction),
        cmocka_unit_test(test_churn),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
