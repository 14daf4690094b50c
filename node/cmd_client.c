/* cmd_client.c - `fedbft client`: one operation, or a write load, against a cluster. */
#include "cli.h"

#include "client.h"
#include "config.h"
#include "pbft.h"
#include "fb_error.h"

#include "bench_hist.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void cmd_client_usage(FILE *out)
{
    fprintf(out,
            "Usage: fedbft client --cluster FILE --key KEYFILE COMMAND ARGS\n"
            "       fedbft client --cluster FILE --keys DIR load [--writes N | --duration S]\n"
            "                     [--concurrency C] [--value-size B] [--prefix P]\n"
            "                     [--acked FILE] [--keep-going]\n\n"
            "A BFT client: signs each request with the client's key, sends it to the\n"
            "replicas, and prints the result once f+1 replicas agree (2f+1 for a fast read).\n\n"
            "Commands:\n"
            "  put KEY VALUE             set KEY\n"
            "  get KEY                   read KEY on the read-only fast path (2f+1 matching\n"
            "                            replies; falls back to ordering when they disagree)\n"
            "  get --ordered KEY         read KEY through consensus\n"
            "  del KEY                   delete KEY\n"
            "  cas KEY EXPECTED NEW      set KEY to NEW if it holds EXPECTED\n"
            "  cas --absent KEY NEW      set KEY to NEW if it does not exist\n"
            "  infer [--max-tokens N] [--temperature T] [--top-p P] [--top-k K] [--seed S]\n"
            "        PROMPT              an inference through consensus: ordered like any\n"
            "                            operation, run by every replica's batcher, and\n"
            "                            accepted once f+1 replicas return the same output\n"
            "                            digest (prints the text; who agreed on stderr)\n"
            "  load                      a write load from C clients at once (keys\n"
            "                            DIR/client0/node.key ... as 'cluster init' makes\n"
            "                            them), each with one write outstanding: puts\n"
            "                            PREFIX-0, PREFIX-1, ... in the order issued; write\n"
            "                            n's value is n padded with 'v' to B bytes; the\n"
            "                            first writes wait until every client has a link\n"
            "                            to every replica (to a quorum of them after 1 s;\n"
            "                            at most 10 s), and the clock starts then\n\n"
            "Options:\n"
            "  --cluster FILE   cluster.json (required)\n"
            "  --key KEYFILE    the client's secret key, listed in cluster.json \"clients\"\n"
            "  --keys DIR       for load: directory of client key directories\n"
            "  --timeout MS     give up on a request after MS milliseconds (default 30000)\n"
            "  --retransmit MS  re-send an unanswered request to every replica every MS\n"
            "                   milliseconds (default 1000; raise it on slow links)\n\n"
            "Load options:\n"
            "  --writes N       issue N writes (default 1000, or no limit with --duration)\n"
            "  --duration S     issue writes for S seconds (with --writes: whichever ends\n"
            "                   first)\n"
            "  --concurrency C  clients, 1..256 (default 8)\n"
            "  --value-size B   bytes per value, 0..4096 (default 64)\n"
            "  --prefix P       keys are P-0, P-1, ... (default \"load\"; 1..200 printable\n"
            "                   characters, no spaces): a fresh prefix gives a run its own keys\n"
            "  --acked FILE     append \"KEY VALUE\" to FILE for each write acknowledged by\n"
            "                   f+1 matching replies, flushed line by line (a record of what\n"
            "                   the cluster promised, to check after crashes)\n"
            "  --keep-going     a write that fails or times out is counted, left out of\n"
            "                   FILE, and the load goes on (default: the first failure stops\n"
            "                   the load once the writes in flight finish)\n"
            "  SIGINT or SIGTERM stops issuing; the writes in flight finish or time out, and\n"
            "  the totals are printed as one line:\n"
            "    writes=ACKED failed=F clients=C seconds=T writes_per_sec=W p50_ms=L\n"
            "    p99_ms=L timeouts=T retransmits=R max_ack_gap_ms=G\n"
            "  failed counts every write not acknowledged (timeouts among them); retransmits\n"
            "  counts resends of a request to every replica after 1 s without an answer;\n"
            "  max_ack_gap_ms is the longest time without any write acknowledged (from the\n"
            "  start to the last acknowledgement).\n\n"
            "Exit status: 0 ok, 3 key not found, 4 compare-and-swap mismatch, 1 error.\n"
            "For load: 0 when every write was acknowledged (with --keep-going: when the\n"
            "load ran, whatever failed), 1 otherwise, 2 for a usage error.\n");
}

typedef struct one_ctx {
    bool done;
    int exit_code;
} one_ctx;

static void print_result(void *arg, int status, const Fedbft__Result *res, uint64_t seq)
{
    one_ctx *c = arg;
    c->done = true;
    if (status != 0 || !res) {
        fprintf(stderr, "fedbft client: no agreement among the replicas before the timeout\n");
        c->exit_code = 1;
        return;
    }
    switch (res->status) {
    case FEDBFT__RESULT__STATUS__STATUS_OK:
        if (res->value.len)
            printf("%.*s\n", (int)res->value.len, (const char *)res->value.data);
        else
            printf("OK (seq %llu)\n", (unsigned long long)seq);
        c->exit_code = 0;
        break;
    case FEDBFT__RESULT__STATUS__STATUS_NOT_FOUND:
        printf("NOT_FOUND\n");
        c->exit_code = 3;
        break;
    case FEDBFT__RESULT__STATUS__STATUS_CAS_MISMATCH:
        printf("CAS_MISMATCH current=%.*s\n", (int)res->value.len, (const char *)res->value.data);
        c->exit_code = 4;
        break;
    default:
        fprintf(stderr, "fedbft client: %s\n", res->error && *res->error ? res->error : "failed");
        c->exit_code = 1;
        break;
    }
}

static void stop_loop(void *arg)
{
    uv_stop(arg);
}

/* Parse the command words into an operation.  Returns 0 or 2 (usage). */
static int parse_op(int argc, char **argv, Fedbft__Operation *op, bool *read_only)
{
    *read_only = false;
    if (argc < 1)
        return 2;
    const char *cmd = argv[0];
    if (strcmp(cmd, "put") == 0 && argc == 3) {
        op->kind = FEDBFT__OPERATION__KIND__OP_PUT;
        op->key = (ProtobufCBinaryData){strlen(argv[1]), (uint8_t *)argv[1]};
        op->value = (ProtobufCBinaryData){strlen(argv[2]), (uint8_t *)argv[2]};
    } else if (strcmp(cmd, "get") == 0 &&
               (argc == 2 || (argc == 3 && !strcmp(argv[1], "--ordered")))) {
        op->kind = FEDBFT__OPERATION__KIND__OP_GET;
        op->key = (ProtobufCBinaryData){strlen(argv[argc - 1]), (uint8_t *)argv[argc - 1]};
        *read_only = argc == 2;
    } else if (strcmp(cmd, "del") == 0 && argc == 2) {
        op->kind = FEDBFT__OPERATION__KIND__OP_DEL;
        op->key = (ProtobufCBinaryData){strlen(argv[1]), (uint8_t *)argv[1]};
    } else if (strcmp(cmd, "cas") == 0 && argc == 4 && strcmp(argv[1], "--absent") == 0) {
        op->kind = FEDBFT__OPERATION__KIND__OP_CAS;
        op->key = (ProtobufCBinaryData){strlen(argv[2]), (uint8_t *)argv[2]};
        op->value = (ProtobufCBinaryData){strlen(argv[3]), (uint8_t *)argv[3]};
        op->expect_absent = true;
    } else if (strcmp(cmd, "cas") == 0 && argc == 4) {
        op->kind = FEDBFT__OPERATION__KIND__OP_CAS;
        op->key = (ProtobufCBinaryData){strlen(argv[1]), (uint8_t *)argv[1]};
        op->expected = (ProtobufCBinaryData){strlen(argv[2]), (uint8_t *)argv[2]};
        op->value = (ProtobufCBinaryData){strlen(argv[3]), (uint8_t *)argv[3]};
    } else {
        return 2;
    }
    return 0;
}

static int run_one(const cfg_cluster *cl, const char *keyfile, uint64_t timeout_ms,
                   uint64_t retransmit_ms, int argc, char **argv)
{
    Fedbft__Operation op = FEDBFT__OPERATION__INIT;
    bool read_only;
    if (parse_op(argc, argv, &op, &read_only) != 0) {
        cmd_client_usage(stderr);
        return 2;
    }
    char err[512];
    fb_identity id;
    if (fb_key_load(keyfile, &id, err, sizeof err) != 0) {
        fprintf(stderr, "fedbft client: %s\n", err);
        return 1;
    }
    uv_loop_t loop;
    uv_loop_init(&loop);
    fb_client *c = NULL;
    fb_client_config cc = fb_client_one_shot(&loop, cl, &id, timeout_ms, retransmit_ms);
    one_ctx ctx = {.exit_code = 1};
    int rc = fb_client_new(&cc, &c, err, sizeof err);
    if (rc == 0)
        rc = fb_client_start(c, err, sizeof err);
    if (rc == 0)
        rc = fb_client_submit(c, &op, read_only, print_result, &ctx);
    if (rc != 0) {
        fprintf(stderr, "fedbft client: %s\n", err[0] ? err : fb_strerror(rc));
    } else {
        /* the client's deadline timer guarantees the callback runs */
        while (!ctx.done && uv_run(&loop, UV_RUN_ONCE))
            ;
    }
    if (c) {
        fb_client_close(c, stop_loop, &loop);
        uv_run(&loop, UV_RUN_DEFAULT);
        fb_client_free(c);
    }
    uv_loop_close(&loop);
    fb_key_wipe(&id);
    return rc == 0 ? ctx.exit_code : 1;
}

/* ------------------------------------------------------------ load */

/* A write load: C clients, each with one write outstanding (PBFT's client
 * model), putting PREFIX-0, PREFIX-1, ... in the order the writes are issued.
 * Write n's value is n in decimal padded with 'v' to value_size bytes, so a
 * stale or misplaced value shows when the keys are checked later. */

#define LOAD_MAX_PREFIX 200
#define LOAD_MAX_VALUE 4096
/* Before the first write, every client waits for authenticated links: to a
 * quorum at least, and to every replica for up to LINKS_ALL_MS (a replica
 * that is down must not hold the load up longer); LINKS_MAX_MS in all. */
#define LINKS_POLL_MS 10
#define LINKS_ALL_MS 1000
#define LINKS_MAX_MS 10000

typedef struct load_opts {
    const char *keydir;
    const char *prefix;  /* keys are PREFIX-<n> */
    const char *acked;   /* append "KEY VALUE" per acknowledged write; NULL = none */
    uint64_t writes;     /* stop issuing after this many; 0 = no limit */
    uint64_t duration_s; /* stop issuing after this long; 0 = no limit */
    uint64_t timeout_ms;
    uint64_t retransmit_ms; /* 0 = the client's default */
    size_t value_size;
    int conc;
    bool keep_going; /* a failed write is counted, and the load goes on */
} load_opts;

typedef struct load_client {
    struct load *ld;
    fb_client *c;
    fb_identity id;
    uint64_t started_us;
    char key[LOAD_MAX_PREFIX + 24], value[LOAD_MAX_VALUE + 1];
} load_client;

typedef struct load {
    const load_opts *o;
    uv_loop_t *loop;
    uv_timer_t deadline, links;
    uv_signal_t sigint, sigterm;
    const cfg_cluster *cl;
    uint64_t t0;  /* the load's start: after the wait for links */
    bool started; /* the first writes went out */
    FILE *acked;
    uint64_t issued, ok, failed, timeouts;
    uint64_t last_ack_us, max_gap_us; /* the longest time without an acknowledgement */
    int inflight;
    bool stop;  /* issue nothing new; finish what is in flight */
    bool fatal; /* the run itself failed (submit or acked-file error) */
    bench_hist lat;
    load_client *clients;
    int closing;
} load;

static uint64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static bool load_stopping(const load *ld)
{
    return ld->stop || (ld->o->writes && ld->issued >= ld->o->writes);
}

/* Stop the loop once nothing is in flight and nothing more will be issued. */
static void load_maybe_finish(load *ld)
{
    if (ld->inflight == 0 && load_stopping(ld))
        uv_stop(ld->loop);
}

static void load_next(load_client *lc);

/* Record an acknowledged write, flushed at once so that a crash test reading
 * the file after killing this process sees every write it was told about. */
static void load_record_ack(load *ld, const load_client *lc)
{
    if (!ld->acked)
        return;
    if (fprintf(ld->acked, "%s %s\n", lc->key, lc->value) < 0 || fflush(ld->acked) != 0) {
        fprintf(stderr, "fedbft client load: cannot write to %s: %s\n", ld->o->acked,
                strerror(errno));
        ld->fatal = ld->stop = true;
    }
}

static void load_done(void *arg, int status, const Fedbft__Result *res, uint64_t seq)
{
    (void)seq;
    load_client *lc = arg;
    load *ld = lc->ld;
    ld->inflight--;
    if (status != 0 || !res || res->status != FEDBFT__RESULT__STATUS__STATUS_OK) {
        ld->failed++;
        ld->timeouts += status == FB_EIO;
        if (!ld->o->keep_going)
            ld->stop = true;
    } else {
        uint64_t now = mono_us();
        ld->ok++;
        bench_hist_record(&ld->lat, now - lc->started_us);
        if (now - ld->last_ack_us > ld->max_gap_us)
            ld->max_gap_us = now - ld->last_ack_us;
        ld->last_ack_us = now;
        load_record_ack(ld, lc);
    }
    load_next(lc);
}

static void load_next(load_client *lc)
{
    load *ld = lc->ld;
    if (load_stopping(ld)) {
        load_maybe_finish(ld);
        return;
    }
    uint64_t n = ld->issued++;
    snprintf(lc->key, sizeof lc->key, "%s-%llu", ld->o->prefix, (unsigned long long)n);
    char tag[24];
    size_t tlen = (size_t)snprintf(tag, sizeof tag, "%llu", (unsigned long long)n);
    size_t vlen = ld->o->value_size;
    memset(lc->value, 'v', vlen);
    memcpy(lc->value, tag, tlen < vlen ? tlen : vlen);
    lc->value[vlen] = '\0';
    Fedbft__Operation op = FEDBFT__OPERATION__INIT;
    op.kind = FEDBFT__OPERATION__KIND__OP_PUT;
    op.key = (ProtobufCBinaryData){strlen(lc->key), (uint8_t *)lc->key};
    op.value = (ProtobufCBinaryData){vlen, (uint8_t *)lc->value};
    lc->started_us = mono_us();
    int rc = fb_client_submit(lc->c, &op, false, load_done, lc);
    if (rc != 0) {
        fprintf(stderr, "fedbft client load: cannot submit a write: %s\n", fb_strerror(rc));
        ld->failed++;
        ld->fatal = ld->stop = true;
        load_maybe_finish(ld);
        return;
    }
    ld->inflight++;
}

static void load_stop_now(load *ld)
{
    ld->stop = true;
    if (!ld->started) { /* stopped while waiting for links: nothing in flight */
        uv_timer_stop(&ld->links);
        ld->t0 = mono_us();
        uv_stop(ld->loop);
        return;
    }
    load_maybe_finish(ld);
}

static void on_load_deadline(uv_timer_t *t)
{
    load_stop_now(t->data);
}

/* The first writes go out once the clients' links are up (see LINKS_ALL_MS):
 * hundreds of clients handshaking at once would otherwise hold their first
 * requests back by the better part of a second, which is the load's latency
 * and, past the retransmit interval, a view change. */
static void load_start(load *ld)
{
    ld->started = true;
    ld->t0 = ld->last_ack_us = mono_us();
    if (ld->o->duration_s)
        uv_timer_start(&ld->deadline, on_load_deadline, ld->o->duration_s * 1000, 0);
    for (int i = 0; i < ld->o->conc; i++)
        load_next(&ld->clients[i]);
}

static void on_links_poll(uv_timer_t *t)
{
    load *ld = t->data;
    uint32_t n = ld->cl->n, quorum = pbft_quorum(n), least = n;
    for (int i = 0; i < ld->o->conc; i++) {
        uint32_t up = fb_client_links_up(ld->clients[i].c);
        least = up < least ? up : least;
    }
    uint64_t waited_ms = (mono_us() - ld->t0) / 1000;
    bool enough = least == n || (least >= quorum && waited_ms >= LINKS_ALL_MS);
    if (!enough && waited_ms < LINKS_MAX_MS)
        return;
    uv_timer_stop(t);
    if (least < quorum)
        fprintf(stderr,
                "fedbft client load: a client has links to %u of %u replicas after %d s; "
                "starting anyway\n",
                least, n, LINKS_MAX_MS / 1000);
    load_start(ld);
}

static void on_load_signal(uv_signal_t *s, int signum)
{
    load *ld = s->data;
    if (!ld->stop)
        fprintf(stderr,
                "fedbft client load: %s: issuing no more writes, waiting for %d in flight\n",
                strsignal(signum), ld->inflight);
    load_stop_now(ld);
}

static void count_closed(void *arg)
{
    load *ld = arg;
    if (--ld->closing == 0)
        uv_stop(ld->loop);
}

static void count_handle_closed(uv_handle_t *h)
{
    count_closed(h->data);
}

static int load_check_opts(const load_opts *o)
{
    if (o->conc < 1 || o->conc > 256 || o->value_size > LOAD_MAX_VALUE) {
        fprintf(stderr,
                "fedbft client load: need 1 <= --concurrency <= 256 and "
                "--value-size <= %d\n",
                LOAD_MAX_VALUE);
        return 2;
    }
    size_t plen = strlen(o->prefix);
    bool printable = plen > 0 && plen <= LOAD_MAX_PREFIX;
    for (size_t i = 0; i < plen && printable; i++)
        printable = isgraph((unsigned char)o->prefix[i]);
    if (!printable) {
        fprintf(stderr,
                "fedbft client load: --prefix must be 1..%d printable characters without "
                "spaces, got '%s'\n",
                LOAD_MAX_PREFIX, o->prefix);
        return 2;
    }
    return 0;
}

static void load_print_totals(const load *ld, double secs)
{
    uint64_t retransmits = 0;
    for (int i = 0; i < ld->o->conc; i++) {
        if (!ld->clients[i].c)
            continue;
        fb_client_stats st;
        fb_client_get_stats(ld->clients[i].c, &st);
        retransmits += st.retransmits;
    }
    printf("writes=%llu failed=%llu clients=%d seconds=%.2f writes_per_sec=%.0f "
           "p50_ms=%.2f p99_ms=%.2f timeouts=%llu retransmits=%llu max_ack_gap_ms=%.0f\n",
           (unsigned long long)ld->ok, (unsigned long long)ld->failed, ld->o->conc, secs,
           secs > 0 ? (double)ld->ok / secs : 0, (double)bench_hist_percentile(&ld->lat, 50) / 1000,
           (double)bench_hist_percentile(&ld->lat, 99) / 1000, (unsigned long long)ld->timeouts,
           (unsigned long long)retransmits, (double)ld->max_gap_us / 1000);
}

static int run_load(const cfg_cluster *cl, const load_opts *o)
{
    int rc = load_check_opts(o);
    if (rc)
        return rc;
    uv_loop_t loop;
    uv_loop_init(&loop);
    load *ld = calloc(1, sizeof *ld); /* the histogram is ~20 KiB */
    load_client *clients = calloc((size_t)o->conc, sizeof *clients);
    char err[512] = "";
    if (!ld || !clients) {
        free(ld);
        free(clients);
        uv_loop_close(&loop);
        fprintf(stderr, "fedbft client load: out of memory\n");
        return 1;
    }
    *ld = (load){.o = o, .loop = &loop, .clients = clients};
    bench_hist_init(&ld->lat);
    if (o->acked && !(ld->acked = fopen(o->acked, "a"))) {
        snprintf(err, sizeof err, "cannot open %s for appending: %s", o->acked, strerror(errno));
        rc = FB_EIO;
    }
    for (int i = 0; i < o->conc && rc == 0; i++) {
        load_client *lc = &clients[i];
        lc->ld = ld;
        char path[1024];
        snprintf(path, sizeof path, "%s/client%d/node.key", o->keydir, i);
        rc = fb_key_load(path, &lc->id, err, sizeof err);
        fb_client_config cc = {.loop = &loop,
                               .cluster = cl,
                               .id = &lc->id,
                               .timeout_ms = o->timeout_ms,
                               .retransmit_ms = o->retransmit_ms};
        if (rc == 0)
            rc = fb_client_new(&cc, &lc->c, err, sizeof err);
        if (rc == 0)
            rc = fb_client_start(lc->c, err, sizeof err);
    }
    uv_timer_init(&loop, &ld->deadline);
    uv_timer_init(&loop, &ld->links);
    uv_signal_init(&loop, &ld->sigint);
    uv_signal_init(&loop, &ld->sigterm);
    ld->deadline.data = ld->links.data = ld->sigint.data = ld->sigterm.data = ld;
    ld->cl = cl;
    ld->t0 = ld->last_ack_us = mono_us();
    if (rc == 0) {
        uv_signal_start(&ld->sigint, on_load_signal, SIGINT);
        uv_signal_start(&ld->sigterm, on_load_signal, SIGTERM);
        uv_timer_start(&ld->links, on_links_poll, 0, LINKS_POLL_MS);
        uv_run(&loop, UV_RUN_DEFAULT);
    } else {
        fprintf(stderr, "fedbft client load: %s\n", err[0] ? err : fb_strerror(rc));
    }
    double secs = (double)(mono_us() - ld->t0) / 1e6;
    if (rc == 0)
        load_print_totals(ld, secs);

    ld->closing = 4;
    uv_close((uv_handle_t *)&ld->deadline, count_handle_closed);
    uv_close((uv_handle_t *)&ld->links, count_handle_closed);
    uv_close((uv_handle_t *)&ld->sigint, count_handle_closed);
    uv_close((uv_handle_t *)&ld->sigterm, count_handle_closed);
    for (int i = 0; i < o->conc; i++)
        if (clients[i].c) {
            ld->closing++;
            fb_client_close(clients[i].c, count_closed, ld);
        }
    uv_run(&loop, UV_RUN_DEFAULT);
    for (int i = 0; i < o->conc; i++) {
        fb_client_free(clients[i].c);
        fb_key_wipe(&clients[i].id);
    }
    if (ld->acked && fclose(ld->acked) != 0 && rc == 0) {
        fprintf(stderr, "fedbft client load: cannot write to %s: %s\n", o->acked, strerror(errno));
        ld->fatal = true;
    }
    bool ok = rc == 0 && !ld->fatal && (o->keep_going || ld->failed == 0);
    free(clients);
    free(ld);
    uv_loop_close(&loop);
    return ok ? 0 : 1;
}

typedef struct client_opts {
    const char *cluster, *key, *keys, *prefix, *acked;
    uint64_t timeout, retransmit, writes, duration, conc, vsize;
    bool keep_going;
} client_opts;

/* A whole number in [0, max] from an option's argument; prints the error. */
static int parse_count(const char *opt, const char *arg, uint64_t max, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(arg, &end, 10);
    if (!*arg || *end || errno || arg[0] == '-' || v > max) {
        fprintf(stderr, "fedbft client: %s wants a whole number up to %llu, got '%s'\n", opt,
                (unsigned long long)max, arg);
        return 2;
    }
    *out = v;
    return 0;
}

/* Parse options from optind on (stopping at the first word that is not one);
 * 0, or 2 on a usage error. */
static int parse_opts(int argc, char **argv, client_opts *o)
{
    static const struct option opts[] = {
        {"cluster", required_argument, NULL, 'c'},
        {"key", required_argument, NULL, 'k'},
        {"keys", required_argument, NULL, 'K'},
        {"timeout", required_argument, NULL, 't'},
        {"writes", required_argument, NULL, 'w'},
        {"concurrency", required_argument, NULL, 'C'},
        {"value-size", required_argument, NULL, 'v'},
        {"duration", required_argument, NULL, 'd'},
        {"prefix", required_argument, NULL, 'p'},
        {"acked", required_argument, NULL, 'a'},
        {"keep-going", no_argument, NULL, 'g'},
        {"retransmit", required_argument, NULL, 'r'},
        {NULL, 0, NULL, 0},
    };
    int ch, rc = 0;
    /* "+" stops at the first command word, so "cas --absent" reaches parse_op. */
    while (rc == 0 &&
           (ch = getopt_long(argc, argv, "+c:k:K:t:r:w:C:v:d:p:a:g", opts, NULL)) != -1) {
        switch (ch) {
        case 'c':
            o->cluster = optarg;
            break;
        case 'k':
            o->key = optarg;
            break;
        case 'K':
            o->keys = optarg;
            break;
        case 't':
            rc = parse_count("--timeout", optarg, 86400000, &o->timeout);
            break;
        case 'r':
            rc = parse_count("--retransmit", optarg, 3600000, &o->retransmit);
            if (rc == 0 && o->retransmit < 10) {
                fprintf(stderr, "fedbft client: --retransmit must be at least 10 ms\n");
                rc = 2;
            }
            break;
        case 'w':
            rc = parse_count("--writes", optarg, UINT64_MAX, &o->writes);
            if (rc == 0 && o->writes == 0) {
                fprintf(stderr, "fedbft client: --writes must be at least 1\n");
                rc = 2;
            }
            break;
        case 'C':
            rc = parse_count("--concurrency", optarg, 256, &o->conc);
            break;
        case 'v':
            rc = parse_count("--value-size", optarg, LOAD_MAX_VALUE, &o->vsize);
            break;
        case 'd':
            rc = parse_count("--duration", optarg, 86400 * 365, &o->duration);
            if (rc == 0 && o->duration == 0) {
                fprintf(stderr, "fedbft client: --duration must be at least 1 second\n");
                rc = 2;
            }
            break;
        case 'p':
            o->prefix = optarg;
            break;
        case 'a':
            o->acked = optarg;
            break;
        case 'g':
            o->keep_going = true;
            break;
        default:
            return 2;
        }
    }
    return rc;
}

int cmd_client(int argc, char **argv)
{
    client_opts o = {.timeout = 30000, .conc = 8, .vsize = 64, .prefix = "load"};
    optind = 1;
    if (parse_opts(argc, argv, &o) != 0) {
        fprintf(stderr, "Try 'fedbft client --help'.\n");
        return 2;
    }
    if (!o.cluster || optind >= argc) {
        fprintf(stderr, "fedbft client: %s\n\n",
                o.cluster ? "no command given" : "--cluster FILE is required");
        cmd_client_usage(stderr);
        return 2;
    }
    char err[1024];
    cfg_cluster cl;
    if (cfg_cluster_load(o.cluster, &cl, err, sizeof err) != 0) {
        fprintf(stderr, "fedbft client: %s\n", err);
        return 1;
    }
    int rc;
    if (strcmp(argv[optind], "load") == 0) {
        optind++; /* options may also follow the command word */
        if (parse_opts(argc, argv, &o) != 0 || optind != argc) {
            if (optind < argc)
                fprintf(stderr, "fedbft client load: unexpected argument '%s'\n", argv[optind]);
            fprintf(stderr, "Try 'fedbft client --help'.\n");
            rc = 2;
        } else if (!o.keys) {
            fprintf(stderr, "fedbft client load: --keys DIR is required\n");
            rc = 2;
        } else {
            load_opts lo = {.keydir = o.keys,
                            .prefix = o.prefix,
                            .acked = o.acked,
                            .writes = o.writes || o.duration ? o.writes : 1000,
                            .duration_s = o.duration,
                            .timeout_ms = o.timeout,
                            .retransmit_ms = o.retransmit,
                            .value_size = (size_t)o.vsize,
                            .conc = (int)o.conc,
                            .keep_going = o.keep_going};
            rc = run_load(&cl, &lo);
        }
    } else if (!o.key) {
        fprintf(stderr, "fedbft client: --key KEYFILE is required\n");
        rc = 2;
    } else if (strcmp(argv[optind], "infer") == 0) {
        rc = cmd_client_infer(&cl, o.key, o.timeout, o.retransmit, argc - optind, argv + optind);
    } else {
        rc = run_one(&cl, o.key, o.timeout, o.retransmit, argc - optind, argv + optind);
    }
    cfg_cluster_free(&cl);
    return rc;
}
