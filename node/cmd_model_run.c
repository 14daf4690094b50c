/* cmd_model_run.c - `fedbft model run`: generate text from a GGUF model on
 * this machine, as text or as JSON with token ids (and optionally the last
 * prompt position's logits) for checking against another engine. */
#include "cli.h"

#include "fb_error.h"
#include "kernels.h"
#include "model.h"
#include "sampler.h"

#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define RUN_MAX_PROMPT 65536 /* prompt bytes accepted */
#define RUN_MAX_GEN 65536

typedef struct run_opts {
    const char *model, *prompt, *logits_path;
    int max_tokens, threads, n_ctx, path;
    bool json, ignore_eos, kv_f32;
    sampler_params sp;
} run_opts;

void cmd_model_run_usage(FILE *out)
{
    fprintf(out,
            "Usage: fedbft model run --model FILE --prompt TEXT [options]\n\n"
            "Generate text from a llama GGUF model (F32, F16 or Q8_0 weights) on this machine.\n"
            "The prompt is tokenized with BOS; generation stops at EOS or --max-tokens.\n\n"
            "  --max-tokens N     tokens to generate (default 32)\n"
            "  --json             print one JSON object: prompt_tokens, tokens, text, text_hex,\n"
            "                     timings (prompt_ms, decode_ms, decode_tokens_per_s)\n"
            "  --logits FILE      write the last prompt position's logits as raw little-endian\n"
            "                     float32[n_vocab]\n"
            "  --temperature T    0 (default) is greedy: the highest logit, lowest id on ties\n"
            "  --top-k K          keep the K most likely tokens (0: all; default 40)\n"
            "  --top-p P          keep the smallest set reaching probability P (default 1)\n"
            "  --seed S           random seed for sampling (default 0): same seed, same text\n"
            "  --threads N        threads (default 2)\n"
            "  --ctx N            context positions (default: the model's)\n"
            "  --ignore-eos       keep generating after EOS\n"
            "  --kv-f32           keep keys and values in F32 (default F16, half the memory)\n"
            "  --scalar           use the portable scalar kernels (same bits, slower)\n");
}

static int parse_int(const char *s, const char *what, long min, long max, int *out)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno || *s == '\0' || *end != '\0' || v < min || v > max) {
        fprintf(stderr, "fedbft model run: %s must be an integer in %ld..%ld, not '%s'\n", what,
                min, max, s);
        return FB_EINVAL;
    }
    *out = (int)v;
    return 0;
}

static int parse_float(const char *s, const char *what, double min, double max, float *out)
{
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || *s == '\0' || *end != '\0' || !(v >= min && v <= max)) {
        fprintf(stderr, "fedbft model run: %s must be a number in %g..%g, not '%s'\n", what, min,
                max, s);
        return FB_EINVAL;
    }
    *out = (float)v;
    return 0;
}

static int parse_opts(int argc, char **argv, run_opts *o)
{
    enum {
        O_MODEL = 256,
        O_PROMPT,
        O_MAX,
        O_JSON,
        O_LOGITS,
        O_TEMP,
        O_TOPK,
        O_TOPP,
        O_SEED,
        O_THREADS,
        O_CTX,
        O_EOS,
        O_SCALAR,
        O_KVF32,
        O_HELP
    };
    static const struct option longopts[] = {{"model", required_argument, 0, O_MODEL},
                                             {"prompt", required_argument, 0, O_PROMPT},
                                             {"max-tokens", required_argument, 0, O_MAX},
                                             {"json", no_argument, 0, O_JSON},
                                             {"logits", required_argument, 0, O_LOGITS},
                                             {"temperature", required_argument, 0, O_TEMP},
                                             {"top-k", required_argument, 0, O_TOPK},
                                             {"top-p", required_argument, 0, O_TOPP},
                                             {"seed", required_argument, 0, O_SEED},
                                             {"threads", required_argument, 0, O_THREADS},
                                             {"ctx", required_argument, 0, O_CTX},
                                             {"ignore-eos", no_argument, 0, O_EOS},
                                             {"scalar", no_argument, 0, O_SCALAR},
                                             {"kv-f32", no_argument, 0, O_KVF32},
                                             {"help", no_argument, 0, O_HELP},
                                             {0, 0, 0, 0}};
    *o = (run_opts){.max_tokens = 32, .threads = 2, .path = -1, .sp = {.top_k = 40, .top_p = 1}};
    optind = 1;
    opterr = 0;
    int ch, rc = 0, seed;
    while (rc == 0 && (ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case O_MODEL:
            o->model = optarg;
            break;
        case O_PROMPT:
            o->prompt = optarg;
            break;
        case O_MAX:
            rc = parse_int(optarg, "--max-tokens", 0, RUN_MAX_GEN, &o->max_tokens);
            break;
        case O_JSON:
            o->json = true;
            break;
        case O_LOGITS:
            o->logits_path = optarg;
            break;
        case O_TEMP:
            rc = parse_float(optarg, "--temperature", 0, 100, &o->sp.temperature);
            break;
        case O_TOPK:
            rc = parse_int(optarg, "--top-k", 0, 1 << 22, &o->sp.top_k);
            break;
        case O_TOPP:
            rc = parse_float(optarg, "--top-p", 0, 1, &o->sp.top_p);
            break;
        case O_SEED:
            rc = parse_int(optarg, "--seed", 0, 2147483647L, &seed);
            o->sp.seed = (uint64_t)seed;
            break;
        case O_THREADS:
            rc = parse_int(optarg, "--threads", 1, 256, &o->threads);
            break;
        case O_CTX:
            rc = parse_int(optarg, "--ctx", 1, 1 << 20, &o->n_ctx);
            break;
        case O_EOS:
            o->ignore_eos = true;
            break;
        case O_SCALAR:
            o->path = KN_PATH_SCALAR;
            break;
        case O_HELP:
            cmd_model_run_usage(stdout);
            return 1;
        default:
            fprintf(stderr, "fedbft model run: unknown or incomplete option '%s' (try --help)\n",
                    argv[optind - 1]);
            return FB_EINVAL;
        }
    }
    if (rc == 0 && optind < argc) {
        fprintf(stderr, "fedbft model run: unexpected argument '%s'\n", argv[optind]);
        rc = FB_EINVAL;
    }
    if (rc == 0 && (!o->model || !o->prompt)) {
        fprintf(stderr, "fedbft model run: --model and --prompt are required (try --help)\n");
        rc = FB_EINVAL;
    }
    if (rc == 0 && strlen(o->prompt) > RUN_MAX_PROMPT) {
        fprintf(stderr, "fedbft model run: the prompt is longer than %d bytes\n", RUN_MAX_PROMPT);
        rc = FB_EINVAL;
    }
    return rc;
}

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static int write_logits(const char *path, const float *logits, int n)
{
    FILE *f = fopen(path, "wb");
    if (!f) {
        fprintf(stderr, "fedbft model run: cannot create %s: %s\n", path, strerror(errno));
        return FB_EIO;
    }
    size_t w = fwrite(logits, sizeof(float), (size_t)n, f); /* x86/arm64: little-endian */
    if (fclose(f) != 0 || w != (size_t)n) {
        fprintf(stderr, "fedbft model run: writing %s failed\n", path);
        return FB_EIO;
    }
    return 0;
}

/* The generated bytes as a JSON string: invalid UTF-8 becomes U+FFFD
 * (text_hex keeps the exact bytes). */
static json_t *text_json(const char *s, size_t n)
{
    json_t *j = json_stringn(s, n);
    if (j)
        return j;
    char *fixed = malloc(n * 3 + 1);
    size_t o = 0;
    if (!fixed)
        return json_string("");
    for (size_t i = 0; i < n;) {
        unsigned char c = (unsigned char)s[i];
        size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
        json_t *probe = len && i + len <= n ? json_stringn(s + i, len) : NULL;
        if (probe) {
            memcpy(fixed + o, s + i, len);
            o += len;
            i += len;
            json_decref(probe);
        } else {
            memcpy(fixed + o, "\xef\xbf\xbd", 3);
            o += 3;
            i++;
        }
    }
    j = json_stringn(fixed, o);
    free(fixed);
    return j;
}

static json_t *ids_json(const int32_t *ids, int n)
{
    json_t *a = json_array();
    for (int i = 0; i < n; i++)
        json_array_append_new(a, json_integer(ids[i]));
    return a;
}

typedef struct gen_out {
    int32_t *prompt, *gen;
    int n_prompt, n_gen;
    char *text;
    size_t text_len;
    double prompt_ms, decode_ms;
} gen_out;

/* Prefill the prompt in chunks of the context's max_tokens, keeping the last
 * position's logits in `logits`. */
static int prefill(llm_ctx *c, const int32_t *ids, int n, float *logits, char *err, size_t errlen)
{
    int chunk = llm_ctx_max_tokens(c);
    for (int at = 0; at < n; at += chunk) {
        int len = n - at < chunk ? n - at : chunk;
        llm_seq s = {.slot = 0, .tokens = ids + at, .n_tokens = len, .logits = logits};
        int rc = llm_decode(c, &s, 1, err, errlen);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static int generate(const llm_model *m, llm_ctx *c, const run_opts *o, gen_out *g, char *err,
                    size_t errlen)
{
    const tok *tk = llm_model_tok(m);
    int n_vocab = llm_model_hparams(m)->n_vocab;
    size_t plen = strlen(o->prompt), cap = plen + 2;
    g->prompt = malloc(cap * sizeof(int32_t));
    g->gen = malloc(((size_t)o->max_tokens + 1) * sizeof(int32_t));
    g->text = malloc((size_t)o->max_tokens * TOK_MAX_PIECE_LEN + 1);
    float *logits = malloc((size_t)n_vocab * sizeof(float));
    sampler *smp = NULL;
    size_t n;
    int rc = g->prompt && g->gen && g->text && logits ? 0 : FB_ENOMEM;
    if (rc == 0)
        rc = sampler_new(n_vocab, &o->sp, &smp);
    if (rc == 0)
        rc = tok_encode(tk, o->prompt, plen, llm_model_hparams(m)->add_bos, g->prompt, cap, &n);
    if (rc < 0) {
        rc = fb_errf(err, errlen, rc, "cannot prepare the prompt: %s", fb_strerror(rc));
        goto out;
    }
    g->n_prompt = (int)n;
    if (g->n_prompt + o->max_tokens > llm_ctx_n_ctx(c)) {
        rc = fb_errf(err, errlen, FB_ETOOBIG,
                     "%d prompt tokens + %d to generate exceed the context of %d (--ctx)",
                     g->n_prompt, o->max_tokens, llm_ctx_n_ctx(c));
        goto out;
    }
    double t0 = now_ms();
    rc = prefill(c, g->prompt, g->n_prompt, logits, err, errlen);
    g->prompt_ms = now_ms() - t0;
    if (rc == 0 && o->logits_path)
        rc = write_logits(o->logits_path, logits, n_vocab);
    t0 = now_ms();
    while (rc == 0 && g->n_gen < o->max_tokens) {
        int32_t id = sampler_next(smp, logits);
        g->gen[g->n_gen++] = id;
        size_t plen_out;
        tok_decode_piece(tk, id, g->text + g->text_len, TOK_MAX_PIECE_LEN, &plen_out);
        if (!o->json) {
            fwrite(g->text + g->text_len, 1, plen_out, stdout);
            fflush(stdout);
        }
        g->text_len += plen_out;
        if ((id == tok_eos(tk) && !o->ignore_eos) || g->n_gen == o->max_tokens)
            break;
        llm_seq s = {.slot = 0, .tokens = &id, .n_tokens = 1, .logits = logits};
        rc = llm_decode(c, &s, 1, err, errlen);
    }
    g->decode_ms = now_ms() - t0;
out:
    sampler_free(smp);
    free(logits);
    return rc;
}

static void print_json(const llm_model *m, const llm_ctx *c, const gen_out *g)
{
    json_t *o = json_object();
    json_object_set_new(o, "model", json_string(llm_model_name(m)));
    json_object_set_new(o, "kernels", json_string(llm_ctx_path_name(c)));
    json_object_set_new(o, "prompt_tokens", ids_json(g->prompt, g->n_prompt));
    json_object_set_new(o, "tokens", ids_json(g->gen, g->n_gen));
    json_object_set_new(o, "text", text_json(g->text, g->text_len));
    char *hex = malloc(g->text_len * 2 + 1);
    if (hex) {
        for (size_t i = 0; i < g->text_len; i++)
            snprintf(hex + 2 * i, 3, "%02x", (unsigned char)g->text[i]);
        hex[g->text_len * 2] = '\0';
        json_object_set_new(o, "text_hex", json_string(hex));
        free(hex);
    }
    json_object_set_new(o, "prompt_ms", json_real(g->prompt_ms));
    json_object_set_new(o, "decode_ms", json_real(g->decode_ms));
    json_object_set_new(o, "decode_tokens_per_s",
                        json_real(g->decode_ms > 0 ? g->n_gen * 1e3 / g->decode_ms : 0));
    json_dumpf(o, stdout, JSON_COMPACT);
    putchar('\n');
    json_decref(o);
}

int cmd_model_run(int argc, char **argv)
{
    run_opts o;
    int rc = parse_opts(argc, argv, &o);
    if (rc == 1)
        return 0;
    if (rc < 0)
        return 2;
    char err[1024];
    llm_model *m = NULL;
    llm_ctx *c = NULL;
    gen_out g = {0};
    rc = llm_model_load(o.model, &m, err, sizeof err);
    if (rc == 0) {
        llm_ctx_params cp = {.n_slots = 1,
                             .n_ctx = o.n_ctx,
                             .n_threads = o.threads,
                             .path = o.path,
                             .max_tokens = 64,
                             .kv_f32 = o.kv_f32};
        rc = llm_ctx_new(m, &cp, &c, err, sizeof err);
    }
    if (rc == 0)
        rc = generate(m, c, &o, &g, err, sizeof err);
    if (rc == 0 && o.json)
        print_json(m, c, &g);
    else if (rc == 0)
        putchar('\n');
    if (rc < 0)
        fprintf(stderr, "fedbft model run: %s\n", err);
    free(g.prompt);
    free(g.gen);
    free(g.text);
    llm_ctx_free(c);
    llm_model_free(m);
    return rc < 0 ? 1 : 0;
}
