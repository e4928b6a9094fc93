/* matmul.h -- the matrix product of the C core: y = x . w^T (the torch Linear layout).
 *
 * Worked example (one decode row through a 768 -> 2304 projection):
 *
 *     float x[1 * 768];          // (m, K) activations, row-major
 *     const float *wqkv = ...;   // (N, K) = (2304, 768) weights, row-major, borrowed
 *     float y[1 * 2304];         // (m, N)
 *     zp_matmul(y, x, wqkv, 1, 768, 2304);
 *
 * Two paths, chosen per call by the number of rows m:
 *   - m < zp_get_blas_min_rows() (default: all m): the "skinny" kernel written here. Decode passes
 *     have few rows, so the product is bound by reading w from memory; the kernel streams w once,
 *     split into blocks of output columns across threads (zp_matmul_part below: one block per
 *     thread of an OpenMP team), and uses AVX-512 (or AVX2, or plain C) chosen at run time.
 *   - m >= zp_get_blas_min_rows(): OpenBLAS sgemm (see blas.h), which wins when compute-bound.
 *
 * Weights may be float32, bfloat16 or float16 (zp_matmul_w); activations x, outputs y and every
 * accumulation are float32. A bf16/f16 weight is widened to float32 in registers, which is exact,
 * so y is bit for bit what the float32 product with the widened weights gives. (AVX512-BF16's
 * vdpbf16ps would round x to bf16 as well: a relative error near 2^-9 per product, far above
 * the 1e-4 the logits tests allow. x split into two bf16 parts keeps the error near 2^-16, but
 * on the 16-core AVX-512 host vdpbf16ps issues at 0.56x the FMA rate, and a kernel built that
 * way ran at 0.43-0.99x this one's speed: BENCHMARKS.md, issue 13, stop 26. Not used.)
 *
 * AMX ("amx", opt-in through zp_matmul_force_isa where the CPU and OS offer AMX-BF16): bf16
 * weights go through the tile unit, TDPBF16PS, about 30x the multiply-adds per cycle of AVX-512
 * FMAs. Its inputs are bf16 on both sides, so each activation is split exactly into three bf16
 * parts (hi + mid + lo = x: 24 bits of significand in three pieces of 8), every product is
 * exact, and only the tile unit's float32 accumulation rounds: bf16 logits within 1.1-1.7e-6
 * of the AVX-512 kernel's (relative to the largest) on GPT-B / GPT-L. Its bits are the tile
 * unit's, not those of the other kernels, and float32 subnormals flush to zero there. float32
 * and f16 weights run the AVX-512 kernel unchanged. Weights read in place stream as 32
 * interleaved rows; a copy in tile order (ZP_WTYPE_BF16_TILES, which zp_forward uses for bf16
 * models built under "amx") streams as one. Not the default: on the 16-core Sapphire-Rapids-
 * class host, with the copy, one-query passes took 1.11-1.51x the AVX-512 kernel's time, while
 * ZipAR-4 / ZipAR-8 on GPT-L 24x24 at 2 threads ran 1.17x / 1.09x faster (raster 1.09x slower);
 * at 16 threads every policy was slower (1.12-1.19x); in place, every pass was slower
 * (BENCHMARKS.md, issue 13).
 *
 * Compute-bound passes (many rows): the AVX-512 tile is register-blocked, 4 rows of x by 4 rows
 * of w (16 zmm accumulators, 8 loads per 16 fused multiply-adds); the group of 4 rows of w and
 * a K block of up to 64 rows of x stay in L1/L2 while the tiles reuse them; bf16/f16 blocks are
 * widened once into a float32 scratch block that all tiles share when a panel has 5 tiles or
 * more (m > 16), in registers by each tile below that (1.06-1.28x faster at m = 6..12). A
 * wider 4 x 6 tile exists (zp_matmul_set_wide_min_rows) with the same summation order; measured
 * on a 16-core Sapphire-Rapids-class host (csrc/tests/bench_kernels.c, BENCHMARKS.md) it was no
 * faster than the 4 x 4 one at 16 threads (slower for bf16), so it is off by default. OpenBLAS
 * sgemm is slower on every decode shape measured and its blocking depends on m, which would break
 * the batch-independence below: it is off by default too.
 *
 * Determinism of the skinny kernel: every y[i][n] is one dot product summed in one fixed order
 * that depends only on K: 16 partial sums, lane j accumulating (with fused multiply-add) the
 * products k = j, j+16, j+32, ... in increasing k, then combined by the tree
 * s8[j] = s[j] + s[j+8], s4[j] = s8[j] + s8[j+4], s2[j] = s4[j] + s4[j+2], y = s2[0] + s2[1].
 * So y[i][n] is bit-identical whatever the thread count, whatever m (< the BLAS threshold),
 * whatever other rows share the batch, and whichever of the three instruction sets runs it.
 * The BLAS path has no such promise. The AMX path (bf16 weights) keeps the first three: each
 * output is one accumulator over K steps of 32 in a fixed order (hi, mid, lo products per step),
 * and the tile unit computes each element from its own row and column only.
 *
 * No function here prints or fails: sizes out of range (m, N <= 0, K < 0, ldy < N) make the
 * product a no-op. The only allocation is the AMX path's: each thread keeps its last split of x
 * (3 bf16 parts of m x K, freed when the thread ends); when that memory cannot be had (or would
 * pass 256 MiB), bf16 weights in place run on the AVX-512 kernel, with that kernel's bits, and
 * bf16 weights in tile order give NaN (no kernel but AMX's reads them). Thread settings are
 * process-wide.
 */
#ifndef ZP_MATMUL_H
#define ZP_MATMUL_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* y[i][n] = sum_k x[i][k] * w[n][k] for i < m, n < N   (y = x @ w^T, torch Linear layout)
 * x: (m, K) row-major, w: (N, K) row-major, y: (m, N) row-major; all borrowed; y must not alias
 * x or w. K = 0 gives y = 0. */
void zp_matmul(float *y, const float *x, const float *w, int m, int K, int N);
/* Same, with an explicit row stride for y (ldy >= N, in floats) so callers can write into wider
 * buffers; y[i][n] for n >= N is left untouched. */
void zp_matmul_ld(float *y, int ldy, const float *x, const float *w, int m, int K, int N);

/* Storage type of a weight matrix. bf16 and f16 elements are uint16_t bit patterns (bfloat16:
 * the high half of a float32; float16: IEEE binary16). */
typedef enum {
    ZP_WTYPE_F32 = 0,
    ZP_WTYPE_BF16 = 1,
    ZP_WTYPE_F16 = 2,
    ZP_WTYPE_BF16_TILES = 3, /* bf16 in AMX tile order (zp_tile_bf16): the AMX kernel only */
} zp_wtype;

/* Bytes per element of a weight type; 0 for an unknown one. */
int zp_wtype_size(int wtype);

/* bf16 weights (N, K) in AMX tile order, for the AMX kernel: 16 rows by 32 elements per 1 KiB
 * tile (row-major inside), tiles in the order (row block, K step), rows padded to a multiple of
 * 16 and K to one of 32 with zeros. Every tile the kernel reads is then one contiguous KiB and
 * a group of columns one contiguous block: a single sequential stream of weights, against 32
 * interleaved row streams for bf16 read in place. The products are bit for bit those of the
 * AMX kernel on the same weights in place. A product of ZP_WTYPE_BF16_TILES weights runs on AMX
 * whatever kernel is chosen for the others, and is a no-op on a CPU without AMX.
 * zp_tile_bf16_bytes: the size of the copy (0 for N or K < 1); zp_tile_bf16: writes it. */
size_t zp_tile_bf16_bytes(int N, int K);
void zp_tile_bf16(void *dst, const void *src, int N, int K);
/* dst[i] = element i of src (n elements of type wtype) as float32, exactly (bf16 / f16 widened
 * as the kernels widen them). An unknown wtype writes nothing. */
void zp_widen(float *dst, const void *src, int wtype, size_t n);

/* y = x . w^T with w stored as `wtype` ((N, K) elements, row-major); as zp_matmul_ld otherwise.
 * An unknown wtype makes the product a no-op. Float32 products of m >= zp_get_blas_min_rows()
 * go to BLAS sgemm; bf16/f16 ones never do. */
void zp_matmul_w(float *y, int ldy, const float *x, const void *w, int wtype, int m, int K, int N);

/* Several products of the same x (m, K), in ONE parallel region: out[j].y (m, out[j].N, row
 * stride out[j].ldy) = x . out[j].w^T. Each output is bitwise the one zp_matmul_w would give.
 * Entries with an unknown wtype, N <= 0, ldy < N or a NULL pointer are skipped. Never uses
 * BLAS. */
typedef struct {
    float *y;      /* (m, N), row stride ldy; borrowed */
    int ldy;       /* >= N */
    const void *w; /* (N, K) elements of wtype; borrowed */
    int wtype;     /* zp_wtype */
    int N;
} zp_matmul_out;
void zp_matmul_multi(const float *x, int m, int K, const zp_matmul_out *out, int n_out);

/* ---------------------------------------------------------------- products inside a thread team
 * How threads work: the output columns of a product are cut into groups of 4 (6 for the wide
 * tile), and a team of n_parts threads splits the groups into n_parts contiguous blocks, one per
 * thread (the first groups % n_parts blocks one group larger). zp_matmul_w / zp_matmul_multi open
 * their own OpenMP region and call zp_matmul_part on every thread of it; zp_forward (model.c)
 * keeps ONE team for all the layers of a pass and hands out the groups itself (a static block
 * per thread, then chunks from a counter) through zp_matmul_range, with its own barrier between
 * stages. Which thread computes a column never changes its bits (above). */

/* Below this many multiply-adds (K * N * (m + 4): the + 4 stands for reading w) a product, or a
 * forward pass whose largest product is this small, runs on the calling thread only: waking
 * threads costs more than it saves. */
#define ZP_PARALLEL_MIN_WORK ((size_t)1 << 18)

/* Flags of zp_matmul_part. */
enum {
    ZP_MATMUL_JOINT = 1, /* the outputs (same N and wtype) are split together by column: a group
                          * is the same columns of every output, so a thread owns e.g. the gate
                          * and the up projection of the same hidden units */
    ZP_MATMUL_BLAS = 2,  /* float32 outputs (K >= 1) go to BLAS sgemm, whole, on part 0;
                          * ignored inside an active OpenMP parallel region (OpenBLAS's pthreads
                          * build warns and may hang there): call from a team of one */
    ZP_MATMUL_WIDE = 4,  /* groups of 6 columns (the wide AVX-512 tile) */
    ZP_MATMUL_TILES = 8, /* groups of 16 columns (one AMX tile of weights in tile order) */
};
/* The flags the kernel settings give for a product of m rows: ZP_MATMUL_WIDE when the AVX-512
 * kernel runs and m >= the wide-tile threshold, ZP_MATMUL_BLAS when m >= zp_get_blas_min_rows().
 * Read it ONCE for all the threads of a team: settings changed meanwhile (from another thread)
 * must not make two threads number the groups differently. */
int zp_matmul_flags(int m);

/* [*lo, *hi): the `part`-th of n_parts contiguous shares of n units, the first n % n_parts
 * shares one unit larger (OpenMP's schedule(static)). How zp_matmul_part splits column groups
 * and how a forward pass's team splits rows. */
static inline void zp_share(int64_t n, int part, int n_parts, int64_t *lo, int64_t *hi) {
    int64_t q = n / n_parts, r = n % n_parts;
    *lo = part * q + (part < r ? part : r);
    *hi = *lo + q + (part < r);
}

/* Output columns [n0, n1) a part computed (n0 == n1: none). */
typedef struct {
    int n0, n1;
} zp_cols;

/* Share `part` (0 <= part < n_parts) of the products of zp_matmul_multi(x, m, K, out, n_out):
 * without ZP_MATMUL_JOINT the groups of out[0], then out[1], ... numbered one after the other
 * (BLAS outputs are not numbered: part 0 runs them whole); with it, group g is columns
 * [g w, (g + 1) w) of every output (then all outputs must have the same N and wtype, else
 * nothing is computed). The n_parts calls together write every column of every output exactly
 * once; each call writes only its own columns. Returns the columns this part wrote when
 * n_out == 1 or ZP_MATMUL_JOINT (of every output), else {0, 0}. Allocates nothing; safe to call
 * from every thread of a team at once. Out-of-range arguments (m <= 0, K < 0, n_parts < 1, part
 * outside [0, n_parts)) compute nothing. */
zp_cols zp_matmul_part(const float *x, int m, int K, const zp_matmul_out *out, int n_out, int flags,
                       int part, int n_parts);

/* The column groups that zp_matmul_part's shares split (the numbering above: without
 * ZP_MATMUL_JOINT the groups of every output that does not go to BLAS, one output after the
 * other; with it, the column blocks common to all outputs, 0 when they differ in N or wtype). */
int64_t zp_matmul_groups(int K, const zp_matmul_out *out, int n_out, int flags);

/* Groups [g0, g1) of that numbering (clipped to it), for teams that hand out groups themselves
 * (zp_forward takes chunks of them from a shared counter). [next, next_end): the groups the
 * calling thread computes after these (next < 0: none; next_end <= next: one group), whose first
 * weights the last tile prefetches. Never BLAS. Returns the columns written as zp_matmul_part
 * does (when the range lies in one output, or joint). Each column's bits are those of any other
 * split.
 * Within a range, a pass of few rows (m <= 8, not wide) walks each output's columns in 4 lanes
 * (tile t computes columns t, t + T, t + 2T, t + 3T of the run, T = ceil(columns / 4)): four
 * sequential streams of weight rows; more rows walk adjacent groups. Same bits either way. */
zp_cols zp_matmul_range(const float *x, int m, int K, const zp_matmul_out *out, int n_out,
                        int flags, int64_t g0, int64_t g1, int64_t next, int64_t next_end);

/* Threads for the skinny kernel (OpenMP) and for OpenBLAS. n = 0 restores the default (OpenMP's
 * omp_get_max_threads() at the time of each call). Returns 0, or -1 and changes nothing when n is
 * negative or above ZP_MAX_THREADS, or when called inside an OpenMP parallel region. Safe to call
 * while another thread runs a session: each pass reads the count once (buffers and loops agree). */
#define ZP_MAX_THREADS 1024
int zp_set_num_threads(int n);
int zp_get_num_threads(void);

/* "avx512", "avx2" or "scalar": the skinny kernel chosen at run time for this CPU; "amx" when
 * forced (AVX-512 for float32 / f16 weights, AMX tiles for bf16 ones). */
const char *zp_matmul_isa(void);
/* 1 when this CPU (and OS) can run the named kernel ("amx", "avx512", "avx2", "scalar"), else 0.
 * Asking about "amx" requests the tile permission from Linux once. */
int zp_matmul_isa_supported(const char *isa);
/* e.g. "scipy-openblas32 (OpenBLAS 0.3.x ... config)" or "openblas (system) (OpenBLAS 0.3.21 ...)"
 * Static storage; valid until the next call from the same thread. */
const char *zp_blas_name(void);
int zp_blas_threads(void);

/* Products with m >= this many rows go to BLAS sgemm. Default: 2^30, i.e. never: measured on the
 * development machines (Zen 5, where both OpenBLAS builds pick Haswell kernels) the skinny kernel
 * was 1.3-1.8x faster than sgemm at every m up to 1024, and it keeps every result bitwise
 * independent of thread count and batch. Lower it to use OpenBLAS for large products (e.g. on a
 * CPU where OpenBLAS has native kernels). Values < 1 are taken as 1.
 * Note: on 2 cores, alternating OpenBLAS (its own spinning pthreads) with OpenMP regions (spinning
 * libgomp workers) oversubscribes the CPUs and can cost milliseconds per switch unless
 * OMP_WAIT_POLICY=passive; on Zen 5 the skinny kernel also outruns OpenBLAS up to m = 1024. */
void zp_set_blas_min_rows(int m);
int zp_get_blas_min_rows(void);

/* ---------------------------------------------------------------- testing only */
/* Forces the skinny kernel, and the attention loops of model.c, to "amx", "avx512", "avx2" or
 * "scalar" (plain x86-64); NULL returns to automatic choice. ("avx512" on an AMX machine gives bf16
 * products the bits of every other kernel.)
 * Returns 0, or -1 (and changes nothing) when the name is unknown or the CPU cannot run it. */
int zp_matmul_force_isa(const char *isa);
/* Passes of m >= this many rows take the wide AVX-512 tile (default 1 << 30: never; m <= 0
 * restores the default). Results are the same bits either way; only the speed differs. */
void zp_matmul_set_wide_min_rows(int m);
/* bf16 / f16 panels of x of at least `tiles` tiles of 4 rows (AVX-512 kernel) widen each block of
 * weights once into a scratch block that the tiles share; fewer tiles widen in registers, each
 * tile its own loads (default 5; tiles <= 0 restores it). Results are the same bits either way;
 * only the speed differs. */
void zp_matmul_set_widen_min_tiles(int tiles);
/* Passes of at most max_rows rows walk runs of columns in lanes (zp_matmul_range), more rows
 * adjacent groups; 0: adjacent always; < 0 restores the default (8). Results are the same bits
 * either way; only the speed differs. */
void zp_matmul_set_lanes(int max_rows);

#ifdef __cplusplus
}
#endif
#endif /* ZP_MATMUL_H */
