/* channel.h - the secure channel as a pure state machine (bytes in, bytes out).
 *
 * No sockets, clocks or threads: the caller feeds bytes read from a transport
 * and transmits whatever the channel hands to io.send.  Every link between
 * replicas, and between clients and replicas, runs through one of these.
 *
 * Wire format: a stream of frames, each a 4-byte big-endian length L followed
 * by L bytes.
 *
 * Handshake (three frames, each an Envelope from proto/fedbft.proto, signed by
 * the sender's Ed25519 identity key):
 *   I -> R  HELLO  {identity_key I, ephemeral X25519 e_i, max_frame}
 *   R -> I  REPLY  {identity_key R, ephemeral e_r, H(hello), max_frame}
 *   I -> R  FINISH {H(hello || reply)}
 * Each side rejects a peer identity key not in its allow-list, or (initiator)
 * other than expected_peer (FB_EUNKNOWNKEY), a bad signature or a transcript
 * that does not match (FB_EAUTH), and a malformed message, wrong type, wrong
 * key length, max_frame 0 or low-order key (FB_EPROTO).  A handshake frame
 * over 4096 bytes is FB_ETOOBIG.  The envelopes' `sender` field is not
 * checked here: the node maps replica ids to keys and checks it.
 *
 * Transcript: H() is BLAKE2b-256 (domain FB_DOM_TRANSCRIPT) over whole frames
 * as sent, length headers included; H(hello||reply) covers both frames.
 *
 * Session keys, one per direction: BLAKE2b-256 (domain FB_DOM_SESSION_KEY)
 * over  label || DH(e_i,e_r) || DH(e_i,x_r) || DH(x_i,e_r) || H(hello||reply),
 * label 0x01 for initiator->responder and 0x02 for responder->initiator, where
 * x_* are the identity keys converted from Ed25519 to X25519: both the fresh
 * ephemeral exchange and the long-term identities feed the keys.
 *
 * Records (after the handshake): L = 8 + ciphertext length; the body is an
 * 8-byte big-endian counter followed by the XChaCha20-Poly1305 (IETF) AEAD
 * of the plaintext; the nonce is the counter bytes followed by 16 zero bytes
 * and the associated data is the counter bytes.  Each direction counts from 0.
 * The tag is checked first (any flipped bit, counter included, is FB_EAUTH),
 * then the counter must equal the next expected: lower is FB_EREPLAY, higher
 * is FB_EORDER.  A frame whose L exceeds max_frame + 24 is FB_ETOOBIG as soon
 * as its length header arrives; one too short to hold counter and tag is
 * FB_ETRUNC, and so is a stream that ends mid-frame (fb_chan_eof).
 *
 * Any error caused by the peer is final: the channel moves to FB_CHAN_FAILED,
 * fb_chan_error() says what happened, and every later call returns FB_ESTATE.
 * The caller closes the link.  A write the caller should not have made
 * (before the handshake completes, above the peer's max_frame) is refused
 * with its code and changes nothing.
 *
 * Callbacks: io.frame and io.established may call fb_chan_write; nothing may
 * call fb_chan_feed re-entrantly or call into the channel from io.send (both
 * fail the channel with FB_ESTATE), and no callback may free the channel.
 *
 * Memory: the receive buffer holds at most one frame (bounded by max_frame);
 * nothing grows with traffic.
 *
 * Thread-safety: a channel belongs to one thread.
 */
#ifndef FB_CHANNEL_H
#define FB_CHANNEL_H

#include "keys.h"

#include <stddef.h>
#include <stdint.h>

#define FB_CHAN_DEFAULT_MAX_FRAME (4u << 20) /* plaintext bytes per frame */
#define FB_CHAN_OVERHEAD (4 + 8 + 16)        /* length + counter + tag */

typedef enum fb_chan_role { FB_CHAN_INITIATOR = 1, FB_CHAN_RESPONDER = 2 } fb_chan_role;

typedef enum fb_chan_state {
    FB_CHAN_HANDSHAKE = 1,   /* keys not yet agreed */
    FB_CHAN_ESTABLISHED = 2, /* records flow both ways */
    FB_CHAN_FAILED = 3       /* an error occurred; close the link */
} fb_chan_state;

typedef struct fb_chan_io {
    /* Transmit these bytes to the peer, in order.  The buffer is valid only
     * during the call; copy it.  Called from fb_chan_start, fb_chan_feed and
     * fb_chan_write. */
    void (*send)(void *arg, const uint8_t *bytes, size_t len);
    /* One authenticated application frame arrived.  Valid only during the call. */
    void (*frame)(void *arg, const uint8_t *plain, size_t len);
    /* The handshake completed; the peer proved it holds identity key pk. Optional. */
    void (*established)(void *arg, const uint8_t pk[FB_PK_LEN]);
    void *arg;
} fb_chan_io;

typedef struct fb_chan_config {
    fb_chan_role role;
    const fb_identity *self;             /* our identity; must outlive the channel */
    const uint8_t (*allowed)[FB_PK_LEN]; /* allow-list of peer identity keys */
    size_t allowed_count;
    /* Initiator only, optional: the peer must be exactly this key (dialing
     * replica 2 must reach replica 2, not any allowed key).  NULL = any allowed. */
    const uint8_t *expected_peer;
    uint32_t sender_id; /* Envelope.sender on our handshake messages */
    uint32_t max_frame; /* largest plaintext we accept; 0 = default */
    fb_chan_io io;
} fb_chan_config;

typedef struct fb_chan fb_chan;

/* Create a channel.  The allow-list is copied.  FB_EINVAL on a bad config
 * (empty allow-list, no io.send or io.frame, expected_peer on a responder). */
int fb_chan_new(const fb_chan_config *cfg, fb_chan **out);
void fb_chan_free(fb_chan *ch);

/* Initiator: send HELLO.  Must be called exactly once, before any feed. */
int fb_chan_start(fb_chan *ch);

/* Feed bytes read from the transport (any split: byte by byte works).
 * Drives the handshake (may call io.send / io.established) and delivers
 * records through io.frame.  Returns 0 or a negative FB_E* code (final). */
int fb_chan_feed(fb_chan *ch, const uint8_t *data, size_t len);

/* Seal one plaintext frame and hand it to io.send.  Refused without effect:
 * FB_ESTATE before the handshake completes, FB_ETOOBIG above the peer's
 * max_frame. */
int fb_chan_write(fb_chan *ch, const uint8_t *plain, size_t len);

/* The transport reached end of stream: FB_ETRUNC if a partial frame is
 * buffered (and the channel fails), else 0. */
int fb_chan_eof(fb_chan *ch);

fb_chan_state fb_chan_get_state(const fb_chan *ch);

/* The authenticated peer key, or NULL if the handshake never completed (it
 * stays available after a later failure, so logs can name the peer). */
const uint8_t *fb_chan_peer_key(const fb_chan *ch);

/* What went wrong, in words (empty string if nothing). */
const char *fb_chan_error(const fb_chan *ch);

#endif
