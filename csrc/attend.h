/* attend.h -- the attention of the rows of one stream, as a template: model.c includes this file
 * once per instruction set and K/V element type, after #defining
 *   ZP_ATT_NAME    the function's name
 *   ZP_ATT_SLOTS   the name of its helper (the value sums in slot order)
 *   ZP_ATT_TARGET  its target attribute (empty for plain x86-64)
 *   ZP_ATT_V       a GCC float vector type that fits one register of that set, of
 *   ZP_ATT_W       lanes (16: a zmm, 8: a ymm, 4: an xmm)
 *   ZP_ATT_VI      the int32_t vector type of as many lanes
 *   ZP_ATT_LOAD    (const float *) -> ZP_ATT_V, unaligned
 *   ZP_ATT_KV      the element type of the K/V cache: float, or uint16_t (bf16 bits)
 *   ZP_ATT_LOADKV  (const ZP_ATT_KV *) -> ZP_ATT_V, unaligned, widened to float32 (exactly)
 *   ZP_ATT_KV1     (ZP_ATT_KV) -> float, one element widened
 *   ZP_ATT_SLANES  tile lanes whose scores are accumulated at once (a multiple of ZP_ATT_W
 *                  dividing ZP_TILE): 2 * ZP_ATT_SLANES / ZP_ATT_W accumulators
 *   ZP_ATT_VEXP    1: the softmax's exponentials in vectors, 0: exp_nonpos one by one (the
 *                  same operations per lane)
 * This file #undefs ZP_ATT_NAME, ZP_ATT_SLOTS, ZP_ATT_KV, ZP_ATT_LOADKV and ZP_ATT_KV1 at its
 * end (an instruction set's two instances share the others; attend_undef.h clears them).
 *
 * Why a template and not target_clones: a 16-lane GCC vector in an AVX2 or SSE2 clone is split
 * by the compiler into halves that live on the stack (every multiply-add loads and stores them),
 * and target_clones("avx2") does not enable FMA. Each instance here works in vectors of its own
 * register width, its accumulators in registers (but for the value sums of a head's first row
 * when a head's row is not 4 vectors: a small block on the stack, in L1; see the value loop).
 *
 * Order of operations. Every lane (a slot's score, an output element) is computed by the same
 * chain of operations in every instance; only how many lanes one instruction carries differs.
 * Loops: tile by tile (the K tiles for the scores, then the V tiles), and within a tile chunks of
 * ZP_ATT_CHUNK rows that take each head in turn (the head's block of the tile stays in L1 for the
 * chunk's rows). Per row and head the result depends only on the row's query and its visible
 * slots, whatever the loop order:
 *   - score of slot s: two chains over the head dimension, one over even d and one over odd d,
 *     each acc += q[d] * k[d][s] in increasing d; then even + odd; then * scale;
 *   - softmax: maximum and sum over 16 lane partials (slot j into partial j % 16, in increasing
 *     j), partials combined by the tree 8, 4, 2, 1; exp_nonpos(score - max) * (1 / sum);
 *   - output element e: four chains over the visible slots p0 + 4i + k (k = 0..3) of a tile,
 *     acc_k += w[p] * v[p][e] in increasing p, summed (0 + 1) + (2 + 3) and added to the running
 *     output, tile after tile.
 * An instance compiled with FMA (AVX-512, AVX2) fuses every acc += a * b into one rounding; the
 * plain x86-64 instance rounds twice; so results can differ between instruction sets, never
 * within one.
 *
 * rows: (n,) row indices; vis/nv: per row its visible slots (ascending) and their count;
 * q: row r's query heads at q + r*ldq; sc: row r's (nh, nv[r]) scores at sc + r*ldsc;
 * o: row r's output (nh*hd) at o + r*nh*hd; kt_: the stream's K, (tile, kvd, ZP_TILE); vt_: its
 * V, (tile, n_kv_head, ZP_TILE, hd), both of ZP_ATT_KV; cursor: (n,) scratch. All borrowed.
 * Only the query heads [h0, h1) are computed (scores and output of the others are untouched):
 * every head's arithmetic is the same whatever the range, so calls over disjoint ranges of the
 * same rows (each with its own cursor) may run on different threads and give the bits of one
 * call over all heads.
 * Queries, scores, softmax and every accumulation are float32 whatever ZP_ATT_KV is. */

/* The value sums of one row and head in slot order: for the visible slots p0 <= p < p1 (value
 * rows vh + lanes[p] * hd), elements [d, d + nvec W) of oh += the four chains over slots
 * p0 + 4i + k, summed (0+1)+(2+3). The chain sums are a variable-length array: inlined with a
 * constant nvec (4) GCC keeps them in registers, as it does not a fixed array sized for the
 * largest nvec (checked in the AVX-512 instance's code: no stack traffic added); a variable
 * nvec (<= ZP_ATT_VM / ZP_ATT_W, 2 KiB) puts them on the stack. */
ZP_ATT_TARGET static inline __attribute__((always_inline)) void
ZP_ATT_SLOTS(float *oh, const float *wh, const ZP_ATT_KV *vh, const int32_t *lanes, int hd, int p0,
             int p1, int d, const int nvec) {
    const ZP_ATT_V zero = {0};
    ZP_ATT_V acc[4][nvec];
    for (int k = 0; k < 4; k++)
        for (int i = 0; i < nvec; i++) acc[k][i] = zero;
    int p = p0;
    for (; p + 4 <= p1; p += 4)
        for (int k = 0; k < 4; k++) {
            const float wk = wh[p + k];
            const ZP_ATT_KV *vk = vh + (size_t)lanes[p + k] * hd + d;
            for (int i = 0; i < nvec; i++) acc[k][i] += wk * ZP_ATT_LOADKV(vk + i * ZP_ATT_W);
        }
    for (int k = 0; k < 3 && p + k < p1; k++) {
        const float wk = wh[p + k];
        const ZP_ATT_KV *vk = vh + (size_t)lanes[p + k] * hd + d;
        for (int i = 0; i < nvec; i++) acc[k][i] += wk * ZP_ATT_LOADKV(vk + i * ZP_ATT_W);
    }
    for (int i = 0; i < nvec; i++)
        ZP_VEC_STORE(oh + d + i * ZP_ATT_W,
                     ZP_ATT_LOAD(oh + d + i * ZP_ATT_W) +
                         ((acc[0][i] + acc[1][i]) + (acc[2][i] + acc[3][i])));
}

ZP_ATT_TARGET static void ZP_ATT_NAME(const int32_t *rows, int n, const int32_t *const *vis,
                                      const int32_t *nv, const float *q, int ldq, float *sc,
                                      size_t ldsc, float *o, const void *kt_, const void *vt_,
                                      int nh, int h0, int h1, int group, int hd, int kvd,
                                      float scale, int32_t *cursor) {
    enum {
        W = ZP_ATT_W,
        NS = ZP_ATT_SLANES / ZP_ATT_W, /* score vectors per chain */
        DB = ZP_ATT_W == 4 ? 8 : 16,   /* value elements per block (rows after the first) */
        NE = DB / ZP_ATT_W,            /* value vectors per chain and block */
        NP = 16 / ZP_ATT_W,            /* vectors of the softmax's 16 partials */
    };
    const ZP_ATT_V zero = {0};
    const ZP_ATT_KV *kt = (const ZP_ATT_KV *)kt_, *vt = (const ZP_ATT_KV *)vt_;
    const size_t tile_bytes = sizeof(ZP_ATT_KV) * (size_t)kvd * ZP_TILE;
    /* the bytes of a tile that heads [h0, h1) read: their K/V heads' blocks, contiguous in both
     * layouts (K: (kvd, ZP_TILE), V: (n_kv_head, ZP_TILE, hd)) */
    const size_t span_lo = sizeof(ZP_ATT_KV) * (size_t)(h0 / group) * hd * ZP_TILE;
    const size_t span_hi = sizeof(ZP_ATT_KV) * (size_t)((h1 - 1) / group + 1) * hd * ZP_TILE;
    int last = 0;
    for (int a = 0; a < n; a++) {
        cursor[a] = 0;
        int r = rows[a];
        if (nv[r] && vis[r][nv[r] - 1] > last) last = vis[r][nv[r] - 1];
    }
    /* scores, tile by tile, prefetching ZP_PREFETCH tiles ahead (the first ones up front) */
    for (int t = 0; t < ZP_PREFETCH && t * ZP_TILE <= last; t++)
        prefetch_tile(kt, t, tile_bytes, span_lo, span_hi);
    for (int t0 = 0; t0 <= last; t0 += ZP_TILE) {
        const ZP_ATT_KV *ktile = kt + (size_t)(t0 / ZP_TILE) * kvd * ZP_TILE;
        if (t0 + ZP_PREFETCH * ZP_TILE <= last)
            prefetch_tile(ktile, ZP_PREFETCH, tile_bytes, span_lo, span_hi);
        for (int a0 = 0; a0 < n; a0 += ZP_ATT_CHUNK) {
            const int na = n - a0 < ZP_ATT_CHUNK ? n - a0 : ZP_ATT_CHUNK;
            int32_t p1s[ZP_ATT_CHUNK]; /* the chunk's rows: visible slots [cursor, p1s) here */
            tile_ranges(rows + a0, na, vis, nv, cursor + a0, t0, p1s);
            for (int h = h0; h < h1; h++) {
                const ZP_ATT_KV *kh = ktile + (size_t)(h / group) * hd * ZP_TILE;
                for (int a = 0; a < na; a++) {
                    int r = rows[a0 + a], p0 = cursor[a0 + a], p1 = p1s[a];
                    if (p1 == p0) continue;
                    const float *qh = q + (size_t)r * ldq + (size_t)h * hd;
                    float acc[ZP_TILE];
                    /* 2 * NS independent chains (d even / odd x NS vectors of lanes) hide the
                     * FMA latency; the tile's lanes in blocks of ZP_ATT_SLANES */
                    for (int l0 = 0; l0 < ZP_TILE; l0 += ZP_ATT_SLANES) {
                        ZP_ATT_V ev[NS], od[NS];
                        for (int i = 0; i < NS; i++) ev[i] = od[i] = zero;
                        int d = 0;
                        for (; d + 2 <= hd; d += 2) {
                            const ZP_ATT_KV *k0 = kh + (size_t)d * ZP_TILE + l0;
                            const float qe = qh[d], qo = qh[d + 1];
                            for (int i = 0; i < NS; i++) {
                                ev[i] += qe * ZP_ATT_LOADKV(k0 + i * W);
                                od[i] += qo * ZP_ATT_LOADKV(k0 + ZP_TILE + i * W);
                            }
                        }
                        if (d < hd)
                            for (int i = 0; i < NS; i++)
                                ev[i] +=
                                    qh[d] * ZP_ATT_LOADKV(kh + (size_t)d * ZP_TILE + l0 + i * W);
                        for (int i = 0; i < NS; i++) ZP_VEC_STORE(acc + l0 + i * W, ev[i] + od[i]);
                    }
                    float *sh = sc + (size_t)r * ldsc + (size_t)h * nv[r];
                    for (int p = p0; p < p1; p++) sh[p] = acc[vis[r][p] - t0] * scale;
                }
            }
            for (int a = 0; a < na; a++) cursor[a0 + a] = p1s[a];
        }
    }
    /* softmax per row and head: maximum and sum in 16 lane partials (16 / W vectors), while the
     * first V tiles arrive */
    for (int t = 0; t < ZP_PREFETCH && t * ZP_TILE <= last; t++)
        prefetch_tile(vt, t, tile_bytes, span_lo, span_hi);
    for (int a = 0; a < n; a++) {
        int r = rows[a], m = nv[r];
        for (int h = h0; h < h1; h++) {
            float *row = sc + (size_t)r * ldsc + (size_t)h * m;
            float part[16];
            ZP_ATT_V pv[NP];
            for (int i = 0; i < NP; i++) pv[i] = zero - INFINITY;
            int j = 0;
            for (; j + 16 <= m; j += 16)
                for (int i = 0; i < NP; i++) {
                    ZP_ATT_V x = ZP_ATT_LOAD(row + j + i * W);
                    ZP_ATT_VI gt = x > pv[i]; /* part = x > part ? x : part */
                    pv[i] = (ZP_ATT_V)(((ZP_ATT_VI)x & gt) | ((ZP_ATT_VI)pv[i] & ~gt));
                }
            for (int i = 0; i < NP; i++) ZP_VEC_STORE(part + i * W, pv[i]);
            for (int l = 0; j + l < m; l++) part[l] = row[j + l] > part[l] ? row[j + l] : part[l];
            float mx = part[0];
            for (int l = 1; l < 16; l++) mx = part[l] > mx ? part[l] : mx;
#if ZP_ATT_VEXP
            /* exp_nonpos lane by lane, the last partial vector through a zero-padded buffer so
             * that every score takes the same instructions */
            for (j = 0; j < m; j += W) {
                float pad[W];
                ZP_ATT_V x;
                if (j + W <= m)
                    x = ZP_ATT_LOAD(row + j);
                else {
                    for (int l = 0; l < W; l++) pad[l] = j + l < m ? row[j + l] : mx;
                    x = ZP_ATT_LOAD(pad);
                }
                x = x - mx;
                ZP_ATT_VI low = x < -87.0f; /* x = max(x, -87) */
                x = (ZP_ATT_V)(((ZP_ATT_VI)x & ~low) | ((ZP_ATT_VI)(zero - 87.0f) & low));
                ZP_ATT_V nr = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
                ZP_ATT_V rr = (x - nr * 0.693145751953125f) - nr * 1.428606765330187e-06f;
                ZP_ATT_V p = (1.0f / 5040.0f) * rr + 1.0f / 720.0f;
                p = p * rr + 1.0f / 120.0f;
                p = p * rr + 1.0f / 24.0f;
                p = p * rr + 1.0f / 6.0f;
                p = p * rr + 0.5f;
                p = p * rr + 1.0f;
                p = p * rr + 1.0f;
                ZP_ATT_VI two_n = (__builtin_convertvector(nr, ZP_ATT_VI) + 127) << 23;
                ZP_ATT_VI under = x <= -87.0f;
                x = (ZP_ATT_V)((ZP_ATT_VI)(p * (ZP_ATT_V)two_n) & ~under);
                if (j + W <= m)
                    ZP_VEC_STORE(row + j, x);
                else {
                    ZP_VEC_STORE(pad, x);
                    for (int l = 0; j + l < m; l++) row[j + l] = pad[l];
                }
            }
#else
            for (j = 0; j < m; j++) row[j] = exp_nonpos(row[j] - mx);
#endif
            for (int i = 0; i < NP; i++) pv[i] = zero;
            for (j = 0; j + 16 <= m; j += 16)
                for (int i = 0; i < NP; i++) pv[i] += ZP_ATT_LOAD(row + j + i * W);
            for (int i = 0; i < NP; i++) ZP_VEC_STORE(part + i * W, pv[i]);
            for (int l = 0; j + l < m; l++) part[l] += row[j + l];
            for (int w = 8; w >= 1; w /= 2)
                for (int l = 0; l < w; l++) part[l] += part[l + w];
            float inv = 1.f / part[0];
            for (j = 0; j < m; j++) row[j] *= inv;
        }
        float *orow = o + (size_t)r * nh * hd;
        for (int e = h0 * hd; e < h1 * hd; e++) orow[e] = 0.f;
        cursor[a] = 0;
    }
    /* weighted values, tile by tile, in slot order per (row, head, element) */
    for (int t0 = 0; t0 <= last; t0 += ZP_TILE) {
        const ZP_ATT_KV *vtile = vt + (size_t)(t0 / ZP_TILE) * kvd * ZP_TILE;
        if (t0 + ZP_PREFETCH * ZP_TILE <= last)
            prefetch_tile(vtile, ZP_PREFETCH, tile_bytes, span_lo, span_hi);
        for (int a0 = 0; a0 < n; a0 += ZP_ATT_CHUNK) {
            const int na = n - a0 < ZP_ATT_CHUNK ? n - a0 : ZP_ATT_CHUNK;
            int32_t p1s[ZP_ATT_CHUNK];
            tile_ranges(rows + a0, na, vis, nv, cursor + a0, t0, p1s);
            for (int h = h0; h < h1; h++) {
                /* the head's (ZP_TILE, hd) block, lane = slot - t0 */
                const ZP_ATT_KV *vh = vtile + (size_t)(h / group) * ZP_TILE * hd - (size_t)t0 * hd;
                int warm = 0; /* the head's block was read by an earlier row: in L1 */
                for (int a = 0; a < na; a++) {
                    int r = rows[a0 + a], p0 = cursor[a0 + a], p1 = p1s[a];
                    if (p1 == p0) continue;
                    const float *wh = sc + (size_t)r * ldsc + (size_t)h * nv[r];
                    float *oh = o + (size_t)r * nh * hd + (size_t)h * hd;
                    const int32_t *lanes = vis[r];
#define VROW(p) (vh + (size_t)lanes[p] * hd)
                    /* Four independent chains (visible slots p0+4i+k, k = 0..3) per element,
                     * summed (0+1)+(2+3) and added to the running output, by one of three loop
                     * orders (the same operations per element):
                     *   - hd = 4W: slot by slot, each reading its whole value row, the 16 chain
                     *     sums in registers;
                     *   - the first row to read the head's block: slot by slot, whole rows
                     *     (chunks of up to ZP_ATT_VM elements), the chain sums in a block on the
                     *     stack (L1): reads in order, which the hardware prefetchers follow;
                     *   - the rows after it (block in L1): per DB elements, the slots in turn,
                     *     the 4 DB / W chain-sum vectors in registers.
                     * The last order alone, from memory, read at half the rate of the others:
                     * its sweeps touch one line per slot, 256 bytes apart. Elements left over
                     * (hd % W, hd % DB) go one at a time, in scalar chains: a vectorised tail
                     * narrower than W would not fuse its multiply-adds in the AVX-512 instance
                     * (target avx512f without avx512vl), where the scalar ones do. */
                    if (hd == 4 * W) {
                        ZP_ATT_SLOTS(oh, wh, vh, lanes, hd, p0, p1, 0, 4);
                        continue;
                    }
                    int d = 0; /* elements done by vectors */
                    if (!warm) {
                        warm = 1;
                        while (hd - d >= W) {
                            const int nvec = (hd - d < ZP_ATT_VM ? hd - d : ZP_ATT_VM) / W;
                            ZP_ATT_SLOTS(oh, wh, vh, lanes, hd, p0, p1, d, nvec);
                            d += nvec * W;
                        }
                    } else {
                        for (; d + DB <= hd; d += DB) {
                            ZP_ATT_V a0v[NE], a1v[NE], a2v[NE], a3v[NE];
                            for (int i = 0; i < NE; i++) a0v[i] = a1v[i] = a2v[i] = a3v[i] = zero;
                            int p = p0;
                            for (; p + 4 <= p1; p += 4) {
                                const float w0 = wh[p], w1 = wh[p + 1], w2 = wh[p + 2],
                                            w3 = wh[p + 3];
                                const ZP_ATT_KV *v0 = VROW(p) + d, *v1 = VROW(p + 1) + d,
                                                *v2 = VROW(p + 2) + d, *v3 = VROW(p + 3) + d;
                                for (int i = 0; i < NE; i++) {
                                    a0v[i] += w0 * ZP_ATT_LOADKV(v0 + i * W);
                                    a1v[i] += w1 * ZP_ATT_LOADKV(v1 + i * W);
                                    a2v[i] += w2 * ZP_ATT_LOADKV(v2 + i * W);
                                    a3v[i] += w3 * ZP_ATT_LOADKV(v3 + i * W);
                                }
                            }
                            for (int i = 0; i < NE; i++) {
                                if (p < p1) a0v[i] += wh[p] * ZP_ATT_LOADKV(VROW(p) + d + i * W);
                                if (p + 1 < p1)
                                    a1v[i] += wh[p + 1] * ZP_ATT_LOADKV(VROW(p + 1) + d + i * W);
                                if (p + 2 < p1)
                                    a2v[i] += wh[p + 2] * ZP_ATT_LOADKV(VROW(p + 2) + d + i * W);
                                ZP_VEC_STORE(oh + d + i * W,
                                             ZP_ATT_LOAD(oh + d + i * W) +
                                                 ((a0v[i] + a1v[i]) + (a2v[i] + a3v[i])));
                            }
                        }
                    }
                    for (; d < hd; d++) {
                        float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
                        int p = p0;
                        for (; p + 4 <= p1; p += 4) {
                            s0 += wh[p] * ZP_ATT_KV1(VROW(p)[d]);
                            s1 += wh[p + 1] * ZP_ATT_KV1(VROW(p + 1)[d]);
                            s2 += wh[p + 2] * ZP_ATT_KV1(VROW(p + 2)[d]);
                            s3 += wh[p + 3] * ZP_ATT_KV1(VROW(p + 3)[d]);
                        }
                        if (p < p1) s0 += wh[p] * ZP_ATT_KV1(VROW(p)[d]);
                        if (p + 1 < p1) s1 += wh[p + 1] * ZP_ATT_KV1(VROW(p + 1)[d]);
                        if (p + 2 < p1) s2 += wh[p + 2] * ZP_ATT_KV1(VROW(p + 2)[d]);
                        oh[d] += (s0 + s1) + (s2 + s3);
                    }
#undef VROW
                }
            }
            for (int a = 0; a < na; a++) cursor[a0 + a] = p1s[a];
        }
    }
}

#undef ZP_ATT_NAME
#undef ZP_ATT_SLOTS
#undef ZP_ATT_KV
#undef ZP_ATT_LOADKV
#undef ZP_ATT_KV1
