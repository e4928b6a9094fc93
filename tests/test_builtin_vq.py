"""The shipped miniature LlamaGen (training/train_vq_fmnist.py), zipar.load_default(): its VQ
tokenizer decodes through zipar.families.vq16 like a published VQ-16 checkpoint and equals the
PyTorch decoder; its GPT loads through the LlamaGen loader and reproduces the PyTorch logits and
log-likelihoods; the main job runs on it.

Golden values: zipar/data/fmnist_vq_reference.npz (no torch needed here)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import zipar
from zipar.fmnist import resize as fmnist_vq
from zipar.fmnist.builtin import best_zipar
from zipar.families.llamagen import read_vq_state_dict
from zipar.families.vq16 import VQDecoder
from zipar.fmnist import builtin
from zipar.io import png

DATA = os.path.join(os.path.dirname(os.path.abspath(zipar.__file__)), "data")
TOKENIZER = os.path.join(DATA, "fmnist_vq_tokenizer.npz")
GPT = os.path.join(DATA, "fmnist_vq_gpt.npz")


@pytest.fixture(scope="module")
def ref():
    return builtin.reference()


@pytest.fixture(scope="module")
def decoder():
    return VQDecoder(read_vq_state_dict(TOKENIZER))


@pytest.fixture(scope="module")
def gpt():
    return zipar.load_llamagen(GPT)


def test_load_default_is_the_vq_model(ref):
    m = zipar.load_default()
    assert m.config == builtin.default_config() == zipar.load_llamagen(GPT).config
    assert m.config.vocab_size == 1024 and isinstance(m.decoder, builtin.FashionVQDecoder)
    np.testing.assert_allclose(m.log_prob(ref["labels"][:2], ref["tokens"][:2]),
                               ref["loglik"][:2], rtol=1e-5)
    assert zipar.load_default("pixels").config.grid == (28, 28)
    info = builtin.builtin_info()
    assert info["gpt"]["config"]["vocab_size"] == 1024
    with pytest.raises(ValueError, match="unknown built-in model"):
        zipar.load_default("pixel")


@pytest.mark.parametrize("name", builtin.BUILTIN_NAMES)
def test_builtin_models_carry_their_calibrated_proxy(name):
    """benchmarks/calibrate_proxy.py stored each model's row-start proxy in its record; the
    loader sets it. (Recomputing it takes minutes: the script does, with the same settings.)"""
    rec = builtin.builtin_info(name)["row_start_proxy"]
    m = zipar.load_default(name)
    assert m.row_start_proxy == rec["token"] == builtin.row_start_proxy(name)
    assert (rec["n_samples"], rec["seed"], rec["cfg_scale"], rec["temperature"], rec["top_k"],
            rec["top_p"]) == (200, 0, 2.0, 1.0, 0, 1.0)
    ends = rec["n_samples"] * m.config.H
    count = rec["fraction"] * ends                   # a whole number of row ends
    assert 0 <= rec["token"] < m.config.vocab_size and 1 <= round(count) <= ends
    assert abs(count - round(count)) < 1e-6
    # a model loaded otherwise has none: the calibrated proxy is the record's, not a default
    assert zipar.Model(m.config, m.weights).row_start_proxy is None
    res = m.generate([0], policy=zipar.ZipAR(1, proxy="calibrated"), seed=0,
                     trace=True, decode_images=False)
    fed = res.trace[res.trace[:, 4] == zipar.ROLES.index("proxy")][:, 5]
    assert fed.size == m.config.H - 1 and (fed == rec["token"]).all()


def test_tokenizer_structure_is_vq16_family(decoder):
    # read from the keys as for vq_ds16_c2i.pt: 3 levels (downsample 4), 1024 l2-normed codes
    assert decoder.codebook_size == 1024 and decoder.embed_dim == 8 and decoder.scale == 4
    assert [lv["channels"] for lv in decoder.levels] == [64, 64, 32]
    assert [lv["attn"] for lv in decoder.levels] == [True, False, False]
    assert all(lv["n_res"] == 3 for lv in decoder.levels)
    np.testing.assert_allclose(np.linalg.norm(decoder.codebook, axis=1), 1.0, atol=1e-6)


def test_decoder_equals_pytorch(decoder, ref):
    toks = ref["decoder_tokens"].astype(np.int64)
    y = decoder.decode_latent(decoder.embed(toks))
    want = ref["decoder_output"]
    assert y.shape == want.shape == (len(toks), 3, 64, 64)
    err = np.abs(y - want).max()
    assert err <= 1e-4, err
    # and the images: three equal channels after rounding, 28x28 grey through fmnist_vq
    pix = decoder.decode(toks)
    assert pix.shape == (len(toks), 64, 64, 3) and pix.dtype == np.uint8
    grey = fmnist_vq.to_grey28(pix)
    assert grey.shape == (len(toks), 28, 28) and grey.dtype == np.uint8
    assert grey.mean() > 5  # garments, not a blank canvas


def test_gpt_config_and_pytorch_logits(gpt, ref):
    c = gpt.config
    assert (c.vocab_size, c.grid, c.num_classes, c.dim, c.n_layer) == (1024, (16, 16), 10, 256, 8)
    labels, tokens = ref["labels"], ref["tokens"].astype(np.int64)
    lg = gpt.logits(labels[:1], tokens[:1])[0]
    got = lg[ref["logits_positions"]]
    assert np.abs(got - ref["logits"]).max() <= 2e-4, np.abs(got - ref["logits"]).max()
    lp = gpt.log_prob(labels, tokens)
    np.testing.assert_allclose(lp, ref["loglik"], rtol=1e-5)


def test_generate_and_decode(gpt, decoder):
    a = gpt.generate([3], seed=0, cfg_scale=2.0)
    b = gpt.generate([3], seed=0, cfg_scale=2.0, policy=zipar.ZipAR(16))  # window = W: raster
    np.testing.assert_array_equal(a.tokens, b.tokens)
    z = gpt.generate([3], seed=0, cfg_scale=2.0, policy=zipar.ZipAR(4), decode_images=False)
    assert z.stats["forward_passes"] == 16 + 15 * 4 and a.stats["forward_passes"] == 256
    img = fmnist_vq.to_grey28(decoder.decode(a.tokens))
    assert img.shape == (1, 28, 28)


def test_main_job_vq(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(zipar.__file__)) + os.pathsep + \
        env.get("PYTHONPATH", "")
    out = tmp_path / "grid.png"
    proc = subprocess.run([sys.executable, "-m", "zipar", "generate", "--labels", "8",
                           "--out", str(out), "--quiet"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    # raster beside the model's best measured ZipAR setting (its record's best_zipar)
    best = best_zipar("vq")
    fast = zipar.ZipAR(best["window"], schedule=best["schedule"], proxy=best["proxy"])
    assert "256 passes" in proc.stdout
    assert f"{fast.expected_passes(16, 16)} passes" in proc.stdout, proc.stdout
    meta = json.loads(png.read_png_text(out)["zipar"])
    assert [m["policy"]["policy"] for m in meta] == ["Raster", "ZipAR"]
    img = png.read_png(out)
    assert img.ndim == 2 and img.shape[0] >= 28


def test_image_maps_round_trip():
    rng = np.random.default_rng(0)
    # smooth images (the maps are exact on what the upscale can represent)
    x = rng.integers(0, 256, (4, 28, 28)).astype(np.float64)
    up = fmnist_vq.upscale(x)
    assert up.shape == (4, 64, 64) and up.dtype == np.float32
    rgb = np.repeat(np.floor(np.clip(up, 0, 255) + 0.5).astype(np.uint8)[..., None], 3, axis=3)
    back = fmnist_vq.to_grey28(rgb).astype(int)
    assert np.abs(back - x).max() <= 2  # rounding of the 64x64 image, slightly amplified
    v = fmnist_vq.to_vq_input(x[:1])
    assert v.shape == (1, 3, 64, 64) and -1.0 <= v.min() and v.max() <= 1.0
    with pytest.raises(ValueError):
        fmnist_vq.to_grey28(np.zeros((1, 28, 28, 3), np.uint8))
    with pytest.raises(ValueError):
        fmnist_vq.upscale(np.zeros((1, 64, 64)))
