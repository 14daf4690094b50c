/* ops.c - a fixed table of requests in flight and the finished ones worth
 * showing. */
#include "ops.h"

#include "fb_error.h"

#include <stdlib.h>
#include <string.h>

typedef struct op {
    uint32_t client;
    uint64_t timestamp;
    uint64_t seq;
    uint64_t at[OPS_NPHASES]; /* µs, 0 = not seen */
    uint64_t first_us;        /* earliest phase seen */
    int used;
} op;

struct ops {
    op table[OPS_TRACKED]; /* open addressing by (client, timestamp) */
    uint32_t in_flight;
    op recent[OPS_RECENT];
    uint32_t nrecent, recent_head;
    op slowest[OPS_SLOWEST];
    uint32_t nslowest;
};

static const char *names[OPS_NPHASES] = {"received",  "pre_prepared", "prepared",
                                         "committed", "executed",     "replied"};

const char *ops_phase_name(ops_phase p)
{
    return p < OPS_NPHASES ? names[p] : "?";
}

int ops_new(ops **out)
{
    *out = calloc(1, sizeof **out);
    return *out ? 0 : FB_ENOMEM;
}

void ops_free(ops *o)
{
    free(o);
}

static uint32_t slot_of(uint32_t client, uint64_t ts)
{
    uint64_t h = (ts ^ ((uint64_t)client << 32)) * 0x9E3779B97F4A7C15ULL;
    return (uint32_t)(h >> 40) % OPS_TRACKED;
}

/* The entry for (client, ts); created if create.  With the table full the
 * probe is bounded: an old entry in the way is overwritten (forgotten). */
static op *find(ops *o, uint32_t client, uint64_t ts, int create)
{
    uint32_t s = slot_of(client, ts);
    for (int probe = 0; probe < 16; probe++, s = (s + 1) % OPS_TRACKED) {
        op *e = &o->table[s];
        if (e->used && e->client == client && e->timestamp == ts)
            return e;
        if (!e->used && create) {
            memset(e, 0, sizeof *e);
            e->used = 1;
            e->client = client;
            e->timestamp = ts;
            o->in_flight++;
            return e;
        }
    }
    if (!create)
        return NULL;
    op *e = &o->table[slot_of(client, ts)];
    memset(e, 0, sizeof *e);
    e->used = 1;
    e->client = client;
    e->timestamp = ts;
    return e;
}

void ops_mark(ops *o, uint32_t client, uint64_t timestamp, ops_phase phase, uint64_t seq,
              uint64_t now_us)
{
    op *e = find(o, client, timestamp, 1);
    if (!e->at[phase])
        e->at[phase] = now_us;
    if (seq)
        e->seq = seq;
    if (!e->first_us || now_us < e->first_us)
        e->first_us = now_us;
}

static uint64_t total_us(const op *e)
{
    return e->at[OPS_REPLIED] > e->first_us ? e->at[OPS_REPLIED] - e->first_us : 0;
}

double ops_finish(ops *o, uint32_t client, uint64_t timestamp, uint64_t now_us,
                  double durations[OPS_NPHASES])
{
    op *e = find(o, client, timestamp, 0);
    for (int p = 0; p < OPS_NPHASES; p++)
        durations[p] = 0;
    if (!e)
        return 0;
    if (!e->at[OPS_REPLIED])
        e->at[OPS_REPLIED] = now_us;
    uint64_t prev = 0;
    for (int p = 0; p < OPS_NPHASES; p++) {
        if (e->at[p] && prev && e->at[p] >= prev)
            durations[p] = (double)(e->at[p] - prev) / 1e6;
        if (e->at[p])
            prev = e->at[p];
    }
    op done = *e;
    e->used = 0;
    if (o->in_flight)
        o->in_flight--;
    o->recent[o->recent_head] = done;
    o->recent_head = (o->recent_head + 1) % OPS_RECENT;
    if (o->nrecent < OPS_RECENT)
        o->nrecent++;
    /* keep the slowest: replace the fastest of them if this one is slower */
    uint32_t at = o->nslowest;
    if (o->nslowest == OPS_SLOWEST) {
        at = 0;
        for (uint32_t i = 1; i < OPS_SLOWEST; i++)
            if (total_us(&o->slowest[i]) < total_us(&o->slowest[at]))
                at = i;
        if (total_us(&o->slowest[at]) >= total_us(&done))
            return (double)total_us(&done) / 1e6;
    } else {
        o->nslowest++;
    }
    o->slowest[at] = done;
    return (double)total_us(&done) / 1e6;
}

static json_t *op_json(const op *e)
{
    json_t *phases = json_object();
    uint64_t prev = 0;
    for (int p = 0; p < OPS_NPHASES; p++) {
        if (e->at[p] && prev && e->at[p] >= prev)
            json_object_set_new(phases, names[p], json_real((double)(e->at[p] - prev) / 1000.0));
        if (e->at[p])
            prev = e->at[p];
    }
    return json_pack("{s:i, s:I, s:I, s:f, s:o}", "client", (int)e->client, "timestamp",
                     (json_int_t)e->timestamp, "seq", (json_int_t)e->seq, "total_ms",
                     (double)total_us(e) / 1000.0, "phase_ms", phases);
}

static int by_total_desc(const void *a, const void *b)
{
    uint64_t x = total_us(a), y = total_us(b);
    return x < y ? 1 : x > y ? -1 : 0;
}

json_t *ops_json(const ops *o)
{
    json_t *recent = json_array(), *slowest = json_array();
    for (uint32_t i = 0; i < o->nrecent; i++) {
        uint32_t idx = (o->recent_head + OPS_RECENT - 1 - i) % OPS_RECENT; /* newest first */
        json_array_append_new(recent, op_json(&o->recent[idx]));
    }
    op sorted[OPS_SLOWEST];
    memcpy(sorted, o->slowest, o->nslowest * sizeof *sorted);
    qsort(sorted, o->nslowest, sizeof *sorted, by_total_desc);
    for (uint32_t i = 0; i < o->nslowest; i++)
        json_array_append_new(slowest, op_json(&sorted[i]));
    return json_pack("{s:i, s:o, s:o}", "in_flight", (int)o->in_flight, "recent", recent, "slowest",
                     slowest);
}
