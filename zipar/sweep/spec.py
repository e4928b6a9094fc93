"""Model specs of sweeps: how a worker obtains the model (and what the cell hash covers)."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Mapping

from ..families.llamagen import load_llamagen
from ..fmnist.builtin import load_default
from ..model import random_model

__all__ = ["normalize_spec", "spec_label", "get_model"]


def _normalize_spec(spec) -> dict:
    """A JSON-able description of how to obtain the model (also what the cell hash covers).

    "builtin" -> {"builtin": "vq"} (zipar.load_default()); "builtin:pixels" -> {"builtin": True}
    (the pixel model; the spec it had when it was the only built-in model, so the cells
    computed then keep their hashes); a path -> {"checkpoint": realpath, "bytes": size};
    {"checkpoint": path, **load_llamagen kwargs}; {"random": {random_model kwargs}}.
    """
    if isinstance(spec, str) and spec in ("builtin", "builtin:vq"):
        return {"builtin": "vq"}
    if isinstance(spec, str) and spec == "builtin:pixels":
        return {"builtin": True}
    if isinstance(spec, (str, os.PathLike)):
        spec = {"checkpoint": os.fspath(spec)}
    if not isinstance(spec, Mapping):
        raise TypeError("model_spec must be 'builtin', 'builtin:pixels', a checkpoint path, "
                        "{'random': {...}} or {'checkpoint': path, ...}")
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
    if spec.get("builtin") in (True, "pixels"):
        return {"builtin": True}
    if spec.get("builtin") == "vq":
        return {"builtin": "vq"}
    raise ValueError(f"cannot read model_spec {spec!r}")


def _spec_label(spec: dict) -> str:
    if "builtin" in spec:
        return "builtin" if spec["builtin"] == "vq" else "builtin:pixels"
    if "checkpoint" in spec:
        return spec["checkpoint"]
    return "random:" + json.dumps(spec["random"], sort_keys=True, separators=(",", ":"))


_MODEL_CACHE: Dict[str, Any] = {}   # one entry: canonical spec JSON -> Model (per process)


def _get_model(spec: dict):
    """The model of ``spec``, loaded once per process."""
    key = json.dumps(spec, sort_keys=True)
    if key not in _MODEL_CACHE:
        _MODEL_CACHE.clear()
        if "builtin" in spec:
            model = load_default("vq" if spec["builtin"] == "vq" else "pixels")
        elif "checkpoint" in spec:
            model = load_llamagen(spec["checkpoint"], **spec["kwargs"])
        else:
            model = random_model(**spec["random"])
        _MODEL_CACHE[key] = model
    return _MODEL_CACHE[key]


normalize_spec, spec_label, get_model = _normalize_spec, _spec_label, _get_model
