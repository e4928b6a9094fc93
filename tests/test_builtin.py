"""The shipped model: golden logits from PyTorch, and the README's main job end to end."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import zipar
from zipar import builtin, png


@pytest.fixture(scope="module")
def model():
    return zipar.load_default("pixels")


def test_logits_equal_stored_pytorch_reference(model):
    ref = builtin.reference("pixels")
    got = model.logits(ref["labels"][:2], ref["tokens"][:2])
    want = ref["logits"].reshape(got.shape)
    assert np.abs(got - want).max() <= 2e-4, np.abs(got - want).max()
    # per-image log-likelihoods of all eight stored test images
    lp = model.log_prob(ref["labels"], ref["tokens"])
    np.testing.assert_allclose(lp, ref["loglik"], rtol=1e-5, atol=1e-3)


def test_generation_shapes_images_and_exactness(model):
    c = model.config
    assert c.grid == (28, 28) and c.num_classes == 10
    a = model.generate([0, 5], seed=1, cfg_scale=2.0)
    b = model.generate([0, 5], seed=1, cfg_scale=2.0, policy=zipar.ZipAR(28))
    np.testing.assert_array_equal(a.tokens, b.tokens)
    assert a.images.shape == (2, 28, 28) and a.images.dtype == np.uint8
    z = model.generate([0, 5], seed=1, cfg_scale=2.0, policy=zipar.ZipAR(4))
    assert z.stats["forward_passes"] == 28 + 27 * 4


def test_main_job_small(tmp_path):
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(zipar.__file__)) + os.pathsep + \
        env.get("PYTHONPATH", "")
    out = tmp_path / "grid.png"
    proc = subprocess.run([sys.executable, "-m", "zipar", "generate", "--builtin", "pixels",
                           "--labels", "1", "7",
                           "--window", "7", "--out", str(out), "--quiet"], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "784 passes" in proc.stdout and "217 passes" in proc.stdout  # raster, ZipAR-7
    img = png.read_png(out)
    assert img.ndim == 2 and img.shape[0] > 2 * 28
    meta = json.loads(png.read_png_text(out)["zipar"])
    assert [m["policy"]["policy"] for m in meta] == ["Raster", "ZipAR"]
    assert root
