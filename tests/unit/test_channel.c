/* test_channel.c - the secure channel: two channels driven against each other in memory. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "channel.h"
#include "envelope.h"
#include "fb_error.h"

#include <sodium.h>
#include <stdlib.h>
#include <string.h>

#define MAX_KEPT 8 /* frames a test side keeps copies of */

/* ------------------------------------------------------------ harness */

typedef struct bytes {
    uint8_t *p;
    size_t len, cap;
} bytes;

static void bytes_append(bytes *b, const uint8_t *p, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n)
            cap *= 2;
        b->p = realloc(b->p, cap);
        assert_non_null(b->p);
        b->cap = cap;
    }
    if (n)
        memcpy(b->p + b->len, p, n);
    b->len += n;
}

static void bytes_free(bytes *b)
{
    free(b->p);
    memset(b, 0, sizeof *b);
}

/* One end of an in-memory link: what it sent (not yet delivered), what it received. */
typedef struct side {
    fb_chan *ch;
    bytes out;
    size_t frames;
    bytes kept[MAX_KEPT];
    int established;
    uint8_t est_pk[FB_PK_LEN];
    int echo;             /* write each received frame straight back */
    int echo_rc;          /* last fb_chan_write result from the echo */
    int refeed;           /* call fb_chan_feed from inside io.frame */
    int refeed_rc;        /* what that inner call returned */
    const char *greeting; /* written from inside io.established */
    int greeting_copies;  /* how many times */
} side;

static void on_send(void *arg, const uint8_t *bytes_, size_t len)
{
    side *s = arg;
    bytes_append(&s->out, bytes_, len);
}

static void on_frame(void *arg, const uint8_t *plain, size_t len)
{
    side *s = arg;
    if (s->frames < MAX_KEPT)
        bytes_append(&s->kept[s->frames], plain, len);
    s->frames++;
    if (s->echo)
        s->echo_rc = fb_chan_write(s->ch, plain, len);
    if (s->refeed)
        s->refeed_rc = fb_chan_feed(s->ch, plain, len);
}

static void on_established(void *arg, const uint8_t pk[FB_PK_LEN])
{
    side *s = arg;
    s->established++;
    memcpy(s->est_pk, pk, FB_PK_LEN);
    for (int i = 0; i < s->greeting_copies; i++)
        assert_int_equal(fb_chan_write(s->ch, (const uint8_t *)s->greeting, strlen(s->greeting)),
                         0);
}

static fb_identity id_a, id_b, id_c; /* A initiates, B responds, C is a bystander */
static uint8_t all_keys[3][FB_PK_LEN];

static fb_identity ident(uint8_t n)
{
    uint8_t seed[FB_SEED_LEN] = {n, 0x5a};
    fb_identity id;
    assert_int_equal(fb_key_from_seed(seed, &id), 0);
    return id;
}

static int setup_keys(void **state)
{
    (void)state;
    if (fb_crypto_init() != 0)
        return -1;
    id_a = ident(1);
    id_b = ident(2);
    id_c = ident(3);
    memcpy(all_keys[0], id_a.pk, FB_PK_LEN);
    memcpy(all_keys[1], id_b.pk, FB_PK_LEN);
    memcpy(all_keys[2], id_c.pk, FB_PK_LEN);
    return 0;
}

typedef struct side_opts {
    const uint8_t (*allowed)[FB_PK_LEN]; /* NULL = all three keys */
    size_t allowed_count;
    const uint8_t *expected_peer;
    uint32_t max_frame;
} side_opts;

static void side_open(side *s, fb_chan_role role, const fb_identity *self, const side_opts *o)
{
    static const side_opts none;
    if (!o)
        o = &none;
    memset(s, 0, sizeof *s);
    fb_chan_config cfg = {
        .role = role,
        .self = self,
        .allowed = o->allowed ? o->allowed : (const uint8_t(*)[FB_PK_LEN])all_keys,
        .allowed_count = o->allowed ? o->allowed_count : 3,
        .expected_peer = o->expected_peer,
        .sender_id = role == FB_CHAN_INITIATOR ? 1 : 2,
        .max_frame = o->max_frame,
        .io = {.send = on_send, .frame = on_frame, .established = on_established, .arg = s},
    };
    assert_int_equal(fb_chan_new(&cfg, &s->ch), 0);
    assert_int_equal(fb_chan_get_state(s->ch), FB_CHAN_HANDSHAKE);
    assert_null(fb_chan_peer_key(s->ch));
    assert_string_equal(fb_chan_error(s->ch), "");
}

static void side_close(side *s)
{
    fb_chan_free(s->ch);
    bytes_free(&s->out);
    for (int i = 0; i < MAX_KEPT; i++)
        bytes_free(&s->kept[i]);
}

/* Hand everything `from` sent to `to`, `chunk` bytes per feed. */
static int deliver(side *from, side *to, size_t chunk)
{
    bytes pending = from->out;
    memset(&from->out, 0, sizeof from->out);
    int rc = 0;
    for (size_t off = 0; off < pending.len && rc == 0; off += chunk) {
        size_t n = pending.len - off < chunk ? pending.len - off : chunk;
        rc = fb_chan_feed(to->ch, pending.p + off, n);
    }
    bytes_free(&pending);
    return rc;
}

/* Shuttle bytes both ways until both sides are quiet or one fails. */
static int pump(side *a, side *b, size_t chunk)
{
    while (a->out.len || b->out.len) {
        int rc = deliver(a, b, chunk);
        if (rc == 0)
            rc = deliver(b, a, chunk);
        if (rc)
            return rc;
    }
    return 0;
}

/* Remove the first whole frame (length header included) from s->out. */
static bytes take_frame(side *s)
{
    assert_true(s->out.len >= 4);
    size_t len = 4 + ((size_t)s->out.p[0] << 24 | (size_t)s->out.p[1] << 16 |
                      (size_t)s->out.p[2] << 8 | s->out.p[3]);
    assert_true(s->out.len >= len);
    bytes f = {0};
    bytes_append(&f, s->out.p, len);
    memmove(s->out.p, s->out.p + len, s->out.len - len);
    s->out.len -= len;
    return f;
}

static int feed_bytes(side *s, const bytes *b)
{
    return fb_chan_feed(s->ch, b->p, b->len);
}

/* Open an initiator A and a responder B and complete the handshake. */
static void connect_pair(side *i, side *r, const side_opts *io, const side_opts *ro, size_t chunk)
{
    side_open(i, FB_CHAN_INITIATOR, &id_a, io);
    side_open(r, FB_CHAN_RESPONDER, &id_b, ro);
    assert_int_equal(fb_chan_start(i->ch), 0);
    assert_int_equal(pump(i, r, chunk), 0);
    assert_int_equal(fb_chan_get_state(i->ch), FB_CHAN_ESTABLISHED);
    assert_int_equal(fb_chan_get_state(r->ch), FB_CHAN_ESTABLISHED);
}

static void assert_failed(side *s, int rc, int want)
{
    assert_int_equal(rc, want);
    assert_int_equal(fb_chan_get_state(s->ch), FB_CHAN_FAILED);
    assert_true(strlen(fb_chan_error(s->ch)) > 0);
}

/* A refused write: the code, nothing sent, and the channel not failed. */
static void assert_refused(side *s, int rc, int want, size_t out_len_before)
{
    assert_int_equal(rc, want);
    assert_int_not_equal(fb_chan_get_state(s->ch), FB_CHAN_FAILED);
    assert_int_equal(s->out.len, out_len_before);
}

static void put_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

/* A handshake frame: 4-byte length + Envelope(type) around payload, signed by signer. */
static bytes seal_frame(int type, const uint8_t *payload, size_t plen, const fb_identity *signer)
{
    uint8_t *env = NULL;
    size_t elen = 0;
    assert_int_equal(fb_env_seal(type, 1, payload, plen, signer, &env, &elen), 0);
    uint8_t hdr[4];
    put_be32(hdr, (uint32_t)elen);
    bytes f = {0};
    bytes_append(&f, hdr, 4);
    bytes_append(&f, env, elen);
    free(env);
    return f;
}

typedef struct hello_spec {
    int type; /* envelope type; 0 = MSG_CHANNEL_HELLO */
    const uint8_t *identity;
    size_t identity_len;
    const uint8_t *ephemeral;
    size_t ephemeral_len;
    uint32_t max_frame;
    const fb_identity *signer;
} hello_spec;

static bytes craft_hello(const hello_spec *h)
{
    Fedbft__ChannelHello msg = FEDBFT__CHANNEL_HELLO__INIT;
    msg.identity_key.data = (uint8_t *)h->identity;
    msg.identity_key.len = h->identity_len;
    msg.ephemeral_key.data = (uint8_t *)h->ephemeral;
    msg.ephemeral_key.len = h->ephemeral_len;
    msg.max_frame = h->max_frame;
    uint8_t payload[256];
    size_t plen = fedbft__channel_hello__get_packed_size(&msg);
    assert_true(plen <= sizeof payload);
    fedbft__channel_hello__pack(&msg, payload);
    return seal_frame(h->type ? h->type : FEDBFT__MSG_TYPE__MSG_CHANNEL_HELLO, payload, plen,
                      h->signer);
}

/* A well-formed hello from A with a fresh ephemeral key, with one field overridable. */
static hello_spec good_hello(uint8_t eph_pk[32])
{
    uint8_t eph_sk[32];
    crypto_box_keypair(eph_pk, eph_sk);
    hello_spec h = {
        .identity = id_a.pk,
        .identity_len = FB_PK_LEN,
        .ephemeral = eph_pk,
        .ephemeral_len = 32,
        .max_frame = 1024,
        .signer = &id_a,
    };
    return h;
}

/* Feed one crafted frame to a fresh responder B and return its verdict. */
static int responder_verdict(side *r, const bytes *frame)
{
    side_open(r, FB_CHAN_RESPONDER, &id_b, NULL);
    return feed_bytes(r, frame);
}

/* ------------------------------------------------------------ success paths */

static void test_handshake_and_data(void **state)
{
    (void)state;
    side i, r;
    connect_pair(&i, &r, NULL, NULL, SIZE_MAX);
    assert_int_equal(i.established, 1);
    assert_int_equal(r.established, 1);
    assert_memory_equal(i.est_pk, id_b.pk, FB_PK_LEN);
    assert_memory_equal(r.est_pk, id_a.pk, FB_PK_LEN);
    assert_string_equal(fb_chan_error(i.ch), "");

    assert_int_equal(fb_chan_write(i.ch, (const uint8_t *)"ping", 4), 0);
    assert_int_equal(fb_chan_write(r.ch, (const uint8_t *)"pong!", 5), 0);
    assert_int_equal(fb_chan_write(i.ch, NULL, 0), 0); /* empty frame */
    assert_int_equal(fb_chan_write(r.ch, (const uint8_t *)"", 0), 0);
    assert_int_equal(pump(&i, &r, SIZE_MAX), 0);

    assert_int_equal(r.frames, 2);
    assert_int_equal(r.kept[0].len, 4);
    assert_memory_equal(r.kept[0].p, "ping", 4);
    assert_int_equal(r.kept[1].len, 0);
    assert_int_equal(i.frames, 2);
    assert_int_equal(i.kept[0].len, 5);
    assert_memory_equal(i.kept[0].p, "pong!", 5);
    assert_int_equal(i.kept[1].len, 0);
    side_close(&i);
    side_close(&r);
}

static void test_peer_key_reported(void **state)
{
    (void)state;
    side i, r;
    side_open(&i, FB_CHAN_INITIATOR, &id_a, NULL);
    side_open(&r, FB_CHAN_RESPONDER, &id_b, NULL);
    assert_int_equal(fb_chan_start(i.ch), 0);
    assert_null(fb_chan_peer_key(i.ch));
    assert_int_equal(deliver(&i, &r, SIZE_MAX), 0); /* HELLO: B answers, not yet proven */
    assert_null(fb_chan_peer_key(r.ch));
    assert_int_equal(fb_chan_get_state(r.ch), FB_CHAN_HANDSHAKE);
    assert_int_equal(deliver(&r, &i, SIZE_MAX), 0); /* REPLY: A is done */
    assert_non_null(fb_chan_peer_key(i.ch));
    assert_memory_equal(fb_chan_peer_key(i.ch), id_b.pk, FB_PK_LEN);
    assert_null(fb_chan_peer_key(r.ch));
    assert_int_equal(deliver(&i, &r, SIZE_MAX), 0); /* FINISH: B is done */
    assert_non_null(fb_chan_peer_key(r.ch));
    assert_memory_equal(fb_chan_peer_key(r.ch), id_a.pk, FB_PK_LEN);
    side_close(&i);
    side_close(&r);
}

static void test_byte_by_byte(void **state)
{
    (void)state;
    side i, r;
    connect_pair(&i, &r, NULL, NULL, 1);
    uint8_t big[300];
    for (size_t k = 0; k < sizeof big; k++)
        big[k] = (uint8_t)k;
    assert_int_equal(fb_chan_write(i.ch, big, sizeof big), 0);
    assert_int_equal(fb_chan_write(i.ch, NULL, 0), 0);
    assert_int_equal(fb_chan_write(i.ch, (const uint8_t *)"x", 1), 0);
    assert_int_equal(fb_chan_write(r.ch, big, 17), 0);
    assert_int_equal(pump(&i, &r, 1), 0);
    assert_int_equal(r.frames, 3);
    assert_int_equal(r.kept[0].len, sizeof big);
    assert_memory_equal(r.kept[0].p, big, sizeof big);
    assert_int_equal(r.kept[1].len, 0);
    assert_int_equal(r.kept[2].len, 1);
    assert_int_equal(i.frames, 1);
    assert_memory_equal(i.kept[0].p, big, 17);
    side_close(&i);
    side_close(&r);
}

static void test_odd_splits_many_records(void **state)
{
    (void)state;
    static const size_t chunks[] = {2, 3, 7, 13, 29, 100, 4096};
    for (size_t c = 0; c < sizeof chunks / sizeof chunks[0]; c++) {
        side i, r;
        connect_pair(&i, &r, NULL, NULL, chunks[c]);
        uint8_t msg[64];
        for (int k = 0; k < 500; k++) {
            memset(msg, k, sizeof msg);
            size_t n = (size_t)k % sizeof msg;
            assert_int_equal(fb_chan_write(k % 2 ? r.ch : i.ch, msg, n), 0);
        }
        assert_int_equal(pump(&i, &r, chunks[c]), 0);
        assert_int_equal(i.frames, 250);
        assert_int_equal(r.frames, 250);
        assert_int_equal(r.kept[1].len, 2);
        assert_int_equal(r.kept[1].p[1], 2);
        side_close(&i);
        side_close(&r);
    }
}

/* FINISH and records written from io.established arrive in one feed call. */
static void test_handshake_and_records_in_one_feed(void **state)
{
    (void)state;
    side i, r;
    side_open(&i, FB_CHAN_INITIATOR, &id_a, NULL);
    side_open(&r, FB_CHAN_RESPONDER, &id_b, NULL);
    i.greeting = "hello from established";
    i.greeting_copies = 3;
    assert_int_equal(fb_chan_start(i.ch), 0);
    assert_int_equal(deliver(&i, &r, SIZE_MAX), 0);
    assert_int_equal(deliver(&r, &i, SIZE_MAX), 0);
    assert_int_equal(i.established, 1);
    /* i.out now holds FINISH followed by three records: one feed. */
    assert_int_equal(deliver(&i, &r, SIZE_MAX), 0);
    assert_int_equal(fb_chan_get_state(r.ch), FB_CHAN_ESTABLISHED);
    assert_int_equal(r.frames, 3);
    assert_int_equal(r.kept[2].len, strlen(i.greeting));
    assert_memory_equal(r.kept[2].p, i.greeting, strlen(i.greeting));
    side_close(&i);
    side_close(&r);
}

static void test_write_from_frame_callback(void **state)
{
    (void)state;
    side i, r;
    connect_pair(&i, &r, NULL, NULL, SIZE_MAX);
    r.echo = 1;
    assert_int_equal(fb_chan_write(i.ch, (const uint8_t *)"echo me", 7), 0);
    assert_int_equal(fb_chan_write(i.ch, (const uint8_t *)"and me", 6), 0);
    assert_int_equal(pump(&i, &r, SIZE_MAX), 0);
    assert_int_equal(r.echo_rc, 0);
    assert_int_equal(i.frames, 2);
    assert_memory_equal(i.kept[0].p, "echo me", 7);
    assert_memory_equal(i.kept[1].p, "and me", 6);
    side_close(&i);
    side_close(&r);
}

static void test_record_wire_format(void **state)
{
    (void)state;
    side i, r;
    connect_pair(&i, &r, NULL, NULL, SIZE_MAX);
    for (uint8_t k = 0; k < 3; k++) {
        assert_int_equal(fb_chan_write(i.ch, (const uint8_t *)"abcdefgh", 8), 0);
        bytes f = take_frame(&i);
        assert_int_equal(f.len, FB_CHAN_OVERHEAD + 8);
        assert_int_equal(f.p[3], 8 + 8 + 16);
        static const uint8_t zeros[7];
        assert_memory_equal(f.p + 4, zeros, 7); /* counter, big-endian */
        assert_int_equal(f.p[11], k);
        assert_memory_not_equal(f.p + 12, "abcdefgh", 8); /* not in the clear */
        assert_int_equal(feed_bytes(&r, &f), 0);
        bytes_free(&f);
    }
    assert_int_equal(r.frames, 3);
    side_close(&i);
    side_close(&r);
}

static void test_max_size_frame(void **state)
{
    (void)state;
    side i, r;
    connect_pair(&i, &r, NULL, NULL, SIZE_MAX);
    size_t n = FB_CHAN_DEFAULT_MAX_FRAME;
    uint8_t *big = malloc(n);
    assert_non_null(big);
    for (size_t k = 0; k < n; k++)
        big[k] = (uint8_t)(k * 31 + 7);
    assert_int_equal(fb_chan_write(i.ch, big, n), 0);
    assert_int_equal(fb_chan_write(r.ch, big, n), 0);
    assert_int_equal(pump(&i, &r, SIZE_MAX), 0);
    assert_int_equal(r.frames, 1);
    assert_int_equal(r.kept[0].len, n);
    assert_memory_equal(r.kept[0].p, big, n);
    assert_int_equal(i.kept[0].len, n);
    assert_memory_equal(i.kept[0].p, big, n);
    /* One byte more is refused before anything is sent. */
    assert_refused(&i, fb_chan_write(i.ch, big, n + 1), FB_ETOOBIG, 0);
    /* ... and the link carries on. */
    assert_int_equal(fb_chan_write(i.ch, big, 10), 0);
    assert_int_equal(pump(&i, &r, SIZE_MAX), 0);
    assert_int_equal(r.frames, 2);
    free(big);
    side_close(&i);
    side_close(&r);
}

/* Each side honours the other's max_frame, not its own. */
static void test_asymmetric_max_frame(void **state)
{
    (void)state;
    side_opts io = {.max_frame = 1000}, ro = {.max_frame = 2000};
    side i, r;
    connect_pair(&i, &r, &io, &ro, SIZE_MAX);
    uint8_t buf[2001] = {0};
    assert_int_equal(fb_chan_write(i.ch, buf, 2000), 0);
    assert_int_equal(fb_chan_write(r.ch, buf, 1000), 0);
    assert_int_equal(pump(&i, &r, SIZE_MAX), 0);
    assert_int_equal(r.kept[0].len, 2000);
    assert_int_equal(i.kept[0].len, 1000);
    assert_refused(&r, fb_chan_write(r.ch, buf, 1001), FB_ETOOBIG, 0);
    side_close(&i);
    side_close(&r);

    connect_pair(&i, &r, &io, &ro, SIZE_MAX);
    assert_refused(&i, fb_chan_write(i.ch, buf, 2001), FB_ETOOBIG, 0);
    side_close(&i);
    side_close(&r);
}

static void test_fresh_ephemeral_keys(void **state)
{
    (void)state;
    bytes wire[2], hello[2];
    for (int s = 0; s < 2; s++) {
        side i, r;
        side_open(&i, FB_CHAN_INITIATOR, &id_a, NULL);
        side_open(&r, FB_CHAN_RESPONDER, &id_b, NULL);
        assert_int_equal(fb_chan_start(i.ch), 0);
        hello[s] = (bytes){0};
        bytes_append(&hello[s], i.out.p, i.out.len);
        assert_int_equal(pump(&i, &r, SIZE_MAX), 0);
        assert_int_equal(fb_chan_write(i.ch, (const uint8_t *)"same plaintext", 14), 0);
        wire[s] = take_frame(&i);
        side_close(&i);
        side_close(&r);
    }
    assert_int_equal(wire[0].len, wire[1].len);
    assert_memory_equal(wire[0].p, wire[1].p, 12); /* same length and counter ... */
    assert_memory_not_equal(wire[0].p + 12, wire[1].p + 12, wire[0].len - 12); /* ... new keys */
    assert_true(hello[0].len != hello[1].len || memcmp(hello[0].p, hello[1].p, hello[0].len) != 0);
    for (int s = 0; s < 2; s++) {
        bytes_free(&wire[s]);
        bytes_free(&hello[s]);
    }
}

static void test_expected_peer_match(void **state)
{
    (void)state;
    side_opts io = {.expected_peer = id_b.pk};
    side i, r;
    connect_pair(&i, &r, &io, NULL, SIZE_MAX);
    assert_memory_equal(fb_chan_peer_key(i.ch), id_b.pk, FB_PK_LEN);
    side_close(&i);
    side_close(&r);
}

static void test_eof_between_frames(void **state)
{
    (void)state;
    side i, r;
    side_open(&r, FB_CHAN_RESPONDER, &id_b, NULL);
    assert_int_equal(fb_chan_eof(r.ch), 0); /* nothing buffered, even mid-handshake */
    side_close(&r);
    connect_pair(&i, &r, NULL, NULL, SIZE_MAX);
    assert_int_equal(fb_chan_eof(r.ch), 0);
    assert_int_equal(fb_chan_get_state(r.ch), FB_CHAN_ESTABLISHED);
    side_close(&i);
    side_close(&r);
}

/* Play the initiator with libsodium directly, following the key schedule that
 * channel.c documents, so the wire format is pinned for other implementations. */
static void test_documented_key_schedule(void **state)
{
    (void)state;
    uint8_t e_i[32], e_i_sk[32];
    hello_spec h = good_hello(e_i);
    crypto_box_keypair(e_i, e_i_sk); /* replace good_hello's key with one whose secret we keep */
    bytes hello = craft_hello(&h);
    side r;
    assert_int_equal(responder_verdict(&r, &hello), 0);
    bytes reply = take_frame(&r);

    Fedbft__Envelope *env = fedbft__envelope__unpack(NULL, reply.len - 4, reply.p + 4);
    assert_non_null(env);
    assert_int_equal(env->type, FEDBFT__MSG_TYPE__MSG_CHANNEL_REPLY);
    Fedbft__ChannelReply *rep =
        fedbft__channel_reply__unpack(NULL, env->payload.len, env->payload.data);
    assert_non_null(rep);
    assert_int_equal(rep->identity_key.len, FB_PK_LEN);
    assert_memory_equal(rep->identity_key.data, id_b.pk, FB_PK_LEN);
    assert_int_equal(rep->max_frame, FB_CHAN_DEFAULT_MAX_FRAME);
    uint8_t e_r[32], want[FB_DIGEST_LEN], th[FB_DIGEST_LEN];
    memcpy(e_r, rep->ephemeral_key.data, 32);
    /* H(hello) covers the whole HELLO frame, length header included. */
    fb_digest(FB_DOM_TRANSCRIPT, hello.p, hello.len, want);
    assert_int_equal(rep->transcript.len, FB_DIGEST_LEN);
    assert_memory_equal(rep->transcript.data, want, FB_DIGEST_LEN);
    fedbft__channel_reply__free_unpacked(rep, NULL);
    fedbft__envelope__free_unpacked(env, NULL);

    fb_digest_ctx ctx;
    fb_digest_init(&ctx, FB_DOM_TRANSCRIPT);
    fb_digest_update(&ctx, hello.p, hello.len);
    fb_digest_update(&ctx, reply.p, reply.len);
    fb_digest_final(&ctx, th);

    uint8_t x_a_sk[32], x_b[32], dh[3][32], k_i2r[32], k_r2i[32];
    assert_int_equal(crypto_sign_ed25519_sk_to_curve25519(x_a_sk, id_a.sk), 0);
    assert_int_equal(crypto_sign_ed25519_pk_to_curve25519(x_b, id_b.pk), 0);
    assert_int_equal(crypto_scalarmult(dh[0], e_i_sk, e_r), 0);
    assert_int_equal(crypto_scalarmult(dh[1], e_i_sk, x_b), 0);
    assert_int_equal(crypto_scalarmult(dh[2], x_a_sk, e_r), 0);
    for (uint8_t label = 1; label <= 2; label++) {
        fb_digest_init(&ctx, FB_DOM_SESSION_KEY);
        fb_digest_update(&ctx, &label, 1);
        fb_digest_update(&ctx, dh, sizeof dh);
        fb_digest_update(&ctx, th, sizeof th);
        fb_digest_final(&ctx, label == 1 ? k_i2r : k_r2i);
    }

    Fedbft__ChannelFinish fin = FEDBFT__CHANNEL_FINISH__INIT;
    fin.transcript.data = th;
    fin.transcript.len = sizeof th;
    uint8_t payload[64];
    size_t plen = fedbft__channel_finish__pack(&fin, payload);
    bytes finish = seal_frame(FEDBFT__MSG_TYPE__MSG_CHANNEL_FINISH, payload, plen, &id_a);
    assert_int_equal(feed_bytes(&r, &finish), 0);
    assert_int_equal(fb_chan_get_state(r.ch), FB_CHAN_ESTABLISHED);

    /* B -> A: counter 0, nonce = counter || 16 zero bytes, AD = counter. */
    assert_int_equal(fb_chan_write(r.ch, (const uint8_t *)"to A", 4), 0);
    bytes rec = take_frame(&r);
    uint8_t nonce[24] = {0}, plain[4];
    memcpy(nonce, rec.p + 4, 8);
    unsigned long long mlen = 0;
    assert_int_equal(crypto_aead_xchacha20poly1305_ietf_decrypt(
                         plain, &mlen, NULL, rec.p + 12, rec.len - 12, rec.p + 4, 8, nonce, k_r2i),
                     0);
    assert_int_equal(mlen, 4);
    assert_memory_equal(plain, "to A", 4);

    /* A -> B with the other key. */
    uint8_t out[4 + 8 + 4 + 16] = {0, 0, 0, 8 + 4 + 16};
    memset(nonce, 0, sizeof nonce);
    crypto_aead_xchacha20poly1305_ietf_encrypt(out + 12, NULL, (const uint8_t *)"to B", 4, out + 4,
                                               8, NULL, nonce, k_i2r);
    assert_int_equal(fb_chan_feed(r.ch, out, sizeof out), 0);
    assert_int_equal(r.frames, 1);
    assert_memory_equal(r.kept[0].p, "to B", 4);

    bytes_free(&hello);
    bytes_free(&reply);
    bytes_free(&finish);
    bytes_free(&rec);
    side_close(&r);
}

/* ------------------------------------------------------------ handshake rejections */

static void test_unknown_initiator_key(void **state)
{
    (void)state;
    uint8_t only_c[1][FB_PK_LEN];
    memcpy(only_c[0], id_c.pk, FB_PK_LEN);
    side_opts ro = {.allowed = (const uint8_t(*)[FB_PK_LEN])only_c, .allowed_count = 1};
    side i, r;
    side_open(&i, FB_CHAN_INITIATOR, &id_a, NULL);
    side_open(&r, FB_CHAN_RESPONDER, &id_b, &ro);
    assert_int_equal(fb_chan_start(i.ch), 0);
    assert_failed(&r, pump(&i, &r, SIZE_MAX), FB_EUNKNOWNKEY);
    assert_int_equal(r.out.len, 0); /* no REPLY to a stranger */
    assert_int_equal(r.established, 0);
    assert_null(fb_chan_peer_key(r.ch));
    assert_int_equal(fb_chan_get_state(i.ch), FB_CHAN_HANDSHAKE);
    side_close(&i);
    side_close(&r);
}

static void test_unknown_responder_key(void **state)
{
    (void)state;
    uint8_t only_c[1][FB_PK_LEN];
    memcpy(only_c[0], id_c.pk, FB_PK_LEN);
    side_opts io = {.allowed = (const uint8_t(*)[FB_PK_LEN])only_c, .allowed_count = 1};
    side i, r;
    side_open(&i, FB_CHAN_INITIATOR, &id_a, &io);
    side_open(&r, FB_CHAN_RESPONDER, &id_b, NULL);
    assert_int_equal(fb_chan_start(i.ch), 0);
    assert_failed(&i, pump(&i, &r, SIZE_MAX), FB_EUNKNOWNKEY);
    assert_int_equal(i.out.len, 0); /* no FINISH */
    assert_int_equal(i.established, 0);
    assert_null(fb_chan_peer_key(i.ch));
    assert_int_equal(fb_chan_get_state(r.ch), FB_CHAN_HANDSHAKE);
    side_close(&i);
    side_close(&r);
}

static void test_expected_peer_mismatch(void **state)
{
    (void)state;
    side_opts io = {.expected_peer = id_c.pk}; /* dialled C, reached B (allowed) */
    side i, r;
    side_open(&i, FB_CHAN_INITIATOR, &id_a, &io);
    side_open(&r, FB_CHAN_RESPONDER, &id_b, NULL);
    assert_int_equal(fb_chan_start(i.ch), 0);
    assert_failed(&i, pump(&i, &r, SIZE_MAX), FB_EUNKNOWNKEY);
    assert_int_equal(i.established, 0);
    side_close(&i);
    side_close(&r);
}

static void flip_signature(Fedbft__Envelope *env)
{
    env->signature.data[0] ^= 0x01;
}

static void flip_payload(Fedbft__Envelope *env)
{
    env->payload.data[env->payload.len - 1] ^= 0x01;
}

/* Take the initiator's HELLO frame, let edit change its Envelope, re-frame it. */
static bytes edited_hello(side *i, void (*edit)(Fedbft__Envelope *))
{
    bytes f = take_frame(i);
    Fedbft__Envelope *env = fedbft__envelope__unpack(NULL, f.len - 4, f.p + 4);
    assert_non_null(env);
    edit(env);
    size_t n = fedbft__envelope__get_packed_size(env);
    bytes out = {0};
    uint8_t hdr[4];
    put_be32(hdr, (uint32_t)n);
    bytes_append(&out, hdr, 4);
    uint8_t *body = malloc(n);
    assert_non_null(body);
    fedbft__envelope__pack(env, body);
    bytes_append(&out, body, n);
    free(body);
    fedbft__envelope__free_unpacked(env, NULL);
    bytes_free(&f);
    return out;
}

static void test_bad_hello_signature(void **state)
{
    (void)state;
    void (*edits[])(Fedbft__Envelope *) = {flip_signature, flip_payload};
    for (size_t e = 0; e < 2; e++) {
        side i, r;
        side_open(&i, FB_CHAN_INITIATOR, &id_a, NULL);
        side_open(&r, FB_CHAN_RESPONDER, &id_b, NULL);
        assert_int_equal(fb_chan_start(i.ch), 0);
        bytes hello = edited_hello(&i, edits[e]);
        assert_failed(&r, feed_bytes(&r, &hello), FB_EAUTH);
        assert_int_equal(r.out.len, 0);
        bytes_free(&hello);
        side_close(&i);
        side_close(&r);
    }
}

/* A hello claiming A's key but signed by C (who is allowed) is a forgery. */
static void test_hello_signed_by_other_key(void **state)
{
    (void)state;
    uint8_t eph[32];
    hello_spec h = good_hello(eph);
    h.signer = &id_c;
    bytes f = craft_hello(&h);
    side r;
    assert_failed(&r, responder_verdict(&r, &f), FB_EAUTH);
    side_close(&r);
    bytes_free(&f);

    /* The same hello, correctly signed, is accepted: the harness is sound. */
    h.signer = &id_a;
    f = craft_hello(&h);
    assert_int_equal(responder_verdict(&r, &f), 0);
    assert_true(r.out.len > 0);
    side_close(&r);
    bytes_free(&f);
}

static void test_hello_wrong_envelope_type(void **state)
{
    (void)state;
    static const int types[] = {FEDBFT__MSG_TYPE__MSG_CHANNEL_FINISH,
                                FEDBFT__MSG_TYPE__MSG_CHANNEL_REPLY, FEDBFT__MSG_TYPE__MSG_PREPARE};
    for (size_t t = 0; t < sizeof types / sizeof types[0]; t++) {
        uint8_t eph[32];
        hello_spec h = good_hello(eph);
        h.type = types[t];
        bytes f = craft_hello(&h);
        side r;
        assert_failed(&r, responder_verdict(&r, &f), FB_EPROTO);
        side_close(&r);
        bytes_free(&f);
    }
}

static void test_hello_bad_fields(void **state)
{
    (void)state;
    uint8_t long_key[33] = {0}, zero_eph[32] = {0};
    memcpy(long_key, id_a.pk, FB_PK_LEN);
    for (int k = 0; k < 5; k++) {
        uint8_t eph[32];
        hello_spec h = good_hello(eph);
        int want = FB_EPROTO;
        switch (k) {
        case 0:
            h.ephemeral_len = 31;
            break;
        case 1:
            h.identity = long_key;
            h.identity_len = 33;
            break;
        case 2:
            h.identity_len = 0;
            break;
        case 3:
            h.max_frame = 0;
            break;
        case 4:
            h.ephemeral = zero_eph;
            break; /* low-order: DH would be all zero */
        }
        bytes f = craft_hello(&h);
        side r;
        assert_failed(&r, responder_verdict(&r, &f), want);
        assert_int_equal(r.out.len, 0);
        side_close(&r);
        bytes_free(&f);
    }
}

static void test_garbage_instead_of_hello(void **state)
{
    (void)state;
    side r;
    /* Framed, but not an Envelope. */
    uint8_t junk[4 + 64];
    put_be32(junk, 64);
    memset(junk + 4, 0xff, 64);
    side_open(&r, FB_CHAN_RESPONDER, &id_b, NULL);
    assert_failed(&r, fb_chan_feed(r.ch, junk, sizeof junk), FB_EINVAL);
    side_close(&r);

    /* An empty frame parses as an Envelope of version 0. */
    uint8_t empty[4] = {0};
    side_open(&r, FB_CHAN_RESPONDER, &id_b, NULL);
    assert_failed(&r, fb_chan_feed(r.ch, empty, sizeof empty), FB_EVERSION);
    side_close(&r);

    /* Not even framed: an HTTP request reads as a huge length header. */
    const char *http = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    side_open(&r, FB_CHAN_RESPONDER, &id_b, NULL);
    assert_failed(&r, fb_chan_feed(r.ch, (const uint8_t *)http, strlen(http)), FB_ETOOBIG);
    side_close(&r);

    /* Random frames: always an error, never a crash (ASan/UBSan builds check). */
    uint8_t seed[randombytes_SEEDBYTES] = {42};
    uint8_t buf[4 + 512];
    for (int k = 0; k < 300; k++) {
        seed[1] = (uint8_t)k;
        seed[2] = (uint8_t)(k >> 8);
        size_t n = 1 + (size_t)k % 512;
        put_be32(buf, (uint32_t)n);
        randombytes_buf_deterministic(buf + 4, n, seed);
        side_open(&r, FB_CHAN_RESPONDER, &id_b, NULL);
        int rc = fb_chan_feed(r.ch, buf, 4 + n);
        assert_true(rc < 0);
        assert_failed(&r, rc, rc);
        side_close(&r);
    }
}

/* A genuine HELLO with bits flipped anywhere in its Envelope is always rejected. */
static void test_mutated_hello(void **state)
{
    (void)state;
    side i;
    side_open(&i, FB_CHAN_INITIATOR, &id_a, NULL);
    assert_int_equal(fb_chan_start(i.ch), 0);
    bytes hello = take_frame(&i);
    side_close(&i);
    uint8_t seed[randombytes_SEEDBYTES] = {7};
    for (int k = 0; k < 400; k++) {
        bytes m = {0};
        bytes_append(&m, hello.p, hello.len);
        uint8_t pick[6];
        seed[1] = (uint8_t)k;
        seed[2] = (uint8_t)(k >> 8);
        randombytes_buf_deterministic(pick, sizeof pick, seed);
        for (int f = 0; f < 1 + k % 3; f++) {
            size_t at = 4 + (size_t)pick[2 * f] * (m.len - 4) / 256;
            m.p[at] ^= (uint8_t)(pick[2 * f + 1] | 1);
        }
        side r;
        int rc = responder_verdict(&r, &m);
        if (rc == 0) /* flips that cancel out leave the original, which must pass */
            assert_memory_equal(m.p, hello.p, hello.len);
        else
            assert_failed(&r, rc, rc);
        side_close(&r);
        bytes_free(&m);
    }
    bytes_free(&hello);
}

static void test_handshake_frame_too_big(void **state)
{
    (void)state;
    side r;
    side_open(&r, FB_CHAN_RESPONDER, &id_b, NULL);
    uint8_t hdr[4];
    put_be32(hdr, 1u << 20);
    assert_failed(&r, fb_chan_feed(r.ch, hdr, 4), FB_ETOOBIG);
    side_close(&r);
}

/* A REPLY recorded from another session answers a different HELLO. */
static void test_replayed_reply(void **state)
{
    (void)state;
    side i, r;
    side_open(&i, FB_CHAN_INITIATOR, &id_a, NULL);
    side_open(&r, FB_CHAN_RESPONDER, &id_b, NULL);
    assert_int_equal(fb_chan_start(i.ch), 0);
    assert_int_equal(deliver(&i, &r, SIZE_MAX), 0);
    bytes old_reply = take_frame(&r);
    side_close(&i);
    side_close(&r);

    side_open(&i, FB_CHAN_INITIATOR, &id_a, NULL);
    assert_int_equal(fb_chan_start(i.ch), 0);
    assert_failed(&i, feed_bytes(&i, &old_reply), FB_EAUTH);
    assert_null(fb_chan_peer_key(i.ch));
    bytes_free(&old_reply);
    side_close(&i);
}

/* The responder's REPLY arrives with the wrong envelope type. */
static void test_reply_wrong_type(void **state)
{
    (void)state;
    uint8_t eph[32];
    hello_spec h = good_hello(eph);
    h.identity = id_b.pk;
    h.signer = &id_b;
    bytes f = craft_hello(&h); /* a HELLO where a REPLY belongs */
    side i;
    side_open(&i, FB_CHAN_INITIATOR, &id_a, NULL);
    assert_int_equal(fb_chan_start(i.ch), 0);
    assert_failed(&i, feed_bytes(&i, &f), FB_EPROTO);
    side_close(&i);
    bytes_free(&f);
}

/* Play the initiator by hand so that FINISH can be forged. */
static void test_bad_finish(void **state)
{
    (void)state;
    for (int k = 0; k < 3; k++) {
        uint8_t eph[32];
        hello_spec h = good_hello(eph);
        bytes hello = craft_hello(&h);
        side r;
        assert_int_equal(responder_verdict(&r, &hello), 0);
        bytes reply = take_frame(&r);

        uint8_t wrong[32];
        memset(wrong, 0x42, sizeof wrong);
        Fedbft__ChannelFinish fin = FEDBFT__CHANNEL_FINISH__INIT;
        fin.transcript.data = wrong;
        fin.transcript.len = k == 2 ? 31 : 32;
        uint8_t payload[64];
        size_t plen = fedbft__channel_finish__pack(&fin, payload);
        const fb_identity *signer = k == 1 ? &id_c : &id_a;
        bytes finish = seal_frame(FEDBFT__MSG_TYPE__MSG_CHANNEL_FINISH, payload, plen, signer);
        int want = k == 2 ? FB_EPROTO : FB_EAUTH;
        assert_failed(&r, feed_bytes(&r, &finish), want);
        assert_int_equal(r.established, 0);
        assert_null(fb_chan_peer_key(r.ch));
        bytes_free(&hello);
        bytes_free(&reply);
        bytes_free(&finish);
        side_close(&r);
    }
}

/* ------------------------------------------------------------ record rejections */

static void tamper_at(size_t offset_from_start, int from_end)
{
    side i, r;
    connect_pair(&i, &r, NULL, NULL, SIZE_MAX);
    assert_int_equal(fb_chan_write(i.ch, (const uint8_t *)"transfer 100 to alice", 21), 0);
    bytes f = take_frame(&i);
    size_t at = from_end ? f.len - 1 - offset_from_start : offset_from_start;
    f.p[at] ^= 0x80;
    assert_failed(&r, feed_bytes(&r, &f), FB_EAUTH);
    assert_int_equal(r.frames, 0);
    bytes_free(&f);
    side_close(&i);
    side_close(&r);
}

static void test_tampered_record(void **state)
{
    (void)state;
    tamper_at(4 + 8 + 3, 0); /* a ciphertext byte */
    tamper_at(0, 1);         /* the last tag byte */
    tamper_at(4 + 7, 0);     /* the counter: it is associated data and nonce */
}

/* Records from one session do not open in another (keys differ per session). */
static void test_record_from_other_session(void **state)
{
    (void)state;
    side i1, r1, i2, r2;
    connect_pair(&i1, &r1, NULL, NULL, SIZE_MAX);
    connect_pair(&i2, &r2, NULL, NULL, SIZE_MAX);
    assert_int_equal(fb_chan_write(i1.ch, (const uint8_t *)"for session 1", 13), 0);
    bytes f = take_frame(&i1);
    assert_failed(&r2, feed_bytes(&r2, &f), FB_EAUTH);
    /* Nor does a record bounce back to its sender (the directions have separate keys). */
    assert_failed(&i1, feed_bytes(&i1, &f), FB_EAUTH);
    bytes_free(&f);
    side_close(&i1);
    side_close(&r1);
    side_close(&i2);
    side_close(&r2);
}

static void test_replayed_record(void **state)
{
    (void)state;
    side i, r;
    connect_pair(&i, &r, NULL, NULL, SIZE_MAX);
    assert_int_equal(fb_chan_write(i.ch, (const uint8_t *)"once", 4), 0);
    bytes f0 = take_frame(&i);
    assert_int_equal(fb_chan_write(i.ch, (const uint8_t *)"twice", 5), 0);
    bytes f1 = take_frame(&i);
    assert_int_equal(feed_bytes(&r, &f0), 0);
    assert_int_equal(feed_bytes(&r, &f1), 0);
    assert_failed(&r, feed_bytes(&r, &f0), FB_EREPLAY);
    assert_int_equal(r.frames, 2);
    assert_non_null(strstr(fb_chan_error(r.ch), "replayed"));
    bytes_free(&f0);
    bytes_free(&f1);
    side_close(&i);
    side_close(&r);
}

static void test_reordered_records(void **state)
{
    (void)state;
    side i, r;
    connect_pair(&i, &r, NULL, NULL, SIZE_MAX);
    assert_int_equal(fb_chan_write(i.ch, (const uint8_t *)"first", 5), 0);
    bytes f0 = take_frame(&i);
    assert_int_equal(fb_chan_write(i.ch, (const uint8_t *)"second", 6), 0);
    bytes f1 = take_frame(&i);
    assert_failed(&r, feed_bytes(&r, &f1), FB_EORDER);
    assert_int_equal(r.frames, 0);
    bytes_free(&f0);
    bytes_free(&f1);
    side_close(&i);
    side_close(&r);
}

static void test_truncated_record(void **state)
{
    (void)state;
    static const uint32_t short_lens[] = {0, 1, 8, 23};
    for (size_t k = 0; k < sizeof short_lens / sizeof short_lens[0]; k++) {
        side i, r;
        connect_pair(&i, &r, NULL, NULL, SIZE_MAX);
        uint8_t hdr[4];
        put_be32(hdr, short_lens[k]);
        /* Rejected on the header alone, before any body byte. */
        assert_failed(&r, fb_chan_feed(r.ch, hdr, 4), FB_ETRUNC);
        side_close(&i);
        side_close(&r);
    }
}

static void test_eof_mid_frame(void **state)
{
    (void)state;
    side i, r;
    connect_pair(&i, &r, NULL, NULL, SIZE_MAX);
    assert_int_equal(fb_chan_write(i.ch, (const uint8_t *)"a frame cut in half", 19), 0);
    bytes f = take_frame(&i);
    assert_int_equal(fb_chan_feed(r.ch, f.p, f.len / 2), 0);
    assert_failed(&r, fb_chan_eof(r.ch), FB_ETRUNC);
    assert_int_equal(r.frames, 0);
    side_close(&i);
    side_close(&r);

    /* Inside the length header. */
    connect_pair(&i, &r, NULL, NULL, SIZE_MAX);
    assert_int_equal(fb_chan_feed(r.ch, f.p, 2), 0);
    assert_failed(&r, fb_chan_eof(r.ch), FB_ETRUNC);
    side_close(&i);
    side_close(&r);

    /* Inside a handshake frame. */
    side_open(&i, FB_CHAN_INITIATOR, &id_a, NULL);
    side_open(&r, FB_CHAN_RESPONDER, &id_b, NULL);
    assert_int_equal(fb_chan_start(i.ch), 0);
    assert_int_equal(fb_chan_feed(r.ch, i.out.p, i.out.len - 1), 0);
    assert_failed(&r, fb_chan_eof(r.ch), FB_ETRUNC);
    side_close(&i);
    side_close(&r);
    bytes_free(&f);
}

static void test_oversized_frame_header(void **state)
{
    (void)state;
    side_opts ro = {.max_frame = 1000};
    side i, r;
    connect_pair(&i, &r, NULL, &ro, SIZE_MAX);
    uint8_t hdr[4];
    put_be32(hdr, 1000 + 8 + 16); /* exactly the limit: accepted, waits for the body */
    assert_int_equal(fb_chan_feed(r.ch, hdr, 4), 0);
    side_close(&i);
    side_close(&r);

    connect_pair(&i, &r, NULL, &ro, SIZE_MAX);
    put_be32(hdr, 1000 + 8 + 16 + 1);
    assert_int_equal(fb_chan_feed(r.ch, hdr, 3), 0);
    assert_failed(&r, fb_chan_feed(r.ch, hdr + 3, 1), FB_ETOOBIG); /* on the 4th header byte */
    side_close(&i);
    side_close(&r);

    connect_pair(&i, &r, NULL, &ro, SIZE_MAX);
    put_be32(hdr, UINT32_MAX);
    assert_failed(&r, fb_chan_feed(r.ch, hdr, 4), FB_ETOOBIG);
    side_close(&i);
    side_close(&r);
}

/* ------------------------------------------------------------ misuse and state */

static void test_write_before_handshake(void **state)
{
    (void)state;
    side i, r;
    side_open(&r, FB_CHAN_RESPONDER, &id_b, NULL);
    assert_refused(&r, fb_chan_write(r.ch, (const uint8_t *)"early", 5), FB_ESTATE, 0);
    side_close(&r);

    side_open(&i, FB_CHAN_INITIATOR, &id_a, NULL);
    assert_int_equal(fb_chan_start(i.ch), 0);
    size_t hello_len = i.out.len;
    assert_refused(&i, fb_chan_write(i.ch, (const uint8_t *)"early", 5), FB_ESTATE, hello_len);
    side_close(&i);

    /* The responder has sent REPLY but not yet seen FINISH: still too early. */
    side_open(&i, FB_CHAN_INITIATOR, &id_a, NULL);
    side_open(&r, FB_CHAN_RESPONDER, &id_b, NULL);
    assert_int_equal(fb_chan_start(i.ch), 0);
    assert_int_equal(deliver(&i, &r, SIZE_MAX), 0);
    size_t reply_len = r.out.len;
    assert_refused(&r, fb_chan_write(r.ch, (const uint8_t *)"early", 5), FB_ESTATE, reply_len);
    /* the refused write did not derail the handshake */
    assert_int_equal(pump(&i, &r, SIZE_MAX), 0);
    assert_int_equal(fb_chan_get_state(i.ch), FB_CHAN_ESTABLISHED);
    assert_int_equal(fb_chan_get_state(r.ch), FB_CHAN_ESTABLISHED);
    side_close(&i);
    side_close(&r);
}

static void test_start_misuse(void **state)
{
    (void)state;
    side s;
    side_open(&s, FB_CHAN_RESPONDER, &id_b, NULL);
    assert_failed(&s, fb_chan_start(s.ch), FB_ESTATE);
    side_close(&s);

    side_open(&s, FB_CHAN_INITIATOR, &id_a, NULL);
    assert_int_equal(fb_chan_start(s.ch), 0);
    assert_failed(&s, fb_chan_start(s.ch), FB_ESTATE);
    side_close(&s);

    side_open(&s, FB_CHAN_INITIATOR, &id_a, NULL);
    uint8_t hdr[4] = {0};
    assert_failed(&s, fb_chan_feed(s.ch, hdr, 4), FB_ESTATE);
    side_close(&s);
}

static void test_calls_after_failure(void **state)
{
    (void)state;
    side i, r;
    connect_pair(&i, &r, NULL, NULL, SIZE_MAX);
    uint8_t hdr[4] = {0};
    assert_failed(&r, fb_chan_feed(r.ch, hdr, 4), FB_ETRUNC);
    char first[256];
    strncpy(first, fb_chan_error(r.ch), sizeof first - 1);
    first[sizeof first - 1] = '\0';

    assert_int_equal(fb_chan_feed(r.ch, hdr, 4), FB_ESTATE);
    assert_int_equal(fb_chan_feed(r.ch, NULL, 0), FB_ESTATE);
    assert_int_equal(fb_chan_write(r.ch, (const uint8_t *)"x", 1), FB_ESTATE);
    assert_int_equal(fb_chan_eof(r.ch), FB_ESTATE);
    assert_int_equal(fb_chan_start(r.ch), FB_ESTATE);
    assert_int_equal(fb_chan_get_state(r.ch), FB_CHAN_FAILED);
    assert_string_equal(fb_chan_error(r.ch), first); /* the first cause is kept */
    assert_int_equal(r.out.len, 0);
    /* The peer key proven before the failure still names who failed. */
    assert_memory_equal(fb_chan_peer_key(r.ch), id_a.pk, FB_PK_LEN);
    side_close(&i);
    side_close(&r);

    /* Also after a failed handshake. */
    side_open(&r, FB_CHAN_RESPONDER, &id_b, NULL);
    assert_failed(&r, fb_chan_feed(r.ch, (const uint8_t *)"\xff\xff\xff\xff", 4), FB_ETOOBIG);
    assert_int_equal(fb_chan_feed(r.ch, hdr, 1), FB_ESTATE);
    assert_int_equal(fb_chan_write(r.ch, hdr, 1), FB_ESTATE);
    assert_int_equal(fb_chan_eof(r.ch), FB_ESTATE);
    assert_null(fb_chan_peer_key(r.ch));
    side_close(&r);
}

/* Feeding the channel from inside its own io.frame is refused, not corrupting. */
static void test_feed_reentry_refused(void **state)
{
    (void)state;
    side i, r;
    connect_pair(&i, &r, NULL, NULL, SIZE_MAX);
    r.refeed = 1;
    assert_int_equal(fb_chan_write(i.ch, (const uint8_t *)"abcd", 4), 0);
    int rc = deliver(&i, &r, SIZE_MAX);
    assert_int_equal(r.refeed_rc, FB_ESTATE);
    assert_failed(&r, rc, FB_ESTATE);
    side_close(&i);
    side_close(&r);
}

static void test_new_rejects_bad_config(void **state)
{
    (void)state;
    side s;
    memset(&s, 0, sizeof s);
    fb_chan_config good = {
        .role = FB_CHAN_RESPONDER,
        .self = &id_b,
        .allowed = (const uint8_t(*)[FB_PK_LEN])all_keys,
        .allowed_count = 3,
        .io = {.send = on_send, .frame = on_frame, .arg = &s},
    };
    fb_chan *ch = NULL;
    assert_int_equal(fb_chan_new(&good, &ch), 0);
    fb_chan_free(ch);
    fb_chan_free(NULL);

    assert_int_equal(fb_chan_new(NULL, &ch), FB_EINVAL);
    assert_int_equal(fb_chan_new(&good, NULL), FB_EINVAL);
    for (int k = 0; k < 8; k++) {
        fb_chan_config c = good;
        switch (k) {
        case 0:
            c.role = (fb_chan_role)0;
            break;
        case 1:
            c.self = NULL;
            break;
        case 2:
            c.allowed = NULL;
            break;
        case 3:
            c.allowed_count = 0;
            break;
        case 4:
            c.io.send = NULL;
            break;
        case 5:
            c.io.frame = NULL;
            break;
        case 6:
            c.expected_peer = id_a.pk;
            break; /* initiator only */
        case 7:
            c.max_frame = UINT32_MAX;
            break; /* + overhead overflows the length */
        }
        ch = NULL;
        assert_int_equal(fb_chan_new(&c, &ch), FB_EINVAL);
        assert_null(ch);
    }
}

/* The allow-list is copied: changing the caller's array later has no effect. */
static void test_allow_list_copied(void **state)
{
    (void)state;
    uint8_t list[2][FB_PK_LEN];
    memcpy(list[0], id_a.pk, FB_PK_LEN);
    memcpy(list[1], id_c.pk, FB_PK_LEN);
    side_opts ro = {.allowed = (const uint8_t(*)[FB_PK_LEN])list, .allowed_count = 2};
    side i, r;
    side_open(&i, FB_CHAN_INITIATOR, &id_a, NULL);
    side_open(&r, FB_CHAN_RESPONDER, &id_b, &ro);
    memset(list, 0, sizeof list);
    assert_int_equal(fb_chan_start(i.ch), 0);
    assert_int_equal(pump(&i, &r, SIZE_MAX), 0);
    assert_int_equal(fb_chan_get_state(r.ch), FB_CHAN_ESTABLISHED);
    side_close(&i);
    side_close(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_handshake_and_data),
        cmocka_unit_test(test_peer_key_reported),
        cmocka_unit_test(test_byte_by_byte),
        cmocka_unit_test(test_odd_splits_many_records),
        cmocka_unit_test(test_handshake_and_records_in_one_feed),
        cmocka_unit_test(test_write_from_frame_callback),
        cmocka_unit_test(test_record_wire_format),
        cmocka_unit_test(test_max_size_frame),
        cmocka_unit_test(test_asymmetric_max_frame),
        cmocka_unit_test(test_fresh_ephemeral_keys),
        cmocka_unit_test(test_expected_peer_match),
        cmocka_unit_test(test_eof_between_frames),
        cmocka_unit_test(test_documented_key_schedule),
        cmocka_unit_test(test_unknown_initiator_key),
        cmocka_unit_test(test_unknown_responder_key),
        cmocka_unit_test(test_expected_peer_mismatch),
        cmocka_unit_test(test_bad_hello_signature),
        cmocka_unit_test(test_hello_signed_by_other_key),
        cmocka_unit_test(test_hello_wrong_envelope_type),
        cmocka_unit_test(test_hello_bad_fields),
        cmocka_unit_test(test_garbage_instead_of_hello),
        cmocka_unit_test(test_mutated_hello),
        cmocka_unit_test(test_handshake_frame_too_big),
        cmocka_unit_test(test_replayed_reply),
        cmocka_unit_test(test_reply_wrong_type),
        cmocka_unit_test(test_bad_finish),
        cmocka_unit_test(test_tampered_record),
        cmocka_unit_test(test_record_from_other_session),
        cmocka_unit_test(test_replayed_record),
        cmocka_unit_test(test_reordered_records),
        cmocka_unit_test(test_truncated_record),
        cmocka_unit_test(test_eof_mid_frame),
        cmocka_unit_test(test_oversized_frame_header),
        cmocka_unit_test(test_write_before_handshake),
        cmocka_unit_test(test_start_misuse),
        cmocka_unit_test(test_calls_after_failure),
        cmocka_unit_test(test_feed_reentry_refused),
        cmocka_unit_test(test_new_rejects_bad_config),
        cmocka_unit_test(test_allow_list_copied),
    };
    return cmocka_run_group_tests(tests, setup_keys, NULL);
}
