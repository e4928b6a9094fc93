"""The dtype table of the file formats and the one bfloat16 conversion of the package.

NumPy has no bfloat16: the project carries bfloat16 as its uint16 bit patterns (the high half of
a float32), widened exactly by :func:`bfloat16_to_float32` and narrowed with round-to-nearest-even
by :func:`float32_to_bfloat16`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["bfloat16_to_float32", "float32_to_bfloat16", "as_float"]


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


_FLOAT_KINDS = (np.float32, np.float16, np.float64)


def as_float(name: str, a, dtype=np.float32) -> np.ndarray:
    """A C-contiguous ``dtype`` array of a weight (no copy when it already is one); uint16 arrays
    are bfloat16 bit patterns. TypeError for other dtypes or non-arrays."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"weight {name!r} must be a numpy array, got {type(a).__name__}")
    if a.dtype == np.uint16:
        a = bfloat16_to_float32(a)
    elif a.dtype.type not in _FLOAT_KINDS:
        raise TypeError(f"weight {name!r} has dtype {a.dtype}; expected float32, float16, "
                        "float64 or bfloat16 given as uint16")
    return np.ascontiguousarray(a, dtype=dtype)
