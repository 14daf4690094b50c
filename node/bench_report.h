/* bench_report.h - the figures of a `fedbft bench` run: computed once into a
 * JSON record (what --json prints, and what --compare reads back), then
 * rendered as text from that record, compared with a baseline record, or
 * tabulated across an ablation.
 *
 * The signature-verification bound (see bench_report_json):
 *   bound = cores / (verifications per op across all replicas * verify time)
 * where verifications per op is the increase, summed over the replicas, of
 * fedbft_signatures_verified_total during the measured window divided by the
 * operations completed in it (fedbft_sigcache_misses_total when the nodes do
 * not export the first; the record says which).
 */
#ifndef FB_BENCH_REPORT_H
#define FB_BENCH_REPORT_H

#include "bench_load.h"
#include "bench_nodes.h"

#include <jansson.h>
#include <stdio.h>

typedef struct bench_config {
    const char *label; /* the ablation row; NULL for a single run */
    bool local;
    const char *cluster_file; /* --cluster */
    uint32_t nodes, f, clients;
    double rate; /* 0 = closed loop */
    uint32_t payload;
    double warmup_s, duration_s, read_ratio;
    uint64_t timeout_ms;
    const char *durability; /* local only */
    uint32_t base_port;     /* local only */
    bench_switches sw;      /* local only */
    uint32_t cores;
} bench_config;

typedef struct bench_run {
    bench_config cfg;
    const bench_load_result *load;
    /* before the warmup, as the window opened, as it closed */
    const bench_sample *before, *open, *close;
    /* One Ed25519 verification, in us of one core with every core verifying
     * (verify_threads threads), timed just before and just after the load;
     * verify_us, their mean, makes the bound. */
    double verify_us, verify_us_before, verify_us_after;
    uint32_t verify_threads, verify_samples;
} bench_run;

/* The record of one run (a new reference). */
json_t *bench_report_json(const bench_run *r);

/* A record as text (the default output). */
void bench_report_text(FILE *out, json_t *rec);

/* Compare a record with a baseline record: prints a table to out (if not
 * NULL) and returns a new JSON object of the changes in *changes (if not
 * NULL).  Returns 1 if throughput fell or p99 latency rose by more than
 * threshold_pct, 0 if not, FB_EINVAL if the baseline is not a bench record
 * (message in err). */
int bench_report_compare(FILE *out, json_t *baseline, json_t *current, double threshold_pct,
                         json_t **changes, char *err, size_t errlen);

/* The ablation table from an array of records (rows that failed carry
 * "label" and "error"); the first row is the default configuration. */
void bench_report_ablation(FILE *out, json_t *rows);

#endif
