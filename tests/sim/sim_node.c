/* sim_node.c - one replica instance: what the node does around pbft_step.
 *
 * Incoming bytes are parsed with the replica's request lookup, every carried
 * signature is verified (through a per-instance signature cache) before the
 * message is stepped, and the actions are carried out in order exactly as
 * pbft.h's contract asks: PERSIST appends to the simulated disk at once,
 * EXECUTE applies the batch to the application and reports PBFT_EV_EXECUTED
 * after the step's other actions, at which point the execution state (last
 * executed seq, application state, client table) becomes durable in one go.
 *
 * A crash drops everything in memory; only the disk survives.  A crash may
 * land between two actions of one step (crash_armed), which is exactly the
 * window the persistence rule is about.
 */
#include "sim_int.h"

#include "fb_error.h"
#include "sig.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define RESULT_MAX (2 + SIM_VAL_MAX + 8)

/* ------------------------------------------------------------ application */

void app_init(sim_app *a)
{
    memset(a, 0, sizeof *a);
}

void app_digest(const sim_app *a, uint8_t out[FB_DIGEST_LEN])
{
    crypto_generichash_state st;
    crypto_generichash_init(&st, NULL, 0, FB_DIGEST_LEN);
    for (int k = 0; k < SIM_KEYS; k++) {
        uint8_t hdr[2] = {a->present[k], a->present[k] ? a->vlen[k] : 0};
        crypto_generichash_update(&st, hdr, sizeof hdr);
        if (a->present[k])
            crypto_generichash_update(&st, a->val[k], a->vlen[k]);
    }
    crypto_generichash_update(&st, a->chain, sizeof a->chain);
    uint8_t nops[8];
    for (int i = 0; i < 8; i++)
        nops[i] = (uint8_t)(a->nops >> (56 - 8 * i));
    crypto_generichash_update(&st, nops, sizeof nops);
    crypto_generichash_final(&st, out, FB_DIGEST_LEN);
}

static void chain_mix(sim_app *a, const void *data, size_t len)
{
    crypto_generichash_state st;
    crypto_generichash_init(&st, NULL, 0, FB_DIGEST_LEN);
    crypto_generichash_update(&st, a->chain, sizeof a->chain);
    crypto_generichash_update(&st, data, len);
    crypto_generichash_final(&st, a->chain, FB_DIGEST_LEN);
}

static int app_key(const ProtobufCBinaryData *key)
{
    if (key->len != 2 || key->data[0] != 'k' || key->data[1] < '0' ||
        key->data[1] >= '0' + SIM_KEYS)
        return -1;
    return key->data[1] - '0';
}

/* Apply one request; the result is [status][len][value][8 bytes of the
 * chain], so equal results at two replicas also mean equal histories. */
static size_t app_apply(sim_app *a, const pbft_msg *req, uint8_t out[RESULT_MAX])
{
    const Fedbft__Operation *op = req->u.request->op;
    int k = app_key(&op->key);
    uint8_t status = FEDBFT__RESULT__STATUS__STATUS_OK;
    const uint8_t *val = NULL;
    size_t vlen = 0;
    if (k < 0 || op->value.len > SIM_VAL_MAX) {
        status = FEDBFT__RESULT__STATUS__STATUS_INVALID;
    } else {
        switch (op->kind) {
        case FEDBFT__OPERATION__KIND__OP_PUT:
            a->present[k] = 1;
            a->vlen[k] = (uint8_t)op->value.len;
            if (op->value.len)
                memcpy(a->val[k], op->value.data, op->value.len);
            break;
        case FEDBFT__OPERATION__KIND__OP_GET:
            if (a->present[k]) {
                val = a->val[k];
                vlen = a->vlen[k];
            } else {
                status = FEDBFT__RESULT__STATUS__STATUS_NOT_FOUND;
            }
            break;
        case FEDBFT__OPERATION__KIND__OP_DEL:
            if (!a->present[k])
                status = FEDBFT__RESULT__STATUS__STATUS_NOT_FOUND;
            a->present[k] = 0;
            break;
        case FEDBFT__OPERATION__KIND__OP_CAS: {
            bool ok = op->expect_absent
                          ? !a->present[k]
                          : a->present[k] && a->vlen[k] == op->expected.len &&
                                (op->expected.len == 0 ||
                                 memcmp(a->val[k], op->expected.data, op->expected.len) == 0);
            if (ok) {
                a->present[k] = 1;
                a->vlen[k] = (uint8_t)op->value.len;
                if (op->value.len)
                    memcpy(a->val[k], op->value.data, op->value.len);
            } else {
                status = FEDBFT__RESULT__STATUS__STATUS_CAS_MISMATCH;
                if (a->present[k]) {
                    val = a->val[k];
                    vlen = a->vlen[k];
                }
            }
            break;
        }
        default:
            status = FEDBFT__RESULT__STATUS__STATUS_INVALID;
            break;
        }
    }
    uint8_t mix[FB_DIGEST_LEN + 1];
    memcpy(mix, req->digest, FB_DIGEST_LEN);
    mix[FB_DIGEST_LEN] = status;
    chain_mix(a, mix, sizeof mix);
    a->nops++;
    out[0] = status;
    out[1] = (uint8_t)vlen;
    if (vlen)
        memcpy(out + 2, val, vlen);
    memcpy(out + 2 + vlen, a->chain, 8);
    return 2 + vlen + 8;
}

static int request_key(const pbft_msg *req)
{
    return app_key(&req->u.request->op->key);
}

size_t app_read(const sim_app *a, int key, uint8_t *out)
{
    if (key < 0) {
        out[0] = FEDBFT__RESULT__STATUS__STATUS_INVALID;
        out[1] = 0;
        return 2;
    }
    if (!a->present[key]) {
        out[0] = FEDBFT__RESULT__STATUS__STATUS_NOT_FOUND;
        out[1] = 0;
        return 2;
    }
    out[0] = FEDBFT__RESULT__STATUS__STATUS_OK;
    out[1] = a->vlen[key];
    memcpy(out + 2, a->val[key], a->vlen[key]);
    return 2u + a->vlen[key];
}

static void app_end_batch(sim_app *a, uint64_t seq, uint64_t nondet)
{
    uint8_t buf[16];
    for (int i = 0; i < 8; i++) {
        buf[i] = (uint8_t)(seq >> (56 - 8 * i));
        buf[8 + i] = (uint8_t)(nondet >> (56 - 8 * i));
    }
    chain_mix(a, buf, sizeof buf);
}

/* ------------------------------------------------------------ helpers */

void node_sign(void *arg, const uint8_t digest[FB_DIGEST_LEN], uint8_t sig[FB_SIG_LEN])
{
    fb_sig_sign((const fb_identity *)arg, digest, sig);
}

/* pbft_msg_view_seq's seq, and a REQUEST's timestamp (for traces). */
uint64_t msg_seq_of(const pbft_msg *m)
{
    if (m->type == FEDBFT__MSG_TYPE__MSG_REQUEST)
        return m->u.request->timestamp;
    uint64_t view, seq;
    pbft_msg_view_seq(m, &view, &seq);
    return seq;
}

uint64_t msg_view_of(const pbft_msg *m)
{
    uint64_t view, seq;
    pbft_msg_view_seq(m, &view, &seq);
    return view;
}

static bool seq_typed(int type)
{
    return type == FEDBFT__MSG_TYPE__MSG_PRE_PREPARE || type == FEDBFT__MSG_TYPE__MSG_PREPARE ||
           type == FEDBFT__MSG_TYPE__MSG_COMMIT || type == FEDBFT__MSG_TYPE__MSG_CHECKPOINT;
}

/* ------------------------------------------------------------ disk */

static void snap_clear(sim_snapshot *s)
{
    free(s->ct);
    s->ct = NULL;
    s->ct_len = 0;
}

static void disk_free(sim_disk *d)
{
    for (size_t i = 0; i < d->nrecs; i++)
        free(d->recs[i].raw);
    free(d->recs);
    d->recs = NULL;
    d->nrecs = d->cap = 0;
    for (size_t i = 0; i < d->nfull; i++)
        free(d->full[i].raw);
    free(d->full);
    d->full = NULL;
    d->nfull = d->fullcap = 0;
    free(d->ct);
    d->ct = NULL;
    for (size_t i = 0; i < d->nsnaps; i++)
        snap_clear(&d->snaps[i]);
    d->nsnaps = 0;
}

static uint8_t *dup_bytes(const uint8_t *p, size_t len)
{
    uint8_t *q = malloc(len ? len : 1);
    if (q && len)
        memcpy(q, p, len);
    return q;
}

/* PBFT_REC_STABLE at seq s: the records about seqs <= s logged before it
 * may go (pbft.h), except the STABLE record itself and its proof.  pbft.h
 * says the proof is logged after the record, but pbft.c logs it just before;
 * so the CHECKPOINTs at s are kept wherever they are.  Build with
 * -DSIM_GC_LITERAL to collect exactly what the header's words allow. */
static void disk_gc(sim_disk *d, uint64_t s)
{
    size_t stable = d->nrecs - 1, o = 0;
    for (size_t i = 0; i < d->nrecs; i++) {
        sim_rec *r = &d->recs[i];
        bool drop = false;
        if (i < stable) {
            if (r->kind == PBFT_REC_MSG && seq_typed(r->type) && r->msg_seq <= s)
                drop = true;
#ifndef SIM_GC_LITERAL
            if (r->kind == PBFT_REC_MSG && r->type == FEDBFT__MSG_TYPE__MSG_CHECKPOINT &&
                r->msg_seq == s)
                drop = false;
#endif
            if (r->kind == PBFT_REC_STABLE && r->seq <= s)
                drop = true;
        }
        if (drop)
            free(r->raw);
        else
            d->recs[o++] = *r;
    }
    d->nrecs = o;
}

/* The records in short, for failure messages: V3c = view 3 changing,
 * S16 = stable 16, pp/p/c/ck/vc/nv with their seq or view. */
static void disk_describe(const sim_rec *recs, size_t nrecs, char *buf, size_t len)
{
    static const char *const tn[] = {"?", "rq", "rp", "pp", "p", "c", "ck", "vc", "nv"};
    size_t used = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < nrecs && used + 16 < len; i++) {
        const sim_rec *r = &recs[i];
        int k;
        if (r->kind == PBFT_REC_VIEW)
            k = snprintf(buf + used, len - used, "V%llu%s ", (unsigned long long)r->view,
                         r->view_changing ? "c" : "");
        else if (r->kind == PBFT_REC_STABLE)
            k = snprintf(buf + used, len - used, "S%llu ", (unsigned long long)r->seq);
        else
            k = snprintf(buf + used, len - used, "%s%llu ",
                         r->type >= 0 && r->type <= 8 ? tn[r->type] : "?",
                         (unsigned long long)r->msg_seq);
        if (k < 0)
            break;
        used += (size_t)k;
    }
    if (used + 16 >= len && len > 4)
        memcpy(buf + len - 4, "...", 4);
}

static bool rec_append(sim_rec **arr, size_t *n, size_t *cap, const sim_rec *r)
{
    if (*n == *cap) {
        size_t c = *cap ? 2 * *cap : 64;
        sim_rec *a = realloc(*arr, c * sizeof *a);
        if (!a)
            return false;
        *arr = a;
        *cap = c;
    }
    (*arr)[(*n)++] = *r;
    return true;
}

static void disk_persist(sim_world *w, sim_node *nd, const pbft_record *rec)
{
    sim_disk *d = &nd->disk;
    sim_rec r = {rec->kind, rec->view, rec->view_changing, rec->seq, NULL, 0, 0, 0};
    if (rec->kind == PBFT_REC_MSG) {
        if (!rec->msg) {
            sim_fail(w, "replica %u: PERSIST of a MSG record without a message", nd->id);
            return;
        }
        r.raw = dup_bytes(rec->msg->raw, rec->msg->raw_len);
        r.len = rec->msg->raw_len;
        r.type = rec->msg->type;
        r.msg_seq = msg_seq_of(rec->msg);
        if (!r.raw) {
            sim_fail(w, "harness: out of memory persisting");
            return;
        }
    } else if (rec->kind != PBFT_REC_VIEW && rec->kind != PBFT_REC_STABLE) {
        sim_fail(w, "replica %u: PERSIST of unknown record kind %d", nd->id, (int)rec->kind);
        return;
    }
    sim_rec copy = r;
    if (w->disk_gc && r.raw && !(copy.raw = dup_bytes(r.raw, r.len))) {
        free(r.raw);
        sim_fail(w, "harness: out of memory persisting");
        return;
    }
    if (!rec_append(&d->recs, &d->nrecs, &d->cap, &r) ||
        (w->disk_gc && !rec_append(&d->full, &d->nfull, &d->fullcap, &copy))) {
        sim_fail(w, "harness: out of memory persisting");
        return;
    }
    if (rec->kind == PBFT_REC_STABLE && w->disk_gc)
        disk_gc(d, rec->seq);
    if (d->nrecs > 200000)
        sim_fail(w, "replica %u: %zu records on disk; the log is not being garbage-collected",
                 nd->id, d->nrecs);
}

/* Keep the latest SIM_SNAPSHOTS checkpoints (bounded, like a node that
 * keeps a few stable checkpoints for state transfer). */
static void snapshot_add(sim_world *w, sim_node *nd, uint64_t seq, const sim_app *app,
                         const uint8_t *ct, size_t ct_len, const uint8_t app_dig[FB_DIGEST_LEN])
{
    sim_disk *d = &nd->disk;
    sim_snapshot *s = NULL;
    for (size_t i = 0; i < d->nsnaps; i++)
        if (d->snaps[i].seq == seq)
            s = &d->snaps[i];
    if (!s && d->nsnaps < SIM_SNAPSHOTS)
        s = &d->snaps[d->nsnaps++];
    if (!s) {
        s = &d->snaps[0];
        for (size_t i = 1; i < d->nsnaps; i++)
            if (d->snaps[i].seq < s->seq)
                s = &d->snaps[i];
        if (s->seq > seq)
            return; /* older than everything kept */
    }
    uint8_t *copy = dup_bytes(ct, ct_len);
    if (!copy) {
        sim_fail(w, "harness: out of memory taking a snapshot");
        return;
    }
    snap_clear(s);
    s->seq = seq;
    s->app = *app;
    s->ct = copy;
    s->ct_len = ct_len;
    pbft_state_digest(app_dig, ct, ct_len, s->state_digest);
    w->res->counters[SIM_C_CHECKPOINTS]++;
}

/* ------------------------------------------------------------ lifecycle */

int node_init(sim_world *w, sim_node *nd, uint32_t idx, uint32_t id)
{
    memset(nd, 0, sizeof *nd);
    nd->idx = idx;
    nd->id = id;
    nd->faulty = w->faulty[id];
    nd->signer = (pbft_signer){node_sign, &w->rkeys[id]};
    app_init(&nd->app);
    app_init(&nd->disk.app);
    return fb_sigcache_new(SIM_SIGCACHE, &nd->cache);
}

static void exec_clear(sim_exec *ex)
{
    for (size_t i = 0; i < ex->nres; i++)
        free((void *)ex->res[i].data);
    free(ex->res);
    free(ex->client);
    free(ex->ts);
    memset(ex, 0, sizeof *ex);
}

void node_free(sim_node *nd)
{
    if (nd->r)
        pbft_free(nd->r);
    nd->r = NULL;
    exec_clear(&nd->exec);
    disk_free(&nd->disk);
    fb_sigcache_free(nd->cache);
    nd->cache = NULL;
    byz_free(nd);
}

void node_crash(sim_world *w, sim_node *nd, bool midstep)
{
    if (!nd->up)
        return;
    pbft_free(nd->r);
    nd->r = NULL;
    nd->up = false;
    exec_clear(&nd->exec);
    nd->exec_gen++;
    nd->exec_sched = false;
    nd->fetching = false;
    nd->crash_armed = false;
    nd->timer_gen++;
    nd->timer_at = 0;
    w->res->faults[midstep ? SIM_F_CRASH_MIDSTEP : SIM_F_CRASH]++;
    sim_trace(w, TR_CRASH, nd->idx, midstep, nd->disk.nrecs, nd->disk.last_executed, 0);
}

static void node_step(sim_world *w, sim_node *nd, const pbft_event *ev);

/* A replica rebuilt from the given records and the disk's execution state. */
static int restore_from(sim_world *w, sim_node *nd, const sim_rec *recs, size_t nrecs,
                        pbft_replica **out)
{
    pbft_config cfg = w->cfg;
    cfg.id = nd->id;
    cfg.signer = nd->signer;
    char err[256] = "";
    int rc = pbft_new(&cfg, out, err, sizeof err);
    if (rc) {
        sim_fail(w, "pbft_new(replica %u): %s (%s)", nd->id, fb_strerror(rc), err);
        return rc;
    }
    const sim_disk *d = &nd->disk;
    pbft_record *r = calloc(nrecs ? nrecs : 1, sizeof *r);
    if (!r) {
        sim_fail(w, "harness: out of memory restoring");
        pbft_free(*out);
        return FB_ENOMEM;
    }
    for (size_t i = 0; i < nrecs && rc == 0; i++) {
        r[i] = (pbft_record){recs[i].kind, recs[i].view, recs[i].view_changing, recs[i].seq, NULL};
        if (recs[i].raw &&
            (rc = pbft_msg_parse(recs[i].raw, recs[i].len, NULL, NULL, &r[i].msg, err, sizeof err)))
            sim_fail(w, "harness: persisted record %zu of replica %u does not re-parse: %s", i,
                     nd->id, err);
    }
    if (rc == 0 && (rc = pbft_restore(*out, r, nrecs, d->last_executed, d->ct, d->ct_len))) {
        char log[300];
        disk_describe(recs, nrecs, log, sizeof log);
        sim_fail(w,
                 "pbft_restore(replica %u, %zu records, last_executed %llu) failed: %s; disk GC "
                 "%s; records: %s",
                 nd->id, nrecs, (unsigned long long)d->last_executed, fb_strerror(rc),
                 w->disk_gc ? "on" : "off", log);
    }
    for (size_t i = 0; i < nrecs; i++)
        pbft_msg_unref(r[i].msg);
    free(r);
    if (rc) {
        pbft_free(*out);
        *out = NULL;
    }
    return rc;
}

static bool same_msg(const pbft_msg *a, const pbft_msg *b)
{
    if (!a || !b)
        return a == b;
    return a->raw_len == b->raw_len && memcmp(a->raw, b->raw, a->raw_len) == 0;
}

/* Index of the first action that differs, or -1. */
static long actions_differ(const pbft_action *a, size_t na, const pbft_action *b, size_t nb)
{
    size_t n = na < nb ? na : nb;
    for (size_t i = 0; i < n; i++) {
        const pbft_action *x = &a[i], *y = &b[i];
        bool same = x->kind == y->kind;
        if (same && (x->kind == PBFT_ACT_SEND || x->kind == PBFT_ACT_BROADCAST))
            same = x->to == y->to && same_msg(x->msg, y->msg);
        else if (same && x->kind == PBFT_ACT_PERSIST)
            same = x->record.kind == y->record.kind && x->record.view == y->record.view &&
                   x->record.view_changing == y->record.view_changing &&
                   x->record.seq == y->record.seq && same_msg(x->record.msg, y->record.msg);
        else if (same && x->kind == PBFT_ACT_EXECUTE)
            same = x->execute.seq == y->execute.seq && x->execute.nreqs == y->execute.nreqs;
        else if (same && x->kind == PBFT_ACT_FETCH_STATE)
            same = x->fetch.seq == y->fetch.seq &&
                   memcmp(x->fetch.digest, y->fetch.digest, FB_DIGEST_LEN) == 0;
        else if (same && x->kind == PBFT_ACT_TIMER)
            same = x->at_ms == y->at_ms;
        if (!same)
            return (long)i;
    }
    return na == nb ? -1 : (long)n;
}

static void node_handle(sim_world *w, sim_node *nd, const pbft_action *acts, size_t nacts);

/* An action in short, for failure messages: "BROADCAST PREPARE v=1 s=9". */
static void action_describe(const pbft_action *acts, size_t n, size_t i, char *buf, size_t len)
{
    static const char *const kinds[] = {"?",       "SEND",  "BROADCAST", "PERSIST",
                                        "EXECUTE", "REPLY", "FETCH",     "TIMER"};
    static const char *const types[] = {"?", "REQ", "REPLY", "PP", "P", "C", "CK", "VC", "NV"};
    if (i >= n) {
        snprintf(buf, len, "(none)");
        return;
    }
    const pbft_action *a = &acts[i];
    const pbft_msg *m = a->kind == PBFT_ACT_PERSIST ? a->record.msg : a->msg;
    int k = a->kind >= 1 && a->kind <= 7 ? (int)a->kind : 0;
    if (m)
        snprintf(buf, len, "%s %s v=%llu s=%llu", kinds[k],
                 m->type >= 0 && m->type <= 8 ? types[m->type] : "?",
                 (unsigned long long)msg_view_of(m), (unsigned long long)msg_seq_of(m));
    else
        snprintf(buf, len, "%s", kinds[k]);
}

int node_start(sim_world *w, sim_node *nd, bool restore)
{
    sim_disk *d = &nd->disk;
    int rc;
    if (!restore) {
        pbft_config cfg = w->cfg;
        cfg.id = nd->id;
        cfg.signer = nd->signer;
        char err[256] = "";
        if ((rc = pbft_new(&cfg, &nd->r, err, sizeof err))) {
            sim_fail(w, "pbft_new(replica %u): %s (%s)", nd->id, fb_strerror(rc), err);
            return rc;
        }
    } else {
        if ((rc = restore_from(w, nd, d->recs, d->nrecs, &nd->r)))
            return rc;
        nd->app = d->app;
        nd->exec_last = d->last_executed;
        w->res->faults[SIM_F_RESTART]++;
        sim_trace(w, TR_RESTART, nd->idx, d->nrecs, d->last_executed, 0, 0);
    }
    nd->up = true;
    nd->fetching = false;
    nd->crash_armed = false;
    nd->timer_gen++;
    nd->timer_at = 0;
    nd->view_changes = 0;
    pbft_status st;
    pbft_get_status(nd->r, &st);
    nd->view_base = st.view; /* a new incarnation starts with no backoff */
    pbft_event ev = {.kind = PBFT_EV_TICK, .now_ms = w->now};
    size_t nacts = 0;
    const pbft_action *acts = pbft_step(nd->r, &ev, &nacts);
    /* Differential check of the garbage collection pbft.h allows: a twin
     * restored from every record ever persisted must do exactly the same. */
    pbft_replica *shadow = NULL;
#ifdef SIM_NO_GC_DIFF
    bool diff = false; /* scratch builds: see what the difference leads to */
#else
    bool diff = true;
#endif
    if (diff && restore && w->disk_gc && restore_from(w, nd, d->full, d->nfull, &shadow) == 0) {
        size_t nsh = 0;
        const pbft_action *sh = pbft_step(shadow, &ev, &nsh);
        long at = actions_differ(acts, nacts, sh, nsh);
        if (at >= 0) {
            char log[300], x[80], y[80];
            disk_describe(d->recs, d->nrecs, log, sizeof log);
            action_describe(acts, nacts, (size_t)at, x, sizeof x);
            action_describe(sh, nsh, (size_t)at, y, sizeof y);
            sim_fail(w,
                     "replica %u restored from its garbage-collected log acts differently from "
                     "one restored from the full log: action %ld of %zu is %s, but of %zu %s; "
                     "collected log: %s",
                     nd->id, at, nacts, x, nsh, y, log);
        }
        pbft_free(shadow);
    }
    node_handle(w, nd, acts, nacts);
    return 0;
}

/* ------------------------------------------------------------ actions */

static void status_check(sim_world *w, sim_node *nd)
{
    pbft_status st;
    pbft_get_status(nd->r, &st);
    if (st.view != nd->view || st.view_changing != nd->view_changing) {
        sim_trace(w, TR_VIEW, nd->idx, st.view, st.view_changing, st.last_executed, st.stable_seq);
        nd->view = st.view;
        nd->view_changing = st.view_changing;
    }
    if (nd->faulty)
        return;
    if (w->calm && (st.view != 0 || st.view_changing))
        sim_fail(w,
                 "CALM: replica %u %s view %llu in a run without faults (a view change means "
                 "some request needed a timer)",
                 nd->id, st.view_changing ? "changes to" : "moved to", (unsigned long long)st.view);
    if (st.view > w->res->counters[SIM_C_MAX_VIEW])
        w->res->counters[SIM_C_MAX_VIEW] = st.view;
    if (st.view_changes > nd->view_changes)
        w->res->counters[SIM_C_VIEW_CHANGES] += st.view_changes - nd->view_changes;
    nd->view_changes = st.view_changes;
    if (st.log_entries > w->cfg.log_window)
        sim_fail(w, "replica %u holds %llu log entries, more than L = %u", nd->id,
                 (unsigned long long)st.log_entries, w->cfg.log_window);
}

static void out_msg(sim_world *w, sim_node *nd, uint32_t to, const pbft_msg *m)
{
    if (!m) {
        sim_fail(w, "replica %u: SEND/BROADCAST without a message", nd->id);
        return;
    }
    if (to != SIM_ALL && (to >= w->n || to == nd->id)) {
        sim_fail(w, "replica %u: SEND to replica %u (n = %u)", nd->id, to, w->n);
        return;
    }
    if (!nd->faulty) {
        if (m->sender != nd->id && m->type != FEDBFT__MSG_TYPE__MSG_REQUEST) {
            sim_fail(w, "replica %u sends a type-%d message signed as %u", nd->id, m->type,
                     m->sender);
            return;
        }
        if (m->type == FEDBFT__MSG_TYPE__MSG_CHECKPOINT)
            check_checkpoint(w, nd, m->u.checkpoint->seq, m->u.checkpoint->state_digest.data);
        else
            check_said(w, nd, m);
    }
    sim_trace(w, TR_SEND, nd->idx, to, (uint64_t)m->type, msg_view_of(m), msg_seq_of(m));
    if (nd->bz)
        byz_send(w, nd, to, m);
    else
        node_emit(w, nd, to, m->raw, m->raw_len);
}

void node_emit(sim_world *w, sim_node *nd, uint32_t to, const uint8_t *raw, size_t len)
{
    if (nd->twin)
        w->res->faults[SIM_F_TWIN]++;
    net_send(w, nd->idx, to, raw, len);
}

static void exec_begin(sim_world *w, sim_node *nd, const pbft_action *a)
{
    sim_exec *ex = &nd->exec;
    if (ex->pending) {
        sim_fail(w, "replica %u: EXECUTE seq %llu before EXECUTED of seq %llu", nd->id,
                 (unsigned long long)a->execute.seq, (unsigned long long)ex->seq);
        return;
    }
    if (a->execute.seq == 0) {
        /* Read-only (pbft.h): against the executed state, changing nothing. */
        const pbft_msg *req = a->execute.nreqs == 1 ? a->execute.reqs[0] : NULL;
        if (!req || req->type != FEDBFT__MSG_TYPE__MSG_REQUEST || !req->u.request->read_only) {
            sim_fail(w, "replica %u: read-only EXECUTE of %zu requests, or of an ordered one",
                     nd->id, a->execute.nreqs);
            return;
        }
        ex->res = calloc(1, sizeof *ex->res);
        uint8_t *buf = malloc(RESULT_MAX);
        if (!ex->res || !buf) {
            free(buf);
            exec_clear(ex);
            sim_fail(w, "harness: out of memory executing");
            return;
        }
        ex->res[0] = (pbft_result){buf, app_read(&nd->app, request_key(req), buf)};
        ex->nres = 1;
        ex->read_req = a->execute.reqs[0];
        ex->pending = true;
        return;
    }
    size_t nreqs = a->execute.nreqs;
    ex->seq = a->execute.seq;
    ex->view = a->execute.view;
    ex->checkpoint = a->execute.checkpoint;
    ex->res = calloc(nreqs ? nreqs : 1, sizeof *ex->res);
    ex->client = calloc(nreqs ? nreqs : 1, sizeof *ex->client);
    ex->ts = calloc(nreqs ? nreqs : 1, sizeof *ex->ts);
    if (!ex->res || !ex->client || !ex->ts) {
        exec_clear(ex);
        sim_fail(w, "harness: out of memory executing");
        return;
    }
    pbft_batch_digest(a->execute.nondet, a->execute.reqs, nreqs, NULL, ex->batch_digest);
    for (size_t i = 0; i < nreqs; i++) {
        const pbft_msg *req = a->execute.reqs[i];
        if (!req || req->type != FEDBFT__MSG_TYPE__MSG_REQUEST) {
            exec_clear(ex);
            sim_fail(w, "replica %u: EXECUTE seq %llu holds a non-request", nd->id,
                     (unsigned long long)a->execute.seq);
            return;
        }
        uint8_t *buf = malloc(RESULT_MAX);
        if (!buf) {
            exec_clear(ex);
            sim_fail(w, "harness: out of memory executing");
            return;
        }
        ex->res[i].data = buf;
        ex->res[i].len = app_apply(&nd->app, req, buf);
        ex->client[i] = req->u.request->client;
        ex->ts[i] = req->u.request->timestamp;
        ex->nres++;
    }
    app_end_batch(&nd->app, ex->seq, a->execute.nondet);
    if (ex->checkpoint)
        app_digest(&nd->app, ex->app_digest);
    ex->pending = true;
    sim_trace(w, TR_EXEC, nd->idx, ex->seq, ex->view, nreqs,
              ((uint64_t)ex->batch_digest[0] << 8) | ex->batch_digest[1]);
}

static void fetch_begin(sim_world *w, sim_node *nd, const pbft_action *a)
{
    if (!nd->faulty) {
        /* The replica must only chase a checkpoint a quorum vouched for. */
        uint64_t seen = 0;
        uint32_t distinct = 0;
        for (size_t i = 0; i < a->fetch.nproof; i++) {
            const pbft_msg *p = a->fetch.proof[i];
            if (!p || p->type != FEDBFT__MSG_TYPE__MSG_CHECKPOINT ||
                p->u.checkpoint->seq != a->fetch.seq ||
                memcmp(p->u.checkpoint->state_digest.data, a->fetch.digest, FB_DIGEST_LEN) != 0 ||
                p->sender >= w->n)
                continue;
            if (!(seen & (1ULL << p->sender))) {
                seen |= 1ULL << p->sender;
                distinct++;
            }
        }
        if (distinct < w->quorum) {
            sim_fail(w,
                     "replica %u: FETCH_STATE seq %llu with a proof of %u distinct matching "
                     "CHECKPOINTs (quorum %u)",
                     nd->id, (unsigned long long)a->fetch.seq, distinct, w->quorum);
            return;
        }
    }
    nd->fetching = true;
    nd->fetch_seq = a->fetch.seq;
    memcpy(nd->fetch_digest, a->fetch.digest, FB_DIGEST_LEN);
    nd->fetch_gen++;
    sim_trace(w, TR_FETCH, nd->idx, a->fetch.seq, a->fetch.nproof, 0, 0);
    sim_schedule(w, w->now + rng_range(&w->rng, 2, 2 * net_max_delay(w) + 5), EV_FETCH, nd->idx,
                 nd->fetch_gen, NULL);
}

static void timer_set(sim_world *w, sim_node *nd, uint64_t at)
{
    /* The latest TIMER wins; re-announcing the pending deadline (as a replica
     * may on every step) must not pile up queue entries. */
    if (nd->timer_at == at && at != 0)
        return;
    nd->timer_gen++;
    nd->timer_at = at;
    sim_schedule(w, at, EV_TIMER, nd->idx, nd->timer_gen, NULL);
}

static void do_action(sim_world *w, sim_node *nd, const pbft_action *a)
{
    switch (a->kind) {
    case PBFT_ACT_SEND:
        out_msg(w, nd, a->to, a->msg);
        break;
    case PBFT_ACT_BROADCAST:
        out_msg(w, nd, SIM_ALL, a->msg);
        break;
    case PBFT_ACT_PERSIST:
        disk_persist(w, nd, &a->record);
        break;
    case PBFT_ACT_EXECUTE:
        exec_begin(w, nd, a);
        break;
    case PBFT_ACT_REPLY:
        if (nd->bz)
            byz_reply(w, nd, a->reply.client, a->reply.timestamp, a->reply.view, a->reply.seq,
                      a->reply.result.data, a->reply.result.len);
        else
            net_reply(w, nd->idx, a->reply.client, a->reply.timestamp, a->reply.view, a->reply.seq,
                      a->reply.result.data, a->reply.result.len);
        break;
    case PBFT_ACT_FETCH_STATE:
        fetch_begin(w, nd, a);
        break;
    case PBFT_ACT_TIMER:
        timer_set(w, nd, a->at_ms);
        break;
    default:
        sim_fail(w, "replica %u: unknown action kind %d", nd->id, (int)a->kind);
        break;
    }
}

/* Carry out a step's actions in order.  An armed crash strikes after a
 * random prefix of them: the rest never happen, as after kill -9. */
static void do_actions(sim_world *w, sim_node *nd, const pbft_action *acts, size_t nacts)
{
    size_t limit = nacts;
    bool crash = false;
    if (nd->crash_armed && nacts > 0) {
        limit = (size_t)rng_below(&w->rng, nacts);
        crash = true;
    }
    for (size_t i = 0; i < limit && !w->failed; i++)
        do_action(w, nd, &acts[i]);
    if (crash)
        node_crash(w, nd, true);
}

/* Report a finished EXECUTE; make the execution state durable. */
static void exec_finish(sim_world *w, sim_node *nd)
{
    sim_exec *ex = &nd->exec;
    pbft_event ev = {.kind = PBFT_EV_EXECUTED, .now_ms = w->now};
    ev.executed.seq = ex->seq;
    ev.executed.read_req = ex->read_req;
    ev.executed.results = ex->res;
    ev.executed.nresults = ex->nres;
    memcpy(ev.executed.app_digest, ex->app_digest, FB_DIGEST_LEN);
    size_t nacts = 0;
    const pbft_action *acts = pbft_step(nd->r, &ev, &nacts);
    /* The step's actions may point into our result buffers (a read-only
     * REPLY carries them as is): they live until the actions are done, while
     * nd->exec is free for the next EXECUTE those actions may hold. */
    sim_exec done = *ex;
    memset(ex, 0, sizeof *ex);
    if (done.seq == 0) { /* read-only: nothing becomes durable */
        status_check(w, nd);
        do_actions(w, nd, acts, nacts);
        exec_clear(&done);
        return;
    }
    ex = &done;

    uint8_t *ct = NULL;
    size_t ct_len = 0;
    int rc = pbft_client_table_export(nd->r, &ct, &ct_len);
    if (rc) {
        exec_clear(&done);
        sim_fail(w, "replica %u: pbft_client_table_export failed: %s", nd->id, fb_strerror(rc));
        return;
    }
    sim_disk *d = &nd->disk;
    free(d->ct);
    d->ct = ct;
    d->ct_len = ct_len;
    d->last_executed = ex->seq;
    d->app = nd->app;
    if (ex->checkpoint)
        snapshot_add(w, nd, ex->seq, &nd->app, ct, ct_len, ex->app_digest);
    if (!nd->faulty) {
        w->res->counters[SIM_C_EXECUTED]++;
        check_exec(w, nd, ex, &nd->app);
    }
    nd->exec_last = ex->seq;
    status_check(w, nd);
    if (ex->nres > 0)
        nd->view_base = nd->view; /* the replica's view-change backoff restarts here */
    do_actions(w, nd, acts, nacts);
    exec_clear(&done);
}

/* Calm runs model the node's executor (its store thread): an EXECUTE
 * finishes up to exec_ms later, while the replica steps other events, so a
 * replica's CHECKPOINT may trail its votes for later batches.  Elsewhere it
 * finishes within the step.  pbft.h allows both. */
static void exec_schedule(sim_world *w, sim_node *nd)
{
    if (!nd->up || !nd->exec.pending || nd->exec_sched || w->failed)
        return;
    nd->exec_sched = true;
    nd->exec_gen++;
    sim_schedule(w, w->now + rng_range(&w->rng, 0, nd->exec_ms), EV_EXEC, nd->idx, nd->exec_gen,
                 NULL);
}

void node_exec(sim_world *w, sim_node *nd, uint64_t gen)
{
    if (!nd->up || gen != nd->exec_gen || !nd->exec.pending)
        return;
    nd->exec_sched = false;
    exec_finish(w, nd);
    exec_schedule(w, nd); /* the EXECUTED step may have issued the next one */
}

static void node_handle(sim_world *w, sim_node *nd, const pbft_action *acts, size_t nacts)
{
    status_check(w, nd);
    do_actions(w, nd, acts, nacts);
    if (w->calm) {
        exec_schedule(w, nd);
        return;
    }
    while (nd->up && nd->exec.pending && !w->failed)
        exec_finish(w, nd);
}

static void node_step(sim_world *w, sim_node *nd, const pbft_event *ev)
{
    size_t nacts = 0;
    const pbft_action *acts = pbft_step(nd->r, ev, &nacts);
    node_handle(w, nd, acts, nacts);
}

/* ------------------------------------------------------------ inputs */

static const uint8_t *key_of(const sim_world *w, const pbft_sigref *s)
{
    if (s->is_client) {
        if (s->signer < SIM_CLIENT_BASE || s->signer - SIM_CLIENT_BASE >= w->nclients)
            return NULL;
        return w->clients[s->signer - SIM_CLIENT_BASE].key.pk;
    }
    return s->signer < w->n ? w->rkeys[s->signer].pk : NULL;
}

/* Every signature the message carries, nested ones included, must verify
 * against the key of the identity it names (pbft.h trust boundary). */
static bool verify(sim_world *w, sim_node *nd, const pbft_msg *m)
{
    pbft_sigref stack[32];
    pbft_sigref *refs = stack;
    int k = pbft_msg_signatures(m, refs, 32);
    if (k < 0)
        return false;
    if (k > 32) {
        refs = malloc((size_t)k * sizeof *refs);
        if (!refs)
            return false;
        int k2 = pbft_msg_signatures(m, refs, (size_t)k);
        if (k2 != k) {
            free(refs);
            return false;
        }
    }
    bool ok = true;
    for (int i = 0; i < k && ok; i++) {
        const uint8_t *pk = key_of(w, &refs[i]);
        if (!pk) {
            ok = false;
        } else if (fb_sigcache_lookup(nd->cache, pk, refs[i].digest, refs[i].sig)) {
            w->res->counters[SIM_C_SIGCACHE_HITS]++;
        } else {
            /* A miss here is a verification the node would do. */
            w->res->counters[SIM_C_VERIFIES]++;
            if (fb_sigcache_lookup(w->memo, pk, refs[i].digest, refs[i].sig)) {
                fb_sigcache_insert(nd->cache, pk, refs[i].digest, refs[i].sig);
            } else if (fb_sig_verify(pk, refs[i].digest, refs[i].sig) == 0) {
                w->res->counters[SIM_C_ED25519]++;
                fb_sigcache_insert(w->memo, pk, refs[i].digest, refs[i].sig);
                fb_sigcache_insert(nd->cache, pk, refs[i].digest, refs[i].sig);
            } else {
                w->res->counters[SIM_C_ED25519]++;
                ok = false;
            }
        }
    }
    if (refs != stack)
        free(refs);
    return ok;
}

void node_deliver(sim_world *w, sim_node *nd, const sim_pkt *pkt)
{
    if (!nd->up) {
        w->res->counters[SIM_C_DROP_DOWN]++;
        return;
    }
    if (nd->bz && byz_is_silent(w, nd)) {
        w->res->faults[SIM_F_SILENT]++; /* ignored, never answered */
        return;
    }
    uint32_t from = pkt->src_client ? w->clients[pkt->src].id : w->nodes[pkt->src].id;
    pbft_msg *m = NULL;
    char err[200];
    /* The replica's own lookup: a request relayed in a PRE-PREPARE reuses the
     * digest computed when it arrived from its client. */
    if (pbft_parse(nd->r, pkt->data, pkt->len, &m, err, sizeof err) != 0) {
        w->res->counters[SIM_C_DROP_PARSE]++;
        sim_trace(w, TR_DROP_PARSE, nd->idx, from, pkt->len, 0, 0);
        return;
    }
    /* As the node does (on_replica_frame): the link names the replica that
     * sent a protocol message; only a REQUEST may be relayed.  A COMMIT has
     * no signature, so this check is what authenticates it. */
    bool link_ok = pkt->src_client || m->type == FEDBFT__MSG_TYPE__MSG_REQUEST || m->sender == from;
    if (!link_ok || !verify(w, nd, m)) {
        w->res->counters[SIM_C_DROP_SIG]++;
        sim_trace(w, TR_DROP_SIG, nd->idx, from, (uint64_t)m->type, m->sender, 0);
        pbft_msg_unref(m);
        return;
    }
    if (nd->bz)
        byz_observe(w, nd, m);
    /* Signatures authenticate the content; the link says who handed it over.
     * Straight from a client it is PBFT_EV_REQUEST; a REQUEST a replica
     * relays (a backup forwarding to the primary, or a replay) is a message
     * from a replica, which may not, e.g., ask for a read-only execution. */
    pbft_event ev = {
        .kind = pkt->src_client ? PBFT_EV_REQUEST : PBFT_EV_MESSAGE, .now_ms = w->now, .msg = m};
    w->res->counters[SIM_C_DELIVERED]++;
    sim_trace(w, TR_DELIVER, nd->idx, from, (uint64_t)m->type, msg_view_of(m), msg_seq_of(m));
    sim_fingerprint(w, ((uint64_t)nd->idx << 40) ^ ((uint64_t)m->digest[0] << 32) ^
                           ((uint64_t)m->digest[1] << 24) ^ m->digest[2]);
    node_step(w, nd, &ev);
    pbft_msg_unref(m);
}

void node_timer(sim_world *w, sim_node *nd, uint64_t gen)
{
    if (!nd->up || gen != nd->timer_gen)
        return;
    nd->timer_at = 0;
    /* A replica that keeps asking for a TICK at the instant it was ticked
     * would spin forever without simulated time advancing: a livelock. */
    if (nd->tick_at_ms == w->now) {
        if (++nd->ticks_at_ms > 1000) {
            sim_fail(w, "replica %u asks for a TICK at %llu ms over and over (livelock)", nd->id,
                     (unsigned long long)w->now);
            return;
        }
    } else {
        nd->tick_at_ms = w->now;
        nd->ticks_at_ms = 1;
    }
    pbft_event ev = {.kind = PBFT_EV_TICK, .now_ms = w->now};
    node_step(w, nd, &ev);
}

/* ------------------------------------------------------------ state transfer */

static void install(sim_world *w, sim_node *nd, const sim_snapshot *s)
{
    uint8_t app_dig[FB_DIGEST_LEN];
    app_digest(&s->app, app_dig);
    uint8_t *ct = dup_bytes(s->ct, s->ct_len);
    if (!ct) {
        sim_fail(w, "harness: out of memory installing state");
        return;
    }
    /* Durable first, then reported: the install is done when stepped. */
    nd->app = s->app;
    sim_disk *d = &nd->disk;
    free(d->ct);
    d->ct = ct;
    d->ct_len = s->ct_len;
    d->app = s->app;
    d->last_executed = s->seq;
    sim_snapshot copy = *s;
    snapshot_add(w, nd, copy.seq, &copy.app, ct, copy.ct_len, app_dig);
    nd->fetching = false;
    if (!nd->faulty)
        check_install(w, nd, s->seq, &s->app);
    nd->exec_last = s->seq;
    if (nd->exec.pending) {
        /* A batch still in the executor (calm runs): the installed state
         * replaces it, and the replica no longer waits for its EXECUTED. */
        exec_clear(&nd->exec);
        nd->exec_gen++;
        nd->exec_sched = false;
    }
    w->res->counters[SIM_C_STATE_TRANSFERS]++;
    sim_trace(w, TR_INSTALL, nd->idx, s->seq, 0, 0, 0);
    pbft_event ev = {.kind = PBFT_EV_STATE_INSTALLED, .now_ms = w->now};
    ev.installed.seq = s->seq;
    memcpy(ev.installed.app_digest, app_dig, FB_DIGEST_LEN);
    ev.installed.client_table = d->ct;
    ev.installed.client_table_len = d->ct_len;
    node_step(w, nd, &ev);
}

static const sim_snapshot *snapshot_at(const sim_node *nd, uint64_t seq)
{
    for (size_t i = 0; i < nd->disk.nsnaps; i++)
        if (nd->disk.snaps[i].seq == seq)
            return &nd->disk.snaps[i];
    return NULL;
}

void node_fetch(sim_world *w, sim_node *nd, uint64_t gen)
{
    if (!nd->up || !nd->fetching || gen != nd->fetch_gen)
        return;
    uint32_t start = (uint32_t)rng_below(&w->rng, w->ninst);
    for (uint32_t k = 0; k < w->ninst && !w->failed; k++) {
        sim_node *peer = &w->nodes[(start + k) % w->ninst];
        if (peer->id == nd->id || !peer->up || !net_link_up(w, false, peer->idx, false, nd->idx))
            continue;
        const sim_snapshot *snap = snapshot_at(peer, nd->fetch_seq);
        if (!snap)
            continue;
        sim_snapshot bad;
        bool lie = peer->bz && byz_corrupt_state(w, peer, snap, &bad);
        const sim_snapshot *offer = lie ? &bad : snap;
        uint8_t app_dig[FB_DIGEST_LEN], d[FB_DIGEST_LEN];
        app_digest(&offer->app, app_dig);
        pbft_state_digest(app_dig, offer->ct, offer->ct_len, d);
        bool match = memcmp(d, nd->fetch_digest, FB_DIGEST_LEN) == 0;
        if (!match) {
            if (lie) {
                w->res->faults[SIM_F_BAD_STATE]++;
                free(bad.ct);
                continue;
            }
            if (!peer->faulty && !nd->faulty)
                sim_fail(w,
                         "state transfer: correct replica %u's checkpoint at seq %llu does not "
                         "match the digest correct replica %u fetches",
                         peer->id, (unsigned long long)nd->fetch_seq, nd->id);
            continue;
        }
        install(w, nd, offer);
        if (lie)
            free(bad.ct);
        return;
    }
    /* Nobody reachable holds it yet (or any more): try again shortly.  The
     * replica may meanwhile ask for a newer checkpoint, superseding this. */
    sim_schedule(w, w->now + 50, EV_FETCH, nd->idx, gen, NULL);
}
