/* test_store.c - the durable store against a real sqlite file in a temp dir:
 * records and their GC, KV execution (every operation and CAS branch),
 * determinism across stores, the LtHash state digest, the client-table blob,
 * durability modes, crash safety (fork + SIGKILL), corruption, state chunks at
 * an old checkpoint, verified installs and the bounded queue; and state
 * transfer between node_state instances over real stores (node_state.c):
 * corrupt, silent and unable peers, retries that must not restart. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "envelope.h"
#include "fb_error.h"
#include "keys.h"
#include "node_state.h"
#include "pbft.h"
#include "pbft_clients.h"
#include "store.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sodium.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define DEADLINE_S 30
#define MAX_VALUE (1024 * 1024)

static fb_identity client_key;

/* ------------------------------------------------------------ fixture */

typedef struct waiter {
    pthread_mutex_t m;
    pthread_cond_t c;
    uint64_t wakes;
} waiter;

typedef struct fx {
    char dir[64];
    store *s;
    waiter w;
} fx;

static void on_wake(void *arg)
{
    waiter *w = arg;
    pthread_mutex_lock(&w->m);
    w->wakes++;
    pthread_cond_signal(&w->c);
    pthread_mutex_unlock(&w->m);
}

/* Poll until `want` callbacks ran, waiting for wakes with a deadline. */
static void wait_polled(store *s, waiter *w, size_t want)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += DEADLINE_S;
    size_t got = 0;
    for (;;) {
        pthread_mutex_lock(&w->m);
        uint64_t seen = w->wakes;
        pthread_mutex_unlock(&w->m);
        got += store_poll(s);
        if (got >= want)
            return;
        pthread_mutex_lock(&w->m);
        int rc = 0;
        while (w->wakes == seen && rc == 0)
            rc = pthread_cond_timedwait(&w->c, &w->m, &until);
        pthread_mutex_unlock(&w->m);
        assert_int_not_equal(rc, ETIMEDOUT);
    }
}

static int open_store(fx *f, cfg_durability d, char *err, size_t errlen)
{
    return store_open(f->dir, d, on_wake, &f->w, &f->s, err, errlen);
}

static void fx_open(fx *f, cfg_durability d)
{
    char err[512] = "";
    int rc = open_store(f, d, err, sizeof err);
    if (rc)
        fail_msg("store_open: %s", err);
}

static void fx_close(fx *f)
{
    store_close(f->s);
    f->s = NULL;
}

static int setup(void **state)
{
    fx *f = calloc(1, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/fbstoreXXXXXX");
    if (!mkdtemp(f->dir))
        return -1;
    pthread_mutex_init(&f->w.m, NULL);
    pthread_cond_init(&f->w.c, NULL);
    fx_open(f, CFG_DURABILITY_OS);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx *f = *state;
    fx_close(f);
    store_remove(f->dir, NULL, 0);
    rmdir(f->dir);
    pthread_cond_destroy(&f->w.c);
    pthread_mutex_destroy(&f->w.m);
    free(f);
    return 0;
}

/* ------------------------------------------------------------ batches and outcomes */

typedef struct outcome {
    int status;
    uint64_t seq;
    size_t n;
    uint8_t **res;
    size_t *len;
    uint8_t app[FB_DIGEST_LEN];
    uint8_t *chunk;
    size_t chunk_len;
    uint32_t chunk_count;
} outcome;

static void on_done(void *arg, const store_result *r)
{
    outcome *o = arg;
    o->status = r->status;
    o->seq = r->seq;
    o->n = r->nresults;
    o->res = calloc(r->nresults + 1, sizeof *o->res);
    o->len = calloc(r->nresults + 1, sizeof *o->len);
    for (size_t i = 0; i < r->nresults; i++) {
        o->res[i] = malloc(r->result_lens[i] + 1);
        memcpy(o->res[i], r->results[i], r->result_lens[i]);
        o->len[i] = r->result_lens[i];
    }
    memcpy(o->app, r->app_digest, FB_DIGEST_LEN);
    o->chunk = malloc(r->chunk_len + 1);
    if (r->chunk_len)
        memcpy(o->chunk, r->chunk, r->chunk_len);
    o->chunk_len = r->chunk_len;
    o->chunk_count = r->chunk_count;
}

static void outcome_free(outcome *o)
{
    for (size_t i = 0; i < o->n; i++)
        free(o->res[i]);
    free(o->res);
    free(o->len);
    free(o->chunk);
    free(o);
}

static outcome *run(fx *f, store_batch *b)
{
    outcome *o = calloc(1, sizeof *o);
    assert_int_equal(store_submit(f->s, b, on_done, o), 0);
    wait_polled(f->s, &f->w, 1);
    return o;
}

/* A signed REQUEST envelope (malloc'd). */
static uint8_t *request(uint32_t client, uint64_t ts, Fedbft__Operation *op, size_t *len)
{
    Fedbft__Request rq = FEDBFT__REQUEST__INIT;
    rq.client = client;
    rq.timestamp = ts;
    rq.op = op;
    size_t n = fedbft__request__get_packed_size(&rq);
    uint8_t *payload = malloc(n + 1), *out;
    fedbft__request__pack(&rq, payload);
    assert_int_equal(
        fb_env_seal(FEDBFT__MSG_TYPE__MSG_REQUEST, client, payload, n, &client_key, &out, len), 0);
    free(payload);
    return out;
}

static ProtobufCBinaryData bin(const void *p, size_t n)
{
    return (ProtobufCBinaryData){n, (uint8_t *)p};
}

static uint8_t *req_op(uint32_t client, uint64_t ts, int kind, const void *key, size_t klen,
                       const void *val, size_t vlen, size_t *len)
{
    Fedbft__Operation op = FEDBFT__OPERATION__INIT;
    op.kind = (Fedbft__Operation__Kind)kind;
    op.key = bin(key, klen);
    op.value = bin(val, vlen);
    return request(client, ts, &op, len);
}

static uint8_t *req_put(uint64_t ts, const char *k, const char *v, size_t *len)
{
    return req_op(1000, ts, FEDBFT__OPERATION__KIND__OP_PUT, k, strlen(k), v, strlen(v), len);
}

static uint8_t *req_get(uint64_t ts, const char *k, size_t *len)
{
    return req_op(1000, ts, FEDBFT__OPERATION__KIND__OP_GET, k, strlen(k), NULL, 0, len);
}

static uint8_t *req_del(uint64_t ts, const char *k, size_t *len)
{
    return req_op(1000, ts, FEDBFT__OPERATION__KIND__OP_DEL, k, strlen(k), NULL, 0, len);
}

static uint8_t *req_cas(uint64_t ts, const char *k, const char *expect, bool absent, const char *v,
                        size_t *len)
{
    Fedbft__Operation op = FEDBFT__OPERATION__INIT;
    op.kind = FEDBFT__OPERATION__KIND__OP_CAS;
    op.key = bin(k, strlen(k));
    op.value = bin(v, strlen(v));
    if (expect)
        op.expected = bin(expect, strlen(expect));
    op.expect_absent = absent;
    return request(1000, ts, &op, len);
}

/* Execute n owned requests as batch seq (frees them). */
static outcome *exec_reqs(fx *f, uint64_t seq, uint8_t **reqs, size_t *lens, size_t n)
{
    store_batch *b = store_batch_new();
    assert_int_equal(store_batch_execute(b, seq, (const uint8_t *const *)reqs, lens, n), 0);
    for (size_t i = 0; i < n; i++)
        free(reqs[i]);
    return run(f, b);
}

/* len is read through a pointer, after the call: the request built in the
 * same argument list has filled it by then (argument order is unspecified). */
static outcome *exec1(fx *f, uint64_t seq, uint8_t *req, const size_t *len)
{
    size_t n = *len;
    return exec_reqs(f, seq, &req, &n, 1);
}

static outcome *read1(fx *f, uint8_t *req, const size_t *len)
{
    store_batch *b = store_batch_new();
    assert_int_equal(store_batch_read(b, req, *len), 0);
    free(req);
    return run(f, b);
}

/* Check a packed Result. */
static void expect_result(const uint8_t *p, size_t len, int status, const char *value,
                          const char *error_part)
{
    Fedbft__Result *r = fedbft__result__unpack(NULL, len, p);
    assert_non_null(r);
    assert_int_equal(r->status, status);
    if (value) {
        assert_int_equal(r->value.len, strlen(value));
        assert_memory_equal(r->value.data, value, r->value.len);
    } else {
        assert_int_equal(r->value.len, 0);
    }
    if (error_part)
        assert_non_null(strstr(r->error, error_part));
    else
        assert_string_equal(r->error, "");
    fedbft__result__free_unpacked(r, NULL);
}

static void get_expect(fx *f, const char *k, int status, const char *value)
{
    size_t len;
    uint8_t *rq = req_get(1, k, &len);
    outcome *o = read1(f, rq, &len);
    assert_int_equal(o->status, 0);
    assert_int_equal(o->n, 1);
    expect_result(o->res[0], o->len[0], status, value,
                  status == FEDBFT__RESULT__STATUS__STATUS_OK ? NULL : "");
    outcome_free(o);
}

static void load(fx *f, store_loaded *ld)
{
    char err[256];
    assert_int_equal(store_load(f->s, ld, err, sizeof err), 0);
}

static void digest_now(fx *f, uint8_t out[FB_DIGEST_LEN])
{
    store_loaded ld;
    load(f, &ld);
    memcpy(out, ld.app_digest, FB_DIGEST_LEN);
    store_loaded_free(&ld);
}

/* ------------------------------------------------------------ records */

static void add_msg(store_batch *b, int type, uint64_t view, uint64_t seq, const char *raw)
{
    assert_int_equal(store_batch_record(b, PBFT_REC_MSG, type, view, false, seq,
                                        (const uint8_t *)raw, strlen(raw)),
                     0);
}

static void test_records_roundtrip(void **state)
{
    fx *f = *state;
    store_loaded ld;
    load(f, &ld);
    assert_int_equal(ld.nrecords, 0);
    assert_int_equal(ld.last_executed, 0);
    assert_int_equal(ld.client_table_len, 0);
    assert_int_equal(ld.kv_keys, 0);
    uint8_t zero[2048] = {0}, d0[FB_DIGEST_LEN];
    fb_digest(FB_DOM_STATE, zero, sizeof zero, d0);
    assert_memory_equal(ld.app_digest, d0, FB_DIGEST_LEN);
    store_loaded_free(&ld);

    store_batch *b = store_batch_new();
    assert_true(store_batch_empty(b));
    assert_int_equal(store_batch_record(b, PBFT_REC_VIEW, 0, 3, true, 0, NULL, 0), 0);
    add_msg(b, FEDBFT__MSG_TYPE__MSG_PRE_PREPARE, 3, 7, "pre-prepare");
    add_msg(b, FEDBFT__MSG_TYPE__MSG_PREPARE, 3, 7, "prepare");
    assert_int_equal(store_batch_record(b, PBFT_REC_STABLE, 0, 0, false, 5, NULL, 0), 0);
    assert_int_equal(store_batch_record(b, PBFT_REC_MSG, 4, 0, false, 0, NULL, 0), FB_EINVAL);
    assert_int_equal(store_batch_record(b, 9, 0, 0, false, 0, NULL, 0), FB_EINVAL);
    assert_false(store_batch_empty(b));
    outcome *o = run(f, b);
    assert_int_equal(o->status, 0);
    outcome_free(o);
    b = store_batch_new();
    add_msg(b, FEDBFT__MSG_TYPE__MSG_COMMIT, 3, 7, "commit");
    o = run(f, b);
    outcome_free(o);

    fx_close(f);
    fx_open(f, CFG_DURABILITY_OS);
    load(f, &ld);
    assert_int_equal(ld.nrecords, 5);
    assert_int_equal(ld.records[0].kind, PBFT_REC_VIEW);
    assert_int_equal(ld.records[0].view, 3);
    assert_true(ld.records[0].changing);
    assert_null(ld.records[0].raw);
    const char *raws[] = {"pre-prepare", "prepare"};
    for (int i = 0; i < 2; i++) {
        const store_record *r = &ld.records[1 + i];
        assert_int_equal(r->kind, PBFT_REC_MSG);
        assert_int_equal(r->msg_type, FEDBFT__MSG_TYPE__MSG_PRE_PREPARE + i);
        assert_int_equal(r->view, 3);
        assert_int_equal(r->seq, 7);
        assert_int_equal(r->raw_len, strlen(raws[i]));
        assert_memory_equal(r->raw, raws[i], r->raw_len);
    }
    assert_int_equal(ld.records[3].kind, PBFT_REC_STABLE);
    assert_int_equal(ld.records[3].seq, 5);
    assert_int_equal(ld.records[4].msg_type, FEDBFT__MSG_TYPE__MSG_COMMIT);
    store_loaded_free(&ld);
}

static void test_gc_by_stable(void **state)
{
    fx *f = *state;
    store_batch *b = store_batch_new();
    assert_int_equal(store_batch_record(b, PBFT_REC_VIEW, 0, 0, false, 0, NULL, 0), 0);
    for (uint64_t s = 1; s <= 5; s++) {
        add_msg(b, FEDBFT__MSG_TYPE__MSG_PRE_PREPARE, 0, s, "pp");
        add_msg(b, FEDBFT__MSG_TYPE__MSG_PREPARE, 0, s, "p");
        add_msg(b, FEDBFT__MSG_TYPE__MSG_COMMIT, 0, s, "c");
    }
    add_msg(b, FEDBFT__MSG_TYPE__MSG_CHECKPOINT, 0, 2, "ck2");
    assert_int_equal(store_batch_record(b, PBFT_REC_STABLE, 0, 0, false, 2, NULL, 0), 0);
    add_msg(b, FEDBFT__MSG_TYPE__MSG_VIEW_CHANGE, 2, 0, "vc2");
    add_msg(b, FEDBFT__MSG_TYPE__MSG_VIEW_CHANGE, 1, 0, "vc1");
    add_msg(b, FEDBFT__MSG_TYPE__MSG_NEW_VIEW, 1, 0, "nv1");
    add_msg(b, FEDBFT__MSG_TYPE__MSG_NEW_VIEW, 2, 0, "nv2");
    assert_int_equal(store_batch_record(b, PBFT_REC_VIEW, 0, 2, false, 0, NULL, 0), 0);
    add_msg(b, FEDBFT__MSG_TYPE__MSG_CHECKPOINT, 0, 4, "ck4");
    outcome_free(run(f, b));

    b = store_batch_new();
    assert_int_equal(store_batch_record(b, PBFT_REC_STABLE, 0, 0, false, 4, NULL, 0), 0);
    assert_int_equal(store_batch_stable(b, 4), 0);
    outcome *o = run(f, b);
    assert_int_equal(o->status, 0);
    outcome_free(o);

    store_loaded ld;
    load(f, &ld);
    /* Left: PP/P/C for seq 5, ck4, vc2, nv2, VIEW 2, STABLE 4 - in persist order. */
    const char *want[] = {"pp", "p", "c", "vc2", "nv2", "VIEW", "ck4", "STABLE"};
    assert_int_equal(ld.nrecords, 8);
    for (size_t i = 0; i < ld.nrecords; i++) {
        const store_record *r = &ld.records[i];
        if (r->kind == PBFT_REC_VIEW) {
            assert_string_equal(want[i], "VIEW");
            assert_int_equal(r->view, 2);
        } else if (r->kind == PBFT_REC_STABLE) {
            assert_string_equal(want[i], "STABLE");
            assert_int_equal(r->seq, 4);
        } else {
            assert_int_equal(r->raw_len, strlen(want[i]));
            assert_memory_equal(r->raw, want[i], r->raw_len);
            if (r->msg_type <= FEDBFT__MSG_TYPE__MSG_COMMIT)
                assert_int_equal(r->seq, 5);
        }
    }
    store_loaded_free(&ld);
}

/* ------------------------------------------------------------ execution */

static void test_execute_operations(void **state)
{
    fx *f = *state;
    size_t len;
    uint64_t seq = 0, ts = 0;
    outcome *o;
    const int OK = FEDBFT__RESULT__STATUS__STATUS_OK, NF = FEDBFT__RESULT__STATUS__STATUS_NOT_FOUND,
              MISMATCH = FEDBFT__RESULT__STATUS__STATUS_CAS_MISMATCH,
              INVALID = FEDBFT__RESULT__STATUS__STATUS_INVALID;

    /* PUT then GET in one batch: operations apply in order. */
    uint8_t *rq[4];
    size_t ln[4];
    rq[0] = req_put(++ts, "k", "v1", &ln[0]);
    rq[1] = req_get(++ts, "k", &ln[1]);
    rq[2] = req_get(++ts, "missing", &ln[2]);
    o = exec_reqs(f, ++seq, rq, ln, 3);
    assert_int_equal(o->status, 0);
    assert_int_equal(o->seq, seq);
    assert_int_equal(o->n, 3);
    expect_result(o->res[0], o->len[0], OK, NULL, NULL);
    assert_int_equal(o->len[0], 0); /* an OK with nothing to say packs to nothing */
    expect_result(o->res[1], o->len[1], OK, "v1", NULL);
    expect_result(o->res[2], o->len[2], NF, NULL, "not found");
    outcome_free(o);

    /* DEL: present, then absent. */
    o = exec1(f, ++seq, req_del(++ts, "k", &len), &len);
    expect_result(o->res[0], o->len[0], OK, NULL, NULL);
    outcome_free(o);
    o = exec1(f, ++seq, req_del(++ts, "k", &len), &len);
    expect_result(o->res[0], o->len[0], NF, NULL, "not found");
    outcome_free(o);
    get_expect(f, "k", NF, NULL);

    /* CAS, every branch. */
    struct {
        const char *expect;
        bool absent;
        const char *value;
        int status;
        const char *result_value; /* current value on a mismatch */
        const char *after;        /* value of "c" afterwards, NULL = absent */
    } cas[] = {
        {"x", false, "a", NF, NULL, NULL},      /* absent, expected a value */
        {NULL, true, "a", OK, NULL, "a"},       /* absent, expected absent */
        {NULL, true, "b", MISMATCH, "a", "a"},  /* present, expected absent */
        {"zz", false, "b", MISMATCH, "a", "a"}, /* present, wrong value */
        {"a", false, "b", OK, NULL, "b"},       /* present, right value */
        {"", false, "c", MISMATCH, "b", "b"},   /* empty expected is a value */
    };
    for (size_t i = 0; i < sizeof cas / sizeof cas[0]; i++) {
        o = exec1(f, ++seq, req_cas(++ts, "c", cas[i].expect, cas[i].absent, cas[i].value, &len),
                  &len);
        assert_int_equal(o->status, 0);
        expect_result(o->res[0], o->len[0], cas[i].status, cas[i].result_value,
                      cas[i].status == OK ? NULL : "");
        outcome_free(o);
        get_expect(f, "c", cas[i].after ? OK : NF, cas[i].after);
    }

    /* INFER is validated and accepted (each replica then runs it), or
     * refused alike on every replica when its parameters are bad. */
    Fedbft__Operation op = FEDBFT__OPERATION__INIT;
    Fedbft__InferParams ip = FEDBFT__INFER_PARAMS__INIT;
    op.kind = FEDBFT__OPERATION__KIND__OP_INFER;
    o = exec1(f, ++seq, request(1000, ++ts, &op, &len), &len);
    Fedbft__Result *r = fedbft__result__unpack(NULL, o->len[0], o->res[0]);
    assert_int_equal(r->status, FEDBFT__RESULT__STATUS__STATUS_INVALID);
    assert_string_equal(r->error, "INFER has no parameters");
    fedbft__result__free_unpacked(r, NULL);
    outcome_free(o);
    op.infer = &ip;
    ip.prompt = "hello";
    ip.max_tokens = 0;
    o = exec1(f, ++seq, request(1000, ++ts, &op, &len), &len);
    r = fedbft__result__unpack(NULL, o->len[0], o->res[0]);
    assert_int_equal(r->status, FEDBFT__RESULT__STATUS__STATUS_INVALID);
    assert_string_equal(r->error, "INFER max_tokens must be 1..4096");
    fedbft__result__free_unpacked(r, NULL);
    outcome_free(o);
    ip.max_tokens = 16;
    o = exec1(f, ++seq, request(1000, ++ts, &op, &len), &len);
    r = fedbft__result__unpack(NULL, o->len[0], o->res[0]);
    assert_int_equal(r->status, FEDBFT__RESULT__STATUS__STATUS_OK);
    assert_int_equal(r->value.len, 8);
    assert_memory_equal(r->value.data, "accepted", 8);
    fedbft__result__free_unpacked(r, NULL);
    outcome_free(o);

    /* Limits: exactly at them is fine. */
    char big_key[1025];
    memset(big_key, 'K', sizeof big_key);
    uint8_t *big_val = calloc(1, MAX_VALUE + 1);
    o = exec1(f, ++seq,
              req_op(1000, ++ts, FEDBFT__OPERATION__KIND__OP_PUT, big_key, 1024, big_val, MAX_VALUE,
                     &len),
              &len);
    expect_result(o->res[0], o->len[0], OK, NULL, NULL);
    outcome_free(o);

    /* Malformed operations. */
    struct {
        uint8_t *req;
        size_t len;
        const char *why;
    } bad[8];
    size_t nb = 0;
    bad[nb].req = req_op(1000, ++ts, FEDBFT__OPERATION__KIND__OP_PUT, "", 0, "v", 1, &bad[nb].len);
    bad[nb++].why = "key is empty";
    bad[nb].req =
        req_op(1000, ++ts, FEDBFT__OPERATION__KIND__OP_PUT, big_key, 1025, "v", 1, &bad[nb].len);
    bad[nb++].why = "key is 1025 bytes";
    bad[nb].req = req_op(1000, ++ts, FEDBFT__OPERATION__KIND__OP_PUT, "k", 1, big_val,
                         MAX_VALUE + 1, &bad[nb].len);
    bad[nb++].why = "value is 1048577 bytes";
    bad[nb].req = request(1000, ++ts, NULL, &bad[nb].len);
    bad[nb++].why = "no operation";
    bad[nb].req = req_op(1000, ++ts, 42, "k", 1, "v", 1, &bad[nb].len);
    bad[nb++].why = "unknown operation kind 42";
    bad[nb].req =
        req_op(1000, ++ts, FEDBFT__OPERATION__KIND__OP_UNSPECIFIED, "k", 1, "v", 1, &bad[nb].len);
    bad[nb++].why = "unknown operation kind 0";
    bad[nb].req = (uint8_t *)strdup("\xff\xff garbage");
    bad[nb].len = 10;
    bad[nb++].why = "not a well-formed envelope";
    assert_int_equal(fb_env_seal(FEDBFT__MSG_TYPE__MSG_PREPARE, 1000, (const uint8_t *)"x", 1,
                                 &client_key, &bad[nb].req, &bad[nb].len),
                     0);
    bad[nb++].why = "does not carry a REQUEST";
    free(big_val);
    uint8_t before[FB_DIGEST_LEN];
    digest_now(f, before);
    for (size_t i = 0; i < nb; i++) {
        o = exec1(f, ++seq, bad[i].req, &bad[i].len);
        assert_int_equal(o->status, 0);
        expect_result(o->res[0], o->len[0], INVALID, NULL, bad[i].why);
        assert_memory_equal(o->app, before, FB_DIGEST_LEN); /* nothing changed */
        outcome_free(o);
    }

    /* The read-only path serves GET only, against the executed state. */
    o = read1(f, req_put(++ts, "c", "nope", &len), &len);
    assert_int_equal(o->seq, 0);
    expect_result(o->res[0], o->len[0], INVALID, NULL, "only GET");
    outcome_free(o);
    get_expect(f, "c", OK, "b");

    /* Re-executing a seq is refused and rolls back the whole batch. */
    store_batch *b = store_batch_new();
    add_msg(b, FEDBFT__MSG_TYPE__MSG_COMMIT, 0, seq, "late");
    uint8_t *put = req_put(++ts, "c", "again", &len);
    assert_int_equal(store_batch_execute(b, seq, (const uint8_t *const *)&put, &len, 1), 0);
    assert_int_equal(store_batch_read(b, put, len), FB_ESTATE); /* one operation per batch */
    free(put);
    o = run(f, b);
    assert_int_equal(o->status, FB_ESTATE);
    assert_int_equal(o->n, 0);
    outcome_free(o);
    get_expect(f, "c", OK, "b");
    store_loaded ld;
    load(f, &ld);
    assert_int_equal(ld.nrecords, 0);
    assert_int_equal(ld.last_executed, seq);
    assert_int_equal(ld.kv_keys, 2);
    store_loaded_free(&ld);

    /* An empty batch (a null request) still advances last_executed. */
    b = store_batch_new();
    assert_int_equal(store_batch_execute(b, ++seq, NULL, NULL, 0), 0);
    o = run(f, b);
    assert_int_equal(o->status, 0);
    assert_int_equal(o->n, 0);
    outcome_free(o);
    load(f, &ld);
    assert_int_equal(ld.last_executed, seq);
    store_loaded_free(&ld);
}

/* ------------------------------------------------------------ determinism and digests */

/* xorshift64*: the same pseudo-random history for every store. */
static uint64_t rnd(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 2685821657736338717ull;
}

/* A random operation on a small key space (so keys repeat). */
static uint8_t *random_req(uint64_t *rs, uint64_t ts, size_t *len)
{
    char key[16], val[64];
    snprintf(key, sizeof key, "key%u", (unsigned)(rnd(rs) % 40));
    snprintf(val, sizeof val, "value-%llu", (unsigned long long)(rnd(rs) % 7));
    uint32_t client = 100 + (uint32_t)(rnd(rs) % 5);
    switch (rnd(rs) % 5) {
    case 0:
    case 1:
        return req_op(client, ts, FEDBFT__OPERATION__KIND__OP_PUT, key, strlen(key), val,
                      strlen(val), len);
    case 2:
        return req_op(client, ts, FEDBFT__OPERATION__KIND__OP_DEL, key, strlen(key), NULL, 0, len);
    case 3:
        return req_op(client, ts, FEDBFT__OPERATION__KIND__OP_GET, key, strlen(key), NULL, 0, len);
    default: {
        Fedbft__Operation op = FEDBFT__OPERATION__INIT;
        op.kind = FEDBFT__OPERATION__KIND__OP_CAS;
        op.key = bin(key, strlen(key));
        op.value = bin(val, strlen(val));
        char ex[64];
        snprintf(ex, sizeof ex, "value-%llu", (unsigned long long)(rnd(rs) % 7));
        op.expected = bin(ex, strlen(ex));
        op.expect_absent = rnd(rs) % 3 == 0;
        return request(client, ts, &op, len);
    }
    }
}

static void fx_init_dir(fx *f)
{
    memset(f, 0, sizeof *f);
    snprintf(f->dir, sizeof f->dir, "/tmp/fbstoreXXXXXX");
    assert_non_null(mkdtemp(f->dir));
    pthread_mutex_init(&f->w.m, NULL);
    pthread_cond_init(&f->w.c, NULL);
}

static void fx_destroy(fx *f)
{
    fx_close(f);
    store_remove(f->dir, NULL, 0);
    rmdir(f->dir);
    pthread_cond_destroy(&f->w.c);
    pthread_mutex_destroy(&f->w.m);
}

/* Apply batches 1..nbatches of the history seeded by seed. */
static void random_history(fx *f, uint64_t seed, uint64_t first_seq, int nbatches, outcome **outs)
{
    uint64_t rs = seed;
    for (int i = 0; i < nbatches; i++) {
        uint8_t *rq[16];
        size_t ln[16], n = 1 + rnd(&rs) % 16;
        for (size_t j = 0; j < n; j++)
            rq[j] = random_req(&rs, first_seq * 100 + (uint64_t)i * 16 + j + 1, &ln[j]);
        outcome *o = exec_reqs(f, first_seq + (uint64_t)i, rq, ln, n);
        assert_int_equal(o->status, 0);
        if (outs)
            outs[i] = o;
        else
            outcome_free(o);
    }
}

static void test_determinism_two_stores(void **state)
{
    (void)state;
    fx a, b;
    fx_init_dir(&a);
    fx_init_dir(&b);
    fx_open(&a, CFG_DURABILITY_OS);
    fx_open(&b, CFG_DURABILITY_FSYNC);
    enum { N = 60 };
    outcome *oa[N], *ob[N];
    random_history(&a, 0x5eed, 1, N, oa);
    random_history(&b, 0x5eed, 1, N, ob);
    for (int i = 0; i < N; i++) {
        assert_int_equal(oa[i]->n, ob[i]->n);
        for (size_t j = 0; j < oa[i]->n; j++) {
            assert_int_equal(oa[i]->len[j], ob[i]->len[j]);
            assert_memory_equal(oa[i]->res[j], ob[i]->res[j], oa[i]->len[j]);
        }
        assert_memory_equal(oa[i]->app, ob[i]->app, FB_DIGEST_LEN);
        outcome_free(oa[i]);
        outcome_free(ob[i]);
    }
    store_loaded la, lb;
    load(&a, &la);
    load(&b, &lb);
    assert_memory_equal(la.app_digest, lb.app_digest, FB_DIGEST_LEN);
    assert_int_equal(la.client_table_len, lb.client_table_len);
    assert_memory_equal(la.client_table, lb.client_table, la.client_table_len);
    assert_int_equal(la.kv_keys, lb.kv_keys);
    assert_true(la.kv_keys > 0);
    store_loaded_free(&la);
    store_loaded_free(&lb);
    fx_destroy(&a);
    fx_destroy(&b);
}

static void put_all(fx *f, uint64_t *seq, const char *const *kv, size_t n)
{
    for (size_t i = 0; i < n; i += 2) {
        size_t len;
        uint8_t *rq = kv[i + 1] ? req_put(*seq * 10, kv[i], kv[i + 1], &len)
                                : req_del(*seq * 10, kv[i], &len);
        outcome_free(exec1(f, (*seq)++, rq, &len));
    }
}

static void test_digest_order_independent(void **state)
{
    (void)state;
    fx a, b;
    fx_init_dir(&a);
    fx_init_dir(&b);
    fx_open(&a, CFG_DURABILITY_OS);
    fx_open(&b, CFG_DURABILITY_OS);
    uint64_t sa = 1, sb = 1;
    const char *ha[] = {"a", "1", "b", "2", "c", "3"};
    const char *hb[] = {"c", "3", "x", "9", "b", "zz", "x", NULL, "a", "0", "b", "2", "a", "1"};
    put_all(&a, &sa, ha, 6);
    put_all(&b, &sb, hb, 14);
    uint8_t da[FB_DIGEST_LEN], db[FB_DIGEST_LEN], d2[FB_DIGEST_LEN];
    digest_now(&a, da);
    digest_now(&b, db);
    assert_memory_equal(da, db, FB_DIGEST_LEN);

    /* Any change moves the digest; undoing it moves it back. */
    const char *change[] = {"b", "22"};
    put_all(&a, &sa, change, 2);
    digest_now(&a, d2);
    assert_memory_not_equal(da, d2, FB_DIGEST_LEN);
    const char *undo[] = {"b", "2"};
    put_all(&a, &sa, undo, 2);
    digest_now(&a, d2);
    assert_memory_equal(da, d2, FB_DIGEST_LEN);
    /* A key and value split differently is a different pair. */
    const char *split1[] = {"ab", "c"}, *split2[] = {"a", "bc"};
    fx c1, c2;
    fx_init_dir(&c1);
    fx_init_dir(&c2);
    fx_open(&c1, CFG_DURABILITY_OS);
    fx_open(&c2, CFG_DURABILITY_OS);
    uint64_t s1 = 1, s2 = 1;
    put_all(&c1, &s1, split1, 2);
    put_all(&c2, &s2, split2, 2);
    digest_now(&c1, da);
    digest_now(&c2, db);
    assert_memory_not_equal(da, db, FB_DIGEST_LEN);
    fx_destroy(&c1);
    fx_destroy(&c2);
    fx_destroy(&a);
    fx_destroy(&b);
}

/* LtHash written from the spec, independently of node/lthash.c. */
static void reference_add(uint16_t lanes[1024], const uint8_t *k, size_t klen, const uint8_t *v,
                          size_t vlen)
{
    uint8_t *buf = malloc(4 + klen + vlen + 1), seed[32], stream[2048], nonce[8] = {0};
    buf[0] = (uint8_t)(klen >> 24);
    buf[1] = (uint8_t)(klen >> 16);
    buf[2] = (uint8_t)(klen >> 8);
    buf[3] = (uint8_t)klen;
    memcpy(buf + 4, k, klen);
    if (vlen)
        memcpy(buf + 4 + klen, v, vlen);
    crypto_generichash_blake2b(seed, 32, buf, 4 + klen + vlen, NULL, 0);
    crypto_stream_chacha20(stream, sizeof stream, nonce, seed);
    for (int i = 0; i < 1024; i++)
        lanes[i] = (uint16_t)(lanes[i] + (stream[2 * i] | stream[2 * i + 1] << 8));
    free(buf);
}

/* The digest of every row of the kv table, from scratch. */
static void recompute_digest(const char *dir, uint8_t out[FB_DIGEST_LEN], uint64_t *keys)
{
    char path[128];
    snprintf(path, sizeof path, "%s/%s", dir, STORE_DB_FILE);
    sqlite3 *db;
    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_prepare_v2(db, "SELECT key, value FROM kv", -1, &st, NULL), SQLITE_OK);
    uint16_t lanes[1024] = {0};
    *keys = 0;
    while (sqlite3_step(st) == SQLITE_ROW) {
        reference_add(lanes, sqlite3_column_blob(st, 0), (size_t)sqlite3_column_bytes(st, 0),
                      sqlite3_column_blob(st, 1), (size_t)sqlite3_column_bytes(st, 1));
        (*keys)++;
    }
    sqlite3_finalize(st);
    sqlite3_close(db);
    uint8_t bytes[2048];
    for (int i = 0; i < 1024; i++) {
        bytes[2 * i] = (uint8_t)lanes[i];
        bytes[2 * i + 1] = (uint8_t)(lanes[i] >> 8);
    }
    fb_digest(FB_DOM_STATE, bytes, sizeof bytes, out);
}

static void test_digest_matches_recompute(void **state)
{
    fx *f = *state;
    random_history(f, 0xabcdef, 1, 80, NULL);
    store_loaded ld;
    load(f, &ld);
    uint8_t inc[FB_DIGEST_LEN];
    memcpy(inc, ld.app_digest, FB_DIGEST_LEN);
    uint64_t keys = ld.kv_keys;
    store_loaded_free(&ld);
    fx_close(f); /* the store holds the file exclusively while open */
    uint8_t full[FB_DIGEST_LEN];
    uint64_t counted;
    recompute_digest(f->dir, full, &counted);
    assert_memory_equal(inc, full, FB_DIGEST_LEN);
    assert_int_equal(keys, counted);
    fx_open(f, CFG_DURABILITY_OS);
}

/* ------------------------------------------------------------ client table */

static void test_client_table_blob(void **state)
{
    fx *f = *state;
    size_t len;
    uint32_t ids[] = {7, 3, 5, 3};
    uint64_t tss[] = {70, 30, 50, 31};
    pbft_clients ref;
    assert_int_equal(pbft_clients_init(&ref, 16), 0);
    for (int i = 0; i < 4; i++) {
        char key[8];
        snprintf(key, sizeof key, "c%u", ids[i]);
        uint8_t *rq =
            req_op(ids[i], tss[i], FEDBFT__OPERATION__KIND__OP_PUT, key, strlen(key), "v", 1, &len);
        uint64_t seq = (uint64_t)i + 1;
        outcome *o = exec1(f, seq, rq, &len);
        pbft_clients_record(&ref, pbft_clients_get(&ref, ids[i]), tss[i], 9, seq, o->res[0],
                            o->len[0], PBFT_DEFAULT_MAX_RESULT);
        outcome_free(o);
    }
    /* A 100 kB result is kept whole, as the replica keeps it. */
    uint8_t *big = calloc(1, 100000);
    uint8_t *rq = req_op(11, 1, FEDBFT__OPERATION__KIND__OP_PUT, "big", 3, big, 100000, &len);
    outcome_free(exec1(f, 5, rq, &len));
    rq = req_op(11, 2, FEDBFT__OPERATION__KIND__OP_GET, "big", 3, NULL, 0, &len);
    outcome *o = exec1(f, 6, rq, &len);
    assert_true(o->len[0] > 100000);
    pbft_clients_record(&ref, pbft_clients_get(&ref, 11), 2, 0, 6, o->res[0], o->len[0],
                        PBFT_DEFAULT_MAX_RESULT);
    outcome_free(o);
    free(big);

    uint8_t *blob;
    size_t blen;
    assert_int_equal(pbft_clients_export(&ref, &blob, &blen), 0);
    fx_close(f);
    fx_open(f, CFG_DURABILITY_OS);
    store_loaded ld;
    load(f, &ld);
    assert_int_equal(ld.client_table_len, blen);
    assert_memory_equal(ld.client_table, blob, blen);
    /* And by hand: ids ascending, client 3 at its later request. */
    const uint8_t *p = ld.client_table;
    assert_int_equal(p[3], 3);
    assert_int_equal(p[11], 31); /* last_ts u64 BE */
    assert_int_equal(p[19], 4);  /* seq u64 BE */
    store_loaded_free(&ld);
    free(blob);
    pbft_clients_close(&ref);
}

/* ------------------------------------------------------------ durability */

static void test_durability_modes(void **state)
{
    fx *f = *state;
    cfg_durability modes[] = {CFG_DURABILITY_FSYNC, CFG_DURABILITY_OS};
    for (int m = 0; m < 2; m++) {
        fx_close(f);
        store_wipe(f->dir, NULL, 0);
        fx_open(f, modes[m]);
        size_t len;
        outcome_free(exec1(f, 1, req_put(1, "d", m ? "os" : "fsync", &len), &len));
        store_stats st;
        store_get_stats(f->s, &st);
        assert_int_equal(st.executes, 1);
        assert_int_equal(st.transactions, 1);
        assert_int_equal(st.kv_keys, 1);
        assert_int_equal(st.fsyncs, modes[m] == CFG_DURABILITY_FSYNC ? 1 : 0);
        fx_close(f);
        fx_open(f, modes[m]);
        get_expect(f, "d", FEDBFT__RESULT__STATUS__STATUS_OK, m ? "os" : "fsync");
    }
}

/* Batches submitted and then closed (no poll) are finished by store_close. */
static void test_close_finishes_submitted(void **state)
{
    fx *f = *state;
    for (uint64_t s = 1; s <= 10; s++) {
        store_batch *b = store_batch_new();
        size_t len;
        char k[8];
        snprintf(k, sizeof k, "k%llu", (unsigned long long)s);
        uint8_t *rq = req_put(s, k, "v", &len);
        store_batch_execute(b, s, (const uint8_t *const *)&rq, &len, 1);
        free(rq);
        assert_int_equal(store_submit(f->s, b, NULL, NULL), 0);
    }
    fx_close(f);
    fx_open(f, CFG_DURABILITY_OS);
    store_loaded ld;
    load(f, &ld);
    assert_int_equal(ld.last_executed, 10);
    assert_int_equal(ld.kv_keys, 10);
    store_loaded_free(&ld);
}

typedef struct crash_ctx {
    int fd;
    int inflight;
} crash_ctx;

typedef struct crash_cb {
    crash_ctx *ctx;
    uint64_t seq;
} crash_cb;

static void crash_done(void *arg, const store_result *r)
{
    crash_cb *cb = arg;
    if (r->status != 0)
        _exit(3);
    if (write(cb->ctx->fd, &cb->seq, sizeof cb->seq) != sizeof cb->seq)
        _exit(4);
    cb->ctx->inflight--;
    free(cb);
}

/* Batch seq: a record naming seq and an execute writing k<seq> and "last". */
static store_batch *crash_batch(uint64_t seq)
{
    store_batch *b = store_batch_new();
    char raw[32], key[32], val[32];
    snprintf(raw, sizeof raw, "record-%llu", (unsigned long long)seq);
    snprintf(key, sizeof key, "k%llu", (unsigned long long)seq);
    snprintf(val, sizeof val, "%llu", (unsigned long long)seq);
    store_batch_record(b, PBFT_REC_MSG, FEDBFT__MSG_TYPE__MSG_COMMIT, 0, false, seq,
                       (const uint8_t *)raw, strlen(raw));
    uint8_t *rq[2];
    size_t ln[2];
    rq[0] = req_put(seq * 2, key, val, &ln[0]);
    rq[1] = req_put(seq * 2 + 1, "last", val, &ln[1]);
    store_batch_execute(b, seq, (const uint8_t *const *)rq, ln, 2);
    free(rq[0]);
    free(rq[1]);
    return b;
}

/* The child: submit batches forever, four in flight, reporting each one
 * whose callback ran (it is committed) on the pipe. */
static void crash_child(const char *dir, cfg_durability mode, int fd)
{
    fx f;
    memset(&f, 0, sizeof f);
    snprintf(f.dir, sizeof f.dir, "%s", dir);
    pthread_mutex_init(&f.w.m, NULL);
    pthread_cond_init(&f.w.c, NULL);
    if (open_store(&f, mode, NULL, 0) != 0)
        _exit(2);
    crash_ctx ctx = {fd, 0};
    for (uint64_t seq = 1;;) {
        while (ctx.inflight < 4) {
            crash_cb *cb = malloc(sizeof *cb);
            *cb = (crash_cb){&ctx, seq};
            if (store_submit(f.s, crash_batch(seq++), crash_done, cb) != 0)
                _exit(5);
            ctx.inflight++;
        }
        pthread_mutex_lock(&f.w.m);
        while (f.w.wakes == 0)
            pthread_cond_wait(&f.w.c, &f.w.m);
        f.w.wakes = 0;
        pthread_mutex_unlock(&f.w.m);
        store_poll(f.s);
    }
}

/* Kill -9 a process that is writing batches: every batch it saw complete is
 * there after a restart, and no batch is there in part. */
static void crash_kill_mid_stream(fx *f, cfg_durability mode)
{
    fx_close(f);
    store_wipe(f->dir, NULL, 0);
    int p[2];
    assert_int_equal(pipe(p), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(p[0]);
        crash_child(f->dir, mode, p[1]);
    }
    close(p[1]);
    uint64_t reported = 0, seq;
    struct pollfd pfd = {p[0], POLLIN, 0};
    while (reported < 60) {
        assert_true(poll(&pfd, 1, DEADLINE_S * 1000) == 1);
        assert_int_equal(read(p[0], &seq, sizeof seq), sizeof seq);
        assert_int_equal(seq, reported + 1); /* completions come in order */
        reported = seq;
    }
    kill(pid, SIGKILL);
    int status;
    waitpid(pid, &status, 0);
    assert_true(WIFSIGNALED(status));
    /* What it reported before dying also counts as completed. */
    while (read(p[0], &seq, sizeof seq) == sizeof seq)
        reported = seq;
    close(p[0]);

    fx_open(f, mode);
    store_loaded ld;
    load(f, &ld);
    uint64_t last = ld.last_executed;
    print_message("killed after %llu reported batches; %llu committed\n",
                  (unsigned long long)reported, (unsigned long long)last);
    assert_true(last >= reported);
    /* Whole batches only: one record per executed batch, in order. */
    assert_int_equal(ld.nrecords, last);
    for (uint64_t i = 0; i < last; i++) {
        char raw[32];
        snprintf(raw, sizeof raw, "record-%llu", (unsigned long long)(i + 1));
        assert_int_equal(ld.records[i].seq, i + 1);
        assert_int_equal(ld.records[i].raw_len, strlen(raw));
        assert_memory_equal(ld.records[i].raw, raw, strlen(raw));
    }
    assert_int_equal(ld.kv_keys, last + 1);
    store_loaded_free(&ld);
    char key[32], val[32];
    snprintf(val, sizeof val, "%llu", (unsigned long long)last);
    get_expect(f, "last", FEDBFT__RESULT__STATUS__STATUS_OK, val);
    snprintf(key, sizeof key, "k%llu", (unsigned long long)last);
    get_expect(f, key, FEDBFT__RESULT__STATUS__STATUS_OK, val);
    snprintf(key, sizeof key, "k%llu", (unsigned long long)(last + 1));
    get_expect(f, key, FEDBFT__RESULT__STATUS__STATUS_NOT_FOUND, NULL);
    /* And the incremental digest survived the crash intact. */
    uint8_t inc[FB_DIGEST_LEN], full[FB_DIGEST_LEN];
    uint64_t keys;
    digest_now(f, inc);
    fx_close(f);
    recompute_digest(f->dir, full, &keys);
    assert_memory_equal(inc, full, FB_DIGEST_LEN);
    fx_open(f, mode);
}

static void test_crash_kill_fsync(void **state)
{
    crash_kill_mid_stream(*state, CFG_DURABILITY_FSYNC);
}

static void test_crash_kill_os(void **state)
{
    crash_kill_mid_stream(*state, CFG_DURABILITY_OS);
}

/* ------------------------------------------------------------ corruption */

static void db_file(const fx *f, char *path, size_t len)
{
    snprintf(path, len, "%s/%s", f->dir, STORE_DB_FILE);
}

static void fill_some(fx *f)
{
    random_history(f, 77, 1, 30, NULL);
    store_batch *b = store_batch_new();
    for (int i = 0; i < 200; i++)
        add_msg(b, FEDBFT__MSG_TYPE__MSG_PREPARE, 0, 100,
                "a record long enough to spread the database over several pages .......");
    outcome_free(run(f, b));
}

static void expect_open_fails(fx *f, int code, const char *msg_part)
{
    char err[512] = "";
    store *s = NULL;
    assert_int_equal(store_open(f->dir, CFG_DURABILITY_OS, on_wake, &f->w, &s, err, sizeof err),
                     code);
    assert_null(s);
    if (!strstr(err, msg_part))
        fail_msg("error \"%s\" does not mention \"%s\"", err, msg_part);
}

static void test_corrupt_header(void **state)
{
    fx *f = *state;
    fill_some(f);
    fx_close(f);
    char path[128];
    db_file(f, path, sizeof path);
    int fd = open(path, O_WRONLY);
    assert_true(fd >= 0);
    char junk[100];
    memset(junk, 'X', sizeof junk);
    assert_int_equal(pwrite(fd, junk, sizeof junk, 0), sizeof junk);
    close(fd);
    expect_open_fails(f, FB_ECORRUPT, "fedbft run --resync");
    /* --resync wipes it; a fresh store opens, knowing it was wiped until the
     * replica records its abstention bound. */
    assert_int_equal(store_wipe(f->dir, NULL, 0), 0);
    fx_open(f, CFG_DURABILITY_OS);
    store_loaded ld;
    load(f, &ld);
    assert_true(ld.resynced);
    assert_int_equal(ld.last_executed, 0);
    store_loaded_free(&ld);
    fx_close(f);
    fx_open(f, CFG_DURABILITY_OS); /* still, after a restart */
    load(f, &ld);
    assert_true(ld.resynced);
    store_loaded_free(&ld);
    store_batch *b = store_batch_new();
    assert_int_equal(store_batch_record(b, PBFT_REC_ABSTAIN, 0, 0, false, 80, NULL, 0), 0);
    outcome_free(run(f, b));
    fx_close(f);
    fx_open(f, CFG_DURABILITY_OS);
    load(f, &ld);
    assert_false(ld.resynced);
    assert_int_equal(ld.nrecords, 1);
    assert_int_equal(ld.records[0].kind, PBFT_REC_ABSTAIN);
    assert_int_equal(ld.records[0].seq, 80);
    store_loaded_free(&ld);
}

static void test_corrupt_truncated(void **state)
{
    fx *f = *state;
    fill_some(f);
    fx_close(f);
    char path[128];
    db_file(f, path, sizeof path);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_true(st.st_size > 8192);
    assert_int_equal(truncate(path, st.st_size / 2), 0);
    expect_open_fails(f, FB_ECORRUPT, "fedbft run --resync");
    assert_int_equal(truncate(path, 1000), 0); /* less than a page */
    expect_open_fails(f, FB_ECORRUPT, "fedbft run --resync");
    assert_int_equal(store_wipe(f->dir, NULL, 0), 0);
    fx_open(f, CFG_DURABILITY_OS);
}

static void sql_on_file(fx *f, const char *sql)
{
    char path[128];
    db_file(f, path, sizeof path);
    sqlite3 *db;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_exec(db, sql, NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(db);
}

static void test_unknown_schema_and_foreign_db(void **state)
{
    fx *f = *state;
    fx_close(f);
    sql_on_file(f, "UPDATE meta SET v = 99 WHERE k = 'schema_version'");
    expect_open_fails(f, FB_EVERSION, "schema version 99");
    store_wipe(f->dir, NULL, 0);
    sql_on_file(f, "CREATE TABLE other (x)");
    expect_open_fails(f, FB_ECORRUPT, "not a fedbft one");
    store_wipe(f->dir, NULL, 0);
    fx_open(f, CFG_DURABILITY_OS);
}

static void test_second_process_refused(void **state)
{
    fx *f = *state;
    /* Another process on the same data_dir (the store locks the file). */
    pid_t pid = fork();
    if (pid == 0) {
        store *s = NULL;
        char err[256];
        int rc = store_open(f->dir, CFG_DURABILITY_OS, NULL, NULL, &s, err, sizeof err);
        _exit(rc == FB_EBUSY && strstr(err, "another") ? 0 : 1);
    }
    int status;
    waitpid(pid, &status, 0);
    assert_true(WIFEXITED(status));
    assert_int_equal(WEXITSTATUS(status), 0);
}

/* ------------------------------------------------------------ state transfer */

/* A model of the KV state: a sorted list of pairs. */
typedef struct model {
    char **keys;
    uint8_t **vals;
    size_t *vlens;
    size_t n;
} model;

static int key_order(const char *a, const char *b)
{
    return strcmp(a, b); /* keys here are plain ASCII: same as bytewise */
}

static void model_set(model *m, const char *k, const uint8_t *v, size_t vlen)
{
    for (size_t i = 0; i < m->n; i++) {
        if (strcmp(m->keys[i], k) == 0) {
            free(m->vals[i]);
            if (!v) {
                free(m->keys[i]);
                m->n--;
                memmove(&m->keys[i], &m->keys[i + 1], (m->n - i) * sizeof *m->keys);
                memmove(&m->vals[i], &m->vals[i + 1], (m->n - i) * sizeof *m->vals);
                memmove(&m->vlens[i], &m->vlens[i + 1], (m->n - i) * sizeof *m->vlens);
                return;
            }
            m->vals[i] = malloc(vlen + 1);
            memcpy(m->vals[i], v, vlen);
            m->vlens[i] = vlen;
            return;
        }
    }
    if (!v)
        return;
    m->keys = realloc(m->keys, (m->n + 1) * sizeof *m->keys);
    m->vals = realloc(m->vals, (m->n + 1) * sizeof *m->vals);
    m->vlens = realloc(m->vlens, (m->n + 1) * sizeof *m->vlens);
    size_t at = 0;
    while (at < m->n && key_order(m->keys[at], k) < 0)
        at++;
    memmove(&m->keys[at + 1], &m->keys[at], (m->n - at) * sizeof *m->keys);
    memmove(&m->vals[at + 1], &m->vals[at], (m->n - at) * sizeof *m->vals);
    memmove(&m->vlens[at + 1], &m->vlens[at], (m->n - at) * sizeof *m->vlens);
    m->keys[at] = strdup(k);
    m->vals[at] = malloc(vlen + 1);
    memcpy(m->vals[at], v, vlen);
    m->vlens[at] = vlen;
    m->n++;
}

static void model_copy(model *dst, const model *src)
{
    memset(dst, 0, sizeof *dst);
    for (size_t i = 0; i < src->n; i++)
        model_set(dst, src->keys[i], src->vals[i], src->vlens[i]);
}

static void model_free(model *m)
{
    for (size_t i = 0; i < m->n; i++) {
        free(m->keys[i]);
        free(m->vals[i]);
    }
    free(m->keys);
    free(m->vals);
    free(m->vlens);
    memset(m, 0, sizeof *m);
}

static uint32_t get32(const uint8_t *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Fetch every chunk at seq; check them against the model; return them. */
static void read_chunks(fx *f, uint64_t seq, const model *want, uint8_t ***chunks, size_t **lens,
                        uint32_t *count)
{
    size_t at = 0;
    *count = 1;
    *chunks = NULL;
    *lens = NULL;
    for (uint32_t c = 0; c < *count; c++) {
        store_batch *b = store_batch_new();
        assert_int_equal(store_batch_state_chunk(b, seq, c), 0);
        outcome *o = run(f, b);
        assert_int_equal(o->status, 0);
        *count = o->chunk_count;
        assert_true(o->chunk_len <= (2u << 20) || o->chunk_len == 0);
        size_t pairs = 0;
        for (size_t off = 0; off < o->chunk_len; pairs++, at++) {
            uint32_t klen = get32(o->chunk + off);
            const uint8_t *k = o->chunk + off + 4;
            uint32_t vlen = get32(k + klen);
            const uint8_t *v = k + klen + 4;
            assert_true(at < want->n);
            assert_int_equal(klen, strlen(want->keys[at]));
            assert_memory_equal(k, want->keys[at], klen);
            assert_int_equal(vlen, want->vlens[at]);
            if (vlen)
                assert_memory_equal(v, want->vals[at], vlen);
            off += 8 + klen + vlen;
        }
        assert_true(pairs <= STORE_CHUNK_KEYS);
        *chunks = realloc(*chunks, (c + 1) * sizeof **chunks);
        *lens = realloc(*lens, (c + 1) * sizeof **lens);
        (*chunks)[c] = o->chunk;
        (*lens)[c] = o->chunk_len;
        o->chunk = NULL;
        outcome_free(o);
    }
    assert_int_equal(at, want->n);
}

static void free_chunks(uint8_t **chunks, size_t *lens, uint32_t count)
{
    for (uint32_t i = 0; i < count; i++)
        free(chunks[i]);
    free(chunks);
    free(lens);
}

/* Execute one batch of PUT/DEL (value NULL) and mirror it in the model. */
static void exec_model(fx *f, model *m, uint64_t seq, const char **keys, const char **vals,
                       size_t n)
{
    uint8_t **rq = calloc(n, sizeof *rq);
    size_t *ln = calloc(n, sizeof *ln);
    for (size_t i = 0; i < n; i++) {
        rq[i] = vals[i] ? req_put(seq * 10000 + i, keys[i], vals[i], &ln[i])
                        : req_del(seq * 10000 + i, keys[i], &ln[i]);
        model_set(m, keys[i], (const uint8_t *)vals[i], vals[i] ? strlen(vals[i]) : 0);
    }
    outcome *o = exec_reqs(f, seq, rq, ln, n);
    assert_int_equal(o->status, 0);
    outcome_free(o);
    free(rq);
    free(ln);
}

/* 2500 keys in batches 1..5 (500 PUTs each). */
static void build_base(fx *f, model *now)
{
    static char keybuf[2500][16], valbuf[2500][16];
    const char *keys[500], *vals[500];
    for (uint64_t s = 1; s <= 5; s++) {
        for (int i = 0; i < 500; i++) {
            int k = (int)(s - 1) * 500 + i;
            snprintf(keybuf[k], 16, "key%05d", k);
            snprintf(valbuf[k], 16, "v%d", k);
            keys[i] = keybuf[k];
            vals[i] = valbuf[k];
        }
        exec_model(f, now, s, keys, vals, 500);
    }
}

/* The base; checkpoint 5; then overwrites, deletes, new keys and repeated
 * changes of one key within a batch and across batches 6..8. */
static void build_history(fx *f, model *now, model *at5)
{
    build_base(f, now);
    model_copy(at5, now);
    const char *k6[] = {"key00000", "key00001", "key01000", "new1", "key00000", "a-first"};
    const char *v6[] = {"changed", NULL, "x", "n1", "changed-twice", "a"};
    exec_model(f, now, 6, k6, v6, 6);
    const char *k7[] = {"key00000", "new1", "key00001", "key02499"};
    const char *v7[] = {NULL, NULL, "back", "last"};
    exec_model(f, now, 7, k7, v7, 4);
    const char *k8[] = {"key01000"};
    const char *v8[] = {"v1000"};
    exec_model(f, now, 8, k8, v8, 1);
}

static void test_state_chunk_at_old_checkpoint(void **state)
{
    fx *f = *state;
    model now = {0}, at5 = {0};
    build_history(f, &now, &at5);
    uint8_t **chunks;
    size_t *lens;
    uint32_t count;
    read_chunks(f, 5, &at5, &chunks, &lens, &count);
    assert_int_equal(count, 3); /* 2500 keys: 1024 + 1024 + 452 */
    free_chunks(chunks, lens, count);
    read_chunks(f, 8, &now, &chunks, &lens, &count);
    free_chunks(chunks, lens, count);
    /* The undo rows are durable: the old state is still there after a restart. */
    fx_close(f);
    fx_open(f, CFG_DURABILITY_OS);
    read_chunks(f, 5, &at5, &chunks, &lens, &count);
    free_chunks(chunks, lens, count);

    /* Out of range, not executed yet, older than the stable checkpoint. */
    store_batch *b = store_batch_new();
    store_batch_state_chunk(b, 5, 3);
    outcome *o = run(f, b);
    assert_int_equal(o->status, FB_EINVAL);
    outcome_free(o);
    b = store_batch_new();
    store_batch_state_chunk(b, 9, 0);
    o = run(f, b);
    assert_int_equal(o->status, FB_ESTATE);
    outcome_free(o);
    b = store_batch_new();
    store_batch_stable(b, 6);
    outcome_free(run(f, b));
    b = store_batch_new();
    store_batch_state_chunk(b, 5, 0);
    o = run(f, b);
    assert_int_equal(o->status, FB_ESTATE);
    outcome_free(o);
    /* Seq 6 is still servable after the GC. */
    model at6 = {0};
    model_copy(&at6, &now);
    model_set(&at6, "key00001", NULL, 0);
    model_set(&at6, "new1", (const uint8_t *)"n1", 2);
    model_set(&at6, "key00000", (const uint8_t *)"changed-twice", 13);
    model_set(&at6, "key02499", (const uint8_t *)"v2499", 5);
    model_set(&at6, "key01000", (const uint8_t *)"x", 1);
    read_chunks(f, 6, &at6, &chunks, &lens, &count);
    free_chunks(chunks, lens, count);
    model_free(&at6);
    model_free(&now);
    model_free(&at5);
}

/* The first column of the first row of sql, run on the closed store's file. */
static int64_t sql_int_on_file(fx *f, const char *sql)
{
    char path[128];
    db_file(f, path, sizeof path);
    sqlite3 *db;
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_open(path, &db), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    int64_t v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

/* A version 1 store (undo keyed by (key, seq), an index on seq) is upgraded
 * when opened, undo rows and all: the old checkpoint is still servable. */
static void test_upgrade_from_v1(void **state)
{
    fx *f = *state;
    model now = {0}, at5 = {0};
    build_history(f, &now, &at5);
    fx_close(f);
    int64_t undo_rows = sql_int_on_file(f, "SELECT count(*) FROM undo");
    assert_true(undo_rows > 0);
    sql_on_file(f, "BEGIN;"
                   "CREATE TABLE undo_old (key BLOB NOT NULL, seq INTEGER NOT NULL, old BLOB,"
                   " PRIMARY KEY (key, seq));"
                   "CREATE INDEX undo_seq ON undo_old(seq);"
                   "INSERT INTO undo_old SELECT key, seq, old FROM undo;"
                   "DROP TABLE undo;"
                   "ALTER TABLE undo_old RENAME TO undo;"
                   "UPDATE meta SET v = 1 WHERE k = 'schema_version';"
                   "COMMIT;");
    assert_int_equal(sql_int_on_file(f, "SELECT v FROM meta WHERE k = 'schema_version'"), 1);

    fx_open(f, CFG_DURABILITY_OS);
    uint8_t **chunks;
    size_t *lens;
    uint32_t count;
    read_chunks(f, 5, &at5, &chunks, &lens, &count);
    free_chunks(chunks, lens, count);
    read_chunks(f, 8, &now, &chunks, &lens, &count);
    free_chunks(chunks, lens, count);
    fx_close(f);
    assert_int_equal(sql_int_on_file(f, "SELECT v FROM meta WHERE k = 'schema_version'"), 2);
    assert_int_equal(sql_int_on_file(f, "SELECT count(*) FROM undo"), undo_rows);
    assert_int_equal(sql_int_on_file(f, "SELECT count(*) FROM sqlite_master WHERE name IN "
                                        "('undo_v1', 'undo_seq')"),
                     0);
    /* Keyed by (seq, key) now, without a rowid. */
    assert_int_equal(
        sql_int_on_file(f, "SELECT pk FROM pragma_table_info('undo') WHERE name = 'seq'"), 1);
    assert_int_equal(sql_int_on_file(f, "SELECT wr FROM pragma_table_list WHERE name = 'undo'"), 1);
    fx_open(f, CFG_DURABILITY_OS); /* opens again without upgrading */
    read_chunks(f, 5, &at5, &chunks, &lens, &count);
    free_chunks(chunks, lens, count);
    model_free(&now);
    model_free(&at5);
}

static void test_state_chunk_byte_bound(void **state)
{
    fx *f = *state;
    model m = {0};
    uint8_t *val = malloc(700 * 1024);
    memset(val, 'v', 700 * 1024);
    for (int i = 0; i < 7; i++) {
        char key[8];
        snprintf(key, sizeof key, "big%d", i);
        size_t len;
        uint8_t *rq = req_op(1000, (uint64_t)i + 1, FEDBFT__OPERATION__KIND__OP_PUT, key,
                             strlen(key), val, 700 * 1024, &len);
        outcome_free(exec1(f, (uint64_t)i + 1, rq, &len));
        model_set(&m, key, val, 700 * 1024);
    }
    free(val);
    uint8_t **chunks;
    size_t *lens;
    uint32_t count;
    read_chunks(f, 7, &m, &chunks, &lens, &count);
    assert_int_equal(count, 4); /* two 700 KiB pairs fit in 2 MiB, three do not: 2+2+2+1 */
    free_chunks(chunks, lens, count);
    model_free(&m);
}

static store_batch *install_batch(uint64_t seq, bool begin, const uint8_t *chunk, size_t len,
                                  const uint8_t *digest, const uint8_t *ct, size_t ctlen)
{
    store_batch *b = store_batch_new();
    if (begin)
        assert_int_equal(store_batch_install_begin(b, seq), 0);
    if (chunk)
        assert_int_equal(store_batch_install_chunk(b, chunk, len), 0);
    if (digest)
        assert_int_equal(store_batch_install_commit(b, seq, digest, ct, ctlen), 0);
    return b;
}

static void test_install(void **state)
{
    fx *src = *state;
    model now = {0}, at5 = {0};
    build_history(src, &now, &at5);
    /* The digest and client table at 5 come from a replica that kept them
     * at the checkpoint; here: a second store with the same first 5 batches. */
    fx ref;
    fx_init_dir(&ref);
    fx_open(&ref, CFG_DURABILITY_OS);
    model base = {0};
    build_base(&ref, &base);
    model_free(&base);
    store_loaded at;
    load(&ref, &at);
    assert_int_equal(at.last_executed, 5);

    uint8_t **chunks;
    size_t *lens;
    uint32_t count;
    read_chunks(src, 5, &at5, &chunks, &lens, &count);

    /* The target has a different history of its own. */
    fx dst;
    fx_init_dir(&dst);
    fx_open(&dst, CFG_DURABILITY_OS);
    random_history(&dst, 99, 1, 3, NULL);
    uint8_t before[FB_DIGEST_LEN];
    digest_now(&dst, before);

    /* Wrong digest: staged, refused, nothing changed. */
    uint8_t wrong[FB_DIGEST_LEN];
    memcpy(wrong, at.app_digest, FB_DIGEST_LEN);
    wrong[0] ^= 1;
    outcome *o = run(&dst, install_batch(5, true, chunks[0], lens[0], NULL, NULL, 0));
    assert_int_equal(o->status, 0);
    outcome_free(o);
    for (uint32_t c = 1; c < count; c++) {
        bool last = c + 1 == count;
        o = run(&dst, install_batch(5, false, chunks[c], lens[c], last ? wrong : NULL,
                                    at.client_table, at.client_table_len));
        assert_int_equal(o->status, last ? FB_ECORRUPT : 0);
        outcome_free(o);
    }
    store_loaded ld;
    load(&dst, &ld);
    assert_memory_equal(ld.app_digest, before, FB_DIGEST_LEN);
    assert_int_equal(ld.last_executed, 3);
    store_loaded_free(&ld);

    /* A malformed chunk is refused. */
    uint8_t junk[] = {0, 0, 0, 0, 1, 2};
    o = run(&dst, install_batch(5, true, junk, sizeof junk, NULL, NULL, 0));
    assert_int_equal(o->status, FB_ECORRUPT);
    outcome_free(o);
    /* Commit without a begin for that seq is refused. */
    o = run(&dst, install_batch(6, false, NULL, 0, at.app_digest, NULL, 0));
    assert_int_equal(o->status, FB_ESTATE);
    outcome_free(o);

    /* The right digest: everything swaps (chunk 0 sent twice: harmless). */
    o = run(&dst, install_batch(5, true, chunks[0], lens[0], NULL, NULL, 0));
    assert_int_equal(o->status, 0);
    outcome_free(o);
    for (uint32_t c = 0; c < count; c++) {
        bool last = c + 1 == count;
        o = run(&dst, install_batch(5, false, chunks[c], lens[c], last ? at.app_digest : NULL,
                                    at.client_table, at.client_table_len));
        assert_int_equal(o->status, 0);
        if (last)
            assert_memory_equal(o->app, at.app_digest, FB_DIGEST_LEN);
        outcome_free(o);
    }
    load(&dst, &ld);
    assert_memory_equal(ld.app_digest, at.app_digest, FB_DIGEST_LEN);
    assert_int_equal(ld.last_executed, 5);
    assert_int_equal(ld.kv_keys, 2500);
    assert_int_equal(ld.client_table_len, at.client_table_len);
    assert_memory_equal(ld.client_table, at.client_table, at.client_table_len);
    store_loaded_free(&ld);
    uint8_t **c2;
    size_t *l2;
    uint32_t n2;
    read_chunks(&dst, 5, &at5, &c2, &l2, &n2);
    free_chunks(c2, l2, n2);
    /* Execution continues from there. */
    size_t len;
    o = exec1(&dst, 6, req_put(1, "after", "install", &len), &len);
    assert_int_equal(o->status, 0);
    outcome_free(o);
    /* And the swapped state survives a restart with a consistent digest. */
    uint8_t inc[FB_DIGEST_LEN], full[FB_DIGEST_LEN];
    uint64_t keys;
    digest_now(&dst, inc);
    fx_close(&dst);
    recompute_digest(dst.dir, full, &keys);
    assert_memory_equal(inc, full, FB_DIGEST_LEN);
    assert_int_equal(keys, 2501);
    fx_open(&dst, CFG_DURABILITY_OS);

    free_chunks(chunks, lens, count);
    store_loaded_free(&at);
    fx_destroy(&dst);
    fx_destroy(&ref);
    model_free(&now);
    model_free(&at5);
}

/* A checkpoint kept for serving stays readable until store_batch_stable_keep
 * lets its undo rows go. */
static void test_stable_keep(void **state)
{
    fx *f = *state;
    model now = {0}, at5 = {0};
    build_history(f, &now, &at5);
    store_batch *b = store_batch_new();
    assert_int_equal(store_batch_stable_keep(b, 8, 9), FB_EINVAL);
    assert_int_equal(store_batch_stable_keep(b, 8, 5), 0);
    outcome *o = run(f, b);
    assert_int_equal(o->status, 0);
    outcome_free(o);
    uint8_t **chunks;
    size_t *lens;
    uint32_t count;
    read_chunks(f, 5, &at5, &chunks, &lens, &count); /* 5 is still there */
    free_chunks(chunks, lens, count);
    b = store_batch_new();
    assert_int_equal(store_batch_state_chunk(b, 4, 0), 0);
    o = run(f, b);
    assert_int_not_equal(o->status, 0); /* below what was kept */
    outcome_free(o);
    b = store_batch_new();
    assert_int_equal(store_batch_stable(b, 8), 0);
    outcome_free(run(f, b));
    b = store_batch_new();
    assert_int_equal(store_batch_state_chunk(b, 5, 0), 0);
    o = run(f, b);
    assert_int_not_equal(o->status, 0); /* now gone */
    outcome_free(o);
    model_free(&now);
    model_free(&at5);
}

/* ------------------------------------------------------------ state transfer (node_state) */

/* Four replicas: 0..2 serve checkpoint 5 from one store (src), 3 fetches it
 * into its own (dst).  Messages travel through a queue the test drains;
 * time is a counter the test moves. */
#define XQ 256

typedef struct xmsg {
    uint32_t from, to;
    int type;
    uint8_t *payload;
    size_t len;
} xmsg;

typedef struct xnode {
    struct xfer *x;
    uint32_t id;
    node_state *ns;
} xnode;

typedef struct xfer {
    fx src, dst;
    waiter w; /* both stores wake it */
    xnode nodes[4];
    xmsg q[XQ];
    size_t nq;
    uint64_t now;
    bool silent[4];      /* messages to this replica are lost */
    bool no_snapshot[4]; /* this replica restarted: nothing to serve */
    uint32_t chunk0_requests;
    uint64_t installed_seq;
    uint8_t installed_app[FB_DIGEST_LEN];
    /* checkpoint 5 */
    store_loaded at;
    uint8_t cert[FB_DIGEST_LEN];
    model at5;
} xfer;

static int x_send(void *arg, uint32_t to, int type, const ProtobufCMessage *payload)
{
    xnode *n = arg;
    xfer *x = n->x;
    assert_true(x->nq < XQ);
    if (type == FEDBFT__MSG_TYPE__MSG_STATE_REQUEST &&
        ((const Fedbft__StateRequest *)payload)->chunk == 0)
        x->chunk0_requests++;
    if (x->silent[to])
        return 0;
    xmsg *m = &x->q[x->nq++];
    m->from = n->id;
    m->to = to;
    m->type = type;
    m->len = protobuf_c_message_get_packed_size(payload);
    m->payload = malloc(m->len + 1);
    protobuf_c_message_pack(payload, m->payload);
    return 0;
}

static int x_submit(void *arg, store_batch *b, store_done_fn done, void *done_arg)
{
    xnode *n = arg;
    return store_submit(n->id == 3 ? n->x->dst.s : n->x->src.s, b, done, done_arg);
}

static bool x_snapshot(void *arg, uint64_t seq, const uint8_t **app, const uint8_t **ct,
                       size_t *len)
{
    xnode *n = arg;
    xfer *x = n->x;
    if (seq != 5 || x->no_snapshot[n->id])
        return false;
    *app = x->at.app_digest;
    *ct = x->at.client_table;
    *len = x->at.client_table_len;
    return true;
}

static void x_installed(void *arg, uint64_t seq, const uint8_t app[FB_DIGEST_LEN],
                        const uint8_t *ct, size_t len)
{
    xnode *n = arg;
    (void)ct;
    (void)len;
    n->x->installed_seq = seq;
    memcpy(n->x->installed_app, app, FB_DIGEST_LEN);
}

static uint64_t x_now(void *arg)
{
    return ((xnode *)arg)->x->now;
}

/* Reopen a store so that it wakes the transfer's shared waiter. */
static void xfer_share_wakes(xfer *x, fx *f)
{
    fx_close(f);
    char err[256];
    assert_int_equal(store_open(f->dir, CFG_DURABILITY_OS, on_wake, &x->w, &f->s, err, sizeof err),
                     0);
}

static xfer *xfer_new(void)
{
    xfer *x = calloc(1, sizeof *x);
    x->now = 1000;
    pthread_mutex_init(&x->w.m, NULL);
    pthread_cond_init(&x->w.c, NULL);
    fx_init_dir(&x->src);
    fx_open(&x->src, CFG_DURABILITY_OS);
    fx_init_dir(&x->dst);
    fx_open(&x->dst, CFG_DURABILITY_OS);
    model now = {0};
    build_history(&x->src, &now, &x->at5);
    model_free(&now);
    /* The client table and digest at 5, as a replica keeps them. */
    fx ref;
    fx_init_dir(&ref);
    fx_open(&ref, CFG_DURABILITY_OS);
    model base = {0};
    build_base(&ref, &base);
    model_free(&base);
    char err[256];
    assert_int_equal(store_load(ref.s, &x->at, err, sizeof err), 0);
    fx_destroy(&ref);
    pbft_state_digest(x->at.app_digest, x->at.client_table, x->at.client_table_len, x->cert);
    random_history(&x->dst, 7, 1, 2, NULL); /* a state of its own */
    xfer_share_wakes(x, &x->src);
    xfer_share_wakes(x, &x->dst);
    for (uint32_t i = 0; i < 4; i++) {
        xnode *n = &x->nodes[i];
        *n = (xnode){x, i, NULL};
        node_state_io io = {.send = x_send,
                            .submit = x_submit,
                            .snapshot = x_snapshot,
                            .installed = x_installed,
                            .now_ms = x_now,
                            .arg = n};
        node_state_config cfg = {.self = i, .n = 4, .chunk_timeout_ms = 3000, .pause_ms = 1000};
        assert_int_equal(node_state_new(&cfg, &io, &n->ns), 0);
    }
    return x;
}

static void xfer_free(xfer *x)
{
    for (size_t i = 0; i < x->nq; i++)
        free(x->q[i].payload);
    for (uint32_t i = 0; i < 4; i++)
        node_state_free(x->nodes[i].ns);
    fx_destroy(&x->src);
    fx_destroy(&x->dst);
    store_loaded_free(&x->at);
    model_free(&x->at5);
    pthread_cond_destroy(&x->w.c);
    pthread_mutex_destroy(&x->w.m);
    free(x);
}

/* Run store completions and deliver up to max_msgs messages, until nothing
 * moves.  Returns whether anything happened. */
static bool xfer_run(xfer *x, size_t max_msgs)
{
    bool moved = false;
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += DEADLINE_S;
    for (;;) {
        pthread_mutex_lock(&x->w.m);
        uint64_t seen = x->w.wakes;
        pthread_mutex_unlock(&x->w.m);
        size_t done = store_poll(x->src.s) + store_poll(x->dst.s);
        size_t nq = x->nq < max_msgs ? x->nq : max_msgs;
        max_msgs -= nq;
        for (size_t i = 0; i < nq; i++) {
            xmsg m = x->q[i];
            Fedbft__Envelope env = FEDBFT__ENVELOPE__INIT;
            env.type = (Fedbft__MsgType)m.type;
            env.payload = (ProtobufCBinaryData){m.len, m.payload};
            node_state_on_message(x->nodes[m.to].ns, m.from, &env);
            free(m.payload);
        }
        memmove(x->q, x->q + nq, (x->nq - nq) * sizeof *x->q);
        x->nq -= nq;
        moved |= done || nq;
        if (!done && !nq) {
            /* Idle unless a store batch is still running: wait for its wake
             * briefly (store_poll finds nothing more if none is). */
            store_stats a, b;
            store_get_stats(x->src.s, &a);
            store_get_stats(x->dst.s, &b);
            if (a.queue_len == 0 && b.queue_len == 0)
                return moved;
            pthread_mutex_lock(&x->w.m);
            int rc = 0;
            while (x->w.wakes == seen && rc == 0)
                rc = pthread_cond_timedwait(&x->w.c, &x->w.m, &until);
            pthread_mutex_unlock(&x->w.m);
            assert_int_not_equal(rc, ETIMEDOUT);
        }
    }
}

static void xfer_settle(xfer *x)
{
    xfer_run(x, SIZE_MAX);
}

static void x_tick(xfer *x, uint64_t ms)
{
    x->now += ms;
    for (uint32_t i = 0; i < 4; i++)
        node_state_tick(x->nodes[i].ns);
    xfer_settle(x);
}

static void expect_installed(xfer *x)
{
    assert_int_equal(x->installed_seq, 5);
    assert_memory_equal(x->installed_app, x->at.app_digest, FB_DIGEST_LEN);
    store_loaded ld;
    char err[256];
    assert_int_equal(store_load(x->dst.s, &ld, err, sizeof err), 0);
    assert_int_equal(ld.last_executed, 5);
    assert_int_equal(ld.kv_keys, 2500);
    assert_memory_equal(ld.app_digest, x->at.app_digest, FB_DIGEST_LEN);
    store_loaded_free(&ld);
}

/* Rows in the staging area (read with the store closed: it holds the file
 * exclusively). */
static uint64_t staged_rows(xfer *x, fx *f)
{
    fx_close(f);
    char path[128];
    db_file(f, path, sizeof path);
    sqlite3 *db;
    sqlite3_stmt *st;
    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, "SELECT count(*) FROM staging", -1, &st, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    uint64_t n = (uint64_t)sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    xfer_share_wakes(x, f);
    return n;
}

static node_state_stats xstats(xfer *x, uint32_t i)
{
    node_state_stats st;
    node_state_get_stats(x->nodes[i].ns, &st);
    return st;
}

/* Replica 0 (asked first) corrupts what it serves: caught at commit, its
 * staging dropped, and replica 1 serves the install. */
static void test_state_transfer_corrupt_peer(void **state)
{
    (void)state;
    xfer *x = xfer_new();
    node_state_set_corrupt(x->nodes[0].ns, true);
    node_state_fetch(x->nodes[3].ns, 5, x->cert);
    xfer_settle(x);
    expect_installed(x);
    node_state_stats st = xstats(x, 3);
    assert_int_equal(st.fetches, 1);
    assert_int_equal(st.installs, 1);
    assert_int_equal(st.bad_peers, 1);
    assert_int_equal(st.chunks_in, 6); /* 3 from the liar, 3 from replica 1 */
    assert_int_equal(xstats(x, 0).chunks_out, 3);
    assert_int_equal(xstats(x, 1).chunks_out, 3);
    assert_int_equal(staged_rows(x, &x->dst), 0);
    xfer_free(x);
}

/* Every peer corrupts: each is abandoned once, the staging area is left
 * empty, and the fetch pauses; once one serves honestly it installs. */
static void test_state_transfer_all_corrupt(void **state)
{
    (void)state;
    xfer *x = xfer_new();
    for (uint32_t i = 0; i < 3; i++)
        node_state_set_corrupt(x->nodes[i].ns, true);
    node_state_fetch(x->nodes[3].ns, 5, x->cert);
    xfer_settle(x);
    assert_int_equal(x->installed_seq, 0);
    assert_int_equal(xstats(x, 3).bad_peers, 3);
    assert_int_equal(staged_rows(x, &x->dst), 0);
    x_tick(x, 500); /* paused: nothing asked */
    assert_int_equal(xstats(x, 3).chunks_in, 9);
    node_state_set_corrupt(x->nodes[0].ns, false);
    x_tick(x, 600);
    expect_installed(x);
    assert_int_equal(xstats(x, 3).bad_peers, 3);
    xfer_free(x);
}

/* Replica 0 is gone (its requests vanish) and replica 1 restarted without
 * snapshots: the first times out, the second answers unavailable, replica
 * 2 serves. */
static void test_state_transfer_silent_and_unable(void **state)
{
    (void)state;
    xfer *x = xfer_new();
    x->silent[0] = true;
    x->no_snapshot[1] = true;
    node_state_fetch(x->nodes[3].ns, 5, x->cert);
    xfer_settle(x);
    x_tick(x, 2999);
    assert_int_equal(xstats(x, 3).timeouts, 0);
    x_tick(x, 1);
    expect_installed(x);
    node_state_stats st = xstats(x, 3);
    assert_int_equal(st.timeouts, 1);
    assert_int_equal(st.bad_peers, 0);
    assert_int_equal(xstats(x, 1).refused, 1);
    assert_int_equal(xstats(x, 2).chunks_out, 3);
    xfer_free(x);
}

/* The replica re-issues the fetch while chunks arrive (every second in
 * pbft.c): a transfer that takes longer than that still finishes, from chunk
 * 0 exactly once. */
static void test_state_transfer_retry_keeps_progress(void **state)
{
    (void)state;
    xfer *x = xfer_new();
    node_state_fetch(x->nodes[3].ns, 5, x->cert);
    /* One message at a time, with a second and a re-issued fetch between:
     * three chunks take six seconds. */
    int steps = 0;
    while (!x->installed_seq && steps < 100) {
        x->now += 1000;
        node_state_fetch(x->nodes[3].ns, 5, x->cert);
        xfer_run(x, 1);
        steps++;
    }
    expect_installed(x);
    assert_true(steps >= 6);
    assert_int_equal(x->chunk0_requests, 1);
    assert_int_equal(xstats(x, 3).fetches, 1);
    assert_int_equal(xstats(x, 3).timeouts, 0);
    xfer_free(x);
}

/* ------------------------------------------------------------ queue */

static void test_queue_bounded(void **state)
{
    fx *f = *state;
    store_stats st;
    store_get_stats(f->s, &st);
    assert_true(st.queue_max > 0);
    size_t accepted = 0;
    int rc;
    while ((rc = store_submit(f->s, store_batch_new(), NULL, NULL)) == 0)
        accepted++;
    assert_int_equal(rc, FB_EBUSY);
    assert_int_equal(accepted, st.queue_max);
    store_get_stats(f->s, &st);
    assert_int_equal(st.queue_len, st.queue_max);
    wait_polled(f->s, &f->w, accepted);
    store_get_stats(f->s, &st);
    assert_int_equal(st.queue_len, 0);
    assert_int_equal(store_submit(f->s, store_batch_new(), NULL, NULL), 0);
    wait_polled(f->s, &f->w, 1);
    /* Completions run in submission order. */
    outcome *o[8];
    for (int i = 0; i < 8; i++) {
        o[i] = calloc(1, sizeof **o);
        store_batch *b = store_batch_new();
        size_t len;
        uint8_t *rq = req_put((uint64_t)i + 1, "q", "v", &len);
        store_batch_execute(b, (uint64_t)i + 1, (const uint8_t *const *)&rq, &len, 1);
        free(rq);
        assert_int_equal(store_submit(f->s, b, on_done, o[i]), 0);
    }
    wait_polled(f->s, &f->w, 8);
    for (int i = 0; i < 8; i++) {
        assert_int_equal(o[i]->seq, (uint64_t)i + 1);
        outcome_free(o[i]);
    }
}

static void test_batch_rules(void **state)
{
    (void)state;
    store_batch *b = store_batch_new();
    assert_int_equal(store_batch_state_chunk(b, 1, 0), 0);
    assert_int_equal(store_batch_install_begin(b, 1), FB_ESTATE);
    assert_int_equal(store_batch_execute(b, 1, NULL, NULL, 0), FB_ESTATE);
    store_batch_free(b);
    b = store_batch_new();
    assert_int_equal(store_batch_execute(b, 0, NULL, NULL, 0), FB_EINVAL);
    assert_int_equal(store_batch_install_chunk(b, (const uint8_t *)"", 0), 0);
    assert_int_equal(store_batch_install_begin(b, 1), FB_ESTATE); /* begin comes first */
    uint8_t d[FB_DIGEST_LEN] = {0};
    assert_int_equal(store_batch_install_commit(b, 1, d, NULL, 0), 0);
    assert_int_equal(store_batch_install_chunk(b, (const uint8_t *)"", 0), FB_ESTATE);
    store_batch_free(b);
    store_batch_free(NULL);
    store_close(NULL);
}

int main(void)
{
    if (fb_crypto_init() != 0)
        return 1;
    uint8_t seed[FB_SEED_LEN];
    memset(seed, 7, sizeof seed);
    if (fb_key_from_seed(seed, &client_key) != 0)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_records_roundtrip, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gc_by_stable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_execute_operations, setup, teardown),
        cmocka_unit_test(test_determinism_two_stores),
        cmocka_unit_test(test_digest_order_independent),
        cmocka_unit_test_setup_teardown(test_digest_matches_recompute, setup, teardown),
        cmocka_unit_test_setup_teardown(test_client_table_blob, setup, teardown),
        cmocka_unit_test_setup_teardown(test_durability_modes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_close_finishes_submitted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_crash_kill_fsync, setup, teardown),
        cmocka_unit_test_setup_teardown(test_crash_kill_os, setup, teardown),
        cmocka_unit_test_setup_teardown(test_corrupt_header, setup, teardown),
        cmocka_unit_test_setup_teardown(test_corrupt_truncated, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_schema_and_foreign_db, setup, teardown),
        cmocka_unit_test_setup_teardown(test_second_process_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_state_chunk_at_old_checkpoint, setup, teardown),
        cmocka_unit_test_setup_teardown(test_upgrade_from_v1, setup, teardown),
        cmocka_unit_test_setup_teardown(test_state_chunk_byte_bound, setup, teardown),
        cmocka_unit_test_setup_teardown(test_install, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stable_keep, setup, teardown),
        cmocka_unit_test(test_state_transfer_corrupt_peer),
        cmocka_unit_test(test_state_transfer_all_corrupt),
        cmocka_unit_test(test_state_transfer_silent_and_unable),
        cmocka_unit_test(test_state_transfer_retry_keeps_progress),
        cmocka_unit_test_setup_teardown(test_queue_bounded, setup, teardown),
        cmocka_unit_test(test_batch_rules),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
