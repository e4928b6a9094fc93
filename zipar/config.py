"""Model hyperparameters: :class:`ModelConfig` and the LlamaGen size table."""

from __future__ import annotations

import dataclasses
import json
from typing import Optional, Tuple, Union, cast

import numpy as np

__all__ = ["ModelConfig", "find_multiple", "llamagen_hidden", "LLAMAGEN_SIZES"]

#: LlamaGen GPT sizes: name -> (n_layer, n_head, dim).
LLAMAGEN_SIZES = {
    "GPT-B": (12, 12, 768),
    "GPT-L": (24, 16, 1024),
    "GPT-XL": (36, 20, 1280),
    "GPT-XXL": (48, 24, 1536),
    "GPT-XXXL": (48, 40, 2560),
    "GPT-1B": (22, 32, 2048),
    "GPT-3B": (24, 32, 3200),
    "GPT-7B": (32, 32, 4096),
}


def find_multiple(n: int, k: int) -> int:
    """Round ``n`` up to a multiple of ``k``."""
    return n if n % k == 0 else n + k - (n % k)


def llamagen_hidden(dim: int, multiple_of: int = 256) -> int:
    """LlamaGen's FFN hidden size: find_multiple(int(2 * 4 * dim / 3), 256)."""
    return find_multiple(int(2 * 4 * dim / 3), multiple_of)


def _as_grid(grid) -> Tuple[int, int]:
    if isinstance(grid, bool):
        raise TypeError("grid must be an int or an (H, W) pair, not bool")
    if isinstance(grid, int):
        h = w = grid
    else:
        try:
            h, w = grid
        except (TypeError, ValueError):
            raise TypeError(f"grid must be an int or an (H, W) pair, got {grid!r}") from None
    if not (isinstance(h, int) and isinstance(w, int)) or h < 1 or w < 1:
        raise ValueError(f"grid sides must be positive ints, got {grid!r}")
    return int(h), int(w)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyperparameters of a LlamaGen-architecture GPT.

    ``grid`` is an int (square) or ``(H, W)``. ``eor=1`` appends a fixed end-of-row token
    (``eor_token``) after each row (Emu3 / Lumina-mGPT style; LlamaGen uses 0). ``hidden``
    defaults to LlamaGen's rule ``find_multiple(int(8*dim/3), 256)``.
    """

    dim: int
    n_layer: int
    n_head: int
    vocab_size: int
    grid: Union[int, Tuple[int, int]]
    num_classes: int
    n_kv_head: Optional[int] = None
    cls_token_num: int = 1
    norm_eps: float = 1e-5
    rope_base: float = 10000.0
    hidden: Optional[int] = None
    eor: int = 0
    eor_token: int = 0
    caption_dim: int = 0  # t2i: caption embedding width (2048 for LlamaGen t2i), 0 for c2i

    def __post_init__(self):
        def _int(name, lo):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"ModelConfig.{name} must be an int, got {v!r}")
            if v < lo:
                raise ValueError(f"ModelConfig.{name} must be >= {lo}, got {v}")

        for name, lo in (("dim", 1), ("n_layer", 1), ("n_head", 1), ("vocab_size", 1),
                         ("num_classes", 1), ("cls_token_num", 1), ("caption_dim", 0)):
            _int(name, lo)
        object.__setattr__(self, "grid", _as_grid(self.grid))
        if self.n_kv_head is None:
            object.__setattr__(self, "n_kv_head", self.n_head)
        _int("n_kv_head", 1)
        if self.hidden is None:
            object.__setattr__(self, "hidden", llamagen_hidden(self.dim))
        _int("hidden", 1)
        if self.dim % self.n_head:
            raise ValueError(f"dim ({self.dim}) must be divisible by n_head ({self.n_head})")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head ({self.n_head}) must be a multiple of n_kv_head "
                             f"({self.n_kv_head})")
        if self.head_dim % 4:
            raise ValueError(f"head_dim ({self.head_dim}) must be a multiple of 4 for the 2-D "
                             "rotary layout")
        if self.eor not in (0, 1):
            raise ValueError(f"eor must be 0 or 1, got {self.eor!r}")
        if not 0 <= self.eor_token < self.vocab_size:
            raise ValueError(f"eor_token {self.eor_token} outside [0, {self.vocab_size})")
        if not (self.norm_eps > 0 and self.rope_base > 0):
            raise ValueError("norm_eps and rope_base must be positive")
        object.__setattr__(self, "norm_eps", float(self.norm_eps))
        object.__setattr__(self, "rope_base", float(self.rope_base))

    # ---- derived quantities
    @property
    def head_dim(self) -> int:
        return self.dim // self.n_head

    @property
    def H(self) -> int:
        return cast(Tuple[int, int], self.grid)[0]  # a pair after __post_init__

    @property
    def W(self) -> int:
        return cast(Tuple[int, int], self.grid)[1]

    @property
    def seq_len(self) -> int:
        """Conditioning positions plus the grid (with end-of-row positions when eor=1)."""
        return self.cls_token_num + self.H * (self.W + self.eor)

    def cell_pos(self, r, c):
        """Sequence position of grid cell (r, c): the one place of the layout in Python.

        P conditioning positions come first, then the grid row by row, each row followed by E
        end-of-row slots: cell (r, c) sits at ``P + r*(W+E) + c`` (c == W is row r's end-of-row
        slot). Works element-wise on arrays. (C: zp_cell_pos.)
        """
        return self.cls_token_num + r * (self.W + self.eor) + c

    def cell_of(self, pos: int):
        """(row, col) of sequence position ``pos`` >= P: the inverse of :meth:`cell_pos`."""
        return divmod(pos - self.cls_token_num, self.W + self.eor)

    def position(self, row, col):
        """Sequence positions of (row, col) addresses, element-wise; row -1 with col p addresses
        conditioning position p, other rows are grid cells (:meth:`cell_pos`)."""
        row, col = np.asarray(row), np.asarray(col)
        return np.where(row < 0, col, self.cell_pos(row, col))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["grid"] = [self.H, self.W]
        return d

    def to_json(self) -> str:
        """The config as canonical JSON (what checkpoints store)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    def c_kwargs(self) -> dict:
        """The zp_config fields by name: keyword arguments of the binding's Model."""
        return dict(dim=self.dim, n_layer=self.n_layer, n_head=self.n_head,
                    n_kv_head=self.n_kv_head, head_dim=self.head_dim, hidden=self.hidden,
                    vocab=self.vocab_size, cls_token_num=self.cls_token_num, grid_h=self.H,
                    grid_w=self.W, eor=self.eor, eor_token=self.eor_token,
                    norm_eps=self.norm_eps, rope_base=self.rope_base)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        d = dict(d)
        if "grid" in d and isinstance(d["grid"], list):
            d["grid"] = tuple(d["grid"])
        return cls(**d)
