/* test_pbft_msg.c - the consensus message layer: make/parse round trips,
 * digest reuse, rejections, nested signatures and reference counting. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "envelope.h"
#include "fb_error.h"
#include "pbft_msg.h"
#include "sig.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NREPLICAS 4
#define CLIENT 100

static fb_identity replica_key[NREPLICAS];
static fb_identity client_key;

static void sign_cb(void *arg, const uint8_t digest[FB_DIGEST_LEN], uint8_t sig[FB_SIG_LEN])
{
    fb_sig_sign(arg, digest, sig);
}

static pbft_signer signer_of(uint32_t replica)
{
    return (pbft_signer){sign_cb, &replica_key[replica]};
}

static int setup(void **state)
{
    (void)state;
    assert_int_equal(fb_crypto_init(), 0);
    for (uint8_t i = 0; i < NREPLICAS; i++) {
        uint8_t seed[FB_SEED_LEN] = {i + 1};
        assert_int_equal(fb_key_from_seed(seed, &replica_key[i]), 0);
    }
    uint8_t seed[FB_SEED_LEN] = {0xc1};
    assert_int_equal(fb_key_from_seed(seed, &client_key), 0);
    return 0;
}

/* ------------------------------------------------------------ builders */

static pbft_msg *mk_request(uint64_t ts, pbft_digest_stats *stats)
{
    char key[32];
    int klen = snprintf(key, sizeof key, "key-%llu", (unsigned long long)ts);
    Fedbft__Operation op = FEDBFT__OPERATION__INIT;
    op.kind = FEDBFT__OPERATION__KIND__OP_PUT;
    op.key = (ProtobufCBinaryData){(size_t)klen, (uint8_t *)key};
    op.value = (ProtobufCBinaryData){5, (uint8_t *)"value"};
    Fedbft__Request r = FEDBFT__REQUEST__INIT;
    r.client = CLIENT;
    r.timestamp = ts;
    r.op = &op;
    pbft_signer s = {sign_cb, &client_key};
    pbft_msg *m = NULL;
    assert_int_equal(pbft_msg_make(FEDBFT__MSG_TYPE__MSG_REQUEST, CLIENT, &r.base, &s, stats, &m),
                     0);
    return m;
}

/* A PRE-PREPARE for reqs; digest_override (if not NULL) replaces the true digest. */
static pbft_msg *mk_pp(uint64_t view, uint64_t seq, uint32_t sender, pbft_msg *const *reqs,
                       size_t nreqs, uint64_t nondet, const uint8_t *digest_override)
{
    uint8_t d[FB_DIGEST_LEN];
    pbft_batch_digest(nondet, reqs, nreqs, NULL, d);
    if (digest_override)
        memcpy(d, digest_override, FB_DIGEST_LEN);
    Fedbft__Envelope *envs[8];
    assert_true(nreqs <= 8);
    for (size_t i = 0; i < nreqs; i++)
        envs[i] = reqs[i]->env;
    Fedbft__PrePrepare pp = FEDBFT__PRE_PREPARE__INIT;
    pp.view = view;
    pp.seq = seq;
    pp.digest = (ProtobufCBinaryData){FB_DIGEST_LEN, d};
    pp.n_requests = nreqs;
    pp.requests = envs;
    pp.nondet = nondet;
    pbft_signer s = signer_of(sender);
    pbft_msg *m = NULL;
    assert_int_equal(pbft_msg_make_batch(FEDBFT__MSG_TYPE__MSG_PRE_PREPARE, sender, &pp.base, reqs,
                                         nreqs, &s, NULL, &m),
                     0);
    return m;
}

static pbft_msg *mk_vote(int type, uint64_t view, uint64_t seq, const uint8_t *digest,
                         uint32_t replica)
{
    pbft_signer s = signer_of(replica);
    pbft_msg *m = NULL;
    if (type == FEDBFT__MSG_TYPE__MSG_PREPARE) {
        Fedbft__Prepare p = FEDBFT__PREPARE__INIT;
        p.view = view;
        p.seq = seq;
        p.digest = (ProtobufCBinaryData){FB_DIGEST_LEN, (uint8_t *)digest};
        p.replica = replica;
        assert_int_equal(pbft_msg_make(type, replica, &p.base, &s, NULL, &m), 0);
    } else {
        Fedbft__Commit c = FEDBFT__COMMIT__INIT;
        c.view = view;
        c.seq = seq;
        c.digest = (ProtobufCBinaryData){FB_DIGEST_LEN, (uint8_t *)digest};
        c.replica = replica;
        assert_int_equal(pbft_msg_make(type, replica, &c.base, &s, NULL, &m), 0);
    }
    return m;
}

static pbft_msg *mk_checkpoint(uint64_t seq, uint8_t fill, uint32_t replica)
{
    uint8_t d[FB_DIGEST_LEN];
    memset(d, fill, sizeof d);
    Fedbft__Checkpoint c = FEDBFT__CHECKPOINT__INIT;
    c.seq = seq;
    c.state_digest = (ProtobufCBinaryData){FB_DIGEST_LEN, d};
    c.replica = replica;
    pbft_signer s = signer_of(replica);
    pbft_msg *m = NULL;
    assert_int_equal(
        pbft_msg_make(FEDBFT__MSG_TYPE__MSG_CHECKPOINT, replica, &c.base, &s, NULL, &m), 0);
    return m;
}

/* A VIEW-CHANGE from `replica` with a 3-checkpoint proof at seq 16 and one
 * certificate (pp from primary(view) + two prepares).  Its parts are
 * returned so tests can look inside; the caller unrefs them. */
typedef struct vc_fixture {
    pbft_msg *vc;
    pbft_msg *proof[3];
    pbft_msg *req, *pp, *prep[2];
} vc_fixture;

static void vc_fixture_make(vc_fixture *f, uint32_t replica, uint64_t new_view)
{
    for (uint32_t i = 0; i < 3; i++)
        f->proof[i] = mk_checkpoint(16, 0xab, i);
    f->req = mk_request(1000 + replica, NULL);
    f->pp = mk_pp(1, 17, 1, &f->req, 1, 42, NULL);
    const uint8_t *d = f->pp->u.pre_prepare->digest.data;
    f->prep[0] = mk_vote(FEDBFT__MSG_TYPE__MSG_PREPARE, 1, 17, d, 2);
    f->prep[1] = mk_vote(FEDBFT__MSG_TYPE__MSG_PREPARE, 1, 17, d, 3);

    Fedbft__Envelope *proof[3] = {f->proof[0]->env, f->proof[1]->env, f->proof[2]->env};
    Fedbft__Envelope *preps[2] = {f->prep[0]->env, f->prep[1]->env};
    Fedbft__PreparedCert cert = FEDBFT__PREPARED_CERT__INIT;
    cert.pre_prepare = f->pp->env;
    cert.n_prepares = 2;
    cert.prepares = preps;
    Fedbft__PreparedCert *certs[1] = {&cert};
    Fedbft__ViewChange v = FEDBFT__VIEW_CHANGE__INIT;
    v.new_view = new_view;
    v.stable_seq = 16;
    v.n_checkpoint_proof = 3;
    v.checkpoint_proof = proof;
    v.n_prepared = 1;
    v.prepared = certs;
    v.replica = replica;
    pbft_signer s = signer_of(replica);
    f->vc = NULL;
    assert_int_equal(
        pbft_msg_make(FEDBFT__MSG_TYPE__MSG_VIEW_CHANGE, replica, &v.base, &s, NULL, &f->vc), 0);
}

static void vc_fixture_free(vc_fixture *f)
{
    pbft_msg_unref(f->vc);
    for (int i = 0; i < 3; i++)
        pbft_msg_unref(f->proof[i]);
    pbft_msg_unref(f->req);
    pbft_msg_unref(f->pp);
    pbft_msg_unref(f->prep[0]);
    pbft_msg_unref(f->prep[1]);
}

static pbft_msg *reparse(const pbft_msg *m, const pbft_req_lookup *lookup, pbft_digest_stats *stats)
{
    char err[256] = "";
    pbft_msg *out = NULL;
    int rc = pbft_msg_parse(m->raw, m->raw_len, lookup, stats, &out, err, sizeof err);
    if (rc)
        fail_msg("reparse: %s", err);
    return out;
}

static void assert_same_msg(const pbft_msg *a, const pbft_msg *b)
{
    assert_int_equal(a->type, b->type);
    assert_int_equal(a->sender, b->sender);
    assert_int_equal(a->raw_len, b->raw_len);
    assert_memory_equal(a->raw, b->raw, a->raw_len);
    assert_memory_equal(a->digest, b->digest, FB_DIGEST_LEN);
}

/* ------------------------------------------------------------ round trips */

static void test_request_round_trip(void **state)
{
    (void)state;
    pbft_digest_stats st = {0};
    pbft_msg *r = mk_request(7, &st);
    /* pbft_msg_make digests the request it signs once (counted as a request). */
    assert_int_equal(st.envelopes, 0);
    assert_int_equal(st.requests, 1);
    assert_int_equal(r->refs, 1);
    assert_int_equal(fb_sig_verify(client_key.pk, r->digest, r->env->signature.data), 0);

    pbft_digest_stats st2 = {0};
    pbft_msg *p = reparse(r, NULL, &st2);
    assert_int_equal(st2.requests, 1);
    assert_int_equal(st2.envelopes, 0);
    assert_int_equal(st2.batches, 0);
    assert_same_msg(r, p);
    assert_int_equal(p->type, FEDBFT__MSG_TYPE__MSG_REQUEST);
    assert_int_equal(p->u.request->client, CLIENT);
    assert_int_equal(p->u.request->timestamp, 7);
    assert_int_equal(p->u.request->op->kind, FEDBFT__OPERATION__KIND__OP_PUT);
    assert_memory_equal(p->u.request->op->key.data, "key-7", 5);
    pbft_msg_unref(p);
    pbft_msg_unref(r);
}

static void test_pre_prepare_round_trip(void **state)
{
    (void)state;
    pbft_msg *reqs[2] = {mk_request(1, NULL), mk_request(2, NULL)};
    pbft_msg *pp = mk_pp(3, 9, 3, reqs, 2, 77, NULL);
    assert_int_equal(pp->nreqs, 2);
    assert_ptr_equal(pp->reqs[0], reqs[0]); /* make_batch takes references */
    assert_int_equal(reqs[0]->refs, 2);
    assert_int_equal(fb_sig_verify(replica_key[3].pk, pp->digest, pp->env->signature.data), 0);

    pbft_digest_stats st = {0};
    pbft_msg *p = reparse(pp, NULL, &st);
    assert_same_msg(pp, p);
    assert_int_equal(st.envelopes, 1);
    assert_int_equal(st.requests, 2);
    assert_int_equal(st.batches, 1);
    assert_int_equal(p->u.pre_prepare->view, 3);
    assert_int_equal(p->u.pre_prepare->seq, 9);
    assert_int_equal(p->u.pre_prepare->nondet, 77);
    assert_int_equal(p->nreqs, 2);
    for (int i = 0; i < 2; i++)
        assert_same_msg(reqs[i], p->reqs[i]);
    uint8_t d[FB_DIGEST_LEN];
    pbft_batch_digest(77, reqs, 2, NULL, d);
    assert_memory_equal(p->u.pre_prepare->digest.data, d, FB_DIGEST_LEN);

    pbft_msg_unref(p);
    pbft_msg_unref(pp);
    assert_int_equal(reqs[0]->refs, 1);
    pbft_msg_unref(reqs[0]);
    pbft_msg_unref(reqs[1]);
}

static void test_empty_pre_prepare_round_trip(void **state)
{
    (void)state;
    /* pbft_msg_make on a PRE-PREPARE parses its (empty) batch and checks it. */
    uint8_t d[FB_DIGEST_LEN];
    pbft_batch_digest(0, NULL, 0, NULL, d);
    Fedbft__PrePrepare pp = FEDBFT__PRE_PREPARE__INIT;
    pp.view = 1;
    pp.seq = 4;
    pp.digest = (ProtobufCBinaryData){FB_DIGEST_LEN, d};
    pbft_signer s = signer_of(1);
    pbft_msg *m = NULL;
    assert_int_equal(pbft_msg_make(FEDBFT__MSG_TYPE__MSG_PRE_PREPARE, 1, &pp.base, &s, NULL, &m),
                     0);
    pbft_msg *p = reparse(m, NULL, NULL);
    assert_same_msg(m, p);
    assert_int_equal(p->nreqs, 0);
    pbft_msg_unref(p);
    pbft_msg_unref(m);
}

static void test_vote_round_trips(void **state)
{
    (void)state;
    uint8_t d[FB_DIGEST_LEN];
    memset(d, 0x5a, sizeof d);
    const int types[2] = {FEDBFT__MSG_TYPE__MSG_PREPARE, FEDBFT__MSG_TYPE__MSG_COMMIT};
    for (int t = 0; t < 2; t++) {
        pbft_msg *m = mk_vote(types[t], 5, 33, d, 2);
        pbft_digest_stats st = {0};
        pbft_msg *p = reparse(m, NULL, &st);
        assert_int_equal(st.envelopes, 1);
        assert_same_msg(m, p);
        if (types[t] == FEDBFT__MSG_TYPE__MSG_PREPARE) {
            assert_int_equal(p->u.prepare->view, 5);
            assert_int_equal(p->u.prepare->seq, 33);
            assert_int_equal(p->u.prepare->replica, 2);
            assert_memory_equal(p->u.prepare->digest.data, d, FB_DIGEST_LEN);
        } else {
            assert_int_equal(p->u.commit->view, 5);
            assert_int_equal(p->u.commit->seq, 33);
            assert_int_equal(p->u.commit->replica, 2);
            assert_memory_equal(p->u.commit->digest.data, d, FB_DIGEST_LEN);
        }
        pbft_sigref refs[2];
        if (types[t] == FEDBFT__MSG_TYPE__MSG_PREPARE) {
            assert_int_equal(pbft_msg_signatures(p, refs, 2), 1);
            assert_int_equal(fb_sig_verify(replica_key[2].pk, p->digest, p->env->signature.data),
                             0);
        } else { /* a COMMIT is unsigned: its link proves the sender */
            assert_int_equal(p->env->signature.len, 0);
            assert_int_equal(pbft_msg_signatures(p, refs, 2), 0);
        }
        pbft_msg_unref(p);
        pbft_msg_unref(m);
    }
    /* The domain separates PREPARE and COMMIT: same payload, other digest. */
    pbft_msg *a = mk_vote(types[0], 5, 33, d, 2), *b = mk_vote(types[1], 5, 33, d, 2);
    assert_memory_not_equal(a->digest, b->digest, FB_DIGEST_LEN);
    pbft_msg_unref(a);
    pbft_msg_unref(b);
}

static void test_checkpoint_round_trip(void **state)
{
    (void)state;
    pbft_msg *m = mk_checkpoint(32, 0x11, 3);
    pbft_msg *p = reparse(m, NULL, NULL);
    assert_same_msg(m, p);
    assert_int_equal(p->u.checkpoint->seq, 32);
    assert_int_equal(p->u.checkpoint->replica, 3);
    assert_int_equal(p->u.checkpoint->state_digest.data[0], 0x11);
    pbft_msg_unref(p);
    pbft_msg_unref(m);
}

static void test_view_change_round_trip(void **state)
{
    (void)state;
    vc_fixture f;
    vc_fixture_make(&f, 2, 2);
    pbft_msg *p = reparse(f.vc, NULL, NULL);
    assert_same_msg(f.vc, p);
    const Fedbft__ViewChange *v = p->u.view_change;
    assert_int_equal(v->new_view, 2);
    assert_int_equal(v->stable_seq, 16);
    assert_int_equal(v->replica, 2);
    assert_int_equal(v->n_checkpoint_proof, 3);
    assert_int_equal(v->n_prepared, 1);
    assert_int_equal(v->prepared[0]->n_prepares, 2);
    /* Nested envelopes come back byte for byte: same digests. */
    char err[256];
    pbft_msg *n = NULL;
    assert_int_equal(
        pbft_msg_from_env(v->prepared[0]->pre_prepare, NULL, NULL, &n, err, sizeof err), 0);
    assert_same_msg(f.pp, n);
    assert_int_equal(n->nreqs, 1);
    pbft_msg_unref(n);
    assert_int_equal(pbft_msg_from_env(v->checkpoint_proof[1], NULL, NULL, &n, err, sizeof err), 0);
    assert_same_msg(f.proof[1], n);
    pbft_msg_unref(n);
    pbft_msg_unref(p);
    vc_fixture_free(&f);
}

static pbft_msg *mk_new_view(uint64_t view, uint32_t sender, pbft_msg *const *vcs, size_t nvcs,
                             pbft_msg *const *pps, size_t npps)
{
    Fedbft__Envelope *ve[8], *pe[8];
    for (size_t i = 0; i < nvcs; i++)
        ve[i] = vcs[i]->env;
    for (size_t i = 0; i < npps; i++)
        pe[i] = pps[i]->env;
    Fedbft__NewView nv = FEDBFT__NEW_VIEW__INIT;
    nv.view = view;
    nv.n_view_changes = nvcs;
    nv.view_changes = ve;
    nv.n_pre_prepares = npps;
    nv.pre_prepares = pe;
    pbft_signer s = signer_of(sender);
    pbft_msg *m = NULL;
    assert_int_equal(pbft_msg_make(FEDBFT__MSG_TYPE__MSG_NEW_VIEW, sender, &nv.base, &s, NULL, &m),
                     0);
    return m;
}

static void test_new_view_round_trip(void **state)
{
    (void)state;
    vc_fixture f[3];
    pbft_msg *vcs[3];
    for (uint32_t i = 0; i < 3; i++) {
        vc_fixture_make(&f[i], i + 1, 2);
        vcs[i] = f[i].vc;
    }
    pbft_msg *req = mk_request(5000, NULL);
    pbft_msg *pp = mk_pp(2, 17, 2, &req, 1, 42, NULL);
    pbft_msg *nv = mk_new_view(2, 2, vcs, 3, &pp, 1);
    pbft_msg *p = reparse(nv, NULL, NULL);
    assert_same_msg(nv, p);
    assert_int_equal(p->u.new_view->view, 2);
    assert_int_equal(p->u.new_view->n_view_changes, 3);
    assert_int_equal(p->u.new_view->n_pre_prepares, 1);
    char err[256];
    pbft_msg *n = NULL;
    assert_int_equal(
        pbft_msg_from_env(p->u.new_view->view_changes[2], NULL, NULL, &n, err, sizeof err), 0);
    assert_same_msg(f[2].vc, n);
    pbft_msg_unref(n);
    pbft_msg_unref(p);
    pbft_msg_unref(nv);
    pbft_msg_unref(pp);
    pbft_msg_unref(req);
    for (int i = 0; i < 3; i++)
        vc_fixture_free(&f[i]);
}

/* ------------------------------------------------------------ digest reuse */

typedef struct known_reqs {
    pbft_msg *reqs[4];
    size_t n;
    int calls;
} known_reqs;

static pbft_msg *find_known(void *arg, uint32_t client, uint64_t ts, const uint8_t *raw, size_t len)
{
    known_reqs *k = arg;
    k->calls++;
    for (size_t i = 0; i < k->n; i++) {
        pbft_msg *r = k->reqs[i];
        if (r->u.request->client == client && r->u.request->timestamp == ts && r->raw_len == len &&
            memcmp(r->raw, raw, len) == 0)
            return r;
    }
    return NULL;
}

static void test_known_request_not_redigested(void **state)
{
    (void)state;
    /* The replica received request 1 straight from its client. */
    pbft_digest_stats st = {0};
    pbft_msg *wire = mk_request(1, NULL);
    pbft_msg *known = reparse(wire, NULL, &st);
    assert_int_equal(st.requests, 1);
    pbft_msg *other = mk_request(2, NULL);
    pbft_msg *reqs[2] = {known, other};
    pbft_msg *pp = mk_pp(0, 1, 0, reqs, 2, 9, NULL);
    pbft_msg_unref(wire);

    /* The PRE-PREPARE relays request 1 (known) and request 2 (new). */
    known_reqs k = {{known}, 1, 0};
    pbft_req_lookup lookup = {find_known, &k};
    st = (pbft_digest_stats){0};
    pbft_msg *p = reparse(pp, &lookup, &st);
    assert_int_equal(k.calls, 2);
    assert_int_equal(st.requests, 1); /* only request 2 */
    assert_int_equal(st.batches, 1);
    assert_int_equal(st.envelopes, 1);
    assert_ptr_equal(p->reqs[0], known); /* shared, not a copy */
    assert_ptr_not_equal(p->reqs[1], other);
    assert_memory_equal(p->reqs[1]->digest, other->digest, FB_DIGEST_LEN);
    assert_int_equal(known->refs, 3); /* ours, pp's, p's */

    /* The request retransmitted by its client is recognised too. */
    st = (pbft_digest_stats){0};
    pbft_msg *again = reparse(known, &lookup, &st);
    assert_ptr_equal(again, known);
    assert_int_equal(st.requests, 0);
    pbft_msg_unref(again);

    /* Without the lookup both are digested. */
    st = (pbft_digest_stats){0};
    pbft_msg *q = reparse(pp, NULL, &st);
    assert_int_equal(st.requests, 2);
    assert_int_equal(st.batches, 1);
    assert_int_equal(st.envelopes, 1);
    pbft_msg_unref(q);

    pbft_msg_unref(p);
    pbft_msg_unref(pp);
    assert_int_equal(known->refs, 1);
    pbft_msg_unref(known);
    pbft_msg_unref(other);
}

/* ------------------------------------------------------------ rejections */

static void test_batch_digest_mismatch_rejected(void **state)
{
    (void)state;
    pbft_msg *reqs[2] = {mk_request(1, NULL), mk_request(2, NULL)};
    uint8_t wrong[FB_DIGEST_LEN];
    pbft_batch_digest(1, reqs, 1, NULL, wrong); /* digest of another batch */
    /* make_batch trusts the digest; the receiver does not. */
    pbft_msg *pp = mk_pp(0, 1, 0, reqs, 2, 1, wrong);
    char err[256] = "";
    pbft_msg *out = NULL;
    assert_int_equal(pbft_msg_parse(pp->raw, pp->raw_len, NULL, NULL, &out, err, sizeof err),
                     FB_EPROTO);
    assert_null(out);
    assert_non_null(strstr(err, "does not match its batch"));

    /* Same requests in another order: another digest. */
    pbft_msg *swapped[2] = {reqs[1], reqs[0]};
    uint8_t d[FB_DIGEST_LEN];
    pbft_batch_digest(1, swapped, 2, NULL, d);
    pbft_msg *pp2 = mk_pp(0, 1, 0, reqs, 2, 1, d);
    assert_int_equal(pbft_msg_parse(pp2->raw, pp2->raw_len, NULL, NULL, &out, err, sizeof err),
                     FB_EPROTO);

    /* pbft_msg_make (no requests given) checks the digest itself. */
    Fedbft__PrePrepare p = FEDBFT__PRE_PREPARE__INIT;
    p.view = 0;
    p.seq = 1;
    p.digest = (ProtobufCBinaryData){FB_DIGEST_LEN, wrong};
    pbft_signer s = signer_of(0);
    assert_int_equal(pbft_msg_make(FEDBFT__MSG_TYPE__MSG_PRE_PREPARE, 0, &p.base, &s, NULL, &out),
                     FB_EPROTO);
    assert_null(out);

    pbft_msg_unref(pp);
    pbft_msg_unref(pp2);
    pbft_msg_unref(reqs[0]);
    pbft_msg_unref(reqs[1]);
}

/* Seal a payload as (type, sender) with sender's key, bypassing pbft_msg_make. */
static int parse_sealed(int type, uint32_t sender, const fb_identity *key,
                        const ProtobufCMessage *payload, char *err, size_t errlen)
{
    uint8_t buf[1024];
    size_t plen = protobuf_c_message_get_packed_size(payload);
    assert_true(plen <= sizeof buf);
    protobuf_c_message_pack(payload, buf);
    uint8_t *wire = NULL;
    size_t wlen = 0;
    assert_int_equal(fb_env_seal(type, sender, buf, plen, key, &wire, &wlen), 0);
    pbft_msg *out = NULL;
    int rc = pbft_msg_parse(wire, wlen, NULL, NULL, &out, err, errlen);
    free(wire);
    if (rc == 0)
        pbft_msg_unref(out);
    return rc;
}

static void test_sender_mismatch_rejected(void **state)
{
    (void)state;
    uint8_t d[FB_DIGEST_LEN] = {1};
    char err[256];
    pbft_signer s1 = signer_of(1);
    pbft_msg *out = NULL;

    Fedbft__Prepare p = FEDBFT__PREPARE__INIT;
    p.view = 1;
    p.seq = 2;
    p.digest = (ProtobufCBinaryData){FB_DIGEST_LEN, d};
    p.replica = 2; /* claims replica 2, signed as 1 */
    assert_int_equal(
        parse_sealed(FEDBFT__MSG_TYPE__MSG_PREPARE, 1, &replica_key[1], &p.base, err, sizeof err),
        FB_EPROTO);
    assert_non_null(strstr(err, "names sender 2 but is signed by 1"));
    assert_int_equal(pbft_msg_make(FEDBFT__MSG_TYPE__MSG_PREPARE, 1, &p.base, &s1, NULL, &out),
                     FB_EPROTO);
    assert_null(out);

    Fedbft__Commit c = FEDBFT__COMMIT__INIT;
    c.digest = (ProtobufCBinaryData){FB_DIGEST_LEN, d};
    c.replica = 3;
    assert_int_equal(
        parse_sealed(FEDBFT__MSG_TYPE__MSG_COMMIT, 1, &replica_key[1], &c.base, err, sizeof err),
        FB_EPROTO);

    Fedbft__Checkpoint cp = FEDBFT__CHECKPOINT__INIT;
    cp.state_digest = (ProtobufCBinaryData){FB_DIGEST_LEN, d};
    cp.replica = 0;
    assert_int_equal(parse_sealed(FEDBFT__MSG_TYPE__MSG_CHECKPOINT, 1, &replica_key[1], &cp.base,
                                  err, sizeof err),
                     FB_EPROTO);

    Fedbft__ViewChange v = FEDBFT__VIEW_CHANGE__INIT;
    v.new_view = 1;
    v.replica = 3;
    assert_int_equal(parse_sealed(FEDBFT__MSG_TYPE__MSG_VIEW_CHANGE, 1, &replica_key[1], &v.base,
                                  err, sizeof err),
                     FB_EPROTO);

    Fedbft__Operation op = FEDBFT__OPERATION__INIT;
    Fedbft__Request r = FEDBFT__REQUEST__INIT;
    r.client = CLIENT + 1;
    r.op = &op;
    assert_int_equal(
        parse_sealed(FEDBFT__MSG_TYPE__MSG_REQUEST, CLIENT, &client_key, &r.base, err, sizeof err),
        FB_EPROTO);
    /* The matching sender parses. */
    r.client = CLIENT;
    assert_int_equal(
        parse_sealed(FEDBFT__MSG_TYPE__MSG_REQUEST, CLIENT, &client_key, &r.base, err, sizeof err),
        0);
}

static void test_malformed_rejected(void **state)
{
    (void)state;
    char err[256];
    pbft_msg *out = NULL;
    const uint8_t garbage[] = {0xff, 0xff, 0xff, 0xff, 0x0f, 0x01, 0x02};
    assert_true(pbft_msg_parse(garbage, sizeof garbage, NULL, NULL, &out, err, sizeof err) < 0);
    assert_true(pbft_msg_parse(garbage, 0, NULL, NULL, &out, err, sizeof err) < 0);

    /* Truncations of a valid PRE-PREPARE. */
    pbft_msg *req = mk_request(1, NULL);
    pbft_msg *pp = mk_pp(0, 1, 0, &req, 1, 0, NULL);
    for (size_t cut = 1; cut < pp->raw_len; cut += 7)
        assert_true(pbft_msg_parse(pp->raw, pp->raw_len - cut, NULL, NULL, &out, err, sizeof err) <
                    0);
    assert_null(out);

    /* A valid envelope of a non-consensus type (REPLY). */
    Fedbft__Reply rep = FEDBFT__REPLY__INIT;
    assert_int_equal(
        parse_sealed(FEDBFT__MSG_TYPE__MSG_REPLY, 1, &replica_key[1], &rep.base, err, sizeof err),
        FB_EPROTO);

    /* A payload that does not decode as its type. */
    uint8_t *wire = NULL;
    size_t wlen = 0;
    assert_int_equal(fb_env_seal(FEDBFT__MSG_TYPE__MSG_PREPARE, 1, garbage, sizeof garbage,
                                 &replica_key[1], &wire, &wlen),
                     0);
    assert_int_equal(pbft_msg_parse(wire, wlen, NULL, NULL, &out, err, sizeof err), FB_EPROTO);
    free(wire);

    /* A digest of the wrong length. */
    uint8_t d[FB_DIGEST_LEN] = {0};
    Fedbft__Prepare p = FEDBFT__PREPARE__INIT;
    p.digest = (ProtobufCBinaryData){5, d};
    p.replica = 1;
    assert_int_equal(
        parse_sealed(FEDBFT__MSG_TYPE__MSG_PREPARE, 1, &replica_key[1], &p.base, err, sizeof err),
        FB_EPROTO);

    /* A request without an operation. */
    Fedbft__Request r = FEDBFT__REQUEST__INIT;
    r.client = CLIENT;
    assert_int_equal(
        parse_sealed(FEDBFT__MSG_TYPE__MSG_REQUEST, CLIENT, &client_key, &r.base, err, sizeof err),
        FB_EPROTO);

    /* A PRE-PREPARE whose batch holds something other than a REQUEST. */
    pbft_msg *prep = mk_vote(FEDBFT__MSG_TYPE__MSG_PREPARE, 0, 1, d, 2);
    Fedbft__Envelope *envs[1] = {prep->env};
    Fedbft__PrePrepare bad = FEDBFT__PRE_PREPARE__INIT;
    bad.digest = (ProtobufCBinaryData){FB_DIGEST_LEN, d};
    bad.n_requests = 1;
    bad.requests = envs;
    assert_int_equal(parse_sealed(FEDBFT__MSG_TYPE__MSG_PRE_PREPARE, 0, &replica_key[0], &bad.base,
                                  err, sizeof err),
                     FB_EPROTO);
    assert_non_null(strstr(err, "not a REQUEST"));

    /* An unsupported version. */
    Fedbft__Envelope *env = fedbft__envelope__unpack(NULL, req->raw_len, req->raw);
    assert_non_null(env);
    env->version = FB_PROTOCOL_VERSION + 1;
    uint8_t buf[1024];
    size_t n = fedbft__envelope__pack(env, buf);
    fedbft__envelope__free_unpacked(env, NULL);
    assert_int_equal(pbft_msg_parse(buf, n, NULL, NULL, &out, err, sizeof err), FB_EVERSION);
    assert_null(out);

    pbft_msg_unref(prep);
    pbft_msg_unref(pp);
    pbft_msg_unref(req);
}

/* ------------------------------------------------------------ signatures */

static const fb_identity *key_of(const pbft_sigref *s)
{
    return s->is_client ? &client_key : &replica_key[s->signer];
}

static void assert_all_verify(const pbft_sigref *sigs, int n)
{
    for (int i = 0; i < n; i++) {
        assert_true(sigs[i].is_client ? sigs[i].signer == CLIENT : sigs[i].signer < NREPLICAS);
        assert_int_equal(fb_sig_verify(key_of(&sigs[i])->pk, sigs[i].digest, sigs[i].sig), 0);
    }
}

static void test_view_change_signatures(void **state)
{
    (void)state;
    vc_fixture f;
    vc_fixture_make(&f, 2, 2);
    pbft_sigref sigs[16];
    int n = pbft_msg_signatures(f.vc, sigs, 16);
    /* The VC, 3 checkpoints, the pre-prepare, its request, 2 prepares. */
    assert_int_equal(n, 8);
    assert_all_verify(sigs, n);
    const pbft_msg *expect[8] = {f.vc, f.proof[0], f.proof[1], f.proof[2],
                                 f.pp, f.req,      f.prep[0],  f.prep[1]};
    for (int i = 0; i < 8; i++) {
        assert_int_equal(sigs[i].signer, expect[i]->sender);
        assert_int_equal(sigs[i].is_client, expect[i] == f.req);
        assert_memory_equal(sigs[i].digest, expect[i]->digest, FB_DIGEST_LEN);
        assert_memory_equal(sigs[i].sig, expect[i]->env->signature.data, FB_SIG_LEN);
    }
    /* A short buffer: the count is still the total, only cap are filled. */
    pbft_sigref few[3];
    assert_int_equal(pbft_msg_signatures(f.vc, few, 3), 8);
    assert_int_equal(few[2].signer, f.proof[1]->sender);
    assert_int_equal(pbft_msg_signatures(f.vc, NULL, 0), 8);

    /* A PRE-PREPARE: its own and its request's. */
    n = pbft_msg_signatures(f.pp, sigs, 16);
    assert_int_equal(n, 2);
    assert_true(sigs[1].is_client);
    assert_all_verify(sigs, n);
    vc_fixture_free(&f);
}

static void test_new_view_signatures(void **state)
{
    (void)state;
    vc_fixture f[3];
    pbft_msg *vcs[3];
    for (uint32_t i = 0; i < 3; i++) {
        vc_fixture_make(&f[i], i, 2);
        vcs[i] = f[i].vc;
    }
    pbft_msg *reqs[2] = {mk_request(9000, NULL), mk_request(9001, NULL)};
    pbft_msg *pps[2] = {mk_pp(2, 17, 2, reqs, 2, 1, NULL), mk_pp(2, 18, 2, NULL, 0, 0, NULL)};
    pbft_msg *nv = mk_new_view(2, 2, vcs, 3, pps, 2);
    pbft_sigref sigs[64];
    int n = pbft_msg_signatures(nv, sigs, 64);
    /* NV + 3 x 8 (each VC) + (pp + 2 requests) + (null pp). */
    assert_int_equal(n, 1 + 24 + 3 + 1);
    assert_all_verify(sigs, n);
    assert_int_equal(sigs[0].signer, 2);
    assert_memory_equal(sigs[0].digest, nv->digest, FB_DIGEST_LEN);
    for (int v = 0; v < 3; v++) {
        assert_int_equal(sigs[1 + 8 * v].signer, (uint32_t)v);
        assert_memory_equal(sigs[1 + 8 * v].digest, f[v].vc->digest, FB_DIGEST_LEN);
    }
    assert_memory_equal(sigs[25].digest, pps[0]->digest, FB_DIGEST_LEN);
    assert_true(sigs[26].is_client && sigs[27].is_client);
    assert_memory_equal(sigs[26].digest, reqs[0]->digest, FB_DIGEST_LEN);
    assert_memory_equal(sigs[28].digest, pps[1]->digest, FB_DIGEST_LEN);
    int clients = 0;
    for (int i = 0; i < n; i++)
        clients += sigs[i].is_client;
    assert_int_equal(clients, 3 + 2);

    pbft_msg_unref(nv);
    for (int i = 0; i < 2; i++) {
        pbft_msg_unref(pps[i]);
        pbft_msg_unref(reqs[i]);
    }
    for (int i = 0; i < 3; i++)
        vc_fixture_free(&f[i]);
}

static void test_signatures_reject_wrong_nested_types(void **state)
{
    (void)state;
    uint8_t d[FB_DIGEST_LEN] = {3};
    pbft_msg *prep = mk_vote(FEDBFT__MSG_TYPE__MSG_PREPARE, 0, 1, d, 2);
    pbft_msg *cp = mk_checkpoint(16, 1, 1);
    pbft_signer s = signer_of(1);
    pbft_sigref sigs[16];

    /* A PREPARE where a CHECKPOINT belongs in the proof. */
    Fedbft__Envelope *proof[1] = {prep->env};
    Fedbft__ViewChange v = FEDBFT__VIEW_CHANGE__INIT;
    v.new_view = 1;
    v.stable_seq = 16;
    v.n_checkpoint_proof = 1;
    v.checkpoint_proof = proof;
    v.replica = 1;
    pbft_msg *vc = NULL;
    assert_int_equal(pbft_msg_make(FEDBFT__MSG_TYPE__MSG_VIEW_CHANGE, 1, &v.base, &s, NULL, &vc),
                     0);
    assert_int_equal(pbft_msg_signatures(vc, sigs, 16), FB_EPROTO);
    pbft_msg_unref(vc);

    /* A CHECKPOINT where a certificate's PRE-PREPARE belongs. */
    Fedbft__PreparedCert cert = FEDBFT__PREPARED_CERT__INIT;
    cert.pre_prepare = cp->env;
    Fedbft__PreparedCert *certs[1] = {&cert};
    v.n_checkpoint_proof = 0;
    v.n_prepared = 1;
    v.prepared = certs;
    assert_int_equal(pbft_msg_make(FEDBFT__MSG_TYPE__MSG_VIEW_CHANGE, 1, &v.base, &s, NULL, &vc),
                     0);
    assert_int_equal(pbft_msg_signatures(vc, sigs, 16), FB_EPROTO);
    pbft_msg_unref(vc);

    /* A certificate without its PRE-PREPARE. */
    cert.pre_prepare = NULL;
    assert_int_equal(pbft_msg_make(FEDBFT__MSG_TYPE__MSG_VIEW_CHANGE, 1, &v.base, &s, NULL, &vc),
                     0);
    assert_int_equal(pbft_msg_signatures(vc, sigs, 16), FB_EPROTO);
    pbft_msg_unref(vc);

    /* A CHECKPOINT where a VIEW-CHANGE belongs in a NEW-VIEW, and a PREPARE
     * where an O pre-prepare belongs. */
    pbft_msg *nv = mk_new_view(1, 1, &cp, 1, NULL, 0);
    assert_int_equal(pbft_msg_signatures(nv, sigs, 16), FB_EPROTO);
    pbft_msg_unref(nv);
    nv = mk_new_view(1, 1, NULL, 0, &prep, 1);
    assert_int_equal(pbft_msg_signatures(nv, sigs, 16), FB_EPROTO);
    pbft_msg_unref(nv);

    pbft_msg_unref(prep);
    pbft_msg_unref(cp);
}

/* ------------------------------------------------------------ refcounting */

static void test_refcounting(void **state)
{
    (void)state;
    pbft_msg *req = mk_request(1, NULL);
    assert_ptr_equal(pbft_msg_ref(req), req);
    assert_int_equal(req->refs, 2);
    pbft_msg_unref(req);
    assert_int_equal(req->refs, 1);

    /* A parsed PRE-PREPARE holds its requests; they outlive it only if
     * someone else holds them. */
    pbft_msg *pp = mk_pp(0, 1, 0, &req, 1, 0, NULL);
    pbft_msg *copy = reparse(pp, NULL, NULL);
    pbft_msg *inner = pbft_msg_ref(copy->reqs[0]);
    pbft_msg_unref(copy);
    assert_int_equal(inner->refs, 1);
    assert_int_equal(inner->u.request->timestamp, 1);
    pbft_msg_unref(inner);

    pbft_msg_unref(req); /* pp still holds it */
    assert_int_equal(pp->reqs[0]->refs, 1);
    assert_int_equal(pp->reqs[0]->u.request->timestamp, 1);
    pbft_msg_unref(pp);

    assert_null(pbft_msg_ref(NULL));
    pbft_msg_unref(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request_round_trip),
        cmocka_unit_test(test_pre_prepare_round_trip),
        cmocka_unit_test(test_empty_pre_prepare_round_trip),
        cmocka_unit_test(test_vote_round_trips),
        cmocka_unit_test(test_checkpoint_round_trip),
        cmocka_unit_test(test_view_change_round_trip),
        cmocka_unit_test(test_new_view_round_trip),
        cmocka_unit_test(test_known_request_not_redigested),
        cmocka_unit_test(test_batch_digest_mismatch_rejected),
        cmocka_unit_test(test_sender_mismatch_rejected),
        cmocka_unit_test(test_malformed_rejected),
        cmocka_unit_test(test_view_change_signatures),
        cmocka_unit_test(test_new_view_signatures),
        cmocka_unit_test(test_signatures_reject_wrong_nested_types),
        cmocka_unit_test(test_refcounting),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
