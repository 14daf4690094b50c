/* cmd_model.c - `fedbft model`: inspect GGUF model files (info), write a
 * deterministic test model (synth) and convert weight types (quantize). */
#include "cli.h"

#include "fb_error.h"
#include "gguf.h"
#include "model.h"
#include "gguf_writer.h"
#include "quantize.h"
#include "synth.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ARRAY_PREVIEW 5 /* elements shown per array */
#define STR_PREVIEW 48  /* bytes shown per string */

static void synth_usage(FILE *out)
{
    fprintf(out,
            "Usage: fedbft model synth --preset tiny|small --out FILE [--type f32|f16|q8_0]\n"
            "                          [--seed N] [--force]\n\n"
            "Write a llama-family GGUF model with deterministic pseudo-random weights and a\n"
            "small SentencePiece-style vocabulary learned from built-in English text, so\n"
            "the inference engine runs with no download.  The same arguments always give a\n"
            "byte-identical file.\n\n"
            "  --preset tiny    64 embd, 2 layers, 4 heads (2 kv), ff 176, vocab 512, f32\n"
            "  --preset small   512 embd, 8 layers, 8 heads, ff 1408, vocab 2048, q8_0\n"
            "  --out FILE       the model file to write (atomically)\n"
            "  --type T         weight matrices as f32, f16 or q8_0 (default: the preset's)\n"
            "  --seed N         weight seed (default %u)\n"
            "  --force          replace FILE if it exists\n",
            SYNTH_DEFAULT_SEED);
}

static void quantize_usage(FILE *out)
{
    fprintf(out, "Usage: fedbft model quantize IN.gguf OUT.gguf [--type q8_0|f16|f32] [--force]\n\n"
                 "Copy a GGUF model, converting its weight matrices (token_embd and output\n"
                 "included) to the given type, default q8_0; norms stay f32 and every\n"
                 "key/value is kept (general.file_type is updated).  Prints both sizes.\n\n"
                 "  --type T   target type: q8_0, f16 or f32\n"
                 "  --force    replace OUT if it exists\n");
}

void cmd_model_usage(FILE *out)
{
    fprintf(out, "Usage: fedbft model info FILE.gguf\n"
                 "       fedbft model synth --preset tiny|small --out FILE [options]\n"
                 "       fedbft model quantize IN.gguf OUT.gguf [--type q8_0|f16|f32]\n"
                 "       fedbft model run --model FILE --prompt TEXT [options]\n\n"
                 "info: validate a GGUF model file and print its metadata (arrays summarised\n"
                 "as type, count and first elements) and its tensor table (name, type, shape,\n"
                 "bytes, offset in the file).\n\n");
    synth_usage(out);
    fputc('\n', out);
    quantize_usage(out);
    fputc('\n', out);
    cmd_model_run_usage(out);
}

/* Print a string value quoted, escaping control bytes, cut at STR_PREVIEW. */
static void print_str(const char *s, size_t len)
{
    putchar('"');
    size_t n = len < STR_PREVIEW ? len : STR_PREVIEW;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\')
            printf("\\%c", ch);
        else if (ch < 0x20 || ch == 0x7f)
            printf("\\x%02x", ch);
        else
            putchar(ch);
    }
    putchar('"');
    if (n < len)
        printf("...(%zu bytes)", len);
}

static int is_float(uint32_t t)
{
    return t == GGUF_TYPE_FLOAT32 || t == GGUF_TYPE_FLOAT64;
}

static void print_scalar(const gguf_kv *kv)
{
    const char *s;
    size_t len;
    double d;
    int64_t i;
    uint64_t u;
    if (gguf_kv_str(kv, &s, &len) == 0)
        print_str(s, len);
    else if (kv->type == GGUF_TYPE_BOOL)
        printf("%s", kv->val[0] ? "true" : "false");
    else if (is_float(kv->type) && gguf_kv_f64(kv, &d) == 0)
        printf("%.9g", d);
    else if (gguf_kv_u64(kv, &u) == 0)
        printf("%llu", (unsigned long long)u);
    else if (gguf_kv_i64(kv, &i) == 0)
        printf("%lld", (long long)i);
}

static void print_array(const gguf_kv *kv)
{
    printf("[%s x %llu]", gguf_type_name(kv->arr_type), (unsigned long long)kv->arr_n);
    uint64_t n = kv->arr_n < ARRAY_PREVIEW ? kv->arr_n : ARRAY_PREVIEW;
    for (uint64_t j = 0; j < n; j++) {
        const char *s;
        size_t len;
        double d;
        int64_t i;
        putchar(j ? ',' : ' ');
        putchar(j ? ' ' : '[');
        if (gguf_arr_str(kv, j, &s, &len) == 0)
            print_str(s, len);
        else if (!is_float(kv->arr_type) && gguf_arr_i64(kv, j, &i) == 0)
            printf("%lld", (long long)i);
        else if (gguf_arr_f64(kv, j, &d) == 0)
            printf("%.9g", d);
    }
    if (n)
        printf("%s]", n < kv->arr_n ? ", ..." : "");
}

static void print_info(const char *path, const gguf_file *f)
{
    size_t nkv = gguf_n_kv(f), nt = gguf_n_tensors(f);
    uint64_t total = 0;
    for (size_t i = 0; i < nt; i++)
        total += gguf_tensor_at(f, i)->nbytes;
    printf("file: %s\nGGUF version %u, alignment %u, data at offset %llu\n"
           "%zu metadata keys, %zu tensors, %llu bytes of tensor data\n\nmetadata:\n",
           path, gguf_version(f), gguf_alignment(f), (unsigned long long)gguf_data_offset(f), nkv,
           nt, (unsigned long long)total);
    for (size_t i = 0; i < nkv; i++) {
        const gguf_kv *kv = gguf_kv_at(f, i);
        printf("  %-40s %-7s ", kv->key, gguf_type_name(kv->type));
        if (kv->type == GGUF_TYPE_ARRAY)
            print_array(kv);
        else
            print_scalar(kv);
        putchar('\n');
    }
    printf("\ntensors:\n  %-32s %-5s %-22s %12s %12s\n", "name", "type", "shape", "bytes",
           "offset");
    for (size_t i = 0; i < nt; i++) {
        const gguf_tensor *t = gguf_tensor_at(f, i);
        char shape[96];
        int len = snprintf(shape, sizeof shape, "[");
        for (uint32_t d = 0; d < t->n_dims && len > 0 && (size_t)len < sizeof shape; d++)
            len += snprintf(shape + len, sizeof shape - (size_t)len, "%s%llu", d ? ", " : "",
                            (unsigned long long)t->ne[d]);
        if (len > 0 && (size_t)len < sizeof shape)
            snprintf(shape + len, sizeof shape - (size_t)len, "]");
        printf("  %-32s %-5s %-22s %12llu %12llu\n", t->name, gguf_tensor_type_name(t->type), shape,
               (unsigned long long)t->nbytes,
               (unsigned long long)(gguf_data_offset(f) + t->offset));
    }
}

static int model_info(int argc, char **argv)
{
    if (argc != 2) {
        cmd_model_usage(stderr);
        return 2;
    }
    gguf_file *f = NULL;
    char err[1024];
    if (gguf_open(argv[1], &f, err, sizeof err) != 0) {
        fprintf(stderr, "fedbft model info: %s\n", err);
        return 1;
    }
    print_info(argv[1], f);
    gguf_close(f);
    uint8_t d[16];
    uint64_t bytes;
    if (llm_file_digest(argv[1], d, &bytes, err, sizeof err) == 0) {
        printf("\ndigest (XXH3-128 of the file, as cluster.json model_digest): ");
        for (int i = 0; i < 16; i++)
            printf("%02x", d[i]);
        putchar('\n');
    }
    return 0;
}

static double megabytes(uint64_t bytes)
{
    return (double)bytes / 1e6;
}

static int parse_seed(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 0);
    if (errno || end == s || *end || *s == '-')
        return -1;
    *out = v;
    return 0;
}

static int model_synth(int argc, char **argv)
{
    static const struct option opts[] = {
        {"preset", required_argument, NULL, 'p'}, {"out", required_argument, NULL, 'o'},
        {"type", required_argument, NULL, 't'},   {"seed", required_argument, NULL, 's'},
        {"force", no_argument, NULL, 'f'},        {NULL, 0, NULL, 0},
    };
    const char *preset = NULL, *out = NULL, *type_name = NULL;
    uint64_t seed = SYNTH_DEFAULT_SEED;
    unsigned flags = 0;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "p:o:t:s:f", opts, NULL)) != -1) {
        switch (c) {
        case 'p':
            preset = optarg;
            break;
        case 'o':
            out = optarg;
            break;
        case 't':
            type_name = optarg;
            break;
        case 's':
            if (parse_seed(optarg, &seed) != 0) {
                fprintf(stderr, "fedbft model synth: --seed '%s' is not a number\n", optarg);
                return 2;
            }
            break;
        case 'f':
            flags |= GGUF_W_OVERWRITE;
            break;
        default:
            synth_usage(stderr);
            return 2;
        }
    }
    const char *problem = !preset          ? "--preset tiny|small is required"
                          : !out           ? "--out FILE is required"
                          : optind != argc ? "unexpected argument"
                                           : NULL;
    if (problem) {
        fprintf(stderr, "fedbft model synth: %s\n\n", problem);
        synth_usage(stderr);
        return 2;
    }
    const synth_config *cfg = synth_preset(preset);
    if (!cfg) {
        fprintf(stderr, "fedbft model synth: unknown preset '%s' (tiny or small)\n", preset);
        return 2;
    }
    uint32_t type = cfg->type;
    if (type_name && quant_type_from_name(type_name, &type) != 0) {
        fprintf(stderr, "fedbft model synth: unknown --type '%s' (f32, f16 or q8_0)\n", type_name);
        return 2;
    }
    char err[1024];
    uint64_t size = 0;
    if (synth_write(cfg, type, seed, out, flags, &size, err, sizeof err) != 0) {
        fprintf(stderr, "fedbft model synth: %s\n", err);
        return 1;
    }
    printf("wrote %s: %.1f MB (%s, preset %s, seed %llu)\n", out, megabytes(size),
           gguf_tensor_type_name(type), cfg->name, (unsigned long long)seed);
    return 0;
}

static int model_quantize(int argc, char **argv)
{
    static const struct option opts[] = {
        {"type", required_argument, NULL, 't'},
        {"force", no_argument, NULL, 'f'},
        {NULL, 0, NULL, 0},
    };
    const char *type_name = "q8_0";
    unsigned flags = 0;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "t:f", opts, NULL)) != -1) {
        switch (c) {
        case 't':
            type_name = optarg;
            break;
        case 'f':
            flags |= GGUF_W_OVERWRITE;
            break;
        default:
            quantize_usage(stderr);
            return 2;
        }
    }
    if (argc - optind != 2) {
        fprintf(stderr, "fedbft model quantize: expected IN.gguf and OUT.gguf\n\n");
        quantize_usage(stderr);
        return 2;
    }
    uint32_t type;
    if (quant_type_from_name(type_name, &type) != 0) {
        fprintf(stderr, "fedbft model quantize: unknown --type '%s' (q8_0, f16 or f32)\n",
                type_name);
        return 2;
    }
    const char *in = argv[optind], *out = argv[optind + 1];
    char err[1024];
    quant_result r;
    if (quant_file(in, out, type, flags, &r, err, sizeof err) != 0) {
        fprintf(stderr, "fedbft model quantize: %s\n", err);
        return 1;
    }
    printf("wrote %s: %.1f MB (%s), input %.1f MB (%s): %.3fx\n", out, megabytes(r.out_bytes),
           gguf_tensor_type_name(type), megabytes(r.in_bytes), gguf_tensor_type_name(r.in_type),
           r.in_bytes ? (double)r.out_bytes / (double)r.in_bytes : 0.0);
    return 0;
}

int cmd_model(int argc, char **argv)
{
    if (argc < 2) {
        cmd_model_usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "info") == 0)
        return model_info(argc - 1, argv + 1);
    if (strcmp(argv[1], "synth") == 0)
        return model_synth(argc - 1, argv + 1);
    if (strcmp(argv[1], "quantize") == 0)
        return model_quantize(argc - 1, argv + 1);
    if (strcmp(argv[1], "run") == 0)
        return cmd_model_run(argc - 1, argv + 1);
    fprintf(stderr, "fedbft model: unknown subcommand '%s' (info, synth, quantize or run)\n",
            argv[1]);
    return 2;
}
