/* test_gguf.c - the GGUF loader: a well-formed file reads back field by
 * field, every kind of malformed file is rejected with a message (and under
 * ASan, without reading a byte outside the buffer), and the reference llama
 * files load when ../shared/testdata is present. */
#include "fb_error.h"
#include "gguf.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

/* ---- a small GGUF writer ---- */

typedef struct wbuf {
    uint8_t *p;
    size_t len, cap;
} wbuf;

static void put(wbuf *w, const void *d, size_t n)
{
    if (w->len + n > w->cap) {
        w->cap = (w->len + n) * 2 + 64;
        w->p = realloc(w->p, w->cap);
        assert_non_null(w->p);
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

static void w_key(wbuf *w, const char *k, uint32_t type)
{
    w_str(w, k);
    w_u32(w, type);
}

static void w_pad(wbuf *w, size_t align)
{
    static const uint8_t zero[256];
    while (w->len % align)
        put(w, zero, 1);
}

/* What to break in the otherwise valid file. */
typedef struct spec {
    int bad_magic;
    uint32_t version;   /* 0: 3 */
    uint64_t n_tensors; /* 0: the real count */
    uint64_t n_kv;      /* 0: the real count */
    uint32_t alignment; /* 0: no general.alignment key (default 32) */
    int bad_kv;         /* 1 string length past EOF, 2 unknown type, 3 nested array */
    uint32_t t0_dims;   /* 0: 2 */
    int t0_zero_dim;
    int t0_overflow;
    uint32_t t0_type; /* 0: F32 (use 100+N to write type N) */
    int t1_misalign;
    int t2_past_eof;
    int dup_name;
} spec;

#define N_KV_BASE 8

static const float f32_data[6] = {0, 1, 2, 3, 4, 5.5f};
static const uint16_t f16_data[4] = {0x3c00, 0x4000, 0xc000, 0x0000}; /* 1, 2, -2, 0 */

/* Write the file; returns the buffer (caller frees).  Tensors:
 *   a.f32 F32 [3,2], b.f16 F16 [4], c.q8 Q8_0 [32,2]. */
static wbuf build(const spec *s)
{
    wbuf w = {0};
    uint32_t align = s->alignment ? s->alignment : 32;
    put(&w, s->bad_magic ? "GGUX" : "GGUF", 4);
    w_u32(&w, s->version ? s->version : 3);
    uint64_t nkv = N_KV_BASE + (s->alignment ? 1 : 0) + (s->bad_kv ? 1 : 0);
    w_u64(&w, s->n_tensors ? s->n_tensors : 3);
    w_u64(&w, s->n_kv ? s->n_kv : nkv);

    w_key(&w, "general.architecture", GGUF_TYPE_STRING);
    w_str(&w, "llama");
    w_key(&w, "test.u32", GGUF_TYPE_UINT32);
    w_u32(&w, 7);
    w_key(&w, "test.i32", GGUF_TYPE_INT32);
    w_u32(&w, (uint32_t)-5);
    w_key(&w, "test.f32", GGUF_TYPE_FLOAT32);
    w_u32(&w, 0x3fc00000); /* 1.5f */
    w_key(&w, "test.u64", GGUF_TYPE_UINT64);
    w_u64(&w, 1ull << 40);
    w_key(&w, "test.bool", GGUF_TYPE_BOOL);
    put(&w, "\1", 1);
    w_key(&w, "test.arr_str", GGUF_TYPE_ARRAY);
    w_u32(&w, GGUF_TYPE_STRING);
    w_u64(&w, 3);
    w_str(&w, "a");
    w_str(&w, "bc");
    w_str(&w, "def");
    w_key(&w, "test.arr_i32", GGUF_TYPE_ARRAY);
    w_u32(&w, GGUF_TYPE_INT32);
    w_u64(&w, 3);
    w_u32(&w, 1);
    w_u32(&w, (uint32_t)-2);
    w_u32(&w, 3);
    if (s->alignment) {
        w_key(&w, "general.alignment", GGUF_TYPE_UINT32);
        w_u32(&w, s->alignment);
    }
    if (s->bad_kv == 1) {
        w_key(&w, "test.bad", GGUF_TYPE_STRING);
        w_u64(&w, 1u << 30);
    } else if (s->bad_kv == 2) {
        w_key(&w, "test.bad", 13);
        w_u32(&w, 0);
    } else if (s->bad_kv == 3) {
        w_key(&w, "test.bad", GGUF_TYPE_ARRAY);
        w_u32(&w, GGUF_TYPE_ARRAY);
        w_u64(&w, 1);
        w_u32(&w, GGUF_TYPE_UINT8);
        w_u64(&w, 0);
    }
    uint32_t align_data = s->alignment && (s->alignment & (s->alignment - 1)) ? 32 : align;
    uint64_t off_b = 32 > align_data ? 32 : align_data; /* a.f32 is 24 bytes */
    uint64_t off_c = off_b + align_data * ((8 + align_data - 1) / align_data);

    /* a.f32 */
    w_str(&w, "a.f32");
    uint32_t nd = s->t0_dims ? s->t0_dims : 2;
    w_u32(&w, nd);
    for (uint32_t d = 0; d < nd && d < 8; d++)
        w_u64(&w, s->t0_zero_dim && d == 1 ? 0
                  : s->t0_overflow         ? (1ull << 40)
                  : d == 0                 ? 3
                  : d == 1                 ? 2
                                           : 1);
    w_u32(&w, s->t0_type >= 100 ? s->t0_type - 100 : GGUF_TENSOR_F32);
    w_u64(&w, 0);
    /* b.f16 (or a duplicate name) */
    w_str(&w, s->dup_name ? "a.f32" : "b.f16");
    w_u32(&w, 1);
    w_u64(&w, 4);
    w_u32(&w, GGUF_TENSOR_F16);
    w_u64(&w, off_b + (s->t1_misalign ? 2 : 0));
    /* c.q8 */
    w_str(&w, "c.q8");
    w_u32(&w, 2);
    w_u64(&w, 32);
    w_u64(&w, 2);
    w_u32(&w, GGUF_TENSOR_Q8_0);
    w_u64(&w, off_c + (s->t2_past_eof ? align_data : 0));

    w_pad(&w, align_data);
    size_t data = w.len;
    put(&w, f32_data, sizeof f32_data);
    while (w.len < data + off_b)
        put(&w, "", 1);
    put(&w, f16_data, sizeof f16_data);
    while (w.len < data + off_c)
        put(&w, "", 1);
    for (int blk = 0; blk < 2; blk++) {
        w_u32(&w, 0); /* placeholder, patched below */
        w.len -= 2;   /* the scale is 2 bytes */
        uint8_t q[32];
        for (int i = 0; i < 32; i++)
            q[i] = (uint8_t)(i - 16 + blk);
        put(&w, q, 32);
    }
    return w;
}

static int open_buf(const wbuf *w, size_t len, gguf_file **f, char *err, size_t errlen)
{
    /* Copy into an exactly-sized heap block so ASan sees any overread. */
    uint8_t *copy = malloc(len ? len : 1);
    assert_non_null(copy);
    memcpy(copy, w->p, len);
    int rc = gguf_open_mem(copy, len, "test.gguf", f, err, errlen);
    if (rc == 0) {
        /* touch every tensor byte while the copy is alive */
        unsigned sum = 0;
        for (size_t i = 0; i < gguf_n_tensors(*f); i++) {
            const gguf_tensor *t = gguf_tensor_at(*f, i);
            for (uint64_t b = 0; b < t->nbytes; b++)
                sum += ((const uint8_t *)t->data)[b];
        }
        (void)sum;
        gguf_close(*f);
        *f = NULL;
    }
    free(copy);
    return rc;
}

/* Expect spec s to be rejected with code (0: any) and a message containing want. */
static void expect_reject(const spec *s, int code, const char *want)
{
    wbuf w = build(s);
    gguf_file *f = NULL;
    char err[512] = "";
    int rc = open_buf(&w, w.len, &f, err, sizeof err);
    if (rc >= 0 || (code && rc != code) || !strstr(err, want))
        fail_msg("rc %d (want %d), message \"%s\" (want \"%s\")", rc, code, err, want);
    assert_null(f);
    free(w.p);
}

static void test_valid(void **state)
{
    (void)state;
    for (int v = 2; v <= 3; v++) {
        for (uint32_t align = 0; align <= 64; align += 64) {
            spec s = {.version = (uint32_t)v, .alignment = align};
            wbuf w = build(&s);
            gguf_file *f = NULL;
            char err[512] = "";
            int rc = gguf_open_mem(w.p, w.len, "t", &f, err, sizeof err);
            if (rc)
                fail_msg("%s", err);
            assert_int_equal(gguf_version(f), v);
            assert_int_equal(gguf_alignment(f), align ? align : 32);
            assert_int_equal(gguf_data_offset(f) % gguf_alignment(f), 0);
            assert_int_equal(gguf_n_kv(f), N_KV_BASE + (align ? 1 : 0));
            assert_string_equal(gguf_kv_at(f, 1)->key, "test.u32");

            const char *str;
            size_t len;
            assert_int_equal(gguf_get_str(f, "general.architecture", &str, &len), 0);
            assert_int_equal(len, 5);
            assert_memory_equal(str, "llama", 5);
            uint32_t u32;
            int32_t i32;
            uint64_t u64;
            float f32;
            int b;
            assert_int_equal(gguf_get_u32(f, "test.u32", &u32), 0);
            assert_int_equal(u32, 7);
            assert_int_equal(gguf_get_i32(f, "test.i32", &i32), 0);
            assert_int_equal(i32, -5);
            assert_int_equal(gguf_get_u32(f, "test.i32", &u32), FB_EINVAL);
            assert_int_equal(gguf_get_f32(f, "test.f32", &f32), 0);
            assert_true(f32 == 1.5f);
            assert_int_equal(gguf_get_u64(f, "test.u64", &u64), 0);
            assert_true(u64 == 1ull << 40);
            assert_int_equal(gguf_get_u32(f, "test.u64", &u32), FB_EINVAL);
            assert_int_equal(gguf_get_bool(f, "test.bool", &b), 0);
            assert_int_equal(b, 1);
            assert_int_equal(gguf_get_u32(f, "no.such.key", &u32), FB_ENOENT);
            assert_int_equal(gguf_get_str(f, "test.u32", &str, &len), FB_EINVAL);

            const gguf_kv *kv;
            uint32_t et;
            uint64_t n;
            assert_int_equal(gguf_get_arr(f, "test.arr_str", &kv, &et, &n), 0);
            assert_int_equal(et, GGUF_TYPE_STRING);
            assert_int_equal(n, 3);
            assert_int_equal(gguf_arr_str(kv, 2, &str, &len), 0);
            assert_int_equal(len, 3);
            assert_memory_equal(str, "def", 3);
            assert_int_equal(gguf_arr_str(kv, 1, &str, &len), 0);
            assert_memory_equal(str, "bc", 2);
            assert_int_equal(gguf_arr_str(kv, 3, &str, &len), FB_EINVAL);
            double d;
            assert_int_equal(gguf_arr_f64(kv, 0, &d), FB_EINVAL);
            assert_int_equal(gguf_get_arr(f, "test.arr_i32", &kv, &et, &n), 0);
            assert_int_equal(et, GGUF_TYPE_INT32);
            int64_t i64;
            assert_int_equal(gguf_arr_i64(kv, 1, &i64), 0);
            assert_int_equal(i64, -2);
            assert_int_equal(gguf_arr_f64(kv, 2, &d), 0);
            assert_true(d == 3.0);
            assert_int_equal(gguf_arr_str(kv, 0, &str, &len), FB_EINVAL);

            assert_int_equal(gguf_n_tensors(f), 3);
            const gguf_tensor *t = gguf_find_tensor(f, "a.f32");
            assert_non_null(t);
            assert_ptr_equal(t, gguf_tensor_at(f, 0));
            assert_int_equal(t->type, GGUF_TENSOR_F32);
            assert_int_equal(t->n_dims, 2);
            assert_int_equal(t->ne[0], 3);
            assert_int_equal(t->ne[1], 2);
            assert_int_equal(t->ne[2], 1);
            assert_int_equal(t->nbytes, 24);
            assert_memory_equal(t->data, f32_data, sizeof f32_data);
            t = gguf_find_tensor(f, "b.f16");
            assert_non_null(t);
            assert_int_equal(t->type, GGUF_TENSOR_F16);
            assert_int_equal(t->n_dims, 1);
            assert_int_equal(t->nbytes, 8);
            assert_int_equal(t->offset % gguf_alignment(f), 0);
            assert_memory_equal(t->data, f16_data, sizeof f16_data);
            t = gguf_find_tensor(f, "c.q8");
            assert_non_null(t);
            assert_int_equal(t->type, GGUF_TENSOR_Q8_0);
            assert_int_equal(t->nbytes, 68);
            assert_int_equal(((const int8_t *)t->data)[2 + 3], 3 - 16);
            assert_ptr_equal((const uint8_t *)t->data + t->nbytes, w.p + w.len);
            assert_null(gguf_find_tensor(f, "nope"));
            gguf_close(f);
            free(w.p);
        }
    }
}

/* Every proper prefix of a valid file is rejected (the last tensor's data
 * runs to the final byte). */
static void test_truncated(void **state)
{
    (void)state;
    spec s = {0};
    wbuf w = build(&s);
    for (size_t cut = 0; cut < w.len; cut++) {
        gguf_file *f = NULL;
        char err[512] = "";
        int rc = open_buf(&w, cut, &f, err, sizeof err);
        if (rc >= 0 || err[0] == 0)
            fail_msg("cut at %zu of %zu: rc %d, message \"%s\"", cut, w.len, rc, err);
    }
    gguf_file *f = NULL;
    char err[512];
    assert_int_equal(open_buf(&w, w.len, &f, err, sizeof err), 0);
    free(w.p);
}

static void test_rejects(void **state)
{
    (void)state;
    expect_reject(&(spec){.bad_magic = 1}, FB_ECORRUPT, "not a GGUF file");
    expect_reject(&(spec){.version = 1}, FB_EVERSION, "version 1");
    expect_reject(&(spec){.version = 4}, FB_EVERSION, "version 4");
    expect_reject(&(spec){.n_tensors = (1u << 20) + 1}, FB_ETOOBIG, "tensor count");
    expect_reject(&(spec){.n_tensors = 1000}, FB_ETOOBIG, "tensor count 1000");
    expect_reject(&(spec){.n_kv = 1ull << 40}, FB_ETOOBIG, "key/value count");
    expect_reject(&(spec){.n_kv = 200}, 0, "");
    expect_reject(&(spec){.bad_kv = 1}, FB_ETRUNC, "'test.bad'");
    expect_reject(&(spec){.bad_kv = 2}, FB_ECORRUPT, "value type 13 is unknown");
    expect_reject(&(spec){.bad_kv = 3}, FB_ECORRUPT, "nested arrays");
    expect_reject(&(spec){.t0_dims = 5}, FB_ECORRUPT, "tensor 'a.f32': 5 dimensions");
    expect_reject(&(spec){.t0_zero_dim = 1}, FB_ECORRUPT, "tensor 'a.f32': dimension 1 is 0");
    expect_reject(&(spec){.t0_overflow = 1}, FB_ECORRUPT, "overflows");
    expect_reject(&(spec){.t0_type = 100 + 2}, FB_EINVAL, "tensor 'a.f32': type 2 (Q4_0)");
    expect_reject(&(spec){.t0_type = 100 + 9999}, FB_EINVAL, "type 9999");
    expect_reject(&(spec){.t1_misalign = 1}, FB_ECORRUPT, "tensor 'b.f16': data offset");
    expect_reject(&(spec){.t2_past_eof = 1}, FB_ETRUNC, "tensor 'c.q8': data at offset");
    expect_reject(&(spec){.dup_name = 1}, FB_ECORRUPT, "'a.f32' appears twice");
    expect_reject(&(spec){.alignment = 48}, FB_ECORRUPT, "power of two");
}

/* n_dims 0 needs a hand-patched file since spec uses 0 for "default". */
static void test_zero_dims(void **state)
{
    (void)state;
    spec s = {0};
    wbuf w = build(&s);
    /* find "a.f32" name in the tensor infos and zero its n_dims field */
    uint8_t *p = NULL;
    for (size_t i = 0; i + 5 <= w.len; i++)
        if (memcmp(w.p + i, "a.f32", 5) == 0) {
            p = w.p + i + 5;
            break;
        }
    assert_non_null(p);
    memset(p, 0, 4);
    gguf_file *f = NULL;
    char err[512] = "";
    assert_int_equal(open_buf(&w, w.len, &f, err, sizeof err), FB_ECORRUPT);
    assert_non_null(strstr(err, "0 dimensions"));
    free(w.p);
}

static void test_open_file(void **state)
{
    (void)state;
    spec s = {0};
    wbuf w = build(&s);
    char path[] = "/tmp/test_gguf_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, w.p, w.len), (ssize_t)w.len);
    close(fd);
    gguf_file *f = NULL;
    char err[512] = "";
    assert_int_equal(gguf_open(path, &f, err, sizeof err), 0);
    assert_memory_equal(gguf_find_tensor(f, "a.f32")->data, f32_data, sizeof f32_data);
    gguf_close(f);
    assert_int_equal(truncate(path, (off_t)w.len - 1), 0);
    assert_int_equal(gguf_open(path, &f, err, sizeof err), FB_ETRUNC);
    assert_non_null(strstr(err, path));
    unlink(path);
    assert_int_equal(gguf_open(path, &f, err, sizeof err), FB_ENOENT);
    free(w.p);
}

static void check_reference(const char *file, uint64_t n_embd)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/llama/%s", FEDBFT_TESTDATA, file);
    gguf_file *f = NULL;
    char err[512] = "";
    if (gguf_open(path, &f, err, sizeof err) != 0)
        fail_msg("%s", err);
    uint64_t n;
    uint32_t et;
    assert_int_equal(gguf_get_arr(f, "tokenizer.ggml.tokens", NULL, &et, &n), 0);
    assert_int_equal(et, GGUF_TYPE_STRING);
    assert_int_equal(n, 539);
    uint32_t n_layer;
    assert_int_equal(gguf_get_u32(f, "llama.block_count", &n_layer), 0);
    /* token_embd, output_norm, output + 9 per layer (norms, q/k/v/o, ffn) */
    assert_int_equal(gguf_n_tensors(f), 3 + 9 * n_layer);
    const gguf_tensor *t = gguf_find_tensor(f, "token_embd.weight");
    assert_non_null(t);
    assert_int_equal(t->n_dims, 2);
    assert_int_equal(t->ne[0], n_embd);
    assert_int_equal(t->ne[1], 539);
    uint32_t e;
    assert_int_equal(gguf_get_u32(f, "llama.embedding_length", &e), 0);
    assert_int_equal(e, n_embd);
    gguf_close(f);
}

static void test_reference_files(void **state)
{
    (void)state;
    char path[1024];
    snprintf(path, sizeof path, "%s/llama/tiny-llama-a.f32.gguf", FEDBFT_TESTDATA);
    if (access(path, R_OK) != 0) {
        printf("skipped: ../shared/testdata not present\n");
        return;
    }
    check_reference("tiny-llama-a.f32.gguf", 64);
    check_reference("tiny-llama-c.q8_0.gguf", 128);
    check_reference("tiny-llama-c-deq.f32.gguf", 128);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid),     cmocka_unit_test(test_truncated),
        cmocka_unit_test(test_rejects),   cmocka_unit_test(test_zero_dims),
        cmocka_unit_test(test_open_file), cmocka_unit_test(test_reference_files),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
