/* stream_probe.c -- could a bf16 one-query product (m = 2: one query under CFG) stream its weights
 * closer to the plain read rate with another weight layout (issue 13, BENCHMARKS.md "Stop 23")?
 * Synthetic kernels with the skinny kernel's arithmetic (bf16 widened by vpmovzxwd + vpslld,
 * 2 x 4 fused multiply-add chains), each thread on its own share of a 32 MiB product, products
 * cycled through 1 GiB so that every one reads from memory:
 *   read    a plain AVX-512 sum (what csrc/probe.c measures);
 *   lanes   4 sequential streams of row-major rows, the next tile's rows prefetched (T0) over
 *           the K loop: the layout and prefetch of the real kernel (run_lanes in csrc/matmul.c);
 *   packed  4 rows interleaved per 16 elements, one sequential stream per thread, prefetched
 *           D bytes ahead (T0 or T1) or not at all.
 * Rounds visit every variant in turn; median and best GB/s.
 *
 *     gcc -O2 -fopenmp -mavx512f -mavx512bw -mfma benchmarks/stream_probe.c -o /tmp/stream
 *     OMP_NUM_THREADS=2 taskset -c 0,1 /tmp/stream [rounds, default 20]
 *
 * Output of the device run: benchmarks/results/device_run_s23_2026-11-30.txt (run A). */
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "probe.h"

static inline __m512 wl(const void *p) {
    return _mm512_castsi512_ps(
        _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}
static float sink;
/* plain read: sum of floats */
static float k_read(const char *a, size_t bytes, int pf) {
    (void)pf;
    __m512 s0 = _mm512_setzero_ps(), s1 = s0, s2 = s0, s3 = s0;
    for (size_t i = 0; i < bytes; i += 256) {
        s0 = _mm512_add_ps(s0, _mm512_load_ps((const float *)(a + i)));
        s1 = _mm512_add_ps(s1, _mm512_load_ps((const float *)(a + i + 64)));
        s2 = _mm512_add_ps(s2, _mm512_load_ps((const float *)(a + i + 128)));
        s3 = _mm512_add_ps(s3, _mm512_load_ps((const float *)(a + i + 192)));
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(s0, s1), _mm512_add_ps(s2, s3)));
}
static const float *X; /* 2 rows of K floats */
static int K = 1024;
/* 4 lanes of row-major rows (row = K bf16), tile t: row t of each lane; prefetch next tile's rows
 * (T0), one line per 64 bytes spread over the K loop (the real kernel's scheme) */
static float k_lanes(const char *a, size_t bytes, int pf) {
    size_t row = (size_t)K * 2, rows = bytes / row, T = rows / 4;
    float tot = 0;
    for (size_t t = 0; t < T; t++) {
        const char *w[4], *n[4];
        for (int c = 0; c < 4; c++) w[c] = a + (c * T + t) * row, n[c] = w[c] + row;
        __m512 acc[2][4];
        for (int r = 0; r < 2; r++)
            for (int c = 0; c < 4; c++) acc[r][c] = _mm512_setzero_ps();
        for (int k = 0; k < K; k += 16) {
            if (pf && (k & 31) == 0 && t + 1 < T)
                for (int c = 0; c < 4; c++) _mm_prefetch(n[c] + k * 2, _MM_HINT_T0);
            __m512 x0 = _mm512_loadu_ps(X + k), x1 = _mm512_loadu_ps(X + K + k);
            for (int c = 0; c < 4; c++) {
                __m512 v = wl(w[c] + k * 2);
                acc[0][c] = _mm512_fmadd_ps(x0, v, acc[0][c]);
                acc[1][c] = _mm512_fmadd_ps(x1, v, acc[1][c]);
            }
        }
        for (int c = 0; c < 4; c++) tot += _mm512_reduce_add_ps(_mm512_add_ps(acc[0][c], acc[1][c]));
    }
    return tot;
}
/* packed: group g = 4 rows, [kb][c][16] blocks of 32 bytes: 128 bytes per K step, sequential.
 * pf: prefetch distance in bytes (0: none), one line per 64 bytes; hint T0 if pf > 0, T1 if < 0 */
static float k_packed(const char *a, size_t bytes, int pf) {
    size_t gbytes = (size_t)K * 8, G = bytes / gbytes;
    int d = pf < 0 ? -pf : pf;
    float tot = 0;
    const char *end = a + bytes;
    for (size_t g = 0; g < G; g++) {
        const char *w = a + g * gbytes;
        __m512 acc[2][4];
        for (int r = 0; r < 2; r++)
            for (int c = 0; c < 4; c++) acc[r][c] = _mm512_setzero_ps();
        for (int k = 0; k < K; k += 16, w += 128) {
            if (d && w + d < end) {
                if (pf > 0)
                    _mm_prefetch(w + d, _MM_HINT_T0), _mm_prefetch(w + d + 64, _MM_HINT_T0);
                else
                    _mm_prefetch(w + d, _MM_HINT_T1), _mm_prefetch(w + d + 64, _MM_HINT_T1);
            }
            __m512 x0 = _mm512_loadu_ps(X + k), x1 = _mm512_loadu_ps(X + K + k);
            for (int c = 0; c < 4; c++) {
                __m512 v = wl(w + 32 * c);
                acc[0][c] = _mm512_fmadd_ps(x0, v, acc[0][c]);
                acc[1][c] = _mm512_fmadd_ps(x1, v, acc[1][c]);
            }
        }
        for (int c = 0; c < 4; c++) tot += _mm512_reduce_add_ps(_mm512_add_ps(acc[0][c], acc[1][c]));
    }
    return tot;
}
typedef float (*kfn)(const char *, size_t, int);
static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}
int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 20;
    rounds = rounds < 1 ? 1 : rounds > 200 ? 200 : rounds; /* the rows of t below */
    int nth = omp_get_max_threads();
    const size_t part = (size_t)32 << 20; /* bytes per product (all threads) */
    const size_t share = part / nth / 65536 * 65536; /* each thread's, in whole 64 KiB */
    const size_t total = (size_t)1 << 30;
    const int copies = total / part;
    char *buf = aligned_alloc(4096, total);
    for (size_t i = 0; i < total; i += 2) {
        uint16_t v = 0x3c00u | (i >> 1 & 0x3ffu);
        memcpy(buf + i, &v, 2);
    }
    float *x = aligned_alloc(64, 2 * 4096 * 4);
    for (int i = 0; i < 2 * 4096; i++) x[i] = 0.001f * (i % 97);
    X = x;
    struct { const char *name; kfn f; int pf, K; } v[] = {
        {"read", k_read, 0, 1024},
        {"lanes pf K=1024", k_lanes, 1, 1024},
        {"lanes nopf K=1024", k_lanes, 0, 1024},
        {"packed nopf K=1024", k_packed, 0, 1024},
        {"packed T0 1K K=1024", k_packed, 1024, 1024},
        {"packed T0 2K K=1024", k_packed, 2048, 1024},
        {"packed T0 4K K=1024", k_packed, 4096, 1024},
        {"packed T1 4K K=1024", k_packed, -4096, 1024},
        {"packed T1 8K K=1024", k_packed, -8192, 1024},
        {"lanes pf K=768", k_lanes, 1, 768},
        {"packed T0 2K K=768", k_packed, 2048, 768},
    };
    enum { NV = sizeof(v) / sizeof(v[0]) };
    static double t[NV][200];
    int next = 0;
    for (int r = 0; r < rounds; r++)
        for (int i = 0; i < NV; i++) {
            K = v[i].K;
            const char *a = buf + (size_t)(next++ % copies) * part;
            double s0 = now();
#pragma omp parallel
            {
                int id = omp_get_thread_num();
                float f = v[i].f(a + id * share, share, v[i].pf);
#pragma omp atomic
                sink += f;
            }
            t[i][r] = (double)share * nth / (now() - s0) * 1e-9;
        }
    printf("stream: %d threads, %d rounds, 32 MiB products cycled through 1 GiB, GB/s median / best\n",
           nth, rounds);
    for (int i = 0; i < NV; i++) {
        qsort(t[i], rounds, sizeof(double), cmp);
        printf("  %-22s %6.1f  %6.1f\n", v[i].name, t[i][rounds / 2], t[i][rounds - 1]);
    }
    return 0;
}
