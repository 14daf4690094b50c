/* pbft_vc.h - view-change proofs as pure functions: checking a VIEW-CHANGE's
 * contents, computing the O set from the V set, building and checking
 * NEW-VIEW (PBFT OSDI '99 section 4.4, signature variant).
 *
 * Every function trusts the signatures inside the messages (the caller
 * verified them with pbft_msg_signatures) and checks everything else:
 * senders, views, sequence ranges, quorum sizes, distinctness, digests.
 *
 * Definitions (V = the VIEW-CHANGE messages of a NEW-VIEW):
 *   min_s = the highest stable_seq in V (its checkpoint proof travels along);
 *   max_s = the highest seq of any prepared certificate in V (>= min_s);
 *   O     = for every seq in (min_s, max_s]: a PRE-PREPARE for the new view
 *           carrying the batch of the certificate at that seq with the highest
 *           view, or - when no certificate in V covers seq - a null batch (no
 *           requests, nondet 0; its digest is pbft_batch_digest(0, NULL, 0)).
 *
 * Thread-safety: reentrant.
 */
#ifndef PBFT_VC_H
#define PBFT_VC_H

#include "pbft_msg.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct pbft_params {
    uint32_t n;          /* replicas */
    uint32_t quorum;     /* pbft_quorum(n) */
    uint32_t log_window; /* L */
} pbft_params;

/* Check a parsed VIEW-CHANGE (type MSG_VIEW_CHANGE):
 *  - payload.replica == envelope sender < n; new_view >= 1;
 *  - checkpoint proof: stable_seq == 0 needs none (genesis); otherwise at
 *    least quorum CHECKPOINT envelopes from distinct replicas (< n), each with
 *    seq == stable_seq, the same state_digest, payload.replica == its sender;
 *  - each prepared certificate: a PRE-PREPARE sent by pbft_primary(view) with
 *    view < new_view and stable_seq < seq <= stable_seq + L, whose batch
 *    digest checks out (pbft_msg_parse recomputes it); and at least quorum - 1
 *    PREPAREs from distinct replicas other than that primary, each matching
 *    (view, seq, digest) with payload.replica == sender;
 *  - at most one certificate per seq.
 * Also (choices of this implementation): a proof at stable_seq 0 is rejected;
 * duplicate senders among checkpoints or a certificate's prepares are
 * rejected; a PREPARE from the certificate's primary is tolerated but not
 * counted; a certificate with digest_only set is rejected (its batch is
 * needed to re-propose it); at most n checkpoints, n prepares per
 * certificate and L certificates are accepted.
 * Returns 0, or FB_EPROTO with the reason in why. */
int pbft_vc_check(const pbft_params *p, const pbft_msg *vc, pbft_digest_stats *stats, char *why,
                  size_t whylen);

/* The stable checkpoint a VIEW-CHANGE proves: seq and state digest (zero
 * digest for seq 0).  vc must have passed pbft_vc_check. */
void pbft_vc_stable(const pbft_msg *vc, uint64_t *seq, uint8_t digest[FB_DIGEST_LEN]);

typedef struct pbft_o_entry {
    uint64_t seq;
    bool null_batch;               /* no certificate covered seq */
    uint8_t digest[FB_DIGEST_LEN]; /* batch digest to re-propose */
    pbft_msg *source;              /* the chosen certificate's PRE-PREPARE (a reference),
                                      NULL for a null batch */
} pbft_o_entry;

typedef struct pbft_o_set {
    uint64_t min_s, max_s;
    uint8_t min_s_digest[FB_DIGEST_LEN]; /* checkpoint digest at min_s */
    const pbft_msg *min_s_vc;            /* the VIEW-CHANGE whose proof covers min_s (borrowed) */
    pbft_o_entry *entries;               /* max_s - min_s entries, by seq */
    size_t nentries;
} pbft_o_set;

/* Compute O from V.  vcs: distinct senders, each passed pbft_vc_check with
 * new_view equal to new_view; nvcs >= quorum.  FB_EPROTO if not, FB_ENOMEM.
 * The shape of V (types, view, distinct senders < n, quorum <= nvcs <= n) is
 * checked here; pbft_vc_check is not re-run, but a certificate beyond
 * min_s + L is still refused.  min_s_vc is the first VIEW-CHANGE in V with
 * the highest stable_seq.  Two certificates for one seq from the same view
 * (possible only with more than f faults) resolve to the lower digest, so O
 * does not depend on V's order. */
int pbft_vc_compute_o(const pbft_params *p, uint64_t new_view, pbft_msg *const *vcs, size_t nvcs,
                      pbft_digest_stats *stats, pbft_o_set *out, char *why, size_t whylen);
void pbft_o_set_free(pbft_o_set *o);

/* New primary: sign the O set's PRE-PREPAREs for new_view (each re-proposes
 * its source's requests and nondet unchanged, so the digest is unchanged) and
 * the NEW-VIEW carrying vcs and them, O in seq order.  self must be
 * pbft_primary(new_view) and V well-formed as for pbft_vc_compute_o, else
 * FB_EINVAL. */
int pbft_vc_make_new_view(const pbft_params *p, uint64_t new_view, uint32_t self,
                          pbft_msg *const *vcs, size_t nvcs, const pbft_o_set *o,
                          const pbft_signer *signer, pbft_digest_stats *stats, pbft_msg **out);

/* What a valid NEW-VIEW establishes. */
typedef struct pbft_new_view_info {
    uint64_t view;
    uint64_t min_s;
    uint8_t min_s_digest[FB_DIGEST_LEN];
    pbft_msg **min_s_proof; /* quorum of CHECKPOINT messages for min_s (references) */
    size_t nproof;
    pbft_msg **pre_prepares; /* parsed O, one per seq in (min_s, max_s], by seq (references) */
    size_t npre_prepares;
    pbft_msg **vcs; /* parsed V (references) */
    size_t nvcs;
} pbft_new_view_info;

/* Check a NEW-VIEW: sender == pbft_primary(view), view >= 1; V holds quorum
 * to n VIEW-CHANGEs for view from distinct replicas, each passing
 * pbft_vc_check; O recomputed from V matches the message's PRE-PREPAREs
 * exactly (seqs (min_s, max_s] in seq order, each sent by the primary for
 * view with the computed digest; at most L of them).
 * On success fills out (free with pbft_new_view_info_free).  lookup lets
 * nested requests reuse known digests; O's requests also reuse the
 * certificates' (each nested message is digested once).  min_s_proof is the
 * whole proof of min_s_vc.  FB_EPROTO with the reason. */
int pbft_vc_check_new_view(const pbft_params *p, const pbft_msg *nv, const pbft_req_lookup *lookup,
                           pbft_digest_stats *stats, pbft_new_view_info *out, char *why,
                           size_t whylen);
void pbft_new_view_info_free(pbft_new_view_info *info);

#endif
