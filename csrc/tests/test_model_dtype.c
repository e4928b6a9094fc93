/* test_model_dtype.c -- a tiny random model whose matrices are stored as bf16 or f16 gives, pass
 * for pass, the same logits bit for bit as the float32 model holding the exactly widened values
 * (the kernels widen in registers); with 1 and 2 threads; passes of 1 to 12 queries (2 to 24 rows
 * with guidance: the skinny and the wide tile, and the widened scratch blocks), in every
 * instruction set the CPU runs. bf16 on the AMX tiles (own bits): within 1e-5 of the largest
 * logit. Every set: the bf16 / f16 logits are the same bits in passes of one query per image.
 * An unknown weight type is refused.
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

enum { DIM = 48, LAYERS = 2, HEADS = 3, HD = 16, HIDDEN = 136, VOCAB = 40, H = 4, W = 6, N = 2 };

static uint64_t rng_state = 0x2545f4914f6cdd1dull;
static float uniform(void) {
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(rng_state >> 40) / (double)(1ull << 24) - 0.5);
}

/* n random values of scale `scale`, stored as wtype in *bits (2-byte types) and as their exact
 * float32 values in the returned array. */
static float *random_matrix(size_t n, float scale, int wtype, uint16_t **bits) {
    float *f = malloc(sizeof(float) * n);
    *bits = malloc(sizeof(uint16_t) * n);
    if (!f || !*bits) exit(2);
    for (size_t i = 0; i < n; i++) {
        float v = scale * uniform();
        uint16_t h;
        if (wtype == ZP_WTYPE_BF16) {
            uint32_t b;
            memcpy(&b, &v, sizeof b);
            h = (uint16_t)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
        } else { /* f16: |v| < 1, a normal or subnormal binary16 by hand (round toward zero) */
            double a = fabs(v);
            int e = 0;
            double m = a > 0 ? frexp(a, &e) : 0; /* a = m 2^e, m in [0.5, 1) */
            uint32_t sign = v < 0 ? 0x8000u : 0u, mant;
            if (a == 0 || e - 1 < -24)
                h = (uint16_t)sign;
            else if (e - 1 < -14) { /* subnormal: a / 2^-24 */
                mant = (uint32_t)ldexp(a, 24);
                h = (uint16_t)(sign | mant);
            } else {
                mant = (uint32_t)((m * 2 - 1) * 1024);
                h = (uint16_t)(sign | (uint32_t)(e - 1 + 15) << 10 | mant);
            }
        }
        (*bits)[i] = h;
        zp_widen(&f[i], &h, wtype, 1);
    }
    return f;
}

static float *random_vector(size_t n) {
    float *a = malloc(sizeof(float) * n);
    if (!a) exit(2);
    for (size_t i = 0; i < n; i++) a[i] = 1.0f + 0.2f * uniform();
    return a;
}

/* Teacher-forced logits of every position of N guided images: passes of 1 + pass % 12 queries
 * per image (width 0) or of `width` queries; out[(image, position)] rows of VOCAB logits. The
 * class embeddings come from the same random draws on every call. */
static void run(zp_model *m, int width, float *out, const char *what) {
    const int P = 1, S = P + H * W;
    uint64_t saved = rng_state;
    float *cond = malloc(sizeof(float) * N * P * DIM), *unc = malloc(sizeof(float) * N * P * DIM);
    for (int i = 0; i < N * P * DIM; i++) cond[i] = uniform(), unc[i] = uniform();
    rng_state = saved;
    zp_cache *c;
    CHECK(zp_cache_new(m, N, 1, cond, unc, NULL, &c) == ZP_OK, "cache");
    zp_query q[N * 12];
    float *lg = malloc(sizeof(float) * N * 12 * VOCAB);
    int pos = 0, pass = 0;
    while (pos < S) {
        int w = width ? width : 1 + pass % 12; /* queries per image this pass */
        if (pos + w > S) w = S - pos;
        int nq = 0;
        for (int img = 0; img < N; img++)
            for (int j = 0; j < w; j++)
                q[nq++] = (zp_query){.image = img,
                                     .pos = pos + j,
                                     .token = ((pos + j) * 7 + img) % VOCAB,
                                     .chain = 0,
                                     .want_logits = 1,
                                     .guided = 1};
        CHECK(zp_forward(m, c, q, nq, 3.0f, lg, NULL) == ZP_OK, "%s pass %d: %s", what, pass,
              zp_last_error());
        for (int i = 0; i < nq; i++)
            memcpy(out + ((size_t)q[i].image * S + q[i].pos) * VOCAB, lg + (size_t)i * VOCAB,
                   sizeof(float) * VOCAB);
        pos += w;
        pass++;
    }
    zp_cache_free(c);
    free(cond), free(unc), free(lg);
}

/* The float32 model a and the bf16 / f16 model b on the same passes: bitwise equal (exact), or
 * (bf16 on the AMX tiles) within 1e-5 of the largest logit; b's logits the same bits in passes
 * of one query per image as in passes of up to 12. */
static void compare(zp_model *a, zp_model *b, int exact, const char *what) {
    const size_t n = (size_t)N * (1 + H * W) * VOCAB;
    float *la = malloc(sizeof(float) * n), *lb = malloc(sizeof(float) * n),
          *l1 = malloc(sizeof(float) * n);
    run(a, 0, la, what);
    run(b, 0, lb, what);
    run(b, 1, l1, what);
    double worst = 0, scale = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)la[i] - lb[i]);
        worst = d > worst ? d : worst;
        scale = fabs((double)la[i]) > scale ? fabs((double)la[i]) : scale;
    }
    if (exact)
        CHECK(memcmp(la, lb, sizeof(float) * n) == 0, "%s: logits differ from float32 (%.3g)", what,
              worst);
    else
        CHECK(worst <= 1e-5 * scale, "%s: logits %.3g from float32 (largest %.3g)", what, worst,
              scale);
    CHECK(memcmp(lb, l1, sizeof(float) * n) == 0, "%s: passes of 1 and of up to 12 queries differ",
          what);
    free(la), free(lb), free(l1);
}

int main(void) {
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
                     .eor = 0,
                     .norm_eps = 1e-5f,
                     .rope_base = 10000.f};
    const int QKV = 3 * HEADS * HD;
    for (int wtype = ZP_WTYPE_BF16; wtype <= ZP_WTYPE_F16; wtype++) {
        const char *name = wtype == ZP_WTYPE_BF16 ? "bf16" : "f16";
        uint16_t *hb[3 + 5 * LAYERS];
        float *fw[3 + 5 * LAYERS], *norms[1 + 2 * LAYERS];
        zp_layer_weights lf[LAYERS], lh[LAYERS];
        int t = 0;
        fw[t] = random_matrix((size_t)VOCAB * DIM, 1.0f, wtype, &hb[t]), t++;
        fw[t] = random_matrix((size_t)VOCAB * DIM, 0.3f, wtype, &hb[t]), t++;
        norms[0] = random_vector(DIM);
        for (int l = 0; l < LAYERS; l++) {
            size_t sizes[5] = {(size_t)QKV * DIM, (size_t)DIM * DIM, (size_t)HIDDEN * DIM,
                               (size_t)HIDDEN * DIM, (size_t)DIM * HIDDEN};
            int first = t;
            for (int j = 0; j < 5; j++) fw[t] = random_matrix(sizes[j], 0.3f, wtype, &hb[t]), t++;
            norms[1 + 2 * l] = random_vector(DIM), norms[2 + 2 * l] = random_vector(DIM);
            lf[l] =
                (zp_layer_weights){norms[1 + 2 * l], fw[first],     fw[first + 1], norms[2 + 2 * l],
                                   fw[first + 2],    fw[first + 3], fw[first + 4]};
            lh[l] =
                (zp_layer_weights){norms[1 + 2 * l], hb[first],     hb[first + 1], norms[2 + 2 * l],
                                   hb[first + 2],    hb[first + 3], hb[first + 4]};
        }
        zp_weights wf = {fw[0], lf, norms[0], fw[1], ZP_WTYPE_F32};
        zp_weights wh = {hb[0], lh, norms[0], hb[1], wtype};
        zp_model *mf, *mh;
        CHECK(zp_model_new(&cfg, &wf, &mf) == ZP_OK, "float32 model: %s", zp_last_error());
        CHECK(zp_model_new(&cfg, &wh, &mh) == ZP_OK, "%s model: %s", name, zp_last_error());
        /* "amx" (where the CPU has it) runs bf16 on the tiles; "avx512" and the others widen */
        static const char *isas[] = {"amx", "avx512", "avx2", "scalar"};
        for (int k = 0; k < 4; k++) {
            if (zp_matmul_force_isa(isas[k]) != 0) continue;
            for (int threads = 1; threads <= 2; threads++) {
                zp_set_num_threads(threads);
                char what[64];
                snprintf(what, sizeof what, "%s, %s, %d threads", name, isas[k], threads);
                compare(mf, mh, !(k == 0 && wtype == ZP_WTYPE_BF16), what);
            }
        }
        /* on AMX: a bf16 model built under "amx" keeps its matrices in tile order too; its
         * passes give the bits of the in-place model's, in passes of any width */
        if (wtype == ZP_WTYPE_BF16 && zp_matmul_force_isa("amx") == 0) {
            zp_model *mt;
            const size_t n = (size_t)N * (1 + H * W) * VOCAB;
            float *a = malloc(sizeof(float) * n), *b = malloc(sizeof(float) * n);
            CHECK(zp_model_new(&cfg, &wh, &mt) == ZP_OK, "tiles model: %s", zp_last_error());
            zp_set_num_threads(2);
            run(mh, 0, a, "bf16 in place on amx");
            run(mt, 0, b, "bf16 in tile order");
            CHECK(memcmp(a, b, sizeof(float) * n) == 0, "tile order differs from in place");
            run(mt, 1, b, "bf16 in tile order, one query a pass");
            CHECK(memcmp(a, b, sizeof(float) * n) == 0, "tile order: pass widths differ");
            zp_model_free(mt);
            free(a), free(b);
        }
        zp_matmul_force_isa(NULL);
        zp_set_num_threads(0);
        zp_model_free(mf), zp_model_free(mh);
        for (int j = 0; j < t; j++) free(fw[j]), free(hb[j]);
        for (int j = 0; j < 1 + 2 * LAYERS; j++) free(norms[j]);
    }
    /* an unknown weight type is refused */
    {
        float x[1] = {0};
        zp_layer_weights L[LAYERS];
        for (int l = 0; l < LAYERS; l++) L[l] = (zp_layer_weights){x, x, x, x, x, x, x};
        zp_weights bad = {x, L, x, x, 7};
        zp_model *m = NULL;
        CHECK(zp_model_new(&cfg, &bad, &m) == ZP_ERR_ARG && m == NULL, "wtype 7 accepted");
    }
    if (failures) {
        printf("test_model_dtype: %d checks FAILED\n", failures);
        return 1;
    }
    printf("test_model_dtype: bf16 and f16 models = float32 on the widened weights, bitwise (AMX "
           "bf16: within 1e-5); pass widths change no bit\n");
    return 0;
}
