"""Sweep metrics of the built-in Fashion-MNIST model: functions ``f(model, tokens, labels)`` as
zipar.sweep takes them, on top of zipar.fmnist.eval (plus :func:`nll_bits`, which fits any model).
"""

from __future__ import annotations

import math
import os
from typing import Callable, Dict, Optional

import numpy as np

from . import eval as zeval
from .builtin import default_tokenizer

__all__ = ["nll_bits", "eval_class_accuracy", "eval_fid_proxy", "eval_diversity",
           "available_metrics"]


def nll_bits(model, tokens, labels) -> float:
    """Mean negative log-likelihood of the samples under the model (no guidance), bits per
    token: how typical the generated grids are for the model itself."""
    c = model.config
    lp = model.log_prob(labels, tokens)
    return float(-lp.mean() / (c.H * c.W) / math.log(2.0))


def _images(model, tokens) -> np.ndarray:
    """uint8 pixels of token grids: the model's decoder or tokenizer, else the built-in model's
    grey tokenizer."""
    images = model.decode(tokens)
    if images is None:
        images = default_tokenizer().decode(tokens)
    return images


_REFERENCE_FEATURES: Dict[str, np.ndarray] = {}   # per process: classifier features of the test set


def eval_class_accuracy(model, tokens, labels) -> float:
    """zipar.eval.class_accuracy: how often the Fashion-MNIST classifier sees the asked class."""
    return zeval.class_accuracy(_images(model, tokens), labels)


def eval_fid_proxy(model, tokens, labels) -> dict:
    """zipar.eval.fid_proxy against the Fashion-MNIST test set, with its 95% bootstrap interval:
    columns fid_proxy, fid_proxy_low, fid_proxy_high (None below 2 samples)."""
    if len(tokens) < 2:
        return {"value": None, "low": None, "high": None}
    if "test" not in _REFERENCE_FEATURES:
        clf = zeval.Classifier.load_default()      # the weights fid_proxy uses by default
        _REFERENCE_FEATURES["test"] = clf.features(zeval.test_set()[0])
    r = zeval.fid_proxy(_images(model, tokens), reference_features=_REFERENCE_FEATURES["test"])
    return {"value": r["value"], "low": r["low"], "high": r["high"]}


def eval_diversity(model, tokens, labels) -> Optional[float]:
    """zipar.eval.diversity: within-class feature spread relative to the test set's."""
    return zeval.diversity(_images(model, tokens), labels)["value"]


def available_metrics() -> Dict[str, Callable]:
    """The zipar.eval metrics whose data are present (classifier weights, the dataset)."""
    if not os.path.exists(zeval.CLASSIFIER_PATH):
        return {}
    chosen = {"class_accuracy": eval_class_accuracy}
    dataset = os.environ.get("ZIPAR_FMNIST_DIR", getattr(zeval, "DATASET_DIR", ""))
    if os.path.exists(os.path.join(dataset, "t10k-images-idx3-ubyte.gz")):
        chosen.update(fid_proxy=eval_fid_proxy, diversity=eval_diversity)
    return chosen
