/* cmd_client.c - `fedbft client`: one operation, or a write load, against a cluster. */
#include "cli.h"

#include "client.h"
#include "config.h"
#include "fb_error.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

void cmd_client_usage(FILE *out)
{
    fprintf(out,
            "Usage: fedbft client --cluster FILE --key KEYFILE COMMAND ARGS\n"
            "       fedbft client --cluster FILE --keys DIR load [--writes N] [--concurrency C]\n"
            "                     [--value-size B]\n\n"
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
            "  load                      write N keys with C clients at once (keys\n"
            "                            DIR/client0/node.key ... as 'cluster init' makes them)\n"
            "                            and print writes per second and latencies\n\n"
            "Options:\n"
            "  --cluster FILE   cluster.json (required)\n"
            "  --key KEYFILE    the client's secret key, listed in cluster.json \"clients\"\n"
            "  --keys DIR       for load: directory of client key directories\n"
            "  --timeout MS     give up after MS milliseconds (default 30000)\n\n"
            "Exit status: 0 ok, 3 key not found, 4 compare-and-swap mismatch, 1 error.\n");
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

static int run_one(const cfg_cluster *cl, const char *keyfile, uint64_t timeout_ms, int argc,
                   char **argv)
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
    fb_client_config cc = {.loop = &loop, .cluster = cl, .id = &id, .timeout_ms = timeout_ms};
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

typedef struct load_client {
    struct load *ld;
    fb_client *c;
    fb_identity id;
    uint64_t started_us;
    char key[64], value[4096];
} load_client;

typedef struct load {
    uv_loop_t *loop;
    uint64_t target, issued, done, failed;
    bool stop; /* a request failed: finish what is in flight, start nothing new */
    size_t value_size;
    uint64_t *lat_us;
    load_client *clients;
    int nclients, closing;
} load;

static uint64_t mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void load_next(load_client *lc);

static void load_done(void *arg, int status, const Fedbft__Result *res, uint64_t seq)
{
    (void)seq;
    load_client *lc = arg;
    load *ld = lc->ld;
    if (status != 0 || !res || res->status != FEDBFT__RESULT__STATUS__STATUS_OK) {
        ld->failed++;
        ld->stop = true;
    } else {
        ld->lat_us[ld->done - ld->failed] = mono_us() - lc->started_us;
    }
    ld->done++;
    if (ld->done == ld->target || (ld->stop && ld->done == ld->issued))
        uv_stop(ld->loop);
    else
        load_next(lc);
}

static void load_next(load_client *lc)
{
    load *ld = lc->ld;
    if (ld->issued >= ld->target || ld->stop)
        return;
    uint64_t k = ld->issued++;
    snprintf(lc->key, sizeof lc->key, "load-%llu", (unsigned long long)k);
    memset(lc->value, 'v', ld->value_size);
    Fedbft__Operation op = FEDBFT__OPERATION__INIT;
    op.kind = FEDBFT__OPERATION__KIND__OP_PUT;
    op.key = (ProtobufCBinaryData){strlen(lc->key), (uint8_t *)lc->key};
    op.value = (ProtobufCBinaryData){ld->value_size, (uint8_t *)lc->value};
    lc->started_us = mono_us();
    if (fb_client_submit(lc->c, &op, false, load_done, lc) != 0) {
        ld->failed++;
        ld->stop = true;
        ld->done++;
    }
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void count_closed(void *arg)
{
    load *ld = arg;
    if (--ld->closing == 0)
        uv_stop(ld->loop);
}

static int run_load(const cfg_cluster *cl, const char *keydir, uint64_t writes, int conc,
                    size_t value_size, uint64_t timeout_ms)
{
    if (conc < 1 || conc > 256 || writes == 0 || value_size > 4096) {
        fprintf(stderr, "fedbft client load: need 1 <= concurrency <= 256, writes > 0, "
                        "value-size <= 4096\n");
        return 2;
    }
    uv_loop_t loop;
    uv_loop_init(&loop);
    load ld = {.loop = &loop, .target = writes, .value_size = value_size, .nclients = conc};
    ld.lat_us = calloc(writes, sizeof *ld.lat_us);
    ld.clients = calloc((size_t)conc, sizeof *ld.clients);
    int rc = ld.lat_us && ld.clients ? 0 : FB_ENOMEM;
    char err[512] = "";
    for (int i = 0; i < conc && rc == 0; i++) {
        load_client *lc = &ld.clients[i];
        lc->ld = &ld;
        char path[1024];
        snprintf(path, sizeof path, "%s/client%d/node.key", keydir, i);
        rc = fb_key_load(path, &lc->id, err, sizeof err);
        fb_client_config cc = {
            .loop = &loop, .cluster = cl, .id = &lc->id, .timeout_ms = timeout_ms};
        if (rc == 0)
            rc = fb_client_new(&cc, &lc->c, err, sizeof err);
        if (rc == 0)
            rc = fb_client_start(lc->c, err, sizeof err);
    }
    uint64_t t0 = mono_us();
    if (rc == 0) {
        for (int i = 0; i < conc; i++)
            load_next(&ld.clients[i]);
        uv_run(&loop, UV_RUN_DEFAULT);
    } else {
        fprintf(stderr, "fedbft client load: %s\n", err[0] ? err : fb_strerror(rc));
    }
    double secs = (double)(mono_us() - t0) / 1e6;
    for (int i = 0; i < conc; i++)
        if (ld.clients && ld.clients[i].c)
            ld.closing++;
    for (int i = 0; i < conc; i++)
        if (ld.clients && ld.clients[i].c)
            fb_client_close(ld.clients[i].c, count_closed, &ld);
    if (ld.closing)
        uv_run(&loop, UV_RUN_DEFAULT);
    if (rc == 0) {
        uint64_t ok = ld.done - ld.failed;
        qsort(ld.lat_us, ok, sizeof *ld.lat_us, cmp_u64);
        uint64_t p50 = ok ? ld.lat_us[ok / 2] : 0, p99 = ok ? ld.lat_us[ok * 99 / 100] : 0;
        printf("writes=%llu failed=%llu clients=%d seconds=%.2f writes_per_sec=%.0f "
               "p50_ms=%.2f p99_ms=%.2f\n",
               (unsigned long long)ok, (unsigned long long)ld.failed, conc, secs,
               secs > 0 ? (double)ok / secs : 0, (double)p50 / 1000, (double)p99 / 1000);
        rc = ld.failed ? 1 : 0;
    }
    for (int i = 0; i < conc && ld.clients; i++) {
        fb_client_free(ld.clients[i].c);
        fb_key_wipe(&ld.clients[i].id);
    }
    free(ld.clients);
    free(ld.lat_us);
    uv_loop_close(&loop);
    return rc == 0 ? 0 : 1;
}

typedef struct client_opts {
    const char *cluster, *key, *keys;
    uint64_t timeout, writes;
    int conc;
    size_t vsize;
} client_opts;

/* Parse options from optind on (stopping at the first word that is not one);
 * 0, or 2 on a usage error. */
static int parse_opts(int argc, char **argv, client_opts *o)
{
    static const struct option opts[] = {
        {"cluster", required_argument, NULL, 'c'},    {"key", required_argument, NULL, 'k'},
        {"keys", required_argument, NULL, 'K'},       {"timeout", required_argument, NULL, 't'},
        {"writes", required_argument, NULL, 'w'},     {"concurrency", required_argument, NULL, 'C'},
        {"value-size", required_argument, NULL, 'v'}, {NULL, 0, NULL, 0},
    };
    int ch;
    /* "+" stops at the first command word, so "cas --absent" reaches parse_op. */
    while ((ch = getopt_long(argc, argv, "+c:k:K:t:w:C:v:", opts, NULL)) != -1) {
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
            o->timeout = strtoull(optarg, NULL, 10);
            break;
        case 'w':
            o->writes = strtoull(optarg, NULL, 10);
            break;
        case 'C':
            o->conc = atoi(optarg);
            break;
        case 'v':
            o->vsize = strtoul(optarg, NULL, 10);
            break;
        default:
            return 2;
        }
    }
    return 0;
}

int cmd_client(int argc, char **argv)
{
    client_opts o = {.timeout = 30000, .writes = 1000, .conc = 8, .vsize = 64};
    optind = 1;
    if (parse_opts(argc, argv, &o) != 0) {
        cmd_client_usage(stderr);
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
            cmd_client_usage(stderr);
            rc = 2;
        } else if (!o.keys) {
            fprintf(stderr, "fedbft client load: --keys DIR is required\n");
            rc = 2;
        } else {
            rc = run_load(&cl, o.keys, o.writes, o.conc, o.vsize, o.timeout);
        }
    } else if (!o.key) {
        fprintf(stderr, "fedbft client: --key KEYFILE is required\n");
        rc = 2;
    } else if (strcmp(argv[optind], "infer") == 0) {
        rc = cmd_client_infer(&cl, o.key, o.timeout, argc - optind, argv + optind);
    } else {
        rc = run_one(&cl, o.key, o.timeout, argc - optind, argv + optind);
    }
    cfg_cluster_free(&cl);
    return rc;
}
