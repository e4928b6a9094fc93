"""Text prompts and pixels for the Emu3 / Lumina-mGPT models: the wiring between a loaded
:class:`~zipar.families.decoder.FamilyModel`, its folder's tokenizer file
(:mod:`zipar.families.prompts`) and its VQ decoder (:mod:`zipar.families.emu3_vq`,
:mod:`zipar.families.chameleon_vq`).

``attach_folder_extras(model, folder)`` (called by the loaders) records the folder's tokenizer
file and loads the VQ decoder when its weights are there:

- Emu3: ``vqmodel.decoder.*`` tensors in the checkpoint's shards (the ``*-hf`` folders), or a
  ``vision_tokenizer/`` subfolder (BAAI/Emu3-VisionTokenizer);
- Lumina-mGPT / Chameleon: ``vqgan.safetensors`` or ``vqgan.ckpt`` (with ``vqgan.yaml``) in the
  folder or in ``tokenizer/`` / ``vqgan/`` under it (Meta's Chameleon files; the tokenizer file
  may be ``text_tokenizer.json`` there too).

Generated image tokens become codebook indices through the vocabulary's own names
(:mod:`zipar.families.image_tokens`), not through an id offset.
"""

from __future__ import annotations

import json
import os
from typing import List, Optional, Tuple

import numpy as np

from ..io.errors import CheckpointError

__all__ = ["attach_folder_extras", "text_prompt_ids", "decode_images", "tokenizer_file",
           "find_vq"]


def tokenizer_file(folder: str) -> Optional[str]:
    """tokenizer.json or text_tokenizer.json (Meta's Chameleon name) in the folder or in its
    ``tokenizer/`` subfolder, or None."""
    for d in (folder, os.path.join(folder, "tokenizer")):
        for name in ("tokenizer.json", "text_tokenizer.json"):
            p = os.path.join(d, name)
            if os.path.isfile(p):
                return p
    return None


def _emu3_vq_in_shards(folder: str) -> bool:
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as f:
                wm = json.load(f).get("weight_map", {})
        except (OSError, ValueError, AttributeError):
            return False
        return any(isinstance(k, str) and k.startswith("vqmodel.decoder.") for k in wm)
    single = os.path.join(folder, "model.safetensors")
    if os.path.isfile(single):
        from ..io.safetensors import read_safetensors

        tensors, _ = read_safetensors(single, mmap=True, keep_bfloat16=True)
        return any(k.startswith("vqmodel.decoder.") for k in tensors)
    return False


def find_vq(family: str, folder: str) -> Optional[str]:
    """The path the family's VQ decoder loads from, or None when the folder has no VQ weights."""
    if family == "emu3":
        if _emu3_vq_in_shards(folder):
            return folder
        sub = os.path.join(folder, "vision_tokenizer")
        return sub if os.path.isdir(sub) else None
    for d in (folder, os.path.join(folder, "tokenizer"), os.path.join(folder, "vqgan")):
        for name in ("vqgan.safetensors", "vqgan.ckpt"):
            if os.path.isfile(os.path.join(d, name)):
                return os.path.join(d, name)
    return None


def attach_folder_extras(model, folder: str):
    """Sets ``model.tokenizer_path`` (None without a tokenizer file), ``model.vq_decoder`` and
    ``model.image_tokens`` (None without VQ weights); returns the model."""
    from .image_tokens import chameleon_image_tokens, emu3_image_tokens, read_vocabulary

    family = model.config.family
    model.tokenizer_path = tokenizer_file(folder)
    model._tokenizer = None
    model.vq_decoder = None
    model.image_tokens = None
    vq = find_vq(family, folder)
    if vq is not None:
        if family == "emu3":
            from .emu3_vq import load_emu3_vq

            model.vq_decoder = load_emu3_vq(vq)
        else:
            from .chameleon_vq import load_chameleon_vq

            model.vq_decoder = load_chameleon_vq(vq)
        try:
            vocab = read_vocabulary(folder)
        except CheckpointError:
            if model.tokenizer_path is None:
                raise CheckpointError(f"{folder}: VQ weights found ({vq}) but no vocabulary to "
                                      "map image tokens to codes (config.json vocabulary_map or "
                                      "a tokenizer file)") from None
            vocab = read_vocabulary(model.tokenizer_path)
        model.image_tokens = (emu3_image_tokens if family == "emu3"
                              else chameleon_image_tokens)(vocab)
    return model


def _tokenizer(model):
    from .prompts import load_tokenizer

    if getattr(model, "_tokenizer", None) is None:
        path = getattr(model, "tokenizer_path", None)
        if path is None:
            raise ValueError(f"{model.source or 'this model'}: no tokenizer.json in the checkpoint "
                             "folder; pass prompt_ids= (token ids) instead of prompt=")
        model._tokenizer = load_tokenizer(path)
    return model._tokenizer


def default_grid(family: str) -> Tuple[int, int]:
    """Emu3: 720x720 px at 8 px per code (90, 90); Lumina-mGPT: 768 px (48, 48)."""
    from .prompts import emu3_grid, lumina_grid

    return emu3_grid() if family == "emu3" else lumina_grid(768)


def text_prompt_ids(model, prompt, negative_prompt, grid, guided
                    ) -> Tuple[List[List[int]], Optional[List[List[int]]]]:
    """(prompt ids, negative ids or None) per text, in the family's template (see
    zipar.families.prompts). Emu3: the generation script's negative prompt by default;
    Lumina-mGPT: no text on the unconditional stream by default (its ``[BOI, h, w]`` head is
    added by the model)."""
    from . import prompts as pr

    texts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise TypeError("prompt must be a str or a list of str")
    if negative_prompt is not None and not guided:
        raise ValueError("negative_prompt given but cfg_scale == 1: there is no guidance to "
                         "use it")
    tok = _tokenizer(model)
    H, W = grid
    ids, negs = [], []
    if model.config.family == "emu3":
        neg_text = pr.EMU3_NEGATIVE_PROMPT if negative_prompt is None else negative_prompt
        for t in texts:
            p, n = pr.emu3_prompt_ids(tok, t, (H, W), negative_prompt=neg_text)
            ids.append(p)
            negs.append(n)
    else:
        size = (16 * H, 16 * W)  # 2 codes per 32 px size unit
        if H % 2 or W % 2:
            raise ValueError(f"Lumina-mGPT grids are even (2 latent rows per size unit); got "
                             f"{H}x{W}")
        for t in texts:
            ids.append(pr.lumina_prompt_ids(tok, t, size, image_head=False)[0])
            if negative_prompt is not None:
                negs.append(pr.lumina_prompt_ids(tok, negative_prompt, size,
                                                 image_head=False)[0])
        if negative_prompt is None:
            negs = []
    return ids, (negs if guided and negs else None)


def decode_images(model, codes: np.ndarray) -> Optional[np.ndarray]:
    """Pixels (B, h, w, 3) uint8 for the code grids of a finished result, or None without a VQ
    decoder or with unfinished cells."""
    dec = getattr(model, "vq_decoder", None)
    tmap = getattr(model, "image_tokens", None)
    if dec is None or tmap is None:
        return None
    codes = np.asarray(codes)
    if codes.size == 0 or (codes < 0).any():
        return None
    ids = codes.astype(np.int64) + model.config.image_lo
    return dec.decode(tmap.codes(ids))

