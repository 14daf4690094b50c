/* cmd_cluster.c - `fedbft cluster init|up|down|status|kill|restart`: make and
 * run a local test cluster as background processes.
 *
 * Layout of DIR (made by init):
 *   DIR/cluster.json                  the federation (config.h)
 *   DIR/node<i>/node.json             node i's config: cluster "../cluster.json",
 *                                     key "node.key", data_dir "data"
 *   DIR/node<i>/node.key, node.pub    node i's identity (keys.h)
 *   DIR/node<i>/data/                 node i's state (made by `fedbft run`)
 *   DIR/node<i>/node.log              stdout+stderr of node i, appended
 *   DIR/node<i>/node.pid              pid of node i while it runs (decimal + "\n")
 *   DIR/clients/client<j>/node.key    client identities, ids 1000+j
 *
 * A pid file is trusted only if the process is alive, not a zombie, and its
 * command line is `... fedbft ... --config DIR/node<i>/node.json`: pids are
 * reused, and signalling a stranger would be bad.  Waits poll with a
 * deadline; nothing sleeps for a fixed time hoping a process is ready. */
#include "cli.h"

#include "admin.h"
#include "config.h"
#include "model.h"
#include "synth.h"
#include "fb_cpus.h"
#include "fb_error.h"
#include "keys.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <dirent.h>
#include <limits.h>
#include <netdb.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MAX_NODES 100 /* replica ports P..P+99, client ports P+100.., HTTP P+200.. */
#define HTTP_PORT_OFFSET 200
#define STATUS_TIMEOUT_MS 500 /* one admin-socket `status` call in `cluster status` */
#define MAX_CLIENTS 10000
#define FIRST_CLIENT_ID 1000
#define UP_TIMEOUT_S 30
#define STOP_GRACE_MS 10000 /* SIGTERM, then SIGKILL after this */
#define KILL_WAIT_MS 5000   /* a SIGKILLed process is gone well within this */
#define POLL_MS 20          /* between checks in wait loops */
#define PROBE_MS 200        /* one TCP connect attempt */
#define LOG_TAIL_LINES 15
#define CMDLINE_MAX 8192
/* DIR/node<i>/<file>; DIR itself is kept 64 bytes shorter than CFG_PATH_MAX,
 * so every such path also fits the loaders' limit. */
#define NODE_PATH_MAX (CFG_PATH_MAX + 64)

/* ------------------------------------------------------------ usage */

void cmd_cluster_usage(FILE *out)
{
    fprintf(out,
            "Usage: fedbft cluster <subcommand> [options]\n\n"
            "Make and run a local test cluster: every node a background process on this\n"
            "machine, with its files under one directory.\n\n"
            "Subcommands:\n"
            "  init --nodes N --dir DIR [--base-port P] [--clients C]\n"
            "       [--host H | --hosts H0,H1,...] [--listen ADDR]\n"
            "       [--durability fsync|os] [--model FILE|none] [--worker-threads T]\n"
            "       [--force]\n"
            "      Make keys and configs: DIR/cluster.json, DIR/node<i>/{node.json,node.key},\n"
            "      DIR/clients/client<j>/node.key (client ids 1000+j).  Replica i is on host\n"
            "      H and listens on port P+i for replicas, P+100+i for clients and P+200+i\n"
            "      for HTTP.  --hosts gives each replica its own host instead: exactly N\n"
            "      distinct IP addresses or DNS names, comma-separated; replica i is on Hi\n"
            "      and every replica uses port P for replicas, P+100 for clients and P+200\n"
            "      for HTTP (one node per machine, container or pod; `up` starts every node\n"
            "      here, so use it only with local addresses such as 127.0.0.1,127.0.0.2,...\n"
            "      and no --listen).\n"
            "      --listen ADDR goes into every node.json as \"listen\": the IP address the\n"
            "      replica, client and HTTP listeners bind (0.0.0.0 or :: for all\n"
            "      interfaces, e.g. in a container); without it a node binds its own host,\n"
            "      which must then be an IP address, not a name.  Nodes get\n"
            "      \"fault_injection\": true (a test cluster).  Defaults: P 7000, C 8,\n"
            "      H 127.0.0.1, durability fsync.  N is 4..%d.  Refuses to overwrite an\n"
            "      existing DIR/cluster.json unless --force, which also makes new keys and\n"
            "      deletes each node's old data directory (it belongs to the old cluster).\n"
            "      Every node serves inference from DIR/model.gguf, the small preset\n"
            "      synthesized there (about 30 MB, no download), or from --model FILE (any\n"
            "      llama GGUF); --model none serves none.  cluster.json pins the model's\n"
            "      digest (model_digest), and a node serving another model will not start.\n"
            "      --worker-threads T goes into every node.json as \"worker_threads\" (the\n"
            "      signature verifier's threads; 0: the CPUs the node may use).  Default:\n"
            "      with one host, the nodes share this machine's CPUs, so each gets an\n"
            "      equal share (CPUs / N, at least 1); with --hosts, 0.\n"
            "  up --dir DIR [--binary PATH] [--timeout S]\n"
            "      Start every node that is not running (`PATH run --config\n"
            "      DIR/node<i>/node.json`, output appended to DIR/node<i>/node.log), then\n"
            "      wait up to S seconds (default %d) until each accepts client connections.\n"
            "      PATH defaults to this fedbft binary.  Exits 1 if a node dies or is not\n"
            "      ready in time, showing the end of its log.\n"
            "  down --dir DIR\n"
            "      Stop every node: SIGTERM, then SIGKILL after %d s.\n"
            "  status --dir DIR\n"
            "      A table of the nodes: pid, running, ports, whether the client port\n"
            "      accepts connections, log size, and view / last executed / stable\n"
            "      checkpoint from the node's admin socket ('-' if it does not answer).\n"
            "  kill I --dir DIR\n"
            "      SIGKILL node I (a crash, for testing recovery).\n"
            "  restart I --dir DIR [--binary PATH] [--timeout S] [--resync]\n"
            "      Stop node I gracefully if it runs, then start it as `up` does.  With\n"
            "      --resync the node starts as `fedbft run --resync`: its local state is\n"
            "      deleted and rebuilt from its peers by state transfer (the way out when\n"
            "      it refuses to start because its store is damaged).\n\n"
            "Options:\n"
            "  --help      show this help\n",
            MAX_NODES, UP_TIMEOUT_S, STOP_GRACE_MS / 1000);
}

/* ------------------------------------------------------------ small helpers */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Only for the pause between polls in the wait loops below. */
static void pause_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static int parse_u32(const char *s, uint32_t min, uint32_t max, uint32_t *out)
{
    if (!s || !*s || *s == '-' || *s == '+')
        return FB_EINVAL;
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v < min || v > max)
        return FB_EINVAL;
    *out = (uint32_t)v;
    return 0;
}

static void fmt_size(long long bytes, char *buf, size_t cap)
{
    if (bytes < 0)
        snprintf(buf, cap, "-");
    else if (bytes < 1024)
        snprintf(buf, cap, "%lld B", bytes);
    else if (bytes < 1024 * 1024)
        snprintf(buf, cap, "%.1f KiB", (double)bytes / 1024);
    else
        snprintf(buf, cap, "%.1f MiB", (double)bytes / (1024 * 1024));
}

/* ------------------------------------------------------------ the cluster directory */

typedef struct cluster_dir {
    char dir[CFG_PATH_MAX - 64]; /* absolute, so started nodes do not depend on our cwd */
    cfg_cluster cl;              /* cl.n == 0 if cluster.json was not loaded */
    uint32_t n;                  /* nodes: from cluster.json, else counted on disk */
} cluster_dir;

static int node_file(const cluster_dir *cd, uint32_t i, const char *name, char *out, size_t cap)
{
    int len = name ? snprintf(out, cap, "%s/node%u/%s", cd->dir, i, name)
                   : snprintf(out, cap, "%s/node%u", cd->dir, i);
    return (len < 0 || (size_t)len >= cap) ? FB_EINVAL : 0;
}

/* Nodes present on disk: node0, node1, ... up to the first gap. */
static uint32_t count_node_dirs(const cluster_dir *cd)
{
    uint32_t n = 0;
    char path[NODE_PATH_MAX];
    struct stat st;
    while (n < MAX_NODES && node_file(cd, n, NULL, path, sizeof path) == 0 &&
           stat(path, &st) == 0 && S_ISDIR(st.st_mode))
        n++;
    return n;
}

/* Resolve DIR and load DIR/cluster.json.  Without need_cluster, a missing or
 * broken cluster.json is only a warning (`down` must still stop the nodes). */
static int open_cluster_dir(const char *dir, bool need_cluster, cluster_dir *cd)
{
    memset(cd, 0, sizeof *cd);
    char *real = realpath(dir, NULL);
    if (!real) {
        fprintf(stderr, "fedbft cluster: %s: %s (make one with 'fedbft cluster init')\n", dir,
                strerror(errno));
        return FB_ENOENT;
    }
    int rc = strlen(real) < sizeof cd->dir ? 0 : FB_EINVAL;
    if (rc == 0)
        snprintf(cd->dir, sizeof cd->dir, "%s", real);
    else
        fprintf(stderr, "fedbft cluster: %s: path too long\n", real);
    free(real);
    if (rc)
        return rc;
    char path[NODE_PATH_MAX], err[1024];
    snprintf(path, sizeof path, "%s/cluster.json", cd->dir);
    rc = cfg_cluster_load(path, &cd->cl, err, sizeof err);
    if (rc == 0) {
        cd->n = cd->cl.n;
        return 0;
    }
    if (need_cluster) {
        fprintf(stderr, "fedbft cluster: %s\n", err);
        return rc;
    }
    cd->n = count_node_dirs(cd);
    fprintf(stderr, "fedbft cluster: warning: %s; going by the %u node directories found\n", err,
            cd->n);
    return 0;
}

static void close_cluster_dir(cluster_dir *cd)
{
    cfg_cluster_free(&cd->cl);
}

/* ------------------------------------------------------------ processes */

/* Is pid a live (non-zombie) fedbft process running config? */
static bool proc_is_node(pid_t pid, const char *config)
{
    char path[64], buf[CMDLINE_MAX];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *fp = fopen(path, "re");
    if (!fp)
        return false;
    size_t len = fread(buf, 1, sizeof buf - 1, fp);
    fclose(fp);
    buf[len] = '\0';
    /* The state follows the last ')' (the command name may contain one). */
    const char *paren = strrchr(buf, ')');
    if (!paren || paren[1] != ' ' || paren[2] == 'Z' || paren[2] == 'X')
        return false;

    snprintf(path, sizeof path, "/proc/%d/cmdline", (int)pid);
    fp = fopen(path, "re");
    if (!fp)
        return false;
    len = fread(buf, 1, sizeof buf - 1, fp);
    fclose(fp);
    buf[len] = '\0';
    bool is_fedbft = false, has_config = false;
    for (size_t off = 0; off < len; off += strlen(buf + off) + 1) {
        if (strstr(buf + off, "fedbft"))
            is_fedbft = true;
        if (strcmp(buf + off, config) == 0)
            has_config = true;
    }
    return is_fedbft && has_config;
}

/* NODE_STALE: the pid file names no live copy of this node and none runs
 * (*pid = the pid in the file, 0 if unreadable).  NODE_UNTRACKED: the node
 * runs (*pid) but its pid file is missing or wrong (deleted by hand, or
 * overwritten): found by its command line, so it can still be stopped. */
typedef enum node_state { NODE_STOPPED, NODE_RUNNING, NODE_STALE, NODE_UNTRACKED } node_state;

static bool is_running(node_state st)
{
    return st == NODE_RUNNING || st == NODE_UNTRACKED;
}

/* The pid in a pid file: > 0, 0 if there is no file, -1 if it is garbage. */
static pid_t read_pidfile(const char *path)
{
    char buf[32];
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return errno == ENOENT ? 0 : -1;
    ssize_t len = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (len <= 0)
        return -1;
    buf[len] = '\0';
    char *end;
    long v = strtol(buf, &end, 10);
    if (v <= 0 || v > INT_MAX || (*end && *end != '\n'))
        return -1;
    return (pid_t)v;
}

/* A process running config, found by scanning /proc; 0 if none. */
static pid_t find_node_process(const char *config)
{
    DIR *d = opendir("/proc");
    if (!d)
        return 0;
    pid_t found = 0, self = getpid();
    struct dirent *e;
    while (!found && (e = readdir(d)) != NULL) {
        char *end;
        long v = strtol(e->d_name, &end, 10);
        if (*end || v <= 0 || v > INT_MAX || (pid_t)v == self)
            continue;
        if (proc_is_node((pid_t)v, config))
            found = (pid_t)v;
    }
    closedir(d);
    return found;
}

static node_state get_node_state(const cluster_dir *cd, uint32_t i, pid_t *pid)
{
    char path[NODE_PATH_MAX], cfg[NODE_PATH_MAX];
    *pid = 0;
    if (node_file(cd, i, "node.pid", path, sizeof path) ||
        node_file(cd, i, "node.json", cfg, sizeof cfg))
        return NODE_STOPPED;
    pid_t filed = read_pidfile(path);
    if (filed > 0 && proc_is_node(filed, cfg)) {
        *pid = filed;
        return NODE_RUNNING;
    }
    pid_t running = find_node_process(cfg);
    if (running > 0) {
        *pid = running;
        return NODE_UNTRACKED;
    }
    *pid = filed > 0 ? filed : 0;
    return filed == 0 ? NODE_STOPPED : NODE_STALE;
}

static void report_stale(uint32_t i, pid_t pid)
{
    if (pid > 0)
        printf("node %u: removing stale pid file (pid %d is gone or is not this node)\n", i,
               (int)pid);
    else
        printf("node %u: removing unreadable pid file\n", i);
}

static void remove_pidfile(const cluster_dir *cd, uint32_t i)
{
    char path[NODE_PATH_MAX];
    if (node_file(cd, i, "node.pid", path, sizeof path) == 0)
        unlink(path);
}

/* Write the pid file via a temporary name, so a reader never sees half. */
static int write_pidfile(const cluster_dir *cd, uint32_t i, pid_t pid)
{
    char path[NODE_PATH_MAX], tmp[NODE_PATH_MAX + 8], line[32];
    if (node_file(cd, i, "node.pid", path, sizeof path))
        return FB_EINVAL;
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int len = snprintf(line, sizeof line, "%d\n", (int)pid);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return FB_EIO;
    bool ok = write(fd, line, (size_t)len) == len;
    ok = close(fd) == 0 && ok;
    if (!ok || rename(tmp, path) != 0) {
        unlink(tmp);
        return FB_EIO;
    }
    return 0;
}

/* Print the last lines of a log file, indented, reading at most its last
 * 8 KiB (a log may be huge). */
static void print_log_tail(const char *path, int lines)
{
    char buf[8192];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "    (no log at %s)\n", path);
        return;
    }
    off_t size = lseek(fd, 0, SEEK_END);
    off_t start = size > (off_t)sizeof buf - 1 ? size - (off_t)(sizeof buf - 1) : 0;
    ssize_t len = pread(fd, buf, sizeof buf - 1, start);
    close(fd);
    if (len <= 0) {
        fprintf(stderr, "    (%s is empty)\n", path);
        return;
    }
    buf[len] = '\0';
    if (len > 0 && buf[len - 1] == '\n')
        buf[--len] = '\0';
    const char *from = buf;
    int seen = 0;
    for (ssize_t k = len - 1; k >= 0; k--)
        if (buf[k] == '\n' && ++seen == lines) {
            from = buf + k + 1;
            break;
        }
    fprintf(stderr, "    --- last lines of %s ---\n", path);
    for (const char *line = from; line && *line;) {
        const char *nl = strchr(line, '\n');
        int n = nl ? (int)(nl - line) : (int)strlen(line);
        fprintf(stderr, "    %.*s\n", n, line);
        line = nl ? nl + 1 : NULL;
    }
}

/* Does host:port accept a TCP connection within PROBE_MS? */
static bool probe_port(const char *host, uint16_t port)
{
    char service[8];
    snprintf(service, sizeof service, "%u", port);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV}, *res;
    if (getaddrinfo(host, service, &hints, &res) != 0)
        return false;
    bool ok = false;
    for (struct addrinfo *a = res; a && !ok; a = a->ai_next) {
        int fd =
            socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0)
            continue;
        if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
            ok = true;
        } else if (errno == EINPROGRESS) {
            struct pollfd pfd = {.fd = fd, .events = POLLOUT};
            int soerr = 0;
            socklen_t sl = sizeof soerr;
            ok = poll(&pfd, 1, PROBE_MS) == 1 &&
                 getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) == 0 && soerr == 0;
        }
        close(fd);
    }
    freeaddrinfo(res);
    return ok;
}

/* Start node i in the background: its own session (so a ^C at our terminal
 * does not reach it), output appended to its log, pid in its pid file.
 * resync: run it with --resync (wipe its state, rebuild it from its peers). */
static int start_node(const cluster_dir *cd, uint32_t i, const char *binary, bool resync,
                      pid_t *out)
{
    char ndir[NODE_PATH_MAX], cfg[NODE_PATH_MAX], logp[NODE_PATH_MAX];
    if (node_file(cd, i, NULL, ndir, sizeof ndir) ||
        node_file(cd, i, "node.json", cfg, sizeof cfg) ||
        node_file(cd, i, "node.log", logp, sizeof logp))
        return FB_EINVAL;
    if (access(cfg, R_OK) != 0) {
        fprintf(stderr, "node %u: %s: %s (run 'fedbft cluster init' first)\n", i, cfg,
                strerror(errno));
        return FB_ENOENT;
    }
    int logfd = open(logp, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    int nullfd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (logfd < 0 || nullfd < 0) {
        fprintf(stderr, "node %u: cannot open %s: %s\n", i, logp, strerror(errno));
        if (logfd >= 0)
            close(logfd);
        if (nullfd >= 0)
            close(nullfd);
        return FB_EIO;
    }
    time_t t = time(NULL);
    char when[64];
    strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", localtime(&t));
    dprintf(logfd, "=== fedbft cluster: starting node %u at %s: %s run --config %s%s\n", i, when,
            binary, cfg, resync ? " --resync" : "");
    fflush(stdout); /* or the child would inherit (and never print) our buffer */
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        setsid();
        if (dup2(nullfd, 0) < 0 || dup2(logfd, 1) < 0 || dup2(logfd, 2) < 0 || chdir(ndir) != 0)
            _exit(126);
        char *const argv[] = {
            (char *)binary, "run", "--config", cfg, resync ? "--resync" : NULL, NULL};
        execv(binary, argv);
        dprintf(2, "fedbft cluster: cannot run %s: %s\n", binary, strerror(errno));
        _exit(127);
    }
    int saved = errno;
    close(logfd);
    close(nullfd);
    if (pid < 0) {
        fprintf(stderr, "node %u: fork: %s\n", i, strerror(saved));
        return FB_EIO;
    }
    if (write_pidfile(cd, i, pid) != 0)
        fprintf(stderr, "node %u: warning: cannot write its pid file (pid %d)\n", i, (int)pid);
    *out = pid;
    return 0;
}

/* ------------------------------------------------------------ waiting for readiness */

typedef struct pending {
    uint32_t id;
    pid_t pid;
    bool ours;  /* our child: waitpid() tells us if it died */
    int status; /* 0 waiting, 1 ready, -1 failed */
} pending;

/* Has p's process gone?  For our children, reap and describe the exit. */
static bool pending_died(const cluster_dir *cd, const pending *p, char *why, size_t cap)
{
    if (p->ours) {
        int st;
        if (waitpid(p->pid, &st, WNOHANG) != p->pid)
            return false;
        if (WIFEXITED(st))
            snprintf(why, cap, "exited with status %d", WEXITSTATUS(st));
        else
            snprintf(why, cap, "killed by signal %d", WIFSIGNALED(st) ? WTERMSIG(st) : 0);
        return true;
    }
    char cfg[NODE_PATH_MAX];
    node_file(cd, p->id, "node.json", cfg, sizeof cfg);
    if (proc_is_node(p->pid, cfg))
        return false;
    snprintf(why, cap, "is no longer running");
    return true;
}

static void report_failure(const cluster_dir *cd, pending *p, const char *why)
{
    char logp[NODE_PATH_MAX];
    node_file(cd, p->id, "node.log", logp, sizeof logp);
    fprintf(stderr, "node %u: FAILED: pid %d %s\n", p->id, (int)p->pid, why);
    print_log_tail(logp, LOG_TAIL_LINES);
    p->status = -1;
}

/* One round over the waiting nodes; returns how many are still waiting. */
static size_t check_pending(const cluster_dir *cd, pending *ps, size_t np, int64_t t0)
{
    size_t waiting = 0;
    for (size_t k = 0; k < np; k++) {
        pending *p = &ps[k];
        if (p->status != 0)
            continue;
        const cfg_replica *r = &cd->cl.replicas[p->id];
        char why[160];
        if (pending_died(cd, p, why, sizeof why)) {
            remove_pidfile(cd, p->id);
            report_failure(cd, p, why);
        } else if (probe_port(r->host, r->client_port)) {
            printf("node %u: up (pid %d, clients on %s:%u, %.1f s)\n", p->id, (int)p->pid, r->host,
                   r->client_port, (double)(now_ms() - t0) / 1000);
            p->status = 1;
        } else {
            waiting++;
        }
    }
    return waiting;
}

/* Wait until every pending node accepts client connections, dies, or the
 * deadline passes.  Returns the number that did not come up. */
static size_t wait_ready(const cluster_dir *cd, pending *ps, size_t np, uint32_t timeout_s)
{
    int64_t t0 = now_ms(), deadline = t0 + (int64_t)timeout_s * 1000;
    size_t waiting;
    while ((waiting = check_pending(cd, ps, np, t0)) > 0 && now_ms() < deadline)
        pause_ms(POLL_MS);
    for (size_t k = 0; k < np; k++)
        if (ps[k].status == 0) {
            char why[160];
            snprintf(why, sizeof why,
                     "runs but its client port is not accepting after %u s (left running; "
                     "'fedbft cluster down' stops it)",
                     timeout_s);
            report_failure(cd, &ps[k], why);
        }
    size_t failed = 0;
    for (size_t k = 0; k < np; k++)
        failed += ps[k].status != 1;
    return failed;
}

/* ------------------------------------------------------------ stopping */

/* Wait until none of pids[] is node ids[] any more; returns how many still are. */
static size_t wait_gone(const cluster_dir *cd, const uint32_t *ids, const pid_t *pids, size_t k,
                        int timeout_ms)
{
    int64_t deadline = now_ms() + timeout_ms;
    for (;;) {
        size_t alive = 0;
        for (size_t j = 0; j < k; j++) {
            char cfg[NODE_PATH_MAX];
            node_file(cd, ids[j], "node.json", cfg, sizeof cfg);
            /* A child of ours (restart) would linger as a zombie: reap it. */
            waitpid(pids[j], NULL, WNOHANG);
            alive += proc_is_node(pids[j], cfg);
        }
        if (alive == 0 || now_ms() >= deadline)
            return alive;
        pause_ms(POLL_MS);
    }
}

/* SIGTERM, wait up to STOP_GRACE_MS, then SIGKILL what is left. */
static int stop_nodes(const cluster_dir *cd, const uint32_t *ids, const pid_t *pids, size_t k)
{
    for (size_t j = 0; j < k; j++) {
        printf("node %u: stopping (pid %d)\n", ids[j], (int)pids[j]);
        kill(pids[j], SIGTERM);
    }
    fflush(stdout);
    int rc = 0;
    if (wait_gone(cd, ids, pids, k, STOP_GRACE_MS) > 0) {
        for (size_t j = 0; j < k; j++) {
            char cfg[NODE_PATH_MAX];
            node_file(cd, ids[j], "node.json", cfg, sizeof cfg);
            if (proc_is_node(pids[j], cfg)) {
                fprintf(stderr, "node %u: still running %d s after SIGTERM; sending SIGKILL\n",
                        ids[j], STOP_GRACE_MS / 1000);
                kill(pids[j], SIGKILL);
            }
        }
        if (wait_gone(cd, ids, pids, k, KILL_WAIT_MS) > 0) {
            fprintf(stderr, "fedbft cluster: some nodes survived SIGKILL (see 'fedbft cluster "
                            "status')\n");
            rc = FB_EBUSY;
        }
    }
    for (size_t j = 0; j < k; j++) {
        char cfg[NODE_PATH_MAX];
        node_file(cd, ids[j], "node.json", cfg, sizeof cfg);
        if (!proc_is_node(pids[j], cfg)) {
            remove_pidfile(cd, ids[j]);
            printf("node %u: stopped\n", ids[j]);
        }
    }
    return rc;
}

/* ------------------------------------------------------------ option parsing */

typedef struct cluster_opts {
    const char *dir, *binary, *host;
    bool host_given;                /* --host was passed (it conflicts with --hosts) */
    const char *hosts;              /* init --hosts: the list as given */
    const char *listen;             /* init --listen: node.json's "listen"; NULL: none */
    char *hosts_buf;                /* init: a copy of hosts, split in place (owned) */
    const char *host_of[MAX_NODES]; /* init: replica i's host with --hosts */
    uint32_t nhosts;                /* 0 without --hosts */
    const char *model; /* init: NULL synthesizes the small model; "none": no inference */
    char model_path[CFG_PATH_MAX]; /* init: what node.json's inference.model gets */
    uint32_t nodes, clients, base_port, timeout_s;
    int32_t worker_threads; /* init --worker-threads; -1: by where the nodes run */
    cfg_durability durability;
    bool force;
    bool resync;       /* restart: start the node with --resync */
    const char *index; /* kill / restart: the node id argument */
} cluster_opts;

enum {
    OPT_NODES = 256,
    OPT_DIR,
    OPT_BASE_PORT,
    OPT_CLIENTS,
    OPT_HOST,
    OPT_DURABILITY,
    OPT_FORCE,
    OPT_BINARY,
    OPT_TIMEOUT,
    OPT_MODEL,
    OPT_RESYNC,
    OPT_HOSTS,
    OPT_LISTEN,
    OPT_WORKER_THREADS
};

/* A usage error: the reason, and where the full help is (it is long). */
static int bad_usage(const char *sub, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int bad_usage(const char *sub, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stderr, "fedbft cluster %s: %s\n(run 'fedbft cluster --help' for usage)\n", sub, msg);
    return 2;
}

/* Apply one parsed option to o; non-zero (2) on a bad value. */
static int take_option(const char *sub, int c, cluster_opts *o)
{
    switch (c) {
    case OPT_DIR:
        o->dir = optarg;
        return 0;
    case OPT_BINARY:
        o->binary = optarg;
        return 0;
    case OPT_HOST:
        o->host = optarg;
        o->host_given = true;
        return 0;
    case OPT_HOSTS:
        o->hosts = optarg;
        return 0;
    case OPT_LISTEN:
        o->listen = optarg;
        return 0;
    case OPT_FORCE:
        o->force = true;
        return 0;
    case OPT_RESYNC:
        o->resync = true;
        return 0;
    case OPT_MODEL:
        o->model = optarg;
        return 0;
    case OPT_NODES:
        return parse_u32(optarg, 4, MAX_NODES, &o->nodes)
                   ? bad_usage(sub, "--nodes %s: must be 4..%d (PBFT needs at least 4)", optarg,
                               MAX_NODES)
                   : 0;
    case OPT_CLIENTS:
        return parse_u32(optarg, 0, MAX_CLIENTS, &o->clients)
                   ? bad_usage(sub, "--clients %s: must be 0..%d", optarg, MAX_CLIENTS)
                   : 0;
    case OPT_BASE_PORT:
        return parse_u32(optarg, 1, 65535, &o->base_port)
                   ? bad_usage(sub, "--base-port %s: must be 1..65535", optarg)
                   : 0;
    case OPT_WORKER_THREADS: {
        uint32_t t;
        if (parse_u32(optarg, 0, 1024, &t))
            return bad_usage(sub, "--worker-threads %s: must be 0..1024", optarg);
        o->worker_threads = (int32_t)t;
        return 0;
    }
    case OPT_TIMEOUT:
        return parse_u32(optarg, 1, 3600, &o->timeout_s)
                   ? bad_usage(sub, "--timeout %s: must be 1..3600 seconds", optarg)
                   : 0;
    case OPT_DURABILITY:
        if (strcmp(optarg, "fsync") == 0)
            o->durability = CFG_DURABILITY_FSYNC;
        else if (strcmp(optarg, "os") == 0)
            o->durability = CFG_DURABILITY_OS;
        else
            return bad_usage(sub, "--durability %s: must be fsync or os", optarg);
        return 0;
    default:
        return bad_usage(sub, "unknown option");
    }
}

/* Parse a subcommand's options.  `which` lists the long options it takes;
 * `npos` is how many positional arguments it wants (0 or 1). */
static int parse_opts(int argc, char **argv, const struct option *which, int npos, cluster_opts *o)
{
    const char *sub = argv[0];
    *o = (cluster_opts){.host = "127.0.0.1",
                        .clients = 8,
                        .base_port = 7000,
                        .timeout_s = UP_TIMEOUT_S,
                        .worker_threads = -1,
                        .durability = CFG_DURABILITY_FSYNC};
    int c, rc;
    optind = 1;
    opterr = 0; /* we print our own message */
    while ((c = getopt_long(argc, argv, "", which, NULL)) != -1) {
        if (c == '?') {
            const char *arg = optind > 1 ? argv[optind - 1] : NULL;
            return bad_usage(sub, "%s: %s", arg ? arg : "?",
                             optopt ? "needs a value" : "unknown option");
        }
        if ((rc = take_option(sub, c, o)) != 0)
            return rc;
    }
    if (argc - optind != npos)
        return npos ? bad_usage(sub, "expects exactly one node id, e.g. '%s 2 --dir DIR'", sub)
                    : bad_usage(sub, "unexpected argument '%s'", argv[optind]);
    if (npos)
        o->index = argv[optind];
    if (!o->dir)
        return bad_usage(sub, "--dir DIR is required");
    return 0;
}

/* ------------------------------------------------------------ init */

static int make_dirs(const char *path)
{
    char buf[NODE_PATH_MAX];
    if (strlen(path) >= sizeof buf) {
        errno = ENAMETOOLONG;
        return -1;
    }
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1; *p; p++)
        if (*p == '/') {
            *p = '\0';
            if (mkdir(buf, 0755) != 0 && errno != EEXIST)
                return -1;
            *p = '/';
        }
    return (mkdir(buf, 0755) != 0 && errno != EEXIST) ? -1 : 0;
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path) == 0 || errno == ENOENT ? 0 : -1;
}

/* --force makes a new cluster: old state under DIR/node<i>/data belongs to
 * the old one (other keys, other history) and must not be mixed in. */
static int wipe_data_dir(const cluster_dir *cd, uint32_t i)
{
    char path[NODE_PATH_MAX];
    struct stat st;
    if (node_file(cd, i, "data", path, sizeof path) || lstat(path, &st) != 0)
        return 0;
    if (nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0) {
        fprintf(stderr, "fedbft cluster init: cannot remove old state %s: %s\n", path,
                strerror(errno));
        return FB_EIO;
    }
    printf("removed the old cluster's state in %s\n", path);
    return 0;
}

/* Refuse --force while nodes of the old cluster still run. */
static int check_none_running(const cluster_dir *cd)
{
    uint32_t n = count_node_dirs(cd);
    for (uint32_t i = 0; i < n; i++) {
        pid_t pid;
        if (is_running(get_node_state(cd, i, &pid))) {
            fprintf(stderr,
                    "fedbft cluster init: node %u of the existing cluster is running (pid %d); "
                    "stop it first with 'fedbft cluster down --dir %s'\n",
                    i, (int)pid, cd->dir);
            return FB_EBUSY;
        }
    }
    return 0;
}

static int make_identity(const char *dir, bool force, uint8_t pk[FB_PK_LEN])
{
    fb_identity id;
    char err[1024];
    int rc = fb_key_generate(&id);
    if (rc == 0)
        rc = fb_key_save(&id, dir, force, err, sizeof err);
    else
        snprintf(err, sizeof err, "cannot generate a key: %s", fb_strerror(rc));
    if (rc == 0)
        memcpy(pk, id.pk, FB_PK_LEN);
    else
        fprintf(stderr, "fedbft cluster init: %s\n", err);
    fb_key_wipe(&id);
    return rc;
}

static int init_node(const cluster_dir *cd, const cluster_opts *o, uint32_t i, cfg_replica *r)
{
    char ndir[NODE_PATH_MAX], cfgp[NODE_PATH_MAX], err[1024];
    if (node_file(cd, i, NULL, ndir, sizeof ndir) ||
        node_file(cd, i, "node.json", cfgp, sizeof cfgp))
        return FB_EINVAL;
    /* With --hosts every replica has its own host and the same ports. */
    uint32_t slot = o->nhosts ? 0 : i;
    r->id = i;
    snprintf(r->host, sizeof r->host, "%s", o->nhosts ? o->host_of[i] : o->host);
    r->port = (uint16_t)(o->base_port + slot);
    r->client_port = (uint16_t)(o->base_port + 100 + slot);
    int rc = make_identity(ndir, o->force, r->pk);
    if (rc == 0 && o->force)
        rc = wipe_data_dir(cd, i);
    if (rc)
        return rc;
    cfg_node *n = malloc(sizeof *n);
    if (!n)
        return FB_ENOMEM;
    cfg_node_defaults(n);
    n->id = i;
    n->durability = o->durability;
    n->fault_injection = true; /* init makes test clusters */
    n->worker_threads = (uint32_t)o->worker_threads;
    n->http_port = (uint16_t)(o->base_port + HTTP_PORT_OFFSET + slot);
    if (o->listen)
        snprintf(n->listen, sizeof n->listen, "%s", o->listen);
    snprintf(n->inference.model, sizeof n->inference.model, "%s", o->model_path);
    snprintf(n->cluster_path, sizeof n->cluster_path, "../cluster.json");
    snprintf(n->key_path, sizeof n->key_path, "%s", FB_KEY_SECRET_FILE);
    snprintf(n->data_dir, sizeof n->data_dir, "data");
    rc = cfg_node_write(cfgp, n, err, sizeof err);
    free(n);
    if (rc)
        fprintf(stderr, "fedbft cluster init: %s\n", err);
    return rc;
}

static int init_client(const cluster_dir *cd, const cluster_opts *o, uint32_t j, cfg_client *c)
{
    char cdir[NODE_PATH_MAX];
    int len = snprintf(cdir, sizeof cdir, "%s/clients/client%u", cd->dir, j);
    if (len < 0 || (size_t)len >= sizeof cdir)
        return FB_EINVAL;
    c->id = FIRST_CLIENT_ID + j;
    snprintf(c->name, sizeof c->name, "client%u", j);
    return make_identity(cdir, o->force, c->pk);
}

static void print_init_summary(const cluster_dir *cd, const cfg_cluster *cl)
{
    printf("initialised a %u-replica cluster (tolerates f = %u faulty) in %s\n\n", cl->n, cl->f,
           cd->dir);
    printf("  %-7s %-16s %-6s %-11s %s\n", "replica", "host", "port", "client_port", "public key");
    for (uint32_t i = 0; i < cl->n; i++) {
        char hex[FB_PK_HEX_LEN + 1];
        fb_pubkey_format(cl->replicas[i].pk, hex);
        printf("  %-7u %-16s %-6u %-11u %.16s...\n", i, cl->replicas[i].host, cl->replicas[i].port,
               cl->replicas[i].client_port, hex);
    }
    if (cl->nclients)
        printf("\n  %u clients, ids %u..%u, keys in %s/clients/client<j>/node.key\n", cl->nclients,
               FIRST_CLIENT_ID, FIRST_CLIENT_ID + cl->nclients - 1, cd->dir);
    printf("\nwrote %s/cluster.json and node<i>/{node.json,node.key,node.pub}\n"
           "next: fedbft cluster up --dir %s\n",
           cd->dir, cd->dir);
}

/* The model every node serves: --model FILE (checked to load), --model none,
 * or by default the small preset synthesized into DIR/model.gguf (kept when
 * it is already there, so re-running init with --force is quick). */
static int model_digest_of(const char *path, uint8_t out[16])
{
    char err[1024];
    llm_model *m = NULL;
    int rc = llm_model_load(path, &m, err, sizeof err);
    if (rc == 0)
        memcpy(out, llm_model_digest(m), 16);
    else
        fprintf(stderr, "fedbft cluster init: %s\n", err);
    llm_model_free(m);
    return rc;
}

static int prepare_model(const cluster_dir *cd, cluster_opts *o, uint8_t digest[16])
{
    char err[1024];
    if (o->model && strcmp(o->model, "none") == 0) {
        o->model_path[0] = '\0';
        return 0;
    }
    if (o->model) {
        char *real = realpath(o->model, NULL);
        llm_model *m = NULL;
        int rc = real ? llm_model_load(real, &m, err, sizeof err) : FB_ENOENT;
        if (rc == 0 && strlen(real) < sizeof o->model_path) {
            snprintf(o->model_path, sizeof o->model_path, "%s", real);
            memcpy(digest, llm_model_digest(m), 16);
        } else if (rc == 0)
            rc = FB_ETOOBIG;
        if (rc)
            fprintf(stderr, "fedbft cluster init: --model %s: %s\n", o->model,
                    real ? (rc == FB_ETOOBIG ? "path too long" : err) : strerror(errno));
        llm_model_free(m);
        free(real);
        return rc;
    }
    char path[NODE_PATH_MAX];
    snprintf(path, sizeof path, "%s/model.gguf", cd->dir);
    if (access(path, R_OK) != 0) {
        uint64_t size = 0;
        int rc = synth_write(synth_preset("small"), synth_preset("small")->type, SYNTH_DEFAULT_SEED,
                             path, 0, &size, err, sizeof err);
        if (rc) {
            fprintf(stderr, "fedbft cluster init: synthesizing the model: %s\n", err);
            return rc;
        }
        printf("synthesized %s (%.1f MB, the small preset) for the nodes to serve\n", path,
               (double)size / 1e6);
    }
    snprintf(o->model_path, sizeof o->model_path, "../model.gguf");
    return model_digest_of(path, digest);
}

/* A numeric IPv4 or IPv6 address, as the listeners parse one (inet_pton:
 * no "127.1" shorthand; an IPv6 zone "%eth0" is allowed).  The HTTP server
 * binds only such an address, never a name. */
static bool is_ip_address(const char *host)
{
    unsigned char buf[sizeof(struct in6_addr)];
    char v6[INET6_ADDRSTRLEN];
    if (inet_pton(AF_INET, host, buf) == 1)
        return true;
    size_t len = strcspn(host, "%");
    if (len >= sizeof v6)
        return false;
    memcpy(v6, host, len);
    v6[len] = '\0';
    return inet_pton(AF_INET6, v6, buf) == 1;
}

/* Split --hosts into o->host_of[], checking each item as cluster.json
 * checks a host, and that they are distinct: every replica uses the same
 * ports, so two on one host would clash. */
static int parse_hosts(cluster_opts *o)
{
    if (!(o->hosts_buf = strdup(o->hosts))) {
        fprintf(stderr, "fedbft cluster init: out of memory\n");
        return 1;
    }
    uint32_t k = 0;
    for (char *item = o->hosts_buf, *comma;; item = comma + 1) {
        comma = strchr(item, ',');
        if (comma)
            *comma = '\0';
        if (k < MAX_NODES)
            o->host_of[k] = item;
        k++;
        if (!comma)
            break;
    }
    if (k != o->nodes)
        return bad_usage("init",
                         "--hosts: %u host(s) listed for --nodes %u; give exactly one per "
                         "replica, comma-separated",
                         k, o->nodes);
    for (uint32_t i = 0; i < k; i++) {
        char err[512];
        if (!*o->host_of[i])
            return bad_usage("init", "--hosts: item %u (replica %u) is empty", i + 1, i);
        if (cfg_check_host(o->host_of[i], err, sizeof err) != 0)
            return bad_usage("init", "--hosts: item %u (replica %u): %s", i + 1, i, err);
        for (uint32_t j = 0; j < i; j++)
            if (strcmp(o->host_of[i], o->host_of[j]) == 0)
                return bad_usage(
                    "init",
                    "--hosts: %s is listed twice (replicas %u and %u); with --hosts every "
                    "replica uses the same ports, so each needs its own host (replicas sharing "
                    "a host need distinct ports: leave out --hosts)",
                    o->host_of[i], j, i);
    }
    o->nhosts = k;
    return 0;
}

/* Check the hosts, the listen address and the port range before anything
 * is written; 0 or 2 (a usage error, reported). */
static int check_init_addresses(cluster_opts *o)
{
    char err[512];
    if (o->hosts && o->host_given)
        return bad_usage("init", "--host and --hosts: give one (--host H puts every replica on "
                                 "H, --hosts one host per replica)");
    if (o->hosts) {
        int rc = parse_hosts(o);
        if (rc)
            return rc;
    } else if (cfg_check_host(o->host, err, sizeof err) != 0) {
        return bad_usage("init", "--host: %s", err);
    }
    if (o->listen && (cfg_check_host(o->listen, err, sizeof err) != 0 || !is_ip_address(o->listen)))
        return bad_usage("init",
                         "--listen '%s': must be an IP address to bind, e.g. 0.0.0.0 (every "
                         "IPv4 interface), :: (every interface) or 10.0.0.5",
                         o->listen);
    /* Without --listen a node binds its own host, and the HTTP server
     * binds only an address. */
    for (uint32_t i = 0; !o->listen && i < (o->nhosts ? o->nhosts : 1); i++) {
        const char *h = o->nhosts ? o->host_of[i] : o->host;
        if (!is_ip_address(h))
            return bad_usage("init",
                             "%s %s: a name, not an IP address; a node binds its listeners to "
                             "its own host unless --listen is given: add --listen 0.0.0.0 "
                             "(or ::)",
                             o->nhosts ? "--hosts" : "--host", h);
    }
    uint32_t last = o->nhosts ? 0 : o->nodes - 1;
    if (o->base_port + HTTP_PORT_OFFSET + last > 65535)
        return bad_usage("init",
                         "--base-port %u: too high for %u nodes (HTTP ports P+200%s must "
                         "be <= 65535)",
                         o->base_port, o->nodes, o->nhosts ? "" : "+i");
    return 0;
}

/* Make DIR's keys and configs; cluster.json is written last: its presence
 * means init finished. */
static int write_cluster(cluster_opts *o)
{
    int rc;
    if (make_dirs(o->dir) != 0) {
        fprintf(stderr, "fedbft cluster init: cannot create %s: %s\n", o->dir, strerror(errno));
        return 1;
    }
    char cjson[NODE_PATH_MAX];
    snprintf(cjson, sizeof cjson, "%s/cluster.json", o->dir);
    if (!o->force && access(cjson, F_OK) == 0) {
        fprintf(stderr,
                "fedbft cluster init: %s already exists; refusing to overwrite a cluster "
                "(pass --force to replace it, keys and node data included)\n",
                cjson);
        return 1;
    }
    cluster_dir cd;
    memset(&cd, 0, sizeof cd);
    char *real = realpath(o->dir, NULL);
    if (!real || strlen(real) >= sizeof cd.dir) {
        fprintf(stderr, "fedbft cluster init: %s: %s\n", o->dir,
                real ? "path too long" : strerror(errno));
        free(real);
        return 1;
    }
    snprintf(cd.dir, sizeof cd.dir, "%s", real);
    free(real);
    if (o->force && check_none_running(&cd) != 0)
        return 1;

    uint8_t digest[16];
    if (prepare_model(&cd, o, digest) != 0)
        return 1;
    cfg_cluster cl = {.n = o->nodes, .f = (o->nodes - 1) / 3, .nclients = o->clients};
    if (o->model_path[0]) { /* pin it: every replica must serve this model */
        cl.has_model_digest = true;
        memcpy(cl.model_digest, digest, sizeof digest);
    }
    cl.replicas = calloc(o->nodes, sizeof *cl.replicas);
    cl.clients = calloc(o->clients ? o->clients : 1, sizeof *cl.clients);
    rc = (cl.replicas && cl.clients) ? 0 : FB_ENOMEM;
    for (uint32_t i = 0; rc == 0 && i < o->nodes; i++)
        rc = init_node(&cd, o, i, &cl.replicas[i]);
    for (uint32_t j = 0; rc == 0 && j < o->clients; j++)
        rc = init_client(&cd, o, j, &cl.clients[j]);
    if (rc == 0) {
        char path[NODE_PATH_MAX], err[1024];
        snprintf(path, sizeof path, "%s/cluster.json", cd.dir);
        rc = cfg_cluster_write(path, &cl, err, sizeof err);
        if (rc)
            fprintf(stderr, "fedbft cluster init: %s\n", err);
    }
    if (rc == 0)
        print_init_summary(&cd, &cl);
    else if (rc == FB_ENOMEM)
        fprintf(stderr, "fedbft cluster init: out of memory\n");
    cfg_cluster_free(&cl);
    return rc ? 1 : 0;
}

static int cluster_init(int argc, char **argv)
{
    static const struct option opts[] = {
        {"nodes", required_argument, NULL, OPT_NODES},
        {"dir", required_argument, NULL, OPT_DIR},
        {"base-port", required_argument, NULL, OPT_BASE_PORT},
        {"clients", required_argument, NULL, OPT_CLIENTS},
        {"host", required_argument, NULL, OPT_HOST},
        {"hosts", required_argument, NULL, OPT_HOSTS},
        {"listen", required_argument, NULL, OPT_LISTEN},
        {"durability", required_argument, NULL, OPT_DURABILITY},
        {"force", no_argument, NULL, OPT_FORCE},
        {"model", required_argument, NULL, OPT_MODEL},
        {"worker-threads", required_argument, NULL, OPT_WORKER_THREADS},
        {NULL, 0, NULL, 0},
    };
    cluster_opts o;
    int rc = parse_opts(argc, argv, opts, 0, &o);
    if (rc)
        return rc;
    if (!o.nodes)
        return bad_usage("init", "--nodes N is required");
    rc = check_init_addresses(&o); /* sets o.nhosts */
    if (rc == 0 && o.worker_threads < 0) {
        /* Nodes on one host share its CPUs: a pool per node sized to every
         * CPU would put nodes x CPUs verifier threads on them, and hand-offs
         * would wait in the run queue (measured: 4 nodes on 2 CPUs, 1 thread
         * each against 2: 1-client p50 1.56-1.68 ms against 1.84, 64 clients
         * 3.6k ops/s against 3.3-3.5k).  With --hosts each node has its own
         * machine, container or pod and sizes its pool itself (0). */
        unsigned share = fb_usable_cpus() / o.nodes;
        o.worker_threads = o.nhosts ? 0 : share ? (int32_t)share : 1;
    }
    if (rc == 0)
        rc = write_cluster(&o);
    free(o.hosts_buf);
    return rc;
}

/* ------------------------------------------------------------ up / restart */

static int resolve_binary(const char *given, char *out, size_t cap)
{
    if (given) {
        if (access(given, X_OK) != 0) {
            fprintf(stderr, "fedbft cluster: --binary %s: %s\n", given, strerror(errno));
            return FB_ENOENT;
        }
        char *real = realpath(given, NULL);
        snprintf(out, cap, "%s", real ? real : given);
        free(real);
        return 0;
    }
    ssize_t len = readlink("/proc/self/exe", out, cap - 1);
    if (len <= 0 || (size_t)len >= cap - 1) {
        fprintf(stderr, "fedbft cluster: cannot find this binary (/proc/self/exe); pass "
                        "--binary PATH\n");
        return FB_EIO;
    }
    out[len] = '\0';
    return 0;
}

/* Start node i unless it runs; add it to ps for wait_ready either way. */
static int bring_up(const cluster_dir *cd, uint32_t i, const char *binary, bool resync, pending *p)
{
    pid_t pid;
    node_state st = get_node_state(cd, i, &pid);
    *p = (pending){.id = i, .pid = pid};
    if (st == NODE_UNTRACKED) { /* repair it, so the next commands find the node quickly */
        printf("node %u: already running (pid %d; rewriting its lost pid file)\n", i, (int)pid);
        write_pidfile(cd, i, pid);
        return 0;
    }
    if (st == NODE_RUNNING) {
        printf("node %u: already running (pid %d)\n", i, (int)pid);
        return 0;
    }
    if (st == NODE_STALE) {
        report_stale(i, pid);
        remove_pidfile(cd, i);
    }
    /* Something else on the client port would make the node look ready. */
    const cfg_replica *r = &cd->cl.replicas[i];
    if (probe_port(r->host, r->client_port)) {
        fprintf(stderr,
                "node %u: FAILED: %s:%u already accepts connections, but not from this node; "
                "stop whatever listens there or choose other ports (init --base-port)\n",
                i, r->host, r->client_port);
        p->status = -1;
        return FB_EBUSY;
    }
    int rc = start_node(cd, i, binary, resync, &p->pid);
    if (rc) {
        p->status = -1;
        return rc;
    }
    p->ours = true;
    printf("node %u: started (pid %d)\n", i, (int)p->pid);
    return 0;
}

static int up_nodes(const cluster_dir *cd, const uint32_t *ids, size_t k, const cluster_opts *o)
{
    char binary[PATH_MAX];
    if (resolve_binary(o->binary, binary, sizeof binary) != 0)
        return 1;
    pending *ps = calloc(k, sizeof *ps);
    if (!ps)
        return 1;
    for (size_t j = 0; j < k; j++)
        bring_up(cd, ids[j], binary, o->resync, &ps[j]);
    fflush(stdout);
    size_t failed = wait_ready(cd, ps, k, o->timeout_s);
    free(ps);
    if (failed) {
        fprintf(stderr, "fedbft cluster: %zu of %zu node(s) did not come up\n", failed, k);
        return 1;
    }
    printf("%zu node(s) up\n", k);
    return 0;
}

static int cluster_up(int argc, char **argv)
{
    static const struct option opts[] = {
        {"dir", required_argument, NULL, OPT_DIR},
        {"binary", required_argument, NULL, OPT_BINARY},
        {"timeout", required_argument, NULL, OPT_TIMEOUT},
        {NULL, 0, NULL, 0},
    };
    cluster_opts o;
    int rc = parse_opts(argc, argv, opts, 0, &o);
    if (rc)
        return rc;
    cluster_dir cd;
    if (open_cluster_dir(o.dir, true, &cd) != 0)
        return 1;
    uint32_t *ids = calloc(cd.n, sizeof *ids);
    for (uint32_t i = 0; ids && i < cd.n; i++)
        ids[i] = i;
    rc = ids ? up_nodes(&cd, ids, cd.n, &o) : 1;
    free(ids);
    close_cluster_dir(&cd);
    return rc;
}

/* ------------------------------------------------------------ down / kill */

static int cluster_down(int argc, char **argv)
{
    static const struct option opts[] = {{"dir", required_argument, NULL, OPT_DIR},
                                         {NULL, 0, NULL, 0}};
    cluster_opts o;
    int rc = parse_opts(argc, argv, opts, 0, &o);
    if (rc)
        return rc;
    cluster_dir cd;
    if (open_cluster_dir(o.dir, false, &cd) != 0)
        return 1;
    uint32_t *ids = calloc(cd.n ? cd.n : 1, sizeof *ids);
    pid_t *pids = calloc(cd.n ? cd.n : 1, sizeof *pids);
    size_t k = 0;
    for (uint32_t i = 0; ids && pids && i < cd.n; i++) {
        pid_t pid;
        node_state st = get_node_state(&cd, i, &pid);
        if (is_running(st)) {
            ids[k] = i;
            pids[k++] = pid;
        } else {
            if (st == NODE_STALE) {
                report_stale(i, pid);
                remove_pidfile(&cd, i);
            }
            printf("node %u: not running\n", i);
        }
    }
    rc = (ids && pids) ? stop_nodes(&cd, ids, pids, k) : FB_ENOMEM;
    free(ids);
    free(pids);
    close_cluster_dir(&cd);
    return rc ? 1 : 0;
}

static int parse_index(const cluster_dir *cd, const char *sub, const char *arg, uint32_t *out)
{
    if (cd->n == 0 || parse_u32(arg, 0, cd->n - 1, out) != 0) {
        fprintf(stderr, "fedbft cluster %s: '%s' is not a node of %s (nodes 0..%d)\n", sub, arg,
                cd->dir, (int)cd->n - 1);
        return 2;
    }
    return 0;
}

static int cluster_kill(int argc, char **argv)
{
    static const struct option opts[] = {{"dir", required_argument, NULL, OPT_DIR},
                                         {NULL, 0, NULL, 0}};
    cluster_opts o;
    uint32_t i;
    int rc = parse_opts(argc, argv, opts, 1, &o);
    if (rc)
        return rc;
    cluster_dir cd;
    if (open_cluster_dir(o.dir, false, &cd) != 0)
        return 1;
    if ((rc = parse_index(&cd, "kill", o.index, &i)) != 0) {
        close_cluster_dir(&cd);
        return rc;
    }
    pid_t pid;
    node_state st = get_node_state(&cd, i, &pid);
    if (!is_running(st)) {
        fprintf(stderr, "fedbft cluster kill: node %u is not running\n", i);
        if (st == NODE_STALE)
            remove_pidfile(&cd, i);
        close_cluster_dir(&cd);
        return 1;
    }
    kill(pid, SIGKILL);
    rc = wait_gone(&cd, &i, &pid, 1, KILL_WAIT_MS) ? 1 : 0;
    if (rc == 0) {
        remove_pidfile(&cd, i);
        printf("node %u: killed (pid %d, SIGKILL)\n", i, (int)pid);
    } else {
        fprintf(stderr, "fedbft cluster kill: node %u (pid %d) survived SIGKILL\n", i, (int)pid);
    }
    close_cluster_dir(&cd);
    return rc;
}

static int cluster_restart(int argc, char **argv)
{
    static const struct option opts[] = {
        {"dir", required_argument, NULL, OPT_DIR},
        {"binary", required_argument, NULL, OPT_BINARY},
        {"timeout", required_argument, NULL, OPT_TIMEOUT},
        {"resync", no_argument, NULL, OPT_RESYNC},
        {NULL, 0, NULL, 0},
    };
    cluster_opts o;
    uint32_t i;
    int rc = parse_opts(argc, argv, opts, 1, &o);
    if (rc)
        return rc;
    cluster_dir cd;
    if (open_cluster_dir(o.dir, true, &cd) != 0)
        return 1;
    if ((rc = parse_index(&cd, "restart", o.index, &i)) != 0) {
        close_cluster_dir(&cd);
        return rc;
    }
    pid_t pid;
    if (is_running(get_node_state(&cd, i, &pid)))
        rc = stop_nodes(&cd, &i, &pid, 1) ? 1 : 0;
    else
        printf("node %u: not running\n", i);
    if (rc == 0)
        rc = up_nodes(&cd, &i, 1, &o);
    close_cluster_dir(&cd);
    return rc;
}

/* ------------------------------------------------------------ status */

static const char *state_name(node_state st)
{
    switch (st) {
    case NODE_RUNNING:
        return "running";
    case NODE_UNTRACKED:
        return "running (pidfile lost)";
    case NODE_STALE:
        return "stopped (stale pidfile)";
    default:
        return "stopped";
    }
}

/* One number from a status reply, or "-" if it is missing. */
static void status_field(json_t *reply, const char *key, char *buf, size_t cap)
{
    json_t *v = json_object_get(reply, key);
    if (json_is_integer(v))
        snprintf(buf, cap, "%lld", (long long)json_integer_value(v));
    else
        snprintf(buf, cap, "-");
}

/* Ask node i's admin socket for `status`: "view/last_executed/stable", or "-"
 * when the node is down, does not answer within STATUS_TIMEOUT_MS, or
 * answers with an error. */
static void consensus_status(const cluster_dir *cd, uint32_t i, bool running, char *buf, size_t cap)
{
    char sock[NODE_PATH_MAX], err[512];
    snprintf(buf, cap, "-");
    if (!running || node_file(cd, i, "data/" ADMIN_SOCKET_FILE, sock, sizeof sock) != 0)
        return;
    json_t *req = json_pack("{s:s}", "command", "status");
    json_t *reply = NULL;
    int rc = req ? admin_call(sock, req, STATUS_TIMEOUT_MS, &reply, err, sizeof err) : FB_ENOMEM;
    json_decref(req);
    if (rc != 0)
        return;
    if (json_is_object(reply) && !json_object_get(reply, "error")) {
        char view[24], exec[24], stable[24];
        status_field(reply, "view", view, sizeof view);
        status_field(reply, "last_executed", exec, sizeof exec);
        status_field(reply, "stable_checkpoint", stable, sizeof stable);
        snprintf(buf, cap, "%s/%s/%s", view, exec, stable);
    }
    json_decref(reply);
}

static int cluster_status(int argc, char **argv)
{
    static const struct option opts[] = {{"dir", required_argument, NULL, OPT_DIR},
                                         {NULL, 0, NULL, 0}};
    cluster_opts o;
    int rc = parse_opts(argc, argv, opts, 0, &o);
    if (rc)
        return rc;
    cluster_dir cd;
    if (open_cluster_dir(o.dir, true, &cd) != 0)
        return 1;
    printf("cluster %s: %u replicas, f = %u, %u clients\n\n", cd.dir, cd.n, cd.cl.f,
           cd.cl.nclients);
    printf("%-4s %-8s %-22s %-16s %-6s %-11s %-9s %-10s %s\n", "node", "pid", "state", "host",
           "port", "client_port", "accepting", "log", "view/executed/stable");
    for (uint32_t i = 0; i < cd.n; i++) {
        const cfg_replica *r = &cd.cl.replicas[i];
        pid_t pid;
        node_state st = get_node_state(&cd, i, &pid);
        char pidbuf[16] = "-", logp[NODE_PATH_MAX], logsz[24], cons[96];
        if (is_running(st))
            snprintf(pidbuf, sizeof pidbuf, "%d", (int)pid);
        struct stat sb;
        node_file(&cd, i, "node.log", logp, sizeof logp);
        fmt_size(stat(logp, &sb) == 0 ? (long long)sb.st_size : -1, logsz, sizeof logsz);
        consensus_status(&cd, i, is_running(st), cons, sizeof cons);
        printf("%-4u %-8s %-22s %-16s %-6u %-11u %-9s %-10s %s\n", i, pidbuf, state_name(st),
               r->host, r->port, r->client_port, probe_port(r->host, r->client_port) ? "yes" : "no",
               logsz, cons);
    }
    close_cluster_dir(&cd);
    return 0;
}

/* ------------------------------------------------------------ dispatch */

typedef struct subcommand {
    const char *name;
    int (*run)(int argc, char **argv);
} subcommand;

static const subcommand subcommands[] = {
    {"init", cluster_init},     {"up", cluster_up},     {"down", cluster_down},
    {"status", cluster_status}, {"kill", cluster_kill}, {"restart", cluster_restart},
};

int cmd_cluster(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "fedbft cluster: which subcommand? (init, up, down, status, kill, "
                        "restart)\n\n");
        cmd_cluster_usage(stderr);
        return 2;
    }
    for (size_t k = 0; k < sizeof subcommands / sizeof subcommands[0]; k++)
        if (strcmp(argv[1], subcommands[k].name) == 0)
            return subcommands[k].run(argc - 1, argv + 1);
    fprintf(stderr,
            "fedbft cluster: unknown subcommand '%s' (init, up, down, status, kill, "
            "restart)\n",
            argv[1]);
    return 2;
}
