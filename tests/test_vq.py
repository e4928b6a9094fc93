"""VQ-16 decoder: fast NumPy path vs a slow float64 reference vs torch.nn.functional."""


import numpy as np
import pytest

from zipar import vq  # noqa: E402

VQDecoder = vq.VQDecoder


# --------------------------------------------------------------------------------------------
# A reduced decoder with LlamaGen's key names, written out independently of zipar.vq
# --------------------------------------------------------------------------------------------

def make_state_dict(seed=0, ch=32, ch_mult=(1, 1, 2, 2, 4), z_channels=64, n_embed=64,
                    embed_dim=8, res_per_level=3, encoder=False):
    """LlamaGen VQModel decoder weights: levels run ch*ch_mult[-1] .. ch*ch_mult[0]."""
    rng = np.random.default_rng(seed)
    sd = {}

    def add_conv(name, cout, cin, k, gain=1.0):
        sd[f"{name}.weight"] = (gain * rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)
                                ).astype(np.float32)
        sd[f"{name}.bias"] = (0.1 * rng.standard_normal(cout)).astype(np.float32)

    def add_norm(name, c):
        sd[f"{name}.weight"] = (1 + 0.2 * rng.standard_normal(c)).astype(np.float32)
        sd[f"{name}.bias"] = (0.1 * rng.standard_normal(c)).astype(np.float32)

    def add_res(name, cin, cout):
        add_norm(f"{name}.norm1", cin)
        add_conv(f"{name}.conv1", cout, cin, 3)
        add_norm(f"{name}.norm2", cout)
        add_conv(f"{name}.conv2", cout, cout, 3)
        if cin != cout:
            add_conv(f"{name}.nin_shortcut", cout, cin, 1)

    def add_attn(name, c):
        add_norm(f"{name}.norm", c)
        add_conv(f"{name}.q", c, c, 1, gain=2.0)  # sharper softmax than unit gain
        add_conv(f"{name}.k", c, c, 1, gain=2.0)
        add_conv(f"{name}.v", c, c, 1)
        add_conv(f"{name}.proj_out", c, c, 1)

    sd["quantize.embedding.weight"] = rng.standard_normal((n_embed, embed_dim)).astype(np.float32)
    add_conv("post_quant_conv", z_channels, embed_dim, 1)
    chans = [ch * m for m in reversed(ch_mult)]
    add_conv("decoder.conv_in", chans[0], z_channels, 3)
    add_res("decoder.mid.0", chans[0], chans[0])
    add_attn("decoder.mid.1", chans[0])
    add_res("decoder.mid.2", chans[0], chans[0])
    c = chans[0]
    for i, cout in enumerate(chans):
        for j in range(res_per_level):
            add_res(f"decoder.conv_blocks.{i}.res.{j}", c, cout)
            c = cout
            if i == 0:
                add_attn(f"decoder.conv_blocks.{i}.attn.{j}", c)
        if i < len(chans) - 1:
            add_conv(f"decoder.conv_blocks.{i}.upsample.conv", c, c, 3)
    add_norm("decoder.norm_out", c)
    add_conv("decoder.conv_out", 3, c, 3, gain=1.5)  # std ~0.9: some output beyond +-1
    if encoder:  # present in real checkpoints, ignored by the decoder
        sd["encoder.conv_in.weight"] = np.zeros((ch, 3, 3, 3), np.float32)
        sd["quant_conv.weight"] = np.zeros((embed_dim, z_channels, 1, 1), np.float32)
        sd["quantize.codebook_used"] = np.zeros(65536, np.float32)
    return sd


# --------------------------------------------------------------------------------------------
# Slow reference: float64, channels-first, convolution as a loop over kernel offsets
# --------------------------------------------------------------------------------------------

def _ref_conv(x, sd, name):
    w = sd[f"{name}.weight"].astype(np.float64)  # (O, C, k, k)
    b = sd[f"{name}.bias"].astype(np.float64)
    k = w.shape[2]
    p = k // 2
    C, H, W = x.shape
    xp = np.pad(x, ((0, 0), (p, p), (p, p)))
    y = np.zeros((w.shape[0], H, W))
    for dy in range(k):
        for dx in range(k):
            y += np.einsum("oc,chw->ohw", w[:, :, dy, dx], xp[:, dy:dy + H, dx:dx + W])
    return y + b[:, None, None]


def _ref_norm(x, sd, name):
    g = x.reshape(32, -1)
    g = (g - g.mean(axis=1, keepdims=True)) / np.sqrt(g.var(axis=1, keepdims=True) + 1e-6)
    return (g.reshape(x.shape) * sd[f"{name}.weight"].astype(np.float64)[:, None, None]
            + sd[f"{name}.bias"].astype(np.float64)[:, None, None])


def _ref_swish(x):
    return x / (1.0 + np.exp(-x))


def _ref_res(x, sd, name):
    h = _ref_conv(_ref_swish(_ref_norm(x, sd, f"{name}.norm1")), sd, f"{name}.conv1")
    h = _ref_conv(_ref_swish(_ref_norm(h, sd, f"{name}.norm2")), sd, f"{name}.conv2")
    if f"{name}.nin_shortcut.weight" in sd:
        x = _ref_conv(x, sd, f"{name}.nin_shortcut")
    return x + h


def _ref_attn(x, sd, name):
    C, H, W = x.shape
    h = _ref_norm(x, sd, f"{name}.norm")
    q = _ref_conv(h, sd, f"{name}.q").reshape(C, H * W)
    k = _ref_conv(h, sd, f"{name}.k").reshape(C, H * W)
    v = _ref_conv(h, sd, f"{name}.v").reshape(C, H * W)
    s = q.T @ k / np.sqrt(C)  # [query, key]
    a = np.exp(s - s.max(axis=1, keepdims=True))
    a /= a.sum(axis=1, keepdims=True)
    o = (v @ a.T).reshape(C, H, W)
    return x + _ref_conv(o, sd, f"{name}.proj_out")


def reference_decode_latent(sd, z):
    """(B, 8, h, w) latent -> (B, 3, s*h, s*w) float64."""
    out = []
    for zb in z.astype(np.float64):
        x = _ref_conv(zb, sd, "post_quant_conv")
        x = _ref_conv(x, sd, "decoder.conv_in")
        x = _ref_res(x, sd, "decoder.mid.0")
        x = _ref_attn(x, sd, "decoder.mid.1")
        x = _ref_res(x, sd, "decoder.mid.2")
        i = 0
        while f"decoder.conv_blocks.{i}.res.0.conv1.weight" in sd:
            j = 0
            while f"decoder.conv_blocks.{i}.res.{j}.conv1.weight" in sd:
                x = _ref_res(x, sd, f"decoder.conv_blocks.{i}.res.{j}")
                if f"decoder.conv_blocks.{i}.attn.{j}.q.weight" in sd:
                    x = _ref_attn(x, sd, f"decoder.conv_blocks.{i}.attn.{j}")
                j += 1
            if f"decoder.conv_blocks.{i}.upsample.conv.weight" in sd:
                x = _ref_conv(x.repeat(2, axis=1).repeat(2, axis=2), sd,
                              f"decoder.conv_blocks.{i}.upsample.conv")
            i += 1
        x = _ref_swish(_ref_norm(x, sd, "decoder.norm_out"))
        out.append(_ref_conv(x, sd, "decoder.conv_out"))
    return np.stack(out)


def reference_latent(sd, tokens):
    e = sd["quantize.embedding.weight"].astype(np.float64)
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    return e[tokens].transpose(0, 3, 1, 2)  # (B, h, w, 8) -> (B, 8, h, w)


def reference_decode(sd, tokens):
    """tokens (B, h, w) -> decoder output (B, 3, s*h, s*w) float64 in ~[-1, 1]."""
    return reference_decode_latent(sd, reference_latent(sd, tokens))


def reference_pixels(y):
    """torchvision save_image(normalize=True, value_range=(-1, 1)) arithmetic, in float64."""
    x = (np.clip(y, -1, 1) + 1) / 2
    return np.clip(np.floor(x * 255 + 0.5), 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


# --------------------------------------------------------------------------------------------
# Fast vs reference
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sd():
    return make_state_dict()


@pytest.fixture(scope="module")
def dec(sd):
    return VQDecoder(sd)


def test_structure_inferred(dec):
    assert dec.codebook_size == 64 and dec.embed_dim == 8 and dec.z_channels == 64
    assert [lv["channels"] for lv in dec.levels] == [128, 64, 64, 32, 32]
    assert [lv["attn"] for lv in dec.levels] == [True, False, False, False, False]
    assert [lv["upsample"] for lv in dec.levels] == [True, True, True, True, False]
    assert dec.scale == 16


@pytest.mark.parametrize("grid", [(1, 1), (2, 2), (2, 3), (4, 4)])
def test_fast_matches_reference(sd, dec, grid):
    rng = np.random.default_rng(sum(grid))
    tokens = rng.integers(0, 64, (2,) + grid)
    y_ref = reference_decode(sd, tokens)
    y = dec.decode_latent(dec.embed(tokens))
    assert y.shape == (2, 3, 16 * grid[0], 16 * grid[1]) and y.dtype == np.float32
    assert 0.05 < np.mean(np.abs(y_ref) > 1) < 0.5  # outputs exercise both clip and interior
    assert np.max(np.abs(np.clip(y, -1, 1) - np.clip(y_ref, -1, 1))) <= 1e-4
    assert np.max(np.abs(y - y_ref)) <= 1e-4 * max(1.0, np.abs(y_ref).max())
    px = dec.decode(tokens)
    assert px.shape == (2, 16 * grid[0], 16 * grid[1], 3) and px.dtype == np.uint8
    diff = np.abs(px.astype(int) - reference_pixels(y_ref).astype(int))
    assert diff.max() <= 1 and np.mean(diff) < 1e-3  # off by one only at rounding ties


def test_other_structure():
    # 3 levels, 2 res blocks per level, no nin_shortcut in level 0 -> scale 4
    sd = make_state_dict(seed=3, ch=32, ch_mult=(1, 2, 2), z_channels=16, n_embed=10,
                         res_per_level=2)
    dec = VQDecoder(sd)
    assert dec.scale == 4 and [lv["n_res"] for lv in dec.levels] == [2, 2, 2]
    tokens = np.random.default_rng(0).integers(0, 10, (1, 3, 5))
    y = dec.decode_latent(dec.embed(tokens))
    assert y.shape == (1, 3, 12, 20)
    assert np.max(np.abs(y - reference_decode(sd, tokens))) <= 1e-4


def test_decode_latent_float_input(sd, dec):
    z = np.random.default_rng(5).standard_normal((1, 8, 2, 2))  # float64, not on the sphere
    assert np.max(np.abs(dec.decode_latent(z) - reference_decode_latent(sd, z))) <= 1e-4


def test_codebook_rows_are_l2_normalised(sd, dec):
    sd2 = dict(sd)
    scale = np.random.default_rng(1).uniform(0.1, 10, (64, 1)).astype(np.float32)
    sd2["quantize.embedding.weight"] = sd["quantize.embedding.weight"] * scale
    tokens = np.random.default_rng(2).integers(0, 64, (1, 2, 2))
    np.testing.assert_allclose(VQDecoder(sd2).decode_latent(VQDecoder(sd2).embed(tokens)),
                               dec.decode_latent(dec.embed(tokens)), atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(dec.codebook, axis=1), 1, rtol=1e-6)


def test_batch_equals_single(dec):
    tokens = np.random.default_rng(7).integers(0, 64, (3, 2, 2))
    batch = dec.decode(tokens)
    for b in range(3):
        np.testing.assert_array_equal(batch[b], dec.decode(tokens[b:b + 1])[0])


def test_inputs_not_mutated(sd):
    copy = {k: v.copy() for k, v in sd.items()}
    dec = VQDecoder(sd)
    tokens = np.random.default_rng(8).integers(0, 64, (1, 2, 2)).astype(np.int32)
    t0 = tokens.copy()
    dec.decode(tokens)
    np.testing.assert_array_equal(tokens, t0)
    for k in sd:
        np.testing.assert_array_equal(sd[k], copy[k])


def test_to_pixels_rounding():
    y = np.array([-2.0, -1.0, -0.999, 0.0, 1 / 255, 0.5, 0.999, 1.0, 3.0], np.float32)
    y4 = np.broadcast_to(y, (1, 3, 1, y.size))
    px = vq.to_pixels(y4)
    assert px.shape == (1, 1, y.size, 3)
    expected = reference_pixels(y4.astype(np.float64))
    np.testing.assert_array_equal(px[0, 0, :, 0], expected[0, 0, :, 0])
    assert list(px[0, 0, :, 0]) == [0, 0, 0, 128, 128, 191, 255, 255, 255]


def test_real_shapes():
    sd = vq.random_state_dict(codebook_size=1024)  # real channel counts, smaller codebook
    for key, shape in [("quantize.embedding.weight", (1024, 8)),
                       ("post_quant_conv.weight", (256, 8, 1, 1)),
                       ("decoder.conv_in.weight", (512, 256, 3, 3)),
                       ("decoder.mid.1.q.weight", (512, 512, 1, 1)),
                       ("decoder.conv_blocks.0.res.1.conv2.weight", (512, 512, 3, 3)),
                       ("decoder.conv_blocks.0.attn.2.q.weight", (512, 512, 1, 1)),
                       ("decoder.conv_blocks.1.res.0.nin_shortcut.weight", (256, 512, 1, 1)),
                       ("decoder.conv_blocks.1.upsample.conv.weight", (256, 256, 3, 3)),
                       ("decoder.conv_blocks.4.res.2.conv2.weight", (128, 128, 3, 3)),
                       ("decoder.conv_out.weight", (3, 128, 3, 3))]:
        assert sd[key].shape == shape, key
    assert "decoder.conv_blocks.4.upsample.conv.weight" not in sd
    assert "decoder.conv_blocks.1.attn.0.q.weight" not in sd
    # same key set as the independently written builder with the real configuration
    assert set(sd) == set(make_state_dict(ch=128, z_channels=256, n_embed=4))
    dec = VQDecoder(sd)
    assert [lv["channels"] for lv in dec.levels] == [512, 256, 256, 128, 128] and dec.scale == 16
    px = dec.decode(np.array([[[0]], [[1023]]]))
    assert px.shape == (2, 16, 16, 3) and px.dtype == np.uint8


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------

def _without(sd, key):
    return {k: v for k, v in sd.items() if k != key}


@pytest.mark.parametrize("key", ["quantize.embedding.weight", "post_quant_conv.bias",
                                 "decoder.conv_in.weight", "decoder.mid.1.k.bias",
                                 "decoder.conv_blocks.2.res.1.norm2.bias",
                                 "decoder.conv_blocks.1.res.0.nin_shortcut.weight",
                                 "decoder.conv_blocks.0.attn.1.proj_out.weight",
                                 "decoder.norm_out.weight", "decoder.conv_out.bias"])
def test_missing_key(sd, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        VQDecoder(_without(sd, key))


@pytest.mark.parametrize("key", ["decoder.conv_blocks.0.res.0.foo.weight", "decoder.extra",
                                 "post_quant_conv.scale", "something_else"])
def test_extra_key(sd, key):
    bad = dict(sd)
    bad[key] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        VQDecoder(bad)


@pytest.mark.parametrize("key,shape", [("decoder.conv_out.weight", (3, 32, 1, 1)),
                                       ("decoder.conv_out.weight", (4, 32, 3, 3)),
                                       ("decoder.mid.0.norm1.weight", (127,)),
                                       ("decoder.conv_blocks.3.upsample.conv.bias", (33,)),
                                       ("post_quant_conv.weight", (64, 7, 1, 1)),
                                       ("quantize.embedding.weight", (64, 8, 1))])
def test_misshaped_key(sd, key, shape):
    bad = dict(sd)
    bad[key] = np.zeros(shape, np.float32)
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        VQDecoder(bad)


def test_channels_not_multiple_of_32():
    with pytest.raises(ValueError, match="32"):
        VQDecoder(make_state_dict(ch=16, ch_mult=(1, 2), z_channels=8))


def test_attn_count_mismatch(sd):
    bad = {k: v for k, v in sd.items() if not k.startswith("decoder.conv_blocks.0.attn.2.")}
    with pytest.raises(ValueError, match="attn"):
        VQDecoder(bad)


def test_non_finite_weight(sd):
    bad = dict(sd)
    bad["decoder.conv_in.bias"] = sd["decoder.conv_in.bias"].copy()
    bad["decoder.conv_in.bias"][0] = np.nan
    with pytest.raises(ValueError, match=r"decoder\.conv_in\.bias"):
        VQDecoder(bad)


def test_checkpoint_extras_accepted(sd, dec):
    full = make_state_dict(encoder=True)
    wrapped = {"model": {k: v.astype(np.float16) if k.startswith("decoder.conv_blocks.4") else v
                         for k, v in full.items()}}
    dec2 = VQDecoder(wrapped)
    tokens = np.random.default_rng(4).integers(0, 64, (1, 2, 2))
    y1, y2 = dec.decode_latent(dec.embed(tokens)), dec2.decode_latent(dec2.embed(tokens))
    assert np.max(np.abs(y1 - y2)) < 0.05  # float16 weights in the last level


@pytest.mark.parametrize("tokens,match", [
    (np.zeros((1, 2, 2), np.float32), "integer"),
    (np.zeros((1, 2, 2), bool), "integer"),
    (np.zeros((2, 2), np.int64), "shape"),
    (np.zeros((1, 2, 2, 1), np.int64), "shape"),
    (np.zeros((1, 0, 2), np.int64), "1x1"),
    (np.full((1, 2, 2), 64), r"\[0, 64\)"),
    (np.full((1, 2, 2), -1), r"\[0, 64\)"),
])
def test_bad_tokens(dec, tokens, match):
    with pytest.raises(ValueError, match=match):
        dec.decode(tokens)


def test_bad_latent(dec):
    with pytest.raises(ValueError, match="shape"):
        dec.decode_latent(np.zeros((1, 4, 2, 2)))
    with pytest.raises(ValueError, match="shape"):
        dec.decode_latent(np.zeros((8, 2, 2)))


def test_empty_batch(dec):
    assert dec.decode(np.zeros((0, 2, 3), np.int64)).shape == (0, 32, 48, 3)


# --------------------------------------------------------------------------------------------
# Against an independent torch.nn.functional implementation
# --------------------------------------------------------------------------------------------

def torch_decode(sd, tokens):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    t = {k: torch.from_numpy(np.asarray(v, np.float64)) for k, v in sd.items()}

    def conv(x, name):
        w = t[name + ".weight"]
        return F.conv2d(x, w, t[name + ".bias"], padding=w.shape[-1] // 2)

    def norm(x, name):
        return F.group_norm(x, 32, t[name + ".weight"], t[name + ".bias"], eps=1e-6)

    def res(x, name):
        h = conv(F.silu(norm(x, name + ".norm1")), name + ".conv1")
        h = conv(F.silu(norm(h, name + ".norm2")), name + ".conv2")
        if name + ".nin_shortcut.weight" in t:
            x = conv(x, name + ".nin_shortcut")
        return x + h

    def attn(x, name):
        b, c, hh, ww = x.shape
        h = norm(x, name + ".norm")
        q = conv(h, name + ".q").reshape(b, c, hh * ww).permute(0, 2, 1)
        k = conv(h, name + ".k").reshape(b, c, hh * ww)
        v = conv(h, name + ".v").reshape(b, c, hh * ww)
        w_ = torch.softmax(torch.bmm(q, k) * c ** -0.5, dim=2)
        o = torch.bmm(v, w_.permute(0, 2, 1)).reshape(b, c, hh, ww)
        return x + conv(o, name + ".proj_out")

    emb = F.normalize(t["quantize.embedding.weight"], p=2, dim=-1)
    z = emb[torch.from_numpy(np.asarray(tokens, np.int64))].permute(0, 3, 1, 2)
    x = conv(conv(z, "post_quant_conv"), "decoder.conv_in")
    x = res(attn(res(x, "decoder.mid.0"), "decoder.mid.1"), "decoder.mid.2")
    n_levels = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("decoder.conv_blocks."))
    for i in range(n_levels):
        pre = f"decoder.conv_blocks.{i}"
        n_res = 1 + max(int(k.split(".")[4]) for k in sd if k.startswith(pre + ".res."))
        for j in range(n_res):
            x = res(x, f"{pre}.res.{j}")
            if f"{pre}.attn.{j}.q.weight" in t:
                x = attn(x, f"{pre}.attn.{j}")
        if f"{pre}.upsample.conv.weight" in t:
            x = conv(F.interpolate(x, scale_factor=2.0, mode="nearest"), f"{pre}.upsample.conv")
    x = conv(F.silu(norm(x, "decoder.norm_out")), "decoder.conv_out")
    return x.numpy()


@pytest.mark.parametrize("grid", [(2, 2), (3, 2)])
def test_matches_torch(sd, dec, grid):
    tokens = np.random.default_rng(11).integers(0, 64, (2,) + grid)
    y_torch = torch_decode(sd, tokens)
    y = dec.decode_latent(dec.embed(tokens))
    assert np.max(np.abs(np.clip(y, -1, 1) - np.clip(y_torch, -1, 1))) <= 1e-4
    assert np.max(np.abs(y - y_torch)) <= 1e-4 * max(1.0, np.abs(y_torch).max())
    # and the float64 reference agrees with torch to rounding
    assert np.max(np.abs(reference_decode(sd, tokens) - y_torch)) <= 1e-9
    diff = np.abs(dec.decode(tokens).astype(int) - reference_pixels(y_torch).astype(int))
    assert diff.max() <= 1 and np.mean(diff) < 1e-3


def test_memory_does_not_grow(dec):
    import tracemalloc
    tokens = np.random.default_rng(12).integers(0, 64, (1, 2, 2))
    dec.decode(tokens)
    tracemalloc.start()
    try:
        dec.decode(tokens)
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(10):
            dec.decode(tokens)
        assert tracemalloc.get_traced_memory()[0] - base < 64 * 1024
    finally:
        tracemalloc.stop()


def test_non_finite_latent(dec):
    z = np.zeros((1, 8, 2, 2))
    z[0, 0, 0, 0] = np.inf
    with pytest.raises(ValueError, match="non-finite"):
        dec.decode_latent(z)
