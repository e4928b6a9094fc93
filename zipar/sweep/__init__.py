"""Ablation sweeps: decoding policies x sampling settings -> one record per cell.

    >>> from zipar.sweep import sweep
    >>> res = sweep("builtin", {"policy": ["raster", "zipar"], "window": [2, 4, 7]},
    ...             n_samples=50, out="runs/windows")          # checkpointed, resumable
    >>> res.pareto(x="forward_passes", y="nll_bits")

A *cell* is one combination of settings (policy, window, ..., seed). Each cell generates
``n_samples`` images (label i = ``labels[i]``, by default ``i % num_classes``; sample id i, so
tokens do not depend on the batch size or on where the cell runs) and becomes a record: the
settings, passes and queries per image, proxies, refeeds, adaptive draft counters, seconds, and
one column per metric. With ``out`` every finished cell is written atomically as
``out/<hash>.json`` (the record) and ``out/<hash>.npy`` (its tokens, (n, H, W) int32); a re-run
loads finished cells instead of computing them, so an interrupted sweep resumes where it stopped.
The hash covers the settings, n_samples, the labels and the model spec (for a checkpoint: its
real path and size; for a cell with proxy "calibrated" also the model's row_start_proxy, looked
up in the calling process), not the batch size, the executor or the metrics: a metric missing from a
finished cell is computed from its saved tokens.

Executors: ``"inprocess"``; ``"process"`` (a spawn-started process pool, one engine thread per
worker); ``"dask"`` (``dask.distributed``: a scheduler address, or a loopback LocalCluster
that the sweep starts and stops). The work unit is one cell; cells are written by the caller.

Layout: grid.py (setting keys, expand_grid), spec.py (model specs), cell.py (generate_cell, the
record, metrics resolution), store.py (finished cells on disk), result.py (SweepResult),
executors.py (process pool, Dask), run.py (sweep), files.py (TOML sweep files). The package sits
above the engine, the families and zipar.fmnist, and below the CLI.

The module is callable: ``zipar.sweep(...)`` is ``zipar.sweep.sweep(...)``.
"""

from __future__ import annotations

import sys
import types

from ..fmnist.metrics import eval_class_accuracy, eval_diversity, eval_fid_proxy, nll_bits
from .cell import DEFAULT, _generate_cell, generate_cell  # noqa: F401 (old private name)
from .executors import _process_worker_init, process_worker_init  # noqa: F401 (old name)
from .files import _read_toml, run_sweep_file  # noqa: F401 (old private name)
from .grid import _make_policy  # noqa: F401 (old private name)
from .grid import (POLICY_KEYS, SAMPLING_KEYS, SETTING_KEYS, TIMING_KEYS, expand_grid,
                   make_policy)
from .result import SweepResult, format_table
from .run import sweep

__all__ = ["sweep", "SweepResult", "expand_grid", "run_sweep_file", "format_table", "DEFAULT",
           "generate_cell", "make_policy", "process_worker_init", "nll_bits",
           "eval_class_accuracy", "eval_fid_proxy", "eval_diversity", "POLICY_KEYS",
           "SAMPLING_KEYS", "SETTING_KEYS", "TIMING_KEYS"]


class _CallableModule(types.ModuleType):
    """``zipar.sweep`` is both this package and, called, :func:`sweep`."""

    def __call__(self, *args, **kwargs):
        return sweep(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
