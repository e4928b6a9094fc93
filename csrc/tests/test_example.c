/* test_example.c -- compiles and runs the usage example of csrc/zipar.h, verbatim.
 *
 * The Makefile copies the example's lines out of the header comment into
 * build/<blas>/zipar_h_example.inc (see its rule); this harness provides what the example takes
 * as given (weights, n_images, prefix_cond, out), includes the lines, then checks the result.
 *
 * Run: make -C csrc/tests   (exit status 0 when every check passes)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../zipar.h"

enum { DIM = 64, LAYERS = 2, HIDDEN = 256, VOCAB = 100, QKV = (4 + 2 * 4) * 16, GRID = 4 };

static uint64_t rng_state = 0x2545f4914f6cdd1dull;
static float uniform(void) {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(rng_state >> 40) / (double)(1ull << 24) - 0.5);
}
static float *random_array(size_t n, float scale, float offset) {
    float *a = malloc(sizeof(float) * n);
    if (!a) exit(2);
    for (size_t i = 0; i < n; i++) a[i] = offset + scale * uniform();
    return a;
}

int main(void) {
    /* what the example takes as given */
    zp_layer_weights layers[LAYERS];
    for (int l = 0; l < LAYERS; l++)
        layers[l] = (zp_layer_weights){random_array(DIM, 0.2f, 1.f),
                                       random_array((size_t)QKV * DIM, 0.25f, 0.f),
                                       random_array((size_t)DIM * DIM, 0.25f, 0.f),
                                       random_array(DIM, 0.2f, 1.f),
                                       random_array((size_t)HIDDEN * DIM, 0.25f, 0.f),
                                       random_array((size_t)HIDDEN * DIM, 0.25f, 0.f),
                                       random_array((size_t)DIM * HIDDEN, 0.12f, 0.f)};
    zp_weights weights = {random_array((size_t)VOCAB * DIM, 1.f, 0.f), layers,
                          random_array(DIM, 0.2f, 1.f),
                          random_array((size_t)VOCAB * DIM, 0.25f, 0.f)};
    int n_images = 3;
    float *prefix_cond = random_array((size_t)n_images * DIM, 1.f, 0.f);
    int32_t out[3 * GRID * GRID];
    memset(out, 0xff, sizeof out);

    {
#include "zipar_h_example.inc"
        /* the example's own config must be the one the harness built weights for */
        if (cfg.dim != DIM || cfg.n_layer != LAYERS || cfg.hidden != HIDDEN || cfg.vocab != VOCAB ||
            cfg.grid_h != GRID || cfg.grid_w != GRID) {
            fprintf(stderr, "FAIL: the header example's config changed; update the harness\n");
            return 1;
        }
    }
    int bad = 0;
    for (int i = 0; i < n_images * GRID * GRID; i++) bad += out[i] < 0 || out[i] >= VOCAB;
    if (bad) {
        fprintf(stderr, "FAIL: %d of the example's tokens are not in [0, %d)\n", bad, VOCAB);
        return 1;
    }
    printf("zipar.h example: %d images of %dx%d tokens, first row %d %d %d %d\n", n_images, GRID,
           GRID, out[0], out[1], out[2], out[3]);
    return 0;
}
