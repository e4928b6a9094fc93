"""Fidelity of ZipAR on the built-in Fashion-MNIST model (28x28 grid, 784 raster passes).

Settings: raster; ZipAR s in {1, 2, 4, 7, 14, 28} with the eager and the paper schedule; adaptive
at several min windows and thresholds. For each: forward passes, step reduction, FID-proxy
(Frechet distance of classifier features against the test set) with a bootstrap interval, class
accuracy of the samples, sample NLL under the exact model (raster teacher forcing, bits per
pixel), diversity, seconds. Also the floor: the test set split in two halves.

    python benchmarks/bench_fidelity.py [--samples 1000] [--workers 2] [--cfg-scale 1.0]
    python benchmarks/bench_fidelity.py --report-only      # table/plot from finished cells

Cells are computed by zipar.sweep (spawned single-threaded workers) and checkpointed under
benchmarks/results/fidelity_cells/, so an interrupted run resumes and runs on several machines
can be merged by copying cell files. Writes benchmarks/results/fidelity.json,
benchmarks/results/fidelity.png and the table in BENCHMARKS.md (between markers).
"""
import argparse
import json
import os
import time

import numpy as np

import zipar
from zipar import eval as zeval
from zipar import sweep as zsweep

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
CELLS = os.path.join(RESULTS, "fidelity_cells")
MD = os.path.join(os.path.dirname(HERE), "BENCHMARKS.md")
BEGIN, END = "<!-- fidelity:begin -->", "<!-- fidelity:end -->"


def settings():
    """ZipAR-28 (= W) is raster token for token (tests/test_scheduler.py proves it), so the
    raster row stands for it and it is not generated again."""
    cells = [dict(policy="raster")]
    for schedule in ("eager", "paper"):
        for s in (1, 2, 4, 7, 14):
            cells.append(dict(policy="zipar", window=s, schedule=schedule))
    for mw in (2, 4, 7):
        for th in (0.0, 0.5):
            cells.append(dict(policy="adaptive", min_window=mw, threshold=th))
    return cells


def _expected_passes(cell):
    """Rough cost of a cell, to start the longest first."""
    if cell["policy"] == "raster":
        return 28 * 28
    if cell["policy"] == "zipar":
        return zipar.ZipAR(cell["window"], schedule=cell["schedule"]).expected_passes(28, 28)
    return zipar.ZipAR(cell["min_window"]).expected_passes(28, 28) + 28


def _sweep_cell(cell, args):
    grid = {k: [v] for k, v in cell.items()}
    grid.update(cfg_scale=[args.cfg_scale], temperature=[1.0])
    return zsweep.sweep("builtin", grid, n_samples=args.samples, batch_size=args.batch,
                        executor="inprocess", out=args.cells, progress=False,
                        metrics=dict(nll_bits=zsweep.nll_bits))


def _finished(cell, args):
    """Whether zipar.sweep already holds this cell in args.cells."""
    grid = {k: [v] for k, v in cell.items()}
    grid.update(cfg_scale=[args.cfg_scale], temperature=[1.0])
    (settings,) = zsweep.expand_grid(grid)
    key = zsweep._cell_key(zsweep._normalize_spec("builtin"), settings, args.samples, None)
    return os.path.exists(os.path.join(args.cells, zsweep._cell_hash(key) + ".json"))


def _worker(cell, args):
    zipar.set_num_threads(1)
    t0 = time.perf_counter()
    _sweep_cell(cell, args)
    return time.perf_counter() - t0


def run_cells(cells, args):
    """Cells run in spawned single-threaded workers (longest first); each is checkpointed in
    args.cells by zipar.sweep, then everything is read back here in order."""
    if args.workers != 1:
        import concurrent.futures as cf
        import multiprocessing as mp

        order = sorted(range(len(cells)), key=lambda i: -_expected_passes(cells[i]))
        with cf.ProcessPoolExecutor(args.workers, mp_context=mp.get_context("spawn")) as ex:
            futs = {ex.submit(_worker, cells[i], args): i for i in order}
            for f in cf.as_completed(futs):
                print(f"  done {json.dumps(cells[futs[f]])} in {f.result():.0f} s", flush=True)
    records = []
    for cell in cells:
        if args.partial and not _finished(cell, args):
            print(f"  (not finished: {json.dumps(cell)})")
            continue
        res = _sweep_cell(cell, args)
        rec = res.records[0]
        rec["_tokens"] = res.tokens(0)
        records.append(rec)
        print(f"  {json.dumps(cell):<62} passes {rec['forward_passes']:7.1f}  "
              f"nll {rec['nll_bits']:.4f} bits/px  {rec['seconds_per_image']:.3f} s/img",
              flush=True)
    return records


def evaluate(records, args):
    clf = zeval.Classifier.load_default()
    test_images, test_labels = zeval.test_set()
    ref_feat = clf.features(test_images)
    from zipar import builtin

    tok = builtin.default_tokenizer()
    out = []
    for rec in records:
        toks = rec.pop("_tokens")
        labels = np.arange(len(toks)) % 10
        images = tok.decode(toks)
        fid = zeval.fid_proxy(images, n_boot=args.boot, classifier=clf,
                              reference_features=ref_feat)
        acc = zeval.class_accuracy(images, labels, classifier=clf)
        div = zeval.diversity(images, labels, classifier=clf)
        rec.update(fid_proxy=fid["value"], fid_low=fid["low"], fid_high=fid["high"],
                   class_accuracy=acc, diversity=div.get("relative", div.get("value")))
        out.append(rec)
    # floor: the test set split against itself (5000 vs 5000), same estimator
    half = len(test_images) // 2
    floor = zeval.fid_proxy(test_images[:half], n_boot=args.boot, classifier=clf,
                            reference_features=clf.features(test_images[half:]))
    test_acc = zeval.class_accuracy(test_images, test_labels, classifier=clf)
    return out, dict(fid_floor=floor["value"], fid_floor_low=floor["low"],
                     fid_floor_high=floor["high"], test_accuracy=test_acc)


def label(rec):
    p = rec["policy"]
    if p == "raster":
        return "raster"
    if p == "zipar":
        return f"ZipAR-{rec['window']} {rec['schedule']}"
    return f"adaptive-{rec['min_window']} t={rec['threshold']:g}"


def report(records, extra, args):
    raster = next(r for r in records if r["policy"] == "raster")
    for r in records:
        r["step_reduction"] = 1 - r["forward_passes"] / raster["forward_passes"]
        r["fid_vs_raster"] = r["fid_proxy"] / raster["fid_proxy"]
    within = [r for r in records if r["fid_vs_raster"] <= 1.05]
    best = max(within, key=lambda r: r["step_reduction"])
    summary = dict(
        samples_per_setting=args.samples, cfg_scale=args.cfg_scale,
        raster_fid=raster["fid_proxy"], **extra,
        max_step_reduction_within_5pct_fid=best["step_reduction"],
        setting_at_that_reduction=label(best))
    # adaptive vs fixed at (about) equal passes: nearest fixed eager setting by passes
    fixed = [r for r in records if r["policy"] == "zipar" and r["schedule"] == "eager"]
    comps = []
    for a in (r for r in records if r["policy"] == "adaptive"):
        near = min(fixed, key=lambda r: abs(r["forward_passes"] - a["forward_passes"]))
        comps.append(dict(adaptive=label(a), adaptive_passes=a["forward_passes"],
                          adaptive_fid=a["fid_proxy"], fixed=label(near),
                          fixed_passes=near["forward_passes"], fixed_fid=near["fid_proxy"]))
    summary["adaptive_vs_fixed"] = comps
    os.makedirs(RESULTS, exist_ok=True)
    clean = [{k: v for k, v in r.items() if not k.startswith("_")} for r in records]
    with open(os.path.join(RESULTS, "fidelity.json"), "w") as f:
        json.dump(dict(summary=summary, settings=clean), f, indent=2, default=float)
    lines = [BEGIN, "",
             f"Built-in model, {args.samples} samples per setting (labels i % 10, sample ids "
             f"0..{args.samples - 1}, seed 0), cfg_scale {args.cfg_scale}, temperature 1. "
             f"FID-proxy floor (test set halves): {extra['fid_floor']:.3f}; classifier test "
             f"accuracy {extra['test_accuracy']:.3f}.", "",
             "| setting | passes | step reduction | FID-proxy [95% CI] | vs raster | class acc | "
             "NLL bits/px | diversity | s/img |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(
            f"| {label(r)} | {r['forward_passes']:.1f} | {r['step_reduction']:.1%} | "
            f"{r['fid_proxy']:.3f} [{r['fid_low']:.3f}, {r['fid_high']:.3f}] | "
            f"{r['fid_vs_raster']:.2f} | {r['class_accuracy']:.3f} | {r['nll_bits']:.4f} | "
            f"{r['diversity']:.3f} | {r['seconds_per_image']:.3f} |")
    lines += ["", "ZipAR-28 (window = W, either schedule) decodes exactly the raster tokens "
              "(tests/test_scheduler.py::test_full_window_equals_raster), so the raster row "
              "stands for it.",
              "", f"FID-proxy stays within 5% of raster up to a step reduction of "
              f"{best['step_reduction']:.1%} ({label(best)}).", "", END]
    text = open(MD).read() if os.path.exists(MD) else "# Benchmarks\n"
    if BEGIN in text:
        text = text[:text.index(BEGIN)] + "\n".join(lines) + text[text.index(END) + len(END):]
    else:
        text += "\n## Fidelity (benchmarks/bench_fidelity.py)\n\n" + "\n".join(lines) + "\n"
    with open(MD, "w") as f:
        f.write(text)
    plot(records)
    print(json.dumps(summary, indent=1))


def plot(records):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    fams = {}
    for r in records:
        key = ("ZipAR " + r["schedule"]) if r["policy"] == "zipar" else \
            (f"adaptive t={r['threshold']:g}" if r["policy"] == "adaptive" else "raster")
        fams.setdefault(key, []).append(r)
    for key, rs in fams.items():
        rs = sorted(rs, key=lambda r: r["forward_passes"])
        x = [r["forward_passes"] for r in rs]
        y = [r["fid_proxy"] for r in rs]
        err = [[r["fid_proxy"] - r["fid_low"] for r in rs], [r["fid_high"] - r["fid_proxy"] for r in rs]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=key)
    ax.set_xscale("log")
    ax.set_xlabel("forward passes per image (log)")
    ax.set_ylabel("FID-proxy (lower is better)")
    ax.set_title("Built-in Fashion-MNIST model: fidelity vs passes")
    ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(RESULTS, "fidelity.png"), dpi=120)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="spawned single-threaded workers (1: run in this process)")
    ap.add_argument("--cells", default=CELLS, help="checkpoint directory of the cells")
    ap.add_argument("--cfg-scale", type=float, default=1.0)
    ap.add_argument("--boot", type=int, default=200)
    ap.add_argument("--only", type=int, nargs="*", help="indices of settings to run")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--partial", action="store_true",
                    help="with --report-only: report the finished cells, skip the others")
    args = ap.parse_args()
    cells = settings()
    if args.only:
        cells = [cells[i] for i in args.only]
    t0 = time.perf_counter()
    if args.report_only:
        args.workers = 1
    else:
        args.partial = False
    records = run_cells(cells, args)
    print(f"generation: {time.perf_counter() - t0:.0f} s")
    if args.only:
        return
    records, extra = evaluate(records, args)
    report(records, extra, args)


if __name__ == "__main__":
    main()
