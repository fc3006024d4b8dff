/* y = x @ w.T (* scale) (+ bias) for the few rows of a decode step, fp32 activations:
 *   rowwise_gemm_f32: w fp32 [N, K] (nn.Linear's own layout);
 *   rowwise_gemm_i8:  w int8 [N, K] with one fp32 scale per output row (weight-only int8).
 * x [M, K], y [M, N], row-major and contiguous. Built and loaded by gateway/engine/rowwise.py (see why there).
 *
 * Each output is one dot product over k, accumulated lane by lane in fp32 vectors, then summed in a fixed
 * tree: every tile shape below does the same arithmetic for a given (row, column), so a row's result never
 * depends on how many other rows are in the call (batch invariance by construction).
 * Tiles keep MT x NT accumulators in registers; the weight rows of the next tile are prefetched while the
 * current one computes (without that, 8 rows ran at half the memory bandwidth of 1 row).
 */
#include <stddef.h>

#if defined(__AVX512F__)
#define VEC 16
#else
#define VEC 8 /* AVX2, or whatever 32-byte vectors the compiler makes of it */
#endif

typedef float vf __attribute__((vector_size(VEC * 4), aligned(4)));
typedef float vh __attribute__((vector_size(VEC * 2), aligned(4)));
typedef signed char vq __attribute__((vector_size(VEC)));
typedef int vi __attribute__((vector_size(VEC * 4)));

#define LOAD_F32(p) (*(const vf *)(p))
#define LOAD_I8(p) load_i8(p)

/* int8 -> fp32 lanes. GCC's generic vector conversion compiled to one scalar load and convert per lane, so
 * the x86 widening instructions are named; other CPUs get the generic form. */
#if defined(__AVX512F__)
#include <immintrin.h>
static inline vf load_i8(const signed char *p) {
    return (vf)_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
}
#elif defined(__AVX2__)
#include <immintrin.h>
static inline vf load_i8(const signed char *p) {
    return (vf)_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)p)));
}
#else
static inline vf load_i8(const signed char *p) {
    vq q;
    __builtin_memcpy(&q, p, sizeof q);
    return __builtin_convertvector(__builtin_convertvector(q, vi), vf);
}
#endif

static inline float hsum(vf v) {
    vh lo, hi;
    __builtin_memcpy(&lo, &v, sizeof lo);
    __builtin_memcpy(&hi, (const char *)&v + sizeof lo, sizeof hi);
    vh s = lo + hi;
    float r[VEC / 2];
    __builtin_memcpy(r, &s, sizeof r);
    for (int w = VEC / 4; w >= 1; w /= 2)
        for (int i = 0; i < w; i++) r[i] += r[i + w];
    return r[0];
}

#define DEFINE_TILE(NAME, WT, LOAD, MT, NT)                                                                       \
    static void NAME##_##MT##x##NT(const float *x, const WT *w, const float *scale, const float *bias, float *y,  \
                                   int m0, int n0, int K, int ldy) {                                              \
        vf acc[MT][NT];                                                                                           \
        const float *xr[MT];                                                                                      \
        const WT *wr[NT];                                                                                         \
        for (int i = 0; i < MT; i++) xr[i] = x + (size_t)(m0 + i) * K;                                            \
        for (int j = 0; j < NT; j++) wr[j] = w + (size_t)(n0 + j) * K;                                            \
        for (int i = 0; i < MT; i++)                                                                              \
            for (int j = 0; j < NT; j++) acc[i][j] = (vf){0};                                                     \
        int kv = K - K % VEC;                                                                                     \
        for (int k = 0; k < kv; k += VEC) {                                                                       \
            vf wv[NT];                                                                                            \
            for (int j = 0; j < NT; j++) {                                                                        \
                wv[j] = LOAD(wr[j] + k);                                                                          \
                __builtin_prefetch(wr[j] + (size_t)NT * K + k); /* the next tile's rows */                        \
            }                                                                                                     \
            for (int i = 0; i < MT; i++) {                                                                        \
                vf xv = *(const vf *)(xr[i] + k);                                                                 \
                for (int j = 0; j < NT; j++) acc[i][j] += xv * wv[j];                                             \
            }                                                                                                     \
        }                                                                                                         \
        for (int i = 0; i < MT; i++)                                                                              \
            for (int j = 0; j < NT; j++) {                                                                        \
                float s = hsum(acc[i][j]);                                                                        \
                for (int k = kv; k < K; k++) s += xr[i][k] * (float)wr[j][k];                                     \
                if (scale) s *= scale[n0 + j];                                                                    \
                if (bias) s += bias[n0 + j];                                                                      \
                y[(size_t)(m0 + i) * ldy + n0 + j] = s;                                                           \
            }                                                                                                     \
    }

#define CHUNK 24 /* output columns per work item: a multiple of every tile width */

/* Tile widths per row count: wide tiles for few rows (memory-bound), 4 to 8 rows per weight read otherwise.
 * AVX-512 has 32 vector registers, AVX2 16: accumulators + weights + one input must fit.
 * The caller's OpenMP runtime is torch's own (loaded first, same soname), so `threads` workers come from
 * the pool torch uses; each takes a contiguous run of column chunks. */
#if defined(__AVX512F__)
#define DEFINE_TILES(NAME, WT, LOAD)                                                                              \
    DEFINE_TILE(NAME, WT, LOAD, 1, 8)                                                                             \
    DEFINE_TILE(NAME, WT, LOAD, 2, 8)                                                                             \
    DEFINE_TILE(NAME, WT, LOAD, 3, 6)                                                                             \
    DEFINE_TILE(NAME, WT, LOAD, 4, 4)                                                                             \
    DEFINE_TILE(NAME, WT, LOAD, 8, 3)                                                                             \
    DEFINE_TILE(NAME, WT, LOAD, 1, 1)                                                                             \
    enum { NAME##_rows_max = 8 };                                                                                 \
    static const int NAME##_widths[] = {0, 8, 8, 6, 4, 4, 4, 4, 3};                                              \
    typedef void (*NAME##_fn)(const float *, const WT *, const float *, const float *, float *, int, int, int,   \
                              int);                                                                               \
    static const NAME##_fn NAME##_tiles[] = {0, NAME##_1x8, NAME##_2x8, NAME##_3x6, NAME##_4x4, 0, 0, 0,         \
                                             NAME##_8x3};
#else
#define DEFINE_TILES(NAME, WT, LOAD)                                                                              \
    DEFINE_TILE(NAME, WT, LOAD, 1, 4)                                                                             \
    DEFINE_TILE(NAME, WT, LOAD, 2, 4)                                                                             \
    DEFINE_TILE(NAME, WT, LOAD, 3, 3)                                                                             \
    DEFINE_TILE(NAME, WT, LOAD, 4, 2)                                                                             \
    DEFINE_TILE(NAME, WT, LOAD, 1, 1)                                                                             \
    enum { NAME##_rows_max = 4 };                                                                                 \
    static const int NAME##_widths[] = {0, 4, 4, 3, 2};                                                           \
    typedef void (*NAME##_fn)(const float *, const WT *, const float *, const float *, float *, int, int, int,   \
                              int);                                                                               \
    static const NAME##_fn NAME##_tiles[] = {0, NAME##_1x4, NAME##_2x4, NAME##_3x3, NAME##_4x2};
#endif

/* Rows [m0, m0 + mt) against columns [n0, n1): the widest tile that fits, then single columns. */
#define DEFINE_GEMM(NAME, WT, LOAD)                                                                               \
    DEFINE_TILES(NAME, WT, LOAD)                                                                                  \
    static void NAME##_strip(const float *x, const WT *w, const float *scale, const float *bias, float *y,       \
                             int m0, int mt, int n0, int n1, int K, int N) {                                      \
        while (mt > 0) {                                                                                          \
            int rows = mt >= NAME##_rows_max ? NAME##_rows_max : (NAME##_tiles[mt] ? mt : 4);                    \
            int n = n0, width = NAME##_widths[rows];                                                              \
            for (; n + width <= n1; n += width) NAME##_tiles[rows](x, w, scale, bias, y, m0, n, K, N);           \
            for (; n < n1; n++)                                                                                   \
                for (int i = 0; i < rows; i++) NAME##_1x1(x, w, scale, bias, y, m0 + i, n, K, N);                 \
            m0 += rows;                                                                                           \
            mt -= rows;                                                                                           \
        }                                                                                                         \
    }                                                                                                             \
    void rowwise_gemm_##NAME(const float *x, const WT *w, const float *scale, const float *bias, float *y, int M, \
                             int N, int K, int threads) {                                                         \
        int chunks = (N + CHUNK - 1) / CHUNK, group = NAME##_rows_max * 4;                                        \
        _Pragma("omp parallel for schedule(static) num_threads(threads)") for (int c = 0; c < chunks; c++) {     \
            int n0 = c * CHUNK, n1 = n0 + CHUNK < N ? n0 + CHUNK : N;                                             \
            for (int m0 = 0; m0 < M; m0 += group)                                                                 \
                NAME##_strip(x, w, scale, bias, y, m0, M - m0 < group ? M - m0 : group, n0, n1, K, N);           \
        }                                                                                                         \
    }

DEFINE_GEMM(f32, float, LOAD_F32)
DEFINE_GEMM(i8, signed char, LOAD_I8)
