/* bench_values.c -- why attend.h reads each slot's value row in order. One stream's V cache of a
 * GPT-L-shaped layer (5 tiles of 32 slots, 16 heads of 64 float32 elements: 640 KiB, laid out as
 * attend.h's (tile, head, slot, element)), weighted-summed by one query in three loop orders, one
 * layer after another with 8 MiB of other reads in between (as the weights of a decode pass
 * evict the cache), one thread:
 *   - plain read: the same bytes summed in address order (the memory's rate);
 *   - 16-element sweeps: per block of 16 elements, the 32 slots in turn (4 chains of 2 vectors):
 *     one line per slot, 256 bytes apart, then the next line (attend.h's order for the rows
 *     after a head's first, whose block is in L1);
 *   - whole rows: slot by slot, each slot's 64 elements at once, 4 chains of 8 vectors kept on
 *     the stack (attend.h's order for the first row over a head's block).
 * Prints GB/s and microseconds per layer of each, over 6 rounds in which the orders alternate.
 * AVX2 + FMA (every x86-64 machine the package targets with vectors).
 *
 * Run: make -C csrc/tests bench-values
 */
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

enum { TILE = 32, HD = 64, NH = 16, TILES = 5, LAYERS = 24, ROUNDS = 6, ORDERS = 3 };
enum { EVICT_FLOATS = 2 << 20 }; /* 8 MiB read between layers */

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* bytes of touched anonymous memory, advised as huge pages like the package's K/V cache */
static float *mapped(size_t bytes) {
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) exit(2);
#ifdef MADV_HUGEPAGE
    madvise(p, bytes, MADV_HUGEPAGE);
#endif
    float *f = p;
    for (size_t i = 0; i < bytes / sizeof(float); i++) f[i] = (float)(i % 97) * 0.01f;
    return f;
}

/* One layer's weighted sum: out[h][e] += sum over slots p of w[p] * v[tile][h][p][e]. */
__attribute__((target("avx2,fma"))) static float layer(const float *v, const float *w, int order) {
    __m256 out[NH * HD / 8];
    for (int i = 0; i < NH * HD / 8; i++) out[i] = _mm256_setzero_ps();
    for (int t = 0; t < TILES; t++)
        for (int h = 0; h < NH; h++) {
            const float *vh = v + ((size_t)t * NH + h) * TILE * HD;
            __m256 *oh = out + h * HD / 8;
            if (order == 0) {
                __m256 a = _mm256_setzero_ps();
                for (int i = 0; i < TILE * HD; i += 8)
                    a = _mm256_add_ps(a, _mm256_loadu_ps(vh + i));
                oh[0] = _mm256_add_ps(oh[0], a);
            } else if (order == 1) {
                for (int d = 0; d < HD; d += 16) {
                    __m256 a[4][2];
                    for (int k = 0; k < 4; k++) a[k][0] = a[k][1] = _mm256_setzero_ps();
                    for (int p = 0; p < TILE; p += 4)
                        for (int k = 0; k < 4; k++) {
                            __m256 wk = _mm256_set1_ps(w[p + k]);
                            const float *row = vh + (size_t)(p + k) * HD + d;
                            a[k][0] = _mm256_fmadd_ps(wk, _mm256_loadu_ps(row), a[k][0]);
                            a[k][1] = _mm256_fmadd_ps(wk, _mm256_loadu_ps(row + 8), a[k][1]);
                        }
                    for (int i = 0; i < 2; i++)
                        oh[d / 8 + i] = _mm256_add_ps(
                            oh[d / 8 + i], _mm256_add_ps(_mm256_add_ps(a[0][i], a[1][i]),
                                                         _mm256_add_ps(a[2][i], a[3][i])));
                }
            } else {
                __m256 a[4][HD / 8];
                for (int k = 0; k < 4; k++)
                    for (int i = 0; i < HD / 8; i++) a[k][i] = _mm256_setzero_ps();
                for (int p = 0; p < TILE; p++) {
                    __m256 wk = _mm256_set1_ps(w[p]);
                    const float *row = vh + (size_t)p * HD;
                    for (int i = 0; i < HD / 8; i++)
                        a[p % 4][i] =
                            _mm256_fmadd_ps(wk, _mm256_loadu_ps(row + 8 * i), a[p % 4][i]);
                }
                for (int i = 0; i < HD / 8; i++)
                    oh[i] = _mm256_add_ps(oh[i], _mm256_add_ps(_mm256_add_ps(a[0][i], a[1][i]),
                                                               _mm256_add_ps(a[2][i], a[3][i])));
            }
        }
    __m256 s = _mm256_setzero_ps();
    for (int i = 0; i < NH * HD / 8; i++) s = _mm256_add_ps(s, out[i]);
    float f[8];
    _mm256_storeu_ps(f, s);
    return f[0];
}

int main(void) {
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) {
        printf("bench_values: needs AVX2 and FMA\n");
        return 0;
    }
    const size_t layer_floats = (size_t)TILES * NH * TILE * HD;
    float *v = mapped(sizeof(float) * layer_floats * LAYERS);
    float *other = mapped(sizeof(float) * (size_t)EVICT_FLOATS * 32);
    float w[TILE];
    for (int p = 0; p < TILE; p++) w[p] = 1.0f / (float)(p + 1);
    double t[ORDERS] = {0};
    float sink = 0.f;
    for (int r = 0; r < ROUNDS; r++)
        for (int order = 0; order < ORDERS; order++)
            for (int l = 0; l < LAYERS; l++) {
                const float *e =
                    other + (size_t)((r * ORDERS + order) * LAYERS + l) % 32 * EVICT_FLOATS;
                for (size_t i = 0; i < EVICT_FLOATS; i += 16) sink += e[i];
                double t0 = now();
                sink += layer(v + (size_t)l * layer_floats, w, order);
                t[order] += now() - t0;
            }
    static const char *names[ORDERS] = {"plain read", "16-element sweeps", "whole rows"};
    printf("bench_values: one query's value sums over a GPT-L layer's V (%.0f KiB), one thread\n",
           sizeof(float) * layer_floats / 1024.0);
    for (int order = 0; order < ORDERS; order++)
        printf("  %-18s %5.1f GB/s  %6.1f us a layer\n", names[order],
               sizeof(float) * layer_floats * LAYERS * ROUNDS / t[order] * 1e-9,
               t[order] / (ROUNDS * LAYERS) * 1e6);
    return sink == 12345.f;
}
