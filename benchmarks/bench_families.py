"""Emu3-Gen and Lumina-mGPT-7B at their real layer shapes, random float32 weights.

The full models do not fit beside other work (Emu3-Gen is 34 GB in float32), so a stated subset
of layers is built at the real shapes, with the real vocabulary (one shared array serves as the
embedding table and lm_head: only one row of the table is read per query, so the timing is that
of an untied model). Per one-query guided pass (cond + uncond rows), measured side by side in one
run on the same weight arrays:

- t(L, m, ctx): the pass with L = 1 .. --layers layers, m queries, ctx slots of context;
- per layer and head+fixed cost by a least-squares line over L, then scaled to 32 layers;
- attention cost per context slot (from two context lengths), linear in the context;
- the bandwidth floor: bytes of the weights one pass reads (32 layers + lm_head) over the read
  bandwidth measured in this run.

Projected seconds per image (one image, CFG on): raster = H*W passes of one query at the mean
context; ZipAR(s) = the scheduler's actual passes and queries per pass for the grid (run on a
tiny model of the same grid), each pass costed by t(m) at 32 layers plus its attention. Peak RSS
of the process is reported.

    python benchmarks/bench_families.py [--layers 2] [--reps 5] [--family emu3|lumina|both]
"""

import argparse
import json
import os
import platform
import resource
import time

import numpy as np

import zipar
from zipar import ZipAR
from zipar._ext import core
from zipar.model import convert_weight

HERE = os.path.dirname(os.path.abspath(__file__))

SHAPES = {
    # families.md 1.3 / 1.4; paper grids and windows (zipar.md)
    "emu3": dict(name="Emu3-Gen", dim=4096, n_layer=32, n_head=32, n_kv_head=8, hidden=14336,
                 vocab=184622, theta=1e6, qk_norm=0, grid=(90, 90), prompt=40, windows=(7,),
                 image_lo=151854, image_hi=184622, eol=151846),
    "lumina": dict(name="Lumina-mGPT-7B", dim=4096, n_layer=32, n_head=32, n_kv_head=32,
                   hidden=11008, vocab=65536, theta=1e4, qk_norm=1, grid=(48, 48), prompt=40,
                   windows=(16, 8), image_lo=4, image_hi=8196, eol=8803),
}


def build_arrays(s, n_layers, rng, dtype="float32"):
    """The core's arrays: matrices in ``dtype`` (bfloat16 as uint16 bits), norms float32."""
    D, F, hd = s["dim"], s["hidden"], s["dim"] // s["n_head"]
    qkv = (s["n_head"] + 2 * s["n_kv_head"]) * hd

    def mat(r, c):
        return convert_weight("m", 0.02 * rng.standard_normal((r, c), dtype=np.float32), dtype,
                              check=False, matrix=True)

    table = mat(s["vocab"], D)
    arrays = [table, np.ones(D, np.float32), table]
    for _ in range(n_layers):
        arrays += [np.ones(D, np.float32), mat(qkv, D), mat(D, s["n_head"] * hd),
                   np.ones(D, np.float32), mat(F, D), mat(F, D), mat(D, F)]
        if s["qk_norm"]:
            arrays += [np.ones((s["n_head"], hd), np.float32),
                       np.zeros((s["n_head"], hd), np.float32),
                       np.ones((s["n_kv_head"], hd), np.float32),
                       np.zeros((s["n_kv_head"], hd), np.float32)]
    return arrays


def core_model(s, arrays, n_layers, P, H, W):
    per = 11 if s["qk_norm"] else 7
    sub = arrays[:3] + arrays[3:3 + per * n_layers]
    wtype = {np.dtype(np.float32): "ZP_WTYPE_F32", np.dtype(np.uint16): "ZP_WTYPE_BF16",
             np.dtype(np.float16): "ZP_WTYPE_F16"}[arrays[0].dtype]
    return core().Model(sub, wtype=getattr(core(), wtype), dim=s["dim"], n_layer=n_layers,
                        n_head=s["n_head"],
                        n_kv_head=s["n_kv_head"], head_dim=s["dim"] // s["n_head"],
                        hidden=s["hidden"], vocab=s["vocab"], cls_token_num=P, grid_h=H,
                        grid_w=W, eor=1, eor_token=s["eol"], norm_eps=1e-5, rope_base=s["theta"],
                        rope_1d=1, qk_norm=s["qk_norm"], qk_norm_eps=1e-5, swin_norm=0,
                        vis_lo=s["image_lo"], vis_hi=s["image_hi"])


def pass_times(model, P, ms, ctx, reps):
    """{m: median seconds of one guided pass of m queries} (m queries = m images of one cache,
    one query each, after a committed context of P prefix and ctx grid slots per image)."""
    n = max(ms)
    ids = np.tile(np.arange(1, P + 1, dtype=np.int32), (n, 1))
    lens = np.full(n, P, np.int32)
    cache = core().Cache(model, n, True, None, prefix_ids=ids, prefix_len=lens, uncond_ids=ids,
                         uncond_len=lens)
    q = [(b, p, 0, 0, 0, 1) for b in range(n) for p in range(P)]
    q += [(b, P + i, 7, 0, 0, 1) for b in range(n) for i in range(ctx)]
    cache.forward(np.asarray(q, np.int32), 3.0)
    out = {}
    slot = P + ctx
    for m in ms:
        times = []
        for _ in range(reps):
            qq = np.asarray([(b, slot, 7, 0, 1, 1) for b in range(m)], np.int32)
            t0 = time.perf_counter()
            cache.forward(qq, 3.0)
            times.append(time.perf_counter() - t0)
            slot += 1  # a fresh slot each time: the context grows by one, as in generation
        out[m] = float(np.median(times))
    return out


def schedule_of(H, W, s, P):
    """Queries per pass of ZipAR(s) (or raster for s = 0) on an H x W grid with E = 1, from the
    engine's own scheduler on a tiny model (one image, CFG on)."""
    tiny = dict(dim=16, n_head=2, n_kv_head=2, hidden=16, vocab=64, theta=1e4, qk_norm=0,
                image_lo=0, image_hi=60, eol=63)
    rng = np.random.default_rng(0)
    arrays = build_arrays(tiny, 1, rng)
    m = core_model(tiny, arrays, 1, P, H, W)
    ids = np.arange(1, P + 1, dtype=np.int32)[None]
    lens = np.array([P], np.int32)
    pol = (ZipAR(s) if s else zipar.Raster()).c_kwargs(W)
    sess = core().Session(m, 1, None, prefix_ids=ids, prefix_len=lens, uncond_ids=ids,
                          uncond_len=lens, cfg_scale=3.0, temperature=0.0, **pol)
    sess.run(-1, None)
    return np.asarray(sess.pass_queries)


def bench_family(key, args, bw):
    s = SHAPES[key]
    H, W = s["grid"]
    P = s["prompt"]
    hd = s["dim"] // s["n_head"]
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    arrays = build_arrays(s, args.layers, rng, args.dtype)
    build_s = time.perf_counter() - t0
    per = 11 if s["qk_norm"] else 7
    layer_bytes = sum(a.nbytes for a in arrays[3:3 + per])
    head_bytes = arrays[2].nbytes
    full_bytes = s["n_layer"] * layer_bytes + head_bytes
    floor = full_bytes / bw
    print(f"\n{s['name']}: {args.layers} of {s['n_layer']} layers built at the real shapes "
          f"({build_s:.0f} s), {args.dtype}; weights read per pass at full depth "
          f"{full_bytes / 1e9:.1f} GB -> bandwidth floor {floor * 1e3:.0f} ms")
    ctx0, ctx1 = 0, args.ctx
    ms = [1, 4, 16]
    Pb = 8  # prompt slots of the timing caches (the attention model uses the real prompt)
    # t(L, m) at a short context for L = 1..layers; slope over L = per-layer cost
    tab = {}
    for L in range(1, args.layers + 1):
        model = core_model(s, arrays, L, Pb, H, W)
        for m, t in pass_times(model, Pb, ms, ctx0, args.reps).items():
            tab[L, m] = t
    Ls = np.arange(1, args.layers + 1)
    per_layer, base = {}, {}
    for m in ms:
        y = np.array([tab[L, m] for L in Ls])
        if len(Ls) > 1:
            slope, icpt = np.polyfit(Ls, y, 1)
        else:
            slope, icpt = y[0], 0.0
        per_layer[m], base[m] = float(slope), float(icpt)
    t32 = {m: base[m] + s["n_layer"] * per_layer[m] for m in ms}
    # attention per context slot and layer (one query, both streams)
    model = core_model(s, arrays, args.layers, Pb, H, W)
    tA = tab[args.layers, 1]
    tB = pass_times(model, Pb, [1], ctx1, args.reps)[1]
    att_per_slot_layer = max(tB - tA, 0.0) / (ctx1 - ctx0) / args.layers
    del model
    print(f"{'m':>3} {'ms/pass (' + str(args.layers) + ' layers)':>22} {'ms/layer':>9} "
          f"{'ms/pass at 32 layers':>21} {'x floor':>8}")
    for m in ms:
        print(f"{m:>3} {tab[args.layers, m] * 1e3:>22.1f} {per_layer[m] * 1e3:>9.1f} "
              f"{t32[m] * 1e3:>21.0f} {t32[m] / floor:>8.2f}")
    print(f"attention: {att_per_slot_layer * 1e6:.3f} us per context slot per layer "
          f"(ctx {ctx0} -> {ctx1}: {tA * 1e3:.1f} -> {tB * 1e3:.1f} ms)")
    kv_slot = 2 * s["n_layer"] * 2 * s["n_kv_head"] * hd * 4  # k+v, both streams, float32

    def cost(pq, m_tab):
        """Seconds of a schedule: per pass t32(m) interpolated in m, plus attention over the
        context of each query (every position of the image is a query once)."""
        xs = np.array(ms, float)
        ys = np.array([m_tab[m] for m in ms])
        weights = float(np.interp(pq, xs, ys).sum())
        n_tok = H * W
        mean_ctx = P + H * (W + 1) / 2
        att = n_tok * mean_ctx * att_per_slot_layer * s["n_layer"]
        return weights + att

    rows = []
    raster_pq = schedule_of(H, W, 0, P)
    r_s = cost(raster_pq, t32)
    rows.append(dict(policy="raster", passes=int(raster_pq.size), seconds=r_s))
    for w in s["windows"]:
        pq = schedule_of(H, W, w, P)
        z = cost(pq, t32)
        rows.append(dict(policy=f"ZipAR({w})", passes=int(pq.size),
                         mean_queries=float(pq.mean()), seconds=z))
    print(f"projected s/image at {H}x{W} (+{H} EOL), 32 layers, CFG, {args.dtype}; KV cache "
          f"{kv_slot * (P + H * (W + 1)) / 2**30:.1f} GiB:")
    for r in rows:
        print(f"  {r['policy']:>10}: {r['passes']:>5} passes  {r['seconds']:>8.0f} s  "
              f"x{r_s / r['seconds']:.2f} vs raster")
    return dict(family=s["name"], layers_built=args.layers, dtype=args.dtype,
                full_weight_gb=full_bytes / 1e9, floor_ms=floor * 1e3,
                pass_ms_32_layers={str(m): t32[m] * 1e3 for m in ms},
                ms_per_layer={str(m): per_layer[m] * 1e3 for m in ms},
                attention_us_per_slot_layer=att_per_slot_layer * 1e6,
                projected=rows)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=2, help="layers built at the real shape")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--ctx", type=int, default=512, help="context length for the attention cost")
    ap.add_argument("--family", choices=("emu3", "lumina", "both"), default="both")
    ap.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="bfloat16",
                    help="how the matrices are stored (the real checkpoints: bf16)")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "families.json"))
    args = ap.parse_args()
    zipar.show_config()
    bw = zipar.runtime.read_bandwidth(512 << 20, 5)
    print(f"read bandwidth {bw / 1e9:.1f} GB/s, {zipar.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}")
    out = dict(bandwidth_gbps=bw / 1e9, threads=zipar.get_num_threads(), results=[])
    for key in (("emu3", "lumina") if args.family == "both" else (args.family,)):
        out["results"].append(bench_family(key, args, bw))
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    out["peak_rss_gb"] = rss
    print(f"\npeak RSS {rss:.1f} GB")
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
