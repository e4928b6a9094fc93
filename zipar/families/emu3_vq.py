"""Emu3 vision tokenizer decoder (Emu3VQVAE, single image: codes -> pixels) in NumPy.

Example::

    dec = load_emu3_vq("Emu3-Gen-hf")            # or the BAAI/Emu3-VisionTokenizer folder
    pixels = dec.decode(codes)                   # codes (B, h, w) ints -> (B, 8h, 8w, 3) uint8
    tmap = emu3_image_tokens(read_vocabulary("Emu3-Gen-hf"))
    pixels = dec.decode(tmap.codes(token_grid))  # from vocabulary ids (EOL already stripped)

What is computed (shared spec families.md 5.1; transformers' ``Emu3VQVAE.decode`` on a 3-D code
array, i.e. one image, returns frame 0 of a 4-frame video):

* Every temporal conv is a causal Conv3d with two zero frames in front, and the temporal
  upsampling only repeats frames, so frame 0 sees only the last temporal tap ``W[:, :, 2]`` of
  each kernel: the 3-D convs become 2-D ones (3x3, or 1x1 for post_quant_conv).
* q = E[codes] (4 channels); z = post_quant_conv(q); the temporal stack (2 TemporalResnetBlocks
  with eval BatchNorm, eps 1e-5, then 2 time_conv + swish) runs on z and on q with the same
  weights; call the results z and zq.
* SpatialNorm(x) = GroupNorm(x) * conv_y(zq') + conv_b(zq') with zq' = zq repeated to x's size;
  it is every norm of the decoder (ResnetBlocks, attention norms, norm_out).
* conv_in, middle (Res, Attn, Res), up levels n-1 .. 0 (num_res_blocks + 1 ResnetBlocks each, an
  attention after each block on the levels in attn_resolutions, nearest x2 + 3x3 conv on all but
  level 0), norm_out, swish, conv_out. Attention: Linear q, k, v, out with biases over the h*w
  positions, ``num_heads`` heads (1 in the released model), scale head_dim**-0.5, residual.

Weights are accepted in both name layouts: transformers' (``vqmodel.`` prefix on disk in the
-hf checkpoints, ``model.vqmodel.`` in memory, ``middle_block``, ``up_block.up``, ``attn_norms``,
``q_proj``...) and the original BAAI/Emu3-VisionTokenizer one (``mid``, ``up``, ``attn.{j}.norm``,
1x1-conv ``q``/``k``/``v``/``proj_out``). The encoder and quant_conv are ignored. Structure
(channels, levels, blocks, attention placement) is read from the keys and shapes.

Pixels (:func:`to_pixels`): Emu3's image processor postprocess with mean = std = 0.5:
``uint8(trunc(clip(float32(float64((y + 1) / 2) * 255), 0, 255)))``.

Numerics as zipar.families.vq16 (channels-last float32, im2col 3x3 convs, GroupNorm statistics
in float64); activations are processed one image at a time.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..io.errors import CheckpointError
from ..io.formats import load_state_dict
from ..io.safetensors import read_safetensors
from .image_tokens import emu3_image_tokens, read_vocabulary
from .vq16 import (GROUPS, _conv1x1, _conv3x3, _group_norm, _swish_inplace, _upsample2,
                   decode_latent_images)

__all__ = ["Emu3VQDecoder", "load_emu3_vq", "load_emu3_image_tokens", "to_pixels",
           "random_emu3_vq_state_dict", "canonical_emu3_vq_names", "emu3_image_tokens"]

BATCHNORM_EPS = 1e-5  # nn.BatchNorm3d default
_ATTN_QUERY_CHUNK = 2048  # queries per softmax block: bounds the score matrix to chunk x N


# --------------------------------------------------------------------------------------------
# Pixels
# --------------------------------------------------------------------------------------------

def to_pixels(y: np.ndarray) -> np.ndarray:
    """Decoder output (B, 3, H, W) -> (B, H, W, 3) uint8 as Emu3's postprocess (truncation)."""
    y = np.asarray(y)
    if y.ndim != 4 or y.shape[1] != 3:
        raise ValueError(f"expected a (B, 3, H, W) array, got shape {y.shape}")
    u = (y.astype(np.float32) + np.float32(1.0)) / np.float32(2.0)  # unnormalise, float32
    u = (u.astype(np.float64) * 255.0).astype(np.float32)           # rescale in float64
    u = np.clip(u, 0.0, 255.0)
    return u.astype(np.uint8).transpose(0, 2, 3, 1).copy()


# --------------------------------------------------------------------------------------------
# Names: original (VisionTokenizer) / transformers on disk / in memory -> one canonical layout
# --------------------------------------------------------------------------------------------

_KEEP = ("decoder.", "post_quant_conv.", "quantize.embedding.weight")
_IGNORE = ("encoder.", "quant_conv.")
_ORIG_RENAMES = [  # applied in order; original name -> transformers name (spec 5.1)
    (re.compile(r"^decoder\.mid\.attn_1\.norm\."), "decoder.middle_block.attn_norm."),
    (re.compile(r"^decoder\.up\.(\d+)\.attn\.(\d+)\.norm\."),
     r"decoder.up_block.up.\1.attn_norms.\2."),
    (re.compile(r"^decoder\.mid\."), "decoder.middle_block."),
    (re.compile(r"^decoder\.up\."), "decoder.up_block.up."),
]
_ORIG_ATTN = re.compile(r"^(decoder\.(?:middle_block\.attn_1|up_block\.up\.\d+\.attn\.\d+))\."
                        r"(q|k|v|proj_out)\.(weight|bias)$")
_ATTN_NAMES = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "proj_out": "out_proj"}


def canonical_emu3_vq_names(state_dict: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """The decoder tensors of an Emu3 VQ state dict under transformers' names (no prefix).

    Accepts the -hf layout (``vqmodel.``/``model.vqmodel.`` prefix; a whole Emu3 checkpoint
    may be passed, the LLM tensors are skipped) or the original VisionTokenizer layout (no
    prefix). Original 1x1-conv attention kernels (C, C, 1, 1) are squeezed to Linear (C, C).
    Arrays are not copied.
    """
    prefixed = [k for k in state_dict if isinstance(k, str) and
                (k.startswith("vqmodel.") or k.startswith("model.vqmodel."))]
    out: Dict[str, np.ndarray] = {}
    if prefixed:
        for k in prefixed:
            name = k.split("vqmodel.", 1)[1]
            if name.startswith(_KEEP):
                out[name] = state_dict[k]
        return out
    original = any(isinstance(k, str) and (k.startswith("decoder.mid.") or
                                           k.startswith("decoder.up."))
                   for k in state_dict)
    for k, v in state_dict.items():
        if not isinstance(k, str):
            raise ValueError(f"Emu3 VQ state dict: key {k!r} is not a string")
        if k.startswith(_IGNORE) or not k.startswith(_KEEP):
            continue
        name = k
        if original:
            for rx, rep in _ORIG_RENAMES:
                name = rx.sub(rep, name)
            m = _ORIG_ATTN.match(name)
            if m:
                name = f"{m.group(1)}.{_ATTN_NAMES[m.group(2)]}.{m.group(3)}"
                if m.group(3) == "weight" and np.ndim(v) == 4:
                    if tuple(np.shape(v)[2:]) != (1, 1):
                        raise ValueError(f"Emu3 VQ state dict: {k!r} has shape {np.shape(v)}, "
                                         "expected a 1x1 conv kernel")
                    v = np.asarray(v).reshape(np.shape(v)[:2])
        if name in out:
            raise ValueError(f"Emu3 VQ state dict: {k!r} collides with another key after "
                             "renaming to transformers' names")
        out[name] = v
    return out


# --------------------------------------------------------------------------------------------
# Layers (channels-last (H, W, C) float32)
# --------------------------------------------------------------------------------------------

def _repeat_to(a: np.ndarray, f: int) -> np.ndarray:
    """(h, w, C) -> (f h, f w, C) nearest (a read-only broadcast view reshaped)."""
    if f == 1:
        return a
    h, w, c = a.shape
    return np.broadcast_to(a[:, None, :, None, :], (h, f, w, f, c)).reshape(h * f, w * f, c)


class _SpatialNorm:
    """GroupNorm(x) * conv_y(zq) + conv_b(zq), zq nearest-resized to x's size.

    The 1x1 convs commute with nearest resizing, so they run at zq's own size and the result
    is broadcast over each f x f pixel block without materialising zq'.
    """

    def __init__(self, p: Dict[str, np.ndarray]):
        self.p = p

    def __call__(self, x: np.ndarray, zq: np.ndarray, swish: bool) -> np.ndarray:
        p = self.p
        H, W, C = x.shape
        h, w, _ = zq.shape
        f = H // h
        y = _conv1x1(zq, p["conv_y.weight"], p["conv_y.bias"])  # (h, w, C)
        b = _conv1x1(zq, p["conv_b.weight"], p["conv_b.bias"])
        n = _group_norm(x, p["norm_layer.weight"], p["norm_layer.bias"], swish=False)
        v = n.reshape(h, f, w, f, C)
        v *= y[:, None, :, None, :]
        v += b[:, None, :, None, :]
        if swish:
            _swish_inplace(n)
        return n


class _Resnet:
    def __init__(self, p: Dict[str, np.ndarray], cin: int, cout: int):
        self.p, self.cin, self.cout = p, cin, cout
        self.norm1 = _SpatialNorm(_sub(p, "norm1"))
        self.norm2 = _SpatialNorm(_sub(p, "norm2"))

    def __call__(self, x: np.ndarray, zq: np.ndarray) -> np.ndarray:
        p = self.p
        h = self.norm1(x, zq, swish=True)
        h = _conv3x3(h, p["conv1.weight"], p["conv1.bias"])
        h = self.norm2(h, zq, swish=True)
        h = _conv3x3(h, p["conv2.weight"], p["conv2.bias"])
        if self.cin != self.cout:
            x = _conv1x1(x, p["nin_shortcut.weight"], p["nin_shortcut.bias"])
        h += x
        return h


class _Attn:
    """x + out_proj(MHA(SpatialNorm(x))) over the H*W positions (Linear q, k, v with biases)."""

    def __init__(self, p: Dict[str, np.ndarray], norm: Dict[str, np.ndarray], num_heads: int):
        self.norm = _SpatialNorm(norm)
        self.heads = num_heads
        self.wqkv = np.concatenate([p["q_proj.weight"], p["k_proj.weight"], p["v_proj.weight"]],
                                   axis=1)  # (C, 3C)
        self.bqkv = np.concatenate([p["q_proj.bias"], p["k_proj.bias"], p["v_proj.bias"]])
        self.wo, self.bo = p["out_proj.weight"], p["out_proj.bias"]

    def __call__(self, x: np.ndarray, zq: np.ndarray) -> np.ndarray:
        H, W, C = x.shape
        N, nh = H * W, self.heads
        hd = C // nh
        t = self.norm(x, zq, swish=False).reshape(N, C)
        qkv = t @ self.wqkv
        qkv += self.bqkv
        scale = np.float32(hd ** -0.5)
        o = np.empty((N, C), np.float32)
        for hh in range(nh):
            q = qkv[:, hh * hd:(hh + 1) * hd]
            k = qkv[:, C + hh * hd:C + (hh + 1) * hd]
            v = qkv[:, 2 * C + hh * hd:2 * C + (hh + 1) * hd]
            kt = np.ascontiguousarray(k.T)
            for r0 in range(0, N, _ATTN_QUERY_CHUNK):
                r1 = min(N, r0 + _ATTN_QUERY_CHUNK)
                s = q[r0:r1] @ kt
                s *= scale
                s -= s.max(axis=1, keepdims=True)
                np.exp(s, out=s)
                s /= s.sum(axis=1, keepdims=True)
                o[r0:r1, hh * hd:(hh + 1) * hd] = s @ v
        o = o @ self.wo
        o += self.bo
        o = o.reshape(H, W, C)
        o += x
        return o


def _batchnorm_swish(x: np.ndarray, p: Dict[str, np.ndarray]) -> np.ndarray:
    """Eval BatchNorm ((x - mean) / sqrt(var + eps) * w + b) then swish, on (h, w, C)."""
    inv = (1.0 / np.sqrt(p["running_var"].astype(np.float64) + BATCHNORM_EPS)).astype(np.float32)
    y = (x - p["running_mean"]) * inv
    y *= p["weight"]
    y += p["bias"]
    _swish_inplace(y)
    return y


def _sub(p: Dict[str, np.ndarray], prefix: str) -> Dict[str, np.ndarray]:
    n = len(prefix) + 1
    return {k[n:]: v for k, v in p.items() if k.startswith(prefix + ".")}


# --------------------------------------------------------------------------------------------
# Structure and weights
# --------------------------------------------------------------------------------------------

class _Expect:
    """Expected name -> shape map, filled while the structure is inferred from the keys."""

    def __init__(self, sd: Dict[str, np.ndarray]):
        self.sd = sd
        self.shapes: Dict[str, Tuple[int, ...]] = {}

    def shape(self, key: str, ndim: int) -> Tuple[int, ...]:
        if key not in self.sd:
            raise ValueError(f"Emu3 VQ state dict: missing key {key!r}")
        s = tuple(np.shape(self.sd[key]))
        if len(s) != ndim:
            raise ValueError(f"Emu3 VQ state dict: {key!r} has shape {s}, expected {ndim} dims")
        return s

    def want(self, key: str, shape) -> None:
        self.shapes[key] = tuple(shape)

    def conv(self, prefix: str, cin: int, cout: int, kshape) -> None:
        self.want(prefix + ".weight", (cout, cin) + tuple(kshape))
        self.want(prefix + ".bias", (cout,))

    def linear(self, prefix: str, c: int) -> None:
        self.want(prefix + ".weight", (c, c))
        self.want(prefix + ".bias", (c,))

    def groupnorm(self, prefix: str, c: int) -> None:
        if c % GROUPS:
            raise ValueError(f"Emu3 VQ state dict: {prefix!r} normalises {c} channels, not a "
                             f"multiple of GroupNorm's {GROUPS} groups")
        self.want(prefix + ".weight", (c,))
        self.want(prefix + ".bias", (c,))

    def spatial_norm(self, prefix: str, zc: int, c: int) -> None:
        self.groupnorm(prefix + ".norm_layer", c)
        self.conv(prefix + ".conv_y", zc, c, (1, 1))
        self.conv(prefix + ".conv_b", zc, c, (1, 1))

    def resnet(self, prefix: str, zc: int, cin: int) -> int:
        cout = self.shape(prefix + ".conv1.weight", 4)[0]
        self.spatial_norm(prefix + ".norm1", zc, cin)
        self.conv(prefix + ".conv1", cin, cout, (3, 3))
        self.spatial_norm(prefix + ".norm2", zc, cout)
        self.conv(prefix + ".conv2", cout, cout, (3, 3))
        if cin != cout:
            self.conv(prefix + ".nin_shortcut", cin, cout, (1, 1))
        return cout

    def attn(self, prefix: str, c: int) -> None:
        for name in ("q_proj", "k_proj", "v_proj", "out_proj"):
            self.linear(f"{prefix}.{name}", c)


def _indices(keys, pattern: str) -> List[int]:
    rx = re.compile(pattern)
    idx = sorted({int(m.group(1)) for k in keys for m in [rx.match(k)] if m})
    return idx


def _count(keys, pattern: str, what: str) -> int:
    idx = _indices(keys, pattern)
    if idx != list(range(len(idx))):
        raise ValueError(f"Emu3 VQ state dict: {what} indices {idx} are not 0..n-1")
    return len(idx)


class Emu3VQDecoder:
    """Emu3VQVAE's decoder for single images: codes (B, h, w) -> (B, s h, s w, 3) uint8.

    ``state_dict``: the VQ tensors in either name layout (see :func:`canonical_emu3_vq_names`;
    a whole -hf checkpoint state dict is fine). ``num_heads``: attention heads (config
    ``vq_config.num_attention_heads``, 1 in Emu3). Arrays are copied to float32.

    Attributes: codebook_size (32768), embed_dim (4), channels (per up level, level 0 first),
    attn_levels, num_res_blocks, scale (8 for Emu3).
    """

    def __init__(self, state_dict: Dict[str, np.ndarray], *, num_heads: int = 1):
        sd = canonical_emu3_vq_names(state_dict)
        keys = list(sd)
        ex = _Expect(sd)
        K, e = ex.shape("quantize.embedding.weight", 2)
        ex.want("quantize.embedding.weight", (K, e))
        zc = ex.shape("post_quant_conv.conv.weight", 5)[0]
        ex.conv("post_quant_conv.conv", e, zc, (3, 1, 1))
        if zc != e:
            raise ValueError(f"Emu3 VQ state dict: post_quant_conv maps {e} -> {zc} channels; "
                             "the decoder needs latent_channels == embed_dim")
        n_trs = _count(keys, r"^decoder\.time_res_stack\.(\d+)\.", "decoder.time_res_stack")
        for i in range(n_trs):
            pre = f"decoder.time_res_stack.{i}"
            for bn in ("norm1", "norm2"):
                for t in ("weight", "bias", "running_mean", "running_var"):
                    ex.want(f"{pre}.{bn}.{t}", (zc,))
            for cv in ("conv1", "conv2"):
                ex.conv(f"{pre}.{cv}.conv", zc, zc, (3, 3, 3))
        n_tc = _count(keys, r"^decoder\.time_conv\.(\d+)\.", "decoder.time_conv")
        for i in range(n_tc):
            ex.conv(f"decoder.time_conv.{i}.conv.conv", zc, zc, (3, 3, 3))
        c = ex.shape("decoder.conv_in.weight", 4)[0]
        ex.conv("decoder.conv_in", zc, c, (3, 3))
        mb = "decoder.middle_block"
        for blk in ("block_1", "block_2"):
            if ex.resnet(f"{mb}.{blk}", e, c) != c:
                raise ValueError(f"Emu3 VQ state dict: {mb}.{blk} must keep {c} channels")
        ex.attn(f"{mb}.attn_1", c)
        ex.spatial_norm(f"{mb}.attn_norm", e, c)
        if c % num_heads:
            raise ValueError(f"num_heads {num_heads} does not divide the attention width {c}")

        n_lev = _count(keys, r"^decoder\.up_block\.up\.(\d+)\.", "decoder.up_block.up")
        if n_lev == 0:
            raise ValueError("Emu3 VQ state dict: missing key "
                             "'decoder.up_block.up.0.block.0.conv1.weight'")
        n_res = None
        plan = []  # (level, [(cin, cout)], attn, upsample), in execution order
        for lev in reversed(range(n_lev)):
            pre = f"decoder.up_block.up.{lev}"
            nb = _count(keys, re.escape(pre) + r"\.block\.(\d+)\.", pre + ".block")
            na = _count(keys, re.escape(pre) + r"\.attn\.(\d+)\.", pre + ".attn")
            if n_res is None:
                n_res = nb
            if nb == 0 or nb != n_res:
                raise ValueError(f"Emu3 VQ state dict: {pre} has {nb} ResnetBlocks, expected "
                                 f"{n_res} like the other levels")
            if na not in (0, nb):
                raise ValueError(f"Emu3 VQ state dict: {pre} has {nb} blocks but {na} "
                                 "attention blocks")
            blocks = []
            for j in range(nb):
                cout = ex.resnet(f"{pre}.block.{j}", e, c)
                blocks.append((c, cout))
                c = cout
                if na:
                    if c % num_heads:
                        raise ValueError(f"num_heads {num_heads} does not divide {c}")
                    ex.attn(f"{pre}.attn.{j}", c)
                    ex.spatial_norm(f"{pre}.attn_norms.{j}", e, c)
            if lev != 0:
                ex.conv(f"{pre}.upsample.conv", c, c, (3, 3))
            plan.append((lev, blocks, bool(na), lev != 0))
        ex.spatial_norm("decoder.norm_out", e, c)
        cout_img = ex.shape("decoder.conv_out.weight", 4)[0]
        if cout_img != 3:
            raise ValueError(f"Emu3 VQ state dict: conv_out has {cout_img} output channels, "
                             "expected 3")
        ex.conv("decoder.conv_out", c, 3, (3, 3))

        for k, s in ex.shapes.items():
            if k not in sd:
                raise ValueError(f"Emu3 VQ state dict: missing key {k!r}")
            got = tuple(np.shape(sd[k]))
            if got != s:
                raise ValueError(f"Emu3 VQ state dict: {k!r} has shape {got}, expected {s}")
        for k in keys:
            if k not in ex.shapes and not k.endswith("num_batches_tracked"):
                raise ValueError(f"Emu3 VQ state dict: unexpected key {k!r}")

        def f32(k):
            try:
                a = np.array(sd[k], dtype=np.float32)
            except (TypeError, ValueError) as err:
                raise ValueError(f"Emu3 VQ state dict: {k!r} is not a numeric array ({err})") \
                    from None
            if not np.all(np.isfinite(a)):
                raise ValueError(f"Emu3 VQ state dict: {k!r} holds non-finite values")
            return a

        def conv_mat(w):
            # (Cout, Cin, kh, kw) -> (kh*kw*Cin, Cout), rows (ky, kx, cin) as _conv3x3 wants
            return np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0]))

        def params(prefix):
            p = {}
            for k, s in ex.shapes.items():
                if not k.startswith(prefix + "."):
                    continue
                a = f32(k)
                if len(s) == 5:
                    a = a[:, :, 2]  # last temporal tap: all frame 0 of a causal conv sees
                if a.ndim == 4:
                    a = conv_mat(a)
                elif a.ndim == 2 and not k.startswith("quantize."):
                    a = np.ascontiguousarray(a.T)  # Linear (out, in) -> (in, out)
                p[k[len(prefix) + 1:]] = a
            return p

        self.codebook = f32("quantize.embedding.weight")  # (K, e), plain rows
        self.codebook_size, self.embed_dim = int(K), int(e)
        self.num_heads = int(num_heads)
        assert n_res is not None  # the plan has at least one level
        self.num_res_blocks = n_res - 1  # the config's value: n_res blocks per level
        self.channels = [blocks[-1][1] for _, blocks, _, _ in reversed(plan)]
        self.attn_levels = sorted(lev for lev, _, a, _ in plan if a)
        self.scale = 2 ** (n_lev - 1)

        pq = params("post_quant_conv.conv")
        self._post_quant = (pq["weight"], pq["bias"])
        self._time_res = [params(f"decoder.time_res_stack.{i}") for i in range(n_trs)]
        self._time_conv = [params(f"decoder.time_conv.{i}.conv.conv") for i in range(n_tc)]
        ci = params("decoder.conv_in")
        self._conv_in = (ci["weight"], ci["bias"])
        c0 = ex.shapes["decoder.conv_in.bias"][0]
        self._mid = (_Resnet(params(f"{mb}.block_1"), c0, c0),
                     _Attn(params(f"{mb}.attn_1"), params(f"{mb}.attn_norm"), num_heads),
                     _Resnet(params(f"{mb}.block_2"), c0, c0))
        self._levels = []
        for lev, blocks, has_attn, up in plan:
            pre = f"decoder.up_block.up.{lev}"
            layers: List[Any] = []
            for j, (cin, cout) in enumerate(blocks):
                layers.append(_Resnet(params(f"{pre}.block.{j}"), cin, cout))
                if has_attn:
                    layers.append(_Attn(params(f"{pre}.attn.{j}"),
                                        params(f"{pre}.attn_norms.{j}"), num_heads))
            upc = None
            if up:
                u = params(f"{pre}.upsample.conv")
                upc = (u["weight"], u["bias"])
            self._levels.append((layers, upc))
        self._norm_out = _SpatialNorm(params("decoder.norm_out"))
        co = params("decoder.conv_out")
        self._conv_out = (co["weight"], co["bias"])

    # ---- public API
    def embed(self, codes) -> np.ndarray:
        """codes (B, h, w) ints in [0, codebook_size) -> q (B, embed_dim, h, w) float32."""
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

    def decode_latent(self, q) -> np.ndarray:
        """Quantized latent q (B, embed_dim, h, w) -> decoder output (B, 3, s h, s w) float32,
        unclipped (what ``Emu3VQVAE.decode`` returns for a 3-D code array)."""
        return decode_latent_images(q, self.embed_dim, self.scale, self._decode_one)

    def decode(self, codes) -> np.ndarray:
        """codes (B, h, w) ints -> pixels (B, s h, s w, 3) uint8 (Emu3's postprocess)."""
        return to_pixels(self.decode_latent(self.embed(codes)))

    # ---- one image, channels-last
    def _temporal(self, x: np.ndarray) -> np.ndarray:
        """The temporal stack at frame 0 on a (h, w, latent) array."""
        for p in self._time_res:
            h = _batchnorm_swish(x, _sub(p, "norm1"))
            h = _conv3x3(h, p["conv1.conv.weight"], p["conv1.conv.bias"])
            h = _batchnorm_swish(h, _sub(p, "norm2"))
            h = _conv3x3(h, p["conv2.conv.weight"], p["conv2.conv.bias"])
            x = x + h
        for p in self._time_conv:
            x = _conv3x3(x, p["weight"], p["bias"])
            _swish_inplace(x)
        return x

    def _decode_one(self, q: np.ndarray) -> np.ndarray:
        """(h, w, embed_dim) -> (s h, s w, 3) float32."""
        z = _conv1x1(q, *self._post_quant)
        z = self._temporal(z)
        zq = self._temporal(q)
        x = _conv3x3(z, *self._conv_in)
        for layer in self._mid:
            x = layer(x, zq)
        for layers, up in self._levels:
            for layer in layers:
                x = layer(x, zq)
            if up is not None:
                x = _conv3x3(_upsample2(x), *up)
        x = self._norm_out(x, zq, swish=True)
        return _conv3x3(x, *self._conv_out)


# --------------------------------------------------------------------------------------------
# Loading from a checkpoint folder or file
# --------------------------------------------------------------------------------------------

def _wanted(name: str) -> bool:
    base = name.split("vqmodel.", 1)[1] if "vqmodel." in name else name
    return base.startswith(_KEEP)


def _read_folder_tensors(folder: str) -> Dict[str, np.ndarray]:
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        try:
            with open(index, "r", encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"{index}: not a readable safetensors index ({err})") from None
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: weight_map is not an object")
        files = sorted({fn for name, fn in weight_map.items()
                        if isinstance(name, str) and _wanted(name)})
        if not files:
            raise CheckpointError(f"{index}: no VQ decoder tensors listed (expected vqmodel.* "
                                  "or decoder.* names)")
        out: Dict[str, np.ndarray] = {}
        for fn in files:
            p = os.path.join(folder, fn)
            if not os.path.isfile(p):
                raise CheckpointError(f"{p}: shard listed in the index is missing")
            tensors, _ = read_safetensors(p, select=_wanted)
            out.update(tensors)
        return out
    st = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
    for name in st + ["pytorch_model.bin"]:
        p = os.path.join(folder, name)
        if os.path.isfile(p):
            return load_state_dict(p, select=_wanted)
    raise CheckpointError(f"{folder}: no model.safetensors(.index.json) or pytorch_model.bin")


def _num_heads_from_config(folder: str) -> int:
    cfg = os.path.join(folder, "config.json")
    if not os.path.isfile(cfg):
        return 1
    try:
        with open(cfg, "r", encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{cfg}: not valid JSON ({err})") from None
    vq = data.get("vq_config", data) if isinstance(data, dict) else {}
    heads = vq.get("num_attention_heads", 1) if isinstance(vq, dict) else 1
    if not isinstance(heads, int) or heads < 1:
        raise CheckpointError(f"{cfg}: num_attention_heads {heads!r} is not a positive integer")
    return heads


def load_emu3_vq(path, *, num_heads: Optional[int] = None) -> Emu3VQDecoder:
    """An :class:`Emu3VQDecoder` from a checkpoint folder or a weights file.

    Folder: a transformers Emu3 checkpoint (``model.safetensors.index.json`` + shards; only
    the shards holding ``vqmodel.*`` tensors are read) or BAAI/Emu3-VisionTokenizer
    (model.safetensors or pytorch_model.bin, original names). ``num_heads`` defaults to
    config.json's ``vq_config.num_attention_heads`` (or 1). A file: any format
    zipar.io.load_state_dict reads.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        sd = _read_folder_tensors(path)
        heads = _num_heads_from_config(path) if num_heads is None else num_heads
    elif os.path.isfile(path):
        sd = load_state_dict(path, select=_wanted)
        heads = 1 if num_heads is None else num_heads
    else:
        raise CheckpointError(f"{path}: no such file or folder")
    try:
        return Emu3VQDecoder(sd, num_heads=heads)
    except ValueError as err:
        raise CheckpointError(f"{path}: {err}") from None


def load_emu3_image_tokens(path):
    """The Emu3 image token map of a checkpoint folder (see zipar.families.image_tokens)."""
    return emu3_image_tokens(read_vocabulary(path))


# --------------------------------------------------------------------------------------------
# Random weights in transformers' layout (benchmarks, tests)
# --------------------------------------------------------------------------------------------

def random_emu3_vq_state_dict(ch: int = 256, ch_mult=(1, 2, 2, 4), embed_dim: int = 4,
                              codebook_size: int = 32768, num_res_blocks: int = 2,
                              attn_levels=(3,), temporal_blocks: int = 2,
                              seed: int = 0) -> Dict[str, np.ndarray]:
    """Random float32 decoder weights in transformers' layout (defaults: Emu3-VisionTokenizer).

    Conv weights ~ N(0, 1/fan_in); norm weights ~ 1 + N(0, 0.1); biases ~ N(0, 0.02);
    BatchNorm statistics: mean N(0, 0.1), var 1 + U(0, 0.5).
    """
    rng = np.random.default_rng(seed)
    sd: Dict[str, np.ndarray] = {}
    f32 = np.float32

    def conv(name, cin, cout, kshape):
        fan = cin * int(np.prod(kshape))
        sd[name + ".weight"] = rng.standard_normal((cout, cin) + tuple(kshape), f32) / f32(
            np.sqrt(fan))
        sd[name + ".bias"] = f32(0.02) * rng.standard_normal(cout, f32)

    def gn(name, c):
        sd[name + ".weight"] = 1 + f32(0.1) * rng.standard_normal(c, f32)
        sd[name + ".bias"] = f32(0.02) * rng.standard_normal(c, f32)

    def snorm(name, c):
        gn(name + ".norm_layer", c)
        conv(name + ".conv_y", embed_dim, c, (1, 1))
        conv(name + ".conv_b", embed_dim, c, (1, 1))

    def resnet(name, cin, cout):
        snorm(name + ".norm1", cin)
        conv(name + ".conv1", cin, cout, (3, 3))
        snorm(name + ".norm2", cout)
        conv(name + ".conv2", cout, cout, (3, 3))
        if cin != cout:
            conv(name + ".nin_shortcut", cin, cout, (1, 1))

    def attn(name, norm_name, c):
        snorm(norm_name, c)
        for p in ("q_proj", "k_proj", "v_proj", "out_proj"):
            sd[f"{name}.{p}.weight"] = rng.standard_normal((c, c), f32) / f32(np.sqrt(c))
            sd[f"{name}.{p}.bias"] = f32(0.02) * rng.standard_normal(c, f32)

    e = embed_dim
    sd["quantize.embedding.weight"] = rng.standard_normal((codebook_size, e), f32)
    conv("post_quant_conv.conv", e, e, (3, 1, 1))
    for i in range(temporal_blocks):
        pre = f"decoder.time_res_stack.{i}"
        for bn in ("norm1", "norm2"):
            gn(f"{pre}.{bn}", e)
            sd[f"{pre}.{bn}.running_mean"] = f32(0.1) * rng.standard_normal(e, f32)
            sd[f"{pre}.{bn}.running_var"] = 1 + f32(0.5) * rng.random(e, f32)
        conv(f"{pre}.conv1.conv", e, e, (3, 3, 3))
        conv(f"{pre}.conv2.conv", e, e, (3, 3, 3))
    for i in range(temporal_blocks):
        conv(f"decoder.time_conv.{i}.conv.conv", e, e, (3, 3, 3))
    c = ch * ch_mult[-1]
    conv("decoder.conv_in", e, c, (3, 3))
    mb = "decoder.middle_block"
    resnet(f"{mb}.block_1", c, c)
    attn(f"{mb}.attn_1", f"{mb}.attn_norm", c)
    resnet(f"{mb}.block_2", c, c)
    for lev in reversed(range(len(ch_mult))):
        pre = f"decoder.up_block.up.{lev}"
        cout = ch * ch_mult[lev]
        for j in range(num_res_blocks + 1):
            resnet(f"{pre}.block.{j}", c, cout)
            c = cout
            if lev in attn_levels:
                attn(f"{pre}.attn.{j}", f"{pre}.attn_norms.{j}", c)
        if lev != 0:
            conv(f"{pre}.upsample.conv", c, c, (3, 3))
    snorm("decoder.norm_out", c)
    conv("decoder.conv_out", c, 3, (3, 3))
    return sd
