# ruff: noqa: E501  (the corpus is a table: one file per line reads better than wrapped)
"""Write the hostile-file corpus in tests/hostile/files/ (small, deterministic, no torch needed).

    python3 tests/hostile/make_hostile.py

Each file attacks one loader path: crafted torch.save archives (BUILD opcodes mutating tensor
descriptions after their bounds check or the allow-listed storage / dtype / function objects,
out-of-bounds views, huge declared shapes, dtype/storage size mismatches, keys and values that
are not tensors, pickle opcodes that reach outside the allow-list), malformed .npz/.npy members
(header-declared shapes far beyond the file, broken header literals, unsupported or corrupt
compression) and malformed .safetensors headers. manifest.json lists every file with the attack
it makes. Every one of them must be refused with zipar's CheckpointError (a ValueError), the
process must stay intact (later legitimate loads give the same arrays) and no code may run.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zipfile

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "files")

# ============================================================================ pickle assembly
# Protocol-2 opcodes written by hand so that any sequence, valid for pickle but hostile to the
# loader, can be made.


def p_str(s):
    b = s.encode("utf-8")
    return b"X" + struct.pack("<I", len(b)) + b


def p_int(i):
    if -(2 ** 31) <= i < 2 ** 31:
        return b"J" + struct.pack("<i", i)
    n = (i.bit_length() + 8) // 8
    return b"\x8a" + bytes([n]) + i.to_bytes(n, "little", signed=True)


def p_float(x):
    return b"G" + struct.pack(">d", x)


def p_tuple(items):
    return b"(" + b"".join(items) + b"t"


def p_list(items):
    return b"(l" + b"".join(items) + b"e" if items else b"]"


def p_global(module, name):
    return b"c" + f"{module}\n{name}\n".encode()


def p_dict(items):
    return b"}(" + b"".join(k + v for k, v in items) + b"u"


def p_sdict(items):
    items = items.items() if isinstance(items, dict) else items
    return p_dict([(p_str(k), v) for k, v in items])


def p_build(obj, slotstate=None, dictstate=None):
    """obj, then BUILD with state (dictstate or None, slotstate)."""
    state = p_tuple([p_sdict(dictstate) if dictstate is not None else b"N",
                     p_sdict(slotstate) if slotstate is not None else b"N"])
    return obj + state + b"b"


def p_pid(storage_type, key, numel):
    return p_tuple([p_str("storage"), p_global("torch", storage_type), p_str(key), p_str("cpu"),
                    p_int(numel)]) + b"Q"


def p_tensor(storage_type, key, numel, offset, shape, stride, pid=None):
    pid = pid if pid is not None else p_pid(storage_type, key, numel)
    args = p_tuple([pid, p_int(offset), p_tuple([p_int(n) for n in shape]),
                    p_tuple([p_int(s) for s in stride]), b"\x89",
                    p_global("collections", "OrderedDict") + b")R"])
    return p_global("torch._utils", "_rebuild_tensor_v2") + args + b"R"


def p_pickle(body):
    return b"\x80\x02" + body + b"."


def _entry(name, compression=zipfile.ZIP_STORED):
    info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))  # fixed: reproducible bytes
    info.compress_type = compression
    return info


def archive(pkl, storages, prefix="archive"):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(_entry(f"{prefix}/data.pkl"), pkl)
        zf.writestr(_entry(f"{prefix}/byteorder"), "little")
        for key, data in storages.items():
            zf.writestr(_entry(f"{prefix}/data/{key}"), data)
        zf.writestr(_entry(f"{prefix}/version"), "3\n")
    return buf.getvalue()


FLOATS4 = struct.pack("<4f", 1.0, 2.0, 3.0, 4.0)


def good_tensor(name="w", key="0"):
    return (p_str(name), p_tensor("FloatStorage", key, 4, 0, (4,), (1,)))


def state_dict_pt(items, storages=None):
    return archive(p_pickle(p_dict(items)), storages if storages is not None else {"0": FLOATS4})


def pt_files():
    f = {}
    t = p_tensor("FloatStorage", "0", 4, 0, (4,), (1,))
    # --- BUILD on what the unpickler created: the tensor description after its bounds check
    f["build_tensor_stride"] = ("BUILD sets stride (1000000,) on a checked (4,) tensor",
                                state_dict_pt([(p_str("w"), p_build(t, {"stride": (p_tuple([p_int(1000000)]))}))]))
    f["build_tensor_shape"] = ("BUILD sets shape (1000000,) on a checked (4,) tensor",
                               state_dict_pt([(p_str("w"), p_build(t, {"shape": p_tuple([p_int(1000000)])}))]))
    f["build_tensor_shape_stride"] = (
        "BUILD sets shape (64, 64) and stride (4096, 64): reads far past the storage",
        state_dict_pt([(p_str("w"), p_build(t, {"shape": p_tuple([p_int(64), p_int(64)]),
                                                "stride": p_tuple([p_int(4096), p_int(64)])}))]))
    f["build_tensor_offset"] = ("BUILD sets offset 10**9",
                                state_dict_pt([(p_str("w"), p_build(t, {"offset": p_int(10 ** 9)}))]))
    f["build_tensor_negative_stride"] = ("BUILD sets stride (-1,)",
                                         state_dict_pt([(p_str("w"), p_build(t, {"stride": p_tuple([p_int(-1)])}))]))
    f["build_tensor_dtype_str"] = ("BUILD sets dtype to a string",
                                   state_dict_pt([(p_str("w"), p_build(t, {"dtype": p_str("float64")}))]))
    f["build_tensor_dtype_token"] = (
        "BUILD sets dtype to torch.float64 (8-byte elements over a 16-byte storage)",
        state_dict_pt([(p_str("w"), p_build(t, {"dtype": p_global("torch", "float64")}))]))
    f["build_tensor_dict_state"] = ("BUILD with a dict state on a tensor description",
                                    state_dict_pt([(p_str("w"), p_build(t, dictstate={"shape": p_tuple([p_int(99)])}))]))
    # storage swap: tensor checked against a 1024-element storage, then pointed at a 1-element one
    small = p_pid("FloatStorage", "1", 1) + b"p7\n0"  # memo 7 = the small storage ref
    big = p_tensor("FloatStorage", "0", 1024, 0, (1024,), (1,))
    f["build_tensor_storage_swap"] = (
        "BUILD points a checked 1024-element tensor at a 1-element storage",
        archive(p_pickle(small + p_dict([(p_str("w"), p_build(big, {"storage": b"g7\n"}))])),
                {"0": b"\0" * 4096, "1": b"\0" * 4}))
    f["build_storage_ref_numel"] = (
        "BUILD grows a storage reference's numel after the first tensor's check",
        archive(p_pickle(p_pid("FloatStorage", "0", 4) + b"p3\n"
                         + p_build(b"g3\n", {"numel": p_int(1 << 20)}) + b"0"
                         + p_dict([(p_str("w"), p_tensor("FloatStorage", "0", 1 << 20, 0, (1 << 20,), (1,)))])),
                {"0": FLOATS4}))
    f["build_parameter"] = (
        "BUILD on the result of _rebuild_parameter (the tensor description itself)",
        state_dict_pt([(p_str("w"), p_build(p_global("torch._utils", "_rebuild_parameter")
                                             + p_tuple([t]) + b"R", {"stride": p_tuple([p_int(10 ** 6)])}))]))
    # --- BUILD on allow-listed globals: must not poison later loads in the process
    for name, glob, state in [
        ("poison_storage_type_dtype", ("torch", "FloatStorage"), {"dtype": p_str("x")}),
        ("poison_storage_type_qualname", ("torch", "FloatStorage"), {"qualname": p_str("os.system")}),
        ("poison_untyped_storage", ("torch", "UntypedStorage"), {"dtype": p_int(0)}),
        ("poison_dtype_token", ("torch", "float32"), {"dtype": p_str("x")}),
        ("poison_tensor_class", ("torch.nn", "Parameter"), {"qualname": p_int(1)}),
        ("poison_function_defaults", ("torch._utils", "_rebuild_tensor_v2"),
         {"__defaults__": p_tuple([p_int(1), p_int(2), p_int(3)])}),
        ("poison_function_kwdefaults", ("torch._utils", "_rebuild_tensor_v3"),
         {"__kwdefaults__": p_sdict([("metadata", p_int(1))])}),
        ("poison_torch_size", ("torch", "Size"), {"__defaults__": p_tuple([p_str("xyz")])}),
        ("poison_ordereddict", ("collections", "OrderedDict"), {"fromkeys": p_int(1)}),
    ]:
        f[name] = (f"BUILD on the allow-listed {glob[0]}.{glob[1]} sets {sorted(state)}",
                   state_dict_pt([(p_str("x"), p_build(p_global(*glob), state)), good_tensor()]))
    f["poison_function_dict"] = (
        "BUILD with a dict state on the allow-listed _rebuild_tensor_v2",
        state_dict_pt([(p_str("x"), p_build(p_global("torch._utils", "_rebuild_tensor_v2"),
                                             dictstate={"evil": p_int(1)})), good_tensor()]))
    # --- views out of bounds or too large, declared directly
    f["oob_offset"] = ("offset 4 of a 4-element storage",
                       state_dict_pt([(p_str("w"), p_tensor("FloatStorage", "0", 4, 4, (1,), (1,)))]))
    f["oob_stride"] = ("shape (2,) stride (4,) over 4 elements",
                       state_dict_pt([(p_str("w"), p_tensor("FloatStorage", "0", 4, 0, (2,), (4,)))]))
    f["oob_shape"] = ("shape (5,) over 4 elements",
                      state_dict_pt([(p_str("w"), p_tensor("FloatStorage", "0", 4, 0, (5,), (1,)))]))
    f["negative_shape"] = ("shape (-1,)",
                           state_dict_pt([(p_str("w"), p_tensor("FloatStorage", "0", 4, 0, (-1,), (1,)))]))
    f["huge_shape_zero_stride"] = ("shape (2**40,) stride (0,): a 16-byte file asking for 4 TB",
                                   state_dict_pt([(p_str("w"), p_tensor("FloatStorage", "0", 4, 0, (2 ** 40,), (0,)))]))
    f["huge_shape_2d"] = ("shape (2**31, 2**31) with zero strides",
                          state_dict_pt([(p_str("w"), p_tensor("FloatStorage", "0", 4, 0, (2 ** 31, 2 ** 31), (0, 0)))]))
    f["huge_declared_storage"] = ("storage numel 2**62 with a 16-byte record",
                                  state_dict_pt([(p_str("w"), p_tensor("FloatStorage", "0", 2 ** 62, 0, (2 ** 62,), (1,)))]))
    f["numel_overflow_int64"] = ("shape whose element count overflows int64",
                                 state_dict_pt([(p_str("w"), p_tensor("FloatStorage", "0", 4, 0, (2 ** 40, 2 ** 40), (1, 1)))]))
    f["stride_overflow_int64"] = ("stride 2**70",
                                  state_dict_pt([(p_str("w"), p_tensor("FloatStorage", "0", 4, 0, (2,), (2 ** 70,)))]))
    f["float_shape"] = ("shape (2.0,)",
                        archive(p_pickle(p_dict([(p_str("w"), p_global("torch._utils", "_rebuild_tensor_v2")
                                                  + p_tuple([p_pid("FloatStorage", "0", 4), p_int(0),
                                                             p_tuple([p_float(2.0)]), p_tuple([p_int(1)]),
                                                             b"\x89", p_global("collections", "OrderedDict") + b")R"])
                                                  + b"R")])), {"0": FLOATS4}))
    v3 = (p_global("torch._utils", "_rebuild_tensor_v3")
          + p_tuple([p_pid("UntypedStorage", "0", 6), p_int(0), p_tuple([p_int(2)]), p_tuple([p_int(1)]),
                     b"\x89", p_global("collections", "OrderedDict") + b")R", p_global("torch", "float32")]) + b"R")
    f["v3_dtype_vs_storage"] = ("float32 (2,) view over a 6-byte untyped storage",
                                archive(p_pickle(p_dict([(p_str("w"), v3)])), {"0": b"\0" * 6}))
    f["storage_record_short"] = ("storage declares 4 floats, record holds 3",
                                 state_dict_pt([good_tensor()], {"0": FLOATS4[:12]}))
    # --- keys and values that are not tensors
    f["int_key"] = ("an int key in the state dict",
                    state_dict_pt([(p_int(7), p_tensor("FloatStorage", "0", 4, 0, (4,), (1,)))]))
    f["tuple_key"] = ("a tuple key in the state dict",
                      state_dict_pt([(p_tuple([p_str("a"), p_str("b")]), p_tensor("FloatStorage", "0", 4, 0, (4,), (1,)))]))
    f["list_value"] = ("a list where a tensor should be", state_dict_pt([(p_str("w"), p_list([p_float(1.0), p_float(2.0)]))]))
    f["only_strings"] = ("a dict of strings", state_dict_pt([(p_str("w"), p_str("x"))]))
    f["deep_nesting"] = ("20000 nested lists", archive(p_pickle(b"]" * 20000 + b"a" * 19999), {}))
    # --- opcodes reaching outside the allow-list
    f["global_os_system"] = ("REDUCE of os.system",
                             archive(p_pickle(p_global("os", "system") + p_tuple([p_str("touch /tmp/zipar_pwned")]) + b"R"), {}))
    f["inst_opcode"] = ("INST opcode naming builtins.eval",
                        archive(p_pickle(b"(" + p_str("1") + b"ibuiltins\neval\n"), {}))
    f["stack_global"] = ("protocol-4 STACK_GLOBAL naming os.system",
                         archive(b"\x80\x04" + p_str("os") + p_str("system") + b"\x93"
                                 + p_tuple([p_str("true")]) + b"R.", {}))
    f["ext_opcode"] = ("EXT1 opcode (copyreg extension registry)", archive(p_pickle(b"\x82\x01"), {}))
    f["reduce_non_callable"] = ("REDUCE of a string", archive(p_pickle(p_str("x") + p_tuple([]) + b"R"), {}))
    f["rebuild_from_type_ordereddict"] = (
        "_rebuild_from_type_v2 with OrderedDict as the rebuild function",
        state_dict_pt([(p_str("w"), p_global("torch._tensor", "_rebuild_from_type_v2")
                        + p_tuple([p_global("collections", "OrderedDict"),
                                   p_global("torch", "Tensor"), p_tuple([]), p_sdict([])]) + b"R")]))
    f["memo_missing"] = ("GET of an unset memo slot", archive(p_pickle(b"g99\n"), {}))
    f["memo_huge_index"] = ("LONG_BINPUT 2**31-1: the C unpickler would grow its memo to 16 GB",
                            archive(p_pickle(b"]r" + struct.pack("<I", 2 ** 31 - 1)), {}))
    f["binunicode_huge_len"] = ("BINUNICODE claiming 2**31 bytes",
                                archive(p_pickle(b"X" + struct.pack("<I", 2 ** 31) + b"abc"), {}))
    f["persistent_id_garbage"] = ("persistent id of the wrong shape",
                                  archive(p_pickle(p_dict([(p_str("w"), p_tuple([p_str("storage")]) + b"Q")])), {}))
    f["persistent_id_path_key"] = ("storage key ../../etc/passwd",
                                   state_dict_pt([(p_str("w"), p_tensor("FloatStorage", "../../etc/passwd", 4, 0, (4,), (1,)))]))
    f["empty_pickle"] = ("an empty data.pkl", archive(b"", {}))
    f["not_a_dict"] = ("a bare int as the whole checkpoint", archive(p_pickle(p_int(3)), {}))
    return f


# ============================================================================ .npy / .npz


def npy(header: str, data: bytes = b"", version=(1, 0)) -> bytes:
    h = header.encode("latin1")
    pad = 64 - (10 + len(h) + 1) % 64
    h = h + b" " * (pad % 64) + b"\n"
    if version[0] == 1:
        return b"\x93NUMPY" + bytes(version) + struct.pack("<H", len(h)) + h + data
    return b"\x93NUMPY" + bytes(version) + struct.pack("<I", len(h)) + h + data


def npz(members, compression=zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(_entry(name, compression), data)
    return buf.getvalue()


def hdr(descr="<f4", fortran="False", shape="(4,)"):
    return "{'descr': %s, 'fortran_order': %s, 'shape': %s, }" % (
        descr if descr.startswith(("'", "[")) else repr(descr), fortran, shape)


def npz_files():
    f = {}
    d = FLOATS4
    cases = {
        "npz_huge_shape": ("header declares shape (2**40,) over 16 bytes", npy(hdr(shape="(1099511627776,)"), d)),
        "npz_huge_shape_2d": ("header declares (2**31, 2**31)", npy(hdr(shape="(2147483648, 2147483648)"), d)),
        "npz_shape_overflow": ("shape whose byte size overflows int64", npy(hdr(shape="(4611686018427387904, 8)"), d)),
        "npz_negative_shape": ("shape (-1,)", npy(hdr(shape="(-1,)"), d)),
        "npz_shape_not_tuple": ("shape 'abc'", npy(hdr(shape="'abc'"), d)),
        "npz_shape_float": ("shape (4.0,)", npy(hdr(shape="(4.0,)"), d)),
        "npz_truncated_data": ("shape (1000,) over 16 bytes", npy(hdr(shape="(1000,)"), d)),
        "npz_header_syntax": ("broken header literal (tokenize error)",
                              npy("{'descr': '<f4', 'fortran_order': False, 'shape': (4,", d)),
        "npz_header_unterminated_str": ("unterminated string in the header", npy("{'descr': '<f4", d)),
        "npz_header_deep": ("deeply nested header literal", npy("{'descr': " + "(" * 5000 + ")" * 5000 + "}", d)),
        "npz_header_not_dict": ("header is a list", npy("[1, 2, 3]", d)),
        "npz_header_missing_keys": ("header without shape", npy("{'descr': '<f4', 'fortran_order': False}", d)),
        "npz_object_dtype": ("object dtype (would need pickle)", npy(hdr("|O"), b"\x80\x02N.")),
        "npz_unknown_descr": ("descr '<f3'", npy(hdr("<f3"), d)),
        "npz_descr_garbage": ("descr of nested garbage", npy(hdr("[('a', ('<f4', (1,), 3))]"), d)),
        "npz_structured": ("structured dtype", npy(hdr("[('a', '<f4')]"), d)),
        "npz_fortran_str": ("fortran_order 'yes'", npy(hdr(fortran="'yes'"), d)),
        "npz_version_9": ("npy format version 9.0", npy(hdr(), d, version=(9, 0))),
        "npz_bad_magic": ("member without the npy magic", b"NOTNUMPY" + d),
        "npz_header_len_huge": ("v2 header length 2**31", b"\x93NUMPY\x02\x00" + struct.pack("<I", 2 ** 31) + b"{}"),
        "npz_empty_member": ("empty member", b""),
        "npz_big_endian_huge": ("big-endian float with a huge shape", npy(hdr(">f8", shape="(1152921504606846976,)"), d)),
    }
    for name, (what, member) in cases.items():
        f[name] = (what, npz({"w.npy": member}))
    good = npy(hdr(), d)
    # compression: corrupt deflate / lzma / bzip2 streams and an unknown method id
    for name, method in (("npz_corrupt_deflate", zipfile.ZIP_DEFLATED),
                         ("npz_corrupt_lzma", zipfile.ZIP_LZMA),
                         ("npz_corrupt_bzip2", zipfile.ZIP_BZIP2)):
        raw = bytearray(npz({"w.npy": good * 8}, method))
        start = raw.index(b"w.npy") + len(b"w.npy")  # first local header's name, then data
        for i in range(start + 4, min(start + 40, len(raw))):
            raw[i] ^= 0x5A
        f[name] = (f"corrupt {name.split('_')[-1]} stream", bytes(raw))
    raw = bytearray(npz({"w.npy": good}))
    raw[8:10] = struct.pack("<H", 99)  # local header compression method
    cd = raw.rindex(b"PK\x01\x02")
    raw[cd + 10:cd + 12] = struct.pack("<H", 99)  # central directory compression method
    f["npz_unknown_compression"] = ("zip compression method 99", bytes(raw))
    f["npz_encrypted_flag"] = ("member flagged as encrypted", _flag_encrypted(npz({"w.npy": good})))
    f["npz_no_npy_suffix"] = ("member not ending in .npy", npz({"w.bin": good}))
    f["npz_truncated_zip"] = ("zip cut in half", npz({"w.npy": good * 64})[:300])
    return f


def _flag_encrypted(b):
    raw = bytearray(b)
    raw[6:8] = struct.pack("<H", 1)
    cd = raw.rindex(b"PK\x01\x02")
    raw[cd + 8:cd + 10] = struct.pack("<H", 1)
    return bytes(raw)


# ============================================================================ .safetensors


def st(header, data=b"", length=None):
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(h) if length is None else length) + h + data


def st_files():
    d = FLOATS4
    e = lambda **kw: {"w": dict({"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, **kw)}  # noqa
    cases = {
        "st_header_len_past_file": ("header length beyond the file", st(e(), d, length=10 ** 6)),
        "st_header_len_huge": ("header length 2**63", st(e(), d, length=2 ** 63)),
        "st_header_not_json": ("header is not JSON", st(b"{not json", d)),
        "st_header_bad_utf8": ("header is not UTF-8", st(b'{"w": "\xff\xfe"}', d)),
        "st_header_list": ("header is a JSON list", st([1, 2], d)),
        "st_header_deep": ("deeply nested JSON header", st(b"[" * 20000 + b"]" * 20000, d)),
        "st_unknown_dtype": ("dtype F128", st(e(dtype="F128"), d)),
        "st_dtype_not_str": ("dtype 7", st(e(dtype=7), d)),
        "st_negative_shape": ("shape [-4]", st(e(shape=[-4]), d)),
        "st_shape_str": ("shape 'abc'", st(e(shape="abc"), d)),
        "st_shape_float": ("shape [4.0]", st(e(shape=[4.0]), d)),
        "st_shape_bool": ("shape [true]", st(e(shape=[True]), d)),
        "st_shape_overflow": ("shape [2**32, 2**32] over 16 bytes", st(e(shape=[2 ** 32, 2 ** 32]), d)),
        "st_shape_huge_int": ("shape [10**30]", st(e(shape=[10 ** 30]), d)),
        "st_offsets_past_data": ("data_offsets [0, 1600]", st(e(data_offsets=[0, 1600]), d)),
        "st_offsets_reversed": ("data_offsets [16, 0]", st(e(data_offsets=[16, 0]), d)),
        "st_offsets_float": ("data_offsets [0.5, 16]", st(e(data_offsets=[0.5, 16]), d)),
        "st_offsets_negative": ("data_offsets [-16, 0]", st(e(data_offsets=[-16, 0]), d)),
        "st_offsets_short": ("data_offsets [0]", st(e(data_offsets=[0]), d)),
        "st_offsets_mismatch": ("data_offsets span 12 bytes for 4 floats", st(e(data_offsets=[0, 12]), d)),
        "st_entry_not_dict": ("entry is a string", st({"w": "x"}, d)),
        "st_missing_fields": ("entry without data_offsets", st({"w": {"dtype": "F32", "shape": [4]}}, d)),
        "st_metadata_nonstr": ("__metadata__ with an int value", st(dict(e(), __metadata__={"a": 1}), d)),
        "st_overlap": ("two tensors sharing bytes",
                       st({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
                           "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}}, d)),
        "st_bf16_odd": ("BF16 tensor over 3 bytes", st(e(dtype="BF16", shape=[2], data_offsets=[0, 3]), d[:3])),
        "st_truncated": ("file shorter than 8 bytes", b"\x10\x00\x00"),
        "st_empty": ("empty file", b""),
    }
    dup = b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, ' \
          b'"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}'
    cases["st_duplicate_key"] = ("duplicate key", st(dup, d))
    return cases


def main(out=OUT, manifest_path=os.path.join(HERE, "manifest.json")):
    os.makedirs(out, exist_ok=True)
    OUT = out
    for old in os.listdir(OUT):
        os.remove(os.path.join(OUT, old))
    manifest = {}
    groups = [(".pt", pt_files()), (".npz", npz_files()), (".safetensors", st_files())]
    for ext, files in groups:
        for name, (what, data) in sorted(files.items()):
            fname = name + ext
            with open(os.path.join(OUT, fname), "wb") as fh:
                fh.write(data)
            manifest[fname] = what
    # a bare .npy is no checkpoint format: refused too
    with open(os.path.join(OUT, "bare_huge_shape.npy"), "wb") as fh:
        fh.write(npy(hdr(shape="(1099511627776,)"), FLOATS4))
    manifest["bare_huge_shape.npy"] = "a bare .npy declaring shape (2**40,)"
    with open(manifest_path, "w") as fh:
        json.dump(manifest, fh, indent=1, sort_keys=True)
        fh.write("\n")
    total = sum(os.path.getsize(os.path.join(OUT, n)) for n in manifest)
    print(f"wrote {len(manifest)} hostile files ({total} bytes) to {OUT}")


if __name__ == "__main__":
    import sys

    if len(sys.argv) > 1:  # python3 make_hostile.py OUTDIR: write elsewhere (the tests compare)
        main(sys.argv[1], os.path.join(sys.argv[1], "manifest.json"))
    else:
        main()
