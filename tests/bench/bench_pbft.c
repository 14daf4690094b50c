/* bench_pbft.c - what the PBFT state machine costs per committed request,
 * seen by the primary and by a backup, for batches of 1, 16 and 64 requests.
 * Built with the suite, run by hand:
 *
 *   build/tests/bench/bench_pbft [--rounds R] [--requests N] [--batches 1,16,64]
 *                                [--idle-clients K]
 *
 * Four replicas (consensus/pbft.h) in one thread, wired by an in-memory FIFO
 * as in tests/unit/test_pbft.c, run complete request rounds: every client
 * sends its signed REQUEST (64-byte PUT value) to every replica, as the real
 * client does; the primary cuts a batch when batch_max_requests are pending;
 * PRE-PREPARE, PREPARE, COMMIT, checkpoints every 16 seqs and replies follow.
 * Execution completes one round later (as the node's store completes it
 * asynchronously), so the primary always has a batch in flight and cuts full
 * batches.  Every delivery goes through pbft_parse on the raw bytes, so
 * relayed requests reuse their digests as in the node.
 *
 * Two signers, measured in the same rounds: "null" writes the digest where
 * the signature goes (the logic alone), "ed25519" signs for real (PREPARE,
 * COMMIT, PRE-PREPARE, CHECKPOINT; the replica never verifies, the node
 * does that before stepping, so no verification is included anywhere).
 * Client requests are signed once before timing.
 *
 * Per replica the clock runs only inside pbft_step ("step") and pbft_parse
 * ("parse"); the harness, FIFO and fake execution are not counted.  Figures are
 * microseconds per committed request (best of R rounds, median beside it),
 * after two untimed warm-up rounds per cluster.  "b1/bB" is how many times
 * cheaper a request is in a batch of B than alone.  "msgs/req" counts
 * messages put on the wire per committed request, all replicas together.
 * The last table splits the largest batch's figure by what the replica was
 * handling.  --idle-clients K first lets K other clients send one request
 * each, so the client table holds K more rows during the measurement (a
 * deployment with many clients).
 */
#include "bench_util.h"

#include "pbft.h"

#include <getopt.h>

#define N 4
#define MAX_BATCHES 8
#define WARM_ROUNDS 2
#define MAX_IDLE 3800 /* idle clients: the client table holds 4096 by default */
#define KEY_FAMILY_REPLICA 1
#define KEY_FAMILY_CLIENT 2

typedef struct wire {
    uint32_t to;
    pbft_msg *msg;
} wire;

typedef struct pending_exec {
    bool on;
    uint64_t seq;
    pbft_msg *const *reqs;
    size_t nreqs;
    bool checkpoint;
} pending_exec;

/* Where a replica's time goes, by what it was handling. */
typedef enum cat {
    CAT_CLIENT,   /* a REQUEST from its client */
    CAT_FORWARD,  /* a REQUEST relayed by a backup to the primary */
    CAT_PP,       /* PRE-PREPARE */
    CAT_PREPARE,  /* PREPARE */
    CAT_COMMIT,   /* COMMIT */
    CAT_CKPT,     /* CHECKPOINT */
    CAT_EXECUTED, /* an execution finished (replies, next EXECUTE, checkpoint) */
    CAT_N
} cat;

static const char *const cat_name[CAT_N] = {
    "client REQUEST", "forwarded REQUEST", "PRE-PREPARE",     "PREPARE",
    "COMMIT",         "CHECKPOINT",        "EXECUTED (event)"};

static cat msg_cat(const pbft_msg *m)
{
    switch (m->type) {
    case FEDBFT__MSG_TYPE__MSG_REQUEST:
        return CAT_FORWARD;
    case FEDBFT__MSG_TYPE__MSG_PRE_PREPARE:
        return CAT_PP;
    case FEDBFT__MSG_TYPE__MSG_PREPARE:
        return CAT_PREPARE;
    case FEDBFT__MSG_TYPE__MSG_COMMIT:
        return CAT_COMMIT;
    default:
        return CAT_CKPT;
    }
}

typedef struct cluster {
    pbft_replica *r[N];
    wire *q;
    size_t qhead, qlen, qcap;
    pending_exec exec[N];
    uint64_t now;
    /* measured */
    double t_step[N], t_parse[N];
    double t_cat[N][CAT_N]; /* step + parse */
    uint64_t executed[N];   /* requests executed */
    uint64_t sent;          /* messages put on the wire */
    uint64_t batches, batch_reqs;
} cluster;

static fb_identity rkeys[N];

static void null_sign(void *arg, const uint8_t digest[FB_DIGEST_LEN], uint8_t sig[FB_SIG_LEN])
{
    (void)arg;
    memset(sig, 0, FB_SIG_LEN);
    memcpy(sig, digest, FB_DIGEST_LEN);
}

static void enqueue(cluster *c, uint32_t to, pbft_msg *m)
{
    if (c->qlen == c->qcap) {
        size_t cap = c->qcap ? c->qcap * 2 : 1024;
        wire *q = malloc(cap * sizeof *q);
        if (!q)
            bench_die("malloc", FB_ENOMEM);
        for (size_t i = 0; i < c->qlen; i++)
            q[i] = c->q[(c->qhead + i) % c->qcap];
        free(c->q);
        c->q = q;
        c->qhead = 0;
        c->qcap = cap;
    }
    c->q[(c->qhead + c->qlen++) % c->qcap] = (wire){to, pbft_msg_ref(m)};
    c->sent++;
}

/* Carry out one step's actions.  Nothing here steps a replica: EXECUTE is
 * held until complete_executions, so the action array stays valid. */
static void carry_out(cluster *c, uint32_t i, const pbft_action *acts, size_t n)
{
    for (size_t k = 0; k < n; k++) {
        const pbft_action *a = &acts[k];
        switch (a->kind) {
        case PBFT_ACT_SEND:
            enqueue(c, a->to, a->msg);
            break;
        case PBFT_ACT_BROADCAST:
            for (uint32_t j = 0; j < N; j++)
                if (j != i)
                    enqueue(c, j, a->msg);
            break;
        case PBFT_ACT_EXECUTE:
            if (a->execute.seq == 0 || c->exec[i].on) {
                fprintf(stderr, "bench: unexpected EXECUTE at replica %u\n", i);
                exit(1);
            }
            c->exec[i] = (pending_exec){true, a->execute.seq, a->execute.reqs, a->execute.nreqs,
                                        a->execute.checkpoint};
            if (i == 0) {
                c->batches++;
                c->batch_reqs += a->execute.nreqs;
            }
            break;
        case PBFT_ACT_FETCH_STATE:
            fprintf(stderr, "bench: replica %u fell behind (state transfer)\n", i);
            exit(1);
        default: /* PERSIST, REPLY, TIMER: nothing to do here */
            break;
        }
    }
}

static void step(cluster *c, uint32_t i, const pbft_event *ev, cat k)
{
    size_t n = 0;
    double t0 = bench_now();
    const pbft_action *acts = pbft_step(c->r[i], ev, &n);
    double dt = bench_now() - t0;
    c->t_step[i] += dt;
    c->t_cat[i][k] += dt;
    carry_out(c, i, acts, n);
}

static pbft_msg *parse(cluster *c, uint32_t i, const pbft_msg *m, cat k)
{
    pbft_msg *out = NULL;
    char err[160];
    double t0 = bench_now();
    int rc = pbft_parse(c->r[i], m->raw, m->raw_len, &out, err, sizeof err);
    double dt = bench_now() - t0;
    c->t_parse[i] += dt;
    c->t_cat[i][k] += dt;
    if (rc) {
        fprintf(stderr, "bench: replica %u: %s\n", i, err);
        exit(1);
    }
    return out;
}

static void run_network(cluster *c)
{
    while (c->qlen) {
        wire w = c->q[c->qhead];
        c->qhead = (c->qhead + 1) % c->qcap;
        c->qlen--;
        cat k = msg_cat(w.msg);
        pbft_msg *m = parse(c, w.to, w.msg, k);
        pbft_event ev = {.kind = PBFT_EV_MESSAGE, .now_ms = c->now, .msg = m};
        step(c, w.to, &ev, k);
        pbft_msg_unref(m);
        pbft_msg_unref(w.msg);
    }
}

/* The state digest after seq: any function of seq all replicas share. */
static void app_digest(uint64_t seq, uint8_t out[FB_DIGEST_LEN])
{
    memset(out, 0, FB_DIGEST_LEN);
    memcpy(out, &seq, sizeof seq);
}

/* Finish every held execution (and those they make ready). */
static void complete_executions(cluster *c)
{
    static const uint8_t ok[8] = "ok";
    pbft_result res[256];
    for (uint32_t i = 0; i < N; i++) {
        while (c->exec[i].on) {
            pending_exec e = c->exec[i];
            c->exec[i].on = false;
            if (e.nreqs > 256)
                bench_die("batch too large", FB_EINVAL);
            for (size_t k = 0; k < e.nreqs; k++)
                res[k] = (pbft_result){ok, sizeof ok};
            pbft_event ev = {.kind = PBFT_EV_EXECUTED, .now_ms = c->now};
            ev.executed.seq = e.seq;
            ev.executed.results = res;
            ev.executed.nresults = e.nreqs;
            app_digest(e.seq, ev.executed.app_digest);
            c->executed[i] += e.nreqs;
            step(c, i, &ev, CAT_EXECUTED);
        }
    }
}

/* The client sends to every replica; each parses and steps it. */
static void submit(cluster *c, const pbft_msg *req)
{
    for (uint32_t i = 0; i < N; i++) {
        pbft_msg *m = parse(c, i, req, CAT_CLIENT);
        pbft_event ev = {.kind = PBFT_EV_REQUEST, .now_ms = c->now, .msg = m};
        step(c, i, &ev, CAT_CLIENT);
        pbft_msg_unref(m);
    }
}

static void cluster_init(cluster *c, uint32_t batch, bool ed25519)
{
    memset(c, 0, sizeof *c);
    c->now = 1000;
    for (uint32_t i = 0; i < N; i++) {
        pbft_config cfg = {.n = N,
                           .id = i,
                           .checkpoint_interval = 16,
                           .log_window = 64,
                           .batch_max_requests = batch,
                           .signer = ed25519 ? (pbft_signer){bench_sign_ed25519, &rkeys[i]}
                                             : (pbft_signer){null_sign, NULL}};
        char err[160];
        if (pbft_new(&cfg, &c->r[i], err, sizeof err) != 0) {
            fprintf(stderr, "bench: pbft_new: %s\n", err);
            exit(1);
        }
    }
}

static void cluster_free(cluster *c)
{
    complete_executions(c);
    while (c->qlen) {
        pbft_msg_unref(c->q[c->qhead].msg);
        c->qhead = (c->qhead + 1) % c->qcap;
        c->qlen--;
    }
    free(c->q);
    for (uint32_t i = 0; i < N; i++)
        pbft_free(c->r[i]);
}

/* ------------------------------------------------------------ workload */

/* Requests for one batch size.  First `idle` rounds in which clients
 * 2B + 1 .. 2B + idle send one request each (they stay in the client table,
 * as the clients of a real deployment do); then round k uses clients
 * (k % 2) * B .. + B - 1 at timestamp k / 2 + 1, so a client's previous
 * request has executed before its next one arrives.  Client 2B primes the
 * pipeline. */
typedef struct workload {
    uint32_t batch;
    size_t idle;     /* rounds of idle clients, before warm-up */
    size_t rounds;   /* idle rounds included */
    pbft_msg **reqs; /* rounds * batch, round-major */
    pbft_msg *prime;
} workload;

static void workload_make(workload *w, uint32_t batch, size_t rounds, uint32_t idle_clients,
                          const fb_identity *ckeys)
{
    w->batch = batch;
    w->idle = (idle_clients + batch - 1) / batch;
    w->rounds = w->idle + rounds;
    w->reqs = calloc(w->rounds * batch, sizeof *w->reqs);
    if (!w->reqs)
        bench_die("calloc", FB_ENOMEM);
    for (size_t k = 0; k < w->rounds; k++)
        for (uint32_t j = 0; j < batch; j++) {
            size_t i = k * batch + j;
            uint32_t client;
            uint64_t ts;
            if (k < w->idle) {
                client = 2 * batch + 1 + (uint32_t)i;
                ts = 1;
            } else {
                client = (uint32_t)((k - w->idle) % 2) * batch + j;
                ts = (k - w->idle) / 2 + 1;
            }
            w->reqs[i] = bench_request(&ckeys[client], client, ts, (uint32_t)i, 64);
        }
    w->prime = bench_request(&ckeys[2 * batch], 2 * batch, 1, 0, 64);
}

static void workload_free(workload *w)
{
    for (size_t i = 0; i < w->rounds * w->batch; i++)
        pbft_msg_unref(w->reqs[i]);
    free(w->reqs);
    pbft_msg_unref(w->prime);
}

typedef struct result {
    double step_us[2], all_us[2]; /* per committed request: primary, backup */
    double cat_us[2][CAT_N];
    double msgs_per_req;
} result;

static result run_one(const workload *w, bool ed25519)
{
    cluster *c = malloc(sizeof *c);
    if (!c)
        bench_die("malloc", FB_ENOMEM);
    cluster_init(c, w->batch, ed25519);
    /* The prime request goes out alone (nothing is in flight yet); from then
     * on one batch is always in flight when the next round arrives. */
    submit(c, w->prime);
    uint64_t exec0[N] = {0}, sent0 = 0;
    for (size_t k = 0; k < w->rounds; k++) {
        if (k == w->idle + WARM_ROUNDS) {
            memset(c->t_step, 0, sizeof c->t_step);
            memset(c->t_parse, 0, sizeof c->t_parse);
            memset(c->t_cat, 0, sizeof c->t_cat);
            memcpy(exec0, c->executed, sizeof exec0);
            sent0 = c->sent;
        }
        for (uint32_t j = 0; j < w->batch; j++)
            submit(c, w->reqs[k * w->batch + j]);
        complete_executions(c);
        run_network(c);
    }
    result res;
    for (int role = 0; role < 2; role++) {
        uint32_t i = (uint32_t)role; /* replica 0 is the primary of view 0 */
        double reqs = (double)(c->executed[i] - exec0[i]);
        res.step_us[role] = c->t_step[i] / reqs * 1e6;
        res.all_us[role] = (c->t_step[i] + c->t_parse[i]) / reqs * 1e6;
        for (int k = 0; k < CAT_N; k++)
            res.cat_us[role][k] = c->t_cat[i][k] / reqs * 1e6;
    }
    res.msgs_per_req = (double)(c->sent - sent0) / (double)(c->executed[0] - exec0[0]);
    /* Sanity: full batches, nothing lost, one digest per request. */
    uint64_t total = w->rounds * w->batch + 1;
    for (uint32_t i = 0; i < N; i++) {
        pbft_status st;
        pbft_get_status(c->r[i], &st);
        if (c->executed[i] + (uint64_t)w->batch < total || st.view != 0 ||
            st.digests.requests != total) {
            fprintf(stderr,
                    "bench: replica %u executed %llu of %llu requests, view %llu, %llu request "
                    "digests\n",
                    i, (unsigned long long)c->executed[i], (unsigned long long)total,
                    (unsigned long long)st.view, (unsigned long long)st.digests.requests);
            exit(1);
        }
    }
    if (c->batch_reqs != (c->batches - 1) * w->batch + 1) {
        fprintf(stderr, "bench: batches were not full (%llu requests in %llu batches of %u)\n",
                (unsigned long long)c->batch_reqs, (unsigned long long)c->batches, w->batch);
        exit(1);
    }
    cluster_free(c);
    free(c);
    return res;
}

/* ------------------------------------------------------------ main */

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: bench_pbft [--rounds R] [--requests N] [--batches B1,B2,...] "
            "[--idle-clients K]\n"
            "  --rounds R        rounds; figures are the best round (default 5, at most %d)\n"
            "  --requests N      committed requests per measurement (default 4096)\n"
            "  --batches LIST    batch sizes, comma-separated, each 1..128 (default 1,16,64)\n"
            "  --idle-clients K  clients that sent one request earlier and stay in the client\n"
            "                    table (default 0, at most %d)\n",
            BENCH_MAX_ROUNDS, MAX_IDLE);
}

static int parse_batches(const char *s, uint32_t *out, int *n)
{
    *n = 0;
    while (*s) {
        char *end;
        unsigned long b = strtoul(s, &end, 10);
        if (end == s || b < 1 || b > 128 || *n == MAX_BATCHES)
            return -1;
        out[(*n)++] = (uint32_t)b;
        s = *end == ',' ? end + 1 : end;
        if (*end && *end != ',')
            return -1;
    }
    return *n ? 0 : -1;
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"rounds", required_argument, NULL, 'r'},  {"requests", required_argument, NULL, 'n'},
        {"batches", required_argument, NULL, 'b'}, {"idle-clients", required_argument, NULL, 'i'},
        {"help", no_argument, NULL, 'h'},          {NULL, 0, NULL, 0}};
    int rounds = 5, nb = 3, c;
    size_t requests = 4096;
    uint32_t idle = 0;
    uint32_t batches[MAX_BATCHES] = {1, 16, 64};
    while ((c = getopt_long(argc, argv, "r:n:b:i:h", opts, NULL)) != -1) {
        switch (c) {
        case 'r':
            rounds = atoi(optarg);
            break;
        case 'n':
            requests = strtoul(optarg, NULL, 10);
            break;
        case 'b':
            if (parse_batches(optarg, batches, &nb) != 0) {
                usage(stderr);
                return 2;
            }
            break;
        case 'i':
            idle = (uint32_t)strtoul(optarg, NULL, 10);
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (rounds < 1 || rounds > BENCH_MAX_ROUNDS || requests < 1 || idle > MAX_IDLE) {
        usage(stderr);
        return 2;
    }
    if (fb_crypto_init() != 0)
        return 1;
    for (uint32_t i = 0; i < N; i++)
        bench_key(KEY_FAMILY_REPLICA, i, &rkeys[i]);
    uint32_t nkeys = 2 * 128 + 1 + idle + 128;
    fb_identity *ckeys = malloc(nkeys * sizeof *ckeys);
    if (!ckeys)
        bench_die("malloc", FB_ENOMEM);
    for (uint32_t i = 0; i < nkeys; i++)
        bench_key(KEY_FAMILY_CLIENT, i, &ckeys[i]);

    workload w[MAX_BATCHES];
    for (int b = 0; b < nb; b++) {
        size_t r = (requests + batches[b] - 1) / batches[b] + WARM_ROUNDS;
        workload_make(&w[b], batches[b], r, idle, ckeys);
    }

    /* stat[batch][signer][role][step|all] */
    bench_stat st[MAX_BATCHES][2][2][2];
    bench_stat cst[2][2][CAT_N]; /* largest batch: [signer][role][cat] */
    memset(cst, 0, sizeof cst);
    double msgs[MAX_BATCHES];
    memset(st, 0, sizeof st);
    double t_start = bench_now();
    for (int r = 0; r < rounds; r++)
        for (int s = 0; s < 2; s++)
            for (int b = 0; b < nb; b++) {
                result res = run_one(&w[b], s == 1);
                for (int role = 0; role < 2; role++) {
                    bench_add(&st[b][s][role][0], res.step_us[role]);
                    bench_add(&st[b][s][role][1], res.all_us[role]);
                }
                msgs[b] = res.msgs_per_req;
                for (int role = 0; b == nb - 1 && role < 2; role++)
                    for (int k = 0; k < CAT_N; k++)
                        bench_add(&cst[s][role][k], res.cat_us[role][k]);
            }
    double elapsed = bench_now() - t_start;

    static const char *const signer[2] = {"null", "ed25519"};
    static const char *const role[2] = {"primary", "backup"};
    printf("bench_pbft: n = 4, ~%zu committed requests per measurement, best of %d rounds "
           "(%.1f s), %u idle clients\n",
           requests, rounds, elapsed, idle);
    printf("us per committed request; step = inside pbft_step, +parse = pbft_parse too; "
           "(median)\n\n");
    printf("%-8s %-8s %6s %9s %18s %18s %9s\n", "signer", "replica", "batch", "msgs/req",
           "step us (med)", "+parse us (med)", "req/s");
    for (int s = 0; s < 2; s++)
        for (int role_i = 0; role_i < 2; role_i++)
            for (int b = 0; b < nb; b++) {
                const bench_stat *x = st[b][s][role_i];
                double all = bench_min(&x[1]);
                printf("%-8s %-8s %6u %9.1f %9.2f (%6.2f) %9.2f (%6.2f) %9.0f\n", signer[s],
                       role[role_i], batches[b], msgs[b], bench_min(&x[0]), bench_median(&x[0]),
                       all, bench_median(&x[1]), 1e6 / all);
            }
    printf("\nratios (step + parse, best): bX/bY = per-request cost in batches of X over "
           "batches of Y;\ned/null = ed25519 signer over null signer, same batch\n\n");
    printf("%-8s %-8s", "signer", "replica");
    for (int b = 1; b < nb; b++) {
        char h[32];
        snprintf(h, sizeof h, "b%u/b%u", batches[0], batches[b]);
        printf(" %11s", h);
    }
    printf("\n");
    for (int s = 0; s < 2; s++)
        for (int ri = 0; ri < 2; ri++) {
            printf("%-8s %-8s", signer[s], role[ri]);
            for (int b = 1; b < nb; b++)
                printf(" %10.2fx", bench_min(&st[0][s][ri][1]) / bench_min(&st[b][s][ri][1]));
            printf("\n");
        }
    printf("\n%-17s", "signing cost");
    for (int b = 0; b < nb; b++) {
        char h[32];
        snprintf(h, sizeof h, "batch %u", batches[b]);
        printf(" %11s", h);
    }
    printf("\n");
    for (int ri = 0; ri < 2; ri++) {
        printf("%-8s %-8s", "ed/null", role[ri]);
        for (int b = 0; b < nb; b++)
            printf(" %10.2fx", bench_min(&st[b][1][ri][1]) / bench_min(&st[b][0][ri][1]));
        printf("\n");
    }

    printf("\nwhere it goes at batch %u: us per committed request by what was handled "
           "(step + parse, best)\n\n",
           batches[nb - 1]);
    printf("%-18s %12s %12s %12s %12s\n", "handling", "null prim", "null backup", "ed prim",
           "ed backup");
    for (int k = 0; k < CAT_N; k++) {
        printf("%-18s", cat_name[k]);
        for (int s = 0; s < 2; s++)
            for (int ri = 0; ri < 2; ri++)
                printf(" %12.2f", bench_min(&cst[s][ri][k]));
        printf("\n");
    }

    for (int b = 0; b < nb; b++)
        workload_free(&w[b]);
    free(ckeys);
    return 0;
}
