"""Model hyperparameters: :class:`ModelConfig` and the LlamaGen size table."""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
from typing import Optional, Tuple, Union, cast

import numpy as np

__all__ = ["ModelConfig", "find_multiple", "llamagen_hidden", "LLAMAGEN_SIZES", "MAX_SEQ_LEN",
           "MAX_WIDTH", "MAX_LAYERS"]

# Size limits of the core (csrc/zipar.h ZP_MAX_*; tests/test_hardening.py checks they agree),
# checked here so that a config the core would refuse fails with a message naming the limit.
#: P + H*(W+E), the positions of one sequence
MAX_SEQ_LEN = 1 << 24
#: dim, hidden, vocab_size and (n_head + 2*n_kv_head)*head_dim
MAX_WIDTH = 1 << 24
#: n_layer
MAX_LAYERS = 4096
_INT32_MAX = 2**31 - 1

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
    if isinstance(h, bool) or isinstance(w, bool) or not (isinstance(h, numbers.Integral) and
                                                          isinstance(w, numbers.Integral)):
        raise TypeError(f"grid sides must be ints, got {grid!r}")
    if h < 1 or w < 1:
        raise ValueError(f"grid sides must be positive ints, got {grid!r}")
    if h > MAX_SEQ_LEN or w > MAX_SEQ_LEN:
        raise ValueError(f"grid {grid!r} exceeds the sequence length limit MAX_SEQ_LEN = "
                         f"{MAX_SEQ_LEN}")
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
        def _int(name, lo, hi=_INT32_MAX, limit=""):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise TypeError(f"ModelConfig.{name} must be an int, got {v!r}")
            if v < lo:
                raise ValueError(f"ModelConfig.{name} must be >= {lo}, got {v}")
            if v > hi:
                raise ValueError(f"ModelConfig.{name} = {v} exceeds the limit "
                                 f"{limit or 'of a C int'} = {hi}")
            object.__setattr__(self, name, int(v))

        def _positive_real(name):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real):
                raise TypeError(f"ModelConfig.{name} must be a number, got {v!r}")
            if not (math.isfinite(v) and v > 0 and math.isfinite(np.float32(v)) and
                    np.float32(v) > 0):
                raise ValueError(f"ModelConfig.{name} must be finite and positive (as a float32), "
                                 f"got {v!r}")
            object.__setattr__(self, name, float(v))

        for name, lo, hi, limit in (
                ("dim", 1, MAX_WIDTH, "MAX_WIDTH"), ("n_layer", 1, MAX_LAYERS, "MAX_LAYERS"),
                ("n_head", 1, MAX_WIDTH, "MAX_WIDTH"), ("vocab_size", 1, MAX_WIDTH, "MAX_WIDTH"),
                ("num_classes", 1, _INT32_MAX, ""),
                ("cls_token_num", 1, MAX_SEQ_LEN, "MAX_SEQ_LEN"),
                ("caption_dim", 0, MAX_WIDTH, "MAX_WIDTH"), ("eor", 0, 1, ""),
                ("eor_token", 0, _INT32_MAX, "")):
            _int(name, lo, hi, limit)
        object.__setattr__(self, "grid", _as_grid(self.grid))
        if self.n_kv_head is None:
            object.__setattr__(self, "n_kv_head", self.n_head)
        _int("n_kv_head", 1, MAX_WIDTH, "MAX_WIDTH")
        if self.hidden is None:
            object.__setattr__(self, "hidden", llamagen_hidden(self.dim))
        _int("hidden", 1, MAX_WIDTH, "MAX_WIDTH")
        seq = self.cls_token_num + self.H * (self.W + self.eor)  # Python ints: no wrap
        if seq > MAX_SEQ_LEN:
            raise ValueError(f"sequence length P + H*(W+E) = {self.cls_token_num} + {self.H}*"
                             f"({self.W}+{self.eor}) = {seq} exceeds the limit MAX_SEQ_LEN = "
                             f"{MAX_SEQ_LEN}")
        if self.dim % self.n_head:
            raise ValueError(f"dim ({self.dim}) must be divisible by n_head ({self.n_head})")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head ({self.n_head}) must be a multiple of n_kv_head "
                             f"({self.n_kv_head})")
        if self.head_dim % 4:
            raise ValueError(f"head_dim ({self.head_dim}) must be a multiple of 4 for the 2-D "
                             "rotary layout")
        qkv = (self.n_head + 2 * self.n_kv_head) * self.head_dim
        if qkv > MAX_WIDTH:
            raise ValueError(f"(n_head + 2*n_kv_head)*head_dim = {qkv} exceeds the limit "
                             f"MAX_WIDTH = {MAX_WIDTH}")
        if not 0 <= self.eor_token < self.vocab_size:
            raise ValueError(f"eor_token {self.eor_token} outside [0, {self.vocab_size})")
        _positive_real("norm_eps")
        _positive_real("rope_base")

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
