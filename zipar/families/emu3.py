"""Emu3-Gen checkpoints (families.md 1.3, 2.2, 3.1, 4.1): config, tensor names, token layout.

Two layouts are read: the transformers-native ``*-hf`` folders (``model_type`` "emu3", the LLM
under ``text_config``, tensors ``text_model.model.*`` / ``text_model.lm_head.weight`` on disk or
``model.text_model.*`` / ``lm_head.weight`` as in memory) and the original BAAI/Emu3-Gen folders
(``model_type`` "Emu3", fields at the top level, tensors ``model.*`` / ``lm_head.weight``).
VQ tensors are ignored (the VQ decoder is separate).
"""

from __future__ import annotations

import re
from typing import Any, Dict, Optional


from ..io.errors import CheckpointError
from . import hf
from .decoder import FamilyConfig, FamilyModel, canonical_layer_names

__all__ = ["load_emu3", "emu3_config", "emu3_weight_names", "Emu3Model", "is_emu3_config"]

_VISUAL = re.compile(r"^<\|visual token (\d{6})\|>$")
_ARCHS = ("Emu3ForCausalLM", "Emu3ForConditionalGeneration", "Emu3Model")


def is_emu3_config(cfg: dict) -> bool:
    mt = str(cfg.get("model_type", "")).lower()
    archs = cfg.get("architectures") or []
    return mt == "emu3" or any(a in _ARCHS for a in archs)


def _rope_theta(c: dict, where: str) -> float:
    rp = c.get("rope_parameters")
    if isinstance(rp, dict) and "rope_theta" in rp:
        kind = rp.get("rope_type", "default")
        if kind != "default":
            raise CheckpointError(f"{where}: rope_type {kind!r} is not supported (default only)")
        return float(rp["rope_theta"])
    rs = c.get("rope_scaling")
    if isinstance(rs, dict) and rs.get("rope_type", rs.get("type", "default")) != "default":
        raise CheckpointError(f"{where}: rope_scaling {rs!r} is not supported")
    if "rope_theta" in c:
        return float(c["rope_theta"])
    return 1e6  # Emu3's class default


def emu3_config(cfg: dict, where: str = "config.json") -> FamilyConfig:
    """The engine's view of an Emu3 config.json (HF or original)."""
    if not is_emu3_config(cfg):
        raise CheckpointError(f"{where}: model_type {cfg.get('model_type')!r} / architectures "
                              f"{cfg.get('architectures')!r} is not Emu3")
    tc = cfg.get("text_config")
    text: Dict[str, Any] = tc if isinstance(tc, dict) else cfg
    try:
        dim = int(text["hidden_size"])
        n_head = int(text["num_attention_heads"])
        fc: Dict[str, Any] = dict(
                  dim=dim, n_layer=int(text["num_hidden_layers"]), n_head=n_head,
                  n_kv_head=int(text.get("num_key_value_heads", n_head)),
                  head_dim=int(text.get("head_dim") or dim // n_head),
                  hidden=int(text["intermediate_size"]), vocab_size=int(text["vocab_size"]),
                  norm_eps=float(text.get("rms_norm_eps", 1e-5)),
                  rope_theta=_rope_theta(text, where),
                  max_position_embeddings=int(text.get("max_position_embeddings", 9216)))
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: missing or bad Emu3 field ({e})") from None
    V = fc["vocab_size"]
    vmap = cfg.get("vocabulary_map")
    if isinstance(vmap, dict) and vmap:
        def sid(name):
            if name not in vmap:
                raise CheckpointError(f"{where}: vocabulary_map has no {name!r}")
            return int(vmap[name])
        special = dict(pad=sid("<|endoftext|>"), eol=sid("<|extra_200|>"),
                       eof=sid("<|extra_201|>"), bos=sid("<|extra_203|>"),
                       eos=sid("<|extra_204|>"), img=sid("<|image token|>"),
                       boi=sid("<|image start|>"), eoi=sid("<|image end|>"))
        vis = sorted((int(m.group(1)), int(i)) for n, i in vmap.items()
                     if (m := _VISUAL.match(n)))
        if not vis:
            raise CheckpointError(f"{where}: vocabulary_map names no <|visual token ...|>")
        lo = vis[0][1]
        if any(code != k or i != lo + k for k, (code, i) in enumerate(vis)):
            raise CheckpointError(f"{where}: the visual tokens are not one contiguous block of "
                                  "ids in code order")
        hi = lo + len(vis)
    else:  # original config: ids as fields; visual token k = EOI + 1 + k up to the vocabulary
        try:
            special = dict(pad=int(cfg.get("pad_token_id", 151643)), eol=int(cfg["eol_token_id"]),
                           eof=int(cfg["eof_token_id"]), bos=int(cfg["bos_token_id"]),
                           eos=int(cfg["eos_token_id"]), img=int(cfg["img_token_id"]),
                           boi=int(cfg["boi_token_id"]), eoi=int(cfg["eoi_token_id"]))
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{where}: missing Emu3 special token id ({e})") from None
        lo, hi = special["eoi"] + 1, V
    if not (0 <= lo < hi <= V) or any(not 0 <= v < V for v in special.values()):
        raise CheckpointError(f"{where}: token ids outside the vocabulary of {V}")
    return FamilyConfig(family="emu3", qk_norm=False, swin_norm=False, image_lo=lo, image_hi=hi,
                        eol=special["eol"], special=special, **fc)


def emu3_weight_names(keys) -> Dict[str, str]:
    """on-disk name -> canonical name (zipar.reference.families) for the decoder tensors of
    any of the three Emu3 layouts; VQ tensors are left out."""
    out = {}
    for k in keys:
        if "vqmodel." in k or k.startswith(("decoder.", "encoder.", "quantize.", "post_quant_conv.",
                                            "quant_conv.")):
            continue
        for pre in ("text_model.model.", "model.text_model.", "model."):
            if k.startswith(pre):
                out[k] = k[len(pre):]
                break
        else:
            if k in ("lm_head.weight", "text_model.lm_head.weight"):
                out[k] = "lm_head.weight"
    return out


class Emu3Model(FamilyModel):
    """Emu3-Gen on the zipar core: ``generate(prompt_ids=[BOS, text..., BOI, "H*W"..., IMG],
    negative_prompt_ids=..., grid=(H, W))``. The prompt must end with the IMG token; the
    unconditional stream is the negative prompt as its own sequence (families.md 4.1). Generated
    ids: H rows of (W visual tokens, EOL), then EOF, EOI, EOS."""

    default_top_k = 2048

    def _layout(self, prompt, negative, grid, guided):
        s = self.config.special
        if prompt[-1] != s["img"]:
            raise ValueError(f"an Emu3 prompt ends with the image token {s['img']} "
                             "(BOS, text, BOI, 'H*W', IMG); got last id "
                             f"{prompt[-1]}")
        if guided and negative is None:
            raise ValueError("Emu3 guidance (cfg_scale != 1) needs negative_prompt_ids "
                             "(the negative prompt, processed like the prompt)")
        return list(prompt), (None if not guided else list(negative)), [], \
            [s["eof"], s["eoi"], s["eos"]]


def load_emu3(path, *, cache_dir=None, dtype: Optional[str] = None) -> Emu3Model:
    """An Emu3 checkpoint folder (or a repo id in the huggingface_hub cache) as a model.

    Weights are memory-mapped and converted tensor by tensor to ``dtype`` ("float32",
    "bfloat16", "float16"; None keeps the checkpoint's own type, so a bf16 file is never
    widened); tensors already in that type stay mapped without a copy; q/k/v are concatenated
    into one array per layer."""
    folder = hf.resolve_folder(path, cache_dir=cache_dir)
    raw = hf.read_config(folder)
    if not is_emu3_config(raw):
        raise CheckpointError(f"{folder}: config.json describes model_type "
                              f"{raw.get('model_type')!r} (architectures "
                              f"{raw.get('architectures')!r}), not Emu3")
    cfg = emu3_config(raw, f"{folder}/config.json")
    tensors = hf.read_folder_tensors(folder)
    names = emu3_weight_names(tensors)
    weights = canonical_layer_names({names[k]: v for k, v in tensors.items() if k in names},
                                    cfg, folder)
    from .text import attach_folder_extras

    return attach_folder_extras(Emu3Model(cfg, weights, source=folder, dtype=dtype), folder)
