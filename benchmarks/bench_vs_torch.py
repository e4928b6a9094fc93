"""zipar against a PyTorch eager LlamaGen decode loop, side by side in one run.

Both sides hold the same random GPT-B / GPT-L weights (float32, or the same weights rounded to
bfloat16) and decode greedily with classifier-free guidance (scale 4.0; the conditional and the
unconditional stream run as one batch of 2B rows, as the published sampler does).

The PyTorch side is written from docs/llamagen.md in the shape of the published decode loop: a
KV cache per layer of (2B, heads, seq_len, head_dim), one prefill of the class embedding, then
one forward per pass whose attention runs over the whole cache with a mask
(F.scaled_dot_product_attention), RMSNorm and rotary in float32, logits in float32; with
``--dtype bf16`` the whole model and its cache are bfloat16 (as the published ``--precision
bf16``). Raster feeds back its own greedy tokens. ZipAR on the PyTorch side replays zipar's
pass schedule (the queries of every pass, from zipar's trace of the same policy: positions,
input tokens, which queries need logits), writing each query's K/V into its slot and masking
every query to the written slots at or before its position; chains of proxy tokens are not
modelled (they change which keys are masked, not the cost).

Images are bands of the 24-wide grid: ``--rows R`` decodes the first R rows (R x 24 cells at the
positions they have in the 24 x 24 image), so that a full table fits a short run; s/img is per
band. Step gain = raster passes / passes.

    python benchmarks/bench_vs_torch.py [--models B,L] [--rows 6] [--batches 1,8]
        [--dtypes fp32,bf16] [--policies raster,zipar8,zipar4] [--only 'B:*:1:*,...']
        [--gain L:fp32:24,L:bf16:24] [--gain-repeats 1] [--threads N] [--tag NAME]

``--gain MODEL:DTYPE:GRID[,...]`` also runs zipar alone over the whole square grid, one image:
raster, ZipAR-4 and ZipAR-8 (paper schedule), greedy, CFG 4.0, alternately --gain-repeats
times (median wall per policy), and reports step gain (raster passes / passes), wall gain
(raster seconds / seconds) and their ratio. ``--only ''`` skips the PyTorch table (torch is
then not imported).

Writes benchmarks/results/vs_torch_<tag>.json (tag defaults to "<threads>t").
"""
import argparse
import fnmatch
import json
import os
import platform
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SIZES = {"B": (768, 12, 12), "L": (1024, 24, 16),  # dim, layers, heads (docs/llamagen.md)
         "S": (256, 2, 4)}  # a small shape for a smoke run
VOCAB, CLASSES, W = 16384, 1000, 24
CFG = 4.0


# ---------------------------------------------------------------- weights
def random_state_dict(dim, n_layer, hidden, seed):
    """LlamaGen c2i state dict (float32) with std 0.02 matrices and norms near 1."""
    rng = np.random.default_rng(seed)

    def mat(*shape):
        return (0.02 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)

    def norm():
        return (1.0 + 0.1 * rng.standard_normal(dim, dtype=np.float32)).astype(np.float32)

    sd = {"cls_embedding.embedding_table.weight": mat(CLASSES + 1, dim),
          "tok_embeddings.weight": mat(VOCAB, dim), "norm.weight": norm(),
          "output.weight": mat(VOCAB, dim)}
    for i in range(n_layer):
        p = f"layers.{i}."
        sd[p + "attention_norm.weight"] = norm()
        sd[p + "attention.wqkv.weight"] = mat(3 * dim, dim)
        sd[p + "attention.wo.weight"] = mat(dim, dim)
        sd[p + "ffn_norm.weight"] = norm()
        sd[p + "feed_forward.w1.weight"] = mat(hidden, dim)
        sd[p + "feed_forward.w3.weight"] = mat(hidden, dim)
        sd[p + "feed_forward.w2.weight"] = mat(dim, hidden)
    return sd


def round_bf16(a):
    """float32 -> nearest-even bfloat16 -> float32 (the values both sides hold in bf16)."""
    b = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    b = (b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000
    return b.astype(np.uint32).view(np.float32)


# ---------------------------------------------------------------- PyTorch LlamaGen
class TorchLlamaGen:
    """Eager LlamaGen GPT (c2i) with a KV cache; see the module docstring."""

    def __init__(self, torch, sd, dim, n_layer, n_head, rows, dtype):
        self.t, self.F = torch, torch.nn.functional
        self.dim, self.n_layer, self.n_head, self.hd = dim, n_layer, n_head, dim // n_head
        self.dtype = dtype
        self.w = {k: torch.from_numpy(v).to(dtype) for k, v in sd.items()}
        self.P, self.seq = 1, 1 + rows * W
        self.cos, self.sin = self._rope_table(rows)

    def _rope_table(self, rows):
        """(seq, hd/2) cos and sin: pair i < hd/4 turns by row * f_i, the others by col *
        f_(i - hd/4), f_j = 10000^(-2j / (hd/2)); the class position has cos = sin = 0."""
        hd, q = self.hd, self.hd // 4
        f = 1.0 / (10000.0 ** (np.arange(q, dtype=np.float64) * 2 / (hd // 2)))
        cos, sin = np.zeros((self.seq, hd // 2)), np.zeros((self.seq, hd // 2))
        for r in range(rows):
            for c in range(W):
                a = np.concatenate([r * f, c * f])
                cos[self.P + r * W + c], sin[self.P + r * W + c] = np.cos(a), np.sin(a)
        return (self.t.from_numpy(cos.astype(np.float32)),
                self.t.from_numpy(sin.astype(np.float32)))

    def new_cache(self, rows2):
        shape = (rows2, self.n_head, self.seq, self.hd)
        return [(self.t.zeros(shape, dtype=self.dtype), self.t.zeros(shape, dtype=self.dtype))
                for _ in range(self.n_layer)]

    def _rms(self, x, w):
        xf = x.float()
        return (xf * self.t.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)).type_as(x) * w

    def _rope(self, x, pos):
        """x (B2, q, heads, hd), pos (q,): adjacent pairs rotated, in float32."""
        xf = x.float().reshape(*x.shape[:-1], -1, 2)
        c, s = self.cos[pos][None, :, None, :], self.sin[pos][None, :, None, :]
        x0, x1 = xf[..., 0], xf[..., 1]
        out = self.t.stack([x0 * c - x1 * s, x1 * c + x0 * s], dim=-1)
        return out.flatten(3).type_as(x)

    def forward(self, x, pos, mask, cache, logit_rows):
        """x (B2, q, dim) input embeddings at positions pos (q,); mask (q, seq) bool; returns
        float32 logits (B2, len(logit_rows), vocab) of the queries logit_rows."""
        F, w = self.F, self.w
        B2, q = x.shape[0], x.shape[1]
        nh, hd = self.n_head, self.hd
        for i in range(self.n_layer):
            p = f"layers.{i}."
            h = self._rms(x, w[p + "attention_norm.weight"])
            qkv = h @ w[p + "attention.wqkv.weight"].T
            xq, xk, xv = qkv.split([nh * hd, nh * hd, nh * hd], dim=-1)
            xq = self._rope(xq.view(B2, q, nh, hd), pos)
            xk = self._rope(xk.view(B2, q, nh, hd), pos)
            kc, vc = cache[i]
            kc[:, :, pos] = xk.transpose(1, 2)
            vc[:, :, pos] = xv.view(B2, q, nh, hd).transpose(1, 2)
            o = F.scaled_dot_product_attention(xq.transpose(1, 2), kc, vc,
                                               attn_mask=mask[None, None])
            x = x + o.transpose(1, 2).reshape(B2, q, nh * hd) @ w[p + "attention.wo.weight"].T
            h = self._rms(x, w[p + "ffn_norm.weight"])
            g = (F.silu(h @ w[p + "feed_forward.w1.weight"].T)
                 * (h @ w[p + "feed_forward.w3.weight"].T))
            x = x + g @ w[p + "feed_forward.w2.weight"].T
        h = self._rms(x[:, logit_rows], w["norm.weight"])
        return (h @ w["output.weight"].T).float()

    def run(self, labels, passes):
        """Decode with a list of passes; each pass a list of (pos, token or None, want_logits,
        cell): token None feeds this side's own greedy token of the cell before pos. Returns
        (tokens (B, cells) of the raster cells predicted, seconds)."""
        t = self.t
        B = len(labels)
        emb = self.w["cls_embedding.embedding_table.weight"]
        tok_emb = self.w["tok_embeddings.weight"]
        cls = t.cat([emb[t.tensor(labels)], emb[t.full((B,), CLASSES)]])[:, None]  # (2B, 1, dim)
        cache = self.new_cache(2 * B)
        written = t.zeros(self.seq, dtype=t.bool)
        slots = t.arange(self.seq)
        own = t.full((B, self.seq), -1, dtype=t.long)  # own greedy token per position
        t0 = time.perf_counter()
        with t.inference_mode():
            for queries in passes:
                pos = t.tensor([q[0] for q in queries])
                if queries[0][0] < self.P:
                    x = cls
                else:
                    toks = t.stack([own[:, q[0]] if q[1] is None else t.full((B,), q[1])
                                    for q in queries], dim=1)  # (B, q)
                    x = tok_emb[t.cat([toks, toks])]
                mask = ((slots[None] <= pos[:, None])
                        & (written[None] | (slots[None] == pos[:, None])))
                want = [j for j, q in enumerate(queries) if q[2]]
                logits = self.forward(x, pos, mask, cache, want)
                written[pos] = True
                if want:
                    cond, unc = logits[:B], logits[B:]
                    nxt = (unc + (cond - unc) * CFG).argmax(-1)  # (B, len(want))
                    for j, qi in enumerate(want):
                        if queries[qi][0] + 1 < self.seq:
                            own[:, queries[qi][0] + 1] = nxt[:, j]
        return own[:, self.P:].numpy(), time.perf_counter() - t0


def raster_passes(rows):
    """The published loop: prefill of the class position, then one token per pass."""
    out = [[(0, None, True, 0)]]
    for k in range(rows * W - 1):
        out.append([(1 + k, None, True, k + 1)])
    return out


def trace_passes(trace, core):
    """zipar's trace of image 0 as passes of (pos, input token, want_logits, None)."""
    passes = {}
    for p, img, r, c, role, tok in trace.tolist():
        if img != 0:
            continue
        pos = c if r < 0 else 1 + r * W + c
        want = role != core.ZP_ROLE_REFEED and (role != core.ZP_ROLE_PREFIX or pos == 0)
        passes.setdefault(p, []).append((pos, None if r < 0 else tok, want, None))
    return [passes[k] for k in sorted(passes)]


# ---------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="B,L")
    ap.add_argument("--rows", type=int, default=6, help="rows of the 24-wide grid per image")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--policies", default="raster,zipar8,zipar4")
    ap.add_argument("--threads", type=int, default=0, help="0: all cores")
    ap.add_argument("--only", default="*",
                    help="cells to run, fnmatch patterns of model:dtype:batch:policy, "
                         "comma-separated (e.g. 'B:*:1:*,L:bf16:1:raster')")
    ap.add_argument("--gain", default="",
                    help="also zipar alone at the full square grid, e.g. 'L:fp32:24,L:bf16:24': "
                         "raster, ZipAR-4 and ZipAR-8 (paper schedule), batch 1: step and wall "
                         "gain")
    ap.add_argument("--gain-repeats", type=int, default=1,
                    help="rounds of the --gain policies, run alternately (median wall)")
    ap.add_argument("--isa", default=None,
                    help="zipar's kernel instruction set (zipar.runtime.set_kernel_isa), e.g. "
                         "avx512 or amx; default: the fastest this CPU runs")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()

    import zipar
    from zipar import Raster, ZipAR
    from zipar._ext import core
    from zipar.config import ModelConfig
    from zipar.model import Model

    threads = args.threads or os.cpu_count()
    zipar.set_num_threads(threads)
    if args.isa:
        zipar.runtime.set_kernel_isa(args.isa)
    isa = zipar.runtime.kernel_isa()
    only = [p for p in args.only.split(",") if p]
    torch = None
    if only:  # the PyTorch table
        import torch

        torch.set_num_threads(threads)
    pols = {"raster": Raster(), "zipar8": ZipAR(8, schedule="paper"),
            "zipar4": ZipAR(4, schedule="paper")}
    tag = args.tag or f"{threads}t"
    out = os.path.join(HERE, "results", f"vs_torch_{tag}.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)

    def wanted(*cell):
        return any(fnmatch.fnmatch(":".join(map(str, cell)), p) for p in only)

    def save(results, gains):
        with open(out, "w") as f:
            json.dump({"threads": threads, "rows": args.rows, "width": W, "cfg_scale": CFG,
                       "torch": torch.__version__ if torch else None,
                       "machine": platform.processor() or platform.machine(),
                       "cpu_count": os.cpu_count(), "results": results, "full_grid": gains},
                      f, indent=1)
    zipar.show_config()
    print(f"bench_vs_torch: {threads} threads, torch {torch.__version__ if torch else '-'}, "
          f"{args.rows}x{W} cells per image, CFG {CFG}, greedy", flush=True)
    results, gains = [], []
    for name in args.models.split(","):
        if not any(wanted(name, dt, b, p) for dt in args.dtypes.split(",")
                   for b in args.batches.split(",") for p in args.policies.split(",")):
            continue
        dim, n_layer, n_head = SIZES[name]
        cfg = ModelConfig(dim=dim, n_layer=n_layer, n_head=n_head, vocab_size=VOCAB,
                          grid=(args.rows, W), num_classes=CLASSES)
        sd32 = random_state_dict(dim, n_layer, cfg.hidden, seed=1)
        for dt in args.dtypes.split(","):
            if not any(wanted(name, dt, b, p) for b in args.batches.split(",")
                       for p in args.policies.split(",")):
                continue
            sd = sd32 if dt == "fp32" else {k: round_bf16(v) for k, v in sd32.items()}
            zdtype = "float32" if dt == "fp32" else "bfloat16"
            zmodel = Model(cfg, sd, dtype=zdtype)
            tmodel = TorchLlamaGen(torch, sd, dim, n_layer, n_head, args.rows,
                                   torch.float32 if dt == "fp32" else torch.bfloat16)
            for batch in [int(b) for b in args.batches.split(",")]:
                if not any(wanted(name, dt, batch, p) for p in args.policies.split(",")):
                    continue
                labels = [(207 + 13 * i) % CLASSES for i in range(batch)]
                tmodel.run(labels[:1], raster_passes(1)[:3])  # warm-up (allocator, threads)
                base = {}
                for pname in args.policies.split(","):
                    if not wanted(name, dt, batch, pname):
                        continue
                    pol = pols[pname]
                    t0 = time.perf_counter()
                    res = zmodel.generate(labels, policy=pol, cfg_scale=CFG, temperature=0.0,
                                          trace=pname != "raster", decode_images=False)
                    z_s = time.perf_counter() - t0
                    passes = raster_passes(args.rows) if pname == "raster" else \
                        trace_passes(res.trace, core())
                    t_tok, t_s = tmodel.run(labels, passes)
                    same = None
                    if pname == "raster":
                        same = float(np.mean(t_tok.reshape(batch, -1) ==
                                             np.asarray(res.tokens).reshape(batch, -1)))
                        base = {"z": z_s, "t": t_s, "passes": len(passes)}
                    gain = (lambda a, b: a / b if base else float("nan"))
                    row = {"model": f"GPT-{name}", "dtype": dt, "batch": batch, "policy": pname,
                           "threads": threads, "passes": len(passes),
                           "zipar_s_per_img": z_s / batch, "torch_s_per_img": t_s / batch,
                           "torch_over_zipar": t_s / z_s,
                           "step_gain": gain(base.get("passes"), len(passes)),
                           "zipar_wall_gain": gain(base.get("z"), z_s),
                           "torch_wall_gain": gain(base.get("t"), t_s),
                           "raster_tokens_equal_fraction": same}
                    results.append(row)
                    save(results, gains)
                    print(f"GPT-{name} {dt:<4} batch {batch} {pname:<7} passes {len(passes):4d}  "
                          f"zipar {z_s / batch:8.3f} s/img  torch {t_s / batch:8.3f} s/img  "
                          f"torch/zipar {t_s / z_s:5.2f}x  step gain {row['step_gain']:4.2f}  "
                          f"wall gain zipar {row['zipar_wall_gain']:4.2f} torch "
                          f"{row['torch_wall_gain']:4.2f}"
                          + (f"  raster tokens equal {same:.3f}" if same is not None else ""),
                          flush=True)
            del zmodel, tmodel
    for spec in [g for g in args.gain.split(",") if g]:  # zipar alone, the whole square grid
        name, dt, grid = spec.split(":")
        dim, n_layer, n_head = SIZES[name]
        cfg = ModelConfig(dim=dim, n_layer=n_layer, n_head=n_head, vocab_size=VOCAB,
                          grid=int(grid), num_classes=CLASSES)
        zmodel = Model(cfg, random_state_dict(dim, n_layer, cfg.hidden, seed=1),
                       dtype="float32" if dt == "fp32" else "bfloat16")
        names = ("raster", "zipar4", "zipar8")
        walls = {p: [] for p in names}
        passes = {}
        for rep in range(args.gain_repeats):  # alternately, so that load drift hits all three
            for pname in names:
                res = zmodel.generate([207], policy=pols[pname], cfg_scale=CFG,
                                      temperature=0.0, decode_images=False)
                walls[pname].append(res.stats["seconds"])
                passes[pname] = res.stats["forward_passes"]
                print(f"  GPT-{name} {dt} {grid}x{grid} round {rep} {pname:<7} "
                      f"{res.stats['seconds']:8.3f} s", flush=True)
        base_wall, base_passes = float(np.median(walls["raster"])), passes["raster"]
        for pname in names:
            wall = float(np.median(walls[pname]))
            row = {"model": f"GPT-{name}", "dtype": dt, "grid": int(grid), "policy": pname,
                   "threads": threads, "kernel_isa": isa, "passes": passes[pname], "seconds": wall,
                   "seconds_runs": walls[pname], "step_gain": base_passes / passes[pname],
                   "wall_gain": base_wall / wall}
            row["wall_over_step"] = row["wall_gain"] / row["step_gain"]
            gains.append(row)
            save(results, gains)
            print(f"full grid GPT-{name} {dt} {grid}x{grid} {isa} {pname:<7} passes "
                  f"{passes[pname]:4d}  {wall:8.3f} s (median of {len(walls[pname])})  step "
                  f"gain {row['step_gain']:4.2f}  wall gain {row['wall_gain']:4.2f}  wall/step "
                  f"{row['wall_over_step']:4.2f}", flush=True)
        del zmodel
    save(results, gains)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
