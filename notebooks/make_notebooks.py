"""Write the example notebooks of this folder (outputs stripped) from the cell sources below.

    python3 notebooks/make_notebooks.py            # rewrites notebooks/0*.ipynb
    python3 notebooks/make_notebooks.py OUTDIR     # writes them somewhere else

Edit the notebooks here, not in Jupyter, so that they stay reproducible: cell ids are fixed,
there are no outputs and no execution counts. tests/test_notebooks.py executes every notebook
with ZIPAR_NB_SMALL=1 and checks that the committed files equal what this script writes.
"""

from __future__ import annotations

import os
import sys
import textwrap

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = os.path.dirname(os.path.abspath(__file__))


def _src(text: str) -> str:
    return textwrap.dedent(text).strip("\n")


# Shared first code cell: the SMALL switch and an import that also works from a source checkout.
SETUP = _src('''
    import os
    import sys
    import time

    import numpy as np

    # SMALL (the default, what CI runs): a few images per setting, well under a minute on 2 cores.
    # Set ZIPAR_NB_SMALL=0 before starting Jupyter for the full-size settings.
    SMALL = os.environ.get("ZIPAR_NB_SMALL", "1") == "1"

    try:
        import zipar
    except ImportError:  # a source checkout (python3 setup.py build_ext --inplace), not installed
        sys.path.insert(0, os.path.abspath(".."))
        import zipar

    from IPython.display import Image, display

    from zipar.io.png import encode_png, image_grid

    print("zipar", zipar.__version__, "from", os.path.dirname(zipar.__file__), "| SMALL =", SMALL)
''')

# Shared helpers for the built-in model's classes and PNG display (no matplotlib needed).
HELPERS = _src('''
    from zipar.fmnist.builtin import CLASS_NAMES as CLASSES  # Fashion-MNIST label names


    def show(image, scale=3):
        """Display a uint8 image (H, W) or (H, W, 3) as a PNG, each pixel scale x scale."""
        big = np.repeat(np.repeat(np.asarray(image), scale, axis=0), scale, axis=1)
        display(Image(data=encode_png(big)))
''')


# ================================================================================ 01

QUICKSTART = [
    ("md", '''
        # 01 · Quickstart: raster vs ZipAR on the built-in model

        The built-in model, `zipar.load_default()`, is a miniature LlamaGen: a class-conditional
        GPT trained on Fashion-MNIST images turned into a 16 x 16 grid of tokens by a VQ tokenizer
        of LlamaGen's VQ-16 family (a codebook of 1024 codes), 10 classes. Its VQ decoder turns a
        token grid back into a picture (64 x 64, mapped to 28 x 28 grey). Raster decoding needs one
        forward pass per token (256); ZipAR starts a row as soon as the row above holds `window`
        tokens, so one pass emits a token for every active row. (`zipar.load_default("pixels")`
        is the older built-in model: one token per pixel of a 28 x 28 grid, 16 grey levels.)

        This notebook: load the model, generate one image per class with `Raster()` and with
        `ZipAR(4)` (fixed seeds), compare them, read the statistics, check that `ZipAR(W)` (W the
        grid width) is raster decoding token for token, try `AdaptiveZipAR`, and score samples
        with `log_prob`. `SMALL` (default on) uses 4 classes instead of 10.
    '''),
    ("code", SETUP),
    ("code", HELPERS),
    ("code", '''
        model = zipar.load_default()   # the VQ model; zipar.load_default("pixels"): the pixel model
        print(model)
        print(model.decoder)
        zipar.show_config()
        cfg = model.config
        H, W = cfg.H, cfg.W
        print(f"grid {H}x{W} VQ tokens, codebook of {cfg.vocab_size}, {cfg.num_classes} classes; "
              f"raster decoding takes {H * W} passes")
    '''),
    ("md", '''
        ## One image per class, raster and ZipAR(4)

        The random numbers come from a counter-based stream keyed by (seed, sample id, position,
        draw), so the same seed gives the same first row under both policies; the rows after it
        differ because ZipAR predicts them from a partial row above. `result.images` are the VQ
        decoder's pictures of the token grids (`model.decode(tokens)`), shown 3x enlarged.
    '''),
    ("code", '''
        LABELS = list(range(4)) if SMALL else list(range(10))
        SEED = 0

        raster = model.generate(LABELS, policy=zipar.Raster(), seed=SEED)
        fast = model.generate(LABELS, policy=zipar.ZipAR(4), seed=SEED)

        # top row: Raster(), bottom row: ZipAR(4); one column per class
        show(image_grid(np.concatenate([raster.images, fast.images]), nrow=len(LABELS)), scale=3)
        print("columns:", ", ".join(CLASSES[c] for c in LABELS))
        for i, c in enumerate(LABELS):
            same = raster.tokens[i] == fast.tokens[i]
            print(f"{CLASSES[c]:>12}: row 0 identical: {bool(same[0].all())}, "
                  f"tokens shared with raster: {same.mean():.0%}")
    '''),
    ("md", '''
        ## Statistics

        `forward_passes` counts passes for the whole batch (prefill included); `queries_per_pass`
        is a histogram {queries in the pass: number of passes}: raster feeds one query per image,
        ZipAR one per active row and image, plus the stand-ins (proxies) for row starts and the
        refeeds that later replace them with the real token. The proxy is a policy setting:
        `proxy="above"` (the default) feeds the latest token of the row two above, `"left"` that
        of the row above, `"calibrated"` the model's `row_start_proxy` (the most frequent row end
        of raster samples); notebook 02 compares them.
    '''),
    ("code", '''
        def summary(name, res):
            s = res.stats
            print(f"{name:>18}: {s['forward_passes']:4d} passes (raster {s['raster_passes']}), "
                  f"step reduction {s['step_reduction']:.1%}, {s['seconds']:.2f} s, "
                  f"{s['mean_queries_per_pass']:.1f} queries/pass, proxies {s['proxies']}, "
                  f"refeeds {s['refeeds']}")


        summary("Raster()", raster)
        summary("ZipAR(4)", fast)
        print("expected passes: eager W + (H-1)s =", zipar.ZipAR(4).expected_passes(H, W),
              "| paper schedule 2W + (H-2)s =", zipar.ZipAR(4, schedule="paper").expected_passes(H, W))
        print("row-start proxy of ZipAR(4):", fast.config["policy"]["proxy"],
              "| calibrated token of this model:", model.row_start_proxy)

        print("\\nqueries per pass, ZipAR(4):")
        hist = fast.stats["queries_per_pass"]
        for q, n in sorted(hist.items()):
            print(f"  {q:4d} queries x {n:3d} passes " + "#" * max(1, round(40 * n / max(hist.values()))))
        print("row r starts at pass:", fast.stats["row_start_pass"][0].tolist())
    '''),
    ("md", '''
        ## `ZipAR(W)` is raster decoding

        With the window equal to the grid width a row starts only when the row above is complete,
        which is raster order. The engine never lets a query see a slot that was not written, so
        the tokens are exactly the raster tokens. A sub-batch gives the same grids too: a token
        depends on the sample id (default: the index in the batch), not on the batch.
        `decode_images=False` skips the VQ decoder (about 0.1 s an image on one core) when only
        the tokens are needed.
    '''),
    ("code", '''
        n = 2 if SMALL else len(LABELS)
        full = model.generate(LABELS[:n], policy=zipar.ZipAR(W), seed=SEED, decode_images=False)
        assert (full.tokens == raster.tokens[:n]).all()
        print(f"ZipAR({W}) == Raster() token for token on {n} image(s); "
              f"passes {full.stats['forward_passes']}")
    '''),
    ("md", '''
        ## AdaptiveZipAR

        `AdaptiveZipAR(min_window)` drafts a row start once the row above holds `min_window`
        tokens and re-checks it each pass with one more token of context (the speculative-sampling
        test); a rejected draft is resampled from the residual distribution. With
        `threshold=1` every draft is accepted and the policy is `ZipAR(min_window)`.
    '''),
    ("code", '''
        ada = model.generate(LABELS, policy=zipar.AdaptiveZipAR(4), seed=SEED)
        summary("AdaptiveZipAR(4)", ada)
        s = ada.stats
        print(f"drafts proposed {s['drafts_proposed']}, accepted {s['drafts_accepted']}, "
              f"rejected {s['drafts_rejected']}, resampled {s['resamples']}")

        one = model.generate(LABELS[:1], policy=zipar.AdaptiveZipAR(4, threshold=1.0), seed=SEED,
                             decode_images=False)
        assert (one.tokens == fast.tokens[:1]).all()
        print("AdaptiveZipAR(4, threshold=1) == ZipAR(4):", True)
        show(image_grid(ada.images, nrow=len(LABELS)), scale=3)
    '''),
    ("md", '''
        ## Log-likelihood of the samples

        `model.log_prob(labels, tokens)` is the teacher-forced log-likelihood (nats) of each grid
        under the model without guidance (the samples were drawn with classifier-free guidance,
        `cfg_scale=4` by default). Lower is more typical for the model. A stand-in fed at a row
        start and a row predicted from a partial row above both move ZipAR's samples away from
        what the model expects.

        Real test images give a reference point. The package ships the VQ *decoder* only, so it
        cannot tokenize images itself: `zipar.fmnist.builtin.reference()` holds the tokens of the
        first 8 test images (made by the training encoder) with PyTorch's log-likelihoods, and
        `builtin_info()` the mean over the whole test set, measured when the model was trained.
    '''),
    ("code", '''
        import math

        from zipar.fmnist.builtin import builtin_info, reference


        def bits_per_token(lp):
            return -np.asarray(lp) / (H * W) / math.log(2.0)


        for name, res in (("Raster()", raster), ("ZipAR(4)", fast), ("AdaptiveZipAR(4)", ada)):
            lp = model.log_prob(LABELS, res.tokens)
            print(f"{name:>18}: mean NLL {bits_per_token(lp).mean():.3f} bits/token "
                  f"(per image: {np.round(bits_per_token(lp), 3).tolist()})")

        ref = reference()                         # the first 8 test images, as VQ tokens
        lp = model.log_prob(ref["labels"], ref["tokens"])
        print(f"{'test images':>18}: mean NLL {bits_per_token(lp).mean():.3f} bits/token "
              f"({len(lp)} images of classes {ref['labels'].tolist()}; engine vs PyTorch: "
              f"{np.abs(lp - ref['loglik']).max():.2g} nats at most)")
        print(f"{'whole test set':>18}: mean NLL "
              f"{builtin_info()['gpt']['test_nll_bits_per_token']:.3f} bits/token (training record)")
    '''),
]


# ================================================================================ 02

SWEEP = [
    ("md", '''
        # 02 · Ablation sweep: window x threshold x row-start proxy

        `zipar.sweep` runs every combination of a grid of settings (a *cell*), generates
        `n_samples` images per cell and scores them. Here, on the built-in VQ model: fixed-window
        ZipAR over its window, AdaptiveZipAR over its minimum window and acceptance threshold, both
        over the **row-start proxy**, the stand-in fed for the missing end of the row above when a
        row starts early: `"above"` (the latest token of the row two above, the published code's
        choice), `"left"` (the latest token of the row above), `"calibrated"` (the model's
        `row_start_proxy`: the most frequent row-end token of raster samples) and, in the full
        grid, a constant token id. `Raster()` is the baseline (it never feeds a proxy).

        Metrics: the samples' NLL under the model (bits per token) and the accuracy of the shipped
        Fashion-MNIST classifier on the decoded images; with `SMALL` off also the FID-proxy
        (Fréchet distance of classifier features to the test set), which needs hundreds of
        samples to mean anything.

        `SMALL` (default on) runs 7 cells of 3 images; the full grid is 33 cells of 200 images,
        written to `zipar_sweep_runs/` so an interrupted run resumes.
    '''),
    ("code", SETUP),
    ("code", '''
        from zipar import sweep as zsweep
        from zipar.fmnist.builtin import DATA_DIR, builtin_info

        model = zipar.load_default()           # "builtin" in the sweep below is this model
        cfg = model.config
        H, W = cfg.H, cfg.W
        PROXIES = ["above", "left", "calibrated"]
        if SMALL:
            WINDOWS, MIN_WINDOWS, THRESHOLDS, N_SAMPLES = [4], [4], [0.0], 3
            EXECUTOR, OUT = "inprocess", None
        else:
            WINDOWS = [1, 2, 4, W // 2]
            MIN_WINDOWS, THRESHOLDS, N_SAMPLES = [2, 4], [0.0, 0.5], 200
            PROXIES.append(0)                  # a constant: code 0, an arbitrary token
            EXECUTOR, OUT = "process", "zipar_sweep_runs"   # one worker per core, resumable

        # raster reads none of the other keys: it is one cell; zipar reads window and proxy,
        # adaptive min_window, threshold and proxy
        grid = {"policy": ["raster", "zipar", "adaptive"], "window": WINDOWS, "proxy": PROXIES,
                "min_window": MIN_WINDOWS, "threshold": THRESHOLDS}
        cells = zsweep.expand_grid(grid)
        print(f"{len(cells)} cells on the {H}x{W} grid; Raster() ({H * W} passes) is the baseline")

        metrics = {"nll_bits": zsweep.nll_bits}
        if os.path.exists(os.path.join(DATA_DIR, "fmnist_classifier.npz")):
            metrics["class_accuracy"] = zsweep.eval_class_accuracy
        if not SMALL:
            try:
                from zipar.fmnist.eval import test_set

                test_set()
                metrics["fid_proxy"] = zsweep.eval_fid_proxy
            except FileNotFoundError as e:
                print("FID-proxy skipped:", e)
        print("metrics:", list(metrics))
    '''),
    ("md", '''
        ## The calibrated proxy

        `"calibrated"` feeds one fixed token, `model.row_start_proxy`, which `load_default` reads
        from the model's record. `zipar.calibrate_proxy(model, n_samples=..., seed=...,
        cfg_scale=...)` recomputes it: the most frequent token in the last grid column of
        `n_samples` raster samples. The record's token came from 200 samples at `cfg_scale=2`;
        `SMALL` recomputes it from 4 samples only (the winner may differ), the full run with the
        record's settings.
    '''),
    ("code", '''
        rec = builtin_info()["row_start_proxy"]
        print(f"record: token {rec['token']} ends {rec['fraction']:.1%} of the rows of "
              f"{rec['n_samples']} raster samples (cfg_scale {rec['cfg_scale']:g}, seed {rec['seed']})")
        t0 = time.perf_counter()
        n_cal = 4 if SMALL else rec["n_samples"]
        cal = zipar.calibrate_proxy(model, n_samples=n_cal,
                                    **{k: rec[k] for k in ("seed", "cfg_scale", "cfg_interval",
                                                           "temperature", "top_k", "top_p")})
        top = np.argsort(-cal.counts, kind="stable")[:5]
        print(f"recomputed from {cal.n_samples} samples in {time.perf_counter() - t0:.1f} s: token "
              f"{cal.token} ({cal.fraction:.1%} of {cal.n_row_ends} row ends); most frequent: "
              + ", ".join(f"{t} ({cal.counts[t]})" for t in top))
        if not SMALL:   # the record's settings: the same token unless this machine rounds differently
            print("same token as the record:", cal.token == model.row_start_proxy == rec["token"])
    '''),
    ("md", "## The sweep"),
    ("code", '''
        def proxy_name(p):
            """A proxy setting as text: its name, or #k for the constant token k."""
            return p if isinstance(p, str) else f"#{p}"


        def label(rec):
            """A short name of a cell: raster, Z<window>/<proxy>, A<min_window>/<threshold>/<proxy>."""
            if rec["policy"] == "raster":
                return "raster"
            if rec["policy"] == "zipar":
                return f"Z{rec['window']}/{proxy_name(rec['proxy'])}"
            return f"A{rec['min_window']}/{rec['threshold']:g}/{proxy_name(rec['proxy'])}"


        def report(i, rec):
            print(f"[{i + 1}/{len(cells)}] {label(rec)}: {rec['forward_passes']:.0f} passes, "
                  f"{rec['seconds']:.1f} s")


        t0 = time.perf_counter()
        res = zsweep.sweep("builtin", grid, n_samples=N_SAMPLES, metrics=metrics,
                           executor=EXECUTOR, out=OUT, progress=False, callback=report)
        print(res, f"in {time.perf_counter() - t0:.1f} s")
    '''),
    ("md", '''
        ## Table

        One record per cell; `proxy_token` is the token a constant or calibrated proxy fed.
    '''),
    ("code", '''
        COLUMNS = ["policy", "window", "min_window", "threshold", "proxy", "proxy_token",
                   "forward_passes", "step_reduction", "proxies", "draft_acceptance",
                   "seconds_per_image"] + res.metric_columns
        try:
            import pandas as pd

            df = res.to_dataframe()[COLUMNS]
            display(df)
        except ImportError:  # pandas is optional: a plain-text table of the records
            print(zsweep.format_table(res.records, COLUMNS))
    '''),
    ("md", '''
        ## Which proxy

        The same settings side by side, one column per proxy: NLL of the samples (bits per token,
        lower is more typical for the model). The proxy changes no pass count, only what the
        early row starts see.
    '''),
    ("code", '''
        proxies = list(dict.fromkeys(r["proxy"] for r in res.records if r["policy"] != "raster"))
        settings = list(dict.fromkeys(label(r).rsplit("/", 1)[0] for r in res.records
                                      if r["policy"] != "raster"))
        by = {label(r): r for r in res.records}
        for y in [m for m in ("nll_bits", "class_accuracy") if m in res.metric_columns]:
            print(f"{y:>12} " + " ".join(f"{proxy_name(p):>11}" for p in proxies))
            for s in settings:
                cells_s = [by.get(f"{s}/{proxy_name(p)}") for p in proxies]
                print(f"{s:>12} " + " ".join(f"{c[y]:11.4f}" if c and c.get(y) is not None
                                             else f"{'-':>11}" for c in cells_s))
            raster_rec = by["raster"]
            if raster_rec.get(y) is not None:
                print(f"{'raster':>12} {raster_rec[y]:11.4f}")
            print()
    '''),
    ("md", '''
        ## Fidelity vs forward passes

        Each point is a cell; fewer passes is faster. Colour: the policy; marker: the proxy. With
        few samples per cell the metrics are noisy: read the `SMALL` plot as a smoke test, not as
        a result.
    '''),
    ("code", '''
        ys = [m for m in ("nll_bits", "class_accuracy", "fid_proxy") if m in res.metric_columns]
        MARKERS = dict(zip(proxies, "o^sDv"))
        try:
            import matplotlib.pyplot as plt

            fig, axes = plt.subplots(1, len(ys), figsize=(4.5 * len(ys), 3.5), squeeze=False)
            for ax, y in zip(axes[0], ys):
                raster_rec = by["raster"]
                if raster_rec.get(y) is not None:
                    ax.scatter([raster_rec["forward_passes"]], [raster_rec[y]], marker="*", s=120,
                               color="k", label="raster")
                for pol, colour in (("zipar", "C0"), ("adaptive", "C1")):
                    for p in proxies:
                        recs = [r for r in res.records if r["policy"] == pol and r["proxy"] == p
                                and r.get(y) is not None]
                        if not recs:
                            continue
                        ax.scatter([r["forward_passes"] for r in recs], [r[y] for r in recs],
                                   marker=MARKERS[p], color=colour, label=f"{pol}, proxy {proxy_name(p)}")
                        for r in recs:
                            ax.annotate(label(r).rsplit("/", 1)[0],   # the label without proxy
                                        (r["forward_passes"], r[y]), fontsize=7)
                ax.set_xscale("log")
                ax.minorticks_off()
                lo = min(r["forward_passes"] for r in res.records)
                hi = max(r["forward_passes"] for r in res.records)
                ticks = [t for t in (8, 16, 32, 64, 128, 256, 512, 1024) if lo / 2 <= t <= 2 * hi]
                ax.set_xticks(ticks, [str(t) for t in ticks])
                ax.set_xlabel("forward passes per image")
                ax.set_ylabel(y)
            axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
            fig.tight_layout()
            plt.show()
        except ImportError:  # matplotlib is optional
            for y in ys:
                print(y + ":")
                for r in res.records:
                    if r.get(y) is not None:
                        print(f"  {label(r):>20}: {r['forward_passes']:6.1f} passes -> {r[y]:.4f}")
    '''),
    ("md", '''
        ## Pareto front

        `SweepResult.pareto(x, y)` keeps the cells that no other cell beats on both columns (lower
        is better unless the column is in `maximize`).
    '''),
    ("code", '''
        fronts = [("nll_bits", ())]
        if "class_accuracy" in res.metric_columns:
            fronts.append(("class_accuracy", ("class_accuracy",)))
        if "fid_proxy" in res.metric_columns:
            fronts.append(("fid_proxy", ()))
        for y, maximize in fronts:
            front = res.pareto(x="forward_passes", y=y, maximize=maximize)
            print(f"Pareto front, forward_passes vs {y}:")
            for r in front:
                print(f"  {label(r):>20}: {r['forward_passes']:6.1f} passes, {y} = {r[y]:.4f}")
    '''),
]


# ================================================================================ 03

LOCALITY = [
    ("md", '''
        # 03 · Spatial locality of attention

        ZipAR rests on an observation about image AR models: a token attends mostly to spatially
        close tokens, in particular to the token in the same column of the previous row, so a row
        can start before the row above is complete. `Model.attention` captures the softmax
        weights of teacher-forced queries in the engine; here we look at them on a few images
        generated by the built-in model (16 x 16 VQ tokens).

        Convention: `model.attention(..., cells=[(r, c)])` returns the query *fed with* the token
        of cell (r, c); that query predicts the next cell, (r, c + 1). Offsets below are relative
        to the predicted cell, so (-1, 0) is "same column, previous row" and (0, -1) is the query's
        own slot (the token to the left of the predicted one).
    '''),
    ("code", SETUP),
    ("code", HELPERS),
    ("code", '''
        model = zipar.load_default()   # the VQ model; zipar.load_default("pixels"): the pixel model
        cfg = model.config
        H, W, P = cfg.H, cfg.W, cfg.cls_token_num
        assert cfg.eor == 0  # slot p >= P is grid cell divmod(p - P, W)
        TILE = max(1, 112 // W)  # display scale of one grid cell in the maps below

        LABELS = [0, 7] if SMALL else list(range(10))
        gen = model.generate(LABELS, policy=zipar.Raster(), seed=1)
        tokens = gen.tokens
        show(image_grid(gen.images, nrow=len(LABELS)), scale=3)
        print(", ".join(CLASSES[c] for c in LABELS), f"| token grids {tokens.shape[1:]}")
    '''),
    ("md", '''
        ## Attention map of one query

        Weights of the query predicting the centre cell (H/2, W/2), averaged over heads, one map
        per layer, for the first image. Each map is scaled to its own maximum (square root for
        contrast); red marks the query's own slot (H/2, W/2 - 1), green the predicted cell.
    '''),
    ("code", '''
        QUERY = (H // 2, W // 2 - 1)           # fed with QUERY, predicts (H // 2, W // 2)
        A = model.attention(LABELS[:1], tokens[:1], cells=[QUERY])   # (1, 1, layers, heads, seq)
        maps = A[0, 0].mean(axis=1)[:, P:].reshape(cfg.n_layer, H, W)   # mean over heads
        print(f"query fed with {QUERY}, predicting {(QUERY[0], QUERY[1] + 1)}")
        print("attention on the class slot per layer:", np.round(A[0, 0].mean(axis=1)[:, :P].sum(1), 3))


        def heat(m):
            g = np.sqrt(m / m.max()) if m.max() > 0 else m
            rgb = np.repeat((255 * g).astype(np.uint8)[..., None], 3, axis=2)
            rgb[QUERY] = (255, 0, 0)
            rgb[QUERY[0], QUERY[1] + 1] = (0, 255, 0)
            return rgb


        try:
            import matplotlib.pyplot as plt

            fig, axes = plt.subplots(1, cfg.n_layer, figsize=(2 * cfg.n_layer, 2.3))
            for layer, ax in enumerate(axes):
                ax.imshow(maps[layer], cmap="magma")
                ax.plot(QUERY[1], QUERY[0], "s", mfc="none", mec="cyan")
                ax.set_title(f"layer {layer}", fontsize=8)
                ax.axis("off")
            fig.tight_layout()
            plt.show()
        except ImportError:  # matplotlib is optional: PNG tiles, layers 0..n-1 left to right
            show(image_grid(np.stack([heat(m) for m in maps]), nrow=cfg.n_layer), scale=TILE)
    '''),
    ("md", '''
        ## Mean attention by relative offset

        For many query cells (rows 1.., predicting a cell in the same row), average the weights
        over layers and heads, then over the queries for which the offset exists. `SMALL` samples
        every third row and column.
    '''),
    ("code", '''
        step = 3 if SMALL else 1
        cells = np.array([(r, c) for r in range(1, H, step) for c in range(0, W - 1, step)])
        R, C = 2 * H - 1, 2 * W - 1            # offsets dr in -(H-1)..H-1, dc in -(W-1)..W-1
        total = np.zeros((R, C))
        count = np.zeros((R, C))
        cls_share = []
        key_r, key_c = np.divmod(np.arange(H * W), W)
        t0 = time.perf_counter()
        for b in range(len(LABELS)):          # one image at a time keeps the capture buffer small
            A = model.attention(LABELS[b:b + 1], tokens[b:b + 1], cells=cells)
            mean = A[0].mean(axis=(1, 2))     # (n_cells, seq): mean over layers and heads
            cls_share.append(mean[:, :P].sum(axis=1).mean())
            for (r, c), w in zip(cells, mean[:, P:]):
                tr, tc = r, c + 1             # the predicted cell
                np.add.at(total, (key_r - tr + H - 1, key_c - tc + W - 1), w)
                np.add.at(count, (key_r - tr + H - 1, key_c - tc + W - 1), 1)
        print(f"{len(cells)} query cells x {len(LABELS)} images in {time.perf_counter() - t0:.1f} s; "
              f"mean weight on the class slot {np.mean(cls_share):.4f}")

        mean_by_offset = np.where(count > 0, total / np.maximum(count, 1), 0.0)
        # only offsets present for at least a tenth of the queries (rare far offsets are noisy)
        mean_by_offset[count < 0.1 * count.max()] = 0.0
        order = np.argsort(-mean_by_offset, axis=None)[:10]
        print("top offsets (d_row, d_col) relative to the predicted cell:")
        for rank, o in enumerate(order, 1):
            dr, dc = np.unravel_index(o, mean_by_offset.shape)
            dr, dc = int(dr) - (H - 1), int(dc) - (W - 1)
            note = {(-1, 0): "same column, previous row", (0, -1): "left neighbour (own slot)",
                    (-1, -1): "up-left", (-1, 1): "up-right"}.get((dr, dc), "")
            if dr == -1 and dc >= W - 3:      # seen from a cell near a row start
                note = "end of the previous row: a few slots back in the sequence"
            print(f"  {rank:2d}. ({dr:+d}, {dc:+d})  mean weight {mean_by_offset.flat[o]:.4f}  {note}")
        uniform = np.mean([1.0 / (P + r * W + c + 1) for r, c in cells])
        print(f"(a query spreading its weight evenly would give about {uniform:.4f} per slot)")
    '''),
    ("code", '''
        # the neighbourhood of the predicted cell: rows -4..0, columns -6..+6 (clipped to the grid)
        dr = np.arange(-min(4, H - 1), 1)
        dc = np.arange(-min(6, W - 1), min(6, W - 1) + 1)
        block = mean_by_offset[np.ix_(dr + H - 1, dc + W - 1)]
        print("d_row \\\\ d_col " + " ".join(f"{d:+6d}" for d in dc))
        for i, d in enumerate(dr):
            print(f"{d:+13d} " + " ".join("     ." if (d == 0 and e >= 0) else f"{v:6.3f}"
                                          for e, v in zip(dc, block[i])))
    '''),
    ("md", '''
        ## What a fixed window hides

        Under ZipAR(s) (eager schedule), when the engine decodes cell (r, c), row r - k holds its
        first c + k s columns. The raster-order attention that falls on later columns of earlier
        rows (offset d_row = -k, d_col >= k s) is attention to tokens ZipAR(s) has not decoded
        yet. Its share shrinks quickly with the window when attention is local. The windows run
        from 1 to the grid width W (raster order, nothing hidden).
    '''),
    ("code", '''
        n_queries = len(cells) * len(LABELS)
        mass = total / n_queries                  # mean attention mass per offset
        d_row = np.arange(R)[:, None] - (H - 1)
        d_col = np.arange(C)[None, :] - (W - 1)
        for s in sorted({1, 2, 4, W // 4, W // 2, W} - {0}):
            hidden = mass[(d_row < 0) & (d_col >= -d_row * s)].sum()
            print(f"ZipAR({s:2d}): {hidden:6.2%} of the attention falls on tokens not decoded yet")
    '''),
]


# ================================================================================ 04

CUSTOM = [
    ("md", '''
        # 04 · Writing a decoding policy in Python

        A `zipar.Policy` subclass chooses, before every forward pass, which cells to decode: its
        `select(state)` returns `(image, row, col)` triples, each the next undecoded cell of its
        row. The engine does the rest (inputs, stand-ins for row starts, refeeds, visibility), so a
        policy is a few lines of NumPy. This notebook, on the built-in model (16 x 16 VQ tokens):

        1. reimplements fixed-window ZipAR in Python and checks it against the C policy token for
           token, for the row-start proxies too;
        2. writes an *accelerating-window* policy: a wide window for the first rows (where the
           global shape is decided), then narrower and narrower;
        3. compares passes and sample NLL with the built-in policies;
        4. runs the SJD-style speculative Jacobi decoder of `zipar.reference.sjd`, written on the low-level
           session API.
    '''),
    ("code", SETUP),
    ("code", HELPERS),
    ("code", '''
        model = zipar.load_default()   # the VQ model; zipar.load_default("pixels"): the pixel model
        cfg = model.config
        H, W = cfg.H, cfg.W
        LABELS = [0, 1] if SMALL else list(range(10))
        SEED = 0
        print(f"grid {H}x{W}, {', '.join(CLASSES[c] for c in LABELS)}")
    '''),
    ("md", '''
        ## ZipAR in Python

        Row r may decode its next column c once row r-1 holds columns up to min(c + s, W) - 1,
        i.e. `progress[r-1] >= min(progress[r] + s, W)`. `zipar.reference.ReferenceZipAR` is that
        rule written as a `zipar.Policy` in a few lines of NumPy (its `select` is printed below);
        `window_for_row` lets subclasses vary the window per row, and `decoded_at` records the
        pass at which each cell was decoded. A Python policy only picks cells: its `proxy`
        (`"above"`, `"left"`, `"calibrated"` or a token id, as for `zipar.ZipAR`) is handed to
        the engine, which feeds the stand-ins. `decode_images=False`: only the tokens are compared.
    '''),
    ("code", '''
        import inspect

        from zipar.reference import ReferenceZipAR as PyZipAR

        print(inspect.getsource(PyZipAR.select))

        if SMALL:
            CHECKS = [(4, "above"), (4, "calibrated")]
        else:
            CHECKS = [(s, p) for s in (1, 2, 4, W // 2, W) for p in ("above", "left", "calibrated")]
        py_policies, c_runs = {}, {}
        for s, proxy in CHECKS:
            py_policies[s, proxy] = PyZipAR(s, proxy=proxy)
            py = model.generate(LABELS, policy=py_policies[s, proxy], seed=SEED, decode_images=False)
            c = model.generate(LABELS, policy=zipar.ZipAR(s, proxy=proxy), seed=SEED,
                               decode_images=False)
            assert (py.tokens == c.tokens).all()
            assert py.stats["forward_passes"] == c.stats["forward_passes"]
            assert py.stats["proxies"] == c.stats["proxies"]
            c_runs[s, proxy] = c
            print(f"PyZipAR({s}, proxy={proxy!r}) == ZipAR({s}, proxy={proxy!r}): same tokens, "
                  f"{c.stats['forward_passes']} passes, {c.stats['proxies']} proxies "
                  f"(Python {py.stats['seconds']:.2f} s, C {c.stats['seconds']:.2f} s)")
    '''),
    ("md", '''
        ## An accelerating window

        Row 1 waits for `start` tokens of row 0 (here half the grid width), each later row halves
        the window down to `end`.
    '''),
    ("code", '''
        class AcceleratingZipAR(PyZipAR):
            def __init__(self, start, end=2, proxy="above"):
                super().__init__(start, proxy=proxy)
                self.start, self.end = start, end

            def window_for_row(self, row):
                return max(self.end, self.start >> max(row - 1, 0))

            def to_dict(self):
                return {"policy": type(self).__name__, "start": self.start, "end": self.end,
                        "proxy": self.proxy}


        accel = AcceleratingZipAR(W // 2, 2)
        acc = model.generate(LABELS, policy=accel, seed=SEED, decode_images=False)
        print(f"window of rows 1..{H - 1}:", accel.windows[1:].tolist())
        print("passes:", acc.stats["forward_passes"], "| expected:", accel.expected_passes(H, W))

        # pass at which each cell of the first image was decoded (darker = earlier):
        # left PyZipAR(4), right the accelerating window, each scaled to its own last pass
        orders = [p.decoded_at[0] / p.decoded_at[0].max() for p in (py_policies[4, "above"], accel)]
        show(image_grid(np.stack([(255 * o).astype(np.uint8) for o in orders]), nrow=2),
             scale=max(1, 140 // W))
    '''),
    ("md", '''
        ## Compared with the built-in policies

        Same labels and seed. NLL: bits per token of the samples under the model (no guidance).
        The pictures come from the model's VQ decoder (`model.decode`).
    '''),
    ("code", '''
        import math

        runs = {"Raster()": model.generate(LABELS, policy=zipar.Raster(), seed=SEED,
                                           decode_images=False),
                "ZipAR(2)": model.generate(LABELS, policy=zipar.ZipAR(2), seed=SEED,
                                           decode_images=False),
                "ZipAR(4)": c_runs[4, "above"],
                "ZipAR(4, calibrated)": c_runs[4, "calibrated"],
                "AdaptiveZipAR(4)": model.generate(LABELS, policy=zipar.AdaptiveZipAR(4), seed=SEED,
                                                   decode_images=False),
                f"Accelerating({W // 2}->2)": acc}
        for name, res in runs.items():
            nll = -model.log_prob(LABELS, res.tokens) / (H * W) / math.log(2.0)
            print(f"{name:>20}: {res.stats['forward_passes']:4d} passes, "
                  f"{res.stats['seconds']:5.2f} s, NLL {nll.mean():.3f} bits/token")
        # one row of images per policy, in the order above
        show(image_grid(np.concatenate([model.decode(r.tokens) for r in runs.values()]),
                        nrow=len(LABELS)), scale=3)
    '''),
    ("md", '''
        ## SJD-style decoding on the session API

        `zipar.reference.sjd_generate` is speculative Jacobi decoding written in Python on
        `model.session(...)`: each pass feeds the last committed token plus `window - 1` drafts in
        one chain (visible only inside it), accepts drafts left to right with the speculative
        sampling test and resamples the first rejected one. With `window=1` there are no drafts and
        it is raster decoding, token for token (it runs without guidance by default, so compare
        with `cfg_scale=1`).
    '''),
    ("code", '''
        from zipar.reference import sjd_generate

        n = 1 if SMALL else len(LABELS)
        toks1, passes1, _ = sjd_generate(model, LABELS[:n], 1, seed=SEED)
        plain = model.generate(LABELS[:n], policy=zipar.Raster(), seed=SEED, cfg_scale=1.0,
                               decode_images=False)
        assert (toks1 == plain.tokens).all()
        print(f"sjd window=1 == raster (cfg_scale=1): {passes1} passes")

        for window in ((4,) if SMALL else (2, 4, 8, 16)):
            t0 = time.perf_counter()
            toks, passes, accepted = sjd_generate(model, LABELS, window, seed=SEED)
            nll = -model.log_prob(LABELS, toks) / (H * W) / math.log(2.0)
            print(f"sjd window={window}: {passes} passes, {accepted} drafts accepted "
                  f"({accepted / len(LABELS):.0f} per image), NLL {nll.mean():.3f} bits/token "
                  f"(no guidance: not comparable with the runs above), "
                  f"{time.perf_counter() - t0:.1f} s")
        show(image_grid(model.decode(toks), nrow=len(LABELS)), scale=3)
    '''),
]


# ================================================================================ 05

FAMILIES = [
    ("md", """
        # 05 · Three model families side by side: LlamaGen, Emu3-Gen, Lumina-mGPT

        zipar runs three autoregressive image model families on one engine: LlamaGen
        (class-conditional, 2-D RoPE, a VQ-16 decoder), Emu3-Gen (text prompt, 1-D RoPE, an
        end-of-line token after every row, Emu3's vision tokenizer) and Lumina-mGPT (Chameleon:
        q/k LayerNorm, size tokens before the grid, a VQGAN decoder). ZipAR's schedule is the
        same for all three: a row starts once the row above holds `window` tokens.

        The models here are **tiny and random** (written into a temporary folder by
        `zipar.families.tiny`, in the same file layout as the downloaded checkpoints: config.json,
        safetensors, tokenizer.json, VQ weights), so this runs in seconds and needs no download;
        the pictures are noise. Point `zipar.load` at a real checkpoint folder for real images
        (see the README's "Models" table). Needs the `tokenizers` package for the text prompts.
    """),
    ("code", SETUP),
    ("code", """
        import tempfile

        from zipar.families.tiny import write_tiny_emu3, write_tiny_lumina
        from zipar.families.vq16 import VQDecoder, random_state_dict

        GRID = 8 if SMALL else 12          # codes per side for all three
        WINDOW = 2
        SEED = 0
        folder = tempfile.mkdtemp(prefix="zipar_families_")

        llamagen = zipar.random_model(dim=64, n_layer=2, n_head=4, vocab_size=64, grid=GRID,
                                      num_classes=10, seed=0)
        llamagen.decoder = VQDecoder(random_state_dict(ch=32, ch_mult=(1, 2), z_channels=32,
                                                       codebook_size=64, embed_dim=8,
                                                       num_res_blocks=1))
        emu3 = zipar.load(write_tiny_emu3(os.path.join(folder, "Emu3-Gen-tiny")))
        lumina = zipar.load(write_tiny_lumina(os.path.join(folder, "Lumina-mGPT-tiny")))
        for name, m in (("LlamaGen", llamagen), ("Emu3-Gen", emu3), ("Lumina-mGPT", lumina)):
            print(f"{name:>12}: {m!r}")
    """),
    ("md", """
        ## The prompts

        LlamaGen c2i takes class labels. Emu3 and Lumina-mGPT take text, built into each family's
        template by the folder's tokenizer (`zipar.families.prompts`): Emu3 `BOS text BOI "H*W"
        IMG` with its generation script's negative prompt on the unconditional stream; Lumina
        `BOS "Generate an image of {w}x{h} according to the following prompt:\\n{text}"
        <reserved08706>` followed by the forced image head `BOI size size`. `zipar info` prints
        them (the tiny tokenizer knows few words: the others are `[UNK]`).
    """),
    ("code", """
        from zipar.__main__ import main as zipar_cli

        _ = zipar_cli(["info", emu3.source, "--grid", str(GRID)])
        print()
        _ = zipar_cli(["info", lumina.source, "--grid", str(GRID)])
    """),
    ("md", """
        ## Raster vs ZipAR, same seed

        One image per family and policy. The first row is identical under both policies (same
        random stream); later rows differ because ZipAR predicts them from a partial row above.
        The pass counts are the engine's; `Raster()` needs one pass per code. On models this
        small the seconds measure per-pass overhead, not speed (BENCHMARKS.md has the measured
        figures at real sizes).
    """),
    ("code", """
        PROMPT = "a red fox in the snow"
        runs = {}
        for name, model, kw in (("LlamaGen", llamagen, dict(labels=[3])),
                                ("Emu3-Gen", emu3, dict(prompt=PROMPT, grid=(GRID, GRID))),
                                ("Lumina-mGPT", lumina, dict(prompt=PROMPT, grid=(GRID, GRID)))):
            for policy in (zipar.Raster(), zipar.ZipAR(WINDOW)):
                t0 = time.perf_counter()
                res = model.generate(policy=policy, seed=SEED, **kw)
                runs[name, type(policy).__name__] = (res, time.perf_counter() - t0)

        print(f"{'family':>12} {'policy':>7} {'passes':>7} {'expected':>8} {'seconds':>8} "
              f"{'image':>10}")
        for (name, pol), (res, sec) in runs.items():
            policy = zipar.Raster() if pol == "Raster" else zipar.ZipAR(WINDOW)
            expected = policy.expected_passes(GRID, GRID)
            assert res.stats["forward_passes"] == expected
            print(f"{name:>12} {pol:>7} {res.stats['forward_passes']:>7} {expected:>8} "
                  f"{sec:>8.3f} {str(res.images.shape[1:3]):>10}")
        for name in ("LlamaGen", "Emu3-Gen", "Lumina-mGPT"):
            a, b = runs[name, "Raster"][0].tokens[0], runs[name, "ZipAR"][0].tokens[0]
            print(f"{name:>12}: row 0 identical {bool((a[0] == b[0]).all())}, codes shared "
                  f"{(a == b).mean():.0%}")
    """),
    ("code", """
        # columns: LlamaGen, Emu3-Gen, Lumina-mGPT; top row Raster(), bottom row ZipAR(2)
        tiles = [runs[name, pol][0].images[0] for pol in ("Raster", "ZipAR")
                 for name in ("LlamaGen", "Emu3-Gen", "Lumina-mGPT")]
        side = max(t.shape[0] for t in tiles)
        tiles = [np.repeat(np.repeat(t, side // t.shape[0], 0), side // t.shape[1], 1)
                 for t in tiles]
        big = image_grid(np.stack(tiles), nrow=3, pad=2, pad_value=255)
        display(Image(data=encode_png(np.repeat(np.repeat(big, 4, 0), 4, 1))))
    """),
    ("md", """
        ## ZipAR with the full row as window is raster decoding

        With `window = W` a row starts only after the row above is complete: the same schedule
        as raster order, token for token, for every family (the end-of-line tokens of Emu3 and
        Lumina included).
    """),
    ("code", """
        for name, model, kw in (("LlamaGen", llamagen, dict(labels=[3])),
                                ("Emu3-Gen", emu3, dict(prompt=PROMPT, grid=(GRID, GRID))),
                                ("Lumina-mGPT", lumina, dict(prompt=PROMPT, grid=(GRID, GRID)))):
            full = model.generate(policy=zipar.ZipAR(GRID), seed=SEED, **kw)
            same = (full.tokens == runs[name, "Raster"][0].tokens).all()
            print(f"{name:>12}: ZipAR({GRID}) == Raster(): {bool(same)}, "
                  f"{full.stats['forward_passes']} passes")
            assert same
    """),
    ("md", """
        ## The command line

        The same from a shell: `zipar generate --model FOLDER --prompt "a red fox" --policy zipar
        --window 7 --out fox.png` writes a PNG (one row per prompt, one column per policy) with
        the settings in its metadata.
    """),
    ("code", """
        from zipar.io.png import read_png, read_png_text

        out = os.path.join(folder, "fox.png")
        _ = zipar_cli(["generate", "--model", lumina.source, "--prompt", PROMPT, "--grid", str(GRID),
                   "--window", str(WINDOW), "--quiet", "--out", out])
        print(read_png_text(out)["Description"])
        display(Image(filename=out))
    """),
]


NOTEBOOKS = {
    "01_quickstart.ipynb": QUICKSTART,
    "02_ablation_sweep.ipynb": SWEEP,
    "03_spatial_locality.ipynb": LOCALITY,
    "04_custom_policy.ipynb": CUSTOM,
    "05_families.ipynb": FAMILIES,
}


def build(cells, stem: str):
    nb = new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    for i, (kind, text) in enumerate(cells):
        src = _src(text)
        cell = new_markdown_cell(src) if kind == "md" else new_code_cell(src)
        cell.id = f"{stem}-{i:02d}"          # fixed ids: the files do not change between runs
        if kind == "code":
            cell.outputs = []
            cell.execution_count = None
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def write_all(outdir: str = HERE):
    os.makedirs(outdir, exist_ok=True)
    paths = []
    for name, cells in NOTEBOOKS.items():
        nb = build(cells, name.split("_")[0])
        path = os.path.join(outdir, name)
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            nbformat.write(nb, f)
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in write_all(sys.argv[1] if len(sys.argv) > 1 else HERE):
        print("wrote", p)
