"""The sweep: expand the grid, skip finished cells, run the others, keep every record."""

from __future__ import annotations

import os
from typing import Any, Callable, List, Mapping, Optional, Sequence

import numpy as np

from .cell import DEFAULT, _cell_hash, _cell_key, _resolve_metrics, _run_cell, cell_proxy_token
from .executors import _progress, _run_dask, _run_process
from .grid import expand_grid
from .result import SweepResult
from .spec import get_model, normalize_spec
from .store import _Store

__all__ = ["sweep"]


def sweep(model_spec, grid: Mapping[str, Any], *, n_samples: int, batch_size: int = 16,
          seeds: Sequence[int] = (0,), labels=None, executor: str = "inprocess",
          workers: Optional[int] = None, scheduler: Optional[str] = None, out=None,
          progress: bool = True, metrics=DEFAULT,
          callback: Optional[Callable[[int, dict], None]] = None) -> SweepResult:
    """Run every cell of ``grid`` and return a :class:`SweepResult` (records in grid order).

    model_spec: ``"builtin"`` (zipar.load_default(), the VQ model), ``"builtin:pixels"``
    (zipar.load_default("pixels")), a checkpoint path (.npz, .safetensors, .pt:
    zipar.load_llamagen), ``{"checkpoint": path, **load_llamagen kwargs}`` or
    ``{"random": {zipar.random_model kwargs}}``; each worker loads it once.
    grid: see :func:`expand_grid`; ``seeds`` is its seed axis unless it has ``seed``.
    n_samples: images per cell, with labels ``labels`` (cycled to n_samples; default
    ``i % num_classes``) and sample ids ``0..n_samples-1``, generated ``batch_size`` at a time;
    the tokens do not depend on batch_size or executor.
    metrics: dict name -> ``f(model, tokens (n, H, W), labels (n,))`` returning a number (column
    ``name``) or a dict of numbers (columns ``name_key``; key ``"value"`` gives column ``name``);
    ``DEFAULT``: :func:`nll_bits`, and for the built-in model :func:`eval_class_accuracy`,
    :func:`eval_fid_proxy`, :func:`eval_diversity` when zipar.eval's data are present; None:
    no metric. With executor="process" they must be module-level functions (picklable).
    executor: ``"inprocess"``, ``"process"`` (spawn pool of ``workers`` processes, default
    os.cpu_count(), one engine thread each) or ``"dask"`` (``scheduler`` address, else a loopback
    LocalCluster of ``workers`` single-threaded processes, started and closed here).
    out: checkpoint directory (see the module doc): finished cells are loaded, not recomputed;
    a cell whose file lacks a requested metric gets it computed from its saved tokens.
    progress: tqdm bar over cells when tqdm is installed. callback(index, record): called in
    this process after each computed cell is saved. A script that uses executor="process" must
    guard its entry point with ``if __name__ == "__main__":`` (spawned workers import it).
    On Ctrl-C (KeyboardInterrupt) the workers stop, finished cells stay on disk and the
    KeyboardInterrupt is re-raised.

    Record columns: model, the settings (:data:`SETTING_KEYS`, None where the policy does not
    read them), proxy_token (the token a constant or "calibrated" proxy feeds, else None),
    n_samples, batch_size, forward_passes (mean per image), forward_passes_max,
    raster_passes, step_reduction, mean_queries_per_pass (per image), proxies, refeeds,
    drafts_proposed/accepted/rejected, resamples (per image), draft_acceptance, seconds
    (generation wall time of the cell), seconds_per_image, then the metric columns.
    """
    spec = normalize_spec(model_spec)
    cells = expand_grid(grid, seeds)
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or \
            batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    n_samples, batch_size = int(n_samples), int(batch_size)
    if labels is not None:
        lab = np.asarray(labels)
        if lab.ndim != 1 or lab.size == 0 or not np.issubdtype(lab.dtype, np.integer):
            raise ValueError("labels must be a non-empty 1-D sequence of ints")
        labels = np.resize(lab, n_samples).astype(int).tolist()
    if executor not in ("inprocess", "process", "dask"):
        raise ValueError(f"unknown executor {executor!r}; use 'inprocess', 'process' or 'dask'")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or
                                workers < 1):
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    workers = workers or os.cpu_count() or 1
    metric_fns = _resolve_metrics(metrics, spec)

    store = _Store(out) if out is not None else None
    # a "calibrated" proxy is the model's row_start_proxy: looked up here (the model is loaded
    # once in this process), so that the hash changes with it and a model without one fails now
    calibrated = next((c for c in cells if c.get("proxy") == "calibrated"), None)
    token = cell_proxy_token(get_model(spec), calibrated) if calibrated else None
    keys = [_cell_key(spec, cell, n_samples, labels, token) for cell in cells]
    hashes = [_cell_hash(k) for k in keys]
    records: List[Optional[dict]] = [None] * len(cells)
    kept = None if store is not None else [None] * len(cells)
    tasks = []
    for i, cell in enumerate(cells):
        task = {"spec": spec, "settings": cell, "n_samples": n_samples, "batch_size": batch_size,
                "labels": labels, "metrics": metric_fns, "threads": None}
        cached = store.load(hashes[i], keys[i]) if store is not None else None
        if cached is not None:
            missing = [m for m in metric_fns if m not in cached["metrics_done"]]
            if not missing:
                records[i] = cached["record"]
                continue
            task.update(record=cached["record"], metrics_done=cached["metrics_done"],
                        tokens=store.tokens(hashes[i]),
                        metrics={m: metric_fns[m] for m in missing})
        tasks.append((i, task))

    bar = _progress(progress, len(cells), len(cells) - len(tasks))

    def finish(i: int, result: dict):
        if store is not None:
            store.save(hashes[i], keys[i], result)
        else:
            kept[i] = result["tokens"]
        records[i] = result["record"]
        if bar is not None:
            bar.update(1)
        if callback is not None:
            callback(i, records[i])

    try:
        if not tasks:
            pass
        elif executor == "inprocess":
            for i, task in tasks:
                finish(i, _run_cell(task))
        elif executor == "process":
            _run_process(tasks, finish, workers)
        else:
            _run_dask(tasks, finish, workers, scheduler)
    finally:
        if bar is not None:
            bar.close()
    return SweepResult(records, cells, out=None if out is None else os.fspath(out),
                       hashes=hashes, tokens=kept)
