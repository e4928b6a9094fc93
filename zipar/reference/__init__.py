"""Readable Python statements of what the C core computes, used to check it.

- :mod:`zipar.reference.forward`: the float64 NumPy forward of the LlamaGen transformer with the
  slot-state KV cache, sampling, the inverse-CDF draw and Philox4x32-10 (``ReferenceModel``,
  ``sampling_probs``, ``draw``, ``philox4x32_10``, ``uniform``, ``reference_attention``), with
  keys and values as a float32 or bfloat16 K/V cache holds them (``kv_round``);
- :mod:`zipar.reference.policy`: ZipAR's scheduling rule as a Python policy (``ReferenceZipAR``)
  and the row-start proxy rule (``proxy_token``);
- :mod:`zipar.reference.sjd`: speculative Jacobi decoding on the low-level session API
  (``sjd_generate``);
- :mod:`zipar.reference.families`: the float64 NumPy forward of the Emu3 and Chameleon
  (Lumina-mGPT) decoders, their token rules and the slot-by-slot forward primitive.

Nothing here is fast, and the runtime package never imports it.
"""

from __future__ import annotations

from .forward import (SLOT_COMMITTED, SLOT_MASKED, SLOT_UNWRITTEN, ReferenceCache, ReferenceModel,
                      draw, kv_round, philox4x32_10, reference_attention, sampling_probs, uniform)
from .policy import ReferenceZipAR, proxy_token
from .sjd import sjd_generate

__all__ = ["ReferenceModel", "ReferenceCache", "SLOT_UNWRITTEN", "SLOT_MASKED", "SLOT_COMMITTED",
           "sampling_probs", "draw", "philox4x32_10", "uniform", "reference_attention",
           "kv_round", "ReferenceZipAR", "proxy_token", "sjd_generate"]
