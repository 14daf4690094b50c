/* cmd_bench.c - `fedbft bench`: options, the run (Ed25519 timing, a local or
 * existing cluster, the load, the report) and the ablation over node switches.
 * The parts: bench_load (clients), bench_nodes (clusters, metrics, /proc),
 * bench_report (figures, JSON, text, compare), bench_hist (latencies). */
#include "cli.h"

#include "bench_load.h"
#include "bench_nodes.h"
#include "bench_report.h"
#include "config.h"
#include "fb_cpus.h"
#include "fb_error.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <sodium.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define VERIFY_ROUNDS 5
#define VERIFY_PER_ROUND 600
#define MAX_CLIENTS 4096
#define MAX_PAYLOAD 65536
#define HTTP_PORT_OFFSET 200 /* cluster init: HTTP on P+200+i, the highest port */

void cmd_bench_usage(FILE *out)
{
    fprintf(out,
            "Usage: fedbft bench (--local N | --cluster FILE --keys DIR) [options]\n\n"
            "A consensus benchmark: real BFT clients (those of 'fedbft client') put and get\n"
            "keys on the replicas; the bench reports throughput, latency percentiles,\n"
            "failures, view changes, each node's CPU and memory, and how close throughput\n"
            "comes to the bound that Ed25519 verification sets on this machine.\n\n"
            "Target (one of):\n"
            "  --local N              make a cluster of N replicas (4..100) with this binary\n"
            "                         ('cluster init --model none', 'cluster up') in a\n"
            "                         temporary directory, run, then stop and remove it (also\n"
            "                         on errors, Ctrl-C and SIGTERM)\n"
            "  --cluster FILE         a running cluster's cluster.json; node metrics and\n"
            "                         processes are read when FILE's directory has the\n"
            "                         node<i>/ layout of 'cluster init' on this machine,\n"
            "                         else they are n/a\n"
            "  --keys DIR             with --cluster: client keys DIR/client<j>/node.key for\n"
            "                         j < C ('cluster init' makes them in CLUSTER_DIR/clients)\n\n"
            "Local cluster (--local only):\n"
            "  --base-port P          replica ports P+i, client ports P+100+i, HTTP P+200+i\n"
            "                         (default 7400)\n"
            "  --durability os|fsync  the nodes' store durability (default os)\n"
            "  --keep DIR             make the cluster in DIR and keep it (stopped) afterwards;\n"
            "                         with --ablation, one subdirectory per configuration\n"
            "  --batch-max N          \"batch_max_requests\": N in every node.json\n"
            "  --verify inline|batch  \"verify\": check signatures one by one on the loop, or\n"
            "                         in batches on the worker pool\n"
            "  --no-digest-cache      \"digest_cache\": false in every node.json\n"
            "  --no-sig-cache         \"sig_cache\": false in every node.json\n"
            "  --ablation[=LIST]      run the default configuration, then each switch alone,\n"
            "                         each on a fresh cluster with the same load, and print\n"
            "                         one table (throughput, p50, p99, ratios to the default);\n"
            "                         LIST (comma-separated, default all): batch (batch max\n"
            "                         1), verify (inline), digest-cache, sig-cache\n"
            "  --rounds N             with --ablation: N interleaved rounds (default 1, at\n"
            "                         most 20); each configuration's row is its median round\n"
            "                         by throughput (the lower middle one for an even N),\n"
            "                         so a slow phase of a shared machine hits every\n"
            "                         configuration alike\n\n"
            "Load:\n"
            "  --clients C            clients, each with one request outstanding (default 8,\n"
            "                         at most %d)\n"
            "  --rate R               open loop: R requests/s in total as Poisson arrivals,\n"
            "                         each given to an idle client; an arrival that finds all\n"
            "                         C busy is counted as missed, never queued.  Default:\n"
            "                         closed loop (each client sends again when answered)\n"
            "  --payload B            bytes of each put's value, 0..%d (default 64)\n"
            "  --read-ratio X         share of gets, 0..1 (default 0): gets of keys this run\n"
            "                         wrote, on the read-only fast path; puts of fresh keys\n"
            "  --warmup S             seconds of load before measuring (default 2)\n"
            "  --duration S           seconds measured (default 10)\n"
            "  --timeout MS           a request not agreed after MS counts as a timeout\n"
            "                         (default 10000)\n\n"
            "Output:\n"
            "  --json                 one JSON object (an array with --ablation) on stdout\n"
            "  --compare FILE         compare with a baseline written by --json: each figure's\n"
            "                         change; exit 1 if throughput fell or p99 latency rose by\n"
            "                         more than the threshold\n"
            "  --threshold PCT        for --compare (default 10)\n"
            "  --cores N              cores in the bound (default: the CPUs this process may\n"
            "                         use: online, affinity mask, cgroup CPU limit)\n\n"
            "Figures cover the measured window: the operations completed in it, latency from\n"
            "submit to the agreed reply (log-bucketed, within 0.4%%), errors, timeouts, missed\n"
            "arrivals; view changes over the run (fedbft_view_changes_total, fedbft_view); each\n"
            "node's CPU%% and RSS (/proc), its CPU by thread (loop, fb-verify*, fb-store,\n"
            "other: /proc/PID/task) and its mean verification job, store commit and\n"
            "request phase times (fedbft_verify_job_seconds, fedbft_store_commit_seconds,\n"
            "fedbft_request_phase_seconds); and the signature-verification bound\n"
            "  cores / (verifications per op x Ed25519 verify time)\n"
            "where verifications per op is the growth of fedbft_signatures_verified_total\n"
            "summed over the replicas (fedbft_sigcache_misses_total if the nodes lack it)\n"
            "divided by the ops, and the verify time is the time one verification takes\n"
            "with one thread per core verifying at once (at most the usable CPUs), timed\n"
            "just before and just after the load; the bound uses their mean.  For\n"
            "reference, the protocol's own count per op: n + n(n-1)/batch if every replica\n"
            "checks every vote (a COMMIT carries no signature), less at the minimum\n"
            "(quorums only).\n"
            "Progress goes to stderr: every second on a terminal, every 5 s otherwise.\n\n"
            "Exit status: 0 done, 1 failure (the cluster did not come up, nothing completed,\n"
            "or --compare found a regression), 2 usage error, 128+signal when interrupted.\n",
            MAX_CLIENTS, MAX_PAYLOAD);
}

/* ------------------------------------------------------------ options */

typedef struct ablation_row {
    const char *name, *label, *slug;
} ablation_row;

static const ablation_row ROWS[] = {
    {"batch", "no batching", "no-batching"},
    {"verify", "verify inline", "verify-inline"},
    {"digest-cache", "no digest cache", "no-digest-cache"},
    {"sig-cache", "no sig cache", "no-sig-cache"},
};
#define NROWS (sizeof ROWS / sizeof ROWS[0])

typedef struct verify_set verify_set;

typedef struct bench_opts {
    const char *cluster, *keys, *keep, *compare;
    uint32_t local; /* nodes; 0 = --cluster */
    uint32_t base_port, clients, payload, cores;
    const char *durability;
    double rate, warmup, duration, read_ratio, threshold;
    uint64_t timeout_ms;
    bench_switches sw;
    bool json, ablation, any_switch;
    bool rows[NROWS];
    uint32_t rounds;      /* --ablation rounds */
    const verify_set *vs; /* signatures for timing Ed25519 around each run */
} bench_opts;

enum {
    O_CLUSTER = 256,
    O_KEYS,
    O_LOCAL,
    O_BASE_PORT,
    O_DURABILITY,
    O_KEEP,
    O_CLIENTS,
    O_RATE,
    O_PAYLOAD,
    O_WARMUP,
    O_DURATION,
    O_READ_RATIO,
    O_TIMEOUT,
    O_BATCH_MAX,
    O_VERIFY,
    O_NO_DIGEST,
    O_NO_SIG,
    O_ABLATION,
    O_CORES,
    O_JSON,
    O_COMPARE,
    O_THRESHOLD,
    O_ROUNDS
};

static bool parse_uint(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
    if (!s || !*s || *s == '-' || *s == '+')
        return false;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v < min || v > max)
        return false;
    *out = v;
    return true;
}

static bool parse_u32(const char *s, uint32_t min, uint32_t max, uint32_t *out)
{
    uint64_t v;
    if (!parse_uint(s, min, max, &v))
        return false;
    *out = (uint32_t)v;
    return true;
}

/* A finite number in [min, max]; above_min: strictly greater than min. */
static bool parse_real(const char *s, double min, double max, bool above_min, double *out)
{
    if (!s || !*s)
        return false;
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *end || !isfinite(v) || v < min || v > max || (above_min && v == min))
        return false;
    *out = v;
    return true;
}

static int parse_rows(const char *list, bench_opts *o)
{
    if (!list) {
        for (size_t k = 0; k < NROWS; k++)
            o->rows[k] = true;
        return 0;
    }
    char buf[256];
    snprintf(buf, sizeof buf, "%s", list);
    for (char *save = NULL, *w = strtok_r(buf, ",", &save); w; w = strtok_r(NULL, ",", &save)) {
        size_t k = 0;
        while (k < NROWS && strcmp(w, ROWS[k].name) != 0)
            k++;
        if (k == NROWS)
            return cli_usage_error(
                "bench", "bench",
                "--ablation=%s: unknown switch '%s' (batch, verify, digest-cache, "
                "sig-cache)",
                list, w);
        o->rows[k] = true;
    }
    return 0;
}

/* One option's value into o; 0 or 2. */
static int take_option(int c, const char *arg, bench_opts *o)
{
    switch (c) {
    case O_CLUSTER:
        o->cluster = arg;
        return 0;
    case O_KEYS:
        o->keys = arg;
        return 0;
    case O_KEEP:
        o->keep = arg;
        return 0;
    case O_COMPARE:
        o->compare = arg;
        return 0;
    case O_JSON:
        o->json = true;
        return 0;
    case O_LOCAL:
        return parse_u32(arg, 4, BENCH_MAX_NODES, &o->local)
                   ? 0
                   : cli_usage_error("bench", "bench", "--local %s: must be 4..%d replicas", arg,
                                     BENCH_MAX_NODES);
    case O_BASE_PORT:
        return parse_u32(arg, 1, 65535, &o->base_port)
                   ? 0
                   : cli_usage_error("bench", "bench", "--base-port %s: must be 1..65535", arg);
    case O_DURABILITY:
        if (strcmp(arg, "os") != 0 && strcmp(arg, "fsync") != 0)
            return cli_usage_error("bench", "bench", "--durability %s: must be os or fsync", arg);
        o->durability = arg;
        return 0;
    case O_CLIENTS:
        return parse_u32(arg, 1, MAX_CLIENTS, &o->clients)
                   ? 0
                   : cli_usage_error("bench", "bench", "--clients %s: must be 1..%d", arg,
                                     MAX_CLIENTS);
    case O_RATE:
        return parse_real(arg, 0, 1e7, true, &o->rate)
                   ? 0
                   : cli_usage_error("bench", "bench",
                                     "--rate %s: must be a number of requests per second > 0", arg);
    case O_PAYLOAD:
        return parse_u32(arg, 0, MAX_PAYLOAD, &o->payload)
                   ? 0
                   : cli_usage_error("bench", "bench", "--payload %s: must be 0..%d bytes", arg,
                                     MAX_PAYLOAD);
    case O_WARMUP:
        return parse_real(arg, 0, 3600, false, &o->warmup)
                   ? 0
                   : cli_usage_error("bench", "bench", "--warmup %s: must be 0..3600 seconds", arg);
    case O_DURATION:
        return parse_real(arg, 0.1, 86400, false, &o->duration)
                   ? 0
                   : cli_usage_error("bench", "bench", "--duration %s: must be 0.1..86400 seconds",
                                     arg);
    case O_READ_RATIO:
        return parse_real(arg, 0, 1, false, &o->read_ratio)
                   ? 0
                   : cli_usage_error("bench", "bench", "--read-ratio %s: must be a fraction 0..1",
                                     arg);
    case O_TIMEOUT:
        return parse_uint(arg, 100, 3600000, &o->timeout_ms)
                   ? 0
                   : cli_usage_error("bench", "bench", "--timeout %s: must be 100..3600000 ms",
                                     arg);
    case O_BATCH_MAX:
        o->any_switch = true;
        return parse_u32(arg, 1, 65536, &o->sw.batch_max)
                   ? 0
                   : cli_usage_error("bench", "bench", "--batch-max %s: must be 1..65536 requests",
                                     arg);
    case O_VERIFY:
        o->any_switch = true;
        if (strcmp(arg, "inline") == 0)
            o->sw.verify = BENCH_VERIFY_INLINE;
        else if (strcmp(arg, "batch") == 0)
            o->sw.verify = BENCH_VERIFY_BATCH;
        else
            return cli_usage_error("bench", "bench", "--verify %s: must be inline or batch", arg);
        return 0;
    case O_NO_DIGEST:
        o->any_switch = o->sw.no_digest_cache = true;
        return 0;
    case O_NO_SIG:
        o->any_switch = o->sw.no_sig_cache = true;
        return 0;
    case O_ABLATION:
        o->ablation = true;
        return parse_rows(arg, o);
    case O_CORES:
        return parse_u32(arg, 1, 65536, &o->cores)
                   ? 0
                   : cli_usage_error("bench", "bench", "--cores %s: must be >= 1", arg);
    case O_ROUNDS:
        return parse_u32(arg, 1, 20, &o->rounds)
                   ? 0
                   : cli_usage_error("bench", "bench", "--rounds %s: must be 1..20", arg);
    case O_THRESHOLD:
        return parse_real(arg, 0, 100000, true, &o->threshold)
                   ? 0
                   : cli_usage_error("bench", "bench", "--threshold %s: must be a percentage > 0",
                                     arg);
    default:
        return cli_usage_error("bench", "bench", "unknown option");
    }
}

/* Options that only make sense together, or only with --local. */
static int check_combinations(const bench_opts *o, bool local_only_given)
{
    if (!o->cluster && !o->local)
        return cli_usage_error("bench", "bench",
                               "say what to benchmark: --local N, or --cluster FILE --keys DIR");
    if (o->cluster && o->local)
        return cli_usage_error("bench", "bench", "--cluster and --local exclude each other");
    if (o->cluster && !o->keys)
        return cli_usage_error(
            "bench", "bench",
            "--cluster needs --keys DIR (the client keys, DIR/client<j>/node.key)");
    if (o->local && o->keys)
        return cli_usage_error("bench", "bench",
                               "--keys is for --cluster; --local makes its own client keys");
    if (o->cluster && local_only_given)
        return cli_usage_error("bench", "bench",
                               "--base-port, --durability, --keep, --batch-max, --verify, "
                               "--no-digest-cache, --no-sig-cache and --ablation need --local "
                               "(they configure the cluster the bench makes)");
    if (o->rounds > 1 && !o->ablation)
        return cli_usage_error("bench", "bench",
                               "--rounds is for --ablation (one run is one round)");
    if (o->ablation && o->any_switch)
        return cli_usage_error("bench", "bench",
                               "--ablation sets the switches itself; drop --batch-max, --verify, "
                               "--no-digest-cache and --no-sig-cache");
    if (o->ablation && o->compare)
        return cli_usage_error("bench", "bench",
                               "--compare takes a single run's record; it does not combine with "
                               "--ablation");
    if (o->local && o->base_port + HTTP_PORT_OFFSET + o->local - 1 > 65535)
        return cli_usage_error("bench", "bench",
                               "--base-port %u: too high for %u replicas (ports up to P+%u)",
                               o->base_port, o->local, HTTP_PORT_OFFSET + o->local - 1);
    return 0;
}

static int parse_opts(int argc, char **argv, bench_opts *o)
{
    static const struct option opts[] = {
        {"cluster", required_argument, NULL, O_CLUSTER},
        {"keys", required_argument, NULL, O_KEYS},
        {"local", required_argument, NULL, O_LOCAL},
        {"base-port", required_argument, NULL, O_BASE_PORT},
        {"durability", required_argument, NULL, O_DURABILITY},
        {"keep", required_argument, NULL, O_KEEP},
        {"clients", required_argument, NULL, O_CLIENTS},
        {"rate", required_argument, NULL, O_RATE},
        {"payload", required_argument, NULL, O_PAYLOAD},
        {"warmup", required_argument, NULL, O_WARMUP},
        {"duration", required_argument, NULL, O_DURATION},
        {"read-ratio", required_argument, NULL, O_READ_RATIO},
        {"timeout", required_argument, NULL, O_TIMEOUT},
        {"batch-max", required_argument, NULL, O_BATCH_MAX},
        {"verify", required_argument, NULL, O_VERIFY},
        {"no-digest-cache", no_argument, NULL, O_NO_DIGEST},
        {"no-sig-cache", no_argument, NULL, O_NO_SIG},
        {"ablation", optional_argument, NULL, O_ABLATION},
        {"cores", required_argument, NULL, O_CORES},
        {"json", no_argument, NULL, O_JSON},
        {"compare", required_argument, NULL, O_COMPARE},
        {"threshold", required_argument, NULL, O_THRESHOLD},
        {"rounds", required_argument, NULL, O_ROUNDS},
        {NULL, 0, NULL, 0},
    };
    *o = (bench_opts){.rounds = 1,
                      .base_port = 7400,
                      .clients = 8,
                      .payload = 64,
                      .cores = fb_usable_cpus(),
                      .durability = "os",
                      .warmup = 2,
                      .duration = 10,
                      .threshold = 10,
                      .timeout_ms = 10000};
    bool local_only = false;
    int c, rc;
    optind = 1;
    opterr = 0; /* our own messages */
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        if (c == '?') {
            const char *arg = argv[optind - 1];
            return cli_usage_error("bench", "bench", "%s: %s", arg ? arg : "?",
                                   optopt ? "needs a value" : "unknown option");
        }
        if ((rc = take_option(c, optarg, o)) != 0)
            return rc;
        local_only |= c == O_BASE_PORT || c == O_DURABILITY || c == O_KEEP || c == O_BATCH_MAX ||
                      c == O_VERIFY || c == O_NO_DIGEST || c == O_NO_SIG || c == O_ABLATION;
    }
    if (optind < argc)
        return cli_usage_error("bench", "bench", "unexpected argument '%s'", argv[optind]);
    return check_combinations(o, local_only);
}

/* ------------------------------------------------------------ measurements */

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Signatures for timing Ed25519 on this machine: VERIFY_PER_ROUND distinct
 * signatures of 32-byte digests (what the node verifies), made once. */
struct verify_set {
    unsigned char pk[crypto_sign_PUBLICKEYBYTES];
    unsigned char msg[VERIFY_PER_ROUND][32];
    unsigned char sig[VERIFY_PER_ROUND][crypto_sign_BYTES];
};

static verify_set *verify_set_new(void)
{
    verify_set *vs = malloc(sizeof *vs);
    if (!vs)
        return NULL;
    unsigned char sk[crypto_sign_SECRETKEYBYTES];
    crypto_sign_keypair(vs->pk, sk);
    for (int i = 0; i < VERIFY_PER_ROUND; i++) {
        randombytes_buf(vs->msg[i], sizeof vs->msg[i]);
        crypto_sign_detached(vs->sig[i], NULL, vs->msg[i], sizeof vs->msg[i], sk);
    }
    sodium_memzero(sk, sizeof sk);
    return vs;
}

typedef struct verify_timer {
    const verify_set *vs;
    double us; /* median of the rounds' time per verification */
    int bad;
} verify_timer;

static void *verify_rounds(void *arg)
{
    verify_timer *t = arg;
    const verify_set *vs = t->vs;
    double round_us[VERIFY_ROUNDS];
    for (int r = 0; r < VERIFY_ROUNDS; r++) {
        uint64_t t0 = mono_ns();
        for (int i = 0; i < VERIFY_PER_ROUND; i++)
            t->bad |=
                crypto_sign_verify_detached(vs->sig[i], vs->msg[i], sizeof vs->msg[i], vs->pk);
        round_us[r] = (double)(mono_ns() - t0) / 1e3 / VERIFY_PER_ROUND;
    }
    qsort(round_us, VERIFY_ROUNDS, sizeof round_us[0], cmp_double);
    t->us = round_us[VERIFY_ROUNDS / 2];
    return NULL;
}

/* One Ed25519 verification on this machine, in microseconds of one core,
 * with every core verifying at once (the bound's premise: the cores do
 * nothing but verify; two hyperthreads of one core verify slower together
 * than one alone).  `cores` threads (this one included; at most the CPUs
 * this process may use) each verify VERIFY_ROUNDS rounds of the set; each thread's median
 * round, averaged. */
static uint32_t verify_threads(uint32_t cores)
{
    uint32_t usable = fb_usable_cpus();
    if (cores > usable) /* --cores beyond what this process may use */
        cores = usable;
    return cores < 1 ? 1 : cores > 256 ? 256 : cores;
}

static int measure_verify_us(const verify_set *vs, uint32_t cores, double *out)
{
    cores = verify_threads(cores);
    verify_timer t[256];
    pthread_t th[256];
    uint32_t started = 1;
    for (uint32_t i = 0; i < cores; i++)
        t[i] = (verify_timer){.vs = vs};
    for (uint32_t i = 1; i < cores; i++, started++)
        if (pthread_create(&th[i], NULL, verify_rounds, &t[i]) != 0)
            break;
    verify_rounds(&t[0]);
    double sum = 0;
    int bad = t[0].bad;
    sum += t[0].us;
    for (uint32_t i = 1; i < started; i++) {
        pthread_join(th[i], NULL);
        bad |= t[i].bad;
        sum += t[i].us;
    }
    if (bad)
        return FB_EAUTH;
    *out = sum / started;
    return 0;
}

/* Each client holds a connection to every replica: make sure the process
 * may open that many descriptors (raising the soft limit if it must). */
static int ensure_fds(uint32_t clients, uint32_t n)
{
    struct rlimit rl;
    rlim_t need = (rlim_t)clients * n + 64;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur >= need)
        return 0;
    if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < need) {
        fprintf(stderr,
                "fedbft bench: %u clients x %u replicas need about %llu file descriptors, but "
                "the hard limit is %llu (raise 'ulimit -n' or use fewer --clients)\n",
                clients, n, (unsigned long long)need, (unsigned long long)rl.rlim_max);
        return FB_ETOOBIG;
    }
    rl.rlim_cur = need;
    return setrlimit(RLIMIT_NOFILE, &rl) == 0 ? 0 : FB_EIO;
}

/* ------------------------------------------------------------ one run */

typedef struct samples {
    const bench_nodes *nd;
    bench_sample before, open, close;
} samples;

static void take_snapshot(void *arg, int which)
{
    samples *s = arg;
    bench_nodes_sample(s->nd, which ? &s->close : &s->open);
}

static int interrupted(void)
{
    return bench_nodes_signalled();
}

/* The outcome of one run: a record, or an error message (rc != 0). */
typedef struct run_out {
    json_t *rec;
    int rc; /* 0, 1 failure, 128+signal interrupted */
    char err[1024];
} run_out;

/* Load an existing cluster's config and run the load against nd; fills out. */
static void run_against(const bench_opts *o, const bench_nodes *nd, const bench_config *bc,
                        run_out *out)
{
    cfg_cluster cl;
    if (cfg_cluster_load(nd->cluster_json, &cl, out->err, sizeof out->err) != 0) {
        out->rc = 1;
        return;
    }
    bench_config cfg = *bc;
    cfg.nodes = cl.n;
    cfg.f = cl.f;
    samples *s = calloc(1, sizeof *s);
    bench_load_result *res = malloc(sizeof *res);
    bench_nodes attached = *nd;
    if (!nd->local) { /* now that the number of replicas is known */
        bench_nodes_attach(nd->cluster_json, cl.n, &attached);
        snprintf(attached.keys_dir, sizeof attached.keys_dir, "%s", nd->keys_dir);
    }
    if (!s || !res) {
        snprintf(out->err, sizeof out->err, "out of memory");
        out->rc = 1;
        goto done;
    }
    if (ensure_fds(o->clients, cl.n) != 0) {
        snprintf(out->err, sizeof out->err, "cannot open enough connections for %u clients",
                 o->clients);
        out->rc = 1;
        goto done;
    }
    s->nd = &attached;
    bench_nodes_sample(&attached, &s->before);
    char label[96];
    snprintf(label, sizeof label, "bench%s%s%s", bc->label ? " [" : "", bc->label ? bc->label : "",
             bc->label ? "]" : "");
    bench_load_config lc = {.cluster = &cl,
                            .keys_dir = nd->keys_dir,
                            .clients = o->clients,
                            .rate = o->rate,
                            .payload = o->payload,
                            .warmup_s = o->warmup,
                            .duration_s = o->duration,
                            .read_ratio = o->read_ratio,
                            .timeout_ms = o->timeout_ms,
                            .label = label,
                            .snapshot = take_snapshot,
                            .snapshot_arg = s,
                            .interrupted = interrupted};
    /* Ed25519 is timed right before and right after the load (the cluster
     * idle), so that the bound follows a shared machine's drift. */
    double verify_before = 0, verify_after = 0;
    bool timed = measure_verify_us(o->vs, o->cores, &verify_before) == 0;
    if (timed && bench_load_run(&lc, res, out->err, sizeof out->err) != 0) {
        out->rc = 1;
        goto done;
    }
    if (!timed || (!res->interrupted && measure_verify_us(o->vs, o->cores, &verify_after) != 0)) {
        snprintf(out->err, sizeof out->err, "libsodium failed to verify its own signatures");
        out->rc = 1;
        goto done;
    }
    if (res->interrupted) {
        out->rc = 128 + bench_nodes_signalled();
        snprintf(out->err, sizeof out->err, "interrupted");
        goto done;
    }
    bench_run run = {.cfg = cfg,
                     .load = res,
                     .before = &s->before,
                     .open = &s->open,
                     .close = &s->close,
                     .verify_us = (verify_before + verify_after) / 2,
                     .verify_us_before = verify_before,
                     .verify_us_after = verify_after,
                     .verify_threads = verify_threads(o->cores),
                     .verify_samples =
                         2 * verify_threads(o->cores) * VERIFY_ROUNDS * VERIFY_PER_ROUND};
    out->rec = bench_report_json(&run);
    if (!out->rec) {
        out->rc = 1;
        snprintf(out->err, sizeof out->err, "out of memory");
    } else if (res->ops == 0) {
        out->rc = 1;
        snprintf(out->err, sizeof out->err,
                 "no operation completed in the measured window (%llu errors, %llu timeouts)",
                 (unsigned long long)res->errors, (unsigned long long)res->timeouts);
    }
done:
    free(s);
    free(res);
    cfg_cluster_free(&cl);
}

/* A fresh local cluster in dir with switches sw, the run, and its removal. */
static void run_local(const bench_opts *o, const char *dir, const bench_config *bc, run_out *out)
{
    bench_local_opts lo = {.nodes = o->local,
                           .clients = o->clients,
                           .base_port = o->base_port,
                           .durability = o->durability,
                           .sw = bc->sw};
    bench_nodes nd;
    fprintf(stderr, "fedbft bench: starting %u replicas in %s (ports %u..%u)%s%s\n", o->local, dir,
            o->base_port, o->base_port + HTTP_PORT_OFFSET + o->local - 1,
            bc->label ? ", configuration: " : "", bc->label ? bc->label : "");
    /* the nodes inherit this limit: each needs a descriptor per client */
    if (ensure_fds(o->clients, o->local) != 0) {
        snprintf(out->err, sizeof out->err, "cannot open enough connections for %u clients",
                 o->clients);
        out->rc = 1;
        return;
    }
    if (bench_nodes_local_up(dir, &lo, &nd, out->err, sizeof out->err) != 0)
        out->rc = bench_nodes_signalled() ? 128 + bench_nodes_signalled() : 1;
    else
        run_against(o, &nd, bc, out);
    bench_nodes_local_down(&nd);
}

/* ------------------------------------------------------------ output */

static int print_json(json_t *j)
{
    char *s = json_dumps(j, JSON_INDENT(2) | JSON_REAL_PRECISION(10));
    if (!s)
        return 1;
    printf("%s\n", s);
    free(s);
    return 0;
}

/* Ratios to the default row, added to each row of an ablation. */
static void add_ratios(json_t *rows)
{
    json_t *base = json_array_get(rows, 0);
    double t0 = json_number_value(json_object_get(base, "throughput_ops_s"));
    double p0 = json_number_value(json_object_get(json_object_get(base, "latency_us"), "p99"));
    size_t i;
    json_t *r;
    json_array_foreach(rows, i, r)
    {
        if (json_object_get(r, "error") || json_object_get(base, "error"))
            continue;
        double t = json_number_value(json_object_get(r, "throughput_ops_s"));
        double p = json_number_value(json_object_get(json_object_get(r, "latency_us"), "p99"));
        json_object_set_new(r, "throughput_ratio", t0 > 0 ? json_real(t / t0) : json_null());
        json_object_set_new(r, "p99_ratio", p0 > 0 ? json_real(p / p0) : json_null());
    }
}

/* ------------------------------------------------------------ the command */

typedef struct workspace {
    char root[BENCH_PATH_MAX - 64]; /* where local clusters go */
    bool remove;                    /* a temporary directory: remove at the end */
} workspace;

static int make_workspace(const bench_opts *o, workspace *ws)
{
    if (o->keep) {
        if (strlen(o->keep) >= sizeof ws->root)
            return cli_usage_error("bench", "bench", "--keep %s: path too long", o->keep);
        snprintf(ws->root, sizeof ws->root, "%s", o->keep);
        return 0;
    }
    const char *tmp = getenv("TMPDIR");
    snprintf(ws->root, sizeof ws->root, "%s/fedbft-bench-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(ws->root)) {
        fprintf(stderr, "fedbft bench: cannot make a temporary directory %s: %s\n", ws->root,
                strerror(errno));
        return 1;
    }
    ws->remove = true;
    return 0;
}

static void drop_workspace(const workspace *ws)
{
    if (ws->remove && bench_nodes_remove_tree(ws->root) != 0)
        fprintf(stderr, "fedbft bench: could not remove %s\n", ws->root);
    else if (!ws->remove && ws->root[0])
        fprintf(stderr, "fedbft bench: kept the cluster files in %s\n", ws->root);
}

static bench_config base_config(const bench_opts *o)
{
    return (bench_config){.local = o->local > 0,
                          .cluster_file = o->cluster,
                          .nodes = o->local,
                          .clients = o->clients,
                          .rate = o->rate,
                          .payload = o->payload,
                          .warmup_s = o->warmup,
                          .duration_s = o->duration,
                          .read_ratio = o->read_ratio,
                          .timeout_ms = o->timeout_ms,
                          .durability = o->durability,
                          .base_port = o->base_port,
                          .sw = o->sw,
                          .cores = o->cores};
}

static void switch_for_row(size_t k, bench_switches *sw)
{
    *sw = (bench_switches){0};
    if (k == 0)
        sw->batch_max = 1;
    else if (k == 1)
        sw->verify = BENCH_VERIFY_INLINE;
    else if (k == 2)
        sw->no_digest_cache = true;
    else
        sw->no_sig_cache = true;
}

static double throughput_of(json_t *rec)
{
    return json_number_value(json_object_get(rec, "throughput_ops_s"));
}

/* The median round of one configuration by throughput (an error row if any
 * round failed), with every round's throughput beside it. */
static json_t *median_round(json_t *recs)
{
    size_t n = json_array_size(recs), i;
    json_t *r, *err = NULL;
    json_array_foreach(recs, i, r) if (json_object_get(r, "error")) err = r;
    if (err || n == 1)
        return json_incref(err ? err : json_array_get(recs, 0));
    json_t *sorted[20];
    for (i = 0; i < n; i++) { /* insertion sort by throughput: n <= 20 */
        json_t *x = json_array_get(recs, i);
        size_t j = i;
        for (; j > 0 && throughput_of(sorted[j - 1]) > throughput_of(x); j--)
            sorted[j] = sorted[j - 1];
        sorted[j] = x;
    }
    json_t *pick = json_deep_copy(sorted[(n - 1) / 2]); /* the lower one of two */
    json_t *all = json_array();
    json_array_foreach(recs, i, r) json_array_append_new(all, json_real(throughput_of(r)));
    json_object_set_new(pick, "rounds", json_integer((json_int_t)n));
    json_object_set_new(pick, "round_throughputs_ops_s", all);
    return pick;
}

static int run_ablation(const bench_opts *o, const workspace *ws)
{
    json_t *per_cfg[NROWS + 1] = {0};
    int rc = 0;
    for (size_t k = 0; k <= NROWS; k++)
        per_cfg[k] = json_array();
    /* rounds outer, configurations inner: drift of a shared machine then
     * falls on every configuration alike */
    for (uint32_t round = 0; round < o->rounds && rc <= 128; round++)
        for (size_t k = 0; k <= NROWS && !bench_nodes_signalled(); k++) {
            if (k > 0 && !o->rows[k - 1])
                continue;
            bench_config bc = base_config(o);
            bc.label = k ? ROWS[k - 1].label : "default";
            if (k)
                switch_for_row(k - 1, &bc.sw);
            char dir[BENCH_PATH_MAX];
            const char *slug = k ? ROWS[k - 1].slug : "default";
            if (o->rounds > 1)
                snprintf(dir, sizeof dir, "%s/%s-%u", ws->root, slug, round + 1);
            else
                snprintf(dir, sizeof dir, "%s/%s", ws->root, slug);
            run_out out = {0};
            run_local(o, dir, &bc, &out);
            if (out.rc > 128) {
                json_decref(out.rec);
                rc = out.rc;
                break;
            }
            if (out.rc) {
                fprintf(stderr, "fedbft bench: %s: %s\n", bc.label, out.err);
                json_decref(out.rec);
                out.rec = json_pack("{s:s,s:s}", "label", bc.label, "error", out.err);
                rc = 1;
            }
            json_array_append_new(per_cfg[k], out.rec);
        }
    if (rc <= 128 && bench_nodes_signalled())
        rc = 128 + bench_nodes_signalled(); /* between two configurations */
    if (rc <= 128) {
        json_t *rows = json_array();
        for (size_t k = 0; k <= NROWS; k++)
            if (json_array_size(per_cfg[k]) > 0)
                json_array_append_new(rows, median_round(per_cfg[k]));
        add_ratios(rows);
        if (o->json)
            print_json(rows);
        else
            bench_report_ablation(stdout, rows);
        if (!o->json && o->rounds > 1)
            printf("(each row: the median of %u interleaved rounds by throughput)\n", o->rounds);
        json_decref(rows);
    }
    for (size_t k = 0; k <= NROWS; k++)
        json_decref(per_cfg[k]);
    return rc;
}

static int run_single(const bench_opts *o, const workspace *ws, json_t *baseline)
{
    bench_config bc = base_config(o);
    run_out out = {0};
    if (o->local) {
        run_local(o, ws->root, &bc, &out);
    } else {
        bench_nodes nd = {0};
        snprintf(nd.cluster_json, sizeof nd.cluster_json, "%s", o->cluster);
        snprintf(nd.keys_dir, sizeof nd.keys_dir, "%s", o->keys);
        run_against(o, &nd, &bc, &out);
    }
    if (!out.rec) {
        if (out.rc <= 128)
            fprintf(stderr, "fedbft bench: %s\n", out.err);
        return out.rc ? out.rc : 1;
    }
    int rc = out.rc;
    if (rc)
        fprintf(stderr, "fedbft bench: %s\n", out.err);
    json_t *changes = NULL;
    if (baseline) {
        char err[256];
        int cmp =
            bench_report_compare(NULL, baseline, out.rec, o->threshold, &changes, err, sizeof err);
        if (cmp == 1 && rc == 0)
            rc = 1;
        if (changes)
            json_object_set_new(changes, "baseline_file", json_string(o->compare));
    }
    if (o->json) {
        if (changes)
            json_object_set(out.rec, "compare", changes);
        print_json(out.rec);
    } else {
        bench_report_text(stdout, out.rec);
        if (baseline)
            bench_report_compare(stdout, baseline, out.rec, o->threshold, NULL, NULL, 0);
    }
    json_decref(changes);
    json_decref(out.rec);
    return rc;
}

/* The baseline for --compare, checked before the (long) run. */
static int load_baseline(const char *path, json_t **out)
{
    json_error_t jerr;
    json_t *b = json_load_file(path, 0, &jerr);
    if (!b) {
        if (jerr.line > 0)
            fprintf(stderr, "fedbft bench: --compare %s: line %d: %s\n", path, jerr.line,
                    jerr.text);
        else
            fprintf(stderr, "fedbft bench: --compare %s: %s\n", path, jerr.text);
        return 2;
    }
    char err[256];
    if (bench_report_compare(NULL, b, b, 10, NULL, err, sizeof err) < 0) {
        fprintf(stderr, "fedbft bench: --compare %s: %s\n", path, err);
        json_decref(b);
        return 2;
    }
    *out = b;
    return 0;
}

int cmd_bench(int argc, char **argv)
{
    bench_opts o;
    int rc = parse_opts(argc, argv, &o);
    if (rc)
        return rc;
    json_t *baseline = NULL;
    if (o.compare && (rc = load_baseline(o.compare, &baseline)) != 0)
        return rc;
    bench_nodes_catch_signals();
    verify_set *vs = verify_set_new();
    double verify_us = 0;
    if (!vs || measure_verify_us(vs, o.cores, &verify_us) != 0) {
        fprintf(stderr, "fedbft bench: %s\n",
                vs ? "libsodium failed to verify its own signatures" : "out of memory");
        free(vs);
        json_decref(baseline);
        return 1;
    }
    o.vs = vs;
    fprintf(stderr,
            "fedbft bench: Ed25519 verify takes %.1f us of a core on this machine, with %u "
            "cores verifying (timed again around each run)\n",
            verify_us, verify_threads(o.cores));
    workspace ws = {0};
    if (o.local && (rc = make_workspace(&o, &ws)) != 0) {
        json_decref(baseline);
        free(vs);
        return rc;
    }
    rc = o.ablation ? run_ablation(&o, &ws) : run_single(&o, &ws, baseline);
    if (o.local)
        drop_workspace(&ws);
    json_decref(baseline);
    free(vs);
    if (rc > 128 && o.local)
        fprintf(stderr, "fedbft bench: interrupted by signal %d; the cluster is stopped%s\n",
                rc - 128, ws.remove ? " and removed" : "");
    else if (rc > 128)
        fprintf(stderr, "fedbft bench: interrupted by signal %d\n", rc - 128);
    return rc;
}
