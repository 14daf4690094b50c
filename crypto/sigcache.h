/* sigcache.h - bounded LRU of signatures already verified.
 *
 * A request a client sent directly is relayed again inside a PRE-PREPARE; a
 * PREPARE is relayed again inside a VIEW-CHANGE proof.  Checking such a
 * signature a second time is wasted work, so every (public key, digest,
 * signature) triple that verified is remembered here.
 *
 * Index: XXH3-128 of pk || digest || sig, seeded with a per-cache random
 * secret.  XXH3 is not a cryptographic hash, so the index alone must never
 * vouch for a signature: every entry also stores the full triple, and a hit
 * requires all 128 bytes to match.  A colliding index is then only a miss.
 *
 * Memory: fixed at creation (capacity entries, ~200 bytes each); an insert
 * into a full cache evicts the least recently used entry.
 *
 * Thread-safety: a cache belongs to one thread (the node's loop thread).
 */
#ifndef FB_SIGCACHE_H
#define FB_SIGCACHE_H

#include "digest.h"
#include "keys.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define FB_SIGCACHE_DEFAULT_CAPACITY 65536

typedef struct fb_sigcache fb_sigcache;

typedef struct fb_sigcache_stats {
    uint64_t hits;
    uint64_t misses;
    uint64_t inserts;
    uint64_t evictions;
    size_t size;
    size_t capacity;
} fb_sigcache_stats;

/* capacity >= 1.  FB_EINVAL or FB_ENOMEM. */
int fb_sigcache_new(size_t capacity, fb_sigcache **out);
void fb_sigcache_free(fb_sigcache *c);

/* true if exactly this triple verified before (and marks it recently used). */
bool fb_sigcache_lookup(fb_sigcache *c, const uint8_t pk[FB_PK_LEN],
                        const uint8_t digest[FB_DIGEST_LEN], const uint8_t sig[FB_SIG_LEN]);

/* Remember a triple that verified.  Only call after a successful verify. */
void fb_sigcache_insert(fb_sigcache *c, const uint8_t pk[FB_PK_LEN],
                        const uint8_t digest[FB_DIGEST_LEN], const uint8_t sig[FB_SIG_LEN]);

void fb_sigcache_get_stats(const fb_sigcache *c, fb_sigcache_stats *out);

#endif
