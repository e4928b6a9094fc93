"""The LlamaGen family: checkpoint facts (docs/llamagen.md) on top of the file formats of zipar.io.

- :func:`infer_llamagen_config`: a ModelConfig from the shapes of a GPT state dict (c2i or t2i);
- :func:`load_llamagen`: a checkpoint (torch.save, .npz or .safetensors) as a :class:`zipar.Model`;
- :func:`save_npz` / :func:`save_safetensors` / :func:`read_config`: weights with the config;
- :func:`grid_from_filename`: the grid implied by the published file names (``_384`` -> 24);
- :func:`read_vq_state_dict`: the decoder half of a VQ-16 tokenizer checkpoint
  (for zipar.families.vq16).

Example::

    from zipar.families.llamagen import load_llamagen
    model = load_llamagen("c2i_XL_384.pt")              # 384 px images -> 24x24 grid

Emu3 and Chameleon (Lumina-mGPT) checkpoints get their own module beside this one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Dict, Optional

import numpy as np

from ..config import LLAMAGEN_SIZES, ModelConfig
from ..io.dtypes import float32_to_bfloat16
from ..io.errors import CheckpointError
from ..io.formats import load_state_dict, read_config_json
from ..io.npz import write_npz
from ..io.safetensors import write_safetensors
from ..model import DTYPES, LAYER_KEYS, Model, convert_weight

__all__ = ["infer_llamagen_config", "load_llamagen", "grid_from_filename", "read_config",
           "save_npz", "save_safetensors", "read_vq_state_dict", "VQ_DECODER_PREFIXES"]


# Keys a stored config may hold beside the ModelConfig fields: Model attributes that
# Model.save keeps (row_start_proxy: the calibrated proxy token, an int).
_MODEL_KEYS = ("row_start_proxy",)


def _read_stored(path):
    """(ModelConfig, {Model attribute: value}) stored by zipar in ``path``, else (None, {})."""
    path = os.fspath(path)
    text = read_config_json(path)
    if text is None:
        return None, {}
    try:
        d = json.loads(text)
        if not isinstance(d, dict):
            raise ValueError(f"expected a JSON object, got {type(d).__name__}")
        extras = {k: d.pop(k) for k in _MODEL_KEYS if k in d}
        token = extras.get("row_start_proxy")
        if token is not None and (isinstance(token, bool) or not isinstance(token, int)):
            raise ValueError(f"row_start_proxy must be an int token id or null, got {token!r:.80}")
        return ModelConfig.from_dict(d), extras
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: stored config is invalid: {e}") from None


def read_config(path) -> Optional[ModelConfig]:
    """The ModelConfig stored by :func:`save_npz` / :func:`save_safetensors` (or
    ``Model.save``), else None."""
    return _read_stored(path)[0]


def save_npz(path, config: Optional[ModelConfig], weights: Dict[str, np.ndarray]) -> None:
    """Write ``weights`` to an uncompressed .npz, with ``config`` as JSON bytes under
    "__zipar_config__" (a uint8 array). Note np.savez appends ".npz" to names lacking it."""
    write_npz(path, weights, config_json=None if config is None else config.to_json())


def save_safetensors(path, config: Optional[ModelConfig], weights: Dict[str, np.ndarray]
                     ) -> None:
    """Write ``weights`` to a .safetensors file, ``config`` as JSON in ``__metadata__``
    ("zipar_config"). Arrays keep their NumPy dtype (uint16 stays U16: bfloat16 bit patterns
    are not relabelled)."""
    write_safetensors(path, weights, config_json=None if config is None else config.to_json())


_LAYER_KEY = re.compile(r"^layers\.(\d+)\.")


def infer_llamagen_config(state_dict: Dict[str, np.ndarray], *, grid=None,
                          n_head: Optional[int] = None,
                          num_classes: Optional[int] = None) -> ModelConfig:
    """Infer a LlamaGen GPT's ModelConfig from the shapes in its state dict.

    dim and vocab_size come from tok_embeddings, n_layer from the layers.{i} keys, hidden from
    feed_forward.w1, n_kv_head from attention.wqkv. n_head is not visible in the shapes: it is
    looked up in LLAMAGEN_SIZES by (n_layer, dim), else ``n_head`` must be given.

    ``grid`` is not visible either: it defaults to 16 (256x256 images); pass ``grid=24`` for
    the 384 px checkpoints (c2i_*_384.pt) and 32 for t2i_XL_stage2_512.pt.

    c2i: num_classes = rows of cls_embedding.embedding_table - 1 (the last row is the null
    class for guidance); a given ``num_classes`` is checked against it.
    t2i (cls_embedding.cap_proj.fc1.weight present): caption_dim from fc1's width,
    cls_token_num from uncond_embedding's rows (120), and num_classes = 1 since there is no
    class table (the field is unused for t2i).
    """
    def shape_of(name: str, ndim: int) -> tuple:
        if name not in state_dict:
            raise CheckpointError(f"not a LlamaGen GPT state dict: {name!r} is missing")
        s = tuple(np.shape(state_dict[name]))
        if len(s) != ndim:
            raise CheckpointError(f"{name} has shape {s}, expected {ndim} dimensions")
        return s

    vocab_size, dim = shape_of("tok_embeddings.weight", 2)
    layers = {int(m.group(1)) for k in state_dict if (m := _LAYER_KEY.match(k))}
    if not layers:
        raise CheckpointError("not a LlamaGen GPT state dict: no layers.{i}.* keys")
    n_layer = max(layers) + 1
    if len(layers) != n_layer:  # (a key "layers.999999999999.x" must not build a huge range)
        missing = [i for i in range(min(n_layer, len(layers) + 8)) if i not in layers]
        raise CheckpointError(f"layers {missing[:8]}{' ...' if len(missing) > 8 else ''} are "
                              f"missing from the state dict (highest layer {n_layer - 1})")

    if n_head is None:
        matches = [(name, h) for name, (nl, h, d) in LLAMAGEN_SIZES.items()
                   if (nl, d) == (n_layer, dim)]
        if not matches:
            raise CheckpointError(
                f"n_layer={n_layer}, dim={dim} match no LlamaGen size ({', '.join(LLAMAGEN_SIZES)})"
                "; the head count is not visible in the weights: pass n_head=")
        n_head = matches[0][1]
    if dim % n_head:
        raise CheckpointError(f"dim {dim} is not divisible by n_head {n_head}")
    head_dim = dim // n_head

    wqkv = shape_of("layers.0.attention.wqkv.weight", 2)
    hidden = shape_of("layers.0.feed_forward.w1.weight", 2)[0]
    if wqkv[1] != dim or wqkv[0] % head_dim or (wqkv[0] // head_dim - n_head) % 2 \
            or wqkv[0] // head_dim <= n_head:
        raise CheckpointError(f"attention.wqkv.weight has shape {wqkv}; with dim {dim} and "
                              f"n_head {n_head} it should be ((n_head + 2*n_kv_head) * "
                              f"{head_dim}, {dim})")
    n_kv_head = (wqkv[0] // head_dim - n_head) // 2
    expected = {
        "attention_norm.weight": (dim,), "attention.wqkv.weight": wqkv,
        "attention.wo.weight": (dim, dim), "ffn_norm.weight": (dim,),
        "feed_forward.w1.weight": (hidden, dim), "feed_forward.w3.weight": (hidden, dim),
        "feed_forward.w2.weight": (dim, hidden),
    }
    assert tuple(expected) == LAYER_KEYS  # the engine's per-layer order
    for i in range(n_layer):
        for suffix, want in expected.items():
            name = f"layers.{i}.{suffix}"
            if name in state_dict and tuple(np.shape(state_dict[name])) != want:
                raise CheckpointError(f"{name} has shape {tuple(np.shape(state_dict[name]))}, "
                                      f"expected {want}")
    for name, want in (("norm.weight", (dim,)), ("output.weight", (vocab_size, dim))):
        if name in state_dict and tuple(np.shape(state_dict[name])) != want:
            raise CheckpointError(f"{name} has shape {tuple(np.shape(state_dict[name]))}, "
                                  f"expected {want}")

    caption_dim, cls_token_num = 0, 1
    if "cls_embedding.cap_proj.fc1.weight" in state_dict:  # t2i
        fc1 = shape_of("cls_embedding.cap_proj.fc1.weight", 2)
        if fc1[0] != dim:
            raise CheckpointError(f"cls_embedding.cap_proj.fc1.weight has shape {fc1}, "
                                  f"expected ({dim}, caption_dim)")
        caption_dim = fc1[1]
        cls_token_num = 120
        if "cls_embedding.uncond_embedding" in state_dict:
            rows, width = shape_of("cls_embedding.uncond_embedding", 2)
            if width != caption_dim:
                raise CheckpointError(f"cls_embedding.uncond_embedding is ({rows}, {width}), "
                                      f"expected (n, {caption_dim})")
            cls_token_num = rows
        if num_classes not in (None, 1):
            raise CheckpointError("a t2i checkpoint has no class table; num_classes must be "
                                  "left out (it is set to 1)")
        num_classes = 1
    else:
        rows, width = shape_of("cls_embedding.embedding_table.weight", 2)
        if width != dim:
            raise CheckpointError(f"cls_embedding.embedding_table.weight is ({rows}, {width}), "
                                  f"expected (num_classes + 1, {dim})")
        if num_classes is not None and num_classes != rows - 1:
            raise CheckpointError(f"the class table has {rows} rows = num_classes + 1 (null "
                                  f"class), so num_classes is {rows - 1}, not {num_classes}")
        num_classes = rows - 1
        if num_classes < 1:
            raise CheckpointError(f"the class table has {rows} rows; need num_classes + 1 >= 2")

    try:
        return ModelConfig(dim=dim, n_layer=n_layer, n_head=n_head, vocab_size=vocab_size,
                           grid=16 if grid is None else grid, num_classes=num_classes,
                           n_kv_head=n_kv_head, cls_token_num=cls_token_num, hidden=hidden,
                           caption_dim=caption_dim)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"inferred an invalid config: {e}") from None


# ============================================================================ loaders

_LOAD_DTYPES = DTYPES
# Buffers LlamaGen creates at inference time (setup_caches); a model saved after sampling
# carries them. They are not weights: never read, never passed to the Model.
_RUNTIME_BUFFER = re.compile(r"(^|\.)kv_cache\.[kv]_cache$|^causal_mask$")


def _is_float(a: np.ndarray) -> bool:
    """Floating-point weights, bfloat16 (uint16 bits) included; integer buffers are not."""
    return a.dtype.kind == "f" or a.dtype == np.uint16


def _convert_weights(weights: Dict[str, np.ndarray], dtype: str) -> Dict[str, np.ndarray]:
    """Every floating-point tensor to ``dtype`` (bfloat16 as uint16 bits), in place, tensor by
    tensor. (load_llamagen converts while reading, with the Model's rule: convert_weight.)"""
    for name in list(weights):
        arr = weights[name]
        if arr.dtype == np.uint16 and dtype == "bfloat16":
            continue  # already bfloat16 bit patterns (read with keep_bfloat16)
        if arr.dtype.kind != "f":
            continue  # integer buffers stay as they are
        if dtype == "bfloat16":
            weights[name] = float32_to_bfloat16(arr)
        elif arr.dtype != dtype:
            weights[name] = arr.astype(dtype)
    return weights


def _stored_dtype(weights: Dict[str, np.ndarray]) -> str:
    """The Model dtype of a checkpoint as stored: that of its token embeddings (float64 and
    anything else -> float32)."""
    a = weights.get("tok_embeddings.weight")
    if a is None:
        return "float32"
    return {np.dtype(np.uint16): "bfloat16", np.dtype(np.float16): "float16"}.get(a.dtype,
                                                                                "float32")


# Image size tags in the published file names (c2i_L_384.pt, t2i_XL_stage2_512.pt) -> grid side
# (image size / 16). "_384" must not be followed by another digit ("_3840" is no tag).
_GRID_TAG = re.compile(r"_(256|384|512)(?![0-9])")
_GRID_OF_TAG = {"256": 16, "384": 24, "512": 32}


def grid_from_filename(path) -> Optional[int]:
    """Grid side implied by an image-size tag in a checkpoint's file name, else None.

    ``c2i_B_256.pt`` -> 16, ``c2i_L_384.pt`` -> 24, ``t2i_XL_stage2_512.pt`` -> 32. Only the
    base name is looked at; a name with two different tags is ambiguous (None).
    """
    tags = {_GRID_OF_TAG[m] for m in _GRID_TAG.findall(os.path.basename(os.fsdecode(path)))}
    return tags.pop() if len(tags) == 1 else None


def load_llamagen(path, *, grid=None, n_head: Optional[int] = None,
                  num_classes: Optional[int] = None, dtype: Optional[str] = None,
                  mmap: bool = True):
    """Load a LlamaGen GPT checkpoint (torch.save, .npz or .safetensors) as a zipar Model.

    KV-cache buffers (``*.kv_cache.k_cache``, ``causal_mask``) are skipped. The config is the
    one stored by save_npz / save_safetensors / Model.save if present (with the Model's
    ``row_start_proxy`` when Model.save stored one) (``grid``,
    ``n_head`` and ``num_classes`` override it), else :func:`infer_llamagen_config`. The grid is
    not visible in the weights: when ``grid`` is None and no config is stored, it comes from
    the file name's image-size tag as in the published names (``_256`` -> 16, ``_384`` -> 24,
    ``_512`` -> 32; see :func:`grid_from_filename`), else it defaults to 16. Pass ``grid=``
    for files renamed without the tag.

    ``dtype``: how the Model stores its matrices (see :class:`zipar.Model`): "float32",
    "bfloat16" or "float16"; None (default) keeps the checkpoint's own type (that of its token
    embeddings), so a bfloat16 or float16 file is never widened. Each tensor is converted as
    soon as it is read, before the next one is, so loading a float32 file as bfloat16 peaks
    near the bfloat16 size plus one float32 tensor. Norms and class tables are float32 always.

    ``mmap`` (default True): uncompressed tensors already in their target type (.safetensors,
    .npz written by np.savez, torch.save records) are memory-mapped from the file rather than
    read: the Model then reads the file's pages as it runs, and the file must not be changed
    or truncated while the Model exists. ``mmap=False`` reads everything into memory.
    """
    if dtype is not None and dtype not in _LOAD_DTYPES:
        raise ValueError(f"dtype must be one of {_LOAD_DTYPES} or None, got {dtype!r}")
    select = lambda k: not _RUNTIME_BUFFER.search(k)  # noqa: E731
    if dtype is None:
        weights = load_state_dict(path, keep_bfloat16=True, mmap=mmap, select=select)
    else:
        target = dtype

        def convert(name, a):
            return convert_weight(name, a, target, check=False) if _is_float(a) else a

        weights = load_state_dict(path, keep_bfloat16=True, mmap=mmap, select=select,
                                  convert=convert)
    try:  # what the file holds may still not make a model: that is the file's fault too
        if dtype is None:
            dtype = _stored_dtype(weights)
            for name in list(weights):  # one tensor at a time (only mixed-type files convert)
                if _is_float(weights[name]):
                    weights[name] = convert_weight(name, weights[name], dtype, check=False)
        config, extras = _read_stored(path)
        if config is None:
            if grid is None and isinstance(path, (str, bytes, os.PathLike)):
                grid = grid_from_filename(path)
            config = infer_llamagen_config(weights, grid=grid, n_head=n_head,
                                           num_classes=num_classes)
        else:
            overrides = {k: v for k, v in (("grid", grid), ("n_head", n_head),
                                           ("num_classes", num_classes)) if v is not None}
            if overrides:
                config = dataclasses.replace(config, **overrides)
        return Model(config, weights, dtype=dtype, **extras)
    except CheckpointError:
        raise
    except ValueError as e:
        raise CheckpointError(f"{os.fspath(path)}: {e}") from None


VQ_DECODER_PREFIXES = ("decoder.", "post_quant_conv.", "quantize.embedding.weight")


def read_vq_state_dict(path, *, mmap: bool = False) -> Dict[str, np.ndarray]:
    """The decoder half of a LlamaGen VQ tokenizer checkpoint (vq_ds16_*.pt).

    Returns the tensors whose names start with "decoder.", "post_quant_conv." or equal
    "quantize.embedding.weight" (the codebook, not yet L2-normalised); encoder tensors are
    never read. bfloat16 is widened to float32.
    """
    weights = load_state_dict(path, mmap=mmap,
                              select=lambda k: k.startswith(VQ_DECODER_PREFIXES))
    if "quantize.embedding.weight" not in weights or not any(k.startswith("decoder.")
                                                            for k in weights):
        raise CheckpointError(f"{os.fspath(path)}: not a VQ tokenizer checkpoint (no codebook "
                              "quantize.embedding.weight or no decoder.* tensors)")
    return weights
