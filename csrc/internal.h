/* internal.h -- definitions shared by the core's translation units; not part of the public API. */
#ifndef ZIPAR_INTERNAL_H
#define ZIPAR_INTERNAL_H

#include "zipar.h"

/* Records a formatted message for zp_last_error() and returns st. */
zp_status zp_fail(zp_status st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Grows *buf to hold at least n elements of size elem (amortised doubling). */
zp_status zp_reserve(void **buf, size_t *cap, size_t n, size_t elem);

/* Slots per attention tile; the K cache is stored tile by tile, transposed within a tile. */
#define ZP_TILE 32
static inline int zp_tiled_len(int seq_len) {
    return (seq_len + ZP_TILE - 1) / ZP_TILE * ZP_TILE;
}

struct zp_model {
    zp_config cfg;
    zp_weights w;
    zp_layer_weights *layers; /* (n_layer,) OWNED copy of the pointer table */
    int seq_len;
    int qkv_dim;     /* (n_head + 2*n_kv_head) * head_dim */
    float *rope_cos; /* (seq_len, head_dim/2) OWNED; 2-D: 0 at conditioning positions; 1-D: row p
                       * is position p */
    float *rope_sin; /* (seq_len, head_dim/2) OWNED */
    /* bf16 models built while the kernels run "amx": every matrix again in AMX tile order
     * (zp_tile_bf16), for the passes that run on "amx"; NULL otherwise */
    void *tiles;               /* OWNED: the copies */
    zp_layer_weights *tlayers; /* (n_layer,) OWNED: the layer table with the copies' matrices */
    const void *toutput;       /* the output head's copy, in tiles */
};

/* Per-pass scratch: grown on demand, never shrunk; nothing is allocated when a pass fits. */
typedef struct {
    size_t cap_rows;
    float *x, *xb, *qkv, *att, *h1, *h3; /* (rows, dim | dim | qkv_dim | dim | hidden | hidden) */
    int32_t *row_query, *row_stream;     /* (rows,) */
    size_t cap_vis;
    int32_t *vis;   /* (queries, seq_len): visible slots per query */
    int32_t *vis_n; /* (queries,) */
    size_t cap_scores;
    float *scores; /* (rows, n_head, seq_len) */
    size_t cap_xl, cap_logits2, cap_vis_n;
    /* attention grouped by stream: rows sorted by stream, groups [grp_start[g], grp_start[g+1]) */
    int32_t **row_vis; /* (rows,) pointer to the row's query's visible list */
    int32_t *row_nv, *cursor, *grp_rows, *grp_start, *stream_group;
    size_t cap_row_vis, cap_row_nv, cap_cursor, cap_grp_rows, cap_grp_start, cap_stream_group;
    float *xl, *logits2; /* (logit rows, dim), (logit rows, vocab) */
    float *xn;           /* (team, rows, dim): each thread's own normalised rows (few-row passes) */
    size_t cap_xn;
    int32_t *logit_row; /* (logit rows,) the row of each */
    size_t cap_logit_row;
} zp_scratch;

struct zp_cache {
    const zp_model *m;
    int n_images, guided, n_streams, seq_len;
    int kv_type;          /* element type of k and v: ZP_WTYPE_F32 or ZP_WTYPE_BF16 */
    size_t kv_elems;      /* elements of k (and of v) */
    size_t kv_mapped;     /* bytes mapped for k (and for v): alloc_streamed */
    void *k;              /* (n_layer, n_streams, tiles, n_kv_head*head_dim, ZP_TILE) OWNED:
                            * slot s at tile s / ZP_TILE, lane s % ZP_TILE (zp_tiled_len) */
    void *v;              /* (n_layer, n_streams, tiles, n_kv_head, ZP_TILE, head_dim) OWNED */
    int32_t *slots;       /* (n_images, seq_len) OWNED slot states */
    float *prefix;        /* (n_streams, P, dim) OWNED: conditioning inputs per stream */
    uint8_t *prefix_mask; /* (n_images, P) OWNED: 1 = valid key */
    int32_t *shift;       /* (n_streams,) OWNED: slots before the stream's own prefix (token-id
                            * prefixes, zp_cache_new_ids); slot p is at position p - shift */
    uint32_t *stamp;      /* (n_images, seq_len) OWNED: pass stamps to catch double writes */
    uint32_t pass_id;
    zp_scratch s;
};

#endif
