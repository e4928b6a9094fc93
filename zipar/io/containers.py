"""Container unwrapping: find the state dict inside a loaded checkpoint and normalise its keys."""

from __future__ import annotations

import numpy as np

from .errors import CheckpointError

__all__ = ["unwrap_state_dict", "LazyTensor"]

_WRAPPER_KEYS = ("model", "module", "state_dict")
_KEY_PREFIXES = ("module.", "_orig_mod.")
_DROPPED_KEYS = ("freqs_cis",)


class LazyTensor:
    """Base of tensors described by a container but not read yet (torch_pickle's references)."""

    __slots__ = ()


def _is_tensor(v) -> bool:
    return isinstance(v, (np.ndarray, LazyTensor))


def unwrap_state_dict(obj, *, path: str = "checkpoint") -> dict:
    """Find the state dict in a loaded checkpoint and normalise its keys.

    Descends into "model", "module" or "state_dict" (first found, repeatedly) while that entry
    is a dict; strips the prefixes "module." and "_orig_mod." (repeatedly, in any order); drops
    "freqs_cis" (recomputed by the model) and every non-tensor entry. Raises
    :class:`CheckpointError` when nothing tensor-like is left or two keys collide.
    """
    for _ in range(8):
        if not isinstance(obj, dict):
            raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    out = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not _is_tensor(value):
            continue
        name = key
        while name.startswith(_KEY_PREFIXES):
            name = name.split(".", 1)[1]
        if name in _DROPPED_KEYS:
            continue
        if name in out:
            raise CheckpointError(f"{path}: keys collide after stripping prefixes: {key!r} -> "
                                  f"{name!r}")
        out[name] = value
    if not out:
        keys = [str(k) for k in list(obj)[:10]]
        raise CheckpointError(f"{path}: no tensors found in the state dict (keys: {keys})")
    return out
