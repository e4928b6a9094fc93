"""Sweep files: a TOML description of a sweep ([model], [sweep], [grid]) and its runner."""

from __future__ import annotations

import os

from .result import SweepResult, format_table
from .run import sweep

__all__ = ["run_sweep_file"]


def _read_toml(path) -> dict:
    try:
        import tomllib
    except ImportError:
        try:
            import tomli as tomllib
        except ImportError:
            raise ImportError("reading a sweep file on Python < 3.11 needs tomli: "
                              "pip install tomli") from None
    with open(path, "rb") as f:
        return tomllib.load(f)


_SWEEP_FILE_KEYS = ("n_samples", "batch_size", "seeds", "labels", "executor", "workers",
                    "scheduler", "out")


def run_sweep_file(path, out=None, executor=None, workers=None, scheduler=None,
                   progress=True) -> SweepResult:
    """Run the sweep a TOML file describes, print its records and write out/records.csv and
    out/records.json (when there is an out directory).

    [model]: ``spec = "builtin"`` (default; ``"builtin:pixels"`` for the pixel model) or a
    checkpoint path (relative paths are relative to the TOML file), or ``checkpoint = path``
    with load_llamagen options beside it, or a ``random`` table of zipar.random_model
    arguments. [sweep]: n_samples (required), batch_size, seeds, labels, executor, workers,
    scheduler, out (relative to the TOML file).
    [grid]: lists per setting (see :func:`expand_grid`). Arguments given here override [sweep].
    """
    cfg = _read_toml(path)
    base = os.path.dirname(os.path.abspath(path))
    unknown = sorted(set(cfg) - {"model", "sweep", "grid"})
    if unknown:
        raise ValueError(f"{path}: unknown section(s) {', '.join(unknown)}; use [model], "
                         "[sweep], [grid]")
    model = dict(cfg.get("model", {}))
    if "random" in model:
        spec = {"random": model.pop("random")}
    elif "checkpoint" in model:
        spec = dict(model)
        spec["checkpoint"] = os.path.join(base, spec["checkpoint"])
        model = {}
    else:
        spec = model.pop("spec", "builtin")
        if spec not in ("builtin", "builtin:vq", "builtin:pixels"):
            spec = os.path.join(base, spec)
    if model:
        raise ValueError(f"{path}: unknown [model] key(s) {', '.join(sorted(model))}")
    sw = dict(cfg.get("sweep", {}))
    bad = sorted(set(sw) - set(_SWEEP_FILE_KEYS))
    if bad:
        raise ValueError(f"{path}: unknown [sweep] key(s) {', '.join(bad)}; known: "
                         f"{', '.join(_SWEEP_FILE_KEYS)}")
    if "n_samples" not in sw:
        raise ValueError(f"{path}: [sweep] needs n_samples")
    if "grid" not in cfg:
        raise ValueError(f"{path}: needs a [grid] section")
    if out is None and sw.get("out") is not None:
        out = os.path.join(base, sw["out"])
    kwargs = dict(n_samples=sw["n_samples"], seeds=sw.get("seeds", (0,)),
                  labels=sw.get("labels"),
                  executor=executor or sw.get("executor", "inprocess"),
                  workers=workers if workers is not None else sw.get("workers"),
                  scheduler=scheduler or sw.get("scheduler"), out=out, progress=progress)
    if "batch_size" in sw:
        kwargs["batch_size"] = sw["batch_size"]
    res = sweep(spec, cfg["grid"], **kwargs)
    print(format_table(res.records))
    if out is not None:
        res.to_csv(os.path.join(out, "records.csv"))
        res.to_json(os.path.join(out, "records.json"))
        print(f"wrote {os.path.join(out, 'records.csv')} and records.json "
              f"({len(res.records)} cells)")
    return res
