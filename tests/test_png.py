"""PNG writer/reader and image grid."""

import json
import struct
import zlib

import numpy as np
import pytest

from zipar import png  # noqa: E402


def _chunk_types(data):
    out, pos = [], 8
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        out.append(data[pos + 4:pos + 8])
        pos += 12 + n
    return out


@pytest.mark.parametrize("shape", [(1, 1, 3), (7, 5, 3), (64, 33, 3), (1, 1), (9, 4), (30, 70)])
def test_round_trip(tmp_path, shape):
    img = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    path = tmp_path / "a.png"
    png.write_png(path, img)
    back = png.read_png(path)
    assert back.dtype == np.uint8 and back.shape == img.shape
    np.testing.assert_array_equal(back, img)
    assert png.read_png_text(path) == {}


def test_header_and_layout():
    img = np.zeros((3, 4, 3), np.uint8)
    data = png.encode_png(img, {"k": "v"})
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert _chunk_types(data) == [b"IHDR", b"tEXt", b"IDAT", b"IEND"]
    assert struct.unpack(">IIBBBBB", data[16:29]) == (4, 3, 8, 2, 0, 0, 0)
    grey = png.encode_png(np.zeros((3, 4), np.uint8))
    assert struct.unpack(">IIBBBBB", grey[16:29]) == (4, 3, 8, 0, 0, 0, 0)


def test_non_contiguous_input(tmp_path):
    img = np.random.default_rng(0).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    view = img[::2, ::-1]
    png.write_png(tmp_path / "v.png", view)
    np.testing.assert_array_equal(png.read_png(tmp_path / "v.png"), view)


def test_text_round_trip(tmp_path):
    config = {"model": "GPT-L", "window": 8, "cfg_scale": 4.0, "seed": 7, "labels": [1, 2, 3]}
    text = {"zipar": json.dumps(config), "Comment": "caf\u00e9 latin-1",
            "unicode": "\u6f22\u5b57 \u2713", "empty": ""}
    path = tmp_path / "t.png"
    img = np.full((2, 3, 3), 9, np.uint8)
    png.write_png(path, img, text=text)
    got = png.read_png_text(path)
    assert got == text
    assert json.loads(got["zipar"]) == config
    types = _chunk_types(path.read_bytes())
    assert types.count(b"tEXt") == 3 and types.count(b"iTXt") == 1  # non-Latin-1 -> iTXt
    np.testing.assert_array_equal(png.read_png(path), img)


def test_reads_ztxt_and_compressed_itxt(tmp_path):
    data = png.encode_png(np.zeros((1, 1), np.uint8))
    extra = (png._chunk(b"zTXt", b"z\x00\x00" + zlib.compress(b"zipped")) +
             png._chunk(b"iTXt", b"i\x00\x01\x00en\x00ti\x00" + zlib.compress("\u2713".encode())))
    path = tmp_path / "z.png"
    path.write_bytes(data[:33] + extra + data[33:])  # after IHDR (8 + 25 bytes)
    assert png.read_png_text(path) == {"z": "zipped", "i": "\u2713"}


@pytest.mark.parametrize("where", ["IHDR", "tEXt", "IDAT", "IEND"])
def test_corrupt_crc(tmp_path, where):
    data = bytearray(png.encode_png(np.arange(48, dtype=np.uint8).reshape(4, 4, 3),
                                    {"zipar": "{}"}))
    pos = data.index(where.encode())
    data[pos + 4] ^= 0x01  # first payload byte (IEND: the CRC)
    path = tmp_path / "bad.png"
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="CRC"):
        png.read_png(path)
    with pytest.raises(ValueError, match="CRC"):
        png.read_png_text(path)


def test_corrupt_files(tmp_path):
    good = png.encode_png(np.zeros((4, 4, 3), np.uint8))
    path = tmp_path / "x.png"
    for data, match in [(b"GIF89a" + good[6:], "signature"),
                        (good[:-12], "truncated"),
                        (good[:40], "truncated")]:
        path.write_bytes(data)
        with pytest.raises(ValueError, match=match):
            png.read_png(path)
    # a valid CRC over wrong pixel data size
    idat = png._chunk(b"IDAT", zlib.compress(b"\x00" * 10))
    path.write_bytes(good[:33] + idat + png._chunk(b"IEND", b""))
    with pytest.raises(ValueError, match="pixel data"):
        png.read_png(path)
    # a filter type the reader does not handle
    raw = b"".join(b"\x01" + b"\x00" * 12 for _ in range(4))
    path.write_bytes(good[:33] + png._chunk(b"IDAT", zlib.compress(raw)) + png._chunk(b"IEND", b""))
    with pytest.raises(ValueError, match="filter type 1"):
        png.read_png(path)


@pytest.mark.parametrize("img,match", [
    (np.zeros((2, 2, 3), np.float32), "uint8"),
    (np.zeros((2, 2, 4), np.uint8), "shape"),
    (np.zeros((2,), np.uint8), "shape"),
    (np.zeros((0, 2, 3), np.uint8), "1x1"),
])
def test_write_errors(tmp_path, img, match):
    with pytest.raises(ValueError, match=match):
        png.write_png(tmp_path / "e.png", img)
    assert not (tmp_path / "e.png").exists()


@pytest.mark.parametrize("key", ["", "x" * 80, "a\x00b", " lead", "\u2713"])
def test_bad_text_key(key):
    with pytest.raises(ValueError, match="key"):
        png.encode_png(np.zeros((1, 1), np.uint8), {key: "v"})


def test_grid_layout():
    N, H, W = 5, 2, 3
    imgs = np.stack([np.full((H, W, 3), 10 * (i + 1), np.uint8) for i in range(N)])
    imgs[:, 0, 0] = [1, 2, 3]  # orientation marker: top-left pixel
    g = png.image_grid(imgs, nrow=3, pad=1, pad_value=255)
    assert g.shape == (2 * (H + 1) + 1, 3 * (W + 1) + 1, 3) and g.dtype == np.uint8
    for i in range(N):
        y, x = 1 + (i // 3) * (H + 1), 1 + (i % 3) * (W + 1)
        np.testing.assert_array_equal(g[y:y + H, x:x + W], imgs[i])
    mask = np.ones(g.shape[:2], bool)
    for i in range(N):
        y, x = 1 + (i // 3) * (H + 1), 1 + (i % 3) * (W + 1)
        mask[y:y + H, x:x + W] = False
    assert (g[mask] == 255).all()  # borders and the empty sixth cell


def test_grid_grey_and_defaults():
    imgs = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    g = png.image_grid(imgs, nrow=8)  # nrow larger than N: one row of N
    assert g.shape == (4 + 4, 2 * (4 + 2) + 2)
    np.testing.assert_array_equal(g[2:6, 2:6], imgs[0])
    np.testing.assert_array_equal(g[2:6, 8:12], imgs[1])
    assert g[0, 0] == 255
    g0 = png.image_grid(imgs, nrow=1, pad=0, pad_value=0)
    np.testing.assert_array_equal(g0, imgs.reshape(8, 4))


@pytest.mark.parametrize("kw,match", [
    (dict(images=np.zeros((0, 2, 2), np.uint8), nrow=1), "at least one"),
    (dict(images=np.zeros((1, 2, 2), np.float32), nrow=1), "uint8"),
    (dict(images=np.zeros((2, 2), np.uint8), nrow=1), "shape"),
    (dict(images=np.zeros((1, 2, 2), np.uint8), nrow=0), "nrow"),
    (dict(images=np.zeros((1, 2, 2), np.uint8), nrow=1, pad=-1), "pad"),
    (dict(images=np.zeros((1, 2, 2), np.uint8), nrow=1, pad_value=256), "pad_value"),
])
def test_grid_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        png.image_grid(**kw)


def test_grid_to_png(tmp_path):
    imgs = np.random.default_rng(3).integers(0, 256, (4, 16, 16, 3), dtype=np.uint8)
    g = png.image_grid(imgs, nrow=2)
    png.write_png(tmp_path / "g.png", g, {"zipar": "{}"})
    np.testing.assert_array_equal(png.read_png(tmp_path / "g.png"), g)


def test_pillow_reads_our_files(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    rgb = np.random.default_rng(5).integers(0, 256, (13, 17, 3), dtype=np.uint8)
    grey = rgb[:, :, 0].copy()
    text = {"zipar": json.dumps({"seed": 1}), "unicode": "\u2713"}
    for img in (rgb, grey):
        png.write_png(tmp_path / "p.png", img, text)
        with Image.open(tmp_path / "p.png") as im:
            im.load()
            assert im.mode == ("RGB" if img.ndim == 3 else "L")
            np.testing.assert_array_equal(np.asarray(im), img)
            assert im.text == text
        # and our reader reads what Pillow writes without filtering
        Image.fromarray(img).save(tmp_path / "q.png", optimize=False, compress_level=0)
        try:
            np.testing.assert_array_equal(png.read_png(tmp_path / "q.png"), img)
        except ValueError as e:  # Pillow may pick an adaptive filter
            assert "filter type" in str(e)
