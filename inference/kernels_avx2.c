/* kernels_avx2.c - the AVX2 path: the reduction orders of kernels.h on 256-bit
 * vectors, bit-identical to the scalar path in kernels.c.  Built with
 * -mavx2 -mfma -mf16c on this file only and chosen at run time; every float
 * product and sum is a separate vmulps / vaddps (the library is compiled with
 * -ffp-contract=off, so the compiler does not fuse them either).
 *
 * Q8_0 integer sums use the llama.cpp sign trick: u = |w| as unsigned bytes
 * (vpabsb maps -128 to 0x80 = 128, which is right when read unsigned) and
 * v = sign(x, w) = x * sign(w) as signed bytes; vpmaddubsw then adds
 * u0*v0 + u1*v1 into int16.  With u in [0, 128] and v in [-127, 127] a pair
 * sum lies in [-32512, 32512], so it never saturates and the lane sums are
 * exact for every weight byte, -128 included.  v can only be -128 when x is
 * -128 and w is negative (vpsignb cannot negate -128), and x never is:
 * kn_quantize_q8 clamps activations to [-127, 127]. */
#include "kernels.h"

#include <immintrin.h>
#include <string.h>

/* Tree k = 4, 2, 1 over the 8 lanes: a[j] + a[j+4], then + a[j+2], then
 * a[0] + a[1]; the same order as the scalar loop. */
static inline float reduce8(__m256 acc)
{
    __m128 v = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    v = _mm_add_ps(v, _mm_movehl_ps(v, v));
    v = _mm_add_ss(v, _mm_movehdup_ps(v));
    return _mm_cvtss_f32(v);
}

/* The 32-partial tree: p[j] + p[j+16] (acc0 + acc2, acc1 + acc3), then
 * p[j] + p[j+8] (acc0 + acc1), then the 8-lane tree. */
static inline float reduce32(__m256 a0, __m256 a1, __m256 a2, __m256 a3)
{
    a0 = _mm256_add_ps(a0, a2);
    a1 = _mm256_add_ps(a1, a3);
    return reduce8(_mm256_add_ps(a0, a1));
}

/* Lanes of a partial chunk of rem < 32 elements: chunk k, lane l is live when
 * 8k + l < rem.  Dead lanes load as +0.0 for both operands, so they add
 * +0 * +0 = +0 to their partial, which leaves it unchanged: a partial that
 * starts at +0 can never become -0 under round-to-nearest. */
static inline __m256i tail_mask(int rem, int k)
{
    __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(rem - 8 * k), idx);
}

static float dot_f32_avx2(const float *w, const float *x, int n)
{
    __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                   _mm256_setzero_ps()};
    int i = 0;
    for (; i + 32 <= n; i += 32)
        for (int k = 0; k < 4; k++) {
            __m256 p = _mm256_mul_ps(_mm256_loadu_ps(w + i + 8 * k), _mm256_loadu_ps(x + i + 8 * k));
            a[k] = _mm256_add_ps(a[k], p);
        }
    int rem = n - i;
    for (int k = 0; k < 4 && 8 * k < rem; k++) {
        __m256i m = tail_mask(rem, k);
        __m256 p = _mm256_mul_ps(_mm256_maskload_ps(w + i + 8 * k, m),
                                 _mm256_maskload_ps(x + i + 8 * k, m));
        a[k] = _mm256_add_ps(a[k], p);
    }
    return reduce32(a[0], a[1], a[2], a[3]);
}

static inline __m256 load_f16(const uint16_t *p)
{
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

static float dot_f16_avx2(const uint16_t *w, const float *x, int n)
{
    __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                   _mm256_setzero_ps()};
    int i = 0;
    for (; i + 32 <= n; i += 32)
        for (int k = 0; k < 4; k++) {
            __m256 p = _mm256_mul_ps(load_f16(w + i + 8 * k), _mm256_loadu_ps(x + i + 8 * k));
            a[k] = _mm256_add_ps(a[k], p);
        }
    int rem = n - i;
    if (rem > 0) {
        uint16_t buf[32] = {0};
        memcpy(buf, w + i, (size_t)rem * sizeof *buf);
        for (int k = 0; k < 4 && 8 * k < rem; k++) {
            __m256 p = _mm256_mul_ps(load_f16(buf + 8 * k),
                                     _mm256_maskload_ps(x + i + 8 * k, tail_mask(rem, k)));
            a[k] = _mm256_add_ps(a[k], p);
        }
    }
    return reduce32(a[0], a[1], a[2], a[3]);
}

/* ---- Q8_0 ---- */

/* Blocks per scale chunk: the per-pair scales of a tile are computed for
 * this many blocks at a time into a stack buffer. */
#define Q8_CHUNK 64

/* f32 of the fp16 scales of n blocks: gathered with scalar loads (cheap,
 * on the integer side), converted 8 at a time. */
static inline void q8_scales(const kn_q8 *q, int n, float *out)
{
    uint16_t h[Q8_CHUNK];
    for (int b = 0; b < n; b++)
        h[b] = q[b].d;
    for (int b = 0; b < n; b += 8)
        _mm256_storeu_ps(out + b, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + b))));
}

/* One tile of R weight rows times T input rows, every weight block loaded
 * (and made absolute) once per tile: acc[r][t] = acc[r][t] + I * s with
 * s = wd[r] * xd[t] per block, as in kernels.h.  The scales s are computed
 * ahead for a chunk of blocks, so the inner loop is pure integer dot plus
 * one convert, multiply and add per pair.  Inlined with constant R and T so
 * that the accumulators live in registers. */
static inline __attribute__((always_inline)) void
q8_tile(const kn_q8 *const *wr, int R, const kn_q8 *const *xt, int T, int nb, float *y,
        size_t y_stride)
{
    __m256 acc[4][4];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++)
            acc[r][t] = _mm256_setzero_ps();
    const __m256i ones = _mm256_set1_epi16(1);
    for (int b0 = 0; b0 < nb; b0 += Q8_CHUNK) {
        int n = nb - b0 < Q8_CHUNK ? nb - b0 : Q8_CHUNK;
        int n8 = (n + 7) & ~7;
        /* 8 spare floats so the 8-wide conversion may overrun n */
        float xd[4][Q8_CHUNK + 8], wd[Q8_CHUNK + 8], s[4][4][Q8_CHUNK];
        for (int t = 0; t < T; t++)
            q8_scales(xt[t] + b0, n, xd[t]);
        for (int r = 0; r < R; r++) {
            q8_scales(wr[r] + b0, n, wd);
            for (int t = 0; t < T; t++)
                for (int b = 0; b < n8; b += 8)
                    _mm256_storeu_ps(&s[r][t][b], _mm256_mul_ps(_mm256_loadu_ps(wd + b),
                                                                _mm256_loadu_ps(xd[t] + b)));
        }
        for (int b = 0; b < n; b++) {
            __m256i xq[4];
            for (int t = 0; t < T; t++)
                xq[t] = _mm256_loadu_si256((const __m256i *)xt[t][b0 + b].qs);
            for (int r = 0; r < R; r++) {
                __m256i wq = _mm256_loadu_si256((const __m256i *)wr[r][b0 + b].qs);
                __m256i aw = _mm256_abs_epi8(wq);
                for (int t = 0; t < T; t++) {
                    __m256i p16 = _mm256_maddubs_epi16(aw, _mm256_sign_epi8(xq[t], wq));
                    __m256 lanes = _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, ones));
                    __m256 p = _mm256_mul_ps(lanes, _mm256_broadcast_ss(&s[r][t][b]));
                    acc[r][t] = _mm256_add_ps(acc[r][t], p);
                }
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++)
            y[(size_t)t * y_stride + (size_t)r] = reduce8(acc[r][t]);
}

#define Q8_TILE_FN(R, T)                                                                           \
    static void q8_tile_##R##x##T(const kn_q8 *const *wr, const kn_q8 *const *xt, int nb,       \
                                  float *y, size_t y_stride)                                       \
    {                                                                                              \
        q8_tile(wr, R, xt, T, nb, y, y_stride);                                                    \
    }

Q8_TILE_FN(1, 1)
Q8_TILE_FN(1, 2)
Q8_TILE_FN(1, 3)
Q8_TILE_FN(1, 4)
Q8_TILE_FN(2, 1)
Q8_TILE_FN(2, 2)
Q8_TILE_FN(2, 3)
Q8_TILE_FN(2, 4)
Q8_TILE_FN(4, 1)

typedef void (*q8_tile_fn)(const kn_q8 *const *wr, const kn_q8 *const *xt, int nb, float *y,
                           size_t y_stride);

/* Tile shapes: 4 rows for a single token (independent accumulators for
 * ILP); 2 rows x up to 4 tokens otherwise (8 accumulators, each weight block
 * loaded and made absolute once for 4 tokens). */
static void matmul_q8_avx2(const kn_weight *w, int r0, int r1, const void *x, size_t x_stride,
                           int n_tok, float *y, size_t y_stride)
{
    static const q8_tile_fn tiles[3][5] = {
        {NULL, q8_tile_1x1, q8_tile_1x2, q8_tile_1x3, q8_tile_1x4},
        {NULL, q8_tile_2x1, q8_tile_2x2, q8_tile_2x3, q8_tile_2x4},
        {NULL, q8_tile_4x1, NULL, NULL, NULL},
    };
    const int nb = w->n_in / KN_QK;
    const char *base = w->data;
    for (int t = 0; t < n_tok;) {
        int T = n_tok - t >= 4 ? 4 : n_tok - t;
        int R = T == 1 ? 4 : 2;
        const kn_q8 *xt[4];
        for (int k = 0; k < T; k++)
            xt[k] = (const kn_q8 *)((const char *)x + (size_t)(t + k) * x_stride);
        for (int r = r0; r < r1;) {
            int rr = r1 - r >= R ? R : 1;
            const kn_q8 *wr[4];
            for (int k = 0; k < rr; k++)
                wr[k] = (const kn_q8 *)(base + (size_t)(r + k) * w->row_bytes);
            tiles[rr == 4 ? 2 : rr - 1][T](wr, xt, nb, y + (size_t)t * y_stride + (size_t)r,
                                           y_stride);
            r += rr;
        }
        t += T;
    }
}

static void matmul_avx2(const kn_weight *w, int r0, int r1, const void *x, size_t x_stride,
                        int n_tok, float *y, size_t y_stride)
{
    if (w->type == KN_Q8_0) {
        matmul_q8_avx2(w, r0, r1, x, x_stride, n_tok, y, y_stride);
        return;
    }
    const char *base = w->data;
    for (int t = 0; t < n_tok; t++) {
        const float *xt = (const float *)((const char *)x + (size_t)t * x_stride);
        float *yt = y + (size_t)t * y_stride;
        for (int r = r0; r < r1; r++) {
            const void *row = base + (size_t)r * w->row_bytes;
            if (w->type == KN_F32)
                yt[r] = dot_f32_avx2(row, xt, w->n_in);
            else if (w->type == KN_F16)
                yt[r] = dot_f16_avx2(row, xt, w->n_in);
            else
                yt[r] = 0.0f;
        }
    }
}

/* Activation quantization in the order kernels.c mirrors: lane maxima over
 * the block's 4 vectors, the max tree, then clamp and round to nearest
 * even. */
static void quantize_q8_avx2(const float *x, kn_q8 *out, int n)
{
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256 lo = _mm256_set1_ps(-127.0f), hi = _mm256_set1_ps(127.0f);
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int b = 0; b < n / KN_QK; b++) {
        const float *xb = x + b * KN_QK;
        __m256 v[4];
        for (int k = 0; k < 4; k++)
            v[k] = _mm256_loadu_ps(xb + 8 * k);
        __m256 m8 = _mm256_andnot_ps(sign, v[0]);
        for (int k = 1; k < 4; k++)
            m8 = _mm256_max_ps(m8, _mm256_andnot_ps(sign, v[k]));
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m8), _mm256_extractf128_ps(m8, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        float m = _mm_cvtss_f32(m4);
        float d = m / 127.0f;
        float id = m != 0.0f ? 127.0f / m : 0.0f;
        out[b].d = kn_f32_to_fp16(d);
        __m256 vid = _mm256_set1_ps(id);
        __m256i q[4];
        for (int k = 0; k < 4; k++) {
            __m256 s = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(v[k], vid), lo), hi);
            s = _mm256_round_ps(s, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
            q[k] = _mm256_cvtps_epi32(s);
        }
        /* packs work within 128-bit halves; the permute restores the order */
        __m256i q01 = _mm256_packs_epi32(q[0], q[1]);
        __m256i q23 = _mm256_packs_epi32(q[2], q[3]);
        __m256i q8 = _mm256_permutevar8x32_epi32(_mm256_packs_epi16(q01, q23), perm);
        _mm256_storeu_si256((__m256i *)out[b].qs, q8);
    }
}

static void axpy_avx2(int n, float a, const float *x, float *y)
{
    __m256 va = _mm256_set1_ps(a);
    int i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 p = _mm256_mul_ps(va, _mm256_loadu_ps(x + i));
        _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(y + i), p));
    }
    for (; i < n; i++)
        y[i] = y[i] + a * x[i];
}

/* Declared in kernels.c, which hands it out only when the CPU has AVX2, FMA
 * and F16C. */
extern const kn_ops kn_avx2_ops;
const kn_ops kn_avx2_ops = {
    .name = "avx2",
    .path = KN_PATH_AVX2,
    .matmul = matmul_avx2,
    .dot_f32 = dot_f32_avx2,
    .quantize_q8 = quantize_q8_avx2,
    .axpy = axpy_avx2,
};
