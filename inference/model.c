/* model.c - loading a llama GGUF model and running its forward pass for a
 * batch of sequences (see model.h for the contract). */
#include "model.h"

#include "fb_error.h"
#include "gguf.h"
#include "kernels.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <xxhash.h>

#define ROW_ALIGN 8       /* rows per task come in multiples of this (kernel tiles) */
#define LLM_MAX_GROUPS 64 /* most sequence groups decoded side by side */
#define ATTN_COST 8       /* an attention multiply-add, in matmul multiply-adds */

typedef struct layer_w {
    const float *attn_norm, *ffn_norm;
    kn_weight wq, wk, wv, wo, gate, up, down;
} layer_w;

struct llm_model {
    gguf_file *gf;
    tok *tk;
    llm_hparams hp;
    kn_weight tok_embd, output;
    const float *output_norm;
    layer_w *layers;
    uint8_t digest[16];
    uint64_t file_bytes;
    char name[128];
    void *arena; /* the matrices in the order a step streams them (see copy_weights) */
    size_t arena_bytes;
};

/* ---- loading ---- */

#define HUGE_PAGE ((size_t)2 << 20)

/* Memory for data that every decode step streams (weights, KV cache), in
 * 2 MiB-aligned blocks the kernel may back with transparent huge pages
 * (THP "madvise" mode is Debian's default).  With 4 KiB pages a step over
 * 30 MB of weights and the KV cache misses the TLB on nearly every page;
 * huge pages measured 7-19% faster decoding of 8 sequences on one thread.  Where THP is
 * off, madvise fails harmlessly and this is an aligned malloc. */
static void *huge_alloc(size_t n)
{
    size_t len = (n + HUGE_PAGE - 1) / HUGE_PAGE * HUGE_PAGE;
    void *p = aligned_alloc(HUGE_PAGE, len ? len : HUGE_PAGE);
    if (p)
        (void)madvise(p, len, MADV_HUGEPAGE);
    return p;
}

static int get_dim(const gguf_file *f, const char *key, int min, int max, int *out, char *err,
                   size_t errlen)
{
    uint32_t v;
    int rc = gguf_get_u32(f, key, &v);
    if (rc == FB_ENOENT)
        return fb_errf(err, errlen, FB_ECORRUPT, "model has no %s", key);
    if (rc < 0 || v < (uint32_t)min || v > (uint32_t)max)
        return fb_errf(err, errlen, FB_ECORRUPT, "model %s must be an integer in %d..%d", key, min,
                       max);
    *out = (int)v;
    return 0;
}

static size_t type_row_bytes(int type, uint64_t n)
{
    switch (type) {
    case KN_F32:
        return (size_t)n * 4;
    case KN_F16:
        return (size_t)n * 2;
    case KN_Q8_0:
        return (size_t)(n / KN_QK) * sizeof(kn_q8);
    default:
        return 0;
    }
}

/* Find tensor name with shape [ne0, ne1] (ne1 = 1 for vectors). */
static int bind(const llm_model *m, const char *name, uint64_t ne0, uint64_t ne1,
                const gguf_tensor **out, char *err, size_t errlen)
{
    const gguf_tensor *t = gguf_find_tensor(m->gf, name);
    if (!t)
        return fb_errf(err, errlen, FB_ECORRUPT, "model has no tensor %s", name);
    if (t->ne[0] != ne0 || t->ne[1] != ne1 || t->ne[2] != 1 || t->ne[3] != 1)
        return fb_errf(err, errlen, FB_ECORRUPT,
                       "tensor %s has shape [%llu, %llu, %llu, %llu], expected [%llu, %llu]", name,
                       (unsigned long long)t->ne[0], (unsigned long long)t->ne[1],
                       (unsigned long long)t->ne[2], (unsigned long long)t->ne[3],
                       (unsigned long long)ne0, (unsigned long long)ne1);
    *out = t;
    return 0;
}

static int bind_vec(const llm_model *m, const char *name, uint64_t n, const float **out, char *err,
                    size_t errlen)
{
    const gguf_tensor *t;
    int rc = bind(m, name, n, 1, &t, err, errlen);
    if (rc < 0)
        return rc;
    if (t->type != GGUF_TENSOR_F32)
        return fb_errf(err, errlen, FB_ECORRUPT, "tensor %s is %s; norm weights must be F32", name,
                       gguf_tensor_type_name(t->type));
    *out = t->data;
    return 0;
}

static int bind_mat(const llm_model *m, const char *name, int n_in, int n_out, kn_weight *w,
                    char *err, size_t errlen)
{
    const gguf_tensor *t;
    int rc = bind(m, name, (uint64_t)n_in, (uint64_t)n_out, &t, err, errlen);
    if (rc < 0)
        return rc;
    if (t->type == GGUF_TENSOR_Q8_0 && n_in % KN_QK != 0)
        return fb_errf(err, errlen, FB_ECORRUPT, "tensor %s is Q8_0 but has %d columns", name,
                       n_in);
    w->type = (int)t->type;
    w->n_in = n_in;
    w->n_out = n_out;
    w->row_bytes = type_row_bytes(w->type, (uint64_t)n_in);
    w->data = t->data;
    if (w->row_bytes == 0)
        return fb_errf(err, errlen, FB_ECORRUPT, "tensor %s has unsupported type %s", name,
                       gguf_tensor_type_name(t->type));
    return 0;
}

/* Features that would change the numbers if ignored are refused by name. */
static int check_unsupported(const llm_model *m, char *err, size_t errlen)
{
    const char *type;
    size_t len;
    if (gguf_get_str(m->gf, "llama.rope.scaling.type", &type, &len) == 0 &&
        !(len == 4 && memcmp(type, "none", 4) == 0)) {
        float factor = 1;
        bool linear1 =
            len == 6 && memcmp(type, "linear", 6) == 0 &&
            (gguf_get_f32(m->gf, "llama.rope.scaling.factor", &factor) < 0 || factor == 1.0f);
        if (!linear1)
            return fb_errf(err, errlen, FB_EINVAL,
                           "model uses RoPE scaling \"%.*s\", which this engine does not "
                           "implement",
                           (int)(len > 32 ? 32 : len), type);
    }
    uint32_t experts = 0;
    if (gguf_get_u32(m->gf, "llama.expert_count", &experts) == 0 && experts > 0)
        return fb_errf(err, errlen, FB_EINVAL,
                       "model is a mixture of %u experts, which this engine does not implement",
                       experts);
    return 0;
}

static int load_hparams(llm_model *m, char *err, size_t errlen)
{
    const char *arch;
    size_t alen;
    if (gguf_get_str(m->gf, "general.architecture", &arch, &alen) < 0)
        return fb_errf(err, errlen, FB_ECORRUPT, "model has no general.architecture");
    if (alen != 5 || memcmp(arch, "llama", 5) != 0)
        return fb_errf(err, errlen, FB_EINVAL,
                       "model architecture is \"%.*s\"; only \"llama\" is supported",
                       (int)(alen > 32 ? 32 : alen), arch);
    llm_hparams *hp = &m->hp;
    int rc;
    if ((rc = get_dim(m->gf, "llama.embedding_length", 1, 1 << 16, &hp->n_embd, err, errlen)) < 0 ||
        (rc = get_dim(m->gf, "llama.block_count", 1, 1024, &hp->n_layer, err, errlen)) < 0 ||
        (rc = get_dim(m->gf, "llama.feed_forward_length", 1, 1 << 18, &hp->n_ff, err, errlen)) <
            0 ||
        (rc = get_dim(m->gf, "llama.attention.head_count", 1, 1024, &hp->n_head, err, errlen)) <
            0 ||
        (rc = get_dim(m->gf, "llama.context_length", 1, 1 << 20, &hp->n_ctx_train, err, errlen)) <
            0)
        return rc;
    hp->n_head_kv = hp->n_head;
    if (gguf_find_kv(m->gf, "llama.attention.head_count_kv") &&
        (rc = get_dim(m->gf, "llama.attention.head_count_kv", 1, hp->n_head, &hp->n_head_kv, err,
                      errlen)) < 0)
        return rc;
    if (hp->n_embd % hp->n_head != 0)
        return fb_errf(err, errlen, FB_ECORRUPT,
                       "embedding length %d is not a multiple of the head count %d", hp->n_embd,
                       hp->n_head);
    if (hp->n_head % hp->n_head_kv != 0)
        return fb_errf(err, errlen, FB_ECORRUPT,
                       "head count %d is not a multiple of the KV head count %d", hp->n_head,
                       hp->n_head_kv);
    hp->head_dim = hp->n_embd / hp->n_head;
    if (hp->head_dim > LLM_MAX_HEAD_DIM)
        return fb_errf(err, errlen, FB_EINVAL, "head dimension %d is above the supported %d",
                       hp->head_dim, LLM_MAX_HEAD_DIM);
    hp->n_rot = hp->head_dim;
    if (gguf_find_kv(m->gf, "llama.rope.dimension_count") &&
        (rc = get_dim(m->gf, "llama.rope.dimension_count", 2, hp->head_dim, &hp->n_rot, err,
                      errlen)) < 0)
        return rc;
    if (hp->n_rot % 2 != 0)
        return fb_errf(err, errlen, FB_ECORRUPT, "rope dimension count %d is odd", hp->n_rot);
    hp->rms_eps = 1e-5f;
    hp->rope_base = 10000.0f;
    if (gguf_find_kv(m->gf, "llama.attention.layer_norm_rms_epsilon") &&
        (gguf_get_f32(m->gf, "llama.attention.layer_norm_rms_epsilon", &hp->rms_eps) < 0 ||
         !(hp->rms_eps >= 0 && hp->rms_eps < 1)))
        return fb_errf(err, errlen, FB_ECORRUPT, "llama.attention.layer_norm_rms_epsilon is bad");
    if (gguf_find_kv(m->gf, "llama.rope.freq_base") &&
        (gguf_get_f32(m->gf, "llama.rope.freq_base", &hp->rope_base) < 0 ||
         !(hp->rope_base > 1 && hp->rope_base < 1e12f)))
        return fb_errf(err, errlen, FB_ECORRUPT, "llama.rope.freq_base is bad");
    hp->n_vocab = (int)tok_n_vocab(m->tk);
    int add_bos = 1;
    if (gguf_find_kv(m->gf, "tokenizer.ggml.add_bos_token") &&
        gguf_get_bool(m->gf, "tokenizer.ggml.add_bos_token", &add_bos) < 0)
        return fb_errf(err, errlen, FB_ECORRUPT, "tokenizer.ggml.add_bos_token is not a bool");
    hp->add_bos = add_bos != 0;
    return check_unsupported(m, err, errlen);
}

static int load_tensors(llm_model *m, char *err, size_t errlen)
{
    llm_hparams *hp = &m->hp;
    int rc;
    int n_kv = hp->n_head_kv * hp->head_dim;
    if ((rc = bind_mat(m, "token_embd.weight", hp->n_embd, hp->n_vocab, &m->tok_embd, err,
                       errlen)) < 0 ||
        (rc = bind_vec(m, "output_norm.weight", (uint64_t)hp->n_embd, &m->output_norm, err,
                       errlen)) < 0)
        return rc;
    hp->tied_output = gguf_find_tensor(m->gf, "output.weight") == NULL;
    if (hp->tied_output)
        m->output = m->tok_embd;
    else if ((rc = bind_mat(m, "output.weight", hp->n_embd, hp->n_vocab, &m->output, err, errlen)) <
             0)
        return rc;
    m->layers = calloc((size_t)hp->n_layer, sizeof *m->layers);
    if (!m->layers)
        return fb_errf(err, errlen, FB_ENOMEM, "out of memory");
    for (int l = 0; l < hp->n_layer; l++) {
        layer_w *L = &m->layers[l];
        char name[64];
#define NAME(s) (snprintf(name, sizeof name, "blk.%d.%s.weight", l, s), name)
        if ((rc = bind_vec(m, NAME("attn_norm"), (uint64_t)hp->n_embd, &L->attn_norm, err,
                           errlen)) < 0 ||
            (rc = bind_vec(m, NAME("ffn_norm"), (uint64_t)hp->n_embd, &L->ffn_norm, err, errlen)) <
                0 ||
            (rc = bind_mat(m, NAME("attn_q"), hp->n_embd, hp->n_embd, &L->wq, err, errlen)) < 0 ||
            (rc = bind_mat(m, NAME("attn_k"), hp->n_embd, n_kv, &L->wk, err, errlen)) < 0 ||
            (rc = bind_mat(m, NAME("attn_v"), hp->n_embd, n_kv, &L->wv, err, errlen)) < 0 ||
            (rc = bind_mat(m, NAME("attn_output"), hp->n_embd, hp->n_embd, &L->wo, err, errlen)) <
                0 ||
            (rc = bind_mat(m, NAME("ffn_gate"), hp->n_embd, hp->n_ff, &L->gate, err, errlen)) < 0 ||
            (rc = bind_mat(m, NAME("ffn_up"), hp->n_embd, hp->n_ff, &L->up, err, errlen)) < 0 ||
            (rc = bind_mat(m, NAME("ffn_down"), hp->n_ff, hp->n_embd, &L->down, err, errlen)) < 0)
            return rc;
#undef NAME
    }
    hp->weight_type = m->layers[0].wq.type;
    return 0;
}

/* The matrices a decode step streams, in the order it streams them. */
static int stream_weights(llm_model *m, kn_weight **out, int cap)
{
    int n = 0;
    for (int l = 0; l < m->hp.n_layer; l++) {
        layer_w *L = &m->layers[l];
        kn_weight *w[] = {&L->wq, &L->wk, &L->wv, &L->wo, &L->gate, &L->up, &L->down};
        for (size_t i = 0; i < sizeof w / sizeof *w && n < cap; i++)
            out[n++] = w[i];
    }
    if (n < cap)
        out[n++] = &m->output;
    return n;
}

static size_t weight_bytes(const kn_weight *w)
{
    return (size_t)w->n_out * w->row_bytes;
}

/* Copy the streamed matrices out of the file mapping into one huge-page
 * arena, in stream order and 64-byte aligned each, then drop the mapping's
 * copy of those pages so they are not counted twice (a private read-only
 * mapping refaults from the file if they are ever touched again). */
static int copy_weights(llm_model *m, char *err, size_t errlen)
{
    int cap = 7 * m->hp.n_layer + 1;
    kn_weight **ws = malloc((size_t)cap * sizeof *ws);
    if (!ws)
        return fb_errf(err, errlen, FB_ENOMEM, "out of memory");
    int n = stream_weights(m, ws, cap);
    size_t total = 0;
    for (int i = 0; i < n; i++)
        total += (weight_bytes(ws[i]) + 63) / 64 * 64;
    m->arena = huge_alloc(total);
    m->arena_bytes = total;
    if (!m->arena) {
        free(ws);
        return fb_errf(err, errlen, FB_ENOMEM, "out of memory for %zu bytes of weights", total);
    }
    char *at = m->arena;
    bool tied = m->hp.tied_output;
    for (int i = 0; i < n; i++) {
        size_t len = weight_bytes(ws[i]);
        memcpy(at, ws[i]->data, len);
        uintptr_t lo = ((uintptr_t)ws[i]->data + 4095) & ~(uintptr_t)4095;
        uintptr_t hi = ((uintptr_t)ws[i]->data + len) & ~(uintptr_t)4095;
        if (hi > lo)
            (void)madvise((void *)lo, hi - lo, MADV_DONTNEED);
        ws[i]->data = at;
        at += (weight_bytes(ws[i]) + 63) / 64 * 64;
    }
    if (tied) /* the embedding rows are the output rows */
        m->tok_embd.data = m->output.data;
    free(ws);
    return 0;
}

static int hash_file(llm_model *m, const char *path, char *err, size_t errlen)
{
    return llm_file_digest(path, m->digest, &m->file_bytes, err, errlen);
}

int llm_file_digest(const char *path, uint8_t digest[16], uint64_t *bytes, char *err, size_t errlen)
{
    FILE *fp = fopen(path, "rb");
    if (!fp)
        return fb_errf(err, errlen, FB_EIO, "%s: cannot open to hash it", path);
    XXH3_state_t *st = XXH3_createState();
    unsigned char *buf = malloc(1 << 16);
    int rc = st && buf ? 0 : FB_ENOMEM;
    if (rc == 0)
        XXH3_128bits_reset(st);
    size_t n;
    *bytes = 0;
    while (rc == 0 && (n = fread(buf, 1, 1 << 16, fp)) > 0) {
        XXH3_128bits_update(st, buf, n);
        *bytes += n;
    }
    if (rc == 0 && ferror(fp))
        rc = fb_errf(err, errlen, FB_EIO, "%s: read error while hashing", path);
    if (rc == 0) {
        XXH128_canonical_t c;
        XXH128_canonicalFromHash(&c, XXH3_128bits_digest(st));
        memcpy(digest, c.digest, 16);
    }
    XXH3_freeState(st);
    free(buf);
    fclose(fp);
    return rc == FB_ENOMEM ? fb_errf(err, errlen, rc, "out of memory") : rc;
}

int llm_model_load(const char *path, llm_model **out, char *err, size_t errlen)
{
    llm_model *m = calloc(1, sizeof *m);
    if (!m)
        return fb_errf(err, errlen, FB_ENOMEM, "out of memory");
    int rc = gguf_open(path, &m->gf, err, errlen);
    if (rc == 0)
        rc = tok_from_gguf(m->gf, &m->tk, err, errlen);
    if (rc == 0)
        rc = load_hparams(m, err, errlen);
    if (rc == 0)
        rc = load_tensors(m, err, errlen);
    if (rc == 0)
        rc = copy_weights(m, err, errlen);
    if (rc == 0)
        rc = hash_file(m, path, err, errlen);
    if (rc < 0) {
        llm_model_free(m);
        return rc;
    }
    const char *nm;
    size_t nlen;
    if (gguf_get_str(m->gf, "general.name", &nm, &nlen) == 0 && nlen > 0) {
        snprintf(m->name, sizeof m->name, "%.*s", (int)(nlen < 127 ? nlen : 127), nm);
    } else {
        const char *base = strrchr(path, '/');
        snprintf(m->name, sizeof m->name, "%s", base ? base + 1 : path);
    }
    *out = m;
    return 0;
}

void llm_model_free(llm_model *m)
{
    if (!m)
        return;
    free(m->layers);
    free(m->arena);
    tok_free(m->tk);
    gguf_close(m->gf);
    free(m);
}

const llm_hparams *llm_model_hparams(const llm_model *m)
{
    return &m->hp;
}
const tok *llm_model_tok(const llm_model *m)
{
    return m->tk;
}
const uint8_t *llm_model_digest(const llm_model *m)
{
    return m->digest;
}
uint64_t llm_model_file_bytes(const llm_model *m)
{
    return m->file_bytes;
}
const char *llm_model_name(const llm_model *m)
{
    return m->name;
}

/* ---- contexts ---- */

/* Where a batch row (one token) belongs. */
typedef struct row_info {
    int slot;
    int pos;
} row_info;

/* Buffers for one forward pass over up to max_tokens rows.  A decode step
 * runs either as one pass whose matmuls are split by rows across the pool
 * (scratch 0, par set), or as one pass per thread over its own sequences
 * (scratch i, par clear). */
typedef struct scratch {
    bool par; /* may hand jobs to the pool */
    float *x, *xb, *q, *k, *v, *att, *gate, *up;
    float *logit_rows; /* output rows staged before they are copied out */
    size_t logit_cap;  /* rows logit_rows holds; grown on demand up to max_tokens */
    kn_q8 *xq;         /* quantized activations, max_tokens rows of n_max/32 blocks */
    float *scores;     /* per thread: n_ctx attention scores */
    row_info *rows;
} scratch;

/* The weight prefetcher: single-sequence decode is bound by how fast one
 * core pulls the weights from memory, and splitting its small matmuls across
 * threads costs more in wake-ups (~30 us each here) than it saves.  So a
 * helper, woken once per decode call, reads the step's weights in the order
 * the caller will use them; they then come from the shared cache, with two
 * cores' worth of memory parallelism.  It never changes a result.  Between
 * calls it blocks on a condition variable. */
typedef struct prefetcher {
    pthread_t th;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    uint64_t gen;
    bool stop, started;
    const llm_model *m;
    volatile uint64_t sink; /* keeps the loads from being optimized away */
} prefetcher;

struct llm_ctx {
    const llm_model *m;
    prefetcher pf;
    const kn_ops *ops;
    kn_pool *pool;
    int n_slots, n_ctx, max_tokens;
    long parallel_min; /* multiply-adds below which a job stays on the caller */
    int *slot_pos;
    /* [slot][layer][kv head][pos][head_dim]: one head's keys (values) are
     * contiguous, so attention streams them in order. */
    void *k_cache, *v_cache;
    int kv_type;                                            /* KN_F16 or KN_F32 */
    size_t kv_elem;                                         /* bytes per element */
    size_t kv_slot_stride, kv_layer_stride, kv_head_stride; /* in elements */
    size_t xq_row;                                          /* blocks per row of a scratch's xq */
    int n_scratch;                                          /* one scratch set per thread */
    scratch *scratch;
};

static void *prefetch_main(void *arg)
{
    prefetcher *pf = arg;
    uint64_t seen = 0;
    for (;;) {
        pthread_mutex_lock(&pf->mu);
        while (pf->gen == seen && !pf->stop)
            pthread_cond_wait(&pf->cv, &pf->mu);
        bool stop = pf->stop;
        seen = pf->gen;
        pthread_mutex_unlock(&pf->mu);
        if (stop)
            return NULL;
        /* the arena holds the weights in the order the step reads them */
        const unsigned char *p = pf->m->arena;
        uint64_t s = 0;
        for (size_t i = 0; i < pf->m->arena_bytes; i += 64)
            s += p[i];
        pf->sink = s;
    }
}

static int prefetch_start(prefetcher *pf, const llm_model *m)
{
    pf->m = m;
    pthread_mutex_init(&pf->mu, NULL);
    pthread_cond_init(&pf->cv, NULL);
    if (pthread_create(&pf->th, NULL, prefetch_main, pf) != 0)
        return FB_ENOMEM;
    pthread_setname_np(pf->th, "fb-prefetch");
    pf->started = true;
    return 0;
}

static void prefetch_wake(prefetcher *pf)
{
    if (!pf->started)
        return;
    pthread_mutex_lock(&pf->mu);
    pf->gen++;
    pthread_cond_signal(&pf->cv);
    pthread_mutex_unlock(&pf->mu);
}

static void prefetch_stop(prefetcher *pf)
{
    if (!pf->started)
        return;
    pthread_mutex_lock(&pf->mu);
    pf->stop = true;
    pthread_cond_signal(&pf->cv);
    pthread_mutex_unlock(&pf->mu);
    pthread_join(pf->th, NULL);
    pthread_mutex_destroy(&pf->mu);
    pthread_cond_destroy(&pf->cv);
    pf->started = false;
}

int llm_ctx_new(const llm_model *m, const llm_ctx_params *p, llm_ctx **out, char *err,
                size_t errlen)
{
    const llm_hparams *hp = &m->hp;
    if (p->n_slots < 1 || p->n_slots > LLM_MAX_SLOTS)
        return fb_errf(err, errlen, FB_EINVAL, "slots must be 1..%d, not %d", LLM_MAX_SLOTS,
                       p->n_slots);
    if (p->n_threads < 1 || p->n_threads > 256)
        return fb_errf(err, errlen, FB_EINVAL, "threads must be 1..256, not %d", p->n_threads);
    if (p->max_tokens < 0 || p->max_tokens > 1 << 16 || p->n_ctx < 0)
        return fb_errf(err, errlen, FB_EINVAL, "bad max_tokens %d or n_ctx %d", p->max_tokens,
                       p->n_ctx);
    const kn_ops *ops = p->path < 0 ? kn_ops_best() : kn_ops_get(p->path);
    if (!ops)
        return fb_errf(err, errlen, FB_EINVAL, "kernel path %d is not available on this CPU",
                       p->path);
    llm_ctx *c = calloc(1, sizeof *c);
    if (!c)
        return fb_errf(err, errlen, FB_ENOMEM, "out of memory");
    c->m = m;
    c->ops = ops;
    c->n_slots = p->n_slots;
    c->n_ctx = p->n_ctx == 0 || p->n_ctx > hp->n_ctx_train ? hp->n_ctx_train : p->n_ctx;
    c->max_tokens = p->max_tokens ? p->max_tokens : LLM_DEFAULT_MAX_TOKENS;
    c->parallel_min = p->parallel_min > 0 ? p->parallel_min : LLM_DEFAULT_PARALLEL_MIN;
    size_t T = (size_t)c->max_tokens;
    size_t n_kv = (size_t)hp->n_head_kv * (size_t)hp->head_dim;
    size_t n_max = (size_t)(hp->n_ff > hp->n_embd ? hp->n_ff : hp->n_embd);
    c->kv_type = p->kv_f32 ? KN_F32 : KN_F16;
    c->kv_elem = p->kv_f32 ? sizeof(float) : sizeof(uint16_t);
    c->kv_head_stride = (size_t)c->n_ctx * (size_t)hp->head_dim;
    c->kv_layer_stride = (size_t)c->n_ctx * n_kv;
    c->kv_slot_stride = c->kv_layer_stride * (size_t)hp->n_layer;
    c->xq_row = (n_max + KN_QK - 1) / KN_QK;
    int rc = kn_pool_new(p->n_threads, &c->pool);
    if (rc == 0 && p->n_threads > 1 && !p->no_prefetch)
        rc = prefetch_start(&c->pf, m);
    c->slot_pos = calloc((size_t)c->n_slots, sizeof *c->slot_pos);
    c->k_cache = huge_alloc(c->kv_slot_stride * (size_t)c->n_slots * c->kv_elem);
    c->v_cache = huge_alloc(c->kv_slot_stride * (size_t)c->n_slots * c->kv_elem);
    c->n_scratch = p->n_threads;
    c->scratch = calloc((size_t)c->n_scratch, sizeof *c->scratch);
    bool ok = rc == 0 && c->slot_pos && c->k_cache && c->v_cache && c->scratch;
    for (int i = 0; ok && i < c->n_scratch; i++) {
        scratch *sc = &c->scratch[i];
        sc->x = malloc(T * (size_t)hp->n_embd * sizeof(float));
        sc->xb = malloc(T * (size_t)hp->n_embd * sizeof(float));
        sc->q = malloc(T * (size_t)hp->n_embd * sizeof(float));
        sc->att = malloc(T * (size_t)hp->n_embd * sizeof(float));
        sc->k = malloc(T * n_kv * sizeof(float));
        sc->v = malloc(T * n_kv * sizeof(float));
        sc->gate = malloc(T * (size_t)hp->n_ff * sizeof(float));
        sc->up = malloc(T * (size_t)hp->n_ff * sizeof(float));
        /* Usually one row of logits per sequence is wanted; more (logits_all)
         * grows the buffer on demand, up to max_tokens rows. */
        sc->logit_cap = (size_t)c->n_slots < T ? (size_t)c->n_slots : T;
        sc->logit_rows = malloc(sc->logit_cap * (size_t)hp->n_vocab * sizeof(float));
        sc->xq = malloc(T * c->xq_row * sizeof(kn_q8));
        sc->scores = malloc((size_t)p->n_threads * (size_t)c->n_ctx * sizeof(float));
        sc->rows = malloc(T * sizeof *sc->rows);
        ok = sc->x && sc->xb && sc->q && sc->att && sc->k && sc->v && sc->gate && sc->up &&
             sc->logit_rows && sc->xq && sc->scores && sc->rows;
    }
    if (!ok) {
        llm_ctx_free(c);
        return fb_errf(err, errlen, FB_ENOMEM,
                       "out of memory for %d slots of %d positions (KV cache %.1f MiB)", p->n_slots,
                       c->n_ctx, 2.0 * (double)c->kv_slot_stride * p->n_slots * 4 / (1 << 20));
    }
    *out = c;
    return 0;
}

void llm_ctx_free(llm_ctx *c)
{
    if (!c)
        return;
    prefetch_stop(&c->pf);
    kn_pool_free(c->pool);
    free(c->slot_pos);
    free(c->k_cache);
    free(c->v_cache);
    for (int i = 0; c->scratch && i < c->n_scratch; i++) {
        scratch *sc = &c->scratch[i];
        free(sc->x);
        free(sc->xb);
        free(sc->q);
        free(sc->att);
        free(sc->k);
        free(sc->v);
        free(sc->gate);
        free(sc->up);
        free(sc->logit_rows);
        free(sc->xq);
        free(sc->scores);
        free(sc->rows);
    }
    free(c->scratch);
    free(c);
}

int llm_ctx_n_ctx(const llm_ctx *c)
{
    return c->n_ctx;
}
int llm_ctx_n_slots(const llm_ctx *c)
{
    return c->n_slots;
}
int llm_ctx_max_tokens(const llm_ctx *c)
{
    return c->max_tokens;
}
const char *llm_ctx_path_name(const llm_ctx *c)
{
    return c->ops->name;
}

uint64_t llm_ctx_kv_bytes(const llm_ctx *c)
{
    return 2ull * c->kv_slot_stride * (uint64_t)c->n_slots * c->kv_elem;
}

void llm_ctx_reset_slot(llm_ctx *c, int slot)
{
    if (slot >= 0 && slot < c->n_slots)
        c->slot_pos[slot] = 0;
}

int llm_ctx_slot_pos(const llm_ctx *c, int slot)
{
    return slot >= 0 && slot < c->n_slots ? c->slot_pos[slot] : -1;
}

/* ---- the forward pass ---- */

/* Run fn as n tasks: through the pool when this pass may use it, else
 * inline as one task (the pass already runs on a pool thread). */
static void run_tasks(llm_ctx *c, const scratch *s, kn_task_fn fn, void *arg, int n)
{
    if (s->par && n > 1)
        kn_pool_run_tasks(c->pool, fn, arg, n);
    else
        fn(arg, 0, 1);
}

/* How many tasks to split a job of `work` multiply-adds into: one (the
 * caller alone) when waking a worker would cost more than it saves, else
 * four per thread so the caller can take over the share of a worker that
 * starts late.  Any split gives the same bits. */
static int tasks_for(const llm_ctx *c, const scratch *s, long work)
{
    int threads = kn_pool_threads(c->pool);
    return !s->par || threads == 1 || work < c->parallel_min ? 1 : 4 * threads;
}

/* Up to three matmuls sharing one input, split by output rows of their
 * concatenation. */
typedef struct mm_job {
    const kn_ops *ops;
    int n;
    const kn_weight *w[3];
    float *y[3];
    const void *x;
    size_t x_stride;
    int n_tok;
    bool swiglu; /* w[0] gate, w[1] up: split by their common rows, then
                  * y[0] = silu(gate) * up over each task's rows */
} mm_job;

/* The feed-forward's first half: gate and up rows [r0, r1) for every token,
 * then SwiGLU on exactly those elements, so no serial pass follows. */
static void ffn_task(const mm_job *j, int ith, int nth)
{
    int n_ff = j->w[0]->n_out, r0, r1;
    kn_split(n_ff, ROW_ALIGN, ith, nth, &r0, &r1);
    if (r0 >= r1)
        return;
    for (int i = 0; i < 2; i++)
        j->ops->matmul(j->w[i], r0, r1, j->x, j->x_stride, j->n_tok, j->y[i], (size_t)n_ff);
    for (int t = 0; t < j->n_tok; t++) {
        float *g = j->y[0] + (size_t)t * (size_t)n_ff + r0;
        kn_swiglu(g, j->y[1] + (size_t)t * (size_t)n_ff + r0, g, r1 - r0);
    }
}

static void mm_task(void *arg, int ith, int nth)
{
    const mm_job *j = arg;
    if (j->swiglu) {
        ffn_task(j, ith, nth);
        return;
    }
    int total = 0;
    for (int i = 0; i < j->n; i++)
        total += j->w[i]->n_out;
    int r0, r1;
    kn_split(total, ROW_ALIGN, ith, nth, &r0, &r1);
    int base = 0;
    for (int i = 0; i < j->n && r0 < r1; i++) {
        int n_out = j->w[i]->n_out;
        int a = r0 > base ? r0 - base : 0;
        int b = r1 - base < n_out ? r1 - base : n_out;
        if (a < b)
            j->ops->matmul(j->w[i], a, b, j->x, j->x_stride, j->n_tok, j->y[i], (size_t)n_out);
        base += n_out;
    }
}

/* Prepare the input rows for weights of w's type: quantized blocks for Q8_0,
 * the floats themselves otherwise. */
static void mm_input(llm_ctx *c, scratch *s, const kn_weight *w, const float *x, int n_tok,
                     mm_job *j)
{
    j->n_tok = n_tok;
    if (w->type == KN_Q8_0) {
        for (int t = 0; t < n_tok; t++)
            c->ops->quantize_q8(x + (size_t)t * (size_t)w->n_in, s->xq + (size_t)t * c->xq_row,
                                w->n_in);
        j->x = s->xq;
        j->x_stride = c->xq_row * sizeof(kn_q8);
    } else {
        j->x = x;
        j->x_stride = (size_t)w->n_in * sizeof(float);
    }
}

/* y_i = w_i x for up to three weights of one type and input width. */
static void matmuls(llm_ctx *c, scratch *s, const float *x, int n_tok, int n, const kn_weight *w0,
                    float *y0, const kn_weight *w1, float *y1, const kn_weight *w2, float *y2)
{
    mm_job j = {.ops = c->ops, .n = n, .w = {w0, w1, w2}, .y = {y0, y1, y2}};
    /* Fused weights must agree on type and width to share the input. */
    for (int i = 1; i < n; i++)
        if (j.w[i]->type != w0->type || j.w[i]->n_in != w0->n_in)
            j.n = 1;
    mm_input(c, s, w0, x, n_tok, &j);
    long macs = 0;
    for (int i = 0; i < j.n; i++)
        macs += (long)n_tok * j.w[i]->n_out * j.w[i]->n_in;
    run_tasks(c, s, mm_task, &j, tasks_for(c, s, macs));
    for (int i = j.n; i < n; i++) /* mismatched types: one at a time */
        matmuls(c, s, x, n_tok, 1, j.w[i], j.y[i], NULL, NULL, NULL, NULL);
}

/* gate <- silu(gate x) * (up x), row-split with the SwiGLU fused in when the
 * two weights share a type (else two matmuls, then SwiGLU serially). */
static void ffn_up(llm_ctx *c, scratch *s, const layer_w *L, const float *x, int n_tok)
{
    size_t F = (size_t)c->m->hp.n_ff;
    if (L->gate.type != L->up.type) {
        matmuls(c, s, x, n_tok, 2, &L->gate, s->gate, &L->up, s->up, NULL, NULL);
        for (int t = 0; t < n_tok; t++)
            kn_swiglu(s->gate + t * F, s->up + t * F, s->gate + t * F, (int)F);
        return;
    }
    mm_job j = {
        .ops = c->ops, .n = 2, .w = {&L->gate, &L->up}, .y = {s->gate, s->up}, .swiglu = true};
    mm_input(c, s, &L->gate, x, n_tok, &j);
    long macs = 2L * n_tok * (long)F * L->gate.n_in;
    run_tasks(c, s, mm_task, &j, tasks_for(c, s, macs));
}

typedef struct attn_job {
    llm_ctx *c;
    scratch *s;
    int layer, n_tok;
} attn_job;

/* Attention for (token, head) pairs ith, ith + nth, ...: causal over the
 * token's own slot, whose cache already holds this step's keys and values. */
static void attn_task(void *arg, int ith, int nth)
{
    const attn_job *j = arg;
    llm_ctx *c = j->c;
    scratch *s = j->s;
    const llm_hparams *hp = &c->m->hp;
    int hd = hp->head_dim, group = hp->n_head / hp->n_head_kv;
    float scale = 1.0f / sqrtf((float)hd);
    float *sc = s->scores + (size_t)ith * (size_t)c->n_ctx;
    float q16[LLM_MAX_HEAD_DIM];
    for (int i = ith; i < j->n_tok * hp->n_head; i += nth) {
        int t = i / hp->n_head, h = i % hp->n_head;
        const row_info *r = &s->rows[t];
        size_t base = (size_t)r->slot * c->kv_slot_stride + (size_t)j->layer * c->kv_layer_stride +
                      (size_t)(h / group) * c->kv_head_stride;
        const float *q = s->q + (size_t)t * (size_t)hp->n_embd + (size_t)h * (size_t)hd;
        int n = r->pos + 1;
        if (c->kv_type == KN_F16) { /* as llama.cpp: F16 keys meet an F16 query */
            memcpy(q16, q, (size_t)hd * sizeof(float));
            c->ops->round_f16(q16, hd);
            q = q16;
        }
        const char *kb = (const char *)c->k_cache + base * c->kv_elem;
        const char *vb = (const char *)c->v_cache + base * c->kv_elem;
        c->ops->dot_rows(c->kv_type, q, kb, (size_t)hd, hd, n, sc);
        kn_softmax(sc, n, scale);
        if (c->kv_type == KN_F16) /* and F16 values F16 weights */
            c->ops->round_f16(sc, n);
        float *o = s->att + (size_t)t * (size_t)hp->n_embd + (size_t)h * (size_t)hd;
        memset(o, 0, (size_t)hd * sizeof(float));
        c->ops->axpy_rows(c->kv_type, hd, sc, vb, (size_t)hd, n, o);
    }
}

/* Write n floats at element `at` of a cache, rounding to F16 if it holds F16. */
static void store_kv(const llm_ctx *c, void *cache, size_t at, const float *x, size_t n)
{
    if (c->kv_type == KN_F32) {
        memcpy((float *)cache + at, x, n * sizeof(float));
        return;
    }
    c->ops->to_f16(x, (uint16_t *)cache + at, (int)n);
}

static void attention(llm_ctx *c, scratch *s, int layer, int n_tok)
{
    const llm_hparams *hp = &c->m->hp;
    int n_kv = hp->n_head_kv * hp->head_dim;
    long work = 0;
    for (int t = 0; t < n_tok; t++) {
        const row_info *r = &s->rows[t];
        float *q = s->q + (size_t)t * (size_t)hp->n_embd;
        float *k = s->k + (size_t)t * (size_t)n_kv;
        kn_rope(q, hp->n_head, hp->head_dim, hp->n_rot, r->pos, hp->rope_base);
        kn_rope(k, hp->n_head_kv, hp->head_dim, hp->n_rot, r->pos, hp->rope_base);
        const float *v = s->v + (size_t)t * (size_t)n_kv;
        size_t hd = (size_t)hp->head_dim;
        for (int h = 0; h < hp->n_head_kv; h++) {
            size_t at = (size_t)r->slot * c->kv_slot_stride + (size_t)layer * c->kv_layer_stride +
                        (size_t)h * c->kv_head_stride + (size_t)r->pos * hd;
            store_kv(c, c->k_cache, at, k + (size_t)h * hd, hd);
            store_kv(c, c->v_cache, at, v + (size_t)h * hd, hd);
        }
        /* Weighted as ATTN_COST multiply-adds each: they stream keys and
         * values from memory where a Q8_0 matmul reuses its weights. */
        work += ATTN_COST * 2L * (r->pos + 1) * hp->n_head * hp->head_dim;
    }
    attn_job j = {.c = c, .s = s, .layer = layer, .n_tok = n_tok};
    /* One task per thread at most: each task has its own score buffer. */
    run_tasks(c, s, attn_task, &j, tasks_for(c, s, work) > 1 ? kn_pool_threads(c->pool) : 1);
}

static void add_rows(float *x, const float *y, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] = x[i] + y[i];
}

static void layer_forward(llm_ctx *c, scratch *s, int l, int n_tok)
{
    const llm_hparams *hp = &c->m->hp;
    const layer_w *L = &c->m->layers[l];
    size_t E = (size_t)hp->n_embd;
    for (int t = 0; t < n_tok; t++)
        kn_rmsnorm(s->x + t * E, L->attn_norm, s->xb + t * E, hp->n_embd, hp->rms_eps);
    matmuls(c, s, s->xb, n_tok, 3, &L->wq, s->q, &L->wk, s->k, &L->wv, s->v);
    attention(c, s, l, n_tok);
    matmuls(c, s, s->att, n_tok, 1, &L->wo, s->xb, NULL, NULL, NULL, NULL);
    add_rows(s->x, s->xb, (size_t)n_tok * E);
    for (int t = 0; t < n_tok; t++)
        kn_rmsnorm(s->x + t * E, L->ffn_norm, s->xb + t * E, hp->n_embd, hp->rms_eps);
    ffn_up(c, s, L, s->xb, n_tok);
    matmuls(c, s, s->gate, n_tok, 1, &L->down, s->xb, NULL, NULL, NULL, NULL);
    add_rows(s->x, s->xb, (size_t)n_tok * E);
}

/* The whole forward pass for seqs[0..n_seqs) with buffers s: embeddings,
 * layers, then the final norm and output projection for the rows whose
 * logits are wanted (gathered so the projection runs once for all). */
static void forward(llm_ctx *c, scratch *s, const llm_seq *seqs, int n_seqs)
{
    const llm_model *m = c->m;
    const llm_hparams *hp = &m->hp;
    size_t E = (size_t)hp->n_embd, V = (size_t)hp->n_vocab;
    int t = 0;
    for (int q = 0; q < n_seqs; q++)
        for (int i = 0; i < seqs[q].n_tokens; i++, t++) {
            s->rows[t] = (row_info){.slot = seqs[q].slot, .pos = c->slot_pos[seqs[q].slot] + i};
            const char *row =
                (const char *)m->tok_embd.data + (size_t)seqs[q].tokens[i] * m->tok_embd.row_bytes;
            kn_row_to_f32(m->tok_embd.type, row, s->x + (size_t)t * E, hp->n_embd);
        }
    int n_tok = t;
    for (int l = 0; l < hp->n_layer; l++)
        layer_forward(c, s, l, n_tok);
    int n_out = 0;
    t = 0;
    for (int q = 0; q < n_seqs; q++)
        for (int i = 0; i < seqs[q].n_tokens; i++, t++)
            if (seqs[q].logits && (seqs[q].logits_all || i == seqs[q].n_tokens - 1))
                kn_rmsnorm(s->x + (size_t)t * E, m->output_norm, s->xb + (size_t)n_out++ * E,
                           hp->n_embd, hp->rms_eps);
    if (n_out > 0)
        matmuls(c, s, s->xb, n_out, 1, &m->output, s->logit_rows, NULL, NULL, NULL, NULL);
    const float *src = s->logit_rows;
    for (int q = 0; q < n_seqs; q++)
        if (seqs[q].logits) {
            size_t rows = seqs[q].logits_all ? (size_t)seqs[q].n_tokens : 1;
            memcpy(seqs[q].logits, src, rows * V * sizeof(float));
            src += rows * V;
        }
}

/* Sequence groups, one per thread, each decoded by its own forward pass. */
typedef struct group_job {
    llm_ctx *c;
    const llm_seq *seqs;
    int first[LLM_MAX_GROUPS + 1]; /* group g holds seqs[first[g] .. first[g+1]) */
} group_job;

static void group_task(void *arg, int ith, int nth)
{
    (void)nth;
    group_job *j = arg;
    scratch *s = &j->c->scratch[ith];
    s->par = false;
    forward(j->c, s, j->seqs + j->first[ith], j->first[ith + 1] - j->first[ith]);
}

/* Cut seqs into `groups` contiguous groups of about equal token counts.
 * Returns the number of non-empty groups, or 0 when the tokens cannot be
 * balanced (one sequence holds more than a group's fair share by half). */
static int split_groups(const llm_seq *seqs, int n_seqs, int n_tok, int groups, int *first)
{
    int g = 0, acc = 0;
    first[0] = 0;
    for (int q = 0; q < n_seqs; q++) {
        if (2 * seqs[q].n_tokens * groups > 3 * n_tok)
            return 0;
        acc += seqs[q].n_tokens;
        if (g + 1 < groups && (long)acc * groups >= (long)n_tok * (g + 1) && q + 1 < n_seqs)
            first[++g] = q + 1;
    }
    first[++g] = n_seqs;
    return g;
}

static int check_batch(const llm_ctx *c, const llm_seq *seqs, int n_seqs, int *n_tok, char *err,
                       size_t errlen)
{
    int total = 0;
    for (int s = 0; s < n_seqs; s++) {
        const llm_seq *q = &seqs[s];
        if (q->slot < 0 || q->slot >= c->n_slots)
            return fb_errf(err, errlen, FB_EINVAL, "slot %d out of range 0..%d", q->slot,
                           c->n_slots - 1);
        for (int o = 0; o < s; o++)
            if (seqs[o].slot == q->slot)
                return fb_errf(err, errlen, FB_EINVAL, "slot %d appears twice in one batch",
                               q->slot);
        if (q->n_tokens < 1 || !q->tokens)
            return fb_errf(err, errlen, FB_EINVAL, "slot %d: no tokens", q->slot);
        if (q->n_tokens > c->max_tokens - total)
            return fb_errf(err, errlen, FB_ETOOBIG, "batch holds more than %d tokens",
                           c->max_tokens);
        if (q->n_tokens > c->n_ctx - c->slot_pos[q->slot])
            return fb_errf(err, errlen, FB_ETOOBIG,
                           "slot %d: %d + %d tokens exceed the context of %d", q->slot,
                           c->slot_pos[q->slot], q->n_tokens, c->n_ctx);
        for (int i = 0; i < q->n_tokens; i++)
            if (q->tokens[i] < 0 || q->tokens[i] >= c->m->hp.n_vocab)
                return fb_errf(err, errlen, FB_EINVAL, "token id %d out of range 0..%d",
                               q->tokens[i], c->m->hp.n_vocab - 1);
        total += q->n_tokens;
    }
    if (total == 0)
        return fb_errf(err, errlen, FB_EINVAL, "empty batch");
    *n_tok = total;
    return 0;
}

/* Make every scratch's logit buffer hold n rows (before anything changes,
 * so a failure leaves the context as it was). */
static int reserve_logits(llm_ctx *c, size_t n, char *err, size_t errlen)
{
    size_t V = (size_t)c->m->hp.n_vocab;
    for (int i = 0; i < c->n_scratch; i++) {
        scratch *sc = &c->scratch[i];
        if (sc->logit_cap >= n)
            continue;
        float *p = realloc(sc->logit_rows, n * V * sizeof(float));
        if (!p)
            return fb_errf(err, errlen, FB_ENOMEM, "out of memory for %zu rows of logits", n);
        sc->logit_rows = p;
        sc->logit_cap = n;
    }
    return 0;
}

int llm_decode(llm_ctx *c, const llm_seq *seqs, int n_seqs, char *err, size_t errlen)
{
    const llm_hparams *hp = &c->m->hp;
    int n_tok = 0;
    int rc = check_batch(c, seqs, n_seqs, &n_tok, err, errlen);
    if (rc < 0)
        return rc;
    size_t n_logits = 0;
    for (int q = 0; q < n_seqs; q++)
        if (seqs[q].logits)
            n_logits += seqs[q].logits_all ? (size_t)seqs[q].n_tokens : 1;
    if ((rc = reserve_logits(c, n_logits, err, errlen)) < 0)
        return rc;
    /* Several sequences: one forward pass per thread over its own share of
     * them, so the threads meet once per step instead of at every matmul
     * (each re-reads the weights, which costs less than ~30 us per wake).
     * One sequence, or a lopsided batch: one pass, matmuls split by rows. */
    int threads = kn_pool_threads(c->pool);
    int groups = threads < LLM_MAX_GROUPS ? threads : LLM_MAX_GROUPS;
    long macs = (long)n_tok * hp->n_layer * (4L * hp->n_embd + 3L * hp->n_ff) * hp->n_embd;
    group_job gj = {.c = c, .seqs = seqs};
    int n_groups = groups > 1 && n_seqs >= groups && macs >= c->parallel_min
                       ? split_groups(seqs, n_seqs, n_tok, groups, gj.first)
                       : 0;
    if (n_groups > 1) {
        kn_pool_run_tasks(c->pool, group_task, &gj, n_groups);
    } else {
        /* A step whose matmuls stay on this thread: stream its weights. */
        if (macs / (hp->n_layer * 7L) < c->parallel_min)
            prefetch_wake(&c->pf);
        c->scratch[0].par = true;
        forward(c, &c->scratch[0], seqs, n_seqs);
    }
    for (int q = 0; q < n_seqs; q++)
        c->slot_pos[seqs[q].slot] += seqs[q].n_tokens;
    return 0;
}
