/* probe.c -- measures the machine's read bandwidth, so benchmarks can state what fraction of it
 * a forward pass reaches (in the same run, on the same noisy machine). */
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "internal.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* Sum of n floats with four AVX-512 accumulators (the loads are what is measured). */
__attribute__((target("avx512f"))) static float sum_avx512(const float *a, size_t n) {
    __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {
        s0 = _mm512_add_ps(s0, _mm512_load_ps(a + i));
        s1 = _mm512_add_ps(s1, _mm512_load_ps(a + i + 16));
        s2 = _mm512_add_ps(s2, _mm512_load_ps(a + i + 32));
        s3 = _mm512_add_ps(s3, _mm512_load_ps(a + i + 48));
    }
    float s = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
    for (; i < n; i++) s += a[i];
    return s;
}

/* The same with eight AVX2 accumulators: the plain loop below is bound by its four dependent
 * chains of scalar adds (about 10 GB/s on two AVX2 cores), not by memory. */
__attribute__((target("avx2"))) static float sum_avx2(const float *a, size_t n) {
    __m256 s[8];
    for (int j = 0; j < 8; j++) s[j] = _mm256_setzero_ps();
    size_t i = 0;
    for (; i + 64 <= n; i += 64)
        for (int j = 0; j < 8; j++) s[j] = _mm256_add_ps(s[j], _mm256_load_ps(a + i + 8 * j));
    for (int j = 1; j < 8; j++) s[0] = _mm256_add_ps(s[0], s[j]);
    float lanes[8], t = 0.f;
    _mm256_storeu_ps(lanes, s[0]);
    for (int j = 0; j < 8; j++) t += lanes[j];
    for (; i < n; i++) t += a[i];
    return t;
}

static float sum_plain(const float *a, size_t n) {
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += a[i];
        s1 += a[i + 1];
        s2 += a[i + 2];
        s3 += a[i + 3];
    }
    for (; i < n; i++) s0 += a[i];
    return s0 + s1 + s2 + s3;
}

/* Best-of-reps read bandwidth in GB/s over a buffer of `bytes`, all OpenMP threads reading
 * disjoint chunks. Returns a negative value when the buffer cannot be allocated. */
double zp_read_bandwidth(size_t bytes, int reps) {
    size_t n = bytes / sizeof(float);
    n -= n % 1024;
    float *a = aligned_alloc(64, n * sizeof(float));
    if (!a) return -1.0;
    for (size_t i = 0; i < n; i++) a[i] = (float)(i & 7);
    int avx512 = __builtin_cpu_supports("avx512f"), avx2 = __builtin_cpu_supports("avx2");
    double best = 0.0;
    volatile float sink = 0.f;
    for (int r = 0; r < (reps > 0 ? reps : 1); r++) {
        double t0 = now_s();
        float total = 0.f;
#pragma omp parallel reduction(+ : total)
        {
            int nt = 1, id = 0;
#ifdef _OPENMP
            nt = omp_get_num_threads();
            id = omp_get_thread_num();
#endif
            size_t chunk = (n / nt) & ~(size_t)63, lo = chunk * id,
                   hi = id == nt - 1 ? n : lo + chunk;
            total += avx512 ? sum_avx512(a + lo, hi - lo)
                     : avx2 ? sum_avx2(a + lo, hi - lo)
                            : sum_plain(a + lo, hi - lo);
        }
        double dt = now_s() - t0;
        sink += total;
        double gbs = n * sizeof(float) / dt / 1e9;
        if (gbs > best) best = gbs;
    }
    (void)sink;
    free(a);
    return best;
}
