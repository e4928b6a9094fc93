"""Sample-quality metrics for the built-in Fashion-MNIST model, in NumPy.

A small CNN classifier (trained with training/train_fmnist.py on palette-quantised images,
shipped as zipar/data/fmnist_classifier.npz) gives class predictions and 128-d penultimate
features. On those features:

- ``frechet_distance(feat_a, feat_b)``: the Frechet distance between Gaussians fitted to two
  feature sets (the FID formula, computed without SciPy);
- ``fid_proxy(images, reference_images)``: that distance between generated and reference
  images, with a bootstrap interval over samples ("FID-proxy": Inception is replaced by the
  Fashion-MNIST CNN, so values are not comparable with published FIDs);
- ``class_accuracy(images, labels)``: how often the classifier agrees with the requested class;
- ``diversity(images, labels)``: mean pairwise feature distance within each class, relative to
  the test set's.

The floor of the FID-proxy (test set split into two halves of 5,000) is in builtin.json under
``fid_proxy_floor``.
"""

from __future__ import annotations

import json
import os

import numpy as np

from .tokenizer import GreyTokenizer, load_idx

__all__ = ["Classifier", "frechet_distance", "fid_proxy", "class_accuracy", "diversity",
           "test_set", "train_set", "DATASET_DIR"]

_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data")
#: the classifier's weights (zipar/data)
CLASSIFIER_PATH = os.path.join(_DATA, "fmnist_classifier.npz")

#: Where Debian's dataset-fashion-mnist puts the idx files; ZIPAR_FMNIST_DIR overrides it.
DATASET_DIR = "/usr/share/datasets/fashion-mnist"


# ============================================================================ dataset

def _dataset_dir() -> str:
    return os.environ.get("ZIPAR_FMNIST_DIR", DATASET_DIR)


def _load_split(prefix: str):
    d = _dataset_dir()
    img = os.path.join(d, f"{prefix}-images-idx3-ubyte.gz")
    lab = os.path.join(d, f"{prefix}-labels-idx1-ubyte.gz")
    if not (os.path.exists(img) and os.path.exists(lab)):
        raise FileNotFoundError(
            f"Fashion-MNIST not found: expected {img} and {lab}. Install Debian's package "
            "(apt-get install dataset-fashion-mnist) or point ZIPAR_FMNIST_DIR at a folder "
            "holding the four *-idx?-ubyte.gz files.")
    return load_idx(img), load_idx(lab).astype(np.int64)


def test_set():
    """Fashion-MNIST test images uint8 (10000, 28, 28) and labels int64 (10000,)."""
    return _load_split("t10k")


def train_set():
    """Fashion-MNIST training images uint8 (60000, 28, 28) and labels int64 (60000,)."""
    return _load_split("train")


# ============================================================================ classifier

def _conv3x3_relu(x, w, b):
    """x (N, H, W, C) float32, w (O, C, 3, 3), b (O,) -> relu(conv(x, pad 1)) (N, H, W, O).

    im2col: the 9 shifted views of the zero-padded input, concatenated in (ky, kx, c) order,
    times the weight reshaped to match."""
    n, h, wd, c = x.shape
    xp = np.zeros((n, h + 2, wd + 2, c), dtype=x.dtype)
    xp[:, 1:-1, 1:-1] = x
    cols = np.concatenate([xp[:, ky:ky + h, kx:kx + wd] for ky in range(3) for kx in range(3)],
                          axis=-1)  # (N, H, W, 9C)
    wm = w.transpose(2, 3, 1, 0).reshape(9 * c, -1)  # (ky, kx, c) x O
    y = cols.reshape(-1, 9 * c) @ wm + b
    return np.maximum(y, 0, out=y).reshape(n, h, wd, -1)


def _maxpool2(x):
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class Classifier:
    """NumPy forward of the CNN of training/train_fmnist.py.

    conv3x3(1->32)+ReLU+maxpool2, conv3x3(32->64)+ReLU+maxpool2, fc(3136->128)+ReLU = features,
    fc(128->10) = logits. Inputs are uint8 grey images (N, 28, 28); they are first quantised to
    the classifier's palette (``quantize=True``, the default) so real and generated images are
    seen the same way.
    """

    def __init__(self, weights: dict, meta: dict, quantize: bool = True):
        self.meta = dict(meta)
        self.w = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
        for k in ("conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc1.weight",
                  "fc1.bias", "fc2.weight", "fc2.bias"):
            if k not in self.w:
                raise ValueError(f"classifier weights lack {k!r}")
        self.mean = float(meta["input_mean"])
        self.std = float(meta["input_std"])
        self.tokenizer = GreyTokenizer(int(meta["levels"])) if quantize else None
        self.feature_dim = self.w["fc1.weight"].shape[0]

    @classmethod
    def load(cls, path, quantize: bool = True) -> "Classifier":
        with np.load(path) as z:
            weights = {k: z[k] for k in z.files if k != "__zipar_classifier__"}
            meta = json.loads(bytes(z["__zipar_classifier__"]).decode())
        return cls(weights, meta, quantize=quantize)

    @classmethod
    def load_default(cls, quantize: bool = True) -> "Classifier":
        """The classifier shipped in zipar/data/fmnist_classifier.npz."""
        return cls.load(CLASSIFIER_PATH, quantize=quantize)

    def _check(self, images):
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
            raise ValueError(f"images must be uint8 (N, 28, 28), got {images.dtype} "
                             f"{images.shape}")
        return images

    def _forward(self, images, batch):
        """-> (features (N, F) float32, logits (N, 10) float32)."""
        images = self._check(images)
        if self.tokenizer is not None:
            images = self.tokenizer.quantize(images)
        w = self.w
        feats, logits = [], []
        for i in range(0, len(images), batch):
            x = images[i:i + batch].astype(np.float32) / 255.0
            x = ((x - self.mean) / self.std)[..., None]  # (n, 28, 28, 1)
            x = _maxpool2(_conv3x3_relu(x, w["conv1.weight"], w["conv1.bias"]))
            x = _maxpool2(_conv3x3_relu(x, w["conv2.weight"], w["conv2.bias"]))
            x = x.transpose(0, 3, 1, 2).reshape(len(x), -1)  # PyTorch's (C, H, W) flatten
            f = np.maximum(x @ w["fc1.weight"].T + w["fc1.bias"], 0)
            feats.append(f)
            logits.append(f @ w["fc2.weight"].T + w["fc2.bias"])
        if not feats:
            return (np.zeros((0, self.feature_dim), np.float32), np.zeros((0, 10), np.float32))
        return np.concatenate(feats), np.concatenate(logits)

    def features(self, images, batch: int = 500) -> np.ndarray:
        """Penultimate-layer features (N, 128) float64."""
        return self._forward(images, batch)[0].astype(np.float64)

    def logits(self, images, batch: int = 500) -> np.ndarray:
        return self._forward(images, batch)[1].astype(np.float64)

    def predict(self, images, batch: int = 500) -> np.ndarray:
        """Predicted labels (N,) int64."""
        return np.argmax(self._forward(images, batch)[1], axis=1).astype(np.int64)


_default_classifier = None


def _classifier(classifier=None) -> Classifier:
    global _default_classifier
    if classifier is not None:
        return classifier
    if _default_classifier is None:
        _default_classifier = Classifier.load_default()
    return _default_classifier


# ============================================================================ metrics

def _sqrtm_psd(s):
    """Symmetric PSD square root via eigh; tiny negative eigenvalues (round-off) clipped."""
    w, v = np.linalg.eigh((s + s.T) * 0.5)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def _stats(feat):
    feat = np.asarray(feat, dtype=np.float64)
    if feat.ndim != 2 or len(feat) < 2:
        raise ValueError(f"features must be (N >= 2, F), got shape {feat.shape}")
    return feat.mean(axis=0), np.cov(feat, rowvar=False)


def _frechet_from_stats(mu_a, sa, mu_b, sb):
    """|mu_a - mu_b|^2 + tr(Sa) + tr(Sb) - 2 tr((Sa^1/2 Sb Sa^1/2)^1/2).

    tr sqrt(Sa Sb) equals the sum of square roots of the eigenvalues of the symmetric PSD
    matrix Sa^1/2 Sb Sa^1/2, which eigvalsh gives without complex arithmetic."""
    root_a = _sqrtm_psd(sa)
    m = root_a @ sb @ root_a
    ev = np.linalg.eigvalsh((m + m.T) * 0.5)
    tr_sqrt = np.sqrt(np.clip(ev, 0.0, None)).sum()
    diff = mu_a - mu_b
    return float(diff @ diff + np.trace(sa) + np.trace(sb) - 2.0 * tr_sqrt)


def frechet_distance(feat_a, feat_b) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (N_a, F) and (N_b, F)."""
    mu_a, sa = _stats(feat_a)
    mu_b, sb = _stats(feat_b)
    if mu_a.shape != mu_b.shape:
        raise ValueError(f"feature widths differ: {mu_a.shape[0]} vs {mu_b.shape[0]}")
    return _frechet_from_stats(mu_a, sa, mu_b, sb)


def fid_proxy(images, reference_images=None, n_boot: int = 100, seed: int = 0,
              classifier=None, reference_features=None) -> dict:
    """FID-proxy of uint8 images (N, 28, 28) against reference images (default: the test set).

    Returns dict(value, low, high, n, n_ref, n_boot, boot_bias): the distance on all samples
    and a 95% bootstrap interval. Both sets are resampled with replacement n_boot times; the
    Frechet distance of a resample is biased upward (duplicates and sampling noise add to it:
    boot_bias = mean of the replicates - value), so the interval is the 2.5/97.5 percentiles of
    the replicates shifted down by boot_bias (clipped at 0). It shows the spread that finite
    samples cause; FID's own small-sample bias (the floor in builtin.json) is not removed.
    Pass reference_features to reuse features computed before.
    """
    clf = _classifier(classifier)
    fa = clf.features(images)
    if reference_features is None:
        if reference_images is None:
            reference_images = test_set()[0]
        reference_features = clf.features(reference_images)
    fb = np.asarray(reference_features, dtype=np.float64)
    value = frechet_distance(fa, fb)
    out = {"value": value, "low": value, "high": value, "n": int(len(fa)), "n_ref": int(len(fb)),
           "n_boot": int(n_boot), "boot_bias": 0.0}
    if n_boot > 0:
        rng = np.random.default_rng(seed)
        boots = np.empty(n_boot)
        for i in range(n_boot):
            ia = rng.integers(0, len(fa), len(fa))
            ib = rng.integers(0, len(fb), len(fb))
            boots[i] = frechet_distance(fa[ia], fb[ib])
        bias = float(boots.mean() - value)
        lo, hi = np.percentile(boots, [2.5, 97.5]) - bias
        out["low"], out["high"], out["boot_bias"] = max(float(lo), 0.0), float(hi), bias
    return out


def class_accuracy(images, labels, classifier=None) -> float:
    """Fraction of images that the classifier assigns to the class in labels."""
    labels = np.asarray(labels).reshape(-1)
    pred = _classifier(classifier).predict(images)
    if len(pred) != len(labels):
        raise ValueError(f"{len(pred)} images but {len(labels)} labels")
    return float(np.mean(pred == labels)) if len(pred) else float("nan")


def _mean_pairwise(feat):
    """Mean Euclidean distance over distinct pairs of rows."""
    n = len(feat)
    if n < 2:
        return float("nan")
    sq = (feat * feat).sum(1)
    d2 = np.clip(sq[:, None] + sq[None, :] - 2.0 * feat @ feat.T, 0.0, None)
    iu = np.triu_indices(n, 1)
    return float(np.sqrt(d2[iu]).mean())


def _within_class(feat, labels, max_per_class, rng):
    out = {}
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) > max_per_class:
            idx = rng.choice(idx, max_per_class, replace=False)
        out[int(c)] = _mean_pairwise(feat[idx])
    return out


_test_within = {}


def diversity(images, labels, classifier=None, max_per_class: int = 1000, seed: int = 0) -> dict:
    """Within-class diversity: mean pairwise feature distance inside each class, divided by the
    same quantity on the test set (1.0 = as diverse as real data; mode collapse -> toward 0).

    Returns dict(value (mean over classes of the ratio), per_class {c: ratio}, absolute
    {c: mean distance}, reference {c: test-set mean distance}).
    """
    clf = _classifier(classifier)
    labels = np.asarray(labels).reshape(-1)
    rng = np.random.default_rng(seed)
    mine = _within_class(clf.features(images), labels, max_per_class, rng)
    key = (id(clf), max_per_class, seed)
    if key not in _test_within:
        tx, ty = test_set()
        _test_within[key] = _within_class(clf.features(tx), ty, max_per_class,
                                          np.random.default_rng(seed))
    ref = _test_within[key]
    ratio = {c: mine[c] / ref[c] for c in mine if c in ref and np.isfinite(mine[c])}
    value = float(np.mean(list(ratio.values()))) if ratio else float("nan")
    return {"value": value, "per_class": ratio, "absolute": mine,
            "reference": {c: ref[c] for c in mine if c in ref}}
