"""Argument checks shared by the Python API: integers that cross into C are range-checked here
(nothing wraps), floats are refused where ints are expected."""

from __future__ import annotations

import numbers

import numpy as np

__all__ = ["int_array", "int_scalar"]

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def int_array(name: str, value, lo: int = INT32_MIN, hi: int = INT32_MAX) -> np.ndarray:
    """``value`` (an int, a sequence or an array of ints) as an int64 array with every element in
    [lo, hi]. Floats, bools, strings and None, and values out of range raise ValueError naming
    what was expected (checked on Python ints or int64, before any narrowing)."""
    try:
        a = np.asarray(value)
    except (ValueError, TypeError, OverflowError) as e:  # ragged nesting and the like
        raise ValueError(f"{name} must be ints: {e}") from None
    if a.size == 0:  # [] is float64 to NumPy; no element, nothing to check
        return a.astype(np.int64)
    if a.dtype == object:  # ints beyond int64, or mixed types
        flat = a.reshape(-1)
        for v in flat:
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral):
                raise ValueError(f"{name} must be ints, got {v!r:.80}")
        bad = [int(v) for v in flat if not lo <= int(v) <= hi]
        if bad:
            raise ValueError(f"{name} must be in [{lo}, {hi}], got {bad[0]}")
        return a.astype(np.int64)
    if a.dtype.kind not in "iu":
        kind = "bools" if a.dtype.kind == "b" else f"{a.dtype} values"
        raise ValueError(f"{name} must be ints, got {kind}")
    if a.size and (int(a.min()) < lo or int(a.max()) > hi):
        v = int(a.min()) if int(a.min()) < lo else int(a.max())
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {v}")
    return a.astype(np.int64)


def int_scalar(name: str, value, lo: int = INT32_MIN, hi: int = INT32_MAX) -> int:
    """One int in [lo, hi] (TypeError for floats, bools and the rest)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r:.80}")
    if not lo <= int(value) <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")
    return int(value)
