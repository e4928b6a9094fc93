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
real path and size), not the batch size, the executor or the metrics: a metric missing from a
finished cell is computed from its saved tokens.

Executors: ``"inprocess"``; ``"process"`` (a spawn-started process pool, one engine thread per
worker); ``"dask"`` (``dask.distributed``: a scheduler address, or a loopback LocalCluster
that the sweep starts and stops). The work unit is one cell; cells are written by the caller.

Layering: this module sits above the Python API (zipar.model, zipar.policies) and below the CLI.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import math
import os
import pickle
import signal
import tempfile
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

import numpy as np

__all__ = ["sweep", "SweepResult", "expand_grid", "run_sweep_file", "format_table", "DEFAULT",
           "nll_bits", "eval_class_accuracy", "eval_fid_proxy", "eval_diversity",
           "POLICY_KEYS", "SAMPLING_KEYS", "SETTING_KEYS", "TIMING_KEYS"]

# ============================================================================ settings

#: Grid keys that choose the decoding policy.
POLICY_KEYS = ("policy", "window", "schedule", "proxy", "min_window", "max_window", "threshold")
#: Grid keys passed to Model.generate.
SAMPLING_KEYS = ("cfg_scale", "cfg_interval", "temperature", "top_k", "top_p", "seed")
SETTING_KEYS = POLICY_KEYS + SAMPLING_KEYS
#: Record columns that depend on the machine and the batching, not on the settings.
TIMING_KEYS = ("seconds", "seconds_per_image", "batch_size")

# Values of settings not in the grid: Model.generate's defaults.
_DEFAULTS = dict(policy=None, window=None, schedule="eager", proxy="above", min_window=None,
                 max_window=None, threshold=0.0, cfg_scale=4.0, cfg_interval=-1, temperature=1.0,
                 top_k=0, top_p=1.0, seed=0)
# Policy settings each policy reads; the others are set to None in its cells.
_RELEVANT = {"raster": (), "zipar": ("window", "schedule", "proxy"),
             "adaptive": ("schedule", "proxy", "min_window", "max_window", "threshold")}
_INT_KEYS = ("window", "min_window", "max_window", "cfg_interval", "top_k", "seed")
_FLOAT_KEYS = ("threshold", "cfg_scale", "temperature", "top_p")
_CHOICES = {"policy": ("raster", "zipar", "adaptive"), "schedule": ("eager", "paper"),
            "proxy": ("above", "left")}
_FORMAT = 1  # bump when the meaning of a cell file changes


def _coerce(key: str, value):
    """A grid value in canonical type (so 4 and 4.0 give one cell and one hash)."""
    if value is None:
        if key in ("window", "min_window", "max_window", "policy"):
            return None
        raise ValueError(f"grid[{key!r}] may not contain None")
    if key in _CHOICES:
        if not isinstance(value, str) or value.lower() not in _CHOICES[key]:
            raise ValueError(f"grid[{key!r}]: {value!r} is not one of {', '.join(_CHOICES[key])}")
        return value.lower()
    if key in _INT_KEYS:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"grid[{key!r}] values must be ints, got {value!r}")
        return int(value)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer,
                                                                     np.floating)):
        raise TypeError(f"grid[{key!r}] values must be numbers, got {value!r}")
    return float(value)


def _make_policy(s: Mapping[str, Any]):
    from .policies import AdaptiveZipAR, Raster, ZipAR

    if s["policy"] == "raster":
        return Raster()
    if s["policy"] == "zipar":
        return ZipAR(s["window"], schedule=s["schedule"], proxy=s["proxy"])
    return AdaptiveZipAR(s["min_window"], max_window=s["max_window"], threshold=s["threshold"],
                         schedule=s["schedule"], proxy=s["proxy"])


def _normalize_cell(raw: Mapping[str, Any]) -> Optional[dict]:
    """Canonical settings of one combination, or None when it makes no sense."""
    s = {k: _coerce(k, raw.get(k, _DEFAULTS[k])) for k in SETTING_KEYS}
    pol = s["policy"]
    if pol == "adaptive" and s["min_window"] is None:
        s["min_window"] = s["window"]           # as the CLI: --window is the minimum window
    if pol == "zipar" and s["window"] is None:
        raise ValueError("policy 'zipar' needs a 'window' list in the grid")
    if pol == "adaptive" and s["min_window"] is None:
        raise ValueError("policy 'adaptive' needs a 'min_window' (or 'window') list in the grid")
    for k in POLICY_KEYS[1:]:
        if k not in _RELEVANT[pol]:
            s[k] = None
    if pol == "adaptive" and s["max_window"] is not None and s["max_window"] < s["min_window"]:
        return None
    if s["temperature"] == 0.0:                 # greedy: top-k / top-p change nothing
        s["top_k"], s["top_p"] = 0, 1.0
    from .model import _sampling_tuple

    _make_policy(s)                             # the policy's own checks (window >= 1, ...)
    _sampling_tuple(s["cfg_scale"], s["cfg_interval"], s["temperature"], s["top_k"], s["top_p"],
                    s["seed"])
    return s


def expand_grid(grid: Mapping[str, Any], seeds: Sequence[int] = (0,)) -> List[dict]:
    """The cells of a grid: its cartesian product in canonical form, without duplicates.

    ``grid`` maps keys of :data:`SETTING_KEYS` to lists (a scalar is a one-value list). The
    product runs in the grid's key order, the first key varying slowest; ``seeds`` is the seed
    axis when the grid has no ``seed`` key. Without a ``policy`` key the policy is ``"zipar"``
    when the grid has ``window``, ``"adaptive"`` when it has ``min_window``, else ``"raster"``.
    Settings a policy does not read become None (raster has no window; threshold, min_window
    and max_window are adaptive's; adaptive takes ``window`` as ``min_window`` when it has
    none); ``temperature=0`` resets top_k/top_p. Combinations with ``max_window < min_window``
    are dropped; what remains is de-duplicated keeping the first occurrence. Every cell is a
    dict over :data:`SETTING_KEYS`. Unknown keys, bad values and empty lists raise.
    """
    if not isinstance(grid, Mapping):
        raise TypeError("grid must be a dict of setting name -> list of values")
    unknown = sorted(set(grid) - set(SETTING_KEYS))
    if unknown:
        raise ValueError(f"unknown grid key(s) {', '.join(map(repr, unknown))}; known: "
                         f"{', '.join(SETTING_KEYS)}")
    axes = []
    for key, values in grid.items():
        if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
            values = [values]
        values = list(values)
        if not values:
            raise ValueError(f"grid[{key!r}] is empty")
        axes.append((key, values))
    if "seed" not in grid:
        seeds = [seeds] if isinstance(seeds, (int, np.integer)) else list(seeds)
        if not seeds:
            raise ValueError("seeds is empty")
        axes.append(("seed", seeds))
    elif tuple(seeds) != (0,):
        raise ValueError("give the seeds either as seeds= or as grid['seed'], not both")
    if "policy" not in grid:
        default = "zipar" if "window" in grid else "adaptive" if "min_window" in grid else "raster"
        axes.insert(0, ("policy", [default]))
    keys = [k for k, _ in axes]
    cells, seen = [], set()
    for combo in itertools.product(*(v for _, v in axes)):
        cell = _normalize_cell(dict(zip(keys, combo)))
        if cell is None:
            continue
        ident = tuple(cell[k] for k in SETTING_KEYS)
        if ident not in seen:
            seen.add(ident)
            cells.append(cell)
    if not cells:
        raise ValueError("the grid has no valid combination (max_window < min_window everywhere?)")
    return cells


# ============================================================================ models

def _normalize_spec(spec) -> dict:
    """A JSON-able description of how to obtain the model (also what the cell hash covers).

    "builtin" -> {"builtin": True}; a path -> {"checkpoint": realpath, "bytes": size};
    {"checkpoint": path, **load_llamagen kwargs}; {"random": {random_model kwargs}}.
    """
    if isinstance(spec, str) and spec == "builtin":
        return {"builtin": True}
    if isinstance(spec, (str, os.PathLike)):
        spec = {"checkpoint": os.fspath(spec)}
    if not isinstance(spec, Mapping):
        raise TypeError("model_spec must be 'builtin', a checkpoint path, {'random': {...}} or "
                        "{'checkpoint': path, ...}")
    spec = dict(spec)
    if "random" in spec:
        if len(spec) != 1 or not isinstance(spec["random"], Mapping):
            raise ValueError("a random model spec is {'random': {kwargs of zipar.random_model}}")
        kwargs = json.loads(json.dumps(dict(spec["random"])))   # JSON-able, tuples -> lists
        return {"random": kwargs}
    if "checkpoint" in spec:
        path = os.path.realpath(os.fspath(spec.pop("checkpoint")))
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint {path!r} not found")
        return {"checkpoint": path, "bytes": os.path.getsize(path),
                "kwargs": json.loads(json.dumps(spec))}
    if spec.get("builtin"):
        return {"builtin": True}
    raise ValueError(f"cannot read model_spec {spec!r}")


def _spec_label(spec: dict) -> str:
    if "builtin" in spec:
        return "builtin"
    if "checkpoint" in spec:
        return spec["checkpoint"]
    return "random:" + json.dumps(spec["random"], sort_keys=True, separators=(",", ":"))


_MODEL_CACHE: Dict[str, Any] = {}   # one entry: canonical spec JSON -> Model (per process)


def _get_model(spec: dict):
    """The model of ``spec``, loaded once per process."""
    key = json.dumps(spec, sort_keys=True)
    if key not in _MODEL_CACHE:
        import zipar

        _MODEL_CACHE.clear()
        if "builtin" in spec:
            model = zipar.load_default()
        elif "checkpoint" in spec:
            model = zipar.load_llamagen(spec["checkpoint"], **spec["kwargs"])
        else:
            model = zipar.random_model(**spec["random"])
        _MODEL_CACHE[key] = model
    return _MODEL_CACHE[key]


# ============================================================================ metrics

def nll_bits(model, tokens, labels) -> float:
    """Mean negative log-likelihood of the samples under the model (no guidance), bits per
    token: how typical the generated grids are for the model itself."""
    c = model.config
    lp = model.log_prob(labels, tokens)
    return float(-lp.mean() / (c.H * c.W) / math.log(2.0))


def _images(model, tokens) -> np.ndarray:
    """uint8 pixels of token grids: the model's decoder or tokenizer, else the built-in model's
    grey tokenizer."""
    images = model.decode(tokens)
    if images is None:
        from .builtin import default_tokenizer

        images = default_tokenizer().decode(tokens)
    return images


_REFERENCE_FEATURES: Dict[str, np.ndarray] = {}   # per process: classifier features of the test set


def eval_class_accuracy(model, tokens, labels) -> float:
    """zipar.eval.class_accuracy: how often the Fashion-MNIST classifier sees the asked class."""
    from . import eval as zeval

    return zeval.class_accuracy(_images(model, tokens), labels)


def eval_fid_proxy(model, tokens, labels) -> dict:
    """zipar.eval.fid_proxy against the Fashion-MNIST test set, with its 95% bootstrap interval:
    columns fid_proxy, fid_proxy_low, fid_proxy_high (None below 2 samples)."""
    from . import eval as zeval

    if len(tokens) < 2:
        return {"value": None, "low": None, "high": None}
    if "test" not in _REFERENCE_FEATURES:
        clf = zeval.Classifier.load_default()      # the weights fid_proxy uses by default
        _REFERENCE_FEATURES["test"] = clf.features(zeval.test_set()[0])
    r = zeval.fid_proxy(_images(model, tokens), reference_features=_REFERENCE_FEATURES["test"])
    return {"value": r["value"], "low": r["low"], "high": r["high"]}


def eval_diversity(model, tokens, labels) -> Optional[float]:
    """zipar.eval.diversity: within-class feature spread relative to the test set's."""
    from . import eval as zeval

    return zeval.diversity(_images(model, tokens), labels)["value"]


def _eval_metrics() -> Dict[str, Callable]:
    """The zipar.eval metrics whose data are present (classifier weights, the dataset)."""
    try:
        from . import eval as zeval
    except ImportError:
        return {}
    if not os.path.exists(os.path.join(os.path.dirname(os.path.abspath(zeval.__file__)), "data",
                                       "fmnist_classifier.npz")):
        return {}
    chosen = {"class_accuracy": eval_class_accuracy}
    dataset = os.environ.get("ZIPAR_FMNIST_DIR", getattr(zeval, "DATASET_DIR", ""))
    if os.path.exists(os.path.join(dataset, "t10k-images-idx3-ubyte.gz")):
        chosen.update(fid_proxy=eval_fid_proxy, diversity=eval_diversity)
    return chosen


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
            chosen.update(_eval_metrics())
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


# ============================================================================ one cell

def _cell_labels(model, n: int, labels) -> np.ndarray:
    c = model.config
    if c.caption_dim:
        raise ValueError("sweeps run class-conditional models; this one is text-conditioned")
    if labels is None:
        return np.arange(n) % c.num_classes
    return np.asarray(labels, dtype=np.int64)


def _generate_cell(model, settings: dict, labels: np.ndarray, batch_size: int, first: int = 0):
    """Tokens (n, H, W) and per-image counters of one cell, generated in batches; image i is
    sample id ``first + i`` (so a cell can be generated in pieces)."""
    c = model.config
    n = labels.shape[0]
    policy = _make_policy(settings)
    tokens = np.empty((n, c.H, c.W), np.int32)
    passes = np.zeros(n, np.int64)
    queries = np.zeros(n, np.int64)
    totals = dict.fromkeys(("proxies", "refeeds", "drafts_proposed", "drafts_accepted",
                            "drafts_rejected", "resamples"), 0)
    seconds = 0.0
    for b0 in range(0, n, batch_size):
        b1 = min(n, b0 + batch_size)
        res = model.generate(labels[b0:b1], policy=policy, cfg_scale=settings["cfg_scale"],
                             cfg_interval=settings["cfg_interval"],
                             temperature=settings["temperature"], top_k=settings["top_k"],
                             top_p=settings["top_p"], seed=settings["seed"],
                             sample_ids=np.arange(first + b0, first + b1), trace=True,
                             decode_images=False)
        tokens[b0:b1] = res.tokens
        seconds += res.stats["seconds"]
        for k in totals:
            totals[k] += int(res.stats[k])
        # per image: the batch's pass count is its slowest image's (adaptive starts vary)
        tr = res.trace
        image = tr[:, 1].astype(np.int64)
        last = np.zeros(b1 - b0, np.int64)
        np.maximum.at(last, image, tr[:, 0].astype(np.int64) + 1)
        passes[b0:b1] = last
        queries[b0:b1] = np.bincount(image, minlength=b1 - b0)
    return tokens, passes, queries, totals, seconds


def _make_record(spec, settings, n, batch_size, c, passes, queries, totals, seconds) -> dict:
    raster = c.H * c.W
    fp = float(passes.mean())
    verified = totals["drafts_accepted"] + totals["drafts_rejected"]
    rec = {"model": _spec_label(spec)}
    rec.update(settings)
    rec.update(
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
        from . import set_num_threads

        set_num_threads(task["threads"])
    model = _get_model(task["spec"])
    n = task["n_samples"]
    labels = _cell_labels(model, n, task["labels"])
    tokens = task.get("tokens")
    if tokens is None:
        tokens, passes, queries, totals, seconds = _generate_cell(
            model, task["settings"], labels, task["batch_size"])
        record = _make_record(task["spec"], task["settings"], n, task["batch_size"],
                              model.config, passes, queries, totals, seconds)
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


def _cell_key(spec: dict, settings: dict, n_samples: int, labels) -> dict:
    return {"format": _FORMAT, "model": spec, "settings": settings, "n_samples": n_samples,
            "labels": labels}


def _cell_hash(key: dict) -> str:
    blob = json.dumps(key, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


# ============================================================================ checkpoint store

class _Store:
    """Finished cells on disk: <hash>.json {"key", "record", "metrics_done"} and <hash>.npy."""

    def __init__(self, out):
        self.out = os.fspath(out)
        os.makedirs(self.out, exist_ok=True)

    def paths(self, h: str):
        return os.path.join(self.out, h + ".json"), os.path.join(self.out, h + ".npy")

    def load(self, h: str, key: dict) -> Optional[dict]:
        jpath, npath = self.paths(h)
        try:
            with open(jpath) as f:
                data = json.load(f)
        except (OSError, ValueError):
            return None
        if data.get("key") != json.loads(json.dumps(key)) or not os.path.exists(npath):
            return None
        return data

    def tokens(self, h: str) -> np.ndarray:
        return np.load(self.paths(h)[1], allow_pickle=False)

    def _atomic(self, path: str, write):
        fd, tmp = tempfile.mkstemp(dir=self.out, prefix="." + os.path.basename(path) + ".",
                                   suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def save(self, h: str, key: dict, result: dict):
        jpath, npath = self.paths(h)
        # tokens first: a cell counts as finished once its JSON exists
        self._atomic(npath, lambda f: np.save(f, result["tokens"], allow_pickle=False))
        doc = {"key": key, "record": result["record"], "metrics_done": result["metrics_done"]}
        self._atomic(jpath, lambda f: f.write(json.dumps(doc, indent=1).encode()))


# ============================================================================ the result

_BASE_COLUMNS = ("model",) + SETTING_KEYS + (
    "n_samples", "batch_size", "forward_passes", "forward_passes_max", "raster_passes",
    "step_reduction", "mean_queries_per_pass", "proxies", "refeeds", "drafts_proposed",
    "drafts_accepted", "drafts_rejected", "resamples", "draft_acceptance", "seconds",
    "seconds_per_image")


class SweepResult:
    """Records of a sweep, in grid order (see :func:`sweep`).

    records: list of dicts (JSON values). cells: the settings of each record. out: the
    checkpoint directory or None. :meth:`tokens` gives a cell's generated grids.
    """

    def __init__(self, records, cells, out=None, hashes=None, tokens=None):
        self.records: List[dict] = list(records)
        self.cells: List[dict] = list(cells)
        self.out = out
        self._hashes = hashes
        self._tokens = tokens

    def __len__(self):
        return len(self.records)

    def __iter__(self):
        return iter(self.records)

    def __getitem__(self, i):
        return self.records[i]

    def __repr__(self):
        return f"<SweepResult {len(self.records)} cells, metrics {self.metric_columns}>"

    @property
    def columns(self) -> List[str]:
        """Every record key, base columns first, then metric columns in order of appearance."""
        cols = [k for k in _BASE_COLUMNS if any(k in r for r in self.records)]
        for r in self.records:
            cols += [k for k in r if k not in cols]
        return cols

    @property
    def metric_columns(self) -> List[str]:
        return [k for k in self.columns if k not in _BASE_COLUMNS]

    def tokens(self, i: int) -> np.ndarray:
        """Generated grids (n_samples, H, W) int32 of record i."""
        if self._tokens is not None and self._tokens[i] is not None:
            return self._tokens[i]
        if self.out is None:
            raise ValueError("no tokens kept")
        return _Store(self.out).tokens(self._hashes[i])

    def to_dataframe(self):
        """The records as a pandas DataFrame (pandas is optional)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("SweepResult.to_dataframe needs pandas (pip install pandas); "
                              ".records, .to_csv() and .to_json() work without it") from None
        return pd.DataFrame(self.records, columns=self.columns)

    def to_csv(self, path) -> None:
        """Write the records as CSV (empty field = None)."""
        cols = self.columns
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(cols)
            for r in self.records:
                w.writerow(["" if r.get(k) is None else r.get(k) for k in cols])

    def to_json(self, path) -> None:
        with open(path, "w") as f:
            json.dump(self.records, f, indent=1)

    def pareto(self, x: str = "forward_passes", y: Optional[str] = None, *,
               maximize: Sequence[str] = ()) -> List[dict]:
        """Records no other record beats on both x and y (lower is better unless the column is
        named in ``maximize``), sorted by x. ``y`` defaults to ``nll_bits`` when present, else
        the first metric column. Records where x or y is None are left out."""
        if y is None:
            metric = self.metric_columns
            if not metric:
                raise ValueError("no metric column: pass y=")
            y = "nll_bits" if "nll_bits" in metric else metric[0]
        for col in (x, y):
            if not any(col in r for r in self.records):
                raise KeyError(f"no column {col!r}; columns: {', '.join(self.columns)}")
        sx = -1.0 if x in maximize else 1.0
        sy = -1.0 if y in maximize else 1.0
        pts = [(sx * r[x], sy * r[y], i) for i, r in enumerate(self.records)
               if r.get(x) is not None and r.get(y) is not None]
        front = []
        for a in pts:
            dominated = any(b[0] <= a[0] and b[1] <= a[1] and (b[0] < a[0] or b[1] < a[1])
                            for b in pts)
            if not dominated:
                front.append(a)
        front.sort(key=lambda p: (p[0], p[1], p[2]))
        return [self.records[i] for _, _, i in front]


# ============================================================================ executors

def _progress(progress: bool, total: int, initial: int):
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, initial=initial, desc="sweep", unit="cell")


def _exit_with_parent(parent: int):
    """Daemon loop of a pool worker: exit when the sweep's process is gone (killed with
    SIGKILL, say), rather than wait forever on the task queue its siblings keep open."""
    import time

    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


def _process_worker_init(threads: int, parent: int):
    # Ctrl-C goes to the parent, which terminates the workers; a worker never sees it
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    import threading

    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()
    from . import set_num_threads

    set_num_threads(threads)


def _run_process(tasks, finish, workers):
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    try:
        pickle.dumps([t["metrics"] for _, t in tasks])
    except Exception as e:
        raise TypeError("executor='process' sends the metric functions to other processes: "
                        f"use module-level functions, not lambdas or closures ({e})") from None
    pool = ProcessPoolExecutor(max_workers=min(workers, len(tasks)),
                               mp_context=multiprocessing.get_context("spawn"),
                               initializer=_process_worker_init, initargs=(1, os.getpid()))
    futures = {pool.submit(_run_cell, task): i for i, task in tasks}
    try:
        pending = set(futures)
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in sorted(done, key=futures.get):
                finish(futures[fut], fut.result())
    except BaseException:
        for fut in futures:
            fut.cancel()
        # workers run C code and ignore SIGINT: stop them rather than wait for their cells
        procs = list((getattr(pool, "_processes", None) or {}).values())
        for p in procs:
            if p.is_alive():
                p.terminate()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def _run_dask(tasks, finish, workers, scheduler):
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise ImportError('executor="dask" needs dask.distributed: pip install '
                          '"dask[distributed]" (or pip install "zipar[dask]")') from None
    cluster = None
    if scheduler:
        client = Client(scheduler)
        threads = None          # a shared cluster's workers keep their own thread settings
    else:
        cluster = LocalCluster(n_workers=min(workers, len(tasks)), threads_per_worker=1,
                               processes=True, host="127.0.0.1", dashboard_address=None)
        client = Client(cluster)
        threads = 1
    try:
        futures = {}
        for i, task in tasks:
            futures[client.submit(_run_cell, dict(task, threads=threads), pure=False)] = i
        try:
            for fut in as_completed(list(futures)):
                finish(futures[fut], fut.result())
        except BaseException:
            client.cancel(list(futures))
            raise
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


# ============================================================================ the sweep

def sweep(model_spec, grid: Mapping[str, Any], *, n_samples: int, batch_size: int = 16,
          seeds: Sequence[int] = (0,), labels=None, executor: str = "inprocess",
          workers: Optional[int] = None, scheduler: Optional[str] = None, out=None,
          progress: bool = True, metrics=DEFAULT,
          callback: Optional[Callable[[int, dict], None]] = None) -> SweepResult:
    """Run every cell of ``grid`` and return a :class:`SweepResult` (records in grid order).

    model_spec: ``"builtin"`` (zipar.load_default), a checkpoint path (.npz, .safetensors, .pt:
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
    read them), n_samples, batch_size, forward_passes (mean per image), forward_passes_max,
    raster_passes, step_reduction, mean_queries_per_pass (per image), proxies, refeeds,
    drafts_proposed/accepted/rejected, resamples (per image), draft_acceptance, seconds
    (generation wall time of the cell), seconds_per_image, then the metric columns.
    """
    spec = _normalize_spec(model_spec)
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
    keys = [_cell_key(spec, cell, n_samples, labels) for cell in cells]
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


# ============================================================================ sweep files

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


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def format_table(records: Sequence[dict], columns: Optional[Sequence[str]] = None) -> str:
    """A plain-text table of records: by default the settings that vary across them, then
    passes, step reduction, seconds per image and the metric columns."""
    if not records:
        return "(no records)"
    if columns is None:
        varying = [k for k in ("model",) + SETTING_KEYS
                   if len({json.dumps(r.get(k)) for r in records}) > 1]
        stats = ["forward_passes", "step_reduction", "mean_queries_per_pass", "draft_acceptance",
                 "seconds_per_image"]
        stats = [k for k in stats if any(r.get(k) is not None for r in records)]
        metric = []
        for r in records:
            metric += [k for k in r if k not in _BASE_COLUMNS and k not in metric]
        columns = (varying or ["policy"]) + stats + metric
    rows = [[_fmt(r.get(k)) for k in columns] for r in records]
    widths = [max(len(k), *(len(row[j]) for row in rows)) for j, k in enumerate(columns)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in rows])


def run_sweep_file(path, out=None, executor=None, workers=None, scheduler=None,
                   progress=True) -> SweepResult:
    """Run the sweep a TOML file describes, print its records and write out/records.csv and
    out/records.json (when there is an out directory).

    [model]: ``spec = "builtin"`` (default) or a checkpoint path (relative paths are relative
    to the TOML file), or ``checkpoint = path`` with load_llamagen options beside it, or a
    ``random`` table of zipar.random_model arguments. [sweep]: n_samples (required),
    batch_size, seeds, labels, executor, workers, scheduler, out (relative to the TOML file).
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
        if spec != "builtin":
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
