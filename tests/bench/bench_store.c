/* bench_store.c - what group commit buys in the sqlite store (node/store.h),
 * with durability os and fsync.  Built with the suite, run by hand:
 *
 *   build/tests/bench/bench_store [--rounds R] [--slots N] [--fsync-slots M]
 *                                 [--batch B] [--dir DIR]
 *
 * The work is what one replica writes for each committed batch ("slot"):
 * the accepted PRE-PREPARE (B requests of 64-byte PUT values), the prepared
 * certificate (quorum - 1 = 2 PREPAREs for n = 4) and the execution of the B
 * PUTs (KV rows, undo rows, LtHash update, client rows, last_executed), as the
 * replica's PERSIST and EXECUTE actions ask for them.
 *
 *   ungrouped  one store transaction per write: each record alone and the
 *              execution alone (4 per slot)
 *   grouped    one transaction per slot: its records and its execution
 *              together.  That is as far as the store groups: a batch holds
 *              any number of records but at most one execution, so the node
 *              (which submits one batch per loop turn) commits at least one
 *              transaction per executed batch however busy it is.
 *
 * Batches are submitted as the node does (store_submit, up to 32 in flight,
 * completions through the wake callback and store_poll), to a fresh database
 * in a temporary directory (removed at exit) for each measurement.  Every
 * round measures all four cases in turn (the order alternating between
 * rounds), so the machine's drift hits all alike; figures are the best round
 * with the median beside it.  The fsync case is shorter (--fsync-slots):
 * every transaction waits for the disk.  "ratio" = grouped slots/s over
 * ungrouped slots/s, for the same durability.
 */
#include "bench_util.h"

#include "envelope.h"
#include "pbft.h"
#include "store.h"

#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <unistd.h>

#define INFLIGHT 32 /* batches submitted and not yet completed */
#define POOL 1024   /* distinct signed requests (and keys) cycled through */
#define NPREPARES 2 /* quorum - 1 for n = 4 */

/* ------------------------------------------------------------ temp dirs */

static char base_dir[1024]; /* removed at exit */
static char run_dir[1100];  /* the current measurement's database */

static void remove_run_dir(void)
{
    if (!run_dir[0])
        return;
    char err[256];
    if (store_wipe(run_dir, err, sizeof err) != 0)
        fprintf(stderr, "bench: %s\n", err);
    rmdir(run_dir);
    run_dir[0] = '\0';
}

static void cleanup(void)
{
    remove_run_dir();
    if (base_dir[0])
        rmdir(base_dir);
}

/* ------------------------------------------------------------ completion */

typedef struct waiter {
    pthread_mutex_t m;
    pthread_cond_t c;
    uint64_t wakes;
    size_t done;
} waiter;

static void on_wake(void *arg)
{
    waiter *w = arg;
    pthread_mutex_lock(&w->m);
    w->wakes++;
    pthread_cond_signal(&w->c);
    pthread_mutex_unlock(&w->m);
}

static void on_done(void *arg, const store_result *res)
{
    waiter *w = arg;
    if (res->status != 0)
        bench_die("store batch", res->status);
    w->done++;
}

/* Run completions until at most `left` batches are outstanding. */
static void wait_until(store *s, waiter *w, size_t submitted, size_t left)
{
    for (;;) {
        pthread_mutex_lock(&w->m);
        uint64_t seen = w->wakes;
        pthread_mutex_unlock(&w->m);
        store_poll(s);
        if (submitted - w->done <= left)
            return;
        pthread_mutex_lock(&w->m);
        while (w->wakes == seen)
            pthread_cond_wait(&w->c, &w->m);
        pthread_mutex_unlock(&w->m);
    }
}

/* ------------------------------------------------------------ workload */

typedef struct workload {
    uint32_t batch;
    pbft_msg *pool[POOL];
    pbft_msg *pp, *prepares[NPREPARES];
} workload;

static void workload_make(workload *w, uint32_t batch)
{
    fb_identity rk[3], ck[64];
    for (uint32_t i = 0; i < 3; i++)
        bench_key(1, i, &rk[i]);
    for (uint32_t i = 0; i < 64; i++)
        bench_key(2, i, &ck[i]);
    w->batch = batch;
    for (uint32_t i = 0; i < POOL; i++)
        w->pool[i] = bench_request(&ck[i % 64], i % 64, i / 64 + 1, i, 64);

    uint8_t d[FB_DIGEST_LEN];
    pbft_batch_digest(1, w->pool, batch, NULL, d);
    Fedbft__Envelope *envs[POOL];
    for (uint32_t i = 0; i < batch; i++)
        envs[i] = w->pool[i]->env;
    Fedbft__PrePrepare pp = FEDBFT__PRE_PREPARE__INIT;
    pp.seq = 1;
    pp.digest = (ProtobufCBinaryData){FB_DIGEST_LEN, d};
    pp.requests = envs;
    pp.n_requests = batch;
    pp.nondet = 1;
    pbft_signer s0 = {bench_sign_ed25519, &rk[0]};
    int rc = pbft_msg_make_batch(FEDBFT__MSG_TYPE__MSG_PRE_PREPARE, 0, &pp.base, w->pool, batch,
                                 &s0, NULL, &w->pp);
    for (uint32_t i = 0; !rc && i < NPREPARES; i++) {
        Fedbft__Prepare p = FEDBFT__PREPARE__INIT;
        p.seq = 1;
        p.digest = (ProtobufCBinaryData){FB_DIGEST_LEN, d};
        p.replica = i + 1;
        pbft_signer s = {bench_sign_ed25519, &rk[i + 1]};
        rc =
            pbft_msg_make(FEDBFT__MSG_TYPE__MSG_PREPARE, i + 1, &p.base, &s, NULL, &w->prepares[i]);
    }
    if (rc)
        bench_die("pbft_msg_make", rc);
}

static void workload_free(workload *w)
{
    for (uint32_t i = 0; i < POOL; i++)
        pbft_msg_unref(w->pool[i]);
    pbft_msg_unref(w->pp);
    for (uint32_t i = 0; i < NPREPARES; i++)
        pbft_msg_unref(w->prepares[i]);
}

static void add_record(store_batch *b, const pbft_msg *m, uint64_t seq)
{
    int rc = store_batch_record(b, PBFT_REC_MSG, m->type, 0, false, seq, m->raw, m->raw_len);
    if (rc)
        bench_die("store_batch_record", rc);
}

static void add_execute(store_batch *b, const workload *w, uint64_t seq)
{
    const uint8_t *reqs[POOL];
    size_t lens[POOL];
    for (uint32_t j = 0; j < w->batch; j++) {
        const pbft_msg *m = w->pool[((seq - 1) * w->batch + j) % POOL];
        reqs[j] = m->raw;
        lens[j] = m->raw_len;
    }
    int rc = store_batch_execute(b, seq, reqs, lens, w->batch);
    if (rc)
        bench_die("store_batch_execute", rc);
}

/* ------------------------------------------------------------ one measurement */

typedef enum mode { UNGROUPED, GROUPED } mode;

typedef struct outcome {
    double seconds;
    uint64_t transactions, fsyncs;
} outcome;

static store_batch *new_batch(void)
{
    store_batch *b = store_batch_new();
    if (!b)
        bench_die("store_batch_new", FB_ENOMEM);
    return b;
}

static void submit(store *s, waiter *w, store_batch *b, size_t *submitted)
{
    wait_until(s, w, *submitted, INFLIGHT - 1);
    int rc = store_submit(s, b, on_done, w);
    if (rc)
        bench_die("store_submit", rc);
    (*submitted)++;
}

static outcome measure(const workload *wl, cfg_durability dur, mode m, size_t slots)
{
    snprintf(run_dir, sizeof run_dir, "%s/db", base_dir);
    waiter w = {.done = 0};
    pthread_mutex_init(&w.m, NULL);
    pthread_cond_init(&w.c, NULL);
    store *s = NULL;
    char err[512];
    if (store_open(run_dir, dur, on_wake, &w, &s, err, sizeof err) != 0) {
        fprintf(stderr, "bench: %s\n", err);
        exit(1);
    }
    size_t submitted = 0;
    double t0 = bench_now();
    for (uint64_t seq = 1; seq <= slots; seq++) {
        store_batch *b = new_batch();
        add_record(b, wl->pp, seq);
        if (m == UNGROUPED) {
            submit(s, &w, b, &submitted);
            b = new_batch();
        }
        for (uint32_t i = 0; i < NPREPARES; i++) {
            add_record(b, wl->prepares[i], seq);
            if (m == UNGROUPED) {
                submit(s, &w, b, &submitted);
                b = new_batch();
            }
        }
        add_execute(b, wl, seq);
        submit(s, &w, b, &submitted);
    }
    wait_until(s, &w, submitted, 0);
    outcome o = {.seconds = bench_now() - t0};
    store_stats st;
    store_get_stats(s, &st);
    o.transactions = st.transactions;
    o.fsyncs = st.fsyncs;
    store_close(s);
    remove_run_dir();
    pthread_cond_destroy(&w.c);
    pthread_mutex_destroy(&w.m);
    return o;
}

/* ------------------------------------------------------------ main */

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: bench_store [--rounds R] [--slots N] [--fsync-slots M] [--batch B] "
            "[--dir DIR]\n"
            "  --rounds R       rounds; figures are the best round (default 5, at most %d)\n"
            "  --slots N        committed batches per measurement, durability os (default 2000)\n"
            "  --fsync-slots M  the same with durability fsync (default 300)\n"
            "  --batch B        requests per batch, 1..%d (default 16)\n"
            "  --dir DIR        where the temporary databases go (default $TMPDIR or /tmp)\n",
            BENCH_MAX_ROUNDS, POOL);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {{"rounds", required_argument, NULL, 'r'},
                                         {"slots", required_argument, NULL, 'n'},
                                         {"fsync-slots", required_argument, NULL, 'f'},
                                         {"batch", required_argument, NULL, 'b'},
                                         {"dir", required_argument, NULL, 'd'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    int rounds = 5, c;
    size_t slots_os = 2000, slots_fsync = 300;
    unsigned long batch = 16;
    const char *dir = getenv("TMPDIR");
    if (!dir || !*dir)
        dir = "/tmp";
    while ((c = getopt_long(argc, argv, "r:n:f:b:d:h", opts, NULL)) != -1) {
        switch (c) {
        case 'r':
            rounds = atoi(optarg);
            break;
        case 'n':
            slots_os = strtoul(optarg, NULL, 10);
            break;
        case 'f':
            slots_fsync = strtoul(optarg, NULL, 10);
            break;
        case 'b':
            batch = strtoul(optarg, NULL, 10);
            break;
        case 'd':
            dir = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (rounds < 1 || rounds > BENCH_MAX_ROUNDS || slots_os < 1 || slots_fsync < 1 || batch < 1 ||
        batch > POOL) {
        usage(stderr);
        return 2;
    }
    if (fb_crypto_init() != 0)
        return 1;
    if (snprintf(base_dir, sizeof base_dir, "%s/fbbench-storeXXXXXX", dir) >=
            (int)sizeof base_dir ||
        !mkdtemp(base_dir)) {
        fprintf(stderr, "bench: cannot create a temporary directory in %s: %s\n", dir,
                strerror(errno));
        base_dir[0] = '\0';
        return 1;
    }
    atexit(cleanup);

    workload *wl = calloc(1, sizeof *wl);
    if (!wl)
        bench_die("calloc", FB_ENOMEM);
    workload_make(wl, (uint32_t)batch);

    static const cfg_durability durs[2] = {CFG_DURABILITY_OS, CFG_DURABILITY_FSYNC};
    static const char *const dur_name[2] = {"os", "fsync"};
    static const char *const mode_name[2] = {"ungrouped", "grouped"};
    size_t slots[2] = {slots_os, slots_fsync};
    bench_stat rate[2][2]; /* slots/s [durability][mode] */
    outcome last[2][2];
    memset(rate, 0, sizeof rate);
    double t_start = bench_now();
    for (int r = 0; r < rounds; r++)
        for (int d = 0; d < 2; d++)
            for (int k = 0; k < 2; k++) {
                mode m = (mode)((k + r) % 2);
                outcome o = measure(wl, durs[d], m, slots[d]);
                bench_add(&rate[d][m], (double)slots[d] / o.seconds);
                last[d][m] = o;
            }
    double elapsed = bench_now() - t_start;

    printf("bench_store: %lu requests (64-byte PUTs) per slot, 1 PRE-PREPARE + %d PREPARE "
           "records per slot,\nbest of %d rounds (%.1f s), databases in %s\n\n",
           batch, NPREPARES, rounds, elapsed, base_dir);
    printf("%-6s %-10s %6s %8s %8s %10s %10s %11s %10s\n", "dur", "mode", "slots", "txn/slot",
           "fsyncs", "slots/s", "(median)", "requests/s", "txn/s");
    for (int d = 0; d < 2; d++)
        for (int m = 0; m < 2; m++) {
            const outcome *o = &last[d][m];
            double best = bench_max(&rate[d][m]);
            double tps = best * (double)o->transactions / (double)slots[d];
            printf("%-6s %-10s %6zu %8.1f %8llu %10.0f %10.0f %11.0f %10.0f\n", dur_name[d],
                   mode_name[m], slots[d], (double)o->transactions / (double)slots[d],
                   (unsigned long long)o->fsyncs, best, bench_median(&rate[d][m]),
                   best * (double)batch, tps);
        }
    printf("\n%-6s %22s %22s\n", "dur", "grouped/ungrouped best", "median");
    for (int d = 0; d < 2; d++)
        printf("%-6s %21.2fx %21.2fx\n", dur_name[d],
               bench_max(&rate[d][GROUPED]) / bench_max(&rate[d][UNGROUPED]),
               bench_median(&rate[d][GROUPED]) / bench_median(&rate[d][UNGROUPED]));
    printf("\n(fsync / os, grouped: %.2fx slower)\n",
           bench_max(&rate[0][GROUPED]) / bench_max(&rate[1][GROUPED]));

    workload_free(wl);
    free(wl);
    return 0;
}
