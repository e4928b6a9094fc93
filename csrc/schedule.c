/* schedule.c -- generation sessions: the ZipAR frontier scheduler, row starts (exact, proxy,
 * end-of-row), refeeds, the adaptive draft/verify rejection test, and counter-based sampling. */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "internal.h"
#include "matmul.h"

/* What a pass does with a logits row. */
typedef enum {
    I_SAMPLE = 0, /* draw the cell's token (draw 0) and commit it */
    I_DRAFT = 1,  /* adaptive: draw the row start as a draft, remember its distribution */
    I_VERIFY = 2, /* adaptive: rejection test of the draft against the new distribution */
} intent_kind;

typedef struct {
    int kind, image, row, col;
    int logit;   /* logits row of the decode (or verification) query */
    int pipe;    /* VERIFY: logits row of the pipelined draft query, -1 if none */
    int pipe_q;  /* VERIFY: query index of the pipelined draft feed */
    int start_q; /* query index of a tentative row-start query whose slot is committed on
                      start (E = 1 end-of-row feeds in adaptive mode), -1 if none */
    int final;   /* VERIFY: the last verification (row above complete or max_window) */
} intent;

struct zp_session {
    const zp_model *m;
    zp_cache *cache;
    zp_sampling sp;
    zp_policy pol;
    int B, H, W, E, P, V;
    int32_t *tokens;      /* (B, H, W) -1 = undecoded */
    uint8_t *fed;         /* (B, H, W) 1 once the cell's real token is in its KV slot */
    int32_t *progress;    /* (B, H) decoded cells per row (always a prefix of the row) */
    int32_t *row_start;   /* (B, H) pass at which (r, 0) was decoded, -1 before */
    uint32_t *sample_ids; /* (B,) */
    int32_t *draft_row;   /* (B,) adaptive: row whose start is drafted, -1 none */
    int32_t *draft_tok;   /* (B,) */
    int32_t *n_verify;    /* (B,) verifications of the current draft so far */
    double *draft_q;      /* (B, V) distribution the current draft was drawn from */
    int32_t next_chain;
    zp_stats st;
    int32_t *pass_queries;
    size_t cap_pq;
    int64_t *image_passes;  /* (B,) 1 + last pass with a query of the image */
    int64_t *image_queries; /* (B,) queries of the image, all passes */
    int trace_on;
    int32_t *trace;
    size_t n_trace, cap_trace;
    /* per-pass buffers, grown on demand */
    zp_query *q;
    size_t cap_q, nq;
    int32_t *q_role;
    size_t cap_role;
    intent *it;
    size_t cap_it, nit;
    int n_logits;
    float *logits;
    size_t cap_logits;
    double *probs; /* (threads, 2, V) */
    size_t cap_probs;
    unsigned char *work; /* (threads, work bytes) */
    size_t cap_work;
};

/* ================================================================ small helpers */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static inline int32_t *tok(zp_session *s, int b, int r, int c) {
    return &s->tokens[((size_t)b * s->H + r) * s->W + c];
}
static inline uint8_t *fedp(zp_session *s, int b, int r, int c) {
    return &s->fed[((size_t)b * s->H + r) * s->W + c];
}
static inline int32_t *prog(zp_session *s, int b, int r) {
    return &s->progress[(size_t)b * s->H + r];
}
static inline int cellpos(const zp_session *s, int r, int c) {
    return s->P + r * (s->W + s->E) + c;
}
static inline int guided_at(const zp_session *s, int pos) {
    /* the query at pos predicts sequence index n = pos + 1 - P; LlamaGen's cfg_interval keeps
     * guidance for n <= cfg_interval + 1 (token 0 always guided) */
    if (!zp_sampling_guided(&s->sp) || !s->cache->guided) return 0;
    return s->sp.cfg_interval < 0 || pos + 1 - s->P <= s->sp.cfg_interval + 1;
}

static zp_status push_query(zp_session *s, int b, int pos, int token, int chain, int logits,
                            int role, int *logit_row) {
    zp_status st;
    if ((st = zp_reserve((void **)&s->q, &s->cap_q, s->nq + 1, sizeof(zp_query)))) return st;
    if ((st = zp_reserve((void **)&s->q_role, &s->cap_role, s->nq + 1, sizeof(int32_t)))) return st;
    s->q[s->nq] = (zp_query){.image = b,
                             .pos = pos,
                             .token = token,
                             .chain = chain,
                             .want_logits = logits,
                             .guided = guided_at(s, pos)};
    s->q_role[s->nq] = role;
    s->nq++;
    if (logits && logit_row) *logit_row = s->n_logits;
    if (logits) s->n_logits++;
    return ZP_OK;
}

static zp_status push_intent(zp_session *s, intent in) {
    zp_status st = zp_reserve((void **)&s->it, &s->cap_it, s->nit + 1, sizeof(intent));
    if (st) return st;
    s->it[s->nit++] = in;
    return ZP_OK;
}

static int new_chain(zp_session *s) {
    if (s->next_chain >= INT32_MAX - 1) s->next_chain = 1; /* old chains are long dead by then */
    return s->next_chain++;
}

/* The stand-in token for the missing end of row r-1 when row r starts early (E = 0):
 * "above": the latest decoded token of row r-2 (row 0 when r-1 = 0); "left": of row r-1;
 * "const": pol.proxy_token (checked at session creation to be a grid token).
 * Rows with nothing decoded are skipped upwards; (0, 0) is always decoded by then. */
static int proxy_token(zp_session *s, int b, int r) {
    if (s->pol.proxy == ZP_PROXY_CONST) return s->pol.proxy_token;
    int src = s->pol.proxy == ZP_PROXY_LEFT ? r - 1 : (r - 2 < 0 ? 0 : r - 2);
    while (src > 0 && *prog(s, b, src) == 0) src--;
    return *tok(s, b, src, *prog(s, b, src) - 1);
}

/* ================================================================ life cycle */

/* The prefix of a session: embeddings (zp_cache_new) or token ids (zp_cache_new_ids). */
typedef struct {
    const float *cond, *uncond;
    const uint8_t *mask;
    const int32_t *ids_cond, *len_cond, *ids_uncond, *len_uncond;
} prefix_args;

static zp_status session_new(const zp_model *m, int n_images, const prefix_args *pa,
                             const uint32_t *sample_ids, const zp_sampling *sp,
                             const zp_policy *pol, int record_trace, zp_session **out);

zp_status zp_session_new(const zp_model *m, int n_images, const float *prefix_cond,
                         const float *prefix_uncond, const uint8_t *prefix_mask,
                         const uint32_t *sample_ids, const zp_sampling *sp, const zp_policy *pol,
                         int record_trace, zp_session **out) {
    prefix_args pa = {.cond = prefix_cond, .uncond = prefix_uncond, .mask = prefix_mask};
    return session_new(m, n_images, &pa, sample_ids, sp, pol, record_trace, out);
}

zp_status zp_session_new_ids(const zp_model *m, int n_images, const int32_t *ids_cond,
                             const int32_t *len_cond, const int32_t *ids_uncond,
                             const int32_t *len_uncond, const uint32_t *sample_ids,
                             const zp_sampling *sp, const zp_policy *pol, int record_trace,
                             zp_session **out) {
    prefix_args pa = {.ids_cond = ids_cond,
                      .len_cond = len_cond,
                      .ids_uncond = ids_uncond,
                      .len_uncond = len_uncond};
    return session_new(m, n_images, &pa, sample_ids, sp, pol, record_trace, out);
}

zp_status zp_session_set_kv_type(zp_session *s, int kv_type) {
    return zp_cache_set_kv_type(s->cache, kv_type);
}

size_t zp_session_kv_bytes(const zp_session *s) {
    return zp_cache_kv_bytes(s->cache);
}

static zp_status session_new(const zp_model *m, int n_images, const prefix_args *pa,
                             const uint32_t *sample_ids, const zp_sampling *sp,
                             const zp_policy *pol, int record_trace, zp_session **out) {
    *out = NULL;
    const zp_config *c = &m->cfg;
    zp_status st = zp_sampling_check(sp);
    if (st) return st;
    if (pol->kind < ZP_POLICY_RASTER || pol->kind > ZP_POLICY_EXTERNAL)
        return zp_fail(ZP_ERR_ARG, "unknown policy kind %d", pol->kind);
    if (pol->kind == ZP_POLICY_ZIPAR && (pol->window < 1 || pol->window > c->grid_w))
        return zp_fail(ZP_ERR_ARG, "window %d outside [1, W=%d]", pol->window, c->grid_w);
    if (pol->kind == ZP_POLICY_ADAPTIVE) {
        if (pol->min_window < 1 || pol->min_window > c->grid_w)
            return zp_fail(ZP_ERR_ARG, "min_window %d outside [1, W=%d]", pol->min_window,
                           c->grid_w);
        if (pol->max_window < pol->min_window || pol->max_window > c->grid_w)
            return zp_fail(ZP_ERR_ARG, "max_window %d outside [min_window=%d, W=%d]",
                           pol->max_window, pol->min_window, c->grid_w);
        if (!(pol->threshold >= 0.0 && pol->threshold <= 1.0))
            return zp_fail(ZP_ERR_ARG, "threshold must be in [0, 1]");
    }
    if (pol->schedule != ZP_SCHEDULE_EAGER && pol->schedule != ZP_SCHEDULE_PAPER)
        return zp_fail(ZP_ERR_ARG, "unknown schedule %d", pol->schedule);
    if (pol->proxy != ZP_PROXY_ABOVE && pol->proxy != ZP_PROXY_LEFT && pol->proxy != ZP_PROXY_CONST)
        return zp_fail(ZP_ERR_ARG, "unknown proxy %d", pol->proxy);
    if (pol->proxy == ZP_PROXY_CONST) { /* the token is fed as an embedding row: in range */
        int lo = c->vis_lo || c->vis_hi ? c->vis_lo : 0;
        int hi = c->vis_lo || c->vis_hi ? c->vis_hi : c->vocab;
        if (pol->proxy_token < lo || pol->proxy_token >= hi)
            return zp_fail(ZP_ERR_ARG, "proxy_token %d outside the image tokens [%d, %d)",
                           pol->proxy_token, lo, hi);
    }

    zp_session *s = calloc(1, sizeof *s);
    if (!s) return zp_fail(ZP_ERR_NOMEM, "cannot allocate session");
    s->m = m;
    s->sp = *sp;
    s->pol = *pol;
    s->B = n_images;
    s->H = c->grid_h;
    s->W = c->grid_w;
    s->E = c->eor;
    s->P = c->cls_token_num;
    s->V = c->vocab;
    s->next_chain = 1;
    s->trace_on = record_trace;
    int guided = zp_sampling_guided(sp);
    if (pa->ids_cond)
        st = zp_cache_new_ids(m, n_images, guided, pa->ids_cond, pa->len_cond, pa->ids_uncond,
                              pa->len_uncond, &s->cache);
    else
        st = zp_cache_new(m, n_images, guided, pa->cond, pa->uncond, pa->mask, &s->cache);
    if (st) {
        free(s);
        return st;
    }
    size_t cells = (size_t)n_images * s->H * s->W, rows = (size_t)n_images * s->H;
    s->tokens = malloc(sizeof(int32_t) * cells);
    s->fed = calloc(cells, 1);
    s->progress = calloc(rows, sizeof(int32_t));
    s->row_start = malloc(sizeof(int32_t) * rows);
    s->sample_ids = malloc(sizeof(uint32_t) * n_images);
    s->draft_row = malloc(sizeof(int32_t) * n_images);
    s->draft_tok = calloc(n_images, sizeof(int32_t));
    s->n_verify = calloc(n_images, sizeof(int32_t));
    s->draft_q = pol->kind == ZP_POLICY_ADAPTIVE ? malloc(sizeof(double) * n_images * s->V) : NULL;
    s->image_passes = calloc(n_images, sizeof(int64_t));
    s->image_queries = calloc(n_images, sizeof(int64_t));
    if (!s->tokens || !s->fed || !s->progress || !s->row_start || !s->sample_ids || !s->draft_row ||
        !s->draft_tok || !s->n_verify || !s->image_passes || !s->image_queries ||
        (pol->kind == ZP_POLICY_ADAPTIVE && !s->draft_q)) {
        zp_session_free(s);
        return zp_fail(ZP_ERR_NOMEM, "cannot allocate session state");
    }
    for (size_t i = 0; i < cells; i++) s->tokens[i] = -1;
    for (size_t i = 0; i < rows; i++) s->row_start[i] = -1;
    for (int b = 0; b < n_images; b++) {
        s->sample_ids[b] = sample_ids ? sample_ids[b] : (uint32_t)b;
        s->draft_row[b] = -1;
    }
    *out = s;
    return ZP_OK;
}

void zp_session_free(zp_session *s) {
    if (!s) return;
    zp_cache_free(s->cache);
    free(s->tokens);
    free(s->fed);
    free(s->progress);
    free(s->row_start);
    free(s->sample_ids);
    free(s->draft_row);
    free(s->draft_tok);
    free(s->n_verify);
    free(s->draft_q);
    free(s->pass_queries);
    free(s->trace);
    free(s->q);
    free(s->q_role);
    free(s->it);
    free(s->logits);
    free(s->probs);
    free(s->work);
    free(s->image_passes);
    free(s->image_queries);
    free(s);
}

int zp_session_done(const zp_session *s) {
    for (size_t i = 0; i < (size_t)s->B * s->H; i++)
        if (s->progress[i] < s->W) return 0;
    return 1;
}

const int32_t *zp_session_tokens(const zp_session *s) {
    return s->tokens;
}
const int32_t *zp_session_progress(const zp_session *s) {
    return s->progress;
}
const int32_t *zp_session_row_start(const zp_session *s) {
    return s->row_start;
}
const zp_stats *zp_session_stats(const zp_session *s) {
    return &s->st;
}
const int32_t *zp_session_pass_queries(const zp_session *s) {
    return s->pass_queries;
}
const int64_t *zp_session_image_passes(const zp_session *s) {
    return s->image_passes;
}
const int64_t *zp_session_image_queries(const zp_session *s) {
    return s->image_queries;
}
const int32_t *zp_session_trace(const zp_session *s, int64_t *n) {
    *n = (int64_t)s->n_trace;
    return s->trace;
}

/* ================================================================ planning one pass */

/* Queries that decode cell (r, c) of image b (or draft / verify its row start). */
static zp_status plan_decode(zp_session *s, int b, int r, int c, int kind, int final) {
    zp_status st;
    intent in = {.kind = kind,
                 .image = b,
                 .row = r,
                 .col = c,
                 .logit = -1,
                 .pipe = -1,
                 .pipe_q = -1,
                 .start_q = -1,
                 .final = final};
    if (r == 0 && c == 0) { /* prefill: every conditioning position, logits from the last */
        for (int p = 0; p < s->P; p++)
            if ((st = push_query(s, b, p, 0, 0, p == s->P - 1, ZP_ROLE_PREFIX, &in.logit)))
                return st;
    } else if (c > 0) {
        *fedp(s, b, r, c - 1) = 1;
        if ((st = push_query(s, b, cellpos(s, r, c - 1), *tok(s, b, r, c - 1), 0, 1, ZP_ROLE_SAMPLE,
                             &in.logit)))
            return st;
    } else if (s->E) { /* end-of-row token of row r-1: fixed and known */
        int chain = 0;
        if (s->pol.kind == ZP_POLICY_ADAPTIVE && *prog(s, b, r - 1) < s->W) chain = new_chain(s);
        if (chain) in.start_q = (int)s->nq;
        if ((st = push_query(s, b, cellpos(s, r - 1, s->W), s->m->cfg.eor_token, chain, 1,
                             kind == I_VERIFY ? ZP_ROLE_VERIFY : ZP_ROLE_EOR, &in.logit)))
            return st;
    } else if (*prog(s, b, r - 1) == s->W) { /* the real end of the row above exists */
        *fedp(s, b, r - 1, s->W - 1) = 1;
        if ((st = push_query(s, b, cellpos(s, r - 1, s->W - 1), *tok(s, b, r - 1, s->W - 1), 0, 1,
                             kind == I_VERIFY ? ZP_ROLE_VERIFY : ZP_ROLE_SAMPLE, &in.logit)))
            return st;
    } else { /* stand-in for the missing end of row r-1, visible only to its own query */
        s->st.proxies++;
        if ((st = push_query(s, b, cellpos(s, r - 1, s->W - 1), proxy_token(s, b, r), new_chain(s),
                             1, kind == I_VERIFY ? ZP_ROLE_VERIFY : ZP_ROLE_PROXY, &in.logit)))
            return st;
    }
    /* pipelining: feed the draft in its own chain to predict (r, 1) in the same pass */
    if (kind == I_VERIFY && s->W > 1 &&
        *prog(s, b, r - 1) >= (1 + s->pol.min_window < s->W ? 1 + s->pol.min_window : s->W)) {
        in.pipe_q = (int)s->nq;
        if ((st = push_query(s, b, cellpos(s, r, 0), s->draft_tok[b], new_chain(s), 1,
                             ZP_ROLE_DRAFT, &in.pipe)))
            return st;
    }
    return push_intent(s, in);
}

/* Real tokens whose slot is still empty although nothing will feed them as a decode input:
 * the successor cell is already decoded (a row started early), or the cell ends a row of an
 * E = 1 grid (its successor is the inserted end-of-row token). Logits are not needed. */
static zp_status plan_refeeds(zp_session *s, int b) {
    for (int r = 0; r < s->H; r++) {
        int n = *prog(s, b, r);
        for (int c = 0; c < n; c++) {
            if (*fedp(s, b, r, c) || (r == s->H - 1 && c == s->W - 1)) continue;
            int succ_decoded;
            if (c < s->W - 1)
                succ_decoded = c + 1 < n;
            else
                succ_decoded = s->E ? 1 : *prog(s, b, r + 1) > 0;
            if (!succ_decoded) continue;
            *fedp(s, b, r, c) = 1;
            if (!(s->E && c == s->W - 1)) s->st.refeeds++;
            zp_status st =
                push_query(s, b, cellpos(s, r, c), *tok(s, b, r, c), 0, 0, ZP_ROLE_REFEED, NULL);
            if (st) return st;
        }
    }
    return ZP_OK;
}

/* Window rule: cell (r, c) may be decoded once row r-1 holds columns up to c + window - 1. */
static int window_ok(const zp_session *s, int b, int r, int c, int window) {
    if (r == 0) return 1;
    int need = c + window < s->W ? c + window : s->W;
    return s->progress[(size_t)b * s->H + r - 1] >= need;
}

/* The built-in policies' choice for image b in this pass. */
static zp_status plan_builtin(zp_session *s, int b) {
    const zp_policy *pol = &s->pol;
    int window = pol->kind == ZP_POLICY_ZIPAR      ? pol->window
                 : pol->kind == ZP_POLICY_ADAPTIVE ? pol->min_window
                                                   : s->W;
    zp_status st;
    for (int r = 0; r < s->H; r++) {
        int c = *prog(s, b, r);
        if (c >= s->W) continue;
        if (r == 0) {
            if ((st = plan_decode(s, b, 0, c, I_SAMPLE, 0))) return st;
            continue;
        }
        int above = *prog(s, b, r - 1);
        if (c > 0) {
            if (window_ok(s, b, r, c, window) && (st = plan_decode(s, b, r, c, I_SAMPLE, 0)))
                return st;
            continue;
        }
        /* a row start */
        int start_window = (pol->schedule == ZP_SCHEDULE_PAPER && r == 1) ? s->W : window;
        if (pol->kind != ZP_POLICY_ADAPTIVE) {
            if (above >= start_window && (st = plan_decode(s, b, r, 0, I_SAMPLE, 0))) return st;
            break; /* rows below cannot start before this one */
        }
        if (pol->threshold >= 1.0) { /* every draft would be accepted: no verification */
            if (above >= start_window) {
                if (above < s->W) {
                    s->st.drafts_proposed++;
                    s->st.drafts_accepted++;
                }
                if ((st = plan_decode(s, b, r, 0, I_SAMPLE, 0))) return st;
            }
        } else if (s->draft_row[b] == r) {
            int final = above >= s->W || above >= pol->max_window;
            if ((st = plan_decode(s, b, r, 0, I_VERIFY, final))) return st;
        } else if (above >= start_window) {
            int exact_or_last = above >= s->W || above >= pol->max_window;
            if ((st = plan_decode(s, b, r, 0, exact_or_last ? I_SAMPLE : I_DRAFT, 0))) return st;
        }
        break;
    }
    return ZP_OK;
}

/* ================================================================ running one pass */

/* Draws for intent i; results are applied serially afterwards (no shared writes here). */
typedef struct {
    int token, token2, accepted;
} outcome;

/* Room for this pass: logits, per-thread probability rows, and in `work` the intents' outcomes
 * followed by per-thread sampling scratch (returned offset, rounded up for 16-byte alignment).
 * nthreads: the pass's thread count, read once by execute() (the sampling loop uses the same). */
static zp_status reserve_pass_buffers(zp_session *s, int nthreads, size_t *scratch_offset) {
    zp_status st;
    if ((st = zp_reserve((void **)&s->logits, &s->cap_logits, (size_t)s->n_logits * s->V,
                         sizeof(float))))
        return st;
    if ((st = zp_reserve((void **)&s->probs, &s->cap_probs, (size_t)nthreads * 2 * s->V,
                         sizeof(double))))
        return st;
    *scratch_offset = (s->nit * sizeof(outcome) + 15) & ~(size_t)15;
    return zp_reserve((void **)&s->work, &s->cap_work,
                      *scratch_offset + (size_t)nthreads * zp_sampling_work_size(s->V), 1);
}

static void commit_cell(zp_session *s, int b, int r, int c, int token) {
    *tok(s, b, r, c) = token;
    (*prog(s, b, r))++;
    if (c == 0) s->row_start[(size_t)b * s->H + r] = (int32_t)s->st.passes;
    s->st.tokens_decoded++;
}

static void set_slot(zp_session *s, int b, int pos, int32_t state) {
    s->cache->slots[(size_t)b * s->cache->seq_len + pos] = state;
}

/* The sampling distribution of a grid cell: only the model's image tokens are allowed. */
static void cell_probs(const zp_session *s, const float *lg, double *p, void *work) {
    const zp_config *c = &s->m->cfg;
    zp_sampling_probs_range(&s->sp, lg, s->V, c->vis_lo, c->vis_hi, p, work);
}

static void decide(zp_session *s, const intent *in, outcome *o, double *p, double *p2, void *work) {
    const float *lg = s->logits + (size_t)in->logit * s->V;
    uint32_t sid = s->sample_ids[in->image];
    int pos = cellpos(s, in->row, in->col);
    cell_probs(s, lg, p, work);
    o->token2 = -1;
    o->accepted = 0;
    if (in->kind != I_VERIFY) {
        o->token = zp_draw(p, s->V, zp_uniform(s->sp.seed, sid, (uint32_t)pos, 0));
        if (in->kind == I_DRAFT)
            memcpy(s->draft_q + (size_t)in->image * s->V, p, sizeof(double) * s->V);
        return;
    }
    /* rejection test of draft x ~ q against p: accept when u < min(1, p(x)/q(x) / (1 - tau)) */
    int k = s->n_verify[in->image] + 1, x = s->draft_tok[in->image];
    const double *q = s->draft_q + (size_t)in->image * s->V;
    double u = zp_uniform(s->sp.seed, sid, (uint32_t)pos, (uint32_t)(2 * k - 1));
    double tau = s->pol.threshold, ratio = q[x] > 0 ? p[x] / q[x] : 0.0;
    o->accepted = tau >= 1.0 || u < (ratio / (1.0 - tau) < 1.0 ? ratio / (1.0 - tau) : 1.0);
    if (o->accepted) {
        o->token = x;
        if (in->pipe >= 0) {
            cell_probs(s, s->logits + (size_t)in->pipe * s->V, p2, work);
            o->token2 =
                zp_draw(p2, s->V, zp_uniform(s->sp.seed, sid, (uint32_t)cellpos(s, in->row, 1), 0));
        }
        return;
    }
    /* rejected: resample from the residual norm(max(0, p - q)); it becomes the next draft */
    double total = 0.0;
    for (int v = 0; v < s->V; v++) {
        p2[v] = p[v] > q[v] ? p[v] - q[v] : 0.0;
        total += p2[v];
    }
    double u2 = zp_uniform(s->sp.seed, sid, (uint32_t)pos, (uint32_t)(2 * k));
    o->token = total > 0 ? zp_draw(p2, s->V, u2) : zp_draw(p, s->V, u2);
    /* the new draft is an exact sample of p, so p is its proposal distribution from now on
     * (only this image's intent touches its row of draft_q) */
    if (!in->final) memcpy((double *)q, p, sizeof(double) * s->V);
}

static void record_trace(zp_session *s) {
    if (!s->trace_on) return;
    if (zp_reserve((void **)&s->trace, &s->cap_trace, (s->n_trace + s->nq) * 6, sizeof(int32_t)))
        return; /* the trace is best effort; generation goes on */
    for (size_t i = 0; i < s->nq; i++) {
        int32_t *t = s->trace + s->n_trace * 6;
        int rel = s->q[i].pos - s->P;
        t[0] = (int32_t)s->st.passes;
        t[1] = s->q[i].image;
        t[2] = rel < 0 ? -1 : rel / (s->W + s->E);
        t[3] = rel < 0 ? s->q[i].pos : rel % (s->W + s->E);
        t[4] = s->q_role[i];
        t[5] = rel < 0 ? -1 : s->q[i].token;
        s->n_trace++;
    }
}

/* Runs the planned queries and applies the intents. */
static zp_status execute(zp_session *s) {
    zp_status st;
    if (s->nit == 0 && s->nq == 0)
        return zp_fail(ZP_ERR_STATE, "the pass decodes nothing (the policy is stuck)");
    size_t scratch_offset;
    /* the thread count is read once per pass: zp_set_num_threads from another thread must not
     * let the loop below run more threads than the per-thread buffers were sized for */
    const int nthreads = zp_get_num_threads();
    if ((st = reserve_pass_buffers(s, nthreads, &scratch_offset))) return st;
    double t0 = now_s();
    st = zp_forward(s->m, s->cache, s->q, (int)s->nq, s->sp.cfg_scale, s->logits, NULL);
    s->st.forward_seconds += now_s() - t0;
    if (st) return st;
    record_trace(s);
    outcome *out = (outcome *)s->work;
    unsigned char *wbase = s->work + scratch_offset;
    size_t wsz = zp_sampling_work_size(s->V);
    double t_sample = now_s();
#pragma omp parallel for schedule(dynamic, 1)                                                      \
    num_threads(nthreads) if ((size_t)s->nit * s->V >= 65536)
    for (int i = 0; i < (int)s->nit; i++) {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        double *p = s->probs + (size_t)tid * 2 * s->V;
        decide(s, &s->it[i], &out[i], p, p + s->V, wbase + (size_t)tid * wsz);
    }
    s->st.sample_seconds += now_s() - t_sample;
    /* apply serially, in intent order */
    for (size_t i = 0; i < s->nit; i++) {
        const intent *in = &s->it[i];
        const outcome *o = &out[i];
        int b = in->image;
        if (in->kind == I_SAMPLE) {
            commit_cell(s, b, in->row, in->col, o->token);
            if (in->start_q >= 0) set_slot(s, b, s->q[in->start_q].pos, ZP_SLOT_COMMITTED);
        } else if (in->kind == I_DRAFT) {
            s->draft_row[b] = in->row;
            s->draft_tok[b] = o->token;
            s->n_verify[b] = 0;
            s->st.drafts_proposed++;
        } else {
            s->n_verify[b]++;
            if (o->accepted)
                s->st.drafts_accepted++;
            else
                s->st.drafts_rejected++;
            if (o->accepted || in->final) {
                commit_cell(s, b, in->row, 0, o->token);
                s->draft_row[b] = -1;
                if (in->start_q >= 0) set_slot(s, b, s->q[in->start_q].pos, ZP_SLOT_COMMITTED);
                if (!o->accepted) s->st.resamples++;
            } else {
                s->draft_tok[b] = o->token;
                s->st.resamples++;
            }
            if (in->pipe_q >= 0) {
                int pos0 = cellpos(s, in->row, 0);
                if (o->accepted) { /* the draft's slot becomes real; (r, 1) was sampled in it */
                    set_slot(s, b, pos0, ZP_SLOT_COMMITTED);
                    *fedp(s, b, in->row, 0) = 1;
                    if (o->token2 >= 0) commit_cell(s, b, in->row, 1, o->token2);
                } else {
                    set_slot(s, b, pos0, ZP_SLOT_UNWRITTEN);
                }
            }
        }
    }
    if ((st = zp_reserve((void **)&s->pass_queries, &s->cap_pq, (size_t)s->st.passes + 1,
                         sizeof(int32_t))))
        return st;
    s->pass_queries[s->st.passes] = (int32_t)s->nq;
    for (size_t i = 0; i < s->nq; i++) {
        s->image_queries[s->q[i].image]++;
        s->image_passes[s->q[i].image] = s->st.passes + 1;
    }
    s->st.queries += (int64_t)s->nq;
    s->st.passes++;
    return ZP_OK;
}

static void reset_pass(zp_session *s) {
    s->nq = 0;
    s->nit = 0;
    s->n_logits = 0;
}

static zp_status run_pass(zp_session *s);

zp_status zp_session_run_pass(zp_session *s) {
    double t0 = now_s();
    zp_status st = run_pass(s);
    s->st.total_seconds += now_s() - t0;
    return st;
}

static zp_status run_pass(zp_session *s) {
    if (s->pol.kind == ZP_POLICY_EXTERNAL)
        return zp_fail(ZP_ERR_STATE, "an external policy drives this session: use zp_session_step");
    if (zp_session_done(s)) return zp_fail(ZP_ERR_STATE, "the session is complete");
    reset_pass(s);
    zp_status st;
    for (int b = 0; b < s->B; b++) {
        if ((st = plan_refeeds(s, b))) return st;
        if ((st = plan_builtin(s, b))) return st;
    }
    return execute(s);
}

zp_status zp_session_run(zp_session *s, int (*abort_cb)(void *), void *user) {
    while (!zp_session_done(s)) {
        if (abort_cb && abort_cb(user)) return zp_fail(ZP_ERR_ABORTED, "generation interrupted");
        zp_status st = zp_session_run_pass(s);
        if (st) return st;
    }
    return ZP_OK;
}

static zp_status step(zp_session *s, const int32_t *cells, int n);

zp_status zp_session_step(zp_session *s, const int32_t *cells, int n) {
    double t0 = now_s();
    zp_status st = step(s, cells, n);
    s->st.total_seconds += now_s() - t0;
    return st;
}

static zp_status step(zp_session *s, const int32_t *cells, int n) {
    if (n < 1) return zp_fail(ZP_ERR_ARG, "a pass must decode at least one cell");
    /* validate everything before touching any state */
    for (int i = 0; i < n; i++) {
        int b = cells[3 * i], r = cells[3 * i + 1], c = cells[3 * i + 2];
        if (b < 0 || b >= s->B || r < 0 || r >= s->H || c < 0 || c >= s->W)
            return zp_fail(ZP_ERR_ARG, "cell (%d, %d, %d) out of range (images %d, grid %dx%d)", b,
                           r, c, s->B, s->H, s->W);
        if (*tok(s, b, r, c) >= 0)
            return zp_fail(ZP_ERR_ARG, "cell (%d, %d, %d) is already decoded", b, r, c);
        if (c != *prog(s, b, r))
            return zp_fail(ZP_ERR_ARG,
                           "cell (%d, %d, %d) cannot be fed: (%d, %d) is not decoded "
                           "(rows are decoded left to right)",
                           b, r, c, r, c - 1);
        if (!(r == 0 && c == 0) && *prog(s, b, 0) == 0)
            return zp_fail(ZP_ERR_ARG, "cell (%d, %d, %d): image %d must decode (0, 0) first", b, r,
                           c, b);
        for (int j = 0; j < i; j++)
            if (cells[3 * j] == b && cells[3 * j + 1] == r)
                return zp_fail(ZP_ERR_ARG, "row %d of image %d appears twice in one pass", r, b);
    }
    reset_pass(s);
    zp_status st;
    for (int b = 0; b < s->B; b++)
        if ((st = plan_refeeds(s, b))) return st;
    for (int i = 0; i < n; i++)
        if ((st = plan_decode(s, cells[3 * i], cells[3 * i + 1], cells[3 * i + 2], I_SAMPLE, 0)))
            return st;
    return execute(s);
}
