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
#include <omp.h>
#include <string.h>

#include "simd.h"

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
