/* store_db.h - the store's sqlite layer, shared by store.c (batches and the
 * thread), kv.c (executing operations) and store_state.c (state chunks and
 * installs).  Internal to node/; everything here runs on the store thread, or
 * on the owner thread while the store thread is idle (open, load, close).
 *
 * Schema (version STORE_SCHEMA_VERSION):
 *   meta(k TEXT PRIMARY KEY, v)           schema_version, last_executed,
 *                                         lthash (2048 bytes), kv_keys,
 *                                         undo_floor, install_seq (-1 = none)
 *   records(id INTEGER PRIMARY KEY, kind, msg_type, view, changing, seq, raw)
 *   kv(key BLOB PRIMARY KEY, value BLOB)  the replicated state
 *   undo(seq, key, old, PRIMARY KEY(seq, key)) WITHOUT ROWID
 *                                         old = the value before the first
 *                                         change of key at seq (NULL = absent);
 *                                         in seq order: batches append, the GC
 *                                         cuts a prefix (version 1: (key, seq)
 *                                         and an index on seq; upgraded at open)
 *   clients(id INTEGER PRIMARY KEY, last_ts, seq, reply)
 *   staging(key BLOB PRIMARY KEY, value BLOB)  state being installed
 * Unsigned 64-bit numbers are stored as their int64 bit pattern.
 */
#ifndef FB_STORE_DB_H
#define FB_STORE_DB_H

#include "config.h"
#include "lthash.h"

#include <sqlite3.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define STORE_SCHEMA_VERSION 2
#define STORE_MAX_KEY 1024               /* bytes */
#define STORE_MAX_VALUE (1024 * 1024)    /* bytes */
#define STORE_CHUNK_MAX_BYTES (2u << 20) /* a chunk holds at least one pair, else at most this */
/* The cached reply kept in a client row is truncated like the replica's
 * (pbft_config.max_result_bytes, default PBFT_DEFAULT_MAX_RESULT), so the client-table blob the
 * store rebuilds equals pbft_client_table_export byte for byte. */
#include "pbft.h"

#define STORE_MAX_REPLY PBFT_DEFAULT_MAX_RESULT

typedef enum store_sql {
    SQL_BEGIN,
    SQL_COMMIT,
    SQL_ROLLBACK,
    SQL_META_SET,
    SQL_REC_INSERT,
    SQL_REC_LOAD,
    SQL_GC_SLOTS,      /* PRE-PREPARE, PREPARE, COMMIT at or below seq */
    SQL_GC_CKPT,       /* CHECKPOINTs below seq */
    SQL_GC_OLDER_ID,   /* records of (kind, msg_type) older than the newest */
    SQL_GC_OLDER_VIEW, /* messages of msg_type for views below the newest */
    SQL_UNDO_GC,
    SQL_UNDO_PUT,
    SQL_UNDO_CLEAR,
    SQL_KV_GET,
    SQL_KV_PUT,
    SQL_KV_DEL,
    SQL_KV_CLEAR,
    SQL_KV_FROM_STAGING,
    SQL_KV_SCAN,
    SQL_KV_SCAN_LEN,
    SQL_UNDO_SCAN,
    SQL_UNDO_SCAN_LEN,
    SQL_CLIENT_PUT,
    SQL_CLIENT_LOAD,
    SQL_CLIENT_CLEAR,
    SQL_STAGE_CLEAR,
    SQL_STAGE_PUT,
    SQL_STAGE_SCAN,
    SQL__COUNT
} store_sql;

/* A key that starts a state chunk (owned copy). */
typedef struct store_key {
    uint8_t *p;
    size_t len;
} store_key;

typedef struct store_db {
    sqlite3 *db;
    sqlite3_stmt *st[SQL__COUNT];
    char path[1100];
    bool ready; /* opened and checked */
    /* Execution state, mirrored in meta; written back when dirty. */
    lthash hash;
    uint64_t kv_keys, last_executed, undo_floor;
    int64_t install_seq; /* seq the staging area is being filled for; -1 = none */
    bool resync_pending; /* meta resync_pending: wiped, no ABSTAIN record since */
    bool meta_dirty;
    /* Scratch for a value read before it is overwritten (bounded by the
     * largest value). */
    uint8_t *buf;
    size_t buf_cap;
    /* Where each chunk of the state at bounds_seq starts (state at a fixed
     * seq never changes while it is >= undo_floor, so this stays valid until
     * an install). */
    bool bounds_valid;
    uint64_t bounds_seq;
    store_key *bounds;
    size_t nbounds;
} store_db;

/* Open path, check it (quick_check, schema version), create the schema if the
 * file is new, load meta and prepare every statement. */
int store_db_open(store_db *d, const char *path, cfg_durability durability, char *err,
                  size_t errlen);
void store_db_close(store_db *d);

/* A statement ready to bind (reset, bindings cleared). */
sqlite3_stmt *store_db_stmt(store_db *d, store_sql which);
/* Step a statement that returns no rows, then reset it. */
int store_db_exec(store_db *d, sqlite3_stmt *st);
/* Map a failed sqlite call to FB_E* (logging what failed). */
int store_db_fail(store_db *d, int sqlite_rc, const char *what);

int store_db_begin(store_db *d);
int store_db_commit(store_db *d);
void store_db_rollback(store_db *d);
/* Write the in-memory execution state to meta if it changed. */
int store_db_meta_save(store_db *d);
/* Re-read the execution state from meta (after a rollback). */
int store_db_meta_load(store_db *d);

/* Make d->buf hold at least n bytes. */
int store_db_reserve(store_db *d, size_t n);

/* Bind a uint64 as its int64 bit pattern. */
int store_db_bind_u64(sqlite3_stmt *st, int idx, uint64_t v);
uint64_t store_db_column_u64(sqlite3_stmt *st, int col);
/* Bind a blob that may be empty (a NULL pointer would bind SQL NULL). */
int store_db_bind_blob(sqlite3_stmt *st, int idx, const uint8_t *p, size_t len);

/* Forget cached chunk boundaries. */
void store_db_drop_bounds(store_db *d);

/* ---- store_state.c: the KV state at a checkpoint, and installing fetched state */

/* Chunk `index` of the state at seq (undo_floor <= seq <= last_executed):
 * *out is malloc'd (caller frees), *count the number of chunks (>= 1; an
 * empty state is one empty chunk). */
int store_state_chunk(store_db *d, uint64_t seq, uint32_t index, uint8_t **out, size_t *len,
                      uint32_t *count);
/* Set meta resync_pending (in the caller's transaction, if any). */
int store_db_set_resync_pending(store_db *d, bool on);

int store_state_install_begin(store_db *d, uint64_t seq);
int store_state_install_chunk(store_db *d, const uint8_t *data, size_t len);
int store_state_install_abort(store_db *d);
int store_state_install_commit(store_db *d, uint64_t seq, const uint8_t expect[FB_DIGEST_LEN],
                               const uint8_t *client_table, size_t client_table_len);

/* Check a pbft_clients_export blob: well-formed, ids strictly increasing,
 * timestamps non-zero, replies within STORE_MAX_REPLY.  Returns the row
 * count or FB_ECORRUPT. */
long store_client_table_check(const uint8_t *blob, size_t len);

#endif
