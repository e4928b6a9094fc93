"""Minimal PNG writer/reader (zlib + struct only) and an image-grid helper.

Example::

    write_png("sample.png", pixels, text={"zipar": json.dumps(config)})
    read_png("sample.png")        # -> (H, W, 3) uint8
    read_png_text("sample.png")   # -> {"zipar": "..."}

Written files are 8-bit RGB (colour type 2) or grey (colour type 0), not interlaced, every row
with filter type 0, all pixel data in one IDAT chunk, text chunks before IDAT. Text is stored as
tEXt (Latin-1) when it can be, otherwise as uncompressed iTXt (UTF-8). The reader checks the
signature and every chunk's CRC and accepts what the writer produces (8-bit grey/RGB, filter 0,
any number of IDAT chunks); anything else raises ValueError.
"""

from __future__ import annotations

import os
import struct
import zlib
from typing import Dict, List, Optional, Tuple, Union

import numpy as np

__all__ = ["encode_png", "write_png", "decode_png", "read_png", "read_png_text", "image_grid"]

PathLike = Union[str, os.PathLike]

_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOR_TYPES = {0: 1, 2: 3}  # PNG colour type -> channels (grey, RGB)


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------

def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = zlib.crc32(kind + payload) & 0xFFFFFFFF
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def _text_chunk(key: str, value: str) -> bytes:
    if not isinstance(key, str) or not isinstance(value, str):
        raise ValueError(f"PNG text keys and values must be str, got {key!r}: {type(value)}")
    try:
        kb = key.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError(f"PNG text key {key!r} must be Latin-1") from None
    if not 1 <= len(kb) <= 79 or b"\x00" in kb or kb != kb.strip(b" "):
        raise ValueError(f"PNG text key {key!r} must be 1..79 characters, no NUL, no leading "
                         "or trailing spaces")
    try:
        return _chunk(b"tEXt", kb + b"\x00" + value.encode("latin-1"))
    except UnicodeEncodeError:
        # iTXt: key, NUL, compression flag 0, method 0, empty language tag, NUL, empty
        # translated key, NUL, UTF-8 text
        return _chunk(b"iTXt", kb + b"\x00\x00\x00\x00\x00" + value.encode("utf-8"))


def encode_png(image: np.ndarray, text: Optional[Dict[str, str]] = None) -> bytes:
    """PNG bytes for a uint8 image (H, W, 3) RGB or (H, W) grey, with optional text chunks."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise ValueError(f"image must be uint8, got dtype {img.dtype}")
    if img.ndim == 2:
        color_type = 0
    elif img.ndim == 3 and img.shape[2] == 3:
        color_type = 2
    else:
        raise ValueError(f"image must have shape (H, W, 3) or (H, W), got {img.shape}")
    H, W = img.shape[:2]
    if H < 1 or W < 1:
        raise ValueError(f"image must be at least 1x1, got {H}x{W}")
    rows = np.ascontiguousarray(img).reshape(H, -1)
    raw = np.empty((H, rows.shape[1] + 1), np.uint8)
    raw[:, 0] = 0  # filter type 0 (None) on every row
    raw[:, 1:] = rows
    parts = [_SIGNATURE,
             _chunk(b"IHDR", struct.pack(">IIBBBBB", W, H, 8, color_type, 0, 0, 0))]
    for key, value in (text or {}).items():
        parts.append(_text_chunk(key, value))
    parts.append(_chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)))
    parts.append(_chunk(b"IEND", b""))
    return b"".join(parts)


def write_png(path: PathLike, image: np.ndarray, text: Optional[Dict[str, str]] = None) -> None:
    """Write ``image`` (uint8 (H, W, 3) or (H, W)) to ``path`` with tEXt chunks from ``text``."""
    data = encode_png(image, text)
    with open(path, "wb") as f:
        f.write(data)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------

def _chunks(data: bytes) -> List[Tuple[bytes, bytes]]:
    """Split a PNG file into (type, payload) chunks up to IEND, checking every CRC."""
    if data[:8] != _SIGNATURE:
        raise ValueError("not a PNG file (bad signature)")
    out = []
    pos = 8
    while True:
        if pos + 12 > len(data):
            raise ValueError("truncated PNG file (no IEND chunk)")
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        if pos + 12 + n > len(data):
            raise ValueError(f"truncated PNG file (chunk {kind!r} runs past the end)")
        payload = data[pos + 8 : pos + 8 + n]
        (crc,) = struct.unpack(">I", data[pos + 8 + n : pos + 12 + n])
        if zlib.crc32(kind + payload) & 0xFFFFFFFF != crc:
            raise ValueError(f"corrupt PNG file: CRC mismatch in chunk {kind!r} at byte {pos}")
        out.append((kind, payload))
        pos += 12 + n
        if kind == b"IEND":
            return out


def _text_of(kind: bytes, payload: bytes) -> Tuple[str, str]:
    key, sep, rest = payload.partition(b"\x00")
    if not sep:
        raise ValueError(f"malformed PNG {kind.decode()} chunk (no keyword terminator)")
    try:
        if kind == b"tEXt":
            return key.decode("latin-1"), rest.decode("latin-1")
        if kind == b"zTXt":
            return key.decode("latin-1"), zlib.decompress(rest[1:]).decode("latin-1")
        # iTXt: flag, method, language\0, translated keyword\0, text
        flag, body = rest[0], rest[2:]
        _lang, _, body = body.partition(b"\x00")
        _tkey, _, body = body.partition(b"\x00")
        if flag:
            body = zlib.decompress(body)
        return key.decode("latin-1"), body.decode("utf-8")
    except (IndexError, zlib.error, UnicodeDecodeError) as e:
        raise ValueError(f"malformed PNG {kind.decode()} chunk ({e})") from None


def _read(path: PathLike) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> uint8 (H, W, 3) or (H, W); see the module docstring for what is accepted."""
    chunks = _chunks(data)
    if chunks[0][0] != b"IHDR" or len(chunks[0][1]) != 13:
        raise ValueError("malformed PNG file (IHDR must come first, 13 bytes)")
    W, H, depth, color_type, comp, filt, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    if depth != 8 or color_type not in _COLOR_TYPES or comp or filt or interlace:
        raise ValueError(f"unsupported PNG format (bit depth {depth}, colour type {color_type}, "
                         f"interlace {interlace}); only 8-bit grey/RGB, not interlaced")
    if H < 1 or W < 1:
        raise ValueError(f"malformed PNG file (size {W}x{H})")
    ch = _COLOR_TYPES[color_type]
    try:
        raw = zlib.decompress(b"".join(p for k, p in chunks if k == b"IDAT"))
    except zlib.error as e:
        raise ValueError(f"corrupt PNG pixel data ({e})") from None
    if len(raw) != H * (1 + W * ch):
        raise ValueError(f"corrupt PNG pixel data ({len(raw)} bytes, expected {H * (1 + W * ch)})")
    rows = np.frombuffer(raw, np.uint8).reshape(H, 1 + W * ch)
    bad = np.flatnonzero(rows[:, 0])
    if bad.size:
        raise ValueError(f"unsupported PNG filter type {rows[bad[0], 0]} on row {bad[0]} (only "
                         "filter 0 is read)")
    img = rows[:, 1:].copy()
    return img.reshape(H, W, 3) if ch == 3 else img


def read_png(path: PathLike) -> np.ndarray:
    """Read a PNG written by write_png: uint8 (H, W, 3) RGB or (H, W) grey."""
    return decode_png(_read(path))


def read_png_text(path: PathLike) -> Dict[str, str]:
    """Text chunks (tEXt, zTXt, iTXt) of a PNG file as {key: value}; CRCs checked."""
    out = {}
    for kind, payload in _chunks(_read(path)):
        if kind in (b"tEXt", b"zTXt", b"iTXt"):
            k, v = _text_of(kind, payload)
            out[k] = v
    return out


# --------------------------------------------------------------------------------------------
# Grid
# --------------------------------------------------------------------------------------------

def image_grid(images: np.ndarray, nrow: int, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """Tile uint8 images (N, H, W[, 3]) into one image, ``nrow`` images per row.

    Same layout as torchvision's make_grid (``nrow`` is the number of columns): the result is
    (rows*(H+pad)+pad, cols*(W+pad)+pad[, 3]) with cols = min(nrow, N), rows = ceil(N / cols);
    image i sits at row i // cols, column i % cols; borders and empty cells hold pad_value.
    """
    imgs = np.asarray(images)
    if imgs.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got dtype {imgs.dtype}")
    if imgs.ndim not in (3, 4) or (imgs.ndim == 4 and imgs.shape[3] != 3):
        raise ValueError(f"images must have shape (N, H, W) or (N, H, W, 3), got {imgs.shape}")
    if imgs.shape[0] < 1:
        raise ValueError("image_grid needs at least one image")
    for name, v, lo in (("nrow", nrow, 1), ("pad", pad, 0)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    if isinstance(pad_value, bool) or not isinstance(pad_value, (int, np.integer)) \
            or not 0 <= pad_value <= 255:
        raise ValueError(f"pad_value must be an int in [0, 255], got {pad_value!r}")
    N, H, W = imgs.shape[:3]
    cols = min(int(nrow), N)
    rows = -(-N // cols)
    grid = np.full((rows * (H + pad) + pad, cols * (W + pad) + pad) + imgs.shape[3:], pad_value,
                   np.uint8)
    for i in range(N):
        y = pad + (i // cols) * (H + pad)
        x = pad + (i % cols) * (W + pad)
        grid[y : y + H, x : x + W] = imgs[i]
    return grid
