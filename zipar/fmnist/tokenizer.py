"""Grey-level tokenizer for the built-in Fashion-MNIST model, and an idx(.gz) file reader.

The built-in model works on 28x28 grey images whose pixels are quantised to ``levels`` grey
values. Token ``t`` in ``[0, levels)`` stands for the grey value ``round(t * 255 / (levels - 1))``
(a uniform palette from black to white); encoding maps every pixel to the token of the nearest
palette value. A palette image (one whose pixels are all palette values) round-trips exactly.

NumPy only.
"""

from __future__ import annotations

import gzip
import os

import numpy as np

__all__ = ["GreyTokenizer", "load_idx"]


class GreyTokenizer:
    """Uniform grey palette of ``levels`` values <-> int32 tokens.

    ``encode(images uint8 (..., H, W)) -> tokens int32 (..., H, W)`` picks the nearest palette
    value (ties go to the darker level); ``decode(tokens) -> images uint8`` looks the palette up.
    Both are table look-ups, so they cost one gather per pixel.
    """

    def __init__(self, levels: int):
        if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)):
            raise TypeError(f"levels must be an int, got {levels!r}")
        levels = int(levels)
        if not 2 <= levels <= 256:
            raise ValueError(f"levels must be in [2, 256], got {levels}")
        self.levels = levels
        # palette[t] = round(t * 255 / (levels - 1)), as uint8. np.rint rounds half to even; the
        # values t*255/(levels-1) are never exactly half-integers for levels in {16, 32, 64}, but
        # round half up explicitly so the rule is the one documented for every levels.
        t = np.arange(levels, dtype=np.int64)
        self.palette = ((t * 255 * 2 + (levels - 1)) // (2 * (levels - 1))).astype(np.uint8)
        # encode_table[x] = token of the palette value nearest to grey value x (0..255).
        grey = np.arange(256, dtype=np.int64)[:, None]
        dist = np.abs(grey - self.palette.astype(np.int64)[None, :])
        self.encode_table = np.argmin(dist, axis=1).astype(np.int32)  # argmin: first = darker

    @property
    def vocab_size(self) -> int:
        return self.levels

    def encode(self, images) -> np.ndarray:
        """uint8 grey images (any shape) -> int32 tokens of the same shape."""
        images = np.asarray(images)
        if images.dtype != np.uint8:
            raise TypeError(f"images must be uint8, got {images.dtype}")
        return self.encode_table[images]

    def decode(self, tokens) -> np.ndarray:
        """int tokens (any shape, values in [0, levels)) -> uint8 grey images of the same shape."""
        tokens = np.asarray(tokens)
        if not np.issubdtype(tokens.dtype, np.integer):
            raise TypeError(f"tokens must be integers, got {tokens.dtype}")
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.levels):
            raise ValueError(f"tokens must lie in [0, {self.levels}), got range "
                             f"[{tokens.min()}, {tokens.max()}]")
        return self.palette[tokens]

    def quantize(self, images) -> np.ndarray:
        """Images -> nearest palette images (decode(encode(images)))."""
        return self.palette[self.encode(images)]

    def __repr__(self) -> str:
        return f"GreyTokenizer(levels={self.levels})"


# idx type codes (the format of the MNIST / Fashion-MNIST files): code -> big-endian dtype
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def load_idx(path) -> np.ndarray:
    """Read an idx file (gzip-compressed when the name ends in .gz) into a NumPy array.

    Layout: two zero bytes, a type code byte, the number of dimensions, then one big-endian
    uint32 per dimension, then the data in C order. Unsigned bytes come back as uint8; other
    types as native-endian arrays.
    """
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path}: not an idx file (bad magic {data[:4]!r})")
    code, ndim = data[2], data[3]
    if code not in _IDX_DTYPES:
        raise ValueError(f"{path}: unknown idx type code 0x{code:02x}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated idx header")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[code])
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if len(data) - header != count * dtype.itemsize:
        raise ValueError(f"{path}: expected {count * dtype.itemsize} data bytes for shape "
                         f"{shape}, found {len(data) - header}")
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(shape)
    return arr.astype(dtype.newbyteorder("="), copy=True)
