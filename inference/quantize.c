/* quantize.c - copy a GGUF model with its matrices converted to another
 * weight type, one tensor at a time through the GGUF writer. */
#include "quantize.h"

#include "fb_error.h"
#include "gguf.h"
#include "gguf_writer.h"
#include "kernels.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

#define QUANT_VERSION 2 /* general.quantization_version ggml writes with Q8_0 */

/* One output tensor that needs converting: where it comes from, what it
 * becomes. */
typedef struct qjob {
    const gguf_tensor *src;
    uint32_t dst_type;
} qjob;

int quant_type_from_name(const char *name, uint32_t *type)
{
    if (strcasecmp(name, "f32") == 0)
        *type = GGUF_TENSOR_F32;
    else if (strcasecmp(name, "f16") == 0)
        *type = GGUF_TENSOR_F16;
    else if (strcasecmp(name, "q8_0") == 0)
        *type = GGUF_TENSOR_Q8_0;
    else
        return FB_EINVAL;
    return 0;
}

uint32_t quant_file_type(uint32_t tensor_type)
{
    /* llama_ftype: ALL_F32 = 0, MOSTLY_F16 = 1, MOSTLY_Q8_0 = 7 */
    return tensor_type == GGUF_TENSOR_Q8_0 ? 7 : tensor_type == GGUF_TENSOR_F16 ? 1 : 0;
}

static uint64_t row_bytes(uint32_t type, uint64_t ne0)
{
    uint64_t ne[1] = {ne0};
    return gguf_w_tensor_nbytes(type, 1, ne);
}

/* Expand each row of the source to floats and store it in the target type. */
static int convert(void *arg, void *dst, uint64_t nbytes, char *err, size_t errlen)
{
    const qjob *j = arg;
    const gguf_tensor *t = j->src;
    int n = (int)t->ne[0];
    uint64_t rows = t->ne[1] * t->ne[2] * t->ne[3];
    uint64_t in_row = row_bytes(t->type, t->ne[0]), out_row = row_bytes(j->dst_type, t->ne[0]);
    float *tmp = malloc((size_t)n * sizeof *tmp);
    if (!tmp)
        return fb_errf(err, errlen, FB_ENOMEM, "out of memory converting tensor '%s'", t->name);
    for (uint64_t r = 0; r < rows; r++) {
        const uint8_t *in = (const uint8_t *)t->data + r * in_row;
        uint8_t *out = (uint8_t *)dst + r * out_row;
        kn_row_to_f32((int)t->type, in, tmp, n);
        if (j->dst_type == GGUF_TENSOR_F32) {
            memcpy(out, tmp, (size_t)n * sizeof *tmp);
        } else if (j->dst_type == GGUF_TENSOR_F16) {
            for (int i = 0; i < n; i++) {
                uint16_t h = kn_f32_to_fp16(tmp[i]);
                memcpy(out + 2 * (size_t)i, &h, 2);
            }
        } else {
            kn_quantize_q8_weights(tmp, (kn_q8 *)out, n);
        }
    }
    (void)nbytes; /* == rows * out_row, checked by the writer at add time */
    free(tmp);
    return 0;
}

/* The type tensor t should have in the output. */
static uint32_t target_type(const gguf_tensor *t, uint32_t type)
{
    if (t->n_dims < 2)
        return GGUF_TENSOR_F32;
    if (type == GGUF_TENSOR_Q8_0 && t->ne[0] % KN_QK)
        return t->type;
    return type;
}

static int copy_kvs(gguf_w *w, const gguf_file *f, uint32_t type)
{
    bool have_ftype = false, have_qv = false;
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < gguf_n_kv(f); i++) {
        const gguf_kv *kv = gguf_kv_at(f, i);
        if (strcmp(kv->key, "general.file_type") == 0) {
            rc = gguf_w_add_u32(w, kv->key, quant_file_type(type));
            have_ftype = true;
        } else if (strcmp(kv->key, "general.quantization_version") == 0 &&
                   type == GGUF_TENSOR_Q8_0) {
            rc = gguf_w_add_u32(w, kv->key, QUANT_VERSION);
            have_qv = true;
        } else {
            rc = gguf_w_copy_kv(w, kv);
        }
    }
    if (rc == 0 && !have_ftype)
        rc = gguf_w_add_u32(w, "general.file_type", quant_file_type(type));
    if (rc == 0 && !have_qv && type == GGUF_TENSOR_Q8_0)
        rc = gguf_w_add_u32(w, "general.quantization_version", QUANT_VERSION);
    return rc;
}

/* The input type that holds most matrix bytes, for the summary line. */
static uint32_t dominant_type(const gguf_file *f)
{
    uint64_t bytes[3] = {0}; /* F32, F16, Q8_0 */
    for (size_t i = 0; i < gguf_n_tensors(f); i++) {
        const gguf_tensor *t = gguf_tensor_at(f, i);
        if (t->n_dims >= 2)
            bytes[t->type == GGUF_TENSOR_F32 ? 0 : t->type == GGUF_TENSOR_F16 ? 1 : 2] += t->nbytes;
    }
    if (bytes[2] >= bytes[0] && bytes[2] >= bytes[1] && bytes[2])
        return GGUF_TENSOR_Q8_0;
    return bytes[1] > bytes[0] ? GGUF_TENSOR_F16 : GGUF_TENSOR_F32;
}

int quant_file(const char *in, const char *out, uint32_t type, unsigned flags, quant_result *res,
               char *err, size_t errlen)
{
    if (type != GGUF_TENSOR_F32 && type != GGUF_TENSOR_F16 && type != GGUF_TENSOR_Q8_0)
        return fb_errf(err, errlen, FB_EINVAL,
                       "quantize: target type %u is not supported (f32, f16 or q8_0)", type);
    gguf_file *f = NULL;
    int rc = gguf_open(in, &f, err, errlen);
    if (rc)
        return rc;
    size_t nt = gguf_n_tensors(f);
    qjob *jobs = calloc(nt ? nt : 1, sizeof *jobs);
    gguf_w *w = NULL;
    struct stat st;
    quant_result r = {.in_type = dominant_type(f),
                      .in_bytes = stat(in, &st) == 0 ? (uint64_t)st.st_size : 0};
    if (!jobs || gguf_w_new(&w) != 0) {
        rc = fb_errf(err, errlen, FB_ENOMEM, "out of memory quantizing %s", in);
        goto out;
    }
    rc = copy_kvs(w, f, type);
    for (size_t i = 0; rc == 0 && i < nt; i++) {
        const gguf_tensor *t = gguf_tensor_at(f, i);
        uint32_t to = target_type(t, type);
        if (to == t->type) {
            rc = gguf_w_add_tensor(w, t->name, t->type, t->n_dims, t->ne, t->data, t->nbytes);
            r.n_copied++;
            continue;
        }
        if (t->ne[0] > INT_MAX) {
            rc = fb_errf(err, errlen, FB_ETOOBIG,
                         "%s: tensor '%s': rows of %llu elements are too long", in, t->name,
                         (unsigned long long)t->ne[0]);
            goto out;
        }
        jobs[i] = (qjob){.src = t, .dst_type = to};
        rc = gguf_w_add_tensor_fn(w, t->name, to, t->n_dims, t->ne,
                                  gguf_w_tensor_nbytes(to, t->n_dims, t->ne), convert, &jobs[i]);
        r.n_converted++;
    }
    /* the write reports any failed add, naming the output file */
    rc = gguf_w_write(w, out, flags, &r.out_bytes, err, errlen);
    if (rc == 0 && res)
        *res = r;
out:
    gguf_w_free(w);
    free(jobs);
    gguf_close(f);
    return rc;
}
