/* bench_pass.c -- where the time of a forward pass goes: zp_forward on a random LlamaGen-shaped
 * model (GPT-B or GPT-L, float32 or bf16 weights, vocab 16384, 16x16 grid, one image under CFG,
 * half the grid already in the cache), with the stage timers of zp_forward on (zp_timers_set).
 *
 * For each number of queries (1: a raster pass, 2 rows under CFG; 6: about a ZipAR-4 pass) it
 * prints ms per pass, the weight stream's GB/s and its fraction of the read bandwidth measured in
 * the same run, then per stage of a layer (summed over the layers) the ms per pass that the
 * threads spent working (mean and slowest thread) and waiting in the barrier after it (mean and
 * longest), and what runs outside the team (setup, threads' start-up, join, output head).
 *
 * Run: make -C csrc/tests bench-pass ARGS="L bf16 1,6 40"   (SHAPE DTYPE QUERIES REPS; threads:
 *      OMP_NUM_THREADS, e.g. OMP_NUM_THREADS=2 taskset -c 0,1 for two; ZP_BENCH_ISA=amx forces a
 *      kernel, ZP_BENCH_WIDE=m the wide tile from m rows)
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../matmul.h"
#include "../zipar.h"

enum { VOCAB = 16384, GRID = 16, MAX_Q = 64 };

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static float uniform(void) { /* [-1, 1) */
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(rng_state >> 40) / (double)(1ull << 23) - 1.0);
}

/* n random weights as float32, or as bf16 bits when bf16; *bytes += their size. */
static void *matrix(size_t n, float scale, int bf16, size_t *bytes) {
    if (bytes) *bytes += n * (bf16 ? 2 : 4);
    if (!bf16) {
        float *a = malloc(n * sizeof *a);
        if (!a) exit(2);
        for (size_t i = 0; i < n; i++) a[i] = scale * uniform();
        return a;
    }
    uint16_t *h = malloc(n * sizeof *h);
    if (!h) exit(2);
    for (size_t i = 0; i < n; i++) {
        float v = scale * uniform();
        uint32_t b;
        memcpy(&b, &v, sizeof b);
        h[i] = (uint16_t)(b >> 16);
    }
    return h;
}

static float *ones(int n) {
    float *a = malloc(sizeof(float) * (size_t)n);
    if (!a) exit(2);
    for (int i = 0; i < n; i++) a[i] = 1.f + 0.1f * uniform();
    return a;
}

static const char *stage_name[ZP_STAGES] = {"norm1", "qkv",     "attention", "wo+res",
                                            "norm2", "gate/up", "w2+res",    "head"};

int main(int argc, char **argv) {
    const char *shape = argc > 1 ? argv[1] : "L", *dtype = argc > 2 ? argv[2] : "bf16";
    const char *qlist = argc > 3 ? argv[3] : "1,6";
    int reps = argc > 4 ? atoi(argv[4]) : 30;
    int dim = shape[0] == 'B' ? 768 : 1024, nl = shape[0] == 'B' ? 12 : 24;
    int nh = dim / 64, bf16 = strcmp(dtype, "bf16") == 0;
    int hidden = (2 * 4 * dim / 3 + 255) / 256 * 256;
    if (reps < 1) reps = 1;

    zp_config cfg = {.dim = dim,
                     .n_layer = nl,
                     .n_head = nh,
                     .n_kv_head = nh,
                     .head_dim = 64,
                     .hidden = hidden,
                     .vocab = VOCAB,
                     .cls_token_num = 1,
                     .grid_h = GRID,
                     .grid_w = GRID,
                     .norm_eps = 1e-5f,
                     .rope_base = 1e4f};
    size_t wbytes = 0;
    zp_layer_weights *layers = calloc((size_t)nl, sizeof *layers);
    for (int l = 0; l < nl; l++) {
        zp_layer_weights *L = &layers[l];
        L->attention_norm = ones(dim);
        L->ffn_norm = ones(dim);
        L->wqkv = matrix((size_t)3 * dim * dim, 0.05f, bf16, &wbytes);
        L->wo = matrix((size_t)dim * dim, 0.05f, bf16, &wbytes);
        L->w1 = matrix((size_t)hidden * dim, 0.05f, bf16, &wbytes);
        L->w3 = matrix((size_t)hidden * dim, 0.05f, bf16, &wbytes);
        L->w2 = matrix((size_t)dim * hidden, 0.03f, bf16, &wbytes);
    }
    zp_weights w = {.tok_embeddings = matrix((size_t)VOCAB * dim, 1.f, bf16, NULL),
                    .layers = layers,
                    .norm = ones(dim),
                    .output = matrix((size_t)VOCAB * dim, 0.05f, bf16, &wbytes),
                    .wtype = bf16 ? ZP_WTYPE_BF16 : ZP_WTYPE_F32};
    /* ZP_BENCH_ISA: a kernel forced before the model is built (so "amx" builds its tile-order copy) */
    if (getenv("ZP_BENCH_ISA") && zp_matmul_force_isa(getenv("ZP_BENCH_ISA")) != 0) {
        fprintf(stderr, "bench_pass: this CPU cannot run kernel %s\n", getenv("ZP_BENCH_ISA"));
        return 1;
    }
    zp_model *m = NULL;
    zp_cache *k = NULL;
    float *cond = ones(dim), *unc = ones(dim);
    if (zp_model_new(&cfg, &w, &m) || zp_cache_new(m, 1, 1, cond, unc, NULL, &k)) {
        fprintf(stderr, "bench_pass: %s\n", zp_last_error());
        return 1;
    }
    if (getenv("ZP_BENCH_WIDE")) zp_matmul_set_wide_min_rows(atoi(getenv("ZP_BENCH_WIDE")));
    int threads = zp_get_num_threads();
    double bw = zp_read_bandwidth((size_t)512 << 20, 5);
    printf("GPT-%s %s, %d threads, %s kernel; weights %.0f MB a pass; read bandwidth %.1f GB/s\n",
           shape, dtype, threads, zp_matmul_isa(), wbytes / 1e6, bw);

    /* half the grid (and the class slot) committed, in passes of 32 queries */
    static zp_query q[MAX_Q];
    static float logits[(size_t)MAX_Q * VOCAB];
    int pos = 0, half = 1 + GRID * GRID / 2;
    while (pos < half) {
        int n = 0;
        for (; n < 32 && pos < half; n++, pos++)
            q[n] =
                (zp_query){.pos = pos, .token = (pos * 7) % VOCAB, .want_logits = 1, .guided = 1};
        if (zp_forward(m, k, q, n, 4.f, logits, NULL)) {
            fprintf(stderr, "bench_pass: %s\n", zp_last_error());
            return 1;
        }
    }

    for (const char *p = qlist; *p;) {
        int nq = atoi(p);
        while (*p && *p != ',') p++;
        if (*p == ',') p++;
        if (nq < 1 || nq > MAX_Q) continue;
        int first = pos;
        zp_timers_set(1);
        double *ms = malloc(sizeof(double) * (size_t)reps);
        for (int r = 0; r < reps; r++) {
            int n = 0;
            for (; n < nq; n++) /* positions cycle over the second half of the grid */
                q[n] = (zp_query){.pos = first + (r * nq + n) % (GRID * GRID + 1 - first),
                                  .token = (r + n) % VOCAB,
                                  .want_logits = 1,
                                  .guided = 1};
            double t0 = now();
            if (zp_forward(m, k, q, n, 4.f, logits, NULL)) {
                fprintf(stderr, "bench_pass: %s\n", zp_last_error());
                return 1;
            }
            ms[r] = 1e3 * (now() - t0);
        }
        static double sec[ZP_TIMER_THREADS][ZP_TIMERS];
        long long passes = zp_timers_read(&sec[0][0]);
        zp_timers_set(0);
        for (int i = 1; i < reps; i++) /* insertion sort for the median */
            for (int j = i; j > 0 && ms[j] < ms[j - 1]; j--) {
                double t = ms[j];
                ms[j] = ms[j - 1];
                ms[j - 1] = t;
            }
        double med = ms[reps / 2], mean = 0;
        for (int r = 0; r < reps; r++) mean += ms[r] / reps;
        printf("\n%d queries (%d rows): median %.2f ms a pass (mean %.2f, min %.2f), weights "
               "%.1f GB/s = %.0f%% of read bandwidth\n",
               nq, 2 * nq, med, mean, ms[0], wbytes / med / 1e6, 100.0 * wbytes / med / 1e6 / bw);
        const int nt = threads < ZP_TIMER_THREADS ? threads : ZP_TIMER_THREADS;
        double scale = 1e3 / (double)(passes > 0 ? passes : 1); /* s -> ms per pass */
        printf("  %-12s %9s %9s %9s %9s   (ms per pass, %lld passes)\n", "stage", "work avg",
               "work max", "wait avg", "wait max", passes);
        double sum_work = 0, sum_wait = 0;
        for (int st = 0; st < ZP_STAGES; st++) {
            double wa = 0, wm = 0, ya = 0, ym = 0;
            for (int t = 0; t < nt; t++) {
                double a = sec[t][st] * scale, b = sec[t][ZP_STAGES + st] * scale;
                wa += a / nt, ya += b / nt;
                wm = a > wm ? a : wm, ym = b > ym ? b : ym;
            }
            sum_work += wa, sum_wait += ya;
            printf("  %-12s %9.3f %9.3f %9.3f %9.3f\n", stage_name[st], wa, wm, ya, ym);
        }
        double enter = 0, enter_max = 0;
        for (int t = 0; t < nt; t++) {
            double e = sec[t][ZP_TIMER_ENTER] * scale;
            enter += e / nt, enter_max = e > enter_max ? e : enter_max;
        }
        printf("  %-12s %9.3f %9s %9.3f\n", "layers", sum_work, "", sum_wait);
        printf("  setup %.3f, enter %.3f (max %.3f), join %.3f, combine %.3f\n",
               sec[0][ZP_TIMER_SETUP] * scale, enter, enter_max, sec[0][ZP_TIMER_JOIN] * scale,
               sec[0][ZP_TIMER_COMBINE] * scale);
        free(ms);
    }
    zp_cache_free(k);
    zp_model_free(m);
    return 0;
}
