"""Sessions of the engine: results of a generation, the low-level :class:`RawSession`, and the
pass loop that drives a Python :class:`~zipar.Policy`.

Query roles (``zipar.ROLES``) are named here; their values are the core's ``ZP_ROLE_*``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Tuple

import numpy as np

from ._checks import INT32_MAX, int_array, int_scalar
from ._ext import const, core
from .policies import PolicyState
from .sampling import Sampling, is_guided

__all__ = ["GenerationResult", "RawSession", "ROLES"]  # noqa: F822 (ROLES: module __getattr__)

# Names of the ZP_ROLE_* constants of csrc/zipar.h; ROLES orders them by the core's values.
_ROLE_NAMES = ("prefix", "sample", "proxy", "refeed", "verify", "draft", "eor")
_ROLES: Optional[Tuple[str, ...]] = None


def _roles() -> Tuple[str, ...]:
    global _ROLES
    if _ROLES is None:
        by_value = {const("ROLE_" + name.upper()): name for name in _ROLE_NAMES}
        if sorted(by_value) != list(range(len(_ROLE_NAMES))):
            raise RuntimeError(f"ZP_ROLE_* values are not 0..{len(_ROLE_NAMES) - 1}")
        _ROLES = tuple(by_value[v] for v in range(len(_ROLE_NAMES)))
    return _ROLES


def __getattr__(name):
    # ROLES is read from the extension on first use, so importing this module does not load it
    if name == "ROLES":
        return _roles()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclasses.dataclass
class GenerationResult:
    """Output of :meth:`Model.generate`.

    tokens: (B, H, W) int32. stats: forward passes, queries per pass (histogram), proxies,
    refeeds, adaptive draft counters, per-row start passes, seconds. config: everything needed to
    reproduce the call. trace: when requested, (n, 6) int32 rows (pass, image, row, col, role,
    input token) of every query, row/col of the slot it writes (row -1: conditioning position
    col; col W: end-of-row slot), role names in ``zipar.ROLES``. images: uint8 pixels when a
    decoder or tokenizer is attached. Per image, ``stats["image_passes"]`` (passes until its
    last query: a batch runs as long as its slowest image) and ``stats["image_queries"]``.
    """

    tokens: np.ndarray
    stats: Dict[str, Any]
    config: Dict[str, Any]
    trace: Optional[np.ndarray] = None
    images: Optional[np.ndarray] = None

    def trace_records(self):
        """The trace as a list of dicts (pass, image, row, col, role name)."""
        if self.trace is None:
            raise ValueError("generate(..., trace=True) records a trace")
        return [dict(pass_index=int(p), image=int(i), row=int(r), col=int(c), role=_roles()[k],
                     token=int(t)) for p, i, r, c, k, t in self.trace]


class RawSession:
    """Direct access to the forward primitive for writing acceptance rules in Python.

    ``forward(image, row, col, token, chain, want_logits)`` (equal-length int sequences; row -1
    with col p addresses conditioning position p; col W an end-of-row slot) evaluates one pass and
    returns the logits of the queries that want them. Slots fed with ``chain > 0`` are tentative,
    visible only to queries of that chain, until :meth:`commit` (or :meth:`discard`).
    ``probs``/``uniform``/``draw`` expose the engine's sampling distribution and random stream.
    """

    def __init__(self, model, cond, unc, mask, cfg_scale, seed, sids, kv_type=0):
        self.model = model
        self.cfg_scale = cfg_scale
        self.seed = seed
        self.sample_ids = sids
        self.n_images = cond.shape[0]
        self.guided = is_guided(cfg_scale)
        self._cache = core().Cache(model._core, self.n_images, self.guided, cond, unc, mask,
                                   kv_type=kv_type)
        self.passes = 0

    @property
    def kv_bytes(self) -> int:
        """Bytes of the K/V cache (float32: 4 per element, bfloat16: 2)."""
        return self._cache.kv_bytes

    @property
    def slots(self) -> np.ndarray:
        """(n_images, seq_len) slot states (writable view): ZP_SLOT_UNWRITTEN (-1), ZP_SLOT_MASKED
        (-2), ZP_SLOT_COMMITTED (0), > 0 the chain owning a tentative slot."""
        return self._cache.slots

    def position(self, row, col):
        """Sequence positions of (row, col) addresses (ModelConfig.position)."""
        return self.model.config.position(row, col)

    def prefill(self, want_logits=True):
        """Feed every conditioning position of every image; logits predicting cell (0, 0)."""
        P = self.model.config.cls_token_num
        n = self.n_images
        img = np.repeat(np.arange(n), P)
        col = np.tile(np.arange(P), n)
        want = (col == P - 1) & want_logits
        return self.forward(img, -np.ones_like(col), col, np.zeros_like(col), 0, want)

    def _address(self, image, row, col):
        """Checked (image, row, col) int64 arrays of equal shape, with their positions."""
        c = self.model.config
        image = int_array("image", image, 0, self.n_images - 1)
        row = int_array("row", row, -1, c.H - 1)
        col = int_array("col", col, 0, max(c.W - 1 + c.eor, c.cls_token_num - 1))
        try:
            image, row, col = np.broadcast_arrays(image, row, col)
        except ValueError:
            raise ValueError(f"image, row and col have shapes {image.shape}, {row.shape}, "
                             f"{col.shape} that do not broadcast") from None
        if np.any((row >= 0) & (col > c.W - 1 + c.eor)) or \
                np.any((row < 0) & (col >= c.cls_token_num)):
            raise ValueError("a query addresses a cell outside the grid")
        return image, row, col, self.position(row, col)

    def forward(self, image, row, col, token, chain=0, want_logits=True, guided=None,
                capture=None):
        image, row, col, token = (np.atleast_1d(x) for x in (image, row, col, token))
        image, row, col, pos = self._address(image, row, col)
        image, row, col, pos = (x.reshape(-1) for x in (image, row, col, pos))
        n = image.size
        token = int_array("token", token, 0, self.model.config.vocab_size - 1)
        if token.size != n and token.size != 1:
            raise ValueError(f"{token.size} tokens for {n} queries")
        token = np.broadcast_to(token.reshape(-1), (n,))
        chain = int_array("chain", chain, 0, INT32_MAX)
        want = np.asarray(want_logits)
        if want.dtype.kind not in "biu" or (want.size and not np.isin(want, (0, 1)).all()):
            raise ValueError("want_logits must be bools")
        try:
            chain = np.broadcast_to(chain.reshape(-1) if chain.ndim else chain, (n,))
            want = np.broadcast_to(want.reshape(-1) if want.ndim else want, (n,))
        except ValueError:
            raise ValueError(f"chain and want_logits must be one value or {n}") from None
        if guided is None:
            g = np.full(n, int(self.guided))
        else:
            g = np.asarray(guided)
            if g.dtype.kind not in "biu" or (g.size and not np.isin(g, (0, 1)).all()):
                raise ValueError("guided must be bools")
            g = np.broadcast_to(g.reshape(-1) if g.ndim else g, (n,))
        q = np.ascontiguousarray(np.stack([image, pos, token, chain, want.astype(np.int64), g],
                                          axis=1).astype(np.int32))
        out = self._cache.forward(q, self.cfg_scale, capture)
        self.passes += 1
        return out

    def commit(self, image, row, col):
        """Make tentative slots committed (visible to every later query)."""
        image, _, _, pos = self._address(image, row, col)
        self.slots[image, pos] = const("SLOT_COMMITTED")

    def discard(self, image, row, col):
        """Forget tentative slots (unwritten again)."""
        image, _, _, pos = self._address(image, row, col)
        self.slots[image, pos] = const("SLOT_UNWRITTEN")

    def probs(self, logits, temperature=1.0, top_k=0, top_p=1.0):
        """The engine's sampling distribution of logits rows (NaN or +inf logits: ValueError)."""
        sp = Sampling(cfg_scale=1.0, temperature=temperature, top_k=top_k, top_p=top_p)
        lg = _float_array("logits", logits, np.float32)
        return core().sampling_probs(np.ascontiguousarray(np.atleast_2d(lg)), sp.temperature,
                                     sp.top_k, sp.top_p)

    def uniform(self, image, row, col, draw=0):
        """The uniform draw ``draw`` (in [0, 2**32)) of cell (row, col) of image ``image``."""
        image = int_scalar("image", image, 0, self.n_images - 1)
        _, _, _, pos = self._address(image, row, col)
        if pos.size != 1:
            raise ValueError("uniform takes one cell")
        draw = int_scalar("draw", draw, 0, 2**32 - 1)
        return core().uniform(self.seed, int(self.sample_ids[image]), int(pos.reshape(-1)[0]),
                              draw)

    @staticmethod
    def draw(probs, u):
        """Inverse-CDF draw from probabilities (finite, >= 0, not all 0) with u in [0, 1)."""
        if isinstance(u, bool) or not isinstance(u, (int, float, np.integer, np.floating)):
            raise TypeError(f"u must be a number in [0, 1), got {u!r:.80}")
        p = _float_array("probs", probs, np.float64)
        if p.ndim != 1:
            raise ValueError(f"probs must be one row (1-D), got shape {p.shape}")
        return core().draw(np.ascontiguousarray(p), float(u))


def _float_array(name, value, dtype):
    a = np.asarray(value)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be numbers, got {a.dtype}")
    return a.astype(dtype)


# ---------------------------------------------------------------------------- pass loop

def histogram(pq):
    vals, counts = np.unique(pq, return_counts=True)
    return {int(v): int(n) for v, n in zip(vals, counts)}


def expected_passes(policy, c):
    f = getattr(policy, "expected_passes", None)
    return f(c.H, c.W) if f is not None else None


def progress_bar(progress, total, desc):
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    bar = tqdm(total=total, desc=desc, unit="pass", leave=False)

    def update_to(n):
        bar.update(n - bar.n)

    bar.update_to = update_to
    return bar


def run_python_policy(sess, policy, B, grid, bar):
    policy.reset(B, grid)
    passes = 0
    while not sess.done:
        state = PolicyState(tokens=sess.tokens, progress=sess.progress, pass_index=passes)
        cells = int_array(f"cells returned by {type(policy).__name__}.select", policy.select(state))
        if cells.size % 3:
            raise ValueError(f"{type(policy).__name__}.select must return (image, row, col) "
                             f"triples, got shape {cells.shape}")
        cells = np.ascontiguousarray(cells.reshape(-1, 3), dtype=np.int32)
        if cells.shape[0] == 0:
            raise RuntimeError(f"{type(policy).__name__}.select returned no cells before the "
                               "grid was complete")
        sess.step(cells)
        passes += 1
        if bar is not None:
            bar.update_to(passes)
