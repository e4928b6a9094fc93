/* model.c -- the transformer forward pass over a batch of queries with per-slot visibility. */
#include <math.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#else
static inline int omp_get_thread_num(void) {
    return 0;
}
static inline int omp_get_num_threads(void) {
    return 1;
}
#endif

#include "internal.h"
#include "matmul.h"

/* ================================================================ errors and buffers */

static _Thread_local char zp_errbuf[512];

zp_status zp_fail(zp_status st, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(zp_errbuf, sizeof zp_errbuf, fmt, ap);
    va_end(ap);
    return st;
}

const char *zp_last_error(void) {
    return zp_errbuf;
}

const char *zp_status_string(zp_status st) {
    switch (st) {
    case ZP_OK: return "ok";
    case ZP_ERR_ARG: return "invalid argument";
    case ZP_ERR_NOMEM: return "out of memory";
    case ZP_ERR_STATE: return "invalid state";
    case ZP_ERR_ABORTED: return "aborted";
    case ZP_ERR_NONFINITE: return "non-finite values";
    }
    return "unknown status";
}

zp_status zp_reserve(void **buf, size_t *cap, size_t n, size_t elem) {
    if (n <= *cap) return ZP_OK;
    size_t want = *cap ? *cap : 16, bytes;
    while (want < n) want = want > SIZE_MAX / 2 ? n : want * 2;
    if (__builtin_mul_overflow(want, elem, &bytes))
        return zp_fail(ZP_ERR_NOMEM, "cannot allocate %zu elements of %zu bytes of scratch", n,
                       elem);
    void *p = realloc(*buf, bytes);
    if (!p) return zp_fail(ZP_ERR_NOMEM, "cannot allocate %zu bytes of scratch", want * elem);
    *buf = p;
    *cap = want;
    return ZP_OK;
}

/* ================================================================ config and model */

int zp_seq_len(const zp_config *c) {
    return c->cls_token_num + c->grid_h * (c->grid_w + c->eor);
}

int zp_cell_pos(const zp_config *c, int r, int col) {
    return c->cls_token_num + r * (c->grid_w + c->eor) + col;
}

zp_status zp_config_check(const zp_config *c) {
    if (c->dim < 1 || c->n_layer < 1 || c->n_head < 1 || c->n_kv_head < 1 || c->hidden < 1 ||
        c->vocab < 1 || c->cls_token_num < 1 || c->grid_h < 1 || c->grid_w < 1)
        return zp_fail(ZP_ERR_ARG, "config sizes must be positive");
    /* 64-bit arithmetic on 32-bit inputs: none of these products can wrap */
    int64_t seq =
        (int64_t)c->cls_token_num + (int64_t)c->grid_h * ((int64_t)c->grid_w + (c->eor != 0));
    if (seq > ZP_MAX_SEQ_LEN)
        return zp_fail(ZP_ERR_ARG,
                       "sequence length P + H*(W+E) = %lld exceeds the limit "
                       "ZP_MAX_SEQ_LEN = %d",
                       (long long)seq, ZP_MAX_SEQ_LEN);
    int64_t qkv = ((int64_t)c->n_head + 2 * (int64_t)c->n_kv_head) * c->head_dim;
    if (c->dim > ZP_MAX_WIDTH || c->hidden > ZP_MAX_WIDTH || c->vocab > ZP_MAX_WIDTH ||
        qkv > ZP_MAX_WIDTH)
        return zp_fail(ZP_ERR_ARG,
                       "dim %d, hidden %d, vocab %d and (n_head + 2*n_kv_head)*head_dim "
                       "%lld must each be at most ZP_MAX_WIDTH = %d",
                       c->dim, c->hidden, c->vocab, (long long)qkv, ZP_MAX_WIDTH);
    if (c->n_layer > ZP_MAX_LAYERS)
        return zp_fail(ZP_ERR_ARG, "n_layer %d exceeds the limit ZP_MAX_LAYERS = %d", c->n_layer,
                       ZP_MAX_LAYERS);
    if (c->rope_1d != 0 && c->rope_1d != 1) return zp_fail(ZP_ERR_ARG, "rope_1d must be 0 or 1");
    if (!c->rope_1d && (c->head_dim < 4 || c->head_dim % 4))
        return zp_fail(ZP_ERR_ARG, "head_dim %d must be a positive multiple of 4", c->head_dim);
    if (c->rope_1d && (c->head_dim < 2 || c->head_dim % 2))
        return zp_fail(ZP_ERR_ARG, "head_dim %d must be a positive even number", c->head_dim);
    if (c->qk_norm != 0 && c->qk_norm != 1) return zp_fail(ZP_ERR_ARG, "qk_norm must be 0 or 1");
    if (c->qk_norm && !(c->qk_norm_eps > 0.f))
        return zp_fail(ZP_ERR_ARG, "qk_norm_eps must be positive");
    if (c->swin_norm != 0 && c->swin_norm != 1)
        return zp_fail(ZP_ERR_ARG, "swin_norm must be 0 or 1");
    if ((c->vis_lo || c->vis_hi) &&
        !(0 <= c->vis_lo && c->vis_lo < c->vis_hi && c->vis_hi <= c->vocab))
        return zp_fail(ZP_ERR_ARG, "image tokens [%d, %d) must be a non-empty range in [0, %d)",
                       c->vis_lo, c->vis_hi, c->vocab);
    if (c->n_head % c->n_kv_head)
        return zp_fail(ZP_ERR_ARG, "n_head %d is not a multiple of n_kv_head %d", c->n_head,
                       c->n_kv_head);
    if (c->eor != 0 && c->eor != 1) return zp_fail(ZP_ERR_ARG, "eor must be 0 or 1");
    if (c->eor && (c->eor_token < 0 || c->eor_token >= c->vocab))
        return zp_fail(ZP_ERR_ARG, "eor_token %d outside [0, %d)", c->eor_token, c->vocab);
    if (!(c->norm_eps > 0.f) || !(c->rope_base > 0.f) || !isfinite(c->norm_eps) ||
        !isfinite(c->rope_base))
        return zp_fail(ZP_ERR_ARG, "norm_eps and rope_base must be finite and positive");
    return ZP_OK;
}

/* Rotary tables per docs/llamagen.md: pairs (2i, 2i+1); pair i < hd/4 turns by row * f_i, pair
 * i >= hd/4 by col * f_(i - hd/4), f_j = base^(-2j / (hd/2)). End-of-row slots use col = W.
 * Conditioning positions get cos = sin = 0 (their q and k are exactly zero). */
static void build_rope(zp_model *m) {
    const zp_config *c = &m->cfg;
    int half = c->head_dim / 2, quarter = c->head_dim / 4, P = c->cls_token_num;
    if (c->rope_1d) {
        /* families.md 1.2: inv_freq[j] = 1 / theta^(2j/hd) and the angle p * inv_freq[j] are
         * float32 values (as torch computes them); cos and sin of that float32 angle */
        for (int j = 0; j < half; j++) {
            float e = (float)(2 * j) / (float)c->head_dim;
            float inv = 1.0f / (float)pow((double)c->rope_base, (double)e);
            for (int p = 0; p < m->seq_len; p++) {
                float a = (float)p * inv;
                m->rope_cos[(size_t)p * half + j] = (float)cos((double)a);
                m->rope_sin[(size_t)p * half + j] = (float)sin((double)a);
            }
        }
        return;
    }
    for (int p = 0; p < m->seq_len; p++) {
        float *cs = m->rope_cos + (size_t)p * half, *sn = m->rope_sin + (size_t)p * half;
        if (p < P) {
            memset(cs, 0, sizeof(float) * half);
            memset(sn, 0, sizeof(float) * half);
            continue;
        }
        int row = (p - P) / (c->grid_w + c->eor), col = (p - P) % (c->grid_w + c->eor);
        for (int i = 0; i < half; i++) {
            int j = i < quarter ? i : i - quarter;
            double f = 1.0 / pow((double)c->rope_base, (2.0 * j) / (double)half);
            double a = (i < quarter ? row : col) * f;
            cs[i] = (float)cos(a);
            sn[i] = (float)sin(a);
        }
    }
}

/* A bf16 model built while the kernels run "amx" keeps a copy of every matrix in AMX tile order
 * (zp_tile_bf16, matmul.h): the passes that run on "amx" read it, one sequential stream of
 * weights per group instead of 32 interleaved rows, with the same bits as in place. Without the
 * memory for it the model has no copy and "amx" passes read the weights in place. */
static void build_tiles(zp_model *m) {
    const zp_config *c = &m->cfg;
    const int D = c->dim, H = c->hidden, A = c->n_head * c->head_dim;
    const int N[5] = {m->qkv_dim, D, H, H, D}, K[5] = {D, A, D, D, H};
    size_t layer = 0, total;
    for (int j = 0; j < 5; j++) layer += zp_tile_bf16_bytes(N[j], K[j]);
    total = layer * (size_t)c->n_layer + zp_tile_bf16_bytes(c->vocab, D);
    char *t = aligned_alloc(64, (total + 63) / 64 * 64);
    zp_layer_weights *tl = malloc(sizeof *tl * (size_t)c->n_layer);
    if (!t || !tl) {
        free(t), free(tl);
        return;
    }
    m->tiles = t, m->tlayers = tl;
    for (int l = 0; l < c->n_layer; l++) {
        const zp_layer_weights *L = &m->layers[l];
        const void *src[5] = {L->wqkv, L->wo, L->w1, L->w3, L->w2};
        const void **dst[5] = {&tl[l].wqkv, &tl[l].wo, &tl[l].w1, &tl[l].w3, &tl[l].w2};
        tl[l] = *L; /* norms and the rest as they are */
        for (int j = 0; j < 5; j++) {
            zp_tile_bf16(t, src[j], N[j], K[j]);
            *dst[j] = t;
            t += zp_tile_bf16_bytes(N[j], K[j]);
        }
    }
    zp_tile_bf16(t, m->w.output, c->vocab, D);
    m->toutput = t;
}

zp_status zp_model_new(const zp_config *cfg, const zp_weights *w, zp_model **out) {
    *out = NULL;
    zp_status st = zp_config_check(cfg);
    if (st) return st;
    if (!w || !w->tok_embeddings || !w->layers || !w->norm || !w->output)
        return zp_fail(ZP_ERR_ARG, "missing weight pointer");
    if (zp_wtype_size(w->wtype) == 0)
        return zp_fail(ZP_ERR_ARG, "unknown weight type %d", w->wtype);
    for (int l = 0; l < cfg->n_layer; l++) {
        const zp_layer_weights *L = &w->layers[l];
        if (!L->attention_norm || !L->wqkv || !L->wo || !L->ffn_norm || !L->w1 || !L->w3 || !L->w2)
            return zp_fail(ZP_ERR_ARG, "missing weight pointer in layer %d", l);
        if (cfg->qk_norm && (!L->q_norm_w || !L->q_norm_b || !L->k_norm_w || !L->k_norm_b))
            return zp_fail(ZP_ERR_ARG, "missing q/k norm weight pointer in layer %d", l);
    }
    zp_model *m = calloc(1, sizeof *m);
    if (!m) return zp_fail(ZP_ERR_NOMEM, "cannot allocate model");
    m->cfg = *cfg;
    m->w = *w;
    m->seq_len = zp_seq_len(cfg);
    m->qkv_dim = (cfg->n_head + 2 * cfg->n_kv_head) * cfg->head_dim;
    m->layers = malloc(sizeof(zp_layer_weights) * cfg->n_layer);
    size_t rope_n = (size_t)m->seq_len * (cfg->head_dim / 2);
    m->rope_cos = malloc(sizeof(float) * rope_n);
    m->rope_sin = malloc(sizeof(float) * rope_n);
    if (!m->layers || !m->rope_cos || !m->rope_sin) {
        zp_model_free(m);
        return zp_fail(ZP_ERR_NOMEM, "cannot allocate model tables");
    }
    memcpy(m->layers, w->layers, sizeof(zp_layer_weights) * cfg->n_layer);
    m->w.layers = m->layers;
    build_rope(m);
    if (w->wtype == ZP_WTYPE_BF16 && strcmp(zp_matmul_isa(), "amx") == 0) build_tiles(m);
    *out = m;
    return ZP_OK;
}

void zp_model_free(zp_model *m) {
    if (!m) return;
    free(m->layers);
    free(m->tiles);
    free(m->tlayers);
    free(m->rope_cos);
    free(m->rope_sin);
    free(m);
}

const zp_config *zp_model_config(const zp_model *m) {
    return &m->cfg;
}

/* ================================================================ cache */

/* One element of the K/V cache as float32. */
static inline __attribute__((always_inline)) float kv_f32(float x) {
    return x;
}
static inline __attribute__((always_inline)) float kv_bf16(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* float32 -> bf16 bits, round to nearest even; NaN stays NaN (quiet). The same conversion as
 * zipar.io.dtypes.float32_to_bfloat16. */
static inline uint16_t bf16_round(float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x0040u);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* Zero-filled memory for a large array read once per pass (the K/V cache): fresh anonymous pages,
 * zero without a memset (so only the pages that passes write become resident, and a buffer that
 * zp_cache_set_kv_type replaces before any pass costs no page faults), 2 MiB aligned and advised
 * as huge pages, which spares the walk over it a TLB miss every 4 KiB. *mapped receives the
 * length to give free_streamed. NULL when the memory cannot be mapped. */
static void *alloc_streamed(size_t bytes, size_t *mapped) {
    const size_t huge = (size_t)2 << 20;
    *mapped = 0;
    if (bytes > SIZE_MAX - 2 * huge) return NULL;
    size_t len = bytes == 0 ? huge : (bytes + huge - 1) / huge * huge;
    char *raw = mmap(NULL, len + huge, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (raw == MAP_FAILED) return NULL;
    /* trim the mapping to a 2 MiB aligned run of len bytes */
    char *p = raw + (huge - (uintptr_t)raw % huge) % huge;
    if (p > raw) munmap(raw, (size_t)(p - raw));
    if (raw + len + huge > p + len) munmap(p + len, (size_t)(raw + len + huge - (p + len)));
#ifdef MADV_HUGEPAGE
    madvise(p, len, MADV_HUGEPAGE); /* advice only: failure leaves ordinary pages */
#endif
    *mapped = len;
    return p;
}

static void free_streamed(void *p, size_t mapped) {
    if (p) munmap(p, mapped);
}

/* K/V storage of the cache's size in type kv_type, replacing the current buffers only when both
 * new ones could be mapped (the cache is unchanged on failure). */
static zp_status kv_alloc(zp_cache *k, int kv_type) {
    size_t bytes = k->kv_elems * (size_t)zp_wtype_size(kv_type), mk, mv;
    void *nk = alloc_streamed(bytes, &mk), *nv = alloc_streamed(bytes, &mv);
    if (!nk || !nv) {
        free_streamed(nk, mk);
        free_streamed(nv, mv);
        return zp_fail(ZP_ERR_NOMEM, "cannot allocate a KV cache of %.1f MB", 2.0 * bytes / 1e6);
    }
    free_streamed(k->k, k->kv_mapped);
    free_streamed(k->v, k->kv_mapped);
    k->k = nk;
    k->v = nv;
    k->kv_mapped = mk;
    k->kv_type = kv_type;
    return ZP_OK;
}

/* A cache with every buffer allocated: slots unwritten, prefixes and shifts zero, mask all 1,
 * K/V float32. */
static zp_status cache_alloc(const zp_model *m, int n_images, int guided, zp_cache **out) {
    *out = NULL;
    const zp_config *c = &m->cfg;
    if (n_images < 1) return zp_fail(ZP_ERR_ARG, "n_images must be >= 1");
    if (n_images > ZP_MAX_IMAGES)
        return zp_fail(ZP_ERR_ARG, "n_images %d exceeds the limit ZP_MAX_IMAGES = %d", n_images,
                       ZP_MAX_IMAGES);
    zp_cache *k = calloc(1, sizeof *k);
    if (!k) return zp_fail(ZP_ERR_NOMEM, "cannot allocate cache");
    k->m = m;
    k->n_images = n_images;
    k->guided = guided ? 1 : 0;
    k->n_streams = n_images * (guided ? 2 : 1);
    k->seq_len = m->seq_len;
    size_t kn, pn, P = c->cls_token_num, D = c->dim;
    if (__builtin_mul_overflow((size_t)c->n_layer * k->n_streams * zp_tiled_len(k->seq_len),
                               (size_t)c->n_kv_head * c->head_dim, &kn) ||
        __builtin_mul_overflow((size_t)k->n_streams * P, D, &pn) || kn > SIZE_MAX / 8 ||
        pn > SIZE_MAX / 4) {
        free(k);
        return zp_fail(ZP_ERR_NOMEM, "a KV cache for %d images exceeds the address space",
                       n_images);
    }
    k->kv_elems = kn;
    zp_status st = kv_alloc(k, ZP_WTYPE_F32); /* zeros: the unwritten lanes of a tile are read */
    if (st) {
        free(k);
        return st;
    }
    k->slots = malloc(sizeof(int32_t) * n_images * k->seq_len);
    k->stamp = calloc((size_t)n_images * k->seq_len, sizeof(uint32_t));
    k->prefix = calloc(pn, sizeof(float));
    k->prefix_mask = malloc((size_t)n_images * P);
    k->shift = calloc((size_t)k->n_streams, sizeof(int32_t));
    if (!k->slots || !k->stamp || !k->prefix || !k->prefix_mask || !k->shift) {
        zp_cache_free(k);
        return zp_fail(ZP_ERR_NOMEM, "cannot allocate the slot tables of a KV cache");
    }
    for (size_t i = 0; i < (size_t)n_images * k->seq_len; i++) k->slots[i] = ZP_SLOT_UNWRITTEN;
    memset(k->prefix_mask, 1, (size_t)n_images * P);
    *out = k;
    return ZP_OK;
}

zp_status zp_cache_set_kv_type(zp_cache *k, int kv_type) {
    if (kv_type != ZP_WTYPE_F32 && kv_type != ZP_WTYPE_BF16)
        return zp_fail(ZP_ERR_ARG,
                       "unknown KV cache type %d: ZP_WTYPE_F32 (%d) or ZP_WTYPE_BF16 (%d)", kv_type,
                       ZP_WTYPE_F32, ZP_WTYPE_BF16);
    if (kv_type == k->kv_type) return ZP_OK;
    if (k->pass_id != 0)
        return zp_fail(ZP_ERR_STATE, "the KV cache type can only change before the first pass");
    return kv_alloc(k, kv_type);
}

int zp_cache_kv_type(const zp_cache *k) {
    return k->kv_type;
}

size_t zp_cache_kv_bytes(const zp_cache *k) {
    return 2 * k->kv_elems * (size_t)zp_wtype_size(k->kv_type);
}

zp_status zp_cache_read_kv(const zp_cache *k, int layer, float *kout, float *vout) {
    const zp_config *c = &k->m->cfg;
    if (layer < 0 || layer >= c->n_layer)
        return zp_fail(ZP_ERR_ARG, "layer %d outside [0, %d)", layer, c->n_layer);
    const int S = k->seq_len, HD = c->head_dim, NKV = c->n_kv_head, KVD = NKV * HD;
    const size_t SPAD = (size_t)zp_tiled_len(S), kv_size = (size_t)zp_wtype_size(k->kv_type);
    for (int t = 0; t < k->n_streams; t++) {
        /* the stream's tiles in this layer, as zp_forward addresses them */
        size_t base = ((size_t)layer * k->n_streams + t) * SPAD * KVD;
        for (int p = 0; p < S; p++) {
            size_t tile = base + (size_t)(p / ZP_TILE) * ZP_TILE * KVD;
            int lane = p % ZP_TILE;
            float *ko = kout + ((size_t)t * S + p) * KVD, *vo = vout + ((size_t)t * S + p) * KVD;
            for (int g = 0; g < NKV; g++)
                for (int e = 0; e < HD; e++) {
                    size_t ki = tile + (size_t)(g * HD + e) * ZP_TILE + lane;
                    size_t vi = tile + ((size_t)g * ZP_TILE + lane) * HD + e;
                    ko[g * HD + e] = kv_size == 2 ? kv_bf16(((const uint16_t *)k->k)[ki])
                                                  : ((const float *)k->k)[ki];
                    vo[g * HD + e] = kv_size == 2 ? kv_bf16(((const uint16_t *)k->v)[vi])
                                                  : ((const float *)k->v)[vi];
                }
        }
    }
    return ZP_OK;
}

zp_status zp_cache_new(const zp_model *m, int n_images, int guided, const float *prefix_cond,
                       const float *prefix_uncond, const uint8_t *prefix_mask, zp_cache **out) {
    *out = NULL;
    size_t P = m->cfg.cls_token_num, D = m->cfg.dim;
    if (n_images < 1) return zp_fail(ZP_ERR_ARG, "n_images must be >= 1");
    if (!prefix_cond) return zp_fail(ZP_ERR_ARG, "prefix_cond is required");
    if (guided && !prefix_uncond) return zp_fail(ZP_ERR_ARG, "guided cache needs prefix_uncond");
    zp_cache *k;
    zp_status st = cache_alloc(m, n_images, guided, &k);
    if (st) return st;
    for (int im = 0; im < n_images; im++) {
        int s0 = guided ? 2 * im : im;
        memcpy(k->prefix + (size_t)s0 * P * D, prefix_cond + (size_t)im * P * D,
               sizeof(float) * P * D);
        if (guided)
            memcpy(k->prefix + (size_t)(s0 + 1) * P * D, prefix_uncond + (size_t)im * P * D,
                   sizeof(float) * P * D);
    }
    if (prefix_mask) memcpy(k->prefix_mask, prefix_mask, (size_t)n_images * P);
    *out = k;
    return ZP_OK;
}

/* Embeds one stream's right-aligned token-id prefix into its conditioning inputs. */
static zp_status embed_prefix(const zp_model *m, zp_cache *k, int stream, const int32_t *ids,
                              int len, int image, const char *which) {
    const zp_config *c = &m->cfg;
    int P = c->cls_token_num;
    if (len < 1 || len > P)
        return zp_fail(ZP_ERR_ARG, "image %d: %s prefix length %d outside [1, P=%d]", image, which,
                       len, P);
    for (int p = P - len; p < P; p++)
        if (ids[p] < 0 || ids[p] >= c->vocab)
            return zp_fail(ZP_ERR_ARG, "image %d: %s prefix token %d outside [0, %d)", image, which,
                           ids[p], c->vocab);
    for (int p = P - len; p < P; p++) /* the embedding row, widened from its stored type */
        zp_widen(k->prefix + ((size_t)stream * P + p) * c->dim,
                 (const char *)m->w.tok_embeddings +
                     (size_t)ids[p] * c->dim * zp_wtype_size(m->w.wtype),
                 m->w.wtype, c->dim);
    k->shift[stream] = P - len;
    return ZP_OK;
}

zp_status zp_cache_new_ids(const zp_model *m, int n_images, int guided, const int32_t *ids_cond,
                           const int32_t *len_cond, const int32_t *ids_uncond,
                           const int32_t *len_uncond, zp_cache **out) {
    *out = NULL;
    int P = m->cfg.cls_token_num;
    if (n_images < 1) return zp_fail(ZP_ERR_ARG, "n_images must be >= 1");
    if (!ids_cond || !len_cond) return zp_fail(ZP_ERR_ARG, "ids_cond and len_cond are required");
    if (guided && (!ids_uncond || !len_uncond))
        return zp_fail(ZP_ERR_ARG, "a guided cache needs ids_uncond and len_uncond");
    zp_cache *k;
    zp_status st = cache_alloc(m, n_images, guided, &k);
    if (st) return st;
    for (int im = 0; im < n_images && !st; im++) {
        int s0 = guided ? 2 * im : im;
        st = embed_prefix(m, k, s0, ids_cond + (size_t)im * P, len_cond[im], im, "conditional");
        if (!st && guided)
            st = embed_prefix(m, k, s0 + 1, ids_uncond + (size_t)im * P, len_uncond[im], im,
                              "unconditional");
    }
    if (st) {
        zp_cache_free(k);
        return st;
    }
    *out = k;
    return ZP_OK;
}

void zp_cache_free(zp_cache *k) {
    if (!k) return;
    zp_scratch *s = &k->s;
    free(s->x);
    free(s->xb);
    free(s->qkv);
    free(s->att);
    free(s->h1);
    free(s->h3);
    free(s->row_query);
    free(s->row_stream);
    free(s->vis);
    free(s->vis_n);
    free(s->scores);
    free(s->xl);
    free(s->xn);
    free(s->logits2);
    free(s->logit_row);
    free(s->row_vis);
    free(s->row_nv);
    free(s->cursor);
    free(s->grp_rows);
    free(s->grp_start);
    free(s->stream_group);
    free_streamed(k->k, k->kv_mapped);
    free_streamed(k->v, k->kv_mapped);
    free(k->slots);
    free(k->stamp);
    free(k->prefix);
    free(k->prefix_mask);
    free(k->shift);
    free(k);
}

int32_t *zp_cache_slots(zp_cache *c) {
    return c->slots;
}
int zp_cache_n_images(const zp_cache *c) {
    return c->n_images;
}
int zp_cache_guided(const zp_cache *c) {
    return c->guided;
}

/* ================================================================ forward helpers */

static zp_status reserve_rows(zp_cache *k, size_t rows) {
    const zp_config *c = &k->m->cfg;
    zp_scratch *s = &k->s;
    if (rows <= s->cap_rows) return ZP_OK;
    size_t cap = s->cap_rows ? s->cap_rows : 16;
    while (cap < rows) cap *= 2;
    float **bufs[] = {&s->x, &s->xb, &s->qkv, &s->att, &s->h1, &s->h3};
    size_t widths[] = {c->dim,    c->dim,   k->m->qkv_dim, c->n_head * c->head_dim,
                       c->hidden, c->hidden};
    for (int i = 0; i < 6; i++) {
        float *p = realloc(*bufs[i], sizeof(float) * cap * widths[i]);
        if (!p) return zp_fail(ZP_ERR_NOMEM, "cannot allocate scratch for %zu rows", cap);
        *bufs[i] = p;
    }
    int32_t *rq = realloc(s->row_query, sizeof(int32_t) * cap);
    if (!rq) return zp_fail(ZP_ERR_NOMEM, "cannot allocate scratch");
    s->row_query = rq;
    int32_t *rs = realloc(s->row_stream, sizeof(int32_t) * cap);
    if (!rs) return zp_fail(ZP_ERR_NOMEM, "cannot allocate scratch");
    s->row_stream = rs;
    s->cap_rows = cap;
    return ZP_OK;
}

/* x[r] = x[r] * rsqrt(mean(x^2) + eps) * w, for one row of n floats. */
static void rmsnorm(float *out, const float *x, const float *w, int n, float eps) {
    double ss = 0.0;
    for (int i = 0; i < n; i++) ss += (double)x[i] * x[i];
    float scale = (float)(1.0 / sqrt(ss / n + (double)eps));
    for (int i = 0; i < n; i++) out[i] = (x[i] * scale) * w[i];
}

/* LayerNorm over each of n_heads heads of hd floats (statistics in double, biased variance, no
 * affine), then * w[h] + b[h] with one (hd,) row per head (Chameleon's q/k norm). */
static void head_layernorm(float *v, int n_heads, int hd, const float *w, const float *b,
                           float eps) {
    for (int h = 0; h < n_heads; h++) {
        float *x = v + (size_t)h * hd;
        const float *wh = w + (size_t)h * hd, *bh = b + (size_t)h * hd;
        double mean = 0.0, var = 0.0;
        for (int i = 0; i < hd; i++) mean += x[i];
        mean /= hd;
        for (int i = 0; i < hd; i++) var += (x[i] - mean) * (x[i] - mean);
        float inv = (float)(1.0 / sqrt(var / hd + (double)eps));
        for (int i = 0; i < hd; i++) x[i] = (float)(x[i] - mean) * inv * wh[i] + bh[i];
    }
}

/* 1-D rotate_half rotary: element i pairs with i + head_dim/2, angle index i (families.md 1.2). */
static void rope_half(float *v, int n_heads, int head_dim, const float *cs, const float *sn) {
    int half = head_dim / 2;
    for (int h = 0; h < n_heads; h++) {
        float *x = v + (size_t)h * head_dim;
        for (int i = 0; i < half; i++) {
            float x0 = x[i], x1 = x[i + half];
            x[i] = x0 * cs[i] - x1 * sn[i];
            x[i + half] = x1 * cs[i] + x0 * sn[i];
        }
    }
}

/* Rotates adjacent pairs of n_heads heads of head_dim floats by the position's table row. */
static void rope(float *v, int n_heads, int head_dim, const float *cs, const float *sn) {
    int half = head_dim / 2;
    for (int h = 0; h < n_heads; h++) {
        float *x = v + (size_t)h * head_dim;
        for (int i = 0; i < half; i++) {
            float x0 = x[2 * i], x1 = x[2 * i + 1];
            x[2 * i] = x0 * cs[i] - x1 * sn[i];
            x[2 * i + 1] = x1 * cs[i] + x0 * sn[i];
        }
    }
}

/* GCC float vectors of 16, 8 and 4 lanes (a zmm, a ymm, an xmm register), with unaligned loads
 * of float32 or bf16 elements (always inlined, so the ABI note GCC gives for returning such
 * vectors does not apply) and stores (a macro: no vector is passed by value). A bf16 element is
 * the high half of its float32 value: widening is exact. */
#pragma GCC diagnostic ignored "-Wpsabi"
typedef float zp_v16 __attribute__((vector_size(64)));
typedef float zp_v8 __attribute__((vector_size(32)));
typedef float zp_v4 __attribute__((vector_size(16)));
typedef int32_t zp_i16 __attribute__((vector_size(64)));
typedef int32_t zp_i8 __attribute__((vector_size(32)));
typedef int32_t zp_i4 __attribute__((vector_size(16)));
typedef uint32_t zp_u16 __attribute__((vector_size(64)));
typedef uint32_t zp_u8 __attribute__((vector_size(32)));
typedef uint32_t zp_u4 __attribute__((vector_size(16)));
typedef uint16_t zp_h16 __attribute__((vector_size(32)));
typedef uint16_t zp_h8 __attribute__((vector_size(16)));
typedef uint16_t zp_h4 __attribute__((vector_size(8)));
#define ZP_VEC_LOAD(N)                                                                             \
    static inline __attribute__((always_inline)) zp_v##N v##N##_load(const float *p) {             \
        zp_v##N v;                                                                                 \
        memcpy(&v, p, sizeof v);                                                                   \
        return v;                                                                                  \
    }                                                                                              \
    static inline __attribute__((always_inline)) zp_v##N v##N##_load_bf16(const uint16_t *p) {     \
        zp_h##N h;                                                                                 \
        memcpy(&h, p, sizeof h);                                                                   \
        return (zp_v##N)(__builtin_convertvector(h, zp_u##N) << 16);                               \
    }
ZP_VEC_LOAD(16)
ZP_VEC_LOAD(8)
ZP_VEC_LOAD(4)
#undef ZP_VEC_LOAD
#define ZP_VEC_STORE(p, v)                                                                         \
    do {                                                                                           \
        __typeof__(v) zp_vec_ = (v);                                                               \
        memcpy((p), &zp_vec_, sizeof zp_vec_);                                                     \
    } while (0)

/* exp(x) for the softmax, x <= 0 (scores minus their max): Cody-Waite reduction by ln 2 and a
 * degree-7 Taylor polynomial, relative error below 1e-7, exactly 0 below -87. Branch-free, so the
 * loops calling it vectorise; every clone evaluates the same operations in the same order. */
static inline __attribute__((always_inline)) float exp_nonpos(float x) {
    x = x < -87.0f ? -87.0f : x;
    float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round(x / ln 2) */
    float r = (x - n * 0.693145751953125f) - n * 1.428606765330187e-06f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    union {
        int32_t i;
        float f;
    } two_n = {.i = ((int32_t)n + 127) << 23};
    return x <= -87.0f ? 0.0f : p * two_n.f;
}

/* Tiles ahead that the attention loops prefetch. */
#ifndef ZP_PREFETCH
#define ZP_PREFETCH 2
#endif

/* Prefetches bytes [lo, hi) of the K or V tile `ahead` tiles after `tile` (tile_bytes each, either
 * layout): the span of the K/V heads one attention task reads (a task that takes some of the
 * heads must not pull the others' lines into its core: at 16 threads that was 8 times the
 * bytes). */
static inline __attribute__((always_inline)) void
prefetch_tile(const void *tile, int ahead, size_t tile_bytes, size_t lo, size_t hi) {
    const char *next = (const char *)tile + (size_t)ahead * tile_bytes;
    for (size_t e = lo; e < hi; e += 64) __builtin_prefetch(next + e);
}

/* Rows per chunk of attend.h's loops: within a tile the chunk's rows take each head in turn, so
 * that the head's K or V block (8 KiB for GPT-L float32) is read from memory once and from L1 by
 * the chunk's other rows (a whole tile of every head is 128 KiB, more than L1). */
#ifndef ZP_ATT_CHUNK
#define ZP_ATT_CHUNK 32
#endif

/* Value elements of each slot that attend.h's slot-order value sums read at once (the first row
 * over a head's block): a whole row for head_dim <= 128, with 4 x 128 float32 chain sums (2 KiB)
 * on the stack. */
#define ZP_ATT_VM 128

/* For the n rows rows[a] whose visible slots before cursor[a] lie in earlier tiles: p1[a], the
 * end of their visible slots in the tile starting at slot t0 (cursor[a] when none). */
static inline void tile_ranges(const int32_t *rows, int n, const int32_t *const *vis,
                               const int32_t *nv, const int32_t *cursor, int t0, int32_t *p1) {
    for (int a = 0; a < n; a++) {
        int r = rows[a], p = cursor[a];
        while (p < nv[r] && vis[r][p] < t0 + ZP_TILE) p++;
        p1[a] = p;
    }
}

/* Attention of the rows of one stream (one image's cond or uncond cache) in this pass. ZipAR
 * passes hold several queries per image; they share the cache, so the slots are walked in
 * tiles of ZP_TILE and every K/V tile is used by all the stream's rows while it is in cache.
 * K is stored tile-transposed, (tile, kvd, ZP_TILE): a row's scores against a whole tile are
 * vector multiply-adds over the head dimension; the scores of the tile's invisible slots are
 * computed and dropped. The body and its fixed order of operations are in attend.h, compiled
 * here once per instruction set and K/V element type (float32, bf16 widened in registers);
 * attend_pick chooses one per pass: the instruction set of the matrix kernels (zp_matmul_isa)
 * and the cache's type. */
typedef void attend_fn(const int32_t *rows, int n, const int32_t *const *vis, const int32_t *nv,
                       const float *q, int ldq, float *sc, size_t ldsc, float *o, const void *kt,
                       const void *vt, int nh, int h0, int h1, int group, int hd, int kvd,
                       float scale, int32_t *cursor);

/* Per instruction set, one include per K/V element type; attend.h #undefs the per-type
 * parameters (ZP_ATT_NAME, ZP_ATT_KV, ZP_ATT_LOADKV, ZP_ATT_KV1), the set's are #undef'd below. */
/* AVX-512: the operations and order of the former 16-lane target_clones("avx512f") clone */
#define ZP_ATT_TARGET __attribute__((target("avx512f")))
#define ZP_ATT_V      zp_v16
#define ZP_ATT_W      16
#define ZP_ATT_VI     zp_i16
#define ZP_ATT_VEXP   0
#define ZP_ATT_LOAD   v16_load
#define ZP_ATT_SLANES 32 /* 4 zmm score accumulators */
#define ZP_ATT_NAME   attend_avx512_f32
#define ZP_ATT_SLOTS  slots_avx512_f32
#define ZP_ATT_KV     float
#define ZP_ATT_LOADKV v16_load
#define ZP_ATT_KV1    kv_f32
#include "attend.h"
#define ZP_ATT_NAME   attend_avx512_bf16
#define ZP_ATT_SLOTS  slots_avx512_bf16
#define ZP_ATT_KV     uint16_t
#define ZP_ATT_LOADKV v16_load_bf16
#define ZP_ATT_KV1    kv_bf16
#include "attend.h"
#include "attend_undef.h"

/* AVX2 with FMA (haswell and later, zen) */
#define ZP_ATT_TARGET __attribute__((target("avx2,fma")))
#define ZP_ATT_V      zp_v8
#define ZP_ATT_W      8
#define ZP_ATT_VI     zp_i8
#define ZP_ATT_VEXP   1
#define ZP_ATT_LOAD   v8_load
#define ZP_ATT_SLANES 32 /* 8 ymm score accumulators of 16 */
#define ZP_ATT_NAME   attend_avx2_f32
#define ZP_ATT_SLOTS  slots_avx2_f32
#define ZP_ATT_KV     float
#define ZP_ATT_LOADKV v8_load
#define ZP_ATT_KV1    kv_f32
#include "attend.h"
#define ZP_ATT_NAME   attend_avx2_bf16
#define ZP_ATT_SLOTS  slots_avx2_bf16
#define ZP_ATT_KV     uint16_t
#define ZP_ATT_LOADKV v8_load_bf16
#define ZP_ATT_KV1    kv_bf16
#include "attend.h"
#include "attend_undef.h"

/* plain x86-64 (SSE2, no FMA) */
#define ZP_ATT_TARGET
#define ZP_ATT_V      zp_v4
#define ZP_ATT_W      4
#define ZP_ATT_VI     zp_i4
#define ZP_ATT_VEXP   1
#define ZP_ATT_LOAD   v4_load
#define ZP_ATT_SLANES 16 /* 8 xmm score accumulators of 16 */
#define ZP_ATT_NAME   attend_sse2_f32
#define ZP_ATT_SLOTS  slots_sse2_f32
#define ZP_ATT_KV     float
#define ZP_ATT_LOADKV v4_load
#define ZP_ATT_KV1    kv_f32
#include "attend.h"
#define ZP_ATT_NAME   attend_sse2_bf16
#define ZP_ATT_SLOTS  slots_sse2_bf16
#define ZP_ATT_KV     uint16_t
#define ZP_ATT_LOADKV v4_load_bf16
#define ZP_ATT_KV1    kv_bf16
#include "attend.h"
#include "attend_undef.h"

/* The attention instance for this pass: the instruction set of the matrix kernels, so that
 * zp_matmul_force_isa (testing) reaches both ("avx512" and "amx" there imply avx512f), and the
 * cache's K/V element type. */
static attend_fn *attend_pick(int kv_type) {
    const char *isa = zp_matmul_isa();
    int bf16 = kv_type == ZP_WTYPE_BF16;
    if (strcmp(isa, "avx512") == 0 || strcmp(isa, "amx") == 0)
        return bf16 ? attend_avx512_bf16 : attend_avx512_f32;
    if (strcmp(isa, "avx2") == 0) return bf16 ? attend_avx2_bf16 : attend_avx2_f32;
    return bf16 ? attend_sse2_bf16 : attend_sse2_f32;
}

/* ================================================================ the forward primitive */

static zp_status check_queries(const zp_model *m, zp_cache *k, const zp_query *q, int nq) {
    const zp_config *c = &m->cfg;
    if (nq < 0 || nq > INT32_MAX / 2)
        return zp_fail(ZP_ERR_ARG, "query count %d outside [0, %d]", nq, INT32_MAX / 2);
    if ((int64_t)nq > (int64_t)k->n_images * k->seq_len)
        return zp_fail(ZP_ERR_ARG,
                       "%d queries, but a pass writes each of the %lld slots at most "
                       "once",
                       nq, (long long)k->n_images * k->seq_len);
    if (++k->pass_id == 0) {
        memset(k->stamp, 0, sizeof(uint32_t) * (size_t)k->n_images * k->seq_len);
        k->pass_id = 1;
    }
    for (int i = 0; i < nq; i++) {
        const zp_query *x = &q[i];
        if (x->image < 0 || x->image >= k->n_images)
            return zp_fail(ZP_ERR_ARG, "query %d: image %d outside [0, %d)", i, x->image,
                           k->n_images);
        if (x->pos < 0 || x->pos >= k->seq_len)
            return zp_fail(ZP_ERR_ARG, "query %d: position %d outside [0, %d)", i, x->pos,
                           k->seq_len);
        if (x->pos >= c->cls_token_num && (x->token < 0 || x->token >= c->vocab))
            return zp_fail(ZP_ERR_ARG, "query %d: token %d outside [0, %d)", i, x->token, c->vocab);
        if (x->chain < 0) return zp_fail(ZP_ERR_ARG, "query %d: negative chain", i);
        if (x->guided && !k->guided)
            return zp_fail(ZP_ERR_ARG, "query %d: guided query on an unguided cache", i);
        uint32_t *st = &k->stamp[(size_t)x->image * k->seq_len + x->pos];
        if (*st == k->pass_id)
            return zp_fail(ZP_ERR_ARG,
                           "query %d: slot (image %d, position %d) written twice in "
                           "one pass",
                           i, x->image, x->pos);
        *st = k->pass_id;
    }
    return ZP_OK;
}

/* Visible slots of query x: q <= pos with q == pos, committed, or of the query's own chain. */
static int build_visibility(const zp_cache *k, const zp_query *x, int32_t *vis) {
    const int32_t *st = k->slots + (size_t)x->image * k->seq_len;
    int n = 0;
    for (int s = 0; s <= x->pos; s++)
        if (s == x->pos || st[s] == ZP_SLOT_COMMITTED || (x->chain > 0 && st[s] == x->chain))
            vis[n++] = s;
    return n;
}

/* ================================================================ the pass's thread team
 *
 * How threads work in a pass. The layers of a pass run inside ONE OpenMP parallel region (a team
 * of zp_get_num_threads() threads, or of 1 when the pass is too small to be worth waking threads
 * for: ZP_PARALLEL_MIN_WORK). Every stage of a layer is split between the team's threads by a
 * rule (rows of the norms by zp_share, output columns of the products by a static block per
 * thread then chunks from a shared counter: product(), attention by stream groups taken from a
 * shared counter), and stages that read what other threads wrote are separated by team_wait,
 * a barrier that spins: waking
 * sleeping threads through the kernel (libgomp with OMP_WAIT_POLICY=PASSIVE, which zipar sets so
 * that idle threads never spin between passes) costs microseconds to tens of microseconds per
 * region on some hosts (a gVisor VM: ~30 us), which the former five regions per layer paid ~120
 * times a pass. Threads spin only inside a pass; between passes they sleep in libgomp as before.
 *
 * Per layer (B: team_wait; x, xb, qkv, att, h1, h3: the scratch rows):
 *   norm rows x -> xb        B   (swin_norm: none; qkv reads x)
 *   qkv = xb . wqkv^T, by columns   B
 *   per stream group (one stream, a shared counter hands them out): q/k norm, rotary, K/V cache
 *     write of its rows, then its attention (a group reads only its own stream's cache)   B
 *     (fewer groups than threads: each group's K/V heads cut into runs, one task each, which
 *     does the norm, rotary, K/V write and attention of its heads only: attend_groups)
 *   capture (thread 0, nothing else reads it)
 *   xb = att . wo^T by columns, x += xb on the same columns   B   norm rows x -> xb   B
 *     (swin_norm: B, then per row xb = norm(xb), x += xb, B)
 *   h1, h3 = xb . w1^T, xb . w3^T, the SAME columns of both per thread (ZP_MATMUL_JOINT), then
 *     h1 = silu(h1) * h3 on those columns   B
 *   xb = h1 . w2^T by columns, x += xb on the same columns   B   (swin_norm as after wo)
 * After the last layer, the output head (head_stage): final norm of the logit rows by rows   B
 *   logits = xl . output^T by columns, then the region's end.
 * Every element is computed by one thread with the operations of the serial code, so the logits
 * are bitwise those of one thread, whatever the team size (csrc/tests/test_team.c). Nothing in the
 * region allocates or fails: the scratch is reserved before it. */

/* Pause iterations a waiting thread spins before it yields the CPU in its loop: tens of
 * microseconds (a pause takes ~10-140 cycles by CPU; 31 ns on the AMD EPYC development machine,
 * so ~32 us), longer than a balanced stage's skew, and bounded so that an oversubscribed machine
 * (more threads than free cores) still progresses. */
#ifndef ZP_TEAM_SPIN
#define ZP_TEAM_SPIN 1024
#endif

#if defined(__x86_64__) || defined(__i386__)
#define ZP_PAUSE() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define ZP_PAUSE() __asm__ __volatile__("yield")
#else
#define ZP_PAUSE() ((void)0)
#endif

/* The product stages of a layer, each with its own chunk counter (zp_team.cols). */
enum { ZP_QKV, ZP_WO, ZP_GATE_UP, ZP_W2, ZP_HEAD, ZP_PRODUCTS };

/* Shared state of one pass's team; each field on its own cache line. */
typedef struct {
    _Alignas(64) int arrived; /* threads at the barrier in this phase */
    _Alignas(64) int sense;   /* flips when the last thread of a phase arrives */
    _Alignas(64) int next;    /* the next attention group to take */
    struct {
        _Alignas(64) int next; /* the next chunk of the stage's column groups to take */
    } cols[ZP_PRODUCTS];
    _Alignas(64) int timed; /* the pass adds to the stage timers (read-only in the region) */
    uint64_t open_ns;       /* when thread 0 opened the region (timed passes) */
} zp_team;

/* Stage timers (zp_timers_set): while on, each thread adds the nanoseconds since its previous
 * mark to its own row of totals, per stage separately for the work (up to the stage's barrier)
 * and the wait in that barrier; thread 0 also times what runs outside the team. Relaxed atomic
 * adds: passes of several sessions may run at once. Off, a mark is one load and a branch. */
static int timers_on;
static uint64_t timer_ns[ZP_TIMER_THREADS][ZP_TIMERS];
static long long timer_passes;
static _Thread_local int prof_stage;
static _Thread_local uint64_t prof_last;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void prof_mark(int timer) {
    uint64_t now = now_ns();
    int tid = omp_get_thread_num();
    if (tid < ZP_TIMER_THREADS && timer >= 0)
        __atomic_fetch_add(&timer_ns[tid][timer], now - prof_last, __ATOMIC_RELAXED);
    prof_last = now;
}

void zp_timers_set(int on) {
    if (on) {
        for (int t = 0; t < ZP_TIMER_THREADS; t++)
            for (int i = 0; i < ZP_TIMERS; i++)
                __atomic_store_n(&timer_ns[t][i], 0, __ATOMIC_RELAXED);
        __atomic_store_n(&timer_passes, 0, __ATOMIC_RELAXED);
    }
    __atomic_store_n(&timers_on, on != 0, __ATOMIC_RELEASE);
}

long long zp_timers_read(double *seconds) {
    for (int t = 0; t < ZP_TIMER_THREADS; t++)
        for (int i = 0; i < ZP_TIMERS; i++)
            seconds[t * ZP_TIMERS + i] =
                1e-9 * (double)__atomic_load_n(&timer_ns[t][i], __ATOMIC_RELAXED);
    return __atomic_load_n(&timer_passes, __ATOMIC_RELAXED);
}

/* The end of a timed pass (thread 0): the CFG combine, and one pass more. */
static void prof_end(int timed) {
    if (!timed) return;
    prof_mark(ZP_TIMER_COMBINE);
    __atomic_fetch_add(&timer_passes, 1, __ATOMIC_RELAXED);
}

/* `on`: whether this pass times itself (read once by thread 0, passed to the team) */
#define PROF_MARK(on, b)  ((on) ? prof_mark(b) : (void)0)
#define PROF_STAGE(on, s) ((on) ? (void)(prof_stage = (s)) : (void)0)
#define PROF_WORKED(on)   PROF_MARK(on, prof_stage)
#define PROF_WAITED(on)   PROF_MARK(on, ZP_STAGES + prof_stage)

/* Centralized sense-reversing barrier of the nth threads of the team (nth = 1: no-op). *sense is
 * the calling thread's own phase flag, 0 at the start of the region. Everything a thread wrote
 * before it is visible to every thread after it (acquire/release on arrived and sense). */
static void team_wait(zp_team *t, int nth, int *sense) {
    PROF_WORKED(t->timed);
    if (nth <= 1) return;
    int mine = !*sense;
    *sense = mine;
    if (__atomic_add_fetch(&t->arrived, 1, __ATOMIC_ACQ_REL) == nth) { /* the last one */
        __atomic_store_n(&t->arrived, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&t->sense, mine, __ATOMIC_RELEASE);
        PROF_WAITED(t->timed);
        return;
    }
    for (int spins = 0; __atomic_load_n(&t->sense, __ATOMIC_ACQUIRE) != mine; spins++) {
        if (spins < ZP_TEAM_SPIN)
            ZP_PAUSE();
        else
            sched_yield();
    }
    PROF_WAITED(t->timed);
}

/* Passes whose rows hold at most this many elements (rows x dim: one guided query of GPT-B or
 * GPT-L, 2 x 768 or 2 x 1024) norm every row on every thread (norm_rows): a few microseconds of
 * arithmetic, about what a barrier of 16 threads costs. */
#define ZP_NORM_ALL_ELEMS 4096

/* What every thread of a pass reads: set before the region, read-only in it but for team. */
typedef struct {
    const zp_model *m;
    zp_cache *k;
    const zp_query *q;
    zp_capture *cap;
    int rows, n_groups;
    int flags;       /* zp_matmul_flags(rows), read once */
    int att_threads; /* > 1: a team of one opens a region of its own for the attention */
    int splits;      /* attention tasks per stream group: its K/V heads cut into this many runs */
    int lrows;       /* rows that want logits (the output head's rows), in s->logit_row */
    int head_flags;  /* zp_matmul_flags(lrows), read once */
    int norm_all;    /* every thread norms all rows into its own s->xn: no barrier (norm_rows) */
    int tiles;       /* the matrices from the model's tile-order copy (kernels on "amx") */
    float scale;     /* 1 / sqrt(head_dim) */
    attend_fn *attend;
    zp_team team;
} zp_pass;

/* Row i's q and k of layer l, for K/V heads [g0, g1) and their query heads: q/k norm and rotary in
 * place in s->qkv; then its k and v of those heads written into its slot of the cache (kl, vl:
 * the layer's K and V). Every head's arithmetic is its own, so a range does what the whole row
 * does to those heads. */
static void row_to_cache(const zp_pass *p, const zp_layer_weights *L, int i, int g0, int g1,
                         char *kl, char *vl) {
    const zp_config *c = &p->m->cfg;
    const zp_cache *k = p->k;
    const zp_scratch *s = &k->s;
    const int NH = c->n_head, NKV = c->n_kv_head, HD = c->head_dim, KVD = NKV * HD;
    const zp_query *x = &p->q[s->row_query[i]];
    float *qkv = s->qkv + (size_t)i * p->m->qkv_dim;
    int rpos = x->pos - k->shift[s->row_stream[i]]; /* the stream's own position */
    if (rpos < 0) rpos = 0;                         /* padding row: never read */
    const float *cs = p->m->rope_cos + (size_t)rpos * (HD / 2);
    const float *sn = p->m->rope_sin + (size_t)rpos * (HD / 2);
    const int GROUP = NH / NKV, q0 = g0 * GROUP * HD, nq = (g1 - g0) * GROUP, k0 = g0 * HD;
    float *qh = qkv + q0, *kh = qkv + NH * HD + k0; /* the range's first query and key head */
    if (c->qk_norm) {
        head_layernorm(qh, nq, HD, L->q_norm_w + q0, L->q_norm_b + q0, c->qk_norm_eps);
        head_layernorm(kh, g1 - g0, HD, L->k_norm_w + k0, L->k_norm_b + k0, c->qk_norm_eps);
    }
    if (c->rope_1d) {
        rope_half(qh, nq, HD, cs, sn);
        rope_half(kh, g1 - g0, HD, cs, sn);
    } else {
        rope(qh, nq, HD, cs, sn);
        rope(kh, g1 - g0, HD, cs, sn);
    }
    size_t tile = ((size_t)s->row_stream[i] * zp_tiled_len(k->seq_len) +
                   (size_t)(x->pos / ZP_TILE) * ZP_TILE) *
                  KVD;
    int lane = x->pos % ZP_TILE;
    const float *kx = qkv + NH * HD, *vx = qkv + NH * HD + KVD;
    if (k->kv_type == ZP_WTYPE_BF16) { /* rounded to nearest even once, here */
        uint16_t *kt = (uint16_t *)kl + tile + lane, *vt = (uint16_t *)vl + tile;
        for (int e = g0 * HD; e < g1 * HD; e++) kt[(size_t)e * ZP_TILE] = bf16_round(kx[e]);
        for (int g = g0; g < g1; g++)
            for (int e = 0; e < HD; e++)
                vt[((size_t)g * ZP_TILE + lane) * HD + e] = bf16_round(vx[g * HD + e]);
    } else {
        float *kt = (float *)kl + tile + lane, *vt = (float *)vl + tile;
        for (int e = g0 * HD; e < g1 * HD; e++) kt[(size_t)e * ZP_TILE] = kx[e];
        for (int g = g0; g < g1; g++)
            memcpy(vt + ((size_t)g * ZP_TILE + lane) * HD, vx + g * HD, sizeof(float) * HD);
    }
}

/* The requested attention weights of layer l (cond stream rows) into cap->out. */
static void capture_layer(const zp_pass *p, int l) {
    const zp_cache *k = p->k;
    const zp_scratch *s = &k->s;
    const zp_capture *cap = p->cap;
    const int S = k->seq_len, NH = p->m->cfg.n_head;
    for (int i = 0; i < p->rows; i++) {
        int qi = s->row_query[i];
        if (s->row_stream[i] != (k->guided ? 2 * p->q[qi].image : p->q[qi].image)) continue;
        for (int rq = 0; rq < cap->n; rq++)
            if (cap->query[rq] == qi && cap->layer[rq] == l) {
                float *out = cap->out + (size_t)rq * S;
                const float *wrow =
                    s->scores + (size_t)i * NH * S + (size_t)cap->head[rq] * s->row_nv[i];
                memset(out, 0, sizeof(float) * S);
                for (int j = 0; j < s->row_nv[i]; j++) out[s->row_vis[i][j]] = wrow[j];
            }
    }
}

/* The attention of layer l as n_groups x splits tasks, each taken by the next free thread from
 * the team's counter: stream group g (one stream, reading only its own cache) and the query heads
 * of its j-th run of K/V heads. A task first does the q/k norm, rotary and K/V cache write of its
 * heads for the group's rows (nothing else reads them: no barrier), then their attention. Each
 * head's arithmetic is that of one call over all heads (attend.h, row_to_cache), so the split,
 * which follows the team size, never changes a bit. Task j of a group uses its own cursor run
 * (s->cursor: splits x rows). */
static void attend_groups(zp_pass *p, const zp_layer_weights *L, char *kl, char *vl) {
    const zp_config *c = &p->m->cfg;
    zp_scratch *s = &p->k->s;
    const int NH = c->n_head, NKV = c->n_kv_head, HD = c->head_dim, KVD = NKV * HD;
    const int GROUP = NH / NKV, splits = p->splits;
    const size_t kv_size = (size_t)zp_wtype_size(p->k->kv_type);
    const size_t stream_bytes = (size_t)zp_tiled_len(p->k->seq_len) * KVD * kv_size;
    for (;;) {
        int task = __atomic_fetch_add(&p->team.next, 1, __ATOMIC_RELAXED);
        if (task >= p->n_groups * splits) break;
        int g = task / splits, j = task % splits;
        int first = s->grp_start[g], n = s->grp_start[g + 1] - first;
        const int32_t *grp = s->grp_rows + first;
        int g0 = j * NKV / splits, g1 = (j + 1) * NKV / splits, h0 = g0 * GROUP, h1 = g1 * GROUP;
        for (int a = 0; a < n; a++) row_to_cache(p, L, grp[a], g0, g1, kl, vl);
        size_t off = (size_t)s->row_stream[grp[0]] * stream_bytes;
        p->attend(grp, n, (const int32_t *const *)s->row_vis, s->row_nv, s->qkv, p->m->qkv_dim,
                  s->scores, (size_t)NH * p->k->seq_len, s->att, kl + off, vl + off, NH, h0, h1,
                  GROUP, HD, KVD, p->scale, s->cursor + (size_t)j * p->rows + first);
    }
}

/* x[i][n] += xb[i][n] for rows i < rows and the columns cols (row stride ld). */
static void add_cols(float *x, const float *xb, int rows, int ld, zp_cols cols) {
    for (int i = 0; i < rows; i++)
        for (int n = cols.n0; n < cols.n1; n++) x[(size_t)i * ld + n] += xb[(size_t)i * ld + n];
}

/* What a product stage does to the columns it just computed, before the barrier. */
enum { ZP_POST_NONE, ZP_POST_RESIDUAL, ZP_POST_SILU };

static void post_cols(zp_pass *p, int post, zp_cols cols) {
    zp_scratch *s = &p->k->s;
    const int H = p->m->cfg.hidden;
    if (post == ZP_POST_RESIDUAL && !p->m->cfg.swin_norm) {
        add_cols(s->x, s->xb, p->rows, p->m->cfg.dim, cols);
    } else if (post == ZP_POST_SILU) { /* these hidden units, of both products */
        for (int i = 0; i < p->rows; i++)
            for (int n = cols.n0; n < cols.n1; n++) {
                float a = s->h1[(size_t)i * H + n];
                s->h1[(size_t)i * H + n] = a / (1.f + expf(-a)) * s->h3[(size_t)i * H + n];
            }
    }
}

/* Share of the column groups a product stage hands out statically (contiguous, one block per
 * thread, so each thread streams one run of weights); the rest goes in chunks of
 * tail / (ZP_TAIL_CHUNKS x threads) groups to whichever thread asks first. Both take -D for
 * experiment builds; shares of 0.5 and 0.9 and chunks of half and twice the size moved no
 * one-query pass beyond the device host's noise (BENCHMARKS.md, issue 13, stop 26, run D). */
#ifndef ZP_STATIC_SHARE
#define ZP_STATIC_SHARE 0.75
#endif
#ifndef ZP_TAIL_CHUNKS
#define ZP_TAIL_CHUNKS 4
#endif

/* This thread's part of product stage `which` (x: (m, K)), then `post` on every column block
 * it computed. The first ZP_STATIC_SHARE of the groups are split as zp_matmul_part splits them;
 * the rest are taken in chunks from the stage's counter, so that threads that stream faster than
 * others (shared hosts: cores differ by tens of percent) take more. A thread takes its next chunk
 * before it computes the current block, whose last group then prefetches the chunk's weights.
 * Which thread computes a column never changes its bits; each column is computed once.
 * BLAS passes (a team of one) go through zp_matmul_part. */
static void product(zp_pass *p, int which, const float *x, int m, int K, const zp_matmul_out *out,
                    int n_out, int flags, int post, int tid, int nth) {
    if (flags & ZP_MATMUL_BLAS) {
        post_cols(p, post, zp_matmul_part(x, m, K, out, n_out, flags, tid, nth));
        return;
    }
    int *counter = &p->team.cols[which].next;
    const int64_t groups = zp_matmul_groups(K, out, n_out, flags);
    const int64_t fixed = nth > 1 ? (int64_t)(groups * ZP_STATIC_SHARE) : groups;
    int64_t chunk = (groups - fixed + ZP_TAIL_CHUNKS * nth - 1) / (ZP_TAIL_CHUNKS * nth);
    if (chunk < 1) chunk = 1;
    const int64_t n_chunks = (groups - fixed + chunk - 1) / chunk;
    int64_t g0, g1, c = n_chunks > 0 ? __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED) : 0;
    zp_share(fixed, tid, nth, &g0, &g1);
    for (;;) {
        int64_t next = c < n_chunks ? fixed + c * chunk : -1;
        int64_t next_end = next + chunk < groups ? next + chunk : groups;
        if (g0 < g1)
            post_cols(p, post, zp_matmul_range(x, m, K, out, n_out, flags, g0, g1, next, next_end));
        if (c >= n_chunks) break;
        g0 = next, g1 = next_end;
        c = __atomic_fetch_add(counter, 1, __ATOMIC_RELAXED);
    }
}

/* The n rows of x numbered map[r] (r when map is NULL), normed with norm_w, where the next
 * product reads them: in passes of few rows (p->norm_all) each thread norms every row into its
 * own block of s->xn, with no barrier (the same operations per row, so the same bits; a barrier
 * costs more than the few rows); otherwise each thread its share of the rows into `shared`, then
 * a barrier. Returns the buffer written. */
static const float *norm_rows(zp_pass *p, const float *norm_w, const int32_t *map, int n,
                              float *shared, int tid, int nth, int *sense) {
    const zp_config *c = &p->m->cfg;
    zp_scratch *s = &p->k->s;
    const int D = c->dim;
    int64_t lo = 0, hi = n;
    float *dst = p->norm_all ? s->xn + (size_t)tid * p->rows * D : shared;
    if (!p->norm_all) zp_share(n, tid, nth, &lo, &hi);
    for (int64_t r = lo; r < hi; r++)
        rmsnorm(dst + (size_t)r * D, s->x + (size_t)(map ? map[r] : r) * D, norm_w, D, c->norm_eps);
    if (!p->norm_all) team_wait(&p->team, nth, sense);
    return dst;
}

/* After a sub-layer's product into xb (whose columns the product's post step already added to x,
 * without swin_norm): with swin_norm x += norm(xb) (whole rows, so after a barrier); then a
 * barrier. */
static void residual(zp_pass *p, const float *norm_w, int r0, int r1, int nth, int *sense) {
    const zp_config *c = &p->m->cfg;
    zp_scratch *s = &p->k->s;
    const int D = c->dim;
    zp_team *t = &p->team;
    if (c->swin_norm) {
        team_wait(t, nth, sense);
        for (int i = r0; i < r1; i++) {
            float *xb = s->xb + (size_t)i * D, *x = s->x + (size_t)i * D;
            rmsnorm(xb, xb, norm_w, D, c->norm_eps);
            for (int e = 0; e < D; e++) x[e] += xb[e];
        }
    }
    team_wait(t, nth, sense);
}

/* Layer l on thread tid of nth (the stages above). Starts after a barrier (or the region's
 * start) with s->x complete; ends with a barrier after which s->x is complete. */
static void layer_stages(zp_pass *p, int l, int tid, int nth, int *sense) {
    const zp_model *m = p->m;
    const zp_config *c = &m->cfg;
    zp_cache *k = p->k;
    zp_scratch *s = &k->s;
    /* "amx" passes of a model with a tile-order copy read the copy (build_tiles) */
    const zp_layer_weights *L = p->tiles ? &m->tlayers[l] : &m->layers[l];
    const int D = c->dim, HD = c->head_dim, NH = c->n_head, NKV = c->n_kv_head, KVD = NKV * HD;
    const int QKV = m->qkv_dim, rows = p->rows, H = c->hidden;
    const int wt = p->tiles ? ZP_WTYPE_BF16_TILES : m->w.wtype;
    const size_t kv_size = (size_t)zp_wtype_size(k->kv_type), SPAD = zp_tiled_len(k->seq_len);
    char *kl = (char *)k->k + (size_t)l * k->n_streams * SPAD * KVD * kv_size;
    char *vl = (char *)k->v + (size_t)l * k->n_streams * SPAD * KVD * kv_size;
    int64_t lo, hi; /* this thread's rows for the row-wise stages */
    zp_share(rows, tid, nth, &lo, &hi);
    const int r0 = (int)lo, r1 = (int)hi;
    /* Counters are zeroed by thread 0 in a stage that nobody takes from them, with a barrier
     * before their next use: the attention's during qkv, each product's a stage after its own. */
#define ZP_RESET(counter)                                                                          \
    if (tid == 0) __atomic_store_n(&(counter), 0, __ATOMIC_RELAXED)

    /* ---- attention: norm, qkv, then per stream group rotary, K/V write and attention */
    ZP_RESET(p->team.cols[ZP_W2].next);
    PROF_STAGE(p->team.timed, ZP_STAGE_NORM1);
    /* swin_norm: the norm moves to the sub-layer's output (residual) */
    const float *xa =
        c->swin_norm ? s->x : norm_rows(p, L->attention_norm, NULL, rows, s->xb, tid, nth, sense);
    PROF_STAGE(p->team.timed, ZP_STAGE_QKV);
    ZP_RESET(p->team.next);
    zp_matmul_out qkv = {s->qkv, QKV, L->wqkv, wt, QKV};
    product(p, ZP_QKV, xa, rows, D, &qkv, 1, p->flags, ZP_POST_NONE, tid, nth);
    team_wait(&p->team, nth, sense);
    PROF_STAGE(p->team.timed, ZP_STAGE_ATTENTION);
    ZP_RESET(p->team.cols[ZP_QKV].next);
    if (nth == 1 && p->att_threads > 1) { /* a team of one (BLAS pass): a region of its own */
#pragma omp parallel num_threads(p->att_threads)
        attend_groups(p, L, kl, vl);
    } else {
        attend_groups(p, L, kl, vl);
    }
    team_wait(&p->team, nth, sense);
    if (tid == 0 && p->cap) capture_layer(p, l);
    PROF_STAGE(p->team.timed, ZP_STAGE_WO);
    zp_matmul_out wo = {s->xb, D, L->wo, wt, D};
    product(p, ZP_WO, s->att, rows, NH * HD, &wo, 1, p->flags, ZP_POST_RESIDUAL, tid, nth);
    residual(p, L->attention_norm, r0, r1, nth, sense);

    /* ---- SwiGLU feed-forward */
    ZP_RESET(p->team.cols[ZP_WO].next);
    PROF_STAGE(p->team.timed, ZP_STAGE_NORM2);
    const float *xf =
        c->swin_norm ? s->x : norm_rows(p, L->ffn_norm, NULL, rows, s->xb, tid, nth, sense);
    PROF_STAGE(p->team.timed, ZP_STAGE_GATE_UP);
    zp_matmul_out gate_up[2] = {{s->h1, H, L->w1, wt, H}, {s->h3, H, L->w3, wt, H}};
    product(p, ZP_GATE_UP, xf, rows, D, gate_up, 2, p->flags | ZP_MATMUL_JOINT, ZP_POST_SILU, tid,
            nth);
    team_wait(&p->team, nth, sense);
    PROF_STAGE(p->team.timed, ZP_STAGE_W2);
    ZP_RESET(p->team.cols[ZP_GATE_UP].next);
    zp_matmul_out w2 = {s->xb, D, L->w2, wt, D};
    product(p, ZP_W2, s->h1, rows, H, &w2, 1, p->flags, ZP_POST_RESIDUAL, tid, nth);
    residual(p, L->ffn_norm, r0, r1, nth, sense);
#undef ZP_RESET
}

/* The output head on thread tid of nth, after the last layer's barrier: the final norm of the
 * logit rows (norm_rows: into s->xl by shares and a barrier, or each thread all of them), then
 * logits2 = xl . output^T by column chunks (the vocabulary is the largest product of a pass). The
 * region's end joins. */
static void head_stage(zp_pass *p, int tid, int nth, int *sense) {
    const zp_model *m = p->m;
    const zp_config *c = &m->cfg;
    zp_scratch *s = &p->k->s;
    PROF_STAGE(p->team.timed, ZP_STAGE_HEAD);
    const float *xl = norm_rows(p, m->w.norm, s->logit_row, p->lrows, s->xl, tid, nth, sense);
    zp_matmul_out out = {s->logits2, c->vocab, p->tiles ? m->toutput : m->w.output,
                         p->tiles ? ZP_WTYPE_BF16_TILES : m->w.wtype, c->vocab};
    product(p, ZP_HEAD, xl, p->lrows, c->dim, &out, 1, p->head_flags, ZP_POST_NONE, tid, nth);
    PROF_WORKED(p->team.timed);
}

zp_status zp_forward(const zp_model *m, zp_cache *k, const zp_query *q, int nq, float cfg_scale,
                     float *logits, zp_capture *cap) {
    const zp_config *c = &m->cfg;
    const int timed = __atomic_load_n(&timers_on, __ATOMIC_ACQUIRE);
    PROF_MARK(timed, -1); /* starts thread 0's clock */
    if (k->m != m) return zp_fail(ZP_ERR_ARG, "cache belongs to another model");
    zp_status st = check_queries(m, k, q, nq);
    if (st) return st;
    if (nq == 0) return ZP_OK;
    if (cap)
        for (int i = 0; i < cap->n; i++)
            if (cap->query[i] < 0 || cap->query[i] >= nq || cap->layer[i] < 0 ||
                cap->layer[i] >= c->n_layer || cap->head[i] < 0 || cap->head[i] >= c->n_head)
                return zp_fail(ZP_ERR_ARG, "attention capture request %d out of range", i);

    const int D = c->dim, HD = c->head_dim, NH = c->n_head, P = c->cls_token_num;
    const int QKV = m->qkv_dim, S = k->seq_len;
    zp_scratch *s = &k->s;

    /* ---- rows: one per query and stream. A guided cache runs the unconditional stream for every
     * query (as LlamaGen does after cfg_interval), so no visible slot is ever missing there. */
    const int nstream = k->guided ? 2 : 1;
    int rows = nq * nstream;
    if ((st = reserve_rows(k, rows))) return st;
    if ((st = zp_reserve((void **)&s->vis, &s->cap_vis, (size_t)nq * S, sizeof(int32_t))))
        return st;
    if ((st = zp_reserve((void **)&s->vis_n, &s->cap_vis_n, (size_t)nq, sizeof(int32_t))))
        return st;
    if ((st = zp_reserve((void **)&s->row_vis, &s->cap_row_vis, (size_t)rows, sizeof(int32_t *))) ||
        (st = zp_reserve((void **)&s->row_nv, &s->cap_row_nv, (size_t)rows, sizeof(int32_t))) ||
        (st = zp_reserve((void **)&s->cursor, &s->cap_cursor, (size_t)rows * c->n_kv_head,
                         sizeof(int32_t))) || /* a run per attention task of a group */
        (st = zp_reserve((void **)&s->grp_rows, &s->cap_grp_rows, (size_t)rows, sizeof(int32_t))) ||
        (st = zp_reserve((void **)&s->grp_start, &s->cap_grp_start, (size_t)rows + 1,
                         sizeof(int32_t))) ||
        (st = zp_reserve((void **)&s->stream_group, &s->cap_stream_group, (size_t)k->n_streams,
                         sizeof(int32_t))))
        return st;
    size_t n_scores;
    if (__builtin_mul_overflow((size_t)rows, (size_t)NH * S, &n_scores))
        return zp_fail(ZP_ERR_NOMEM, "attention scores of %d rows exceed the address space", rows);
    if ((st = zp_reserve((void **)&s->scores, &s->cap_scores, n_scores, sizeof(float)))) return st;

    /* ---- slot states first: visibility is fixed for the whole pass */
    for (int i = 0; i < nq; i++) {
        int32_t *slot = &k->slots[(size_t)q[i].image * S + q[i].pos];
        if (q[i].pos < P)
            *slot = k->prefix_mask[(size_t)q[i].image * P + q[i].pos] ? ZP_SLOT_COMMITTED
                                                                      : ZP_SLOT_MASKED;
        else
            *slot = q[i].chain;
    }
    for (int i = 0; i < nq; i++) s->vis_n[i] = build_visibility(k, &q[i], s->vis + (size_t)i * S);

    int r = 0;
    for (int i = 0; i < nq; i++) {
        for (int u = 0; u < nstream; u++, r++) {
            int stream = k->guided ? 2 * q[i].image + u : q[i].image;
            s->row_query[r] = i;
            s->row_stream[r] = stream;
            if (q[i].pos < P)
                memcpy(s->x + (size_t)r * D, k->prefix + ((size_t)stream * P + q[i].pos) * D,
                       sizeof(float) * D);
            else
                zp_widen(s->x + (size_t)r * D,
                         (const char *)m->w.tok_embeddings +
                             (size_t)q[i].token * D * zp_wtype_size(m->w.wtype),
                         m->w.wtype, D);
        }
    }

    /* ---- rows grouped by stream (counting sort), for the shared-cache attention */
    for (int i = 0; i < rows; i++) {
        s->row_vis[i] = s->vis + (size_t)s->row_query[i] * S;
        s->row_nv[i] = s->vis_n[s->row_query[i]];
        int sh = k->shift[s->row_stream[i]];
        if (sh == 0) continue;
        /* a token-id prefix: the slots before the stream's own prefix are not in its sequence
         * (a query in them, a padding row nobody reads, sees itself only) */
        int j = 0, nv = s->row_nv[i];
        if (q[s->row_query[i]].pos < sh)
            j = nv - 1;
        else
            while (j < nv && s->row_vis[i][j] < sh) j++;
        s->row_vis[i] += j;
        s->row_nv[i] = nv - j;
    }
    int n_groups = 0;
    {
        int32_t *count = s->cursor; /* (rows) scratch reused: streams touched this pass */
        for (int i = 0; i < rows; i++) count[i] = 0;
        int32_t *stream_group = s->stream_group;
        for (int t = 0; t < k->n_streams; t++) stream_group[t] = -1;
        for (int i = 0; i < rows; i++) {
            int t = s->row_stream[i];
            if (stream_group[t] < 0) stream_group[t] = n_groups++;
            count[stream_group[t]]++;
        }
        s->grp_start[0] = 0;
        for (int g = 0; g < n_groups; g++) s->grp_start[g + 1] = s->grp_start[g] + count[g];
        for (int g = 0; g < n_groups; g++) count[g] = s->grp_start[g];
        for (int i = 0; i < rows; i++) s->grp_rows[count[stream_group[s->row_stream[i]]]++] = i;
    }
    /* ---- the rows whose query wants logits: the cond row of every such query, the uncond row
     * only when it is guided */
    int lrows = 0;
    if ((st = zp_reserve((void **)&s->logit_row, &s->cap_logit_row, (size_t)rows, sizeof(int32_t))))
        return st;
    for (int i = 0; i < rows; i++)
        if (q[s->row_query[i]].want_logits &&
            (s->row_stream[i] % nstream == 0 || q[s->row_query[i]].guided))
            s->logit_row[lrows++] = i;
    if ((st = zp_reserve((void **)&s->xl, &s->cap_xl, (size_t)lrows * D, sizeof(float)))) return st;
    if ((st = zp_reserve((void **)&s->logits2, &s->cap_logits2, (size_t)lrows * c->vocab,
                         sizeof(float))))
        return st;

    /* ---- the layers and the head: one thread team for all of them (see "the pass's thread
     * team") */
    /* "amx" read once with the flags: every thread numbers the column groups alike */
    const int tiles = m->tiles != NULL && strcmp(zp_matmul_isa(), "amx") == 0;
    const int tile_flag = tiles ? ZP_MATMUL_TILES : 0;
    zp_pass pass = {.m = m,
                    .k = k,
                    .q = q,
                    .cap = cap,
                    .rows = rows,
                    .n_groups = n_groups,
                    .flags = zp_matmul_flags(rows) | tile_flag,
                    .scale = 1.0f / sqrtf((float)HD),
                    .lrows = lrows,
                    .head_flags = zp_matmul_flags(lrows) | tile_flag,
                    .tiles = tiles,
                    .attend = attend_pick(k->kv_type)};
    /* the team only when the largest product or the attention is worth waking threads for */
    size_t att_work = 0;          /* multiply-adds of one layer's attention */
    size_t big = (size_t)D * QKV; /* K * N of the layer's largest product */
    for (int i = 0; i < rows; i++) att_work += (size_t)s->vis_n[s->row_query[i]] * NH * HD * 2;
    if ((size_t)NH * HD * D > big) big = (size_t)NH * HD * D;
    if ((size_t)2 * D * c->hidden > big) big = (size_t)2 * D * c->hidden;    /* w1 and w3 */
    if (lrows > 0 && (size_t)D * c->vocab > big) big = (size_t)D * c->vocab; /* the head */
    /* float32 products that go to BLAS (opt-in: zp_set_blas_min_rows) bring their own threads,
     * and OpenBLAS must not be called from inside an OpenMP region (its pthreads build warns
     * and may hang): such a pass runs its layers on a team of one, sgemm with all of its threads
     * and the attention in a region of its own, as before the team */
    int blas = (pass.flags & ZP_MATMUL_BLAS) && m->w.wtype == ZP_WTYPE_F32;
    int threads = zp_get_num_threads(), team = threads;
    if (blas ||
        (big * (size_t)(rows + 4) < ZP_PARALLEL_MIN_WORK && att_work < ZP_PARALLEL_MIN_WORK))
        team = 1;
    pass.att_threads = team == 1 && att_work >= ZP_PARALLEL_MIN_WORK ? threads : 1;
    /* fewer stream groups than threads (a one-image pass has two under CFG): each group's K/V
     * heads cut into runs, so that every thread gets attention work */
    int workers = team > 1 ? team : pass.att_threads;
    pass.splits = 1;
    if (workers > n_groups && att_work >= ZP_PARALLEL_MIN_WORK) {
        pass.splits = (workers + n_groups - 1) / n_groups;
        if (pass.splits > c->n_kv_head) pass.splits = c->n_kv_head;
    }
    /* passes of few rows: every thread norms all rows itself (norm_rows), saving two barriers a
     * layer and one in the head */
    pass.norm_all = team > 1 && (size_t)rows * D <= ZP_NORM_ALL_ELEMS;
    if (pass.norm_all &&
        (st = zp_reserve((void **)&s->xn, &s->cap_xn, (size_t)team * rows * D, sizeof(float))))
        return st;
    pass.team.timed = timed;
    if (timed) {
        prof_mark(ZP_TIMER_SETUP);
        pass.team.open_ns = prof_last;
    }
#pragma omp parallel num_threads(team) if (team > 1)
    {
        int tid = omp_get_thread_num(), nth = omp_get_num_threads(), sense = 0;
        if (pass.team.timed) {
            prof_last = pass.team.open_ns;
            prof_mark(ZP_TIMER_ENTER);
        }
        for (int l = 0; l < c->n_layer; l++) layer_stages(&pass, l, tid, nth, &sense);
        if (pass.lrows > 0) head_stage(&pass, tid, nth, &sense);
    }
    PROF_MARK(timed, ZP_TIMER_JOIN);

    /* ---- combine the two streams: uncond + (cond - uncond) * cfg_scale */
    int out_row = 0, src = 0;
    int bad = 0;
    for (int i = 0; i < nq; i++) {
        if (!q[i].want_logits) continue;
        float *dst = logits + (size_t)out_row * c->vocab;
        const float *cond = s->logits2 + (size_t)src * c->vocab;
        if (q[i].guided) {
            const float *unc = cond + c->vocab;
            for (int v = 0; v < c->vocab; v++) dst[v] = unc[v] + (cond[v] - unc[v]) * cfg_scale;
            src += 2;
        } else {
            memcpy(dst, cond, sizeof(float) * c->vocab);
            src += 1;
        }
        for (int v = 0; v < c->vocab; v++) bad |= !isfinite(dst[v]);
        out_row++;
    }
    prof_end(timed);
    if (bad) return zp_fail(ZP_ERR_NONFINITE, "the model produced non-finite logits");
    return ZP_OK;
}
