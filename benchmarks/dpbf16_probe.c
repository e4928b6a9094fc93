/* dpbf16_probe.c -- whether AVX512-BF16's VDPBF16PS could speed up zipar's bf16 products, outside
 * zipar (issue 13): one core's throughput of VDPBF16PS against VFMADD231PS (register-only loops);
 * a 4 x 4 register tile over hot bf16 weights, widened into float32 FMAs (the AVX-512 kernel's
 * arithmetic) against VDPBF16PS with each activation split into two bf16 parts (x ~ hi + lo);
 * the error of that split's dot products against a float64 reference, next to float32's; and
 * whether VDPBF16PS computes each lane as two fused multiply-adds, odd element first.
 *
 *     gcc -O2 -mavx512f -mavx512bw -mavx512bf16 -mfma benchmarks/dpbf16_probe.c -o /tmp/dp -lm
 *     /tmp/dp
 *
 * What it found on the 16-core device host (BENCHMARKS.md, issue 13, stop 26): VDPBF16PS issues
 * at 0.56x the rate of VFMADD231PS (1.35 against 2.42 G/s a core), each lane is exactly two fused
 * multiply-adds (odd element first; no mismatch in 3.2 M lanes), and the two-part split's error
 * is 5-6e-7 of sum |x w|. Its tile comparison (dp 1.31x faster) misled: its widened tile reaches
 * 15 GMAC/s a core where zipar's kernel reaches 28-34 at 8-32 rows (bench_rows), and a kernel
 * built on the two-part split (commit 4e3be01, since reverted) ran at 0.43-0.99x the AVX-512
 * kernel's speed. The instruction rate decides: two VDPBF16PS per 32 products at 0.56x the FMA
 * rate cost more than two FMAs and the widening.
 *
 * Output of the device run: benchmarks/results/device_run_s26_2026-12-01.txt. */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "probe.h"

/* ---- register-only throughput: 24 independent chains ---- */
#define CHAINS 24
static double peak_fma(long iters) {
    __m512 a[CHAINS], b = _mm512_set1_ps(1.0000001f), c = _mm512_set1_ps(1e-7f);
    for (int i = 0; i < CHAINS; i++) a[i] = _mm512_set1_ps((float)i);
    double t = now();
    for (long it = 0; it < iters; it++)
        for (int i = 0; i < CHAINS; i++) {
            a[i] = _mm512_fmadd_ps(a[i], b, c);
            __asm__ volatile("" : "+v"(a[i]));
        }
    t = now() - t;
    float s = 0;
    for (int i = 0; i < CHAINS; i++) s += _mm512_reduce_add_ps(a[i]);
    if (s == 12345.f) puts("");
    return (double)iters * CHAINS / t; /* instructions per second */
}

static double peak_dp(long iters) {
    __m512 a[CHAINS];
    __m512bh b = (__m512bh)_mm512_set1_epi16(0x3f80), c = (__m512bh)_mm512_set1_epi16(0x3380);
    for (int i = 0; i < CHAINS; i++) a[i] = _mm512_set1_ps((float)i);
    double t = now();
    for (long it = 0; it < iters; it++)
        for (int i = 0; i < CHAINS; i++) {
            a[i] = _mm512_dpbf16_ps(a[i], b, c);
            __asm__ volatile("" : "+v"(a[i]));
        }
    t = now() - t;
    float s = 0;
    for (int i = 0; i < CHAINS; i++) s += _mm512_reduce_add_ps(a[i]);
    if (s == 12345.f) puts("");
    return (double)iters * CHAINS / t;
}

/* ---- 4 x 4 tiles over hot weights: rows of x (MR = 4 a tile) by 4 rows of w ---- */
/* widened: per 16 k, 4 bf16 loads widened (vpmovzxwd + vpslld), 4 x loads, 16 FMAs */
static void tiles_widen(float *y, const float *x, const uint16_t *w, int m, int n, int K) {
    for (int c0 = 0; c0 < n; c0 += 4)
        for (int r0 = 0; r0 < m; r0 += 4) {
            __m512 acc[4][4];
            for (int r = 0; r < 4; r++)
                for (int c = 0; c < 4; c++) acc[r][c] = _mm512_setzero_ps();
            for (int k = 0; k < K; k += 16) {
                __m512 xv[4];
                for (int r = 0; r < 4; r++) xv[r] = _mm512_loadu_ps(x + (size_t)(r0 + r) * K + k);
                for (int c = 0; c < 4; c++) {
                    __m256i h = _mm256_loadu_si256((const __m256i *)(w + (size_t)(c0 + c) * K + k));
                    __m512 wv =
                        _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
                    for (int r = 0; r < 4; r++) acc[r][c] = _mm512_fmadd_ps(xv[r], wv, acc[r][c]);
                }
            }
            for (int r = 0; r < 4; r++)
                for (int c = 0; c < 4; c++)
                    y[(size_t)(r0 + r) * n + c0 + c] = _mm512_reduce_add_ps(acc[r][c]);
        }
}

/* split: xs[(row * 2 + part) * K + k], part 0 = bf16(x), part 1 = bf16(x - part 0) */
static void split2(uint16_t *xs, const float *x, int m, int K) {
    for (int i = 0; i < m; i++)
        for (int k = 0; k < K; k++) {
            float v = x[(size_t)i * K + k];
            uint16_t hi = tobf(v);
            xs[(size_t)(2 * i) * K + k] = hi;
            xs[(size_t)(2 * i + 1) * K + k] = tobf(v - fbf(hi));
        }
}

/* dp: per 32 k, 4 bf16 loads, 8 split loads, 32 VDPBF16PS */
static void tiles_dp(float *y, const uint16_t *xs, const uint16_t *w, int m, int n, int K) {
    for (int c0 = 0; c0 < n; c0 += 4)
        for (int r0 = 0; r0 < m; r0 += 4) {
            __m512 acc[4][4];
            for (int r = 0; r < 4; r++)
                for (int c = 0; c < 4; c++) acc[r][c] = _mm512_setzero_ps();
            for (int k = 0; k < K; k += 32) {
                __m512bh hv[4], lv[4];
                for (int r = 0; r < 4; r++) {
                    hv[r] = (__m512bh)_mm512_loadu_si512(xs + (size_t)(2 * (r0 + r)) * K + k);
                    lv[r] = (__m512bh)_mm512_loadu_si512(xs + (size_t)(2 * (r0 + r) + 1) * K + k);
                }
                for (int c = 0; c < 4; c++) {
                    __m512bh wv = (__m512bh)_mm512_loadu_si512(w + (size_t)(c0 + c) * K + k);
                    for (int r = 0; r < 4; r++) {
                        acc[r][c] = _mm512_dpbf16_ps(acc[r][c], wv, hv[r]);
                        acc[r][c] = _mm512_dpbf16_ps(acc[r][c], wv, lv[r]);
                    }
                }
            }
            for (int r = 0; r < 4; r++)
                for (int c = 0; c < 4; c++)
                    y[(size_t)(r0 + r) * n + c0 + c] = _mm512_reduce_add_ps(acc[r][c]);
        }
}

int main(void) {
    /* 1. throughput */
    for (int round = 0; round < 3; round++) {
        double f = peak_fma(20000000), d = peak_dp(20000000);
        printf("round %d: vfmadd231ps %.2f G/s (%.1f GFLOP/s), vdpbf16ps %.2f G/s (%.1f GFLOP/s), "
               "dp / fma instructions %.3f\n",
               round, f / 1e9, f * 32 / 1e9, d / 1e9, d * 64 / 1e9, d / f);
    }

    /* 2. tiles over hot weights: K = 1024, n = 128 rows of w (256 KiB bf16, L2) */
    const int K = 1024, n = 128;
    float *x = aligned_alloc(64, (size_t)16 * K * 4), *y = aligned_alloc(64, (size_t)16 * n * 4);
    uint16_t *w = aligned_alloc(64, (size_t)n * K * 2), *xs = aligned_alloc(64, (size_t)32 * K * 2);
    for (size_t i = 0; i < (size_t)16 * K; i++) x[i] = frand();
    for (size_t i = 0; i < (size_t)n * K; i++) w[i] = tobf(frand() * 0.05f);
    for (int m = 4; m <= 16; m += 4) {
        split2(xs, x, m, K);
        double best_w = 1e9, best_d = 1e9;
        for (int round = 0; round < 5; round++) {
            int reps = 200;
            double t = now();
            for (int r = 0; r < reps; r++) tiles_widen(y, x, w, m, n, K);
            t = (now() - t) / reps;
            best_w = t < best_w ? t : best_w;
            t = now();
            for (int r = 0; r < reps; r++) tiles_dp(y, xs, w, m, n, K);
            t = (now() - t) / reps;
            best_d = t < best_d ? t : best_d;
        }
        double macs = (double)m * n * K;
        printf("tiles m=%2d: widened FMA %.1f GMAC/s, dp 2-part %.1f GMAC/s, dp / widened %.2fx\n",
               m, macs / best_w / 1e9, macs / best_d / 1e9, best_w / best_d);
    }

    /* 3. error of the 2-part split against float64, next to the float32 FMA kernel */
    for (int kk = 0; kk < 2; kk++) {
        const int KE = kk ? 2816 : 1024, rows = 64;
        float *xe = malloc((size_t)4 * KE * 4), *ye = malloc((size_t)4 * rows * 4),
              *yd = malloc((size_t)4 * rows * 4);
        uint16_t *we = malloc((size_t)rows * KE * 2), *xse = malloc((size_t)8 * KE * 2);
        for (int i = 0; i < 4 * KE; i++) xe[i] = frand() * (i % 7 == 0 ? 20.f : 1.f);
        for (int i = 0; i < rows * KE; i++) we[i] = tobf(frand() * 0.05f);
        split2(xse, xe, 4, KE);
        tiles_widen(ye, xe, we, 4, rows, KE);
        tiles_dp(yd, xse, we, 4, rows, KE);
        double ew = 0, ed = 0;
        for (int r = 0; r < 4; r++)
            for (int c = 0; c < rows; c++) {
                double ref = 0, mag = 0;
                for (int k = 0; k < KE; k++) {
                    double p = (double)xe[r * KE + k] * fbf(we[c * KE + k]);
                    ref += p, mag += fabs(p);
                }
                double a = fabs(ye[r * rows + c] - ref) / mag,
                       b = fabs(yd[r * rows + c] - ref) / mag;
                ew = a > ew ? a : ew, ed = b > ed ? b : ed;
            }
        printf("K=%d: max |error| / sum|products|: float32 FMA %.2e, dp 2-part %.2e\n", KE, ew, ed);
        free(xe), free(ye), free(yd), free(we), free(xse);
    }

    /* 4. one lane's semantics: two FMAs, odd element first, against the instruction */
    long diff_odd_first = 0, diff_even_first = 0, cases = 200000;
    for (long t = 0; t < cases; t++) {
        uint16_t a[32], b[32];
        float s0 = frand() * 4;
        for (int j = 0; j < 32; j++) a[j] = tobf(frand()), b[j] = tobf(frand());
        __m512 acc = _mm512_set1_ps(s0);
        acc =
            _mm512_dpbf16_ps(acc, (__m512bh)_mm512_loadu_si512(a), (__m512bh)_mm512_loadu_si512(b));
        float got[16];
        _mm512_storeu_ps(got, acc);
        for (int j = 0; j < 16; j++) {
            float o =
                fmaf(fbf(a[2 * j]), fbf(b[2 * j]), fmaf(fbf(a[2 * j + 1]), fbf(b[2 * j + 1]), s0));
            float e =
                fmaf(fbf(a[2 * j + 1]), fbf(b[2 * j + 1]), fmaf(fbf(a[2 * j]), fbf(b[2 * j]), s0));
            diff_odd_first += memcmp(&o, &got[j], 4) != 0;
            diff_even_first += memcmp(&e, &got[j], 4) != 0;
        }
    }
    printf("lane semantics over %ld lanes: differs from odd-first FMAs %ld, from even-first %ld\n",
           cases * 16, diff_odd_first, diff_even_first);
    return 0;
}
