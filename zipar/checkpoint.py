"""Alias kept for one release (zipar 0.1 -> 0.2): the former zipar.checkpoint, now split into
:mod:`zipar.io` (torch.save archives, .safetensors, .npz, dtypes, container unwrapping) and
:mod:`zipar.families.llamagen` (LlamaGen config inference, loading, saving with the config, the
VQ-16 state dict). Import from those.
"""

from __future__ import annotations

from .families.llamagen import _convert_weights  # noqa: F401 (old private name)
from .families.llamagen import (VQ_DECODER_PREFIXES, grid_from_filename, infer_llamagen_config,
                                load_llamagen, read_config, read_vq_state_dict, save_npz,
                                save_safetensors)
from .io.containers import unwrap_state_dict
from .io.dtypes import bfloat16_to_float32, float32_to_bfloat16
from .io.errors import CheckpointError
from .io.formats import _sniff  # noqa: F401 (old private name)
from .io.formats import load_state_dict
from .io.safetensors import read_safetensors
from .io.torch_pickle import _LEGACY_TORCH_MAGIC  # noqa: F401 (old private name)
from .io.torch_pickle import read_torch_checkpoint

__all__ = ["CheckpointError", "read_torch_checkpoint", "unwrap_state_dict", "load_state_dict",
           "read_config", "save_npz", "save_safetensors", "read_safetensors",
           "infer_llamagen_config", "load_llamagen", "grid_from_filename", "read_vq_state_dict",
           "VQ_DECODER_PREFIXES", "bfloat16_to_float32", "float32_to_bfloat16"]
