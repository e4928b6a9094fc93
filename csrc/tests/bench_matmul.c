/* bench_matmul.c -- decode-shaped products y (m, N) = x (m, K) . w^T with w not in cache.
 *
 * For each weight shape, several copies of w totalling > 256 MiB are cycled through, so every
 * product reads its w from memory (L3 is 32 MiB). Reported per m: ms per product of the
 * skinny kernel (fastest call), the weight bytes read per second, that as a fraction of the
 * machine's read
 * bandwidth (an AVX-512 streaming sum over 512 MiB, measured in the same run), t(m) / t(1), and
 * OpenBLAS sgemm on the same operands for comparison. Also the 2-thread AVX-512 FMA peak, the
 * compute ceiling once m is large enough.
 *
 * Run: make -C csrc/tests bench   (all OpenMP threads; OMP_NUM_THREADS changes that)
 *      build/<blas>/bench_matmul K N   (one of the shapes only)
 */
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../matmul.h"

#define AVX512 __attribute__((target("avx512f")))

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static float *alloc_floats(size_t n) {
    size_t bytes = (n * sizeof(float) + 63) / 64 * 64;
    float *a = aligned_alloc(64, bytes);
    if (!a) {
        fprintf(stderr, "out of memory (%zu bytes)\n", bytes);
        exit(1);
    }
    uint32_t state = 12345u + (uint32_t)n;
    for (size_t i = 0; i < n; i++) { /* small values in [-1, 1): touches every page */
        state = state * 1664525u + 1013904223u;
        a[i] = (float)(state >> 8) / (float)(1u << 23) - 1.0f;
    }
    return a;
}

/* ---------------------------------------------------------------- machine limits */
/* Sum of a[0 .. n) with AVX-512 loads and 8 independent accumulators (one thread's share). */
static AVX512 float stream_sum(const float *a, size_t n) {
    __m512 s[8];
    for (int j = 0; j < 8; j++) s[j] = _mm512_setzero_ps();
    for (size_t i = 0; i + 128 <= n; i += 128) {
        /* 4 KiB ahead: more than the hardware prefetcher alone reaches on Zen 5 */
        for (int j = 0; j < 8; j++) {
            _mm_prefetch((const char *)(a + i + 1024 + 16 * j), _MM_HINT_T0);
            s[j] = _mm512_add_ps(s[j], _mm512_load_ps(a + i + 16 * j));
        }
    }
    for (int j = 1; j < 8; j++) s[0] = _mm512_add_ps(s[0], s[j]);
    return _mm512_reduce_add_ps(s[0]);
}

/* Best of 10 passes over 512 MiB, split between the threads: bytes per second. */
static double read_bandwidth(int threads) {
    const size_t n = (size_t)512 << 18; /* floats in 512 MiB */
    float *a = alloc_floats(n);
    double best = 0.0, sink = 0.0;
    for (int rep = 0; rep < 10; rep++) {
        double t0 = now();
#pragma omp parallel num_threads(threads) reduction(+ : sink)
        {
            size_t share = n / (size_t)omp_get_num_threads() / 128 * 128;
            sink += stream_sum(a + share * (size_t)omp_get_thread_num(), share);
        }
        double bw = (double)(n * sizeof(float)) / (now() - t0);
        best = bw > best ? bw : best;
    }
    free(a);
    if (sink == 12345.0) printf("(sink)\n");
    return best;
}

/* Register-only FMA throughput with 12 independent chains per thread: multiply-adds per second
 * over all threads (one 512-bit FMA = 16). */
static AVX512 __attribute__((target("fma"))) double fma_peak_thread(long iters) {
    __m512 s[12], a = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(1e-3f);
    for (int j = 0; j < 12; j++) s[j] = _mm512_set1_ps((float)j);
    for (long i = 0; i < iters; i++)
        for (int j = 0; j < 12; j++) s[j] = _mm512_fmadd_ps(s[j], a, b);
    for (int j = 1; j < 12; j++) s[0] = _mm512_add_ps(s[0], s[j]);
    return (double)_mm512_reduce_add_ps(s[0]);
}

static double fma_peak(int threads) {
    const long iters = 20 * 1000 * 1000;
    double best = 0.0, sink = 0.0;
    for (int rep = 0; rep < 3; rep++) {
        double t0 = now();
#pragma omp parallel num_threads(threads) reduction(+ : sink)
        sink += fma_peak_thread(iters);
        double rate = (double)threads * iters * 12 * 16 / (now() - t0);
        best = rate > best ? rate : best;
    }
    if (sink == 12345.0) printf("(sink)\n");
    return best;
}

/* ---------------------------------------------------------------- products */
/* Fastest seconds per product for each m of ms, over rounds that visit every m in turn (so a
 * noisy period on a shared machine hits all m alike), cycling through the copies of w so every
 * product reads its w from memory. blas_min_rows picks the path. About `budget` seconds. */
static void time_products(double *best, const int *ms, int n_ms, float *y, const float *x,
                          float *const *w, int copies, int K, int N, int blas_min_rows,
                          double budget) {
    int saved = zp_get_blas_min_rows(), next = 0;
    zp_set_blas_min_rows(blas_min_rows);
    double t0 = now();
    for (int i = 0; i < n_ms; i++) /* warm-up round, also sizes the run */
        zp_matmul(y, x, w[next++ % copies], ms[i], K, N);
    double round = now() - t0;
    int rounds = (int)(budget / (round > 1e-6 ? round : 1e-6));
    rounds = rounds < 2 * copies ? 2 * copies : rounds > 1000 ? 1000 : rounds;
    for (int i = 0; i < n_ms; i++) best[i] = 1e30;
    for (int r = 0; r < rounds; r++)
        for (int i = 0; i < n_ms; i++) {
            const float *wr = w[next++ % copies];
            double s = now();
            zp_matmul(y, x, wr, ms[i], K, N);
            double t = now() - s;
            best[i] = t < best[i] ? t : best[i];
        }
    zp_set_blas_min_rows(saved);
}

int main(int argc, char **argv) {
    static const int shapes[][2] = {{768, 2304}, {768, 16384}, {2048, 768}, {4096, 11008}};
    static const int ms[] = {1, 2, 4, 8, 16, 32, 64};
    const int n_ms = (int)(sizeof ms / sizeof ms[0]);
    const size_t rotation_bytes = (size_t)320 << 20;
    int threads = zp_get_num_threads();

    const char *wait_policy = getenv("OMP_WAIT_POLICY");
    printf("bench_matmul: kernel %s, %d threads, OMP_WAIT_POLICY=%s, blas %s\n", zp_matmul_isa(),
           threads, wait_policy ? wait_policy : "(unset)", zp_blas_name());
    printf("FMA peak (%d threads): %.0f GFLOP/s\n", threads, 2 * fma_peak(threads) * 1e-9);

    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int K = shapes[s][0], N = shapes[s][1];
        if (argc == 3 && (K != atoi(argv[1]) || N != atoi(argv[2])))
            continue; /* `bench_matmul K N` runs one shape */
        size_t w_bytes = (size_t)K * N * sizeof(float);
        int copies = (int)((rotation_bytes + w_bytes - 1) / w_bytes);
        copies = copies < 2 ? 2 : copies;
        float **w = malloc(sizeof(float *) * (size_t)copies);
        for (int c = 0; c < copies; c++) w[c] = alloc_floats((size_t)K * N);
        float *x = alloc_floats((size_t)64 * K), *y = alloc_floats((size_t)64 * N);
        double bw = read_bandwidth(threads); /* just before, so that both see the same machine */

        printf("\nK=%d N=%d: w %.1f MB, %d copies (%.0f MB); read bandwidth (AVX-512 sum over "
               "512 MiB, %d threads) %.1f GB/s: floor %.3f ms\n",
               K, N, w_bytes * 1e-6, copies, copies * w_bytes * 1e-6, threads, bw * 1e-9,
               w_bytes / bw * 1e3);
        printf("   m   skinny ms   w GB/s  of read BW  t(m)/t(1)  GFLOP/s   sgemm ms"
               "  sgemm/skinny\n");
        double t_skinny[sizeof ms / sizeof ms[0]], t_blas[sizeof ms / sizeof ms[0]];
        time_products(t_skinny, ms, n_ms, y, x, w, copies, K, N, 1 << 30, 1.5);
        time_products(t_blas, ms, n_ms, y, x, w, copies, K, N, 1, 1.0);
        for (int i = 0; i < n_ms; i++) {
            double t = t_skinny[i], tb = t_blas[i];
            printf("%4d  %10.4f  %7.1f  %9.0f%%  %9.2f  %7.1f  %9.4f  %8.2f\n", ms[i], t * 1e3,
                   w_bytes / t * 1e-9, 100.0 * w_bytes / t / bw, t / t_skinny[0],
                   2.0 * ms[i] * K * N / t * 1e-9, tb * 1e3, tb / t);
        }
        for (int c = 0; c < copies; c++) free(w[c]);
        free(w), free(x), free(y);
    }
    return 0;
}
