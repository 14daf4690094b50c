/* test_sigcache.c - the verified-signature LRU: hits, misses, eviction, bounds. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "fb_error.h"
#include "sigcache.h"

#include <string.h>

typedef struct {
    uint8_t pk[FB_PK_LEN], digest[FB_DIGEST_LEN], sig[FB_SIG_LEN];
} triple;

static triple make(uint32_t n)
{
    triple t;
    memset(&t, 0, sizeof t);
    memcpy(t.pk, &n, sizeof n);
    memcpy(t.digest, &n, sizeof n);
    memcpy(t.sig, &n, sizeof n);
    return t;
}

static bool lookup(fb_sigcache *c, const triple *t)
{
    return fb_sigcache_lookup(c, t->pk, t->digest, t->sig);
}

static void insert(fb_sigcache *c, const triple *t)
{
    fb_sigcache_insert(c, t->pk, t->digest, t->sig);
}

static void test_hit_and_miss_counted(void **state)
{
    (void)state;
    fb_sigcache *c;
    fb_sigcache_stats st;
    assert_int_equal(fb_sigcache_new(8, &c), 0);
    triple a = make(1);
    assert_false(lookup(c, &a));
    insert(c, &a);
    assert_true(lookup(c, &a));
    assert_true(lookup(c, &a));
    fb_sigcache_get_stats(c, &st);
    assert_int_equal(st.hits, 2);
    assert_int_equal(st.misses, 1);
    assert_int_equal(st.inserts, 1);
    assert_int_equal(st.size, 1);
    assert_int_equal(st.capacity, 8);
    fb_sigcache_free(c);
}

/* Any one byte of the triple differing is a different signature. */
static void test_every_byte_matters(void **state)
{
    (void)state;
    fb_sigcache *c;
    assert_int_equal(fb_sigcache_new(4, &c), 0);
    triple a = make(5);
    insert(c, &a);
    for (size_t i = 0; i < sizeof a; i++) {
        triple b = a;
        ((uint8_t *)&b)[i] ^= 0x01;
        assert_false(lookup(c, &b));
    }
    assert_true(lookup(c, &a));
    fb_sigcache_free(c);
}

static void test_lru_eviction_order(void **state)
{
    (void)state;
    fb_sigcache *c;
    fb_sigcache_stats st;
    assert_int_equal(fb_sigcache_new(3, &c), 0);
    triple t[5];
    for (uint32_t i = 0; i < 5; i++)
        t[i] = make(i + 100);
    insert(c, &t[0]);
    insert(c, &t[1]);
    insert(c, &t[2]);
    assert_true(lookup(c, &t[0])); /* t0 now most recent; t1 is the oldest */
    insert(c, &t[3]);              /* evicts t1 */
    assert_false(lookup(c, &t[1]));
    assert_true(lookup(c, &t[0]));
    assert_true(lookup(c, &t[2]));
    assert_true(lookup(c, &t[3]));
    insert(c, &t[4]); /* recency is now t3, t2, t0: evicts t0 */
    assert_false(lookup(c, &t[0]));
    fb_sigcache_get_stats(c, &st);
    assert_int_equal(st.evictions, 2);
    assert_int_equal(st.size, 3);
    fb_sigcache_free(c);
}

static void test_reinsert_does_not_duplicate(void **state)
{
    (void)state;
    fb_sigcache *c;
    fb_sigcache_stats st;
    assert_int_equal(fb_sigcache_new(2, &c), 0);
    triple a = make(1), b = make(2);
    insert(c, &a);
    insert(c, &a);
    insert(c, &b);
    fb_sigcache_get_stats(c, &st);
    assert_int_equal(st.size, 2);
    assert_int_equal(st.evictions, 0);
    assert_true(lookup(c, &a));
    assert_true(lookup(c, &b));
    fb_sigcache_free(c);
}

/* Many more inserts than capacity: size never exceeds it and the newest
 * `capacity` entries are all present. */
static void test_bounded_under_churn(void **state)
{
    (void)state;
    enum { CAP = 1000, N = 20000 };
    fb_sigcache *c;
    fb_sigcache_stats st;
    assert_int_equal(fb_sigcache_new(CAP, &c), 0);
    for (uint32_t i = 0; i < N; i++) {
        triple t = make(i);
        insert(c, &t);
    }
    fb_sigcache_get_stats(c, &st);
    assert_int_equal(st.size, CAP);
    assert_int_equal(st.evictions, N - CAP);
    for (uint32_t i = N - CAP; i < N; i++) {
        triple t = make(i);
        assert_true(lookup(c, &t));
    }
    triple old = make(N - CAP - 1);
    assert_false(lookup(c, &old));
    fb_sigcache_free(c);
}

static void test_bad_capacity(void **state)
{
    (void)state;
    fb_sigcache *c = NULL;
    assert_int_equal(fb_sigcache_new(0, &c), FB_EINVAL);
    assert_null(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hit_and_miss_counted),
        cmocka_unit_test(test_every_byte_matters),
        cmocka_unit_test(test_lru_eviction_order),
        cmocka_unit_test(test_reinsert_does_not_duplicate),
        cmocka_unit_test(test_bounded_under_churn),
        cmocka_unit_test(test_bad_capacity),
    };
    if (fb_crypto_init() != 0)
        return 1;
    return cmocka_run_group_tests(tests, NULL, NULL);
}
