/* node_state.c - fetching and serving checkpoint state, chunk by chunk. */
#include "node_state.h"

#include "fb_error.h"
#include "log.h"
#include "pbft.h"

#include <stdlib.h>
#include <string.h>

#define MAX_SERVING 8 /* state chunks being read for peers at once */
#define MAX_STAGING 4 /* fetched chunks waiting for the store at once */
/* Chunk requests out to the peer at once (after chunk 0, which tells the
 * count): the peer's store reads queue behind its own commits, so one at a
 * time would make a transfer a round trip through that queue per chunk. */
#define REQUEST_WINDOW 4

struct node_state {
    node_state_config cfg;
    node_state_io io;
    /* requester */
    uint64_t seq; /* 0 = not fetching */
    uint8_t digest[FB_DIGEST_LEN];
    uint32_t peer;
    uint32_t next_chunk, chunk_count; /* next_chunk: the one we take next */
    uint32_t asked_upto;              /* chunks below it were asked for */
    uint8_t app_digest[FB_DIGEST_LEN];
    uint8_t *client_table;
    size_t client_table_len;
    uint64_t generation;  /* bumps on every restart, so stale completions are ignored */
    uint64_t started_ms;  /* this fetch began */
    uint64_t asked_ms;    /* a request went out or an answer came; 0 = none outstanding */
    uint64_t resume_ms;   /* paused until then; 0 = not paused */
    uint32_t resume_peer; /* ...and then ask this one */
    uint32_t fails;       /* peers in a row that failed this fetch */
    uint32_t staging;     /* install batches at the store (any generation) */
    bool committing;      /* the last chunk and the commit are at the store */
    /* server */
    uint32_t serving;
    bool corrupt;
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

int node_state_new(const node_state_config *cfg, const node_state_io *io, node_state **out)
{
    if (cfg->n < 2 || cfg->self >= cfg->n)
        return FB_EINVAL;
    node_state *s = calloc(1, sizeof *s);
    if (!s)
        return FB_ENOMEM;
    s->cfg = *cfg;
    if (!s->cfg.chunk_timeout_ms)
        s->cfg.chunk_timeout_ms = NODE_STATE_CHUNK_TIMEOUT_MS;
    if (!s->cfg.pause_ms)
        s->cfg.pause_ms = NODE_STATE_PAUSE_MS;
    s->io = *io;
    s->peer = cfg->self;
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

static uint64_t now(const node_state *s)
{
    return s->io.now_ms(s->io.arg);
}

/* The next peer after the current one in id order: the next connected one
 * if any is. */
static uint32_t next_peer(const node_state *s)
{
    uint32_t first = s->cfg.self;
    for (uint32_t k = 1; k < s->cfg.n; k++) {
        uint32_t p = (s->peer + k) % s->cfg.n;
        if (p == s->cfg.self)
            continue;
        if (!s->io.peer_up || s->io.peer_up(s->io.arg, p))
            return p;
        if (first == s->cfg.self)
            first = p;
    }
    return first == s->cfg.self ? s->peer : first;
}

/* ------------------------------------------------------------ requester */

static void on_install_done(void *arg, const store_result *res);

static bool submit_install(node_state *s, store_batch *b, bool commit)
{
    install_ctx *c = calloc(1, sizeof *c);
    if (!c) {
        store_batch_free(b);
        return false;
    }
    *c = (install_ctx){s, s->generation, commit};
    if (s->io.submit(s->io.arg, b, on_install_done, c) != 0) {
        free(c); /* the store freed the batch */
        return false;
    }
    s->staging++;
    return true;
}

/* Empty the staging area of an attempt given up (best effort: the next
 * attempt's first chunk clears it too). */
static void drop_staged(node_state *s)
{
    store_batch *b = store_batch_new();
    if (b && store_batch_install_abort(b) == 0)
        submit_install(s, b, false);
    else if (b)
        store_batch_free(b);
}

/* Ask for the next chunks, up to REQUEST_WINDOW out at once, unless we wait
 * or too many chunks are still on their way to the disk. */
static void maybe_request(node_state *s)
{
    if (!s->seq || s->committing || s->resume_ms)
        return;
    /* Until chunk 0 tells the count, only chunk 0. */
    uint32_t limit = s->chunk_count ? s->chunk_count : 1;
    while (s->asked_upto < limit && s->asked_upto - s->next_chunk < REQUEST_WINDOW &&
           s->staging < MAX_STAGING) {
        Fedbft__StateRequest rq = FEDBFT__STATE_REQUEST__INIT;
        rq.seq = s->seq;
        rq.state_digest = (ProtobufCBinaryData){FB_DIGEST_LEN, s->digest};
        rq.chunk = s->asked_upto++;
        rq.replica = s->cfg.self;
        uint64_t t = now(s);
        if (!s->asked_ms)
            s->asked_ms = t ? t : 1; /* 0 means "none outstanding" */
        s->io.send(s->io.arg, s->peer, FEDBFT__MSG_TYPE__MSG_STATE_REQUEST, &rq.base);
    }
}

/* Start the current fetch over, from chunk 0, with peer. */
static void begin_with(node_state *s, uint32_t peer)
{
    s->generation++;
    s->peer = peer;
    s->next_chunk = 0;
    s->asked_upto = 0;
    s->chunk_count = 0;
    s->asked_ms = 0;
    s->resume_ms = 0;
    s->committing = false;
    free(s->client_table);
    s->client_table = NULL;
    s->client_table_len = 0;
    LOG_INFO("state transfer: fetching checkpoint %llu from replica %u", (unsigned long long)s->seq,
             s->peer);
    maybe_request(s);
}

/* Stop asking until pause_ms from now, then start over with peer. */
static void pause_then(node_state *s, uint32_t peer)
{
    s->generation++; /* late answers and completions of this attempt are ignored */
    s->asked_ms = 0;
    s->committing = false;
    s->resume_ms = now(s) + s->cfg.pause_ms;
    s->resume_peer = peer;
}

/* The current peer failed (nothing in time, unable, or bad state): on to the
 * next one, or pause once every peer failed in a row. */
static void peer_failed(node_state *s)
{
    if (s->next_chunk > 0)
        drop_staged(s);
    if (++s->fails < s->cfg.n - 1) {
        begin_with(s, next_peer(s));
        return;
    }
    pause_then(s, next_peer(s));
    LOG_WARN("state transfer: no replica served checkpoint %llu; asking again in %llu ms",
             (unsigned long long)s->seq, (unsigned long long)s->cfg.pause_ms);
    if (s->io.unservable)
        s->io.unservable(s->io.arg, s->seq); /* may call node_state_fetch with a newer one */
}

static void abandon_peer(node_state *s, const char *why)
{
    s->stats.bad_peers++;
    LOG_WARN("state transfer: replica %u %s (checkpoint %llu); trying another", s->peer, why,
             (unsigned long long)s->seq);
    peer_failed(s);
}

void node_state_fetch(node_state *s, uint64_t seq, const uint8_t digest[FB_DIGEST_LEN])
{
    if (s->seq == seq && memcmp(s->digest, digest, FB_DIGEST_LEN) == 0)
        return; /* in progress: stalls and refusals are handled here */
    /* A peer that was delivering keeps the (newer) fetch. */
    bool keep = s->seq != 0 && s->next_chunk > 0 && !s->resume_ms;
    if (s->next_chunk > 0)
        drop_staged(s);
    s->stats.fetches++;
    s->seq = seq;
    memcpy(s->digest, digest, FB_DIGEST_LEN);
    s->started_ms = now(s);
    s->fails = 0;
    begin_with(s, keep ? s->peer : next_peer(s));
}

void node_state_tick(node_state *s)
{
    if (!s->seq || s->committing)
        return;
    uint64_t t = now(s);
    if (s->resume_ms) {
        if (t >= s->resume_ms) {
            s->fails = 0;
            begin_with(s, s->resume_peer);
        }
        return;
    }
    if (s->asked_ms && t >= s->asked_ms + s->cfg.chunk_timeout_ms) {
        s->stats.timeouts++;
        LOG_WARN("state transfer: replica %u sent nothing for %llu ms (checkpoint %llu, chunk %u); "
                 "trying another",
                 s->peer, (unsigned long long)(t - s->asked_ms), (unsigned long long)s->seq,
                 s->next_chunk);
        peer_failed(s);
    }
}

static void on_install_done(void *arg, const store_result *res)
{
    install_ctx *c = arg;
    node_state *s = c->s;
    bool current = c->generation == s->generation && s->seq != 0;
    bool commit = c->commit;
    free(c);
    s->staging--;
    if (!current) {
        maybe_request(s); /* the current attempt may wait for room */
        return;
    }
    if (res->status == FB_ECORRUPT) {
        abandon_peer(s, commit ? "served state that does not match its certified digest"
                               : "served a malformed chunk");
        return;
    }
    if (res->status != 0) {
        LOG_WARN("state transfer: the store failed on checkpoint %llu (%s); starting over in %llu "
                 "ms",
                 (unsigned long long)s->seq, fb_strerror(res->status),
                 (unsigned long long)s->cfg.pause_ms);
        drop_staged(s);
        pause_then(s, s->peer);
        return;
    }
    if (!commit) {
        maybe_request(s);
        return;
    }
    uint64_t seq = s->seq, ms = now(s) - s->started_ms;
    s->seq = 0;
    s->committing = false;
    s->stats.installs++;
    LOG_INFO("state transfer: installed checkpoint seq %llu (%llu keys in %u chunks) from replica "
             "%u in %llu ms",
             (unsigned long long)seq, (unsigned long long)res->kv_keys, s->chunk_count, s->peer,
             (unsigned long long)ms);
    s->io.installed(s->io.arg, seq, s->app_digest, s->client_table, s->client_table_len);
}

/* Chunk 0: the client table and KV digest, checked against the certificate. */
static bool accept_first(node_state *s, const Fedbft__StateResponse *rp, store_batch *b)
{
    uint8_t d[FB_DIGEST_LEN];
    if (rp->app_digest.len != FB_DIGEST_LEN || rp->chunk_count == 0) {
        abandon_peer(s, "sent a malformed first chunk");
        return false;
    }
    pbft_state_digest(rp->app_digest.data, rp->client_table.data, rp->client_table.len, d);
    if (memcmp(d, s->digest, FB_DIGEST_LEN) != 0) {
        abandon_peer(s, "sent a client table and digest that do not match the certificate");
        return false;
    }
    uint8_t *ct = malloc(rp->client_table.len ? rp->client_table.len : 1);
    if (!ct) {
        peer_failed(s);
        return false;
    }
    memcpy(ct, rp->client_table.data, rp->client_table.len);
    memcpy(s->app_digest, rp->app_digest.data, FB_DIGEST_LEN);
    free(s->client_table);
    s->client_table = ct;
    s->client_table_len = rp->client_table.len;
    s->chunk_count = rp->chunk_count;
    store_batch_install_begin(b, s->seq);
    return true;
}

static void on_response(node_state *s, uint32_t from, const Fedbft__StateResponse *rp)
{
    if (s->seq == 0 || !s->asked_ms || from != s->peer || rp->seq != s->seq ||
        rp->chunk < s->next_chunk || rp->chunk >= s->asked_upto)
        return; /* stale or unsolicited */
    /* The peer answers our requests in order, but refuses one at once when
     * it cannot serve it (unavailable may overtake earlier chunks). */
    if (!rp->unavailable && rp->chunk != s->next_chunk)
        return;
    /* The peer is alive: the timeout counts from its latest answer. */
    s->asked_ms = 0;
    if (s->asked_upto > rp->chunk + 1 && !(s->asked_ms = now(s)))
        s->asked_ms = 1;
    if (rp->unavailable) {
        LOG_INFO("state transfer: replica %u cannot serve checkpoint %llu", from,
                 (unsigned long long)s->seq);
        peer_failed(s);
        return;
    }
    if (rp->chunk > 0 && rp->chunk_count != s->chunk_count) {
        abandon_peer(s, "changed the chunk count mid-transfer");
        return;
    }
    store_batch *b = store_batch_new();
    if (!b) {
        peer_failed(s);
        return;
    }
    if (rp->chunk == 0 && !accept_first(s, rp, b)) {
        store_batch_free(b);
        return;
    }
    s->stats.chunks_in++;
    store_batch_install_chunk(b, rp->data.data, rp->data.len);
    s->next_chunk++;
    bool last = s->next_chunk >= s->chunk_count;
    if (last) {
        store_batch_install_commit(b, s->seq, s->app_digest, s->client_table, s->client_table_len);
        s->committing = true;
    }
    if (!submit_install(s, b, last)) {
        /* Our store is overloaded, not the peer at fault: same peer, later. */
        LOG_WARN("state transfer: the store refused a chunk; starting over in %llu ms",
                 (unsigned long long)s->cfg.pause_ms);
        drop_staged(s);
        pause_then(s, s->peer);
        return;
    }
    maybe_request(s);
}

/* ------------------------------------------------------------ server */

static void send_unavailable(node_state *s, uint32_t to, uint64_t seq, uint32_t chunk)
{
    Fedbft__StateResponse rp = FEDBFT__STATE_RESPONSE__INIT;
    rp.seq = seq;
    rp.chunk = chunk;
    rp.unavailable = true;
    rp.replica = s->cfg.self;
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
    uint8_t *bad = NULL;
    const uint8_t *data = res->chunk;
    if (s->corrupt && res->chunk_len > 0 && (bad = malloc(res->chunk_len)) != NULL) {
        memcpy(bad, res->chunk, res->chunk_len);
        bad[res->chunk_len - 1] ^= 0x5a; /* the last byte of the last value */
        data = bad;
    }
    Fedbft__StateResponse rp = FEDBFT__STATE_RESPONSE__INIT;
    rp.seq = c->seq;
    rp.state_digest = (ProtobufCBinaryData){FB_DIGEST_LEN, c->state_digest};
    rp.chunk = c->chunk;
    rp.chunk_count = res->chunk_count;
    rp.data = (ProtobufCBinaryData){res->chunk_len, (uint8_t *)data};
    rp.replica = s->cfg.self;
    if (c->chunk == 0) {
        rp.client_table = (ProtobufCBinaryData){ctlen, (uint8_t *)ct};
        rp.app_digest = (ProtobufCBinaryData){FB_DIGEST_LEN, (uint8_t *)app};
    }
    s->stats.chunks_out++;
    s->io.send(s->io.arg, c->to, FEDBFT__MSG_TYPE__MSG_STATE_RESPONSE, &rp.base);
    free(bad);
    free(c);
}

static void on_request(node_state *s, uint32_t from, const Fedbft__StateRequest *rq)
{
    const uint8_t *app = NULL, *ct = NULL;
    size_t ctlen = 0;
    /* We must still hold that checkpoint's client table; the store refuses
     * (and we answer unavailable) once it can no longer rebuild its pairs. */
    if (s->serving >= MAX_SERVING || rq->state_digest.len != FB_DIGEST_LEN ||
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
        send_unavailable(s, from, rq->seq, rq->chunk);
        return;
    }
    *c = (serve_ctx){.s = s, .to = from, .seq = rq->seq, .chunk = rq->chunk};
    memcpy(c->state_digest, rq->state_digest.data, FB_DIGEST_LEN);
    s->serving++;
    if (s->io.submit(s->io.arg, b, on_chunk_read, c) != 0) {
        s->serving--;
        free(c);
        send_unavailable(s, from, rq->seq, rq->chunk);
    }
}

/* ------------------------------------------------------------ dispatch */

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

void node_state_set_corrupt(node_state *s, bool on)
{
    s->corrupt = on;
}

bool node_state_corrupt(const node_state *s)
{
    return s->corrupt;
}

void node_state_get_stats(const node_state *s, node_state_stats *out)
{
    *out = s->stats;
}
