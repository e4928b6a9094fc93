"""``.npz`` weight files, read with ``allow_pickle=False``; a config rides along as JSON bytes."""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib
from typing import Callable, Dict, Optional

import numpy as np

from .errors import CheckpointError

__all__ = ["read_npz", "write_npz", "read_npz_config_json", "CONFIG_NPZ_KEY"]

#: key of the uint8 array holding a zipar config as JSON bytes
CONFIG_NPZ_KEY = "__zipar_config__"
_CONFIG_NPZ_KEY = CONFIG_NPZ_KEY


def _map_member(f, path: str, info: zipfile.ZipInfo) -> Optional[np.ndarray]:
    """A read-only memory map of one uncompressed .npy member, else None (compressed, Fortran
    order, object dtype: read it instead)."""
    if info.compress_type != zipfile.ZIP_STORED:
        return None
    f.seek(info.header_offset)
    local = f.read(30)
    if len(local) != 30 or local[:4] != b"PK\x03\x04":
        raise CheckpointError(f"{path}: bad local header for {info.filename!r}")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    f.seek(info.header_offset + 30 + name_len + extra_len)
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version in ((2, 0), (3, 0)):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:
        return None
    if fortran or dtype.hasobject or len(shape) == 0 or 0 in shape or f.tell() % dtype.alignment:
        return None  # (an unaligned map would be copied by the Model anyway)
    return np.memmap(path, dtype=dtype, mode="r", offset=f.tell(), shape=shape)


def _read_npz(path: str, select=None, *, mmap: bool = False,
              convert: Optional[Callable[[str, np.ndarray], np.ndarray]] = None
              ) -> Dict[str, np.ndarray]:
    """The arrays of an .npz (config entry left out). ``mmap``: uncompressed members (np.savez
    writes them so) are memory-mapped, the others read. ``convert(name, array)`` replaces each
    array as soon as it is read, before the next one is."""
    out = {}
    try:
        with np.load(path, allow_pickle=False) as npz, open(path, "rb") as f:
            infos = {i.filename: i for i in npz.zip.infolist()}
            for k in npz.files:
                if k == _CONFIG_NPZ_KEY or (select is not None and not select(k)):
                    continue
                info = infos.get(k + ".npy") or infos.get(k)
                arr = _map_member(f, path, info) if mmap and info is not None else None
                if arr is None:
                    arr = npz[k]
                out[k] = arr if convert is None else convert(k, arr)
                del arr
    except (ValueError, OSError, zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise CheckpointError(f"{path}: cannot read .npz: {e}") from None
    return out


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
    "__zipar_config__" (a uint8 array); ".npz" is appended to names lacking it (as np.savez
    does). Every member is stored uncompressed with its array data 64-byte aligned in the file,
    so that readers can map it (load_llamagen does)."""
    if CONFIG_NPZ_KEY in weights:
        raise ValueError(f"{CONFIG_NPZ_KEY!r} is reserved")
    arrays = {k: np.asarray(v) for k, v in weights.items()}
    if config_json is not None:
        arrays[CONFIG_NPZ_KEY] = np.frombuffer(config_json.encode("utf-8"), np.uint8)
    path = os.fspath(path)
    if not path.endswith(".npz"):
        path += ".npz"  # as np.savez does
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in arrays.items():
            _write_aligned_member(zf, name + ".npy", arr)


_ALIGN = 64  # array data of every member starts on a 64-byte file offset: it can be mapped
_PAD_ID = 0xD935  # extra-field id of alignment padding (the one Android's zipalign uses)


def _write_aligned_member(zf: zipfile.ZipFile, name: str, arr: np.ndarray) -> None:
    """One uncompressed .npy member whose array data starts on a multiple of _ALIGN, padded
    with an extra field in the local header (np.load ignores it)."""
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.ascontiguousarray(arr), allow_pickle=False)
    data = buf.getbuffer()
    npy_header = len(data) - arr.nbytes
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    zip64 = len(data) * 1.05 > zipfile.ZIP64_LIMIT  # zipfile then adds a 20-byte extra
    assert zf.fp is not None  # open for writing
    start = zf.fp.tell() + 30 + len(name.encode("utf-8")) + (20 if zip64 else 0) + 4
    pad = -(start + npy_header) % _ALIGN
    info.extra = struct.pack("<HH", _PAD_ID, pad) + b"\0" * pad
    with zf.open(info, "w", force_zip64=zip64) as f:
        f.write(data)
