/* net.c - fedbft links over libuv TCP: listeners, dialling with backoff and
 * jitter, bounded send queues, every connection driven through a secure channel.
 *
 * Objects:
 *  - net_link: one per replica we dial (replica mode: every other replica's
 *    replica port; client mode: every replica's client port).  It lives as
 *    long as the net and holds what outlasts one TCP connection: the reconnect
 *    timer, the frames queued while the link is down (plaintext: they cannot be
 *    sealed before a handshake gives keys) and the per-replica counters.
 *  - conn: one TCP connection and its channel, dialled or accepted.  Freed
 *    when both of its handles (socket, deadline timer) have closed.
 *
 * Send path: fb_chan_write seals a record and hands it to io.send, which
 * appends it to the connection's byte queue.  The queue is a list of fixed
 * 64 KiB chunks taken from a small per-net pool, so the steady state
 * allocates nothing per message; one uv_write carries up to NET_WRITE_MAX_BUFS
 * chunks (many records each).  Every queue is bounded by send_queue_bytes,
 * counted as plaintext + FB_CHAN_OVERHEAD per frame, whether it waits sealed
 * or as plaintext; a frame that does not fit is dropped with FB_EBUSY.
 *
 * Receive path: every connection reads into its own fixed buffer and feeds
 * the channel; any channel error closes that connection and is counted:
 *   FB_EUNKNOWNKEY -> unknown_keys, FB_ETOOBIG -> oversized, every other error
 *   the peer caused (malformed, bad signature or tag, replay, reorder,
 *   truncation) -> garbage; before the handshake completed also
 *   handshakes_failed, and the replica's `rejected` when we know who it is.
 * A connection that does not finish its handshake within
 * NET_HANDSHAKE_TIMEOUT_MS, or that hangs up first, counts as handshakes_failed.
 *
 * Choices net.h leaves open:
 *  - net_stats.client_conns is a gauge (client connections open now, both
 *    authenticated and not); everything else there is a running total.
 *  - Connection slots are bounded: max_clients on the client port and
 *    NET_INBOUND_PER_REPLICA per other replica on the replica port.  When a
 *    port is full, the oldest connection that has not authenticated yet is
 *    closed to make room (so idle unauthenticated sockets cannot lock out real
 *    peers); if all are authenticated the newcomer is refused.  Client-port
 *    refusals count as client_conns_rejected, replica-port ones as
 *    handshakes_failed.
 *  - Inbound replica links accept every replica key but our own.  When a
 *    replica authenticates a new inbound link, its older inbound links are
 *    closed: a replica dials one link at a time, so the old one is dead.
 *  - on_replica_down / on_client_down run from the close callback of the
 *    connection (never from inside a channel call), and not during net_close.
 *  - Client connection ids count up from 1; after 2^32 - 1 connections they
 *    wrap, skipping 0 and ids still open.
 *  - Host names that are not IP literals are resolved with uv_getaddrinfo:
 *    asynchronously before every dial, synchronously in net_start for the
 *    listeners.
 *  - Fault injection (net_fault_set) sits in front of the link's send path
 *    and behind the channel's receive path, so what it drops or delays is
 *    whole frames and the secure channel never sees a gap.  A link's delay
 *    FIFO and its timer exist only once a delay was set.
 */
#include "net.h"

#include "channel.h"
#include "fb_error.h"

#include <sodium.h>
#include <stdio.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>

#define NET_CHUNK_SIZE (64u * 1024)
/* libuv copies a uv_buf_t array of more than 4 entries into a malloc'd one;
 * 4 chunks (256 KiB) per write keeps writes large without that allocation. */
#define NET_WRITE_MAX_BUFS 4
#define NET_POOL_MAX 64 /* free chunks kept per net (4 MiB) */
#define NET_READ_BUF (16u * 1024)
#define NET_CONNECT_TIMEOUT_MS 5000
#define NET_HANDSHAKE_TIMEOUT_MS 5000
#define NET_KEEPALIVE_S 15
#define NET_BACKLOG 128
#define NET_INBOUND_PER_REPLICA 4
#define NET_MAX_CLIENTS_LIMIT (1u << 24)
#define NET_DEFAULT_QUEUE (16ull << 20)
#define NET_DEFAULT_RECONNECT_MIN 100
#define NET_DEFAULT_RECONNECT_MAX 5000
#define NET_DEFAULT_MAX_CLIENTS 1024
#define NET_NO_ID UINT32_MAX
#define NET_DELAY_HDR 12 /* [8-byte due time, loop ms][4-byte length] */

/* ------------------------------------------------------------ types */

typedef struct chunk {
    struct chunk *next;
    size_t len; /* bytes written into data */
    uint8_t data[NET_CHUNK_SIZE];
} chunk;

/* A FIFO of bytes in chunks.  Every chunk but the tail is full. */
typedef struct bytequeue {
    chunk *head, *tail;
    size_t off;     /* bytes of head already consumed */
    uint64_t bytes; /* not yet consumed (a write in flight included) */
} bytequeue;

typedef enum conn_kind { CONN_DIAL = 1, CONN_IN_REPLICA = 2, CONN_IN_CLIENT = 3 } conn_kind;

typedef struct net_link net_link;

typedef struct conn {
    net *n;
    conn_kind kind;
    uv_tcp_t tcp;
    uv_timer_t timer; /* connect, then handshake deadline */
    uv_connect_t creq;
    uv_write_t wreq;
    int open_handles; /* close callbacks still to come */
    bool closing, tcp_up, established, writing;
    bool counted; /* holds a slot in nin_replica / nclient_conns */
    int io_err;   /* io.send failed during the current channel call */
    fb_chan *ch;
    net_link *link;     /* CONN_DIAL: the link it serves */
    uint32_t peer_id;   /* replica id once known, else NET_NO_ID */
    uint32_t client_id; /* CONN_IN_CLIENT: connection id */
    uint8_t peer_pk[FB_PK_LEN];
    bytequeue wq;      /* sealed records and handshake frames */
    uint64_t inflight; /* bytes of wq handed to the uv_write in flight */
    struct conn *prev, *next;
    uint8_t rbuf[NET_READ_BUF];
} conn;

struct net_link {
    net *n;
    uint32_t id;
    conn *c; /* the current dialled connection, NULL while down */
    uv_timer_t retry;
    bool retry_inited;
    uv_getaddrinfo_t gai;
    bool resolving;
    uint32_t attempts;     /* consecutive failed dials, for the backoff */
    bytequeue pending;     /* [4-byte length][plaintext] while down */
    uint64_t pending_cost; /* sum of (length + FB_CHAN_OVERHEAD) in pending */
    net_link_stats st;
    bool fault_drop_in, fault_drop_out; /* net_fault_set */
    uint32_t fault_delay_ms;
    bytequeue delayq; /* [NET_DELAY_HDR][frame] held back by fault_delay_ms */
    uv_timer_t delay;
    bool delay_inited;
};

struct net {
    net_mode mode;
    uv_loop_t *loop;
    const fb_identity *self;
    uint32_t self_id;
    const cfg_cluster *cluster;
    char listen_host[CFG_HOST_MAX];
    uint32_t max_frame;
    uint64_t send_queue_bytes;
    uint32_t reconnect_min_ms, reconnect_max_ms, max_clients;
    net_callbacks cb;

    net_link *links; /* [cluster->n]; links[self_id] unused in replica mode */
    uint8_t (*replica_keys)[FB_PK_LEN];
    uint8_t (*peer_keys)[FB_PK_LEN]; /* replica keys but ours */
    size_t npeer_keys;
    uint8_t (*client_keys)[FB_PK_LEN];

    uv_tcp_t lis_replica, lis_client;
    bool lis_replica_inited, lis_client_inited;

    conn *conns_head, *conns_tail; /* every conn not yet freed, oldest first */
    uint32_t nin_replica, nclient_conns;
    conn **client_table; /* open addressing by client id */
    uint32_t client_mask;
    uint32_t next_client_id;

    chunk *pool;
    uint32_t npool;
    uint64_t prng;

    net_stats st;
    uint64_t client_dropped; /* frames to clients dropped on a full queue */

    bool started, closing, close_done;
    uint64_t live; /* handles open + getaddrinfo requests in flight */
    void (*close_cb)(void *arg);
    void *close_arg;
};

static void conn_close(conn *c);

/* ------------------------------------------------------------ helpers */

static void put_be32(uint8_t out[4], uint32_t v)
{
    out[0] = (uint8_t)(v >> 24);
    out[1] = (uint8_t)(v >> 16);
    out[2] = (uint8_t)(v >> 8);
    out[3] = (uint8_t)v;
}

static uint32_t get_be32(const uint8_t in[4])
{
    return (uint32_t)in[0] << 24 | (uint32_t)in[1] << 16 | (uint32_t)in[2] << 8 | in[3];
}

static void put_be64(uint8_t out[8], uint64_t v)
{
    put_be32(out, (uint32_t)(v >> 32));
    put_be32(out + 4, (uint32_t)v);
}

static uint64_t get_be64(const uint8_t in[8])
{
    return (uint64_t)get_be32(in) << 32 | get_be32(in + 4);
}

/* xorshift64*: only for reconnect jitter, so peers that lost the same link do
 * not all redial in the same millisecond.  Seeded from libsodium. */
static uint64_t prng_next(net *n)
{
    uint64_t x = n->prng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    n->prng = x;
    return x * 0x2545F4914F6CDD1Dull;
}

static void maybe_finish_close(net *n)
{
    if (n->closing && n->live == 0 && !n->close_done) {
        n->close_done = true;
        if (n->close_cb)
            n->close_cb(n->close_arg);
    }
}

/* ------------------------------------------------------------ chunk queues */

static chunk *chunk_get(net *n)
{
    chunk *k = n->pool;
    if (k) {
        n->pool = k->next;
        n->npool--;
    } else {
        k = malloc(sizeof *k);
        if (!k)
            return NULL;
    }
    k->next = NULL;
    k->len = 0;
    return k;
}

static void chunk_put(net *n, chunk *k)
{
    if (n->npool < NET_POOL_MAX) {
        k->next = n->pool;
        n->pool = k;
        n->npool++;
    } else {
        free(k);
    }
}

static void chunks_put(net *n, chunk *k)
{
    while (k) {
        chunk *next = k->next;
        chunk_put(n, k);
        k = next;
    }
}

/* Copy into the queue using chunks already taken from the pool (cannot fail). */
static void bq_fill(bytequeue *q, chunk **spare, const uint8_t *p, size_t len)
{
    while (len > 0) {
        if (!q->tail || q->tail->len == NET_CHUNK_SIZE) {
            chunk *k = *spare;
            *spare = k->next;
            k->next = NULL;
            if (q->tail)
                q->tail->next = k;
            else
                q->head = k;
            q->tail = k;
        }
        size_t room = NET_CHUNK_SIZE - q->tail->len;
        size_t take = len < room ? len : room;
        memcpy(q->tail->data + q->tail->len, p, take);
        q->tail->len += take;
        q->bytes += take;
        p += take;
        len -= take;
    }
}

/* Append a then b, all or nothing: a half-queued record would corrupt the
 * stream. */
static int bq_append2(net *n, bytequeue *q, const uint8_t *a, size_t alen, const uint8_t *b,
                      size_t blen)
{
    size_t total = alen + blen;
    size_t room = q->tail ? NET_CHUNK_SIZE - q->tail->len : 0;
    chunk *spare = NULL;
    if (total > room) {
        size_t need = (total - room + NET_CHUNK_SIZE - 1) / NET_CHUNK_SIZE;
        for (size_t i = 0; i < need; i++) {
            chunk *k = chunk_get(n);
            if (!k) {
                chunks_put(n, spare);
                return FB_ENOMEM;
            }
            k->next = spare;
            spare = k;
        }
    }
    bq_fill(q, &spare, a, alen);
    bq_fill(q, &spare, b, blen);
    return 0;
}

/* Drop len bytes from the front, returning emptied chunks to the pool. */
static void bq_consume(net *n, bytequeue *q, uint64_t len)
{
    while (len > 0 && q->head) {
        chunk *h = q->head;
        size_t avail = h->len - q->off;
        size_t take = len < avail ? (size_t)len : avail;
        q->off += take;
        q->bytes -= take;
        len -= take;
        if (q->off == h->len) {
            q->head = h->next;
            if (!q->head)
                q->tail = NULL;
            q->off = 0;
            chunk_put(n, h);
        }
    }
}

/* Copy len bytes starting skip bytes into the queue; the caller checked that
 * they are there. */
static void bq_copy_out(const bytequeue *q, size_t skip, uint8_t *out, size_t len)
{
    const chunk *k = q->head;
    size_t pos = q->off + skip;
    while (k && pos >= k->len) {
        pos -= k->len;
        k = k->next;
    }
    while (len > 0 && k) {
        size_t take = k->len - pos < len ? k->len - pos : len;
        memcpy(out, k->data + pos, take);
        out += take;
        len -= take;
        pos = 0;
        k = k->next;
    }
}

/* The bytes at [skip, skip+len) if they sit in the head chunk, else NULL. */
static const uint8_t *bq_contig(const bytequeue *q, size_t skip, size_t len)
{
    if (q->head && q->off + skip + len <= q->head->len)
        return q->head->data + q->off + skip;
    return NULL;
}

static void bq_clear(net *n, bytequeue *q)
{
    chunks_put(n, q->head);
    memset(q, 0, sizeof *q);
}

/* ------------------------------------------------------------ keys and ids */

static uint32_t replica_by_key(const net *n, const uint8_t pk[FB_PK_LEN])
{
    for (uint32_t i = 0; i < n->cluster->n; i++)
        if (sodium_memcmp(n->cluster->replicas[i].pk, pk, FB_PK_LEN) == 0)
            return i;
    return NET_NO_ID;
}

static uint32_t client_slot(const net *n, uint32_t id)
{
    return (id * 0x9E3779B1u) & n->client_mask;
}

static conn *client_find(const net *n, uint32_t id)
{
    if (!n->client_table)
        return NULL;
    for (uint32_t i = client_slot(n, id); n->client_table[i]; i = (i + 1) & n->client_mask)
        if (n->client_table[i]->client_id == id)
            return n->client_table[i];
    return NULL;
}

/* The table has at least twice as many slots as max_clients, so a free one
 * always exists. */
static void client_insert(net *n, conn *c)
{
    uint32_t i = client_slot(n, c->client_id);
    while (n->client_table[i])
        i = (i + 1) & n->client_mask;
    n->client_table[i] = c;
}

/* Linear-probing delete with backward shift, so lookups never need tombstones. */
static void client_remove(net *n, conn *c)
{
    uint32_t i = client_slot(n, c->client_id);
    while (n->client_table[i] != c) {
        if (!n->client_table[i])
            return;
        i = (i + 1) & n->client_mask;
    }
    n->client_table[i] = NULL;
    for (uint32_t j = (i + 1) & n->client_mask; n->client_table[j]; j = (j + 1) & n->client_mask) {
        uint32_t home = client_slot(n, n->client_table[j]->client_id);
        /* Move j back into the hole at i unless its home lies cyclically in (i, j]. */
        bool stays = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (!stays) {
            n->client_table[i] = n->client_table[j];
            n->client_table[j] = NULL;
            i = j;
        }
    }
}

static uint32_t next_client_id(net *n)
{
    for (;;) {
        uint32_t id = n->next_client_id++;
        if (id != 0 && !client_find(n, id))
            return id;
    }
}

/* ------------------------------------------------------------ write path */

static void on_write(uv_write_t *req, int status);

/* Start a write of what is queued, unless one is in flight: records queued
 * meanwhile go out together in the next one. */
static void conn_kick(conn *c)
{
    if (c->writing || c->closing || c->wq.bytes == 0)
        return;
    uv_buf_t bufs[NET_WRITE_MAX_BUFS];
    unsigned nb = 0;
    uint64_t total = 0;
    size_t off = c->wq.off;
    for (chunk *k = c->wq.head; k && nb < NET_WRITE_MAX_BUFS; k = k->next) {
        bufs[nb] = uv_buf_init((char *)k->data + off, (unsigned)(k->len - off));
        total += k->len - off;
        nb++;
        off = 0;
    }
    int rc = uv_write(&c->wreq, (uv_stream_t *)&c->tcp, bufs, nb, on_write);
    if (rc) {
        conn_close(c);
        return;
    }
    c->writing = true;
    c->inflight = total;
}

static void on_write(uv_write_t *req, int status)
{
    conn *c = req->data;
    c->writing = false;
    /* A closing connection's chunks are released when it is freed. */
    if (c->closing)
        return;
    if (status < 0) {
        conn_close(c);
        return;
    }
    bq_consume(c->n, &c->wq, c->inflight);
    c->inflight = 0;
    conn_kick(c);
}

/* ------------------------------------------------------------ channel io */

static void chan_send(void *arg, const uint8_t *bytes, size_t len)
{
    conn *c = arg;
    if (c->closing)
        return;
    /* Handshake frames and records already admitted against the queue bound:
     * never dropped here, or the stream would break. */
    int rc = bq_append2(c->n, &c->wq, bytes, len, NULL, 0);
    if (rc) {
        c->io_err = rc;
        conn_close(c); /* safe here: calls neither the channel nor the user */
        return;
    }
    conn_kick(c);
}

static net_link_stats *conn_replica_stats(conn *c)
{
    if (c->peer_id == NET_NO_ID)
        return NULL;
    return &c->n->links[c->peer_id].st;
}

static void chan_frame(void *arg, const uint8_t *plain, size_t len)
{
    conn *c = arg;
    net *n = c->n;
    if (c->closing || n->closing)
        return;
    if (c->kind == CONN_IN_CLIENT) {
        if (n->cb.on_client_frame)
            n->cb.on_client_frame(n->cb.arg, c->client_id, c->peer_pk, plain, len);
        return;
    }
    net_link_stats *st = conn_replica_stats(c);
    if (!st)
        return;
    if (n->links[c->peer_id].fault_drop_in) {
        st->fault_dropped_in++;
        return;
    }
    st->frames_in++;
    st->bytes_in += len;
    st->last_rx_ms = uv_now(n->loop);
    if (n->cb.on_replica_frame)
        n->cb.on_replica_frame(n->cb.arg, c->peer_id, plain, len);
}

/* Seal one frame on an established connection.  A refused write (too big for
 * the peer) leaves the link up; a failed channel closes it. */
static int conn_write(conn *c, const uint8_t *frame, size_t len, net_link_stats *st)
{
    c->io_err = 0;
    int rc = fb_chan_write(c->ch, frame, len);
    if (rc == 0 && c->io_err)
        rc = c->io_err;
    if (rc) {
        if (fb_chan_get_state(c->ch) == FB_CHAN_FAILED)
            conn_close(c);
        return rc;
    }
    if (st) {
        st->frames_out++;
        st->bytes_out += len;
    }
    return 0;
}

/* The dialled link just came up: seal what waited while it was down, in order. */
static void link_flush_pending(net_link *l, conn *c)
{
    uint8_t *scratch = NULL;
    while (l->pending.bytes >= 4 && !c->closing) {
        uint8_t hdr[4];
        bq_copy_out(&l->pending, 0, hdr, 4);
        uint32_t len = get_be32(hdr);
        const uint8_t *frame = bq_contig(&l->pending, 4, len);
        if (!frame) {
            /* Spans chunks: gather it (bounded by max_frame). */
            uint8_t *p = realloc(scratch, len ? len : 1);
            if (!p)
                break; /* leave it queued; the next handshake retries */
            scratch = p;
            bq_copy_out(&l->pending, 4, scratch, len);
            frame = scratch;
        }
        int rc = conn_write(c, frame, len, &l->st);
        bq_consume(l->n, &l->pending, 4 + (uint64_t)len);
        l->pending_cost -= (uint64_t)len + FB_CHAN_OVERHEAD;
        if (rc == FB_ETOOBIG)
            l->st.dropped++; /* the peer accepts smaller frames than we do */
        else if (rc)
            break;
    }
    free(scratch);
}

static void close_older_inbound(net *n, conn *keep)
{
    for (conn *o = n->conns_head; o; o = o->next)
        if (o != keep && o->kind == CONN_IN_REPLICA && o->established &&
            o->peer_id == keep->peer_id)
            conn_close(o);
}

static void link_dial(net_link *l);

/* The replica behind l just authenticated to us, so it is up again (a
 * restart): dial it now rather than when the backoff, up to
 * reconnect_max_ms, would have; what we queued for it goes out at once. */
static void redial_now(net *n, net_link *l)
{
    if (n->closing || l->c || l->resolving || !l->retry_inited ||
        !uv_is_active((const uv_handle_t *)&l->retry))
        return;
    uv_timer_stop(&l->retry);
    l->attempts = 0;
    link_dial(l);
}

static void chan_established(void *arg, const uint8_t pk[FB_PK_LEN])
{
    conn *c = arg;
    net *n = c->n;
    if (c->closing)
        return;
    uv_timer_stop(&c->timer);
    c->established = true;
    memcpy(c->peer_pk, pk, FB_PK_LEN);
    n->st.handshakes_ok++;
    switch (c->kind) {
    case CONN_DIAL: {
        net_link *l = c->link;
        l->st.connected = true;
        l->attempts = 0;
        link_flush_pending(l, c);
        if (!n->closing && !c->closing && n->cb.on_replica_up)
            n->cb.on_replica_up(n->cb.arg, l->id);
        break;
    }
    case CONN_IN_REPLICA:
        /* The allow-list holds replica keys only, so this always finds one. */
        c->peer_id = replica_by_key(n, pk);
        if (c->peer_id != NET_NO_ID) {
            close_older_inbound(n, c);
            redial_now(n, &n->links[c->peer_id]);
        }
        break;
    case CONN_IN_CLIENT:
        /* Tell the node at once which client this is, so replies can reach
         * it before it ever sends us a request (a client sends ordered
         * requests to the primary only, yet every replica must answer). */
        if (!n->closing && n->cb.on_client_up)
            n->cb.on_client_up(n->cb.arg, c->client_id, pk);
        break;
    }
}

/* ------------------------------------------------------------ connections */

static void conn_list_add(net *n, conn *c)
{
    c->prev = n->conns_tail;
    c->next = NULL;
    if (n->conns_tail)
        n->conns_tail->next = c;
    else
        n->conns_head = c;
    n->conns_tail = c;
}

static void conn_list_remove(net *n, conn *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        n->conns_head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    else
        n->conns_tail = c->prev;
}

static conn *conn_new(net *n, conn_kind kind)
{
    conn *c = calloc(1, sizeof *c);
    if (!c)
        return NULL;
    if (uv_tcp_init(n->loop, &c->tcp) != 0) {
        free(c);
        return NULL;
    }
    uv_timer_init(n->loop, &c->timer); /* cannot fail */
    n->live += 2;
    c->open_handles = 2;
    c->n = n;
    c->kind = kind;
    c->peer_id = NET_NO_ID;
    c->tcp.data = c;
    c->timer.data = c;
    c->creq.data = c;
    c->wreq.data = c;
    conn_list_add(n, c);
    return c;
}

static void link_schedule_retry(net_link *l);

/* Both handles are closed: nothing of libuv refers to c any more. */
static void conn_finish(conn *c)
{
    net *n = c->n;
    conn_kind kind = c->kind;
    net_link *l = c->link;
    bool was_up = c->established;
    uint32_t client_id = c->client_id;

    fb_chan_free(c->ch);
    bq_clear(n, &c->wq);
    conn_list_remove(n, c);
    free(c);

    if (!n->closing) {
        if (kind == CONN_DIAL) {
            if (was_up && n->cb.on_replica_down)
                n->cb.on_replica_down(n->cb.arg, l->id);
            link_schedule_retry(l);
        } else if (kind == CONN_IN_CLIENT && was_up && n->cb.on_client_down) {
            n->cb.on_client_down(n->cb.arg, client_id);
        }
    }
    maybe_finish_close(n); /* last: it may hand control to a callback that frees n */
}

static void on_conn_handle_closed(uv_handle_t *h)
{
    conn *c = h->data;
    c->n->live--;
    if (--c->open_handles == 0)
        conn_finish(c);
}

/* Close a connection.  Touches neither the channel nor user callbacks, so it
 * is safe from anywhere, io.send included; the rest happens in conn_finish. */
static void conn_close(conn *c)
{
    if (c->closing)
        return;
    net *n = c->n;
    c->closing = true;
    if (c->kind == CONN_DIAL && c->link->c == c) {
        c->link->c = NULL;
        c->link->st.connected = false;
    }
    if (c->counted) {
        if (c->kind == CONN_IN_CLIENT) {
            client_remove(n, c);
            n->nclient_conns--;
        } else {
            n->nin_replica--;
        }
        c->counted = false;
    }
    uv_close((uv_handle_t *)&c->tcp, on_conn_handle_closed);
    uv_close((uv_handle_t *)&c->timer, on_conn_handle_closed);
}

/* The peer misbehaved (rc from the channel): count why, then hang up. */
static void conn_reject(conn *c, int rc)
{
    net *n = c->n;
    if (c->closing)
        return;
    if (rc != FB_ENOMEM) {
        if (rc == FB_EUNKNOWNKEY)
            n->st.unknown_keys++;
        else if (rc == FB_ETOOBIG)
            n->st.oversized++;
        else
            n->st.garbage++;
        net_link_stats *st = conn_replica_stats(c);
        if (st)
            st->rejected++;
    }
    if (!c->established)
        n->st.handshakes_failed++;
    conn_close(c);
}

static void on_conn_timeout(uv_timer_t *t)
{
    conn *c = t->data;
    if (c->closing)
        return;
    if (c->tcp_up && !c->established) {
        c->n->st.handshakes_failed++;
        net_link_stats *st = conn_replica_stats(c);
        if (st)
            st->rejected++;
    }
    conn_close(c);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    conn *c = h->data;
    (void)suggested;
    *buf = uv_buf_init((char *)c->rbuf, sizeof c->rbuf);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    conn *c = s->data;
    (void)buf;
    if (c->closing || nread == 0)
        return;
    if (nread > 0) {
        int rc = fb_chan_feed(c->ch, c->rbuf, (size_t)nread);
        if (rc)
            conn_reject(c, rc);
        return;
    }
    if (nread == UV_EOF) {
        int rc = fb_chan_eof(c->ch);
        if (rc) {
            conn_reject(c, rc);
            return;
        }
    }
    if (!c->established)
        c->n->st.handshakes_failed++;
    conn_close(c);
}

static int conn_start_channel(conn *c, fb_chan_role role, const uint8_t (*allowed)[FB_PK_LEN],
                              size_t count, const uint8_t *expected)
{
    net *n = c->n;
    fb_chan_config cc;
    memset(&cc, 0, sizeof cc);
    cc.role = role;
    cc.self = n->self;
    cc.allowed = allowed;
    cc.allowed_count = count;
    cc.expected_peer = expected;
    cc.sender_id = n->self_id;
    cc.max_frame = n->max_frame;
    cc.io.send = chan_send;
    cc.io.frame = chan_frame;
    cc.io.established = chan_established;
    cc.io.arg = c;
    int rc = fb_chan_new(&cc, &c->ch);
    if (rc)
        return rc;
    c->tcp_up = true;
    uv_tcp_nodelay(&c->tcp, 1);
    uv_tcp_keepalive(&c->tcp, 1, NET_KEEPALIVE_S);
    uv_timer_start(&c->timer, on_conn_timeout, NET_HANDSHAKE_TIMEOUT_MS, 0);
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) != 0)
        return FB_EIO;
    if (role == FB_CHAN_INITIATOR) {
        c->io_err = 0;
        rc = fb_chan_start(c->ch);
        if (rc == 0)
            rc = c->io_err;
    }
    return rc;
}

/* ------------------------------------------------------------ dialling */

static void on_connect(uv_connect_t *req, int status)
{
    conn *c = req->data;
    if (c->closing)
        return;
    if (status < 0) {
        conn_close(c);
        return;
    }
    net_link *l = c->link;
    if (conn_start_channel(c, FB_CHAN_INITIATOR, (const uint8_t(*)[FB_PK_LEN])c->n->replica_keys,
                           c->n->cluster->n, c->n->cluster->replicas[l->id].pk) != 0)
        conn_close(c);
}

static void link_connect(net_link *l, const struct sockaddr *addr)
{
    net *n = l->n;
    conn *c = conn_new(n, CONN_DIAL);
    if (!c) {
        link_schedule_retry(l);
        return;
    }
    c->link = l;
    c->peer_id = l->id;
    l->c = c;
    uv_timer_start(&c->timer, on_conn_timeout, NET_CONNECT_TIMEOUT_MS, 0);
    if (uv_tcp_connect(&c->creq, &c->tcp, addr, on_connect) != 0)
        conn_close(c); /* conn_finish schedules the retry */
}

static int parse_literal(const char *host, uint16_t port, struct sockaddr_storage *out)
{
    memset(out, 0, sizeof *out);
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)out) == 0)
        return 0;
    if (uv_ip6_addr(host, port, (struct sockaddr_in6 *)out) == 0)
        return 0;
    return FB_EINVAL;
}

static uint16_t link_port(const net_link *l)
{
    const cfg_replica *r = &l->n->cluster->replicas[l->id];
    return l->n->mode == NET_MODE_REPLICA ? r->port : r->client_port;
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    net_link *l = req->data;
    net *n = l->n;
    l->resolving = false;
    n->live--;
    if (n->closing) {
        uv_freeaddrinfo(res);
        maybe_finish_close(n);
        return;
    }
    if (status < 0 || !res)
        link_schedule_retry(l);
    else
        link_connect(l, res->ai_addr);
    uv_freeaddrinfo(res);
}

static void link_dial(net_link *l)
{
    net *n = l->n;
    if (n->closing || l->c || l->resolving)
        return;
    const char *host = n->cluster->replicas[l->id].host;
    struct sockaddr_storage ss;
    if (parse_literal(host, link_port(l), &ss) == 0) {
        link_connect(l, (const struct sockaddr *)&ss);
        return;
    }
    /* A name: resolve it again on every dial, so a moved peer is found. */
    char port[8];
    snprintf(port, sizeof port, "%u", (unsigned)link_port(l));
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    l->gai.data = l;
    if (uv_getaddrinfo(n->loop, &l->gai, on_resolved, host, port, &hints) != 0) {
        link_schedule_retry(l);
        return;
    }
    l->resolving = true;
    n->live++;
}

static void on_retry(uv_timer_t *t)
{
    link_dial(t->data);
}

/* reconnect_min_ms doubling per failed dial up to reconnect_max_ms, plus up
 * to half of that again at random. */
static void link_schedule_retry(net_link *l)
{
    net *n = l->n;
    if (n->closing || !l->retry_inited)
        return;
    uint64_t delay = n->reconnect_min_ms;
    for (uint32_t i = 0; i < l->attempts && delay < n->reconnect_max_ms; i++)
        delay *= 2;
    if (delay > n->reconnect_max_ms)
        delay = n->reconnect_max_ms;
    delay += prng_next(n) % (delay / 2 + 1);
    if (l->attempts < UINT32_MAX)
        l->attempts++;
    uv_timer_start(&l->retry, on_retry, delay, 0);
}

/* ------------------------------------------------------------ accepting */

/* A port is full: close its oldest connection that has not authenticated, so
 * a flood of idle sockets cannot lock real peers out.  false if none. */
static bool evict_unauthenticated(net *n, conn_kind kind)
{
    for (conn *o = n->conns_head; o; o = o->next) {
        if (o->kind == kind && o->counted && !o->closing && !o->established) {
            if (kind == CONN_IN_CLIENT)
                n->st.client_conns_rejected++;
            else
                n->st.handshakes_failed++;
            conn_close(o);
            return true;
        }
    }
    return false;
}

static bool admit_inbound(net *n, conn *c)
{
    if (c->kind == CONN_IN_CLIENT) {
        if (n->cluster->nclients == 0 ||
            (n->nclient_conns >= n->max_clients && !evict_unauthenticated(n, CONN_IN_CLIENT))) {
            n->st.client_conns_rejected++;
            return false;
        }
        n->nclient_conns++;
        c->client_id = next_client_id(n);
        client_insert(n, c);
    } else {
        uint64_t limit = (uint64_t)NET_INBOUND_PER_REPLICA * n->npeer_keys;
        if (n->npeer_keys == 0 ||
            (n->nin_replica >= limit && !evict_unauthenticated(n, CONN_IN_REPLICA))) {
            n->st.handshakes_failed++;
            return false;
        }
        n->nin_replica++;
    }
    c->counted = true;
    return true;
}

static void on_accept(uv_stream_t *server, int status)
{
    net *n = server->data;
    if (status < 0 || n->closing)
        return;
    conn_kind kind = server == (uv_stream_t *)&n->lis_client ? CONN_IN_CLIENT : CONN_IN_REPLICA;
    conn *c = conn_new(n, kind);
    if (!c)
        return; /* out of memory: libuv pauses this listener until the next accept */
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0 || !admit_inbound(n, c)) {
        conn_close(c);
        return;
    }
    int rc;
    if (kind == CONN_IN_CLIENT)
        rc = conn_start_channel(c, FB_CHAN_RESPONDER, (const uint8_t(*)[FB_PK_LEN])n->client_keys,
                                n->cluster->nclients, NULL);
    else
        rc = conn_start_channel(c, FB_CHAN_RESPONDER, (const uint8_t(*)[FB_PK_LEN])n->peer_keys,
                                n->npeer_keys, NULL);
    if (rc)
        conn_close(c);
}

static int resolve_sync(uv_loop_t *loop, const char *host, uint16_t port,
                        struct sockaddr_storage *out)
{
    if (parse_literal(host, port, out) == 0)
        return 0;
    char portstr[8];
    snprintf(portstr, sizeof portstr, "%u", (unsigned)port);
    struct addrinfo hints;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE;
    uv_getaddrinfo_t req;
    int rc = uv_getaddrinfo(loop, &req, NULL, host, portstr, &hints); /* synchronous */
    if (rc != 0)
        return rc;
    memcpy(out, req.addrinfo->ai_addr, req.addrinfo->ai_addrlen);
    uv_freeaddrinfo(req.addrinfo);
    return 0;
}

static int start_listener(net *n, uv_tcp_t *lis, bool *inited, const char *host, uint16_t port,
                          const char *what, char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    int rc = resolve_sync(n->loop, host, port, &ss);
    if (rc != 0)
        return fb_errf(err, errlen, FB_EIO,
                       "cannot resolve listen address %s for the %s port %u: %s (check host in "
                       "cluster.json or listen in node.json)",
                       host, what, (unsigned)port, uv_strerror(rc));
    rc = uv_tcp_init(n->loop, lis);
    if (rc != 0)
        return fb_errf(err, errlen, FB_EIO, "cannot create the %s listener: %s", what,
                       uv_strerror(rc));
    *inited = true;
    n->live++;
    lis->data = n;
    rc = uv_tcp_bind(lis, (const struct sockaddr *)&ss, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)lis, NET_BACKLOG, on_accept);
    if (rc != 0)
        return fb_errf(err, errlen, FB_EIO,
                       "cannot listen on %s:%u (%s port): %s (is another process using it?)", host,
                       (unsigned)port, what, uv_strerror(rc));
    return 0;
}

/* ------------------------------------------------------------ public API */

int net_new(const net_config *cfg, const net_callbacks *cb, net **out, char *err, size_t errlen)
{
    if (!cfg || !out || !cfg->loop || !cfg->self || !cfg->cluster)
        return fb_errf(err, errlen, FB_EINVAL, "net_new: loop, self and cluster are required");
    if (cfg->mode != NET_MODE_REPLICA && cfg->mode != NET_MODE_CLIENT)
        return fb_errf(err, errlen, FB_EINVAL, "net_new: mode must be replica or client");
    const cfg_cluster *cl = cfg->cluster;
    if (cl->n == 0 || !cl->replicas)
        return fb_errf(err, errlen, FB_EINVAL, "net_new: the cluster has no replicas");
    if (cfg->mode == NET_MODE_REPLICA) {
        if (cfg->self_id >= cl->n)
            return fb_errf(err, errlen, FB_EINVAL,
                           "net_new: replica id %u is not in cluster.json (ids 0..%u)",
                           (unsigned)cfg->self_id, (unsigned)(cl->n - 1));
        if (sodium_memcmp(cl->replicas[cfg->self_id].pk, cfg->self->pk, FB_PK_LEN) != 0)
            return fb_errf(err, errlen, FB_EINVAL,
                           "net_new: our key is not the one cluster.json lists for replica %u "
                           "(wrong node.key?)",
                           (unsigned)cfg->self_id);
    }
    uint32_t rmin = cfg->reconnect_min_ms ? cfg->reconnect_min_ms : NET_DEFAULT_RECONNECT_MIN;
    uint32_t rmax = cfg->reconnect_max_ms ? cfg->reconnect_max_ms : NET_DEFAULT_RECONNECT_MAX;
    if (rmin > rmax)
        return fb_errf(err, errlen, FB_EINVAL,
                       "net_new: reconnect_min_ms %u exceeds reconnect_max_ms %u", (unsigned)rmin,
                       (unsigned)rmax);
    uint32_t max_clients = cfg->max_clients ? cfg->max_clients : NET_DEFAULT_MAX_CLIENTS;
    if (max_clients > NET_MAX_CLIENTS_LIMIT)
        return fb_errf(err, errlen, FB_EINVAL, "net_new: max_clients %u is over the limit %u",
                       (unsigned)max_clients, NET_MAX_CLIENTS_LIMIT);
    if (cfg->max_frame > UINT32_MAX - FB_CHAN_OVERHEAD)
        return fb_errf(err, errlen, FB_EINVAL, "net_new: max_frame %u is too large",
                       (unsigned)cfg->max_frame);

    net *n = calloc(1, sizeof *n);
    if (!n)
        return fb_errf(err, errlen, FB_ENOMEM, "net_new: out of memory");
    n->mode = cfg->mode;
    n->loop = cfg->loop;
    n->self = cfg->self;
    n->self_id = cfg->self_id;
    n->cluster = cl;
    if (cfg->listen_host)
        snprintf(n->listen_host, sizeof n->listen_host, "%s", cfg->listen_host);
    n->max_frame = cfg->max_frame ? cfg->max_frame : FB_CHAN_DEFAULT_MAX_FRAME;
    n->send_queue_bytes = cfg->send_queue_bytes ? cfg->send_queue_bytes : NET_DEFAULT_QUEUE;
    n->reconnect_min_ms = rmin;
    n->reconnect_max_ms = rmax;
    n->max_clients = max_clients;
    if (cb)
        n->cb = *cb;
    n->next_client_id = 1;
    randombytes_buf(&n->prng, sizeof n->prng);
    n->prng |= 1; /* xorshift must not start at 0 */

    n->links = calloc(cl->n, sizeof *n->links);
    n->replica_keys = calloc(cl->n, FB_PK_LEN);
    n->peer_keys = calloc(cl->n, FB_PK_LEN);
    n->client_keys = calloc(cl->nclients ? cl->nclients : 1, FB_PK_LEN);
    if (cfg->mode == NET_MODE_REPLICA) {
        uint32_t slots = 1;
        while (slots < 2 * max_clients)
            slots *= 2;
        n->client_mask = slots - 1;
        n->client_table = calloc(slots, sizeof *n->client_table);
    }
    if (!n->links || !n->replica_keys || !n->peer_keys || !n->client_keys ||
        (cfg->mode == NET_MODE_REPLICA && !n->client_table)) {
        net_free(n);
        return fb_errf(err, errlen, FB_ENOMEM, "net_new: out of memory");
    }
    for (uint32_t i = 0; i < cl->n; i++) {
        memcpy(n->replica_keys[i], cl->replicas[i].pk, FB_PK_LEN);
        if (cfg->mode != NET_MODE_REPLICA || i != cfg->self_id)
            memcpy(n->peer_keys[n->npeer_keys++], cl->replicas[i].pk, FB_PK_LEN);
        n->links[i].n = n;
        n->links[i].id = i;
    }
    for (uint32_t i = 0; i < cl->nclients; i++)
        memcpy(n->client_keys[i], cl->clients[i].pk, FB_PK_LEN);
    *out = n;
    return 0;
}

int net_start(net *n, char *err, size_t errlen)
{
    if (!n)
        return fb_errf(err, errlen, FB_EINVAL, "net_start: no net");
    if (n->started || n->closing)
        return fb_errf(err, errlen, FB_ESTATE, "net_start: already started or closing");
    n->started = true;
    if (n->mode == NET_MODE_REPLICA) {
        const cfg_replica *me = &n->cluster->replicas[n->self_id];
        const char *host = n->listen_host[0] ? n->listen_host : me->host;
        int rc = start_listener(n, &n->lis_replica, &n->lis_replica_inited, host, me->port,
                                "replica", err, errlen);
        if (rc == 0)
            rc = start_listener(n, &n->lis_client, &n->lis_client_inited, host, me->client_port,
                                "client", err, errlen);
        if (rc)
            return rc;
    }
    for (uint32_t i = 0; i < n->cluster->n; i++) {
        net_link *l = &n->links[i];
        if (n->mode == NET_MODE_REPLICA && i == n->self_id)
            continue;
        uv_timer_init(n->loop, &l->retry);
        l->retry.data = l;
        l->retry_inited = true;
        n->live++;
        link_dial(l);
    }
    return 0;
}

static uint64_t link_queued(const net_link *l)
{
    uint64_t q = l->pending_cost;
    if (l->c)
        q += l->c->wq.bytes;
    return q;
}

/* The send path behind fault injection: the link's queues. */
static int link_send(net_link *l, const uint8_t *frame, size_t len)
{
    net *n = l->n;
    uint64_t cost = (uint64_t)len + FB_CHAN_OVERHEAD;
    if (link_queued(l) + cost > n->send_queue_bytes) {
        l->st.dropped++;
        return FB_EBUSY;
    }
    conn *c = l->c;
    if (c && c->established && !c->closing) {
        /* Frames left over from an interrupted flush go first, to keep order. */
        if (l->pending.bytes)
            link_flush_pending(l, c);
        if (!l->pending.bytes && !c->closing)
            return conn_write(c, frame, len, &l->st);
    }
    /* Down or mid-handshake: keep the plaintext until keys exist. */
    uint8_t hdr[4];
    put_be32(hdr, (uint32_t)len);
    int rc = bq_append2(n, &l->pending, hdr, sizeof hdr, frame, len);
    if (rc)
        return rc;
    l->pending_cost += cost;
    return 0;
}

/* Hand every frame whose delay is over to the send path, oldest first, and
 * re-arm for the next. */
static void on_delay_timer(uv_timer_t *t)
{
    net_link *l = t->data;
    net *n = l->n;
    if (n->closing)
        return;
    uint64_t now = uv_now(n->loop);
    uint8_t *scratch = NULL;
    while (l->delayq.bytes >= NET_DELAY_HDR) {
        uint8_t hdr[NET_DELAY_HDR];
        bq_copy_out(&l->delayq, 0, hdr, sizeof hdr);
        uint64_t due = get_be64(hdr);
        uint32_t len = get_be32(hdr + 8);
        if (due > now) {
            uv_timer_start(t, on_delay_timer, due - now, 0);
            break;
        }
        const uint8_t *frame = bq_contig(&l->delayq, NET_DELAY_HDR, len);
        if (!frame) {
            uint8_t *p = realloc(scratch, len ? len : 1);
            if (p) {
                scratch = p;
                bq_copy_out(&l->delayq, NET_DELAY_HDR, scratch, len);
                frame = scratch;
            }
        }
        if (!frame)
            l->st.fault_delay_dropped++;
        else if (l->fault_drop_out)
            l->st.fault_dropped_out++;
        else
            (void)link_send(l, frame, len); /* a full send queue counts it as dropped */
        bq_consume(n, &l->delayq, NET_DELAY_HDR + (uint64_t)len);
    }
    free(scratch);
}

/* Hold a frame back for fault_delay_ms, behind any frame already held. */
static int link_delay(net_link *l, const uint8_t *frame, size_t len)
{
    net *n = l->n;
    if (!l->delay_inited || l->delayq.bytes + NET_DELAY_HDR + len > n->send_queue_bytes) {
        l->st.fault_delay_dropped++;
        return 0;
    }
    uint8_t hdr[NET_DELAY_HDR];
    put_be64(hdr, uv_now(n->loop) + l->fault_delay_ms);
    put_be32(hdr + 8, (uint32_t)len);
    bool was_empty = l->delayq.bytes == 0;
    int rc = bq_append2(n, &l->delayq, hdr, sizeof hdr, frame, len);
    if (rc)
        return rc;
    l->st.fault_delayed++;
    if (was_empty)
        uv_timer_start(&l->delay, on_delay_timer, l->fault_delay_ms, 0);
    return 0;
}

int net_send_replica(net *n, uint32_t id, const uint8_t *frame, size_t len)
{
    if (!n || (!frame && len > 0))
        return FB_EINVAL;
    if (id >= n->cluster->n || (n->mode == NET_MODE_REPLICA && id == n->self_id))
        return FB_EINVAL;
    if (n->closing)
        return FB_ESTATE;
    if (len > n->max_frame)
        return FB_ETOOBIG;
    net_link *l = &n->links[id];
    if (l->fault_drop_out) {
        l->st.fault_dropped_out++;
        return 0;
    }
    if (l->fault_delay_ms || l->delayq.bytes)
        return link_delay(l, frame, len);
    return link_send(l, frame, len);
}

static int fault_set_one(net *n, net_link *l, bool drop_in, bool drop_out, uint32_t delay_ms)
{
    if (delay_ms && !l->delay_inited) {
        if (n->closing)
            return FB_ESTATE;
        uv_timer_init(n->loop, &l->delay); /* cannot fail */
        l->delay.data = l;
        l->delay_inited = true;
        n->live++;
    }
    l->fault_drop_in = drop_in;
    l->fault_drop_out = drop_out;
    l->fault_delay_ms = delay_ms;
    return 0;
}

int net_fault_set(net *n, uint32_t replica, bool drop_in, bool drop_out, uint32_t delay_ms)
{
    if (!n)
        return FB_EINVAL;
    if (replica != NET_FAULT_ALL) {
        if (replica >= n->cluster->n || (n->mode == NET_MODE_REPLICA && replica == n->self_id))
            return FB_EINVAL;
        return fault_set_one(n, &n->links[replica], drop_in, drop_out, delay_ms);
    }
    for (uint32_t i = 0; i < n->cluster->n; i++) {
        if (n->mode == NET_MODE_REPLICA && i == n->self_id)
            continue;
        int rc = fault_set_one(n, &n->links[i], drop_in, drop_out, delay_ms);
        if (rc)
            return rc;
    }
    return 0;
}

void net_fault_clear(net *n)
{
    if (!n)
        return;
    for (uint32_t i = 0; i < n->cluster->n; i++) {
        n->links[i].fault_drop_in = false;
        n->links[i].fault_drop_out = false;
        n->links[i].fault_delay_ms = 0;
    }
}

int net_fault_get(net *n, uint32_t replica, bool *drop_in, bool *drop_out, uint32_t *delay_ms)
{
    if (!n || replica >= n->cluster->n)
        return FB_EINVAL;
    const net_link *l = &n->links[replica];
    if (drop_in)
        *drop_in = l->fault_drop_in;
    if (drop_out)
        *drop_out = l->fault_drop_out;
    if (delay_ms)
        *delay_ms = l->fault_delay_ms;
    return 0;
}

int net_send_client(net *n, uint32_t conn_id, const uint8_t *frame, size_t len)
{
    if (!n || (!frame && len > 0))
        return FB_EINVAL;
    if (n->closing)
        return FB_ESTATE;
    conn *c = client_find(n, conn_id);
    if (!c || c->closing || !c->established)
        return FB_ENOENT;
    if (len > n->max_frame)
        return FB_ETOOBIG;
    if (c->wq.bytes + (uint64_t)len + FB_CHAN_OVERHEAD > n->send_queue_bytes) {
        n->client_dropped++;
        return FB_EBUSY;
    }
    return conn_write(c, frame, len, NULL);
}

static void on_listener_closed(uv_handle_t *h)
{
    net *n = h->data;
    n->live--;
    maybe_finish_close(n);
}

static void on_link_timer_closed(uv_handle_t *h)
{
    net_link *l = h->data;
    l->n->live--;
    maybe_finish_close(l->n);
}

void net_close(net *n, void (*cb)(void *arg), void *arg)
{
    if (!n || n->closing)
        return;
    n->closing = true;
    n->close_cb = cb;
    n->close_arg = arg;
    for (conn *c = n->conns_head; c; c = c->next)
        conn_close(c);
    for (uint32_t i = 0; i < n->cluster->n; i++) {
        net_link *l = &n->links[i];
        if (l->retry_inited)
            uv_close((uv_handle_t *)&l->retry, on_link_timer_closed);
        if (l->delay_inited)
            uv_close((uv_handle_t *)&l->delay, on_link_timer_closed);
        if (l->resolving)
            uv_cancel((uv_req_t *)&l->gai); /* on_resolved still runs, with UV_ECANCELED */
    }
    if (n->lis_replica_inited)
        uv_close((uv_handle_t *)&n->lis_replica, on_listener_closed);
    if (n->lis_client_inited)
        uv_close((uv_handle_t *)&n->lis_client, on_listener_closed);
    maybe_finish_close(n); /* nothing was open: done at once */
}

void net_free(net *n)
{
    if (!n)
        return;
    if (n->live != 0) {
        /* libuv still points into n: freeing it now would corrupt the loop. */
        fprintf(stderr,
                "net_free: called with %llu handles open; call net_close and wait for "
                "its callback first\n",
                (unsigned long long)n->live);
        abort();
    }
    if (n->links)
        for (uint32_t i = 0; i < n->cluster->n; i++) {
            bq_clear(n, &n->links[i].pending);
            bq_clear(n, &n->links[i].delayq);
        }
    while (n->pool) {
        chunk *k = n->pool;
        n->pool = k->next;
        free(k);
    }
    free(n->links);
    free(n->replica_keys);
    free(n->peer_keys);
    free(n->client_keys);
    free(n->client_table);
    free(n);
}

bool net_replica_connected(const net *n, uint32_t id)
{
    if (!n || id >= n->cluster->n)
        return false;
    const net_link *l = &n->links[id];
    return l->c && l->c->established && !l->c->closing;
}

void net_replica_stats(net *n, uint32_t id, net_link_stats *out)
{
    memset(out, 0, sizeof *out);
    if (!n || id >= n->cluster->n)
        return;
    const net_link *l = &n->links[id];
    *out = l->st;
    out->connected = net_replica_connected(n, id);
    out->queued_bytes = link_queued(l);
    /* The kernel already measures the round-trip time of every TCP connection;
     * reading it costs one syscall and no protocol traffic. */
    uv_os_fd_t fd;
    struct tcp_info ti;
    socklen_t len = sizeof ti;
    if (out->connected && uv_fileno((const uv_handle_t *)&l->c->tcp, &fd) == 0 &&
        getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) == 0)
        out->rtt_us = ti.tcpi_rtt;
}

void net_get_stats(net *n, net_stats *out)
{
    memset(out, 0, sizeof *out);
    if (!n)
        return;
    *out = n->st;
    out->client_conns = n->nclient_conns;
}
