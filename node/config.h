/* config.h - cluster.json (the federation) and node.json (one node), parsed
 * and validated with jansson.  Every error names the file, the field and the
 * fix, e.g. "cluster.json: replicas[2].public_key: not 64 hex digits (copy
 * the line printed by 'fedbft keygen')".
 *
 * cluster.json:
 *   { "replicas": [ { "id": 0, "host": "127.0.0.1", "port": 7000,
 *                     "client_port": 7100, "public_key": "<64 hex>" }, ... ],
 *     "clients":  [ { "id": 1000, "name": "alice", "public_key": "<64 hex>" }, ... ] }
 *   ids 0..n-1, each once, n >= 4; f is derived (floor((n-1)/3)).  Client ids
 *   are distinct from each other (any uint32).  Unknown fields are errors (a
 *   typo must not be silently ignored).
 *
 * node.json:
 *   { "id": 0, "cluster": "cluster.json", "key": "node0/node.key",
 *     "data_dir": "node0/data",
 *     "listen": "127.0.0.1",            optional: bind address (default: host from cluster.json)
 *     "batch_max_requests": 64, "batch_max_bytes": 262144, "batch_max_delay_ms": 2,
 *     "checkpoint_interval": 16, "log_window": 64,
 *     "request_timeout_ms": 2000, "view_change_timeout_ms": 2000,
 *     "worker_threads": 0,              0 = one per usable CPU (cgroup limit, affinity)
 *     "durability": "fsync" | "os",
 *     "max_frame": 4194304, "send_queue_bytes": 16777216,
 *     "log_level": "info",
 *     "log_file": "node.log",           optional: append the log here instead of stderr
 *     "fault_injection": false,         true: the admin socket's `fault` command may
 *                                       drop or delay replica links (test clusters)
 *     "http_port": 0,                   0 = no HTTP server; else its port on listen
 *     "verify": "batch",                "batch": signatures checked on worker threads off
 *                                       the event loop; "inline": one by one on the loop
 *     "sig_cache": true,                false: no verified-signature cache (every
 *                                       signature checked, relayed ones included)
 *     "digest_cache": true }            false: a relayed request's digest is recomputed
 *                                       instead of reused
 *   Relative paths are relative to the directory of node.json.  All knobs but
 *   id, cluster, key and data_dir are optional with the defaults shown.
 *   verify, sig_cache and digest_cache exist for benchmark ablations: each
 *   switches one mechanism off to measure what it buys; the defaults are what
 *   a production node runs.
 *
 * Thread-safety: reentrant; results are plain data owned by the caller.
 */
#ifndef FB_CONFIG_H
#define FB_CONFIG_H

#include "keys.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CFG_PATH_MAX 1024
#define CFG_HOST_MAX 256

typedef struct cfg_replica {
    uint32_t id;
    char host[CFG_HOST_MAX];
    uint16_t port;        /* replica-to-replica links */
    uint16_t client_port; /* client links */
    uint8_t pk[FB_PK_LEN];
} cfg_replica;

typedef struct cfg_client {
    uint32_t id;
    char name[64];
    uint8_t pk[FB_PK_LEN];
} cfg_client;

typedef struct cfg_cluster {
    uint32_t n, f;
    bool has_model_digest;
    uint8_t model_digest[16]; /* "model_digest": every replica must serve this model */
    cfg_replica *replicas;    /* [n], index = id */
    cfg_client *clients;
    uint32_t nclients;
} cfg_cluster;

typedef enum cfg_durability { CFG_DURABILITY_FSYNC = 1, CFG_DURABILITY_OS = 2 } cfg_durability;

/* node.json "verify": where incoming signatures are checked (0 is the default). */
typedef enum cfg_verify { CFG_VERIFY_BATCH = 0, CFG_VERIFY_INLINE = 1 } cfg_verify;

/* node.json "inference": the local model and how it is served.  An empty
 * model means the node serves no inference. */
typedef struct cfg_inference {
    char model[CFG_PATH_MAX]; /* GGUF file (resolved); "" = none */
    uint32_t threads;         /* inference threads */
    uint32_t nice;            /* added niceness: inference runs below consensus */
    bool sched_idle;          /* and as SCHED_IDLE: only on otherwise idle cores */
    uint32_t max_batch;       /* sequences decoded together */
    uint32_t max_queue;       /* waiting requests; beyond: 429 */
    uint32_t max_queue_delay_ms;
    uint32_t prefill_chunk;
    uint32_t max_tokens;  /* largest max_tokens a request may ask */
    uint32_t n_ctx;       /* positions per sequence (0: the model's, capped at 2048) */
    uint32_t deadline_ms; /* per-request deadline */
    uint32_t cache_entries;
    uint64_t cache_bytes;
    uint32_t cache_ttl_ms;
    uint32_t rate_per_s; /* requests per second per client; 0: unlimited */
    uint32_t rate_burst;
} cfg_inference;

typedef struct cfg_node {
    uint32_t id;
    char path[CFG_PATH_MAX];         /* the node.json this came from */
    char cluster_path[CFG_PATH_MAX]; /* resolved */
    char key_path[CFG_PATH_MAX];     /* resolved */
    char data_dir[CFG_PATH_MAX];     /* resolved */
    char listen[CFG_HOST_MAX];       /* "" = the host from cluster.json */
    uint32_t batch_max_requests, batch_max_bytes;
    uint64_t batch_max_delay_ms;
    uint32_t checkpoint_interval, log_window;
    uint64_t request_timeout_ms, view_change_timeout_ms;
    uint32_t worker_threads;
    cfg_durability durability;
    uint32_t max_frame;
    uint64_t send_queue_bytes;
    char log_level[16];          /* "error" | "warn" | "info" | "debug" */
    char log_file[CFG_PATH_MAX]; /* "" = stderr; else appended to (resolved) */
    bool fault_injection;        /* admin `fault` allowed (test clusters only) */
    uint16_t http_port;          /* 0 = no HTTP server */
    cfg_verify verify;           /* batch (worker pool) or inline (loop thread) */
    bool sig_cache;              /* verified-signature cache (default true) */
    bool digest_cache;           /* reuse a known request's digest (default true) */
    cfg_inference inference;
} cfg_node;

/* Parse and validate.  On error returns FB_EINVAL (or FB_ENOENT/FB_EIO for the
 * file itself) with the message in err; *out is untouched. */
int cfg_cluster_load(const char *path, cfg_cluster *out, char *err, size_t errlen);
void cfg_cluster_free(cfg_cluster *c);

int cfg_node_load(const char *path, cfg_node *out, char *err, size_t errlen);

/* Cross-checks: node id exists in the cluster, and the key file's public key
 * is the one cluster.json lists for that id. */
int cfg_check_node_in_cluster(const cfg_node *node, const cfg_cluster *cluster,
                              const uint8_t node_pk[FB_PK_LEN], char *err, size_t errlen);

/* The client entry for id, or NULL. */
const cfg_client *cfg_find_client(const cfg_cluster *c, uint32_t id);

/* Write cluster.json / node.json (used by `fedbft cluster init`). */
int cfg_cluster_write(const char *path, const cfg_cluster *c, char *err, size_t errlen);
int cfg_node_write(const char *path, const cfg_node *n, char *err, size_t errlen);

/* Is host usable as a cluster.json host or a node.json listen address: not
 * empty, shorter than CFG_HOST_MAX, and only the characters host names and
 * IPv4/IPv6 addresses use?  0, or FB_EINVAL with the reason in err (the
 * check the loaders apply, for command-line options that become hosts). */
int cfg_check_host(const char *host, char *err, size_t errlen);

/* Defaults for every optional knob (id, paths left empty). */
void cfg_node_defaults(cfg_node *n);

#endif
