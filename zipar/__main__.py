"""Command line: ``python -m zipar {generate,convert,info,sweep}``.

``python -m zipar generate`` with no arguments loads the built-in Fashion-MNIST model and writes a
PNG grid (raster beside ZipAR, one row per class) with passes and seconds for each.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from .sampling import Sampling


def _policy_args(p):
    p.add_argument("--policy", default=None, choices=["raster", "zipar", "adaptive"],
                   help="decoding policy (default: raster and zipar side by side)")
    p.add_argument("--window", type=int, default=None, help="ZipAR window / adaptive min window")
    p.add_argument("--max-window", type=int, default=None)
    p.add_argument("--threshold", type=float, default=0.0, help="adaptive acceptance threshold")
    p.add_argument("--schedule", default="eager", choices=["eager", "paper"])
    p.add_argument("--proxy", default="above", choices=["above", "left"])


def _sampling_args(p, cfg_default):
    p.add_argument("--cfg-scale", type=float, default=cfg_default)
    p.add_argument("--cfg-interval", type=int, default=Sampling.cfg_interval)
    p.add_argument("--temperature", type=float, default=Sampling.temperature)
    p.add_argument("--top-k", type=int, default=None,
                   help="0 = off (default: 2000 for LlamaGen checkpoints, off for the built-in)")
    p.add_argument("--top-p", type=float, default=Sampling.top_p)
    p.add_argument("--seed", type=int, default=Sampling.seed)


def cmd_generate(a):
    from .io import png
    from .policies import Raster, ZipAR, policy_from_name

    if a.checkpoint:
        from .families.llamagen import load_llamagen

        model = load_llamagen(a.checkpoint, grid=a.grid, n_head=a.n_head,
                              num_classes=a.num_classes)
        if a.vq:
            from .families.llamagen import read_vq_state_dict
            from .families.vq16 import VQDecoder

            model.decoder = VQDecoder(read_vq_state_dict(a.vq))
        default_labels = [207, 360, 387, 974, 88, 979, 417, 279]
        cfg = a.cfg_scale if a.cfg_scale is not None else Sampling.cfg_scale
        top_k = a.top_k if a.top_k is not None else 2000
    else:
        from .fmnist.builtin import load_default

        model = load_default()
        default_labels = list(range(model.config.num_classes))
        cfg = a.cfg_scale if a.cfg_scale is not None else 2.0
        top_k = a.top_k if a.top_k is not None else 0
    c = model.config
    captions = None
    if a.captions:
        captions = np.load(a.captions, allow_pickle=False)
        if captions.ndim != 3:
            raise ValueError(f"{a.captions}: caption embeddings must be (B, P, caption_dim), "
                             f"got shape {captions.shape}")
        labels = None
        n = captions.shape[0]
    else:
        labels = a.labels if a.labels else default_labels
        n = len(labels)
    if a.policy:
        policies = [policy_from_name(a.policy, window=a.window, schedule=a.schedule,
                                     proxy=a.proxy, min_window=a.window,
                                     max_window=a.max_window, threshold=a.threshold)]
    else:
        w = a.window if a.window else max(1, c.W // 4)
        policies = [Raster(), ZipAR(w, schedule=a.schedule, proxy=a.proxy)]
    columns = []
    summary = []
    for pol in policies:
        t0 = time.perf_counter()
        res = model.generate(labels, policy=pol, cfg_scale=cfg, cfg_interval=a.cfg_interval,
                             temperature=a.temperature, top_k=top_k, top_p=a.top_p,
                             seed=a.seed, captions=captions, progress=not a.quiet,
                             sample_ids=np.arange(n) * a.samples if a.samples > 1 else None)
        dt = time.perf_counter() - t0
        extra = [res]
        for k in range(1, a.samples):
            extra.append(model.generate(labels, policy=pol, cfg_scale=cfg, seed=a.seed,
                                        cfg_interval=a.cfg_interval, temperature=a.temperature,
                                        top_k=top_k, top_p=a.top_p, captions=captions,
                                        sample_ids=np.arange(n) * a.samples + k))
        columns.append(extra)
        st = res.stats
        line = (f"{json.dumps(pol.to_dict())}: {st['forward_passes']} passes "
                f"(raster {st['raster_passes']}, {st['step_reduction']:.0%} fewer), "
                f"{dt:.2f} s for {n} images")
        print(line)
        summary.append(dict(policy=pol.to_dict(), passes=st["forward_passes"], seconds=dt,
                            config=res.config))
    imgs = [[r.images for r in col] for col in columns]
    if any(im is None for col in imgs for im in col):
        print("no decoder attached: writing token grids as grey images")
        imgs = [[(r.tokens.astype(np.float64) * 255.0 / max(1, c.vocab_size - 1)).round()
                 .astype(np.uint8) for r in col] for col in columns]
    # one row per label: for each policy its samples side by side
    tiles = []
    for i in range(n):
        for col in imgs:
            for im in col:
                tiles.append(im[i])
    grid = png.image_grid(np.stack(tiles), nrow=len(imgs) * a.samples, pad=2,
                          pad_value=255)
    scale = a.scale if a.scale else (4 if grid.shape[0] < 200 else 1)
    if scale > 1:
        grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    png.write_png(a.out, grid, text={"zipar": json.dumps(summary)})
    print(f"wrote {a.out} ({grid.shape[1]}x{grid.shape[0]}): one row per label, columns: "
          + ", ".join(s["policy"]["policy"] for s in summary))
    return 0


def cmd_convert(a):
    from .families.llamagen import load_llamagen, save_npz, save_safetensors

    model = load_llamagen(a.checkpoint, grid=a.grid, n_head=a.n_head, num_classes=a.num_classes)
    if a.out.endswith(".safetensors"):
        save_safetensors(a.out, model.config, model.weights)
    else:
        save_npz(a.out, model.config, model.weights)
    print(f"wrote {a.out}: {model!r}")
    return 0


def cmd_info(a):
    from .runtime import show_config

    show_config()
    return 0


def cmd_sweep(a):
    from .sweep.files import run_sweep_file

    run_sweep_file(a.config, out=a.out, executor=a.executor, workers=a.workers,
                   scheduler=a.scheduler, progress=not a.quiet)
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m zipar", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd")
    g = sub.add_parser("generate", help="generate images (default: built-in model)")
    g.add_argument("--checkpoint", help="LlamaGen .pt / .npz / .safetensors (default: built-in)")
    g.add_argument("--vq", help="VQ-16 decoder checkpoint for pixels")
    g.add_argument("--grid", type=int, default=None,
                   help="grid side (default: the stored config, else from a _256/_384/_512 "
                        "file name tag, else 16)")
    g.add_argument("--n-head", type=int, default=None,
                   help="attention heads, for checkpoints of no LlamaGen size")
    g.add_argument("--num-classes", type=int, default=None)
    g.add_argument("--labels", type=int, nargs="*", help="class labels (default: one per class)")
    g.add_argument("--captions", help="t2i caption embeddings .npy (B, 120, 2048)")
    g.add_argument("--samples", type=int, default=1, help="samples per label and policy")
    g.add_argument("--out", default="zipar_samples.png")
    g.add_argument("--scale", type=int, default=0, help="pixel upscaling of the PNG")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    _policy_args(g)
    _sampling_args(g, None)
    g.set_defaults(fn=cmd_generate)
    c = sub.add_parser("convert", help="convert a LlamaGen checkpoint to .npz / .safetensors")
    c.add_argument("checkpoint")
    c.add_argument("out")
    c.add_argument("--grid", type=int, default=None,
                   help="grid side (default: from a _256/_384/_512 file name tag, else 16)")
    c.add_argument("--n-head", type=int, default=None)
    c.add_argument("--num-classes", type=int, default=None)
    c.set_defaults(fn=cmd_convert)
    i = sub.add_parser("info", help="BLAS, OpenMP and kernel facts")
    i.set_defaults(fn=cmd_info)
    s = sub.add_parser("sweep", help="ablation sweep from a TOML file")
    s.add_argument("config")
    s.add_argument("--out", default=None, help="results directory (checkpointed, resumable)")
    s.add_argument("--executor", default=None, choices=["inprocess", "process", "dask"])
    s.add_argument("--workers", type=int, default=None)
    s.add_argument("--scheduler", default=None, help="Dask scheduler address")
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(fn=cmd_sweep)
    a = ap.parse_args(argv)
    if a.cmd is None:
        ap.print_help()
        return 2
    try:
        return a.fn(a)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError) as e:
        # user errors (CheckpointError is a ValueError; FileNotFoundError an OSError): one line,
        # no traceback
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
