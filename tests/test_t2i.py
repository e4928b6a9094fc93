"""Text-conditioned (t2i) LlamaGen models: captions, padding masks, guidance.

Uses tests/fixtures/t2i_tiny_f16.pt (LlamaGen t2i layout, float16: cap_proj fc1/fc2 and
uncond_embedding (120, 2048); dim 32, 2 layers, 4 heads, vocab 100). The head count of a model
of no LlamaGen size is not visible in the weights, so n_head=4 is passed; a small grid keeps the
tests fast.
"""

import os

import numpy as np
import pytest

import zipar
from zipar import checkpoint as ck
from zipar.reference import ReferenceModel

FIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
T2I = os.path.join(FIX, "t2i_tiny_f16.pt")
GRID = (3, 4)
P, CAP = 120, 2048


@pytest.fixture(scope="module")
def model():
    return ck.load_llamagen(T2I, n_head=4, grid=GRID)


@pytest.fixture(scope="module")
def reference(model):
    return ReferenceModel(model.config, ck.load_state_dict(T2I))


def captions(B, seed=0):
    # T5-like scale: unit-variance entries, like the stored uncond_embedding times sqrt(2048)
    return np.random.default_rng(seed).standard_normal((B, P, CAP)).astype(np.float32)


def left_padding_mask(valid):
    """LlamaGen's sampler left-pads captions: the valid tokens are the last ones."""
    m = np.zeros((len(valid), P), np.uint8)
    for b, n in enumerate(valid):
        m[b, P - n:] = 1
    return m


# ============================================================================ loading

def test_fixture_loads(model):
    c = model.config
    assert (c.caption_dim, c.cls_token_num, c.dim, c.n_layer, c.n_head, c.vocab_size) == \
        (CAP, P, 32, 2, 4, 100)
    assert c.grid == GRID
    sd = ck.load_state_dict(T2I)
    assert sd["cls_embedding.uncond_embedding"].dtype == np.float16  # widened exactly by Model
    np.testing.assert_array_equal(model.weights["cls_embedding.uncond_embedding"],
                                  sd["cls_embedding.uncond_embedding"].astype(np.float32))


def test_labels_are_not_captions(model):
    with pytest.raises(ValueError, match="captions"):
        model.generate([1, 2])
    with pytest.raises(ValueError, match="captions"):
        model.logits(tokens=np.zeros((1,) + GRID, int))


# ============================================================================ generation

@pytest.mark.parametrize("policy", [zipar.Raster(), zipar.ZipAR(1), zipar.ZipAR(2),
                                    zipar.ZipAR(3, schedule="paper"),
                                    zipar.ZipAR(2, proxy="left")],
                         ids=lambda p: repr(p.to_dict()))
def test_generate_with_captions_and_mask(model, policy):
    caps, mask = captions(2), left_padding_mask([7, 120])
    res = model.generate(policy=policy, captions=caps, caption_mask=mask, seed=3, top_k=50)
    H, W = GRID
    assert res.tokens.shape == (2, H, W) and res.tokens.dtype == np.int32
    assert res.tokens.min() >= 0 and res.tokens.max() < 100
    assert res.stats["forward_passes"] == policy.expected_passes(H, W)
    assert res.config["labels"] is None
    again = model.generate(policy=policy, captions=caps, caption_mask=mask, seed=3, top_k=50)
    np.testing.assert_array_equal(res.tokens, again.tokens)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_zipar_full_window_equals_raster(model, temperature):
    caps, mask = captions(3, seed=1), left_padding_mask([1, 40, 120])
    kw = dict(captions=caps, caption_mask=mask, seed=11, temperature=temperature, cfg_scale=3.0)
    raster = model.generate(policy=zipar.Raster(), **kw)
    for schedule in ("eager", "paper"):
        zip_ = model.generate(policy=zipar.ZipAR(GRID[1], schedule=schedule), **kw)
        np.testing.assert_array_equal(zip_.tokens, raster.tokens)
        assert zip_.stats["forward_passes"] == GRID[0] * GRID[1]


def test_greedy_generation_is_argmax_of_guided_logits(model):
    """generate and logits agree on the mask and the unconditional caption: greedy tokens are
    the argmax of the teacher-forced guided logits at every cell."""
    caps, mask = captions(2, seed=2), left_padding_mask([30, 90])
    res = model.generate(captions=caps, caption_mask=mask, temperature=0.0, cfg_scale=4.0)
    lg = model.logits(tokens=res.tokens, captions=caps, caption_mask=mask, cfg_scale=4.0)
    np.testing.assert_array_equal(lg.argmax(-1), res.tokens.reshape(2, -1))


def test_mask_changes_generation(model):
    """Greedy tokens with a short caption differ from the same embeddings fully visible."""
    caps = captions(4, seed=5)
    kw = dict(captions=caps, temperature=0.0, cfg_scale=4.0)
    full = model.generate(**kw)
    short = model.generate(caption_mask=left_padding_mask([3, 3, 3, 3]), **kw)
    assert (full.tokens != short.tokens).any()


# ============================================================================ the padding mask

def tokens_for(B, seed=0):
    return np.random.default_rng(seed).integers(0, 100, size=(B,) + GRID)


@pytest.mark.parametrize("cfg_scale", [1.0, 4.0])
def test_masked_caption_rows_are_invisible(model, cfg_scale):
    caps, mask = captions(2, seed=3), left_padding_mask([10, 64])
    toks = tokens_for(2)
    base = model.logits(tokens=toks, captions=caps, caption_mask=mask, cfg_scale=cfg_scale)
    changed = caps.copy()
    changed[0, :P - 10] = 50.0 * captions(1, seed=9)[0, :P - 10]   # every masked row of image 0
    changed[1, 3] = -7.0                                             # one masked row of image 1
    out = model.logits(tokens=toks, captions=changed, caption_mask=mask, cfg_scale=cfg_scale)
    np.testing.assert_array_equal(out, base)
    # a valid row matters, and only for its own image
    valid = caps.copy()
    valid[1, P - 5] += 1.0
    out = model.logits(tokens=toks, captions=valid, caption_mask=mask, cfg_scale=cfg_scale)
    np.testing.assert_array_equal(out[0], base[0])
    assert np.abs(out[1] - base[1]).max() > 1e-4


def test_without_mask_every_row_is_visible(model):
    caps, toks = captions(1, seed=4), tokens_for(1)
    base = model.logits(tokens=toks, captions=caps)
    changed = caps.copy()
    changed[0, 0] += 1.0
    assert np.abs(model.logits(tokens=toks, captions=changed) - base).max() > 1e-4
    np.testing.assert_array_equal(
        model.logits(tokens=toks, captions=caps, caption_mask=np.ones((1, P))), base)


def test_masked_position_still_sees_itself(model):
    """Right padding: the last caption position is masked as a key but is still a query that
    sees itself, so it alone (through cell (0, 0)'s logits) depends on its own embedding."""
    caps, toks = captions(1, seed=6), tokens_for(1, seed=6)
    mask = np.zeros((1, P), np.uint8)
    mask[0, :20] = 1
    base = model.logits(tokens=toks, captions=caps, caption_mask=mask)
    changed = caps.copy()
    changed[0, P - 1] += 1.0
    out = model.logits(tokens=toks, captions=changed, caption_mask=mask)
    np.testing.assert_array_equal(out[:, 1:], base[:, 1:])
    assert np.abs(out[:, 0] - base[:, 0]).max() > 1e-4


def test_mask_matches_reference(model, reference):
    caps, mask = captions(2, seed=7), left_padding_mask([1, 77])
    mask[1, 5] = 1   # not contiguous: any pattern works
    toks = tokens_for(2, seed=7)
    cond, unc = reference.prefix_embeddings(captions=caps)
    for cfg_scale in (1.0, 4.0):
        want = reference.logits((cond, unc, mask), toks, cfg_scale)
        got = model.logits(tokens=toks, captions=caps, caption_mask=mask, cfg_scale=cfg_scale)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


# ============================================================================ guidance

def test_cfg_uses_stored_uncond_embedding(model, reference):
    caps, toks = captions(2, seed=8), tokens_for(2, seed=8)
    cond, unc = reference.prefix_embeddings(captions=caps)
    # the reference's unconditional prefix is cap_proj(uncond_embedding), the same for each image
    np.testing.assert_allclose(unc[0], reference.cap_proj(reference.w[
        "cls_embedding.uncond_embedding"]))
    np.testing.assert_array_equal(unc[0], unc[1])
    for cfg_scale in (1.0, 4.0, 0.5):
        want = reference.logits((cond, unc), toks, cfg_scale)
        got = model.logits(tokens=toks, captions=caps, cfg_scale=cfg_scale)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    # the unconditional stream really is the stored embedding: guidance towards the caption
    # that *is* uncond_embedding is no guidance at all
    same = np.broadcast_to(reference.w["cls_embedding.uncond_embedding"], (1, P, CAP))
    same = same.astype(np.float32)
    np.testing.assert_allclose(model.logits(tokens=toks[:1], captions=same, cfg_scale=4.0),
                               model.logits(tokens=toks[:1], captions=same, cfg_scale=1.0),
                               atol=1e-4, rtol=0)


def test_cfg_depends_on_uncond_embedding():
    sd = ck.load_state_dict(T2I)
    base = ck.load_llamagen(T2I, n_head=4, grid=GRID)
    sd2 = dict(sd)
    sd2["cls_embedding.uncond_embedding"] = sd["cls_embedding.uncond_embedding"][::-1].copy()
    other = zipar.Model(base.config, sd2)
    caps, toks = captions(1, seed=10), tokens_for(1, seed=10)
    kw = dict(tokens=toks, captions=caps)
    np.testing.assert_array_equal(other.logits(cfg_scale=1.0, **kw),
                                  base.logits(cfg_scale=1.0, **kw))
    assert np.abs(other.logits(cfg_scale=4.0, **kw) - base.logits(cfg_scale=4.0, **kw)).max() \
        > 1e-4


# ============================================================================ bad input

@pytest.mark.parametrize("bad", [
    np.zeros((1, 119, CAP), np.float32),
    np.zeros((1, P, CAP - 1), np.float32),
    np.zeros((P, CAP), np.float32),
    np.zeros((1, 1, P, CAP), np.float32),
    np.zeros((1, P, CAP), np.int32),
    np.zeros((1, P, CAP), np.complex64),
    np.zeros((1, P, CAP), bool),
    "a caption",
], ids=["short", "narrow", "2d", "4d", "int", "complex", "bool", "str"])
def test_bad_caption_shapes_and_dtypes(model, bad):
    toks = tokens_for(1)
    with pytest.raises(ValueError):
        model.generate(captions=bad)
    with pytest.raises(ValueError):
        model.logits(tokens=toks, captions=bad)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_captions(model, value):
    caps = captions(2)
    caps[1, 17, 5] = value
    with pytest.raises(ValueError, match="finite"):
        model.generate(captions=caps)
    with pytest.raises(ValueError, match="finite"):
        model.logits(tokens=tokens_for(2), captions=caps)


def test_non_finite_masked_caption_is_still_an_error(model):
    caps, mask = captions(1), left_padding_mask([4])
    caps[0, 0, 0] = np.nan   # a masked row: refused all the same (no silent NaN handling)
    with pytest.raises(ValueError, match="finite"):
        model.generate(captions=caps, caption_mask=mask)


@pytest.mark.parametrize("mask_shape", [(1, P), (2, P - 1), (2, P, 1), (P,)])
def test_bad_mask_shape(model, mask_shape):
    with pytest.raises(ValueError, match="caption_mask"):
        model.generate(captions=captions(2), caption_mask=np.ones(mask_shape))


def test_captions_not_mutated(model):
    caps, mask = captions(2), left_padding_mask([5, 6])
    c0, m0 = caps.copy(), mask.copy()
    model.generate(captions=caps, caption_mask=mask, policy=zipar.ZipAR(2))
    model.logits(tokens=tokens_for(2), captions=caps, caption_mask=mask, cfg_scale=2.0)
    np.testing.assert_array_equal(caps, c0)
    np.testing.assert_array_equal(mask, m0)


def test_float16_and_float64_captions(model):
    caps, toks = captions(1, seed=12), tokens_for(1)
    h = caps.astype(np.float16)
    np.testing.assert_array_equal(model.logits(tokens=toks, captions=h),
                                  model.logits(tokens=toks, captions=h.astype(np.float32)))
    np.testing.assert_allclose(model.logits(tokens=toks, captions=caps.astype(np.float64)),
                               model.logits(tokens=toks, captions=caps), atol=1e-5, rtol=0)


def test_grid_from_published_t2i_name(tmp_path):
    import shutil

    for name, grid in (("t2i_XL_stage1_256.pt", 16), ("t2i_XL_stage2_512.pt", 32)):
        shutil.copy(T2I, tmp_path / name)
        assert ck.load_llamagen(tmp_path / name, n_head=4).config.grid == (grid, grid)
