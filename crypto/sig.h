/* sig.h - Ed25519 signatures over domain-separated digests.
 *
 * fedbft never signs raw bytes: it signs the 32-byte digest from digest.h,
 * whose domain names the message type.  Verification is the plain libsodium
 * check; batching and caching live in batchver.h and sigcache.h.
 *
 * Thread-safety: all functions may be called from any thread.
 */
#ifndef FB_SIG_H
#define FB_SIG_H

#include "digest.h"
#include "keys.h"

#include <stdint.h>

void fb_sig_sign(const fb_identity *id, const uint8_t digest[FB_DIGEST_LEN],
                 uint8_t sig[FB_SIG_LEN]);

/* 0 if sig is pk's signature of digest, FB_EAUTH otherwise. */
int fb_sig_verify(const uint8_t pk[FB_PK_LEN], const uint8_t digest[FB_DIGEST_LEN],
                  const uint8_t sig[FB_SIG_LEN]);

/* Number of Ed25519 verifications this process has performed. */
uint64_t fb_sig_verify_count(void);

#endif
