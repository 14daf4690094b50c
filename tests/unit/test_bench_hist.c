/* test_bench_hist.c - the bench latency histogram: percentiles against exactly
 * computed ones on known distributions, bucket bounds, the relative error
 * bound, merge, and overflow above 60 s. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "bench_hist.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const double PCTS[] = {0.1, 1, 10, 25, 50, 75, 90, 99, 99.9, 99.99, 100};
#define NPCTS (sizeof PCTS / sizeof PCTS[0])

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Nearest rank, as the header defines it. */
static uint64_t exact_percentile(const uint64_t *sorted, size_t n, double p)
{
    if (p >= 100)
        return sorted[n - 1];
    /* p/100*n that is an integer in exact arithmetic (99.9% of 50000) must not
     * round up a rank through floating-point error */
    size_t rank = (size_t)ceil(p / 100.0 * (double)n - 1e-9);
    if (rank < 1)
        rank = 1;
    return sorted[rank - 1];
}

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double unit_rand(uint64_t *s)
{
    return (double)(splitmix(s) >> 11) / 9007199254740992.0;
}

/* Record vals, then check every percentile against the exact one within the
 * stated relative error (values below 128 must be exact). */
static void check_distribution(uint64_t *vals, size_t n)
{
    bench_hist *h = malloc(sizeof *h);
    assert_non_null(h);
    bench_hist_init(h);
    for (size_t i = 0; i < n; i++)
        bench_hist_record(h, vals[i]);
    qsort(vals, n, sizeof *vals, cmp_u64);
    assert_int_equal(h->count, n);
    assert_int_equal(h->min, vals[0]);
    assert_int_equal(h->max, vals[n - 1]);
    for (size_t k = 0; k < NPCTS; k++) {
        uint64_t want = exact_percentile(vals, n, PCTS[k]);
        uint64_t got = bench_hist_percentile(h, PCTS[k]);
        double err = fabs((double)got - (double)want);
        if (err > (double)want * BENCH_HIST_REL_ERROR)
            fail_msg("p%g: got %llu, exact %llu (error %.5f > %.5f)", PCTS[k],
                     (unsigned long long)got, (unsigned long long)want, err / (double)want,
                     BENCH_HIST_REL_ERROR);
        if (want < 128)
            assert_int_equal(got, want);
    }
    free(h);
}

static void test_empty(void **state)
{
    (void)state;
    bench_hist h;
    bench_hist_init(&h);
    assert_int_equal(bench_hist_percentile(&h, 50), 0);
    assert_int_equal(bench_hist_percentile(&h, 100), 0);
    assert_true(bench_hist_mean(&h) == 0);
}

static void test_single_value(void **state)
{
    (void)state;
    bench_hist h;
    bench_hist_init(&h);
    bench_hist_record(&h, 12345);
    for (size_t k = 0; k < NPCTS; k++)
        assert_int_equal(bench_hist_percentile(&h, PCTS[k]), 12345); /* clamped to min/max */
    assert_true(bench_hist_mean(&h) == 12345);
}

static void test_uniform_small_exact(void **state)
{
    (void)state;
    /* 1..100 once each: every percentile exact (one bucket per value). */
    bench_hist h;
    bench_hist_init(&h);
    for (uint64_t v = 1; v <= 100; v++)
        bench_hist_record(&h, v);
    assert_int_equal(bench_hist_percentile(&h, 50), 50);
    assert_int_equal(bench_hist_percentile(&h, 90), 90);
    assert_int_equal(bench_hist_percentile(&h, 99), 99);
    assert_int_equal(bench_hist_percentile(&h, 99.9), 100);
    assert_int_equal(bench_hist_percentile(&h, 1), 1);
    assert_int_equal(bench_hist_percentile(&h, 0), 1);
    assert_int_equal(bench_hist_percentile(&h, 100), 100);
    assert_true(fabs(bench_hist_mean(&h) - 50.5) < 1e-9);
}

static void test_uniform_wide(void **state)
{
    (void)state;
    size_t n = 100000;
    uint64_t *v = malloc(n * sizeof *v), seed = 1;
    assert_non_null(v);
    for (size_t i = 0; i < n; i++)
        v[i] = 1 + splitmix(&seed) % 2000000; /* 1 us .. 2 s */
    check_distribution(v, n);
    free(v);
}

static void test_exponential(void **state)
{
    (void)state;
    size_t n = 50000;
    uint64_t *v = malloc(n * sizeof *v), seed = 7;
    assert_non_null(v);
    for (size_t i = 0; i < n; i++) /* mean 5 ms, the shape of commit latencies */
        v[i] = (uint64_t)(-log(1.0 - unit_rand(&seed)) * 5000.0) + 1;
    check_distribution(v, n);
    free(v);
}

static void test_lognormal_heavy_tail(void **state)
{
    (void)state;
    size_t n = 50000;
    uint64_t *v = malloc(n * sizeof *v), seed = 42;
    assert_non_null(v);
    for (size_t i = 0; i < n; i++) { /* Box-Muller; spans microseconds to tens of seconds */
        double u1 = unit_rand(&seed), u2 = unit_rand(&seed);
        double z = sqrt(-2.0 * log(1.0 - u1)) * cos(2 * M_PI * u2);
        double x = exp(8.0 + 2.5 * z);
        v[i] = x > 5e7 ? 50000000u : (uint64_t)x + 1;
    }
    check_distribution(v, n);
    free(v);
}

/* 99.9% of 1000 values is rank 999 exactly, not the maximum: 999 ones and a
 * single 100 (values below 128 are recorded exactly). */
static void test_rank_exact_multiple(void **state)
{
    (void)state;
    bench_hist *h = malloc(sizeof *h);
    assert_non_null(h);
    bench_hist_init(h);
    for (int i = 0; i < 999; i++)
        bench_hist_record(h, 1);
    bench_hist_record(h, 100);
    assert_int_equal(bench_hist_percentile(h, 99.9), 1);
    assert_int_equal(bench_hist_percentile(h, 99.95), 100);
    assert_int_equal(bench_hist_percentile(h, 100), 100);
    free(h);
}

static void test_bimodal(void **state)
{
    (void)state;
    /* 99% fast, 1% slow: p99 sits on the edge between the modes. */
    size_t n = 10000;
    uint64_t *v = malloc(n * sizeof *v);
    assert_non_null(v);
    for (size_t i = 0; i < n; i++)
        v[i] = i % 100 == 0 ? 250000 + i : 900 + i % 50;
    check_distribution(v, n);
    free(v);
}

static void test_bucket_bounds(void **state)
{
    (void)state;
    /* Buckets tile the range: contiguous, each value inside its bucket, and
     * never wider than 1/128 of the bucket's lower bound. */
    uint64_t expect_lo = 0;
    for (uint32_t b = 0; b < BENCH_HIST_BUCKETS; b++) {
        uint64_t lo, hi;
        bench_hist_bucket_range(b, &lo, &hi);
        assert_int_equal(lo, expect_lo);
        assert_true(hi >= lo);
        assert_int_equal(bench_hist_bucket(lo), b);
        assert_int_equal(bench_hist_bucket(hi), b);
        if (lo >= 128)
            assert_true((double)(hi - lo + 1) <= (double)lo / 128.0);
        expect_lo = hi + 1;
    }
    /* The last bucket reaches past the 60 s maximum. */
    assert_true(expect_lo > BENCH_HIST_MAX_US);
    assert_true(bench_hist_bucket(BENCH_HIST_MAX_US) < BENCH_HIST_BUCKETS);
    assert_int_equal(bench_hist_bucket(0), 0);
    assert_int_equal(bench_hist_bucket(1), 1);
    assert_int_equal(bench_hist_bucket(127), 127);
    assert_int_equal(bench_hist_bucket(128), 128);
}

static void test_relative_error_every_value(void **state)
{
    (void)state;
    /* A histogram holding one value reports it exactly (min/max clamp); two
     * copies of the bucket's edges make the midpoint show: check it. */
    uint64_t seed = 3;
    for (int i = 0; i < 20000; i++) {
        uint64_t x = 1 + splitmix(&seed) % BENCH_HIST_MAX_US;
        bench_hist h;
        bench_hist_init(&h);
        uint64_t lo, hi;
        bench_hist_bucket_range(bench_hist_bucket(x), &lo, &hi);
        bench_hist_record(&h, lo);
        bench_hist_record(&h, x);
        bench_hist_record(&h, hi);
        uint64_t got = bench_hist_percentile(&h, 50);
        double err = fabs((double)got - (double)x) / (double)x;
        if (err > BENCH_HIST_REL_ERROR)
            fail_msg("value %llu reported as %llu (error %.5f)", (unsigned long long)x,
                     (unsigned long long)got, err);
    }
}

static void test_merge(void **state)
{
    (void)state;
    size_t n = 20000;
    uint64_t *v = malloc(n * sizeof *v), seed = 11;
    bench_hist *a = malloc(sizeof *a), *b = malloc(sizeof *b), *all = malloc(sizeof *all);
    assert_non_null(v);
    assert_non_null(a);
    assert_non_null(b);
    assert_non_null(all);
    bench_hist_init(a);
    bench_hist_init(b);
    bench_hist_init(all);
    for (size_t i = 0; i < n; i++) {
        v[i] = 1 + splitmix(&seed) % 300000;
        bench_hist_record(i % 3 ? a : b, v[i]);
        bench_hist_record(all, v[i]);
    }
    bench_hist_record(b, BENCH_HIST_MAX_US + 5); /* overflow merges too */
    bench_hist_record(all, BENCH_HIST_MAX_US + 5);
    bench_hist_merge(a, b);
    assert_int_equal(a->count, all->count);
    assert_int_equal(a->overflow, 1);
    assert_int_equal(a->min, all->min);
    assert_int_equal(a->max, BENCH_HIST_MAX_US + 5);
    assert_memory_equal(a->buckets, all->buckets, sizeof a->buckets);
    for (size_t k = 0; k < NPCTS; k++)
        assert_int_equal(bench_hist_percentile(a, PCTS[k]), bench_hist_percentile(all, PCTS[k]));
    /* merging into an empty histogram copies; merging an empty one is a no-op */
    bench_hist_init(b);
    bench_hist_merge(b, all);
    assert_int_equal(b->min, all->min);
    bench_hist_init(a);
    bench_hist_merge(b, a);
    assert_int_equal(b->count, all->count);
    free(v);
    free(a);
    free(b);
    free(all);
}

static void test_overflow(void **state)
{
    (void)state;
    bench_hist h;
    bench_hist_init(&h);
    for (int i = 0; i < 98; i++)
        bench_hist_record(&h, 100);                   /* below 128: exact */
    bench_hist_record(&h, BENCH_HIST_MAX_US);         /* the largest bucketed value */
    bench_hist_record(&h, 3 * BENCH_HIST_MAX_US + 7); /* 180 s: overflows */
    assert_int_equal(h.count, 100);
    assert_int_equal(h.overflow, 1);
    assert_int_equal(h.max, 3 * BENCH_HIST_MAX_US + 7);
    assert_int_equal(bench_hist_percentile(&h, 100), 3 * BENCH_HIST_MAX_US + 7);
    assert_int_equal(bench_hist_percentile(&h, 50), 100);
    /* rank 99 is the 60 s value, within the error bound */
    uint64_t p99 = bench_hist_percentile(&h, 99);
    assert_true(fabs((double)p99 - (double)BENCH_HIST_MAX_US) <=
                (double)BENCH_HIST_MAX_US * BENCH_HIST_REL_ERROR);
    /* rank 100 falls in the overflow: the exact maximum */
    assert_int_equal(bench_hist_percentile(&h, 99.5), 3 * BENCH_HIST_MAX_US + 7);
    assert_true(fabs(bench_hist_mean(&h) - (98 * 100.0 + 4.0 * BENCH_HIST_MAX_US + 7) / 100) <
                1e-6);
    /* only overflowed values: every percentile is the maximum */
    bench_hist_init(&h);
    bench_hist_record(&h, UINT64_MAX);
    assert_int_equal(bench_hist_percentile(&h, 50), UINT64_MAX);
    assert_int_equal(h.max, UINT64_MAX);
}

static void test_percentiles_ordered(void **state)
{
    (void)state;
    bench_hist h;
    bench_hist_init(&h);
    uint64_t seed = 5;
    for (int i = 0; i < 5000; i++)
        bench_hist_record(&h, 1 + splitmix(&seed) % 100000);
    uint64_t prev = 0;
    for (double p = 0; p <= 100; p += 0.5) {
        uint64_t v = bench_hist_percentile(&h, p);
        assert_true(v >= prev);
        prev = v;
    }
    assert_int_equal(prev, h.max);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_single_value),
        cmocka_unit_test(test_uniform_small_exact),
        cmocka_unit_test(test_uniform_wide),
        cmocka_unit_test(test_exponential),
        cmocka_unit_test(test_lognormal_heavy_tail),
        cmocka_unit_test(test_rank_exact_multiple),
        cmocka_unit_test(test_bimodal),
        cmocka_unit_test(test_bucket_bounds),
        cmocka_unit_test(test_relative_error_every_value),
        cmocka_unit_test(test_merge),
        cmocka_unit_test(test_overflow),
        cmocka_unit_test(test_percentiles_ordered),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
