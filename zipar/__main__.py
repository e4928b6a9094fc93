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
zipar generate --model BAAI/Emu3-Gen-hf --prompt "a red fox" --policy zipar --window 7
zipar info PATH           a checkpoint's family, size, dtype, grid and prompt template
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
                   help="ZipAR window / adaptive min window (default: the built-in model's "
                        "best measured setting, else W/4)")
    p.add_argument("--max-window", type=int, default=None, metavar="N",
                   help="adaptive: last verification window (default: W)")
    p.add_argument("--threshold", type=float, default=0.0, help="adaptive acceptance threshold")
    p.add_argument("--schedule", default=None, choices=["eager", "paper"],
                   help="when row 1 may start (default: eager)")
    p.add_argument("--proxy", default=None, type=_proxy_arg,
                   metavar="{above,left,calibrated,INT}",
                   help="stand-in for a missing end of row: above (default), left, calibrated "
                        "(the model's row_start_proxy) or a token id")


def _proxy_arg(text: str):
    """--proxy: a proxy name or a token id (checked against the model when generating)."""
    from .policies import PROXY_NAMES, check_proxy

    if text in PROXY_NAMES:
        return text
    try:
        return check_proxy(int(text))
    except ValueError as e:
        msg = str(e) if text.strip().lstrip("+-").isdigit() else f"invalid choice {text!r}"
        raise argparse.ArgumentTypeError(f"{msg} (choose from above, left, calibrated or a "
                                         "token id)") from None


def _sampling_args(p, cfg_default):
    p.add_argument("--cfg-scale", type=float, default=cfg_default,
                   help="guidance scale, 1 = off (default: 4, built-in 2, Emu3 / Lumina 3)")
    p.add_argument("--cfg-interval", type=int, default=Sampling.cfg_interval, metavar="N",
                   help="guided tokens, -1 = all")
    p.add_argument("--temperature", type=float, default=Sampling.temperature,
                   help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None,
                   help="0 = off (default: 2000, built-in off, Emu3 2048, Lumina 2000)")
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


def _model_path(a):
    if a.model and a.checkpoint and a.model != a.checkpoint:
        raise ValueError("--model and --checkpoint name the same thing; give one")
    return a.model or a.checkpoint


def _is_family(path) -> bool:
    """A Hugging Face folder or repo id (Emu3 / Lumina-mGPT), not a LlamaGen file (a path
    ending in a checkpoint file suffix counts as a file even when missing)."""
    if not path or os.path.isfile(path):
        return False
    return os.path.isdir(path) or not path.endswith((".pt", ".pth", ".npz", ".safetensors",
                                                     ".bin", ".ckpt"))


def _policies(a, W, best=None):
    """The policies to run: --policy alone, else Raster() beside a ZipAR: ``best`` (a built-in
    model's best measured setting, a dict of ZipAR's fields) when no --window, --schedule or
    --proxy is given, else ZipAR(--window or W/4)."""
    from .policies import Raster, ZipAR, policy_from_name

    schedule = a.schedule or "eager"
    proxy = "above" if a.proxy is None else a.proxy
    if a.policy:
        return [policy_from_name(a.policy, window=a.window, schedule=schedule, proxy=proxy,
                                 min_window=a.window, max_window=a.max_window,
                                 threshold=a.threshold)]
    if best and a.window is None and a.schedule is None and a.proxy is None:
        return [Raster(), ZipAR(best["window"], schedule=best["schedule"], proxy=best["proxy"])]
    w = a.window if a.window else max(1, W // 4)
    return [Raster(), ZipAR(w, schedule=schedule, proxy=proxy)]


def cmd_generate(a):
    from .io import png

    _check_out(a.out, (".png",))
    path = _model_path(a)
    if a.model and _is_family(path):
        return _generate_family(a, path)
    if a.prompt or a.prompt_ids or a.negative_prompt:
        raise ValueError("--prompt / --prompt-ids / --negative-prompt are for Emu3 and "
                         "Lumina-mGPT folders; a LlamaGen c2i model takes --labels")
    a.checkpoint = path
    class_names = None
    best = None
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
        from .fmnist.builtin import CLASS_NAMES, best_zipar, load_default

        model = load_default(a.builtin)
        best = best_zipar(a.builtin)
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
    policies = _policies(a, c.W, best)
    columns = []
    summary = []
    for pol in policies:
        t0 = time.perf_counter()
        res = model.generate(labels, policy=pol, cfg_scale=cfg, cfg_interval=a.cfg_interval,
                             temperature=a.temperature, top_k=top_k, top_p=a.top_p,
                             seed=a.seed, captions=captions, progress=not a.quiet,
                             sample_ids=np.arange(n) * a.samples if a.samples > 1 else None,
                             kv_dtype=a.kv_dtype)
        dt = time.perf_counter() - t0
        extra = [res]
        for k in range(1, a.samples):
            extra.append(model.generate(labels, policy=pol, cfg_scale=cfg, seed=a.seed,
                                        cfg_interval=a.cfg_interval, temperature=a.temperature,
                                        top_k=top_k, top_p=a.top_p, captions=captions,
                                        sample_ids=np.arange(n) * a.samples + k,
                                        kv_dtype=a.kv_dtype))
        columns.append(extra)
        st = res.stats
        line = (f"{json.dumps(res.config['policy'])}: {st['forward_passes']} passes "
                f"(raster {st['raster_passes']}, {st['step_reduction']:.0%} fewer), "
                f"{dt:.2f} s for {_plural(n, 'image')}")
        print(line)
        summary.append(dict(policy=res.config["policy"], passes=st["forward_passes"],
                            seconds=dt, config=res.config))
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


def _parse_ids(text: str):
    try:
        ids = [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise ValueError(f"--prompt-ids {text!r}: expected token ids separated by commas") \
            from None
    if not ids:
        raise ValueError("--prompt-ids is empty")
    return ids


def _generate_family(a, path):
    """Emu3-Gen / Lumina-mGPT: one row per prompt, one column per policy."""
    from .families.auto import load_family
    from .io import png

    for flag, bad in (("--labels", a.labels), ("--captions", a.captions), ("--vq", a.vq),
                      ("--n-head", a.n_head), ("--num-classes", a.num_classes)):
        if bad:
            raise ValueError(f"{flag} is for LlamaGen checkpoints, not a Hugging Face folder")
    if a.samples != 1:
        raise ValueError("--samples is for LlamaGen checkpoints; give several --prompt instead")
    if a.cfg_interval != Sampling.cfg_interval:
        raise ValueError("--cfg-interval is not supported for Emu3 / Lumina-mGPT")
    if a.kv_dtype != "float32":
        raise ValueError("--kv-dtype is not supported for Emu3 / Lumina-mGPT")
    if bool(a.prompt) == bool(a.prompt_ids):
        raise ValueError("an Emu3 / Lumina-mGPT folder needs --prompt TEXT (with its "
                         "tokenizer.json) or --prompt-ids IDS, one of the two")
    model = load_family(path)
    fam = model.config.family
    if a.grid:
        grid = (a.grid, a.grid)
    else:
        from .families.text import default_grid

        grid = default_grid(fam)
    kw = dict(grid=grid, temperature=a.temperature, top_p=a.top_p, seed=a.seed,
              progress=not a.quiet, decode_images=not a.no_decode)
    if a.cfg_scale is not None:
        kw["cfg_scale"] = a.cfg_scale
    if a.top_k is not None:
        kw["top_k"] = a.top_k
    if a.prompt:
        kw["prompt"] = list(a.prompt)
        if a.negative_prompt is not None:
            kw["negative_prompt"] = a.negative_prompt
        rows = [p if len(p) <= 24 else p[:21] + "..." for p in a.prompt]
    else:
        kw["prompt_ids"] = [_parse_ids(t) for t in a.prompt_ids]
        if a.negative_prompt is not None:
            kw["negative_prompt_ids"] = _parse_ids(a.negative_prompt)
        rows = [f"prompt {i}" for i in range(len(a.prompt_ids))]
    summary, results = [], []
    for pol in _policies(a, grid[1]):
        t0 = time.perf_counter()
        res = model.generate(policy=pol, **kw)
        dt = time.perf_counter() - t0
        st = res.stats
        n = res.tokens.shape[0]
        print(f"{json.dumps(pol.to_dict())}: {st['forward_passes']} passes "
              f"(raster {st['raster_passes']}, {st['step_reduction']:.0%} fewer), "
              f"{dt:.2f} s for {_plural(n, 'image')}")
        summary.append(dict(policy=pol.to_dict(), passes=st["forward_passes"], seconds=dt,
                            config=res.config))
        results.append(res)
    if any(r.images is None for r in results):
        print("no VQ decoder weights in the folder" if not a.no_decode else "--no-decode",
              end=": writing token grids as grey images\n")
        K = max(1, model.config.n_codes - 1)
        imgs = [(r.tokens.astype(np.float64) * 255.0 / K).round().astype(np.uint8)
                for r in results]
    else:
        imgs = [r.images for r in results]
    tiles = np.stack([im[i] for i in range(len(rows)) for im in imgs])
    side = tiles.shape[1]
    scale = a.scale if a.scale else max(1, -(-112 // side))
    if a.plain:
        grid_img = png.image_grid(tiles, nrow=len(imgs), pad=2, pad_value=255)
        if scale > 1:
            grid_img = grid_img.repeat(scale, axis=0).repeat(scale, axis=1)
    else:
        tiles = tiles.repeat(scale, axis=1).repeat(scale, axis=2)
        heads = [[_policy_title(s["policy"]),
                  f"{s['passes']} pass" + ("" if s["passes"] == 1 else "es"),
                  f"{s['seconds']:.2f} s"] for s in summary]
        grid_img = _annotated_grid(tiles, len(imgs), 1, heads, rows)
    meta = dict(model=os.fspath(path), family=fam, prompt=a.prompt or None,
                prompt_ids=kw.get("prompt_ids"), negative_prompt=a.negative_prompt,
                runs=summary)
    caption = "; ".join(f"{_policy_title(s['policy'])}: {s['passes']} passes, "
                        f"{s['seconds']:.2f} seconds" for s in summary)
    png.write_png(a.out, grid_img, text={
        "zipar": json.dumps(meta), "Title": f"zipar {fam} samples",
        "Description": f"columns: {caption}. rows: " + " | ".join(a.prompt or rows)})
    print(f"wrote {a.out} ({grid_img.shape[1]}x{grid_img.shape[0]}): one row per prompt, "
          "columns: " + ", ".join(s["policy"]["policy"] for s in summary))
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
    from .families.llamagen import load_llamagen

    _check_out(a.out, (".npz", ".safetensors"))
    model = load_llamagen(a.checkpoint, grid=a.grid, n_head=a.n_head, num_classes=a.num_classes,
                          dtype=a.dtype)
    model.save(a.out)  # in the model's dtype (bfloat16 as BF16 tensors in .safetensors)
    print(f"wrote {a.out}: {model!r}")
    return 0


def cmd_info(a):
    from .runtime import show_config

    if a.path is None:
        show_config()
        return 0
    if os.path.isfile(a.path):
        return _info_llamagen(a.path, grid=a.grid, n_head=a.n_head)
    if a.n_head is not None:
        raise ValueError("--n-head is for LlamaGen files")
    return _info_family(a.path, a.grid)


def _dtype_names(arrays) -> str:
    names = sorted({"bfloat16" if v.dtype == np.uint16 else str(v.dtype) for v in arrays})
    return ", ".join(names) if names else "-"


def _info_llamagen(path, grid=None, n_head=None):
    from .families.llamagen import load_llamagen
    from .io.formats import load_state_dict

    sd = load_state_dict(path, keep_bfloat16=True)
    stored = _dtype_names(v for v in sd.values() if isinstance(v, np.ndarray)
                          and v.dtype.kind in "fu" and v.dtype != np.uint8)
    del sd
    model = load_llamagen(path, grid=grid, n_head=n_head)
    c = model.config
    print(f"path:     {path}")
    print("family:   llamagen (" + ("t2i" if getattr(c, "caption_dim", 0) else "c2i") + ")")
    print(f"size:     {_count(model.n_params)} parameters (dim {c.dim}, {c.n_layer} layers, "
          f"{c.n_head} heads, vocabulary {c.vocab_size})")
    print(f"dtype:    {stored} on disk, float32 in memory")
    print(f"grid:     {c.H}x{c.W} tokens")
    print("proxy:    " + ("none calibrated" if model.row_start_proxy is None else
                          f"calibrated row-start proxy token {model.row_start_proxy}"))
    print("prompt:   class labels (c2i) or caption embeddings (t2i); no text template")
    return 0


def _count(n: int) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.2f}M"


def _info_family(path, grid=None):
    """Reads config.json, the tensor headers (memory-mapped, nothing converted) and the
    tokenizer file; the weights are not loaded."""
    from .families import hf
    from .families.chameleon import (chameleon_config, chameleon_weight_names,
                                     is_chameleon_config)
    from .families.emu3 import emu3_config, emu3_weight_names, is_emu3_config
    from .families.text import default_grid, find_vq, tokenizer_file
    from .io.errors import CheckpointError

    folder = hf.resolve_folder(path)
    raw = hf.read_config(folder)
    if is_emu3_config(raw):
        cfg, names = emu3_config(raw, f"{folder}/config.json"), emu3_weight_names
        label = "emu3 (Emu3-Gen)"
    elif is_chameleon_config(raw):
        cfg, names = chameleon_config(raw, f"{folder}/config.json"), chameleon_weight_names
        label = "chameleon (Lumina-mGPT / Chameleon)"
    else:
        raise CheckpointError(f"{folder}: config.json describes model_type "
                              f"{raw.get('model_type')!r}, not Emu3 or Chameleon")
    tensors = hf.read_folder_tensors(folder)
    dec = names(tensors)
    n_dec = sum(int(tensors[k].size) for k in dec)
    n_other = sum(int(v.size) for k, v in tensors.items() if k not in dec)
    stored = _dtype_names(tensors[k] for k in dec)
    H, W = (grid, grid) if grid else default_grid(cfg.family)
    print(f"path:     {folder}")
    print(f"family:   {label}")
    print(f"size:     {_count(n_dec)} decoder parameters (dim {cfg.dim}, {cfg.n_layer} "
          f"layers, {cfg.n_head}/{cfg.n_kv_head} heads, vocabulary {cfg.vocab_size})"
          + (f" + {_count(n_other)} other (VQ) tensors in the shards" if n_other else ""))
    print(f"dtype:    {stored} on disk ({raw.get('torch_dtype', raw.get('dtype', '?'))} in "
          "config.json), float32 in memory")
    print(f"grid:     {H}x{W} codes" + ("" if grid else " by default")
          + f" ({cfg.n_codes} image tokens, ids {cfg.image_lo}..{cfg.image_hi - 1}, EOL {cfg.eol})")
    vq = find_vq(cfg.family, folder)
    print(f"vq:       {vq if vq else 'none in the folder (tokens only)'}")
    tok_path = tokenizer_file(folder)
    if tok_path is None:
        print("template: no tokenizer.json (prompts as token ids: --prompt-ids)")
        return 0
    from .families import prompts as pr

    tok = pr.load_tokenizer(tok_path)
    example = "a red fox"
    try:
        if cfg.family == "emu3":
            ids, neg = pr.emu3_prompt_ids(tok, example, (H, W))
        else:
            ids, neg = pr.lumina_prompt_ids(tok, example, (16 * H, 16 * W))
    except ValueError as e:
        print(f"template: {tok_path}: not available at {H}x{W} ({e}); try --grid")
        return 0
    show = lambda seq: " ".join(f"{tok.id_to_token(i)}={i}" for i in seq)  # noqa: E731
    print(f"template: {tok_path}, prompt {example!r} at {H}x{W}:")
    print(f"  prompt ({len(ids)} tokens): {show(ids)}")
    print(f"  unconditional ({len(neg)} tokens): {show(neg)}")
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
                       "ZipAR (or one --policy), one row per label or prompt.")
    g.add_argument("--model", metavar="PATH",
                   help="an Emu3-Gen / Lumina-mGPT folder (or a repo id in the Hugging Face "
                        "cache), or a LlamaGen .pt/.npz/.safetensors (default: built-in)")
    g.add_argument("--checkpoint", help="LlamaGen .pt/.npz/.safetensors (same as --model)")
    g.add_argument("--prompt", action="append", metavar="TEXT",
                   help="Emu3 / Lumina-mGPT: text prompt (repeat for several; needs the "
                        "folder's tokenizer.json and the tokenizers package)")
    g.add_argument("--prompt-ids", action="append", metavar="IDS",
                   help="Emu3 / Lumina-mGPT: a prompt as comma-separated token ids (repeatable)")
    g.add_argument("--negative-prompt", metavar="TEXT",
                   help="Emu3 / Lumina-mGPT: text (ids with --prompt-ids) for the unconditional "
                        "stream (default: Emu3's negative prompt; Lumina: none)")
    g.add_argument("--vq", help="VQ-16 decoder checkpoint, for pixels")
    g.add_argument("--builtin", default="vq", choices=["vq", "pixels"],
                   help="built-in model: vq (16x16 VQ tokens), pixels (28x28 grey)")
    g.add_argument("--grid", type=int, default=None,
                   help="grid side (default: stored, file name tag, or 16; Emu3 90, Lumina 48)")
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
    g.add_argument("--kv-dtype", default="float32", choices=["float32", "bfloat16"],
                   help="storage of the K/V cache (bfloat16: half the bytes; LlamaGen models)")
    g.add_argument("--no-decode", action="store_true",
                   help="Emu3 / Lumina-mGPT: skip the VQ decoder (slow on a CPU at full size), "
                        "write the code grids as grey images")
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
    c.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="weight type to write (default: the checkpoint's own)")
    c.set_defaults(fn=cmd_convert)
    i = sub.add_parser("info", help="a checkpoint's facts, or BLAS, OpenMP and kernel facts",
                       formatter_class=_Formatter,
                       description="With PATH: the checkpoint's family, size, dtype, grid and "
                       "prompt template tokens. Without: the BLAS, OpenMP and matrix kernel in "
                       "use.")
    i.add_argument("path", nargs="?", default=None,
                   help="a LlamaGen file, an Emu3 / Lumina-mGPT folder or a cached repo id")
    i.add_argument("--grid", type=int, default=None,
                   help="grid side (LlamaGen: default stored or file name tag; Emu3 / Lumina: "
                        "the grid of the template shown, default 90 / 48)")
    i.add_argument("--n-head", type=int, default=None, help="LlamaGen: heads, for non-LlamaGen "
                   "sizes")
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
