"""The one contract between Python and the C core: defaults, constants, layouts, statistics."""

import os
import subprocess
import sys

import numpy as np
import pytest

import zipar
from zipar import _ext
from zipar.reference import SLOT_COMMITTED, SLOT_MASKED, SLOT_UNWRITTEN
from zipar.sampling import Sampling, is_guided

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def core():
    return _ext.core()


def test_sampling_defaults_are_the_cores():
    c = core().sampling_default()
    d = Sampling().to_dict()
    assert set(c) == set(d)
    for k, v in c.items():
        assert np.float32(d[k]) == np.float32(v), k
    # Model.generate's keyword defaults are Sampling's
    import inspect

    sig = inspect.signature(zipar.Model.generate).parameters
    for k, v in d.items():
        assert sig[k].default == v, k


def test_guidance_rule_matches_the_core_in_float32():
    assert Sampling(cfg_scale=1.0).guided is False
    assert Sampling(cfg_scale=4.0).guided and Sampling(cfg_scale=0.5).guided
    assert not is_guided(1.0 + 1e-12)          # 1 in float32, as zp_sampling holds it
    m = zipar.random_model(dim=32, n_layer=1, n_head=2, vocab_size=16, grid=3)
    a = m.generate([1], cfg_scale=1.0 + 1e-12, seed=2, temperature=0.0)
    b = m.generate([1], cfg_scale=1.0, seed=2, temperature=0.0)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    s = m.session([1], cfg_scale=1.0 + 1e-12)
    assert s.guided is False


def test_constants_come_from_the_core():
    c = core()
    for i, name in enumerate(zipar.ROLES):
        assert getattr(c, "ZP_ROLE_" + name.upper()) == i
    assert (SLOT_UNWRITTEN, SLOT_MASKED, SLOT_COMMITTED) == (
        c.ZP_SLOT_UNWRITTEN, c.ZP_SLOT_MASKED, c.ZP_SLOT_COMMITTED)
    assert c.ZP_QUERY_FIELDS == 6 and c.ZP_CELL_FIELDS == 3 and c.ZP_TRACE_FIELDS == 6
    assert zipar.Raster().c_kwargs(5) == {"kind": c.ZP_POLICY_RASTER}
    z = zipar.ZipAR(2, schedule="paper", proxy="left").c_kwargs(5)
    assert z == {"kind": c.ZP_POLICY_ZIPAR, "window": 2, "schedule": c.ZP_SCHEDULE_PAPER,
                 "proxy": c.ZP_PROXY_LEFT}
    assert len({c.ZP_PROXY_ABOVE, c.ZP_PROXY_LEFT, c.ZP_PROXY_CONST}) == 3
    assert c.ZP_PROXY_ABOVE == 0   # a Session given no proxy feeds the published code's
    # a constant is ZP_PROXY_CONST with the token in zp_policy.proxy_token; "calibrated" is the
    # model's token, resolved here (plus the core's offset of image token 0, families)
    assert zipar.ZipAR(2, proxy=7).c_kwargs(5, n_tokens=8) == {
        "kind": c.ZP_POLICY_ZIPAR, "window": 2, "schedule": c.ZP_SCHEDULE_EAGER,
        "proxy": c.ZP_PROXY_CONST, "proxy_token": 7}
    kw = zipar.AdaptiveZipAR(2, proxy="calibrated").c_kwargs(5, row_start_proxy=3,
                                                             token_offset=100)
    assert (kw["proxy"], kw["proxy_token"]) == (c.ZP_PROXY_CONST, 103)


def test_adaptive_hands_its_min_window_to_the_field_c_reads():
    c = core()
    kw = zipar.AdaptiveZipAR(3, max_window=4, threshold=0.5).c_kwargs(6)
    assert kw == {"kind": c.ZP_POLICY_ADAPTIVE, "min_window": 3, "max_window": 4,
                  "threshold": 0.5, "schedule": c.ZP_SCHEDULE_EAGER, "proxy": c.ZP_PROXY_ABOVE}
    assert "window" not in kw   # the ZIPAR-only field is left 0, which C ignores for ADAPTIVE


def test_binding_takes_keywords_not_tuples():
    m = zipar.random_model(dim=32, n_layer=1, n_head=2, vocab_size=16, grid=3)
    cond, unc, mask = m.prefix([0])
    with pytest.raises(TypeError):   # the old positional sampling tuple
        core().Session(m._core, 1, cond, unc, mask, None, (1.0, -1, 1.0, 0, 1.0, 0))
    with pytest.raises(TypeError):
        core().Session(m._core, 1, cond, unc, mask, None, cfg_scal=1.0)
    s = core().Session(m._core, 1, cond, prefix_uncond=unc, cfg_scale=1.0, kind=0)
    s.run()
    assert s.done and s.stats["forward_passes"] == 9
    with pytest.raises(ValueError, match="window"):   # ZIPAR reads window: 0 is refused
        core().Session(m._core, 1, cond, unc, cfg_scale=1.0, kind=core().ZP_POLICY_ZIPAR)


def test_the_core_checks_the_proxy_itself():
    """The binding hands proxy / proxy_token to zp_session_new unchecked: the core refuses an
    unknown proxy kind and a constant outside the image tokens [0, vocab) with a message."""
    c = core()
    m = zipar.random_model(dim=32, n_layer=1, n_head=2, vocab_size=16, grid=3)
    cond, unc, mask = m.prefix([0])
    kw = dict(cfg_scale=1.0, kind=c.ZP_POLICY_ZIPAR, window=1)
    for token in (-1, 16, 2 ** 31 - 1):
        with pytest.raises(ValueError, match=rf"proxy_token {token} outside the image tokens "
                                             r"\[0, 16\)"):
            c.Session(m._core, 1, cond, unc, proxy=c.ZP_PROXY_CONST, proxy_token=token, **kw)
    with pytest.raises(ValueError, match="unknown proxy 3"):
        c.Session(m._core, 1, cond, unc, proxy=3, **kw)
    with pytest.raises(ValueError, match="out of range"):   # not even a C int
        c.Session(m._core, 1, cond, unc, proxy=c.ZP_PROXY_CONST, proxy_token=2 ** 40, **kw)
    s = c.Session(m._core, 1, cond, unc, proxy=c.ZP_PROXY_CONST, proxy_token=15, trace=True,
                  **kw)
    s.run()
    tr = s.trace
    fed = tr[tr[:, 4] == c.ZP_ROLE_PROXY][:, 5]
    assert fed.size == 2 and (fed == 15).all()   # rows 1 and 2 start early (window 1)
    # a kind that does not read proxy_token ignores it, like the other fields it does not read
    c.Session(m._core, 1, cond, unc, cfg_scale=1.0, kind=c.ZP_POLICY_RASTER,
              proxy_token=-5).run()


def test_queries_array_layout():
    """The (n, 6) int32 queries are read in place as zp_query: columns in field order."""
    m = zipar.random_model(dim=32, n_layer=1, n_head=2, vocab_size=16, grid=3)
    s = m.session([0, 1])
    lg = s.prefill()
    assert lg.shape == (2, 16)
    # feed cell (0, 0) of image 1 only, tentatively in chain 7: its slot must show chain 7
    s.forward([1], [0], [0], [5], chain=7, want_logits=False)
    pos = m.config.cell_pos(0, 0)
    assert s.slots[1, pos] == 7 and s.slots[0, pos] == SLOT_UNWRITTEN
    with pytest.raises(ValueError, match=r"\(n, 6\)"):
        s._cache.forward(np.zeros((1, 5), np.int32), 1.0)


@pytest.mark.parametrize("policy", [zipar.ZipAR(2), zipar.AdaptiveZipAR(2, threshold=0.3)])
def test_per_image_pass_counts_are_a_session_statistic(policy):
    m = zipar.random_model(dim=32, n_layer=1, n_head=2, vocab_size=16, grid=(4, 5), seed=1)
    r = m.generate([0, 1, 2], policy=policy, seed=4, trace=True)
    tr = r.trace
    image = tr[:, 1].astype(np.int64)
    last = np.zeros(3, np.int64)
    np.maximum.at(last, image, tr[:, 0].astype(np.int64) + 1)
    np.testing.assert_array_equal(r.stats["image_passes"], last)
    np.testing.assert_array_equal(r.stats["image_queries"], np.bincount(image, minlength=3))
    assert r.stats["image_passes"].max() == r.stats["forward_passes"]


def test_import_needs_no_build_and_no_environment():
    """zipar, zipar.io and the tokenizer import without loading the extension or touching the
    environment; the first model loads it."""
    code = ("import os, sys\n"
            "import zipar, zipar.io, zipar.io.png, zipar.families.vq16\n"
            "from zipar.fmnist.tokenizer import GreyTokenizer\n"
            "assert 'zipar._core' not in sys.modules, 'extension loaded at import'\n"
            "assert 'OMP_WAIT_POLICY' not in os.environ\n"
            "zipar.random_model(dim=16, n_layer=1, n_head=2, vocab_size=8, grid=2)\n"
            "assert 'zipar._core' in sys.modules\n"
            "assert os.environ['OMP_WAIT_POLICY'] == 'PASSIVE'\n")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(zipar.__file__)))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd="/")


def test_sweep_is_callable_without_importing_it():
    code = ("import zipar\n"
            "res = zipar.sweep({'random': {'dim': 16, 'n_layer': 1, 'n_head': 2, "
            "'vocab_size': 8, 'grid': 2}}, {'window': [1, 2]}, n_samples=2, progress=False)\n"
            "assert len(res) == 2, res\n"
            "assert zipar.sweep.expand_grid({'window': [1]})\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(zipar.__file__)))
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd="/")


def test_old_import_paths_are_the_new_modules():
    import zipar.builtin
    import zipar.checkpoint
    import zipar.eval
    import zipar.fmnist.builtin
    import zipar.fmnist.eval
    import zipar.fmnist.tokenizer
    import zipar.io.png
    import zipar.png
    import zipar.reference.sjd
    import zipar.sjd
    import zipar.tokenizer
    import zipar.vq
    from zipar.families import llamagen, vq16

    assert zipar.vq is vq16 and zipar.png is zipar.io.png and zipar.sjd is zipar.reference.sjd
    assert zipar.eval is zipar.fmnist.eval and zipar.builtin is zipar.fmnist.builtin
    assert zipar.tokenizer is zipar.fmnist.tokenizer
    assert zipar.checkpoint.load_llamagen is llamagen.load_llamagen
    for name in zipar.checkpoint.__all__:
        assert hasattr(zipar.checkpoint, name), name
    for name in zipar.__all__:
        assert hasattr(zipar, name), name
