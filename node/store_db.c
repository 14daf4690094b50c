/* store_db.c - the store's sqlite layer: opening and checking the file, the
 * schema, prepared statements, transactions and the meta row. */
#include "store_db.h"

#include "fb_error.h"
#include "log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* PRAGMA application_id: "fedb", so a stray sqlite file is not taken for ours. */
#define STORE_APP_ID 0x66656462

static const char *const sql_text[SQL__COUNT] = {
    [SQL_BEGIN] = "BEGIN IMMEDIATE",
    [SQL_COMMIT] = "COMMIT",
    [SQL_ROLLBACK] = "ROLLBACK",
    [SQL_META_SET] = "INSERT OR REPLACE INTO meta(k, v) VALUES (?1, ?2)",
    [SQL_REC_INSERT] = "INSERT INTO records(kind, msg_type, view, changing, seq, raw) "
                       "VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    [SQL_REC_LOAD] = "SELECT kind, msg_type, view, changing, seq, raw FROM records ORDER BY id",
    [SQL_GC_SLOTS] = "DELETE FROM records WHERE kind = 2 AND msg_type IN (3, 4, 5) AND seq <= ?1",
    [SQL_GC_CKPT] = "DELETE FROM records WHERE kind = 2 AND msg_type = 6 AND seq < ?1",
    [SQL_GC_OLDER_ID] = "DELETE FROM records WHERE kind = ?1 AND msg_type = ?2 AND id < "
                        "(SELECT max(id) FROM records WHERE kind = ?1 AND msg_type = ?2)",
    [SQL_GC_OLDER_VIEW] = "DELETE FROM records WHERE kind = 2 AND msg_type = ?1 AND view < "
                          "(SELECT max(view) FROM records WHERE kind = 2 AND msg_type = ?1)",
    [SQL_UNDO_GC] = "DELETE FROM undo WHERE seq <= ?1",
    [SQL_UNDO_PUT] = "INSERT OR IGNORE INTO undo(key, seq, old) VALUES (?1, ?2, ?3)",
    [SQL_UNDO_CLEAR] = "DELETE FROM undo",
    [SQL_KV_GET] = "SELECT value FROM kv WHERE key = ?1",
    [SQL_KV_PUT] = "INSERT INTO kv(key, value) VALUES (?1, ?2) "
                   "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
    [SQL_KV_DEL] = "DELETE FROM kv WHERE key = ?1",
    [SQL_KV_CLEAR] = "DELETE FROM kv",
    [SQL_KV_FROM_STAGING] =
        "INSERT INTO kv(key, value) SELECT key, value FROM staging ORDER BY key",
    [SQL_KV_SCAN] = "SELECT key, value FROM kv WHERE key >= ?1 ORDER BY key",
    [SQL_KV_SCAN_LEN] = "SELECT key, length(value) FROM kv WHERE key >= ?1 ORDER BY key",
    /* The oldest undo row after seq holds the value the key had at seq
     * (sqlite takes bare columns from the row that gives min()). */
    [SQL_UNDO_SCAN] = "SELECT key, old, min(seq) FROM undo WHERE seq > ?1 AND key >= ?2 "
                      "GROUP BY key ORDER BY key",
    [SQL_UNDO_SCAN_LEN] = "SELECT key, length(old), min(seq) FROM undo WHERE seq > ?1 AND "
                          "key >= ?2 GROUP BY key ORDER BY key",
    [SQL_CLIENT_PUT] = "INSERT OR REPLACE INTO clients(id, last_ts, seq, reply) "
                       "VALUES (?1, ?2, ?3, ?4)",
    [SQL_CLIENT_LOAD] = "SELECT id, last_ts, seq, reply FROM clients WHERE last_ts != 0 "
                        "ORDER BY id",
    [SQL_CLIENT_CLEAR] = "DELETE FROM clients",
    [SQL_STAGE_CLEAR] = "DELETE FROM staging",
    [SQL_STAGE_PUT] = "INSERT OR REPLACE INTO staging(key, value) VALUES (?1, ?2)",
    [SQL_STAGE_SCAN] = "SELECT key, value FROM staging",
};

/* Undo rows in execution order: a batch appends its rows at the end of the
 * tree (a page or two) and the checkpoint GC cuts a prefix.  Version 1 kept
 * them by (key, seq) with an index on seq, so a batch of 16 new keys wrote
 * about 17 scattered pages more per replica (with 64 clients, 249 KB of WAL
 * and checkpoint writes per batch against 183-196 KB, 4-5% of throughput).
 * The state-transfer scans (by key) sort the rows since a checkpoint instead:
 * rare, and bounded by the log window. */
#define UNDO_TABLE_SQL                                                                             \
    "CREATE TABLE undo (seq INTEGER NOT NULL, key BLOB NOT NULL, old BLOB,"                        \
    " PRIMARY KEY (seq, key)) WITHOUT ROWID;"

static const char schema_sql[] =
    "CREATE TABLE meta (k TEXT PRIMARY KEY NOT NULL, v) WITHOUT ROWID;"
    "CREATE TABLE records (id INTEGER PRIMARY KEY, kind INTEGER NOT NULL,"
    " msg_type INTEGER NOT NULL, view INTEGER NOT NULL, changing INTEGER NOT NULL,"
    " seq INTEGER NOT NULL, raw BLOB);"
    "CREATE INDEX records_gc ON records(kind, msg_type, seq);"
    "CREATE TABLE kv (key BLOB PRIMARY KEY NOT NULL, value BLOB NOT NULL);" UNDO_TABLE_SQL
    "CREATE TABLE clients (id INTEGER PRIMARY KEY, last_ts INTEGER NOT NULL,"
    " seq INTEGER NOT NULL, reply BLOB NOT NULL);"
    "CREATE TABLE staging (key BLOB PRIMARY KEY NOT NULL, value BLOB NOT NULL);";

/* ------------------------------------------------------------ helpers */

int store_db_fail(store_db *d, int sqlite_rc, const char *what)
{
    int prim = sqlite_rc & 0xff;
    LOG_ERROR("store: %s: %s (sqlite %d) in %s", what, d->db ? sqlite3_errmsg(d->db) : "?",
              sqlite_rc, d->path);
    switch (prim) {
    case SQLITE_NOMEM:
        return FB_ENOMEM;
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
        return FB_ECORRUPT;
    case SQLITE_TOOBIG:
        return FB_ETOOBIG;
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return FB_EBUSY;
    default:
        return FB_EIO;
    }
}

sqlite3_stmt *store_db_stmt(store_db *d, store_sql which)
{
    sqlite3_stmt *st = d->st[which];
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return st;
}

int store_db_exec(store_db *d, sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        return store_db_fail(d, rc, sqlite3_sql(st));
    return 0;
}

int store_db_bind_u64(sqlite3_stmt *st, int idx, uint64_t v)
{
    return sqlite3_bind_int64(st, idx, (sqlite3_int64)v);
}

uint64_t store_db_column_u64(sqlite3_stmt *st, int col)
{
    return (uint64_t)sqlite3_column_int64(st, col);
}

int store_db_bind_blob(sqlite3_stmt *st, int idx, const uint8_t *p, size_t len)
{
    static const uint8_t empty[1];
    return sqlite3_bind_blob64(st, idx, len ? p : empty, len, SQLITE_STATIC);
}

int store_db_reserve(store_db *d, size_t n)
{
    if (n <= d->buf_cap)
        return 0;
    uint8_t *p = realloc(d->buf, n);
    if (!p)
        return FB_ENOMEM;
    d->buf = p;
    d->buf_cap = n;
    return 0;
}

void store_db_drop_bounds(store_db *d)
{
    for (size_t i = 0; i < d->nbounds; i++)
        free(d->bounds[i].p);
    free(d->bounds);
    d->bounds = NULL;
    d->nbounds = 0;
    d->bounds_valid = false;
}

int store_db_begin(store_db *d)
{
    return store_db_exec(d, store_db_stmt(d, SQL_BEGIN));
}

int store_db_commit(store_db *d)
{
    return store_db_exec(d, store_db_stmt(d, SQL_COMMIT));
}

void store_db_rollback(store_db *d)
{
    /* No statement may be left mid-step across the rollback. */
    for (int i = 0; i < SQL__COUNT; i++)
        sqlite3_reset(d->st[i]);
    /* A failed COMMIT may already have rolled back; then this is a no-op.
     * Chunk boundaries stay valid: the state at a past seq changes only by
     * an install, which drops them itself. */
    if (!sqlite3_get_autocommit(d->db))
        store_db_exec(d, store_db_stmt(d, SQL_ROLLBACK));
}

/* ------------------------------------------------------------ meta */

static int meta_set_int(store_db *d, const char *k, int64_t v)
{
    sqlite3_stmt *st = store_db_stmt(d, SQL_META_SET);
    sqlite3_bind_text(st, 1, k, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, v);
    return store_db_exec(d, st);
}

int store_db_meta_save(store_db *d)
{
    if (!d->meta_dirty)
        return 0;
    uint8_t lanes[LTHASH_BYTES];
    lthash_to_bytes(&d->hash, lanes);
    sqlite3_stmt *st = store_db_stmt(d, SQL_META_SET);
    sqlite3_bind_text(st, 1, "lthash", -1, SQLITE_STATIC);
    sqlite3_bind_blob(st, 2, lanes, sizeof lanes, SQLITE_STATIC);
    int rc = store_db_exec(d, st);
    if (!rc)
        rc = meta_set_int(d, "last_executed", (int64_t)d->last_executed);
    if (!rc)
        rc = meta_set_int(d, "kv_keys", (int64_t)d->kv_keys);
    if (!rc)
        rc = meta_set_int(d, "undo_floor", (int64_t)d->undo_floor);
    if (!rc)
        rc = meta_set_int(d, "install_seq", d->install_seq);
    if (!rc)
        d->meta_dirty = false;
    return rc;
}

/* One meta value as an integer (absent = FB_ENOENT). */
static int meta_get_int(store_db *d, const char *k, int64_t *out)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(d->db, "SELECT v FROM meta WHERE k = ?1", -1, &st, NULL);
    if (rc != SQLITE_OK)
        return store_db_fail(d, rc, "reading meta");
    sqlite3_bind_text(st, 1, k, -1, SQLITE_STATIC);
    rc = sqlite3_step(st);
    int ret = FB_ENOENT;
    if (rc == SQLITE_ROW && sqlite3_column_type(st, 0) == SQLITE_INTEGER) {
        *out = sqlite3_column_int64(st, 0);
        ret = 0;
    } else if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        ret = store_db_fail(d, rc, "reading meta");
    }
    sqlite3_finalize(st);
    return ret;
}

int store_db_set_resync_pending(store_db *d, bool on)
{
    int rc = meta_set_int(d, "resync_pending", on);
    if (!rc)
        d->resync_pending = on;
    return rc;
}

int store_db_meta_load(store_db *d)
{
    int64_t last, keys, floor_, inst, resync = 0;
    if (meta_get_int(d, "last_executed", &last) || meta_get_int(d, "kv_keys", &keys) ||
        meta_get_int(d, "undo_floor", &floor_) || meta_get_int(d, "install_seq", &inst))
        return FB_ECORRUPT;
    int rrc = meta_get_int(d, "resync_pending", &resync); /* absent in older files */
    if (rrc && rrc != FB_ENOENT)
        return rrc;
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(d->db, "SELECT v FROM meta WHERE k = 'lthash'", -1, &st, NULL);
    if (rc != SQLITE_OK)
        return store_db_fail(d, rc, "reading meta");
    rc = sqlite3_step(st);
    int ret = FB_ECORRUPT;
    if (rc == SQLITE_ROW && sqlite3_column_type(st, 0) == SQLITE_BLOB)
        ret = lthash_from_bytes(&d->hash, sqlite3_column_blob(st, 0),
                                (size_t)sqlite3_column_bytes(st, 0));
    sqlite3_finalize(st);
    if (ret)
        return ret;
    d->last_executed = (uint64_t)last;
    d->kv_keys = (uint64_t)keys;
    d->undo_floor = (uint64_t)floor_;
    d->install_seq = inst;
    d->resync_pending = resync != 0;
    d->meta_dirty = false;
    return 0;
}

/* ------------------------------------------------------------ open */

static int damaged(store_db *d, const char *why, char *err, size_t errlen)
{
    return fb_errf(err, errlen, FB_ECORRUPT,
                   "*** %s is damaged (%s). fedbft never repairs its state silently: run "
                   "`fedbft run --resync` to wipe it and rebuild this replica from its peers by "
                   "state transfer ***",
                   d->path, why);
}

/* Run one pragma, optionally returning its first text column. */
static int pragma(store_db *d, const char *sql, char *out, size_t outlen)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(d->db, sql, -1, &st, NULL);
    if (rc != SQLITE_OK)
        return rc;
    rc = sqlite3_step(st);
    if (out && outlen) {
        const unsigned char *t = rc == SQLITE_ROW ? sqlite3_column_text(st, 0) : NULL;
        snprintf(out, outlen, "%s", t ? (const char *)t : "");
    }
    while (rc == SQLITE_ROW)
        rc = sqlite3_step(st);
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

/* PRAGMA quick_check: O(file size) at startup, the price of never running
 * on a torn or truncated file. */
static int check_integrity(store_db *d, char *err, size_t errlen)
{
    char res[256];
    int rc = pragma(d, "PRAGMA quick_check", res, sizeof res);
    int prim = rc & 0xff;
    if (prim == SQLITE_CORRUPT || prim == SQLITE_NOTADB)
        return damaged(d, sqlite3_errstr(rc), err, errlen);
    if (prim == SQLITE_BUSY || prim == SQLITE_LOCKED)
        return fb_errf(err, errlen, FB_EBUSY,
                       "%s is in use by another process (is another fedbft running with this "
                       "data_dir?)",
                       d->path);
    if (rc != SQLITE_OK)
        return fb_errf(err, errlen, FB_EIO, "%s: cannot read it: %s", d->path,
                       sqlite3_errmsg(d->db));
    if (strcmp(res, "ok") != 0)
        return damaged(d, res, err, errlen);
    return 0;
}

static int set_pragmas(store_db *d, cfg_durability durability, char *err, size_t errlen)
{
    char mode[32];
    int rc = pragma(d, "PRAGMA journal_mode=WAL", mode, sizeof mode);
    if (rc != SQLITE_OK || strcmp(mode, "wal") != 0)
        return fb_errf(err, errlen, FB_EIO, "%s: cannot switch to WAL mode (%s)", d->path,
                       rc != SQLITE_OK ? sqlite3_errmsg(d->db) : mode);
    /* FSYNC: every commit reaches the disk (WAL fsync per commit).  OS: no
     * fsync at all; a killed process loses nothing, a power cut may. */
    rc = pragma(
        d, durability == CFG_DURABILITY_OS ? "PRAGMA synchronous=OFF" : "PRAGMA synchronous=FULL",
        NULL, 0);
    if (rc == SQLITE_OK)
        rc = pragma(d, "PRAGMA cell_size_check=ON", NULL, 0);
    if (rc == SQLITE_OK)
        rc = pragma(d, "PRAGMA trusted_schema=OFF", NULL, 0);
    if (rc != SQLITE_OK)
        return fb_errf(err, errlen, FB_EIO, "%s: %s", d->path, sqlite3_errmsg(d->db));
    return 0;
}

static int count_rows(store_db *d, const char *sql, int64_t *out)
{
    sqlite3_stmt *st;
    int rc = sqlite3_prepare_v2(d->db, sql, -1, &st, NULL);
    if (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        *out = sqlite3_column_int64(st, 0);
        rc = SQLITE_OK;
    }
    sqlite3_finalize(st);
    return rc;
}

/* Run a script that is one transaction (BEGIN ... COMMIT); on a failure
 * roll back what it began. */
static int exec_script(store_db *d, const char *sql, const char *what)
{
    char *msg = NULL;
    int rc = sqlite3_exec(d->db, sql, NULL, NULL, &msg);
    sqlite3_free(msg);
    if (rc == SQLITE_OK)
        return 0;
    rc = store_db_fail(d, rc, what);
    if (!sqlite3_get_autocommit(d->db))
        sqlite3_exec(d->db, "ROLLBACK", NULL, NULL, NULL);
    return rc;
}

/* A new file: tables, the initial meta rows (empty state: zero lanes) and
 * the application id, in one transaction. */
static int create_schema(store_db *d)
{
    char sql[2048];
    snprintf(sql, sizeof sql,
             "BEGIN IMMEDIATE;%s"
             "INSERT INTO meta(k, v) VALUES ('schema_version', %d), ('last_executed', 0),"
             " ('kv_keys', 0), ('undo_floor', 0), ('install_seq', -1),"
             " ('lthash', zeroblob(%d));"
             "PRAGMA application_id=%d;"
             "COMMIT;",
             schema_sql, STORE_SCHEMA_VERSION, LTHASH_BYTES, STORE_APP_ID);
    int rc = exec_script(d, sql, "creating the schema");
    return rc ? rc : store_db_meta_load(d);
}

/* Version 1 to 2: the undo table re-keyed by (seq, key), in one transaction
 * (a crash leaves version 1 whole, and the next start upgrades again). */
static int migrate_v1(store_db *d)
{
    static const char sql[] = "BEGIN IMMEDIATE;"
                              "ALTER TABLE undo RENAME TO undo_v1;"
                              "DROP INDEX undo_seq;" UNDO_TABLE_SQL
                              "INSERT INTO undo(seq, key, old) SELECT seq, key, old FROM undo_v1;"
                              "DROP TABLE undo_v1;"
                              "UPDATE meta SET v = 2 WHERE k = 'schema_version';"
                              "COMMIT;";
    return exec_script(d, sql, "upgrading the schema");
}

/* Create the schema in a new file; refuse a file that is sqlite but not ours,
 * or ours at a schema version this build does not know (upgrading version 1). */
static int ensure_schema(store_db *d, char *err, size_t errlen)
{
    int64_t has_meta = 0, tables = 0, app_id = 0, version = 0;
    int rc = count_rows(d, "SELECT count(*) FROM sqlite_master WHERE type='table' AND name='meta'",
                        &has_meta);
    if (rc == SQLITE_OK)
        rc = count_rows(d, "SELECT count(*) FROM sqlite_master", &tables);
    if (rc == SQLITE_OK)
        rc = count_rows(d, "PRAGMA application_id", &app_id);
    if (rc != SQLITE_OK)
        return fb_errf(err, errlen, store_db_fail(d, rc, "reading the schema"),
                       "%s: cannot read the schema: %s", d->path, sqlite3_errmsg(d->db));
    if ((app_id != 0 && app_id != STORE_APP_ID) || (!has_meta && tables > 0))
        return fb_errf(err, errlen, FB_ECORRUPT,
                       "%s is a sqlite database but not a fedbft one; move it away, or run "
                       "`fedbft run --resync` to replace it",
                       d->path);
    if (!has_meta) {
        if ((rc = create_schema(d)) != 0)
            return fb_errf(err, errlen, rc, "%s: cannot create the schema: %s", d->path,
                           sqlite3_errmsg(d->db));
        return 0;
    }
    if (meta_get_int(d, "schema_version", &version) != 0)
        return damaged(d, "the meta table has no schema_version", err, errlen);
    if (version == 1) {
        if ((rc = migrate_v1(d)) != 0)
            return fb_errf(err, errlen, rc, "%s: cannot upgrade schema version 1 to %d: %s",
                           d->path, STORE_SCHEMA_VERSION, sqlite3_errmsg(d->db));
        version = STORE_SCHEMA_VERSION;
    }
    if (version != STORE_SCHEMA_VERSION)
        return fb_errf(err, errlen, FB_EVERSION,
                       "%s has schema version %lld; this fedbft understands version %d only "
                       "(run the fedbft that wrote it, or `fedbft run --resync` to rebuild it)",
                       d->path, (long long)version, STORE_SCHEMA_VERSION);
    if (store_db_meta_load(d) != 0)
        return damaged(d, "the meta table is incomplete", err, errlen);
    return 0;
}

static int prepare_all(store_db *d, char *err, size_t errlen)
{
    for (int i = 0; i < SQL__COUNT; i++) {
        int rc =
            sqlite3_prepare_v3(d->db, sql_text[i], -1, SQLITE_PREPARE_PERSISTENT, &d->st[i], NULL);
        if (rc != SQLITE_OK)
            return fb_errf(err, errlen, store_db_fail(d, rc, "preparing a statement"),
                           "%s: cannot prepare \"%s\": %s", d->path, sql_text[i],
                           sqlite3_errmsg(d->db));
    }
    return 0;
}

int store_db_open(store_db *d, const char *path, cfg_durability durability, char *err,
                  size_t errlen)
{
    memset(d, 0, sizeof *d);
    d->install_seq = -1;
    if (snprintf(d->path, sizeof d->path, "%s", path) >= (int)sizeof d->path)
        return fb_errf(err, errlen, FB_EINVAL, "store: path too long: %s", path);
    int rc = sqlite3_open_v2(
        path, &d->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        rc = fb_errf(err, errlen, FB_EIO, "%s: cannot open: %s", path,
                     d->db ? sqlite3_errmsg(d->db) : sqlite3_errstr(rc));
        store_db_close(d);
        return rc;
    }
    sqlite3_extended_result_codes(d->db, 1);
    /* Exclusive locking: a second process on the same data_dir is refused,
     * and the WAL index lives in memory (no -shm file). */
    rc = pragma(d, "PRAGMA locking_mode=EXCLUSIVE", NULL, 0) == SQLITE_OK
             ? 0
             : fb_errf(err, errlen, FB_EIO, "%s: %s", path, sqlite3_errmsg(d->db));
    if (!rc)
        rc = check_integrity(d, err, errlen);
    if (!rc)
        rc = set_pragmas(d, durability, err, errlen);
    if (!rc)
        rc = ensure_schema(d, err, errlen);
    if (!rc)
        rc = prepare_all(d, err, errlen);
    if (rc)
        store_db_close(d);
    else
        d->ready = true;
    return rc;
}

void store_db_close(store_db *d)
{
    for (int i = 0; i < SQL__COUNT; i++)
        sqlite3_finalize(d->st[i]);
    if (d->db) {
        /* Fold the WAL into the main file so a closed store is one file (not
         * for a file we refused: nothing is written to it). */
        if (d->ready && sqlite3_get_autocommit(d->db))
            pragma(d, "PRAGMA wal_checkpoint(TRUNCATE)", NULL, 0);
        sqlite3_close(d->db);
    }
    store_db_drop_bounds(d);
    free(d->buf);
    memset(d, 0, sizeof *d);
}
