"""``.npz`` weight files, read with ``allow_pickle=False``; a config rides along as JSON bytes."""

from __future__ import annotations

import zipfile
import zlib
from typing import Dict, Optional

import numpy as np

from .errors import CheckpointError

__all__ = ["read_npz", "write_npz", "read_npz_config_json", "CONFIG_NPZ_KEY"]

#: key of the uint8 array holding a zipar config as JSON bytes
CONFIG_NPZ_KEY = "__zipar_config__"
_CONFIG_NPZ_KEY = CONFIG_NPZ_KEY


def _read_npz(path: str, select=None) -> Dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files
                    if k != _CONFIG_NPZ_KEY and (select is None or select(k))}
    except (ValueError, OSError, zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise CheckpointError(f"{path}: cannot read .npz: {e}") from None


read_npz = _read_npz


def read_npz_config_json(path) -> Optional[str]:
    """The JSON text stored under "__zipar_config__", else None."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            if CONFIG_NPZ_KEY in npz.files:
                return npz[CONFIG_NPZ_KEY].tobytes().decode("utf-8")
    except (ValueError, OSError, zipfile.BadZipFile, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read the stored config: {e}") from None
    return None


def write_npz(path, weights: Dict[str, np.ndarray], *, config_json: Optional[str] = None) -> None:
    """Write ``weights`` to an uncompressed .npz, with ``config_json`` (if any) as JSON bytes under
    "__zipar_config__" (a uint8 array). Note np.savez appends ".npz" to names lacking it."""
    if CONFIG_NPZ_KEY in weights:
        raise ValueError(f"{CONFIG_NPZ_KEY!r} is reserved")
    arrays = {k: np.asarray(v) for k, v in weights.items()}
    if config_json is not None:
        arrays[CONFIG_NPZ_KEY] = np.frombuffer(config_json.encode("utf-8"), np.uint8)
    np.savez(path, **arrays)  # type: ignore[arg-type]  # numpy's stub lacks **arrays
