/* bench_rows.c -- one transformer layer's products (GPT-B or GPT-L shape: qkv, wo, w1 and w3
 * fused, w2) for passes of a few rows (ZipAR passes: 2 rows per query under CFG), each kernel
 * setting that does not change a bit of the result timed against the default, interleaved in
 * the same rounds (in an order rotated each round) so that a shared host's drift hits every
 * setting alike:
 *   - default: the package's settings;
 *   - lanes off / lanes to 16 rows: runs of columns walked as adjacent groups, or in 4 lanes up
 *     to 16 rows (zp_matmul_set_lanes; default 8);
 *   - scratch always / never: bf16 weights widened into a scratch block shared by the tiles of a
 *     panel at every tile count, or in registers by each tile (zp_matmul_set_widen_min_tiles;
 *     default from 5 tiles, m > 16).
 * Cold: several copies of the layer (> 400 MiB) are cycled through, so each product reads its
 * weights from memory, as a decode pass does; hot: one copy. Prints the median ms per layer and
 * GFLOP/s of each (setting, m), and each setting's ratio to the default (> 1: faster).
 *
 * Run: make -C csrc/tests bench-rows ARGS="L 40"   (SHAPE ROUNDS [DTYPE: bf16 | fp32 | both];
 *      threads: OMP_NUM_THREADS, e.g. OMP_NUM_THREADS=2 taskset -c 0,1 for two)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../matmul.h"
#include "bench_layer.h"

enum { M_MAX = 32, ROUNDS_MAX = 400 };
static const int ms[] = {2, 6, 8, 12, 16, 24, 32};
enum { N_MS = sizeof ms / sizeof ms[0] };

typedef struct {
    const char *name;
    int lanes, widen; /* zp_matmul_set_lanes, zp_matmul_set_widen_min_tiles (-1 / 0: default) */
} zp_setting;
static const zp_setting settings[] = {{"default", -1, 0},
                                      {"lanes off", 0, 0},
                                      {"lanes to 16 rows", 16, 0},
                                      {"scratch always", -1, 1},
                                      {"scratch never", -1, 1 << 30}};
enum { N_SET = sizeof settings / sizeof settings[0] };

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    int large = argc < 2 || strcmp(argv[1], "B") != 0;
    int D = large ? 1024 : 768, H = large ? 2816 : 2048;
    int rounds = argc > 2 ? atoi(argv[2]) : 20;
    rounds = rounds < 3 ? 3 : rounds > ROUNDS_MAX ? ROUNDS_MAX : rounds;
    const char *which = argc > 3 ? argv[3] : "both";
    printf("bench_rows: GPT-%s layer (dim %d, hidden %d), kernel %s, %d threads, %d rounds\n",
           large ? "L" : "B", D, H, zp_matmul_isa(), zp_get_num_threads(), rounds);
    float *x = random_weights((size_t)M_MAX * H, ZP_WTYPE_F32, 7);
    float *y = alloc_bytes(sizeof(float) * M_MAX * 3 * D);
    float *h1 = alloc_bytes(sizeof(float) * M_MAX * H),
          *h3 = alloc_bytes(sizeof(float) * M_MAX * H);
    static double t[N_SET][N_MS][ROUNDS_MAX];
    for (int wtype = ZP_WTYPE_F32; wtype <= ZP_WTYPE_BF16; wtype++) {
        const char *tname = wtype == ZP_WTYPE_F32 ? "fp32" : "bf16";
        if (strcmp(which, "both") != 0 && strcmp(which, tname) != 0) continue;
        size_t params = (size_t)4 * D * D + (size_t)3 * D * H;
        size_t bytes = params * (size_t)zp_wtype_size(wtype);
        int copies = (int)(((size_t)400 << 20) / bytes) + 1;
        zp_layer *L = layers_new(copies, D, H, wtype, 10u);
        for (int hot = 0; hot < 2; hot++) {
            int next = 0;
            for (int r = 0; r < rounds; r++)
                for (int i = 0; i < N_MS; i++)
                    for (int j = 0; j < N_SET; j++) {
                        /* the settings in an order rotated each round: the first after a change
                         * of m ran up to 1.3x slower on the development machine, whatever it was */
                        int v = (j + r) % N_SET;
                        zp_matmul_set_lanes(settings[v].lanes);
                        zp_matmul_set_widen_min_tiles(settings[v].widen);
                        const zp_layer *l = &L[hot ? 0 : next++ % copies];
                        double t0 = now();
                        layer_products(D, H, l, wtype, ms[i], x, y, y, h1, h3, 1);
                        t[v][i][r] = now() - t0;
                    }
            zp_matmul_set_lanes(-1);
            zp_matmul_set_widen_min_tiles(0);
            printf("\n%s weights, %s (%.1f MB a layer%s): median ms per layer, GFLOP/s, and the "
                   "default's time / the setting's\n%-17s",
                   tname, hot ? "hot" : "cold", bytes * 1e-6, hot ? ", one copy" : ", cycled", "m");
            for (int i = 0; i < N_MS; i++) printf(" %21d", ms[i]);
            printf("\n");
            double med[N_SET][N_MS];
            for (int v = 0; v < N_SET; v++) {
                printf("%-17s", settings[v].name);
                for (int i = 0; i < N_MS; i++) {
                    qsort(t[v][i], (size_t)rounds, sizeof(double), cmp_double);
                    med[v][i] = t[v][i][rounds / 2];
                    printf(" %7.3f %6.1f %5.2fx", med[v][i] * 1e3,
                           2.0 * ms[i] * (double)params / med[v][i] * 1e-9, med[0][i] / med[v][i]);
                }
                printf("\n");
            }
        }
        layers_free(L, copies);
    }
    free(x), free(y), free(h1), free(h3);
    return 0;
}
