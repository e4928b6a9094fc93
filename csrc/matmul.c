/* matmul.c -- y = x . w^T: a skinny kernel for few rows (AVX-512 / AVX2 / plain C, chosen at run
 * time) and OpenBLAS sgemm for many rows. See matmul.h for the contract.
 *
 * Why a kernel of our own: a decode pass multiplies a handful of rows x (m = 1..64) by weight
 * matrices w that do not fit in cache, so the time is (bytes of w) / (memory bandwidth) when w is
 * read exactly once and the memory system is kept busy. OpenBLAS packs and blocks for the
 * square case and reaches a quarter to a half of the bandwidth at m = 1. Here the output columns
 * n (rows of w) are split into contiguous blocks, one per thread; each thread streams 4 rows of w
 * at a time, meets them with every row of x while they are still in L1, and prefetches the next
 * 4 rows meanwhile so that memory never idles while it computes. With few rows of x the 4 rows
 * are one from each quarter of the thread's run of columns (run_lanes): 4 sequential streams.
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
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#if defined(__linux__) && defined(__x86_64__)
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "blas.h"

#define ZP_TARGET_AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx2,fma,f16c")))
#define ZP_TARGET_AVX2   __attribute__((target("avx2,fma,f16c")))
#define ZP_TARGET_AMX                                                                              \
    __attribute__((target("amx-tile,amx-bf16,avx512f,avx512vl,avx512bw,avx2,fma,f16c")))
#define ZP_INLINE static inline __attribute__((always_inline))

enum {
    ZP_LANES = 16, /* partial sums per dot product: fixes the summation order */
    ZP_COLS = 4,   /* rows of w (output columns) per tile */
    ZP_WIDE = 6,   /* rows of w per wide AVX-512 tile (off by default: see matmul.h) */
    ZP_WIDE_MIN_ROWS = 1 << 30,
    ZP_ROWS = 4,   /* rows of x per AVX-512 tile: 4 x 4 = 16 accumulators of 32 zmm */
    ZP_PANEL = 64, /* rows of x whose accumulators a group keeps at once (16 tiles) */
};
/* With more than 4 rows of x, K is cut into blocks of ZP_KBLOCK floats when K > 2 * ZP_KBLOCK,
 * so that a tile's 4 rows of w and 4 rows of x (2 x 8 KiB) stay in L1 while the other tiles of
 * the group reuse them. Measured on Zen 5, K = 2048 and 4096: m = 16 about 1.4x faster with
 * blocks, m = 1 about 1.2x faster without. */
#ifndef ZP_KBLOCK
#define ZP_KBLOCK 512
#endif

/* bf16 / f16 weights in a panel of at least this many tiles of x rows are widened once per
 * (panel, K block) into a float32 scratch block that the tiles share; fewer tiles widen in
 * registers, each tile its own loads. Measured on the 16-core AVX-512 host
 * (csrc/tests/bench_rows.c; BENCHMARKS.md, issue 13, stop 24), GPT-L and GPT-B layers, cold and
 * hot weights, 2 and 16 threads: in registers 1.06-1.28x faster at m = 6..12 (2-3 tiles),
 * within 6% either way at m = 16..20, 0-6% slower from m = 24 (6 tiles). */
#ifndef ZP_WIDEN_MIN_TILES
#define ZP_WIDEN_MIN_TILES 5
#endif

/* Cache level the software prefetch of the next weights targets; ZP_PF_OFF compiles the prefetch
 * out (hardware prefetch only). Measured on the 16-core AVX-512 host (BENCHMARKS.md, issue 13):
 * T0 and T1 (L2) within its noise; off, a GPT-L bf16 one-query pass took 1.4x as long at 2
 * threads and 1.2x at 16. */
#ifndef ZP_PF_HINT
#define ZP_PF_HINT _MM_HINT_T0
#endif

/* ---------------------------------------------------------------- settings */
/* ZP_ISA_AMX: AVX-512 for float32 / f16 weights and AMX tiles for bf16 ones (matmul.h). */
enum { ZP_ISA_UNSET = 0, ZP_ISA_SCALAR = 1, ZP_ISA_AVX2 = 2, ZP_ISA_AVX512 = 3, ZP_ISA_AMX = 4 };

static int zp_isa_choice = ZP_ISA_UNSET; /* read and written with __atomic: set once, racily */
static int zp_threads = 0;               /* 0: omp_get_max_threads() at each call */
static int zp_blas_rows = 1 << 30; /* m >= this goes to sgemm: off by default (see matmul.h) */
static int zp_wide_rows = ZP_WIDE_MIN_ROWS;     /* m >= this takes the wide AVX-512 tile */
static int zp_widen_tiles = ZP_WIDEN_MIN_TILES; /* zp_matmul_set_widen_min_tiles */

/* AMX-TILE and AMX-BF16 in CPUID, and the kernel's permission to use the tile data (Linux asks
 * each process to request it, arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA); granted once
 * for all its threads). Asked once; 0 on other systems. */
static int amx_ready(void) {
#if defined(__linux__) && defined(__x86_64__)
    static int ready = -1; /* -1: not asked yet; racing first calls ask twice, harmlessly */
    int r = __atomic_load_n(&ready, __ATOMIC_RELAXED);
    if (r < 0) {
        unsigned a, b, c, d;
        r = __get_cpuid_count(7, 0, &a, &b, &c, &d) && (d & (1u << 24)) && (d & (1u << 22)) &&
            syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XTILEDATA */) == 0;
        __atomic_store_n(&ready, r, __ATOMIC_RELAXED);
    }
    return r;
#else
    return 0;
#endif
}

static int isa_supported(int isa) {
    __builtin_cpu_init();
    switch (isa) {
    case ZP_ISA_AMX: return isa_supported(ZP_ISA_AVX512) && amx_ready();
    case ZP_ISA_AVX512:
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
               __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx2") &&
               __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
    case ZP_ISA_AVX2:
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
               __builtin_cpu_supports("f16c");
    case ZP_ISA_SCALAR: return 1;
    default: return 0;
    }
}

static int isa_current(void) {
    int isa = __atomic_load_n(&zp_isa_choice, __ATOMIC_RELAXED);
    if (isa == ZP_ISA_UNSET) {
        /* never AMX on its own: slower than AVX-512 where measured (matmul.h) */
        isa = isa_supported(ZP_ISA_AVX512) ? ZP_ISA_AVX512
              : isa_supported(ZP_ISA_AVX2) ? ZP_ISA_AVX2
                                           : ZP_ISA_SCALAR;
        __atomic_store_n(&zp_isa_choice, isa, __ATOMIC_RELAXED);
    }
    return isa;
}

const char *zp_matmul_isa(void) {
    switch (isa_current()) {
    case ZP_ISA_AMX: return "amx";
    case ZP_ISA_AVX512: return "avx512";
    case ZP_ISA_AVX2: return "avx2";
    default: return "scalar";
    }
}

/* The ISA named, or ZP_ISA_UNSET for an unknown name. */
static int isa_by_name(const char *isa) {
    if (strcmp(isa, "amx") == 0) return ZP_ISA_AMX;
    if (strcmp(isa, "avx512") == 0) return ZP_ISA_AVX512;
    if (strcmp(isa, "avx2") == 0) return ZP_ISA_AVX2;
    if (strcmp(isa, "scalar") == 0) return ZP_ISA_SCALAR;
    return ZP_ISA_UNSET;
}

int zp_matmul_isa_supported(const char *isa) {
    return isa != NULL && isa_supported(isa_by_name(isa));
}

int zp_matmul_force_isa(const char *isa) {
    if (isa == NULL) {
        __atomic_store_n(&zp_isa_choice, ZP_ISA_UNSET, __ATOMIC_RELAXED);
        return 0;
    }
    int want = isa_by_name(isa);
    if (!isa_supported(want)) return -1; /* unknown names too: isa_supported(UNSET) is 0 */
    __atomic_store_n(&zp_isa_choice, want, __ATOMIC_RELAXED);
    return 0;
}

int zp_set_num_threads(int n) {
    /* Changing thread pools from inside a parallel region is undefined for OpenBLAS and would
     * only reach the calling OpenMP thread: refuse. Huge counts crash libgomp: refuse. */
    if (omp_in_parallel() || n < 0 || n > ZP_MAX_THREADS) return -1;
    __atomic_store_n(&zp_threads, n > 0 ? n : 0, __ATOMIC_RELAXED);
    if (n > 0) omp_set_num_threads(n);
    ZP_BLAS_FN(openblas_set_num_threads)(n > 0 ? n : omp_get_max_threads());
    return 0;
}

int zp_get_num_threads(void) {
    int n = __atomic_load_n(&zp_threads, __ATOMIC_RELAXED);
    if (n <= 0)
        n = omp_get_max_threads(); /* OMP_NUM_THREADS may say anything: keep within the cap */
    return n < ZP_MAX_THREADS ? n : ZP_MAX_THREADS;
}

void zp_matmul_set_wide_min_rows(int m) {
    __atomic_store_n(&zp_wide_rows, m > 0 ? m : ZP_WIDE_MIN_ROWS, __ATOMIC_RELAXED);
}

void zp_matmul_set_widen_min_tiles(int tiles) {
    __atomic_store_n(&zp_widen_tiles, tiles > 0 ? tiles : ZP_WIDEN_MIN_TILES, __ATOMIC_RELAXED);
}

void zp_set_blas_min_rows(int m) {
    __atomic_store_n(&zp_blas_rows, m > 1 ? m : 1, __ATOMIC_RELAXED);
}

int zp_get_blas_min_rows(void) {
    return __atomic_load_n(&zp_blas_rows, __ATOMIC_RELAXED);
}

const char *zp_blas_name(void) {
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

int zp_blas_threads(void) {
    return ZP_BLAS_FN(openblas_get_num_threads)();
}

int zp_wtype_size(int wtype) {
    switch (wtype) {
    case ZP_WTYPE_F32: return 4;
    case ZP_WTYPE_BF16:
    case ZP_WTYPE_F16:
    case ZP_WTYPE_BF16_TILES: return 2;
    default: return 0;
    }
}

/* Rows of weights read next (the next tile of a run, or after the run's last tile the first tile
 * of what the caller runs next): a group prefetches them while it computes, so that memory does
 * not idle between groups or runs. rows = 0 or w = NULL: none. */
typedef struct {
    const char *w; /* first row, K elements of es bytes each */
    int rows;
    int es;
    size_t step; /* bytes from one row to the next: K * es for adjacent rows, more for lanes */
} zp_after;

/* The output columns of one tile: n0 + c * step for c < nc (nc <= the tile's width). step 1: a
 * group of adjacent columns; step > 1: one column of each lane of a run (run_cols). */
typedef struct {
    int n0, step, nc;
} zp_colset;

/* ---------------------------------------------------------------- AVX-512 kernel */
/* 16 weights at p (element type DT, a constant after inlining) as float32. Widening bf16 (a
 * shift into the high half) and f16 (vcvtph2ps) is exact, so the products and sums that follow
 * are those of the float32 kernel on the widened weights. */
ZP_INLINE ZP_TARGET_AVX512 __m512 wload_avx512(const char *p, const int DT) {
    if (DT == ZP_WTYPE_F32) return _mm512_loadu_ps((const float *)p);
    __m256i h = _mm256_loadu_si256((const __m256i *)p);
    if (DT == ZP_WTYPE_BF16)
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    return _mm512_cvtph_ps(h);
}

/* The same for the lanes of `tail` only; the others are 0 (a masked load never touches them). */
ZP_INLINE ZP_TARGET_AVX512 __m512 wload_tail_avx512(const char *p, __mmask16 tail, const int DT) {
    if (DT == ZP_WTYPE_F32) return _mm512_maskz_loadu_ps(tail, p);
    __m256i h = _mm256_maskz_loadu_epi16(tail, p);
    if (DT == ZP_WTYPE_BF16)
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    return _mm512_cvtph_ps(h);
}

/* Fold steps of the horizontal reduction. Each takes two vectors of partial sums and returns one
 * holding twice as many dot products with half as many partial sums each, pairing exactly the
 * elements of the tree in matmul.h (s8[j] = s[j] + s[j+8], s4, s2, s1). Float addition is
 * commutative bit for bit, so only the pairing matters. */
ZP_INLINE ZP_TARGET_AVX512 __m512 fold16_avx512(__m512 u, __m512 v) {
    /* u, v: 16 sums of one dot each -> [u s8 (8) | v s8 (8)] */
    __m512 lo = _mm512_shuffle_f32x4(u, v, _MM_SHUFFLE(1, 0, 1, 0));
    __m512 hi = _mm512_shuffle_f32x4(u, v, _MM_SHUFFLE(3, 2, 3, 2));
    return _mm512_add_ps(lo, hi);
}

ZP_INLINE ZP_TARGET_AVX512 __m512 fold8_avx512(__m512 u, __m512 v) {
    /* [A s8 | B s8], [C s8 | D s8] -> [A s4 | B s4 | C s4 | D s4] */
    __m512 lo = _mm512_shuffle_f32x4(u, v, _MM_SHUFFLE(2, 0, 2, 0));
    __m512 hi = _mm512_shuffle_f32x4(u, v, _MM_SHUFFLE(3, 1, 3, 1));
    return _mm512_add_ps(lo, hi);
}

ZP_INLINE ZP_TARGET_AVX512 __m512 fold4_avx512(__m512 u, __m512 v) {
    /* per 128-bit block b: [u_b s4 (4)], [v_b s4 (4)] -> [u_b s2 (2), v_b s2 (2)] */
    __m512 lo = _mm512_shuffle_ps(u, v, _MM_SHUFFLE(1, 0, 1, 0));
    __m512 hi = _mm512_shuffle_ps(u, v, _MM_SHUFFLE(3, 2, 3, 2));
    return _mm512_add_ps(lo, hi);
}

ZP_INLINE ZP_TARGET_AVX512 __m512 fold2_avx512(__m512 u, __m512 v) {
    /* per 128-bit block: [p s2, q s2], [r s2, t s2] -> [p, q, r, t] */
    __m512 lo = _mm512_shuffle_ps(u, v, _MM_SHUFFLE(2, 0, 2, 0));
    __m512 hi = _mm512_shuffle_ps(u, v, _MM_SHUFFLE(3, 1, 3, 1));
    return _mm512_add_ps(lo, hi);
}

/* 16 vectors of 16 lane sums -> 1 vector of 16 dot products: input d = 4c + r (c, r < 4) comes
 * out in lane 4r + c, so that each row r of a tile stores one 128-bit group of 4 columns. */
ZP_INLINE ZP_TARGET_AVX512 __m512 reduce16_avx512(const __m512 v[16]) {
    __m512 f16[8], f8[4], f4[2];
    for (int p = 0; p < 8; p++) f16[p] = fold16_avx512(v[2 * p], v[2 * p + 1]);
    for (int q = 0; q < 4; q++) f8[q] = fold8_avx512(f16[2 * q], f16[2 * q + 1]);
    for (int t = 0; t < 2; t++) f4[t] = fold4_avx512(f8[2 * t], f8[2 * t + 1]);
    return fold2_avx512(f4[0], f4[1]);
}

/* Software prefetch of the w that the next (group, K block) will read, spread over the tiles of
 * the current one: each tile requests one line per 64 bytes of K from each of its n rows,
 * row[j][0 .. len) (len in elements). */
typedef struct {
    const char *row[ZP_WIDE];
    int n;   /* rows of the next block this tile prefetches, 0..NC */
    int len; /* elements per row */
    int es;  /* bytes per element of those rows */
} zp_prefetch;

/* One tile over K block [k0, k1): y[r][c] = x_r . w_c for r < MR (<= 4 rows of x, stride K) and
 * c < nc (<= NC rows of w given by wrow, elements of type DT; the entries for c >= nc repeat a
 * valid row and are not stored; element k of row c is at wrow[c] + (k - kbase) elements: kbase is
 * 0 for weights read in place, k0 for a block widened into a scratch buffer). NC is 4 (the skinny
 * tile) or 6 (the wide tile of passes with many rows: 24 accumulators, each row of x loaded once
 * per 6 rows of w instead of 4). y: the tile's first output, row stride ldy, column c at y + c cs
 * (cs > 1: the columns of a lane tile, only with NC = 4). state: the accumulators carried
 * between K blocks (saved and reloaded exactly, so the summation order is that of one pass). MR,
 * NC and DT are constants after inlining, so the MR x NC accumulators live in zmm registers.
 * Per 16 elements of K: NC loads of w, MR loads of x, MR*NC fused multiply-adds, pf->n prefetches
 * (every other step for 2-byte weights: one per cache line). */
ZP_INLINE ZP_TARGET_AVX512 void tile_avx512(float *y, int ldy, int cs, const float *x,
                                            const char *const wrow[ZP_WIDE], int kbase, int K,
                                            int k0, int k1, int nc, __m512 *state,
                                            const zp_prefetch *pf, const int MR, const int NC,
                                            const int DT) {
    const size_t es = DT == ZP_WTYPE_F32 ? 4 : 2;
    __m512 acc[ZP_ROWS][ZP_WIDE]; /* [x row][w row], 16 lanes of partial sums each */
    for (int r = 0; r < ZP_ROWS; r++)
        for (int c = 0; c < NC; c++)
            acc[r][c] = k0 == 0 || r >= MR ? _mm512_setzero_ps() : state[NC * r + c];

    int k = k0, pf_off = 0;
#pragma GCC unroll 2
    for (; k + ZP_LANES <= k1; k += ZP_LANES, pf_off += ZP_LANES) {
        if (pf_off < pf->len && (pf_off * pf->es) % 64 == 0)
            for (int j = 0; j < pf->n; j++)
                _mm_prefetch(pf->row[j] + (size_t)pf_off * pf->es, ZP_PF_HINT);
        __m512 xv[ZP_ROWS];
        for (int r = 0; r < MR; r++) xv[r] = _mm512_loadu_ps(x + (size_t)r * K + k);
        for (int c = 0; c < NC; c++) {
            __m512 wv = wload_avx512(wrow[c] + (size_t)(k - kbase) * es, DT);
            for (int r = 0; r < MR; r++) acc[r][c] = _mm512_fmadd_ps(xv[r], wv, acc[r][c]);
        }
    }
    if (k1 < K) { /* more K blocks to come */
        for (int r = 0; r < MR; r++)
            for (int c = 0; c < NC; c++) state[NC * r + c] = acc[r][c];
        return;
    }
    if (k < K) {
        /* K % 16 tail: masked lanes load 0 and fma(0, 0, s) = s, so each lane keeps its order */
        __mmask16 tail = (__mmask16)((1u << (K - k)) - 1u);
        __m512 xv[ZP_ROWS];
        for (int r = 0; r < MR; r++) xv[r] = _mm512_maskz_loadu_ps(tail, x + (size_t)r * K + k);
        for (int c = 0; c < NC; c++) {
            __m512 wv = wload_tail_avx512(wrow[c] + (size_t)(k - kbase) * es, tail, DT);
            for (int r = 0; r < MR; r++) acc[r][c] = _mm512_fmadd_ps(xv[r], wv, acc[r][c]);
        }
    }

    /* columns 0-3 in one reduction; columns 4-5 (NC = 6) in a second one whose inputs for
     * columns 2-3 repeat 0-1 (lanes 4r + 2, 4r + 3 of it are not stored) */
    float out[2][ZP_ROWS * ZP_COLS] __attribute__((aligned(64)));
    for (int half = 0; half < NC / ZP_COLS + (NC % ZP_COLS != 0); half++) {
        __m512 v[16];
        for (int d = 0; d < 16; d++) {
            int r = d % 4, c = half * ZP_COLS + (half ? d / 4 % 2 : d / 4);
            v[d] = acc[r][c]; /* rows r >= MR hold zeros: their lanes are not stored */
        }
        _mm512_store_ps(out[half], reduce16_avx512(v));
    }
    if (cs != 1) { /* a lane tile: its columns lie cs apart */
        for (int r = 0; r < MR; r++)
            for (int c = 0; c < nc && c < ZP_COLS; c++)
                y[(size_t)r * ldy + (size_t)c * cs] = out[0][ZP_COLS * r + c];
        return;
    }
    __mmask8 cols = (__mmask8)((1u << (nc < ZP_COLS ? nc : ZP_COLS)) - 1u);
    for (int r = 0; r < MR; r++)
        _mm_mask_storeu_ps(y + (size_t)r * ldy, cols, _mm_load_ps(out[0] + ZP_COLS * r));
    if (NC > ZP_COLS && nc > ZP_COLS) {
        __mmask8 more = (__mmask8)((1u << (nc - ZP_COLS)) - 1u);
        for (int r = 0; r < MR; r++)
            _mm_mask_storeu_ps(y + (size_t)r * ldy + ZP_COLS, more,
                               _mm_load_ps(out[1] + ZP_COLS * r));
    }
}

/* The w rows and K range that the block after (this group's rows wrow, block [k0, k1)) reads: the
 * next K block of the same rows, else the first K block of the rows read next (`nxt`: the next
 * tile of the run, or what the caller reads after it). nc: this group's valid rows; *es: bytes
 * per element, set to those of the rows returned. */
static inline void next_block(const char *const wrow[ZP_WIDE], int nc, size_t *es, int K, int k1,
                              int kblock, int NC, zp_after nxt, const char *rows[ZP_WIDE],
                              int *n_rows, int *len) {
    int k = 0;
    if (k1 < K) {
        *n_rows = nc, k = k1;
        for (int c = 0; c < nc; c++) rows[c] = wrow[c] + (size_t)k1 * *es;
    } else {
        *n_rows = nxt.w ? (nxt.rows < NC ? nxt.rows : NC) : 0, *es = (size_t)nxt.es;
        for (int c = 0; c < *n_rows; c++) rows[c] = nxt.w + (size_t)c * nxt.step;
    }
#ifdef ZP_PF_OFF
    *n_rows = 0;
#endif
    *len = K - k < kblock ? K - k : kblock;
}

/* Widens rows src[c][k0 .. k1) (c < NC, 2-byte elements of type DT) into
 * dst[c * ld + 0 .. k1 - k0); nothing else of dst is written. */
ZP_INLINE ZP_TARGET_AVX512 void widen_block_avx512(float *dst, int ld,
                                                   const char *const src[ZP_WIDE], int k0, int k1,
                                                   const int NC, const int DT) {
    for (int c = 0; c < NC; c++) {
        float *row = dst + (size_t)c * ld;
        int k = k0;
        for (; k + ZP_LANES <= k1; k += ZP_LANES)
            _mm512_storeu_ps(row + (k - k0), wload_avx512(src[c] + (size_t)k * 2, DT));
        if (k < k1) {
            __mmask16 tail = (__mmask16)((1u << (k1 - k)) - 1u);
            _mm512_mask_storeu_ps(row + (k - k0), tail,
                                  wload_tail_avx512(src[c] + (size_t)k * 2, tail, DT));
        }
    }
}

/* Output columns n0 .. n0+NC-1 (clipped at N) for all m rows: NC rows of w against 4 rows of x
 * at a time, in panels of up to 64 rows of x, K in blocks. Within a (panel, K block) the first
 * tile takes w from memory and the others reuse it from L1; so that memory stays busy while they
 * compute, the T tiles share out the prefetch of the next block's rows (T < NC: NC/T rows each;
 * T >= NC: tiles 0..NC-1 one row each).
 * bf16 / f16 weights with at least ZP_WIDEN_MIN_TILES tiles (zp_matmul_set_widen_min_tiles):
 * each (panel, K block) of w is first widened into a float32 scratch block that the tiles then
 * share, so the conversion is paid once per block, not once per tile; with fewer tiles each tile
 * widens its loads in registers, which measured faster (the tiles read the same float32 values
 * either way: same bits). */
ZP_INLINE ZP_TARGET_AVX512 void group_avx512_t(float *y, int ldy, const float *x, const char *w,
                                               int m, int K, zp_colset cols, zp_after nxt,
                                               const int NC, const int DT) {
    const size_t es = DT == ZP_WTYPE_F32 ? 4 : 2;
    const int nc = cols.nc < NC ? cols.nc : NC, n0 = cols.n0;
    const char *wrow[ZP_WIDE], *srow[ZP_WIDE];
    for (int c = 0; c < ZP_WIDE; c++)
        srow[c] = wrow[c] = w + (size_t)(n0 + (size_t)(c < nc ? c : nc - 1) * cols.step) * K * es;
    __m512 state[ZP_PANEL / ZP_ROWS][ZP_ROWS * ZP_WIDE]; /* (tiles, accumulators) */
    /* bf16 / f16: one K block of NC rows as float32 (kblock <= 2 * ZP_KBLOCK with > 1 tile) */
    float scratch[DT == ZP_WTYPE_F32 ? 1 : ZP_WIDE * 2 * ZP_KBLOCK] __attribute__((aligned(64)));

    for (int i0 = 0; i0 < m; i0 += ZP_PANEL) {
        int rows = m - i0 < ZP_PANEL ? m - i0 : ZP_PANEL, tiles = (rows + ZP_ROWS - 1) / ZP_ROWS;
        /* one tile reads x once: no blocking, and the prefetch runs a whole group ahead */
        int kblock = tiles > 1 && K > 2 * ZP_KBLOCK ? ZP_KBLOCK : (K > 0 ? K : 1);
        /* then tiles > 1, so kblock <= 2 * ZP_KBLOCK */
        int widen = DT != ZP_WTYPE_F32 && tiles > 1 &&
                    tiles >= __atomic_load_n(&zp_widen_tiles, __ATOMIC_RELAXED);
        int k0 = 0;
        do {
            int k1 = K - k0 < kblock ? K : k0 + kblock;
            const char *next[ZP_WIDE];
            int n_next, len;
            size_t next_es = es;
            next_block(wrow, nc, &next_es, K, k1, kblock, NC, nxt, next, &n_next, &len);
            if (widen) {
                int ld = (kblock + ZP_LANES - 1) / ZP_LANES * ZP_LANES; /* <= 2 * ZP_KBLOCK */
                widen_block_avx512(scratch, ld, wrow, k0, k1, NC, DT);
                for (int c = 0; c < ZP_WIDE; c++)
                    srow[c] = (const char *)(scratch + (size_t)(c < NC ? c : 0) * ld);
            }
            for (int t = 0; t < tiles; t++) {
                int i = i0 + ZP_ROWS * t;
                zp_prefetch pf = {{NULL}, 0, len, (int)next_es};
                int from = tiles >= NC ? t : n_next * t / tiles;
                int to = tiles >= NC ? t + 1 : n_next * (t + 1) / tiles;
                for (int c = from; c < to && c < n_next; c++) pf.row[pf.n++] = next[c];
                float *yi = y + (size_t)i * ldy + n0;
                const float *xi = x + (size_t)i * K;
                __m512 *st = state[t];
                int mr = m - i < ZP_ROWS ? m - i : ZP_ROWS;
                if (widen) { /* constant MR: one loop per case */
                    switch (mr) {
                    case 4:
                        tile_avx512(yi, ldy, cols.step, xi, srow, k0, K, k0, k1, nc, st, &pf, 4, NC,
                                    ZP_WTYPE_F32);
                        break;
                    case 3:
                        tile_avx512(yi, ldy, cols.step, xi, srow, k0, K, k0, k1, nc, st, &pf, 3, NC,
                                    ZP_WTYPE_F32);
                        break;
                    case 2:
                        tile_avx512(yi, ldy, cols.step, xi, srow, k0, K, k0, k1, nc, st, &pf, 2, NC,
                                    ZP_WTYPE_F32);
                        break;
                    default:
                        tile_avx512(yi, ldy, cols.step, xi, srow, k0, K, k0, k1, nc, st, &pf, 1, NC,
                                    ZP_WTYPE_F32);
                        break;
                    }
                } else {
                    switch (mr) {
                    case 4:
                        tile_avx512(yi, ldy, cols.step, xi, wrow, 0, K, k0, k1, nc, st, &pf, 4, NC,
                                    DT);
                        break;
                    case 3:
                        tile_avx512(yi, ldy, cols.step, xi, wrow, 0, K, k0, k1, nc, st, &pf, 3, NC,
                                    DT);
                        break;
                    case 2:
                        tile_avx512(yi, ldy, cols.step, xi, wrow, 0, K, k0, k1, nc, st, &pf, 2, NC,
                                    DT);
                        break;
                    default:
                        tile_avx512(yi, ldy, cols.step, xi, wrow, 0, K, k0, k1, nc, st, &pf, 1, NC,
                                    DT);
                        break;
                    }
                }
            }
            k0 = k1;
        } while (k0 < K);
    }
}

/* One instance per (tile width, weight type). */
#define ZP_GROUP_AVX512(name, NC, DT)                                                              \
    static ZP_TARGET_AVX512 void name(float *y, int ldy, const float *x, const char *w, int m,     \
                                      int K, zp_colset cols, zp_after nxt) {                       \
        group_avx512_t(y, ldy, x, w, m, K, cols, nxt, NC, DT);                                     \
    }
ZP_GROUP_AVX512(group_avx512_f32, ZP_COLS, ZP_WTYPE_F32)
ZP_GROUP_AVX512(group_avx512_bf16, ZP_COLS, ZP_WTYPE_BF16)
ZP_GROUP_AVX512(group_avx512_f16, ZP_COLS, ZP_WTYPE_F16)
ZP_GROUP_AVX512(group_wide_avx512_f32, ZP_WIDE, ZP_WTYPE_F32)
ZP_GROUP_AVX512(group_wide_avx512_bf16, ZP_WIDE, ZP_WTYPE_BF16)
ZP_GROUP_AVX512(group_wide_avx512_f16, ZP_WIDE, ZP_WTYPE_F16)
#undef ZP_GROUP_AVX512

/* ---------------------------------------------------------------- AVX2 kernel */
/* 8 weights at p as float32 (exact, as for AVX-512). */
ZP_INLINE ZP_TARGET_AVX2 __m256 wload_avx2(const char *p, const int DT) {
    if (DT == ZP_WTYPE_F32) return _mm256_loadu_ps((const float *)p);
    __m128i h = _mm_loadu_si128((const __m128i *)p);
    if (DT == ZP_WTYPE_BF16)
        return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    return _mm256_cvtph_ps(h);
}

/* The same 16 lane sums as two 8-lane halves (lanes 0-7 and 8-15); s8 = lo + hi is the first
 * level of the tree. */
ZP_INLINE ZP_TARGET_AVX2 float reduce_avx2(__m256 lo, __m256 hi) {
    __m256 s8 = _mm256_add_ps(lo, hi);
    __m128 s4 = _mm_add_ps(_mm256_castps256_ps128(s8), _mm256_extractf128_ps(s8, 1));
    __m128 s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
    __m128 s1 = _mm_add_ss(s2, _mm_shuffle_ps(s2, s2, _MM_SHUFFLE(1, 1, 1, 1)));
    return _mm_cvtss_f32(s1);
}

/* y[r][c] = x_r . w_c for r < MR rows of x (stride K) and c < nc of the NCOL rows of w in wrow
 * (entries past nc repeat a valid row and are not stored); y: the tile's first output, row
 * stride ldy, column c at y + c cs. MR x NCOL is 1 x 4 or 2 x 2: 8 ymm accumulators (lanes 0-7
 * and 8-15 of each dot's partial sums), and with two rows each widened w vector serves both
 * (bf16 / f16 widening is half the instructions of two 1-row tiles). Per 16 elements of K:
 * 2 NCOL loads of w, 2 MR of x, 2 MR NCOL fused multiply-adds, and pf->n prefetches of the rows
 * read next (once per 64 bytes of them; pf->n = 0 for none). */
ZP_INLINE ZP_TARGET_AVX2 void tile_avx2(float *y, int ldy, int cs, const float *x,
                                        const char *const *wrow, int K, int nc,
                                        const zp_prefetch *pf, const int MR, const int NCOL,
                                        const int DT) {
    const size_t es = DT == ZP_WTYPE_F32 ? 4 : 2;
    __m256 lo[2][ZP_COLS], hi[2][ZP_COLS];
    for (int r = 0; r < MR; r++)
        for (int c = 0; c < NCOL; c++) lo[r][c] = hi[r][c] = _mm256_setzero_ps();

    int k = 0;
    for (; k + ZP_LANES <= K; k += ZP_LANES) {
        if (k < pf->len && (k * pf->es) % 64 == 0)
            for (int j = 0; j < pf->n; j++)
                _mm_prefetch(pf->row[j] + (size_t)k * pf->es, ZP_PF_HINT);
        __m256 xlo[2], xhi[2];
        for (int r = 0; r < MR; r++) {
            xlo[r] = _mm256_loadu_ps(x + (size_t)r * K + k);
            xhi[r] = _mm256_loadu_ps(x + (size_t)r * K + k + 8);
        }
        for (int c = 0; c < NCOL; c++) {
            const char *p = wrow[c] + (size_t)k * es;
            __m256 wlo = wload_avx2(p, DT), whi = wload_avx2(p + 8 * es, DT);
            for (int r = 0; r < MR; r++) {
                lo[r][c] = _mm256_fmadd_ps(xlo[r], wlo, lo[r][c]);
                hi[r][c] = _mm256_fmadd_ps(xhi[r], whi, hi[r][c]);
            }
        }
    }
    if (k < K) {
        /* K % 16 tail: x masked, w copied into a zeroed block (AVX2 has no 16-bit masked load);
         * the zero lanes add fma(0, 0, s) = s, so each lane keeps its order */
        __m256i left = _mm256_set1_epi32(K - k);
        __m256i mlo = _mm256_cmpgt_epi32(left, _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        __m256i mhi = _mm256_cmpgt_epi32(left, _mm256_setr_epi32(8, 9, 10, 11, 12, 13, 14, 15));
        __m256 xlo[2], xhi[2];
        for (int r = 0; r < MR; r++) {
            xlo[r] = _mm256_maskload_ps(x + (size_t)r * K + k, mlo);
            xhi[r] = _mm256_maskload_ps(x + (size_t)r * K + k + 8, mhi);
        }
        for (int c = 0; c < NCOL; c++) {
            char block[ZP_LANES * 4] __attribute__((aligned(32))) = {0};
            memcpy(block, wrow[c] + (size_t)k * es, (size_t)(K - k) * es);
            __m256 wlo = wload_avx2(block, DT), whi = wload_avx2(block + 8 * es, DT);
            for (int r = 0; r < MR; r++) {
                lo[r][c] = _mm256_fmadd_ps(xlo[r], wlo, lo[r][c]);
                hi[r][c] = _mm256_fmadd_ps(xhi[r], whi, hi[r][c]);
            }
        }
    }
    for (int r = 0; r < MR; r++)
        for (int c = 0; c < nc && c < NCOL; c++)
            y[(size_t)r * ldy + (size_t)c * cs] = reduce_avx2(lo[r][c], hi[r][c]);
}

/* Output columns n0 .. n0+3 (clipped at N) for all m rows: bf16 / f16 weights as pairs of rows of
 * x against pairs of rows of w (2 x 2 tiles), a last odd row against all 4 (1 x 4); float32 row by
 * row (1 x 4), which measured as fast or faster (AMD EPYC, 2 threads: GPT-L bf16 one-query and
 * 12-row passes 1.1-1.2x faster with pairs, float32 12-row passes 6% slower). The 4 rows of w stay
 * in L1 after the first tiles. The first tiles prefetch the next group's rows (or the caller's
 * `after` past the last group). */
ZP_INLINE ZP_TARGET_AVX2 void group_avx2_t(float *y, int ldy, const float *x, const char *w, int m,
                                           int K, zp_colset cols, zp_after nxt, const int DT) {
    size_t es = DT == ZP_WTYPE_F32 ? 4 : 2, next_es = es;
    const int nc = cols.nc < ZP_COLS ? cols.nc : ZP_COLS, n0 = cols.n0, cs = cols.step;
    const char *wrow[ZP_WIDE];
    for (int c = 0; c < ZP_COLS; c++)
        wrow[c] = w + (size_t)(n0 + (size_t)(c < nc ? c : nc - 1) * cs) * K * es;
    zp_prefetch pf = {{NULL}, 0, 0, 0}, none = {{NULL}, 0, 0, 4};
    next_block(wrow, nc, &next_es, K, K, K > 0 ? K : 1, ZP_COLS, nxt, pf.row, &pf.n, &pf.len);
    pf.es = (int)next_es;
    int i = 0;
    for (; DT != ZP_WTYPE_F32 && i + 2 <= m; i += 2) /* float32: 1 x 4 measured as fast */
        for (int cp = 0; cp < nc; cp += 2) {
            zp_prefetch half = {{pf.row[cp], pf.row[cp + 1]}, 0, pf.len, pf.es};
            half.n = pf.n - cp < 0 ? 0 : pf.n - cp > 2 ? 2 : pf.n - cp;
            tile_avx2(y + (size_t)i * ldy + n0 + (size_t)cp * cs, ldy, cs, x + (size_t)i * K,
                      wrow + cp, K, nc - cp, i ? &none : &half, 2, 2, DT);
        }
    for (; i < m; i++)
        tile_avx2(y + (size_t)i * ldy + n0, ldy, cs, x + (size_t)i * K, wrow, K, nc,
                  i ? &none : &pf, 1, ZP_COLS, DT);
}

#define ZP_GROUP_AVX2(name, DT)                                                                    \
    static ZP_TARGET_AVX2 void name(float *y, int ldy, const float *x, const char *w, int m,       \
                                    int K, zp_colset cols, zp_after nxt) {                         \
        group_avx2_t(y, ldy, x, w, m, K, cols, nxt, DT);                                           \
    }
ZP_GROUP_AVX2(group_avx2_f32, ZP_WTYPE_F32)
ZP_GROUP_AVX2(group_avx2_bf16, ZP_WTYPE_BF16)
ZP_GROUP_AVX2(group_avx2_f16, ZP_WTYPE_F16)
#undef ZP_GROUP_AVX2

/* ---------------------------------------------------------------- scalar kernel */
/* IEEE binary16 bits -> float32, exactly (normals, subnormals, zeros, infinities; a NaN comes
 * out quiet, as from vcvtph2ps). */
static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000u) << 16, exp = (h >> 10) & 0x1fu, man = h & 0x3ffu, bits;
    float f;
    if (exp == 0) { /* zero or subnormal: man * 2^-24, exact in float32 */
        f = ldexpf((float)man, -24);
        return sign ? -f : f;
    }
    if (exp == 0x1f)
        bits = sign | 0x7f800000u | (man << 13) | (man ? 0x00400000u : 0u);
    else
        bits = sign | ((exp + 112u) << 23) | (man << 13);
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* Element k of a row of weights of type wtype, as float32 (exact). */
static inline float widen(const char *row, int k, int wtype) {
    float f;
    uint16_t h;
    if (wtype == ZP_WTYPE_F32) {
        memcpy(&f, row + (size_t)k * 4, sizeof f);
        return f;
    }
    memcpy(&h, row + (size_t)k * 2, sizeof h);
    if (wtype == ZP_WTYPE_F16) return half_to_float(h);
    uint32_t bits = (uint32_t)h << 16;
    memcpy(&f, &bits, sizeof f);
    return f;
}

/* The reference order in plain C: fmaf is one rounding, like the vector FMA. Slow without
 * hardware FMA, but only CPUs older than 2013 take this path. */
static float dot_scalar(const float *x, const char *w, int wtype, int K) {
    float s[ZP_LANES] = {0};
    int k = 0;
    for (; k + ZP_LANES <= K; k += ZP_LANES)
        for (int j = 0; j < ZP_LANES; j++) s[j] = fmaf(x[k + j], widen(w, k + j, wtype), s[j]);
    for (int j = 0; k + j < K; j++) s[j] = fmaf(x[k + j], widen(w, k + j, wtype), s[j]);

    float s8[8], s4[4], s2[2];
    for (int j = 0; j < 8; j++) s8[j] = s[j] + s[j + 8];
    for (int j = 0; j < 4; j++) s4[j] = s8[j] + s8[j + 4];
    for (int j = 0; j < 2; j++) s2[j] = s4[j] + s4[j + 2];
    return s2[0] + s2[1];
}

static void group_scalar(float *y, int ldy, const float *x, const char *w, int wtype, int m, int K,
                         zp_colset cols) {
    size_t es = (size_t)zp_wtype_size(wtype);
    for (int i = 0; i < m; i++)
        for (int c = 0; c < cols.nc; c++) {
            size_t n = (size_t)cols.n0 + (size_t)c * cols.step;
            y[(size_t)i * ldy + n] = dot_scalar(x + (size_t)i * K, w + n * K * es, wtype, K);
        }
}

void zp_widen(float *dst, const void *src, int wtype, size_t n) {
    if (zp_wtype_size(wtype) == 0 || wtype == ZP_WTYPE_BF16_TILES) return;
    for (size_t i = 0; i < n; i++) /* rows of a few thousand elements: plain C is enough */
        dst[i] = widen((const char *)src + i * (size_t)zp_wtype_size(wtype), 0, wtype);
}

/* ---------------------------------------------------------------- AMX kernel (bf16 weights) */
/* Opt-in (zp_matmul_force_isa("amx")): on the one AMX host measured, one-query passes were
 * slower than the AVX-512 kernel's and only ZipAR's passes of many rows gained (matmul.h).
 * On CPUs with AMX (Sapphire Rapids and later), bf16 weights go through the tile unit:
 * TDPBF16PS multiplies a 16 x 32 bf16 tile by a 32 x 16 one into 16 x 16 float32 sums (one
 * core of the device host: 1153 GMAC/s, benchmarks/amx_probe.c; AVX-512 FMAs there, about 41
 * GMAC/s a core, BENCHMARKS.md). Its inputs are bf16 on both sides, so every activation is
 * split exactly into three bf16 parts, x = hi + mid + lo (hi = x rounded to bf16, mid = the rest
 * rounded, lo = what is left, which fits: 24 bits of significand in three pieces of 8). The
 * products of two bf16 values are exact in float32, so the only roundings are the tile unit's
 * accumulation and the final hi + mid + lo.
 *
 * Layout: the weights are the A operand, a tile 16 output columns (rows of w) by 32 elements of
 * K: read in place, (N, K) row-major, with a row stride of 2K bytes, or from a copy in tile order
 * (ZP_WTYPE_BF16_TILES: each tile one contiguous KiB, matmul.h), with the same bits. The
 * activations are the B operand, a panel of up to 5 rows of x per tile: column 3 i + p holds
 * part p of row i, row kp the pair (k = 2 kp, 2 kp + 1) (amx_split). So one TDPBF16PS per
 * weight tile and panel computes all three parts, each in its own column of C: the sums over K
 * of w . hi, w . mid, w . lo, added as (hi + mid) + lo on the way out (transposed into y).
 * Tiles: 2 weight tiles (32 output columns: a group) x 2 panels (10 rows) = 4 C tiles, 2 A and
 * 2 B: all 8 tile registers, and consecutive weight tiles use different registers, so that a
 * load does not wait for the products still reading the other one.
 *
 * Bits: each output is a fixed function of its row of x and its row of w: three accumulators
 * over K steps of 32 in order, then (hi + mid) + lo; the tile unit computes each element of C
 * from its row of A and its column of B only (checked by test_matmul: rows alone, threads, any
 * cut of the columns), so results do not depend on m, batch company or thread count. They are
 * not the bits of the AVX-512 / AVX2 / scalar kernels, and the tile unit flushes float32
 * subnormals (inputs and sums) to zero. */
enum {
    ZP_AMX_COLS = 32, /* output columns per AMX group: 2 weight tiles of 16 */
    ZP_AMX_ROWS = 5,  /* rows of x per panel: 3 parts each, 15 of a B tile's 16 columns */
};
/* Above this many bytes of split activations (plus the copy of x) per thread, amx_prepare
 * gives up as when out of memory (rows x K beyond anything a decode pass holds: about 2000 rows
 * at K = 14336). */
#define ZP_AMX_MAX_BYTES ((size_t)256 << 20)

/* The 64-byte tile configuration (palette 1) for a pair of panels of r0 and r1 rows: tmm0/tmm2 C
 * of panel 0 (16 x 3 r0 float32) for weight tiles 0/1, tmm1/tmm3 the same for panel 1, tmm4/tmm5
 * A (16 x 32 bf16), tmm6/tmm7 B of panels 0/1 (16 pair rows x 3 r); r1 = 0: one panel. */
static void amx_make_config(unsigned char cfg[64], int r0, int r1) {
    const int r[2] = {r0, r1 > 0 ? r1 : r0};
    uint16_t colsb[8];
    memset(cfg, 0, 64);
    cfg[0] = 1;
    for (int t = 0; t < 8; t++) {
        colsb[t] = (uint16_t)(t == 4 || t == 5 ? 64 : 12 * r[t < 4 ? t % 2 : t - 6]);
        cfg[48 + t] = 16;
    }
    memcpy(cfg + 16, colsb, sizeof colsb);
}

/* The tile instructions, in inline assembly with memory clobbers (the compiler must not move
 * the stores of the split activations or the reads of the stored C tiles across them). */
#define ZP_AMX_LOAD(t, base, stride)                                                               \
    __asm__ volatile("tileloadd (%0,%1,1), %%tmm" #t ::"r"(base), "r"((long)(stride)) : "memory")
#define ZP_AMX_STORE(t, base)                                                                      \
    __asm__ volatile("tilestored %%tmm" #t ", (%0,%1,1)" ::"r"(base), "r"(64L) : "memory")
#define ZP_AMX_DP(c, a, b) __asm__ volatile("tdpbf16ps %%tmm" #b ", %%tmm" #a ", %%tmm" #c ::)
#define ZP_AMX_ZERO(t)     __asm__ volatile("tilezero %%tmm" #t ::)

ZP_INLINE ZP_TARGET_AMX void amx_load_config(const unsigned char cfg[64]) {
    __asm__ volatile("ldtilecfg %0" ::"m"(*(const unsigned char(*)[64])cfg));
}

ZP_INLINE ZP_TARGET_AMX void amx_release(void) {
    __asm__ volatile("tilerelease" ::: "memory");
}

/* Pair rows per panel: K padded to a multiple of 32, halved. */
static inline size_t amx_pair_rows(int K) {
    return (size_t)(K + 31) / 32 * 16;
}

/* Bytes of one block of 16 weight rows in tile order: K / 32 tiles (K padded) of one KiB. */
static inline size_t amx_block_bytes(int K) {
    return (size_t)(K + 31) / 32 * 1024;
}

size_t zp_tile_bf16_bytes(int N, int K) {
    if (N < 1 || K < 1) return 0;
    return (size_t)(N + 15) / 16 * amx_block_bytes(K);
}

void zp_tile_bf16(void *dst, const void *src, int N, int K) {
    if (dst == NULL || src == NULL || N < 1 || K < 1) return;
    const int steps = (K + 31) / 32;
    const uint16_t *w = src;
    uint16_t *t = dst;
    for (int nb = 0; nb < (N + 15) / 16; nb++)
        for (int kb = 0; kb < steps; kb++)
            for (int r = 0; r < 16; r++)
                for (int c = 0; c < 32; c++) {
                    int n = 16 * nb + r, k = 32 * kb + c;
                    *t++ = n < N && k < K ? w[(size_t)n * K + k] : 0;
                }
}

/* x rounded to bf16 (nearest, ties to even), as float32 bits whose low half is zero. */
ZP_INLINE ZP_TARGET_AVX512 __m512i bf16_round_avx512(__m512 v) {
    __m512i u = _mm512_castps_si512(v);
    __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    __m512i r = _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb);
    return _mm512_and_si512(r, _mm512_set1_epi32((int)0xffff0000u));
}

/* x (m, K) float32 -> the B operands of every panel: bs[(panel * P + kp) * 16 + 3 i + p] =
 * (part p of x[5 panel + i][2 kp], of x[5 panel + i][2 kp + 1]) as two bf16 (low half first),
 * P = amx_pair_rows(K), elements past K zero. Columns past a panel's rows are not written (the
 * tiles never read them). */
static ZP_TARGET_AVX512 void amx_split(uint32_t *bs, const float *x, int m, int K) {
    const size_t P = amx_pair_rows(K);
    const int steps = (K + 31) / 32;
    __m512i odd; /* word indices 1, 3, .., 31 of a, then of b: the high halves */
    uint16_t idx[32];
    for (int j = 0; j < 32; j++) idx[j] = (uint16_t)(j < 16 ? 2 * j + 1 : 32 + 2 * (j - 16) + 1);
    memcpy(&odd, idx, sizeof idx);
    const __m512i rows =
        _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                           _mm512_set1_epi32(16));
    for (int i = 0; i < m; i++) {
        const float *xr = x + (size_t)i * K;
        uint32_t *col = bs + (size_t)(i / ZP_AMX_ROWS) * P * 16 + (size_t)(3 * (i % ZP_AMX_ROWS));
        for (int s = 0; s < steps; s++) {
            int k = 32 * s, left = K - k;
            __mmask16 m0 = (__mmask16)(left >= 16 ? 0xffffu : (1u << left) - 1u);
            __mmask16 m1 = (__mmask16)(left >= 32  ? 0xffffu
                                       : left > 16 ? (1u << (left - 16)) - 1u
                                                   : 0u);
            __m512 a = _mm512_maskz_loadu_ps(m0, xr + k),
                   b = _mm512_maskz_loadu_ps(m1, xr + k + 16);
            for (int part = 0; part < 3; part++) {
                __m512i ha = bf16_round_avx512(a), hb = bf16_round_avx512(b);
                a = _mm512_sub_ps(a, _mm512_castsi512_ps(ha)); /* exact: the rest of x */
                b = _mm512_sub_ps(b, _mm512_castsi512_ps(hb));
                __m512i pairs = _mm512_permutex2var_epi16(ha, odd, hb);
                _mm512_i32scatter_epi32(col + (size_t)s * 16 * 16 + part, rows, pairs, 4);
            }
        }
    }
}

/* Each thread keeps its last split (and a copy of the x it came from): the calls of one product
 * (a team thread's block and chunks, the outputs of a multi-product call) share one split, and
 * a call whose x differs in any bit from the copy splits again. Freed when the thread ends. */
typedef struct {
    float *x;
    uint32_t *bs;
    size_t x_cap, bs_cap; /* bytes */
    int m, K, valid;
} amx_cache;

static pthread_key_t amx_key;
static pthread_once_t amx_key_once = PTHREAD_ONCE_INIT;
static int amx_key_ok;

static void amx_cache_free(void *p) {
    amx_cache *c = p;
    free(c->x), free(c->bs), free(c);
}

static void amx_key_init(void) {
    amx_key_ok = pthread_key_create(&amx_key, amx_cache_free) == 0;
}

/* The split of x (m, K) for this thread, or NULL when the memory cannot be had (then bf16 in
 * place runs on the AVX-512 kernel and bf16 in tile order gives NaN: run_cols). */
static const uint32_t *amx_prepare(const float *x, int m, int K) {
    const size_t x_bytes = (size_t)m * (size_t)K * sizeof(float) + 64;
    const size_t bs_bytes =
        (size_t)(m + ZP_AMX_ROWS - 1) / ZP_AMX_ROWS * amx_pair_rows(K) * 64 + 64;
    if (x_bytes + bs_bytes > ZP_AMX_MAX_BYTES) return NULL;
    pthread_once(&amx_key_once, amx_key_init);
    if (!amx_key_ok) return NULL;
    amx_cache *c = pthread_getspecific(amx_key);
    if (c == NULL) {
        if ((c = calloc(1, sizeof *c)) == NULL) return NULL;
        if (pthread_setspecific(amx_key, c) != 0) {
            free(c);
            return NULL;
        }
    }
    if (c->valid && c->m == m && c->K == K &&
        memcmp(c->x, x, (size_t)m * (size_t)K * sizeof(float)) == 0)
        return c->bs;
    c->valid = 0;
    if (c->x_cap < x_bytes) {
        free(c->x);
        c->x_cap = 0;
        if ((c->x = malloc(x_bytes)) == NULL) return NULL;
        c->x_cap = x_bytes;
    }
    if (c->bs_cap < bs_bytes) {
        free(c->bs);
        c->bs_cap = 0;
        if ((c->bs = aligned_alloc(64, (bs_bytes + 63) / 64 * 64)) == NULL) return NULL;
        c->bs_cap = bs_bytes;
    }
    memcpy(c->x, x, (size_t)m * (size_t)K * sizeof(float));
    amx_split(c->bs, x, m, K);
    c->m = m, c->K = K, c->valid = 1;
    return c->bs;
}

/* Weight tile T (0, 1) of the group at K step kb into tmm REG (4 + T). Tile order (tiled): the
 * KiB of tile (block nb0 + T, kb). In place: 16 rows of w from column n0 + 16 T, or, for a tile
 * of fewer rows or past K, those rows copied into the zeroed pad first (so nothing beyond the
 * matrix is read and the padding adds exact zeros, as in tile order). */
#define ZP_AMX_A(T, REG)                                                                           \
    do {                                                                                           \
        const int rows = nc - 16 * (T) < 16 ? nc - 16 * (T) : 16;                                  \
        const char *a = w + (size_t)(n0 + 16 * (T)) * ld + (size_t)kb * 64;                        \
        long stride = (long)ld;                                                                    \
        if (tiled) {                                                                               \
            a = w + (size_t)(nb0 + (T)) * amx_block_bytes(K) + (size_t)kb * 1024, stride = 64;     \
        } else if (rows < 16 || kbytes < 64) {                                                     \
            uint16_t *pad = pads[T];                                                               \
            memset(pad, 0, sizeof pads[T]);                                                        \
            if (kbytes == 64)                                                                      \
                for (int r = 0; r < rows; r++)                                                     \
                    _mm512_store_si512((void *)(pad + 32 * r),                                     \
                                       _mm512_loadu_si512((const void *)(a + (size_t)r * ld)));    \
            else                                                                                   \
                for (int r = 0; r < rows; r++) memcpy(pad + 32 * r, a + (size_t)r * ld, kbytes);   \
            a = (const char *)pad, stride = 64;                                                    \
        }                                                                                          \
        ZP_AMX_LOAD(REG, a, stride);                                                               \
    } while (0)

/* The tile configuration this thread loaded (panel rows r0 * 8 + r1 + 1; 0: none): loaded by the
 * first group of a zp_matmul_range call that needs it, kept for the next groups and released
 * at the end of the call (loading and releasing the tile state per group cost more than its
 * work). */
static __thread int amx_cfg_key;

static ZP_TARGET_AMX void amx_end(void) {
    if (amx_cfg_key) {
        amx_release();
        amx_cfg_key = 0;
    }
}

/* Output columns cols.n0 .. + cols.nc (adjacent, <= 32) for all m rows, from the split bs of x;
 * w in place (tiled = 0) or in tile order (tiled: then the columns lie in the two row blocks from
 * n0 / 16 on, and rows of the blocks outside them are computed but not stored). While the first
 * panels run, it prefetches (into L2) the rows read next, `nxt` (in tile order: nxt.rows blocks
 * of nxt.step bytes), spread evenly over its K steps, so the next group's weights are on their
 * way while this one computes. */
static ZP_TARGET_AMX void group_amx(float *y, int ldy, const uint32_t *bs, const char *w, int m,
                                    int K, zp_colset cols, zp_after nxt, const int tiled) {
    const int steps = (K + 31) / 32, panels = (m + ZP_AMX_ROWS - 1) / ZP_AMX_ROWS;
    /* in tile order the group starts at the block of n0: column n0 is row `off` of tile 0 */
    const int off = tiled ? cols.n0 & 15 : 0, n0 = cols.n0 - off, nb0 = n0 / 16;
    const int nc = (cols.nc < ZP_AMX_COLS ? cols.nc : ZP_AMX_COLS) + off;
    const int two = nc > 16;
    const size_t ld = (size_t)K * 2, P = amx_pair_rows(K);
    uint16_t pads[2][16 * 32] __attribute__((aligned(64)));
    float c[16 * 16] __attribute__((aligned(64)));
    unsigned char cfg[64] __attribute__((aligned(64)));
    const size_t line_row = !nxt.w  ? 0
                            : tiled ? (size_t)nxt.step / 64
                                    : ((size_t)K * (size_t)nxt.es + 63) / 64;
    const size_t lines = line_row * (size_t)(nxt.rows > 0 ? nxt.rows : 0);
    for (int p0 = 0; p0 < panels; p0 += 2) {
        const int r0 = m - ZP_AMX_ROWS * p0 < ZP_AMX_ROWS ? m - ZP_AMX_ROWS * p0 : ZP_AMX_ROWS;
        const int left = m - ZP_AMX_ROWS * (p0 + 1);
        const int r1 = left <= 0 ? 0 : left < ZP_AMX_ROWS ? left : ZP_AMX_ROWS;
        if (amx_cfg_key != r0 * 8 + r1 + 1) {
            amx_make_config(cfg, r0, r1);
            amx_load_config(cfg);
            amx_cfg_key = r0 * 8 + r1 + 1;
        }
        const uint32_t *b0 = bs + (size_t)p0 * P * 16, *b1 = b0 + P * 16;
        ZP_AMX_ZERO(0);
        ZP_AMX_ZERO(1);
        ZP_AMX_ZERO(2);
        ZP_AMX_ZERO(3);
        for (int kb = 0; kb < steps; kb++) {
            const size_t kbytes = K - 32 * kb < 32 ? (size_t)(K - 32 * kb) * 2 : 64;
            ZP_AMX_LOAD(6, b0 + (size_t)kb * 256, 64);
            ZP_AMX_A(0, 4);
            ZP_AMX_DP(0, 4, 6);
            if (r1) {
                ZP_AMX_LOAD(7, b1 + (size_t)kb * 256, 64);
                ZP_AMX_DP(1, 4, 7);
            }
            if (two) {
                ZP_AMX_A(1, 5);
                ZP_AMX_DP(2, 5, 6);
                if (r1) ZP_AMX_DP(3, 5, 7);
            }
#ifndef ZP_PF_OFF
            if (p0 == 0)
                for (size_t l = lines * kb / steps, e = lines * (kb + 1) / steps; l < e; l++)
                    _mm_prefetch(nxt.w + (l / line_row) * nxt.step + (l % line_row) * 64,
                                 _MM_HINT_T1);
#endif
        }
        /* C tile (weight tile t, panel q) -> y: rows (hi + mid) + lo */
        for (int t = 0; t < 1 + two; t++)
            for (int q = 0; q < 1 + (r1 > 0); q++) {
                switch (2 * t + q) { /* tile numbers are immediates */
                case 0: ZP_AMX_STORE(0, c); break;
                case 1: ZP_AMX_STORE(1, c); break;
                case 2: ZP_AMX_STORE(2, c); break;
                default: ZP_AMX_STORE(3, c); break;
                }
                const int rows = nc - 16 * t < 16 ? nc - 16 * t : 16, i0 = ZP_AMX_ROWS * (p0 + q);
                const int first = t == 0 ? off : 0; /* rows before cols.n0: not ours */
                for (int i = 0; i < (q ? r1 : r0); i++) {
                    float *yi = y + (size_t)(i0 + i) * ldy + n0 + 16 * t;
                    for (int r = first; r < rows; r++)
                        yi[r] = (c[16 * r + 3 * i] + c[16 * r + 3 * i + 1]) + c[16 * r + 3 * i + 2];
                }
            }
    }
}
#undef ZP_AMX_A

/* ---------------------------------------------------------------- dispatch */
typedef void (*zp_group_fn)(float *y, int ldy, const float *x, const char *w, int m, int K,
                            zp_colset cols, zp_after nxt);

/* The vector group function for (isa, wtype) and its width in output columns (4, or 6 for the
 * wide AVX-512 tile when `wide`); NULL for the scalar kernel (4 columns a group). bf16 under
 * ZP_ISA_AMX, and bf16 in tile order on any: width 32, computed by group_amx (run_cols), the
 * function returned unused. */
static zp_group_fn group_fn(int isa, int wtype, int wide, int *width) {
    *width = ZP_COLS;
    if ((isa == ZP_ISA_AMX && wtype == ZP_WTYPE_BF16) || wtype == ZP_WTYPE_BF16_TILES) {
        *width = ZP_AMX_COLS;
        return group_avx512_bf16;
    }
    if (isa >= ZP_ISA_AVX512) {
        *width = wide ? ZP_WIDE : ZP_COLS;
        switch (wtype) {
        case ZP_WTYPE_F32: return wide ? group_wide_avx512_f32 : group_avx512_f32;
        case ZP_WTYPE_BF16: return wide ? group_wide_avx512_bf16 : group_avx512_bf16;
        default: return wide ? group_wide_avx512_f16 : group_avx512_f16;
        }
    }
    if (isa == ZP_ISA_AVX2)
        return wtype == ZP_WTYPE_F32    ? group_avx2_f32
               : wtype == ZP_WTYPE_BF16 ? group_avx2_bf16
                                        : group_avx2_f16;
    return NULL;
}

int zp_matmul_flags(int m) {
    int flags = 0;
    if (isa_current() >= ZP_ISA_AVX512 && m >= __atomic_load_n(&zp_wide_rows, __ATOMIC_RELAXED))
        flags |= ZP_MATMUL_WIDE;
    if (m >= zp_get_blas_min_rows()) flags |= ZP_MATMUL_BLAS;
    return flags;
}

static int out_valid(const zp_matmul_out *o) {
    return o->y != NULL && o->w != NULL && zp_wtype_size(o->wtype) > 0 && o->N > 0 &&
           o->ldy >= o->N && (o->wtype != ZP_WTYPE_BF16_TILES || isa_supported(ZP_ISA_AMX));
}

/* Whether output o goes to BLAS sgemm under these flags (float32 only; its lda must be >= 1). */
static int out_blas(const zp_matmul_out *o, int K, int flags) {
    return (flags & ZP_MATMUL_BLAS) && o->wtype == ZP_WTYPE_F32 && K > 0;
}

/* All of output o through sgemm (float32 weights, K >= 1). */
static void blas_product(const float *x, int m, int K, const zp_matmul_out *o) {
    ZP_BLAS_FN(cblas_sgemm)
    (ZP_BLAS_ROW_MAJOR, ZP_BLAS_NO_TRANS, ZP_BLAS_TRANS, m, o->N, K, 1.0f, x, K,
     (const float *)o->w, K, 0.0f, o->y, o->ldy);
}

/* Passes of at most this many rows walk a run of columns in lanes (below); more rows, the wide tile
 * and the scalar kernel walk adjacent groups. 8 rows, measured on the 16-core AVX-512 host (GPT-L
 * layers, cold weights, csrc/tests/bench_rows.c; BENCHMARKS.md issue 13 stop 24): bf16 passes of
 * 6 and 8 rows 1.08-1.14x and 1.02-1.16x faster in lanes at 2 and 16 threads, float32 within 2%
 * either way at 2 threads; lanes to 16 rows lost up to 8% (bf16) and 9% (float32) from 12 rows. */
enum { ZP_LANE_MAX_ROWS = 8 };
static int zp_lane_rows = ZP_LANE_MAX_ROWS; /* zp_matmul_set_lanes */

void zp_matmul_set_lanes(int max_rows) {
    __atomic_store_n(&zp_lane_rows, max_rows < 0 ? ZP_LANE_MAX_ROWS : max_rows, __ATOMIC_RELAXED);
}

/* How a run of `cols` columns is cut into tiles of `width` columns: T = ceil(cols / width) tiles
 * either way. Adjacent: tile t is columns t width .. t width + width - 1. Lanes: the run is cut
 * into `width` lanes of T columns, and tile t takes column t of every lane (t, t + T, t + 2T,
 * ...), so the tiles stream `width` sequential runs of weight rows instead of one block of
 * `width` adjacent rows. Measured with csrc/tests/bench_lanes.c (m = 2, 2 threads; BENCHMARKS.md):
 * bf16 rows of 2 KiB (two to a 4 KiB page) 22.7 GB/s in lanes against 20.1 adjacent on the 16-core
 * AVX-512 host, 1.5 KiB rows 24.5 against 18.7; float32 within noise there, faster in lanes on
 * the AVX2 development machine. Which tile computes a column never changes its bits.
 * Returns the lane length T when the run walks in lanes, 0 when adjacent. */
static int run_lanes(int isa, int wide, int m, int cols, int width) {
    if (isa == ZP_ISA_SCALAR || wide || width > ZP_WIDE /* AMX */ || cols <= width ||
        m > __atomic_load_n(&zp_lane_rows, __ATOMIC_RELAXED))
        return 0;
    return (cols + width - 1) / width;
}

/* Tile t of a run of columns [n0, n0 + cols): lanes of length T (run_lanes), or adjacent
 * (T = 0). */
static zp_colset run_tile(int n0, int cols, int width, int T, int t) {
    zp_colset c;
    if (T > 0) {
        c.n0 = n0 + t, c.step = T, c.nc = (cols - t + T - 1) / T;
    } else {
        c.n0 = n0 + t * width, c.step = 1, c.nc = cols - t * width;
    }
    c.nc = c.nc < width ? c.nc : width;
    return c;
}

/* Group t of run [n0, n1): run_tile's, or in tile order (tiled) the columns of [n0, n1) within
 * [base + t width, base + (t + 1) width), base = n0 rounded down to a multiple of 32. */
static zp_colset run_group(int tiled, int base, int n0, int n1, int width, int T, int t) {
    if (!tiled) return run_tile(n0, n1 - n0, width, T, t);
    int a = base + t * width > n0 ? base + t * width : n0;
    int b = base + (t + 1) * width < n1 ? base + (t + 1) * width : n1;
    zp_colset c = {a, 1, b > a ? b - a : 0};
    return c;
}

/* The weight rows of tile `cols` of output o, as what a group reads next. */
static zp_after tile_rows(const zp_matmul_out *o, int K, zp_colset cols) {
    int es = zp_wtype_size(o->wtype);
    zp_after a = {NULL, 0, es > 0 ? es : 4, 0};
    if (cols.nc > 0 && o->wtype == ZP_WTYPE_BF16_TILES) { /* blocks of 16 rows, each contiguous */
        a.step = amx_block_bytes(K);
        a.w = (const char *)o->w + (size_t)(cols.n0 / 16) * a.step;
        a.rows = ((cols.n0 & 15) + cols.nc + 15) / 16;
    } else if (cols.nc > 0 && es > 0) {
        a.w = (const char *)o->w + (size_t)cols.n0 * K * es, a.rows = cols.nc;
        a.step = (size_t)cols.step * K * es;
    }
    return a;
}

/* The rows of the first tile of run [n0, n1) of output o (none when n0 >= n1): the `after` of the
 * run before it. */
static zp_after run_first(int isa, int wide, int m, int K, const zp_matmul_out *o, int n0, int n1) {
    int width;
    zp_colset none = {0, 1, 0};
    group_fn(isa, o->wtype, wide, &width);
    if (n0 >= n1) return tile_rows(o, K, none);
    return tile_rows(o, K,
                     run_group(o->wtype == ZP_WTYPE_BF16_TILES, n0 & ~31, n0, n1, width,
                               run_lanes(isa, wide, m, n1 - n0, width), 0));
}

/* Columns [n0, n1) of the n_o outputs o (same N and wtype when n_o > 1: a joint run) for all m
 * rows, tile by tile (run_tile: adjacent groups or lanes), each tile through every output before
 * the next one (so a thread owns e.g. the gate and up projections of the same hidden units); a
 * wide group numbered by a caller whose ISA was since forced to a narrower kernel takes two
 * tiles. Each tile prefetches the rows read next: the same tile of the next output, the next
 * tile, or after the last one `after` (the first tile of what the caller runs next). */
static void run_cols(int isa, int wide, const float *x, const uint32_t *bs, int m, int K,
                     const zp_matmul_out *o, int n_o, int n0, int n1, zp_after after) {
    int width;
    zp_group_fn fn = group_fn(isa, o[0].wtype, wide, &width);
    const int tiled = o[0].wtype == ZP_WTYPE_BF16_TILES;
    const int amx = tiled || (isa == ZP_ISA_AMX && o[0].wtype == ZP_WTYPE_BF16);
    if (amx && bs == NULL) { /* no memory for the split (matmul.h): NaN, never stale values */
        for (int j = 0; j < n_o; j++)
            for (int i = 0; i < m; i++)
                for (int n = n0; n < n1; n++) o[j].y[(size_t)i * o[j].ldy + n] = NAN;
        return;
    }
    /* tile order: groups cut at multiples of 32 columns (whole blocks of 16 rows) */
    const int cols = n1 - n0, T = run_lanes(isa, wide, m, cols, width),
              base = tiled ? n0 & ~31 : n0;
    const int tiles = (n1 - base + width - 1) / width;
    for (int t = 0; t < tiles; t++) {
        zp_colset tile = run_group(tiled, base, n0, n1, width, T, t);
        zp_colset next_tile = run_group(tiled, base, n0, n1, width, T, t + 1);
        for (int j = 0; j < n_o; j++) {
            zp_after nxt = j + 1 < n_o     ? tile_rows(&o[j + 1], K, tile)
                           : t + 1 < tiles ? tile_rows(&o[0], K, next_tile)
                                           : after;
            if (amx)
                group_amx(o[j].y, o[j].ldy, bs, (const char *)o[j].w, m, K, tile, nxt, tiled);
            else if (fn)
                fn(o[j].y, o[j].ldy, x, (const char *)o[j].w, m, K, tile, nxt);
            else
                group_scalar(o[j].y, o[j].ldy, x, (const char *)o[j].w, o[j].wtype, m, K, tile);
        }
    }
}

/* Whether a call's outputs can be numbered: all valid, same N and wtype when joint. */
static int joint_ok(const zp_matmul_out *out, int n_out) {
    for (int j = 0; j < n_out; j++)
        if (!out_valid(&out[j]) || out[j].N != out[0].N || out[j].wtype != out[0].wtype) return 0;
    return 1;
}

/* Columns per group of the numbering under these flags (matmul.h, the flags). */
static int group_width(int flags) {
    return flags & ZP_MATMUL_TILES ? 16 : flags & ZP_MATMUL_WIDE ? ZP_WIDE : ZP_COLS;
}

int64_t zp_matmul_groups(int K, const zp_matmul_out *out, int n_out, int flags) {
    const int width = group_width(flags);
    if (out == NULL || n_out <= 0 || K < 0) return 0;
    if (flags & ZP_MATMUL_JOINT)
        return joint_ok(out, n_out) && !out_blas(&out[0], K, flags) ? (out[0].N + width - 1) / width
                                                                    : 0;
    int64_t groups = 0;
    for (int j = 0; j < n_out; j++)
        if (out_valid(&out[j]) && !out_blas(&out[j], K, flags))
            groups += (out[j].N + width - 1) / width;
    return groups;
}

/* Where group g of the numbering starts (output *j, column *n0) and ends (*n1); 0 when g is not a
 * group. Non-joint numbering only. */
static int locate(int K, const zp_matmul_out *out, int n_out, int flags, int width, int64_t g,
                  int *j, int *n0, int *n1) {
    int64_t first = 0;
    for (int o = 0; o < n_out; o++) {
        if (!out_valid(&out[o]) || out_blas(&out[o], K, flags)) continue;
        int64_t count = (out[o].N + width - 1) / width;
        if (g >= first && g < first + count) {
            *j = o, *n0 = (int)((g - first) * width);
            *n1 = *n0 + width < out[o].N ? *n0 + width : out[o].N;
            return 1;
        }
        first += count;
    }
    return 0;
}

/* The run that group g of the numbering starts (up to group g_end, clipped to its output): its
 * first tile's rows, as the `after` of the run before it; none when g < 0 or past the groups. */
static zp_after range_first(int isa, int wide, int m, int K, const zp_matmul_out *out, int n_out,
                            int flags, int width, int64_t groups, int64_t g, int64_t g_end) {
    int j, n0, n1;
    zp_colset none = {0, 1, 0};
    if (g < 0 || g >= groups) return tile_rows(&out[0], K, none);
    if (g_end <= g) g_end = g + 1;
    if (g_end > groups) g_end = groups;
    if (flags & ZP_MATMUL_JOINT) {
        const int N = out[0].N;
        return run_first(isa, wide, m, K, &out[0], (int)(g * width),
                         (int)(g_end * width < N ? g_end * width : N));
    }
    locate(K, out, n_out, flags, width, g, &j, &n0, &n1);
    int64_t end = n0 + (g_end - g) * width;
    return run_first(isa, wide, m, K, &out[j], n0, (int)(end < out[j].N ? end : out[j].N));
}

zp_cols zp_matmul_range(const float *x, int m, int K, const zp_matmul_out *out, int n_out,
                        int flags, int64_t g0, int64_t g1, int64_t next, int64_t next_end) {
    zp_cols mine = {0, 0};
    if (x == NULL || out == NULL || m <= 0 || K < 0 || n_out <= 0 || g0 < 0 || g1 <= g0)
        return mine;
    if ((flags & ZP_MATMUL_BLAS) && omp_in_parallel()) flags &= ~ZP_MATMUL_BLAS;
    int isa = isa_current();
    const int wide = (flags & ZP_MATMUL_WIDE) != 0;
    const int width = group_width(flags); /* numbering unit, fixed by the caller's flags */
    const int64_t groups = zp_matmul_groups(K, out, n_out, flags);
    if (g1 > groups) g1 = groups;
    if (g0 >= g1) return mine;
    const uint32_t *bs = NULL; /* x split for the AMX tiles, when a bf16 output needs it */
    int split = 0;             /* an output runs on AMX: bf16 under "amx", or bf16 in tile order */
    for (int j = 0; j < n_out; j++)
        split |= (isa == ZP_ISA_AMX && out[j].wtype == ZP_WTYPE_BF16) ||
                 (out[j].wtype == ZP_WTYPE_BF16_TILES && out_valid(&out[j]));
    if (split && (bs = amx_prepare(x, m, K)) == NULL && isa == ZP_ISA_AMX)
        isa = ZP_ISA_AVX512; /* no memory for the split: bf16 in place on AVX-512 */
    zp_after after = range_first(isa, wide, m, K, out, n_out, flags, width, groups, next, next_end);
    if (flags & ZP_MATMUL_JOINT) {
        /* group g: columns [g width, (g + 1) width) of every output (same N and wtype): one run */
        const int N = out[0].N;
        mine.n0 = (int)(g0 * width);
        mine.n1 = (int)(g1 * width < N ? g1 * width : N);
        run_cols(isa, wide, x, bs, m, K, out, n_out, mine.n0, mine.n1, after);
        if (bs) amx_end();
        return mine;
    }
    /* groups of every skinny output numbered one after the other: the range cut into runs of one
     * output each, each run prefetching the first tile of the one after it */
    int j, n0, n1;
    locate(K, out, n_out, flags, width, g0, &j, &n0, &n1);
    for (int64_t g = g0; g < g1;) {
        /* this run: from group g to the end of output j or of the range */
        int64_t left = g1 - g, in_out = (out[j].N - n0 + width - 1) / width;
        int64_t take = left < in_out ? left : in_out;
        int end = (int)(n0 + take * width < out[j].N ? n0 + take * width : out[j].N);
        zp_after a = g + take < g1 ? range_first(isa, wide, m, K, out, n_out, flags, width, groups,
                                                 g + take, g1)
                                   : after;
        run_cols(isa, wide, x, bs, m, K, &out[j], 1, n0, end, a);
        if (n_out == 1) mine.n0 = n0, mine.n1 = end;
        g += take;
        if (g < g1) locate(K, out, n_out, flags, width, g, &j, &n0, &n1);
    }
    if (bs) amx_end();
    return mine;
}

zp_cols zp_matmul_part(const float *x, int m, int K, const zp_matmul_out *out, int n_out, int flags,
                       int part, int n_parts) {
    zp_cols mine = {0, 0};
    if (x == NULL || out == NULL || m <= 0 || K < 0 || n_out <= 0 || n_parts < 1 || part < 0 ||
        part >= n_parts)
        return mine;
    /* never sgemm inside an active parallel region (OpenBLAS's pthreads build warns and may hang
     * there); all threads of a team see the same answer, so they number the groups alike */
    if ((flags & ZP_MATMUL_BLAS) && omp_in_parallel()) flags &= ~ZP_MATMUL_BLAS;
    if ((flags & ZP_MATMUL_JOINT) && !joint_ok(out, n_out)) return mine;
    /* BLAS outputs: whole, on part 0 (joint: all of them, as out[0] decides) */
    for (int j = 0; j < n_out; j++)
        if (out_valid(&out[j]) && out_blas(&out[(flags & ZP_MATMUL_JOINT) ? 0 : j], K, flags) &&
            part == 0) {
            blas_product(x, m, K, &out[j]);
            if (n_out == 1 || (flags & ZP_MATMUL_JOINT)) mine.n1 = out[j].N;
        }
    int64_t g0, g1;
    zp_share(zp_matmul_groups(K, out, n_out, flags), part, n_parts, &g0, &g1);
    if (g0 < g1) mine = zp_matmul_range(x, m, K, out, n_out, flags, g0, g1, -1, -1);
    return mine;
}

/* The skinny products of one x in one parallel region: every thread runs its zp_matmul_part
 * (the groups of output columns of every product, numbered one after the other, in one
 * contiguous block per thread), so each thread streams its own slice of the weights exactly once
 * and the threads wake once for all of them. Never BLAS. */
static void matmul_skinny(const float *x, int m, int K, const zp_matmul_out *out, int n_out) {
    int flags = zp_matmul_flags(m) & ~ZP_MATMUL_BLAS; /* read once: every thread agrees */
    size_t work = 0, groups = 0;
    for (int j = 0; j < n_out; j++) {
        if (out[j].N <= 0) continue;
        work += (size_t)K * (size_t)out[j].N * (size_t)(m + 4);
        groups += (size_t)(out[j].N + ZP_COLS - 1) / ZP_COLS;
    }
    int threads = zp_get_num_threads();
    int parallel = threads > 1 && groups > 1 && work >= ZP_PARALLEL_MIN_WORK;
#pragma omp parallel num_threads(threads) if (parallel)
    zp_matmul_part(x, m, K, out, n_out, flags, omp_get_thread_num(), omp_get_num_threads());
}

void zp_matmul_multi(const float *x, int m, int K, const zp_matmul_out *out, int n_out) {
    if (m <= 0 || K < 0 || n_out <= 0 || out == NULL) return;
    matmul_skinny(x, m, K, out, n_out);
}

void zp_matmul_w(float *y, int ldy, const float *x, const void *w, int wtype, int m, int K, int N) {
    if (m <= 0 || N <= 0 || K < 0 || ldy < N || zp_wtype_size(wtype) == 0) return;
    /* BLAS only for float32, with K >= 1 (its lda must be >= 1) and never from inside a parallel
     * region: there the skinny kernel runs on the calling thread (nested regions are inactive). */
    zp_matmul_out one = {y, ldy, w, wtype, N};
    if (wtype == ZP_WTYPE_F32 && m >= zp_get_blas_min_rows() && K > 0 && !omp_in_parallel())
        blas_product(x, m, K, &one);
    else
        matmul_skinny(x, m, K, &one, 1);
}

void zp_matmul_ld(float *y, int ldy, const float *x, const float *w, int m, int K, int N) {
    zp_matmul_w(y, ldy, x, w, ZP_WTYPE_F32, m, K, N);
}

void zp_matmul(float *y, const float *x, const float *w, int m, int K, int N) {
    zp_matmul_ld(y, N, x, w, m, K, N);
}
