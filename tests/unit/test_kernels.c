/* test_kernels.c - the numeric kernels against plainly written references:
 * exact re-implementations of the documented orders (bit checks), double
 * precision (tolerance checks), the scalar path against the SIMD paths (bit
 * identity), fp16 conversions, kn_split and the thread pool. */
#include "kernels.h"

#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define HAVE_X86 1
#endif

/* ---- helpers ---- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static void rng_seed(uint64_t s)
{
    rng_state = s ? s : 1;
}

static uint64_t rng_next(void)
{
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}

/* uniform in [-1, 1) */
static float rng_unit(void)
{
    return (float)((double)(rng_next() >> 11) * 0x1p-53 * 2.0 - 1.0);
}

/* values over a few orders of magnitude, to stress rounding */
static float rng_float(void)
{
    float v = rng_unit();
    switch (rng_next() % 4) {
    case 0:
        return v * 100.0f;
    case 1:
        return v * 0.01f;
    default:
        return v;
    }
}

static uint32_t f32_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return u;
}

static float bits_f32(uint32_t u)
{
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static void fill_floats(float *x, size_t n)
{
    for (size_t i = 0; i < n; i++)
        x[i] = rng_float();
}

static void assert_bits_equal(const float *a, const float *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (f32_bits(a[i]) != f32_bits(b[i])) {
            print_error("element %zu: %a (0x%08x) != %a (0x%08x)\n", i, (double)a[i],
                        f32_bits(a[i]), (double)b[i], f32_bits(b[i]));
            fail();
        }
}

static const kn_ops *simd_ops(int path)
{
    const kn_ops *ops = kn_ops_get(path);
    if (!ops)
        printf("[ SKIPPED  ] path %d not available on this CPU or build\n", path);
    return ops;
}

/* ---- references, written plainly from kernels.h ---- */

/* fp16 -> f32 from the definition: (-1)^s * 2^(e-15) * (1 + m/1024). */
static double ref_half_value(uint16_t h)
{
    int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
    double v = e == 0 ? ldexp(m, -24) : ldexp(1024 + m, e - 25);
    return s ? -v : v;
}

static float ref_dot32(const float *w, const float *x, int n)
{
    float p[32];
    for (int j = 0; j < 32; j++)
        p[j] = 0.0f;
    for (int i = 0; i < n; i++) {
        float prod = w[i] * x[i];
        p[i % 32] = p[i % 32] + prod;
    }
    for (int k = 16; k >= 1; k /= 2)
        for (int j = 0; j < k; j++)
            p[j] = p[j] + p[j + k];
    return p[0];
}

static double ref_dot_double(const float *w, const float *x, int n, double *abs_sum)
{
    double s = 0.0, a = 0.0;
    for (int i = 0; i < n; i++) {
        s += (double)w[i] * (double)x[i];
        a += fabs((double)w[i] * (double)x[i]);
    }
    *abs_sum = a;
    return s;
}

static float ref_dot_q8(const kn_q8 *w, const kn_q8 *x, int nb)
{
    float a[8] = {0};
    for (int b = 0; b < nb; b++) {
        float s = kn_fp16_to_f32(w[b].d) * kn_fp16_to_f32(x[b].d);
        for (int l = 0; l < 8; l++) {
            long sum = 0;
            for (int j = 4 * l; j < 4 * l + 4; j++)
                sum += (long)w[b].qs[j] * x[b].qs[j];
            float term = (float)sum * s;
            a[l] = a[l] + term;
        }
    }
    for (int k = 4; k >= 1; k /= 2)
        for (int j = 0; j < k; j++)
            a[j] = a[j] + a[j + k];
    return a[0];
}

/* Activation quantization, plainly (finite input): the max is exact in any
 * order; nearbyintf rounds half to even in the default mode. */
static void ref_quantize_act(const float *x, kn_q8 *out, int n)
{
    for (int b = 0; b < n / 32; b++) {
        float m = 0.0f;
        for (int j = 0; j < 32; j++)
            if (fabsf(x[b * 32 + j]) > m)
                m = fabsf(x[b * 32 + j]);
        float d = m / 127.0f;
        float id = m != 0.0f ? 127.0f / m : 0.0f;
        out[b].d = kn_f32_to_fp16(d);
        for (int j = 0; j < 32; j++)
            out[b].qs[j] = (int8_t)nearbyintf(x[b * 32 + j] * id);
    }
}

/* llama.cpp quantize_row_q8_0_ref */
static void ref_quantize_weights(const float *x, kn_q8 *out, int n)
{
    for (int b = 0; b < n / 32; b++) {
        float amax = 0.0f;
        for (int j = 0; j < 32; j++)
            amax = fmaxf(amax, fabsf(x[b * 32 + j]));
        float d = amax / 127.0f;
        float id = d ? 1.0f / d : 0.0f;
        out[b].d = kn_f32_to_fp16(d);
        for (int j = 0; j < 32; j++)
            out[b].qs[j] = (int8_t)roundf(x[b * 32 + j] * id);
    }
}

static void assert_q8_equal(const kn_q8 *a, const kn_q8 *b, int nb)
{
    for (int i = 0; i < nb; i++) {
        if (a[i].d != b[i].d) {
            print_error("block %d: d 0x%04x != 0x%04x\n", i, a[i].d, b[i].d);
            fail();
        }
        for (int j = 0; j < 32; j++)
            if (a[i].qs[j] != b[i].qs[j]) {
                print_error("block %d qs[%d]: %d != %d\n", i, j, a[i].qs[j], b[i].qs[j]);
                fail();
            }
    }
}

/* ---- fp16 ---- */

static void test_fp16_exhaustive_roundtrip(void **state)
{
    (void)state;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = kn_fp16_to_f32((uint16_t)h);
        int e = (h >> 10) & 31, m = h & 1023;
        if (e == 31 && m != 0) {
            assert_true(isnan(f));
            /* quiet, payload kept, sign kept */
            assert_int_equal(kn_f32_to_fp16(f), h | 0x200);
            continue;
        }
        assert_true((double)f == ref_half_value((uint16_t)h) ||
                    (e == 31 && isinf(f) && (f > 0) == !(h >> 15)));
        assert_int_equal(signbit(f) != 0, (h >> 15) != 0);
        assert_int_equal(kn_f32_to_fp16(f), h);
    }
}

static void test_fp16_rne_cases(void **state)
{
    (void)state;
    struct {
        float f;
        uint16_t h;
    } cases[] = {
        {1.0f, 0x3c00},
        {-2.0f, 0xc000},
        {0.0f, 0x0000},
        {-0.0f, 0x8000},
        {65504.0f, 0x7bff},
        {65519.99f, 0x7bff},
        {65520.0f, 0x7c00}, /* tie between 65504 and 65536 -> even -> inf */
        {1e10f, 0x7c00},
        {-1e10f, 0xfc00},
        {INFINITY, 0x7c00},
        {-INFINITY, 0xfc00},
        {0x1p-14f, 0x0400},                   /* smallest normal */
        {0x1p-14f - 0x1p-26f, 0x0400},        /* rounds up into the normals */
        {0x1p-24f, 0x0001},                   /* smallest subnormal */
        {0x1p-25f, 0x0000},                   /* tie -> even 0 */
        {0x1.000002p-25f, 0x0001},            /* just above the tie */
        {0x3p-25f, 0x0002},                   /* 1.5 units -> even 2 */
        {0x5p-25f, 0x0002},                   /* 2.5 units -> even 2 */
        {1.0f + 0x1p-11f, 0x3c00},            /* tie -> even */
        {1.0f + 0x3p-11f, 0x3c02},            /* tie -> even (up) */
        {1.0f + 0x1p-11f + 0x1p-20f, 0x3c01}, /* above the tie */
        {0x1p-30f, 0x0000},                   /* underflow */
        {-0x1p-30f, 0x8000},
        {bits_f32(0x00000001), 0x0000}, /* float subnormal */
        {0.1f, 0x2e66},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint16_t h = kn_f32_to_fp16(cases[i].f);
        if (h != cases[i].h) {
            print_error("case %zu: %a -> 0x%04x, want 0x%04x\n", i, (double)cases[i].f, h,
                        cases[i].h);
            fail();
        }
    }
    assert_int_equal(kn_f32_to_fp16(NAN) & 0x7e00, 0x7e00);
}

/* Property check over random floats: the result is a nearest half, ties go
 * to the even one, and overflow goes to infinity. */
static void test_fp16_nearest_random(void **state)
{
    (void)state;
    rng_seed(7);
    for (int i = 0; i < 2000000; i++) {
        uint32_t u = (uint32_t)rng_next();
        /* mostly exponents near the half range */
        if (i % 2)
            u = (u & 0x807fffffu) | ((uint32_t)(100 + rng_next() % 45) << 23);
        float f = bits_f32(u);
        if (isnan(f))
            continue;
        uint16_t h = kn_f32_to_fp16(f);
        double v = (double)f, av = fabs(v);
        if (av >= 65520.0) {
            assert_int_equal(h & 0x7fff, 0x7c00);
            continue;
        }
        assert_int_equal(h >> 15, u >> 31);
        uint16_t mag = h & 0x7fff;
        double got = ref_half_value(mag);
        double err = fabs(av - got);
        if (mag > 0) {
            double below = fabs(av - ref_half_value((uint16_t)(mag - 1)));
            assert_true(err < below || (err == below && (mag & 1) == 0));
        }
        if (mag < 0x7bff) {
            double above = fabs(av - ref_half_value((uint16_t)(mag + 1)));
            assert_true(err < above || (err == above && (mag & 1) == 0));
        }
    }
}

#ifdef HAVE_X86
__attribute__((target("f16c"))) static uint16_t hw_f32_to_fp16(float f)
{
    return (uint16_t)_cvtss_sh(f, 0);
}

__attribute__((target("f16c"))) static float hw_fp16_to_f32(uint16_t h)
{
    return _cvtsh_ss(h);
}
#endif

static void test_fp16_vs_f16c(void **state)
{
    (void)state;
#ifdef HAVE_X86
    if (!__builtin_cpu_supports("f16c")) {
        printf("[ SKIPPED  ] no F16C on this CPU\n");
        return;
    }
    for (uint32_t h = 0; h < 65536; h++)
        assert_int_equal(f32_bits(kn_fp16_to_f32((uint16_t)h)),
                         f32_bits(hw_fp16_to_f32((uint16_t)h)));
    rng_seed(11);
    for (long i = 0; i < 8000000; i++) {
        uint32_t u = (uint32_t)rng_next();
        if (i % 2)
            u = (u & 0x807fffffu) | ((uint32_t)(96 + rng_next() % 50) << 23);
        float f = bits_f32(u);
        if (kn_f32_to_fp16(f) != hw_f32_to_fp16(f)) {
            print_error("0x%08x: 0x%04x != f16c 0x%04x\n", u, kn_f32_to_fp16(f), hw_f32_to_fp16(f));
            fail();
        }
    }
    /* every float exponent with a few mantissas, including NaN payloads */
    for (uint32_t e = 0; e < 256; e++)
        for (uint32_t m = 0; m < 4096; m++) {
            uint32_t u = (e << 23) | (m * 2047u % 0x800000u) | (m & 1 ? 0x80000000u : 0);
            float f = bits_f32(u);
            assert_int_equal(kn_f32_to_fp16(f), hw_f32_to_fp16(f));
        }
#else
    printf("[ SKIPPED  ] not x86\n");
#endif
}

/* ---- dot, axpy ---- */

static void test_dot_f32_order_and_accuracy(void **state)
{
    (void)state;
    const kn_ops *ops = kn_ops_get(KN_PATH_SCALAR);
    rng_seed(3);
    static const int ns[] = {0, 1, 5, 31, 32, 33, 64, 100, 257, 512, 1413};
    for (size_t k = 0; k < sizeof ns / sizeof ns[0]; k++) {
        int n = ns[k];
        float *a = malloc(sizeof(float) * (size_t)(n + 1)),
              *b = malloc(sizeof(float) * (size_t)(n + 1));
        fill_floats(a, (size_t)n);
        fill_floats(b, (size_t)n);
        float got = ops->dot_f32(a, b, n), want = ref_dot32(a, b, n);
        assert_int_equal(f32_bits(got), f32_bits(want));
        double abs_sum, d = ref_dot_double(a, b, n, &abs_sum);
        assert_true(fabs((double)got - d) <= 1e-5 * abs_sum + 1e-30);
        const kn_ops *simd = kn_ops_best();
        assert_int_equal(f32_bits(simd->dot_f32(a, b, n)), f32_bits(want));
        free(a);
        free(b);
    }
}

static void test_axpy(void **state)
{
    (void)state;
    rng_seed(5);
    float x[203], y0[203], y1[203], y2[203];
    fill_floats(x, 203);
    fill_floats(y0, 203);
    memcpy(y1, y0, sizeof y0);
    memcpy(y2, y0, sizeof y0);
    kn_ops_get(KN_PATH_SCALAR)->axpy(203, 0.37f, x, y1);
    for (int i = 0; i < 203; i++) {
        float p = 0.37f * x[i];
        y0[i] = y0[i] + p;
    }
    assert_bits_equal(y0, y1, 203);
    kn_ops_best()->axpy(203, 0.37f, x, y2);
    assert_bits_equal(y0, y2, 203);
}

/* ---- quantization ---- */

static void test_quantize_act_vs_reference(void **state)
{
    (void)state;
    rng_seed(13);
    enum { N = 32 * 64 };
    float x[N];
    kn_q8 want[N / 32], got[N / 32];
    fill_floats(x, N);
    for (int j = 0; j < 32; j++) { /* an all-zero block and a block of -0 */
        x[5 * 32 + j] = 0.0f;
        x[6 * 32 + j] = -0.0f;
    }
    /* ties: m = 127 makes id = 1, so x * id is exactly k + 0.5 */
    static const float tie_in[] = {127.0f, 0.5f, 1.5f, 2.5f, -0.5f, -1.5f, -2.5f, 126.5f, -126.5f};
    static const int8_t tie_q[] = {127, 0, 2, 2, 0, -2, -2, 126, -126};
    for (int j = 0; j < 32; j++)
        x[7 * 32 + j] = j < 9 ? tie_in[j] : 0.25f;
    ref_quantize_act(x, want, N);
    kn_ops_get(KN_PATH_SCALAR)->quantize_q8(x, got, N);
    assert_q8_equal(got, want, N / 32);
    for (int j = 0; j < 9; j++)
        assert_int_equal(got[7].qs[j], tie_q[j]);
    assert_int_equal(got[5].d, 0);
    assert_int_equal(got[6].d, 0);
    for (int j = 0; j < 32; j++)
        assert_int_equal(got[5].qs[j], 0);
    for (int b = 0; b < N / 32; b++) /* never -128 */
        for (int j = 0; j < 32; j++)
            assert_true(got[b].qs[j] >= -127);
    const kn_ops *simd = kn_ops_best();
    memset(got, 0x55, sizeof got);
    simd->quantize_q8(x, got, N);
    assert_q8_equal(got, want, N / 32);
}

/* Degenerate blocks: both paths agree bit for bit even where 127 / m
 * overflows or the input holds infinities and NaN. */
static void test_quantize_act_degenerate(void **state)
{
    (void)state;
    float x[32 * 6];
    for (int j = 0; j < 32; j++) {
        x[j] = j % 3 ? 1e-38f : 0.0f;                       /* 127 / m overflows */
        x[32 + j] = j == 3 ? INFINITY : 1.0f;               /* inf */
        x[64 + j] = j == 9 ? NAN : (float)j;                /* NaN */
        x[96 + j] = bits_f32(0x00000001u) * (float)(j % 2); /* float subnormals */
        x[128 + j] = j == 0 ? -1e30f : 1.0f;
        x[160 + j] = (float)(j - 16) * 1e20f;
    }
    kn_q8 a[6], b[6];
    kn_ops_get(KN_PATH_SCALAR)->quantize_q8(x, a, 32 * 6);
    for (int i = 0; i < 6; i++)
        for (int j = 0; j < 32; j++)
            assert_true(a[i].qs[j] >= -127 && a[i].qs[j] <= 127);
    assert_int_equal(a[0].d, 0);
    const kn_ops *simd = kn_ops_get(KN_PATH_AVX2);
    if (!simd) {
        printf("[ SKIPPED  ] no AVX2 path\n");
        return;
    }
    simd->quantize_q8(x, b, 32 * 6);
    assert_memory_equal(a, b, sizeof a);
    const kn_ops *v512 = kn_ops_get(KN_PATH_AVX512);
    if (v512) {
        v512->quantize_q8(x, b, 32 * 6);
        assert_memory_equal(a, b, sizeof a);
    }
}

static void test_quantize_weights_vs_reference(void **state)
{
    (void)state;
    rng_seed(17);
    enum { N = 32 * 40 };
    float x[N];
    kn_q8 want[N / 32], got[N / 32];
    fill_floats(x, N);
    for (int j = 0; j < 32; j++)
        x[32 + j] = 0.0f;
    /* m = 127 gives d = 1, id = 1: roundf takes halves away from zero */
    static const float tie_in[] = {127.0f, 0.5f, 1.5f, 2.5f, -0.5f, -2.5f, -127.0f};
    static const int8_t tie_q[] = {127, 1, 2, 3, -1, -3, -127};
    for (int j = 0; j < 32; j++)
        x[64 + j] = j < 7 ? tie_in[j] : 0.0f;
    ref_quantize_weights(x, want, N);
    kn_quantize_q8_weights(x, got, N);
    assert_q8_equal(got, want, N / 32);
    for (int j = 0; j < 7; j++)
        assert_int_equal(got[2].qs[j], tie_q[j]);
    assert_int_equal(got[1].d, 0);
    for (int j = 0; j < 32; j++)
        assert_int_equal(got[1].qs[j], 0);
}

static void test_row_to_f32(void **state)
{
    (void)state;
    rng_seed(19);
    float x[64], out[64];
    fill_floats(x, 64);
    kn_row_to_f32(KN_F32, x, out, 64);
    assert_memory_equal(x, out, sizeof x);
    uint16_t h[64];
    for (int i = 0; i < 64; i++)
        h[i] = kn_f32_to_fp16(x[i]);
    kn_row_to_f32(KN_F16, h, out, 64);
    for (int i = 0; i < 64; i++)
        assert_true((double)out[i] == ref_half_value(h[i]));
    kn_q8 q[2];
    kn_quantize_q8_weights(x, q, 64);
    kn_row_to_f32(KN_Q8_0, q, out, 64);
    for (int i = 0; i < 64; i++) {
        float want = kn_fp16_to_f32(q[i / 32].d) * (float)q[i / 32].qs[i % 32];
        assert_int_equal(f32_bits(out[i]), f32_bits(want));
        /* within half a quantization step (d = max / 127) plus fp16 rounding of d */
        assert_true(fabsf(out[i] - x[i]) <= kn_fp16_to_f32(q[i / 32].d) * 0.6f);
    }
}

/* ---- matmul ---- */

typedef struct mat {
    kn_weight w;
    void *data;
    float *wf; /* the weights as floats, for references */
} mat;

/* q8_mode: 0 random, 1 with -128 sprinkled in, 2 all -128 blocks and zero
 * blocks as well */
static void mat_make(mat *m, int type, int n_in, int n_out, int q8_mode)
{
    size_t row_bytes = type == KN_F32   ? (size_t)n_in * 4
                       : type == KN_F16 ? (size_t)n_in * 2
                                        : (size_t)n_in / 32 * sizeof(kn_q8);
    m->w = (kn_weight){
        .type = type, .n_in = n_in, .n_out = n_out, .row_bytes = row_bytes, .data = NULL};
    m->data = malloc(row_bytes * (size_t)n_out + 1);
    m->wf = malloc(sizeof(float) * (size_t)n_in * (size_t)n_out);
    for (int r = 0; r < n_out; r++) {
        char *row = (char *)m->data + (size_t)r * row_bytes;
        float *f = m->wf + (size_t)r * n_in;
        if (type == KN_F32) {
            fill_floats(f, (size_t)n_in);
            memcpy(row, f, row_bytes);
        } else if (type == KN_F16) {
            uint16_t *h = (uint16_t *)row;
            for (int i = 0; i < n_in; i++) {
                h[i] = kn_f32_to_fp16(rng_float());
                f[i] = kn_fp16_to_f32(h[i]);
            }
        } else {
            kn_q8 *q = (kn_q8 *)row;
            for (int b = 0; b < n_in / 32; b++) {
                q[b].d = kn_f32_to_fp16(rng_unit() * 0.05f);
                int kind = q8_mode == 2 ? (int)(rng_next() % 4) : 0;
                for (int j = 0; j < 32; j++) {
                    int v = (int)(rng_next() % 256) - 128;
                    if (q8_mode >= 1 && rng_next() % 4 == 0)
                        v = -128;
                    if (kind == 1)
                        v = -128;
                    else if (kind == 2)
                        v = 0;
                    else if (kind == 3)
                        v = j % 2 ? -128 : 127;
                    q[b].qs[j] = (int8_t)v;
                }
            }
            kn_row_to_f32(KN_Q8_0, q, f, n_in);
        }
    }
    m->w.data = m->data;
}

static void mat_free(mat *m)
{
    free(m->data);
    free(m->wf);
}

/* Input rows: floats (F32/F16 weights) or quantized blocks (Q8_0), at a
 * padded stride so that x_stride is exercised.  Some rows hold extremes: all
 * activations at +-max so that the quantized values hit +-127. */
typedef struct input {
    float *xf; /* n_tok x n_in floats, row stride n_in */
    void *x;   /* what matmul reads */
    size_t x_stride;
} input;

static void input_make(input *in, const kn_ops *ops, int type, int n_in, int n_tok)
{
    in->xf = malloc(sizeof(float) * (size_t)n_in * (size_t)n_tok + 1);
    fill_floats(in->xf, (size_t)n_in * (size_t)n_tok);
    for (int t = 0; t < n_tok; t += 3)
        for (int i = 0; i < n_in; i++)
            in->xf[(size_t)t * n_in + i] = i % 2 ? 3.0f : -3.0f;
    if (type == KN_Q8_0) {
        in->x_stride = (size_t)n_in / 32 * sizeof(kn_q8) + 34 * 3;
        in->x = calloc((size_t)n_tok, in->x_stride);
        for (int t = 0; t < n_tok; t++)
            ops->quantize_q8(in->xf + (size_t)t * n_in,
                             (kn_q8 *)((char *)in->x + (size_t)t * in->x_stride), n_in);
    } else {
        in->x_stride = (size_t)(n_in + 3) * sizeof(float);
        in->x = calloc((size_t)n_tok, in->x_stride);
        for (int t = 0; t < n_tok; t++)
            memcpy((char *)in->x + (size_t)t * in->x_stride, in->xf + (size_t)t * n_in,
                   sizeof(float) * (size_t)n_in);
    }
}

static void input_free(input *in)
{
    free(in->xf);
    free(in->x);
}

/* The documented order, element by element. */
static float ref_element(const mat *m, const input *in, int r, int t)
{
    const char *row = (const char *)m->data + (size_t)r * m->w.row_bytes;
    const char *xt = (const char *)in->x + (size_t)t * in->x_stride;
    if (m->w.type == KN_Q8_0)
        return ref_dot_q8((const kn_q8 *)row, (const kn_q8 *)xt, m->w.n_in / 32);
    return ref_dot32(m->wf + (size_t)r * m->w.n_in, (const float *)xt, m->w.n_in);
}

/* y through ops, in row ranges from kn_split(n_out, align, ., nth) and
 * tokens in groups of tok_group, into a y with stride y_stride (>= n_out,
 * prefilled with a marker). */
static float *run_matmul(const kn_ops *ops, const mat *m, const input *in, int n_tok, int nth,
                         int align, int tok_group, size_t y_stride)
{
    float *y = malloc(sizeof(float) * y_stride * (size_t)n_tok);
    for (size_t i = 0; i < y_stride * (size_t)n_tok; i++)
        y[i] = 12345.0f;
    for (int t = 0; t < n_tok; t += tok_group) {
        int nt = n_tok - t < tok_group ? n_tok - t : tok_group;
        for (int ith = 0; ith < nth; ith++) {
            int r0, r1;
            kn_split(m->w.n_out, align, ith, nth, &r0, &r1);
            if (r0 < r1)
                ops->matmul(&m->w, r0, r1, (const char *)in->x + (size_t)t * in->x_stride,
                            in->x_stride, nt, y + (size_t)t * y_stride, y_stride);
        }
    }
    return y;
}

static void check_against_reference(const mat *m, const input *in, int n_tok, const float *y,
                                    size_t y_stride)
{
    for (int t = 0; t < n_tok; t++) {
        for (int r = 0; r < m->w.n_out; r++) {
            float want = ref_element(m, in, r, t);
            float got = y[(size_t)t * y_stride + r];
            if (f32_bits(got) != f32_bits(want)) {
                print_error("type %d n_in %d row %d tok %d: %a != %a\n", m->w.type, m->w.n_in, r, t,
                            (double)got, (double)want);
                fail();
            }
            /* and close to the exact value of what was multiplied */
            double abs_sum, d;
            if (m->w.type == KN_Q8_0) {
                float xr[4096];
                kn_row_to_f32(KN_Q8_0, (const char *)in->x + (size_t)t * in->x_stride, xr,
                              m->w.n_in);
                d = ref_dot_double(m->wf + (size_t)r * m->w.n_in, xr, m->w.n_in, &abs_sum);
            } else {
                d = ref_dot_double(m->wf + (size_t)r * m->w.n_in, in->xf + (size_t)t * m->w.n_in,
                                   m->w.n_in, &abs_sum);
            }
            assert_true(fabs((double)got - d) <= 1e-5 * abs_sum + 1e-30);
        }
        for (size_t r = (size_t)m->w.n_out; r < y_stride; r++) /* untouched */
            assert_true(y[(size_t)t * y_stride + r] == 12345.0f);
    }
}

static void matmul_case(int type, int n_in, int n_out, int n_tok, int q8_mode)
{
    const kn_ops *scalar = kn_ops_get(KN_PATH_SCALAR);
    mat m;
    mat_make(&m, type, n_in, n_out, q8_mode);
    input in;
    input_make(&in, scalar, type, n_in, n_tok);
    size_t ys = (size_t)n_out + 5;
    float *y = run_matmul(scalar, &m, &in, n_tok, 1, 1, n_tok, ys);
    check_against_reference(&m, &in, n_tok, y, ys);
    for (int path = KN_PATH_AVX2; path <= KN_PATH_AVX512; path++) {
        const kn_ops *ops = kn_ops_get(path);
        if (!ops)
            continue;
        /* whole, split across threads at odd boundaries, tokens one by one
         * or in groups: the same bits every time */
        static const int splits[][3] = {{1, 1, 64}, {2, 1, 64}, {3, 4, 64}, {5, 1, 1},
                                        {7, 2, 3},  {4, 8, 2},  {13, 1, 5}};
        for (size_t s = 0; s < sizeof splits / sizeof splits[0]; s++) {
            float *y2 =
                run_matmul(ops, &m, &in, n_tok, splits[s][0], splits[s][1], splits[s][2], ys);
            assert_bits_equal(y2, y, ys * (size_t)n_tok);
            free(y2);
        }
    }
    free(y);
    input_free(&in);
    mat_free(&m);
}

static void test_matmul_f32(void **state)
{
    (void)state;
    rng_seed(23);
    static const int n_ins[] = {1, 7, 31, 32, 33, 100, 257, 517};
    static const int n_toks[] = {1, 2, 3, 5, 8, 16};
    for (size_t i = 0; i < sizeof n_ins / sizeof n_ins[0]; i++)
        for (size_t t = 0; t < sizeof n_toks / sizeof n_toks[0]; t++)
            matmul_case(KN_F32, n_ins[i], 13, n_toks[t], 0);
}

static void test_matmul_f16(void **state)
{
    (void)state;
    rng_seed(29);
    static const int n_ins[] = {1, 7, 31, 32, 33, 100, 257, 517};
    static const int n_toks[] = {1, 2, 3, 5, 8, 16};
    for (size_t i = 0; i < sizeof n_ins / sizeof n_ins[0]; i++)
        for (size_t t = 0; t < sizeof n_toks / sizeof n_toks[0]; t++)
            matmul_case(KN_F16, n_ins[i], 11, n_toks[t], 0);
}

static void test_matmul_q8(void **state)
{
    (void)state;
    rng_seed(31);
    static const int n_ins[] = {32, 64, 96, 512, 1408};
    static const int n_toks[] = {1, 2, 3, 4, 5, 8, 9, 16};
    static const int n_outs[] = {1, 3, 4, 5, 17};
    for (size_t i = 0; i < sizeof n_ins / sizeof n_ins[0]; i++)
        for (size_t t = 0; t < sizeof n_toks / sizeof n_toks[0]; t++)
            for (int mode = 0; mode < 3; mode++)
                matmul_case(KN_Q8_0, n_ins[i], n_outs[(i + t + (size_t)mode) % 5], n_toks[t], mode);
}

/* Weights of -128 against activations of +-127: the extreme products, where
 * a saturating int16 pair sum would show. */
static void test_matmul_q8_extremes(void **state)
{
    (void)state;
    kn_q8 w[4 * 2], x[3 * 2];
    for (int b = 0; b < 8; b++) {
        w[b].d = kn_f32_to_fp16(1.0f);
        for (int j = 0; j < 32; j++)
            w[b].qs[j] = (int8_t)(b / 2 == 0   ? -128
                                  : b / 2 == 1 ? (j % 2 ? -128 : 127)
                                  : b / 2 == 2 ? 0
                                               : -128 + j);
    }
    for (int b = 0; b < 6; b++) {
        x[b].d = kn_f32_to_fp16(1.0f);
        for (int j = 0; j < 32; j++)
            x[b].qs[j] = (int8_t)(b / 2 == 0 ? 127 : b / 2 == 1 ? -127 : (j % 2 ? 127 : -127));
    }
    kn_weight wt = {
        .type = KN_Q8_0, .n_in = 64, .n_out = 4, .row_bytes = 2 * sizeof(kn_q8), .data = w};
    float ys[3 * 4], yv[3 * 4];
    kn_ops_get(KN_PATH_SCALAR)->matmul(&wt, 0, 4, x, 2 * sizeof(kn_q8), 3, ys, 4);
    for (int t = 0; t < 3; t++)
        for (int r = 0; r < 4; r++) {
            long sum = 0;
            for (int i = 0; i < 64; i++)
                sum += (long)w[r * 2 + i / 32].qs[i % 32] * x[t * 2 + i / 32].qs[i % 32];
            assert_true((double)ys[t * 4 + r] == (double)sum);
        }
    assert_true(ys[0] == -128.0f * 127.0f * 64.0f);
    for (int path = KN_PATH_AVX2; path <= KN_PATH_AVX512; path++) {
        const kn_ops *ops = kn_ops_get(path);
        if (!ops)
            continue;
        ops->matmul(&wt, 0, 4, x, 2 * sizeof(kn_q8), 3, yv, 4);
        assert_bits_equal(yv, ys, 12);
    }
}

/* A matmul output depends only on its own input row: changing another
 * token's input leaves it alone. */
static void test_matmul_batch_independent(void **state)
{
    (void)state;
    rng_seed(37);
    const kn_ops *ops = kn_ops_best();
    mat m;
    mat_make(&m, KN_Q8_0, 512, 37, 1);
    input a, b;
    input_make(&a, ops, KN_Q8_0, 512, 8);
    input_make(&b, ops, KN_Q8_0, 512, 8);
    float y1[37], y8[8 * 37];
    memcpy((char *)b.x + 5 * b.x_stride, (char *)a.x + 5 * a.x_stride, a.x_stride);
    ops->matmul(&m.w, 0, 37, (char *)a.x + 5 * a.x_stride, a.x_stride, 1, y1, 37);
    ops->matmul(&m.w, 0, 37, b.x, b.x_stride, 8, y8, 37);
    assert_bits_equal(y1, y8 + 5 * 37, 37);
    input_free(&a);
    input_free(&b);
    mat_free(&m);
}

/* Weights and inputs in allocations of exactly their size, so that the
 * sanitizer build catches any read past a row or block. */
static void test_matmul_exact_buffers(void **state)
{
    (void)state;
    rng_seed(61);
    static const int types[] = {KN_F32, KN_F16, KN_Q8_0};
    for (size_t k = 0; k < 3; k++)
        for (int n_tok = 1; n_tok <= 5; n_tok += 4) {
            int type = types[k], n_in = type == KN_Q8_0 ? 96 : 45, n_out = 13;
            mat m;
            mat_make(&m, type, n_in, n_out, 1);
            size_t wbytes = m.w.row_bytes * (size_t)n_out;
            void *wexact = malloc(wbytes);
            memcpy(wexact, m.data, wbytes);
            m.w.data = wexact;
            size_t x_stride =
                type == KN_Q8_0 ? (size_t)n_in / 32 * sizeof(kn_q8) : (size_t)n_in * sizeof(float);
            float *xf = malloc(sizeof(float) * (size_t)n_in * (size_t)n_tok);
            fill_floats(xf, (size_t)n_in * (size_t)n_tok);
            void *x = malloc(x_stride * (size_t)n_tok);
            for (int t = 0; t < n_tok; t++) {
                if (type == KN_Q8_0)
                    kn_ops_get(KN_PATH_SCALAR)
                        ->quantize_q8(xf + (size_t)t * n_in,
                                      (kn_q8 *)((char *)x + (size_t)t * x_stride), n_in);
                else
                    memcpy((char *)x + (size_t)t * x_stride, xf + (size_t)t * n_in, x_stride);
            }
            float *want = malloc(sizeof(float) * (size_t)n_out * (size_t)n_tok);
            float *got = malloc(sizeof(float) * (size_t)n_out * (size_t)n_tok);
            kn_ops_get(KN_PATH_SCALAR)
                ->matmul(&m.w, 0, n_out, x, x_stride, n_tok, want, (size_t)n_out);
            for (int path = KN_PATH_AVX2; path <= KN_PATH_AVX512; path++) {
                const kn_ops *ops = kn_ops_get(path);
                if (!ops)
                    continue;
                ops->matmul(&m.w, 0, n_out, x, x_stride, n_tok, got, (size_t)n_out);
                assert_bits_equal(got, want, (size_t)n_out * (size_t)n_tok);
                if (type == KN_F32)
                    assert_int_equal(f32_bits(ops->dot_f32(xf, xf + 1, n_in - 1)),
                                     f32_bits(ref_dot32(xf, xf + 1, n_in - 1)));
            }
            free(want);
            free(got);
            free(x);
            free(xf);
            free(wexact);
            m.w.data = m.data;
            mat_free(&m);
        }
}

static void test_ops_table(void **state)
{
    (void)state;
    const kn_ops *s = kn_ops_get(KN_PATH_SCALAR);
    assert_non_null(s);
    assert_string_equal(s->name, "scalar");
    assert_null(kn_ops_get(99));
    assert_null(kn_ops_get(-1));
    const kn_ops *best = kn_ops_best();
    assert_non_null(best);
    for (int path = KN_PATH_AVX2; path <= KN_PATH_AVX512; path++)
        if (kn_ops_get(path))
            assert_true(best->path >= path);
    printf("best path: %s\n", best->name);
    if (!simd_ops(KN_PATH_AVX2))
        return;
}

/* ---- float helpers ---- */

static void test_rmsnorm(void **state)
{
    (void)state;
    rng_seed(41);
    enum { N = 515 };
    float x[N], w[N], out[N], want[N];
    fill_floats(x, N);
    fill_floats(w, N);
    double sum = 0.0, sumd = 0.0;
    for (int i = 0; i < N; i++) {
        float sq = x[i] * x[i];
        sum += (double)sq;
        sumd += (double)x[i] * x[i];
    }
    float mean = (float)(sum / N);
    float scale = 1.0f / sqrtf(mean + 1e-5f);
    for (int i = 0; i < N; i++) {
        float v = x[i] * scale;
        want[i] = v * w[i];
    }
    kn_rmsnorm(x, w, out, N, 1e-5f);
    assert_bits_equal(out, want, N);
    double sd = 1.0 / sqrt(sumd / N + 1e-5);
    for (int i = 0; i < N; i++)
        assert_true(fabs((double)out[i] - x[i] * sd * w[i]) <=
                    1e-5 * fabs(x[i] * sd * w[i]) + 1e-7);
    kn_rmsnorm(x, w, x, N, 1e-5f); /* in place */
    assert_bits_equal(x, want, N);
}

static void test_rope(void **state)
{
    (void)state;
    rng_seed(43);
    enum { HEADS = 3, HD = 16, ROT = 12 };
    float x[HEADS * HD], orig[HEADS * HD], want[HEADS * HD];
    fill_floats(x, HEADS * HD);
    memcpy(orig, x, sizeof x);
    int pos = 37;
    float base = 10000.0f;
    for (int h = 0; h < HEADS; h++) {
        float theta_scale = powf(base, -2.0f / ROT);
        float theta = (float)pos;
        for (int i = 0; i < HD; i += 2) {
            float *v = orig + h * HD + i;
            float *o = want + h * HD + i;
            if (i >= ROT) {
                o[0] = v[0];
                o[1] = v[1];
                continue;
            }
            float c = cosf(theta), s = sinf(theta);
            float a = v[0] * c, b = v[1] * s, e = v[0] * s, f = v[1] * c;
            o[0] = a - b;
            o[1] = e + f;
            theta *= theta_scale;
            /* and close to the exact rotation */
            double th = pos * pow(base, -(double)i / ROT);
            assert_true(fabs((double)o[0] - (v[0] * cos(th) - v[1] * sin(th))) < 1e-3);
        }
    }
    kn_rope(x, HEADS, HD, ROT, pos, base);
    assert_bits_equal(x, want, HEADS * HD);
    memcpy(x, orig, sizeof x);
    kn_rope(x, HEADS, HD, ROT, 0, base); /* position 0 is the identity */
    assert_bits_equal(x, orig, HEADS * HD);
}

static void test_softmax(void **state)
{
    (void)state;
    rng_seed(47);
    enum { N = 77 };
    float x[N], want[N];
    fill_floats(x, N);
    float scale = 0.125f;
    float max = -INFINITY;
    for (int i = 0; i < N; i++)
        if (x[i] * scale > max)
            max = x[i] * scale;
    double sum = 0.0;
    for (int i = 0; i < N; i++) {
        want[i] = expf(x[i] * scale - max);
        sum += want[i];
    }
    float inv = (float)(1.0 / sum);
    double total = 0.0;
    for (int i = 0; i < N; i++)
        want[i] = want[i] * inv;
    kn_softmax(x, N, scale);
    assert_bits_equal(x, want, N);
    for (int i = 0; i < N; i++)
        total += x[i];
    assert_true(fabs(total - 1.0) < 1e-5);
    float one[1] = {-3.0f};
    kn_softmax(one, 1, 1.0f);
    assert_true(one[0] == 1.0f);
    float big[3] = {1000.0f, 1000.0f, -INFINITY}; /* masked entry, no overflow */
    kn_softmax(big, 3, 1.0f);
    assert_true(big[0] == 0.5f && big[1] == 0.5f && big[2] == 0.0f);
}

static void test_swiglu(void **state)
{
    (void)state;
    rng_seed(53);
    enum { N = 99 };
    float g[N], u[N], out[N], want[N];
    fill_floats(g, N);
    fill_floats(u, N);
    for (int i = 0; i < N; i++) {
        float den = 1.0f + expf(-g[i]);
        float silu = g[i] / den;
        want[i] = silu * u[i];
        double ref = g[i] / (1.0 + exp(-(double)g[i])) * u[i];
        (void)ref;
        assert_true(fabs((double)want[i] - ref) <= 1e-5 * fabs(ref) + 1e-6);
    }
    kn_swiglu(g, u, out, N);
    assert_bits_equal(out, want, N);
    kn_swiglu(g, u, g, N); /* out aliases g */
    assert_bits_equal(g, want, N);
}

/* ---- kn_split ---- */

static void test_split(void **state)
{
    (void)state;
    static const int aligns[] = {0, 1, 4, 16, 32};
    for (int n = 0; n <= 130; n++)
        for (size_t a = 0; a < sizeof aligns / sizeof aligns[0]; a++)
            for (int nth = 1; nth <= 6; nth++) {
                int seen[131] = {0};
                int next = 0, align = aligns[a] < 1 ? 1 : aligns[a];
                for (int ith = 0; ith < nth; ith++) {
                    int r0, r1;
                    kn_split(n, aligns[a], ith, nth, &r0, &r1);
                    assert_true(r0 <= r1);
                    assert_int_equal(r0, next); /* contiguous, in order */
                    if (r0 < r1 && r0 % align != 0)
                        fail_msg("n %d align %d: range starts at %d", n, align, r0);
                    if (r1 < n && r1 % align != 0)
                        fail_msg("n %d align %d: range ends at %d", n, align, r1);
                    for (int r = r0; r < r1; r++)
                        seen[r]++;
                    next = r1;
                }
                assert_int_equal(next, n);
                for (int r = 0; r < n; r++)
                    assert_int_equal(seen[r], 1);
            }
}

/* ---- pool ---- */

typedef struct pool_job {
    _Atomic int counts[8];
    _Atomic int nth_bad;
    int want_nth;
} pool_job;

static void count_task(void *arg, int ith, int nth)
{
    pool_job *j = arg;
    if (nth != j->want_nth || ith < 0 || ith >= nth)
        atomic_fetch_add(&j->nth_bad, 1);
    else
        atomic_fetch_add(&j->counts[ith], 1);
}

static void test_pool_runs_each_ith_once(void **state)
{
    (void)state;
    for (int n = 1; n <= 4; n++) {
        kn_pool *p;
        assert_int_equal(kn_pool_new(n, &p), 0);
        assert_int_equal(kn_pool_threads(p), n);
        pool_job job;
        memset(&job, 0, sizeof job);
        job.want_nth = n;
        enum { REPS = 5000 };
        for (int r = 0; r < REPS; r++) {
            kn_pool_run(p, count_task, &job);
            /* every ith has run exactly once when run returns */
            for (int i = 0; i < n; i++)
                if (atomic_load(&job.counts[i]) != r + 1)
                    fail_msg("n %d rep %d: ith %d ran %d times", n, r, i,
                             atomic_load(&job.counts[i]));
        }
        assert_int_equal(atomic_load(&job.nth_bad), 0);
        kn_pool_free(p);
    }
    kn_pool *p;
    assert_int_not_equal(kn_pool_new(0, &p), 0);
    kn_pool_free(NULL);
}

/* Any number of tasks, more or fewer than threads: each ith exactly once
 * per run, with nth = n_tasks. */
typedef struct tasks_job {
    _Atomic int counts[64];
    _Atomic int bad;
    int n_tasks;
} tasks_job;

static void tasks_task(void *arg, int ith, int nth)
{
    tasks_job *j = arg;
    if (nth != j->n_tasks || ith < 0 || ith >= nth)
        atomic_fetch_add(&j->bad, 1);
    else
        atomic_fetch_add(&j->counts[ith], 1);
}

static void test_pool_run_tasks(void **state)
{
    (void)state;
    static const int n_tasks[] = {1, 2, 3, 8, 17, 64};
    for (int n = 1; n <= 3; n++) {
        kn_pool *p;
        assert_int_equal(kn_pool_new(n, &p), 0);
        for (size_t k = 0; k < sizeof n_tasks / sizeof n_tasks[0]; k++) {
            tasks_job job;
            memset(&job, 0, sizeof job);
            job.n_tasks = n_tasks[k];
            for (int r = 0; r < 500; r++) {
                kn_pool_run_tasks(p, tasks_task, &job, n_tasks[k]);
                for (int i = 0; i < n_tasks[k]; i++)
                    if (atomic_load(&job.counts[i]) != r + 1)
                        fail_msg("threads %d tasks %d rep %d: ith %d ran %d times", n, n_tasks[k],
                                 r, i, atomic_load(&job.counts[i]));
            }
            assert_int_equal(atomic_load(&job.bad), 0);
        }
        kn_pool_run_tasks(p, tasks_task, NULL, 0); /* nothing to do */
        kn_pool_free(p);
    }
}

/* A pool-split matmul gives the same bits as a single call. */
typedef struct mm_job {
    const kn_ops *ops;
    const kn_weight *w;
    const void *x;
    size_t x_stride;
    int n_tok;
    float *y;
} mm_job;

static void mm_task(void *arg, int ith, int nth)
{
    mm_job *j = arg;
    int r0, r1;
    kn_split(j->w->n_out, 4, ith, nth, &r0, &r1);
    if (r0 < r1)
        j->ops->matmul(j->w, r0, r1, j->x, j->x_stride, j->n_tok, j->y, (size_t)j->w->n_out);
}

static void test_pool_matmul(void **state)
{
    (void)state;
    rng_seed(59);
    const kn_ops *ops = kn_ops_best();
    mat m;
    mat_make(&m, KN_Q8_0, 256, 101, 1);
    input in;
    input_make(&in, ops, KN_Q8_0, 256, 3);
    float want[3 * 101], got[3 * 101];
    ops->matmul(&m.w, 0, 101, in.x, in.x_stride, 3, want, 101);
    for (int n = 1; n <= 3; n++) {
        kn_pool *p;
        assert_int_equal(kn_pool_new(n, &p), 0);
        mm_job j = {ops, &m.w, in.x, in.x_stride, 3, got};
        for (int rep = 0; rep < 50; rep++) {
            memset(got, 0, sizeof got);
            kn_pool_run(p, mm_task, &j);
            assert_bits_equal(got, want, 3 * 101);
            memset(got, 0, sizeof got);
            kn_pool_run_tasks(p, mm_task, &j, 7);
            assert_bits_equal(got, want, 3 * 101);
        }
        kn_pool_free(p);
    }
    input_free(&in);
    mat_free(&m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ops_table),
        cmocka_unit_test(test_fp16_exhaustive_roundtrip),
        cmocka_unit_test(test_fp16_rne_cases),
        cmocka_unit_test(test_fp16_nearest_random),
        cmocka_unit_test(test_fp16_vs_f16c),
        cmocka_unit_test(test_dot_f32_order_and_accuracy),
        cmocka_unit_test(test_axpy),
        cmocka_unit_test(test_quantize_act_vs_reference),
        cmocka_unit_test(test_quantize_act_degenerate),
        cmocka_unit_test(test_quantize_weights_vs_reference),
        cmocka_unit_test(test_row_to_f32),
        cmocka_unit_test(test_matmul_f32),
        cmocka_unit_test(test_matmul_f16),
        cmocka_unit_test(test_matmul_q8),
        cmocka_unit_test(test_matmul_q8_extremes),
        cmocka_unit_test(test_matmul_batch_independent),
        cmocka_unit_test(test_matmul_exact_buffers),
        cmocka_unit_test(test_rmsnorm),
        cmocka_unit_test(test_rope),
        cmocka_unit_test(test_softmax),
        cmocka_unit_test(test_swiglu),
        cmocka_unit_test(test_split),
        cmocka_unit_test(test_pool_runs_each_ith_once),
        cmocka_unit_test(test_pool_run_tasks),
        cmocka_unit_test(test_pool_matmul),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
