/* test_envelope.c - the signed envelope: seal, open, verify, and rejections. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "envelope.h"
#include "fb_error.h"
#include "sig.h"

#include <stdlib.h>
#include <string.h>

static fb_identity ident(uint8_t n)
{
    uint8_t seed[FB_SEED_LEN] = {n};
    fb_identity id;
    fb_key_from_seed(seed, &id);
    return id;
}

/* A packed Prepare payload, as consensus will produce. */
static size_t prepare_payload(uint8_t *buf, size_t cap)
{
    uint8_t digest[FB_DIGEST_LEN] = {7};
    Fedbft__Prepare p = FEDBFT__PREPARE__INIT;
    p.view = 3;
    p.seq = 41;
    p.digest.data = digest;
    p.digest.len = sizeof digest;
    p.replica = 2;
    size_t n = fedbft__prepare__get_packed_size(&p);
    assert_true(n <= cap);
    return fedbft__prepare__pack(&p, buf);
}

static void test_seal_open_verify(void **state)
{
    (void)state;
    fb_identity id = ident(1);
    uint8_t payload[128], *wire, digest[FB_DIGEST_LEN];
    size_t plen = prepare_payload(payload, sizeof payload), wlen;
    char err[128];
    assert_int_equal(
        fb_env_seal(FEDBFT__MSG_TYPE__MSG_PREPARE, 2, payload, plen, &id, &wire, &wlen), 0);

    Fedbft__Envelope *env = NULL;
    assert_int_equal(fb_env_open(wire, wlen, &env, digest, err, sizeof err), 0);
    assert_int_equal(env->type, FEDBFT__MSG_TYPE__MSG_PREPARE);
    assert_int_equal(env->sender, 2);
    assert_int_equal(env->version, FB_PROTOCOL_VERSION);
    assert_int_equal(fb_sig_verify(id.pk, digest, env->signature.data), 0);

    Fedbft__Prepare *p = fedbft__prepare__unpack(NULL, env->payload.len, env->payload.data);
    assert_non_null(p);
    assert_int_equal(p->view, 3);
    assert_int_equal(p->seq, 41);
    fedbft__prepare__free_unpacked(p, NULL);
    fedbft__envelope__free_unpacked(env, NULL);
    free(wire);
}

/* Re-pack an envelope after letting `edit` change it. */
static size_t repack(const uint8_t *wire, size_t wlen, void (*edit)(Fedbft__Envelope *),
                     uint8_t *out)
{
    Fedbft__Envelope *env = fedbft__envelope__unpack(NULL, wlen, wire);
    assert_non_null(env);
    edit(env);
    size_t n = fedbft__envelope__pack(env, out);
    fedbft__envelope__free_unpacked(env, NULL);
    return n;
}

static void as_checkpoint(Fedbft__Envelope *e)
{
    e->type = FEDBFT__MSG_TYPE__MSG_CHECKPOINT;
}
static void other_sender(Fedbft__Envelope *e)
{
    e->sender = 3;
}
static void flip_payload(Fedbft__Envelope *e)
{
    e->payload.data[0] ^= 0x80;
}
static void old_version(Fedbft__Envelope *e)
{
    e->version = 0;
}
static void future_version(Fedbft__Envelope *e)
{
    e->version = 2;
}
static void unknown_type(Fedbft__Envelope *e)
{
    e->type = (Fedbft__MsgType)77;
}
static void short_sig(Fedbft__Envelope *e)
{
    e->signature.len = 63;
}

/* Edits that keep the envelope well-formed but must break the signature. */
static void test_signature_binds_type_sender_payload(void **state)
{
    (void)state;
    fb_identity id = ident(1);
    uint8_t payload[128], *wire, out[512], digest[FB_DIGEST_LEN];
    size_t plen = prepare_payload(payload, sizeof payload), wlen;
    assert_int_equal(
        fb_env_seal(FEDBFT__MSG_TYPE__MSG_PREPARE, 2, payload, plen, &id, &wire, &wlen), 0);
    void (*edits[])(Fedbft__Envelope *) = {as_checkpoint, other_sender, flip_payload};
    for (size_t i = 0; i < sizeof edits / sizeof edits[0]; i++) {
        size_t n = repack(wire, wlen, edits[i], out);
        Fedbft__Envelope *env = NULL;
        assert_int_equal(fb_env_open(out, n, &env, digest, NULL, 0), 0);
        assert_int_equal(fb_sig_verify(id.pk, digest, env->signature.data), FB_EAUTH);
        fedbft__envelope__free_unpacked(env, NULL);
    }
    free(wire);
}

static void test_open_rejects_malformed(void **state)
{
    (void)state;
    fb_identity id = ident(1);
    uint8_t payload[128], *wire, out[512], digest[FB_DIGEST_LEN];
    size_t plen = prepare_payload(payload, sizeof payload), wlen;
    char err[160];
    Fedbft__Envelope *env = NULL;
    assert_int_equal(
        fb_env_seal(FEDBFT__MSG_TYPE__MSG_PREPARE, 2, payload, plen, &id, &wire, &wlen), 0);

    struct {
        void (*edit)(Fedbft__Envelope *);
        int code;
        const char *words;
    } cases[] = {
        {old_version, FB_EVERSION, "version"},
        {future_version, FB_EVERSION, "version"},
        {unknown_type, FB_EPROTO, "unknown message type"},
        {short_sig, FB_EPROTO, "signature is 63 bytes"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t n = repack(wire, wlen, cases[i].edit, out);
        err[0] = '\0';
        assert_int_equal(fb_env_open(out, n, &env, digest, err, sizeof err), cases[i].code);
        assert_non_null(strstr(err, cases[i].words));
    }

    /* garbage and every truncation: an error, never a crash */
    const uint8_t garbage[] = {0xff, 0xff, 0xff, 0xff, 0x0f, 0x12, 0x34};
    assert_int_equal(fb_env_open(garbage, sizeof garbage, &env, digest, err, sizeof err),
                     FB_EINVAL);
    for (size_t cut = 1; cut < wlen; cut++) {
        int rc = fb_env_open(wire, cut, &env, digest, NULL, 0);
        if (rc == 0)
            fedbft__envelope__free_unpacked(env, NULL);
        assert_int_not_equal(rc, 0);
    }
    free(wire);
}

static void test_seal_rejects_unknown_type(void **state)
{
    (void)state;
    fb_identity id = ident(1);
    uint8_t *wire = NULL;
    size_t wlen = 0;
    assert_int_equal(fb_env_seal(0, 1, (const uint8_t *)"x", 1, &id, &wire, &wlen), FB_EINVAL);
    assert_int_equal(fb_env_seal(FB_DOM_BATCH, 1, (const uint8_t *)"x", 1, &id, &wire, &wlen),
                     FB_EINVAL);
    assert_null(wire);
}

/* REPLY and COMMIT are the unsigned types: sealed without a key, opened only
 * with an empty signature; every other type still needs a key and 64 bytes. */
static void add_sig(Fedbft__Envelope *e)
{
    e->signature.data = calloc(1, FB_SIG_LEN); /* freed with the envelope */
    assert_non_null(e->signature.data);
    e->signature.len = FB_SIG_LEN;
}
static void drop_sig(Fedbft__Envelope *e)
{
    e->signature.len = 0;
}
static void as_reply(Fedbft__Envelope *e)
{
    e->type = FEDBFT__MSG_TYPE__MSG_REPLY;
}
static void as_commit(Fedbft__Envelope *e)
{
    e->type = FEDBFT__MSG_TYPE__MSG_COMMIT;
}

static void test_unsigned_types(void **state)
{
    (void)state;
    fb_identity id = ident(1);
    uint8_t payload[128], *wire, *pwire, out[512], digest[FB_DIGEST_LEN];
    size_t plen = prepare_payload(payload, sizeof payload), wlen, pwlen;
    char err[160];
    Fedbft__Envelope *env = NULL;
    assert_int_equal(
        fb_env_seal(FEDBFT__MSG_TYPE__MSG_PREPARE, 2, payload, plen, &id, &pwire, &pwlen), 0);
    const struct {
        int type;
        const char *name;
        void (*retype)(Fedbft__Envelope *);
    } unsigned_types[] = {{FEDBFT__MSG_TYPE__MSG_REPLY, "REPLY", as_reply},
                          {FEDBFT__MSG_TYPE__MSG_COMMIT, "COMMIT", as_commit}};
    for (size_t t = 0; t < sizeof unsigned_types / sizeof unsigned_types[0]; t++) {
        int type = unsigned_types[t].type;
        assert_false(fb_env_type_signed(type));
        assert_int_equal(fb_env_seal(type, 2, payload, plen, NULL, &wire, &wlen), 0);
        assert_int_equal(fb_env_open(wire, wlen, &env, digest, err, sizeof err), 0);
        assert_int_equal(env->type, type);
        assert_int_equal(env->signature.len, 0);
        assert_memory_equal(env->payload.data, payload, plen);
        fedbft__envelope__free_unpacked(env, NULL);

        /* one with a signature is malformed */
        size_t n = repack(wire, wlen, add_sig, out);
        assert_int_equal(fb_env_open(out, n, &env, digest, err, sizeof err), FB_EPROTO);
        char words[64];
        snprintf(words, sizeof words, "%s carries no signature", unsigned_types[t].name);
        assert_non_null(strstr(err, words));
        /* a signed PREPARE retyped as this type keeps its signature: rejected too */
        n = repack(pwire, pwlen, unsigned_types[t].retype, out);
        assert_int_equal(fb_env_open(out, n, &env, digest, err, sizeof err), FB_EPROTO);
        free(wire);
    }
    assert_true(fb_env_type_signed(FEDBFT__MSG_TYPE__MSG_PREPARE));
    assert_true(fb_env_type_signed(FEDBFT__MSG_TYPE__MSG_REQUEST));
    /* any other type without a signature is malformed, and cannot be sealed
     * without a key */
    size_t n = repack(pwire, pwlen, drop_sig, out);
    assert_int_equal(fb_env_open(out, n, &env, digest, err, sizeof err), FB_EPROTO);
    assert_non_null(strstr(err, "expected 64"));
    uint8_t *none = NULL;
    assert_int_equal(
        fb_env_seal(FEDBFT__MSG_TYPE__MSG_PREPARE, 2, payload, plen, NULL, &none, &pwlen),
        FB_EINVAL);
    assert_null(none);
    free(pwire);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_seal_open_verify),
        cmocka_unit_test(test_signature_binds_type_sender_payload),
        cmocka_unit_test(test_open_rejects_malformed),
        cmocka_unit_test(test_seal_rejects_unknown_type),
        cmocka_unit_test(test_unsigned_types),
    };
    if (fb_crypto_init() != 0)
        return 1;
    return cmocka_run_group_tests(tests, NULL, NULL);
}
