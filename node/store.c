/* store.c - the store's public face: batches, the bounded FIFO, the store
 * thread that runs one transaction per batch, completion through wake +
 * store_poll, and startup loading.  SQL lives in store_db.c, execution in
 * kv.c, checkpoint state in store_state.c. */
#include "store.h"

#include "fb_error.h"
#include "kv.h"
#include "pbft.h"
#include "store_db.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Batches between store_submit and the end of their callback.  Generous for
 * one batch per loop turn, small enough to bound memory when the disk stalls. */
#define STORE_QUEUE_MAX 256

typedef struct batch_rec {
    int kind, msg_type;
    uint64_t view, seq;
    bool changing;
    uint8_t *raw;
    size_t raw_len;
} batch_rec;

typedef enum batch_op { OP_NONE, OP_EXECUTE, OP_READ, OP_CHUNK, OP_INSTALL } batch_op;

typedef enum install_kind {
    INSTALL_BEGIN,
    INSTALL_CHUNK,
    INSTALL_COMMIT,
    INSTALL_ABORT
} install_kind;

typedef struct install_step {
    install_kind kind;
    uint64_t seq;
    uint8_t *data; /* chunk data or client table */
    size_t len;
    uint8_t digest[FB_DIGEST_LEN];
} install_step;

struct store_batch {
    batch_rec *recs;
    size_t nrecs, recs_cap;
    bool has_stable;
    uint64_t stable_seq, undo_upto;
    batch_op op;
    uint64_t seq;   /* execute, chunk */
    uint32_t index; /* chunk */
    uint8_t **reqs; /* execute, read */
    size_t *lens;
    size_t nreqs;
    install_step *steps;
    size_t nsteps, steps_cap;

    /* Filled in by the store thread. */
    store_done_fn done;
    void *arg;
    int status;
    uint8_t **results;
    size_t *result_lens;
    size_t nresults;
    uint8_t app_digest[FB_DIGEST_LEN];
    uint64_t kv_keys;
    uint8_t *chunk;
    size_t chunk_len;
    uint32_t chunk_count;
    store_batch *next;
};

struct store {
    store_db db;
    cfg_durability durability;
    store_wake_fn wake;
    void *wake_arg;
    pthread_t thread;
    bool thread_started;
    /* db_lock: the database belongs to whoever holds it (the store thread
     * for a batch, the owner for store_load). */
    pthread_mutex_t db_lock;
    /* lock guards everything below. */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool stopping;
    store_batch *todo_head, *todo_tail; /* submitted, not yet run */
    store_batch *done_head, *done_tail; /* run, callback not yet called */
    size_t queued;                      /* submitted and not yet polled */
    store_stats stats;
};

/* ------------------------------------------------------------ batches */

store_batch *store_batch_new(void)
{
    return calloc(1, sizeof(store_batch));
}

static void free_outputs(store_batch *b)
{
    for (size_t i = 0; i < b->nresults; i++)
        free(b->results[i]);
    free(b->results);
    free(b->result_lens);
    free(b->chunk);
    b->results = NULL;
    b->result_lens = NULL;
    b->nresults = 0;
    b->chunk = NULL;
    b->chunk_len = 0;
}

void store_batch_free(store_batch *b)
{
    if (!b)
        return;
    for (size_t i = 0; i < b->nrecs; i++)
        free(b->recs[i].raw);
    free(b->recs);
    for (size_t i = 0; i < b->nreqs; i++)
        free(b->reqs[i]);
    free(b->reqs);
    free(b->lens);
    for (size_t i = 0; i < b->nsteps; i++)
        free(b->steps[i].data);
    free(b->steps);
    free_outputs(b);
    free(b);
}

bool store_batch_empty(const store_batch *b)
{
    return b->nrecs == 0 && !b->has_stable && b->op == OP_NONE;
}

static uint8_t *copy_bytes(const uint8_t *p, size_t len)
{
    uint8_t *c = malloc(len ? len : 1);
    if (c && len)
        memcpy(c, p, len);
    return c;
}

int store_batch_record(store_batch *b, int kind, int msg_type, uint64_t view, bool changing,
                       uint64_t seq, const uint8_t *raw, size_t raw_len)
{
    if (!b || kind < PBFT_REC_VIEW || kind > PBFT_REC_ABSTAIN ||
        (kind == PBFT_REC_MSG && (!raw || raw_len == 0)))
        return FB_EINVAL;
    if (b->nrecs == b->recs_cap) {
        size_t cap = b->recs_cap ? b->recs_cap * 2 : 8;
        batch_rec *r = realloc(b->recs, cap * sizeof *r);
        if (!r)
            return FB_ENOMEM;
        b->recs = r;
        b->recs_cap = cap;
    }
    batch_rec r = {kind, kind == PBFT_REC_MSG ? msg_type : 0, view, seq, changing, NULL, 0};
    if (kind == PBFT_REC_MSG) {
        if (!(r.raw = copy_bytes(raw, raw_len)))
            return FB_ENOMEM;
        r.raw_len = raw_len;
    }
    b->recs[b->nrecs++] = r;
    return 0;
}

int store_batch_stable_keep(store_batch *b, uint64_t seq, uint64_t undo_upto)
{
    if (!b || undo_upto > seq)
        return FB_EINVAL;
    /* Two checkpoints stable in one turn: the later one covers the earlier. */
    if (!b->has_stable || seq > b->stable_seq) {
        b->stable_seq = seq;
        b->undo_upto = undo_upto;
    }
    b->has_stable = true;
    return 0;
}

int store_batch_stable(store_batch *b, uint64_t seq)
{
    return store_batch_stable_keep(b, seq, seq);
}

/* Copy n request buffers into the batch. */
static int take_requests(store_batch *b, const uint8_t *const *reqs, const size_t *lens, size_t n)
{
    b->reqs = calloc(n ? n : 1, sizeof *b->reqs);
    b->lens = calloc(n ? n : 1, sizeof *b->lens);
    if (!b->reqs || !b->lens)
        return FB_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        if (!(b->reqs[i] = copy_bytes(reqs[i], lens[i])))
            return FB_ENOMEM;
        b->lens[i] = lens[i];
        b->nreqs = i + 1;
    }
    return 0;
}

int store_batch_execute(store_batch *b, uint64_t seq, const uint8_t *const *reqs,
                        const size_t *lens, size_t n)
{
    if (!b || seq == 0 || (n && (!reqs || !lens)))
        return FB_EINVAL;
    if (b->op != OP_NONE)
        return FB_ESTATE; /* one execute, read, chunk read or install per batch */
    for (size_t i = 0; i < n; i++)
        if (!reqs[i] && lens[i])
            return FB_EINVAL;
    b->op = OP_EXECUTE;
    b->seq = seq;
    return take_requests(b, reqs, lens, n);
}

int store_batch_read(store_batch *b, const uint8_t *req, size_t len)
{
    if (!b || (!req && len))
        return FB_EINVAL;
    if (b->op != OP_NONE)
        return FB_ESTATE;
    b->op = OP_READ;
    return take_requests(b, &req, &len, 1);
}

int store_batch_state_chunk(store_batch *b, uint64_t seq, uint32_t index)
{
    if (!b)
        return FB_EINVAL;
    if (b->op != OP_NONE)
        return FB_ESTATE;
    b->op = OP_CHUNK;
    b->seq = seq;
    b->index = index;
    return 0;
}

/* Install steps may share a batch in their natural order: begin, chunks,
 * commit (the node sends chunk 0 with begin and the last with commit). */
static int add_step(store_batch *b, install_step st, const uint8_t *data, size_t len)
{
    if (!b || (!data && len))
        return FB_EINVAL;
    bool ended = b->nsteps && (b->steps[b->nsteps - 1].kind == INSTALL_COMMIT ||
                               b->steps[b->nsteps - 1].kind == INSTALL_ABORT);
    if ((b->op != OP_NONE && b->op != OP_INSTALL) || ended ||
        ((st.kind == INSTALL_BEGIN || st.kind == INSTALL_ABORT) && b->nsteps))
        return FB_ESTATE;
    if (b->nsteps == b->steps_cap) {
        size_t cap = b->steps_cap ? b->steps_cap * 2 : 4;
        install_step *s = realloc(b->steps, cap * sizeof *s);
        if (!s)
            return FB_ENOMEM;
        b->steps = s;
        b->steps_cap = cap;
    }
    if (st.kind != INSTALL_BEGIN && st.kind != INSTALL_ABORT && !(st.data = copy_bytes(data, len)))
        return FB_ENOMEM;
    st.len = len;
    b->steps[b->nsteps++] = st;
    b->op = OP_INSTALL;
    return 0;
}

int store_batch_install_begin(store_batch *b, uint64_t seq)
{
    return add_step(b, (install_step){.kind = INSTALL_BEGIN, .seq = seq}, NULL, 0);
}

int store_batch_install_chunk(store_batch *b, const uint8_t *data, size_t len)
{
    return add_step(b, (install_step){.kind = INSTALL_CHUNK}, data, len);
}

int store_batch_install_commit(store_batch *b, uint64_t seq,
                               const uint8_t expect_app_digest[FB_DIGEST_LEN],
                               const uint8_t *client_table, size_t client_table_len)
{
    if (!expect_app_digest)
        return FB_EINVAL;
    install_step st = {.kind = INSTALL_COMMIT, .seq = seq};
    memcpy(st.digest, expect_app_digest, FB_DIGEST_LEN);
    return add_step(b, st, client_table, client_table_len);
}

int store_batch_install_abort(store_batch *b)
{
    return add_step(b, (install_step){.kind = INSTALL_ABORT}, NULL, 0);
}

/* ------------------------------------------------------------ running a batch (store thread) */

static int write_records(store_db *d, const store_batch *b)
{
    for (size_t i = 0; i < b->nrecs; i++) {
        const batch_rec *r = &b->recs[i];
        sqlite3_stmt *st = store_db_stmt(d, SQL_REC_INSERT);
        sqlite3_bind_int(st, 1, r->kind);
        sqlite3_bind_int(st, 2, r->msg_type);
        store_db_bind_u64(st, 3, r->view);
        sqlite3_bind_int(st, 4, r->changing);
        store_db_bind_u64(st, 5, r->seq);
        if (r->raw)
            store_db_bind_blob(st, 6, r->raw, r->raw_len);
        int rc = store_db_exec(d, st);
        if (!rc && r->kind == PBFT_REC_ABSTAIN && d->resync_pending)
            rc = store_db_set_resync_pending(d, false); /* the replica knows its bound now */
        if (rc)
            return rc;
    }
    return 0;
}

static int gc_exec(store_db *d, store_sql which, int64_t a, int64_t b2, int nargs)
{
    sqlite3_stmt *st = store_db_stmt(d, which);
    sqlite3_bind_int64(st, 1, a);
    if (nargs > 1)
        sqlite3_bind_int64(st, 2, b2);
    return store_db_exec(d, st);
}

/* Checkpoint seq is stable (PBFT section 4.3): the log below it is no longer
 * needed, nor the undo rows at or below undo_upto (the caller keeps some
 * below seq to go on serving older checkpoints).  VIEW-CHANGE and NEW-VIEW records
 * are kept for the newest view they name (a replica's own VIEW-CHANGE for its
 * current view must survive); STABLE and VIEW records for the newest one. */
static int gc_stable(store_db *d, uint64_t seq, uint64_t undo_upto)
{
    int64_t s = (int64_t)seq;
    int rc = gc_exec(d, SQL_GC_SLOTS, s, 0, 1);
    if (!rc)
        rc = gc_exec(d, SQL_GC_CKPT, s, 0, 1);
    if (!rc)
        rc = gc_exec(d, SQL_GC_OLDER_ID, PBFT_REC_STABLE, 0, 2);
    if (!rc)
        rc = gc_exec(d, SQL_GC_OLDER_ID, PBFT_REC_VIEW, 0, 2);
    if (!rc)
        rc = gc_exec(d, SQL_GC_OLDER_VIEW, FEDBFT__MSG_TYPE__MSG_VIEW_CHANGE, 0, 1);
    if (!rc)
        rc = gc_exec(d, SQL_GC_OLDER_VIEW, FEDBFT__MSG_TYPE__MSG_NEW_VIEW, 0, 1);
    if (!rc)
        rc = gc_exec(d, SQL_UNDO_GC, (int64_t)undo_upto, 0, 1);
    if (!rc && undo_upto > d->undo_floor) {
        d->undo_floor = undo_upto;
        d->meta_dirty = true;
    }
    return rc;
}

static int alloc_results(store_batch *b, size_t n)
{
    b->results = calloc(n ? n : 1, sizeof *b->results);
    b->result_lens = calloc(n ? n : 1, sizeof *b->result_lens);
    return b->results && b->result_lens ? 0 : FB_ENOMEM;
}

static int run_execute(store_db *d, store_batch *b)
{
    if (b->seq <= d->last_executed)
        return FB_ESTATE; /* executed already: never apply a batch twice */
    int rc = alloc_results(b, b->nreqs);
    for (size_t i = 0; !rc && i < b->nreqs; i++) {
        rc = kv_execute(d, b->seq, b->reqs[i], b->lens[i], &b->results[i], &b->result_lens[i]);
        if (!rc)
            b->nresults = i + 1;
    }
    if (!rc) {
        d->last_executed = b->seq;
        d->meta_dirty = true;
    }
    return rc;
}

static int run_read(store_db *d, store_batch *b)
{
    int rc = alloc_results(b, 1);
    if (!rc)
        rc = kv_read(d, b->reqs[0], b->lens[0], &b->results[0], &b->result_lens[0]);
    if (!rc)
        b->nresults = 1;
    return rc;
}

static int run_install(store_db *d, const store_batch *b)
{
    int rc = 0;
    for (size_t i = 0; !rc && i < b->nsteps; i++) {
        const install_step *st = &b->steps[i];
        switch (st->kind) {
        case INSTALL_BEGIN:
            rc = store_state_install_begin(d, st->seq);
            break;
        case INSTALL_CHUNK:
            rc = store_state_install_chunk(d, st->data, st->len);
            break;
        case INSTALL_COMMIT:
            rc = store_state_install_commit(d, st->seq, st->digest, st->data, st->len);
            break;
        case INSTALL_ABORT:
            rc = store_state_install_abort(d);
            break;
        }
    }
    return rc;
}

static int run_op(store_db *d, store_batch *b)
{
    switch (b->op) {
    case OP_NONE:
        return 0;
    case OP_EXECUTE:
        return run_execute(d, b);
    case OP_READ:
        return run_read(d, b);
    case OP_CHUNK:
        return store_state_chunk(d, b->seq, b->index, &b->chunk, &b->chunk_len, &b->chunk_count);
    case OP_INSTALL:
        return run_install(d, b);
    }
    return FB_EINVAL;
}

/* The in-memory mirror of meta, restored when a transaction rolls back. */
typedef struct exec_snapshot {
    lthash hash;
    uint64_t kv_keys, last_executed, undo_floor;
    int64_t install_seq;
    bool meta_dirty;
} exec_snapshot;

static void snapshot_take(const store_db *d, exec_snapshot *sn)
{
    *sn = (exec_snapshot){d->hash,       d->kv_keys,     d->last_executed,
                          d->undo_floor, d->install_seq, d->meta_dirty};
}

static void snapshot_restore(store_db *d, const exec_snapshot *sn)
{
    d->hash = sn->hash;
    d->kv_keys = sn->kv_keys;
    d->last_executed = sn->last_executed;
    d->undo_floor = sn->undo_floor;
    d->install_seq = sn->install_seq;
    d->meta_dirty = sn->meta_dirty;
}

/* One transaction: the records in order, then the operation, then the
 * stable-checkpoint GC, then meta.  Any failure rolls all of it back. */
static int run_transaction(store_db *d, store_batch *b)
{
    exec_snapshot sn;
    snapshot_take(d, &sn);
    int rc = store_db_begin(d);
    if (rc)
        return rc;
    rc = write_records(d, b);
    if (!rc)
        rc = run_op(d, b);
    if (!rc && b->has_stable)
        rc = gc_stable(d, b->stable_seq, b->undo_upto);
    if (!rc)
        rc = store_db_meta_save(d);
    if (!rc)
        rc = store_db_commit(d);
    if (rc) {
        store_db_rollback(d);
        snapshot_restore(d, &sn);
        free_outputs(b);
    }
    return rc;
}

static bool batch_writes(const store_batch *b)
{
    return b->nrecs || b->has_stable || b->op == OP_EXECUTE || b->op == OP_INSTALL;
}

static void run_batch(store *s, store_batch *b)
{
    pthread_mutex_lock(&s->db_lock);
    b->status = store_batch_empty(b) ? 0 : run_transaction(&s->db, b);
    lthash_digest(&s->db.hash, b->app_digest);
    uint64_t keys = b->kv_keys = s->db.kv_keys;
    pthread_mutex_unlock(&s->db_lock);

    pthread_mutex_lock(&s->lock);
    s->stats.batches++;
    s->stats.kv_keys = keys;
    if (b->status == 0 && !store_batch_empty(b)) {
        s->stats.transactions++;
        s->stats.records += b->nrecs;
        s->stats.executes += b->op == OP_EXECUTE;
        s->stats.fsyncs += s->durability == CFG_DURABILITY_FSYNC && batch_writes(b);
    }
    pthread_mutex_unlock(&s->lock);
}

/* The store thread: blocks on the condition variable while idle; on stop it
 * drains what was submitted first. */
static void *store_main(void *arg)
{
    store *s = arg;
    pthread_mutex_lock(&s->lock);
    for (;;) {
        while (!s->todo_head && !s->stopping)
            pthread_cond_wait(&s->cond, &s->lock);
        store_batch *b = s->todo_head;
        if (!b)
            break;
        s->todo_head = b->next;
        if (!s->todo_head)
            s->todo_tail = NULL;
        pthread_mutex_unlock(&s->lock);

        run_batch(s, b);

        pthread_mutex_lock(&s->lock);
        b->next = NULL;
        if (s->done_tail)
            s->done_tail->next = b;
        else
            s->done_head = b;
        s->done_tail = b;
        /* No wake while closing: the owner's wake handle may be gone. */
        bool wake = !s->stopping && s->wake;
        pthread_mutex_unlock(&s->lock);
        if (wake)
            s->wake(s->wake_arg);
        pthread_mutex_lock(&s->lock);
    }
    pthread_mutex_unlock(&s->lock);
    return NULL;
}

/* ------------------------------------------------------------ owner thread */

int store_submit(store *s, store_batch *b, store_done_fn done, void *arg)
{
    if (!s || !b) {
        store_batch_free(b);
        return FB_EINVAL;
    }
    pthread_mutex_lock(&s->lock);
    if (s->queued >= STORE_QUEUE_MAX || s->stopping) {
        pthread_mutex_unlock(&s->lock);
        store_batch_free(b);
        return FB_EBUSY;
    }
    b->done = done;
    b->arg = arg;
    b->next = NULL;
    if (s->todo_tail)
        s->todo_tail->next = b;
    else
        s->todo_head = b;
    s->todo_tail = b;
    s->queued++;
    s->stats.queue_len = s->queued;
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->lock);
    return 0;
}

static void complete(store_batch *b)
{
    store_result res = {
        .status = b->status,
        .seq = b->op == OP_EXECUTE ? b->seq : 0,
        .nresults = b->nresults,
        .results = (const uint8_t *const *)b->results,
        .result_lens = b->result_lens,
        .chunk = b->chunk,
        .chunk_len = b->chunk_len,
        .chunk_count = b->chunk_count,
        .kv_keys = b->kv_keys,
    };
    memcpy(res.app_digest, b->app_digest, FB_DIGEST_LEN);
    if (b->done)
        b->done(b->arg, &res);
}

size_t store_poll(store *s)
{
    pthread_mutex_lock(&s->lock);
    store_batch *list = s->done_head;
    s->done_head = s->done_tail = NULL;
    pthread_mutex_unlock(&s->lock);
    size_t n = 0;
    while (list) {
        store_batch *b = list;
        list = b->next;
        /* Released before the callback, so that it may submit again. */
        pthread_mutex_lock(&s->lock);
        s->queued--;
        s->stats.queue_len = s->queued;
        pthread_mutex_unlock(&s->lock);
        complete(b);
        store_batch_free(b);
        n++;
    }
    return n;
}

void store_get_stats(store *s, store_stats *out)
{
    pthread_mutex_lock(&s->lock);
    *out = s->stats;
    pthread_mutex_unlock(&s->lock);
}

/* ------------------------------------------------------------ open / close */

/* mkdir -p with mode 0700 (the database holds the replica's state). */
static int make_dirs(const char *dir, char *err, size_t errlen)
{
    char path[1024];
    if (snprintf(path, sizeof path, "%s", dir) >= (int)sizeof path)
        return fb_errf(err, errlen, FB_EINVAL, "store: data_dir too long: %s", dir);
    for (char *p = path + 1;; p++) {
        bool end = *p == '\0';
        if (*p == '/' || end) {
            *p = '\0';
            if (mkdir(path, 0700) != 0 && errno != EEXIST)
                return fb_errf(err, errlen, FB_EIO, "store: cannot create %s: %s", path,
                               strerror(errno));
            if (end)
                break;
            *p = '/';
        }
    }
    return 0;
}

static void db_path(const char *dir, const char *suffix, char *out, size_t len)
{
    snprintf(out, len, "%s/%s%s", dir, STORE_DB_FILE, suffix);
}

#define RESYNC_MARKER ".resync"

/* A store_wipe left its marker: record in the (new) database that this
 * replica lost its log, then drop the marker.  A crash in between sets the
 * flag again at the next open: harmless. */
static int take_resync_marker(store *s, const char *dir, char *err, size_t errlen)
{
    char path[1100];
    db_path(dir, RESYNC_MARKER, path, sizeof path);
    if (access(path, F_OK) != 0)
        return 0;
    int rc = store_db_set_resync_pending(&s->db, true);
    if (rc)
        return fb_errf(err, errlen, rc, "store: cannot record the resync in %s", s->db.path);
    if (unlink(path) != 0 && errno != ENOENT)
        return fb_errf(err, errlen, FB_EIO, "store: cannot delete %s: %s", path, strerror(errno));
    return 0;
}

int store_open(const char *dir, cfg_durability durability, store_wake_fn wake, void *wake_arg,
               store **out, char *err, size_t errlen)
{
    if (!dir || !out)
        return fb_errf(err, errlen, FB_EINVAL, "store: no data directory given");
    if (sodium_init() < 0)
        return fb_errf(err, errlen, FB_EIO, "store: libsodium failed to initialise");
    int rc = make_dirs(dir, err, errlen);
    if (rc)
        return rc;
    store *s = calloc(1, sizeof *s);
    if (!s)
        return fb_errf(err, errlen, FB_ENOMEM, "store: out of memory");
    char path[1100];
    db_path(dir, "", path, sizeof path);
    rc = store_db_open(&s->db, path, durability, err, errlen);
    if (rc) {
        free(s);
        return rc;
    }
    rc = take_resync_marker(s, dir, err, errlen);
    if (rc) {
        store_db_close(&s->db);
        free(s);
        return rc;
    }
    s->durability = durability;
    s->wake = wake;
    s->wake_arg = wake_arg;
    s->stats.queue_max = STORE_QUEUE_MAX;
    s->stats.kv_keys = s->db.kv_keys;
    pthread_mutex_init(&s->db_lock, NULL);
    pthread_mutex_init(&s->lock, NULL);
    pthread_cond_init(&s->cond, NULL);
    if (pthread_create(&s->thread, NULL, store_main, s) != 0) {
        store_close(s);
        return fb_errf(err, errlen, FB_EIO, "store: cannot start the store thread");
    }
    s->thread_started = true;
    pthread_setname_np(s->thread, "fb-store"); /* for top -H, perf, `fedbft bench` */
    *out = s;
    return 0;
}

static void free_list(store_batch *b)
{
    while (b) {
        store_batch *next = b->next;
        store_batch_free(b);
        b = next;
    }
}

void store_close(store *s)
{
    if (!s)
        return;
    pthread_mutex_lock(&s->lock);
    s->stopping = true;
    pthread_cond_signal(&s->cond);
    pthread_mutex_unlock(&s->lock);
    if (s->thread_started)
        pthread_join(s->thread, NULL);
    free_list(s->todo_head);
    free_list(s->done_head);
    store_db_close(&s->db);
    pthread_cond_destroy(&s->cond);
    pthread_mutex_destroy(&s->lock);
    pthread_mutex_destroy(&s->db_lock);
    free(s);
}

static int delete_files(const char *dir, bool marker_too, char *err, size_t errlen)
{
    static const char *const suffix[] = {"", "-wal", "-shm", "-journal", RESYNC_MARKER};
    size_t n = sizeof suffix / sizeof suffix[0] - !marker_too;
    for (size_t i = 0; i < n; i++) {
        char path[1100];
        db_path(dir, suffix[i], path, sizeof path);
        if (unlink(path) != 0 && errno != ENOENT)
            return fb_errf(err, errlen, FB_EIO, "store: cannot delete %s: %s", path,
                           strerror(errno));
    }
    return 0;
}

/* Write the marker durably before anything is deleted: a crash in between
 * leaves a replica that abstains needlessly, never one that forgot its votes
 * without knowing it. */
static int write_resync_marker(const char *dir, char *err, size_t errlen)
{
    char path[1100];
    db_path(dir, RESYNC_MARKER, path, sizeof path);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0)
        return fb_errf(err, errlen, FB_EIO, "store: cannot create %s: %s", path, strerror(errno));
    int ok = fsync(fd) == 0;
    close(fd);
    int dfd = open(dir, O_RDONLY | O_DIRECTORY);
    if (dfd >= 0) {
        ok &= fsync(dfd) == 0;
        close(dfd);
    }
    return ok ? 0 : fb_errf(err, errlen, FB_EIO, "store: cannot sync %s", path);
}

int store_wipe(const char *dir, char *err, size_t errlen)
{
    int rc = make_dirs(dir, err, errlen);
    if (!rc)
        rc = write_resync_marker(dir, err, errlen);
    if (!rc)
        rc = delete_files(dir, false, err, errlen);
    return rc;
}

int store_remove(const char *dir, char *err, size_t errlen)
{
    return delete_files(dir, true, err, errlen);
}

/* ------------------------------------------------------------ load */

static int load_records(store_db *d, store_loaded *out)
{
    sqlite3_stmt *st = store_db_stmt(d, SQL_REC_LOAD);
    size_t cap = 0;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        if (out->nrecords == cap) {
            cap = cap ? cap * 2 : 64;
            store_record *r = realloc(out->records, cap * sizeof *r);
            if (!r) {
                sqlite3_reset(st);
                return FB_ENOMEM;
            }
            out->records = r;
        }
        store_record *r = &out->records[out->nrecords];
        *r = (store_record){
            .kind = sqlite3_column_int(st, 0),
            .msg_type = sqlite3_column_int(st, 1),
            .view = store_db_column_u64(st, 2),
            .changing = sqlite3_column_int(st, 3) != 0,
            .seq = store_db_column_u64(st, 4),
        };
        if (sqlite3_column_type(st, 5) == SQLITE_BLOB) {
            r->raw_len = (size_t)sqlite3_column_bytes(st, 5);
            if (!(r->raw = copy_bytes(sqlite3_column_blob(st, 5), r->raw_len))) {
                sqlite3_reset(st);
                return FB_ENOMEM;
            }
        }
        out->nrecords++;
    }
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : store_db_fail(d, rc, "reading records");
}

static void put_be(uint8_t *p, int n, uint64_t v)
{
    for (int i = n - 1; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

/* The client rows as a pbft_clients_export blob: repeated { id u32, last_ts
 * u64, seq u64, len u32, reply }, big-endian, by id. */
static int load_clients(store_db *d, store_loaded *out)
{
    sqlite3_stmt *st = store_db_stmt(d, SQL_CLIENT_LOAD);
    size_t cap = 0;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        size_t rlen = (size_t)sqlite3_column_bytes(st, 3);
        size_t need = out->client_table_len + 24 + rlen;
        if (need > cap) {
            size_t ncap = cap ? cap * 2 : 4096;
            while (ncap < need)
                ncap *= 2;
            uint8_t *p = realloc(out->client_table, ncap);
            if (!p) {
                sqlite3_reset(st);
                return FB_ENOMEM;
            }
            out->client_table = p;
            cap = ncap;
        }
        uint8_t *w = out->client_table + out->client_table_len;
        put_be(w, 4, (uint32_t)sqlite3_column_int64(st, 0));
        put_be(w + 4, 8, store_db_column_u64(st, 1));
        put_be(w + 12, 8, store_db_column_u64(st, 2));
        put_be(w + 20, 4, rlen);
        if (rlen)
            memcpy(w + 24, sqlite3_column_blob(st, 3), rlen);
        out->client_table_len = need;
    }
    sqlite3_reset(st);
    if (rc != SQLITE_DONE)
        return store_db_fail(d, rc, "reading client rows");
    if (!out->client_table && !(out->client_table = malloc(1)))
        return FB_ENOMEM;
    return 0;
}

int store_load(store *s, store_loaded *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&s->db_lock);
    int rc = load_records(&s->db, out);
    if (!rc)
        rc = load_clients(&s->db, out);
    out->last_executed = s->db.last_executed;
    out->kv_keys = s->db.kv_keys;
    out->resynced = s->db.resync_pending;
    lthash_digest(&s->db.hash, out->app_digest);
    pthread_mutex_unlock(&s->db_lock);
    if (rc) {
        store_loaded_free(out);
        return fb_errf(err, errlen, rc, "store: cannot load %s: %s", s->db.path, fb_strerror(rc));
    }
    return 0;
}

void store_loaded_free(store_loaded *l)
{
    if (!l)
        return;
    for (size_t i = 0; i < l->nrecords; i++)
        free(l->records[i].raw);
    free(l->records);
    free(l->client_table);
    memset(l, 0, sizeof *l);
}
