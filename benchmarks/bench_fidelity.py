"""Fidelity of ZipAR on the built-in Fashion-MNIST models: "vq" (a miniature LlamaGen on 16x16
VQ tokens, 256 raster passes) and "pixels" (28x28 grey-level tokens, 784 raster passes).

Settings (--model vq / pixels): raster; ZipAR s in {1, 2, 4, 8, 12} (vq) / {2, 4, 7, 14}
(pixels) with the eager and the paper schedule and four row-start proxies: "above" (the
published one), "left", "const" (a fixed token: the most frequent token of the test set's own
token grids) and "calibrated" (the model's stored default, zipar.calibrate_proxy); adaptive at
min windows 2, 4, 8 with thresholds 0 and 0.5 ("above" proxy). When "const" and "calibrated"
name the same token they are one setting. For each: forward passes, step reduction, FID-proxy
(Frechet distance of classifier features against the test set) with a bootstrap interval, class
accuracy of the samples, sample NLL under the exact model (raster teacher forcing, bits per
token), diversity, seconds per image at batch 1 and at batch 50 (--retime). Also the floor: the
test set split in two halves.

    python benchmarks/bench_fidelity.py --model vq [--samples 1000] [--workers 2]
    python benchmarks/bench_fidelity.py --generate-only   # chunks only (e.g. on a big machine)
    python benchmarks/bench_fidelity.py --report-only     # table/plot from finished chunks
    python benchmarks/bench_fidelity.py --report-only --retime   # ... seconds re-timed here

Sample i of every setting has label i % 10 and sample id i (seed 0), so its tokens do not depend
on the batching or on the machine. Each setting is generated in chunks of --chunk consecutive
samples (a multiple of --batch, so the batches are those of one run over all samples) by spawned
single-threaded workers; a chunk is written atomically as
benchmarks/results/fidelity_cells/<model>/<setting>/<first>.npz (tokens, passes and queries per
image, log-probability of each sample under the exact model, seconds), so an interrupted run
resumes and chunks computed on several machines are merged by copying the files. Writes
benchmarks/results/fidelity_<model>.json, fidelity_<model>.png and the model's table in
BENCHMARKS.md (between markers).
"""
import argparse
import functools
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
# per model: windows, default cfg_scale, adaptive min windows, BENCHMARKS.md markers
MODELS = {
    "vq": dict(windows=(1, 2, 4, 8, 12), cfg_scale=2.0, min_windows=(2, 4, 8),
               markers=("<!-- fidelity-vq:begin -->", "<!-- fidelity-vq:end -->")),
    "pixels": dict(windows=(2, 4, 7, 14), cfg_scale=1.0, min_windows=(2, 4, 8),
                   markers=("<!-- fidelity:begin -->", "<!-- fidelity:end -->")),
}
PROXIES = ("above", "left", "const", "calibrated")
COUNTERS = ("proxies", "refeeds", "drafts_proposed", "drafts_accepted", "drafts_rejected",
            "resamples")


def _grid(model):
    from zipar.fmnist import builtin

    return builtin.default_config(model).grid


def const_token(model):
    """The "const" proxy: the most frequent token of the test set's own token grids (the
    tokenizer's encoding of the 10,000 test images; ties: the smallest id). Kept in
    results/fidelity_const_tokens.json once computed (machines without Fashion-MNIST read it)."""
    cache = os.path.join(RESULTS, "fidelity_const_tokens.json")
    known = {}
    if os.path.exists(cache):
        with open(cache) as f:
            known = json.load(f)
    if model in known:
        return int(known[model])
    if model == "vq":
        with np.load(os.path.join(RESULTS, "fmnist_vq_test_tokens.npz")) as z:
            tokens = z["tokens"]
    else:
        from zipar.fmnist import builtin

        tokens = builtin.default_tokenizer().encode(zeval.test_set()[0])
    known[model] = int(np.argmax(np.bincount(np.asarray(tokens).ravel())))
    with open(cache, "w") as f:
        json.dump(known, f, indent=1, sort_keys=True)
    return known[model]


def calibrated_token(model):
    """The "calibrated" proxy: the token the model stores (zipar.calibrate_proxy), or None."""
    from zipar.fmnist import builtin

    return builtin.row_start_proxy(model)


def proxy_tokens(model, names=("const", "calibrated")):
    """{"const": token, "calibrated": token} of a model (proxy names -> token ids), for the
    names asked for."""
    of = dict(const=const_token, calibrated=calibrated_token)
    return {n: of[n](model) for n in names if n in of}


def settings(model, proxies=PROXIES, tokens=None):
    """The settings of a model. ZipAR-W (= raster) is raster token for token
    (tests/test_scheduler.py proves it), so the raster row stands for it and it is not generated
    again. The "const" and "calibrated" proxies are cells with the token id as proxy (one cell
    when both name the same token)."""
    spec = MODELS[model]
    tokens = proxy_tokens(model) if tokens is None else tokens
    values = []
    for p in proxies:
        v = tokens.get(p, p)
        if v is None:
            raise SystemExit(f"the {model} model stores no calibrated proxy")
        if v not in values:
            values.append(v)
    cells = [dict(policy="raster")]
    for proxy in values:
        for schedule in ("eager", "paper"):
            for s in spec["windows"]:
                cells.append(dict(policy="zipar", window=s, schedule=schedule, proxy=proxy))
    for mw in spec["min_windows"]:
        for th in (0.0, 0.5):
            cells.append(dict(policy="adaptive", min_window=mw, threshold=th, proxy="above"))
    return cells


def _expected_passes(cell, model):
    """Rough cost of a cell, to start the longest first."""
    H, W = _grid(model)
    if cell["policy"] == "raster":
        return H * W
    if cell["policy"] == "zipar":
        return zipar.ZipAR(cell["window"], schedule=cell["schedule"]).expected_passes(H, W)
    return zipar.ZipAR(cell["min_window"]).expected_passes(H, W) + W


def _full_settings(cell, args):
    grid = {k: [v] for k, v in cell.items()}
    grid.update(cfg_scale=[args.cfg_scale], temperature=[1.0])
    (full,) = zsweep.expand_grid(grid)
    return full


def _cell_dir(cell, args):
    """A plain file name (letters, digits, '.', '_', '-') for a setting."""
    short = dict(window="w", schedule="", min_window="mw", threshold="t", proxy="p")
    name = "_".join(f"{short.get(k, k)}{v}" for k, v in cell.items() if k != "policy")
    return os.path.join(args.cells, args.model, "_".join(filter(None, (
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
                model=f"builtin:{args.model}")


def run_chunk(cell, first, last, args):
    """Generate samples first..last-1 of one setting in this process and write their file."""
    zipar.set_num_threads(1)
    model = zipar.load_default(args.model)
    full = _full_settings(cell, args)
    labels = np.arange(first, last) % model.config.num_classes
    tokens, passes, queries, totals, seconds = zsweep.generate_cell(
        model, full, labels, args.batch, first=first)
    # sample NLL (a raster teacher-forced pass per image) only for sample ids < --nll-samples:
    # it costs a third to a half of a chunk, and its mean settles long before 1,000 samples
    n_nll = max(0, min(last, args.nll_samples) - first)
    log_prob = np.full(last - first, np.nan)
    if n_nll:
        log_prob[:n_nll] = model.log_prob(labels[:n_nll], tokens[:n_nll])
    path = _chunk_path(cell, first, args)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp.npz")
    os.close(fd)
    np.savez_compressed(tmp, key=json.dumps(_chunk_key(cell, first, last, args)),
                        tokens=tokens.astype(np.uint16), passes=passes, queries=queries,
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
    sign = -1 if args.order in ("long", "breadth") else 1
    todo = [(cell, first, last)
            for cell in sorted(cells, key=lambda c: sign * _expected_passes(c, args.model))
            for first, last in _chunks(cell, args)
            if _load_chunk(_chunk_path(cell, first, args),
                           _chunk_key(cell, first, last, args)) is None]
    if args.order == "breadth":  # chunk 0 of every setting, then chunk 1, ...
        todo.sort(key=lambda t: t[1])
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
    """One record per setting over the same samples: each setting's finished chunks from sample 0
    on, cut to the fewest samples any setting has (all --samples when every chunk is finished;
    settings with none are named and left out)."""
    prefixes = []
    for cell in cells:
        parts = []
        for first, last in _chunks(cell, args):
            p = _load_chunk(_chunk_path(cell, first, args), _chunk_key(cell, first, last, args))
            if p is None:
                break
            parts.append(p)
        if not parts:
            print(f"  (not started: {json.dumps(cell)})")
            continue
        prefixes.append((cell, parts))
    n_common = min(sum(len(p["passes"]) for p in parts) for _, parts in prefixes)
    if n_common < args.samples:
        print(f"  every setting cut to its first {n_common} samples (not all chunks finished)")
    records = []
    for cell, parts in prefixes:
        keep, n = [], 0
        for p in parts:
            if n >= n_common:
                break
            keep.append(p)
            n += len(p["passes"])
        parts = keep
        paths = [_chunk_path(cell, first, args) for first, _ in _chunks(cell, args)][:len(parts)]
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
                   nll_bits=float(-np.nanmean(cat["log_prob"]) / cat["tokens"][0].size
                                  / math.log(2.0)),
                   nll_samples=int(np.isfinite(cat["log_prob"]).sum()),
                   seconds=seconds, seconds_per_image=seconds / n, cpu="; ".join(cpus))
        verified = rec["drafts_accepted"] + rec["drafts_rejected"]
        rec["draft_acceptance"] = rec["drafts_accepted"] / verified if verified else None
        rec["_tokens"] = cat["tokens"].astype(np.int32)
        rec["_paths"] = paths
        rec["_cell"] = cell
        records.append(rec)
        print(f"  {json.dumps(cell):<62} passes {rec['forward_passes']:7.1f}  "
              f"nll {rec['nll_bits']:.4f} bits/px  {rec['seconds_per_image']:.3f} s/img",
              flush=True)
    return records


def _time_one(cell, args):
    """Seconds per image of the setting's first batch (sample ids 0..batch-1; not with
    --retime b1) and of its first --batch1 images one at a time, one engine thread, and both
    runs' tokens (None, None when the batch is not timed)."""
    zipar.set_num_threads(1)
    model = zipar.load_default(args.model)
    full = _full_settings(cell, args)
    labels = np.arange(args.batch) % model.config.num_classes
    sec = tokens = None
    if args.retime == "both":
        tokens, _, _, _, seconds = zsweep.generate_cell(model, full, labels, args.batch)
        sec = seconds / args.batch
    n1 = min(args.batch1, args.batch)
    tokens1, _, _, _, seconds1 = zsweep.generate_cell(model, full, labels[:n1], 1)
    return sec, seconds1 / max(n1, 1), tokens, tokens1


def _retime_all(cells, args):
    """(sec, sec1, tokens, tokens1) of every setting, timed side by side in --workers
    single-threaded workers, all busy (_time_one each)."""
    with _pool(args.workers) as ex:
        futs = [ex.submit(_time_one, cell, args) for cell in cells]
        return [f.result() for f in futs]


def save_retimed(cells, path, args):
    """--retime-only: time every setting here (no chunks needed) and write the seconds and the
    timed tokens to an .npz that --retimed FILE reads into a later report (so the seconds can
    come from one quiet many-core machine and the scores from another)."""
    out = _retime_all(cells, args)
    arrays = dict(cells=np.array([json.dumps(c, sort_keys=True) for c in cells]),
                  cpu=np.array(cpu_name()), workers=np.int64(args.workers),
                  batch=np.int64(args.batch), batch1=np.int64(min(args.batch1, args.batch)),
                  sec=np.array([np.nan if o[0] is None else o[0] for o in out]),
                  sec1=np.array([o[1] for o in out]))
    for i, (_, _, tokens, tokens1) in enumerate(out):
        arrays[f"tokens1_{i}"] = tokens1
        if tokens is not None:
            arrays[f"tokens_{i}"] = tokens
    np.savez_compressed(path, **arrays)
    for c, o in zip(cells, out):
        print(f"  {json.dumps(c):<70} "
              + ("" if o[0] is None else f"{o[0]:.3f} s/img (batch {args.batch}), ")
              + f"{o[1]:.3f} (batch 1)", flush=True)
    print(f"wrote {path}")


def load_retimed(path, cells, args):
    """What save_retimed wrote, in the order of cells: [(sec, sec1, tokens, tokens1)], and the
    machine's name and worker count."""
    with np.load(path) as z:
        index = {str(c): i for i, c in enumerate(z["cells"])}
        if int(z["batch"]) != args.batch:
            raise SystemExit(f"{path}: timed at batch {int(z['batch'])}, not {args.batch}")
        args.batch1 = int(z["batch1"])
        out = []
        for cell in cells:
            i = index.get(json.dumps(cell, sort_keys=True))
            if i is None:
                raise SystemExit(f"{path}: no timing of {json.dumps(cell)}")
            sec = float(z["sec"][i])
            out.append((None if np.isnan(sec) or args.retime == "b1" else sec, float(z["sec1"][i]),
                        z[f"tokens_{i}"] if f"tokens_{i}" in z else None, z[f"tokens1_{i}"]))
        return out, str(z["cpu"]), int(z["workers"])


def time_settings(records, args):
    """Re-time every setting side by side in one run (the chunks' own seconds come from
    different machines and loads): the first batch of each, and its first --batch1 images at
    batch 1, in --workers single-threaded workers, all busy. The tokens are compared with the
    chunks' (same sample ids; tokens do not depend on the batch composition, but chunks made on
    another CPU may differ where float rounding differs: the fraction equal is recorded)."""
    cells = [r["_cell"] for r in records]
    if args.retimed:
        timed, args.retime_cpu, args.retime_workers = load_retimed(args.retimed, cells, args)
    else:
        timed = _retime_all(cells, args)
        args.retime_cpu, args.retime_workers = cpu_name(), args.workers
    for rec, cell, (sec, sec1, tokens, tokens1) in zip(records, cells, timed):
        if tokens is not None and not np.array_equal(tokens[:len(tokens1)], tokens1):
            raise SystemExit(f"{json.dumps(cell)}: batch-1 tokens differ from batch-"
                             f"{args.batch} tokens on one machine")
        ref = rec["_tokens"][:len(tokens1) if tokens is None else args.batch]
        mine = tokens1 if tokens is None else tokens
        rec["retime_tokens_equal"] = float(np.mean(np.all(mine == ref, axis=(1, 2))))
        if sec is not None:
            rec["seconds_per_image_chunks"] = rec.pop("seconds_per_image")
            rec["seconds_per_image"] = sec
        rec["seconds_per_image_batch1"] = sec1
        print(f"  {json.dumps(cell):<70} "
              + ("" if sec is None else f"{sec:.3f} s/img (batch {args.batch}), ")
              + f"{sec1:.3f} (batch 1); images equal to the chunks' "
              f"{rec['retime_tokens_equal']:.0%}", flush=True)


@functools.lru_cache(maxsize=1)
def _torch_vq_decoder():
    """The VQ model's decoder as the PyTorch module it was trained as (training/
    train_vq_fmnist.py, same float16-rounded weights, float32 math, one thread), or None
    without torch. About 2.5x faster than zipar's NumPy decoder on a CPU core; images are
    compared with zipar's in the report (decoder_check)."""
    try:
        import sys

        import torch

        sys.path.insert(0, os.path.join(os.path.dirname(HERE), "training"))
        import train_vq_fmnist as tv
    except ImportError:
        return None
    from zipar.fmnist import builtin
    from zipar.fmnist.resize import to_grey28

    torch.set_num_threads(1)
    with np.load(os.path.join(builtin.DATA_DIR, "fmnist_vq_tokenizer.npz")) as z:
        cfg = json.loads(bytes(z["__zipar_vq__"]).decode())
        sd = {k: torch.from_numpy(z[k].astype(np.float32)) for k in z.files
              if k != "__zipar_vq__"}
    net = tv.VQModel(cfg)
    net.load_state_dict(sd, strict=True)
    net.eval()

    def decode(tokens):
        with torch.no_grad():
            y = net.decode_tokens(torch.as_tensor(np.asarray(tokens, np.int64)))
        return to_grey28(tv.to_pixels_torch(y))

    return decode


def _images(model, decoder="zipar"):
    """A function: token grids -> 28x28 grey images in [0, 1] for the classifier."""
    from zipar.fmnist import builtin

    if model == "vq":
        if decoder == "torch":
            return _torch_vq_decoder()
        return builtin.vq_decoder().decode
    return builtin.default_tokenizer().decode


def decoder_name(model):
    """"torch" for the VQ model when PyTorch is installed (faster), else "zipar"."""
    import importlib.util

    return "torch" if model == "vq" and importlib.util.find_spec("torch") else "zipar"


def decoder_check(args, n=50):
    """zipar's VQ decoder vs the one the report used, on the raster setting's first n images:
    the largest grey-level difference and the fraction of pixels that differ."""
    if args.model != "vq" or args.decoder == "zipar":
        return None
    (cell,) = [c for c in settings(args.model, ("above",), args.tokens) if c["policy"] == "raster"]
    with np.load(_chunk_path(cell, 0, args)) as z:
        tokens = z["tokens"][:n].astype(np.int32)
    a = _images(args.model, "zipar")(tokens).astype(np.int32)
    b = _images(args.model, args.decoder)(tokens).astype(np.int32)
    return dict(images=n, max_grey_diff=int(np.abs(a - b).max()),
                fraction_pixels_differing=float(np.mean(a != b)))


def _decoded_path(chunk, decoder="zipar"):
    return chunk[:-len(".npz")] + (".images.npz" if decoder == "zipar" else
                                   f".images-{decoder}.npz")


def _decode_chunk(chunk, model, decoder="zipar"):
    """Decodes one chunk's tokens to 28x28 grey images and keeps them beside it (the VQ decoder
    costs about 0.1 s per image on one core: a report re-run must not pay it again)."""
    out = _decoded_path(chunk, decoder)
    if not os.path.exists(out) or os.path.getmtime(out) < os.path.getmtime(chunk):
        with np.load(chunk) as z:
            images = _images(model, decoder)(z["tokens"].astype(np.int32))
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(out), suffix=".tmp.npz")
        os.close(fd)
        np.savez_compressed(tmp, images=images)
        os.replace(tmp, out)
    return out


def decode_all(records, args):
    """Every chunk's images, decoded in --workers processes (one BLAS thread each)."""
    chunks = [c for r in records for c in r["_paths"]]
    todo = [c for c in chunks if not os.path.exists(_decoded_path(c, args.decoder))
            or os.path.getmtime(_decoded_path(c, args.decoder)) < os.path.getmtime(c)]
    print(f"decoding {len(todo)} of {len(chunks)} chunks ({args.decoder} decoder)", flush=True)
    if todo and args.workers > 1:

        os.environ["OPENBLAS_NUM_THREADS"] = "1"  # the spawned workers' NumPy BLAS
        with _pool(args.workers) as ex:
            for i, _ in enumerate(ex.map(_decode_chunk, todo, [args.model] * len(todo),
                                         [args.decoder] * len(todo))):
                if (i + 1) % 50 == 0:
                    print(f"  {i + 1} decoded", flush=True)
    else:
        for c in todo:
            _decode_chunk(c, args.model, args.decoder)


def evaluate(records, args):
    decode_all(records, args)
    clf = zeval.Classifier.load_default()
    test_images, test_labels = zeval.test_set()
    ref_feat = clf.features(test_images)
    out = []
    for rec in records:
        toks = rec.pop("_tokens")
        labels = np.arange(len(toks)) % 10
        images = []
        for c in rec.pop("_paths"):
            with np.load(_decoded_path(c, args.decoder)) as z:
                images.append(z["images"])
        images = np.concatenate(images)[:len(toks)]
        fid = zeval.fid_proxy(images, n_boot=args.boot, classifier=clf,
                              reference_features=ref_feat)
        acc = zeval.class_accuracy(images, labels, classifier=clf)
        div = zeval.diversity(images, labels, classifier=clf)
        rec.update(fid_proxy=fid["value"], fid_low=fid["low"], fid_high=fid["high"],
                   class_accuracy=acc, diversity=div.get("relative", div.get("value")))
        out.append(rec)
        print(f"  {label(rec, args.tokens):<36} FID-proxy {fid['value']:.3f}", flush=True)
    # floor: the test set split against itself (5000 vs 5000), same estimator
    half = len(test_images) // 2
    floor = zeval.fid_proxy(test_images[:half], n_boot=args.boot, classifier=clf,
                            reference_features=clf.features(test_images[half:]))
    test_acc = zeval.class_accuracy(test_images, test_labels, classifier=clf)
    return out, dict(fid_floor=floor["value"], fid_floor_low=floor["low"],
                     fid_floor_high=floor["high"], test_accuracy=test_acc)


def proxy_name(proxy, tokens):
    """"above" / "left" / "const" / "calibrated" / "const = calibrated" for a cell's proxy."""
    if isinstance(proxy, str):
        return proxy
    names = [k for k, v in tokens.items() if v == proxy]
    return " = ".join(names) if names else f"token {proxy}"


def label(rec, tokens):
    p = rec["policy"]
    if p == "raster":
        return "raster"
    proxy = proxy_name(rec["proxy"], tokens)
    if p == "zipar":
        return f"ZipAR-{rec['window']} {rec['schedule']}, {proxy}"
    return f"adaptive-{rec['min_window']} t={rec['threshold']:g}, {proxy}"


def _overlap(a, b):
    return a["fid_low"] <= b["fid_high"] and b["fid_low"] <= a["fid_high"]


def analyse(records, tokens):
    """The answers: the largest step reduction whose FID-proxy interval overlaps raster's (and
    the largest within 5% of raster); adaptive vs fixed at about equal passes; proxies compared
    at equal windows and schedules."""
    raster = next(r for r in records if r["policy"] == "raster")
    for r in records:
        r["step_reduction"] = 1 - r["forward_passes"] / raster["forward_passes"]
        r["fid_vs_raster"] = r["fid_proxy"] / raster["fid_proxy"]
        r["overlaps_raster"] = _overlap(r, raster)
        r["label"] = label(r, tokens)
    others = [r for r in records if r["policy"] != "raster"]
    overlap = [r for r in others if r["overlaps_raster"]]
    within = [r for r in others if r["fid_vs_raster"] <= 1.05]
    # ties in passes (the proxies of one window and schedule): the lowest FID-proxy
    best_overlap = max(overlap, key=lambda r: (r["step_reduction"], -r["fid_proxy"]),
                       default=None)
    best_within = max(within, key=lambda r: (r["step_reduction"], -r["fid_proxy"]),
                      default=None)
    closest = min(others, key=lambda r: r["fid_vs_raster"], default=raster)
    # adaptive vs fixed at (about) equal passes: nearest fixed eager setting with the same proxy
    comps = []
    for a in (r for r in records if r["policy"] == "adaptive"):
        fixed = [r for r in records if r["policy"] == "zipar" and r["schedule"] == "eager"
                 and r["proxy"] == a["proxy"]]
        near = min(fixed, key=lambda r: abs(r["forward_passes"] - a["forward_passes"]))
        comps.append(dict(adaptive=a["label"], adaptive_passes=a["forward_passes"],
                          adaptive_fid=a["fid_proxy"], fixed=near["label"],
                          fixed_passes=near["forward_passes"], fixed_fid=near["fid_proxy"],
                          adaptive_lower=a["fid_proxy"] < near["fid_proxy"],
                          intervals_overlap=_overlap(a, near)))
    # proxies: for each (window, schedule), each proxy's FID-proxy relative to "above"
    zs = [r for r in records if r["policy"] == "zipar"]
    names = []
    for r in zs:
        n = proxy_name(r["proxy"], tokens)
        if n not in names:
            names.append(n)
    pairs = {}
    for r in zs:
        pairs.setdefault((r["window"], r["schedule"]), {})[proxy_name(r["proxy"], tokens)] = r
    proxies = {}
    for n in names:
        ratios = [g[n]["fid_proxy"] / g["above"]["fid_proxy"] for g in pairs.values()
                  if n in g and "above" in g]
        best_in = sum(1 for g in pairs.values()
                      if n in g and g[n]["fid_proxy"] == min(x["fid_proxy"] for x in g.values()))
        disjoint_better = sum(1 for g in pairs.values() if n in g and n != "above" and
                              "above" in g and g[n]["fid_high"] < g["above"]["fid_low"])
        by_schedule = {}
        for sched in ("eager", "paper"):
            rs = [g[n]["fid_proxy"] / g["above"]["fid_proxy"] for (_, sc), g in pairs.items()
                  if sc == sched and n in g and "above" in g]
            if rs:
                by_schedule[sched] = float(np.exp(np.mean(np.log(rs))))
        proxies[n] = dict(geomean_fid_vs_above=float(np.exp(np.mean(np.log(ratios)))),
                          geomean_by_schedule=by_schedule,
                          best_of_proxies_in=best_in, settings=len(ratios),
                          better_than_above_disjoint=disjoint_better)
    best_proxy = min(proxies, key=lambda n: proxies[n]["geomean_fid_vs_above"])
    summary = dict(
        raster_fid=raster["fid_proxy"], raster_fid_interval=[raster["fid_low"],
                                                             raster["fid_high"]],
        max_step_reduction_overlapping_raster=best_overlap["step_reduction"] if best_overlap
        else 0.0,
        setting_at_that_reduction=best_overlap["label"] if best_overlap else None,
        max_step_reduction_within_5pct=best_within["step_reduction"] if best_within else 0.0,
        setting_within_5pct=best_within["label"] if best_within else None,
        closest_to_raster=closest["label"], closest_fid_vs_raster=closest["fid_vs_raster"],
        adaptive_vs_fixed=comps, proxies=proxies, best_proxy=best_proxy,
        proxy_tokens=tokens)
    return summary


def report(records, extra, args):
    summary = analyse(records, args.tokens)
    summary.update(model=args.model, samples_per_setting=min(r["n_samples"] for r in records),
                   cfg_scale=args.cfg_scale, decoder=args.decoder,
                   decoder_check=decoder_check(args), **extra)
    os.makedirs(RESULTS, exist_ok=True)
    clean = [{k: v for k, v in r.items() if not k.startswith("_")} for r in records]
    with open(os.path.join(RESULTS, f"fidelity_{args.model}.json"), "w") as f:
        json.dump(dict(summary=summary, settings=clean), f, indent=2, default=float)
    retimed = all("seconds_per_image_chunks" in r for r in records)
    b1_only = not retimed and all("seconds_per_image_batch1" in r for r in records)
    where = {}
    for r in records:
        for c in r["cpu"].split("; "):
            where.setdefault(c, []).append(r["label"])
    tag = {c: chr(ord("A") + i) for i, c in enumerate(sorted(where))}
    n = sorted({r["n_samples"] for r in records})
    H, W = _grid(args.model)
    raster = next(r for r in records if r["policy"] == "raster")
    begin, end = MODELS[args.model]["markers"]
    lines = [begin, "",
             f"Built-in model \"{args.model}\" ({H}x{W} tokens), {' / '.join(map(str, n))} "
             f"samples per setting (labels i % 10, sample ids 0..{n[-1] - 1}, seed 0), "
             f"cfg_scale {args.cfg_scale:g}, temperature 1, batches of {args.batch}. Proxies: "
             f"const = token {args.tokens.get('const')} (the test set's most frequent token), "
             f"calibrated = token {args.tokens.get('calibrated')} (stored with the model). "
             f"FID-proxy floor (test set halves, 5,000 vs 5,000): {extra['fid_floor']:.3f} "
             f"[{extra['fid_floor_low']:.3f}, {extra['fid_floor_high']:.3f}]; classifier test "
             f"accuracy {extra['test_accuracy']:.3f}. Intervals: {args.boot} bootstrap "
             f"resamples of the samples, 95%. Sample NLL: exact model, raster teacher forcing, "
             f"over the first {min(r['nll_samples'] for r in records)} samples of each setting."
             + ("" if not summary["decoder_check"] else
                " Images for the FID-proxy: the VQ decoder as its PyTorch training module (same "
                "float16-rounded weights, 2.5x faster than zipar's NumPy decoder); on the "
                f"raster setting's first {summary['decoder_check']['images']} images the two "
                f"differ by at most {summary['decoder_check']['max_grey_diff']} grey level(s) in "
                f"{summary['decoder_check']['fraction_pixels_differing']:.2%} of the pixels."),
             "",
             "| setting | passes | step reduction | FID-proxy [95% CI] | vs raster | class acc | "
             "NLL bits/token | diversity | s/img b" + str(args.batch) + " | s/img b1 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        mark = "" if r["policy"] == "raster" or not r["overlaps_raster"] else " *"
        b1 = r.get("seconds_per_image_batch1")
        lines.append(
            f"| {r['label']}{mark} | {r['forward_passes']:.1f} | {r['step_reduction']:.1%} | "
            f"{r['fid_proxy']:.3f} [{r['fid_low']:.3f}, {r['fid_high']:.3f}] | "
            f"{r['fid_vs_raster']:.2f} | {r['class_accuracy']:.3f} | {r['nll_bits']:.4f} | "
            f"{r['diversity']:.3f} | {r['seconds_per_image']:.3f}"
            + ("" if retimed else f" ({'+'.join(tag[c] for c in r['cpu'].split('; '))})")
            + f" | {'' if b1 is None else format(b1, '.3f')} |")
    machines = "; ".join(f"({tag[c]}) {c}: {len(ls)} settings" for c, ls in sorted(where.items()))
    if retimed:
        eq = min(r["retime_tokens_equal"] for r in records)
        seconds_note = (
            f"s/img: engine seconds per image of each setting's first batch ({args.batch} "
            f"images) and of its first {args.batch1} images one at a time (b1), re-timed side by "
            f"side in one run on {args.retime_cpu}, {args.retime_workers} single-threaded "
            "workers, all busy "
            f"(at least {eq:.0%} of the re-timed images equal the chunks' token for token; "
            f"batch-1 and batch-{args.batch} tokens are equal). The chunks ran on: "
            + machines + ".")
    else:
        seconds_note = (f"s/img b{args.batch}: engine time of single-threaded workers generating "
                        f"the chunks, one per core, all cores busy, by machine: {machines}. "
                        "They compare rows of one machine only.")
        if b1_only:
            eq = min(r["retime_tokens_equal"] for r in records)
            seconds_note += (
                f" s/img b1: the first {args.batch1} images of each setting one at a time, "
                f"timed side by side in one run on {args.retime_cpu}, {args.retime_workers} "
                f"single-threaded workers, all busy (at least {eq:.0%} of them equal the "
                "chunks' token for token).")
    s = summary
    lines += ["", "`*`: FID-proxy interval overlaps raster's. " + seconds_note,
              "", f"ZipAR-{W} (window = W, either schedule) decodes exactly the raster tokens "
              "(tests/test_scheduler.py::test_full_window_equals_raster), so the raster row "
              "stands for it.", ""]
    if s["setting_at_that_reduction"]:
        lines.append(f"- Largest step reduction whose FID-proxy interval overlaps raster's "
                     f"({raster['fid_proxy']:.3f} [{raster['fid_low']:.3f}, "
                     f"{raster['fid_high']:.3f}]): "
                     f"**{s['max_step_reduction_overlapping_raster']:.1%}** "
                     f"({s['setting_at_that_reduction']}).")
    else:
        lines.append("- No setting's FID-proxy interval overlaps raster's.")
    lines.append(
        "- Within 5% of raster's FID-proxy: " + (
            f"up to {s['max_step_reduction_within_5pct']:.1%} fewer passes "
            f"({s['setting_within_5pct']})." if s["setting_within_5pct"] else
            f"no setting; the closest is {s['closest_to_raster']} "
            f"({s['closest_fid_vs_raster']:.2f}x raster)."))
    lower = sum(c["adaptive_lower"] for c in s["adaptive_vs_fixed"])
    disjoint = sum(not c["intervals_overlap"] for c in s["adaptive_vs_fixed"])
    lines.append(f"- Adaptive vs fixed (eager, same proxy) at about equal passes: adaptive lower "
                 f"in {lower} of {len(s['adaptive_vs_fixed'])} pairs, intervals disjoint in "
                 f"{disjoint}:")
    for c in s["adaptive_vs_fixed"]:
        lines.append(f"  {c['adaptive']} ({c['adaptive_passes']:.1f} passes) "
                     f"{c['adaptive_fid']:.3f} vs {c['fixed']} ({c['fixed_passes']:.1f} passes) "
                     f"{c['fixed_fid']:.3f}" + ("" if c["intervals_overlap"] else " (disjoint)")
                     + ".")
    lines.append(f"- Proxies (FID-proxy relative to \"above\" at the same window and schedule, "
                 f"geometric mean over the ZipAR settings; best proxy: **{s['best_proxy']}**):")
    for n_, p in s["proxies"].items():
        sch = ", ".join(f"{k} {v:.2f}x" for k, v in p["geomean_by_schedule"].items())
        lines.append(f"  {n_}: {p['geomean_fid_vs_above']:.2f}x ({sch}), lowest of the proxies in "
                     f"{p['best_of_proxies_in']} of {p['settings']} settings"
                     + ("" if n_ == "above" else
                        f", interval below above's in {p['better_than_above_disjoint']}") + ".")
    lines += ["", end]
    text = open(MD).read() if os.path.exists(MD) else "# Benchmarks\n"
    if begin in text:
        text = text[:text.index(begin)] + "\n".join(lines) + text[text.index(end) + len(end):]
    else:
        text += (f"\n## Fidelity, \"{args.model}\" model (benchmarks/bench_fidelity.py)\n\n"
                 + "\n".join(lines) + "\n")
    with open(MD, "w") as f:
        f.write(text)
    plot(records, args)
    print(json.dumps(summary, indent=1, default=float))


def plot(records, args):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot")
        return
    fig, ax = plt.subplots(figsize=(8, 5))
    fams = {}
    for r in records:
        if r["policy"] == "raster":
            key = "raster"
        elif r["policy"] == "zipar":
            key = f"ZipAR {r['schedule']}, {proxy_name(r['proxy'], args.tokens)}"
        else:
            key = f"adaptive t={r['threshold']:g}"
        fams.setdefault(key, []).append(r)
    for key, rs in fams.items():
        rs = sorted(rs, key=lambda r: r["forward_passes"])
        x = [r["forward_passes"] for r in rs]
        y = [r["fid_proxy"] for r in rs]
        err = [[r["fid_proxy"] - r["fid_low"] for r in rs],
               [r["fid_high"] - r["fid_proxy"] for r in rs]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=key,
                    linestyle="--" if "paper" in key else "-")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("forward passes per image (log)")
    ax.set_ylabel("FID-proxy (log, lower is better)")
    ax.set_title(f"Built-in \"{args.model}\" model: fidelity vs passes")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(os.path.join(RESULTS, f"fidelity_{args.model}.png"), dpi=120)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=tuple(MODELS), default="vq")
    ap.add_argument("--samples", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--batch1", type=int, default=5,
                    help="with --retime: images timed one at a time per setting")
    ap.add_argument("--chunk", type=int, default=50,
                    help="samples per work unit (a multiple of --batch)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                    help="spawned single-threaded workers (1: run in this process)")
    ap.add_argument("--cells", default=CELLS, help="directory of the finished chunks")
    ap.add_argument("--cfg-scale", type=float, default=None,
                    help="default: 2.0 for vq (the main job's), 1.0 for pixels")
    ap.add_argument("--proxies", nargs="*", choices=PROXIES, default=list(PROXIES))
    ap.add_argument("--boot", type=int, default=200)
    ap.add_argument("--nll-samples", type=int, default=200,
                    help="sample NLL of the samples with ids below this (all: --samples)")
    ap.add_argument("--only", type=int, nargs="*", help="indices of settings to generate")
    ap.add_argument("--list", action="store_true", help="print the settings with their index")
    ap.add_argument("--order", choices=("long", "short", "breadth"), default="long",
                    help="generate the settings with the most (long) or fewest passes first, "
                    "or the first chunk of every setting, then the second, ... (breadth)")
    ap.add_argument("--stop-after", type=float, default=0,
                    help="seconds: start no chunk that would end later (0: no limit)")
    ap.add_argument("--chunk-seconds", type=float, default=120,
                    help="with --stop-after: expected seconds per chunk")
    ap.add_argument("--generate-only", action="store_true")
    ap.add_argument("--decoder", choices=("auto", "zipar", "torch"), default="auto",
                    help="VQ decoder for the FID-proxy images (auto: torch when installed)")
    ap.add_argument("--decode-only", action="store_true",
                    help="decode the finished chunks' images (kept beside them) and stop")
    ap.add_argument("--retime", nargs="?", const="both", choices=("both", "b1"), default=None,
                    help="before the report, time each setting's first batch and its first "
                    "--batch1 images at batch 1 side by side here (b1: batch 1 only; the "
                    "batch column then keeps the chunks' own seconds)")
    ap.add_argument("--retime-only", metavar="FILE",
                    help="time every setting as --retime does (no chunks needed), write the "
                    "seconds and tokens to FILE (.npz) and stop")
    ap.add_argument("--retimed", metavar="FILE",
                    help="with --retime: the seconds from a --retime-only FILE instead of timing "
                    "here (tokens still checked against the chunks')")
    ap.add_argument("--report-only", action="store_true",
                    help="no generation: report the settings whose chunks are all finished")
    args = ap.parse_args()
    if args.chunk < 1 or args.chunk % args.batch:
        ap.error("--chunk must be a positive multiple of --batch")
    if args.cfg_scale is None:
        args.cfg_scale = MODELS[args.model]["cfg_scale"]
    args.stop_at = time.time() + args.stop_after if args.stop_after > 0 else 0
    if args.decoder == "auto":
        args.decoder = decoder_name(args.model)
    # generation needs the token ids of the proxies it runs; the report names both
    args.tokens = proxy_tokens(args.model, PROXIES if not args.generate_only else args.proxies)
    cells = settings(args.model, args.proxies, args.tokens)
    if args.list:
        for i, c in enumerate(cells):
            print(i, json.dumps(c))
        return
    if args.only:
        cells = [cells[i] for i in args.only]
    if args.retime_only:
        args.retime = args.retime or "both"
        save_retimed(cells, args.retime_only, args)
        return
    if args.retimed and not args.retime:
        ap.error("--retimed needs --retime (both or b1, as the file was made)")
    t0 = time.perf_counter()
    if not args.report_only:
        generate(cells, args)
        print(f"generation: {time.perf_counter() - t0:.0f} s", flush=True)
    if args.generate_only or args.only:
        return
    records = collect(cells, args)
    if not any(r["policy"] == "raster" for r in records):
        raise SystemExit("the raster setting is not finished: nothing to compare against")
    if args.decode_only:
        decode_all(records, args)
        return
    if args.retime:
        time_settings(records, args)
    records, extra = evaluate(records, args)
    report(records, extra, args)


if __name__ == "__main__":
    main()
