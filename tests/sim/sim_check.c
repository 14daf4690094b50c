/* sim_check.c - the properties every run must keep, checked as it goes.
 *
 * Safety (PBFT section 4.5.1), over correct replicas only:
 *   - at each sequence number every correct replica executes the same batch
 *     (digest over nondet and the requests it executed) and reaches the same
 *     application hash chain, so histories are equal prefixes;
 *   - each replica executes seq s right after s-1 (or after an installed
 *     checkpoint), never skipping or repeating one;
 *   - a request executes at one sequence number with one result everywhere;
 *   - every result a client accepted (f+1 matching replies) is the result a
 *     correct replica durably executed for that request;
 *   - correct replicas agree on checkpoint digests, which equal
 *     pbft_state_digest over the app digest and the exported client table.
 * Liveness (section 4.5.2): after the heal every outstanding request
 * completes within check_bound().  In a calm run (no faults at all, or f
 * replicas down for good) no request may need a timer: each completes
 * within check_calm_bound(), message rounds only, and no view changes.
 */
#include "sim_int.h"

#include <stdlib.h>
#include <string.h>

/* Far beyond any run's length: a correct replica executing such a seq is
 * broken (and an array indexed by it would be enormous). */
#define SEQ_SANE 1000000

static sim_seq_rec *seq_rec(sim_world *w, uint64_t seq)
{
    sim_check *c = &w->chk;
    if (seq > SEQ_SANE) {
        sim_fail(w, "a correct replica reached seq %llu", (unsigned long long)seq);
        return NULL;
    }
    if (seq >= c->nseqs) {
        size_t n = c->nseqs ? c->nseqs : 256;
        while (n <= seq)
            n *= 2;
        sim_seq_rec *s = realloc(c->seqs, n * sizeof *s);
        if (!s) {
            sim_fail(w, "harness: out of memory in the checker");
            return NULL;
        }
        memset(s + c->nseqs, 0, (n - c->nseqs) * sizeof *s);
        c->seqs = s;
        c->nseqs = n;
    }
    return &c->seqs[seq];
}

static sim_req_rec *req_rec(sim_world *w, uint32_t client, uint64_t ts)
{
    sim_check *c = &w->chk;
    if (client < SIM_CLIENT_BASE || client - SIM_CLIENT_BASE >= w->nclients) {
        sim_fail(w, "a correct replica executed a request of unknown client %u", client);
        return NULL;
    }
    uint32_t i = client - SIM_CLIENT_BASE;
    if (ts == 0 || ts > w->clients[i].ts) {
        sim_fail(w, "a correct replica executed request (client %u, ts %llu) the client never sent",
                 client, (unsigned long long)ts);
        return NULL;
    }
    if (ts >= c->nreqs[i]) {
        size_t n = c->nreqs[i] ? c->nreqs[i] : 64;
        while (n <= ts)
            n *= 2;
        sim_req_rec *r = realloc(c->reqs[i], n * sizeof *r);
        if (!r) {
            sim_fail(w, "harness: out of memory in the checker");
            return NULL;
        }
        memset(r + c->nreqs[i], 0, (n - c->nreqs[i]) * sizeof *r);
        c->reqs[i] = r;
        c->nreqs[i] = n;
    }
    return &c->reqs[i][ts];
}

static void hash_bytes(const uint8_t *p, size_t len, uint8_t out[FB_DIGEST_LEN])
{
    crypto_generichash(out, FB_DIGEST_LEN, p, len, NULL, 0);
}

void check_free(sim_check *c)
{
    free(c->said);
    free(c->seqs);
    for (size_t i = 0; i < SIM_MAX_CLIENTS; i++)
        free(c->reqs[i]);
    memset(c, 0, sizeof *c);
}

void check_exec(sim_world *w, sim_node *nd, const sim_exec *ex, const sim_app *app)
{
    const uint8_t *chain = app->chain;
    if (ex->seq != nd->exec_last + 1) {
        sim_fail(w, "replica %u executed seq %llu right after seq %llu (a gap or a repeat)", nd->id,
                 (unsigned long long)ex->seq, (unsigned long long)nd->exec_last);
        return;
    }
    sim_seq_rec *r = seq_rec(w, ex->seq);
    if (!r)
        return;
    if (!r->set) {
        r->set = true;
        r->first = nd->idx;
        memcpy(r->digest, ex->batch_digest, FB_DIGEST_LEN);
        memcpy(r->chain, chain, FB_DIGEST_LEN);
        r->app = *app;
    } else if (memcmp(r->digest, ex->batch_digest, FB_DIGEST_LEN) != 0) {
        sim_fail(w, "SAFETY: replicas %u and %u executed different batches at seq %llu",
                 w->nodes[r->first].id, nd->id, (unsigned long long)ex->seq);
        return;
    } else if (memcmp(r->chain, chain, FB_DIGEST_LEN) != 0) {
        sim_fail(w,
                 "SAFETY: replicas %u and %u executed the same batch at seq %llu from "
                 "different histories",
                 w->nodes[r->first].id, nd->id, (unsigned long long)ex->seq);
        return;
    }
    for (size_t i = 0; i < ex->nres; i++) {
        sim_req_rec *q = req_rec(w, ex->client[i], ex->ts[i]);
        if (!q)
            return;
        uint8_t h[FB_DIGEST_LEN];
        hash_bytes(ex->res[i].data, ex->res[i].len, h);
        if (!q->set) {
            q->set = true;
            q->seq = ex->seq;
            memcpy(q->result, h, FB_DIGEST_LEN);
        } else if (q->seq != ex->seq) {
            sim_fail(w,
                     "SAFETY: request (client %u, ts %llu) executed at seq %llu and again at seq "
                     "%llu (replica %u)",
                     ex->client[i], (unsigned long long)ex->ts[i], (unsigned long long)q->seq,
                     (unsigned long long)ex->seq, nd->id);
            return;
        } else if (memcmp(q->result, h, FB_DIGEST_LEN) != 0) {
            sim_fail(w, "SAFETY: request (client %u, ts %llu) has two results at seq %llu",
                     ex->client[i], (unsigned long long)ex->ts[i], (unsigned long long)ex->seq);
            return;
        }
    }
    sim_fingerprint(w, ex->seq ^ ((uint64_t)ex->batch_digest[0] << 56) ^
                           ((uint64_t)chain[0] << 48) ^ ((uint64_t)nd->idx << 40));
}

void check_install(sim_world *w, sim_node *nd, uint64_t seq, const sim_app *app)
{
    const uint8_t *chain = app->chain;
    if (seq < nd->exec_last) {
        sim_fail(w,
                 "replica %u installed checkpoint state at seq %llu after executing up to %llu "
                 "(rolled back)",
                 nd->id, (unsigned long long)seq, (unsigned long long)nd->exec_last);
        return;
    }
    sim_seq_rec *r = seq_rec(w, seq);
    if (!r)
        return;
    if (!r->set) {
        r->set = true;
        r->first = nd->idx;
        memset(r->digest, 0, FB_DIGEST_LEN);
        memcpy(r->chain, chain, FB_DIGEST_LEN);
        r->app = *app;
    } else if (memcmp(r->chain, chain, FB_DIGEST_LEN) != 0) {
        sim_fail(w,
                 "SAFETY: replica %u installed a state at seq %llu that differs from what "
                 "replica %u executed",
                 nd->id, (unsigned long long)seq, w->nodes[r->first].id);
    }
}

void check_checkpoint(sim_world *w, sim_node *nd, uint64_t seq, const uint8_t digest[FB_DIGEST_LEN])
{
    sim_seq_rec *r = seq_rec(w, seq);
    if (!r)
        return;
    if (!r->ckpt_set) {
        r->ckpt_set = true;
        memcpy(r->ckpt, digest, FB_DIGEST_LEN);
    } else if (memcmp(r->ckpt, digest, FB_DIGEST_LEN) != 0) {
        sim_fail(w,
                 "SAFETY: correct replicas sent different CHECKPOINT digests at seq %llu "
                 "(replica %u differs)",
                 (unsigned long long)seq, nd->id);
        return;
    }
    for (size_t i = 0; i < nd->disk.nsnaps; i++) {
        const sim_snapshot *s = &nd->disk.snaps[i];
        if (s->seq == seq && memcmp(s->state_digest, digest, FB_DIGEST_LEN) != 0)
            sim_fail(w,
                     "replica %u's CHECKPOINT at seq %llu is not pbft_state_digest(app digest, "
                     "client table exported after that seq)",
                     nd->id, (unsigned long long)seq);
    }
    sim_trace(w, TR_CKPT, nd->idx, seq, digest[0], 0, 0);
}

void check_accept(sim_world *w, sim_client *c, uint64_t ts, const uint8_t *res, size_t len)
{
    sim_req_rec *q = req_rec(w, c->id, ts);
    if (!q)
        return;
    uint8_t h[FB_DIGEST_LEN];
    hash_bytes(res, len, h);
    if (!q->set)
        sim_fail(w,
                 "SAFETY: client %u accepted f+1 replies for ts %llu, which no correct replica "
                 "executed",
                 c->id, (unsigned long long)ts);
    else if (memcmp(q->result, h, FB_DIGEST_LEN) != 0)
        sim_fail(w,
                 "SAFETY: client %u accepted a result for ts %llu that differs from the one "
                 "executed at seq %llu",
                 c->id, (unsigned long long)ts, (unsigned long long)q->seq);
}

/* A read-only result the client accepted: each correct replica among the
 * matching repliers must have read it from the committed state at the seq
 * it reported (DESIGN.md: any committed prefix), and at least one of them
 * must be correct. */
void check_read(sim_world *w, sim_client *c, const sim_vote *accepted)
{
    uint32_t correct = 0;
    for (uint32_t i = 0; i < w->n; i++) {
        const sim_vote *v = &c->votes[i];
        if (!v->have || v->len != accepted->len ||
            (v->len && memcmp(v->res, accepted->res, v->len) != 0) || w->faulty[i])
            continue;
        correct++;
        sim_app initial;
        app_init(&initial);
        const sim_app *state = &initial;
        if (v->seq > 0) {
            sim_seq_rec *r = seq_rec(w, v->seq);
            if (!r)
                return;
            if (!r->set) {
                sim_fail(w,
                         "replica %u answered read-only ts %llu of client %u at seq %llu, which "
                         "no correct replica executed",
                         i, (unsigned long long)c->ts, c->id, (unsigned long long)v->seq);
                return;
            }
            state = &r->app;
        }
        uint8_t want[2 + SIM_VAL_MAX];
        size_t len = app_read(state, c->rkey, want);
        if (len != v->len || memcmp(want, v->res, len) != 0) {
            sim_fail(w,
                     "SAFETY: replica %u's read-only answer to client %u ts %llu is not the "
                     "state at the seq %llu it reported",
                     i, c->id, (unsigned long long)c->ts, (unsigned long long)v->seq);
            return;
        }
    }
    if (correct == 0)
        sim_fail(w, "SAFETY: client %u accepted a read-only result no correct replica sent", c->id);
}

static uint64_t said_hash(uint32_t id, int type, uint64_t view, uint64_t seq)
{
    uint64_t h = ((uint64_t)id << 40) ^ ((uint64_t)type << 32) ^ view * 0x9e3779b97f4a7c15ULL ^
                 seq * 0xc2b2ae3d27d4eb4fULL;
    return h ^ (h >> 31);
}

static bool said_grow(sim_check *c)
{
    size_t cap = c->saidcap ? 2 * c->saidcap : 1024;
    sim_said *t = calloc(cap, sizeof *t);
    if (!t)
        return false;
    for (size_t i = 0; i < c->saidcap; i++) {
        const sim_said *e = &c->said[i];
        if (!e->used)
            continue;
        size_t j = said_hash(e->id, e->type, e->view, e->seq) & (cap - 1);
        while (t[j].used)
            j = (j + 1) & (cap - 1);
        t[j] = *e;
    }
    free(c->said);
    c->said = t;
    c->saidcap = cap;
    return true;
}

/* The digest that identifies what a message says at its (type, view, seq):
 * the batch digest for votes and pre-prepares, the envelope digest for
 * VIEW-CHANGE (per new view) and NEW-VIEW (per view). */
void check_said(sim_world *w, sim_node *nd, const pbft_msg *m)
{
    const uint8_t *d;
    uint64_t view = msg_view_of(m), seq = msg_seq_of(m);
    switch (m->type) {
    case FEDBFT__MSG_TYPE__MSG_PRE_PREPARE:
        d = m->u.pre_prepare->digest.data;
        break;
    case FEDBFT__MSG_TYPE__MSG_PREPARE:
        d = m->u.prepare->digest.data;
        break;
    case FEDBFT__MSG_TYPE__MSG_COMMIT:
        d = m->u.commit->digest.data;
        break;
    case FEDBFT__MSG_TYPE__MSG_VIEW_CHANGE:
    case FEDBFT__MSG_TYPE__MSG_NEW_VIEW:
        d = m->digest;
        seq = 0;
        break;
    default:
        return;
    }
    sim_check *c = &w->chk;
    if (2 * (c->nsaid + 1) > c->saidcap && !said_grow(c)) {
        sim_fail(w, "harness: out of memory in the checker");
        return;
    }
    size_t j = said_hash(nd->id, m->type, view, seq) & (c->saidcap - 1);
    for (;; j = (j + 1) & (c->saidcap - 1)) {
        sim_said *e = &c->said[j];
        if (!e->used) {
            *e = (sim_said){true, nd->id, m->type, view, seq, {0}, w->now};
            memcpy(e->digest, d, FB_DIGEST_LEN);
            c->nsaid++;
            return;
        }
        if (e->id == nd->id && e->type == m->type && e->view == view && e->seq == seq) {
            if (memcmp(e->digest, d, FB_DIGEST_LEN) != 0)
                sim_fail(w,
                         "correct replica %u contradicts itself: type-%d message for view %llu "
                         "seq %llu differs from the one it sent at %llu ms",
                         nd->id, m->type, (unsigned long long)view, (unsigned long long)seq,
                         (unsigned long long)e->at);
            return;
        }
    }
}

void check_liveness(sim_world *w)
{
    for (uint32_t i = 0; i < w->nclients; i++) {
        const sim_client *c = &w->clients[i];
        if (c->outstanding && c->deadline && w->now > c->deadline && w->calm) {
            sim_fail(w,
                     "CALM: client %u's request ts %llu (issued at %llu ms) not complete at %llu "
                     "ms in a run without faults: bound %llu ms (D %llu ms, batch delay %llu ms, "
                     "%u clients, K %u, L %u, max in flight %u); only a timer would finish it",
                     c->id, (unsigned long long)c->ts, (unsigned long long)c->issued_at,
                     (unsigned long long)w->now, (unsigned long long)w->bound,
                     (unsigned long long)net_max_delay(w),
                     (unsigned long long)w->cfg.batch_max_delay_ms, w->nclients,
                     w->cfg.checkpoint_interval, w->cfg.log_window, w->cfg.max_inflight);
            return;
        }
        if (c->outstanding && c->deadline && w->now > c->deadline) {
            sim_fail(w,
                     "LIVENESS: client %u's request ts %llu (issued at %llu ms) not complete at "
                     "%llu ms; healed at %llu ms, bound %llu ms",
                     c->id, (unsigned long long)c->ts, (unsigned long long)c->issued_at,
                     (unsigned long long)w->now, (unsigned long long)w->heal_at,
                     (unsigned long long)w->bound);
            return;
        }
    }
}

/* How long after the heal (or after issue, if later) a request may take.
 *
 * The replica waits for NEW-VIEW T_v << min(backoff - 1, cap) once a quorum
 * of VIEW-CHANGEs for its target view is in (cap = view_change_max_backoff),
 * where backoff counts the view changes it started since it last executed a
 * non-null batch or restarted.  Each moves it at least one view up, so
 * backoff <= B = its view minus its view at that moment (view_base); take
 * the largest B among correct replicas at the heal.  After the heal the
 * network is timely, so a view with a correct primary succeeds; the pending
 * view change plus at most b views with faulty primaries (b faulty
 * identities) plus one for correct replicas converging from different views
 * can fail first, each doubling the wait (up to the cap):
 *   sum over j = 0 .. b+1 of T_v << min(B + 1 + j, cap).
 * Before that the request must reach the backups (client retransmission
 * CR) and time out there (T_r); lost votes come back within a
 * retransmission period (RT); a message round costs at most D after the
 * heal and a packet delayed before it at most the spike maximum.  40 rounds
 * and 1 s cover batching, checkpoints, the replica's 1 s FETCH_STATE retry
 * and client retries. */
uint64_t check_bound(const sim_world *w)
{
    uint64_t b = 0;
    for (uint32_t j = 0; j < w->ninst; j++) {
        const sim_node *nd = &w->nodes[j];
        if (!nd->faulty && nd->view > nd->view_base && nd->view - nd->view_base > b)
            b = nd->view - nd->view_base;
    }
    uint64_t cap = w->cfg.view_change_max_backoff, chain = 0;
    for (uint64_t j = 0; j <= w->nfaulty + 1; j++) {
        uint64_t shift = b + 1 + j < cap ? b + 1 + j : cap;
        chain += w->cfg.view_change_timeout_ms << shift;
    }
    return w->client_retx_ms + w->cfg.retransmit_ms + w->cfg.request_timeout_ms + chain +
           40 * net_max_delay(w) + w->spike_max + 1000;
}

/* How long a request may take in a calm run: message rounds, batching and
 * execution, no timer.
 *
 * With D the one-way delay bound (no loss, no spikes), B the batch delay and
 * E the slowest executor's time per batch, a request alone takes
 * 5 D + B + E: to the primary, which cuts a batch at once when nothing is in
 * flight and within B otherwise; PRE-PREPARE, PREPARE and COMMIT to every
 * correct replica; execution; REPLY.  Ahead of it at the primary wait at
 * most c - 1 requests (c clients, one outstanding request each), in at most
 * c - 1 batches.  The primary keeps at most M = max_inflight batches in
 * flight and none above H = h + L, so each wave of 5 D + B + W E lets at
 * least W = min(M, K) more batches go: they commit everywhere within 3 D of
 * their proposal and execute one after another within W E; the checkpoint
 * they reach is stable everywhere one CHECKPOINT round later, which moves H
 * by at least K (L >= 2K); and a backup whose window lagged the primary's
 * steps the PRE-PREPARE and votes it held for just above its H at that
 * moment, one more round at most.  Two rounds of slack.  (The worst latency
 * seen over thousands of seeds is about 70% of this.)
 *
 * calm_timers draws every timer above this bound, so that a request which
 * needed one (a primary that missed its wake-up, a dropped message waiting
 * for a retransmission) overruns it. */
uint64_t check_calm_bound(const sim_world *w)
{
    uint64_t d = net_max_delay(w), b = w->cfg.batch_max_delay_ms;
    uint64_t per_wave = w->cfg.max_inflight < w->cfg.checkpoint_interval
                            ? w->cfg.max_inflight
                            : w->cfg.checkpoint_interval;
    uint64_t e = per_wave * w->exec_max_ms; /* the wave through the slowest executor */
    uint64_t ahead = w->nclients > 0 ? w->nclients - 1 : 0;
    uint64_t waves = (ahead + per_wave - 1) / per_wave;
    return (waves + 1) * (5 * d + b + e) + 2 * d;
}
