/* pbft_msg.h - a parsed, signed protocol message, shared by reference.
 *
 * Every message the replica handles is a pbft_msg: the serialized Envelope
 * exactly as signed (so it can be forwarded inside proofs byte for byte), the
 * unpacked Envelope, the unpacked payload, and the envelope digest that the
 * signature covers.  Digests are computed once, when the message is parsed or
 * made; every later check compares stored digests.
 *
 * Request digest = the request's envelope digest (it binds client, timestamp
 * and operation).  Batch digest = BLAKE2b (domain FB_DOM_BATCH) over the
 * pre-prepare's nondet (8 bytes BE) followed by its request digests in order.
 *
 * Ownership: pbft_msg_* constructors return a message with one reference;
 * pbft_msg_unref frees it when the last reference goes.  Messages are
 * immutable after construction.
 *
 * Thread-safety: reference counts are not atomic; a message belongs to one
 * thread (the replica's).
 */
#ifndef PBFT_MSG_H
#define PBFT_MSG_H

#include "digest.h"
#include "keys.h"
#include "fedbft.pb-c.h"

#include <stddef.h>
#include <stdint.h>

/* Signs a digest with the replica's identity key (Ed25519 is deterministic,
 * so the replica stays a pure function of its inputs). */
typedef struct pbft_signer {
    void (*sign)(void *arg, const uint8_t digest[FB_DIGEST_LEN], uint8_t sig[FB_SIG_LEN]);
    void *arg;
} pbft_signer;

/* Counts digest computations, so tests can prove each is done once. */
typedef struct pbft_digest_stats {
    uint64_t requests;  /* request digests computed */
    uint64_t batches;   /* batch digests computed */
    uint64_t envelopes; /* other envelope digests (protocol messages) */
} pbft_digest_stats;

typedef struct pbft_msg {
    int refs;
    int type;                      /* FEDBFT__MSG_TYPE__MSG_* */
    uint32_t sender;               /* Envelope.sender */
    uint8_t digest[FB_DIGEST_LEN]; /* envelope digest (what the signature covers) */
    uint8_t *raw;                  /* serialized Envelope */
    size_t raw_len;
    Fedbft__Envelope *env; /* unpacked raw */
    union {
        ProtobufCMessage *any;
        Fedbft__Request *request;
        Fedbft__PrePrepare *pre_prepare;
        Fedbft__Prepare *prepare;
        Fedbft__Commit *commit;
        Fedbft__Checkpoint *checkpoint;
        Fedbft__ViewChange *view_change;
        Fedbft__NewView *new_view;
    } u;
    /* PRE-PREPARE only: its requests as messages, and the batch digest
     * recomputed from them (equal to u.pre_prepare->digest, or parse fails). */
    struct pbft_msg **reqs;
    size_t nreqs;
} pbft_msg;

/* Look up a request already known (e.g. received directly from the client)
 * so a PRE-PREPARE that relays it reuses its digest instead of recomputing.
 * Returns a borrowed message whose raw bytes equal (raw, len), or NULL. */
typedef struct pbft_req_lookup {
    pbft_msg *(*find)(void *arg, uint32_t client, uint64_t timestamp, const uint8_t *raw,
                      size_t len);
    void *arg;
} pbft_req_lookup;

/* Parse a serialized envelope of a consensus message type (REQUEST,
 * PRE-PREPARE, PREPARE, COMMIT, CHECKPOINT, VIEW-CHANGE, NEW-VIEW) and its
 * payload.  Structure only: signatures are not checked here (see
 * pbft_msg_signatures).  For a PRE-PREPARE the nested requests are parsed too
 * (reusing known ones through lookup, which may be NULL) and the batch digest
 * is recomputed and compared.  stats (may be NULL) counts digests computed.
 * Errors: FB_EINVAL/FB_EPROTO/FB_EVERSION with a reason in err. */
int pbft_msg_parse(const uint8_t *raw, size_t len, const pbft_req_lookup *lookup,
                   pbft_digest_stats *stats, pbft_msg **out, char *err, size_t errlen);

/* Parse an Envelope embedded in another message (packs it, then parses). */
int pbft_msg_from_env(const Fedbft__Envelope *env, const pbft_req_lookup *lookup,
                      pbft_digest_stats *stats, pbft_msg **out, char *err, size_t errlen);

/* Pack payload, sign it as (type, sender) and return the parsed result.  For
 * a PRE-PREPARE use pbft_msg_make_batch (this one re-parses its requests). */
int pbft_msg_make(int type, uint32_t sender, const ProtobufCMessage *payload,
                  const pbft_signer *signer, pbft_digest_stats *stats, pbft_msg **out);

/* The same, for a PRE-PREPARE whose requests the caller holds already
 * (references taken; the batch digest in payload is trusted, not recomputed). */
int pbft_msg_make_batch(int type, uint32_t sender, const ProtobufCMessage *payload,
                        pbft_msg *const *reqs, size_t nreqs, const pbft_signer *signer,
                        pbft_digest_stats *stats, pbft_msg **out);

/* Batch digest over nondet and request digests (counts one batch digest). */
void pbft_batch_digest(uint64_t nondet, pbft_msg *const *reqs, size_t nreqs,
                       pbft_digest_stats *stats, uint8_t out[FB_DIGEST_LEN]);

pbft_msg *pbft_msg_ref(pbft_msg *m);
void pbft_msg_unref(pbft_msg *m);

/* The view and sequence number a message speaks for, 0 where its type has
 * none: PRE-PREPARE, PREPARE and COMMIT both; CHECKPOINT a seq; VIEW-CHANGE
 * (its new view) and NEW-VIEW a view. */
void pbft_msg_view_seq(const pbft_msg *m, uint64_t *view, uint64_t *seq);

/* One signature carried by a message: the signer's replica id (or client id
 * for requests), the digest it covers and the signature bytes (copied). */
typedef struct pbft_sigref {
    int is_client; /* signer is a client (REQUEST), else a replica */
    uint32_t signer;
    uint8_t digest[FB_DIGEST_LEN];
    uint8_t sig[FB_SIG_LEN];
} pbft_sigref;

/* Every signature m carries: its own, each relayed request's, and those of
 * the envelopes nested in proofs (VIEW-CHANGE certificates, NEW-VIEW sets),
 * recursively.  The node verifies all of them before stepping m into the
 * replica; the replica then trusts every signature inside m.  Returns the
 * number found (at most cap filled), or a negative FB_E* code if a nested
 * envelope is malformed.  A COMMIT has none (fb_env_type_signed): the caller
 * must take its sender from the authenticated link it came on. */
int pbft_msg_signatures(const pbft_msg *m, pbft_sigref *out, size_t cap);

#endif
