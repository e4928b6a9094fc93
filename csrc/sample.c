/* sample.c -- Philox4x32-10 and the sampling distribution (temperature, top-k, top-p). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* ================================================================ Philox4x32-10 */

static inline void mulhilo32(uint32_t a, uint32_t b, uint32_t *hi, uint32_t *lo) {
    uint64_t p = (uint64_t)a * b;
    *hi = (uint32_t)(p >> 32);
    *lo = (uint32_t)p;
}

void zp_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]) {
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
    uint32_t k0 = key[0], k1 = key[1];
    for (int round = 0; round < 10; round++) {
        uint32_t hi0, lo0, hi1, lo1;
        mulhilo32(0xD2511F53u, c0, &hi0, &lo0);
        mulhilo32(0xCD9E8D57u, c2, &hi1, &lo1);
        uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
        c0 = n0;
        c1 = n1;
        c2 = n2;
        c3 = n3;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    out[0] = c0;
    out[1] = c1;
    out[2] = c2;
    out[3] = c3;
}

double zp_uniform(uint64_t seed, uint32_t sample_id, uint32_t pos, uint32_t draw) {
    uint32_t ctr[4] = {draw, pos, sample_id, 0}, key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    uint32_t out[4];
    zp_philox4x32_10(ctr, key, out);
    uint64_t a = out[0] >> 5, b = out[1] >> 6; /* 27 + 26 = 53 random bits */
    return (a * 67108864.0 + b) / 9007199254740992.0;
}

/* ================================================================ sampling parameters */

zp_sampling zp_sampling_default(void) {
    zp_sampling sp = {.cfg_scale = 4.0f,
                      .cfg_interval = -1,
                      .temperature = 1.0f,
                      .top_k = 0,
                      .top_p = 1.0f,
                      .seed = 0};
    return sp;
}

zp_status zp_sampling_check(const zp_sampling *sp) {
    if (!isfinite(sp->cfg_scale)) return zp_fail(ZP_ERR_ARG, "cfg_scale must be finite");
    if (sp->cfg_interval < -1) return zp_fail(ZP_ERR_ARG, "cfg_interval must be >= -1");
    if (!(sp->temperature >= 0.f) || !isfinite(sp->temperature))
        return zp_fail(ZP_ERR_ARG, "temperature must be finite and >= 0");
    if (sp->top_k < 0) return zp_fail(ZP_ERR_ARG, "top_k must be >= 0");
    if (!(sp->top_p > 0.f && sp->top_p <= 1.f))
        return zp_fail(ZP_ERR_ARG, "top_p must be in (0, 1]");
    return ZP_OK;
}

/* ================================================================ the sampling distribution */

/* k-th largest value (1-based) of a[0..n), by quickselect; a is reordered. */
static float kth_largest(float *a, int n, int k) {
    int lo = 0, hi = n - 1, target = k - 1;
    while (lo < hi) {
        float pivot = a[lo + (hi - lo) / 2];
        int i = lo, j = hi;
        while (i <= j) {
            while (a[i] > pivot) i++;
            while (a[j] < pivot) j--;
            if (i <= j) {
                float t = a[i];
                a[i] = a[j];
                a[j] = t;
                i++;
                j--;
            }
        }
        if (target <= j)
            hi = j;
        else if (target >= i)
            lo = i;
        else
            return a[target];
    }
    return a[target];
}

typedef struct {
    double p;
    int idx;
} prob_idx;

static int by_prob_desc(const void *x, const void *y) {
    const prob_idx *a = x, *b = y;
    if (a->p > b->p) return -1;
    if (a->p < b->p) return 1;
    return a->idx - b->idx; /* stable: lower index first */
}

size_t zp_sampling_work_size(int vocab) {
    return sizeof(prob_idx) * (size_t)vocab;
}

void zp_sampling_probs(const zp_sampling *sp, const float *logits, int vocab, double *probs,
                       void *work) {
    if (sp->temperature == 0.f) { /* greedy: one-hot at the argmax, lowest index on ties */
        int best = 0;
        for (int v = 1; v < vocab; v++)
            if (logits[v] > logits[best]) best = v;
        memset(probs, 0, sizeof(double) * vocab);
        probs[best] = 1.0;
        return;
    }
    float cut = -INFINITY;
    if (sp->top_k > 0 && sp->top_k < vocab) {
        float *copy = work;
        memcpy(copy, logits, sizeof(float) * vocab);
        cut = kth_largest(copy, vocab, sp->top_k);
    }
    double zmax = -INFINITY, T = sp->temperature;
    for (int v = 0; v < vocab; v++)
        if (logits[v] >= cut && logits[v] / T > zmax) zmax = logits[v] / T;
    double total = 0.0;
    for (int v = 0; v < vocab; v++) {
        probs[v] = logits[v] >= cut ? exp(logits[v] / T - zmax) : 0.0;
        total += probs[v];
    }
    for (int v = 0; v < vocab; v++) probs[v] /= total;
    if (sp->top_p >= 1.f) return;
    /* top-p: keep sorted token i when i == 0 or the mass before it is <= p */
    prob_idx *order = work;
    int n = 0;
    for (int v = 0; v < vocab; v++)
        if (probs[v] > 0) order[n++] = (prob_idx){probs[v], v};
    qsort(order, n, sizeof(prob_idx), by_prob_desc);
    double before = 0.0, kept = 0.0;
    for (int i = 0; i < n; i++) {
        if (i > 0 && before > sp->top_p)
            probs[order[i].idx] = 0.0;
        else
            kept += order[i].p;
        before += order[i].p;
    }
    for (int v = 0; v < vocab; v++) probs[v] /= kept;
}

void zp_sampling_probs_range(const zp_sampling *sp, const float *logits, int vocab, int lo, int hi,
                             double *probs, void *work) {
    if (lo == 0 && (hi == 0 || hi == vocab)) {
        zp_sampling_probs(sp, logits, vocab, probs, work);
        return;
    }
    memset(probs, 0, sizeof(double) * vocab);
    zp_sampling_probs(sp, logits + lo, hi - lo, probs + lo, work);
}

int zp_draw(const double *probs, int vocab, double u) {
    double total = 0.0;
    int last = 0;
    for (int v = 0; v < vocab; v++) {
        total += probs[v];
        if (probs[v] > 0) last = v;
    }
    double target = u * total, acc = 0.0;
    for (int v = 0; v < vocab; v++) {
        if (probs[v] <= 0) continue;
        acc += probs[v];
        if (acc > target) return v;
    }
    return last;
}
