/* store_state.c - the KV state at a past checkpoint (current rows merged with
 * undo rows) cut into chunks for state transfer, and the staged install of
 * fetched state, verified against its LtHash digest before the swap.
 *
 * Chunk encoding: repeated { key_len u32 BE, key, value_len u32 BE, value }
 * in key order (bytewise, shorter first on a tie: sqlite's BLOB order).  A
 * chunk ends after STORE_CHUNK_KEYS pairs, or before the pair that would take
 * it past STORE_CHUNK_MAX_BYTES (a chunk always holds at least one pair), so
 * every replica cuts the same state into the same chunks. */
#include "store_db.h"

#include "fb_error.h"
#include "store.h"

#include <stdlib.h>
#include <string.h>

#define PAIR_HDR 8 /* key_len u32 + value_len u32 */

static void put32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

static uint64_t get_be(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

static int key_cmp(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen)
{
    size_t n = alen < blen ? alen : blen;
    int c = n ? memcmp(a, b, n) : 0;
    if (c)
        return c;
    return alen < blen ? -1 : alen > blen;
}

/* Does a chunk holding n pairs in `bytes` have to end before a pair of size sz? */
static bool chunk_full(uint32_t n, size_t bytes, size_t sz)
{
    return n == STORE_CHUNK_KEYS || (n > 0 && bytes + sz > STORE_CHUNK_MAX_BYTES);
}

/* ------------------------------------------------------------ state at seq */

/* Walks the state as it was at seq, in key order, from a start key: the kv
 * table, with every key changed after seq replaced by its value at seq (the
 * old value of its first undo row after seq; absent if that is NULL). */
typedef struct state_iter {
    store_db *d;
    sqlite3_stmt *kv, *ch;
    int kv_rc, ch_rc;    /* SQLITE_ROW while the statement has a current row */
    bool kv_adv, ch_adv; /* the row was handed out: step before looking again */
    bool lengths;        /* values are lengths only (column 1 is length()) */
} state_iter;

typedef struct state_pair {
    const uint8_t *key;
    size_t klen;
    const uint8_t *val; /* NULL when the iterator gives lengths */
    size_t vlen;
} state_pair;

static int iter_step(state_iter *it, sqlite3_stmt *st, int *rc)
{
    *rc = sqlite3_step(st);
    if (*rc != SQLITE_ROW && *rc != SQLITE_DONE)
        return store_db_fail(it->d, *rc, "reading the state");
    return 0;
}

static int iter_open(state_iter *it, store_db *d, uint64_t seq, const store_key *from, bool lengths)
{
    static const uint8_t none[1];
    const uint8_t *fk = from ? from->p : none;
    size_t flen = from ? from->len : 0;
    *it = (state_iter){.d = d, .lengths = lengths};
    it->kv = store_db_stmt(d, lengths ? SQL_KV_SCAN_LEN : SQL_KV_SCAN);
    store_db_bind_blob(it->kv, 1, fk, flen);
    it->ch = store_db_stmt(d, lengths ? SQL_UNDO_SCAN_LEN : SQL_UNDO_SCAN);
    store_db_bind_u64(it->ch, 1, seq);
    store_db_bind_blob(it->ch, 2, fk, flen);
    int rc = iter_step(it, it->kv, &it->kv_rc);
    return rc ? rc : iter_step(it, it->ch, &it->ch_rc);
}

static void iter_close(state_iter *it)
{
    sqlite3_reset(it->kv);
    sqlite3_reset(it->ch);
}

static void row_pair(const state_iter *it, sqlite3_stmt *st, state_pair *p)
{
    p->key = sqlite3_column_blob(st, 0);
    p->klen = (size_t)sqlite3_column_bytes(st, 0);
    if (it->lengths) {
        p->val = NULL;
        p->vlen = (size_t)sqlite3_column_int64(st, 1);
    } else {
        p->vlen = (size_t)sqlite3_column_bytes(st, 1);
        p->val = sqlite3_column_blob(st, 1);
    }
}

/* The next pair (1), the end (0) or an error (< 0).  The pair points into
 * a statement's current row, so that statement moves on at the next call. */
static int iter_next(state_iter *it, state_pair *p)
{
    int rc = 0;
    if (it->kv_adv && (rc = iter_step(it, it->kv, &it->kv_rc)) != 0)
        return rc;
    if (it->ch_adv && (rc = iter_step(it, it->ch, &it->ch_rc)) != 0)
        return rc;
    it->kv_adv = it->ch_adv = false;
    for (;;) {
        bool kv = it->kv_rc == SQLITE_ROW, ch = it->ch_rc == SQLITE_ROW;
        if (!kv && !ch)
            return 0;
        int c = 0;
        if (kv && ch)
            c = key_cmp(sqlite3_column_blob(it->kv, 0), (size_t)sqlite3_column_bytes(it->kv, 0),
                        sqlite3_column_blob(it->ch, 0), (size_t)sqlite3_column_bytes(it->ch, 0));
        if (kv && (!ch || c < 0)) { /* unchanged since seq */
            row_pair(it, it->kv, p);
            it->kv_adv = true;
            return 1;
        }
        /* The key changed after seq: its current row (if any) is not the
         * state at seq; its first undo row after seq is. */
        if (kv && c == 0 && (rc = iter_step(it, it->kv, &it->kv_rc)) != 0)
            return rc;
        if (sqlite3_column_type(it->ch, 1) != SQLITE_NULL) {
            row_pair(it, it->ch, p);
            it->ch_adv = true;
            return 1;
        }
        if ((rc = iter_step(it, it->ch, &it->ch_rc)) != 0) /* absent at seq */
            return rc;
    }
}

/* ------------------------------------------------------------ chunks */

static int bounds_push(store_db *d, const state_pair *p)
{
    store_key *nb = realloc(d->bounds, (d->nbounds + 1) * sizeof *nb);
    if (!nb)
        return FB_ENOMEM;
    d->bounds = nb;
    uint8_t *k = malloc(p->klen ? p->klen : 1);
    if (!k)
        return FB_ENOMEM;
    memcpy(k, p->key, p->klen);
    d->bounds[d->nbounds++] = (store_key){k, p->klen};
    return 0;
}

/* One pass over the state at seq (keys and value lengths only) finds where
 * every chunk starts; later chunk reads for seq start right there. */
static int bounds_build(store_db *d, uint64_t seq)
{
    store_db_drop_bounds(d);
    state_iter it;
    int rc = iter_open(&it, d, seq, NULL, true);
    uint32_t n = 0;
    size_t bytes = 0;
    state_pair p;
    while (rc == 0 && (rc = iter_next(&it, &p)) == 1) {
        size_t sz = PAIR_HDR + p.klen + p.vlen;
        rc = 0;
        if (d->nbounds == 0 || chunk_full(n, bytes, sz)) {
            rc = bounds_push(d, &p);
            n = 0;
            bytes = 0;
        }
        n++;
        bytes += sz;
    }
    iter_close(&it);
    if (rc < 0) {
        store_db_drop_bounds(d);
        return rc;
    }
    d->bounds_valid = true;
    d->bounds_seq = seq;
    return 0;
}

typedef struct chunk_buf {
    uint8_t *p;
    size_t len, cap;
} chunk_buf;

static int chunk_append(chunk_buf *b, const state_pair *p)
{
    size_t need = b->len + PAIR_HDR + p->klen + p->vlen;
    if (need > b->cap) {
        size_t cap = b->cap ? b->cap : 64 * 1024;
        while (cap < need)
            cap *= 2;
        uint8_t *np = realloc(b->p, cap);
        if (!np)
            return FB_ENOMEM;
        b->p = np;
        b->cap = cap;
    }
    uint8_t *w = b->p + b->len;
    put32(w, (uint32_t)p->klen);
    memcpy(w + 4, p->key, p->klen);
    put32(w + 4 + p->klen, (uint32_t)p->vlen);
    if (p->vlen)
        memcpy(w + PAIR_HDR + p->klen, p->val, p->vlen);
    b->len = need;
    return 0;
}

/* Fill b with the pairs from bounds[index] up to the next chunk's start. */
static int chunk_fill(store_db *d, uint64_t seq, uint32_t index, chunk_buf *b)
{
    const store_key *end = index + 1 < d->nbounds ? &d->bounds[index + 1] : NULL;
    state_iter it;
    int rc = iter_open(&it, d, seq, &d->bounds[index], false);
    uint32_t n = 0;
    state_pair p;
    while (rc == 0 && (rc = iter_next(&it, &p)) == 1) {
        rc = 0;
        size_t sz = PAIR_HDR + p.klen + p.vlen;
        if ((end && key_cmp(p.key, p.klen, end->p, end->len) >= 0) || chunk_full(n, b->len, sz))
            break;
        rc = chunk_append(b, &p);
        n++;
    }
    iter_close(&it);
    return rc < 0 ? rc : 0;
}

int store_state_chunk(store_db *d, uint64_t seq, uint32_t index, uint8_t **out, size_t *len,
                      uint32_t *count)
{
    if (seq < d->undo_floor || seq > d->last_executed)
        return FB_ESTATE; /* undo rows for seq are gone, or seq is not executed yet */
    int rc = 0;
    if (!d->bounds_valid || d->bounds_seq != seq)
        rc = bounds_build(d, seq);
    if (rc)
        return rc;
    uint32_t chunks = d->nbounds ? (uint32_t)d->nbounds : 1;
    if (index >= chunks)
        return FB_EINVAL;
    chunk_buf b = {0};
    if (d->nbounds)
        rc = chunk_fill(d, seq, index, &b);
    if (!rc && !b.p && !(b.p = malloc(1)))
        rc = FB_ENOMEM;
    if (rc) {
        free(b.p);
        return rc;
    }
    *out = b.p;
    *len = b.len;
    *count = chunks;
    return 0;
}

/* ------------------------------------------------------------ install */

long store_client_table_check(const uint8_t *blob, size_t len)
{
    long rows = 0;
    uint64_t prev_id = 0;
    for (size_t off = 0; off < len; rows++) {
        if (len - off < 24)
            return FB_ECORRUPT;
        const uint8_t *p = blob + off;
        uint64_t id = get_be(p, 4), ts = get_be(p + 4, 8), rlen = get_be(p + 20, 4);
        if ((rows > 0 && id <= prev_id) || ts == 0 || rlen > STORE_MAX_REPLY ||
            rlen > len - off - 24)
            return FB_ECORRUPT;
        prev_id = id;
        off += 24 + (size_t)rlen;
    }
    return rows;
}

int store_state_install_begin(store_db *d, uint64_t seq)
{
    int rc = store_db_exec(d, store_db_stmt(d, SQL_STAGE_CLEAR));
    if (rc)
        return rc;
    d->install_seq = (int64_t)seq;
    d->meta_dirty = true;
    return 0;
}

int store_state_install_abort(store_db *d)
{
    int rc = store_db_exec(d, store_db_stmt(d, SQL_STAGE_CLEAR));
    if (rc)
        return rc;
    d->install_seq = -1;
    d->meta_dirty = true;
    return 0;
}

int store_state_install_chunk(store_db *d, const uint8_t *data, size_t len)
{
    if (d->install_seq < 0)
        return FB_ESTATE; /* no install_begin */
    for (size_t off = 0; off < len;) {
        if (len - off < 4)
            return FB_ECORRUPT;
        size_t klen = (size_t)get_be(data + off, 4);
        if (klen == 0 || klen > STORE_MAX_KEY || len - off - 4 < klen + 4)
            return FB_ECORRUPT;
        const uint8_t *key = data + off + 4;
        size_t vlen = (size_t)get_be(key + klen, 4);
        if (vlen > STORE_MAX_VALUE || len - off - PAIR_HDR - klen < vlen)
            return FB_ECORRUPT;
        sqlite3_stmt *st = store_db_stmt(d, SQL_STAGE_PUT);
        store_db_bind_blob(st, 1, key, klen);
        store_db_bind_blob(st, 2, key + klen + 4, vlen);
        int rc = store_db_exec(d, st);
        if (rc)
            return rc;
        off += PAIR_HDR + klen + vlen;
    }
    return 0;
}

/* The LtHash and size of what is staged: recomputed from the rows, so a
 * chunk delivered twice cannot skew it. */
static int staged_hash(store_db *d, lthash *h, uint64_t *keys)
{
    lthash_zero(h);
    *keys = 0;
    sqlite3_stmt *st = store_db_stmt(d, SQL_STAGE_SCAN);
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
        const uint8_t *k = sqlite3_column_blob(st, 0);
        size_t klen = (size_t)sqlite3_column_bytes(st, 0);
        const uint8_t *v = sqlite3_column_blob(st, 1);
        size_t vlen = (size_t)sqlite3_column_bytes(st, 1);
        lthash_add(h, k, klen, v, vlen);
        (*keys)++;
    }
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : store_db_fail(d, rc, "reading the staged state");
}

static int install_clients(store_db *d, const uint8_t *blob, size_t len)
{
    int rc = store_db_exec(d, store_db_stmt(d, SQL_CLIENT_CLEAR));
    for (size_t off = 0; !rc && off < len;) {
        const uint8_t *p = blob + off;
        size_t rlen = (size_t)get_be(p + 20, 4);
        sqlite3_stmt *st = store_db_stmt(d, SQL_CLIENT_PUT);
        sqlite3_bind_int64(st, 1, (sqlite3_int64)get_be(p, 4));
        store_db_bind_u64(st, 2, get_be(p + 4, 8));
        store_db_bind_u64(st, 3, get_be(p + 12, 8));
        store_db_bind_blob(st, 4, p + 24, rlen);
        rc = store_db_exec(d, st);
        off += 24 + rlen;
    }
    return rc;
}

int store_state_install_commit(store_db *d, uint64_t seq, const uint8_t expect[FB_DIGEST_LEN],
                               const uint8_t *client_table, size_t client_table_len)
{
    if (d->install_seq < 0 || (uint64_t)d->install_seq != seq)
        return FB_ESTATE; /* nothing staged for seq */
    if (store_client_table_check(client_table, client_table_len) < 0)
        return FB_ECORRUPT;
    lthash h;
    uint64_t keys;
    uint8_t got[FB_DIGEST_LEN];
    int rc = staged_hash(d, &h, &keys);
    if (rc)
        return rc;
    lthash_digest(&h, got);
    if (sodium_memcmp(got, expect, FB_DIGEST_LEN) != 0)
        return FB_ECORRUPT;
    /* Verified: swap in one go (the caller's transaction makes it atomic). */
    static const store_sql swap[] = {SQL_KV_CLEAR, SQL_KV_FROM_STAGING, SQL_STAGE_CLEAR,
                                     SQL_UNDO_CLEAR};
    for (size_t i = 0; !rc && i < sizeof swap / sizeof swap[0]; i++)
        rc = store_db_exec(d, store_db_stmt(d, swap[i]));
    if (!rc)
        rc = install_clients(d, client_table, client_table_len);
    if (rc)
        return rc;
    d->hash = h;
    d->kv_keys = keys;
    d->last_executed = seq;
    d->undo_floor = seq;
    d->install_seq = -1;
    d->meta_dirty = true;
    store_db_drop_bounds(d);
    return 0;
}
