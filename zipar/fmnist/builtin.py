"""The built-in models: LlamaGen c2i GPTs trained on Fashion-MNIST.

``load_default()`` (name "vq", the default) is a miniature LlamaGen (training/train_vq_fmnist.py):
a VQ tokenizer of LlamaGen's VQ-16 family (16x16 tokens of a 1024-code codebook for the images
upscaled to 64x64) and a c2i GPT on those tokens: the regime of the ZipAR paper. Its images come
from the VQ decoder (zipar.families.vq16, the code path of the published checkpoints), mapped
back to 28x28 grey (zipar.fmnist.resize) so that zipar.fmnist.eval's metrics read them.
``load_default("pixels")`` is the first built-in model (training/train_fmnist.py): a GPT on
28x28 grids of 16 grey levels, one token per pixel.

Shipped in zipar/data for "vq":
- fmnist_vq_gpt.npz: float16 GPT weights under LlamaGen's names, "__zipar_config__" (ModelConfig);
- fmnist_vq_tokenizer.npz: the float16 VQ state dict (encoder and decoder, LlamaGen's VQModel
  names) and "__zipar_vq__" (its configuration as JSON bytes);
- fmnist_vq.json: training record and scores (``builtin_info("vq")``), and "row_start_proxy":
  the calibrated row-start proxy (benchmarks/calibrate_proxy.py) that ``load_default`` sets;
- fmnist_vq_reference.npz: PyTorch golden values (``reference("vq")``).

and for "pixels":
- fmnist_gpt.npz: float16 weights under LlamaGen's state-dict names, plus "__zipar_config__"
  (JSON bytes: ModelConfig fields and "levels", the tokenizer's palette size);
- builtin.json: how it was trained and what it scores (test NLL in bits per pixel computed with
  the float16 weights in float32 math, classifier accuracy, the FID-proxy floor, ...) and the
  calibrated "row_start_proxy", as for "vq";
- builtin_reference.npz: PyTorch float32 logits and log-likelihoods for a few test images
  (``reference()``), the golden values the engine is checked against.
"""

from __future__ import annotations

import json
import os

import numpy as np

from ..config import ModelConfig
from ..families.llamagen import read_vq_state_dict
from ..families.vq16 import VQDecoder
from ..model import Model
from .resize import to_grey28
from .tokenizer import GreyTokenizer

__all__ = ["CLASS_NAMES", "load_default", "default_tokenizer", "builtin_info", "best_zipar",
           "default_config", "reference", "vq_decoder", "FashionVQDecoder", "BUILTIN_NAMES",
           "DATA_DIR", "row_start_proxy", "builtin_record_path"]

#: Fashion-MNIST's ten classes, by label
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot")

#: zipar/data, where the package's data files are installed
DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")
_GPT = os.path.join(DATA_DIR, "fmnist_gpt.npz")
_VQ_GPT = os.path.join(DATA_DIR, "fmnist_vq_gpt.npz")
_VQ_TOKENIZER = os.path.join(DATA_DIR, "fmnist_vq_tokenizer.npz")
_CONFIG_KEY = "__zipar_config__"
_VQ_KEY = "__zipar_vq__"

#: the names ``load_default`` knows; the first is the default
BUILTIN_NAMES = ("vq", "pixels")


def _check_name(name) -> str:
    if name not in BUILTIN_NAMES:
        raise ValueError(f"unknown built-in model {name!r}; choose one of {BUILTIN_NAMES}")
    return name


class FashionVQDecoder:
    """Token grids (B, 16, 16) of the VQ model -> 28x28 grey images, through the VQ decoder.

    ``decode`` gives (B, 28, 28) uint8 (what zipar.fmnist.eval reads, and ``result.images`` of
    the built-in VQ model); ``decode_pixels`` the decoder's own (B, 64, 64, 3) uint8 output;
    ``vq`` is the zipar.families.vq16.VQDecoder.
    """

    def __init__(self, vq):
        self.vq = vq

    def decode_pixels(self, tokens) -> np.ndarray:
        return self.vq.decode(tokens)

    def decode(self, tokens) -> np.ndarray:
        return to_grey28(self.vq.decode(tokens))

    def __repr__(self):
        return (f"<FashionVQDecoder codebook={self.vq.codebook_size} scale={self.vq.scale} "
                f"-> 28x28 grey>")


def vq_decoder() -> FashionVQDecoder:
    """The VQ model's decoder (float16 weights widened to float32)."""
    return FashionVQDecoder(VQDecoder(read_vq_state_dict(_VQ_TOKENIZER)))


def _read_npz():
    """-> (config dict including "levels", weights dict of float16 arrays)."""
    with np.load(_GPT) as z:
        config = json.loads(bytes(z[_CONFIG_KEY]).decode())
        weights = {k: z[k] for k in z.files if k != _CONFIG_KEY}
    return config, weights


def _read_vq_gpt():
    with np.load(_VQ_GPT) as z:
        config = json.loads(bytes(z[_CONFIG_KEY]).decode())
        weights = {k: z[k] for k in z.files if k != _CONFIG_KEY}
    return config, weights


def default_config(name: str = "vq"):
    """The zipar.ModelConfig of the built-in model ``name`` ("vq" or "pixels")."""
    if _check_name(name) == "vq":
        config, _ = _read_vq_gpt()
    else:
        config, _ = _read_npz()
        config.pop("levels", None)
    return ModelConfig.from_dict(config)


def load_default(name: str = "vq"):
    """A built-in Fashion-MNIST model as a zipar.Model (float16 weights).

    "vq" (default): the miniature LlamaGen, 16x16 VQ tokens, vocabulary 1024; its decoder (a
    :class:`FashionVQDecoder`) is attached, so ``result.images`` are 28x28 grey.
    "pixels": 28x28 grey-level tokens, vocabulary 16; its GreyTokenizer is attached.
    Both carry ``row_start_proxy``, the token ``proxy="calibrated"`` feeds, from their record
    (``builtin_info(name)["row_start_proxy"]``, written by benchmarks/calibrate_proxy.py).
    """
    proxy = row_start_proxy(name)
    if _check_name(name) == "vq":
        config, weights = _read_vq_gpt()
        return Model(ModelConfig.from_dict(config), weights, decoder=vq_decoder(),
                     row_start_proxy=proxy)
    config, weights = _read_npz()
    levels = int(config.pop("levels"))
    # the tokenizer is attached so results carry images (model.decode, result.images)
    return Model(ModelConfig.from_dict(config), weights, tokenizer=GreyTokenizer(levels),
                 row_start_proxy=proxy)


def row_start_proxy(name: str = "vq"):
    """The calibrated row-start proxy token of a built-in model (None if its record has none):
    ``builtin_info(name)["row_start_proxy"]["token"]``; the record also says how it was
    computed (n_samples, seed, cfg_scale, the token's fraction of row ends)."""
    rec = builtin_info(name).get("row_start_proxy")
    return None if rec is None else int(rec["token"])


def default_tokenizer() -> GreyTokenizer:
    """The tokenizer that maps the "pixels" model's tokens to grey values and back (the "vq"
    model decodes through :func:`vq_decoder` instead)."""
    with np.load(_GPT) as z:
        levels = json.loads(bytes(z[_CONFIG_KEY]).decode())["levels"]
    return GreyTokenizer(int(levels))


def builtin_record_path(name: str = "vq") -> str:
    """The JSON record of a built-in model: zipar/data/fmnist_vq.json ("vq") or builtin.json
    ("pixels")."""
    fname = "fmnist_vq.json" if _check_name(name) == "vq" else "builtin.json"
    return os.path.join(DATA_DIR, fname)


def builtin_info(name: str = "vq") -> dict:
    """Training record and reference scores of a built-in model: fmnist_vq.json ("vq") or
    builtin.json ("pixels")."""
    with open(builtin_record_path(name)) as f:
        return json.load(f)


def best_zipar(name: str = "vq"):
    """The built-in model's best measured ZipAR setting, or None: a dict with window, schedule,
    proxy (ZipAR's fields) and where it was measured (the record's "best_zipar": the largest
    step reduction whose FID-proxy interval overlaps raster's in benchmarks/bench_fidelity.py).
    The main job (`zipar generate`) runs it beside raster."""
    best = builtin_info(name).get("best_zipar")
    if not best:
        return None
    return dict(best)


def reference(name: str = "vq") -> dict:
    """PyTorch golden values of a built-in model as a dict of arrays.

    "vq" (fmnist_vq_reference.npz): decoder_tokens (3, 16, 16) and decoder_output
    (3, 3, 64, 64), the float32 PyTorch decoder on those tokens; test_index, labels, tokens
    (8, 16, 16): the first eight test images as tokenized by the shipped encoder; loglik (8,):
    their log-likelihoods in nats; logits (32, 1024): test image 0's logits at grid positions
    logits_positions (every 8th).

    "pixels" (builtin_reference.npz): labels (8,), tokens (8, 28, 28), test_index (8,): eight
    test images; logits (2, 784, V): float32 logits for images 0 and 1, logits[b, i]
    predicting grid token i (raster order) given the class and tokens before it; logits_null
    (2, 784, V): the same with the null class (index num_classes); loglik (8,): sum of
    natural-log probabilities of each image's tokens; classifier_features (64, 128): PyTorch
    features of the first 64 test images (quantised) from the shipped classifier.
    """
    fname = "fmnist_vq_reference.npz" if _check_name(name) == "vq" else "builtin_reference.npz"
    with np.load(os.path.join(DATA_DIR, fname)) as z:
        return {k: z[k] for k in z.files}
