/* kv.c - the replicated key-value state machine: decoding requests, applying
 * operations deterministically, undo rows, LtHash upkeep and client rows. */
#include "kv.h"

#include "envelope.h"
#include "fb_error.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef Fedbft__Result__Status kv_status;

/* What an operation produced, before packing.  value points into the
 * request or into d->buf, valid until the next lookup. */
typedef struct kv_outcome {
    kv_status status;
    const uint8_t *value;
    size_t vlen;
    char error[128];
} kv_outcome;

static void outcome(kv_outcome *o, kv_status status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void outcome(kv_outcome *o, kv_status status, const char *fmt, ...)
{
    o->status = status;
    o->value = NULL;
    o->vlen = 0;
    o->error[0] = '\0';
    if (fmt) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(o->error, sizeof o->error, fmt, ap);
        va_end(ap);
    }
}

static int result_pack(const kv_outcome *o, uint8_t **out, size_t *len)
{
    Fedbft__Result r = FEDBFT__RESULT__INIT;
    r.status = o->status;
    r.value.data = (uint8_t *)o->value;
    r.value.len = o->vlen;
    r.error = (char *)o->error;
    size_t n = fedbft__result__get_packed_size(&r);
    /* An OK result with no value packs to zero bytes; keep a real pointer. */
    uint8_t *buf = malloc(n ? n : 1);
    if (!buf)
        return FB_ENOMEM;
    fedbft__result__pack(&r, buf);
    *out = buf;
    *len = n;
    return 0;
}

/* ------------------------------------------------------------ state access */

/* The current value of key, copied into d->buf (a later write to kv must not
 * pull it from under us). */
static int lookup(store_db *d, const uint8_t *key, size_t klen, bool *found, size_t *vlen)
{
    sqlite3_stmt *st = store_db_stmt(d, SQL_KV_GET);
    store_db_bind_blob(st, 1, key, klen);
    int rc = sqlite3_step(st);
    *found = false;
    *vlen = 0;
    int ret = 0;
    if (rc == SQLITE_ROW) {
        size_t n = (size_t)sqlite3_column_bytes(st, 0);
        ret = store_db_reserve(d, n ? n : 1);
        if (!ret) {
            if (n)
                memcpy(d->buf, sqlite3_column_blob(st, 0), n);
            *found = true;
            *vlen = n;
        }
    } else if (rc != SQLITE_DONE) {
        ret = store_db_fail(d, rc, "reading a key");
    }
    sqlite3_reset(st);
    return ret;
}

/* Replace key's current value (found, d->buf[0..oldlen)) with val, or delete
 * it when val is NULL: undo row first (only the first change at seq counts:
 * it holds the value the key had before seq), then the row, then the hash. */
static int change(store_db *d, uint64_t seq, const uint8_t *key, size_t klen, bool found,
                  size_t oldlen, const uint8_t *val, size_t vlen)
{
    sqlite3_stmt *st = store_db_stmt(d, SQL_UNDO_PUT);
    store_db_bind_blob(st, 1, key, klen);
    store_db_bind_u64(st, 2, seq);
    if (found)
        store_db_bind_blob(st, 3, d->buf, oldlen);
    int rc = store_db_exec(d, st);
    if (rc)
        return rc;
    st = store_db_stmt(d, val ? SQL_KV_PUT : SQL_KV_DEL);
    store_db_bind_blob(st, 1, key, klen);
    if (val)
        store_db_bind_blob(st, 2, val, vlen);
    if ((rc = store_db_exec(d, st)) != 0)
        return rc;
    if (found)
        lthash_sub(&d->hash, key, klen, d->buf, oldlen);
    else
        d->kv_keys++;
    if (val)
        lthash_add(&d->hash, key, klen, val, vlen);
    else
        d->kv_keys--;
    d->meta_dirty = true;
    return 0;
}

/* ------------------------------------------------------------ operations */

static bool same(const uint8_t *a, size_t alen, const uint8_t *b, size_t blen)
{
    return alen == blen && (alen == 0 || memcmp(a, b, alen) == 0);
}

static int op_get(store_db *d, const Fedbft__Operation *op, kv_outcome *o)
{
    bool found;
    size_t n;
    int rc = lookup(d, op->key.data, op->key.len, &found, &n);
    if (rc)
        return rc;
    if (!found) {
        outcome(o, FEDBFT__RESULT__STATUS__STATUS_NOT_FOUND, "key not found");
        return 0;
    }
    outcome(o, FEDBFT__RESULT__STATUS__STATUS_OK, NULL);
    o->value = d->buf;
    o->vlen = n;
    return 0;
}

static int op_put(store_db *d, uint64_t seq, const Fedbft__Operation *op, kv_outcome *o)
{
    bool found;
    size_t n;
    int rc = lookup(d, op->key.data, op->key.len, &found, &n);
    if (!rc && !(found && same(d->buf, n, op->value.data, op->value.len)))
        rc = change(d, seq, op->key.data, op->key.len, found, n, op->value.data, op->value.len);
    if (!rc)
        outcome(o, FEDBFT__RESULT__STATUS__STATUS_OK, NULL);
    return rc;
}

static int op_del(store_db *d, uint64_t seq, const Fedbft__Operation *op, kv_outcome *o)
{
    bool found;
    size_t n;
    int rc = lookup(d, op->key.data, op->key.len, &found, &n);
    if (rc)
        return rc;
    if (!found) {
        outcome(o, FEDBFT__RESULT__STATUS__STATUS_NOT_FOUND, "key not found");
        return 0;
    }
    rc = change(d, seq, op->key.data, op->key.len, true, n, NULL, 0);
    if (!rc)
        outcome(o, FEDBFT__RESULT__STATUS__STATUS_OK, NULL);
    return rc;
}

/* CAS: with expect_absent the key must not exist; otherwise it must exist and
 * hold `expected`.  A failed precondition reports the current value. */
static int op_cas(store_db *d, uint64_t seq, const Fedbft__Operation *op, kv_outcome *o)
{
    bool found;
    size_t n;
    int rc = lookup(d, op->key.data, op->key.len, &found, &n);
    if (rc)
        return rc;
    bool ok =
        op->expect_absent ? !found : found && same(d->buf, n, op->expected.data, op->expected.len);
    if (!ok && !found) {
        outcome(o, FEDBFT__RESULT__STATUS__STATUS_NOT_FOUND, "key not found");
        return 0;
    }
    if (!ok) {
        outcome(o, FEDBFT__RESULT__STATUS__STATUS_CAS_MISMATCH, "current value differs");
        o->value = d->buf;
        o->vlen = n;
        return 0;
    }
    if (!(found && same(d->buf, n, op->value.data, op->value.len)))
        rc = change(d, seq, op->key.data, op->key.len, found, n, op->value.data, op->value.len);
    if (!rc)
        outcome(o, FEDBFT__RESULT__STATUS__STATUS_OK, NULL);
    return rc;
}

const char *kv_infer_invalid(const Fedbft__InferParams *p)
{
    if (!p)
        return "INFER has no parameters";
    if (strlen(p->prompt ? p->prompt : "") > KV_INFER_MAX_PROMPT)
        return "INFER prompt is longer than 65536 bytes";
    if (p->max_tokens < 1 || p->max_tokens > KV_INFER_MAX_TOKENS)
        return "INFER max_tokens must be 1..4096";
    if (!(p->temperature >= 0 && p->temperature <= 2))
        return "INFER temperature must be 0..2";
    if (!(p->top_p >= 0 && p->top_p <= 1))
        return "INFER top_p must be 0..1";
    return NULL;
}

/* Limits every operation must respect; false (with the reason in o) if not. */
static bool op_valid(const Fedbft__Operation *op, kv_outcome *o)
{
    kv_status bad = FEDBFT__RESULT__STATUS__STATUS_INVALID;
    if (!op) {
        outcome(o, bad, "request has no operation");
        return false;
    }
    if (op->kind == FEDBFT__OPERATION__KIND__OP_INFER) {
        const char *why = kv_infer_invalid(op->infer);
        if (why)
            outcome(o, bad, "%s", why);
        return why == NULL;
    }
    if (op->key.len == 0) {
        outcome(o, bad, "key is empty");
        return false;
    }
    if (op->key.len > STORE_MAX_KEY) {
        outcome(o, bad, "key is %zu bytes; the limit is %d", op->key.len, STORE_MAX_KEY);
        return false;
    }
    if (op->value.len > STORE_MAX_VALUE) {
        outcome(o, bad, "value is %zu bytes; the limit is %d", op->value.len, STORE_MAX_VALUE);
        return false;
    }
    if (op->expected.len > STORE_MAX_VALUE) {
        outcome(o, bad, "expected value is %zu bytes; the limit is %d", op->expected.len,
                STORE_MAX_VALUE);
        return false;
    }
    return true;
}

static int apply(store_db *d, uint64_t seq, const Fedbft__Operation *op, kv_outcome *o)
{
    if (!op_valid(op, o))
        return 0;
    switch (op->kind) {
    case FEDBFT__OPERATION__KIND__OP_PUT:
        return op_put(d, seq, op, o);
    case FEDBFT__OPERATION__KIND__OP_GET:
        return op_get(d, op, o);
    case FEDBFT__OPERATION__KIND__OP_DEL:
        return op_del(d, seq, op, o);
    case FEDBFT__OPERATION__KIND__OP_CAS:
        return op_cas(d, seq, op, o);
    case FEDBFT__OPERATION__KIND__OP_INFER:
        /* Ordering is all consensus does for an INFER: each replica then runs
         * it through its batcher and sends the client an InferResult. */
        outcome(o, FEDBFT__RESULT__STATUS__STATUS_OK, NULL);
        o->value = (const uint8_t *)"accepted";
        o->vlen = 8;
        return 0;
    default:
        outcome(o, FEDBFT__RESULT__STATUS__STATUS_INVALID, "unknown operation kind %d",
                (int)op->kind);
        return 0;
    }
}

/* ------------------------------------------------------------ requests */

/* The Request inside a REQUEST envelope, or NULL with the reason in o.  The
 * caller frees both with free_request. */
static Fedbft__Request *decode(const uint8_t *raw, size_t len, Fedbft__Envelope **env,
                               kv_outcome *o)
{
    *env = NULL;
    if (fb_env_unpack(raw, len, env, NULL, 0) != 0) {
        outcome(o, FEDBFT__RESULT__STATUS__STATUS_INVALID, "not a well-formed envelope");
        return NULL;
    }
    if ((*env)->type != FEDBFT__MSG_TYPE__MSG_REQUEST) {
        outcome(o, FEDBFT__RESULT__STATUS__STATUS_INVALID, "envelope does not carry a REQUEST");
        return NULL;
    }
    Fedbft__Request *rq = fedbft__request__unpack(NULL, (*env)->payload.len, (*env)->payload.data);
    if (!rq)
        outcome(o, FEDBFT__RESULT__STATUS__STATUS_INVALID, "not a well-formed Request");
    return rq;
}

static void free_request(Fedbft__Envelope *env, Fedbft__Request *rq)
{
    if (rq)
        fedbft__request__free_unpacked(rq, NULL);
    if (env)
        fedbft__envelope__free_unpacked(env, NULL);
}

/* The client row, in the execution's transaction; the cached reply is cut
 * like the replica cuts it, so the exported tables agree. */
static int client_row(store_db *d, const Fedbft__Request *rq, uint64_t seq, const uint8_t *res,
                      size_t len)
{
    sqlite3_stmt *st = store_db_stmt(d, SQL_CLIENT_PUT);
    sqlite3_bind_int64(st, 1, rq->client);
    store_db_bind_u64(st, 2, rq->timestamp);
    store_db_bind_u64(st, 3, seq);
    store_db_bind_blob(st, 4, res, len < STORE_MAX_REPLY ? len : STORE_MAX_REPLY);
    return store_db_exec(d, st);
}

int kv_execute(store_db *d, uint64_t seq, const uint8_t *req, size_t len, uint8_t **out,
               size_t *out_len)
{
    kv_outcome o;
    Fedbft__Envelope *env;
    Fedbft__Request *rq = decode(req, len, &env, &o);
    int rc = rq ? apply(d, seq, rq->op, &o) : 0;
    if (!rc)
        rc = result_pack(&o, out, out_len);
    if (!rc && rq && (rc = client_row(d, rq, seq, *out, *out_len)) != 0) {
        free(*out);
        *out = NULL;
    }
    free_request(env, rq);
    return rc;
}

int kv_read(store_db *d, const uint8_t *req, size_t len, uint8_t **out, size_t *out_len)
{
    kv_outcome o;
    Fedbft__Envelope *env;
    Fedbft__Request *rq = decode(req, len, &env, &o);
    int rc = 0;
    if (rq && (!rq->op || rq->op->kind != FEDBFT__OPERATION__KIND__OP_GET))
        outcome(&o, FEDBFT__RESULT__STATUS__STATUS_INVALID, "only GET may be read-only");
    else if (rq && op_valid(rq->op, &o))
        rc = op_get(d, rq->op, &o);
    if (!rc)
        rc = result_pack(&o, out, out_len);
    free_request(env, rq);
    return rc;
}
