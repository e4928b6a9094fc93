"""Read LlamaGen checkpoints without PyTorch, safely.

Three containers are understood, recognised by their content (never by their name):

* PyTorch ``torch.save`` zip archives (torch >= 1.6): ``<archive>/data.pkl`` (the pickled
  object tree), ``<archive>/data/<key>`` (one raw record per storage), ``<archive>/byteorder``.
  ``data.pkl`` is read by a restricted unpickler that knows a short allow-list of globals (the
  tensor-rebuild functions, storage and dtype names, ``collections.OrderedDict``). Any other
  global -- ``os.system``, ``builtins.eval``, ``argparse.Namespace``, anything from numpy -- raises
  :class:`CheckpointError` naming it, before anything is called. Tensors come back as NumPy
  arrays; no storage is read until the pickle has been fully and safely parsed.
* ``.npz`` (read with ``allow_pickle=False``).
* ``.safetensors`` (own reader: 8-byte little-endian header length, JSON header, raw data).

Dtypes: float32, float16, float64 and the integer/bool types keep their dtype; bfloat16 (which
NumPy lacks) is widened exactly to float32 by default, or returned as its uint16 bit patterns
with ``keep_bfloat16=True`` (the project's "bfloat16-as-uint16" convention).

Example::

    from zipar.checkpoint import load_state_dict, infer_llamagen_config, load_llamagen
    sd = load_state_dict("c2i_XL_384.pt")                 # {name: np.ndarray}
    cfg = infer_llamagen_config(sd, grid=24)              # 384 px images -> 24x24 grid
    model = load_llamagen("c2i_XL_384.pt", grid=24)       # zipar.model.Model
"""

from __future__ import annotations

import collections
import dataclasses
import io
import json
import os
import pickle
import re
import struct
import zipfile
import zlib
from typing import Callable, Dict, NamedTuple, Optional

import numpy as np

from zipar.config import LLAMAGEN_SIZES, ModelConfig

__all__ = [
    "CheckpointError",
    "read_torch_checkpoint",
    "unwrap_state_dict",
    "load_state_dict",
    "read_config",
    "save_npz",
    "save_safetensors",
    "read_safetensors",
    "infer_llamagen_config",
    "load_llamagen",
    "grid_from_filename",
    "read_vq_state_dict",
    "VQ_DECODER_PREFIXES",
]


class CheckpointError(ValueError):
    """A checkpoint file is unreadable, corrupt, unsafe, or not what was expected."""


# ============================================================================ dtypes

class _Dtype(NamedTuple):
    torch_name: str  # "float32", "bfloat16", ...
    np_code: str     # little-endian NumPy code of the stored element; bfloat16 -> "<u2"
    st_name: str     # safetensors dtype tag ("" when safetensors has none)


_DTYPE_LIST = (
    _Dtype("float64", "<f8", "F64"),
    _Dtype("float32", "<f4", "F32"),
    _Dtype("float16", "<f2", "F16"),
    _Dtype("bfloat16", "<u2", "BF16"),
    _Dtype("int64", "<i8", "I64"),
    _Dtype("int32", "<i4", "I32"),
    _Dtype("int16", "<i2", "I16"),
    _Dtype("int8", "|i1", "I8"),
    _Dtype("uint8", "|u1", "U8"),
    _Dtype("uint16", "<u2", "U16"),
    _Dtype("uint32", "<u4", "U32"),
    _Dtype("uint64", "<u8", "U64"),
    _Dtype("bool", "|b1", "BOOL"),
    _Dtype("complex64", "<c8", ""),
    _Dtype("complex128", "<c16", ""),
)
_DTYPES = {d.torch_name: d for d in _DTYPE_LIST}
_ST_DTYPES = {d.st_name: d for d in _DTYPE_LIST if d.st_name}
_BF16 = _DTYPES["bfloat16"]

# Legacy typed-storage class names used in data.pkl (torch.FloatStorage, ...) -> element dtype.
_STORAGE_DTYPES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16", "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
    "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
}


def bfloat16_to_float32(bits: np.ndarray) -> np.ndarray:
    """Widen bfloat16 bit patterns (uint16 array) to float32, exactly."""
    out = np.asarray(bits, dtype=np.uint16).astype(np.uint32)
    out <<= 16
    return out.view(np.float32)


def float32_to_bfloat16(x: np.ndarray) -> np.ndarray:
    """Narrow float32 to bfloat16 bit patterns (uint16), round to nearest even; NaN stays NaN."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (u + (np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1)))) >> 16
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    rounded[nan] = (u[nan] >> 16) | np.uint32(0x0040)
    return rounded.astype(np.uint16)


# ============================================================================ torch pickle

class _StorageType:
    """Stands for torch.FloatStorage & co. inside data.pkl: plain data, never callable."""

    __slots__ = ("qualname", "dtype")

    def __init__(self, qualname: str, dtype: _Dtype):
        self.qualname, self.dtype = qualname, dtype

    def __repr__(self):
        return f"<storage type {self.qualname}>"


class _DtypeToken:
    """Stands for torch.float32 & co. (the dtype argument of _rebuild_tensor_v3)."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: _Dtype):
        self.dtype = dtype

    def __repr__(self):
        return f"<torch.{self.dtype.torch_name}>"


class _TensorClass:
    """Stands for torch.Tensor / torch.nn.Parameter (the type in _rebuild_from_type_v2)."""

    __slots__ = ("qualname",)

    def __init__(self, qualname: str):
        self.qualname = qualname

    def __repr__(self):
        return f"<class {self.qualname}>"


class _StorageRef:
    """A storage record named by data.pkl: ``<archive>/data/<key>``, ``numel`` elements."""

    __slots__ = ("key", "dtype", "numel")

    def __init__(self, key: str, dtype: _Dtype, numel: int):
        self.key, self.dtype, self.numel = key, dtype, numel

    @property
    def nbytes(self) -> int:
        return self.numel * np.dtype(self.dtype.np_code).itemsize


class _TensorRef:
    """A tensor described by data.pkl, not yet read: a strided view of one storage.

    offset and stride count elements of ``dtype`` (which differs from the storage's element
    type only for untyped storages, _rebuild_tensor_v3).
    """

    __slots__ = ("storage", "dtype", "offset", "shape", "stride")

    def __init__(self, storage, dtype, offset, shape, stride):
        self.storage, self.dtype = storage, dtype
        self.offset, self.shape, self.stride = offset, shape, stride

    def __repr__(self):
        return f"<tensor {self.dtype.torch_name}{list(self.shape)} in storage {self.storage.key!r}>"


# A tensor may name more elements than its storage holds only through overlapping (e.g. zero)
# strides; materialising that copies. Above this many elements it is refused (a tiny file must
# not be able to demand gigabytes).
_MAX_EXPANDED_NUMEL = 1 << 24


def _int_tuple(value, what: str) -> tuple:
    if not isinstance(value, (tuple, list)):
        raise CheckpointError(f"tensor {what} must be a tuple of ints, got {type(value).__name__}")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise CheckpointError(f"tensor {what} must hold non-negative ints, got {value!r}")
    return tuple(value)


def _make_tensor_ref(storage, storage_offset, size, stride, dtype: _Dtype) -> _TensorRef:
    if not isinstance(storage, _StorageRef):
        raise CheckpointError(f"tensor rebuild got {type(storage).__name__} instead of a storage")
    if isinstance(storage_offset, bool) or not isinstance(storage_offset, int) \
            or storage_offset < 0:
        raise CheckpointError(f"bad tensor storage offset {storage_offset!r}")
    shape, strides = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(shape) != len(strides):
        raise CheckpointError(f"tensor size {shape} and stride {strides} differ in length")
    numel = int(np.prod(shape, dtype=object)) if shape else 1
    itemsize = np.dtype(dtype.np_code).itemsize
    available = storage.nbytes // itemsize  # elements of `dtype` in the storage
    if numel:
        needed = storage_offset + 1 + sum((n - 1) * s for n, s in zip(shape, strides))
        if needed > available:
            raise CheckpointError(
                f"storage {storage.key!r} holds {available} {dtype.torch_name} elements but a "
                f"tensor of size {shape}, stride {strides}, offset {storage_offset} needs "
                f"{needed}")
        if numel > available and numel > _MAX_EXPANDED_NUMEL:
            raise CheckpointError(
                f"tensor of size {shape} expands storage {storage.key!r} ({available} "
                f"elements) to {numel} elements through overlapping strides; refusing")
    return _TensorRef(storage, dtype, storage_offset, shape, strides)


# The rebuild functions below are what the restricted unpickler hands out for torch's own; they
# only describe tensors (_TensorRef) and never touch the file.

def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    dtype = storage.dtype if isinstance(storage, _StorageRef) else None
    return _make_tensor_ref(storage, storage_offset, size, stride, dtype)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype, metadata=None):
    if not isinstance(dtype, _DtypeToken):
        raise CheckpointError(f"_rebuild_tensor_v3 got dtype {dtype!r}")
    return _make_tensor_ref(storage, storage_offset, size, stride, dtype.dtype)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    if not isinstance(data, _TensorRef):
        raise CheckpointError(f"parameter rebuild got {type(data).__name__}, not a tensor")
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    # torch wraps the plain rebuild this way for tensor subclasses and for tensors carrying
    # Python attributes (FSDP checkpoints); the attributes (state) are dropped.
    if func not in _REBUILD_FUNCS:
        raise CheckpointError(f"_rebuild_from_type_v2 got function {func!r}")
    if not isinstance(new_type, _TensorClass):
        raise CheckpointError(f"_rebuild_from_type_v2 got type {new_type!r}")
    if not isinstance(args, tuple):
        raise CheckpointError("_rebuild_from_type_v2 got non-tuple arguments")
    return func(*args)


_REBUILD_FUNCS = (_rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter)


def _torch_size(dims=()):
    # torch.Size appears in the attributes FSDP attaches to tensors (dropped anyway).
    return tuple(_int_tuple(dims, "torch.Size"))


def _torch_device(kind, index=None):
    if not isinstance(kind, str) or not (index is None or type(index) is int):
        raise CheckpointError(f"bad torch.device({kind!r}, {index!r})")
    return kind if index is None else f"{kind}:{index}"


# (module, name) -> the object the unpickler returns. Nothing else is ever resolved.
_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Size"): _torch_size,
    ("torch", "device"): _torch_device,
    ("torch.storage", "UntypedStorage"): _StorageType("torch.storage.UntypedStorage",
                                                      _DTYPES["uint8"]),
    ("torch", "UntypedStorage"): _StorageType("torch.UntypedStorage", _DTYPES["uint8"]),
}
for _name in ("torch.Tensor", "torch._tensor.Tensor", "torch.nn.parameter.Parameter",
              "torch.nn.Parameter"):
    _mod, _, _cls = _name.rpartition(".")
    _ALLOWED_GLOBALS[(_mod, _cls)] = _TensorClass(_name)
for _name, _dt in _STORAGE_DTYPES.items():
    _ALLOWED_GLOBALS[("torch", _name)] = _StorageType(f"torch.{_name}", _DTYPES[_dt])
for _dt in _DTYPE_LIST:
    _ALLOWED_GLOBALS[("torch", _dt.torch_name)] = _DtypeToken(_dt)
del _name, _dt, _mod, _cls


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickles data.pkl, resolving only the globals in _ALLOWED_GLOBALS."""

    def find_class(self, module, name):
        found = _ALLOWED_GLOBALS.get((module, name))
        if found is not None:
            return found
        if module == "torch" and (name.endswith("Storage") or name.startswith("float8")):
            raise CheckpointError(f"unsupported tensor type torch.{name} in checkpoint")
        raise CheckpointError(
            f"checkpoint references the global {module}.{name}, which is not on the allow-list "
            "of tensor-rebuild functions; refusing to load it (it could run arbitrary code). "
            "Only plain state dicts of tensors are supported.")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CheckpointError(f"unsupported persistent id {pid!r:.200} in data.pkl")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise CheckpointError(f"persistent id names {storage_type!r}, not a storage type")
        if not isinstance(key, str) or not key or "/" in key or "\\" in key:
            raise CheckpointError(f"bad storage key {key!r} in data.pkl")
        if isinstance(numel, bool) or not isinstance(numel, int) or numel < 0:
            raise CheckpointError(f"bad storage size {numel!r} for storage {key!r}")
        known = self.storages.get(key)
        if known is None:
            known = self.storages[key] = _StorageRef(key, storage_type.dtype, numel)
        elif known.dtype != storage_type.dtype or known.numel != numel:
            raise CheckpointError(f"storage {key!r} is declared twice with different types")
        return known


# ============================================================================ torch archive

_LEGACY_TORCH_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
_MAX_PICKLE_BYTES = 256 << 20  # data.pkl of a real state dict is well under 1 MB
_READ_CHUNK = 1 << 20


class _TorchArchive:
    """An open torch.save zip archive: parses data.pkl, reads storages on demand."""

    def __init__(self, path, *, mmap: bool = False):
        self.path = os.fspath(path)
        self.mmap = mmap
        try:
            self.zf = zipfile.ZipFile(self.path)
        except (zipfile.BadZipFile, zlib.error, EOFError, ValueError) as e:
            raise CheckpointError(f"{self.path}: not a readable zip archive ({e}); the file is "
                                  "truncated or corrupt") from None
        try:
            self._index()
        except BaseException:
            self.zf.close()
            raise

    def close(self):
        self.zf.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _index(self):
        names = set(self.zf.namelist())
        pickles = sorted(n for n in names if n.count("/") == 1 and n.endswith("/data.pkl"))
        if not pickles:
            raise CheckpointError(f"{self.path}: zip archive without <archive>/data.pkl; not a "
                                  "torch.save checkpoint (or a corrupt one)")
        if len(pickles) > 1:
            raise CheckpointError(f"{self.path}: several data.pkl records: {pickles}")
        self.prefix = pickles[0][: -len("data.pkl")]
        if self.prefix + "constants.pkl" in names or any(n.startswith(self.prefix + "code/")
                                                         for n in names):
            raise CheckpointError(f"{self.path}: a TorchScript archive (torch.jit.save); only "
                                  "torch.save state dicts are supported")
        self.byteorder = "little"
        if self.prefix + "byteorder" in names:
            order = self._read_small(self.prefix + "byteorder", 64).decode("ascii", "replace")
            if order.strip() not in ("little", "big"):
                raise CheckpointError(f"{self.path}: unknown byteorder record {order!r}")
            self.byteorder = order.strip()

    def _read_small(self, name: str, limit: int) -> bytes:
        info = self.zf.getinfo(name)
        if info.file_size > limit:
            raise CheckpointError(f"{self.path}: record {name} is {info.file_size} bytes, more "
                                  f"than the {limit} allowed")
        try:
            return self.zf.read(info)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError,
                NotImplementedError) as e:
            raise CheckpointError(f"{self.path}: cannot read {name}: {e}") from None

    def load_pickle(self):
        """The object tree of data.pkl, tensors as _TensorRef (nothing read yet)."""
        data = self._read_small(self.prefix + "data.pkl", _MAX_PICKLE_BYTES)
        unpickler = _RestrictedUnpickler(io.BytesIO(data))
        unpickler.storages = {}
        try:
            return unpickler.load()
        except CheckpointError as e:
            raise CheckpointError(f"{self.path}: {e}") from None
        except Exception as e:  # anything else the pickle machinery raises on corrupt input
            raise CheckpointError(f"{self.path}: corrupt data.pkl ({type(e).__name__}: {e})") \
                from None

    # ---- storages
    def read_storage(self, storage: _StorageRef) -> np.ndarray:
        """The raw bytes of one storage as a 1-D uint8 array (writable, or a read-only map)."""
        name = f"{self.prefix}data/{storage.key}"
        try:
            info = self.zf.getinfo(name)
        except KeyError:
            raise CheckpointError(f"{self.path}: storage record {name!r} is missing; the archive "
                                  "is truncated or corrupt") from None
        if info.file_size != storage.nbytes:
            raise CheckpointError(
                f"{self.path}: storage record {name!r} holds {info.file_size} bytes but data.pkl "
                f"declares {storage.numel} {storage.dtype.torch_name} elements "
                f"({storage.nbytes} bytes); the archive is corrupt")
        if storage.nbytes == 0:
            return np.zeros(0, np.uint8)
        stored = info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 1
        if stored and self.mmap:
            return np.memmap(self.path, dtype=np.uint8, mode="r", offset=self._data_offset(info),
                             shape=(info.file_size,))
        buf = bytearray(info.file_size)
        try:
            if stored:  # torch's records: read straight into place, then check the CRC
                with open(self.path, "rb") as f:
                    f.seek(self._data_offset(info))
                    got = f.readinto(buf)
                if got != len(buf):
                    raise EOFError(f"record ends after {got} of {len(buf)} bytes")
                if zlib.crc32(buf) != info.CRC:
                    raise zipfile.BadZipFile(f"Bad CRC-32 for file {name!r}")
            else:
                self._inflate(info, buf)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError,
                NotImplementedError) as e:
            raise CheckpointError(f"{self.path}: cannot read storage record {name!r}: {e}") \
                from None
        return np.frombuffer(buf, np.uint8)

    def _inflate(self, info: zipfile.ZipInfo, buf: bytearray):
        # Compressed records (torch never writes them, other zip tools might): in small chunks.
        view = memoryview(buf)
        try:
            with self.zf.open(info) as f:
                pos = 0
                while pos < len(buf):
                    chunk = f.read(min(_READ_CHUNK, len(buf) - pos))
                    if not chunk:
                        raise EOFError(f"record ends after {pos} of {len(buf)} bytes")
                    view[pos:pos + len(chunk)] = chunk
                    pos += len(chunk)
                f.read(1)  # reach the end of the record so zipfile checks the CRC
        finally:
            view.release()

    def _data_offset(self, info: zipfile.ZipInfo) -> int:
        """Where a record's bytes start: after its local header (which may differ in length
        from the central directory's copy)."""
        # Local file header: signature, 5 x u16, 3 x u32, name length u16, extra length u16.
        with open(self.path, "rb") as f:
            f.seek(info.header_offset)
            header = f.read(30)
            size = os.fstat(f.fileno()).st_size
        if len(header) != 30 or header[:4] != b"PK\x03\x04":
            raise CheckpointError(f"{self.path}: bad local header for {info.filename!r}; the "
                                  "archive is corrupt")
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        start = info.header_offset + 30 + name_len + extra_len
        if start + info.file_size > size:
            raise CheckpointError(f"{self.path}: storage record {info.filename!r} runs past the "
                                  "end of the file; the archive is truncated")
        return start

    def materialize(self, refs: Dict[str, _TensorRef], *, keep_bfloat16: bool = False
                    ) -> Dict[str, np.ndarray]:
        """Read the storages behind ``refs`` (each once, one at a time) and build the arrays."""
        by_storage: Dict[str, list] = {}
        for name, ref in refs.items():
            by_storage.setdefault(ref.storage.key, []).append(name)
        out = {}
        for names in by_storage.values():
            raw = self.read_storage(refs[names[0]].storage)
            for name in names:
                out[name] = self._build(raw, refs[name], keep_bfloat16)
            del raw  # the storage lives on only through views into it
        return {name: out[name] for name in refs}

    def _build(self, raw: np.ndarray, ref: _TensorRef, keep_bfloat16: bool) -> np.ndarray:
        dt = np.dtype(ref.dtype.np_code)
        if self.byteorder == "big" and dt.itemsize > 1:
            dt = dt.newbyteorder(">")
        shape, numel = ref.shape, int(np.prod(ref.shape, dtype=np.int64))
        if numel == 0:
            arr = np.zeros(shape, dt)
        else:
            flat = raw[: raw.size // dt.itemsize * dt.itemsize].view(dt)
            if _is_c_contiguous(shape, ref.stride):
                arr = flat[ref.offset: ref.offset + numel].reshape(shape)
            else:
                arr = np.lib.stride_tricks.as_strided(
                    flat[ref.offset:], shape, [s * dt.itemsize for s in ref.stride],
                    writeable=False).copy()
        if dt.byteorder == ">":
            arr = arr.astype(dt.newbyteorder("="))
        if ref.dtype is _BF16 and not keep_bfloat16:
            arr = bfloat16_to_float32(arr)
        return arr


def _is_c_contiguous(shape, stride) -> bool:
    expected = 1
    for n, s in zip(reversed(shape), reversed(stride)):
        if n != 1 and s != expected:
            return False
        expected *= n
    return True


def _collect_refs(obj, found: list, depth: int = 0):
    if depth > 64:
        return
    if isinstance(obj, _TensorRef):
        found.append(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            _collect_refs(v, found, depth + 1)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _collect_refs(v, found, depth + 1)


def _substitute(obj, arrays: dict, depth: int = 0):
    if depth > 64:  # as deep as _collect_refs looks
        return obj
    if isinstance(obj, _TensorRef):
        return arrays[id(obj)]
    if isinstance(obj, dict):
        return type(obj)((k, _substitute(v, arrays, depth + 1)) for k, v in obj.items())
    if isinstance(obj, list):
        return [_substitute(v, arrays, depth + 1) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_substitute(v, arrays, depth + 1) for v in obj)
    return obj


def read_torch_checkpoint(path, *, unwrap: bool = True, keep_bfloat16: bool = False,
                          mmap: bool = False, select: Optional[Callable[[str], bool]] = None):
    """Read a ``torch.save`` zip archive (torch >= 1.6) without PyTorch.

    Returns ``{name: np.ndarray}``: the state dict found by :func:`unwrap_state_dict` (top level
    or under "model" / "module" / "state_dict", "module." and "_orig_mod." prefixes stripped,
    "freqs_cis" and non-tensor entries dropped). With ``unwrap=False`` the whole pickled object
    tree is returned instead, every tensor replaced by an array.

    ``select(name)`` keeps only the tensors it accepts; the others are never read.
    ``keep_bfloat16``: return bfloat16 tensors as uint16 bit patterns instead of float32.
    ``mmap``: map uncompressed storage records straight from the file (read-only arrays, no
    copy, no CRC check) instead of reading them into memory.

    Each storage record is read once; tensors sharing it are views into it (strided, i.e.
    non-contiguous tensors are copied), so peak memory stays near one copy of the weights.
    Raises :class:`CheckpointError` for the legacy pre-1.6 format, unsafe pickles, truncated or
    corrupt archives and missing or short storage records.
    """
    path = os.fspath(path)
    _check_not_legacy(path)
    with _TorchArchive(path, mmap=mmap) as archive:
        tree = archive.load_pickle()
        if unwrap:
            refs = unwrap_state_dict(tree, path=path)
            if select is not None:
                refs = {k: v for k, v in refs.items() if select(k)}
            return archive.materialize(refs, keep_bfloat16=keep_bfloat16)
        found: list = []
        _collect_refs(tree, found)
        unique = {id(r): r for r in found}
        arrays = archive.materialize({str(i): r for i, r in unique.items()},
                                     keep_bfloat16=keep_bfloat16)
        return _substitute(tree, {int(k): v for k, v in arrays.items()})


def _check_not_legacy(path: str):
    try:
        with open(path, "rb") as f:
            head = f.read(len(_LEGACY_TORCH_MAGIC))
    except OSError as e:
        raise CheckpointError(f"{path}: cannot open: {e}") from None
    if head.startswith(_LEGACY_TORCH_MAGIC):
        raise CheckpointError(f"{path}: legacy (pre-1.6, non-zip) torch.save format; only the "
                              "zip format written by torch >= 1.6 is supported. Re-save it with "
                              "a recent torch: torch.save(torch.load(p), p)")


# ============================================================================ state dicts

_WRAPPER_KEYS = ("model", "module", "state_dict")
_KEY_PREFIXES = ("module.", "_orig_mod.")
_DROPPED_KEYS = ("freqs_cis",)


def _is_tensor(v) -> bool:
    return isinstance(v, (np.ndarray, _TensorRef))


def unwrap_state_dict(obj, *, path: str = "checkpoint") -> dict:
    """Find the state dict in a loaded checkpoint and normalise its keys.

    Descends into "model", "module" or "state_dict" (first found, repeatedly) while that entry
    is a dict; strips the prefixes "module." and "_orig_mod." (repeatedly, in any order); drops
    "freqs_cis" (recomputed by the model) and every non-tensor entry. Raises
    :class:`CheckpointError` when nothing tensor-like is left or two keys collide.
    """
    for _ in range(8):
        if not isinstance(obj, dict):
            raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    out = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not _is_tensor(value):
            continue
        name = key
        while name.startswith(_KEY_PREFIXES):
            name = name.split(".", 1)[1]
        if name in _DROPPED_KEYS:
            continue
        if name in out:
            raise CheckpointError(f"{path}: keys collide after stripping prefixes: {key!r} -> "
                                  f"{name!r}")
        out[name] = value
    if not out:
        keys = [str(k) for k in list(obj)[:10]]
        raise CheckpointError(f"{path}: no tensors found in the state dict (keys: {keys})")
    return out


# ============================================================================ safetensors

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
    for name, e in header.items():
        if not isinstance(e, dict) or set(e) != {"dtype", "shape", "data_offsets"}:
            raise CheckpointError(f"{path}: bad safetensors entry for {name!r}: {e!r:.200}")
        dtype = _ST_DTYPES.get(e["dtype"]) if isinstance(e["dtype"], str) else None
        if dtype is None:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {e['dtype']!r}")
        shape = e["shape"]
        offs = e["data_offsets"]
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
                    if f.readinto(memoryview(arr.reshape(-1)).cast("B")) != end - begin:
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
                f.write(memoryview(arr.reshape(-1)).cast("B"))


# ============================================================================ containers

_CONFIG_NPZ_KEY = "__zipar_config__"
_CONFIG_META_KEY = "zipar_config"


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


def _read_npz(path: str, select=None) -> Dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files
                    if k != _CONFIG_NPZ_KEY and (select is None or select(k))}
    except (ValueError, OSError, zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise CheckpointError(f"{path}: cannot read .npz: {e}") from None


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


def read_config(path) -> Optional[ModelConfig]:
    """The ModelConfig stored by :func:`save_npz` / :func:`save_safetensors`, else None."""
    path = os.fspath(path)
    kind = _sniff(path)
    text = None
    if kind == "npz":
        try:
            with np.load(path, allow_pickle=False) as npz:
                if _CONFIG_NPZ_KEY in npz.files:
                    text = npz[_CONFIG_NPZ_KEY].tobytes().decode("utf-8")
        except (ValueError, OSError, zipfile.BadZipFile, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path}: cannot read the stored config: {e}") from None
    elif kind == "safetensors":
        with open(path, "rb") as f:
            _, meta, _ = _st_header(f, path, os.fstat(f.fileno()).st_size)
        text = meta.get(_CONFIG_META_KEY)
    if text is None:
        return None
    try:
        return ModelConfig.from_dict(json.loads(text))
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: stored config is invalid: {e}") from None


def _config_json(config: Optional[ModelConfig]) -> Optional[str]:
    return None if config is None else json.dumps(config.to_dict(), sort_keys=True)


def save_npz(path, config: Optional[ModelConfig], weights: Dict[str, np.ndarray]) -> None:
    """Write ``weights`` to an uncompressed .npz, with ``config`` as JSON bytes under
    "__zipar_config__" (a uint8 array). Note np.savez appends ".npz" to names lacking it."""
    if _CONFIG_NPZ_KEY in weights:
        raise ValueError(f"{_CONFIG_NPZ_KEY!r} is reserved")
    arrays = {k: np.asarray(v) for k, v in weights.items()}
    text = _config_json(config)
    if text is not None:
        arrays[_CONFIG_NPZ_KEY] = np.frombuffer(text.encode("utf-8"), np.uint8)
    np.savez(path, **arrays)


def save_safetensors(path, config: Optional[ModelConfig], weights: Dict[str, np.ndarray]
                     ) -> None:
    """Write ``weights`` to a .safetensors file, ``config`` as JSON in ``__metadata__``
    ("zipar_config"). Arrays keep their NumPy dtype (uint16 stays U16: bfloat16 bit patterns
    are not relabelled)."""
    meta = {"format": "np"}
    text = _config_json(config)
    if text is not None:
        meta[_CONFIG_META_KEY] = text
    _write_safetensors(os.fspath(path), weights, meta)


# ============================================================================ LlamaGen config

_LAYER_KEY = re.compile(r"^layers\.(\d+)\.")


def infer_llamagen_config(state_dict: Dict[str, np.ndarray], *, grid=None,
                          n_head: Optional[int] = None,
                          num_classes: Optional[int] = None) -> ModelConfig:
    """Infer a LlamaGen GPT's ModelConfig from the shapes in its state dict.

    dim and vocab_size come from tok_embeddings, n_layer from the layers.{i} keys, hidden from
    feed_forward.w1, n_kv_head from attention.wqkv. n_head is not visible in the shapes: it is
    looked up in LLAMAGEN_SIZES by (n_layer, dim), else ``n_head`` must be given.

    ``grid`` is not visible either: it defaults to 16 (256x256 images); pass ``grid=24`` for
    the 384 px checkpoints (c2i_*_384.pt) and 32 for t2i_XL_stage2_512.pt.

    c2i: num_classes = rows of cls_embedding.embedding_table - 1 (the last row is the null
    class for guidance); a given ``num_classes`` is checked against it.
    t2i (cls_embedding.cap_proj.fc1.weight present): caption_dim from fc1's width,
    cls_token_num from uncond_embedding's rows (120), and num_classes = 1 since there is no
    class table (the field is unused for t2i).
    """
    def shape_of(name: str, ndim: int) -> tuple:
        if name not in state_dict:
            raise CheckpointError(f"not a LlamaGen GPT state dict: {name!r} is missing")
        s = tuple(np.shape(state_dict[name]))
        if len(s) != ndim:
            raise CheckpointError(f"{name} has shape {s}, expected {ndim} dimensions")
        return s

    vocab_size, dim = shape_of("tok_embeddings.weight", 2)
    layers = {int(m.group(1)) for k in state_dict if (m := _LAYER_KEY.match(k))}
    if not layers:
        raise CheckpointError("not a LlamaGen GPT state dict: no layers.{i}.* keys")
    n_layer = max(layers) + 1
    if len(layers) != n_layer:
        missing = sorted(set(range(n_layer)) - layers)
        raise CheckpointError(f"layers {missing} are missing from the state dict")

    if n_head is None:
        matches = [(name, h) for name, (nl, h, d) in LLAMAGEN_SIZES.items()
                   if (nl, d) == (n_layer, dim)]
        if not matches:
            raise CheckpointError(
                f"n_layer={n_layer}, dim={dim} match no LlamaGen size ({', '.join(LLAMAGEN_SIZES)})"
                "; the head count is not visible in the weights: pass n_head=")
        n_head = matches[0][1]
    if dim % n_head:
        raise CheckpointError(f"dim {dim} is not divisible by n_head {n_head}")
    head_dim = dim // n_head

    wqkv = shape_of("layers.0.attention.wqkv.weight", 2)
    hidden = shape_of("layers.0.feed_forward.w1.weight", 2)[0]
    if wqkv[1] != dim or wqkv[0] % head_dim or (wqkv[0] // head_dim - n_head) % 2 \
            or wqkv[0] // head_dim <= n_head:
        raise CheckpointError(f"attention.wqkv.weight has shape {wqkv}; with dim {dim} and "
                              f"n_head {n_head} it should be ((n_head + 2*n_kv_head) * "
                              f"{head_dim}, {dim})")
    n_kv_head = (wqkv[0] // head_dim - n_head) // 2
    expected = {
        "attention_norm.weight": (dim,), "attention.wqkv.weight": wqkv,
        "attention.wo.weight": (dim, dim), "ffn_norm.weight": (dim,),
        "feed_forward.w1.weight": (hidden, dim), "feed_forward.w3.weight": (hidden, dim),
        "feed_forward.w2.weight": (dim, hidden),
    }
    for i in range(n_layer):
        for suffix, want in expected.items():
            name = f"layers.{i}.{suffix}"
            if name in state_dict and tuple(np.shape(state_dict[name])) != want:
                raise CheckpointError(f"{name} has shape {tuple(np.shape(state_dict[name]))}, "
                                      f"expected {want}")
    for name, want in (("norm.weight", (dim,)), ("output.weight", (vocab_size, dim))):
        if name in state_dict and tuple(np.shape(state_dict[name])) != want:
            raise CheckpointError(f"{name} has shape {tuple(np.shape(state_dict[name]))}, "
                                  f"expected {want}")

    caption_dim, cls_token_num = 0, 1
    if "cls_embedding.cap_proj.fc1.weight" in state_dict:  # t2i
        fc1 = shape_of("cls_embedding.cap_proj.fc1.weight", 2)
        if fc1[0] != dim:
            raise CheckpointError(f"cls_embedding.cap_proj.fc1.weight has shape {fc1}, "
                                  f"expected ({dim}, caption_dim)")
        caption_dim = fc1[1]
        cls_token_num = 120
        if "cls_embedding.uncond_embedding" in state_dict:
            rows, width = shape_of("cls_embedding.uncond_embedding", 2)
            if width != caption_dim:
                raise CheckpointError(f"cls_embedding.uncond_embedding is ({rows}, {width}), "
                                      f"expected (n, {caption_dim})")
            cls_token_num = rows
        if num_classes not in (None, 1):
            raise CheckpointError("a t2i checkpoint has no class table; num_classes must be "
                                  "left out (it is set to 1)")
        num_classes = 1
    else:
        rows, width = shape_of("cls_embedding.embedding_table.weight", 2)
        if width != dim:
            raise CheckpointError(f"cls_embedding.embedding_table.weight is ({rows}, {width}), "
                                  f"expected (num_classes + 1, {dim})")
        if num_classes is not None and num_classes != rows - 1:
            raise CheckpointError(f"the class table has {rows} rows = num_classes + 1 (null "
                                  f"class), so num_classes is {rows - 1}, not {num_classes}")
        num_classes = rows - 1
        if num_classes < 1:
            raise CheckpointError(f"the class table has {rows} rows; need num_classes + 1 >= 2")

    try:
        return ModelConfig(dim=dim, n_layer=n_layer, n_head=n_head, vocab_size=vocab_size,
                           grid=16 if grid is None else grid, num_classes=num_classes,
                           n_kv_head=n_kv_head, cls_token_num=cls_token_num, hidden=hidden,
                           caption_dim=caption_dim)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"inferred an invalid config: {e}") from None


# ============================================================================ loaders

_LOAD_DTYPES = ("float32", "float16", "bfloat16")
# Buffers LlamaGen creates at inference time (setup_caches); a model saved after sampling
# carries them. They are not weights: never read, never passed to the Model.
_RUNTIME_BUFFER = re.compile(r"(^|\.)kv_cache\.[kv]_cache$|^causal_mask$")


def _convert_weights(weights: Dict[str, np.ndarray], dtype: str) -> Dict[str, np.ndarray]:
    # In place, tensor by tensor, so the old copy of each is freed as the next is made.
    for name in list(weights):
        arr = weights[name]
        if arr.dtype == np.uint16 and dtype == "bfloat16":
            continue  # already bfloat16 bit patterns (read with keep_bfloat16)
        if arr.dtype.kind != "f":
            continue  # integer buffers stay as they are
        if dtype == "bfloat16":
            weights[name] = float32_to_bfloat16(arr)
        elif arr.dtype != dtype:
            weights[name] = arr.astype(dtype)
    return weights


# Image size tags in the published file names (c2i_L_384.pt, t2i_XL_stage2_512.pt) -> grid side
# (image size / 16). "_384" must not be followed by another digit ("_3840" is no tag).
_GRID_TAG = re.compile(r"_(256|384|512)(?![0-9])")
_GRID_OF_TAG = {"256": 16, "384": 24, "512": 32}


def grid_from_filename(path) -> Optional[int]:
    """Grid side implied by an image-size tag in a checkpoint's file name, else None.

    ``c2i_B_256.pt`` -> 16, ``c2i_L_384.pt`` -> 24, ``t2i_XL_stage2_512.pt`` -> 32. Only the
    base name is looked at; a name with two different tags is ambiguous (None).
    """
    tags = {_GRID_OF_TAG[m] for m in _GRID_TAG.findall(os.path.basename(os.fsdecode(path)))}
    return tags.pop() if len(tags) == 1 else None


def load_llamagen(path, *, grid=None, n_head: Optional[int] = None,
                  num_classes: Optional[int] = None, dtype: str = "float32"):
    """Load a LlamaGen GPT checkpoint (torch.save, .npz or .safetensors) as a zipar Model.

    KV-cache buffers (``*.kv_cache.k_cache``, ``causal_mask``) are skipped. The config is the
    one stored by save_npz / save_safetensors if present (``grid``,
    ``n_head`` and ``num_classes`` override it), else :func:`infer_llamagen_config`. The grid is
    not visible in the weights: when ``grid`` is None and no config is stored, it comes from
    the file name's image-size tag as in the published names (``_256`` -> 16, ``_384`` -> 24,
    ``_512`` -> 32; see :func:`grid_from_filename`), else it defaults to 16. Pass ``grid=``
    for files renamed without the tag.

    ``dtype`` is what every floating-point weight is converted to before the Model is built:
    "float32" (default; bfloat16 and float16 checkpoints are widened exactly), "float16", or
    "bfloat16" (as uint16 bit patterns; bfloat16 checkpoints keep their stored bits). The
    current Model computes in float32 and widens narrow weights itself (a float32 copy), so
    "float32" is the choice that does not hold two copies.
    """
    if dtype not in _LOAD_DTYPES:
        raise ValueError(f"dtype must be one of {_LOAD_DTYPES}, got {dtype!r}")
    weights = load_state_dict(path, keep_bfloat16=(dtype == "bfloat16"),
                              select=lambda k: not _RUNTIME_BUFFER.search(k))
    config = read_config(path)
    if config is None:
        if grid is None and isinstance(path, (str, bytes, os.PathLike)):
            grid = grid_from_filename(path)
        config = infer_llamagen_config(weights, grid=grid, n_head=n_head,
                                       num_classes=num_classes)
    else:
        overrides = {k: v for k, v in (("grid", grid), ("n_head", n_head),
                                       ("num_classes", num_classes)) if v is not None}
        if overrides:
            config = dataclasses.replace(config, **overrides)
    weights = _convert_weights(weights, dtype)
    from zipar.model import Model  # imported here: this module must not need the C core

    return Model(config, weights)


VQ_DECODER_PREFIXES = ("decoder.", "post_quant_conv.", "quantize.embedding.weight")


def read_vq_state_dict(path, *, mmap: bool = False) -> Dict[str, np.ndarray]:
    """The decoder half of a LlamaGen VQ tokenizer checkpoint (vq_ds16_*.pt).

    Returns the tensors whose names start with "decoder.", "post_quant_conv." or equal
    "quantize.embedding.weight" (the codebook, not yet L2-normalised); encoder tensors are
    never read. bfloat16 is widened to float32.
    """
    weights = load_state_dict(path, mmap=mmap,
                              select=lambda k: k.startswith(VQ_DECODER_PREFIXES))
    if "quantize.embedding.weight" not in weights or not any(k.startswith("decoder.")
                                                            for k in weights):
        raise CheckpointError(f"{os.fspath(path)}: not a VQ tokenizer checkpoint (no codebook "
                              "quantize.embedding.weight or no decoder.* tensors)")
    return weights
