"""The shipped miniature LlamaGen (training/train_vq_fmnist.py): its VQ tokenizer decodes through
zipar.vq like a published VQ-16 checkpoint and equals the PyTorch decoder; its GPT loads through
the LlamaGen loader and reproduces the PyTorch logits and log-likelihoods.

Golden values: zipar/data/fmnist_vq_reference.npz (no torch needed here)."""

import os

import numpy as np
import pytest

import zipar
from zipar import fmnist_vq
from zipar.checkpoint import read_vq_state_dict
from zipar.vq import VQDecoder

DATA = os.path.join(os.path.dirname(os.path.abspath(zipar.__file__)), "data")
TOKENIZER = os.path.join(DATA, "fmnist_vq_tokenizer.npz")
GPT = os.path.join(DATA, "fmnist_vq_gpt.npz")


@pytest.fixture(scope="module")
def ref():
    with np.load(os.path.join(DATA, "fmnist_vq_reference.npz")) as z:
        return {k: z[k] for k in z.files}


@pytest.fixture(scope="module")
def decoder():
    return VQDecoder(read_vq_state_dict(TOKENIZER))


@pytest.fixture(scope="module")
def gpt():
    return zipar.load_llamagen(GPT)


def test_tokenizer_structure_is_vq16_family(decoder):
    # read from the keys exactly as for vq_ds16_c2i.pt: 3 levels (downsample 4), 1024 l2-normed codes
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
    b = gpt.generate([3], seed=0, cfg_scale=2.0, policy=zipar.ZipAR(16))  # window = row: raster
    np.testing.assert_array_equal(a.tokens, b.tokens)
    z = gpt.generate([3], seed=0, cfg_scale=2.0, policy=zipar.ZipAR(4), decode_images=False)
    assert z.stats["forward_passes"] == 16 + 15 * 4 and a.stats["forward_passes"] == 256
    img = fmnist_vq.to_grey28(decoder.decode(a.tokens))
    assert img.shape == (1, 28, 28)


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
