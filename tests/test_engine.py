"""The C engine against the slow NumPy reference; determinism; GIL; bad input."""

import threading

import numpy as np
import pytest

import zipar
from zipar import ZipAR
from zipar.model import expected_weight_shapes
from zipar.reference import ReferenceModel, philox4x32_10, uniform

CONFIGS = [
    # (dim, n_layer, n_head, n_kv_head, vocab, grid, eor)
    (64, 2, 2, 2, 37, (4, 4), 0),     # head_dim 32
    (128, 2, 2, 1, 61, (8, 8), 0),    # head_dim 64, grouped-query
    (64, 1, 4, 2, 45, (16, 16), 0),   # grouped-query, 16x16
    (64, 2, 2, 2, 29, (3, 7), 1),     # non-square, end-of-row token
]


def make(cfgt, seed=0):
    dim, L, nh, nkv, V, grid, eor = cfgt
    m = zipar.random_model(dim=dim, n_layer=L, n_head=nh, n_kv_head=nkv, vocab_size=V, grid=grid,
                           num_classes=7, eor=eor, eor_token=V - 1 if eor else 0, seed=seed)
    return m, ReferenceModel(m.config, m.weights)


@pytest.mark.parametrize("cfgt", CONFIGS)
def test_logits_match_reference(cfgt):
    m, ref = make(cfgt)
    rng = np.random.default_rng(1)
    H, W = m.config.grid
    toks = rng.integers(0, m.config.vocab_size, (2, H, W))
    labels = [3, 6]
    for cfg_scale in (1.0, 3.0):
        got = m.logits(labels, toks, cfg_scale)
        want = ref.logits(labels, toks, cfg_scale)
        assert got.shape == want.shape == (2, H * W, m.config.vocab_size)
        assert np.abs(got - want).max() <= 1e-4


@pytest.mark.parametrize("cfgt", CONFIGS)
def test_incremental_decoding_equals_one_pass(cfgt):
    """Token-by-token cached decoding (raster queries) equals the teacher-forced pass."""
    m, _ = make(cfgt)
    c = m.config
    rng = np.random.default_rng(2)
    toks = rng.integers(0, c.vocab_size, (1, c.H, c.W))
    full = m.logits([1], toks, 2.0)[0]
    s = m.session([1], cfg_scale=2.0)
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
    assert np.abs(np.array(rows) - full).max() <= 1e-4


def test_scattered_batched_queries_match_reference():
    """One pass with queries at scattered positions, tentative chains and a guided mix."""
    m, ref = make(CONFIGS[1])
    c = m.config
    rng = np.random.default_rng(3)
    cond, unc, _ = m.prefix([2, 5])
    rcond, runc = ref.prefix_embeddings([2, 5])
    np.testing.assert_allclose(cond, rcond, atol=1e-6)
    s = m.session([2, 5], cfg_scale=2.5)
    rc = ref.new_cache(2, True, rcond, runc)
    P = c.cls_token_num

    def both(queries):
        q = np.asarray(queries)
        got = s._cache.forward(np.ascontiguousarray(q.astype(np.int32)), 2.5)
        want = ref.forward(rc, [tuple(int(v) for v in row) for row in q], 2.5)
        return got, np.asarray(want)

    # pass 1: prefix of both images
    both([(b, p, 0, 0, int(p == P - 1), 1) for b in range(2) for p in range(P)])
    # pass 2..: committed tokens at scattered positions, some tentative, some unguided
    for _ in range(4):
        qs = []
        for b in range(2):
            pos = rng.choice(np.arange(P, c.seq_len), size=5, replace=False)
            for p in pos:
                qs.append((b, int(p), int(rng.integers(c.vocab_size)),
                           int(rng.choice([0, 0, 3, 4])),
                           int(rng.integers(2)), int(rng.integers(2))))
        got, want = both(qs)
        assert got.shape == want.shape
        if got.size:
            assert np.abs(got - want).max() <= 1e-4
        np.testing.assert_array_equal(s.slots, rc.slots)


@pytest.mark.parametrize("policy", [ZipAR(1), ZipAR(2, proxy="left"), ZipAR(3, schedule="paper"),
                                    ZipAR(2, proxy=5)])
@pytest.mark.parametrize("cfgi", [0, 3])
def test_zipar_passes_match_reference_visibility(policy, cfgi):
    """Replay a ZipAR generation's trace on the reference, pass by pass, with the intended
    visibility: committed slots and each query's own slot; a proxy lives in a chain of its own,
    so no other query sees it; unwritten slots are never seen. The engine's greedy decisions
    must equal the reference's argmax at every decode."""
    m, ref = make(CONFIGS[cfgi])
    c = m.config
    res = m.generate([4, 1], policy=policy, temperature=0.0, cfg_scale=1.5, trace=True)
    cond, unc = ref.prefix_embeddings([4, 1])
    rc = ref.new_cache(2, True, cond, unc)
    checked = 0
    for p in range(res.stats["forward_passes"]):
        rows = res.trace[res.trace[:, 0] == p]
        qs, decodes = [], []
        for k, (_, img, r, col, role, tok) in enumerate(rows):
            name = zipar.ROLES[role]
            pos = col if r < 0 else c.cell_pos(r, col)
            chain = 1 + 1000 * p + k if name == "proxy" else 0
            want = name in ("sample", "proxy", "eor") or (name == "prefix" and
                                                          col == c.cls_token_num - 1)
            qs.append((int(img), int(pos), max(int(tok), 0), chain, int(want), 1))
            if want:
                if name == "prefix":
                    decodes.append((img, 0, 0))
                elif name == "sample" and col + 1 < c.W:
                    decodes.append((img, r, col + 1))
                else:  # sample of a row end (E = 0), proxy or end-of-row token: a row start
                    decodes.append((img, r + 1, 0))
        lg = np.asarray(ref.forward(rc, qs, 1.5))
        assert len(lg) == len(decodes)
        for (img, r, col), l in zip(decodes, lg):
            assert int(np.argmax(l)) == res.tokens[img, r, col], (p, img, r, col)
            checked += 1
    assert checked == res.tokens.size


def test_threads_and_batch_independence():
    m = zipar.random_model(dim=64, n_layer=2, n_head=4, vocab_size=50, grid=6, seed=4, scale=0.3)
    n0 = zipar.get_num_threads()
    try:
        zipar.set_num_threads(1)
        a = m.generate([1, 2, 3], policy=ZipAR(2), seed=11).tokens
        zipar.set_num_threads(2)
        b = m.generate([1, 2, 3], policy=ZipAR(2), seed=11).tokens
    finally:
        zipar.set_num_threads(n0)
    np.testing.assert_array_equal(a, b)
    # a constant proxy too (the same stand-in whatever the thread count)
    zipar.set_num_threads(1)
    try:
        c1 = m.generate([1, 2, 3], policy=ZipAR(2, proxy=49), seed=11).tokens
    finally:
        zipar.set_num_threads(n0)
    np.testing.assert_array_equal(m.generate([1, 2, 3], policy=ZipAR(2, proxy=49), seed=11).tokens,
                                  c1)
    np.testing.assert_array_equal(m.generate([3], policy=ZipAR(2, proxy=49), seed=11,
                                             sample_ids=[2]).tokens[0], c1[2])
    alone = m.generate([2], policy=ZipAR(2), seed=11, sample_ids=[1]).tokens
    np.testing.assert_array_equal(alone[0], a[1])
    # a different batch composition around the same image
    other = m.generate([0, 2, 9 % 10, 5], policy=ZipAR(2), seed=11, sample_ids=[7, 1, 8, 9]).tokens
    np.testing.assert_array_equal(other[1], a[1])


def test_gil_released_two_threads():
    m = zipar.random_model(dim=64, n_layer=2, n_head=4, vocab_size=50, grid=8, seed=5)
    seq = [m.generate([i], policy=ZipAR(3), seed=i).tokens for i in range(2)]
    out = [None, None]

    def work(i):
        out[i] = m.generate([i], policy=ZipAR(3), seed=i).tokens

    ts = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    for i in range(2):
        np.testing.assert_array_equal(out[i], seq[i])


def test_philox_known_answers_and_python_mirror():
    # Random123 known-answer vectors for philox4x32-10 (kat_vectors)
    kat = [((0, 0, 0, 0), (0, 0), (0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8)),
           ((0xffffffff,) * 4, (0xffffffff,) * 2, (0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd)),
           ((0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344), (0xa4093822, 0x299f31d0),
            (0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1))]
    for ctr, key, want in kat:
        assert zipar._core.philox4x32_10(ctr, key) == want
        assert tuple(philox4x32_10(ctr, key)) == want
    for args in [(0, 0, 0, 0), (2 ** 40 + 5, 3, 17, 9), (123, 7, 785, 2)]:
        assert zipar._core.uniform(*args) == uniform(*args)


def test_sampling_probs_match_reference():
    from zipar.reference import sampling_probs

    rng = np.random.default_rng(0)
    lg = rng.standard_normal((6, 50)).astype(np.float32) * 3
    lg[0, :5] = lg[0].max()  # ties at the top
    for t, k, p in [(1.0, 0, 1.0), (0.7, 5, 1.0), (1.3, 0, 0.6), (1.0, 10, 0.3), (0.0, 0, 1.0),
                    (1.0, 3, 1.0)]:
        got = zipar._core.sampling_probs(lg, t, k, p)
        want = np.array([sampling_probs(row, t, k, p) for row in lg])
        np.testing.assert_allclose(got, want, atol=1e-9)


# ---------------------------------------------------------------------------- bad input

def weights_of(cfg):
    rng = np.random.default_rng(0)
    return {k: rng.standard_normal(s).astype(np.float32) * 0.1
            for k, s in expected_weight_shapes(cfg).items()}


def test_bad_weights():
    cfg = zipar.ModelConfig(dim=32, n_layer=1, n_head=2, vocab_size=20, grid=3, num_classes=4)
    w = weights_of(cfg)
    zipar.Model(cfg, w)
    bad = dict(w)
    del bad["layers.0.attention.wo.weight"]
    with pytest.raises(ValueError, match="missing weight.*wo"):
        zipar.Model(cfg, bad)
    bad = dict(w, extra_thing=np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="unexpected weight.*extra_thing"):
        zipar.Model(cfg, bad)
    bad = dict(w, **{"norm.weight": np.zeros(31, np.float32)})
    with pytest.raises(ValueError, match="norm.weight.*shape"):
        zipar.Model(cfg, bad)
    bad = dict(w, **{"norm.weight": np.zeros(32, np.int64)})
    with pytest.raises(TypeError, match="norm.weight.*dtype"):
        zipar.Model(cfg, bad)
    nan = w["output.weight"].copy()
    nan[3, 4] = np.nan
    with pytest.raises(ValueError, match="output.weight.*NaN"):
        zipar.Model(cfg, dict(w, **{"output.weight": nan}))
    inf = w["tok_embeddings.weight"].astype(np.float16)
    inf[0, 0] = np.inf
    with pytest.raises(ValueError, match="tok_embeddings.*inf"):
        zipar.Model(cfg, dict(w, **{"tok_embeddings.weight": inf}))
    # grid inconsistent with the config: the embedding table says 3 classes, config says 4
    bad = dict(w, **{"cls_embedding.embedding_table.weight": np.zeros((4, 32), np.float32)})
    with pytest.raises(ValueError, match="embedding_table.*shape"):
        zipar.Model(cfg, bad)
    # half and bfloat16 are accepted and converted; freqs_cis is ignored
    half = {k: v.astype(np.float16) for k, v in w.items()}
    bf16 = {k: (v.view(np.uint32) >> 16).astype(np.uint16) for k, v in w.items()}
    bf16["freqs_cis"] = np.zeros((4, 2), np.float32)
    for ww in (half, bf16):
        zipar.Model(cfg, ww).generate([0], seed=0)


def test_bad_generation_arguments():
    m = zipar.random_model(grid=3, vocab_size=20, num_classes=4)
    with pytest.raises(ValueError, match="labels"):
        m.generate([4])
    with pytest.raises(ValueError, match="labels"):
        m.generate([-1])
    with pytest.raises(ValueError, match="labels"):
        m.generate([0.5])
    with pytest.raises(ValueError, match="top_k"):
        m.generate([0], top_k=-1)
    for p in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="top_p"):
            m.generate([0], top_p=p)
    with pytest.raises(ValueError, match="temperature"):
        m.generate([0], temperature=-1)
    with pytest.raises(ValueError, match="finite"):
        m.generate([0], cfg_scale=float("nan"))
    with pytest.raises(ValueError, match="cfg_interval"):
        m.generate([0], cfg_interval=-2)
    with pytest.raises(ValueError, match="sample_ids"):
        m.generate([0, 1], sample_ids=[0])
    with pytest.raises(ValueError, match="tokens"):
        m.logits([0], np.zeros((1, 3, 4), int))
    with pytest.raises(ValueError, match="tokens"):
        m.logits([0], np.full((1, 3, 3), 20))
    with pytest.raises(TypeError):
        zipar.ModelConfig(dim=32, n_layer=1, n_head=2, vocab_size=20, grid="x", num_classes=4)
    with pytest.raises(ValueError, match="divisible"):
        zipar.ModelConfig(dim=30, n_layer=1, n_head=4, vocab_size=20, grid=3, num_classes=4)


def test_inputs_not_mutated_and_memory_stable():
    import resource

    m = zipar.random_model(grid=4, vocab_size=20, num_classes=4)
    labels = np.array([1, 2])
    toks = np.random.default_rng(0).integers(0, 20, (2, 4, 4))
    l0, t0 = labels.copy(), toks.copy()
    m.logits(labels, toks)
    m.generate(labels, policy=ZipAR(2))
    np.testing.assert_array_equal(labels, l0)
    np.testing.assert_array_equal(toks, t0)
    for _ in range(20):
        m.generate(labels, policy=ZipAR(2))
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(200):
        m.generate(labels, policy=ZipAR(2))
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 20_000  # KiB


def test_log_prob_matches_logits():
    m = zipar.random_model(grid=(3, 4), vocab_size=20, num_classes=4)
    toks = np.random.default_rng(0).integers(0, 20, (3, 3, 4))
    lp = m.log_prob([0, 1, 2], toks)
    lg = m.logits([0, 1, 2], toks).astype(np.float64)
    top = lg.max(-1, keepdims=True)
    ls = lg - np.log(np.exp(lg - top).sum(-1, keepdims=True)) - top
    want = np.take_along_axis(ls, toks.reshape(3, -1)[..., None], 2)[..., 0].sum(1)
    np.testing.assert_allclose(lp, want, rtol=1e-6)
