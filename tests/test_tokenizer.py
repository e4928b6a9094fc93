"""GreyTokenizer: palette, exact round trip of palette images, nearest-level encoding; idx
reader."""

import gzip

import numpy as np
import pytest

from zipar.tokenizer import GreyTokenizer, load_idx


@pytest.mark.parametrize("levels", [2, 16, 32, 64, 256])
def test_palette_is_uniform_and_spans_black_to_white(levels):
    tok = GreyTokenizer(levels)
    t = np.arange(levels)
    assert tok.palette.dtype == np.uint8
    assert tok.palette[0] == 0 and tok.palette[-1] == 255
    np.testing.assert_array_equal(tok.palette, np.floor(t * 255 / (levels - 1) + 0.5))
    assert np.all(np.diff(tok.palette.astype(int)) > 0)


@pytest.mark.parametrize("levels", [16, 32, 64])
def test_palette_images_round_trip_exactly(levels):
    tok = GreyTokenizer(levels)
    rng = np.random.default_rng(levels)
    tokens = rng.integers(0, levels, size=(5, 28, 28)).astype(np.int32)
    images = tok.decode(tokens)
    assert images.dtype == np.uint8 and images.shape == (5, 28, 28)
    back = tok.encode(images)
    assert back.dtype == np.int32
    np.testing.assert_array_equal(back, tokens)
    np.testing.assert_array_equal(tok.decode(back), images)


@pytest.mark.parametrize("levels", [16, 32, 64])
def test_encode_picks_the_nearest_level(levels):
    tok = GreyTokenizer(levels)
    grey = np.arange(256, dtype=np.uint8)
    tokens = tok.encode(grey)
    dist = np.abs(grey.astype(int)[:, None] - tok.palette.astype(int)[None, :])
    chosen = dist[np.arange(256), tokens]
    np.testing.assert_array_equal(chosen, dist.min(axis=1))
    # monotone: a brighter pixel never gets a darker token
    assert np.all(np.diff(tokens) >= 0)
    # quantisation error is at most half a step
    assert chosen.max() <= (255 / (levels - 1)) / 2 + 0.5


def test_encode_keeps_shape_and_does_not_mutate():
    tok = GreyTokenizer(16)
    img = np.random.default_rng(0).integers(0, 256, size=(3, 28, 28)).astype(np.uint8)
    copy = img.copy()
    assert tok.encode(img).shape == img.shape
    np.testing.assert_array_equal(img, copy)
    np.testing.assert_array_equal(tok.quantize(img), tok.decode(tok.encode(img)))


def test_bad_arguments():
    with pytest.raises(ValueError):
        GreyTokenizer(1)
    with pytest.raises(TypeError):
        GreyTokenizer(16.0)
    tok = GreyTokenizer(16)
    with pytest.raises(TypeError):
        tok.encode(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError):
        tok.decode(np.array([16]))
    with pytest.raises(ValueError):
        tok.decode(np.array([-1]))


def _write_idx(path, arr, code):
    header = bytes([0, 0, code, arr.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.tobytes())


def test_load_idx_round_trip(tmp_path):
    imgs = np.random.default_rng(1).integers(0, 256, size=(4, 28, 28)).astype(np.uint8)
    _write_idx(tmp_path / "x-idx3-ubyte.gz", imgs, 0x08)
    np.testing.assert_array_equal(load_idx(tmp_path / "x-idx3-ubyte.gz"), imgs)
    vals = np.array([1, -2, 300], dtype=">i4")
    _write_idx(tmp_path / "v.gz", vals, 0x0C)
    out = load_idx(tmp_path / "v.gz")
    np.testing.assert_array_equal(out, [1, -2, 300])
    assert out.dtype.isnative


def test_load_idx_rejects_garbage(tmp_path):
    p = tmp_path / "bad.gz"
    with gzip.open(p, "wb") as f:
        f.write(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError):
        load_idx(p)
    p2 = tmp_path / "short.gz"
    with gzip.open(p2, "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + b"\x00" * 3)
    with pytest.raises(ValueError):
        load_idx(p2)
