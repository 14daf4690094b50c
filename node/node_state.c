/* node_state.c - fetching and serving checkpoint state, chunk by chunk. */
#include "node_state.h"

#include "fb_error.h"
#include "log.h"
#include "pbft.h"

#include <stdlib.h>
#include <string.h>

#define MAX_SERVING 4 /* state chunks being read for peers at once */

struct node_state {
    uint32_t self, n;
    node_state_io io;
    /* requester */
    uint64_t seq; /* 0 = not fetching */
    uint8_t digest[FB_DIGEST_LEN];
    uint32_t peer;
    uint32_t next_chunk, chunk_count;
    uint8_t app_digest[FB_DIGEST_LEN];
    uint8_t *client_table;
    size_t client_table_len;
    uint64_t generation; /* bumps on every restart, so stale completions are ignored */
    /* server */
    uint32_t serving;
    node_state_stats stats;
};

typedef struct serve_ctx {
    node_state *s;
    uint32_t to;
    uint64_t seq;
    uint32_t chunk;
    uint8_t state_digest[FB_DIGEST_LEN];
} serve_ctx;

typedef struct install_ctx {
    node_state *s;
    uint64_t generation;
    bool commit;
} install_ctx;

int node_state_new(uint32_t self, uint32_t n, const node_state_io *io, node_state **out)
{
    node_state *s = calloc(1, sizeof *s);
    if (!s)
        return FB_ENOMEM;
    s->self = self;
    s->n = n;
    s->io = *io;
    s->peer = self;
    *out = s;
    return 0;
}

void node_state_free(node_state *s)
{
    if (!s)
        return;
    free(s->client_table);
    free(s);
}

static void request_chunk(node_state *s)
{
    Fedbft__StateRequest rq = FEDBFT__STATE_REQUEST__INIT;
    rq.seq = s->seq;
    rq.state_digest = (ProtobufCBinaryData){FB_DIGEST_LEN, s->digest};
    rq.chunk = s->next_chunk;
    rq.replica = s->self;
    s->io.send(s->io.arg, s->peer, FEDBFT__MSG_TYPE__MSG_STATE_REQUEST, &rq.base);
}

/* Start (over) with the next peer. */
static void restart(node_state *s)
{
    s->generation++;
    s->peer = (s->peer + 1) % s->n;
    if (s->peer == s->self)
        s->peer = (s->peer + 1) % s->n;
    s->next_chunk = 0;
    s->chunk_count = 0;
    free(s->client_table);
    s->client_table = NULL;
    s->client_table_len = 0;
    LOG_INFO("state transfer: fetching checkpoint %llu from replica %u", (unsigned long long)s->seq,
             s->peer);
    request_chunk(s);
}

void node_state_fetch(node_state *s, uint64_t seq, const uint8_t digest[FB_DIGEST_LEN])
{
    if (s->seq != seq)
        s->stats.fetches++;
    s->seq = seq;
    memcpy(s->digest, digest, FB_DIGEST_LEN);
    restart(s);
}

static void abandon_peer(node_state *s, const char *why)
{
    s->stats.bad_peers++;
    LOG_WARN("state transfer: replica %u %s; trying another", s->peer, why);
    restart(s);
}

static void on_install_done(void *arg, const store_result *res)
{
    install_ctx *c = arg;
    node_state *s = c->s;
    bool current = c->generation == s->generation && s->seq != 0;
    bool commit = c->commit;
    free(c);
    if (!current)
        return;
    if (res->status != 0) {
        abandon_peer(s, res->status == FB_ECORRUPT ? "served state that does not match its digest"
                                                   : "served state the store refused");
        return;
    }
    if (!commit)
        return;
    uint64_t seq = s->seq;
    s->seq = 0;
    s->stats.installs++;
    LOG_INFO("state transfer: installed checkpoint %llu", (unsigned long long)seq);
    s->io.installed(s->io.arg, seq, s->app_digest, s->client_table, s->client_table_len);
}

static void submit_install(node_state *s, store_batch *b, bool commit)
{
    install_ctx *c = calloc(1, sizeof *c);
    if (!c) {
        store_batch_free(b);
        return;
    }
    *c = (install_ctx){s, s->generation, commit};
    if (s->io.submit(s->io.arg, b, on_install_done, c) != 0)
        free(c);
}

static void on_response(node_state *s, uint32_t from, const Fedbft__StateResponse *rp)
{
    if (s->seq == 0 || from != s->peer || rp->seq != s->seq || rp->chunk != s->next_chunk)
        return; /* stale or unsolicited */
    if (rp->unavailable) {
        LOG_INFO("state transfer: replica %u cannot serve checkpoint %llu", from,
                 (unsigned long long)s->seq);
        restart(s);
        return;
    }
    store_batch *b = store_batch_new();
    if (!b)
        return;
    if (rp->chunk == 0) {
        uint8_t d[FB_DIGEST_LEN];
        if (rp->app_digest.len != FB_DIGEST_LEN || rp->chunk_count == 0) {
            store_batch_free(b);
            abandon_peer(s, "sent a malformed first chunk");
            return;
        }
        pbft_state_digest(rp->app_digest.data, rp->client_table.data, rp->client_table.len, d);
        if (memcmp(d, s->digest, FB_DIGEST_LEN) != 0) {
            store_batch_free(b);
            abandon_peer(s, "sent a client table and digest that do not match the certificate");
            return;
        }
        memcpy(s->app_digest, rp->app_digest.data, FB_DIGEST_LEN);
        s->client_table = malloc(rp->client_table.len ? rp->client_table.len : 1);
        if (!s->client_table) {
            store_batch_free(b);
            return;
        }
        memcpy(s->client_table, rp->client_table.data, rp->client_table.len);
        s->client_table_len = rp->client_table.len;
        s->chunk_count = rp->chunk_count;
        store_batch_install_begin(b, s->seq);
    }
    s->stats.chunks_in++;
    store_batch_install_chunk(b, rp->data.data, rp->data.len);
    s->next_chunk++;
    bool last = s->next_chunk >= s->chunk_count;
    if (last)
        store_batch_install_commit(b, s->seq, s->app_digest, s->client_table, s->client_table_len);
    submit_install(s, b, last);
    if (!last)
        request_chunk(s);
}

static void send_unavailable(node_state *s, uint32_t to, uint64_t seq, uint32_t chunk)
{
    Fedbft__StateResponse rp = FEDBFT__STATE_RESPONSE__INIT;
    rp.seq = seq;
    rp.chunk = chunk;
    rp.unavailable = true;
    rp.replica = s->self;
    s->stats.refused++;
    s->io.send(s->io.arg, to, FEDBFT__MSG_TYPE__MSG_STATE_RESPONSE, &rp.base);
}

static void on_chunk_read(void *arg, const store_result *res)
{
    serve_ctx *c = arg;
    node_state *s = c->s;
    s->serving--;
    const uint8_t *app = NULL, *ct = NULL;
    size_t ctlen = 0;
    if (res->status != 0 || !s->io.snapshot(s->io.arg, c->seq, &app, &ct, &ctlen)) {
        send_unavailable(s, c->to, c->seq, c->chunk);
        free(c);
        return;
    }
    Fedbft__StateResponse rp = FEDBFT__STATE_RESPONSE__INIT;
    rp.seq = c->seq;
    rp.state_digest = (ProtobufCBinaryData){FB_DIGEST_LEN, c->state_digest};
    rp.chunk = c->chunk;
    rp.chunk_count = res->chunk_count;
    rp.data = (ProtobufCBinaryData){res->chunk_len, (uint8_t *)res->chunk};
    rp.replica = s->self;
    if (c->chunk == 0) {
        rp.client_table = (ProtobufCBinaryData){ctlen, (uint8_t *)ct};
        rp.app_digest = (ProtobufCBinaryData){FB_DIGEST_LEN, (uint8_t *)app};
    }
    s->stats.chunks_out++;
    s->io.send(s->io.arg, c->to, FEDBFT__MSG_TYPE__MSG_STATE_RESPONSE, &rp.base);
    free(c);
}

static void on_request(node_state *s, uint32_t from, const Fedbft__StateRequest *rq)
{
    const uint8_t *app = NULL, *ct = NULL;
    size_t ctlen = 0;
    /* The store can rebuild the state at any checkpoint from the stable one
     * on; we must also still hold that checkpoint's client table. */
    if (s->serving >= MAX_SERVING || rq->seq < s->io.stable_seq(s->io.arg) ||
        rq->state_digest.len != FB_DIGEST_LEN ||
        !s->io.snapshot(s->io.arg, rq->seq, &app, &ct, &ctlen)) {
        send_unavailable(s, from, rq->seq, rq->chunk);
        return;
    }
    serve_ctx *c = calloc(1, sizeof *c);
    store_batch *b = store_batch_new();
    if (!c || !b || store_batch_state_chunk(b, rq->seq, rq->chunk) != 0) {
        free(c);
        if (b)
            store_batch_free(b);
        return;
    }
    *c = (serve_ctx){.s = s, .to = from, .seq = rq->seq, .chunk = rq->chunk};
    memcpy(c->state_digest, rq->state_digest.data, FB_DIGEST_LEN);
    s->serving++;
    if (s->io.submit(s->io.arg, b, on_chunk_read, c) != 0) {
        s->serving--;
        free(c);
    }
}

void node_state_on_message(node_state *s, uint32_t from, const Fedbft__Envelope *env)
{
    if (env->type == FEDBFT__MSG_TYPE__MSG_STATE_REQUEST) {
        Fedbft__StateRequest *rq =
            fedbft__state_request__unpack(NULL, env->payload.len, env->payload.data);
        if (rq && rq->replica == from)
            on_request(s, from, rq);
        if (rq)
            fedbft__state_request__free_unpacked(rq, NULL);
    } else if (env->type == FEDBFT__MSG_TYPE__MSG_STATE_RESPONSE) {
        Fedbft__StateResponse *rp =
            fedbft__state_response__unpack(NULL, env->payload.len, env->payload.data);
        if (rp && rp->replica == from)
            on_response(s, from, rp);
        if (rp)
            fedbft__state_response__free_unpacked(rp, NULL);
    }
}

void node_state_get_stats(const node_state *s, node_state_stats *out)
{
    *out = s->stats;
}
