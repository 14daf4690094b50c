/* bench_hist.h - a log-bucketed latency histogram in fixed memory (the
 * HdrHistogram layout), for `fedbft bench`.
 *
 * Values are microseconds.  Below 128 every value has its own bucket; from
 * there on each power of two is cut into 128 equal sub-buckets, so a bucket
 * is never wider than 1/128 of its lower bound.  A percentile reports its
 * bucket's midpoint, which is within 1/256 (0.4%) of every value in that
 * bucket, and is then clamped to the exact minimum and maximum recorded.
 *
 * Range: 0 to BENCH_HIST_MAX_US (60 s).  Larger values are counted in
 * `overflow` (and in the count, the maximum and the mean), never bucketed; a
 * percentile that falls among them reports the exact maximum.
 *
 * Percentiles use the nearest-rank definition: the value at rank
 * ceil(p/100 * count) (at least 1) of the sorted values.
 *
 * Plain data, no allocation: embed it or allocate it; zero it with
 * bench_hist_init.  Not thread-safe (one writer, the load's loop thread).
 */
#ifndef FB_BENCH_HIST_H
#define FB_BENCH_HIST_H

#include <stdint.h>

#define BENCH_HIST_MAX_US 60000000ull /* 60 s */
#define BENCH_HIST_SUB_BITS 7         /* 128 sub-buckets per power of two */
/* Buckets for every value below 2^26 (> BENCH_HIST_MAX_US): 128 exact ones,
 * then 128 for each power of two from 2^7 to 2^25. */
#define BENCH_HIST_BUCKETS ((26 - BENCH_HIST_SUB_BITS + 1) << BENCH_HIST_SUB_BITS)
/* The relative error bound a percentile is guaranteed to meet. */
#define BENCH_HIST_REL_ERROR (1.0 / (2 << BENCH_HIST_SUB_BITS))

typedef struct bench_hist {
    uint64_t count;    /* every value recorded, overflow included */
    uint64_t overflow; /* values above BENCH_HIST_MAX_US */
    uint64_t min, max; /* exact; 0 when empty */
    double sum;        /* for the mean */
    uint64_t buckets[BENCH_HIST_BUCKETS];
} bench_hist;

void bench_hist_init(bench_hist *h);
void bench_hist_record(bench_hist *h, uint64_t us);
/* Add every value of src to dst (same layout, so no precision is lost). */
void bench_hist_merge(bench_hist *dst, const bench_hist *src);

/* p in [0, 100]; 0 when the histogram is empty.  p = 100 is the maximum. */
uint64_t bench_hist_percentile(const bench_hist *h, double p);
double bench_hist_mean(const bench_hist *h);

/* The bucket a value lands in, and the range [*lo, *hi] of that bucket:
 * exposed for the unit test. */
uint32_t bench_hist_bucket(uint64_t us);
void bench_hist_bucket_range(uint32_t b, uint64_t *lo, uint64_t *hi);

#endif
