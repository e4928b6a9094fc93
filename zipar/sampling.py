"""The sampling settings shared by Python and C: :class:`Sampling` mirrors ``zp_sampling``.

This is the one place for the defaults (``cfg_scale=4.0``, ...), their checks and the guidance
rule: a query is guided (classifier-free guidance combines the conditional and unconditional
logits) exactly when ``cfg_scale != 1``, compared in float32 as the core does.
``tests/test_contract.py`` checks the defaults against ``zp_sampling_default()``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict

import numpy as np

__all__ = ["Sampling", "is_guided", "check_sample_ids"]


def is_guided(cfg_scale: float) -> bool:
    """The guidance rule of the core: ``cfg_scale != 1`` in float32 (zp_sampling.cfg_scale)."""
    return bool(np.float32(cfg_scale) != np.float32(1.0))


def _number(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {v!r}")
    if not math.isfinite(float(v)):
        raise ValueError(f"{name} must be finite, got {v!r}")
    return float(v)


def _integer(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {v!r}")
    return int(v)


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How tokens are drawn (``zp_sampling``); values are checked and normalised on creation.

    cfg_scale: guidance scale, 1 turns guidance off (other values, also below 1, use it).
    cfg_interval: -1 guides every token; n >= 0 stops guidance after n tokens (as LlamaGen).
    temperature: 0 is greedy (argmax, lowest index on ties). top_k: 0 is off. top_p: 1 is off.
    seed: key of the counter-based Philox stream, in [0, 2**64).
    """

    cfg_scale: float = 4.0
    cfg_interval: int = -1
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self):
        put = object.__setattr__
        put(self, "cfg_scale", _number("cfg_scale", self.cfg_scale))
        put(self, "temperature", _number("temperature", self.temperature))
        put(self, "top_p", _number("top_p", self.top_p))
        put(self, "cfg_interval", _integer("cfg_interval", self.cfg_interval))
        put(self, "top_k", _integer("top_k", self.top_k))
        put(self, "seed", _integer("seed", self.seed))
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 <= self.top_k <= 2**31 - 1:
            raise ValueError(f"top_k must be in [0, 2**31) (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not -1 <= self.cfg_interval <= 2**31 - 1:
            raise ValueError(f"cfg_interval must be in [-1, 2**31), got {self.cfg_interval}")
        if not 0 <= self.seed < 2**64:
            raise ValueError("seed must be in [0, 2**64)")

    @property
    def guided(self) -> bool:
        """Whether queries use classifier-free guidance (:func:`is_guided`)."""
        return is_guided(self.cfg_scale)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def c_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments of the binding's Session (the zp_sampling fields by name)."""
        return dataclasses.asdict(self)


def check_sample_ids(sample_ids, n: int) -> np.ndarray:
    """(n,) uint32 counter words of the random stream; default 0..n-1."""
    if sample_ids is None:
        return np.arange(n, dtype=np.uint32)
    from ._checks import int_array

    s = int_array("sample_ids", sample_ids, 0, 2**32 - 1)
    if s.shape != (n,):
        raise ValueError(f"sample_ids must be {n} ints, got shape {s.shape}")
    return np.ascontiguousarray(s, dtype=np.uint32)
