/* test_pbft.c - the replica state machine in a tiny lossless in-process
 * cluster: normal case, digest caching, watermarks, checkpoints and garbage
 * collection, exactly-once, view change on a silent primary, restore,
 * rejected messages counted by reason, a wiped replica that abstains.
 * (Faults, Byzantine replicas and thousands of seeds live in tests/sim.) */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "fb_error.h"
#include "pbft.h"
#include "sig.h"

#include <stdlib.h>
#include <string.h>

#define MAXN 7
#define MAXQ 20000
#define CLIENT0 1000
#define MAXSNAP 256 /* checkpoint seqs the harness keeps states of */

typedef struct {
    uint32_t to;
    pbft_msg *msg;
} wire;

typedef struct {
    uint32_t n;
    fb_identity keys[MAXN];
    pbft_replica *r[MAXN];
    bool down[MAXN];
    uint8_t app[MAXN][FB_DIGEST_LEN]; /* hash chain of executed requests */
    uint64_t executed_reqs[MAXN];
    wire q[MAXQ];
    size_t qhead, qlen;
    uint64_t now;
    /* replies seen by clients: count per (client, ts) */
    uint32_t replies[8][64];
    /* persisted records per replica */
    pbft_record recs[MAXN][4096];
    size_t nrecs[MAXN];
    uint64_t last_exec_disk[MAXN];
    uint8_t *ct_disk[MAXN];
    size_t ct_len[MAXN];
    fb_identity clients[8];
    pbft_config cfg;
    /* checkpoint states, for FETCH_STATE: app digest and client table */
    bool snap_have[MAXSNAP];
    uint8_t snap_app[MAXSNAP][FB_DIGEST_LEN];
    uint8_t *snap_ct[MAXSNAP];
    size_t snap_ct_len[MAXSNAP];
    /* votes sent, per replica: lowest seq of a PRE-PREPARE, PREPARE or COMMIT
     * sent, and VIEW-CHANGEs sent (since the test reset them) */
    uint64_t min_vote[MAXN];
    uint32_t vcs_sent[MAXN];
    /* FETCH_STATE held instead of served (a transfer that takes a while):
     * every seq asked for, in order */
    bool hold_fetch[MAXN];
    /* a cut link, one way: nothing from mute[i] arrives; no NEW-VIEW reaches
     * a replica with no_nv[i] (it is lost on the way) */
    bool mute[MAXN];
    bool no_nv[MAXN];
    uint64_t fetches[MAXN][16];
    uint32_t nfetches[MAXN];
    /* CHECKPOINTs to a replica with hold_ckpt[i] wait here (a slow link for
     * them only) until release_ckpts */
    bool hold_ckpt[MAXN];
    wire held[64];
    size_t nheld;
} cluster;

static void sign_cb(void *arg, const uint8_t d[FB_DIGEST_LEN], uint8_t sig[FB_SIG_LEN])
{
    fb_sig_sign(arg, d, sig);
}

static void enqueue(cluster *c, uint32_t to, pbft_msg *m)
{
    assert_true(c->qlen < MAXQ);
    wire *w = &c->q[(c->qhead + c->qlen++) % MAXQ];
    w->to = to;
    w->msg = pbft_msg_ref(m);
}

static void step(cluster *c, uint32_t i, const pbft_event *ev);

static void execute(cluster *c, uint32_t i, const pbft_action *a)
{
    pbft_result res[64];
    uint8_t out[64][8];
    assert_true(a->execute.nreqs <= 64);
    for (size_t k = 0; k < a->execute.nreqs; k++) {
        const pbft_msg *req = a->execute.reqs[k];
        if (a->execute.seq != 0) {
            fb_digest_ctx ctx;
            fb_digest_init(&ctx, FB_DOM_STATE);
            fb_digest_update(&ctx, c->app[i], FB_DIGEST_LEN);
            fb_digest_update(&ctx, req->digest, FB_DIGEST_LEN);
            fb_digest_final(&ctx, c->app[i]);
            c->executed_reqs[i]++;
        }
        memcpy(out[k], c->app[i], 8);
        res[k] = (pbft_result){out[k], 8};
    }
    pbft_event ev = {.kind = PBFT_EV_EXECUTED, .now_ms = c->now};
    ev.executed.seq = a->execute.seq;
    ev.executed.read_req = a->execute.seq == 0 ? a->execute.reqs[0] : NULL;
    ev.executed.results = res;
    ev.executed.nresults = a->execute.nreqs;
    memcpy(ev.executed.app_digest, c->app[i], FB_DIGEST_LEN);
    if (a->execute.seq != 0) {
        /* the node persists state and client table with the seq */
        c->last_exec_disk[i] = a->execute.seq;
    }
    step(c, i, &ev);
    if (a->execute.seq != 0) {
        free(c->ct_disk[i]);
        assert_int_equal(pbft_client_table_export(c->r[i], &c->ct_disk[i], &c->ct_len[i]), 0);
    }
    uint64_t seq = a->execute.seq;
    if (a->execute.checkpoint && seq < MAXSNAP && !c->snap_have[seq]) {
        c->snap_have[seq] = true;
        memcpy(c->snap_app[seq], c->app[i], FB_DIGEST_LEN);
        c->snap_ct[seq] = malloc(c->ct_len[i] ? c->ct_len[i] : 1);
        memcpy(c->snap_ct[seq], c->ct_disk[i], c->ct_len[i]);
        c->snap_ct_len[seq] = c->ct_len[i];
    }
}

/* State transfer, instantly, from the states kept at checkpoints. */
static void fetch_state(cluster *c, uint32_t i, const pbft_action *a)
{
    uint64_t seq = a->fetch.seq;
    if (c->hold_fetch[i]) {
        if (c->nfetches[i] < 16)
            c->fetches[i][c->nfetches[i]++] = seq;
        return;
    }
    if (seq >= MAXSNAP || !c->snap_have[seq])
        return; /* the replica asks again */
    memcpy(c->app[i], c->snap_app[seq], FB_DIGEST_LEN);
    c->last_exec_disk[i] = seq;
    free(c->ct_disk[i]);
    c->ct_disk[i] = malloc(c->snap_ct_len[seq] ? c->snap_ct_len[seq] : 1);
    memcpy(c->ct_disk[i], c->snap_ct[seq], c->snap_ct_len[seq]);
    c->ct_len[i] = c->snap_ct_len[seq];
    pbft_event ev = {.kind = PBFT_EV_STATE_INSTALLED, .now_ms = c->now};
    ev.installed.seq = seq;
    memcpy(ev.installed.app_digest, c->snap_app[seq], FB_DIGEST_LEN);
    ev.installed.client_table = c->snap_ct[seq];
    ev.installed.client_table_len = c->snap_ct_len[seq];
    step(c, i, &ev);
}

/* Note the votes replica i sends. */
static void watch_votes(cluster *c, uint32_t i, const pbft_msg *m)
{
    uint64_t seq = 0;
    switch (m->type) {
    case FEDBFT__MSG_TYPE__MSG_PRE_PREPARE:
        seq = m->u.pre_prepare->seq;
        break;
    case FEDBFT__MSG_TYPE__MSG_PREPARE:
        seq = m->u.prepare->seq;
        break;
    case FEDBFT__MSG_TYPE__MSG_COMMIT:
        seq = m->u.commit->seq;
        break;
    case FEDBFT__MSG_TYPE__MSG_VIEW_CHANGE:
        c->vcs_sent[i]++;
        return;
    default:
        return;
    }
    if (seq < c->min_vote[i])
        c->min_vote[i] = seq;
}

static void carry_out(cluster *c, uint32_t i, const pbft_action *acts, size_t n)
{
    /* copy: stepping (EXECUTED) reuses the replica's action buffer */
    pbft_action *copy = malloc((n ? n : 1) * sizeof *copy);
    memcpy(copy, acts, n * sizeof *copy);
    for (size_t k = 0; k < n; k++)
        if (copy[k].msg)
            pbft_msg_ref(copy[k].msg);
    for (size_t k = 0; k < n; k++) {
        const pbft_action *a = &copy[k];
        if (a->kind == PBFT_ACT_SEND || a->kind == PBFT_ACT_BROADCAST)
            watch_votes(c, i, a->msg);
        switch (a->kind) {
        case PBFT_ACT_SEND:
            enqueue(c, a->to, a->msg);
            break;
        case PBFT_ACT_BROADCAST:
            for (uint32_t j = 0; j < c->n; j++)
                if (j != i)
                    enqueue(c, j, a->msg);
            break;
        case PBFT_ACT_PERSIST:
            assert_true(c->nrecs[i] < 4096);
            c->recs[i][c->nrecs[i]] = a->record;
            if (a->record.msg)
                pbft_msg_ref(a->record.msg);
            c->nrecs[i]++;
            break;
        case PBFT_ACT_EXECUTE:
            execute(c, i, a);
            break;
        case PBFT_ACT_REPLY:
            if (a->reply.client >= CLIENT0 && a->reply.timestamp < 64)
                c->replies[a->reply.client - CLIENT0][a->reply.timestamp]++;
            break;
        case PBFT_ACT_FETCH_STATE:
            fetch_state(c, i, a);
            break;
        default:
            break;
        }
    }
    for (size_t k = 0; k < n; k++)
        pbft_msg_unref(copy[k].msg);
    free(copy);
}

static void step(cluster *c, uint32_t i, const pbft_event *ev)
{
    size_t n = 0;
    const pbft_action *acts = pbft_step(c->r[i], ev, &n);
    carry_out(c, i, acts, n);
}

static void cluster_init(cluster *c, uint32_t n, uint32_t K, uint32_t L)
{
    memset(c, 0, sizeof *c);
    c->n = n;
    for (uint32_t i = 0; i < n; i++) {
        uint8_t seed[FB_SEED_LEN] = {(uint8_t)(i + 1), 0x5a};
        fb_key_from_seed(seed, &c->keys[i]);
    }
    for (uint32_t i = 0; i < 8; i++) {
        uint8_t seed[FB_SEED_LEN] = {(uint8_t)(i + 1), 0xc1};
        fb_key_from_seed(seed, &c->clients[i]);
    }
    for (uint32_t i = 0; i < n; i++) {
        pbft_config cfg = {.n = n,
                           .id = i,
                           .checkpoint_interval = K,
                           .log_window = L,
                           .batch_max_requests = 4,
                           .request_timeout_ms = 1000,
                           .view_change_timeout_ms = 1000,
                           .retransmit_ms = 300,
                           .signer = {sign_cb, &c->keys[i]}};
        char err[128];
        assert_int_equal(pbft_new(&cfg, &c->r[i], err, sizeof err), 0);
        c->cfg = cfg;
    }
}

static void restart(cluster *c, uint32_t i)
{
    pbft_free(c->r[i]);
    pbft_config cfg = c->cfg;
    cfg.id = i;
    cfg.signer = (pbft_signer){sign_cb, &c->keys[i]};
    char err[128];
    assert_int_equal(pbft_new(&cfg, &c->r[i], err, sizeof err), 0);
    assert_int_equal(pbft_restore(c->r[i], c->recs[i], c->nrecs[i], c->last_exec_disk[i],
                                  c->ct_disk[i], c->ct_len[i]),
                     0);
    c->down[i] = false;
}

static void cluster_free(cluster *c)
{
    for (size_t k = 0; k < c->nheld; k++)
        pbft_msg_unref(c->held[k].msg);
    while (c->qlen) {
        pbft_msg_unref(c->q[c->qhead].msg);
        c->qhead = (c->qhead + 1) % MAXQ;
        c->qlen--;
    }
    for (uint32_t i = 0; i < c->n; i++) {
        pbft_free(c->r[i]);
        for (size_t k = 0; k < c->nrecs[i]; k++)
            pbft_msg_unref(c->recs[i][k].msg);
        free(c->ct_disk[i]);
    }
    for (uint32_t k = 0; k < MAXSNAP; k++)
        free(c->snap_ct[k]);
}

/* Deliver messages (through the real parse path) until the network is quiet. */
static void run(cluster *c)
{
    while (c->qlen) {
        wire w = c->q[c->qhead];
        c->qhead = (c->qhead + 1) % MAXQ;
        c->qlen--;
        bool lost = (w.msg->sender < MAXN && c->mute[w.msg->sender]) ||
                    (c->no_nv[w.to] && w.msg->type == FEDBFT__MSG_TYPE__MSG_NEW_VIEW);
        if (!lost && c->hold_ckpt[w.to] && w.msg->type == FEDBFT__MSG_TYPE__MSG_CHECKPOINT) {
            assert_true(c->nheld < sizeof c->held / sizeof c->held[0]);
            c->held[c->nheld++] = w;
            continue;
        }
        if (!c->down[w.to] && !lost) {
            pbft_msg *m = NULL;
            char err[128];
            assert_int_equal(
                pbft_parse(c->r[w.to], w.msg->raw, w.msg->raw_len, &m, err, sizeof err), 0);
            pbft_event ev = {.kind = PBFT_EV_MESSAGE, .now_ms = c->now, .msg = m};
            step(c, w.to, &ev);
            pbft_msg_unref(m);
        }
        pbft_msg_unref(w.msg);
    }
}

/* Deliver the held CHECKPOINTs (and what they cause). */
static void release_ckpts(cluster *c)
{
    for (size_t k = 0; k < c->nheld; k++) {
        c->hold_ckpt[c->held[k].to] = false;
        enqueue(c, c->held[k].to, c->held[k].msg);
        pbft_msg_unref(c->held[k].msg);
    }
    c->nheld = 0;
    run(c);
}

static void tick(cluster *c, uint64_t advance)
{
    c->now += advance;
    for (uint32_t i = 0; i < c->n; i++) {
        if (c->down[i])
            continue;
        pbft_event ev = {.kind = PBFT_EV_TICK, .now_ms = c->now};
        step(c, i, &ev);
    }
    run(c);
}

static pbft_msg *make_request(cluster *c, uint32_t client, uint64_t ts, bool read_only)
{
    Fedbft__Operation op = FEDBFT__OPERATION__INIT;
    op.kind = read_only ? FEDBFT__OPERATION__KIND__OP_GET : FEDBFT__OPERATION__KIND__OP_PUT;
    uint8_t key[8] = {(uint8_t)client, (uint8_t)ts};
    op.key = (ProtobufCBinaryData){sizeof key, key};
    Fedbft__Request rq = FEDBFT__REQUEST__INIT;
    rq.client = CLIENT0 + client;
    rq.timestamp = ts;
    rq.op = &op;
    rq.read_only = read_only;
    pbft_signer s = {sign_cb, &c->clients[client]};
    pbft_msg *m = NULL;
    assert_int_equal(
        pbft_msg_make(FEDBFT__MSG_TYPE__MSG_REQUEST, CLIENT0 + client, &rq.base, &s, NULL, &m), 0);
    return m;
}

/* A client sends to every replica (as the real client does). */
static void submit(cluster *c, uint32_t client, uint64_t ts, bool read_only)
{
    pbft_msg *m = make_request(c, client, ts, read_only);
    for (uint32_t i = 0; i < c->n; i++) {
        if (c->down[i])
            continue;
        pbft_msg *p = NULL;
        char err[128];
        assert_int_equal(pbft_parse(c->r[i], m->raw, m->raw_len, &p, err, sizeof err), 0);
        pbft_event ev = {.kind = PBFT_EV_REQUEST, .now_ms = c->now, .msg = p};
        step(c, i, &ev);
        pbft_msg_unref(p);
    }
    pbft_msg_unref(m);
}

/* Client `client` writes timestamps from..to, one at a time, each run until
 * the cluster is quiet. */
static void write_each(cluster *c, uint32_t client, uint64_t from, uint64_t to)
{
    for (uint64_t ts = from; ts <= to; ts++) {
        submit(c, client, ts, false);
        run(c);
    }
}

static pbft_status status(cluster *c, uint32_t i)
{
    pbft_status st;
    pbft_get_status(c->r[i], &st);
    return st;
}

static void assert_same_state(cluster *c, uint64_t min_executed)
{
    for (uint32_t i = 0; i < c->n; i++) {
        if (c->down[i])
            continue;
        assert_true(status(c, i).last_executed >= min_executed);
        assert_memory_equal(c->app[i], c->app[0], FB_DIGEST_LEN);
    }
}

/* A PRE-PREPARE for (view, seq) carrying req, signed by replica `sender`. */
static pbft_msg *make_pp(cluster *c, uint64_t view, uint64_t seq, uint32_t sender, pbft_msg *req)
{
    uint8_t d[FB_DIGEST_LEN];
    pbft_batch_digest(0, &req, 1, NULL, d);
    Fedbft__PrePrepare pp = FEDBFT__PRE_PREPARE__INIT;
    pp.view = view;
    pp.seq = seq;
    pp.digest = (ProtobufCBinaryData){FB_DIGEST_LEN, d};
    Fedbft__Envelope *envs[1] = {req->env};
    pp.requests = envs;
    pp.n_requests = 1;
    pbft_signer ps = {sign_cb, &c->keys[sender]};
    pbft_msg *m = NULL;
    assert_int_equal(pbft_msg_make_batch(FEDBFT__MSG_TYPE__MSG_PRE_PREPARE, sender, &pp.base, &req,
                                         1, &ps, NULL, &m),
                     0);
    return m;
}

/* A PREPARE or COMMIT for (view, seq, digest) signed by replica `sender`. */
static pbft_msg *make_vote(cluster *c, int type, uint64_t view, uint64_t seq,
                           const uint8_t digest[FB_DIGEST_LEN], uint32_t sender)
{
    ProtobufCBinaryData d = {FB_DIGEST_LEN, (uint8_t *)digest};
    Fedbft__Prepare p = FEDBFT__PREPARE__INIT;
    Fedbft__Commit cm = FEDBFT__COMMIT__INIT;
    p.view = cm.view = view;
    p.seq = cm.seq = seq;
    p.digest = cm.digest = d;
    p.replica = cm.replica = sender;
    pbft_signer ps = {sign_cb, &c->keys[sender]};
    pbft_msg *m = NULL;
    const ProtobufCMessage *payload =
        type == FEDBFT__MSG_TYPE__MSG_PREPARE ? &p.base : (const ProtobufCMessage *)&cm.base;
    assert_int_equal(pbft_msg_make(type, sender, payload, &ps, NULL, &m), 0);
    return m;
}

/* Hand replica `to` a message as if it came off the wire, then let the
 * cluster run.  m is consumed. */
static void inject(cluster *c, uint32_t to, pbft_msg *m)
{
    pbft_msg *p = NULL;
    char err[128];
    assert_int_equal(pbft_parse(c->r[to], m->raw, m->raw_len, &p, err, sizeof err), 0);
    pbft_event ev = {.kind = PBFT_EV_MESSAGE, .now_ms = c->now, .msg = p};
    step(c, to, &ev);
    pbft_msg_unref(p);
    pbft_msg_unref(m);
    run(c);
}

/* The PRE-PREPARE replica i logged for seq (borrowed). */
static pbft_msg *logged_pp(cluster *c, uint32_t i, uint64_t seq)
{
    for (size_t k = c->nrecs[i]; k-- > 0;) {
        pbft_msg *m = c->recs[i][k].msg;
        if (m && m->type == FEDBFT__MSG_TYPE__MSG_PRE_PREPARE && m->u.pre_prepare->seq == seq)
            return m;
    }
    fail_msg("replica %u logged no PRE-PREPARE for seq %llu", i, (unsigned long long)seq);
    return NULL;
}

/* Each rejection reason counted exactly once per offending message, at
 * replica 1, with the executed state unchanged everywhere. */
typedef struct {
    uint64_t by[PBFT_REJ_COUNT];
    uint64_t executed[MAXN];
    uint8_t app[MAXN][FB_DIGEST_LEN];
} snapshot;

static void take(cluster *c, snapshot *s)
{
    pbft_status st = status(c, 1);
    memcpy(s->by, st.rejected_by, sizeof s->by);
    uint64_t sum = 0;
    for (int k = 0; k < PBFT_REJ_COUNT; k++)
        sum += st.rejected_by[k];
    assert_int_equal(st.rejected, sum);
    for (uint32_t i = 0; i < c->n; i++) {
        s->executed[i] = status(c, i).last_executed;
        memcpy(s->app[i], c->app[i], FB_DIGEST_LEN);
    }
}

/* Since `before`: replica 1 counted one message for `why` (and nothing for
 * any other reason), and no replica executed anything. */
static void expect_one(cluster *c, const snapshot *before, pbft_reject why)
{
    snapshot now;
    take(c, &now);
    for (int k = 0; k < PBFT_REJ_COUNT; k++) {
        uint64_t d = now.by[k] - before->by[k];
        if (d != (k == (int)why ? 1u : 0u))
            fail_msg("reason %s: %llu new rejections (expected one for %s)",
                     pbft_reject_name((pbft_reject)k), (unsigned long long)d,
                     pbft_reject_name(why));
    }
    for (uint32_t i = 0; i < c->n; i++) {
        assert_int_equal(now.executed[i], before->executed[i]);
        assert_memory_equal(now.app[i], before->app[i], FB_DIGEST_LEN);
    }
}

/* ------------------------------------------------------------ tests */

static void test_normal_case_and_digest_counts(void **state)
{
    (void)state;
    cluster *c = calloc(1, sizeof *c);
    cluster_init(c, 4, 4, 16);
    /* Eight requests from two clients, one at a time, so batches are singletons
     * and nothing is reordered. */
    for (uint64_t ts = 1; ts <= 4; ts++) {
        submit(c, 0, ts, false);
        run(c);
        submit(c, 1, ts, false);
        run(c);
    }
    assert_same_state(c, 8);
    for (uint32_t i = 0; i < 4; i++) {
        pbft_status st = status(c, i);
        assert_int_equal(c->executed_reqs[i], 8);
        /* exactly one digest per request and one per batch at every replica */
        assert_int_equal(st.digests.requests, 8);
        assert_int_equal(st.digests.batches, st.last_executed);
        assert_int_equal(st.view, 0);
    }
    for (uint64_t ts = 1; ts <= 4; ts++) {
        assert_int_equal(c->replies[0][ts], 4);
        assert_int_equal(c->replies[1][ts], 4);
    }
    cluster_free(c);
    free(c);
}

static void test_checkpoints_bound_the_log(void **state)
{
    (void)state;
    cluster *c = calloc(1, sizeof *c);
    cluster_init(c, 4, 4, 8);
    for (uint64_t ts = 1; ts <= 40; ts++) {
        submit(c, 0, ts, false);
        run(c);
        for (uint32_t i = 0; i < 4; i++)
            assert_true(status(c, i).log_entries <= 8);
    }
    assert_same_state(c, 40);
    for (uint32_t i = 0; i < 4; i++) {
        pbft_status st = status(c, i);
        assert_int_equal(st.stable_seq, 40); /* K = 4 divides 40 */
        assert_int_equal(st.high_watermark, 48);
        assert_true(st.log_entries <= 8);
    }
    cluster_free(c);
    free(c);
}

/* A PRE-PREPARE at h or above H is refused; h + 1 and H are accepted. */
static void test_watermark_edges(void **state)
{
    (void)state;
    cluster *c = calloc(1, sizeof *c);
    cluster_init(c, 4, 4, 8); /* h = 0, H = 8 */
    pbft_msg *req = make_request(c, 0, 1, false);
    uint64_t seqs[] = {0, 1, 8, 9};
    bool accept[] = {false, true, true, false};
    for (int k = 0; k < 4; k++) {
        pbft_msg *m = make_pp(c, 0, seqs[k], 0, req);
        uint64_t before = status(c, 1).rejected_by[PBFT_REJ_WATERMARK];
        size_t n = 0;
        pbft_event ev = {.kind = PBFT_EV_MESSAGE, .now_ms = 0, .msg = m};
        const pbft_action *a = pbft_step(c->r[1], &ev, &n);
        bool prepared = false;
        for (size_t j = 0; j < n; j++)
            prepared |=
                a[j].kind == PBFT_ACT_BROADCAST && a[j].msg->type == FEDBFT__MSG_TYPE__MSG_PREPARE;
        assert_int_equal(prepared, accept[k]);
        assert_int_equal(status(c, 1).rejected_by[PBFT_REJ_WATERMARK] - before, accept[k] ? 0 : 1);
        pbft_msg_unref(m);
    }
    pbft_msg_unref(req);
    cluster_free(c);
    free(c);
}

/* A primary whose window is full proposes again as soon as a checkpoint
 * becomes stable, whatever makes it stable: here the last CHECKPOINT needed
 * arrives from a peer, with the next request already waiting and nothing in
 * flight (no execution, new request or timer would wake it). */
static void test_window_reopens_on_stable_checkpoint(void **state)
{
    (void)state;
    cluster *c = calloc(1, sizeof *c);
    cluster_init(c, 4, 4, 8); /* h = 0, H = 8 */
    c->cfg.batch_max_requests = 1;
    for (uint32_t i = 0; i < 4; i++)
        restart(c, i);
    c->hold_ckpt[0] = true; /* the primary hears no peer's CHECKPOINT */
    write_each(c, 0, 1, 9);
    pbft_status st = status(c, 0);
    assert_int_equal(st.last_executed, 8);
    assert_int_equal(st.stable_seq, 0); /* seq 9 lies beyond H: request 9 waits */
    assert_int_equal(c->replies[0][9], 0);
    release_ckpts(c);
    st = status(c, 0);
    assert_int_equal(st.stable_seq, 8);
    assert_int_equal(st.last_executed, 9);
    assert_int_equal(c->replies[0][9], 4);
    assert_same_state(c, 9);
    cluster_free(c);
    free(c);
}

static void test_exactly_once_and_stale(void **state)
{
    (void)state;
    cluster *c = calloc(1, sizeof *c);
    cluster_init(c, 4, 4, 16);
    submit(c, 0, 5, false);
    run(c);
    assert_int_equal(c->replies[0][5], 4);
    uint64_t exec = c->executed_reqs[0];
    /* retransmission: answered from the cached reply, not executed again */
    submit(c, 0, 5, false);
    run(c);
    assert_int_equal(c->replies[0][5], 8);
    assert_int_equal(c->executed_reqs[0], exec);
    /* stale timestamp: ignored */
    submit(c, 0, 3, false);
    run(c);
    tick(c, 10);
    assert_int_equal(c->replies[0][3], 0);
    assert_int_equal(c->executed_reqs[0], exec);
    /* read-only: answered without ordering, by every replica */
    uint64_t seq = status(c, 0).last_executed;
    submit(c, 0, 6, true);
    run(c);
    assert_int_equal(c->replies[0][6], 4);
    assert_int_equal(status(c, 0).last_executed, seq);
    cluster_free(c);
    free(c);
}

static void test_silent_primary_is_replaced(void **state)
{
    (void)state;
    cluster *c = calloc(1, sizeof *c);
    cluster_init(c, 4, 4, 16);
    submit(c, 0, 1, false);
    run(c);
    assert_same_state(c, 1);
    c->down[0] = true; /* the primary of view 0 goes silent */
    submit(c, 0, 2, false);
    run(c);
    for (int k = 0; k < 20 && status(c, 1).last_executed < 2; k++)
        tick(c, 500);
    for (uint32_t i = 1; i < 4; i++) {
        pbft_status st = status(c, i);
        assert_int_equal(st.view, 1);
        assert_false(st.view_changing);
        assert_int_equal(st.last_executed, 2);
    }
    assert_int_equal(c->replies[0][2], 3);
    /* the new primary orders new requests */
    submit(c, 1, 1, false);
    run(c);
    assert_int_equal(c->replies[1][1], 3);
    cluster_free(c);
    free(c);
}

/* A replica restarted from its persisted records rejoins and catches up. */
static void test_restart_from_records(void **state)
{
    (void)state;
    cluster *c = calloc(1, sizeof *c);
    cluster_init(c, 4, 4, 8);
    write_each(c, 0, 1, 6);
    c->down[2] = true;
    write_each(c, 0, 7, 30);
    restart(c, 2);
    for (int k = 0; k < 10; k++)
        tick(c, 400);
    /* replica 2 fell behind by more than the window: it must have learned
     * the stable checkpoint from its peers and asked for the state */
    pbft_status st = status(c, 2);
    assert_true(st.stable_seq >= 24);
    assert_true(st.fetching_seq >= 24 || st.last_executed >= 24);
    cluster_free(c);
    free(c);
}

/* Replica 2 misses 20 requests, restarts and asks for the state, which is
 * held (a transfer that takes a while).  Returns the next timestamp. */
static uint64_t behind_and_fetching(cluster *c)
{
    cluster_init(c, 4, 4, 8);
    c->down[2] = true;
    write_each(c, 0, 1, 20);
    uint64_t ts = 21;
    restart(c, 2);
    c->hold_fetch[2] = true;
    tick(c, 400);
    return ts;
}

/* A fetch in progress is not replaced while newer checkpoints are certified
 * (under load, restarting for each would never finish a transfer); once it is
 * installed, the newest certified checkpoint is taken up at once. */
static void test_fetch_not_replaced(void **state)
{
    (void)state;
    cluster *c = calloc(1, sizeof *c);
    uint64_t ts = behind_and_fetching(c);
    assert_int_equal(c->nfetches[2], 1);
    uint64_t first = c->fetches[2][0];
    assert_true(first >= 16);
    /* The cluster moves on well past replica 2's window. */
    for (; ts <= 44; ts++) {
        submit(c, 0, ts, false);
        run(c);
        tick(c, 10);
    }
    uint64_t head = status(c, 0).stable_seq;
    assert_true(head >= first + 3 * 8);
    for (uint32_t k = 0; k < c->nfetches[2]; k++)
        assert_int_equal(c->fetches[2][k], first); /* re-asked, never replaced */
    assert_int_equal(status(c, 2).fetching_seq, first);
    /* The transfer completes: the newest certified checkpoint is fetched next. */
    c->hold_fetch[2] = false;
    pbft_action a = {.kind = PBFT_ACT_FETCH_STATE};
    a.fetch.seq = first;
    fetch_state(c, 2, &a);
    pbft_status st = status(c, 2);
    assert_true(st.stable_seq > first);
    assert_true(st.last_executed >= head || st.fetching_seq == 0);
    for (int k = 0; k < 5 && status(c, 2).last_executed < head; k++)
        tick(c, 400);
    assert_true(status(c, 2).last_executed >= head);
    assert_memory_equal(c->app[2], c->app[0], FB_DIGEST_LEN);
    cluster_free(c);
    free(c);
}

/* A replica that joined a view change but lost the NEW-VIEW (its link from
 * the new primary stalls after a partition heals) sees f+1 replicas order in
 * that view: when its timer fires it asks the new primary again and waits,
 * instead of moving on alone to the next view, where no one would follow. */
static void test_view_change_waits_for_live_view(void **state)
{
    (void)state;
    cluster *c = calloc(1, sizeof *c);
    cluster_init(c, 4, 4, 8);
    write_each(c, 0, 1, 3);
    uint64_t ts = 4;
    /* The primary is cut off: nothing it sends arrives; the others change
     * view, and it joins on their VIEW-CHANGEs, but the NEW-VIEW is lost. */
    c->mute[0] = true;
    c->no_nv[0] = true;
    submit(c, 0, ts++, false);
    run(c);
    for (int k = 0; k < 20 && (status(c, 1).view != 1 || status(c, 1).view_changing); k++) {
        tick(c, 500);
        run(c);
    }
    assert_int_equal(status(c, 1).view, 1);
    assert_false(status(c, 1).view_changing);
    assert_int_equal(status(c, 0).view, 1);
    assert_true(status(c, 0).view_changing);
    /* Healed, but NEW-VIEWs to it are still lost; the others order in view 1. */
    c->mute[0] = false;
    for (int k = 0; k < 12; k++) {
        submit(c, 1, ts++, false);
        run(c);
        tick(c, 500);
        run(c);
        assert_int_equal(status(c, 0).view, 1); /* never moves on alone */
    }
    /* The link recovers: the re-sent VIEW-CHANGE gets the NEW-VIEW back. */
    c->no_nv[0] = false;
    for (int k = 0; k < 12 && status(c, 0).view_changing; k++) {
        tick(c, 500);
        run(c);
    }
    assert_int_equal(status(c, 0).view, 1);
    assert_false(status(c, 0).view_changing);
    submit(c, 1, ts++, false);
    run(c);
    for (int k = 0; k < 10 && status(c, 0).last_executed < status(c, 1).last_executed; k++) {
        tick(c, 400);
        run(c);
    }
    for (uint32_t i = 0; i < 4; i++)
        assert_int_equal(status(c, i).view, 1);
    assert_same_state(c, status(c, 1).last_executed);
    cluster_free(c);
    free(c);
}

/* Restarted in the middle of a view change, a replica re-sends its vote for
 * the same view (not the next one) and the change completes. */
static void test_restart_during_view_change(void **state)
{
    (void)state;
    cluster *c = calloc(1, sizeof *c);
    cluster_init(c, 4, 4, 16);
    submit(c, 0, 1, false);
    run(c);
    c->down[0] = c->down[1] = true; /* primaries of views 0 and 1 */
    submit(c, 0, 2, false);
    run(c);
    tick(c, 1100); /* request timers fire: 2 and 3 vote for view 1, no quorum */
    assert_true(status(c, 2).view_changing);
    assert_int_equal(status(c, 2).view, 1);

    restart(c, 2);
    size_t n = 0;
    pbft_event ev = {.kind = PBFT_EV_TICK, .now_ms = c->now + 1};
    const pbft_action *a = pbft_step(c->r[2], &ev, &n);
    bool revoted = false;
    for (size_t k = 0; k < n; k++)
        if (a[k].kind == PBFT_ACT_BROADCAST && a[k].msg->type == FEDBFT__MSG_TYPE__MSG_VIEW_CHANGE)
            revoted |= a[k].msg->u.view_change->new_view == 1;
    assert_true(revoted);
    assert_int_equal(status(c, 2).view, 1);
    carry_out(c, 2, a, n);

    c->down[0] = c->down[1] = false; /* they come back and join */
    for (int k = 0; k < 10 && status(c, 2).last_executed < 2; k++)
        tick(c, 400);
    for (uint32_t i = 0; i < 4; i++) {
        assert_int_equal(status(c, i).view, 1);
        assert_false(status(c, i).view_changing);
    }
    assert_int_equal(status(c, 2).last_executed, 2);
    cluster_free(c);
    free(c);
}

static void test_rejections_by_reason(void **state)
{
    (void)state;
    cluster *c = calloc(1, sizeof *c);
    cluster_init(c, 4, 4, 16);
    write_each(c, 0, 1, 2);
    assert_same_state(c, 2);
    pbft_msg *req = make_request(c, 1, 7, false), *other = make_request(c, 1, 8, false);
    snapshot before;

    /* The primary equivocates on a committed slot... */
    const uint8_t *d1 = logged_pp(c, 1, 1)->u.pre_prepare->digest.data;
    uint8_t digest1[FB_DIGEST_LEN], wrong[FB_DIGEST_LEN];
    memcpy(digest1, d1, FB_DIGEST_LEN);
    memset(wrong, 0xee, sizeof wrong);
    take(c, &before);
    inject(c, 1, make_pp(c, 0, 1, 0, req));
    expect_one(c, &before, PBFT_REJ_EQUIVOCATION);
    /* ...and on a fresh one: the first PRE-PREPARE is accepted (replica 1
     * prepares it), the second is refused and not prepared. */
    inject(c, 1, make_pp(c, 0, 9, 0, req));
    take(c, &before);
    inject(c, 1, make_pp(c, 0, 9, 0, other));
    expect_one(c, &before, PBFT_REJ_EQUIVOCATION);
    /* the same PRE-PREPARE again is a duplicate */
    take(c, &before);
    inject(c, 1, pbft_msg_ref(logged_pp(c, 1, 1)));
    expect_one(c, &before, PBFT_REJ_DUPLICATE);

    /* Replica 2 repeats its PREPARE for seq 1, then contradicts it; replica
     * 3 contradicts its COMMIT. */
    take(c, &before);
    inject(c, 1, make_vote(c, FEDBFT__MSG_TYPE__MSG_PREPARE, 0, 1, digest1, 2));
    expect_one(c, &before, PBFT_REJ_DUPLICATE);
    take(c, &before);
    inject(c, 1, make_vote(c, FEDBFT__MSG_TYPE__MSG_PREPARE, 0, 1, wrong, 2));
    expect_one(c, &before, PBFT_REJ_EQUIVOCATION);
    take(c, &before);
    inject(c, 1, make_vote(c, FEDBFT__MSG_TYPE__MSG_COMMIT, 0, 1, wrong, 3));
    expect_one(c, &before, PBFT_REJ_EQUIVOCATION);
    /* A vote for a seq past the high watermark. */
    take(c, &before);
    inject(c, 1, make_vote(c, FEDBFT__MSG_TYPE__MSG_COMMIT, 0, 17, wrong, 3));
    expect_one(c, &before, PBFT_REJ_WATERMARK);

    /* A backup proposes. */
    take(c, &before);
    inject(c, 1, make_pp(c, 0, 10, 2, req));
    expect_one(c, &before, PBFT_REJ_NOT_PRIMARY);

    /* A VIEW-CHANGE claiming a stable checkpoint without its proof. */
    Fedbft__ViewChange vc = FEDBFT__VIEW_CHANGE__INIT;
    vc.new_view = 1;
    vc.stable_seq = 4;
    vc.replica = 2;
    pbft_signer s2 = {sign_cb, &c->keys[2]};
    pbft_msg *bad_vc = NULL;
    assert_int_equal(
        pbft_msg_make(FEDBFT__MSG_TYPE__MSG_VIEW_CHANGE, 2, &vc.base, &s2, NULL, &bad_vc), 0);
    take(c, &before);
    inject(c, 1, bad_vc);
    expect_one(c, &before, PBFT_REJ_BAD_VIEW_CHANGE);
    assert_int_equal(status(c, 1).view, 0);
    assert_false(status(c, 1).view_changing);

    /* The primary goes silent; after the view change, messages of view 0
     * are stale. */
    c->down[0] = true;
    submit(c, 0, 3, false);
    run(c);
    for (int k = 0; k < 20 && (status(c, 1).view == 0 || status(c, 1).view_changing); k++)
        tick(c, 500);
    assert_int_equal(status(c, 1).view, 1);
    assert_false(status(c, 1).view_changing);
    take(c, &before);
    inject(c, 1, make_pp(c, 0, 11, 0, req));
    expect_one(c, &before, PBFT_REJ_STALE_VIEW);
    take(c, &before);
    inject(c, 1, make_vote(c, FEDBFT__MSG_TYPE__MSG_PREPARE, 0, 11, wrong, 2));
    expect_one(c, &before, PBFT_REJ_STALE_VIEW);

    /* None of it diverted the cluster: a new request executes everywhere
     * alive with the same state. */
    submit(c, 0, 4, false);
    run(c);
    for (uint32_t i = 1; i < 4; i++) {
        assert_int_equal(status(c, i).last_executed, status(c, 1).last_executed);
        assert_memory_equal(c->app[i], c->app[1], FB_DIGEST_LEN);
        assert_int_equal(status(c, i).rejected_by[PBFT_REJ_EQUIVOCATION], i == 1 ? 4 : 0);
    }
    assert_int_equal(c->replies[0][4], 3);
    pbft_msg_unref(req);
    pbft_msg_unref(other);
    cluster_free(c);
    free(c);
}

/* The tail of a quorum is unneeded: a first PREPARE after the slot prepared,
 * a first COMMIT after it committed.  Anything the step could act on is not:
 * a duplicate (the sender may be behind), a vote for a slot without its
 * quorum, the primary's PREPARE, a vote a retransmit interval after commit
 * (a replica catching up), any vote during a view change. */
static void test_unneeded_votes(void **state)
{
    (void)state;
    cluster *c = calloc(1, sizeof *c);
    cluster_init(c, 4, 4, 16);
    c->now = 1000;     /* helping has a rate limit from time 0 */
    c->mute[3] = true; /* replicas 0..2 form every quorum; 3's votes are lost */
    submit(c, 0, 1, false);
    run(c);
    c->mute[3] = false;
    for (uint32_t i = 0; i < 3; i++)
        assert_int_equal(status(c, i).last_executed, 1);
    uint8_t d[FB_DIGEST_LEN];
    memcpy(d, logged_pp(c, 1, 1)->u.pre_prepare->digest.data, FB_DIGEST_LEN);
    const int P = FEDBFT__MSG_TYPE__MSG_PREPARE, C = FEDBFT__MSG_TYPE__MSG_COMMIT;
    struct {
        uint32_t at;
        int type;
        uint64_t view, seq;
        uint32_t sender;
        bool unneeded;
    } cases[] = {
        {1, P, 0, 1, 3, true}, /* backup: replica 3's PREPARE after prepared */
        {1, C, 0, 1, 3, true}, /* ... its COMMIT after committed */
        {0, P, 0, 1, 3, true}, /* the primary too */
        {0, C, 0, 1, 3, true},
        {1, P, 0, 1, 2, false}, /* a duplicate: 2's PREPARE is held */
        {1, C, 0, 1, 2, false},
        {1, P, 0, 1, 0, false}, /* the primary's PREPARE: invalid, the step refuses it */
        {1, P, 0, 2, 3, false}, /* seq 2 has no PRE-PREPARE: the vote counts */
        {1, C, 0, 2, 3, false},
        {1, P, 1, 1, 3, false}, /* another view: the step refuses it */
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        pbft_msg *v = make_vote(c, cases[k].type, cases[k].view, cases[k].seq, d, cases[k].sender);
        pbft_msg *p = NULL;
        char err[128];
        assert_int_equal(pbft_parse(c->r[cases[k].at], v->raw, v->raw_len, &p, err, sizeof err), 0);
        if (pbft_vote_skip(c->r[cases[k].at], p) != cases[k].unneeded)
            fail_msg("case %zu: expected unneeded=%d", k, cases[k].unneeded);
        pbft_msg_unref(p);
        pbft_msg_unref(v);
    }
    /* 3 sends its skipped PREPARE again (it has not finished the slot): not
     * skipped this time, and its step answers 3 at once with what 3 missed. */
    pbft_msg *again = make_vote(c, P, 0, 1, d, 3), *p = NULL;
    char err[128];
    assert_int_equal(pbft_parse(c->r[1], again->raw, again->raw_len, &p, err, sizeof err), 0);
    assert_false(pbft_vote_skip(c->r[1], p));
    size_t queued = c->qlen;
    pbft_event ev = {.kind = PBFT_EV_MESSAGE, .now_ms = c->now, .msg = p};
    step(c, 1, &ev);
    uint32_t to3 = 0;
    for (size_t k = queued; k < c->qlen; k++)
        to3 += c->q[(c->qhead + k) % MAXQ].to == 3;
    assert_int_equal(to3, 2); /* replica 1's PREPARE and COMMIT */
    pbft_msg_unref(p);
    pbft_msg_unref(again);
    /* A retransmit interval after the commit, 3's first vote is a laggard's:
     * the step answers it with what 3 missed. */
    pbft_msg *tail = make_vote(c, C, 0, 1, d, 3);
    assert_true(pbft_vote_skip(c->r[2], tail)); /* replica 2 skips the tail now */
    pbft_msg_unref(tail);
    tick(c, c->cfg.retransmit_ms);
    pbft_msg *late = make_vote(c, P, 0, 1, d, 3);
    assert_false(pbft_vote_skip(c->r[2], late));
    pbft_msg_unref(late);
    cluster_free(c);
    free(c);
}

static void test_reject_names(void **state)
{
    (void)state;
    const char *want[PBFT_REJ_COUNT] = {
        "stale_view",          "not_primary",      "equivocation",       "watermark", "duplicate",
        "invalid_view_change", "invalid_new_view", "invalid_checkpoint", "invalid"};
    for (int k = 0; k < PBFT_REJ_COUNT; k++)
        assert_string_equal(pbft_reject_name((pbft_reject)k), want[k]);
    assert_string_equal(pbft_reject_name(PBFT_REJ_COUNT), "unknown");
}

/* Replica 3 loses its disk and comes back with pbft_abstain_after_wipe. */
static void wipe_and_restart(cluster *c, uint32_t i)
{
    pbft_free(c->r[i]);
    for (size_t k = 0; k < c->nrecs[i]; k++)
        pbft_msg_unref(c->recs[i][k].msg);
    c->nrecs[i] = 0;
    c->last_exec_disk[i] = 0;
    free(c->ct_disk[i]);
    c->ct_disk[i] = NULL;
    c->ct_len[i] = 0;
    memset(c->app[i], 0, FB_DIGEST_LEN);
    pbft_config cfg = c->cfg;
    cfg.id = i;
    cfg.signer = (pbft_signer){sign_cb, &c->keys[i]};
    char err[128];
    assert_int_equal(pbft_new(&cfg, &c->r[i], err, sizeof err), 0);
    pbft_abstain_after_wipe(c->r[i]);
    assert_int_equal(pbft_restore(c->r[i], NULL, 0, 0, NULL, 0), 0);
    c->min_vote[i] = UINT64_MAX;
    c->vcs_sent[i] = 0;
}

static bool logged_abstain(cluster *c, uint32_t i, uint64_t seq)
{
    for (size_t k = 0; k < c->nrecs[i]; k++)
        if (c->recs[i][k].kind == PBFT_REC_ABSTAIN && c->recs[i][k].seq == seq)
            return true;
    return false;
}

/* A wiped replica votes for nothing until it knows a stable checkpoint S,
 * then for nothing up to S + L (persisted, so a crash keeps it), and no
 * VIEW-CHANGE meanwhile; it executes all along and votes again past it. */
static void test_abstain_after_wipe(void **state)
{
    (void)state;
    cluster *c = calloc(1, sizeof *c);
    cluster_init(c, 4, 4, 8);
    write_each(c, 0, 1, 10);
    uint64_t ts = 11;
    assert_same_state(c, 10);
    wipe_and_restart(c, 3);
    assert_true(status(c, 3).abstain_pending);
    /* Idle cluster: the retransmitted checkpoints tell replica 3 where the
     * cluster stands; it fetches checkpoint 8. */
    for (int k = 0; k < 5 && status(c, 3).last_executed < 8; k++)
        tick(c, 300);
    pbft_status st = status(c, 3);
    assert_false(st.abstain_pending);
    assert_int_equal(st.stable_seq, 8);
    assert_int_equal(st.abstain_until, 8 + 8);
    assert_true(logged_abstain(c, 3, 16));
    assert_true(c->min_vote[3] > 16);
    /* A crash now keeps the bound (the record), and a view change meanwhile
     * gets no VIEW-CHANGE from it. */
    restart(c, 3);
    assert_int_equal(status(c, 3).abstain_until, 16);
    assert_false(status(c, 3).abstain_pending);
    for (uint32_t i = 0; i < 4; i++) {
        pbft_event ev = {.kind = PBFT_EV_VIEW_CHANGE, .now_ms = c->now};
        step(c, i, &ev);
    }
    run(c);
    for (uint32_t i = 0; i < 4; i++) {
        assert_int_equal(status(c, i).view, 1);
        assert_false(status(c, i).view_changing);
    }
    assert_int_equal(c->vcs_sent[3], 0);
    assert_true(c->min_vote[3] > 16);
    /* Load: replica 3 keeps up, without votes of its own: it commits on the
     * others' votes, or fetches the next checkpoint when it missed some (no
     * one answers a replica that does not re-send its votes). */
    for (; ts <= 22; ts++) {
        submit(c, 1, ts, false);
        run(c);
        assert_true(c->min_vote[3] > 16);
        assert_true(status(c, 3).last_executed + 4 >= status(c, 0).last_executed);
    }
    /* Past the bound (stable >= 16), it votes again. */
    for (; ts <= 40; ts++) {
        submit(c, 1, ts, false);
        run(c);
    }
    assert_same_state(c, status(c, 0).last_executed);
    assert_true(status(c, 3).stable_seq >= 16);
    assert_true(c->min_vote[3] > 16 && c->min_vote[3] < UINT64_MAX);
    cluster_free(c);
    free(c);
}

/* A backup whose stable checkpoint lags the primary's refuses the PRE-PREPARE
 * for its H + 1; it keeps it and steps it once its window moves, rather than
 * waiting for the primary's retransmission (here it is needed for the quorum:
 * replica 3 is down, or rather faulty: it floods). */
static void test_backup_window_reopens(void **state)
{
    (void)state;
    cluster *c = calloc(1, sizeof *c);
    cluster_init(c, 4, 4, 8); /* h = 0, H = 8 */
    c->cfg.batch_max_requests = 1;
    for (uint32_t i = 0; i < 4; i++)
        restart(c, i);
    c->down[3] = true;
    c->hold_ckpt[2] = true; /* replica 2's peers' CHECKPOINTs arrive late */
    write_each(c, 0, 1, 8);
    assert_int_equal(status(c, 0).stable_seq, 8);
    assert_int_equal(status(c, 2).stable_seq, 0);
    uint64_t wm = status(c, 2).rejected_by[PBFT_REJ_WATERMARK];
    /* A faulty replica 3 floods votes for just above replica 2's window: it
     * fills only its own share of what replica 2 keeps. */
    for (uint8_t k = 0; k < 40; k++) {
        uint8_t junk[FB_DIGEST_LEN] = {k, 0xee};
        inject(c, 2, make_vote(c, FEDBFT__MSG_TYPE__MSG_PREPARE, 0, 9 + k % 4, junk, 3));
    }
    submit(c, 0, 9, false); /* the primary proposes 9; replica 2 cannot take it yet */
    run(c);
    assert_true(status(c, 2).rejected_by[PBFT_REJ_WATERMARK] > wm);
    assert_int_equal(status(c, 0).last_executed, 8);
    release_ckpts(c); /* replica 2's window moves to (8, 16] */
    assert_int_equal(status(c, 2).stable_seq, 8);
    for (uint32_t i = 0; i < 3; i++)
        assert_int_equal(status(c, i).last_executed, 9); /* no timer needed */
    assert_int_equal(c->replies[0][9], 3);
    cluster_free(c);
    free(c);
}

/* A FETCH_FAILED when nothing newer is certified is remembered: the next
 * certified checkpoint replaces the unservable fetch at once, not after the
 * node's next failure report. */
static void test_fetch_failed_then_newer(void **state)
{
    (void)state;
    cluster *c = calloc(1, sizeof *c);
    uint64_t ts = behind_and_fetching(c);
    uint64_t first = status(c, 2).fetching_seq;
    assert_true(first >= 16);
    pbft_event ev = {.kind = PBFT_EV_FETCH_FAILED, .now_ms = c->now};
    ev.installed.seq = first;
    step(c, 2, &ev);
    run(c);
    assert_int_equal(status(c, 2).fetching_seq, first); /* nothing newer yet */
    write_each(c, 0, ts, 28);
    tick(c, 10);
    assert_true(status(c, 2).fetching_seq > first);
    cluster_free(c);
    free(c);
}

/* A wiped replica that sat out a view change (its stable checkpoint was below
 * S + L) votes as soon as its window reaches S + L: with the old primary down
 * its VIEW-CHANGE is the one the quorum lacks, and no timer would run. */
static void test_abstain_ends_mid_view_change(void **state)
{
    (void)state;
    cluster *c = calloc(1, sizeof *c);
    cluster_init(c, 4, 4, 8);
    write_each(c, 0, 1, 10);
    wipe_and_restart(c, 3);
    for (int k = 0; k < 5 && status(c, 3).last_executed < 8; k++)
        tick(c, 300);
    assert_int_equal(status(c, 3).stable_seq, 8);
    assert_int_equal(status(c, 3).abstain_until, 16);
    c->hold_ckpt[3] = true;
    write_each(c, 0, 11, 16);
    assert_int_equal(status(c, 0).last_executed, 16);
    assert_int_equal(status(c, 3).stable_seq, 8);
    c->down[0] = true;
    for (uint32_t i = 1; i < 4; i++) {
        pbft_event ev = {.kind = PBFT_EV_VIEW_CHANGE, .now_ms = c->now};
        step(c, i, &ev);
    }
    run(c);
    assert_int_equal(c->vcs_sent[3], 0); /* abstains */
    release_ckpts(c);                    /* stable 16 = S + L: it may vote */
    assert_int_equal(status(c, 3).stable_seq, 16);
    assert_int_equal(c->vcs_sent[3], 1);
    for (uint32_t i = 1; i < 4; i++) {
        assert_false(status(c, i).view_changing);
        assert_int_equal(status(c, i).view, 1);
    }
    cluster_free(c);
    free(c);
}

/* A replica restored with its execution behind its stable checkpoint fetches
 * the state in its first step, even with a clock that starts near 0. */
static void test_restore_behind_fetches_at_once(void **state)
{
    (void)state;
    cluster *c = calloc(1, sizeof *c);
    cluster_init(c, 4, 4, 8);
    write_each(c, 0, 1, 10);
    assert_int_equal(status(c, 2).stable_seq, 8);
    c->last_exec_disk[2] = 0; /* its executed state is older than its log */
    free(c->ct_disk[2]);
    c->ct_disk[2] = NULL;
    c->ct_len[2] = 0;
    memset(c->app[2], 0, FB_DIGEST_LEN);
    restart(c, 2);
    tick(c, 1);
    assert_true(status(c, 2).last_executed >= 8);
    cluster_free(c);
    free(c);
}

/* A CHECKPOINT that came above the window (kept as its sender's newest) counts
 * toward its certificate once the window covers it: here replica 3 needs
 * replica 0's CHECKPOINT for 16, which came while 3's window was (0, 8]
 * (replica 2's is lost). */
static void test_far_checkpoint_counts_later(void **state)
{
    (void)state;
    cluster *c = calloc(1, sizeof *c);
    cluster_init(c, 4, 4, 8);
    c->hold_ckpt[3] = true;
    write_each(c, 0, 1, 16);
    assert_int_equal(status(c, 3).stable_seq, 0);
    size_t first = c->nheld;
    for (size_t k = 0; k < c->nheld; k++) {
        pbft_msg *m = c->held[k].msg;
        if (m->u.checkpoint->seq == 16 && m->sender == 0)
            first = k;
    }
    assert_true(first < c->nheld);
    wire w16 = c->held[first];
    c->held[first] = c->held[--c->nheld];
    c->hold_ckpt[3] = false;
    enqueue(c, 3, w16.msg); /* beyond 3's H = 8: kept aside */
    pbft_msg_unref(w16.msg);
    run(c);
    for (size_t k = 0; k < c->nheld; k++) {
        pbft_msg *m = c->held[k].msg;
        if (!(m->u.checkpoint->seq == 16 && m->sender == 2))
            enqueue(c, 3, m);
        pbft_msg_unref(m);
    }
    c->nheld = 0;
    run(c);
    assert_int_equal(status(c, 3).last_executed, 16);
    assert_int_equal(status(c, 3).stable_seq, 16);
    cluster_free(c);
    free(c);
}

static void test_config_errors(void **state)
{
    (void)state;
    char err[160];
    pbft_replica *r = NULL;
    pbft_config cfg = {.n = 3, .signer = {sign_cb, NULL}};
    assert_int_equal(pbft_new(&cfg, &r, err, sizeof err), FB_EINVAL);
    assert_non_null(strstr(err, "at least 4"));
    cfg.n = 4;
    cfg.id = 4;
    assert_int_equal(pbft_new(&cfg, &r, err, sizeof err), FB_EINVAL);
    cfg.id = 0;
    cfg.checkpoint_interval = 4;
    cfg.log_window = 6;
    assert_int_equal(pbft_new(&cfg, &r, err, sizeof err), FB_EINVAL);
    assert_non_null(strstr(err, "multiple"));
    assert_null(r);
}

int main(void)
{
    if (fb_crypto_init() != 0)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_normal_case_and_digest_counts),
        cmocka_unit_test(test_checkpoints_bound_the_log),
        cmocka_unit_test(test_watermark_edges),
        cmocka_unit_test(test_window_reopens_on_stable_checkpoint),
        cmocka_unit_test(test_exactly_once_and_stale),
        cmocka_unit_test(test_silent_primary_is_replaced),
        cmocka_unit_test(test_restart_from_records),
        cmocka_unit_test(test_fetch_not_replaced),
        cmocka_unit_test(test_view_change_waits_for_live_view),
        cmocka_unit_test(test_restart_during_view_change),
        cmocka_unit_test(test_rejections_by_reason),
        cmocka_unit_test(test_reject_names),
        cmocka_unit_test(test_unneeded_votes),
        cmocka_unit_test(test_abstain_after_wipe),
        cmocka_unit_test(test_backup_window_reopens),
        cmocka_unit_test(test_fetch_failed_then_newer),
        cmocka_unit_test(test_abstain_ends_mid_view_change),
        cmocka_unit_test(test_restore_behind_fetches_at_once),
        cmocka_unit_test(test_far_checkpoint_counts_later),
        cmocka_unit_test(test_config_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
