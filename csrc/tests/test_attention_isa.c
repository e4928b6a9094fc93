/* test_attention_isa.c -- the attention loops of every instruction set this CPU runs ("scalar",
 * "avx2", "avx512", forced with zp_matmul_force_isa), on a tiny random guided model whose
 * sequence spans two K/V tiles, with grouped-query heads and a head_dim (20) that leaves a
 * remainder after the 8- and 16-element value blocks:
 *
 *  - teacher-forced logits of one pass holding all positions of two images equal, bit for bit,
 *    those of one position per pass and one image per cache (batch composition), with 1 and 2
 *    threads (thread count);
 *  - every instruction set agrees with the first one within 1e-4 of the largest logit (the sets
 *    differ in fused multiply-add rounding only).
 *
 * Run: make -C csrc/tests   (exit status 0 when every check passes)
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../zipar.h"

static int failures = 0;
#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "FAIL %s:%d: ", __FILE__, __LINE__);                                   \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fprintf(stderr, "\n");                                                                 \
            failures++;                                                                            \
        }                                                                                          \
    } while (0)

enum {
    DIM = 64,
    LAYERS = 2,
    HEADS = 4,
    KV_HEADS = 2,
    HD = 20,
    HIDDEN = 96,
    VOCAB = 24,
    H = 6,
    W = 7,
    N = 2, /* images */
    P = 1,
    SEQ = P + H * (W + 1), /* eor = 1: 49 slots, two tiles of 32 */
};

static uint64_t rng_state = 0x853c49e6748fea9bull;
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

static zp_model *model;
static float *cond, *uncond; /* (N, P, DIM) */
static int32_t tokens[N][SEQ];

/* Teacher-forced logits (SEQ - 1 rows per image, predicting positions 1..SEQ-1) of the images
 * [first, first + count) into out[image]: all positions in one pass when one_pass, else one
 * position per pass. */
static void forward(int first, int count, int one_pass, float *out) {
    zp_cache *k;
    zp_status st = zp_cache_new(model, count, 1, cond + (size_t)first * P * DIM,
                                uncond + (size_t)first * P * DIM, NULL, &k);
    CHECK(st == ZP_OK, "zp_cache_new: %s", zp_last_error());
    if (st) return;
    zp_query q[N * SEQ];
    float *lg = malloc(sizeof(float) * N * SEQ * VOCAB);
    if (!lg) exit(2);
    int passes = one_pass ? 1 : SEQ;
    for (int pass = 0; pass < passes && !st; pass++) {
        int nq = 0;
        for (int b = 0; b < count; b++)
            for (int pos = 0; pos < SEQ; pos++)
                if (one_pass || pos == pass)
                    q[nq++] = (zp_query){.image = b,
                                         .pos = pos,
                                         .token = tokens[first + b][pos],
                                         .chain = 0,
                                         .want_logits = pos + 1 < SEQ,
                                         .guided = 1};
        st = zp_forward(model, k, q, nq, 2.5f, lg, NULL);
        CHECK(st == ZP_OK, "zp_forward: %s", zp_last_error());
        int row = 0;
        for (int i = 0; i < nq; i++)
            if (q[i].want_logits)
                memcpy(out + ((size_t)(first + q[i].image) * (SEQ - 1) + q[i].pos) * VOCAB,
                       lg + (size_t)(row++) * VOCAB, sizeof(float) * VOCAB);
    }
    free(lg);
    zp_cache_free(k);
}

int main(void) {
    zp_layer_weights layers[LAYERS];
    int qkv = (HEADS + 2 * KV_HEADS) * HD;
    for (int l = 0; l < LAYERS; l++)
        layers[l] = (zp_layer_weights){random_array(DIM, 0.2f, 1.f),
                                       random_array((size_t)qkv * DIM, 0.6f, 0.f),
                                       random_array((size_t)DIM * HEADS * HD, 0.6f, 0.f),
                                       random_array(DIM, 0.2f, 1.f),
                                       random_array((size_t)HIDDEN * DIM, 0.6f, 0.f),
                                       random_array((size_t)HIDDEN * DIM, 0.6f, 0.f),
                                       random_array((size_t)DIM * HIDDEN, 0.4f, 0.f)};
    zp_weights w = {random_array((size_t)VOCAB * DIM, 2.f, 0.f), layers,
                    random_array(DIM, 0.2f, 1.f), random_array((size_t)VOCAB * DIM, 1.f, 0.f),
                    ZP_WTYPE_F32};
    cond = random_array((size_t)N * P * DIM, 2.f, 0.f);
    uncond = random_array((size_t)N * P * DIM, 2.f, 0.f);
    zp_config cfg = {.dim = DIM,
                     .n_layer = LAYERS,
                     .n_head = HEADS,
                     .n_kv_head = KV_HEADS,
                     .head_dim = HD,
                     .hidden = HIDDEN,
                     .vocab = VOCAB,
                     .cls_token_num = P,
                     .grid_h = H,
                     .grid_w = W,
                     .eor = 1,
                     .eor_token = VOCAB - 1,
                     .norm_eps = 1e-5f,
                     .rope_base = 10000.f};
    CHECK(zp_model_new(&cfg, &w, &model) == ZP_OK, "zp_model_new: %s", zp_last_error());
    for (int b = 0; b < N; b++)
        for (int pos = 0; pos < SEQ; pos++) {
            rng_state += 77;
            int t = (int)((uniform() + 0.5f) * (VOCAB - 1));
            tokens[b][pos] = (pos - P) % (W + 1) == W ? VOCAB - 1 : t;
        }

    const char *isas[] = {"scalar", "avx2", "avx512"};
    size_t n_logits = (size_t)N * (SEQ - 1) * VOCAB, bytes = sizeof(float) * n_logits;
    float *first = malloc(bytes), *one_thread = malloc(bytes), *batch = malloc(bytes),
          *alone = malloc(bytes);
    if (!first || !one_thread || !batch || !alone) exit(2);
    int n_isas = 0;
    for (int s = 0; s < 3; s++) {
        if (zp_matmul_force_isa(isas[s]) != 0) continue;
        for (int threads = 1; threads <= 2; threads++) {
            zp_set_num_threads(threads);
            forward(0, N, 1, batch);
            for (int b = 0; b < N; b++) forward(b, 1, 0, alone);
            CHECK(memcmp(batch, alone, bytes) == 0,
                  "%s, %d threads: one pass of %d images != one position per pass, one image",
                  isas[s], threads, N);
            if (threads == 1) memcpy(one_thread, batch, bytes);
            CHECK(memcmp(one_thread, batch, bytes) == 0, "%s: 2 threads != 1 thread", isas[s]);
        }
        if (n_isas++ == 0) memcpy(first, batch, bytes);
        double worst = 0, scale = 0; /* max |difference| / max |logit| */
        for (size_t i = 0; i < n_logits; i++) {
            double d = fabs((double)batch[i] - first[i]);
            worst = d > worst ? d : worst;
            scale = fabs((double)first[i]) > scale ? fabs((double)first[i]) : scale;
        }
        worst /= scale;
        CHECK(worst <= 1e-4, "%s: %.3g relative from %s", isas[s], worst, isas[0]);
        printf("  %s: exact across batches and threads; max relative difference from the first "
               "set %.2e\n",
               isas[s], worst);
    }
    CHECK(n_isas >= 1, "no instruction set could be forced");
    zp_matmul_force_isa(NULL);
    zp_set_num_threads(0);
    zp_model_free(model);
    free(first);
    free(one_thread);
    free(batch);
    free(alone);
    printf("test_attention_isa: batch- and thread-independent in every instruction set: %s\n",
           failures ? "FAILED" : "ok");
    return failures != 0;
}
