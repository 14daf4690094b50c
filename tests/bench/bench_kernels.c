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
    int n_tasks; /* 0: kn_pool_run */
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

static void run_job(kn_pool *pool, kn_task_fn fn, void *arg, int n_tasks)
{
    if (n_tasks)
        kn_pool_run_tasks(pool, fn, arg, n_tasks);
    else
        kn_pool_run(pool, fn, arg);
}

/* Seconds per call of the job through the pool, best of 5 rounds. */
static double time_job(kn_pool *pool, kn_task_fn fn, void *arg, int n_tasks)
{
    double best = 1e9;
    long reps = 1;
    for (int round = 0; round < 6; round++) {
        double t0 = now_s();
        for (long i = 0; i < reps; i++)
            run_job(pool, fn, arg, n_tasks);
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

/* Caller-side work between jobs, like the forward pass's norms. */
static void busy_us(double us)
{
    double end = now_s() + us * 1e-6;
    while (now_s() < end)
        ;
}

/* Round trips of an empty job: back to back (the worker may still be up
 * from the last one), and after 50 us of caller work (the worker has gone
 * back to sleep, as between the forward pass's matmuls).  The median of
 * many, since single wake-ups vary a lot on a virtual machine. */
static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void bench_pool(kn_pool *pool, int threads)
{
    enum { N = 2001 };
    static double t[N];
    static const struct {
        const char *what;
        double gap_us;
        int n_tasks;
    } cases[] = {
        {"back to back", 0, 0},
        {"after 50 us idle", 50, 0},
        {"after 50 us idle, n_tasks = 1", 50, 1},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        for (int i = 0; i < N; i++) {
            if (cases[c].gap_us > 0)
                busy_us(cases[c].gap_us);
            double t0 = now_s();
            run_job(pool, empty_task, NULL, cases[c].n_tasks);
            t[i] = now_s() - t0;
        }
        qsort(t, N, sizeof t[0], cmp_double);
        printf("kn_pool_run empty job, %d threads, %s: median %.2f us, p90 %.2f us\n", threads,
               cases[c].what, t[N / 2] * 1e6, t[N * 9 / 10] * 1e6);
    }
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

/* A decode step's matmuls for the target model (n_embd 512, n_ff 1408, 8
 * layers; 4 attention matrices of 512 x 512 as without grouped-query
 * attention, gate/up 512 x 1408, down 1408 x 512, a 512 x 4096 output), each
 * a job through the pool, weights about 30 MB so that they stream from
 * memory as in a real decode (the per-shape figures above are cache-warm). */
enum { PASS_MATS = 8 * 7 + 1 };

static void bench_pass(const kn_ops *ops, kn_pool *pool, int n_tasks, weights *mats, int n_tok,
                       const char *label)
{
    static const int shapes[7][2] = {{512, 512},  {512, 512},  {512, 512}, {512, 512},
                                     {512, 1408}, {512, 1408}, {1408, 512}};
    if (!mats[0].data)
        for (int i = 0; i < PASS_MATS; i++) {
            int n_in = i < PASS_MATS - 1 ? shapes[i % 7][0] : 512;
            int n_out = i < PASS_MATS - 1 ? shapes[i % 7][1] : 4096;
            make_weights(&mats[i], KN_Q8_0, n_in, n_out);
        }
    size_t x_stride = 1408 / KN_QK * sizeof(kn_q8);
    kn_q8 *x = malloc(x_stride * (size_t)n_tok);
    float *xf = malloc(sizeof(float) * 1408);
    float *y = malloc(sizeof(float) * 4096 * (size_t)n_tok);
    for (int t = 0; t < n_tok; t++) {
        for (int i = 0; i < 1408; i++)
            xf[i] = rnd();
        ops->quantize_q8(xf, (kn_q8 *)((char *)x + (size_t)t * x_stride), 1408);
    }
    double macs = 0, bytes = 0, best = 1e9;
    for (int i = 0; i < PASS_MATS; i++) {
        macs += (double)mats[i].w.n_in * mats[i].w.n_out * n_tok;
        bytes += (double)mats[i].w.row_bytes * mats[i].w.n_out;
    }
    for (int round = 0; round < 20; round++) {
        double t0 = now_s();
        for (int i = 0; i < PASS_MATS; i++) {
            job j = {n_tasks, ops, &mats[i].w, x, x_stride, n_tok, y};
            run_job(pool, matmul_task, &j, n_tasks);
        }
        double dt = now_s() - t0;
        if (dt < best)
            best = dt;
    }
    printf("decode pass %-6s n_tok %2d %-14s %6.0f us  %5.1f GMAC/s  %5.1f GB/s  %6.0f tok/s "
           "(matmuls only)\n",
           ops->name, n_tok, label, best * 1e6, macs / best * 1e-9, bytes / best * 1e-9,
           n_tok / best);
    free(x);
    free(xf);
    free(y);
}

/* Prints one line: GMAC/s and weight GB/s for every path x thread count. */
static void bench_shape(const kn_ops *const *paths, int n_paths, kn_pool *const *pools, int n_pools,
                        int type, int n_in, int n_out, int n_tok)
{
    weights m;
    make_weights(&m, type, n_in, n_out);
    float *xf = malloc(sizeof(float) * (size_t)n_in * (size_t)n_tok);
    for (size_t i = 0; i < (size_t)n_in * (size_t)n_tok; i++)
        xf[i] = rnd();
    size_t x_stride =
        type == KN_Q8_0 ? (size_t)n_in / KN_QK * sizeof(kn_q8) : (size_t)n_in * sizeof(float);
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
            job j = {k == 2 ? 8 : 0, paths[p], &m.w, x, x_stride, n_tok, y};
            double s = time_job(pools[k], matmul_task, &j, j.n_tasks);
            printf(" | %5.1f %5.1f", macs / s * 1e-9, bytes / s * 1e-9);
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
    /* columns: 1 thread; the pool with kn_pool_run; the same pool with
     * kn_pool_run_tasks and 8 tasks */
    kn_pool *pools[3];
    int n_pools = threads > 1 ? 3 : 1;
    if (kn_pool_new(1, &pools[0]) != 0 || (threads > 1 && kn_pool_new(threads, &pools[1]) != 0)) {
        fprintf(stderr, "bench_kernels: cannot start the pool\n");
        return 1;
    }
    pools[2] = pools[1];

    printf("kernels: best path %s; each cell: GMAC/s  weight-GB/s; /8t: kn_pool_run_tasks "
           "with 8 tasks\n",
           kn_ops_best()->name);
    printf("%-26s", "shape (n_in x n_out)");
    for (int p = 0; p < n_paths; p++)
        for (int k = 0; k < n_pools; k++)
            printf(" | %-6s %dthr%s", paths[p]->name, k ? threads : 1, k == 2 ? "/8t" : "   ");
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

    static weights mats[PASS_MATS];
    static const int pass_toks[] = {1, 8};
    for (int p = 1; p < n_paths; p++)
        for (size_t t = 0; t < sizeof pass_toks / sizeof pass_toks[0]; t++) {
            bench_pass(paths[p], pools[0], 0, mats, pass_toks[t], "1 thread");
            if (threads > 1) {
                bench_pass(paths[p], pools[1], 0, mats, pass_toks[t], "pool_run");
                bench_pass(paths[p], pools[1], 4 * threads, mats, pass_toks[t], "pool_tasks x4");
            }
        }
    for (int i = 0; i < PASS_MATS; i++)
        free(mats[i].data);
    if (threads > 1)
        bench_pool(pools[1], threads);
    kn_pool_free(pools[0]);
    if (threads > 1)
        kn_pool_free(pools[1]);
    return 0;
}
