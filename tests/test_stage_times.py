"""zipar.runtime.stage_times: the stage timers of the forward pass (csrc/model.c, zp_timers_*)."""
import numpy as np
import pytest

import zipar
from zipar import ZipAR
from zipar._ext import const, core
from zipar.runtime import STAGES, stage_times


@pytest.fixture(scope="module")
def model():
    # dim 256: every pass is worth a team of threads (ZP_PARALLEL_MIN_WORK)
    return zipar.random_model(dim=256, n_layer=3, n_head=4, vocab_size=300, grid=6,
                              num_classes=10, seed=3)


@pytest.fixture
def two_threads():
    before = zipar.get_num_threads()
    zipar.set_num_threads(2)
    yield
    zipar.set_num_threads(before)


def test_stage_names_match_the_core():
    assert len(STAGES) == const("STAGES")
    assert const("TIMERS") == 2 * const("STAGES") + 4
    seconds, _ = core().timers_read()
    assert seconds.shape == (const("TIMER_THREADS"), const("TIMERS"))


def test_thread0_accounts_for_the_pass(model, two_threads):
    with stage_times() as t:
        res = model.generate([1, 4], policy=ZipAR(2), cfg_scale=2.0)
    assert t.passes == res.stats["forward_passes"] > 0
    assert t.work.shape == t.wait.shape and t.work.shape[1] == len(STAGES)
    assert t.work.shape[0] == 2  # both threads of the team ran stages
    for a in (t.work, t.wait, t.enter):
        assert np.all(a >= 0)
    assert np.all(t.work[:, STAGES.index("qkv")] > 0)  # thread 1 computed columns too
    assert np.all(t.work[:, STAGES.index("head")] > 0)  # and logits
    # thread 0 marks every interval of zp_forward from its start to its end: its timers add up
    # to the engine's forward time, less the binding's share of it
    thread0 = t.work[0].sum() + t.wait[0].sum() + t.enter[0] + t.setup + t.join + t.combine
    fwd = res.stats["forward_seconds"]
    assert 0.5 * fwd <= thread0 <= fwd * 1.01 + 1e-4
    table = t.per_pass()
    assert list(table) == list(STAGES)
    assert all(r["work_max"] >= r["work_mean"] >= 0 for r in table.values())
    assert "gate_up" in str(t) and f"{t.passes} passes" in str(t)


def test_off_outside_the_block_and_bits_unchanged(model, two_threads):
    plain = model.generate([2], policy=ZipAR(2), cfg_scale=2.0, seed=5).tokens
    with stage_times() as t:
        timed = model.generate([2], policy=ZipAR(2), cfg_scale=2.0, seed=5).tokens
    np.testing.assert_array_equal(plain, timed)
    _, passes = core().timers_read()
    assert passes == t.passes
    model.generate([2], policy=ZipAR(2), cfg_scale=2.0, seed=5)
    _, after = core().timers_read()
    assert after == passes  # timers are off after the block


def test_block_that_raises_turns_timers_off(model):
    with pytest.raises(RuntimeError, match="boom"):
        with stage_times():
            raise RuntimeError("boom")
    _, passes = core().timers_read()
    model.generate([3], policy=ZipAR(2))
    assert core().timers_read()[1] == passes


def test_a_new_block_starts_from_zero(model):
    with stage_times() as first:
        model.generate([1], policy=ZipAR(2))
    with stage_times() as second:
        pass
    assert first.passes > 0 and second.passes == 0 and second.work.sum() == 0
