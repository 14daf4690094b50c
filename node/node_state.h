/* node_state.h - state transfer between nodes (the node side of
 * PBFT_ACT_FETCH_STATE).  Loop thread only.
 *
 * Requester: asks one peer at a time for the checkpoint's state, chunk by
 * chunk (StateRequest / StateResponse), up to REQUEST_WINDOW chunks out at
 * once once chunk 0 has given the count.  Chunk 0 carries the checkpoint's
 * client table and KV digest; they must combine to the certified checkpoint
 * digest (pbft_state_digest) or the peer is abandoned.  Chunks go to the
 * store's staging area; the install commits only if the staged pairs hash to
 * that KV digest.  Since every chunk of an attempt comes from one peer, a
 * corrupted chunk convicts that peer: the staging area is emptied and the
 * fetch starts over with the next peer.
 *
 * A peer keeps the fetch as long as it delivers: a chunk accepted is
 * progress, and a fetch for the same seq again (the replica re-issues it while
 * waiting) changes nothing.  A peer that answers no request for
 * chunk_timeout_ms, or cannot serve the checkpoint, is left for the next one
 * (the next connected one, in id order);
 * when every peer in turn failed, the fetch pauses for pause_ms and then goes
 * round again.  A fetch for a newer checkpoint replaces the current one (and
 * keeps its peer if that peer was delivering); the replica asks for one only
 * once the current one is installed or no peer could serve it.
 *
 * Server: answers requests for a checkpoint it holds a snapshot of (the
 * client table kept at that checkpoint) and the store can still rebuild the
 * KV pairs of, at most a few at a time; otherwise answers `unavailable`.  A
 * snapshot asked for is pinned for a while by the node (node.c), so the
 * cluster moving on does not take it away mid-transfer.
 */
#ifndef FB_NODE_STATE_H
#define FB_NODE_STATE_H

#include "digest.h"
#include "fedbft.pb-c.h"
#include "store.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A peer answering nothing for this long is abandoned.  Generous: serving a
 * chunk is one sqlite scan of at most 1024 pairs (2 MiB), but a sanitizer
 * build of four nodes sharing two cores can stall for a second or more. */
#define NODE_STATE_CHUNK_TIMEOUT_MS 3000
/* After every peer failed in turn: wait this long before going round again. */
#define NODE_STATE_PAUSE_MS 1000

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
    /* Every peer failed to serve checkpoint seq in a row (optional). */
    void (*unservable)(void *arg, uint64_t seq);
    uint64_t (*now_ms)(void *arg); /* a monotonic clock */
    /* Is replica `peer` connected?  Peers that are not are skipped while
     * any is (optional: NULL = all are). */
    bool (*peer_up)(void *arg, uint32_t peer);
    void *arg;
} node_state_io;

typedef struct node_state_config {
    uint32_t self, n;          /* this replica, replicas in the cluster */
    uint64_t chunk_timeout_ms; /* 0 = NODE_STATE_CHUNK_TIMEOUT_MS */
    uint64_t pause_ms;         /* 0 = NODE_STATE_PAUSE_MS */
} node_state_config;

typedef struct node_state node_state;

int node_state_new(const node_state_config *cfg, const node_state_io *io, node_state **out);
void node_state_free(node_state *s);

/* Fetch the state at checkpoint seq whose certified digest is digest.  The
 * same (seq, digest) again while it is being fetched is a no-op. */
void node_state_fetch(node_state *s, uint64_t seq, const uint8_t digest[FB_DIGEST_LEN]);

/* Call every few hundred ms: abandons a silent peer, ends a pause. */
void node_state_tick(node_state *s);

/* A verified STATE_REQUEST or STATE_RESPONSE from replica `from` (borrowed). */
void node_state_on_message(node_state *s, uint32_t from, const Fedbft__Envelope *env);

/* Fault injection (tests): while on, flip a byte in the data of every chunk
 * served, so that the fetcher's install fails its digest check. */
void node_state_set_corrupt(node_state *s, bool on);
bool node_state_corrupt(const node_state *s);

typedef struct node_state_stats {
    uint64_t fetches;    /* checkpoints asked for */
    uint64_t installs;   /* fetches installed */
    uint64_t bad_peers;  /* peers abandoned for state that failed verification */
    uint64_t timeouts;   /* peers abandoned for answering nothing in time */
    uint64_t chunks_in;  /* chunks accepted from peers */
    uint64_t chunks_out; /* chunks served to peers */
    uint64_t refused;    /* requests answered `unavailable` */
} node_state_stats;

void node_state_get_stats(const node_state *s, node_state_stats *out);

#endif
