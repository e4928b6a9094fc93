/* test_team.c -- the forward pass's thread team changes no bit: a random model large enough for
 * the team (dim 256: every pass of >= 1 row is above ZP_PARALLEL_MIN_WORK) gives, pass for pass,
 * the same logits and captured attention weights with 2, 3 and 4 threads as with 1 (which runs
 * the same stages on one thread without a barrier). Passes of 2 to 40 rows (1 to 20 guided
 * queries over 4 images at different positions). Configurations: LlamaGen (2-D rotary,
 * conditioning embeddings, float32 and bf16 weights, float32 and bf16 K/V cache) and the 1-D
 * rotary families (token-id prefixes of different lengths per stream, grouped-query attention,
 * q/k LayerNorm, with and without swin_norm). Also: passes whose float32 products go to BLAS
 * (a team of one calls sgemm, which brings its own threads; the attention opens a region of its
 * own) agree with the skinny kernel to rounding.
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

enum { D = 256, NL = 3, NH = 4, HD = 64, FF = 688, V = 300, GH = 6, GW = 6, IMAGES = 4 };
enum { MAX_Q = 20, MAX_BUFS = 64 };

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static float uniform(void) { /* [-1, 1) */
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(rng_state >> 40) / (double)(1ull << 23) - 1.0);
}

/* A model's weights: float32 values, and the same rounded to bf16 (used when bf16). */
typedef struct {
    zp_config cfg;
    zp_layer_weights layers[NL];
    zp_weights w;
    void *bufs[MAX_BUFS];
    int nbuf;
} model_w;

static void *keep(model_w *t, void *p) {
    if (!p || t->nbuf == MAX_BUFS) exit(2);
    return t->bufs[t->nbuf++] = p;
}

/* n random weights of scale `scale` (+ offset) as float32, or bf16 bits when bf16. */
static void *matrix(model_w *t, size_t n, float scale, float offset, int bf16) {
    if (!bf16) {
        float *a = keep(t, malloc(n * sizeof *a));
        for (size_t i = 0; i < n; i++) a[i] = offset + scale * uniform();
        return a;
    }
    uint16_t *h = keep(t, malloc(n * sizeof *h));
    for (size_t i = 0; i < n; i++) {
        float v = offset + scale * uniform();
        uint32_t b;
        memcpy(&b, &v, sizeof b);
        h[i] = (uint16_t)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
    }
    return h;
}

static float *vector(model_w *t, size_t n, float scale, float offset) {
    return matrix(t, n, scale, offset, 0); /* norms are float32 in every model */
}

/* family 0: LlamaGen; 1: 1-D rotary + GQA + q/k norm; 2: the same with swin_norm. */
static void model_init(model_w *t, int family, int bf16) {
    memset(t, 0, sizeof *t);
    int nkv = family ? NH / 2 : NH, P = family ? 5 : 1;
    t->cfg = (zp_config){.dim = D,
                         .n_layer = NL,
                         .n_head = NH,
                         .n_kv_head = nkv,
                         .head_dim = HD,
                         .hidden = FF,
                         .vocab = V,
                         .cls_token_num = P,
                         .grid_h = GH,
                         .grid_w = GW,
                         .eor = family ? 1 : 0,
                         .eor_token = family ? 7 : 0,
                         .norm_eps = 1e-5f,
                         .rope_base = 1e4f,
                         .rope_1d = family ? 1 : 0,
                         .qk_norm = family ? 1 : 0,
                         .qk_norm_eps = 1e-5f,
                         .swin_norm = family == 2};
    for (int l = 0; l < NL; l++) {
        zp_layer_weights *L = &t->layers[l];
        L->attention_norm = vector(t, D, 0.2f, 1.f);
        L->wqkv = matrix(t, (size_t)(NH + 2 * nkv) * HD * D, 0.15f, 0.f, bf16);
        L->wo = matrix(t, (size_t)D * NH * HD, 0.1f, 0.f, bf16);
        L->ffn_norm = vector(t, D, 0.2f, 1.f);
        L->w1 = matrix(t, (size_t)FF * D, 0.1f, 0.f, bf16);
        L->w3 = matrix(t, (size_t)FF * D, 0.1f, 0.f, bf16);
        L->w2 = matrix(t, (size_t)D * FF, 0.06f, 0.f, bf16);
        if (family) {
            L->q_norm_w = vector(t, NH * HD, 0.2f, 1.f);
            L->q_norm_b = vector(t, NH * HD, 0.1f, 0.f);
            L->k_norm_w = vector(t, nkv * HD, 0.2f, 1.f);
            L->k_norm_b = vector(t, nkv * HD, 0.1f, 0.f);
        }
    }
    t->w = (zp_weights){.tok_embeddings = matrix(t, (size_t)V * D, 1.f, 0.f, bf16),
                        .layers = t->layers,
                        .norm = vector(t, D, 0.2f, 1.f),
                        .output = matrix(t, (size_t)V * D, 0.3f, 0.f, bf16),
                        .wtype = bf16 ? ZP_WTYPE_BF16 : ZP_WTYPE_F32};
}

static void model_free(model_w *t) {
    for (int i = 0; i < t->nbuf; i++) free(t->bufs[i]);
}

/* A guided cache of IMAGES images: conditioning embeddings (LlamaGen), or token-id prefixes of
 * lengths that differ per image and stream (the families). */
static zp_cache *new_cache(const zp_model *m, int kv_type) {
    const zp_config *c = zp_model_config(m);
    const int P = c->cls_token_num;
    zp_cache *k = NULL;
    if (!c->rope_1d) {
        static float cond[IMAGES * D], unc[IMAGES * D];
        uint64_t saved = rng_state;
        rng_state = 12345; /* the same conditioning whatever model is tested */
        for (int i = 0; i < IMAGES * D; i++) cond[i] = uniform(), unc[i] = 0.5f * uniform();
        rng_state = saved;
        CHECK(zp_cache_new(m, IMAGES, 1, cond, unc, NULL, &k) == ZP_OK, "cache: %s",
              zp_last_error());
    } else {
        int32_t ids_c[IMAGES * 8], ids_u[IMAGES * 8], len_c[IMAGES], len_u[IMAGES];
        for (int im = 0; im < IMAGES; im++) {
            len_c[im] = P - im % 3, len_u[im] = 1 + im % 2;
            for (int p = 0; p < P; p++)
                ids_c[im * P + p] = (11 * p + 3 * im) % V, ids_u[im * P + p] = (5 * p + im) % V;
        }
        CHECK(zp_cache_new_ids(m, IMAGES, 1, ids_c, len_c, ids_u, len_u, &k) == ZP_OK, "cache: %s",
              zp_last_error());
    }
    if (k) CHECK(zp_cache_set_kv_type(k, kv_type) == ZP_OK, "kv type: %s", zp_last_error());
    return k;
}

/* Every pass of a generation-like sequence on a fresh cache: pass p takes 1 + p % 4 of the
 * images (starting at image p % 4) with up to 1 + (3p) % 5 queries each from their own next
 * positions, so rows run from 2 to 40 and images stand at different positions. Writes the
 * logits and captured weights of every pass into lg / at (appended; *n_lg, *n_at floats). */
static void run(const zp_model *m, int kv_type, float *lg, size_t *n_lg, float *at, size_t *n_at) {
    const zp_config *c = zp_model_config(m);
    const int S = c->cls_token_num + c->grid_h * (c->grid_w + c->eor);
    zp_cache *k = new_cache(m, kv_type);
    if (!k) return;
    int pos[IMAGES];
    for (int im = 0; im < IMAGES; im++) pos[im] = c->cls_token_num;
    zp_query q[MAX_Q];
    *n_lg = *n_at = 0;
    for (int pass = 0;; pass++) {
        int nq = 0, left = 0;
        for (int im = 0; im < IMAGES; im++) left += pos[im] < S;
        if (!left) break;
        /* every fifth pass one image with MAX_Q queries: two stream groups with enough
         * attention work that 3 and 4 threads split each group's heads between them */
        int one = pass % 5 == 4;
        int n_im = one ? 1 : 1 + pass % 4, width = one ? MAX_Q : 1 + (3 * pass) % 5;
        for (int j = 0; j < IMAGES && n_im > 0; j++) {
            int im = (pass + j) % IMAGES;
            if (pos[im] >= S) continue;
            n_im--;
            for (int w = 0; w < width && pos[im] < S; w++, pos[im]++)
                q[nq++] = (zp_query){.image = im,
                                     .pos = pos[im],
                                     .token = (pos[im] * 13 + im * 7) % V,
                                     .chain = 0,
                                     .want_logits = 1,
                                     .guided = 1};
        }
        /* weights of the last query, every layer, heads 0 and NH - 1 */
        int32_t cq[2 * NL], cl[2 * NL], ch[2 * NL];
        for (int l = 0; l < NL; l++)
            for (int h = 0; h < 2; h++)
                cq[2 * l + h] = nq - 1, cl[2 * l + h] = l, ch[2 * l + h] = h ? NH - 1 : 0;
        zp_capture cap = {2 * NL, cq, cl, ch, at + *n_at};
        zp_status st = zp_forward(m, k, q, nq, 2.5f, lg + *n_lg, &cap);
        CHECK(st == ZP_OK, "pass %d: %s", pass, zp_last_error());
        *n_lg += (size_t)nq * V;
        *n_at += (size_t)2 * NL * S;
    }
    zp_cache_free(k);
}

/* Logits and weights of all passes with 2, 3, 4 threads == those with 1, bitwise. */
static void compare_threads(const zp_model *m, int kv_type, const char *what) {
    const size_t cap_lg = (size_t)IMAGES * 64 * V, cap_at = (size_t)IMAGES * 64 * 2 * NL * 64;
    float *lg1 = malloc(sizeof(float) * cap_lg), *lgn = malloc(sizeof(float) * cap_lg);
    float *at1 = malloc(sizeof(float) * cap_at), *atn = malloc(sizeof(float) * cap_at);
    size_t n_lg1, n_at1, n_lg, n_at;
    int before = failures;
    zp_set_num_threads(1);
    run(m, kv_type, lg1, &n_lg1, at1, &n_at1);
    int finite = 1;
    for (size_t i = 0; i < n_lg1; i++) finite &= isfinite(lg1[i]) != 0;
    CHECK(finite && n_lg1 > 0, "%s: logits of one thread not finite", what);
    for (int threads = 2; threads <= 4; threads++) {
        zp_set_num_threads(threads);
        run(m, kv_type, lgn, &n_lg, atn, &n_at);
        size_t bad = 0;
        for (size_t i = 0; i < n_lg && i < n_lg1; i++) bad += memcmp(&lg1[i], &lgn[i], 4) != 0;
        CHECK(n_lg == n_lg1 && bad == 0, "%s, %d threads: %zu of %zu logits differ from 1 thread",
              what, threads, bad, n_lg1);
        CHECK(n_at == n_at1 && memcmp(at1, atn, sizeof(float) * n_at) == 0,
              "%s, %d threads: captured attention differs from 1 thread", what, threads);
    }
    zp_set_num_threads(0);
    if (failures == before)
        printf("  %s: 1 = 2 = 3 = 4 threads, %zu logits bitwise\n", what, n_lg1);
    free(lg1), free(lgn), free(at1), free(atn);
}

int main(void) {
    static const char *family_names[3] = {"llamagen", "1-D rotary + q/k norm", "+ swin_norm"};
    for (int family = 0; family < 3; family++)
        for (int bf16 = 0; bf16 <= 1; bf16++) {
            model_w t;
            model_init(&t, family, bf16);
            zp_model *m = NULL;
            CHECK(zp_model_new(&t.cfg, &t.w, &m) == ZP_OK, "model: %s", zp_last_error());
            if (m) {
                char what[96];
                for (int kv = 0; kv <= (family == 0); kv++) {
                    snprintf(what, sizeof what, "%s, %s weights, %s K/V", family_names[family],
                             bf16 ? "bf16" : "f32", kv ? "bf16" : "f32");
                    compare_threads(m, kv ? ZP_WTYPE_BF16 : ZP_WTYPE_F32, what);
                }
            }
            zp_model_free(m);
            model_free(&t);
        }

    /* BLAS passes: float32 products of >= 1 row to sgemm, from a team of one */
    {
        model_w t;
        model_init(&t, 0, 0);
        zp_model *m = NULL;
        CHECK(zp_model_new(&t.cfg, &t.w, &m) == ZP_OK, "model: %s", zp_last_error());
        const size_t cap_lg = (size_t)IMAGES * 64 * V, cap_at = (size_t)IMAGES * 64 * 2 * NL * 64;
        float *a = malloc(sizeof(float) * cap_lg), *b = malloc(sizeof(float) * cap_lg);
        float *at = malloc(sizeof(float) * cap_at);
        size_t na, nb, n_at;
        int saved = zp_get_blas_min_rows();
        zp_set_num_threads(3);
        run(m, ZP_WTYPE_F32, a, &na, at, &n_at);
        zp_set_blas_min_rows(1);
        run(m, ZP_WTYPE_F32, b, &nb, at, &n_at);
        zp_set_blas_min_rows(saved);
        zp_set_num_threads(0);
        double worst = 0, scale = 0;
        for (size_t i = 0; i < na; i++) {
            double d = fabs((double)a[i] - b[i]);
            worst = d > worst ? d : worst;
            scale = fabs(a[i]) > scale ? fabs(a[i]) : scale;
        }
        CHECK(na == nb && na > 0 && worst <= 1e-4 * scale,
              "BLAS pass: max |diff| %.3g of max |logit| %.3g", worst, scale);
        printf("  BLAS products (3 threads): max |diff| from the skinny kernel %.2e "
               "(max |logit| %.2f)\n",
               worst, scale);
        free(a), free(b), free(at);
        zp_model_free(m);
        model_free(&t);
    }
    if (failures) {
        printf("test_team: %d of %ld checks FAILED\n", failures, checks);
        return 1;
    }
    printf("test_team: all %ld checks passed\n", checks);
    return 0;
}
