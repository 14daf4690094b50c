/* test_rcache.c - response cache: keys, hits, TTL, LRU bounds, single-flight, reentrancy. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "fb_error.h"
#include "rcache.h"

#include <string.h>

/* ---- helpers ---- */

static rcache_key key_n(uint32_t n)
{
    rcache_key k;
    memset(&k, 0, sizeof k);
    memcpy(k.b, &n, sizeof n);
    k.b[15] = 0xa5;
    return k;
}

static rcache *make_cache(size_t max_entries, size_t max_bytes, uint64_t ttl_ms,
                          size_t max_inflight, size_t max_waiters)
{
    rcache_config cfg = {
        .max_entries = max_entries,
        .max_bytes = max_bytes,
        .ttl_ms = ttl_ms,
        .max_inflight = max_inflight,
        .max_waiters_per_key = max_waiters,
    };
    rcache *c = NULL;
    assert_int_equal(rcache_new(&cfg, &c), 0);
    return c;
}

static rcache_stats stats_of(const rcache *c)
{
    rcache_stats st;
    rcache_get_stats(c, &st);
    return st;
}

/* What a follower's callback saw. */
typedef struct seen {
    int calls;
    int err;
    size_t len;
    uint8_t value[256];
} seen;

static void record_cb(void *ud, const uint8_t *value, size_t len, int err)
{
    seen *s = ud;
    s->calls++;
    s->err = err;
    s->len = len;
    if (value && len <= sizeof s->value)
        memcpy(s->value, value, len);
}

static int lookup(rcache *c, const rcache_key *k, uint64_t now, seen *s, rcache_waiter *w)
{
    const uint8_t *v = NULL;
    size_t len = 0;
    rcache_waiter dummy;
    return rcache_lookup(c, k, now, record_cb, s, w ? w : &dummy, &v, &len);
}

/* Lead and complete key k with a value of len bytes filled with fill. */
static void put(rcache *c, uint32_t k, size_t len, uint8_t fill, uint64_t now)
{
    uint8_t buf[512];
    assert_true(len <= sizeof buf);
    memset(buf, fill, len);
    rcache_key key = key_n(k);
    assert_int_equal(lookup(c, &key, now, NULL, NULL), RCACHE_LEADER);
    assert_int_equal(rcache_complete(c, &key, buf, len, now), 0);
}

static bool is_hit(rcache *c, uint32_t k, uint64_t now)
{
    rcache_key key = key_n(k);
    int rc = lookup(c, &key, now, NULL, NULL);
    if (rc == RCACHE_LEADER)
        assert_int_equal(rcache_abandon(c, &key, FB_EIO), 0);
    return rc == RCACHE_HIT;
}

/* ---- configuration ---- */

static void test_config_bounds(void **state)
{
    (void)state;
    rcache_config cfg;
    rcache *c = NULL;
    rcache_config_default(&cfg);
    assert_int_equal(rcache_new(&cfg, &c), 0);
    rcache_free(c);
    rcache_config bad = cfg;
    bad.max_entries = 0;
    assert_int_equal(rcache_new(&bad, &c), FB_EINVAL);
    bad = cfg;
    bad.max_bytes = 0;
    assert_int_equal(rcache_new(&bad, &c), FB_EINVAL);
    bad = cfg;
    bad.max_inflight = 0;
    assert_int_equal(rcache_new(&bad, &c), FB_EINVAL);
    bad = cfg;
    bad.max_waiters_per_key = 0;
    assert_int_equal(rcache_new(&bad, &c), FB_EINVAL);
    bad = cfg;
    bad.max_entries = RCACHE_MAX_ENTRIES_LIMIT + 1;
    assert_int_equal(rcache_new(&bad, &c), FB_EINVAL);
    bad = cfg;
    bad.max_inflight = RCACHE_MAX_INFLIGHT_LIMIT;
    bad.max_waiters_per_key = RCACHE_MAX_WAITERS_LIMIT;
    assert_int_equal(rcache_new(&bad, &c), FB_EINVAL);
    rcache_free(NULL);
}

/* ---- basic cache behaviour ---- */

static void test_hit_and_miss(void **state)
{
    (void)state;
    rcache *c = make_cache(16, 1 << 20, 0, 4, 4);
    rcache_key k = key_n(1);
    const uint8_t *v;
    size_t len;
    rcache_waiter w = 99;
    assert_int_equal(rcache_lookup(c, &k, 0, record_cb, NULL, &w, &v, &len), RCACHE_LEADER);
    assert_int_equal(w, RCACHE_WAITER_NONE);
    assert_int_equal(stats_of(c).inflight, 1);
    assert_int_equal(rcache_complete(c, &k, (const uint8_t *)"hello", 5, 0), 0);
    assert_int_equal(rcache_lookup(c, &k, 1, record_cb, NULL, &w, &v, &len), RCACHE_HIT);
    assert_int_equal(len, 5);
    assert_memory_equal(v, "hello", 5);
    assert_int_equal(rcache_lookup(c, &k, 2, record_cb, NULL, &w, &v, &len), RCACHE_HIT);

    /* An empty response is a value too. */
    rcache_key k2 = key_n(2);
    assert_int_equal(lookup(c, &k2, 3, NULL, NULL), RCACHE_LEADER);
    assert_int_equal(rcache_complete(c, &k2, NULL, 0, 3), 0);
    assert_int_equal(rcache_lookup(c, &k2, 4, record_cb, NULL, &w, &v, &len), RCACHE_HIT);
    assert_int_equal(len, 0);

    rcache_stats st = stats_of(c);
    assert_int_equal(st.hits, 3);
    assert_int_equal(st.misses, 2);
    assert_int_equal(st.entries, 2);
    assert_int_equal(st.bytes, rcache_entry_cost(5) + rcache_entry_cost(0));
    assert_int_equal(st.inflight, 0);
    assert_int_equal(st.coalesced, 0);
    assert_int_equal(rcache_complete(c, &k, NULL, 3, 5), FB_EINVAL);
    assert_int_equal(rcache_lookup(c, &k, 5, NULL, NULL, &w, &v, &len), FB_EINVAL);
    rcache_free(c);
}

static void test_ttl_expiry(void **state)
{
    (void)state;
    rcache *c = make_cache(16, 1 << 20, 1000, 4, 4);
    put(c, 1, 10, 'a', 5000);
    assert_true(is_hit(c, 1, 5000));
    assert_true(is_hit(c, 1, 5999));  /* hits do not extend the TTL ... */
    assert_false(is_hit(c, 1, 6000)); /* ... which ends 1000 ms after the store */
    rcache_stats st = stats_of(c);
    assert_int_equal(st.expirations, 1);
    assert_int_equal(st.entries, 0);
    assert_int_equal(st.bytes, 0);
    assert_int_equal(st.evictions, 0);

    /* An expired entry at the LRU tail makes room as an expiration, not an eviction. */
    rcache_free(c);
    c = make_cache(2, 1 << 20, 1000, 4, 4);
    put(c, 1, 10, 'a', 0);
    put(c, 2, 10, 'b', 900);
    put(c, 3, 10, 'c', 1500); /* evicts key 1, expired at 1000 */
    st = stats_of(c);
    assert_int_equal(st.expirations, 1);
    assert_int_equal(st.evictions, 0);
    assert_int_equal(st.entries, 2);
    rcache_free(c);
}

static void test_lru_by_entries(void **state)
{
    (void)state;
    rcache *c = make_cache(3, 1 << 20, 0, 4, 4);
    put(c, 1, 10, 'a', 0);
    put(c, 2, 10, 'b', 1);
    put(c, 3, 10, 'c', 2);
    assert_true(is_hit(c, 1, 3)); /* 1 becomes most recent: 2 is now the oldest */
    put(c, 4, 10, 'd', 4);
    rcache_stats st = stats_of(c);
    assert_int_equal(st.entries, 3);
    assert_int_equal(st.evictions, 1);
    assert_true(is_hit(c, 1, 5));
    assert_true(is_hit(c, 3, 5));
    assert_true(is_hit(c, 4, 5));
    assert_false(is_hit(c, 2, 5));
    rcache_free(c);
}

static void test_lru_by_bytes(void **state)
{
    (void)state;
    size_t max = 3 * rcache_entry_cost(100);
    rcache *c = make_cache(100, max, 0, 4, 4);
    put(c, 1, 100, 'a', 0);
    put(c, 2, 100, 'b', 1);
    put(c, 3, 100, 'c', 2);
    rcache_stats st = stats_of(c);
    assert_int_equal(st.bytes, max);
    assert_int_equal(st.evictions, 0);
    /* 150 bytes do not fit after dropping one 100-byte entry, so two go. */
    put(c, 4, 150, 'd', 3);
    st = stats_of(c);
    assert_int_equal(st.evictions, 2);
    assert_int_equal(st.entries, 2);
    assert_int_equal(st.bytes, rcache_entry_cost(100) + rcache_entry_cost(150));
    assert_true(st.bytes <= max);
    assert_false(is_hit(c, 1, 4));
    assert_false(is_hit(c, 2, 4));
    assert_true(is_hit(c, 3, 4));
    assert_true(is_hit(c, 4, 4));
    rcache_free(c);
}

static void test_oversize_not_stored_but_delivered(void **state)
{
    (void)state;
    rcache *c = make_cache(100, rcache_entry_cost(100), 0, 4, 4);
    put(c, 1, 100, 'a', 0); /* exactly max_bytes: fits */
    assert_true(is_hit(c, 1, 1));

    rcache_key k = key_n(2);
    seen s = {0};
    uint8_t big[101];
    memset(big, 'z', sizeof big);
    assert_int_equal(lookup(c, &k, 2, NULL, NULL), RCACHE_LEADER);
    assert_int_equal(lookup(c, &k, 2, &s, NULL), RCACHE_FOLLOWER);
    assert_int_equal(rcache_complete(c, &k, big, sizeof big, 2), 0);
    assert_int_equal(s.calls, 1);
    assert_int_equal(s.err, 0);
    assert_int_equal(s.len, sizeof big);
    assert_memory_equal(s.value, big, sizeof big);
    rcache_stats st = stats_of(c);
    assert_int_equal(st.oversize, 1);
    assert_int_equal(st.evictions, 0); /* the small entry was not sacrificed for nothing */
    assert_int_equal(st.entries, 1);
    assert_true(is_hit(c, 1, 3));
    assert_false(is_hit(c, 2, 3));
    rcache_free(c);
}

/* ---- single-flight ---- */

static void test_single_flight_fifty(void **state)
{
    (void)state;
    enum { N = 50 };
    rcache *c = make_cache(16, 1 << 20, 0, 4, 64);
    rcache_key k = key_n(7);
    seen s[N];
    rcache_waiter w[N];
    memset(s, 0, sizeof s);
    int leaders = 0, followers = 0;
    for (int i = 0; i < N; i++) {
        int rc = lookup(c, &k, 10, &s[i], &w[i]);
        if (rc == RCACHE_LEADER) {
            leaders++;
            assert_int_equal(w[i], RCACHE_WAITER_NONE);
        } else {
            assert_int_equal(rc, RCACHE_FOLLOWER);
            assert_int_not_equal(w[i], RCACHE_WAITER_NONE);
            for (int j = 1; j < i; j++)
                assert_int_not_equal(w[i], w[j]);
            followers++;
        }
    }
    assert_int_equal(leaders, 1);
    assert_int_equal(followers, N - 1);
    rcache_stats st = stats_of(c);
    assert_int_equal(st.inflight, 1);
    assert_int_equal(st.waiters, N - 1);
    assert_int_equal(st.coalesced, N - 1);
    assert_int_equal(st.misses, N);

    assert_int_equal(rcache_complete(c, &k, (const uint8_t *)"result", 6, 20), 0);
    assert_int_equal(s[0].calls, 0); /* the leader has its own result */
    for (int i = 1; i < N; i++) {
        assert_int_equal(s[i].calls, 1);
        assert_int_equal(s[i].err, 0);
        assert_int_equal(s[i].len, 6);
        assert_memory_equal(s[i].value, "result", 6);
    }
    st = stats_of(c);
    assert_int_equal(st.inflight, 0);
    assert_int_equal(st.waiters, 0);
    /* A second complete for the same key only stores: nobody is called twice. */
    assert_int_equal(rcache_complete(c, &k, (const uint8_t *)"result", 6, 21), 0);
    for (int i = 1; i < N; i++)
        assert_int_equal(s[i].calls, 1);
    assert_true(is_hit(c, 7, 22));
    rcache_free(c);
}

static void test_abandon_delivers_error(void **state)
{
    (void)state;
    rcache *c = make_cache(16, 1 << 20, 0, 4, 8);
    rcache_key k = key_n(3);
    seen s[3];
    memset(s, 0, sizeof s);
    assert_int_equal(lookup(c, &k, 0, NULL, NULL), RCACHE_LEADER);
    for (int i = 0; i < 3; i++)
        assert_int_equal(lookup(c, &k, 0, &s[i], NULL), RCACHE_FOLLOWER);
    assert_int_equal(rcache_abandon(c, &k, FB_EIO), 0);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(s[i].calls, 1);
        assert_int_equal(s[i].err, FB_EIO);
        assert_int_equal(s[i].len, 0);
    }
    assert_int_equal(stats_of(c).inflight, 0);
    assert_int_equal(stats_of(c).entries, 0);
    assert_int_equal(rcache_abandon(c, &k, FB_EIO), FB_ENOENT);

    /* The key is free again; a non-negative error still reaches followers as one. */
    seen t = {0};
    assert_int_equal(lookup(c, &k, 1, NULL, NULL), RCACHE_LEADER);
    assert_int_equal(lookup(c, &k, 1, &t, NULL), RCACHE_FOLLOWER);
    assert_int_equal(rcache_abandon(c, &k, 0), FB_EINVAL);
    assert_int_equal(t.calls, 1);
    assert_int_equal(t.err, FB_EINVAL);
    rcache_free(c);
}

static void test_waiter_cancel(void **state)
{
    (void)state;
    rcache *c = make_cache(16, 1 << 20, 0, 4, 8);
    rcache_key k = key_n(4);
    seen s[3];
    rcache_waiter w[3];
    memset(s, 0, sizeof s);
    assert_int_equal(lookup(c, &k, 0, NULL, NULL), RCACHE_LEADER);
    for (int i = 0; i < 3; i++)
        assert_int_equal(lookup(c, &k, 0, &s[i], &w[i]), RCACHE_FOLLOWER);
    assert_int_equal(rcache_waiter_cancel(c, w[1]), 0);
    assert_int_equal(rcache_waiter_cancel(c, w[1]), FB_ENOENT);
    assert_int_equal(stats_of(c).waiters, 2);

    /* The freed slot is reused, under a new generation: the old handle stays stale. */
    seen r = {0};
    rcache_waiter wr;
    assert_int_equal(lookup(c, &k, 0, &r, &wr), RCACHE_FOLLOWER);
    assert_int_not_equal(wr, w[1]);
    assert_int_equal(rcache_waiter_cancel(c, w[1]), FB_ENOENT);

    assert_int_equal(rcache_complete(c, &k, (const uint8_t *)"x", 1, 1), 0);
    assert_int_equal(s[0].calls, 1);
    assert_int_equal(s[1].calls, 0);
    assert_int_equal(s[2].calls, 1);
    assert_int_equal(r.calls, 1);
    /* Handles of delivered waiters, NONE and garbage are all just stale. */
    assert_int_equal(rcache_waiter_cancel(c, w[0]), FB_ENOENT);
    assert_int_equal(rcache_waiter_cancel(c, RCACHE_WAITER_NONE), FB_ENOENT);
    assert_int_equal(rcache_waiter_cancel(c, UINT64_MAX), FB_ENOENT);
    assert_int_equal(rcache_waiter_cancel(c, ((uint64_t)1 << 32) | 12345), FB_ENOENT);
    assert_int_equal(stats_of(c).waiters, 0);
    rcache_free(c);
}

static void test_inflight_and_waiter_bounds(void **state)
{
    (void)state;
    rcache *c = make_cache(16, 1 << 20, 0, 2, 2);
    rcache_key k1 = key_n(1), k2 = key_n(2), k3 = key_n(3);
    seen s[3];
    memset(s, 0, sizeof s);
    assert_int_equal(lookup(c, &k1, 0, NULL, NULL), RCACHE_LEADER);
    assert_int_equal(lookup(c, &k2, 0, NULL, NULL), RCACHE_LEADER);
    assert_int_equal(lookup(c, &k3, 0, NULL, NULL), FB_EBUSY);
    assert_int_equal(lookup(c, &k1, 0, &s[0], NULL), RCACHE_FOLLOWER);
    assert_int_equal(lookup(c, &k1, 0, &s[1], NULL), RCACHE_FOLLOWER);
    assert_int_equal(lookup(c, &k1, 0, &s[2], NULL), FB_EBUSY);
    rcache_stats st = stats_of(c);
    assert_int_equal(st.refused, 2);
    assert_int_equal(st.inflight, 2);
    assert_int_equal(st.waiters, 2);
    assert_int_equal(rcache_complete(c, &k1, (const uint8_t *)"1", 1, 1), 0);
    assert_int_equal(s[2].calls, 0); /* the refused lookup queued nothing */
    assert_int_equal(lookup(c, &k3, 1, NULL, NULL), RCACHE_LEADER);
    assert_int_equal(rcache_abandon(c, &k2, FB_EIO), 0);
    assert_int_equal(rcache_abandon(c, &k3, FB_EIO), 0);
    rcache_free(c);
}

static void test_clear(void **state)
{
    (void)state;
    rcache *c = make_cache(16, 1 << 20, 0, 4, 4);
    put(c, 1, 10, 'a', 0);
    put(c, 2, 20, 'b', 0);
    rcache_key k3 = key_n(3);
    seen s = {0};
    assert_int_equal(lookup(c, &k3, 0, NULL, NULL), RCACHE_LEADER);
    assert_int_equal(lookup(c, &k3, 0, &s, NULL), RCACHE_FOLLOWER);
    rcache_clear(c);
    rcache_stats st = stats_of(c);
    assert_int_equal(st.entries, 0);
    assert_int_equal(st.bytes, 0);
    assert_int_equal(st.inflight, 1); /* in-flight work survives a clear */
    assert_int_equal(st.waiters, 1);
    assert_int_equal(st.evictions, 0);
    assert_false(is_hit(c, 1, 1));
    assert_int_equal(rcache_complete(c, &k3, (const uint8_t *)"ok", 2, 1), 0);
    assert_int_equal(s.calls, 1);
    assert_true(is_hit(c, 3, 2));
    rcache_free(c);
}

/* rcache_free with followers still queued frees them without calling them. */
static void test_free_with_pending(void **state)
{
    (void)state;
    rcache *c = make_cache(16, 1 << 20, 0, 4, 4);
    rcache_key k = key_n(1);
    seen s = {0};
    assert_int_equal(lookup(c, &k, 0, NULL, NULL), RCACHE_LEADER);
    assert_int_equal(lookup(c, &k, 0, &s, NULL), RCACHE_FOLLOWER);
    put(c, 2, 10, 'a', 0);
    rcache_free(c);
    assert_int_equal(s.calls, 0);
}

/* ---- reentrant callbacks ---- */

typedef struct reenter {
    rcache *c;
    rcache_key same, other;
    rcache_waiter cancel_me;
    int calls;
    int same_rc, other_rc, cancel_rc;
    size_t same_len;
} reenter;

static void reenter_cb(void *ud, const uint8_t *value, size_t len, int err)
{
    reenter *r = ud;
    (void)value;
    (void)len;
    (void)err;
    r->calls++;
    const uint8_t *v;
    size_t vlen = 0;
    rcache_waiter w;
    r->same_rc = rcache_lookup(r->c, &r->same, 100, record_cb, NULL, &w, &v, &vlen);
    r->same_len = vlen;
    r->other_rc = rcache_lookup(r->c, &r->other, 100, record_cb, NULL, &w, &v, &vlen);
    if (r->cancel_me != RCACHE_WAITER_NONE)
        r->cancel_rc = rcache_waiter_cancel(r->c, r->cancel_me);
}

static void test_reentrant_callbacks(void **state)
{
    (void)state;
    rcache *c = make_cache(16, 1 << 20, 0, 8, 8);
    rcache_key k = key_n(1);
    reenter r = {.c = c, .same = k, .other = key_n(2)};
    seen later = {0};
    rcache_waiter later_w;
    assert_int_equal(lookup(c, &k, 0, NULL, NULL), RCACHE_LEADER);
    rcache_waiter rw;
    const uint8_t *v;
    size_t len;
    assert_int_equal(rcache_lookup(c, &k, 0, reenter_cb, &r, &rw, &v, &len), RCACHE_FOLLOWER);
    assert_int_equal(lookup(c, &k, 0, &later, &later_w), RCACHE_FOLLOWER);
    r.cancel_me = later_w; /* the first callback cancels the second waiter */

    assert_int_equal(rcache_complete(c, &k, (const uint8_t *)"abc", 3, 50), 0);
    assert_int_equal(r.calls, 1);
    assert_int_equal(r.same_rc, RCACHE_HIT); /* stored before any callback ran */
    assert_int_equal(r.same_len, 3);
    assert_int_equal(r.other_rc, RCACHE_LEADER);
    assert_int_equal(r.cancel_rc, 0);
    assert_int_equal(later.calls, 0);
    rcache_stats st = stats_of(c);
    assert_int_equal(st.inflight, 1); /* the leader the callback became */
    assert_int_equal(st.waiters, 0);

    /* Abandon: the same key is free again inside the callback, so it leads anew. */
    reenter r2 = {.c = c, .same = key_n(2), .other = key_n(3)};
    rcache_key k2 = key_n(2);
    assert_int_equal(rcache_lookup(c, &k2, 0, reenter_cb, &r2, &rw, &v, &len), RCACHE_FOLLOWER);
    assert_int_equal(rcache_abandon(c, &k2, FB_EIO), 0);
    assert_int_equal(r2.calls, 1);
    assert_int_equal(r2.same_rc, RCACHE_LEADER);
    assert_int_equal(r2.other_rc, RCACHE_LEADER);
    assert_int_equal(stats_of(c).inflight, 2);
    rcache_free(c);
}

/* A callback that completes another key runs that key's followers nested. */
typedef struct chain {
    rcache *c;
    rcache_key next;
    int calls;
} chain;

static void chain_cb(void *ud, const uint8_t *value, size_t len, int err)
{
    chain *ch = ud;
    (void)err;
    ch->calls++;
    assert_int_equal(rcache_complete(ch->c, &ch->next, value, len, 0), 0);
}

static void test_nested_complete(void **state)
{
    (void)state;
    rcache *c = make_cache(16, 1 << 20, 0, 8, 8);
    rcache_key a = key_n(10), b = key_n(11);
    chain ch = {.c = c, .next = b};
    seen sb = {0};
    rcache_waiter w;
    const uint8_t *v;
    size_t len;
    assert_int_equal(lookup(c, &a, 0, NULL, NULL), RCACHE_LEADER);
    assert_int_equal(lookup(c, &b, 0, NULL, NULL), RCACHE_LEADER);
    assert_int_equal(rcache_lookup(c, &a, 0, chain_cb, &ch, &w, &v, &len), RCACHE_FOLLOWER);
    assert_int_equal(lookup(c, &b, 0, &sb, NULL), RCACHE_FOLLOWER);
    assert_int_equal(rcache_complete(c, &a, (const uint8_t *)"zz", 2, 0), 0);
    assert_int_equal(ch.calls, 1);
    assert_int_equal(sb.calls, 1);
    assert_int_equal(sb.len, 2);
    assert_memory_equal(sb.value, "zz", 2);
    assert_int_equal(stats_of(c).inflight, 0);
    assert_int_equal(stats_of(c).entries, 2);
    rcache_free(c);
}

/* ---- keys ---- */

typedef struct req {
    uint8_t digest[16];
    int32_t tokens[8];
    int n_tokens;
    float temperature;
    int top_k;
    float top_p;
    uint64_t seed;
    int max_tokens;
    const char *stop[4];
    int n_stop;
} req;

static req base_req(void)
{
    req r = {
        .tokens = {1, 2, 3},
        .n_tokens = 3,
        .temperature = 0.7f,
        .top_k = 40,
        .top_p = 0.9f,
        .seed = 42,
        .max_tokens = 64,
        .stop = {"ab", "c"},
        .n_stop = 2,
    };
    for (int i = 0; i < 16; i++)
        r.digest[i] = (uint8_t)i;
    return r;
}

static rcache_key key_of(const req *r)
{
    rcache_key k;
    rcache_key_of(&k, r->digest, r->tokens, r->n_tokens, r->temperature, r->top_k, r->top_p,
                  r->seed, r->max_tokens, r->stop, r->n_stop);
    return k;
}

static bool same_key(const req *a, const req *b)
{
    rcache_key ka = key_of(a), kb = key_of(b);
    return memcmp(ka.b, kb.b, RCACHE_KEY_LEN) == 0;
}

static void test_key_every_field_matters(void **state)
{
    (void)state;
    enum { V = 12 };
    req v[V];
    for (int i = 0; i < V; i++)
        v[i] = base_req();
    v[1].digest[15] ^= 1;
    v[2].tokens[2] = 4;
    v[3].n_tokens = 2;
    v[4].temperature = 0.71f;
    v[5].top_k = 41;
    v[6].top_p = 0.95f;
    v[7].seed = 43;
    v[8].max_tokens = 65;
    v[9].stop[1] = "d";
    v[10].n_stop = 1;
    v[11].tokens[0] = -1;
    for (int i = 0; i < V; i++)
        for (int j = i + 1; j < V; j++)
            if (same_key(&v[i], &v[j]))
                fail_msg("variants %d and %d share a key", i, j);

    /* Deterministic, and -0.0 samples like 0.0 so it keys alike. */
    req a = base_req(), b = base_req();
    assert_true(same_key(&a, &b));
    a.temperature = 0.0f;
    b.temperature = -0.0f;
    assert_true(same_key(&a, &b));
    /* NULL stop list and zero stops are the same request. */
    a = base_req();
    b = base_req();
    a.n_stop = 0;
    rcache_key ka = key_of(&a), kb;
    rcache_key_of(&kb, b.digest, b.tokens, b.n_tokens, b.temperature, b.top_k, b.top_p, b.seed,
                  b.max_tokens, NULL, 0);
    assert_memory_equal(ka.b, kb.b, RCACHE_KEY_LEN);
}

static void test_key_no_ambiguity(void **state)
{
    (void)state;
    req a = base_req(), b = base_req();
    /* stop "ab","c" vs "a","bc" vs "abc" vs "ab","","c". */
    b.stop[0] = "a";
    b.stop[1] = "bc";
    assert_false(same_key(&a, &b));
    b = base_req();
    b.stop[0] = "abc";
    b.n_stop = 1;
    assert_false(same_key(&a, &b));
    b = base_req();
    b.stop[0] = "ab";
    b.stop[1] = "";
    b.stop[2] = "c";
    b.n_stop = 3;
    assert_false(same_key(&a, &b));
    /* One empty stop string is not "no stop strings". */
    a.n_stop = 0;
    b = base_req();
    b.stop[0] = "";
    b.n_stop = 1;
    assert_false(same_key(&a, &b));

    /* A prompt that is a prefix of another, and an empty prompt vs one zero token. */
    a = base_req();
    b = base_req();
    a.n_tokens = 2;
    assert_false(same_key(&a, &b));
    a.n_tokens = 0;
    b.tokens[0] = 0;
    b.n_tokens = 1;
    assert_false(same_key(&a, &b));
}

/* ---- randomized model check ---- */

enum { RK = 24, ROPS = 20000 };

/* Value for key k: its length and bytes are a function of k, so any delivery or hit
 * can be checked against the key it is for. */
static size_t rval_len(uint32_t k)
{
    return (k * 37u) % 300u;
}

typedef struct rpend {
    uint32_t key;
    rcache_waiter w;
    int calls;
    int err;
    bool cancelled;
    bool value_ok;
} rpend;

static void rpend_cb(void *ud, const uint8_t *value, size_t len, int err)
{
    rpend *p = ud;
    p->calls++;
    p->err = err;
    bool ok = err != 0 || len == rval_len(p->key);
    for (size_t i = 0; ok && err == 0 && i < len; i++)
        ok = value[i] == (uint8_t)p->key;
    p->value_ok = ok;
}

static uint64_t rng_next(uint64_t *x)
{
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    return *x;
}

static void test_random_ops(void **state)
{
    (void)state;
    uint64_t seed = 0x5eed1234abcdULL, x = seed;
    rcache *c = make_cache(8, 6 * rcache_entry_cost(150), 500, 5, 4);
    static rpend pend[ROPS];
    bool leading[RK] = {0};
    size_t npend = 0, live_leaders = 0;
    uint64_t now = 0;
    uint8_t buf[300];
    for (int op = 0; op < ROPS; op++) {
        uint32_t k = (uint32_t)(rng_next(&x) % RK);
        rcache_key key = key_n(k);
        uint64_t r = rng_next(&x) % 100;
        now += rng_next(&x) % 20;
        memset(buf, (int)k, sizeof buf);
        if (r < 50) {
            const uint8_t *v;
            size_t len;
            rpend *p = &pend[npend];
            *p = (rpend){.key = k};
            int rc = rcache_lookup(c, &key, now, rpend_cb, p, &p->w, &v, &len);
            if (rc == RCACHE_HIT) {
                assert_false(leading[k]);
                assert_int_equal(len, rval_len(k));
                for (size_t i = 0; i < len; i++)
                    assert_int_equal(v[i], (uint8_t)k);
            } else if (rc == RCACHE_LEADER) {
                assert_false(leading[k]);
                leading[k] = true;
                live_leaders++;
            } else if (rc == RCACHE_FOLLOWER) {
                assert_true(leading[k]);
                npend++;
            } else {
                assert_int_equal(rc, FB_EBUSY);
            }
        } else if (r < 75 && leading[k]) {
            assert_int_equal(rcache_complete(c, &key, buf, rval_len(k), now), 0);
            leading[k] = false;
            live_leaders--;
        } else if (r < 85 && leading[k]) {
            assert_int_equal(rcache_abandon(c, &key, FB_EIO), 0);
            leading[k] = false;
            live_leaders--;
        } else if (r < 95 && npend > 0) {
            rpend *p = &pend[rng_next(&x) % npend];
            int rc = rcache_waiter_cancel(c, p->w);
            if (p->calls == 0 && !p->cancelled) {
                assert_int_equal(rc, 0);
                p->cancelled = true;
            } else {
                assert_int_equal(rc, FB_ENOENT);
            }
        } else if (r == 99) {
            rcache_clear(c);
        }
        /* Followers of keys no longer led were each called exactly once, or cancelled. */
        size_t pending_now = 0;
        for (size_t i = 0; i < npend; i++) {
            rpend *p = &pend[i];
            if (p->cancelled) {
                if (p->calls != 0)
                    fail_msg("seed %llx op %d: cancelled waiter called", (unsigned long long)seed,
                             op);
                continue;
            }
            if (p->calls == 0) {
                assert_true(leading[p->key]);
                pending_now++;
            } else {
                assert_int_equal(p->calls, 1);
                assert_true(p->value_ok);
            }
        }
        rcache_stats st = stats_of(c);
        assert_int_equal(st.waiters, pending_now);
        assert_int_equal(st.inflight, live_leaders);
        assert_true(st.entries <= 8);
        assert_true(st.bytes <= 6 * rcache_entry_cost(150));
    }
    rcache_stats st = stats_of(c);
    assert_true(st.hits > 0 && st.evictions > 0 && st.expirations > 0 && st.refused > 0);
    assert_true(st.coalesced > 0);
    rcache_free(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_bounds),
        cmocka_unit_test(test_hit_and_miss),
        cmocka_unit_test(test_ttl_expiry),
        cmocka_unit_test(test_lru_by_entries),
        cmocka_unit_test(test_lru_by_bytes),
        cmocka_unit_test(test_oversize_not_stored_but_delivered),
        cmocka_unit_test(test_single_flight_fifty),
        cmocka_unit_test(test_abandon_delivers_error),
        cmocka_unit_test(test_waiter_cancel),
        cmocka_unit_test(test_inflight_and_waiter_bounds),
        cmocka_unit_test(test_clear),
        cmocka_unit_test(test_free_with_pending),
        cmocka_unit_test(test_reentrant_callbacks),
        cmocka_unit_test(test_nested_complete),
        cmocka_unit_test(test_key_every_field_matters),
        cmocka_unit_test(test_key_no_ambiguity),
        cmocka_unit_test(test_random_ops),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
