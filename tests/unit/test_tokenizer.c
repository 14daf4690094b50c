/* test_tokenizer.c - the llama SentencePiece tokenizer: merge order, byte
 * fallback, UTF-8 and spaces on a small in-test vocabulary, then exact
 * agreement with llama.cpp's ids and pieces on the reference vocabulary when
 * ../shared/testdata is present. */
#include "fb_error.h"
#include "gguf.h"
#include "tokenizer.h"

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

/* ---- a small vocabulary ---- */

#define U2581 "\xe2\x96\x81"

enum { N_BYTES = 256, FIRST_BYTE = 3 };

static const char *const extra[] = {
    "a",
    "b",
    "c",
    U2581,
    "ab",
    "bc",
    "x",
    "y",
    "z",
    "xy",
    "yz",
    "\xc3\xa9" /* é */,
    U2581 "\xc3\xa9",
    U2581 "a",
    "<s>" U2581,
};
static const float extra_score[] = {
    0, 0, 0, 0, 5, 5, 0, 0, 0, 1, 3, 0, 2, -1, -1,
};
#define N_EXTRA (sizeof extra / sizeof extra[0])
#define N_SMALL (FIRST_BYTE + N_BYTES + N_EXTRA)

static int32_t id_of(const char *piece)
{
    for (size_t i = 0; i < N_EXTRA; i++)
        if (strcmp(extra[i], piece) == 0)
            return (int32_t)(FIRST_BYTE + N_BYTES + i);
    fail_msg("no piece %s", piece);
    return -1;
}

static int32_t byte_tok(unsigned b)
{
    return (int32_t)(FIRST_BYTE + b);
}

static tok *small_vocab(void)
{
    static char names[N_BYTES][8];
    const char *pieces[N_SMALL];
    float scores[N_SMALL];
    pieces[0] = "<unk>";
    pieces[1] = "<s>";
    pieces[2] = "</s>";
    for (unsigned b = 0; b < N_BYTES; b++) {
        snprintf(names[b], sizeof names[b], "<0x%02X>", b);
        pieces[FIRST_BYTE + b] = names[b];
    }
    for (size_t i = 0; i < N_EXTRA; i++)
        pieces[FIRST_BYTE + N_BYTES + i] = extra[i];
    for (size_t i = 0; i < N_SMALL; i++)
        scores[i] = i < FIRST_BYTE + N_BYTES ? 0.0f : extra_score[i - FIRST_BYTE - N_BYTES];
    tok *t = NULL;
    char err[256] = "";
    int rc = tok_new(pieces, NULL, scores, NULL, N_SMALL, 1, 2, 0, &t, err, sizeof err);
    if (rc != 0)
        fail_msg("tok_new: %s", err);
    return t;
}

static void expect(tok *t, const char *text, bool bos, const int32_t *want, size_t nwant)
{
    int32_t out[64];
    size_t n = 0;
    assert_int_equal(tok_encode(t, text, strlen(text), bos, out, 64, &n), 0);
    if (n != nwant)
        fail_msg("\"%s\": %zu tokens, want %zu", text, n, nwant);
    for (size_t i = 0; i < n; i++)
        if (out[i] != want[i])
            fail_msg("\"%s\": token %zu is %d, want %d", text, i, out[i], want[i]);
}

#define EXPECT(t, text, bos, ...)                                                                  \
    do {                                                                                           \
        const int32_t w_[] = {__VA_ARGS__};                                                        \
        expect(t, text, bos, w_, sizeof w_ / sizeof w_[0]);                                        \
    } while (0)

static void test_merge_by_score(void **state)
{
    (void)state;
    tok *t = small_vocab();
    /* "yz" (3) beats "xy" (1) although "xy" is further left. */
    EXPECT(t, "xyz", false, id_of(U2581), id_of("x"), id_of("yz"));
    /* "▁a" (-1) loses to "ab" (5); afterwards "▁" + "ab" is no piece. */
    EXPECT(t, "ab", false, id_of(U2581), id_of("ab"));
    EXPECT(t, "a", false, id_of(U2581 "a"));
    tok_free(t);
}

static void test_ties_leftmost(void **state)
{
    (void)state;
    tok *t = small_vocab();
    /* "ab" and "bc" both score 5: the left one wins and consumes the b. */
    EXPECT(t, "abc", false, id_of(U2581), id_of("ab"), id_of("c"));
    EXPECT(t, "bcab", false, id_of(U2581), id_of("bc"), id_of("ab"));
    tok_free(t);
}

static void test_byte_fallback(void **state)
{
    (void)state;
    tok *t = small_vocab();
    EXPECT(t, "q", false, id_of(U2581), byte_tok('q'));
    /* 日 = E6 97 A5: one unit with no piece -> its three bytes. */
    EXPECT(t, "\xe6\x97\xa5", false, id_of(U2581), byte_tok(0xe6), byte_tok(0x97), byte_tok(0xa5));
    /* A stray continuation byte is a unit of its own. */
    EXPECT(t,
           "\x80"
           "a",
           false, id_of(U2581), byte_tok(0x80), id_of("a"));
    /* "<s>" is plain text: no BOS, and "<s>▁" never forms since it is
     * reachable only through pieces the vocabulary lacks. */
    EXPECT(t, "<s> ", false, id_of(U2581), byte_tok('<'), byte_tok('s'), byte_tok('>'),
           id_of(U2581));
    tok_free(t);
}

static void test_utf8_and_spaces(void **state)
{
    (void)state;
    tok *t = small_vocab();
    EXPECT(t, "\xc3\xa9", false, id_of(U2581 "\xc3\xa9"));
    EXPECT(t, "a \xc3\xa9", true, 1, id_of(U2581 "a"), id_of(U2581 "\xc3\xa9"));
    EXPECT(t, " ", false, id_of(U2581), id_of(U2581));
    EXPECT(t, "  ", false, id_of(U2581), id_of(U2581), id_of(U2581));
    EXPECT(t, "\xc3\xa9\xc3\xa9", false, id_of(U2581 "\xc3\xa9"), id_of("\xc3\xa9"));
    /* A literal ▁ in the text is the same as a space. */
    EXPECT(t, U2581 "a", false, id_of(U2581), id_of(U2581 "a"));
    tok_free(t);
}

static void test_bos_empty_and_limits(void **state)
{
    (void)state;
    tok *t = small_vocab();
    int32_t out[4];
    size_t n = 99;
    assert_int_equal(tok_encode(t, "", 0, true, out, 4, &n), 0);
    assert_int_equal(n, 1);
    assert_int_equal(out[0], 1);
    assert_int_equal(tok_encode(t, "", 0, false, out, 4, &n), 0);
    assert_int_equal(n, 0);
    /* Too small a buffer: ETOOBIG and the count needed. */
    assert_int_equal(tok_encode(t, "q q", 3, true, out, 2, &n), FB_ETOOBIG);
    assert_int_equal(n, 5);
    size_t big = TOK_MAX_TEXT + 1;
    char *text = malloc(big);
    assert_non_null(text);
    memset(text, 'a', big);
    assert_int_equal(tok_encode(t, text, big, false, out, 4, &n), FB_ETOOBIG);
    free(text);
    assert_int_equal(tok_n_vocab(t), N_SMALL);
    tok_free(t);
}

static void expect_piece(tok *t, int32_t id, const char *want, size_t wlen)
{
    char buf[32];
    size_t n = 0;
    assert_int_equal(tok_decode_piece(t, id, buf, sizeof buf, &n), 0);
    assert_int_equal(n, wlen);
    assert_memory_equal(buf, want, wlen);
}

static void test_decode(void **state)
{
    (void)state;
    tok *t = small_vocab();
    expect_piece(t, id_of(U2581 "\xc3\xa9"), " \xc3\xa9", 3);
    expect_piece(t, id_of(U2581), " ", 1);
    expect_piece(t, byte_tok(0), "\0", 1);
    expect_piece(t, byte_tok(0xff), "\xff", 1);
    expect_piece(t, 1, "<s>", 3);
    expect_piece(t, 0, "<unk>", 5);
    expect_piece(t, id_of("<s>" U2581), "<s> ", 4);
    char buf[2];
    size_t n;
    assert_int_equal(tok_decode_piece(t, 0, buf, 2, &n), FB_ETOOBIG);
    assert_int_equal(n, 5);
    assert_int_equal(tok_decode_piece(t, -1, buf, 2, &n), FB_EINVAL);
    assert_int_equal(tok_decode_piece(t, (int32_t)N_SMALL, buf, 2, &n), FB_EINVAL);

    /* Round trip: decoding the ids of a text gives " " + text. */
    const char *text = "ab xyz \xc3\xa9q\xe6\x97\xa5";
    int32_t ids[64];
    assert_int_equal(tok_encode(t, text, strlen(text), true, ids, 64, &n), 0);
    char joined[128];
    size_t jl = 0;
    for (size_t i = 1; i < n; i++) {
        size_t pl;
        assert_int_equal(tok_decode_piece(t, ids[i], joined + jl, sizeof joined - jl, &pl), 0);
        jl += pl;
    }
    assert_int_equal(jl, strlen(text) + 1);
    assert_memory_equal(joined, " ", 1);
    assert_memory_equal(joined + 1, text, strlen(text));
    tok_free(t);
}

static void test_validation(void **state)
{
    (void)state;
    tok *t = NULL;
    char err[256];
    const char *p[] = {"<unk>", "<s>", "</s>", "a"};
    const float s[] = {0, 0, 0, 0};
    assert_int_equal(tok_new(p, NULL, s, NULL, 4, 1, 2, 0, &t, err, sizeof err), 0);
    tok_free(t);
    t = NULL;
    assert_int_equal(tok_new(p, NULL, s, NULL, 4, 7, 2, 0, &t, err, sizeof err), FB_EINVAL);
    assert_non_null(strstr(err, "bos"));
    assert_null(t);
    const char *empty[] = {"<unk>", "", "</s>", "a"};
    assert_int_equal(tok_new(empty, NULL, s, NULL, 4, 1, 2, 0, &t, err, sizeof err), FB_ECORRUPT);
    assert_non_null(strstr(err, "token 1"));
    const float nan_s[] = {0, 0, 0, NAN};
    assert_int_equal(tok_new(p, NULL, nan_s, NULL, 4, 1, 2, 0, &t, err, sizeof err), FB_ECORRUPT);
    const int32_t bad_byte[] = {2, 3, 3, 6};
    assert_int_equal(tok_new(p, NULL, s, bad_byte, 4, 1, 2, 0, &t, err, sizeof err), FB_ECORRUPT);
    assert_non_null(strstr(err, "<0xNN>"));
    const int32_t bad_type[] = {2, 3, 3, 9};
    assert_int_equal(tok_new(p, NULL, s, bad_type, 4, 1, 2, 0, &t, err, sizeof err), FB_ECORRUPT);
    assert_int_equal(tok_new(p, NULL, s, NULL, 0, 1, 2, 0, &t, err, sizeof err), FB_EINVAL);
    assert_null(t);
}

/* ---- tok_from_gguf on small in-memory GGUF files ---- */

typedef struct wbuf {
    uint8_t p[4096];
    size_t len;
} wbuf;

static void put(wbuf *w, const void *d, size_t n)
{
    assert_true(w->len + n <= sizeof w->p);
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

/* A vocabulary of 4 tokens with n_scores scores (0: no scores key), the
 * given model name (NULL: no key) and bos id (-1: no key). */
static int from_gguf(uint64_t n_scores, const char *model, int bos, tok **t, char *err,
                     size_t errlen)
{
    static const char *const pieces[] = {"<unk>", "<s>", "</s>", "\xe2\x96\x81"};
    wbuf w = {0};
    put(&w, "GGUF", 4);
    w_u32(&w, 3);
    w_u64(&w, 0);
    w_u64(&w, 1 + (n_scores ? 1 : 0) + (model ? 1 : 0) + (bos >= 0 ? 1 : 0));
    w_str(&w, "tokenizer.ggml.tokens");
    w_u32(&w, GGUF_TYPE_ARRAY);
    w_u32(&w, GGUF_TYPE_STRING);
    w_u64(&w, 4);
    for (int i = 0; i < 4; i++)
        w_str(&w, pieces[i]);
    if (n_scores) {
        w_str(&w, "tokenizer.ggml.scores");
        w_u32(&w, GGUF_TYPE_ARRAY);
        w_u32(&w, GGUF_TYPE_FLOAT32);
        w_u64(&w, n_scores);
        for (uint64_t i = 0; i < n_scores; i++)
            w_u32(&w, 0);
    }
    if (model) {
        w_str(&w, "tokenizer.ggml.model");
        w_u32(&w, GGUF_TYPE_STRING);
        w_str(&w, model);
    }
    if (bos >= 0) {
        w_str(&w, "tokenizer.ggml.bos_token_id");
        w_u32(&w, GGUF_TYPE_UINT32);
        w_u32(&w, (uint32_t)bos);
    }
    gguf_file *gf = NULL;
    int rc = gguf_open_mem(w.p, w.len, "mem.gguf", &gf, err, errlen);
    if (rc != 0)
        fail_msg("gguf_open_mem: %s", err);
    rc = tok_from_gguf(gf, t, err, errlen);
    gguf_close(gf);
    return rc;
}

static void test_from_gguf_errors(void **state)
{
    (void)state;
    tok *t = NULL;
    char err[256] = "";
    assert_int_equal(from_gguf(4, "llama", 1, &t, err, sizeof err), 0);
    int32_t ids[4];
    size_t n;
    /* The tok outlives the gguf_file: it copied the pieces. */
    assert_int_equal(tok_encode(t, " ", 1, true, ids, 4, &n), 0);
    assert_int_equal(n, 3);
    assert_int_equal(ids[0], 1);
    assert_int_equal(ids[1], 3);
    assert_int_equal(ids[2], 3);
    assert_int_equal(tok_type_of(t, 3), TOK_TYPE_NORMAL);
    tok_free(t);
    t = NULL;
    assert_int_equal(from_gguf(0, NULL, -1, &t, err, sizeof err), FB_ENOENT);
    assert_non_null(strstr(err, "scores"));
    assert_int_equal(from_gguf(3, NULL, -1, &t, err, sizeof err), FB_ECORRUPT);
    assert_non_null(strstr(err, "counts must match"));
    assert_int_equal(from_gguf(4, "gpt2", -1, &t, err, sizeof err), FB_EINVAL);
    assert_non_null(strstr(err, "gpt2"));
    assert_int_equal(from_gguf(4, NULL, 9, &t, err, sizeof err), FB_EINVAL);
    assert_non_null(strstr(err, "bos"));
    assert_null(t);
}

/* ---- conformance with llama.cpp ---- */

#define TD FEDBFT_TESTDATA "/llama/"

static bool have_testdata(void)
{
    if (access(TD "tokenizer.json", R_OK) == 0 && access(TD "tiny-llama-a.f32.gguf", R_OK) == 0)
        return true;
    print_message("skipped: ../shared/testdata not present\n");
    return false;
}

static tok *load_ref(gguf_file **gf)
{
    char err[256] = "";
    if (gguf_open(TD "tiny-llama-a.f32.gguf", gf, err, sizeof err) != 0)
        fail_msg("gguf_open: %s", err);
    tok *t = NULL;
    if (tok_from_gguf(*gf, &t, err, sizeof err) != 0)
        fail_msg("tok_from_gguf: %s", err);
    return t;
}

static int check_case(tok *t, const char *text, size_t len, bool bos, json_t *tokens)
{
    size_t want = json_array_size(tokens);
    int32_t *out = calloc(want + 16, sizeof *out);
    assert_non_null(out);
    size_t n = 0;
    assert_int_equal(tok_encode(t, text, len, bos, out, want + 16, &n), 0);
    int ok = n == want;
    for (size_t i = 0; ok && i < n; i++)
        ok = out[i] == (int32_t)json_integer_value(json_array_get(tokens, i));
    if (!ok)
        print_error("mismatch for \"%s\" (bos=%d): %zu tokens, want %zu\n", text, bos, n, want);
    free(out);
    return ok;
}

static void test_conformance_cases(void **state)
{
    (void)state;
    if (!have_testdata())
        return;
    gguf_file *gf;
    tok *t = load_ref(&gf);
    json_error_t je;
    json_t *root = json_load_file(TD "tokenizer.json", 0, &je);
    if (!root)
        fail_msg("tokenizer.json: %s", je.text);
    json_t *cases = json_object_get(root, "cases");
    size_t ncases = json_array_size(cases), matched = 0;
    assert_true(ncases >= 64);
    for (size_t i = 0; i < ncases; i++) {
        json_t *c = json_array_get(cases, i);
        json_t *text = json_object_get(c, "text");
        matched += (size_t)check_case(t, json_string_value(text), json_string_length(text),
                                      json_is_true(json_object_get(c, "add_bos")),
                                      json_object_get(c, "tokens"));
    }
    print_message("tokenizer.json: %zu/%zu cases match\n", matched, ncases);
    assert_int_equal(matched, ncases);

    /* Every id's piece bytes. */
    json_t *hex = json_object_get(root, "pieces_hex");
    assert_int_equal(json_array_size(hex), tok_n_vocab(t));
    size_t pieces_ok = 0;
    for (size_t id = 0; id < json_array_size(hex); id++) {
        const char *h = json_string_value(json_array_get(hex, id));
        size_t hl = strlen(h);
        char want[TOK_MAX_PIECE_LEN], got[TOK_MAX_PIECE_LEN];
        assert_true(hl % 2 == 0 && hl / 2 <= sizeof want);
        for (size_t k = 0; k < hl / 2; k++) {
            unsigned b;
            assert_int_equal(sscanf(h + 2 * k, "%2x", &b), 1);
            want[k] = (char)b;
        }
        size_t n = 0;
        assert_int_equal(tok_decode_piece(t, (int32_t)id, got, sizeof got, &n), 0);
        if (n == hl / 2 && memcmp(got, want, n) == 0)
            pieces_ok++;
        else
            print_error("piece %zu differs\n", id);
    }
    print_message("tokenizer.json: %zu/%zu pieces match\n", pieces_ok, json_array_size(hex));
    assert_int_equal(pieces_ok, json_array_size(hex));
    json_decref(root);
    tok_free(t);
    gguf_close(gf);
}

static void test_conformance_prompts(void **state)
{
    (void)state;
    if (!have_testdata())
        return;
    gguf_file *gf;
    tok *t = load_ref(&gf);
    /* All the tiny models share one vocabulary. */
    static const char *const models[] = {TD "tiny-llama-a.json", TD "tiny-llama-c.json",
                                         TD "tiny-llama-c-deq.json"};
    size_t total = 0, matched = 0;
    for (size_t m = 0; m < sizeof models / sizeof models[0]; m++) {
        if (access(models[m], R_OK) != 0)
            continue;
        json_error_t je;
        json_t *root = json_load_file(models[m], 0, &je);
        if (!root)
            fail_msg("%s: %s", models[m], je.text);
        json_t *prompts = json_object_get(root, "prompts");
        for (size_t i = 0; i < json_array_size(prompts); i++) {
            json_t *p = json_array_get(prompts, i);
            json_t *text = json_object_get(p, "text");
            total++;
            matched += (size_t)check_case(t, json_string_value(text), json_string_length(text),
                                          true, json_object_get(p, "tokens"));
        }
        json_decref(root);
    }
    print_message("model prompts: %zu/%zu match\n", matched, total);
    assert_true(total > 0);
    assert_int_equal(matched, total);
    tok_free(t);
    gguf_close(gf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_merge_by_score),       cmocka_unit_test(test_ties_leftmost),
        cmocka_unit_test(test_byte_fallback),        cmocka_unit_test(test_utf8_and_spaces),
        cmocka_unit_test(test_bos_empty_and_limits), cmocka_unit_test(test_decode),
        cmocka_unit_test(test_validation),           cmocka_unit_test(test_from_gguf_errors),
        cmocka_unit_test(test_conformance_cases),    cmocka_unit_test(test_conformance_prompts),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
