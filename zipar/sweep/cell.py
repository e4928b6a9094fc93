"""One sweep cell: generation (:func:`generate_cell`), its record, its metrics and its hash."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Callable, Dict, List, Mapping

import numpy as np

from ..fmnist.metrics import available_metrics, nll_bits
from ..runtime import set_num_threads
from .grid import make_policy, sampling_of
from .spec import get_model, spec_label

__all__ = ["generate_cell", "DEFAULT"]


class _Default:
    def __repr__(self):
        return "DEFAULT"


#: ``metrics=DEFAULT``: nll_bits; for the built-in model also class_accuracy, fid_proxy and
#: diversity (zipar.eval) when its classifier and the Fashion-MNIST test set are present.
DEFAULT = _Default()


def _resolve_metrics(metrics, spec: dict) -> Dict[str, Callable]:
    if metrics is DEFAULT:
        chosen = {"nll_bits": nll_bits}
        if "builtin" in spec:
            chosen.update(available_metrics())
        return chosen
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping) or not all(callable(f) for f in metrics.values()):
        raise TypeError("metrics must be a dict name -> callable(model, tokens, labels)")
    return {str(k): f for k, f in metrics.items()}


def _plain(v):
    """A JSON-able scalar (NaN and inf become None)."""
    if isinstance(v, (np.integer, int)) and not isinstance(v, bool):
        return int(v)
    if isinstance(v, (np.floating, float)):
        return float(v) if math.isfinite(float(v)) else None
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if v is None or isinstance(v, str):
        return v
    arr = np.asarray(v)
    if arr.ndim == 0:
        return _plain(arr.item())
    raise TypeError(f"a metric returned {type(v).__name__}; return a number or a dict of numbers")


def _cell_labels(model, n: int, labels) -> np.ndarray:
    c = model.config
    if c.caption_dim:
        raise ValueError("sweeps run class-conditional models; this one is text-conditioned")
    if labels is None:
        return np.arange(n) % c.num_classes
    return np.asarray(labels, dtype=np.int64)


def generate_cell(model, settings: Mapping[str, Any], labels, batch_size: int, first: int = 0):
    """Generate the images of one sweep cell, ``batch_size`` at a time.

    ``settings``: a cell as :func:`expand_grid` returns it (policy and sampling settings);
    ``labels``: (n,) class labels; image i uses sample id ``first + i``, so a cell generated in
    pieces (first=0, 50, ...) gives the same tokens as in one go, for any batch size.
    Returns ``(tokens (n, H, W) int32, passes (n,), queries (n,), totals, seconds)``: per image
    the passes until its last query and its queries (the session statistics
    ``image_passes``/``image_queries``), totals of the counters proxies, refeeds,
    drafts_proposed/accepted/rejected and resamples, and the generation wall time.
    """
    c = model.config
    labels = np.asarray(labels)
    n = labels.shape[0]
    policy = make_policy(settings)
    sampling = sampling_of(settings)
    tokens = np.empty((n, c.H, c.W), np.int32)
    passes = np.zeros(n, np.int64)
    queries = np.zeros(n, np.int64)
    totals = dict.fromkeys(("proxies", "refeeds", "drafts_proposed", "drafts_accepted",
                            "drafts_rejected", "resamples"), 0)
    seconds = 0.0
    for b0 in range(0, n, batch_size):
        b1 = min(n, b0 + batch_size)
        res = model.generate(labels[b0:b1], policy=policy, sampling=sampling,
                             sample_ids=np.arange(first + b0, first + b1), decode_images=False)
        tokens[b0:b1] = res.tokens
        seconds += res.stats["seconds"]
        for k in totals:
            totals[k] += int(res.stats[k])
        # per image: the batch's pass count is its slowest image's (adaptive starts vary)
        passes[b0:b1] = res.stats["image_passes"]
        queries[b0:b1] = res.stats["image_queries"]
    return tokens, passes, queries, totals, seconds


def cell_proxy_token(model, settings: Mapping[str, Any]):
    """The token a cell's constant proxy feeds: the id itself, the model's row_start_proxy for
    "calibrated" (ValueError when it has none), None for "above", "left" and raster."""
    proxy = settings.get("proxy")
    if proxy == "calibrated":
        if model.row_start_proxy is None:
            raise ValueError("grid proxy 'calibrated' uses the model's row_start_proxy, and "
                             "this model has none (see zipar.calibrate_proxy)")
        return int(model.row_start_proxy)
    return proxy if isinstance(proxy, int) else None


def _make_record(spec, settings, n, batch_size, c, passes, queries, totals, seconds,
                 proxy_token=None) -> dict:
    raster = c.H * c.W
    fp = float(passes.mean())
    verified = totals["drafts_accepted"] + totals["drafts_rejected"]
    rec = {"model": spec_label(spec)}
    rec.update(settings)
    rec.update(
        proxy_token=proxy_token,                            # the constant proxy fed, if any
        n_samples=n, batch_size=batch_size,
        forward_passes=fp,                                  # mean per image
        forward_passes_max=int(passes.max()),
        raster_passes=raster,
        step_reduction=1.0 - fp / raster,
        mean_queries_per_pass=float(queries.sum() / passes.sum()),   # per image and pass
        **{k: v / n for k, v in totals.items()},            # per image
        draft_acceptance=totals["drafts_accepted"] / verified if verified else None,
        seconds=seconds, seconds_per_image=seconds / n)
    return rec


def _run_cell(task: dict) -> dict:
    """The work unit: generate one cell (unless its tokens are given) and compute the metrics
    it still lacks. Runs in the caller, a pool worker or a Dask worker; returns
    {"record", "tokens", "metrics_done"}."""
    if task.get("threads"):
        set_num_threads(task["threads"])
    model = get_model(task["spec"])
    n = task["n_samples"]
    labels = _cell_labels(model, n, task["labels"])
    tokens = task.get("tokens")
    if tokens is None:
        tokens, passes, queries, totals, seconds = generate_cell(
            model, task["settings"], labels, task["batch_size"])
        record = _make_record(task["spec"], task["settings"], n, task["batch_size"],
                              model.config, passes, queries, totals, seconds,
                              cell_proxy_token(model, task["settings"]))
        done: List[str] = []
    else:
        record, done = dict(task["record"]), list(task["metrics_done"])
    for name, fn in task["metrics"].items():
        if name in done:
            continue
        value = fn(model, tokens, labels)
        if isinstance(value, Mapping):
            record.update({name if k == "value" else f"{name}_{k}": _plain(v)
                           for k, v in value.items()})
        else:
            record[name] = _plain(value)
        done.append(name)
    return {"record": json.loads(json.dumps(record)), "tokens": np.asarray(tokens, np.int32),
            "metrics_done": done}


_FORMAT = 1  # bump when the meaning of a cell file changes


def _cell_key(spec: dict, settings: dict, n_samples: int, labels, proxy_token=None) -> dict:
    """What a cell's hash covers; ``proxy_token``: the model's row_start_proxy for a cell with
    proxy "calibrated" (a recalibrated model gives new cells), left out otherwise."""
    key = {"format": _FORMAT, "model": spec, "settings": settings, "n_samples": n_samples,
           "labels": labels}
    if settings.get("proxy") == "calibrated":
        key["proxy_token"] = proxy_token
    return key


def _cell_hash(key: dict) -> str:
    blob = json.dumps(key, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


_generate_cell = generate_cell  # the old private name (kept for one release)
