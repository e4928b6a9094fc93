"""Build of the zipar C extension: csrc/*.c (the core) + zipar/_core.c (the binding).

OpenBLAS comes from the PyPI wheel scipy-openblas32 (symbols prefixed ``scipy_``) when it can be
imported at build time, else from a system OpenBLAS found by pkg-config. ZIPAR_BLAS=system forces
the latter. The core is compiled with -fopenmp (libgomp) and without -march, so the wheel runs on
any x86-64; the matrix kernels pick AVX-512 / AVX2 at run time. ZIPAR_OPT overrides the
optimisation level (default -O3; tests/run_asan.sh builds with -O1, which compiles matmul.c under
the sanitizers in about 50 s instead of about 260).
"""
import glob
import os
import shlex
import subprocess
import sys

import numpy as np
from setuptools import Extension, setup


def _pkg_config(*args):
    try:
        out = subprocess.run(["pkg-config", *args, "openblas"], check=True, capture_output=True,
                             text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return shlex.split(out)


def blas_settings():
    choice = os.environ.get("ZIPAR_BLAS", "auto")
    if choice in ("auto", "scipy"):
        try:
            import scipy_openblas32 as sob

            lib_dir = sob.get_lib_dir()
            return dict(
                define_macros=[("ZP_BLAS_PREFIX", "scipy_"),
                               ("ZP_BLAS_NAME", '"scipy-openblas32"')],
                library_dirs=[lib_dir],
                libraries=[sob.get_library()],
                # installed layout: site-packages/zipar/_core*.so and
                # site-packages/scipy_openblas32/lib/libscipy_openblas.so
                runtime_library_dirs=["$ORIGIN/../scipy_openblas32/lib"],
                extra_link_args=[],
            )
        except ImportError:
            if choice == "scipy":
                sys.exit("ZIPAR_BLAS=scipy but scipy_openblas32 cannot be imported")
    libs = _pkg_config("--libs")
    if libs is None:
        sys.exit("zipar needs OpenBLAS: pip install scipy-openblas32, or install a system OpenBLAS "
                 "visible to pkg-config (Debian: apt-get install libopenblas-dev)")
    libdir = (_pkg_config("--variable=libdir") or [""])[0]
    return dict(define_macros=[("ZP_BLAS_NAME", '"openblas (system)"')], library_dirs=[],
                libraries=[], runtime_library_dirs=[libdir] if libdir else [],
                extra_link_args=libs)


def _opt_level():
    opt = os.environ.get("ZIPAR_OPT", "-O3")
    if opt not in ("-O0", "-O1", "-O2", "-O3", "-Os", "-Og"):
        sys.exit(f"ZIPAR_OPT must be one of -O0 -O1 -O2 -O3 -Os -Og, not {opt!r}")
    return opt


blas = blas_settings()
core_sources = sorted(glob.glob("csrc/*.c"))
ext = Extension(
    "zipar._core",
    sources=["zipar/_core.c"] + core_sources,
    include_dirs=["csrc", np.get_include()],
    define_macros=blas["define_macros"],
    library_dirs=blas["library_dirs"],
    libraries=blas["libraries"],
    runtime_library_dirs=blas["runtime_library_dirs"],
    extra_compile_args=[_opt_level(), "-fopenmp", "-std=gnu11", "-Wall", "-Wextra",
                        "-Wno-missing-field-initializers", "-fno-strict-aliasing"],
    extra_link_args=["-fopenmp"] + blas["extra_link_args"],
)

setup(ext_modules=[ext])
