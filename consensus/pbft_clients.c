/* pbft_clients.c - the client table and the pending-request FIFO. */
#include "pbft_clients.h"

#include "fb_error.h"

#include <stdlib.h>
#include <string.h>

int pbft_clients_init(pbft_clients *t, uint32_t cap)
{
    memset(t, 0, sizeof *t);
    uint32_t slots = 1;
    while (slots < cap * 2)
        slots <<= 1;
    t->recs = calloc(cap, sizeof *t->recs);
    t->index = calloc(slots, sizeof *t->index);
    if (!t->recs || !t->index) {
        pbft_clients_close(t);
        return FB_ENOMEM;
    }
    t->cap = cap;
    t->index_mask = slots - 1;
    return 0;
}

void pbft_clients_close(pbft_clients *t)
{
    for (uint32_t i = 0; t->recs && i < t->count; i++) {
        free(t->recs[i].reply);
        pbft_msg_unref(t->recs[i].pending);
    }
    free(t->recs);
    free(t->index);
    memset(t, 0, sizeof *t);
}

static uint32_t slot_of(uint32_t id, uint32_t mask)
{
    /* Fibonacci hashing spreads sequential client ids. */
    return (uint32_t)((id * 2654435769u) >> 7) & mask;
}

pbft_client *pbft_clients_find(const pbft_clients *t, uint32_t id)
{
    for (uint32_t s = slot_of(id, t->index_mask);; s = (s + 1) & t->index_mask) {
        uint32_t i = t->index[s];
        if (i == 0)
            return NULL;
        if (t->recs[i - 1].id == id)
            return &t->recs[i - 1];
    }
}

pbft_client *pbft_clients_get(pbft_clients *t, uint32_t id)
{
    pbft_client *c = pbft_clients_find(t, id);
    if (c)
        return c;
    if (t->count == t->cap) {
        t->rejected_full++;
        return NULL;
    }
    uint32_t s = slot_of(id, t->index_mask);
    while (t->index[s] != 0)
        s = (s + 1) & t->index_mask;
    c = &t->recs[t->count++];
    memset(c, 0, sizeof *c);
    c->id = id;
    t->index[s] = t->count;
    return c;
}

void pbft_clients_enqueue(pbft_clients *t, pbft_client *c)
{
    if (c->queued || !c->pending)
        return;
    c->q_prev = t->q_tail;
    c->q_next = NULL;
    if (t->q_tail)
        t->q_tail->q_next = c;
    else
        t->q_head = c;
    t->q_tail = c;
    c->queued = true;
    t->nqueued++;
}

void pbft_clients_dequeue(pbft_clients *t, pbft_client *c)
{
    if (!c->queued)
        return;
    if (c->q_prev)
        c->q_prev->q_next = c->q_next;
    else
        t->q_head = c->q_next;
    if (c->q_next)
        c->q_next->q_prev = c->q_prev;
    else
        t->q_tail = c->q_prev;
    c->q_prev = c->q_next = NULL;
    c->queued = false;
    t->nqueued--;
}

void pbft_clients_set_pending(pbft_clients *t, pbft_client *c, pbft_msg *req, uint64_t now)
{
    if (!c->pending)
        t->npending++;
    else
        pbft_msg_unref(c->pending);
    c->pending = pbft_msg_ref(req);
    c->pending_since = now;
    c->proposed_seq = 0;
    pbft_clients_dequeue(t, c);
    pbft_clients_enqueue(t, c);
}

void pbft_clients_clear_pending(pbft_clients *t, pbft_client *c, uint64_t ts)
{
    if (!c->pending || c->pending->u.request->timestamp > ts)
        return;
    pbft_clients_dequeue(t, c);
    pbft_msg_unref(c->pending);
    c->pending = NULL;
    c->proposed_seq = 0;
    t->npending--;
}

int pbft_clients_record(pbft_clients *t, pbft_client *c, uint64_t ts, uint64_t view, uint64_t seq,
                        const uint8_t *reply, size_t len, size_t max)
{
    (void)t;
    if (len > max)
        len = max;
    uint8_t *copy = malloc(len ? len : 1);
    if (!copy)
        return FB_ENOMEM;
    if (len)
        memcpy(copy, reply, len);
    free(c->reply);
    c->reply = copy;
    c->reply_len = len;
    c->last_ts = ts;
    c->reply_view = view;
    c->reply_seq = seq;
    return 0;
}

static void put32(uint8_t *p, uint32_t v)
{
    for (int i = 3; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

static void put64(uint8_t *p, uint64_t v)
{
    for (int i = 7; i >= 0; i--, v >>= 8)
        p[i] = (uint8_t)v;
}

static uint64_t get(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

static int by_id(const void *a, const void *b)
{
    uint32_t x = (*(const pbft_client *const *)a)->id, y = (*(const pbft_client *const *)b)->id;
    return x < y ? -1 : x > y;
}

/* The view a request executed in is not state: replicas may execute the same
 * batch after committing it in different views.  It stays out of the blob. */
#define ROW_HDR (4 + 8 + 8 + 4)

int pbft_clients_export(const pbft_clients *t, uint8_t **out, size_t *len)
{
    pbft_client **rows = malloc((t->count ? t->count : 1) * sizeof *rows);
    if (!rows)
        return FB_ENOMEM;
    size_t n = 0, total = 0;
    for (uint32_t i = 0; i < t->count; i++) {
        if (t->recs[i].last_ts == 0)
            continue;
        rows[n++] = &t->recs[i];
        total += ROW_HDR + t->recs[i].reply_len;
    }
    qsort(rows, n, sizeof *rows, by_id);
    uint8_t *buf = malloc(total ? total : 1), *p = buf;
    if (!buf) {
        free(rows);
        return FB_ENOMEM;
    }
    for (size_t i = 0; i < n; i++) {
        const pbft_client *c = rows[i];
        put32(p, c->id);
        put64(p + 4, c->last_ts);
        put64(p + 12, c->reply_seq);
        put32(p + 20, (uint32_t)c->reply_len);
        if (c->reply_len)
            memcpy(p + ROW_HDR, c->reply, c->reply_len);
        p += ROW_HDR + c->reply_len;
    }
    free(rows);
    *out = buf;
    *len = total;
    return 0;
}

int pbft_clients_import(pbft_clients *t, const uint8_t *blob, size_t len, size_t max_reply)
{
    /* Validate the whole blob before changing anything. */
    size_t rows = 0;
    for (size_t off = 0; off < len; rows++) {
        if (len - off < ROW_HDR)
            return FB_ECORRUPT;
        uint64_t rlen = get(blob + off + 20, 4);
        if (rlen > max_reply || rlen > len - off - ROW_HDR)
            return FB_ECORRUPT;
        off += ROW_HDR + (size_t)rlen;
    }
    if (rows > t->cap)
        return FB_ETOOBIG;
    for (uint32_t i = 0; i < t->count; i++) {
        free(t->recs[i].reply);
        t->recs[i].reply = NULL;
        t->recs[i].reply_len = 0;
        t->recs[i].last_ts = t->recs[i].reply_view = t->recs[i].reply_seq = 0;
    }
    for (size_t off = 0; off < len;) {
        const uint8_t *p = blob + off;
        size_t rlen = (size_t)get(p + 20, 4);
        pbft_client *c = pbft_clients_get(t, (uint32_t)get(p, 4));
        if (!c)
            return FB_ETOOBIG;
        int rc = pbft_clients_record(t, c, get(p + 4, 8), 0, get(p + 12, 8), p + ROW_HDR, rlen,
                                     max_reply);
        if (rc)
            return rc;
        pbft_clients_clear_pending(t, c, c->last_ts);
        off += ROW_HDR + rlen;
    }
    return 0;
}
