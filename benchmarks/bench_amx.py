"""bf16 weights on the AMX tiles against the AVX-512 kernel, side by side in one process.

On a CPU with AMX-BF16 the matrix kernels run bf16 weights on the tile unit ("amx", the default
there); "avx512" widens them in registers and multiplies with FMAs. For random LlamaGen-shaped
bf16 models (CFG, a 16x16 grid half in the cache) and passes of q queries (2q rows), the two
kernels alternate in rounds of passes, each round preceded by a read-bandwidth probe:

    python benchmarks/bench_amx.py [--shapes GPT-B GPT-L] [--queries 1 6] [--threads N]

prints, per (shape, q): ms per pass for each kernel (median over rounds), amx / avx512, the
weight bytes per second of the amx pass as a fraction of the probe, the pass(q) / pass(1) ratio
of each kernel (what ZipAR's wall gain needs near 1), and the largest logit difference between
the kernels relative to the largest logit (teacher-forced logits of one image; AMX splits
activations exactly into three bf16 parts, so only the accumulation's rounding differs).
Writes benchmarks/results/amx.json.
Exits with a message where the CPU has no AMX.
"""
import argparse
import json
import os
import platform

import numpy as np

import zipar
from bench_forward import half_filled

HERE = os.path.dirname(os.path.abspath(__file__))
ISAS = ("amx", "avx512")


def logits_gap(model, q):
    """max |logits(amx) - logits(avx512)| / max |logits(avx512)|, teacher-forced logits of q
    images (every position, in one pass)."""
    c = model.config
    tokens = np.random.default_rng(1).integers(0, c.vocab_size, (q, c.H, c.W))
    out = {}
    for isa in ISAS:
        zipar.runtime.set_kernel_isa(isa)
        out[isa] = model.logits(list(range(q)), tokens, cfg_scale=4.0)
    zipar.runtime.set_kernel_isa(None)
    return float(np.abs(out["amx"] - out["avx512"]).max() / np.abs(out["avx512"]).max())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="+", default=["GPT-B", "GPT-L"],
                    choices=sorted(zipar.config.LLAMAGEN_SIZES))
    ap.add_argument("--queries", nargs="+", type=int, default=[1, 6],
                    help="queries (images, one query each) per pass; 2 rows each under CFG")
    ap.add_argument("--threads", type=int, default=0, help="engine threads (0: default)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=6, help="passes per round and kernel")
    ap.add_argument("--no-logits", action="store_true", help="skip the logits comparison")
    args = ap.parse_args()
    try:
        zipar.runtime.set_kernel_isa("amx")
    except ValueError as e:
        raise SystemExit(f"bench_amx: {e}")
    if args.threads:
        zipar.set_num_threads(args.threads)
    rows = []
    for shape in args.shapes:
        n_layer, n_head, dim = zipar.config.LLAMAGEN_SIZES[shape]
        base = zipar.random_model(dim=dim, n_layer=n_layer, n_head=n_head, vocab_size=16384,
                                  grid=16, num_classes=1000, seed=0)
        model = zipar.Model(base.config, base.weights, dtype="bfloat16")
        del base
        wbytes = 2 * (sum(a.size for k, a in model.weights.items()
                          if k.startswith("layers.") and a.ndim == 2)
                      + model.weights["output.weight"].size)
        per_q = {}
        for q in args.queries:
            one_pass = half_filled(model, q)
            times = {isa: [] for isa in ISAS}
            fracs, k = [], 0
            for _ in range(args.rounds):
                bw = zipar.runtime.read_bandwidth(512 << 20, 3)
                for isa in ISAS:
                    zipar.runtime.set_kernel_isa(isa)
                    mine = []
                    for _ in range(args.reps):
                        mine.append(one_pass(k))
                        k += 1
                    times[isa].append(float(np.median(mine)))
                    if isa == "amx":
                        fracs.append(wbytes / times[isa][-1] / bw)
            zipar.runtime.set_kernel_isa(None)
            ms = {isa: 1e3 * float(np.median(times[isa])) for isa in ISAS}
            per_q[q] = ms
            row = dict(shape=shape, queries=q, rows=2 * q, threads=zipar.get_num_threads(),
                       amx_ms=ms["amx"], avx512_ms=ms["avx512"],
                       amx_over_avx512=ms["amx"] / ms["avx512"],
                       amx_bandwidth_fraction=float(np.median(fracs)),
                       weight_bytes=wbytes)
            if q != args.queries[0]:
                q0 = args.queries[0]
                row.update({f"{isa}_over_q{q0}": ms[isa] / per_q[q0][isa] for isa in ISAS})
            if not args.no_logits and q == args.queries[0]:
                row["logits_gap"] = logits_gap(model, 1)
            rows.append(row)
            print(f"{shape} bf16, {q} queries ({2 * q} rows), {row['threads']} threads: amx "
                  f"{ms['amx']:.2f} ms, avx512 {ms['avx512']:.2f} ms, amx/avx512 "
                  f"{row['amx_over_avx512']:.2f}; amx reads {row['amx_bandwidth_fraction']:.1%}"
                  f" of the probe"
                  + "".join(f"; {isa} pass / pass({args.queries[0]} q) "
                            f"{row[isa + '_over_q' + str(args.queries[0])]:.2f}"
                            for isa in ISAS if isa + "_over_q" + str(args.queries[0]) in row)
                  + (f"; logits differ by {row['logits_gap']:.1e} of the largest"
                     if "logits_gap" in row else ""), flush=True)
        del model
    out = dict(machine=platform.processor() or platform.machine(), rows=rows)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "amx.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
