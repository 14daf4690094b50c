/* bench_frame.c - what receiving one consensus message costs, stage by stage,
 * next to one signature check.  Built with the suite, run by hand:
 *
 *   build/tests/bench/bench_frame [--rounds R] [--scale S]
 *
 * The path is the node's (node/net.c, node/node.c): a length-prefixed AEAD
 * record is fed to the secure channel (crypto/channel.h) in 16 KiB reads like
 * net.c's and decrypted; on a replica link the plaintext Envelope is unpacked
 * once as a pre-check (fb_env_unpack + free, node.c on_replica_frame), then
 * pbft_parse unpacks it again with its payload, computes the envelope digest
 * and, for a PRE-PREPARE, parses every relayed request (finding the ones the
 * replica already holds, so their digests are reused) and recomputes the batch
 * digest; finally pbft_msg_signatures lists what the batch verifier must check.
 * Signatures are not checked on this path (worker threads do that); "verify"
 * is one fb_sig_verify, for scale.  REQUEST arrives on a client link: no
 * pre-check, and its parse is a first arrival (the replica's lookup misses).
 * Requests carry a PUT with a 64-byte value (--value B to change it).
 *
 * Table 1, ns per message (best of R rounds; every stage of every kind is
 * measured in each round, in turn, so load drifting on the machine hits all
 * alike):  chan = record framing + XChaCha20-Poly1305 open; env = the
 * pre-check unpack; parse = pbft_parse + unref, by a backup that holds the
 * batch's requests; digest = the part of parse that is the envelope BLAKE2b
 * over the whole payload; sigs = pbft_msg_signatures; full = everything at
 * once as the node does it (the sum of the stages, give or take cache
 * effects), with its median over rounds and messages/s.  full/verify says
 * how many messages decode in the time of one Ed25519 verification.
 *
 * Table 2, the digest cache: parsing a PRE-PREPARE (or a REQUEST) when the
 * replica holds its requests already ("hit", the normal case at a backup: the
 * client sent them to every replica), when it does not ("miss": pbft_parse
 * looks and fails, then digests them), and with no lookup at all ("none",
 * pbft_msg_parse with NULL lookup, digests recomputed).  none/hit is the gain
 * of reusing digests; miss/hit adds the cost of a failed lookup.  "req dg"
 * is request digests computed per parse (0 when the cache works).
 */
#include "bench_util.h"

#include "channel.h"
#include "envelope.h"
#include "pbft.h"

#include <getopt.h>

#define NCLIENTS 64           /* distinct clients: one pending request each */
#define READ_BUF (16u * 1024) /* net.c reads at most this much at a time */
#define MAX_SIGS 80

/* ------------------------------------------------------------ byte buffer */

typedef struct bytes {
    uint8_t *p;
    size_t len, cap;
} bytes;

static void bytes_put(bytes *b, const uint8_t *p, size_t n)
{
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n)
            cap *= 2;
        b->p = realloc(b->p, cap);
        if (!b->p)
            bench_die("realloc", FB_ENOMEM);
        b->cap = cap;
    }
    memcpy(b->p + b->len, p, n);
    b->len += n;
}

/* ------------------------------------------------------------ the kinds measured */

typedef struct kind {
    const char *name;
    bool client_link;  /* REQUEST: no env pre-check */
    pbft_msg *msg;     /* as its sender made it */
    pbft_replica *rx;  /* who parses it */
    const uint8_t *pk; /* its signer's key, for the verify */
    size_t iters;
    bench_stat chan, env, parse, digest, sigs, full;
} kind;

/* A receiving end: what the channel's frame callback does. */
typedef enum rx_mode { RX_COUNT, RX_FULL } rx_mode;

typedef struct rx_ctx {
    rx_mode mode;
    kind *k;
    size_t frames;
    int failed;
} rx_ctx;

static volatile size_t sink;

static void null_sign(void *arg, const uint8_t digest[FB_DIGEST_LEN], uint8_t sig[FB_SIG_LEN])
{
    (void)arg;
    memset(sig, 0, FB_SIG_LEN);
    memcpy(sig, digest, FB_DIGEST_LEN);
}

/* node.c's on_replica_frame / on_client_frame up to the verification job. */
static void receive_one(kind *k, const uint8_t *plain, size_t len, int *failed)
{
    char err[160];
    if (!k->client_link) {
        Fedbft__Envelope *env = NULL;
        if (fb_env_unpack(plain, len, &env, err, sizeof err) != 0) {
            (*failed)++;
            return;
        }
        sink += env->type;
        fedbft__envelope__free_unpacked(env, NULL);
    }
    pbft_msg *m = NULL;
    if (pbft_parse(k->rx, plain, len, &m, err, sizeof err) != 0) {
        (*failed)++;
        return;
    }
    pbft_sigref sigs[MAX_SIGS];
    int n = pbft_msg_signatures(m, sigs, MAX_SIGS);
    if (n <= 0)
        (*failed)++;
    sink += (size_t)n;
    pbft_msg_unref(m);
}

/* An established channel pair: replica 0 sends, replica 1 receives. */
typedef struct chan_pair {
    fb_chan *tx, *rx;
    bytes wire_tx, wire_rx; /* bytes in flight to rx and to tx */
    rx_ctx ctx;
} chan_pair;

static void on_frame(void *arg, const uint8_t *plain, size_t len)
{
    rx_ctx *c = &((chan_pair *)arg)->ctx;
    c->frames++;
    if (c->mode == RX_FULL)
        receive_one(c->k, plain, len, &c->failed);
    else
        sink += plain[0];
}

static void tx_send(void *arg, const uint8_t *p, size_t n)
{
    bytes_put(&((chan_pair *)arg)->wire_tx, p, n);
}

static void rx_send(void *arg, const uint8_t *p, size_t n)
{
    bytes_put(&((chan_pair *)arg)->wire_rx, p, n);
}

static void pair_open(chan_pair *l, const fb_identity *a, const fb_identity *b)
{
    uint8_t allow_a[1][FB_PK_LEN], allow_b[1][FB_PK_LEN];
    memcpy(allow_a[0], b->pk, FB_PK_LEN);
    memcpy(allow_b[0], a->pk, FB_PK_LEN);
    fb_chan_config ca = {.role = FB_CHAN_INITIATOR,
                         .self = a,
                         .allowed = (const uint8_t(*)[FB_PK_LEN])allow_a,
                         .allowed_count = 1,
                         .sender_id = 0,
                         .io = {.send = tx_send, .frame = on_frame, .arg = l}};
    fb_chan_config cb = {.role = FB_CHAN_RESPONDER,
                         .self = b,
                         .allowed = (const uint8_t(*)[FB_PK_LEN])allow_b,
                         .allowed_count = 1,
                         .sender_id = 1,
                         .io = {.send = rx_send, .frame = on_frame, .arg = l}};
    int rc = fb_chan_new(&ca, &l->tx);
    if (!rc)
        rc = fb_chan_new(&cb, &l->rx);
    if (!rc)
        rc = fb_chan_start(l->tx);
    /* HELLO, REPLY, FINISH */
    for (int i = 0; !rc && i < 3; i++) {
        bytes *from = i % 2 == 0 ? &l->wire_tx : &l->wire_rx;
        fb_chan *to = i % 2 == 0 ? l->rx : l->tx;
        bytes msg = *from;
        *from = (bytes){0};
        rc = fb_chan_feed(to, msg.p, msg.len);
        free(msg.p);
    }
    if (rc || fb_chan_get_state(l->tx) != FB_CHAN_ESTABLISHED ||
        fb_chan_get_state(l->rx) != FB_CHAN_ESTABLISHED)
        bench_die("channel handshake", rc ? rc : FB_ESTATE);
}

/* ------------------------------------------------------------ stages */

static void seal(chan_pair *l, const kind *k)
{
    l->wire_tx.len = 0;
    for (size_t i = 0; i < k->iters; i++) {
        int rc = fb_chan_write(l->tx, k->msg->raw, k->msg->raw_len);
        if (rc)
            bench_die("fb_chan_write", rc);
    }
}

/* Feed what was sealed in net.c-sized reads; seconds per message. */
static double feed(chan_pair *l, kind *k, rx_mode mode)
{
    l->ctx = (rx_ctx){.mode = mode, .k = k};
    double t0 = bench_now();
    for (size_t off = 0; off < l->wire_tx.len; off += READ_BUF) {
        size_t n = l->wire_tx.len - off < READ_BUF ? l->wire_tx.len - off : READ_BUF;
        int rc = fb_chan_feed(l->rx, l->wire_tx.p + off, n);
        if (rc)
            bench_die("fb_chan_feed", rc);
    }
    double dt = bench_now() - t0;
    if (l->ctx.frames != k->iters || l->ctx.failed) {
        fprintf(stderr, "bench: %s: %zu of %zu frames, %d failed to decode\n", k->name,
                l->ctx.frames, k->iters, l->ctx.failed);
        exit(1);
    }
    return dt / (double)k->iters;
}

static double time_env(const kind *k)
{
    char err[160];
    double t0 = bench_now();
    for (size_t i = 0; i < k->iters; i++) {
        Fedbft__Envelope *env = NULL;
        if (fb_env_unpack(k->msg->raw, k->msg->raw_len, &env, err, sizeof err) != 0)
            bench_die("fb_env_unpack", FB_EINVAL);
        sink += env->sender;
        fedbft__envelope__free_unpacked(env, NULL);
    }
    return (bench_now() - t0) / (double)k->iters;
}

typedef enum parse_how { P_REPLICA, P_NO_LOOKUP } parse_how;

/* Seconds per parse; *req_digests = request digests computed per parse. */
static double time_parse(const kind *k, pbft_replica *rx, parse_how how, size_t iters,
                         double *req_digests)
{
    char err[160];
    pbft_status before, after;
    pbft_get_status(rx, &before);
    pbft_digest_stats st = {0};
    double t0 = bench_now();
    for (size_t i = 0; i < iters; i++) {
        pbft_msg *m = NULL;
        int rc = how == P_REPLICA
                     ? pbft_parse(rx, k->msg->raw, k->msg->raw_len, &m, err, sizeof err)
                     : pbft_msg_parse(k->msg->raw, k->msg->raw_len, NULL, &st, &m, err, sizeof err);
        if (rc) {
            fprintf(stderr, "bench: parse %s: %s\n", k->name, err);
            exit(1);
        }
        pbft_msg_unref(m);
    }
    double dt = (bench_now() - t0) / (double)iters;
    pbft_get_status(rx, &after);
    uint64_t d = how == P_REPLICA ? after.digests.requests - before.digests.requests : st.requests;
    if (req_digests)
        *req_digests = (double)d / (double)iters;
    return dt;
}

static double time_digest(const kind *k)
{
    const Fedbft__Envelope *e = k->msg->env;
    uint8_t d[FB_DIGEST_LEN];
    double t0 = bench_now();
    for (size_t i = 0; i < k->iters; i++) {
        fb_env_digest(e->type, e->version, e->sender, e->payload.data, e->payload.len, d);
        sink += d[0];
    }
    return (bench_now() - t0) / (double)k->iters;
}

static double time_sigs(const kind *k)
{
    pbft_sigref sigs[MAX_SIGS];
    double t0 = bench_now();
    for (size_t i = 0; i < k->iters; i++)
        sink += (size_t)pbft_msg_signatures(k->msg, sigs, MAX_SIGS);
    return (bench_now() - t0) / (double)k->iters;
}

static double time_verify(const kind *k, size_t iters)
{
    double t0 = bench_now();
    size_t ok = 0;
    for (size_t i = 0; i < iters; i++)
        ok += fb_sig_verify(k->pk, k->msg->digest, k->msg->env->signature.data) == 0;
    double dt = (bench_now() - t0) / (double)iters;
    if (ok != iters)
        bench_die("fb_sig_verify", FB_EAUTH);
    return dt;
}

/* ------------------------------------------------------------ setup */

static pbft_replica *backup(void)
{
    pbft_config cfg = {.n = 4, .id = 1, .signer = {null_sign, NULL}};
    pbft_replica *r = NULL;
    char err[160];
    if (pbft_new(&cfg, &r, err, sizeof err) != 0) {
        fprintf(stderr, "bench: pbft_new: %s\n", err);
        exit(1);
    }
    return r;
}

/* The client sent its request to this replica too: it is pending there. */
static void hold_request(pbft_replica *r, const pbft_msg *req)
{
    pbft_msg *m = NULL;
    char err[160];
    if (pbft_parse(r, req->raw, req->raw_len, &m, err, sizeof err) != 0)
        bench_die("pbft_parse(REQUEST)", FB_EINVAL);
    pbft_event ev = {.kind = PBFT_EV_REQUEST, .now_ms = 1, .msg = m};
    size_t n;
    pbft_step(r, &ev, &n);
    pbft_msg_unref(m);
}

static pbft_msg *make_pre_prepare(pbft_msg *const *reqs, size_t n, const fb_identity *primary)
{
    uint8_t d[FB_DIGEST_LEN];
    pbft_batch_digest(1, reqs, n, NULL, d);
    Fedbft__Envelope *envs[NCLIENTS];
    for (size_t i = 0; i < n; i++)
        envs[i] = reqs[i]->env;
    Fedbft__PrePrepare pp = FEDBFT__PRE_PREPARE__INIT;
    pp.view = 0;
    pp.seq = 1;
    pp.digest = (ProtobufCBinaryData){FB_DIGEST_LEN, d};
    pp.requests = envs;
    pp.n_requests = n;
    pp.nondet = 1;
    pbft_signer s = {bench_sign_ed25519, (void *)primary};
    pbft_msg *m = NULL;
    int rc =
        pbft_msg_make_batch(FEDBFT__MSG_TYPE__MSG_PRE_PREPARE, 0, &pp.base, reqs, n, &s, NULL, &m);
    if (rc)
        bench_die("pbft_msg_make_batch", rc);
    return m;
}

static pbft_msg *make_vote(int type, uint32_t replica, const uint8_t *digest, const fb_identity *id)
{
    Fedbft__Prepare p = FEDBFT__PREPARE__INIT;
    Fedbft__Commit c = FEDBFT__COMMIT__INIT;
    ProtobufCBinaryData d = {FB_DIGEST_LEN, (uint8_t *)digest};
    p.view = c.view = 0;
    p.seq = c.seq = 1;
    p.digest = c.digest = d;
    p.replica = c.replica = replica;
    pbft_signer s = {bench_sign_ed25519, (void *)id};
    pbft_msg *m = NULL;
    int rc = pbft_msg_make(type, replica, type == FEDBFT__MSG_TYPE__MSG_PREPARE ? &p.base : &c.base,
                           &s, NULL, &m);
    if (rc)
        bench_die("pbft_msg_make(vote)", rc);
    return m;
}

/* ------------------------------------------------------------ main */

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: bench_frame [--rounds R] [--scale S] [--value B]\n"
            "  --rounds R  rounds; figures are the best round (default 5, at most %d)\n"
            "  --scale S   messages per measurement, as a multiple of the default\n"
            "              (default 1.0: 10000 small messages, 400 PRE-PREPAREs of 64)\n"
            "  --value B   bytes of each request's PUT value (default 64)\n",
            BENCH_MAX_ROUNDS);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {{"rounds", required_argument, NULL, 'r'},
                                         {"scale", required_argument, NULL, 's'},
                                         {"value", required_argument, NULL, 'v'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    int rounds = 5, c;
    double scale = 1.0;
    size_t value_len = 64;
    while ((c = getopt_long(argc, argv, "r:s:v:h", opts, NULL)) != -1) {
        switch (c) {
        case 'r':
            rounds = atoi(optarg);
            break;
        case 's':
            scale = atof(optarg);
            break;
        case 'v':
            value_len = strtoul(optarg, NULL, 10);
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (rounds < 1 || rounds > BENCH_MAX_ROUNDS || scale <= 0 || value_len > 4096) {
        usage(stderr);
        return 2;
    }
    if (fb_crypto_init() != 0)
        return 1;

    fb_identity rkeys[4], ckeys[NCLIENTS];
    for (uint32_t i = 0; i < 4; i++)
        bench_key(1, i, &rkeys[i]);
    pbft_msg *reqs[NCLIENTS];
    for (uint32_t i = 0; i < NCLIENTS; i++) {
        bench_key(2, i, &ckeys[i]);
        reqs[i] = bench_request(&ckeys[i], i, 1, i, value_len);
    }
    /* hit: a backup the client sent every request to; fresh: one it did not. */
    pbft_replica *hit = backup(), *fresh = backup();
    for (uint32_t i = 0; i < NCLIENTS; i++)
        hold_request(hit, reqs[i]);

    enum { K_REQ, K_PP1, K_PP16, K_PP64, K_PREP, K_COMMIT, K_N };
    kind kinds[K_N] = {
        {.name = "REQUEST", .client_link = true, .rx = fresh, .iters = 10000},
        {.name = "PRE-PREPARE x1", .rx = hit, .iters = 8000},
        {.name = "PRE-PREPARE x16", .rx = hit, .iters = 1500},
        {.name = "PRE-PREPARE x64", .rx = hit, .iters = 400},
        {.name = "PREPARE", .rx = hit, .iters = 10000},
        {.name = "COMMIT", .rx = hit, .iters = 10000},
    };
    kinds[K_REQ].msg = pbft_msg_ref(reqs[0]);
    kinds[K_REQ].pk = ckeys[0].pk;
    kinds[K_PP1].msg = make_pre_prepare(reqs, 1, &rkeys[0]);
    kinds[K_PP16].msg = make_pre_prepare(reqs, 16, &rkeys[0]);
    kinds[K_PP64].msg = make_pre_prepare(reqs, 64, &rkeys[0]);
    for (int k = K_PP1; k <= K_PP64; k++)
        kinds[k].pk = rkeys[0].pk;
    const uint8_t *bd = kinds[K_PP16].msg->u.pre_prepare->digest.data;
    kinds[K_PREP].msg = make_vote(FEDBFT__MSG_TYPE__MSG_PREPARE, 2, bd, &rkeys[2]);
    kinds[K_PREP].pk = rkeys[2].pk;
    kinds[K_COMMIT].msg = make_vote(FEDBFT__MSG_TYPE__MSG_COMMIT, 2, bd, &rkeys[2]);
    kinds[K_COMMIT].pk = rkeys[2].pk;
    for (int k = 0; k < K_N; k++) {
        kinds[k].iters = (size_t)((double)kinds[k].iters * scale);
        if (kinds[k].iters < 10)
            kinds[k].iters = 10;
    }

    /* Table 2's variants: the three PRE-PREPAREs and the REQUEST. */
    enum { C_HIT, C_MISS, C_NONE, C_N };
    static const int cache_kinds[] = {K_REQ, K_PP1, K_PP16, K_PP64};
    enum { NCACHE = sizeof cache_kinds / sizeof cache_kinds[0] };
    bench_stat cache[NCACHE][C_N];
    double cache_dg[NCACHE][C_N];
    memset(cache, 0, sizeof cache);
    bench_stat verify = {0};

    chan_pair l;
    memset(&l, 0, sizeof l);
    pair_open(&l, &rkeys[0], &rkeys[1]);

    double t_start = bench_now();
    for (int r = 0; r < rounds; r++) {
        for (int i = 0; i < K_N; i++) {
            kind *k = &kinds[i];
            seal(&l, k);
            bench_add(&k->chan, feed(&l, k, RX_COUNT));
            bench_add(&k->env, k->client_link ? 0 : time_env(k));
            bench_add(&k->parse, time_parse(k, k->rx, P_REPLICA, k->iters, NULL));
            bench_add(&k->digest, time_digest(k));
            bench_add(&k->sigs, time_sigs(k));
            seal(&l, k);
            bench_add(&k->full, feed(&l, k, RX_FULL));
        }
        for (int j = 0; j < NCACHE; j++) {
            kind *k = &kinds[cache_kinds[j]];
            bench_add(&cache[j][C_HIT],
                      time_parse(k, hit, P_REPLICA, k->iters, &cache_dg[j][C_HIT]));
            bench_add(&cache[j][C_MISS],
                      time_parse(k, fresh, P_REPLICA, k->iters, &cache_dg[j][C_MISS]));
            bench_add(&cache[j][C_NONE],
                      time_parse(k, fresh, P_NO_LOOKUP, k->iters, &cache_dg[j][C_NONE]));
        }
        bench_add(&verify, time_verify(&kinds[K_PREP], kinds[K_PREP].iters / 4));
    }
    double elapsed = bench_now() - t_start;

    double v_ns = bench_min(&verify) * 1e9;
    printf("bench_frame: receive path per message, n = 4, best of %d rounds (%.1f s), "
           "request value %zu bytes\n\n",
           rounds, elapsed, value_len);
    printf("%-16s %6s %7s %7s %8s %7s %7s %9s %9s %10s %7s\n", "kind", "bytes", "chan", "env",
           "parse", "digest", "sigs", "full", "full med", "msgs/s", "verify/");
    printf("%-16s %6s %7s %7s %8s %7s %7s %9s %9s %10s %7s\n", "", "", "ns", "ns", "ns", "ns", "ns",
           "ns", "ns", "(full)", "full");
    for (int i = 0; i < K_N; i++) {
        kind *k = &kinds[i];
        double full = bench_min(&k->full) * 1e9;
        char env[16];
        if (k->client_link)
            snprintf(env, sizeof env, "-");
        else
            snprintf(env, sizeof env, "%.0f", bench_min(&k->env) * 1e9);
        printf("%-16s %6zu %7.0f %7s %8.0f %7.0f %7.0f %9.0f %9.0f %10.0f %6.1fx\n", k->name,
               k->msg->raw_len + FB_CHAN_OVERHEAD, bench_min(&k->chan) * 1e9, env,
               bench_min(&k->parse) * 1e9, bench_min(&k->digest) * 1e9, bench_min(&k->sigs) * 1e9,
               full, bench_median(&k->full) * 1e9, 1e9 / full, v_ns / full);
    }
    printf("%-16s %6s %7s %7s %8s %7s %7s %9.0f %9.0f %10.0f\n", "Ed25519 verify", "", "", "", "",
           "", "", v_ns, bench_median(&verify) * 1e9, 1e9 / v_ns);
    printf("\n(bytes: the record on the wire.  PRE-PREPARE xB carries B requests and so B "
           "client\n signatures besides its own: checking it costs 1 + B verifies unless the "
           "signature\n cache kept the requests' from when they arrived.)\n");

    printf("\ndigest cache: parse of a message whose requests the replica holds (hit), does "
           "not\nhold (miss), or parsed with no lookup (none); ns per parse, best of %d\n\n",
           rounds);
    printf("%-16s %9s %9s %9s %9s %9s %7s %7s %7s\n", "kind", "hit", "miss", "none", "none/hit",
           "miss/hit", "dg hit", "dg miss", "dg none");
    for (int j = 0; j < NCACHE; j++) {
        double h = bench_min(&cache[j][C_HIT]) * 1e9, m = bench_min(&cache[j][C_MISS]) * 1e9,
               nn = bench_min(&cache[j][C_NONE]) * 1e9;
        printf("%-16s %9.0f %9.0f %9.0f %8.2fx %8.2fx %7.0f %7.0f %7.0f\n",
               kinds[cache_kinds[j]].name, h, m, nn, nn / h, m / h, cache_dg[j][C_HIT],
               cache_dg[j][C_MISS], cache_dg[j][C_NONE]);
    }
    printf("\n(dg: request digests computed per parse.  A REQUEST \"hit\" is a retransmission "
           "of one\n the replica holds; its first arrival is a miss.)\n");

    for (int i = 0; i < K_N; i++)
        pbft_msg_unref(kinds[i].msg);
    for (uint32_t i = 0; i < NCLIENTS; i++)
        pbft_msg_unref(reqs[i]);
    pbft_free(hit);
    pbft_free(fresh);
    fb_chan_free(l.tx);
    fb_chan_free(l.rx);
    free(l.wire_tx.p);
    free(l.wire_rx.p);
    return 0;
}
