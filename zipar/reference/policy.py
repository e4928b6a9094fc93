"""The ZipAR scheduling rule written in Python, as a :class:`zipar.Policy`.

:class:`ReferenceZipAR` is the readable statement of fixed-window ZipAR with the eager schedule
(docs/semantics.md): row r may decode its next column c once the row above holds
``min(c + s, W)`` cells, where s is the window of row r. Run through ``Model.generate`` it gives
the C policy ``zipar.ZipAR(s)`` token for token and pass for pass (tests/test_scheduler.py), and
it is the base the notebooks subclass to write other rules (:meth:`window_for_row`).
"""

from __future__ import annotations

import numpy as np

from ..policies import Policy, PolicyState

__all__ = ["ReferenceZipAR"]


class ReferenceZipAR(Policy):
    """Fixed-window ZipAR (eager schedule) in Python; subclass and override
    :meth:`window_for_row` for a window that varies by row.

    After a generation, ``decoded_at`` (n_images, H, W) holds the pass that decoded each cell.
    """

    def __init__(self, window: int, proxy: str = "above"):
        if isinstance(window, bool) or not isinstance(window, (int, np.integer)) or window < 1:
            raise ValueError(f"window must be an int >= 1, got {window!r}")
        self.window = int(window)
        self.proxy = proxy
        self.decoded_at = None

    def window_for_row(self, row: int) -> int:
        """The window of row ``row`` (cells the row above must lead by); default: fixed."""
        return self.window

    def reset(self, n_images: int, grid) -> None:
        self.H, self.W = grid
        self.windows = np.array([min(self.window_for_row(r), self.W) for r in range(self.H)])
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
        s = [min(self.window_for_row(r), W) for r in range(H)]
        return W + sum(s[1:])

    def to_dict(self) -> dict:
        return {"policy": type(self).__name__, "window": self.window, "proxy": self.proxy}
