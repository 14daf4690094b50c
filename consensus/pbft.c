/* pbft.c - the PBFT replica: normal case, checkpoints, view changes, state
 * transfer triggers, client table, timers.  Pure: see pbft.h.
 *
 * Section references are to Castro & Liskov, "Practical Byzantine Fault
 * Tolerance", OSDI '99.
 */
#include "pbft.h"

#include "fb_error.h"
#include "pbft_clients.h"
#include "pbft_vc.h"

#include <stdlib.h>
#include <string.h>

#define MAX_READONLY 256 /* read-only requests waiting for an idle executor */
#define MAX_EARLY 1024   /* messages held for just above the window (hold_early) */
#define FETCH_RETRY_MS 1000
#define NO_DEADLINE UINT64_MAX

#define SKIPPED_PREPARE 1 /* slot.skipped bits (pbft_vote_skip) */
#define SKIPPED_COMMIT 2

/* One sequence number in the window (h, h + L]. */
typedef struct slot {
    uint64_t seq; /* 0 = unused */
    pbft_msg *pp; /* accepted PRE-PREPARE (its view is pp_view) */
    uint64_t pp_view;
    pbft_msg **prepares;   /* [n] by sender, for pp_view */
    pbft_msg **commits;    /* [n] by sender, for pp_view */
    uint64_t *helped_at;   /* [n] when we last answered that replica's retransmission */
    uint8_t *skipped;      /* [n] SKIPPED_*: that replica's first vote, dropped unverified */
    uint64_t committed_at; /* ms */
    bool prepared, committed, executed;
    bool own_commit_sent;
    /* The prepared certificate from the highest view in which this seq
     * prepared here: survives view changes (section 4.4, the P set). */
    pbft_msg *cert_pp;
    pbft_msg **cert_prepares; /* quorum - 1 of them */
    uint32_t ncert;
} slot;

/* CHECKPOINT messages for one sequence number, by sender. */
typedef struct ckpt {
    uint64_t seq;    /* 0 = unused */
    pbft_msg **msgs; /* [n] */
    bool own;
    uint8_t own_digest[FB_DIGEST_LEN];
} ckpt;

struct pbft_replica {
    pbft_config cfg;
    pbft_params params;
    uint32_t n, f, quorum;
    uint64_t now;

    /* view state (section 4.4): during a change, view is the target view */
    uint64_t view;
    bool view_changing;
    uint32_t vc_backoff;   /* consecutive view changes without progress */
    uint64_t view_changes; /* completed */
    pbft_msg **vcs;        /* [n] latest valid VIEW-CHANGE per sender */
    bool *target_live;     /* [n] sent ordering traffic in our target view while we change */
    pbft_msg *new_view;    /* the NEW-VIEW that installed the current view */

    /* log window */
    slot *slots; /* [L], slot for seq at seq % L */
    uint64_t h;  /* stable checkpoint (low watermark) */
    uint8_t h_digest[FB_DIGEST_LEN];
    pbft_msg **h_proof; /* [quorum] */
    uint32_t nh_proof;
    ckpt *ckpts; /* [L / K + 1] */
    uint32_t nckpts;
    pbft_msg **far_ckpt; /* [n] each sender's newest CHECKPOINT above H */
    pbft_msg **early;    /* [early_cap] PRE-PREPAREs and votes for (H, H + L], */
    uint32_t nearly;     /* stepped again when the window moves (step_early) */
    uint32_t early_cap;

    uint64_t next_seq;      /* primary: next sequence number to assign */
    uint64_t last_executed; /* highest executed seq */
    uint64_t last_committed;
    uint64_t exec_inflight; /* seq of the outstanding EXECUTE, 0 if none */
    pbft_msg **exec_reqs;   /* requests of the outstanding EXECUTE */
    size_t nexec_reqs, exec_cap;
    bool ro_inflight;
    uint8_t *ro_result; /* copy of the last read-only result (actions point here) */
    size_t ro_result_len;
    pbft_msg *ro_queue[MAX_READONLY];
    uint32_t ro_head, ro_count;

    /* state transfer */
    uint64_t fetching; /* target seq, 0 if none */
    bool fetch_failed; /* the node found no peer to serve it: a newer one may replace it */
    uint8_t fetch_digest[FB_DIGEST_LEN];
    uint64_t fetch_retry_at;

    /* after a wipe (pbft_abstain_after_wipe) */
    bool abstain_pending;   /* no stable checkpoint known yet: vote for nothing */
    uint64_t abstain_until; /* vote for no seq <= this */

    pbft_clients clients;

    /* timers (absolute ms; NO_DEADLINE = off) */
    uint64_t batch_at, request_at, vc_at, retransmit_at;
    uint64_t timer_emitted;

    /* output */
    pbft_action *acts;
    size_t nacts, acts_cap;
    pbft_msg **held; /* references kept alive until the next step */
    size_t nheld, held_cap;

    pbft_digest_stats digests;
    uint64_t rejected_by[PBFT_REJ_COUNT]; /* see pbft_reject */
    bool restored;                        /* set by pbft_restore until the first step */
    uint64_t last_proposal_at;            /* ms, primary */
};

/* ------------------------------------------------------------ output */

static void reject(pbft_replica *r, pbft_reject why)
{
    r->rejected_by[why]++;
}

static void hold(pbft_replica *r, pbft_msg *m)
{
    if (r->nheld == r->held_cap) {
        size_t cap = r->held_cap ? r->held_cap * 2 : 64;
        pbft_msg **p = realloc(r->held, cap * sizeof *p);
        if (!p)
            abort(); /* out of memory mid-step: nothing sane to do */
        r->held = p;
        r->held_cap = cap;
    }
    r->held[r->nheld++] = pbft_msg_ref(m);
}

static pbft_action *push(pbft_replica *r, pbft_action_kind kind)
{
    if (r->nacts == r->acts_cap) {
        size_t cap = r->acts_cap ? r->acts_cap * 2 : 64;
        pbft_action *p = realloc(r->acts, cap * sizeof *p);
        if (!p)
            abort();
        r->acts = p;
        r->acts_cap = cap;
    }
    pbft_action *a = &r->acts[r->nacts++];
    memset(a, 0, sizeof *a);
    a->kind = kind;
    return a;
}

static void send_to(pbft_replica *r, uint32_t to, pbft_msg *m)
{
    if (to == r->cfg.id)
        return;
    pbft_action *a = push(r, PBFT_ACT_SEND);
    a->to = to;
    a->msg = m;
    hold(r, m);
}

static void broadcast(pbft_replica *r, pbft_msg *m)
{
    pbft_action *a = push(r, PBFT_ACT_BROADCAST);
    a->msg = m;
    hold(r, m);
}

static void persist_msg(pbft_replica *r, pbft_msg *m)
{
    pbft_action *a = push(r, PBFT_ACT_PERSIST);
    a->record.kind = PBFT_REC_MSG;
    a->record.msg = m;
    hold(r, m);
}

static void persist_view(pbft_replica *r)
{
    pbft_action *a = push(r, PBFT_ACT_PERSIST);
    a->record.kind = PBFT_REC_VIEW;
    a->record.view = r->view;
    a->record.view_changing = r->view_changing;
}

static void persist_stable(pbft_replica *r, uint64_t seq)
{
    pbft_action *a = push(r, PBFT_ACT_PERSIST);
    a->record.kind = PBFT_REC_STABLE;
    a->record.seq = seq;
}

static void persist_abstain(pbft_replica *r, uint64_t seq)
{
    pbft_action *a = push(r, PBFT_ACT_PERSIST);
    a->record.kind = PBFT_REC_ABSTAIN;
    a->record.seq = seq;
}

static int make(pbft_replica *r, int type, const ProtobufCMessage *payload, pbft_msg **out)
{
    return pbft_msg_make(type, r->cfg.id, payload, &r->cfg.signer, &r->digests, out);
}

/* ------------------------------------------------------------ arithmetic */

static uint32_t primary_of(const pbft_replica *r, uint64_t view)
{
    return pbft_primary(view, r->n);
}

static bool is_primary(const pbft_replica *r)
{
    return primary_of(r, r->view) == r->cfg.id;
}

static uint64_t high_mark(const pbft_replica *r)
{
    return r->h + r->cfg.log_window;
}

/* A PRE-PREPARE, PREPARE or COMMIT (verified) for a seq in (H, H + L]: the
 * sender's window moved before ours.  It is kept (up to early_cap, beyond that
 * the sender's retransmission brings it) and stepped again once a stable
 * checkpoint moves H past it, instead of waiting retransmit_ms for it. */
static void hold_early(pbft_replica *r, pbft_msg *m, uint64_t seq)
{
    if (seq <= high_mark(r) || seq > high_mark(r) + r->cfg.log_window || r->nearly == r->early_cap)
        return;
    uint32_t mine = 0; /* a share per sender: a faulty one cannot crowd out the rest */
    for (uint32_t i = 0; i < r->nearly; i++)
        mine += r->early[i]->sender == m->sender;
    if (mine >= r->early_cap / r->n)
        return;
    r->early[r->nearly++] = pbft_msg_ref(m);
}

static bool in_window(const pbft_replica *r, uint64_t seq)
{
    return seq > r->h && seq <= high_mark(r);
}

static bool digest_eq(const uint8_t *a, const uint8_t *b)
{
    return memcmp(a, b, FB_DIGEST_LEN) == 0;
}

/* After a wipe: may we not vote on seq (PRE-PREPARE, PREPARE, COMMIT)? */
static bool abstains(const pbft_replica *r, uint64_t seq)
{
    return r->abstain_pending || seq <= r->abstain_until;
}

/* ...nor on views: a VIEW-CHANGE or NEW-VIEW speaks for (h, h + L]. */
static bool abstains_from_views(const pbft_replica *r)
{
    return r->abstain_pending || r->h < r->abstain_until;
}

/* ------------------------------------------------------------ config */

int pbft_config_check(pbft_config *c, char *err, size_t errlen)
{
    if (c->n < 4)
        return fb_errf(err, errlen, FB_EINVAL, "n = %u replicas; PBFT needs at least 4", c->n);
    if (c->id >= c->n)
        return fb_errf(err, errlen, FB_EINVAL, "replica id %u is not below n = %u", c->id, c->n);
    if (!c->signer.sign)
        return fb_errf(err, errlen, FB_EINVAL, "no signer configured");
    if (!c->checkpoint_interval)
        c->checkpoint_interval = 16;
    if (!c->log_window)
        c->log_window = 4 * c->checkpoint_interval;
    if (c->log_window % c->checkpoint_interval || c->log_window < 2 * c->checkpoint_interval)
        return fb_errf(err, errlen, FB_EINVAL,
                       "log_window %u must be a multiple of checkpoint_interval %u and at least "
                       "twice it",
                       c->log_window, c->checkpoint_interval);
    if (c->log_window > 1u << 16)
        return fb_errf(err, errlen, FB_EINVAL, "log_window %u is too large (max 65536)",
                       c->log_window);
    if (!c->batch_max_requests)
        c->batch_max_requests = 64;
    if (!c->batch_max_bytes)
        c->batch_max_bytes = 256 * 1024;
    if (!c->batch_max_delay_ms)
        c->batch_max_delay_ms = 2;
    if (!c->max_inflight)
        c->max_inflight = c->log_window / 2;
    if (c->max_inflight > c->log_window)
        c->max_inflight = c->log_window;
    if (!c->max_pending)
        c->max_pending = 4096;
    if (!c->max_clients)
        c->max_clients = 4096;
    if (!c->max_result_bytes)
        c->max_result_bytes = PBFT_DEFAULT_MAX_RESULT;
    if (!c->request_timeout_ms)
        c->request_timeout_ms = 2000;
    if (!c->view_change_timeout_ms)
        c->view_change_timeout_ms = 2000;
    if (!c->retransmit_ms)
        c->retransmit_ms = 500;
    if (!c->view_change_max_backoff)
        c->view_change_max_backoff = 4;
    if (c->view_change_max_backoff > 16)
        return fb_errf(err, errlen, FB_EINVAL, "view_change_max_backoff %u is above 16",
                       c->view_change_max_backoff);
    return 0;
}

/* ------------------------------------------------------------ slots */

static slot *slot_at(const pbft_replica *r, uint64_t seq)
{
    return &r->slots[seq % r->cfg.log_window];
}

static void release_votes(pbft_replica *r, slot *s)
{
    for (uint32_t i = 0; i < r->n; i++) {
        pbft_msg_unref(s->prepares[i]);
        pbft_msg_unref(s->commits[i]);
        s->prepares[i] = s->commits[i] = NULL;
    }
}

static void release_cert(slot *s)
{
    pbft_msg_unref(s->cert_pp);
    s->cert_pp = NULL;
    for (uint32_t i = 0; i < s->ncert; i++)
        pbft_msg_unref(s->cert_prepares[i]);
    s->ncert = 0;
}

static void slot_reset(pbft_replica *r, slot *s)
{
    release_votes(r, s);
    release_cert(s);
    pbft_msg_unref(s->pp);
    pbft_msg **p = s->prepares, **c = s->commits, **cp = s->cert_prepares;
    uint64_t *helped = s->helped_at;
    uint8_t *skipped = s->skipped;
    memset(s, 0, sizeof *s);
    s->prepares = p;
    s->commits = c;
    s->cert_prepares = cp;
    s->helped_at = helped;
    s->skipped = skipped;
    memset(helped, 0, r->n * sizeof *helped);
    memset(skipped, 0, r->n);
}

/* The slot for seq, claimed if unused.  NULL outside the window. */
static slot *slot_for(pbft_replica *r, uint64_t seq)
{
    if (!in_window(r, seq))
        return NULL;
    slot *s = slot_at(r, seq);
    if (s->seq != seq) {
        slot_reset(r, s);
        s->seq = seq;
    }
    return s;
}

/* Does the batch carry this request (same client and timestamp)? */
static bool pp_carries(const pbft_msg *pp, const pbft_msg *req)
{
    for (size_t i = 0; i < pp->nreqs; i++)
        if (pp->reqs[i]->u.request->client == req->u.request->client &&
            pp->reqs[i]->u.request->timestamp == req->u.request->timestamp)
            return true;
    return false;
}

static const uint8_t *pp_digest(const pbft_msg *pp)
{
    return pp->u.pre_prepare->digest.data;
}

/* ------------------------------------------------------------ checkpoints */

static ckpt *ckpt_for(pbft_replica *r, uint64_t seq, bool create)
{
    ckpt *free_slot = NULL;
    for (uint32_t i = 0; i < r->nckpts; i++) {
        ckpt *c = &r->ckpts[i];
        if (c->seq == seq)
            return c;
        if (c->seq == 0 && !free_slot)
            free_slot = c;
    }
    if (!create || !free_slot)
        return NULL;
    free_slot->seq = seq;
    free_slot->own = false;
    return free_slot;
}

static void ckpt_release(pbft_replica *r, ckpt *c)
{
    for (uint32_t i = 0; i < r->n; i++) {
        pbft_msg_unref(c->msgs[i]);
        c->msgs[i] = NULL;
    }
    c->seq = 0;
    c->own = false;
}

static void set_stable_proof(pbft_replica *r, uint64_t seq, const uint8_t digest[FB_DIGEST_LEN],
                             pbft_msg *const *proof, uint32_t nproof)
{
    for (uint32_t i = 0; i < r->nh_proof; i++)
        pbft_msg_unref(r->h_proof[i]);
    r->nh_proof = 0;
    for (uint32_t i = 0; i < nproof && i < r->quorum; i++)
        r->h_proof[r->nh_proof++] = pbft_msg_ref(proof[i]);
    r->h = seq;
    memcpy(r->h_digest, digest, FB_DIGEST_LEN);
}

/* Discard everything at or below the stable checkpoint (section 4.3). */
static void garbage_collect(pbft_replica *r)
{
    for (uint32_t i = 0; i < r->cfg.log_window; i++) {
        slot *s = &r->slots[i];
        if (s->seq != 0 && s->seq <= r->h)
            slot_reset(r, s);
    }
    for (uint32_t i = 0; i < r->nckpts; i++)
        if (r->ckpts[i].seq != 0 && r->ckpts[i].seq <= r->h)
            ckpt_release(r, &r->ckpts[i]);
    for (uint32_t i = 0; i < r->n; i++) {
        pbft_msg *m = r->far_ckpt[i];
        if (m && m->u.checkpoint->seq <= r->h) {
            pbft_msg_unref(m);
            r->far_ckpt[i] = NULL;
        }
    }
    if (r->next_seq <= r->h)
        r->next_seq = r->h + 1;
    if (r->last_committed < r->h)
        r->last_committed = r->h;
}

static void start_fetch(pbft_replica *r, uint64_t seq, const uint8_t digest[FB_DIGEST_LEN]);

/* Make (seq, digest) the stable checkpoint, proven by proof. */
static void make_stable(pbft_replica *r, uint64_t seq, const uint8_t digest[FB_DIGEST_LEN],
                        pbft_msg *const *proof, uint32_t nproof)
{
    for (uint32_t i = 0; i < nproof && i < r->quorum; i++)
        persist_msg(r, proof[i]);
    persist_stable(r, seq);
    if (r->abstain_pending) {
        /* The first stable checkpoint after a wipe: everything we may have
         * voted for before it lies at or below seq + L. */
        r->abstain_pending = false;
        r->abstain_until = seq + r->cfg.log_window;
        persist_abstain(r, r->abstain_until);
    }
    set_stable_proof(r, seq, digest, proof, nproof);
    garbage_collect(r);
    if (r->last_executed < seq)
        start_fetch(r, seq, digest);
}

/* Count CHECKPOINTs for c->seq matching digest; fill proof. */
static uint32_t ckpt_matching(const pbft_replica *r, const ckpt *c, const uint8_t *digest,
                              pbft_msg **proof)
{
    uint32_t k = 0;
    for (uint32_t i = 0; i < r->n; i++) {
        pbft_msg *m = c->msgs[i];
        if (m && digest_eq(m->u.checkpoint->state_digest.data, digest))
            proof[k++] = m;
    }
    return k;
}

/* A checkpoint with a quorum of matching messages becomes stable.  If we have
 * not executed that far and cannot, we fetch the state (section 4.3 / 5). */
/* force: make a certified checkpoint stable even when the log could reach it
 * (used when the checkpoint being fetched turned out to be unservable). */
static bool try_stabilize_ex(pbft_replica *r, ckpt *c, bool force)
{
    if (c->seq <= r->h)
        return false;
    pbft_msg *proof[r->n];
    for (uint32_t i = 0; i < r->n; i++) {
        pbft_msg *m = c->msgs[i];
        if (!m || ckpt_matching(r, c, m->u.checkpoint->state_digest.data, proof) < r->quorum)
            continue;
        const uint8_t *d = m->u.checkpoint->state_digest.data;
        if (c->own && !digest_eq(c->own_digest, d))
            reject(r, PBFT_REJ_BAD_CHECKPOINT); /* our own: a quorum certified another state */
        if (!force && r->fetching && !r->fetch_failed && c->seq > r->fetching)
            return false; /* a fetch in progress is not replaced */
        if (!force && !c->own && r->last_executed < c->seq) {
            /* Behind.  If every slot up to seq is committed we are only slow:
             * let execution catch up and produce our own checkpoint.  That
             * holds from a checkpoint being fetched as well: restarting the
             * fetch for every newer checkpoint would never finish one under
             * load. */
            uint64_t from =
                r->fetching > r->last_executed && !r->fetch_failed ? r->fetching : r->last_executed;
            bool can_catch_up = true;
            for (uint64_t q = from + 1; q <= c->seq && can_catch_up; q++) {
                slot *s = slot_at(r, q);
                can_catch_up = s->seq == q && s->committed && s->pp;
            }
            if (can_catch_up)
                return false;
        }
        uint8_t digest[FB_DIGEST_LEN];
        memcpy(digest, d, FB_DIGEST_LEN);
        make_stable(r, c->seq, digest, proof, r->quorum); /* fetches if we are behind */
        return true;
    }
    return false;
}

static void try_stabilize(pbft_replica *r, ckpt *c)
{
    (void)try_stabilize_ex(r, c, false);
}

/* A fetch in progress is not replaced by a newer certified checkpoint: the
 * peers keep the state being fetched while it is asked for, and restarting
 * for every newer checkpoint would never finish one under load.  Once it is
 * installed (or no peer can serve it) the newest certified one is taken up
 * (stabilize_newer). */

/* The newest checkpoint above our window that a quorum of each sender's
 * newest CHECKPOINTs agree on becomes stable (we are far behind). */
static bool far_stabilize(pbft_replica *r)
{
    pbft_msg *proof[r->n], *best[r->n];
    uint32_t nbest = 0;
    for (uint32_t i = 0; i < r->n; i++) {
        pbft_msg *m = r->far_ckpt[i];
        if (!m || (nbest && m->u.checkpoint->seq <= best[0]->u.checkpoint->seq))
            continue;
        uint32_t k = 0;
        for (uint32_t j = 0; j < r->n; j++) {
            pbft_msg *x = r->far_ckpt[j];
            if (x && x->u.checkpoint->seq == m->u.checkpoint->seq &&
                digest_eq(x->u.checkpoint->state_digest.data, m->u.checkpoint->state_digest.data))
                proof[k++] = x;
        }
        if (k >= r->quorum) {
            memcpy(best, proof, k * sizeof *proof);
            nbest = k;
        }
    }
    if (!nbest)
        return false;
    uint8_t d[FB_DIGEST_LEN];
    memcpy(d, best[0]->u.checkpoint->state_digest.data, FB_DIGEST_LEN);
    make_stable(r, best[0]->u.checkpoint->seq, d, best, nbest);
    return true;
}

/* Take up the newest certified checkpoint above seq, newest first (older ones
 * may lack a quorum yet); force: even one the log could reach. */
static bool stabilize_newer(pbft_replica *r, uint64_t seq, bool force)
{
    if (far_stabilize(r))
        return true;
    ckpt *best = NULL;
    for (uint32_t i = 0; i < r->nckpts; i++) {
        ckpt *c = &r->ckpts[i];
        if (c->seq > seq && (!best || c->seq > best->seq))
            best = c;
    }
    while (best) {
        if (try_stabilize_ex(r, best, force))
            return true;
        ckpt *next = NULL;
        for (uint32_t i = 0; i < r->nckpts; i++) {
            ckpt *c = &r->ckpts[i];
            if (c->seq > seq && c->seq < best->seq && (!next || c->seq > next->seq))
                next = c;
        }
        best = next;
    }
    return false;
}

/* No peer can serve the checkpoint we fetch (each keeps the state of only its
 * last few checkpoints, and none after a restart): a newer checkpoint that a
 * quorum certified replaces it, or the fetch would wait for ever. */
static void on_fetch_failed(pbft_replica *r, uint64_t seq)
{
    if (!r->fetching || r->fetching != seq)
        return;
    /* Nothing newer certified yet: remember that this one cannot be served,
     * so that the next certified checkpoint replaces it at once. */
    if (!stabilize_newer(r, seq, true))
        r->fetch_failed = true;
}

static void on_checkpoint(pbft_replica *r, pbft_msg *m)
{
    const Fedbft__Checkpoint *cp = m->u.checkpoint;
    if (cp->seq == 0 || cp->seq % r->cfg.checkpoint_interval != 0) {
        reject(r, PBFT_REJ_BAD_CHECKPOINT);
        return;
    }
    if (cp->seq <= r->h) {
        /* Peers re-send the CHECKPOINT of their stable checkpoint (to bring
         * laggards along): ours already, so a duplicate. */
        bool known = cp->seq == r->h && digest_eq(cp->state_digest.data, r->h_digest);
        reject(r, known ? PBFT_REJ_DUPLICATE : PBFT_REJ_WATERMARK);
        return;
    }
    if (cp->seq > high_mark(r)) {
        /* Beyond our window: remember each sender's newest; a quorum of
         * them proves we are far behind. */
        pbft_msg *old = r->far_ckpt[m->sender];
        if (old && old->u.checkpoint->seq >= cp->seq) {
            bool same = old->u.checkpoint->seq > cp->seq ||
                        digest_eq(old->u.checkpoint->state_digest.data, cp->state_digest.data);
            reject(r, same ? PBFT_REJ_DUPLICATE : PBFT_REJ_BAD_CHECKPOINT);
            return;
        }
        pbft_msg_unref(old);
        r->far_ckpt[m->sender] = pbft_msg_ref(m);
        if (!r->fetching || r->fetch_failed) /* a fetch in progress is not replaced */
            (void)far_stabilize(r);
        return;
    }
    ckpt *c = ckpt_for(r, cp->seq, true);
    if (!c) {
        reject(r, PBFT_REJ_INVALID); /* cannot happen: the table covers the window */
        return;
    }
    pbft_msg *held = c->msgs[m->sender];
    if (held) {
        /* one per sender; a replica that changes its mind is ignored */
        bool same = digest_eq(held->u.checkpoint->state_digest.data, cp->state_digest.data);
        reject(r, same ? PBFT_REJ_DUPLICATE : PBFT_REJ_BAD_CHECKPOINT);
        return;
    }
    c->msgs[m->sender] = pbft_msg_ref(m);
    try_stabilize(r, c);
}

/* We executed seq, a checkpoint: sign and broadcast our CHECKPOINT. */
/* After a verified state install at the stable checkpoint: put our own
 * CHECKPOINT into its certificate (in place of another sender's, so it stays
 * a quorum of distinct senders), because retransmit re-sends only our own
 * messages; a replica that reached h by state transfer would otherwise never
 * re-send any CHECKPOINT for h, and in an idle cluster a wiped replica could
 * then find no quorum to fetch from. */
static void own_into_h_proof(pbft_replica *r, pbft_msg *m)
{
    for (uint32_t i = 0; i < r->nh_proof; i++)
        if (r->h_proof[i]->sender == r->cfg.id)
            return;
    pbft_msg_unref(r->h_proof[r->nh_proof - 1]);
    r->h_proof[r->nh_proof - 1] = pbft_msg_ref(m);
}

static void take_checkpoint(pbft_replica *r, uint64_t seq, const uint8_t app_digest[FB_DIGEST_LEN])
{
    uint8_t *ct = NULL, digest[FB_DIGEST_LEN];
    size_t ctlen = 0;
    if (pbft_clients_export(&r->clients, &ct, &ctlen) != 0)
        abort();
    pbft_state_digest(app_digest, ct, ctlen, digest);
    free(ct);

    Fedbft__Checkpoint cp = FEDBFT__CHECKPOINT__INIT;
    cp.seq = seq;
    cp.state_digest = (ProtobufCBinaryData){FB_DIGEST_LEN, digest};
    cp.replica = r->cfg.id;
    pbft_msg *m = NULL;
    if (make(r, FEDBFT__MSG_TYPE__MSG_CHECKPOINT, &cp.base, &m) != 0)
        abort();
    ckpt *c = seq > r->h && seq <= high_mark(r) ? ckpt_for(r, seq, true) : NULL;
    if (c) {
        c->own = true;
        memcpy(c->own_digest, digest, FB_DIGEST_LEN);
        pbft_msg_unref(c->msgs[r->cfg.id]);
        c->msgs[r->cfg.id] = pbft_msg_ref(m);
    }
    /* Durable first: after a crash we must still be able to help this
     * checkpoint become stable (others may be waiting for our vote). */
    persist_msg(r, m);
    broadcast(r, m);
    if (c)
        try_stabilize(r, c);
    else if (seq == r->h && r->nh_proof && digest_eq(digest, r->h_digest))
        own_into_h_proof(r, m);
    pbft_msg_unref(m);
}

/* ------------------------------------------------------------ state transfer */

/* Emit FETCH_STATE for the fetch in progress (again, every FETCH_RETRY_MS). */
static void ask_fetch(pbft_replica *r)
{
    uint64_t seq = r->fetching;
    const uint8_t *digest = r->fetch_digest;
    r->fetch_retry_at = r->now + FETCH_RETRY_MS;
    pbft_action *a = push(r, PBFT_ACT_FETCH_STATE);
    a->fetch.seq = seq;
    memcpy(a->fetch.digest, digest, FB_DIGEST_LEN);
    a->fetch.proof = r->h == seq ? r->h_proof : NULL;
    a->fetch.nproof = r->h == seq ? r->nh_proof : 0;
}

static void start_fetch(pbft_replica *r, uint64_t seq, const uint8_t digest[FB_DIGEST_LEN])
{
    if (r->fetching >= seq)
        return;
    r->fetching = seq;
    r->fetch_failed = false;
    memcpy(r->fetch_digest, digest, FB_DIGEST_LEN);
    ask_fetch(r);
}

static void try_execute(pbft_replica *r);
static void try_propose(pbft_replica *r);
static void update_request_timer(pbft_replica *r);

static void on_state_installed(pbft_replica *r, const pbft_event *ev)
{
    if (!r->fetching || ev->installed.seq != r->fetching) {
        reject(r, PBFT_REJ_INVALID);
        return;
    }
    uint8_t d[FB_DIGEST_LEN];
    pbft_state_digest(ev->installed.app_digest, ev->installed.client_table,
                      ev->installed.client_table_len, d);
    if (!digest_eq(d, r->fetch_digest) ||
        pbft_clients_import(&r->clients, ev->installed.client_table, ev->installed.client_table_len,
                            r->cfg.max_result_bytes) != 0) {
        /* The state we got does not match the certificate: ask again. */
        reject(r, PBFT_REJ_INVALID);
        r->fetch_retry_at = r->now;
        return;
    }
    r->last_executed = r->fetching;
    if (r->last_committed < r->last_executed)
        r->last_committed = r->last_executed;
    r->fetching = 0;
    if (r->last_executed == r->h)
        take_checkpoint(r, r->h, ev->installed.app_digest); /* we hold that state now */
    r->exec_inflight = 0;
    for (uint32_t i = 0; i < r->cfg.log_window; i++) {
        slot *s = &r->slots[i];
        if (s->seq != 0 && s->seq <= r->last_executed)
            s->executed = true;
    }
    for (uint32_t i = 0; i < r->clients.count; i++) {
        pbft_client *c = &r->clients.recs[i];
        pbft_clients_clear_pending(&r->clients, c, c->last_ts);
        if (c->pending)
            c->pending_since = r->now; /* the request timer starts over from here */
    }
    r->request_at = NO_DEADLINE;
    /* The cluster moved on while we fetched: the newest certified checkpoint
     * (fetched too if the log cannot reach it). */
    (void)stabilize_newer(r, r->h, false);
    try_execute(r);
    try_propose(r);
    update_request_timer(r);
}

/* ------------------------------------------------------------ execution */

static void reply(pbft_replica *r, const pbft_client *c, uint64_t seq_override, bool read_only,
                  const pbft_result *res, uint64_t ts)
{
    pbft_action *a = push(r, PBFT_ACT_REPLY);
    a->reply.client = c->id;
    a->reply.timestamp = ts;
    a->reply.view = r->view;
    a->reply.seq = read_only ? seq_override : c->reply_seq;
    a->reply.result = read_only ? *res : (pbft_result){c->reply, c->reply_len};
}

/* Execute committed batches in order (section 4.2): emit EXECUTE for the
 * next one, with requests already executed (by client timestamp) removed. */
static void try_execute(pbft_replica *r)
{
    if (r->exec_inflight || r->fetching || r->ro_inflight)
        return;
    uint64_t seq = r->last_executed + 1;
    slot *s = slot_at(r, seq);
    if (s->seq != seq || !s->committed || s->executed || !s->pp) {
        /* Idle: serve a waiting read-only request. */
        if (r->ro_count > 0) {
            pbft_msg *req = r->ro_queue[r->ro_head];
            r->ro_head = (r->ro_head + 1) % MAX_READONLY;
            r->ro_count--;
            r->ro_inflight = true;
            for (size_t i = 0; i < r->nexec_reqs; i++)
                pbft_msg_unref(r->exec_reqs[i]);
            r->exec_reqs[0] = req; /* the queue's reference moves here */
            r->nexec_reqs = 1;
            pbft_action *a = push(r, PBFT_ACT_EXECUTE);
            a->execute.seq = 0;
            a->execute.view = r->view;
            a->execute.reqs = r->exec_reqs;
            a->execute.nreqs = 1;
        }
        return;
    }
    for (size_t i = 0; i < r->nexec_reqs; i++)
        pbft_msg_unref(r->exec_reqs[i]);
    r->nexec_reqs = 0;
    for (size_t i = 0; i < s->pp->nreqs; i++) {
        pbft_msg *req = s->pp->reqs[i];
        const Fedbft__Request *rq = req->u.request;
        pbft_client *c = pbft_clients_get(&r->clients, rq->client);
        if (!c)
            continue; /* table full: deterministic everywhere, so all skip it */
        uint64_t last = c->last_ts;
        /* A client may appear twice in one batch: later entries must be newer. */
        for (size_t j = 0; j < r->nexec_reqs; j++)
            if (r->exec_reqs[j]->u.request->client == rq->client &&
                r->exec_reqs[j]->u.request->timestamp > last)
                last = r->exec_reqs[j]->u.request->timestamp;
        if (rq->timestamp <= last)
            continue; /* exactly once: executed before */
        r->exec_reqs[r->nexec_reqs++] = pbft_msg_ref(req);
    }
    r->exec_inflight = seq;
    pbft_action *a = push(r, PBFT_ACT_EXECUTE);
    a->execute.seq = seq;
    a->execute.view = s->pp_view;
    a->execute.nondet = s->pp->u.pre_prepare->nondet;
    a->execute.reqs = r->exec_reqs;
    a->execute.nreqs = r->nexec_reqs;
    a->execute.checkpoint = seq % r->cfg.checkpoint_interval == 0;
}

static void on_executed(pbft_replica *r, const pbft_event *ev)
{
    if (ev->executed.seq == 0) { /* read-only */
        if (!r->ro_inflight || ev->executed.nresults != 1 || r->nexec_reqs != 1) {
            reject(r, PBFT_REJ_INVALID);
            return;
        }
        r->ro_inflight = false;
        pbft_msg *req = r->exec_reqs[0];
        /* The event's buffer dies with this call; the REPLY outlives it. */
        const pbft_result *res = &ev->executed.results[0];
        size_t len = res->len < r->cfg.max_result_bytes ? res->len : r->cfg.max_result_bytes;
        uint8_t *copy = realloc(r->ro_result, len ? len : 1);
        if (!copy)
            abort();
        if (len)
            memcpy(copy, res->data, len);
        r->ro_result = copy;
        r->ro_result_len = len;
        pbft_result kept = {copy, len};
        pbft_client tmp = {.id = req->u.request->client};
        reply(r, &tmp, r->last_executed, true, &kept, req->u.request->timestamp);
        try_execute(r);
        return;
    }
    if (ev->executed.seq != r->exec_inflight || ev->executed.nresults != r->nexec_reqs) {
        reject(r, PBFT_REJ_INVALID);
        return;
    }
    uint64_t seq = r->exec_inflight;
    slot *s = slot_at(r, seq);
    if (s->seq != seq || !s->pp || r->fetching) {
        /* A state transfer overtook this batch; the fetched state replaces it. */
        r->exec_inflight = 0;
        return;
    }
    for (size_t i = 0; i < r->nexec_reqs; i++) {
        const Fedbft__Request *rq = r->exec_reqs[i]->u.request;
        pbft_client *c = pbft_clients_get(&r->clients, rq->client);
        const pbft_result *res = &ev->executed.results[i];
        if (pbft_clients_record(&r->clients, c, rq->timestamp, s->pp_view, seq, res->data, res->len,
                                r->cfg.max_result_bytes) != 0)
            abort();
        pbft_clients_clear_pending(&r->clients, c, rq->timestamp);
        reply(r, c, 0, false, NULL, rq->timestamp);
    }
    /* Requests that were duplicates still leave the pending set. */
    for (size_t i = 0; i < s->pp->nreqs; i++) {
        const Fedbft__Request *rq = s->pp->reqs[i]->u.request;
        pbft_client *c = pbft_clients_find(&r->clients, rq->client);
        if (c)
            pbft_clients_clear_pending(&r->clients, c, c->last_ts);
    }
    s->executed = true;
    r->last_executed = seq;
    r->exec_inflight = 0;
    if (s->pp->nreqs > 0)
        r->vc_backoff = 0; /* progress: the next view change starts from the base timeout */
    if (seq % r->cfg.checkpoint_interval == 0)
        take_checkpoint(r, seq, ev->executed.app_digest);
    try_execute(r);
    try_propose(r);
    update_request_timer(r);
}

/* ------------------------------------------------------------ normal case */

static void commit_if_ready(pbft_replica *r, slot *s)
{
    if (!s->prepared || s->committed)
        return;
    uint32_t k = 0;
    for (uint32_t i = 0; i < r->n; i++) {
        pbft_msg *m = s->commits[i];
        if (m && m->u.commit->view == s->pp_view &&
            digest_eq(m->u.commit->digest.data, pp_digest(s->pp)))
            k++;
    }
    if (k < r->quorum)
        return;
    s->committed = true; /* committed-local (section 4.2) */
    s->committed_at = r->now;
    if (s->seq > r->last_committed)
        r->last_committed = s->seq;
    try_execute(r);
}

/* Our COMMIT for s, stored in the slot (not sent). */
static pbft_msg *own_commit(pbft_replica *r, slot *s)
{
    Fedbft__Commit c = FEDBFT__COMMIT__INIT;
    c.view = s->pp_view;
    c.seq = s->seq;
    c.digest = (ProtobufCBinaryData){FB_DIGEST_LEN, (uint8_t *)pp_digest(s->pp)};
    c.replica = r->cfg.id;
    pbft_msg *m = NULL;
    if (make(r, FEDBFT__MSG_TYPE__MSG_COMMIT, &c.base, &m) != 0)
        abort();
    pbft_msg_unref(s->commits[r->cfg.id]);
    s->commits[r->cfg.id] = m;
    s->own_commit_sent = true;
    return m;
}

static void send_commit(pbft_replica *r, slot *s)
{
    broadcast(r, own_commit(r, s));
}

/* prepared(m, v, n, i): the pre-prepare and quorum - 1 matching prepares from
 * other replicas than the primary (section 4.2).  The certificate becomes
 * durable before our COMMIT leaves, because a view change must be able to
 * prove it after a crash. */
static void prepare_if_ready(pbft_replica *r, slot *s)
{
    if (!s->pp || s->prepared)
        return;
    uint32_t primary = primary_of(r, s->pp_view), k = 0;
    pbft_msg *cert[r->n];
    for (uint32_t i = 0; i < r->n; i++) {
        pbft_msg *m = s->prepares[i];
        if (m && i != primary && m->u.prepare->view == s->pp_view &&
            digest_eq(m->u.prepare->digest.data, pp_digest(s->pp)))
            cert[k++] = m;
    }
    if (k + 1 < r->quorum)
        return;
    s->prepared = true;
    release_cert(s);
    s->cert_pp = pbft_msg_ref(s->pp);
    for (uint32_t i = 0; i + 1 < r->quorum; i++) {
        s->cert_prepares[s->ncert++] = pbft_msg_ref(cert[i]);
        persist_msg(r, cert[i]);
    }
    if (!abstains(r, s->seq))
        send_commit(r, s);
    commit_if_ready(r, s);
}

/* Our PREPARE for s, stored in the slot (not sent). */
static pbft_msg *own_prepare(pbft_replica *r, slot *s)
{
    Fedbft__Prepare p = FEDBFT__PREPARE__INIT;
    p.view = s->pp_view;
    p.seq = s->seq;
    p.digest = (ProtobufCBinaryData){FB_DIGEST_LEN, (uint8_t *)pp_digest(s->pp)};
    p.replica = r->cfg.id;
    pbft_msg *m = NULL;
    if (make(r, FEDBFT__MSG_TYPE__MSG_PREPARE, &p.base, &m) != 0)
        abort();
    pbft_msg_unref(s->prepares[r->cfg.id]);
    s->prepares[r->cfg.id] = m;
    return m;
}

static void send_prepare(pbft_replica *r, slot *s)
{
    broadcast(r, own_prepare(r, s));
}

/* Install an accepted PRE-PREPARE for seq in view: durable first, then our
 * PREPARE (backups only). */
static void install_pre_prepare(pbft_replica *r, slot *s, pbft_msg *pp, uint64_t view)
{
    if (s->pp && s->pp_view != view)
        release_votes(r, s);
    pbft_msg_unref(s->pp);
    s->pp = pbft_msg_ref(pp);
    s->pp_view = view;
    s->prepared = false;
    s->own_commit_sent = false;
    if (!s->executed)
        s->committed = false;
    persist_msg(r, pp);
    /* Requests it carries are no longer waiting to be proposed. */
    for (size_t i = 0; i < pp->nreqs; i++) {
        const Fedbft__Request *rq = pp->reqs[i]->u.request;
        pbft_client *c = pbft_clients_find(&r->clients, rq->client);
        if (c && c->pending && c->pending->u.request->timestamp <= rq->timestamp) {
            c->proposed_seq = s->seq;
            pbft_clients_dequeue(&r->clients, c);
        }
    }
    if (primary_of(r, view) != r->cfg.id && !abstains(r, s->seq))
        send_prepare(r, s);
    prepare_if_ready(r, s);
}

/* While we change to view v, ordering traffic in view v shows that its
 * sender has installed v's NEW-VIEW (we missed it). */
static void note_target_live(pbft_replica *r, const pbft_msg *m, uint64_t view)
{
    if (r->view_changing && view == r->view && m->sender < r->n)
        r->target_live[m->sender] = true;
}

static bool target_view_live(const pbft_replica *r)
{
    uint32_t k = 0;
    for (uint32_t i = 0; i < r->n; i++)
        k += r->target_live[i];
    return k >= pbft_weak(r->n);
}

/* Acceptance rules for PRE-PREPARE (section 4.2): from the primary of our
 * view, in our view, inside the watermarks, and no other digest already
 * accepted for this (view, seq). */
static void on_pre_prepare(pbft_replica *r, pbft_msg *m)
{
    const Fedbft__PrePrepare *pp = m->u.pre_prepare;
    note_target_live(r, m, pp->view);
    if (r->view_changing || pp->view != r->view) {
        reject(r, PBFT_REJ_STALE_VIEW);
        return;
    }
    if (m->sender != primary_of(r, r->view)) {
        reject(r, PBFT_REJ_NOT_PRIMARY);
        return;
    }
    if (is_primary(r) || pp->n_requests > r->cfg.batch_max_requests) {
        /* our own sent back to us, or a batch larger than the cluster allows */
        reject(r, PBFT_REJ_INVALID);
        return;
    }
    slot *s = slot_for(r, pp->seq);
    if (!s) {
        reject(r, PBFT_REJ_WATERMARK);
        hold_early(r, m, pp->seq);
        return;
    }
    if (s->pp && s->pp_view == pp->view) {
        /* A second digest for (view, seq) is equivocation: the first stays
         * and the request timer will replace this primary. */
        bool same = digest_eq(pp_digest(s->pp), pp->digest.data);
        reject(r, same ? PBFT_REJ_DUPLICATE : PBFT_REJ_EQUIVOCATION);
        return;
    }
    if (s->executed && s->pp && !digest_eq(pp_digest(s->pp), pp->digest.data)) {
        reject(r, PBFT_REJ_INVALID); /* contradicts what we executed: > f faults */
        return;
    }
    install_pre_prepare(r, s, m, pp->view);
}

/* A replica that sends again a vote we hold already is retransmitting: it has
 * not completed this slot.  Answer it directly with our part of the slot so
 * it can finish even if everyone else has moved on. */
static void help_laggard(pbft_replica *r, slot *s, uint32_t to)
{
    /* Only a replica that finished the slot helps, and once per retransmit
     * interval per peer: two replicas answering each other's answers would
     * never stop. */
    if (!s->pp || s->pp_view != r->view || !s->committed ||
        r->now < s->helped_at[to] + r->cfg.retransmit_ms)
        return;
    s->helped_at[to] = r->now;
    if (primary_of(r, s->pp_view) == r->cfg.id)
        send_to(r, to, s->pp);
    else if (s->prepares[r->cfg.id])
        send_to(r, to, s->prepares[r->cfg.id]);
    if (s->own_commit_sent && s->commits[r->cfg.id])
        send_to(r, to, s->commits[r->cfg.id]);
}

/* A first vote arriving a retransmit period after we committed the slot
 * comes from a replica that is catching up, not from the normal tail of the
 * quorum (those arrive within milliseconds). */
static bool late_vote(const pbft_replica *r, const slot *s)
{
    return s->committed && r->now >= s->committed_at + r->cfg.retransmit_ms;
}

/* The view and digest a PREPARE or COMMIT votes for. */
static void vote_of(const pbft_msg *m, uint64_t *view, const uint8_t **digest)
{
    if (m->type == FEDBFT__MSG_TYPE__MSG_PREPARE) {
        *view = m->u.prepare->view;
        *digest = m->u.prepare->digest.data;
    } else {
        *view = m->u.commit->view;
        *digest = m->u.commit->digest.data;
    }
}

/* Compare vote m with the one its sender already cast in this slot (*held).
 * A held vote from an older view (a restored slot can hold one) is dropped.
 * Returns DUPLICATE for the same vote again, EQUIVOCATION for another digest
 * in the same view, or PBFT_REJ_COUNT when m is the sender's first vote. */
static pbft_reject vote_conflict(pbft_msg **held, const pbft_msg *m)
{
    if (!*held)
        return PBFT_REJ_COUNT;
    uint64_t hv, v;
    const uint8_t *hd, *d;
    vote_of(*held, &hv, &hd);
    vote_of(m, &v, &d);
    if (hv < v) {
        pbft_msg_unref(*held);
        *held = NULL;
        return PBFT_REJ_COUNT;
    }
    return digest_eq(hd, d) ? PBFT_REJ_DUPLICATE : PBFT_REJ_EQUIVOCATION;
}

bool pbft_vote_skip(pbft_replica *r, const pbft_msg *m)
{
    bool prepare = m->type == FEDBFT__MSG_TYPE__MSG_PREPARE;
    if ((!prepare && m->type != FEDBFT__MSG_TYPE__MSG_COMMIT) || m->sender >= r->n ||
        r->view_changing)
        return false;
    uint64_t view = prepare ? m->u.prepare->view : m->u.commit->view;
    uint64_t seq = prepare ? m->u.prepare->seq : m->u.commit->seq;
    if (view != r->view || !in_window(r, seq) || (prepare && m->sender == primary_of(r, view)))
        return false; /* stale, outside the window, or invalid: the step refuses it */
    slot *s = slot_at(r, seq);
    if (s->seq != seq || !s->pp || s->pp_view != view || late_vote(r, s))
        return false;
    if (prepare ? s->prepares[m->sender] != NULL : s->commits[m->sender] != NULL)
        return false; /* a duplicate (or an equivocation): the step decides */
    uint8_t bit = prepare ? SKIPPED_PREPARE : SKIPPED_COMMIT;
    if (s->skipped[m->sender] & bit)
        return false; /* sent again: the sender lags, and the step helps it */
    if (!(prepare ? s->prepared : s->committed))
        return false;
    s->skipped[m->sender] |= bit;
    return true;
}

static void on_prepare(pbft_replica *r, pbft_msg *m)
{
    const Fedbft__Prepare *p = m->u.prepare;
    note_target_live(r, m, p->view);
    if (r->view_changing || p->view != r->view) {
        reject(r, PBFT_REJ_STALE_VIEW);
        return;
    }
    if (m->sender == primary_of(r, p->view)) {
        reject(r, PBFT_REJ_INVALID); /* the primary's PRE-PREPARE is its prepare */
        return;
    }
    slot *s = slot_for(r, p->seq);
    if (!s) {
        reject(r, PBFT_REJ_WATERMARK);
        hold_early(r, m, p->seq);
        return;
    }
    pbft_msg **held = &s->prepares[m->sender];
    pbft_reject why = vote_conflict(held, m);
    if (why == PBFT_REJ_EQUIVOCATION) {
        reject(r, why); /* the first vote stands */
        return;
    }
    if (why == PBFT_REJ_DUPLICATE || late_vote(r, s) || (s->skipped[m->sender] & SKIPPED_PREPARE)) {
        /* a re-sent vote (held, or skipped the first time), or a first vote
         * long after we finished the slot: the sender is behind on it */
        help_laggard(r, s, m->sender);
        if (why == PBFT_REJ_DUPLICATE) {
            reject(r, why);
            return;
        }
    }
    *held = pbft_msg_ref(m);
    prepare_if_ready(r, s);
}

static void on_commit(pbft_replica *r, pbft_msg *m)
{
    const Fedbft__Commit *c = m->u.commit;
    note_target_live(r, m, c->view);
    if (r->view_changing || c->view != r->view) {
        reject(r, PBFT_REJ_STALE_VIEW);
        return;
    }
    slot *s = slot_for(r, c->seq);
    if (!s) {
        reject(r, PBFT_REJ_WATERMARK);
        hold_early(r, m, c->seq);
        return;
    }
    pbft_msg **held = &s->commits[m->sender];
    pbft_reject why = vote_conflict(held, m);
    if (why == PBFT_REJ_EQUIVOCATION) {
        reject(r, why);
        return;
    }
    if (why == PBFT_REJ_DUPLICATE || late_vote(r, s) || (s->skipped[m->sender] & SKIPPED_COMMIT)) {
        help_laggard(r, s, m->sender);
        if (why == PBFT_REJ_DUPLICATE) {
            reject(r, why);
            return;
        }
    }
    *held = pbft_msg_ref(m);
    commit_if_ready(r, s);
}

/* ------------------------------------------------------------ proposing */

/* Primary: cut a batch from the pending FIFO when it is full, when nothing is
 * in flight, or when its oldest request has waited batch_max_delay_ms. */
static void try_propose(pbft_replica *r)
{
    while (is_primary(r) && !r->view_changing && !r->fetching && r->clients.q_head &&
           !abstains(r, r->next_seq)) {
        uint64_t inflight = r->next_seq - 1 - r->last_executed;
        if (r->next_seq > high_mark(r) || inflight >= r->cfg.max_inflight)
            return;
        bool full = r->clients.nqueued >= r->cfg.batch_max_requests;
        bool waited = r->now >= r->clients.q_head->pending_since + r->cfg.batch_max_delay_ms;
        if (!full && !waited && inflight > 0) {
            r->batch_at = r->clients.q_head->pending_since + r->cfg.batch_max_delay_ms;
            return;
        }
        pbft_msg *reqs[r->cfg.batch_max_requests];
        Fedbft__Envelope *envs[r->cfg.batch_max_requests];
        size_t n = 0, bytes = 0;
        for (pbft_client *c = r->clients.q_head; c && n < r->cfg.batch_max_requests;) {
            pbft_client *next = c->q_next;
            size_t len = c->pending->raw_len;
            if (n > 0 && bytes + len > r->cfg.batch_max_bytes)
                break;
            reqs[n] = c->pending;
            envs[n] = c->pending->env;
            n++;
            bytes += len;
            c = next;
        }
        uint8_t digest[FB_DIGEST_LEN];
        uint64_t nondet = r->now;
        pbft_batch_digest(nondet, reqs, n, &r->digests, digest);
        Fedbft__PrePrepare pp = FEDBFT__PRE_PREPARE__INIT;
        pp.view = r->view;
        pp.seq = r->next_seq;
        pp.digest = (ProtobufCBinaryData){FB_DIGEST_LEN, digest};
        pp.n_requests = n;
        pp.requests = envs;
        pp.nondet = nondet;
        pbft_msg *m = NULL;
        if (pbft_msg_make_batch(FEDBFT__MSG_TYPE__MSG_PRE_PREPARE, r->cfg.id, &pp.base, reqs, n,
                                &r->cfg.signer, &r->digests, &m) != 0)
            abort();
        slot *s = slot_for(r, r->next_seq);
        r->next_seq++;
        install_pre_prepare(r, s, m, r->view); /* persists before the broadcast below */
        r->last_proposal_at = r->now;
        broadcast(r, m);
        pbft_msg_unref(m);
        r->batch_at = NO_DEADLINE;
    }
}

/* ------------------------------------------------------------ requests */

static void on_request(pbft_replica *r, pbft_msg *m, bool from_client)
{
    const Fedbft__Request *rq = m->u.request;
    pbft_client *c = pbft_clients_get(&r->clients, rq->client);
    if (!c) {
        reject(r, PBFT_REJ_INVALID); /* the client table is full */
        return;
    }
    if (rq->timestamp < c->last_ts)
        return; /* stale: ignored (section 4.1) */
    if (rq->timestamp == c->last_ts) {
        if (from_client && c->reply)
            reply(r, c, 0, false, NULL, rq->timestamp); /* retransmission */
        return;
    }
    if (rq->read_only) {
        if (!from_client || r->ro_count == MAX_READONLY) {
            reject(r, PBFT_REJ_INVALID); /* relayed by a replica, or no room */
            return;
        }
        r->ro_queue[(r->ro_head + r->ro_count++) % MAX_READONLY] = pbft_msg_ref(m);
        try_execute(r);
        return;
    }
    if (c->pending && c->pending->u.request->timestamp >= rq->timestamp) {
        /* Known already.  A client retransmits when it got no reply: make sure
         * the primary has it (section 4.4's timer covers the rest). */
        if (from_client && !is_primary(r))
            send_to(r, primary_of(r, r->view), m);
        return;
    }
    if (r->clients.npending >= r->cfg.max_pending) {
        reject(r, PBFT_REJ_INVALID); /* no room: the client retries */
        return;
    }
    pbft_clients_set_pending(&r->clients, c, m, r->now);
    if (is_primary(r))
        try_propose(r);
    else if (from_client)
        send_to(r, primary_of(r, r->view), m);
    update_request_timer(r);
}

/* ------------------------------------------------------------ view change */

static pbft_msg *build_view_change(pbft_replica *r)
{
    uint32_t L = r->cfg.log_window;
    Fedbft__PreparedCert *certs = calloc(L, sizeof *certs);
    Fedbft__PreparedCert **cptrs = calloc(L, sizeof *cptrs);
    Fedbft__Envelope **prep_envs = calloc((size_t)L * r->quorum, sizeof *prep_envs);
    Fedbft__Envelope *proof[r->quorum];
    if (!certs || !cptrs || !prep_envs)
        abort();
    size_t ncert = 0;
    for (uint64_t q = r->h + 1; q <= high_mark(r); q++) {
        slot *s = slot_at(r, q);
        if (s->seq != q || !s->cert_pp)
            continue;
        Fedbft__PreparedCert *c = &certs[ncert];
        fedbft__prepared_cert__init(c);
        c->pre_prepare = s->cert_pp->env;
        c->prepares = &prep_envs[ncert * r->quorum];
        for (uint32_t i = 0; i < s->ncert; i++)
            c->prepares[c->n_prepares++] = s->cert_prepares[i]->env;
        cptrs[ncert++] = c;
    }
    for (uint32_t i = 0; i < r->nh_proof; i++)
        proof[i] = r->h_proof[i]->env;
    Fedbft__ViewChange vc = FEDBFT__VIEW_CHANGE__INIT;
    vc.new_view = r->view;
    vc.stable_seq = r->h;
    vc.n_checkpoint_proof = r->nh_proof;
    vc.checkpoint_proof = proof;
    vc.n_prepared = ncert;
    vc.prepared = cptrs;
    vc.replica = r->cfg.id;
    pbft_msg *m = NULL;
    if (make(r, FEDBFT__MSG_TYPE__MSG_VIEW_CHANGE, &vc.base, &m) != 0)
        abort();
    free(certs);
    free(cptrs);
    free(prep_envs);
    return m;
}

/* The NEW-VIEW timeout doubles with each consecutive view change, up to
 * 2^view_change_max_backoff times the base, so a long partition does not
 * leave the cluster waiting exponentially long once it heals. */
static uint64_t vc_timeout(const pbft_replica *r)
{
    uint32_t shift = r->vc_backoff ? r->vc_backoff - 1 : 0;
    if (shift > r->cfg.view_change_max_backoff)
        shift = r->cfg.view_change_max_backoff;
    return r->cfg.view_change_timeout_ms << shift;
}

/* Section 4.5.2: the timer for NEW-VIEW starts once a quorum of replicas has
 * voted for our target view - or for a later one.  Counting later votes too
 * keeps a quorum that is behind moving (when the votes for exactly our view
 * were lost, e.g. by a restarted replica), while a replica that raced ahead
 * alone waits for the others instead of running further away. */
static void arm_view_change_timer(pbft_replica *r)
{
    if (!r->view_changing || r->vc_at != NO_DEADLINE)
        return;
    uint32_t k = 0;
    for (uint32_t i = 0; i < r->n; i++)
        k += r->vcs[i] && r->vcs[i]->u.view_change->new_view >= r->view;
    if (k >= r->quorum)
        r->vc_at = r->now + vc_timeout(r);
}

static void try_new_view(pbft_replica *r);

/* Persist where we stand and our VIEW-CHANGE for it, then send it. */
static void vote_for_view(pbft_replica *r)
{
    if (abstains_from_views(r)) {
        persist_view(r); /* where we stand, without a vote */
        return;
    }
    pbft_msg *m = build_view_change(r);
    persist_view(r);
    persist_msg(r, m);
    pbft_msg_unref(r->vcs[r->cfg.id]);
    r->vcs[r->cfg.id] = pbft_msg_ref(m);
    broadcast(r, m);
    pbft_msg_unref(m);
}

/* Move to view v and vote for it (section 4.4).  Votes of the old view are
 * dropped; prepared certificates and committed slots stay. */
static void start_view_change(pbft_replica *r, uint64_t v)
{
    if (v <= r->view && (r->view_changing || v < r->view))
        return;
    r->view = v;
    r->view_changing = true;
    r->vc_backoff++;
    memset(r->target_live, 0, r->n * sizeof *r->target_live);
    for (uint32_t i = 0; i < r->cfg.log_window; i++) {
        slot *s = &r->slots[i];
        release_votes(r, s);
        s->prepared = false;
    }
    vote_for_view(r);
    r->vc_at = NO_DEADLINE;
    arm_view_change_timer(r);
    r->request_at = NO_DEADLINE;
    r->batch_at = NO_DEADLINE;
    try_new_view(r);
}

/* f+1 replicas voting for higher views means at least one correct one
 * timed out: join the smallest such view (section 4.5.2 liveness rule). */
static void maybe_join(pbft_replica *r)
{
    uint32_t k = 0;
    uint64_t smallest = UINT64_MAX;
    for (uint32_t i = 0; i < r->n; i++) {
        pbft_msg *m = r->vcs[i];
        if (!m || i == r->cfg.id)
            continue;
        uint64_t v = m->u.view_change->new_view;
        if (v > r->view) {
            k++;
            if (v < smallest)
                smallest = v;
        }
    }
    if (k >= pbft_weak(r->n))
        start_view_change(r, smallest);
}

static void install_new_view(pbft_replica *r, pbft_msg *nv, pbft_new_view_info *info);

/* New primary: with a quorum of VIEW-CHANGEs for our view, compute O and
 * announce NEW-VIEW. */
static void try_new_view(pbft_replica *r)
{
    if (!r->view_changing || primary_of(r, r->view) != r->cfg.id || abstains_from_views(r))
        return;
    pbft_msg *vcs[r->n];
    uint32_t k = 0;
    for (uint32_t i = 0; i < r->n; i++)
        if (r->vcs[i] && r->vcs[i]->u.view_change->new_view == r->view)
            vcs[k++] = r->vcs[i];
    if (k < r->quorum)
        return;
    pbft_o_set o;
    char why[160];
    if (pbft_vc_compute_o(&r->params, r->view, vcs, k, &r->digests, &o, why, sizeof why) != 0) {
        reject(r, PBFT_REJ_BAD_VIEW_CHANGE);
        return;
    }
    pbft_msg *nv = NULL;
    int rc = pbft_vc_make_new_view(&r->params, r->view, r->cfg.id, vcs, k, &o, &r->cfg.signer,
                                   &r->digests, &nv);
    pbft_o_set_free(&o);
    if (rc != 0)
        abort();
    pbft_new_view_info info;
    pbft_req_lookup lk = pbft_request_lookup(r);
    rc = pbft_vc_check_new_view(&r->params, nv, &lk, &r->digests, &info, why, sizeof why);
    if (rc != 0)
        abort(); /* we built it from checked parts: a failure is a bug */
    /* Installing it also broadcasts it, ahead of our first proposals. */
    install_new_view(r, nv, &info);
    pbft_new_view_info_free(&info);
    pbft_msg_unref(nv);
}

/* Enter the view a valid NEW-VIEW establishes: adopt its stable checkpoint,
 * install O (sending PREPAREs for it), and resume. */
static void install_new_view(pbft_replica *r, pbft_msg *nv, pbft_new_view_info *info)
{
    r->view = info->view;
    r->view_changing = false;
    r->view_changes++;
    pbft_msg_unref(r->new_view);
    r->new_view = pbft_msg_ref(nv);
    persist_msg(r, nv);
    persist_view(r);
    /* The new primary announces the view before it proposes in it: a
     * PRE-PREPARE arriving ahead of the NEW-VIEW would be refused as stale
     * and wait for a retransmission. */
    if (is_primary(r))
        broadcast(r, nv);
    if (info->min_s > r->h)
        make_stable(r, info->min_s, info->min_s_digest, info->min_s_proof, (uint32_t)info->nproof);
    uint64_t max_s = info->min_s + info->npre_prepares;
    /* Slots above max_s held pre-prepares of old views that no quorum
     * prepared: the new primary will reuse those numbers. */
    for (uint32_t i = 0; i < r->cfg.log_window; i++) {
        slot *s = &r->slots[i];
        if (s->seq > max_s && !s->executed)
            slot_reset(r, s);
        else
            release_votes(r, s);
    }
    for (size_t i = 0; i < info->npre_prepares; i++) {
        pbft_msg *pp = info->pre_prepares[i];
        slot *s = slot_for(r, pp->u.pre_prepare->seq);
        if (!s)
            continue;
        if (s->executed && s->pp && !digest_eq(pp_digest(s->pp), pp_digest(pp))) {
            reject(r, PBFT_REJ_BAD_NEW_VIEW); /* cannot happen with f or fewer faults */
            continue;
        }
        install_pre_prepare(r, s, pp, r->view);
    }
    r->next_seq = max_s + 1 > r->h + 1 ? max_s + 1 : r->h + 1;
    /* Requests not carried by O go back to the proposal queue. */
    for (uint32_t i = 0; i < r->clients.count; i++) {
        pbft_client *c = &r->clients.recs[i];
        if (!c->pending)
            continue;
        slot *s = c->proposed_seq ? slot_at(r, c->proposed_seq) : NULL;
        if (!s || s->seq != c->proposed_seq || !s->pp || s->pp_view != r->view ||
            !pp_carries(s->pp, c->pending)) {
            c->proposed_seq = 0;
            pbft_clients_enqueue(&r->clients, c);
            /* The new primary may never have seen it (section 4.4: backups
             * forward what they wait for). */
            if (!is_primary(r))
                send_to(r, primary_of(r, r->view), c->pending);
        }
        c->pending_since = r->now;
    }
    for (uint32_t i = 0; i < r->n; i++) {
        if (r->vcs[i] && r->vcs[i]->u.view_change->new_view <= r->view) {
            pbft_msg_unref(r->vcs[i]);
            r->vcs[i] = NULL;
        }
    }
    r->vc_at = NO_DEADLINE;
    r->request_at = NO_DEADLINE;
    /* The cluster moved on while we fetched: the newest certified checkpoint
     * (fetched too if the log cannot reach it). */
    (void)stabilize_newer(r, r->h, false);
    try_execute(r);
    try_propose(r);
    update_request_timer(r);
}

static void on_view_change(pbft_replica *r, pbft_msg *m)
{
    const Fedbft__ViewChange *vc = m->u.view_change;
    if (vc->new_view < r->view || (vc->new_view == r->view && !r->view_changing)) {
        /* A replica still asking for the view we are in missed the NEW-VIEW. */
        if (vc->new_view == r->view && r->new_view && is_primary(r))
            send_to(r, m->sender, r->new_view);
        reject(r, PBFT_REJ_STALE_VIEW);
        return;
    }
    char why[160];
    if (pbft_vc_check(&r->params, m, &r->digests, why, sizeof why) != 0) {
        reject(r, PBFT_REJ_BAD_VIEW_CHANGE);
        return;
    }
    pbft_msg *old = r->vcs[m->sender];
    if (old && old->u.view_change->new_view >= vc->new_view) {
        bool same = old->raw_len == m->raw_len && memcmp(old->raw, m->raw, m->raw_len) == 0;
        reject(r, old->u.view_change->new_view > vc->new_view ? PBFT_REJ_STALE_VIEW
                  : same                                      ? PBFT_REJ_DUPLICATE
                                                              : PBFT_REJ_BAD_VIEW_CHANGE);
        return;
    }
    pbft_msg_unref(old);
    r->vcs[m->sender] = pbft_msg_ref(m);
    maybe_join(r);
    arm_view_change_timer(r);
    try_new_view(r);
}

static void on_new_view(pbft_replica *r, pbft_msg *m)
{
    const Fedbft__NewView *nv = m->u.new_view;
    if (nv->view == 0) {
        reject(r, PBFT_REJ_BAD_NEW_VIEW);
        return;
    }
    if (nv->view < r->view || (nv->view == r->view && !r->view_changing)) {
        /* the primary re-sends the NEW-VIEW while some replica lags */
        bool same = r->new_view && r->new_view->raw_len == m->raw_len &&
                    memcmp(r->new_view->raw, m->raw, m->raw_len) == 0;
        reject(r, same ? PBFT_REJ_DUPLICATE : PBFT_REJ_STALE_VIEW);
        return;
    }
    pbft_new_view_info info;
    char why[160];
    pbft_req_lookup lk = pbft_request_lookup(r);
    if (pbft_vc_check_new_view(&r->params, m, &lk, &r->digests, &info, why, sizeof why) != 0) {
        reject(r, PBFT_REJ_BAD_NEW_VIEW);
        return;
    }
    if (nv->view > r->view) {
        /* We had not voted for this view; the proof shows a quorum did. */
        r->view = nv->view;
        r->view_changing = true;
    }
    install_new_view(r, m, &info);
    pbft_new_view_info_free(&info);
}

/* ------------------------------------------------------------ timers */

static void update_request_timer(pbft_replica *r)
{
    if (r->view_changing) {
        r->request_at = NO_DEADLINE;
        return;
    }
    /* Section 4.4: a backup waiting for a request starts a timer; it is
     * restarted when a request executes while others still wait. */
    uint64_t oldest = NO_DEADLINE;
    for (uint32_t i = 0; i < r->clients.count; i++) {
        pbft_client *c = &r->clients.recs[i];
        if (c->pending && c->pending_since < oldest)
            oldest = c->pending_since;
    }
    if (oldest == NO_DEADLINE) {
        r->request_at = NO_DEADLINE;
        return;
    }
    uint64_t at = oldest + r->cfg.request_timeout_ms;
    if (r->request_at == NO_DEADLINE || at > r->request_at)
        r->request_at = at;
}

static void retransmit(pbft_replica *r)
{
    if (r->view_changing) {
        if (r->vcs[r->cfg.id])
            broadcast(r, r->vcs[r->cfg.id]);
        return;
    }
    /* While busy, new traffic shows a lagging replica it is behind and the
     * next checkpoint brings it along; once the primary has been idle for a
     * retransmit period, it also re-sends what is committed above the stable
     * checkpoint, so a replica that missed the last batches before the
     * cluster went quiet can finish them (answered by help_laggard). */
    bool idle = is_primary(r) && r->now >= r->last_proposal_at + r->cfg.retransmit_ms;
    for (uint64_t q = idle ? r->h + 1 : r->last_executed + 1; q <= high_mark(r); q++) {
        slot *s = slot_at(r, q);
        if (s->seq != q || !s->pp)
            continue;
        if (s->committed) {
            if (idle && s->pp_view == r->view)
                broadcast(r, s->pp);
            continue;
        }
        if (primary_of(r, s->pp_view) == r->cfg.id)
            broadcast(r, s->pp);
        else if (s->prepares[r->cfg.id])
            broadcast(r, s->prepares[r->cfg.id]);
        if (s->own_commit_sent && s->commits[r->cfg.id])
            broadcast(r, s->commits[r->cfg.id]);
    }
    /* Our newest checkpoint helps a lagging replica notice it is behind. */
    for (uint32_t i = 0; i < r->nckpts; i++) {
        ckpt *c = &r->ckpts[i];
        if (c->seq && c->msgs[r->cfg.id])
            broadcast(r, c->msgs[r->cfg.id]);
    }
    if (r->nh_proof && r->h_proof[0]) {
        for (uint32_t i = 0; i < r->nh_proof; i++)
            if (r->h_proof[i]->sender == r->cfg.id)
                broadcast(r, r->h_proof[i]);
    }
    if (r->new_view && is_primary(r) && r->last_executed < r->next_seq - 1)
        broadcast(r, r->new_view);
}

static void on_time(pbft_replica *r)
{
    if (r->vc_at != NO_DEADLINE && r->now >= r->vc_at) {
        r->vc_at = NO_DEADLINE;
        if (r->view_changing && target_view_live(r)) {
            /* f+1 replicas run our target view, so its NEW-VIEW exists and
             * only failed to reach us: ask its primary again and wait. */
            memset(r->target_live, 0, r->n * sizeof *r->target_live);
            r->vc_at = r->now + vc_timeout(r);
            if (r->vcs[r->cfg.id])
                send_to(r, primary_of(r, r->view), r->vcs[r->cfg.id]);
        } else if (r->view_changing) {
            start_view_change(r, r->view + 1); /* NEW-VIEW never came: next primary */
        }
    }
    if (r->request_at != NO_DEADLINE && r->now >= r->request_at) {
        r->request_at = NO_DEADLINE;
        /* Not while fetching state: then we are the slow one, not the
         * primary (the timer starts again once the state is installed). */
        if (!r->view_changing && r->clients.npending > 0 && !r->fetching)
            start_view_change(r, r->view + 1); /* the primary stalls or equivocates */
    }
    if (r->batch_at != NO_DEADLINE && r->now >= r->batch_at) {
        r->batch_at = NO_DEADLINE;
        try_propose(r);
    }
    if (r->fetching && r->now >= r->fetch_retry_at)
        ask_fetch(r);
    if (r->now >= r->retransmit_at) {
        r->retransmit_at = r->now + r->cfg.retransmit_ms;
        retransmit(r);
    }
}

static void emit_timer(pbft_replica *r)
{
    uint64_t at = r->retransmit_at;
    if (r->batch_at < at)
        at = r->batch_at;
    if (r->request_at < at)
        at = r->request_at;
    if (r->vc_at < at)
        at = r->vc_at;
    if (r->fetching && r->fetch_retry_at < at)
        at = r->fetch_retry_at;
    if (at != r->timer_emitted) {
        r->timer_emitted = at;
        pbft_action *a = push(r, PBFT_ACT_TIMER);
        a->at_ms = at;
    }
}

/* ------------------------------------------------------------ lifecycle */

int pbft_new(const pbft_config *cfg, pbft_replica **out, char *err, size_t errlen)
{
    pbft_config c = *cfg;
    int rc = pbft_config_check(&c, err, errlen);
    if (rc)
        return rc;
    pbft_replica *r = calloc(1, sizeof *r);
    if (!r)
        return FB_ENOMEM;
    r->cfg = c;
    r->n = c.n;
    r->f = pbft_f(c.n);
    r->quorum = pbft_quorum(c.n);
    r->params = (pbft_params){.n = c.n, .quorum = r->quorum, .log_window = c.log_window};
    r->next_seq = 1;
    r->batch_at = r->request_at = r->vc_at = NO_DEADLINE;
    r->timer_emitted = NO_DEADLINE;
    r->nckpts = c.log_window / c.checkpoint_interval + 1;
    r->slots = calloc(c.log_window, sizeof *r->slots);
    r->ckpts = calloc(r->nckpts, sizeof *r->ckpts);
    r->vcs = calloc(c.n, sizeof *r->vcs);
    r->target_live = calloc(c.n, sizeof *r->target_live);
    r->far_ckpt = calloc(c.n, sizeof *r->far_ckpt);
    uint64_t early = 2ull * c.n * c.log_window; /* a PRE-PREPARE and n votes per seq */
    r->early_cap = early < MAX_EARLY ? (uint32_t)early : MAX_EARLY;
    r->early = calloc(r->early_cap, sizeof *r->early);
    r->h_proof = calloc(r->quorum, sizeof *r->h_proof);
    r->exec_cap = c.batch_max_requests > 1 ? c.batch_max_requests : 1;
    r->exec_reqs = calloc(r->exec_cap, sizeof *r->exec_reqs);
    bool ok = r->slots && r->ckpts && r->vcs && r->target_live && r->far_ckpt && r->early &&
              r->h_proof && r->exec_reqs && pbft_clients_init(&r->clients, c.max_clients) == 0;
    for (uint32_t i = 0; ok && i < c.log_window; i++) {
        slot *s = &r->slots[i];
        s->prepares = calloc(c.n, sizeof *s->prepares);
        s->commits = calloc(c.n, sizeof *s->commits);
        s->cert_prepares = calloc(r->quorum, sizeof *s->cert_prepares);
        s->helped_at = calloc(c.n, sizeof *s->helped_at);
        s->skipped = calloc(c.n, 1);
        ok = s->prepares && s->commits && s->cert_prepares && s->helped_at && s->skipped;
    }
    for (uint32_t i = 0; ok && i < r->nckpts; i++)
        ok = (r->ckpts[i].msgs = calloc(c.n, sizeof *r->ckpts[i].msgs)) != NULL;
    if (!ok) {
        pbft_free(r);
        return FB_ENOMEM;
    }
    *out = r;
    return 0;
}

static void release_held(pbft_replica *r)
{
    for (size_t i = 0; i < r->nheld; i++)
        pbft_msg_unref(r->held[i]);
    r->nheld = 0;
    r->nacts = 0;
}

void pbft_free(pbft_replica *r)
{
    if (!r)
        return;
    release_held(r);
    for (uint32_t i = 0; r->slots && i < r->cfg.log_window; i++) {
        if (r->slots[i].prepares && r->slots[i].commits && r->slots[i].cert_prepares &&
            r->slots[i].helped_at && r->slots[i].skipped)
            slot_reset(r, &r->slots[i]);
        free(r->slots[i].helped_at);
        free(r->slots[i].skipped);
        free(r->slots[i].prepares);
        free(r->slots[i].commits);
        free(r->slots[i].cert_prepares);
    }
    for (uint32_t i = 0; r->ckpts && i < r->nckpts; i++) {
        if (r->ckpts[i].msgs)
            ckpt_release(r, &r->ckpts[i]);
        free(r->ckpts[i].msgs);
    }
    for (uint32_t i = 0; i < r->n; i++) {
        if (r->vcs)
            pbft_msg_unref(r->vcs[i]);
        if (r->far_ckpt)
            pbft_msg_unref(r->far_ckpt[i]);
    }
    for (uint32_t i = 0; i < r->nh_proof; i++)
        pbft_msg_unref(r->h_proof[i]);
    for (uint32_t i = 0; i < r->nearly; i++)
        pbft_msg_unref(r->early[i]);
    free(r->early);
    for (size_t i = 0; i < r->nexec_reqs; i++)
        pbft_msg_unref(r->exec_reqs[i]);
    for (uint32_t i = 0; i < r->ro_count; i++)
        pbft_msg_unref(r->ro_queue[(r->ro_head + i) % MAX_READONLY]);
    pbft_msg_unref(r->new_view);
    pbft_clients_close(&r->clients);
    free(r->slots);
    free(r->ckpts);
    free(r->vcs);
    free(r->target_live);
    free(r->far_ckpt);
    free(r->h_proof);
    free(r->exec_reqs);
    free(r->ro_result);
    free(r->acts);
    free(r->held);
    free(r);
}

/* ------------------------------------------------------------ step */

static void on_message(pbft_replica *r, pbft_msg *m);

/* The window moved: step the held messages it now covers, in arrival order;
 * drop the ones at or below h; keep the ones still above H. */
static void step_early(pbft_replica *r)
{
    uint32_t n = r->nearly, keep = 0;
    pbft_msg *list[n ? n : 1];
    memcpy(list, r->early, n * sizeof *list);
    r->nearly = 0;
    for (uint32_t i = 0; i < n; i++) {
        pbft_msg *m = list[i];
        uint64_t view, seq;
        pbft_msg_view_seq(m, &view, &seq);
        if (seq > high_mark(r)) {
            list[keep++] = m;
            continue;
        }
        if (seq > r->h) {
            on_message(r, m);
            hold(r, m); /* the step's actions may point into it */
        }
        pbft_msg_unref(m);
    }
    for (uint32_t i = 0; i < keep; i++) {
        if (r->nearly < r->early_cap)
            r->early[r->nearly++] = list[i];
        else
            pbft_msg_unref(list[i]);
    }
}

/* In a view change without our vote for the current target (a crash came
 * between recording the view and voting, or we abstained): vote, if we may,
 * and run the view-change timer. */
static void rejoin_view_change(pbft_replica *r)
{
    pbft_msg *own = r->vcs[r->cfg.id];
    if (r->view_changing && (!own || own->u.view_change->new_view != r->view) &&
        !abstains_from_views(r))
        vote_for_view(r);
    arm_view_change_timer(r);
}

/* CHECKPOINTs that came above H (far_ckpt, each sender's newest) and that
 * the window now covers count toward their checkpoint's certificate. */
static void far_into_window(pbft_replica *r)
{
    for (uint32_t i = 0; i < r->n; i++) {
        pbft_msg *m = r->far_ckpt[i];
        if (!m || m->u.checkpoint->seq > high_mark(r))
            continue;
        r->far_ckpt[i] = NULL;
        if (m->u.checkpoint->seq > r->h) {
            on_checkpoint(r, m);
            hold(r, m); /* the step's actions may point into it */
        }
        pbft_msg_unref(m);
    }
}

/* After every step: a stable checkpoint that moved (whatever moved it: our
 * execution, a peer's CHECKPOINT, a state install, a NEW-VIEW) reopens what
 * waited for the window. */
static void after_window_moved(pbft_replica *r, uint64_t h_before, bool abstained)
{
    if (r->h == h_before)
        return;
    uint64_t h;
    do { /* each may move h again */
        h = r->h;
        far_into_window(r);
        step_early(r);
    } while (r->h != h);
    try_propose(r); /* a primary stopped at H goes on */
    if (abstained && !abstains_from_views(r) && r->view_changing) {
        /* A wiped replica that may vote again in a view change it sat out:
         * its VIEW-CHANGE may be the one the quorum lacks. */
        rejoin_view_change(r);
        try_new_view(r);
    }
}

static void on_message(pbft_replica *r, pbft_msg *m)
{
    if (m->type != FEDBFT__MSG_TYPE__MSG_REQUEST && m->sender >= r->n) {
        reject(r, PBFT_REJ_INVALID);
        return;
    }
    switch (m->type) {
    case FEDBFT__MSG_TYPE__MSG_REQUEST:
        on_request(r, m, false);
        break;
    case FEDBFT__MSG_TYPE__MSG_PRE_PREPARE:
        on_pre_prepare(r, m);
        break;
    case FEDBFT__MSG_TYPE__MSG_PREPARE:
        on_prepare(r, m);
        break;
    case FEDBFT__MSG_TYPE__MSG_COMMIT:
        on_commit(r, m);
        break;
    case FEDBFT__MSG_TYPE__MSG_CHECKPOINT:
        on_checkpoint(r, m);
        break;
    case FEDBFT__MSG_TYPE__MSG_VIEW_CHANGE:
        on_view_change(r, m);
        break;
    case FEDBFT__MSG_TYPE__MSG_NEW_VIEW:
        on_new_view(r, m);
        break;
    default:
        reject(r, PBFT_REJ_INVALID);
        break;
    }
}

const pbft_action *pbft_step(pbft_replica *r, const pbft_event *ev, size_t *nactions)
{
    release_held(r);
    if (ev->now_ms > r->now)
        r->now = ev->now_ms;
    if (r->restored) {
        /* Back from a crash: re-send our part of unfinished work now (our
         * VIEW-CHANGE included) and wait for NEW-VIEW from this moment.  If
         * the crash came between recording the view and our vote for it, the
         * vote is made again (it is ours to make; nothing else was sent). */
        r->restored = false;
        r->retransmit_at = r->now;
        rejoin_view_change(r);
    } else if (r->retransmit_at == 0) {
        r->retransmit_at = r->now + r->cfg.retransmit_ms;
    }
    uint64_t h_before = r->h;
    bool abstained = abstains_from_views(r);
    switch (ev->kind) {
    case PBFT_EV_MESSAGE:
        if (ev->msg)
            on_message(r, ev->msg);
        break;
    case PBFT_EV_REQUEST:
        if (ev->msg && ev->msg->type == FEDBFT__MSG_TYPE__MSG_REQUEST)
            on_request(r, ev->msg, true);
        else
            reject(r, PBFT_REJ_INVALID);
        break;
    case PBFT_EV_EXECUTED:
        on_executed(r, ev);
        break;
    case PBFT_EV_STATE_INSTALLED:
        on_state_installed(r, ev);
        break;
    case PBFT_EV_TICK:
        break;
    case PBFT_EV_VIEW_CHANGE:
        start_view_change(r, r->view + 1);
        break;
    case PBFT_EV_FETCH_FAILED:
        on_fetch_failed(r, ev->installed.seq);
        break;
    }
    on_time(r);
    after_window_moved(r, h_before, abstained);
    emit_timer(r);
    *nactions = r->nacts;
    return r->acts;
}

/* ------------------------------------------------------------ restore */

static void restore_msg(pbft_replica *r, pbft_msg *m)
{
    switch (m->type) {
    case FEDBFT__MSG_TYPE__MSG_PRE_PREPARE: {
        const Fedbft__PrePrepare *pp = m->u.pre_prepare;
        slot *s = slot_for(r, pp->seq);
        if (!s)
            return;
        if (s->pp && s->pp_view > pp->view)
            return;
        if (s->pp && s->pp_view != pp->view)
            release_votes(r, s);
        pbft_msg_unref(s->pp);
        s->pp = pbft_msg_ref(m);
        s->pp_view = pp->view;
        s->prepared = s->committed = false;
        if (m->sender == r->cfg.id && pp->seq >= r->next_seq)
            r->next_seq = pp->seq + 1;
        break;
    }
    case FEDBFT__MSG_TYPE__MSG_PREPARE: {
        slot *s = slot_for(r, m->u.prepare->seq);
        if (s && !s->prepares[m->sender] && (!s->pp || s->pp_view == m->u.prepare->view))
            s->prepares[m->sender] = pbft_msg_ref(m);
        break;
    }
    case FEDBFT__MSG_TYPE__MSG_CHECKPOINT: {
        uint64_t seq = m->u.checkpoint->seq;
        ckpt *c = in_window(r, seq) ? ckpt_for(r, seq, true) : NULL;
        if (c && !c->msgs[m->sender]) {
            c->msgs[m->sender] = pbft_msg_ref(m);
            if (m->sender == r->cfg.id) {
                c->own = true;
                memcpy(c->own_digest, m->u.checkpoint->state_digest.data, FB_DIGEST_LEN);
            }
        } else if (!c && seq > high_mark(r)) {
            pbft_msg *old = r->far_ckpt[m->sender];
            if (!old || old->u.checkpoint->seq < seq) {
                pbft_msg_unref(old);
                r->far_ckpt[m->sender] = pbft_msg_ref(m);
            }
        }
        break;
    }
    case FEDBFT__MSG_TYPE__MSG_VIEW_CHANGE:
        if (m->sender == r->cfg.id) {
            pbft_msg_unref(r->vcs[r->cfg.id]);
            r->vcs[r->cfg.id] = pbft_msg_ref(m);
        }
        break;
    case FEDBFT__MSG_TYPE__MSG_NEW_VIEW:
        pbft_msg_unref(r->new_view);
        r->new_view = pbft_msg_ref(m);
        break;
    default:
        break;
    }
}

/* Rebuild the certificates the restored votes prove. */
static void restore_certs(pbft_replica *r)
{
    for (uint32_t i = 0; i < r->cfg.log_window; i++) {
        slot *s = &r->slots[i];
        if (!s->seq || !s->pp)
            continue;
        if (s->seq <= r->last_executed)
            s->executed = s->committed = true;
        uint32_t primary = primary_of(r, s->pp_view), k = 0;
        pbft_msg *cert[r->n];
        for (uint32_t j = 0; j < r->n; j++) {
            pbft_msg *m = s->prepares[j];
            if (m && j != primary && m->u.prepare->view == s->pp_view &&
                digest_eq(m->u.prepare->digest.data, pp_digest(s->pp)))
                cert[k++] = m;
        }
        if (k + 1 >= r->quorum) {
            release_cert(s);
            s->cert_pp = pbft_msg_ref(s->pp);
            for (uint32_t j = 0; j + 1 < r->quorum; j++)
                s->cert_prepares[s->ncert++] = pbft_msg_ref(cert[j]);
        }
        /* Our own votes were not persisted: they follow from what was
         * (deterministic signatures make them the same bytes), and the first
         * retransmission sends them again. */
        if (r->view_changing || s->pp_view != r->view || s->executed || abstains(r, s->seq))
            continue;
        if (primary != r->cfg.id && !s->prepares[r->cfg.id])
            own_prepare(r, s);
        if (s->cert_pp == s->pp) {
            s->prepared = true;
            own_commit(r, s);
        }
    }
}

/* The proof of the STABLE record at recs[upto]: CHECKPOINT messages for seq
 * logged before it, one per sender, agreeing in a quorum.  Taken from the
 * records themselves, since the in-memory tables keep only each sender's
 * newest checkpoint and ours for a later seq may be logged already. */
static uint32_t stable_proof_from_log(const pbft_replica *r, const pbft_record *recs, size_t upto,
                                      uint64_t seq, pbft_msg **proof)
{
    pbft_msg *by_sender[r->n];
    memset(by_sender, 0, sizeof by_sender);
    for (size_t i = 0; i < upto; i++) {
        pbft_msg *m = recs[i].msg;
        if (recs[i].kind == PBFT_REC_MSG && m && m->type == FEDBFT__MSG_TYPE__MSG_CHECKPOINT &&
            m->u.checkpoint->seq == seq && m->sender < r->n)
            by_sender[m->sender] = m;
    }
    for (uint32_t i = 0; i < r->n; i++) {
        if (!by_sender[i])
            continue;
        uint32_t k = 0;
        for (uint32_t j = 0; j < r->n; j++)
            if (by_sender[j] && digest_eq(by_sender[j]->u.checkpoint->state_digest.data,
                                          by_sender[i]->u.checkpoint->state_digest.data))
                proof[k++] = by_sender[j];
        if (k >= r->quorum)
            return k;
    }
    return 0;
}

int pbft_restore(pbft_replica *r, const pbft_record *recs, size_t nrecs, uint64_t last_executed,
                 const uint8_t *client_table, size_t client_table_len)
{
    int rc =
        pbft_clients_import(&r->clients, client_table, client_table_len, r->cfg.max_result_bytes);
    if (rc)
        return rc;
    /* Pass 1: the stable checkpoint first.  A store that garbage-collected
     * keeps records above the checkpoint that were logged before its STABLE
     * record; replayed in plain order they would fall outside the window. */
    for (size_t i = 0; i < nrecs; i++) {
        const pbft_record *rec = &recs[i];
        if (rec->kind == PBFT_REC_MSG && rec->msg &&
            rec->msg->type == FEDBFT__MSG_TYPE__MSG_CHECKPOINT)
            restore_msg(r, rec->msg);
        if (rec->kind != PBFT_REC_STABLE || rec->seq <= r->h)
            continue;
        pbft_msg *proof[r->n];
        uint32_t k = stable_proof_from_log(r, recs, i, rec->seq, proof);
        if (k < r->quorum)
            return FB_ECORRUPT; /* a stable record always follows its proof */
        uint8_t d[FB_DIGEST_LEN];
        memcpy(d, proof[0]->u.checkpoint->state_digest.data, FB_DIGEST_LEN);
        set_stable_proof(r, rec->seq, d, proof, k);
        garbage_collect(r);
    }
    /* Pass 2: everything else, in the order it was persisted. */
    for (size_t i = 0; i < nrecs; i++) {
        const pbft_record *rec = &recs[i];
        if (rec->kind == PBFT_REC_VIEW) {
            r->view = rec->view;
            r->view_changing = rec->view_changing;
        } else if (rec->kind == PBFT_REC_ABSTAIN) {
            r->abstain_pending = false;
            if (rec->seq > r->abstain_until)
                r->abstain_until = rec->seq;
        } else if (rec->kind == PBFT_REC_MSG && rec->msg &&
                   rec->msg->type != FEDBFT__MSG_TYPE__MSG_CHECKPOINT) {
            restore_msg(r, rec->msg);
        }
    }
    /* Checkpoints logged before a later STABLE were collected with it. */
    for (uint32_t i = 0; i < r->nckpts; i++) {
        ckpt *c = &r->ckpts[i];
        if (c->seq && !in_window(r, c->seq))
            ckpt_release(r, c);
    }
    r->last_executed = last_executed;
    r->last_committed = last_executed > r->h ? last_executed : r->h;
    if (r->next_seq <= last_executed)
        r->next_seq = last_executed + 1;
    restore_certs(r);
    for (uint32_t i = 0; i < r->n; i++) {
        pbft_msg *vc = r->vcs[i];
        if (vc && i != r->cfg.id) {
            pbft_msg_unref(vc);
            r->vcs[i] = NULL;
        }
    }
    r->restored = true; /* the first step re-sends what is unfinished */
    if (r->last_executed < r->h) {
        start_fetch(r, r->h, r->h_digest);
        /* Its action dies with the first step's reset: due at once, on_time
         * in that step asks again, whatever the clock reads. */
        r->fetch_retry_at = 0;
    }
    return 0;
}

void pbft_abstain_after_wipe(pbft_replica *r)
{
    r->abstain_pending = true;
}

/* ------------------------------------------------------------ queries */

static pbft_msg *find_request(void *arg, uint32_t client, uint64_t timestamp, const uint8_t *raw,
                              size_t len)
{
    pbft_replica *r = arg;
    pbft_client *c = pbft_clients_find(&r->clients, client);
    pbft_msg *m = c ? c->pending : NULL;
    if (m && m->u.request->timestamp == timestamp && m->raw_len == len &&
        memcmp(m->raw, raw, len) == 0)
        return m;
    return NULL;
}

pbft_req_lookup pbft_request_lookup(pbft_replica *r)
{
    return (pbft_req_lookup){r->cfg.no_digest_reuse ? NULL : find_request, r};
}

int pbft_parse(pbft_replica *r, const uint8_t *raw, size_t len, pbft_msg **out, char *err,
               size_t errlen)
{
    pbft_req_lookup lk = pbft_request_lookup(r);
    return pbft_msg_parse(raw, len, &lk, &r->digests, out, err, errlen);
}

int pbft_client_table_export(const pbft_replica *r, uint8_t **out, size_t *len)
{
    return pbft_clients_export(&r->clients, out, len);
}

void pbft_state_digest(const uint8_t app_digest[FB_DIGEST_LEN], const uint8_t *client_table,
                       size_t len, uint8_t out[FB_DIGEST_LEN])
{
    uint8_t ct[FB_DIGEST_LEN];
    fb_digest(FB_DOM_STATE, client_table, len, ct);
    fb_digest_ctx ctx;
    fb_digest_init(&ctx, FB_DOM_STATE);
    fb_digest_update(&ctx, app_digest, FB_DIGEST_LEN);
    fb_digest_update(&ctx, ct, FB_DIGEST_LEN);
    fb_digest_final(&ctx, out);
}

void pbft_stable_checkpoint(const pbft_replica *r, uint64_t *seq, uint8_t digest[FB_DIGEST_LEN],
                            pbft_msg *const **proof, size_t *nproof)
{
    *seq = r->h;
    memcpy(digest, r->h_digest, FB_DIGEST_LEN);
    *proof = r->h_proof;
    *nproof = r->nh_proof;
}

pbft_msg *pbft_current_new_view(const pbft_replica *r)
{
    if (r->view_changing || !is_primary(r) || !r->new_view ||
        r->new_view->u.new_view->view != r->view)
        return NULL;
    return r->new_view;
}

void pbft_get_progress(const pbft_replica *r, pbft_progress *out)
{
    out->view = r->view;
    out->view_changing = r->view_changing;
    out->last_executed = r->last_executed;
    out->stable_seq = r->h;
    out->primary = primary_of(r, r->view);
}

void pbft_get_status(const pbft_replica *r, pbft_status *out)
{
    memset(out, 0, sizeof *out);
    out->id = r->cfg.id;
    out->n = r->n;
    out->f = r->f;
    out->quorum = r->quorum;
    out->view = r->view;
    out->view_changing = r->view_changing;
    out->primary = primary_of(r, r->view);
    out->last_executed = r->last_executed;
    out->last_committed = r->last_committed;
    out->stable_seq = r->h;
    out->high_watermark = high_mark(r);
    out->pending_requests = r->clients.npending;
    out->view_changes = r->view_changes;
    out->fetching_seq = r->fetching;
    out->abstain_pending = r->abstain_pending;
    out->abstain_until = r->abstain_until;
    out->digests = r->digests;
    for (uint32_t i = 0; i < r->cfg.log_window; i++)
        out->log_entries += r->slots[i].seq != 0;
    for (int i = 0; i < PBFT_REJ_COUNT; i++) {
        out->rejected_by[i] = r->rejected_by[i];
        out->rejected += r->rejected_by[i];
    }
}

const char *pbft_reject_name(pbft_reject why)
{
    static const char *const names[PBFT_REJ_COUNT] = {
        [PBFT_REJ_STALE_VIEW] = "stale_view",
        [PBFT_REJ_NOT_PRIMARY] = "not_primary",
        [PBFT_REJ_EQUIVOCATION] = "equivocation",
        [PBFT_REJ_WATERMARK] = "watermark",
        [PBFT_REJ_DUPLICATE] = "duplicate",
        [PBFT_REJ_BAD_VIEW_CHANGE] = "invalid_view_change",
        [PBFT_REJ_BAD_NEW_VIEW] = "invalid_new_view",
        [PBFT_REJ_BAD_CHECKPOINT] = "invalid_checkpoint",
        [PBFT_REJ_INVALID] = "invalid",
    };
    return (unsigned)why < PBFT_REJ_COUNT ? names[why] : "unknown";
}
