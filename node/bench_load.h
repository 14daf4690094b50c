/* bench_load.h - the load of `fedbft bench`: real BFT clients (client.h),
 * all on one libuv loop, each with at most one request outstanding.
 *
 * Closed loop (rate 0): every client submits its next request as soon as the
 * previous one completes.  Open loop (rate R): requests arrive as a Poisson
 * process of R per second in total (exponential gaps from a seeded PRNG) and
 * go to an idle client; an arrival that finds every client busy is counted as
 * missed and dropped, so outstanding requests never exceed the clients and
 * nothing queues inside the bench.
 *
 * Operations: with probability read_ratio a `get` on the read-only fast path
 * of a key this run has written (or of one that does not exist, before any
 * write completed: NOT_FOUND is a successful read); otherwise a `put` of a
 * fresh key ("bench/RUNID/CLIENT/N") with a payload-byte value.
 *
 * Phases: warmup (completions not counted), the measured window (every
 * figure counts only what completes inside it), then a drain of at most
 * BENCH_DRAIN_MS for requests still in flight, which are not counted.
 * Latency is from submit (signing included) to the agreed reply; in the open
 * loop an arrival is submitted when the loop's timer (millisecond resolution)
 * finds it due, so it may start up to about a millisecond after its time.
 *
 * Progress: a line on stderr every second when it is a terminal (rewritten in
 * place), else a plain line every BENCH_PROGRESS_PLAIN_S seconds.
 */
#ifndef FB_BENCH_LOAD_H
#define FB_BENCH_LOAD_H

#include "bench_hist.h"
#include "config.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BENCH_DRAIN_MS 2000
#define BENCH_PROGRESS_PLAIN_S 5

typedef struct bench_load_config {
    const cfg_cluster *cluster;
    const char *keys_dir; /* client j's key: keys_dir/client<j>/node.key */
    uint32_t clients;
    double rate; /* requests per second in total; 0 = closed loop */
    uint32_t payload;
    double warmup_s, duration_s, read_ratio;
    uint64_t timeout_ms; /* per request */
    const char *label;   /* prefix of the progress line */
    /* Called on a libuv worker thread (never two at once) as the measured
     * window opens (which 0) and closes (which 1): the bench samples the nodes. */
    void (*snapshot)(void *arg, int which);
    void *snapshot_arg;
    int (*interrupted)(void); /* polled every 100 ms; non-zero stops the load */
} bench_load_config;

typedef struct bench_load_result {
    double measured_s; /* the window's actual length */
    uint64_t ops, reads, writes;
    uint64_t errors;      /* replies that agreed on a failure, or submit errors */
    uint64_t timeouts;    /* no agreement within timeout_ms */
    uint64_t missed;      /* open loop: arrivals that found every client busy */
    uint64_t unfinished;  /* in flight when the window closed and not done after the drain */
    uint64_t retransmits; /* client stats over the whole run */
    uint64_t fallbacks;   /* fast reads that had to be ordered */
    bool interrupted;
    bench_hist all, read, write; /* latency, microseconds */
} bench_load_result;

/* Run the load.  Returns 0, or an FB_E* code with err set when the clients
 * cannot be set up (a key missing, not in cluster.json, ...).  An interrupt
 * is not an error: out->interrupted says so. */
int bench_load_run(const bench_load_config *cfg, bench_load_result *out, char *err, size_t errlen);

#endif
