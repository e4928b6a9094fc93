"""Image token id <-> VQ codebook index, built from a checkpoint's own vocabulary.

Both Emu3 and Chameleon (Lumina-mGPT) put their image codes into the text vocabulary under
names that carry the codebook index (docs: shared spec families.md 3.1, 3.2):

- Emu3: ``<|visual token NNNNNN|>`` -> index ``int(NNNNNN)`` (32768 tokens, ids 151854 + k in
  the released vocabulary, but the map is read from the names, not from that offset);
- Chameleon: ``IMGIMG<letters>Z`` with the decimal digits of the index written as the letters
  'A'..'J' (``IMGIMGBAZ`` -> 10; 8192 tokens, ids 4..8195 in Meta's vocabulary).

Example::

    vocab = read_vocabulary("Emu3-Gen-hf")          # config.json vocabulary_map or tokenizer.json
    tmap = emu3_image_tokens(vocab)
    codes = tmap.codes(token_grid)                   # (H, W) token ids -> codebook indices
    ids = tmap.token_ids[codes]                      # and back

Everything here is plain Python / NumPy; no tokenizer library is needed.
"""

from __future__ import annotations

import json
import os
import re
from typing import Dict, Mapping

import numpy as np

from ..io.errors import CheckpointError

__all__ = ["ImageTokenMap", "emu3_image_tokens", "chameleon_image_tokens", "read_vocabulary",
           "strip_row_ends", "EMU3_VISUAL_TOKEN", "chameleon_index_from_name"]

EMU3_VISUAL_TOKEN = re.compile(r"^<\|visual token (\d{6})\|>$")
_CHAMELEON_IMAGE_TOKEN = re.compile(r"^IMGIMG([A-J]+)Z$")


class ImageTokenMap:
    """A bijection between K image token ids and the codebook indices 0..K-1.

    ``token_ids[k]`` is the vocabulary id of codebook index k (int64, shape (K,)).
    """

    def __init__(self, token_ids, family: str):
        ids = np.asarray(token_ids, dtype=np.int64)
        if ids.ndim != 1 or ids.size == 0:
            raise ValueError(f"{family}: no image tokens in the vocabulary")
        if np.unique(ids).size != ids.size:
            raise ValueError(f"{family}: two codebook indices share one token id")
        self.family = family
        self.token_ids = ids
        self.codebook_size = int(ids.size)
        self._sorted = np.sort(ids)
        self._order = np.argsort(ids, kind="stable")  # _sorted[i] = ids[_order[i]]
        # contiguous ranges (the released vocabularies) are the common case: id - offset
        first = int(ids[0])
        self.offset = first if np.array_equal(ids, first + np.arange(ids.size)) else None

    def __repr__(self):
        where = (f"ids {self.offset}..{self.offset + self.codebook_size - 1}"
                 if self.offset is not None else "non-contiguous ids")
        return f"ImageTokenMap({self.family}, K={self.codebook_size}, {where})"

    def is_image(self, tokens) -> np.ndarray:
        """Boolean mask of the entries of ``tokens`` that are image tokens."""
        t = np.asarray(tokens, dtype=np.int64)
        i = np.clip(np.searchsorted(self._sorted, t), 0, self.codebook_size - 1)
        return self._sorted[i] == t

    def codes(self, tokens) -> np.ndarray:
        """Image token ids (any shape, integers) -> codebook indices (same shape, int64).

        Raises ValueError naming the first id that is not an image token (EOL, EOI, text...).
        """
        t = np.asarray(tokens)
        if t.dtype == bool or not np.issubdtype(t.dtype, np.integer):
            raise ValueError(f"image tokens must be integers, got dtype {t.dtype}")
        t = t.astype(np.int64)
        i = np.clip(np.searchsorted(self._sorted, t), 0, self.codebook_size - 1)
        ok = self._sorted[i] == t
        if not np.all(ok):
            bad = t[~ok].ravel()[0]
            raise ValueError(f"{self.family}: token id {int(bad)} is not an image token "
                             f"({self!r}); strip EOL/EOI/EOF tokens before decoding")
        return self._order[i]

    def tokens(self, codes) -> np.ndarray:
        """Codebook indices -> image token ids (int64)."""
        c = np.asarray(codes)
        if c.dtype == bool or not np.issubdtype(c.dtype, np.integer):
            raise ValueError(f"codes must be integers, got dtype {c.dtype}")
        if c.size and (c.min() < 0 or c.max() >= self.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.codebook_size}), got "
                             f"[{c.min()}, {c.max()}]")
        return self.token_ids[c]


def strip_row_ends(tokens, H: int, W: int, eol=None) -> np.ndarray:
    """The H x W grid of an image segment laid out as H rows of (W image tokens, EOL).

    ``tokens``: the H (W + 1) ids (both families; Emu3's trailing EOF/EOI/EOS and Lumina's
    BOI/size/EOI tokens removed beforehand). With ``eol`` given, every row end must be it.
    """
    t = np.asarray(tokens)
    if t.dtype == bool or not np.issubdtype(t.dtype, np.integer):
        raise ValueError(f"tokens must be integers, got dtype {t.dtype}")
    if H < 1 or W < 1 or t.size != H * (W + 1):
        raise ValueError(f"expected {H} x {W + 1} = {H * (W + 1)} tokens (rows of W image "
                         f"tokens and an EOL), got {t.size}")
    rows = t.reshape(H, W + 1)
    if eol is not None and not np.all(rows[:, W] == eol):
        r = int(np.argmax(rows[:, W] != eol))
        raise ValueError(f"row {r} ends with token {int(rows[r, W])}, not the EOL {eol}")
    return rows[:, :W].copy()


def _collect(vocab: Mapping[str, int], index_of, family: str) -> ImageTokenMap:
    found: Dict[int, int] = {}
    for name, tid in vocab.items():
        k = index_of(name)
        if k is None:
            continue
        if not isinstance(tid, (int, np.integer)) or isinstance(tid, bool):
            raise ValueError(f"{family}: vocabulary id of {name!r} is not an integer: {tid!r}")
        if k in found and found[k] != int(tid):
            raise ValueError(f"{family}: codebook index {k} is named twice in the vocabulary")
        found[k] = int(tid)
    if not found:
        raise ValueError(f"{family}: the vocabulary has no image token names")
    K = max(found) + 1
    missing = [k for k in range(K) if k not in found]
    if missing:
        raise ValueError(f"{family}: image token names cover indices up to {K - 1} but "
                         f"{len(missing)} are missing (first: {missing[0]})")
    return ImageTokenMap([found[k] for k in range(K)], family)


def emu3_image_tokens(vocab: Mapping[str, int]) -> ImageTokenMap:
    """Emu3: ``<|visual token NNNNNN|>`` names -> index NNNNNN (as transformers' img2bpe)."""
    def index_of(name):
        m = EMU3_VISUAL_TOKEN.match(name) if isinstance(name, str) else None
        return int(m.group(1)) if m else None
    return _collect(vocab, index_of, "emu3")


def chameleon_index_from_name(name: str):
    """``IMGIMG<A-J digits>Z`` -> int index (``IMGIMGBAZ`` -> 10), else None."""
    m = _CHAMELEON_IMAGE_TOKEN.match(name) if isinstance(name, str) else None
    if not m:
        return None
    return int("".join(chr(ord(c) - ord("A") + ord("0")) for c in m.group(1)))


def chameleon_image_tokens(vocab: Mapping[str, int]) -> ImageTokenMap:
    """Chameleon / Lumina-mGPT: ``IMGIMG...Z`` names, letters A..J as the index's digits."""
    return _collect(vocab, chameleon_index_from_name, "chameleon")


# --------------------------------------------------------------------------------------------
# Reading a vocabulary (name -> id) from a checkpoint folder
# --------------------------------------------------------------------------------------------

def _read_json(path: str):
    try:
        with open(path, "r", encoding="utf-8") as f:
            return json.load(f)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read: {e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None


def _tokenizer_json_vocab(path: str) -> Dict[str, int]:
    tj = _read_json(path)
    vocab: Dict[str, int] = {}
    model = tj.get("model") if isinstance(tj, dict) else None
    if isinstance(model, dict) and isinstance(model.get("vocab"), dict):
        vocab.update(model["vocab"])
    for tok in (tj.get("added_tokens") or []) if isinstance(tj, dict) else []:
        if isinstance(tok, dict) and "content" in tok and "id" in tok:
            vocab[tok["content"]] = tok["id"]
    if not vocab:
        raise CheckpointError(f"{path}: no model.vocab or added_tokens in this tokenizer file")
    return vocab


def _emu3_tiktoken_vocab(folder: str) -> Dict[str, int]:
    """Original BAAI/Emu3-Gen: special ids follow the emu3.tiktoken ranks: <|endoftext|>,
    <|im_start|>, <|im_end|>, 205 <|extra_i|>, then the lines of emu3_vision_tokens.txt."""
    ranks = os.path.join(folder, "emu3.tiktoken")
    names = os.path.join(folder, "emu3_vision_tokens.txt")
    try:
        with open(ranks, "rb") as f:
            n = sum(1 for line in f if line.strip())
        with open(names, "r", encoding="utf-8") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError as e:
        raise CheckpointError(f"{folder}: cannot read the Emu3 vocabulary files: {e}") from None
    vocab = {"<|endoftext|>": n, "<|im_start|>": n + 1, "<|im_end|>": n + 2}
    vocab.update({f"<|extra_{i}|>": n + 3 + i for i in range(205)})
    base = n + 3 + 205
    vocab.update({name: base + i for i, name in enumerate(lines)})
    return vocab


def read_vocabulary(path) -> Dict[str, int]:
    """The name -> id vocabulary of a checkpoint folder (or of one of its files).

    Looked for, in order: config.json ``vocabulary_map`` (transformers' Emu3 / Chameleon
    configs), tokenizer.json or text_tokenizer.json (``model.vocab`` plus ``added_tokens``),
    and for the original BAAI/Emu3-Gen layout emu3.tiktoken + emu3_vision_tokens.txt. A file
    path is read as a config.json or a tokenizer file according to its content.
    """
    path = os.fspath(path)
    if os.path.isfile(path):
        data = _read_json(path)
        if isinstance(data, dict) and isinstance(data.get("vocabulary_map"), dict):
            return dict(data["vocabulary_map"])
        return _tokenizer_json_vocab(path)
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: no such file or folder")
    cfg = os.path.join(path, "config.json")
    if os.path.isfile(cfg):
        data = _read_json(cfg)
        if isinstance(data, dict) and isinstance(data.get("vocabulary_map"), dict):
            return dict(data["vocabulary_map"])
    for name in ("tokenizer.json", "text_tokenizer.json"):
        p = os.path.join(path, name)
        if os.path.isfile(p):
            return _tokenizer_json_vocab(p)
    if os.path.isfile(os.path.join(path, "emu3_vision_tokens.txt")):
        return _emu3_tiktoken_vocab(path)
    raise CheckpointError(f"{path}: no vocabulary found (config.json vocabulary_map, "
                          "tokenizer.json, text_tokenizer.json or emu3_vision_tokens.txt)")
