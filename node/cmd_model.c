/* cmd_model.c - `fedbft model`: inspect GGUF model files (info); synth, run
 * and quantize arrive with the rest of the inference engine. */
#include "cli.h"

#include "fb_error.h"
#include "gguf.h"

#include <stdio.h>
#include <string.h>

#define ARRAY_PREVIEW 5 /* elements shown per array */
#define STR_PREVIEW 48  /* bytes shown per string */

void cmd_model_usage(FILE *out)
{
    fprintf(out, "Usage: fedbft model info FILE.gguf\n\n"
                 "Validate a GGUF model file and print its metadata (arrays summarised as\n"
                 "type, count and first elements) and its tensor table (name, type, shape,\n"
                 "bytes, offset in the file).\n\n"
                 "Later: model synth, model run and model quantize.\n");
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
    fprintf(stderr, "fedbft model: unknown subcommand '%s' (only 'info' exists so far)\n", argv[1]);
    return 2;
}
