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
 * kn_quantize_q8 clamps activations to [-127, 127].  kernels_avx512.c
 * compiles this file again with KN_VNNI, where the sums come from vpdpbusd
 * with a bias that is exact for every int8 on both sides (see Q8_PAIR). */
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
            __m256 p =
                _mm256_mul_ps(_mm256_loadu_ps(w + i + 8 * k), _mm256_loadu_ps(x + i + 8 * k));
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

/* The exact integer lane sums of one block pair need some per-row and
 * per-token preparation that a tile shares:
 *   AVX2:  row: u = |w| (unsigned); pair: vpmaddubsw(u, sign(x, w)), then
 *          vpmaddwd with ones: lane l = sum over j = 4l..4l+3.
 *   VNNI:  row: u = w ^ 0x80 = w + 128 (unsigned, 0..255); token:
 *          c = -128 * (sum of the lane's 4 x); pair: vpdpbusd(c, u, x)
 *          = sum (w + 128) x - 128 sum x, exact in int32 for every int8 w
 *          and x, with no saturation anywhere. */
#ifdef KN_VNNI
#define Q8_ROW_PREP(wq) _mm256_xor_si256((wq), bias)
#define Q8_TOK_PREP(xq) _mm256_sub_epi32(zero, _mm256_dpbusd_epi32(zero, bias, (xq)))
#define Q8_PAIR(u, wq, xq, c) _mm256_dpbusd_epi32((c), (u), (xq))
#else
#define Q8_ROW_PREP(wq) _mm256_abs_epi8(wq)
#define Q8_TOK_PREP(xq) zero
#define Q8_PAIR(u, wq, xq, c)                                                                      \
    _mm256_madd_epi16(_mm256_maddubs_epi16((u), _mm256_sign_epi8((xq), (wq))), ones)
#endif

/* One tile of R weight rows times T input rows, every weight block loaded
 * and prepared once per tile: acc[r][t] = acc[r][t] + (float)I * s with
 * s = f32(w.d) * f32(x.d) per block, as in kernels.h.  The scales are
 * converted in the loop (vpbroadcastw + vcvtph2ps), once per row and once
 * per token per block.  Inlined with constant R and T (the unroll pragmas
 * make the loops over them disappear) so that the accumulators live in
 * registers. */
static inline __attribute__((always_inline)) void q8_tile(const kn_q8 *const *wr, int R,
                                                          const kn_q8 *const *xt, int T, int nb,
                                                          float *y, size_t y_stride, const char *pf,
                                                          int pf_lines)
{
    const __m256i zero = _mm256_setzero_si256();
    const __m256i ones = _mm256_set1_epi16(1);
    const __m256i bias = _mm256_set1_epi8((char)0x80);
    (void)ones;
    (void)bias;
    __m256 acc[8][4];
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
#pragma GCC unroll 4
        for (int t = 0; t < T; t++)
            acc[r][t] = _mm256_setzero_ps();
    }
    for (int b = 0; b < nb; b++) {
        /* spread the prefetch of the next tile's rows over this tile's blocks */
        for (int k = 0; k < pf_lines; k++)
            _mm_prefetch(pf + (size_t)(b * pf_lines + k) * 64, _MM_HINT_T0);
        __m256i xq[4], c[4];
        __m256 xd[4];
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) {
            xq[t] = _mm256_loadu_si256((const __m256i *)xt[t][b].qs);
            c[t] = Q8_TOK_PREP(xq[t]);
            xd[t] = _mm256_cvtph_ps(_mm_set1_epi16((short)xt[t][b].d));
        }
        (void)c; /* unused on AVX2 */
#pragma GCC unroll 8
        for (int r = 0; r < R; r++) {
            __m256i wq = _mm256_loadu_si256((const __m256i *)wr[r][b].qs);
            __m256i u = Q8_ROW_PREP(wq);
            __m256 wd = _mm256_cvtph_ps(_mm_set1_epi16((short)wr[r][b].d));
#pragma GCC unroll 4
            for (int t = 0; t < T; t++) {
                __m256 lanes = _mm256_cvtepi32_ps(Q8_PAIR(u, wq, xq[t], c[t]));
                __m256 p = _mm256_mul_ps(lanes, _mm256_mul_ps(wd, xd[t]));
                acc[r][t] = _mm256_add_ps(acc[r][t], p);
            }
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; r++) {
#pragma GCC unroll 4
        for (int t = 0; t < T; t++)
            y[(size_t)t * y_stride + (size_t)r] = reduce8(acc[r][t]);
    }
}

#define Q8_TILE_FN(R, T)                                                                           \
    static void q8_tile_##R##x##T(const kn_q8 *const *wr, const kn_q8 *const *xt, int nb,          \
                                  float *y, size_t y_stride, const char *pf, int pf_lines)         \
    {                                                                                              \
        q8_tile(wr, R, xt, T, nb, y, y_stride, pf, pf_lines);                                      \
    }
#define Q8_TILE_ROW(R) Q8_TILE_FN(R, 1) Q8_TILE_FN(R, 2) Q8_TILE_FN(R, 3) Q8_TILE_FN(R, 4)
Q8_TILE_ROW(1)
Q8_TILE_ROW(2)
Q8_TILE_ROW(4)
Q8_TILE_ROW(8)

typedef void (*q8_tile_fn)(const kn_q8 *const *wr, const kn_q8 *const *xt, int nb, float *y,
                           size_t y_stride, const char *pf, int pf_lines);

#define Q8_TILE_FNS(R)                                                                             \
    {                                                                                              \
        NULL, q8_tile_##R##x1, q8_tile_##R##x2, q8_tile_##R##x3, q8_tile_##R##x4                   \
    }
static const q8_tile_fn q8_tiles[9][5] = {
    [1] = Q8_TILE_FNS(1), [2] = Q8_TILE_FNS(2), [4] = Q8_TILE_FNS(4), [8] = Q8_TILE_FNS(8)};

/* Tile shapes (rows for one token, rows for several): the most
 * accumulators that fit the register file (16 ymm for AVX2, 32 with
 * AVX-512VL) with the per-tile values beside them. */
#ifdef KN_VNNI
#define Q8_ROWS_1 8
#define Q8_ROWS_T 4
#else
#define Q8_ROWS_1 8
#define Q8_ROWS_T 2
#endif

/* Row tiles outer, token tiles inner: a tile's weight rows are read from
 * memory once and stay in L1 for every token tile.  While the first token
 * tile of a row tile runs, the next row tile's bytes are prefetched (rows are
 * contiguous, so that is one address range): a decode step streams all the
 * weights, far more than the caches hold, and with the hardware prefetcher
 * alone the single-token matmul ran at a quarter of the memory bandwidth. */
static void matmul_q8(const kn_weight *w, int r0, int r1, const void *x, size_t x_stride, int n_tok,
                      float *y, size_t y_stride)
{
    const int nb = w->n_in / KN_QK;
    const char *base = w->data;
    const int R = n_tok == 1 ? Q8_ROWS_1 : Q8_ROWS_T;
    /* the first tile has no tile before it to prefetch it */
    size_t first = (size_t)(r1 - r0 < R ? r1 - r0 : R) * w->row_bytes;
    for (size_t o = 0; r0 < r1 && o < first; o += 64)
        _mm_prefetch(base + (size_t)r0 * w->row_bytes + o, _MM_HINT_T0);
    for (int r = r0; r < r1;) {
        int rr = R;
        while (rr > r1 - r)
            rr /= 2;
        const kn_q8 *wr[8];
        for (int k = 0; k < rr; k++)
            wr[k] = (const kn_q8 *)(base + (size_t)(r + k) * w->row_bytes);
        /* the next tile, clipped to r1 (one tile ahead measured best; two
         * or three ahead were slower for a single token) */
        int pr = r + rr;
        int next = pr >= r1 ? 0 : r1 - pr < rr ? r1 - pr : rr;
        const char *pf = base + (size_t)pr * w->row_bytes;
        int pf_lines =
            (int)((((size_t)next * w->row_bytes + 63) / 64 + (size_t)nb - 1) / (size_t)nb);
        for (int t = 0; t < n_tok;) {
            int T = n_tok - t >= 4 ? 4 : n_tok - t;
            const kn_q8 *xt[4];
            for (int k = 0; k < T; k++)
                xt[k] = (const kn_q8 *)((const char *)x + (size_t)(t + k) * x_stride);
            q8_tiles[rr][T](wr, xt, nb, y + (size_t)t * y_stride + (size_t)r, y_stride, pf,
                            t == 0 ? pf_lines : 0);
            t += T;
        }
        r += rr;
    }
}

static void matmul_avx2(const kn_weight *w, int r0, int r1, const void *x, size_t x_stride,
                        int n_tok, float *y, size_t y_stride)
{
    if (w->type == KN_Q8_0) {
        matmul_q8(w, r0, r1, x, x_stride, n_tok, y, y_stride);
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

/* Element i of an F32 or F16 row as 8 floats. */
static inline __m256 load_row8(int type, const void *row, size_t i)
{
    return type == KN_F16 ? load_f16((const uint16_t *)row + i)
                          : _mm256_loadu_ps((const float *)row + i);
}

static inline const void *row_at(int type, const void *base, size_t p, size_t stride)
{
    return type == KN_F16 ? (const void *)((const uint16_t *)base + p * stride)
                          : (const void *)((const float *)base + p * stride);
}

/* The 8-lane tree of reduce8 for four vectors at once: returns the four
 * sums, bit-identical to reduce8 on each (lane j + lane j+4, then lanes
 * 0+2 and 1+3, then 0+1). */
static inline void reduce8x4(__m256 s0, __m256 s1, __m256 s2, __m256 s3, float *out)
{
    __m256 t01 =
        _mm256_add_ps(_mm256_permute2f128_ps(s0, s1, 0x20), _mm256_permute2f128_ps(s0, s1, 0x31));
    __m256 t23 =
        _mm256_add_ps(_mm256_permute2f128_ps(s2, s3, 0x20), _mm256_permute2f128_ps(s2, s3, 0x31));
    t01 = _mm256_add_ps(t01, _mm256_permute_ps(t01, 0x4e)); /* lanes 2,3,0,1 */
    t23 = _mm256_add_ps(t23, _mm256_permute_ps(t23, 0x4e));
    t01 = _mm256_add_ps(t01, _mm256_permute_ps(t01, 0xb1)); /* lanes 1,0,3,2 */
    t23 = _mm256_add_ps(t23, _mm256_permute_ps(t23, 0xb1));
    float v[16];
    _mm256_storeu_ps(v, t01);
    _mm256_storeu_ps(v + 8, t23);
    out[0] = v[0];
    out[1] = v[4];
    out[2] = v[8];
    out[3] = v[12];
}

/* Four keys of n (% 32 == 0) elements against q: each key's 32 partials as
 * in dot_f32, then the tree, the last 8-lane step for the four together. */
#define DOT4_BODY(LOAD)                                                                            \
    __m256 a[4][4];                                                                                \
    _Pragma("GCC unroll 4") for (int r = 0; r < 4; r++)                                            \
        _Pragma("GCC unroll 4") for (int j = 0; j < 4; j++) a[r][j] = _mm256_setzero_ps();         \
    for (int i = 0; i < n; i += 32)                                                                \
        _Pragma("GCC unroll 4") for (int j = 0; j < 4; j++)                                        \
        {                                                                                          \
            __m256 qv = _mm256_loadu_ps(q + i + 8 * j);                                            \
            _Pragma("GCC unroll 4") for (int r = 0; r < 4; r++) a[r][j] =                          \
                _mm256_add_ps(a[r][j], _mm256_mul_ps(qv, LOAD(r, i + 8 * j)));                     \
        }                                                                                          \
    __m256 sum[4];                                                                                 \
    _Pragma("GCC unroll 4") for (int r = 0; r < 4; r++) sum[r] =                                   \
        _mm256_add_ps(_mm256_add_ps(a[r][0], a[r][2]), _mm256_add_ps(a[r][1], a[r][3]));           \
    reduce8x4(sum[0], sum[1], sum[2], sum[3], out);

static inline void dot4_f16(const float *q, const uint16_t *k, size_t stride, int n, float *out)
{
#define LOAD_F16(r, at) load_f16(k + (size_t)(r)*stride + (size_t)(at))
    DOT4_BODY(LOAD_F16)
#undef LOAD_F16
}

static inline void dot4_f32(const float *q, const float *k, size_t stride, int n, float *out)
{
#define LOAD_F32(r, at) _mm256_loadu_ps(k + (size_t)(r)*stride + (size_t)(at))
    DOT4_BODY(LOAD_F32)
#undef LOAD_F32
}

/* Four keys at a time (their dependency chains overlap and the last
 * reduction step is shared); n % 32 == 0 (the usual head sizes), otherwise
 * one dot per key. */
static void dot_rows_avx2(int type, const float *q, const void *k, size_t k_stride, int n,
                          int n_rows, float *out)
{
    int p = 0;
    if (n % 32 == 0) {
        for (; p + 4 <= n_rows; p += 4) {
            if (type == KN_F16)
                dot4_f16(q, (const uint16_t *)k + (size_t)p * k_stride, k_stride, n, out + p);
            else
                dot4_f32(q, (const float *)k + (size_t)p * k_stride, k_stride, n, out + p);
        }
    }
    for (; p < n_rows; p++) {
        const void *kp = row_at(type, k, (size_t)p, k_stride);
        out[p] = type == KN_F16 ? dot_f16_avx2(kp, q, n) : dot_f32_avx2(q, kp, n);
    }
}

/* y in chunks of up to 64 floats held in registers while every row is added
 * in order; n % 8 == 0, otherwise row by row. */
static void axpy_rows_avx2(int type, int n, const float *a, const void *x, size_t x_stride,
                           int n_rows, float *y)
{
    if (n % 8 != 0) {
        for (int p = 0; p < n_rows; p++) {
            const void *xp = row_at(type, x, (size_t)p, x_stride);
            if (type == KN_F16)
                for (int i = 0; i < n; i++)
                    y[i] = y[i] + a[p] * _cvtsh_ss(((const uint16_t *)xp)[i]);
            else
                axpy_avx2(n, a[p], xp, y);
        }
        return;
    }
    int i = 0;
    for (; i + 64 <= n; i += 64) { /* constant width: the sums stay in registers */
        __m256 acc[8];
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++)
            acc[j] = _mm256_loadu_ps(y + i + 8 * j);
        for (int p = 0; p < n_rows; p++) {
            __m256 va = _mm256_set1_ps(a[p]);
            const void *xp = row_at(type, x, (size_t)p, x_stride);
#pragma GCC unroll 8
            for (int j = 0; j < 8; j++)
                acc[j] = _mm256_add_ps(acc[j],
                                       _mm256_mul_ps(va, load_row8(type, xp, (size_t)(i + 8 * j))));
        }
#pragma GCC unroll 8
        for (int j = 0; j < 8; j++)
            _mm256_storeu_ps(y + i + 8 * j, acc[j]);
    }
    for (; i < n; i += 64) {
        int m = (n - i < 64 ? n - i : 64) / 8;
        __m256 acc[8];
        for (int j = 0; j < m; j++)
            acc[j] = _mm256_loadu_ps(y + i + 8 * j);
        for (int p = 0; p < n_rows; p++) {
            __m256 va = _mm256_set1_ps(a[p]);
            const void *xp = row_at(type, x, (size_t)p, x_stride);
            for (int j = 0; j < m; j++)
                acc[j] = _mm256_add_ps(acc[j],
                                       _mm256_mul_ps(va, load_row8(type, xp, (size_t)(i + 8 * j))));
        }
        for (int j = 0; j < m; j++)
            _mm256_storeu_ps(y + i + 8 * j, acc[j]);
    }
}

/* F16C conversions round to nearest even, as kn_f32_to_fp16 does (the unit
 * tests compare them over millions of values). */
static void to_f16_avx2(const float *x, uint16_t *out, int n)
{
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(out + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    for (; i < n; i++)
        out[i] = _cvtss_sh(x[i], _MM_FROUND_TO_NEAREST_INT);
}

static void round_f16_avx2(float *x, int n)
{
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(x + i, _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_loadu_ps(x + i),
                                                                _MM_FROUND_TO_NEAREST_INT)));
    for (; i < n; i++)
        x[i] = _cvtsh_ss(_cvtss_sh(x[i], _MM_FROUND_TO_NEAREST_INT));
}

/* Declared in kernels.c, which hands it out only when the CPU can run it. */
#ifdef KN_VNNI
extern const kn_ops kn_avx512_ops;
const kn_ops kn_avx512_ops = {
    .name = "avx512",
    .path = KN_PATH_AVX512,
#else
extern const kn_ops kn_avx2_ops;
const kn_ops kn_avx2_ops = {
    .name = "avx2",
    .path = KN_PATH_AVX2,
#endif
    .matmul = matmul_avx2,
    .dot_f32 = dot_f32_avx2,
    .quantize_q8 = quantize_q8_avx2,
    .axpy = axpy_avx2,
    .dot_rows = dot_rows_avx2,
    .axpy_rows = axpy_rows_avx2,
    .to_f16 = to_f16_avx2,
    .round_f16 = round_f16_avx2,
};
