/* sampler.c - greedy and seeded top-k / top-p sampling (rules in sampler.h). */
#include "sampler.h"

#include "fb_error.h"

#include <math.h>
#include <stdlib.h>

typedef struct cand {
    float logit;
    int32_t id;
} cand;

struct sampler {
    sampler_params p;
    int n_vocab;
    uint64_t state;
    cand *c;   /* n_vocab */
    double *w; /* n_vocab: candidate weights */
};

int sampler_new(int n_vocab, const sampler_params *p, sampler **out)
{
    if (n_vocab < 1 || p->top_k < 0 || isnan(p->temperature) || isnan(p->top_p) || p->top_p < 0)
        return FB_EINVAL;
    sampler *s = calloc(1, sizeof *s);
    if (!s)
        return FB_ENOMEM;
    s->c = malloc((size_t)n_vocab * sizeof *s->c);
    s->w = malloc((size_t)n_vocab * sizeof *s->w);
    if (!s->c || !s->w) {
        free(s->c);
        free(s->w);
        free(s);
        return FB_ENOMEM;
    }
    s->p = *p;
    s->n_vocab = n_vocab;
    s->state = p->seed;
    *out = s;
    return 0;
}

void sampler_free(sampler *s)
{
    if (!s)
        return;
    free(s->c);
    free(s->w);
    free(s);
}

int32_t sampler_greedy(const float *logits, int n_vocab)
{
    int32_t best = 0;
    for (int32_t i = 1; i < n_vocab; i++)
        if (logits[i] > logits[best])
            best = i;
    return best;
}

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* a goes before b: higher logit, then lower id. */
static int before(const cand *a, const cand *b)
{
    return a->logit > b->logit || (a->logit == b->logit && a->id < b->id);
}

static int cmp_cand(const void *pa, const void *pb)
{
    const cand *a = pa, *b = pb;
    return before(a, b) ? -1 : before(b, a) ? 1 : 0;
}

/* Keep the k first candidates (in the order of `before`) in c[0..k), sorted:
 * a heap whose root is the worst kept candidate, O(n log k). */
static void top_k(cand *c, int n, int k)
{
    for (int i = k / 2 - 1; i >= 0; i--) {
        for (int j = i;;) { /* sift down: worst at the root */
            int w = j, l = 2 * j + 1, r = l + 1;
            if (l < k && before(&c[w], &c[l]))
                w = l;
            if (r < k && before(&c[w], &c[r]))
                w = r;
            if (w == j)
                break;
            cand t = c[j];
            c[j] = c[w];
            c[w] = t;
            j = w;
        }
    }
    for (int i = k; i < n; i++) {
        if (!before(&c[i], &c[0]))
            continue;
        c[0] = c[i];
        for (int j = 0;;) {
            int w = j, l = 2 * j + 1, r = l + 1;
            if (l < k && before(&c[w], &c[l]))
                w = l;
            if (r < k && before(&c[w], &c[r]))
                w = r;
            if (w == j)
                break;
            cand t = c[j];
            c[j] = c[w];
            c[w] = t;
            j = w;
        }
    }
    qsort(c, (size_t)k, sizeof *c, cmp_cand);
}

int32_t sampler_next(sampler *s, const float *logits)
{
    if (!(s->p.temperature > 0))
        return sampler_greedy(logits, s->n_vocab);
    int n = s->n_vocab;
    for (int i = 0; i < n; i++)
        s->c[i] = (cand){.logit = logits[i], .id = i};
    int k = s->p.top_k > 0 && s->p.top_k < n ? s->p.top_k : n;
    if (k < n)
        top_k(s->c, n, k);
    else
        qsort(s->c, (size_t)n, sizeof *s->c, cmp_cand);
    double inv_t = 1.0 / (double)s->p.temperature, total = 0;
    for (int i = 0; i < k; i++) {
        s->w[i] = exp(((double)s->c[i].logit - (double)s->c[0].logit) * inv_t);
        total += s->w[i];
    }
    if (s->p.top_p > 0 && s->p.top_p < 1) {
        double keep = 0, goal = (double)s->p.top_p * total;
        int i = 0;
        while (i < k && keep < goal)
            keep += s->w[i++];
        k = i;
        total = keep;
    }
    double u = (double)(splitmix64(&s->state) >> 11) * 0x1.0p-53 * total, run = 0;
    for (int i = 0; i < k; i++) {
        run += s->w[i];
        if (run > u)
            return s->c[i].id;
    }
    return s->c[k - 1].id;
}
