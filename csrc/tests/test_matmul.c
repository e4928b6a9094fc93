/* test_matmul.c -- zp_matmul against a naive double-precision product, over many shapes and all
 * three skinny kernels (avx512 / avx2 / scalar, where the CPU has them) and the BLAS path; bf16
 * and f16 weights (zp_matmul_w, zp_matmul_multi) against float32 on the widened weights; plus
 * the determinism promise of matmul.h (bitwise: thread count, batch size and company, kernel),
 * untouched memory outside the m x N region of a wider ldy buffer, and unmodified inputs.
 *
 * Run: make -C csrc/tests   (exit status 0 when every check passes)
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../matmul.h"
#include "check.h"

/* ---------------------------------------------------------------- helpers */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

/* Uniform in [-1, 1), from a 64-bit LCG: the test data are the same on every run. */
static float uniform(void) {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(rng_state >> 40) / (double)(1ull << 23) - 1.0);
}

static float *random_floats(size_t n) {
    float *a = malloc((n ? n : 1) * sizeof *a);
    for (size_t i = 0; i < n; i++) a[i] = uniform();
    return a;
}

/* The obviously correct product: ref (m, N) and abs_sum (m, N) = sum_k |x w|, in double. */
static void matmul_ref(double *ref, double *abs_sum, const float *x, const float *w, int m, int K,
                       int N) {
    for (int i = 0; i < m; i++)
        for (int n = 0; n < N; n++) {
            double s = 0.0, a = 0.0;
            for (int k = 0; k < K; k++) {
                double p = (double)x[(size_t)i * K + k] * (double)w[(size_t)n * K + k];
                s += p;
                a += fabs(p);
            }
            ref[(size_t)i * N + n] = s;
            abs_sum[(size_t)i * N + n] = a;
        }
}

/* Worst-case float32 error of a sum of K products in `depth` sequential roundings:
 * depth * 2^-24 * sum |x w| (plus a margin). Our order: K/16 + 4 roundings per dot; BLAS's order
 * is unknown, so K. */
static int close_enough(float got, double ref, double abs_sum, int depth) {
    double bound = (depth + 2) * ldexp(1.0, -24) * abs_sum * 1.01 + 1e-30;
    return fabs((double)got - ref) <= bound;
}

/* "amx" runs bf16 weights on the AMX tiles (its own bits) and everything else as "avx512" */
static const char *isa_names[] = {"amx", "avx512", "avx2", "scalar"};
enum { N_ISA = 4, SCALAR = 3 };

/* Whether kernel s runs products of weight type wtype on the AMX tiles. */
static int on_tiles(int s, int wtype) {
    return s == 0 && wtype == 1 /* ZP_WTYPE_BF16 */;
}

/* ---------------------------------------------------------------- correctness over shapes */
/* All shapes for one (K, N) with every m: each available skinny kernel (for every m, also those
 * past the BLAS threshold and past one 64-row panel) and BLAS (m >= 64) against the reference,
 * and the kernels against each other, bitwise. */
static void check_shapes(int K, int N) {
    static const int ms[] = {1, 2, 3, 4, 5, 7, 8, 15, 16, 17, 33, 63, 64, 65, 70, 130};
    const int n_ms = (int)(sizeof ms / sizeof ms[0]);
    const int m_max = 130;
    const int saved_rows = zp_get_blas_min_rows();
    float *x = random_floats((size_t)m_max * K), *w = random_floats((size_t)N * K);
    double *ref = malloc(sizeof(double) * m_max * N), *abs_sum = malloc(sizeof(double) * m_max * N);
    float *y = malloc(sizeof(float) * m_max * N), *first = malloc(sizeof(float) * m_max * N);
    matmul_ref(ref, abs_sum, x, w, m_max, K, N);

    for (int mi = 0; mi < n_ms; mi++) {
        int m = ms[mi];
        int have_first = 0;
        for (int s = -1; s < N_ISA; s++) { /* -1: BLAS */
            int blas = s < 0;
            if (blas && m < saved_rows) continue;
            if (!blas && zp_matmul_force_isa(isa_names[s]) != 0) continue;
            /* the scalar kernel calls fmaf per product: keep its share of the run short */
            if (s == SCALAR && (double)m * K * N > 4e7) continue;
            zp_set_blas_min_rows(blas ? 1 : 1 << 30);
            zp_matmul(y, x, w, m, K, N);
            const char *name = blas ? "blas" : isa_names[s];
            int bad = 0;
            for (size_t j = 0; j < (size_t)m * N && bad < 3; j++)
                if (!close_enough(y[j], ref[j], abs_sum[j], blas ? K : K / 16 + 4)) {
                    CHECK(0, "%s m=%d K=%d N=%d: y[%zu][%zu]=%.9g ref=%.9g", name, m, K, N, j / N,
                          j % N, y[j], ref[j]);
                    bad++;
                }
            CHECK(bad == 0, "m=%d K=%d N=%d", m, K, N);
            if (!blas && have_first)
                CHECK(memcmp(y, first, sizeof(float) * m * N) == 0,
                      "%s differs bitwise from the first kernel at m=%d K=%d N=%d", name, m, K, N);
            if (!blas && !have_first) {
                memcpy(first, y, sizeof(float) * m * N);
                have_first = 1;
            }
        }
    }
    zp_set_blas_min_rows(saved_rows);
    zp_matmul_force_isa(NULL);
    free(x), free(w), free(ref), free(abs_sum), free(y), free(first);
}

/* ---------------------------------------------------------------- determinism */
/* For one kernel: a batch of m rows gives the same bits with 1 and 2 threads; each row alone,
 * or placed among other rows at another index of another batch size, gives the same bits. */
static void check_determinism(const char *isa, int K, int N) {
    const int m = 63; /* the largest batch below the default BLAS threshold */
    float *x = random_floats((size_t)m * K), *w = random_floats((size_t)N * K);
    float *other = random_floats((size_t)m * K);
    float *y1 = malloc(sizeof(float) * m * N), *y2 = malloc(sizeof(float) * m * N);
    float *alone = malloc(sizeof(float) * N), *mixed = malloc(sizeof(float) * m * K);
    if (zp_matmul_force_isa(isa) != 0) goto out;

    zp_set_num_threads(1);
    zp_matmul(y1, x, w, m, K, N);
    zp_set_num_threads(2);
    zp_matmul(y2, x, w, m, K, N);
    CHECK(memcmp(y1, y2, sizeof(float) * m * N) == 0, "%s K=%d N=%d: 1 vs 2 threads differ", isa, K,
          N);

    for (int i = 0; i < m; i++) {
        zp_matmul(alone, x + (size_t)i * K, w, 1, K, N);
        CHECK(memcmp(alone, y1 + (size_t)i * N, sizeof(float) * N) == 0,
              "%s K=%d N=%d: row %d alone differs from the batch", isa, K, N, i);
        /* row i of x at index j of a batch of b other rows */
        int b = 1 + (i * 7) % m, j = (i * 5) % b;
        memcpy(mixed, other, sizeof(float) * (size_t)b * K);
        memcpy(mixed + (size_t)j * K, x + (size_t)i * K, sizeof(float) * K);
        zp_matmul(y2, mixed, w, b, K, N);
        CHECK(memcmp(y2 + (size_t)j * N, y1 + (size_t)i * N, sizeof(float) * N) == 0,
              "%s K=%d N=%d: row %d at %d of a batch of %d differs", isa, K, N, i, j, b);
    }
out:
    zp_matmul_force_isa(NULL);
    free(x), free(w), free(other), free(y1), free(y2), free(alone), free(mixed);
}

/* ---------------------------------------------------------------- ldy, inputs, settings */
/* Writes into the left N columns of an (m + 2, ldy) buffer full of a sentinel: everything outside
 * the m x N region keeps the sentinel, and x and w are unchanged. */
static void check_ldy(const char *isa, int m, int K, int N) {
    const int ldy = N + 5, rows = m + 2;
    const uint32_t sentinel = 0x7fc0dead; /* a quiet NaN no product produces */
    float *x = random_floats((size_t)m * K), *w = random_floats((size_t)N * K);
    float *x_copy = malloc(sizeof(float) * m * K), *w_copy = malloc(sizeof(float) * N * K);
    float *y = malloc(sizeof(float) * rows * ldy), *dense = malloc(sizeof(float) * m * N);
    uint32_t *bits = (uint32_t *)y;
    memcpy(x_copy, x, sizeof(float) * m * K);
    memcpy(w_copy, w, sizeof(float) * N * K);
    if (isa && zp_matmul_force_isa(isa) != 0) goto out;
    for (size_t j = 0; j < (size_t)rows * ldy; j++) bits[j] = sentinel;

    zp_matmul_ld(y, ldy, x, w, m, K, N);
    zp_matmul(dense, x, w, m, K, N);
    int outside = 0, inside = 0;
    for (int i = 0; i < rows; i++)
        for (int n = 0; n < ldy; n++) {
            uint32_t got = bits[(size_t)i * ldy + n];
            if (i < m && n < N)
                inside += memcmp(&got, &dense[(size_t)i * N + n], sizeof got) != 0;
            else
                outside += got != sentinel;
        }
    const char *name = isa ? isa : "blas";
    CHECK(outside == 0, "%s m=%d K=%d N=%d ldy=%d: %d values outside m x N were written", name, m,
          K, N, ldy, outside);
    CHECK(inside == 0, "%s m=%d K=%d N=%d: ldy result differs from dense in %d places", name, m, K,
          N, inside);
    CHECK(memcmp(x, x_copy, sizeof(float) * m * K) == 0, "%s: x was modified", name);
    CHECK(memcmp(w, w_copy, sizeof(float) * N * K) == 0, "%s: w was modified", name);
out:
    zp_matmul_force_isa(NULL);
    free(x), free(w), free(x_copy), free(w_copy), free(y), free(dense);
}

static void check_settings(void) {
    int saved = zp_get_blas_min_rows();
    zp_set_blas_min_rows(8);
    CHECK(zp_get_blas_min_rows() == 8, "blas_min_rows round trip");
    zp_set_blas_min_rows(-3);
    CHECK(zp_get_blas_min_rows() == 1, "blas_min_rows clamps to 1");
    zp_set_blas_min_rows(saved);

    zp_set_num_threads(1);
    CHECK(zp_get_num_threads() == 1 && zp_blas_threads() == 1, "1 thread: got %d / blas %d",
          zp_get_num_threads(), zp_blas_threads());
    zp_set_num_threads(2);
    CHECK(zp_get_num_threads() == 2 && zp_blas_threads() == 2, "2 threads: got %d / blas %d",
          zp_get_num_threads(), zp_blas_threads());

    CHECK(zp_matmul_force_isa("avx1024") == -1, "unknown isa accepted");
    CHECK(zp_matmul_isa_supported("scalar") && !zp_matmul_isa_supported("avx1024") &&
              !zp_matmul_isa_supported(NULL),
          "isa_supported");
    for (int s = 0; s < N_ISA; s++) /* supported exactly when it can be forced */
        CHECK(zp_matmul_isa_supported(isa_names[s]) == (zp_matmul_force_isa(isa_names[s]) == 0),
              "%s: supported and forceable disagree", isa_names[s]);
    zp_matmul_force_isa(NULL);
    CHECK(zp_matmul_force_isa("scalar") == 0, "scalar refused");
    CHECK(strcmp(zp_matmul_isa(), "scalar") == 0, "forced isa not reported");
    zp_matmul_force_isa(NULL);

    /* K = 0 gives zeros; degenerate sizes write nothing */
    float y[6] = {1, 1, 1, 1, 1, 1}, x[1] = {0}, w[1] = {0};
    zp_matmul(y, x, w, 2, 0, 3);
    CHECK(y[0] == 0 && y[5] == 0, "K = 0 must give 0");
    y[0] = 7;
    zp_matmul(y, x, w, 0, 1, 3);
    zp_matmul_ld(y, 2, x, w, 1, 1, 3); /* ldy < N */
    CHECK(y[0] == 7, "degenerate sizes must be no-ops");
}

/* ---------------------------------------------------------------- bf16 / f16 weights */
/* float32 -> bfloat16 bits, rounded to nearest even (finite inputs). */
static uint16_t to_bf16(float f) {
    uint32_t b;
    memcpy(&b, &f, sizeof b);
    return (uint16_t)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
}

static float from_bf16(uint16_t h) {
    uint32_t b = (uint32_t)h << 16;
    float f;
    memcpy(&f, &b, sizeof f);
    return f;
}

/* IEEE binary16 bits -> float, written independently of the core's version: sign * 2^(e-15) *
 * (1 + man/1024), or 2^-14 * man/1024 for subnormals (finite inputs only). */
static float from_f16(uint16_t h) {
    int e = (h >> 10) & 0x1f, man = h & 0x3ff;
    double v = e ? ldexp(1.0 + man / 1024.0, e - 15) : ldexp(man / 1024.0, -14);
    return (float)((h & 0x8000) ? -v : v);
}

/* n random weights of type wtype (bits in *bits, 2 bytes each) and their exact float32 values;
 * f16 draws include subnormals, zeros of both signs and values up to 2^3; bf16 rounds uniform
 * [-1, 1) values and includes a few zeros and float32-subnormal patterns. */
static void random_half(int wtype, size_t n, uint16_t **bits, float **wide) {
    *bits = malloc((n ? n : 1) * sizeof **bits);
    *wide = malloc((n ? n : 1) * sizeof **wide);
    for (size_t i = 0; i < n; i++) {
        uint16_t h;
        float u = uniform();
        if (wtype == ZP_WTYPE_BF16) {
            h = to_bf16(u);
            if (i % 97 == 5) h = (uint16_t)(i % 2 ? 0x8000u : 0x0000u);
            if (i % 89 == 7) h = (uint16_t)(0x0001u + (i % 127)); /* a float32 subnormal */
            (*wide)[i] = from_bf16(h);
        } else {
            uint32_t r = (uint32_t)((u + 1.0f) * 32768.0f);
            int e = (int)(r % 19); /* exponents 0 (subnormal) .. 18: |v| < 2^4 */
            h = (uint16_t)(((r >> 5) & 1u) << 15 | (uint32_t)e << 10 | ((r * 2654435761u) >> 22));
            (*wide)[i] = from_f16(h);
        }
        (*bits)[i] = h;
    }
}

/* For one (wtype, K, N): every kernel, every m (through both the skinny and the wide tile), is
 * bitwise the float32 product with the exactly widened weights (the kernels widen in registers
 * or into a scratch block: both forced in turn) and within float32 error of the float64
 * reference; threads, batch company and the fused zp_matmul_multi change no bit. bf16 on the AMX
 * tiles: within the error of 3 K float32 roundings (each step adds three exact products;
 * truncating accumulation allowed for) instead of the float32 bits, the rest the same. */
static void check_half(int wtype, int K, int N) {
    static const int ms[] = {1, 2, 5, 7, 8, 9, 13, 33, 64, 70};
    const int m_max = 70;
    const char *tname = wtype == ZP_WTYPE_BF16 ? "bf16" : "f16";
    uint16_t *wh;
    float *wf, *x = random_floats((size_t)m_max * K);
    random_half(wtype, (size_t)N * K, &wh, &wf);
    double *ref = malloc(sizeof(double) * m_max * N), *abs_sum = malloc(sizeof(double) * m_max * N);
    float *y = malloc(sizeof(float) * m_max * N), *y32 = malloc(sizeof(float) * m_max * N);
    float *y2 = malloc(sizeof(float) * m_max * N * 2);
    matmul_ref(ref, abs_sum, x, wf, m_max, K, N);
    for (int mi = 0; mi < (int)(sizeof ms / sizeof ms[0]); mi++) {
        int m = ms[mi];
        for (int s = 0; s < N_ISA; s++) {
            if (zp_matmul_force_isa(isa_names[s]) != 0) continue;
            if (s == SCALAR && (double)m * K * N > 2e7) continue;
            const int tiles = on_tiles(s, wtype);
            zp_matmul_w(y, N, x, wh, wtype, m, K, N);
            zp_matmul(y32, x, wf, m, K, N);
            CHECK(tiles || memcmp(y, y32, sizeof(float) * m * N) == 0,
                  "%s %s m=%d K=%d N=%d: differs from float32 on the widened weights", tname,
                  isa_names[s], m, K, N);
            int bad = 0;
            for (size_t j = 0; j < (size_t)m * N && bad < 3; j++)
                if (!close_enough(y[j], ref[j], abs_sum[j], tiles ? 6 * K : K / 16 + 4)) {
                    CHECK(0, "%s %s m=%d K=%d N=%d: y[%zu]=%.9g ref=%.9g", tname, isa_names[s], m,
                          K, N, j, y[j], ref[j]);
                    bad++;
                }
            /* the weights widened into a shared scratch block at every tile count, and never (the
             * AVX-512 kernel's choice for panels of more than one tile of 4 rows) */
            for (int never = 0; never < 2 && strcmp(isa_names[s], "avx512") == 0 && m > 4;
                 never++) {
                zp_matmul_set_widen_min_tiles(never ? 1 << 30 : 1);
                zp_matmul_w(y2, N, x, wh, wtype, m, K, N);
                CHECK(memcmp(y2, y, sizeof(float) * m * N) == 0, "%s %s m=%d: widening %s differs",
                      tname, isa_names[s], m, never ? "in registers" : "into scratch");
            }
            zp_matmul_set_widen_min_tiles(0);
            /* fused: the same product twice in one region, into one (m, 2N) buffer */
            zp_matmul_out outs[2] = {{y2, 2 * N, wh, wtype, N}, {y2 + N, 2 * N, wh, wtype, N}};
            zp_matmul_multi(x, m, K, outs, 2);
            for (int i = 0; i < m; i++)
                CHECK(memcmp(y2 + (size_t)i * 2 * N, y + (size_t)i * N, sizeof(float) * N) == 0 &&
                          memcmp(y2 + (size_t)i * 2 * N + N, y + (size_t)i * N,
                                 sizeof(float) * N) == 0,
                      "%s %s m=%d: zp_matmul_multi differs at row %d", tname, isa_names[s], m, i);
            /* one thread, and row by row */
            zp_set_num_threads(1);
            zp_matmul_w(y2, N, x, wh, wtype, m, K, N);
            zp_set_num_threads(2);
            CHECK(memcmp(y2, y, sizeof(float) * m * N) == 0, "%s %s m=%d: 1 vs 2 threads", tname,
                  isa_names[s], m);
            for (int i = 0; i < m; i += 3) {
                zp_matmul_w(y2, N, x + (size_t)i * K, wh, wtype, 1, K, N);
                CHECK(memcmp(y2, y + (size_t)i * N, sizeof(float) * N) == 0,
                      "%s %s m=%d: row %d alone differs", tname, isa_names[s], m, i);
            }
        }
    }
    zp_matmul_force_isa(NULL);
    free(wh), free(wf), free(x), free(ref), free(abs_sum), free(y), free(y32), free(y2);
}

/* With the wide tile forced on (the caller sets it), products of 8+ rows equal, bit for bit,
 * those of the default tile, for every weight type and a few K with tails and K blocks. */
static void check_wide_same(int wtype) {
    static const int Ks[] = {33, 768, 1041}, ms[] = {8, 13, 70};
    const int N = 23;
    for (int a = 0; a < 3; a++) {
        int K = Ks[a];
        uint16_t *wh = NULL;
        float *wf = NULL, *x = random_floats((size_t)70 * K);
        const void *w;
        if (wtype == ZP_WTYPE_F32)
            w = wf = random_floats((size_t)N * K);
        else {
            random_half(wtype, (size_t)N * K, &wh, &wf);
            w = wh;
        }
        float *y = malloc(sizeof(float) * 70 * N), *y0 = malloc(sizeof(float) * 70 * N);
        for (int b = 0; b < 3; b++) {
            int m = ms[b];
            zp_matmul_w(y, N, x, w, wtype, m, K, N);
            zp_matmul_set_wide_min_rows(1 << 30);
            zp_matmul_w(y0, N, x, w, wtype, m, K, N);
            zp_matmul_set_wide_min_rows(8);
            CHECK(memcmp(y, y0, sizeof(float) * m * N) == 0,
                  "wide tile differs: wtype %d m=%d K=%d", wtype, m, K);
        }
        free(wh), free(wf), free(x), free(y), free(y0);
    }
}

/* The widening itself, on every finite f16 and on a sweep of bf16 patterns: a 1 x K product with
 * x = e_k picks out weight k, so y is the widened value (times 1, plus zeros) bit for bit. */
static void check_widening(void) {
    const int K = 16, N = 4096; /* each row of w holds one pattern at k = row % 16, else 0 */
    uint16_t *w = calloc((size_t)N * K, sizeof *w);
    float *x = calloc((size_t)16 * K, sizeof *x), *y = malloc(sizeof(float) * 16 * N);
    for (int i = 0; i < 16; i++) x[(size_t)i * K + i] = 1.0f;
    for (int wtype = ZP_WTYPE_BF16; wtype <= ZP_WTYPE_F16; wtype++)
        for (uint32_t base = 0; base < 65536u; base += (uint32_t)N) {
            for (int n = 0; n < N; n++) {
                memset(w + (size_t)n * K, 0, sizeof *w * K);
                w[(size_t)n * K + n % K] = (uint16_t)(base + (uint32_t)n);
            }
            for (int s = 0; s < N_ISA; s++) {
                if (zp_matmul_force_isa(isa_names[s]) != 0) continue;
                zp_matmul_w(y, N, x, w, wtype, 16, K, N);
                int bad = 0;
                for (int n = 0; n < N; n++) {
                    uint16_t h = (uint16_t)(base + (uint32_t)n);
                    float want;
                    if (wtype == ZP_WTYPE_BF16) {
                        want = from_bf16(h);
                        if (isnan(want)) continue;
                        if (on_tiles(s, wtype) && (h & 0x7f80u) == 0)
                            want = 0.0f; /* the tile unit flushes subnormals */
                    } else {
                        if (((h >> 10) & 0x1f) == 0x1f)
                            continue; /* inf, NaN: 0 * inf in the other lanes */
                        want = from_f16(h);
                    }
                    if (isinf(want)) continue;
                    float got = y[(size_t)(n % K) * N + n];
                    /* -0 comes out +0 (added to the +0 of the other lanes): == holds for both */
                    if (got != want && bad++ < 3)
                        CHECK(0, "%s widening of 0x%04x: got %.9g want %.9g (%s)",
                              wtype == ZP_WTYPE_BF16 ? "bf16" : "f16", h, got, want, isa_names[s]);
                }
                CHECK(bad == 0, "widening %d", wtype);
            }
        }
    zp_matmul_force_isa(NULL);
    free(w), free(x), free(y);
}

/* ---------------------------------------------------------------- main */
/* ---------------------------------------------------------------- team splits
 * What a thread team calls: zp_matmul_part's shares (n_parts 1..5) and zp_matmul_range over any
 * cut of the groups into ranges (random lengths, taken in a shuffled order, with right, wrong and
 * no `next` hints), joint (w1/w3-like: same N) and not (three outputs of different N): every
 * column written exactly once, bitwise equal to one zp_matmul_w call per output made with lanes
 * off (adjacent groups), so that runs walked in lanes (m <= 8) are checked against adjacent
 * ones. */
static void check_ranges(const char *isa, int wtype, int K, int m) {
    enum { NO = 3 };
    const int Ns[NO] = {37, 64, 9};
    const char *what = wtype == ZP_WTYPE_F32 ? "f32" : "bf16";
    float *x = random_floats((size_t)m * K);
    void *w[NO];
    float *ref[NO], *y[NO], *wf;
    for (int j = 0; j < NO; j++) {
        if (wtype == ZP_WTYPE_F32) {
            w[j] = random_floats((size_t)Ns[j] * K);
        } else {
            uint16_t *h;
            random_half(wtype, (size_t)Ns[j] * K, &h, &wf);
            free(wf);
            w[j] = h;
        }
        ref[j] = malloc(sizeof(float) * m * Ns[j]);
        y[j] = malloc(sizeof(float) * m * Ns[j]);
    }
    zp_matmul_force_isa(isa);
    for (int joint = 0; joint < 2; joint++) {
        int n_out = joint ? 2 : NO, flags = joint ? ZP_MATMUL_JOINT : 0;
        zp_matmul_out out[NO];
        for (int j = 0; j < n_out; j++) {
            int N = joint ? Ns[0] : Ns[j];
            if (joint && j == 1) /* w1 and w3: same N, different weights */
                out[j] = (zp_matmul_out){y[j], N, w[1], wtype, N};
            else
                out[j] = (zp_matmul_out){y[j], N, w[j], wtype, N};
            zp_matmul_set_lanes(0);
            zp_matmul_w(ref[j], N, x, out[j].w, wtype, m, K, N);
            zp_matmul_set_lanes(-1);
        }
        int64_t groups = zp_matmul_groups(K, out, n_out, flags);
        int64_t want = 0;
        for (int j = 0; j < n_out; j++) want += joint ? 0 : (out[j].N + 3) / 4;
        CHECK(groups == (joint ? (Ns[0] + 3) / 4 : want), "%s %s: %lld groups", isa, what,
              (long long)groups);
        for (int trial = 0; trial < 8; trial++) {
            for (int j = 0; j < n_out; j++)
                for (int e = 0; e < m * out[j].N; e++) y[j][e] = NAN;
            if (trial < 5) { /* zp_matmul_part's shares, in reverse order */
                for (int part = trial; part >= 0; part--)
                    zp_matmul_part(x, m, K, out, n_out, flags, part, trial + 1);
            } else { /* random ranges, shuffled, with hints */
                int64_t cut[64], n_cut = 0;
                for (int64_t g = 0; g < groups; n_cut++) {
                    cut[n_cut] = g;
                    g += 1 + (int64_t)((uniform() + 1.f) * 3.f);
                }
                cut[n_cut] = groups;
                int order[64];
                for (int i = 0; i < n_cut; i++) order[i] = i;
                for (int i = n_cut - 1; i > 0; i--) {
                    int r = (int)((uniform() + 1.f) * 0.5f * (i + 1)) % (i + 1), t = order[i];
                    order[i] = order[r], order[r] = t;
                }
                for (int i = 0; i < n_cut; i++) {
                    int c = order[i];
                    int64_t next = trial == 5 ? -1 : trial == 6 ? cut[c + 1] : groups + 5;
                    int64_t next_end = trial == 6 && c + 1 < n_cut ? cut[c + 2] : next - 1;
                    zp_matmul_range(x, m, K, out, n_out, flags, cut[c], cut[c + 1], next, next_end);
                }
            }
            for (int j = 0; j < n_out; j++)
                CHECK(memcmp(y[j], ref[j], sizeof(float) * m * out[j].N) == 0,
                      "%s %s K=%d m=%d joint=%d trial %d: output %d differs from zp_matmul_w", isa,
                      what, K, m, joint, trial, j);
        }
        /* out of range: nothing written */
        for (int j = 0; j < n_out; j++)
            for (int e = 0; e < m * out[j].N; e++) y[j][e] = 7.f;
        zp_matmul_range(x, m, K, out, n_out, flags, -1, groups, -1, -1);
        zp_matmul_range(x, m, K, out, n_out, flags, groups, groups + 3, -1, -1);
        zp_matmul_range(x, m, K, out, n_out, flags, 3, 3, -1, -1);
        int touched = 0;
        for (int j = 0; j < n_out; j++)
            for (int e = 0; e < m * out[j].N; e++) touched |= y[j][e] != 7.f;
        CHECK(!touched, "%s %s joint=%d: an empty or out-of-range range wrote", isa, what, joint);
    }
    zp_matmul_force_isa(NULL);
    for (int j = 0; j < NO; j++) free(w[j]), free(ref[j]), free(y[j]);
    free(x);
}

/* Activations pass the bf16 kernels exactly (AMX: split into three bf16 parts): with unit
 * weights (row n of w is 1 at k = 5n, else 0) y[i][n] is x[i][5n] bit for bit, for rows in two
 * AMX panels, K with a tail and random float32 x of many magnitudes. A part dropped or put in
 * the wrong pair would show. */
static void check_exact_x(void) {
    const int m = 20, K = 70, N = 14;
    float *x = malloc(sizeof(float) * m * K), *y = malloc(sizeof(float) * m * N);
    uint16_t *w = calloc((size_t)N * K, sizeof *w);
    for (int i = 0; i < m * K; i++) x[i] = ldexpf(uniform(), (int)(uniform() * 40.f));
    for (int n = 0; n < N; n++) w[(size_t)n * K + 5 * n] = 0x3f80u; /* bf16 1.0 */
    for (int s = 0; s < N_ISA; s++) {
        if (zp_matmul_force_isa(isa_names[s]) != 0) continue;
        zp_matmul_w(y, N, x, w, ZP_WTYPE_BF16, m, K, N);
        int bad = 0;
        for (int i = 0; i < m; i++)
            for (int n = 0; n < N; n++)
                if (memcmp(&y[(size_t)i * N + n], &x[(size_t)i * K + 5 * n], 4) != 0 && bad++ < 3)
                    CHECK(0, "%s: x[%d][%d] = %.9g came out %.9g through unit bf16 weights",
                          isa_names[s], i, 5 * n, x[(size_t)i * K + 5 * n], y[(size_t)i * N + n]);
        CHECK(bad == 0, "%s: activations not exact through bf16 weights", isa_names[s]);
    }
    zp_matmul_force_isa(NULL);
    free(x), free(y), free(w);
}

/* The AMX path keeps each thread's last split of x: a call with the same buffer changed in one
 * element (its last) must see the change. Checked for every kernel against a fresh buffer. */
static void check_changed_x(void) {
    const int m = 3, K = 40, N = 20;
    uint16_t *wh;
    float *wf, *x = random_floats((size_t)m * K), *x2 = malloc(sizeof(float) * m * K);
    float *y = malloc(sizeof(float) * m * N), *want = malloc(sizeof(float) * m * N);
    random_half(ZP_WTYPE_BF16, (size_t)N * K, &wh, &wf);
    for (int s = 0; s < N_ISA; s++) {
        if (zp_matmul_force_isa(isa_names[s]) != 0) continue;
        zp_matmul_w(y, N, x, wh, ZP_WTYPE_BF16, m, K, N); /* fills the cache with x */
        memcpy(x2, x, sizeof(float) * m * K);
        x2[m * K - 1] += 0.5f;
        zp_matmul_w(want, N, x2, wh, ZP_WTYPE_BF16, m, K, N);
        x[m * K - 1] += 0.5f; /* the same buffer as the first call, now equal to x2 */
        zp_matmul_w(y, N, x, wh, ZP_WTYPE_BF16, m, K, N);
        CHECK(memcmp(y, want, sizeof(float) * m * N) == 0,
              "%s: a changed x in the same buffer "
              "gives a stale product",
              isa_names[s]);
    }
    zp_matmul_force_isa(NULL);
    free(wh), free(wf), free(x), free(x2), free(y), free(want);
}

/* bf16 weights in AMX tile order (zp_tile_bf16): the layout element by element (padding zeros);
 * the group numbering of ZP_MATMUL_TILES; and on an AMX CPU every product, share and random
 * range cut (numbered in 16s, and in 4s so that runs start inside a block) bitwise equal to the
 * AMX kernel on the same weights in place. Without AMX, a product of tile-order weights is a
 * no-op. */
static void check_tiles(void) {
    const int N = 37, K = 70, steps = (K + 31) / 32;
    uint16_t *wh;
    float *wf, *x = random_floats((size_t)13 * K);
    random_half(ZP_WTYPE_BF16, (size_t)N * K, &wh, &wf);
    size_t bytes = zp_tile_bf16_bytes(N, K);
    CHECK(bytes == (size_t)48 * 96 * 2, "tile-order copy of %zu bytes", bytes);
    CHECK(zp_tile_bf16_bytes(0, K) == 0 && zp_tile_bf16_bytes(N, 0) == 0, "empty sizes");
    uint16_t *t = malloc(bytes);
    zp_tile_bf16(t, wh, N, K);
    int bad = 0;
    for (int n = 0; n < 48; n++)
        for (int k = 0; k < 96; k++) {
            uint16_t got = t[((size_t)(n / 16 * steps + k / 32) * 16 + n % 16) * 32 + k % 32];
            uint16_t want = n < N && k < K ? wh[(size_t)n * K + k] : 0;
            bad += got != want;
        }
    CHECK(bad == 0, "tile order: %d elements misplaced", bad);
    float *y = malloc(sizeof(float) * 13 * N), *ref = malloc(sizeof(float) * 13 * N);
    zp_matmul_out bf = {y, N, wh, ZP_WTYPE_BF16, N};
    CHECK(zp_matmul_groups(K, &bf, 1, ZP_MATMUL_TILES) == (N + 15) / 16, "groups of 16 columns");

    if (zp_matmul_force_isa("amx") != 0) { /* no AMX: a no-op */
        for (int e = 0; e < 13 * N; e++) y[e] = 7.f;
        zp_matmul_w(y, N, x, t, ZP_WTYPE_BF16_TILES, 13, K, N);
        int touched = 0;
        for (int e = 0; e < 13 * N; e++) touched |= y[e] != 7.f;
        CHECK(!touched, "tile-order weights without AMX wrote");
    } else {
        static const int ms[] = {1, 2, 5, 6, 11, 13};
        for (int a = 0; a < 6; a++) {
            int m = ms[a];
            zp_matmul_w(ref, N, x, wh, ZP_WTYPE_BF16, m, K, N); /* AMX in place */
            zp_matmul_w(y, N, x, t, ZP_WTYPE_BF16_TILES, m, K, N);
            CHECK(memcmp(y, ref, sizeof(float) * m * N) == 0, "tile order differs, m=%d", m);
            for (int flags = 0; flags <= ZP_MATMUL_TILES; flags += ZP_MATMUL_TILES) {
                zp_matmul_out o = {y, N, t, ZP_WTYPE_BF16_TILES, N};
                int64_t groups = zp_matmul_groups(K, &o, 1, flags);
                for (int parts = 1; parts <= 4; parts++) {
                    for (int e = 0; e < m * N; e++) y[e] = NAN;
                    for (int part = parts - 1; part >= 0; part--)
                        zp_matmul_part(x, m, K, &o, 1, flags, part, parts);
                    CHECK(memcmp(y, ref, sizeof(float) * m * N) == 0,
                          "tile order, m=%d flags %d: %d shares differ", m, flags, parts);
                }
                for (int e = 0; e < m * N; e++) y[e] = NAN;
                for (int64_t g = 0; g < groups;) { /* random cuts, each hinting the next */
                    int64_t g1 = g + 1 + (int64_t)((uniform() + 1.f) * 1.5f);
                    g1 = g1 < groups ? g1 : groups;
                    zp_matmul_range(x, m, K, &o, 1, flags, g, g1, g1 < groups ? g1 : -1, -1);
                    g = g1;
                }
                CHECK(memcmp(y, ref, sizeof(float) * m * N) == 0,
                      "tile order, m=%d flags %d: range cuts differ", m, flags);
            }
        }
    }
    zp_matmul_force_isa(NULL);
    free(wh), free(wf), free(x), free(t), free(y), free(ref);
}

int main(void) {
    static const int Ks[] = {1, 3, 7, 16, 31, 64, 100, 768, 1041, 2048};
    static const int Ns[] = {1, 3, 17, 64, 100, 2304};
    const int n_K = (int)(sizeof Ks / sizeof Ks[0]), n_N = (int)(sizeof Ns / sizeof Ns[0]);

    printf("test_matmul: kernel %s, blas %s, %d threads, blas_min_rows %d\n", zp_matmul_isa(),
           zp_blas_name(), zp_get_num_threads(), zp_get_blas_min_rows());
    for (int s = 0; s < N_ISA; s++) {
        int ok = zp_matmul_force_isa(isa_names[s]) == 0;
        printf("  %-6s %s\n", isa_names[s], ok ? "tested" : "not supported by this CPU: skipped");
    }
    zp_matmul_force_isa(NULL);

    check_settings();
    zp_set_num_threads(2);
    for (int a = 0; a < n_K; a++)
        for (int b = 0; b < n_N; b++) check_shapes(Ks[a], Ns[b]);
    printf("  shapes: %d K x %d N x 16 m, against float64 reference: done\n", n_K, n_N);

    static const int det_K[] = {7, 100, 768}, det_N[] = {17, 100};
    for (int s = 0; s < N_ISA; s++)
        for (int a = 0; a < 3; a++)
            for (int b = 0; b < 2; b++) check_determinism(isa_names[s], det_K[a], det_N[b]);
    printf("  determinism: 1 vs 2 threads, alone vs batch, across kernels: done\n");

    static const int half_K[] = {1, 15, 16, 33, 100, 768, 1041, 2080}, half_N[] = {3, 17, 100};
    for (int t = ZP_WTYPE_BF16; t <= ZP_WTYPE_F16; t++)
        for (int a = 0; a < 8; a++)
            for (int b = 0; b < 3; b++) check_half(t, half_K[a], half_N[b]);
    /* the wide AVX-512 tile (off by default): the same bits as the default path */
    zp_matmul_set_wide_min_rows(8);
    for (int t = ZP_WTYPE_F32; t <= ZP_WTYPE_F16; t++) check_wide_same(t);
    zp_matmul_set_wide_min_rows(0);
    check_widening();
    check_exact_x();
    check_changed_x();
    check_tiles();
    printf("  bf16 / f16 weights: = float32 on widened weights (AMX: within float32 error, x "
           "exact), threads, rows, fused: done\n");

    for (int s = 0; s < N_ISA; s++) {
        check_ldy(isa_names[s], 5, 31, 17);
        check_ldy(isa_names[s], 17, 100, 6);
    }
    check_ldy(NULL, 70, 33, 19); /* BLAS path */
    printf("  ldy and unmodified inputs: done\n");

    for (int s = 0; s < N_ISA; s++) {
        if (zp_matmul_force_isa(isa_names[s]) != 0) continue;
        for (int t = ZP_WTYPE_F32; t <= ZP_WTYPE_BF16; t++) {
            check_ranges(isa_names[s], t, 100, 2);
            check_ranges(isa_names[s], t, 100, 6);   /* lanes with a 4-row and a 2-row tile */
            check_ranges(isa_names[s], t, 1100, 12); /* K blocks with several tiles */
        }
    }
    printf("  team splits (zp_matmul_part shares, zp_matmul_range cuts): done\n");

    zp_set_num_threads(0);
    if (failures) {
        printf("test_matmul: %d of %ld checks FAILED\n", failures, checks);
        return 1;
    }
    printf("test_matmul: all %ld checks passed\n", checks);
    return 0;
}
