/* matmul.c -- y = x . w^T: a skinny kernel for few rows (AVX-512 / AVX2 / plain C, chosen at run
 * time) and OpenBLAS sgemm for many rows. See matmul.h for the contract.
 *
 * Why a kernel of our own: a decode pass multiplies a handful of rows x (m = 1..64) by weight
 * matrices w that do not fit in cache, so the time is (bytes of w) / (memory bandwidth) when w is
 * read exactly once and the memory system is kept busy. OpenBLAS packs and blocks for the
 * square case and reaches a quarter to a half of the bandwidth at m = 1. Here the output columns
 * n (rows of w) are split into contiguous blocks, one per thread; each thread streams 4 rows of w
 * at a time, meets them with every row of x while they are still in L1, and prefetches the next
 * 4 rows meanwhile so that memory never idles while it computes.
 *
 * The summation order of every dot product is fixed by K alone (matmul.h): 16 lane sums with
 * fused multiply-add, then a 4-level tree. The three kernels implement that same order, so they
 * agree bit for bit, and tiling, batch composition and thread count cannot change a result.
 *
 * The file compiles without -march: the vector functions carry target attributes and are only
 * called after __builtin_cpu_supports says the CPU (and OS) can run them.
 */
#include "matmul.h"

#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "blas.h"

#define ZP_TARGET_AVX512 __attribute__((target("avx512f,avx512vl,avx2,fma")))
#define ZP_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define ZP_INLINE static inline __attribute__((always_inline))

enum {
    ZP_LANES = 16,         /* partial sums per dot product: fixes the summation order */
    ZP_COLS = 4,           /* rows of w (output columns) per tile */
    ZP_ROWS = 4,           /* rows of x per AVX-512 tile: 4 x 4 = 16 accumulators of 32 zmm */
    ZP_PANEL = 64,         /* rows of x whose accumulators a group keeps at once (16 tiles) */
};
/* With more than 4 rows of x, K is cut into blocks of ZP_KBLOCK floats when K > 2 * ZP_KBLOCK,
 * so that a tile's 4 rows of w and 4 rows of x (2 x 8 KiB) stay in L1 while the other tiles of
 * the group reuse them. Measured on Zen 5, K = 2048 and 4096: m = 16 about 1.4x faster with
 * blocks, m = 1 about 1.2x faster without. */
#ifndef ZP_KBLOCK
#define ZP_KBLOCK 512
#endif
/* Below this many multiply-adds (+ a w-read term) a product runs on the calling thread only:
 * forking costs a few microseconds. */
#define ZP_PARALLEL_MIN_WORK ((size_t)1 << 18)

/* ---------------------------------------------------------------- settings */
enum { ZP_ISA_UNSET = 0, ZP_ISA_SCALAR = 1, ZP_ISA_AVX2 = 2, ZP_ISA_AVX512 = 3 };

static int zp_isa_choice = ZP_ISA_UNSET; /* read and written with __atomic: set once, racily */
static int zp_threads = 0;               /* 0: omp_get_max_threads() at each call */
static int zp_blas_rows = 1 << 30;       /* m >= this goes to sgemm: off by default (see matmul.h) */

static int isa_supported(int isa)
{
    __builtin_cpu_init();
    switch (isa) {
    case ZP_ISA_AVX512:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case ZP_ISA_AVX2:
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case ZP_ISA_SCALAR:
        return 1;
    default:
        return 0;
    }
}

static int isa_current(void)
{
    int isa = __atomic_load_n(&zp_isa_choice, __ATOMIC_RELAXED);
    if (isa == ZP_ISA_UNSET) {
        isa = isa_supported(ZP_ISA_AVX512) ? ZP_ISA_AVX512
              : isa_supported(ZP_ISA_AVX2) ? ZP_ISA_AVX2
                                           : ZP_ISA_SCALAR;
        __atomic_store_n(&zp_isa_choice, isa, __ATOMIC_RELAXED);
    }
    return isa;
}

const char *zp_matmul_isa(void)
{
    switch (isa_current()) {
    case ZP_ISA_AVX512:
        return "avx512";
    case ZP_ISA_AVX2:
        return "avx2";
    default:
        return "scalar";
    }
}

int zp_matmul_force_isa(const char *isa)
{
    int want;
    if (isa == NULL) {
        __atomic_store_n(&zp_isa_choice, ZP_ISA_UNSET, __ATOMIC_RELAXED);
        return 0;
    }
    if (strcmp(isa, "avx512") == 0)
        want = ZP_ISA_AVX512;
    else if (strcmp(isa, "avx2") == 0)
        want = ZP_ISA_AVX2;
    else if (strcmp(isa, "scalar") == 0)
        want = ZP_ISA_SCALAR;
    else
        return -1;
    if (!isa_supported(want))
        return -1;
    __atomic_store_n(&zp_isa_choice, want, __ATOMIC_RELAXED);
    return 0;
}

int zp_set_num_threads(int n)
{
    /* Changing thread pools from inside a parallel region is undefined for OpenBLAS and would
     * only reach the calling OpenMP thread: refuse. Huge counts crash libgomp: refuse. */
    if (omp_in_parallel() || n < 0 || n > ZP_MAX_THREADS)
        return -1;
    __atomic_store_n(&zp_threads, n > 0 ? n : 0, __ATOMIC_RELAXED);
    if (n > 0)
        omp_set_num_threads(n);
    ZP_BLAS_FN(openblas_set_num_threads)(n > 0 ? n : omp_get_max_threads());
    return 0;
}

int zp_get_num_threads(void)
{
    int n = __atomic_load_n(&zp_threads, __ATOMIC_RELAXED);
    if (n <= 0)
        n = omp_get_max_threads(); /* OMP_NUM_THREADS may say anything: keep within the cap */
    return n < ZP_MAX_THREADS ? n : ZP_MAX_THREADS;
}

void zp_set_blas_min_rows(int m)
{
    __atomic_store_n(&zp_blas_rows, m > 1 ? m : 1, __ATOMIC_RELAXED);
}

int zp_get_blas_min_rows(void) { return __atomic_load_n(&zp_blas_rows, __ATOMIC_RELAXED); }

const char *zp_blas_name(void)
{
    static _Thread_local char name[256];
    const char *config = ZP_BLAS_FN(openblas_get_config)();
    size_t len;
    snprintf(name, sizeof name, "%s (%s", ZP_BLAS_NAME, config ? config : "?");
    len = strlen(name);
    while (len > 0 && name[len - 1] == ' ') /* OpenBLAS pads its config string */
        name[--len] = '\0';
    if (len + 1 < sizeof name) {
        name[len] = ')';
        name[len + 1] = '\0';
    }
    return name;
}

int zp_blas_threads(void) { return ZP_BLAS_FN(openblas_get_num_threads)(); }

/* ---------------------------------------------------------------- AVX-512 kernel */
/* Fold steps of the horizontal reduction. Each takes two vectors of partial sums and returns one
 * holding twice as many dot products with half as many partial sums each, pairing exactly the
 * elements of the tree in matmul.h (s8[j] = s[j] + s[j+8], s4, s2, s1). Float addition is
 * commutative bit for bit, so only the pairing matters. */
ZP_INLINE ZP_TARGET_AVX512 __m512 fold16_avx512(__m512 u, __m512 v)
{
    /* u, v: 16 sums of one dot each -> [u s8 (8) | v s8 (8)] */
    __m512 lo = _mm512_shuffle_f32x4(u, v, _MM_SHUFFLE(1, 0, 1, 0));
    __m512 hi = _mm512_shuffle_f32x4(u, v, _MM_SHUFFLE(3, 2, 3, 2));
    return _mm512_add_ps(lo, hi);
}

ZP_INLINE ZP_TARGET_AVX512 __m512 fold8_avx512(__m512 u, __m512 v)
{
    /* [A s8 | B s8], [C s8 | D s8] -> [A s4 | B s4 | C s4 | D s4] */
    __m512 lo = _mm512_shuffle_f32x4(u, v, _MM_SHUFFLE(2, 0, 2, 0));
    __m512 hi = _mm512_shuffle_f32x4(u, v, _MM_SHUFFLE(3, 1, 3, 1));
    return _mm512_add_ps(lo, hi);
}

ZP_INLINE ZP_TARGET_AVX512 __m512 fold4_avx512(__m512 u, __m512 v)
{
    /* per 128-bit block b: [u_b s4 (4)], [v_b s4 (4)] -> [u_b s2 (2), v_b s2 (2)] */
    __m512 lo = _mm512_shuffle_ps(u, v, _MM_SHUFFLE(1, 0, 1, 0));
    __m512 hi = _mm512_shuffle_ps(u, v, _MM_SHUFFLE(3, 2, 3, 2));
    return _mm512_add_ps(lo, hi);
}

ZP_INLINE ZP_TARGET_AVX512 __m512 fold2_avx512(__m512 u, __m512 v)
{
    /* per 128-bit block: [p s2, q s2], [r s2, t s2] -> [p, q, r, t] */
    __m512 lo = _mm512_shuffle_ps(u, v, _MM_SHUFFLE(2, 0, 2, 0));
    __m512 hi = _mm512_shuffle_ps(u, v, _MM_SHUFFLE(3, 1, 3, 1));
    return _mm512_add_ps(lo, hi);
}

/* Software prefetch of the w that the next (group, K block) will read, spread over the tiles of
 * the current one: each tile requests one line per 16 floats of K from each of its n rows,
 * row[j][0 .. len). */
typedef struct {
    const float *row[ZP_COLS];
    int n;   /* rows of the next block this tile prefetches, 0..4 */
    int len; /* floats per row */
} zp_prefetch;

/* One tile over K block [k0, k1): y[r][c] = x_r . w_c for r < MR (<= 4 rows of x, stride K) and
 * c < nc (<= 4 rows of w given by wrow; the entries for c >= nc repeat a valid row and are not
 * stored). y: the tile's top-left output, row stride ldy. state: the 16 accumulators carried
 * between K blocks (saved and reloaded exactly, so the summation order is that of one pass).
 * MR is a constant after inlining, so the 4 x MR accumulators live in zmm registers.
 * Per 16 floats of K: 4 loads of w, MR loads of x, 4*MR fused multiply-adds, pf->n prefetches. */
ZP_INLINE ZP_TARGET_AVX512 void tile_avx512(float *y, int ldy, const float *x,
                                            const float *const wrow[ZP_COLS], int K, int k0,
                                            int k1, int nc, __m512 *state, const zp_prefetch *pf,
                                            const int MR)
{
    __m512 acc[ZP_ROWS][ZP_COLS]; /* [x row][w row], 16 lanes of partial sums each */
    for (int r = 0; r < ZP_ROWS; r++)
        for (int c = 0; c < ZP_COLS; c++)
            acc[r][c] = k0 == 0 || r >= MR ? _mm512_setzero_ps() : state[ZP_COLS * r + c];

    int k = k0, pf_off = 0;
#pragma GCC unroll 2
    for (; k + ZP_LANES <= k1; k += ZP_LANES, pf_off += ZP_LANES) {
        if (pf_off < pf->len)
            for (int j = 0; j < pf->n; j++)
                _mm_prefetch((const char *)(pf->row[j] + pf_off), _MM_HINT_T0);
        __m512 wv[ZP_COLS];
        for (int c = 0; c < ZP_COLS; c++)
            wv[c] = _mm512_loadu_ps(wrow[c] + k);
        for (int r = 0; r < MR; r++) {
            __m512 xv = _mm512_loadu_ps(x + (size_t)r * K + k);
            for (int c = 0; c < ZP_COLS; c++)
                acc[r][c] = _mm512_fmadd_ps(xv, wv[c], acc[r][c]);
        }
    }
    if (k1 < K) { /* more K blocks to come */
        for (int r = 0; r < MR; r++)
            for (int c = 0; c < ZP_COLS; c++)
                state[ZP_COLS * r + c] = acc[r][c];
        return;
    }
    if (k < K) {
        /* K % 16 tail: masked lanes load 0 and fma(0, 0, s) = s, so each lane keeps its order */
        __mmask16 tail = (__mmask16)((1u << (K - k)) - 1u);
        __m512 wv[ZP_COLS];
        for (int c = 0; c < ZP_COLS; c++)
            wv[c] = _mm512_maskz_loadu_ps(tail, wrow[c] + k);
        for (int r = 0; r < MR; r++) {
            __m512 xv = _mm512_maskz_loadu_ps(tail, x + (size_t)r * K + k);
            for (int c = 0; c < ZP_COLS; c++)
                acc[r][c] = _mm512_fmadd_ps(xv, wv[c], acc[r][c]);
        }
    }

    /* 16 vectors -> 1: pair index d = 4c + r in the tree below; lane 4r + c of the result holds
     * y[r][c], so each row of x stores one 128-bit group of 4 columns. */
    __m512 f16[8], f8[4], f4[2];
    for (int p = 0; p < 8; p++)
        f16[p] = fold16_avx512(acc[(2 * p) % 4][(2 * p) / 4],
                               acc[(2 * p + 1) % 4][(2 * p + 1) / 4]);
    for (int q = 0; q < 4; q++)
        f8[q] = fold8_avx512(f16[2 * q], f16[2 * q + 1]);
    for (int t = 0; t < 2; t++)
        f4[t] = fold4_avx512(f8[2 * t], f8[2 * t + 1]);
    __m512 sums = fold2_avx512(f4[0], f4[1]);

    float out[ZP_ROWS * ZP_COLS] __attribute__((aligned(64)));
    _mm512_store_ps(out, sums);
    __mmask8 cols = (__mmask8)((1u << nc) - 1u);
    for (int r = 0; r < MR; r++)
        _mm_mask_storeu_ps(y + (size_t)r * ldy, cols, _mm_load_ps(out + ZP_COLS * r));
}

/* The w rows and K range that the block after (group n0, block [k0, k1)) reads: the next K block
 * of the same rows, else the first K block of the next group (none after the last group). */
static void next_block(const float *w, int K, int N, int n0, int k1, int kblock,
                       const float *rows[ZP_COLS], int *n_rows, int *len)
{
    int first = k1 < K ? n0 : n0 + ZP_COLS, k = k1 < K ? k1 : 0;
    *n_rows = N - first < ZP_COLS ? (N - first > 0 ? N - first : 0) : ZP_COLS;
    *len = K - k < kblock ? K - k : kblock;
    for (int c = 0; c < *n_rows; c++)
        rows[c] = w + (size_t)(first + c) * K + k;
}

/* Output columns n0 .. n0+3 (clipped at N) for all m rows: 4 rows of w against 4 rows of x at a
 * time, in panels of up to 64 rows of x, K in blocks. Within a (panel, K block) the first tile
 * takes w from memory and the others reuse it from L1; so that memory stays busy while they
 * compute, the T tiles share out the prefetch of the next block's rows (T < 4: 4/T rows each;
 * T >= 4: tiles 0..3 one row each). */
static ZP_TARGET_AVX512 void group_avx512(float *y, int ldy, const float *x, const float *w, int m,
                                          int K, int N, int n0)
{
    int nc = N - n0 < ZP_COLS ? N - n0 : ZP_COLS;
    const float *wrow[ZP_COLS];
    for (int c = 0; c < ZP_COLS; c++)
        wrow[c] = w + (size_t)(n0 + (c < nc ? c : nc - 1)) * K;
    __m512 state[ZP_PANEL / ZP_ROWS][ZP_ROWS * ZP_COLS]; /* (tiles, 16 accumulators) */

    for (int i0 = 0; i0 < m; i0 += ZP_PANEL) {
        int rows = m - i0 < ZP_PANEL ? m - i0 : ZP_PANEL, tiles = (rows + ZP_ROWS - 1) / ZP_ROWS;
        /* one tile reads x once: no blocking, and the prefetch runs a whole group ahead */
        int kblock = tiles > 1 && K > 2 * ZP_KBLOCK ? ZP_KBLOCK : (K > 0 ? K : 1);
        int k0 = 0;
        do {
            int k1 = K - k0 < kblock ? K : k0 + kblock;
            const float *next[ZP_COLS];
            int n_next, len;
            next_block(w, K, N, n0, k1, kblock, next, &n_next, &len);
            for (int t = 0; t < tiles; t++) {
                int i = i0 + ZP_ROWS * t;
                zp_prefetch pf = {{NULL}, 0, len};
                int from = tiles >= ZP_COLS ? t : n_next * t / tiles;
                int to = tiles >= ZP_COLS ? t + 1 : n_next * (t + 1) / tiles;
                for (int c = from; c < to && c < n_next; c++)
                    pf.row[pf.n++] = next[c];
                float *yi = y + (size_t)i * ldy + n0;
                const float *xi = x + (size_t)i * K;
                switch (m - i < ZP_ROWS ? m - i : ZP_ROWS) { /* constant MR: one loop per case */
                case 4: tile_avx512(yi, ldy, xi, wrow, K, k0, k1, nc, state[t], &pf, 4); break;
                case 3: tile_avx512(yi, ldy, xi, wrow, K, k0, k1, nc, state[t], &pf, 3); break;
                case 2: tile_avx512(yi, ldy, xi, wrow, K, k0, k1, nc, state[t], &pf, 2); break;
                default: tile_avx512(yi, ldy, xi, wrow, K, k0, k1, nc, state[t], &pf, 1); break;
                }
            }
            k0 = k1;
        } while (k0 < K);
    }
}

/* ---------------------------------------------------------------- AVX2 kernel */
/* The same 16 lane sums as two 8-lane halves (lanes 0-7 and 8-15); s8 = lo + hi is the first
 * level of the tree. */
ZP_INLINE ZP_TARGET_AVX2 float reduce_avx2(__m256 lo, __m256 hi)
{
    __m256 s8 = _mm256_add_ps(lo, hi);
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    __m128 s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, _MM_SHUFFLE(1, 1, 1, 1)));
    return _mm_cvtss_f32(s1);
}

/* y[c] = x . w_c for c < nc: one row of x (K floats) against 4 rows of w; 8 ymm accumulators.
 * Per 16 floats of K: 8 loads of w, 2 of x, 8 fused multiply-adds. */
static ZP_TARGET_AVX2 void tile_avx2(float *y, const float *x, const float *const wrow[ZP_COLS],
                                     int K, int nc)
{
    __m256 lo[ZP_COLS], hi[ZP_COLS]; /* lanes 0-7 and 8-15 of each dot's partial sums */
    for (int c = 0; c < ZP_COLS; c++)
        lo[c] = hi[c] = _mm256_setzero_ps();

    int k = 0;
    for (; k + ZP_LANES <= K; k += ZP_LANES) {
        __m256 xlo = _mm256_loadu_ps(x + k), xhi = _mm256_loadu_ps(x + k + 8);
        for (int c = 0; c < ZP_COLS; c++) {
            lo[c] = _mm256_fmadd_ps(xlo, _mm256_loadu_ps(wrow[c] + k), lo[c]);
            hi[c] = _mm256_fmadd_ps(xhi, _mm256_loadu_ps(wrow[c] + k + 8), hi[c]);
        }
    }
    if (k < K) {
        __m256i left = _mm256_set1_epi32(K - k);
        __m256i mlo = _mm256_cmpgt_epi32(left, _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        __m256i mhi = _mm256_cmpgt_epi32(left, _mm256_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15));
        __m256 xlo = _mm256_maskload_ps(x + k, mlo), xhi = _mm256_maskload_ps(x + k + 8, mhi);
        for (int c = 0; c < ZP_COLS; c++) {
            lo[c] = _mm256_fmadd_ps(xlo, _mm256_maskload_ps(wrow[c] + k, mlo), lo[c]);
            hi[c] = _mm256_fmadd_ps(xhi, _mm256_maskload_ps(wrow[c] + k + 8, mhi), hi[c]);
        }
    }
    for (int c = 0; c < nc; c++)
        y[c] = reduce_avx2(lo[c], hi[c]);
}

static ZP_TARGET_AVX2 void group_avx2(float *y, int ldy, const float *x, const float *w, int m,
                                      int K, int N, int n0)
{
    int nc = N - n0 < ZP_COLS ? N - n0 : ZP_COLS;
    const float *wrow[ZP_COLS];
    for (int c = 0; c < ZP_COLS; c++)
        wrow[c] = w + (size_t)(n0 + (c < nc ? c : nc - 1)) * K;
    for (int i = 0; i < m; i++)
        tile_avx2(y + (size_t)i * ldy + n0, x + (size_t)i * K, wrow, K, nc);
}

/* ---------------------------------------------------------------- scalar kernel */
/* The reference order in plain C: fmaf is one rounding, like the vector FMA. Slow without
 * hardware FMA, but only CPUs older than 2013 take this path. */
static float dot_scalar(const float *x, const float *w, int K)
{
    float s[ZP_LANES] = {0};
    int k = 0;
    for (; k + ZP_LANES <= K; k += ZP_LANES)
        for (int j = 0; j < ZP_LANES; j++)
            s[j] = fmaf(x[k + j], w[k + j], s[j]);
    for (int j = 0; k + j < K; j++)
        s[j] = fmaf(x[k + j], w[k + j], s[j]);

    float s8[8], s4[4], s2[2];
    for (int j = 0; j < 8; j++)
        s8[j] = s[j] + s[j + 8];
    for (int j = 0; j < 4; j++)
        s4[j] = s8[j] + s8[j + 4];
    for (int j = 0; j < 2; j++)
        s2[j] = s4[j] + s4[j + 2];
    return s2[0] + s2[1];
}

static void group_scalar(float *y, int ldy, const float *x, const float *w, int m, int K, int N,
                         int n0)
{
    int nc = N - n0 < ZP_COLS ? N - n0 : ZP_COLS;
    for (int i = 0; i < m; i++)
        for (int c = 0; c < nc; c++)
            y[(size_t)i * ldy + n0 + c] =
                dot_scalar(x + (size_t)i * K, w + (size_t)(n0 + c) * K, K);
}

/* ---------------------------------------------------------------- dispatch */
/* The skinny product: groups of 4 output columns, split into one contiguous block per thread
 * (static schedule), so each thread streams its own slice of w exactly once. */
static void matmul_skinny(float *y, int ldy, const float *x, const float *w, int m, int K, int N)
{
    int isa = isa_current();
    int groups = (N + ZP_COLS - 1) / ZP_COLS;
    int threads = zp_get_num_threads();
    int parallel = threads > 1 && groups > 1 &&
                   (size_t)K * (size_t)N * (size_t)(m + 4) >= ZP_PARALLEL_MIN_WORK;

#pragma omp parallel for schedule(static) num_threads(threads) if (parallel)
    for (int g = 0; g < groups; g++) {
        if (isa == ZP_ISA_AVX512)
            group_avx512(y, ldy, x, w, m, K, N, g * ZP_COLS);
        else if (isa == ZP_ISA_AVX2)
            group_avx2(y, ldy, x, w, m, K, N, g * ZP_COLS);
        else
            group_scalar(y, ldy, x, w, m, K, N, g * ZP_COLS);
    }
}

void zp_matmul_ld(float *y, int ldy, const float *x, const float *w, int m, int K, int N)
{
    if (m <= 0 || N <= 0 || K < 0 || ldy < N)
        return;
    /* BLAS only with K >= 1 (its lda must be >= 1) and never from inside a parallel region:
     * there the skinny kernel runs on the calling thread (nested regions are inactive). */
    if (m >= zp_get_blas_min_rows() && K > 0 && !omp_in_parallel()) {
        ZP_BLAS_FN(cblas_sgemm)(ZP_BLAS_ROW_MAJOR, ZP_BLAS_NO_TRANS, ZP_BLAS_TRANS, m, N, K, 1.0f,
                                x, K, w, K, 0.0f, y, ldy);
        return;
    }
    matmul_skinny(y, ldy, x, w, m, K, N);
}

void zp_matmul(float *y, const float *x, const float *w, int m, int K, int N)
{
    zp_matmul_ld(y, N, x, w, m, K, N);
}
