"""Tests for zipar.checkpoint: reading LlamaGen checkpoints without PyTorch, safely.

The fixtures in tests/fixtures/ were written by tests/make_fixtures.py with torch.save;
expected.json holds torch's own view of every tensor (dtype, shape, SHA-256 of the bytes, sum),
so these tests run without torch. Tests needing torch or zipar.model skip cleanly.
"""

import hashlib
import json
import os
import pickle
import struct
import tracemalloc
import zipfile

import numpy as np
import pytest

from zipar import checkpoint as ck
from zipar.checkpoint import CheckpointError
from zipar.config import LLAMAGEN_SIZES, ModelConfig, llamagen_hidden

FIX = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
with open(os.path.join(FIX, "expected.json")) as _f:
    EXPECTED = json.load(_f)

LLAMAGEN_NAMES = {"cls_embedding.embedding_table.weight", "tok_embeddings.weight",
                  "norm.weight", "output.weight"} | {
    f"layers.{i}.{s}" for i in range(2) for s in (
        "attention_norm.weight", "attention.wqkv.weight", "attention.wo.weight",
        "ffn_norm.weight", "feed_forward.w1.weight", "feed_forward.w3.weight",
        "feed_forward.w2.weight")}


def fixture(name):
    return os.path.join(FIX, name)


def root(arr):
    """The object owning an array's memory."""
    while isinstance(arr, np.ndarray) and arr.base is not None:
        arr = arr.base
    return arr


def digest(arr):
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


# ============================================================================ hand-made archives
# A minimal writer of torch.save-style archives (protocol-2 pickle opcodes assembled by hand),
# so corrupt and hostile variants can be made without torch.

def p_str(s):
    b = s.encode("utf-8")
    return b"X" + struct.pack("<I", len(b)) + b


def p_int(i):
    return b"J" + struct.pack("<i", i)


def p_tuple(items):
    return b"(" + b"".join(items) + b"t"


def p_global(module, name):
    return b"c" + f"{module}\n{name}\n".encode()


def p_tensor(storage_type, key, numel, offset, shape, stride):
    pid = p_tuple([p_str("storage"), p_global("torch", storage_type), p_str(key), p_str("cpu"),
                   p_int(numel)]) + b"Q"
    args = p_tuple([pid, p_int(offset), p_tuple([p_int(n) for n in shape]),
                    p_tuple([p_int(s) for s in stride]), b"\x89",
                    p_global("collections", "OrderedDict") + b")R"])
    return p_global("torch._utils", "_rebuild_tensor_v2") + args + b"R"


def p_dict(items):
    return b"}(" + b"".join(p_str(k) + v for k, v in items) + b"u"


def p_pickle(body):
    return b"\x80\x02" + body + b"."


def write_archive(path, pkl, storages, byteorder="little", prefix="archive", extra=()):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{prefix}/data.pkl", pkl)
        zf.writestr(f"{prefix}/byteorder", byteorder)
        for key, data in storages.items():
            zf.writestr(f"{prefix}/data/{key}", data)
        zf.writestr(f"{prefix}/version", "3\n")
        for name, data in extra:
            zf.writestr(name, data)
    return path


def simple_archive(path, arrays, **kw):
    """{name: float32 array} -> archive, one storage per array."""
    items, storages = [], {}
    for i, (name, arr) in enumerate(arrays.items()):
        arr = np.ascontiguousarray(arr, np.float32)
        stride = [int(s // 4) for s in arr.strides]
        items.append((name, p_tensor("FloatStorage", str(i), arr.size, 0, arr.shape, stride)))
        storages[str(i)] = arr.tobytes()
    return write_archive(path, p_pickle(p_dict(items)), storages, **kw)


def rewrite(src, dst, replace):
    """Copy a zip, replacing entries (name -> bytes) or dropping them (name -> None)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            if info.filename in replace:
                if replace[info.filename] is not None:
                    zout.writestr(info.filename, replace[info.filename])
            else:
                zout.writestr(info.filename, zin.read(info))
    return dst


def archive_prefix(path):
    with zipfile.ZipFile(path) as zf:
        return next(n for n in zf.namelist() if n.endswith("/data.pkl"))[: -len("data.pkl")]


# ============================================================================ fixtures vs torch

NP_OF_TORCH = {"bfloat16": "uint16", "bool": "bool"}

LOADABLE = sorted(k for k in EXPECTED)


@pytest.mark.parametrize("name", LOADABLE)
def test_fixture_matches_torch(name):
    got = ck.load_state_dict(fixture(name), keep_bfloat16=True)
    want = EXPECTED[name]
    assert set(got) == set(want)
    for key, rec in want.items():
        arr = got[key]
        assert arr.dtype == np.dtype(NP_OF_TORCH.get(rec["dtype"], rec["dtype"])), key
        assert list(arr.shape) == rec["shape"], key
        assert digest(arr) == rec["sha256"], key
        assert arr.flags.c_contiguous


@pytest.mark.parametrize("name", [n for n in LOADABLE if "bf16" in n or "misc" in n])
def test_bfloat16_widened_exactly(name):
    wide = ck.load_state_dict(fixture(name))
    for key, rec in EXPECTED[name].items():
        if rec["dtype"] != "bfloat16":
            continue
        arr = wide[key]
        assert arr.dtype == np.float32
        bits = arr.view(np.uint32)
        assert not np.any(bits & 0xFFFF)
        assert digest((bits >> 16).astype(np.uint16)) == rec["sha256"]
        assert np.isclose(arr.astype(np.float64).sum(), rec["sum"], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["c2i_tiny.pt", "misc_dtypes.pt", "c2i_tiny.safetensors",
                                  "c2i_module_prefix.pt"])
def test_mmap_gives_same_arrays(name):
    if not os.path.exists(fixture(name)):
        pytest.skip("fixture not generated")
    plain = ck.load_state_dict(fixture(name))
    mapped = ck.load_state_dict(fixture(name), mmap=True)
    assert set(plain) == set(mapped)
    for k in plain:
        np.testing.assert_array_equal(plain[k], mapped[k])
    assert all(a.flags.writeable for a in plain.values())


def test_sums_match_torch():
    got = ck.load_state_dict(fixture("t2i_tiny_f16.pt"))
    for key, rec in EXPECTED["t2i_tiny_f16.pt"].items():
        assert got[key].dtype == np.float16
        assert np.isclose(got[key].astype(np.float64).sum(), rec["sum"], rtol=1e-9, atol=1e-9)


def test_misc_layouts():
    sd = ck.load_state_dict(fixture("misc_dtypes.pt"))
    assert sd["scalar"].shape == () and sd["scalar"] == np.float32(3.25)
    assert sd["empty"].shape == (0, 4)
    np.testing.assert_array_equal(sd["transposed"], sd["f32"].T)
    np.testing.assert_array_equal(sd["row_slice"], sd["f32"][2:5])
    np.testing.assert_array_equal(sd["col_slice"], sd["f32"][:, 1:4])
    assert np.shares_memory(sd["row_slice"], sd["f32"])  # contiguous views stay views
    assert not np.shares_memory(sd["transposed"], sd["f32"])  # strided ones are copied
    assert root(sd["shared_a"]) is root(sd["shared_b"])  # one storage read once
    assert sd["expanded"].shape == (4, 3) and (sd["expanded"] == sd["expanded"][0]).all()
    assert "steps" not in sd and "name" not in sd
    assert sd["u16"].dtype == np.uint16 and sd["u16"][-1] == 52500
    assert sd["c64"].dtype == np.complex64 and sd["bool"].dtype == np.bool_


# ============================================================================ unwrapping

def test_prefixes_and_nesting_stripped():
    plain = set(EXPECTED["c2i_orig_mod.pt"])
    assert plain == LLAMAGEN_NAMES
    for name in ("c2i_module_prefix.pt", "c2i_orig_mod.pt", "c2i_bf16_fsdp.pt", "c2i_tiny.pt"):
        assert set(ck.load_state_dict(fixture(name))) == LLAMAGEN_NAMES, name


def test_module_prefix_views():
    sd = ck.load_state_dict(fixture("c2i_module_prefix.pt"))
    assert "freqs_cis" not in sd
    assert np.shares_memory(sd["output.weight"], sd["tok_embeddings.weight"])  # tied weights
    assert root(sd["norm.weight"]) is root(sd["layers.0.ffn_norm.weight"])  # one storage
    assert sd["layers.0.attention.wo.weight"].flags.c_contiguous


def test_unwrap_false_returns_whole_tree():
    tree = ck.read_torch_checkpoint(fixture("c2i_orig_mod.pt"), unwrap=False)
    assert tree["steps"] == 7 and tree["note"] == "compiled"
    arr = tree["state_dict"]["model"]["_orig_mod.module.norm.weight"]
    assert isinstance(arr, np.ndarray) and arr.shape == (32,)


def test_unwrap_state_dict_rules():
    a = np.zeros(2, np.float32)
    got = ck.unwrap_state_dict({"model": {"module": {"module._orig_mod.module.w": a,
                                                     "freqs_cis": a, "steps": 3}}})
    assert got == {"w": a}
    assert set(ck.unwrap_state_dict({"w": a, "model": 5})) == {"w"}  # "model" not a dict
    with pytest.raises(CheckpointError, match="collide"):
        ck.unwrap_state_dict({"module.w": a, "w": a})
    with pytest.raises(CheckpointError, match="no tensors"):
        ck.unwrap_state_dict({"model": {"steps": 1}})
    with pytest.raises(CheckpointError, match="not a state dict"):
        ck.unwrap_state_dict([a])


def test_select_reads_only_selected(tmp_path):
    path = simple_archive(tmp_path / "s.pt", {"a": np.ones(3), "b": np.ones(4)})
    broken = rewrite(path, tmp_path / "b.pt", {"archive/data/1": None})  # b's storage gone
    assert set(ck.read_torch_checkpoint(broken, select=lambda k: k == "a")) == {"a"}
    with pytest.raises(CheckpointError, match="missing"):
        ck.read_torch_checkpoint(broken)


# ============================================================================ hostile pickles

@pytest.mark.parametrize("name,global_name,marker", [
    ("malicious_exec.pt", "builtins.exec", "zipar_pwned_exec"),
    ("malicious_system.pt", ".system", "zipar_pwned_system"),
])
def test_malicious_fixture_refused(tmp_path, monkeypatch, name, global_name, marker):
    monkeypatch.chdir(tmp_path)
    for load in (ck.load_state_dict, ck.read_torch_checkpoint, ck.load_llamagen,
                 ck.read_vq_state_dict):
        with pytest.raises(CheckpointError, match=global_name.replace(".", r"\.")) as e:
            load(fixture(name))
        assert "allow-list" in str(e.value)
    assert not (tmp_path / marker).exists()


def test_malicious_fixture_is_armed(tmp_path, monkeypatch):
    # The exec fixture really would run code under a plain unpickler (pure Python, harmless).
    monkeypatch.chdir(tmp_path)
    with zipfile.ZipFile(fixture("malicious_exec.pt")) as zf:
        pickle.loads(zf.read("archive/data.pkl"))
    assert (tmp_path / "zipar_pwned_exec").exists()


MARKER = "zipar_marker"
EVIL = [
    ("os", "system", f"touch {MARKER}"),
    ("posix", "system", f"touch {MARKER}"),
    ("builtins", "eval", f"open('{MARKER}', 'w')"),
    ("builtins", "exec", f"open('{MARKER}', 'w').close()"),
    ("builtins", "__import__", "os"),
    ("builtins", "getattr", "x"),
    ("subprocess", "getoutput", f"touch {MARKER}"),
    ("numpy.core.multiarray", "_reconstruct", "x"),
    ("numpy", "load", MARKER),
    ("argparse", "Namespace", "x"),
    ("copyreg", "_reconstructor", "x"),
    ("torch", "load", MARKER),
    ("torch.serialization", "load", MARKER),
    ("_codecs", "encode", "x"),
]


def _evil_opcodes(module, name, arg):
    """The same call spelled with each global-loading opcode."""
    glob = p_global(module, name) + p_str(arg) + b"\x85R"
    inst = b"(" + p_str(arg) + b"i" + f"{module}\n{name}\n".encode()
    obj = b"(" + p_global(module, name) + p_str(arg) + b"o"
    stack = b"\x80\x04" + p_str(module) + p_str(name) + b"\x93" + p_str(arg) + b"\x85R."
    return {"GLOBAL": p_pickle(glob), "INST": p_pickle(inst), "OBJ": p_pickle(obj),
            "STACK_GLOBAL": stack,
            # hidden after a legitimate tensor, inside {"model": {...}}
            "nested": p_pickle(p_dict([("model", p_dict([
                ("w", p_tensor("FloatStorage", "0", 2, 0, (2,), (1,))), ("evil", glob)]))]))}


@pytest.mark.parametrize("module,name,arg", EVIL)
def test_evil_globals_refused(tmp_path, monkeypatch, module, name, arg):
    monkeypatch.chdir(tmp_path)
    for opcode, pkl in _evil_opcodes(module, name, arg).items():
        path = write_archive(tmp_path / f"evil_{opcode}.pt", pkl, {"0": b"\0" * 8})
        with pytest.raises(CheckpointError, match=rf"{module}\.{name}"):
            ck.load_state_dict(path)
    assert not (tmp_path / MARKER).exists()


def test_allowed_functions_cannot_be_misused(tmp_path):
    t = p_tensor("FloatStorage", "0", 2, 0, (2,), (1,))
    cases = {
        # _rebuild_from_type_v2 may only wrap a tensor rebuild, with a tensor class
        "wrapper func": p_global("torch._tensor", "_rebuild_from_type_v2") + p_tuple([
            p_global("collections", "OrderedDict"), p_global("torch", "Tensor"), b")", b"}"])
        + b"R",
        "wrapper type": p_global("torch._tensor", "_rebuild_from_type_v2") + p_tuple([
            p_global("torch._utils", "_rebuild_tensor_v2"), p_global("torch", "FloatStorage"),
            b")", b"}"]) + b"R",
        # storage types and tensor classes are data, not callables
        "call storage": p_global("torch", "FloatStorage") + b")R",
        "call class": p_global("torch", "Tensor") + b")R",
        "parameter of non-tensor": p_global("torch._utils", "_rebuild_parameter")
        + p_tuple([p_int(3), b"\x89", b"}"]) + b"R",
        "unsupported dtype": p_global("torch", "float8_e4m3fn"),
        "quantized": p_global("torch", "QInt8Storage"),
    }
    for what, body in cases.items():
        path = write_archive(tmp_path / "m.pt", p_pickle(p_dict([("w", body), ("t", t)])),
                             {"0": b"\0" * 8})
        with pytest.raises(CheckpointError):
            ck.load_state_dict(path)


def test_fsdp_attribute_state_decoded(tmp_path):
    # _rebuild_from_type_v2 state holding torch.Size / torch.device values (FSDP attributes)
    t = p_tensor("FloatStorage", "0", 2, 0, (2,), (1,))
    state = (b"}(" + p_str("_shapes") + p_tuple([p_global("torch", "Size") + p_tuple([
        p_tuple([p_int(2)])]) + b"R"]) + p_str("_device") + p_global("torch", "device")
        + p_tuple([p_str("cuda"), p_int(0)]) + b"R" + b"u")
    body = p_global("torch._tensor", "_rebuild_from_type_v2") + p_tuple([
        p_global("torch._utils", "_rebuild_tensor_v2"),
        p_global("torch.nn.parameter", "Parameter"), t[len(p_global("torch._utils",
                                                                      "_rebuild_tensor_v2")):-1],
        state]) + b"R"
    path = write_archive(tmp_path / "f.pt", p_pickle(p_dict([("w", body)])),
                         {"0": np.float32([1, 2]).tobytes()})
    np.testing.assert_array_equal(ck.load_state_dict(path)["w"], [1, 2])
    bad = p_global("torch", "Size") + p_tuple([p_tuple([p_str("x")])]) + b"R"
    path = write_archive(tmp_path / "g.pt", p_pickle(p_dict([("w", t), ("s", bad)])),
                         {"0": b"\0" * 8})
    with pytest.raises(CheckpointError, match="torch.Size"):
        ck.load_state_dict(path)


@pytest.mark.parametrize("pid,msg", [
    (p_tuple([p_str("storage"), p_global("torch", "FloatStorage"), p_str("../../etc/passwd"),
              p_str("cpu"), p_int(2)]), "storage key"),
    (p_tuple([p_str("storage"), p_global("torch", "FloatStorage"), p_str("0"), p_str("cpu"),
              p_int(-1)]), "storage size"),
    (p_tuple([p_str("module"), p_str("x")]), "persistent id"),
    (p_str("0"), "persistent id"),
])
def test_bad_persistent_ids(tmp_path, pid, msg):
    pkl = p_pickle(p_dict([("w", pid + b"Q")]))
    path = write_archive(tmp_path / "p.pt", pkl, {"0": b"\0" * 8})
    with pytest.raises(CheckpointError, match=msg):
        ck.load_state_dict(path)


def test_bare_and_legacy_pickles_never_unpickled(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bare = tmp_path / "bare.pt"
    bare.write_bytes(p_pickle(p_global("os", "system") + p_str(f"touch {MARKER}") + b"\x85R"))
    with pytest.raises(CheckpointError, match="bare pickle"):
        ck.load_state_dict(bare)
    legacy = tmp_path / "legacy.pt"
    legacy.write_bytes(ck._LEGACY_TORCH_MAGIC + b"\x2e")
    for load in (ck.load_state_dict, ck.read_torch_checkpoint):
        with pytest.raises(CheckpointError, match=r"legacy.*torch >= 1\.6"):
            load(legacy)
    assert not (tmp_path / MARKER).exists()


# ============================================================================ corrupt archives

@pytest.mark.parametrize("keep", [0.5, 0.99, 200])
def test_truncated_archive(tmp_path, keep):
    data = open(fixture("c2i_tiny.pt"), "rb").read()
    n = int(len(data) * keep) if keep < 1 else keep
    path = tmp_path / "cut.pt"
    path.write_bytes(data[:n])
    with pytest.raises(CheckpointError, match="truncated"):
        ck.load_state_dict(path)
    with pytest.raises(CheckpointError, match="truncated"):
        ck.read_torch_checkpoint(path)


def test_corrupt_data_pkl(tmp_path):
    src = fixture("c2i_tiny.pt")
    pkl = archive_prefix(src) + "data.pkl"
    for garbage in (b"\x80\x02}(garbage", b"", b"\x80\x02}q\x00(X\x05\x00\x00\x00", b"\xff" * 64):
        path = rewrite(src, tmp_path / "c.pt", {pkl: garbage})
        with pytest.raises(CheckpointError, match="corrupt data.pkl"):
            ck.load_state_dict(path)


def test_missing_data_pkl(tmp_path):
    src = fixture("c2i_tiny.pt")
    path = rewrite(src, tmp_path / "n.pt", {archive_prefix(src) + "data.pkl": None})
    with pytest.raises(CheckpointError, match="data.pkl"):
        ck.read_torch_checkpoint(path)
    with pytest.raises(CheckpointError, match="neither"):
        ck.load_state_dict(path)


def test_missing_storage(tmp_path):
    src = fixture("c2i_tiny.pt")
    path = rewrite(src, tmp_path / "m.pt", {archive_prefix(src) + "data/3": None})
    with pytest.raises(CheckpointError, match=r"storage record .*data/3.* is missing"):
        ck.load_state_dict(path)


@pytest.mark.parametrize("delta", [-4, -1, 4])
def test_storage_wrong_size(tmp_path, delta):
    src = fixture("c2i_tiny.pt")
    name = archive_prefix(src) + "data/0"
    with zipfile.ZipFile(src) as zf:
        data = zf.read(name)
    data = data[:delta] if delta < 0 else data + b"\0" * delta
    path = rewrite(src, tmp_path / "s.pt", {name: data})
    with pytest.raises(CheckpointError, match="holds .* bytes but data.pkl declares"):
        ck.load_state_dict(path)


def test_tensor_larger_than_storage(tmp_path):
    for numel, offset, shape, stride in [(6, 0, (2, 4), (4, 1)), (6, 3, (4,), (1,)),
                                         (6, 0, (3, 2), (1, 4))]:
        pkl = p_pickle(p_dict([("w", p_tensor("FloatStorage", "0", numel, offset, shape,
                                              stride))]))
        path = write_archive(tmp_path / "t.pt", pkl, {"0": b"\0" * 4 * numel})
        with pytest.raises(CheckpointError, match="needs"):
            ck.load_state_dict(path)


def test_huge_expansion_refused(tmp_path):
    pkl = p_pickle(p_dict([("w", p_tensor("FloatStorage", "0", 1, 0, (1 << 15, 1 << 15),
                                          (0, 0)))]))
    path = write_archive(tmp_path / "x.pt", pkl, {"0": b"\0" * 4})
    with pytest.raises(CheckpointError, match="overlapping strides"):
        ck.load_state_dict(path)


def test_crc_error_detected(tmp_path):
    path = simple_archive(tmp_path / "a.pt", {"w": np.arange(64, dtype=np.float32)})
    data = bytearray(path.read_bytes())
    at = data.find(np.arange(64, dtype=np.float32).tobytes())
    data[at + 17] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="CRC"):
        ck.load_state_dict(path)


@pytest.mark.parametrize("content,msg", [
    (b"", "unrecognised"),
    (b"\x00\x01\x02\x03garbage-bytes-here", "unrecognised"),
    (b"GGUF\x03\x00\x00\x00" + b"\0" * 32, "unrecognised"),
])
def test_wrong_magic(tmp_path, content, msg):
    path = tmp_path / "w.bin"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=msg):
        ck.load_state_dict(path)


def test_other_zip_archives_refused(tmp_path):
    path = tmp_path / "o.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("hello.txt", "hi")
    with pytest.raises(CheckpointError, match="neither"):
        ck.load_state_dict(path)
    src = fixture("c2i_tiny.pt")
    script = rewrite(src, tmp_path / "ts.pt", {})
    with zipfile.ZipFile(script, "a") as zf:
        zf.writestr(archive_prefix(src) + "constants.pkl", b"\x80\x02).")
    with pytest.raises(CheckpointError, match="TorchScript"):
        ck.load_state_dict(script)


def test_missing_file():
    with pytest.raises(CheckpointError, match="cannot open"):
        ck.load_state_dict("/nonexistent/zipar/x.pt")


def test_big_endian_archive(tmp_path):
    src = fixture("c2i_tiny.pt")
    prefix = archive_prefix(src)
    replace = {prefix + "byteorder": b"big"}
    with zipfile.ZipFile(src) as zf:
        for n in zf.namelist():
            if n.startswith(prefix + "data/"):  # all float32 in this fixture
                replace[n] = np.frombuffer(zf.read(n), "<f4").astype(">f4").tobytes()
    path = rewrite(src, tmp_path / "be.pt", replace)
    want = ck.load_state_dict(src)
    got = ck.load_state_dict(path)
    for k in want:
        assert got[k].dtype == np.float32 and got[k].dtype.isnative
        np.testing.assert_array_equal(got[k], want[k])
    bad = rewrite(src, tmp_path / "bo.pt", {prefix + "byteorder": b"middle"})
    with pytest.raises(CheckpointError, match="byteorder"):
        ck.load_state_dict(bad)


# ============================================================================ memory

def _peak(fn):
    tracemalloc.start()
    try:
        out = fn()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_peak_memory_near_one_copy(tmp_path):
    mib = 1 << 20
    n = 4 * mib  # float32 elements per storage: 16 MiB each, 64 MiB in all
    arrays = {f"w{i}": np.full(n, i, np.float32) for i in range(4)}
    path = simple_archive(tmp_path / "big.pt", arrays)
    del arrays
    out, peak = _peak(lambda: ck.load_state_dict(path))
    total = sum(a.nbytes for a in out.values())
    assert total == 64 * mib
    assert peak < total + 8 * mib, f"peak {peak / mib:.1f} MiB for {total / mib:.0f} MiB"
    del out

    # bfloat16 widened to float32: the float32 result plus about one raw storage
    items, storages = [], {}
    for i in range(4):
        items.append((f"w{i}", p_tensor("BFloat16Storage", str(i), n, 0, (n,), (1,))))
        storages[str(i)] = np.full(n, 0x3F80 + i, np.uint16).tobytes()
    path = write_archive(tmp_path / "bf.pt", p_pickle(p_dict(items)), storages)
    del storages
    out, peak = _peak(lambda: ck.load_state_dict(path))
    total = sum(a.nbytes for a in out.values())
    assert total == 64 * mib and out["w0"][0] == 1.0
    assert peak < total + 8 * mib + 8 * mib, f"peak {peak / mib:.1f} MiB"


# ============================================================================ safetensors & npz

def _tiny_config():
    return ModelConfig(dim=64, n_layer=2, n_head=4, vocab_size=100, grid=4, num_classes=10)


@pytest.mark.parametrize("saver,suffix", [(ck.save_npz, ".npz"),
                                          (ck.save_safetensors, ".safetensors")])
def test_round_trip_with_config(tmp_path, saver, suffix):
    sd = ck.load_state_dict(fixture("c2i_tiny.pt"))
    sd["some_int64_buffer"] = np.arange(5, dtype=np.int64)
    sd["u16"] = np.arange(3, dtype=np.uint16)
    before = {k: v.copy() for k, v in sd.items()}
    path = tmp_path / ("m" + suffix)
    saver(path, _tiny_config(), sd)
    for k in sd:  # inputs untouched
        np.testing.assert_array_equal(sd[k], before[k])
    got = ck.load_state_dict(path)
    assert set(got) == set(sd)
    for k in sd:
        assert got[k].dtype == sd[k].dtype
        np.testing.assert_array_equal(got[k], sd[k])
    assert ck.read_config(path) == _tiny_config()
    saver(path, None, sd)
    assert ck.read_config(path) is None
    assert ck.read_config(fixture("c2i_tiny.pt")) is None


def test_safetensors_interop_with_official_library(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    sd = {"a": np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32),
          "b": np.arange(7, dtype=np.int64), "c": np.ones((2, 2), np.float16),
          "empty": np.zeros((0, 3), np.float32), "s": np.array(2.5)}
    ck.save_safetensors(tmp_path / "ours.safetensors", _tiny_config(), sd)
    theirs = st.load_file(str(tmp_path / "ours.safetensors"))
    for k in sd:
        np.testing.assert_array_equal(theirs[k], sd[k])
    st.save_file(sd, str(tmp_path / "theirs.safetensors"), metadata={"x": "y"})
    ours, meta = ck.read_safetensors(tmp_path / "theirs.safetensors")
    assert meta == {"x": "y"}
    for k in sd:
        assert ours[k].dtype == sd[k].dtype
        np.testing.assert_array_equal(ours[k], sd[k])


def _st_file(path, header, data=b"", raw_header=None):
    blob = raw_header if raw_header is not None else json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return path


def test_safetensors_bf16_by_hand(tmp_path):
    bits = np.array([0x3F80, 0xC000, 0x7F80, 0x0001], np.uint16)
    path = _st_file(tmp_path / "b.safetensors",
                    {"x": {"dtype": "BF16", "shape": [2, 2], "data_offsets": [0, 8]}},
                    bits.tobytes())
    got = ck.load_state_dict(path)["x"]
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got.ravel()[:3], [1.0, -2.0, np.inf])
    np.testing.assert_array_equal(ck.load_state_dict(path, keep_bfloat16=True)["x"].ravel(),
                                  bits)
    mapped = ck.load_state_dict(path, mmap=True, keep_bfloat16=True)["x"]
    assert not mapped.flags.writeable


F32 = lambda shape, offs: {"dtype": "F32", "shape": shape, "data_offsets": offs}  # noqa: E731


@pytest.mark.parametrize("header,data,msg", [
    ({"x": F32([2], [0, 8])}, b"\0" * 4, "truncated"),
    ({"x": F32([3], [0, 8])}, b"\0" * 12, "needs 12 bytes"),
    ({"x": F32([2], [8, 0])}, b"\0" * 8, "bad data_offsets"),
    ({"x": F32([2], [0, 8]), "y": F32([2], [4, 12])}, b"\0" * 12, "overlap"),
    ({"x": {"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 2]}}, b"\0" * 2,
     "unsupported dtype"),
    ({"x": F32([-2], [0, 8])}, b"\0" * 8, "bad shape"),
    ({"x": F32([2.0], [0, 8])}, b"\0" * 8, "bad shape"),
    ({"x": {"dtype": "F32", "shape": [2]}}, b"\0" * 8, "bad safetensors entry"),
    ({"__metadata__": {"a": 1}, "x": F32([2], [0, 8])}, b"\0" * 8, "__metadata__"),
    ([1, 2], b"", "not a JSON object"),
    ({"x": F32([2], [0, 8])}, b"\0" * 7, "truncated"),
])
def test_safetensors_corrupt_header(tmp_path, header, data, msg):
    path = _st_file(tmp_path / "c.safetensors", header, data)
    with pytest.raises(CheckpointError, match=msg):
        ck.load_state_dict(path)


def test_safetensors_bad_header_bytes(tmp_path):
    path = _st_file(tmp_path / "d.safetensors", None,
                    raw_header=b'{"x":' + json.dumps(F32([1], [0, 4])).encode()
                    + b',"x":' + json.dumps(F32([1], [0, 4])).encode() + b"}",
                    data=b"\0" * 4)
    with pytest.raises(CheckpointError, match="duplicate"):
        ck.load_state_dict(path)
    path = _st_file(tmp_path / "j.safetensors", None, raw_header=b'{"x": [1, ', data=b"\0" * 4)
    with pytest.raises(CheckpointError, match="corrupt safetensors header"):
        ck.load_state_dict(path)
    path = tmp_path / "l.safetensors"
    path.write_bytes(struct.pack("<Q", 1 << 40) + b'{"x": 1}')
    with pytest.raises(CheckpointError, match="header length"):
        ck.load_state_dict(path)


def test_npz_with_pickled_objects_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "o.npz"
    np.savez(path, w=np.ones(2), obj=np.array([{"a": 1}], dtype=object))
    with pytest.raises(CheckpointError, match="npz"):
        ck.load_state_dict(path)


# ============================================================================ config inference

def fake_gpt(n_layer, n_head, dim, *, vocab=16384, num_classes=1000, n_kv_head=None,
             caption_dim=0):
    """Shapes only: every entry is a broadcast view of one float32 zero (no memory)."""
    zero = np.float32(0)

    def t(*shape):
        return np.broadcast_to(zero, shape)

    hd, hidden = dim // n_head, llamagen_hidden(dim)
    n_kv_head = n_kv_head or n_head
    sd = {"tok_embeddings.weight": t(vocab, dim), "norm.weight": t(dim),
          "output.weight": t(vocab, dim)}
    if caption_dim:
        sd["cls_embedding.cap_proj.fc1.weight"] = t(dim, caption_dim)
        sd["cls_embedding.cap_proj.fc2.weight"] = t(dim, dim)
        sd["cls_embedding.uncond_embedding"] = t(120, caption_dim)
    else:
        sd["cls_embedding.embedding_table.weight"] = t(num_classes + 1, dim)
    for i in range(n_layer):
        p = f"layers.{i}."
        sd.update({p + "attention_norm.weight": t(dim), p + "ffn_norm.weight": t(dim),
                   p + "attention.wqkv.weight": t((n_head + 2 * n_kv_head) * hd, dim),
                   p + "attention.wo.weight": t(dim, dim),
                   p + "feed_forward.w1.weight": t(hidden, dim),
                   p + "feed_forward.w3.weight": t(hidden, dim),
                   p + "feed_forward.w2.weight": t(dim, hidden)})
    return sd


SPEC_HIDDEN = {"GPT-B": 2048, "GPT-L": 2816, "GPT-XL": 3584, "GPT-XXL": 4096, "GPT-3B": 8704}


@pytest.mark.parametrize("size", sorted(LLAMAGEN_SIZES))
def test_infer_each_llamagen_size(size):
    n_layer, n_head, dim = LLAMAGEN_SIZES[size]
    cfg = ck.infer_llamagen_config(fake_gpt(n_layer, n_head, dim), grid=24)
    assert (cfg.n_layer, cfg.n_head, cfg.dim) == (n_layer, n_head, dim)
    assert cfg.n_kv_head == n_head and cfg.vocab_size == 16384 and cfg.num_classes == 1000
    assert cfg.grid == (24, 24) and cfg.cls_token_num == 1 and cfg.caption_dim == 0
    assert cfg.hidden == llamagen_hidden(dim)
    if size in SPEC_HIDDEN:
        assert cfg.hidden == SPEC_HIDDEN[size]
    if size == "GPT-3B":
        assert cfg.head_dim == 100


def test_infer_t2i_and_defaults():
    cfg = ck.infer_llamagen_config(fake_gpt(36, 20, 1280, caption_dim=2048))
    assert cfg.caption_dim == 2048 and cfg.cls_token_num == 120 and cfg.num_classes == 1
    assert cfg.grid == (16, 16)
    with pytest.raises(CheckpointError, match="no class table"):
        ck.infer_llamagen_config(fake_gpt(36, 20, 1280, caption_dim=2048), num_classes=1000)


def test_infer_gqa_override_and_errors():
    sd = fake_gpt(3, 8, 256, vocab=50, num_classes=7, n_kv_head=2)
    with pytest.raises(CheckpointError, match="pass n_head="):
        ck.infer_llamagen_config(sd)
    cfg = ck.infer_llamagen_config(sd, n_head=8, grid=(4, 6), num_classes=7)
    assert (cfg.n_kv_head, cfg.vocab_size, cfg.num_classes, cfg.grid) == (2, 50, 7, (4, 6))
    with pytest.raises(CheckpointError, match="num_classes is 7"):
        ck.infer_llamagen_config(sd, n_head=8, num_classes=8)
    # head count and kv-head count trade off: with 16 heads of 16 the same rows mean 4 kv heads
    assert ck.infer_llamagen_config(sd, n_head=16).n_kv_head == 4
    with pytest.raises(CheckpointError, match="not divisible"):
        ck.infer_llamagen_config(sd, n_head=10)
    odd = dict(sd, **{"layers.0.attention.wqkv.weight": np.broadcast_to(np.float32(0),
                                                                        (100, 256))})
    with pytest.raises(CheckpointError, match="wqkv"):
        ck.infer_llamagen_config(odd, n_head=8)
    broken = dict(sd)
    del broken["layers.1.attention.wo.weight"], broken["layers.1.attention_norm.weight"]
    broken = {k: v for k, v in broken.items() if not k.startswith("layers.1.")}
    with pytest.raises(CheckpointError, match=r"layers \[1\] are missing"):
        ck.infer_llamagen_config(broken, n_head=8)
    bad = dict(sd, **{"layers.2.feed_forward.w2.weight": np.broadcast_to(np.float32(0), (3, 3))})
    with pytest.raises(CheckpointError, match="feed_forward.w2"):
        ck.infer_llamagen_config(bad, n_head=8)
    with pytest.raises(CheckpointError, match="tok_embeddings"):
        ck.infer_llamagen_config({"x": np.zeros(2)})


def test_infer_on_fixtures():
    c2i = ck.infer_llamagen_config(ck.load_state_dict(fixture("c2i_tiny.pt")), n_head=4)
    assert (c2i.dim, c2i.n_layer, c2i.n_head, c2i.n_kv_head, c2i.vocab_size, c2i.num_classes,
            c2i.hidden) == (64, 2, 4, 4, 100, 10, 256)
    gqa = ck.infer_llamagen_config(ck.load_state_dict(fixture("c2i_module_prefix.pt")),
                                   n_head=4)
    assert gqa.n_kv_head == 2
    t2i = ck.infer_llamagen_config(ck.load_state_dict(fixture("t2i_tiny_f16.pt")), n_head=4)
    assert (t2i.caption_dim, t2i.cls_token_num, t2i.num_classes) == (2048, 120, 1)


# ============================================================================ VQ

def test_read_vq_state_dict():
    sd = ck.read_vq_state_dict(fixture("vq_tiny.pt"))
    want = {k for k in EXPECTED["vq_tiny.pt"] if k.startswith(ck.VQ_DECODER_PREFIXES)}
    assert set(sd) == want
    assert not any(k.startswith(("encoder.", "quant_conv.")) for k in sd)
    assert sd["quantize.embedding.weight"].shape == (1024, 8)
    for k in want:
        assert digest(sd[k]) == EXPECTED["vq_tiny.pt"][k]["sha256"]
    with pytest.raises(CheckpointError, match="not a VQ tokenizer"):
        ck.read_vq_state_dict(fixture("c2i_tiny.pt"))


def test_vq_fixture_decodes():
    vq = pytest.importorskip("zipar.vq")
    dec = vq.VQDecoder(ck.read_vq_state_dict(fixture("vq_tiny.pt")))
    pixels = dec.decode(np.arange(4).reshape(1, 2, 2))
    assert pixels.shape == (1, 32, 32, 3) and pixels.dtype == np.uint8


# ============================================================================ load_llamagen

def _model_module():
    try:
        import zipar.model as model
    except ImportError as e:  # not written or not built yet
        pytest.skip(f"zipar.model not available: {e}")
    return model


def test_load_llamagen_matches_direct_model(tmp_path):
    model = _model_module()
    path = fixture("c2i_tiny.pt")
    sd = ck.load_state_dict(path)
    cfg = ck.infer_llamagen_config(sd, n_head=4, grid=3)
    direct = model.Model(cfg, {k: v.copy() for k, v in sd.items()})
    loaded = ck.load_llamagen(path, n_head=4, grid=3)
    assert loaded.config == cfg
    labels = np.array([3, 9])
    tokens = np.random.default_rng(0).integers(0, 100, size=(2, 3, 3))
    for cfg_scale in (1.0, 4.0):
        want = direct.logits(labels, tokens, cfg_scale=cfg_scale)
        np.testing.assert_array_equal(loaded.logits(labels, tokens, cfg_scale=cfg_scale), want)
    npz = tmp_path / "m.npz"
    ck.save_npz(npz, cfg, sd)  # the config travels with the weights
    np.testing.assert_array_equal(ck.load_llamagen(npz).logits(labels, tokens),
                                  direct.logits(labels, tokens))
    sf = tmp_path / "m.safetensors"
    ck.save_safetensors(sf, cfg, sd)
    np.testing.assert_array_equal(ck.load_llamagen(sf).logits(labels, tokens),
                                  direct.logits(labels, tokens))


@pytest.mark.parametrize("name,dtype", [("c2i_bf16_fsdp.pt", "float32"),
                                        ("c2i_bf16_fsdp.pt", "bfloat16"),
                                        ("c2i_module_prefix.pt", "float16"),
                                        ("c2i_orig_mod.pt", "float32")])
def test_load_llamagen_layouts(name, dtype):
    model = _model_module()
    sd = ck.load_state_dict(fixture(name))
    cfg = ck.infer_llamagen_config(sd, n_head=4, grid=2)
    direct = model.Model(cfg, sd, dtype=dtype)  # the Model's conversion rule, all at once
    loaded = ck.load_llamagen(fixture(name), n_head=4, grid=2, dtype=dtype)  # while reading
    assert loaded.dtype == dtype
    tokens = np.arange(8).reshape(2, 2, 2)
    np.testing.assert_array_equal(loaded.logits([1, 2], tokens), direct.logits([1, 2], tokens))


def test_load_llamagen_skips_kv_cache_buffers(tmp_path):
    model = _model_module()
    sd = ck.load_state_dict(fixture("c2i_tiny.pt"))
    cfg = ck.infer_llamagen_config(sd, n_head=4, grid=2)
    extra = dict(sd, **{"layers.0.attention.kv_cache.k_cache": np.zeros((1, 4, 5, 16), np.float32),
                        "causal_mask": np.ones((5, 5), np.float32)})
    ck.save_npz(tmp_path / "k.npz", cfg, extra)
    tokens = np.arange(4).reshape(1, 2, 2)
    np.testing.assert_array_equal(ck.load_llamagen(tmp_path / "k.npz").logits([1], tokens),
                                  model.Model(cfg, sd).logits([1], tokens))


def test_load_llamagen_t2i():
    model = _model_module()
    path = fixture("t2i_tiny_f16.pt")
    loaded = ck.load_llamagen(path, n_head=4, grid=2)
    assert loaded.config.caption_dim == 2048 and loaded.config.cls_token_num == 120
    direct = model.Model(loaded.config, ck.load_state_dict(path))
    caps = np.random.default_rng(1).standard_normal((1, 120, 2048)).astype(np.float32)
    tokens = np.arange(4).reshape(1, 2, 2)
    np.testing.assert_array_equal(loaded.logits(tokens=tokens, captions=caps, cfg_scale=2.0),
                                  direct.logits(tokens=tokens, captions=caps, cfg_scale=2.0))


def test_load_llamagen_errors():
    with pytest.raises(ValueError, match="dtype"):
        ck.load_llamagen(fixture("c2i_tiny.pt"), dtype="int8")
    with pytest.raises(CheckpointError, match="pass n_head="):
        ck.load_llamagen(fixture("c2i_tiny.pt"))  # (2 layers, dim 64) is no LlamaGen size


def test_weight_conversion():
    sd = ck.load_state_dict(fixture("c2i_bf16_fsdp.pt"), keep_bfloat16=True)
    bits = {k: v.copy() for k, v in sd.items()}
    out = ck._convert_weights(dict(sd), "bfloat16")
    for k in bits:  # stored bfloat16 bits pass through unchanged
        np.testing.assert_array_equal(out[k], bits[k])
    wide = ck._convert_weights(ck.load_state_dict(fixture("c2i_bf16_fsdp.pt")), "bfloat16")
    for k in bits:  # float32 -> bfloat16 rounding is exact on widened bfloat16
        np.testing.assert_array_equal(wide[k], bits[k])
    half = ck._convert_weights(ck.load_state_dict(fixture("t2i_tiny_f16.pt")), "float32")
    assert all(v.dtype == np.float32 for v in half.values())
    x = np.array([1.0, 1.00390625, 1.01171875, -3.0e38, np.inf, np.nan], np.float32)
    r = ck.bfloat16_to_float32(ck.float32_to_bfloat16(x))
    np.testing.assert_array_equal(r[:2], [1.0, 1.0])  # tie rounds to even
    assert r[2] == np.float32(1.015625) and np.isinf(r[4]) and np.isnan(r[5])


# ============================================================================ torch cross-checks

def test_fixtures_match_torch_load():
    torch = pytest.importorskip("torch")
    for name in ("c2i_tiny.pt", "misc_dtypes.pt", "c2i_bf16_fsdp.pt", "t2i_tiny_f16.pt"):
        ref = torch.load(fixture(name), weights_only=True, map_location="cpu")
        ref = ref.get("model", ref)
        got = ck.load_state_dict(fixture(name))
        for k, v in ref.items():
            if isinstance(v, torch.Tensor):
                want = v.float() if v.dtype == torch.bfloat16 else v
                if v.dtype == torch.uint16:
                    want = v.to(torch.int32)
                np.testing.assert_array_equal(got[k], want.detach().numpy(), err_msg=k)


def test_random_layouts_against_torch(tmp_path):
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    dtypes = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64,
              torch.int32, torch.int8, torch.uint8, torch.bool]
    for trial in range(20):
        sd, base = {}, {}
        for i in range(6):
            dt = dtypes[rng.integers(len(dtypes))]
            shape = tuple(int(n) for n in rng.integers(1, 6, size=rng.integers(1, 4)))
            t = (torch.randn(*shape, generator=g) * 50).to(dt)
            if rng.random() < 0.3 and t.dim() >= 2:
                t = t.transpose(0, t.dim() - 1)
            if rng.random() < 0.3 and t.shape[0] > 1:
                t = t[1:]
            if rng.random() < 0.2:
                t = t.flatten()[::2]
            sd[f"t{i}"] = t
            base[f"t{i}"] = t
        if rng.random() < 0.5:
            sd["shared"] = sd["t0"].flatten()[:1] if sd["t0"].is_contiguous() else sd["t0"]
        path = tmp_path / f"r{trial}.pt"
        torch.save({"model": {"module." + k: v for k, v in sd.items()}}, path)
        got = ck.load_state_dict(path)
        for k, v in sd.items():
            want = v.float() if v.dtype == torch.bfloat16 else v
            np.testing.assert_array_equal(got[k], want.contiguous().numpy(), err_msg=k)


def test_fsdp_style_attributes_with_torch(tmp_path):
    torch = pytest.importorskip("torch")
    p = torch.nn.Parameter(torch.arange(6.0).reshape(2, 3).bfloat16())
    p._shapes, p._device, p._fqns = (torch.Size([2, 3]),), torch.device("cpu"), ["a.b"]
    torch.save({"module.w": p}, tmp_path / "fsdp.pt")
    np.testing.assert_array_equal(ck.load_state_dict(tmp_path / "fsdp.pt")["w"],
                                  np.arange(6.0, dtype=np.float32).reshape(2, 3))


def test_compressed_records(tmp_path):
    # torch stores records uncompressed; an archive re-zipped with deflate must still load.
    src = fixture("misc_dtypes.pt")
    dst = tmp_path / "deflated.pt"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info))
    want = ck.load_state_dict(src)
    for mmap in (False, True):
        got = ck.load_state_dict(dst, mmap=mmap)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k])
