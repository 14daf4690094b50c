/* sampler.h - choosing the next token from logits: greedy, or temperature
 * with top-k and top-p driven by a per-request seed, so that sampled output
 * is as reproducible as greedy output.
 *
 * Rules (fixed, so every replica picks the same token from the same logits):
 *   greedy (temperature <= 0): the highest logit; ties go to the lowest id.
 *   sampling: candidates sorted by logit (descending, ties by ascending id);
 *     top_k > 0 keeps the first top_k; weights w_i = exp((l_i - l_max) / T)
 *     summed in double in that order; 0 < top_p < 1 keeps the shortest prefix
 *     whose weight reaches top_p of the total; u = (next 53 bits of a
 *     splitmix64 stream seeded with seed) / 2^53 times the kept total; the
 *     first candidate whose running sum exceeds u is chosen.
 *
 * Ownership: a sampler owns its scratch (n_vocab entries); one thread at a
 * time.
 */
#ifndef FB_SAMPLER_H
#define FB_SAMPLER_H

#include <stdint.h>

typedef struct sampler_params {
    float temperature; /* <= 0: greedy */
    int top_k;         /* 0 or >= n_vocab: no limit */
    float top_p;       /* 0 or >= 1: no limit */
    uint64_t seed;
} sampler_params;

typedef struct sampler sampler;

/* FB_EINVAL for n_vocab < 1, a NaN/negative parameter or top_k < 0. */
int sampler_new(int n_vocab, const sampler_params *p, sampler **out);
void sampler_free(sampler *s);
/* The next token.  Advances the random stream only when sampling. */
int32_t sampler_next(sampler *s, const float *logits);
/* The argmax with ties to the lowest id. */
int32_t sampler_greedy(const float *logits, int n_vocab);

#endif
