/* bench_hist.c - the log-bucketed latency histogram of `fedbft bench`. */
#include "bench_hist.h"

#include <math.h>
#include <string.h>

#define SUB (1u << BENCH_HIST_SUB_BITS)

void bench_hist_init(bench_hist *h)
{
    memset(h, 0, sizeof *h);
}

uint32_t bench_hist_bucket(uint64_t us)
{
    if (us < SUB)
        return (uint32_t)us;
    /* e = how far the value must be shifted to keep SUB_BITS+1 bits. */
    uint32_t msb = 63u - (uint32_t)__builtin_clzll(us);
    uint32_t e = msb - BENCH_HIST_SUB_BITS;
    return (e << BENCH_HIST_SUB_BITS) + (uint32_t)(us >> e);
}

void bench_hist_bucket_range(uint32_t b, uint64_t *lo, uint64_t *hi)
{
    if (b < 2 * SUB) {
        *lo = *hi = b;
        return;
    }
    uint32_t e = (b >> BENCH_HIST_SUB_BITS) - 1;
    uint64_t mant = (b & (SUB - 1)) + SUB;
    *lo = mant << e;
    *hi = *lo + (1ull << e) - 1;
}

void bench_hist_record(bench_hist *h, uint64_t us)
{
    if (h->count == 0 || us < h->min)
        h->min = us;
    if (us > h->max)
        h->max = us;
    h->count++;
    h->sum += (double)us;
    if (us > BENCH_HIST_MAX_US)
        h->overflow++;
    else
        h->buckets[bench_hist_bucket(us)]++;
}

void bench_hist_merge(bench_hist *dst, const bench_hist *src)
{
    if (src->count == 0)
        return;
    if (dst->count == 0 || src->min < dst->min)
        dst->min = src->min;
    if (src->max > dst->max)
        dst->max = src->max;
    dst->count += src->count;
    dst->overflow += src->overflow;
    dst->sum += src->sum;
    for (uint32_t b = 0; b < BENCH_HIST_BUCKETS; b++)
        dst->buckets[b] += src->buckets[b];
}

uint64_t bench_hist_percentile(const bench_hist *h, double p)
{
    if (h->count == 0)
        return 0;
    if (!(p > 0))
        return h->min;
    if (p >= 100)
        return h->max;
    /* nearest rank; the epsilon keeps p*count/100 that is an exact integer (e.g.
     * 99.9% of 1000) from rounding up a rank through floating-point error */
    uint64_t rank = (uint64_t)ceil(p / 100.0 * (double)h->count - 1e-9);
    if (rank < 1)
        rank = 1;
    if (rank > h->count)
        rank = h->count;
    uint64_t seen = 0;
    for (uint32_t b = 0; b < BENCH_HIST_BUCKETS; b++) {
        seen += h->buckets[b];
        if (seen >= rank) {
            uint64_t lo, hi;
            bench_hist_bucket_range(b, &lo, &hi);
            uint64_t mid = lo + (hi - lo + 1) / 2;
            if (hi == lo)
                mid = lo;
            return mid < h->min ? h->min : mid > h->max ? h->max : mid;
        }
    }
    return h->max; /* the rank lies among the overflowed values */
}

double bench_hist_mean(const bench_hist *h)
{
    return h->count ? h->sum / (double)h->count : 0;
}
