"""The ZipAR scheduling rule written in Python, as a :class:`zipar.Policy`, and the row-start
proxy rule in NumPy.

:class:`ReferenceZipAR` is the readable statement of fixed-window ZipAR (docs/semantics.md): row r
may decode its next column c once the row above holds ``min(c + s, W)`` cells, where s is the
window of row r (W for row 1 under the paper schedule). Run through ``Model.generate`` it gives
the C policy ``zipar.ZipAR(s, schedule, proxy)`` token for token and pass for pass
(tests/test_scheduler.py), and it is the base the notebooks subclass to write other rules
(:meth:`window_for_row`).

:func:`proxy_token` states which token the engine feeds for a missing end of row (every proxy
kind); the tests check every proxy query of a trace against it.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..policies import Policy, PolicyState, check_proxy

__all__ = ["ReferenceZipAR", "proxy_token"]


def proxy_token(tokens, progress, row: int, proxy, row_start_proxy: Optional[int] = None) -> int:
    """The stand-in the engine feeds for the missing end of row ``row - 1`` when row ``row``
    starts before it is decoded (E = 0 grids).

    ``tokens``: (H, W) one image's grid, -1 where undecoded; ``progress``: (H,) decoded cells
    per row (a prefix of each row). ``proxy``: "above" (the latest decoded token of row row-2,
    row 0 when row = 1), "left" (of row row-1), "calibrated" (``row_start_proxy``) or an int
    token id (itself). A row with nothing decoded is skipped upwards; (0, 0) is always decoded.
    """
    proxy = check_proxy(proxy)
    if proxy == "calibrated":
        if row_start_proxy is None:
            raise ValueError("proxy 'calibrated' needs the model's row_start_proxy")
        return int(row_start_proxy)
    if not isinstance(proxy, str):
        return proxy
    tokens, progress = np.asarray(tokens), np.asarray(progress)
    src = row - 1 if proxy == "left" else max(row - 2, 0)
    while src > 0 and progress[src] == 0:
        src -= 1
    return int(tokens[src, progress[src] - 1])


class ReferenceZipAR(Policy):
    """Fixed-window ZipAR in Python; subclass and override :meth:`window_for_row` for a window
    that varies by row.

    ``schedule``: "eager" (row 1 starts when row 0 holds ``window`` cells) or "paper" (row 0 is
    decoded completely first: row 1's window is W). ``proxy``: as :class:`zipar.ZipAR`'s; the
    engine feeds it (:func:`proxy_token` states the rule). After a generation, ``decoded_at``
    (n_images, H, W) holds the pass that decoded each cell.
    """

    schedule = "eager"   # (class defaults: subclasses that skip __init__ still work)

    def __init__(self, window: int, proxy="above", schedule: str = "eager"):
        if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
            raise ValueError(f"window must be an int >= 1, got {window!r}")
        if schedule not in ("eager", "paper"):
            raise ValueError(f"unknown schedule {schedule!r}; use 'eager' or 'paper'")
        self.window = int(window)
        self.proxy = check_proxy(proxy)
        self.schedule = schedule
        self.decoded_at = None

    def window_for_row(self, row: int) -> int:
        """The window of row ``row`` (cells the row above must lead by); default: fixed."""
        return self.window

    def _windows(self, H: int, W: int) -> np.ndarray:
        s = np.array([min(self.window_for_row(r), W) for r in range(H)])
        if self.schedule == "paper" and H > 1:
            s[1] = W   # row 1 waits for the whole of row 0
        return s

    def reset(self, n_images: int, grid) -> None:
        self.H, self.W = grid
        self.windows = self._windows(self.H, self.W)
        self.decoded_at = np.full((n_images,) + tuple(grid), -1)

    def select(self, state: PolicyState):
        if getattr(self, "decoded_at", None) is None or \
                self.decoded_at.shape != (state.n_images,) + tuple(state.grid):
            self.reset(state.n_images, state.grid)  # select called without the engine's reset
        progress = state.progress                     # (images, H) decoded cells per row
        ready = progress < self.W
        # row r > 0 needs the row above to hold min(c + s_r, W) cells
        need = np.minimum(progress[:, 1:] + self.windows[None, 1:], self.W)
        ready[:, 1:] &= progress[:, :-1] >= need
        image, row = np.nonzero(ready)
        col = progress[image, row]
        self.decoded_at[image, row, col] = state.pass_index
        return np.stack([image, row, col], axis=1)

    def expected_passes(self, H: int, W: int) -> int:
        return W + int(self._windows(H, W)[1:].sum())

    def to_dict(self) -> dict:
        return {"policy": type(self).__name__, "window": self.window, "schedule": self.schedule,
                "proxy": self.proxy}

    def __repr__(self):
        return (f"{type(self).__name__}(window={self.window}, proxy={self.proxy!r}, "
                f"schedule={self.schedule!r})")
