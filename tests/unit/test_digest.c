/* test_digest.c - domain-separated digests and Ed25519 over them. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "digest.h"
#include "fb_error.h"
#include "sig.h"

#include <string.h>

static const int all_domains[] = {
    FB_DOM_REQUEST,        FB_DOM_REPLY,          FB_DOM_PRE_PREPARE,   FB_DOM_PREPARE,
    FB_DOM_COMMIT,         FB_DOM_CHECKPOINT,     FB_DOM_VIEW_CHANGE,   FB_DOM_NEW_VIEW,
    FB_DOM_STATE_REQUEST,  FB_DOM_STATE_RESPONSE, FB_DOM_CHANNEL_HELLO, FB_DOM_CHANNEL_REPLY,
    FB_DOM_CHANNEL_FINISH, FB_DOM_INFER_RESULT,   FB_DOM_BATCH,         FB_DOM_STATE,
    FB_DOM_STATE_CHUNK,    FB_DOM_TRANSCRIPT,     FB_DOM_SESSION_KEY,
};
#define NDOMAINS (sizeof all_domains / sizeof all_domains[0])

static void test_domains_give_distinct_digests(void **state)
{
    (void)state;
    uint8_t d[NDOMAINS][FB_DIGEST_LEN];
    const char msg[] = "the same bytes";
    for (size_t i = 0; i < NDOMAINS; i++) {
        assert_true(fb_domain_valid(all_domains[i]));
        assert_non_null(fb_domain_name((fb_domain)all_domains[i]));
        fb_digest((fb_domain)all_domains[i], msg, sizeof msg, d[i]);
    }
    for (size_t i = 0; i < NDOMAINS; i++)
        for (size_t j = i + 1; j < NDOMAINS; j++)
            assert_memory_not_equal(d[i], d[j], FB_DIGEST_LEN);
    assert_false(fb_domain_valid(0));
    assert_false(fb_domain_valid(15));
    assert_false(fb_domain_valid(99));
}

static void test_known_answer(void **state)
{
    (void)state;
    /* BLAKE2b-256 of (len-prefixed domain || data), computed independently
     * with libsodium's one-shot API, guards the framing from drifting. */
    const char *name = fb_domain_name(FB_DOM_PREPARE);
    uint8_t buf[64], expect[FB_DIGEST_LEN], got[FB_DIGEST_LEN];
    size_t n = strlen(name);
    buf[0] = (uint8_t)n;
    memcpy(buf + 1, name, n);
    memcpy(buf + 1 + n, "abc", 3);
    crypto_generichash_blake2b(expect, sizeof expect, buf, 1 + n + 3, NULL, 0);
    fb_digest(FB_DOM_PREPARE, "abc", 3, got);
    assert_memory_equal(expect, got, FB_DIGEST_LEN);
}

static void test_incremental_matches_oneshot(void **state)
{
    (void)state;
    uint8_t data[1000], a[FB_DIGEST_LEN], b[FB_DIGEST_LEN];
    for (size_t i = 0; i < sizeof data; i++)
        data[i] = (uint8_t)(i * 7);
    fb_digest(FB_DOM_BATCH, data, sizeof data, a);
    fb_digest_ctx ctx;
    fb_digest_init(&ctx, FB_DOM_BATCH);
    fb_digest_update(&ctx, data, 1);
    fb_digest_update(&ctx, data + 1, 500);
    fb_digest_update(&ctx, data + 501, 0);
    fb_digest_update(&ctx, data + 501, sizeof data - 501);
    fb_digest_final(&ctx, b);
    assert_memory_equal(a, b, FB_DIGEST_LEN);
}

static void test_digest_counter(void **state)
{
    (void)state;
    uint8_t d[FB_DIGEST_LEN];
    uint64_t before = fb_digest_count();
    fb_digest(FB_DOM_REQUEST, "x", 1, d);
    fb_digest(FB_DOM_REQUEST, "y", 1, d);
    assert_int_equal(fb_digest_count() - before, 2);
}

static void test_sign_verify_and_domain_separation(void **state)
{
    (void)state;
    uint8_t seed[FB_SEED_LEN] = {42};
    fb_identity id, other;
    fb_key_from_seed(seed, &id);
    seed[0] = 43;
    fb_key_from_seed(seed, &other);

    const char body[] = "view=1 seq=7 digest=...";
    uint8_t dprep[FB_DIGEST_LEN], dcommit[FB_DIGEST_LEN], sig[FB_SIG_LEN];
    fb_digest(FB_DOM_PREPARE, body, sizeof body, dprep);
    fb_digest(FB_DOM_COMMIT, body, sizeof body, dcommit);
    fb_sig_sign(&id, dprep, sig);

    uint64_t before = fb_sig_verify_count();
    assert_int_equal(fb_sig_verify(id.pk, dprep, sig), 0);
    /* the same signature can never pass as a COMMIT of the same body */
    assert_int_equal(fb_sig_verify(id.pk, dcommit, sig), FB_EAUTH);
    /* nor under another key, nor tampered */
    assert_int_equal(fb_sig_verify(other.pk, dprep, sig), FB_EAUTH);
    sig[10] ^= 1;
    assert_int_equal(fb_sig_verify(id.pk, dprep, sig), FB_EAUTH);
    assert_int_equal(fb_sig_verify_count() - before, 4);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_domains_give_distinct_digests),
        cmocka_unit_test(test_known_answer),
        cmocka_unit_test(test_incremental_matches_oneshot),
        cmocka_unit_test(test_digest_counter),
        cmocka_unit_test(test_sign_verify_and_domain_separation),
    };
    if (fb_crypto_init() != 0)
        return 1;
    return cmocka_run_group_tests(tests, NULL, NULL);
}
