/* digest.c - domain-separated BLAKE2b-256 and the digest counter. */
#include "digest.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

static _Atomic uint64_t digest_count;

const char *fb_domain_name(fb_domain d)
{
    switch (d) {
    case FB_DOM_REQUEST:
        return "fedbft/v1/request";
    case FB_DOM_REPLY:
        return "fedbft/v1/reply";
    case FB_DOM_PRE_PREPARE:
        return "fedbft/v1/pre-prepare";
    case FB_DOM_PREPARE:
        return "fedbft/v1/prepare";
    case FB_DOM_COMMIT:
        return "fedbft/v1/commit";
    case FB_DOM_CHECKPOINT:
        return "fedbft/v1/checkpoint";
    case FB_DOM_VIEW_CHANGE:
        return "fedbft/v1/view-change";
    case FB_DOM_NEW_VIEW:
        return "fedbft/v1/new-view";
    case FB_DOM_STATE_REQUEST:
        return "fedbft/v1/state-request";
    case FB_DOM_STATE_RESPONSE:
        return "fedbft/v1/state-response";
    case FB_DOM_CHANNEL_HELLO:
        return "fedbft/v1/channel-hello";
    case FB_DOM_CHANNEL_REPLY:
        return "fedbft/v1/channel-reply";
    case FB_DOM_CHANNEL_FINISH:
        return "fedbft/v1/channel-finish";
    case FB_DOM_INFER_RESULT:
        return "fedbft/v1/infer-result";
    case FB_DOM_BATCH:
        return "fedbft/v1/batch";
    case FB_DOM_STATE:
        return "fedbft/v1/state";
    case FB_DOM_STATE_CHUNK:
        return "fedbft/v1/state-chunk";
    case FB_DOM_TRANSCRIPT:
        return "fedbft/v1/transcript";
    case FB_DOM_SESSION_KEY:
        return "fedbft/v1/session-key";
    }
    return NULL;
}

int fb_domain_valid(int d)
{
    return fb_domain_name((fb_domain)d) != NULL;
}

void fb_digest_init(fb_digest_ctx *ctx, fb_domain d)
{
    const char *name = fb_domain_name(d);
    if (!name)
        abort(); /* a programming error: every caller passes a constant */
    /* The domain string is length-prefixed so that no domain is a prefix of
     * another domain followed by data. */
    size_t n = strlen(name);
    uint8_t len = (uint8_t)n;
    crypto_generichash_blake2b_init(&ctx->st, NULL, 0, FB_DIGEST_LEN);
    crypto_generichash_blake2b_update(&ctx->st, &len, 1);
    crypto_generichash_blake2b_update(&ctx->st, (const uint8_t *)name, n);
}

void fb_digest_update(fb_digest_ctx *ctx, const void *data, size_t len)
{
    if (len > 0)
        crypto_generichash_blake2b_update(&ctx->st, data, len);
}

void fb_digest_final(fb_digest_ctx *ctx, uint8_t out[FB_DIGEST_LEN])
{
    crypto_generichash_blake2b_final(&ctx->st, out, FB_DIGEST_LEN);
    atomic_fetch_add_explicit(&digest_count, 1, memory_order_relaxed);
}

void fb_digest(fb_domain d, const void *data, size_t len, uint8_t out[FB_DIGEST_LEN])
{
    fb_digest_ctx ctx;
    fb_digest_init(&ctx, d);
    fb_digest_update(&ctx, data, len);
    fb_digest_final(&ctx, out);
}

uint64_t fb_digest_count(void)
{
    return atomic_load_explicit(&digest_count, memory_order_relaxed);
}
