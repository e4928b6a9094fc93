"""LlamaGen VQ-16 decoder (token grid -> pixels) in NumPy.

Example::

    dec = VQDecoder(state_dict)              # arrays named as in LlamaGen's VQModel
    pixels = dec.decode(tokens)              # tokens (B, h, w) int -> (B, 16h, 16w, 3) uint8

The structure (channel counts, number of levels, ResnetBlocks per level, where the AttnBlocks and
the upsamplers are) is read from the state dict's keys and shapes, so a reduced-channel decoder
with LlamaGen's key names works as well as the published vq_ds16_c2i.pt / vq_ds16_t2i.pt one.
Only the decoder namespace is used: ``quantize.embedding.weight``, ``post_quant_conv.*`` and
``decoder.*``. The encoder (``encoder.*``, ``quant_conv.*``) and ``quantize.codebook_used`` are
ignored; any other key, a missing key or a mis-shaped array raises ValueError naming the key.

Computation (all float32, one image at a time to bound memory):

* activations are kept channels-last, (H, W, C), so a 1x1 conv is one matmul and a 3x3 conv is
  im2col over a band of rows (at most ``_IM2COL_BYTES`` of columns) followed by one matmul
  (NumPy's OpenBLAS) per band;
* GroupNorm(32 groups, eps 1e-6) sums in float64, subtracts the mean before squaring;
* swish(x) = x * sigmoid(x) is evaluated as 0.5 * x * (1 + tanh(x / 2)) (no exp overflow).

Pixels: ``y`` in [-1, 1] becomes ``floor(clip((y + 1) * 127.5, 0, 255) + 0.5)``, i.e. rounded
half up. That is what LlamaGen's sample scripts write: torchvision's save_image(normalize=True,
value_range=(-1, 1)) maps to [0, 1] and stores ``(x * 255 + 0.5).clamp(0, 255)`` truncated.

Speed (random weights of the real shapes, ``random_state_dict()``; 2-core dev machine, NumPy
2.4 with OpenBLAS 0.3.31): about 3.1 s per 16x16-token (256x256) image with one OpenBLAS
thread, of which 2.9 s are the 3x3 convolutions (249 GFLOP, ~87 GFLOP/s, most of it in the two
128-channel levels at 128x128 and 256x256); GroupNorm + swish take ~0.3 s. Two threads were
slower on that machine while it was shared with other jobs (OpenBLAS threads on a busy core).
"""

from __future__ import annotations

import re
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = ["VQDecoder", "to_pixels", "random_state_dict"]

GROUPS = 32  # GroupNorm groups, fixed in LlamaGen
NORM_EPS = 1e-6
_L2_EPS = 1e-12  # F.normalize's eps: row / max(||row||, eps)
_IM2COL_BYTES = 1 << 23  # at most 8 MiB of im2col columns per matmul band (cache-friendlier)

# keys that belong to the VQ model but not to decoding
_IGNORED_PREFIXES = ("encoder.", "quant_conv.", "quantize.codebook_used")


# --------------------------------------------------------------------------------------------
# Pixel conversion
# --------------------------------------------------------------------------------------------

def to_pixels(y: np.ndarray) -> np.ndarray:
    """Decoder output (B, 3, H, W) float in [-1, 1] -> (B, H, W, 3) uint8, rounded half up."""
    y = np.asarray(y)
    if y.ndim != 4 or y.shape[1] != 3:
        raise ValueError(f"expected a (B, 3, H, W) array, got shape {y.shape}")
    p = np.clip((y.astype(np.float32) + 1.0) * 127.5, 0.0, 255.0)
    return np.floor(p + 0.5).astype(np.uint8).transpose(0, 2, 3, 1).copy()


# --------------------------------------------------------------------------------------------
# Layers on channels-last (H, W, C) float32 arrays
# --------------------------------------------------------------------------------------------

def _group_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, swish: bool) -> np.ndarray:
    """GroupNorm(32, eps 1e-6, affine) over an (H, W, C) array, optionally followed by swish."""
    H, W, C = x.shape
    n = H * W * (C // GROUPS)
    x2 = x.reshape(H * W, C)
    ch_sum = x2.sum(axis=0, dtype=np.float64)  # (C,)
    mean = ch_sum.reshape(GROUPS, -1).sum(axis=1) / n  # (G,)
    mean_c = np.repeat(mean, C // GROUPS).astype(np.float32)  # (C,)
    d = x2 - mean_c
    sq = np.einsum("ij,ij->j", d, d, dtype=np.float64)  # (C,) sum of squares, float64
    var = sq.reshape(GROUPS, -1).sum(axis=1) / n
    rstd = np.repeat(1.0 / np.sqrt(var + NORM_EPS), C // GROUPS)
    d *= (rstd * gamma).astype(np.float32)
    d += beta
    if swish:
        _swish_inplace(d)
    return d.reshape(H, W, C)


def _swish_inplace(x: np.ndarray) -> None:
    """x <- x * sigmoid(x) = 0.5 * x * (1 + tanh(x / 2))."""
    t = np.multiply(x, 0.5)
    np.tanh(t, out=t)
    t += 1.0
    t *= 0.5
    x *= t


def _conv1x1(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """x (H, W, Cin) @ w (Cin, Cout) + b -> (H, W, Cout)."""
    H, W, C = x.shape
    y = np.matmul(x.reshape(H * W, C), w)
    y += b
    return y.reshape(H, W, -1)


def _conv3x3(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """3x3 conv, stride 1, zero padding 1: x (H, W, Cin), w (9*Cin, Cout) -> (H, W, Cout).

    w's rows are ordered (ky, kx, cin), matching the im2col columns built here.
    """
    H, W, C = x.shape
    cout = w.shape[1]
    xp = np.zeros((H + 2, W + 2, C), np.float32)
    xp[1:-1, 1:-1] = x
    y = np.empty((H, W, cout), np.float32)
    band = max(1, min(H, _IM2COL_BYTES // (W * 9 * C * 4)))
    cols = np.empty((band, W, 9, C), np.float32)
    for r0 in range(0, H, band):
        r1 = min(H, r0 + band)
        c = cols[: r1 - r0]
        for ky in range(3):
            for kx in range(3):
                c[:, :, 3 * ky + kx, :] = xp[r0 + ky : r1 + ky, kx : kx + W, :]
        np.matmul(c.reshape(-1, 9 * C), w, out=y[r0:r1].reshape(-1, cout))
    y += b
    return y


def _upsample2(x: np.ndarray) -> np.ndarray:
    """Nearest-neighbour x2: (H, W, C) -> (2H, 2W, C)."""
    H, W, C = x.shape
    return np.broadcast_to(x[:, None, :, None, :], (H, 2, W, 2, C)).reshape(2 * H, 2 * W, C)


# --------------------------------------------------------------------------------------------
# Blocks (weights already converted: conv weights as (k*k*Cin, Cout) float32 matrices)
# --------------------------------------------------------------------------------------------

class _Resnet:
    def __init__(self, p: Dict[str, np.ndarray], cin: int, cout: int):
        self.cin, self.cout = cin, cout
        self.p = p

    def __call__(self, x: np.ndarray) -> np.ndarray:
        p = self.p
        h = _group_norm(x, p["norm1.weight"], p["norm1.bias"], swish=True)
        h = _conv3x3(h, p["conv1.weight"], p["conv1.bias"])
        h = _group_norm(h, p["norm2.weight"], p["norm2.bias"], swish=True)
        h = _conv3x3(h, p["conv2.weight"], p["conv2.bias"])
        if self.cin != self.cout:
            x = _conv1x1(x, p["nin_shortcut.weight"], p["nin_shortcut.bias"])
        h += x
        return h


class _Attn:
    def __init__(self, p: Dict[str, np.ndarray], c: int):
        self.c = c
        self.p = p
        # q, k, v as one (C, 3C) matmul
        self.wqkv = np.concatenate([p["q.weight"], p["k.weight"], p["v.weight"]], axis=1)
        self.bqkv = np.concatenate([p["q.bias"], p["k.bias"], p["v.bias"]])

    def __call__(self, x: np.ndarray) -> np.ndarray:
        p = self.p
        H, W, C = x.shape
        h = _group_norm(x, p["norm.weight"], p["norm.bias"], swish=False).reshape(H * W, C)
        qkv = h @ self.wqkv
        qkv += self.bqkv
        q, k, v = qkv[:, :C], qkv[:, C : 2 * C], qkv[:, 2 * C :]
        s = q @ k.T  # (N queries, N keys)
        s *= np.float32(C ** -0.5)
        s -= s.max(axis=1, keepdims=True)
        np.exp(s, out=s)
        s /= s.sum(axis=1, keepdims=True)
        o = s @ v
        o = o @ p["proj_out.weight"]
        o += p["proj_out.bias"]
        o = o.reshape(H, W, C)
        o += x
        return o


# --------------------------------------------------------------------------------------------
# State-dict structure: walk the keys LlamaGen's VQModel would have, check names and shapes
# --------------------------------------------------------------------------------------------

class _Spec:
    """Collects the expected key -> shape map while the structure is being inferred."""

    def __init__(self, sd: Dict[str, np.ndarray]):
        self.sd = sd
        self.expected: Dict[str, Tuple[int, ...]] = {}

    def shape(self, key: str, ndim: int) -> Tuple[int, ...]:
        if key not in self.sd:
            raise ValueError(f"VQ state dict: missing key {key!r}")
        s = tuple(np.shape(self.sd[key]))
        if len(s) != ndim:
            raise ValueError(f"VQ state dict: {key!r} has shape {s}, expected {ndim} dims")
        return s

    def want(self, key: str, shape: Tuple[int, ...]) -> None:
        self.expected[key] = tuple(shape)

    def conv(self, prefix: str, cin: int, cout: int, k: int) -> None:
        self.want(prefix + ".weight", (cout, cin, k, k))
        self.want(prefix + ".bias", (cout,))

    def norm(self, prefix: str, c: int) -> None:
        if c % GROUPS:
            raise ValueError(f"VQ state dict: {prefix + '.weight'!r} has {c} channels, not a "
                             f"multiple of GroupNorm's {GROUPS} groups")
        self.want(prefix + ".weight", (c,))
        self.want(prefix + ".bias", (c,))

    def resnet(self, prefix: str, cin: int) -> int:
        cout = self.shape(prefix + ".conv1.weight", 4)[0]
        self.norm(prefix + ".norm1", cin)
        self.conv(prefix + ".conv1", cin, cout, 3)
        self.norm(prefix + ".norm2", cout)
        self.conv(prefix + ".conv2", cout, cout, 3)
        if cin != cout:
            self.conv(prefix + ".nin_shortcut", cin, cout, 1)
        return cout

    def attn(self, prefix: str, c: int) -> None:
        self.norm(prefix + ".norm", c)
        for name in ("q", "k", "v", "proj_out"):
            self.conv(f"{prefix}.{name}", c, c, 1)


def _indices(keys: Sequence[str], pattern: str) -> List[int]:
    """Sorted distinct integers captured by ``pattern`` (one group) among ``keys``."""
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys for m in [rx.match(k)] if m})


def _contiguous(idx: List[int], what: str) -> int:
    if idx != list(range(len(idx))):
        raise ValueError(f"VQ state dict: {what} indices {idx} are not 0..n-1")
    return len(idx)



def decode_latent_images(z, embed_dim: int, scale: int, decode_one) -> np.ndarray:
    """Latent (B, embed_dim, h, w) -> (B, 3, scale h, scale w) float32, checked, one image at a
    time (bounded memory) through ``decode_one`` ((h, w, embed_dim) -> (scale h, scale w, 3)).
    Shared by the VQ-16, Chameleon VQGAN and Emu3 decoders."""
    z = np.asarray(z)
    if z.ndim != 4 or z.shape[1] != embed_dim:
        raise ValueError(f"latent must have shape (B, {embed_dim}, h, w), got {z.shape}")
    if z.shape[2] < 1 or z.shape[3] < 1:
        raise ValueError(f"latent grid must be at least 1x1, got {z.shape[2:]}")
    if not (np.issubdtype(z.dtype, np.floating) or np.issubdtype(z.dtype, np.integer)):
        raise ValueError(f"latent must be a real array, got dtype {z.dtype}")
    if not np.all(np.isfinite(z)):
        raise ValueError("latent holds non-finite values")
    B, _, h, w = z.shape
    out = np.empty((B, 3, scale * h, scale * w), np.float32)
    for b in range(B):
        x = np.ascontiguousarray(z[b].transpose(1, 2, 0), dtype=np.float32)
        out[b] = decode_one(x).transpose(2, 0, 1)
    return out


def run_decoder(x, post_quant, conv_in, mid, levels, norm_out: Tuple[np.ndarray, np.ndarray],
                conv_out) -> np.ndarray:
    """The taming-style decoder stack on one channels-last latent: 1x1 post-quant conv, conv_in,
    the mid layers, each level's layers then its optional upsample + conv, GroupNorm + swish,
    conv_out. Shared by the VQ-16 and Chameleon VQGAN decoders."""
    x = _conv1x1(x, *post_quant)
    x = _conv3x3(x, *conv_in)
    for layer in mid:
        x = layer(x)
    for layers, up in levels:
        for layer in layers:
            x = layer(x)
        if up is not None:
            x = _conv3x3(_upsample2(x), *up)
    x = _group_norm(x, *norm_out, swish=True)
    return _conv3x3(x, *conv_out)


class VQDecoder:
    """LlamaGen VQ decoder: tokens (B, h, w) -> pixels (B, 2^n h, 2^n w, 3) uint8.

    ``state_dict`` maps LlamaGen VQModel names to arrays (any float dtype; copied to float32, the
    caller's arrays are not kept or modified). A dict holding the state dict under "model" (as the
    published checkpoint does) is accepted too.

    Attributes: codebook_size, embed_dim (8), z_channels (256), levels (list of dicts with
    "channels", "n_res", "attn", "upsample" per conv_block), scale (pixels per token side, 16).
    """

    def __init__(self, state_dict: Dict[str, np.ndarray]):
        sd = state_dict
        if "model" in sd and isinstance(sd["model"], dict):
            sd = sd["model"]
        keys = list(sd)
        for k in keys:
            if not isinstance(k, str):
                raise ValueError(f"VQ state dict: key {k!r} is not a string")
        spec = _Spec(sd)

        n_e, e_dim = spec.shape("quantize.embedding.weight", 2)
        spec.want("quantize.embedding.weight", (n_e, e_dim))
        zc = spec.shape("post_quant_conv.weight", 4)[0]
        spec.conv("post_quant_conv", e_dim, zc, 1)
        c = spec.shape("decoder.conv_in.weight", 4)[0]
        spec.conv("decoder.conv_in", zc, c, 3)
        mid = _contiguous(_indices(keys, r"decoder\.mid\.(\d+)\."), "decoder.mid")
        if mid != 3:
            raise ValueError(f"VQ state dict: expected decoder.mid.0..2, found {mid} mid blocks")
        for name in ("decoder.mid.0", "decoder.mid.1", "decoder.mid.2"):
            if name == "decoder.mid.1":
                spec.attn(name, c)
            elif spec.resnet(name, c) != c:
                raise ValueError(f"VQ state dict: {name + '.conv1.weight'!r} must keep conv_in's "
                                 f"{c} channels")

        n_levels = _contiguous(_indices(keys, r"decoder\.conv_blocks\.(\d+)\."),
                               "decoder.conv_blocks")
        if n_levels == 0:
            raise ValueError("VQ state dict: missing key "
                             "'decoder.conv_blocks.0.res.0.conv1.weight'")
        levels = []
        for i in range(n_levels):
            pre = f"decoder.conv_blocks.{i}"
            res_idx = _indices(keys, re.escape(pre) + r"\.res\.(\d+)\.")
            n_res = _contiguous(res_idx, pre + ".res")
            if n_res == 0:
                raise ValueError(f"VQ state dict: missing key '{pre}.res.0.conv1.weight'")
            n_attn = _contiguous(_indices(keys, re.escape(pre) + r"\.attn\.(\d+)\."), pre + ".attn")
            if n_attn not in (0, n_res):
                raise ValueError(f"VQ state dict: {pre} has {n_res} res blocks but {n_attn} attn "
                                 f"blocks (expected 0 or {n_res})")
            for j in range(n_res):
                c = spec.resnet(f"{pre}.res.{j}", c)
                if n_attn:
                    spec.attn(f"{pre}.attn.{j}", c)
            has_up = any(k.startswith(pre + ".upsample.") for k in keys)
            if has_up:
                spec.conv(pre + ".upsample.conv", c, c, 3)
            levels.append({"channels": c, "n_res": n_res, "attn": bool(n_attn),
                           "upsample": has_up})
        spec.norm("decoder.norm_out", c)
        spec.conv("decoder.conv_out", c, 3, 3)

        # every expected key present with the right shape, no unknown keys
        for k, s in spec.expected.items():
            if k not in sd:
                raise ValueError(f"VQ state dict: missing key {k!r}")
            got = tuple(np.shape(sd[k]))
            if got != s:
                raise ValueError(f"VQ state dict: {k!r} has shape {got}, expected {s}")
        for k in keys:
            if k not in spec.expected and not k.startswith(_IGNORED_PREFIXES):
                raise ValueError(f"VQ state dict: unexpected key {k!r}")

        def f32(k):
            try:
                a = np.array(sd[k], dtype=np.float32)  # always a copy
            except (TypeError, ValueError) as e:
                raise ValueError(f"VQ state dict: {k!r} is not a numeric array ({e})") from None
            if not np.all(np.isfinite(a)):
                raise ValueError(f"VQ state dict: {k!r} holds non-finite values")
            return a

        def conv_mat(k):
            # (Cout, Cin, kh, kw) -> (kh*kw*Cin, Cout), rows ordered (ky, kx, cin)
            w = f32(k)
            return np.ascontiguousarray(w.transpose(2, 3, 1, 0).reshape(-1, w.shape[0]))

        def params(prefix):
            p = {}
            for k in spec.expected:
                if k.startswith(prefix + "."):
                    name = k[len(prefix) + 1 :]
                    p[name] = conv_mat(k) if len(spec.expected[k]) == 4 else f32(k)
            return p

        emb = f32("quantize.embedding.weight").astype(np.float64)
        norm = np.maximum(np.sqrt((emb * emb).sum(axis=1, keepdims=True)), _L2_EPS)
        self.codebook = (emb / norm).astype(np.float32)  # (n_e, e_dim), rows L2-normalised
        self.codebook_size, self.embed_dim, self.z_channels = n_e, e_dim, zc
        self.levels = levels
        self.scale = 2 ** sum(lv["upsample"] for lv in levels)

        pq = params("post_quant_conv")
        self._post_quant = (pq["weight"], pq["bias"])
        ci = params("decoder.conv_in")
        self._conv_in = (ci["weight"], ci["bias"])
        c0 = spec.expected["decoder.conv_in.bias"][0]
        self._mid: List[Union[_Resnet, _Attn]] = [
            _Resnet(params("decoder.mid.0"), c0, c0), _Attn(params("decoder.mid.1"), c0),
            _Resnet(params("decoder.mid.2"), c0, c0)]
        self._blocks: List[Tuple[list, Optional[Tuple[np.ndarray, np.ndarray]]]] = []
        c = c0
        for i, lv in enumerate(levels):
            pre = f"decoder.conv_blocks.{i}"
            layers: List[Union[_Resnet, _Attn]] = []
            for j in range(lv["n_res"]):
                cout = spec.expected[f"{pre}.res.{j}.conv1.bias"][0]
                layers.append(_Resnet(params(f"{pre}.res.{j}"), c, cout))
                c = cout
                if lv["attn"]:
                    layers.append(_Attn(params(f"{pre}.attn.{j}"), c))
            up: Optional[Tuple[np.ndarray, np.ndarray]] = None
            if lv["upsample"]:
                u = params(pre + ".upsample.conv")
                up = (u["weight"], u["bias"])
            self._blocks.append((layers, up))
        no = params("decoder.norm_out")
        self._norm_out = (no["weight"], no["bias"])
        co = params("decoder.conv_out")
        self._conv_out = (co["weight"], co["bias"])

    # ---- public API
    def embed(self, tokens) -> np.ndarray:
        """tokens (B, h, w) ints in [0, codebook_size) -> latent (B, embed_dim, h, w) float32."""
        t = np.asarray(tokens)
        if t.dtype == bool or not np.issubdtype(t.dtype, np.integer):
            raise ValueError(f"tokens must be an integer array, got dtype {t.dtype}")
        if t.ndim != 3:
            raise ValueError(f"tokens must have shape (B, h, w), got {t.shape}")
        if t.shape[1] < 1 or t.shape[2] < 1:
            raise ValueError(f"token grid must be at least 1x1, got {t.shape[1:]}")
        if t.size and (t.min() < 0 or t.max() >= self.codebook_size):
            raise ValueError(f"tokens must lie in [0, {self.codebook_size}), got values in "
                             f"[{t.min()}, {t.max()}]")
        return self.codebook[t].transpose(0, 3, 1, 2).copy()

    def decode_latent(self, z) -> np.ndarray:
        """Quantized latent (B, embed_dim, h, w) float -> decoder output (B, 3, sh, sw) float32.

        The output is the raw decoder output (nominally in [-1, 1], not clipped); s = self.scale.
        """
        return decode_latent_images(z, self.embed_dim, self.scale, self._decode_one)

    def decode(self, tokens) -> np.ndarray:
        """tokens (B, h, w) ints -> pixels (B, s*h, s*w, 3) uint8 (s = self.scale, 16 for VQ-16)."""
        return to_pixels(self.decode_latent(self.embed(tokens)))

    # ---- one image, channels-last
    def _decode_one(self, x: np.ndarray) -> np.ndarray:
        """(h, w, embed_dim) float32 -> (s*h, s*w, 3) float32."""
        return run_decoder(x, self._post_quant, self._conv_in, self._mid, self._blocks,
                           self._norm_out, self._conv_out)


# --------------------------------------------------------------------------------------------
# Random weights with LlamaGen's names and shapes (benchmarks, tests)
# --------------------------------------------------------------------------------------------

def random_state_dict(ch: int = 128, ch_mult: Sequence[int] = (1, 1, 2, 2, 4),
                      z_channels: int = 256, codebook_size: int = 16384, embed_dim: int = 8,
                      num_res_blocks: int = 2, seed: int = 0) -> Dict[str, np.ndarray]:
    """Random float32 decoder weights in LlamaGen VQModel layout (defaults: the real VQ-16).

    Conv weights ~ N(0, 1/fan_in); norm weights ~ 1 + N(0, 0.1); biases ~ N(0, 0.02). Levels run
    from the widest (ch * ch_mult[-1]) down; level 0 has AttnBlocks; all but the last upsample.
    """
    rng = np.random.default_rng(seed)
    sd: Dict[str, np.ndarray] = {}

    def conv(name, cin, cout, k):
        sd[name + ".weight"] = (rng.standard_normal((cout, cin, k, k), np.float32)
                                / np.float32(np.sqrt(cin * k * k)))
        sd[name + ".bias"] = 0.02 * rng.standard_normal(cout, np.float32)

    def norm(name, c):
        sd[name + ".weight"] = 1 + 0.1 * rng.standard_normal(c, np.float32)
        sd[name + ".bias"] = 0.02 * rng.standard_normal(c, np.float32)

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

    sd["quantize.embedding.weight"] = rng.standard_normal((codebook_size, embed_dim), np.float32)
    conv("post_quant_conv", embed_dim, z_channels, 1)
    c = ch * ch_mult[-1]
    conv("decoder.conv_in", z_channels, c, 3)
    resnet("decoder.mid.0", c, c)
    attn("decoder.mid.1", c)
    resnet("decoder.mid.2", c, c)
    n = len(ch_mult)
    for i in range(n):
        cout = ch * ch_mult[n - 1 - i]
        for j in range(num_res_blocks + 1):
            resnet(f"decoder.conv_blocks.{i}.res.{j}", c, cout)
            c = cout
            if i == 0:
                attn(f"decoder.conv_blocks.{i}.attn.{j}", c)
        if i != n - 1:
            conv(f"decoder.conv_blocks.{i}.upsample.conv", c, c, 3)
    norm("decoder.norm_out", c)
    conv("decoder.conv_out", c, 3, 3)
    return sd
