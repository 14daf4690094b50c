/* cmd_client_infer.c - `fedbft client infer`: an inference through consensus.
 * The INFER is ordered like any operation (f+1 replicas reply "accepted" at
 * its seq); every replica then runs it through its batcher and sends an
 * InferResult, and the output is accepted once f+1 replicas sent the same
 * output digest, so up to f lying or broken replicas cannot forge it. */
#include "cli.h"

#include "client.h"
#include "fb_error.h"

#include <errno.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct infer_vote {
    bool have;
    uint64_t ts;
    uint8_t digest[16];
    bool failed;
    char *text;
    char finish[16];
    char error[160];
} infer_vote;

typedef struct infer_ctx {
    const cfg_cluster *cl;
    fb_client *c;
    uint32_t me;
    bool replied, done;
    int exit_code;
    uint64_t ts, seq;
    infer_vote *votes; /* [n] */
} infer_ctx;

static void print_hex(FILE *f, const uint8_t *b, size_t n)
{
    char hex[65];
    sodium_bin2hex(hex, sizeof hex, b, n < 32 ? n : 32);
    fputs(hex, f);
}

/* f+1 replicas with the same digest for this request: the output. */
static void check_agreement(infer_ctx *x)
{
    if (!x->replied || x->done)
        return;
    uint32_t n = x->cl->n, need = x->cl->f + 1, failed = 0;
    for (uint32_t i = 0; i < n; i++) {
        const infer_vote *v = &x->votes[i];
        if (!v->have || v->ts != x->ts)
            continue;
        if (v->failed) {
            failed++;
            continue;
        }
        uint32_t same = 0;
        for (uint32_t j = 0; j < n; j++)
            same += x->votes[j].have && x->votes[j].ts == x->ts && !x->votes[j].failed &&
                    memcmp(x->votes[j].digest, v->digest, 16) == 0;
        if (same < need)
            continue;
        printf("%s\n", v->text);
        fprintf(stderr, "agreed by replicas");
        for (uint32_t j = 0; j < n; j++)
            if (x->votes[j].have && x->votes[j].ts == x->ts && !x->votes[j].failed &&
                memcmp(x->votes[j].digest, v->digest, 16) == 0)
                fprintf(stderr, " %u", j);
        fprintf(stderr, " (f+1 = %u needed), seq %llu, finish %s, output digest ", need,
                (unsigned long long)x->seq, v->finish);
        print_hex(stderr, v->digest, 16);
        fputc('\n', stderr);
        for (uint32_t j = 0; j < n; j++)
            if (x->votes[j].have && x->votes[j].ts == x->ts && !x->votes[j].failed &&
                memcmp(x->votes[j].digest, v->digest, 16) != 0)
                fprintf(stderr, "warning: replica %u sent a different output (outvoted)\n", j);
        x->done = true;
        x->exit_code = 0;
        return;
    }
    if (failed > n - need) {
        fprintf(stderr, "fedbft client infer: %u of %u replicas could not run it, e.g.:", failed,
                n);
        for (uint32_t j = 0; j < n; j++)
            if (x->votes[j].have && x->votes[j].failed) {
                fprintf(stderr, " replica %u: %s", j, x->votes[j].error);
                break;
            }
        fputc('\n', stderr);
        x->done = true;
        x->exit_code = 1;
    }
}

static void on_message(void *arg, uint32_t replica, int type, const uint8_t *payload, size_t len)
{
    infer_ctx *x = arg;
    if (type != FEDBFT__MSG_TYPE__MSG_INFER_RESULT || replica >= x->cl->n)
        return;
    Fedbft__InferResult *ir = fedbft__infer_result__unpack(NULL, len, payload);
    if (!ir)
        return;
    if (ir->client == x->me && ir->replica == replica &&
        (ir->error[0] || ir->output_digest.len == 16)) {
        infer_vote *v = &x->votes[replica];
        free(v->text);
        *v = (infer_vote){.have = true, .ts = ir->timestamp, .failed = ir->error[0] != '\0'};
        v->text = strdup(ir->text ? ir->text : "");
        if (!v->failed)
            memcpy(v->digest, ir->output_digest.data, 16);
        snprintf(v->finish, sizeof v->finish, "%s", ir->finish);
        snprintf(v->error, sizeof v->error, "%s", ir->error);
        check_agreement(x);
    }
    fedbft__infer_result__free_unpacked(ir, NULL);
}

static void on_accepted(void *arg, int status, const Fedbft__Result *res, uint64_t seq)
{
    infer_ctx *x = arg;
    if (status != 0 || !res) {
        fprintf(stderr, "fedbft client infer: no agreement among the replicas on ordering the "
                        "request before the timeout\n");
        x->done = true;
        return;
    }
    if (res->status != FEDBFT__RESULT__STATUS__STATUS_OK) {
        fprintf(stderr, "fedbft client infer: %s\n",
                res->error && *res->error ? res->error : "refused");
        x->done = true;
        x->exit_code = 2;
        return;
    }
    x->replied = true;
    x->seq = seq;
    x->ts = fb_client_last_timestamp(x->c);
    check_agreement(x);
}

static void on_timeout(uv_timer_t *t)
{
    infer_ctx *x = t->data;
    if (!x->done) {
        fprintf(stderr, "fedbft client infer: no f+1 matching outputs before the timeout\n");
        x->done = true;
        x->exit_code = 1;
    }
}

static void stop_loop(void *arg)
{
    uv_stop(arg);
}

/* Options then the prompt (or --prompt TEXT); argv[0] is "infer".  Parsed
 * by hand: cmd_client already ran getopt over the same argv. */
static int parse_params(int argc, char **argv, Fedbft__InferParams *p)
{
    p->max_tokens = 32;
    p->top_p = 1;
    p->prompt = NULL; /* the INIT default is "", which would look given */
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool known = !strcmp(a, "--max-tokens") || !strcmp(a, "--temperature") ||
                     !strcmp(a, "--top-p") || !strcmp(a, "--top-k") || !strcmp(a, "--seed") ||
                     !strcmp(a, "--prompt");
        if (!known) {
            if (a[0] == '-' && a[1] == '-') {
                fprintf(stderr, "fedbft client infer: unknown option '%s'\n", a);
                return 2;
            }
            if (p->prompt) {
                fprintf(stderr, "fedbft client infer: give one prompt (quote it)\n");
                return 2;
            }
            p->prompt = (char *)a;
            continue;
        }
        if (i + 1 >= argc) {
            fprintf(stderr, "fedbft client infer: %s needs a value\n", a);
            return 2;
        }
        const char *v = argv[++i];
        char *end = NULL;
        errno = 0;
        if (!strcmp(a, "--prompt")) {
            p->prompt = (char *)v;
            continue;
        }
        if (!strcmp(a, "--max-tokens"))
            p->max_tokens = (uint32_t)strtoul(v, &end, 10);
        else if (!strcmp(a, "--temperature"))
            p->temperature = strtof(v, &end);
        else if (!strcmp(a, "--top-p"))
            p->top_p = strtof(v, &end);
        else if (!strcmp(a, "--top-k"))
            p->top_k = (uint32_t)strtoul(v, &end, 10);
        else
            p->seed = strtoull(v, &end, 10);
        if (errno || !end || *end || end == v) {
            fprintf(stderr, "fedbft client infer: %s: bad value '%s'\n", a, v);
            return 2;
        }
    }
    if (!p->prompt) {
        fprintf(stderr, "fedbft client infer: give a prompt (fedbft client ... infer TEXT)\n");
        return 2;
    }
    return 0;
}

int cmd_client_infer(const cfg_cluster *cl, const char *keyfile, uint64_t timeout_ms,
                     uint64_t retransmit_ms, int argc, char **argv)
{
    Fedbft__InferParams params = FEDBFT__INFER_PARAMS__INIT;
    if (parse_params(argc, argv, &params) != 0)
        return 2;
    Fedbft__Operation op = FEDBFT__OPERATION__INIT;
    op.kind = FEDBFT__OPERATION__KIND__OP_INFER;
    op.infer = &params;
    char err[512] = "";
    fb_identity id;
    if (fb_key_load(keyfile, &id, err, sizeof err) != 0) {
        fprintf(stderr, "fedbft client: %s\n", err);
        return 1;
    }
    uv_loop_t loop;
    uv_loop_init(&loop);
    infer_ctx x = {.cl = cl, .exit_code = 1, .votes = calloc(cl->n, sizeof(infer_vote))};
    fb_client_config cc = fb_client_one_shot(&loop, cl, &id, timeout_ms, retransmit_ms);
    uv_timer_t timer;
    uv_timer_init(&loop, &timer);
    timer.data = &x;
    int rc = x.votes ? fb_client_new(&cc, &x.c, err, sizeof err) : FB_ENOMEM;
    if (rc == 0) {
        x.me = fb_client_id(x.c);
        fb_client_on_message(x.c, on_message, &x);
        rc = fb_client_start(x.c, err, sizeof err);
    }
    if (rc == 0)
        rc = fb_client_submit(x.c, &op, false, on_accepted, &x);
    if (rc != 0) {
        fprintf(stderr, "fedbft client: %s\n", err[0] ? err : fb_strerror(rc));
    } else {
        uv_timer_start(&timer, on_timeout, timeout_ms, 0);
        while (!x.done && uv_run(&loop, UV_RUN_ONCE))
            ;
    }
    uv_close((uv_handle_t *)&timer, NULL);
    if (x.c) {
        fb_client_close(x.c, stop_loop, &loop);
        uv_run(&loop, UV_RUN_DEFAULT);
        fb_client_free(x.c);
    }
    uv_run(&loop, UV_RUN_NOWAIT);
    uv_loop_close(&loop);
    for (uint32_t i = 0; x.votes && i < cl->n; i++)
        free(x.votes[i].text);
    free(x.votes);
    fb_key_wipe(&id);
    return rc == 0 ? x.exit_code : 1;
}
