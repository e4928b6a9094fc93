"""zipar.eval: Frechet distance, the NumPy classifier, FID-proxy and diversity."""

import os

import numpy as np
import pytest

from zipar import eval as zeval

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "zipar", "data")


def _have_dataset():
    d = os.environ.get("ZIPAR_FMNIST_DIR", zeval.DATASET_DIR)
    return os.path.exists(os.path.join(d, "t10k-images-idx3-ubyte.gz"))


needs_dataset = pytest.mark.skipif(
    not _have_dataset(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist, or set "
           "ZIPAR_FMNIST_DIR)")
needs_classifier = pytest.mark.skipif(
    not os.path.exists(os.path.join(DATA, "fmnist_classifier.npz")),
    reason="zipar/data/fmnist_classifier.npz missing (train with training/train_fmnist.py)")


def _sqrtm_direct(m):
    """Principal square root of a diagonalizable matrix with positive real spectrum."""
    w, v = np.linalg.eig(m)
    return (v * np.sqrt(w.astype(complex))) @ np.linalg.inv(v)


def _frechet_direct(a, b):
    """The textbook formula |mu_a - mu_b|^2 + tr(Sa + Sb - 2 (Sa Sb)^1/2)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = _sqrtm_direct(sa @ sb).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sa + sb - 2 * covmean))


def test_frechet_of_a_set_with_itself_is_zero():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 16)) @ rng.normal(size=(16, 16))
    assert abs(zeval.frechet_distance(a, a)) < 1e-8 * np.trace(np.cov(a, rowvar=False))


def test_frechet_grows_with_a_shift():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(2000, 8))
    b = rng.normal(size=(2000, 8))
    d0 = zeval.frechet_distance(a, b)
    d1 = zeval.frechet_distance(a, b + 0.5)
    d2 = zeval.frechet_distance(a, b + 1.0)
    assert 0 <= d0 < d1 < d2
    # a pure mean shift by delta adds |delta|^2 = 8 * 1.0 to the distance (up to sampling noise)
    assert abs((d2 - d0) - 8.0) < 0.5


@pytest.mark.parametrize("n,f", [(50, 3), (300, 10), (1000, 32)])
def test_frechet_matches_direct_formula(n, f):
    rng = np.random.default_rng(n + f)
    a = rng.normal(size=(n, f)) @ rng.normal(size=(f, f)) + rng.normal(size=f)
    b = rng.normal(size=(n, f)) @ rng.normal(size=(f, f))
    got = zeval.frechet_distance(a, b)
    want = _frechet_direct(a, b)
    assert got == pytest.approx(want, rel=1e-6, abs=1e-8)


def test_frechet_is_symmetric_and_handles_rank_deficient_features():
    rng = np.random.default_rng(3)
    a = np.zeros((200, 6))
    a[:, :3] = rng.normal(size=(200, 3))  # half the features are dead, like unused ReLUs
    b = np.zeros((200, 6))
    b[:, :3] = rng.normal(size=(200, 3)) + 0.2
    d_ab, d_ba = zeval.frechet_distance(a, b), zeval.frechet_distance(b, a)
    assert np.isfinite(d_ab) and d_ab >= 0
    assert d_ab == pytest.approx(d_ba, rel=1e-6)


def test_frechet_rejects_bad_shapes():
    with pytest.raises(ValueError):
        zeval.frechet_distance(np.zeros((10, 3)), np.zeros((10, 4)))
    with pytest.raises(ValueError):
        zeval.frechet_distance(np.zeros((1, 3)), np.zeros((10, 3)))


@needs_classifier
def test_numpy_classifier_matches_pytorch_features():
    from zipar.builtin import reference

    ref = reference("pixels")
    if "classifier_features" not in ref:
        pytest.skip("builtin_reference.npz has no classifier features")
    if not _have_dataset():
        pytest.skip("Fashion-MNIST not installed")
    x, _ = zeval.test_set()
    clf = zeval.Classifier.load_default()
    feats = clf.features(x[:64])
    # the reference came from the GPU, whose convolutions ran in TF32
    np.testing.assert_allclose(feats, ref["classifier_features"], rtol=1e-3, atol=1e-2)


@needs_dataset
@needs_classifier
def test_classifier_loads_and_predicts():
    x, y = zeval.test_set()
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    clf = zeval.Classifier.load_default()
    pred = clf.predict(x[:500])
    assert pred.shape == (500,)
    acc = float(np.mean(pred == y[:500]))
    assert acc >= 0.85, acc
    assert zeval.class_accuracy(x[:500], y[:500], classifier=clf) == pytest.approx(acc)
    feats = clf.features(x[:10])
    assert feats.shape == (10, clf.feature_dim) and feats.dtype == np.float64


@needs_dataset
@needs_classifier
def test_fid_proxy_small_for_real_images_large_for_noise():
    x, y = zeval.test_set()
    clf = zeval.Classifier.load_default()
    real = zeval.fid_proxy(x[:1000], x[5000:6000], n_boot=20, seed=0, classifier=clf)
    noise = np.random.default_rng(0).integers(0, 256, size=(1000, 28, 28)).astype(np.uint8)
    bad = zeval.fid_proxy(noise, x[5000:6000], n_boot=0, classifier=clf)
    assert 0 <= real["low"] <= real["value"] <= real["high"]
    assert real["n"] == 1000 and real["n_ref"] == 1000
    assert bad["value"] > 10 * real["value"]


@needs_dataset
@needs_classifier
def test_diversity_of_real_images_near_one_and_collapse_near_zero():
    x, y = zeval.test_set()
    clf = zeval.Classifier.load_default()
    d = zeval.diversity(x[:2000], y[:2000], classifier=clf, max_per_class=200)
    assert 0.85 < d["value"] < 1.15
    collapsed = np.repeat(x[:10], 20, axis=0)  # one image per 20 copies
    labels = np.repeat(y[:10], 20)
    dc = zeval.diversity(collapsed, labels, classifier=clf, max_per_class=200)
    assert dc["value"] < 0.5 * d["value"]


def test_test_set_error_is_clear(monkeypatch, tmp_path):
    monkeypatch.setenv("ZIPAR_FMNIST_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        zeval.test_set()
