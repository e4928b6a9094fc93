/* bench_kernels.c -- the products of one transformer layer (LlamaGen GPT-B and GPT-L shapes) for
 * float32 and bf16 weights, against the limits of the machine it runs on, measured in the same
 * run: the FMA peak (register-only fused multiply-adds on every thread, with the widest vectors
 * the matmul kernel uses) and the read bandwidth (streaming sum over 512 MiB).
 *
 * A "layer" is what zp_forward calls per layer: qkv (dim -> 3 dim), wo (dim -> dim), w1 and w3
 * fused in one zp_matmul_multi (dim -> hidden, twice), w2 (hidden -> dim). Per m (rows of the
 * pass) it prints ms per layer and
 *   - cold: several copies of the layer's weights (> 256 MiB) are cycled through, so every
 *     product reads its weights from memory, as a decode pass does: weight GB/s and its fraction
 *     of the read bandwidth (the limit of few-row passes), GFLOP/s and its fraction of the FMA
 *     peak (the limit of many-row passes);
 *   - hot: one copy, reused (as far as the caches hold it): the fraction of the FMA peak that the
 *     kernel reaches once memory is out of the way;
 *   - 4-col tile: hot again with the wide AVX-512 tile switched off (same bits, other speed);
 *   - sgemm: OpenBLAS on the same cold float32 products, for comparison (m >= 8).
 * Plus, at m = 1, the layer with w1 and w3 as two separate calls (two thread teams) against the
 * fused call.
 *
 * Run: make -C csrc/tests bench-kernels  (all OpenMP threads; OMP_NUM_THREADS=2 taskset -c 0,1
 *      for two); `bench_kernels quick` for a short run.
 */
#include <immintrin.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../blas.h"
#include "../matmul.h"
#include "bench_layer.h"

/* ---------------------------------------------------------------- machine limits */
__attribute__((target("avx512f"))) static float stream_sum_avx512(const float *a, size_t n) {
    __m512 s[8];
    for (int j = 0; j < 8; j++) s[j] = _mm512_setzero_ps();
    for (size_t i = 0; i + 128 <= n; i += 128)
        for (int j = 0; j < 8; j++) {
            _mm_prefetch((const char *)(a + i + 1024 + 16 * j), _MM_HINT_T0);
            s[j] = _mm512_add_ps(s[j], _mm512_load_ps(a + i + 16 * j));
        }
    for (int j = 1; j < 8; j++) s[0] = _mm512_add_ps(s[0], s[j]);
    return _mm512_reduce_add_ps(s[0]);
}

__attribute__((target("avx2"))) static float stream_sum_avx2(const float *a, size_t n) {
    __m256 s[8];
    for (int j = 0; j < 8; j++) s[j] = _mm256_setzero_ps();
    for (size_t i = 0; i + 64 <= n; i += 64)
        for (int j = 0; j < 8; j++) {
            _mm_prefetch((const char *)(a + i + 1024 + 8 * j), _MM_HINT_T0);
            s[j] = _mm256_add_ps(s[j], _mm256_load_ps(a + i + 8 * j));
        }
    for (int j = 1; j < 8; j++) s[0] = _mm256_add_ps(s[0], s[j]);
    float out[8];
    _mm256_storeu_ps(out, s[0]);
    return out[0] + out[1] + out[2] + out[3] + out[4] + out[5] + out[6] + out[7];
}

static int wide_isa(void) {
    return strcmp(zp_matmul_isa(), "avx512") == 0 || strcmp(zp_matmul_isa(), "amx") == 0;
}

/* Best of 5 passes over `mib` MiB split between the threads: bytes per second. */
static double read_bandwidth(int threads, size_t mib) {
    const size_t n = mib << 18;
    float *a = alloc_bytes(n * sizeof(float));
#pragma omp parallel for num_threads(threads) schedule(static)
    for (size_t i = 0; i < n; i++) a[i] = (float)(i & 7);
    double best = 0.0, sink = 0.0;
    for (int rep = 0; rep < 5; rep++) {
        double t0 = now();
#pragma omp parallel num_threads(threads) reduction(+ : sink)
        {
            size_t share = n / (size_t)omp_get_num_threads() / 128 * 128;
            const float *p = a + share * (size_t)omp_get_thread_num();
            sink += wide_isa() ? stream_sum_avx512(p, share) : stream_sum_avx2(p, share);
        }
        double bw = (double)(n * sizeof(float)) / (now() - t0);
        best = bw > best ? bw : best;
    }
    free(a);
    if (sink == 12345.0) printf("(sink)\n");
    return best;
}

/* 12 independent multiply-add chains per thread, in registers the compiler cannot spill (inline
 * asm operands): s_j += a * b. */
#define ZP_FMA12(insn, r)                                                                          \
    __asm__ volatile(insn " %[b], %[a], %[s0]\n\t" insn " %[b], %[a], %[s1]\n\t" insn              \
                          " %[b], %[a], %[s2]\n\t" insn " %[b], %[a], %[s3]\n\t" insn              \
                          " %[b], %[a], %[s4]\n\t" insn " %[b], %[a], %[s5]\n\t" insn              \
                          " %[b], %[a], %[s6]\n\t" insn " %[b], %[a], %[s7]\n\t" insn              \
                          " %[b], %[a], %[s8]\n\t" insn " %[b], %[a], %[s9]\n\t" insn              \
                          " %[b], %[a], %[s10]\n\t" insn " %[b], %[a], %[s11]\n\t"                 \
                     : [s0] "+" r(s[0]), [s1] "+" r(s[1]), [s2] "+" r(s[2]), [s3] "+" r(s[3]),     \
                       [s4] "+" r(s[4]), [s5] "+" r(s[5]), [s6] "+" r(s[6]), [s7] "+" r(s[7]),     \
                       [s8] "+" r(s[8]), [s9] "+" r(s[9]), [s10] "+" r(s[10]), [s11] "+" r(s[11])  \
                     : [a] r(a), [b] r(b))

__attribute__((target("avx512f,fma"))) static double fma_avx512(long iters) {
    __m512 s[12], a = _mm512_set1_ps(0.999f), b = _mm512_set1_ps(1e-3f);
    for (int j = 0; j < 12; j++) s[j] = _mm512_set1_ps((float)j);
    for (long i = 0; i < iters; i++) ZP_FMA12("vfmadd231ps", "v");
    for (int j = 1; j < 12; j++) s[0] = _mm512_add_ps(s[0], s[j]);
    return (double)_mm512_reduce_add_ps(s[0]);
}

__attribute__((target("avx2,fma"))) static double fma_avx2(long iters) {
    __m256 s[12], a = _mm256_set1_ps(0.999f), b = _mm256_set1_ps(1e-3f);
    for (int j = 0; j < 12; j++) s[j] = _mm256_set1_ps((float)j);
    for (long i = 0; i < iters; i++) ZP_FMA12("vfmadd231ps", "x");
    for (int j = 1; j < 12; j++) s[0] = _mm256_add_ps(s[0], s[j]);
    return (double)_mm256_cvtss_f32(s[0]);
}

/* FLOP/s (2 per multiply-add) over all threads: best of 4 runs of about 0.1-0.3 s each (long
 * enough for the clock to settle; main measures it at the start and at the end). */
static double fma_peak(int threads) {
    const long iters = 40 * 1000 * 1000;
    int lanes = wide_isa() ? 16 : 8;
    double best = 0.0, sink = 0.0;
    for (int rep = 0; rep < 4; rep++) {
        double t0 = now();
#pragma omp parallel num_threads(threads) reduction(+ : sink)
        sink += wide_isa() ? fma_avx512(iters) : fma_avx2(iters);
        double rate = 2.0 * threads * iters * 12 * lanes / (now() - t0);
        best = rate > best ? rate : best;
    }
    if (sink == 12345.0) printf("(sink)\n");
    return best;
}

/* ---------------------------------------------------------------- one layer */
typedef struct {
    const char *name;
    int dim, hidden;
} zp_shape;

typedef struct {
    float *qkv, *att, *h1, *h3, *out;
} zp_acts;

enum { MODE_FUSED, MODE_SPLIT, MODE_SGEMM };

static void run_layer(const zp_shape *s, const zp_layer *L, zp_acts *a, int wtype, int m,
                      int mode) {
    int D = s->dim, H = s->hidden;
    if (mode == MODE_SGEMM) {
        ZP_BLAS_FN(cblas_sgemm)
        (ZP_BLAS_ROW_MAJOR, ZP_BLAS_NO_TRANS, ZP_BLAS_TRANS, m, 3 * D, D, 1.0f, a->att, D, L->wqkv,
         D, 0.0f, a->qkv, 3 * D);
        ZP_BLAS_FN(cblas_sgemm)
        (ZP_BLAS_ROW_MAJOR, ZP_BLAS_NO_TRANS, ZP_BLAS_TRANS, m, D, D, 1.0f, a->att, D, L->wo, D,
         0.0f, a->out, D);
        ZP_BLAS_FN(cblas_sgemm)
        (ZP_BLAS_ROW_MAJOR, ZP_BLAS_NO_TRANS, ZP_BLAS_TRANS, m, H, D, 1.0f, a->att, D, L->w1, D,
         0.0f, a->h1, H);
        ZP_BLAS_FN(cblas_sgemm)
        (ZP_BLAS_ROW_MAJOR, ZP_BLAS_NO_TRANS, ZP_BLAS_TRANS, m, H, D, 1.0f, a->att, D, L->w3, D,
         0.0f, a->h3, H);
        ZP_BLAS_FN(cblas_sgemm)
        (ZP_BLAS_ROW_MAJOR, ZP_BLAS_NO_TRANS, ZP_BLAS_TRANS, m, D, H, 1.0f, a->h1, H, L->w2, H,
         0.0f, a->out, D);
        return;
    }
    layer_products(D, H, L, wtype, m, a->att, a->qkv, a->out, a->h1, a->h3, mode == MODE_FUSED);
}

/* Fastest seconds per layer for each m, over rounds that visit every m in turn, cycling through
 * `copies` layers (1: hot). About `budget` seconds. */
static void time_layers(double *best, const int *ms, int n_ms, const zp_shape *s,
                        const zp_layer *layers, int copies, zp_acts *a, int wtype, int mode,
                        double budget) {
    int next = 0;
    double t0 = now();
    for (int i = 0; i < n_ms; i++) run_layer(s, &layers[next++ % copies], a, wtype, ms[i], mode);
    double round = now() - t0;
    int rounds = (int)(budget / (round > 1e-6 ? round : 1e-6));
    rounds = rounds < 3 ? 3 : rounds > 400 ? 400 : rounds;
    for (int i = 0; i < n_ms; i++) best[i] = 1e30;
    for (int r = 0; r < rounds; r++)
        for (int i = 0; i < n_ms; i++) {
            const zp_layer *L = &layers[next++ % copies];
            double t = now();
            run_layer(s, L, a, wtype, ms[i], mode);
            t = now() - t;
            best[i] = t < best[i] ? t : best[i];
        }
}

/* m = 1: fused (one zp_matmul_multi for w1, w3) and split (two calls) layers, interleaved on
 * the cycled copies: best seconds of each. */
static void time_fused_split(double *fused, double *split, const zp_shape *s,
                             const zp_layer *layers, int copies, zp_acts *a, int wtype, int m,
                             double budget) {
    int next = 0;
    *fused = *split = 1e30;
    double t_end = now() + budget;
    for (int r = 0; r < 6 || now() < t_end; r++)
        for (int mode = MODE_FUSED; mode <= MODE_SPLIT; mode++) {
            double t = now();
            run_layer(s, &layers[next++ % copies], a, wtype, m, mode);
            t = now() - t;
            double *best = mode == MODE_FUSED ? fused : split;
            *best = t < *best ? t : *best;
        }
}

int main(int argc, char **argv) {
    static const zp_shape shapes[] = {{"GPT-B", 768, 2048}, {"GPT-L", 1024, 2816}};
    static const int ms[] = {1, 2, 8, 32, 64, 128};
    enum { N_MS = sizeof ms / sizeof ms[0], M_MAX = 128 };
    int quick = argc > 1 && strcmp(argv[1], "quick") == 0;
    double budget = quick ? 0.4 : 1.5;
    int threads = zp_get_num_threads();

    printf("bench_kernels: kernel %s, %d threads, blas %s\n", zp_matmul_isa(), threads,
           zp_blas_name());
    size_t rotation_mib = quick ? 320 : 1024; /* weights cycled per shape: > any L3 */
    double peak = fma_peak(threads), bw = read_bandwidth(threads, rotation_mib);
    long l3 = sysconf(_SC_LEVEL3_CACHE_SIZE);
    printf("FMA peak (%d threads, %d-lane FMA): %.0f GFLOP/s; read bandwidth (%zu MiB): %.1f GB/s; "
           "L3 %.0f MiB\n",
           threads, wide_isa() ? 16 : 8, peak * 1e-9, rotation_mib, bw * 1e-9,
           l3 > 0 ? l3 / 1048576.0 : -1.0);

    for (size_t si = 0; si < sizeof shapes / sizeof shapes[0]; si++) {
        const zp_shape *s = &shapes[si];
        int D = s->dim, H = s->hidden;
        size_t params = (size_t)4 * D * D + (size_t)3 * D * H;
        zp_acts a = {alloc_bytes(sizeof(float) * M_MAX * 3 * D),
                     random_weights((size_t)M_MAX * H, ZP_WTYPE_F32, 7),
                     alloc_bytes(sizeof(float) * M_MAX * H), alloc_bytes(sizeof(float) * M_MAX * H),
                     alloc_bytes(sizeof(float) * M_MAX * D)};
        for (int wtype = ZP_WTYPE_F32; wtype <= ZP_WTYPE_BF16; wtype++) {
            size_t bytes = params * (size_t)zp_wtype_size(wtype);
            int copies = (int)((rotation_mib << 20) / bytes) + 1;
            zp_layer *L = layers_new(copies, D, H, wtype, 1000u);
            double cold[N_MS], hot[N_MS], narrow[N_MS], blas[N_MS], fused1, split1;
            time_layers(cold, ms, N_MS, s, L, copies, &a, wtype, MODE_FUSED, budget);
            time_layers(hot, ms, N_MS, s, L, 1, &a, wtype, MODE_FUSED, budget);
            zp_matmul_set_wide_min_rows(1 << 30); /* the 4-column tile at every m */
            time_layers(narrow, ms, N_MS, s, L, 1, &a, wtype, MODE_FUSED, budget);
            zp_matmul_set_wide_min_rows(0);
            time_fused_split(&fused1, &split1, s, L, copies, &a, wtype, 1, budget / 2);
            if (wtype == ZP_WTYPE_F32)
                time_layers(blas, ms, N_MS, s, L, copies, &a, wtype, MODE_SGEMM, budget);
            printf("\n%s %s (dim %d, hidden %d): %.1f MB of weights per layer, %d copies; "
                   "ms per layer\n",
                   s->name, wtype == ZP_WTYPE_F32 ? "float32" : "bf16", D, H, bytes * 1e-6, copies);
            printf("   m    cold ms  w GB/s  of read BW  of FMA peak |   hot ms  of FMA peak"
                   "  4-col tile |  sgemm ms  sgemm/ours\n");
            for (int i = 0; i < N_MS; i++) {
                double fl = 2.0 * ms[i] * (double)params;
                printf("%4d  %9.3f  %6.1f  %9.0f%%  %10.0f%% | %8.3f  %10.0f%%  %9.0f%% |", ms[i],
                       cold[i] * 1e3, bytes / cold[i] * 1e-9, 100.0 * bytes / cold[i] / bw,
                       100.0 * fl / cold[i] / peak, hot[i] * 1e3, 100.0 * fl / hot[i] / peak,
                       100.0 * fl / narrow[i] / peak);
                if (wtype == ZP_WTYPE_F32 && ms[i] >= 8)
                    printf("  %8.3f  %10.2f\n", blas[i] * 1e3, blas[i] / cold[i]);
                else
                    printf("\n");
            }
            printf("m = 1, interleaved: w1 and w3 fused %.3f ms per layer, as two calls %.3f ms "
                   "(fused gain %.2fx)\n",
                   fused1 * 1e3, split1 * 1e3, split1 / fused1);
            layers_free(L, copies);
        }
        free(a.qkv), free(a.att), free(a.h1), free(a.h3), free(a.out);
    }
    double peak_end = fma_peak(threads);
    printf("\nFMA peak again at the end: %.0f GFLOP/s (%.0f at the start; fractions above use the "
           "start)\n",
           peak_end * 1e-9, peak * 1e-9);
    return 0;
}
