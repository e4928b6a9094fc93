"""The bfloat16 K/V cache (``kv_dtype="bfloat16"``): keys and values rounded to nearest even when a
pass writes them, widened in registers when attention reads them, everything else float32.

Against the NumPy reference the comparison is in two parts. A key computed by the engine in
float32 and by the reference in float64 differs by about 1e-6 relative, so now and then the two
round to neighbouring bfloat16 values (2^-8 apart), and a few such flips move the logits by up to
~1e-3 relative. So: (1) the cache's contents are checked exactly (bfloat16 values; layer 0, whose
inputs do not depend on the cache, holds exactly the rounded float32 keys and values), (2) the
logits are checked at 1e-4 against the reference attending to those same keys and values, and
(3) against the reference's own rounding within the flips' reach."""

import numpy as np
import pytest

import zipar
from zipar import ZipAR
from zipar._ext import core
from zipar.io.dtypes import float32_to_bfloat16
from zipar.model import kv_type
from zipar.reference import ReferenceModel, kv_round

CONFIGS = [
    # (dim, n_layer, n_head, n_kv_head, vocab, grid, eor)
    (64, 2, 2, 2, 37, (4, 4), 0),     # head_dim 32
    (128, 2, 2, 1, 61, (8, 8), 0),    # head_dim 64, grouped-query
    (64, 1, 4, 2, 45, (16, 16), 0),   # grouped-query, 16x16: 257 slots, 9 tiles
    (64, 2, 2, 2, 29, (3, 7), 1),     # non-square, end-of-row token
]


def make(cfgt, seed=0):
    dim, L, nh, nkv, V, grid, eor = cfgt
    m = zipar.random_model(dim=dim, n_layer=L, n_head=nh, n_kv_head=nkv, vocab_size=V, grid=grid,
                           num_classes=7, eor=eor, eor_token=V - 1 if eor else 0, seed=seed)
    return m, ReferenceModel(m.config, m.weights)


def engine_teacher(m, labels, toks, cfg_scale, kv_dtype):
    """Teacher-forced logits (B, H*W, vocab) of one engine pass, and the keys and values its
    cache then holds, each (B, streams, n_layer, seq_len, n_kv_head, head_dim)."""
    c = m.config
    B = len(labels)
    guided = cfg_scale != 1.0
    cond, unc, mask = m.prefix(labels)
    cache = core().Cache(m._core, B, guided, cond, unc, mask, kv_type=kv_type(kv_dtype))
    q, order = m._teacher_queries(np.asarray(toks, dtype=np.int32), guided)
    lg = cache.forward(q, float(cfg_scale))[order].reshape(B, c.H * c.W, c.vocab_size)
    streams = 2 if guided else 1
    kv = []
    for which in (0, 1):
        a = np.stack([cache.read_kv(layer)[which] for layer in range(c.n_layer)])
        a = a.reshape(c.n_layer, B, streams, c.seq_len, c.n_kv_head, c.head_dim)
        kv.append(a.transpose(1, 2, 0, 3, 4, 5))
    return lg, kv[0], kv[1], cache


@pytest.mark.parametrize("cfgt", CONFIGS)
def test_bf16_cache_contents_and_logits_match_reference(cfgt):
    m, ref = make(cfgt)
    c = m.config
    rng = np.random.default_rng(1)
    toks = rng.integers(0, c.vocab_size, (2, c.H, c.W))
    labels = [3, 6]
    for cfg_scale in (1.0, 3.0):
        got, K, V, cache = engine_teacher(m, labels, toks, cfg_scale, "bfloat16")
        f32, K32, V32, cache32 = engine_teacher(m, labels, toks, cfg_scale, "float32")
        assert cache.kv_type == core().ZP_WTYPE_BF16 and cache32.kv_type == core().ZP_WTYPE_F32
        # (1) bfloat16 values; layer 0 holds exactly the rounded float32 keys and values
        for a in (K, V):
            assert (a.view(np.uint32) & 0xFFFF == 0).all()
        for a, a32 in ((K, K32), (V, V32)):
            np.testing.assert_array_equal(float32_to_bfloat16(a[:, :, 0]),
                                          float32_to_bfloat16(a32[:, :, 0]))
            np.testing.assert_array_equal(a[:, :, 0], kv_round(a32[:, :, 0], "bfloat16"))
        assert not np.array_equal(K[:, :, 0], K32[:, :, 0])  # some rounding took place
        # (2) the logits, given the cache's keys and values
        want = ref.logits(labels, toks, cfg_scale, kv=(K, V))
        scale = np.abs(want).max()
        assert np.abs(got - want).max() <= 1e-4 * scale
        # (3) the reference's own rounding: equal up to the flips; float32 is farther
        own = ref.logits(labels, toks, cfg_scale, kv_dtype="bfloat16")
        to_f32 = np.abs(f32 - ref.logits(labels, toks, cfg_scale)).max()
        assert to_f32 <= 1e-4 * scale
        assert np.abs(got - own).max() <= 2e-3 * scale
        assert np.abs(got - f32).max() > 10 * to_f32  # the bf16 cache changes the logits


def test_bf16_incremental_decoding_equals_one_pass_bitwise():
    """Token by token through a RawSession with a bf16 cache: the same logits, bit for bit, as
    the teacher-forced pass (the same visible slots give the same operations)."""
    m, _ = make(CONFIGS[3])
    c = m.config
    rng = np.random.default_rng(2)
    toks = rng.integers(0, c.vocab_size, (1, c.H, c.W))
    full = m.logits([1], toks, 2.0, kv_dtype="bfloat16")[0]
    assert not np.array_equal(full, m.logits([1], toks, 2.0)[0])
    s = m.session([1], cfg_scale=2.0, kv_dtype="bfloat16")
    rows = [s.prefill()[0]]
    for r in range(c.H):
        for col in range(c.W):
            if r == c.H - 1 and col == c.W - 1:
                break
            if col == c.W - 1 and c.eor:
                s.forward([0], [r], [col], [toks[0, r, col]], want_logits=0)
                rows.append(s.forward([0], [r], [c.W], [c.eor_token])[0])
            else:
                rows.append(s.forward([0], [r], [col], [toks[0, r, col]])[0])
    np.testing.assert_array_equal(np.array(rows), full)


def test_bf16_tokens_independent_of_threads_and_batch():
    m = zipar.random_model(dim=64, n_layer=2, n_head=4, vocab_size=50, grid=6, seed=4, scale=0.3)
    kw = dict(policy=ZipAR(2), seed=11, kv_dtype="bfloat16", cfg_scale=2.0)
    n0 = zipar.get_num_threads()
    try:
        zipar.set_num_threads(1)
        a = m.generate([1, 2, 3], **kw).tokens
        zipar.set_num_threads(2)
        b = m.generate([1, 2, 3], **kw).tokens
    finally:
        zipar.set_num_threads(n0)
    np.testing.assert_array_equal(a, b)
    alone = m.generate([2], sample_ids=[1], **kw).tokens
    np.testing.assert_array_equal(alone[0], a[1])
    other = m.generate([0, 2, 9, 5], sample_ids=[7, 1, 8, 9], **kw).tokens
    np.testing.assert_array_equal(other[1], a[1])


@pytest.mark.parametrize("eor", [0, 1])
def test_bf16_zipar_full_window_equals_raster(eor):
    m = zipar.random_model(dim=64, n_layer=2, n_head=2, vocab_size=40, grid=(5, 6), seed=2,
                           eor=eor, eor_token=39 if eor else 0, scale=0.3)
    for cfg_scale in (1.0, 2.5):
        kw = dict(seed=3, cfg_scale=cfg_scale, kv_dtype="bfloat16")
        raster = m.generate([1, 4, 2], **kw)
        full = m.generate([1, 4, 2], policy=ZipAR(6), **kw)
        np.testing.assert_array_equal(raster.tokens, full.tokens)
        assert raster.config["kv_dtype"] == "bfloat16"


def test_bf16_cache_bytes_halve():
    m = zipar.random_model(dim=64, n_layer=3, n_head=4, n_kv_head=2, vocab_size=40, grid=(5, 7),
                           seed=1)
    c = m.config
    tiled = -(-c.seq_len // 32) * 32
    for cfg_scale, streams in ((1.0, 3), (2.0, 6)):
        f32 = m.session([1, 2, 3], cfg_scale=cfg_scale).kv_bytes
        bf16 = m.session([1, 2, 3], cfg_scale=cfg_scale, kv_dtype="bfloat16").kv_bytes
        assert f32 == 2 * c.n_layer * streams * tiled * c.n_kv_head * c.head_dim * 4
        assert bf16 * 2 == f32
        stats = [m.generate([1, 2, 3], cfg_scale=cfg_scale, kv_dtype=d).stats["kv_cache_bytes"]
                 for d in ("float32", "bfloat16")]
        assert stats == [f32, bf16]


@pytest.mark.parametrize("bad", ["float16", "bf16", "Float32", "", None, np.float32, 2])
def test_bad_kv_dtype_raises(bad):
    m = zipar.random_model(dim=32, n_layer=1, n_head=2, vocab_size=20, grid=3, seed=0)
    toks = np.zeros((1, 3, 3), int)
    calls = [lambda: m.generate([1], kv_dtype=bad), lambda: m.session([1], kv_dtype=bad),
             lambda: m.logits([1], toks, kv_dtype=bad), lambda: m.log_prob([1], toks, kv_dtype=bad)]
    for call in calls:
        with pytest.raises(ValueError, match="kv_dtype must be one of"):
            call()
    with pytest.raises(ValueError, match="kv_dtype must be one of"):
        kv_round(np.zeros(3), bad)


def test_core_refuses_unknown_kv_type():
    m = zipar.random_model(dim=32, n_layer=1, n_head=2, vocab_size=20, grid=3, seed=0)
    cond, unc, _ = m.prefix([1])
    for t in (core().ZP_WTYPE_F16, 9, -1):
        with pytest.raises(ValueError, match="unknown KV cache type"):
            core().Cache(m._core, 1, False, cond, kv_type=t)
        with pytest.raises(ValueError, match="unknown KV cache type"):
            core().Session(m._core, 1, cond, unc, kv_type=t)
    cache = core().Cache(m._core, 1, False, cond)
    with pytest.raises(ValueError, match="layer 1 outside"):
        cache.read_kv(1)


def test_kv_round_is_the_package_conversion():
    rng = np.random.default_rng(0)
    x = rng.standard_normal(1000) * 10.0 ** rng.integers(-30, 30, 1000)
    want = float32_to_bfloat16(x.astype(np.float32)).astype(np.uint32) << 16
    np.testing.assert_array_equal(kv_round(x, "bfloat16"), want.view(np.float32))
    assert kv_round(x, "float32") is x
