/* kernels.h - the numeric kernels of the llama forward pass, with one fixed
 * reduction order each so that results are bit-for-bit reproducible.
 *
 * Determinism contract.  Every kernel below defines exactly which float
 * operations happen in which order; the scalar path and the SIMD paths
 * (AVX2 when the CPU has AVX2+FMA+F16C; AVX-512 VNNI, whose only change is
 * how the exact integer sums are formed; the fastest is chosen at run time)
 * perform the same operations in the same order, so they return identical
 * bits.  The library
 * is compiled with -ffp-contract=off and the SIMD path uses separate multiply
 * and add (never a fused multiply-add), so neither the compiler nor the path
 * can change a rounding.  A matmul output element depends only on its weight
 * row and its own input row: never on how rows are split across threads, on
 * how many input rows (tokens, sequences) are processed together, or on what
 * the other rows hold.  That is what makes the logits of a sequence
 * independent of thread count, batch composition and CPU path.
 *
 * Reduction orders (n = the reduced length):
 *   F32/F16 dot:  32 partial sums p[0..31] = 0; for i in 0..n-1 in order:
 *                 p[i % 32] = p[i % 32] + w[i] * x[i]  (product rounded, then
 *                 the sum); F16 weights are first converted to float (exact).
 *                 Then the tree: for k = 16, 8, 4, 2, 1: for j < k:
 *                 p[j] = p[j] + p[j + k].  The result is p[0].
 *   Q8_0 dot:     the input row is quantized to Q8_0 blocks first
 *                 (kn_quantize_q8).  8 lane sums a[0..7] = 0; for each block b
 *                 in order: s = f32(w.d) * f32(x.d); for lane l:
 *                 a[l] = a[l] + (float)I(b, l) * s, where I(b, l) is the exact
 *                 integer sum of w.qs[j] * x.qs[j] over j = 4l .. 4l+3.  Then
 *                 the tree: for k = 4, 2, 1: for j < k: a[j] = a[j] + a[j + k].
 *   Activation quantization (per block of 32, as llama.cpp's AVX2
 *                 quantize_row_q8_0): m = max |x[j]|; d = m / 127.0f;
 *                 stored d = fp16(d) (round to nearest even);
 *                 id = m != 0 ? 127.0f / m : 0; q[j] = round-half-even(x[j] * id).
 *
 * Threads: kernels are pure functions of their arguments and may run on any
 * thread concurrently.  Row ranges [r0, r1) let the caller split a matmul
 * across the pool's threads by output rows; the reduction is never split.
 */
#ifndef FB_KERNELS_H
#define FB_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#define KN_QK 32 /* elements per Q8_0 block */

/* One Q8_0 block, 34 bytes, laid out as in GGUF / ggml (no padding). */
typedef struct kn_q8 {
    uint16_t d; /* scale as IEEE binary16 */
    int8_t qs[KN_QK];
} __attribute__((packed)) kn_q8;

/* Weight tensor types, numbered as GGUF tensor types. */
enum kn_type { KN_F32 = 0, KN_F16 = 1, KN_Q8_0 = 8 };

/* A weight matrix: n_out rows of n_in elements, row r at
 * data + r * row_bytes.  Q8_0 needs n_in % 32 == 0.  Borrowed: data usually
 * points into the model's mapping. */
typedef struct kn_weight {
    int type; /* enum kn_type */
    int n_in;
    int n_out;
    size_t row_bytes;
    const void *data;
} kn_weight;

/* KN_PATH_AVX512: AVX-512 VNNI on 256-bit vectors (vpdpbusd), same bits. */
enum kn_path { KN_PATH_SCALAR = 0, KN_PATH_AVX2 = 1, KN_PATH_AVX512 = 2 };

/* A kernel implementation.  Both paths compute identical bits. */
typedef struct kn_ops {
    const char *name; /* "scalar", "avx2", "avx512" */
    int path;         /* enum kn_path */

    /* y[t * y_stride + r] = dot(row r of w, input row t) for r in [r0, r1),
     * t in [0, n_tok).  Input row t is at (const char *)x + t * x_stride and
     * holds n_in floats for F32/F16 weights, or n_in/32 kn_q8 blocks (from
     * kn_quantize_q8) for Q8_0 weights.  Writes y, never accumulates. */
    void (*matmul)(const kn_weight *w, int r0, int r1, const void *x, size_t x_stride, int n_tok,
                   float *y, size_t y_stride);

    /* The F32 dot product with the 32-partial order above. */
    float (*dot_f32)(const float *a, const float *b, int n);

    /* Quantize n floats (n % 32 == 0) to n/32 blocks, as described above. */
    void (*quantize_q8)(const float *x, kn_q8 *out, int n);

    /* y[i] = y[i] + a * x[i] for i < n (product rounded, then the sum). */
    void (*axpy)(int n, float a, const float *x, float *y);

    /* Attention's two halves over keys and values stored as F32 or F16
     * (type KN_F32 / KN_F16; strides in elements), each exactly a loop of
     * the dots and axpys above (F16 elements converted to float first, which
     * is exact), but with the loop inside where the SIMD path keeps its
     * operands in registers:
     * out[p] = dot(q, k + p * k_stride, n) for p < n_rows; and
     * y[i] = y[i] + a[p] * x[p * x_stride + i] for p = 0 .. n_rows-1 in
     * order. */
    void (*dot_rows)(int type, const float *q, const void *k, size_t k_stride, int n, int n_rows,
                     float *out);
    void (*axpy_rows)(int type, int n, const float *a, const void *x, size_t x_stride, int n_rows,
                      float *y);

    /* out[i] = kn_f32_to_fp16(x[i]), and x[i] = f32(fp16(x[i])) in place:
     * the same bits as the scalar conversions. */
    void (*to_f16)(const float *x, uint16_t *out, int n);
    void (*round_f16)(float *x, int n);
} kn_ops;

/* The ops for a path, or NULL when this CPU (or build) cannot run it. */
const kn_ops *kn_ops_get(int path);
/* The fastest path this CPU supports. */
const kn_ops *kn_ops_best(void);

/* IEEE binary16 <-> binary32.  fp16 -> f32 is exact; f32 -> fp16 rounds to
 * nearest even (as F16C's vcvtps2ph with rounding mode 0), handling
 * subnormals, infinities and NaN. */
float kn_fp16_to_f32(uint16_t h);
uint16_t kn_f32_to_fp16(float f);

/* Weight quantization (llama.cpp's quantize_row_q8_0_ref): per block,
 * d = max|x| / 127, q = roundf(x / d) (half away from zero), d stored as
 * fp16.  n % 32 == 0.  Used by `fedbft model quantize` and the synthesizer. */
void kn_quantize_q8_weights(const float *x, kn_q8 *out, int n);
/* Expand a row of any weight type to floats (exact for F16 and Q8_0's
 * f32(d) * q). */
void kn_row_to_f32(int type, const void *row, float *out, int n);

/* Scalar helpers used by the forward pass on both paths (cheap, so one
 * implementation, which makes them trivially path-independent). */

/* llama.cpp's rms_norm followed by the weight multiply:
 * sum = Σ (double)(x[i] * x[i]) in order; mean = (float)(sum / n);
 * scale = 1.0f / sqrtf(mean + eps); out[i] = (x[i] * scale) * w[i].
 * out may alias x. */
void kn_rmsnorm(const float *x, const float *w, float *out, int n, float eps);

/* Rotary embedding, llama "normal" mode (adjacent pairs): for pair
 * i = 0, 2, 4, ... < n_rot of each of n_heads heads of head_dim floats:
 * theta_i = pos * theta_scale^(i/2) computed as llama.cpp does (a running
 * float product: theta = pos; then theta *= theta_scale after each pair,
 * theta_scale = powf(freq_base, -2.0f / n_rot)); c = cosf(theta),
 * s = sinf(theta); (x0, x1) -> (x0 * c - x1 * s, x0 * s + x1 * c).
 * Elements i >= n_rot of each head are unchanged. */
void kn_rope(float *x, int n_heads, int head_dim, int n_rot, int pos, float freq_base);

/* In-place softmax of x[0..n) scaled by scale (x[i] * scale before the max):
 * max in order; e[i] = expf(x[i] * scale - max); sum = Σ (double)e[i] in
 * order; x[i] = e[i] * (float)(1.0 / sum). */
void kn_softmax(float *x, int n, float scale);

/* out[i] = silu(g[i]) * u[i], silu(v) = v / (1.0f + expf(-v)).  out may alias. */
void kn_swiglu(const float *g, const float *u, float *out, int n);

/* A fixed pool of threads for splitting work by rows.  Workers block on a
 * condition variable between jobs (they never spin), so an idle or
 * descheduled pool costs nothing and never starves the event loop's thread.
 * A pool is driven by one thread at a time. */
typedef struct kn_pool kn_pool;
typedef void (*kn_task_fn)(void *arg, int ith, int nth);

/* n_threads counts the calling thread: 1 means no workers are started. */
int kn_pool_new(int n_threads, kn_pool **out);
void kn_pool_free(kn_pool *p);
int kn_pool_threads(const kn_pool *p);
/* Run fn(arg, ith, nth) for ith = 0..nth-1 concurrently (the caller runs
 * ith = 0) and return when all have returned. */
void kn_pool_run(kn_pool *p, kn_task_fn fn, void *arg);
/* The same for any number of tasks: fn(arg, ith, n_tasks) for ith = 0 ..
 * n_tasks-1.  The caller runs ith = 0, then it and the workers claim the
 * remaining iths one at a time, so an ith runs on whichever thread claims it
 * (each exactly once; tasks must not wait for one another).  n_tasks = 1
 * runs on the caller and wakes no one: waking a sleeping worker costs the
 * caller ~10 us and the worker ~30 us before it runs on a KVM guest without
 * halt polling, more than a small matmul takes.  More tasks than threads let
 * the caller take over the share of a worker that starts late.
 * kn_pool_run(p, fn, arg) is kn_pool_run_tasks(p, fn, arg, threads). */
void kn_pool_run_tasks(kn_pool *p, kn_task_fn fn, void *arg, int n_tasks);

/* Split n rows into nth contiguous ranges aligned to multiples of align
 * (except the last); thread ith gets [*r0, *r1), possibly empty. */
void kn_split(int n, int align, int ith, int nth, int *r0, int *r1);

#endif
