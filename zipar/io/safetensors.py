"""``.safetensors`` files, own reader and writer: 8-byte little-endian header length, JSON header,
raw data. Nothing is ever unpickled."""

from __future__ import annotations

import json
import os
import struct
from typing import Callable, Dict, Optional

import numpy as np

from .dtypes import _BF16, _DTYPE_LIST, _ST_DTYPES, bfloat16_to_float32
from .errors import CheckpointError

__all__ = ["read_safetensors", "write_safetensors", "CONFIG_META_KEY"]

#: __metadata__ key holding a zipar config as JSON
CONFIG_META_KEY = "zipar_config"

_MAX_ST_HEADER = 100 << 20


def _st_header(f, path: str, size: int):
    head = f.read(8)
    if len(head) != 8:
        raise CheckpointError(f"{path}: too short for a safetensors file")
    (n,) = struct.unpack("<Q", head)
    if n < 2 or n > _MAX_ST_HEADER or 8 + n > size:
        raise CheckpointError(f"{path}: safetensors header length {n} is invalid for a file of "
                              f"{size} bytes; truncated or not a safetensors file")
    raw = f.read(n)

    def no_duplicates(pairs):
        d = {}
        for k, v in pairs:
            if k in d:
                raise CheckpointError(f"{path}: duplicate key {k!r} in safetensors header")
            d[k] = v
        return d

    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: safetensors header is not a JSON object")
    meta = header.pop("__metadata__", None) or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                             for k, v in meta.items()):
        raise CheckpointError(f"{path}: safetensors __metadata__ must map strings to strings")
    data_start, data_size = 8 + n, size - 8 - n
    entries = []
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise CheckpointError(f"{path}: bad safetensors entry for {name!r}: {entry!r:.200}")
        dtype = _ST_DTYPES.get(entry["dtype"]) if isinstance(entry["dtype"], str) else None
        if dtype is None:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype "
                                  f"{entry['dtype']!r}")
        shape = entry["shape"]
        offs = entry["data_offsets"]
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            raise CheckpointError(f"{path}: tensor {name!r} has bad shape {shape!r}")
        if not (isinstance(offs, list) and len(offs) == 2
                and all(type(o) is int for o in offs) and 0 <= offs[0] <= offs[1]):
            raise CheckpointError(f"{path}: tensor {name!r} has bad data_offsets {offs!r}")
        nbytes = int(np.prod(shape, dtype=object)) * np.dtype(dtype.np_code).itemsize
        if offs[1] - offs[0] != nbytes:
            raise CheckpointError(f"{path}: tensor {name!r} of shape {shape} ({dtype.st_name}) "
                                  f"needs {nbytes} bytes but data_offsets span "
                                  f"{offs[1] - offs[0]}")
        if offs[1] > data_size:
            raise CheckpointError(f"{path}: tensor {name!r} ends at byte {offs[1]} of a data "
                                  f"section of {data_size} bytes; the file is truncated")
        entries.append((name, dtype, tuple(shape), offs[0], offs[1]))
    prev_end, prev = 0, None
    for name, _, _, begin, end in sorted(entries, key=lambda t: (t[3], t[4])):
        if begin < prev_end:
            raise CheckpointError(f"{path}: tensors {prev!r} and {name!r} overlap in the file")
        prev_end, prev = max(prev_end, end), name
    return entries, meta, data_start


def read_safetensors(path, *, keep_bfloat16: bool = False, mmap: bool = False,
                     select: Optional[Callable[[str], bool]] = None):
    """Read a .safetensors file: returns ``(tensors, metadata)``; never unpickles anything.

    The header is validated (dtype, shape, offsets inside the file, sizes matching shapes, no
    overlaps). ``mmap=True`` returns read-only views of a file map; otherwise each tensor is
    read into its own array. bfloat16 becomes float32 unless ``keep_bfloat16``.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            entries, meta, data_start = _st_header(f, path, size)
            out = {}
            for name, dtype, shape, begin, end in entries:
                if select is not None and not select(name):
                    continue
                dt = np.dtype(dtype.np_code)
                if end == begin:
                    arr = np.zeros(shape, dt)
                elif mmap:
                    arr = np.memmap(path, dtype=dt, mode="r", offset=data_start + begin,
                                    shape=shape)
                else:
                    arr = np.empty(shape, dt)
                    f.seek(data_start + begin)
                    if f.readinto(arr.reshape(-1).data.cast("B")) != end - begin:
                        raise CheckpointError(f"{path}: tensor {name!r} is cut short")
                if dtype is _BF16 and not keep_bfloat16:
                    arr = bfloat16_to_float32(arr)
                out[name] = arr
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read: {e}") from None
    return out, meta


def _write_safetensors(path, tensors: Dict[str, np.ndarray], metadata: Dict[str, str]):
    header: dict = {"__metadata__": dict(metadata)} if metadata else {}
    by_np = {np.dtype(d.np_code).newbyteorder("<"): d for d in _DTYPE_LIST
             if d.st_name and d is not _BF16}
    arrays, offset = [], 0
    for name, value in tensors.items():
        arr = np.asarray(value)
        dtype = by_np.get(arr.dtype.newbyteorder("<"))
        if dtype is None:
            raise ValueError(f"cannot store {name!r} of dtype {arr.dtype} in safetensors")
        arr = np.ascontiguousarray(arr, dtype=np.dtype(dtype.np_code))
        header[name] = {"dtype": dtype.st_name, "shape": list(arr.shape),
                        "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
        arrays.append(arr)
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * (-len(blob) % 8)  # data section starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for arr in arrays:
            if arr.size:
                f.write(arr.reshape(-1).data.cast("B"))


def write_safetensors(path, weights: Dict[str, np.ndarray], *,
                      config_json: Optional[str] = None) -> None:
    """Write ``weights`` to a .safetensors file, ``config_json`` (if any) in ``__metadata__``
    under "zipar_config". Arrays keep their NumPy dtype (uint16 stays U16: bfloat16 bit patterns
    are not relabelled)."""
    meta = {"format": "np"}
    if config_json is not None:
        meta[CONFIG_META_KEY] = config_json
    _write_safetensors(os.fspath(path), weights, meta)


def read_safetensors_metadata(path) -> Dict[str, str]:
    """The ``__metadata__`` of a .safetensors file (validated header, no tensor read)."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        _, meta, _ = _st_header(f, path, os.fstat(f.fileno()).st_size)
    return meta
