"""File formats, with no dependency on the engine: torch.save archives (restricted unpickler),
.safetensors, .npz, the dtype table with the bfloat16 conversion, container unwrapping, PNG.

Everything here is NumPy only and imports without the C extension. Model-family knowledge
(which names and shapes a LlamaGen checkpoint holds) lives in zipar.families.
"""

from __future__ import annotations

from .containers import unwrap_state_dict
from .dtypes import as_float, bfloat16_to_float32, float32_to_bfloat16
from .errors import CheckpointError
from .formats import load_state_dict, read_config_json, sniff_format
from .npz import read_npz, write_npz
from .safetensors import read_safetensors, write_safetensors
from .torch_pickle import read_torch_checkpoint

__all__ = ["CheckpointError", "read_torch_checkpoint", "unwrap_state_dict", "load_state_dict",
           "read_safetensors", "write_safetensors", "read_npz", "write_npz", "read_config_json",
           "sniff_format", "bfloat16_to_float32", "float32_to_bfloat16", "as_float"]
