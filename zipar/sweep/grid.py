"""Grid grammar of sweeps: setting keys, canonical cells and their expansion."""

from __future__ import annotations

import itertools
from typing import Any, List, Mapping, Optional, Sequence

import numpy as np

from ..policies import PROXY_NAMES, AdaptiveZipAR, Raster, ZipAR, check_proxy
from ..sampling import Sampling

__all__ = ["POLICY_KEYS", "SAMPLING_KEYS", "SETTING_KEYS", "TIMING_KEYS", "expand_grid",
           "make_policy", "sampling_of"]

#: Grid keys that choose the decoding policy.
POLICY_KEYS = ("policy", "window", "schedule", "proxy", "min_window", "max_window", "threshold")
#: Grid keys passed to Model.generate.
SAMPLING_KEYS = ("cfg_scale", "cfg_interval", "temperature", "top_k", "top_p", "seed")
SETTING_KEYS = POLICY_KEYS + SAMPLING_KEYS
#: Record columns that depend on the machine and the batching, not on the settings.
TIMING_KEYS = ("seconds", "seconds_per_image", "batch_size")

# Values of settings not in the grid: Model.generate's defaults (the sampling ones: Sampling's).
_DEFAULTS = dict(policy=None, window=None, schedule="eager", proxy="above", min_window=None,
                 max_window=None, threshold=0.0, **Sampling().to_dict())
# Policy settings each policy reads; the others are set to None in its cells.
_RELEVANT = {"raster": (), "zipar": ("window", "schedule", "proxy"),
             "adaptive": ("schedule", "proxy", "min_window", "max_window", "threshold")}
_INT_KEYS = ("window", "min_window", "max_window", "cfg_interval", "top_k", "seed")
_FLOAT_KEYS = ("threshold", "cfg_scale", "temperature", "top_p")
_CHOICES = {"policy": ("raster", "zipar", "adaptive"), "schedule": ("eager", "paper")}


def _coerce(key: str, value):
    """A grid value in canonical type (so 4 and 4.0 give one cell and one hash)."""
    if value is None:
        if key in ("window", "min_window", "max_window", "policy"):
            return None
        raise ValueError(f"grid[{key!r}] may not contain None")
    if key == "proxy":   # a name (any case) or an int token id >= 0
        if isinstance(value, str) and value.lower() in PROXY_NAMES:
            return value.lower()
        try:
            return check_proxy(value)
        except (TypeError, ValueError) as e:
            raise type(e)(f"grid['proxy']: {e}") from None
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


def make_policy(s: Mapping[str, Any]):
    """The policy object of a cell's settings."""
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
    make_policy(s)                              # the policy's own checks (window >= 1, ...)
    sampling_of(s)                              # and the sampling checks
    return s


def sampling_of(s: Mapping[str, Any]) -> Sampling:
    """The :class:`zipar.Sampling` of a cell's settings."""
    return Sampling(**{k: s[k] for k in SAMPLING_KEYS})


_make_policy = make_policy  # the old private name


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
    ``proxy`` values: "above", "left", "calibrated" (the model's row_start_proxy, resolved by
    the worker; records carry it as ``proxy_token``) or an int token id.
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
