/* cmd_run.c - `fedbft run`: the node daemon in the foreground. */
#include "cli.h"

#include "config.h"
#include "fb_error.h"
#include "log.h"
#include "node.h"
#include "store.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void cmd_run_usage(FILE *out)
{
    fprintf(out, "Usage: fedbft run --config FILE [--resync]\n\n"
                 "Run a fedbft node in the foreground until SIGINT or SIGTERM.\n\n"
                 "FILE is the node's node.json (see docs/DESIGN.md, or make a local cluster's\n"
                 "with 'fedbft cluster init').  On a signal the node stops networking, lets the\n"
                 "store commit what was submitted, and exits 0.  Logs go to stderr.\n\n"
                 "Options:\n"
                 "  --config FILE  the node's configuration (required)\n"
                 "  --resync       delete this node's local state (DATA_DIR/fedbft.db*) and\n"
                 "                 rebuild it from its peers by state transfer: the way out\n"
                 "                 when the node refused to start because its store is\n"
                 "                 damaged.  The wipe loses the votes the node sent, so it\n"
                 "                 votes for nothing until the cluster is a log window past\n"
                 "                 the checkpoint it installs, and meanwhile counts toward\n"
                 "                 no quorum: resync at most f replicas at a time.\n"
                 "                 With 'fedbft cluster': cluster restart I --dir DIR --resync\n"
                 "                 A file named RESYNC in the data directory asks for the\n"
                 "                 same where the command line is fixed (a container or a\n"
                 "                 systemd unit): the node wipes, then deletes the file.\n"
                 "  --help         show this help\n");
}

/* DATA_DIR/RESYNC: a resync asked for from outside, for a node whose command
 * line an operator cannot change (a container, a systemd unit). */
#define RESYNC_FILE "RESYNC"

static bool resync_requested(const char *data_dir, char *path, size_t len)
{
    struct stat st;
    int n = snprintf(path, len, "%s/%s", data_dir, RESYNC_FILE);
    return n > 0 && (size_t)n < len && lstat(path, &st) == 0 && S_ISREG(st.st_mode);
}

typedef struct run_ctx {
    uv_loop_t loop;
    uv_signal_t sigint, sigterm;
    fb_node *node;
    int signals_closed;
} run_ctx;

static void on_stopped(void *arg)
{
    run_ctx *c = arg;
    uv_close((uv_handle_t *)&c->sigint, NULL);
    uv_close((uv_handle_t *)&c->sigterm, NULL);
}

static void on_signal(uv_signal_t *h, int signum)
{
    run_ctx *c = h->data;
    if (c->signals_closed++)
        return;
    LOG_INFO("signal %d: shutting down", signum);
    fb_node_stop(c->node, on_stopped, c);
}

int cmd_run(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"resync", no_argument, NULL, 'r'},
        {NULL, 0, NULL, 0},
    };
    const char *path = NULL;
    int resync = 0, ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "c:r", opts, NULL)) != -1) {
        switch (ch) {
        case 'c':
            path = optarg;
            break;
        case 'r':
            resync = 1;
            break;
        default:
            cmd_run_usage(stderr);
            return 2;
        }
    }
    if (!path || optind != argc) {
        fprintf(stderr, "fedbft run: %s\n\n",
                path ? "unexpected argument" : "--config FILE is required");
        cmd_run_usage(stderr);
        return 2;
    }
    char err[1024] = "";
    cfg_node cfg;
    if (cfg_node_load(path, &cfg, err, sizeof err) != 0) {
        fprintf(stderr, "fedbft run: %s\n", err);
        return 1;
    }
    /* Every log line goes to stderr; a log_file takes stderr's place. */
    if (cfg.log_file[0] && !freopen(cfg.log_file, "a", stderr)) {
        fprintf(stdout, "fedbft run: cannot open log_file %s\n", cfg.log_file);
        return 1;
    }
    setvbuf(stderr, NULL, _IOLBF, 0);
    int level = fb_log_parse_level(cfg.log_level);
    fb_log_set_level(level < 0 ? FB_LOG_INFO : (fb_log_level)level);
    char tag[32];
    snprintf(tag, sizeof tag, "node %u", cfg.id);
    fb_log_set_tag(tag);
    signal(SIGPIPE, SIG_IGN);
    char marker[CFG_PATH_MAX + sizeof RESYNC_FILE + 1];
    bool by_file = resync_requested(cfg.data_dir, marker, sizeof marker);
    if (resync || by_file) {
        if (store_wipe(cfg.data_dir, err, sizeof err) != 0) {
            LOG_ERROR("resync: %s", err);
            return 1;
        }
        /* After the wipe (and its durable marker): a crash in between only
         * wipes the empty store again. */
        if (by_file && unlink(marker) != 0) {
            LOG_ERROR("resync: cannot delete %s: %s", marker, strerror(errno));
            return 1;
        }
        LOG_WARN("resync%s: deleted the local state in %s; rebuilding it from the peers by "
                 "state transfer",
                 by_file ? " (asked for by " RESYNC_FILE " in the data directory)" : "",
                 cfg.data_dir);
    }

    run_ctx c;
    memset(&c, 0, sizeof c);
    uv_loop_init(&c.loop);
    if (fb_node_new(&c.loop, &cfg, &c.node, err, sizeof err) != 0 ||
        fb_node_start(c.node, err, sizeof err) != 0) {
        LOG_ERROR("%s", err);
        if (c.node) {
            fb_node_stop(c.node, NULL, NULL);
            uv_run(&c.loop, UV_RUN_DEFAULT);
            fb_node_free(c.node);
        }
        uv_loop_close(&c.loop);
        return 1;
    }
    uv_signal_init(&c.loop, &c.sigint);
    uv_signal_init(&c.loop, &c.sigterm);
    c.sigint.data = c.sigterm.data = &c;
    uv_signal_start(&c.sigint, on_signal, SIGINT);
    uv_signal_start(&c.sigterm, on_signal, SIGTERM);
    uv_run(&c.loop, UV_RUN_DEFAULT);
    fb_node_free(c.node); /* closes the store: everything submitted is committed */
    uv_loop_close(&c.loop);
    LOG_INFO("stopped");
    return 0;
}
