/* sim_main.c - fedbft_sim: run many seeds of the cluster simulator.
 *
 *   fedbft_sim [--n 4|7|all] [--seeds N] [--first-seed S] [--scenario NAME|all]
 *              [--check-determinism K] [--verbose]
 *   FEDBFT_SIM_SEEDS=N   overrides --seeds (per n and scenario)
 *   FEDBFT_SIM_SEED=0x.. runs exactly that seed (it names n and scenario)
 *
 * Seeds are first-seed .. first-seed+N-1 for every chosen n and scenario.
 * A failure prints the seed, n, scenario, the broken check, the trace tail
 * and the command that replays it; the exit status is 1 if any seed failed.
 * CPU time is measured here, around the runs, never inside them.
 */
#include "sim.h"

#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_PRINTED_FAILURES 8

typedef struct agg {
    uint64_t seeds, failed, requests, view_changes, transfers, max_lat_heal, bound_min, bound_max;
    double worst_ratio;
    uint64_t worst_seed;
} agg;

static double cpu_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: fedbft_sim [--n 4|7|all] [--seeds N] [--first-seed S]\n"
               "                  [--scenario NAME|all] [--check-determinism K] [--verbose]\n"
               "  env FEDBFT_SIM_SEEDS=N overrides --seeds; FEDBFT_SIM_SEED=0x... replays one "
               "seed\n  scenarios:");
    for (int i = 0; i < SIM_SC_COUNT; i++)
        fprintf(f, " %s", sim_scenario_name(i));
    fprintf(f, "\n");
}

static int parse_u64(const char *s, uint64_t *out)
{
    char *end = NULL;
    unsigned long long v = strtoull(s, &end, 0);
    if (!s[0] || !end || *end)
        return -1;
    *out = v;
    return 0;
}

static void print_failure(const sim_result *r, const char *prog, int printed)
{
    printf("FAIL seed=0x%" PRIx64 " n=%u scenario=%s\n  %s\n", r->seed, r->n,
           sim_scenario_name(r->scenario), r->why);
    printf("  replay: FEDBFT_SIM_SEED=0x%" PRIx64 " %s --verbose\n", r->seed, prog);
    if (printed < MAX_PRINTED_FAILURES)
        printf("  trace tail:\n%s\n", r->trace);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    uint32_t ns[2] = {4, 7};
    size_t nns = 2;
    uint64_t seeds = 10, first = 1, det_every = 0;
    int scenario = -1;
    bool verbose = false;
    static const struct option opts[] = {{"n", required_argument, NULL, 'n'},
                                         {"seeds", required_argument, NULL, 's'},
                                         {"first-seed", required_argument, NULL, 'f'},
                                         {"scenario", required_argument, NULL, 'c'},
                                         {"check-determinism", required_argument, NULL, 'd'},
                                         {"verbose", no_argument, NULL, 'v'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    int opt;
    while ((opt = getopt_long(argc, argv, "n:s:f:c:d:vh", opts, NULL)) != -1) {
        uint64_t v = 0;
        switch (opt) {
        case 'n':
            if (strcmp(optarg, "all") == 0) {
                nns = 2;
            } else if (parse_u64(optarg, &v) == 0 && v >= 4 && v <= 7) {
                ns[0] = (uint32_t)v;
                nns = 1;
            } else {
                fprintf(stderr, "fedbft_sim: --n wants 4..7 or all, not '%s'\n", optarg);
                return 2;
            }
            break;
        case 's':
            if (parse_u64(optarg, &seeds)) {
                fprintf(stderr, "fedbft_sim: --seeds wants a count, not '%s'\n", optarg);
                return 2;
            }
            break;
        case 'f':
            if (parse_u64(optarg, &first) || first >> 47) {
                fprintf(stderr, "fedbft_sim: --first-seed wants a number below 2^47\n");
                return 2;
            }
            break;
        case 'c':
            if (strcmp(optarg, "all") == 0) {
                scenario = -1;
            } else if ((scenario = sim_scenario_parse(optarg)) < 0) {
                fprintf(stderr, "fedbft_sim: unknown scenario '%s'\n", optarg);
                usage(stderr);
                return 2;
            }
            break;
        case 'd':
            if (parse_u64(optarg, &det_every)) {
                fprintf(stderr, "fedbft_sim: --check-determinism wants a count\n");
                return 2;
            }
            break;
        case 'v':
            verbose = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "fedbft_sim: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    const char *env = getenv("FEDBFT_SIM_SEEDS");
    if (env && *env && parse_u64(env, &seeds)) {
        fprintf(stderr, "fedbft_sim: FEDBFT_SIM_SEEDS='%s' is not a count\n", env);
        return 2;
    }

    /* The list of seeds to run: one given seed, or the grid. */
    uint64_t *list = NULL;
    size_t nlist = 0;
    const char *one = getenv("FEDBFT_SIM_SEED");
    if (one && *one) {
        uint64_t s;
        uint32_t n;
        int sc;
        if (parse_u64(one, &s) || sim_seed_split(s, &n, &sc)) {
            fprintf(stderr,
                    "fedbft_sim: FEDBFT_SIM_SEED='%s' is not a simulator seed (its low 16 bits "
                    "name n and the scenario, e.g. 0x10400)\n",
                    one);
            return 2;
        }
        list = malloc(sizeof *list);
        if (!list)
            return 1;
        list[nlist++] = s;
    } else {
        int sc_lo = scenario < 0 ? 0 : scenario, sc_hi = scenario < 0 ? SIM_SC_COUNT : scenario + 1;
        size_t total = nns * (size_t)(sc_hi - sc_lo) * seeds;
        list = malloc((total ? total : 1) * sizeof *list);
        if (!list)
            return 1;
        for (size_t k = 0; k < nns; k++)
            for (int sc = sc_lo; sc < sc_hi; sc++)
                for (uint64_t i = 0; i < seeds; i++)
                    list[nlist++] = sim_seed_make(first + i, ns[k], sc);
    }

    static agg table[8][SIM_SC_COUNT];
    uint64_t faults[SIM_F_COUNT] = {0}, counters[SIM_C_COUNT] = {0};
    uint64_t failed = 0, nondet = 0, harness_err = 0;
    int printed = 0;
    double cpu = 0;
    static sim_result r, r2;
    for (size_t i = 0; i < nlist; i++) {
        double t0 = cpu_seconds();
        int rc = sim_run(list[i], verbose, &r);
        cpu += cpu_seconds() - t0;
        if (rc < 0) {
            fprintf(stderr, "fedbft_sim: seed 0x%" PRIx64 ": harness error %d\n", list[i], rc);
            harness_err++;
            continue;
        }
        agg *a = &table[r.n][r.scenario];
        a->seeds++;
        if (r.failed) {
            a->failed++;
            failed++;
            print_failure(&r, argv[0], printed++);
        }
        if (det_every && i % det_every == 0) {
            int rc2 = sim_run(list[i], false, &r2);
            if (rc2 != rc || r2.fingerprint != r.fingerprint || r2.end_ms != r.end_ms ||
                memcmp(r2.counters, r.counters, sizeof r.counters) != 0) {
                nondet++;
                printf("NONDETERMINISTIC seed=0x%" PRIx64 ": fingerprints %016" PRIx64
                       " and %016" PRIx64 "\n",
                       list[i], r.fingerprint, r2.fingerprint);
            }
        }
        a->requests += r.counters[SIM_C_REQUESTS];
        a->view_changes += r.counters[SIM_C_VIEW_CHANGES];
        a->transfers += r.counters[SIM_C_STATE_TRANSFERS];
        if (r.max_latency_heal_ms > a->max_lat_heal)
            a->max_lat_heal = r.max_latency_heal_ms;
        if (r.bound_ms && (!a->bound_min || r.bound_ms < a->bound_min))
            a->bound_min = r.bound_ms;
        if (r.bound_ms > a->bound_max)
            a->bound_max = r.bound_ms;
        double ratio = r.bound_ms ? (double)r.max_latency_heal_ms / (double)r.bound_ms : 0;
        if (ratio > a->worst_ratio) {
            a->worst_ratio = ratio;
            a->worst_seed = r.seed;
        }
        for (int f = 0; f < SIM_F_COUNT; f++)
            faults[f] += r.faults[f];
        for (int c = 0; c < SIM_C_COUNT; c++) {
            if (c == SIM_C_MAX_VIEW)
                counters[c] = r.counters[c] > counters[c] ? r.counters[c] : counters[c];
            else
                counters[c] += r.counters[c];
        }
    }

    printf("\nfedbft_sim: %zu seeds run, %" PRIu64 " failed", nlist, failed);
    if (det_every)
        printf(", %" PRIu64 " nondeterministic (every %" PRIu64 "th seed run twice)", nondet,
               det_every);
    printf("\n%-3s %-16s %6s %5s %9s %9s %8s %13s %15s %11s\n", "n", "scenario", "seeds", "fail",
           "requests", "view-chg", "st-xfer", "max-lat-heal", "bound(ms)", "worst/bound");
    uint64_t per_n[8] = {0};
    for (uint32_t n = 4; n <= 7; n++)
        for (int sc = 0; sc < SIM_SC_COUNT; sc++) {
            const agg *a = &table[n][sc];
            if (!a->seeds)
                continue;
            per_n[n] += a->seeds;
            printf("%-3u %-16s %6" PRIu64 " %5" PRIu64 " %9" PRIu64 " %9" PRIu64 " %8" PRIu64
                   " %10" PRIu64 " ms %7" PRIu64 "..%-6" PRIu64 " %10.2f%%\n",
                   n, sim_scenario_name(sc), a->seeds, a->failed, a->requests, a->view_changes,
                   a->transfers, a->max_lat_heal, a->bound_min, a->bound_max,
                   100.0 * a->worst_ratio);
        }
    printf("seeds per n:");
    for (uint32_t n = 4; n <= 7; n++)
        if (per_n[n])
            printf(" n=%u: %" PRIu64, n, per_n[n]);
    printf("\nfaults injected:");
    for (int f = 0; f < SIM_F_COUNT; f++)
        printf("%s %s=%" PRIu64, f % 6 == 0 ? "\n " : "", sim_fault_name(f), faults[f]);
    printf("\nobserved:");
    for (int c = 0; c < SIM_C_COUNT; c++)
        printf("%s %s=%" PRIu64, c % 6 == 0 ? "\n " : "", sim_counter_name(c), counters[c]);
    printf("\nthroughput: %" PRIu64 " committed requests in %.2f CPU-s = %.0f requests per "
           "CPU-second\n",
           counters[SIM_C_REQUESTS], cpu, cpu > 0 ? (double)counters[SIM_C_REQUESTS] / cpu : 0.0);
    free(list);
    return failed || nondet || harness_err ? 1 : 0;
}
