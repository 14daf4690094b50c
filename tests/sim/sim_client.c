/* sim_client.c - BFT clients: one outstanding signed request each.
 *
 * PBFT section 4.1: a client sends its request to the primary it believes
 * in, broadcasts it to every replica when no answer comes in time, and
 * accepts a result once f+1 replicas sent the same one for its timestamp
 * (at least one of them is correct).  Timestamps rise strictly per client.
 */
#include "sim_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int client_init(sim_world *w, sim_client *c, uint32_t idx)
{
    memset(c, 0, sizeof *c);
    c->id = SIM_CLIENT_BASE + idx;
    uint8_t seed[FB_SEED_LEN];
    for (size_t i = 0; i < sizeof seed; i++)
        seed[i] = (uint8_t)rng_next(&w->rng);
    return fb_key_from_seed(seed, &c->key);
}

static void votes_clear(sim_client *c)
{
    for (size_t i = 0; i < SIM_MAX_N; i++) {
        free(c->votes[i].res);
        c->votes[i] = (sim_vote){0};
    }
}

void client_free(sim_client *c)
{
    votes_clear(c);
    free(c->raw);
    c->raw = NULL;
}

/* A value some client wrote or may write, so CAS sometimes succeeds. */
static size_t some_value(sim_world *w, uint8_t *buf, size_t cap)
{
    const sim_client *o = &w->clients[rng_below(&w->rng, w->nclients)];
    unsigned long long ts = o->ts ? rng_range(&w->rng, 1, o->ts) : 1;
    int len = snprintf((char *)buf, cap, "c%u-%llu", o->id, ts);
    return len < 0 ? 0 : (size_t)len < cap ? (size_t)len : cap - 1;
}

/* Sign a request for the next timestamp and make it the outstanding one. */
static bool make_request(sim_world *w, sim_client *c, const Fedbft__Operation *op, bool read_only)
{
    Fedbft__Request rq = FEDBFT__REQUEST__INIT;
    rq.client = c->id;
    rq.timestamp = c->ts + 1;
    rq.op = (Fedbft__Operation *)op;
    rq.read_only = read_only;
    pbft_signer signer = {node_sign, &c->key};
    pbft_msg *m = NULL;
    if (pbft_msg_make(FEDBFT__MSG_TYPE__MSG_REQUEST, c->id, &rq.base, &signer, NULL, &m) != 0) {
        sim_fail(w, "harness: client %u cannot make a request", c->id);
        return false;
    }
    free(c->raw);
    c->raw = malloc(m->raw_len);
    if (!c->raw) {
        pbft_msg_unref(m);
        sim_fail(w, "harness: out of memory issuing a request");
        return false;
    }
    memcpy(c->raw, m->raw, m->raw_len);
    c->len = m->raw_len;
    pbft_msg_unref(m);
    c->ts++;
    c->read_only = read_only;
    c->rkey = op->key.len == 2 ? op->key.data[1] - '0' : -1;
    votes_clear(c);
    sim_trace(w, TR_REQUEST, SIM_NONE, c->id, c->ts, (uint64_t)op->kind | (read_only ? 0x100 : 0),
              0);
    return true;
}

void client_issue(sim_world *w, uint32_t idx)
{
    sim_client *c = &w->clients[idx];
    c->issue_pending = false;
    if (c->finished || c->outstanding)
        return;
    uint8_t key[2] = {'k', (uint8_t)('0' + rng_below(&w->rng, SIM_KEYS))};
    uint8_t value[SIM_VAL_MAX], expected[SIM_VAL_MAX];
    int vlen =
        snprintf((char *)value, sizeof value, "c%u-%llu", c->id, (unsigned long long)(c->ts + 1));
    Fedbft__Operation op = FEDBFT__OPERATION__INIT;
    op.key = (ProtobufCBinaryData){sizeof key, key};
    bool read_only = false;
    uint64_t pick = rng_below(&w->rng, 100);
    if (pick < 35) {
        op.kind = FEDBFT__OPERATION__KIND__OP_PUT;
        op.value = (ProtobufCBinaryData){(size_t)vlen, value};
    } else if (pick < 60) {
        op.kind = FEDBFT__OPERATION__KIND__OP_GET;
        read_only = rng_ppm(&w->rng, w->read_only_ppm);
    } else if (pick < 70) {
        op.kind = FEDBFT__OPERATION__KIND__OP_DEL;
    } else {
        op.kind = FEDBFT__OPERATION__KIND__OP_CAS;
        op.value = (ProtobufCBinaryData){(size_t)vlen, value};
        if (rng_below(&w->rng, 10) < 3)
            op.expect_absent = true;
        else
            op.expected = (ProtobufCBinaryData){some_value(w, expected, sizeof expected), expected};
    }
    if (!make_request(w, c, &op, read_only))
        return;
    c->outstanding = true;
    c->issued_at = w->now;
    c->deadline = w->healed ? w->now + w->bound : 0;
    /* Ordered requests go to the primary first (section 4.1); read-only ones
     * to every replica, since 2f+1 must answer. */
    net_client_send(w, idx, read_only ? SIM_ALL : pbft_primary(c->view_hint, w->n), c->raw, c->len);
    c->timer_gen++;
    sim_schedule(w, w->now + w->client_retx_ms, EV_CLIENT_TIMER, idx, c->timer_gen, NULL);
}

void client_timer(sim_world *w, uint32_t idx, uint64_t gen)
{
    sim_client *c = &w->clients[idx];
    if (!c->outstanding || gen != c->timer_gen)
        return;
    if (w->calm) {
        /* Drawn above the calm bound (calm_timers): check_liveness fails first. */
        sim_fail(w,
                 "CALM: client %u retransmits ts %llu (issued at %llu ms) in a run without faults",
                 c->id, (unsigned long long)c->ts, (unsigned long long)c->issued_at);
        return;
    }
    if (c->read_only) {
        /* No 2f+1 matching read-only answers (replicas at different states,
         * or behind our last write): fall back to an ordered GET with a new
         * timestamp, keeping the original issue time and deadline. */
        uint8_t key[2] = {'k', (uint8_t)('0' + c->rkey)};
        Fedbft__Operation op = FEDBFT__OPERATION__INIT;
        op.kind = FEDBFT__OPERATION__KIND__OP_GET;
        op.key = (ProtobufCBinaryData){sizeof key, key};
        if (!make_request(w, c, &op, false))
            return;
        w->res->counters[SIM_C_RO_FALLBACK]++;
    }
    /* No answer in time: every replica gets it, so that backups start
     * their request timers and a faulty primary is voted out. */
    net_client_send(w, idx, SIM_ALL, c->raw, c->len);
    sim_schedule(w, w->now + w->client_retx_ms, EV_CLIENT_TIMER, idx, gen, NULL);
}

static void next_request(sim_world *w, uint32_t idx)
{
    sim_client *c = &w->clients[idx];
    if (w->healed ? c->done_post >= c->max_post : c->done_pre >= c->max_pre) {
        /* Before the heal: wait for it (client_heal); after: done. */
        if (w->healed)
            c->finished = true;
        return;
    }
    c->issue_pending = true;
    sim_schedule(w, w->now + rng_range(&w->rng, w->think_min_ms, w->think_max_ms), EV_CLIENT_ISSUE,
                 idx, 0, NULL);
}

static void accept(sim_world *w, uint32_t idx, const sim_vote *v)
{
    sim_client *c = &w->clients[idx];
    /* check_liveness runs between events; a calm run also checks the event
     * that completes the request, however late. */
    if (w->calm)
        check_liveness(w);
    if (c->read_only) {
        check_read(w, c, v);
        w->res->counters[SIM_C_READ_ONLY]++;
    } else {
        check_accept(w, c, c->ts, v->res, v->len);
        /* Later reads must reflect at least this state: the highest seq
         * among the matching replies (a faulty replica can only raise it,
         * which costs a fallback, never a stale read). */
        for (uint32_t r = 0; r < w->n; r++) {
            const sim_vote *o = &c->votes[r];
            if (o->have && o->len == v->len &&
                (v->len == 0 || memcmp(o->res, v->res, v->len) == 0) && o->seq > c->last_write_seq)
                c->last_write_seq = o->seq;
        }
        if (v->seq > c->last_write_seq)
            c->last_write_seq = v->seq;
    }
    uint64_t lat = w->now - c->issued_at;
    if (lat > w->res->max_latency_ms)
        w->res->max_latency_ms = lat;
    if (w->healed) {
        uint64_t from = c->issued_at > w->heal_at ? c->issued_at : w->heal_at;
        if (w->now - from > w->res->max_latency_heal_ms)
            w->res->max_latency_heal_ms = w->now - from;
        c->done_post++;
    } else {
        c->done_pre++;
    }
    w->res->counters[SIM_C_REQUESTS]++;
    sim_trace(w, TR_ACCEPT, SIM_NONE, c->id, c->ts, lat, 0);
    sim_fingerprint(w, ((uint64_t)c->id << 32) ^ c->ts);
    c->outstanding = false;
    c->deadline = 0;
    free(c->raw);
    c->raw = NULL;
    votes_clear(c);
    c->timer_gen++;
    next_request(w, idx);
}

void client_reply(sim_world *w, const sim_pkt *pkt)
{
    sim_client *c = &w->clients[pkt->dst];
    if (!c->outstanding || pkt->rep_ts != c->ts || pkt->rep_replica >= w->n)
        return;
    if (pkt->rep_view > c->view_hint)
        c->view_hint = pkt->rep_view;
    sim_vote *v = &c->votes[pkt->rep_replica];
    uint8_t *copy = malloc(pkt->len ? pkt->len : 1);
    if (!copy) {
        sim_fail(w, "harness: out of memory taking a reply");
        return;
    }
    if (pkt->len)
        memcpy(copy, pkt->data, pkt->len);
    free(v->res);
    *v = (sim_vote){true, copy, pkt->len, pkt->rep_seq};
    /* Ordered: f+1 matching results (one is correct).  Read-only: 2f+1, each
     * from a state at least as new as our last write (DESIGN.md). */
    uint32_t same = 0;
    for (uint32_t r = 0; r < w->n; r++) {
        const sim_vote *o = &c->votes[r];
        if (o->have && o->len == v->len && (v->len == 0 || memcmp(o->res, v->res, v->len) == 0) &&
            (!c->read_only || o->seq >= c->last_write_seq))
            same++;
    }
    if (same >= (c->read_only ? 2 * w->f + 1 : w->f + 1)) {
        sim_vote keep = *v;
        v->res = NULL; /* accept() clears the votes; keep this one alive */
        v->have = false;
        accept(w, pkt->dst, &keep);
        free(keep.res);
    }
}

void client_heal(sim_world *w, sim_client *c)
{
    if (c->outstanding)
        c->deadline = w->heal_at + w->bound;
    else if (!c->finished && !c->issue_pending)
        next_request(w, (uint32_t)(c - w->clients));
}

bool clients_done(const sim_world *w)
{
    for (uint32_t i = 0; i < w->nclients; i++)
        if (!w->clients[i].finished)
            return false;
    return true;
}

bool clients_stuck(const sim_world *w)
{
    for (uint32_t i = 0; i < w->nclients; i++) {
        const sim_client *c = &w->clients[i];
        if (!c->finished && !c->outstanding && !c->issue_pending)
            return true;
    }
    return false;
}
