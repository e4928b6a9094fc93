/* blas.h -- the few OpenBLAS entry points the core uses, declared here instead of cblas.h.
 *
 * Two builds of OpenBLAS are supported and their symbols differ by a prefix:
 *   - the PyPI wheel scipy-openblas32:  scipy_cblas_sgemm, scipy_openblas_set_num_threads, ...
 *     (build with -DZP_BLAS_PREFIX=scipy_ -DZP_BLAS_NAME='"scipy-openblas32"')
 *   - Debian's libopenblas-dev:         cblas_sgemm, openblas_set_num_threads, ...
 *     (build with ZP_BLAS_PREFIX undefined or empty)
 * ZP_BLAS_FN(name) pastes the prefix onto a name. Both libraries use 32-bit integers (blasint).
 * The enum arguments of cblas_sgemm are passed as int, which is how C passes enums.
 */
#ifndef ZP_BLAS_H
#define ZP_BLAS_H

#ifndef ZP_BLAS_PREFIX
#define ZP_BLAS_PREFIX
#endif
#ifndef ZP_BLAS_NAME
#define ZP_BLAS_NAME "openblas (system)"
#endif

#define ZP_BLAS_CAT_(a, b) a##b
#define ZP_BLAS_CAT(a, b)  ZP_BLAS_CAT_(a, b)
#define ZP_BLAS_FN(name)   ZP_BLAS_CAT(ZP_BLAS_PREFIX, name)

/* Values of CBLAS_ORDER and CBLAS_TRANSPOSE. */
enum { ZP_BLAS_ROW_MAJOR = 101, ZP_BLAS_NO_TRANS = 111, ZP_BLAS_TRANS = 112 };

/* C (M, N) = alpha * op(A) (M, K) . op(B) (K, N) + beta * C, leading dimensions in elements. */
void ZP_BLAS_FN(cblas_sgemm)(int order, int trans_a, int trans_b, int M, int N, int K, float alpha,
                             const float *A, int lda, const float *B, int ldb, float beta, float *C,
                             int ldc);
void ZP_BLAS_FN(openblas_set_num_threads)(int num_threads);
int ZP_BLAS_FN(openblas_get_num_threads)(void);
/* Static string such as "OpenBLAS 0.3.21 DYNAMIC_ARCH NO_AFFINITY Zen MAX_THREADS=64". */
char *ZP_BLAS_FN(openblas_get_config)(void);

#endif /* ZP_BLAS_H */
