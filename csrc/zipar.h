/* zipar.h -- the C core of zipar: a LlamaGen-style autoregressive image transformer, its KV cache,
 * counter-based sampling and the ZipAR parallel frontier scheduler.
 *
 * No Python here: the core compiles and tests on its own (csrc/tests). Every function returns a
 * zp_status; nothing exits, aborts or prints. Pointers in signatures are BORROWED unless the
 * comment says OWNED. Weights are borrowed: the caller keeps them alive for the model's life.
 *
 * Worked example (class-conditional, ZipAR with window 2, greedy, no guidance; error checks
 * omitted). csrc/tests/test_example.c compiles and runs exactly these lines:
 *
 *     zp_config cfg = {.dim = 64, .n_layer = 2, .n_head = 4, .n_kv_head = 4, .head_dim = 16,
 *                      .hidden = 256, .vocab = 100, .cls_token_num = 1, .grid_h = 4,
 *                      .grid_w = 4, .eor = 0, .norm_eps = 1e-5f, .rope_base = 10000.f};
 *     zp_model *m;  zp_model_new(&cfg, &weights, &m);        // weights: borrowed float32 arrays
 *     zp_sampling sp = zp_sampling_default();  sp.temperature = 0.f;  sp.cfg_scale = 1.f;
 *     zp_policy pol = {.kind = ZP_POLICY_ZIPAR, .window = 2};  // fields a kind ignores stay 0
 *     zp_session *s;                                         // prefix_cond: (n_images, P, dim)
 *     zp_session_new(m, n_images, prefix_cond, NULL, NULL, NULL, &sp, &pol, 0, &s);
 *     while (!zp_session_done(s)) zp_session_run_pass(s);    // or zp_session_run(s, abort_cb, ud)
 *     memcpy(out, zp_session_tokens(s), sizeof(int32_t) * n_images * 4 * 4);  // (n_images, H, W)
 *     zp_session_free(s);  zp_model_free(m);
 *
 * Sequence layout (docs/semantics.md): P conditioning positions, then the grid row by row, each row
 * followed by E in {0,1} end-of-row positions. Grid cell (r, c) sits at P + r*(W+E) + c.
 */
#ifndef ZIPAR_H
#define ZIPAR_H

#include <stddef.h>
#include <stdint.h>

#include "matmul.h" /* zp_wtype */

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------- status codes */
typedef enum {
    ZP_OK = 0,
    ZP_ERR_ARG = 1,       /* an argument is out of range or inconsistent (maps to ValueError) */
    ZP_ERR_NOMEM = 2,     /* an allocation failed (MemoryError) */
    ZP_ERR_STATE = 3,     /* the call does not fit the object's state (RuntimeError) */
    ZP_ERR_ABORTED = 4,   /* the abort callback asked to stop; results so far are kept */
    ZP_ERR_NONFINITE = 5, /* NaN or inf appeared in logits (RuntimeError) */
} zp_status;

/* A short static message for a status, plus the last detailed message of this thread. */
const char *zp_status_string(zp_status st);
const char *zp_last_error(void);

/* ---------------------------------------------------------------- configuration */
typedef struct {
    int dim;            /* model width */
    int n_layer;        /* transformer blocks */
    int n_head;         /* query heads */
    int n_kv_head;      /* key/value heads (grouped-query attention when < n_head) */
    int head_dim;       /* dim / n_head, even; multiple of 4 for the 2-D rotary layout */
    int hidden;         /* FFN hidden size */
    int vocab;          /* image-token vocabulary */
    int cls_token_num;  /* P: conditioning positions before the grid */
    int grid_h, grid_w; /* H, W */
    int eor;            /* E: 1 when a fixed end-of-row token follows each row, else 0 */
    int eor_token;      /* the end-of-row token id (used when eor = 1) */
    float norm_eps;     /* RMSNorm epsilon (LlamaGen: 1e-5) */
    float rope_base;    /* rotary base, theta (LlamaGen: 10000, Emu3: 1e6, Chameleon: 1e4) */
    /* Model families (families.md); zero keeps LlamaGen's behaviour. */
    int rope_1d;        /* 0: LlamaGen's 2-D layout (pairs (2i, 2i+1), row/col angles, none on the
                          conditioning positions); 1: 1-D rotate_half (element i pairs with
                          i + head_dim/2) over sequence positions, the prefix included */
    int qk_norm;        /* 1: per-head LayerNorm of q and k (over head_dim, no affine, eps
                          qk_norm_eps) then * weight[h] + bias[h], before the rotary (Chameleon) */
    float qk_norm_eps;  /* Chameleon: 1e-5 */
    int swin_norm;      /* 1: x + norm(attn(x)), h + norm(mlp(h)) (Chameleon swin_norm) */
    int vis_lo, vis_hi; /* grid cells are sampled from tokens [vis_lo, vis_hi) only (the image
                          tokens of a shared text+image vocabulary); 0, 0: the whole vocabulary */
} zp_config;

/* Size limits, checked by zp_config_check / zp_cache_new before any arithmetic on the sizes, so
 * that every product the core forms fits in 64 bits and every position or index fits in 32. */
#define ZP_MAX_SEQ_LEN (1 << 24) /* P + H*(W+E) */
#define ZP_MAX_WIDTH   (1 << 24) /* dim, hidden, vocab and (n_head + 2*n_kv_head)*head_dim */
#define ZP_MAX_LAYERS  4096      /* n_layer */
#define ZP_MAX_IMAGES  (1 << 20) /* images of one cache or session */

/* Checks a config: sizes positive and within the limits above (computed in 64 bits), head_dim a
 * multiple of 4, n_kv_head dividing n_head, eor in {0, 1}, eor_token in the vocabulary, norm_eps
 * and rope_base finite and positive. ZP_ERR_ARG with a message naming the limit. */
zp_status zp_config_check(const zp_config *c);

/* Sequence length P + H*(W+E) and the position of grid cell (r, c), for a checked config. */
int zp_seq_len(const zp_config *c);
int zp_cell_pos(const zp_config *c, int r, int col);

/* ---------------------------------------------------------------- weights (all borrowed)
 * The matrices (tok_embeddings, wqkv, wo, w1, w3, w2, output) are stored as zp_weights.wtype
 * (matmul.h): ZP_WTYPE_F32 (float), ZP_WTYPE_BF16 or ZP_WTYPE_F16 (uint16_t bit patterns); they
 * are used as stored, never widened in memory. The norms are float32 whatever wtype is. */
typedef struct {
    const float *attention_norm; /* (dim,) */
    const void *wqkv;            /* ((n_head + 2*n_kv_head)*head_dim, dim) */
    const void *wo;              /* (dim, n_head*head_dim) */
    const float *ffn_norm;       /* (dim,) */
    const void *w1;              /* (hidden, dim) */
    const void *w3;              /* (hidden, dim) */
    const void *w2;              /* (dim, hidden) */
    /* qk_norm only (else ignored, may be NULL): per-head rows of the q/k LayerNorm affine */
    const float *q_norm_w, *q_norm_b; /* (n_head, head_dim) */
    const float *k_norm_w, *k_norm_b; /* (n_kv_head, head_dim) */
} zp_layer_weights;

typedef struct {
    const void *tok_embeddings;     /* (vocab, dim) */
    const zp_layer_weights *layers; /* (n_layer,) array, borrowed; copied by zp_model_new */
    const float *norm;              /* (dim,) */
    const void *output;             /* (vocab, dim) */
    int wtype;                      /* zp_wtype of the matrices; 0 = ZP_WTYPE_F32 */
} zp_weights;

typedef struct zp_model zp_model;

/* Validates the config, copies the layer pointer table (OWNED by the model) and precomputes the
 * rotary tables. The float arrays stay borrowed. */
zp_status zp_model_new(const zp_config *cfg, const zp_weights *w, zp_model **out);
void zp_model_free(zp_model *m);
const zp_config *zp_model_config(const zp_model *m);

/* ---------------------------------------------------------------- KV cache and visibility */
/* Slot states: what a query may see is data. A query at position p with chain c sees slot q when
 * q <= p and (q == p, or state[q] == ZP_SLOT_COMMITTED, or c > 0 and state[q] == c). */
enum {
    ZP_SLOT_UNWRITTEN = -1, /* never visible (except to the query writing it) */
    ZP_SLOT_MASKED = -2,    /* a padded conditioning position: visible only to itself */
    ZP_SLOT_COMMITTED = 0,  /* a real token (or conditioning); >0: tentative, owned by that chain */
};

typedef struct zp_cache zp_cache;

/* A cache for n_images images. With guided != 0 each image has a second (unconditional) stream
 * for classifier-free guidance. prefix_cond / prefix_uncond: (n_images, P, dim) conditioning
 * embeddings, copied (prefix_uncond may be NULL when guided == 0). prefix_mask: (n_images, P)
 * uint8, 1 = valid key, 0 = padded; NULL means all valid. */
zp_status zp_cache_new(const zp_model *m, int n_images, int guided, const float *prefix_cond,
                       const float *prefix_uncond, const uint8_t *prefix_mask, zp_cache **out);
/* Conditioning given as token ids, embedded with tok_embeddings: one prefix per stream, each of
 * its own length (the guided stream's negative prompt may be shorter or longer than the prompt).
 * ids_*: (n_images, P) with the len_*[b] ids of image b RIGHT-aligned (slots P - len .. P - 1;
 * entries before them are ignored); len_*: (n_images,) in [1, P]. A stream never attends to the
 * slots before its prefix, and its positions (rotary) count from its own first token: slot p is
 * at position p - (P - len). So a grid cell's slot is shared by both streams while each stream
 * sees it at its own position (families.md 4.3). ids_uncond/len_uncond: NULL when guided == 0. */
zp_status zp_cache_new_ids(const zp_model *m, int n_images, int guided, const int32_t *ids_cond,
                           const int32_t *len_cond, const int32_t *ids_uncond,
                           const int32_t *len_uncond, zp_cache **out);
void zp_cache_free(zp_cache *c);
/* (n_images, seq_len) slot states, OWNED by the cache; callers may read and (between passes)
 * commit (>0 -> 0) or discard (-> ZP_SLOT_UNWRITTEN) tentative slots. */
int32_t *zp_cache_slots(zp_cache *c);
int zp_cache_n_images(const zp_cache *c);
int zp_cache_guided(const zp_cache *c);
/* Storage of the cache's keys and values: ZP_WTYPE_F32 (a new cache's) or ZP_WTYPE_BF16. A bf16
 * cache rounds each key and value to nearest even (zipar.io.dtypes.float32_to_bfloat16) when a
 * pass writes it and widens it exactly, in registers, when attention reads it; queries, scores,
 * softmax and every accumulation stay float32, in the same order of operations, so results stay
 * independent of thread count and batch composition. Half the bytes of a float32 cache, and half
 * the memory traffic of attention. Only before the cache's first zp_forward (ZP_ERR_STATE after);
 * ZP_ERR_ARG for another type; ZP_ERR_NOMEM leaves the cache as it was. */
zp_status zp_cache_set_kv_type(zp_cache *c, int kv_type);
int zp_cache_kv_type(const zp_cache *c);
/* Bytes of the cache's key and value storage together:
 * 2 * n_layer * streams * zp_tiled_len(seq_len) * n_kv_head * head_dim * (4 or 2). */
size_t zp_cache_kv_bytes(const zp_cache *c);
/* The keys and values a layer holds, widened to float32 (exactly): k_out and v_out (n_streams,
 * seq_len, n_kv_head*head_dim), borrowed; stream 2b is image b's conditional stream and 2b + 1
 * its unconditional one in a guided cache, stream b image b's otherwise. Keys are stored after
 * the rotary; unwritten slots read 0. For tests and inspection. */
zp_status zp_cache_read_kv(const zp_cache *c, int layer, float *k_out, float *v_out);

/* ---------------------------------------------------------------- the forward primitive */
/* Passed across the Python binding as an (n, ZP_QUERY_FIELDS) int32 array: the layout is pinned
 * by the static assertions below (and in zipar/_core.c). */
typedef struct {
    int32_t image;       /* image index in the cache */
    int32_t pos;         /* sequence position; < P feeds the conditioning embedding */
    int32_t token;       /* input token (ignored for pos < P) */
    int32_t chain;       /* 0: committed input; > 0: tentative, visible only to this chain */
    int32_t want_logits; /* 1: return logits predicting position pos + 1 */
    int32_t guided;      /* 1: combine cond and uncond logits (needs a guided cache). A guided
                            cache runs both streams for every query either way. */
} zp_query;
#define ZP_QUERY_FIELDS 6 /* int32 words of a zp_query, in the order above */
#ifndef __cplusplus
_Static_assert(sizeof(zp_query) == ZP_QUERY_FIELDS * sizeof(int32_t),
               "zp_query must be ZP_QUERY_FIELDS packed int32 words");
#endif

/* Evaluates one pass: writes every query's key/value into its slot (setting the slot state to
 * the query's chain), then returns for the queries with want_logits, in order, one row of
 * `vocab` float32 logits each: guided = uncond + (cond - uncond) * cfg_scale when the query is
 * guided, else cond. logits: (number of want_logits queries, vocab), borrowed. Two queries may not
 * write the same slot in one pass. attn_capture may be NULL (see zp_capture). */
typedef struct zp_capture zp_capture;
zp_status zp_forward(const zp_model *m, zp_cache *c, const zp_query *q, int nq, float cfg_scale,
                     float *logits, zp_capture *attn_capture);

/* Attention capture: for query index `query` (in the pass), layer, head, the softmax weights over
 * every slot 0..seq_len-1 (invisible slots get 0) of the conditional stream. */
struct zp_capture {
    int n;                /* number of requests */
    const int32_t *query; /* (n,) query index within the pass */
    const int32_t *layer; /* (n,) */
    const int32_t *head;  /* (n,) */
    float *out;           /* (n, seq_len), borrowed */
};

/* ---------------------------------------------------------------- Philox4x32-10 */
/* Random123's Philox4x32 with 10 rounds: 128-bit counter, 64-bit key. */
void zp_philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);
/* Uniform double in [0, 1) with 53 random bits, from counter (draw, pos, sample_id, stream). */
double zp_uniform(uint64_t seed, uint32_t sample_id, uint32_t pos, uint32_t draw);

/* ---------------------------------------------------------------- sampling */
typedef struct {
    float cfg_scale;   /* 1.0: no guidance */
    int cfg_interval;  /* -1: guidance for every token; else guidance stops after that many */
    float temperature; /* 0: greedy (argmax, lowest index on ties) */
    int top_k;         /* 0: off; keeps every logit >= the k-th largest */
    float top_p;       /* 1.0: off; keeps the smallest prefix whose cumulative prob exceeds p */
    uint64_t seed;
} zp_sampling;
zp_sampling zp_sampling_default(void);
/* The guidance rule: queries combine a second, unconditional stream exactly when this holds. */
static inline int zp_sampling_guided(const zp_sampling *sp) {
    return sp->cfg_scale != 1.0f;
}
zp_status zp_sampling_check(const zp_sampling *sp);

/* The sampling distribution of one logits row after temperature/top-k/top-p, as normalised
 * float64 probabilities (vocab,) written to probs. work: zp_sampling_work_size(vocab) bytes of
 * scratch. Greedy (temperature 0) gives one-hot. */
size_t zp_sampling_work_size(int vocab);
void zp_sampling_probs(const zp_sampling *sp, const float *logits, int vocab, double *probs,
                       void *work);
/* zp_sampling_probs restricted to the tokens [lo, hi) (the others get probability 0): the
 * allowed-token mask applied before temperature/top-k/top-p. lo = hi = 0: the whole vocab. */
void zp_sampling_probs_range(const zp_sampling *sp, const float *logits, int vocab, int lo, int hi,
                             double *probs, void *work);
/* Inverse-CDF draw from probs with uniform u in [0,1). Never returns a zero-probability token. */
int zp_draw(const double *probs, int vocab, double u);

/* ---------------------------------------------------------------- sessions and policies */
typedef enum {
    ZP_POLICY_RASTER = 0,   /* = ZipAR with window W */
    ZP_POLICY_ZIPAR = 1,    /* fixed window */
    ZP_POLICY_ADAPTIVE = 2, /* drafted row starts verified by a rejection test */
    ZP_POLICY_EXTERNAL = 3, /* the caller chooses cells with zp_session_step */
} zp_policy_kind;
enum { ZP_SCHEDULE_EAGER = 0, ZP_SCHEDULE_PAPER = 1 };
/* The stand-in fed for the missing end of row r-1 when row r starts early (E = 0 grids):
 * ABOVE: the latest decoded token of row r-2 (row 0 when r = 1; the published code's choice);
 * LEFT: the latest decoded token of row r-1; CONST: zp_policy.proxy_token, always the same. */
enum { ZP_PROXY_ABOVE = 0, ZP_PROXY_LEFT = 1, ZP_PROXY_CONST = 2 };

/* Each kind reads only its own fields; the others are ignored (leave them 0):
 *   RASTER: none; ZIPAR: window, schedule, proxy; ADAPTIVE: min_window, max_window, threshold,
 *   schedule, proxy; EXTERNAL: proxy. proxy_token is read with proxy == ZP_PROXY_CONST. */
typedef struct {
    int kind;         /* zp_policy_kind */
    int window;       /* ZIPAR: 1..W */
    int schedule;     /* ZP_SCHEDULE_* (ZIPAR, ADAPTIVE) */
    int proxy;        /* ZP_PROXY_*: stand-in for a missing end-of-row token (E = 0) */
    int proxy_token;  /* ZP_PROXY_CONST: the token fed, one a grid cell may hold: in
                         [vis_lo, vis_hi) when the model sets that range, else [0, vocab) */
    int min_window;   /* ADAPTIVE: draft a row start when the row above holds this many */
    int max_window;   /* ADAPTIVE: last verification at this many (W: the row above complete) */
    double threshold; /* ADAPTIVE: accept when u < min(1, p(x)/q(x) / (1 - threshold)); 0 is the
                         speculative-sampling rule, 1 accepts every draft */
} zp_policy;

/* Roles of queries, recorded in the trace. */
enum {
    ZP_ROLE_PREFIX = 0, /* conditioning position */
    ZP_ROLE_SAMPLE = 1, /* real token fed to sample the next cell */
    ZP_ROLE_PROXY = 2,  /* stand-in for a missing row end, to start the next row */
    ZP_ROLE_REFEED = 3, /* real token written into a slot; logits not needed */
    ZP_ROLE_VERIFY = 4, /* adaptive: re-evaluates a drafted row start with more context */
    ZP_ROLE_DRAFT = 5,  /* adaptive: feeds the draft to predict the next cell, in its chain */
    ZP_ROLE_EOR = 6,    /* the fixed end-of-row token (E = 1) */
};

typedef struct {
    int64_t passes, queries, proxies, refeeds;
    int64_t drafts_proposed, drafts_accepted, drafts_rejected, resamples;
    int64_t tokens_decoded;
    double forward_seconds; /* wall time inside zp_forward */
    double sample_seconds;  /* wall time turning logits into tokens (distributions, draws, tests) */
    double total_seconds;   /* wall time inside zp_session_run_pass / zp_session_step */
} zp_stats;

typedef struct zp_session zp_session;

/* A generation over n_images images. prefix_*: as zp_cache_new (copied); sample_ids: (n_images,)
 * counter words for the random stream (copied; NULL = 0..n_images-1). The policy and sampling
 * structs are copied. */
zp_status zp_session_new(const zp_model *m, int n_images, const float *prefix_cond,
                         const float *prefix_uncond, const uint8_t *prefix_mask,
                         const uint32_t *sample_ids, const zp_sampling *sp, const zp_policy *pol,
                         int record_trace, zp_session **out);
/* The same with token-id prefixes (see zp_cache_new_ids); guided when sp->cfg_scale != 1. */
zp_status zp_session_new_ids(const zp_model *m, int n_images, const int32_t *ids_cond,
                             const int32_t *len_cond, const int32_t *ids_uncond,
                             const int32_t *len_uncond, const uint32_t *sample_ids,
                             const zp_sampling *sp, const zp_policy *pol, int record_trace,
                             zp_session **out);
void zp_session_free(zp_session *s);
/* zp_cache_set_kv_type / zp_cache_kv_bytes of the session's cache (set: before its first pass). */
zp_status zp_session_set_kv_type(zp_session *s, int kv_type);
size_t zp_session_kv_bytes(const zp_session *s);
int zp_session_done(const zp_session *s);
/* One pass of the session's built-in policy. */
zp_status zp_session_run_pass(zp_session *s);
/* Passes until done; abort(user) is asked before each pass (non-zero: stop, ZP_ERR_ABORTED,
 * everything decoded so far is kept). abort may be NULL. */
zp_status zp_session_run(zp_session *s, int (*abort_cb)(void *), void *user);
/* One pass decoding exactly the given cells, (n, 3) int32 rows (image, row, col). Each cell must
 * be the next undecoded cell of its row; the first pass must decode (image, 0, 0) of every image
 * it touches first. The engine supplies inputs, proxies and refeeds. */
zp_status zp_session_step(zp_session *s, const int32_t *cells, int n);

const int32_t *zp_session_tokens(const zp_session *s);    /* (n_images, H, W); -1 undecoded */
const int32_t *zp_session_progress(const zp_session *s);  /* (n_images, H) decoded per row */
const int32_t *zp_session_row_start(const zp_session *s); /* (n_images, H) pass of (r, 0) */
const zp_stats *zp_session_stats(const zp_session *s);
/* Queries per pass, (passes,) */
const int32_t *zp_session_pass_queries(const zp_session *s);
/* Per image, (n_images,): passes until the image's last query (1 + the last pass that had one)
 * and its queries over all passes. */
const int64_t *zp_session_image_passes(const zp_session *s);
const int64_t *zp_session_image_queries(const zp_session *s);
/* Trace records (n, ZP_TRACE_FIELDS): pass, image, row, col, role, input token; row/col of the slot the query
 * writes (the conditioning slot p gives row -1, col p and token -1; an end-of-row slot col W). */
const int32_t *zp_session_trace(const zp_session *s, int64_t *n);
#define ZP_TRACE_FIELDS 6
/* zp_session_step's cells: (n, ZP_CELL_FIELDS) int32 rows (image, row, col). */
#define ZP_CELL_FIELDS 3

/* ---------------------------------------------------------------- probes */
/* Best-of-reps read bandwidth (GB/s) of all OpenMP threads over a buffer of `bytes` (allocated
 * and freed inside); negative when the buffer cannot be allocated. For benchmarks. */
double zp_read_bandwidth(size_t bytes, int reps);

/* Stage timers of zp_forward: where a pass's time goes. While on, every pass adds, for each
 * thread of its team, the seconds it spent in each stage of a layer up to the stage's barrier
 * ("work", summed over the layers; the output head is the last stage) and waiting in that
 * barrier, and thread 0 adds what runs outside the team. Process-wide totals (passes running at once in several threads add into the
 * same ones); off by default, when a pass only tests a flag per stage. */
enum {
    ZP_STAGE_NORM1,     /* pre-attention RMSNorm (none with swin_norm) */
    ZP_STAGE_QKV,       /* the qkv product */
    ZP_STAGE_ATTENTION, /* q/k norm, rotary, K/V cache write and attention */
    ZP_STAGE_WO,        /* output projection + residual */
    ZP_STAGE_NORM2,     /* pre-FFN RMSNorm (none with swin_norm) */
    ZP_STAGE_GATE_UP,   /* gate and up products + SiLU */
    ZP_STAGE_W2,        /* down product + residual */
    ZP_STAGE_HEAD,      /* final norm and output head of the rows that want logits */
    ZP_STAGES,
    /* timer t < ZP_STAGES: work of stage t; ZP_STAGES + t: the wait after it; then: */
    ZP_TIMER_SETUP = 2 * ZP_STAGES, /* thread 0: checks, visibility, embeddings, before the team */
    ZP_TIMER_ENTER,                 /* each thread: from the team's start to its first stage */
    ZP_TIMER_JOIN,                  /* thread 0: from its last barrier to after the team */
    ZP_TIMER_COMBINE,               /* thread 0: CFG combine and finiteness check, after it */
    ZP_TIMERS
};
#define ZP_TIMER_THREADS 64 /* threads of a team timed (the others are not) */
/* on != 0: zero the totals and start timing; 0: stop (the totals stay readable). */
void zp_timers_set(int on);
/* Copies the totals, seconds[t][i] for thread t < ZP_TIMER_THREADS and timer i < ZP_TIMERS
 * (ZP_TIMER_THREADS x ZP_TIMERS doubles), and returns the passes timed. */
long long zp_timers_read(double *seconds);

#ifdef __cplusplus
}
#endif
#endif /* ZIPAR_H */
