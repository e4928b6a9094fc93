/* test_attention_isa.c -- the attention loops of every instruction set this CPU runs ("scalar",
 * "avx2", "avx512", forced with zp_matmul_force_isa), on tiny random guided models whose
 * sequence spans two K/V tiles, with grouped-query heads and head_dim 20, 24, 32 and 64: every
 * loop order of the value sums (whole rows at 4 vectors of 16, 8 or 4 lanes; the first row over
 * a block; the rows after it) and remainders after the vectors and the 8- and 16-element blocks:
 *
 *  - teacher-forced logits of one pass holding all positions of two images equal, bit for bit,
 *    those of one position per pass and one image per cache (batch composition), with 1 and 2
 *    threads (thread count);
 *  - every instruction set agrees with the first one within 1e-4 of the largest logit (the sets
 *    differ in fused multiply-add rounding only); with the bf16 cache within 3e-3, as such a
 *    difference in a key or value can also move its rounding to bf16 by one unit (up to 2^-7
 *    relative; head_dim 64 measured 2.5e-4 between scalar and avx2);
 *  - all of it with a float32 and with a bf16 K/V cache (zp_cache_set_kv_type), the bf16 one
 *    within 3e-2 of the float32 one and not equal to it; a bf16 cache holds half the bytes;
 *    unknown cache types, and changes after the first pass, are refused.
 *
 * Run: make -C csrc/tests   (exit status 0 when every check passes)
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../zipar.h"
#include "check.h"

enum {
    DIM = 64,
    LAYERS = 2,
    HEADS = 4,
    KV_HEADS = 2,
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
static int head_dim;         /* of `model` */
static float *cond, *uncond; /* (N, P, DIM) */
static int32_t tokens[N][SEQ];

/* Teacher-forced logits (SEQ - 1 rows per image, predicting positions 1..SEQ-1) of the images
 * [first, first + count) into out[image], with a K/V cache of kv_type: all positions in one pass
 * when one_pass, else one position per pass. */
static void forward(int kv_type, int first, int count, int one_pass, float *out) {
    zp_cache *k;
    zp_status st = zp_cache_new(model, count, 1, cond + (size_t)first * P * DIM,
                                uncond + (size_t)first * P * DIM, NULL, &k);
    CHECK(st == ZP_OK, "zp_cache_new: %s", zp_last_error());
    if (st) return;
    st = zp_cache_set_kv_type(k, kv_type);
    CHECK(st == ZP_OK, "zp_cache_set_kv_type: %s", zp_last_error());
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

/* `model` with head_dim hd and fresh random weights (borrowed: *layers and *w keep them). */
static void build_model(int hd, zp_layer_weights layers[LAYERS], zp_weights *w) {
    head_dim = hd;
    int qkv = (HEADS + 2 * KV_HEADS) * head_dim;
    for (int l = 0; l < LAYERS; l++)
        layers[l] = (zp_layer_weights){random_array(DIM, 0.2f, 1.f),
                                       random_array((size_t)qkv * DIM, 0.6f, 0.f),
                                       random_array((size_t)DIM * HEADS * head_dim, 0.6f, 0.f),
                                       random_array(DIM, 0.2f, 1.f),
                                       random_array((size_t)HIDDEN * DIM, 0.6f, 0.f),
                                       random_array((size_t)HIDDEN * DIM, 0.6f, 0.f),
                                       random_array((size_t)DIM * HIDDEN, 0.4f, 0.f),
                                       NULL, /* no q/k norm */
                                       NULL,
                                       NULL,
                                       NULL};
    *w = (zp_weights){random_array((size_t)VOCAB * DIM, 2.f, 0.f), layers,
                      random_array(DIM, 0.2f, 1.f), random_array((size_t)VOCAB * DIM, 1.f, 0.f),
                      ZP_WTYPE_F32};
    zp_config cfg = {.dim = DIM,
                     .n_layer = LAYERS,
                     .n_head = HEADS,
                     .n_kv_head = KV_HEADS,
                     .head_dim = head_dim,
                     .hidden = HIDDEN,
                     .vocab = VOCAB,
                     .cls_token_num = P,
                     .grid_h = H,
                     .grid_w = W,
                     .eor = 1,
                     .eor_token = VOCAB - 1,
                     .norm_eps = 1e-5f,
                     .rope_base = 10000.f};
    CHECK(zp_model_new(&cfg, w, &model) == ZP_OK, "zp_model_new: %s", zp_last_error());
}

static void free_model(zp_layer_weights layers[LAYERS], zp_weights *w) {
    zp_model_free(model);
    model = NULL;
    for (int l = 0; l < LAYERS; l++) {
        free((void *)layers[l].attention_norm), free((void *)layers[l].wqkv),
            free((void *)layers[l].wo);
        free((void *)layers[l].ffn_norm), free((void *)layers[l].w1), free((void *)layers[l].w3),
            free((void *)layers[l].w2);
    }
    free((void *)w->tok_embeddings), free((void *)w->norm), free((void *)w->output);
}

int main(void) {
    cond = random_array((size_t)N * P * DIM, 2.f, 0.f);
    uncond = random_array((size_t)N * P * DIM, 2.f, 0.f);
    for (int b = 0; b < N; b++)
        for (int pos = 0; pos < SEQ; pos++) {
            rng_state += 77;
            int t = (int)((uniform() + 0.5f) * (VOCAB - 1));
            tokens[b][pos] = (pos - P) % (W + 1) == W ? VOCAB - 1 : t;
        }

    const char *isas[] = {"scalar", "avx2", "avx512"};
    const int kv_types[] = {ZP_WTYPE_F32, ZP_WTYPE_BF16};
    size_t n_logits = (size_t)N * (SEQ - 1) * VOCAB, bytes = sizeof(float) * n_logits;
    float *first[2], *one_thread = malloc(bytes), *batch = malloc(bytes), *alone = malloc(bytes);
    first[0] = malloc(bytes);
    first[1] = malloc(bytes);
    if (!first[0] || !first[1] || !one_thread || !batch || !alone) exit(2);
    zp_layer_weights layers[LAYERS];
    zp_weights w;
    static const int head_dims[] = {24, 32, 64, 20}; /* the last one stays for the cache checks */
    for (int hi = 0; hi < 4; hi++) {
        if (hi) free_model(layers, &w);
        build_model(head_dims[hi], layers, &w);
        int n_isas = 0;
        for (int s = 0; s < 3; s++) {
            if (zp_matmul_force_isa(isas[s]) != 0) continue;
            for (int t = 0; t < 2; t++) {
                const char *kv = t ? "bf16" : "f32";
                for (int threads = 1; threads <= 2; threads++) {
                    zp_set_num_threads(threads);
                    forward(kv_types[t], 0, N, 1, batch);
                    for (int b = 0; b < N; b++) forward(kv_types[t], b, 1, 0, alone);
                    CHECK(memcmp(batch, alone, bytes) == 0,
                          "%s, %s cache, %d threads: one pass of %d images != one position per "
                          "pass, one image",
                          isas[s], kv, threads, N);
                    if (threads == 1) memcpy(one_thread, batch, bytes);
                    CHECK(memcmp(one_thread, batch, bytes) == 0, "%s, %s cache: 2 threads != 1",
                          isas[s], kv);
                }
                if (n_isas == 0) memcpy(first[t], batch, bytes);
                /* max |difference| / max |logit|: from the first set's logits with the same cache,
                 * and (bf16) from the first set's float32 cache */
                double worst = 0, to_f32 = 0, scale = 0;
                for (size_t i = 0; i < n_logits; i++) {
                    double d = fabs((double)batch[i] - first[t][i]),
                           e = fabs((double)batch[i] - first[0][i]);
                    worst = d > worst ? d : worst;
                    to_f32 = e > to_f32 ? e : to_f32;
                    scale = fabs((double)first[t][i]) > scale ? fabs((double)first[t][i]) : scale;
                }
                worst /= scale;
                to_f32 /= scale;
                CHECK(worst <= (t ? 3e-3 : 1e-4), "%s, %s cache: %.3g relative from %s", isas[s],
                      kv, worst, isas[0]);
                /* bf16 keys and values: a relative rounding error of 2^-9 per element */
                CHECK(t == 0 || (to_f32 > 0 && to_f32 <= 3e-2),
                      "%s: bf16 cache %.3g relative from the float32 cache", isas[s], to_f32);
                printf(
                    "  head_dim %d, %s, %s cache: exact across batches and threads; max relative "
                    "difference from the first set %.2e, from its float32 cache %.2e\n",
                    head_dim, isas[s], kv, worst, to_f32);
            }
            n_isas++;
        }
        CHECK(n_isas >= 1, "no instruction set could be forced");
    }
    zp_matmul_force_isa(NULL);
    zp_set_num_threads(0);

    /* the KV cache type: bytes halve; unknown types and changes after a pass are refused */
    zp_cache *k;
    CHECK(zp_cache_new(model, 1, 1, cond, uncond, NULL, &k) == ZP_OK, "%s", zp_last_error());
    size_t f32_bytes = zp_cache_kv_bytes(k);
    CHECK(f32_bytes == (size_t)2 * LAYERS * 2 * 64 * KV_HEADS * head_dim * 4,
          "float32 cache of %zu bytes", f32_bytes);
    CHECK(zp_cache_kv_type(k) == ZP_WTYPE_F32, "a new cache is not float32");
    CHECK(zp_cache_set_kv_type(k, ZP_WTYPE_F16) == ZP_ERR_ARG, "f16 cache accepted");
    CHECK(zp_cache_set_kv_type(k, 7) == ZP_ERR_ARG, "cache type 7 accepted");
    CHECK(zp_cache_set_kv_type(k, ZP_WTYPE_BF16) == ZP_OK, "%s", zp_last_error());
    CHECK(zp_cache_kv_type(k) == ZP_WTYPE_BF16 && 2 * zp_cache_kv_bytes(k) == f32_bytes,
          "bf16 cache of %zu bytes", zp_cache_kv_bytes(k));
    zp_query q0 = {.image = 0, .pos = 0, .token = 0, .chain = 0, .want_logits = 0, .guided = 1};
    CHECK(zp_forward(model, k, &q0, 1, 2.5f, NULL, NULL) == ZP_OK, "%s", zp_last_error());
    CHECK(zp_cache_set_kv_type(k, ZP_WTYPE_BF16) == ZP_OK, "setting the same type refused");
    CHECK(zp_cache_set_kv_type(k, ZP_WTYPE_F32) == ZP_ERR_STATE, "type changed after a pass");
    CHECK(zp_cache_kv_type(k) == ZP_WTYPE_BF16, "type lost");
    zp_cache_free(k);
    free_model(layers, &w);
    free(cond), free(uncond);
    free(first[0]);
    free(first[1]);
    free(one_thread);
    free(batch);
    free(alone);
    printf("test_attention_isa: batch- and thread-independent in every instruction set: %s\n",
           failures ? "FAILED" : "ok");
    return failures != 0;
}
