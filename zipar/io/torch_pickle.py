"""PyTorch ``torch.save`` zip archives (torch >= 1.6) read without PyTorch, safely.

``<archive>/data.pkl`` (the pickled object tree) is read by a restricted unpickler that knows a
short allow-list of globals (the tensor-rebuild functions, storage and dtype names,
``collections.OrderedDict``). Any other global -- ``os.system``, ``builtins.eval``,
``argparse.Namespace``, anything from numpy -- raises :class:`CheckpointError` naming it, before
anything is called. Tensors come back as NumPy arrays read from ``<archive>/data/<key>`` (one raw
record per storage); no storage is read until the pickle has been fully and safely parsed.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import pickletools
import struct
import types
import zipfile
import zlib
from typing import Callable, Dict, Optional

import numpy as np

from .containers import LazyTensor, unwrap_state_dict
from .dtypes import _BF16, _DTYPE_LIST, _DTYPES, _STORAGE_DTYPES, _Dtype, bfloat16_to_float32
from .errors import CheckpointError

__all__ = ["read_torch_checkpoint"]


class _Frozen:
    """Base of every object the unpickler hands out or creates: immutable. A pickle's BUILD
    opcode (``obj.__setstate__(state)``, else setattr per slot) must not change a tensor
    description after its bounds check, nor an allow-listed object for every later load."""

    __slots__ = ()

    def _init(self, **fields):
        for k, v in fields.items():
            object.__setattr__(self, k, v)

    def __setstate__(self, state):
        raise CheckpointError(f"data.pkl tries to change {self!r} (pickle BUILD); the objects "
                              "of a checkpoint are immutable")

    def __setattr__(self, name, value):
        raise CheckpointError(f"data.pkl tries to set {name!r} on {self!r}; the objects of a "
                              "checkpoint are immutable")

    def __delattr__(self, name):
        raise CheckpointError(f"data.pkl tries to delete {name!r} of {self!r}")

    def __reduce_ex__(self, protocol):
        raise TypeError(f"{type(self).__name__} is not picklable")


class _Callable(_Frozen):
    """An allow-listed function as the unpickler returns it: callable, immutable (a plain
    function's __defaults__, __kwdefaults__ and __dict__ could be set by BUILD)."""

    __slots__ = ("name", "fn")
    name: str
    fn: Callable

    def __init__(self, name: str, fn):
        self._init(name=name, fn=fn)

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def __repr__(self):
        return f"<{self.name}>"


class _StorageType(_Frozen):
    """Stands for torch.FloatStorage & co. inside data.pkl: plain data, never callable."""

    __slots__ = ("qualname", "dtype")
    qualname: str
    dtype: _Dtype

    def __init__(self, qualname: str, dtype: _Dtype):
        self._init(qualname=qualname, dtype=dtype)

    def __repr__(self):
        return f"<storage type {self.qualname}>"


class _DtypeToken(_Frozen):
    """Stands for torch.float32 & co. (the dtype argument of _rebuild_tensor_v3)."""

    __slots__ = ("dtype",)
    dtype: _Dtype

    def __init__(self, dtype: _Dtype):
        self._init(dtype=dtype)

    def __repr__(self):
        return f"<torch.{self.dtype.torch_name}>"


class _TensorClass(_Frozen):
    """Stands for torch.Tensor / torch.nn.Parameter (the type in _rebuild_from_type_v2)."""

    __slots__ = ("qualname",)
    qualname: str

    def __init__(self, qualname: str):
        self._init(qualname=qualname)

    def __repr__(self):
        return f"<class {self.qualname}>"


class _StorageRef(_Frozen):
    """A storage record named by data.pkl: ``<archive>/data/<key>``, ``numel`` elements."""

    __slots__ = ("key", "dtype", "numel")
    key: str
    dtype: _Dtype
    numel: int

    def __init__(self, key: str, dtype: _Dtype, numel: int):
        self._init(key=key, dtype=dtype, numel=numel)

    def __repr__(self):
        return f"<storage {self.key!r}>"

    @property
    def nbytes(self) -> int:
        return self.numel * np.dtype(self.dtype.np_code).itemsize


class _TensorRef(_Frozen, LazyTensor):
    """A tensor described by data.pkl, not yet read: a strided view of one storage.

    offset and stride count elements of ``dtype`` (which differs from the storage's element
    type only for untyped storages, _rebuild_tensor_v3).
    """

    __slots__ = ("storage", "dtype", "offset", "shape", "stride")
    storage: _StorageRef
    dtype: _Dtype
    offset: int
    shape: tuple
    stride: tuple

    def __init__(self, storage, dtype, offset, shape, stride):
        self._init(storage=storage, dtype=dtype, offset=offset, shape=shape, stride=stride)

    def __repr__(self):
        return f"<tensor {self.dtype.torch_name}{list(self.shape)} in storage {self.storage.key!r}>"


# A tensor may name more elements than its storage holds only through overlapping (e.g. zero)
# strides; materialising that copies. Above this many elements it is refused (a tiny file must
# not be able to demand gigabytes).
_MAX_EXPANDED_NUMEL = 1 << 24


def _int_tuple(value, what: str) -> tuple:
    if type(value) not in (tuple, list):
        raise CheckpointError(f"tensor {what} must be a tuple of ints, got {type(value).__name__}")
    if len(value) > 64:
        raise CheckpointError(f"tensor {what} has {len(value)} dimensions; at most 64")
    for v in value:
        if type(v) is not int or v < 0:
            raise CheckpointError(f"tensor {what} must hold non-negative ints, got {value!r:.200}")
    return tuple(value)


def _check_view(key, dtype, offset, shape, stride, nbytes: int) -> int:
    """Checks a strided view (offset, shape, stride in elements of dtype) against a storage of
    nbytes bytes; returns its element count. Python ints: nothing can wrap."""
    if type(dtype) is not _Dtype or dtype not in _DTYPE_LIST:
        raise CheckpointError(f"tensor in storage {key!r} has no valid dtype ({dtype!r})")
    if type(offset) is not int or offset < 0:
        raise CheckpointError(f"bad tensor storage offset {offset!r}")
    shape, stride = _int_tuple(shape, "size"), _int_tuple(stride, "stride")
    if len(shape) != len(stride):
        raise CheckpointError(f"tensor size {shape} and stride {stride} differ in length")
    numel = 1
    for n in shape:
        numel *= n
    available = nbytes // np.dtype(dtype.np_code).itemsize  # elements of dtype in the storage
    if numel:
        needed = offset + 1 + sum((n - 1) * s for n, s in zip(shape, stride))
        if needed > available:
            raise CheckpointError(
                f"storage {key!r} holds {available} {dtype.torch_name} elements but a "
                f"tensor of size {shape}, stride {stride}, offset {offset} needs {needed}")
        if numel > available and numel > _MAX_EXPANDED_NUMEL:
            raise CheckpointError(
                f"tensor of size {shape} expands storage {key!r} ({available} "
                f"elements) to {numel} elements through overlapping strides; refusing")
    return numel


def _make_tensor_ref(storage, storage_offset, size, stride, dtype: _Dtype) -> _TensorRef:
    if type(storage) is not _StorageRef:
        raise CheckpointError(f"tensor rebuild got {type(storage).__name__} instead of a storage")
    _check_view(storage.key, dtype, storage_offset, size, stride, storage.nbytes)
    return _TensorRef(storage, dtype, storage_offset, tuple(size), tuple(stride))


# The rebuild functions below are what the restricted unpickler hands out for torch's own; they
# only describe tensors (_TensorRef) and never touch the file.

def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                       backward_hooks=None, metadata=None):
    dtype = storage.dtype if type(storage) is _StorageRef else None
    return _make_tensor_ref(storage, storage_offset, size, stride, dtype)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks,
                       dtype, metadata=None):
    if type(dtype) is not _DtypeToken:
        raise CheckpointError(f"_rebuild_tensor_v3 got dtype {dtype!r}")
    return _make_tensor_ref(storage, storage_offset, size, stride, dtype.dtype)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    if type(data) is not _TensorRef:
        raise CheckpointError(f"parameter rebuild got {type(data).__name__}, not a tensor")
    return data


def _rebuild_from_type_v2(func, new_type, args, state):
    # torch wraps the plain rebuild this way for tensor subclasses and for tensors carrying
    # Python attributes (FSDP checkpoints); the attributes (state) are dropped.
    if not any(func is f for f in _REBUILD_FUNCS):
        raise CheckpointError(f"_rebuild_from_type_v2 got function {func!r}")
    if type(new_type) is not _TensorClass:
        raise CheckpointError(f"_rebuild_from_type_v2 got type {new_type!r}")
    if not isinstance(args, tuple):
        raise CheckpointError("_rebuild_from_type_v2 got non-tuple arguments")
    return func(*args)


def _ordered_dict(*args):
    if len(args) > 1 or (args and type(args[0]) not in (list, tuple)):
        raise CheckpointError("collections.OrderedDict called with unexpected arguments")
    return collections.OrderedDict(*args)


_V2 = _Callable("torch._utils._rebuild_tensor_v2", _rebuild_tensor_v2)
_V3 = _Callable("torch._utils._rebuild_tensor_v3", _rebuild_tensor_v3)
_PARAM = _Callable("torch._utils._rebuild_parameter", _rebuild_parameter)
_REBUILD_FUNCS = (_V2, _V3, _PARAM)


def _torch_size(dims=()):
    # torch.Size appears in the attributes FSDP attaches to tensors (dropped anyway).
    return tuple(_int_tuple(dims, "torch.Size"))


def _torch_device(kind, index=None):
    if not isinstance(kind, str) or not (index is None or type(index) is int):
        raise CheckpointError(f"bad torch.device({kind!r}, {index!r})")
    return kind if index is None else f"{kind}:{index}"


# (module, name) -> the object the unpickler returns. Nothing else is ever resolved. Every value
# is immutable (_Frozen): what one file does to it cannot change how the next file loads. The
# table itself is a read-only mapping once built.
_ALLOWED: dict = {
    ("collections", "OrderedDict"): _Callable("collections.OrderedDict", _ordered_dict),
    ("torch._utils", "_rebuild_tensor_v2"): _V2,
    ("torch._utils", "_rebuild_tensor_v3"): _V3,
    ("torch._utils", "_rebuild_parameter"): _PARAM,
    ("torch._utils", "_rebuild_parameter_with_state"): _PARAM,
    ("torch._tensor", "_rebuild_from_type_v2"): _Callable("torch._tensor._rebuild_from_type_v2",
                                                          _rebuild_from_type_v2),
    ("torch", "Size"): _Callable("torch.Size", _torch_size),
    ("torch", "device"): _Callable("torch.device", _torch_device),
    ("torch.storage", "UntypedStorage"): _StorageType("torch.storage.UntypedStorage",
                                                      _DTYPES["uint8"]),
    ("torch", "UntypedStorage"): _StorageType("torch.UntypedStorage", _DTYPES["uint8"]),
}
for _name in ("torch.Tensor", "torch._tensor.Tensor", "torch.nn.parameter.Parameter",
              "torch.nn.Parameter"):
    _mod, _, _cls = _name.rpartition(".")
    _ALLOWED[(_mod, _cls)] = _TensorClass(_name)
for _name, _dt in _STORAGE_DTYPES.items():
    _ALLOWED[("torch", _name)] = _StorageType(f"torch.{_name}", _DTYPES[_dt])
for _dtype in _DTYPE_LIST:
    _ALLOWED[("torch", _dtype.torch_name)] = _DtypeToken(_dtype)
del _name, _dt, _dtype, _mod, _cls
assert all(isinstance(v, _Frozen) for v in _ALLOWED.values())
_ALLOWED_GLOBALS = types.MappingProxyType(_ALLOWED)
del _ALLOWED


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


def _scan_pickle(path: str, data: bytes) -> None:
    """Reads the opcodes of data.pkl without running any (pickletools), before unpickling:
    memo indices are bounded (the C unpickler grows its memo table to the largest index it is
    given: one 5-byte opcode could demand 30 GB), and opcodes that reach the copyreg extension
    registry or build arbitrary classes are refused outright."""
    limit = len(data) + 1  # a real pickle memoises at most one object per opcode
    try:
        for op, arg, _pos in pickletools.genops(data):
            if op.name in ("PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET") \
                    and not (isinstance(arg, int) and 0 <= arg < limit):
                raise CheckpointError(f"{path}: data.pkl uses memo index {arg!r:.40}, beyond "
                                      "any object it could have stored")
            if op.name in ("EXT1", "EXT2", "EXT4", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX"):
                raise CheckpointError(f"{path}: data.pkl uses the {op.name} opcode, which a "
                                      "state dict never needs; refusing it")
    except CheckpointError:
        raise
    except Exception as e:  # genops on a malformed stream: truncated args, unknown opcodes
        raise CheckpointError(f"{path}: corrupt data.pkl ({type(e).__name__}: {e})") from None


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
        _scan_pickle(self.path, data)
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
        # checked again here, against the bytes actually read, immediately before the view
        if type(ref) is not _TensorRef:
            raise CheckpointError(f"{self.path}: not a tensor description: {ref!r:.100}")
        numel = _check_view(ref.storage.key, ref.dtype, ref.offset, ref.shape, ref.stride,
                            raw.size)
        dt = np.dtype(ref.dtype.np_code)
        if self.byteorder == "big" and dt.itemsize > 1:
            dt = dt.newbyteorder(">")
        shape = ref.shape
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
