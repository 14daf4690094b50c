/* bench_kernels.c - what the matmul kernels sustain on this CPU (GMAC/s and
 * weight GB/s, per path, 1 thread and through the pool) and what one pool
 * round trip costs.  Built with the suite, run by hand:
 *
 *   build/tests/bench/bench_kernels [--threads T] [--ms M]
 *
 * Each figure is the best of several timed runs of about M milliseconds. */
#include "kernels.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static uint64_t rng = 0x243f6a8885a308d3ull;

static float rnd(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((double)(rng >> 11) * 0x1p-53 * 2.0 - 1.0);
}

typedef struct job {
    const kn_ops *ops;
    const kn_weight *w;
    const void *x;
    size_t x_stride;
    int n_tok;
    float *y;
} job;

static void matmul_task(void *arg, int ith, int nth)
{
    job *j = arg;
    int r0, r1;
    kn_split(j->w->n_out, 16, ith, nth, &r0, &r1);
    if (r0 < r1)
        j->ops->matmul(j->w, r0, r1, j->x, j->x_stride, j->n_tok, j->y, (size_t)j->w->n_out);
}

static void empty_task(void *arg, int ith, int nth)
{
    (void)arg;
    (void)ith;
    (void)nth;
}

static double g_ms = 200.0;

/* Seconds per call of the job through the pool, best of 5 rounds. */
static double time_job(kn_pool *pool, kn_task_fn fn, void *arg)
{
    double best = 1e9;
    long reps = 1;
    for (int round = 0; round < 6; round++) {
        double t0 = now_s();
        for (long i = 0; i < reps; i++)
            kn_pool_run(pool, fn, arg);
        double dt = now_s() - t0;
        if (round == 0) { /* calibrate */
            reps = (long)(g_ms * 1e-3 / (dt > 1e-9 ? dt : 1e-9));
            if (reps < 1)
                reps = 1;
            continue;
        }
        if (dt / (double)reps < best)
            best = dt / (double)reps;
    }
    return best;
}

typedef struct weights {
    kn_weight w;
    void *data;
} weights;

static void make_weights(weights *m, int type, int n_in, int n_out)
{
    size_t row_bytes = type == KN_F32   ? (size_t)n_in * 4
                       : type == KN_F16 ? (size_t)n_in * 2
                                        : (size_t)n_in / KN_QK * sizeof(kn_q8);
    m->data = malloc(row_bytes * (size_t)n_out);
    float *row = malloc(sizeof(float) * (size_t)n_in);
    for (int r = 0; r < n_out; r++) {
        for (int i = 0; i < n_in; i++)
            row[i] = rnd();
        char *dst = (char *)m->data + (size_t)r * row_bytes;
        if (type == KN_F32)
            memcpy(dst, row, row_bytes);
        else if (type == KN_F16)
            for (int i = 0; i < n_in; i++)
                ((uint16_t *)dst)[i] = kn_f32_to_fp16(row[i]);
        else
            kn_quantize_q8_weights(row, (kn_q8 *)dst, n_in);
    }
    free(row);
    m->w = (kn_weight){
        .type = type, .n_in = n_in, .n_out = n_out, .row_bytes = row_bytes, .data = m->data};
}

/* Prints one line: GMAC/s and weight GB/s for every path x thread count. */
static void bench_shape(const kn_ops *const *paths, int n_paths, kn_pool *const *pools,
                        int n_pools, int type, int n_in, int n_out, int n_tok)
{
    weights m;
    make_weights(&m, type, n_in, n_out);
    float *xf = malloc(sizeof(float) * (size_t)n_in * (size_t)n_tok);
    for (size_t i = 0; i < (size_t)n_in * (size_t)n_tok; i++)
        xf[i] = rnd();
    size_t x_stride = type == KN_Q8_0 ? (size_t)n_in / KN_QK * sizeof(kn_q8)
                                      : (size_t)n_in * sizeof(float);
    void *x = malloc(x_stride * (size_t)n_tok);
    float *y = malloc(sizeof(float) * (size_t)n_out * (size_t)n_tok);
    static const char *tname[] = {"F32", "F16", "", "", "", "", "", "", "Q8_0"};
    printf("%-4s %5d x %-5d tok %2d", tname[type], n_in, n_out, n_tok);
    double macs = (double)n_in * n_out * n_tok;
    double bytes = (double)m.w.row_bytes * n_out;
    for (int p = 0; p < n_paths; p++) {
        if (type == KN_Q8_0)
            for (int t = 0; t < n_tok; t++)
                paths[p]->quantize_q8(xf + (size_t)t * n_in,
                                      (kn_q8 *)((char *)x + (size_t)t * x_stride), n_in);
        else
            memcpy(x, xf, x_stride * (size_t)n_tok);
        for (int k = 0; k < n_pools; k++) {
            job j = {paths[p], &m.w, x, x_stride, n_tok, y};
            double s = time_job(pools[k], matmul_task, &j);
            printf(" | %6.1f %6.1f", macs / s * 1e-9, bytes / s * 1e-9);
        }
    }
    printf("\n");
    free(x);
    free(xf);
    free(y);
    free(m.data);
}

int main(int argc, char **argv)
{
    int threads = 2;
    static const struct option opts[] = {
        {"threads", required_argument, NULL, 't'}, {"ms", required_argument, NULL, 'm'}, {0}};
    int c;
    while ((c = getopt_long(argc, argv, "t:m:", opts, NULL)) != -1) {
        if (c == 't')
            threads = atoi(optarg);
        else if (c == 'm')
            g_ms = atof(optarg);
        else {
            fprintf(stderr, "usage: %s [--threads T] [--ms M]\n", argv[0]);
            return 2;
        }
    }
    if (threads < 1)
        threads = 1;

    const kn_ops *paths[3];
    int n_paths = 0;
    for (int p = KN_PATH_SCALAR; p <= KN_PATH_AVX512; p++)
        if (kn_ops_get(p))
            paths[n_paths++] = kn_ops_get(p);
    kn_pool *pools[2];
    int n_pools = threads > 1 ? 2 : 1;
    if (kn_pool_new(1, &pools[0]) != 0 || (threads > 1 && kn_pool_new(threads, &pools[1]) != 0)) {
        fprintf(stderr, "bench_kernels: cannot start the pool\n");
        return 1;
    }

    printf("kernels: best path %s; each cell: GMAC/s  weight-GB/s\n", kn_ops_best()->name);
    printf("%-26s", "shape (n_in x n_out)");
    for (int p = 0; p < n_paths; p++)
        for (int k = 0; k < n_pools; k++)
            printf(" | %-6s %dthr    ", paths[p]->name, k ? threads : 1);
    printf("\n");

    static const int q8_shapes[][2] = {{512, 512}, {512, 1408}, {1408, 512}, {512, 2048}};
    static const int toks[] = {1, 4, 8, 16};
    for (size_t s = 0; s < sizeof q8_shapes / sizeof q8_shapes[0]; s++)
        for (size_t t = 0; t < sizeof toks / sizeof toks[0]; t++)
            bench_shape(paths, n_paths, pools, n_pools, KN_Q8_0, q8_shapes[s][0], q8_shapes[s][1],
                        toks[t]);
    static const int ftoks[] = {1, 8};
    for (int type = KN_F32; type <= KN_F16; type++)
        for (size_t t = 0; t < 2; t++)
            bench_shape(paths, n_paths, pools, n_pools, type, 512, 512, ftoks[t]);

    if (threads > 1) {
        double s = time_job(pools[1], empty_task, NULL);
        printf("kn_pool_run round trip, empty job, %d threads: %.2f us\n", threads, s * 1e6);
    }
    kn_pool_free(pools[0]);
    if (threads > 1)
        kn_pool_free(pools[1]);
    return 0;
}
