/* sim_world.c - one simulated run: draw the scenario from the seed, run the
 * event loop, keep the trace, tear everything down.
 *
 * Time is simulated milliseconds; events at one instant run in the order
 * they were scheduled.  The fault phase lasts from 0 to heal_at; then
 * network faults stop, crashed replicas restart, and the liveness clock
 * starts (Byzantine replicas stay Byzantine).  The run ends once every
 * client has finished its requests after the heal, plus a short drain.
 */
#include "sim_int.h"

#include "fb_error.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_EVENTS 5000000ULL /* per run: far above any healthy run */
/* Packets arriving within one 100 ms window, cluster-wide.  A healthy run
 * delivers a few thousand; a feedback loop between replicas fills the
 * network queue and is reported as a storm rather than left to spin. */
#define STORM_WINDOW_MS 100
#define STORM_PACKETS 30000
#define DRAIN_MS 300 /* after the last request, so late checks still run */

/* ------------------------------------------------------------ names */

/* Indexed by the enums in sim.h; designated so a reordering cannot shift them. */
static const char *const scenario_names[SIM_SC_COUNT] = {
    [SIM_SC_NET] = "net",
    [SIM_SC_CRASH] = "crash",
    [SIM_SC_EQUIVOCATE] = "equivocate",
    [SIM_SC_WRONG_DIGEST] = "wrong-digest",
    [SIM_SC_FORGE] = "forge",
    [SIM_SC_REPLAY] = "replay",
    [SIM_SC_BAD_NEW_VIEW] = "bad-new-view",
    [SIM_SC_BAD_VC] = "bad-view-change",
    [SIM_SC_SILENT] = "silent",
    [SIM_SC_GARBAGE] = "garbage",
    [SIM_SC_TWINS] = "twins",
    [SIM_SC_CALM] = "calm",
};

static const char *const fault_names[SIM_F_COUNT] = {
    [SIM_F_LOSS] = "loss",
    [SIM_F_DUP] = "duplicate",
    [SIM_F_REORDER] = "reorder",
    [SIM_F_DELAY_SPIKE] = "delay-spike",
    [SIM_F_PARTITION] = "partition",
    [SIM_F_PARTITION_DROP] = "partition-drop",
    [SIM_F_CRASH] = "crash",
    [SIM_F_CRASH_MIDSTEP] = "crash-midstep",
    [SIM_F_RESTART] = "restart",
    [SIM_F_EQUIVOCATE] = "equivocate",
    [SIM_F_WRONG_DIGEST] = "wrong-digest",
    [SIM_F_WRONG_REPLY] = "wrong-reply",
    [SIM_F_FORGE] = "forge",
    [SIM_F_REPLAY] = "replay",
    [SIM_F_BAD_NEW_VIEW] = "bad-new-view",
    [SIM_F_BAD_VC] = "bad-view-change",
    [SIM_F_SILENT] = "silent-ignored",
    [SIM_F_GARBAGE] = "garbage",
    [SIM_F_TWIN] = "twin-msg",
    [SIM_F_BAD_STATE] = "bad-state-offer",
};

static const char *const counter_names[SIM_C_COUNT] = {
    [SIM_C_REQUESTS] = "requests",
    [SIM_C_READ_ONLY] = "read-only",
    [SIM_C_RO_FALLBACK] = "ro-fallback",
    [SIM_C_EXECUTED] = "executed",
    [SIM_C_DELIVERED] = "delivered",
    [SIM_C_DROP_PARSE] = "drop-parse",
    [SIM_C_DROP_SIG] = "drop-sig",
    [SIM_C_DROP_DOWN] = "drop-down",
    [SIM_C_DROP_QUEUE] = "drop-queue",
    [SIM_C_VERIFIES] = "verifies",
    [SIM_C_ED25519] = "ed25519",
    [SIM_C_SIGCACHE_HITS] = "sigcache-hits",
    [SIM_C_VIEW_CHANGES] = "view-changes",
    [SIM_C_MAX_VIEW] = "max-view",
    [SIM_C_STATE_TRANSFERS] = "state-transfers",
    [SIM_C_CHECKPOINTS] = "checkpoints",
    [SIM_C_EVENTS] = "events",
};

const char *sim_scenario_name(int sc)
{
    return sc >= 0 && sc < SIM_SC_COUNT ? scenario_names[sc] : "?";
}

int sim_scenario_parse(const char *name)
{
    for (int i = 0; i < SIM_SC_COUNT; i++)
        if (strcmp(name, scenario_names[i]) == 0)
            return i;
    return -1;
}

const char *sim_fault_name(int f)
{
    return f >= 0 && f < SIM_F_COUNT ? fault_names[f] : "?";
}

const char *sim_counter_name(int c)
{
    return c >= 0 && c < SIM_C_COUNT ? counter_names[c] : "?";
}

uint64_t sim_seed_make(uint64_t base, uint32_t n, int scenario)
{
    return (base << 16) | ((uint64_t)(n & 0xff) << 8) | (uint64_t)(scenario & 0xff);
}

int sim_seed_split(uint64_t seed, uint32_t *n, int *scenario)
{
    uint32_t nn = (uint32_t)(seed >> 8) & 0xff;
    int sc = (int)(seed & 0xff);
    if (nn < 4 || nn > SIM_MAX_N || sc >= SIM_SC_COUNT)
        return -1;
    *n = nn;
    *scenario = sc;
    return 0;
}

/* ------------------------------------------------------------ trace */

static const char *type_name(uint64_t t)
{
    static const char *const names[] = {"?",           "REQUEST",     "REPLY",
                                        "PRE-PREPARE", "PREPARE",     "COMMIT",
                                        "CHECKPOINT",  "VIEW-CHANGE", "NEW-VIEW"};
    return t < sizeof names / sizeof names[0] ? names[t] : "?";
}

static void node_label(const sim_world *w, uint32_t inst, char *buf, size_t len)
{
    if (inst == SIM_NONE || inst >= w->ninst)
        snprintf(buf, len, "--");
    else if (w->nodes[inst].twin)
        snprintf(buf, len, "r%u%s", w->nodes[inst].id, inst >= w->n ? "b" : "a");
    else
        snprintf(buf, len, "r%u%s", w->nodes[inst].id, w->nodes[inst].faulty ? "*" : "");
}

static int format_tr(const sim_world *w, const sim_tr *t, char *buf, size_t len)
{
    char who[16];
    node_label(w, t->node, who, sizeof who);
    unsigned long long a = t->a, b = t->b, c = t->c, d = t->d;
    char body[200];
    switch (t->kind) {
    case TR_DELIVER:
        snprintf(body, sizeof body, "<- %s%llu %s v=%llu s=%llu", a >= SIM_CLIENT_BASE ? "c" : "r",
                 a, type_name(b), c, d);
        break;
    case TR_DROP_PARSE:
        snprintf(body, sizeof body, "drops %llu unparsable bytes from %llu", b, a);
        break;
    case TR_DROP_SIG:
        snprintf(body, sizeof body, "drops %s from %llu claiming %llu: bad signature", type_name(b),
                 a, c);
        break;
    case TR_REQUEST:
        snprintf(body, sizeof body, "client %llu sends ts=%llu op=%llu", a, b, c);
        break;
    case TR_EXEC:
        snprintf(body, sizeof body, "EXECUTE s=%llu v=%llu reqs=%llu digest=%04llx", a, b, c, d);
        break;
    case TR_VIEW:
        snprintf(body, sizeof body, "view %llu%s (executed %llu, stable %llu)", a,
                 b ? " changing" : "", c, d);
        break;
    case TR_CRASH:
        snprintf(body, sizeof body, "CRASH%s (%llu records, executed %llu)", a ? " mid-step" : "",
                 b, c);
        break;
    case TR_RESTART:
        snprintf(body, sizeof body, "RESTART from %llu records, executed %llu", a, b);
        break;
    case TR_PARTITION:
        snprintf(body, sizeof body, "PARTITION kind %llu, group-1 mask %#llx", a, b);
        break;
    case TR_UNPARTITION:
        snprintf(body, sizeof body, "partition ends");
        break;
    case TR_HEAL:
        snprintf(body, sizeof body, "HEAL: faults stop; bound %llu ms", a);
        break;
    case TR_FETCH:
        snprintf(body, sizeof body, "FETCH_STATE s=%llu (proof of %llu)", a, b);
        break;
    case TR_INSTALL:
        snprintf(body, sizeof body, "state installed at s=%llu", a);
        break;
    case TR_ACCEPT:
        snprintf(body, sizeof body, "client %llu accepts ts=%llu after %llu ms", a, b, c);
        break;
    case TR_BYZ:
        snprintf(body, sizeof body, "BYZANTINE %s (%llu, %llu, %llu)", sim_fault_name((int)a), b, c,
                 d);
        break;
    case TR_SEND:
        if (a == SIM_ALL)
            snprintf(body, sizeof body, "-> all %s v=%llu s=%llu", type_name(b), c, d);
        else
            snprintf(body, sizeof body, "-> r%llu %s v=%llu s=%llu", a, type_name(b), c, d);
        break;
    case TR_CKPT:
        snprintf(body, sizeof body, "CHECKPOINT s=%llu digest=%02llx", a, b);
        break;
    default:
        snprintf(body, sizeof body, "?");
        break;
    }
    return snprintf(buf, len, "[%7llu ms] %-4s %s\n", (unsigned long long)t->t, who, body);
}

void sim_trace(sim_world *w, uint32_t kind, uint32_t node, uint64_t a, uint64_t b, uint64_t c,
               uint64_t d)
{
    sim_tr *t = &w->trace[w->ntrace++ % SIM_TRACE];
    *t = (sim_tr){w->now, kind, node, a, b, c, d};
    if (w->verbose) {
        char line[300];
        format_tr(w, t, line, sizeof line);
        fputs(line, stdout);
    }
}

/* Where every replica stood when the check broke (pbft_get_status). */
static size_t status_dump(sim_world *w, char *out, size_t cap)
{
    size_t used = 0;
    for (uint32_t j = 0; j < w->ninst && used + 1 < cap; j++) {
        sim_node *nd = &w->nodes[j];
        char who[16];
        node_label(w, j, who, sizeof who);
        int k;
        if (!nd->up) {
            k = snprintf(out + used, cap - used, "  %-4s down (disk: %zu records, executed %llu)\n",
                         who, nd->disk.nrecs, (unsigned long long)nd->disk.last_executed);
        } else {
            pbft_status st;
            pbft_get_status(nd->r, &st);
            k = snprintf(
                out + used, cap - used,
                "  %-4s view %llu%s primary %u executed %llu committed %llu stable %llu "
                "H %llu pending %llu fetching %llu log %llu rejected %llu\n",
                who, (unsigned long long)st.view, st.view_changing ? " changing" : "", st.primary,
                (unsigned long long)st.last_executed, (unsigned long long)st.last_committed,
                (unsigned long long)st.stable_seq, (unsigned long long)st.high_watermark,
                (unsigned long long)st.pending_requests, (unsigned long long)st.fetching_seq,
                (unsigned long long)st.log_entries, (unsigned long long)st.rejected);
        }
        if (k < 0)
            break;
        used += (size_t)k < cap - used ? (size_t)k : cap - used - 1;
    }
    return used;
}

static void trace_tail(sim_world *w, size_t lines)
{
    char *out = w->res->trace;
    size_t cap = sizeof w->res->trace, used = 0;
    int k =
        snprintf(out, cap,
                 "  config: K=%u L=%u batch<=%u T_req=%llu T_vc=%llu (max backoff %u) "
                 "retransmit=%llu disk-gc=%s\n",
                 w->cfg.checkpoint_interval, w->cfg.log_window, w->cfg.batch_max_requests,
                 (unsigned long long)w->cfg.request_timeout_ms,
                 (unsigned long long)w->cfg.view_change_timeout_ms, w->cfg.view_change_max_backoff,
                 (unsigned long long)w->cfg.retransmit_ms, w->disk_gc ? "on" : "off");
    if (k > 0 && (size_t)k < cap)
        used = (size_t)k;
    used += status_dump(w, out + used, cap - used);
    size_t have = w->ntrace < SIM_TRACE ? w->ntrace : SIM_TRACE;
    if (lines > have)
        lines = have;
    for (size_t i = w->ntrace - lines; i < w->ntrace && used + 1 < cap; i++) {
        int len = format_tr(w, &w->trace[i % SIM_TRACE], out + used, cap - used);
        if (len < 0)
            break;
        used += (size_t)len < cap - used ? (size_t)len : cap - used - 1;
    }
    out[used] = '\0';
}

void sim_fail(sim_world *w, const char *fmt, ...)
{
    if (w->failed)
        return; /* the first broken check is the one that matters */
    w->failed = true;
    w->res->failed = true;
    char msg[600];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    snprintf(w->res->why, sizeof w->res->why, "at %llu ms: %s", (unsigned long long)w->now, msg);
    if (w->verbose)
        printf("FAIL %s\n", w->res->why);
}

void sim_fingerprint(sim_world *w, uint64_t v)
{
    w->fp = (w->fp ^ v) * 0x100000001b3ULL;
    w->fp ^= w->fp >> 29;
}

uint32_t sim_current_primary(sim_world *w)
{
    uint64_t view = 0;
    for (uint32_t j = 0; j < w->ninst; j++) {
        const sim_node *nd = &w->nodes[j];
        if (nd->up && !nd->faulty && nd->view > view)
            view = nd->view;
    }
    return pbft_primary(view, w->n);
}

/* ------------------------------------------------------------ setup */

static bool scenario_byzantine(int sc)
{
    return sc >= SIM_SC_EQUIVOCATE && sc <= SIM_SC_TWINS;
}

static uint32_t random_correct(sim_world *w)
{
    for (;;) {
        uint32_t id = (uint32_t)rng_below(&w->rng, w->n);
        if (!w->faulty[id])
            return id;
    }
}

static void choose_faulty(sim_world *w)
{
    if (!scenario_byzantine(w->scenario))
        return;
    uint32_t want = w->f;
    /* Scenarios that need a faulty primary at some point fix who it is:
     * the equivocator leads view 0, the bad NEW-VIEW comes from the primary
     * of view 1 (replica 0 is crashed early to get there). */
    if (w->scenario == SIM_SC_EQUIVOCATE) {
        w->faulty[0] = true;
        w->nfaulty = 1;
    } else if (w->scenario == SIM_SC_BAD_NEW_VIEW) {
        for (uint32_t i = 1; i <= want; i++)
            w->faulty[i] = true;
        w->nfaulty = want;
    }
    while (w->nfaulty < want) {
        uint32_t id = (uint32_t)rng_below(&w->rng, w->n);
        if (!w->faulty[id]) {
            w->faulty[id] = true;
            w->nfaulty++;
        }
    }
}

static int setup_config(sim_world *w)
{
    pbft_config *c = &w->cfg;
    memset(c, 0, sizeof *c);
    c->n = w->n;
    if (w->calm) {
        /* Where a missed wake-up shows: one request per batch and a window
         * of two checkpoint intervals (max_inflight L / 2 = K), so that the
         * primary reaches H under load and must go on once a checkpoint
         * becomes stable.  K = 1 makes a backup's stable checkpoint lag
         * the primary's by 2K or more (what hold_early keeps must reach
         * H + L) and parks CHECKPOINTs above H in far_ckpt (they must
         * count once H moves).  The timers come later (calm_timers). */
        static const uint32_t ks[] = {1, 2, 4, 8};
        c->checkpoint_interval = ks[rng_below(&w->rng, 4)];
        c->log_window = c->checkpoint_interval * (rng_below(&w->rng, 4) ? 2 : 4);
        static const uint32_t batches[] = {1, 1, 1, 2, 4, 64};
        c->batch_max_requests = batches[rng_below(&w->rng, 6)];
        c->batch_max_delay_ms = rng_range(&w->rng, 1, 5);
    } else {
        static const uint32_t ks[] = {4, 8, 16};
        c->checkpoint_interval = ks[rng_below(&w->rng, 3)];
        c->log_window = c->checkpoint_interval * (rng_below(&w->rng, 2) ? 2 : 4);
        static const uint32_t batches[] = {1, 2, 4, 64};
        c->batch_max_requests = batches[rng_below(&w->rng, 4)];
        c->batch_max_delay_ms = rng_range(&w->rng, 1, 5);
        c->request_timeout_ms = rng_range(&w->rng, 150, 400);
        c->view_change_timeout_ms = rng_range(&w->rng, 150, 400);
        c->retransmit_ms = rng_range(&w->rng, 40, 150);
    }
    c->signer = (pbft_signer){node_sign, &w->rkeys[0]};
    char err[200] = "";
    int rc = pbft_config_check(c, err, sizeof err);
    if (rc)
        sim_fail(w, "harness: pbft_config_check refused the config: %s", err);
    return rc;
}

static void schedule_faults(sim_world *w)
{
    sim_rng *r = &w->rng;
    /* Partitions, one at a time, during the fault phase. */
    uint32_t part_ppm = w->scenario == SIM_SC_NET ? 850000 : 450000;
    uint64_t t = rng_range(r, 100, 600);
    bool first = true;
    while (t + 50 < w->heal_at) {
        if (rng_ppm(r, part_ppm) || (first && w->scenario == SIM_SC_BAD_VC)) {
            /* bad-view-change needs view changes: isolate the primary first. */
            uint64_t kind = first && w->scenario == SIM_SC_BAD_VC ? 1 : rng_below(r, 3);
            uint64_t dur = rng_range(r, 100, 1200);
            uint64_t end = t + dur < w->heal_at ? t + dur : w->heal_at;
            sim_schedule(w, t, EV_PARTITION, 0, kind, NULL);
            sim_schedule(w, end, EV_UNPARTITION, 0, 0, NULL);
            t = end + rng_range(r, 100, 800);
        } else {
            t += rng_range(r, 200, 800);
        }
        first = false;
    }
    /* Crashes of correct replicas. */
    uint64_t ncrash = w->scenario == SIM_SC_CRASH ? rng_range(r, 2, 6) : rng_ppm(r, 300000);
    for (uint64_t i = 0; i < ncrash; i++)
        sim_schedule(w, rng_range(r, 50, w->heal_at - 100), EV_CRASH, SIM_NONE,
                     rng_range(r, 50, 1500), NULL);
    if (w->scenario == SIM_SC_BAD_NEW_VIEW)
        sim_schedule(w, rng_range(r, 100, 300), EV_CRASH, 0, rng_range(r, 800, 2000), NULL);
    if (w->scenario == SIM_SC_TWINS)
        for (uint64_t i = rng_range(r, 1, 4); i > 0; i--)
            sim_schedule(w, rng_range(r, 100, w->heal_at - 50), EV_TWIN_SHUFFLE, 0, 0, NULL);
    sim_schedule(w, w->heal_at, EV_HEAL, 0, 0, NULL);
}

/* Calm runs: nothing goes wrong but, in half of them, f backups that are
 * down from the start and stay down, so that every quorum needs every
 * correct replica (one lagging replica is then on the critical path).  The
 * primary of view 0 stays up: the view is stable. */
static void calm_dead(sim_world *w)
{
    if (rng_below(&w->rng, 2))
        return;
    uint32_t primary = pbft_primary(0, w->n);
    for (uint32_t k = 0; k < w->f;) {
        uint32_t id = (uint32_t)rng_below(&w->rng, w->n);
        if (id != primary && !w->nodes[id].dead) {
            w->nodes[id].dead = true;
            k++;
        }
    }
}

/* Every timer that can make a request progress (the client's
 * retransmission, the backups' request timers, the replicas' periodic
 * retransmission) is drawn between one and four times the calm bound, so
 * that a request which needed one overruns the bound.  The replicas'
 * retransmission runs from their start, not from when a message went
 * missing: the further above the bound, the less often its phase lets a
 * stall end in time.  The view-change timer never runs (no view change). */
static void calm_timers(sim_world *w)
{
    uint64_t b = check_calm_bound(w);
    w->client_retx_ms = b + rng_range(&w->rng, 1, 3 * b);
    w->cfg.request_timeout_ms = b + rng_range(&w->rng, 1, 3 * b);
    w->cfg.retransmit_ms = b + rng_range(&w->rng, 1, 3 * b);
}

/* Clients, the network and the phases of a run with faults. */
static int fault_phases(sim_world *w)
{
    w->nclients = w->n <= 4 ? 3 : 4;
    w->client_retx_ms = rng_range(&w->rng, 100, 300);
    w->think_min_ms = rng_range(&w->rng, 0, 20);
    w->think_max_ms = w->think_min_ms + rng_range(&w->rng, 10, 80);
    w->read_only_ppm = rng_below(&w->rng, 4) ? (uint32_t)rng_range(&w->rng, 200000, 800000) : 0;
    for (uint32_t c = 0; c < w->nclients; c++) {
        if (client_init(w, &w->clients[c], c))
            return FB_EINVAL;
        w->clients[c].max_pre = (uint32_t)rng_range(&w->rng, 3, 10);
        w->clients[c].max_post = (uint32_t)rng_range(&w->rng, 2, 4);
    }
    w->heal_at = rng_range(&w->rng, 1500, 4000);
    w->disk_gc = rng_ppm(&w->rng, 750000);
    net_init(w);
    schedule_faults(w);
    return 0;
}

/* A calm run is healed from the start.  More clients than L when
 * SIM_MAX_CLIENTS allows (one outstanding request each, so the primary's
 * window fills), or a few. */
static int calm_phases(sim_world *w)
{
    uint32_t lo = w->cfg.log_window < SIM_MAX_CLIENTS ? w->cfg.log_window + 1 : SIM_MAX_CLIENTS;
    w->nclients = (uint32_t)(rng_below(&w->rng, 8) ? rng_range(&w->rng, lo, SIM_MAX_CLIENTS)
                                                   : rng_range(&w->rng, 1, 4));
    w->think_min_ms = rng_range(&w->rng, 0, 5);
    w->think_max_ms = w->think_min_ms + rng_range(&w->rng, 0, 40);
    /* A read-only request falls back to an ordered one on the client's
     * timer when replicas answer from different states, as designed. */
    w->read_only_ppm = 0;
    for (uint32_t c = 0; c < w->nclients; c++) {
        if (client_init(w, &w->clients[c], c))
            return FB_EINVAL;
        w->clients[c].max_post = (uint32_t)rng_range(&w->rng, 3, 8);
    }
    w->heal_at = 0;
    w->disk_gc = rng_ppm(&w->rng, 750000);
    net_init(w);
    /* Executors of different speeds (up to 4 D a batch; in half of the
     * runs the primary's is instant): a slow backup's CHECKPOINT trails its
     * votes for later batches, so a primary that ran ahead stops at H and
     * must be woken by a peer's CHECKPOINT, not by its own execution.  A
     * quarter of the runs execute within the step, as elsewhere. */
    w->exec_max_ms = rng_below(&w->rng, 4) ? rng_range(&w->rng, 0, 4 * net_max_delay(w)) : 0;
    for (uint32_t i = 0; i < w->n; i++)
        w->nodes[i].exec_ms = rng_range(&w->rng, 0, w->exec_max_ms);
    if (rng_below(&w->rng, 2))
        w->nodes[pbft_primary(0, w->n)].exec_ms = 0;
    calm_dead(w);
    calm_timers(w);
    sim_schedule(w, 0, EV_HEAL, 0, 0, NULL);
    return 0;
}

static void twin_sides(sim_world *w)
{
    for (uint32_t j = 0; j < w->ninst; j++)
        if (!w->nodes[j].twin)
            w->nodes[j].side = 1 + (int)rng_below(&w->rng, 2);
}

static int setup(sim_world *w)
{
    if (setup_config(w))
        return FB_EINVAL;
    for (uint32_t i = 0; i < w->n; i++) {
        uint8_t seed[FB_SEED_LEN];
        for (size_t k = 0; k < sizeof seed; k++)
            seed[k] = (uint8_t)rng_next(&w->rng);
        if (fb_key_from_seed(seed, &w->rkeys[i]))
            return FB_EINVAL;
    }
    choose_faulty(w);
    w->ninst = w->n;
    for (uint32_t i = 0; i < w->n; i++)
        if (node_init(w, &w->nodes[i], i, i))
            return FB_ENOMEM;
    if (w->scenario == SIM_SC_TWINS) {
        for (uint32_t i = 0; i < w->n; i++) {
            if (!w->faulty[i])
                continue;
            sim_node *b = &w->nodes[w->ninst];
            if (node_init(w, b, w->ninst, i))
                return FB_ENOMEM;
            w->ninst++;
            w->nodes[i].twin = b->twin = true;
            w->nodes[i].side = 1;
            b->side = 2;
        }
        twin_sides(w);
    } else {
        for (uint32_t i = 0; i < w->n; i++)
            if (w->faulty[i] && byz_init(w, &w->nodes[i]))
                return FB_ENOMEM;
    }
    if (w->calm ? calm_phases(w) : fault_phases(w))
        return FB_EINVAL;
    for (uint32_t c = 0; c < w->nclients; c++) {
        w->clients[c].issue_pending = true;
        sim_schedule(w, rng_range(&w->rng, 0, 50), EV_CLIENT_ISSUE, c, 0, NULL);
    }
    for (uint32_t j = 0; j < w->ninst && !w->failed; j++)
        if (!w->nodes[j].dead)
            node_start(w, &w->nodes[j], false);
    return w->failed ? FB_EINVAL : 0;
}

/* ------------------------------------------------------------ events */

static void do_crash(sim_world *w, uint32_t target, uint64_t dur)
{
    if (w->healed)
        return;
    uint32_t id = target;
    if (id == SIM_NONE)
        id = rng_below(&w->rng, 2) ? sim_current_primary(w) : random_correct(w);
    if (w->faulty[id])
        id = random_correct(w);
    sim_node *nd = &w->nodes[id];
    if (!nd->up || nd->crash_armed)
        return;
    if (rng_below(&w->rng, 2))
        node_crash(w, nd, false);
    else
        nd->crash_armed = true; /* strikes part-way through its next step */
    uint64_t back = w->now + dur < w->heal_at ? w->now + dur : w->heal_at;
    sim_schedule(w, back, EV_RESTART, id, 0, NULL);
}

static void heal(sim_world *w)
{
    w->healed = true;
    net_heal(w);
    for (uint32_t j = 0; j < w->ninst && !w->failed; j++) {
        sim_node *nd = &w->nodes[j];
        nd->crash_armed = false;
        if (!nd->up && !nd->dead)
            node_start(w, nd, true);
    }
    w->bound = w->calm ? check_calm_bound(w) : check_bound(w);
    w->res->heal_ms = w->heal_at;
    w->res->bound_ms = w->bound;
    sim_trace(w, TR_HEAL, SIM_NONE, w->bound, 0, 0, 0);
    for (uint32_t c = 0; c < w->nclients; c++)
        client_heal(w, &w->clients[c]);
}

static void dispatch(sim_world *w, const sim_event *ev)
{
    switch (ev->kind) {
    case EV_PKT: {
        const sim_pkt *p = ev->pkt;
        if (!net_link_up(w, p->src_client, p->src, p->dst_client, p->dst)) {
            if (w->part_active)
                w->res->faults[SIM_F_PARTITION_DROP]++;
            break;
        }
        if (p->dst_client)
            client_reply(w, p);
        else
            node_deliver(w, &w->nodes[p->dst], p);
        break;
    }
    case EV_TIMER:
        node_timer(w, &w->nodes[ev->a], ev->b);
        break;
    case EV_CLIENT_TIMER:
        client_timer(w, ev->a, ev->b);
        break;
    case EV_CLIENT_ISSUE:
        client_issue(w, ev->a);
        break;
    case EV_FETCH:
        node_fetch(w, &w->nodes[ev->a], ev->b);
        break;
    case EV_CRASH:
        do_crash(w, ev->a, ev->b);
        break;
    case EV_RESTART:
        if (!w->nodes[ev->a].up)
            node_start(w, &w->nodes[ev->a], true);
        break;
    case EV_PARTITION:
        if (!w->healed)
            net_partition_start(w, ev->b);
        break;
    case EV_UNPARTITION:
        if (w->part_active)
            net_partition_end(w);
        break;
    case EV_TWIN_SHUFFLE:
        if (!w->healed)
            twin_sides(w);
        break;
    case EV_HEAL:
        heal(w);
        break;
    case EV_BYZ_TICK:
        byz_tick(w, &w->nodes[ev->a]);
        break;
    case EV_EXEC:
        node_exec(w, &w->nodes[ev->a], ev->b);
        break;
    default:
        sim_fail(w, "harness: unknown event kind %u", ev->kind);
        break;
    }
}

static void run_loop(sim_world *w)
{
    sim_event ev;
    uint64_t end_at = 0, window = 0, in_window = 0;
    while (!w->failed && sim_pop(w, &ev)) {
        w->now = ev.at;
        if (ev.pkt) {
            if (w->now / STORM_WINDOW_MS != window) {
                window = w->now / STORM_WINDOW_MS;
                in_window = 0;
            }
            if (++in_window > STORM_PACKETS) {
                sim_fail(w,
                         "message storm: more than %d packets arrived within %d ms (the "
                         "in-flight queue holds %zu)",
                         STORM_PACKETS, STORM_WINDOW_MS, w->inflight);
                pkt_free(ev.pkt);
                break;
            }
        }
        sim_fingerprint(w, (ev.at << 8) ^ ev.kind ^ ((uint64_t)ev.a << 40));
        dispatch(w, &ev);
        pkt_free(ev.pkt);
        if (++w->res->counters[SIM_C_EVENTS] > MAX_EVENTS) {
            sim_fail(w, "more than %llu events: the cluster is spinning",
                     (unsigned long long)MAX_EVENTS);
            break;
        }
        if (!w->healed)
            continue;
        check_liveness(w);
        /* Every request after the heal has its own deadline (check_liveness);
         * this only stops a run whose harness lost track of a client. */
        if (w->now > w->heal_at + 20 * w->bound +
                         (w->calm ? 20 * w->think_max_ms + DRAIN_MS : 0)) /* tiny calm bounds */
            sim_fail(w, "harness: the run did not finish by heal + 20 x bound");
        if (clients_stuck(w))
            sim_fail(w, "harness: a client is idle but not finished");
        if (!end_at && clients_done(w))
            end_at = w->now + DRAIN_MS;
        if (end_at && w->now >= end_at)
            break;
    }
    if (!w->failed && !end_at)
        sim_fail(w, "harness: no events left before the clients finished");
}

static void teardown(sim_world *w)
{
    for (uint32_t j = 0; j < w->ninst; j++)
        node_free(&w->nodes[j]);
    for (uint32_t c = 0; c < w->nclients; c++)
        client_free(&w->clients[c]);
    sim_events_free(w);
    check_free(&w->chk);
    fb_sigcache_free(w->memo);
    for (uint32_t i = 0; i < w->n; i++)
        fb_key_wipe(&w->rkeys[i]);
}

int sim_run(uint64_t seed, bool verbose, sim_result *out)
{
    memset(out, 0, sizeof *out);
    out->seed = seed;
    if (sim_seed_split(seed, &out->n, &out->scenario))
        return FB_EINVAL;
    if (fb_crypto_init())
        return FB_EIO;
    sim_world *w = calloc(1, sizeof *w);
    if (!w)
        return FB_ENOMEM;
    w->seed = seed;
    w->n = out->n;
    w->f = pbft_f(w->n);
    w->quorum = pbft_quorum(w->n);
    w->scenario = out->scenario;
    w->calm = w->scenario == SIM_SC_CALM;
    w->verbose = verbose;
    w->res = out;
    rng_seed(&w->rng, seed);
    int rc = fb_sigcache_new(SIM_MEMO, &w->memo);
    if (rc) {
        free(w);
        return rc;
    }
    rc = setup(w);
    if (rc == 0)
        run_loop(w);
    out->end_ms = w->now;
    out->fingerprint = w->fp;
    if (w->failed)
        trace_tail(w, 50);
    teardown(w);
    free(w);
    if (out->failed)
        return 1;
    return rc;
}
