/* test_scheduler.c -- the scheduler's exactness promises on a tiny random model, without Python:
 *
 *  - ZipAR with window W gives exactly the raster tokens (same seed; sampled, guided, with and
 *    without end-of-row tokens), in H*W passes both;
 *  - ZipAR(s) takes W + (H-1)s passes (eager) and 2W + (H-2)s (paper schedule);
 *  - AdaptiveZipAR with threshold 1 equals ZipAR(min_window) token for token;
 *  - a constant proxy (ZP_PROXY_CONST) is the token fed at every proxy query, the full window
 *    with it is still raster, and a proxy_token outside the image tokens is refused;
 *  - an external policy stepping cells in raster order reproduces the raster tokens.
 *
 * Run: make -C csrc/tests   (exit status 0 when every check passes)
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../zipar.h"
#include "check.h"

enum { DIM = 32, LAYERS = 2, HEADS = 2, HD = 16, HIDDEN = 96, VOCAB = 24, H = 4, W = 5, N = 2 };

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
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

typedef struct {
    int32_t tokens[N * H * W];
    int64_t passes;
} run_result;

static zp_model *model;
static float *cond, *uncond;

static run_result run(const zp_policy *pol, float cfg) {
    run_result r = {{0}, -1};
    zp_sampling sp = zp_sampling_default();
    sp.cfg_scale = cfg;
    sp.seed = 12345;
    zp_session *s;
    zp_status st = zp_session_new(model, N, cond, uncond, NULL, NULL, &sp, pol, 0, &s);
    CHECK(st == ZP_OK, "zp_session_new: %s", zp_last_error());
    if (st) return r;
    if (pol->kind == ZP_POLICY_EXTERNAL) {
        for (int i = 0; i < H * W && !st; i++) {
            int32_t cells[N * ZP_CELL_FIELDS];
            for (int b = 0; b < N; b++) {
                cells[3 * b] = b;
                cells[3 * b + 1] = i / W;
                cells[3 * b + 2] = i % W;
            }
            st = zp_session_step(s, cells, N);
        }
    } else {
        st = zp_session_run(s, NULL, NULL);
    }
    CHECK(st == ZP_OK, "generation: %s", zp_last_error());
    CHECK(zp_session_done(s), "session not done");
    memcpy(r.tokens, zp_session_tokens(s), sizeof r.tokens);
    r.passes = zp_session_stats(s)->passes;
    const int64_t *ip = zp_session_image_passes(s);
    for (int b = 0; b < N; b++)
        CHECK(ip[b] <= r.passes && ip[b] > 0, "image passes %lld", (long long)ip[b]);
    zp_session_free(s);
    return r;
}

static int same(const run_result *a, const run_result *b) {
    return memcmp(a->tokens, b->tokens, sizeof a->tokens) == 0;
}

/* ZipAR(window) with the constant proxy `token` (E = 0): every ZP_ROLE_PROXY query of the trace
 * feeds exactly that token, and there are H-1 of them per image for window < W. */
static void check_const_proxy_trace(int window, int token) {
    zp_sampling sp = zp_sampling_default();
    sp.seed = 12345;
    zp_policy z = {
        .kind = ZP_POLICY_ZIPAR, .window = window, .proxy = ZP_PROXY_CONST, .proxy_token = token};
    zp_session *s;
    zp_status st = zp_session_new(model, N, cond, uncond, NULL, NULL, &sp, &z, 1, &s);
    CHECK(st == ZP_OK, "zp_session_new (const proxy): %s", zp_last_error());
    if (st) return;
    CHECK(zp_session_run(s, NULL, NULL) == ZP_OK, "const proxy run: %s", zp_last_error());
    int64_t n;
    const int32_t *tr = zp_session_trace(s, &n);
    int proxies = 0;
    for (int64_t i = 0; i < n; i++) {
        const int32_t *rec = tr + i * ZP_TRACE_FIELDS; /* pass, image, row, col, role, token */
        if (rec[4] != ZP_ROLE_PROXY) continue;
        proxies++;
        CHECK(rec[5] == token && rec[3] == W - 1, "proxy query fed %d at col %d, want %d at %d",
              rec[5], rec[3], token, W - 1);
    }
    CHECK(proxies == N * (H - 1), "%d proxy queries, want %d", proxies, N * (H - 1));
    CHECK(zp_session_stats(s)->proxies == proxies, "stats.proxies %lld != trace %d",
          (long long)zp_session_stats(s)->proxies, proxies);
    zp_session_free(s);
}

/* A constant proxy outside the image tokens [0, VOCAB), or an unknown proxy kind, is refused
 * at session creation (no session, ZP_ERR_ARG and a message). */
static void check_bad_proxy(int proxy, int token) {
    zp_sampling sp = zp_sampling_default();
    zp_policy z = {.kind = ZP_POLICY_ZIPAR, .window = 1, .proxy = proxy, .proxy_token = token};
    zp_session *s = (zp_session *)&z; /* must be reset to NULL */
    zp_status st = zp_session_new(model, N, cond, uncond, NULL, NULL, &sp, &z, 0, &s);
    CHECK(st == ZP_ERR_ARG && s == NULL, "proxy %d token %d: status %d", proxy, token, (int)st);
    CHECK(strstr(zp_last_error(), "proxy") != NULL, "message %s", zp_last_error());
    if (st == ZP_OK) zp_session_free(s);
}

int main(void) {
    zp_layer_weights layers[LAYERS];
    int qkv = (HEADS + 2 * HEADS) * HD;
    for (int l = 0; l < LAYERS; l++)
        layers[l] = (zp_layer_weights){random_array(DIM, 0.2f, 1.f),
                                       random_array((size_t)qkv * DIM, 0.6f, 0.f),
                                       random_array((size_t)DIM * DIM, 0.6f, 0.f),
                                       random_array(DIM, 0.2f, 1.f),
                                       random_array((size_t)HIDDEN * DIM, 0.6f, 0.f),
                                       random_array((size_t)HIDDEN * DIM, 0.6f, 0.f),
                                       random_array((size_t)DIM * HIDDEN, 0.4f, 0.f)};
    zp_weights w = {random_array((size_t)VOCAB * DIM, 2.f, 0.f), layers,
                    random_array(DIM, 0.2f, 1.f), random_array((size_t)VOCAB * DIM, 1.f, 0.f),
                    ZP_WTYPE_F32};
    cond = random_array((size_t)N * DIM, 2.f, 0.f);
    uncond = random_array((size_t)N * DIM, 2.f, 0.f);
    for (int eor = 0; eor <= 1; eor++) {
        zp_config cfg = {.dim = DIM,
                         .n_layer = LAYERS,
                         .n_head = HEADS,
                         .n_kv_head = HEADS,
                         .head_dim = HD,
                         .hidden = HIDDEN,
                         .vocab = VOCAB,
                         .cls_token_num = 1,
                         .grid_h = H,
                         .grid_w = W,
                         .eor = eor,
                         .eor_token = VOCAB - 1,
                         .norm_eps = 1e-5f,
                         .rope_base = 10000.f};
        CHECK(zp_model_new(&cfg, &w, &model) == ZP_OK, "zp_model_new: %s", zp_last_error());
        for (int guided = 0; guided <= 1; guided++) {
            float cfg_scale = guided ? 2.5f : 1.f;
            zp_policy raster = {.kind = ZP_POLICY_RASTER};
            run_result rr = run(&raster, cfg_scale);
            CHECK(rr.passes == H * W, "raster passes %lld", (long long)rr.passes);
            int distinct = 0;
            for (int i = 1; i < N * H * W; i++) distinct += rr.tokens[i] != rr.tokens[0];
            CHECK(distinct > 0, "degenerate model: every token equal");

            zp_policy full = {.kind = ZP_POLICY_ZIPAR, .window = W};
            run_result zw = run(&full, cfg_scale);
            CHECK(same(&rr, &zw), "ZipAR(W) != raster (eor %d, guided %d)", eor, guided);
            CHECK(zw.passes == H * W, "ZipAR(W) passes %lld", (long long)zw.passes);

            zp_policy ext = {.kind = ZP_POLICY_EXTERNAL};
            run_result ex = run(&ext, cfg_scale);
            CHECK(same(&rr, &ex), "external raster steps != raster (eor %d)", eor);

            for (int s = 1; s < W; s++) {
                zp_policy z = {.kind = ZP_POLICY_ZIPAR, .window = s};
                run_result zs = run(&z, cfg_scale);
                CHECK(zs.passes == W + (H - 1) * s, "ZipAR(%d) eager: %lld passes", s,
                      (long long)zs.passes);
                z.schedule = ZP_SCHEDULE_PAPER;
                run_result zp = run(&z, cfg_scale);
                CHECK(zp.passes == 2 * W + (H - 2) * s, "ZipAR(%d) paper: %lld passes", s,
                      (long long)zp.passes);
                zp_policy a = {
                    .kind = ZP_POLICY_ADAPTIVE, .min_window = s, .max_window = W, .threshold = 1.0};
                run_result ad = run(&a, cfg_scale);
                z.schedule = ZP_SCHEDULE_EAGER;
                CHECK(same(&ad, &zs), "Adaptive(%d, threshold 1) != ZipAR(%d)", s, s);
                a.proxy = z.proxy = ZP_PROXY_CONST;
                a.proxy_token = z.proxy_token = 3;
                run_result zc = run(&z, cfg_scale), ac = run(&a, cfg_scale);
                CHECK(same(&ac, &zc), "Adaptive(%d, t 1, const) != ZipAR(%d, const)", s, s);
                CHECK(zc.passes == zs.passes, "const proxy changed the pass count");
            }
            full.proxy = ZP_PROXY_CONST;
            full.proxy_token = VOCAB - 2;
            run_result zwc = run(&full, cfg_scale);
            CHECK(same(&rr, &zwc), "ZipAR(W, const proxy) != raster (eor %d)", eor);
        }
        if (!eor) {
            for (int s = 1; s < W; s++) check_const_proxy_trace(s, 5 + s);
            check_const_proxy_trace(1, 0);
            check_const_proxy_trace(2, VOCAB - 1);
        }
        check_bad_proxy(ZP_PROXY_CONST, -1);
        check_bad_proxy(ZP_PROXY_CONST, VOCAB);
        check_bad_proxy(ZP_PROXY_CONST, 1 << 30);
        check_bad_proxy(3, 0);
        check_bad_proxy(-1, 0);
        zp_model_free(model);
    }
    printf("scheduler: raster == ZipAR(W) == external raster steps; pass counts; adaptive(t=1) "
           "== ZipAR; constant proxies: %s\n",
           failures ? "FAILED" : "ok");
    return failures != 0;
}
