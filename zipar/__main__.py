"""Command line: ``python -m zipar {generate,convert,info,sweep}``.

``python -m zipar generate`` with no arguments loads the built-in Fashion-MNIST model (the
miniature LlamaGen: 16x16 VQ tokens; ``--builtin pixels`` for the 28x28 grey-level one) and writes
a PNG grid (raster beside ZipAR, one row per class) with passes and seconds for each.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from .sampling import Sampling


_DESCRIPTION = """\
Image generation with exact ZipAR parallel decoding.

zipar generate            built-in Fashion-MNIST model: raster beside ZipAR, one row per class,
                          written to zipar_samples.png with passes and seconds per policy
zipar generate --checkpoint c2i_B_256.pt --vq vq_ds16_c2i.pt     a LlamaGen checkpoint
zipar <command> --help    the options of a command
"""


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown, one line per option, the description kept as written."""

    def __init__(self, prog):
        super().__init__(prog, max_help_position=32, width=100)

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or any(action.default is v for v in (None, False,
                                                                   argparse.SUPPRESS)):
            return text
        return text + " (default: %(default)s)"


def _version() -> str:
    from .runtime import __version__

    return f"zipar {__version__}"


def _policy_args(p):
    p.add_argument("--policy", default=None, choices=["raster", "zipar", "adaptive"],
                   metavar="NAME", help="raster, zipar or adaptive (default: raster and zipar)")
    p.add_argument("--window", type=int, default=None,
                   help="ZipAR window / adaptive min window (default: W/4)")
    p.add_argument("--max-window", type=int, default=None, metavar="N",
                   help="adaptive: last verification window (default: W)")
    p.add_argument("--threshold", type=float, default=0.0, help="adaptive acceptance threshold")
    p.add_argument("--schedule", default="eager", choices=["eager", "paper"],
                   help="when row 1 may start")
    p.add_argument("--proxy", default="above", choices=["above", "left"],
                   help="stand-in for a missing end of row")


def _sampling_args(p, cfg_default):
    p.add_argument("--cfg-scale", type=float, default=cfg_default,
                   help="guidance scale, 1 = off (default: 4, built-in 2)")
    p.add_argument("--cfg-interval", type=int, default=Sampling.cfg_interval, metavar="N",
                   help="guided tokens, -1 = all")
    p.add_argument("--temperature", type=float, default=Sampling.temperature,
                   help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None,
                   help="0 = off (default: 2000, built-in off)")
    p.add_argument("--top-p", type=float, default=Sampling.top_p, help="1 = off")
    p.add_argument("--seed", type=int, default=Sampling.seed, help="random stream key")


def _check_out(path: str, suffixes=None) -> None:
    """Refuses an output path that cannot be written, before any work is done."""
    if suffixes and not path.endswith(suffixes):
        raise ValueError(f"output {path!r} must end in {' or '.join(suffixes)}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"cannot write {path!r}: the directory {folder!r} does not exist")
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and (os.path.isdir(path) or
                                                                    not os.access(path, os.W_OK))):
        raise ValueError(f"cannot write {path!r}: not writable")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def cmd_generate(a):
    from .io import png
    from .policies import Raster, ZipAR, policy_from_name

    _check_out(a.out, (".png",))
    class_names = None
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
        from .fmnist.builtin import CLASS_NAMES, load_default

        model = load_default(a.builtin)
        default_labels = list(range(model.config.num_classes))
        class_names = CLASS_NAMES
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
                f"{dt:.2f} s for {_plural(n, 'image')}")
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
    tiles = np.stack(tiles)
    if a.plain:  # bare tiles, png.image_grid's layout
        grid = png.image_grid(tiles, nrow=len(imgs) * a.samples, pad=2, pad_value=255)
        scale = a.scale if a.scale else (4 if grid.shape[0] < 200 else 1)
        if scale > 1:
            grid = grid.repeat(scale, axis=0).repeat(scale, axis=1)
    else:  # tiles upscaled to >= 112 pixels, a labelled column per policy, a named row per label
        side = tiles.shape[1]
        scale = a.scale if a.scale else max(1, -(-112 // side))
        tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
        heads = [[_policy_title(s["policy"]),
                  f"{s['passes']} pass" + ("" if s["passes"] == 1 else "es"),
                  f"{s['seconds']:.2f} s"] for s in summary]
        rows = [class_names[lab] if class_names is not None and 0 <= lab < len(class_names)
                else f"class {lab}" for lab in labels] if labels is not None \
            else [f"caption {i}" for i in range(n)]
        grid = _annotated_grid(tiles, len(imgs), a.samples, heads, rows)
    caption = "; ".join(f"{_policy_title(s['policy'])}: {s['passes']} passes, "
                        f"{s['seconds']:.2f} seconds" for s in summary)
    png.write_png(a.out, grid, text={
        "zipar": json.dumps(summary), "Title": "zipar samples",
        "Description": f"columns: {caption}. rows: "
                       + (", ".join(str(x) for x in labels) if labels is not None else
                          "captions")})
    print(f"wrote {a.out} ({grid.shape[1]}x{grid.shape[0]}): one row per label, columns: "
          + ", ".join(s["policy"]["policy"] for s in summary))
    return 0


def _policy_title(p: dict) -> str:
    name = p["policy"]
    if name == "ZipAR":
        return f"ZipAR w={p['window']}"
    if name == "AdaptiveZipAR":
        return f"Adaptive {p['min_window']}-{p['max_window']}"
    return name


def _annotated_grid(tiles, n_policies, samples, heads, rows):
    """(n_labels * n_policies * samples) upscaled tiles -> one image: a header band with the
    lines of each policy column (name, passes, seconds), a left band with one name per row."""
    from .io.font import GLYPH_H, render_text, text_width

    n, th, tw = tiles.shape[:3]
    colour = tiles.shape[3:]
    pad, gap = 4, 12
    col_w = samples * tw + (samples - 1) * pad
    # the largest text scale (1 or 2) at which every header line fits its column
    ts = 2 if all(text_width(t, 2) <= col_w for h in heads for t in h) else 1
    rs = 2 if th >= 2 * (GLYPH_H + 2) else 1
    left = max(text_width(r, rs) for r in rows) + 2 * pad
    top = max(len(h) for h in heads) * (GLYPH_H * ts + pad) + pad
    n_rows = len(rows)
    H = top + n_rows * (th + pad) + pad
    W = left + n_policies * (col_w + gap) - gap + pad
    img = np.full((H, W) + colour, 255, np.uint8)

    def ink(mask, y, x):
        h, w = mask.shape
        w = min(w, W - x)
        img[y:y + h, x:x + w][mask[:, :w]] = 0

    for j, lines in enumerate(heads):
        x0 = left + j * (col_w + gap)
        for k, line in enumerate(lines):
            m = render_text(line, ts)
            ink(m, pad + k * (GLYPH_H * ts + pad), x0 + max(0, (col_w - m.shape[1]) // 2))
    i = 0
    for r, name in enumerate(rows):
        y = top + r * (th + pad)
        m = render_text(name, rs)
        ink(m, y + (th - m.shape[0]) // 2, pad)
        for j in range(n_policies):
            for k in range(samples):
                x = left + j * (col_w + gap) + k * (tw + pad)
                img[y:y + th, x:x + tw] = tiles[i]
                i += 1
    return img


def cmd_convert(a):
    from .families.llamagen import load_llamagen, save_npz, save_safetensors

    _check_out(a.out, (".npz", ".safetensors"))
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
    ap = argparse.ArgumentParser(prog="zipar", description=_DESCRIPTION,
                                 formatter_class=_Formatter)
    ap.add_argument("--version", action="version", version=_version())
    sub = ap.add_subparsers(dest="cmd", title="commands", metavar="<command>")
    g = sub.add_parser("generate", help="generate images (default: the built-in model)",
                       formatter_class=_Formatter, description="Generate images: raster beside "
                       "ZipAR (or one --policy), one row per label.")
    g.add_argument("--checkpoint", help="LlamaGen .pt/.npz/.safetensors (default: built-in)")
    g.add_argument("--vq", help="VQ-16 decoder checkpoint, for pixels")
    g.add_argument("--builtin", default="vq", choices=["vq", "pixels"],
                   help="built-in model without --checkpoint: vq (16x16 VQ tokens) or pixels "
                        "(28x28 grey-level tokens)")
    g.add_argument("--grid", type=int, default=None,
                   help="grid side (default: stored, file name tag, or 16)")
    g.add_argument("--n-head", type=int, default=None, help="heads, for non-LlamaGen sizes")
    g.add_argument("--num-classes", type=int, default=None, metavar="N",
                   help="classes (default: inferred)")
    g.add_argument("--labels", type=int, nargs="*", help="class labels (default: one per class)")
    g.add_argument("--captions", help="t2i caption embeddings .npy (B, 120, 2048)")
    g.add_argument("--samples", type=int, default=1, help="samples per label and policy")
    g.add_argument("--out", default="zipar_samples.png", help="PNG to write")
    g.add_argument("--scale", type=int, default=0, help="pixel upscaling, 0 = automatic")
    g.add_argument("--plain", action="store_true", help="tiles only: no labels in the PNG")
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    _policy_args(g)
    _sampling_args(g, None)
    g.set_defaults(fn=cmd_generate)
    c = sub.add_parser("convert", help="convert a LlamaGen checkpoint to .npz / .safetensors",
                       formatter_class=_Formatter, description="Convert a LlamaGen checkpoint "
                       "to .npz or .safetensors (with its config).")
    c.add_argument("checkpoint", help="LlamaGen .pt / .npz / .safetensors")
    c.add_argument("out", help="output .npz or .safetensors")
    c.add_argument("--grid", type=int, default=None,
                   help="grid side (default: file name tag, or 16)")
    c.add_argument("--n-head", type=int, default=None, help="heads, for non-LlamaGen sizes")
    c.add_argument("--num-classes", type=int, default=None, metavar="N",
                   help="classes (default: inferred)")
    c.set_defaults(fn=cmd_convert)
    i = sub.add_parser("info", help="BLAS, OpenMP and kernel facts", formatter_class=_Formatter,
                       description="Print the BLAS, OpenMP and matrix kernel in use.")
    i.set_defaults(fn=cmd_info)
    s = sub.add_parser("sweep", help="ablation sweep from a TOML file", formatter_class=_Formatter,
                       description="Run an ablation sweep described by a TOML file.")
    s.add_argument("config", help="sweep TOML file")
    s.add_argument("--out", default=None, help="results directory (resumable)")
    s.add_argument("--executor", default=None, choices=["inprocess", "process", "dask"],
                   metavar="NAME", help="inprocess, process or dask (default: the file's)")
    s.add_argument("--workers", type=int, default=None, help="process or Dask workers")
    s.add_argument("--scheduler", default=None, help="Dask scheduler address")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
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
