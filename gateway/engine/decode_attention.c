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

/* q . k over d values (whole vectors, then the tail), times scale */
static inline float scaled_dot(const float *q, const float *k, int d, float scale) {
    int dv = d - d % VEC;
    vf acc = {0};
    for (int i = 0; i < dv; i += VEC) acc += *(const vf *)(q + i) * *(const vf *)(k + i);
    float s = hsum(acc);
    for (int i = dv; i < d; i++) s += q[i] * k[i];
    return s * scale;
}

/* scores[0, n) -> exp(score - best) in place, the padding lanes after n zeroed (the buffer has room for whole
 * vectors, so they can be summed); returns their sum */
static inline float softmax_weights(float *scores, int n, float best) {
    vf sum = {0};
    vi lane;
    for (int i = 0; i < VEC; i++) lane[i] = i;
    for (int j = 0; j < n; j += VEC) {
        vf e = vexp(*(vf *)(scores + j) - best);
        e = (vf)((vi)e & (lane + j < n));
        *(vf *)(scores + j) = e;
        sum += e;
    }
    return hsum(sum);
}

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
            sg[j] = scaled_dot(qg, k + (size_t)index[j] * d, d, scale);
            best = sg[j] > best ? sg[j] : best;
        }
        float total = softmax_weights(sg, n, best);
        float inv = n ? 1.0f / total : 0.0f;
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

/* ---- A prompt chunk's attention (mixed steps): `tokens` queries per head over one cache row, causal. ----
 *
 *   q      [tokens, heads, d]              contiguous; token t is the prompt's position prefix + t
 *   k, v   [kv_heads, prefix + tokens, d]  one cache row: head stride, d contiguous, columns d apart
 *   out    [tokens, heads, d]              contiguous
 *   scratch chunk_attention_scratch(...) floats
 *
 * Token t attends to columns [0, prefix + t]. Run through decode_attention_f32 (one token at a time), every
 * token read all of the row's keys and values: at 7,000 columns a mixed step's 4 tokens took 118 ms where
 * one pass over the KV (308 MiB for SmolLM2's 30 layers) takes ~15. Here a work item is (KV head, block of
 * CHUNK_BLOCK columns): its keys and values are read from memory once and stay in L2 while every query of
 * every token that sees them (the `groups` query heads that share the KV head) goes over them; each keeps
 * its block's score maximum, exp-sum and weighted value sum, and a second pass merges the blocks of each
 * (token, head) by their maxima (flash-decoding). The columns split the work, so two threads share even a
 * single KV head's prompt. Results equal softmax attention to rounding (up to ~1e-6 in the output). */
#define CHUNK_BLOCK 256

static inline long chunk_blocks(int cols) { return (cols + CHUNK_BLOCK - 1) / CHUNK_BLOCK; }

long chunk_attention_scratch(int tokens, int heads, int cols, int d, int threads) {
    /* per (block, token, head): max, sum, d weighted values; per thread: one query's scores in a block */
    return chunk_blocks(cols) * tokens * heads * (long)(d + 2) + (long)threads * CHUNK_BLOCK;
}

/* One query over columns [c0, c1) of its KV head: block max, exp-sum and exp-weighted sum of values. */
static void chunk_block(const float *qv, const float *k, const float *v, int c0, int c1, int d, float scale,
                        float *scores, float *partial) {
    int n = c1 - c0, dv = d - d % VEC, j = 0;
    float best = -INFINITY;
    if (dv == d) /* four columns at a time: one transposing lane sum for the four dot products */
        for (; j + 4 <= n; j += 4) {
            const float *kc = k + (size_t)(c0 + j) * d;
            vf a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
            for (int i = 0; i < d; i += VEC) {
                vf x = *(const vf *)(qv + i);
                a0 += x * *(const vf *)(kc + i);
                a1 += x * *(const vf *)(kc + d + i);
                a2 += x * *(const vf *)(kc + 2 * d + i);
                a3 += x * *(const vf *)(kc + 3 * d + i);
            }
            hsum4(a0, a1, a2, a3, scores + j);
            for (int i = 0; i < 4; i++) {
                scores[j + i] *= scale;
                best = scores[j + i] > best ? scores[j + i] : best;
            }
        }
    for (; j < n; j++) {
        scores[j] = scaled_dot(qv, k + (size_t)(c0 + j) * d, d, scale);
        best = scores[j] > best ? scores[j] : best;
    }
    float *o = partial + 2;
    partial[0] = best;
    partial[1] = softmax_weights(scores, n, best);
    int i0 = 0;
    for (; i0 + 4 * VEC <= dv; i0 += 4 * VEC) {
        vf a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
        for (int j = 0; j < n; j++) {
            const float *vc = v + (size_t)(c0 + j) * d + i0;
            float w = scores[j];
            a0 += w * *(const vf *)vc;
            a1 += w * *(const vf *)(vc + VEC);
            a2 += w * *(const vf *)(vc + 2 * VEC);
            a3 += w * *(const vf *)(vc + 3 * VEC);
        }
        memcpy(o + i0, &a0, sizeof a0);
        memcpy(o + i0 + VEC, &a1, sizeof a1);
        memcpy(o + i0 + 2 * VEC, &a2, sizeof a2);
        memcpy(o + i0 + 3 * VEC, &a3, sizeof a3);
    }
    for (; i0 < dv; i0 += VEC) {
        vf a = {0};
        for (int j = 0; j < n; j++) a += scores[j] * *(const vf *)(v + (size_t)(c0 + j) * d + i0);
        memcpy(o + i0, &a, sizeof a);
    }
    for (int i = dv; i < d; i++) {
        float a = 0.0f;
        for (int j = 0; j < n; j++) a += scores[j] * v[(size_t)(c0 + j) * d + i];
        o[i] = a;
    }
}

void chunk_attention_f32(const float *q, const float *k, const float *v, float *out, float *scratch, int tokens,
                         int prefix, int heads, int kv_heads, int d, long k_head, long v_head, float scale,
                         int threads) {
    int groups = heads / kv_heads, cols = prefix + tokens;
    long blocks = chunk_blocks(cols), stride = d + 2; /* one partial: max, sum, d values */
    float *partials = scratch, *scores_base = scratch + blocks * tokens * heads * stride;
#pragma omp parallel num_threads(threads)
    {
        float *scores = scores_base + (size_t)omp_get_thread_num() * CHUNK_BLOCK;
#pragma omp for schedule(static)
        for (long item = 0; item < kv_heads * blocks; item++) {
            int h = (int)(item / blocks), b = (int)(item % blocks), c0 = b * CHUNK_BLOCK;
            for (int t = 0; t < tokens; t++) {
                int c1 = prefix + t + 1 < c0 + CHUNK_BLOCK ? prefix + t + 1 : c0 + CHUNK_BLOCK;
                for (int g = 0; g < groups; g++) {
                    int head = h * groups + g;
                    float *partial = partials + (((size_t)b * tokens + t) * heads + head) * stride;
                    if (c1 <= c0) { /* this token sees none of the block */
                        partial[0] = -INFINITY;
                        partial[1] = 0.0f;
                        continue;
                    }
                    chunk_block(q + ((size_t)t * heads + head) * d, k + h * k_head, v + h * v_head, c0, c1, d,
                                scale, scores, partial);
                }
            }
        }
#pragma omp for schedule(static)
        for (long pair = 0; pair < (long)tokens * heads; pair++) {
            float best = -INFINITY, total = 0.0f, *o = out + (size_t)pair * d;
            for (long b = 0; b < blocks; b++) {
                float m = partials[(b * tokens * heads + pair) * stride];
                best = m > best ? m : best;
            }
            memset(o, 0, (size_t)d * sizeof *o);
            for (long b = 0; b < blocks; b++) {
                const float *partial = partials + (b * tokens * heads + pair) * stride;
                if (partial[1] == 0.0f) continue;
                float w = expf(partial[0] - best);
                total += partial[1] * w;
                for (int i = 0; i < d; i++) o[i] += w * partial[2 + i];
            }
            float inv = total > 0.0f ? 1.0f / total : 0.0f;
            for (int i = 0; i < d; i++) o[i] *= inv;
        }
    }
}
