/* pbft_msg.c - parse, make and inspect signed protocol messages. */
#include "pbft_msg.h"

#include "envelope.h"
#include "fb_error.h"

#include <stdlib.h>
#include <string.h>

/* Nesting is fixed by the protocol (NEW-VIEW > VIEW-CHANGE > certificate >
 * PRE-PREPARE > REQUEST); anything deeper is malformed. */
#define MAX_DEPTH 4

/* The payload of a consensus message type; NULL for the others (REPLY,
 * state transfer and channel messages never enter the replica). */
static const ProtobufCMessageDescriptor *payload_descriptor(int type)
{
    switch (type) {
    case FEDBFT__MSG_TYPE__MSG_REQUEST:
    case FEDBFT__MSG_TYPE__MSG_PRE_PREPARE:
    case FEDBFT__MSG_TYPE__MSG_PREPARE:
    case FEDBFT__MSG_TYPE__MSG_COMMIT:
    case FEDBFT__MSG_TYPE__MSG_CHECKPOINT:
    case FEDBFT__MSG_TYPE__MSG_VIEW_CHANGE:
    case FEDBFT__MSG_TYPE__MSG_NEW_VIEW:
        return fb_env_payload_descriptor(type);
    default:
        return NULL;
    }
}

pbft_msg *pbft_msg_ref(pbft_msg *m)
{
    if (m)
        m->refs++;
    return m;
}

void pbft_msg_unref(pbft_msg *m)
{
    if (!m || --m->refs > 0)
        return;
    for (size_t i = 0; i < m->nreqs; i++)
        pbft_msg_unref(m->reqs[i]);
    free(m->reqs);
    if (m->u.any)
        protobuf_c_message_free_unpacked(m->u.any, NULL);
    if (m->env)
        fedbft__envelope__free_unpacked(m->env, NULL);
    free(m->raw);
    free(m);
}

void pbft_batch_digest(uint64_t nondet, pbft_msg *const *reqs, size_t nreqs,
                       pbft_digest_stats *stats, uint8_t out[FB_DIGEST_LEN])
{
    uint8_t be[8];
    for (int i = 7; i >= 0; i--) {
        be[i] = (uint8_t)nondet;
        nondet >>= 8;
    }
    fb_digest_ctx ctx;
    fb_digest_init(&ctx, FB_DOM_BATCH);
    fb_digest_update(&ctx, be, sizeof be);
    for (size_t i = 0; i < nreqs; i++)
        fb_digest_update(&ctx, reqs[i]->digest, FB_DIGEST_LEN);
    fb_digest_final(&ctx, out);
    if (stats)
        stats->batches++;
}

/* The replica field of messages that have one must name the envelope's sender. */
static int check_sender(const pbft_msg *m, char *err, size_t errlen)
{
    uint32_t claimed = m->sender;
    switch (m->type) {
    case FEDBFT__MSG_TYPE__MSG_REQUEST:
        claimed = m->u.request->client;
        break;
    case FEDBFT__MSG_TYPE__MSG_PREPARE:
        claimed = m->u.prepare->replica;
        break;
    case FEDBFT__MSG_TYPE__MSG_COMMIT:
        claimed = m->u.commit->replica;
        break;
    case FEDBFT__MSG_TYPE__MSG_CHECKPOINT:
        claimed = m->u.checkpoint->replica;
        break;
    case FEDBFT__MSG_TYPE__MSG_VIEW_CHANGE:
        claimed = m->u.view_change->replica;
        break;
    default:
        break;
    }
    if (claimed != m->sender)
        return fb_errf(err, errlen, FB_EPROTO, "message names sender %u but is signed by %u",
                       claimed, m->sender);
    return 0;
}

static int check_digest_len(ProtobufCBinaryData d, const char *what, char *err, size_t errlen)
{
    if (d.len != FB_DIGEST_LEN)
        return fb_errf(err, errlen, FB_EPROTO, "%s digest is %zu bytes, expected %d", what, d.len,
                       FB_DIGEST_LEN);
    return 0;
}

static int check_fields(const pbft_msg *m, char *err, size_t errlen)
{
    switch (m->type) {
    case FEDBFT__MSG_TYPE__MSG_REQUEST:
        if (!m->u.request->op)
            return fb_errf(err, errlen, FB_EPROTO, "request has no operation");
        return 0;
    case FEDBFT__MSG_TYPE__MSG_PRE_PREPARE:
        return check_digest_len(m->u.pre_prepare->digest, "pre-prepare", err, errlen);
    case FEDBFT__MSG_TYPE__MSG_PREPARE:
        return check_digest_len(m->u.prepare->digest, "prepare", err, errlen);
    case FEDBFT__MSG_TYPE__MSG_COMMIT:
        return check_digest_len(m->u.commit->digest, "commit", err, errlen);
    case FEDBFT__MSG_TYPE__MSG_CHECKPOINT:
        return check_digest_len(m->u.checkpoint->state_digest, "checkpoint", err, errlen);
    default:
        return 0;
    }
}

/* Parse the nested requests of a PRE-PREPARE and check its batch digest. */
static int parse_batch(pbft_msg *m, const pbft_req_lookup *lookup, pbft_digest_stats *stats,
                       char *err, size_t errlen)
{
    const Fedbft__PrePrepare *pp = m->u.pre_prepare;
    if (pp->n_requests > 0) {
        m->reqs = calloc(pp->n_requests, sizeof *m->reqs);
        if (!m->reqs)
            return FB_ENOMEM;
    }
    for (size_t i = 0; i < pp->n_requests; i++) {
        if (pp->requests[i]->type != FEDBFT__MSG_TYPE__MSG_REQUEST)
            return fb_errf(err, errlen, FB_EPROTO, "pre-prepare entry %zu is not a REQUEST", i);
        int rc = pbft_msg_from_env(pp->requests[i], lookup, stats, &m->reqs[i], err, errlen);
        if (rc)
            return rc;
        m->nreqs++;
    }
    uint8_t d[FB_DIGEST_LEN];
    pbft_batch_digest(pp->nondet, m->reqs, m->nreqs, stats, d);
    if (memcmp(d, pp->digest.data, FB_DIGEST_LEN) != 0)
        return fb_errf(err, errlen, FB_EPROTO,
                       "pre-prepare (view %llu, seq %llu) digest does not match its batch",
                       (unsigned long long)pp->view, (unsigned long long)pp->seq);
    return 0;
}

/* Build a message around raw (taking ownership of raw and env).  If digest is
 * NULL it is computed here.  reqs/nreqs: a PRE-PREPARE's requests when the
 * caller already has them (references are taken); otherwise parsed. */
static int build(uint8_t *raw, size_t len, Fedbft__Envelope *env, const uint8_t *digest,
                 pbft_msg *const *reqs, size_t nreqs, const pbft_req_lookup *lookup,
                 pbft_digest_stats *stats, pbft_msg **out, char *err, size_t errlen)
{
    pbft_msg *m = calloc(1, sizeof *m);
    if (!m) {
        free(raw);
        fedbft__envelope__free_unpacked(env, NULL);
        return FB_ENOMEM;
    }
    m->refs = 1;
    m->raw = raw;
    m->raw_len = len;
    m->env = env;
    m->type = env->type;
    m->sender = env->sender;
    int rc = 0;
    const ProtobufCMessageDescriptor *d = payload_descriptor(m->type);
    if (!d)
        rc = fb_errf(err, errlen, FB_EPROTO, "message type %d is not a consensus message", m->type);
    else if (!(m->u.any = protobuf_c_message_unpack(d, NULL, env->payload.len, env->payload.data)))
        rc = fb_errf(err, errlen, FB_EPROTO, "%s payload does not decode", d->short_name);
    if (rc == 0)
        rc = check_fields(m, err, errlen);
    if (rc == 0)
        rc = check_sender(m, err, errlen);
    if (rc == 0) {
        if (digest) {
            memcpy(m->digest, digest, FB_DIGEST_LEN);
        } else {
            fb_env_digest(env->type, env->version, env->sender, env->payload.data, env->payload.len,
                          m->digest);
            if (stats) {
                if (m->type == FEDBFT__MSG_TYPE__MSG_REQUEST)
                    stats->requests++;
                else
                    stats->envelopes++;
            }
        }
    }
    if (rc == 0 && m->type == FEDBFT__MSG_TYPE__MSG_PRE_PREPARE) {
        if (reqs) {
            m->reqs = nreqs ? calloc(nreqs, sizeof *m->reqs) : NULL;
            if (nreqs && !m->reqs)
                rc = FB_ENOMEM;
            for (size_t i = 0; rc == 0 && i < nreqs; i++)
                m->reqs[m->nreqs++] = pbft_msg_ref(reqs[i]);
        } else {
            rc = parse_batch(m, lookup, stats, err, errlen);
        }
    }
    if (rc) {
        pbft_msg_unref(m);
        return rc;
    }
    *out = m;
    return 0;
}

int pbft_msg_parse(const uint8_t *raw, size_t len, const pbft_req_lookup *lookup,
                   pbft_digest_stats *stats, pbft_msg **out, char *err, size_t errlen)
{
    Fedbft__Envelope *env = NULL;
    int rc = fb_env_unpack(raw, len, &env, err, errlen);
    if (rc)
        return rc;
    /* A request relayed again (in a PRE-PREPARE, or retransmitted by its
     * client) is recognised by its bytes; its digest is not recomputed. */
    if (env->type == FEDBFT__MSG_TYPE__MSG_REQUEST && lookup && lookup->find) {
        Fedbft__Request *req = fedbft__request__unpack(NULL, env->payload.len, env->payload.data);
        pbft_msg *known =
            req ? lookup->find(lookup->arg, env->sender, req->timestamp, raw, len) : NULL;
        if (req)
            fedbft__request__free_unpacked(req, NULL);
        if (known) {
            fedbft__envelope__free_unpacked(env, NULL);
            *out = pbft_msg_ref(known);
            return 0;
        }
    }
    uint8_t *copy = malloc(len ? len : 1);
    if (!copy) {
        fedbft__envelope__free_unpacked(env, NULL);
        return FB_ENOMEM;
    }
    memcpy(copy, raw, len);
    return build(copy, len, env, NULL, NULL, 0, lookup, stats, out, err, errlen);
}

int pbft_msg_from_env(const Fedbft__Envelope *env, const pbft_req_lookup *lookup,
                      pbft_digest_stats *stats, pbft_msg **out, char *err, size_t errlen)
{
    size_t len = fedbft__envelope__get_packed_size(env);
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf)
        return FB_ENOMEM;
    fedbft__envelope__pack(env, buf);
    int rc = pbft_msg_parse(buf, len, lookup, stats, out, err, errlen);
    free(buf);
    return rc;
}

int pbft_msg_make_batch(int type, uint32_t sender, const ProtobufCMessage *payload,
                        pbft_msg *const *reqs, size_t nreqs, const pbft_signer *signer,
                        pbft_digest_stats *stats, pbft_msg **out)
{
    size_t plen = protobuf_c_message_get_packed_size(payload);
    uint8_t *pbuf = malloc(plen ? plen : 1);
    if (!pbuf)
        return FB_ENOMEM;
    protobuf_c_message_pack(payload, pbuf);
    uint8_t digest[FB_DIGEST_LEN], sig[FB_SIG_LEN];
    int rc = fb_env_digest(type, FB_PROTOCOL_VERSION, sender, pbuf, plen, digest);
    if (rc) {
        free(pbuf);
        return rc;
    }
    if (stats) {
        if (type == FEDBFT__MSG_TYPE__MSG_REQUEST)
            stats->requests++;
        else
            stats->envelopes++;
    }
    bool signed_type = fb_env_type_signed(type); /* COMMIT: the channel proves the sender */
    if (signed_type)
        signer->sign(signer->arg, digest, sig);
    Fedbft__Envelope env = FEDBFT__ENVELOPE__INIT;
    env.type = (Fedbft__MsgType)type;
    env.sender = sender;
    env.version = FB_PROTOCOL_VERSION;
    env.payload = (ProtobufCBinaryData){plen, pbuf};
    env.signature = (ProtobufCBinaryData){signed_type ? sizeof sig : 0, signed_type ? sig : NULL};
    size_t len = fedbft__envelope__get_packed_size(&env);
    uint8_t *raw = malloc(len);
    if (!raw) {
        free(pbuf);
        return FB_ENOMEM;
    }
    fedbft__envelope__pack(&env, raw);
    free(pbuf);
    Fedbft__Envelope *unpacked = fedbft__envelope__unpack(NULL, len, raw);
    if (!unpacked) {
        free(raw);
        return FB_ENOMEM;
    }
    return build(raw, len, unpacked, digest,
                 type == FEDBFT__MSG_TYPE__MSG_PRE_PREPARE ? reqs : NULL, nreqs, NULL, stats, out,
                 NULL, 0);
}

int pbft_msg_make(int type, uint32_t sender, const ProtobufCMessage *payload,
                  const pbft_signer *signer, pbft_digest_stats *stats, pbft_msg **out)
{
    return pbft_msg_make_batch(type, sender, payload, NULL, 0, signer, stats, out);
}

/* ------------------------------------------------------------ signatures */

typedef struct sig_walk {
    pbft_sigref *out;
    size_t cap, n;
} sig_walk;

static int walk_env(sig_walk *w, const Fedbft__Envelope *e, int want_type, int depth);

static void add_sig(sig_walk *w, int type, uint32_t signer, const uint8_t digest[FB_DIGEST_LEN],
                    const uint8_t *sig)
{
    if (w->n < w->cap) {
        pbft_sigref *s = &w->out[w->n];
        s->is_client = type == FEDBFT__MSG_TYPE__MSG_REQUEST;
        s->signer = signer;
        memcpy(s->digest, digest, FB_DIGEST_LEN);
        memcpy(s->sig, sig, FB_SIG_LEN);
    }
    w->n++;
}

/* The envelopes nested in a payload of the given type, each checked for the
 * type the protocol puts there. */
static int walk_payload(sig_walk *w, int type, const ProtobufCMessage *any, int depth)
{
    int rc = 0;
    switch (type) {
    case FEDBFT__MSG_TYPE__MSG_PRE_PREPARE: {
        const Fedbft__PrePrepare *pp = (const Fedbft__PrePrepare *)any;
        for (size_t i = 0; rc == 0 && i < pp->n_requests; i++)
            rc = walk_env(w, pp->requests[i], FEDBFT__MSG_TYPE__MSG_REQUEST, depth + 1);
        break;
    }
    case FEDBFT__MSG_TYPE__MSG_VIEW_CHANGE: {
        const Fedbft__ViewChange *vc = (const Fedbft__ViewChange *)any;
        for (size_t i = 0; rc == 0 && i < vc->n_checkpoint_proof; i++)
            rc = walk_env(w, vc->checkpoint_proof[i], FEDBFT__MSG_TYPE__MSG_CHECKPOINT, depth + 1);
        for (size_t i = 0; rc == 0 && i < vc->n_prepared; i++) {
            const Fedbft__PreparedCert *c = vc->prepared[i];
            if (!c->pre_prepare)
                return FB_EPROTO;
            rc = walk_env(w, c->pre_prepare, FEDBFT__MSG_TYPE__MSG_PRE_PREPARE, depth + 1);
            for (size_t j = 0; rc == 0 && j < c->n_prepares; j++)
                rc = walk_env(w, c->prepares[j], FEDBFT__MSG_TYPE__MSG_PREPARE, depth + 1);
        }
        break;
    }
    case FEDBFT__MSG_TYPE__MSG_NEW_VIEW: {
        const Fedbft__NewView *nv = (const Fedbft__NewView *)any;
        for (size_t i = 0; rc == 0 && i < nv->n_view_changes; i++)
            rc = walk_env(w, nv->view_changes[i], FEDBFT__MSG_TYPE__MSG_VIEW_CHANGE, depth + 1);
        for (size_t i = 0; rc == 0 && i < nv->n_pre_prepares; i++)
            rc = walk_env(w, nv->pre_prepares[i], FEDBFT__MSG_TYPE__MSG_PRE_PREPARE, depth + 1);
        break;
    }
    default:
        break;
    }
    return rc;
}

static int walk_env(sig_walk *w, const Fedbft__Envelope *e, int want_type, int depth)
{
    if (depth > MAX_DEPTH || !e || (int)e->type != want_type || e->version != FB_PROTOCOL_VERSION ||
        e->signature.len != FB_SIG_LEN)
        return FB_EPROTO;
    uint8_t digest[FB_DIGEST_LEN];
    if (fb_env_digest(e->type, e->version, e->sender, e->payload.data, e->payload.len, digest))
        return FB_EPROTO;
    add_sig(w, e->type, e->sender, digest, e->signature.data);
    if (want_type == FEDBFT__MSG_TYPE__MSG_REQUEST || want_type == FEDBFT__MSG_TYPE__MSG_PREPARE ||
        want_type == FEDBFT__MSG_TYPE__MSG_CHECKPOINT)
        return 0;
    ProtobufCMessage *any = protobuf_c_message_unpack(payload_descriptor(want_type), NULL,
                                                      e->payload.len, e->payload.data);
    if (!any)
        return FB_EPROTO;
    int rc = walk_payload(w, want_type, any, depth);
    protobuf_c_message_free_unpacked(any, NULL);
    return rc;
}

void pbft_msg_view_seq(const pbft_msg *m, uint64_t *view, uint64_t *seq)
{
    *view = *seq = 0;
    switch (m->type) {
    case FEDBFT__MSG_TYPE__MSG_PRE_PREPARE:
        *view = m->u.pre_prepare->view;
        *seq = m->u.pre_prepare->seq;
        break;
    case FEDBFT__MSG_TYPE__MSG_PREPARE:
        *view = m->u.prepare->view;
        *seq = m->u.prepare->seq;
        break;
    case FEDBFT__MSG_TYPE__MSG_COMMIT:
        *view = m->u.commit->view;
        *seq = m->u.commit->seq;
        break;
    case FEDBFT__MSG_TYPE__MSG_CHECKPOINT:
        *seq = m->u.checkpoint->seq;
        break;
    case FEDBFT__MSG_TYPE__MSG_VIEW_CHANGE:
        *view = m->u.view_change->new_view;
        break;
    case FEDBFT__MSG_TYPE__MSG_NEW_VIEW:
        *view = m->u.new_view->view;
        break;
    default:
        break;
    }
}

int pbft_msg_signatures(const pbft_msg *m, pbft_sigref *out, size_t cap)
{
    sig_walk w = {out, cap, 0};
    if (!fb_env_type_signed(m->type)) /* a COMMIT: authenticated by its link */
        return 0;
    add_sig(&w, m->type, m->sender, m->digest, m->env->signature.data);
    if (m->type == FEDBFT__MSG_TYPE__MSG_PRE_PREPARE) {
        /* The requests are parsed already; their digests are known. */
        for (size_t i = 0; i < m->nreqs; i++)
            add_sig(&w, m->reqs[i]->type, m->reqs[i]->sender, m->reqs[i]->digest,
                    m->reqs[i]->env->signature.data);
        return (int)w.n;
    }
    int rc = walk_payload(&w, m->type, m->u.any, 0);
    return rc ? rc : (int)w.n;
}
