"""Write the small checkpoint fixtures in tests/fixtures/ (needs torch; the tests do not).

    python3 tests/make_fixtures.py

Every file is written with torch.save in the layouts the published LlamaGen checkpoints use
(tiny sizes), plus conversions (.npz, .safetensors via the official writer when installed),
hand-made malicious archives, and expected.json: for every tensor torch saved, its dtype,
shape, float64 sum and the SHA-256 of its bytes (bfloat16 as its uint16 bits), so the tests
can compare without torch. Deterministic: fixed seeds.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import sys
import zipfile
from collections import OrderedDict

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "fixtures")
sys.path.insert(0, os.path.dirname(HERE))

from zipar.config import llamagen_hidden  # noqa: E402

GEN = torch.Generator().manual_seed(1234)


def randn(*shape, scale=0.02):
    return torch.randn(*shape, generator=GEN) * scale


def gpt_state_dict(dim, n_layer, n_head, vocab, num_classes, n_kv_head=None, caption_dim=0,
                   cls_token_num=120):
    """A LlamaGen GPT state dict (c2i, or t2i when caption_dim > 0), float32, random."""
    n_kv_head = n_kv_head or n_head
    hd = dim // n_head
    hidden = llamagen_hidden(dim)
    sd = OrderedDict()
    if caption_dim:
        sd["cls_embedding.cap_proj.fc1.weight"] = randn(dim, caption_dim)
        sd["cls_embedding.cap_proj.fc2.weight"] = randn(dim, dim)
        sd["cls_embedding.uncond_embedding"] = randn(cls_token_num, caption_dim,
                                                     scale=caption_dim ** -0.5)
    else:
        sd["cls_embedding.embedding_table.weight"] = randn(num_classes + 1, dim)
    sd["tok_embeddings.weight"] = randn(vocab, dim)
    for i in range(n_layer):
        p = f"layers.{i}."
        sd[p + "attention_norm.weight"] = 1 + randn(dim, scale=0.1)
        sd[p + "attention.wqkv.weight"] = randn((n_head + 2 * n_kv_head) * hd, dim)
        sd[p + "attention.wo.weight"] = randn(dim, dim)
        sd[p + "ffn_norm.weight"] = 1 + randn(dim, scale=0.1)
        sd[p + "feed_forward.w1.weight"] = randn(hidden, dim)
        sd[p + "feed_forward.w3.weight"] = randn(hidden, dim)
        sd[p + "feed_forward.w2.weight"] = randn(dim, hidden)
    sd["norm.weight"] = 1 + randn(dim, scale=0.1)
    sd["output.weight"] = randn(vocab, dim)
    return sd


def vq_state_dict(ch=32, ch_mult=(1, 1, 1, 1, 1), z_channels=32, embed_dim=8, codebook=1024):
    """LlamaGen VQ-16 key layout (decoder, post_quant_conv, codebook) with small channels,
    plus a few encoder / quant_conv tensors that a decoder reader must skip."""
    sd = OrderedDict()

    def conv(name, cin, cout, k):
        sd[name + ".weight"] = randn(cout, cin, k, k, scale=(cin * k * k) ** -0.5)
        sd[name + ".bias"] = randn(cout)

    def norm(name, c):
        sd[name + ".weight"] = 1 + randn(c, scale=0.1)
        sd[name + ".bias"] = randn(c)

    def resnet(name, cin, cout):
        norm(name + ".norm1", cin)
        conv(name + ".conv1", cin, cout, 3)
        norm(name + ".norm2", cout)
        conv(name + ".conv2", cout, cout, 3)
        if cin != cout:
            conv(name + ".nin_shortcut", cin, cout, 1)

    def attn(name, c):
        norm(name + ".norm", c)
        for part in ("q", "k", "v", "proj_out"):
            conv(f"{name}.{part}", c, c, 1)

    conv("encoder.conv_in", 3, ch, 3)  # stand-ins for the (skipped) encoder
    conv("encoder.conv_out", ch, z_channels, 3)
    conv("quant_conv", z_channels, embed_dim, 1)
    sd["quantize.embedding.weight"] = randn(codebook, embed_dim, scale=1.0)
    conv("post_quant_conv", embed_dim, z_channels, 1)
    block_in = ch * ch_mult[-1]
    conv("decoder.conv_in", z_channels, block_in, 3)
    resnet("decoder.mid.0", block_in, block_in)
    attn("decoder.mid.1", block_in)
    resnet("decoder.mid.2", block_in, block_in)
    for level in range(len(ch_mult)):
        block_out = ch * ch_mult[len(ch_mult) - 1 - level]
        for j in range(3):
            resnet(f"decoder.conv_blocks.{level}.res.{j}", block_in, block_out)
            block_in = block_out
            if level == 0:
                attn(f"decoder.conv_blocks.{level}.attn.{j}", block_in)
        if level != len(ch_mult) - 1:
            conv(f"decoder.conv_blocks.{level}.upsample.conv", block_in, block_in, 3)
    norm("decoder.norm_out", block_in)
    conv("decoder.conv_out", block_in, 3, 3)
    return sd


def misc_dtypes_state_dict():
    """Every dtype and tensor layout the reader handles: views, offsets, strides, scalars."""
    g = torch.Generator().manual_seed(7)
    base = torch.randn(6, 5, generator=g)
    shared = torch.randn(40, generator=g)
    sd = OrderedDict()
    sd["f64"] = torch.randn(3, 2, generator=g, dtype=torch.float64)
    sd["f32"] = base
    sd["f16"] = torch.randn(4, 3, generator=g).half()
    sd["bf16"] = torch.randn(5, 7, generator=g).bfloat16()
    sd["bf16_transposed"] = torch.randn(5, 7, generator=g).bfloat16().t()
    sd["i64"] = torch.arange(-5, 7, dtype=torch.int64).reshape(3, 4)
    sd["i32"] = torch.arange(-3, 3, dtype=torch.int32)
    sd["i16"] = torch.arange(-4, 4, dtype=torch.int16)
    sd["i8"] = torch.arange(-4, 4, dtype=torch.int8)
    sd["u8"] = torch.arange(0, 250, 25, dtype=torch.uint8)
    sd["u16"] = torch.arange(0, 60000, 7500, dtype=torch.int32).to(torch.uint16)
    sd["bool"] = torch.tensor([True, False, True])
    sd["c64"] = torch.randn(3, generator=g, dtype=torch.complex64)
    sd["scalar"] = torch.tensor(3.25)
    sd["empty"] = torch.zeros(0, 4)
    sd["transposed"] = base.t()                      # stride (1, 5): non-contiguous
    sd["row_slice"] = base[2:5]                      # storage offset 10, contiguous
    sd["col_slice"] = base[:, 1:4]                   # offset 1, strided
    sd["step_slice"] = shared[3:40:4]                # offset 3, stride 4
    sd["shared_a"] = shared[:10].view(2, 5)          # shares a storage with the next two
    sd["shared_b"] = shared[10:20]
    sd["expanded"] = torch.randn(3, generator=g).expand(4, 3)  # stride (0, 1)
    sd["parameter"] = torch.nn.Parameter(torch.randn(2, 2, generator=g))
    sd["steps"] = 1234                                # non-tensor entries are dropped
    sd["name"] = "misc"
    return sd


def with_attribute(t):
    """A tensor carrying a Python attribute: torch pickles it through _rebuild_from_type_v2
    (as FSDP-saved checkpoints such as c2i_3B_384.pt do)."""
    t = t.clone()
    t._fsdp_flattened = True
    return t


# ---------------------------------------------------------------------------- references

def tensor_record(t: torch.Tensor) -> dict:
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        raw = t.view(torch.int16).numpy().tobytes()
    elif t.dtype == torch.uint16:
        raw = t.to(torch.int32).numpy().astype(np.uint16).tobytes()
    else:
        raw = t.numpy().tobytes()
    total = t.to(torch.complex128).sum().real.item() if t.is_complex() else \
        t.to(torch.float64).sum().item()
    return {"dtype": str(t.dtype).replace("torch.", ""), "shape": list(t.shape),
            "sha256": hashlib.sha256(raw).hexdigest(), "sum": total}


def records(sd: dict, rename=lambda k: k) -> dict:
    return {rename(k): tensor_record(v) for k, v in sd.items()
            if isinstance(v, torch.Tensor) and rename(k) != "freqs_cis"}


# ---------------------------------------------------------------------------- malicious files

def evil_archive(path: str, pickle_bytes: bytes):
    """A zip laid out like torch.save, but whose data.pkl calls a dangerous global."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, data in (("archive/data.pkl", pickle_bytes), ("archive/byteorder", b"little"),
                           ("archive/version", b"3\n")):
            zf.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)


def pkl_str(s: str) -> bytes:
    b = s.encode("utf-8")
    return b"X" + struct.pack("<I", len(b)) + b


def pkl_call(module: str, name: str, arg: str) -> bytes:
    return b"c" + f"{module}\n{name}\n".encode() + pkl_str(arg) + b"\x85R"


class EvilSystem:
    """Pickles as os.system(<command>) (module 'posix' on Linux)."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


# ---------------------------------------------------------------------------- main

def main():
    os.makedirs(OUT, exist_ok=True)
    expected = {}

    def save(name, obj, rename=lambda k: k, sd=None):
        torch.save(obj, os.path.join(OUT, name))
        expected[name] = records(sd if sd is not None else obj, rename)

    def strip(k):
        while k.startswith(("module.", "_orig_mod.")):
            k = k.split(".", 1)[1]
        return k

    # c2i, LlamaGen layout: {"model": state_dict}, float32 (like c2i_B_256.pt)
    c2i = gpt_state_dict(dim=64, n_layer=2, n_head=4, vocab=100, num_classes=10)
    save("c2i_tiny.pt", {"model": c2i}, sd=c2i)

    # t2i, float16: cap_proj + uncond_embedding (120, 2048)
    t2i = OrderedDict((k, v.half()) for k, v in gpt_state_dict(
        dim=32, n_layer=2, n_head=4, vocab=100, num_classes=0, caption_dim=2048).items())
    save("t2i_tiny_f16.pt", {"model": t2i}, sd=t2i)

    # FSDP-like: top level, bfloat16, every tensor through _rebuild_from_type_v2 (like 3B)
    bf16 = OrderedDict((k, with_attribute(v.bfloat16())) for k, v in gpt_state_dict(
        dim=32, n_layer=2, n_head=4, vocab=100, num_classes=10).items())
    save("c2i_bf16_fsdp.pt", bf16)

    # DDP-like: "module." prefix at top level, GQA (n_kv_head 2), a stray freqs_cis, and
    # tensors that are views: transposed (non-contiguous), slices of one shared storage,
    # output tied to tok_embeddings.
    gqa = gpt_state_dict(dim=32, n_layer=2, n_head=4, vocab=100, num_classes=10, n_kv_head=2)
    norms = torch.cat([gqa[k] for k in gqa if k.endswith("norm.weight")])
    off = 0
    for k in [k for k in gqa if k.endswith("norm.weight")]:
        gqa[k] = norms[off: off + 32]
        off += 32
    for i in range(2):
        wo = f"layers.{i}.attention.wo.weight"
        gqa[wo] = gqa[wo].t().contiguous().t()
    gqa["output.weight"] = gqa["tok_embeddings.weight"]
    prefixed = OrderedDict(("module." + k, v) for k, v in gqa.items())
    prefixed["module.freqs_cis"] = torch.randn(2 + 16, 4, 2, generator=GEN)
    save("c2i_module_prefix.pt", prefixed, rename=strip)

    # torch.compile + DDP: {"state_dict": {"model": {"_orig_mod.module.<k>": Parameter}}}
    orig = gpt_state_dict(dim=32, n_layer=2, n_head=4, vocab=100, num_classes=10)
    wrapped = OrderedDict(("_orig_mod.module." + k, torch.nn.Parameter(v))
                          for k, v in orig.items())
    save("c2i_orig_mod.pt", {"state_dict": {"model": wrapped}, "steps": 7, "note": "compiled"},
         rename=strip, sd=wrapped)

    # every dtype and layout
    misc = misc_dtypes_state_dict()
    save("misc_dtypes.pt", misc, sd=misc)

    # VQ tokenizer: {"model": state_dict}
    vq = vq_state_dict()
    save("vq_tiny.pt", {"model": vq}, sd=vq)

    # conversions of c2i_tiny: .npz (np.savez) and .safetensors (official writer if present)
    np.savez(os.path.join(OUT, "c2i_tiny.npz"), **{k: v.numpy() for k, v in c2i.items()})
    expected["c2i_tiny.npz"] = records(c2i)
    try:
        from safetensors.torch import save_file
    except ImportError:
        print("safetensors not installed: skipping the .safetensors fixtures")
    else:
        save_file(dict(c2i), os.path.join(OUT, "c2i_tiny.safetensors"))
        expected["c2i_tiny.safetensors"] = records(c2i)
        plain_bf16 = {k: v.detach().clone() for k, v in bf16.items()}
        save_file(plain_bf16, os.path.join(OUT, "c2i_bf16.safetensors"))
        expected["c2i_bf16.safetensors"] = records(plain_bf16)

    # malicious archives: each would create a marker file in the working directory
    evil_archive(os.path.join(OUT, "malicious_exec.pt"),
                 b"\x80\x02" + pkl_call("builtins", "exec",
                                        "open('zipar_pwned_exec', 'w').close()") + b".")
    buf = io.BytesIO()
    torch.save({"model": {"tok_embeddings.weight": torch.ones(2, 2),
                          "evil": EvilSystem("touch zipar_pwned_system")}}, buf)
    with open(os.path.join(OUT, "malicious_system.pt"), "wb") as f:
        f.write(buf.getvalue())

    with open(os.path.join(OUT, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)
    for name in sorted(os.listdir(OUT)):
        print(f"{os.path.getsize(os.path.join(OUT, name)):>9}  {name}")


if __name__ == "__main__":
    main()
