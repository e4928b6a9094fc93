"""The NumPy reference against itself: the forward primitive (slots, chains, guidance, masks)
against the independent teacher-forced pass; rotary quirks; sampling; Philox known answers."""

import math
import os

import numpy as np
import pytest

from zipar.config import ModelConfig
from zipar.reference import (SLOT_COMMITTED, SLOT_MASKED, SLOT_UNWRITTEN, ReferenceModel, draw,
                             philox4x32_10, sampling_probs, uniform)

HERE = os.path.dirname(os.path.abspath(__file__))
V = 37
TOL = 1e-10

# (dim, n_layer, n_head, n_kv_head, eor): head_dim 8 and 16, grouped-query, E = 0 and 1
CONFIGS = [
    (32, 2, 4, 2, 0),   # head_dim 8, GQA
    (32, 2, 2, 1, 1),   # head_dim 16, GQA, end-of-row token
    (48, 1, 3, 3, 0),   # head_dim 16, plain MHA
    (32, 2, 4, 1, 1),   # head_dim 8, GQA 4:1, end-of-row token
]


def weight_shapes(c: ModelConfig) -> dict:
    hd = c.head_dim
    s = {"tok_embeddings.weight": (c.vocab_size, c.dim), "norm.weight": (c.dim,),
         "output.weight": (c.vocab_size, c.dim)}
    if c.caption_dim:
        s["cls_embedding.cap_proj.fc1.weight"] = (c.dim, c.caption_dim)
        s["cls_embedding.cap_proj.fc2.weight"] = (c.dim, c.dim)
        s["cls_embedding.uncond_embedding"] = (c.cls_token_num, c.caption_dim)
    else:
        s["cls_embedding.embedding_table.weight"] = (c.num_classes + 1, c.dim)
    for i in range(c.n_layer):
        s[f"layers.{i}.attention_norm.weight"] = (c.dim,)
        s[f"layers.{i}.attention.wqkv.weight"] = ((c.n_head + 2 * c.n_kv_head) * hd, c.dim)
        s[f"layers.{i}.attention.wo.weight"] = (c.dim, c.dim)
        s[f"layers.{i}.ffn_norm.weight"] = (c.dim,)
        s[f"layers.{i}.feed_forward.w1.weight"] = (c.hidden, c.dim)
        s[f"layers.{i}.feed_forward.w3.weight"] = (c.hidden, c.dim)
        s[f"layers.{i}.feed_forward.w2.weight"] = (c.dim, c.hidden)
    return s


def random_weights(c: ModelConfig, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    w = {}
    for k, shape in weight_shapes(c).items():
        if k.endswith("norm.weight"):
            w[k] = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            w[k] = (rng.standard_normal(shape) * (0.5 / math.sqrt(shape[-1]) if len(shape) == 2
                                                   and "embedding" not in k else 0.5)
                    ).astype(np.float32)
    return w


def make(cfgt, seed=0, **kw):
    dim, L, nh, nkv, eor = cfgt
    c = ModelConfig(dim=dim, n_layer=L, n_head=nh, n_kv_head=nkv, vocab_size=V, grid=(3, 4),
                    num_classes=5, eor=eor, eor_token=V - 1 if eor else 0, hidden=40, **kw)
    return ReferenceModel(c, random_weights(c, seed))


def seq_token(c, toks, pos):
    """Input token at sequence position pos >= P of one image's (H, W) grid."""
    r, col = divmod(pos - c.cls_token_num, c.W + c.eor)
    return c.eor_token if col == c.W else int(toks[r, col])


def raster_decode(ref, cache, image, toks, guided, cfg_scale):
    """Feed the whole sequence token by token (one query per pass, all committed); return the
    logits predicting each grid cell, (H*W, vocab)."""
    c = ref.config
    P = c.cls_token_num
    rows = []
    for pos in range(c.seq_len - 1):
        want = pos >= P - 1 and (pos + 1 - P) % (c.W + c.eor) != c.W  # next position is a cell
        tok = 0 if pos < P else seq_token(c, toks, pos)
        out = ref.forward(cache, [(image, pos, tok, 0, int(want), int(guided))], cfg_scale)
        rows.extend(out)
    return np.array(rows)


# ---------------------------------------------------------------------------- (a) raster == logits

@pytest.mark.parametrize("cfgt", CONFIGS)
def test_token_by_token_forward_equals_logits(cfgt):
    ref = make(cfgt)
    c = ref.config
    toks = np.random.default_rng(1).integers(0, V, (2, c.H, c.W))
    labels = [3, 0]
    full = ref.logits(labels, toks)
    assert full.shape == (2, c.H * c.W, V)
    cond, unc = ref.prefix_embeddings(labels)
    cache = ref.new_cache(2, False, cond)
    for b in range(2):
        got = raster_decode(ref, cache, b, toks[b], False, 1.0)
        assert np.abs(got - full[b]).max() <= TOL
    assert (cache.slots[:, :-1] == SLOT_COMMITTED).all()  # the last position predicts nothing
    assert (cache.slots[:, -1] == SLOT_UNWRITTEN).all()
    # guided, token by token vs teacher forced
    full_g = ref.logits(labels, toks, 2.5)
    cache_g = ref.new_cache(2, True, cond, unc)
    got = raster_decode(ref, cache_g, 1, toks[1], True, 2.5)
    assert np.abs(got - full_g[1]).max() <= TOL


@pytest.mark.parametrize("cfgt", CONFIGS[:2])
def test_one_pass_teacher_forcing_equals_logits(cfgt):
    """The whole sequence of both images in one pass (queries in scrambled order)."""
    ref = make(cfgt, seed=3)
    c = ref.config
    toks = np.random.default_rng(2).integers(0, V, (2, c.H, c.W))
    full = ref.logits([1, 4], toks, 3.0)
    cache = ref.new_cache(2, True, *ref.prefix_embeddings([1, 4]))
    order = np.random.default_rng(0).permutation(2 * c.seq_len)
    qs = []
    for n in order:
        b, pos = divmod(int(n), c.seq_len)
        tok = 0 if pos < c.cls_token_num else seq_token(c, toks[b], pos)
        qs.append((b, pos, tok, 0, 1, 1))
    out = dict(zip([(q[0], q[1]) for q in qs], ref.forward(cache, qs, 3.0)))
    for b in range(2):
        got = np.array([out[(b, c.cell_pos(r, col) - 1)] for r in range(c.H) for col in range(c.W)])
        assert np.abs(got - full[b]).max() <= TOL


def test_log_prob():
    ref = make(CONFIGS[1])
    c = ref.config
    toks = np.random.default_rng(5).integers(0, V, (2, c.H, c.W))
    lg = ref.logits([2, 3], toks)
    lp = ref.log_prob([2, 3], toks)
    for b in range(2):
        want = sum(lg[b, i, t] - math.log(np.exp(lg[b, i]).sum())
                   for i, t in enumerate(toks[b].ravel()))
        assert abs(lp[b] - want) <= 1e-9


# ---------------------------------------------------------------------------- (b) guidance

@pytest.mark.parametrize("cfgt", CONFIGS[:2])
def test_guided_equals_two_unguided_caches(cfgt):
    ref = make(cfgt, seed=1)
    c = ref.config
    rng = np.random.default_rng(4)
    cond, unc = ref.prefix_embeddings([2])
    g = ref.new_cache(1, True, cond, unc)
    a = ref.new_cache(1, False, cond)
    u = ref.new_cache(1, False, unc)
    s = 1.75
    passes = [[(0, 0, 0, 0, 1, 1)]]
    positions = list(range(1, c.seq_len))
    for i in range(0, len(positions), 3):
        passes.append([(0, p, int(rng.integers(V)), int(rng.choice([0, 0, 2])), 1, 1)
                       for p in positions[i:i + 3]])
    for qs in passes:
        got = ref.forward(g, qs, s)
        lc = ref.forward(a, [q[:5] + (0,) for q in qs], s)
        lu = ref.forward(u, [q[:5] + (0,) for q in qs], s)
        for x, y, z in zip(got, lc, lu):
            assert np.abs(x - (z + (y - z) * s)).max() <= TOL
    # unguided queries on a guided cache return cond only
    g2 = ref.new_cache(1, True, cond, unc)
    a2 = ref.new_cache(1, False, cond)
    q = [(0, 0, 0, 0, 1, 0)]
    # (the guided cache also runs the uncond stream, so only rounding may differ)
    np.testing.assert_allclose(ref.forward(g2, q, s)[0], ref.forward(a2, q, s)[0], rtol=0,
                               atol=1e-12)


# ---------------------------------------------------------------------------- (c) chains

def committed_cache(ref, toks, upto):
    """A cache with the prefix and sequence positions < upto fed and committed."""
    c = ref.config
    cache = ref.new_cache(1, False, ref.prefix_embeddings([1])[0])
    qs = [(0, p, 0 if p < c.cls_token_num else seq_token(c, toks, p), 0, 0, 0)
          for p in range(upto)]
    ref.forward(cache, qs, 1.0)
    return cache


@pytest.mark.parametrize("cfgt", CONFIGS[:2])
def test_tentative_slot_visible_only_to_its_chain(cfgt):
    ref = make(cfgt, seed=2)
    c = ref.config
    toks = np.random.default_rng(6).integers(0, V, (c.H, c.W))
    t = c.cell_pos(1, 1)          # the tentative slot
    probe = t + 1                 # a later query
    tok_t, tok_p = seq_token(c, toks, t), seq_token(c, toks, probe)

    def run(write_t, chain_t, chain_probe, same_pass):
        cache = committed_cache(ref, toks, t)
        qs = [(0, t, tok_t, chain_t, 0, 0)] if write_t else []
        if not same_pass:
            ref.forward(cache, qs, 1.0)
            qs = []
        out = ref.forward(cache, qs + [(0, probe, tok_p, chain_probe, 1, 0)], 1.0)[0]
        return out, cache

    for same_pass in (False, True):
        never, cache = run(False, 0, 0, same_pass)
        assert cache.slots[0, t] == SLOT_UNWRITTEN
        for chain_probe in (0, 6):
            got, cache = run(True, 5, chain_probe, same_pass)
            assert cache.slots[0, t] == 5
            assert np.abs(got - never).max() <= TOL   # (batched matmuls round differently)
        seen, _ = run(True, 5, 5, same_pass)
        assert np.abs(seen - never).max() > 1e-6
        committed, _ = run(True, 0, 0, same_pass)
        assert np.abs(seen - committed).max() <= TOL
    # and the chain-5 view equals the teacher-forced logits of the next cell
    full = ref.logits([1], toks[None])[0]
    r, col = divmod(probe + 1 - c.cls_token_num, c.W + c.eor)
    assert np.abs(seen - full[r * c.W + col]).max() <= TOL


def test_slot_rules_and_errors():
    ref = make(CONFIGS[0])
    c = ref.config
    cond, unc = ref.prefix_embeddings([0])
    cache = ref.new_cache(1, False, cond)
    with pytest.raises(ValueError, match="twice"):
        ref.forward(cache, [(0, 2, 1, 0, 0, 0), (0, 2, 3, 0, 0, 0)], 1.0)
    with pytest.raises(ValueError, match="guided"):
        ref.forward(cache, [(0, 2, 1, 0, 1, 1)], 1.0)
    with pytest.raises(ValueError, match="token"):
        ref.forward(cache, [(0, 2, V, 0, 1, 0)], 1.0)
    with pytest.raises(ValueError, match="position"):
        ref.forward(cache, [(0, c.seq_len, 1, 0, 1, 0)], 1.0)
    # discarding a tentative slot makes it invisible again
    toks = np.random.default_rng(0).integers(0, V, (c.H, c.W))
    a = committed_cache(ref, toks, 4)
    b = committed_cache(ref, toks, 4)
    ref.forward(a, [(0, 4, 7, 3, 0, 0)], 1.0)
    a.slots[0, 4] = SLOT_UNWRITTEN
    q = [(0, 5, 2, 3, 1, 0)]
    np.testing.assert_array_equal(ref.forward(a, q, 1.0)[0], ref.forward(b, q, 1.0)[0])
    # a prefix query ignores its chain: conditioning is always committed
    d = ref.new_cache(1, False, cond)
    ref.forward(d, [(0, 0, 0, 9, 0, 0)], 1.0)
    assert d.slots[0, 0] == SLOT_COMMITTED


# ---------------------------------------------------------------------------- (d) masked prefix

def test_masked_prefix_slot_invisible():
    ref = make(CONFIGS[1], seed=4, cls_token_num=3)
    c = ref.config
    rng = np.random.default_rng(7)
    toks = rng.integers(0, V, (1, c.H, c.W))
    cond, unc = ref.prefix_embeddings([3])
    cond = np.repeat(cond, 3, axis=1) + 0.3 * rng.standard_normal((1, 3, c.dim))
    unc = np.repeat(unc, 3, axis=1)
    mask = np.array([[1, 0, 1]], np.uint8)
    other = cond.copy()
    other[0, 1] += 5.0 * rng.standard_normal(c.dim)   # only the masked row differs
    full = ref.logits((cond, unc, mask), toks)
    full_other = ref.logits((other, unc, mask), toks)
    np.testing.assert_array_equal(full, full_other)
    assert np.abs(ref.logits((cond, unc), toks) - full).max() > 1e-6  # the mask matters
    for prefix in (cond, other):
        cache = ref.new_cache(1, False, prefix, prefix_mask=mask)
        got = raster_decode(ref, cache, 0, toks[0], False, 1.0)
        assert list(cache.slots[0, :3]) == [SLOT_COMMITTED, SLOT_MASKED, SLOT_COMMITTED]
        assert np.abs(got - full[0]).max() <= TOL


def test_t2i_prefix_and_mask():
    dim, cap_dim, P = 32, 6, 4
    c = ModelConfig(dim=dim, n_layer=2, n_head=4, n_kv_head=2, vocab_size=V, grid=(3, 4),
                    num_classes=1, cls_token_num=P, caption_dim=cap_dim, hidden=40)
    w = random_weights(c, 5)
    ref = ReferenceModel(c, w)
    rng = np.random.default_rng(8)
    caps = rng.standard_normal((2, P, cap_dim))
    cond, unc = ref.prefix_embeddings(captions=caps)
    fc1 = w["cls_embedding.cap_proj.fc1.weight"].astype(np.float64)
    fc2 = w["cls_embedding.cap_proj.fc2.weight"].astype(np.float64)
    h = caps[1, 2] @ fc1.T
    h = 0.5 * h * (1 + np.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3)))
    assert np.abs(cond[1, 2] - h @ fc2.T).max() <= 1e-12
    h = w["cls_embedding.uncond_embedding"][0].astype(np.float64) @ fc1.T
    h = 0.5 * h * (1 + np.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3)))
    assert np.abs(unc[0, 0] - h @ fc2.T).max() <= 1e-12
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1]], np.uint8)
    toks = rng.integers(0, V, (2, c.H, c.W))
    full = ref.logits((cond, unc, mask), toks, 2.0)
    cache = ref.new_cache(2, True, cond, unc, mask)
    for b in range(2):
        got = raster_decode(ref, cache, b, toks[b], True, 2.0)
        assert np.abs(got - full[b]).max() <= TOL


# ---------------------------------------------------------------------------- (e) rotary

@pytest.mark.parametrize("cfgt", CONFIGS[:2])
def test_rope_layout(cfgt):
    ref = make(cfgt, cls_token_num=2)
    c = ref.config
    hd = c.head_dim
    x = np.random.default_rng(0).standard_normal((c.n_head, hd))
    for p in range(c.cls_token_num):
        assert not ref.rope(x, p).any()         # exactly zero at conditioning positions
    # keys written at conditioning slots are exactly zero too
    cache = ref.new_cache(1, False, ref.prefix_embeddings([1])[0].repeat(2, axis=1))
    ref.forward(cache, [(0, 0, 0, 0, 0, 0), (0, 1, 0, 0, 0, 0)], 1.0)
    assert not cache.k[:, :, :, :2].any() and cache.v[:, :, :, :2].any()
    # grid cell (r, c): pair i < hd/4 by r * f_i, pair i >= hd/4 by c * f_(i - hd/4)
    cells = [(r, col) for r in range(c.H) for col in range(c.W + c.eor)]
    for r, col in cells:
        pos = c.cell_pos(r, col)
        y = ref.rope(x, pos)
        for i in range(hd // 2):
            j, coord = (i, r) if i < hd // 4 else (i - hd // 4, col)
            ang = coord * 10000.0 ** (-4.0 * j / hd)
            z = complex(x[1, 2 * i], x[1, 2 * i + 1]) * complex(math.cos(ang), math.sin(ang))
            assert abs(y[1, 2 * i] - z.real) <= 1e-12 and abs(y[1, 2 * i + 1] - z.imag) <= 1e-12
    np.testing.assert_array_equal(ref.rope(x, c.cell_pos(0, 0)), x)  # (0, 0): identity


def test_bfloat16_and_half_weights():
    ref = make(CONFIGS[0])
    c = ref.config
    w32 = random_weights(c, 0)
    bf16 = {k: (v.view(np.uint32) >> 16).astype(np.uint16) for k, v in w32.items()}
    bf16["freqs_cis"] = np.zeros((3, 2), np.float32)
    rb = ReferenceModel(c, bf16)
    trunc = {k: (v.view(np.uint32) & 0xFFFF0000).view(np.float32) for k, v in w32.items()}
    rt = ReferenceModel(c, trunc)
    toks = np.random.default_rng(0).integers(0, V, (1, c.H, c.W))
    np.testing.assert_array_equal(rb.logits([1], toks), rt.logits([1], toks))
    rh = ReferenceModel(c, {k: v.astype(np.float16) for k, v in w32.items()})
    assert rh.w["output.weight"].dtype == np.float64


# ---------------------------------------------------------------------------- (f) sampling

def test_sampling_temperature_zero_is_argmax_lowest_index():
    lg = np.array([0.5, 2.0, -1.0, 2.0, 1.0])
    p = sampling_probs(lg, 0.0, 0, 1.0)
    np.testing.assert_array_equal(p, [0, 1, 0, 0, 0])
    np.testing.assert_array_equal(sampling_probs(lg, 0.0, 2, 0.1), p)


def test_sampling_plain_softmax_and_temperature():
    rng = np.random.default_rng(0)
    lg = rng.standard_normal(V) * 3
    for t in (1.0, 0.5, 2.0):
        p = sampling_probs(lg, t, 0, 1.0)
        z = lg / float(np.float32(t))
        want = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        assert np.abs(p - want).max() <= 1e-15
        np.testing.assert_array_equal(sampling_probs(lg, t, 0, 1.0), sampling_probs(lg, t, V, 1.0))
    # top_p = 1 is a no-op; top_k >= vocab is a no-op
    np.testing.assert_array_equal(sampling_probs(lg, 1.0, 0, 1.0), sampling_probs(lg, 1.0, 99, 1.0))


def test_sampling_top_k_keeps_ties():
    lg = np.array([1.0, 3.0, 2.0, 3.0, 2.0, 0.0])
    p = sampling_probs(lg, 1.0, 2, 1.0)
    assert list(p > 0) == [False, True, False, True, False, False]
    p = sampling_probs(lg, 1.0, 3, 1.0)        # the 3rd largest is 2.0, tied: 4 kept
    assert list(p > 0) == [False, True, True, True, True, False]
    want = np.exp([3.0, 2.0, 3.0, 2.0])
    np.testing.assert_allclose(p[1:5], want / want.sum(), rtol=0, atol=1e-15)
    assert abs(p.sum() - 1.0) <= 1e-15


def test_sampling_top_p_boundary():
    probs = np.array([0.1, 0.4, 0.2, 0.25, 0.05])
    lg = np.log(probs)
    # sorted: 1 (.4), 3 (.25), 2 (.2), 0 (.1), 4 (.05); mass before: 0, .4, .65, .85, .95
    kept = lambda p: list(np.nonzero(sampling_probs(lg, 1.0, 0, p))[0])  # noqa: E731
    assert kept(0.3) == [1]                     # the first token is always kept
    assert kept(0.45) == [1, 3]                 # the token that crosses p is still kept
    assert kept(0.7) == [1, 2, 3]
    assert kept(0.9) == [0, 1, 2, 3]
    assert kept(0.99) == [0, 1, 2, 3, 4]
    p = sampling_probs(lg, 1.0, 0, 0.45)
    assert abs(p[1] - 0.4 / 0.65) <= 1e-12 and abs(p[3] - 0.25 / 0.65) <= 1e-12
    # exactly at the boundary: keep while the mass before is <= p (0.5 and 0.25 are exact)
    lg2 = np.log(np.array([0.25, 0.5, 0.25]))
    assert list(np.nonzero(sampling_probs(lg2, 1.0, 0, 0.5))[0]) == [0, 1]
    # ties in probability: lower index first
    lg3 = np.log(np.array([0.3, 0.3, 0.3, 0.1]))
    assert list(np.nonzero(sampling_probs(lg3, 1.0, 0, 0.2))[0]) == [0]
    assert list(np.nonzero(sampling_probs(lg3, 1.0, 0, 0.35))[0]) == [0, 1]
    # top-k then top-p
    assert list(np.nonzero(sampling_probs(lg, 1.0, 2, 0.99))[0]) == [1, 3]


def test_draw():
    p = np.array([0.0, 0.25, 0.0, 0.5, 0.25])
    assert draw(p, 0.0) == 1
    assert draw(p, 0.2499) == 1
    assert draw(p, 0.25) == 3                    # running sum must exceed the target
    assert draw(p, 0.7499) == 3
    assert draw(p, 0.75) == 4
    assert draw(p, 0.999999) == 4
    assert draw(np.array([0.0, 1.0, 0.0]), 0.999) == 1
    assert draw(np.array([0.3, 0.0]), 1.0) == 0   # rounding leaves none: last nonzero
    assert draw(np.array([2.0, 6.0]), 0.3) == 1   # unnormalised: target = u * total
    rng = np.random.default_rng(0)
    q = rng.random(V) * (rng.random(V) < 0.5)
    for _ in range(50):
        v = draw(q, rng.random())
        assert q[v] > 0


# ---------------------------------------------------------------------------- (g) Philox

def kat_vectors():
    rows = []
    with open(os.path.join(HERE, "kat_philox.txt")) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            name, rounds, *words = line.split()
            assert name == "philox4x32" and rounds == "10" and len(words) == 10
            w = [int(x, 16) for x in words]
            rows.append((tuple(w[:4]), tuple(w[4:6]), tuple(w[6:])))
    return rows


def test_philox_known_answers():
    kat = kat_vectors()
    assert len(kat) >= 3
    assert kat[0] == ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8))
    for ctr, key, want in kat:
        assert philox4x32_10(ctr, key) == want


def test_uniform():
    # seed 0, counter 0 is the first KAT vector: x0 = 0x6627e8d5, x1 = 0xe169c58d
    want = ((0x6627E8D5 >> 5) * 2 ** 26 + (0xE169C58D >> 6)) / 2 ** 53
    assert uniform(0, 0, 0, 0) == want
    # key from the seed's halves, counter (draw, pos, sample_id, 0)
    seed = (0x299F31D0 << 32) | 0xA4093822
    x = philox4x32_10((0x243F6A88, 0x85A308D3, 0x13198A2E, 0), (0xA4093822, 0x299F31D0))
    assert uniform(seed, 0x13198A2E, 0x85A308D3, 0x243F6A88) == \
        ((x[0] >> 5) * 2 ** 26 + (x[1] >> 6)) / 2 ** 53
    us = [uniform(7, s, p, d) for s in range(3) for p in range(20) for d in range(3)]
    assert all(0.0 <= u < 1.0 for u in us) and len(set(us)) == len(us)
    assert abs(np.mean(us) - 0.5) < 0.06
