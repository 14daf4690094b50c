/* test_pbft_vc.c - view-change proofs (PBFT section 4.4): VIEW-CHANGE checks,
 * the O set, and NEW-VIEW building and checking, over hand-built
 * certificates signed with real keys. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "fb_error.h"
#include "pbft.h"
#include "pbft_vc.h"
#include "sig.h"

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAXKEYS 8
#define CLIENT 100
#define MAXCERTS 24

static fb_identity replica_key[MAXKEYS];
static fb_identity client_key;

/* n = 4: f = 1, quorum 3, L = 16.  Tests may switch to n = 7 (quorum 5). */
static const pbft_params P4 = {4, 3, 16};
static const pbft_params P7 = {7, 5, 16};
static pbft_params P;

static void sign_cb(void *arg, const uint8_t digest[FB_DIGEST_LEN], uint8_t sig[FB_SIG_LEN])
{
    fb_sig_sign(arg, digest, sig);
}

static pbft_signer signer_of(uint32_t id)
{
    return (pbft_signer){sign_cb, id == CLIENT ? &client_key : &replica_key[id]};
}

static int group_setup(void **state)
{
    (void)state;
    assert_int_equal(fb_crypto_init(), 0);
    for (uint8_t i = 0; i < MAXKEYS; i++) {
        uint8_t seed[FB_SEED_LEN] = {0x10 + i};
        assert_int_equal(fb_key_from_seed(seed, &replica_key[i]), 0);
    }
    uint8_t seed[FB_SEED_LEN] = {0xc1};
    assert_int_equal(fb_key_from_seed(seed, &client_key), 0);
    return 0;
}

static int use_n4(void **state)
{
    (void)state;
    P = P4;
    return 0;
}

/* ------------------------------------------------------------ messages */

/* Batch b: one request with timestamp b, nondet 10 b.  Signing is
 * deterministic, so rebuilding batch b gives the same bytes and digest. */
static pbft_msg *req_new(uint64_t b)
{
    char key[32];
    int klen = snprintf(key, sizeof key, "k%llu", (unsigned long long)b);
    Fedbft__Operation op = FEDBFT__OPERATION__INIT;
    op.kind = FEDBFT__OPERATION__KIND__OP_PUT;
    op.key = (ProtobufCBinaryData){(size_t)klen, (uint8_t *)key};
    op.value = (ProtobufCBinaryData){1, (uint8_t *)"v"};
    Fedbft__Request r = FEDBFT__REQUEST__INIT;
    r.client = CLIENT;
    r.timestamp = b;
    r.op = &op;
    pbft_signer s = signer_of(CLIENT);
    pbft_msg *m = NULL;
    assert_int_equal(pbft_msg_make(FEDBFT__MSG_TYPE__MSG_REQUEST, CLIENT, &r.base, &s, NULL, &m),
                     0);
    return m;
}

static void batch_digest(uint64_t b, uint8_t out[FB_DIGEST_LEN])
{
    if (b == 0) {
        pbft_batch_digest(0, NULL, 0, NULL, out);
        return;
    }
    pbft_msg *r = req_new(b);
    pbft_batch_digest(10 * b, &r, 1, NULL, out);
    pbft_msg_unref(r);
}

/* A PRE-PREPARE of batch b (0 = null batch) with the given sender; digest
 * (if not NULL) overrides the true one. */
static pbft_msg *pp_new(uint64_t view, uint64_t seq, uint32_t sender, uint64_t b,
                        const uint8_t *digest)
{
    pbft_msg *r = b ? req_new(b) : NULL;
    uint8_t d[FB_DIGEST_LEN];
    batch_digest(b, d);
    if (digest)
        memcpy(d, digest, FB_DIGEST_LEN);
    Fedbft__Envelope *envs[1] = {r ? r->env : NULL};
    Fedbft__PrePrepare pp = FEDBFT__PRE_PREPARE__INIT;
    pp.view = view;
    pp.seq = seq;
    pp.digest = (ProtobufCBinaryData){FB_DIGEST_LEN, d};
    pp.n_requests = r ? 1 : 0;
    pp.requests = envs;
    pp.nondet = 10 * b;
    pbft_signer s = signer_of(sender);
    pbft_msg *m = NULL;
    assert_int_equal(pbft_msg_make_batch(FEDBFT__MSG_TYPE__MSG_PRE_PREPARE, sender, &pp.base, &r,
                                         r ? 1 : 0, &s, NULL, &m),
                     0);
    pbft_msg_unref(r);
    return m;
}

static pbft_msg *prepare_new(uint64_t view, uint64_t seq, const uint8_t *digest, uint32_t replica)
{
    Fedbft__Prepare p = FEDBFT__PREPARE__INIT;
    p.view = view;
    p.seq = seq;
    p.digest = (ProtobufCBinaryData){FB_DIGEST_LEN, (uint8_t *)digest};
    p.replica = replica;
    pbft_signer s = signer_of(replica);
    pbft_msg *m = NULL;
    assert_int_equal(pbft_msg_make(FEDBFT__MSG_TYPE__MSG_PREPARE, replica, &p.base, &s, NULL, &m),
                     0);
    return m;
}

static void state_digest(uint64_t seq, uint8_t fill, uint8_t out[FB_DIGEST_LEN])
{
    memset(out, fill, FB_DIGEST_LEN);
    out[0] = (uint8_t)seq;
}

static pbft_msg *checkpoint_new(uint64_t seq, uint8_t fill, uint32_t replica)
{
    uint8_t d[FB_DIGEST_LEN];
    state_digest(seq, fill, d);
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

/* ------------------------------------------------------------ VIEW-CHANGE builder */

typedef struct cert_b {
    pbft_msg *pp;
    pbft_msg *prep[MAXKEYS + 2];
    size_t nprep;
    bool digest_only;
} cert_b;

typedef struct vc_b {
    uint32_t sender, replica;
    uint64_t new_view, stable_seq;
    pbft_msg *proof[MAXKEYS + 2];
    size_t nproof;
    cert_b certs[MAXCERTS];
    size_t ncerts;
} vc_b;

#define CKPT_FILL 0xc0

/* A VIEW-CHANGE from sender; a stable_seq above 0 gets a proof from the
 * first quorum replicas. */
static void vcb_init(vc_b *b, uint32_t sender, uint64_t new_view, uint64_t stable_seq)
{
    memset(b, 0, sizeof *b);
    b->sender = b->replica = sender;
    b->new_view = new_view;
    b->stable_seq = stable_seq;
    for (uint32_t i = 0; stable_seq > 0 && i < P.quorum; i++)
        b->proof[b->nproof++] = checkpoint_new(stable_seq, CKPT_FILL, i);
}

static void cert_add_prepare(cert_b *c, uint32_t replica)
{
    const Fedbft__PrePrepare *pp = c->pp->u.pre_prepare;
    c->prep[c->nprep++] = prepare_new(pp->view, pp->seq, pp->digest.data, replica);
}

/* A certificate for batch b at (view, seq): the primary's PRE-PREPARE and
 * quorum - 1 PREPAREs from the backups with the lowest ids. */
static cert_b *vcb_cert(vc_b *b, uint64_t view, uint64_t seq, uint64_t batch)
{
    assert_true(b->ncerts < MAXCERTS);
    cert_b *c = &b->certs[b->ncerts++];
    uint32_t primary = pbft_primary(view, P.n);
    c->pp = pp_new(view, seq, primary, batch, NULL);
    for (uint32_t r = 0; c->nprep + 1 < P.quorum; r++)
        if (r != primary)
            cert_add_prepare(c, r);
    return c;
}

static void vcb_release(vc_b *b)
{
    for (size_t i = 0; i < b->nproof; i++)
        pbft_msg_unref(b->proof[i]);
    for (size_t i = 0; i < b->ncerts; i++) {
        pbft_msg_unref(b->certs[i].pp);
        for (size_t j = 0; j < b->certs[i].nprep; j++)
            pbft_msg_unref(b->certs[i].prep[j]);
    }
    memset(b, 0, sizeof *b);
}

static pbft_msg *vcb_build(vc_b *b)
{
    Fedbft__Envelope *proof[MAXKEYS + 2];
    Fedbft__Envelope *preps[MAXCERTS][MAXKEYS + 2];
    Fedbft__PreparedCert certs[MAXCERTS], *certp[MAXCERTS];
    for (size_t i = 0; i < b->nproof; i++)
        proof[i] = b->proof[i]->env;
    for (size_t i = 0; i < b->ncerts; i++) {
        fedbft__prepared_cert__init(&certs[i]);
        certs[i].pre_prepare = b->certs[i].pp ? b->certs[i].pp->env : NULL;
        certs[i].digest_only = b->certs[i].digest_only;
        for (size_t j = 0; j < b->certs[i].nprep; j++)
            preps[i][j] = b->certs[i].prep[j]->env;
        certs[i].n_prepares = b->certs[i].nprep;
        certs[i].prepares = preps[i];
        certp[i] = &certs[i];
    }
    Fedbft__ViewChange v = FEDBFT__VIEW_CHANGE__INIT;
    v.new_view = b->new_view;
    v.stable_seq = b->stable_seq;
    v.n_checkpoint_proof = b->nproof;
    v.checkpoint_proof = proof;
    v.n_prepared = b->ncerts;
    v.prepared = certp;
    v.replica = b->sender;
    pbft_signer s = signer_of(b->sender);
    pbft_msg *m = NULL;
    assert_int_equal(
        pbft_msg_make(FEDBFT__MSG_TYPE__MSG_VIEW_CHANGE, b->sender, &v.base, &s, NULL, &m), 0);
    vcb_release(b);
    return m;
}

/* ------------------------------------------------------------ expectations */

static void expect_vc_ok(pbft_msg *vc)
{
    char why[512] = "";
    int rc = pbft_vc_check(&P, vc, NULL, why, sizeof why);
    if (rc)
        fail_msg("view-change rejected: %s", why);
    pbft_msg_unref(vc);
}

static void expect_vc_reject(pbft_msg *vc, const char *needle)
{
    char why[512] = "";
    int rc = pbft_vc_check(&P, vc, NULL, why, sizeof why);
    if (rc != FB_EPROTO)
        fail_msg("wanted FB_EPROTO (%s), got %d: %s", needle, rc, why);
    if (!strstr(why, needle))
        fail_msg("reason \"%s\" lacks \"%s\"", why, needle);
    pbft_msg_unref(vc);
}

/* ------------------------------------------------------------ VIEW-CHANGE checks */

static void test_vc_valid(void **state)
{
    (void)state;
    vc_b b;
    /* Genesis: no proof, no certificates. */
    vcb_init(&b, 2, 1, 0);
    pbft_msg *vc = vcb_build(&b);
    uint64_t seq = 99;
    uint8_t d[FB_DIGEST_LEN], zero[FB_DIGEST_LEN] = {0};
    pbft_vc_stable(vc, &seq, d);
    assert_int_equal(seq, 0);
    assert_memory_equal(d, zero, FB_DIGEST_LEN);
    expect_vc_ok(vc);

    /* A proof at 32 and certificates from several views, edges of the window. */
    vcb_init(&b, 3, 6, 32);
    vcb_cert(&b, 5, 33, 1);
    vcb_cert(&b, 0, 40, 2);
    vcb_cert(&b, 4, 48, 3); /* stable_seq + L */
    vc = vcb_build(&b);
    pbft_vc_stable(vc, &seq, d);
    assert_int_equal(seq, 32);
    uint8_t want[FB_DIGEST_LEN];
    state_digest(32, CKPT_FILL, want);
    assert_memory_equal(d, want, FB_DIGEST_LEN);
    pbft_digest_stats st = {0};
    char why[256] = "";
    assert_int_equal(pbft_vc_check(&P, vc, &st, why, sizeof why), 0);
    /* 3 checkpoints + 3 x (pp + 2 prepares) envelopes, 3 requests, 3 batches. */
    assert_int_equal(st.envelopes, 3 + 9);
    assert_int_equal(st.requests, 3);
    assert_int_equal(st.batches, 3);
    pbft_msg_unref(vc);

    /* All n checkpoints and all n - 1 backups' prepares: more than needed is fine. */
    vcb_init(&b, 0, 2, 16);
    b.proof[b.nproof++] = checkpoint_new(16, CKPT_FILL, 3);
    cert_b *c = vcb_cert(&b, 1, 17, 4);
    cert_add_prepare(c, 3);
    expect_vc_ok(vcb_build(&b));

    /* A PREPARE from the certificate's primary is tolerated (not counted). */
    vcb_init(&b, 0, 2, 0);
    c = vcb_cert(&b, 1, 1, 5);
    cert_add_prepare(c, 1);
    expect_vc_ok(vcb_build(&b));
}

static void test_vc_proof_rejections(void **state)
{
    (void)state;
    vc_b b;
    /* Below quorum. */
    vcb_init(&b, 1, 2, 16);
    pbft_msg_unref(b.proof[--b.nproof]);
    expect_vc_reject(vcb_build(&b), "has 2 checkpoints, needs 3");

    /* Mixed digests. */
    vcb_init(&b, 1, 2, 16);
    pbft_msg_unref(b.proof[2]);
    b.proof[2] = checkpoint_new(16, 0x77, 2);
    expect_vc_reject(vcb_build(&b), "mixes state digests");

    /* Duplicate senders (three messages, two distinct replicas). */
    vcb_init(&b, 1, 2, 16);
    pbft_msg_unref(b.proof[2]);
    b.proof[2] = pbft_msg_ref(b.proof[1]);
    expect_vc_reject(vcb_build(&b), "two checkpoints from replica 1");

    /* Duplicate senders even with a quorum of distinct ones besides. */
    vcb_init(&b, 1, 2, 16);
    b.proof[b.nproof++] = checkpoint_new(16, CKPT_FILL, 0);
    expect_vc_reject(vcb_build(&b), "two checkpoints from replica 0");

    /* A checkpoint for another seq. */
    vcb_init(&b, 1, 2, 16);
    pbft_msg_unref(b.proof[0]);
    b.proof[0] = checkpoint_new(8, CKPT_FILL, 0);
    expect_vc_reject(vcb_build(&b), "entry 0 is for seq 8, not stable seq 16");

    /* A checkpoint from outside the cluster. */
    vcb_init(&b, 1, 2, 16);
    pbft_msg_unref(b.proof[0]);
    b.proof[0] = checkpoint_new(16, CKPT_FILL, 5);
    expect_vc_reject(vcb_build(&b), "is from 5, not a replica");

    /* Something other than a CHECKPOINT in the proof. */
    vcb_init(&b, 1, 2, 16);
    uint8_t d[FB_DIGEST_LEN];
    state_digest(16, CKPT_FILL, d);
    pbft_msg_unref(b.proof[0]);
    b.proof[0] = prepare_new(1, 16, d, 0);
    expect_vc_reject(vcb_build(&b), "MSG_PREPARE envelope where MSG_CHECKPOINT belongs");

    /* More entries than replicas. */
    vcb_init(&b, 1, 2, 16);
    for (uint32_t i = 0; i < 2; i++)
        b.proof[b.nproof++] = checkpoint_new(16, CKPT_FILL, i);
    expect_vc_reject(vcb_build(&b), "has 5 checkpoints, needs 3 to 4");

    /* No proof for a non-genesis checkpoint. */
    vcb_init(&b, 1, 2, 16);
    for (size_t i = 0; i < b.nproof; i++)
        pbft_msg_unref(b.proof[i]);
    b.nproof = 0;
    expect_vc_reject(vcb_build(&b), "has 0 checkpoints");

    /* Genesis carries no proof. */
    vcb_init(&b, 1, 2, 0);
    for (uint32_t i = 0; i < 3; i++)
        b.proof[b.nproof++] = checkpoint_new(0, CKPT_FILL, i);
    expect_vc_reject(vcb_build(&b), "genesis");
}

static void test_vc_cert_prepare_rejections(void **state)
{
    (void)state;
    vc_b b;
    cert_b *c;
    /* Too few prepares. */
    vcb_init(&b, 2, 3, 0);
    c = vcb_cert(&b, 1, 7, 1);
    pbft_msg_unref(c->prep[--c->nprep]);
    expect_vc_reject(vcb_build(&b), "certificate for seq 7 has 1 prepares from backups, needs 2");

    /* The primary's PREPARE does not count towards the quorum. */
    vcb_init(&b, 2, 3, 0);
    c = vcb_cert(&b, 1, 7, 1); /* primary 1; prepares from 0 and 2 */
    pbft_msg_unref(c->prep[1]);
    c->prep[1] = prepare_new(1, 7, c->pp->u.pre_prepare->digest.data, 1);
    expect_vc_reject(vcb_build(&b), "has 1 prepares from backups, needs 2");

    /* Two prepares from one backup count once (and are rejected). */
    vcb_init(&b, 2, 3, 0);
    c = vcb_cert(&b, 1, 7, 1);
    pbft_msg_unref(c->prep[1]);
    c->prep[1] = pbft_msg_ref(c->prep[0]);
    expect_vc_reject(vcb_build(&b), "two prepares from replica 0");

    /* A prepare for another digest, view or seq. */
    uint8_t other[FB_DIGEST_LEN];
    batch_digest(2, other);
    vcb_init(&b, 2, 3, 0);
    c = vcb_cert(&b, 1, 7, 1);
    pbft_msg_unref(c->prep[1]);
    c->prep[1] = prepare_new(1, 7, other, 2);
    expect_vc_reject(vcb_build(&b), "prepare from 2 is for view 1, seq 7 with another digest");

    vcb_init(&b, 2, 3, 0);
    c = vcb_cert(&b, 1, 7, 1);
    pbft_msg_unref(c->prep[0]);
    c->prep[0] = prepare_new(0, 7, c->pp->u.pre_prepare->digest.data, 0);
    expect_vc_reject(vcb_build(&b), "prepare from 0 is for view 0, seq 7");

    vcb_init(&b, 2, 3, 0);
    c = vcb_cert(&b, 1, 7, 1);
    pbft_msg_unref(c->prep[0]);
    c->prep[0] = prepare_new(1, 8, c->pp->u.pre_prepare->digest.data, 0);
    expect_vc_reject(vcb_build(&b), "prepare from 0 is for view 1, seq 8");

    /* A prepare from outside the cluster. */
    vcb_init(&b, 2, 3, 0);
    c = vcb_cert(&b, 1, 7, 1);
    cert_add_prepare(c, 6);
    expect_vc_reject(vcb_build(&b), "prepare from 6 is not from a replica");

    /* Something other than a PREPARE among the prepares. */
    vcb_init(&b, 2, 3, 0);
    c = vcb_cert(&b, 1, 7, 1);
    pbft_msg_unref(c->prep[0]);
    c->prep[0] = checkpoint_new(7, 1, 0);
    expect_vc_reject(vcb_build(&b), "MSG_CHECKPOINT envelope where MSG_PREPARE belongs");

    /* More prepares than replicas. */
    vcb_init(&b, 2, 3, 0);
    c = vcb_cert(&b, 1, 7, 1);
    for (int i = 0; i < 3; i++)
        cert_add_prepare(c, 3);
    expect_vc_reject(vcb_build(&b), "has 5 prepares, more than n = 4");
}

static void test_vc_cert_rejections(void **state)
{
    (void)state;
    vc_b b;
    cert_b *c;
    /* A PRE-PREPARE not from the primary of its view. */
    vcb_init(&b, 2, 3, 0);
    c = vcb_cert(&b, 1, 7, 1);
    pbft_msg_unref(c->pp);
    c->pp = pp_new(1, 7, 2, 1, NULL);
    expect_vc_reject(vcb_build(&b), "pre-prepare for view 1 is from 2, not its primary 1");

    /* Certificates from the new view or later. */
    vcb_init(&b, 2, 3, 0);
    vcb_cert(&b, 3, 7, 1);
    expect_vc_reject(vcb_build(&b), "is from view 3, not before new view 3");
    vcb_init(&b, 2, 3, 0);
    vcb_cert(&b, 4, 7, 1);
    expect_vc_reject(vcb_build(&b), "is from view 4, not before new view 3");

    /* Seqs outside (stable_seq, stable_seq + L]. */
    vcb_init(&b, 2, 3, 16);
    vcb_cert(&b, 1, 16, 1);
    expect_vc_reject(vcb_build(&b), "certificate for seq 16 is outside (16, 32]");
    vcb_init(&b, 2, 3, 16);
    vcb_cert(&b, 1, 33, 1);
    expect_vc_reject(vcb_build(&b), "certificate for seq 33 is outside (16, 32]");
    vcb_init(&b, 2, 3, 16);
    vcb_cert(&b, 1, 3, 1);
    expect_vc_reject(vcb_build(&b), "certificate for seq 3 is outside");

    /* Two certificates for one seq (even from different views). */
    vcb_init(&b, 2, 3, 0);
    vcb_cert(&b, 1, 7, 1);
    vcb_cert(&b, 2, 7, 2);
    expect_vc_reject(vcb_build(&b), "two certificates for seq 7");

    /* A PRE-PREPARE whose batch does not match its digest. */
    uint8_t other[FB_DIGEST_LEN];
    batch_digest(9, other);
    vcb_init(&b, 2, 3, 0);
    c = vcb_cert(&b, 1, 7, 1);
    pbft_msg_unref(c->pp);
    c->pp = pp_new(1, 7, 1, 1, other);
    expect_vc_reject(vcb_build(&b), "digest does not match its batch");

    /* A stripped batch cannot be re-proposed. */
    vcb_init(&b, 2, 3, 0);
    c = vcb_cert(&b, 1, 7, 1);
    c->digest_only = true;
    expect_vc_reject(vcb_build(&b), "digest_only");

    /* A certificate without its PRE-PREPARE. */
    vcb_init(&b, 2, 3, 0);
    c = vcb_cert(&b, 1, 7, 1);
    pbft_msg_unref(c->pp);
    c->pp = NULL;
    expect_vc_reject(vcb_build(&b), "missing MSG_PRE_PREPARE envelope");

    /* More certificates than the log window holds. */
    P.log_window = 4;
    vcb_init(&b, 2, 3, 0);
    for (uint64_t s = 1; s <= 5; s++)
        vcb_cert(&b, 1, s, s);
    expect_vc_reject(vcb_build(&b), "5 prepared certificates, more than the log window 4");
}

static void test_vc_sender_rejections(void **state)
{
    (void)state;
    vc_b b;
    /* The replica field must name the sender. */
    vcb_init(&b, 2, 3, 0);
    pbft_msg *vc = vcb_build(&b);
    vc->u.view_change->replica = 3;
    expect_vc_reject(vc, "view-change from 2: names replica 3");

    /* The sender must be a replica. */
    vcb_init(&b, 5, 3, 0);
    expect_vc_reject(vcb_build(&b), "view-change from 5: sender is not a replica");

    /* View changes lead to view 1 or later. */
    vcb_init(&b, 2, 0, 0);
    expect_vc_reject(vcb_build(&b), "new view 0");

    /* Not a VIEW-CHANGE at all. */
    expect_vc_reject(checkpoint_new(16, 1, 2), "is not a VIEW-CHANGE");
}

/* n = 7: quorum 5, so a certificate needs 4 prepares and a proof 5 checkpoints. */
static void test_vc_n7(void **state)
{
    (void)state;
    P = P7;
    vc_b b;
    vcb_init(&b, 6, 8, 16);
    vcb_cert(&b, 7, 20, 1); /* primary 0, prepares from 1..4 */
    expect_vc_ok(vcb_build(&b));

    vcb_init(&b, 6, 8, 16);
    cert_b *c = vcb_cert(&b, 7, 20, 1);
    pbft_msg_unref(c->prep[--c->nprep]);
    expect_vc_reject(vcb_build(&b), "has 3 prepares from backups, needs 4");

    vcb_init(&b, 6, 8, 16);
    pbft_msg_unref(b.proof[--b.nproof]);
    expect_vc_reject(vcb_build(&b), "has 4 checkpoints, needs 5");
}

/* ------------------------------------------------------------ O set */

static void assert_entry(const pbft_o_set *o, uint64_t seq, uint64_t batch, uint64_t view)
{
    assert_in_range(seq, o->min_s + 1, o->max_s);
    const pbft_o_entry *e = &o->entries[seq - o->min_s - 1];
    uint8_t d[FB_DIGEST_LEN];
    batch_digest(batch, d);
    assert_int_equal(e->seq, seq);
    assert_memory_equal(e->digest, d, FB_DIGEST_LEN);
    if (batch == 0) {
        assert_true(e->null_batch);
        assert_null(e->source);
        return;
    }
    assert_false(e->null_batch);
    assert_non_null(e->source);
    assert_int_equal(e->source->u.pre_prepare->view, view);
    assert_int_equal(e->source->u.pre_prepare->seq, seq);
    assert_memory_equal(e->source->u.pre_prepare->digest.data, d, FB_DIGEST_LEN);
}

/* Scenario S (new view 5, primary 1), all from genesis:
 *   VC 0: seq 1 batch 11 in view 2, seq 3 batch 13 in view 1
 *   VC 2: seq 1 batch 21 in view 3, seq 4 batch 24 in view 0
 *   VC 3: seq 3 batch 33 in view 4
 * O: 1 -> 21 (view 3 beats 2), 2 -> null, 3 -> 33 (view 4 beats 1), 4 -> 24. */
static void scenario_s(pbft_msg *vcs[3])
{
    vc_b b;
    vcb_init(&b, 0, 5, 0);
    vcb_cert(&b, 2, 1, 11);
    vcb_cert(&b, 1, 3, 13);
    vcs[0] = vcb_build(&b);
    vcb_init(&b, 2, 5, 0);
    vcb_cert(&b, 3, 1, 21);
    vcb_cert(&b, 0, 4, 24);
    vcs[1] = vcb_build(&b);
    vcb_init(&b, 3, 5, 0);
    vcb_cert(&b, 4, 3, 33);
    vcs[2] = vcb_build(&b);
}

/* Scenario M (new view 5): checkpoints at different seqs.
 *   VC 0: stable 8; seq 9 batch 109 in view 1
 *   VC 2: stable 0; seq 3 (202) and 8 (208) at or below min_s, seq 10 batch 210 in view 3
 *   VC 3: stable 4; seq 5 (305) below min_s, seq 12 batch 312 in view 0
 * min_s = 8 (VC 0's proof), max_s = 12; O: 9 -> 109, 10 -> 210, 11 -> null, 12 -> 312. */
static void scenario_m(pbft_msg *vcs[3])
{
    vc_b b;
    vcb_init(&b, 0, 5, 8);
    vcb_cert(&b, 1, 9, 109);
    vcs[0] = vcb_build(&b);
    vcb_init(&b, 2, 5, 0);
    vcb_cert(&b, 2, 3, 203);
    vcb_cert(&b, 2, 8, 208);
    vcb_cert(&b, 3, 10, 210);
    vcs[1] = vcb_build(&b);
    vcb_init(&b, 3, 5, 4);
    vcb_cert(&b, 0, 12, 312);
    vcb_cert(&b, 0, 5, 305);
    vcs[2] = vcb_build(&b);
}

static void unref_n(pbft_msg **ms, size_t n)
{
    for (size_t i = 0; i < n; i++)
        pbft_msg_unref(ms[i]);
}

static void compute_ok(pbft_msg *const *vcs, size_t n, uint64_t view, pbft_o_set *o)
{
    char why[512] = "";
    for (size_t i = 0; i < n; i++)
        if (pbft_vc_check(&P, vcs[i], NULL, why, sizeof why))
            fail_msg("view-change %zu rejected: %s", i, why);
    int rc = pbft_vc_compute_o(&P, view, vcs, n, NULL, o, why, sizeof why);
    if (rc)
        fail_msg("compute_o: %s", why);
}

static void test_o_highest_view_wins_and_gaps(void **state)
{
    (void)state;
    pbft_msg *vcs[3];
    scenario_s(vcs);
    pbft_o_set o;
    compute_ok(vcs, 3, 5, &o);
    assert_int_equal(o.min_s, 0);
    assert_int_equal(o.max_s, 4);
    assert_int_equal(o.nentries, 4);
    uint8_t zero[FB_DIGEST_LEN] = {0};
    assert_memory_equal(o.min_s_digest, zero, FB_DIGEST_LEN);
    assert_entry(&o, 1, 21, 3);
    assert_entry(&o, 2, 0, 0);
    assert_entry(&o, 3, 33, 4);
    assert_entry(&o, 4, 24, 0);
    pbft_o_set_free(&o);
    assert_null(o.entries);

    /* V's order does not matter. */
    pbft_msg *rev[3] = {vcs[2], vcs[1], vcs[0]};
    compute_ok(rev, 3, 5, &o);
    assert_int_equal(o.max_s, 4);
    assert_entry(&o, 1, 21, 3);
    assert_entry(&o, 3, 33, 4);
    pbft_o_set_free(&o);
    unref_n(vcs, 3);
}

static void test_o_same_certificate_twice(void **state)
{
    (void)state;
    /* The same batch prepared at several replicas: one entry, one source. */
    pbft_msg *vcs[3];
    for (uint32_t i = 0; i < 3; i++) {
        vc_b b;
        vcb_init(&b, i, 2, 0);
        vcb_cert(&b, 1, 2, 7);
        vcs[i] = vcb_build(&b);
    }
    pbft_o_set o;
    compute_ok(vcs, 3, 2, &o);
    assert_int_equal(o.nentries, 2);
    assert_entry(&o, 1, 0, 0);
    assert_entry(&o, 2, 7, 1);
    pbft_o_set_free(&o);
    unref_n(vcs, 3);
}

static void test_o_min_s_from_highest_checkpoint(void **state)
{
    (void)state;
    pbft_msg *vcs[3];
    scenario_m(vcs);
    pbft_o_set o;
    compute_ok(vcs, 3, 5, &o);
    assert_int_equal(o.min_s, 8);
    assert_int_equal(o.max_s, 12);
    assert_ptr_equal(o.min_s_vc, vcs[0]);
    uint8_t want[FB_DIGEST_LEN];
    state_digest(8, CKPT_FILL, want);
    assert_memory_equal(o.min_s_digest, want, FB_DIGEST_LEN);
    assert_int_equal(o.nentries, 4);
    assert_entry(&o, 9, 109, 1);
    assert_entry(&o, 10, 210, 3);
    assert_entry(&o, 11, 0, 0);
    assert_entry(&o, 12, 312, 0);
    pbft_o_set_free(&o);
    unref_n(vcs, 3);
}

static void test_o_empty(void **state)
{
    (void)state;
    /* Certificates exist, but all at or below min_s: O is empty, max_s = min_s. */
    pbft_msg *vcs[3];
    vc_b b;
    vcb_init(&b, 0, 2, 8);
    vcs[0] = vcb_build(&b);
    vcb_init(&b, 1, 2, 0);
    vcb_cert(&b, 1, 5, 1);
    vcb_cert(&b, 0, 8, 2);
    vcs[1] = vcb_build(&b);
    vcb_init(&b, 3, 2, 4);
    vcb_cert(&b, 1, 6, 3);
    vcs[2] = vcb_build(&b);
    pbft_o_set o;
    compute_ok(vcs, 3, 2, &o);
    assert_int_equal(o.min_s, 8);
    assert_int_equal(o.max_s, 8);
    assert_int_equal(o.nentries, 0);
    assert_null(o.entries);
    assert_ptr_equal(o.min_s_vc, vcs[0]);
    pbft_o_set_free(&o);
    unref_n(vcs, 3);

    /* Nothing at all since genesis. */
    for (uint32_t i = 0; i < 3; i++) {
        vcb_init(&b, i + 1, 3, 0);
        vcs[i] = vcb_build(&b);
    }
    compute_ok(vcs, 3, 3, &o);
    assert_int_equal(o.min_s, 0);
    assert_int_equal(o.max_s, 0);
    assert_int_equal(o.nentries, 0);
    pbft_o_set_free(&o);
    unref_n(vcs, 3);
}

static void expect_o_reject(pbft_msg *const *vcs, size_t n, uint64_t view, const char *needle)
{
    char why[512] = "";
    pbft_o_set o = {0};
    int rc = pbft_vc_compute_o(&P, view, vcs, n, NULL, &o, why, sizeof why);
    if (rc != FB_EPROTO)
        fail_msg("wanted FB_EPROTO (%s), got %d: %s", needle, rc, why);
    if (!strstr(why, needle))
        fail_msg("reason \"%s\" lacks \"%s\"", why, needle);
    assert_int_equal(o.nentries, 0);
}

static void test_o_rejects_bad_v(void **state)
{
    (void)state;
    pbft_msg *vcs[5];
    vc_b b;
    for (uint32_t i = 0; i < 4; i++) {
        vcb_init(&b, i, 2, 0);
        vcs[i] = vcb_build(&b);
    }
    expect_o_reject(vcs, 2, 2, "V has 2 view-changes, needs 3 to 4");
    pbft_msg *dup[3] = {vcs[0], vcs[1], vcs[1]};
    expect_o_reject(dup, 3, 2, "V has two view-changes from replica 1");
    vcs[4] = vcs[0];
    expect_o_reject(vcs, 5, 2, "V has 5 view-changes, needs 3 to 4");
    expect_o_reject(vcs, 3, 3, "V entry 0 (from 0) is for view 2");
    pbft_msg *cp = checkpoint_new(8, 1, 3);
    pbft_msg *mixed[3] = {vcs[0], vcs[1], cp};
    expect_o_reject(mixed, 3, 2, "V entry 2 is a MSG_CHECKPOINT");
    pbft_msg_unref(cp);

    /* A VIEW-CHANGE that never passed pbft_vc_check, with a certificate far
     * beyond the window: max_s - min_s > L is refused, not allocated. */
    vcb_init(&b, 3, 2, 0);
    vcb_cert(&b, 1, 1000, 1);
    pbft_msg *wild = vcb_build(&b);
    pbft_msg *v2[3] = {vcs[0], vcs[1], wild};
    expect_o_reject(v2, 3, 2, "certificate for seq 1000 from 3 is beyond min_s 0 + L 16");
    char why[256];
    assert_int_equal(pbft_vc_check(&P, wild, NULL, why, sizeof why), FB_EPROTO);
    pbft_msg_unref(wild);
    unref_n(vcs, 4);
}

/* ------------------------------------------------------------ NEW-VIEW */

static pbft_msg *nv_new(uint64_t view, uint32_t sender, pbft_msg *const *vcs, size_t nvcs,
                        pbft_msg *const *pps, size_t npps)
{
    Fedbft__Envelope *ve[MAXKEYS], *pe[MAXCERTS];
    assert_true(nvcs <= MAXKEYS && npps <= MAXCERTS);
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

/* Parse nv from its bytes, as a backup receives it. */
static pbft_msg *received(const pbft_msg *nv)
{
    char err[256] = "";
    pbft_msg *m = NULL;
    if (pbft_msg_parse(nv->raw, nv->raw_len, NULL, NULL, &m, err, sizeof err))
        fail_msg("parse: %s", err);
    return m;
}

static void check_nv_ok(const pbft_msg *nv, const pbft_req_lookup *lookup, pbft_digest_stats *st,
                        pbft_new_view_info *info)
{
    char why[512] = "";
    pbft_msg *m = received(nv);
    int rc = pbft_vc_check_new_view(&P, m, lookup, st, info, why, sizeof why);
    pbft_msg_unref(m);
    if (rc)
        fail_msg("new-view rejected: %s", why);
}

static void expect_nv_reject(pbft_msg *nv, const char *needle)
{
    char why[512] = "";
    pbft_new_view_info info = {0};
    int rc = pbft_vc_check_new_view(&P, nv, NULL, NULL, &info, why, sizeof why);
    if (rc != FB_EPROTO)
        fail_msg("wanted FB_EPROTO (%s), got %d: %s", needle, rc, why);
    if (!strstr(why, needle))
        fail_msg("reason \"%s\" lacks \"%s\"", why, needle);
    assert_null(info.pre_prepares);
    assert_null(info.vcs);
    pbft_msg_unref(nv);
}

static pbft_msg *make_nv(uint64_t view, pbft_msg *const *vcs, size_t n, pbft_digest_stats *st)
{
    pbft_o_set o;
    compute_ok(vcs, n, view, &o);
    uint32_t primary = pbft_primary(view, P.n);
    pbft_signer s = signer_of(primary);
    pbft_msg *nv = NULL;
    assert_int_equal(pbft_vc_make_new_view(&P, view, primary, vcs, n, &o, &s, st, &nv), 0);
    pbft_o_set_free(&o);
    return nv;
}

static void test_new_view_round_trip(void **state)
{
    (void)state;
    pbft_msg *vcs[3];
    scenario_s(vcs);
    pbft_digest_stats st = {0};
    pbft_msg *nv = make_nv(5, vcs, 3, &st);
    /* The primary signs 4 PRE-PREPAREs and the NEW-VIEW; the re-proposed
     * batches keep their digests (the null one is checked on build). */
    assert_int_equal(st.envelopes, 5);
    assert_int_equal(st.requests, 0);
    assert_int_equal(st.batches, 1);
    assert_int_equal(nv->sender, 1);

    pbft_new_view_info info;
    st = (pbft_digest_stats){0};
    check_nv_ok(nv, NULL, &st, &info);
    /* Each nested message digested once: 3 VCs, 5 certificates of a
     * PRE-PREPARE and 2 PREPAREs, 4 O PRE-PREPAREs; the 5 certified requests;
     * 5 certified batches, the null digest, the 4 O batches.  O's requests
     * are the certificates' and are not digested again. */
    assert_int_equal(st.envelopes, 3 + 5 * 3 + 4);
    assert_int_equal(st.requests, 5);
    assert_int_equal(st.batches, 5 + 1 + 4);

    assert_int_equal(info.view, 5);
    assert_int_equal(info.min_s, 0);
    assert_int_equal(info.nproof, 0);
    assert_int_equal(info.nvcs, 3);
    for (int i = 0; i < 3; i++)
        assert_memory_equal(info.vcs[i]->digest, vcs[i]->digest, FB_DIGEST_LEN);
    assert_int_equal(info.npre_prepares, 4);
    const uint64_t batches[4] = {21, 0, 33, 24};
    for (uint64_t k = 0; k < 4; k++) {
        const pbft_msg *pp = info.pre_prepares[k];
        uint8_t d[FB_DIGEST_LEN];
        batch_digest(batches[k], d);
        assert_int_equal(pp->sender, 1);
        assert_int_equal(pp->u.pre_prepare->view, 5);
        assert_int_equal(pp->u.pre_prepare->seq, k + 1);
        assert_int_equal(pp->u.pre_prepare->nondet, 10 * batches[k]);
        assert_memory_equal(pp->u.pre_prepare->digest.data, d, FB_DIGEST_LEN);
        assert_int_equal(pp->nreqs, batches[k] ? 1 : 0);
        if (batches[k]) {
            /* The source batch's request, unchanged: same bytes, same digest. */
            pbft_msg *r = req_new(batches[k]);
            assert_int_equal(pp->reqs[0]->raw_len, r->raw_len);
            assert_memory_equal(pp->reqs[0]->raw, r->raw, r->raw_len);
            assert_memory_equal(pp->reqs[0]->digest, r->digest, FB_DIGEST_LEN);
            pbft_msg_unref(r);
        }
    }
    pbft_new_view_info_free(&info);
    assert_null(info.pre_prepares);
    pbft_msg_unref(nv);
    unref_n(vcs, 3);
}

typedef struct known {
    pbft_msg *reqs[8];
    size_t n;
} known;

static pbft_msg *find_known(void *arg, uint32_t client, uint64_t ts, const uint8_t *raw, size_t len)
{
    known *k = arg;
    (void)client;
    (void)ts;
    for (size_t i = 0; i < k->n; i++)
        if (k->reqs[i]->raw_len == len && memcmp(k->reqs[i]->raw, raw, len) == 0)
            return k->reqs[i];
    return NULL;
}

static void test_new_view_reuses_known_requests(void **state)
{
    (void)state;
    pbft_msg *vcs[3];
    scenario_s(vcs);
    pbft_msg *nv = make_nv(5, vcs, 3, NULL);
    known k = {{req_new(11), req_new(13), req_new(21), req_new(24), req_new(33)}, 5};
    pbft_req_lookup lookup = {find_known, &k};
    pbft_digest_stats st = {0};
    pbft_new_view_info info;
    check_nv_ok(nv, &lookup, &st, &info);
    assert_int_equal(st.requests, 0);
    assert_ptr_equal(info.pre_prepares[0]->reqs[0], k.reqs[2]);
    pbft_new_view_info_free(&info);
    unref_n(k.reqs, k.n);
    pbft_msg_unref(nv);
    unref_n(vcs, 3);
}

static void test_new_view_min_s(void **state)
{
    (void)state;
    pbft_msg *vcs[3];
    scenario_m(vcs);
    pbft_msg *nv = make_nv(5, vcs, 3, NULL);
    pbft_new_view_info info;
    check_nv_ok(nv, NULL, NULL, &info);
    assert_int_equal(info.min_s, 8);
    uint8_t want[FB_DIGEST_LEN];
    state_digest(8, CKPT_FILL, want);
    assert_memory_equal(info.min_s_digest, want, FB_DIGEST_LEN);
    assert_int_equal(info.nproof, 3);
    for (size_t i = 0; i < info.nproof; i++) {
        assert_int_equal(info.min_s_proof[i]->type, FEDBFT__MSG_TYPE__MSG_CHECKPOINT);
        assert_int_equal(info.min_s_proof[i]->u.checkpoint->seq, 8);
        assert_memory_equal(info.min_s_proof[i]->u.checkpoint->state_digest.data, want,
                            FB_DIGEST_LEN);
    }
    assert_int_equal(info.npre_prepares, 4);
    for (uint64_t k = 0; k < 4; k++)
        assert_int_equal(info.pre_prepares[k]->u.pre_prepare->seq, 9 + k);
    assert_int_equal(info.pre_prepares[2]->nreqs, 0);
    pbft_new_view_info_free(&info);
    pbft_msg_unref(nv);
    unref_n(vcs, 3);
}

static void test_new_view_empty_o(void **state)
{
    (void)state;
    pbft_msg *vcs[4];
    vc_b b;
    for (uint32_t i = 0; i < 4; i++) {
        vcb_init(&b, i, 6, i == 3 ? 16 : 0);
        vcs[i] = vcb_build(&b);
    }
    pbft_msg *nv = make_nv(6, vcs, 4, NULL);
    assert_int_equal(nv->u.new_view->n_pre_prepares, 0);
    pbft_new_view_info info;
    check_nv_ok(nv, NULL, NULL, &info);
    assert_int_equal(info.min_s, 16);
    assert_int_equal(info.npre_prepares, 0);
    assert_int_equal(info.nvcs, 4);
    assert_int_equal(info.nproof, 3);
    pbft_new_view_info_free(&info);
    pbft_msg_unref(nv);
    unref_n(vcs, 4);
}

/* Scenario S's correct O, built by hand: 1 -> 21, 2 -> null, 3 -> 33, 4 -> 24. */
static void o_by_hand(pbft_msg *pps[4])
{
    pps[0] = pp_new(5, 1, 1, 21, NULL);
    pps[1] = pp_new(5, 2, 1, 0, NULL);
    pps[2] = pp_new(5, 3, 1, 33, NULL);
    pps[3] = pp_new(5, 4, 1, 24, NULL);
}

static void replace(pbft_msg **slot, pbft_msg *m)
{
    pbft_msg_unref(*slot);
    *slot = m;
}

static void test_new_view_rejects_wrong_o(void **state)
{
    (void)state;
    pbft_msg *vcs[3], *pps[5];
    scenario_s(vcs);
    pbft_new_view_info info;

    /* The hand-built O is right. */
    o_by_hand(pps);
    pbft_msg *nv = nv_new(5, 1, vcs, 3, pps, 4);
    check_nv_ok(nv, NULL, NULL, &info);
    pbft_new_view_info_free(&info);
    pbft_msg_unref(nv);

    /* A missing seq (the last, or one in the middle). */
    expect_nv_reject(nv_new(5, 1, vcs, 3, pps, 3),
                     "O has 3 pre-prepares, V gives 4 for seqs (0, 4]");
    pbft_msg *gap[4] = {pps[0], pps[2], pps[3], pps[3]};
    expect_nv_reject(nv_new(5, 1, vcs, 3, gap, 3), "O has 3 pre-prepares");

    /* An extra seq. */
    pps[4] = pp_new(5, 5, 1, 0, NULL);
    expect_nv_reject(nv_new(5, 1, vcs, 3, pps, 5), "O has 5 pre-prepares, V gives 4");
    pbft_msg_unref(pps[4]);

    /* Right count, wrong seqs: out of order, or a seq repeated. */
    pbft_msg *swapped[4] = {pps[0], pps[2], pps[1], pps[3]};
    expect_nv_reject(nv_new(5, 1, vcs, 3, swapped, 4), "O has seq 3 where seq 2 belongs");
    pbft_msg *twice[4] = {pps[0], pps[1], pps[1], pps[3]};
    expect_nv_reject(nv_new(5, 1, vcs, 3, twice, 4), "O has seq 2 where seq 3 belongs");

    /* A wrong digest: the lower-view batch 11 instead of 21 at seq 1. */
    replace(&pps[0], pp_new(5, 1, 1, 11, NULL));
    expect_nv_reject(nv_new(5, 1, vcs, 3, pps, 4),
                     "O pre-prepare for seq 1 has the wrong batch (V gives a prepared batch)");
    /* A null batch where batch 21 belongs. */
    replace(&pps[0], pp_new(5, 1, 1, 0, NULL));
    expect_nv_reject(nv_new(5, 1, vcs, 3, pps, 4), "seq 1 has the wrong batch");
    replace(&pps[0], pp_new(5, 1, 1, 21, NULL));
    /* A batch where the null batch belongs. */
    replace(&pps[1], pp_new(5, 2, 1, 13, NULL));
    expect_nv_reject(nv_new(5, 1, vcs, 3, pps, 4),
                     "O pre-prepare for seq 2 has the wrong batch (V gives a null batch)");
    replace(&pps[1], pp_new(5, 2, 1, 0, NULL));

    /* A PRE-PREPARE signed by a replica other than the new primary. */
    replace(&pps[2], pp_new(5, 3, 2, 33, NULL));
    expect_nv_reject(nv_new(5, 1, vcs, 3, pps, 4),
                     "O pre-prepare for seq 3 is from 2, not the primary 1");
    replace(&pps[2], pp_new(5, 3, 1, 33, NULL));

    /* A PRE-PREPARE for another view. */
    replace(&pps[3], pp_new(4, 4, 1, 24, NULL));
    expect_nv_reject(nv_new(5, 1, vcs, 3, pps, 4), "O pre-prepare for seq 4 is for view 4");
    replace(&pps[3], pp_new(5, 4, 1, 24, NULL));

    /* A PRE-PREPARE whose batch does not match its digest. */
    uint8_t d21[FB_DIGEST_LEN];
    batch_digest(21, d21);
    replace(&pps[0], pp_new(5, 1, 1, 11, d21));
    expect_nv_reject(nv_new(5, 1, vcs, 3, pps, 4), "O entry 0");
    replace(&pps[0], pp_new(5, 1, 1, 21, NULL));

    /* Something other than a PRE-PREPARE in O. */
    pbft_msg *notpp[4] = {pps[0], vcs[0], pps[2], pps[3]};
    expect_nv_reject(nv_new(5, 1, vcs, 3, notpp, 4),
                     "MSG_VIEW_CHANGE envelope where MSG_PRE_PREPARE belongs");

    /* Still fine after all the swapping. */
    nv = nv_new(5, 1, vcs, 3, pps, 4);
    check_nv_ok(nv, NULL, NULL, &info);
    pbft_new_view_info_free(&info);
    pbft_msg_unref(nv);

    unref_n(pps, 4);
    unref_n(vcs, 3);
}

static void test_new_view_rejects_bad_v(void **state)
{
    (void)state;
    pbft_msg *vcs[3], *pps[4];
    scenario_s(vcs);
    o_by_hand(pps);

    /* Fewer than a quorum. */
    expect_nv_reject(nv_new(5, 1, vcs, 2, pps, 4), "V has 2 view-changes, needs 3 to 4");
    /* Duplicate senders. */
    pbft_msg *dup[3] = {vcs[0], vcs[1], vcs[0]};
    expect_nv_reject(nv_new(5, 1, dup, 3, pps, 4), "V has two view-changes from replica 0");
    /* More than n. */
    pbft_msg *many[5] = {vcs[0], vcs[1], vcs[2], vcs[0], vcs[1]};
    expect_nv_reject(nv_new(5, 1, many, 5, pps, 4), "V has 5 view-changes");

    /* A VIEW-CHANGE for another view. */
    vc_b b;
    vcb_init(&b, 1, 4, 0);
    pbft_msg *other = vcb_build(&b);
    pbft_msg *mixed[3] = {vcs[0], vcs[1], other};
    expect_nv_reject(nv_new(5, 1, mixed, 3, pps, 4), "V entry 2 (from 1) is for view 4");
    pbft_msg_unref(other);

    /* A VIEW-CHANGE that fails its own check. */
    vcb_init(&b, 1, 5, 0);
    cert_b *c = vcb_cert(&b, 2, 1, 99);
    pbft_msg_unref(c->prep[--c->nprep]);
    pbft_msg *bad = vcb_build(&b);
    pbft_msg *withbad[4] = {vcs[0], vcs[1], vcs[2], bad};
    expect_nv_reject(nv_new(5, 1, withbad, 4, pps, 4),
                     "new-view for view 5: view-change from 1: certificate for seq 1 has 1 "
                     "prepares from backups, needs 2");
    pbft_msg_unref(bad);

    /* Something other than a VIEW-CHANGE in V. */
    pbft_msg *cp = checkpoint_new(8, 1, 2);
    pbft_msg *notvc[3] = {vcs[0], vcs[1], cp};
    expect_nv_reject(nv_new(5, 1, notvc, 3, pps, 4),
                     "V entry 2: MSG_CHECKPOINT envelope where MSG_VIEW_CHANGE belongs");
    pbft_msg_unref(cp);

    /* Sent by someone other than the new primary, or for view 0. */
    expect_nv_reject(nv_new(5, 2, vcs, 3, pps, 4), "sent by 2, but its primary is 1");
    expect_nv_reject(nv_new(0, 0, vcs, 3, pps, 4), "view 0");
    /* Not a NEW-VIEW. */
    expect_nv_reject(pbft_msg_ref(vcs[0]), "is not a NEW-VIEW");
    /* O longer than the window, before anything nested is parsed. */
    P.log_window = 3;
    expect_nv_reject(nv_new(5, 1, vcs, 3, pps, 4),
                     "O has 4 pre-prepares, more than the log window 3");

    unref_n(pps, 4);
    unref_n(vcs, 3);
}

static void test_make_new_view_refusals(void **state)
{
    (void)state;
    pbft_msg *vcs[3];
    scenario_s(vcs);
    pbft_o_set o;
    compute_ok(vcs, 3, 5, &o);
    pbft_signer s = signer_of(2);
    pbft_msg *nv = NULL;
    /* Only the new primary builds the NEW-VIEW. */
    assert_int_equal(pbft_vc_make_new_view(&P, 5, 2, vcs, 3, &o, &s, NULL, &nv), FB_EINVAL);
    /* V must be a quorum. */
    s = signer_of(1);
    assert_int_equal(pbft_vc_make_new_view(&P, 5, 1, vcs, 2, &o, &s, NULL, &nv), FB_EINVAL);
    assert_null(nv);
    pbft_o_set_free(&o);
    unref_n(vcs, 3);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup(f, use_n4)
    const struct CMUnitTest tests[] = {
        T(test_vc_valid),
        T(test_vc_proof_rejections),
        T(test_vc_cert_prepare_rejections),
        T(test_vc_cert_rejections),
        T(test_vc_sender_rejections),
        T(test_vc_n7),
        T(test_o_highest_view_wins_and_gaps),
        T(test_o_same_certificate_twice),
        T(test_o_min_s_from_highest_checkpoint),
        T(test_o_empty),
        T(test_o_rejects_bad_v),
        T(test_new_view_round_trip),
        T(test_new_view_reuses_known_requests),
        T(test_new_view_min_s),
        T(test_new_view_empty_o),
        T(test_new_view_rejects_wrong_o),
        T(test_new_view_rejects_bad_v),
        T(test_make_new_view_refusals),
    };
#undef T
    return cmocka_run_group_tests(tests, group_setup, NULL);
}
