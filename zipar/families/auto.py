"""Load an Emu3 or Chameleon / Lumina-mGPT folder by what its config.json names (the folder half
of :func:`zipar.load`, usable from the modules below the top-level package)."""

from __future__ import annotations

from ..io.errors import CheckpointError
from . import hf
from .chameleon import is_chameleon_config, load_chameleon
from .emu3 import is_emu3_config, load_emu3

__all__ = ["load_family"]


def load_family(path, **kwargs):
    """An Emu3 or Chameleon / Lumina-mGPT folder, or a repo id in the huggingface_hub cache."""
    folder = hf.resolve_folder(path, cache_dir=kwargs.pop("cache_dir", None))
    cfg = hf.read_config(folder)
    if is_emu3_config(cfg):
        return load_emu3(folder, **kwargs)
    if is_chameleon_config(cfg):
        return load_chameleon(folder, **kwargs)
    raise CheckpointError(f"{folder}: config.json describes model_type {cfg.get('model_type')!r} "
                          f"(architectures {cfg.get('architectures')!r}), not Emu3 or Chameleon "
                          "/ Lumina-mGPT")
