/* pbft_clients.h - the client table (exactly-once execution, cached replies)
 * and the requests waiting to be ordered.  Internal to consensus/.
 *
 * One record per client, at most max_clients of them, found by a fixed
 * open-addressing index.  A record holds the last executed timestamp with its
 * reply (PBFT section 4.1: a retransmitted request gets the cached reply, an
 * older one is ignored) and at most one pending request: the newest not yet
 * executed.  Records with a pending request that no batch carries yet sit in a
 * FIFO, so the primary proposes in arrival order.
 */
#ifndef PBFT_CLIENTS_H
#define PBFT_CLIENTS_H

#include "pbft_msg.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct pbft_client {
    uint32_t id;
    uint64_t last_ts;    /* last executed timestamp (0 = none) */
    uint64_t reply_view; /* informational: not exported, not part of the state */
    uint64_t reply_seq;
    uint8_t *reply;
    size_t reply_len;
    pbft_msg *pending;      /* newest request with timestamp > last_ts, or NULL */
    uint64_t pending_since; /* ms: when it arrived */
    uint64_t proposed_seq;  /* seq of the batch carrying it (this view), 0 if none */
    struct pbft_client *q_prev, *q_next;
    bool queued; /* in the unproposed FIFO */
} pbft_client;

typedef struct pbft_clients {
    pbft_client *recs;
    uint32_t count, cap;
    uint32_t *index; /* slot -> recs index + 1; 0 = empty */
    uint32_t index_mask;
    pbft_client *q_head, *q_tail;
    uint32_t npending; /* records with pending != NULL */
    uint32_t nqueued;
    uint64_t rejected_full; /* new clients refused: table full */
} pbft_clients;

int pbft_clients_init(pbft_clients *t, uint32_t cap);
void pbft_clients_close(pbft_clients *t);

/* The record for id, or NULL. */
pbft_client *pbft_clients_find(const pbft_clients *t, uint32_t id);

/* The record for id, created if needed; NULL if the table is full. */
pbft_client *pbft_clients_get(pbft_clients *t, uint32_t id);

/* Make req (a reference is taken) the client's pending request and queue it
 * for proposal.  Replaces an older pending one. */
void pbft_clients_set_pending(pbft_clients *t, pbft_client *c, pbft_msg *req, uint64_t now);

/* Drop the pending request if its timestamp is <= ts. */
void pbft_clients_clear_pending(pbft_clients *t, pbft_client *c, uint64_t ts);

/* FIFO of pending requests not carried by a batch yet. */
void pbft_clients_enqueue(pbft_clients *t, pbft_client *c);
void pbft_clients_dequeue(pbft_clients *t, pbft_client *c);

/* Record an executed request's reply (copied, truncated to max bytes). */
int pbft_clients_record(pbft_clients *t, pbft_client *c, uint64_t ts, uint64_t view, uint64_t seq,
                        const uint8_t *reply, size_t len, size_t max);

/* Canonical blob of every record with last_ts > 0, by client id:
 * repeated { id u32, last_ts u64, seq u64, len u32, reply }, all BE.  The view
 * a request executed in is left out: it is not state. */
int pbft_clients_export(const pbft_clients *t, uint8_t **out, size_t *len);

/* Replace the executed part of the table with a blob from pbft_clients_export
 * (pending requests are kept).  FB_ECORRUPT if malformed, FB_ETOOBIG if it
 * holds more clients than fit. */
int pbft_clients_import(pbft_clients *t, const uint8_t *blob, size_t len, size_t max_reply);

#endif
