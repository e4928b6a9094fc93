"""Chameleon / Lumina-mGPT VQGAN decoder (Meta's ``vqgan.ckpt``, taming VQModel) in NumPy.

Example::

    dec = load_chameleon_vq("chameleon/tokenizer")     # vqgan.ckpt (+ vqgan.yaml) or .safetensors
    pixels = dec.decode(codes)                         # (B, h, w) ints -> (B, 16h, 16w, 3) uint8
    tmap = chameleon_image_tokens(read_vocabulary("Lumina-mGPT-7B-768"))
    pixels = dec.decode(tmap.codes(token_grid))        # vocabulary ids (EOL stripped) -> pixels

What is computed (shared spec families.md 5.2; Meta/Lumina ``VQModel.decode`` of
``quantize.get_codebook_entry(codes)``): x = E[codes] (plain codebook rows, no L2
normalisation), post_quant_conv 1x1, conv_in 3x3, mid (block_1, attn_1, block_2), up levels
n-1 .. 0 (``decoder.up.{lev}``, num_res_blocks + 1 ResnetBlocks each, optional attention after
each block, nearest x2 + 3x3 conv on all but level 0), GroupNorm(32, 1e-6) + swish, conv_out.
The layers are zipar.families.vq16's (same ResnetBlock and AttnBlock; only the key layout,
the codebook and the pixel rounding differ). The structure is read from the keys and shapes;
an optional vqgan.yaml is cross-checked against them.

Pixels (:func:`to_pixels`, Chameleon's ``_pil_from_chw_tensor``):
``uint8(trunc(255 * float32((clip(y, -1, 1) + 1) / 2)))``.

Loading: ``vqgan.ckpt`` is read with zipar.io's restricted torch unpickler (tensors, dicts and
lists only; a checkpoint that pickles other objects is refused with a CheckpointError; convert
it once with torch, ``safetensors.torch.save_file(torch.load(p)["state_dict"], out)``, and pass
the .safetensors file). Only ``decoder.*``, ``post_quant_conv.*`` and
``quantize.embedding.weight`` are read; the encoder, quant_conv and the training loss modules are
ignored.
"""

from __future__ import annotations

import os
import re
from typing import Any, Dict, List, Optional

import numpy as np

from ..io.errors import CheckpointError
from ..io.formats import load_state_dict
from .image_tokens import chameleon_image_tokens, read_vocabulary
from .vq16 import GROUPS, _Attn, _Resnet, decode_latent_images, run_decoder

__all__ = ["ChameleonVQDecoder", "load_chameleon_vq", "load_chameleon_image_tokens", "to_pixels",
           "read_vqgan_yaml", "random_chameleon_vq_state_dict", "chameleon_image_tokens"]

_KEEP = ("decoder.", "post_quant_conv.", "quantize.embedding.weight")


def to_pixels(y: np.ndarray) -> np.ndarray:
    """Decoder output (B, 3, H, W) -> (B, H, W, 3) uint8, Chameleon's rounding (truncation)."""
    y = np.asarray(y)
    if y.ndim != 4 or y.shape[1] != 3:
        raise ValueError(f"expected a (B, 3, H, W) array, got shape {y.shape}")
    u = (np.clip(y.astype(np.float32), -1.0, 1.0) + np.float32(1.0)) / np.float32(2.0)
    u = u * np.float32(255.0)
    return u.astype(np.uint8).transpose(0, 2, 3, 1).copy()


# --------------------------------------------------------------------------------------------
# vqgan.yaml: only the scalar / flow-list fields of model.params and ddconfig are needed
# --------------------------------------------------------------------------------------------

_YAML_FIELDS = ("embed_dim", "n_embed", "z_channels", "ch", "ch_mult", "num_res_blocks",
                "out_ch", "attn_resolutions", "resolution", "double_z")


def _yaml_value(text: str):
    t = text.split("#", 1)[0].strip()
    if t.startswith("[") and t.endswith("]"):
        inner = t[1:-1].strip()
        return [int(v) for v in inner.split(",") if v.strip()] if inner else []
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    try:
        return int(t)
    except ValueError:
        try:
            return float(t)
        except ValueError:
            return t


def read_vqgan_yaml(path) -> Dict[str, object]:
    """The VQGAN hyperparameters of a taming-style vqgan.yaml (embed_dim, n_embed, z_channels,
    ch, ch_mult, num_res_blocks, out_ch, attn_resolutions, resolution, double_z), read as
    ``key: value`` lines (no YAML library needed; block-style lists are read too)."""
    path = os.fspath(path)
    try:
        with open(path, "r", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read: {e}") from None
    out: Dict[str, Any] = {}
    pending: Optional[str] = None
    for raw in lines:
        line = raw.split("#", 1)[0].rstrip()
        s = line.strip()
        if not s:
            continue
        if pending is not None and s.startswith("- "):
            out.setdefault(pending, []).append(_yaml_value(s[2:]))  # block list item
            continue
        pending = None
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)\s*:\s*(.*)$", s)
        if not m or m.group(1) not in _YAML_FIELDS:
            continue
        key, val = m.group(1), m.group(2)
        if val == "":
            pending = key
            out[key] = []
        else:
            out[key] = _yaml_value(val)
    return out


# --------------------------------------------------------------------------------------------
# Decoder
# --------------------------------------------------------------------------------------------

class _Expect:
    def __init__(self, sd):
        self.sd = sd
        self.shapes: Dict[str, tuple] = {}

    def shape(self, key, ndim):
        if key not in self.sd:
            raise ValueError(f"VQGAN state dict: missing key {key!r}")
        s = tuple(np.shape(self.sd[key]))
        if len(s) != ndim:
            raise ValueError(f"VQGAN state dict: {key!r} has shape {s}, expected {ndim} dims")
        return s

    def conv(self, prefix, cin, cout, k):
        self.shapes[prefix + ".weight"] = (cout, cin, k, k)
        self.shapes[prefix + ".bias"] = (cout,)

    def norm(self, prefix, c):
        if c % GROUPS:
            raise ValueError(f"VQGAN state dict: {prefix!r} normalises {c} channels, not a "
                             f"multiple of GroupNorm's {GROUPS} groups")
        self.shapes[prefix + ".weight"] = (c,)
        self.shapes[prefix + ".bias"] = (c,)

    def resnet(self, prefix, cin):
        cout = self.shape(prefix + ".conv1.weight", 4)[0]
        self.norm(prefix + ".norm1", cin)
        self.conv(prefix + ".conv1", cin, cout, 3)
        self.norm(prefix + ".norm2", cout)
        self.conv(prefix + ".conv2", cout, cout, 3)
        if cin != cout:
            self.conv(prefix + ".nin_shortcut", cin, cout, 1)
        return cout

    def attn(self, prefix, c):
        self.norm(prefix + ".norm", c)
        for n in ("q", "k", "v", "proj_out"):
            self.conv(f"{prefix}.{n}", c, c, 1)


def _count(keys, pattern: str, what: str) -> int:
    rx = re.compile(pattern)
    idx = sorted({int(m.group(1)) for k in keys for m in [rx.match(k)] if m})
    if idx != list(range(len(idx))):
        raise ValueError(f"VQGAN state dict: {what} indices {idx} are not 0..n-1")
    return len(idx)


class ChameleonVQDecoder:
    """Chameleon VQGAN decoder: codes (B, h, w) -> pixels (B, s h, s w, 3) uint8 (s = 16).

    ``state_dict``: Meta's names (a Lightning checkpoint's "state_dict" entry or its contents;
    other namespaces are ignored). ``config``: optional dict from :func:`read_vqgan_yaml`,
    checked against the shapes (ValueError on a disagreement).

    Attributes: codebook_size (8192), embed_dim (256), z_channels, channels (per level, level 0
    first), num_res_blocks, attn_levels, scale.
    """

    def __init__(self, state_dict: Dict[str, np.ndarray], *, config: Optional[dict] = None):
        sd: Dict[str, Any] = state_dict
        if isinstance(sd.get("state_dict"), dict):
            sd = sd["state_dict"]
        sd = {k: v for k, v in sd.items() if isinstance(k, str) and k.startswith(_KEEP)}
        keys = list(sd)
        ex = _Expect(sd)
        K, e = ex.shape("quantize.embedding.weight", 2)
        ex.shapes["quantize.embedding.weight"] = (K, e)
        zc = ex.shape("post_quant_conv.weight", 4)[0]
        ex.conv("post_quant_conv", e, zc, 1)
        c = ex.shape("decoder.conv_in.weight", 4)[0]
        ex.conv("decoder.conv_in", zc, c, 3)
        for blk in ("block_1", "block_2"):
            if ex.resnet(f"decoder.mid.{blk}", c) != c:
                raise ValueError(f"VQGAN state dict: decoder.mid.{blk} must keep {c} channels")
        ex.attn("decoder.mid.attn_1", c)
        n_lev = _count(keys, r"^decoder\.up\.(\d+)\.", "decoder.up")
        if n_lev == 0:
            raise ValueError("VQGAN state dict: missing key 'decoder.up.0.block.0.conv1.weight'")
        plan = []
        n_res = None
        for lev in reversed(range(n_lev)):
            pre = f"decoder.up.{lev}"
            nb = _count(keys, re.escape(pre) + r"\.block\.(\d+)\.", pre + ".block")
            na = _count(keys, re.escape(pre) + r"\.attn\.(\d+)\.", pre + ".attn")
            if n_res is None:
                n_res = nb
            if nb == 0 or nb != n_res:
                raise ValueError(f"VQGAN state dict: {pre} has {nb} ResnetBlocks, expected "
                                 f"{n_res} like the other levels")
            if na not in (0, nb):
                raise ValueError(f"VQGAN state dict: {pre} has {nb} blocks but {na} attention "
                                 "blocks")
            blocks = []
            for j in range(nb):
                cout = ex.resnet(f"{pre}.block.{j}", c)
                blocks.append((c, cout))
                c = cout
                if na:
                    ex.attn(f"{pre}.attn.{j}", c)
            if lev != 0:
                ex.conv(f"{pre}.upsample.conv", c, c, 3)
            plan.append((lev, blocks, bool(na)))
        ex.norm("decoder.norm_out", c)
        out_ch = ex.shape("decoder.conv_out.weight", 4)[0]
        if out_ch != 3:
            raise ValueError(f"VQGAN state dict: conv_out has {out_ch} output channels, "
                             "expected 3")
        ex.conv("decoder.conv_out", c, 3, 3)
        for k, s in ex.shapes.items():
            if k not in sd:
                raise ValueError(f"VQGAN state dict: missing key {k!r}")
            got = tuple(np.shape(sd[k]))
            if got != s:
                raise ValueError(f"VQGAN state dict: {k!r} has shape {got}, expected {s}")
        for k in keys:
            if k not in ex.shapes:
                raise ValueError(f"VQGAN state dict: unexpected key {k!r}")

        self.codebook_size, self.embed_dim, self.z_channels = int(K), int(e), int(zc)
        assert n_res is not None  # the plan has at least one level
        self.num_res_blocks = n_res - 1  # the config's value: n_res blocks per level
        self.channels = [blocks[-1][1] for _, blocks, _ in reversed(plan)]
        self.attn_levels = sorted(lev for lev, _, a in plan if a)
        self.scale = 2 ** (n_lev - 1)
        if config:
            self._check_config(config)

        def f32(k):
            try:
                a = np.array(sd[k], dtype=np.float32)
            except (TypeError, ValueError) as err:
                raise ValueError(f"VQGAN state dict: {k!r} is not a numeric array ({err})") \
                    from None
            if not np.all(np.isfinite(a)):
                raise ValueError(f"VQGAN state dict: {k!r} holds non-finite values")
            return a

        def params(prefix):
            p = {}
            for k, s in ex.shapes.items():
                if k.startswith(prefix + "."):
                    a = f32(k)
                    if a.ndim == 4:  # (Cout, Cin, kh, kw) -> (kh*kw*Cin, Cout)
                        a = np.ascontiguousarray(a.transpose(2, 3, 1, 0).reshape(-1, a.shape[0]))
                    p[k[len(prefix) + 1:]] = a
            return p

        self.codebook = f32("quantize.embedding.weight")  # (K, e), used as stored
        pq = params("post_quant_conv")
        self._post_quant = (pq["weight"], pq["bias"])
        ci = params("decoder.conv_in")
        self._conv_in = (ci["weight"], ci["bias"])
        c0 = ex.shapes["decoder.conv_in.bias"][0]
        self._mid: List[Any] = [_Resnet(params("decoder.mid.block_1"), c0, c0),
                     _Attn(params("decoder.mid.attn_1"), c0),
                     _Resnet(params("decoder.mid.block_2"), c0, c0)]
        self._levels: List[tuple] = []
        for lev, blocks, has_attn in plan:
            pre = f"decoder.up.{lev}"
            layers: List[Any] = []
            for j, (cin, cout) in enumerate(blocks):
                layers.append(_Resnet(params(f"{pre}.block.{j}"), cin, cout))
                if has_attn:
                    layers.append(_Attn(params(f"{pre}.attn.{j}"), cout))
            up = None
            if lev != 0:
                u = params(f"{pre}.upsample.conv")
                up = (u["weight"], u["bias"])
            self._levels.append((layers, up))
        no = params("decoder.norm_out")
        self._norm_out = (no["weight"], no["bias"])
        co = params("decoder.conv_out")
        self._conv_out = (co["weight"], co["bias"])

    def _check_config(self, cfg: dict) -> None:
        got = {"n_embed": self.codebook_size, "embed_dim": self.embed_dim,
               "z_channels": self.z_channels, "num_res_blocks": self.num_res_blocks,
               "out_ch": 3}
        ch = self.channels
        for key, val in got.items():
            if key in cfg and cfg[key] != val:
                raise ValueError(f"VQGAN config says {key} = {cfg[key]!r} but the weights have "
                                 f"{val}")
        if "ch" in cfg and "ch_mult" in cfg:
            want = [cfg["ch"] * m for m in cfg["ch_mult"]]
            if want != ch:
                raise ValueError(f"VQGAN config says ch {cfg['ch']} x ch_mult {cfg['ch_mult']} "
                                 f"= {want} channels per level but the weights have {ch}")
        if cfg.get("double_z") not in (None, False):
            raise ValueError("VQGAN config has double_z true; Chameleon's decoder has false")

    # ---- public API
    def embed(self, codes) -> np.ndarray:
        """codes (B, h, w) ints in [0, codebook_size) -> latent (B, embed_dim, h, w) float32."""
        t = np.asarray(codes)
        if t.dtype == bool or not np.issubdtype(t.dtype, np.integer):
            raise ValueError(f"codes must be an integer array, got dtype {t.dtype}")
        if t.ndim != 3:
            raise ValueError(f"codes must have shape (B, h, w), got {t.shape}")
        if t.shape[1] < 1 or t.shape[2] < 1:
            raise ValueError(f"code grid must be at least 1x1, got {t.shape[1:]}")
        if t.size and (t.min() < 0 or t.max() >= self.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.codebook_size}), got values in "
                             f"[{t.min()}, {t.max()}]")
        return self.codebook[t].transpose(0, 3, 1, 2).copy()

    def decode_latent(self, z) -> np.ndarray:
        """Latent (B, embed_dim, h, w) -> decoder output (B, 3, s h, s w) float32, unclipped."""
        return decode_latent_images(z, self.embed_dim, self.scale, self._decode_one)

    def decode(self, codes) -> np.ndarray:
        """codes (B, h, w) ints -> pixels (B, s h, s w, 3) uint8."""
        return to_pixels(self.decode_latent(self.embed(codes)))

    def _decode_one(self, x: np.ndarray) -> np.ndarray:
        return run_decoder(x, self._post_quant, self._conv_in, self._mid, self._levels,
                           self._norm_out, self._conv_out)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

def _wanted(name: str) -> bool:
    return name.startswith(_KEEP)


def load_chameleon_vq(path, config=None) -> ChameleonVQDecoder:
    """A :class:`ChameleonVQDecoder` from ``vqgan.ckpt`` / a .safetensors conversion, or from
    a folder holding one of them (vqgan.safetensors preferred, then vqgan.ckpt) and optionally
    ``vqgan.yaml``. ``config``: a yaml path or a dict (read_vqgan_yaml's keys) to cross-check;
    by default the folder's / the file's sibling vqgan.yaml when present."""
    path = os.fspath(path)
    if os.path.isdir(path):
        folder = path
        for name in ("vqgan.safetensors", "vqgan.ckpt"):
            if os.path.isfile(os.path.join(path, name)):
                path = os.path.join(path, name)
                break
        else:
            raise CheckpointError(f"{folder}: no vqgan.safetensors or vqgan.ckpt in this folder")
    elif not os.path.isfile(path):
        raise CheckpointError(f"{path}: no such file or folder")
    if config is None:
        y = os.path.join(os.path.dirname(path), "vqgan.yaml")
        config = read_vqgan_yaml(y) if os.path.isfile(y) else None
    elif not isinstance(config, dict):
        config = read_vqgan_yaml(config)
    sd = load_state_dict(path, select=_wanted)
    try:
        return ChameleonVQDecoder(sd, config=config)
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from None


def load_chameleon_image_tokens(path):
    """The image token map of a Lumina-mGPT / Chameleon folder or tokenizer file."""
    return chameleon_image_tokens(read_vocabulary(path))


# --------------------------------------------------------------------------------------------
# Random weights with Meta's names (benchmarks, tests)
# --------------------------------------------------------------------------------------------

def random_chameleon_vq_state_dict(ch: int = 128, ch_mult=(1, 1, 2, 2, 4), z_channels: int = 256,
                                   embed_dim: int = 256, codebook_size: int = 8192,
                                   num_res_blocks: int = 2, attn_levels=(),
                                   seed: int = 0) -> Dict[str, np.ndarray]:
    """Random float32 decoder weights in Meta's vqgan.ckpt layout (defaults: the real one).

    Conv weights ~ N(0, 1/fan_in); norm weights ~ 1 + N(0, 0.1); biases ~ N(0, 0.02).
    """
    rng = np.random.default_rng(seed)
    f32 = np.float32
    sd: Dict[str, np.ndarray] = {}

    def conv(name, cin, cout, k):
        w = rng.standard_normal((cout, cin, k, k), f32)
        sd[name + ".weight"] = w / f32(np.sqrt(cin * k * k))
        sd[name + ".bias"] = f32(0.02) * rng.standard_normal(cout, f32)

    def norm(name, c):
        sd[name + ".weight"] = 1 + f32(0.1) * rng.standard_normal(c, f32)
        sd[name + ".bias"] = f32(0.02) * rng.standard_normal(c, f32)

    def resnet(name, cin, cout):
        norm(name + ".norm1", cin)
        conv(name + ".conv1", cin, cout, 3)
        norm(name + ".norm2", cout)
        conv(name + ".conv2", cout, cout, 3)
        if cin != cout:
            conv(name + ".nin_shortcut", cin, cout, 1)

    def attn(name, c):
        norm(name + ".norm", c)
        for p in ("q", "k", "v", "proj_out"):
            conv(f"{name}.{p}", c, c, 1)

    sd["quantize.embedding.weight"] = rng.standard_normal((codebook_size, embed_dim), f32)
    conv("post_quant_conv", embed_dim, z_channels, 1)
    c = ch * ch_mult[-1]
    conv("decoder.conv_in", z_channels, c, 3)
    resnet("decoder.mid.block_1", c, c)
    attn("decoder.mid.attn_1", c)
    resnet("decoder.mid.block_2", c, c)
    for lev in reversed(range(len(ch_mult))):
        cout = ch * ch_mult[lev]
        for j in range(num_res_blocks + 1):
            resnet(f"decoder.up.{lev}.block.{j}", c, cout)
            c = cout
            if lev in attn_levels:
                attn(f"decoder.up.{lev}.attn.{j}", c)
        if lev != 0:
            conv(f"decoder.up.{lev}.upsample.conv", c, c, 3)
    norm("decoder.norm_out", c)
    conv("decoder.conv_out", c, 3, 3)
    return sd
