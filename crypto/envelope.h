/* envelope.h - signing, checking and (de)serialising the one signed Envelope.
 *
 * The envelope digest is the domain-separated BLAKE2b-256 (domain = the
 * envelope's MsgType) of: version (4 bytes BE), sender (4 bytes BE), payload.
 * The type itself is bound through the domain.
 *
 * Thread-safety: all functions are reentrant.
 */
#ifndef FB_ENVELOPE_H
#define FB_ENVELOPE_H

#include "digest.h"
#include "keys.h"
#include "fedbft.pb-c.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define FB_PROTOCOL_VERSION 1

/* Digest of a (type, version, sender, payload) tuple.  FB_EINVAL for an
 * unknown type. */
int fb_env_digest(int type, uint32_t version, uint32_t sender, const uint8_t *payload,
                  size_t payload_len, uint8_t out[FB_DIGEST_LEN]);

/* Build and sign an envelope around payload and serialise it into a freshly
 * malloc'd buffer (*out, *out_len; caller frees).  Returns 0, FB_EINVAL or FB_ENOMEM.
 *
 * REPLY and COMMIT are not signed (empty signature; id may be NULL; see
 * fb_env_type_signed). */
int fb_env_seal(int type, uint32_t sender, const uint8_t *payload, size_t payload_len,
                const fb_identity *id, uint8_t **out, size_t *out_len);

/* Whether envelopes of this type carry an Ed25519 signature.  Two types do
 * not; their sender is proven by the secure channel they travel on, and no
 * third party is ever shown them:
 *  - REPLY travels only on the client's own link, and the client checks
 *    nothing else.  Signing it cost each replica one Ed25519 signature per
 *    operation (10% more throughput without, `fedbft bench --local 4
 *    --clients 64`).
 *  - COMMIT goes from a replica to each other replica on their link.  PBFT
 *    never forwards a COMMIT and no proof contains one (view changes carry
 *    PRE-PREPAREs and PREPAREs, checkpoints CHECKPOINTs), so a signature
 *    would prove nothing the link does not.  The receiver takes the sender
 *    from the link (a COMMIT naming another replica is dropped before
 *    consensus).  At batch size 1 this saves 12 of 28 Ed25519 verifications
 *    and 4 of 9 signatures per operation in a 4-replica cluster. */
bool fb_env_type_signed(int type);

/* The protobuf descriptor of the payload an envelope of this type carries,
 * or NULL for an unknown type. */
const ProtobufCMessageDescriptor *fb_env_payload_descriptor(int type);

/* Parse a serialised envelope and check its structure (known type, supported
 * version, 64-byte signature; none for REPLY and COMMIT) without computing
 * its digest.  Same errors and ownership as fb_env_open. */
int fb_env_unpack(const uint8_t *buf, size_t len, Fedbft__Envelope **out, char *err, size_t errlen);

/* Parse a serialised envelope, checking structure only (not the signature):
 * known type, supported version, signature of the right length.  On success
 * *out is owned by the caller (fedbft__envelope__free_unpacked), and the
 * envelope digest is written to digest (computed once here, so callers reuse it).
 * Errors: FB_EINVAL (not a protobuf Envelope), FB_EPROTO (unknown type, bad
 * signature length), FB_EVERSION.  Message in err. */
int fb_env_open(const uint8_t *buf, size_t len, Fedbft__Envelope **out,
                uint8_t digest[FB_DIGEST_LEN], char *err, size_t errlen);

#endif
