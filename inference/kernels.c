/* kernels.c - the scalar kernels (the reference for every reduction order in
 * kernels.h), fp16 conversions, the shared float helpers and the run-time
 * choice between the scalar and SIMD paths. */
#include "kernels.h"

#include <math.h>
#include <string.h>

/* The SIMD paths live in their own files, compiled with their own -m flags;
 * CMake defines these when it builds them. */
#ifdef KN_HAVE_AVX2
extern const kn_ops kn_avx2_ops;
#endif
#ifdef KN_HAVE_AVX512
extern const kn_ops kn_avx512_ops;
#endif

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

/* NaNs come out quiet with the payload kept, as vcvtph2ps does, so both
 * paths agree even on a NaN scale. */
static inline float half_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    if (exp == 0) {
        /* zero or subnormal: mant * 2^-24 is exact in binary32 */
        float v = (float)mant * 0x1p-24f;
        return sign ? -v : v;
    }
    if (exp == 31)
        return bits_f32(sign | 0x7f800000u | (mant ? 0x400000u | (mant << 13) : 0));
    return bits_f32(sign | ((exp + 112) << 23) | (mant << 13));
}

float kn_fp16_to_f32(uint16_t h)
{
    return half_to_f32(h);
}

/* Integer-only, so it does not depend on the FPU's rounding mode or
 * flush-to-zero settings; matches vcvtps2ph with imm 0 bit for bit
 * (NaN: quiet, payload truncated to the top 9 bits). */
uint16_t kn_f32_to_fp16(float f)
{
    uint32_t x = f32_bits(f);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t a = x & 0x7fffffffu;
    if (a > 0x7f800000u)
        return (uint16_t)(sign | 0x7e00 | ((a >> 13) & 0x3ff));
    if (a >= 0x477ff000u) /* >= 65520 rounds to infinity (and inf stays inf) */
        return (uint16_t)(sign | 0x7c00);
    if (a >= 0x38800000u) { /* normal half: rebias exponent, round 13 bits */
        uint32_t r = a - 0x38000000u;
        r += 0xfffu + ((r >> 13) & 1);
        return (uint16_t)(sign | (r >> 13));
    }
    if (a <= 0x33000000u) /* <= 2^-25: the tie at 2^-25 goes to even (0) */
        return sign;
    /* subnormal half: value / 2^-24 = m >> shift, rounded to nearest even */
    uint32_t e = a >> 23;
    uint32_t m = (a & 0x7fffffu) | 0x800000u;
    uint32_t shift = 126 - e; /* 14 .. 24 */
    uint32_t q = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1)))
        q++;
    return (uint16_t)(sign | q);
}

/* ---- the scalar path ---- */

/* The loops run over whole 32-element chunks, so that p[j] is lane j of
 * every chunk: the same order as p[i % 32], written so that the compiler
 * can keep p in vector registers (the lanes are independent sums, so
 * vectorizing them reorders nothing). */
static float tree32(float *p)
{
    for (int k = 16; k >= 1; k /= 2)
        for (int j = 0; j < k; j++)
            p[j] = p[j] + p[j + k];
    return p[0];
}

static float dot_f32_scalar(const float *w, const float *x, int n)
{
    float p[32] = {0};
    int i = 0;
    for (; i + 32 <= n; i += 32)
        for (int j = 0; j < 32; j++)
            p[j] = p[j] + w[i + j] * x[i + j];
    for (int j = 0; i + j < n; j++)
        p[j] = p[j] + w[i + j] * x[i + j];
    return tree32(p);
}

static float dot_f16_scalar(const uint16_t *w, const float *x, int n)
{
    float p[32] = {0};
    int i = 0;
    for (; i + 32 <= n; i += 32)
        for (int j = 0; j < 32; j++)
            p[j] = p[j] + half_to_f32(w[i + j]) * x[i + j];
    for (int j = 0; i + j < n; j++)
        p[j] = p[j] + half_to_f32(w[i + j]) * x[i + j];
    return tree32(p);
}

static float dot_q8_scalar(const kn_q8 *w, const kn_q8 *x, int nb)
{
    float a[8] = {0};
    for (int b = 0; b < nb; b++) {
        float s = half_to_f32(w[b].d) * half_to_f32(x[b].d);
        const int8_t *wq = w[b].qs, *xq = x[b].qs;
        int32_t sum[8];
        for (int l = 0; l < 8; l++)
            sum[l] = wq[4 * l] * xq[4 * l] + wq[4 * l + 1] * xq[4 * l + 1] +
                     wq[4 * l + 2] * xq[4 * l + 2] + wq[4 * l + 3] * xq[4 * l + 3];
        for (int l = 0; l < 8; l++)
            a[l] = a[l] + (float)sum[l] * s;
    }
    for (int k = 4; k >= 1; k /= 2)
        for (int j = 0; j < k; j++)
            a[j] = a[j] + a[j + k];
    return a[0];
}

static void matmul_scalar(const kn_weight *w, int r0, int r1, const void *x, size_t x_stride,
                          int n_tok, float *y, size_t y_stride)
{
    const char *base = w->data;
    for (int t = 0; t < n_tok; t++) {
        const void *xt = (const char *)x + (size_t)t * x_stride;
        float *yt = y + (size_t)t * y_stride;
        for (int r = r0; r < r1; r++) {
            const void *row = base + (size_t)r * w->row_bytes;
            switch (w->type) {
            case KN_F32:
                yt[r] = dot_f32_scalar(row, xt, w->n_in);
                break;
            case KN_F16:
                yt[r] = dot_f16_scalar(row, xt, w->n_in);
                break;
            case KN_Q8_0:
                yt[r] = dot_q8_scalar(row, xt, w->n_in / KN_QK);
                break;
            default:
                yt[r] = 0.0f;
                break;
            }
        }
    }
}

/* Branch-free maximum with MAXPS semantics (a > b ? a : b: a NaN in a loses,
 * a NaN in b wins), so the scalar order below mirrors the AVX2 one exactly
 * even for NaN input. */
static float maxps(float a, float b)
{
    return a > b ? a : b;
}

static float minps(float a, float b)
{
    return a < b ? a : b;
}

/* Round to nearest even for |v| <= 2^22 in the default rounding mode: adding
 * 1.5 * 2^23 pushes the fraction out of the mantissa.  (-ffp-contract=off and
 * no -ffast-math keep the compiler from folding it away.) */
static float round_even(float v)
{
    return (v + 12582912.0f) - 12582912.0f;
}

/* Activation quantization.  The maximum is taken in the AVX2 path's order
 * (8 lanes over the block's 4 vectors, then a tree) and x * id is clamped to
 * [-127, 127] before rounding.  The clamp changes nothing for finite input
 * (|x * id| <= 127 * (1 + 2^-23)^2 rounds to at most 127) but defines the
 * result when 127 / m overflows (m < ~3.7e-37, where d is 0 in fp16 anyway)
 * or x holds NaN, and it keeps -128 out of the activations, which the AVX2
 * dot product relies on (see kernels_avx2.c). */
static void quantize_q8_scalar(const float *x, kn_q8 *out, int n)
{
    for (int b = 0; b < n / KN_QK; b++) {
        const float *xb = x + b * KN_QK;
        float lm[8];
        for (int l = 0; l < 8; l++)
            lm[l] = fabsf(xb[l]);
        for (int v = 1; v < 4; v++)
            for (int l = 0; l < 8; l++)
                lm[l] = maxps(lm[l], fabsf(xb[8 * v + l]));
        for (int k = 4; k >= 1; k /= 2)
            for (int j = 0; j < k; j++)
                lm[j] = maxps(lm[j], lm[j + k]);
        float m = lm[0];
        float d = m / 127.0f;
        float id = m != 0.0f ? 127.0f / m : 0.0f;
        out[b].d = kn_f32_to_fp16(d);
        for (int j = 0; j < KN_QK; j++) {
            float v = minps(maxps(xb[j] * id, -127.0f), 127.0f);
            out[b].qs[j] = (int8_t)(int)round_even(v);
        }
    }
}

static void axpy_scalar(int n, float a, const float *x, float *y)
{
    for (int i = 0; i < n; i++)
        y[i] = y[i] + a * x[i];
}

static void dot_rows_scalar(int type, const float *q, const void *k, size_t k_stride, int n,
                            int n_rows, float *out)
{
    for (int p = 0; p < n_rows; p++)
        out[p] = type == KN_F16 ? dot_f16_scalar((const uint16_t *)k + (size_t)p * k_stride, q, n)
                                : dot_f32_scalar(q, (const float *)k + (size_t)p * k_stride, n);
}

static void axpy_rows_scalar(int type, int n, const float *a, const void *x, size_t x_stride,
                             int n_rows, float *y)
{
    for (int p = 0; p < n_rows; p++) {
        if (type == KN_F16) {
            const uint16_t *xp = (const uint16_t *)x + (size_t)p * x_stride;
            for (int i = 0; i < n; i++)
                y[i] = y[i] + a[p] * half_to_f32(xp[i]);
        } else {
            axpy_scalar(n, a[p], (const float *)x + (size_t)p * x_stride, y);
        }
    }
}

static void to_f16_scalar(const float *x, uint16_t *out, int n)
{
    for (int i = 0; i < n; i++)
        out[i] = kn_f32_to_fp16(x[i]);
}

static void round_f16_scalar(float *x, int n)
{
    for (int i = 0; i < n; i++)
        x[i] = kn_fp16_to_f32(kn_f32_to_fp16(x[i]));
}

static const kn_ops scalar_ops = {
    .name = "scalar",
    .path = KN_PATH_SCALAR,
    .matmul = matmul_scalar,
    .dot_f32 = dot_f32_scalar,
    .quantize_q8 = quantize_q8_scalar,
    .axpy = axpy_scalar,
    .dot_rows = dot_rows_scalar,
    .axpy_rows = axpy_rows_scalar,
    .to_f16 = to_f16_scalar,
    .round_f16 = round_f16_scalar,
};

/* ---- dispatch ---- */

#if defined(__x86_64__) || defined(__i386__)
static int cpu_has_avx2(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("f16c");
}
#endif

#ifdef KN_HAVE_AVX512
static int cpu_has_avx512vnni(void)
{
    return cpu_has_avx2() && __builtin_cpu_supports("avx512f") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vnni");
}
#endif

const kn_ops *kn_ops_get(int path)
{
    switch (path) {
    case KN_PATH_SCALAR:
        return &scalar_ops;
#ifdef KN_HAVE_AVX2
    case KN_PATH_AVX2:
        return cpu_has_avx2() ? &kn_avx2_ops : NULL;
#endif
#ifdef KN_HAVE_AVX512
    case KN_PATH_AVX512:
        return cpu_has_avx512vnni() ? &kn_avx512_ops : NULL;
#endif
    default:
        return NULL;
    }
}

const kn_ops *kn_ops_best(void)
{
    for (int path = KN_PATH_AVX512; path > KN_PATH_SCALAR; path--) {
        const kn_ops *ops = kn_ops_get(path);
        if (ops)
            return ops;
    }
    return &scalar_ops;
}

/* ---- weight quantization and expansion ---- */

void kn_quantize_q8_weights(const float *x, kn_q8 *out, int n)
{
    for (int b = 0; b < n / KN_QK; b++) {
        const float *xb = x + b * KN_QK;
        float amax = 0.0f;
        for (int j = 0; j < KN_QK; j++) {
            float v = fabsf(xb[j]);
            amax = amax > v ? amax : v;
        }
        float d = amax / 127.0f;
        float id = d != 0.0f ? 1.0f / d : 0.0f;
        out[b].d = kn_f32_to_fp16(d);
        for (int j = 0; j < KN_QK; j++)
            out[b].qs[j] = (int8_t)roundf(xb[j] * id);
    }
}

void kn_row_to_f32(int type, const void *row, float *out, int n)
{
    switch (type) {
    case KN_F32:
        memcpy(out, row, (size_t)n * sizeof *out);
        break;
    case KN_F16: {
        const uint16_t *h = row;
        for (int i = 0; i < n; i++)
            out[i] = half_to_f32(h[i]);
        break;
    }
    case KN_Q8_0: {
        const kn_q8 *q = row;
        for (int b = 0; b < n / KN_QK; b++) {
            float d = half_to_f32(q[b].d);
            for (int j = 0; j < KN_QK; j++)
                out[b * KN_QK + j] = d * (float)q[b].qs[j];
        }
        break;
    }
    default:
        memset(out, 0, (size_t)n * sizeof *out);
        break;
    }
}

/* ---- float helpers shared by both paths ---- */

void kn_rmsnorm(const float *x, const float *w, float *out, int n, float eps)
{
    double sum = 0.0;
    for (int i = 0; i < n; i++)
        sum += (double)(x[i] * x[i]);
    float mean = (float)(sum / n);
    float scale = 1.0f / sqrtf(mean + eps);
    for (int i = 0; i < n; i++)
        out[i] = (x[i] * scale) * w[i];
}

/* The angle of pair i is the same in every head, so each (cos, sin) is
 * computed once and applied to all heads. */
void kn_rope(float *x, int n_heads, int head_dim, int n_rot, int pos, float freq_base)
{
    float theta_scale = powf(freq_base, -2.0f / (float)n_rot);
    float theta = (float)pos;
    for (int i = 0; i + 1 < n_rot; i += 2) {
        float c = cosf(theta), s = sinf(theta);
        for (int h = 0; h < n_heads; h++) {
            float *v = x + (size_t)h * head_dim + i;
            float x0 = v[0], x1 = v[1];
            v[0] = x0 * c - x1 * s;
            v[1] = x0 * s + x1 * c;
        }
        theta *= theta_scale;
    }
}

void kn_softmax(float *x, int n, float scale)
{
    float max = -INFINITY;
    for (int i = 0; i < n; i++) {
        float v = x[i] * scale;
        max = v > max ? v : max;
    }
    double sum = 0.0;
    for (int i = 0; i < n; i++) {
        float e = expf(x[i] * scale - max);
        x[i] = e;
        sum += (double)e;
    }
    float inv = (float)(1.0 / sum);
    for (int i = 0; i < n; i++)
        x[i] = x[i] * inv;
}

void kn_swiglu(const float *g, const float *u, float *out, int n)
{
    for (int i = 0; i < n; i++) {
        float v = g[i];
        float silu = v / (1.0f + expf(-v));
        out[i] = silu * u[i];
    }
}

void kn_split(int n, int align, int ith, int nth, int *r0, int *r1)
{
    if (align < 1)
        align = 1;
    if (nth < 1)
        nth = 1;
    long units = ((long)n + align - 1) / align;
    long u0 = units * ith / nth, u1 = units * (ith + 1) / nth;
    long a = u0 * align, b = u1 * align;
    *r0 = (int)(a < n ? a : n);
    *r1 = (int)(b < n ? b : n);
}
