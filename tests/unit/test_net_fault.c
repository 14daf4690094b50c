/* test_net_fault.c - net fault injection: dropped and delayed replica frames
 * over real loopback TCP on one loop, the delay queue's bound, clearing, and
 * client links left alone.  Every wait is awaited on the loop with a deadline. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

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
#define MAX_RX 64
#define DEADLINE_MS 10000
#define DELAY_MS 200
#define CLIENT_ID 1000

typedef struct world world;

typedef struct rx {
    uint32_t from;
    int client;
    uint64_t at_ms; /* loop time when it arrived */
    char text[32];
} rx;

typedef struct node {
    world *w;
    net *net;
    net_config cfg;
    rx got[MAX_RX];
    size_t ngot;
    int echo; /* answer client frames */
    int closed;
} node;

struct world {
    uv_loop_t loop;
    uv_timer_t deadline;
    int timed_out;
    fb_identity rid[NREP], cid;
    cfg_replica replicas[NREP];
    cfg_client client;
    cfg_cluster cluster;
    node rep[NREP];
    node cli;
};

#define AWAIT(w, expr)                                                                             \
    do {                                                                                           \
        (w)->timed_out = 0;                                                                        \
        uv_timer_start(&(w)->deadline, on_deadline, DEADLINE_MS, 0);                               \
        while (!(expr) && !(w)->timed_out)                                                         \
            uv_run(&(w)->loop, UV_RUN_ONCE);                                                       \
        uv_timer_stop(&(w)->deadline);                                                             \
        if (!(expr))                                                                               \
            fail_msg("timed out waiting for: %s", #expr);                                          \
    } while (0)

static void on_deadline(uv_timer_t *t)
{
    world *w = t->data;
    w->timed_out = 1;
}

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

/* ------------------------------------------------------------ callbacks */

static void record(node *x, uint32_t from, int client, const uint8_t *frame, size_t len)
{
    if (x->ngot >= MAX_RX)
        return;
    rx *r = &x->got[x->ngot++];
    r->from = from;
    r->client = client;
    r->at_ms = uv_now(&x->w->loop);
    size_t m = len < sizeof r->text - 1 ? len : sizeof r->text - 1;
    memcpy(r->text, frame, m);
    r->text[m] = '\0';
}

static void cb_replica_frame(void *arg, uint32_t id, const uint8_t *frame, size_t len)
{
    record(arg, id, 0, frame, len);
}

static void cb_client_frame(void *arg, uint32_t conn, const uint8_t pk[FB_PK_LEN],
                            const uint8_t *frame, size_t len)
{
    node *x = arg;
    (void)pk;
    record(x, conn, 1, frame, len);
    if (x->echo)
        assert_int_equal(net_send_client(x->net, conn, (const uint8_t *)"pong", 4), 0);
}

static void cb_closed(void *arg)
{
    node *x = arg;
    x->closed = 1;
}

/* ------------------------------------------------------------ nets */

static void node_start(world *w, node *x, net_mode mode, uint32_t self_id, const fb_identity *id,
                       uint64_t queue_bytes)
{
    memset(x, 0, sizeof *x);
    x->w = w;
    x->cfg.mode = mode;
    x->cfg.loop = &w->loop;
    x->cfg.self = id;
    x->cfg.self_id = self_id;
    x->cfg.cluster = &w->cluster;
    x->cfg.max_frame = 4096;
    x->cfg.send_queue_bytes = queue_bytes;
    x->cfg.reconnect_min_ms = 20;
    x->cfg.reconnect_max_ms = 200;
    net_callbacks cb = {
        .on_replica_frame = cb_replica_frame, .on_client_frame = cb_client_frame, .arg = x};
    char err[256] = "";
    assert_int_equal(net_new(&x->cfg, &cb, &x->net, err, sizeof err), 0);
    if (net_start(x->net, err, sizeof err) != 0)
        fail_msg("net_start: %s", err);
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

static int mesh_connected(world *w)
{
    for (uint32_t i = 0; i < NREP; i++)
        for (uint32_t j = 0; j < NREP; j++) {
            net_link_stats st;
            if (i == j)
                continue;
            net_replica_stats(w->rep[i].net, j, &st);
            if (!st.connected)
                return 0;
        }
    return 1;
}

/* All four replicas up and linked; replica 0's send queues hold queue0 bytes. */
static void mesh_start(world *w, uint64_t queue0)
{
    for (uint32_t i = 0; i < NREP; i++)
        node_start(w, &w->rep[i], NET_MODE_REPLICA, i, &w->rid[i], i == 0 ? queue0 : 0);
    AWAIT(w, mesh_connected(w));
}

static net_link_stats link_of(node *x, uint32_t id)
{
    net_link_stats st;
    net_replica_stats(x->net, id, &st);
    return st;
}

/* Index of the first frame from `from` with this text, or -1. */
static int find(const node *x, uint32_t from, const char *text)
{
    for (size_t i = 0; i < x->ngot; i++)
        if (!x->got[i].client && x->got[i].from == from && strcmp(x->got[i].text, text) == 0)
            return (int)i;
    return -1;
}

static void send_text(node *x, uint32_t to, const char *text)
{
    assert_int_equal(net_send_replica(x->net, to, (const uint8_t *)text, strlen(text)), 0);
}

/* ------------------------------------------------------------ setup */

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
        memset(seed, (int)(0x20 + i), sizeof seed);
        assert_int_equal(fb_key_from_seed(seed, &w->rid[i]), 0);
        cfg_replica *r = &w->replicas[i];
        r->id = i;
        snprintf(r->host, sizeof r->host, "127.0.0.1");
        r->port = ports[2 * i];
        r->client_port = ports[2 * i + 1];
        memcpy(r->pk, w->rid[i].pk, FB_PK_LEN);
    }
    uint8_t seed[FB_SEED_LEN];
    memset(seed, 0x50, sizeof seed);
    assert_int_equal(fb_key_from_seed(seed, &w->cid), 0);
    w->client.id = CLIENT_ID;
    snprintf(w->client.name, sizeof w->client.name, "client0");
    memcpy(w->client.pk, w->cid.pk, FB_PK_LEN);
    w->cluster.n = NREP;
    w->cluster.f = 1;
    w->cluster.replicas = w->replicas;
    w->cluster.clients = &w->client;
    w->cluster.nclients = 1;
    *state = w;
    return 0;
}

static int teardown_world(void **state)
{
    world *w = *state;
    for (int i = 0; i < NREP; i++)
        node_stop(w, &w->rep[i]);
    node_stop(w, &w->cli);
    uv_close((uv_handle_t *)&w->deadline, NULL);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&w->loop), 0); /* every fault timer closed too */
    free(w);
    return 0;
}

/* ------------------------------------------------------------ tests */

/* drop_out to replica 1: 2 and 3 still get the frame, 1 never does; after
 * clearing, the next frame reaches 1 (TCP keeps the link in order, so had
 * the first been sent it would have arrived before). */
static void test_drop_out_one_replica(void **state)
{
    world *w = *state;
    mesh_start(w, 0);
    node *r0 = &w->rep[0];
    assert_int_equal(net_fault_set(r0->net, 1, false, true, 0), 0);
    for (uint32_t j = 1; j < NREP; j++)
        send_text(r0, j, "a");
    AWAIT(w, find(&w->rep[2], 0, "a") >= 0 && find(&w->rep[3], 0, "a") >= 0);
    net_link_stats st = link_of(r0, 1);
    assert_int_equal(st.fault_dropped_out, 1);
    assert_int_equal(st.frames_out, 0);
    assert_int_equal(link_of(r0, 2).fault_dropped_out, 0);

    net_fault_clear(r0->net);
    bool din = true, dout = true;
    uint32_t delay = 1;
    assert_int_equal(net_fault_get(r0->net, 1, &din, &dout, &delay), 0);
    assert_false(din);
    assert_false(dout);
    assert_int_equal(delay, 0);
    send_text(r0, 1, "b");
    AWAIT(w, find(&w->rep[1], 0, "b") >= 0);
    assert_int_equal(find(&w->rep[1], 0, "a"), -1);
    assert_int_equal(link_of(r0, 1).frames_out, 1);
}

/* drop_in at replica 1 for frames from 0: discarded before the callback and
 * not counted as frames_in; 1's own sends to 0 still flow. */
static void test_drop_in(void **state)
{
    world *w = *state;
    mesh_start(w, 0);
    node *r0 = &w->rep[0], *r1 = &w->rep[1];
    assert_int_equal(net_fault_set(r1->net, 0, true, false, 0), 0);
    send_text(r0, 1, "a");
    send_text(r0, 2, "a");
    send_text(r1, 0, "up");
    AWAIT(w, link_of(r1, 0).fault_dropped_in == 1 && find(&w->rep[2], 0, "a") >= 0 &&
                 find(r0, 1, "up") >= 0);
    assert_int_equal(find(r1, 0, "a"), -1);
    assert_int_equal(link_of(r1, 0).frames_in, 0);
    assert_int_equal(link_of(r0, 1).frames_out, 1); /* the sender saw nothing odd */

    assert_int_equal(net_fault_set(r1->net, 0, false, false, 0), 0);
    send_text(r0, 1, "b");
    AWAIT(w, find(r1, 0, "b") >= 0);
    assert_int_equal(find(r1, 0, "a"), -1);
    assert_int_equal(link_of(r1, 0).frames_in, 1);
}

/* A delay holds frames to replica 1 for DELAY_MS of loop time, in order,
 * while replica 2 gets its copy at once; frames sent after the delay is
 * cleared still queue behind the held ones. */
static void test_delay(void **state)
{
    world *w = *state;
    mesh_start(w, 0);
    node *r0 = &w->rep[0], *r1 = &w->rep[1], *r2 = &w->rep[2];
    assert_int_equal(net_fault_set(r0->net, 1, false, false, DELAY_MS), 0);
    uint32_t delay = 0;
    assert_int_equal(net_fault_get(r0->net, 1, NULL, NULL, &delay), 0);
    assert_int_equal(delay, DELAY_MS);
    uv_update_time(&w->loop);
    uint64_t t0 = uv_now(&w->loop);
    send_text(r0, 1, "d1");
    send_text(r0, 1, "d2");
    send_text(r0, 2, "d1");
    assert_int_equal(link_of(r0, 1).fault_delayed, 2);
    net_fault_clear(r0->net);
    send_text(r0, 1, "d3"); /* no delay now, but behind d1 and d2 */
    assert_int_equal(link_of(r0, 1).fault_delayed, 3);

    AWAIT(w, find(r2, 0, "d1") >= 0);
    AWAIT(w, find(r1, 0, "d3") >= 0);
    int i1 = find(r1, 0, "d1"), i2 = find(r1, 0, "d2"), i3 = find(r1, 0, "d3");
    assert_true(i1 >= 0 && i1 < i2 && i2 < i3);
    assert_true(r1->got[i1].at_ms >= t0 + DELAY_MS);
    assert_true(r1->got[i2].at_ms >= t0 + DELAY_MS);
    assert_true(r2->got[find(r2, 0, "d1")].at_ms <= r1->got[i1].at_ms);
    assert_int_equal(link_of(r0, 1).fault_delay_dropped, 0);
    assert_int_equal(link_of(r0, 1).frames_out, 3);

    /* Cleared: the next frame is not held back. */
    send_text(r0, 1, "now");
    assert_int_equal(link_of(r0, 1).fault_delayed, 3);
    AWAIT(w, find(r1, 0, "now") >= 0);
}

/* The delay queue holds at most send_queue_bytes: a frame that does not fit
 * is dropped and counted; a net closed with frames still held frees them. */
static void test_delay_queue_bound(void **state)
{
    world *w = *state;
    mesh_start(w, 8192);
    node *r0 = &w->rep[0];
    assert_int_equal(net_fault_set(r0->net, 1, false, false, 60000), 0);
    uint8_t frame[3000];
    memset(frame, 'x', sizeof frame);
    for (int k = 0; k < 3; k++)
        assert_int_equal(net_send_replica(r0->net, 1, frame, sizeof frame), 0);
    net_link_stats st = link_of(r0, 1);
    assert_int_equal(st.fault_delayed, 2); /* 2 x (3000 + 12) fit in 8192, 3 do not */
    assert_int_equal(st.fault_delay_dropped, 1);
    assert_int_equal(st.frames_out, 0);
    /* Other links are not held back. */
    send_text(r0, 2, "free");
    AWAIT(w, find(&w->rep[2], 0, "free") >= 0);
}

/* NET_FAULT_ALL covers every other replica; bad ids are refused; client
 * connections are never affected, even with every replica link cut. */
static void test_all_and_client_links(void **state)
{
    world *w = *state;
    mesh_start(w, 0);
    node *r0 = &w->rep[0];
    assert_int_equal(net_fault_set(r0->net, 0, true, true, 0), FB_EINVAL); /* ourselves */
    assert_int_equal(net_fault_set(r0->net, NREP, true, true, 0), FB_EINVAL);
    assert_int_equal(net_fault_set(NULL, 1, true, true, 0), FB_EINVAL);
    assert_int_equal(net_fault_get(r0->net, NREP, NULL, NULL, NULL), FB_EINVAL);
    assert_int_equal(net_fault_set(r0->net, NET_FAULT_ALL, true, true, 0), 0);
    for (uint32_t j = 1; j < NREP; j++) {
        bool din = false, dout = false;
        assert_int_equal(net_fault_get(r0->net, j, &din, &dout, NULL), 0);
        assert_true(din && dout);
    }
    /* Partitioned: 0 hears nobody, nobody hears 0. */
    for (uint32_t j = 1; j < NREP; j++) {
        send_text(r0, j, "out");
        send_text(&w->rep[j], 0, "in");
    }
    AWAIT(w, link_of(r0, 1).fault_dropped_in == 1 && link_of(r0, 2).fault_dropped_in == 1 &&
                 link_of(r0, 3).fault_dropped_in == 1);
    assert_int_equal(r0->ngot, 0);

    r0->echo = 1;
    node_start(w, &w->cli, NET_MODE_CLIENT, CLIENT_ID, &w->cid, 0);
    assert_int_equal(net_send_replica(w->cli.net, 0, (const uint8_t *)"ping", 4), 0);
    AWAIT(w, find(&w->cli, 0, "pong") >= 0);
    assert_int_equal(r0->ngot, 1);
    assert_true(r0->got[0].client);
    assert_string_equal(r0->got[0].text, "ping");

    net_fault_clear(r0->net);
    send_text(&w->rep[3], 0, "back");
    AWAIT(w, find(r0, 3, "back") >= 0);
    assert_int_equal(find(&w->rep[1], 0, "out"), -1);
}

static int init_crypto(void **state)
{
    (void)state;
    return fb_crypto_init();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_drop_out_one_replica, setup_world, teardown_world),
        cmocka_unit_test_setup_teardown(test_drop_in, setup_world, teardown_world),
        cmocka_unit_test_setup_teardown(test_delay, setup_world, teardown_world),
        cmocka_unit_test_setup_teardown(test_delay_queue_bound, setup_world, teardown_world),
        cmocka_unit_test_setup_teardown(test_all_and_client_links, setup_world, teardown_world),
    };
    return cmocka_run_group_tests(tests, init_crypto, NULL);
}
