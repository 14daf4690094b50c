/* sim_int.h - the simulator's world, shared by its files (not by the runner).
 *
 * Files, one purpose each:
 *   sim_world.c   the run: scenario setup, the event loop, the trace, teardown
 *   sim_net.c     PRNG, event queue and the faulty network
 *   sim_node.c    a replica instance: verify, step, carry out actions, disk,
 *                 application, state transfer, crash and restart
 *   sim_client.c  clients: signed requests, retransmission, f+1 replies
 *   sim_byz.c     Byzantine behaviour, one kind per scenario
 *   sim_check.c   the safety and liveness checks
 */
#ifndef SIM_INT_H
#define SIM_INT_H

#include "sim.h"

#include "pbft.h"
#include "sigcache.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SIM_MAX_N 7
#define SIM_MAX_F 2
#define SIM_MAX_INST (SIM_MAX_N + SIM_MAX_F) /* twins add one instance per twinned identity */
#define SIM_MAX_CLIENTS 16   /* the calm scenario uses more clients than L to fill the window */
#define SIM_CLIENT_BASE 1000 /* client ids, far from replica ids */
#define SIM_NET_CAP 20000    /* packets in flight; beyond that the network drops (counted) */
#define SIM_SNAPSHOTS 4      /* checkpoint snapshots kept per replica */
#define SIM_TRACE 512        /* trace ring entries */
#define SIM_KEYS 8           /* application keys */
#define SIM_VAL_MAX 24       /* longest value */
#define SIM_ALL UINT32_MAX   /* "every other replica" as a destination */
#define SIM_NONE UINT32_MAX
#define SIM_SIGCACHE 4096
#define SIM_MEMO 16384

/* ------------------------------------------------------------ PRNG */

/* xoshiro256** seeded through splitmix64: the only randomness in a run. */
typedef struct sim_rng {
    uint64_t s[4];
} sim_rng;

void rng_seed(sim_rng *r, uint64_t seed);
uint64_t rng_next(sim_rng *r);
uint64_t rng_below(sim_rng *r, uint64_t bound);           /* [0, bound), 0 if bound == 0 */
uint64_t rng_range(sim_rng *r, uint64_t lo, uint64_t hi); /* [lo, hi] */
bool rng_ppm(sim_rng *r, uint32_t ppm);                   /* true with probability ppm / 1e6 */

/* ------------------------------------------------------------ application */

/* A small KV store plus a hash chain over everything executed, so that two
 * replicas with equal digests provably executed the same history. */
typedef struct sim_app {
    uint8_t present[SIM_KEYS];
    uint8_t vlen[SIM_KEYS];
    uint8_t val[SIM_KEYS][SIM_VAL_MAX];
    uint8_t chain[FB_DIGEST_LEN];
    uint64_t nops;
} sim_app;

void app_init(sim_app *a);
void app_digest(const sim_app *a, uint8_t out[FB_DIGEST_LEN]);
/* A read-only GET's result against a state: [status][len][value]. */
size_t app_read(const sim_app *a, int key, uint8_t *out);

/* ------------------------------------------------------------ disk */

typedef struct sim_rec {
    pbft_record_kind kind;
    uint64_t view;
    bool view_changing;
    uint64_t seq;
    uint8_t *raw; /* REC_MSG: the message bytes, re-parsed on restore */
    size_t len;
    int type;         /* REC_MSG: message type */
    uint64_t msg_seq; /* REC_MSG: the seq the message is about (0 if none) */
} sim_rec;

typedef struct sim_snapshot {
    uint64_t seq;
    sim_app app;
    uint8_t *ct; /* client table blob at seq */
    size_t ct_len;
    uint8_t state_digest[FB_DIGEST_LEN];
} sim_snapshot;

/* What survives a crash: the persisted records, the execution state
 * (updated atomically when an execution completes) and checkpoint snapshots. */
typedef struct sim_disk {
    sim_rec *recs;
    size_t nrecs, cap;
    sim_rec *full; /* with GC on: every record ever persisted (differential check) */
    size_t nfull, fullcap;
    uint64_t last_executed;
    sim_app app;
    uint8_t *ct;
    size_t ct_len;
    sim_snapshot snaps[SIM_SNAPSHOTS];
    size_t nsnaps;
} sim_disk;

/* ------------------------------------------------------------ replica instance */

/* An EXECUTE carried out but not yet reported with PBFT_EV_EXECUTED. */
typedef struct sim_exec {
    bool pending;
    uint64_t seq, view; /* seq 0: a read-only execution */
    pbft_msg *read_req; /* read-only: the request (borrowed until EXECUTED) */
    bool checkpoint;
    uint8_t batch_digest[FB_DIGEST_LEN];
    uint8_t app_digest[FB_DIGEST_LEN];
    size_t nres;
    pbft_result *res; /* data owned */
    uint32_t *client;
    uint64_t *ts;
} sim_exec;

struct sim_byz;

typedef struct sim_node {
    uint32_t idx; /* instance index in world.nodes */
    uint32_t id;  /* replica identity */
    int side;     /* twins scenario: 1 or 2 (links need equal sides when a twin is involved) */
    bool twin;    /* an instance of a twinned identity */
    bool faulty;  /* its identity is Byzantine (excluded from the checks) */
    bool up;
    bool dead; /* calm scenario: down from the start for good (never started, not at the heal) */
    pbft_replica *r;
    pbft_signer signer;
    fb_sigcache *cache;
    sim_app app;
    sim_disk disk;
    sim_exec exec;
    uint64_t timer_gen, timer_at;     /* pending TIMER deadline (0: none) */
    uint64_t tick_at_ms, ticks_at_ms; /* ticks stepped at one instant (livelock guard) */
    uint64_t exec_ms;  /* calm runs: an EXECUTE finishes within this (0..exec_ms later) */
    uint64_t exec_gen; /* generation of the pending EV_EXEC */
    bool exec_sched;   /* an EV_EXEC is pending for exec */
    bool fetching;
    uint64_t fetch_seq, fetch_gen;
    uint8_t fetch_digest[FB_DIGEST_LEN];
    bool crash_armed;   /* crash part-way through the next step's actions */
    uint64_t exec_last; /* checker: last seq executed durably (or installed) */
    uint64_t view;      /* last view seen in pbft_get_status (trace) */
    uint64_t view_base; /* view at the last non-null execution or restart (bound) */
    bool view_changing;
    uint64_t view_changes;
    struct sim_byz *bz; /* Byzantine state, or NULL */
} sim_node;

/* ------------------------------------------------------------ clients */

typedef struct sim_vote {
    bool have;
    uint8_t *res;
    size_t len;
    uint64_t seq; /* the seq the replica reported */
} sim_vote;

typedef struct sim_client {
    uint32_t id;
    fb_identity key;
    int group; /* partition group */
    uint64_t ts;
    bool outstanding;
    uint8_t *raw; /* the signed REQUEST envelope */
    size_t len;
    uint64_t issued_at, deadline; /* deadline 0 = none (before the heal) */
    uint64_t view_hint;
    bool read_only;          /* the outstanding request takes the read-only path */
    int rkey;                /* its key (read-only checks) */
    uint64_t last_write_seq; /* seq of its last ordered request (read-your-writes) */
    sim_vote votes[SIM_MAX_N];
    uint64_t timer_gen;
    bool issue_pending;
    uint32_t done_pre, done_post; /* completed before / after the heal */
    uint32_t max_pre, max_post;
    bool finished;
} sim_client;

/* ------------------------------------------------------------ events */

typedef enum sim_ev_kind {
    EV_PKT = 1,      /* a packet arrives */
    EV_TIMER,        /* a replica's TIMER deadline (b = generation) */
    EV_CLIENT_TIMER, /* a client's retransmission timer (b = generation) */
    EV_CLIENT_ISSUE, /* a client sends its next request */
    EV_FETCH,        /* a state transfer completes or retries (b = generation) */
    EV_CRASH,        /* crash instance a */
    EV_RESTART,      /* restart instance a */
    EV_PARTITION,    /* start a partition (b = kind) */
    EV_UNPARTITION,  /* end it */
    EV_TWIN_SHUFFLE, /* re-draw which side each correct replica is on */
    EV_HEAL,         /* faults stop; the liveness clock starts */
    EV_BYZ_TICK,     /* a Byzantine instance acts on its own */
    EV_EXEC,         /* calm runs: instance a's executor finishes its EXECUTE (b = generation) */
} sim_ev_kind;

typedef struct sim_pkt {
    bool src_client, dst_client;
    uint32_t src, dst; /* instance index or client index */
    uint8_t *data;     /* envelope bytes, or reply result */
    size_t len;
    bool reply;
    uint32_t rep_replica;
    uint64_t rep_ts, rep_view, rep_seq;
} sim_pkt;

typedef struct sim_event {
    uint64_t at, order;
    uint32_t kind, a;
    uint64_t b;
    sim_pkt *pkt;
} sim_event;

/* ------------------------------------------------------------ checker state */

typedef struct sim_seq_rec {
    bool set;
    uint32_t first; /* instance that executed it first */
    uint8_t digest[FB_DIGEST_LEN];
    uint8_t chain[FB_DIGEST_LEN];
    bool ckpt_set;
    uint8_t ckpt[FB_DIGEST_LEN]; /* checkpoint state digest broadcast at seq */
    sim_app app;                 /* the state after seq (read-only checks) */
} sim_seq_rec;

typedef struct sim_req_rec {
    bool set;
    uint64_t seq;
    uint8_t result[FB_DIGEST_LEN]; /* hash of the result bytes */
} sim_req_rec;

/* What a correct replica said for (type, view, seq): it must never say
 * something else there, not even after a crash (the persistence rule). */
typedef struct sim_said {
    bool used;
    uint32_t id;
    int type;
    uint64_t view, seq;
    uint8_t digest[FB_DIGEST_LEN];
    uint64_t at; /* when it first said it */
} sim_said;

typedef struct sim_check {
    sim_said *said;
    size_t nsaid, saidcap;
    sim_seq_rec *seqs;
    size_t nseqs;
    sim_req_rec *reqs[SIM_MAX_CLIENTS]; /* indexed by timestamp */
    size_t nreqs[SIM_MAX_CLIENTS];
} sim_check;

/* ------------------------------------------------------------ trace */

typedef enum sim_tr_kind {
    TR_DELIVER = 1,
    TR_DROP_PARSE,
    TR_DROP_SIG,
    TR_REQUEST,
    TR_EXEC,
    TR_VIEW,
    TR_CRASH,
    TR_RESTART,
    TR_PARTITION,
    TR_UNPARTITION,
    TR_HEAL,
    TR_FETCH,
    TR_INSTALL,
    TR_ACCEPT,
    TR_BYZ,
    TR_CKPT,
    TR_SEND,
} sim_tr_kind;

typedef struct sim_tr {
    uint64_t t;
    uint32_t kind, node;
    uint64_t a, b, c, d;
} sim_tr;

/* ------------------------------------------------------------ the world */

typedef struct sim_equiv {
    uint64_t view, seq;
    uint8_t good[FB_DIGEST_LEN], alt[FB_DIGEST_LEN];
    uint32_t alt_mask; /* identities that were shown the alternative */
} sim_equiv;

typedef struct sim_world {
    uint64_t seed;
    uint32_t n, f, quorum;
    int scenario;
    bool verbose;
    sim_rng rng;
    uint64_t now, order;
    pbft_config cfg; /* shared replica config (id and signer set per instance) */

    fb_identity rkeys[SIM_MAX_N];
    bool faulty[SIM_MAX_N]; /* Byzantine identities (at most f) */
    uint32_t nfaulty;
    sim_node nodes[SIM_MAX_INST];
    uint32_t ninst;
    sim_client clients[SIM_MAX_CLIENTS];
    uint32_t nclients;
    uint64_t client_retx_ms, think_min_ms, think_max_ms;
    uint64_t exec_max_ms;   /* calm runs: the slowest executor (sim_node.exec_ms) */
    uint32_t read_only_ppm; /* share of GETs sent on the read-only path */

    /* event queue: binary heap on (at, order) */
    sim_event *heap;
    size_t nheap, heapcap;
    size_t inflight; /* packets among them */

    /* network */
    uint32_t loss_ppm, dup_ppm, spike_ppm;
    uint64_t delay_base, delay_jitter, spike_max;
    bool part_active;
    uint8_t group[SIM_MAX_INST]; /* per instance, during a partition */
    uint64_t link_last[SIM_MAX_INST + SIM_MAX_CLIENTS][SIM_MAX_INST + SIM_MAX_CLIENTS];

    /* phases */
    bool calm; /* SIM_SC_CALM: healed from the start; the bound is check_calm_bound */
    bool healed;
    bool disk_gc; /* honour PBFT_REC_STABLE garbage collection */
    uint64_t heal_at, bound;

    /* Byzantine collusion: equivocations the faulty replicas agreed on */
    sim_equiv equiv[32];
    size_t nequiv;

    /* Successful Ed25519 results, shared by all instances behind their own
     * caches: a pure function memoised, so outcomes cannot change. */
    fb_sigcache *memo;

    sim_check chk;
    sim_result *res;

    sim_tr trace[SIM_TRACE];
    size_t ntrace;
    uint64_t fp; /* fingerprint */
    bool failed;
    uint64_t tick_storm_limit;
} sim_world;

/* ------------------------------------------------------------ sim_world.c */

void sim_fail(sim_world *w, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sim_trace(sim_world *w, uint32_t kind, uint32_t node, uint64_t a, uint64_t b, uint64_t c,
               uint64_t d);
void sim_fingerprint(sim_world *w, uint64_t v);
uint32_t
sim_current_primary(sim_world *w); /* primary of the highest view a correct replica is in */

/* ------------------------------------------------------------ sim_net.c */

void sim_schedule(sim_world *w, uint64_t at, uint32_t kind, uint32_t a, uint64_t b, sim_pkt *pkt);
bool sim_pop(sim_world *w, sim_event *out);
void sim_events_free(sim_world *w);
void pkt_free(sim_pkt *p);

void net_init(sim_world *w);
void net_heal(sim_world *w);
uint64_t net_max_delay(const sim_world *w); /* one-way delay bound after the heal */
bool net_link_up(const sim_world *w, bool src_client, uint32_t src, bool dst_client, uint32_t dst);
/* Replica instance -> identity `to` (SIM_ALL: every other identity). */
void net_send(sim_world *w, uint32_t from_inst, uint32_t to, const uint8_t *raw, size_t len);
/* Client -> identity `to` (SIM_ALL: every replica). */
void net_client_send(sim_world *w, uint32_t client, uint32_t to, const uint8_t *raw, size_t len);
void net_reply(sim_world *w, uint32_t from_inst, uint32_t client_id, uint64_t ts, uint64_t view,
               uint64_t seq, const uint8_t *res, size_t len);
void net_partition_start(sim_world *w, uint64_t kind);
void net_partition_end(sim_world *w);

/* ------------------------------------------------------------ sim_node.c */

int node_init(sim_world *w, sim_node *nd, uint32_t idx, uint32_t id);
int node_start(sim_world *w, sim_node *nd, bool restore);
void node_crash(sim_world *w, sim_node *nd, bool midstep);
void node_free(sim_node *nd);
void node_deliver(sim_world *w, sim_node *nd, const sim_pkt *pkt);
void node_timer(sim_world *w, sim_node *nd, uint64_t gen);
void node_fetch(sim_world *w, sim_node *nd, uint64_t gen);
void node_exec(sim_world *w, sim_node *nd, uint64_t gen);
/* Route a message the replica emitted (Byzantine instances mutate first). */
void node_emit(sim_world *w, sim_node *nd, uint32_t to, const uint8_t *raw, size_t len);
void node_sign(void *arg, const uint8_t digest[FB_DIGEST_LEN], uint8_t sig[FB_SIG_LEN]);
uint64_t msg_seq_of(const pbft_msg *m);
uint64_t msg_view_of(const pbft_msg *m);

/* ------------------------------------------------------------ sim_client.c */

int client_init(sim_world *w, sim_client *c, uint32_t idx);
void client_free(sim_client *c);
void client_issue(sim_world *w, uint32_t idx);
void client_timer(sim_world *w, uint32_t idx, uint64_t gen);
void client_reply(sim_world *w, const sim_pkt *pkt);
void client_heal(sim_world *w, sim_client *c);
bool clients_done(const sim_world *w);
bool clients_stuck(const sim_world *w); /* a harness bug: idle but not finished */

/* ------------------------------------------------------------ sim_byz.c */

int byz_init(sim_world *w, sim_node *nd);
void byz_free(sim_node *nd);
void byz_send(sim_world *w, sim_node *nd, uint32_t to, const pbft_msg *m);
void byz_reply(sim_world *w, sim_node *nd, uint32_t client_id, uint64_t ts, uint64_t view,
               uint64_t seq, const uint8_t *res, size_t len);
void byz_observe(sim_world *w, sim_node *nd, const pbft_msg *m);
void byz_tick(sim_world *w, sim_node *nd);
/* A Byzantine peer asked for state: may it lie?  Fills a corrupted copy. */
bool byz_corrupt_state(sim_world *w, sim_node *nd, const sim_snapshot *good, sim_snapshot *bad);
bool byz_is_silent(const sim_world *w, const sim_node *nd);

/* ------------------------------------------------------------ sim_check.c */

void check_free(sim_check *c);
void check_exec(sim_world *w, sim_node *nd, const sim_exec *ex, const sim_app *app);
void check_read(sim_world *w, sim_client *c, const sim_vote *accepted);
void check_install(sim_world *w, sim_node *nd, uint64_t seq, const sim_app *app);
void check_checkpoint(sim_world *w, sim_node *nd, uint64_t seq,
                      const uint8_t digest[FB_DIGEST_LEN]);
void check_accept(sim_world *w, sim_client *c, uint64_t ts, const uint8_t *res, size_t len);
void check_liveness(sim_world *w);
void check_said(sim_world *w, sim_node *nd, const pbft_msg *m);
uint64_t check_bound(const sim_world *w);
uint64_t check_calm_bound(const sim_world *w);

#endif
