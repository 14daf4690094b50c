/* digest.h - domain-separated BLAKE2b-256 digests.
 *
 * Every digest fedbft signs or compares is BLAKE2b-256 over a domain string
 * followed by the data.  Each message type has its own domain, so a digest
 * (and therefore a signature) made for one kind of message can never be
 * accepted as another kind.  Domains 1..13 equal proto MsgType values so an
 * envelope's type selects its domain directly.
 *
 * Every digest computation is counted (fb_digest_count), so tests can prove a
 * value was computed once and then reused.
 *
 * Thread-safety: all functions may be called from any thread.
 */
#ifndef FB_DIGEST_H
#define FB_DIGEST_H

#include <sodium.h>
#include <stddef.h>
#include <stdint.h>

#define FB_DIGEST_LEN 32

typedef enum fb_domain {
    FB_DOM_REQUEST = 1, /* = MSG_REQUEST ... MSG_INFER_RESULT */
    FB_DOM_REPLY = 2,
    FB_DOM_PRE_PREPARE = 3,
    FB_DOM_PREPARE = 4,
    FB_DOM_COMMIT = 5,
    FB_DOM_CHECKPOINT = 6,
    FB_DOM_VIEW_CHANGE = 7,
    FB_DOM_NEW_VIEW = 8,
    FB_DOM_STATE_REQUEST = 9,
    FB_DOM_STATE_RESPONSE = 10,
    FB_DOM_CHANNEL_HELLO = 11,
    FB_DOM_CHANNEL_REPLY = 12,
    FB_DOM_CHANNEL_FINISH = 13,
    FB_DOM_INFER_RESULT = 14,
    FB_DOM_BATCH = 100, /* a PRE-PREPARE batch: over its request digests */
    FB_DOM_STATE = 101, /* replicated state at a checkpoint */
    FB_DOM_STATE_CHUNK = 102,
    FB_DOM_TRANSCRIPT = 103, /* channel handshake transcript */
    FB_DOM_SESSION_KEY = 104 /* channel key derivation */
} fb_domain;

/* The domain's string, e.g. "fedbft/v1/prepare"; NULL for an unknown domain. */
const char *fb_domain_name(fb_domain d);

/* 1 if d is a known domain. */
int fb_domain_valid(int d);

typedef struct fb_digest_ctx {
    crypto_generichash_blake2b_state st;
} fb_digest_ctx;

/* One-shot digest.  An unknown domain aborts (programming error). */
void fb_digest(fb_domain d, const void *data, size_t len, uint8_t out[FB_DIGEST_LEN]);

/* Incremental digest: init, any number of updates, final (counts once). */
void fb_digest_init(fb_digest_ctx *ctx, fb_domain d);
void fb_digest_update(fb_digest_ctx *ctx, const void *data, size_t len);
void fb_digest_final(fb_digest_ctx *ctx, uint8_t out[FB_DIGEST_LEN]);

/* Number of digests finalised by this process so far. */
uint64_t fb_digest_count(void);

#endif
