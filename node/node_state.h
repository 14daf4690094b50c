/* node_state.h - state transfer between nodes (the node side of
 * PBFT_ACT_FETCH_STATE).  Loop thread only.
 *
 * Requester: asks one peer for the checkpoint's state, chunk by chunk
 * (StateRequest / StateResponse).  Chunk 0 carries the checkpoint's client
 * table and KV digest; they must combine to the certified checkpoint digest
 * (pbft_state_digest) or the peer is abandoned.  Chunks go to the store's
 * staging area; the install commits only if the staged pairs hash to that KV
 * digest, so a corrupted chunk is caught and the fetch starts over with the
 * next peer.  A repeated fetch for the same seq (the replica retries when a
 * fetch takes too long) also moves on to the next peer.
 *
 * Server: answers requests for a checkpoint it holds a snapshot of (the
 * client table kept at that checkpoint; KV pairs reconstructed by the store),
 * at most a few at a time; otherwise answers `unavailable`.
 */
#ifndef FB_NODE_STATE_H
#define FB_NODE_STATE_H

#include "digest.h"
#include "fedbft.pb-c.h"
#include "store.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct node_state_io {
    /* Sign and send a state message to replica `to`. */
    int (*send)(void *arg, uint32_t to, int type, const ProtobufCMessage *payload);
    /* Queue a store batch (as store_submit). */
    int (*submit)(void *arg, store_batch *b, store_done_fn done, void *done_arg);
    /* The client table and KV digest kept for checkpoint seq, if any. */
    bool (*snapshot)(void *arg, uint64_t seq, const uint8_t **app_digest,
                     const uint8_t **client_table, size_t *len);
    /* The fetched state is installed (tell the replica). */
    void (*installed)(void *arg, uint64_t seq, const uint8_t app_digest[FB_DIGEST_LEN],
                      const uint8_t *client_table, size_t len);
    void *arg;
    uint64_t (*stable_seq)(void *arg);
} node_state_io;

typedef struct node_state node_state;

int node_state_new(uint32_t self, uint32_t n, const node_state_io *io, node_state **out);
void node_state_free(node_state *s);

/* Fetch the state at checkpoint seq whose certified digest is digest. */
void node_state_fetch(node_state *s, uint64_t seq, const uint8_t digest[FB_DIGEST_LEN]);

/* A verified STATE_REQUEST or STATE_RESPONSE from replica `from` (borrowed). */
void node_state_on_message(node_state *s, uint32_t from, const Fedbft__Envelope *env);

typedef struct node_state_stats {
    uint64_t fetches, installs, bad_peers, chunks_in, chunks_out, refused;
} node_state_stats;

void node_state_get_stats(const node_state *s, node_state_stats *out);

#endif
