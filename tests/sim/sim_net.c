/* sim_net.c - the PRNG, the event queue and the faulty network.
 *
 * Every packet is raw bytes with a delivery time drawn from the run's PRNG:
 * loss, duplication, delay spikes (hence reordering) and partitions are all
 * decided here, at send time, and partitions are checked again on arrival so
 * that one starting while a packet is in flight still cuts it.  The queue of
 * packets in flight is bounded (SIM_NET_CAP); beyond it packets are dropped
 * and counted, like a full socket buffer.
 */
#include "sim_int.h"

#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ PRNG */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

void rng_seed(sim_rng *r, uint64_t seed)
{
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&seed);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

uint64_t rng_next(sim_rng *r)
{
    uint64_t *s = r->s;
    uint64_t out = rotl(s[1] * 5, 7) * 9;
    uint64_t t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return out;
}

uint64_t rng_below(sim_rng *r, uint64_t bound)
{
    /* The modulo bias is irrelevant for fault injection; what matters is
     * that the draw is a pure function of the seed. */
    return bound ? rng_next(r) % bound : 0;
}

uint64_t rng_range(sim_rng *r, uint64_t lo, uint64_t hi)
{
    return hi <= lo ? lo : lo + rng_below(r, hi - lo + 1);
}

bool rng_ppm(sim_rng *r, uint32_t ppm)
{
    return rng_below(r, 1000000) < ppm;
}

/* ------------------------------------------------------------ event queue */

static bool ev_before(const sim_event *a, const sim_event *b)
{
    return a->at != b->at ? a->at < b->at : a->order < b->order;
}

void sim_schedule(sim_world *w, uint64_t at, uint32_t kind, uint32_t a, uint64_t b, sim_pkt *pkt)
{
    if (w->nheap == w->heapcap) {
        size_t cap = w->heapcap ? 2 * w->heapcap : 1024;
        sim_event *h = realloc(w->heap, cap * sizeof *h);
        if (!h) {
            /* Out of memory: losing the event is a harness failure, not a
             * replica bug; say so rather than crash. */
            pkt_free(pkt);
            sim_fail(w, "harness: out of memory growing the event queue");
            return;
        }
        w->heap = h;
        w->heapcap = cap;
    }
    if (at < w->now)
        at = w->now;
    sim_event ev = {at, w->order++, kind, a, b, pkt};
    size_t i = w->nheap++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!ev_before(&ev, &w->heap[parent]))
            break;
        w->heap[i] = w->heap[parent];
        i = parent;
    }
    w->heap[i] = ev;
    if (pkt)
        w->inflight++;
}

bool sim_pop(sim_world *w, sim_event *out)
{
    if (w->nheap == 0)
        return false;
    *out = w->heap[0];
    sim_event last = w->heap[--w->nheap];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const sim_event *best = &last;
        if (l < w->nheap && ev_before(&w->heap[l], best)) {
            m = l;
            best = &w->heap[l];
        }
        if (r < w->nheap && ev_before(&w->heap[r], best))
            m = r;
        if (m == i)
            break;
        w->heap[i] = w->heap[m];
        i = m;
    }
    if (w->nheap > 0)
        w->heap[i] = last;
    if (out->pkt)
        w->inflight--;
    return true;
}

void pkt_free(sim_pkt *p)
{
    if (p) {
        free(p->data);
        free(p);
    }
}

void sim_events_free(sim_world *w)
{
    for (size_t i = 0; i < w->nheap; i++)
        pkt_free(w->heap[i].pkt);
    free(w->heap);
    w->heap = NULL;
    w->nheap = w->heapcap = 0;
}

/* ------------------------------------------------------------ network */

void net_init(sim_world *w)
{
    sim_rng *r = &w->rng;
    w->delay_base = rng_range(r, 1, 5);
    w->delay_jitter = rng_range(r, 0, 15);
    if (w->calm)
        return; /* reliable from the start: every packet arrives within net_max_delay */
    w->loss_ppm =
        (uint32_t)(w->scenario == SIM_SC_NET ? rng_range(r, 0, 250000) : rng_range(r, 0, 100000));
    w->dup_ppm = (uint32_t)rng_range(r, 0, 50000);
    w->spike_ppm = (uint32_t)rng_range(r, 0, 30000);
    w->spike_max = rng_range(r, 50, 300);
}

void net_heal(sim_world *w)
{
    /* After the heal the network is reliable and timely: what makes the
     * liveness bound computable.  Packets already in flight keep their
     * (possibly spiked) arrival times; the bound allows for them. */
    w->loss_ppm = w->dup_ppm = w->spike_ppm = 0;
    w->part_active = false;
}

uint64_t net_max_delay(const sim_world *w)
{
    return w->delay_base + w->delay_jitter;
}

static int group_of(const sim_world *w, bool client, uint32_t idx)
{
    return client ? w->clients[idx].group : w->group[idx];
}

bool net_link_up(const sim_world *w, bool src_client, uint32_t src, bool dst_client, uint32_t dst)
{
    if (w->part_active && group_of(w, src_client, src) != group_of(w, dst_client, dst))
        return false;
    if (!src_client && !dst_client) {
        const sim_node *a = &w->nodes[src], *b = &w->nodes[dst];
        /* Twins: each instance of a twinned identity talks only to the
         * replicas on its own side, so each side sees one consistent twin. */
        if ((a->twin || b->twin) && a->side != b->side)
            return false;
    }
    return true;
}

static size_t endpoint(bool client, uint32_t idx)
{
    return client ? SIM_MAX_INST + idx : idx;
}

/* Put one packet on the wire with this run's faults. */
static void transmit(sim_world *w, sim_pkt *tmpl)
{
    if (!net_link_up(w, tmpl->src_client, tmpl->src, tmpl->dst_client, tmpl->dst)) {
        if (w->part_active)
            w->res->faults[SIM_F_PARTITION_DROP]++;
        return;
    }
    if (w->loss_ppm && rng_ppm(&w->rng, w->loss_ppm)) {
        w->res->faults[SIM_F_LOSS]++;
        return;
    }
    int copies = 1;
    if (w->dup_ppm && rng_ppm(&w->rng, w->dup_ppm)) {
        copies = 2;
        w->res->faults[SIM_F_DUP]++;
    }
    for (int c = 0; c < copies; c++) {
        if (w->inflight >= SIM_NET_CAP) {
            w->res->counters[SIM_C_DROP_QUEUE]++;
            continue;
        }
        uint64_t delay = w->delay_base + rng_below(&w->rng, w->delay_jitter + 1);
        if (w->spike_ppm && rng_ppm(&w->rng, w->spike_ppm)) {
            delay += rng_range(&w->rng, 50, w->spike_max);
            w->res->faults[SIM_F_DELAY_SPIKE]++;
        }
        uint64_t at = w->now + delay;
        uint64_t *last = &w->link_last[endpoint(tmpl->src_client, tmpl->src)]
                                      [endpoint(tmpl->dst_client, tmpl->dst)];
        if (at < *last)
            w->res->faults[SIM_F_REORDER]++;
        else
            *last = at;
        sim_pkt *p = malloc(sizeof *p);
        uint8_t *data = malloc(tmpl->len ? tmpl->len : 1);
        if (!p || !data) {
            free(p);
            free(data);
            sim_fail(w, "harness: out of memory sending a packet");
            return;
        }
        *p = *tmpl;
        if (tmpl->len)
            memcpy(data, tmpl->data, tmpl->len);
        p->data = data;
        sim_schedule(w, at, EV_PKT, 0, 0, p);
    }
}

void net_send(sim_world *w, uint32_t from_inst, uint32_t to, const uint8_t *raw, size_t len)
{
    uint32_t self = w->nodes[from_inst].id;
    for (uint32_t j = 0; j < w->ninst; j++) {
        uint32_t id = w->nodes[j].id;
        if (id == self || (to != SIM_ALL && id != to))
            continue;
        sim_pkt p = {.src = from_inst, .dst = j, .data = (uint8_t *)raw, .len = len};
        transmit(w, &p);
    }
}

void net_client_send(sim_world *w, uint32_t client, uint32_t to, const uint8_t *raw, size_t len)
{
    for (uint32_t j = 0; j < w->ninst; j++) {
        if (to != SIM_ALL && w->nodes[j].id != to)
            continue;
        sim_pkt p = {
            .src_client = true, .src = client, .dst = j, .data = (uint8_t *)raw, .len = len};
        transmit(w, &p);
    }
}

void net_reply(sim_world *w, uint32_t from_inst, uint32_t client_id, uint64_t ts, uint64_t view,
               uint64_t seq, const uint8_t *res, size_t len)
{
    if (client_id < SIM_CLIENT_BASE || client_id - SIM_CLIENT_BASE >= w->nclients)
        return;
    sim_pkt p = {.src = from_inst,
                 .dst_client = true,
                 .dst = client_id - SIM_CLIENT_BASE,
                 .data = (uint8_t *)res,
                 .len = len,
                 .reply = true,
                 .rep_replica = w->nodes[from_inst].id,
                 .rep_ts = ts,
                 .rep_view = view,
                 .rep_seq = seq};
    transmit(w, &p);
}

/* Partition kinds: 0 a random split of replicas and clients, 1 the current
 * primary alone (forces a view change), 2 one random replica alone (it falls
 * behind and may need state transfer). */
void net_partition_start(sim_world *w, uint64_t kind)
{
    uint8_t gid[SIM_MAX_N] = {0};
    if (kind == 0) {
        for (uint32_t i = 0; i < w->n; i++)
            gid[i] = (uint8_t)rng_below(&w->rng, 2);
        for (uint32_t c = 0; c < w->nclients; c++)
            w->clients[c].group = (int)rng_below(&w->rng, 2);
    } else {
        uint32_t lone = kind == 1 ? sim_current_primary(w) : (uint32_t)rng_below(&w->rng, w->n);
        gid[lone] = 1;
        for (uint32_t c = 0; c < w->nclients; c++)
            w->clients[c].group = 0;
    }
    for (uint32_t j = 0; j < w->ninst; j++)
        w->group[j] = gid[w->nodes[j].id];
    w->part_active = true;
    w->res->faults[SIM_F_PARTITION]++;
    uint64_t mask = 0;
    for (uint32_t i = 0; i < w->n; i++)
        mask |= (uint64_t)gid[i] << i;
    sim_trace(w, TR_PARTITION, SIM_NONE, kind, mask, 0, 0);
}

void net_partition_end(sim_world *w)
{
    w->part_active = false;
    sim_trace(w, TR_UNPARTITION, SIM_NONE, 0, 0, 0, 0);
}
