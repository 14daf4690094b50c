/* test_net.c - the libuv transport: four replicas and clients on one loop over
 * real loopback TCP, with misbehaving raw sockets, reconnects and queue bounds.
 * Every wait is a condition awaited on the loop with a timer deadline. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "channel.h"
#include "fb_error.h"
#include "net.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <uv.h>

#define NREP 4
#define NCLIENT_KEYS 3 /* the last one is not in cluster.json */
#define MAX_RX 256
#define RX_KEEP 128 /* bytes of each received frame kept for checks */
#define NRAW 8
#define DEADLINE_MS 10000
#define TEST_MAX_FRAME 65536

typedef struct world world;

typedef struct rx {
    uint32_t from; /* replica id, or client connection id */
    int client;    /* arrived through on_client_frame */
    size_t len;
    uint32_t hash; /* FNV-1a of the whole frame */
    uint8_t data[RX_KEEP];
} rx;

/* One net under test and what its callbacks saw. */
typedef struct node {
    world *w;
    const char *name;
    net *net;
    net_config cfg;
    rx got[MAX_RX];
    size_t ngot;
    uint8_t client_pk[FB_PK_LEN]; /* key of the last client frame */
    int echo;                     /* answer each client frame via net_send_client */
    int echo_rc;
    uint32_t up[NREP], down[NREP];
    uint32_t clients_down;
    uint32_t clients_up;
    uint8_t client_up_pk[FB_PK_LEN];
    int closed;
} node;

/* A test-side TCP connection: raw bytes, or a channel spoken by hand. */
typedef struct raw {
    world *w;
    uv_tcp_t tcp;
    uv_connect_t creq;
    int used, connected, ended, closed;
    const uint8_t *hello; /* raw bytes written on connect */
    size_t hello_len;
    fb_chan *ch;
    int established;
    int tamper_next; /* flip a bit in the next record we send */
    size_t frames;
    uint8_t rbuf[4096];
} raw;

struct world {
    uv_loop_t loop;
    uv_timer_t deadline;
    int timed_out;
    fb_identity rid[NREP];
    fb_identity cid[NCLIENT_KEYS];
    cfg_replica replicas[NREP];
    cfg_client clients[NCLIENT_KEYS - 1];
    cfg_cluster cluster;
    node rep[NREP];
    node cli[3];
    raw raws[NRAW];
};

/* Run the loop until expr holds or DEADLINE_MS (or ms) pass. */
#define AWAIT_MS(w, expr, ms)                                                                      \
    do {                                                                                           \
        (w)->timed_out = 0;                                                                        \
        uv_timer_start(&(w)->deadline, on_deadline, (ms), 0);                                      \
        while (!(expr) && !(w)->timed_out)                                                         \
            uv_run(&(w)->loop, UV_RUN_ONCE);                                                       \
        uv_timer_stop(&(w)->deadline);                                                             \
        if (!(expr))                                                                               \
            fail_msg("timed out waiting for: %s", #expr);                                          \
    } while (0)
#define AWAIT(w, expr) AWAIT_MS(w, expr, DEADLINE_MS)

static void on_deadline(uv_timer_t *t)
{
    world *w = t->data;
    w->timed_out = 1;
}

/* ------------------------------------------------------------ ports */

/* Distinct free ports from the kernel: bind all to port 0 at once, read them,
 * release them.  The nets bind them again right after (libuv sets SO_REUSEADDR). */
static void pick_ports(uint16_t *ports, size_t count)
{
    int fds[2 * NREP];
    assert_true(count <= 2 * NREP);
    for (size_t i = 0; i < count; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM, 0);
        assert_true(fds[i] >= 0);
        struct sockaddr_in sa;
        memset(&sa, 0, sizeof sa);
        sa.sin_family = AF_INET;
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        assert_int_equal(bind(fds[i], (struct sockaddr *)&sa, sizeof sa), 0);
        socklen_t len = sizeof sa;
        assert_int_equal(getsockname(fds[i], (struct sockaddr *)&sa, &len), 0);
        ports[i] = ntohs(sa.sin_port);
    }
    for (size_t i = 0; i < count; i++)
        close(fds[i]);
}

/* ------------------------------------------------------------ net callbacks */

static uint32_t fnv1a(const uint8_t *p, size_t len)
{
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < len; i++)
        h = (h ^ p[i]) * 16777619u;
    return h;
}

static void record(node *x, uint32_t from, int client, const uint8_t *frame, size_t len)
{
    if (x->ngot >= MAX_RX)
        return;
    rx *r = &x->got[x->ngot++];
    r->from = from;
    r->client = client;
    r->len = len;
    r->hash = fnv1a(frame, len);
    memcpy(r->data, frame, len < RX_KEEP ? len : RX_KEEP);
}

static void cb_replica_frame(void *arg, uint32_t id, const uint8_t *frame, size_t len)
{
    record(arg, id, 0, frame, len);
}

static void cb_client_frame(void *arg, uint32_t conn, const uint8_t pk[FB_PK_LEN],
                            const uint8_t *frame, size_t len)
{
    node *x = arg;
    record(x, conn, 1, frame, len);
    memcpy(x->client_pk, pk, FB_PK_LEN);
    if (x->echo) {
        uint8_t buf[RX_KEEP + 16];
        int n = snprintf((char *)buf, sizeof buf, "echo %s:", x->name);
        size_t m = len < RX_KEEP ? len : RX_KEEP;
        memcpy(buf + n, frame, m);
        x->echo_rc = net_send_client(x->net, conn, buf, (size_t)n + m);
    }
}

static void cb_up(void *arg, uint32_t id)
{
    node *x = arg;
    if (id < NREP)
        x->up[id]++;
}

static void cb_down(void *arg, uint32_t id)
{
    node *x = arg;
    if (id < NREP)
        x->down[id]++;
}

static void cb_client_up(void *arg, uint32_t conn, const uint8_t pk[FB_PK_LEN])
{
    node *x = arg;
    (void)conn;
    memcpy(x->client_up_pk, pk, FB_PK_LEN);
    x->clients_up++;
}

static void cb_client_down(void *arg, uint32_t conn)
{
    node *x = arg;
    (void)conn;
    x->clients_down++;
}

static void cb_closed(void *arg)
{
    node *x = arg;
    x->closed = 1;
}

/* ------------------------------------------------------------ nets */

static void node_prepare(world *w, node *x, const char *name, net_mode mode, uint32_t self_id,
                         const fb_identity *id, const cfg_cluster *cl)
{
    memset(x, 0, sizeof *x);
    x->w = w;
    x->name = name;
    x->cfg.mode = mode;
    x->cfg.loop = &w->loop;
    x->cfg.self = id;
    x->cfg.self_id = self_id;
    x->cfg.cluster = cl;
    x->cfg.max_frame = TEST_MAX_FRAME;
    x->cfg.reconnect_min_ms = 20;
    x->cfg.reconnect_max_ms = 200;
}

static void node_start(node *x)
{
    net_callbacks cb = {.on_replica_frame = cb_replica_frame,
                        .on_client_frame = cb_client_frame,
                        .on_replica_up = cb_up,
                        .on_replica_down = cb_down,
                        .on_client_up = cb_client_up,
                        .on_client_down = cb_client_down,
                        .arg = x};
    char err[256] = "";
    assert_int_equal(net_new(&x->cfg, &cb, &x->net, err, sizeof err), 0);
    int rc = net_start(x->net, err, sizeof err);
    if (rc)
        fail_msg("net_start %s: %s", x->name, err);
}

static void replica_start(world *w, uint32_t i)
{
    static const char *names[NREP] = {"r0", "r1", "r2", "r3"};
    node_prepare(w, &w->rep[i], names[i], NET_MODE_REPLICA, i, &w->rid[i], &w->cluster);
    node_start(&w->rep[i]);
}

static void node_stop(world *w, node *x)
{
    if (!x->net)
        return;
    net_close(x->net, cb_closed, x);
    AWAIT(w, x->closed);
    net_free(x->net);
    x->net = NULL;
}

static int all_connected(node *x, uint32_t self)
{
    for (uint32_t j = 0; j < NREP; j++) {
        net_link_stats st;
        if (j == self)
            continue;
        net_replica_stats(x->net, j, &st);
        if (!st.connected)
            return 0;
    }
    return 1;
}

static int mesh_connected(world *w)
{
    for (uint32_t i = 0; i < NREP; i++)
        if (!w->rep[i].net || !all_connected(&w->rep[i], i))
            return 0;
    return 1;
}

static net_stats stats_of(node *x)
{
    net_stats st;
    net_get_stats(x->net, &st);
    return st;
}

static net_link_stats link_of(node *x, uint32_t id)
{
    net_link_stats st;
    net_replica_stats(x->net, id, &st);
    return st;
}

static size_t count_from(const node *x, uint32_t from, const char *text)
{
    size_t k = 0;
    for (size_t i = 0; i < x->ngot; i++)
        if (!x->got[i].client && x->got[i].from == from &&
            (!text ||
             (x->got[i].len == strlen(text) && memcmp(x->got[i].data, text, x->got[i].len) == 0)))
            k++;
    return k;
}

/* Each replica sends "tag i->j" to every other; all must arrive. */
static void mesh_round(world *w, const char *tag)
{
    char msg[64];
    size_t before[NREP];
    for (uint32_t j = 0; j < NREP; j++)
        before[j] = w->rep[j].ngot;
    for (uint32_t i = 0; i < NREP; i++)
        for (uint32_t j = 0; j < NREP; j++) {
            if (i == j)
                continue;
            snprintf(msg, sizeof msg, "%s %u->%u", tag, (unsigned)i, (unsigned)j);
            assert_int_equal(net_send_replica(w->rep[i].net, j, (const uint8_t *)msg, strlen(msg)),
                             0);
        }
    AWAIT(w, w->rep[0].ngot >= before[0] + NREP - 1 && w->rep[1].ngot >= before[1] + NREP - 1 &&
                 w->rep[2].ngot >= before[2] + NREP - 1 && w->rep[3].ngot >= before[3] + NREP - 1);
    for (uint32_t j = 0; j < NREP; j++)
        for (uint32_t i = 0; i < NREP; i++) {
            if (i == j)
                continue;
            snprintf(msg, sizeof msg, "%s %u->%u", tag, (unsigned)i, (unsigned)j);
            assert_int_equal(count_from(&w->rep[j], i, msg), 1);
        }
}

/* ------------------------------------------------------------ raw sockets */

typedef struct raw_write_req {
    uv_write_t req;
    uint8_t data[];
} raw_write_req;

static void raw_on_write(uv_write_t *req, int status)
{
    (void)status; /* a peer that hung up on us is what several tests expect */
    free(req);
}

static void raw_write(raw *r, const uint8_t *p, size_t len)
{
    raw_write_req *wr = malloc(sizeof *wr + len);
    assert_non_null(wr);
    memcpy(wr->data, p, len);
    uv_buf_t b = uv_buf_init((char *)wr->data, (unsigned)len);
    if (uv_write(&wr->req, (uv_stream_t *)&r->tcp, &b, 1, raw_on_write) != 0)
        free(wr);
}

static void raw_on_closed(uv_handle_t *h)
{
    raw *r = h->data;
    r->closed = 1;
}

static void raw_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    raw *r = h->data;
    (void)suggested;
    *buf = uv_buf_init((char *)r->rbuf, sizeof r->rbuf);
}

static void raw_on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    raw *r = s->data;
    (void)buf;
    if (nread > 0 && r->ch) {
        fb_chan_feed(r->ch, r->rbuf, (size_t)nread);
    } else if (nread < 0) {
        r->ended = 1;
        uv_close((uv_handle_t *)&r->tcp, raw_on_closed);
    }
}

static void raw_on_connect(uv_connect_t *req, int status)
{
    raw *r = req->data;
    if (status < 0) {
        r->ended = 1;
        uv_close((uv_handle_t *)&r->tcp, raw_on_closed);
        return;
    }
    r->connected = 1;
    uv_read_start((uv_stream_t *)&r->tcp, raw_alloc, raw_on_read);
    if (r->hello_len)
        raw_write(r, r->hello, r->hello_len);
    if (r->ch)
        assert_int_equal(fb_chan_start(r->ch), 0);
}

static void raw_chan_send(void *arg, const uint8_t *bytes, size_t len)
{
    raw *r = arg;
    if (r->tamper_next && r->established) {
        uint8_t copy[256];
        assert_true(len <= sizeof copy);
        memcpy(copy, bytes, len);
        copy[len - 1] ^= 0x01; /* a bit of the tag */
        r->tamper_next = 0;
        raw_write(r, copy, len);
        return;
    }
    raw_write(r, bytes, len);
}

static void raw_chan_frame(void *arg, const uint8_t *plain, size_t len)
{
    raw *r = arg;
    (void)plain;
    (void)len;
    r->frames++;
}

static void raw_chan_established(void *arg, const uint8_t pk[FB_PK_LEN])
{
    raw *r = arg;
    (void)pk;
    r->established = 1;
}

static raw *raw_new(world *w)
{
    for (int i = 0; i < NRAW; i++) {
        raw *r = &w->raws[i];
        if (!r->used) {
            memset(r, 0, sizeof *r);
            r->used = 1;
            r->w = w;
            return r;
        }
    }
    fail_msg("out of raw sockets");
    return NULL;
}

/* Speak the channel as initiator with identity id towards replica `to`. */
static void raw_speak_channel(raw *r, const fb_identity *id, uint32_t to)
{
    fb_chan_config cc;
    memset(&cc, 0, sizeof cc);
    cc.role = FB_CHAN_INITIATOR;
    cc.self = id;
    cc.allowed = (const uint8_t(*)[FB_PK_LEN])r->w->replicas[to].pk;
    cc.allowed_count = 1;
    cc.expected_peer = r->w->replicas[to].pk;
    cc.sender_id = 1000;
    cc.io.send = raw_chan_send;
    cc.io.frame = raw_chan_frame;
    cc.io.established = raw_chan_established;
    cc.io.arg = r;
    assert_int_equal(fb_chan_new(&cc, &r->ch), 0);
}

static void raw_connect(raw *r, uint16_t port)
{
    struct sockaddr_in sa;
    assert_int_equal(uv_ip4_addr("127.0.0.1", port, &sa), 0);
    assert_int_equal(uv_tcp_init(&r->w->loop, &r->tcp), 0);
    r->tcp.data = r;
    r->creq.data = r;
    assert_int_equal(uv_tcp_connect(&r->creq, &r->tcp, (struct sockaddr *)&sa, raw_on_connect), 0);
}

/* ------------------------------------------------------------ fixture */

static int setup_world(void **state)
{
    world *w = calloc(1, sizeof *w);
    assert_non_null(w);
    assert_int_equal(uv_loop_init(&w->loop), 0);
    uv_timer_init(&w->loop, &w->deadline);
    w->deadline.data = w;
    uint16_t ports[2 * NREP];
    pick_ports(ports, 2 * NREP);
    for (uint32_t i = 0; i < NREP; i++) {
        uint8_t seed[FB_SEED_LEN];
        memset(seed, (int)(0x10 + i), sizeof seed);
        assert_int_equal(fb_key_from_seed(seed, &w->rid[i]), 0);
        cfg_replica *r = &w->replicas[i];
        r->id = i;
        snprintf(r->host, sizeof r->host, "127.0.0.1");
        r->port = ports[2 * i];
        r->client_port = ports[2 * i + 1];
        memcpy(r->pk, w->rid[i].pk, FB_PK_LEN);
    }
    for (uint32_t i = 0; i < NCLIENT_KEYS; i++) {
        uint8_t seed[FB_SEED_LEN];
        memset(seed, (int)(0x40 + i), sizeof seed);
        assert_int_equal(fb_key_from_seed(seed, &w->cid[i]), 0);
        if (i < NCLIENT_KEYS - 1) {
            w->clients[i].id = 1000 + i;
            snprintf(w->clients[i].name, sizeof w->clients[i].name, "client%u", (unsigned)i);
            memcpy(w->clients[i].pk, w->cid[i].pk, FB_PK_LEN);
        }
    }
    w->cluster.n = NREP;
    w->cluster.f = 1;
    w->cluster.replicas = w->replicas;
    w->cluster.clients = w->clients;
    w->cluster.nclients = NCLIENT_KEYS - 1;
    *state = w;
    return 0;
}

static void raw_free_all(world *w)
{
    for (int i = 0; i < NRAW; i++) {
        raw *r = &w->raws[i];
        if (!r->used)
            continue;
        if (!r->closed && !uv_is_closing((uv_handle_t *)&r->tcp))
            uv_close((uv_handle_t *)&r->tcp, raw_on_closed);
        AWAIT(w, r->closed);
        fb_chan_free(r->ch);
        r->used = 0;
    }
}

static int teardown_world(void **state)
{
    world *w = *state;
    for (int i = 0; i < NREP; i++)
        node_stop(w, &w->rep[i]);
    for (int i = 0; i < 3; i++)
        node_stop(w, &w->cli[i]);
    raw_free_all(w);
    uv_close((uv_handle_t *)&w->deadline, NULL);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    /* Every handle a net opened is closed: the loop closes cleanly. */
    assert_int_equal(uv_loop_close(&w->loop), 0);
    free(w);
    return 0;
}

/* ------------------------------------------------------------ tests */

/* Sent before any link is up: the frames wait in the send queues and all
 * twelve arrive, each with the right sender id. */
static void test_mesh_all_to_all(void **state)
{
    world *w = *state;
    for (uint32_t i = 0; i < NREP; i++)
        replica_start(w, i);
    mesh_round(w, "hello");
    AWAIT(w, mesh_connected(w));
    for (uint32_t i = 0; i < NREP; i++) {
        net_stats st = stats_of(&w->rep[i]);
        /* three dialled links and three accepted ones */
        assert_true(st.handshakes_ok >= 2 * (NREP - 1));
        assert_int_equal(st.garbage + st.oversized + st.unknown_keys, 0);
        for (uint32_t j = 0; j < NREP; j++) {
            if (j == i)
                continue;
            net_link_stats ls = link_of(&w->rep[i], j);
            assert_int_equal(ls.frames_out, 1);
            assert_int_equal(ls.frames_in, 1);
            assert_true(ls.bytes_out > 0 && ls.bytes_in > 0);
            assert_true(ls.last_rx_ms > 0);
            assert_int_equal(ls.queued_bytes, 0);
            assert_int_equal(w->rep[i].up[j], 1);
        }
    }
    mesh_round(w, "again");
}

static void test_client_roundtrip(void **state)
{
    world *w = *state;
    for (uint32_t i = 0; i < NREP; i++) {
        replica_start(w, i);
        w->rep[i].echo = 1;
    }
    node *c = &w->cli[0];
    node_prepare(w, c, "c0", NET_MODE_CLIENT, 1000, &w->cid[0], &w->cluster);
    node_start(c);
    for (uint32_t i = 0; i < NREP; i++) {
        char msg[32];
        snprintf(msg, sizeof msg, "req %u", (unsigned)i);
        assert_int_equal(net_send_replica(c->net, i, (const uint8_t *)msg, strlen(msg)), 0);
    }
    AWAIT(w, c->ngot >= NREP);
    for (uint32_t i = 0; i < NREP; i++) {
        char want[64];
        snprintf(want, sizeof want, "echo r%u:req %u", (unsigned)i, (unsigned)i);
        assert_int_equal(count_from(c, i, want), 1);
        assert_int_equal(c->up[i], 1);
        node *r = &w->rep[i];
        assert_int_equal(r->ngot, 1);
        assert_true(r->got[0].client);
        assert_memory_equal(r->client_pk, w->cid[0].pk, FB_PK_LEN);
        /* announced at the handshake, with the proven key */
        assert_int_equal(r->clients_up, 1);
        assert_memory_equal(r->client_up_pk, w->cid[0].pk, FB_PK_LEN);
        assert_int_equal(r->echo_rc, 0);
        assert_int_equal(stats_of(r).client_conns, 1);
        net_link_stats ls = link_of(c, i);
        assert_true(ls.connected);
        assert_int_equal(ls.frames_in, 1);
        assert_int_equal(ls.frames_out, 1);
    }
    /* The client goes away: every replica hears of it and the id is gone. */
    uint32_t conn0 = w->rep[0].got[0].from;
    node_stop(w, c);
    AWAIT(w, w->rep[0].clients_down == 1 && w->rep[1].clients_down == 1 &&
                 w->rep[2].clients_down == 1 && w->rep[3].clients_down == 1);
    assert_int_equal(stats_of(&w->rep[0]).client_conns, 0);
    assert_int_equal(net_send_client(w->rep[0].net, conn0, (const uint8_t *)"x", 1), FB_ENOENT);

    /* A second connection gets a fresh id. */
    node_prepare(w, c, "c0", NET_MODE_CLIENT, 1000, &w->cid[0], &w->cluster);
    node_start(c);
    assert_int_equal(net_send_replica(c->net, 0, (const uint8_t *)"again", 5), 0);
    AWAIT(w, w->rep[0].ngot == 2);
    assert_int_not_equal(w->rep[0].got[1].from, conn0);
}

static uint64_t total_unknown(world *w)
{
    uint64_t k = 0;
    for (int i = 0; i < NREP; i++)
        k += stats_of(&w->rep[i]).unknown_keys;
    return k;
}

static void test_unknown_keys_rejected(void **state)
{
    world *w = *state;
    for (uint32_t i = 0; i < NREP; i++)
        replica_start(w, i);

    /* A client whose key is not in cluster.json. */
    node *stranger = &w->cli[0];
    node_prepare(w, stranger, "stranger", NET_MODE_CLIENT, 9999, &w->cid[NCLIENT_KEYS - 1],
                 &w->cluster);
    node_start(stranger);
    assert_int_equal(net_send_replica(stranger->net, 0, (const uint8_t *)"hi", 2), 0);
    AWAIT(w, stats_of(&w->rep[0]).unknown_keys >= 1 && stats_of(&w->rep[1]).unknown_keys >= 1 &&
                 stats_of(&w->rep[2]).unknown_keys >= 1 && stats_of(&w->rep[3]).unknown_keys >= 1);
    /* and it keeps being refused as it redials */
    AWAIT(w, stats_of(stranger).handshakes_failed >= 2 * NREP);
    for (uint32_t i = 0; i < NREP; i++) {
        assert_false(link_of(stranger, i).connected);
        assert_int_equal(w->rep[i].ngot, 0);
        assert_int_equal(stats_of(&w->rep[i]).client_conns_rejected, 0);
    }
    node_stop(w, stranger);

    /* A real client key on the replica port: the replica port accepts only
     * replica keys.  (A copy of the cluster whose client ports are the
     * replica ports makes a client-mode net dial there.) */
    cfg_replica wrong[NREP];
    memcpy(wrong, w->replicas, sizeof wrong);
    for (int i = 0; i < NREP; i++)
        wrong[i].client_port = wrong[i].port;
    cfg_cluster cl = w->cluster;
    cl.replicas = wrong;
    uint64_t before = total_unknown(w);
    node *c = &w->cli[1];
    node_prepare(w, c, "misdirected", NET_MODE_CLIENT, 1000, &w->cid[0], &cl);
    node_start(c);
    AWAIT(w, total_unknown(w) >= before + NREP);
    for (uint32_t i = 0; i < NREP; i++) {
        assert_false(link_of(c, i).connected);
        assert_int_equal(stats_of(&w->rep[i]).client_conns, 0);
    }
    node_stop(w, c);
    mesh_round(w, "still");
}

static void test_garbage_and_oversized(void **state)
{
    world *w = *state;
    for (uint32_t i = 0; i < NREP; i++)
        replica_start(w, i);
    AWAIT(w, mesh_connected(w));
    node *r0 = &w->rep[0];

    /* Garbage: a plausible length, then bytes that are no handshake. */
    static const uint8_t garbage[20] = {0,    0,    0,    16,   0xab, 0xab, 0xab, 0xab, 0xab, 0xab,
                                        0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab, 0xab};
    raw *g = raw_new(w);
    g->hello = garbage;
    g->hello_len = sizeof garbage;
    raw_connect(g, w->replicas[0].port);
    AWAIT(w, g->ended && stats_of(r0).garbage == 1);
    assert_true(stats_of(r0).handshakes_failed >= 1);

    /* A length header far above max_frame. */
    static const uint8_t huge[4] = {0x7f, 0xff, 0xff, 0xff};
    raw *o = raw_new(w);
    o->hello = huge;
    o->hello_len = sizeof huge;
    raw_connect(o, w->replicas[0].client_port);
    AWAIT(w, o->ended && stats_of(r0).oversized == 1);

    /* The same after a good handshake: a client with a valid key announces a
     * frame of 1 MiB (max_frame is 64 KiB) and is cut off. */
    raw *b = raw_new(w);
    raw_speak_channel(b, &w->cid[0], 0);
    raw_connect(b, w->replicas[0].client_port);
    AWAIT(w, b->established && stats_of(r0).client_conns == 1);
    assert_int_equal(fb_chan_write(b->ch, (const uint8_t *)"ok", 2), 0);
    AWAIT(w, r0->ngot == 1);
    static const uint8_t big_hdr[4] = {0x00, 0x10, 0x00, 0x00};
    raw_write(b, big_hdr, sizeof big_hdr);
    AWAIT(w, b->ended && stats_of(r0).oversized == 2);
    AWAIT(w, r0->clients_down == 1);

    /* A tampered record (one bit of the tag) after a good handshake. */
    raw *t = raw_new(w);
    raw_speak_channel(t, &w->cid[1], 0);
    raw_connect(t, w->replicas[0].client_port);
    AWAIT(w, t->established);
    t->tamper_next = 1;
    assert_int_equal(fb_chan_write(t->ch, (const uint8_t *)"evil", 4), 0);
    AWAIT(w, t->ended && stats_of(r0).garbage == 2);
    assert_int_equal(r0->ngot, 1); /* the tampered frame was never delivered */

    /* The node carried on: the mesh still works and no replica link dropped. */
    mesh_round(w, "after");
    for (uint32_t i = 1; i < NREP; i++) {
        assert_int_equal(r0->down[i], 0);
        assert_int_equal(link_of(r0, i).rejected, 0);
    }
    net_stats st = stats_of(r0);
    assert_int_equal(st.unknown_keys, 0);
    assert_int_equal(st.client_conns, 0);
}

/* A socket that connects and says nothing is dropped at the handshake deadline. */
static void test_handshake_timeout(void **state)
{
    world *w = *state;
    replica_start(w, 0);
    raw *s = raw_new(w);
    raw_connect(s, w->replicas[0].port);
    AWAIT(w, s->connected);
    uint64_t t0 = uv_now(&w->loop);
    AWAIT(w, s->ended);
    assert_true(uv_now(&w->loop) - t0 >= 4000);
    /* At least the silent socket.  Replica 0 also dials its peers' ports,
     * picked free but released; under a parallel ctest another test may bind
     * one of them meanwhile, and that dial fails its handshake too. */
    assert_true(stats_of(&w->rep[0]).handshakes_failed >= 1);
}

static void send_seq(node *x, uint32_t to, uint8_t seq, size_t len)
{
    uint8_t buf[1200];
    assert_true(len <= sizeof buf && len > 0);
    memset(buf, seq, len);
    assert_int_equal(net_send_replica(x->net, to, buf, len), 0);
}

static int got_seq(const node *x, uint32_t from, uint8_t first, uint8_t count)
{
    uint8_t next = first;
    for (size_t i = 0; i < x->ngot; i++)
        if (!x->got[i].client && x->got[i].from == from && x->got[i].data[0] == next)
            next++;
    return next == first + count;
}

static void test_reconnect_delivers_queued(void **state)
{
    world *w = *state;
    for (uint32_t i = 0; i < NREP - 1; i++)
        replica_start(w, i);
    node *r0 = &w->rep[0];
    AWAIT(w, link_of(r0, 1).connected && link_of(r0, 2).connected);
    /* Replica 3 is down: frames to it wait. */
    for (uint8_t s = 1; s <= 5; s++)
        send_seq(r0, 3, s, 100);
    net_link_stats ls = link_of(r0, 3);
    assert_false(ls.connected);
    assert_int_equal(ls.queued_bytes, 5 * (100 + FB_CHAN_OVERHEAD));
    /* a few failed dials with backoff meanwhile */
    uint64_t t0 = uv_now(&w->loop);
    AWAIT(w, uv_now(&w->loop) - t0 >= 100);

    replica_start(w, 3);
    AWAIT(w, got_seq(&w->rep[3], 0, 1, 5));
    assert_int_equal(r0->up[3], 1);
    assert_int_equal(link_of(r0, 3).queued_bytes, 0);
    assert_int_equal(link_of(r0, 3).frames_out, 5);

    /* Replica 3 goes away and comes back on the same ports. */
    node_stop(w, &w->rep[3]);
    AWAIT(w, r0->down[3] == 1 && !link_of(r0, 3).connected);
    for (uint8_t s = 6; s <= 7; s++)
        send_seq(r0, 3, s, 100);
    replica_start(w, 3);
    AWAIT(w, got_seq(&w->rep[3], 0, 6, 2));
    AWAIT(w, r0->up[3] == 2);
    mesh_round(w, "back");
}

static void test_send_queue_bound(void **state)
{
    world *w = *state;
    node *r0 = &w->rep[0];
    node_prepare(w, r0, "r0", NET_MODE_REPLICA, 0, &w->rid[0], &w->cluster);
    r0->cfg.send_queue_bytes = 4096;
    node_start(r0);

    /* Link down: 3 x 1028 bytes fit in 4096, the 4th does not. */
    for (uint8_t s = 1; s <= 3; s++)
        send_seq(r0, 1, s, 1000);
    uint8_t buf[1000];
    memset(buf, 4, sizeof buf);
    assert_int_equal(net_send_replica(r0->net, 1, buf, sizeof buf), FB_EBUSY);
    net_link_stats ls = link_of(r0, 1);
    assert_int_equal(ls.dropped, 1);
    assert_int_equal(ls.queued_bytes, 3 * (1000 + FB_CHAN_OVERHEAD));
    send_seq(r0, 1, 4, 100); /* a small one still fits */

    replica_start(w, 1);
    AWAIT(w, got_seq(&w->rep[1], 0, 1, 4));
    AWAIT(w, link_of(r0, 1).queued_bytes == 0);

    /* Link up: sealed records count until their write completes, so a burst
     * within one loop turn hits the bound too. */
    int accepted = 0, busy = 0;
    for (int i = 0; i < 10; i++) {
        memset(buf, 10 + i, sizeof buf);
        int rc = net_send_replica(r0->net, 1, buf, sizeof buf);
        if (rc == 0)
            accepted++;
        else if (rc == FB_EBUSY)
            busy++;
        else
            fail_msg("net_send_replica: %d", rc);
        assert_true(link_of(r0, 1).queued_bytes <= 4096);
    }
    assert_true(busy > 0 && accepted >= 3);
    assert_int_equal(link_of(r0, 1).dropped, 1 + (uint64_t)busy);
    AWAIT(w, w->rep[1].ngot == 4 + (size_t)accepted);
    for (int i = 0; i < accepted; i++)
        assert_int_equal(w->rep[1].got[4 + i].data[0], 10 + i);
    /* an oversized frame is refused outright */
    uint8_t *big = calloc(1, TEST_MAX_FRAME + 1);
    assert_int_equal(net_send_replica(r0->net, 1, big, TEST_MAX_FRAME + 1), FB_ETOOBIG);
    free(big);
}

/* A frame of index k: bytes that differ per frame and position. */
static void fill_frame(uint8_t *buf, size_t len, uint32_t k)
{
    for (size_t i = 0; i < len; i++)
        buf[i] = (uint8_t)(k * 131 + i * 7 + (i >> 8));
    buf[0] = (uint8_t)k;
}

/* Frames near max_frame, queued while down (they span the 64 KiB queue
 * chunks) and then in a burst on the live link (several chunks per write):
 * every byte arrives, in order. */
static void test_large_frames_intact(void **state)
{
    world *w = *state;
    replica_start(w, 0);
    node *r0 = &w->rep[0];
    const size_t big = TEST_MAX_FRAME - 17;
    uint8_t *buf = malloc(TEST_MAX_FRAME);
    assert_non_null(buf);
    uint32_t want[200];
    size_t sizes[200];
    uint32_t k = 0;
    for (; k < 6; k++) {
        sizes[k] = big - k;
        fill_frame(buf, sizes[k], k);
        want[k] = fnv1a(buf, sizes[k]);
        assert_int_equal(net_send_replica(r0->net, 1, buf, sizes[k]), 0);
    }
    replica_start(w, 1);
    AWAIT(w, w->rep[1].ngot == k);
    for (; k < 200; k++) {
        sizes[k] = 1 + (k * 7919) % 40000;
        fill_frame(buf, sizes[k], k);
        want[k] = fnv1a(buf, sizes[k]);
        assert_int_equal(net_send_replica(r0->net, 1, buf, sizes[k]), 0);
    }
    assert_true(link_of(r0, 1).queued_bytes > 4 * 65536);
    AWAIT(w, w->rep[1].ngot == k);
    for (uint32_t i = 0; i < k; i++) {
        assert_int_equal(w->rep[1].got[i].from, 0);
        assert_int_equal(w->rep[1].got[i].len, sizes[i]);
        assert_int_equal(w->rep[1].got[i].hash, want[i]);
    }
    AWAIT(w, link_of(r0, 1).queued_bytes == 0);
    assert_int_equal(link_of(r0, 1).frames_out, k);
    free(buf);
}

static void test_max_clients(void **state)
{
    world *w = *state;
    node *r0 = &w->rep[0];
    node_prepare(w, r0, "r0", NET_MODE_REPLICA, 0, &w->rid[0], &w->cluster);
    r0->cfg.max_clients = 1;
    node_start(r0);

    /* An authenticated client holds the only slot: a newcomer is refused. */
    node *c = &w->cli[0];
    node_prepare(w, c, "c0", NET_MODE_CLIENT, 1000, &w->cid[0], &w->cluster);
    node_start(c);
    AWAIT(w, link_of(c, 0).connected);
    raw *z = raw_new(w);
    raw_connect(z, w->replicas[0].client_port);
    AWAIT(w, z->ended && stats_of(r0).client_conns_rejected == 1);
    assert_int_equal(stats_of(r0).client_conns, 1);
    assert_true(link_of(c, 0).connected);
    node_stop(w, c);
    AWAIT(w, stats_of(r0).client_conns == 0);

    /* An unauthenticated socket holds it: the newcomer evicts it. */
    raw *x = raw_new(w);
    raw_connect(x, w->replicas[0].client_port);
    AWAIT(w, stats_of(r0).client_conns == 1);
    raw *y = raw_new(w);
    raw_speak_channel(y, &w->cid[1], 0);
    raw_connect(y, w->replicas[0].client_port);
    AWAIT(w, x->ended && y->established);
    assert_int_equal(stats_of(r0).client_conns_rejected, 2);
    assert_int_equal(stats_of(r0).client_conns, 1);
}

static void test_api_errors(void **state)
{
    world *w = *state;
    char err[256] = "";
    net *bad = NULL;
    net_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.mode = NET_MODE_REPLICA;
    cfg.loop = &w->loop;
    cfg.self = &w->rid[1];
    cfg.self_id = 0; /* not our key */
    cfg.cluster = &w->cluster;
    assert_int_equal(net_new(&cfg, NULL, &bad, err, sizeof err), FB_EINVAL);
    assert_non_null(strstr(err, "replica 0"));
    cfg.self_id = NREP;
    assert_int_equal(net_new(&cfg, NULL, &bad, err, sizeof err), FB_EINVAL);
    cfg.self_id = 1;
    cfg.reconnect_min_ms = 500;
    cfg.reconnect_max_ms = 100;
    assert_int_equal(net_new(&cfg, NULL, &bad, err, sizeof err), FB_EINVAL);

    /* Closing a net that never started completes at once. */
    cfg.reconnect_min_ms = 0;
    cfg.reconnect_max_ms = 0;
    node idle;
    memset(&idle, 0, sizeof idle);
    assert_int_equal(net_new(&cfg, NULL, &bad, err, sizeof err), 0);
    net_close(bad, cb_closed, &idle);
    assert_true(idle.closed);
    net_free(bad);

    replica_start(w, 0);
    node *r0 = &w->rep[0];
    assert_int_equal(net_send_replica(r0->net, 0, (const uint8_t *)"x", 1), FB_EINVAL);
    assert_int_equal(net_send_replica(r0->net, NREP, (const uint8_t *)"x", 1), FB_EINVAL);
    assert_int_equal(net_send_client(r0->net, 12345, (const uint8_t *)"x", 1), FB_ENOENT);
    assert_int_equal(net_start(r0->net, err, sizeof err), FB_ESTATE);

    /* A second replica 0 cannot bind the same port. */
    node *twin = &w->cli[0];
    node_prepare(w, twin, "twin", NET_MODE_REPLICA, 0, &w->rid[0], &w->cluster);
    net_callbacks cb = {
        .on_replica_frame = cb_replica_frame, .on_client_frame = cb_client_frame, .arg = twin};
    assert_int_equal(net_new(&twin->cfg, &cb, &twin->net, err, sizeof err), 0);
    assert_int_equal(net_start(twin->net, err, sizeof err), FB_EIO);
    assert_non_null(strstr(err, "cannot listen on 127.0.0.1:"));
}

static int init_crypto(void **state)
{
    (void)state;
    return fb_crypto_init();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_mesh_all_to_all, setup_world, teardown_world),
        cmocka_unit_test_setup_teardown(test_client_roundtrip, setup_world, teardown_world),
        cmocka_unit_test_setup_teardown(test_unknown_keys_rejected, setup_world, teardown_world),
        cmocka_unit_test_setup_teardown(test_garbage_and_oversized, setup_world, teardown_world),
        cmocka_unit_test_setup_teardown(test_handshake_timeout, setup_world, teardown_world),
        cmocka_unit_test_setup_teardown(test_reconnect_delivers_queued, setup_world,
                                        teardown_world),
        cmocka_unit_test_setup_teardown(test_send_queue_bound, setup_world, teardown_world),
        cmocka_unit_test_setup_teardown(test_large_frames_intact, setup_world, teardown_world),
        cmocka_unit_test_setup_teardown(test_max_clients, setup_world, teardown_world),
        cmocka_unit_test_setup_teardown(test_api_errors, setup_world, teardown_world),
    };
    return cmocka_run_group_tests(tests, init_crypto, NULL);
}
