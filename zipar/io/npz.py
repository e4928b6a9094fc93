"""``.npz`` weight files, read with ``allow_pickle=False``; a config rides along as JSON bytes."""

from __future__ import annotations

import ast
import os
import struct
import tokenize
import zipfile
import zlib
from typing import Dict, Optional

import numpy as np

from .errors import CheckpointError

__all__ = ["read_npz", "write_npz", "read_npz_config_json", "CONFIG_NPZ_KEY"]

#: key of the uint8 array holding a zipar config as JSON bytes
CONFIG_NPZ_KEY = "__zipar_config__"
_CONFIG_NPZ_KEY = CONFIG_NPZ_KEY


# Element types a weight file may hold (npy "descr" without its byte-order mark). Object,
# structured, string and datetime arrays are refused: they are not weights.
_NPY_KINDS = {"f2", "f4", "f8", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "b1"}
_NPY_MAGIC = b"\x93NUMPY"
_MAX_NPY_HEADER = 1 << 16  # numpy itself writes < 1 KiB; it refuses > 10000 bytes unless told
# Deflate cannot expand by more than 1032:1; a member declaring more is a zip bomb or corrupt.
_MAX_DEFLATE_RATIO = 1032
_READ_CHUNK = 1 << 20


def _npy_header(path, name, head: bytes):
    """(dtype, shape, fortran_order, data offset) of an .npy member, from its first bytes."""
    if head[:6] != _NPY_MAGIC or len(head) < 10:
        raise CheckpointError(f"{path}: member {name!r} is not an .npy array (bad magic)")
    major = head[6]
    if major == 1:
        hlen, start = struct.unpack("<H", head[8:10])[0], 10
    elif major in (2, 3) and len(head) >= 12:
        hlen, start = struct.unpack("<I", head[8:12])[0], 12
    else:
        raise CheckpointError(f"{path}: member {name!r}: unsupported .npy format version "
                              f"{head[6]}.{head[7]}")
    if hlen > _MAX_NPY_HEADER:
        raise CheckpointError(f"{path}: member {name!r}: .npy header of {hlen} bytes (at most "
                              f"{_MAX_NPY_HEADER})")
    text = head[start:start + hlen]
    if len(text) != hlen:
        raise CheckpointError(f"{path}: member {name!r}: .npy header is truncated")
    try:
        header = ast.literal_eval(text.decode("utf-8" if major == 3 else "latin1"))
    except (SyntaxError, ValueError, TypeError, MemoryError, RecursionError,
            UnicodeDecodeError, tokenize.TokenError) as e:
        raise CheckpointError(f"{path}: member {name!r}: unreadable .npy header "
                              f"({type(e).__name__})") from None
    if type(header) is not dict or set(header) != {"descr", "fortran_order", "shape"}:
        raise CheckpointError(f"{path}: member {name!r}: .npy header must be a dict of descr, "
                              f"fortran_order and shape, got {header!r:.200}")
    descr, fortran, shape = header["descr"], header["fortran_order"], header["shape"]
    if type(descr) is not str or len(descr) != 3 or descr[0] not in "<>|=" \
            or descr[1:] not in _NPY_KINDS:
        raise CheckpointError(f"{path}: member {name!r}: unsupported element type {descr!r:.100} "
                              "(weights are bool, int, uint or float arrays)")
    if type(fortran) is not bool:
        raise CheckpointError(f"{path}: member {name!r}: fortran_order must be a bool")
    if type(shape) is not tuple or len(shape) > 64 or \
            any(type(n) is not int or n < 0 for n in shape):
        raise CheckpointError(f"{path}: member {name!r}: bad shape {shape!r:.200}")
    return np.dtype(descr), shape, fortran, start + hlen


def _read_member(path, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    name = info.filename
    if info.flag_bits & 1:
        raise CheckpointError(f"{path}: member {name!r} is encrypted")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise CheckpointError(f"{path}: member {name!r} uses zip compression method "
                              f"{info.compress_type}; .npz files are stored or deflated")
    if info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size:
        raise CheckpointError(f"{path}: member {name!r}: stored sizes disagree")
    if info.compress_type == zipfile.ZIP_DEFLATED and \
            info.file_size > _MAX_DEFLATE_RATIO * info.compress_size + 1024:
        raise CheckpointError(f"{path}: member {name!r} claims {info.file_size} bytes from "
                              f"{info.compress_size} compressed ones")
    with zf.open(info) as f:
        head = f.read(min(info.file_size, 12 + _MAX_NPY_HEADER))
        dtype, shape, fortran, offset = _npy_header(path, name, head)
        count = 1
        for n in shape:
            count *= n
        nbytes = count * dtype.itemsize
        # the declared size must be exactly what the member holds, before anything is allocated
        if offset + nbytes != info.file_size:
            raise CheckpointError(
                f"{path}: member {name!r} declares shape {shape} of {dtype.str} "
                f"({nbytes} bytes) but holds {info.file_size - offset} bytes of data")
        buf = bytearray(nbytes)
        view = memoryview(buf)
        have = min(len(head) - offset, nbytes)
        view[:have] = head[offset:offset + have]
        while have < nbytes:
            chunk = f.read(min(_READ_CHUNK, nbytes - have))
            if not chunk:
                raise EOFError(f"member {name!r} ends after {have} of {nbytes} bytes")
            view[have:have + len(chunk)] = chunk
            have += len(chunk)
        if f.read(1):  # also makes zipfile check the CRC of the whole member
            raise CheckpointError(f"{path}: member {name!r} is longer than its header says")
        view.release()
    arr = np.frombuffer(buf, dtype).reshape(shape, order="F" if fortran else "C")
    return arr.astype(dtype.newbyteorder("="), copy=False) if dtype.byteorder == ">" else arr


def _read_members(path: str, want) -> Dict[str, np.ndarray]:
    path = os.fspath(path)
    try:
        with zipfile.ZipFile(path) as zf:
            out = {}
            for info in zf.infolist():
                if info.is_dir():
                    continue
                if not info.filename.endswith(".npy"):
                    raise CheckpointError(f"{path}: member {info.filename!r} is not an .npy array")
                key = info.filename[:-4]
                if key in out:
                    raise CheckpointError(f"{path}: member {info.filename!r} appears twice")
                if want(key):
                    out[key] = _read_member(path, zf, info)
            return out
    except CheckpointError:
        raise
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error, RuntimeError,
            NotImplementedError, MemoryError, OverflowError, struct.error) as e:
        raise CheckpointError(f"{path}: cannot read .npz: {type(e).__name__}: {e}") from None


def _read_npz(path: str, select=None) -> Dict[str, np.ndarray]:
    """{name: array} of an .npz file (not the stored config). Headers are parsed here (never
    pickles) and each member's declared size is checked against its size in the archive before
    its array is allocated; every failure is a CheckpointError."""
    return _read_members(path, lambda k: k != _CONFIG_NPZ_KEY and (select is None or select(k)))


read_npz = _read_npz


def read_npz_config_json(path) -> Optional[str]:
    """The JSON text stored under "__zipar_config__", else None."""
    got = _read_members(path, lambda k: k == CONFIG_NPZ_KEY)
    if CONFIG_NPZ_KEY not in got:
        return None
    try:
        return got[CONFIG_NPZ_KEY].tobytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise CheckpointError(f"{path}: cannot read the stored config: {e}") from None


def write_npz(path, weights: Dict[str, np.ndarray], *, config_json: Optional[str] = None) -> None:
    """Write ``weights`` to an uncompressed .npz, with ``config_json`` (if any) as JSON bytes under
    "__zipar_config__" (a uint8 array). Note np.savez appends ".npz" to names lacking it."""
    if CONFIG_NPZ_KEY in weights:
        raise ValueError(f"{CONFIG_NPZ_KEY!r} is reserved")
    arrays = {k: np.asarray(v) for k, v in weights.items()}
    if config_json is not None:
        arrays[CONFIG_NPZ_KEY] = np.frombuffer(config_json.encode("utf-8"), np.uint8)
    np.savez(path, **arrays)  # type: ignore[arg-type]  # numpy's stub lacks **arrays
