/* bench_layer.h -- what bench_kernels.c and bench_rows.c share: a clock, page-touching random
 * weights, copies of one transformer layer's weight matrices (qkv, wo, w1, w3, w2), cycled
 * through by the benchmarks so that every product reads its weights from memory, and the
 * layer's products. Include after matmul.h. */
#ifndef ZP_BENCH_LAYER_H
#define ZP_BENCH_LAYER_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void *alloc_bytes(size_t bytes) {
    void *a = aligned_alloc(64, (bytes + 63) / 64 * 64);
    if (!a) {
        fprintf(stderr, "out of memory (%zu bytes)\n", bytes);
        exit(1);
    }
    return a;
}

/* n small values in [-1, 1) of the given type (touches every page). */
static void *random_weights(size_t n, int wtype, uint32_t seed) {
    void *a = alloc_bytes(n * (size_t)zp_wtype_size(wtype));
    uint32_t state = seed;
    for (size_t i = 0; i < n; i++) {
        state = state * 1664525u + 1013904223u;
        float f = (float)(state >> 8) / (float)(1u << 23) - 1.0f;
        if (wtype == ZP_WTYPE_F32) {
            ((float *)a)[i] = f;
        } else {
            uint32_t b;
            memcpy(&b, &f, sizeof b);
            ((uint16_t *)a)[i] = (uint16_t)(b >> 16); /* bf16 and f16 timings do not depend on
                                                         the values; f16 bits are just bits */
        }
    }
    return a;
}

typedef struct {
    void *wqkv, *wo, *w1, *w3, *w2;
} zp_layer;

/* `copies` layers of model width D and hidden width H, weights of type wtype; copy c's matrices
 * are seeded from seed_step * c. */
static zp_layer *layers_new(int copies, int D, int H, int wtype, uint32_t seed_step) {
    zp_layer *L = alloc_bytes(sizeof *L * (size_t)copies);
    for (int c = 0; c < copies; c++) {
        uint32_t seed = seed_step * (uint32_t)c;
        L[c].wqkv = random_weights((size_t)3 * D * D, wtype, seed + 1);
        L[c].wo = random_weights((size_t)D * D, wtype, seed + 2);
        L[c].w1 = random_weights((size_t)H * D, wtype, seed + 3);
        L[c].w3 = random_weights((size_t)H * D, wtype, seed + 4);
        L[c].w2 = random_weights((size_t)D * H, wtype, seed + 5);
    }
    return L;
}

/* The products of one layer L for m rows x (m, D), as zp_forward calls them: qkv (m, 3D), wo and
 * w2 into out (m, D), w1 and w3 into h1 and h3 (m, H): fused in one zp_matmul_multi, or as two
 * calls. */
static void layer_products(int D, int H, const zp_layer *L, int wtype, int m, const float *x,
                           float *qkv, float *out, float *h1, float *h3, int fused) {
    zp_matmul_w(qkv, 3 * D, x, L->wqkv, wtype, m, D, 3 * D);
    zp_matmul_w(out, D, x, L->wo, wtype, m, D, D);
    if (fused) {
        zp_matmul_out gate_up[2] = {{h1, H, L->w1, wtype, H}, {h3, H, L->w3, wtype, H}};
        zp_matmul_multi(x, m, D, gate_up, 2);
    } else {
        zp_matmul_w(h1, H, x, L->w1, wtype, m, D, H);
        zp_matmul_w(h3, H, x, L->w3, wtype, m, D, H);
    }
    zp_matmul_w(out, D, h1, L->w2, wtype, m, H, D);
}

static void layers_free(zp_layer *L, int copies) {
    for (int c = 0; c < copies; c++)
        free(L[c].wqkv), free(L[c].wo), free(L[c].w1), free(L[c].w3), free(L[c].w2);
    free(L);
}

#endif
