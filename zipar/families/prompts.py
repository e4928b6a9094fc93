"""Text prompts -> token ids in each family's exact template (needs the ``tokenizers`` package).

Example::

    tok = load_tokenizer("Emu3-Gen-hf")                       # folder with tokenizer.json
    ids, negative_ids = emu3_prompt_ids(tok, "a red fox", (90, 90))
    model.generate(prompt_ids=ids, negative_prompt_ids=negative_ids, grid=(90, 90), ...)

    tok = load_tokenizer("Lumina-mGPT-7B-768")
    ids, uncond_ids = lumina_prompt_ids(tok, "a red fox", 768)  # 768x768 px -> 48x48 grid

Templates (shared spec families.md 3.1, 3.2, 4.1, 4.2):

- Emu3-Gen (``image_generation.py`` of baaivision/Emu3, transformers' Emu3Processor with
  ``return_for_image_generation``): ``[BOS] + tok(text + suffix) + [BOI] + tok("{H}*{W}") +
  [IMG]``, BOS ``<|extra_203|>``, BOI ``<|image start|>``, IMG ``<|image token|>``; ``suffix`` is
  the script's positive prompt " masterpiece, film grained, best quality." (pass ``suffix=""``
  for the bare processor form). The unconditional branch is the script's fixed negative prompt
  through the same template (no suffix), a sequence of its own length and positions.
- Lumina-mGPT: ``[BOS] + tok("Generate an image of {w}x{h} according to the following
  prompt:\\n{caption}<reserved08706>")`` (pixels, width first), then the forced image head
  ``[BOI, size(h), size(w)]`` with BOI ``<racm3:break>`` and the size token
  ``<reserved{8800 + g:05d}>`` for g = pixels / 32 (the latent grid is 2 g). The unconditional
  branch of upstream Lumina-mGPT is ``[BOI, size(h), size(w)]`` alone.

Every special id is looked up by name in the tokenizer's vocabulary (nothing is hard-coded);
a tokenizer lacking one raises ValueError naming it. Token ids remain accepted everywhere: these
functions only build them.
"""

from __future__ import annotations

import os
from typing import Dict, List, Sequence, Tuple, Union

__all__ = ["load_tokenizer", "emu3_prompt_ids", "emu3_grid", "emu3_special_ids",
           "lumina_prompt_ids", "lumina_special_ids", "lumina_grid",
           "EMU3_POSITIVE_SUFFIX", "EMU3_NEGATIVE_PROMPT", "LUMINA_TEMPLATE", "EMU3_SPECIAL",
           "LUMINA_SPECIAL"]

EMU3_POSITIVE_SUFFIX = " masterpiece, film grained, best quality."
EMU3_NEGATIVE_PROMPT = ("lowres, bad anatomy, bad hands, text, error, missing fingers, extra "
                        "digit, fewer digits, cropped, worst quality, low quality, normal "
                        "quality, jpeg artifacts, signature, watermark, username, blurry.")
EMU3_IMAGE_AREA = 720 * 720
EMU3_SPATIAL_FACTOR = 8

#: Emu3 special tokens by role (names as in the released vocabulary)
EMU3_SPECIAL = {"bos": "<|extra_203|>", "eos": "<|extra_204|>", "pad": "<|endoftext|>",
                "img": "<|image token|>", "boi": "<|image start|>", "eoi": "<|image end|>",
                "eol": "<|extra_200|>", "eof": "<|extra_201|>"}
#: Lumina-mGPT (Chameleon vocabulary) special tokens by role
LUMINA_SPECIAL = {"bos": "<s>", "pad": "<pad>", "boi": "<racm3:break>", "eoi": "<eoss>",
                  "end_of_turn": "<reserved08706>", "eol": "<reserved08799>"}
LUMINA_TEMPLATE = "Generate an image of {w}x{h} according to the following prompt:\n{caption}"
LUMINA_PATCH = 32  # pixels per size-token unit; the VQGAN's 16 px per code gives 2 codes/unit


def load_tokenizer(path):
    """A ``tokenizers.Tokenizer`` from a file or a checkpoint folder (tokenizer.json, else
    text_tokenizer.json). Raises ImportError with the install hint without ``tokenizers``."""
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise ImportError("text prompts need the 'tokenizers' package: "
                          "pip install 'zipar[text]' (or pip install tokenizers); "
                          "token ids can be passed without it") from None
    path = os.fspath(path)
    if os.path.isdir(path):
        for name in ("tokenizer.json", "text_tokenizer.json"):
            if os.path.isfile(os.path.join(path, name)):
                path = os.path.join(path, name)
                break
        else:
            raise FileNotFoundError(f"{path}: no tokenizer.json or text_tokenizer.json")
    try:
        return Tokenizer.from_file(path)
    except Exception as e:  # tokenizers raises its own Exception type
        raise ValueError(f"{path}: not a readable tokenizer file ({e})") from None


def _tokenizer(tok):
    if isinstance(tok, (str, os.PathLike)):
        return load_tokenizer(tok)
    if not hasattr(tok, "encode") or not hasattr(tok, "token_to_id"):
        raise TypeError(f"expected a tokenizers.Tokenizer or a path, got {type(tok).__name__}")
    return tok


def _special_ids(tok, names: Dict[str, str], family: str) -> Dict[str, int]:
    out = {}
    for role, name in names.items():
        i = tok.token_to_id(name)
        if i is None:
            raise ValueError(f"{family} tokenizer has no token {name!r} ({role})")
        out[role] = int(i)
    return out


def _encode(tok, text: str) -> List[int]:
    if not isinstance(text, str):
        raise TypeError(f"prompt text must be a str, got {type(text).__name__}")
    return [int(i) for i in tok.encode(text, add_special_tokens=False).ids]


def _grid(grid) -> Tuple[int, int]:
    if isinstance(grid, (int,)) and not isinstance(grid, bool):
        grid = (grid, grid)
    try:
        H, W = (int(g) for g in grid)
    except (TypeError, ValueError):
        raise ValueError(f"grid must be (H, W) or an int, got {grid!r}") from None
    if H < 1 or W < 1:
        raise ValueError(f"grid must be positive, got {(H, W)}")
    return H, W


# --------------------------------------------------------------------------------------------
# Emu3
# --------------------------------------------------------------------------------------------

def emu3_special_ids(tokenizer) -> Dict[str, int]:
    """Emu3's special ids by role (bos, eos, pad, img, boi, eoi, eol, eof) from the tokenizer."""
    return _special_ids(_tokenizer(tokenizer), EMU3_SPECIAL, "Emu3")


def emu3_grid(ratio: str = "1:1", image_area: int = EMU3_IMAGE_AREA,
              spatial_factor: int = EMU3_SPATIAL_FACTOR) -> Tuple[int, int]:
    """The (H, W) code grid Emu3 generates for an aspect ratio "W:H" and a pixel area
    (``calculate_generate_size``: Python round, half to even). 1:1 at 720*720 -> (90, 90)."""
    try:
        w, h = (int(v) for v in ratio.split(":"))
    except (AttributeError, ValueError):
        raise ValueError(f"ratio must look like '16:9' (width:height), got {ratio!r}") from None
    if w < 1 or h < 1 or image_area < 1:
        raise ValueError(f"ratio and image_area must be positive, got {ratio!r}, {image_area}")
    target = (image_area / (w * h)) ** 0.5
    return int(round(h * target / spatial_factor)), int(round(w * target / spatial_factor))


def emu3_prompt_ids(tokenizer, text: str, grid=(90, 90), *, suffix: str = EMU3_POSITIVE_SUFFIX,
                    negative_prompt: str = EMU3_NEGATIVE_PROMPT) -> Tuple[List[int], List[int]]:
    """(prompt ids, negative prompt ids) for Emu3-Gen text-to-image at ``grid`` = (H, W) codes.

    ``ids = [BOS] + tok(text + suffix) + [BOI] + tok("H*W") + [IMG]``; the negative prompt goes
    through the same template without the suffix (the official generation script's CFG branch).
    """
    tok = _tokenizer(tokenizer)
    H, W = _grid(grid)
    sp = emu3_special_ids(tok)
    head = [sp["boi"]] + _encode(tok, f"{H}*{W}") + [sp["img"]]
    ids = [sp["bos"]] + _encode(tok, text + suffix) + head
    neg = [sp["bos"]] + _encode(tok, negative_prompt) + head
    return ids, neg


# --------------------------------------------------------------------------------------------
# Lumina-mGPT
# --------------------------------------------------------------------------------------------

def lumina_special_ids(tokenizer) -> Dict[str, int]:
    """Lumina-mGPT's special ids by role (bos, pad, boi, eoi, end_of_turn, eol)."""
    return _special_ids(_tokenizer(tokenizer), LUMINA_SPECIAL, "Lumina-mGPT")


def lumina_grid(size) -> Tuple[int, int]:
    """Pixels (int or (h, w), multiples of 32) -> the (H, W) code grid (768 -> (48, 48))."""
    h, w = _grid(size)
    if h % LUMINA_PATCH or w % LUMINA_PATCH:
        raise ValueError(f"Lumina-mGPT image sizes are multiples of {LUMINA_PATCH} px, got "
                         f"{h}x{w}")
    return 2 * (h // LUMINA_PATCH), 2 * (w // LUMINA_PATCH)


def lumina_prompt_ids(tokenizer, caption: str, size: Union[int, Sequence[int]] = 768,
                      *, image_head: bool = True) -> Tuple[List[int], List[int]]:
    """(prompt ids, unconditional ids) for Lumina-mGPT at ``size`` pixels (int or (h, w)).

    ``ids = [BOS] + tok(template + "<reserved08706>")`` plus, with ``image_head``, the forced
    ``[BOI, size(h), size(w)]``; the unconditional ids are ``[BOI, size(h), size(w)]``
    (upstream Lumina-mGPT's CFG branch, its own positions from 0).
    """
    tok = _tokenizer(tokenizer)
    h, w = _grid(size)
    lumina_grid((h, w))  # validates the multiples of 32
    sp = lumina_special_ids(tok)
    text = LUMINA_TEMPLATE.format(w=w, h=h, caption=caption) + LUMINA_SPECIAL["end_of_turn"]
    body = _encode(tok, text)
    if not body or body[-1] != sp["end_of_turn"]:
        raise ValueError("the tokenizer does not split '<reserved08706>' off as one token; is "
                         "it Lumina-mGPT's (Chameleon's) tokenizer?")
    size_ids = []
    for px in (h, w):
        name = f"<reserved{8800 + px // LUMINA_PATCH:05d}>"
        i = tok.token_to_id(name)
        if i is None:
            raise ValueError(f"Lumina-mGPT tokenizer has no size token {name!r} for {px} px")
        size_ids.append(int(i))
    head = [sp["boi"]] + size_ids
    ids = [sp["bos"]] + body + (head if image_head else [])
    return ids, head
