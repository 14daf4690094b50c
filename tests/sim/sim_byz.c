/* sim_byz.c - Byzantine replicas, one kind of misbehaviour per scenario.
 *
 * A Byzantine instance runs the real replica (so it knows views, sequence
 * numbers and batches and can lie convincingly) and every message it emits
 * passes through here first, to be dropped, altered and re-signed with its
 * own key, duplicated with a twist, or sent as is.  It also acts on its own
 * (byz_tick): replaying recorded messages, sending garbage, forging.
 * Forged signatures must die in the harness's verification; everything
 * validly signed but wrong must be rejected by the replica's own rules.
 */
#include "envelope.h"
#include "sim_int.h"

#include <stdlib.h>
#include <string.h>

#define RING 128 /* recorded messages for replay */
#define KEEP 16  /* recent requests / prepares / view-changes kept for mutations */

typedef struct byz_raw {
    uint8_t *raw;
    size_t len;
} byz_raw;

typedef struct sim_byz {
    int kind;
    byz_raw ring[RING];
    size_t nring, ringpos;
    pbft_msg *reqs[KEEP], *preps[KEEP], *vcs[KEEP];
    size_t nreqs, npreps, nvcs, reqpos, preppos, vcpos;
    pbft_msg *own_vc; /* its own latest VIEW-CHANGE, for premature copies */
} sim_byz;

/* ------------------------------------------------------------ helpers */

static void keep(pbft_msg **arr, size_t *n, size_t *pos, const pbft_msg *m)
{
    pbft_msg *r = pbft_msg_ref((pbft_msg *)m);
    if (*n < KEEP) {
        arr[(*n)++] = r;
    } else {
        pbft_msg_unref(arr[*pos]);
        arr[*pos] = r;
        *pos = (*pos + 1) % KEEP;
    }
}

static void record(sim_byz *bz, const uint8_t *raw, size_t len)
{
    uint8_t *copy = malloc(len ? len : 1);
    if (!copy)
        return; /* a replay less; not worth failing the run */
    if (len)
        memcpy(copy, raw, len);
    byz_raw *slot;
    if (bz->nring < RING) {
        slot = &bz->ring[bz->nring++];
    } else {
        slot = &bz->ring[bz->ringpos];
        free(slot->raw);
        bz->ringpos = (bz->ringpos + 1) % RING;
    }
    *slot = (byz_raw){copy, len};
}

/* memcpy for arrays protobuf-c leaves NULL when empty. */
static void copy_ptrs(void *dst, const void *src, size_t n, size_t size)
{
    if (n)
        memcpy(dst, src, n * size);
}

static void rand_bytes(sim_world *w, uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)rng_next(&w->rng);
}

static uint32_t other_id(sim_world *w, const sim_node *nd)
{
    uint32_t v = (uint32_t)rng_below(&w->rng, w->n - 1);
    return v >= nd->id ? v + 1 : v;
}

/* A random non-empty proper subset of the other identities. */
static uint32_t split_mask(sim_world *w, const sim_node *nd)
{
    uint32_t all = ((1u << w->n) - 1) & ~(1u << nd->id);
    for (;;) {
        uint32_t m = (uint32_t)rng_next(&w->rng) & all;
        if (m && m != all)
            return m;
    }
}

static void emit(sim_world *w, sim_node *nd, uint32_t to, const pbft_msg *m)
{
    node_emit(w, nd, to, m->raw, m->raw_len);
}

/* Send `in` to the identities in mask and `out` to the others (within to). */
static void emit_split(sim_world *w, sim_node *nd, uint32_t to, uint32_t mask, const pbft_msg *in,
                       const pbft_msg *out)
{
    for (uint32_t i = 0; i < w->n; i++) {
        if (i == nd->id || (to != SIM_ALL && i != to))
            continue;
        const pbft_msg *m = (mask >> i) & 1 ? in : out;
        if (m)
            emit(w, nd, i, m);
    }
}

/* A PRE-PREPARE signed by nd (as `sender`), over the given requests.  With
 * digest NULL the batch digest is computed honestly. */
static pbft_msg *make_pp(sim_node *nd, uint32_t sender, uint64_t view, uint64_t seq,
                         uint64_t nondet, pbft_msg *const *reqs, size_t nreqs,
                         const uint8_t *digest)
{
    uint8_t d[FB_DIGEST_LEN];
    if (digest)
        memcpy(d, digest, FB_DIGEST_LEN);
    else
        pbft_batch_digest(nondet, reqs, nreqs, NULL, d);
    Fedbft__Envelope **envs = calloc(nreqs ? nreqs : 1, sizeof *envs);
    if (!envs)
        return NULL;
    for (size_t i = 0; i < nreqs; i++)
        envs[i] = reqs[i]->env;
    Fedbft__PrePrepare pp = FEDBFT__PRE_PREPARE__INIT;
    pp.view = view;
    pp.seq = seq;
    pp.nondet = nondet;
    pp.digest = (ProtobufCBinaryData){FB_DIGEST_LEN, d};
    pp.n_requests = nreqs;
    pp.requests = envs;
    pbft_msg *out = NULL;
    int rc = pbft_msg_make_batch(FEDBFT__MSG_TYPE__MSG_PRE_PREPARE, sender, &pp.base, reqs, nreqs,
                                 &nd->signer, NULL, &out);
    free(envs);
    return rc ? NULL : out;
}

/* PREPARE or COMMIT signed by nd as `sender`. */
static pbft_msg *make_vote(sim_node *nd, int type, uint32_t sender, uint64_t view, uint64_t seq,
                           const uint8_t *digest)
{
    pbft_msg *out = NULL;
    int rc;
    if (type == FEDBFT__MSG_TYPE__MSG_PREPARE) {
        Fedbft__Prepare p = FEDBFT__PREPARE__INIT;
        p.view = view;
        p.seq = seq;
        p.digest = (ProtobufCBinaryData){FB_DIGEST_LEN, (uint8_t *)digest};
        p.replica = sender;
        rc = pbft_msg_make(type, sender, &p.base, &nd->signer, NULL, &out);
    } else {
        Fedbft__Commit c = FEDBFT__COMMIT__INIT;
        c.view = view;
        c.seq = seq;
        c.digest = (ProtobufCBinaryData){FB_DIGEST_LEN, (uint8_t *)digest};
        c.replica = sender;
        rc = pbft_msg_make(type, sender, &c.base, &nd->signer, NULL, &out);
    }
    return rc ? NULL : out;
}

static pbft_msg *make_checkpoint(sim_node *nd, uint32_t sender, uint64_t seq, const uint8_t *digest)
{
    Fedbft__Checkpoint c = FEDBFT__CHECKPOINT__INIT;
    c.seq = seq;
    c.state_digest = (ProtobufCBinaryData){FB_DIGEST_LEN, (uint8_t *)digest};
    c.replica = sender;
    pbft_msg *out = NULL;
    return pbft_msg_make(FEDBFT__MSG_TYPE__MSG_CHECKPOINT, sender, &c.base, &nd->signer, NULL, &out)
               ? NULL
               : out;
}

/* m re-signed by nd under another sender's name: the payload's replica
 * field is changed to match, so only the signature gives it away. */
static pbft_msg *forge_as(sim_node *nd, const pbft_msg *m, uint32_t victim)
{
    const ProtobufCMessageDescriptor *d = fb_env_payload_descriptor(m->type);
    if (!d)
        return NULL;
    ProtobufCMessage *p =
        protobuf_c_message_unpack(d, NULL, m->env->payload.len, m->env->payload.data);
    if (!p)
        return NULL;
    switch (m->type) {
    case FEDBFT__MSG_TYPE__MSG_PREPARE:
        ((Fedbft__Prepare *)p)->replica = victim;
        break;
    case FEDBFT__MSG_TYPE__MSG_COMMIT:
        ((Fedbft__Commit *)p)->replica = victim;
        break;
    case FEDBFT__MSG_TYPE__MSG_CHECKPOINT:
        ((Fedbft__Checkpoint *)p)->replica = victim;
        break;
    case FEDBFT__MSG_TYPE__MSG_VIEW_CHANGE:
        ((Fedbft__ViewChange *)p)->replica = victim;
        break;
    default:
        break;
    }
    pbft_msg *out = NULL;
    int rc = pbft_msg_make_batch(m->type, victim, p, m->reqs, m->nreqs, &nd->signer, NULL, &out);
    protobuf_c_message_free_unpacked(p, NULL);
    return rc ? NULL : out;
}

/* ------------------------------------------------------------ equivocation */

static sim_equiv *equiv_find(sim_world *w, uint64_t view, uint64_t seq)
{
    for (size_t i = 0; i < w->nequiv && i < 32; i++)
        if (w->equiv[i].view == view && w->equiv[i].seq == seq)
            return &w->equiv[i];
    return NULL;
}

/* The primary shows a different batch for (view, seq) to a random part of
 * the backups (PBFT's core threat); colluding faulty backups then vote for
 * whichever batch each side was shown. */
static void equivocate_send(sim_world *w, sim_node *nd, uint32_t to, const pbft_msg *m)
{
    if (m->type == FEDBFT__MSG_TYPE__MSG_PRE_PREPARE && to == SIM_ALL && rng_ppm(&w->rng, 700000)) {
        const Fedbft__PrePrepare *pp = m->u.pre_prepare;
        pbft_msg *alt_reqs[256];
        size_t n = m->nreqs < 256 ? m->nreqs : 256;
        uint64_t nondet = pp->nondet;
        uint64_t how = rng_below(&w->rng, 3);
        if (how == 0 && n >= 2) {
            for (size_t i = 0; i < n; i++)
                alt_reqs[i] = m->reqs[n - 1 - i];
        } else if (how == 1 && n >= 1) {
            for (size_t i = 0; i + 1 < n; i++)
                alt_reqs[i] = m->reqs[i];
            n--;
        } else {
            for (size_t i = 0; i < n; i++)
                alt_reqs[i] = m->reqs[i];
            nondet++;
        }
        pbft_msg *alt = make_pp(nd, nd->id, pp->view, pp->seq, nondet, alt_reqs, n, NULL);
        if (!alt) {
            emit(w, nd, to, m);
            return;
        }
        uint32_t mask = split_mask(w, nd);
        sim_equiv *e = &w->equiv[w->nequiv++ % 32];
        e->view = pp->view;
        e->seq = pp->seq;
        memcpy(e->good, pp->digest.data, FB_DIGEST_LEN);
        memcpy(e->alt, alt->u.pre_prepare->digest.data, FB_DIGEST_LEN);
        e->alt_mask = mask;
        emit_split(w, nd, to, mask, alt, m);
        w->res->faults[SIM_F_EQUIVOCATE]++;
        sim_trace(w, TR_BYZ, nd->idx, SIM_F_EQUIVOCATE, pp->view, pp->seq, mask);
        pbft_msg_unref(alt);
        return;
    }
    if (m->type == FEDBFT__MSG_TYPE__MSG_PREPARE || m->type == FEDBFT__MSG_TYPE__MSG_COMMIT) {
        uint64_t view = msg_view_of(m), seq = msg_seq_of(m);
        sim_equiv *e = equiv_find(w, view, seq);
        if (e) {
            pbft_msg *good = make_vote(nd, m->type, nd->id, view, seq, e->good);
            pbft_msg *alt = make_vote(nd, m->type, nd->id, view, seq, e->alt);
            if (good && alt) {
                emit_split(w, nd, to, e->alt_mask, alt, good);
                w->res->faults[SIM_F_EQUIVOCATE]++;
            } else {
                emit(w, nd, to, m);
            }
            pbft_msg_unref(good);
            pbft_msg_unref(alt);
            return;
        }
    }
    emit(w, nd, to, m);
}

/* ------------------------------------------------------------ wrong digests */

static void wrong_digest_send(sim_world *w, sim_node *nd, uint32_t to, const pbft_msg *m)
{
    uint8_t d[FB_DIGEST_LEN];
    rand_bytes(w, d, sizeof d);
    pbft_msg *bad = NULL;
    switch (m->type) {
    case FEDBFT__MSG_TYPE__MSG_PREPARE:
    case FEDBFT__MSG_TYPE__MSG_COMMIT:
        if (rng_ppm(&w->rng, 500000))
            bad = make_vote(nd, m->type, nd->id, msg_view_of(m), msg_seq_of(m), d);
        break;
    case FEDBFT__MSG_TYPE__MSG_PRE_PREPARE:
        /* Digest field that does not match the batch it carries. */
        if (rng_ppm(&w->rng, 300000))
            bad = make_pp(nd, nd->id, m->u.pre_prepare->view, m->u.pre_prepare->seq,
                          m->u.pre_prepare->nondet, m->reqs, m->nreqs, d);
        break;
    case FEDBFT__MSG_TYPE__MSG_CHECKPOINT:
        if (rng_ppm(&w->rng, 300000))
            bad = make_checkpoint(nd, nd->id, m->u.checkpoint->seq, d);
        break;
    default:
        break;
    }
    if (bad) {
        w->res->faults[SIM_F_WRONG_DIGEST]++;
        sim_trace(w, TR_BYZ, nd->idx, SIM_F_WRONG_DIGEST, (uint64_t)m->type, msg_view_of(m),
                  msg_seq_of(m));
        emit(w, nd, to, bad);
        pbft_msg_unref(bad);
    } else {
        emit(w, nd, to, m);
    }
}

/* ------------------------------------------------------------ forgery */

static void forge_send(sim_world *w, sim_node *nd, uint32_t to, const pbft_msg *m)
{
    emit(w, nd, to, m);
    if (m->type == FEDBFT__MSG_TYPE__MSG_REQUEST || !rng_ppm(&w->rng, 300000))
        return;
    pbft_msg *f = forge_as(nd, m, other_id(w, nd));
    if (f) {
        w->res->faults[SIM_F_FORGE]++;
        sim_trace(w, TR_BYZ, nd->idx, SIM_F_FORGE, (uint64_t)m->type, f->sender, 0);
        emit(w, nd, SIM_ALL, f);
        pbft_msg_unref(f);
    }
}

/* A client request the client never signed, alone or inside a PRE-PREPARE
 * that is otherwise validly signed by this replica. */
static void forge_tick(sim_world *w, sim_node *nd)
{
    const sim_client *c = &w->clients[rng_below(&w->rng, w->nclients)];
    uint8_t key[2] = {'k', '0'};
    uint8_t val[8] = "forged";
    Fedbft__Operation op = FEDBFT__OPERATION__INIT;
    op.kind = FEDBFT__OPERATION__KIND__OP_PUT;
    op.key = (ProtobufCBinaryData){sizeof key, key};
    op.value = (ProtobufCBinaryData){6, val};
    Fedbft__Request rq = FEDBFT__REQUEST__INIT;
    rq.client = c->id;
    rq.timestamp = c->ts + 1;
    rq.op = &op;
    pbft_msg *req = NULL;
    if (pbft_msg_make(FEDBFT__MSG_TYPE__MSG_REQUEST, c->id, &rq.base, &nd->signer, NULL, &req))
        return;
    pbft_msg *send = req;
    pbft_msg *pp = NULL;
    if (rng_below(&w->rng, 2) && nd->up) {
        pbft_status st;
        pbft_get_status(nd->r, &st);
        pp = make_pp(nd, nd->id, st.view, st.last_committed + 1, 0, &req, 1, NULL);
        if (pp)
            send = pp;
    }
    w->res->faults[SIM_F_FORGE]++;
    sim_trace(w, TR_BYZ, nd->idx, SIM_F_FORGE, (uint64_t)send->type, c->id, rq.timestamp);
    emit(w, nd, SIM_ALL, send);
    pbft_msg_unref(pp);
    pbft_msg_unref(req);
}

/* ------------------------------------------------------------ bad NEW-VIEW */

static pbft_msg *null_pp(sim_node *nd, uint64_t view, uint64_t seq)
{
    return make_pp(nd, nd->id, view, seq, 0, NULL, 0, NULL);
}

/* Mutate O (or V) and re-sign.  Backups recompute O from V and must
 * reject the result (pbft_vc_check_new_view), then time out. */
static void bad_nv_send(sim_world *w, sim_node *nd, uint32_t to, const pbft_msg *m)
{
    const Fedbft__NewView *nv = m->u.new_view;
    size_t npp = nv->n_pre_prepares, nvc = nv->n_view_changes;
    Fedbft__Envelope **pps = calloc(npp + 1, sizeof *pps);
    Fedbft__Envelope **vcs = calloc(nvc + 1, sizeof *vcs);
    pbft_msg *made[2] = {NULL, NULL};
    pbft_msg *parsed = NULL;
    if (!pps || !vcs)
        goto out;
    copy_ptrs(pps, nv->pre_prepares, npp, sizeof *pps);
    copy_ptrs(vcs, nv->view_changes, nvc, sizeof *vcs);
    uint64_t max_seq = 0;
    for (size_t i = 0; i < npp; i++) {
        Fedbft__PrePrepare *p =
            fedbft__pre_prepare__unpack(NULL, pps[i]->payload.len, pps[i]->payload.data);
        if (p) {
            if (p->seq > max_seq)
                max_seq = p->seq;
            fedbft__pre_prepare__free_unpacked(p, NULL);
        }
    }
    uint64_t how = rng_below(&w->rng, 6);
    size_t i = npp ? (size_t)rng_below(&w->rng, npp) : 0;
    char err[128];
    if (how == 0 && npp > 0) {
        npp--; /* drop an entry: a hole in O */
    } else if ((how == 1 || how == 2) && npp > 0 &&
               pbft_msg_from_env(pps[i], NULL, NULL, &parsed, err, sizeof err) == 0) {
        const Fedbft__PrePrepare *p = parsed->u.pre_prepare;
        if (how == 1 && parsed->nreqs > 0)
            made[0] = null_pp(nd, p->view, p->seq); /* a prepared batch dropped */
        else if (how == 1 && nd->bz->nreqs > 0)
            made[0] = make_pp(nd, nd->id, p->view, p->seq, 7, &nd->bz->reqs[0], 1, NULL);
        else
            made[0] = make_pp(nd, nd->id, p->view, p->seq, p->nondet + 1, parsed->reqs,
                              parsed->nreqs, NULL); /* same requests, different digest */
        if (made[0])
            pps[i] = made[0]->env;
    } else if (how == 3 && nvc > 0) {
        if (nvc > 1 && rng_below(&w->rng, 2))
            vcs[0] = vcs[1]; /* V with a duplicate sender */
        else
            nvc--; /* V below a quorum */
    } else if (how == 4 && nd->bz->nvcs > 0 && nvc > 0) {
        /* A VIEW-CHANGE for another view smuggled into V. */
        vcs[rng_below(&w->rng, nvc)] = nd->bz->vcs[rng_below(&w->rng, nd->bz->nvcs)]->env;
    } else {
        /* An extra entry past max-s (or the first one when O is empty). */
        uint64_t seq = npp ? max_seq + 1 : nd->exec_last + 1;
        made[1] = nd->bz->nreqs && rng_below(&w->rng, 2)
                      ? make_pp(nd, nd->id, nv->view, seq, 3, &nd->bz->reqs[0], 1, NULL)
                      : null_pp(nd, nv->view, seq);
        if (made[1])
            pps[npp++] = made[1]->env;
    }
    Fedbft__NewView out_nv = FEDBFT__NEW_VIEW__INIT;
    out_nv.view = nv->view;
    out_nv.n_view_changes = nvc;
    out_nv.view_changes = vcs;
    out_nv.n_pre_prepares = npp;
    out_nv.pre_prepares = pps;
    pbft_msg *bad = NULL;
    if (pbft_msg_make(FEDBFT__MSG_TYPE__MSG_NEW_VIEW, nd->id, &out_nv.base, &nd->signer, NULL,
                      &bad) == 0) {
        w->res->faults[SIM_F_BAD_NEW_VIEW]++;
        sim_trace(w, TR_BYZ, nd->idx, SIM_F_BAD_NEW_VIEW, nv->view, how, npp);
        if (rng_below(&w->rng, 2))
            emit(w, nd, to, bad);
        else
            emit_split(w, nd, to, split_mask(w, nd), bad, m); /* an equivocating NEW-VIEW */
        pbft_msg_unref(bad);
    } else {
        emit(w, nd, to, m);
    }
out:
    pbft_msg_unref(made[0]);
    pbft_msg_unref(made[1]);
    pbft_msg_unref(parsed);
    free(pps);
    free(vcs);
}

/* ------------------------------------------------------------ bad VIEW-CHANGE */

/* The latest view below new_view in which nd was primary, or new_view if
 * none (then a pre-prepare it signs is from the wrong sender). */
static uint64_t own_old_view(const sim_world *w, const sim_node *nd, uint64_t new_view)
{
    for (uint64_t v = new_view; v-- > 0;)
        if (pbft_primary(v, w->n) == nd->id)
            return v;
    return new_view > 0 ? new_view - 1 : 0;
}

/* Forge the P set (or C) of its own VIEW-CHANGE: too few prepares,
 * duplicated or mismatched prepares, a fabricated pre-prepare, a stable
 * seq the proof does not back, or certificates silently left out. */
static void bad_vc_send(sim_world *w, sim_node *nd, uint32_t to, const pbft_msg *m)
{
    const Fedbft__ViewChange *vc = m->u.view_change;
    size_t ncert = vc->n_prepared, nproof = vc->n_checkpoint_proof;
    Fedbft__PreparedCert **certs = calloc(ncert + 1, sizeof *certs);
    Fedbft__Envelope **proof = calloc(nproof + 1, sizeof *proof);
    Fedbft__PreparedCert fake = FEDBFT__PREPARED_CERT__INIT;
    Fedbft__Envelope *fake_preps[SIM_MAX_N];
    pbft_msg *fpp = NULL;
    if (!certs || !proof)
        goto out;
    copy_ptrs(certs, vc->prepared, ncert, sizeof *certs);
    copy_ptrs(proof, vc->checkpoint_proof, nproof, sizeof *proof);
    uint64_t stable = vc->stable_seq;
    uint64_t how = rng_below(&w->rng, 6);
    size_t ci = ncert ? (size_t)rng_below(&w->rng, ncert) : 0;
    if (how == 0 && ncert > 0 && certs[ci]->n_prepares > 0) {
        /* Too few or repeated prepares in one certificate. */
        fake = *certs[ci];
        size_t np = fake.n_prepares < SIM_MAX_N ? fake.n_prepares : SIM_MAX_N;
        copy_ptrs(fake_preps, fake.prepares, np, sizeof *fake_preps);
        fake.prepares = fake_preps;
        if (np >= 2 && rng_below(&w->rng, 2))
            fake_preps[1] = fake_preps[0];
        else
            fake.n_prepares = np - 1;
        certs[ci] = &fake;
    } else if (how == 1 && ncert > 0 && certs[ci]->n_prepares > 0 && nd->bz->npreps > 0) {
        /* A validly signed prepare for something else. */
        fake = *certs[ci];
        size_t np = fake.n_prepares < SIM_MAX_N ? fake.n_prepares : SIM_MAX_N;
        copy_ptrs(fake_preps, fake.prepares, np, sizeof *fake_preps);
        fake.prepares = fake_preps;
        fake.n_prepares = np;
        fake_preps[rng_below(&w->rng, np)] = nd->bz->preps[rng_below(&w->rng, nd->bz->npreps)]->env;
        certs[ci] = &fake;
    } else if (how == 2 || how == 3) {
        /* A fabricated certificate: a pre-prepare this replica signs for an
         * old view (as its primary if it ever was, else under its own name,
         * which is not the primary's), with whatever prepares it has seen;
         * how == 3 puts it beyond the log window. */
        uint64_t view = own_old_view(w, nd, vc->new_view);
        uint64_t seq = stable + 1 + (how == 3 ? w->cfg.log_window : rng_below(&w->rng, 4));
        fpp = nd->bz->nreqs ? make_pp(nd, nd->id, view, seq, 11, &nd->bz->reqs[0], 1, NULL)
                            : null_pp(nd, view, seq);
        if (!fpp)
            goto plain;
        fake.pre_prepare = fpp->env;
        size_t np = nd->bz->npreps < w->quorum - 1 ? nd->bz->npreps : w->quorum - 1;
        if (np > SIM_MAX_N)
            np = SIM_MAX_N;
        for (size_t i = 0; i < np; i++)
            fake_preps[i] = nd->bz->preps[i]->env;
        fake.n_prepares = np;
        fake.prepares = fake_preps;
        certs[ncert++] = &fake;
    } else if (how == 4) {
        /* A stable checkpoint the proof does not back. */
        if (nproof > 0 && rng_below(&w->rng, 2))
            nproof = w->quorum - 1 < nproof ? w->quorum - 1 : nproof - 1;
        else
            stable += w->cfg.checkpoint_interval;
    } else {
        ncert = 0; /* prepared certificates left out */
    }
    Fedbft__ViewChange out_vc = FEDBFT__VIEW_CHANGE__INIT;
    out_vc.new_view = vc->new_view;
    out_vc.stable_seq = stable;
    out_vc.n_checkpoint_proof = nproof;
    out_vc.checkpoint_proof = proof;
    out_vc.n_prepared = ncert;
    out_vc.prepared = certs;
    out_vc.replica = nd->id;
    pbft_msg *bad = NULL;
    if (pbft_msg_make(FEDBFT__MSG_TYPE__MSG_VIEW_CHANGE, nd->id, &out_vc.base, &nd->signer, NULL,
                      &bad) == 0) {
        w->res->faults[SIM_F_BAD_VC]++;
        sim_trace(w, TR_BYZ, nd->idx, SIM_F_BAD_VC, vc->new_view, how, ncert);
        emit(w, nd, to, bad);
        pbft_msg_unref(bad);
        goto out;
    }
plain:
    emit(w, nd, to, m);
out:
    pbft_msg_unref(fpp);
    free(certs);
    free(proof);
}

/* A VIEW-CHANGE nobody else sent: one replica alone must not move a view. */
static void premature_vc(sim_world *w, sim_node *nd)
{
    if (!nd->up)
        return;
    pbft_status st;
    pbft_get_status(nd->r, &st);
    Fedbft__ViewChange vc = FEDBFT__VIEW_CHANGE__INIT;
    vc.new_view = st.view + rng_range(&w->rng, 1, 3);
    vc.replica = nd->id;
    pbft_msg *m = NULL;
    if (pbft_msg_make(FEDBFT__MSG_TYPE__MSG_VIEW_CHANGE, nd->id, &vc.base, &nd->signer, NULL, &m))
        return;
    w->res->faults[SIM_F_BAD_VC]++;
    sim_trace(w, TR_BYZ, nd->idx, SIM_F_BAD_VC, vc.new_view, 99, 0);
    emit(w, nd, SIM_ALL, m);
    pbft_msg_unref(m);
}

/* ------------------------------------------------------------ garbage */

static void corrupt_send(sim_world *w, sim_node *nd, uint32_t to, const uint8_t *raw, size_t len)
{
    uint8_t buf[4096];
    size_t n = len < sizeof buf - 64 ? len : sizeof buf - 64;
    if (n)
        memcpy(buf, raw, n);
    switch (rng_below(&w->rng, 4)) {
    case 0: /* flip a few bits */
        for (int k = 0; k < 3 && n; k++)
            buf[rng_below(&w->rng, n)] ^= (uint8_t)(1u << rng_below(&w->rng, 8));
        break;
    case 1: /* truncate */
        n = (size_t)rng_below(&w->rng, n + 1);
        break;
    case 2: /* append junk */
        rand_bytes(w, buf + n, 32);
        n += 32;
        break;
    default: /* overwrite a run */
        if (n > 8) {
            size_t at = (size_t)rng_below(&w->rng, n - 8);
            rand_bytes(w, buf + at, 8);
        }
        break;
    }
    w->res->faults[SIM_F_GARBAGE]++;
    node_emit(w, nd, to, buf, n);
}

static void garbage_send(sim_world *w, sim_node *nd, uint32_t to, const pbft_msg *m)
{
    uint64_t how = rng_below(&w->rng, 10);
    if (how < 4) {
        emit(w, nd, to, m);
    } else if (how < 7) {
        emit(w, nd, to, m);
        corrupt_send(w, nd, to, m->raw, m->raw_len);
    } else {
        corrupt_send(w, nd, to, m->raw, m->raw_len);
    }
}

/* Random bytes, or validly signed messages with absurd numbers: views and
 * seqs far out of range must be refused without disturbing anything. */
static void garbage_tick(sim_world *w, sim_node *nd)
{
    uint32_t to = rng_below(&w->rng, 2) ? SIM_ALL : other_id(w, nd);
    uint64_t how = rng_below(&w->rng, 6);
    if (how == 0 || !nd->up) {
        uint8_t buf[200];
        size_t n = (size_t)rng_below(&w->rng, sizeof buf + 1);
        rand_bytes(w, buf, n);
        w->res->faults[SIM_F_GARBAGE]++;
        node_emit(w, nd, to, buf, n);
        return;
    }
    pbft_status st;
    pbft_get_status(nd->r, &st);
    uint8_t d[FB_DIGEST_LEN];
    rand_bytes(w, d, sizeof d);
    uint64_t big = rng_below(&w->rng, 2) ? (1ULL << 62) + rng_below(&w->rng, 1000)
                                         : st.high_watermark + rng_range(&w->rng, 1, 1000);
    uint64_t view = rng_below(&w->rng, 2) ? st.view : st.view + rng_range(&w->rng, 1, 1ULL << 40);
    pbft_msg *m = NULL;
    if (how == 1) {
        m = make_vote(nd, FEDBFT__MSG_TYPE__MSG_PREPARE, nd->id, view, big, d);
    } else if (how == 2) {
        m = make_vote(nd, FEDBFT__MSG_TYPE__MSG_COMMIT, nd->id, view, big, d);
    } else if (how == 3) {
        m = make_checkpoint(nd, nd->id, big, d);
    } else if (how == 4) {
        m = make_pp(nd, nd->id, view, big, 0, NULL, 0, NULL);
    } else {
        Fedbft__ViewChange vc = FEDBFT__VIEW_CHANGE__INIT;
        vc.new_view = (1ULL << 40) + rng_below(&w->rng, 1000);
        vc.stable_seq = big;
        vc.replica = nd->id;
        if (pbft_msg_make(FEDBFT__MSG_TYPE__MSG_VIEW_CHANGE, nd->id, &vc.base, &nd->signer, NULL,
                          &m))
            m = NULL;
    }
    if (!m)
        return;
    w->res->faults[SIM_F_GARBAGE]++;
    sim_trace(w, TR_BYZ, nd->idx, SIM_F_GARBAGE, (uint64_t)m->type, view, big);
    emit(w, nd, to, m);
    pbft_msg_unref(m);
}

/* ------------------------------------------------------------ entry points */

int byz_init(sim_world *w, sim_node *nd)
{
    nd->bz = calloc(1, sizeof *nd->bz);
    if (!nd->bz)
        return -1;
    nd->bz->kind = w->scenario;
    switch (w->scenario) {
    case SIM_SC_REPLAY:
    case SIM_SC_GARBAGE:
    case SIM_SC_FORGE:
    case SIM_SC_BAD_VC:
        sim_schedule(w, w->now + rng_range(&w->rng, 20, 80), EV_BYZ_TICK, nd->idx, 0, NULL);
        break;
    default:
        break;
    }
    return 0;
}

void byz_free(sim_node *nd)
{
    sim_byz *bz = nd->bz;
    if (!bz)
        return;
    for (size_t i = 0; i < bz->nring; i++)
        free(bz->ring[i].raw);
    for (size_t i = 0; i < bz->nreqs; i++)
        pbft_msg_unref(bz->reqs[i]);
    for (size_t i = 0; i < bz->npreps; i++)
        pbft_msg_unref(bz->preps[i]);
    for (size_t i = 0; i < bz->nvcs; i++)
        pbft_msg_unref(bz->vcs[i]);
    pbft_msg_unref(bz->own_vc);
    free(bz);
    nd->bz = NULL;
}

bool byz_is_silent(const sim_world *w, const sim_node *nd)
{
    (void)w;
    return nd->bz && nd->bz->kind == SIM_SC_SILENT;
}

void byz_observe(sim_world *w, sim_node *nd, const pbft_msg *m)
{
    sim_byz *bz = nd->bz;
    switch (m->type) {
    case FEDBFT__MSG_TYPE__MSG_REQUEST:
        keep(bz->reqs, &bz->nreqs, &bz->reqpos, m);
        break;
    case FEDBFT__MSG_TYPE__MSG_PREPARE:
        keep(bz->preps, &bz->npreps, &bz->preppos, m);
        break;
    case FEDBFT__MSG_TYPE__MSG_VIEW_CHANGE:
        keep(bz->vcs, &bz->nvcs, &bz->vcpos, m);
        break;
    default:
        break;
    }
    if (bz->kind == SIM_SC_REPLAY && rng_ppm(&w->rng, 300000))
        record(bz, m->raw, m->raw_len);
}

void byz_send(sim_world *w, sim_node *nd, uint32_t to, const pbft_msg *m)
{
    sim_byz *bz = nd->bz;
    if (m->type == FEDBFT__MSG_TYPE__MSG_VIEW_CHANGE) {
        pbft_msg_unref(bz->own_vc);
        bz->own_vc = pbft_msg_ref((pbft_msg *)m);
    }
    switch (bz->kind) {
    case SIM_SC_SILENT:
        w->res->faults[SIM_F_SILENT]++;
        break;
    case SIM_SC_EQUIVOCATE:
        equivocate_send(w, nd, to, m);
        break;
    case SIM_SC_WRONG_DIGEST:
        wrong_digest_send(w, nd, to, m);
        break;
    case SIM_SC_FORGE:
        forge_send(w, nd, to, m);
        break;
    case SIM_SC_REPLAY:
        if (rng_ppm(&w->rng, 300000))
            record(bz, m->raw, m->raw_len);
        emit(w, nd, to, m);
        break;
    case SIM_SC_BAD_NEW_VIEW:
        if (m->type == FEDBFT__MSG_TYPE__MSG_NEW_VIEW)
            bad_nv_send(w, nd, to, m);
        else
            emit(w, nd, to, m);
        break;
    case SIM_SC_BAD_VC:
        if (m->type == FEDBFT__MSG_TYPE__MSG_VIEW_CHANGE)
            bad_vc_send(w, nd, to, m);
        else
            emit(w, nd, to, m);
        break;
    case SIM_SC_GARBAGE:
        garbage_send(w, nd, to, m);
        break;
    default:
        emit(w, nd, to, m);
        break;
    }
}

void byz_reply(sim_world *w, sim_node *nd, uint32_t client_id, uint64_t ts, uint64_t view,
               uint64_t seq, const uint8_t *res, size_t len)
{
    int kind = nd->bz->kind;
    if (kind == SIM_SC_SILENT) {
        w->res->faults[SIM_F_SILENT]++;
        return;
    }
    if ((kind == SIM_SC_WRONG_DIGEST || kind == SIM_SC_GARBAGE) && len > 0 && len <= 256 &&
        rng_ppm(&w->rng, 500000)) {
        /* A wrong result: alone (f of them) it must never be accepted. */
        uint8_t buf[256];
        memcpy(buf, res, len);
        buf[rng_below(&w->rng, len)] ^= 0x5a;
        w->res->faults[SIM_F_WRONG_REPLY]++;
        net_reply(w, nd->idx, client_id, ts, view, seq, buf, len);
        return;
    }
    net_reply(w, nd->idx, client_id, ts, view, seq, res, len);
}

void byz_tick(sim_world *w, sim_node *nd)
{
    sim_byz *bz = nd->bz;
    switch (bz->kind) {
    case SIM_SC_REPLAY:
        for (uint64_t k = rng_range(&w->rng, 1, 2); k > 0 && bz->nring > 0; k--) {
            const byz_raw *r = &bz->ring[rng_below(&w->rng, bz->nring)];
            uint32_t to = rng_below(&w->rng, 3) ? other_id(w, nd) : SIM_ALL;
            w->res->faults[SIM_F_REPLAY]++;
            node_emit(w, nd, to, r->raw, r->len);
        }
        break;
    case SIM_SC_GARBAGE:
        garbage_tick(w, nd);
        break;
    case SIM_SC_FORGE:
        forge_tick(w, nd);
        break;
    case SIM_SC_BAD_VC:
        if (rng_below(&w->rng, 4) == 0)
            premature_vc(w, nd);
        break;
    default:
        return;
    }
    sim_schedule(w, w->now + rng_range(&w->rng, 20, 80), EV_BYZ_TICK, nd->idx, 0, NULL);
}

bool byz_corrupt_state(sim_world *w, sim_node *nd, const sim_snapshot *good, sim_snapshot *bad)
{
    if (nd->bz->kind == SIM_SC_SILENT || !rng_ppm(&w->rng, 700000))
        return false;
    *bad = *good;
    bad->ct = malloc(good->ct_len ? good->ct_len : 1);
    if (!bad->ct)
        return false;
    if (good->ct_len)
        memcpy(bad->ct, good->ct, good->ct_len);
    if (good->ct_len && rng_below(&w->rng, 2))
        bad->ct[rng_below(&w->rng, good->ct_len)] ^= 1;
    else
        bad->app.chain[rng_below(&w->rng, FB_DIGEST_LEN)] ^= 1;
    return true;
}
