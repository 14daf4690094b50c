/* bench_nodes.h - the replicas a `fedbft bench` runs against, seen from
 * outside: a local cluster the bench makes and removes by running this
 * binary's `cluster init/up/down` as subprocesses, or an existing cluster
 * whose directory may or may not be on this machine; what their admin
 * sockets report (metrics) and what /proc says about their processes.
 *
 * Signals: bench_nodes_catch_signals() makes SIGINT and SIGTERM set a flag
 * (bench_nodes_signalled) instead of killing the bench, so that every path
 * still stops and removes what it started.  A subprocess that is running when
 * the flag is set gets SIGTERM (except `cluster down`, which is the cleanup).
 *
 * Threads: bench_nodes_sample may run on any one thread at a time (it uses
 * admin_call, whose reply buffer is static); everything else runs on the
 * bench's main thread.
 */
#ifndef FB_BENCH_NODES_H
#define FB_BENCH_NODES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BENCH_MAX_NODES 100 /* as `cluster init` */
#define BENCH_PATH_MAX 900  /* leaves room for node<i>/data/admin.sock etc. */

typedef enum bench_verify {
    BENCH_VERIFY_DEFAULT,
    BENCH_VERIFY_INLINE,
    BENCH_VERIFY_BATCH
} bench_verify;

/* Knobs written into every node.json of a local cluster; zero = as init wrote it. */
typedef struct bench_switches {
    uint32_t batch_max; /* "batch_max_requests"; 0 = leave */
    bench_verify verify;
    bool no_digest_cache, no_sig_cache;
} bench_switches;

typedef struct bench_local_opts {
    uint32_t nodes, clients, base_port;
    const char *durability; /* "os" | "fsync" */
    bench_switches sw;
} bench_local_opts;

typedef struct bench_nodes {
    bool local;               /* made by bench_nodes_local_up */
    bool started;             /* `cluster up` ran (so `cluster down` must) */
    uint32_t n;               /* replicas */
    char dir[BENCH_PATH_MAX]; /* the cluster directory; "" if unknown */
    char cluster_json[BENCH_PATH_MAX + 16];
    char keys_dir[BENCH_PATH_MAX + 16];
    bool node_dirs; /* dir has node<i>/ for every replica */
} bench_nodes;

/* Where a node's CPU goes, by thread (/proc/PID/task/TID: the loop is the
 * main thread; the node names the others, see batchver.c and store.c). */
typedef enum bench_thread_kind {
    BENCH_THREAD_LOOP,   /* the libuv loop: network, framing, consensus steps */
    BENCH_THREAD_VERIFY, /* "fb-verify<i>": the batch verifier's workers */
    BENCH_THREAD_STORE,  /* "fb-store": sqlite */
    BENCH_THREAD_OTHER,  /* inference, libuv's pool, anything else */
    BENCH_THREAD_KINDS
} bench_thread_kind;

/* The request phases a node times (fedbft_request_phase_seconds{phase=...},
 * each from the phase before it), in order. */
#define BENCH_PHASES 5
extern const char *const bench_phase_names[BENCH_PHASES];

/* A histogram's running sum and count, as a node's metrics report them. */
typedef struct bench_hist_total {
    double sum, count;
} bench_hist_total;

/* One node at one moment.  have_metrics: its admin socket answered. */
typedef struct bench_node_sample {
    bool have_metrics, have_sigs_verified, have_batch, have_proc, have_threads, have_timing;
    double view_changes, view;
    double sigs_verified; /* fedbft_signatures_verified_total (all series summed) */
    double sig_misses;    /* fedbft_sigcache_misses_total */
    double batch_count, batch_sum;
    uint64_t cpu_ticks; /* utime + stime, in clock ticks */
    uint64_t thread_ticks[BENCH_THREAD_KINDS];
    /* have_timing: the phases, the verification job time
     * (fedbft_verify_job_seconds) and the store commit time
     * (fedbft_store_commit_seconds). */
    bench_hist_total phase[BENCH_PHASES], verify_job, store_commit;
    uint64_t rss_kib, hwm_kib;
} bench_node_sample;

typedef struct bench_sample {
    bool taken;
    uint64_t t_us;       /* CLOCK_MONOTONIC when /proc was read */
    uint64_t self_ticks; /* this process's utime + stime */
    uint32_t n;
    bench_node_sample node[BENCH_MAX_NODES];
} bench_sample;

void bench_nodes_catch_signals(void);
/* The signal that arrived (SIGINT, SIGTERM), or 0. */
int bench_nodes_signalled(void);

/* Make a cluster in dir (created if missing; it must not hold a cluster
 * already) with `cluster init`, apply o->sw to every node.json, and start it
 * with `cluster up`.  The subcommands' output goes to dir/bench.log; on
 * failure it is copied to stderr (cluster up shows the failing node's log).
 * On failure nd->started says whether bench_nodes_local_down is needed; it is
 * safe to call either way. */
int bench_nodes_local_up(const char *dir, const bench_local_opts *o, bench_nodes *nd, char *err,
                         size_t errlen);
/* `cluster down` (if started); output to dir/bench.log. */
void bench_nodes_local_down(bench_nodes *nd);

/* An existing cluster: the directory of cluster_file is used for admin
 * sockets and pid files when it has `cluster init`'s node<i>/ layout. */
void bench_nodes_attach(const char *cluster_file, uint32_t n, bench_nodes *nd);

/* Read every node's metrics (admin socket, short timeout) and process
 * figures (pid file, /proc), and this process's CPU time. */
void bench_nodes_sample(const bench_nodes *nd, bench_sample *out);

/* Remove a directory tree (the bench's temporary directory). */
int bench_nodes_remove_tree(const char *path);

#endif
