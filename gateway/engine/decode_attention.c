/* Attention of a decode step: one query token per row over that row's cached keys/values, fp32.
 * Built and loaded by gateway/engine/decode_attention.py (see why there).
 *
 *   q     [rows, heads, d]                contiguous (the rotary output)
 *   k, v  [rows, kv_heads, cols, d]       strided views of the cache: row stride, head stride; d contiguous
 *   valid [rows, cols] bytes (bool)       row stride; only columns set here are attended to
 *   out   [rows, heads, d]                contiguous
 *   scratch  threads x decode_attention_scratch(groups, cols) floats
 *
 * One work item per (row, KV head): its keys are read once for the `groups` query heads that share them
 * (grouped-query attention), the scores are kept, exponentiated after the row maximum, and the values are
 * summed with them. Masked columns are skipped, not multiplied by zero: a row's result is the same with or
 * without other rows' columns (holes) in the window, and the same in any batch.
 */
#include <math.h>
#include <stddef.h>
#include <string.h>
#include <omp.h>

#if defined(__AVX512F__)
#define VEC 16
#else
#define VEC 8
#endif

typedef float vf __attribute__((vector_size(VEC * 4), aligned(4)));
typedef int vi __attribute__((vector_size(VEC * 4), aligned(4)));

/* Lane sum. The x86 reductions are named: a generic one through memory stalled on store forwarding. */
#if defined(__AVX512F__)
#include <immintrin.h>
static inline float hsum(vf v) { return _mm512_reduce_add_ps((__m512)v); }
#elif defined(__AVX__)
#include <immintrin.h>
static inline float hsum(vf v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128((__m256)v), _mm256_extractf128_ps((__m256)v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
#else
static inline float hsum(vf v) {
    float r[VEC], s = 0.0f;
    memcpy(r, &v, sizeof r);
    for (int i = 0; i < VEC; i++) s += r[i];
    return s;
}
#endif

/* exp(x) for x <= 0 (scores minus their maximum), lane-wise: 2^n * p(r) with x = n ln2 + r, |r| <= ln2 / 2,
 * p a degree-6 polynomial (Cephes' expf coefficients: ~1 ulp). Below -87 the result flushes to 0. */
static inline vf vexp(vf x) {
    vf zero = {0}, lo = zero - 87.0f;
    vi below = x < lo; /* lane-wise: -1 where true */
    x = (vf)(((vi)lo & below) | ((vi)x & ~below));
    vf t = x * 1.44269504088896341f + 0.5f;
    vf n = __builtin_convertvector(__builtin_convertvector(t, vi), vf); /* truncated: floor below, via - 1 */
    n += __builtin_convertvector((vi)(t < n), vf);
    vf r = x - n * 0.693359375f + n * 2.12194440e-4f;
    vf p = zero + 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * (r * r) + r + 1.0f;
    vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
    return p * (vf)bits;
}

#define PADDED(n) (((n) + VEC - 1) / VEC * VEC)

/* Scratch floats one work item needs: the scores of each query head (padded to whole vectors) and the
 * indices of the valid columns. */
long decode_attention_scratch(int groups, int cols) { return (long)groups * PADDED(cols) + cols; }

static void attend_one(const float *q, const float *k, const float *v, const unsigned char *valid, float *out,
                       int groups, int cols, int d, float scale, float *scratch) {
    int dv = d - d % VEC, n = 0, padded = PADDED(cols);
    int *index = (int *)(scratch + (size_t)groups * padded);
    for (int c = 0; c < cols; c++)
        if (valid[c]) index[n++] = c;
    for (int g = 0; g < groups; g++) {
        const float *qg = q + (size_t)g * d;
        float *sg = scratch + (size_t)g * padded, best = -INFINITY;
        for (int j = 0; j < n; j++) {
            const float *kc = k + (size_t)index[j] * d;
            vf acc = {0};
            for (int i = 0; i < dv; i += VEC) acc += *(const vf *)(qg + i) * *(const vf *)(kc + i);
            float s = hsum(acc);
            for (int i = dv; i < d; i++) s += qg[i] * kc[i];
            s *= scale;
            sg[j] = s;
            best = s > best ? s : best;
        }
        /* softmax weights; the padding lanes after n are zeroed, so whole vectors can be summed */
        vf sum = {0};
        vi lane;
        for (int i = 0; i < VEC; i++) lane[i] = i;
        for (int j = 0; j < n; j += VEC) {
            vf e = vexp(*(vf *)(sg + j) - best);
            e = (vf)((vi)e & (lane + j < n));
            *(vf *)(sg + j) = e;
            sum += e;
        }
        float inv = n ? 1.0f / hsum(sum) : 0.0f;
        float *og = out + (size_t)g * d;
        /* out = sum of weight x value over the valid columns, accumulated in registers, 4 vectors at a time */
        int i0 = 0;
        for (; i0 + 4 * VEC <= dv; i0 += 4 * VEC) {
            vf a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
            for (int j = 0; j < n; j++) {
                const float *vc = v + (size_t)index[j] * d + i0;
                float w = sg[j];
                a0 += w * *(const vf *)vc;
                a1 += w * *(const vf *)(vc + VEC);
                a2 += w * *(const vf *)(vc + 2 * VEC);
                a3 += w * *(const vf *)(vc + 3 * VEC);
            }
            *(vf *)(og + i0) = a0 * inv;
            *(vf *)(og + i0 + VEC) = a1 * inv;
            *(vf *)(og + i0 + 2 * VEC) = a2 * inv;
            *(vf *)(og + i0 + 3 * VEC) = a3 * inv;
        }
        for (; i0 < dv; i0 += VEC) {
            vf a = {0};
            for (int j = 0; j < n; j++) a += sg[j] * *(const vf *)(v + (size_t)index[j] * d + i0);
            *(vf *)(og + i0) = a * inv;
        }
        for (int i = dv; i < d; i++) {
            float a = 0.0f;
            for (int j = 0; j < n; j++) a += sg[j] * v[(size_t)index[j] * d + i];
            og[i] = a * inv;
        }
    }
}

void decode_attention_f32(const float *q, const float *k, const float *v, const unsigned char *valid, float *out,
                          float *scratch, int rows, int heads, int kv_heads, int cols, int d, long k_row,
                          long k_head, long v_row, long v_head, long valid_row, float scale, int threads) {
    int groups = heads / kv_heads, items = rows * kv_heads;
    long per_thread = decode_attention_scratch(groups, cols);
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int item = 0; item < items; item++) {
        int row = item / kv_heads, h = item % kv_heads;
        float *scores = scratch + (size_t)omp_get_thread_num() * per_thread;
        attend_one(q + ((size_t)row * heads + (size_t)h * groups) * d, k + row * k_row + h * k_head,
                   v + row * v_row + h * v_head, valid + row * valid_row,
                   out + ((size_t)row * heads + (size_t)h * groups) * d, groups, cols, d, scale, scores);
    }
}
