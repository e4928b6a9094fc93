"""A 5x7 bitmap font in NumPy, enough to label PNG grids (upper-case letters, digits and a few
signs; lower case is drawn as upper case, unknown characters as '?')."""

from __future__ import annotations

from typing import Dict

import numpy as np

__all__ = ["render_text", "text_width", "GLYPH_W", "GLYPH_H"]

GLYPH_W, GLYPH_H = 5, 7

# each glyph: 7 rows of 5 bits, the leftmost pixel in bit 4
_GLYPHS: Dict[str, tuple] = {
    "A": (14, 17, 17, 31, 17, 17, 17), "B": (30, 17, 17, 30, 17, 17, 30),
    "C": (14, 17, 16, 16, 16, 17, 14), "D": (30, 17, 17, 17, 17, 17, 30),
    "E": (31, 16, 16, 30, 16, 16, 31), "F": (31, 16, 16, 30, 16, 16, 16),
    "G": (14, 17, 16, 23, 17, 17, 15), "H": (17, 17, 17, 31, 17, 17, 17),
    "I": (14, 4, 4, 4, 4, 4, 14), "J": (7, 2, 2, 2, 2, 18, 12),
    "K": (17, 18, 20, 24, 20, 18, 17), "L": (16, 16, 16, 16, 16, 16, 31),
    "M": (17, 27, 21, 21, 17, 17, 17), "N": (17, 17, 25, 21, 19, 17, 17),
    "O": (14, 17, 17, 17, 17, 17, 14), "P": (30, 17, 17, 30, 16, 16, 16),
    "Q": (14, 17, 17, 17, 21, 18, 13), "R": (30, 17, 17, 30, 20, 18, 17),
    "S": (15, 16, 16, 14, 1, 1, 30), "T": (31, 4, 4, 4, 4, 4, 4),
    "U": (17, 17, 17, 17, 17, 17, 14), "V": (17, 17, 17, 17, 17, 10, 4),
    "W": (17, 17, 17, 21, 21, 21, 10), "X": (17, 17, 10, 4, 10, 17, 17),
    "Y": (17, 17, 10, 4, 4, 4, 4), "Z": (31, 1, 2, 4, 8, 16, 31),
    "0": (14, 17, 19, 21, 25, 17, 14), "1": (4, 12, 4, 4, 4, 4, 14),
    "2": (14, 17, 1, 2, 4, 8, 31), "3": (31, 2, 4, 2, 1, 17, 14),
    "4": (2, 6, 10, 18, 31, 2, 2), "5": (31, 16, 30, 1, 1, 17, 14),
    "6": (6, 8, 16, 30, 17, 17, 14), "7": (31, 1, 2, 4, 8, 8, 8),
    "8": (14, 17, 17, 14, 17, 17, 14), "9": (14, 17, 17, 15, 1, 2, 12),
    " ": (0, 0, 0, 0, 0, 0, 0), ".": (0, 0, 0, 0, 0, 12, 12),
    ",": (0, 0, 0, 0, 12, 4, 8), ":": (0, 12, 12, 0, 12, 12, 0),
    "-": (0, 0, 0, 31, 0, 0, 0), "+": (0, 4, 4, 31, 4, 4, 0),
    "=": (0, 0, 31, 0, 31, 0, 0), "/": (0, 1, 2, 4, 8, 16, 0),
    "(": (2, 4, 8, 8, 8, 4, 2), ")": (8, 4, 2, 2, 2, 4, 8),
    "%": (24, 25, 2, 4, 8, 19, 3), "?": (14, 17, 1, 2, 4, 0, 4),
    "_": (0, 0, 0, 0, 0, 0, 31), "'": (4, 4, 8, 0, 0, 0, 0),
}
_BITMAPS = {ch: ((np.array(rows)[:, None] >> np.arange(4, -1, -1)) & 1).astype(bool)
            for ch, rows in _GLYPHS.items()}


def text_width(text: str, scale: int = 1) -> int:
    """Pixel width of one line: 6 columns per character (5 + 1 of spacing), times scale."""
    return max(0, len(text) * (GLYPH_W + 1) - 1) * scale


def render_text(text: str, scale: int = 1) -> np.ndarray:
    """A boolean mask (7*scale, text_width) of one line of text, True where ink is."""
    out = np.zeros((GLYPH_H, max(1, len(text) * (GLYPH_W + 1))), bool)
    for i, ch in enumerate(text.upper()):
        out[:, i * (GLYPH_W + 1): i * (GLYPH_W + 1) + GLYPH_W] = _BITMAPS.get(ch, _BITMAPS["?"])
    out = out[:, : max(1, text_width(text))]
    return out.repeat(scale, axis=0).repeat(scale, axis=1)
