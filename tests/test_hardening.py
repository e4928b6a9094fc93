"""Regressions for issue 12 (hostile files and hostile calls), one test per reported failure,
through the public API. Hostile pickles that used to crash or poison the process are loaded in a
worker process (tests/hostile/worker.py); the rest run here."""

from __future__ import annotations

import json
import math
import os
import re
import struct
import subprocess
import sys
import threading
import time
import zlib

import numpy as np
import pytest

import zipar
from zipar import ZipAR

try:
    from zipar.io import CheckpointError, load_state_dict
except ImportError:  # pragma: no cover - layout before the io/ split
    from zipar.checkpoint import CheckpointError, load_state_dict

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
HOSTILE = os.path.join(HERE, "hostile", "files")
WORKER = os.path.join(HERE, "hostile", "worker.py")


def in_worker(names):
    """Loads hostile files in a fresh process; {name: result}. A crash is reported, not fatal."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.run([sys.executable, WORKER, "corpus",
                           *[os.path.join(HOSTILE, n) for n in names]],
                          capture_output=True, text=True, timeout=300, env=env)
    out = {}
    for line in proc.stdout.splitlines():
        r = json.loads(line)
        if r["event"] == "done":
            out[r["file"]] = r
    for n in names:
        out.setdefault(n, {"outcome": f"crash/stop (status {proc.returncode}) "
                                      f"{proc.stderr[-200:]}", "intact": False})
    return out


@pytest.fixture(scope="module")
def tiny():
    return zipar.random_model(dim=16, n_layer=1, n_head=2, vocab_size=16, grid=3, num_classes=4)


# ============================================================================ the unpickler

BUILD_FILES = ["build_tensor_stride.pt", "build_tensor_shape.pt", "build_tensor_shape_stride.pt",
               "build_tensor_offset.pt", "build_tensor_negative_stride.pt",
               "build_tensor_storage_swap.pt", "build_tensor_dtype_token.pt",
               "build_tensor_dtype_str.pt", "build_parameter.pt", "build_storage_ref_numel.pt"]
POISON_FILES = ["poison_storage_type_dtype.pt", "poison_storage_type_qualname.pt",
                "poison_untyped_storage.pt", "poison_dtype_token.pt", "poison_tensor_class.pt",
                "poison_function_defaults.pt", "poison_function_kwdefaults.pt",
                "poison_function_dict.pt", "poison_torch_size.pt", "poison_ordereddict.pt"]


_worker_results = {}


def worker_result(name):
    """One worker process loads all of BUILD_FILES + POISON_FILES (restarted after a file that
    damaged it); results are cached for the parametrized tests below."""
    if name not in _worker_results:
        todo = [n for n in BUILD_FILES + POISON_FILES if n not in _worker_results]
        while todo:
            got = in_worker(todo)
            _worker_results.update({k: v for k, v in got.items() if "crash/stop" not in
                                    v["outcome"]})
            stopped = [k for k, v in got.items() if "crash/stop" in v["outcome"]]
            if stopped:  # the first file without a result crashed or stopped the worker
                first = next(n for n in todo if n in stopped)
                _worker_results[first] = got[first]
            todo = [n for n in todo if n not in _worker_results]
    return _worker_results[name]


@pytest.mark.parametrize("name", BUILD_FILES)
def test_build_after_bounds_check_refused(name):
    """BUILD setting stride/shape/offset/storage on a tensor after its bounds check: used to
    segfault in as_strided or load out-of-bounds heap bytes."""
    r = worker_result(name)
    assert r["outcome"] == "CheckpointError", r
    assert r["intact"]


@pytest.mark.parametrize("name", POISON_FILES)
def test_allow_list_cannot_be_poisoned(name):
    """BUILD on an allow-listed object (storage type, dtype, tensor class, rebuild function):
    refused, and later legitimate loads in the same process are unaffected."""
    r = worker_result(name)
    assert r["outcome"] == "CheckpointError", r
    assert r["intact"], "a later legitimate load changed or the allow-list was mutated"


def test_tensor_view_validated_against_storage():
    for name in ("oob_offset.pt", "oob_stride.pt", "oob_shape.pt", "v3_dtype_vs_storage.pt",
                 "huge_shape_zero_stride.pt", "huge_declared_storage.pt"):
        with pytest.raises(CheckpointError):
            load_state_dict(os.path.join(HOSTILE, name))


# ============================================================================ loaders

@pytest.mark.parametrize("name,used_to_raise", [
    ("npz_huge_shape.npz", "MemoryError"), ("npz_huge_shape_2d.npz", "MemoryError"),
    ("npz_header_syntax.npz", "tokenize.TokenError"),
    ("npz_unknown_compression.npz", "NotImplementedError"),
    ("npz_corrupt_lzma.npz", "LZMAError"), ("npz_encrypted_flag.npz", "RuntimeError"),
    ("npz_shape_overflow.npz", "OverflowError"), ("npz_structured.npz", "(loaded)"),
    ("bare_huge_shape.npy", "MemoryError")])
def test_npz_failures_are_checkpoint_errors(name, used_to_raise):
    with pytest.raises(CheckpointError):
        load_state_dict(os.path.join(HOSTILE, name))


def test_checkpoint_error_is_value_error():
    assert issubclass(CheckpointError, ValueError)


def test_npz_declared_size_checked_before_allocating():
    import tracemalloc

    tracemalloc.start()
    try:
        with pytest.raises(CheckpointError, match="(?i)byte|size|shape"):
            load_state_dict(os.path.join(HOSTILE, "npz_huge_shape.npz"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 << 20


# ============================================================================ threads

def test_set_num_threads_rejects_bad_counts():
    before = zipar.get_num_threads()
    for bad in (0, -1, 100000, 2 ** 40, -(2 ** 70)):
        with pytest.raises(ValueError, match="1024|thread"):
            zipar.set_num_threads(bad)
    for bad in (1.5, "2", None, True):
        with pytest.raises((TypeError, ValueError)):
            zipar.set_num_threads(bad)
    assert zipar.get_num_threads() == before


def test_thread_count_toggled_during_generation():
    """Another thread flips the thread count 1 <-> 16 while a vocab-16384 model generates: the
    tokens are those of an undisturbed run (they used to overflow the per-thread buffers)."""
    m = zipar.random_model(dim=32, n_layer=1, n_head=2, vocab_size=16384, grid=6, num_classes=8,
                           seed=3)
    labels = list(range(8))
    before = zipar.get_num_threads()
    try:
        zipar.set_num_threads(2)
        want = m.generate(labels, policy=ZipAR(2), cfg_scale=1.0, seed=5,
                          decode_images=False).tokens
        stop = threading.Event()

        def toggle():
            k = 0
            while not stop.is_set():
                zipar.set_num_threads(16 if k % 2 else 1)
                k += 1
                time.sleep(0.0002)

        th = threading.Thread(target=toggle)
        th.start()
        try:
            runs = [m.generate(labels, policy=ZipAR(2), cfg_scale=1.0, seed=5,
                               decode_images=False).tokens for _ in range(4)]
        finally:
            stop.set()
            th.join()
    finally:
        zipar.set_num_threads(before)
    for got in runs:
        np.testing.assert_array_equal(got, want)


# ============================================================================ sizes

@pytest.mark.parametrize("grid", [(65536, 65536), (4096, 4097), 2 ** 31, (1, 2 ** 40)])
def test_huge_grids_name_the_limit(grid):
    with pytest.raises(ValueError, match="(?i)sequence length|seq_len|limit"):
        zipar.random_model(dim=16, n_layer=1, n_head=1, vocab_size=8, grid=grid, num_classes=2)


# ============================================================================ integers into C

class AcceptedHostileCells(Exception):
    pass


class CellsPolicy(zipar.Policy):
    """Returns the hostile cells on the first pass; a second pass means they were accepted."""

    def __init__(self, cells):
        self.cells = cells

    def select(self, state):
        if state.pass_index > 0:
            raise AcceptedHostileCells(self.cells)
        return self.cells


@pytest.mark.parametrize("cells", [[(0, 0, 2 ** 32)], [(2 ** 32, 0, 0)], [(0, 2 ** 32, 0)],
                                   [(0, 0, 0.5)], [(0.0, 0, 0)], [(0, 0, -(2 ** 32))]])
def test_python_policy_cells_range_checked(tiny, cells):
    with pytest.raises((ValueError, TypeError)):
        tiny.generate([0], policy=CellsPolicy(cells), decode_images=False)


def test_raw_session_integers_range_checked(tiny):
    s = tiny.session([0])
    s.prefill()
    for kw in (dict(chain=2 ** 32), dict(chain=-1), dict(chain=1.5)):
        with pytest.raises((ValueError, TypeError)):
            s.forward(0, 0, 0, 1, **kw)
    assert (s.slots[0, tiny.config.cls_token_num:] == -1).all()  # nothing committed
    for args in ((2 ** 32, 0, 0, 1), (0, 0, 0, 2 ** 32), (0, 0, 0, 1.5), (-1, 0, 0, 1),
                 (1, 0, 0, 1)):
        with pytest.raises((ValueError, TypeError)):
            s.forward(*args)
    for bad in ((5, 0, 0), (-1, 0, 0), (0, 7, 0), (0.5, 0, 0)):
        with pytest.raises((ValueError, TypeError)):
            s.commit(*bad)
        with pytest.raises((ValueError, TypeError)):
            s.discard(*bad)
        with pytest.raises((ValueError, TypeError)):
            s.uniform(*bad)


def test_log_prob_label_grid_counts_must_agree(tiny):
    toks = np.zeros((2, 3, 3), np.int64)
    with pytest.raises(ValueError, match="(?i)label"):
        tiny.log_prob([0, 1, 2], toks)
    with pytest.raises(ValueError, match="(?i)label"):
        tiny.logits([0, 1, 2], toks)


def test_nan_and_inf_rejected_where_meaningless(tiny):
    s = tiny.session([0])
    with pytest.raises(ValueError, match="(?i)nan|finite"):
        s.probs(np.full(16, np.nan, np.float32))
    with pytest.raises(ValueError, match="(?i)nan|finite|inf"):
        s.probs(np.array([0.0, np.inf] + [0.0] * 14, np.float32))
    with pytest.raises(ValueError):
        s.draw(np.full(4, np.nan), 0.5)
    with pytest.raises(ValueError):
        s.draw(np.array([0.5, -0.1, 0.6]), 0.5)
    with pytest.raises(ValueError):
        s.draw(np.array([0.5, 0.5]), float("nan"))
    with pytest.raises((ValueError, IndexError)) as e:
        s.uniform(-1, 0, 0)
    assert e.type is ValueError
    with pytest.raises(ValueError):
        s.uniform(0, 0, 0, draw=-1)
    # what is right stays right
    p = s.probs(np.array([0.0, 1.0, -np.inf, 2.0], np.float32))
    assert p.shape == (1, 4) and p[0, 2] == 0 and math.isclose(p.sum(), 1.0)
    assert s.draw(np.array([0.0, 1.0]), 0.3) == 1


@pytest.mark.parametrize("field,value,exc", [
    ("eor_token", 1.5, TypeError), ("eor", True, TypeError), ("eor", 1.0, TypeError),
    ("rope_base", float("inf"), ValueError), ("rope_base", float("nan"), ValueError),
    ("norm_eps", float("nan"), ValueError), ("norm_eps", "1e-5", TypeError),
    ("num_classes", 2 ** 31, ValueError), ("vocab_size", 2 ** 40, ValueError),
    ("dim", 16.0, TypeError)])
def test_model_config_rejects(field, value, exc):
    kw = dict(dim=16, n_layer=1, n_head=2, vocab_size=16, grid=3, num_classes=4)
    kw[field] = value
    with pytest.raises(exc):
        zipar.ModelConfig(**kw)


# ============================================================================ clear errors

@pytest.mark.parametrize("kw", [dict(top_k=2 ** 31), dict(cfg_interval=2 ** 31),
                                dict(top_k=2 ** 64), dict(seed=2 ** 64), dict(seed=-1)])
def test_sampling_overflow_is_value_error(tiny, kw):
    with pytest.raises(ValueError):
        tiny.generate([0], decode_images=False, **kw)


def test_logits_batch_zero_is_clear(tiny):
    toks = np.zeros((1, 3, 3), np.int64)
    for batch in (0, -1):
        with pytest.raises(ValueError, match="batch"):
            tiny.logits([0], toks, batch=batch)
    with pytest.raises(TypeError):
        tiny.logits([0], toks, batch=1.5)


def test_weight_errors_are_clear(tiny):
    w = dict(tiny.weights)
    bad = dict(w)
    bad[7] = bad.pop("norm.weight")
    with pytest.raises((ValueError, TypeError), match="7|key") as e:
        zipar.Model(tiny.config, bad)
    assert "not supported between" not in str(e.value)
    bad = dict(w)
    bad["norm.weight"] = list(map(float, w["norm.weight"]))
    with pytest.raises((ValueError, TypeError)) as e:
        zipar.Model(tiny.config, bad)
    assert "None" not in str(e.value) and "norm.weight" in str(e.value)


# ============================================================================ command line

def cli(*args, timeout=300):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    return subprocess.run([sys.executable, "-m", "zipar", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_cli_help_and_version():
    r = cli("--help")
    assert r.returncode == 0
    assert r.stdout.startswith("usage: zipar"), r.stdout[:80]
    assert "``" not in r.stdout
    r = cli("--version")
    assert r.returncode == 0 and zipar.__version__ in r.stdout
    for sub in ("generate", "convert", "info"):
        r = cli(sub, "--help")
        assert r.returncode == 0 and r.stdout.startswith(f"usage: zipar {sub}"), r.stdout[:80]
        opts = [ln for ln in r.stdout.splitlines() if ln.strip().startswith("--")]
        # every option has a help text (on its line or the next), defaults shown
        for ln in opts:
            assert len(ln.split("  ")) > 1 or ln.strip().startswith("--help"), ln
    r = cli("generate", "--help")
    assert "default" in r.stdout


def test_cli_output_path_checked_before_work(tmp_path):
    t0 = time.monotonic()
    r = cli("generate", "--out", str(tmp_path / "missing_dir" / "x.png"))
    assert r.returncode != 0
    assert "missing_dir" in r.stderr
    assert "passes" not in r.stdout and time.monotonic() - t0 < 20


def test_cli_info_wording():
    r = cli("info")
    assert r.returncode == 0
    assert "1073741824" not in r.stdout


def _png_chunks(path):
    with open(path, "rb") as fh:
        data = fh.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunks.append((kind, data[pos + 8:pos + 8 + n]))
        pos += 12 + n
    return chunks


def test_cli_main_job_png_is_readable(tmp_path):
    out = tmp_path / "samples.png"
    r = cli("generate", "--out", str(out), "--labels", "0", "1")
    assert r.returncode == 0, r.stderr
    assert "1 images" not in r.stdout + r.stderr
    chunks = _png_chunks(out)
    w, h = struct.unpack(">II", chunks[0][1][:8])
    assert w >= 200 and h >= 100, (w, h)  # upscaled, with room for labels
    text = b" ".join(zlib.decompress(d.split(b"\0", 2)[2]) if k == b"zTXt" else d
                     for k, d in chunks if k in (b"tEXt", b"iTXt", b"zTXt")).decode("latin1")
    assert re.search(r"(?i)passes", text) and re.search(r"(?i)seconds", text), text
    assert "raster" in text.lower() and "zipar" in text.lower()


def test_python_limits_match_the_core():
    from zipar import config, runtime
    from zipar._ext import core

    c = core()
    assert config.MAX_SEQ_LEN == c.ZP_MAX_SEQ_LEN
    assert config.MAX_WIDTH == c.ZP_MAX_WIDTH
    assert config.MAX_LAYERS == c.ZP_MAX_LAYERS
    assert runtime.MAX_THREADS == c.ZP_MAX_THREADS
