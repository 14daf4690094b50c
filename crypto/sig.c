/* sig.c - Ed25519 over digests, with a verification counter. */
#include "sig.h"

#include "fb_error.h"

#include <stdatomic.h>

static _Atomic uint64_t verify_count;

void fb_sig_sign(const fb_identity *id, const uint8_t digest[FB_DIGEST_LEN],
                 uint8_t sig[FB_SIG_LEN])
{
    crypto_sign_ed25519_detached(sig, NULL, digest, FB_DIGEST_LEN, id->sk);
}

int fb_sig_verify(const uint8_t pk[FB_PK_LEN], const uint8_t digest[FB_DIGEST_LEN],
                  const uint8_t sig[FB_SIG_LEN])
{
    atomic_fetch_add_explicit(&verify_count, 1, memory_order_relaxed);
    if (crypto_sign_ed25519_verify_detached(sig, digest, FB_DIGEST_LEN, pk) != 0)
        return FB_EAUTH;
    return 0;
}

uint64_t fb_sig_verify_count(void)
{
    return atomic_load_explicit(&verify_count, memory_order_relaxed);
}
