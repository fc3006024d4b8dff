/* y = x @ w.T * scale (+ bias) with int8 weights AND int8 activations: on AVX-512 VNNI (vpdpbusd: 64
 * multiply-adds of u8 x s8 per instruction, four times the fp32 FMA's 16), on AVX-VNNI (the same on 256 bits),
 * or on AVX2 (vpmaddubsw + vpmaddwd, llama.cpp's Q8_0 x Q8_0 dot: 32 multiply-adds in four instructions). Built by
 * gateway/engine/int8_vnni.py (see why there); on a CPU with none of them it exports only int8_vnni_block().
 *
 * Weights: one fp32 scale per output row (as rowwise_gemm_i8), the int8 values stored + 128 as u8 (vpdpbusd's
 * unsigned operand) in the VNNI layout [ceil(N/16)][K/4][16 columns][4 k], padded columns = 128 (zero).
 * Activations: each row quantized here per block of 32 values (llama.cpp's Q8_0 scheme for activations):
 * scale = max|x| / 127, q = round-to-even(x * 127 / max|x|). VNNI: the + 128 of the weights adds
 * 128 * sum(q) to each block's integer dot product; the block's accumulators start at minus that. AVX2: the
 * weights' top bit is flipped back (signed) and vpmaddubsw multiplies |q| by the weight with q's sign; pair
 * sums stay within 2 * 127 * 127, so its 16-bit saturation never applies.
 *
 * A block's dot product is exact (integers), and the fp32 sum over blocks runs in block order for every
 * (row, column) in every tile shape, so a row's result does not depend on the other rows in the call; both
 * ISAs do the same per-lane operations, so they give the same bits.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define BLOCK 32 /* activation values per scale */

int int8_vnni_block(void) { return BLOCK; }

#define GROUP 16 /* output columns per packed group (one vpdpbusd lane each; two AVX2 vectors) */
#define CHUNK 6  /* column groups per work item: a multiple of every tile width */

#if defined(__AVX512VNNI__) && defined(__AVX512BW__)
#include <immintrin.h>

int int8_vnni_available(void) { return 1; }
const char *int8_vnni_isa(void) { return "AVX-512 VNNI"; }

/* One row: int8 values, a scale and the weights' offset correction per block. */
static void quantize_row(const float *x, int8_t *q, float *scale, int32_t *corr, int K) {
    const __m512 sign = _mm512_set1_ps(-0.0f);
    for (int b = 0; b < K / BLOCK; b++) {
        const float *p = x + b * BLOCK;
        __m512 lo = _mm512_loadu_ps(p), hi = _mm512_loadu_ps(p + 16);
        float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_andnot_ps(sign, lo), _mm512_andnot_ps(sign, hi)));
        __m512 inv = _mm512_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
        __m512i qlo = _mm512_cvtps_epi32(_mm512_mul_ps(lo, inv)); /* rounds to nearest even */
        __m512i qhi = _mm512_cvtps_epi32(_mm512_mul_ps(hi, inv));
        _mm_storeu_si128((__m128i *)(q + b * BLOCK), _mm512_cvtsepi32_epi8(qlo));
        _mm_storeu_si128((__m128i *)(q + b * BLOCK + 16), _mm512_cvtsepi32_epi8(qhi));
        scale[b] = amax / 127.0f;
        corr[b] = -128 * _mm512_reduce_add_epi32(_mm512_add_epi32(qlo, qhi));
    }
}

static inline __m512i broadcast4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, sizeof v);
    return _mm512_set1_epi32(v);
}

#define DEFINE_TILE(MT, NT)                                                                                        \
    static void tile_##MT##x##NT(const int8_t *qa, const float *sa, const int32_t *corr, const uint8_t *w,         \
                                 const float *wscale, const float *bias, float *y, int m0, int g0, int N, int K) { \
        const int quads = K / 4, blocks = K / BLOCK;                                                               \
        const uint8_t *wg[NT];                                                                                     \
        __m512 acc[MT][NT];                                                                                        \
        for (int j = 0; j < NT; j++) wg[j] = w + (size_t)(g0 + j) * quads * 64;                                    \
        for (int i = 0; i < MT; i++)                                                                               \
            for (int j = 0; j < NT; j++) acc[i][j] = _mm512_setzero_ps();                                          \
        for (int b = 0; b < blocks; b++) {                                                                         \
            __m512i dot[MT][NT];                                                                                   \
            for (int i = 0; i < MT; i++) {                                                                         \
                __m512i start = _mm512_set1_epi32(corr[(size_t)(m0 + i) * blocks + b]);                            \
                for (int j = 0; j < NT; j++) dot[i][j] = start;                                                    \
            }                                                                                                      \
            for (int q = b * (BLOCK / 4); q < (b + 1) * (BLOCK / 4); q++) {                                        \
                __m512i wv[NT];                                                                                    \
                for (int j = 0; j < NT; j++) {                                                                     \
                    wv[j] = _mm512_loadu_si512(wg[j] + (size_t)q * 64);                                            \
                    __builtin_prefetch(wg[j] + ((size_t)NT * quads + q) * 64); /* the next tile's columns */       \
                }                                                                                                  \
                for (int i = 0; i < MT; i++) {                                                                     \
                    __m512i av = broadcast4(qa + (size_t)(m0 + i) * K + 4 * q);                                    \
                    for (int j = 0; j < NT; j++) dot[i][j] = _mm512_dpbusd_epi32(dot[i][j], wv[j], av);            \
                }                                                                                                  \
            }                                                                                                      \
            for (int i = 0; i < MT; i++) {                                                                         \
                __m512 s = _mm512_set1_ps(sa[(size_t)(m0 + i) * blocks + b]);                                      \
                for (int j = 0; j < NT; j++) acc[i][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot[i][j]), s, acc[i][j]); \
            }                                                                                                      \
        }                                                                                                          \
        for (int j = 0; j < NT; j++) {                                                                             \
            int n0 = (g0 + j) * GROUP, valid = N - n0 < GROUP ? N - n0 : GROUP;                                    \
            __mmask16 mask = (__mmask16)((1u << valid) - 1);                                                       \
            __m512 ws = _mm512_maskz_loadu_ps(mask, wscale + n0);                                                  \
            __m512 bs = bias ? _mm512_maskz_loadu_ps(mask, bias + n0) : _mm512_setzero_ps();                       \
            for (int i = 0; i < MT; i++)                                                                           \
                _mm512_mask_storeu_ps(y + (size_t)(m0 + i) * N + n0, mask, _mm512_fmadd_ps(acc[i][j], ws, bs));   \
        }                                                                                                          \
    }

/* Tile widths per row count: accumulators (fp32 and the block's int32) + weights + one input in 32 registers. */
DEFINE_TILE(1, 6)
DEFINE_TILE(2, 3)
DEFINE_TILE(3, 3)
DEFINE_TILE(4, 3)
DEFINE_TILE(1, 1)
DEFINE_TILE(2, 1)
DEFINE_TILE(3, 1)
DEFINE_TILE(4, 1)
typedef void (*tile_fn)(const int8_t *, const float *, const int32_t *, const uint8_t *, const float *,
                        const float *, float *, int, int, int, int);
static const tile_fn tiles[] = {0, tile_1x6, tile_2x3, tile_3x3, tile_4x3};
static const tile_fn singles[] = {0, tile_1x1, tile_2x1, tile_3x1, tile_4x1}; /* a chunk's leftover groups */
static const int widths[] = {0, 6, 3, 3, 3};

/* The same packed weights with fp32 activations (no rounding of x): for the engine's start-up checks of the
 * kernels around the Linear layers, which compare two paths within a tolerance that int8 activations would
 * break (a difference of 1e-6 in an input flips a rounding somewhere and moves the logits by ~1 %). */
void int8_vnni_gemm_fp32_activations(const float *x, const void *w, const float *scale, const float *bias,
                                     float *y, int M, int N, int K, int threads) {
    const int quads = K / 4, groups = (N + GROUP - 1) / GROUP;
    const __m512i low = _mm512_set1_epi32(0xff), offset = _mm512_set1_epi32(128);
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
    for (int m = 0; m < M; m++)
        for (int g = 0; g < groups; g++) {
            const float *xr = x + (size_t)m * K;
            const uint8_t *wg = (const uint8_t *)w + (size_t)g * quads * 64;
            __m512 acc = _mm512_setzero_ps();
            for (int q = 0; q < quads; q++) {
                __m512i wv = _mm512_loadu_si512(wg + (size_t)q * 64);
                for (int t = 0; t < 4; t++) {
                    __m512i wt = _mm512_sub_epi32(_mm512_and_si512(_mm512_srli_epi32(wv, 8 * t), low), offset);
                    acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(wt), _mm512_set1_ps(xr[4 * q + t]), acc);
                }
            }
            int n0 = g * GROUP, valid = N - n0 < GROUP ? N - n0 : GROUP;
            __mmask16 mask = (__mmask16)((1u << valid) - 1);
            __m512 ws = _mm512_maskz_loadu_ps(mask, scale + n0);
            __m512 bs = bias ? _mm512_maskz_loadu_ps(mask, bias + n0) : _mm512_setzero_ps();
            _mm512_mask_storeu_ps(y + (size_t)m * N + n0, mask, _mm512_fmadd_ps(acc, ws, bs));
        }
}
#elif defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>

int int8_vnni_available(void) { return 1; }

#if defined(__AVXVNNI__)
/* AVX-VNNI (Intel client CPUs from Alder Lake on, without AVX-512): vpdpbusd on 256 bits, as on AVX-512 VNNI:
 * the weights as stored (+ 128), each block's accumulators start at -128 * sum(q). */
const char *int8_vnni_isa(void) { return "AVX-VNNI"; }
#define WEIGHTS(v) (v)
#define CORRECTION(sum) (-128 * (sum))
static inline __m256i dot4(__m256i acc, __m256i w, __m256i x) { return _mm256_dpbusd_avx_epi32(acc, w, x); }
#else
const char *int8_vnni_isa(void) { return "AVX2"; }
#define WEIGHTS(v) _mm256_xor_si256(v, _mm256_set1_epi8((char)0x80)) /* back to signed */
#define CORRECTION(sum) 0
/* |x| times w with x's sign: pair sums within 2 * 127 * 127, so vpmaddubsw never saturates */
static inline __m256i dot4(__m256i acc, __m256i w, __m256i x) {
    __m256i pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(w, x));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}
#endif

static inline float hmax8(__m256 v) {
    __m128 h = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    h = _mm_max_ps(h, _mm_movehl_ps(h, h));
    return _mm_cvtss_f32(_mm_max_ss(h, _mm_movehdup_ps(h)));
}

/* One row: int8 values, a scale and the weights' offset correction (AVX-VNNI; 0 on AVX2) per block, with the
 * same roundings as on AVX-512 VNNI. */
static void quantize_row(const float *x, int8_t *q, float *scale, int32_t *corr, int K) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7); /* undo the packs' lane interleaving */
    for (int b = 0; b < K / BLOCK; b++) {
        const float *p = x + b * BLOCK;
        __m256 v0 = _mm256_loadu_ps(p), v1 = _mm256_loadu_ps(p + 8), v2 = _mm256_loadu_ps(p + 16),
               v3 = _mm256_loadu_ps(p + 24);
        __m256 m = _mm256_max_ps(_mm256_max_ps(_mm256_andnot_ps(sign, v0), _mm256_andnot_ps(sign, v1)),
                                 _mm256_max_ps(_mm256_andnot_ps(sign, v2), _mm256_andnot_ps(sign, v3)));
        float amax = hmax8(m);
        __m256 inv = _mm256_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
        __m256i q0 = _mm256_cvtps_epi32(_mm256_mul_ps(v0, inv)), q1 = _mm256_cvtps_epi32(_mm256_mul_ps(v1, inv));
        __m256i q2 = _mm256_cvtps_epi32(_mm256_mul_ps(v2, inv)), q3 = _mm256_cvtps_epi32(_mm256_mul_ps(v3, inv));
        __m256i packed = _mm256_packs_epi16(_mm256_packs_epi32(q0, q1), _mm256_packs_epi32(q2, q3));
        _mm256_storeu_si256((__m256i *)(q + b * BLOCK), _mm256_permutevar8x32_epi32(packed, order));
        scale[b] = amax / 127.0f;
        __m256i sum = _mm256_add_epi32(_mm256_add_epi32(q0, q1), _mm256_add_epi32(q2, q3));
        __m128i half = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
        half = _mm_add_epi32(half, _mm_shuffle_epi32(half, 0x4e));
        half = _mm_add_epi32(half, _mm_shuffle_epi32(half, 0xb1));
        corr[b] = CORRECTION(_mm_cvtsi128_si32(half));
    }
}

static inline __m256i broadcast4(const int8_t *p) {
    int32_t v;
    memcpy(&v, p, sizeof v);
    return _mm256_set1_epi32(v);
}

/* A column group is two vectors of 8 columns (h = 0, 1); accumulators per (row, half). */
#define DEFINE_TILE(MT, NT)                                                                                        \
    static void tile_##MT##x##NT(const int8_t *qa, const float *sa, const int32_t *corr, const uint8_t *w,         \
                                 const float *wscale, const float *bias, float *y, int m0, int g0, int N, int K) { \
        const int quads = K / 4, blocks = K / BLOCK;                                                               \
        const uint8_t *wg[NT];                                                                                     \
        __m256 acc[MT][2 * NT];                                                                                    \
        for (int j = 0; j < NT; j++) wg[j] = w + (size_t)(g0 + j) * quads * 64;                                    \
        for (int i = 0; i < MT; i++)                                                                               \
            for (int h = 0; h < 2 * NT; h++) acc[i][h] = _mm256_setzero_ps();                                      \
        for (int b = 0; b < blocks; b++) {                                                                         \
            __m256i dot[MT][2 * NT];                                                                               \
            for (int i = 0; i < MT; i++) {                                                                         \
                __m256i start = _mm256_set1_epi32(corr[(size_t)(m0 + i) * blocks + b]);                            \
                for (int h = 0; h < 2 * NT; h++) dot[i][h] = start;                                                \
            }                                                                                                      \
            for (int q = b * (BLOCK / 4); q < (b + 1) * (BLOCK / 4); q++) {                                        \
                __m256i wv[2 * NT];                                                                                \
                for (int j = 0; j < NT; j++) {                                                                     \
                    const uint8_t *src = wg[j] + (size_t)q * 64;                                                   \
                    wv[2 * j] = WEIGHTS(_mm256_loadu_si256((const __m256i *)src));                                 \
                    wv[2 * j + 1] = WEIGHTS(_mm256_loadu_si256((const __m256i *)(src + 32)));                      \
                    __builtin_prefetch(wg[j] + ((size_t)NT * quads + q) * 64); /* the next tile's columns */       \
                }                                                                                                  \
                for (int i = 0; i < MT; i++) {                                                                     \
                    __m256i xv = broadcast4(qa + (size_t)(m0 + i) * K + 4 * q);                                    \
                    for (int h = 0; h < 2 * NT; h++) dot[i][h] = dot4(dot[i][h], wv[h], xv);                       \
                }                                                                                                  \
            }                                                                                                      \
            for (int i = 0; i < MT; i++) {                                                                         \
                __m256 s = _mm256_set1_ps(sa[(size_t)(m0 + i) * blocks + b]);                                      \
                for (int h = 0; h < 2 * NT; h++)                                                                   \
                    acc[i][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot[i][h]), s, acc[i][h]);                      \
            }                                                                                                      \
        }                                                                                                          \
        for (int h = 0; h < 2 * NT; h++) {                                                                         \
            int n0 = (g0 + h / 2) * GROUP + 8 * (h % 2), valid = N - n0 < 8 ? N - n0 : 8;                          \
            if (valid <= 0) continue;                                                                              \
            __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(valid), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)); \
            __m256 ws = _mm256_maskload_ps(wscale + n0, mask);                                                     \
            __m256 bs = bias ? _mm256_maskload_ps(bias + n0, mask) : _mm256_setzero_ps();                          \
            for (int i = 0; i < MT; i++)                                                                           \
                _mm256_maskstore_ps(y + (size_t)(m0 + i) * N + n0, mask, _mm256_fmadd_ps(acc[i][h], ws, bs));      \
        }                                                                                                          \
    }

/* 16 vector registers: a group's two weight vectors, two accumulators per row and group, the input. */
DEFINE_TILE(1, 2)
DEFINE_TILE(2, 1)
DEFINE_TILE(3, 1)
DEFINE_TILE(4, 1)
DEFINE_TILE(1, 1)
typedef void (*tile_fn)(const int8_t *, const float *, const int32_t *, const uint8_t *, const float *,
                        const float *, float *, int, int, int, int);
static const tile_fn tiles[] = {0, tile_1x2, tile_2x1, tile_3x1, tile_4x1};
static const tile_fn singles[] = {0, tile_1x1, tile_2x1, tile_3x1, tile_4x1};
static const int widths[] = {0, 2, 1, 1, 1};

void int8_vnni_gemm_fp32_activations(const float *x, const void *w, const float *scale, const float *bias,
                                     float *y, int M, int N, int K, int threads) {
    const int quads = K / 4, halves = 2 * ((N + GROUP - 1) / GROUP);
    const __m256i low = _mm256_set1_epi32(0xff), offset = _mm256_set1_epi32(128);
#pragma omp parallel for collapse(2) schedule(static) num_threads(threads)
    for (int m = 0; m < M; m++)
        for (int h = 0; h < halves; h++) {
            int n0 = (h / 2) * GROUP + 8 * (h % 2), valid = N - n0 < 8 ? N - n0 : 8;
            if (valid <= 0) continue;
            const float *xr = x + (size_t)m * K;
            const uint8_t *wh = (const uint8_t *)w + (size_t)(h / 2) * quads * 64 + 32 * (h % 2);
            __m256 acc = _mm256_setzero_ps();
            for (int q = 0; q < quads; q++) {
                __m256i wv = _mm256_loadu_si256((const __m256i *)(wh + (size_t)q * 64));
                for (int t = 0; t < 4; t++) {
                    __m256i wt = _mm256_sub_epi32(_mm256_and_si256(_mm256_srli_epi32(wv, 8 * t), low), offset);
                    acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(wt), _mm256_set1_ps(xr[4 * q + t]), acc);
                }
            }
            __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(valid), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
            __m256 ws = _mm256_maskload_ps(scale + n0, mask);
            __m256 bs = bias ? _mm256_maskload_ps(bias + n0, mask) : _mm256_setzero_ps();
            _mm256_maskstore_ps(y + (size_t)m * N + n0, mask, _mm256_fmadd_ps(acc, ws, bs));
        }
}
#else
int int8_vnni_available(void) { return 0; }
const char *int8_vnni_isa(void) { return ""; }
#endif

#if defined(__AVX512VNNI__) && defined(__AVX512BW__) || defined(__AVX2__) && defined(__FMA__)
/* Both ISAs: quantize the rows, then tiles over column chunks (the ISA's quantize_row, tiles and widths). */
void int8_vnni_gemm(const float *x, const void *w, const float *scale, const float *bias, float *y, int M, int N,
                    int K, int threads) {
    const int blocks = K / BLOCK, groups = (N + GROUP - 1) / GROUP, chunks = (groups + CHUNK - 1) / CHUNK;
    if (M <= 0 || N <= 0) return; /* malloc(0) may be NULL: not an allocation failure */
    int8_t *qa = malloc((size_t)M * K);
    float *sa = malloc((size_t)M * blocks * sizeof(float));
    int32_t *corr = malloc((size_t)M * blocks * sizeof(int32_t));
    if (!qa || !sa || !corr) abort(); /* as torch does when it cannot allocate: no partial result */
#pragma omp parallel num_threads(threads)
    {
#pragma omp for schedule(static)
        for (int m = 0; m < M; m++)
            quantize_row(x + (size_t)m * K, qa + (size_t)m * K, sa + (size_t)m * blocks, corr + (size_t)m * blocks, K);
#pragma omp for schedule(static)
        for (int c = 0; c < chunks; c++) {
            int g0 = c * CHUNK, g1 = g0 + CHUNK < groups ? g0 + CHUNK : groups;
            for (int m0 = 0; m0 < M; m0 += 4) {
                int rows = M - m0 < 4 ? M - m0 : 4, width = widths[rows], g = g0;
                for (; g + width <= g1; g += width) tiles[rows](qa, sa, corr, w, scale, bias, y, m0, g, N, K);
                for (; g < g1; g++) singles[rows](qa, sa, corr, w, scale, bias, y, m0, g, N, K);
            }
        }
    }
    free(qa);
    free(sa);
    free(corr);
}
#endif
