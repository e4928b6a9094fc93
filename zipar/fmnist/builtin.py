"""The built-in model: a LlamaGen c2i GPT trained on Fashion-MNIST (training/train_fmnist.py).

Shipped in zipar/data:
- fmnist_gpt.npz: float16 weights under LlamaGen's state-dict names, plus "__zipar_config__"
  (JSON bytes: ModelConfig fields and "levels", the tokenizer's palette size);
- builtin.json: how it was trained and what it scores (test NLL in bits per pixel computed with
  the float16 weights in float32 math, classifier accuracy, the FID-proxy floor, ...);
- builtin_reference.npz: PyTorch float32 logits and log-likelihoods for a few test images
  (``reference()``), the golden values the engine is checked against.
"""

from __future__ import annotations

import json
import os

import numpy as np

from ..config import ModelConfig
from ..model import Model
from .tokenizer import GreyTokenizer

__all__ = ["CLASS_NAMES", "load_default", "default_tokenizer", "builtin_info", "default_config",
           "reference", "DATA_DIR"]

#: Fashion-MNIST's ten classes, by label
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot")

#: zipar/data, where the package's data files are installed
DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")
_GPT = os.path.join(DATA_DIR, "fmnist_gpt.npz")
_CONFIG_KEY = "__zipar_config__"


def _read_npz():
    """-> (config dict including "levels", weights dict of float16 arrays)."""
    with np.load(_GPT) as z:
        config = json.loads(bytes(z[_CONFIG_KEY]).decode())
        weights = {k: z[k] for k in z.files if k != _CONFIG_KEY}
    return config, weights


def default_config():
    """The built-in model's zipar.ModelConfig."""
    config, _ = _read_npz()
    config.pop("levels", None)
    return ModelConfig.from_dict(config)


def load_default():
    """The built-in Fashion-MNIST model as a zipar.model.Model (float16 weights)."""
    config, weights = _read_npz()
    levels = int(config.pop("levels"))
    # the tokenizer is attached so results carry images (model.decode, result.images)
    return Model(ModelConfig.from_dict(config), weights, tokenizer=GreyTokenizer(levels))


def default_tokenizer() -> GreyTokenizer:
    """The tokenizer that maps the built-in model's tokens to grey values and back."""
    with np.load(_GPT) as z:
        levels = json.loads(bytes(z[_CONFIG_KEY]).decode())["levels"]
    return GreyTokenizer(int(levels))


def builtin_info() -> dict:
    """builtin.json as a dict: training record and reference scores of the built-in model."""
    with open(os.path.join(DATA_DIR, "builtin.json")) as f:
        return json.load(f)


def reference() -> dict:
    """builtin_reference.npz as a dict of arrays.

    labels (8,), tokens (8, 28, 28), test_index (8,): eight test images;
    logits (2, 784, V): float32 logits for images 0 and 1, logits[b, i] predicting grid token i
    (raster order) given the class and tokens before it; logits_null (2, 784, V): the same with
    the null class (index num_classes); loglik (8,): sum of natural-log probabilities of each
    image's tokens; classifier_features (64, 128): PyTorch features of the first 64 test images
    (quantised) from the shipped classifier.
    """
    with np.load(os.path.join(DATA_DIR, "builtin_reference.npz")) as z:
        return {k: z[k] for k in z.files}
