/* channel.c - the secure channel: a signed ephemeral handshake, then AEAD records.
 *
 * Choices the header leaves open, fixed here (both ends must agree):
 *
 *  - Transcript.  H() is BLAKE2b-256 in domain FB_DOM_TRANSCRIPT over whole
 *    handshake frames as they travel on the wire: the 4-byte length header and
 *    the serialized Envelope.  H(hello) covers the HELLO frame; H(hello||reply)
 *    covers the HELLO frame followed by the REPLY frame.  Including the length
 *    headers makes the concatenation unambiguous.
 *
 *  - Session keys.  For each direction, BLAKE2b-256 in domain
 *    FB_DOM_SESSION_KEY over  label || DH(e_i,e_r) || DH(e_i,x_r) ||
 *    DH(x_i,e_r) || H(hello||reply), where label is one byte: 0x01 for
 *    initiator->responder, 0x02 for responder->initiator.  A DH result of all
 *    zeros (a low-order point from the peer) fails the handshake.
 *
 *  - Records.  Nonce (24 bytes) = the 8-byte big-endian counter followed by 16
 *    zero bytes; associated data = the same 8 counter bytes as sent.  Each
 *    direction has its own key and its own counter starting at 0, so a
 *    (key, nonce) pair is never reused.  The receiver authenticates first and
 *    checks the counter second, so FB_EREPLAY / FB_EORDER are reported only for
 *    genuine records and any bit flip (counter included) is FB_EAUTH.
 *
 *  - Handshake frames larger than HANDSHAKE_FRAME_MAX are FB_ETOOBIG.  A peer
 *    that advertises max_frame 0 violates the protocol (FB_EPROTO); one that
 *    advertises more than fits a 32-bit frame length is clamped.
 *
 *  - Handshake errors: an unparsable Envelope keeps fb_env_open's code
 *    (FB_EINVAL, FB_EPROTO, FB_EVERSION); wrong message type, bad key or
 *    transcript length, max_frame 0 and a low-order key are FB_EPROTO; a bad
 *    signature or a transcript that does not match is FB_EAUTH; a key outside
 *    the allow-list or other than expected_peer is FB_EUNKNOWNKEY.
 *
 *  - As channel.h says, every error from the peer is final.  A write the
 *    caller should not have made (before the handshake completes, above the
 *    peer's limit) is refused with its code and changes nothing.
 *
 * Re-entrancy: io.frame and io.established may call fb_chan_write (an echo
 * server works); they must not call fb_chan_free.  A nested fb_chan_feed, or
 * any call into the channel from io.send, fails the channel with FB_ESTATE.
 */
#include "channel.h"

#include "digest.h"
#include "envelope.h"
#include "fb_error.h"
#include "sig.h"

#include <inttypes.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define HDR_LEN 4
#define CTR_LEN 8
#define TAG_LEN 16
#define KEY_LEN 32
#define NONCE_LEN 24
#define DH_LEN 32
#define RECORD_OVERHEAD (CTR_LEN + TAG_LEN) /* body bytes beyond the plaintext */
/* A HELLO is about 150 bytes; anything far larger is not a fedbft handshake. */
#define HANDSHAKE_FRAME_MAX 4096
#define HANDSHAKE_PAYLOAD_MAX 256
#define MAX_FRAME_LIMIT (UINT32_MAX - RECORD_OVERHEAD)

_Static_assert(TAG_LEN == crypto_aead_xchacha20poly1305_ietf_ABYTES, "AEAD tag size");
_Static_assert(KEY_LEN == crypto_aead_xchacha20poly1305_ietf_KEYBYTES, "AEAD key size");
_Static_assert(NONCE_LEN == crypto_aead_xchacha20poly1305_ietf_NPUBBYTES, "AEAD nonce size");
_Static_assert(DH_LEN == crypto_scalarmult_BYTES && DH_LEN == crypto_box_PUBLICKEYBYTES &&
                   DH_LEN == crypto_box_SECRETKEYBYTES,
               "X25519 sizes");
_Static_assert(FB_CHAN_OVERHEAD == HDR_LEN + RECORD_OVERHEAD, "channel.h overhead");

#define LABEL_I2R 0x01
#define LABEL_R2I 0x02

/* Where the handshake stands; the public state only says HANDSHAKE. */
typedef enum hs_step {
    STEP_UNSTARTED,   /* initiator before fb_chan_start */
    STEP_WAIT_HELLO,  /* responder */
    STEP_WAIT_REPLY,  /* initiator, HELLO sent */
    STEP_WAIT_FINISH, /* responder, REPLY sent, keys derived */
    STEP_DONE         /* records */
} hs_step;

struct fb_chan {
    /* First member: the BLAKE2b state needs 64-byte alignment (see fb_chan_new). */
    fb_digest_ctx transcript; /* running hash of the handshake frames */

    fb_chan_role role;
    fb_chan_state state;
    hs_step step;
    int fail_code;     /* the code that failed the channel */
    int authenticated; /* peer_pk was proven by a completed handshake */
    int in_send;       /* inside io.send */
    int in_feed;       /* inside fb_chan_feed */

    const fb_identity *self;
    uint8_t (*allowed)[FB_PK_LEN];
    size_t allowed_count;
    int has_expected;
    uint8_t expected_peer[FB_PK_LEN];
    uint32_t sender_id;
    uint32_t max_frame;      /* largest plaintext we accept */
    uint32_t peer_max_frame; /* largest plaintext the peer accepts */
    fb_chan_io io;

    uint8_t eph_sk[DH_LEN], eph_pk[DH_LEN]; /* wiped once the keys are derived */
    uint8_t peer_pk[FB_PK_LEN], peer_eph[DH_LEN];
    uint8_t hello_hash[FB_DIGEST_LEN]; /* H(hello) */
    uint8_t th[FB_DIGEST_LEN];         /* H(hello || reply) */
    uint8_t tx_key[KEY_LEN], rx_key[KEY_LEN];
    uint64_t tx_ctr, rx_ctr;

    /* Receive side: the length header, then one frame body in rbuf. */
    uint8_t hdr[HDR_LEN];
    size_t hdr_have;
    uint32_t body_len;
    size_t body_have;
    uint8_t *rbuf;
    size_t rcap;
    /* Send side: one frame at a time, reused. */
    uint8_t *sbuf;
    size_t scap;

    char err[256];
};

static int chan_fail(fb_chan *ch, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* ------------------------------------------------------------ small helpers */

static void put_be32(uint8_t out[4], uint32_t v)
{
    out[0] = (uint8_t)(v >> 24);
    out[1] = (uint8_t)(v >> 16);
    out[2] = (uint8_t)(v >> 8);
    out[3] = (uint8_t)v;
}

static uint32_t get_be32(const uint8_t in[4])
{
    return (uint32_t)in[0] << 24 | (uint32_t)in[1] << 16 | (uint32_t)in[2] << 8 | in[3];
}

static void put_be64(uint8_t out[8], uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        out[i] = (uint8_t)v;
        v >>= 8;
    }
}

static uint64_t get_be64(const uint8_t in[8])
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = v << 8 | in[i];
    return v;
}

/* The record nonce: the wire counter bytes, then zeros. */
static void record_nonce(const uint8_t ctr[CTR_LEN], uint8_t nonce[NONCE_LEN])
{
    memset(nonce, 0, NONCE_LEN);
    memcpy(nonce, ctr, CTR_LEN);
}

/* Make *buf hold at least need bytes.  Contents are NOT preserved (callers
 * grow only an empty buffer); the old buffer is wiped because it may hold
 * plaintext.  Growth doubles, clamped to bound, so steady traffic stops
 * allocating after a few frames. */
static int buf_reserve(uint8_t **buf, size_t *cap, size_t need, size_t bound)
{
    if (need <= *cap)
        return 0;
    size_t ncap = *cap * 2;
    if (ncap > bound)
        ncap = bound;
    if (ncap < need)
        ncap = need;
    uint8_t *nb = malloc(ncap);
    if (!nb)
        return FB_ENOMEM;
    if (*buf) {
        sodium_memzero(*buf, *cap);
        free(*buf);
    }
    *buf = nb;
    *cap = ncap;
    return 0;
}

static void wipe_secrets(fb_chan *ch)
{
    sodium_memzero(ch->eph_sk, sizeof ch->eph_sk);
    sodium_memzero(ch->tx_key, sizeof ch->tx_key);
    sodium_memzero(ch->rx_key, sizeof ch->rx_key);
    sodium_memzero(&ch->transcript, sizeof ch->transcript);
}

static int chan_fail(fb_chan *ch, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ch->err, sizeof ch->err, fmt, ap);
    va_end(ap);
    ch->state = FB_CHAN_FAILED;
    ch->fail_code = code;
    wipe_secrets(ch);
    return code;
}

/* Common entry check for the calls that act on the channel. */
static int chan_enter(fb_chan *ch, const char *fn)
{
    if (ch->state == FB_CHAN_FAILED)
        return FB_ESTATE;
    if (ch->in_send)
        return chan_fail(ch, FB_ESTATE,
                         "%s was called from inside io.send; io.send must only copy the bytes", fn);
    return 0;
}

/* After a user callback: 0, or the code that failed the channel meanwhile. */
static int after_callback(const fb_chan *ch)
{
    return ch->state == FB_CHAN_FAILED ? ch->fail_code : 0;
}

static void transmit(fb_chan *ch, const uint8_t *bytes, size_t len)
{
    ch->in_send = 1;
    ch->io.send(ch->io.arg, bytes, len);
    ch->in_send = 0;
}

static int in_allow_list(const fb_chan *ch, const uint8_t pk[FB_PK_LEN])
{
    for (size_t i = 0; i < ch->allowed_count; i++)
        if (memcmp(ch->allowed[i], pk, FB_PK_LEN) == 0)
            return 1;
    return 0;
}

/* ------------------------------------------------------------ key schedule */

static void kdf(uint8_t label, const uint8_t dh[3][DH_LEN], const uint8_t th[FB_DIGEST_LEN],
                uint8_t out[KEY_LEN])
{
    fb_digest_ctx ctx;
    fb_digest_init(&ctx, FB_DOM_SESSION_KEY);
    fb_digest_update(&ctx, &label, 1);
    fb_digest_update(&ctx, dh, 3 * DH_LEN);
    fb_digest_update(&ctx, th, FB_DIGEST_LEN);
    fb_digest_final(&ctx, out);
    sodium_memzero(&ctx, sizeof ctx);
}

/* All three of DH(e_i, e_r), DH(e_i, x_r) and DH(x_i, e_r) feed the keys: the
 * ephemeral pair gives forward secrecy, the identity terms bind the keys to
 * both identities as well as the signatures do.  Needs peer_pk, peer_eph,
 * eph_sk and th; wipes eph_sk. */
static int derive_keys(fb_chan *ch)
{
    uint8_t x_self[DH_LEN], x_peer[DH_LEN], dh[3][DH_LEN];
    uint8_t k_i2r[KEY_LEN], k_r2i[KEY_LEN];
    int rc = 0;
    if (crypto_sign_ed25519_pk_to_curve25519(x_peer, ch->peer_pk) != 0) {
        rc = FB_EPROTO;
    } else {
        crypto_sign_ed25519_sk_to_curve25519(x_self, ch->self->sk);
        int bad = crypto_scalarmult(dh[0], ch->eph_sk, ch->peer_eph);
        if (ch->role == FB_CHAN_INITIATOR) {
            bad |= crypto_scalarmult(dh[1], ch->eph_sk, x_peer);
            bad |= crypto_scalarmult(dh[2], x_self, ch->peer_eph);
        } else {
            bad |= crypto_scalarmult(dh[1], x_self, ch->peer_eph);
            bad |= crypto_scalarmult(dh[2], ch->eph_sk, x_peer);
        }
        if (bad != 0) {
            rc = FB_EPROTO;
        } else {
            kdf(LABEL_I2R, (const uint8_t(*)[DH_LEN])dh, ch->th, k_i2r);
            kdf(LABEL_R2I, (const uint8_t(*)[DH_LEN])dh, ch->th, k_r2i);
            int init = ch->role == FB_CHAN_INITIATOR;
            memcpy(ch->tx_key, init ? k_i2r : k_r2i, KEY_LEN);
            memcpy(ch->rx_key, init ? k_r2i : k_i2r, KEY_LEN);
        }
    }
    sodium_memzero(x_self, sizeof x_self);
    sodium_memzero(dh, sizeof dh);
    sodium_memzero(k_i2r, sizeof k_i2r);
    sodium_memzero(k_r2i, sizeof k_r2i);
    sodium_memzero(ch->eph_sk, sizeof ch->eph_sk);
    if (rc == 0)
        return 0;
    char hex[FB_PK_HEX_LEN + 1];
    fb_pubkey_format(ch->peer_eph, hex);
    return chan_fail(ch, FB_EPROTO,
                     "handshake: key exchange with the peer failed (its ephemeral key %s or "
                     "identity key is a low-order or invalid point)",
                     hex);
}

/* ------------------------------------------------------------ handshake */

static const char *handshake_name(int type)
{
    switch (type) {
    case FEDBFT__MSG_TYPE__MSG_CHANNEL_HELLO:
        return "HELLO";
    case FEDBFT__MSG_TYPE__MSG_CHANNEL_REPLY:
        return "REPLY";
    case FEDBFT__MSG_TYPE__MSG_CHANNEL_FINISH:
        return "FINISH";
    default:
        return fb_domain_valid(type) ? fb_domain_name((fb_domain)type) : "unknown";
    }
}

/* Seal payload into an Envelope of the given type and lay it out in sbuf as a
 * frame; *frame_len is the whole frame, header included. */
static int frame_handshake(fb_chan *ch, int type, const uint8_t *payload, size_t payload_len,
                           size_t *frame_len)
{
    uint8_t *env = NULL;
    size_t env_len = 0;
    int rc = fb_env_seal(type, ch->sender_id, payload, payload_len, ch->self, &env, &env_len);
    if (rc)
        return chan_fail(ch, rc, "handshake: cannot seal our %s: %s", handshake_name(type),
                         fb_strerror(rc));
    if (env_len > HANDSHAKE_FRAME_MAX)
        rc = chan_fail(ch, FB_ETOOBIG, "handshake: our %s is %zu bytes, over the %d-byte limit",
                       handshake_name(type), env_len, HANDSHAKE_FRAME_MAX);
    else if (buf_reserve(&ch->sbuf, &ch->scap, HDR_LEN + env_len, HDR_LEN + env_len) != 0)
        rc = chan_fail(ch, FB_ENOMEM, "handshake: out of memory framing our %s",
                       handshake_name(type));
    if (rc == 0) {
        put_be32(ch->sbuf, (uint32_t)env_len);
        memcpy(ch->sbuf + HDR_LEN, env, env_len);
        *frame_len = HDR_LEN + env_len;
    }
    free(env);
    return rc;
}

/* Parse a handshake frame into its Envelope and check its type. */
static int open_handshake(fb_chan *ch, const uint8_t *body, size_t len, int want,
                          Fedbft__Envelope **env, uint8_t digest[FB_DIGEST_LEN])
{
    char why[192];
    int rc = fb_env_open(body, len, env, digest, why, sizeof why);
    if (rc)
        return chan_fail(ch, rc, "handshake: the peer's %s is malformed: %s", handshake_name(want),
                         why);
    if ((int)(*env)->type != want) {
        int got = (int)(*env)->type;
        fedbft__envelope__free_unpacked(*env, NULL);
        *env = NULL;
        return chan_fail(ch, FB_EPROTO,
                         "handshake: expected a %s from the peer, got message type %d (%s)",
                         handshake_name(want), got, handshake_name(got));
    }
    return 0;
}

/* The checks HELLO and REPLY share: key sizes, allow-list, expected peer,
 * the envelope signature under the identity the payload claims, max_frame.
 * On success records the peer's identity, ephemeral key and frame limit. */
static int accept_peer(fb_chan *ch, const char *what, ProtobufCBinaryData id,
                       ProtobufCBinaryData eph, uint32_t max_frame, const Fedbft__Envelope *env,
                       const uint8_t digest[FB_DIGEST_LEN])
{
    if (id.len != FB_PK_LEN)
        return chan_fail(ch, FB_EPROTO, "handshake: %s identity_key is %zu bytes, expected %d",
                         what, id.len, FB_PK_LEN);
    if (eph.len != DH_LEN)
        return chan_fail(ch, FB_EPROTO, "handshake: %s ephemeral_key is %zu bytes, expected %d",
                         what, eph.len, DH_LEN);
    char hex[FB_PK_HEX_LEN + 1];
    fb_pubkey_format(id.data, hex);
    if (!in_allow_list(ch, id.data))
        return chan_fail(ch, FB_EUNKNOWNKEY,
                         "handshake: peer key %s (from its %s) is not in the allow-list", hex,
                         what);
    if (ch->has_expected && memcmp(id.data, ch->expected_peer, FB_PK_LEN) != 0) {
        char want[FB_PK_HEX_LEN + 1];
        fb_pubkey_format(ch->expected_peer, want);
        return chan_fail(ch, FB_EUNKNOWNKEY,
                         "handshake: reached peer key %s but dialled %s (wrong address?)", hex,
                         want);
    }
    if (fb_sig_verify(id.data, digest, env->signature.data) != 0)
        return chan_fail(ch, FB_EAUTH, "handshake: %s signature does not verify under peer key %s",
                         what, hex);
    if (max_frame == 0)
        return chan_fail(ch, FB_EPROTO, "handshake: peer %s advertises max_frame 0", hex);
    memcpy(ch->peer_pk, id.data, FB_PK_LEN);
    memcpy(ch->peer_eph, eph.data, DH_LEN);
    ch->peer_max_frame = max_frame > MAX_FRAME_LIMIT ? MAX_FRAME_LIMIT : max_frame;
    return 0;
}

static void transcript_add_frame(fb_chan *ch, const uint8_t *frame, size_t len)
{
    fb_digest_update(&ch->transcript, frame, len);
}

/* The hash so far, leaving the running hash open for more frames. */
static void transcript_peek(const fb_chan *ch, uint8_t out[FB_DIGEST_LEN])
{
    fb_digest_ctx copy = ch->transcript;
    fb_digest_final(&copy, out);
    sodium_memzero(&copy, sizeof copy);
}

static void mark_established(fb_chan *ch)
{
    ch->state = FB_CHAN_ESTABLISHED;
    ch->step = STEP_DONE;
    ch->authenticated = 1;
    sodium_memzero(&ch->transcript, sizeof ch->transcript);
}

static int notify_established(fb_chan *ch)
{
    if (ch->io.established)
        ch->io.established(ch->io.arg, ch->peer_pk);
    return after_callback(ch);
}

/* Responder: HELLO arrived in (hdr, body).  Answer with REPLY. */
static int on_hello(fb_chan *ch, const uint8_t *body, size_t len)
{
    Fedbft__Envelope *env = NULL;
    uint8_t digest[FB_DIGEST_LEN];
    int rc = open_handshake(ch, body, len, FEDBFT__MSG_TYPE__MSG_CHANNEL_HELLO, &env, digest);
    if (rc)
        return rc;
    Fedbft__ChannelHello *hello =
        fedbft__channel_hello__unpack(NULL, env->payload.len, env->payload.data);
    if (!hello)
        rc = chan_fail(ch, FB_EPROTO, "handshake: HELLO payload is not a ChannelHello");
    else
        rc = accept_peer(ch, "HELLO", hello->identity_key, hello->ephemeral_key, hello->max_frame,
                         env, digest);
    fedbft__channel_hello__free_unpacked(hello, NULL);
    fedbft__envelope__free_unpacked(env, NULL);
    if (rc)
        return rc;

    fb_digest_init(&ch->transcript, FB_DOM_TRANSCRIPT);
    transcript_add_frame(ch, ch->hdr, HDR_LEN);
    transcript_add_frame(ch, body, len);
    transcript_peek(ch, ch->hello_hash);
    crypto_box_keypair(ch->eph_pk, ch->eph_sk);

    Fedbft__ChannelReply reply = FEDBFT__CHANNEL_REPLY__INIT;
    reply.identity_key.data = (uint8_t *)ch->self->pk;
    reply.identity_key.len = FB_PK_LEN;
    reply.ephemeral_key.data = ch->eph_pk;
    reply.ephemeral_key.len = DH_LEN;
    reply.transcript.data = ch->hello_hash;
    reply.transcript.len = FB_DIGEST_LEN;
    reply.max_frame = ch->max_frame;
    uint8_t payload[HANDSHAKE_PAYLOAD_MAX];
    size_t plen = fedbft__channel_reply__get_packed_size(&reply);
    if (plen > sizeof payload)
        return chan_fail(ch, FB_ETOOBIG, "handshake: REPLY payload is %zu bytes", plen);
    fedbft__channel_reply__pack(&reply, payload);

    size_t flen = 0;
    rc = frame_handshake(ch, FEDBFT__MSG_TYPE__MSG_CHANNEL_REPLY, payload, plen, &flen);
    if (rc)
        return rc;
    transcript_add_frame(ch, ch->sbuf, flen);
    fb_digest_final(&ch->transcript, ch->th);
    rc = derive_keys(ch);
    if (rc)
        return rc;
    ch->step = STEP_WAIT_FINISH;
    transmit(ch, ch->sbuf, flen);
    return 0;
}

/* Initiator: REPLY arrived.  Check it, derive keys, send FINISH. */
static int on_reply(fb_chan *ch, const uint8_t *body, size_t len)
{
    Fedbft__Envelope *env = NULL;
    uint8_t digest[FB_DIGEST_LEN];
    int rc = open_handshake(ch, body, len, FEDBFT__MSG_TYPE__MSG_CHANNEL_REPLY, &env, digest);
    if (rc)
        return rc;
    Fedbft__ChannelReply *reply =
        fedbft__channel_reply__unpack(NULL, env->payload.len, env->payload.data);
    if (!reply)
        rc = chan_fail(ch, FB_EPROTO, "handshake: REPLY payload is not a ChannelReply");
    else
        rc = accept_peer(ch, "REPLY", reply->identity_key, reply->ephemeral_key, reply->max_frame,
                         env, digest);
    if (rc == 0 && reply->transcript.len != FB_DIGEST_LEN)
        rc = chan_fail(ch, FB_EPROTO, "handshake: REPLY transcript is %zu bytes, expected %d",
                       reply->transcript.len, FB_DIGEST_LEN);
    if (rc == 0 && sodium_memcmp(reply->transcript.data, ch->hello_hash, FB_DIGEST_LEN) != 0)
        rc = chan_fail(ch, FB_EAUTH,
                       "handshake: the REPLY answers a different HELLO (transcript mismatch: "
                       "replayed or tampered handshake)");
    fedbft__channel_reply__free_unpacked(reply, NULL);
    fedbft__envelope__free_unpacked(env, NULL);
    if (rc)
        return rc;

    transcript_add_frame(ch, ch->hdr, HDR_LEN);
    transcript_add_frame(ch, body, len);
    fb_digest_final(&ch->transcript, ch->th);
    rc = derive_keys(ch);
    if (rc)
        return rc;

    Fedbft__ChannelFinish finish = FEDBFT__CHANNEL_FINISH__INIT;
    finish.transcript.data = ch->th;
    finish.transcript.len = FB_DIGEST_LEN;
    uint8_t payload[HANDSHAKE_PAYLOAD_MAX];
    size_t plen = fedbft__channel_finish__get_packed_size(&finish);
    fedbft__channel_finish__pack(&finish, payload);
    size_t flen = 0;
    rc = frame_handshake(ch, FEDBFT__MSG_TYPE__MSG_CHANNEL_FINISH, payload, plen, &flen);
    if (rc)
        return rc;
    /* FINISH goes out before anything io.established may write. */
    mark_established(ch);
    transmit(ch, ch->sbuf, flen);
    return notify_established(ch);
}

/* Responder: FINISH arrived.  The initiator proves it holds its key now. */
static int on_finish(fb_chan *ch, const uint8_t *body, size_t len)
{
    Fedbft__Envelope *env = NULL;
    uint8_t digest[FB_DIGEST_LEN];
    int rc = open_handshake(ch, body, len, FEDBFT__MSG_TYPE__MSG_CHANNEL_FINISH, &env, digest);
    if (rc)
        return rc;
    char hex[FB_PK_HEX_LEN + 1];
    fb_pubkey_format(ch->peer_pk, hex);
    Fedbft__ChannelFinish *finish =
        fedbft__channel_finish__unpack(NULL, env->payload.len, env->payload.data);
    if (!finish)
        rc = chan_fail(ch, FB_EPROTO, "handshake: FINISH payload is not a ChannelFinish");
    else if (fb_sig_verify(ch->peer_pk, digest, env->signature.data) != 0)
        rc = chan_fail(ch, FB_EAUTH, "handshake: FINISH signature does not verify under key %s",
                       hex);
    else if (finish->transcript.len != FB_DIGEST_LEN)
        rc = chan_fail(ch, FB_EPROTO, "handshake: FINISH transcript is %zu bytes, expected %d",
                       finish->transcript.len, FB_DIGEST_LEN);
    else if (sodium_memcmp(finish->transcript.data, ch->th, FB_DIGEST_LEN) != 0)
        rc = chan_fail(ch, FB_EAUTH,
                       "handshake: FINISH from %s covers a different transcript (tampered "
                       "handshake)",
                       hex);
    fedbft__channel_finish__free_unpacked(finish, NULL);
    fedbft__envelope__free_unpacked(env, NULL);
    if (rc)
        return rc;
    mark_established(ch);
    return notify_established(ch);
}

/* ------------------------------------------------------------ records */

static int on_record(fb_chan *ch, uint8_t *body, size_t len)
{
    uint64_t ctr = get_be64(body);
    uint8_t nonce[NONCE_LEN];
    record_nonce(body, nonce);
    unsigned long long plen = 0;
    /* Decrypt in place: the plaintext lands where the ciphertext was. */
    if (crypto_aead_xchacha20poly1305_ietf_decrypt(body + CTR_LEN, &plen, NULL, body + CTR_LEN,
                                                   len - CTR_LEN, body, CTR_LEN, nonce,
                                                   ch->rx_key) != 0)
        return chan_fail(ch, FB_EAUTH,
                         "frame with counter %" PRIu64
                         " failed authentication (corrupted or forged in transit)",
                         ctr);
    if (ctr < ch->rx_ctr)
        return chan_fail(ch, FB_EREPLAY,
                         "frame counter %" PRIu64 " replayed (expected %" PRIu64 ")", ctr,
                         ch->rx_ctr);
    if (ctr > ch->rx_ctr)
        return chan_fail(ch, FB_EORDER,
                         "frame counter %" PRIu64 " skips ahead (expected %" PRIu64
                         "): frames were reordered or dropped",
                         ctr, ch->rx_ctr);
    ch->rx_ctr++;
    ch->io.frame(ch->io.arg, body + CTR_LEN, (size_t)plen);
    return after_callback(ch);
}

/* ------------------------------------------------------------ framing */

/* The length header is complete: check it against the limit for this phase
 * and make room for the body. */
static int begin_frame(fb_chan *ch)
{
    uint32_t len = get_be32(ch->hdr);
    size_t bound = (size_t)ch->max_frame + RECORD_OVERHEAD;
    if (bound < HANDSHAKE_FRAME_MAX)
        bound = HANDSHAKE_FRAME_MAX;
    if (ch->state == FB_CHAN_ESTABLISHED) {
        uint32_t limit = ch->max_frame + RECORD_OVERHEAD;
        if (len > limit)
            return chan_fail(ch, FB_ETOOBIG,
                             "peer sent a frame of %" PRIu32 " bytes; the limit is %" PRIu32
                             " (max_frame %" PRIu32 " plus %d bytes of counter and tag)",
                             len, limit, ch->max_frame, RECORD_OVERHEAD);
        if (len < RECORD_OVERHEAD)
            return chan_fail(ch, FB_ETRUNC,
                             "peer sent a frame of %" PRIu32
                             " bytes, too short for the 8-byte counter and 16-byte tag",
                             len);
    } else if (len > HANDSHAKE_FRAME_MAX) {
        return chan_fail(ch, FB_ETOOBIG,
                         "handshake frame of %" PRIu32
                         " bytes exceeds the %d-byte limit (is the peer speaking fedbft?)",
                         len, HANDSHAKE_FRAME_MAX);
    }
    if (buf_reserve(&ch->rbuf, &ch->rcap, len, bound) != 0)
        return chan_fail(ch, FB_ENOMEM, "out of memory for a %" PRIu32 "-byte frame", len);
    ch->body_len = len;
    ch->body_have = 0;
    return 0;
}

/* A whole frame is in rbuf: reset the reader, then act on the frame. */
static int end_frame(fb_chan *ch)
{
    size_t len = ch->body_len;
    ch->hdr_have = 0; /* hdr keeps its bytes: the handshake hashes them */
    ch->body_have = 0;
    switch (ch->step) {
    case STEP_WAIT_HELLO:
        return on_hello(ch, ch->rbuf, len);
    case STEP_WAIT_REPLY:
        return on_reply(ch, ch->rbuf, len);
    case STEP_WAIT_FINISH:
        return on_finish(ch, ch->rbuf, len);
    case STEP_DONE:
        return on_record(ch, ch->rbuf, len);
    case STEP_UNSTARTED:
        break;
    }
    return chan_fail(ch, FB_ESTATE, "internal: frame arrived in handshake step %d", (int)ch->step);
}

static int feed_bytes(fb_chan *ch, const uint8_t *p, size_t len)
{
    while (len > 0) {
        size_t n;
        if (ch->hdr_have < HDR_LEN) {
            n = HDR_LEN - ch->hdr_have;
            n = n < len ? n : len;
            memcpy(ch->hdr + ch->hdr_have, p, n);
            ch->hdr_have += n;
            if (ch->hdr_have == HDR_LEN) {
                int rc = begin_frame(ch);
                if (rc)
                    return rc;
            }
        } else {
            n = ch->body_len - ch->body_have;
            n = n < len ? n : len;
            memcpy(ch->rbuf + ch->body_have, p, n);
            ch->body_have += n;
        }
        p += n;
        len -= n;
        if (ch->hdr_have == HDR_LEN && ch->body_have == ch->body_len) {
            int rc = end_frame(ch);
            if (rc)
                return rc;
        }
    }
    return 0;
}

/* ------------------------------------------------------------ public API */

int fb_chan_new(const fb_chan_config *cfg, fb_chan **out)
{
    if (!cfg || !out || !cfg->self || !cfg->io.send || !cfg->io.frame)
        return FB_EINVAL;
    if (cfg->role != FB_CHAN_INITIATOR && cfg->role != FB_CHAN_RESPONDER)
        return FB_EINVAL;
    if (!cfg->allowed || cfg->allowed_count == 0 || cfg->allowed_count > SIZE_MAX / FB_PK_LEN)
        return FB_EINVAL;
    if (cfg->expected_peer && cfg->role != FB_CHAN_INITIATOR)
        return FB_EINVAL;
    if (cfg->max_frame > MAX_FRAME_LIMIT)
        return FB_EINVAL;

    /* aligned_alloc: the embedded BLAKE2b state is declared 64-byte aligned,
     * more than malloc promises.  sizeof is a multiple of the alignment. */
    fb_chan *ch = aligned_alloc(_Alignof(fb_chan), sizeof(fb_chan));
    if (!ch)
        return FB_ENOMEM;
    memset(ch, 0, sizeof *ch);
    ch->allowed = malloc(cfg->allowed_count * FB_PK_LEN);
    ch->rbuf = malloc(HANDSHAKE_FRAME_MAX);
    if (!ch->allowed || !ch->rbuf) {
        free(ch->allowed);
        free(ch->rbuf);
        free(ch);
        return FB_ENOMEM;
    }
    ch->rcap = HANDSHAKE_FRAME_MAX;
    memcpy(ch->allowed, cfg->allowed, cfg->allowed_count * FB_PK_LEN);
    ch->allowed_count = cfg->allowed_count;
    if (cfg->expected_peer) {
        ch->has_expected = 1;
        memcpy(ch->expected_peer, cfg->expected_peer, FB_PK_LEN);
    }
    ch->role = cfg->role;
    ch->state = FB_CHAN_HANDSHAKE;
    ch->step = cfg->role == FB_CHAN_INITIATOR ? STEP_UNSTARTED : STEP_WAIT_HELLO;
    ch->self = cfg->self;
    ch->sender_id = cfg->sender_id;
    ch->max_frame = cfg->max_frame ? cfg->max_frame : FB_CHAN_DEFAULT_MAX_FRAME;
    ch->io = cfg->io;
    *out = ch;
    return 0;
}

void fb_chan_free(fb_chan *ch)
{
    if (!ch)
        return;
    if (ch->rbuf) {
        sodium_memzero(ch->rbuf, ch->rcap);
        free(ch->rbuf);
    }
    if (ch->sbuf) {
        sodium_memzero(ch->sbuf, ch->scap);
        free(ch->sbuf);
    }
    free(ch->allowed);
    sodium_memzero(ch, sizeof *ch);
    free(ch);
}

int fb_chan_start(fb_chan *ch)
{
    if (!ch)
        return FB_EINVAL;
    int rc = chan_enter(ch, "fb_chan_start");
    if (rc)
        return rc;
    if (ch->role != FB_CHAN_INITIATOR)
        return chan_fail(ch, FB_ESTATE,
                         "fb_chan_start called on a responder; only initiators "
                         "start (responders wait for the HELLO)");
    if (ch->step != STEP_UNSTARTED)
        return chan_fail(ch, FB_ESTATE, "fb_chan_start called twice");

    crypto_box_keypair(ch->eph_pk, ch->eph_sk);
    Fedbft__ChannelHello hello = FEDBFT__CHANNEL_HELLO__INIT;
    hello.identity_key.data = (uint8_t *)ch->self->pk;
    hello.identity_key.len = FB_PK_LEN;
    hello.ephemeral_key.data = ch->eph_pk;
    hello.ephemeral_key.len = DH_LEN;
    hello.max_frame = ch->max_frame;
    uint8_t payload[HANDSHAKE_PAYLOAD_MAX];
    size_t plen = fedbft__channel_hello__get_packed_size(&hello);
    fedbft__channel_hello__pack(&hello, payload);

    size_t flen = 0;
    rc = frame_handshake(ch, FEDBFT__MSG_TYPE__MSG_CHANNEL_HELLO, payload, plen, &flen);
    if (rc)
        return rc;
    fb_digest_init(&ch->transcript, FB_DOM_TRANSCRIPT);
    transcript_add_frame(ch, ch->sbuf, flen);
    transcript_peek(ch, ch->hello_hash);
    ch->step = STEP_WAIT_REPLY;
    transmit(ch, ch->sbuf, flen);
    return 0;
}

int fb_chan_feed(fb_chan *ch, const uint8_t *data, size_t len)
{
    if (!ch)
        return FB_EINVAL;
    int rc = chan_enter(ch, "fb_chan_feed");
    if (rc)
        return rc;
    if (ch->in_feed)
        return chan_fail(ch, FB_ESTATE,
                         "fb_chan_feed was called from inside an io callback; feed from the "
                         "transport's read path only");
    if (ch->step == STEP_UNSTARTED)
        return chan_fail(ch, FB_ESTATE, "initiator was fed bytes before fb_chan_start");
    if (!data && len > 0)
        return chan_fail(ch, FB_EINVAL, "fb_chan_feed: NULL data with length %zu", len);
    ch->in_feed = 1;
    rc = feed_bytes(ch, data, len);
    ch->in_feed = 0;
    return rc;
}

int fb_chan_write(fb_chan *ch, const uint8_t *plain, size_t len)
{
    static const uint8_t empty[1];
    if (!ch)
        return FB_EINVAL;
    int rc = chan_enter(ch, "fb_chan_write");
    if (rc)
        return rc;
    /* The caller's mistakes below send nothing and leave a healthy link up. */
    if (ch->state != FB_CHAN_ESTABLISHED)
        return FB_ESTATE;
    if (!plain && len > 0)
        return FB_EINVAL;
    if (len > ch->peer_max_frame)
        return FB_ETOOBIG;
    if (ch->tx_ctr == UINT64_MAX)
        return chan_fail(ch, FB_ESTATE, "send counter exhausted; reconnect for fresh keys");

    size_t body = CTR_LEN + len + TAG_LEN;
    size_t bound = HDR_LEN + RECORD_OVERHEAD + (size_t)ch->peer_max_frame;
    if (buf_reserve(&ch->sbuf, &ch->scap, HDR_LEN + body, bound) != 0)
        return chan_fail(ch, FB_ENOMEM, "out of memory for a %zu-byte frame", len);
    uint8_t *ctr = ch->sbuf + HDR_LEN;
    put_be32(ch->sbuf, (uint32_t)body);
    put_be64(ctr, ch->tx_ctr);
    uint8_t nonce[NONCE_LEN];
    record_nonce(ctr, nonce);
    crypto_aead_xchacha20poly1305_ietf_encrypt(ctr + CTR_LEN, NULL, len ? plain : empty, len, ctr,
                                               CTR_LEN, NULL, nonce, ch->tx_key);
    ch->tx_ctr++;
    transmit(ch, ch->sbuf, HDR_LEN + body);
    return 0;
}

int fb_chan_eof(fb_chan *ch)
{
    if (!ch)
        return FB_EINVAL;
    int rc = chan_enter(ch, "fb_chan_eof");
    if (rc)
        return rc;
    if (ch->hdr_have > 0 && ch->hdr_have < HDR_LEN)
        return chan_fail(ch, FB_ETRUNC,
                         "stream ended inside a frame's length header (%zu of %d bytes)",
                         ch->hdr_have, HDR_LEN);
    if (ch->hdr_have == HDR_LEN)
        return chan_fail(ch, FB_ETRUNC,
                         "stream ended inside a frame (%zu of %" PRIu32 " bytes arrived)",
                         ch->body_have, ch->body_len);
    return 0;
}

fb_chan_state fb_chan_get_state(const fb_chan *ch)
{
    return ch ? ch->state : FB_CHAN_FAILED;
}

const uint8_t *fb_chan_peer_key(const fb_chan *ch)
{
    return ch && ch->authenticated ? ch->peer_pk : NULL;
}

const char *fb_chan_error(const fb_chan *ch)
{
    return ch ? ch->err : "";
}
