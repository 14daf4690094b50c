/* bench_nodes.c - the benchmark's view of the replicas: local clusters made
 * and removed through this binary's `cluster` subcommands, node metrics from
 * the admin sockets, CPU and memory from /proc. */
#include "bench_nodes.h"

#include "admin.h"
#include "fb_error.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define ADMIN_TIMEOUT_MS 2000 /* one `metrics` call; a healthy node answers in ~1 ms */
#define LOG_COPY_MAX 16384    /* how much of a failed subcommand's output to show */
#define STOP_WAIT_MS 10000    /* nodes stopped by signal: SIGKILL after this long */

static pid_t node_pid(const bench_nodes *nd, uint32_t i);
static uint64_t mono_us(void);

/* ------------------------------------------------------------ signals */

static volatile sig_atomic_t g_signal;

static void on_signal(int signo)
{
    if (!g_signal)
        g_signal = signo;
}

void bench_nodes_catch_signals(void)
{
    /* No SA_RESTART: a blocking waitpid returns EINTR, so a wait notices. */
    struct sigaction sa = {.sa_handler = on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN); /* a node that goes away mid-write is an error, not a death */
}

int bench_nodes_signalled(void)
{
    return (int)g_signal;
}

/* ------------------------------------------------------------ subprocesses */

static long file_size(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : 0;
}

/* Copy what a subcommand appended to log (from offset `from`) to stderr,
 * at most its last LOG_COPY_MAX bytes. */
static void show_log(const char *log, long from)
{
    FILE *fp = fopen(log, "re");
    if (!fp)
        return;
    long size = file_size(log);
    if (size - from > LOG_COPY_MAX)
        from = size - LOG_COPY_MAX;
    char buf[4096];
    size_t k;
    if (fseek(fp, from, SEEK_SET) == 0)
        while ((k = fread(buf, 1, sizeof buf, fp)) > 0)
            fwrite(buf, 1, k, stderr);
    fclose(fp);
}

/* Run this binary with args (NULL-terminated), stdout and stderr appended to
 * log, in its own process group (so the terminal's ^C reaches only us).
 * Returns its exit status (128+signal if killed), or -1 if it could not run.
 * interruptible: on our signal flag, send it SIGTERM. */
static int run_self(const char *log, bool interruptible, const char *const *args)
{
    char exe[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (len <= 0)
        return -1;
    exe[len] = '\0';
    char *argv[24];
    size_t argc = 0;
    argv[argc++] = exe;
    for (size_t i = 0; args[i] && argc < sizeof argv / sizeof argv[0] - 1; i++)
        argv[argc++] = (char *)args[i];
    argv[argc] = NULL;
    int logfd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    int nullfd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    if (logfd < 0 || nullfd < 0) {
        if (logfd >= 0)
            close(logfd);
        if (nullfd >= 0)
            close(nullfd);
        return -1;
    }
    fflush(stdout); /* or the child would inherit (and print) our buffers */
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        setpgid(0, 0);
        signal(SIGPIPE, SIG_DFL);
        if (dup2(nullfd, 0) < 0 || dup2(logfd, 1) < 0 || dup2(logfd, 2) < 0)
            _exit(126);
        execv(exe, argv);
        _exit(127);
    }
    close(logfd);
    close(nullfd);
    if (pid < 0)
        return -1;
    bool termed = false;
    int st = 0;
    for (;;) {
        if (interruptible && g_signal && !termed) {
            kill(pid, SIGTERM);
            termed = true;
        }
        /* poll: a signal may land on another thread, or between the check
         * above and a blocking wait, and must still stop the child soon */
        pid_t r = waitpid(pid, &st, interruptible ? WNOHANG : 0);
        if (r == pid)
            break;
        if (r < 0 && errno != EINTR)
            return -1;
        if (r == 0)
            nanosleep(&(struct timespec){.tv_nsec = 20 * 1000 * 1000}, NULL);
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

static int make_dirs(const char *path)
{
    char buf[BENCH_PATH_MAX];
    if (strlen(path) >= sizeof buf)
        return -1;
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

/* ------------------------------------------------------------ local clusters */

/* Set the switches in one node.json (the file `cluster init` wrote). */
static int apply_switches(const char *path, const bench_switches *sw, char *err, size_t errlen)
{
    json_error_t jerr;
    json_t *cfg = json_load_file(path, 0, &jerr);
    if (!json_is_object(cfg)) {
        json_decref(cfg);
        return fb_errf(err, errlen, FB_EIO, "%s: %s", path, jerr.text);
    }
    int rc = 0;
    if (sw->batch_max)
        rc |= json_object_set_new(cfg, "batch_max_requests", json_integer(sw->batch_max));
    if (sw->verify != BENCH_VERIFY_DEFAULT)
        rc |= json_object_set_new(
            cfg, "verify", json_string(sw->verify == BENCH_VERIFY_INLINE ? "inline" : "batch"));
    if (sw->no_digest_cache)
        rc |= json_object_set_new(cfg, "digest_cache", json_false());
    if (sw->no_sig_cache)
        rc |= json_object_set_new(cfg, "sig_cache", json_false());
    if (rc == 0)
        rc = json_dump_file(cfg, path, JSON_INDENT(2));
    json_decref(cfg);
    return rc ? fb_errf(err, errlen, FB_EIO, "%s: cannot rewrite it", path) : 0;
}

static void set_paths(bench_nodes *nd)
{
    snprintf(nd->cluster_json, sizeof nd->cluster_json, "%s/cluster.json", nd->dir);
    snprintf(nd->keys_dir, sizeof nd->keys_dir, "%s/clients", nd->dir);
}

int bench_nodes_local_up(const char *dir, const bench_local_opts *o, bench_nodes *nd, char *err,
                         size_t errlen)
{
    memset(nd, 0, sizeof *nd);
    nd->local = true;
    nd->n = o->nodes;
    if (g_signal)
        return fb_errf(err, errlen, FB_ESTATE, "interrupted");
    if (make_dirs(dir) != 0)
        return fb_errf(err, errlen, FB_EIO, "cannot create %s: %s", dir, strerror(errno));
    char *real = realpath(dir, NULL);
    if (!real || strlen(real) >= sizeof nd->dir) {
        free(real);
        return fb_errf(err, errlen, FB_EINVAL, "%s: path too long", dir);
    }
    snprintf(nd->dir, sizeof nd->dir, "%s", real);
    free(real);
    set_paths(nd);
    nd->node_dirs = true;

    char log[BENCH_PATH_MAX + 16], nodes[16], clients[16], port[16];
    snprintf(log, sizeof log, "%s/bench.log", nd->dir);
    snprintf(nodes, sizeof nodes, "%u", o->nodes);
    snprintf(clients, sizeof clients, "%u", o->clients);
    snprintf(port, sizeof port, "%u", o->base_port);
    const char *init[] = {"cluster",     "init",    "--nodes",   nodes,          "--dir",
                          nd->dir,       "--model", "none",      "--durability", o->durability,
                          "--base-port", port,      "--clients", clients,        NULL};
    long from = file_size(log);
    int rc = run_self(log, true, init);
    if (rc != 0) {
        if (!g_signal)
            show_log(log, from);
        return fb_errf(err, errlen, FB_EIO, "'fedbft cluster init' in %s failed (exit %d)", nd->dir,
                       rc);
    }
    for (uint32_t i = 0; i < o->nodes; i++) {
        char path[BENCH_PATH_MAX + 32];
        snprintf(path, sizeof path, "%s/node%u/node.json", nd->dir, i);
        if ((rc = apply_switches(path, &o->sw, err, errlen)) != 0)
            return rc;
    }
    if (g_signal)
        return fb_errf(err, errlen, FB_ESTATE, "interrupted");
    const char *up[] = {"cluster", "up", "--dir", nd->dir, NULL};
    nd->started = true;
    from = file_size(log);
    rc = run_self(log, true, up);
    if (rc != 0) {
        if (!g_signal)
            show_log(log, from);
        return fb_errf(err, errlen, FB_EIO,
                       g_signal ? "interrupted while the cluster was starting"
                                : "the local cluster in %s did not come up (cluster up's report "
                                  "is above; --keep DIR keeps the nodes' logs)",
                       nd->dir);
    }
    return 0;
}

/* `cluster down` failed (say, this binary was rebuilt or removed during the
 * run, so it cannot be run again): stop the nodes ourselves, SIGTERM and then,
 * after STOP_WAIT_MS, SIGKILL, so that no replica outlives the bench.  Each
 * exit is awaited on a pidfd (the nodes are not our children). */
static void stop_nodes_directly(const bench_nodes *nd)
{
    struct pollfd pfd[BENCH_MAX_NODES];
    uint32_t np = 0;
    for (uint32_t i = 0; i < nd->n && np < BENCH_MAX_NODES; i++) {
        pid_t pid = node_pid(nd, i);
        int fd = pid ? (int)syscall(SYS_pidfd_open, pid, 0) : -1;
        if (fd < 0)
            continue;
        if (syscall(SYS_pidfd_send_signal, fd, SIGTERM, NULL, 0) != 0) {
            close(fd);
            continue;
        }
        pfd[np++] = (struct pollfd){.fd = fd, .events = POLLIN};
    }
    uint64_t deadline = mono_us() + (uint64_t)STOP_WAIT_MS * 1000;
    uint32_t left = np;
    while (left > 0) {
        uint64_t now = mono_us();
        if (now >= deadline)
            break;
        int r = poll(pfd, np, (int)((deadline - now) / 1000) + 1);
        if (r < 0 && errno != EINTR)
            break;
        left = 0;
        for (uint32_t k = 0; k < np; k++) {
            if (pfd[k].fd >= 0 && (pfd[k].revents & POLLIN)) {
                close(pfd[k].fd);
                pfd[k].fd = -1; /* poll ignores it from now on */
            }
            left += pfd[k].fd >= 0;
        }
    }
    for (uint32_t k = 0; k < np; k++)
        if (pfd[k].fd >= 0) {
            syscall(SYS_pidfd_send_signal, pfd[k].fd, SIGKILL, NULL, 0);
            close(pfd[k].fd);
        }
    fprintf(stderr, "fedbft bench: stopped %u replica(s) of %s by signal%s\n", np, nd->dir,
            left ? " (some after SIGKILL)" : "");
}

void bench_nodes_local_down(bench_nodes *nd)
{
    if (!nd->local || !nd->started)
        return;
    char log[BENCH_PATH_MAX + 16];
    snprintf(log, sizeof log, "%s/bench.log", nd->dir);
    const char *down[] = {"cluster", "down", "--dir", nd->dir, NULL};
    long from = file_size(log);
    int rc = run_self(log, false, down);
    if (rc != 0) {
        fprintf(stderr, "fedbft bench: 'fedbft cluster down --dir %s' failed (exit %d):\n", nd->dir,
                rc);
        show_log(log, from);
        stop_nodes_directly(nd);
    }
    nd->started = false;
}

void bench_nodes_attach(const char *cluster_file, uint32_t n, bench_nodes *nd)
{
    memset(nd, 0, sizeof *nd);
    nd->n = n;
    char *real = realpath(cluster_file, NULL);
    char *slash = real ? strrchr(real, '/') : NULL;
    if (slash && (size_t)(slash - real) < sizeof nd->dir) {
        *slash = '\0';
        snprintf(nd->dir, sizeof nd->dir, "%s", *real ? real : "/");
        nd->node_dirs = true;
        for (uint32_t i = 0; i < n && nd->node_dirs; i++) {
            char path[BENCH_PATH_MAX + 32];
            struct stat st;
            snprintf(path, sizeof path, "%s/node%u", nd->dir, i);
            nd->node_dirs = stat(path, &st) == 0 && S_ISDIR(st.st_mode);
        }
    }
    free(real);
    snprintf(nd->cluster_json, sizeof nd->cluster_json, "%s", cluster_file);
}

/* ------------------------------------------------------------ sampling */

static uint64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* utime + stime from a /proc stat file (a process's or a thread's), and the
 * command name between its parentheses (may hold anything) if name is set. */
static int stat_ticks(const char *path, char *name, size_t namecap, uint64_t *ticks)
{
    char buf[1024];
    FILE *fp = fopen(path, "re");
    if (!fp)
        return -1;
    size_t len = fread(buf, 1, sizeof buf - 1, fp);
    fclose(fp);
    buf[len] = '\0';
    /* Fields after the command name: state is field 3, utime 14, stime 15. */
    const char *open = strchr(buf, '('), *close = strrchr(buf, ')');
    unsigned long long utime, stime;
    if (!open || !close || close < open ||
        sscanf(close + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime,
               &stime) != 2)
        return -1;
    if (name)
        snprintf(name, namecap, "%.*s", (int)(close - open - 1), open + 1);
    *ticks = utime + stime;
    return 0;
}

/* utime + stime of a process (or "self"), from /proc/PID/stat. */
static int proc_ticks(const char *pid, uint64_t *ticks)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%s/stat", pid);
    return stat_ticks(path, NULL, 0, ticks);
}

/* utime + stime of every thread of pid, by kind (the thread's name). */
static int proc_thread_ticks(pid_t pid, uint64_t ticks[BENCH_THREAD_KINDS])
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    if (!d)
        return -1;
    memset(ticks, 0, BENCH_THREAD_KINDS * sizeof *ticks);
    int found = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        char *end, task[96], name[32];
        long tid = strtol(e->d_name, &end, 10);
        uint64_t t;
        if (*end || tid <= 0)
            continue;
        snprintf(task, sizeof task, "/proc/%d/task/%ld/stat", (int)pid, tid);
        if (stat_ticks(task, name, sizeof name, &t) != 0)
            continue; /* the thread ended meanwhile */
        bench_thread_kind k = tid == pid                           ? BENCH_THREAD_LOOP
                              : strncmp(name, "fb-verify", 9) == 0 ? BENCH_THREAD_VERIFY
                              : strcmp(name, "fb-store") == 0      ? BENCH_THREAD_STORE
                                                                   : BENCH_THREAD_OTHER;
        ticks[k] += t;
        found++;
    }
    closedir(d);
    return found ? 0 : -1;
}

/* VmRSS and VmHWM (KiB) from /proc/PID/status. */
static int proc_memory(const char *pid, uint64_t *rss, uint64_t *hwm)
{
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%s/status", pid);
    FILE *fp = fopen(path, "re");
    if (!fp)
        return -1;
    int found = 0;
    unsigned long long v;
    while (fgets(line, sizeof line, fp)) {
        if (sscanf(line, "VmRSS: %llu", &v) == 1) {
            *rss = v;
            found++;
        } else if (sscanf(line, "VmHWM: %llu", &v) == 1) {
            *hwm = v;
            found++;
        }
    }
    fclose(fp);
    return found == 2 ? 0 : -1;
}

/* Node i's pid from its pid file, if that process is a fedbft running this
 * node's config (pids are reused: never trust the number alone). */
static pid_t node_pid(const bench_nodes *nd, uint32_t i)
{
    char path[BENCH_PATH_MAX + 32], buf[4096];
    snprintf(path, sizeof path, "%s/node%u/node.pid", nd->dir, i);
    FILE *fp = fopen(path, "re");
    if (!fp)
        return 0;
    long pid = 0;
    if (fscanf(fp, "%ld", &pid) != 1 || pid <= 0 || pid > INT_MAX)
        pid = 0;
    fclose(fp);
    if (!pid)
        return 0;
    snprintf(path, sizeof path, "/proc/%ld/cmdline", pid);
    fp = fopen(path, "re");
    if (!fp)
        return 0;
    size_t len = fread(buf, 1, sizeof buf - 1, fp);
    fclose(fp);
    buf[len] = '\0';
    char want[64];
    snprintf(want, sizeof want, "/node%u/node.json", i);
    bool is_fedbft = false, is_node = false;
    for (size_t off = 0; off < len; off += strlen(buf + off) + 1) {
        is_fedbft |= strstr(buf + off, "fedbft") != NULL;
        size_t l = strlen(buf + off), w = strlen(want);
        is_node |= l >= w && strcmp(buf + off + l - w, want) == 0;
    }
    return is_fedbft && is_node ? (pid_t)pid : 0;
}

/* The sum of every series of metric `name` (bare or with labels). */
static bool metric_sum(json_t *m, const char *name, double *out)
{
    const char *key;
    json_t *v;
    size_t nl = strlen(name);
    bool found = false;
    *out = 0;
    json_object_foreach(m, key, v)
    {
        if (strncmp(key, name, nl) != 0 || (key[nl] != '\0' && key[nl] != '{'))
            continue;
        if (json_is_number(v)) {
            *out += json_number_value(v);
            found = true;
        }
    }
    return found;
}

const char *const bench_phase_names[BENCH_PHASES] = {"pre_prepared", "prepared", "committed",
                                                     "executed", "replied"};

/* The sum and count of histogram `key` (the metric with its labels). */
static bool hist_total(json_t *m, const char *key, bench_hist_total *out)
{
    json_t *h = json_object_get(m, key);
    json_t *sum = json_object_get(h, "sum"), *count = json_object_get(h, "count");
    if (!json_is_object(h) || !json_is_number(sum) || !json_is_number(count))
        return false;
    out->sum = json_number_value(sum);
    out->count = json_number_value(count);
    return true;
}

static void sample_timing(json_t *m, bench_node_sample *s)
{
    bool ok = hist_total(m, "fedbft_verify_job_seconds", &s->verify_job) &&
              hist_total(m, "fedbft_store_commit_seconds", &s->store_commit);
    for (int p = 0; p < BENCH_PHASES; p++) {
        char key[96];
        snprintf(key, sizeof key, "fedbft_request_phase_seconds{phase=\"%s\"}",
                 bench_phase_names[p]);
        ok &= hist_total(m, key, &s->phase[p]);
    }
    s->have_timing = ok;
}

static void sample_metrics(const bench_nodes *nd, uint32_t i, bench_node_sample *s)
{
    char sock[BENCH_PATH_MAX + 32], err[256];
    snprintf(sock, sizeof sock, "%s/node%u/data/%s", nd->dir, i, ADMIN_SOCKET_FILE);
    if (access(sock, F_OK) != 0)
        return;
    json_t *req = json_pack("{s:s}", "command", "metrics"), *m = NULL;
    int rc = req ? admin_call(sock, req, ADMIN_TIMEOUT_MS, &m, err, sizeof err) : FB_ENOMEM;
    json_decref(req);
    if (rc != 0 || !json_is_object(m) || json_object_get(m, "error")) {
        json_decref(m);
        return;
    }
    s->have_metrics = metric_sum(m, "fedbft_view_changes_total", &s->view_changes) &&
                      metric_sum(m, "fedbft_view", &s->view);
    s->have_sigs_verified = metric_sum(m, "fedbft_signatures_verified_total", &s->sigs_verified);
    metric_sum(m, "fedbft_sigcache_misses_total", &s->sig_misses);
    json_t *b = json_object_get(m, "fedbft_batch_size");
    if (json_is_object(b) && json_is_number(json_object_get(b, "count")) &&
        json_is_number(json_object_get(b, "sum"))) {
        s->have_batch = true;
        s->batch_count = json_number_value(json_object_get(b, "count"));
        s->batch_sum = json_number_value(json_object_get(b, "sum"));
    }
    sample_timing(m, s);
    json_decref(m);
}

static void sample_proc(const bench_nodes *nd, uint32_t i, bench_node_sample *s)
{
    pid_t pid = node_pid(nd, i);
    if (!pid)
        return;
    char p[24];
    snprintf(p, sizeof p, "%d", (int)pid);
    s->have_proc =
        proc_ticks(p, &s->cpu_ticks) == 0 && proc_memory(p, &s->rss_kib, &s->hwm_kib) == 0;
    s->have_threads = s->have_proc && proc_thread_ticks(pid, s->thread_ticks) == 0;
}

void bench_nodes_sample(const bench_nodes *nd, bench_sample *out)
{
    memset(out, 0, sizeof *out);
    out->n = nd->n < BENCH_MAX_NODES ? nd->n : BENCH_MAX_NODES;
    /* /proc first and together, so the CPU figures share one timestamp. */
    out->t_us = mono_us();
    proc_ticks("self", &out->self_ticks);
    for (uint32_t i = 0; nd->node_dirs && i < out->n; i++)
        sample_proc(nd, i, &out->node[i]);
    for (uint32_t i = 0; nd->node_dirs && i < out->n; i++)
        sample_metrics(nd, i, &out->node[i]);
    out->taken = true;
}

/* ------------------------------------------------------------ cleanup */

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path) == 0 || errno == ENOENT ? 0 : -1;
}

int bench_nodes_remove_tree(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0)
        return errno == ENOENT ? 0 : FB_EIO;
    return nftw(path, remove_entry, 16, FTW_DEPTH | FTW_PHYS) == 0 ? 0 : FB_EIO;
}
