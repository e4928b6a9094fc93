"""Decoding policies: which grid cells each forward pass decodes.

Built-in policies run inside the C core (``Raster``, ``ZipAR``, ``AdaptiveZipAR``). A
:class:`Policy` subclass written in Python chooses cells itself; the engine supplies the inputs,
the row-start proxies, refeeds and visibility (see docs/semantics.md).

Each policy hands the core a ``zp_policy`` as keyword arguments (:meth:`c_kwargs`) holding only
the fields its kind reads (zipar.h): Raster none, ZipAR window/schedule/proxy, AdaptiveZipAR
min_window/max_window/threshold/schedule/proxy, a Python policy its proxy.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from ._ext import const

__all__ = ["Policy", "PolicyState", "Raster", "ZipAR", "AdaptiveZipAR", "policy_from_name"]

# names of the zipar.h enums; their values come from the extension (zipar._ext.const)
_SCHEDULES = ("eager", "paper")
_PROXIES = ("above", "left")


def _schedule(name: str) -> int:
    return const("SCHEDULE_" + name.upper())


def _proxy(name: str) -> int:
    return const("PROXY_" + name.upper())


def _check_int(name, v, lo=1):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {v!r}")
    if v < lo:
        raise ValueError(f"{name} must be >= {lo}, got {v}")
    return int(v)


class _Builtin:
    """Base of the policies that run in C."""

    def c_kwargs(self, W: int) -> dict:
        """The zp_policy fields this kind reads, by name, for a grid of width ``W``."""
        raise NotImplementedError

    def to_dict(self) -> dict:
        d = {"policy": type(self).__name__}
        d.update(dataclasses.asdict(self))  # type: ignore[call-overload]  # subclasses are dataclasses
        return d


@dataclasses.dataclass(frozen=True)
class Raster(_Builtin):
    """One token per pass in raster order (H*W passes)."""

    def c_kwargs(self, W):
        return {"kind": const("POLICY_RASTER")}

    def expected_passes(self, H, W):
        return H * W


@dataclasses.dataclass(frozen=True)
class ZipAR(_Builtin):
    """Fixed-window ZipAR: cell (r, c) is decoded once row r-1 holds columns c..c+window-1.

    ``schedule="eager"`` starts row 1 as soon as row 0 holds ``window`` tokens
    (W + (H-1)*window passes); ``"paper"`` decodes row 0 completely first, as the published
    LlamaGen code does (2W + (H-2)*window passes for window < W). ``proxy`` is the stand-in fed at
    the missing end of the row above when a row starts early (E = 0 grids): ``"above"`` (the latest
    decoded token of the row above that row, as the published code) or ``"left"`` (the latest
    decoded token of the same row). A stand-in is visible only to its own query.
    """

    window: int
    schedule: str = "eager"
    proxy: str = "above"

    def __post_init__(self):
        object.__setattr__(self, "window", _check_int("window", self.window))
        if self.schedule not in _SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; use 'eager' or 'paper'")
        if self.proxy not in _PROXIES:
            raise ValueError(f"unknown proxy {self.proxy!r}; use 'above' or 'left'")

    def c_kwargs(self, W):
        if self.window > W:
            raise ValueError(f"window {self.window} is larger than the grid width W={W}")
        return {"kind": const("POLICY_ZIPAR"), "window": self.window,
                "schedule": _schedule(self.schedule), "proxy": _proxy(self.proxy)}

    def expected_passes(self, H, W):
        s = self.window
        if s >= W:
            return H * W
        if self.schedule == "paper":
            return 2 * W + (H - 2) * s if H >= 2 else W
        return W + (H - 1) * s


@dataclasses.dataclass(frozen=True)
class AdaptiveZipAR(_Builtin):
    """ZipAR with verified row starts (paper v3).

    When row r-1 holds ``min_window`` tokens, the start of row r is drafted, x ~ q. Each later
    pass re-evaluates it with one more token of context, p, and accepts when
    ``u < min(1, p(x) / q(x) / (1 - threshold))`` (u ~ U[0,1) from the counter-based stream).
    On rejection a new draft is drawn from the residual ``norm(max(0, p - q))`` and p becomes its
    proposal distribution. Verification stops when the row above is complete (or holds
    ``max_window`` tokens): that last test's outcome is final. ``threshold=0`` is the paper's
    speculative-sampling rule, under which the accepted start follows the distribution of the
    last context exactly; ``threshold=1`` accepts every draft, so no verification pass is run and
    the policy equals ``ZipAR(min_window)`` token for token (for min_window >= 2 thresholds just
    below 1 also give the same tokens, through the verification path). p and q are the sampling
    distributions actually drawn from: guided (CFG) logits after temperature, top-k and top-p.
    The draft is fed in the verification pass inside its own chain, so on acceptance (r, 1) is
    decoded in the same pass.
    """

    min_window: int
    max_window: Optional[int] = None
    threshold: float = 0.0
    schedule: str = "eager"
    proxy: str = "above"

    def __post_init__(self):
        object.__setattr__(self, "min_window", _check_int("min_window", self.min_window))
        if self.max_window is not None:
            mw = _check_int("max_window", self.max_window)
            if mw < self.min_window:
                raise ValueError(f"max_window {mw} < min_window {self.min_window}")
            object.__setattr__(self, "max_window", mw)
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, (int, float, np.floating)) or \
                not 0.0 <= t <= 1.0:
            raise ValueError(f"threshold must be a number in [0, 1], got {t!r}")
        object.__setattr__(self, "threshold", float(t))
        if self.schedule not in _SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; use 'eager' or 'paper'")
        if self.proxy not in _PROXIES:
            raise ValueError(f"unknown proxy {self.proxy!r}; use 'above' or 'left'")

    def c_kwargs(self, W):
        if self.min_window > W:
            raise ValueError(f"min_window {self.min_window} is larger than the grid width W={W}")
        mx = W if self.max_window is None else min(self.max_window, W)
        return {"kind": const("POLICY_ADAPTIVE"), "min_window": self.min_window,
                "max_window": mx, "threshold": self.threshold,
                "schedule": _schedule(self.schedule), "proxy": _proxy(self.proxy)}


@dataclasses.dataclass
class PolicyState:
    """What a Python policy sees before each pass (NumPy copies; mutate freely).

    tokens: (n, H, W) int32, -1 where undecoded; committed: the same as a bool mask;
    progress: (n, H) decoded cells per row (rows fill left to right); pass_index: passes so far.
    """

    tokens: np.ndarray
    progress: np.ndarray
    pass_index: int

    @property
    def committed(self) -> np.ndarray:
        return self.tokens >= 0

    @property
    def grid(self):
        return self.tokens.shape[1:]

    @property
    def n_images(self):
        return self.tokens.shape[0]


class Policy:
    """Base class of decoding policies written in Python.

    Override :meth:`select`: given the :class:`PolicyState`, return the cells to decode in this
    pass as an (n, 3) int array or a list of ``(image, row, col)``. Each cell must be the next
    undecoded cell of its row (``col == state.progress[image, row]``), and an image's first pass
    must decode its cell (0, 0). The engine feeds the real token on the left, or for a row start
    the real end of the row above when it exists, else a stand-in (``proxy``) visible only to that
    query; refeeds and visibility follow docs/semantics.md.
    """

    proxy: str = "above"

    def reset(self, n_images: int, grid) -> None:
        """Called once before the first pass."""

    def select(self, state: PolicyState):
        raise NotImplementedError

    def to_dict(self) -> dict:
        return {"policy": type(self).__name__}

    def c_kwargs(self, W):
        if self.proxy not in _PROXIES:
            raise ValueError(f"unknown proxy {self.proxy!r}")
        return {"kind": const("POLICY_EXTERNAL"), "proxy": _proxy(self.proxy)}


def policy_from_name(name: str, *, window=None, schedule="eager", proxy="above", min_window=None,
                     max_window=None, threshold=0.0):
    """Build a policy from CLI-style names: raster, zipar, adaptive."""
    name = name.lower()
    if name == "raster":
        return Raster()
    if name == "zipar":
        if window is None:
            raise ValueError("policy 'zipar' needs a window")
        return ZipAR(window, schedule=schedule, proxy=proxy)
    if name == "adaptive":
        return AdaptiveZipAR(min_window if min_window is not None else window,
                             max_window=max_window, threshold=threshold, schedule=schedule,
                             proxy=proxy)
    raise ValueError(f"unknown policy {name!r}; use raster, zipar or adaptive")
