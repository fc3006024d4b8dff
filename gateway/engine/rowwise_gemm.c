/* y = x @ w.T (+ bias) in fp32 for the few rows of a decode step: x [M, K], w [N, K] (nn.Linear's own layout),
 * y [M, N], all row-major and contiguous. Built and loaded by gateway/engine/rowwise.py (see why there).
 *
 * Each output is one dot product over k, accumulated lane by lane in vectors, then summed in a fixed tree:
 * every tile shape below does the same arithmetic for a given (row, column), so a row's result never
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

#define DEFINE_TILE(MT, NT)                                                                                       \
    static void tile_##MT##x##NT(const float *x, const float *w, const float *bias, float *y, int m0, int n0,     \
                                 int K, int ldy) {                                                                \
        vf acc[MT][NT];                                                                                           \
        const float *xr[MT], *wr[NT];                                                                             \
        for (int i = 0; i < MT; i++) xr[i] = x + (size_t)(m0 + i) * K;                                            \
        for (int j = 0; j < NT; j++) wr[j] = w + (size_t)(n0 + j) * K;                                            \
        for (int i = 0; i < MT; i++)                                                                              \
            for (int j = 0; j < NT; j++) acc[i][j] = (vf){0};                                                     \
        int kv = K - K % VEC;                                                                                     \
        for (int k = 0; k < kv; k += VEC) {                                                                       \
            vf wv[NT];                                                                                            \
            for (int j = 0; j < NT; j++) {                                                                        \
                wv[j] = *(const vf *)(wr[j] + k);                                                                 \
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
                for (int k = kv; k < K; k++) s += xr[i][k] * wr[j][k];                                            \
                if (bias) s += bias[n0 + j];                                                                      \
                y[(size_t)(m0 + i) * ldy + n0 + j] = s;                                                           \
            }                                                                                                     \
    }

/* Tile widths per row count: wide tiles for few rows (memory-bound), 4 to 8 rows per weight read otherwise.
 * AVX-512 has 32 vector registers, AVX2 16: accumulators + weights + one input must fit. */
#if defined(__AVX512F__)
DEFINE_TILE(1, 8)
DEFINE_TILE(2, 8)
DEFINE_TILE(3, 6)
DEFINE_TILE(4, 4)
DEFINE_TILE(8, 3)
#define ROWS_MAX 8
#define WIDTHS {0, 8, 8, 6, 4, 4, 4, 4, 3}
#define TILE_FOR {0, tile_1x8, tile_2x8, tile_3x6, tile_4x4, 0, 0, 0, tile_8x3}
#else
DEFINE_TILE(1, 4)
DEFINE_TILE(2, 4)
DEFINE_TILE(3, 3)
DEFINE_TILE(4, 2)
#define ROWS_MAX 4
#define WIDTHS {0, 4, 4, 3, 2}
#define TILE_FOR {0, tile_1x4, tile_2x4, tile_3x3, tile_4x2}
#endif
DEFINE_TILE(1, 1)

typedef void (*tile_fn)(const float *, const float *, const float *, float *, int, int, int, int);

/* Rows [m0, m0 + mt) against columns [n0, n1): the widest tile that fits, then single columns. */
static void strip(const float *x, const float *w, const float *bias, float *y, int m0, int mt, int n0, int n1,
                  int K, int N) {
    static const int widths[] = WIDTHS;
    static const tile_fn tiles[] = TILE_FOR;
    while (mt > 0) {
        int rows = mt >= ROWS_MAX ? ROWS_MAX : (tiles[mt] ? mt : 4); /* 5-7 rows: 4, then the rest */
        int n = n0, width = widths[rows];
        for (; n + width <= n1; n += width) tiles[rows](x, w, bias, y, m0, n, K, N);
        for (; n < n1; n++)
            for (int i = 0; i < rows; i++) tile_1x1(x, w, bias, y, m0 + i, n, K, N);
        m0 += rows;
        mt -= rows;
    }
}

#define CHUNK 24 /* output columns per work item: a multiple of every tile width */

/* The caller's OpenMP runtime is torch's own (loaded first, same soname), so `threads` workers come from
 * the pool torch uses; each takes a contiguous run of column chunks. */
void rowwise_gemm(const float *x, const float *w, const float *bias, float *y, int M, int N, int K, int threads) {
    int chunks = (N + CHUNK - 1) / CHUNK;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int c = 0; c < chunks; c++) {
        int n0 = c * CHUNK, n1 = n0 + CHUNK < N ? n0 + CHUNK : N;
        for (int m0 = 0; m0 < M; m0 += ROWS_MAX * 4)
            strip(x, w, bias, y, m0, M - m0 < ROWS_MAX * 4 ? M - m0 : ROWS_MAX * 4, n0, n1, K, N);
    }
}
