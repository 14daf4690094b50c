/* client.c - the BFT client: one outstanding request, f+1 (or 2f+1) matching
 * replies. */
#include "client.h"

#include "envelope.h"
#include "fb_error.h"
#include "net.h"
#include "pbft.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct vote {
    bool have;
    uint8_t *result; /* packed Result */
    size_t len;
    uint64_t view, seq;
} vote;

struct fb_client {
    fb_client_config cfg;
    uint32_t client_id;
    net *net;
    uv_timer_t retx, deadline;
    bool closing;
    void (*close_cb)(void *);
    void *close_arg;
    int open_handles;

    /* the outstanding request */
    bool busy, read_only;
    uint64_t ts, last_ts;
    uint8_t *wire;
    size_t wire_len;
    Fedbft__Operation *op; /* kept to re-issue a read as an ordered request */
    vote *votes;           /* [n] */
    fb_client_cb cb;
    void *cb_arg;
    uint64_t view_hint;
    /* A reply has told the view (until then, with cfg.first_to_all, writes
     * go to every replica). */
    bool view_known;
    fb_client_stats stats;
    fb_client_msg_cb msg_cb; /* other messages from replicas (InferResult) */
    void *msg_arg;
};

static uint64_t wall_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void clear_votes(fb_client *c)
{
    for (uint32_t i = 0; i < c->cfg.cluster->n; i++) {
        free(c->votes[i].result);
        c->votes[i] = (vote){0};
    }
}

static void finish(fb_client *c, int status, const uint8_t *packed, size_t len, uint64_t seq)
{
    uv_timer_stop(&c->retx);
    uv_timer_stop(&c->deadline);
    fb_client_cb cb = c->cb;
    void *arg = c->cb_arg;
    Fedbft__Result *res = packed ? fedbft__result__unpack(NULL, len, packed) : NULL;
    c->busy = false;
    free(c->wire);
    c->wire = NULL;
    if (c->op)
        fedbft__operation__free_unpacked(c->op, NULL);
    c->op = NULL;
    c->stats.completed += status == 0;
    cb(arg, status, res, seq);
    if (res)
        fedbft__result__free_unpacked(res, NULL);
    clear_votes(c);
}

static void send_all(fb_client *c)
{
    for (uint32_t i = 0; i < c->cfg.cluster->n; i++)
        net_send_replica(c->net, i, c->wire, c->wire_len);
}

static void on_retx(uv_timer_t *t)
{
    fb_client *c = t->data;
    if (!c->busy)
        return;
    c->stats.retransmits++;
    send_all(c);
}

static void on_deadline(uv_timer_t *t)
{
    fb_client *c = t->data;
    if (!c->busy)
        return;
    c->stats.timeouts++;
    finish(c, FB_EIO, NULL, 0, 0);
}

/* Sign and send the current operation with a fresh timestamp. */
static int issue(fb_client *c)
{
    uint64_t ts = wall_us();
    c->ts = ts > c->last_ts ? ts : c->last_ts + 1;
    c->last_ts = c->ts;
    Fedbft__Request rq = FEDBFT__REQUEST__INIT;
    rq.client = c->client_id;
    rq.timestamp = c->ts;
    rq.op = c->op;
    rq.read_only = c->read_only;
    size_t plen = fedbft__request__get_packed_size(&rq);
    uint8_t *payload = malloc(plen ? plen : 1);
    if (!payload)
        return FB_ENOMEM;
    fedbft__request__pack(&rq, payload);
    free(c->wire);
    c->wire = NULL;
    int rc = fb_env_seal(FEDBFT__MSG_TYPE__MSG_REQUEST, c->client_id, payload, plen, c->cfg.id,
                         &c->wire, &c->wire_len);
    free(payload);
    if (rc)
        return rc;
    clear_votes(c);
    if (c->read_only || (!c->view_known && c->cfg.first_to_all))
        send_all(c);
    else
        net_send_replica(c->net, pbft_primary(c->view_hint, c->cfg.cluster->n), c->wire,
                         c->wire_len);
    uv_timer_start(&c->retx, on_retx, c->cfg.retransmit_ms, c->cfg.retransmit_ms);
    return 0;
}

/* Count replies matching v; the quorum needed depends on the request kind. */
static void tally(fb_client *c, const vote *v)
{
    uint32_t n = c->cfg.cluster->n, same = 0, have = 0;
    for (uint32_t i = 0; i < n; i++) {
        const vote *o = &c->votes[i];
        if (!o->have)
            continue;
        have++;
        same += o->len == v->len && memcmp(o->result, v->result, v->len) == 0;
    }
    uint32_t need = c->read_only ? pbft_quorum(n) : pbft_weak(n);
    if (same >= need) {
        finish(c, 0, v->result, v->len, v->seq);
        return;
    }
    /* A read can no longer reach agreement: order it instead. */
    if (c->read_only && have - same > n - need) {
        c->read_only = false;
        c->stats.fallbacks++;
        if (issue(c) != 0)
            finish(c, FB_ENOMEM, NULL, 0, 0);
    }
}

static void on_reply_frame(void *arg, uint32_t id, const uint8_t *frame, size_t len)
{
    fb_client *c = arg;
    Fedbft__Envelope *env = NULL;
    if (fb_env_unpack(frame, len, &env, NULL, 0) != 0)
        return;
    /* The link to replica id is authenticated by the channel. */
    if (env->type != FEDBFT__MSG_TYPE__MSG_REPLY && env->sender == id && c->msg_cb) {
        c->msg_cb(c->msg_arg, id, env->type, env->payload.data, env->payload.len);
        fedbft__envelope__free_unpacked(env, NULL);
        return;
    }
    if (!c->busy) {
        fedbft__envelope__free_unpacked(env, NULL);
        return;
    }
    /* The link to replica id is authenticated by the channel. */
    Fedbft__Reply *rp = NULL;
    if (env->type == FEDBFT__MSG_TYPE__MSG_REPLY && env->sender == id)
        rp = fedbft__reply__unpack(NULL, env->payload.len, env->payload.data);
    if (rp && rp->client == c->client_id && rp->timestamp == c->ts && rp->replica == id &&
        rp->result) {
        vote *v = &c->votes[id];
        free(v->result);
        v->len = fedbft__result__get_packed_size(rp->result);
        v->result = malloc(v->len ? v->len : 1);
        if (v->result) {
            fedbft__result__pack(rp->result, v->result);
            v->have = true;
            v->view = rp->view;
            v->seq = rp->seq;
            if (rp->view > c->view_hint)
                c->view_hint = rp->view;
            c->view_known = true;
            vote copy = *v; /* tally may finish and free the votes */
            uint8_t *bytes = malloc(copy.len ? copy.len : 1);
            if (bytes) {
                memcpy(bytes, copy.result, copy.len);
                copy.result = bytes;
                tally(c, &copy);
                free(bytes);
            }
        }
    }
    if (rp)
        fedbft__reply__free_unpacked(rp, NULL);
    fedbft__envelope__free_unpacked(env, NULL);
}

fb_client_config fb_client_one_shot(uv_loop_t *loop, const cfg_cluster *cluster,
                                    const fb_identity *id, uint64_t timeout_ms,
                                    uint64_t retransmit_ms)
{
    return (fb_client_config){.loop = loop,
                              .cluster = cluster,
                              .id = id,
                              .timeout_ms = timeout_ms,
                              .retransmit_ms = retransmit_ms,
                              .first_to_all = true};
}

int fb_client_new(const fb_client_config *cfg, fb_client **out, char *err, size_t errlen)
{
    const cfg_client *me = NULL;
    for (uint32_t i = 0; i < cfg->cluster->nclients; i++)
        if (memcmp(cfg->cluster->clients[i].pk, cfg->id->pk, FB_PK_LEN) == 0)
            me = &cfg->cluster->clients[i];
    if (!me) {
        char hex[FB_PK_HEX_LEN + 1];
        fb_pubkey_format(cfg->id->pk, hex);
        return fb_errf(err, errlen, FB_EUNKNOWNKEY,
                       "client key %s is not listed under \"clients\" in cluster.json", hex);
    }
    fb_client *c = calloc(1, sizeof *c);
    if (!c)
        return FB_ENOMEM;
    c->cfg = *cfg;
    if (!c->cfg.retransmit_ms)
        c->cfg.retransmit_ms = 1000;
    if (!c->cfg.timeout_ms)
        c->cfg.timeout_ms = 30000;
    c->client_id = me->id;
    c->votes = calloc(cfg->cluster->n, sizeof *c->votes);
    net_config nc = {.mode = NET_MODE_CLIENT,
                     .loop = cfg->loop,
                     .self = cfg->id,
                     .self_id = me->id,
                     .cluster = cfg->cluster};
    net_callbacks cb = {.on_replica_frame = on_reply_frame, .arg = c};
    int rc = c->votes ? net_new(&nc, &cb, &c->net, err, errlen) : FB_ENOMEM;
    if (rc) {
        free(c->votes);
        free(c);
        return rc;
    }
    uv_timer_init(cfg->loop, &c->retx);
    uv_timer_init(cfg->loop, &c->deadline);
    c->retx.data = c->deadline.data = c;
    *out = c;
    return 0;
}

int fb_client_start(fb_client *c, char *err, size_t errlen)
{
    return net_start(c->net, err, errlen);
}

int fb_client_submit(fb_client *c, const Fedbft__Operation *op, bool read_only, fb_client_cb cb,
                     void *arg)
{
    if (c->busy)
        return FB_EBUSY;
    /* Keep a private copy of op: a read may have to be re-issued ordered. */
    size_t len = fedbft__operation__get_packed_size(op);
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf)
        return FB_ENOMEM;
    fedbft__operation__pack(op, buf);
    c->op = fedbft__operation__unpack(NULL, len, buf);
    free(buf);
    if (!c->op)
        return FB_ENOMEM;
    c->busy = true;
    c->read_only = read_only;
    c->cb = cb;
    c->cb_arg = arg;
    c->stats.submitted++;
    int rc = issue(c);
    if (rc) {
        c->busy = false;
        fedbft__operation__free_unpacked(c->op, NULL);
        c->op = NULL;
        return rc;
    }
    uv_timer_start(&c->deadline, on_deadline, c->cfg.timeout_ms, 0);
    return 0;
}

void fb_client_on_message(fb_client *c, fb_client_msg_cb cb, void *arg)
{
    c->msg_cb = cb;
    c->msg_arg = arg;
}

uint64_t fb_client_last_timestamp(const fb_client *c)
{
    return c->last_ts;
}

uint32_t fb_client_links_up(const fb_client *c)
{
    uint32_t up = 0;
    for (uint32_t i = 0; i < c->cfg.cluster->n; i++)
        up += net_replica_connected(c->net, i);
    return up;
}

uint32_t fb_client_id(const fb_client *c)
{
    return c->client_id;
}

void fb_client_get_stats(const fb_client *c, fb_client_stats *out)
{
    *out = c->stats;
}

static void closed_one(fb_client *c)
{
    if (--c->open_handles == 0 && c->close_cb)
        c->close_cb(c->close_arg);
}

static void on_timer_closed(uv_handle_t *h)
{
    closed_one(h->data);
}

static void on_net_closed(void *arg)
{
    closed_one(arg);
}

void fb_client_close(fb_client *c, void (*cb)(void *arg), void *arg)
{
    c->closing = true;
    c->close_cb = cb;
    c->close_arg = arg;
    c->open_handles = 3;
    uv_close((uv_handle_t *)&c->retx, on_timer_closed);
    uv_close((uv_handle_t *)&c->deadline, on_timer_closed);
    net_close(c->net, on_net_closed, c);
}

void fb_client_free(fb_client *c)
{
    if (!c)
        return;
    clear_votes(c);
    free(c->votes);
    free(c->wire);
    if (c->op)
        fedbft__operation__free_unpacked(c->op, NULL);
    net_free(c->net);
    free(c);
}
