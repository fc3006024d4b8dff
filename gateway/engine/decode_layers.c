/* The decoder layers of a Llama-like model for one decode step, in one call: RMSNorm -> q/k/v (optional
 * per-head q/k RMSNorm) -> rotary -> cache write -> attention -> o -> residual -> RMSNorm -> down(silu(gate) *
 * up) -> residual. fp32 activations. Built and loaded by gateway/engine/decode_layers.py (see why there).
 *
 * The Linear layers and the attention are the other kernels' own functions (rowwise_gemm.c,
 * decode_attention.c), passed in as pointers; this file adds the small per-token operations between them
 * (`glue_*`, exported too: the Python stack of mixed steps and prompt chunks calls the same ones, so a decode
 * row gets the same bits in either). Every glue operation works row by row with a fixed order, so a row's
 * result does not depend on the other rows in the call.
 */
#include <string.h>

#include "simd.h"

typedef void (*gemm_fn)(const float *x, const void *w, const float *scale, const float *bias, float *y, int M,
                        int N, int K, int threads);
typedef void (*attention_fn)(const float *q, const float *k, const float *v, const unsigned char *valid,
                             float *out, float *scratch, int rows, int heads, int kv_heads, int cols, int d,
                             long k_row, long k_head, long v_row, long v_head, long valid_row, float scale,
                             int threads);

struct linear { /* rowwise_gemm_f32 (weight fp32, scale NULL) or rowwise_gemm_i8 (int8, per-row scale) */
    gemm_fn fn;
    const void *weight;
    const float *scale, *bias;
    int out, in;
};

struct layer {
    const float *norm_in, *norm_post, *q_norm, *k_norm; /* q_norm/k_norm NULL unless per head (Qwen3) */
    float eps_in, eps_post, eps_q, eps_k;
    struct linear q, k, v, o, gate, up, down;
};

struct dims {
    int hidden, heads, kv_heads, d, inter;
    float scale; /* the attention's softmax scale */
};

typedef void (*chunk_attention_fn)(const float *q, const float *k, const float *v, float *out, float *scratch,
                                   int tokens, int prefix, int heads, int kv_heads, int d, long k_head, long v_head,
                                   float scale, int threads);

/* A prompt chunk carried by a decode step (a mixed step): `tokens` rows after the decode rows, prompt
 * positions [prefix, prefix + tokens) of one cache row whose prompt columns start `key_at` / `value_at`
 * floats into each layer's keys / values. Token t attends to the prompt's columns [0, prefix + t] through
 * `attend` (decode_attention.c's chunk_attention_f32: each block of the row's keys read once for all the
 * chunk's tokens), with `scratch` (chunk_attention_scratch floats). */
struct chunk {
    int tokens, prefix;
    long key_at, value_at;
    chunk_attention_fn attend;
    float *scratch;
};

/* y = x / sqrt(mean(x^2) + eps) * w, row by row (y may be x) */
void glue_rms_norm(const float *x, const float *w, float *y, int rows, int n, float eps) {
    int nv = n - n % VEC;
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * n;
        float *yr = y + (size_t)r * n;
        vf acc = {0};
        for (int i = 0; i < nv; i += VEC) acc += *(const vf *)(xr + i) * *(const vf *)(xr + i);
        float s = hsum(acc);
        for (int i = nv; i < n; i++) s += xr[i] * xr[i];
        float inv = 1.0f / sqrtf(s / (float)n + eps);
        for (int i = 0; i < n; i++) yr[i] = xr[i] * inv * w[i];
    }
}

/* t = t * cos + rotate_half(t) * sin in place, t [tokens, heads, d], cos/sin [tokens, d] (transformers'
 * apply_rotary_pos_emb with rotate_half: the first half pairs with the second) */
void glue_rotary(float *t, const float *cos, const float *sin, int tokens, int heads, int d) {
    int half = d / 2;
    for (int token = 0; token < tokens; token++) {
        const float *c = cos + (size_t)token * d, *s = sin + (size_t)token * d;
        for (int h = 0; h < heads; h++) {
            float *x = t + ((size_t)token * heads + h) * d;
            for (int i = 0; i < half; i++) {
                float a = x[i], b = x[i + half];
                x[i] = a * c[i] - b * s[i];
                x[i + half] = b * c[i + half] + a * s[i + half];
            }
        }
    }
}

/* silu(g) * u for one vector: g * sigmoid(g), with exp of -|g| only (never overflows) */
static inline vf silu_mul_vec(vf g, vf u) {
    vf zero = {0}, one = zero + 1.0f;
    vi negative = g < zero;
    vf a = (vf)((vi)g & ~negative) - (vf)((vi)g & negative); /* |g| */
    vf e = vexp(zero - a);
    vf sigmoid_abs = one / (one + e);                                 /* sigmoid(|g|) */
    vf sig = (vf)(((vi)(one - sigmoid_abs) & negative) | ((vi)sigmoid_abs & ~negative));
    return g * sig * u;
}

/* gate = silu(gate) * up over n floats; the tail goes through the same vector code (zero-padded copies),
 * so an element's result depends on its value only, not on where it sits */
void glue_silu_mul(float *gate, const float *up, long n) {
    long nv = n - n % VEC;
    for (long i = 0; i < nv; i += VEC) *(vf *)(gate + i) = silu_mul_vec(*(vf *)(gate + i), *(const vf *)(up + i));
    if (nv < n) {
        vf g = {0}, u = {0};
        memcpy(&g, gate + nv, (size_t)(n - nv) * 4);
        memcpy(&u, up + nv, (size_t)(n - nv) * 4);
        g = silu_mul_vec(g, u);
        memcpy(gate + nv, &g, (size_t)(n - nv) * 4);
    }
}

static inline void run(const struct linear *l, const float *x, float *y, int rows, int threads) {
    l->fn(x, l->weight, l->scale, l->bias, y, rows, l->out, l->in, threads);
}

static inline void add_into(float *x, const float *o, long n) {
    for (long i = 0; i < n; i++) x[i] += o[i];
}

/* Scratch floats decode_layers needs for `rows` rows (activations between the operations). */
long decode_layers_scratch(const struct dims *m, int rows) {
    long qd = (long)m->heads * m->d, kvd = (long)m->kv_heads * m->d;
    return (long)rows * (2L * m->hidden + 2L * qd + 2L * kvd + 2L * m->inter);
}

/* x [rows (+ chunk tokens), hidden] in place through every layer. keys/values: each layer's cache base ([row,
 * kv head, column, d], d contiguous, the given row and head strides, the same for every layer); this step writes
 * column `write_col` of rows [0, rows) and attends over columns [first_col, write_col], those set in `valid`
 * (already at first_col, `valid_row` apart). With `chunk` (else NULL), its tokens follow the decode rows in x
 * and cos/sin, and go through the same Linear layers and glue. cos/sin [rows (+ tokens), d]. */
void decode_layers(const struct layer *layers, int n_layers, const struct dims *m, float *x, int rows,
                   const float *cos, const float *sin, float *const *keys, float *const *values, long k_row,
                   long k_head, long v_row, long v_head, int write_col, int first_col, const unsigned char *valid,
                   long valid_row, attention_fn attend, float *scratch, float *attention_scratch, int threads,
                   const struct chunk *chunk) {
    int d = m->d, hidden = m->hidden, cols = write_col + 1 - first_col, decode_rows = rows;
    long qd = (long)m->heads * d, kvd = (long)m->kv_heads * d;
    if (chunk) rows += chunk->tokens;
    float *h = scratch, *o = h + (size_t)rows * hidden, *q = o + (size_t)rows * hidden;
    float *att = q + (size_t)rows * qd, *k = att + (size_t)rows * qd, *v = k + (size_t)rows * kvd;
    float *gate = v + (size_t)rows * kvd, *up = gate + (size_t)rows * m->inter;
    for (int index = 0; index < n_layers; index++) {
        const struct layer *L = layers + index;
        glue_rms_norm(x, L->norm_in, h, rows, hidden, L->eps_in);
        run(&L->q, h, q, rows, threads);
        run(&L->k, h, k, rows, threads);
        run(&L->v, h, v, rows, threads);
        if (L->q_norm) glue_rms_norm(q, L->q_norm, q, rows * m->heads, d, L->eps_q);
        if (L->k_norm) glue_rms_norm(k, L->k_norm, k, rows * m->kv_heads, d, L->eps_k);
        glue_rotary(q, cos, sin, rows, m->heads, d);
        glue_rotary(k, cos, sin, rows, m->kv_heads, d);
        for (int r = 0; r < decode_rows; r++)
            for (int j = 0; j < m->kv_heads; j++) {
                size_t at = (size_t)r * k_row + (size_t)j * k_head + (size_t)write_col * d;
                memcpy(keys[index] + at, k + ((size_t)r * m->kv_heads + j) * d, (size_t)d * 4);
                at = (size_t)r * v_row + (size_t)j * v_head + (size_t)write_col * d;
                memcpy(values[index] + at, v + ((size_t)r * m->kv_heads + j) * d, (size_t)d * 4);
            }
        attend(q, keys[index] + (size_t)first_col * d, values[index] + (size_t)first_col * d, valid, att,
               attention_scratch, decode_rows, m->heads, m->kv_heads, cols, d, k_row, k_head, v_row, v_head,
               valid_row, m->scale, threads);
        if (chunk) {
            float *chunk_keys = keys[index] + chunk->key_at, *chunk_values = values[index] + chunk->value_at;
            for (int t = 0; t < chunk->tokens; t++)
                for (int j = 0; j < m->kv_heads; j++) {
                    size_t from = ((size_t)(decode_rows + t) * m->kv_heads + j) * d;
                    size_t at = (size_t)j * k_head + (size_t)(chunk->prefix + t) * d;
                    memcpy(chunk_keys + at, k + from, (size_t)d * 4);
                    at = (size_t)j * v_head + (size_t)(chunk->prefix + t) * d;
                    memcpy(chunk_values + at, v + from, (size_t)d * 4);
                }
            chunk->attend(q + (size_t)decode_rows * qd, chunk_keys, chunk_values, att + (size_t)decode_rows * qd,
                          chunk->scratch, chunk->tokens, chunk->prefix, m->heads, m->kv_heads, d, k_head, v_head,
                          m->scale, threads);
        }
        run(&L->o, att, o, rows, threads);
        add_into(x, o, (long)rows * hidden);
        glue_rms_norm(x, L->norm_post, h, rows, hidden, L->eps_post);
        run(&L->gate, h, gate, rows, threads);
        run(&L->up, h, up, rows, threads);
        glue_silu_mul(gate, up, (long)rows * m->inter);
        run(&L->down, gate, o, rows, threads);
        add_into(x, o, (long)rows * hidden);
    }
}
