/* fuzz_gguf.c - hostile bytes into the GGUF loader: errors are fine; crashes
 * and reads outside the buffer are not.  On success every accessor is walked
 * so a bad bound in the parser shows up as an out-of-bounds read. */
#include "fuzz.h"

#include "fb_error.h"
#include "gguf.h"

#include <stdlib.h>
#include <string.h>

static void walk(const gguf_file *f)
{
    volatile unsigned sum = 0;
    for (size_t i = 0; i < gguf_n_kv(f); i++) {
        const gguf_kv *kv = gguf_kv_at(f, i);
        const char *s;
        size_t len;
        double d;
        if (gguf_kv_str(kv, &s, &len) == 0 && len)
            sum += (unsigned char)s[len - 1];
        if (kv->type != GGUF_TYPE_ARRAY && kv->type != GGUF_TYPE_STRING)
            gguf_kv_f64(kv, &d);
        for (uint64_t j = 0; kv->type == GGUF_TYPE_ARRAY && j < kv->arr_n; j++) {
            if (gguf_arr_str(kv, j, &s, &len) == 0 && len)
                sum += (unsigned char)s[len - 1];
            else if (gguf_arr_f64(kv, j, &d) == 0)
                sum += d > 0;
        }
        sum += gguf_find_kv(f, kv->key) == kv;
    }
    for (size_t i = 0; i < gguf_n_tensors(f); i++) {
        const gguf_tensor *t = gguf_tensor_at(f, i);
        if (t->nbytes)
            sum += ((const unsigned char *)t->data)[0] +
                   ((const unsigned char *)t->data)[t->nbytes - 1];
        sum += gguf_find_tensor(f, t->name) == t;
    }
    (void)sum;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* an exactly-sized copy, so ASan catches a read one past the end */
    uint8_t *copy = malloc(size ? size : 1);
    if (!copy)
        return 0;
    memcpy(copy, data, size);
    gguf_file *f = NULL;
    char err[512];
    if (gguf_open_mem(copy, size, "fuzz.gguf", &f, err, sizeof err) == 0) {
        walk(f);
        gguf_close(f);
    }
    free(copy);
    return 0;
}

/* ---- seeds: small valid files ---- */

typedef struct wbuf {
    uint8_t *p;
    size_t len, cap;
    int full;
} wbuf;

static void put(wbuf *w, const void *d, size_t n)
{
    if (n > w->cap - w->len) {
        w->full = 1;
        return;
    }
    memcpy(w->p + w->len, d, n);
    w->len += n;
}

static void w_u32(wbuf *w, uint32_t v)
{
    uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    put(w, b, 4);
}

static void w_u64(wbuf *w, uint64_t v)
{
    w_u32(w, (uint32_t)v);
    w_u32(w, (uint32_t)(v >> 32));
}

static void w_str(wbuf *w, const char *s)
{
    w_u64(w, strlen(s));
    put(w, s, strlen(s));
}

static void w_tensor(wbuf *w, const char *name, uint32_t type, uint64_t ne0, uint64_t ne1,
                     uint64_t off)
{
    w_str(w, name);
    w_u32(w, ne1 ? 2 : 1);
    w_u64(w, ne0);
    if (ne1)
        w_u64(w, ne1);
    w_u32(w, type);
    w_u64(w, off);
}

/* Seed 0: metadata of every value type and F32/F16/Q8_0 tensors at the
 * default alignment; seed 1: the same with general.alignment 64 and v2. */
size_t fuzz_seed(int i, uint8_t *buf, size_t cap)
{
    if (i < 0 || i > 1)
        return 0;
    uint32_t align = i ? 64 : 32;
    wbuf w = {buf, 0, cap, 0};
    put(&w, "GGUF", 4);
    w_u32(&w, i ? 2 : 3);
    w_u64(&w, 3);
    w_u64(&w, i ? 6 : 5);
    w_str(&w, "general.architecture");
    w_u32(&w, GGUF_TYPE_STRING);
    w_str(&w, "llama");
    w_str(&w, "llama.block_count");
    w_u32(&w, GGUF_TYPE_UINT32);
    w_u32(&w, 2);
    w_str(&w, "llama.rope.freq_base");
    w_u32(&w, GGUF_TYPE_FLOAT32);
    w_u32(&w, 0x461c4000); /* 10000.0f */
    w_str(&w, "tokenizer.ggml.tokens");
    w_u32(&w, GGUF_TYPE_ARRAY);
    w_u32(&w, GGUF_TYPE_STRING);
    w_u64(&w, 3);
    w_str(&w, "<unk>");
    w_str(&w, "<s>");
    w_str(&w, "a");
    w_str(&w, "tokenizer.ggml.scores");
    w_u32(&w, GGUF_TYPE_ARRAY);
    w_u32(&w, GGUF_TYPE_FLOAT32);
    w_u64(&w, 2);
    w_u32(&w, 0);
    w_u32(&w, 0xbf800000); /* -1.0f */
    if (i) {
        w_str(&w, "general.alignment");
        w_u32(&w, GGUF_TYPE_UINT32);
        w_u32(&w, align);
    }
    w_tensor(&w, "a.weight", GGUF_TENSOR_F32, 4, 2, 0);
    w_tensor(&w, "b.weight", GGUF_TENSOR_F16, 4, 0, align);
    w_tensor(&w, "c.weight", GGUF_TENSOR_Q8_0, 32, 1, 2 * (uint64_t)align);
    static const uint8_t zero[256];
    put(&w, zero, (align - w.len % align) % align);
    uint8_t data[256];
    for (size_t b = 0; b < sizeof data; b++)
        data[b] = (uint8_t)(b * 37 + 11);
    put(&w, data, 2 * align + 34);
    return w.full ? 0 : w.len;
}
