"""zipar: autoregressive image generation with exact ZipAR parallel decoding on a C core.

    >>> import zipar
    >>> model = zipar.load_default()                      # built-in Fashion-MNIST VQ model
    >>> res = model.generate([0, 1, 2], policy=zipar.ZipAR(4), seed=0)
    >>> res.tokens.shape, res.stats["forward_passes"]

Layers, lowest first (docs/architecture.md): the C core (csrc/) -> the binding (zipar._core,
loaded lazily by zipar._ext) -> the engine API (config, sampling, policies, session, model,
calibration, runtime) -> file formats (zipar.io, no engine dependency) and model families
(zipar.families) -> tools (zipar.reference, zipar.fmnist, zipar.sweep, the CLI). Importing
zipar loads no C code: the extension is loaded by the first model, session or thread call.
"""

from __future__ import annotations

import importlib as _importlib

from .calibration import ProxyCalibration, calibrate_proxy
from .config import ModelConfig
from .model import GenerationResult, Model, RawSession, random_model
from .policies import AdaptiveZipAR, Policy, PolicyState, Raster, ZipAR
from .runtime import __version__, build_info, get_num_threads, set_num_threads, show_config
from .sampling import Sampling

__all__ = ["ModelConfig", "Model", "GenerationResult", "RawSession", "Raster", "ZipAR",  # noqa: F822
           "AdaptiveZipAR", "Policy", "PolicyState", "ROLES", "Sampling", "show_config",
           "set_num_threads", "get_num_threads", "build_info", "load_default", "load_llamagen",
           "load_emu3", "load_chameleon", "load", "Emu3Model", "ChameleonModel", "FamilyResult",
           "random_model", "calibrate_proxy", "ProxyCalibration", "__version__"]

# Classes of the model families, reachable lazily as zipar.<name>
_FAMILY_CLASSES = {"Emu3Model": "emu3", "ChameleonModel": "chameleon", "FamilyResult": "decoder"}

# Submodules reachable as attributes without an explicit import (``zipar.sweep(...)``,
# ``zipar.vq.VQDecoder``): imported on first access.
_SUBMODULES = ("io", "families", "fmnist", "reference", "sweep", "checkpoint", "vq", "eval",
               "builtin", "tokenizer", "png", "sjd", "session", "sampling", "runtime")


def __getattr__(name):
    if name == "ROLES":  # query role names, ordered by the core's ZP_ROLE_* values
        from .session import ROLES

        return ROLES
    if name in _SUBMODULES:
        return _importlib.import_module(f".{name}", __name__)
    if name in _FAMILY_CLASSES:
        mod = _importlib.import_module(f".families.{_FAMILY_CLASSES[name]}", __name__)
        return getattr(mod, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__) | set(_SUBMODULES))


def load_default(name: str = "vq"):
    """A built-in Fashion-MNIST model (see zipar.fmnist.builtin): "vq" (default), the miniature
    LlamaGen on 16x16 VQ tokens; "pixels", the GPT on 28x28 grey-level tokens."""
    from .fmnist.builtin import load_default as _ld

    return _ld(name)


def load_llamagen(path, **kwargs):
    """Load a published LlamaGen checkpoint without PyTorch (see zipar.families.llamagen)."""
    from .families.llamagen import load_llamagen as _ll

    return _ll(path, **kwargs)


def load_emu3(path, **kwargs):
    """Load an Emu3-Gen Hugging Face folder or cached repo id (see zipar.families.emu3)."""
    from .families.emu3 import load_emu3 as _le

    return _le(path, **kwargs)


def load_chameleon(path, **kwargs):
    """Load a Chameleon / Lumina-mGPT Hugging Face folder or cached repo id
    (see zipar.families.chameleon)."""
    from .families.chameleon import load_chameleon as _lc

    return _lc(path, **kwargs)


def load(path, **kwargs):
    """Load any supported checkpoint: a Hugging Face folder (or a repo id in the huggingface_hub
    cache) whose config.json names Emu3 or Chameleon / Lumina-mGPT, else a LlamaGen file."""
    import os

    from .families import hf
    from .families.chameleon import is_chameleon_config
    from .families.emu3 import is_emu3_config
    from .io.errors import CheckpointError

    p = os.fspath(path)
    if os.path.isfile(p):
        return load_llamagen(p, **kwargs)
    folder = hf.resolve_folder(p, cache_dir=kwargs.pop("cache_dir", None))
    cfg = hf.read_config(folder)
    if is_emu3_config(cfg):
        return load_emu3(folder, **kwargs)
    if is_chameleon_config(cfg):
        return load_chameleon(folder, **kwargs)
    raise CheckpointError(f"{folder}: config.json describes model_type {cfg.get('model_type')!r} "
                          f"(architectures {cfg.get('architectures')!r}); zipar reads Emu3, "
                          "Chameleon / Lumina-mGPT folders and LlamaGen checkpoint files")
