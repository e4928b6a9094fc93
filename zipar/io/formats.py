"""Format sniffing (from the content, never the name) and the one entry point
:func:`load_state_dict` over torch.save archives, .npz and .safetensors."""

from __future__ import annotations

import os
import zipfile
import zlib
from typing import Callable, Dict, Optional

import numpy as np

from .containers import unwrap_state_dict
from .errors import CheckpointError
from .npz import _read_npz, read_npz_config_json
from .safetensors import CONFIG_META_KEY, read_safetensors, read_safetensors_metadata
from .torch_pickle import _LEGACY_TORCH_MAGIC, _check_not_legacy, read_torch_checkpoint

__all__ = ["sniff_format", "load_state_dict", "read_config_json"]


def _sniff(path: str) -> str:
    """"torch", "npz" or "safetensors", from the file's content."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot open: {e}") from None
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, zlib.error, EOFError, ValueError) as e:
            raise CheckpointError(f"{path}: not a readable zip archive ({e}); the file is "
                                  "truncated or corrupt") from None
        if any(n.endswith("data.pkl") for n in names):
            return "torch"
        if names and all(n.endswith(".npy") for n in names):
            return "npz"
        raise CheckpointError(f"{path}: zip archive that is neither a torch.save checkpoint "
                              "(no data.pkl) nor an .npz file")
    if len(head) >= 9 and head[8:9] == b"{" and head[4:8] == b"\0\0\0\0":
        return "safetensors"  # u64 header length (< 4 GiB), then the JSON header
    if path.endswith(".safetensors") and len(head) >= 8:
        return "safetensors"  # malformed: let the reader say what is wrong with it
    if head.startswith(_LEGACY_TORCH_MAGIC):
        _check_not_legacy(path)
    if head[:1] == b"\x80":
        raise CheckpointError(f"{path}: a bare pickle file, not a torch.save zip archive; "
                              "refusing to unpickle it")
    raise CheckpointError(f"{path}: unrecognised format (starts with {head[:8]!r}); expected a "
                          "torch.save zip archive, .npz or .safetensors")


sniff_format = _sniff


def load_state_dict(path, *, keep_bfloat16: bool = False, mmap: bool = False,
                    select: Optional[Callable[[str], bool]] = None) -> Dict[str, np.ndarray]:
    """Load ``{name: np.ndarray}`` from a torch.save archive, .npz or .safetensors file.

    The format is recognised from the content. Keys are normalised as in
    :func:`unwrap_state_dict`; ``select``, ``keep_bfloat16`` and ``mmap`` are as in
    :func:`read_torch_checkpoint` (``mmap`` is ignored for .npz). Nothing is ever unpickled
    except through the restricted torch unpickler.
    """
    path = os.fspath(path)
    kind = _sniff(path)
    if kind == "torch":
        return read_torch_checkpoint(path, keep_bfloat16=keep_bfloat16, mmap=mmap,
                                     select=select)
    if kind == "npz":
        tensors = _read_npz(path)
    else:
        tensors, _ = read_safetensors(path, keep_bfloat16=keep_bfloat16, mmap=mmap)
    tensors = unwrap_state_dict(tensors, path=path)
    if select is not None:
        tensors = {k: v for k, v in tensors.items() if select(k)}
    return tensors


def read_config_json(path) -> Optional[str]:
    """The zipar config JSON stored in an .npz or .safetensors file by zipar, else None."""
    path = os.fspath(path)
    kind = _sniff(path)
    if kind == "npz":
        return read_npz_config_json(path)
    if kind == "safetensors":
        return read_safetensors_metadata(path).get(CONFIG_META_KEY)
    return None
