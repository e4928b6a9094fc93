/* bench_lanes.c -- does the order in which a product of few rows walks the rows of w change the
 * rate at which it streams them? The skinny kernel (zp_matmul_w, m = 2 rows by default: one
 * query under CFG) with lanes on (a run of columns cut into 4 lanes, tile t taking row t of each:
 * 4 sequential streams) and off (tiles of 4 adjacent rows), bf16 and float32 weights of several
 * row sizes (K = 768: GPT-B, 1024: GPT-L, 2816: GPT-L's w2), 16 MiB per matrix, copies cycled
 * through 384 MiB so that every product reads from memory. Rounds visit every variant in turn (a
 * noisy period hits all alike); median and best GB/s per variant, and the read bandwidth before
 * and after (zp_read_bandwidth).
 *
 * Run: make -C csrc/tests bench-lanes ARGS="2 30"   (threads, rounds[, m]; pin with taskset)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../matmul.h"
#include "../zipar.h"

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void *alloc_bytes(size_t n) {
    size_t b = (n + 4095) / 4096 * 4096;
    unsigned char *a = aligned_alloc(4096, b);
    uint32_t s = 12345u + (uint32_t)n;
    for (size_t i = 0; i < b; i += 2) {
        s = s * 1664525u + 1013904223u;
        uint16_t v = (uint16_t)(0x3c00u | ((s >> 20) & 0x3ffu)); /* bf16/f16 ~ [0.0078, 1] */
        memcpy(a + i, &v, 2);
    }
    return a;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

#define NV 10
int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 2, rounds = argc > 2 ? atoi(argv[2]) : 30;
    int m = argc > 3 ? atoi(argv[3]) : 2;
    const size_t bytes = (size_t)16 << 20, rotation = (size_t)384 << 20;
    const int copies = (int)(rotation / bytes);
    void **w = malloc(sizeof(void *) * copies);
    float *x = malloc(sizeof(float) * 64 * 4096), *y = malloc(sizeof(float) * 64 * 16384);
    if (!w || !x || !y) return 1;
    for (int c = 0; c < copies; c++) w[c] = alloc_bytes(bytes);
    for (int i = 0; i < 64 * 4096; i++) x[i] = 0.001f * (float)(i % 97);
    if (threads < 1 || m < 1 || m > 64 || zp_set_num_threads(threads) != 0) return 1;
    static const struct {
        const char *name;
        int wtype, K, lanes;
    } v[NV] = {
        {"bf16 K=1024 lanes", ZP_WTYPE_BF16, 1024, 1},
        {"bf16 K=1024 adjacent", ZP_WTYPE_BF16, 1024, 0},
        {"bf16 K=768 lanes", ZP_WTYPE_BF16, 768, 1},
        {"bf16 K=768 adjacent", ZP_WTYPE_BF16, 768, 0},
        {"bf16 K=2816 lanes", ZP_WTYPE_BF16, 2816, 1},
        {"bf16 K=2816 adjacent", ZP_WTYPE_BF16, 2816, 0},
        {"fp32 K=1024 lanes", ZP_WTYPE_F32, 1024, 1},
        {"fp32 K=1024 adjacent", ZP_WTYPE_F32, 1024, 0},
        {"fp32 K=768 lanes", ZP_WTYPE_F32, 768, 1},
        {"fp32 K=768 adjacent", ZP_WTYPE_F32, 768, 0},
    };
    static double t[NV][400];
    int next = 0;
    rounds = rounds < 1 ? 1 : rounds > 400 ? 400 : rounds;
    double bw0 = zp_read_bandwidth((size_t)512 << 20, 3);
    for (int r = 0; r < rounds; r++)
        for (int i = 0; i < NV; i++) {
            int es = zp_wtype_size(v[i].wtype), K = v[i].K;
            int N = (int)(bytes / ((size_t)K * es)) / (4 * threads) * (4 * threads);
            const void *wr = w[next++ % copies];
            zp_matmul_set_lanes(v[i].lanes ? m : 0);
            double s = now();
            zp_matmul_w(y, N, x, wr, v[i].wtype, m, K, N);
            t[i][r] = (double)N * K * es / (now() - s) * 1e-9;
        }
    zp_matmul_set_lanes(-1);
    double bw1 = zp_read_bandwidth((size_t)512 << 20, 3);
    printf("bench_lanes: kernel %s, %d threads, %d rounds, m = %d; read bandwidth %.1f / %.1f GB/s "
           "(before / after)\n",
           zp_matmul_isa(), threads, rounds, m, bw0, bw1);
    for (int i = 0; i < NV; i++) {
        qsort(t[i], rounds, sizeof(double), cmp);
        printf("  %-22s median %6.1f GB/s  best %6.1f\n", v[i].name, t[i][rounds / 2],
               t[i][rounds - 1]);
    }
    for (int c = 0; c < copies; c++) free(w[c]);
    free(w), free(x), free(y);
    return 0;
}
