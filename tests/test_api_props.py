"""Property test over the public API's argument space (hypothesis): every call either returns a
correct result or raises ValueError / TypeError (CheckpointError is a ValueError). Arguments mix
sensible values with hostile ones: ints far outside 32 and 64 bits, negative counts, floats and
bools where ints are expected, NaN and infinities, wrong shapes and dtypes. The examples are
derandomised (the same on every run); ZIPAR_PROP_EXAMPLES scales how many (default 60 per
property)."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

hypothesis = pytest.importorskip("hypothesis", reason="needs hypothesis: pip install '.[test]'")
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import zipar  # noqa: E402

N = int(os.environ.get("ZIPAR_PROP_EXAMPLES", "60"))
SETTINGS = settings(max_examples=N, deadline=None, derandomize=True, database=None,
                    phases=[Phase.explicit, Phase.generate],  # no shrinking: bounded time
                    suppress_health_check=list(HealthCheck))
V, H, W, K = 16, 3, 3, 4
MODEL = zipar.random_model(dim=16, n_layer=1, n_head=2, vocab_size=V, grid=(H, W), num_classes=K)
CLEAN = (ValueError, TypeError)
CALLS = {"n": 0}
if "ZIPAR_PROP_EXAMPLES" in os.environ:  # a campaign run (RELIABILITY.md): report the count
    import atexit

    atexit.register(lambda: print(f"\napi calls tried: {CALLS['n']}"))

big_ints = st.sampled_from([2 ** 31 - 1, 2 ** 31, 2 ** 32, 2 ** 32 + 1, 2 ** 63, 2 ** 64, 2 ** 70,
                            -1, -(2 ** 31) - 1, -(2 ** 63), -(2 ** 64)])
ints = st.one_of(st.integers(-3, 12), big_ints, st.integers(-(2 ** 80), 2 ** 80))
floats = st.one_of(st.floats(-5, 20), st.sampled_from([math.nan, math.inf, -math.inf, 0.5, -0.0]))
int_like = st.one_of(ints, ints, floats, st.booleans())
anything = st.one_of(int_like, st.none(), st.text(max_size=3), st.just([1, 2]))
labels_st = st.one_of(st.lists(st.one_of(st.integers(0, K - 1), int_like), min_size=0,
                               max_size=4), st.integers(0, K - 1), int_like, st.none())


def call(fn, check):
    """fn() must return a value passing check(), or raise ValueError/TypeError."""
    CALLS["n"] += 1
    try:
        r = fn()
    except CLEAN:
        return None
    check(r)
    return r


def policy_st():
    return st.one_of(
        st.none(), st.just("raster"),
        st.tuples(st.just("zipar"), int_like, st.sampled_from(["eager", "paper", "x", 1]),
                  st.one_of(st.sampled_from(["above", "left", "calibrated", None]), ints,
                            st.booleans(), floats)),
        st.tuples(st.just("adaptive"), int_like, st.one_of(st.none(), int_like), floats))


def make_policy(p):
    if p is None:
        return None
    if p == "raster":
        return zipar.Raster()
    if p[0] == "zipar":
        return zipar.ZipAR(p[1], schedule=p[2], proxy=p[3])
    return zipar.AdaptiveZipAR(p[1], max_window=p[2], threshold=p[3])


@SETTINGS
@given(labels=labels_st, policy=policy_st(), cfg_scale=floats, cfg_interval=int_like,
       temperature=floats, top_k=int_like, top_p=floats, seed=int_like)
def test_generate(labels, policy, cfg_scale, cfg_interval, temperature, top_k, top_p, seed):
    def run():
        return MODEL.generate(labels, policy=make_policy(policy), cfg_scale=cfg_scale,
                              cfg_interval=cfg_interval, temperature=temperature, top_k=top_k,
                              top_p=top_p, seed=seed, decode_images=False)

    def check(r):
        n = len(np.atleast_1d(np.asarray(labels)))
        assert r.tokens.shape == (n, H, W)
        assert r.tokens.min() >= 0 and r.tokens.max() < V
        assert r.stats["forward_passes"] >= 1
        np.testing.assert_array_equal(run().tokens, r.tokens)  # deterministic

    call(run, check)


tokens_st = st.one_of(
    st.integers(0, 3).flatmap(lambda b: st.lists(st.integers(0, V - 1), min_size=b * H * W,
                                                  max_size=b * H * W).map(
        lambda v, b=b: np.array(v, np.int64).reshape(b, H, W))),
    st.lists(int_like, min_size=0, max_size=12).map(lambda v: np.array(v, dtype=object)),
    st.sampled_from([np.zeros((1, H, W), np.float32), np.full((1, H, W), V), np.zeros((2, 9)),
                     np.full((1, H, W), -1), np.zeros((1, H, W), bool), None, "abc",
                     np.full((1, H, W), 2 ** 40)]))


@SETTINGS
@given(labels=labels_st, tokens=tokens_st, batch=int_like, cfg_scale=floats)
def test_logits_and_log_prob(labels, tokens, batch, cfg_scale):
    def check_logits(lg):
        t = np.asarray(tokens)
        assert lg.shape == (t.shape[0], H * W, V) and np.isfinite(lg).all()

    lg = call(lambda: MODEL.logits(labels, tokens, cfg_scale, batch=batch), check_logits)

    def check_lp(lp):
        t = np.asarray(tokens)
        assert lp.shape == (t.shape[0],) and np.isfinite(lp).all() and (lp <= 1e-9).all()
        if lg is not None and cfg_scale == 1.0:  # the same numbers, summed
            ls = lg.astype(np.float64)
            ls = ls - np.log(np.exp(ls - ls.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
                - ls.max(-1, keepdims=True)
            want = np.take_along_axis(ls, t.reshape(t.shape[0], -1)[..., None], 2)[..., 0]
            np.testing.assert_allclose(lp, want.sum(1), rtol=1e-4, atol=1e-4)

    call(lambda: MODEL.log_prob(labels, tokens, batch=batch), check_lp)


@SETTINGS
@given(image=int_like, row=int_like, col=int_like, token=int_like, chain=int_like,
       action=st.sampled_from(["forward", "commit", "discard", "uniform"]), draw=int_like)
def test_session_calls(image, row, col, token, chain, action, draw):
    s = MODEL.session([0, 1])
    s.prefill()
    P = MODEL.config.cls_token_num
    before = s.slots.copy()

    def run():
        if action == "forward":
            return s.forward(image, row, col, token, chain=chain)
        if action == "commit":
            return s.commit(image, row, col)
        if action == "discard":
            return s.discard(image, row, col)
        return s.uniform(image, row, col, draw=draw)

    def check(r):
        if action == "forward":
            assert r.shape == (1, V) and np.isfinite(r).all()
            assert 0 <= int(chain) < 2 ** 31 and 0 <= int(token) < V
            assert s.slots[int(image), P + int(row) * W + int(col)] == int(chain)
        elif action == "uniform":
            assert 0.0 <= r < 1.0
        else:
            assert 0 <= int(image) < 2 and 0 <= int(row) < H and 0 <= int(col) < W

    if call(run, check) is None and action == "forward":
        np.testing.assert_array_equal(s.slots, before)  # a refused pass changes nothing


logit_rows = st.one_of(
    st.lists(st.floats(-30, 30), min_size=1, max_size=8).map(lambda v: np.array(v, np.float32)),
    st.lists(st.one_of(st.floats(-30, 30), st.sampled_from([math.nan, math.inf, -math.inf])),
             min_size=1, max_size=8).map(lambda v: np.array(v, np.float32)),
    st.sampled_from([np.zeros((0,), np.float32), np.zeros((2, 0), np.float32), "x"]))


@SETTINGS
@given(logits=logit_rows, temperature=floats, top_k=int_like, top_p=floats,
       probs=st.lists(st.one_of(st.floats(0, 1), floats), min_size=0, max_size=6), u=floats)
def test_probs_and_draw(logits, temperature, top_k, top_p, probs, u):
    s = MODEL.session([0])

    def check_probs(p):
        assert p.ndim == 2 and (p >= 0).all() and np.allclose(p.sum(1), 1.0)

    call(lambda: s.probs(logits, temperature, top_k, top_p), check_probs)

    def check_draw(i):
        p = np.asarray(probs, np.float64)
        assert 0 <= i < p.size and p[i] > 0

    call(lambda: s.draw(np.asarray(probs, np.float64), u), check_draw)


@SETTINGS
@given(fields=st.fixed_dictionaries({}, optional={
    "dim": int_like, "n_layer": int_like, "n_head": int_like, "vocab_size": int_like,
    "grid": st.one_of(int_like, st.tuples(int_like, int_like)), "num_classes": int_like,
    "n_kv_head": st.one_of(st.none(), int_like), "cls_token_num": int_like,
    "norm_eps": st.one_of(floats, anything), "rope_base": st.one_of(floats, anything),
    "hidden": st.one_of(st.none(), int_like), "eor": int_like, "eor_token": int_like}))
def test_model_config(fields):
    kw = dict(dim=16, n_layer=1, n_head=2, vocab_size=16, grid=3, num_classes=4)
    kw.update(fields)

    def check(c):
        for k in ("dim", "n_layer", "n_head", "vocab_size", "num_classes", "eor", "eor_token"):
            v = getattr(c, k)
            assert type(v) is int and 0 <= v < 2 ** 31
            if k in kw:
                assert v == kw[k]
        assert math.isfinite(c.rope_base) and c.rope_base > 0
        assert math.isfinite(c.norm_eps) and c.norm_eps > 0
        assert c.eor in (0, 1) and 0 <= c.eor_token < c.vocab_size

    call(lambda: zipar.ModelConfig(**kw), check)


@SETTINGS
@given(window=int_like, max_window=st.one_of(st.none(), int_like), threshold=anything,
       schedule=anything, proxy=anything)
def test_policies(window, max_window, threshold, schedule, proxy):
    def check_zipar(p):
        assert type(p.window) is int and p.window >= 1
        assert p.proxy in ("above", "left", "calibrated") or (
            type(p.proxy) is int and 0 <= p.proxy < 2 ** 31 and p.proxy == proxy)

    call(lambda: zipar.ZipAR(window, schedule=schedule, proxy=proxy), check_zipar)

    def check_adaptive(p):
        assert 0.0 <= p.threshold <= 1.0

    call(lambda: zipar.AdaptiveZipAR(window, max_window=max_window, threshold=threshold),
         check_adaptive)


PROXY_MODEL = zipar.random_model(dim=16, n_layer=1, n_head=2, vocab_size=V, grid=(H, W),
                                 num_classes=K, seed=2)


@SETTINGS
@given(token=st.one_of(ints, anything, st.integers(0, V - 1)), as_const=st.booleans())
def test_row_start_proxy_and_constant_proxies(token, as_const):
    """A token set as row_start_proxy (or given as the proxy itself) is accepted exactly when it
    is an id in [0, V), and is then what every proxy query feeds."""
    PROXY_MODEL.row_start_proxy = None

    def run():
        if as_const:
            pol = zipar.ZipAR(1, proxy=token)
        else:
            PROXY_MODEL.row_start_proxy = token
            pol = zipar.ZipAR(1, proxy="calibrated")
        return PROXY_MODEL.generate([0, 1], policy=pol, trace=True, decode_images=False)

    def check(r):
        assert not isinstance(token, (bool, np.bool_)) and 0 <= int(token) < V
        fed = r.trace[r.trace[:, 4] == zipar.ROLES.index("proxy")][:, 5]
        assert fed.size == 2 * (H - 1) and (fed == int(token)).all()

    call(run, check)


@SETTINGS
@given(n=anything)
def test_set_num_threads(n):
    before = zipar.get_num_threads()
    try:
        def check(_):
            assert zipar.get_num_threads() == n and 1 <= n <= 1024

        call(lambda: zipar.set_num_threads(n), check)
    finally:
        zipar.set_num_threads(before)
