/* pbft.h - a PBFT replica as a pure state machine (Castro & Liskov, OSDI '99;
 * TOCS 2002 for view changes with signatures).
 *
 * The caller feeds events into pbft_step and carries out the actions it
 * returns.  The replica never touches a socket, clock, file, thread or global
 * randomness: time arrives in every event, randomness is not needed, and
 * signing goes through the deterministic signer in its config.  The same code
 * runs in the node and in the deterministic simulator (tests/sim).
 *
 * Trust boundary: a message stepped in as PBFT_EV_MESSAGE / PBFT_EV_REQUEST
 * must have had every signature it carries verified by the caller (see
 * pbft_msg_signatures), and its envelope sender must be the authenticated
 * identity (a replica id for protocol messages, the client id for requests).
 * Everything else - views, watermarks, quorums, digests, certificates - the
 * replica checks itself.
 *
 * Actions contract:
 *  - Carry out actions in order.  A PBFT_ACT_PERSIST must be durable before
 *    any later action of the same step is carried out (sends in particular):
 *    that is what keeps a replica restarted after kill -9 from contradicting
 *    what it sent.  Persists may be grouped (one transaction per step).
 *  - PBFT_ACT_EXECUTE: apply the requests in order, then step
 *    PBFT_EV_EXECUTED with one result per request.  The replica issues the
 *    next EXECUTE only after that.  The node persists the results, the new
 *    state and the client-table rows (client, timestamp, result) atomically.
 *  - Messages in actions are borrowed until the next pbft_step call; take a
 *    reference (pbft_msg_ref) to keep one.  An EXECUTE's request array stays
 *    valid until its PBFT_EV_EXECUTED is stepped.  Read-only EXECUTEs (seq 0)
 *    are issued only while no ordered EXECUTE is outstanding.
 *
 * Quorums: f = floor((n-1)/3); a quorum is ceil((n+f+1)/2) replicas, which
 * is 2f+1 when n = 3f+1 and larger otherwise, so that any two quorums share
 * at least f+1 replicas (one correct) for every n >= 4.  A weak certificate
 * is f+1.
 *
 * Thread-safety: a replica belongs to one thread.
 */
#ifndef PBFT_H
#define PBFT_H

#include "pbft_msg.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ------------------------------------------------------------ arithmetic */

uint32_t pbft_f(uint32_t n);                      /* tolerated faults */
uint32_t pbft_quorum(uint32_t n);                 /* ceil((n + f + 1) / 2) */
uint32_t pbft_weak(uint32_t n);                   /* f + 1 */
uint32_t pbft_primary(uint64_t view, uint32_t n); /* view mod n */

/* ------------------------------------------------------------ config */

/* The largest result a request can produce: a 1 MiB value plus the Result
 * envelope around it. */
#define PBFT_DEFAULT_MAX_RESULT (1024 * 1024 + 1024)

typedef struct pbft_config {
    uint32_t n;                       /* replicas, >= 4 */
    uint32_t id;                      /* this replica, < n */
    uint32_t checkpoint_interval;     /* K: checkpoint every K sequence numbers (default 16) */
    uint32_t log_window;              /* L: H = h + L; a multiple of K, >= 2K (default 4K) */
    uint32_t batch_max_requests;      /* per PRE-PREPARE (default 64) */
    uint32_t batch_max_bytes;         /* request bytes per PRE-PREPARE (default 256 KiB) */
    uint64_t batch_max_delay_ms;      /* a partial batch waits at most this long (default 2) */
    uint32_t max_inflight;            /* batches proposed but not executed (default L / 2) */
    uint32_t max_pending;             /* requests queued at a replica (default 4096) */
    uint32_t max_clients;             /* client table rows (default 4096) */
    uint32_t max_result_bytes;        /* cached reply size per client (default 64 KiB) */
    uint64_t request_timeout_ms;      /* a request not executed by then starts a view change
                                         (default 2000) */
    uint64_t view_change_timeout_ms;  /* waiting for NEW-VIEW, from the moment a quorum
                                         voted for our view or later; doubles each
                                         consecutive view change (default 2000) */
    uint32_t view_change_max_backoff; /* at most 2^this times the base (default 4) */
    uint64_t retransmit_ms;           /* resend own uncommitted votes this often (default 500) */
    pbft_signer signer;               /* signs with this replica's identity key */
    bool no_digest_reuse;             /* benchmark ablation: a request relayed again (in a
                                         PRE-PREPARE, a proof, a retransmission) is digested
                                         again instead of reusing the digest computed when it
                                         arrived (default false: reuse).  Within one NEW-VIEW,
                                         O's requests still reuse its certificates' */
} pbft_config;

/* Fill defaults for zero fields and check the rest.  FB_EINVAL with a reason. */
int pbft_config_check(pbft_config *cfg, char *err, size_t errlen);

/* ------------------------------------------------------------ events */

typedef enum pbft_event_kind {
    PBFT_EV_MESSAGE = 1,     /* msg: a protocol message from a replica */
    PBFT_EV_REQUEST,         /* msg: a REQUEST straight from its client */
    PBFT_EV_TICK,            /* only the time passed */
    PBFT_EV_EXECUTED,        /* an EXECUTE (or read-only execute) finished */
    PBFT_EV_STATE_INSTALLED, /* a FETCH_STATE finished: the state at seq is installed */
    PBFT_EV_VIEW_CHANGE,     /* an operator asks this replica to vote for the next view */
    PBFT_EV_FETCH_FAILED,    /* installed.seq: no peer could serve that checkpoint (they
                                keep only recent ones): move to a newer certified one */
} pbft_event_kind;

typedef struct pbft_result {
    const uint8_t *data; /* opaque to the replica (the node packs a Fedbft__Result) */
    size_t len;
} pbft_result;

typedef struct pbft_event {
    pbft_event_kind kind;
    uint64_t now_ms; /* current time, every event; must not go backwards */
    pbft_msg *msg;   /* MESSAGE, REQUEST: borrowed for the call */
    struct {
        uint64_t seq;               /* the EXECUTE's seq, or 0 for a read-only execute */
        pbft_msg *read_req;         /* read-only: the request (as in the action) */
        const pbft_result *results; /* one per request, in order */
        size_t nresults;
        uint8_t app_digest[FB_DIGEST_LEN]; /* state digest after seq (checkpoint seqs) */
    } executed;
    struct {
        uint64_t seq;                      /* STATE_INSTALLED, FETCH_FAILED */
        uint8_t app_digest[FB_DIGEST_LEN]; /* digest of the installed application state */
        const uint8_t *client_table;       /* the client table blob fetched with it */
        size_t client_table_len;
    } installed;
} pbft_event;

/* ------------------------------------------------------------ actions */

typedef enum pbft_action_kind {
    PBFT_ACT_SEND = 1,    /* msg to replica `to` */
    PBFT_ACT_BROADCAST,   /* msg to every other replica */
    PBFT_ACT_PERSIST,     /* record must be durable before later actions */
    PBFT_ACT_EXECUTE,     /* apply a committed batch */
    PBFT_ACT_REPLY,       /* answer a client */
    PBFT_ACT_FETCH_STATE, /* fetch the checkpoint state at seq from peers; re-issued
                             (same seq) every second until installed: the node must
                             carry on with a transfer in progress, not restart it */
    PBFT_ACT_TIMER,       /* next deadline: step a TICK at or after `at_ms` */
} pbft_action_kind;

typedef enum pbft_record_kind {
    PBFT_REC_VIEW = 1, /* view, view_changing: where the replica stands */
    PBFT_REC_MSG,      /* msg: a signed message the replica logged (its own or a peer's) */
    PBFT_REC_STABLE,   /* seq: checkpoint seq is stable (the quorum of CHECKPOINTs that
                          proves it is logged just before this record).  Records about
                          seqs <= it may go, except this record and the CHECKPOINTs for
                          seq itself; pbft_restore also accepts a log collected so */
    PBFT_REC_ABSTAIN,  /* seq: after a wipe, the replica votes for nothing <= seq
                          (pbft_abstain_after_wipe); keep it */
} pbft_record_kind;

typedef struct pbft_record {
    pbft_record_kind kind;
    uint64_t view;
    bool view_changing;
    uint64_t seq;
    pbft_msg *msg;
} pbft_record;

typedef struct pbft_action {
    pbft_action_kind kind;
    uint32_t to;        /* SEND */
    pbft_msg *msg;      /* SEND, BROADCAST */
    pbft_record record; /* PERSIST */
    struct {
        uint64_t seq; /* 0 = read-only request, executed against the current state */
        uint64_t view;
        uint64_t nondet;
        pbft_msg *const *reqs; /* the requests to apply, in order (duplicates removed) */
        size_t nreqs;
        bool checkpoint; /* report the app digest after this seq */
    } execute;
    struct {
        uint32_t client;
        uint64_t timestamp;
        uint64_t view;
        uint64_t seq;
        pbft_result result;
    } reply;
    struct {
        uint64_t seq;
        uint8_t digest[FB_DIGEST_LEN]; /* checkpoint digest the state must match */
        pbft_msg *const *proof;        /* quorum of CHECKPOINT messages for (seq, digest) */
        size_t nproof;
    } fetch;
    uint64_t at_ms; /* TIMER */
} pbft_action;

/* ------------------------------------------------------------ replica */

typedef struct pbft_replica pbft_replica;

/* A new replica in view 0 at sequence 0, or FB_EINVAL / FB_ENOMEM. The
 * config is copied (after pbft_config_check). */
int pbft_new(const pbft_config *cfg, pbft_replica **out, char *err, size_t errlen);
void pbft_free(pbft_replica *r);

/* Rebuild from what a previous incarnation persisted: the records in the
 * order they were persisted, and the execution state the node keeps with the
 * application state (last executed seq and the client table blob from
 * pbft_client_table_export at that seq).  Call once, right after pbft_new.
 * Then step a TICK; the replica rejoins by retransmission and, if needed, a
 * view change or state transfer. */
int pbft_restore(pbft_replica *r, const pbft_record *recs, size_t nrecs, uint64_t last_executed,
                 const uint8_t *client_table, size_t client_table_len);

/* The replica's log was wiped (`fedbft run --resync`): before the wipe it
 * may have voted for any seq up to its old stable checkpoint + L, and it
 * remembers none of it, so a vote now could contradict one it sent then.
 * Until it knows a stable checkpoint S (fetched or executed), and from then
 * on for every seq <= S + L, it sends no PRE-PREPARE, PREPARE or COMMIT; and
 * no VIEW-CHANGE or NEW-VIEW while its stable checkpoint is below S + L.  It
 * still executes (committing on the others' votes alone), checkpoints and
 * serves state.  S + L is persisted as a PBFT_REC_ABSTAIN record, which
 * pbft_restore honours; until that record exists the node calls this again
 * at every start.  Assumes S is at least the stable checkpoint it had before
 * the wipe, which holds when it rejoins a cluster that went on without it.
 * Call after pbft_new, before pbft_restore. */
void pbft_abstain_after_wipe(pbft_replica *r);

/* Step one event.  Returns the actions (borrowed until the next call). */
const pbft_action *pbft_step(pbft_replica *r, const pbft_event *ev, size_t *nactions);

/* The client table as a canonical blob (for checkpoints and state transfer). */
int pbft_client_table_export(const pbft_replica *r, uint8_t **out, size_t *len);

/* Checkpoint digest = BLAKE2b(FB_DOM_STATE) of app_digest || H(client table blob). */
void pbft_state_digest(const uint8_t app_digest[FB_DIGEST_LEN], const uint8_t *client_table,
                       size_t len, uint8_t out[FB_DIGEST_LEN]);

/* A request the replica already knows (for pbft_msg_parse's lookup); a
 * lookup that finds nothing when cfg.no_digest_reuse is set. */
pbft_req_lookup pbft_request_lookup(pbft_replica *r);

/* pbft_msg_parse with this replica's request lookup and digest counters: how
 * the node and the simulator turn received bytes into messages, so a request
 * relayed in a PRE-PREPARE reuses the digest computed when it arrived. */
int pbft_parse(pbft_replica *r, const uint8_t *raw, size_t len, pbft_msg **out, char *err,
               size_t errlen);

/* The stable checkpoint: seq, its digest and the quorum of CHECKPOINT
 * messages proving it (borrowed; valid until the next pbft_step).  seq 0 is
 * the genesis state and has no proof. */
void pbft_stable_checkpoint(const pbft_replica *r, uint64_t *seq, uint8_t digest[FB_DIGEST_LEN],
                            pbft_msg *const **proof, size_t *nproof);

/* Why the replica dropped a message (or refused an event).  Every drop is
 * counted under exactly one reason; pbft_status.rejected is their sum.
 *  STALE_VIEW   for a view other than the one the replica is active in (an
 *               older one, or any while it is changing view); late votes and
 *               VIEW-CHANGE retransmissions for a finished view land here.
 *  NOT_PRIMARY  a PRE-PREPARE from a replica that is not the view's primary.
 *  EQUIVOCATION a replica sent two different PRE-PREPAREs, PREPAREs or COMMITs
 *               for the same (view, seq): the first one is kept.  A correct
 *               replica never does this, even across a crash.
 *  WATERMARK    a sequence number outside the log window (h, h + L]: too old
 *               (at or below the stable checkpoint) or too far ahead.
 *  DUPLICATE    an identical copy of a message the replica already holds.
 *               Retransmissions are duplicates too (a replica re-sends its
 *               unfinished votes, CHECKPOINT and VIEW-CHANGE every
 *               retransmit_ms), so this counter grows in a healthy cluster.
 *  BAD_VIEW_CHANGE, BAD_NEW_VIEW, BAD_CHECKPOINT
 *               a VIEW-CHANGE / NEW-VIEW / CHECKPOINT whose contents fail the
 *               protocol's checks (proofs, sequence numbers; a CHECKPOINT
 *               that contradicts the same sender's earlier one; our own
 *               checkpoint when a quorum certified a different digest).
 *  INVALID      everything else: malformed for its type, a sender out of
 *               range, a request the replica has no room for, an executor or
 *               state-transfer event that does not fit. */
typedef enum pbft_reject {
    PBFT_REJ_STALE_VIEW,
    PBFT_REJ_NOT_PRIMARY,
    PBFT_REJ_EQUIVOCATION,
    PBFT_REJ_WATERMARK,
    PBFT_REJ_DUPLICATE,
    PBFT_REJ_BAD_VIEW_CHANGE,
    PBFT_REJ_BAD_NEW_VIEW,
    PBFT_REJ_BAD_CHECKPOINT,
    PBFT_REJ_INVALID,
    PBFT_REJ_COUNT
} pbft_reject;

/* "stale_view", "not_primary", "equivocation", "watermark", "duplicate",
 * "invalid_view_change", "invalid_new_view", "invalid_checkpoint", "invalid"
 * (the metric label values); "unknown" out of range. */
const char *pbft_reject_name(pbft_reject why);

/* The NEW-VIEW that installed the current view, when this replica is that
 * view's primary and not changing view (borrowed; valid until the next
 * pbft_step), else NULL.  A replica heard voting in an older view missed it:
 * the node may send it this, which it verifies and adopts. */
pbft_msg *pbft_current_new_view(const pbft_replica *r);

typedef struct pbft_status {
    uint32_t id, n, f, quorum;
    uint64_t view;
    bool view_changing;
    uint32_t primary;
    uint64_t last_executed;
    uint64_t last_committed; /* highest seq committed-local (may run ahead of execution) */
    uint64_t stable_seq;     /* h */
    uint64_t high_watermark; /* H */
    uint64_t pending_requests;
    uint64_t view_changes; /* view changes this replica completed */
    uint64_t fetching_seq; /* state transfer in progress to this seq, 0 if none */
    pbft_digest_stats digests;
    uint64_t log_entries;   /* sequence slots held in memory (bounded by L) */
    uint64_t rejected;      /* messages dropped by the acceptance rules (sum of rejected_by) */
    bool abstain_pending;   /* wiped, no stable checkpoint known yet: votes for nothing */
    uint64_t abstain_until; /* votes for no seq <= this (pbft_abstain_after_wipe); 0 = none */
    uint64_t rejected_by[PBFT_REJ_COUNT];
} pbft_status;

void pbft_get_status(const pbft_replica *r, pbft_status *out);

/* The few fields the node checks on every message and step, without the
 * walk over the log window that pbft_get_status does. */
typedef struct pbft_progress {
    uint64_t view;
    bool view_changing;
    uint64_t last_executed;
    uint64_t stable_seq;
    uint32_t primary;
} pbft_progress;

void pbft_get_progress(const pbft_replica *r, pbft_progress *out);

/* Would stepping m (a PREPARE or COMMIT whose signature, if any, is not yet
 * checked) change nothing?  True for the first vote of its sender in a slot
 * that already has its quorum for that vote in m's view (prepared, for a
 * PREPARE; committed, for a COMMIT), unless the vote comes a retransmit
 * interval after the slot committed (a replica catching up, whom the step
 * would help).  The node drops such votes before verifying them: the tail of
 * a quorum costs no signature check.  A duplicate or an equivocating vote is
 * never skipped: the step must see it.  The slot remembers a skipped sender:
 * the same vote sent again (a replica that has not finished the slot
 * retransmits) is not skipped, and its step answers the laggard with this
 * replica's part of the slot, as for a duplicate. */
bool pbft_vote_skip(pbft_replica *r, const pbft_msg *m);

#endif
