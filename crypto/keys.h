/* keys.h - Ed25519 identity keys and the files that hold them.
 *
 * A node's identity is one Ed25519 key pair.  On disk:
 *   DIR/node.key  mode 0600:  "fedbft-ed25519-secret-v1\n<seed hex>\n<public hex>\n"
 *   DIR/node.pub  mode 0644:  "fedbft-ed25519-public-v1\n<public hex>\n"
 * The secret file repeats the public key so that a corrupted seed is detected
 * (the public key derived from the seed must match).  Loading refuses a secret
 * file that group or others can access, like ssh does.
 *
 * Thread-safety: all functions are reentrant.
 */
#ifndef FB_KEYS_H
#define FB_KEYS_H

#include <stddef.h>
#include <stdint.h>

#define FB_PK_LEN 32
#define FB_SK_LEN 64
#define FB_SEED_LEN 32
#define FB_SIG_LEN 64
#define FB_PK_HEX_LEN (2 * FB_PK_LEN)

#define FB_KEY_SECRET_FILE "node.key"
#define FB_KEY_PUBLIC_FILE "node.pub"

typedef struct fb_identity {
    uint8_t pk[FB_PK_LEN]; /* Ed25519 public key */
    uint8_t sk[FB_SK_LEN]; /* libsodium secret key (seed || pk) */
} fb_identity;

/* Initialise libsodium once; every other fb_* crypto call assumes it.
 * Returns 0 or FB_EIO if libsodium cannot initialise. */
int fb_crypto_init(void);

/* A fresh random identity. */
int fb_key_generate(fb_identity *out);

/* The identity for a given 32-byte seed (deterministic; for tests and tools). */
int fb_key_from_seed(const uint8_t seed[FB_SEED_LEN], fb_identity *out);

/* Write DIR/node.key (0600) and DIR/node.pub.  DIR is created (0700) if
 * missing, with any missing parents (0755).  Refuses (FB_EEXIST) to overwrite an existing key
 * unless overwrite != 0.  The secret file is written to a temporary name, fsynced and renamed, so a
 * crash never leaves half a key. */
int fb_key_save(const fb_identity *id, const char *dir, int overwrite, char *err, size_t errlen);

/* Load a secret key file.  Errors: FB_ENOENT (missing), FB_EPERM (group- or
 * world-accessible, or unreadable), FB_ETRUNC (short), FB_ECORRUPT (bad header,
 * bad hex, seed and public key disagree). */
int fb_key_load(const char *path, fb_identity *out, char *err, size_t errlen);

/* Load a public key file (node.pub). Same error codes as fb_key_load, no mode check. */
int fb_pubkey_load(const char *path, uint8_t pk[FB_PK_LEN], char *err, size_t errlen);

/* Hex <-> binary public key (for cluster.json).  parse returns FB_EINVAL unless
 * hex is exactly 64 hex digits. out must hold FB_PK_HEX_LEN + 1 bytes. */
int fb_pubkey_parse(const char *hex, uint8_t pk[FB_PK_LEN]);
void fb_pubkey_format(const uint8_t pk[FB_PK_LEN], char *out);

/* Zero the secret half of an identity. */
void fb_key_wipe(fb_identity *id);

#endif
