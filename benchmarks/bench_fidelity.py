"""Fidelity of ZipAR on the built-in Fashion-MNIST model (28x28 grid, 784 raster passes).

Settings: raster; ZipAR s in {1, 2, 4, 7, 14, 28} with the eager and the paper schedule; adaptive
at several min windows and thresholds. For each: forward passes, step reduction, FID-proxy
(Frechet distance of classifier features against the test set) with a bootstrap interval, class
accuracy of the samples, sample NLL under the exact model (raster teacher forcing, bits per
pixel), diversity, seconds. Also the floor: the test set split in two halves.

    python benchmarks/bench_fidelity.py [--samples 1000] [--workers 2] [--cfg-scale 1.0]
    python benchmarks/bench_fidelity.py --generate-only   # chunks only (e.g. on a big machine)
    python benchmarks/bench_fidelity.py --report-only     # table/plot from finished chunks
    python benchmarks/bench_fidelity.py --report-only --retime   # ... seconds re-timed here

Sample i of every setting has label i % 10 and sample id i (seed 0), so its tokens do not depend
on the batching or on the machine. Each setting is generated in chunks of --chunk consecutive
samples (a multiple of --batch, so the batches are those of one run over all samples) by spawned
single-threaded workers; a chunk is written atomically as
benchmarks/results/fidelity_cells/<setting>/<first>.npz (tokens, passes and queries per image,
log-probability of each sample under the exact model, seconds), so an interrupted run resumes and
chunks computed on several machines are merged by copying the files. Writes
benchmarks/results/fidelity.json, benchmarks/results/fidelity.png and the table in BENCHMARKS.md
(between markers).
"""
import argparse
import json
import math
import os
import tempfile
import time

import numpy as np

import zipar
from zipar.fmnist import eval as zeval
from zipar import sweep as zsweep

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results")
CELLS = os.path.join(RESULTS, "fidelity_cells")
MD = os.path.join(os.path.dirname(HERE), "BENCHMARKS.md")
BEGIN, END = "<!-- fidelity:begin -->", "<!-- fidelity:end -->"
COUNTERS = ("proxies", "refeeds", "drafts_proposed", "drafts_accepted", "drafts_rejected",
            "resamples")


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


def _full_settings(cell, args):
    grid = {k: [v] for k, v in cell.items()}
    grid.update(cfg_scale=[args.cfg_scale], temperature=[1.0])
    (full,) = zsweep.expand_grid(grid)
    return full


def _cell_dir(cell, args):
    """A plain file name (letters, digits, '.', '_', '-') for a setting."""
    short = dict(window="w", schedule="", min_window="mw", threshold="t")
    name = "_".join(f"{short.get(k, k)}{v}" for k, v in cell.items() if k != "policy")
    return os.path.join(args.cells, "_".join(filter(None, (
        cell["policy"], name, f"cfg{args.cfg_scale:g}", f"b{args.batch}"))))


def _chunk_path(cell, first, args):
    return os.path.join(_cell_dir(cell, args), f"{first:06d}.npz")


def _chunks(cell, args):
    return [(first, min(args.samples, first + args.chunk))
            for first in range(0, args.samples, args.chunk)]


def _load_chunk(path, key):
    """A finished chunk's arrays, or None when it is absent or was made with other settings."""
    if not os.path.exists(path):
        return None
    with np.load(path, allow_pickle=False) as z:
        if json.loads(str(z["key"])) != key:
            return None
        return {k: z[k] for k in z.files}


def _chunk_key(cell, first, last, args):
    return dict(settings=_full_settings(cell, args), first=first, last=last, batch=args.batch,
                model="builtin:pixels")


def run_chunk(cell, first, last, args):
    """Generate samples first..last-1 of one setting in this process and write their file."""
    zipar.set_num_threads(1)
    model = zipar.load_default("pixels")
    full = _full_settings(cell, args)
    labels = np.arange(first, last) % model.config.num_classes
    tokens, passes, queries, totals, seconds = zsweep.generate_cell(
        model, full, labels, args.batch, first=first)
    log_prob = model.log_prob(labels, tokens)
    path = _chunk_path(cell, first, args)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp.npz")
    os.close(fd)
    np.savez_compressed(tmp, key=json.dumps(_chunk_key(cell, first, last, args)),
                        tokens=tokens.astype(np.uint8), passes=passes, queries=queries,
                        log_prob=np.asarray(log_prob, np.float64), seconds=np.float64(seconds),
                        cpu=cpu_name(),
                        **{k: np.int64(v) for k, v in totals.items()})
    os.replace(tmp, path)
    return seconds


def cpu_name():
    """The CPU's model name and the machine's core count (virtual machines often report a
    generic model name)."""
    import platform

    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{name}, {os.cpu_count()} cores"


def _worker(cell, first, last, args):
    """Seconds the chunk took, or None when it was not started because --stop-after has
    passed (minus --chunk-seconds, the time a chunk is expected to take)."""
    if args.stop_at and time.time() + args.chunk_seconds > args.stop_at:
        return None
    t0 = time.perf_counter()
    run_chunk(cell, first, last, args)
    return time.perf_counter() - t0


def _fmt_took(took):
    return "skipped (--stop-after)" if took is None else f"{took:.0f} s"


def _pool(workers):
    """Spawned single-threaded workers that exit when this process dies (a killed run must
    not leave them computing)."""
    import concurrent.futures as cf
    import multiprocessing as mp

    return cf.ProcessPoolExecutor(max(1, workers), mp_context=mp.get_context("spawn"),
                                  initializer=zsweep.process_worker_init,
                                  initargs=(1, os.getpid()))


def generate(cells, args):
    """Every missing chunk, longest settings first (--order short: shortest first), in spawned
    single-threaded workers."""
    sign = -1 if args.order == "long" else 1
    todo = [(cell, first, last) for cell in sorted(cells, key=lambda c: sign * _expected_passes(c))
            for first, last in _chunks(cell, args)
            if _load_chunk(_chunk_path(cell, first, args),
                           _chunk_key(cell, first, last, args)) is None]
    print(f"{len(todo)} chunks to generate with {args.workers} workers", flush=True)
    if not todo:
        return
    if args.workers == 1:
        for cell, first, last in todo:
            print(f"  {json.dumps(cell)} {first}..{last - 1}: "
                  f"{_fmt_took(_worker(cell, first, last, args))}", flush=True)
        return
    import concurrent.futures as cf

    with _pool(args.workers) as ex:
        futs = {ex.submit(_worker, cell, first, last, args): (cell, first, last)
                for cell, first, last in todo}
        for f in cf.as_completed(futs):
            cell, first, last = futs[f]
            print(f"  {json.dumps(cell)} {first}..{last - 1}: {_fmt_took(f.result())}",
                  flush=True)


def collect(cells, args):
    """One record per setting whose chunks are all finished (the others are named)."""
    records = []
    for cell in cells:
        parts = [_load_chunk(_chunk_path(cell, first, args), _chunk_key(cell, first, last, args))
                 for first, last in _chunks(cell, args)]
        if any(p is None for p in parts):
            print(f"  (not finished: {json.dumps(cell)}, "
                  f"{sum(p is None for p in parts)} of {len(parts)} chunks missing)")
            continue
        cat = {k: np.concatenate([p[k] for p in parts]) for k in ("tokens", "passes", "queries",
                                                                   "log_prob")}
        n = cat["tokens"].shape[0]
        seconds = float(sum(p["seconds"] for p in parts))
        cpus = sorted({str(p["cpu"]) for p in parts})
        rec = dict(_full_settings(cell, args))
        rec.update(n_samples=n, batch_size=args.batch,
                   forward_passes=float(cat["passes"].mean()),
                   forward_passes_max=int(cat["passes"].max()),
                   mean_queries_per_pass=float(cat["queries"].sum() / cat["passes"].sum()),
                   **{k: float(sum(p[k] for p in parts)) / n for k in COUNTERS},
                   nll_bits=float(-cat["log_prob"].mean() / (28 * 28) / math.log(2.0)),
                   seconds=seconds, seconds_per_image=seconds / n, cpu="; ".join(cpus))
        verified = rec["drafts_accepted"] + rec["drafts_rejected"]
        rec["draft_acceptance"] = rec["drafts_accepted"] / verified if verified else None
        rec["_tokens"] = cat["tokens"].astype(np.int32)
        rec["_cell"] = cell
        records.append(rec)
        print(f"  {json.dumps(cell):<62} passes {rec['forward_passes']:7.1f}  "
              f"nll {rec['nll_bits']:.4f} bits/px  {rec['seconds_per_image']:.3f} s/img",
              flush=True)
    return records


def _time_one(cell, args):
    """Seconds per image of the setting's first batch (sample ids 0..batch-1), one engine
    thread, and its tokens."""
    zipar.set_num_threads(1)
    model = zipar.load_default("pixels")
    full = _full_settings(cell, args)
    labels = np.arange(args.batch) % model.config.num_classes
    tokens, _, _, _, seconds = zsweep.generate_cell(model, full, labels, args.batch)
    return seconds / args.batch, tokens


def time_settings(records, args):
    """Re-time every setting side by side in one run (the chunks' own seconds come from
    different machines and loads): the first batch of each, in --workers single-threaded
    workers, all busy. The tokens must equal the chunks' (same sample ids)."""
    cells = [r["_cell"] for r in records]
    with _pool(args.workers) as ex:
        futs = [ex.submit(_time_one, cell, args) for cell in cells]
        for rec, cell, f in zip(records, cells, futs):
            sec, tokens = f.result()
            if not np.array_equal(tokens, rec["_tokens"][:args.batch]):
                raise SystemExit(f"{json.dumps(cell)}: re-timed tokens differ from the chunks'")
            rec["seconds_per_image_chunks"] = rec.pop("seconds_per_image")
            rec["seconds_per_image"] = sec
            print(f"  {json.dumps(cell):<62} {sec:.3f} s/img", flush=True)


def evaluate(records, args):
    clf = zeval.Classifier.load_default()
    test_images, test_labels = zeval.test_set()
    ref_feat = clf.features(test_images)
    from zipar.fmnist import builtin

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
    within = [r for r in records if r["fid_vs_raster"] <= 1.05 and r["policy"] != "raster"]
    closest = min((r for r in records if r["policy"] != "raster"),
                  key=lambda r: r["fid_vs_raster"], default=raster)
    best = max(within, key=lambda r: r["step_reduction"]) if within else raster
    summary = dict(
        samples_per_setting=args.samples, cfg_scale=args.cfg_scale,
        raster_fid=raster["fid_proxy"], **extra,
        max_step_reduction_within_5pct_fid=best["step_reduction"],
        setting_at_that_reduction=label(best) if within else None,
        closest_to_raster=label(closest), closest_fid_vs_raster=closest["fid_vs_raster"])
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
    retimed = all("seconds_per_image_chunks" in r for r in records)
    where = {}
    for r in records:
        for c in r["cpu"].split("; "):
            where.setdefault(c, []).append(label(r))
    tag = {c: chr(ord("A") + i) for i, c in enumerate(sorted(where))}
    n = sorted({r["n_samples"] for r in records})
    lines = [BEGIN, "",
             f"Built-in model, {' / '.join(map(str, n))} samples per setting (labels i % 10, "
             f"sample ids 0..{n[-1] - 1}, seed 0), cfg_scale {args.cfg_scale}, temperature 1, "
             f"batches of {args.batch}. FID-proxy floor (test set halves, 5,000 vs 5,000): "
             f"{extra['fid_floor']:.3f} [{extra['fid_floor_low']:.3f}, "
             f"{extra['fid_floor_high']:.3f}]; classifier test accuracy "
             f"{extra['test_accuracy']:.3f}. Intervals: {args.boot} bootstrap resamples of the "
             f"samples, 95%.", "",
             "| setting | passes | step reduction | FID-proxy [95% CI] | vs raster | class acc | "
             "NLL bits/px | diversity | s/img |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(
            f"| {label(r)} | {r['forward_passes']:.1f} | {r['step_reduction']:.1%} | "
            f"{r['fid_proxy']:.3f} [{r['fid_low']:.3f}, {r['fid_high']:.3f}] | "
            f"{r['fid_vs_raster']:.2f} | {r['class_accuracy']:.3f} | {r['nll_bits']:.4f} | "
            f"{r['diversity']:.3f} | {r['seconds_per_image']:.3f}"
            + ("" if retimed else f" ({'+'.join(tag[c] for c in r['cpu'].split('; '))})")
            + " |")
    machines = "; ".join(f"({tag[c]}) {c}: {', '.join(ls)}" for c, ls in sorted(where.items()))
    if retimed:
        seconds_note = (
            f"s/img: engine seconds per image of each setting's first batch ({args.batch} "
            f"images), re-timed side by side in one run on {cpu_name()}, {args.workers} "
            "single-threaded workers, all busy (the re-timed tokens equal the chunks'). The "
            f"chunks themselves ran on: {machines}. Their own seconds, taken under other loads, "
            "are seconds_per_image_chunks in fidelity.json.")
    else:
        seconds_note = ("Seconds per image: engine time of single-threaded workers, one per "
                        f"core, all cores busy, by machine: {machines}. They compare rows of "
                        "one machine only.")
    lines += ["", seconds_note,
              "", "ZipAR-28 (window = W, either schedule) decodes exactly the raster tokens "
              "(tests/test_scheduler.py::test_full_window_equals_raster), so the raster row "
              "stands for it.",
              "", (f"FID-proxy stays within 5% of raster up to a step reduction of "
                   f"{best['step_reduction']:.1%} ({label(best)}, FID-proxy "
                   f"{best['fid_proxy']:.3f}" if within else
                   "No ZipAR or adaptive setting keeps FID-proxy within 5% of raster; the "
                   f"closest is {label(closest)} ({closest['step_reduction']:.1%} fewer passes, "
                   f"FID-proxy {closest['fid_proxy']:.3f} = {closest['fid_vs_raster']:.2f} x")
              + f" raster's {raster['fid_proxy']:.3f} [{raster['fid_low']:.3f}, "
              f"{raster['fid_high']:.3f}]).", "",
              "Adaptive vs fixed (eager) at about equal passes:", ""]
    for c in comps:
        a = next(r for r in records if label(r) == c["adaptive"])
        f = next(r for r in records if label(r) == c["fixed"])
        overlap = a["fid_low"] <= f["fid_high"] and f["fid_low"] <= a["fid_high"]
        verdict = ("lower" if a["fid_proxy"] < f["fid_proxy"] else "higher") + (
            " (intervals overlap)" if overlap else " (intervals disjoint)")
        lines.append(f"- {c['adaptive']} ({c['adaptive_passes']:.1f} passes): FID-proxy "
                     f"{c['adaptive_fid']:.3f}, {verdict} than {c['fixed']} "
                     f"({c['fixed_passes']:.1f} passes, {c['fixed_fid']:.3f}).")
    lines += ["", END]
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
        err = [[r["fid_proxy"] - r["fid_low"] for r in rs],
               [r["fid_high"] - r["fid_proxy"] for r in rs]]
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
    ap.add_argument("--chunk", type=int, default=50,
                    help="samples per work unit (a multiple of --batch)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="spawned single-threaded workers (1: run in this process)")
    ap.add_argument("--cells", default=CELLS, help="directory of the finished chunks")
    ap.add_argument("--cfg-scale", type=float, default=1.0)
    ap.add_argument("--boot", type=int, default=200)
    ap.add_argument("--only", type=int, nargs="*", help="indices of settings to generate")
    ap.add_argument("--order", choices=("long", "short"), default="long",
                    help="generate the settings with the most (long) or fewest passes first")
    ap.add_argument("--stop-after", type=float, default=0,
                    help="seconds: start no chunk that would end later (0: no limit)")
    ap.add_argument("--chunk-seconds", type=float, default=120,
                    help="with --stop-after: expected seconds per chunk")
    ap.add_argument("--generate-only", action="store_true")
    ap.add_argument("--retime", action="store_true",
                    help="before the report, time each setting's first batch side by side here")
    ap.add_argument("--report-only", action="store_true",
                    help="no generation: report the settings whose chunks are all finished")
    args = ap.parse_args()
    if args.chunk < 1 or args.chunk % args.batch:
        ap.error("--chunk must be a positive multiple of --batch")
    args.stop_at = time.time() + args.stop_after if args.stop_after > 0 else 0
    cells = settings()
    if args.only:
        cells = [cells[i] for i in args.only]
    t0 = time.perf_counter()
    if not args.report_only:
        generate(cells, args)
        print(f"generation: {time.perf_counter() - t0:.0f} s", flush=True)
    if args.generate_only or args.only:
        return
    records = collect(cells, args)
    if not any(r["policy"] == "raster" for r in records):
        raise SystemExit("the raster setting is not finished: nothing to compare against")
    if args.retime:
        time_settings(records, args)
    records, extra = evaluate(records, args)
    report(records, extra, args)


if __name__ == "__main__":
    main()
