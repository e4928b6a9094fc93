"""The binding layer: loads the C extension ``zipar._core`` on first use.

Nothing in zipar imports ``zipar._core`` directly; code that needs the engine calls :func:`core`
(so should other code: a bare ``import zipar._core`` may not find OpenBLAS in an in-place build).
Importing zipar, ``zipar.io`` or the Fashion-MNIST tokenizer therefore needs neither a built
extension nor any environment change; the first model, session or thread call loads it.

Loading does two things first: it loads scipy-openblas32's library globally (so the extension
finds it in any install layout), and it sets ``OMP_WAIT_POLICY=PASSIVE`` unless the variable is
already set. GNU OpenMP reads that variable once, when the core is loaded: threads that sleep
between parallel regions keep a pass fast when other processes share the cores (sweeps,
notebooks, CI); with the default spinning policy a busy neighbour made tiny-model passes 200x
slower. Set ``OMP_WAIT_POLICY=ACTIVE`` before the first model is built to spin instead. (Inside
one forward pass the core's thread team spins between its stages for tens of microseconds, then
yields: see docs/architecture.md, "Threads".)
"""

from __future__ import annotations

import ctypes
import os
from types import ModuleType
from typing import Optional

__all__ = ["core", "const", "loaded"]

_core: Optional[ModuleType] = None


def _preload_openblas() -> None:
    try:
        import scipy_openblas32 as sob
    except ImportError:
        return
    path = os.path.join(sob.get_lib_dir(), "lib" + sob.get_library() + ".so")
    if os.path.exists(path):
        ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)


def core() -> ModuleType:
    """The C extension module, loaded on the first call."""
    global _core
    if _core is None:
        _preload_openblas()
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        from . import _core as mod

        _core = mod
    return _core


def const(name: str) -> int:
    """A ``ZP_*`` constant of csrc/zipar.h, as exported by the extension (``const("ROLE_DRAFT")``
    is ``ZP_ROLE_DRAFT``)."""
    return int(getattr(core(), "ZP_" + name))


def loaded() -> bool:
    """Whether the extension has been loaded in this process."""
    return _core is not None
