"""K/V cache in float32 against bfloat16 (``generate(..., kv_dtype=)``), side by side.

    python benchmarks/bench_kv_dtype.py [--threads 2] [--repeats 2] [--gptb-images 8]
                                        [--vq-images 50] [--out FILE]

Two models: the built-in VQ model (16x16 grid; batch --vq-images, CFG 2.0) and a GPT-B-shaped
random model (dim 768, 12 layers, 12 heads, vocab 16384, 16x16 grid; batch --gptb-images, CFG
4.0, top-k 2000), float32 weights. For each model and policy (raster, ZipAR-4) the two cache types
run alternately, --repeats times each, so load drift on a shared machine hits both; prints the
median seconds per image, the speed-up and the cache bytes. Tokens of the two cache types may
differ (the rounding of keys and values changes the logits slightly); each type's are checked
to repeat exactly.
"""
import argparse
import time

import numpy as np

import zipar


def gpt_b():
    return zipar.random_model(dim=768, n_layer=12, n_head=12, vocab_size=16384, grid=16,
                              num_classes=1000, seed=0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--gptb-images", type=int, default=8)
    ap.add_argument("--vq-images", type=int, default=50)
    ap.add_argument("--out", default=None, help="also write the report to this file")
    args = ap.parse_args()
    zipar.set_num_threads(args.threads)
    lines = [f"threads {args.threads}, repeats {args.repeats} (median), alternating "
             "float32 / bfloat16 cache"]

    def say(s):
        print(s, flush=True)
        lines.append(s)

    settings = [
        ("built-in VQ", zipar.load_default("vq"), np.arange(args.vq_images) % 10,
         dict(cfg_scale=2.0)),
        ("GPT-B random", gpt_b(), np.arange(args.gptb_images) * 7 % 1000,
         dict(cfg_scale=4.0, top_k=2000)),
    ]
    for name, model, labels, kw in settings:
        for pol in (zipar.Raster(), zipar.ZipAR(4)):
            times = {"float32": [], "bfloat16": []}
            tokens, nbytes = {}, {}
            for rep in range(args.repeats):
                for kv in ("float32", "bfloat16"):
                    t0 = time.perf_counter()
                    res = model.generate(labels, policy=pol, seed=0, decode_images=False,
                                         kv_dtype=kv, **kw)
                    times[kv].append((time.perf_counter() - t0) / len(labels))
                    if kv in tokens and not np.array_equal(tokens[kv], res.tokens):
                        raise SystemExit(f"{name} {kv}: tokens differ between repeats")
                    tokens[kv] = res.tokens
                    nbytes[kv] = res.stats["kv_cache_bytes"]
            f32, bf16 = (float(np.median(times[k])) for k in ("float32", "bfloat16"))
            same = np.mean(tokens["float32"] == tokens["bfloat16"])
            say(f"{name}, batch {len(labels)}, {pol.to_dict()['policy']}"
                f"{'-4' if isinstance(pol, zipar.ZipAR) else ''}: float32 {f32:.3f} s/img "
                f"(cache {nbytes['float32'] / 1e6:.0f} MB), bfloat16 {bf16:.3f} s/img "
                f"(cache {nbytes['bfloat16'] / 1e6:.0f} MB), speed-up {f32 / bf16:.2f}x; "
                f"runs {' '.join(f'{t:.3f}' for t in times['float32'])} | "
                f"{' '.join(f'{t:.3f}' for t in times['bfloat16'])}; "
                f"tokens equal to float32's: {same:.1%}")
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
