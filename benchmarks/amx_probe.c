/* amx_probe.c -- what a CPU's AMX-BF16 unit does, outside zipar (issue 13, BENCHMARKS.md "AMX
 * tiles for bf16 weights"): whether Linux grants the tile permission; which simple rounding
 * order TDPBF16PS's float32 accumulation matches (mismatch counts against sequential fused
 * multiply-adds, pair sums, exact sums); whether a row's result depends on the tile's row
 * count; TDPBF16PS throughput for 16 .. 1 rows; and one core streaming contiguous 1 KiB tiles
 * with 3 products each, against a plain AVX-512 read, three rounds.
 *
 *     gcc -O2 -mavx512f -mamx-tile -mamx-bf16 -mfma benchmarks/amx_probe.c -o /tmp/amx_probe -lm
 *     /tmp/amx_probe [MiB streamed, default 256]
 *
 * Output of the device run: benchmarks/results/device_run_amx_2026-11-30.txt ("probe"). */
#define _GNU_SOURCE
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "probe.h"

#define ARCH_GET_XCOMP_SUPP 0x1021
#define ARCH_GET_XCOMP_PERM 0x1022
#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA  18

typedef struct {
    uint8_t palette, start;
    uint8_t res[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tilecfg;

static void config(int m, int cols_a) {
    tilecfg c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int t = 0; t < 8; t++) {
        c.rows[t] = 16;
        c.colsb[t] = 64;
    }
    c.rows[0] = m; /* C */
    c.rows[1] = m; /* A */
    c.colsb[1] = cols_a;
    c.rows[2] = cols_a / 4; /* B: K/2 rows */
    c.rows[3] = m;
    c.rows[4] = m;
    c.rows[5] = m;
    c.rows[6] = m;
    _tile_loadconfig(&c);
}

int main(int argc, char **argv) {
    int mb = argc > 1 ? atoi(argv[1]) : 256;
    uint64_t supp = 0, perm = 0;
    long r = syscall(SYS_arch_prctl, ARCH_GET_XCOMP_SUPP, &supp);
    printf("GET_XCOMP_SUPP rc %ld supp %#llx\n", r, (unsigned long long)supp);
    r = syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA);
    printf("REQ_XCOMP_PERM rc %ld\n", r);
    r = syscall(SYS_arch_prctl, ARCH_GET_XCOMP_PERM, &perm);
    printf("GET_XCOMP_PERM rc %ld perm %#llx\n", r, (unsigned long long)perm);
    if (!(perm & (1ull << XFEATURE_XTILEDATA))) {
        printf("no AMX permission\n");
        return 1;
    }
    fflush(stdout);

    /* semantics: 16 x 32 A, 16 pair-rows x 16 B, C random */
    static uint16_t A[16][32], B[16][32];
    static float C[16][16], D[16][16];
    long mism[6] = {0}, total = 0;
    for (int trial = 0; trial < 2000; trial++) {
        float scale = ldexpf(1.0f, (int)(xr() % 20) - 10);
        for (int i = 0; i < 16; i++)
            for (int k = 0; k < 32; k++) {
                A[i][k] = tobf(frand() * ldexpf(1.0f, (int)(xr() % 16) - 8));
                B[i][k] = tobf(frand() * ldexpf(1.0f, (int)(xr() % 16) - 8));
            }
        for (int i = 0; i < 16; i++)
            for (int n = 0; n < 16; n++) C[i][n] = frand() * scale;
        config(16, 64);
        _tile_loadd(0, C, 64);
        _tile_loadd(1, A, 64);
        _tile_loadd(2, B, 64);
        _tile_dpbf16ps(0, 1, 2);
        _tile_stored(0, D, 64);
        _tile_release();
        for (int i = 0; i < 16; i++)
            for (int n = 0; n < 16; n++) {
                float e[6];
                /* E0 sequential fma even then odd */
                float c = C[i][n];
                for (int k = 0; k < 16; k++) {
                    c = fmaf(fbf(A[i][2 * k]), fbf(B[k][2 * n]), c);
                    c = fmaf(fbf(A[i][2 * k + 1]), fbf(B[k][2 * n + 1]), c);
                }
                e[0] = c;
                c = C[i][n];
                for (int k = 0; k < 16; k++) {
                    c = fmaf(fbf(A[i][2 * k + 1]), fbf(B[k][2 * n + 1]), c);
                    c = fmaf(fbf(A[i][2 * k]), fbf(B[k][2 * n]), c);
                }
                e[1] = c;
                /* pair summed (rounded) then added */
                c = C[i][n];
                for (int k = 0; k < 16; k++) {
                    float p = fbf(A[i][2 * k]) * fbf(B[k][2 * n]) +
                              fbf(A[i][2 * k + 1]) * fbf(B[k][2 * n + 1]);
                    c = c + p;
                }
                e[2] = c;
                /* pair exact then one rounding with c */
                c = C[i][n];
                for (int k = 0; k < 16; k++) {
                    double p = (double)fbf(A[i][2 * k]) * fbf(B[k][2 * n]) +
                               (double)fbf(A[i][2 * k + 1]) * fbf(B[k][2 * n + 1]);
                    c = (float)((double)c + p);
                }
                e[3] = c;
                /* all 32 exact, one rounding */
                double s = C[i][n];
                for (int k = 0; k < 32; k++)
                    s += (double)fbf(A[i][k]) * fbf(B[k / 2][2 * n + (k & 1)]);
                e[4] = (float)s;
                /* sum of products first (double), then add c */
                double q = 0;
                for (int k = 0; k < 32; k++)
                    q += (double)fbf(A[i][k]) * fbf(B[k / 2][2 * n + (k & 1)]);
                e[5] = C[i][n] + (float)q;
                for (int v = 0; v < 6; v++) mism[v] += memcmp(&e[v], &D[i][n], 4) != 0;
                total++;
            }
    }
    printf("semantics over %ld outputs: mismatches seq-even %ld seq-odd %ld pairsum %ld "
           "pairexact %ld all-exact %ld sum-then-c %ld\n",
           total, mism[0], mism[1], mism[2], mism[3], mism[4], mism[5]);

    /* row independence: row 0 result with m=16 vs m=1 */
    {
        config(1, 64);
        _tile_loadd(0, C, 64);
        _tile_loadd(1, A, 64);
        _tile_loadd(2, B, 64);
        _tile_dpbf16ps(0, 1, 2);
        float E[16];
        _tile_stored(0, E, 64);
        _tile_release();
        printf("row0 m=1 vs m=16 equal: %d\n", memcmp(E, D[0], 64) == 0);
    }

    /* throughput */
    for (int m = 16; m >= 1; m /= 2) {
        config(m, 64);
        _tile_zero(0);
        _tile_zero(3);
        _tile_zero(4);
        _tile_zero(5);
        _tile_loadd(1, A, 64);
        _tile_loadd(2, B, 64);
        long n = 2000000;
        double t0 = now();
        for (long i = 0; i < n; i++) {
            _tile_dpbf16ps(0, 1, 2);
            _tile_dpbf16ps(3, 1, 2);
            _tile_dpbf16ps(4, 1, 2);
            _tile_dpbf16ps(5, 1, 2);
        }
        double t = now() - t0;
        _tile_release();
        printf("m=%2d: %.2f ns per tdpbf16ps, %.1f GMAC/s\n", m, t / (4.0 * n) * 1e9,
               4.0 * n * m * 16 * 32 / t * 1e-9);
    }

    /* streaming B tiles from memory, m rows, 3 A tiles per B tile */
    size_t bytes = (size_t)mb << 20;
    uint8_t *W = aligned_alloc(4096, bytes);
    for (size_t i = 0; i < bytes; i += 8) *(uint64_t *)(W + i) = xr() & 0x3f803f803f803f80ull;
    static uint16_t A3[3][16][32];
    memset(A3, 0, sizeof A3);
    for (int rep = 0; rep < 3; rep++)
        for (int m = 2; m <= 16; m *= 2) {
            for (int dist = 0; dist <= 2048; dist += 1024) {
                config(m, 64);
                _tile_zero(0);
                _tile_loadd(3, A3[0], 64);
                _tile_loadd(4, A3[1], 64);
                _tile_loadd(5, A3[2], 64);
                double t0 = now();
                for (size_t off = 0; off < bytes; off += 1024) {
                    if (dist)
                        for (int l = 0; l < 1024; l += 64)
                            _mm_prefetch((const char *)W + off + dist * 4 + l, _MM_HINT_T0);
                    _tile_loadd(2, W + off, 64);
                    _tile_dpbf16ps(0, 3, 2);
                    _tile_dpbf16ps(0, 4, 2);
                    _tile_dpbf16ps(0, 5, 2);
                }
                double t = now() - t0;
                _tile_release();
                printf("stream m=%2d prefetch %5d B: %.1f GB/s\n", m, dist * 4, bytes / t * 1e-9);
            }
            double t0 = now();
            __m512i acc = _mm512_setzero_si512();
            for (size_t off = 0; off < bytes; off += 64)
                acc = _mm512_add_epi64(acc, _mm512_load_si512(W + off));
            double t = now() - t0;
            printf("plain read: %.1f GB/s (%lld)\n", bytes / t * 1e-9,
                   (long long)_mm512_reduce_add_epi64(acc));
        }
    return 0;
}
