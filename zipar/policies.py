"""Decoding policies: which grid cells each forward pass decodes.

Built-in policies run inside the C core (``Raster``, ``ZipAR``, ``AdaptiveZipAR``). A
:class:`Policy` subclass written in Python chooses cells itself; the engine supplies the inputs,
the row-start proxies, refeeds and visibility (see docs/semantics.md).

Each policy hands the core a ``zp_policy`` as keyword arguments (:meth:`c_kwargs`) holding only
the fields its kind reads (zipar.h): Raster none, ZipAR window/schedule/proxy, AdaptiveZipAR
min_window/max_window/threshold/schedule/proxy, a Python policy its proxy (with ``proxy_token``
for a constant proxy).

Proxies (the stand-in fed for a missing end of row, docs/semantics.md): ``"above"``,
``"left"``, an int token id (always fed as it is) or ``"calibrated"``, the model's stored
``row_start_proxy`` token (:func:`zipar.calibrate_proxy`), looked up when the session is created.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Union

import numpy as np

from ._checks import INT32_MAX
from ._ext import const

__all__ = ["Policy", "PolicyState", "Raster", "ZipAR", "AdaptiveZipAR", "policy_from_name",
           "PROXY_NAMES", "check_proxy", "proxy_kwargs", "policy_record"]

# names of the zipar.h enums; their values come from the extension (zipar._ext.const)
_SCHEDULES = ("eager", "paper")
#: The named proxies; an int token id is the fourth kind.
PROXY_NAMES = ("above", "left", "calibrated")
_PROXY_HELP = "use 'above', 'left', 'calibrated' or an int token id"

#: A proxy setting: one of PROXY_NAMES or a token id.
ProxySetting = Union[str, int]


def _schedule(name: str) -> int:
    return const("SCHEDULE_" + name.upper())


def check_proxy(proxy) -> ProxySetting:
    """The canonical form of a proxy setting: ``"above"``, ``"left"``, ``"calibrated"`` or a
    token id as a Python int (NumPy integers accepted). Bools are refused (TypeError), as are
    other types; unknown names and negative ids are a ValueError. Whether an id is below the
    model's number of image tokens is checked when a session is created (:func:`proxy_kwargs`)."""
    if isinstance(proxy, (bool, np.bool_)):
        raise TypeError(f"proxy must be 'above', 'left', 'calibrated' or an int token id, not a "
                        f"bool ({proxy!r})")
    if isinstance(proxy, (int, np.integer)):
        if proxy < 0:
            raise ValueError(f"proxy token {proxy} is negative: token ids are 0 .. (the model's "
                             "number of image tokens - 1)")
        if proxy > INT32_MAX:
            raise ValueError(f"proxy token {proxy} is not a token id of any model: ids are 0 .. "
                             f"(the model's number of image tokens - 1) <= {INT32_MAX}")
        return int(proxy)
    if isinstance(proxy, str):
        if proxy not in PROXY_NAMES:
            raise ValueError(f"unknown proxy {proxy!r}; {_PROXY_HELP}")
        return proxy
    raise TypeError(f"proxy must be 'above', 'left', 'calibrated' or an int token id, got "
                    f"{proxy!r:.80} ({type(proxy).__name__})")


def proxy_kwargs(proxy, *, n_tokens: Optional[int] = None,
                 row_start_proxy: Optional[int] = None, token_offset: int = 0) -> dict:
    """The zp_policy fields ``proxy`` (and ``proxy_token``) of a proxy setting, for a model with
    ``n_tokens`` image tokens (None: not checked here; the core still refuses ids outside its
    image tokens) whose calibrated proxy is ``row_start_proxy`` (None: none stored).
    ``token_offset``: the core's id of image token 0 (models whose image tokens are a range of a
    larger vocabulary). A constant id at or above ``n_tokens`` is a ValueError naming the valid
    range; ``"calibrated"`` without a stored token is a ValueError saying how to set one."""
    proxy = check_proxy(proxy)
    if proxy in ("above", "left"):
        return {"proxy": const("PROXY_" + str(proxy).upper())}
    if proxy == "calibrated":
        if row_start_proxy is None:
            raise ValueError("proxy='calibrated' uses the model's row_start_proxy, and this "
                             "model has none: compute one with zipar.calibrate_proxy(model) and "
                             "set model.row_start_proxy = result.token (or pass "
                             "row_start_proxy= to zipar.Model; Model.save keeps it)")
        token = int(row_start_proxy)
        what = f"the model's row_start_proxy {token}"
    else:
        token = int(proxy)
        what = f"proxy token {token}"
    if n_tokens is not None and not 0 <= token < n_tokens:
        raise ValueError(f"{what} is outside the model's image tokens: valid ids are 0.."
                         f"{n_tokens - 1}")
    return {"proxy": const("PROXY_CONST"), "proxy_token": token + token_offset}


def _check_int(name, v, lo=1):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {v!r}")
    if v < lo:
        raise ValueError(f"{name} must be >= {lo}, got {v}")
    return int(v)


class _Builtin:
    """Base of the policies that run in C."""

    def c_kwargs(self, W: int, *, n_tokens: Optional[int] = None,
                 row_start_proxy: Optional[int] = None, token_offset: int = 0) -> dict:
        """The zp_policy fields this kind reads, by name, for a grid of width ``W``; the other
        keywords describe the model's image tokens for the proxy (see :func:`proxy_kwargs`)."""
        raise NotImplementedError

    def to_dict(self) -> dict:
        d = {"policy": type(self).__name__}
        d.update(dataclasses.asdict(self))  # type: ignore[call-overload]  # subclasses are dataclasses
        return d


@dataclasses.dataclass(frozen=True)
class Raster(_Builtin):
    """One token per pass in raster order (H*W passes)."""

    def c_kwargs(self, W, **model_tokens):
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
    decoded token of the row above that row, as the published code), ``"left"`` (the latest
    decoded token of the same row), an int token id (that token, always) or ``"calibrated"`` (the
    model's ``row_start_proxy``, see :func:`zipar.calibrate_proxy`). A stand-in is visible only to
    its own query and is replaced by the real token once that is decoded, so the choice changes
    tokens only through the row starts it conditions (``ZipAR(W)`` never needs one).
    """

    window: int
    schedule: str = "eager"
    proxy: ProxySetting = "above"

    def __post_init__(self):
        object.__setattr__(self, "window", _check_int("window", self.window))
        if self.schedule not in _SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; use 'eager' or 'paper'")
        object.__setattr__(self, "proxy", check_proxy(self.proxy))

    def c_kwargs(self, W, **model_tokens):
        if self.window > W:
            raise ValueError(f"window {self.window} is larger than the grid width W={W}")
        return {"kind": const("POLICY_ZIPAR"), "window": self.window,
                "schedule": _schedule(self.schedule), **proxy_kwargs(self.proxy, **model_tokens)}

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
    decoded in the same pass. ``proxy`` (as :class:`ZipAR`'s) is what drafts and verifications
    feed at the end of the row above while that end is not decoded yet (E = 0 grids).
    """

    min_window: int
    max_window: Optional[int] = None
    threshold: float = 0.0
    schedule: str = "eager"
    proxy: ProxySetting = "above"

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
        object.__setattr__(self, "proxy", check_proxy(self.proxy))

    def c_kwargs(self, W, **model_tokens):
        if self.min_window > W:
            raise ValueError(f"min_window {self.min_window} is larger than the grid width W={W}")
        mx = W if self.max_window is None else min(self.max_window, W)
        return {"kind": const("POLICY_ADAPTIVE"), "min_window": self.min_window,
                "max_window": mx, "threshold": self.threshold,
                "schedule": _schedule(self.schedule), **proxy_kwargs(self.proxy, **model_tokens)}


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
    query; refeeds and visibility follow docs/semantics.md. ``proxy`` takes ZipAR's values
    (``"above"``, ``"left"``, ``"calibrated"`` or an int token id); set it on the instance or
    the class.
    """

    proxy: ProxySetting = "above"

    def reset(self, n_images: int, grid) -> None:
        """Called once before the first pass."""

    def select(self, state: PolicyState):
        raise NotImplementedError

    def to_dict(self) -> dict:
        return {"policy": type(self).__name__, "proxy": self.proxy}

    def c_kwargs(self, W, **model_tokens):
        return {"kind": const("POLICY_EXTERNAL"), **proxy_kwargs(self.proxy, **model_tokens)}


def policy_record(policy, row_start_proxy: Optional[int] = None) -> dict:
    """``policy.to_dict()`` as a generation records it: with ``proxy="calibrated"`` the token
    it resolved to is added as ``"proxy_token"`` (the model's ``row_start_proxy``)."""
    d = policy.to_dict()
    if getattr(policy, "proxy", None) == "calibrated" and row_start_proxy is not None:
        d["proxy_token"] = int(row_start_proxy)
    return d


def policy_from_name(name: str, *, window=None, schedule="eager", proxy="above", min_window=None,
                     max_window=None, threshold=0.0):
    """Build a policy from CLI-style names: raster, zipar, adaptive. ``proxy``: as for
    :class:`ZipAR` (a name, or a token id); raster reads none."""
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
