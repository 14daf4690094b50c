/* store.h - the node's durable state: one sqlite database in WAL mode,
 * written by the store's own thread in group-committed transactions.
 *
 * What lives there:
 *  - consensus records (pbft.h PBFT_ACT_PERSIST), in persist order, garbage-
 *    collected when a checkpoint becomes stable;
 *  - the replicated key-value state (put/get/del/cas), changed only by
 *    executing committed batches in sequence order;
 *  - the client table rows (client id, last timestamp, seq, reply), written in
 *    the same transaction as the execution that produced them;
 *  - the execution state: last executed seq and the state hash.
 *
 * State digest: the KV state is hashed incrementally with a homomorphic
 * multiset hash (LtHash: 1024 16-bit lanes; each (key, value) pair expands to
 * 2048 bytes with ChaCha20 keyed by BLAKE2b(key, value); adding a pair adds
 * lane-wise, removing subtracts).  A change costs one removal and one addition,
 * so a checkpoint digest costs O(changes), not O(state).  app_digest =
 * BLAKE2b-256(FB_DOM_STATE, lanes).
 *
 * State at a checkpoint (for state transfer): every change keeps the
 * overwritten value in an undo table until the stable checkpoint passes it
 * (or a chosen distance past it, store_batch_stable_keep), so the state at
 * any seq from there on can be read while execution goes on.
 *
 * Ordering: batches commit and complete in submission order.  A batch holds
 * any number of records, at most one STABLE, and at most one of: an execute,
 * a read-only read, a state chunk read, or install steps (begin, chunks,
 * commit, in that order).  A state chunk holds at most STORE_CHUNK_KEYS pairs
 * and at most 2 MiB (at least one pair); an empty state is one empty chunk.
 *
 * Threads: store_open/store_load/store_close on the owner (loop) thread
 * before/after the loop runs; batches are built and submitted on the owner
 * thread; the store thread calls cfg wake (thread-safe, e.g. uv_async_send)
 * when batches finish; the owner calls store_poll to run their callbacks.
 * The queue of submitted batches is bounded (FB_EBUSY beyond it).
 *
 * Corruption: store_open runs PRAGMA quick_check; a damaged database is
 * FB_ECORRUPT with a message telling the operator to run `fedbft run --resync`
 * (it is never silently repaired).
 */
#ifndef FB_STORE_H
#define FB_STORE_H

#include "config.h"
#include "digest.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define STORE_DB_FILE "fedbft.db"
#define STORE_CHUNK_KEYS 1024 /* KV pairs per state-transfer chunk */

typedef struct store store;
typedef void (*store_wake_fn)(void *arg);

/* Open (creating if needed) DIR/fedbft.db.  durability FSYNC = synchronous
 * FULL (every commit reaches the disk), OS = synchronous OFF (the OS decides;
 * survives a process kill, not a power cut). */
int store_open(const char *dir, cfg_durability durability, store_wake_fn wake, void *wake_arg,
               store **out, char *err, size_t errlen);

/* Finish every submitted batch (running no callbacks), checkpoint the WAL and
 * close.  Safe on NULL. */
void store_close(store *s);

/* For `fedbft run --resync`: delete the database files in dir and leave a
 * marker (fedbft.db.resync), so that the next store_open records in the new
 * database that this replica lost its log: store_loaded.resynced stays true
 * until a PBFT_REC_ABSTAIN record is written (see pbft_abstain_after_wipe). */
int store_wipe(const char *dir, char *err, size_t errlen);

/* Delete the database files in dir and any resync marker (tests, tools). */
int store_remove(const char *dir, char *err, size_t errlen);

/* ------------------------------------------------------------ startup */

typedef struct store_record {
    int kind;      /* PBFT_REC_* */
    int msg_type;  /* FEDBFT__MSG_TYPE__* for PBFT_REC_MSG, else 0 */
    uint64_t view; /* REC_VIEW: the view; REC_MSG: the message's view if it has one */
    bool changing; /* REC_VIEW */
    uint64_t seq;  /* REC_STABLE: the seq; REC_MSG: the message's seq if it has one */
    uint8_t *raw;  /* REC_MSG: the serialized envelope */
    size_t raw_len;
} store_record;

typedef struct store_loaded {
    store_record *records; /* in persist order */
    size_t nrecords;
    uint64_t last_executed;
    uint8_t *client_table; /* pbft_clients_export format, sorted by client id */
    size_t client_table_len;
    uint8_t app_digest[FB_DIGEST_LEN];
    uint64_t kv_keys; /* number of keys held */
    bool resynced;    /* wiped by store_wipe, and no PBFT_REC_ABSTAIN record since */
} store_loaded;

/* Everything a restarting node needs (synchronous; before the loop runs). */
int store_load(store *s, store_loaded *out, char *err, size_t errlen);
void store_loaded_free(store_loaded *l);

/* ------------------------------------------------------------ batches */

typedef struct store_batch store_batch;

store_batch *store_batch_new(void);
void store_batch_free(store_batch *b);
bool store_batch_empty(const store_batch *b);

/* Append a consensus record (raw is copied). */
int store_batch_record(store_batch *b, int kind, int msg_type, uint64_t view, bool changing,
                       uint64_t seq, const uint8_t *raw, size_t raw_len);

/* Checkpoint seq is stable: drop records it makes obsolete (PRE-PREPARE,
 * PREPARE, COMMIT at or below seq; CHECKPOINTs below seq; older STABLE, VIEW,
 * VIEW-CHANGE and NEW-VIEW records than the newest of each) and undo entries
 * at or below seq. */
int store_batch_stable(store_batch *b, uint64_t seq);
/* The same, but undo entries go only at or below undo_upto (<= seq), so the
 * state at checkpoints in (undo_upto, seq] can still be read (served to a
 * replica that is fetching an older checkpoint). */
int store_batch_stable_keep(store_batch *b, uint64_t seq, uint64_t undo_upto);

/* Execute committed batch seq: each request is a serialized REQUEST envelope
 * (copied).  Results (packed Fedbft__Result, one per request, in order), the
 * client rows (client, timestamp, seq, result), last_executed = seq and the
 * new state hash commit together with the batch's records. */
int store_batch_execute(store_batch *b, uint64_t seq, const uint8_t *const *reqs,
                        const size_t *lens, size_t n);

/* Read-only request (a GET) against the executed state, in batch order. */
int store_batch_read(store_batch *b, const uint8_t *req, size_t len);

/* Read chunk `index` of the KV state as it was at seq (a checkpoint at or
 * above the stable one): up to STORE_CHUNK_KEYS pairs in key order, encoded as
 * repeated { key_len u32 BE, key, value_len u32 BE, value }. */
int store_batch_state_chunk(store_batch *b, uint64_t seq, uint32_t index);

/* Install fetched state, in steps: begin (clears a staging area), one chunk
 * at a time (same encoding as above), then commit: checks that the staged
 * pairs hash to expect_app_digest and, only then, atomically replaces the KV
 * state, the client rows (from the pbft_clients_export blob), last_executed =
 * seq and clears the undo table.  A mismatch leaves everything as it was and
 * completes with FB_ECORRUPT. */
int store_batch_install_begin(store_batch *b, uint64_t seq);
int store_batch_install_chunk(store_batch *b, const uint8_t *data, size_t len);
int store_batch_install_commit(store_batch *b, uint64_t seq,
                               const uint8_t expect_app_digest[FB_DIGEST_LEN],
                               const uint8_t *client_table, size_t client_table_len);
/* Give an install up: empty the staging area (the KV state is untouched); a
 * later chunk needs a new begin.  Alone in its batch. */
int store_batch_install_abort(store_batch *b);

/* What a finished batch produced (valid during the callback only). */
typedef struct store_result {
    int status; /* 0, or FB_E* (the transaction was rolled back) */
    /* execute / read */
    uint64_t seq; /* executed seq; 0 for a read */
    size_t nresults;
    const uint8_t *const *results;
    const size_t *result_lens;
    uint8_t app_digest[FB_DIGEST_LEN]; /* after execute or install */
    uint64_t kv_keys;                  /* keys held after the batch */
    /* state chunk */
    const uint8_t *chunk;
    size_t chunk_len;
    uint32_t chunk_count; /* chunks in the state at that seq */
} store_result;

typedef void (*store_done_fn)(void *arg, const store_result *res);

/* Queue a batch (ownership passes to the store).  FB_EBUSY if the bounded
 * queue is full (the batch is freed, nothing written). */
int store_submit(store *s, store_batch *b, store_done_fn done, void *arg);

/* Owner thread: run callbacks of finished batches, in submission order. */
size_t store_poll(store *s);

typedef struct store_stats {
    uint64_t batches, transactions, records, executes, fsyncs;
    uint64_t queue_len, queue_max;
    uint64_t kv_keys;
} store_stats;

void store_get_stats(store *s, store_stats *out);

#endif
