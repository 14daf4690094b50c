/* lthash.c - LtHash over (key, value) pairs: element expansion and lane arithmetic. */
#include "lthash.h"

#include "fb_error.h"

#include <sodium.h>
#include <string.h>

void lthash_zero(lthash *h)
{
    memset(h, 0, sizeof *h);
}

/* The element of one pair: its seed binds the key length so that
 * ("ab", "c") and ("a", "bc") expand differently. */
static void element(const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen,
                    uint16_t out[LTHASH_LANES])
{
    uint8_t seed[crypto_stream_chacha20_KEYBYTES];
    uint8_t len_be[4] = {(uint8_t)(klen >> 24), (uint8_t)(klen >> 16), (uint8_t)(klen >> 8),
                         (uint8_t)klen};
    crypto_generichash_blake2b_state st;
    crypto_generichash_blake2b_init(&st, NULL, 0, sizeof seed);
    crypto_generichash_blake2b_update(&st, len_be, sizeof len_be);
    crypto_generichash_blake2b_update(&st, key, klen);
    crypto_generichash_blake2b_update(&st, val, vlen);
    crypto_generichash_blake2b_final(&st, seed, sizeof seed);

    static const uint8_t nonce[crypto_stream_chacha20_NONCEBYTES] = {0};
    uint8_t stream[LTHASH_BYTES];
    crypto_stream_chacha20(stream, sizeof stream, nonce, seed);
    /* Little-endian lanes whatever the host byte order. */
    for (size_t i = 0; i < LTHASH_LANES; i++)
        out[i] = (uint16_t)(stream[2 * i] | stream[2 * i + 1] << 8);
    sodium_memzero(seed, sizeof seed);
}

void lthash_add(lthash *h, const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen)
{
    uint16_t e[LTHASH_LANES];
    element(key, klen, val, vlen, e);
    for (size_t i = 0; i < LTHASH_LANES; i++)
        h->lane[i] = (uint16_t)(h->lane[i] + e[i]);
}

void lthash_sub(lthash *h, const uint8_t *key, size_t klen, const uint8_t *val, size_t vlen)
{
    uint16_t e[LTHASH_LANES];
    element(key, klen, val, vlen, e);
    for (size_t i = 0; i < LTHASH_LANES; i++)
        h->lane[i] = (uint16_t)(h->lane[i] - e[i]);
}

void lthash_to_bytes(const lthash *h, uint8_t out[LTHASH_BYTES])
{
    for (size_t i = 0; i < LTHASH_LANES; i++) {
        out[2 * i] = (uint8_t)h->lane[i];
        out[2 * i + 1] = (uint8_t)(h->lane[i] >> 8);
    }
}

int lthash_from_bytes(lthash *h, const uint8_t *in, size_t len)
{
    if (len != LTHASH_BYTES)
        return FB_ECORRUPT;
    for (size_t i = 0; i < LTHASH_LANES; i++)
        h->lane[i] = (uint16_t)(in[2 * i] | in[2 * i + 1] << 8);
    return 0;
}

void lthash_digest(const lthash *h, uint8_t out[FB_DIGEST_LEN])
{
    uint8_t bytes[LTHASH_BYTES];
    lthash_to_bytes(h, bytes);
    fb_digest(FB_DOM_STATE, bytes, sizeof bytes, out);
}
