/* test_llama_ref.c - the forward pass against llama.cpp's outputs on the
 * reference models of ../shared/testdata/llama (README.md there gives the
 * formats and tolerances): prompt token ids exactly, greedy tokens exactly
 * over each prompt's stable prefix, and with teacher forcing every logit of
 * every prompt position and of all 32 generation steps within tolerance.
 * Skips with a message when ../shared/testdata is absent.
 *
 * FEDBFT_REF_VERBOSE=1 prints the measured maximum differences. */
#include "fb_error.h"
#include "kernels.h"
#include "model.h"
#include "sampler.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>
#include <math.h>

#define TD FEDBFT_TESTDATA "/llama/"
#define N_STEPS 32

static bool have_testdata(void)
{
    if (access(TD "tiny-llama-a.json", R_OK) == 0 && access(TD "kvf32", R_OK) == 0)
        return true;
    print_message("skipped: ../shared/testdata/llama not present (reference vectors come from "
                  "llama.cpp; nothing to compare with)\n");
    return false;
}

static float *read_f32(const char *path, size_t n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        fail_msg("cannot open %s", path);
    float *v = malloc(n * sizeof *v);
    assert_non_null(v);
    size_t got = fread(v, sizeof *v, n, f);
    int extra = fgetc(f);
    fclose(f);
    if (got != n || extra != EOF)
        fail_msg("%s: expected exactly %zu floats", path, n);
    return v;
}

static float max_abs_diff(const float *a, const float *b, size_t n)
{
    float m = 0;
    for (size_t i = 0; i < n; i++) {
        float d = fabsf(a[i] - b[i]);
        if (!(d <= m)) /* NaN counts as a difference */
            m = isnan(d) ? INFINITY : d;
    }
    return m;
}

/* Tolerances per model and KV cache type: prompt positions and generation
 * steps, against llama.cpp's F32-KV-cache files (kvf32/) for our F32 cache
 * and its default F16-KV files for our F16 cache; and the top1-top2 margin
 * above which the argmax of a reference row must be ours too. */
typedef struct ref_case {
    const char *model; /* file stem, e.g. "tiny-llama-a" */
    const char *gguf;
    float tol32_prompt, tol32_steps, tol16_prompt, tol16_steps, argmax_margin;
} ref_case;

typedef struct measured {
    float prompt, steps;
    int greedy_checked, argmax_checked;
} measured;

static void check_prompt(const llm_model *m, llm_ctx *c, const ref_case *rc, bool kv_f32, int pi,
                         json_t *p, int n_vocab, measured *ms)
{
    char path[512], err[256];
    const char *dir = kv_f32 ? "kvf32/" : "";
    float tol_prompt = kv_f32 ? rc->tol32_prompt : rc->tol16_prompt;
    float tol_steps = kv_f32 ? rc->tol32_steps : rc->tol16_steps;
    json_t *jt = json_object_get(p, "tokens");
    int n = (int)json_array_size(jt);
    assert_true(n >= 1);
    int32_t *ids = malloc((size_t)n * sizeof *ids);
    for (int i = 0; i < n; i++)
        ids[i] = (int32_t)json_integer_value(json_array_get(jt, (size_t)i));

    /* The prompt tokenizes to the reference ids. */
    const char *text = json_string_value(json_object_get(p, "text"));
    int32_t mine[256];
    size_t got = 0;
    assert_int_equal(tok_encode(llm_model_tok(m), text, strlen(text), true, mine, 256, &got), 0);
    assert_int_equal(got, n);
    assert_memory_equal(mine, ids, (size_t)n * sizeof *ids);

    /* Teacher-forced prompt: logits at every position. */
    float *all = malloc((size_t)n * (size_t)n_vocab * sizeof *all);
    llm_ctx_reset_slot(c, 0);
    llm_seq s = {.slot = 0, .tokens = ids, .n_tokens = n, .logits = all, .logits_all = true};
    if (llm_decode(c, &s, 1, err, sizeof err) != 0)
        fail_msg("llm_decode: %s", err);
    snprintf(path, sizeof path, TD "%s%s.p%d.prompt_all.f32", dir, rc->model, pi);
    float *ref = read_f32(path, (size_t)n * (size_t)n_vocab);
    float d = max_abs_diff(all, ref, (size_t)n * (size_t)n_vocab);
    ms->prompt = d > ms->prompt ? d : ms->prompt;
    if (d > tol_prompt)
        fail_msg("%s p%d (%s KV): prompt logits differ from llama.cpp's by %g > %g", rc->model, pi,
                 kv_f32 ? "F32" : "F16", d, tol_prompt);
    free(ref);

    /* Generation: greedy over the stable prefix, then teacher forcing. */
    json_t *kv = json_object_get(p, "kv_f32_variant");
    json_t *gt = json_object_get(kv_f32 ? kv : p, "greedy_tokens");
    json_t *gap = json_object_get(p, "greedy_top1_top2_gap");
    int stable = (int)json_integer_value(json_object_get(p, "greedy_stable_prefix_0p05"));
    /* The stable prefix is measured on the default run; it carries over to
     * the F32-KV run where both runs chose the same tokens. */
    if (kv_f32 && !json_is_true(json_object_get(kv, "same_greedy_as_f16_kv")))
        stable = 0;
    assert_int_equal(json_array_size(gt), N_STEPS);
    snprintf(path, sizeof path, TD "%s%s.p%d.greedy.f32", dir, rc->model, pi);
    float *steps = read_f32(path, (size_t)N_STEPS * (size_t)n_vocab);
    float *logits = malloc((size_t)n_vocab * sizeof *logits);
    memcpy(logits, all + (size_t)(n - 1) * (size_t)n_vocab, (size_t)n_vocab * sizeof *logits);
    for (int st = 0; st < N_STEPS; st++) {
        const float *row = steps + (size_t)st * (size_t)n_vocab;
        d = max_abs_diff(logits, row, (size_t)n_vocab);
        ms->steps = d > ms->steps ? d : ms->steps;
        if (getenv("FEDBFT_REF_VERBOSE") && d > 1e-3f)
            print_message("  %s p%d step %d: max |diff| %.3g\n", rc->model, pi, st, d);
        if (d > tol_steps)
            fail_msg("%s p%d step %d (%s KV): logits differ from llama.cpp's by %g > %g", rc->model,
                     pi, st, kv_f32 ? "F32" : "F16", d, tol_steps);
        int32_t want = (int32_t)json_integer_value(json_array_get(gt, (size_t)st));
        int32_t mine_id = sampler_greedy(logits, n_vocab);
        if (st < stable) {
            ms->greedy_checked++;
            if (mine_id != want)
                fail_msg("%s p%d step %d (stable prefix %d): greedy %d, llama.cpp %d", rc->model,
                         pi, st, stable, mine_id, want);
        }
        double margin = json_real_value(json_array_get(gap, (size_t)st));
        if (margin > rc->argmax_margin) {
            ms->argmax_checked++;
            if (mine_id != sampler_greedy(row, n_vocab))
                fail_msg("%s p%d step %d: argmax %d differs where the margin is %g", rc->model, pi,
                         st, mine_id, margin);
        }
        llm_seq one = {.slot = 0, .tokens = &want, .n_tokens = 1, .logits = logits};
        if (st + 1 < N_STEPS && llm_decode(c, &one, 1, err, sizeof err) != 0)
            fail_msg("llm_decode: %s", err);
    }
    free(logits);
    free(steps);
    free(all);
    free(ids);
}

static void run_mode(const ref_case *rc, json_t *root, const llm_model *m, bool kv_f32)
{
    char err[256];
    int n_vocab = llm_model_hparams(m)->n_vocab;
    llm_ctx *c;
    llm_ctx_params cp = {.n_slots = 1, .n_ctx = 128, .n_threads = 2, .path = -1, .kv_f32 = kv_f32};
    if (llm_ctx_new(m, &cp, &c, err, sizeof err) != 0)
        fail_msg("llm_ctx_new: %s", err);
    json_t *prompts = json_object_get(root, "prompts");
    assert_int_equal(json_array_size(prompts), 4);
    measured ms = {0};
    for (size_t i = 0; i < json_array_size(prompts); i++)
        check_prompt(m, c, rc, kv_f32, (int)i, json_array_get(prompts, i), n_vocab, &ms);
    assert_true(ms.greedy_checked > 0);
    if (getenv("FEDBFT_REF_VERBOSE"))
        print_message("%s [%s, %s KV]: max |diff| prompt %.3g, 32 steps %.3g; %d greedy tokens "
                      "and %d argmaxes checked\n",
                      rc->model, llm_ctx_path_name(c), kv_f32 ? "F32" : "F16", ms.prompt, ms.steps,
                      ms.greedy_checked, ms.argmax_checked);
    llm_ctx_free(c);
}

static void run_case(const ref_case *rc)
{
    if (!have_testdata())
        return;
    char path[512], err[256];
    snprintf(path, sizeof path, TD "%s.json", rc->model);
    json_error_t je;
    json_t *root = json_load_file(path, 0, &je);
    if (!root)
        fail_msg("%s: %s", path, je.text);
    snprintf(path, sizeof path, TD "%s", rc->gguf);
    llm_model *m;
    if (llm_model_load(path, &m, err, sizeof err) != 0)
        fail_msg("llm_model_load: %s", err);
    assert_int_equal(llm_model_hparams(m)->n_vocab,
                     json_integer_value(json_object_get(root, "n_vocab")));
    run_mode(rc, root, m, true);
    run_mode(rc, root, m, false);
    llm_model_free(m);
    json_decref(root);
}

static void test_ref_f32(void **state)
{
    (void)state;
    ref_case rc = {"tiny-llama-a", "tiny-llama-a.f32.gguf", 1e-4f, 1e-4f, 2e-3f, 2e-3f, 1e-3f};
    run_case(&rc);
}

static void test_ref_c_deq(void **state)
{
    (void)state;
    ref_case rc = {
        "tiny-llama-c-deq", "tiny-llama-c-deq.f32.gguf", 1e-4f, 1e-4f, 2e-3f, 2e-3f, 1e-3f};
    run_case(&rc);
}

static void test_ref_q8_0(void **state)
{
    (void)state;
    /* Activations are quantized exactly as llama.cpp does, so the prompt
     * logits agree closely (measured 1e-6 with an F32 cache).  During
     * generation one rounding tie that llama.cpp's single-token kernel breaks
     * the other way (prompt "a", step 1) shifts the rest of that prompt by up
     * to 0.1, inside the README's loose Q8_0 tolerance. */
    ref_case rc = {"tiny-llama-c", "tiny-llama-c.q8_0.gguf", 1e-3f, 0.25f, 0.25f, 0.25f, 0.3f};
    run_case(&rc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ref_f32),
        cmocka_unit_test(test_ref_c_deq),
        cmocka_unit_test(test_ref_q8_0),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
