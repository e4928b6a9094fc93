"""Chameleon / Lumina-mGPT checkpoints (families.md 1.4, 2.3, 3.2, 4.2).

HF-format folders (facebook/chameleon-*, Alpha-VLLM/Lumina-mGPT-*): ``model.*`` and
``lm_head.weight``; per-head q/k LayerNorm rows stored (n_heads, hd) by transformers and (P, hd)
by Lumina's own checkpoints (P = model_parallel_size, 1 for the 7B models), broadcast here;
``swin_norm`` from config.json. The encoder-only ``model.vqmodel.*`` is ignored.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Optional

from ..io.errors import CheckpointError
from . import hf
from .decoder import FamilyConfig, FamilyModel, canonical_layer_names
from .emu3 import _rope_theta

__all__ = ["load_chameleon", "chameleon_config", "ChameleonModel", "is_chameleon_config"]

_IMG = re.compile(r"^IMGIMG([A-J]+)Z$")


def is_chameleon_config(cfg: dict) -> bool:
    mt = str(cfg.get("model_type", "")).lower()
    archs = cfg.get("architectures") or []
    return mt == "chameleon" or any("Chameleon" in str(a) for a in archs)


def chameleon_config(cfg: dict, where: str = "config.json", *,
                     size_token_base: Optional[int] = None) -> FamilyConfig:
    if not is_chameleon_config(cfg):
        raise CheckpointError(f"{where}: model_type {cfg.get('model_type')!r} / architectures "
                              f"{cfg.get('architectures')!r} is not Chameleon")
    try:
        dim = int(cfg["hidden_size"])
        n_head = int(cfg["num_attention_heads"])
        fc: Dict[str, Any] = dict(
                  dim=dim, n_layer=int(cfg["num_hidden_layers"]), n_head=n_head,
                  n_kv_head=int(cfg.get("num_key_value_heads") or n_head),
                  head_dim=int(cfg.get("head_dim") or dim // n_head),
                  hidden=int(cfg["intermediate_size"]), vocab_size=int(cfg["vocab_size"]),
                  norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
                  rope_theta=_rope_theta({"rope_theta": 1e4, **cfg}, where),
                  max_position_embeddings=int(cfg.get("max_position_embeddings", 4096)))
        swin = bool(cfg.get("swin_norm", False))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: missing or bad Chameleon field ({e})") from None
    V = fc["vocab_size"]
    vmap = cfg.get("vocabulary_map")
    if isinstance(vmap, dict) and vmap:
        def sid(name):
            if name not in vmap:
                raise CheckpointError(f"{where}: vocabulary_map has no {name!r}")
            return int(vmap[name])
        special = dict(bos=int(vmap.get("<s>", 0)), eoi=sid("<eoss>"), boi=sid("<racm3:break>"),
                       eol=sid("<reserved08799>"), eot=sid("<reserved08706>"))
        size0 = vmap.get("<reserved08800>")
        img = sorted((int(m.group(1).translate(str.maketrans("ABCDEFGHIJ", "0123456789"))),
                      int(i)) for n, i in vmap.items() if (m := _IMG.match(n)))
        if not img:
            raise CheckpointError(f"{where}: vocabulary_map names no IMGIMG...Z image tokens")
        lo = img[0][1]
        if any(code != k or i != lo + k for k, (code, i) in enumerate(img)):
            raise CheckpointError(f"{where}: the image tokens are not one contiguous block of "
                                  "ids in code order")
        hi = lo + len(img)
    elif V == 65536:  # the real layout (families.md 3.2)
        special = dict(bos=0, eoi=8196, boi=8197, eol=8803, eot=8710)
        size0, lo, hi = 8804, 4, 8196
    else:
        raise CheckpointError(f"{where}: no vocabulary_map to find the image and special tokens")
    if size_token_base is not None:
        size0 = int(size_token_base)
    special["size0"] = None if size0 is None else int(size0)
    if not (0 <= lo < hi <= V) or any(v is not None and not 0 <= v < V for v in special.values()):
        raise CheckpointError(f"{where}: token ids outside the vocabulary of {V}")
    return FamilyConfig(family="chameleon", qk_norm=True, swin_norm=swin, image_lo=lo,
                        image_hi=hi, eol=special["eol"], special=special, **fc)


def chameleon_weight_names(keys) -> Dict[str, str]:
    out = {}
    for k in keys:
        if k.startswith("model.vqmodel."):
            continue
        if k.startswith("model."):
            out[k] = k[len("model."):]
        elif k == "lm_head.weight":
            out[k] = k
    return out


class ChameleonModel(FamilyModel):
    """Lumina-mGPT / Chameleon on the zipar core: ``generate(prompt_ids=[BOS, text..., 8710],
    grid=(H, W))`` appends ``[BOI, size(H/2), size(W/2)]`` (forced, as the ZipAR port assumes)
    and decodes the grid; the unconditional stream is ``negative_prompt_ids + [BOI, h, w]``,
    by default ``[BOI, h, w]`` alone (Lumina's upstream CFG, families.md 4.2). Generated ids:
    BOI, h, w, H rows of (W image tokens, EOL), EOI."""

    default_top_k = 2000

    def _layout(self, prompt, negative, grid, guided):
        s = self.config.special
        H, W = grid
        if s.get("size0") is None:
            raise ValueError("this checkpoint's vocabulary names no size tokens "
                             "(<reserved08800>...): load it with size_token_base=")
        if H % 2 or W % 2:
            raise ValueError(f"Lumina-mGPT grids are even (2 latent rows per size unit); got "
                             f"{H}x{W}")
        head = [s["boi"], s["size0"] + H // 2, s["size0"] + W // 2]
        if not (0 <= head[1] < self.config.vocab_size and 0 <= head[2] < self.config.vocab_size):
            raise ValueError(f"grid {H}x{W} needs size tokens beyond the vocabulary")
        unc = None
        if guided:
            unc = (list(negative) if negative is not None else []) + head
        return list(prompt) + head, unc, head, [s["eoi"]]


def load_chameleon(path, *, cache_dir=None, size_token_base: Optional[int] = None,
                   dtype: Optional[str] = None) -> ChameleonModel:
    """A Chameleon / Lumina-mGPT checkpoint folder (or a repo id in the huggingface_hub cache).
    ``size_token_base``: id of the size token for 0 grids when the vocabulary does not name it
    (``<reserved08800>``, id 8804 in the real vocabulary). ``dtype``: as for
    :func:`zipar.families.emu3.load_emu3` (None keeps the checkpoint's own type)."""
    folder = hf.resolve_folder(path, cache_dir=cache_dir)
    raw = hf.read_config(folder)
    if not is_chameleon_config(raw):
        raise CheckpointError(f"{folder}: config.json describes model_type "
                              f"{raw.get('model_type')!r} (architectures "
                              f"{raw.get('architectures')!r}), not Chameleon / Lumina-mGPT")
    cfg = chameleon_config(raw, f"{folder}/config.json", size_token_base=size_token_base)
    tensors = hf.read_folder_tensors(folder)
    names = chameleon_weight_names(tensors)
    weights = canonical_layer_names({names[k]: v for k, v in tensors.items() if k in names},
                                    cfg, folder)
    from .text import attach_folder_extras

    return attach_folder_extras(ChameleonModel(cfg, weights, source=folder, dtype=dtype), folder)
