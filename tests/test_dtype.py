"""Weights stored as float32, bfloat16 or float16 (Model(dtype=), load_llamagen(dtype=)).

- bf16 / f16 engines against the float64 NumPy reference on the same rounded weights;
- tokens bitwise equal across thread counts, per dtype (ZipAR under CFG: passes of many rows);
- conversion and storage rules (matrices in dtype, norms float32, no copy of matching arrays,
  NaN refused), save / load round trips keeping the dtype, memory maps;
- peak memory of loading (in a fresh subprocess, its peak resident set): a >= 200 MB bf16 file
  never holds a float32 copy; a float32 file loaded as bf16 stays under the float32 size.
"""
import contextlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import zipar
from zipar import ZipAR
from zipar.families.llamagen import load_llamagen, read_config
from zipar.io.errors import CheckpointError
from zipar.io.npz import write_npz
from zipar.io.dtypes import bfloat16_to_float32, float32_to_bfloat16
from zipar.io.safetensors import read_safetensors
from zipar.model import Model, convert_weight, is_matrix, random_model
from zipar.reference import ReferenceModel

# where the zipar under test lives (the installed package in CI, the checkout after an in-place
# build): the child process must import that one, not an unbuilt checkout
ZIPAR_HOME = os.path.dirname(os.path.dirname(os.path.abspath(zipar.__file__)))


@pytest.fixture(scope="module")
def base():
    return random_model(dim=128, n_layer=2, n_head=4, vocab_size=384, grid=4, num_classes=10,
                        seed=3)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_engine_matches_reference_on_rounded_weights(base, dtype):
    m = Model(base.config, base.weights, dtype=dtype)
    assert m.dtype == dtype
    ref = ReferenceModel(m.config, m.weights)  # the same rounded weights, in float64
    tokens = np.random.default_rng(0).integers(0, 384, (2, 4, 4))
    for cfg_scale in (1.0, 4.0):
        got = m.logits([1, 7], tokens, cfg_scale=cfg_scale)
        want = ref.logits([1, 7], tokens, cfg_scale=cfg_scale)
        rel = np.abs(got - want).max() / np.abs(want).max()
        assert rel <= 1e-4, (dtype, cfg_scale, rel)
    # and the rounding is real: the float32 model differs by far more than that
    wide = base.logits([1, 7], tokens)
    assert np.abs(wide - m.logits([1, 7], tokens)).max() / np.abs(wide).max() > 1e-3


@contextlib.contextmanager
def kernel_isa(isa):
    """Run the block's products on ``isa`` (skip the test where this CPU lacks it)."""
    try:
        zipar.runtime.set_kernel_isa(isa)
    except ValueError as e:
        pytest.skip(str(e))
    try:
        yield
    finally:
        zipar.runtime.set_kernel_isa(None)


def test_bf16_model_equals_float32_model_of_widened_weights(base):
    """Bitwise on every instruction set this CPU runs but "amx", whose bf16 bits are the tile
    unit's own (test_bf16_on_amx_tiles_within_float32_rounding); each set is forced in turn, so
    the check holds whatever kernel the process was set to."""
    m = Model(base.config, base.weights, dtype="bfloat16")
    widened = Model(base.config, {k: bfloat16_to_float32(v) if v.dtype == np.uint16 else v
                                  for k, v in m.weights.items()})
    tokens = np.arange(16).reshape(1, 4, 4)
    isas = [isa for isa in zipar.build_info()["kernel_isas"] if isa != "amx"]
    assert isas
    for isa in isas:
        with kernel_isa(isa):
            np.testing.assert_array_equal(m.logits([3], tokens, cfg_scale=4.0),
                                          widened.logits([3], tokens, cfg_scale=4.0),
                                          err_msg=f"kernel {isa}")


def zipar_tokens(m, threads, **kw):
    """Tokens of a guided ZipAR(2) run of classes 0..5 with `threads` engine threads."""
    saved = zipar.get_num_threads()
    try:
        zipar.set_num_threads(threads)
        res = m.generate(list(range(6)), policy=ZipAR(2), cfg_scale=4.0, temperature=1.0,
                         decode_images=False, **kw)
        return np.asarray(res.tokens)
    finally:
        zipar.set_num_threads(saved)


def test_bf16_on_amx_tiles_within_float32_rounding(base):
    """AMX (where the CPU has it): activations split exactly into three bf16 parts, so the bf16
    model's logits stay within float32 rounding of the widened float32 model's, and the tokens
    of a guided ZipAR run are the same bits at 1 and 3 threads."""
    m = Model(base.config, base.weights, dtype="bfloat16")
    widened = {k: bfloat16_to_float32(v) if v.dtype == np.uint16 else v
               for k, v in m.weights.items()}
    tokens = np.arange(16).reshape(1, 4, 4)
    want = Model(base.config, widened).logits([3, 5], np.concatenate([tokens, tokens]),
                                              cfg_scale=4.0)
    with kernel_isa("amx"):
        got = m.logits([3, 5], np.concatenate([tokens, tokens]), cfg_scale=4.0)
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
        np.testing.assert_array_equal(zipar_tokens(m, 1, seed=5), zipar_tokens(m, 3, seed=5))


def test_set_kernel_isa_refuses_bad_names():
    with pytest.raises(ValueError, match="unknown instruction set 'avx1024'"):
        zipar.runtime.set_kernel_isa("avx1024")
    with kernel_isa("scalar"):
        assert zipar.runtime.kernel_isa() == "scalar"
    have = zipar.build_info()["kernel_isas"]
    assert zipar.runtime.kernel_isa() in have and "scalar" in have
    assert set(have) <= set(zipar.runtime.KERNEL_ISAS)
    for isa in zipar.runtime.KERNEL_ISAS:  # each listed set can be forced, the others not
        if isa in have:
            with kernel_isa(isa):
                assert zipar.runtime.kernel_isa() == isa
        else:
            with pytest.raises(ValueError, match="this CPU cannot run"):
                zipar.runtime.set_kernel_isa(isa)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_tokens_bitwise_across_thread_counts(base, dtype):
    m = Model(base.config, base.weights, dtype=dtype)
    np.testing.assert_array_equal(zipar_tokens(m, 1, top_k=50, seed=11),
                                  zipar_tokens(m, 2, top_k=50, seed=11))


def test_conversion_rules(base):
    w = base.weights
    q = "layers.0.attention.wqkv.weight"
    assert is_matrix(q) and is_matrix("module.output.weight") and not is_matrix("norm.weight")
    bits = convert_weight(q, w[q], "bfloat16")
    np.testing.assert_array_equal(bits, float32_to_bfloat16(w[q]))
    assert convert_weight(q, bits, "bfloat16") is bits  # already stored so: no copy
    assert convert_weight("norm.weight", w["norm.weight"], "bfloat16").dtype == np.float32
    half = convert_weight(q, w[q], "float16")
    assert half.dtype == np.float16
    np.testing.assert_array_equal(convert_weight(q, half, "float32"), half.astype(np.float32))
    m = Model(base.config, w, dtype="float16")
    assert m.weights[q].dtype == np.float16 and m.weights["norm.weight"].dtype == np.float32
    assert m.weights["cls_embedding.embedding_table.weight"].dtype == np.float32
    with pytest.raises(ValueError, match="dtype"):
        Model(base.config, w, dtype="int8")
    bad = dict(w)
    bad[q] = float32_to_bfloat16(w[q])
    bad[q][0, 0] = 0x7F80  # bf16 +inf
    with pytest.raises(ValueError, match="NaN or inf"):
        Model(base.config, bad, dtype="bfloat16")
    big = dict(w)
    big[q] = w[q].copy()
    big[q][0, 0] = 1e6  # beyond float16
    with pytest.raises(ValueError, match="NaN or inf"):
        Model(base.config, big, dtype="float16")


@pytest.mark.parametrize("ext", ["npz", "safetensors"])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_save_keeps_dtype_and_maps(base, tmp_path, ext, dtype):
    m = Model(base.config, base.weights, dtype=dtype, row_start_proxy=np.int64(383))
    path = tmp_path / f"m.{ext}"
    m.save(path)
    tokens = np.arange(16).reshape(1, 4, 4)
    want = m.logits([2], tokens, cfg_scale=2.0)
    back = load_llamagen(path)  # dtype as stored, and the calibrated proxy
    assert back.dtype == dtype
    assert back.row_start_proxy == 383 and type(back.row_start_proxy) is int
    assert read_config(path) == base.config   # the config alone reads as before
    q = back.weights["layers.1.feed_forward.w2.weight"]
    assert isinstance(q, np.memmap)
    assert q.dtype == m.weights["layers.1.feed_forward.w2.weight"].dtype
    np.testing.assert_array_equal(back.logits([2], tokens, cfg_scale=2.0), want)
    read = load_llamagen(path, mmap=False)
    np.testing.assert_array_equal(read.logits([2], tokens, cfg_scale=2.0), want)
    if ext == "safetensors" and dtype == "bfloat16":  # BF16 tensors, readable as such
        t, _ = read_safetensors(path)
        np.testing.assert_array_equal(t["output.weight"],
                                      bfloat16_to_float32(m.weights["output.weight"]))
    wide = load_llamagen(path, dtype="float32")
    assert wide.dtype == "float32"
    assert np.abs(wide.logits([2], tokens, cfg_scale=2.0) - want).max() == 0


@pytest.mark.parametrize("token,err", [(384, "outside the model's image tokens"),
                                       (-1, "outside the model's image tokens"),
                                       (True, "int token id"), ("7", "int token id"),
                                       (7.0, "int token id")])
def test_stored_row_start_proxy_is_checked(base, tmp_path, token, err):
    config_json = json.dumps(dict(base.config.to_dict(), row_start_proxy=token))
    write_npz(tmp_path / "bad.npz", base.weights, config_json=config_json)
    with pytest.raises(CheckpointError, match=err):
        load_llamagen(tmp_path / "bad.npz")


def test_float32_file_loads_as_bf16_while_reading(base, tmp_path):
    path = tmp_path / "f32.safetensors"
    base.save(path)
    m = load_llamagen(path, dtype="bfloat16")
    assert base.row_start_proxy is None and m.row_start_proxy is None   # none stored
    direct = Model(base.config, base.weights, dtype="bfloat16")
    for k, v in direct.weights.items():
        np.testing.assert_array_equal(m.weights[k], v, err_msg=k)
    assert load_llamagen(path).dtype == "float32"


# ---------------------------------------------------------------- peak memory (subprocess)
_CHILD = textwrap.dedent("""
    import json, resource, sys
    import numpy as np
    from zipar.families.llamagen import load_llamagen
    def peak():
        # VmHWM: this process's peak resident set since exec. (ru_maxrss starts from the
        # parent's size at fork, which is the test process holding the weights it wrote.)
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    before = peak()
    m = load_llamagen(sys.argv[1], dtype=sys.argv[2], mmap=sys.argv[3] == "1")
    loaded = peak()
    m.logits([1], np.zeros((1,) + (m.config.H, m.config.W), np.int64))  # touches every weight
    print(json.dumps({"before": before, "loaded": loaded, "after_pass": peak(),
                      "dtype": m.dtype, "bytes": int(sum(a.nbytes for a in m.weights.values()))}))
""")


def _peak_rss(path, dtype, mmap):
    env = dict(os.environ, PYTHONPATH=ZIPAR_HOME + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", _CHILD, str(path), dtype, "1" if mmap else "0"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def _big_weights(dtype):
    """GPT-B-like model (111M parameters, one tensor at a time never above 50 MB float32)."""
    cfg = zipar.ModelConfig(dim=768, n_layer=12, n_head=12, vocab_size=16384, grid=2,
                            num_classes=10)
    from zipar.model import expected_weight_shapes
    rng = np.random.default_rng(0)
    block = (0.02 * rng.standard_normal(1 << 16)).astype(np.float32)
    w = {}
    for name, shape in expected_weight_shapes(cfg).items():
        n = int(np.prod(shape))
        a = np.resize(block, n).reshape(shape) if is_matrix(name) else np.ones(shape, np.float32)
        w[name] = float32_to_bfloat16(a) if dtype == "bfloat16" and is_matrix(name) else a
    return cfg, w


@pytest.mark.parametrize("mmap", [True, False])
def test_loading_bf16_file_never_holds_float32(tmp_path, mmap):
    cfg, w = _big_weights("bfloat16")
    path = tmp_path / "b.safetensors"
    from zipar.families.llamagen import save_safetensors
    save_safetensors(path, cfg, w)
    bf16_bytes = sum(a.nbytes for a in w.values())
    del w
    assert bf16_bytes >= 200e6
    r = _peak_rss(path, "bfloat16", mmap)
    assert r["dtype"] == "bfloat16" and r["bytes"] == bf16_bytes
    grown = r["after_pass"] - r["before"]
    # a float32 copy of the weights would add 2x the file; allow the file + 25% (+ one pass)
    assert grown < 1.25 * bf16_bytes + 64e6, (grown, bf16_bytes)


def test_float32_file_as_bf16_stays_under_float32_size(tmp_path):
    cfg, w = _big_weights("float32")
    path = tmp_path / "f.safetensors"
    from zipar.families.llamagen import save_safetensors
    save_safetensors(path, cfg, w)
    f32_bytes = sum(a.nbytes for a in w.values())
    del w
    r = _peak_rss(path, "bfloat16", True)
    assert r["dtype"] == "bfloat16" and r["bytes"] < 0.51 * f32_bytes
    grown = r["loaded"] - r["before"]
    assert grown < f32_bytes, (grown, f32_bytes)  # bf16 size plus about one float32 tensor
    assert grown < 0.5 * f32_bytes + 120e6, (grown, f32_bytes)


def test_cli_convert_dtype(tmp_path, capsys):
    from zipar.__main__ import main

    fix = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "c2i_tiny.pt")
    out = tmp_path / "m.safetensors"
    assert main(["convert", fix, str(out), "--n-head", "4", "--grid", "2",
                 "--dtype", "bfloat16"]) == 0
    back = load_llamagen(out)
    assert back.dtype == "bfloat16"
    t, _ = read_safetensors(out, keep_bfloat16=True)
    assert t["output.weight"].dtype == np.uint16 and t["norm.weight"].dtype == np.float32
    direct = load_llamagen(fix, n_head=4, grid=2, dtype="bfloat16")
    tokens = np.arange(4).reshape(1, 2, 2)
    np.testing.assert_array_equal(back.logits([1], tokens), direct.logits([1], tokens))
