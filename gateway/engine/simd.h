/* Vector helpers shared by the decode kernels (decode_attention.c, decode_layers.c): the machine's vector
 * width, lane sums and a vector exp. GCC/Clang vector extensions; the x86 reductions are named. */
#ifndef GANTRY_SIMD_H
#define GANTRY_SIMD_H

#include <math.h>
#include <stddef.h>
#include <string.h>

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

/* The lane sums of four vectors at once (out[0..3]): one transposing reduction instead of four. */
#if defined(__AVX512F__)
static inline void hsum4(vf a, vf b, vf c, vf d, float *out) {
    __m512 t0 = _mm512_add_ps(_mm512_unpacklo_ps((__m512)a, (__m512)b), _mm512_unpackhi_ps((__m512)a, (__m512)b));
    __m512 t1 = _mm512_add_ps(_mm512_unpacklo_ps((__m512)c, (__m512)d), _mm512_unpackhi_ps((__m512)c, (__m512)d));
    __m512d lo = _mm512_unpacklo_pd(_mm512_castps_pd(t0), _mm512_castps_pd(t1));
    __m512d hi = _mm512_unpackhi_pd(_mm512_castps_pd(t0), _mm512_castps_pd(t1));
    __m512 t = _mm512_add_ps(_mm512_castpd_ps(lo), _mm512_castpd_ps(hi)); /* each 128-bit lane: a, b, c, d */
    __m256 high = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(t), 1));
    __m256 h = _mm256_add_ps(_mm512_castps512_ps256(t), high);
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1)));
}
#elif defined(__AVX__)
static inline void hsum4(vf a, vf b, vf c, vf d, float *out) {
    __m256 t0 = _mm256_add_ps(_mm256_unpacklo_ps((__m256)a, (__m256)b), _mm256_unpackhi_ps((__m256)a, (__m256)b));
    __m256 t1 = _mm256_add_ps(_mm256_unpacklo_ps((__m256)c, (__m256)d), _mm256_unpackhi_ps((__m256)c, (__m256)d));
    __m256d lo = _mm256_unpacklo_pd(_mm256_castps_pd(t0), _mm256_castps_pd(t1));
    __m256d hi = _mm256_unpackhi_pd(_mm256_castps_pd(t0), _mm256_castps_pd(t1));
    __m256 t = _mm256_add_ps(_mm256_castpd_ps(lo), _mm256_castpd_ps(hi)); /* each 128-bit lane: a, b, c, d */
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1)));
}
#else
static inline void hsum4(vf a, vf b, vf c, vf d, float *out) {
    out[0] = hsum(a), out[1] = hsum(b), out[2] = hsum(c), out[3] = hsum(d);
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

#endif
