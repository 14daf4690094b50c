/* test_model.c - the forward pass's guarantees on synthesized models (no
 * ../shared needed): a sequence's logits are bit-identical with 1 or 2
 * threads, on the scalar or the SIMD path, alone or in a batch of 8 with
 * other prompts, and whether its prompt is prefilled at once or in chunks;
 * F32, F16 and Q8_0 weights; bad models and bad batches are clear errors that
 * change nothing; and the sampler's rules. */
#include "fb_error.h"
#include "gguf.h"
#include "gguf_writer.h"
#include "kernels.h"
#include "model.h"
#include "quantize.h"
#include "sampler.h"
#include "synth.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <math.h>

#define N_SEQ 8
#define N_GEN 6

static char g_dir[] = "/tmp/test_model.XXXXXX";
static char g_f32[64], g_f16[64], g_q8[64];

static int setup(void **state)
{
    (void)state;
    char err[512];
    if (!mkdtemp(g_dir))
        return -1;
    snprintf(g_f32, sizeof g_f32, "%s/tiny.f32.gguf", g_dir);
    snprintf(g_f16, sizeof g_f16, "%s/tiny.f16.gguf", g_dir);
    snprintf(g_q8, sizeof g_q8, "%s/tiny.q8_0.gguf", g_dir);
    const synth_config *sc = synth_preset("tiny");
    if (!sc)
        return -1;
    if (synth_write(sc, KN_F32, SYNTH_DEFAULT_SEED, g_f32, 0, NULL, err, sizeof err) != 0 ||
        quant_file(g_f32, g_f16, KN_F16, 0, NULL, err, sizeof err) != 0 ||
        quant_file(g_f32, g_q8, KN_Q8_0, 0, NULL, err, sizeof err) != 0) {
        fprintf(stderr, "setup: %s\n", err);
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    unlink(g_f32);
    unlink(g_f16);
    unlink(g_q8);
    rmdir(g_dir);
    return 0;
}

static llm_model *load(const char *path)
{
    char err[512];
    llm_model *m = NULL;
    if (llm_model_load(path, &m, err, sizeof err) != 0)
        fail_msg("llm_model_load %s: %s", path, err);
    return m;
}

static bool g_kv_f32; /* the KV cache type ctx() asks for */

static llm_ctx *ctx(const llm_model *m, int slots, int threads, int path, int max_tokens)
{
    char err[512];
    llm_ctx *c = NULL;
    /* parallel_min 1: every job is split across the threads, so "2 threads"
     * really computes rows on both. */
    llm_ctx_params p = {.n_slots = slots,
                        .n_ctx = 96,
                        .n_threads = threads,
                        .path = path,
                        .max_tokens = max_tokens,
                        .parallel_min = 1,
                        .kv_f32 = g_kv_f32};
    if (llm_ctx_new(m, &p, &c, err, sizeof err) != 0)
        fail_msg("llm_ctx_new: %s", err);
    return c;
}

/* Prompt s: a deterministic token list of length 3 + 4s (so the batch holds
 * sequences of different lengths). */
static int prompt(const llm_model *m, int s, int32_t *ids)
{
    int n = 3 + 4 * s, v = llm_model_hparams(m)->n_vocab;
    uint32_t x = 12345u + (uint32_t)s * 977u;
    ids[0] = tok_bos(llm_model_tok(m));
    for (int i = 1; i < n; i++) {
        x = x * 1103515245u + 12345u;
        ids[i] = 3 + (int32_t)((x >> 8) % (uint32_t)(v - 3));
    }
    return n;
}

/* Logits of sequence s: the prompt's last position, then N_GEN greedy steps
 * (out: (N_GEN + 1) * n_vocab).  Decoded alone, prefilled in chunks of
 * `chunk` tokens. */
static void run_alone(llm_ctx *c, const llm_model *m, int s, int chunk, float *out)
{
    char err[512];
    int V = llm_model_hparams(m)->n_vocab;
    int32_t ids[64];
    int n = prompt(m, s, ids);
    llm_ctx_reset_slot(c, 0);
    for (int at = 0; at < n; at += chunk) {
        int len = n - at < chunk ? n - at : chunk;
        llm_seq q = {.slot = 0, .tokens = ids + at, .n_tokens = len, .logits = out};
        if (llm_decode(c, &q, 1, err, sizeof err) != 0)
            fail_msg("llm_decode: %s", err);
    }
    for (int st = 1; st <= N_GEN; st++) {
        int32_t id = sampler_greedy(out + (size_t)(st - 1) * (size_t)V, V);
        llm_seq q = {.slot = 0, .tokens = &id, .n_tokens = 1, .logits = out + (size_t)st * V};
        if (llm_decode(c, &q, 1, err, sizeof err) != 0)
            fail_msg("llm_decode: %s", err);
    }
}

/* All N_SEQ sequences in one batch: prompts together, then steps together. */
static void run_batch(llm_ctx *c, const llm_model *m, float *out /* [N_SEQ][N_GEN+1][V] */)
{
    char err[512];
    int V = llm_model_hparams(m)->n_vocab;
    size_t per = (size_t)(N_GEN + 1) * (size_t)V;
    int32_t ids[N_SEQ][64], next[N_SEQ];
    llm_seq q[N_SEQ];
    for (int s = 0; s < N_SEQ; s++) {
        llm_ctx_reset_slot(c, s);
        /* Reverse slot order so slot and batch position differ. */
        int slot = N_SEQ - 1 - s;
        q[s] = (llm_seq){.slot = slot,
                         .tokens = ids[s],
                         .n_tokens = prompt(m, s, ids[s]),
                         .logits = out + (size_t)s * per};
    }
    if (llm_decode(c, q, N_SEQ, err, sizeof err) != 0)
        fail_msg("llm_decode batch: %s", err);
    for (int st = 1; st <= N_GEN; st++) {
        for (int s = 0; s < N_SEQ; s++) {
            next[s] = sampler_greedy(out + (size_t)s * per + (size_t)(st - 1) * V, V);
            q[s].tokens = &next[s];
            q[s].n_tokens = 1;
            q[s].logits = out + (size_t)s * per + (size_t)st * V;
        }
        if (llm_decode(c, q, N_SEQ, err, sizeof err) != 0)
            fail_msg("llm_decode batch step: %s", err);
    }
}

static void check_determinism(const char *path, bool kv_f32)
{
    g_kv_f32 = kv_f32;
    llm_model *m = load(path);
    int V = llm_model_hparams(m)->n_vocab;
    size_t per = (size_t)(N_GEN + 1) * (size_t)V;
    float *ref = malloc(N_SEQ * per * sizeof *ref), *got = malloc(N_SEQ * per * sizeof *got);
    assert_non_null(ref);
    assert_non_null(got);
    /* Reference: scalar, 1 thread, each sequence alone, whole prompt at once. */
    llm_ctx *c = ctx(m, 1, 1, KN_PATH_SCALAR, 64);
    for (int s = 0; s < N_SEQ; s++)
        run_alone(c, m, s, 64, ref + (size_t)s * per);
    llm_ctx_free(c);
    for (size_t i = 0; i < N_SEQ * per; i++)
        assert_true(isfinite(ref[i]));

    if (kn_ops_best()->path == KN_PATH_SCALAR)
        print_message("note: this CPU has no SIMD path; scalar only\n");
    int paths[] = {KN_PATH_SCALAR, KN_PATH_AVX2, KN_PATH_AVX512};
    for (size_t pi = 0; pi < sizeof paths / sizeof paths[0]; pi++) {
        if (!kn_ops_get(paths[pi]))
            continue; /* not on this CPU */
        for (int threads = 1; threads <= 2; threads++) {
            /* Alone, prompt in chunks of 3. */
            c = ctx(m, 1, threads, paths[pi], 64);
            for (int s = 0; s < N_SEQ; s++) {
                run_alone(c, m, s, 3, got + (size_t)s * per);
                if (memcmp(got + (size_t)s * per, ref + (size_t)s * per, per * sizeof *got) != 0)
                    fail_msg("%s: sequence %d alone differs (path %s, %d threads, chunks of 3, "
                             "%s KV)",
                             path, s, kn_ops_get(paths[pi])->name, threads, kv_f32 ? "F32" : "F16");
            }
            llm_ctx_free(c);
            /* In a batch of 8. */
            c = ctx(m, N_SEQ, threads, paths[pi], 256);
            run_batch(c, m, got);
            for (int s = 0; s < N_SEQ; s++)
                if (memcmp(got + (size_t)s * per, ref + (size_t)s * per, per * sizeof *got) != 0)
                    fail_msg("%s: sequence %d differs in a batch of %d (path %s, %d threads)", path,
                             s, N_SEQ, kn_ops_get(paths[pi])->name, threads);
            llm_ctx_free(c);
        }
    }
    free(ref);
    free(got);
    llm_model_free(m);
}

static void test_determinism_f32(void **state)
{
    (void)state;
    check_determinism(g_f32, true);
    check_determinism(g_f32, false);
}

static void test_determinism_f16(void **state)
{
    (void)state;
    check_determinism(g_f16, false);
}

static void test_determinism_q8_0(void **state)
{
    (void)state;
    check_determinism(g_q8, false);
}

/* Quantized models stay close to the model they came from. */
static void test_quantized_close(void **state)
{
    (void)state;
    llm_model *mf = load(g_f32), *m16 = load(g_f16), *mq = load(g_q8);
    int V = llm_model_hparams(mf)->n_vocab;
    size_t per = (size_t)(N_GEN + 1) * (size_t)V;
    float *a = malloc(per * sizeof *a), *b = malloc(per * sizeof *b);
    llm_ctx *cf = ctx(mf, 1, 2, -1, 64), *c16 = ctx(m16, 1, 2, -1, 64), *cq = ctx(mq, 1, 2, -1, 64);
    char err[512];
    int32_t ids[64];
    int n = prompt(mf, 3, ids);
    llm_seq q = {.slot = 0, .tokens = ids, .n_tokens = n, .logits = a};
    assert_int_equal(llm_decode(cf, &q, 1, err, sizeof err), 0);
    q.logits = b;
    assert_int_equal(llm_decode(c16, &q, 1, err, sizeof err), 0);
    float d16 = 0, dq = 0, scale = 0;
    for (int i = 0; i < V; i++) {
        d16 = fmaxf(d16, fabsf(a[i] - b[i]));
        scale = fmaxf(scale, fabsf(a[i]));
    }
    assert_int_equal(llm_decode(cq, &q, 1, err, sizeof err), 0);
    for (int i = 0; i < V; i++)
        dq = fmaxf(dq, fabsf(a[i] - b[i]));
    print_message("tiny: max |logit| %.3f; F16 differs by %.2g, Q8_0 by %.2g\n", scale, d16, dq);
    assert_true(scale > 0.5f); /* the logits are not degenerate */
    assert_true(d16 < 0.02f * scale);
    assert_true(dq < 0.1f * scale);
    assert_true(dq > 0); /* quantization did change something */
    free(a);
    free(b);
    llm_ctx_free(cf);
    llm_ctx_free(c16);
    llm_ctx_free(cq);
    llm_model_free(mf);
    llm_model_free(m16);
    llm_model_free(mq);
}

static void test_bad_batches(void **state)
{
    (void)state;
    char err[512];
    llm_model *m = load(g_f32);
    int V = llm_model_hparams(m)->n_vocab;
    llm_ctx *c = ctx(m, 2, 1, -1, 16);
    assert_int_equal(llm_ctx_n_ctx(c), 96);
    float *logits = malloc((size_t)V * sizeof *logits);
    int32_t ids[20] = {1, 5, 6};
    llm_seq q = {.slot = 0, .tokens = ids, .n_tokens = 3, .logits = logits};
    assert_int_equal(llm_decode(c, &q, 1, err, sizeof err), 0);
    assert_int_equal(llm_ctx_slot_pos(c, 0), 3);

    llm_seq bad = q;
    bad.slot = 2;
    assert_int_equal(llm_decode(c, &bad, 1, err, sizeof err), FB_EINVAL);
    assert_non_null(strstr(err, "slot 2"));
    bad = q;
    int32_t oob = V;
    bad.tokens = &oob;
    bad.n_tokens = 1;
    assert_int_equal(llm_decode(c, &bad, 1, err, sizeof err), FB_EINVAL);
    assert_non_null(strstr(err, "out of range"));
    llm_seq two[2] = {q, q};
    assert_int_equal(llm_decode(c, two, 2, err, sizeof err), FB_EINVAL);
    assert_non_null(strstr(err, "twice"));
    bad = q;
    bad.n_tokens = 17; /* more than max_tokens */
    assert_int_equal(llm_decode(c, &bad, 1, err, sizeof err), FB_ETOOBIG);
    bad.n_tokens = 0;
    assert_int_equal(llm_decode(c, &bad, 1, err, sizeof err), FB_EINVAL);
    /* Nothing above moved the slot. */
    assert_int_equal(llm_ctx_slot_pos(c, 0), 3);
    /* Fill the context to its end, then one more is refused. */
    while (llm_ctx_slot_pos(c, 0) < 96) {
        int room = 96 - llm_ctx_slot_pos(c, 0);
        q.n_tokens = room < 16 ? room : 16;
        for (int i = 0; i < q.n_tokens; i++)
            ids[i] = 3 + i;
        assert_int_equal(llm_decode(c, &q, 1, err, sizeof err), 0);
    }
    q.n_tokens = 1;
    assert_int_equal(llm_decode(c, &q, 1, err, sizeof err), FB_ETOOBIG);
    assert_non_null(strstr(err, "context"));
    assert_int_equal(llm_ctx_slot_pos(c, 0), 96);
    llm_ctx_reset_slot(c, 0);
    assert_int_equal(llm_ctx_slot_pos(c, 0), 0);
    free(logits);
    llm_ctx_free(c);
    llm_model_free(m);
}

static void test_bad_models(void **state)
{
    (void)state;
    char err[512], path[96];
    llm_model *m = NULL;
    assert_int_equal(llm_model_load("/nonexistent/model.gguf", &m, err, sizeof err) < 0, 1);
    assert_non_null(strstr(err, "/nonexistent/model.gguf"));
    /* A copy of the tiny model claiming another architecture. */
    FILE *f = fopen(g_f32, "rb");
    assert_non_null(f);
    static unsigned char buf[4 << 20];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    assert_true(n > 0 && n < sizeof buf);
    unsigned char *at = memmem(buf, n, "llama", 5);
    assert_non_null(at);
    memcpy(at, "lla_a", 5);
    snprintf(path, sizeof path, "%s/other.gguf", g_dir);
    f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(buf, 1, n, f), n);
    fclose(f);
    assert_true(llm_model_load(path, &m, err, sizeof err) < 0);
    assert_non_null(strstr(err, "architecture"));
    /* Truncated. */
    f = fopen(path, "wb");
    assert_int_equal(fwrite(buf, 1, n / 2, f), n / 2);
    fclose(f);
    assert_true(llm_model_load(path, &m, err, sizeof err) < 0);
    print_message("truncated model: %s\n", err);
    unlink(path);
    /* Bad context parameters. */
    m = load(g_f32);
    llm_ctx *c = NULL;
    llm_ctx_params p = {.n_slots = 0, .n_threads = 1};
    assert_int_equal(llm_ctx_new(m, &p, &c, err, sizeof err), FB_EINVAL);
    p = (llm_ctx_params){.n_slots = 1, .n_threads = 0};
    assert_int_equal(llm_ctx_new(m, &p, &c, err, sizeof err), FB_EINVAL);
    /* n_ctx is capped by the model's context length. */
    p = (llm_ctx_params){.n_slots = 1, .n_threads = 1, .n_ctx = 1 << 20, .path = -1};
    assert_int_equal(llm_ctx_new(m, &p, &c, err, sizeof err), 0);
    assert_int_equal(llm_ctx_n_ctx(c), llm_model_hparams(m)->n_ctx_train);
    llm_ctx_free(c);
    llm_model_free(m);
}

/* A copy of the tiny model with one extra key/value. */
static void write_with_key(const char *path, const char *key, const char *sval, uint32_t uval)
{
    char err[512];
    gguf_file *f;
    assert_int_equal(gguf_open(g_f32, &f, err, sizeof err), 0);
    gguf_w *w;
    assert_int_equal(gguf_w_new(&w), 0);
    for (size_t i = 0; i < gguf_n_kv(f); i++)
        gguf_w_copy_kv(w, gguf_kv_at(f, i));
    if (sval)
        gguf_w_add_str(w, key, sval);
    else
        gguf_w_add_u32(w, key, uval);
    for (size_t i = 0; i < gguf_n_tensors(f); i++) {
        const gguf_tensor *t = gguf_tensor_at(f, i);
        gguf_w_add_tensor(w, t->name, t->type, t->n_dims, t->ne, t->data, t->nbytes);
    }
    if (gguf_w_write(w, path, GGUF_W_OVERWRITE, NULL, err, sizeof err) != 0)
        fail_msg("write %s: %s", path, err);
    gguf_w_free(w);
    gguf_close(f);
}

/* Features that would silently change the numbers are refused by name. */
static void test_unsupported_features(void **state)
{
    (void)state;
    char err[512], path[96];
    llm_model *m = NULL;
    snprintf(path, sizeof path, "%s/scaled.gguf", g_dir);
    write_with_key(path, "llama.rope.scaling.type", "yarn", 0);
    assert_int_equal(llm_model_load(path, &m, err, sizeof err), FB_EINVAL);
    assert_non_null(strstr(err, "RoPE scaling \"yarn\""));
    write_with_key(path, "llama.rope.scaling.type", "none", 0);
    assert_int_equal(llm_model_load(path, &m, err, sizeof err), 0);
    llm_model_free(m);
    write_with_key(path, "llama.expert_count", NULL, 8);
    assert_int_equal(llm_model_load(path, &m, err, sizeof err), FB_EINVAL);
    assert_non_null(strstr(err, "mixture of 8 experts"));
    unlink(path);
}

/* ---- sampler ---- */

static void test_sampler_greedy(void **state)
{
    (void)state;
    float l[5] = {1, 3, 2, 3, -1};
    assert_int_equal(sampler_greedy(l, 5), 1); /* tie: lowest id */
    sampler *s;
    sampler_params p = {0};
    assert_int_equal(sampler_new(5, &p, &s), 0);
    assert_int_equal(sampler_next(s, l), 1);
    sampler_free(s);
    p = (sampler_params){.temperature = 1, .top_k = 1, .seed = 9};
    assert_int_equal(sampler_new(5, &p, &s), 0);
    for (int i = 0; i < 50; i++)
        assert_int_equal(sampler_next(s, l), 1); /* top_k 1: the greedy choice */
    sampler_free(s);
    p = (sampler_params){.temperature = 1, .top_p = 0.01f, .seed = 9};
    assert_int_equal(sampler_new(5, &p, &s), 0);
    for (int i = 0; i < 50; i++)
        assert_int_equal(sampler_next(s, l), 1);
    sampler_free(s);
    p = (sampler_params){.temperature = 1, .top_k = -1};
    assert_int_equal(sampler_new(5, &p, &s), FB_EINVAL);
    p = (sampler_params){.temperature = NAN};
    assert_int_equal(sampler_new(5, &p, &s), FB_EINVAL);
}

static void draw(uint64_t seed, float temp, int top_k, float top_p, const float *l, int n,
                 int32_t *out, int count)
{
    sampler *s;
    sampler_params p = {.temperature = temp, .top_k = top_k, .top_p = top_p, .seed = seed};
    assert_int_equal(sampler_new(n, &p, &s), 0);
    for (int i = 0; i < count; i++)
        out[i] = sampler_next(s, l);
    sampler_free(s);
}

static void test_sampler_seeded(void **state)
{
    (void)state;
    enum { N = 64, DRAWS = 4000 };
    float l[N];
    for (int i = 0; i < N; i++)
        l[i] = (float)((i * 37) % 11) * 0.3f;
    static int32_t a[DRAWS], b[DRAWS];
    draw(42, 0.8f, 20, 0.9f, l, N, a, DRAWS);
    draw(42, 0.8f, 20, 0.9f, l, N, b, DRAWS);
    assert_memory_equal(a, b, sizeof a); /* same seed, same stream */
    draw(43, 0.8f, 20, 0.9f, l, N, b, DRAWS);
    assert_memory_not_equal(a, b, sizeof a);
    /* top_k 20 keeps the 20 highest logits only. */
    float sorted[N];
    memcpy(sorted, l, sizeof l);
    for (int i = 0; i < DRAWS; i++) {
        int higher = 0;
        for (int j = 0; j < N; j++)
            higher += l[j] > l[a[i]] || (l[j] == l[a[i]] && j < a[i]);
        assert_true(higher < 20);
    }
    /* Frequencies follow the softmax: two tokens with logits 0 and ln 3. */
    float two[2] = {0, logf(3)};
    draw(7, 1, 0, 1, two, 2, a, DRAWS);
    int ones = 0;
    for (int i = 0; i < DRAWS; i++)
        ones += a[i] == 1;
    /* Expected 3000 of 4000; 5 standard deviations is about 137. */
    assert_true(ones > 2860 && ones < 3140);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_determinism_f32),      cmocka_unit_test(test_determinism_f16),
        cmocka_unit_test(test_determinism_q8_0),     cmocka_unit_test(test_quantized_close),
        cmocka_unit_test(test_bad_batches),          cmocka_unit_test(test_bad_models),
        cmocka_unit_test(test_unsupported_features), cmocka_unit_test(test_sampler_greedy),
        cmocka_unit_test(test_sampler_seeded),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
