"""ZipAR benchmark: step gain vs wall-time gain on the GPT-B shape (random weights, CFG on).

For 16x16 and 24x24 grids and each policy (raster; ZipAR s in {1, 2, 4, 8, 12, 16} with the eager
and the paper schedule; adaptive at two settings): forward passes, seconds per image, step gain
(raster passes / passes), wall-time gain (raster seconds / seconds) and their ratio, plus the
scheduler's share of the engine time (everything outside the forward passes: planning, sampling,
bookkeeping).

    python benchmarks/bench_zipar.py [--quick] [--images N]

Writes benchmarks/results/zipar.json. Targets: wall-time gain >= 0.9 x step gain for s >= 4;
scheduler time < 2% of pass time. Engine time outside the forward passes is split into
sampling (distributions over the 16384-token vocabulary, top-k, draws, rejection tests) and the
scheduler proper (planning queries, proxies, refeeds, bookkeeping); both are reported.
"""
import argparse
import json
import os
import time

import zipar
from zipar import AdaptiveZipAR, Raster, ZipAR

HERE = os.path.dirname(os.path.abspath(__file__))


def policies(W, quick):
    out = [Raster()]
    windows = [s for s in (1, 2, 4, 8, 12, 16) if s < W]
    if quick:
        windows = [s for s in windows if s in (2, 4, 8)]
    for s in windows:
        out.append(ZipAR(s))
        out.append(ZipAR(s, schedule="paper"))
    out.append(AdaptiveZipAR(4))
    out.append(AdaptiveZipAR(8, threshold=0.5))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="16x16 only, fewer windows")
    ap.add_argument("--images", type=int, default=1, help="images per run (batch)")
    args = ap.parse_args()
    zipar.show_config()
    results = []
    grids = (16,) if args.quick else (16, 24)
    for grid in grids:
        model = zipar.random_model(dim=768, n_layer=12, n_head=12, vocab_size=16384, grid=grid,
                                   num_classes=1000, seed=0)
        labels = [207 + i for i in range(args.images)]
        base = None
        print(f"\n{grid}x{grid} grid, {args.images} image(s) per run, GPT-B shape, CFG 4.0")
        print(f"{'policy':<44} {'passes':>6} {'s/img':>7} {'step x':>7} {'wall x':>7} "
              f"{'ratio':>6} {'sched %':>8} {'sample %':>9}")
        for pol in policies(grid, args.quick):
            t0 = time.perf_counter()
            res = model.generate(labels, policy=pol, seed=0, top_k=2000, decode_images=False)
            dt = time.perf_counter() - t0
            st = res.stats
            passes = st["forward_passes"]
            if base is None:
                base = (passes, dt)
            # scheduler: planning and bookkeeping (engine time outside forward and sampling)
            sched = (st["engine_seconds"] - st["forward_seconds"] - st["sample_seconds"]) / \
                st["forward_seconds"]
            sampling = st["sample_seconds"] / st["forward_seconds"]
            rec = dict(grid=grid, policy=pol.to_dict(), passes=passes,
                       seconds_per_image=dt / len(labels), step_gain=base[0] / passes,
                       wall_gain=base[1] / dt, scheduler_fraction=sched,
                       sampling_fraction=sampling,
                       mean_queries_per_pass=st["mean_queries_per_pass"],
                       drafts_accepted=st["drafts_accepted"], drafts_rejected=st["drafts_rejected"])
            rec["wall_over_step"] = rec["wall_gain"] / rec["step_gain"]
            results.append(rec)
            name = json.dumps(pol.to_dict())[:44]
            print(f"{name:<44} {passes:>6} {rec['seconds_per_image']:>7.2f} "
                  f"{rec['step_gain']:>7.2f} {rec['wall_gain']:>7.2f} "
                  f"{rec['wall_over_step']:>6.2f} "
                  f"{100 * sched:>7.2f}% {100 * sampling:>8.2f}%")
    fixed4 = [r for r in results if r["policy"]["policy"] == "ZipAR" and r["policy"]["window"] >= 4]
    summary = dict(
        min_wall_over_step_s_ge_4=min(r["wall_over_step"] for r in fixed4) if fixed4 else None,
        wall_target_met=all(r["wall_over_step"] >= 0.9 for r in fixed4),
        max_scheduler_fraction=max(r["scheduler_fraction"] for r in results),
        scheduler_target_met=all(r["scheduler_fraction"] < 0.02 for r in results))
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "zipar.json"), "w") as f:
        json.dump(dict(build=zipar.build_info(), runs=results, summary=summary), f, indent=2)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
