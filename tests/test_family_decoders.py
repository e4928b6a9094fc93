"""Emu3 and Chameleon VQ decoders (zipar.families.emu3_vq / chameleon_vq) against references.

- Emu3: transformers' ``Emu3VQVAE.decode`` on tiny random weights (every norm weight, bias and
  BatchNorm statistic randomised), float <= 1e-4, uint8 images equal; loading from a sharded
  transformers checkpoint folder (save_pretrained), from the original VisionTokenizer names
  (.safetensors and torch.save), and token ids -> pixels == ``decode_image_tokens``.
- Chameleon: a slow torch reference written here from the spec (families.md 5.2), float
  <= 1e-4, uint8 equal; loading vqgan.ckpt written by torch.save (Lightning-style, with encoder
  and loss tensors), a .safetensors conversion and vqgan.yaml.
- Without torch: the committed golden outputs in fixtures/family_decoders.npz (written by
  tests/make_decoder_fixtures.py from the references above).
"""

import json
import os

import numpy as np
import pytest

from zipar.families import chameleon_vq, emu3_vq
from zipar.families.image_tokens import (chameleon_image_tokens, emu3_image_tokens,
                                         read_vocabulary, strip_row_ends)
from zipar.io import CheckpointError, write_safetensors

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures",
                       "family_decoders.npz")


def _need(module):
    """The module, or a skip when it is not installed (any ImportError)."""
    try:
        return __import__(module)
    except ImportError as e:
        pytest.skip(f"{module} not available: {e}")


def _torch():
    return _need("torch")


def _transformers():
    _torch()
    tf = _need("transformers")
    if not hasattr(tf, "Emu3VQVAEConfig"):
        pytest.skip("transformers without Emu3")
    return tf


# --------------------------------------------------------------------------------------------
# Emu3 references
# --------------------------------------------------------------------------------------------

def _perturb(module, seed):
    """Randomise norm weights / biases / BatchNorm statistics (HF init leaves them at 1/0)."""
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in list(module.named_parameters()) + list(module.named_buffers()):
            if not p.is_floating_point():
                continue
            if name.endswith("running_var"):
                p.copy_(0.5 + torch.rand(p.shape, generator=g))
            elif name.endswith("running_mean"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() == 1 and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def tiny_emu3_vqvae(seed=0, **cfg):
    """A tiny transformers Emu3VQVAE with randomised norms and statistics (eval mode)."""
    tf = _transformers()
    import torch
    from transformers.models.emu3.modeling_emu3 import Emu3VQVAE
    base = dict(codebook_size=32, embed_dim=4, latent_channels=4, base_channels=32,
                channel_multiplier=[1, 2], num_res_blocks=1, attn_resolutions=[1],
                num_attention_heads=1, temporal_downsample_factor=4)
    base.update(cfg)
    base["hidden_size"] = base["base_channels"] * base["channel_multiplier"][-1]
    torch.manual_seed(seed)
    model = Emu3VQVAE(tf.Emu3VQVAEConfig(**base)).eval()
    _perturb(model, seed + 100)
    return model


def emu3_uint8_reference(y):
    """Emu3's postprocess (spec 5.1; image processor with mean = std = 0.5): unnormalise in
    float32, rescale by 255 in float64, back to float32, clip to [0, 255], truncate."""
    y = np.asarray(y, dtype=np.float32)
    u = (y - np.float32(-1.0)) / np.float32(2.0)
    u = (u.astype(np.float64) * 255.0).astype(np.float32)
    return np.clip(u, 0, 255).astype(np.uint8).transpose(0, 2, 3, 1)


# names of the original BAAI/Emu3-VisionTokenizer checkpoint (spec 5.1), written here from the
# converter's table in the other direction
def to_original_emu3_names(sd):
    import re
    out = {}
    for k, v in sd.items():
        n = k
        n = re.sub(r"^decoder\.middle_block\.attn_norm\.", "decoder.mid.attn_1.norm.", n)
        n = re.sub(r"^decoder\.up_block\.up\.(\d+)\.attn_norms\.(\d+)\.",
                   r"decoder.up.\1.attn.\2.norm.", n)
        n = n.replace("decoder.middle_block.", "decoder.mid.")
        n = n.replace("decoder.up_block.up.", "decoder.up.")
        m = re.match(r"^(.*\.(?:attn_1|attn\.\d+))\.(q_proj|k_proj|v_proj|out_proj)\."
                     r"(weight|bias)$", n)
        if m:
            short = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "out_proj": "proj_out"}
            n = f"{m.group(1)}.{short[m.group(2)]}.{m.group(3)}"
            if m.group(3) == "weight":
                v = v.reshape(v.shape + (1, 1))
        out[n] = v
    return out


def _np_state(module):
    return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


# --------------------------------------------------------------------------------------------
# Emu3 tests
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cfg, shape", [
    (dict(), (2, 5, 6)),
    # transformers' attention width is hidden_size = base x last multiplier: attention only on
    # levels of that width
    (dict(channel_multiplier=[1, 2, 2], attn_resolutions=[2, 1], num_res_blocks=2), (1, 3, 4)),
    (dict(num_attention_heads=2, attn_resolutions=[1]), (1, 4, 4)),
])
def test_emu3_matches_transformers(cfg, shape):
    _transformers()
    import torch
    model = tiny_emu3_vqvae(seed=len(cfg), **cfg)
    heads = model.config.num_attention_heads
    dec = emu3_vq.Emu3VQDecoder(_np_state(model), num_heads=heads)
    codes = np.random.default_rng(1).integers(0, model.config.codebook_size, shape)
    with torch.no_grad():
        ref = model.decode(torch.from_numpy(codes)).numpy()
    out = dec.decode_latent(dec.embed(codes))
    assert out.shape == ref.shape == (shape[0], 3, dec.scale * shape[1], dec.scale * shape[2])
    assert np.abs(out - ref).max() <= 1e-4, np.abs(out - ref).max()
    assert np.array_equal(dec.decode(codes), emu3_uint8_reference(ref))
    # the references' uint8 also from transformers' own image processor where it loads
    try:
        from transformers import Emu3ImageProcessor
        proc = Emu3ImageProcessor(image_mean=0.5, image_std=0.5)
        pp = proc.postprocess(torch.from_numpy(ref), return_tensors="np")["pixel_values"]
    except Exception:  # vision backend (PIL) missing: the spec formula above stands alone
        pp = None
    if pp is not None:  # channels first, the batch folded into the first axis
        pp = np.asarray(pp).reshape(ref.shape).transpose(0, 2, 3, 1)
        assert pp.dtype == np.uint8
        assert np.array_equal(dec.decode(codes), pp)


def _tiny_emu3_full(tmp_path):
    """A whole tiny Emu3ForConditionalGeneration saved sharded with save_pretrained."""
    tf = _transformers()
    import torch
    K = 32
    vocab = {f"t{i}": i for i in range(20)}
    vocab.update({"<image>": 20, "<|endoftext|>": 21, "<|extra_200|>": 22, "<|extra_201|>": 23,
                  "<|extra_203|>": 24, "<|extra_204|>": 25, "<|image token|>": 26,
                  "<|image start|>": 27, "<|image end|>": 28})
    vocab.update({f"<|visual token {k:06d}|>": 29 + k for k in range(K)})
    cfg = tf.Emu3Config(
        text_config=dict(vocab_size=29 + K, hidden_size=32, intermediate_size=48,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=64, pad_token_id=21, bos_token_id=24,
                         eos_token_id=25),
        vq_config=dict(codebook_size=K, embed_dim=4, latent_channels=4, base_channels=32,
                       channel_multiplier=[1, 2], num_res_blocks=1, attn_resolutions=[1],
                       hidden_size=64, num_attention_heads=1, temporal_downsample_factor=4),
        vocabulary_map=vocab)
    torch.manual_seed(0)
    model = tf.Emu3ForConditionalGeneration(cfg).eval()
    _perturb(model.model.vqmodel, 7)
    folder = tmp_path / "emu3-hf"
    model.save_pretrained(folder, max_shard_size="100KB")
    return model, folder, vocab


def test_emu3_hf_checkpoint_folder(tmp_path):
    _transformers()
    import torch
    model, folder, vocab = _tiny_emu3_full(tmp_path)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    vq_files = {f for k, f in index["weight_map"].items() if k.startswith("vqmodel.")}
    assert len(vq_files) > 1  # the VQ tensors really are spread over shards
    dec = emu3_vq.load_emu3_vq(folder)
    tmap = emu3_vq.load_emu3_image_tokens(folder)  # config.json vocabulary_map
    assert tmap.offset == 29 and tmap.codebook_size == 32
    H, W = 3, 4
    codes = np.random.default_rng(2).integers(0, 32, (H, W))
    seg = []  # generated segment: rows of (W visual tokens, EOL), then EOF, EOI, EOS
    for r in range(H):
        seg += [int(t) for t in tmap.tokens(codes[r])] + [vocab["<|extra_200|>"]]
    seg += [vocab["<|extra_201|>"], vocab["<|image end|>"], vocab["<|extra_204|>"]]
    with torch.no_grad():
        ref = model.model.decode_image_tokens(image_tokens=torch.tensor([seg]), height=H,
                                              width=W).numpy()
    grid = strip_row_ends(np.asarray(seg[:-3]), H, W, eol=vocab["<|extra_200|>"])
    out = dec.decode_latent(dec.embed(tmap.codes(grid)[None]))
    assert np.abs(out - ref).max() <= 1e-4
    assert np.array_equal(dec.decode(tmap.codes(grid)[None]), emu3_uint8_reference(ref))

    # a missing shard is named
    victim = sorted(vq_files)[0]
    os.rename(folder / victim, folder / (victim + ".away"))
    with pytest.raises(CheckpointError, match="missing"):
        emu3_vq.load_emu3_vq(folder)


def test_emu3_original_names(tmp_path):
    torch = _torch()
    model = tiny_emu3_vqvae(seed=5)
    sd = _np_state(model)
    orig = to_original_emu3_names(sd)
    assert "decoder.mid.attn_1.q.weight" in orig and orig["decoder.mid.attn_1.q.weight"].ndim == 4
    codes = np.random.default_rng(3).integers(0, 32, (1, 4, 3))
    with torch.no_grad():
        ref = model.decode(torch.from_numpy(codes)).numpy()
    folder = tmp_path / "Emu3-VisionTokenizer"
    folder.mkdir()
    write_safetensors(str(folder / "model.safetensors"), orig)
    (folder / "config.json").write_text(json.dumps({"codebook_size": 32, "embed_dim": 4}))
    torch.save({k: torch.from_numpy(v) for k, v in orig.items()}, str(tmp_path / "vq.pt"))
    for src in (folder, folder / "model.safetensors", tmp_path / "vq.pt"):
        dec = emu3_vq.load_emu3_vq(src)
        out = dec.decode_latent(dec.embed(codes))
        assert np.abs(out - ref).max() <= 1e-4, src


def test_emu3_bad_input():
    sd = emu3_vq.random_emu3_vq_state_dict(ch=32, ch_mult=(1, 2), codebook_size=8,
                                           num_res_blocks=1, attn_levels=(1,), temporal_blocks=1)
    dec = emu3_vq.Emu3VQDecoder(sd)
    assert dec.scale == 2 and dec.channels == [32, 64] and dec.attn_levels == [1]
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        dec.decode(np.full((1, 2, 2), 8))
    with pytest.raises(ValueError, match="integer"):
        dec.decode(np.zeros((1, 2, 2), np.float32))
    with pytest.raises(ValueError, match=r"\(B, h, w\)"):
        dec.decode(np.zeros((2, 2), np.int64))
    bad = dict(sd)
    del bad["decoder.up_block.up.1.block.0.conv2.bias"]
    with pytest.raises(ValueError, match="conv2.bias"):
        emu3_vq.Emu3VQDecoder(bad)
    bad = dict(sd)
    bad["decoder.conv_out.weight"] = bad["decoder.conv_out.weight"][:, :16]
    with pytest.raises(ValueError, match="conv_out.weight"):
        emu3_vq.Emu3VQDecoder(bad)
    bad = dict(sd)
    bad["decoder.extra.weight"] = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match="unexpected key"):
        emu3_vq.Emu3VQDecoder(bad)
    with pytest.raises(ValueError, match="num_heads"):
        emu3_vq.Emu3VQDecoder(sd, num_heads=3)
    codes = np.zeros((1, 2, 2), np.int64)
    before = codes.copy()
    dec.decode(codes)
    assert np.array_equal(codes, before)


# --------------------------------------------------------------------------------------------
# Chameleon: weights and a slow torch reference written from the spec (families.md 5.2)
# --------------------------------------------------------------------------------------------

def tiny_chameleon_state_dict(seed=0, ch=32, ch_mult=(1, 2), z=32, embed=32, K=16, nres=1,
                              attn_levels=()):
    """Meta vqgan.ckpt names; levels run from decoder.up.{n-1} (widest) down to up.0."""
    rng = np.random.default_rng(seed)
    sd = {}

    def conv(name, cout, cin, k):
        sd[name + ".weight"] = (rng.standard_normal((cout, cin, k, k)) /
                                np.sqrt(cin * k * k)).astype(np.float32)
        sd[name + ".bias"] = (0.1 * rng.standard_normal(cout)).astype(np.float32)

    def norm(name, c):
        sd[name + ".weight"] = (1 + 0.2 * rng.standard_normal(c)).astype(np.float32)
        sd[name + ".bias"] = (0.1 * rng.standard_normal(c)).astype(np.float32)

    def res(name, cin, cout):
        norm(name + ".norm1", cin)
        conv(name + ".conv1", cout, cin, 3)
        norm(name + ".norm2", cout)
        conv(name + ".conv2", cout, cout, 3)
        if cin != cout:
            conv(name + ".nin_shortcut", cout, cin, 1)

    def attn(name, c):
        norm(name + ".norm", c)
        for p in ("q", "k", "v", "proj_out"):
            conv(f"{name}.{p}", c, c, 1)

    sd["quantize.embedding.weight"] = rng.standard_normal((K, embed)).astype(np.float32)
    conv("post_quant_conv", z, embed, 1)
    c = ch * ch_mult[-1]
    conv("decoder.conv_in", c, z, 3)
    res("decoder.mid.block_1", c, c)
    attn("decoder.mid.attn_1", c)
    res("decoder.mid.block_2", c, c)
    for lev in reversed(range(len(ch_mult))):
        co = ch * ch_mult[lev]
        for j in range(nres + 1):
            res(f"decoder.up.{lev}.block.{j}", c, co)
            c = co
            if lev in attn_levels:
                attn(f"decoder.up.{lev}.attn.{j}", c)
        if lev:
            conv(f"decoder.up.{lev}.upsample.conv", c, c, 3)
    norm("decoder.norm_out", c)
    conv("decoder.conv_out", 3, c, 3)
    return sd


def chameleon_reference(sd, codes):
    """VQModel.decode(quantize.get_codebook_entry(codes)) in torch, NCHW float32."""
    import torch
    import torch.nn.functional as F
    P = {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in sd.items()}

    def conv(x, name, pad):
        return F.conv2d(x, P[name + ".weight"], P[name + ".bias"], padding=pad)

    def gn(x, name):
        return F.group_norm(x, 32, P[name + ".weight"], P[name + ".bias"], eps=1e-6)

    def res(x, name):
        h = conv(F.silu(gn(x, name + ".norm1")), name + ".conv1", 1)
        h = conv(F.silu(gn(h, name + ".norm2")), name + ".conv2", 1)
        if name + ".nin_shortcut.weight" in P:
            x = conv(x, name + ".nin_shortcut", 0)
        return x + h

    def attn(x, name):
        b, c, hh, ww = x.shape
        t = gn(x, name + ".norm")
        q = conv(t, name + ".q", 0).reshape(b, c, hh * ww).permute(0, 2, 1)
        k = conv(t, name + ".k", 0).reshape(b, c, hh * ww)
        v = conv(t, name + ".v", 0).reshape(b, c, hh * ww)
        w = torch.softmax(torch.bmm(q, k) * (int(c) ** -0.5), dim=2)
        o = torch.bmm(v, w.permute(0, 2, 1)).reshape(b, c, hh, ww)
        return x + conv(o, name + ".proj_out", 0)

    with torch.no_grad():
        e = P["quantize.embedding.weight"]
        x = e[torch.from_numpy(np.asarray(codes))].permute(0, 3, 1, 2)
        x = conv(x, "post_quant_conv", 0)
        x = conv(x, "decoder.conv_in", 1)
        x = res(x, "decoder.mid.block_1")
        x = attn(x, "decoder.mid.attn_1")
        x = res(x, "decoder.mid.block_2")
        levels = sorted({int(k.split(".")[2]) for k in P if k.startswith("decoder.up.")})
        for lev in reversed(levels):
            j = 0
            while f"decoder.up.{lev}.block.{j}.conv1.weight" in P:
                x = res(x, f"decoder.up.{lev}.block.{j}")
                if f"decoder.up.{lev}.attn.{j}.q.weight" in P:
                    x = attn(x, f"decoder.up.{lev}.attn.{j}")
                j += 1
            if lev:
                x = F.interpolate(x, scale_factor=2.0, mode="nearest")
                x = conv(x, f"decoder.up.{lev}.upsample.conv", 1)
        x = conv(F.silu(gn(x, "decoder.norm_out")), "decoder.conv_out", 1)
    return x.numpy()


def chameleon_uint8_reference(y):
    """_pil_from_chw_tensor: clamp to [-1, 1], (x + 1) / 2, then (255 * arr).astype(uint8)."""
    import torch
    x = torch.clamp(torch.from_numpy(np.asarray(y, np.float32)), -1.0, 1.0)
    x = (x + 1.0) / 2.0
    arr = x.permute(0, 2, 3, 1).numpy()
    return (255 * arr).astype(np.uint8)


@pytest.mark.parametrize("kw, shape", [
    (dict(), (2, 3, 4)),
    (dict(ch_mult=(1, 1, 2), nres=2, attn_levels=(0, 2), z=64, embed=16), (1, 2, 3)),
    (dict(ch=64, ch_mult=(1, 2), K=40), (1, 4, 4)),
])
def test_chameleon_matches_reference(kw, shape):
    _torch()
    sd = tiny_chameleon_state_dict(seed=len(kw), **kw)
    dec = chameleon_vq.ChameleonVQDecoder(sd)
    codes = np.random.default_rng(2).integers(0, dec.codebook_size, shape)
    ref = chameleon_reference(sd, codes)
    out = dec.decode_latent(dec.embed(codes))
    assert out.shape == ref.shape
    assert np.abs(out - ref).max() <= 1e-4, np.abs(out - ref).max()
    assert np.array_equal(dec.decode(codes), chameleon_uint8_reference(ref))


_YAML = """model:
  target: chameleon.vqgan.VQModel
  params:
    embed_dim: 32
    n_embed: 16
    ddconfig:
      double_z: false
      z_channels: 32
      resolution: 32
      in_channels: 3
      out_ch: 3
      ch: 32
      ch_mult:
      - 1
      - 2
      num_res_blocks: 1
      attn_resolutions: []
      dropout: 0.0
"""


def test_chameleon_ckpt_yaml_safetensors(tmp_path):
    torch = _torch()
    sd = tiny_chameleon_state_dict(seed=9)
    codes = np.random.default_rng(4).integers(0, 16, (1, 3, 3))
    ref = chameleon_reference(sd, codes)
    # a Lightning-style checkpoint: encoder and loss tensors beside the decoder, extra entries
    full = {k: torch.from_numpy(v) for k, v in sd.items()}
    full["encoder.conv_in.weight"] = torch.zeros(32, 3, 3, 3)
    full["quant_conv.weight"] = torch.zeros(32, 32, 1, 1)
    full["loss.discriminator.main.0.weight"] = torch.zeros(4, 3, 4, 4)
    folder = tmp_path / "tokenizer"
    folder.mkdir()
    torch.save({"state_dict": full, "epoch": 3, "global_step": 100}, str(folder / "vqgan.ckpt"))
    (folder / "vqgan.yaml").write_text(_YAML)
    cfg = chameleon_vq.read_vqgan_yaml(str(folder / "vqgan.yaml"))
    assert cfg["ch_mult"] == [1, 2] and cfg["n_embed"] == 16 and cfg["double_z"] is False
    for src in (folder, folder / "vqgan.ckpt"):
        dec = chameleon_vq.load_chameleon_vq(src)
        assert np.abs(dec.decode_latent(dec.embed(codes)) - ref).max() <= 1e-4
    write_safetensors(str(tmp_path / "vqgan.safetensors"), sd)
    dec = chameleon_vq.load_chameleon_vq(tmp_path / "vqgan.safetensors")
    assert np.array_equal(dec.decode(codes), chameleon_uint8_reference(ref))
    # a yaml that disagrees with the weights is refused
    (folder / "vqgan.yaml").write_text(_YAML.replace("n_embed: 16", "n_embed: 8192"))
    with pytest.raises(CheckpointError, match="n_embed"):
        chameleon_vq.load_chameleon_vq(folder)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no vqgan"):
        chameleon_vq.load_chameleon_vq(tmp_path / "empty")


def test_chameleon_bad_input():
    sd = tiny_chameleon_state_dict()
    dec = chameleon_vq.ChameleonVQDecoder(sd)
    assert dec.scale == 2 and dec.channels == [32, 64] and dec.num_res_blocks == 1
    with pytest.raises(ValueError, match=r"\[0, 16\)"):
        dec.decode(np.full((1, 2, 2), -1))
    bad = dict(sd)
    bad["decoder.up.0.block.0.conv1.weight"] = bad["decoder.up.0.block.0.conv1.weight"][:, :, :1]
    with pytest.raises(ValueError, match="conv1.weight"):
        chameleon_vq.ChameleonVQDecoder(bad)
    bad = dict(sd)
    bad["decoder.mid.attn_1.q.bias"] = np.full(64, np.nan, np.float32)
    with pytest.raises(ValueError, match="non-finite"):
        chameleon_vq.ChameleonVQDecoder(bad)


# --------------------------------------------------------------------------------------------
# Token maps
# --------------------------------------------------------------------------------------------

def test_image_token_maps(tmp_path):
    def letters(k):
        return "".join(chr(ord("A") + int(d)) for d in str(k))
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<reserved08799>": 8803}
    vocab.update({f"IMGIMG{letters(k)}Z": 4 + k for k in range(12)})
    tm = chameleon_image_tokens(vocab)
    assert tm.offset == 4 and tm.codebook_size == 12
    assert np.array_equal(tm.codes([[4, 14], [15, 5]]), [[0, 10], [11, 1]])
    assert np.array_equal(tm.tokens([3, 11]), [7, 15])
    with pytest.raises(ValueError, match="8803 is not an image token"):
        tm.codes([4, 8803])
    # a shuffled (non-contiguous) assignment still maps by name
    shuffled = {f"IMGIMG{letters(k)}Z": 100 - 3 * k for k in range(5)}
    ts = chameleon_image_tokens(shuffled)
    assert ts.offset is None and np.array_equal(ts.codes([100, 88]), [0, 4])
    with pytest.raises(ValueError, match="missing"):
        chameleon_image_tokens({"IMGIMGAZ": 4, "IMGIMGCZ": 6})
    lumina = tmp_path / "lumina"  # a Lumina-mGPT (HF Chameleon) config.json
    lumina.mkdir()
    (lumina / "config.json").write_text(json.dumps({"model_type": "chameleon",
                                                    "vocabulary_map": vocab}))
    tl = chameleon_vq.load_chameleon_image_tokens(lumina)
    assert np.array_equal(tl.token_ids, tm.token_ids)
    # tokenizer.json layout (model.vocab + added_tokens)
    tj = {"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": []},
          "added_tokens": [{"id": 2 + k, "content": f"<|visual token {k:06d}|>"}
                           for k in range(4)]}
    (tmp_path / "tokenizer.json").write_text(json.dumps(tj))
    te = emu3_image_tokens(read_vocabulary(tmp_path))
    assert te.offset == 2 and te.codebook_size == 4
    grid = strip_row_ends(np.array([2, 3, 9, 4, 5, 9]), 2, 2, eol=9)
    assert np.array_equal(te.codes(grid), [[0, 1], [2, 3]])
    with pytest.raises(ValueError, match="EOL"):
        strip_row_ends(np.array([2, 3, 9, 4, 5, 8]), 2, 2, eol=9)
    with pytest.raises(ValueError, match="2 x 3"):
        strip_row_ends(np.arange(5), 2, 2)


# --------------------------------------------------------------------------------------------
# Golden outputs (no torch needed)
# --------------------------------------------------------------------------------------------

def _golden(prefix):
    if not os.path.exists(FIXTURE):
        pytest.fail(f"missing {FIXTURE}; run tests/make_decoder_fixtures.py")
    data = np.load(FIXTURE)
    sd = {k[len(prefix) + 1:]: data[k].astype(np.float32) for k in data.files
          if k.startswith(prefix + "/")}
    return sd, data[prefix + ":codes"], data[prefix + ":float"], data[prefix + ":uint8"]


def test_emu3_golden():
    sd, codes, ref, ref_u8 = _golden("emu3")
    dec = emu3_vq.Emu3VQDecoder(sd)
    out = dec.decode_latent(dec.embed(codes))
    assert np.abs(out - ref).max() <= 1e-4
    assert np.array_equal(dec.decode(codes), ref_u8)


def test_chameleon_golden():
    sd, codes, ref, ref_u8 = _golden("chameleon")
    dec = chameleon_vq.ChameleonVQDecoder(sd)
    out = dec.decode_latent(dec.embed(codes))
    assert np.abs(out - ref).max() <= 1e-4
    assert np.array_equal(dec.decode(codes), ref_u8)
