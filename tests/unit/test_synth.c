/* test_synth.c - the GGUF writer (round trip through gguf_open for every
 * key/value and tensor type, alignment, offsets, rejections, atomic writes),
 * the model synthesizer (keys, shapes, vocabulary, tokenizer, determinism)
 * and the quantizer (types, sizes, Q8_0 error bounds, copied key/values). */
#include "fb_error.h"
#include "gguf.h"
#include "gguf_writer.h"
#include "kernels.h"
#include "quantize.h"
#include "synth.h"
#include "tokenizer.h"

#include <dirent.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

/* ---- a temporary directory per test ---- */

static char tmpdir[64];

static int make_tmp(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/test_synth-XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int remove_tmp(void **state)
{
    (void)state;
    DIR *d = opendir(tmpdir);
    if (!d)
        return -1;
    struct dirent *e;
    char p[512];
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            snprintf(p, sizeof p, "%s/%s", tmpdir, e->d_name);
            unlink(p);
        }
    closedir(d);
    return rmdir(tmpdir);
}

static const char *tpath(const char *name)
{
    static char p[4][256];
    static int k;
    k = (k + 1) % 4;
    snprintf(p[k], sizeof p[k], "%s/%s", tmpdir, name);
    return p[k];
}

/* Files in tmpdir whose name contains s. */
static int count_files(const char *s)
{
    DIR *d = opendir(tmpdir);
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        n += strstr(e->d_name, s) != NULL;
    closedir(d);
    return n;
}

static uint8_t *slurp(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    fseek(fp, 0, SEEK_END);
    long n = ftell(fp);
    fseek(fp, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)n + 1);
    assert_non_null(b);
    assert_int_equal(fread(b, 1, (size_t)n, fp), (size_t)n);
    fclose(fp);
    *len = (size_t)n;
    return b;
}

static gguf_file *open_ok(const char *path)
{
    gguf_file *f = NULL;
    char err[512];
    int rc = gguf_open(path, &f, err, sizeof err);
    if (rc)
        fail_msg("gguf_open %s: %s", path, err);
    return f;
}

static void assert_str_kv(const gguf_file *f, const char *key, const char *want)
{
    const char *s;
    size_t len;
    assert_int_equal(gguf_get_str(f, key, &s, &len), 0);
    assert_int_equal(len, strlen(want));
    assert_memory_equal(s, want, len);
}

static uint32_t get_u32(const gguf_file *f, const char *key)
{
    uint32_t v = 0;
    assert_int_equal(gguf_get_u32(f, key, &v), 0);
    return v;
}

/* ---- writer ---- */

static int fill_ramp(void *arg, void *dst, uint64_t nbytes, char *err, size_t errlen)
{
    (void)err, (void)errlen;
    float base = *(const float *)arg;
    float *x = dst;
    for (uint64_t i = 0; i < nbytes / 4; i++)
        x[i] = base + (float)i;
    return 0;
}

static int fill_fails(void *arg, void *dst, uint64_t nbytes, char *err, size_t errlen)
{
    (void)arg, (void)dst, (void)nbytes;
    return fb_errf(err, errlen, FB_EIO, "the fill gave up");
}

static void test_writer_roundtrip(void **state)
{
    (void)state;
    for (int with_align = 0; with_align < 2; with_align++) {
        gguf_w *w;
        assert_int_equal(gguf_w_new(&w), 0);
        static const char *strs[] = {"alpha", "", "\xe2\x96\x81x"};
        static const size_t lens[] = {3, 0, 4}; /* "alp", "", "▁x" */
        float fv[3] = {1.5f, -2.25f, 1e-7f};
        int32_t iv[4] = {-1, 0, 7, INT32_MIN};
        assert_int_equal(gguf_w_add_str(w, "a.str", "hello"), 0);
        assert_int_equal(gguf_w_add_u32(w, "a.u32", 4000000000u), 0);
        assert_int_equal(gguf_w_add_i32(w, "a.i32", -12345), 0);
        assert_int_equal(gguf_w_add_f32(w, "a.f32", 0.1f), 0);
        assert_int_equal(gguf_w_add_bool(w, "a.true", true), 0);
        assert_int_equal(gguf_w_add_bool(w, "a.false", false), 0);
        if (with_align)
            assert_int_equal(gguf_w_add_u32(w, "general.alignment", 64), 0);
        assert_int_equal(gguf_w_add_arr_str(w, "a.strs", strs, lens, 3), 0);
        assert_int_equal(gguf_w_add_arr_str(w, "a.strs0", strs, NULL, 3), 0);
        assert_int_equal(gguf_w_add_arr_f32(w, "a.f32s", fv, 3), 0);
        assert_int_equal(gguf_w_add_arr_i32(w, "a.i32s", iv, 4), 0);
        assert_int_equal(gguf_w_add_arr_i32(w, "a.empty", iv, 0), 0);

        float v1[5] = {1, 2, 3, 4, 5};
        uint16_t h[6] = {0x3c00, 0x4000, 0xbc00, 0, 0x7bff, 0x0001};
        kn_q8 q[4];
        for (int b = 0; b < 4; b++) {
            q[b].d = (uint16_t)(0x2000 + b);
            for (int j = 0; j < 32; j++)
                q[b].qs[j] = (int8_t)(j * 4 - 64 + b);
        }
        float base = 100.0f;
        assert_int_equal(gguf_w_add_tensor(w, "v1", GGUF_TENSOR_F32, 1, (uint64_t[]){5}, v1, 20),
                         0);
        assert_int_equal(
            gguf_w_add_tensor(w, "h", GGUF_TENSOR_F16, 2, (uint64_t[]){3, 2}, h, sizeof h), 0);
        assert_int_equal(
            gguf_w_add_tensor(w, "q", GGUF_TENSOR_Q8_0, 3, (uint64_t[]){64, 1, 2}, q, sizeof q), 0);
        assert_int_equal(gguf_w_add_tensor_fn(w, "ramp", GGUF_TENSOR_F32, 2, (uint64_t[]){7, 3}, 84,
                                              fill_ramp, &base),
                         0);
        assert_string_equal(gguf_w_errmsg(w), "");
        char err[512];
        uint64_t size = 0;
        const char *path = tpath(with_align ? "rt64.gguf" : "rt.gguf");
        int rc = gguf_w_write(w, path, 0, &size, err, sizeof err);
        if (rc)
            fail_msg("write: %s", err);
        gguf_w_free(w);
        struct stat st;
        assert_int_equal(stat(path, &st), 0);
        assert_int_equal((uint64_t)st.st_size, size);

        gguf_file *f = open_ok(path);
        uint32_t align = with_align ? 64 : 32;
        assert_int_equal(gguf_version(f), 3);
        assert_int_equal(gguf_alignment(f), align);
        assert_int_equal(gguf_data_offset(f) % align, 0);
        assert_int_equal(gguf_n_kv(f), with_align ? 12 : 11);
        assert_string_equal(gguf_kv_at(f, 0)->key, "a.str");
        assert_str_kv(f, "a.str", "hello");
        assert_int_equal(get_u32(f, "a.u32"), 4000000000u);
        int32_t i32;
        assert_int_equal(gguf_get_i32(f, "a.i32", &i32), 0);
        assert_int_equal(i32, -12345);
        float f32;
        assert_int_equal(gguf_get_f32(f, "a.f32", &f32), 0);
        assert_true(f32 == 0.1f);
        int bv;
        assert_int_equal(gguf_get_bool(f, "a.true", &bv), 0);
        assert_true(bv);
        assert_int_equal(gguf_get_bool(f, "a.false", &bv), 0);
        assert_false(bv);
        const gguf_kv *kv;
        uint32_t et;
        uint64_t n;
        assert_int_equal(gguf_get_arr(f, "a.strs", &kv, &et, &n), 0);
        assert_int_equal(et, GGUF_TYPE_STRING);
        assert_int_equal(n, 3);
        const char *s;
        size_t len;
        for (int i = 0; i < 3; i++) {
            assert_int_equal(gguf_arr_str(kv, (uint64_t)i, &s, &len), 0);
            assert_int_equal(len, lens[i]);
            assert_memory_equal(s, strs[i], len);
        }
        assert_int_equal(gguf_get_arr(f, "a.strs0", &kv, &et, &n), 0);
        assert_int_equal(gguf_arr_str(kv, 0, &s, &len), 0);
        assert_int_equal(len, 5);
        assert_int_equal(gguf_get_arr(f, "a.f32s", &kv, &et, &n), 0);
        assert_int_equal(et, GGUF_TYPE_FLOAT32);
        for (int i = 0; i < 3; i++) {
            double d;
            assert_int_equal(gguf_arr_f64(kv, (uint64_t)i, &d), 0);
            assert_true((float)d == fv[i]);
        }
        assert_int_equal(gguf_get_arr(f, "a.i32s", &kv, &et, &n), 0);
        assert_int_equal(et, GGUF_TYPE_INT32);
        for (int i = 0; i < 4; i++) {
            int64_t x;
            assert_int_equal(gguf_arr_i64(kv, (uint64_t)i, &x), 0);
            assert_int_equal(x, iv[i]);
        }
        assert_int_equal(gguf_get_arr(f, "a.empty", &kv, &et, &n), 0);
        assert_int_equal(n, 0);

        assert_int_equal(gguf_n_tensors(f), 4);
        const gguf_tensor *t = gguf_tensor_at(f, 0);
        assert_string_equal(t->name, "v1");
        assert_int_equal(t->type, GGUF_TENSOR_F32);
        assert_int_equal(t->n_dims, 1);
        assert_int_equal(t->offset, 0);
        assert_memory_equal(t->data, v1, 20);
        t = gguf_find_tensor(f, "h");
        assert_int_equal(t->type, GGUF_TENSOR_F16);
        assert_int_equal(t->ne[0], 3);
        assert_int_equal(t->ne[1], 2);
        assert_int_equal(t->offset, align); /* 20 bytes, padded */
        assert_memory_equal(t->data, h, sizeof h);
        t = gguf_find_tensor(f, "q");
        assert_int_equal(t->type, GGUF_TENSOR_Q8_0);
        assert_int_equal(t->n_dims, 3);
        assert_int_equal(t->ne[2], 2);
        assert_int_equal(t->nbytes, sizeof q);
        assert_memory_equal(t->data, q, sizeof q);
        t = gguf_find_tensor(f, "ramp");
        assert_int_equal(t->nbytes, 84);
        for (int i = 0; i < 21; i++)
            assert_true(((const float *)t->data)[i] == 100.0f + (float)i);
        for (size_t i = 0; i < gguf_n_tensors(f); i++) {
            t = gguf_tensor_at(f, i);
            assert_int_equal(t->offset % align, 0);
            assert_int_equal((gguf_data_offset(f) + t->offset) % align, 0);
        }
        /* the last tensor is padded too, as ggml writes it */
        assert_int_equal(size % align, 0);
        gguf_close(f);
    }
    assert_int_equal(count_files(".tmp-"), 0);
}

/* A GGUF in memory with the key/value types the writer has no adder for. */
static size_t put_le(uint8_t *p, uint64_t v, int n)
{
    for (int i = 0; i < n; i++)
        p[i] = (uint8_t)(v >> (8 * i));
    return (size_t)n;
}

static size_t put_key(uint8_t *p, const char *k, uint32_t type)
{
    size_t o = put_le(p, strlen(k), 8);
    memcpy(p + o, k, strlen(k));
    o += strlen(k);
    return o + put_le(p + o, type, 4);
}

static void test_writer_copy_kv(void **state)
{
    (void)state;
    static uint8_t buf[1024];
    size_t o = 0;
    memcpy(buf, "GGUF", 4);
    o = 4 + put_le(buf + 4, 3, 4);
    o += put_le(buf + o, 0, 8); /* tensors */
    o += put_le(buf + o, 9, 8); /* kvs */
    o += put_key(buf + o, "t.u8", GGUF_TYPE_UINT8);
    o += put_le(buf + o, 200, 1);
    o += put_key(buf + o, "t.i8", GGUF_TYPE_INT8);
    o += put_le(buf + o, (uint8_t)-5, 1);
    o += put_key(buf + o, "t.u16", GGUF_TYPE_UINT16);
    o += put_le(buf + o, 60000, 2);
    o += put_key(buf + o, "t.i16", GGUF_TYPE_INT16);
    o += put_le(buf + o, (uint16_t)-300, 2);
    o += put_key(buf + o, "t.u64", GGUF_TYPE_UINT64);
    o += put_le(buf + o, 0x123456789abcdefull, 8);
    o += put_key(buf + o, "t.i64", GGUF_TYPE_INT64);
    o += put_le(buf + o, (uint64_t)-7, 8);
    double dv = -2.5;
    uint64_t du;
    memcpy(&du, &dv, 8);
    o += put_key(buf + o, "t.f64", GGUF_TYPE_FLOAT64);
    o += put_le(buf + o, du, 8);
    o += put_key(buf + o, "t.u16s", GGUF_TYPE_ARRAY);
    o += put_le(buf + o, GGUF_TYPE_UINT16, 4);
    o += put_le(buf + o, 3, 8);
    for (int i = 0; i < 3; i++)
        o += put_le(buf + o, (uint64_t)(1000 * i + 1), 2);
    o += put_key(buf + o, "general.alignment", GGUF_TYPE_UINT32);
    o += put_le(buf + o, 16, 4);
    char err[512];
    gguf_file *src = NULL;
    int rc = gguf_open_mem(buf, o, "crafted", &src, err, sizeof err);
    if (rc)
        fail_msg("crafted: %s", err);

    gguf_w *w;
    assert_int_equal(gguf_w_new(&w), 0);
    for (size_t i = 0; i < gguf_n_kv(src); i++)
        assert_int_equal(gguf_w_copy_kv(w, gguf_kv_at(src, i)), 0);
    float x[3] = {1, 2, 3};
    assert_int_equal(gguf_w_add_tensor(w, "x", GGUF_TENSOR_F32, 1, (uint64_t[]){3}, x, 12), 0);
    assert_int_equal(gguf_w_add_tensor(w, "y", GGUF_TENSOR_F32, 1, (uint64_t[]){3}, x, 12), 0);
    assert_int_equal(gguf_w_write(w, tpath("copy.gguf"), 0, NULL, err, sizeof err), 0);
    gguf_w_free(w);
    gguf_file *f = open_ok(tpath("copy.gguf"));
    assert_int_equal(gguf_alignment(f), 16); /* the copied general.alignment applies */
    assert_int_equal(gguf_find_tensor(f, "y")->offset, 16);
    assert_int_equal(gguf_n_kv(f), gguf_n_kv(src));
    for (size_t i = 0; i < gguf_n_kv(src); i++) {
        const gguf_kv *a = gguf_kv_at(src, i), *b = gguf_kv_at(f, i);
        assert_string_equal(a->key, b->key);
        assert_int_equal(a->type, b->type);
        if (a->type == GGUF_TYPE_ARRAY) {
            assert_int_equal(a->arr_type, b->arr_type);
            assert_int_equal(a->arr_n, b->arr_n);
            assert_memory_equal(a->val, b->val, 6);
        } else {
            int64_t ia, ib;
            double da, db;
            if (gguf_kv_i64(a, &ia) == 0) {
                assert_int_equal(gguf_kv_i64(b, &ib), 0);
                assert_int_equal(ia, ib);
            }
            assert_int_equal(gguf_kv_f64(a, &da), 0);
            assert_int_equal(gguf_kv_f64(b, &db), 0);
            assert_true(da == db);
        }
    }
    gguf_close(f);
    gguf_close(src);
}

static void test_writer_rejects(void **state)
{
    (void)state;
    float x[64] = {0};
    struct {
        const char *what;
        int code;
    } cases[] = {
        {"dup key", FB_EINVAL},   {"dup tensor", FB_EINVAL}, {"q8 rows", FB_EINVAL},
        {"nbytes", FB_EINVAL},    {"alignment", FB_EINVAL},  {"empty key", FB_EINVAL},
        {"long name", FB_EINVAL}, {"zero dim", FB_EINVAL},   {"5 dims", FB_EINVAL},
        {"bad type", FB_EINVAL},  {"null data", FB_EINVAL},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        gguf_w *w;
        assert_int_equal(gguf_w_new(&w), 0);
        assert_int_equal(gguf_w_add_u32(w, "k", 1), 0);
        assert_int_equal(gguf_w_add_tensor(w, "t", GGUF_TENSOR_F32, 1, (uint64_t[]){4}, x, 16), 0);
        int rc = 0;
        const char *msg = NULL;
        switch (c) {
        case 0:
            rc = gguf_w_add_str(w, "k", "again"), msg = "added twice";
            break;
        case 1:
            rc = gguf_w_add_tensor(w, "t", GGUF_TENSOR_F32, 1, (uint64_t[]){4}, x, 16);
            msg = "added twice";
            break;
        case 2:
            rc = gguf_w_add_tensor(w, "q", GGUF_TENSOR_Q8_0, 2, (uint64_t[]){48, 2}, x, 102);
            msg = "multiple of 32";
            break;
        case 3:
            rc = gguf_w_add_tensor(w, "n", GGUF_TENSOR_F16, 2, (uint64_t[]){4, 4}, x, 64);
            msg = "holds 32";
            break;
        case 4:
            rc = gguf_w_add_u32(w, "general.alignment", 48), msg = "power of two";
            break;
        case 5:
            rc = gguf_w_add_bool(w, "", true), msg = "empty";
            break;
        case 6:
            rc = gguf_w_add_tensor(w,
                                   "a_tensor_name_that_is_much_longer_than_ggml_allows_it_to_be_"
                                   "at_all",
                                   GGUF_TENSOR_F32, 1, (uint64_t[]){4}, x, 16);
            msg = "longer than";
            break;
        case 7:
            rc = gguf_w_add_tensor(w, "z", GGUF_TENSOR_F32, 2, (uint64_t[]){4, 0}, x, 0);
            msg = "dimension 1 is 0";
            break;
        case 8:
            rc = gguf_w_add_tensor(w, "d", GGUF_TENSOR_F32, 5, (uint64_t[]){1, 1, 1, 1, 1}, x, 4);
            msg = "5 dimensions";
            break;
        case 9:
            rc = gguf_w_add_tensor(w, "b", 2 /* Q4_0 */, 1, (uint64_t[]){32}, x, 18);
            msg = "not supported";
            break;
        case 10:
            rc = gguf_w_add_tensor(w, "nul", GGUF_TENSOR_F32, 1, (uint64_t[]){4}, NULL, 16);
            msg = "NULL";
            break;
        }
        assert_int_equal(rc, cases[c].code);
        if (!strstr(gguf_w_errmsg(w), msg))
            fail_msg("%s: message '%s' lacks '%s'", cases[c].what, gguf_w_errmsg(w), msg);
        /* sticky: a valid add now fails the same way, and so does the write */
        assert_int_equal(gguf_w_add_u32(w, "fine", 1), cases[c].code);
        char err[512];
        assert_int_equal(gguf_w_write(w, tpath("rej.gguf"), 0, NULL, err, sizeof err),
                         cases[c].code);
        assert_non_null(strstr(err, "rej.gguf"));
        assert_non_null(strstr(err, msg));
        gguf_w_free(w);
        assert_int_equal(access(tpath("rej.gguf"), F_OK), -1);
    }
    assert_int_equal(count_files(".tmp-"), 0);
}

static void test_writer_files(void **state)
{
    (void)state;
    float x[4] = {1, 2, 3, 4};
    char err[512];
    gguf_w *w;
    /* a missing directory */
    assert_int_equal(gguf_w_new(&w), 0);
    gguf_w_add_tensor(w, "t", GGUF_TENSOR_F32, 1, (uint64_t[]){4}, x, 16);
    const char *missing = tpath("no/such/dir/m.gguf");
    assert_int_equal(gguf_w_write(w, missing, 0, NULL, err, sizeof err), FB_ENOENT);
    assert_non_null(strstr(err, missing));
    /* one write per writer */
    assert_int_equal(gguf_w_write(w, tpath("again.gguf"), 0, NULL, err, sizeof err), FB_ESTATE);
    gguf_w_free(w);

    /* an existing file is kept unless overwriting is asked for */
    FILE *fp = fopen(tpath("exists.gguf"), "w");
    fputs("old", fp);
    fclose(fp);
    assert_int_equal(gguf_w_new(&w), 0);
    gguf_w_add_tensor(w, "t", GGUF_TENSOR_F32, 1, (uint64_t[]){4}, x, 16);
    assert_int_equal(gguf_w_write(w, tpath("exists.gguf"), 0, NULL, err, sizeof err), FB_EEXIST);
    assert_non_null(strstr(err, "refusing to overwrite"));
    gguf_w_free(w);
    size_t len;
    uint8_t *b = slurp(tpath("exists.gguf"), &len);
    assert_int_equal(len, 3);
    free(b);
    assert_int_equal(gguf_w_new(&w), 0);
    gguf_w_add_tensor(w, "t", GGUF_TENSOR_F32, 1, (uint64_t[]){4}, x, 16);
    assert_int_equal(gguf_w_write(w, tpath("exists.gguf"), GGUF_W_OVERWRITE, NULL, err, sizeof err),
                     0);
    gguf_w_free(w);
    gguf_close(open_ok(tpath("exists.gguf")));

    /* a failing fill aborts the write and leaves nothing behind */
    assert_int_equal(gguf_w_new(&w), 0);
    gguf_w_add_tensor_fn(w, "t", GGUF_TENSOR_F32, 1, (uint64_t[]){4}, 16, fill_fails, NULL);
    assert_int_equal(gguf_w_write(w, tpath("fill.gguf"), 0, NULL, err, sizeof err), FB_EIO);
    assert_non_null(strstr(err, "gave up"));
    gguf_w_free(w);
    assert_int_equal(access(tpath("fill.gguf"), F_OK), -1);
    assert_int_equal(count_files(".tmp-"), 0);
}

/* ---- synthesizer ---- */

static void write_model(const char *preset, uint32_t type, uint64_t seed, const char *path)
{
    char err[512];
    int rc = synth_write(synth_preset(preset), type, seed, path, 0, NULL, err, sizeof err);
    if (rc)
        fail_msg("synth %s: %s", preset, err);
}

static void assert_shape(const gguf_file *f, const char *name, uint32_t type, uint64_t ne0,
                         uint64_t ne1)
{
    const gguf_tensor *t = gguf_find_tensor(f, name);
    if (!t)
        fail_msg("no tensor %s", name);
    assert_int_equal(t->type, type);
    assert_int_equal(t->n_dims, ne1 ? 2 : 1);
    assert_int_equal(t->ne[0], ne0);
    if (ne1)
        assert_int_equal(t->ne[1], ne1);
}

static void stats(const gguf_tensor *t, double *mean, double *sd)
{
    const float *x = t->data;
    size_t n = (size_t)(t->nbytes / 4);
    double s = 0, s2 = 0;
    for (size_t i = 0; i < n; i++)
        s += x[i], s2 += (double)x[i] * x[i];
    *mean = s / (double)n;
    *sd = sqrt(s2 / (double)n - *mean * *mean);
}

static size_t utf8_chars(const char *s, size_t len)
{
    size_t n = 0;
    for (size_t i = 0; i < len; i++)
        n += ((unsigned char)s[i] & 0xc0) != 0x80;
    return n;
}

/* The id below limit whose piece is s[0..len), or -1. */
static int32_t find_piece(const tok *t, const char *s, size_t len, int32_t limit)
{
    for (int32_t id = 0; id < limit; id++) {
        size_t l;
        const char *p = tok_piece(t, id, &l);
        if (l == len && memcmp(p, s, len) == 0)
            return id;
    }
    return -1;
}

static void test_synth_tiny(void **state)
{
    (void)state;
    const synth_config *c = synth_preset("tiny");
    assert_non_null(c);
    assert_null(synth_preset("huge"));
    write_model("tiny", c->type, SYNTH_DEFAULT_SEED, tpath("tiny.gguf"));
    struct stat st;
    assert_int_equal(stat(tpath("tiny.gguf"), &st), 0);
    assert_true(st.st_size < 1000000);
    gguf_file *f = open_ok(tpath("tiny.gguf"));
    assert_str_kv(f, "general.architecture", "llama");
    assert_str_kv(f, "tokenizer.ggml.model", "llama");
    assert_int_equal(get_u32(f, "llama.context_length"), 256);
    assert_int_equal(get_u32(f, "llama.embedding_length"), 64);
    assert_int_equal(get_u32(f, "llama.block_count"), 2);
    assert_int_equal(get_u32(f, "llama.feed_forward_length"), 176);
    assert_int_equal(get_u32(f, "llama.attention.head_count"), 4);
    assert_int_equal(get_u32(f, "llama.attention.head_count_kv"), 2);
    assert_int_equal(get_u32(f, "llama.rope.dimension_count"), 16);
    assert_int_equal(get_u32(f, "llama.vocab_size"), 512);
    assert_int_equal(get_u32(f, "general.file_type"), 0);
    assert_int_equal(get_u32(f, "tokenizer.ggml.bos_token_id"), 1);
    assert_int_equal(get_u32(f, "tokenizer.ggml.eos_token_id"), 2);
    assert_int_equal(get_u32(f, "tokenizer.ggml.unknown_token_id"), 0);
    float v;
    assert_int_equal(gguf_get_f32(f, "llama.rope.freq_base", &v), 0);
    assert_true(v == 10000.0f);
    assert_int_equal(gguf_get_f32(f, "llama.attention.layer_norm_rms_epsilon", &v), 0);
    assert_true(v == 1e-5f);
    int b;
    assert_int_equal(gguf_get_bool(f, "tokenizer.ggml.add_bos_token", &b), 0);
    assert_true(b);
    assert_int_equal(gguf_get_bool(f, "tokenizer.ggml.add_eos_token", &b), 0);
    assert_false(b);
    assert_int_equal(gguf_get_bool(f, "tokenizer.ggml.add_space_prefix", &b), 0);
    assert_true(b);
    assert_null(gguf_find_kv(f, "general.quantization_version"));

    assert_int_equal(gguf_n_tensors(f), 3 + 9 * 2);
    assert_string_equal(gguf_tensor_at(f, 0)->name, "token_embd.weight");
    assert_shape(f, "token_embd.weight", GGUF_TENSOR_F32, 64, 512);
    assert_shape(f, "output.weight", GGUF_TENSOR_F32, 64, 512);
    assert_shape(f, "output_norm.weight", GGUF_TENSOR_F32, 64, 0);
    for (int l = 0; l < 2; l++) {
        char n[64];
#define SHAPE(s, ne0, ne1)                                                                         \
    snprintf(n, sizeof n, "blk.%d.%s.weight", l, s);                                               \
    assert_shape(f, n, GGUF_TENSOR_F32, ne0, ne1)
        SHAPE("attn_norm", 64, 0);
        SHAPE("attn_q", 64, 64);
        SHAPE("attn_k", 64, 32);
        SHAPE("attn_v", 64, 32);
        SHAPE("attn_output", 64, 64);
        SHAPE("ffn_norm", 64, 0);
        SHAPE("ffn_gate", 64, 176);
        SHAPE("ffn_up", 64, 176);
        SHAPE("ffn_down", 176, 64);
#undef SHAPE
    }
    /* the scales the header promises */
    double m, sd;
    stats(gguf_find_tensor(f, "blk.0.attn_q.weight"), &m, &sd);
    assert_true(fabs(m) < 0.01 && fabs(sd - 0.125) < 0.01);
    stats(gguf_find_tensor(f, "blk.1.ffn_down.weight"), &m, &sd);
    assert_true(fabs(sd - 0.5 / sqrt(176.0)) < 0.004);
    stats(gguf_find_tensor(f, "output.weight"), &m, &sd);
    assert_true(fabs(sd - 0.25) < 0.01);
    stats(gguf_find_tensor(f, "blk.0.ffn_norm.weight"), &m, &sd);
    assert_true(fabs(m - 1.0) < 0.05 && sd > 0.05 && sd < 0.15);

    /* the vocabulary and its tokenizer */
    char err[512];
    tok *t = NULL;
    int rc = tok_from_gguf(f, &t, err, sizeof err);
    if (rc)
        fail_msg("tok_from_gguf: %s", err);
    assert_int_equal(tok_n_vocab(t), 512);
    size_t len;
    assert_string_equal(tok_piece(t, 0, &len), "<unk>");
    assert_int_equal(tok_type_of(t, 0), TOK_TYPE_UNKNOWN);
    assert_string_equal(tok_piece(t, 1, &len), "<s>");
    assert_int_equal(tok_type_of(t, 1), TOK_TYPE_CONTROL);
    assert_string_equal(tok_piece(t, 2, &len), "</s>");
    assert_int_equal(tok_type_of(t, 2), TOK_TYPE_CONTROL);
    assert_string_equal(tok_piece(t, 3, &len), "<0x00>");
    assert_string_equal(tok_piece(t, 3 + 0x41, &len), "<0x41>");
    assert_int_equal(tok_type_of(t, 258), TOK_TYPE_BYTE);
    assert_string_equal(tok_piece(t, 259, &len), "\xe2\x96\x81");
    assert_string_equal(tok_piece(t, 260, &len), "!");
    assert_string_equal(tok_piece(t, 353, &len), "~");
    /* every merged piece is the join of two pieces that exist before it, so
     * a highest-score-first merge can reach it */
    size_t merged = 0;
    for (int32_t id = SYNTH_BASE_VOCAB; id < 512; id++) {
        const char *p = tok_piece(t, id, &len);
        assert_int_equal(tok_type_of(t, id), TOK_TYPE_NORMAL);
        assert_true(utf8_chars(p, len) >= 2);
        int found = 0;
        for (size_t k = 1; k < len && !found; k++) {
            int32_t l = find_piece(t, p, k, id), r = find_piece(t, p + k, len - k, id);
            /* single characters are where encoding starts, so they need
             * no score; merged halves must come earlier (score higher) */
            found = l >= 0 && r >= 0 &&
                    (l < SYNTH_BASE_VOCAB || tok_score(t, l) > tok_score(t, id)) &&
                    (r < SYNTH_BASE_VOCAB || tok_score(t, r) > tok_score(t, id));
        }
        if (!found)
            fail_msg("piece %d '%.*s' is not the join of two earlier pieces", id, (int)len, p);
        merged++;
    }
    assert_int_equal(merged, 512 - SYNTH_BASE_VOCAB);

    const char *text = "The federation agreed on the weather, and the nodes baked bread.";
    int32_t ids[128];
    size_t n;
    assert_int_equal(tok_encode(t, text, strlen(text), true, ids, 128, &n), 0);
    assert_int_equal(ids[0], 1);
    assert_true(n < strlen(text) * 2 / 3);
    size_t multi = 0;
    for (size_t i = 1; i < n; i++) {
        const char *p = tok_piece(t, ids[i], &len);
        multi += utf8_chars(p, len) >= 3;
    }
    assert_true(multi >= 5);
    tok_free(t);
    gguf_close(f);
}

static void test_synth_deterministic(void **state)
{
    (void)state;
    write_model("tiny", GGUF_TENSOR_F32, 7, tpath("a.gguf"));
    write_model("tiny", GGUF_TENSOR_F32, 7, tpath("b.gguf"));
    write_model("tiny", GGUF_TENSOR_F32, 8, tpath("c.gguf"));
    size_t la, lb, lc;
    uint8_t *a = slurp(tpath("a.gguf"), &la), *b = slurp(tpath("b.gguf"), &lb),
            *c = slurp(tpath("c.gguf"), &lc);
    assert_int_equal(la, lb);
    assert_memory_equal(a, b, la);
    assert_int_equal(la, lc); /* the seed is in the description: same length */
    assert_memory_not_equal(a, c, la);
    free(a);
    free(b);
    free(c);

    /* other types; Q8_0 keeps tiny's ffn_down (rows of 176) F32 */
    write_model("tiny", GGUF_TENSOR_F16, 1, tpath("h.gguf"));
    write_model("tiny", GGUF_TENSOR_Q8_0, 1, tpath("q.gguf"));
    gguf_file *f = open_ok(tpath("h.gguf"));
    assert_int_equal(get_u32(f, "general.file_type"), 1);
    assert_shape(f, "blk.1.ffn_down.weight", GGUF_TENSOR_F16, 176, 64);
    assert_shape(f, "blk.1.ffn_norm.weight", GGUF_TENSOR_F32, 64, 0);
    gguf_close(f);
    f = open_ok(tpath("q.gguf"));
    assert_int_equal(get_u32(f, "general.file_type"), 7);
    assert_int_equal(get_u32(f, "general.quantization_version"), 2);
    assert_shape(f, "blk.0.attn_k.weight", GGUF_TENSOR_Q8_0, 64, 32);
    assert_shape(f, "blk.0.ffn_down.weight", GGUF_TENSOR_F32, 176, 64);
    gguf_close(f);

    /* bad configurations */
    char err[512];
    synth_config bad = *synth_preset("tiny");
    bad.n_head = 3;
    assert_int_equal(
        synth_write(&bad, GGUF_TENSOR_F32, 1, tpath("bad.gguf"), 0, NULL, err, sizeof err),
        FB_EINVAL);
    assert_non_null(strstr(err, "heads"));
    bad = *synth_preset("tiny");
    bad.n_vocab = 100;
    assert_int_equal(
        synth_write(&bad, GGUF_TENSOR_F32, 1, tpath("bad.gguf"), 0, NULL, err, sizeof err),
        FB_EINVAL);
    assert_int_equal(
        synth_write(synth_preset("tiny"), 2, 1, tpath("bad.gguf"), 0, NULL, err, sizeof err),
        FB_EINVAL);
    assert_int_equal(access(tpath("bad.gguf"), F_OK), -1);
}

static void test_synth_small_vocab(void **state)
{
    (void)state;
    synth_vocab v;
    char err[512];
    assert_int_equal(synth_vocab_build(2048, &v, err, sizeof err), 0);
    assert_int_equal(v.n, 2048);
    /* the corpus is big enough: no <unused_N> padding in the small preset */
    assert_int_equal(v.n_merges, 2048 - SYNTH_BASE_VOCAB);
    for (size_t i = SYNTH_BASE_VOCAB + 1; i < v.n; i++)
        assert_true(v.scores[i] < v.scores[i - 1]);
    tok *t = NULL;
    int rc = tok_new((const char *const *)v.pieces, NULL, v.scores, v.types, v.n, 1, 2, 0, &t, err,
                     sizeof err);
    if (rc)
        fail_msg("tok_new: %s", err);
    const char *c = synth_corpus();
    size_t cap = strlen(c) + 8, n;
    int32_t *ids = malloc(cap * sizeof *ids);
    assert_non_null(ids);
    assert_int_equal(tok_encode(t, c, strlen(c), false, ids, cap, &n), 0);
    /* whole words as pieces: well under a token per three characters */
    assert_true(n * 3 < strlen(c));
    free(ids);
    tok_free(t);
    synth_vocab_free(&v);
    /* a vocabulary bigger than the corpus can fill is padded with UNUSED */
    assert_int_equal(synth_vocab_build(6000, &v, err, sizeof err), 0);
    assert_int_equal(v.n, 6000);
    assert_int_equal(v.types[5999], TOK_TYPE_UNUSED);
    synth_vocab_free(&v);
}

/* ---- quantizer ---- */

static void test_quantize_q8(void **state)
{
    (void)state;
    write_model("tiny", GGUF_TENSOR_F32, 3, tpath("in.gguf"));
    char err[512];
    quant_result r;
    int rc =
        quant_file(tpath("in.gguf"), tpath("q8.gguf"), GGUF_TENSOR_Q8_0, 0, &r, err, sizeof err);
    if (rc)
        fail_msg("quantize: %s", err);
    struct stat si, so;
    assert_int_equal(stat(tpath("in.gguf"), &si), 0);
    assert_int_equal(stat(tpath("q8.gguf"), &so), 0);
    assert_int_equal(r.in_bytes, (uint64_t)si.st_size);
    assert_int_equal(r.out_bytes, (uint64_t)so.st_size);
    assert_int_equal(r.in_type, GGUF_TENSOR_F32);
    assert_true(r.out_bytes < r.in_bytes / 2);
    /* 2 x (q, k, v, o, gate, up) + token_embd + output convert; down and norms stay */
    assert_int_equal(r.n_converted, 14);
    assert_int_equal(r.n_copied, 7);

    gguf_file *in = open_ok(tpath("in.gguf")), *out = open_ok(tpath("q8.gguf"));
    assert_int_equal(get_u32(out, "general.file_type"), 7);
    assert_int_equal(get_u32(out, "general.quantization_version"), 2);
    assert_int_equal(gguf_n_kv(out), gguf_n_kv(in) + 1);
    for (size_t i = 0; i < gguf_n_kv(in); i++) {
        const gguf_kv *a = gguf_kv_at(in, i), *b = gguf_kv_at(out, i);
        assert_string_equal(a->key, b->key); /* same order */
        assert_int_equal(a->type, b->type);
        if (strcmp(a->key, "general.file_type") == 0)
            continue;
        if (a->type == GGUF_TYPE_ARRAY) {
            assert_int_equal(a->arr_n, b->arr_n);
            for (uint64_t j = 0; j < a->arr_n; j += 37) {
                double da, db;
                const char *sa, *sb;
                size_t la, lb;
                if (gguf_arr_str(a, j, &sa, &la) == 0) {
                    assert_int_equal(gguf_arr_str(b, j, &sb, &lb), 0);
                    assert_int_equal(la, lb);
                    assert_memory_equal(sa, sb, la);
                } else {
                    assert_int_equal(gguf_arr_f64(a, j, &da), 0);
                    assert_int_equal(gguf_arr_f64(b, j, &db), 0);
                    assert_true(da == db);
                }
            }
        }
    }
    assert_int_equal(gguf_n_tensors(out), gguf_n_tensors(in));
    float row[256];
    for (size_t i = 0; i < gguf_n_tensors(in); i++) {
        const gguf_tensor *a = gguf_tensor_at(in, i), *b = gguf_tensor_at(out, i);
        assert_string_equal(a->name, b->name);
        if (a->n_dims == 1 || a->ne[0] % 32) {
            assert_int_equal(b->type, GGUF_TENSOR_F32);
            assert_int_equal(a->nbytes, b->nbytes);
            assert_memory_equal(a->data, b->data, a->nbytes);
            continue;
        }
        assert_int_equal(b->type, GGUF_TENSOR_Q8_0);
        assert_int_equal(b->nbytes, a->nbytes / 4 / 32 * 34);
        const float *x = a->data;
        const kn_q8 *q = b->data;
        size_t nblocks = (size_t)(a->nbytes / 4 / 32);
        for (size_t k = 0; k < nblocks; k++) {
            float d = kn_fp16_to_f32(q[k].d), amax = 0;
            for (int j = 0; j < 32; j++)
                amax = fmaxf(amax, fabsf(x[k * 32 + j]));
            /* d is max|x| / 127 rounded to fp16 (relative error <= 2^-11) */
            assert_true(fabsf(d - amax / 127) <= amax / 127 * 0x1p-11f * 1.01f);
            /* the integers were rounded with the exact d: half a step, plus
             * what the fp16 rounding of d moves |q| <= 127 steps */
            float tol = 0.5f * d + 127.0f * d * 0x1p-11f + 1e-7f;
            for (int j = 0; j < 32; j++)
                if (fabsf((float)q[k].qs[j] * d - x[k * 32 + j]) > tol)
                    fail_msg("%s block %zu [%d]: %g vs %g (step %g)", a->name, k, j,
                             (double)((float)q[k].qs[j] * d), (double)x[k * 32 + j], (double)d);
        }
        /* kn_row_to_f32 agrees with the hand dequantization */
        kn_row_to_f32(KN_Q8_0, q, row, (int)a->ne[0]);
        assert_true(row[5] == (float)q[0].qs[5] * kn_fp16_to_f32(q[0].d));
    }
    gguf_close(out);

    /* and back: Q8_0 -> F16 -> F32 is exact (q * d fits in fp16 here) */
    assert_int_equal(
        quant_file(tpath("q8.gguf"), tpath("f16.gguf"), GGUF_TENSOR_F16, 0, &r, err, sizeof err),
        0);
    assert_int_equal(r.in_type, GGUF_TENSOR_Q8_0);
    out = open_ok(tpath("f16.gguf"));
    assert_int_equal(get_u32(out, "general.file_type"), 1);
    assert_shape(out, "blk.0.ffn_down.weight", GGUF_TENSOR_F16, 176, 64);
    assert_shape(out, "output_norm.weight", GGUF_TENSOR_F32, 64, 0);
    const gguf_tensor *h = gguf_find_tensor(out, "blk.0.ffn_down.weight"),
                      *o = gguf_find_tensor(in, "blk.0.ffn_down.weight");
    for (int j = 0; j < 176; j++) {
        float want = ((const float *)o->data)[j],
              got = kn_fp16_to_f32(((const uint16_t *)h->data)[j]);
        assert_true(fabsf(got - want) <= fabsf(want) * 0x1p-11f + 1e-7f);
    }
    gguf_close(out);
    gguf_close(in);

    /* synthesizing with a type equals quantizing the F32 synthesis */
    write_model("tiny", GGUF_TENSOR_Q8_0, 3, tpath("sq8.gguf"));
    write_model("tiny", GGUF_TENSOR_F16, 3, tpath("sf16.gguf"));
    assert_int_equal(
        quant_file(tpath("in.gguf"), tpath("qf16.gguf"), GGUF_TENSOR_F16, 0, NULL, err, sizeof err),
        0);
    const char *pairs[2][2] = {{"sq8.gguf", "q8.gguf"}, {"sf16.gguf", "qf16.gguf"}};
    for (int i = 0; i < 2; i++) {
        size_t la, lb;
        uint8_t *a = slurp(tpath(pairs[i][0]), &la), *b = slurp(tpath(pairs[i][1]), &lb);
        assert_int_equal(la, lb);
        assert_memory_equal(a, b, la);
        free(a);
        free(b);
    }

    /* errors name the file */
    assert_int_equal(quant_file(tpath("missing.gguf"), tpath("x.gguf"), GGUF_TENSOR_Q8_0, 0, NULL,
                                err, sizeof err),
                     FB_ENOENT);
    assert_non_null(strstr(err, "missing.gguf"));
    assert_int_equal(
        quant_file(tpath("in.gguf"), tpath("q8.gguf"), GGUF_TENSOR_Q8_0, 0, NULL, err, sizeof err),
        FB_EEXIST);
    FILE *fp = fopen(tpath("junk.gguf"), "w");
    fputs("GGUF but not really", fp);
    fclose(fp);
    assert_true(quant_file(tpath("junk.gguf"), tpath("x.gguf"), GGUF_TENSOR_Q8_0, 0, NULL, err,
                           sizeof err) < 0);
    assert_non_null(strstr(err, "junk.gguf"));
    assert_int_equal(access(tpath("x.gguf"), F_OK), -1);
    uint32_t ty;
    assert_int_equal(quant_type_from_name("Q8_0", &ty), 0);
    assert_int_equal(ty, GGUF_TENSOR_Q8_0);
    assert_int_equal(quant_type_from_name("q4_0", &ty), FB_EINVAL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_writer_roundtrip, make_tmp, remove_tmp),
        cmocka_unit_test_setup_teardown(test_writer_copy_kv, make_tmp, remove_tmp),
        cmocka_unit_test_setup_teardown(test_writer_rejects, make_tmp, remove_tmp),
        cmocka_unit_test_setup_teardown(test_writer_files, make_tmp, remove_tmp),
        cmocka_unit_test_setup_teardown(test_synth_tiny, make_tmp, remove_tmp),
        cmocka_unit_test_setup_teardown(test_synth_deterministic, make_tmp, remove_tmp),
        cmocka_unit_test(test_synth_small_vocab),
        cmocka_unit_test_setup_teardown(test_quantize_q8, make_tmp, remove_tmp),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
