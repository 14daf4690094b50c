/* sim.h - the deterministic cluster simulator: run one seed, read its result.
 *
 * One run = one 64-bit seed.  The seed names everything: the cluster size and
 * the scenario sit in its low 16 bits (sim_seed_make), the rest seeds the one
 * PRNG from which every latency, loss, crash, partition, client operation and
 * Byzantine choice is drawn.  The core reads no clock and no global
 * randomness and signs with keys derived from the seed (Ed25519 is
 * deterministic), so the same seed replays the same run bit for bit; the
 * runner (sim_main.c) measures CPU time around it, never inside.
 *
 * Thread-safety: sim_run keeps all state in its own world; one run per thread.
 */
#ifndef SIM_H
#define SIM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* What goes wrong in a run besides the network (which misbehaves in all but calm). */
typedef enum sim_scenario {
    SIM_SC_NET,          /* network faults only: loss, dup, reorder, delay, partitions */
    SIM_SC_CRASH,        /* correct replicas crash (some mid-step) and restart from disk */
    SIM_SC_EQUIVOCATE,   /* primary sends different PRE-PREPAREs for one (view, seq) */
    SIM_SC_WRONG_DIGEST, /* votes, pre-prepares, checkpoints, replies with wrong digests */
    SIM_SC_FORGE,        /* messages claiming another sender, signed with own key */
    SIM_SC_REPLAY,       /* recorded messages resent later (old views, old requests) */
    SIM_SC_BAD_NEW_VIEW, /* NEW-VIEW with a mutated O (or V) set, re-signed */
    SIM_SC_BAD_VC,       /* VIEW-CHANGE with forged certificates or checkpoint proofs */
    SIM_SC_SILENT,       /* a replica that sends nothing */
    SIM_SC_GARBAGE,      /* random bytes, corrupted frames, absurd but signed messages */
    SIM_SC_TWINS,        /* two correct instances sharing one identity and key */
    SIM_SC_CALM,         /* no faults at all (or f replicas down for good): no request may need a
                            timer, each completes within check_calm_bound */
    SIM_SC_COUNT
} sim_scenario;

/* Faults injected, counted per run. */
typedef enum sim_fault {
    SIM_F_LOSS,           /* packet dropped by the lossy network */
    SIM_F_DUP,            /* packet delivered twice */
    SIM_F_REORDER,        /* packet overtakes an earlier one on its link */
    SIM_F_DELAY_SPIKE,    /* packet held back 50-300 ms */
    SIM_F_PARTITION,      /* partitions started */
    SIM_F_PARTITION_DROP, /* packets dropped by a partition */
    SIM_F_CRASH,          /* replica crashes between steps */
    SIM_F_CRASH_MIDSTEP,  /* replica crashes part-way through a step's actions */
    SIM_F_RESTART,        /* replica restarts from its disk */
    SIM_F_EQUIVOCATE,     /* conflicting PRE-PREPAREs / votes sent */
    SIM_F_WRONG_DIGEST,   /* messages sent with a digest that does not match */
    SIM_F_WRONG_REPLY,    /* replies with a wrong result */
    SIM_F_FORGE,          /* messages claiming another identity */
    SIM_F_REPLAY,         /* recorded messages replayed */
    SIM_F_BAD_NEW_VIEW,   /* NEW-VIEWs with a mutated O or V set */
    SIM_F_BAD_VC,         /* VIEW-CHANGEs with forged certificates or proofs */
    SIM_F_SILENT,         /* packets a silent replica ignored (or replies it withheld) */
    SIM_F_GARBAGE,        /* garbage or absurd messages sent */
    SIM_F_TWIN,           /* messages sent by a twin instance */
    SIM_F_BAD_STATE,      /* corrupted checkpoint state offered to a fetching replica */
    SIM_F_COUNT
} sim_fault;

/* What the run observed. */
typedef enum sim_counter {
    SIM_C_REQUESTS,    /* client requests accepted (f+1 matching replies) */
    SIM_C_READ_ONLY,   /* of which read-only, accepted on 2f+1 matching replies */
    SIM_C_RO_FALLBACK, /* read-only requests retried as ordered GETs */
    SIM_C_EXECUTED,    /* batches executed durably by correct replicas */
    SIM_C_DELIVERED,   /* protocol messages stepped into replicas */
    SIM_C_DROP_PARSE,  /* dropped: pbft_msg_parse refused them */
    SIM_C_DROP_SIG,  /* dropped: a carried signature did not verify, or the link is not the sender's
                      */
    SIM_C_DROP_DOWN, /* dropped: the receiver was crashed */
    SIM_C_DROP_QUEUE,      /* dropped: the in-flight queue was full */
    SIM_C_VERIFIES,        /* signatures a replica's own cache missed (a node verifies these) */
    SIM_C_ED25519,         /* Ed25519 verifications actually computed (after the shared memo) */
    SIM_C_SIGCACHE_HITS,   /* signatures the per-replica cache vouched for */
    SIM_C_VIEW_CHANGES,    /* view changes completed (sum over correct replicas) */
    SIM_C_MAX_VIEW,        /* highest view a correct replica reached */
    SIM_C_STATE_TRANSFERS, /* FETCH_STATEs completed */
    SIM_C_CHECKPOINTS,     /* checkpoint snapshots taken */
    SIM_C_EVENTS,          /* simulator events processed */
    SIM_C_COUNT
} sim_counter;

typedef struct sim_result {
    uint64_t seed;
    uint32_t n;
    int scenario;
    bool failed;
    char why[768];     /* the broken check, when failed */
    char trace[12288]; /* config, replica status and the last trace lines, when failed */
    uint64_t faults[SIM_F_COUNT];
    uint64_t counters[SIM_C_COUNT];
    uint64_t heal_ms;             /* when the network healed (simulated ms) */
    uint64_t bound_ms;            /* liveness bound after the heal */
    uint64_t max_latency_heal_ms; /* worst request latency counted from the heal */
    uint64_t max_latency_ms;      /* worst request latency overall */
    uint64_t end_ms;              /* simulated time at the end */
    uint64_t fingerprint;         /* hash of the whole run, for determinism checks */
} sim_result;

const char *sim_scenario_name(int sc);
int sim_scenario_parse(const char *name); /* -1 if unknown */
const char *sim_fault_name(int f);
const char *sim_counter_name(int c);

/* base in the high 48 bits, n (4..15) and scenario in the low 16. */
uint64_t sim_seed_make(uint64_t base, uint32_t n, int scenario);
/* 0, or -1 if the low bits name no valid n / scenario. */
int sim_seed_split(uint64_t seed, uint32_t *n, int *scenario);

/* Run one seed.  Returns 0 when every check held, 1 when one broke (why and
 * trace in out), or a negative FB_E* code when the harness itself failed.
 * verbose prints every trace line to stdout as it happens. */
int sim_run(uint64_t seed, bool verbose, sim_result *out);

#endif
