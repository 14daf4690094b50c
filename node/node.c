/* node.c - the daemon: replica + transport + store + verification pipeline.
 * See node.h for the flow of messages and actions.
 *
 * Benchmark switches (node.json, config.h; defaults are the production path).
 * Each turns one mechanism off so a benchmark can measure what it buys:
 *  - "verify": "inline" turns off the batch verifier: no worker threads are
 *    started; at the end of each loop turn the loop thread checks the turn's
 *    signatures one by one (fb_sig_verify) and steps the messages exactly as
 *    the batch path's completion does (on_verified), in the same order.
 *  - "sig_cache": false turns off the verified-signature cache: every
 *    signature is checked, including a request's again when a PRE-PREPARE
 *    relays it and the ones nested in VIEW-CHANGE/NEW-VIEW proofs.
 *  - "digest_cache": false turns off digest reuse (pbft_config.no_digest_reuse):
 *    a request relayed in a PRE-PREPARE, a proof or a retransmission is
 *    digested again instead of being recognised by its bytes, and the
 *    replica's digest counters count each recomputation. */
#include "node.h"

#include "admin.h"
#include "batchver.h"
#include "envelope.h"
#include "fb_error.h"
#include "http.h"
#include "log.h"
#include "metrics.h"
#include "net.h"
#include "node_state.h"
#include "ops.h"
#include "sig.h"
#include "kv.h"
#include "serve.h"
#include "sigcache.h"
#include "store.h"

#include <signal.h>
#include <sodium.h>

#ifndef FEDBFT_VERSION
#define FEDBFT_VERSION "unknown"
#endif
#include <stdlib.h>
#include <string.h>

#define MAX_TURN_MSGS 4096  /* messages in one verification job; more start a new job */
#define MAX_TURN_SIGS 65536 /* signatures in one job */
/* Signatures one message may carry.  A NEW-VIEW carries a quorum of
 * VIEW-CHANGEs, each with up to L prepared certificates whose PRE-PREPAREs
 * hold whole batches of signed requests, and O again: thousands when a view
 * changes with a full log window.  Every signature takes at least 64 bytes
 * of a frame, so no frame within max_frame (<= 4 MiB) carries more. */
#define MAX_MSG_SIGS MAX_TURN_SIGS
#define FEW_SIGS 64    /* on the stack; more go to the heap */
#define NV_TELL_MS 500 /* a replica in an older view gets our NEW-VIEW at most this often */
/* Client tables of the newest checkpoints, kept to serve state transfer; the
 * store keeps the undo rows to rebuild the KV state at the same checkpoints
 * (serve_keep), so a replica fetching a checkpoint can finish while the
 * cluster moves on by up to a log window. */
#define CKPT_SNAPSHOTS 8
/* A snapshot a peer asked for within this long is pinned: neither it nor the
 * undo rows that rebuild its state are dropped while the cluster moves on,
 * so a transfer under load finishes instead of chasing newer checkpoints. */
#define SNAPSHOT_PIN_MS (2 * NODE_STATE_CHUNK_TIMEOUT_MS)
#define STATE_TICK_MS 250 /* node_state_tick: peer timeouts and pauses */
/* Store batches of our own in flight at once (the store's queue, shared with
 * state transfer, holds 256); beyond it a turn's work joins the open batch. */
#define MAX_STORE_INFLIGHT 32

/* ------------------------------------------------------------ types */

typedef enum in_kind { IN_CONSENSUS = 1, IN_CLIENT_REQUEST, IN_STATE } in_kind;

/* A message waiting for its signatures to be verified. */
typedef struct in_msg {
    in_kind kind;
    pbft_msg *msg;         /* IN_CONSENSUS, IN_CLIENT_REQUEST */
    Fedbft__Envelope *env; /* IN_STATE */
    uint32_t from;         /* replica id, or client connection */
    uint32_t sig0, nsigs;  /* its range in the job's items */
} in_msg;

/* One verification job: everything that arrived in one loop turn. */
typedef struct vjob {
    fb_node *node;
    struct vjob *next; /* verify="inline": jobs waiting for the end of the turn */
    in_msg *msgs;
    uint32_t nmsgs, msgs_cap;
    pbft_sigref *sigs;
    fb_verify_item *items;
    uint32_t nsigs, sigs_cap;
    uint64_t closed_us; /* when the turn closed it (fedbft_verify_job_seconds) */
} vjob;

/* Something to do once a store batch is durable. */
typedef enum out_kind { OUT_REPLICA = 1, OUT_ALL, OUT_CLIENT, OUT_FETCH } out_kind;

typedef struct out_item {
    out_kind kind;
    uint32_t to;    /* replica id or client id */
    pbft_msg *msg;  /* OUT_REPLICA / OUT_ALL */
    uint8_t *bytes; /* OUT_CLIENT: a sealed REPLY */
    size_t len;
    uint64_t seq; /* OUT_FETCH */
    uint8_t digest[FB_DIGEST_LEN];
} out_item;

/* A store batch and the actions that wait for it. */
typedef struct sbatch {
    fb_node *node;
    uint64_t submitted_us;
    store_batch *b;
    out_item *outs;
    size_t nouts, outs_cap;
    bool has_exec, exec_read;
    uint32_t *exec_clients; /* (client, timestamp) of the executed requests, for ops */
    uint64_t *exec_ts;
    size_t nexec;
    uint64_t exec_seq;
    pbft_msg *read_req; /* read-only request being executed */
    struct sbatch *next;
} sbatch;

typedef struct ckpt_snapshot {
    uint64_t seq;
    uint8_t app_digest[FB_DIGEST_LEN];
    uint8_t *client_table;
    size_t client_table_len;
    uint64_t served_ms; /* a peer last asked for it (pinned until SNAPSHOT_PIN_MS later) */
} ckpt_snapshot;

struct fb_node {
    uv_loop_t *loop;
    cfg_node cfg;
    cfg_cluster cluster;
    fb_identity id;
    pbft_replica *replica;
    net *net;
    store *store;
    fb_sigcache *sigcache;
    serve *serve;        /* inference API, batcher, cache */
    bool infer_lie;      /* fault injection: send wrong InferResults (tests) */
    uint32_t infer_jobs; /* INFERs running for clients */
    fb_batchver *bv;
    node_state *state; /* state transfer */
    admin *admin;
    uint64_t started_ms;
    ops *ops;
    uint64_t logged_view;
    bool logged_changing;
    fb_http *http;
    fb_metrics *metrics;
    struct {
        fb_metric *requests, *latency, *phase[OPS_NPHASES], *batch_size, *verify_batch, *verify_job,
            *store_commit, *digests[3], *sig_hits, *sig_misses, *sig_verified, *rejected[4],
            *dropped[3], *refused[PBFT_REJ_COUNT], *view_changes, *transfers[3], *chunks_in,
            *chunks_out, *votes_skipped;
        uint64_t last_digests[3], last_hits, last_misses, last_verified, last_rejected[4],
            last_dropped[3], last_refused[PBFT_REJ_COUNT], last_view_changes, last_transfers[3],
            last_chunks_in, last_chunks_out, last_votes_skipped;
    } m;
    pbft_msg **recent_pp; /* [log_window] newest PRE-PREPARE per seq, for ops */

    uv_async_t bv_async, store_async;
    uv_timer_t pbft_timer;
    uv_timer_t state_timer; /* node_state_tick */
    uv_check_t turn_end;
    bool stopping;
    int handles_open;
    void (*stop_cb)(void *);
    void *stop_arg;

    vjob *job;                       /* filling this turn */
    vjob *inline_head, *inline_tail; /* verify="inline": full jobs of this turn */
    uint8_t *inline_ok;              /* verify="inline": results of one job */
    uint32_t inline_ok_cap;
    uint64_t inline_verified; /* verify="inline": signatures checked */
    uint32_t bv_jobs;         /* jobs at the batch verifier, not yet delivered */

    sbatch *open; /* filling this turn (or these turns, while the store is behind) */
    sbatch *inflight_head, *inflight_tail;
    uint32_t ninflight; /* batches submitted, not completed */

    uint32_t *client_conn;  /* client index -> connection id + 1 (0 = none) */
    uint32_t *client_order; /* client indexes sorted by client id */
    ckpt_snapshot snaps[CKPT_SNAPSHOTS];

    uint64_t dropped_cheap, dropped_sig, dropped_parse;
    /* Dropped by the cheap checks for a reason the replica would also give
     * (counted with the replica's own under that reason). */
    uint64_t dropped_early[PBFT_REJ_COUNT];
    uint64_t votes_skipped; /* votes after their quorum: never verified (pbft_vote_skip) */
    uint64_t *nv_told_at;   /* [n] ms we last sent that replica our NEW-VIEW */
};

/* ------------------------------------------------------------ helpers */

static uint64_t now_ms(const fb_node *n)
{
    return uv_now(n->loop);
}

static const uint8_t *replica_pk(const fb_node *n, uint32_t id)
{
    return id < n->cluster.n ? n->cluster.replicas[id].pk : NULL;
}

/* Client ids sorted once at start-up: every request's signature check and
 * every reply look a client up, so the lookup must not grow with the number
 * of clients the federation admits. */
static int by_client_id(const void *a, const void *b, void *arg)
{
    const cfg_cluster *c = arg;
    uint32_t x = c->clients[*(const uint32_t *)a].id, y = c->clients[*(const uint32_t *)b].id;
    return x < y ? -1 : x > y;
}

static int build_client_order(fb_node *n)
{
    n->client_order = calloc(n->cluster.nclients ? n->cluster.nclients : 1, sizeof(uint32_t));
    if (!n->client_order)
        return FB_ENOMEM;
    for (uint32_t i = 0; i < n->cluster.nclients; i++)
        n->client_order[i] = i;
    qsort_r(n->client_order, n->cluster.nclients, sizeof(uint32_t), by_client_id, &n->cluster);
    return 0;
}

static int client_index(const fb_node *n, uint32_t client_id)
{
    size_t lo = 0, hi = n->cluster.nclients;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        uint32_t id = n->cluster.clients[n->client_order[mid]].id;
        if (id == client_id)
            return (int)n->client_order[mid];
        if (id < client_id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return -1;
}

static const uint8_t *client_pk(const fb_node *n, uint32_t client_id)
{
    int i = client_index(n, client_id);
    return i < 0 ? NULL : n->cluster.clients[i].pk;
}

static void sign_cb(void *arg, const uint8_t digest[FB_DIGEST_LEN], uint8_t sig[FB_SIG_LEN])
{
    fb_sig_sign(arg, digest, sig);
}

static void step(fb_node *n, const pbft_event *ev);
static void register_metrics(fb_node *n);

/* ------------------------------------------------------------ output pipeline */

static sbatch *open_batch(fb_node *n)
{
    if (!n->open) {
        sbatch *sb = calloc(1, sizeof *sb);
        if (!sb || !(sb->b = store_batch_new()))
            abort();
        sb->node = n;
        n->open = sb;
    }
    return n->open;
}

static void sbatch_free(sbatch *sb)
{
    for (size_t i = 0; i < sb->nouts; i++) {
        pbft_msg_unref(sb->outs[i].msg);
        free(sb->outs[i].bytes);
    }
    free(sb->outs);
    pbft_msg_unref(sb->read_req);
    free(sb->exec_clients);
    free(sb->exec_ts);
    if (sb->b)
        store_batch_free(sb->b);
    free(sb);
}

static void perform(fb_node *n, out_item *o)
{
    switch (o->kind) {
    case OUT_REPLICA:
        net_send_replica(n->net, o->to, o->msg->raw, o->msg->raw_len);
        break;
    case OUT_ALL:
        for (uint32_t i = 0; i < n->cluster.n; i++)
            if (i != n->cfg.id)
                net_send_replica(n->net, i, o->msg->raw, o->msg->raw_len);
        break;
    case OUT_CLIENT: {
        int ci = client_index(n, o->to);
        if (ci >= 0 && n->client_conn[ci])
            net_send_client(n->net, n->client_conn[ci] - 1, o->bytes, o->len);
        break;
    }
    case OUT_FETCH:
        node_state_fetch(n->state, o->seq, o->digest);
        break;
    }
}

/* Carry out now, or after the pending store work if any is pending (a send
 * may depend on a persist; keeping everything in order is the simple rule). */
static void emit(fb_node *n, out_item o)
{
    sbatch *sb = n->open ? n->open : n->inflight_tail;
    if (!sb) {
        perform(n, &o);
        pbft_msg_unref(o.msg);
        free(o.bytes);
        return;
    }
    if (sb->nouts == sb->outs_cap) {
        size_t cap = sb->outs_cap ? sb->outs_cap * 2 : 16;
        out_item *p = realloc(sb->outs, cap * sizeof *p);
        if (!p)
            abort();
        sb->outs = p;
        sb->outs_cap = cap;
    }
    sb->outs[sb->nouts++] = o;
}

/* The view and seq a logged message is about (for store GC). */
static uint64_t now_us(void)
{
    return uv_hrtime() / 1000u;
}

/* Mark a phase for every request a batch carries. */
static void mark_batch(fb_node *n, const pbft_msg *pp, ops_phase phase)
{
    uint64_t seq = pp->u.pre_prepare->seq, t = now_us();
    for (size_t i = 0; i < pp->nreqs; i++)
        ops_mark(n->ops, pp->reqs[i]->u.request->client, pp->reqs[i]->u.request->timestamp, phase,
                 seq, t);
}

/* What the persisted records tell about request phases. */
static void trace_persist(fb_node *n, const pbft_msg *m)
{
    uint32_t L = n->cfg.log_window;
    if (m->type == FEDBFT__MSG_TYPE__MSG_PRE_PREPARE) {
        pbft_msg **slot = &n->recent_pp[m->u.pre_prepare->seq % L];
        pbft_msg_unref(*slot);
        *slot = pbft_msg_ref((pbft_msg *)m);
        mark_batch(n, m, OPS_PRE_PREPARED);
    } else if (m->type == FEDBFT__MSG_TYPE__MSG_PREPARE) {
        /* the certificate is logged when the batch prepared */
        pbft_msg *pp = n->recent_pp[m->u.prepare->seq % L];
        if (pp && pp->u.pre_prepare->seq == m->u.prepare->seq)
            mark_batch(n, pp, OPS_PREPARED);
    }
}

/* How far below the stable checkpoint we can still serve state: a log
 * window (a replica fetching an older checkpoint has that long before the
 * cluster leaves it behind), as far as the snapshots reach. */
static uint64_t serve_keep(const fb_node *n)
{
    uint64_t keep = n->cfg.log_window,
             most = (uint64_t)(CKPT_SNAPSHOTS - 1) * n->cfg.checkpoint_interval;
    return keep < most ? keep : most;
}

static bool snapshot_pinned(const fb_node *n, const ckpt_snapshot *s)
{
    return s->seq && s->served_ms && now_ms(n) < s->served_ms + SNAPSHOT_PIN_MS;
}

/* Undo rows at or below this may go when seq becomes stable: those a log
 * window below it, and none a pinned snapshot needs. */
static uint64_t undo_keep_upto(const fb_node *n, uint64_t seq)
{
    uint64_t keep = serve_keep(n), upto = seq > keep ? seq - keep : 0;
    for (int i = 0; i < CKPT_SNAPSHOTS; i++)
        if (snapshot_pinned(n, &n->snaps[i]) && n->snaps[i].seq < upto)
            upto = n->snaps[i].seq;
    return upto;
}

static void do_persist(fb_node *n, const pbft_record *rec)
{
    sbatch *sb = open_batch(n);
    int rc = 0;
    if (rec->kind == PBFT_REC_MSG) {
        uint64_t view, seq;
        pbft_msg_view_seq(rec->msg, &view, &seq);
        rc = store_batch_record(sb->b, rec->kind, rec->msg->type, view, false, seq, rec->msg->raw,
                                rec->msg->raw_len);
        trace_persist(n, rec->msg);
    } else if (rec->kind == PBFT_REC_STABLE) {
        rc = store_batch_record(sb->b, rec->kind, 0, 0, false, rec->seq, NULL, 0);
        if (rc == 0)
            rc = store_batch_stable_keep(sb->b, rec->seq, undo_keep_upto(n, rec->seq));
    } else if (rec->kind == PBFT_REC_ABSTAIN) {
        rc = store_batch_record(sb->b, rec->kind, 0, 0, false, rec->seq, NULL, 0);
        LOG_INFO("resynced replica: votes for nothing up to seq %llu",
                 (unsigned long long)rec->seq);
    } else {
        rc = store_batch_record(sb->b, rec->kind, 0, rec->view, rec->view_changing, 0, NULL, 0);
    }
    if (rc)
        abort(); /* out of memory building a batch */
}

/* ---- INFER through consensus ---- */

#define MAX_INFER_JOBS 1024 /* INFERs running at once; more are refused */

typedef struct infer_job {
    fb_node *n;
    uint32_t client;
    uint64_t ts, seq;
} infer_job;

/* The batcher finished (or refused) an ordered INFER: seal an InferResult
 * for its client.  A lying replica (fault injection) changes the text and
 * the digest, which the client must outvote. */
static void on_infer_done(void *ud, const serve_infer_result *r)
{
    infer_job *j = ud;
    fb_node *n = j->n;
    n->infer_jobs--;
    if (n->stopping) {
        free(j);
        return;
    }
    Fedbft__InferResult ir = FEDBFT__INFER_RESULT__INIT;
    ir.client = j->client;
    ir.timestamp = j->ts;
    ir.replica = n->cfg.id;
    ir.seq = j->seq;
    uint8_t digest[16];
    memcpy(digest, r->output_digest, sizeof digest);
    char *text = malloc(r->text_len + 16);
    if (!text)
        abort();
    memcpy(text, r->text ? r->text : "", r->text_len);
    text[r->text_len] = '\0';
    if (n->infer_lie && !r->error) {
        snprintf(text + r->text_len, 16, " (forged)");
        digest[0] ^= 0xff;
    }
    ir.output_digest = (ProtobufCBinaryData){r->error ? 0 : sizeof digest, digest};
    ir.model_digest = (ProtobufCBinaryData){r->error ? 0 : 16, (uint8_t *)r->model_digest};
    ir.text = text;
    ir.n_tokens = r->error ? 0 : (size_t)r->n_tokens;
    ir.tokens = (int32_t *)r->tokens;
    ir.finish = (char *)(r->finish ? r->finish : "");
    ir.error = (char *)(r->error ? r->error : "");
    size_t plen = fedbft__infer_result__get_packed_size(&ir);
    uint8_t *payload = malloc(plen ? plen : 1);
    if (!payload)
        abort();
    fedbft__infer_result__pack(&ir, payload);
    free(text);
    out_item o = {.kind = OUT_CLIENT, .to = j->client};
    if (fb_env_seal(FEDBFT__MSG_TYPE__MSG_INFER_RESULT, n->cfg.id, payload, plen, &n->id, &o.bytes,
                    &o.len) != 0)
        abort();
    free(payload);
    emit(n, o);
    free(j);
}

/* An INFER committed at seq: run it through the batcher (execution goes on
 * without waiting).  Invalid parameters were answered STATUS_INVALID by
 * execution on every replica, so nothing runs for them. */
static void start_infer(fb_node *n, const Fedbft__Request *rq, uint64_t seq)
{
    const Fedbft__InferParams *p = rq->op->infer;
    if (kv_infer_invalid(p))
        return;
    infer_job *j = malloc(sizeof *j);
    if (!j)
        abort();
    *j = (infer_job){.n = n, .client = rq->client, .ts = rq->timestamp, .seq = seq};
    n->infer_jobs++;
    if (n->infer_jobs > MAX_INFER_JOBS) {
        serve_infer_result r = {.error = "this replica is running too many INFERs",
                                .finish = "error"};
        on_infer_done(j, &r);
        return;
    }
    serve_infer(n->serve, p->prompt ? p->prompt : "", (int)p->max_tokens, p->temperature,
                (int)p->top_k, p->top_p, p->seed, on_infer_done, j);
}

static void do_execute(fb_node *n, const pbft_action *a)
{
    /* A batch carries at most one execution; the replica issues the next only
     * after this one completes, so the open batch is free for it. */
    sbatch *sb = open_batch(n);
    if (a->execute.seq == 0) {
        pbft_msg *req = a->execute.reqs[0];
        if (store_batch_read(sb->b, req->raw, req->raw_len) != 0)
            abort();
        sb->exec_read = true;
        sb->read_req = pbft_msg_ref(req);
    } else {
        const uint8_t *reqs[a->execute.nreqs + 1];
        size_t lens[a->execute.nreqs + 1];
        for (size_t i = 0; i < a->execute.nreqs; i++) {
            reqs[i] = a->execute.reqs[i]->raw;
            lens[i] = a->execute.reqs[i]->raw_len;
        }
        if (store_batch_execute(sb->b, a->execute.seq, reqs, lens, a->execute.nreqs) != 0)
            abort();
        sb->exec_seq = a->execute.seq;
        fb_metric_observe(n->m.batch_size, (double)a->execute.nreqs);
        /* handed to execution: it committed */
        sb->exec_clients = calloc(a->execute.nreqs + 1, sizeof *sb->exec_clients);
        sb->exec_ts = calloc(a->execute.nreqs + 1, sizeof *sb->exec_ts);
        uint64_t t = now_us();
        for (size_t i = 0; i < a->execute.nreqs && sb->exec_clients && sb->exec_ts; i++) {
            const Fedbft__Request *rq = a->execute.reqs[i]->u.request;
            ops_mark(n->ops, rq->client, rq->timestamp, OPS_COMMITTED, a->execute.seq, t);
            sb->exec_clients[sb->nexec] = rq->client;
            sb->exec_ts[sb->nexec++] = rq->timestamp;
            if (rq->op && rq->op->kind == FEDBFT__OPERATION__KIND__OP_INFER)
                start_infer(n, rq, a->execute.seq);
        }
    }
    sb->has_exec = true;
}

/* Seal a REPLY for the client (the result bytes are a packed Result). */
static void do_reply(fb_node *n, const pbft_action *a)
{
    Fedbft__Result *res = fedbft__result__unpack(NULL, a->reply.result.len, a->reply.result.data);
    Fedbft__Reply rp = FEDBFT__REPLY__INIT;
    rp.view = a->reply.view;
    rp.timestamp = a->reply.timestamp;
    rp.client = a->reply.client;
    rp.replica = n->cfg.id;
    rp.result = res;
    rp.seq = a->reply.seq;
    size_t plen = fedbft__reply__get_packed_size(&rp);
    uint8_t *payload = malloc(plen ? plen : 1);
    if (!payload)
        abort();
    fedbft__reply__pack(&rp, payload);
    if (res)
        fedbft__result__free_unpacked(res, NULL);
    if (a->reply.seq != 0) { /* an ordered request finished here */
        double phases[OPS_NPHASES];
        double total = ops_finish(n->ops, a->reply.client, a->reply.timestamp, now_us(), phases);
        fb_metric_add(n->m.requests, 1);
        if (total > 0)
            fb_metric_observe(n->m.latency, total);
        for (int p = 1; p < OPS_NPHASES; p++)
            if (phases[p] > 0)
                fb_metric_observe(n->m.phase[p], phases[p]);
    }
    out_item o = {.kind = OUT_CLIENT, .to = a->reply.client};
    /* unsigned: the client's channel authenticates it (envelope.h) */
    if (fb_env_seal(FEDBFT__MSG_TYPE__MSG_REPLY, n->cfg.id, payload, plen, NULL, &o.bytes,
                    &o.len) != 0)
        abort();
    free(payload);
    emit(n, o);
}

static void set_timer(fb_node *n, uint64_t at);

static void carry_out(fb_node *n, const pbft_action *acts, size_t nacts)
{
    for (size_t i = 0; i < nacts; i++) {
        const pbft_action *a = &acts[i];
        switch (a->kind) {
        case PBFT_ACT_SEND:
            emit(n, (out_item){.kind = OUT_REPLICA, .to = a->to, .msg = pbft_msg_ref(a->msg)});
            break;
        case PBFT_ACT_BROADCAST:
            emit(n, (out_item){.kind = OUT_ALL, .msg = pbft_msg_ref(a->msg)});
            break;
        case PBFT_ACT_PERSIST:
            do_persist(n, &a->record);
            break;
        case PBFT_ACT_EXECUTE:
            do_execute(n, a);
            break;
        case PBFT_ACT_REPLY:
            do_reply(n, a);
            break;
        case PBFT_ACT_FETCH_STATE: {
            out_item o = {.kind = OUT_FETCH, .seq = a->fetch.seq};
            memcpy(o.digest, a->fetch.digest, FB_DIGEST_LEN);
            emit(n, o);
            break;
        }
        case PBFT_ACT_TIMER:
            set_timer(n, a->at_ms);
            break;
        }
    }
}

/* One log line when the replica's view state changes (never per request). */
static void log_view_transition(fb_node *n)
{
    pbft_progress st;
    pbft_get_progress(n->replica, &st);
    if (st.view == n->logged_view && st.view_changing == n->logged_changing)
        return;
    if (st.view_changing)
        LOG_WARN("view %llu: voting for a view change (executed %llu, stable %llu)",
                 (unsigned long long)st.view, (unsigned long long)st.last_executed,
                 (unsigned long long)st.stable_seq);
    else
        LOG_INFO("view %llu: active, primary %u (executed %llu, stable %llu)",
                 (unsigned long long)st.view, st.primary, (unsigned long long)st.last_executed,
                 (unsigned long long)st.stable_seq);
    n->logged_view = st.view;
    n->logged_changing = st.view_changing;
}

static void step(fb_node *n, const pbft_event *ev)
{
    size_t nacts = 0;
    const pbft_action *acts = pbft_step(n->replica, ev, &nacts);
    log_view_transition(n);
    carry_out(n, acts, nacts);
}

/* Keep the client table of a checkpoint, to serve state transfer. */
static void snapshot_checkpoint(fb_node *n, uint64_t seq, const uint8_t app_digest[FB_DIGEST_LEN])
{
    /* Replace the oldest one no peer is fetching (the oldest of all if
     * every one is). */
    ckpt_snapshot *s = NULL, *oldest = &n->snaps[0];
    for (int i = 0; i < CKPT_SNAPSHOTS; i++) {
        ckpt_snapshot *x = &n->snaps[i];
        if (x->seq < oldest->seq)
            oldest = x;
        if (!snapshot_pinned(n, x) && (!s || x->seq < s->seq))
            s = x;
    }
    if (!s)
        s = oldest;
    free(s->client_table);
    s->client_table = NULL;
    s->served_ms = 0;
    s->seq = seq;
    memcpy(s->app_digest, app_digest, FB_DIGEST_LEN);
    if (pbft_client_table_export(n->replica, &s->client_table, &s->client_table_len) != 0)
        s->seq = 0;
    char hex[17];
    sodium_bin2hex(hex, sizeof hex, app_digest, 8);
    LOG_INFO("checkpoint at seq %llu, state %s", (unsigned long long)seq, hex);
}

static void on_store_done(void *arg, const store_result *res)
{
    sbatch *sb = arg;
    fb_node *n = sb->node;
    if (n->inflight_head == sb) {
        n->inflight_head = sb->next;
        if (!n->inflight_head)
            n->inflight_tail = NULL;
    }
    n->ninflight--;
    if (res->status != 0) {
        /* The disk refused a write the protocol depends on: continuing could
         * let us contradict ourselves after a restart. */
        LOG_ERROR("store: a batch failed (%s); stopping to stay safe", fb_strerror(res->status));
        abort();
    }
    /* What waited for this batch goes first, then what the batch produced. */
    for (size_t i = 0; i < sb->nouts; i++)
        perform(n, &sb->outs[i]);
    fb_metric_observe(n->m.store_commit, (double)(now_us() - sb->submitted_us) / 1e6);
    for (size_t i = 0; i < sb->nexec; i++)
        ops_mark(n->ops, sb->exec_clients[i], sb->exec_ts[i], OPS_EXECUTED, sb->exec_seq, now_us());
    if (sb->has_exec && !n->stopping) {
        pbft_result results[res->nresults + 1];
        for (size_t i = 0; i < res->nresults; i++)
            results[i] = (pbft_result){res->results[i], res->result_lens[i]};
        pbft_event ev = {.kind = PBFT_EV_EXECUTED, .now_ms = now_ms(n)};
        ev.executed.seq = sb->exec_read ? 0 : sb->exec_seq;
        ev.executed.read_req = sb->read_req;
        ev.executed.results = results;
        ev.executed.nresults = res->nresults;
        memcpy(ev.executed.app_digest, res->app_digest, FB_DIGEST_LEN);
        step(n, &ev);
        if (!sb->exec_read && sb->exec_seq % n->cfg.checkpoint_interval == 0)
            snapshot_checkpoint(n, sb->exec_seq, res->app_digest);
    }
    sbatch_free(sb);
}

/* End of a loop turn: one store transaction for everything persisted.
 * While the store is behind (a long transaction, such as installing a large
 * fetched state, holds it up), the open batch stays open and takes the next
 * turns' work too, so the store's bounded queue never fills with one small
 * batch per turn; force is for shutting down. */
static void submit_open_batch(fb_node *n, bool force)
{
    sbatch *sb = n->open;
    if (!sb || (!force && n->ninflight >= MAX_STORE_INFLIGHT))
        return;
    n->open = NULL;
    n->ninflight++;
    store_batch *b = sb->b;
    sb->b = NULL;
    sb->submitted_us = now_us();
    if (n->inflight_tail)
        n->inflight_tail->next = sb;
    else
        n->inflight_head = sb;
    n->inflight_tail = sb;
    if (store_submit(n->store, b, on_store_done, sb) != 0) {
        LOG_ERROR("store: queue full; stopping to stay safe");
        abort();
    }
}

/* ------------------------------------------------------------ verification pipeline */

static vjob *job_new(fb_node *n)
{
    vjob *j = calloc(1, sizeof *j);
    if (!j)
        abort();
    j->node = n;
    return j;
}

static void job_free(vjob *j)
{
    for (uint32_t i = 0; i < j->nmsgs; i++) {
        pbft_msg_unref(j->msgs[i].msg);
        if (j->msgs[i].env)
            fedbft__envelope__free_unpacked(j->msgs[i].env, NULL);
    }
    free(j->msgs);
    free(j->sigs);
    free(j->items);
    free(j);
}

static void dispatch(fb_node *n, in_msg *m)
{
    pbft_event ev = {.now_ms = now_ms(n), .msg = m->msg};
    switch (m->kind) {
    case IN_CONSENSUS:
        ev.kind = PBFT_EV_MESSAGE;
        step(n, &ev);
        break;
    case IN_CLIENT_REQUEST: {
        ops_mark(n->ops, m->msg->u.request->client, m->msg->u.request->timestamp, OPS_RECEIVED, 0,
                 now_us());
        int ci = client_index(n, m->msg->sender);
        if (ci >= 0)
            n->client_conn[ci] = m->from + 1; /* replies go where the client is */
        ev.kind = PBFT_EV_REQUEST;
        step(n, &ev);
        break;
    }
    case IN_STATE:
        node_state_on_message(n->state, m->from, m->env);
        break;
    }
}

static void on_verified(void *arg, const uint8_t *ok, size_t nitems)
{
    vjob *j = arg;
    fb_node *n = j->node;
    (void)nitems;
    if (j->nsigs)
        fb_metric_observe(n->m.verify_job, (double)(now_us() - j->closed_us) / 1e6);
    for (uint32_t i = 0; i < j->nmsgs && !n->stopping; i++) {
        in_msg *m = &j->msgs[i];
        bool good = true;
        for (uint32_t k = 0; k < m->nsigs; k++)
            good &= ok[m->sig0 + k] != 0;
        if (good)
            dispatch(n, m);
        else
            n->dropped_sig++;
    }
    job_free(j);
}

/* A batch verifier job delivered (in submission order). */
static void on_bv_done(void *arg, const uint8_t *ok, size_t nitems)
{
    vjob *j = arg;
    j->node->bv_jobs--;
    on_verified(j, ok, nitems);
}

/* verify="inline": check a job's signatures on the loop thread, one by one,
 * with the batch verifier's cache rules (look every triple up first, remember
 * the ones that verified once the job is done), so that the two modes check
 * the same signatures and differ only in where the work runs. */
static void verify_inline(fb_node *n, vjob *j)
{
    if (j->nsigs > n->inline_ok_cap) {
        uint8_t *ok = realloc(n->inline_ok, j->nsigs);
        if (!ok)
            abort();
        n->inline_ok = ok;
        n->inline_ok_cap = j->nsigs;
    }
    uint8_t *ok = n->inline_ok;
    for (uint32_t i = 0; i < j->nsigs; i++) {
        const fb_verify_item *it = &j->items[i];
        ok[i] = n->sigcache && fb_sigcache_lookup(n->sigcache, it->pk, it->digest, it->sig);
    }
    for (uint32_t i = 0; i < j->nsigs; i++) {
        if (ok[i]) /* a cache hit */
            continue;
        const fb_verify_item *it = &j->items[i];
        ok[i] = fb_sig_verify(it->pk, it->digest, it->sig) == 0;
        n->inline_verified++;
        if (ok[i] && n->sigcache)
            fb_sigcache_insert(n->sigcache, it->pk, it->digest, it->sig);
    }
    on_verified(j, ok, j->nsigs); /* frees j */
}

/* verify="inline": the turn's jobs, in arrival order.  They run at the end
 * of the turn (like a batch completion, never inside a network callback). */
static void run_inline_jobs(fb_node *n)
{
    while (n->inline_head) {
        vjob *j = n->inline_head;
        n->inline_head = j->next;
        if (!n->inline_head)
            n->inline_tail = NULL;
        verify_inline(n, j);
    }
}

static void flush_job(fb_node *n)
{
    vjob *j = n->job;
    if (!j || j->nmsgs == 0)
        return;
    n->job = NULL;
    j->closed_us = now_us();
    for (uint32_t i = 0; i < j->nsigs; i++) {
        j->items[i].digest = j->sigs[i].digest;
        j->items[i].sig = j->sigs[i].sig;
    }
    if (!n->bv) { /* verify="inline" */
        if (n->inline_tail)
            n->inline_tail->next = j;
        else
            n->inline_head = j;
        n->inline_tail = j;
        return;
    }
    if (j->nsigs == 0 && n->bv_jobs == 0) {
        /* Only COMMITs (the link proved their senders), and nothing verified
         * earlier waits to be stepped before them: step them now. */
        on_verified(j, NULL, 0);
        return;
    }
    fb_metric_observe(n->m.verify_batch, (double)j->nsigs);
    if (fb_batchver_submit(n->bv, j->items, j->nsigs, on_bv_done, j) != 0) {
        /* Verifier saturated: shed this turn's input; peers retransmit. */
        n->dropped_sig += j->nmsgs;
        job_free(j);
        return;
    }
    n->bv_jobs++;
}

static bool job_reserve(vjob *j, uint32_t nsigs)
{
    if (j->nmsgs == j->msgs_cap) {
        uint32_t cap = j->msgs_cap ? j->msgs_cap * 2 : 64;
        in_msg *p = realloc(j->msgs, cap * sizeof *p);
        if (!p)
            return false;
        j->msgs = p;
        j->msgs_cap = cap;
    }
    while (j->nsigs + nsigs > j->sigs_cap) {
        uint32_t cap = j->sigs_cap ? j->sigs_cap * 2 : 256;
        pbft_sigref *s = realloc(j->sigs, cap * sizeof *s);
        if (s)
            j->sigs = s;
        fb_verify_item *it = realloc(j->items, cap * sizeof *it);
        if (it)
            j->items = it;
        if (!s || !it)
            return false;
        j->sigs_cap = cap;
    }
    return true;
}

/* Queue m for verification.  Every signature must name a known identity. */
static void enqueue_verify(fb_node *n, in_kind kind, pbft_msg *msg, Fedbft__Envelope *env,
                           uint32_t from, const pbft_sigref *sigs, int nsigs)
{
    if (n->job &&
        (n->job->nmsgs >= MAX_TURN_MSGS || n->job->nsigs + (uint32_t)nsigs > MAX_TURN_SIGS))
        flush_job(n);
    if (!n->job)
        n->job = job_new(n);
    vjob *j = n->job;
    if (!job_reserve(j, (uint32_t)nsigs)) {
        pbft_msg_unref(msg);
        if (env)
            fedbft__envelope__free_unpacked(env, NULL);
        return;
    }
    in_msg *m = &j->msgs[j->nmsgs++];
    *m = (in_msg){.kind = kind,
                  .msg = msg,
                  .env = env,
                  .from = from,
                  .sig0 = j->nsigs,
                  .nsigs = (uint32_t)nsigs};
    for (int i = 0; i < nsigs; i++) {
        j->sigs[j->nsigs] = sigs[i];
        j->items[j->nsigs].pk =
            sigs[i].is_client ? client_pk(n, sigs[i].signer) : replica_pk(n, sigs[i].signer);
        j->nsigs++;
    }
}

/* Replica `to` speaks in an older view: it missed the NEW-VIEW (it was down,
 * or cut off, when the view changed) and, once the cluster is idle, nothing
 * else would tell it.  The primary of the current view sends it the NEW-VIEW,
 * at most once per retransmit interval per replica.  The link authenticated
 * `to`; the NEW-VIEW proves itself. */
static void tell_current_view(fb_node *n, uint32_t to)
{
    pbft_msg *nv = pbft_current_new_view(n->replica);
    uint64_t now = now_ms(n);
    if (!nv || to >= n->cluster.n || now < n->nv_told_at[to] + NV_TELL_MS)
        return;
    n->nv_told_at[to] = now;
    net_send_replica(n->net, to, nv->raw, nv->raw_len);
}

/* Cheap checks before any signature is looked at: junk costs almost nothing.
 * PBFT_REJ_COUNT if the message is worth verifying, else the reason the
 * replica would give (the link authenticated the sender already). */
static pbft_reject cheap_verdict(fb_node *n, const pbft_msg *m)
{
    pbft_progress st;
    pbft_get_progress(n->replica, &st);
    uint64_t view = 0, seq = 0;
    pbft_msg_view_seq(m, &view, &seq);
    switch (m->type) {
    case FEDBFT__MSG_TYPE__MSG_PRE_PREPARE:
    case FEDBFT__MSG_TYPE__MSG_PREPARE:
    case FEDBFT__MSG_TYPE__MSG_COMMIT:
        if (view < st.view)
            return PBFT_REJ_STALE_VIEW;
        return seq > st.stable_seq ? PBFT_REJ_COUNT : PBFT_REJ_WATERMARK;
    case FEDBFT__MSG_TYPE__MSG_CHECKPOINT: {
        if (seq > st.stable_seq)
            return PBFT_REJ_COUNT;
        /* Peers re-send the CHECKPOINT of their stable checkpoint: ours too. */
        uint64_t h;
        uint8_t d[FB_DIGEST_LEN];
        pbft_msg *const *proof;
        size_t nproof;
        pbft_stable_checkpoint(n->replica, &h, d, &proof, &nproof);
        bool known = seq == h && m->u.checkpoint->state_digest.len == FB_DIGEST_LEN &&
                     memcmp(m->u.checkpoint->state_digest.data, d, FB_DIGEST_LEN) == 0;
        return known ? PBFT_REJ_DUPLICATE : PBFT_REJ_WATERMARK;
    }
    case FEDBFT__MSG_TYPE__MSG_VIEW_CHANGE:
    case FEDBFT__MSG_TYPE__MSG_NEW_VIEW:
        return view >= st.view ? PBFT_REJ_COUNT : PBFT_REJ_STALE_VIEW;
    default:
        return PBFT_REJ_COUNT;
    }
}

static void collect(fb_node *n, in_kind kind, pbft_msg *m, uint32_t from)
{
    pbft_sigref few[FEW_SIGS], *sigs = few;
    int k = pbft_msg_signatures(m, sigs, FEW_SIGS);
    if (k > FEW_SIGS && k <= MAX_MSG_SIGS && (sigs = malloc((size_t)k * sizeof *sigs)) != NULL)
        k = pbft_msg_signatures(m, sigs, (size_t)k);
    /* k == 0: a COMMIT, whose sender the link proved (on_replica_frame);
     * it still joins the turn's job so that messages step in arrival order. */
    if (k < 0 || k > MAX_MSG_SIGS || !sigs) {
        n->dropped_parse++;
        if (sigs != few)
            free(sigs);
        pbft_msg_unref(m);
        return;
    }
    for (int i = 0; i < k; i++) {
        const uint8_t *pk =
            sigs[i].is_client ? client_pk(n, sigs[i].signer) : replica_pk(n, sigs[i].signer);
        if (!pk) {
            n->dropped_cheap++; /* signed by nobody we know */
            pbft_msg_unref(m);
            k = -1;
            break;
        }
    }
    if (k >= 0)
        enqueue_verify(n, kind, m, NULL, from, sigs, k);
    if (sigs != few)
        free(sigs);
}

static void on_replica_frame(void *arg, uint32_t id, const uint8_t *frame, size_t len)
{
    fb_node *n = arg;
    if (n->stopping)
        return;
    Fedbft__Envelope *env = NULL;
    char err[160];
    if (fb_env_unpack(frame, len, &env, err, sizeof err) != 0) {
        n->dropped_parse++;
        LOG_DEBUG("replica %u: %s", id, err);
        return;
    }
    int type = env->type;
    if (type == FEDBFT__MSG_TYPE__MSG_STATE_REQUEST ||
        type == FEDBFT__MSG_TYPE__MSG_STATE_RESPONSE) {
        if (env->sender != id) {
            n->dropped_cheap++;
            fedbft__envelope__free_unpacked(env, NULL);
            return;
        }
        pbft_sigref s = {.is_client = 0, .signer = id};
        fb_env_digest(env->type, env->version, env->sender, env->payload.data, env->payload.len,
                      s.digest);
        memcpy(s.sig, env->signature.data, FB_SIG_LEN);
        enqueue_verify(n, IN_STATE, NULL, env, id, &s, 1);
        return;
    }
    fedbft__envelope__free_unpacked(env, NULL);
    pbft_msg *m = NULL;
    if (pbft_parse(n->replica, frame, len, &m, err, sizeof err) != 0) {
        n->dropped_parse++;
        LOG_DEBUG("replica %u: %s", id, err);
        return;
    }
    /* A replica signs what it sends itself; a request it forwards is its client's. */
    bool sender_ok = m->type == FEDBFT__MSG_TYPE__MSG_REQUEST ? client_pk(n, m->sender) != NULL
                                                              : m->sender == id;
    pbft_reject why = sender_ok ? cheap_verdict(n, m) : PBFT_REJ_COUNT;
    if (!sender_ok || why != PBFT_REJ_COUNT) {
        if (sender_ok)
            n->dropped_early[why]++;
        else
            n->dropped_cheap++;
        if (why == PBFT_REJ_STALE_VIEW)
            tell_current_view(n, id);
        pbft_msg_unref(m);
        return;
    }
    if (pbft_vote_skip(n->replica, m)) {
        /* The tail of a quorum: its step would change nothing, so its
         * signature is never checked. */
        n->votes_skipped++;
        pbft_msg_unref(m);
        return;
    }
    collect(n, IN_CONSENSUS, m, id);
}

static void on_client_frame(void *arg, uint32_t conn, const uint8_t pk[FB_PK_LEN],
                            const uint8_t *frame, size_t len)
{
    fb_node *n = arg;
    if (n->stopping)
        return;
    pbft_msg *m = NULL;
    char err[160];
    if (pbft_parse(n->replica, frame, len, &m, err, sizeof err) != 0) {
        n->dropped_parse++;
        LOG_DEBUG("client conn %u: %s", conn, err);
        return;
    }
    /* A client may only submit requests, signed as itself. */
    const uint8_t *want = m->type == FEDBFT__MSG_TYPE__MSG_REQUEST ? client_pk(n, m->sender) : NULL;
    if (!want || memcmp(want, pk, FB_PK_LEN) != 0) {
        n->dropped_cheap++;
        pbft_msg_unref(m);
        return;
    }
    collect(n, IN_CLIENT_REQUEST, m, conn);
}

/* Replies go to the newest authenticated link of each client. */
static void on_client_up(void *arg, uint32_t conn, const uint8_t pk[FB_PK_LEN])
{
    fb_node *n = arg;
    for (uint32_t i = 0; i < n->cluster.nclients; i++)
        if (memcmp(n->cluster.clients[i].pk, pk, FB_PK_LEN) == 0)
            n->client_conn[i] = conn + 1;
}

static void on_client_down(void *arg, uint32_t conn)
{
    fb_node *n = arg;
    for (uint32_t i = 0; i < n->cluster.nclients; i++)
        if (n->client_conn[i] == conn + 1)
            n->client_conn[i] = 0;
}

/* ------------------------------------------------------------ loop plumbing */

static void on_turn_end(uv_check_t *h)
{
    fb_node *n = h->data;
    flush_job(n);
    run_inline_jobs(n);
    submit_open_batch(n, false);
}

static void on_bv_async(uv_async_t *h)
{
    fb_node *n = h->data;
    if (n->bv)
        fb_batchver_poll(n->bv);
}

static void on_store_async(uv_async_t *h)
{
    fb_node *n = h->data;
    store_poll(n->store);
}

static void bv_wake(void *arg)
{
    uv_async_send(arg);
}

static void store_wake(void *arg)
{
    uv_async_send(arg);
}

static void on_pbft_timer(uv_timer_t *t)
{
    fb_node *n = t->data;
    if (n->stopping)
        return;
    pbft_event ev = {.kind = PBFT_EV_TICK, .now_ms = now_ms(n)};
    step(n, &ev);
}

static void set_timer(fb_node *n, uint64_t at)
{
    uint64_t now = now_ms(n);
    uv_timer_start(&n->pbft_timer, on_pbft_timer, at > now ? at - now : 0, 0);
}

/* ------------------------------------------------------------ state transfer glue */

static int send_state_msg(void *arg, uint32_t to, int type, const ProtobufCMessage *payload)
{
    fb_node *n = arg;
    size_t plen = protobuf_c_message_get_packed_size(payload);
    uint8_t *p = malloc(plen ? plen : 1), *wire = NULL;
    size_t wlen = 0;
    if (!p)
        return FB_ENOMEM;
    protobuf_c_message_pack(payload, p);
    int rc = fb_env_seal(type, n->cfg.id, p, plen, &n->id, &wire, &wlen);
    free(p);
    if (rc == 0)
        rc = net_send_replica(n->net, to, wire, wlen);
    free(wire);
    return rc;
}

static int submit_state_batch(void *arg, store_batch *b, store_done_fn done, void *done_arg)
{
    fb_node *n = arg;
    return store_submit(n->store, b, done, done_arg);
}

static ckpt_snapshot *find_snapshot(fb_node *n, uint64_t seq)
{
    for (int i = 0; i < CKPT_SNAPSHOTS; i++)
        if (n->snaps[i].seq == seq && seq != 0)
            return &n->snaps[i];
    return NULL;
}

/* A peer asks for checkpoint seq's state: it stays pinned while asked for. */
static bool snapshot_for(void *arg, uint64_t seq, const uint8_t **app_digest,
                         const uint8_t **client_table, size_t *len)
{
    fb_node *n = arg;
    ckpt_snapshot *s = find_snapshot(n, seq);
    if (!s)
        return false;
    s->served_ms = now_ms(n);
    *app_digest = s->app_digest;
    *client_table = s->client_table;
    *len = s->client_table_len;
    return true;
}

static void state_installed(void *arg, uint64_t seq, const uint8_t app_digest[FB_DIGEST_LEN],
                            const uint8_t *client_table, size_t len)
{
    fb_node *n = arg;
    pbft_event ev = {.kind = PBFT_EV_STATE_INSTALLED, .now_ms = now_ms(n)};
    ev.installed.seq = seq;
    memcpy(ev.installed.app_digest, app_digest, FB_DIGEST_LEN);
    ev.installed.client_table = client_table;
    ev.installed.client_table_len = len;
    step(n, &ev);
    snapshot_checkpoint(n, seq, app_digest);
}

static void state_unservable(void *arg, uint64_t seq)
{
    fb_node *n = arg;
    pbft_event ev = {.kind = PBFT_EV_FETCH_FAILED, .now_ms = now_ms(n)};
    ev.installed.seq = seq;
    step(n, &ev);
}

static uint64_t state_clock(void *arg)
{
    return now_ms(arg);
}

static bool state_peer_up(void *arg, uint32_t peer)
{
    net_link_stats ls;
    net_replica_stats(((fb_node *)arg)->net, peer, &ls);
    return ls.connected;
}

static void on_state_timer(uv_timer_t *t)
{
    fb_node *n = t->data;
    if (!n->stopping)
        node_state_tick(n->state);
}

/* ------------------------------------------------------------ lifecycle */

static int restore_replica(fb_node *n, char *err, size_t errlen)
{
    store_loaded ld;
    int rc = store_load(n->store, &ld, err, errlen);
    if (rc)
        return rc;
    pbft_record *recs = calloc(ld.nrecords ? ld.nrecords : 1, sizeof *recs);
    if (!recs) {
        store_loaded_free(&ld);
        return FB_ENOMEM;
    }
    size_t k = 0;
    for (size_t i = 0; i < ld.nrecords && rc == 0; i++) {
        const store_record *sr = &ld.records[i];
        pbft_record *r = &recs[k];
        r->kind = (pbft_record_kind)sr->kind;
        r->view = sr->view;
        r->view_changing = sr->changing;
        r->seq = sr->seq;
        if (sr->kind == PBFT_REC_MSG) {
            char why[160];
            rc = pbft_msg_parse(sr->raw, sr->raw_len, NULL, NULL, &r->msg, why, sizeof why);
            if (rc)
                rc = fb_errf(err, errlen, FB_ECORRUPT,
                             "store: record %zu does not parse (%s); the data directory is "
                             "damaged: run 'fedbft run --resync' to rebuild it from peers",
                             i, why);
        }
        k++;
    }
    if (rc == 0 && ld.resynced) {
        /* fedbft run --resync: we forgot what we voted for. */
        pbft_abstain_after_wipe(n->replica);
        LOG_WARN("resynced replica: it votes for nothing until it knows a stable checkpoint, "
                 "then for nothing up to a log window past it (it may have voted there before "
                 "the wipe)");
    }
    if (rc == 0)
        rc = pbft_restore(n->replica, recs, k, ld.last_executed, ld.client_table,
                          ld.client_table_len);
    if (rc == 0)
        LOG_INFO("restored: %zu records, last executed %llu, %llu keys", k,
                 (unsigned long long)ld.last_executed, (unsigned long long)ld.kv_keys);
    else if (err && !err[0])
        fb_errf(err, errlen, rc, "store: cannot restore the replica (%s)", fb_strerror(rc));
    /* Stopped right at a checkpoint: we can serve it at once (otherwise
     * only from our next checkpoint on; snapshots live in memory). */
    if (rc == 0 && ld.last_executed && ld.last_executed % n->cfg.checkpoint_interval == 0)
        snapshot_checkpoint(n, ld.last_executed, ld.app_digest);
    for (size_t i = 0; i < k; i++)
        pbft_msg_unref(recs[i].msg);
    free(recs);
    store_loaded_free(&ld);
    return rc;
}

int fb_node_new(uv_loop_t *loop, const cfg_node *cfg, fb_node **out, char *err, size_t errlen)
{
    fb_node *n = calloc(1, sizeof *n);
    if (!n)
        return FB_ENOMEM;
    n->loop = loop;
    n->cfg = *cfg;
    if (err && errlen)
        err[0] = '\0';
    int rc = cfg_cluster_load(cfg->cluster_path, &n->cluster, err, errlen);
    if (rc == 0)
        rc = fb_key_load(cfg->key_path, &n->id, err, errlen);
    if (rc == 0)
        rc = cfg_check_node_in_cluster(cfg, &n->cluster, n->id.pk, err, errlen);
    if (rc) {
        cfg_cluster_free(&n->cluster);
        free(n);
        return rc;
    }
    n->client_conn = calloc(n->cluster.nclients ? n->cluster.nclients : 1, sizeof *n->client_conn);
    n->nv_told_at = calloc(n->cluster.n, sizeof *n->nv_told_at);
    pbft_config pc = {
        .n = n->cluster.n,
        .id = cfg->id,
        .checkpoint_interval = cfg->checkpoint_interval,
        .log_window = cfg->log_window,
        .batch_max_requests = cfg->batch_max_requests,
        .batch_max_bytes = cfg->batch_max_bytes,
        .batch_max_delay_ms = cfg->batch_max_delay_ms,
        .max_clients = n->cluster.nclients + 16,
        .request_timeout_ms = cfg->request_timeout_ms,
        .view_change_timeout_ms = cfg->view_change_timeout_ms,
        .signer = {sign_cb, &n->id},
        .no_digest_reuse = !cfg->digest_cache,
    };
    if (!n->client_conn || !n->nv_told_at)
        rc = FB_ENOMEM;
    if (rc == 0)
        rc = build_client_order(n);
    if (rc == 0)
        rc = pbft_new(&pc, &n->replica, err, errlen);
    if (rc == 0)
        rc = store_open(cfg->data_dir, cfg->durability, store_wake, &n->store_async, &n->store, err,
                        errlen);
    if (rc == 0)
        rc = restore_replica(n, err, errlen);
    if (rc == 0 && cfg->sig_cache)
        rc = fb_sigcache_new(FB_SIGCACHE_DEFAULT_CAPACITY, &n->sigcache);
    if (rc == 0)
        rc = ops_new(&n->ops);
    if (rc == 0 && (rc = fb_metrics_new(&n->metrics)) == 0)
        register_metrics(n);
    if (rc == 0 && !(n->recent_pp = calloc(cfg->log_window, sizeof *n->recent_pp)))
        rc = FB_ENOMEM;
    fb_batchver_config bc = {.threads = cfg->worker_threads,
                             .cache = n->sigcache,
                             .wake = bv_wake,
                             .wake_arg = &n->bv_async};
    if (rc == 0 && cfg->verify == CFG_VERIFY_BATCH)
        rc = fb_batchver_new(&bc, &n->bv);
    net_config nc = {.mode = NET_MODE_REPLICA,
                     .loop = loop,
                     .self = &n->id,
                     .self_id = cfg->id,
                     .cluster = &n->cluster,
                     .listen_host = cfg->listen,
                     .max_frame = cfg->max_frame,
                     .send_queue_bytes = cfg->send_queue_bytes};
    net_callbacks cb = {.on_replica_frame = on_replica_frame,
                        .on_client_frame = on_client_frame,
                        .on_client_up = on_client_up,
                        .on_client_down = on_client_down,
                        .arg = n};
    if (rc == 0)
        rc = net_new(&nc, &cb, &n->net, err, errlen);
    node_state_io sio = {.send = send_state_msg,
                         .submit = submit_state_batch,
                         .snapshot = snapshot_for,
                         .installed = state_installed,
                         .unservable = state_unservable,
                         .now_ms = state_clock,
                         .peer_up = state_peer_up,
                         .arg = n};
    node_state_config scfg = {.self = cfg->id, .n = n->cluster.n};
    if (rc == 0)
        rc = node_state_new(&scfg, &sio, &n->state);
    if (rc) {
        if (err && !err[0])
            fb_errf(err, errlen, rc, "cannot start the node: %s", fb_strerror(rc));
        fb_node_free(n);
        return rc;
    }
    uv_async_init(loop, &n->bv_async, on_bv_async);
    uv_async_init(loop, &n->store_async, on_store_async);
    uv_timer_init(loop, &n->pbft_timer);
    uv_timer_init(loop, &n->state_timer);
    uv_check_init(loop, &n->turn_end);
    n->bv_async.data = n->store_async.data = n->pbft_timer.data = n->state_timer.data =
        n->turn_end.data = n;
    n->handles_open = 5;
    *out = n;
    return 0;
}

/* ------------------------------------------------------------ admin commands */

static json_t *admin_status(void *arg, json_t *request, const char **err)
{
    (void)request;
    (void)err;
    fb_node *n = arg;
    pbft_status st;
    pbft_get_status(n->replica, &st);
    json_t *o = json_pack(
        "{s:i, s:i, s:i, s:I, s:b, s:i, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:s}", "id",
        (int)st.id, "n", (int)st.n, "f", (int)st.f, "view", (json_int_t)st.view, "view_changing",
        st.view_changing, "primary", (int)st.primary, "last_executed", (json_int_t)st.last_executed,
        "last_committed", (json_int_t)st.last_committed, "stable_checkpoint",
        (json_int_t)st.stable_seq, "low_watermark", (json_int_t)st.stable_seq, "high_watermark",
        (json_int_t)st.high_watermark, "pending_requests", (json_int_t)st.pending_requests,
        "fetching_state_seq", (json_int_t)st.fetching_seq, "uptime_s",
        (json_int_t)((now_ms(n) - n->started_ms) / 1000), "version", FEDBFT_VERSION);
    /* After --resync: -1 while the bound is not known yet, 0 when not abstaining. */
    json_int_t abstain = st.abstain_pending ? -1 : (json_int_t)st.abstain_until;
    if (o)
        json_object_set_new(o, "abstain_until_seq", json_integer(abstain));
    return o;
}

static json_t *admin_peers(void *arg, json_t *request, const char **err)
{
    (void)request;
    (void)err;
    fb_node *n = arg;
    json_t *peers = json_array();
    uint64_t now = now_ms(n);
    for (uint32_t i = 0; i < n->cluster.n; i++) {
        if (i == n->cfg.id)
            continue;
        net_link_stats ls;
        net_replica_stats(n->net, i, &ls);
        json_t *age = ls.last_rx_ms ? json_integer((json_int_t)(now - ls.last_rx_ms)) : json_null();
        json_t *rtt = ls.rtt_us ? json_real((double)ls.rtt_us / 1000.0) : json_null();
        json_array_append_new(
            peers,
            json_pack("{s:i, s:s, s:I, s:b, s:s, s:o, s:o, s:I, s:I, s:I, s:I, s:I, s:I, "
                      "s:I}",
                      "id", (int)i, "host", n->cluster.replicas[i].host, "port",
                      (json_int_t)n->cluster.replicas[i].port, "connected", ls.connected,
                      "handshake", ls.connected ? "established" : "connecting",
                      "last_message_age_ms", age, "rtt_ms", rtt, "frames_in",
                      (json_int_t)ls.frames_in, "frames_out", (json_int_t)ls.frames_out, "bytes_in",
                      (json_int_t)ls.bytes_in, "bytes_out", (json_int_t)ls.bytes_out,
                      "frames_rejected", (json_int_t)ls.rejected, "frames_dropped",
                      (json_int_t)ls.dropped, "queued_bytes", (json_int_t)ls.queued_bytes));
    }
    net_stats ns;
    net_get_stats(n->net, &ns);
    return json_pack("{s:o, s:{s:I, s:I, s:I, s:I, s:I, s:I, s:I}}", "peers", peers, "transport",
                     "handshakes_ok", (json_int_t)ns.handshakes_ok, "handshakes_failed",
                     (json_int_t)ns.handshakes_failed, "unknown_keys", (json_int_t)ns.unknown_keys,
                     "garbage", (json_int_t)ns.garbage, "oversized", (json_int_t)ns.oversized,
                     "client_conns", (json_int_t)ns.client_conns, "client_conns_rejected",
                     (json_int_t)ns.client_conns_rejected);
}

static const char *verify_mode_name(cfg_verify v)
{
    return v == CFG_VERIFY_INLINE ? "inline" : "batch";
}

static json_t *admin_config(void *arg, json_t *request, const char **err)
{
    (void)request;
    (void)err;
    fb_node *n = arg;
    const cfg_node *c = &n->cfg;
    char pk[FB_PK_HEX_LEN + 1];
    fb_pubkey_format(n->id.pk, pk);
    /* The key file's path and public key only: the secret never leaves. */
    return json_pack(
        "{s:i, s:s, s:s, s:s, s:s, s:s, s:s, s:i, s:i, s:I, s:i, s:i, s:I, s:I, "
        "s:i, s:s, s:i, s:I, s:s, s:s, s:i, s:i, s:s, s:b, s:b}",
        "id", (int)c->id, "config_file", c->path, "cluster_file", c->cluster_path, "key_file",
        c->key_path, "public_key", pk, "data_dir", c->data_dir, "listen", c->listen,
        "batch_max_requests", (int)c->batch_max_requests, "batch_max_bytes",
        (int)c->batch_max_bytes, "batch_max_delay_ms", (json_int_t)c->batch_max_delay_ms,
        "checkpoint_interval", (int)c->checkpoint_interval, "log_window", (int)c->log_window,
        "request_timeout_ms", (json_int_t)c->request_timeout_ms, "view_change_timeout_ms",
        (json_int_t)c->view_change_timeout_ms, "worker_threads", (int)c->worker_threads,
        "durability", c->durability == CFG_DURABILITY_FSYNC ? "fsync" : "os", "max_frame",
        (int)c->max_frame, "send_queue_bytes", (json_int_t)c->send_queue_bytes, "log_level",
        fb_log_level_name(fb_log_get_level()), "log_file",
        c->log_file[0] ? c->log_file : "(stderr)", "n", (int)n->cluster.n, "f", (int)n->cluster.f,
        "verify", verify_mode_name(c->verify), "sig_cache", c->sig_cache, "digest_cache",
        c->digest_cache);
}

static json_t *admin_log_level(void *arg, json_t *request, const char **err)
{
    (void)arg;
    const char *want = json_string_value(json_object_get(request, "level"));
    if (want) {
        int l = fb_log_parse_level(want);
        if (l < 0) {
            *err = "level must be one of error, warn, info, debug";
            return NULL;
        }
        fb_log_set_level((fb_log_level)l);
        LOG_WARN("log level set to %s by the admin socket", want);
    }
    return json_pack("{s:s}", "level", fb_log_level_name(fb_log_get_level()));
}

static json_t *admin_checkpoint(void *arg, json_t *request, const char **err)
{
    (void)request;
    (void)err;
    fb_node *n = arg;
    uint64_t seq;
    uint8_t digest[FB_DIGEST_LEN];
    pbft_msg *const *proof;
    size_t nproof;
    pbft_stable_checkpoint(n->replica, &seq, digest, &proof, &nproof);
    char hex[2 * FB_DIGEST_LEN + 1];
    sodium_bin2hex(hex, sizeof hex, digest, FB_DIGEST_LEN);
    json_t *cert = json_array();
    for (size_t i = 0; i < nproof; i++) {
        char sig[2 * FB_SIG_LEN + 1];
        sodium_bin2hex(sig, sizeof sig, proof[i]->env->signature.data, FB_SIG_LEN);
        json_array_append_new(
            cert, json_pack("{s:i, s:s}", "replica", (int)proof[i]->sender, "signature", sig));
    }
    return json_pack("{s:I, s:s, s:o}", "seq", (json_int_t)seq, "state_digest", seq ? hex : "",
                     "certificate", cert);
}

static json_t *admin_view_change(void *arg, json_t *request, const char **err)
{
    (void)request;
    (void)err;
    fb_node *n = arg;
    LOG_WARN("view change requested on the admin socket");
    pbft_event ev = {.kind = PBFT_EV_VIEW_CHANGE, .now_ms = now_ms(n)};
    step(n, &ev);
    pbft_status st;
    pbft_get_status(n->replica, &st);
    return json_pack("{s:b, s:I}", "voted", 1, "new_view", (json_int_t)st.view);
}

static json_t *admin_shutdown(void *arg, json_t *request, const char **err)
{
    (void)arg;
    (void)request;
    (void)err;
    LOG_WARN("shutdown requested on the admin socket");
    /* The same clean path as SIGTERM: stop, let the store commit, exit 0. */
    uv_kill(uv_os_getpid(), SIGTERM);
    return json_pack("{s:b}", "stopping", 1);
}

static json_t *admin_recent_ops(void *arg, json_t *request, const char **err)
{
    (void)request;
    (void)err;
    return ops_json(((fb_node *)arg)->ops);
}

/* ------------------------------------------------------------ metrics */

static const double latency_bounds[] = {0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05,
                                        0.1,    0.2,   0.5,   1,     2,    5,    10};
static const double size_bounds[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384};
/* A verification job takes one signature's time (~50 us) and up. */
static const double job_bounds[] = {0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002,
                                    0.005,   0.01,   0.05,   0.1,    1};

static double g_view(void *arg)
{
    pbft_status st;
    pbft_get_status(((fb_node *)arg)->replica, &st);
    return (double)st.view;
}

static double g_executed(void *arg)
{
    pbft_status st;
    pbft_get_status(((fb_node *)arg)->replica, &st);
    return (double)st.last_executed;
}

static double g_stable(void *arg)
{
    pbft_status st;
    pbft_get_status(((fb_node *)arg)->replica, &st);
    return (double)st.stable_seq;
}

static double g_pending(void *arg)
{
    pbft_status st;
    pbft_get_status(((fb_node *)arg)->replica, &st);
    return (double)st.pending_requests;
}

static double g_store_queue(void *arg)
{
    fb_node *n = arg;
    double k = n->open ? 1 : 0;
    for (sbatch *sb = n->inflight_head; sb; sb = sb->next)
        k++;
    return k;
}

static double g_verify_queue(void *arg)
{
    fb_node *n = arg;
    if (!n->bv)
        return 0; /* verify="inline": nothing waits beyond the current turn */
    fb_batchver_stats st;
    fb_batchver_get_stats(n->bv, &st);
    return (double)st.pending;
}

static void register_metrics(fb_node *n)
{
    fb_metrics *m = n->metrics;
    n->m.requests = fb_metrics_counter(
        m, "fedbft_requests_total", "Ordered requests executed and replied by this replica", NULL);
    n->m.latency =
        fb_metrics_histogram(m, "fedbft_commit_latency_seconds",
                             "Time from the first phase this replica saw of a request to its reply",
                             NULL, latency_bounds, sizeof latency_bounds / sizeof *latency_bounds);
    for (int p = 1; p < OPS_NPHASES; p++) {
        char labels[64];
        snprintf(labels, sizeof labels, "phase=\"%s\"", ops_phase_name((ops_phase)p));
        n->m.phase[p] = fb_metrics_histogram(
            m, "fedbft_request_phase_seconds",
            "Time a request spent reaching each phase from the one before it", labels,
            latency_bounds, sizeof latency_bounds / sizeof *latency_bounds);
    }
    n->m.batch_size =
        fb_metrics_histogram(m, "fedbft_batch_size", "Requests per executed batch", NULL,
                             size_bounds, sizeof size_bounds / sizeof *size_bounds);
    n->m.verify_batch = fb_metrics_histogram(
        m, "fedbft_verify_batch_size", "Signatures per verification job (one loop turn)", NULL,
        size_bounds, sizeof size_bounds / sizeof *size_bounds);
    n->m.verify_job = fb_metrics_histogram(
        m, "fedbft_verify_job_seconds",
        "Time from closing a loop turn's verification job to stepping its messages (the "
        "verifier's hand-offs and queue included; verify=inline: the verification alone)",
        NULL, job_bounds, sizeof job_bounds / sizeof *job_bounds);
    n->m.store_commit = fb_metrics_histogram(
        m, "fedbft_store_commit_seconds", "Time from submitting a store batch to its completion",
        NULL, latency_bounds, sizeof latency_bounds / sizeof *latency_bounds);
    const char *dk[3] = {"kind=\"request\"", "kind=\"batch\"", "kind=\"envelope\""};
    for (int i = 0; i < 3; i++)
        n->m.digests[i] = fb_metrics_counter(m, "fedbft_digest_computations_total",
                                             "Digests computed by the replica", dk[i]);
    n->m.sig_hits = fb_metrics_counter(m, "fedbft_sigcache_hits_total",
                                       "Signatures answered by the verified-signature cache", NULL);
    n->m.sig_misses = fb_metrics_counter(m, "fedbft_sigcache_misses_total",
                                         "Signature cache lookups that missed", NULL);
    n->m.sig_verified = fb_metrics_counter(
        m, "fedbft_signatures_verified_total",
        "Ed25519 signatures of received messages checked (batch workers or inline; cache hits "
        "excluded)",
        NULL);
    n->m.votes_skipped = fb_metrics_counter(
        m, "fedbft_votes_skipped_total",
        "PREPAREs and COMMITs that arrived after their slot had its quorum: skipped unverified",
        NULL);
    const char *rk[4] = {"reason=\"garbage\"", "reason=\"oversized\"", "reason=\"unknown_key\"",
                         "reason=\"handshake\""};
    for (int i = 0; i < 4; i++)
        n->m.rejected[i] =
            fb_metrics_counter(m, "fedbft_frames_rejected_total",
                               "Connections cut for a bad frame or handshake", rk[i]);
    const char *drop_help =
        "Messages dropped: unparsable (parse), from the wrong sender or signed by an unknown key "
        "(cheap_check), with a bad signature (signature), or refused by the PBFT acceptance "
        "rules (the other reasons; duplicate includes retransmissions)";
    const char *xk[3] = {"reason=\"parse\"", "reason=\"cheap_check\"", "reason=\"signature\""};
    for (int i = 0; i < 3; i++)
        n->m.dropped[i] = fb_metrics_counter(m, "fedbft_messages_dropped_total", drop_help, xk[i]);
    for (int i = 0; i < PBFT_REJ_COUNT; i++) {
        char labels[64];
        snprintf(labels, sizeof labels, "reason=\"%s\"", pbft_reject_name((pbft_reject)i));
        n->m.refused[i] = fb_metrics_counter(m, "fedbft_messages_dropped_total", drop_help, labels);
    }
    n->m.view_changes = fb_metrics_counter(m, "fedbft_view_changes_total",
                                           "View changes this replica completed", NULL);
    const char *tk[3] = {"result=\"installed\"", "result=\"bad_peer\"", "result=\"timeout\""};
    for (int i = 0; i < 3; i++)
        n->m.transfers[i] = fb_metrics_counter(
            m, "fedbft_state_transfers_total",
            "State transfer outcomes at this replica: installed (a checkpoint fetched and "
            "installed), bad_peer (a peer served state that failed verification and was "
            "abandoned), timeout (a peer answered nothing in time and was left)",
            tk[i]);
    n->m.chunks_in = fb_metrics_counter(m, "fedbft_state_chunks_received_total",
                                        "State-transfer chunks accepted from peers", NULL);
    n->m.chunks_out = fb_metrics_counter(m, "fedbft_state_chunks_served_total",
                                         "State-transfer chunks served to peers", NULL);
    fb_metrics_gauge_fn(m, "fedbft_view", "Current view", NULL, g_view, n);
    fb_metrics_gauge_fn(m, "fedbft_last_executed_seq", "Highest executed sequence number", NULL,
                        g_executed, n);
    fb_metrics_gauge_fn(m, "fedbft_stable_checkpoint_seq", "Stable checkpoint (low watermark)",
                        NULL, g_stable, n);
    fb_metrics_gauge_fn(m, "fedbft_pending_requests", "Requests waiting to be ordered", NULL,
                        g_pending, n);
    fb_metrics_gauge_fn(m, "fedbft_store_queue_depth", "Store batches not yet completed", NULL,
                        g_store_queue, n);
    fb_metrics_gauge_fn(m, "fedbft_verify_queue_depth", "Signatures waiting for the verifier", NULL,
                        g_verify_queue, n);
}

static void sync_metrics(fb_node *n)
{
    pbft_status st;
    pbft_get_status(n->replica, &st);
    fb_metric_sync(n->m.digests[0], st.digests.requests, &n->m.last_digests[0]);
    fb_metric_sync(n->m.digests[1], st.digests.batches, &n->m.last_digests[1]);
    fb_metric_sync(n->m.digests[2], st.digests.envelopes, &n->m.last_digests[2]);
    fb_metric_sync(n->m.view_changes, st.view_changes, &n->m.last_view_changes);
    if (n->sigcache) {
        fb_sigcache_stats cs;
        fb_sigcache_get_stats(n->sigcache, &cs);
        fb_metric_sync(n->m.sig_hits, cs.hits, &n->m.last_hits);
        fb_metric_sync(n->m.sig_misses, cs.misses, &n->m.last_misses);
    }
    uint64_t verified = n->inline_verified;
    if (n->bv) {
        fb_batchver_stats bs;
        fb_batchver_get_stats(n->bv, &bs);
        verified += bs.verified;
    }
    fb_metric_sync(n->m.sig_verified, verified, &n->m.last_verified);
    fb_metric_sync(n->m.votes_skipped, n->votes_skipped, &n->m.last_votes_skipped);
    net_stats ns;
    net_get_stats(n->net, &ns);
    uint64_t rej[4] = {ns.garbage, ns.oversized, ns.unknown_keys, ns.handshakes_failed};
    for (int i = 0; i < 4; i++)
        fb_metric_sync(n->m.rejected[i], rej[i], &n->m.last_rejected[i]);
    uint64_t drop[3] = {n->dropped_parse, n->dropped_cheap, n->dropped_sig};
    for (int i = 0; i < 3; i++)
        fb_metric_sync(n->m.dropped[i], drop[i], &n->m.last_dropped[i]);
    for (int i = 0; i < PBFT_REJ_COUNT; i++)
        fb_metric_sync(n->m.refused[i], st.rejected_by[i] + n->dropped_early[i],
                       &n->m.last_refused[i]);
    node_state_stats ss;
    node_state_get_stats(n->state, &ss);
    uint64_t tr[3] = {ss.installs, ss.bad_peers, ss.timeouts};
    for (int i = 0; i < 3; i++)
        fb_metric_sync(n->m.transfers[i], tr[i], &n->m.last_transfers[i]);
    fb_metric_sync(n->m.chunks_in, ss.chunks_in, &n->m.last_chunks_in);
    fb_metric_sync(n->m.chunks_out, ss.chunks_out, &n->m.last_chunks_out);
    if (n->serve)
        serve_sync_metrics(n->serve);
}

/* Ready: connected to a quorum (counting ourselves), in an active view, not
 * fetching state. */
static bool node_ready(fb_node *n)
{
    pbft_status st;
    pbft_get_status(n->replica, &st);
    uint32_t up = 1;
    for (uint32_t i = 0; i < n->cluster.n; i++) {
        if (i == n->cfg.id)
            continue;
        net_link_stats ls;
        net_replica_stats(n->net, i, &ls);
        up += ls.connected;
    }
    return up >= st.quorum && !st.view_changing && st.fetching_seq == 0;
}

static void set_body(fb_http_response *r, int status, const char *type, const char *text)
{
    r->status = status;
    r->content_type = type;
    r->body = strdup(text);
    r->len = r->body ? strlen(text) : 0;
}

static void on_http(void *arg, const char *path, fb_http_response *resp)
{
    fb_node *n = arg;
    if (strcmp(path, "/metrics") == 0) {
        sync_metrics(n);
        resp->status = 200;
        resp->content_type = "text/plain; version=0.0.4; charset=utf-8";
        if (fb_metrics_prometheus(n->metrics, &resp->body, &resp->len) != 0)
            set_body(resp, 500, "text/plain", "cannot render metrics\n");
    } else if (strcmp(path, "/health") == 0) {
        set_body(resp, 200, "text/plain", "ok\n");
    } else if (strcmp(path, "/ready") == 0) {
        bool ready = node_ready(n);
        set_body(resp, ready ? 200 : 503, "text/plain", ready ? "ready\n" : "not ready\n");
    } else {
        set_body(resp, 404, "text/plain", "not found: try /metrics, /health, /ready\n");
    }
}

static json_t *admin_metrics(void *arg, json_t *request, const char **err)
{
    (void)request;
    (void)err;
    fb_node *n = arg;
    sync_metrics(n);
    return fb_metrics_json(n->metrics);
}

/* fault peer=I|all drop=in|out|both|none delay_ms=N, or fault clear=true,
 * or fault (no arguments) to show. */
static json_t *admin_fault(void *arg, json_t *request, const char **err)
{
    fb_node *n = arg;
    if (!n->cfg.fault_injection) {
        *err = "fault injection is disabled on this node (set \"fault_injection\": true in "
               "node.json; test clusters only)";
        return NULL;
    }
    json_t *corrupt = json_object_get(request, "corrupt_state");
    if (corrupt) {
        const char *v = json_string_value(corrupt);
        bool on = json_is_true(corrupt) || (v && strcmp(v, "true") == 0);
        if (!on && !json_is_false(corrupt) && !(v && strcmp(v, "false") == 0)) {
            *err = "corrupt_state must be true or false";
            return NULL;
        }
        node_state_set_corrupt(n->state, on);
        LOG_WARN("fault injection: state chunks served are %s", on ? "corrupted" : "intact");
    }
    json_t *lie = json_object_get(request, "infer_lie");
    if (lie) {
        const char *v = json_string_value(lie);
        n->infer_lie = json_is_true(lie) || (v && strcmp(v, "true") == 0);
        LOG_WARN("fault injection: InferResults are %s", n->infer_lie ? "forged" : "honest");
    }
    if (json_is_true(json_object_get(request, "clear"))) {
        net_fault_clear(n->net);
        n->infer_lie = false;
        node_state_set_corrupt(n->state, false);
        LOG_WARN("fault injection cleared");
    } else if (json_object_get(request, "peer")) {
        json_t *p = json_object_get(request, "peer");
        uint32_t peer = NET_FAULT_ALL;
        if (json_is_integer(p))
            peer = (uint32_t)json_integer_value(p);
        else if (!json_is_string(p) || strcmp(json_string_value(p), "all") != 0) {
            *err = "peer must be a replica id or \"all\"";
            return NULL;
        }
        const char *drop = json_string_value(json_object_get(request, "drop"));
        if (!drop)
            drop = "none";
        bool in = !strcmp(drop, "in") || !strcmp(drop, "both");
        bool out = !strcmp(drop, "out") || !strcmp(drop, "both");
        if (!in && !out && strcmp(drop, "none") != 0) {
            *err = "drop must be in, out, both or none";
            return NULL;
        }
        json_int_t delay = json_integer_value(json_object_get(request, "delay_ms"));
        if (delay < 0 || delay > 60000) {
            *err = "delay_ms must be 0..60000";
            return NULL;
        }
        if (net_fault_set(n->net, peer, in, out, (uint32_t)delay) != 0) {
            *err = "unknown peer (or this node itself)";
            return NULL;
        }
        LOG_WARN("fault injection: peer %s drop=%s delay_ms=%lld",
                 peer == NET_FAULT_ALL ? "all" : "one", drop, (long long)delay);
    }
    json_t *links = json_array();
    for (uint32_t i = 0; i < n->cluster.n; i++) {
        bool in = false, out = false;
        uint32_t delay = 0;
        if (i == n->cfg.id || net_fault_get(n->net, i, &in, &out, &delay) != 0)
            continue;
        json_array_append_new(links, json_pack("{s:i, s:b, s:b, s:i}", "peer", (int)i, "drop_in",
                                               in, "drop_out", out, "delay_ms", (int)delay));
    }
    return json_pack("{s:o, s:b, s:b}", "faults", links, "infer_lie", n->infer_lie, "corrupt_state",
                     node_state_corrupt(n->state));
}

static int start_admin(fb_node *n, char *err, size_t errlen)
{
    char path[CFG_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/%s", n->cfg.data_dir, ADMIN_SOCKET_FILE);
    int rc = admin_new(n->loop, path, &n->admin, err, errlen);
    if (rc == 0)
        admin_command(n->admin, "status",
                      "id, view, primary, last executed and committed seq, stable checkpoint, "
                      "watermarks, pending requests, uptime, version",
                      admin_status, n);
    if (rc == 0) {
        admin_command(n->admin, "peers",
                      "per peer: connected, handshake, last message age, frames and bytes in/out, "
                      "frames rejected and dropped; transport counters",
                      admin_peers, n);
        admin_command(n->admin, "config", "the effective configuration (no secrets)", admin_config,
                      n);
        admin_command(n->admin, "log-level", "get the log level, or set it: level=debug|info|...",
                      admin_log_level, n);
        admin_command(n->admin, "checkpoint",
                      "the latest stable checkpoint: seq, state digest and its certificate",
                      admin_checkpoint, n);
        admin_command(n->admin, "view-change",
                      "vote for a view change now (f+1 votes move the cluster to the next view)",
                      admin_view_change, n);
        admin_command(n->admin, "recent-ops",
                      "the most recent and the slowest requests, with the ms spent reaching each "
                      "phase (received, pre_prepared, prepared, committed, executed, replied)",
                      admin_recent_ops, n);
        admin_command(n->admin, "metrics", "every counter, gauge and histogram as JSON",
                      admin_metrics, n);
        admin_command(n->admin, "fault",
                      "test clusters only: peer=I|all drop=in|out|both|none delay_ms=N, "
                      "infer_lie=true|false (forge InferResults), corrupt_state=true|false "
                      "(serve state chunks with a byte flipped), clear=true, or no arguments "
                      "to show",
                      admin_fault, n);
        admin_command(n->admin, "cache",
                      "inference response cache: entries, bytes, hits, misses, coalesced, "
                      "evictions; clear=true empties it",
                      serve_admin_cache, n->serve);
        admin_command(n->admin, "batcher",
                      "inference batcher: queue depth, active slots, batch-size histogram, "
                      "tokens/s, counters, config",
                      serve_admin_batcher, n->serve);
        admin_command(n->admin, "shutdown", "stop the node cleanly (as SIGTERM)", admin_shutdown,
                      n);
    }
    return rc;
}

/* How signatures and digests are checked; a warning when a benchmark switch
 * has turned a mechanism off. */
static void log_switches(fb_node *n)
{
    const cfg_node *c = &n->cfg;
    char verify[64];
    if (n->bv) {
        fb_batchver_stats bs;
        fb_batchver_get_stats(n->bv, &bs);
        snprintf(verify, sizeof verify, "in batches on %u worker threads", bs.threads);
    } else {
        snprintf(verify, sizeof verify, "inline on the event loop");
    }
    bool ablated = c->verify != CFG_VERIFY_BATCH || !c->sig_cache || !c->digest_cache;
    if (ablated)
        LOG_WARN("benchmark switches in node.json: verify=%s sig_cache=%s digest_cache=%s "
                 "(signatures verified %s; for benchmarks, not production)",
                 verify_mode_name(c->verify), c->sig_cache ? "true" : "false",
                 c->digest_cache ? "true" : "false", verify);
    else
        LOG_INFO("signatures verified %s, with the signature cache; request digests reused",
                 verify);
}

int fb_node_start(fb_node *n, char *err, size_t errlen)
{
    n->started_ms = now_ms(n);
    int rc = serve_new(n->loop, &n->cfg.inference, n->metrics, &n->serve, err, errlen);
    if (rc == 0 && n->cluster.has_model_digest) {
        /* INFER outputs are compared across replicas: all must serve the
         * model cluster.json pins. */
        const uint8_t *d = serve_model_digest(n->serve);
        char want[33], have[33] = "none";
        sodium_bin2hex(want, sizeof want, n->cluster.model_digest, 16);
        if (d)
            sodium_bin2hex(have, sizeof have, d, 16);
        if (!d || memcmp(d, n->cluster.model_digest, 16) != 0)
            rc = fb_errf(err, errlen, FB_EINVAL,
                         "cluster.json pins model_digest %s but this node serves %s%s%s; "
                         "configure inference.model in node.json with that model",
                         want, d ? "a model with digest " : "no model", d ? have : "",
                         d ? "" : " (inference.model is empty)");
    }
    if (rc == 0)
        rc = net_start(n->net, err, errlen);
    if (rc == 0)
        rc = start_admin(n, err, errlen);
    if (rc == 0 && n->cfg.http_port) {
        const char *host = n->cfg.listen[0] ? n->cfg.listen : n->cluster.replicas[n->cfg.id].host;
        rc = fb_http_new(n->loop, host, n->cfg.http_port, on_http, n, &n->http, err, errlen);
        if (rc == 0)
            serve_attach_http(n->serve, n->http);
    }
    if (rc)
        return rc;
    uv_check_start(&n->turn_end, on_turn_end);
    uv_timer_start(&n->state_timer, on_state_timer, STATE_TICK_MS, STATE_TICK_MS);
    pbft_event ev = {.kind = PBFT_EV_TICK, .now_ms = now_ms(n)};
    step(n, &ev);
    pbft_status st;
    pbft_get_status(n->replica, &st);
    LOG_INFO("replica %u of %u up: view %llu, executed %llu, stable %llu", st.id, st.n,
             (unsigned long long)st.view, (unsigned long long)st.last_executed,
             (unsigned long long)st.stable_seq);
    log_switches(n);
    return 0;
}

static void on_handle_closed(uv_handle_t *h)
{
    fb_node *n = h->data;
    if (--n->handles_open == 0 && n->stop_cb)
        n->stop_cb(n->stop_arg);
}

static void on_net_closed(void *arg)
{
    fb_node *n = arg;
    if (--n->handles_open == 0 && n->stop_cb)
        n->stop_cb(n->stop_arg);
}

void fb_node_stop(fb_node *n, void (*cb)(void *arg), void *arg)
{
    n->stopping = true;
    n->stop_cb = cb;
    n->stop_arg = arg;
    /* What this turn persisted still goes to the store; store_close (in
     * fb_node_free) commits everything submitted before closing. */
    submit_open_batch(n, true);
    n->handles_open++; /* the net */
    uv_timer_stop(&n->pbft_timer);
    uv_timer_stop(&n->state_timer);
    uv_check_stop(&n->turn_end);
    uv_close((uv_handle_t *)&n->pbft_timer, on_handle_closed);
    uv_close((uv_handle_t *)&n->state_timer, on_handle_closed);
    uv_close((uv_handle_t *)&n->turn_end, on_handle_closed);
    uv_close((uv_handle_t *)&n->bv_async, on_handle_closed);
    uv_close((uv_handle_t *)&n->store_async, on_handle_closed);
    net_close(n->net, on_net_closed, n);
    if (n->serve) { /* before the HTTP server: its last answers go to clients */
        n->handles_open++;
        serve_close(n->serve, on_net_closed, n);
    }
    if (n->admin) {
        n->handles_open++;
        admin_close(n->admin, on_net_closed, n);
    }
    if (n->http) {
        n->handles_open++;
        fb_http_close(n->http, on_net_closed, n);
    }
}

void fb_node_free(fb_node *n)
{
    if (!n)
        return;
    fb_batchver_free(n->bv); /* joins workers; undelivered jobs are dropped */
    store_close(n->store);   /* commits what was submitted */
    while (n->inflight_head) {
        sbatch *sb = n->inflight_head;
        n->inflight_head = sb->next;
        sbatch_free(sb);
    }
    if (n->open)
        sbatch_free(n->open);
    if (n->job)
        job_free(n->job);
    while (n->inline_head) {
        vjob *j = n->inline_head;
        n->inline_head = j->next;
        job_free(j);
    }
    free(n->inline_ok);
    net_free(n->net);
    admin_free(n->admin);
    serve_free(n->serve);
    fb_http_free(n->http);
    fb_metrics_free(n->metrics);
    node_state_free(n->state);
    fb_sigcache_free(n->sigcache);
    pbft_free(n->replica);
    for (int i = 0; i < CKPT_SNAPSHOTS; i++)
        free(n->snaps[i].client_table);
    free(n->client_conn);
    free(n->nv_told_at);
    free(n->client_order);
    for (uint32_t i = 0; n->recent_pp && i < n->cfg.log_window; i++)
        pbft_msg_unref(n->recent_pp[i]);
    free(n->recent_pp);
    ops_free(n->ops);
    cfg_cluster_free(&n->cluster);
    fb_key_wipe(&n->id);
    free(n);
}

void fb_node_status(const fb_node *n, pbft_status *out)
{
    pbft_get_status(n->replica, out);
}
