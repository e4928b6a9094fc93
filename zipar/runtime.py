"""Process-wide settings of the engine: threads and build facts (``zipar.show_config()``)."""

from __future__ import annotations

import os

from ._checks import int_scalar
from ._ext import core

__all__ = ["build_info", "show_config", "set_num_threads", "get_num_threads", "read_bandwidth",
           "set_blas_min_rows", "__version__"]

__version__ = "0.1.0"


def build_info() -> dict:
    """Kernel instruction set, BLAS library and thread counts, as a dict."""
    return dict(core().build_info())


def show_config() -> None:
    """Print which BLAS and OpenMP are in use and the thread counts."""
    info = build_info()
    print(f"zipar {__version__}")
    rows = info["blas_min_rows"]
    when = ("every matrix product; OpenBLAS sgemm off" if rows >= 1 << 30 else
            f"products below {rows} rows; sgemm from {rows}")
    print(f"  matrix kernel : {info['kernel_isa']} ({when})")
    print(f"  BLAS          : {info['blas']}, {info['blas_threads']} thread(s)")
    print(f"  OpenMP        : libgomp (_OPENMP={info['openmp']}), "
          f"{get_num_threads()} thread(s), OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")


#: the most threads set_num_threads accepts (ZP_MAX_THREADS of csrc/matmul.h)
MAX_THREADS = 1024


def set_num_threads(n: int) -> None:
    """Set the thread count of both OpenMP (the core's kernels) and OpenBLAS: an int in
    [1, MAX_THREADS = 1024]. Safe while another thread generates: every pass reads the count
    once when it starts, so a change takes effect from the next pass."""
    core().set_num_threads(int_scalar("set_num_threads: the thread count", n, 1, MAX_THREADS))


def get_num_threads() -> int:
    return core().get_num_threads()


def read_bandwidth(nbytes: int, reps: int = 5) -> float:
    """Best-of-``reps`` read bandwidth in bytes per second of all engine threads over a buffer of
    ``nbytes`` (>= 4096): the memory-bound ceiling benchmarks compare passes with."""
    return core().read_bandwidth(int(nbytes), int(reps)) * 1e9


def set_blas_min_rows(m: int) -> None:
    """Send matrix products of at least ``m`` rows to OpenBLAS sgemm instead of the skinny kernel
    (whose results do not depend on the thread count; sgemm's may differ in the last bits)."""
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ValueError(f"set_blas_min_rows needs a positive int, got {m!r}")
    core().set_blas_min_rows(m)
