"""Process-wide settings of the engine: threads and build facts (``zipar.show_config()``)."""

from __future__ import annotations

import os

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
    print(f"  matrix kernel : {info['kernel_isa']} (skinny products below "
          f"{info['blas_min_rows']} rows)")
    print(f"  BLAS          : {info['blas']}, {info['blas_threads']} thread(s)")
    print(f"  OpenMP        : libgomp (_OPENMP={info['openmp']}), "
          f"{get_num_threads()} thread(s), OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")


def set_num_threads(n: int) -> None:
    """Set the thread count of both OpenMP (the core's kernels) and OpenBLAS."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_num_threads needs a positive int, got {n!r}")
    core().set_num_threads(n)


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
