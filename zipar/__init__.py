"""zipar: autoregressive image generation with exact ZipAR parallel decoding on a C core.

    >>> import zipar
    >>> model = zipar.load_default()                      # built-in Fashion-MNIST model
    >>> res = model.generate([0, 1, 2], policy=zipar.ZipAR(4), seed=0)
    >>> res.tokens.shape, res.stats["forward_passes"]
"""

from __future__ import annotations

import ctypes as _ctypes
import os as _os


def _preload_openblas():
    """Load scipy-openblas32's library globally so the extension finds it in any layout."""
    try:
        import scipy_openblas32 as _sob
    except ImportError:
        return
    path = _os.path.join(_sob.get_lib_dir(), "lib" + _sob.get_library() + ".so")
    if _os.path.exists(path):
        _ctypes.CDLL(path, mode=_ctypes.RTLD_GLOBAL)


_preload_openblas()

# GNU OpenMP reads this once, when the core is loaded. Threads that sleep between parallel regions
# (PASSIVE) keep a pass fast when other processes share the cores (sweeps, notebooks, CI); with
# the default spinning policy a busy neighbour made tiny-model passes 200x slower here. Set
# OMP_WAIT_POLICY=ACTIVE before importing zipar to spin instead (best on an otherwise idle box).
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from . import _core  # noqa: E402
from .config import ModelConfig  # noqa: E402
from .model import ROLES, GenerationResult, Model, RawSession  # noqa: E402
from .policies import AdaptiveZipAR, Policy, PolicyState, Raster, ZipAR  # noqa: E402

__version__ = "0.1.0"

__all__ = ["ModelConfig", "Model", "GenerationResult", "RawSession", "Raster", "ZipAR",
           "AdaptiveZipAR", "Policy", "PolicyState", "ROLES", "show_config", "set_num_threads",
           "get_num_threads", "build_info", "load_default", "load_llamagen", "random_model"]


def build_info() -> dict:
    """Kernel instruction set, BLAS library and thread counts, as a dict."""
    return dict(_core.build_info())


def show_config() -> None:
    """Print which BLAS and OpenMP are in use and the thread counts."""
    info = build_info()
    print(f"zipar {__version__}")
    print(f"  matrix kernel : {info['kernel_isa']} (skinny products below "
          f"{info['blas_min_rows']} rows)")
    print(f"  BLAS          : {info['blas']}, {info['blas_threads']} thread(s)")
    print(f"  OpenMP        : libgomp (_OPENMP={info['openmp']}), "
          f"{get_num_threads()} thread(s), OMP_WAIT_POLICY={_os.environ.get('OMP_WAIT_POLICY')}")


def set_num_threads(n: int) -> None:
    """Set the thread count of both OpenMP (the core's kernels) and OpenBLAS."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_num_threads needs a positive int, got {n!r}")
    _core.set_num_threads(n)


def get_num_threads() -> int:
    return _core.get_num_threads()


def load_default():
    """The built-in Fashion-MNIST model (see zipar.builtin)."""
    from .builtin import load_default as _ld

    return _ld()


def load_llamagen(path, **kwargs):
    """Load a published LlamaGen checkpoint without PyTorch (see zipar.checkpoint)."""
    from .checkpoint import load_llamagen as _ll

    return _ll(path, **kwargs)


def random_model(*, dim=64, n_layer=2, n_head=4, vocab_size=64, grid=8, num_classes=10,
                 n_kv_head=None, eor=0, seed=0, scale=None, **kw) -> Model:
    """A model with random weights (for tests, benchmarks and examples)."""
    import numpy as np

    from .model import expected_weight_shapes

    cfg = ModelConfig(dim=dim, n_layer=n_layer, n_head=n_head, vocab_size=vocab_size, grid=grid,
                      num_classes=num_classes, n_kv_head=n_kv_head, eor=eor, **kw)
    rng = np.random.default_rng(seed)
    w = {}
    for name, shape in expected_weight_shapes(cfg).items():
        if name.endswith("norm.weight"):
            w[name] = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            s = scale if scale is not None else 1.0 / np.sqrt(shape[-1])
            w[name] = (s * rng.standard_normal(shape)).astype(np.float32)
    return Model(cfg, w)
