/* test_families.c -- the model-family paths of the core (families.md) against a naive double
 * precision forward written here from the spec: 1-D rotate_half rotary with theta, grouped-query
 * attention, Chameleon's per-head q/k LayerNorm and its swin_norm placement, token-id prefixes of
 * different lengths per CFG stream (each stream at its own positions), the image-token range
 * applied before sampling, and the ZipAR schedule on such a model (E = 1: every window runs in
 * W + (H-1)s passes, ZipAR(W) gives the raster tokens). Bad arguments are refused with ZP_ERR_ARG.
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

static uint64_t rng_state = 0x2545f4914f6cdd1dull;

static float uniform(void) { /* [-1, 1) */
    rng_state = rng_state * 6364136223846793005ull + 1442695040888963407ull;
    return (float)((double)(rng_state >> 40) / (double)(1ull << 23) - 1.0);
}

static float *randn(size_t n, float scale, float offset) {
    float *a = malloc(n * sizeof *a);
    for (size_t i = 0; i < n; i++) a[i] = offset + scale * uniform();
    return a;
}

/* ---------------------------------------------------------------- a tiny model */
enum {
    D = 32,
    NL = 2,
    NH = 4,
    NKV = 2,
    HD = 8,
    FF = 48,
    V = 40,
    VIS_LO = 8,
    VIS_HI = 24,
    EOL = 5,
    GH = 4,
    GW = 5
};

typedef struct {
    zp_config cfg;
    zp_layer_weights layers[NL];
    zp_weights w;
    float *bufs[64];
    int nbuf;
} tiny;

static float *keep(tiny *t, float *a) {
    return t->bufs[t->nbuf++] = a;
}

static void tiny_init(tiny *t, int qk_norm, int swin, int P) {
    memset(t, 0, sizeof *t);
    t->cfg = (zp_config){.dim = D,
                         .n_layer = NL,
                         .n_head = NH,
                         .n_kv_head = NKV,
                         .head_dim = HD,
                         .hidden = FF,
                         .vocab = V,
                         .cls_token_num = P,
                         .grid_h = GH,
                         .grid_w = GW,
                         .eor = 1,
                         .eor_token = EOL,
                         .norm_eps = 1e-5f,
                         .rope_base = 1e4f,
                         .rope_1d = 1,
                         .qk_norm = qk_norm,
                         .qk_norm_eps = 1e-5f,
                         .swin_norm = swin,
                         .vis_lo = VIS_LO,
                         .vis_hi = VIS_HI};
    for (int l = 0; l < NL; l++) {
        zp_layer_weights *L = &t->layers[l];
        L->attention_norm = keep(t, randn(D, 0.2f, 1.f));
        L->wqkv = keep(t, randn((size_t)(NH + 2 * NKV) * HD * D, 0.5f, 0.f));
        L->wo = keep(t, randn((size_t)D * NH * HD, 0.3f, 0.f));
        L->ffn_norm = keep(t, randn(D, 0.2f, 1.f));
        L->w1 = keep(t, randn((size_t)FF * D, 0.3f, 0.f));
        L->w3 = keep(t, randn((size_t)FF * D, 0.3f, 0.f));
        L->w2 = keep(t, randn((size_t)D * FF, 0.3f, 0.f));
        if (qk_norm) {
            L->q_norm_w = keep(t, randn(NH * HD, 0.2f, 1.f));
            L->q_norm_b = keep(t, randn(NH * HD, 0.1f, 0.f));
            L->k_norm_w = keep(t, randn(NKV * HD, 0.2f, 1.f));
            L->k_norm_b = keep(t, randn(NKV * HD, 0.1f, 0.f));
        }
    }
    t->w = (zp_weights){.tok_embeddings = keep(t, randn((size_t)V * D, 1.f, 0.f)),
                        .layers = t->layers,
                        .norm = keep(t, randn(D, 0.2f, 1.f)),
                        .output = keep(t, randn((size_t)V * D, 0.5f, 0.f))};
}

static void tiny_free(tiny *t) {
    for (int i = 0; i < t->nbuf; i++) free(t->bufs[i]);
}

/* ---------------------------------------------------------------- naive forward (families.md 1) */
static void rms(double *out, const double *x, const float *w) {
    double ss = 0;
    for (int i = 0; i < D; i++) ss += x[i] * x[i];
    double sc = 1.0 / sqrt(ss / D + 1e-5);
    for (int i = 0; i < D; i++) out[i] = x[i] * sc * w[i];
}

static void lin(double *y, const double *x, const float *w, int n_out, int n_in) {
    for (int o = 0; o < n_out; o++) {
        double s = 0;
        for (int i = 0; i < n_in; i++) s += x[i] * w[(size_t)o * n_in + i];
        y[o] = s;
    }
}

static void ln_head(double *x, const float *w, const float *b) {
    double m = 0, v = 0;
    for (int i = 0; i < HD; i++) m += x[i];
    m /= HD;
    for (int i = 0; i < HD; i++) v += (x[i] - m) * (x[i] - m);
    double inv = 1.0 / sqrt(v / HD + 1e-5);
    for (int i = 0; i < HD; i++) x[i] = (x[i] - m) * inv * w[i] + b[i];
}

static void rot(double *x, int pos, float theta) {
    for (int j = 0; j < HD / 2; j++) {
        float inv = 1.0f / (float)pow(theta, (double)((float)(2 * j) / (float)HD));
        double a = (float)pos * inv, c = cos(a), s = sin(a);
        double x0 = x[j], x1 = x[j + HD / 2];
        x[j] = x0 * c - x1 * s;
        x[j + HD / 2] = x1 * c + x0 * s;
    }
}

/* logits (L, V) of a token sequence at positions 0..L-1 */
static void naive_logits(const tiny *t, const int *ids, int L, double *logits) {
    const zp_config *c = &t->cfg;
    double *x = calloc((size_t)L * D, sizeof *x), *xn = malloc(sizeof(double) * L * D);
    double *qkv = malloc(sizeof(double) * L * (NH + 2 * NKV) * HD);
    double *att = malloc(sizeof(double) * L * NH * HD), *tmp = malloc(sizeof(double) * L * FF * 2);
    double *o = malloc(sizeof(double) * D), *sc = malloc(sizeof(double) * L);
    for (int p = 0; p < L; p++)
        for (int i = 0; i < D; i++)
            x[p * D + i] = ((const float *)t->w.tok_embeddings)[(size_t)ids[p] * D + i];
    const int QKV = (NH + 2 * NKV) * HD;
    for (int l = 0; l < NL; l++) {
        const zp_layer_weights *W = &t->layers[l];
        for (int p = 0; p < L; p++) {
            if (c->swin_norm)
                memcpy(xn + p * D, x + p * D, sizeof(double) * D);
            else
                rms(xn + p * D, x + p * D, W->attention_norm);
            double *r = qkv + (size_t)p * QKV;
            lin(r, xn + p * D, W->wqkv, QKV, D);
            for (int h = 0; h < NH + NKV; h++) {
                if (c->qk_norm)
                    ln_head(r + h * HD, h < NH ? W->q_norm_w + h * HD : W->k_norm_w + (h - NH) * HD,
                            h < NH ? W->q_norm_b + h * HD : W->k_norm_b + (h - NH) * HD);
                rot(r + h * HD, p, c->rope_base);
            }
        }
        for (int p = 0; p < L; p++)
            for (int h = 0; h < NH; h++) {
                int g = h / (NH / NKV);
                double mx = -1e300, tot = 0;
                for (int s = 0; s <= p; s++) {
                    double d = 0;
                    for (int i = 0; i < HD; i++)
                        d += qkv[(size_t)p * QKV + h * HD + i] *
                             qkv[(size_t)s * QKV + NH * HD + g * HD + i];
                    sc[s] = d / sqrt((double)HD);
                    if (sc[s] > mx) mx = sc[s];
                }
                for (int s = 0; s <= p; s++) tot += sc[s] = exp(sc[s] - mx);
                for (int i = 0; i < HD; i++) {
                    double a = 0;
                    for (int s = 0; s <= p; s++)
                        a += sc[s] / tot * qkv[(size_t)s * QKV + (NH + NKV) * HD + g * HD + i];
                    att[(size_t)p * NH * HD + h * HD + i] = a;
                }
            }
        for (int p = 0; p < L; p++) {
            lin(o, att + (size_t)p * NH * HD, W->wo, D, NH * HD);
            if (c->swin_norm) rms(o, o, W->attention_norm);
            for (int i = 0; i < D; i++) x[p * D + i] += o[i];
            if (c->swin_norm)
                memcpy(xn + p * D, x + p * D, sizeof(double) * D);
            else
                rms(xn + p * D, x + p * D, W->ffn_norm);
            lin(tmp, xn + p * D, W->w1, FF, D);
            lin(tmp + FF, xn + p * D, W->w3, FF, D);
            for (int i = 0; i < FF; i++) tmp[i] = tmp[i] / (1 + exp(-tmp[i])) * tmp[FF + i];
            lin(o, tmp, W->w2, D, FF);
            if (c->swin_norm) rms(o, o, W->ffn_norm);
            for (int i = 0; i < D; i++) x[p * D + i] += o[i];
        }
    }
    for (int p = 0; p < L; p++) {
        rms(xn + p * D, x + p * D, t->w.norm);
        lin(logits + (size_t)p * V, xn + p * D, t->w.output, V, D);
    }
    free(x);
    free(xn);
    free(qkv);
    free(att);
    free(tmp);
    free(o);
    free(sc);
}

/* ---------------------------------------------------------------- helpers */
static int argmax_range(const double *a, int lo, int hi) {
    int b = lo;
    for (int v = lo + 1; v < hi; v++)
        if (a[v] > a[b]) b = v;
    return b;
}

/* right-aligned ids row of width P */
static void right_align(int32_t *row, int P, const int *ids, int n) {
    for (int p = 0; p < P; p++) row[p] = p < P - n ? 0 : ids[p - (P - n)];
}

/* The grid part of a sequence: cells then EOL per row (E = 1). */
static int grid_seq(int *out, const int32_t *grid) {
    int n = 0;
    for (int r = 0; r < GH; r++) {
        for (int c = 0; c < GW; c++) out[n++] = grid[r * GW + c];
        out[n++] = EOL;
    }
    return n;
}

/* ---------------------------------------------------------------- tests */
static const int PROMPT[] = {1, 30, 31, 2, 33, 3, 4}; /* 7 ids */
static const int NEG[] = {1, 35, 3, 4};               /* 4 ids: shorter than the prompt */

/* Teacher-forced logits of one committed pass (cond only) == naive, for each architecture. */
static void test_teacher_forced(int qk_norm, int swin) {
    tiny t;
    const int np = 7, P = np;
    tiny_init(&t, qk_norm, swin, P);
    zp_model *m;
    zp_status st = zp_model_new(&t.cfg, &t.w, &m);
    CHECK(st == ZP_OK, "model_new: %s", zp_last_error());
    if (st) return;
    int32_t grid[GH * GW];
    for (int i = 0; i < GH * GW; i++)
        grid[i] = VIS_LO + (int)((uniform() + 1) * 8) % (VIS_HI - VIS_LO);
    int seq[64], L = np;
    memcpy(seq, PROMPT, sizeof PROMPT);
    L += grid_seq(seq + L, grid);
    double *ref = malloc(sizeof(double) * L * V);
    naive_logits(&t, seq, L, ref);

    int32_t ids[P], len = np;
    right_align(ids, P, PROMPT, np);
    zp_cache *k;
    st = zp_cache_new_ids(m, 1, 0, ids, &len, NULL, NULL, &k);
    CHECK(st == ZP_OK, "cache_new_ids: %s", zp_last_error());
    zp_query q[64];
    for (int p = 0; p < L; p++)
        q[p] = (zp_query){.image = 0, .pos = p, .token = seq[p], .want_logits = 1};
    float *lg = malloc(sizeof(float) * L * V);
    st = zp_forward(m, k, q, L, 1.f, lg, NULL);
    CHECK(st == ZP_OK, "forward: %s", zp_last_error());
    double worst = 0;
    for (int i = 0; i < L * V; i++) worst = fmax(worst, fabs(lg[i] - ref[i]));
    CHECK(worst < 1e-4, "qk_norm %d swin %d: one pass vs naive max |diff| %.3g", qk_norm, swin,
          worst);

    /* the same sequence one query per pass (a KV-cached loop) gives the same logits, bitwise */
    zp_cache *k2;
    zp_cache_new_ids(m, 1, 0, ids, &len, NULL, NULL, &k2);
    float *lg2 = malloc(sizeof(float) * V);
    int same = 1;
    for (int p = 0; p < L; p++) {
        st = zp_forward(m, k2, &q[p], 1, 1.f, lg2, NULL);
        same &= st == ZP_OK && memcmp(lg2, lg + (size_t)p * V, sizeof(float) * V) == 0;
    }
    CHECK(same, "qk_norm %d swin %d: step-by-step logits differ from the one-pass logits", qk_norm,
          swin);
    printf("  teacher forced qk_norm=%d swin=%d: max |diff| vs naive %.2e\n", qk_norm, swin, worst);
    free(lg);
    free(lg2);
    free(ref);
    zp_cache_free(k);
    zp_cache_free(k2);
    zp_model_free(m);
    tiny_free(&t);
}

/* Guided greedy raster with prefixes of different lengths: each stream at its own positions.
 * Reference: naive logits of [prompt + generated] and [neg + generated], mixed u + (c - u) s,
 * argmax over the image tokens; EOL inserted after every row. Then ZipAR(s) for every s gives
 * the same tokens in W + (H-1)s passes (eager). */
static void test_guided_prefixes(int neg_first) {
    tiny t;
    const int *pc = neg_first ? NEG : PROMPT, *pu = neg_first ? PROMPT : NEG;
    int nc = neg_first ? 4 : 7, nu = neg_first ? 7 : 4, P = 7;
    tiny_init(&t, 1, 0, P);
    zp_model *m;
    if (zp_model_new(&t.cfg, &t.w, &m)) {
        CHECK(0, "model_new: %s", zp_last_error());
        return;
    }
    const float cfg = 3.0f;
    /* reference tokens, one at a time */
    int32_t ref[GH * GW];
    int sc[64], su[64], lc = nc, lu = nu;
    memcpy(sc, pc, sizeof(int) * nc);
    memcpy(su, pu, sizeof(int) * nu);
    double *a = malloc(sizeof(double) * 64 * V), *b = malloc(sizeof(double) * 64 * V);
    double mix[V];
    for (int r = 0; r < GH; r++)
        for (int c = 0; c < GW; c++) {
            naive_logits(&t, sc, lc, a);
            naive_logits(&t, su, lu, b);
            for (int v = 0; v < V; v++) {
                double cc = a[(size_t)(lc - 1) * V + v], uu = b[(size_t)(lu - 1) * V + v];
                mix[v] = uu + (cc - uu) * cfg;
            }
            int x = argmax_range(mix, VIS_LO, VIS_HI);
            ref[r * GW + c] = x;
            sc[lc++] = x;
            su[lu++] = x;
            if (c == GW - 1) {
                sc[lc++] = EOL;
                su[lu++] = EOL;
            }
        }
    int32_t ic[P], iu[P], lenc = nc, lenu = nu;
    right_align(ic, P, pc, nc);
    right_align(iu, P, pu, nu);
    zp_sampling sp = zp_sampling_default();
    sp.cfg_scale = cfg;
    sp.temperature = 0.f;
    for (int s = 0; s <= GW; s++) { /* s = 0: raster policy */
        zp_policy pol = {.kind = s ? ZP_POLICY_ZIPAR : ZP_POLICY_RASTER, .window = s};
        zp_session *ss;
        zp_status st = zp_session_new_ids(m, 1, ic, &lenc, iu, &lenu, NULL, &sp, &pol, 0, &ss);
        CHECK(st == ZP_OK, "session_new_ids: %s", zp_last_error());
        if (st) continue;
        st = zp_session_run(ss, NULL, NULL);
        CHECK(st == ZP_OK, "run: %s", zp_last_error());
        const int32_t *tk = zp_session_tokens(ss);
        int same = 1, inside = 1;
        for (int i = 0; i < GH * GW; i++) {
            same &= tk[i] == ref[i];
            inside &= tk[i] >= VIS_LO && tk[i] < VIS_HI;
        }
        /* a window below W decodes with less context: only raster and ZipAR(W) are raster */
        if (s == 0 || s == GW)
            CHECK(same, "neg_first %d window %d: tokens differ from the naive guided greedy decode",
                  neg_first, s);
        CHECK(inside, "window %d: a token outside the image tokens", s);
        int64_t want = s ? GW + (GH - 1) * s : GH * GW;
        CHECK(zp_session_stats(ss)->passes == want, "window %d: %lld passes, want %lld", s,
              (long long)zp_session_stats(ss)->passes, (long long)want);
        zp_session_free(ss);
    }
    /* sampling (temperature 1, top-k 3) never leaves the image tokens */
    sp.temperature = 1.f;
    sp.top_k = 3;
    zp_policy pol = {.kind = ZP_POLICY_ZIPAR, .window = 2};
    zp_session *ss;
    if (zp_session_new_ids(m, 1, ic, &lenc, iu, &lenu, NULL, &sp, &pol, 0, &ss) == ZP_OK) {
        CHECK(zp_session_run(ss, NULL, NULL) == ZP_OK, "sampled run: %s", zp_last_error());
        int inside = 1;
        for (int i = 0; i < GH * GW; i++)
            inside &= zp_session_tokens(ss)[i] >= VIS_LO && zp_session_tokens(ss)[i] < VIS_HI;
        CHECK(inside, "a sampled token outside the image tokens");
        zp_session_free(ss);
    }
    printf("  guided greedy, prompt %d ids / negative %d ids: raster and ZipAR(%d) == naive\n", nc,
           nu, GW);
    free(a);
    free(b);
    zp_model_free(m);
    tiny_free(&t);
}

/* The unconditional stream sits at its own positions: with cfg_scale 0 the guided logits are the
 * unconditional stream's, which must match a model whose prefix is the negative prompt alone
 * (P = 4) although the prompt is 4000 ids long (at slot ~4000 the float32 rotary angles differ
 * enough from those at position ~4 to be seen: 2e-5 against 1e-6 of summation order). */
static void test_own_positions(void) {
    enum { NP = 4000, NN = 4 };
    tiny ta;
    tiny_init(&ta, 1, 0, NP);
    zp_config cb = ta.cfg;
    cb.cls_token_num = NN;
    zp_model *ma, *mb;
    if (zp_model_new(&ta.cfg, &ta.w, &ma) || zp_model_new(&cb, &ta.w, &mb)) {
        CHECK(0, "model_new: %s", zp_last_error());
        return;
    }
    int32_t ic[NP], iu[NP], ib[NN], lc = NP, lu = NN;
    for (int p = 0; p < NP; p++) ic[p] = (int32_t)((uniform() + 1) * 20) % V;
    right_align(iu, NP, NEG, NN);
    right_align(ib, NN, NEG, NN);
    zp_cache *ka, *kb;
    zp_cache_new_ids(ma, 1, 1, ic, &lc, iu, &lu, &ka);
    zp_cache_new_ids(mb, 1, 0, ib, &lu, NULL, NULL, &kb);
    int L = GH * (GW + 1);
    zp_query qa[NP + 64], qb[NN + 64];
    int32_t grid[GH * GW];
    int g[64];
    for (int i = 0; i < GH * GW; i++) grid[i] = VIS_LO + i % (VIS_HI - VIS_LO);
    grid_seq(g, grid);
    for (int p = 0; p < NP; p++)
        qa[p] = (zp_query){.pos = p, .want_logits = p == NP - 1, .guided = 1};
    for (int p = 0; p < NN; p++) qb[p] = (zp_query){.pos = p, .want_logits = p == NN - 1};
    for (int i = 0; i < L; i++) {
        qa[NP + i] = (zp_query){.pos = NP + i, .token = g[i], .want_logits = 1, .guided = 1};
        qb[NN + i] = (zp_query){.pos = NN + i, .token = g[i], .want_logits = 1};
    }
    float *la = malloc(sizeof(float) * (L + 1) * V), *lb = malloc(sizeof(float) * (L + 1) * V);
    CHECK(zp_forward(ma, ka, qa, NP + L, 0.f, la, NULL) == ZP_OK, "%s", zp_last_error());
    CHECK(zp_forward(mb, kb, qb, NN + L, 1.f, lb, NULL) == ZP_OK, "%s", zp_last_error());
    double worst = 0;
    for (int i = 0; i < (L + 1) * V; i++) worst = fmax(worst, fabs(la[i] - lb[i]));
    CHECK(worst < 5e-6, "unconditional stream vs its own model: max |diff| %.3g", worst);
    printf("  unconditional stream (4 ids beside 4000) vs a model of its own: max |diff| %.2e\n",
           worst);
    free(la);
    free(lb);
    zp_cache_free(ka);
    zp_cache_free(kb);
    zp_model_free(ma);
    zp_model_free(mb);
    tiny_free(&ta);
}

static void test_bad_input(void) {
    tiny t;
    tiny_init(&t, 1, 0, 7);
    zp_model *m = NULL;
    zp_config c = t.cfg;
    c.head_dim = 7;
    CHECK(zp_model_new(&c, &t.w, &m) == ZP_ERR_ARG, "odd head_dim accepted");
    c = t.cfg;
    c.vis_lo = 30, c.vis_hi = 20;
    CHECK(zp_model_new(&c, &t.w, &m) == ZP_ERR_ARG, "empty image-token range accepted");
    c.vis_lo = 0, c.vis_hi = V + 1;
    CHECK(zp_model_new(&c, &t.w, &m) == ZP_ERR_ARG, "image-token range beyond vocab accepted");
    zp_layer_weights L[NL];
    memcpy(L, t.layers, sizeof L);
    L[1].k_norm_b = NULL;
    zp_weights w = t.w;
    w.layers = L;
    CHECK(zp_model_new(&t.cfg, &w, &m) == ZP_ERR_ARG, "missing k_norm bias accepted");
    CHECK(zp_model_new(&t.cfg, &t.w, &m) == ZP_OK, "model_new: %s", zp_last_error());
    int32_t ids[7] = {0, 0, 0, 1, 2, 3, V}, len = 4, len0 = 0, len8 = 8;
    zp_cache *k = NULL;
    CHECK(zp_cache_new_ids(m, 1, 0, ids, &len, NULL, NULL, &k) == ZP_ERR_ARG && !k,
          "prefix id outside the vocabulary accepted");
    ids[6] = 4;
    CHECK(zp_cache_new_ids(m, 1, 0, ids, &len0, NULL, NULL, &k) == ZP_ERR_ARG, "empty prefix");
    CHECK(zp_cache_new_ids(m, 1, 0, ids, &len8, NULL, NULL, &k) == ZP_ERR_ARG, "prefix > P");
    CHECK(zp_cache_new_ids(m, 1, 1, ids, &len, NULL, NULL, &k) == ZP_ERR_ARG,
          "guided cache without an unconditional prefix");
    ids[0] = -5; /* before the prefix: ignored */
    CHECK(zp_cache_new_ids(m, 1, 0, ids, &len, NULL, NULL, &k) == ZP_OK, "%s", zp_last_error());
    zp_cache_free(k);
    zp_model_free(m);
    tiny_free(&t);
}

int main(void) {
    for (int qk = 0; qk < 2; qk++)
        for (int swin = 0; swin < 2; swin++) test_teacher_forced(qk, swin);
    test_guided_prefixes(0);
    test_guided_prefixes(1);
    test_own_positions();
    test_bad_input();
    if (failures) {
        fprintf(stderr, "test_families: %d of %ld checks FAILED\n", failures, checks);
        return 1;
    }
    printf("test_families: all %ld checks passed\n", checks);
    return 0;
}
