/* fb_hostile.c - a Byzantine replica for the hostile_peers integration test.
 *
 * It holds the key of replica K (whose real process the test has stopped),
 * dials every other replica's replica port as K would, completes the real
 * secure-channel handshake (crypto/channel.h) and sends PBFT messages built
 * with the project's own encoders (pbft_msg_make, fb_env_seal), crafted to
 * break the protocol.  Each scenario prints one line: what it sent, then
 * "expect REASON=N ...", the least increase of fedbft_messages_dropped_total
 * (or, for garbage/oversized, fedbft_frames_rejected_total) with that reason
 * on every replica it sent to.
 *
 *   fb_hostile --cluster FILE --keys DIR --id K --view V --seq S [options] SCENARIO...
 *
 * DIR is laid out as `fedbft cluster init` makes it: DIR/node<K>/node.key for
 * the replica, DIR/clients/<name>/node.key for the client whose requests the
 * equivocating batches carry.
 *
 * Links follow node/net.c: a replica sends on the link it dialled, and the
 * replica at the other end never answers on it (it answers on its own dialled
 * link, to K's port, where nothing listens while K is stopped).  The tool
 * still reads its links and feeds the bytes to the channel, so the links stay
 * healthy and a close by the peer is noticed at once.
 *
 * Blocking sockets and poll(): one thread, a handful of links, a test tool.
 */
#include "channel.h"
#include "config.h"
#include "envelope.h"
#include "fb_error.h"
#include "keys.h"
#include "pbft.h"
#include "sig.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sodium.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define HANDSHAKE_MS 5000  /* a handshake that takes longer is a failure */
#define CLOSE_WAIT_MS 3000 /* how long the peer gets to cut a link we broke */
#define DEFAULT_COPIES 20
#define DEFAULT_LINGER_MS 300
#define WATERMARK_LEAP 1000000 /* far above any high watermark */
#define CKPT_MAX_SIGS 64       /* certificate entries read from --checkpoint */

#define T_REQUEST FEDBFT__MSG_TYPE__MSG_REQUEST
#define T_PRE_PREPARE FEDBFT__MSG_TYPE__MSG_PRE_PREPARE
#define T_PREPARE FEDBFT__MSG_TYPE__MSG_PREPARE
#define T_COMMIT FEDBFT__MSG_TYPE__MSG_COMMIT
#define T_CHECKPOINT FEDBFT__MSG_TYPE__MSG_CHECKPOINT
#define T_VIEW_CHANGE FEDBFT__MSG_TYPE__MSG_VIEW_CHANGE
#define T_NEW_VIEW FEDBFT__MSG_TYPE__MSG_NEW_VIEW

/* One dialled link to another replica's replica port. */
typedef struct hlink {
    uint32_t id;
    const cfg_replica *peer;
    int fd; /* -1 while closed */
    fb_chan *ch;
    bool broken;   /* the transport failed or the peer hung up */
    bool sealing;  /* io.send is carrying a record we asked for: keep a copy */
    uint8_t *last; /* the last record sent after the handshake, as on the wire */
    size_t last_len;
} hlink;

/* The stable checkpoint a replica reported (`fedbft ctl --json checkpoint`). */
typedef struct real_ckpt {
    bool have;
    uint64_t seq;
    uint8_t digest[FB_DIGEST_LEN];
    uint32_t nsigs;
    uint32_t signer[CKPT_MAX_SIGS];
    uint8_t sig[CKPT_MAX_SIGS][FB_SIG_LEN];
} real_ckpt;

typedef struct hostile {
    cfg_cluster cl;
    uint32_t k; /* the replica we pretend to be */
    fb_identity self;
    fb_identity stranger; /* a key nobody knows, for forged signatures */
    bool has_client;
    uint32_t client_id;
    fb_identity client;
    uint64_t view, seq;
    uint32_t copies;
    uint32_t linger_ms;
    real_ckpt ckpt;
    hlink *links;  /* [cl.n]; links[k] unused */
    uint32_t sent; /* frames sent by the current scenario */
} hostile;

typedef int (*scenario_fn)(hostile *h);

static void die(const char *what, const char *why)
{
    fprintf(stderr, "fb_hostile: %s: %s\n", what, why);
    exit(2);
}

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static uint64_t wall_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* ------------------------------------------------------------ links */

static void write_all(hlink *l, const uint8_t *bytes, size_t len)
{
    while (len > 0 && !l->broken) {
        ssize_t w = send(l->fd, bytes, len, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            l->broken = true;
            return;
        }
        bytes += w;
        len -= (size_t)w;
    }
}

static void chan_send(void *arg, const uint8_t *bytes, size_t len)
{
    hlink *l = arg;
    if (l->sealing) {
        uint8_t *copy = realloc(l->last, len);
        if (!copy)
            die("memory", "out of memory");
        memcpy(copy, bytes, len);
        l->last = copy;
        l->last_len = len;
    }
    write_all(l, bytes, len);
}

/* Nothing should arrive on a dialled link; whatever does is only read. */
static void chan_frame(void *arg, const uint8_t *plain, size_t len)
{
    (void)arg;
    (void)plain;
    (void)len;
}

static void link_close(hlink *l)
{
    if (l->fd >= 0)
        close(l->fd);
    l->fd = -1;
    fb_chan_free(l->ch);
    l->ch = NULL;
    l->broken = false;
}

/* Read what is there (waiting up to timeout_ms) and feed it to the channel.
 * Returns false once the link is gone. */
static bool link_pump(hlink *l, int timeout_ms)
{
    if (l->fd < 0 || l->broken)
        return false;
    struct pollfd p = {.fd = l->fd, .events = POLLIN};
    int rc = poll(&p, 1, timeout_ms);
    if (rc <= 0)
        return rc == 0 || errno == EINTR;
    uint8_t buf[65536];
    ssize_t r = recv(l->fd, buf, sizeof buf, 0);
    if (r < 0 && (errno == EINTR || errno == EAGAIN))
        return true;
    if (r <= 0 || fb_chan_feed(l->ch, buf, (size_t)r) != 0) {
        l->broken = true;
        return false;
    }
    return true;
}

static int tcp_connect(const cfg_replica *peer, char *err, size_t errlen)
{
    char port[16];
    snprintf(port, sizeof port, "%u", (unsigned)peer->port);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
    int rc = getaddrinfo(peer->host, port, &hints, &res);
    if (rc != 0) {
        snprintf(err, errlen, "cannot resolve %s: %s", peer->host, gai_strerror(rc));
        return -1;
    }
    int fd = -1;
    for (struct addrinfo *a = res; a && fd < 0; a = a->ai_next) {
        fd = socket(a->ai_family, a->ai_socktype, a->ai_protocol);
        if (fd >= 0 && connect(fd, a->ai_addr, a->ai_addrlen) != 0) {
            snprintf(err, errlen, "connect %s:%s: %s", peer->host, port, strerror(errno));
            close(fd);
            fd = -1;
        }
    }
    freeaddrinfo(res);
    if (fd >= 0) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    return fd;
}

/* Dial the peer's replica port and run the handshake as replica k. */
static int link_open(hostile *h, hlink *l)
{
    char err[CFG_HOST_MAX + 256];
    link_close(l);
    l->fd = tcp_connect(l->peer, err, sizeof err);
    if (l->fd < 0) {
        fprintf(stderr, "fb_hostile: replica %u: %s\n", (unsigned)l->id, err);
        return FB_EIO;
    }
    fb_chan_config cc = {
        .role = FB_CHAN_INITIATOR,
        .self = &h->self,
        .allowed = (const uint8_t(*)[FB_PK_LEN])l->peer->pk,
        .allowed_count = 1,
        .expected_peer = l->peer->pk,
        .sender_id = h->k,
        .io = {.send = chan_send, .frame = chan_frame, .arg = l},
    };
    int rc = fb_chan_new(&cc, &l->ch);
    if (rc == 0)
        rc = fb_chan_start(l->ch);
    uint64_t deadline = now_ms() + HANDSHAKE_MS;
    while (rc == 0 && fb_chan_get_state(l->ch) == FB_CHAN_HANDSHAKE) {
        if (now_ms() >= deadline || !link_pump(l, 50))
            rc = FB_EPROTO;
    }
    if (rc == 0 && fb_chan_get_state(l->ch) != FB_CHAN_ESTABLISHED)
        rc = FB_EPROTO;
    if (rc != 0) {
        fprintf(stderr, "fb_hostile: replica %u: handshake failed (%s)\n", (unsigned)l->id,
                l->ch && fb_chan_error(l->ch)[0] ? fb_chan_error(l->ch) : "peer hung up");
        link_close(l);
    }
    return rc;
}

static int link_ready(hostile *h, hlink *l)
{
    if (l->fd >= 0 && !l->broken && l->ch && fb_chan_get_state(l->ch) == FB_CHAN_ESTABLISHED)
        return 0;
    return link_open(h, l);
}

/* Seal one frame on the link to replica id (dialling it first if needed). */
static int send_frame(hostile *h, uint32_t id, const uint8_t *frame, size_t len)
{
    hlink *l = &h->links[id];
    int rc = link_ready(h, l);
    if (rc)
        return rc;
    l->sealing = true;
    rc = fb_chan_write(l->ch, frame, len);
    l->sealing = false;
    if (rc == 0 && l->broken)
        rc = FB_EIO;
    if (rc)
        fprintf(stderr, "fb_hostile: replica %u: send failed: %s\n", (unsigned)id, fb_strerror(rc));
    else
        h->sent++;
    return rc;
}

static int send_msg(hostile *h, uint32_t id, const pbft_msg *m)
{
    return send_frame(h, id, m->raw, m->raw_len);
}

/* Keep reading every open link for ms while the peers process what we sent. */
static void linger(hostile *h, uint32_t ms)
{
    uint64_t until = now_ms() + ms;
    bool open = true;
    while (open && now_ms() < until) {
        open = false;
        for (uint32_t i = 0; i < h->cl.n; i++)
            if (i != h->k)
                open |= link_pump(&h->links[i], 10);
    }
}

/* Wait until the peer cuts the link (it must, after garbage). */
static bool await_cut(hlink *l)
{
    uint64_t deadline = now_ms() + CLOSE_WAIT_MS;
    while (now_ms() < deadline)
        if (!link_pump(l, 50))
            return true;
    return false;
}

/* ------------------------------------------------------------ messages */

static void sign_digest(void *arg, const uint8_t digest[FB_DIGEST_LEN], uint8_t sig[FB_SIG_LEN])
{
    fb_sig_sign(arg, digest, sig);
}

/* Sign payload as (type, sender) with key; the project's own encoder. */
static pbft_msg *make_as(int type, uint32_t sender, const ProtobufCMessage *payload,
                         const fb_identity *key)
{
    pbft_signer s = {.sign = sign_digest, .arg = (void *)key};
    pbft_msg *m = NULL;
    int rc = pbft_msg_make(type, sender, payload, &s, NULL, &m);
    if (rc)
        die("cannot build a message", fb_strerror(rc));
    return m;
}

static pbft_msg *make(hostile *h, int type, const ProtobufCMessage *payload)
{
    return make_as(type, h->k, payload, &h->self);
}

static ProtobufCBinaryData bin(const uint8_t *p, size_t len)
{
    return (ProtobufCBinaryData){len, (uint8_t *)p};
}

static pbft_msg *prepare_as(hostile *h, uint32_t sender, uint64_t view, uint64_t seq,
                            const uint8_t digest[FB_DIGEST_LEN])
{
    Fedbft__Prepare p = FEDBFT__PREPARE__INIT;
    p.view = view;
    p.seq = seq;
    p.digest = bin(digest, FB_DIGEST_LEN);
    p.replica = sender;
    return make_as(T_PREPARE, sender, &p.base, &h->self);
}

/* A COMMIT carries no signature: only the link it arrives on names its sender. */
static pbft_msg *commit_as(hostile *h, uint32_t sender, uint64_t view, uint64_t seq,
                           const uint8_t digest[FB_DIGEST_LEN])
{
    Fedbft__Commit c = FEDBFT__COMMIT__INIT;
    c.view = view;
    c.seq = seq;
    c.digest = bin(digest, FB_DIGEST_LEN);
    c.replica = sender;
    return make_as(T_COMMIT, sender, &c.base, &h->self);
}

static pbft_msg *commit(hostile *h, uint64_t view, uint64_t seq,
                        const uint8_t digest[FB_DIGEST_LEN])
{
    return commit_as(h, h->k, view, seq, digest);
}

static pbft_msg *checkpoint(hostile *h, uint64_t seq, const uint8_t digest[FB_DIGEST_LEN])
{
    Fedbft__Checkpoint c = FEDBFT__CHECKPOINT__INIT;
    c.seq = seq;
    c.state_digest = bin(digest, FB_DIGEST_LEN);
    c.replica = h->k;
    return make(h, T_CHECKPOINT, &c.base);
}

/* A PRE-PREPARE carrying reqs (may be none: a null batch) with a correct
 * batch digest; envs overrides the request envelopes carried (for forgeries
 * whose digest is unchanged), NULL = the requests' own. */
static pbft_msg *pre_prepare_with(hostile *h, uint64_t view, uint64_t seq, uint64_t nondet,
                                  pbft_msg **reqs, size_t nreqs, Fedbft__Envelope **envs)
{
    uint8_t digest[FB_DIGEST_LEN];
    pbft_batch_digest(nondet, reqs, nreqs, NULL, digest);
    Fedbft__Envelope *own[8];
    if (nreqs > sizeof own / sizeof own[0])
        die("pre-prepare", "too many requests");
    for (size_t i = 0; i < nreqs; i++)
        own[i] = reqs[i]->env;
    Fedbft__PrePrepare pp = FEDBFT__PRE_PREPARE__INIT;
    pp.view = view;
    pp.seq = seq;
    pp.digest = bin(digest, FB_DIGEST_LEN);
    pp.n_requests = nreqs;
    pp.requests = envs ? envs : own;
    pp.nondet = nondet;
    return make(h, T_PRE_PREPARE, &pp.base);
}

static pbft_msg *pre_prepare(hostile *h, uint64_t view, uint64_t seq, uint64_t nondet,
                             pbft_msg **reqs, size_t nreqs)
{
    return pre_prepare_with(h, view, seq, nondet, reqs, nreqs, NULL);
}

/* A real client request (put key=value), signed with the client's key. */
static pbft_msg *client_put(hostile *h, uint64_t ts, const char *key, const char *value)
{
    Fedbft__Operation op = FEDBFT__OPERATION__INIT;
    op.kind = FEDBFT__OPERATION__KIND__OP_PUT;
    op.key = bin((const uint8_t *)key, strlen(key));
    op.value = bin((const uint8_t *)value, strlen(value));
    Fedbft__Request rq = FEDBFT__REQUEST__INIT;
    rq.client = h->client_id;
    rq.timestamp = ts;
    rq.op = &op;
    size_t plen = fedbft__request__get_packed_size(&rq);
    uint8_t *payload = malloc(plen ? plen : 1);
    if (!payload)
        die("memory", "out of memory");
    fedbft__request__pack(&rq, payload);
    uint8_t *raw = NULL;
    size_t len = 0;
    int rc = fb_env_seal(T_REQUEST, h->client_id, payload, plen, &h->client, &raw, &len);
    free(payload);
    if (rc)
        die("cannot seal a request", fb_strerror(rc));
    pbft_msg *m = NULL;
    char err[160];
    if (pbft_msg_parse(raw, len, NULL, NULL, &m, err, sizeof err) != 0)
        die("cannot parse our own request", err);
    free(raw);
    return m;
}

static void null_digest(uint8_t out[FB_DIGEST_LEN])
{
    pbft_batch_digest(0, NULL, 0, NULL, out);
}

/* The envelope of m with one bit of its signature flipped, serialised. */
static uint8_t *flip_signature(const pbft_msg *m, size_t *len)
{
    Fedbft__Envelope e = *m->env;
    uint8_t sig[FB_SIG_LEN];
    memcpy(sig, e.signature.data, FB_SIG_LEN);
    sig[FB_SIG_LEN / 2] ^= 0x10;
    e.signature = bin(sig, FB_SIG_LEN);
    *len = fedbft__envelope__get_packed_size(&e);
    uint8_t *out = malloc(*len);
    if (!out)
        die("memory", "out of memory");
    fedbft__envelope__pack(&e, out);
    return out;
}

/* VIEW-CHANGE from us: proof and certs as given (NULL-terminated arrays of
 * borrowed messages; certs[i] is {pre-prepare, prepares..., NULL}). */
static pbft_msg *view_change(hostile *h, uint64_t new_view, uint64_t stable_seq, pbft_msg **proof,
                             size_t nproof, Fedbft__PreparedCert **certs, size_t ncerts)
{
    Fedbft__Envelope *penv[8];
    if (nproof > sizeof penv / sizeof penv[0])
        die("view-change", "proof too long");
    for (size_t i = 0; i < nproof; i++)
        penv[i] = proof[i]->env;
    Fedbft__ViewChange vc = FEDBFT__VIEW_CHANGE__INIT;
    vc.new_view = new_view;
    vc.stable_seq = stable_seq;
    vc.n_checkpoint_proof = nproof;
    vc.checkpoint_proof = penv;
    vc.n_prepared = ncerts;
    vc.prepared = certs;
    vc.replica = h->k;
    return make(h, T_VIEW_CHANGE, &vc.base);
}

static uint32_t primary(const hostile *h, uint64_t view)
{
    return pbft_primary(view, h->cl.n);
}

/* ------------------------------------------------------------ reporting */

static void report(const char *name, int rc, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void report(const char *name, int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    printf("%s: ", name);
    vprintf(fmt, ap);
    va_end(ap);
    if (rc)
        printf(" [FAILED: %s]", fb_strerror(rc));
    printf("\n");
    fflush(stdout);
}

static void unref_all(pbft_msg **ms, size_t n)
{
    for (size_t i = 0; i < n; i++)
        pbft_msg_unref(ms[i]);
}

/* ------------------------------------------------------------ scenarios */

/* As primary of the current view: for each of the other replicas in turn, a
 * sequence number at which that replica gets two PRE-PREPAREs with different
 * batches while the others get one or the other.  Each replica sees one
 * equivocation; the first batch of each seq prepares at two backups (no
 * commit quorum), so the view change carries it into the next view. */
static int sc_equivocate(hostile *h)
{
    if (primary(h, h->view) != h->k) {
        report("equivocate", FB_ESTATE, "replica %u is not the primary of view %" PRIu64,
               (unsigned)h->k, h->view);
        return FB_ESTATE;
    }
    uint32_t nothers = h->cl.n - 1;
    uint64_t ts = wall_us();
    int rc = 0;
    for (uint32_t j = 0; j < nothers && rc == 0; j++) {
        uint64_t seq = h->seq + j;
        pbft_msg *ra = NULL, *rb = NULL, *pa, *pb;
        if (h->has_client) {
            char key[64];
            snprintf(key, sizeof key, "hostile/eq%" PRIu64, seq);
            ra = client_put(h, ts + 2 * j, key, "A");
            rb = client_put(h, ts + 2 * j + 1, key, "B");
        }
        pa = pre_prepare(h, h->view, seq, 1, ra ? &ra : NULL, ra ? 1 : 0);
        pb = pre_prepare(h, h->view, seq, 2, rb ? &rb : NULL, rb ? 1 : 0);
        uint32_t t = 0;
        for (uint32_t id = 0; id < h->cl.n && rc == 0; id++) {
            if (id == h->k)
                continue;
            uint32_t rel = (t++ + nothers - j) % nothers;
            if (rel == 0) {
                rc = send_msg(h, id, pa);
                if (rc == 0)
                    rc = send_msg(h, id, pb);
            } else {
                rc = send_msg(h, id, rel % 2 ? pa : pb);
            }
        }
        pbft_msg_unref(pa);
        pbft_msg_unref(pb);
        if (ra)
            pbft_msg_unref(ra);
        if (rb)
            pbft_msg_unref(rb);
    }
    linger(h, h->linger_ms);
    report("equivocate", rc,
           "view %" PRIu64 " seq %" PRIu64 "..%" PRIu64 ": %u PRE-PREPAREs (%s), two "
           "digests per seq, both to one replica and one to each other | expect equivocation=1",
           h->view, h->seq, h->seq + nothers - 1, (unsigned)h->sent,
           h->has_client ? "each batch one client PUT" : "null batches");
    return rc;
}

/* Messages for the view before the current one. */
static int sc_stale(hostile *h)
{
    if (h->view == 0) {
        report("stale", FB_ESTATE, "the current view is 0: there is no older one");
        return FB_ESTATE;
    }
    uint64_t v = h->view - 1;
    uint8_t d[FB_DIGEST_LEN];
    null_digest(d);
    pbft_msg *m[3] = {pre_prepare(h, v, h->seq, 3, NULL, 0), prepare_as(h, h->k, v, h->seq, d),
                      commit(h, v, h->seq, d)};
    int rc = 0;
    for (uint32_t id = 0; id < h->cl.n && rc == 0; id++)
        for (size_t i = 0; i < 3 && rc == 0 && id != h->k; i++)
            rc = send_msg(h, id, m[i]);
    unref_all(m, 3);
    linger(h, h->linger_ms);
    report("stale", rc,
           "%u messages for view %" PRIu64 " (current %" PRIu64
           "): PRE-PREPARE, PREPARE, COMMIT at seq %" PRIu64 " to each replica | "
           "expect stale_view=3",
           (unsigned)h->sent, v, h->view, h->seq);
    return rc;
}

/* Envelopes that claim to come from us but whose signatures do not verify. */
static int sc_forged(hostile *h)
{
    uint8_t d[FB_DIGEST_LEN];
    null_digest(d);
    uint64_t v = h->view, s = h->seq;

    /* 1: a PREPARE signed with a key nobody knows */
    Fedbft__Prepare p = FEDBFT__PREPARE__INIT;
    p.view = v;
    p.seq = s;
    p.digest = bin(d, FB_DIGEST_LEN);
    p.replica = h->k;
    pbft_msg *stranger = make_as(T_PREPARE, h->k, &p.base, &h->stranger);
    /* 2, 3: a PREPARE and a CHECKPOINT with one signature bit flipped (a
     * COMMIT carries no signature: its link proves the sender) */
    pbft_msg *c = prepare_as(h, h->k, v, s, d);
    pbft_msg *ck = checkpoint(h, s, d);
    size_t clen, cklen, nvlen = 0;
    uint8_t *cbad = flip_signature(c, &clen);
    uint8_t *ckbad = flip_signature(ck, &cklen);
    /* 4: a well-signed PRE-PREPARE relaying a client request whose client
     * signature is flipped (only with a client key) */
    uint8_t *nested = NULL;
    pbft_msg *req = NULL, *pp = NULL;
    if (h->has_client) {
        req = client_put(h, wall_us(), "hostile/forged", "F");
        Fedbft__Envelope bad = *req->env;
        uint8_t sig[FB_SIG_LEN];
        memcpy(sig, bad.signature.data, FB_SIG_LEN);
        sig[3] ^= 0x01;
        bad.signature = bin(sig, FB_SIG_LEN);
        Fedbft__Envelope *envs[1] = {&bad};
        pp = pre_prepare_with(h, v, s, 4, &req, 1, envs);
        nested = pp->raw;
        nvlen = pp->raw_len;
    }
    int rc = 0;
    for (uint32_t id = 0; id < h->cl.n && rc == 0; id++) {
        if (id == h->k)
            continue;
        rc = send_msg(h, id, stranger);
        if (rc == 0)
            rc = send_frame(h, id, cbad, clen);
        if (rc == 0)
            rc = send_frame(h, id, ckbad, cklen);
        if (rc == 0 && nested)
            rc = send_frame(h, id, nested, nvlen);
    }
    /* 5, 6: a PREPARE naming another replica as its sender, signed by us, and
     * a COMMIT naming another replica (unsigned, so only this check stands
     * between a liar and another replica's vote): the link says who sent
     * them, so the receiver drops both before any signature */
    for (uint32_t id = 0; id < h->cl.n && rc == 0; id++) {
        uint32_t other = 0;
        while (other == id || other == h->k)
            other++;
        if (id == h->k)
            continue;
        pbft_msg *imp = prepare_as(h, other, v, s, d);
        rc = send_msg(h, id, imp);
        pbft_msg_unref(imp);
        imp = commit_as(h, other, v, s, d);
        if (rc == 0)
            rc = send_msg(h, id, imp);
        pbft_msg_unref(imp);
    }
    free(cbad);
    free(ckbad);
    pbft_msg_unref(stranger);
    pbft_msg_unref(c);
    pbft_msg_unref(ck);
    if (pp)
        pbft_msg_unref(pp);
    if (req)
        pbft_msg_unref(req);
    linger(h, h->linger_ms);
    unsigned bad_sigs = h->has_client ? 4 : 3;
    report(
        "forged", rc,
        "%u envelopes as replica %u at view %" PRIu64 " seq %" PRIu64
        ": PREPARE signed by an unknown key, PREPARE and CHECKPOINT with a flipped "
        "signature bit%s, PREPARE and COMMIT claiming another replica's id | expect signature=%u "
        "cheap_check=2",
        (unsigned)h->sent, (unsigned)h->k, v, s,
        h->has_client ? ", PRE-PREPARE relaying a request with a flipped client signature" : "",
        bad_sigs);
    return rc;
}

/* The same valid COMMIT, many times over. */
static int sc_dup(hostile *h)
{
    uint8_t d[FB_DIGEST_LEN];
    null_digest(d);
    pbft_msg *c = commit(h, h->view, h->seq + 1, d);
    int rc = 0;
    for (uint32_t id = 0; id < h->cl.n && rc == 0; id++)
        for (uint32_t i = 0; i < h->copies && rc == 0 && id != h->k; i++)
            rc = send_msg(h, id, c);
    pbft_msg_unref(c);
    linger(h, h->linger_ms);
    report("dup", rc,
           "%u frames: one COMMIT (view %" PRIu64 " seq %" PRIu64
           ") sent %u times to each replica | expect duplicate=%u",
           (unsigned)h->sent, h->view, h->seq + 1, (unsigned)h->copies, (unsigned)(h->copies - 1));
    return rc;
}

/* A PRE-PREPARE in the current view from a replica that is not its primary. */
static int sc_notprimary(hostile *h)
{
    if (primary(h, h->view) == h->k) {
        report("notprimary", FB_ESTATE, "replica %u is the primary of view %" PRIu64,
               (unsigned)h->k, h->view);
        return FB_ESTATE;
    }
    pbft_msg *pp = pre_prepare(h, h->view, h->seq + 2, 5, NULL, 0);
    int rc = 0;
    for (uint32_t id = 0; id < h->cl.n && rc == 0; id++)
        if (id != h->k)
            rc = send_msg(h, id, pp);
    pbft_msg_unref(pp);
    linger(h, h->linger_ms);
    report("notprimary", rc,
           "%u PRE-PREPAREs for view %" PRIu64 " seq %" PRIu64
           " (primary is replica %u) | expect not_primary=1",
           (unsigned)h->sent, h->view, h->seq + 2, (unsigned)primary(h, h->view));
    return rc;
}

/* A COMMIT far above every replica's high watermark. */
static int sc_watermark(hostile *h)
{
    uint8_t d[FB_DIGEST_LEN];
    null_digest(d);
    uint64_t seq = h->seq + WATERMARK_LEAP;
    pbft_msg *c = commit(h, h->view, seq, d);
    int rc = 0;
    for (uint32_t id = 0; id < h->cl.n && rc == 0; id++)
        if (id != h->k)
            rc = send_msg(h, id, c);
    pbft_msg_unref(c);
    linger(h, h->linger_ms);
    report("watermark", rc, "%u COMMITs at seq %" PRIu64 " | expect watermark=1", (unsigned)h->sent,
           seq);
    return rc;
}

/* Checkpoint envelopes signed by other replicas, rebuilt from a certificate
 * (the signatures cover the payload, which protobuf-c packs canonically). */
static pbft_msg *real_checkpoint(const real_ckpt *c, uint32_t i)
{
    Fedbft__Checkpoint cp = FEDBFT__CHECKPOINT__INIT;
    cp.seq = c->seq;
    cp.state_digest = bin(c->digest, FB_DIGEST_LEN);
    cp.replica = c->signer[i];
    size_t plen = fedbft__checkpoint__get_packed_size(&cp);
    uint8_t payload[256];
    if (plen > sizeof payload)
        die("checkpoint", "payload too large");
    fedbft__checkpoint__pack(&cp, payload);
    Fedbft__Envelope e = FEDBFT__ENVELOPE__INIT;
    e.type = (Fedbft__MsgType)T_CHECKPOINT;
    e.sender = c->signer[i];
    e.version = FB_PROTOCOL_VERSION;
    e.payload = bin(payload, plen);
    e.signature = bin(c->sig[i], FB_SIG_LEN);
    pbft_msg *m = NULL;
    char err[160];
    if (pbft_msg_from_env(&e, NULL, NULL, &m, err, sizeof err) != 0)
        die("cannot rebuild a checkpoint", err);
    return m;
}

/* VIEW-CHANGEs for the next view whose proofs are all well signed but
 * invalid, and one for a view that is not greater than the current one. */
static int sc_badvc(hostile *h)
{
    uint64_t nv = h->view + 1;
    uint64_t w = h->view; /* the latest view whose primary we were */
    while (w > 0 && primary(h, w) != h->k)
        w--;
    if (primary(h, w) != h->k) {
        report("badvc", FB_ESTATE, "replica %u was never a primary", (unsigned)h->k);
        return FB_ESTATE;
    }
    uint8_t d[FB_DIGEST_LEN], zero[FB_DIGEST_LEN] = {0};
    null_digest(d);
    uint64_t cs = h->seq; /* any seq above 0: the proofs fail before it matters */
    pbft_msg *pp = pre_prepare(h, w, 1, 0, NULL, 0);
    pbft_msg *own_prep = prepare_as(h, h->k, w, 1, d);
    pbft_msg *ck = checkpoint(h, cs, zero);

    pbft_msg *vcs[8];
    const char *what[8];
    size_t nvc = 0;
    /* a: a prepared certificate without any PREPARE */
    Fedbft__PreparedCert ca = FEDBFT__PREPARED_CERT__INIT;
    ca.pre_prepare = pp->env;
    Fedbft__PreparedCert *certs_a[1] = {&ca};
    what[nvc] = "certificate without prepares";
    vcs[nvc++] = view_change(h, nv, 0, NULL, 0, certs_a, 1);
    /* b: a certificate whose only PREPARE is the primary's own (not counted) */
    Fedbft__PreparedCert cb = FEDBFT__PREPARED_CERT__INIT;
    cb.pre_prepare = pp->env;
    Fedbft__Envelope *preps[1] = {own_prep->env};
    cb.n_prepares = 1;
    cb.prepares = preps;
    Fedbft__PreparedCert *certs_b[1] = {&cb};
    what[nvc] = "certificate with only the primary's prepare";
    vcs[nvc++] = view_change(h, nv, 0, NULL, 0, certs_b, 1);
    /* c: a checkpoint proof of one message */
    what[nvc] = "checkpoint proof of 1 message";
    vcs[nvc++] = view_change(h, nv, cs, &ck, 1, NULL, 0);
    /* d: a checkpoint proof repeating one sender */
    pbft_msg *same[3] = {ck, ck, ck};
    what[nvc] = "checkpoint proof from one replica thrice";
    vcs[nvc++] = view_change(h, nv, cs, same, 3, NULL, 0);
    /* e: genesis (stable seq 0) with a proof attached */
    what[nvc] = "stable seq 0 with a proof";
    vcs[nvc++] = view_change(h, nv, 0, &ck, 1, NULL, 0);
    /* f: the real certificate of a stable checkpoint, but our entry carries
     * another digest */
    pbft_msg *mixed[8];
    size_t nmixed = 0;
    uint32_t quorum = pbft_quorum(h->cl.n);
    if (h->ckpt.have) {
        for (uint32_t i = 0; i < h->ckpt.nsigs && nmixed + 1 < quorum; i++)
            if (h->ckpt.signer[i] != h->k)
                mixed[nmixed++] = real_checkpoint(&h->ckpt, i);
        uint8_t other[FB_DIGEST_LEN];
        memcpy(other, h->ckpt.digest, FB_DIGEST_LEN);
        other[0] ^= 0xff;
        mixed[nmixed++] = checkpoint(h, h->ckpt.seq, other);
        what[nvc] = "real checkpoint certificate with one bad digest";
        vcs[nvc++] = view_change(h, nv, h->ckpt.seq, mixed, nmixed, NULL, 0);
    }
    size_t ninvalid = nvc;
    /* g: a valid VIEW-CHANGE for the view the replicas are already in */
    what[nvc] = "view not greater than current";
    vcs[nvc++] = view_change(h, h->view, 0, NULL, 0, NULL, 0);

    int rc = 0;
    for (uint32_t id = 0; id < h->cl.n && rc == 0; id++)
        for (size_t i = 0; i < nvc && rc == 0 && id != h->k; i++)
            rc = send_msg(h, id, vcs[i]);
    linger(h, h->linger_ms);
    char list[512] = "";
    for (size_t i = 0; i < nvc; i++)
        snprintf(list + strlen(list), sizeof list - strlen(list), "%s%s", i ? "; " : "", what[i]);
    report("badvc", rc,
           "%u VIEW-CHANGEs for view %" PRIu64 " (%s) | expect invalid_view_change=%zu "
           "stale_view=1",
           (unsigned)h->sent, nv, list, ninvalid);
    unref_all(vcs, nvc);
    unref_all(mixed, nmixed);
    pbft_msg_unref(pp);
    pbft_msg_unref(own_prep);
    pbft_msg_unref(ck);
    return rc;
}

/* A NEW-VIEW for the next view we would lead, whose V is one VIEW-CHANGE
 * repeated instead of a quorum from distinct replicas. */
static int sc_badnv(hostile *h)
{
    uint64_t w = h->view + 1;
    while (primary(h, w) != h->k)
        w++;
    pbft_msg *vc = view_change(h, w, 0, NULL, 0, NULL, 0);
    Fedbft__Envelope *v[3] = {vc->env, vc->env, vc->env};
    Fedbft__NewView n = FEDBFT__NEW_VIEW__INIT;
    n.view = w;
    n.n_view_changes = 3;
    n.view_changes = v;
    pbft_msg *m = make(h, T_NEW_VIEW, &n.base);
    int rc = 0;
    for (uint32_t id = 0; id < h->cl.n && rc == 0; id++)
        if (id != h->k)
            rc = send_msg(h, id, m);
    pbft_msg_unref(m);
    pbft_msg_unref(vc);
    linger(h, h->linger_ms);
    report("badnv", rc,
           "%u NEW-VIEWs for view %" PRIu64
           " whose V repeats one VIEW-CHANGE | expect invalid_new_view=1",
           (unsigned)h->sent, w);
    return rc;
}

/* After the handshake: a replayed record, a record of random bytes and an
 * oversized length header, each on a fresh link that the peer must cut. */
static int sc_garbage(hostile *h)
{
    uint8_t d[FB_DIGEST_LEN];
    null_digest(d);
    pbft_msg *c = commit(h, h->view, h->seq + 1, d);
    int rc = 0;
    unsigned cut = 0, tries = 0;
    for (uint32_t id = 0; id < h->cl.n && rc == 0; id++) {
        if (id == h->k)
            continue;
        hlink *l = &h->links[id];
        /* 1: a record sent again verbatim (its counter is already used) */
        rc = send_msg(h, id, c);
        if (rc == 0) {
            uint8_t *again = malloc(l->last_len);
            if (!again)
                die("memory", "out of memory");
            memcpy(again, l->last, l->last_len);
            write_all(l, again, l->last_len);
            free(again);
            tries++;
            cut += await_cut(l);
            link_close(l);
        }
        /* 2: a record-sized frame of random bytes */
        if (rc == 0 && (rc = link_ready(h, l)) == 0) {
            uint8_t junk[4 + 8 + 16 + 32];
            randombytes_buf(junk, sizeof junk);
            junk[0] = junk[1] = junk[2] = 0;
            junk[3] = (uint8_t)(sizeof junk - 4);
            write_all(l, junk, sizeof junk);
            tries++;
            cut += await_cut(l);
            link_close(l);
        }
        /* 3: a length header far above max_frame */
        if (rc == 0 && (rc = link_ready(h, l)) == 0) {
            uint8_t big[4] = {0x7f, 0xff, 0xff, 0xff};
            write_all(l, big, sizeof big);
            tries++;
            cut += await_cut(l);
            link_close(l);
        }
    }
    pbft_msg_unref(c);
    report("garbage", rc,
           "%u links cut of %u broken after the handshake (replayed record, random record, "
           "oversized length) | expect garbage=2 oversized=1",
           cut, tries);
    return rc ? rc : (cut == tries ? 0 : FB_EPROTO);
}

static const struct {
    const char *name;
    scenario_fn fn;
} scenarios[] = {
    {"equivocate", sc_equivocate}, {"stale", sc_stale},
    {"forged", sc_forged},         {"dup", sc_dup},
    {"notprimary", sc_notprimary}, {"watermark", sc_watermark},
    {"badvc", sc_badvc},           {"badnv", sc_badnv},
    {"garbage", sc_garbage},
};

/* ------------------------------------------------------------ setup */

static void usage(FILE *f)
{
    fprintf(f,
            "Usage: fb_hostile --cluster FILE --keys DIR --id K --view V --seq S [options] "
            "SCENARIO...\n"
            "\n"
            "A Byzantine replica for tests: connects to every other replica as replica K\n"
            "(DIR/node<K>/node.key; stop the real K first) and sends crafted messages.\n"
            "\n"
            "Scenarios:\n"
            "  equivocate  as primary of view V: two PRE-PREPAREs per seq S..S+n-2\n"
            "  stale       PRE-PREPARE, PREPARE, COMMIT for view V-1\n"
            "  forged      envelopes with bad signatures (unknown key, flipped bits)\n"
            "  dup         one COMMIT sent --copies times\n"
            "  notprimary  a PRE-PREPARE in view V when K is not its primary\n"
            "  watermark   a COMMIT far above the high watermark\n"
            "  badvc       VIEW-CHANGEs with invalid proofs, and one for view V\n"
            "  badnv       a NEW-VIEW whose V is not a quorum\n"
            "  garbage     replayed, random and oversized records after the handshake\n"
            "\n"
            "Options:\n"
            "  --view V        the replicas' current view\n"
            "  --seq S         a sequence number inside their window not yet used\n"
            "  --client NAME   client whose key signs the requests (default: the last one in\n"
            "                  cluster.json, DIR/clients/NAME/node.key; none: null batches)\n"
            "  --checkpoint F  a replica's `fedbft ctl --json checkpoint` output: badvc then\n"
            "                  also sends its real certificate with one bad digest\n"
            "  --copies N      copies for dup (default %d)\n"
            "  --linger-ms MS  keep the links open after each scenario (default %d)\n",
            DEFAULT_COPIES, DEFAULT_LINGER_MS);
}

static uint64_t parse_u64(const char *opt, const char *s)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *s == '\0' || *end != '\0' || *s == '-')
        die(opt, "expects a non-negative integer");
    return v;
}

static int load_checkpoint(const char *path, real_ckpt *out)
{
    json_error_t jerr;
    json_t *j = json_load_file(path, 0, &jerr);
    if (!j)
        die(path, jerr.text);
    json_t *seq = json_object_get(j, "seq"), *dig = json_object_get(j, "state_digest");
    json_t *cert = json_object_get(j, "certificate");
    if (!json_is_integer(seq) || !json_is_string(dig) || !json_is_array(cert))
        die(path, "not a checkpoint reply (needs seq, state_digest, certificate)");
    out->seq = (uint64_t)json_integer_value(seq);
    if (out->seq == 0) { /* genesis: nothing to rebuild */
        json_decref(j);
        return 0;
    }
    if (sodium_hex2bin(out->digest, FB_DIGEST_LEN, json_string_value(dig),
                       strlen(json_string_value(dig)), NULL, NULL, NULL) != 0)
        die(path, "state_digest is not 64 hex digits");
    size_t i;
    json_t *e;
    json_array_foreach(cert, i, e)
    {
        if (out->nsigs >= CKPT_MAX_SIGS)
            break;
        json_t *r = json_object_get(e, "replica"), *s = json_object_get(e, "signature");
        if (!json_is_integer(r) || !json_is_string(s) ||
            sodium_hex2bin(out->sig[out->nsigs], FB_SIG_LEN, json_string_value(s),
                           strlen(json_string_value(s)), NULL, NULL, NULL) != 0)
            die(path, "a certificate entry needs replica and a 128-hex-digit signature");
        out->signer[out->nsigs++] = (uint32_t)json_integer_value(r);
    }
    out->have = true;
    json_decref(j);
    return 0;
}

static void load_key(const char *path, fb_identity *out)
{
    char err[256];
    if (fb_key_load(path, out, err, sizeof err) != 0)
        die(path, err);
}

/* The client key: NAME's directory under DIR/clients, matched to its id. */
static void load_client(hostile *h, const char *dir, const char *name)
{
    if (name && strcmp(name, "none") == 0)
        return;
    if (!name) {
        if (h->cl.nclients == 0)
            return;
        name = h->cl.clients[h->cl.nclients - 1].name;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/clients/%s/node.key", dir, name);
    load_key(path, &h->client);
    for (uint32_t i = 0; i < h->cl.nclients; i++)
        if (memcmp(h->cl.clients[i].pk, h->client.pk, FB_PK_LEN) == 0) {
            h->client_id = h->cl.clients[i].id;
            h->has_client = true;
            return;
        }
    die(path, "this key is not one of the clients in cluster.json");
}

int main(int argc, char **argv)
{
    const char *cluster = NULL, *keys = NULL, *client = NULL, *ckpt = NULL;
    bool have_id = false, have_view = false, have_seq = false;
    hostile h = {.copies = DEFAULT_COPIES, .linger_ms = DEFAULT_LINGER_MS};
    int first = argc;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            usage(stdout);
            return 0;
        }
        if (strncmp(a, "--", 2) != 0) {
            first = i;
            break;
        }
        if (i + 1 >= argc)
            die(a, "needs a value");
        const char *v = argv[++i];
        if (strcmp(a, "--cluster") == 0) {
            cluster = v;
        } else if (strcmp(a, "--keys") == 0) {
            keys = v;
        } else if (strcmp(a, "--client") == 0) {
            client = v;
        } else if (strcmp(a, "--checkpoint") == 0) {
            ckpt = v;
        } else if (strcmp(a, "--id") == 0) {
            h.k = (uint32_t)parse_u64(a, v);
            have_id = true;
        } else if (strcmp(a, "--view") == 0) {
            h.view = parse_u64(a, v);
            have_view = true;
        } else if (strcmp(a, "--seq") == 0) {
            h.seq = parse_u64(a, v);
            have_seq = true;
        } else if (strcmp(a, "--copies") == 0) {
            h.copies = (uint32_t)parse_u64(a, v);
        } else if (strcmp(a, "--linger-ms") == 0) {
            h.linger_ms = (uint32_t)parse_u64(a, v);
        } else {
            fprintf(stderr, "fb_hostile: unknown option %s\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!cluster || !keys || !have_id || !have_view || !have_seq || first >= argc) {
        usage(stderr);
        return 2;
    }
    if (h.copies < 2)
        die("--copies", "must be at least 2");
    if (h.seq == 0)
        die("--seq", "must be at least 1");
    if (fb_crypto_init() != 0)
        die("libsodium", "cannot initialise");

    char err[256], path[4096];
    if (cfg_cluster_load(cluster, &h.cl, err, sizeof err) != 0)
        die("--cluster", err);
    if (h.k >= h.cl.n)
        die("--id", "not a replica id in cluster.json");
    snprintf(path, sizeof path, "%s/node%u/node.key", keys, (unsigned)h.k);
    load_key(path, &h.self);
    if (memcmp(h.self.pk, h.cl.replicas[h.k].pk, FB_PK_LEN) != 0)
        die(path, "this is not the key cluster.json lists for that replica");
    load_client(&h, keys, client);
    if (ckpt)
        load_checkpoint(ckpt, &h.ckpt);
    if (fb_key_generate(&h.stranger) != 0)
        die("keys", "cannot make a key");

    h.links = calloc(h.cl.n, sizeof *h.links);
    if (!h.links)
        die("memory", "out of memory");
    for (uint32_t i = 0; i < h.cl.n; i++)
        h.links[i] = (hlink){.id = i, .peer = &h.cl.replicas[i], .fd = -1};

    int status = 0;
    for (int i = first; i < argc; i++) {
        scenario_fn fn = NULL;
        for (size_t s = 0; s < sizeof scenarios / sizeof scenarios[0]; s++)
            if (strcmp(argv[i], scenarios[s].name) == 0)
                fn = scenarios[s].fn;
        if (!fn) {
            fprintf(stderr, "fb_hostile: unknown scenario %s (see --help)\n", argv[i]);
            status = 2;
            continue;
        }
        h.sent = 0;
        if (fn(&h) != 0)
            status = 1;
    }
    for (uint32_t i = 0; i < h.cl.n; i++) {
        link_close(&h.links[i]);
        free(h.links[i].last);
    }
    free(h.links);
    fb_key_wipe(&h.self);
    fb_key_wipe(&h.client);
    fb_key_wipe(&h.stranger);
    cfg_cluster_free(&h.cl);
    return status;
}
