/* tokenizer.c - llama SentencePiece tokenizer: vocabulary validation, a piece
 * hash table, and the score-ordered bigram merge that llama.cpp's
 * llm_tokenizer_spm performs, so token ids agree with llama.cpp exactly. */
#include "tokenizer.h"

#include "fb_error.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

struct tok {
    size_t n;
    char *text;    /* all pieces, each followed by a NUL for tok_piece */
    size_t *off;   /* piece i starts at text + off[i] */
    uint32_t *len; /* piece i length in bytes */
    float *score;
    uint8_t *type;        /* enum tok_type */
    uint8_t *byte;        /* value of a BYTE token */
    int32_t *slots;       /* open-addressing table of id + 1; 0 = empty */
    size_t mask;          /* slots has mask + 1 entries, a power of two */
    int32_t byte_id[256]; /* "<0xNN>" token per byte, -1 if absent */
    int32_t bos, eos, unk;
    bool space_prefix;
};

/* ---- piece lookup ---- */

static size_t slot_of(const tok *t, const char *s, size_t len)
{
    return (size_t)XXH3_64bits(s, len) & t->mask;
}

static int32_t lookup(const tok *t, const char *s, size_t len)
{
    for (size_t i = slot_of(t, s, len);; i = (i + 1) & t->mask) {
        int32_t v = t->slots[i];
        if (v == 0)
            return -1;
        int32_t id = v - 1;
        if (t->len[id] == len && memcmp(t->text + t->off[id], s, len) == 0)
            return id;
    }
}

/* A duplicated piece maps to its last id, as llama.cpp's token_to_id map
 * (filled in id order, overwriting) does. */
static void insert(tok *t, int32_t id)
{
    const char *s = t->text + t->off[id];
    size_t len = t->len[id];
    for (size_t i = slot_of(t, s, len);; i = (i + 1) & t->mask) {
        int32_t v = t->slots[i];
        if (v == 0 || (t->len[v - 1] == len && memcmp(t->text + t->off[v - 1], s, len) == 0)) {
            t->slots[i] = id + 1;
            return;
        }
    }
}

/* ---- construction ---- */

static int parse_byte_piece(const char *s, size_t len, uint8_t *out)
{
    if (len != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>')
        return -1;
    unsigned v = 0;
    for (int i = 3; i < 5; i++) {
        char c = s[i];
        unsigned d;
        if (c >= '0' && c <= '9')
            d = (unsigned)(c - '0');
        else if (c >= 'A' && c <= 'F')
            d = (unsigned)(c - 'A' + 10);
        else if (c >= 'a' && c <= 'f')
            d = (unsigned)(c - 'a' + 10);
        else
            return -1;
        v = v * 16 + d;
    }
    *out = (uint8_t)v;
    return 0;
}

/* Source of piece i for tok_build: either a string array of a GGUF kv or
 * caller arrays. */
typedef struct src {
    const gguf_kv *tokens, *scores, *types;
    const char *const *pieces;
    const size_t *lens;
    const float *fscores;
    const int32_t *itypes;
} src;

static int src_piece(const src *s, size_t i, const char **p, size_t *len)
{
    if (s->tokens)
        return gguf_arr_str(s->tokens, i, p, len);
    if (!s->pieces[i])
        return FB_EINVAL;
    *p = s->pieces[i];
    *len = s->lens ? s->lens[i] : strlen(s->pieces[i]);
    return 0;
}

static int src_score(const src *s, size_t i, float *out)
{
    if (s->scores) {
        double d;
        int rc = gguf_arr_f64(s->scores, i, &d);
        *out = (float)d;
        return rc;
    }
    *out = s->fscores[i];
    return 0;
}

/* -1: no types given, infer. */
static int src_type(const src *s, size_t i, int64_t *out)
{
    if (s->types)
        return gguf_arr_i64(s->types, i, out);
    *out = s->itypes ? s->itypes[i] : -1;
    return 0;
}

static int tok_build(const src *s, size_t n, int32_t bos, int32_t eos, int32_t unk,
                     bool space_prefix, tok **out, char *err, size_t errlen)
{
    if (n == 0 || n > TOK_MAX_VOCAB)
        return fb_errf(err, errlen, FB_EINVAL, "tokenizer: vocabulary has %zu pieces (1..%u)", n,
                       TOK_MAX_VOCAB);
    const int32_t ids[3] = {bos, eos, unk};
    const char *names[3] = {"bos", "eos", "unknown"};
    for (int k = 0; k < 3; k++)
        if (ids[k] < 0 || (size_t)ids[k] >= n)
            return fb_errf(err, errlen, FB_EINVAL,
                           "tokenizer: %s token id %d is outside the vocabulary of %zu", names[k],
                           (int)ids[k], n);

    size_t total = 0;
    for (size_t i = 0; i < n; i++) {
        const char *p;
        size_t len;
        if (src_piece(s, i, &p, &len) != 0)
            return fb_errf(err, errlen, FB_EINVAL, "tokenizer: token %zu is not a string", i);
        if (len == 0 || len > TOK_MAX_PIECE_LEN)
            return fb_errf(err, errlen, FB_ECORRUPT,
                           "tokenizer: token %zu has length %zu (must be 1..%u bytes)", i, len,
                           TOK_MAX_PIECE_LEN);
        if (memchr(p, '\0', len))
            return fb_errf(err, errlen, FB_ECORRUPT, "tokenizer: token %zu contains a NUL byte", i);
        total += len + 1;
    }

    tok *t = calloc(1, sizeof *t);
    if (!t)
        return fb_errf(err, errlen, FB_ENOMEM, "tokenizer: out of memory");
    size_t cap = 1;
    while (cap < 2 * n)
        cap <<= 1;
    t->n = n;
    t->mask = cap - 1;
    t->text = malloc(total);
    t->off = malloc(n * sizeof *t->off);
    t->len = malloc(n * sizeof *t->len);
    t->score = malloc(n * sizeof *t->score);
    t->type = malloc(n);
    t->byte = calloc(n, 1);
    t->slots = calloc(cap, sizeof *t->slots);
    if (!t->text || !t->off || !t->len || !t->score || !t->type || !t->byte || !t->slots) {
        tok_free(t);
        return fb_errf(err, errlen, FB_ENOMEM, "tokenizer: out of memory for %zu pieces", n);
    }
    t->bos = bos;
    t->eos = eos;
    t->unk = unk;
    t->space_prefix = space_prefix;

    size_t pos = 0;
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        const char *p;
        size_t len;
        float sc;
        int64_t ty;
        (void)src_piece(s, i, &p, &len); /* checked above */
        memcpy(t->text + pos, p, len);
        t->text[pos + len] = '\0';
        t->off[i] = pos;
        t->len[i] = (uint32_t)len;
        pos += len + 1;
        if (src_score(s, i, &sc) != 0 || !isfinite(sc)) {
            rc =
                fb_errf(err, errlen, FB_ECORRUPT, "tokenizer: score of token %zu is not finite", i);
            break;
        }
        t->score[i] = sc;
        if (src_type(s, i, &ty) != 0 || ty < -1 || ty > TOK_TYPE_BYTE) {
            rc = fb_errf(err, errlen, FB_ECORRUPT, "tokenizer: token_type of token %zu is not 0..6",
                         i);
            break;
        }
        uint8_t b;
        bool is_byte = parse_byte_piece(p, len, &b) == 0;
        if (ty == -1) {
            /* No types supplied: infer what a llama GGUF would say. */
            if (is_byte)
                ty = TOK_TYPE_BYTE;
            else if ((int32_t)i == unk)
                ty = TOK_TYPE_UNKNOWN;
            else if ((int32_t)i == bos || (int32_t)i == eos)
                ty = TOK_TYPE_CONTROL;
            else
                ty = TOK_TYPE_NORMAL;
        }
        if (ty == TOK_TYPE_BYTE) {
            if (!is_byte) {
                rc = fb_errf(err, errlen, FB_ECORRUPT,
                             "tokenizer: byte token %zu is \"%.*s\", not <0xNN>", i, (int)len, p);
                break;
            }
            t->byte[i] = b;
        }
        t->type[i] = (uint8_t)ty;
        insert(t, (int32_t)i);
    }
    if (rc != 0) {
        tok_free(t);
        return rc;
    }
    /* Byte fallback looks up "<0xNN>" by text, uppercase hex, as llama.cpp's
     * byte_to_token does. */
    for (int b = 0; b < 256; b++) {
        char name[8];
        snprintf(name, sizeof name, "<0x%02X>", (unsigned)b);
        t->byte_id[b] = lookup(t, name, 6);
    }
    *out = t;
    return 0;
}

int tok_new(const char *const *pieces, const size_t *lens, const float *scores,
            const int32_t *types, size_t n, int32_t bos, int32_t eos, int32_t unk, tok **out,
            char *err, size_t errlen)
{
    if (!pieces || !scores || !out)
        return fb_errf(err, errlen, FB_EINVAL, "tokenizer: pieces, scores and out are required");
    src s = {.pieces = pieces, .lens = lens, .fscores = scores, .itypes = types};
    return tok_build(&s, n, bos, eos, unk, true, out, err, errlen);
}

static int get_id(const gguf_file *f, const char *key, int32_t def, int32_t *out, char *err,
                  size_t errlen)
{
    uint32_t v;
    int rc = gguf_get_u32(f, key, &v);
    if (rc == FB_ENOENT) {
        *out = def;
        return 0;
    }
    if (rc != 0 || v > INT32_MAX)
        return fb_errf(err, errlen, FB_EINVAL, "tokenizer: %s is not a valid token id", key);
    *out = (int32_t)v;
    return 0;
}

int tok_from_gguf(const gguf_file *f, tok **out, char *err, size_t errlen)
{
    if (!f || !out)
        return fb_errf(err, errlen, FB_EINVAL, "tokenizer: file and out are required");
    const char *model;
    size_t mlen;
    int rc = gguf_get_str(f, "tokenizer.ggml.model", &model, &mlen);
    if (rc == 0 && !(mlen == 5 && memcmp(model, "llama", 5) == 0))
        return fb_errf(err, errlen, FB_EINVAL,
                       "tokenizer: tokenizer.ggml.model is \"%.*s\"; only \"llama\" "
                       "(SentencePiece) is supported",
                       (int)(mlen > 64 ? 64 : mlen), model);
    if (rc != 0 && rc != FB_ENOENT)
        return fb_errf(err, errlen, FB_EINVAL, "tokenizer: tokenizer.ggml.model is not a string");

    src s = {0};
    uint32_t et;
    uint64_t n, ns, nt;
    rc = gguf_get_arr(f, "tokenizer.ggml.tokens", &s.tokens, &et, &n);
    if (rc != 0 || et != GGUF_TYPE_STRING)
        return fb_errf(err, errlen, rc == FB_ENOENT ? FB_ENOENT : FB_EINVAL,
                       "tokenizer: tokenizer.ggml.tokens %s; the file has no llama vocabulary",
                       rc == FB_ENOENT ? "is missing" : "is not an array of strings");
    rc = gguf_get_arr(f, "tokenizer.ggml.scores", &s.scores, &et, &ns);
    if (rc != 0 || (et != GGUF_TYPE_FLOAT32 && et != GGUF_TYPE_FLOAT64))
        return fb_errf(err, errlen, rc == FB_ENOENT ? FB_ENOENT : FB_EINVAL,
                       "tokenizer: tokenizer.ggml.scores %s",
                       rc == FB_ENOENT ? "is missing" : "is not an array of floats");
    if (ns != n)
        return fb_errf(err, errlen, FB_ECORRUPT,
                       "tokenizer: %llu scores for %llu tokens; the counts must match",
                       (unsigned long long)ns, (unsigned long long)n);
    rc = gguf_get_arr(f, "tokenizer.ggml.token_type", &s.types, &et, &nt);
    if (rc == FB_ENOENT) {
        s.types = NULL;
    } else if (rc != 0 || et == GGUF_TYPE_FLOAT32 || et == GGUF_TYPE_FLOAT64 ||
               et == GGUF_TYPE_STRING || et == GGUF_TYPE_ARRAY || et == GGUF_TYPE_BOOL) {
        return fb_errf(err, errlen, FB_EINVAL,
                       "tokenizer: tokenizer.ggml.token_type is not an integer array");
    } else if (nt != n) {
        return fb_errf(err, errlen, FB_ECORRUPT,
                       "tokenizer: %llu token types for %llu tokens; the counts must match",
                       (unsigned long long)nt, (unsigned long long)n);
    }
    if (n > TOK_MAX_VOCAB)
        return fb_errf(err, errlen, FB_ETOOBIG, "tokenizer: %llu tokens exceed the limit of %u",
                       (unsigned long long)n, TOK_MAX_VOCAB);

    int32_t bos = 1, eos = 2, unk = 0;
    if ((rc = get_id(f, "tokenizer.ggml.bos_token_id", 1, &bos, err, errlen)) != 0 ||
        (rc = get_id(f, "tokenizer.ggml.eos_token_id", 2, &eos, err, errlen)) != 0 ||
        (rc = get_id(f, "tokenizer.ggml.unknown_token_id", 0, &unk, err, errlen)) != 0)
        return rc;
    int prefix = 1;
    rc = gguf_get_bool(f, "tokenizer.ggml.add_space_prefix", &prefix);
    if (rc != 0 && rc != FB_ENOENT)
        return fb_errf(err, errlen, FB_EINVAL,
                       "tokenizer: tokenizer.ggml.add_space_prefix is not a bool");
    if (rc == FB_ENOENT)
        prefix = 1;
    return tok_build(&s, (size_t)n, bos, eos, unk, prefix != 0, out, err, errlen);
}

void tok_free(tok *t)
{
    if (!t)
        return;
    free(t->text);
    free(t->off);
    free(t->len);
    free(t->score);
    free(t->type);
    free(t->byte);
    free(t->slots);
    free(t);
}

size_t tok_n_vocab(const tok *t)
{
    return t->n;
}

int32_t tok_bos(const tok *t)
{
    return t->bos;
}

int32_t tok_eos(const tok *t)
{
    return t->eos;
}

int32_t tok_unk(const tok *t)
{
    return t->unk;
}

const char *tok_piece(const tok *t, int32_t id, size_t *len)
{
    if (id < 0 || (size_t)id >= t->n)
        return NULL;
    if (len)
        *len = t->len[id];
    return t->text + t->off[id];
}

float tok_score(const tok *t, int32_t id)
{
    return (id < 0 || (size_t)id >= t->n) ? 0.0f : t->score[id];
}

int tok_type_of(const tok *t, int32_t id)
{
    return (id < 0 || (size_t)id >= t->n) ? -1 : t->type[id];
}

/* ---- encoding ---- */

typedef struct sym {
    int32_t prev, next; /* -1 at the ends */
    uint32_t off, n;    /* bytes in the escaped text; n == 0 once merged away */
} sym;

typedef struct bigram {
    float score;
    int32_t left, right;
    uint32_t size; /* combined length when queued; a mismatch later means stale */
} bigram;

typedef struct heap {
    bigram *v;
    size_t n, cap;
} heap;

/* Highest score first; equal scores: leftmost first (llama.cpp's
 * llm_bigram_spm comparator).  Symbols keep their original index, so a lower
 * left index is a position further left. */
static bool before(const bigram *a, const bigram *b)
{
    if (a->score != b->score)
        return a->score > b->score;
    return a->left < b->left;
}

static int heap_push(heap *h, bigram b)
{
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 64;
        bigram *v = realloc(h->v, cap * sizeof *v);
        if (!v)
            return FB_ENOMEM;
        h->v = v;
        h->cap = cap;
    }
    size_t i = h->n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!before(&b, &h->v[p]))
            break;
        h->v[i] = h->v[p];
        i = p;
    }
    h->v[i] = b;
    return 0;
}

static bigram heap_pop(heap *h)
{
    bigram top = h->v[0];
    bigram last = h->v[--h->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n)
            break;
        if (c + 1 < h->n && before(&h->v[c + 1], &h->v[c]))
            c++;
        if (!before(&h->v[c], &last))
            break;
        h->v[i] = h->v[c];
        i = c;
    }
    if (h->n > 0)
        h->v[i] = last;
    return top;
}

static int try_bigram(const tok *t, const char *text, const sym *syms, heap *h, int32_t l,
                      int32_t r)
{
    if (l < 0 || r < 0)
        return 0;
    uint32_t size = syms[l].n + syms[r].n;
    int32_t id = lookup(t, text + syms[l].off, size);
    if (id < 0)
        return 0;
    return heap_push(h, (bigram){.score = t->score[id], .left = l, .right = r, .size = size});
}

/* Length of the UTF-8 character starting with byte c, from its high nibble
 * only, as llama.cpp's unicode_len_utf8 does: a stray continuation byte is a
 * unit of one; a lead byte claims its length (clipped at the end of text)
 * without checking the continuation bytes, which then fall back to bytes. */
static uint32_t utf8_len(uint8_t c)
{
    static const uint8_t lens[16] = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 4};
    return lens[c >> 4];
}

typedef struct emit {
    int32_t *out;
    size_t cap, n;
} emit;

static void emit_id(emit *e, int32_t id)
{
    if (e->n < e->cap)
        e->out[e->n] = id;
    e->n++;
}

int tok_encode(const tok *t, const char *text, size_t len, bool add_bos, int32_t *out, size_t cap,
               size_t *n)
{
    if (len > TOK_MAX_TEXT)
        return FB_ETOOBIG;
    if (!t || (!text && len > 0) || (!out && cap > 0) || !n)
        return FB_EINVAL;
    emit e = {.out = out, .cap = cap, .n = 0};
    if (add_bos)
        emit_id(&e, t->bos);
    /* llama.cpp tokenizes no fragment at all for empty text, so not even the
     * space prefix appears. */
    if (len > 0) {
        /* Escape: optional leading space, then ' ' -> U+2581 (3 bytes). */
        size_t elen_max = 3 * (len + 1);
        char *esc = malloc(elen_max);
        sym *syms = malloc((len + 1) * sizeof *syms);
        heap h = {0};
        int rc = 0;
        if (!esc || !syms) {
            rc = FB_ENOMEM;
            goto done;
        }
        size_t elen = 0;
        if (t->space_prefix) {
            memcpy(esc, "\xe2\x96\x81", 3);
            elen = 3;
        }
        for (size_t i = 0; i < len; i++) {
            if (text[i] == ' ') {
                memcpy(esc + elen, "\xe2\x96\x81", 3);
                elen += 3;
            } else {
                esc[elen++] = text[i];
            }
        }
        int32_t ns = 0;
        for (size_t off = 0; off < elen;) {
            uint32_t cl = utf8_len((uint8_t)esc[off]);
            if (cl > elen - off)
                cl = (uint32_t)(elen - off);
            syms[ns] = (sym){.prev = ns - 1, .next = -1, .off = (uint32_t)off, .n = cl};
            if (ns > 0)
                syms[ns - 1].next = ns;
            ns++;
            off += cl;
        }
        for (int32_t i = 1; i < ns && rc == 0; i++)
            rc = try_bigram(t, esc, syms, &h, i - 1, i);
        while (rc == 0 && h.n > 0) {
            bigram b = heap_pop(&h);
            sym *l = &syms[b.left], *r = &syms[b.right];
            /* Either side already merged into something else: stale entry. */
            if (l->n == 0 || r->n == 0 || l->n + r->n != b.size)
                continue;
            l->n += r->n;
            r->n = 0;
            l->next = r->next;
            if (r->next >= 0)
                syms[r->next].prev = b.left;
            rc = try_bigram(t, esc, syms, &h, l->prev, b.left);
            if (rc == 0)
                rc = try_bigram(t, esc, syms, &h, b.left, l->next);
        }
        for (int32_t i = 0; rc == 0 && i >= 0 && ns > 0; i = syms[i].next) {
            int32_t id = lookup(t, esc + syms[i].off, syms[i].n);
            if (id >= 0) {
                emit_id(&e, id);
                continue;
            }
            /* Only single characters can be missing: every merge produced a
             * piece.  Fall back to byte tokens. */
            for (uint32_t k = 0; k < syms[i].n; k++) {
                int32_t bid = t->byte_id[(uint8_t)esc[syms[i].off + k]];
                emit_id(&e, bid >= 0 ? bid : t->unk);
            }
        }
    done:
        free(esc);
        free(syms);
        free(h.v);
        if (rc != 0)
            return rc;
    }
    *n = e.n;
    return e.n > cap ? FB_ETOOBIG : 0;
}

/* ---- decoding ---- */

int tok_decode_piece(const tok *t, int32_t id, char *buf, size_t cap, size_t *n)
{
    if (!t || id < 0 || (size_t)id >= t->n || !n || (!buf && cap > 0))
        return FB_EINVAL;
    const char *p = t->text + t->off[id];
    size_t len = t->len[id], need = 0;
    switch (t->type[id]) {
    case TOK_TYPE_BYTE:
        need = 1;
        if (cap >= 1)
            buf[0] = (char)t->byte[id];
        break;
    case TOK_TYPE_NORMAL:
        /* "▁" (3 bytes) becomes one space. */
        for (size_t i = 0; i < len;) {
            char c = p[i];
            size_t step = 1;
            if (i + 3 <= len && memcmp(p + i, "\xe2\x96\x81", 3) == 0) {
                c = ' ';
                step = 3;
            }
            if (need < cap)
                buf[need] = c;
            need++;
            i += step;
        }
        break;
    case TOK_TYPE_UNKNOWN:
    case TOK_TYPE_CONTROL:
    case TOK_TYPE_USER_DEFINED:
        need = len;
        if (cap >= len)
            memcpy(buf, p, len);
        break;
    default: /* UNDEFINED, UNUSED: llama.cpp renders nothing */
        break;
    }
    *n = need;
    return need > cap ? FB_ETOOBIG : 0;
}
