"""ZipAR scheduler: pass counts, exactness against raster, window rule, Python policies."""

import numpy as np
import pytest

import zipar
from zipar import AdaptiveZipAR, Policy, Raster, ZipAR
from zipar.reference import ReferenceZipAR
from zipar.sjd import sjd_generate

ROLE = {name: i for i, name in enumerate(zipar.ROLES)}


def tiny(grid=(4, 5), eor=0, vocab=23, seed=0, **kw):
    # scale 1.0 gives peaked, seed-sensitive distributions: differences in context show up
    return zipar.random_model(dim=32, n_layer=2, n_head=4, vocab_size=vocab, grid=grid,
                              num_classes=5, eor=eor, eor_token=vocab - 1 if eor else 0,
                              seed=seed, scale=1.0, **kw)


GRIDS = [(1, 1), (1, 4), (4, 1), (2, 2), (3, 5), (5, 3), (4, 4), (6, 7)]


@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("eor", [0, 1])
def test_pass_counts(grid, eor):
    H, W = grid
    m = tiny(grid, eor=eor)
    assert m.generate([0], policy=Raster(), seed=1).stats["forward_passes"] == H * W
    for s in range(1, W + 1):
        eager = m.generate([0, 1], policy=ZipAR(s), seed=1).stats["forward_passes"]
        assert eager == W + (H - 1) * s, (grid, s)
        paper = m.generate([0], policy=ZipAR(s, schedule="paper"), seed=1).stats["forward_passes"]
        expect = H * W if s >= W else (2 * W + (H - 2) * s if H >= 2 else W)
        assert paper == expect, (grid, s)
        assert ZipAR(s, schedule="paper").expected_passes(H, W) == paper


def test_emu3_headline_count():
    # the ZipAR paper's Emu3 count: 90x90 with E = 1, s = 7 -> 713 passes (8190 raster steps)
    assert ZipAR(7).expected_passes(90, 90) == 713


@pytest.mark.parametrize("grid", [(3, 4), (4, 4), (5, 2)])
@pytest.mark.parametrize("eor", [0, 1])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_full_window_equals_raster(grid, eor, temperature):
    for seed in (0, 1):
        m = tiny(grid, eor=eor, seed=seed)
        kw = dict(cfg_scale=3.0, temperature=temperature, top_k=7 if temperature else 0, seed=seed)
        ref = m.generate([0, 3, 4], policy=Raster(), **kw).tokens
        m.row_start_proxy = 5
        for pol in (ZipAR(grid[1]), ZipAR(grid[1], schedule="paper"),
                    AdaptiveZipAR(grid[1]), AdaptiveZipAR(grid[1], threshold=0.5),
                    ZipAR(grid[1], proxy=np.int32(22)), ZipAR(grid[1], proxy=0, schedule="paper"),
                    ZipAR(grid[1], proxy="calibrated"), AdaptiveZipAR(grid[1], proxy=7)):
            res = m.generate([0, 3, 4], policy=pol, **kw)
            np.testing.assert_array_equal(res.tokens, ref)
            assert res.stats["proxies"] == 0   # the full window never needs a stand-in


def test_small_window_differs_but_is_complete():
    m = tiny((5, 6))
    ref = m.generate([1, 2], seed=4).tokens
    out = m.generate([1, 2], policy=ZipAR(1), seed=4)
    assert (out.tokens >= 0).all() and out.tokens.max() < 23
    assert not np.array_equal(out.tokens, ref)  # context really is smaller
    assert out.stats["proxies"] == 2 * 4 and out.stats["refeeds"] == 2 * 4


def test_cfg_interval_matches_raster_semantics():
    m = tiny((3, 4))
    full = m.generate([1], cfg_scale=4.0, seed=2).tokens
    never = m.generate([1], cfg_scale=1.0, seed=2).tokens
    early = m.generate([1], cfg_scale=4.0, cfg_interval=0, seed=2).tokens
    # token 0 and 1 are guided (LlamaGen keeps guidance for tokens n <= cfg_interval + 1)
    np.testing.assert_array_equal(early.reshape(-1)[:2], full.reshape(-1)[:2])
    assert not np.array_equal(full, never)
    for s in (1, 2, 4):
        z = m.generate([1], cfg_scale=4.0, cfg_interval=3, policy=ZipAR(4), seed=2).tokens
        r = m.generate([1], cfg_scale=4.0, cfg_interval=3, seed=2).tokens
        np.testing.assert_array_equal(z, r)
        assert m.generate([1], cfg_scale=4.0, cfg_interval=3, policy=ZipAR(s), seed=2).tokens.shape


def check_window_rule(trace, H, W, window, eor):
    """No cell is decoded before the cells it depends on (from the trace)."""
    decoded_at = {}
    # reconstruct decode passes: the query that feeds cell x (or the prefix) decodes its successor
    for p, img, r, c, role, _tok in trace:
        if role == ROLE["prefix"]:
            decoded_at[(img, 0, 0)] = p
        elif role == ROLE["sample"]:
            nr, nc = (r, c + 1) if c + 1 < W else (r + 1, 0)
            decoded_at[(img, nr, nc)] = p
        elif role in (ROLE["proxy"], ROLE["eor"]):
            decoded_at[(img, r + 1, 0)] = p
    imgs = {k[0] for k in decoded_at}
    for img in imgs:
        for r in range(H):
            for c in range(W):
                t = decoded_at[(img, r, c)]
                if c > 0:
                    assert decoded_at[(img, r, c - 1)] < t
                if r > 0:
                    need = min(c + window, W) - 1
                    assert decoded_at[(img, r - 1, need)] < t, (r, c)
    return decoded_at


@pytest.mark.parametrize("eor", [0, 1])
def test_trace_obeys_window_rule(eor):
    H, W = 5, 6
    m = tiny((H, W), eor=eor)
    for s in (1, 2, 3, 6):
        res = m.generate([0, 1], policy=ZipAR(s), trace=True, seed=0)
        check_window_rule(res.trace, H, W, s, eor)
        recs = res.trace_records()
        assert {r["role"] for r in recs} <= set(zipar.ROLES)


# The Python statement of the ZipAR rule (zipar.reference.ReferenceZipAR) against the C policy.
PyZipAR = ReferenceZipAR

# every kind of proxy: the two rules, a constant (also a NumPy integer) and the calibrated token
PROXIES = ["above", "left", 4, np.int64(0), "calibrated"]


@pytest.mark.parametrize("eor", [0, 1])
@pytest.mark.parametrize("proxy", PROXIES, ids=str)
@pytest.mark.parametrize("schedule", ["eager", "paper"])
def test_python_policy_matches_builtin(eor, proxy, schedule):
    m = tiny((4, 5), eor=eor)
    m.row_start_proxy = 17
    for s in (1, 2, 5):
        a = m.generate([0, 2], policy=ZipAR(s, schedule=schedule, proxy=proxy), seed=7,
                       cfg_scale=2.0)
        py = PyZipAR(s, proxy=proxy, schedule=schedule)
        b = m.generate([0, 2], policy=py, seed=7, cfg_scale=2.0)
        np.testing.assert_array_equal(a.tokens, b.tokens)
        assert a.stats["forward_passes"] == b.stats["forward_passes"] == py.expected_passes(4, 5)
        assert a.stats["proxies"] == b.stats["proxies"]
        assert a.config["policy"]["proxy"] == b.config["policy"]["proxy"] == proxy
        if proxy == "calibrated":
            assert a.config["policy"]["proxy_token"] == b.config["policy"]["proxy_token"] == 17
        if s < 5:   # AdaptiveZipAR with threshold 1 is ZipAR(min_window), proxies included
            ad = m.generate([0, 2], policy=AdaptiveZipAR(s, threshold=1.0, schedule=schedule,
                                                         proxy=proxy), seed=7, cfg_scale=2.0)
            np.testing.assert_array_equal(ad.tokens, a.tokens)


def decoded_at_from_trace(trace, n, H, W):
    """(n, H, W) pass that decoded each cell, from a fixed-window trace: a sample query decodes
    its successor, a prefix (0, 0), a proxy / end-of-row query the next row's start."""
    at = np.full((n, H, W), -1)
    for p, img, r, c, role, _tok in trace:
        if role == ROLE["prefix"]:
            at[img, 0, 0] = p
        elif role == ROLE["sample"]:
            at[(img,) + ((r, c + 1) if c + 1 < W else (r + 1, 0))] = p
        elif role in (ROLE["proxy"], ROLE["eor"]):
            at[img, r + 1, 0] = p
    assert (at >= 0).all()
    return at


@pytest.mark.parametrize("proxy", PROXIES, ids=str)
@pytest.mark.parametrize("schedule", ["eager", "paper"])
def test_proxy_queries_feed_the_reference_token(proxy, schedule):
    """Every proxy query of the trace feeds what zipar.reference.proxy_token says, given the
    tokens decoded before its pass; a constant is that token at every proxy query."""
    from zipar.reference import proxy_token

    H, W = 5, 6
    m = tiny((H, W), vocab=23)
    m.row_start_proxy = 21
    for s in (1, 2, 4):
        for pol in (ZipAR(s, schedule=schedule, proxy=proxy),
                    PyZipAR(s, proxy=proxy, schedule=schedule)):
            res = m.generate([0, 1, 2], policy=pol, seed=3, trace=True)
            at = pol.decoded_at if isinstance(pol, PyZipAR) else \
                decoded_at_from_trace(res.trace, 3, H, W)
            proxies = res.trace[res.trace[:, 4] == ROLE["proxy"]]
            assert len(proxies) == res.stats["proxies"] > 0
            for p, img, r, c, _role, tok in proxies:
                assert c == W - 1 and at[img, r, W - 1] >= p   # the real end is not there yet
                before = np.where(at[img] < p, res.tokens[img], -1)
                progress = (before >= 0).sum(axis=1)
                assert tok == proxy_token(before, progress, r + 1, proxy, m.row_start_proxy)
            if not isinstance(proxy, str) or proxy == "calibrated":
                want = 21 if proxy == "calibrated" else int(proxy)
                assert set(proxies[:, 5].tolist()) == {want}


def test_constant_proxy_reaches_the_tokens_and_adaptive_feeds_it():
    """The stand-in changes what a row start sees: two constants give different grids (so the
    exactness comparisons above compare something), and adaptive drafts / verifications with
    an incomplete row above feed the constant."""
    m = tiny((5, 6), vocab=23)
    a = m.generate([0, 1, 2], policy=ZipAR(1, proxy=0), seed=3).tokens
    b = m.generate([0, 1, 2], policy=ZipAR(1, proxy=22), seed=3).tokens
    assert not np.array_equal(a, b)
    res = m.generate([0, 1, 2], policy=AdaptiveZipAR(1, proxy=9), seed=3, temperature=1.0,
                     trace=True)
    assert res.stats["drafts_proposed"] > 0
    tr = res.trace
    assert set(tr[tr[:, 4] == ROLE["proxy"]][:, 5].tolist()) == {9}
    # a verification at the end of the row above feeds the constant or, once decoded, the real
    # token; both happen here
    ver = tr[(tr[:, 4] == ROLE["verify"]) & (tr[:, 3] == 5)]
    real = res.tokens[ver[:, 1], ver[:, 2], 5]
    assert ((ver[:, 5] == 9) | (ver[:, 5] == real)).all()
    assert (ver[:, 5] == 9).any()


def test_calibrate_proxy_is_the_mode_of_raster_row_ends():
    m = tiny((4, 5), vocab=11)
    cal = zipar.calibrate_proxy(m, n_samples=23, seed=5, cfg_scale=1.5, batch=4, top_k=8)
    # the same samples generated here in one batch: labels i % num_classes, sample ids i
    toks = m.generate(np.arange(23) % 5, seed=5, cfg_scale=1.5, top_k=8).tokens
    ends = toks[:, :, -1].reshape(-1)
    counts = np.array([(ends == t).sum() for t in range(11)])
    assert cal.token == min(t for t in range(11) if counts[t] == counts.max())
    np.testing.assert_array_equal(cal.counts, counts)
    assert cal.fraction == counts.max() / (23 * 4) and cal.n_row_ends == 92
    d = cal.to_dict()
    assert (d["token"], d["n_samples"], d["seed"], d["cfg_scale"], d["top_k"]) == \
        (cal.token, 23, 5, 1.5, 8)
    assert zipar.calibrate_proxy(m, n_samples=23, seed=5, cfg_scale=1.5, top_k=8).token == \
        cal.token   # the batch does not matter
    m.row_start_proxy = cal.token
    z = m.generate([1], policy=ZipAR(2, proxy="calibrated"), seed=1)
    np.testing.assert_array_equal(
        z.tokens, m.generate([1], policy=ZipAR(2, proxy=cal.token), seed=1).tokens)


def test_policy_from_name_takes_every_proxy():
    from zipar.policies import policy_from_name

    assert policy_from_name("zipar", window=2, proxy=np.int16(3)) == ZipAR(2, proxy=3)
    assert policy_from_name("adaptive", window=2, proxy="calibrated") == \
        AdaptiveZipAR(2, proxy="calibrated")
    assert policy_from_name("zipar", window=2, proxy="left").to_dict() == {
        "policy": "ZipAR", "window": 2, "schedule": "eager", "proxy": "left"}
    assert repr(PyZipAR(3, proxy=4, schedule="paper")) == \
        "ReferenceZipAR(window=3, proxy=4, schedule='paper')"
    with pytest.raises(ValueError, match="negative"):
        policy_from_name("zipar", window=2, proxy=-3)
    with pytest.raises(TypeError, match="bool"):
        policy_from_name("adaptive", window=2, proxy=False)


def test_calibrate_proxy_errors():
    m = tiny((3, 3))
    with pytest.raises(ValueError, match="n_samples"):
        zipar.calibrate_proxy(m, n_samples=0)
    with pytest.raises(TypeError, match="n_samples"):
        zipar.calibrate_proxy(m, n_samples=2.0)
    with pytest.raises(TypeError, match="zipar.Model"):
        zipar.calibrate_proxy("model")
    with pytest.raises(TypeError):
        zipar.calibrate_proxy(m, n_samples=2, temprature=1.0)   # a misspelt sampling keyword
    with pytest.raises(ValueError, match="temperature"):
        zipar.calibrate_proxy(m, n_samples=2, temperature=-1.0)


def test_python_policy_errors():
    m = tiny((3, 3))

    class Bad(Policy):
        def __init__(self, cells):
            self.cells = cells

        def select(self, state):
            return self.cells

    with pytest.raises(ValueError, match="out of range"):
        m.generate([0], policy=Bad([(0, 5, 0)]))
    with pytest.raises(ValueError, match="first"):
        m.generate([0], policy=Bad([(0, 1, 0)]))
    with pytest.raises(ValueError, match="cannot be fed"):
        m.generate([0], policy=Bad([(0, 0, 0), (0, 1, 1)]))

    class Twice(Policy):
        def select(self, state):
            return [(0, 0, 0)]

    with pytest.raises(ValueError, match="already decoded"):
        m.generate([0], policy=Twice())

    class Empty(Policy):
        def select(self, state):
            return [] if state.pass_index else [(0, 0, 0)]

    with pytest.raises(RuntimeError, match="no cells"):
        m.generate([0], policy=Empty())


def test_bad_policy_arguments():
    m = tiny((3, 4))
    with pytest.raises(ValueError):
        ZipAR(0)
    with pytest.raises(ValueError, match="larger than the grid"):
        m.generate([0], policy=ZipAR(5))
    with pytest.raises(ValueError, match="schedule"):
        ZipAR(2, schedule="lazy")
    with pytest.raises(ValueError, match="unknown proxy 'below'"):
        ZipAR(2, proxy="below")
    with pytest.raises(TypeError, match="not a bool"):
        ZipAR(2, proxy=True)
    with pytest.raises(TypeError, match="not a bool"):
        AdaptiveZipAR(2, proxy=np.bool_(False))
    with pytest.raises(TypeError, match="token id"):
        ZipAR(2, proxy=3.0)
    with pytest.raises(ValueError, match="proxy token -1 is negative"):
        ZipAR(2, proxy=-1)
    with pytest.raises(ValueError, match="proxy token 4294967296"):
        AdaptiveZipAR(2, proxy=2 ** 32)
    # known only with the model: ids below its 23 image tokens, a stored calibrated token
    for pol in (ZipAR(2, proxy=23), AdaptiveZipAR(2, proxy=np.uint16(99))):
        with pytest.raises(ValueError, match=r"proxy token (23|99) is outside the model's "
                                             r"image tokens: valid ids are 0\.\.22"):
            m.generate([0], policy=pol)
    with pytest.raises(ValueError, match="this model has none.*calibrate_proxy"):
        m.generate([0], policy=ZipAR(2, proxy="calibrated"))
    with pytest.raises(ValueError, match="model has none"):
        m.generate([0], policy=PyZipAR(2, proxy="calibrated"))

    class Stand(Policy):   # a Python policy's proxy is checked when the session is made
        proxy = 23

        def select(self, state):
            return [(0, 0, 0)]

    assert Stand().to_dict() == {"policy": "Stand", "proxy": 23}
    with pytest.raises(ValueError, match="valid ids are 0..22"):
        m.generate([0], policy=Stand())
    Stand.proxy = "nearest"
    with pytest.raises(ValueError, match="unknown proxy 'nearest'"):
        m.generate([0], policy=Stand())
    with pytest.raises(ValueError, match="unknown proxy"):
        PyZipAR(2, proxy="up")
    with pytest.raises(TypeError, match="row_start_proxy"):
        m.row_start_proxy = True
    with pytest.raises(ValueError, match="row_start_proxy 23 is outside.*0..22"):
        m.row_start_proxy = 23
    with pytest.raises(ValueError, match="row_start_proxy -2"):
        zipar.Model(m.config, m.weights, row_start_proxy=-2)
    assert m.row_start_proxy is None
    with pytest.raises(ValueError, match="threshold"):
        AdaptiveZipAR(2, threshold=1.5)
    with pytest.raises(ValueError, match="threshold"):
        AdaptiveZipAR(2, threshold=-0.1)
    with pytest.raises(ValueError, match="max_window"):
        AdaptiveZipAR(3, max_window=2)
    with pytest.raises(ValueError, match="larger than the grid"):
        m.generate([0], policy=AdaptiveZipAR(6))
    with pytest.raises(TypeError):
        m.generate([0], policy="zipar")


# ---------------------------------------------------------------------------- adaptive

@pytest.mark.parametrize("eor", [0, 1])
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_adaptive_accept_all_equals_fixed(eor, temperature):
    m = tiny((5, 6), eor=eor)
    for s in (1, 2, 4):
        kw = dict(seed=5, cfg_scale=2.5, temperature=temperature)
        fixed = m.generate([0, 1, 2], policy=ZipAR(s), **kw)
        ada = m.generate([0, 1, 2], policy=AdaptiveZipAR(s, threshold=1.0), **kw)
        np.testing.assert_array_equal(ada.tokens, fixed.tokens)
        assert ada.stats["forward_passes"] == fixed.stats["forward_passes"]
        assert ada.stats["drafts_rejected"] == 0
        assert ada.stats["drafts_accepted"] == ada.stats["drafts_proposed"] > 0
        if s >= 2 and temperature > 0 and not eor:
            # nearly accept-all through the real verify / pipelined-draft path: p(x) > 0 always.
            # (Not with E = 1: there the end-of-row slot keeps the K/V of the last verification,
            # which saw one more token than ZipAR's, so later rows legitimately differ.)
            # (a smooth model, so that no p(x) underflows to 0)
            smooth = zipar.random_model(dim=32, n_layer=2, n_head=4, vocab_size=23, grid=(5, 6),
                                        num_classes=5, eor=eor, eor_token=22 if eor else 0, seed=3)
            fixed = smooth.generate([0, 1, 2], policy=ZipAR(s), **kw)
            near = smooth.generate([0, 1, 2], policy=AdaptiveZipAR(s, threshold=1 - 1e-12), **kw)
            np.testing.assert_array_equal(near.tokens, fixed.tokens)
            assert near.stats["forward_passes"] == fixed.stats["forward_passes"]
            assert near.stats["drafts_accepted"] == near.stats["drafts_proposed"] > 0
            assert near.stats["queries"] > fixed.stats["queries"]  # verification queries ran


def test_adaptive_statistics_and_passes():
    m = tiny((6, 6), vocab=11)
    res = m.generate(np.arange(5) % 5, policy=AdaptiveZipAR(1), seed=3, temperature=1.0)
    st = res.stats
    assert st["drafts_proposed"] > 0
    assert st["drafts_accepted"] + st["drafts_rejected"] >= st["drafts_proposed"]
    fixed1 = ZipAR(1).expected_passes(6, 6)
    assert fixed1 <= st["forward_passes"] <= 36
    assert st["row_start_pass"].shape == (5, 6)
    # each image keeps its own schedule: row starts differ between images in one batch
    assert (st["row_start_pass"] >= 0).all()


def test_adaptive_is_a_rejection_sampler():
    """Grid 2x2, min_window 1: (1, 0) is drafted when row 0 holds one token and verified once
    against the exact raster context. The joint law of the four tokens must then equal the
    model's own (raster) law: chi-square over all vocab^4 outcomes."""
    V = 3
    m = zipar.random_model(dim=16, n_layer=1, n_head=2, vocab_size=V, grid=(2, 2), num_classes=2,
                           seed=11, scale=1.5)
    N = 30000
    res = m.generate(np.zeros(N, int), policy=AdaptiveZipAR(1), cfg_scale=1.0, seed=123)
    assert res.stats["drafts_rejected"] > 100  # the test exercises the residual path
    grids = res.tokens.reshape(N, 4)
    # exact probabilities of all V^4 grids under raster teacher forcing
    allg = np.array(np.meshgrid(*[np.arange(V)] * 4, indexing="ij")).reshape(4, -1).T
    lp = m.log_prob(np.zeros(len(allg), int), allg.reshape(-1, 2, 2))
    p = np.exp(lp)
    assert abs(p.sum() - 1) < 1e-5
    idx = ((grids[:, 0] * V + grids[:, 1]) * V + grids[:, 2]) * V + grids[:, 3]
    counts = np.bincount(idx, minlength=len(p))
    expected = p * N
    chi2 = ((counts - expected) ** 2 / expected).sum()
    dof = len(p) - 1
    # 99.9% quantile of chi-square with 80 dof is about 124.8
    assert chi2 < 124.8, chi2
    # and fixed ZipAR(1) is NOT exact here (it would fail the same test)
    fixed = m.generate(np.zeros(N, int), policy=ZipAR(1), cfg_scale=1.0, seed=123).tokens
    fidx = np.ravel_multi_index(fixed.reshape(N, 4).T, (V,) * 4)
    fchi2 = ((np.bincount(fidx, minlength=len(p)) - expected) ** 2 / expected).sum()
    assert fchi2 > chi2
    assert dof == 80


# ---------------------------------------------------------------------------- sessions / SJD

def test_session_sjd_window1_equals_raster():
    m = tiny((3, 4))
    toks, passes, _ = sjd_generate(m, [0, 1, 2], 1, seed=9)
    ref = m.generate([0, 1, 2], cfg_scale=1.0, seed=9)
    np.testing.assert_array_equal(toks, ref.tokens)
    assert passes == ref.stats["forward_passes"]


def test_session_sjd_runs_with_drafts():
    m = tiny((3, 4), vocab=5)
    toks, passes, accepted = sjd_generate(m, [0, 1], 4, seed=9)
    assert (toks >= 0).all() and toks.max() < 5
    assert accepted > 0 and passes < 12


def test_session_visibility_and_commit():
    m = tiny((2, 3))
    s = m.session([0], cfg_scale=1.0)
    s.prefill()
    # tentative (0, 0) in chain 7, then a query of chain 7 and one committed query at (0, 1)
    s.forward([0], [0], [0], [4], chain=7, want_logits=[0])
    a = s.forward([0], [0], [1], [2], chain=7)
    s.discard(0, 0, 1)
    b = s.forward([0], [0], [1], [2], chain=0)
    assert not np.allclose(a, b)  # chain 7 sees the draft, the committed query does not
    s.commit(0, 0, 0)
    c = s.forward([0], [0], [1], [2], chain=0)
    np.testing.assert_allclose(a, c, rtol=1e-5, atol=1e-5)
    assert s.slots[0, 1] == 0 and s.slots[0, 2] == 0


def test_ctrl_c_keeps_decoded_tokens():
    m = tiny((6, 6))

    class Interrupting(Policy):
        def select(self, state):
            if state.pass_index == 5:
                raise KeyboardInterrupt
            return PyZipAR(2).select(state)

    with pytest.raises(KeyboardInterrupt) as info:
        m.generate([0, 1], policy=Interrupting(), seed=3)
    part = info.value.partial_result
    full = m.generate([0, 1], policy=ZipAR(2), seed=3)
    assert part.stats["forward_passes"] == 5
    done = part.tokens >= 0
    assert 0 < done.sum() < part.tokens.size
    np.testing.assert_array_equal(part.tokens[done], full.tokens[done])
