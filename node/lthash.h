/* lthash.h - LtHash, the homomorphic multiset hash of the KV state.
 *
 * The hash is 1024 lanes of 16 bits.  A (key, value) pair expands to an
 * element of the same shape: 2048 bytes of ChaCha20 keystream (zero nonce)
 * keyed by BLAKE2b-256(len(key) u32 BE || key || value), read as 1024
 * little-endian uint16 lanes.  Adding a pair adds its element lane-wise mod
 * 2^16, removing one subtracts it, so the hash of a set does not depend on the
 * order pairs came and went in, and an update costs O(1) per changed pair
 * (Bellare & Micciancio 1997; Lewi et al., "Securing Update Propagation with
 * Homomorphic Hashing", 2019).
 *
 * Thread-safety: pure functions over caller-owned values.
 */
#ifndef FB_LTHASH_H
#define FB_LTHASH_H

#include "digest.h"

#include <stddef.h>
#include <stdint.h>

#define LTHASH_LANES 1024
#define LTHASH_BYTES (LTHASH_LANES * 2)

typedef struct lthash {
    uint16_t lane[LTHASH_LANES];
} lthash;

/* The hash of the empty set (all lanes zero). */
void lthash_zero(lthash *h);

/* Add / remove one (key, value) pair. */
void lthash_add(lthash *h, const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen);
void lthash_sub(lthash *h, const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen);

/* Serialise as 2048 bytes, lanes little-endian (the form kept in the store's
 * meta table and hashed into the digest). */
void lthash_to_bytes(const lthash *h, uint8_t out[LTHASH_BYTES]);
/* FB_ECORRUPT unless len == LTHASH_BYTES. */
int lthash_from_bytes(lthash *h, const uint8_t *in, size_t len);

/* app_digest = fb_digest(FB_DOM_STATE, lanes as 2048 bytes little-endian). */
void lthash_digest(const lthash *h, uint8_t out[FB_DIGEST_LEN]);

#endif
