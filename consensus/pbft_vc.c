/* pbft_vc.c - view-change proofs: checking VIEW-CHANGEs, computing O from V,
 * building and checking NEW-VIEW (PBFT OSDI '99 section 4.4, signatures). */
#include "pbft_vc.h"

#include "fb_error.h"
#include "pbft.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define T_PRE_PREPARE FEDBFT__MSG_TYPE__MSG_PRE_PREPARE
#define T_PREPARE FEDBFT__MSG_TYPE__MSG_PREPARE
#define T_CHECKPOINT FEDBFT__MSG_TYPE__MSG_CHECKPOINT
#define T_VIEW_CHANGE FEDBFT__MSG_TYPE__MSG_VIEW_CHANGE
#define T_NEW_VIEW FEDBFT__MSG_TYPE__MSG_NEW_VIEW

/* Room for a nested parse error, which is then quoted inside our own reason. */
#define REASON_LEN 256

/* What checking one VIEW-CHANGE parsed out of it.  Kept while a NEW-VIEW is
 * checked, so each nested message is digested once. */
typedef struct vc_parts {
    pbft_msg **proof; /* the checkpoint proof, in message order */
    size_t nproof;
    pbft_msg **certs; /* each certificate's PRE-PREPARE, in message order */
    size_t ncerts;
} vc_parts;

/* ------------------------------------------------------------ helpers */

static void unref_all(pbft_msg **ms, size_t n)
{
    for (size_t i = 0; i < n; i++)
        pbft_msg_unref(ms[i]);
    free(ms);
}

static void vc_parts_free(vc_parts *vp)
{
    unref_all(vp->proof, vp->nproof);
    unref_all(vp->certs, vp->ncerts);
    memset(vp, 0, sizeof *vp);
}

/* calloc that does not confuse an empty array with a failure. */
static int alloc_array(size_t n, size_t size, void *out)
{
    void *p = NULL;
    if (n > 0 && !(p = calloc(n, size)))
        return FB_ENOMEM;
    memcpy(out, &p, sizeof p);
    return 0;
}

static bool digest_eq(const uint8_t *a, const uint8_t *b)
{
    return memcmp(a, b, FB_DIGEST_LEN) == 0;
}

__attribute__((format(printf, 4, 5))) static int vc_reject(const pbft_msg *vc, char *why,
                                                           size_t whylen, const char *fmt, ...)
{
    char reason[REASON_LEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    return fb_errf(why, whylen, FB_EPROTO, "view-change from %" PRIu32 ": %s", vc->sender, reason);
}

__attribute__((format(printf, 4, 5))) static int nv_reject(uint64_t view, char *why, size_t whylen,
                                                           const char *fmt, ...)
{
    char reason[REASON_LEN];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(reason, sizeof reason, fmt, ap);
    va_end(ap);
    return fb_errf(why, whylen, FB_EPROTO, "new-view for view %" PRIu64 ": %s", view, reason);
}

static const char *type_name(int type)
{
    const ProtobufCEnumValue *v =
        protobuf_c_enum_descriptor_get_value(&fedbft__msg_type__descriptor, type);
    return v ? v->name : "an unknown type";
}

/* Parse an envelope nested in a proof, insisting on the type the protocol
 * puts there. */
static int parse_nested(const Fedbft__Envelope *env, int want, const pbft_req_lookup *lookup,
                        pbft_digest_stats *stats, pbft_msg **out, char *err, size_t errlen)
{
    if (!env)
        return fb_errf(err, errlen, FB_EPROTO, "missing %s envelope", type_name(want));
    if ((int)env->type != want)
        return fb_errf(err, errlen, FB_EPROTO, "%s envelope where %s belongs",
                       type_name((int)env->type), type_name(want));
    return pbft_msg_from_env(env, lookup, stats, out, err, errlen);
}

static int check_params(const pbft_params *p, char *why, size_t whylen)
{
    if (p->n == 0 || p->quorum == 0 || p->quorum > p->n || p->log_window == 0)
        return fb_errf(why, whylen, FB_EINVAL,
                       "view-change parameters invalid: n %" PRIu32 ", quorum %" PRIu32
                       ", log window %" PRIu32,
                       p->n, p->quorum, p->log_window);
    return 0;
}

/* ------------------------------------------------------------ VIEW-CHANGE */

static int check_proof_entry(const pbft_params *p, const pbft_msg *vc, size_t i, const pbft_msg *cp,
                             const pbft_msg *first, uint8_t *seen, char *why, size_t whylen)
{
    const Fedbft__ViewChange *v = vc->u.view_change;
    const Fedbft__Checkpoint *c = cp->u.checkpoint;
    /* payload.replica == sender is enforced by pbft_msg_parse. */
    if (cp->sender >= p->n)
        return vc_reject(vc, why, whylen,
                         "checkpoint proof entry %zu is from %" PRIu32
                         ", not a replica (n = %" PRIu32 ")",
                         i, cp->sender, p->n);
    if (seen[cp->sender])
        return vc_reject(vc, why, whylen,
                         "checkpoint proof has two checkpoints from replica %" PRIu32, cp->sender);
    seen[cp->sender] = 1;
    if (c->seq != v->stable_seq)
        return vc_reject(vc, why, whylen,
                         "checkpoint proof entry %zu is for seq %" PRIu64
                         ", not stable seq %" PRIu64,
                         i, c->seq, v->stable_seq);
    if (!digest_eq(c->state_digest.data, first->u.checkpoint->state_digest.data))
        return vc_reject(vc, why, whylen,
                         "checkpoint proof for seq %" PRIu64
                         " mixes state digests (replicas %" PRIu32 " and %" PRIu32 " differ)",
                         v->stable_seq, first->sender, cp->sender);
    return 0;
}

/* Section 4.4 (C in VIEW-CHANGE) with 4.3: the sender's last stable checkpoint
 * is proven by a quorum of matching CHECKPOINTs from distinct replicas.  The
 * genesis state (seq 0) is stable by definition and carries no proof. */
static int check_proof(const pbft_params *p, const pbft_msg *vc, pbft_digest_stats *stats,
                       vc_parts *parts, char *why, size_t whylen)
{
    const Fedbft__ViewChange *v = vc->u.view_change;
    size_t k = v->n_checkpoint_proof;
    if (v->stable_seq == 0) {
        if (k)
            return vc_reject(vc, why, whylen,
                             "stable seq 0 (genesis) carries a checkpoint proof of %zu messages; "
                             "it needs none",
                             k);
        return 0;
    }
    if (k < p->quorum || k > p->n)
        return vc_reject(vc, why, whylen,
                         "checkpoint proof for seq %" PRIu64 " has %zu checkpoints, needs %" PRIu32
                         " to %" PRIu32,
                         v->stable_seq, k, p->quorum, p->n);
    uint8_t *seen = calloc(p->n, 1);
    int rc = seen ? alloc_array(k, sizeof *parts->proof, &parts->proof) : FB_ENOMEM;
    for (size_t i = 0; rc == 0 && i < k; i++) {
        char inner[REASON_LEN];
        rc = parse_nested(v->checkpoint_proof[i], T_CHECKPOINT, NULL, stats, &parts->proof[i],
                          inner, sizeof inner);
        if (rc) {
            rc = rc == FB_ENOMEM
                     ? rc
                     : vc_reject(vc, why, whylen, "checkpoint proof entry %zu: %s", i, inner);
            break;
        }
        parts->nproof++;
        rc = check_proof_entry(p, vc, i, parts->proof[i], parts->proof[0], seen, why, whylen);
    }
    free(seen);
    return rc;
}

/* Section 4.4: a prepared certificate holds quorum - 1 PREPAREs from distinct
 * backups matching the PRE-PREPARE's (view, seq, digest); the primary's
 * PRE-PREPARE stands for its own vote (section 4.2), so a PREPARE from the
 * primary is tolerated but not counted. */
static int check_prepares(const pbft_params *p, const pbft_msg *vc, const Fedbft__PreparedCert *c,
                          const pbft_msg *ppm, pbft_digest_stats *stats, char *why, size_t whylen)
{
    const Fedbft__PrePrepare *pp = ppm->u.pre_prepare;
    if (c->n_prepares > p->n)
        return vc_reject(vc, why, whylen,
                         "certificate for seq %" PRIu64 " has %zu prepares, more than n = %" PRIu32,
                         pp->seq, c->n_prepares, p->n);
    uint8_t *seen = calloc(p->n, 1);
    if (!seen)
        return FB_ENOMEM;
    int rc = 0;
    uint32_t backups = 0;
    for (size_t j = 0; rc == 0 && j < c->n_prepares; j++) {
        char inner[REASON_LEN];
        pbft_msg *m = NULL;
        rc = parse_nested(c->prepares[j], T_PREPARE, NULL, stats, &m, inner, sizeof inner);
        if (rc) {
            rc = rc == FB_ENOMEM ? rc
                                 : vc_reject(vc, why, whylen,
                                             "certificate for seq %" PRIu64 ": prepare %zu: %s",
                                             pp->seq, j, inner);
            break;
        }
        const Fedbft__Prepare *pr = m->u.prepare;
        if (m->sender >= p->n)
            rc = vc_reject(vc, why, whylen,
                           "certificate for seq %" PRIu64 ": prepare from %" PRIu32
                           " is not from a replica",
                           pp->seq, m->sender);
        else if (pr->view != pp->view || pr->seq != pp->seq ||
                 !digest_eq(pr->digest.data, pp->digest.data))
            rc = vc_reject(vc, why, whylen,
                           "certificate for seq %" PRIu64 " (view %" PRIu64
                           "): prepare from %" PRIu32 " is for view %" PRIu64 ", seq %" PRIu64 "%s",
                           pp->seq, pp->view, m->sender, pr->view, pr->seq,
                           digest_eq(pr->digest.data, pp->digest.data) ? ""
                                                                       : " with another digest");
        else if (seen[m->sender])
            rc = vc_reject(vc, why, whylen,
                           "certificate for seq %" PRIu64 " has two prepares from replica %" PRIu32,
                           pp->seq, m->sender);
        else if (m->sender != ppm->sender)
            backups++;
        if (rc == 0)
            seen[m->sender] = 1;
        pbft_msg_unref(m);
    }
    free(seen);
    if (rc == 0 && backups + 1 < p->quorum)
        rc = vc_reject(vc, why, whylen,
                       "certificate for seq %" PRIu64 " has %" PRIu32
                       " prepares from backups, needs %" PRIu32,
                       pp->seq, backups, p->quorum - 1);
    return rc;
}

/* One entry of P (section 4.4).  seq_seen has L slots for (stable, stable + L]. */
static int check_cert(const pbft_params *p, const pbft_msg *vc, size_t i,
                      const pbft_req_lookup *lookup, pbft_digest_stats *stats, uint8_t *seq_seen,
                      vc_parts *parts, char *why, size_t whylen)
{
    const Fedbft__ViewChange *v = vc->u.view_change;
    const Fedbft__PreparedCert *c = v->prepared[i];
    /* The new primary re-proposes the batch itself, so it must travel whole. */
    if (c->digest_only)
        return vc_reject(vc, why, whylen,
                         "certificate %zu has its batch stripped (digest_only); the batch is "
                         "needed to re-propose it",
                         i);
    char inner[REASON_LEN];
    int rc = parse_nested(c->pre_prepare, T_PRE_PREPARE, lookup, stats, &parts->certs[i], inner,
                          sizeof inner);
    if (rc)
        return rc == FB_ENOMEM ? rc : vc_reject(vc, why, whylen, "certificate %zu: %s", i, inner);
    parts->ncerts++;
    const pbft_msg *ppm = parts->certs[i];
    const Fedbft__PrePrepare *pp = ppm->u.pre_prepare;
    uint32_t primary = pbft_primary(pp->view, p->n);
    if (ppm->sender != primary)
        return vc_reject(vc, why, whylen,
                         "certificate for seq %" PRIu64 ": pre-prepare for view %" PRIu64
                         " is from %" PRIu32 ", not its primary %" PRIu32,
                         pp->seq, pp->view, ppm->sender, primary);
    if (pp->view >= v->new_view)
        return vc_reject(vc, why, whylen,
                         "certificate for seq %" PRIu64 " is from view %" PRIu64
                         ", not before new view %" PRIu64,
                         pp->seq, pp->view, v->new_view);
    /* P holds only what prepared above the stable checkpoint and within the
     * log window (section 4.4 with the watermarks of 4.3). */
    if (pp->seq <= v->stable_seq || pp->seq - v->stable_seq > p->log_window)
        return vc_reject(vc, why, whylen,
                         "certificate for seq %" PRIu64 " is outside (%" PRIu64 ", %" PRIu64 "]",
                         pp->seq, v->stable_seq, v->stable_seq + p->log_window);
    uint8_t *slot = &seq_seen[pp->seq - v->stable_seq - 1];
    if (*slot)
        return vc_reject(vc, why, whylen, "two certificates for seq %" PRIu64, pp->seq);
    *slot = 1;
    return check_prepares(p, vc, c, ppm, stats, why, whylen);
}

static int check_certs(const pbft_params *p, const pbft_msg *vc, const pbft_req_lookup *lookup,
                       pbft_digest_stats *stats, vc_parts *parts, char *why, size_t whylen)
{
    const Fedbft__ViewChange *v = vc->u.view_change;
    if (v->n_prepared == 0)
        return 0;
    uint8_t *seq_seen = calloc(p->log_window, 1);
    int rc = seq_seen ? alloc_array(v->n_prepared, sizeof *parts->certs, &parts->certs) : FB_ENOMEM;
    for (size_t i = 0; rc == 0 && i < v->n_prepared; i++)
        rc = check_cert(p, vc, i, lookup, stats, seq_seen, parts, why, whylen);
    free(seq_seen);
    return rc;
}

/* pbft_vc_check, keeping what it parsed in parts (freed on failure). */
static int vc_check_impl(const pbft_params *p, const pbft_msg *vc, const pbft_req_lookup *lookup,
                         pbft_digest_stats *stats, vc_parts *parts, char *why, size_t whylen)
{
    memset(parts, 0, sizeof *parts);
    if (vc->type != T_VIEW_CHANGE)
        return fb_errf(why, whylen, FB_EPROTO, "%s message from %" PRIu32 " is not a VIEW-CHANGE",
                       type_name(vc->type), vc->sender);
    const Fedbft__ViewChange *v = vc->u.view_change;
    if (v->replica != vc->sender)
        return vc_reject(vc, why, whylen, "names replica %" PRIu32 " as its sender", v->replica);
    if (vc->sender >= p->n)
        return vc_reject(vc, why, whylen, "sender is not a replica (n = %" PRIu32 ")", p->n);
    if (v->new_view == 0)
        return vc_reject(vc, why, whylen, "new view 0 (view changes lead to view 1 or later)");
    if (v->n_prepared > p->log_window)
        return vc_reject(vc, why, whylen,
                         "%zu prepared certificates, more than the log window %" PRIu32,
                         v->n_prepared, p->log_window);
    int rc = check_proof(p, vc, stats, parts, why, whylen);
    if (rc == 0)
        rc = check_certs(p, vc, lookup, stats, parts, why, whylen);
    if (rc)
        vc_parts_free(parts);
    return rc;
}

int pbft_vc_check(const pbft_params *p, const pbft_msg *vc, pbft_digest_stats *stats, char *why,
                  size_t whylen)
{
    int rc = check_params(p, why, whylen);
    if (rc)
        return rc;
    vc_parts parts;
    rc = vc_check_impl(p, vc, NULL, stats, &parts, why, whylen);
    vc_parts_free(&parts);
    return rc;
}

void pbft_vc_stable(const pbft_msg *vc, uint64_t *seq, uint8_t digest[FB_DIGEST_LEN])
{
    const Fedbft__ViewChange *v = vc->u.view_change;
    *seq = v->stable_seq;
    memset(digest, 0, FB_DIGEST_LEN);
    if (v->stable_seq == 0 || v->n_checkpoint_proof == 0)
        return;
    const Fedbft__Envelope *env = v->checkpoint_proof[0];
    Fedbft__Checkpoint *cp = fedbft__checkpoint__unpack(NULL, env->payload.len, env->payload.data);
    /* pbft_vc_check parsed this payload already: only running out of memory
     * can fail here, and then the digest stays zero (matching no proof). */
    if (cp && cp->state_digest.len == FB_DIGEST_LEN)
        memcpy(digest, cp->state_digest.data, FB_DIGEST_LEN);
    if (cp)
        fedbft__checkpoint__free_unpacked(cp, NULL);
}

/* ------------------------------------------------------------ O set */

/* The best certificate seen so far for one seq in (min_s, min_s + L]. */
typedef struct o_cand {
    bool have;
    uint64_t view;
    uint8_t digest[FB_DIGEST_LEN];
    size_t vi, ci; /* V index, certificate index */
} o_cand;

/* V: at least a quorum of VIEW-CHANGEs for new_view from distinct replicas. */
static int check_v(const pbft_params *p, uint64_t new_view, pbft_msg *const *vcs, size_t nvcs,
                   char *why, size_t whylen)
{
    if (nvcs < p->quorum || nvcs > p->n)
        return nv_reject(new_view, why, whylen,
                         "V has %zu view-changes, needs %" PRIu32 " to %" PRIu32, nvcs, p->quorum,
                         p->n);
    uint8_t *seen = calloc(p->n, 1);
    if (!seen)
        return FB_ENOMEM;
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < nvcs; i++) {
        const pbft_msg *m = vcs[i];
        if (m->type != T_VIEW_CHANGE)
            rc = nv_reject(new_view, why, whylen, "V entry %zu is a %s", i, type_name(m->type));
        else if (m->u.view_change->new_view != new_view)
            rc = nv_reject(new_view, why, whylen,
                           "V entry %zu (from %" PRIu32 ") is for view %" PRIu64, i, m->sender,
                           m->u.view_change->new_view);
        else if (m->sender >= p->n)
            rc = nv_reject(new_view, why, whylen, "V entry %zu is from %" PRIu32 ", not a replica",
                           i, m->sender);
        else if (seen[m->sender])
            rc = nv_reject(new_view, why, whylen, "V has two view-changes from replica %" PRIu32,
                           m->sender);
        else
            seen[m->sender] = 1;
    }
    free(seen);
    return rc;
}

/* (view, seq, digest) of a certificate: from what checking parsed, or read
 * from its payload without digesting anything. */
static int cert_summary(const pbft_msg *vc, size_t ci, const vc_parts *parts, uint64_t *view,
                        uint64_t *seq, uint8_t digest[FB_DIGEST_LEN])
{
    if (parts) {
        const Fedbft__PrePrepare *pp = parts->certs[ci]->u.pre_prepare;
        *view = pp->view;
        *seq = pp->seq;
        memcpy(digest, pp->digest.data, FB_DIGEST_LEN);
        return 0;
    }
    const Fedbft__Envelope *env = vc->u.view_change->prepared[ci]->pre_prepare;
    if (!env)
        return FB_EPROTO;
    Fedbft__PrePrepare *pp = fedbft__pre_prepare__unpack(NULL, env->payload.len, env->payload.data);
    if (!pp)
        return FB_EPROTO;
    int rc = pp->digest.len == FB_DIGEST_LEN ? 0 : FB_EPROTO;
    if (rc == 0) {
        *view = pp->view;
        *seq = pp->seq;
        memcpy(digest, pp->digest.data, FB_DIGEST_LEN);
    }
    fedbft__pre_prepare__free_unpacked(pp, NULL);
    return rc;
}

/* Section 4.4: for each seq above min_s, the certificate from the highest
 * view wins.  Certificates at or below min_s are below the stable checkpoint
 * and play no part.  cands has L slots; *max_s grows to the highest seq. */
static int o_select(const pbft_params *p, uint64_t new_view, pbft_msg *const *vcs, size_t nvcs,
                    const vc_parts *parts, uint64_t min_s, o_cand *cands, uint64_t *max_s,
                    char *why, size_t whylen)
{
    for (size_t vi = 0; vi < nvcs; vi++) {
        const Fedbft__ViewChange *v = vcs[vi]->u.view_change;
        if (v->n_prepared > p->log_window)
            return vc_reject(vcs[vi], why, whylen, "%zu prepared certificates, more than L",
                             v->n_prepared);
        for (size_t ci = 0; ci < v->n_prepared; ci++) {
            uint64_t view, seq;
            uint8_t d[FB_DIGEST_LEN];
            if (cert_summary(vcs[vi], ci, parts ? &parts[vi] : NULL, &view, &seq, d))
                return vc_reject(vcs[vi], why, whylen, "certificate %zu does not decode", ci);
            if (seq <= min_s)
                continue;
            if (seq - min_s > p->log_window)
                return nv_reject(new_view, why, whylen,
                                 "certificate for seq %" PRIu64 " from %" PRIu32
                                 " is beyond min_s %" PRIu64 " + L %" PRIu32,
                                 seq, vcs[vi]->sender, min_s, p->log_window);
            o_cand *c = &cands[seq - min_s - 1];
            /* Two certificates for one (view, seq) agree unless more than f
             * replicas are faulty (quorum intersection); the digest order
             * only keeps O independent of V's order even then. */
            if (!c->have || view > c->view ||
                (view == c->view && memcmp(d, c->digest, FB_DIGEST_LEN) < 0)) {
                c->have = true;
                c->view = view;
                memcpy(c->digest, d, FB_DIGEST_LEN);
                c->vi = vi;
                c->ci = ci;
            }
            if (seq > *max_s)
                *max_s = seq;
        }
    }
    return 0;
}

/* Turn the chosen candidates into O's entries: a source PRE-PREPARE for each
 * covered seq, a null batch (section 4.4) for each gap. */
static int o_fill(pbft_msg *const *vcs, const vc_parts *parts, const o_cand *cands,
                  pbft_digest_stats *stats, pbft_o_set *o, char *why, size_t whylen)
{
    uint8_t null_digest[FB_DIGEST_LEN];
    bool have_null = false;
    int rc = alloc_array(o->max_s - o->min_s, sizeof *o->entries, &o->entries);
    for (uint64_t k = 0; rc == 0 && k < o->max_s - o->min_s; k++) {
        pbft_o_entry *e = &o->entries[k];
        const o_cand *c = &cands[k];
        e->seq = o->min_s + 1 + k;
        o->nentries++;
        if (!c->have) {
            if (!have_null)
                pbft_batch_digest(0, NULL, 0, stats, null_digest);
            have_null = true;
            e->null_batch = true;
            memcpy(e->digest, null_digest, FB_DIGEST_LEN);
            continue;
        }
        memcpy(e->digest, c->digest, FB_DIGEST_LEN);
        if (parts) {
            e->source = pbft_msg_ref(parts[c->vi].certs[c->ci]);
            continue;
        }
        char inner[REASON_LEN];
        const Fedbft__Envelope *env = vcs[c->vi]->u.view_change->prepared[c->ci]->pre_prepare;
        rc = parse_nested(env, T_PRE_PREPARE, NULL, stats, &e->source, inner, sizeof inner);
        if (rc)
            rc = rc == FB_ENOMEM
                     ? rc
                     : vc_reject(vcs[c->vi], why, whylen, "certificate %zu: %s", c->ci, inner);
    }
    return rc;
}

static int compute_o_impl(const pbft_params *p, uint64_t new_view, pbft_msg *const *vcs,
                          size_t nvcs, const vc_parts *parts, pbft_digest_stats *stats,
                          pbft_o_set *out, char *why, size_t whylen)
{
    /* min_s: the latest stable checkpoint any VIEW-CHANGE in V proves. */
    size_t mi = 0;
    for (size_t i = 1; i < nvcs; i++)
        if (vcs[i]->u.view_change->stable_seq > vcs[mi]->u.view_change->stable_seq)
            mi = i;
    pbft_o_set o = {0};
    o.min_s = o.max_s = vcs[mi]->u.view_change->stable_seq;
    o.min_s_vc = vcs[mi];
    if (parts && parts[mi].nproof)
        memcpy(o.min_s_digest, parts[mi].proof[0]->u.checkpoint->state_digest.data, FB_DIGEST_LEN);
    else if (!parts)
        pbft_vc_stable(vcs[mi], &o.min_s, o.min_s_digest);

    o_cand *cands = calloc(p->log_window, sizeof *cands);
    if (!cands)
        return FB_ENOMEM;
    int rc = o_select(p, new_view, vcs, nvcs, parts, o.min_s, cands, &o.max_s, why, whylen);
    if (rc == 0)
        rc = o_fill(vcs, parts, cands, stats, &o, why, whylen);
    free(cands);
    if (rc) {
        pbft_o_set_free(&o);
        return rc;
    }
    *out = o;
    return 0;
}

int pbft_vc_compute_o(const pbft_params *p, uint64_t new_view, pbft_msg *const *vcs, size_t nvcs,
                      pbft_digest_stats *stats, pbft_o_set *out, char *why, size_t whylen)
{
    int rc = check_params(p, why, whylen);
    if (rc == 0)
        rc = check_v(p, new_view, vcs, nvcs, why, whylen);
    if (rc == 0)
        rc = compute_o_impl(p, new_view, vcs, nvcs, NULL, stats, out, why, whylen);
    return rc;
}

void pbft_o_set_free(pbft_o_set *o)
{
    if (!o)
        return;
    for (size_t i = 0; i < o->nentries; i++)
        pbft_msg_unref(o->entries[i].source);
    free(o->entries);
    memset(o, 0, sizeof *o);
}

/* ------------------------------------------------------------ NEW-VIEW */

/* One PRE-PREPARE of O for the new view.  A re-proposed batch keeps its
 * requests and nondet, hence its digest; a null batch (section 4.4) has no
 * requests and nondet 0. */
static int make_o_pre_prepare(uint64_t view, uint32_t self, const pbft_o_entry *e,
                              const pbft_signer *signer, pbft_digest_stats *stats, pbft_msg **out)
{
    Fedbft__PrePrepare pp = FEDBFT__PRE_PREPARE__INIT;
    pp.view = view;
    pp.seq = e->seq;
    pp.digest = (ProtobufCBinaryData){FB_DIGEST_LEN, (uint8_t *)e->digest};
    if (!e->source)
        return pbft_msg_make_batch(T_PRE_PREPARE, self, &pp.base, NULL, 0, signer, stats, out);
    const Fedbft__PrePrepare *src = e->source->u.pre_prepare;
    pp.n_requests = src->n_requests;
    pp.requests = src->requests;
    pp.nondet = src->nondet;
    return pbft_msg_make_batch(T_PRE_PREPARE, self, &pp.base, e->source->reqs, e->source->nreqs,
                               signer, stats, out);
}

int pbft_vc_make_new_view(const pbft_params *p, uint64_t new_view, uint32_t self,
                          pbft_msg *const *vcs, size_t nvcs, const pbft_o_set *o,
                          const pbft_signer *signer, pbft_digest_stats *stats, pbft_msg **out)
{
    if (check_params(p, NULL, 0) || new_view == 0 || self != pbft_primary(new_view, p->n) ||
        nvcs < p->quorum || nvcs > p->n || o->max_s < o->min_s ||
        o->nentries != o->max_s - o->min_s || o->nentries > p->log_window ||
        check_v(p, new_view, vcs, nvcs, NULL, 0))
        return FB_EINVAL;
    pbft_msg **pps = NULL;
    Fedbft__Envelope **vc_envs = NULL, **pp_envs = NULL;
    size_t npps = 0;
    int rc = alloc_array(o->nentries, sizeof *pps, &pps);
    if (rc == 0)
        rc = alloc_array(o->nentries, sizeof *pp_envs, &pp_envs);
    if (rc == 0)
        rc = alloc_array(nvcs, sizeof *vc_envs, &vc_envs);
    for (size_t i = 0; rc == 0 && i < o->nentries; i++) {
        rc = make_o_pre_prepare(new_view, self, &o->entries[i], signer, stats, &pps[i]);
        if (rc == 0)
            pp_envs[npps++] = pps[i]->env;
    }
    if (rc == 0) {
        for (size_t i = 0; i < nvcs; i++)
            vc_envs[i] = vcs[i]->env;
        Fedbft__NewView nv = FEDBFT__NEW_VIEW__INIT;
        nv.view = new_view;
        nv.n_view_changes = nvcs;
        nv.view_changes = vc_envs;
        nv.n_pre_prepares = npps;
        nv.pre_prepares = pp_envs;
        rc = pbft_msg_make(T_NEW_VIEW, self, &nv.base, signer, stats, out);
    }
    unref_all(pps, npps);
    free(vc_envs);
    free(pp_envs);
    return rc;
}

/* Everything held while a NEW-VIEW is checked. */
typedef struct nv_state {
    pbft_msg **vcs; /* parsed V */
    vc_parts *parts;
    size_t nvcs;
    pbft_o_set o;
    pbft_msg **pps; /* parsed O */
    size_t npps;
} nv_state;

static void nv_state_free(nv_state *st)
{
    for (size_t i = 0; st->parts && i < st->nvcs; i++)
        vc_parts_free(&st->parts[i]);
    free(st->parts);
    unref_all(st->vcs, st->nvcs);
    pbft_o_set_free(&st->o);
    unref_all(st->pps, st->npps);
    memset(st, 0, sizeof *st);
}

/* Parse V and check each VIEW-CHANGE in it. */
static int nv_check_v(const pbft_params *p, const Fedbft__NewView *nv,
                      const pbft_req_lookup *lookup, pbft_digest_stats *stats, nv_state *st,
                      char *why, size_t whylen)
{
    size_t k = nv->n_view_changes;
    int rc = alloc_array(k, sizeof *st->vcs, &st->vcs);
    if (rc == 0)
        rc = alloc_array(k, sizeof *st->parts, &st->parts);
    for (size_t i = 0; rc == 0 && i < k; i++) {
        char inner[REASON_LEN];
        rc = parse_nested(nv->view_changes[i], T_VIEW_CHANGE, NULL, stats, &st->vcs[i], inner,
                          sizeof inner);
        if (rc)
            return rc == FB_ENOMEM ? rc
                                   : nv_reject(nv->view, why, whylen, "V entry %zu: %s", i, inner);
        st->nvcs++;
    }
    if (rc == 0)
        rc = check_v(p, nv->view, st->vcs, st->nvcs, why, whylen);
    for (size_t i = 0; rc == 0 && i < st->nvcs; i++) {
        char inner[REASON_LEN];
        rc = vc_check_impl(p, st->vcs[i], lookup, stats, &st->parts[i], inner, sizeof inner);
        if (rc)
            rc = rc == FB_ENOMEM ? rc : nv_reject(nv->view, why, whylen, "%s", inner);
    }
    return rc;
}

/* Lookup for O's requests: they are the source batches' requests byte for
 * byte and in order, so the next one is tried first, then the caller's. */
typedef struct o_lookup {
    const pbft_req_lookup *outer;
    const pbft_msg *source;
    size_t next;
} o_lookup;

static pbft_msg *o_find(void *arg, uint32_t client, uint64_t timestamp, const uint8_t *raw,
                        size_t len)
{
    o_lookup *ol = arg;
    if (ol->source && ol->next < ol->source->nreqs) {
        pbft_msg *r = ol->source->reqs[ol->next];
        if (r->raw_len == len && memcmp(r->raw, raw, len) == 0) {
            ol->next++;
            return r;
        }
    }
    if (ol->outer && ol->outer->find)
        return ol->outer->find(ol->outer->arg, client, timestamp, raw, len);
    return NULL;
}

static int nv_check_o_entry(uint64_t view, uint32_t primary, const pbft_o_entry *e,
                            const pbft_msg *m, char *why, size_t whylen)
{
    const Fedbft__PrePrepare *pp = m->u.pre_prepare;
    if (m->sender != primary)
        return nv_reject(view, why, whylen,
                         "O pre-prepare for seq %" PRIu64 " is from %" PRIu32
                         ", not the primary %" PRIu32,
                         pp->seq, m->sender, primary);
    if (pp->view != view)
        return nv_reject(view, why, whylen,
                         "O pre-prepare for seq %" PRIu64 " is for view %" PRIu64, pp->seq,
                         pp->view);
    if (pp->seq != e->seq)
        return nv_reject(view, why, whylen, "O has seq %" PRIu64 " where seq %" PRIu64 " belongs",
                         pp->seq, e->seq);
    if (!digest_eq(pp->digest.data, e->digest))
        return nv_reject(view, why, whylen,
                         "O pre-prepare for seq %" PRIu64 " has the wrong batch (V gives %s)",
                         pp->seq, e->null_batch ? "a null batch" : "a prepared batch");
    return 0;
}

/* Section 4.4: backups recompute O from V and accept only the same O, in
 * seq order, signed by the new primary. */
static int nv_check_o(const pbft_msg *nvm, const pbft_req_lookup *lookup, pbft_digest_stats *stats,
                      nv_state *st, char *why, size_t whylen)
{
    const Fedbft__NewView *nv = nvm->u.new_view;
    if (nv->n_pre_prepares != st->o.nentries)
        return nv_reject(nv->view, why, whylen,
                         "O has %zu pre-prepares, V gives %zu for seqs (%" PRIu64 ", %" PRIu64 "]",
                         nv->n_pre_prepares, st->o.nentries, st->o.min_s, st->o.max_s);
    int rc = alloc_array(st->o.nentries, sizeof *st->pps, &st->pps);
    for (size_t k = 0; rc == 0 && k < st->o.nentries; k++) {
        const pbft_o_entry *e = &st->o.entries[k];
        o_lookup ol = {lookup, e->source, 0};
        pbft_req_lookup l = {o_find, &ol};
        char inner[REASON_LEN];
        rc = parse_nested(nv->pre_prepares[k], T_PRE_PREPARE, &l, stats, &st->pps[k], inner,
                          sizeof inner);
        if (rc)
            return rc == FB_ENOMEM ? rc
                                   : nv_reject(nv->view, why, whylen, "O entry %zu: %s", k, inner);
        st->npps++;
        rc = nv_check_o_entry(nv->view, nvm->sender, e, st->pps[k], why, whylen);
    }
    return rc;
}

/* Move what the checks established into info. */
static int nv_fill_info(nv_state *st, uint64_t view, pbft_new_view_info *out)
{
    size_t mi = 0;
    while (st->vcs[mi] != st->o.min_s_vc)
        mi++;
    const vc_parts *proof = &st->parts[mi];
    pbft_new_view_info info = {0};
    if (alloc_array(proof->nproof, sizeof *info.min_s_proof, &info.min_s_proof))
        return FB_ENOMEM;
    for (size_t i = 0; i < proof->nproof; i++)
        info.min_s_proof[i] = pbft_msg_ref(proof->proof[i]);
    info.nproof = proof->nproof;
    info.view = view;
    info.min_s = st->o.min_s;
    memcpy(info.min_s_digest, st->o.min_s_digest, FB_DIGEST_LEN);
    info.pre_prepares = st->pps;
    info.npre_prepares = st->npps;
    info.vcs = st->vcs;
    info.nvcs = st->nvcs;
    st->pps = NULL;
    st->npps = 0;
    st->vcs = NULL;
    for (size_t i = 0; i < st->nvcs; i++)
        vc_parts_free(&st->parts[i]);
    st->nvcs = 0;
    *out = info;
    return 0;
}

int pbft_vc_check_new_view(const pbft_params *p, const pbft_msg *nvm, const pbft_req_lookup *lookup,
                           pbft_digest_stats *stats, pbft_new_view_info *out, char *why,
                           size_t whylen)
{
    int rc = check_params(p, why, whylen);
    if (rc)
        return rc;
    if (nvm->type != T_NEW_VIEW)
        return fb_errf(why, whylen, FB_EPROTO, "%s message from %" PRIu32 " is not a NEW-VIEW",
                       type_name(nvm->type), nvm->sender);
    const Fedbft__NewView *nv = nvm->u.new_view;
    if (nv->view == 0)
        return nv_reject(nv->view, why, whylen, "view 0 is not reached by a view change");
    uint32_t primary = pbft_primary(nv->view, p->n);
    if (nvm->sender != primary)
        return nv_reject(nv->view, why, whylen, "sent by %" PRIu32 ", but its primary is %" PRIu32,
                         nvm->sender, primary);
    /* Bound the work before parsing anything nested. */
    if (nv->n_view_changes < p->quorum || nv->n_view_changes > p->n)
        return nv_reject(nv->view, why, whylen,
                         "V has %zu view-changes, needs %" PRIu32 " to %" PRIu32,
                         nv->n_view_changes, p->quorum, p->n);
    if (nv->n_pre_prepares > p->log_window)
        return nv_reject(nv->view, why, whylen,
                         "O has %zu pre-prepares, more than the log window %" PRIu32,
                         nv->n_pre_prepares, p->log_window);
    nv_state st = {0};
    rc = nv_check_v(p, nv, lookup, stats, &st, why, whylen);
    if (rc == 0)
        rc = compute_o_impl(p, nv->view, st.vcs, st.nvcs, st.parts, stats, &st.o, why, whylen);
    if (rc == 0)
        rc = nv_check_o(nvm, lookup, stats, &st, why, whylen);
    if (rc == 0)
        rc = nv_fill_info(&st, nv->view, out);
    nv_state_free(&st);
    return rc;
}

void pbft_new_view_info_free(pbft_new_view_info *info)
{
    if (!info)
        return;
    unref_all(info->min_s_proof, info->nproof);
    unref_all(info->pre_prepares, info->npre_prepares);
    unref_all(info->vcs, info->nvcs);
    memset(info, 0, sizeof *info);
}
