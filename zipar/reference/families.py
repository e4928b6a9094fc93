"""The slow, obviously correct NumPy reference of the Emu3 and Chameleon (Lumina-mGPT) decoders.

Written from shared/spec/families.md; float64 with plain einsum, clarity over speed. Used by the
tests to check the C core's family paths (1-D rotate_half rotary with theta, grouped-query
attention, Chameleon's per-head q/k LayerNorm and swin_norm, each CFG stream at its own
positions, the per-position allowed tokens) and to cross-check the transformers fixtures.

Weights use the *canonical* names below (transformers' per-layer names without any model prefix):

    embed_tokens.weight (V, D)          norm.weight (D,)          lm_head.weight (V, D)
    layers.{i}.input_layernorm.weight   layers.{i}.post_attention_layernorm.weight
    layers.{i}.self_attn.{q,k,v,o}_proj.weight
    layers.{i}.self_attn.{q,k}_norm.{weight,bias}     (Chameleon: (P, hd), P divides the heads)
    layers.{i}.mlp.{gate,up,down}_proj.weight

Nothing here is fast and nothing here is used by the runtime package.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, List, Mapping, Optional, Sequence

import numpy as np

__all__ = ["FamilyArch", "forward", "rope_tables", "emu3_allowed", "lumina_allowed",
           "FamilyReferenceCache", "forward_pass",
           "guided_greedy", "log_softmax"]


@dataclasses.dataclass(frozen=True)
class FamilyArch:
    """What the decoder forward needs besides the weights (families.md 1)."""

    n_heads: int
    n_kv_heads: int
    rope_theta: float
    norm_eps: float = 1e-5
    qk_norm: bool = False      # Chameleon: LayerNorm of q and k per head, with weight and bias
    qk_norm_eps: float = 1e-5  # hard-coded in ChameleonLayerNorm
    swin_norm: bool = False    # Chameleon swin_norm: norms after attention / MLP


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


def _rms(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope_tables(n_pos: int, head_dim: int, theta: float):
    """cos, sin (n_pos, head_dim) of the 1-D rotate_half rotary: inv_freq and the angle are
    float32 values as torch computes them (families.md 1.2), their cos/sin in float64."""
    inv = (np.float32(1.0) / (np.float32(theta) ** (np.arange(0, head_dim, 2, dtype=np.float32)
                                                     / np.float32(head_dim)))).astype(np.float32)
    ang = (np.arange(n_pos, dtype=np.float32)[:, None] * inv[None, :]).astype(np.float64)
    ang = np.concatenate([ang, ang], axis=1)
    return np.cos(ang), np.sin(ang)


def _rotate_half(t):
    h = t.shape[-1] // 2
    return np.concatenate([-t[..., h:], t[..., :h]], axis=-1)


def _per_head(rows: np.ndarray, n: int) -> np.ndarray:
    """(P, hd) q/k-norm rows for n heads: head h uses row h // (n / P) (Lumina stores P = 1)."""
    P = rows.shape[0]
    if n % P:
        raise ValueError(f"{P} q/k-norm rows do not divide {n} heads")
    return np.repeat(rows, n // P, axis=0)


def forward(weights: Mapping[str, np.ndarray], arch: FamilyArch, ids: Sequence[int],
            start: int = 0) -> np.ndarray:
    """Logits (L, V) float64 of the token sequence ``ids`` at positions start .. start+L-1:
    row t predicts token t+1 (causal, no cache)."""
    w = {k: np.asarray(v, dtype=np.float64) for k, v in weights.items()}
    ids = np.asarray(ids, dtype=np.int64)
    L = ids.size
    x = w["embed_tokens.weight"][ids]
    D = x.shape[1]
    nh, nkv = arch.n_heads, arch.n_kv_heads
    hd = D // nh
    cos, sin = rope_tables(start + L, hd, arch.rope_theta)
    cos, sin = cos[start:, None, :], sin[start:, None, :]
    causal = np.triu(np.full((L, L), -np.inf), 1)
    n_layers = 1 + max(int(k.split(".")[1]) for k in w if k.startswith("layers."))
    for i in range(n_layers):
        g = lambda n: w[f"layers.{i}.{n}"]

        def attn(t):
            q = (t @ g("self_attn.q_proj.weight").T).reshape(L, nh, hd)
            k = (t @ g("self_attn.k_proj.weight").T).reshape(L, nkv, hd)
            v = (t @ g("self_attn.v_proj.weight").T).reshape(L, nkv, hd)
            if arch.qk_norm:
                def ln(u, wt, b):
                    u = (u - u.mean(-1, keepdims=True)) / np.sqrt(u.var(-1, keepdims=True)
                                                                   + arch.qk_norm_eps)
                    return u * _per_head(wt, u.shape[1]) + _per_head(b, u.shape[1])
                q = ln(q, g("self_attn.q_norm.weight"), g("self_attn.q_norm.bias"))
                k = ln(k, g("self_attn.k_norm.weight"), g("self_attn.k_norm.bias"))
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            k = np.repeat(k, nh // nkv, axis=1)  # query head h reads kv head h // (nh / nkv)
            v = np.repeat(v, nh // nkv, axis=1)
            s = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(hd) + causal
            s = np.exp(s - s.max(-1, keepdims=True))
            s /= s.sum(-1, keepdims=True)
            o = np.einsum("hqk,khd->qhd", s, v).reshape(L, nh * hd)
            return o @ g("self_attn.o_proj.weight").T

        def mlp(t):
            a = t @ g("mlp.gate_proj.weight").T
            h = a / (1.0 + np.exp(-a)) * (t @ g("mlp.up_proj.weight").T)
            return h @ g("mlp.down_proj.weight").T

        n_in, n_post = g("input_layernorm.weight"), g("post_attention_layernorm.weight")
        if arch.swin_norm:
            x = x + _rms(attn(x), n_in, arch.norm_eps)
            x = x + _rms(mlp(x), n_post, arch.norm_eps)
        else:
            x = x + attn(_rms(x, n_in, arch.norm_eps))
            x = x + mlp(_rms(x, n_post, arch.norm_eps))
    return _rms(x, w["norm.weight"], arch.norm_eps) @ w["lm_head.weight"].T


# ============================================================================ token rules

def emu3_allowed(offset: int, H: int, W: int, *, vis0: int, K: int, eol: int, eof: int,
                 eoi: int, eos: int, pad: int) -> List[int]:
    """Allowed ids for the generated token at ``offset`` (1 for the first after the prompt's IMG
    token), families.md 3.1: EOL ends every row, then EOF, EOI, EOS, PAD; visual tokens else.
    The intended layout (the official helper's modulo test differs for W <= 2)."""
    n = (W + 1) * H
    if offset == n + 1:
        return [eof]
    if offset == n + 2:
        return [eoi]
    if offset == n + 3:
        return [eos]
    if offset > n + 3:
        return [pad]
    if offset % (W + 1) == 0:
        return [eol]
    return list(range(vis0, vis0 + K))


def lumina_allowed(k: int, H: int, W: int, *, img_lo: int, img_hi: int, eol: int,
                   eoi: int) -> List[int]:
    """Lumina-mGPT's MultiModalLogitsProcessor, families.md 3.2: ``k`` = 1 + tokens after the
    w-size token; EOL forced at row ends, EOI after the grid, image ids [img_lo, img_hi) else."""
    if k == (W + 1) * H + 1:
        return [eoi]
    if k % (W + 1) == 0:
        return [eol]
    return list(range(img_lo, img_hi))


def guided_greedy(weights, arch: FamilyArch, prompt: Sequence[int],
                  uncond_prompt: Optional[Sequence[int]], n_new: int, cfg_scale: float,
                  allowed: Callable[[int], Sequence[int]]) -> np.ndarray:
    """Greedy raster decoding of ``n_new`` tokens with classifier-free guidance: the
    unconditional branch is its own sequence (own prefix, positions from 0) fed the same tokens
    (families.md 4); guided = u + (c - u) * cfg on raw logits (argmax-equal to Emu3's
    log-softmax mix); ``allowed(i)`` gives the allowed ids of the i-th new token (0-based)."""
    cond, unc = list(prompt), None if uncond_prompt is None else list(uncond_prompt)
    out = []
    for i in range(n_new):
        c = forward(weights, arch, cond)[-1]
        s = c
        if unc is not None and cfg_scale != 1.0:
            u = forward(weights, arch, unc)[-1]
            s = u + (c - u) * cfg_scale
        ok = np.asarray(allowed(i), dtype=np.int64)
        tok = int(ok[np.argmax(s[ok])])
        out.append(tok)
        cond.append(tok)
        if unc is not None:
            unc.append(tok)
    return np.asarray(out, dtype=np.int64)


# ============================================================================ the forward primitive

class FamilyReferenceCache:
    """Slot-by-slot KV cache of the grid layout (P prefix slots, then H rows of W cells and one
    end-of-line slot), as csrc/zipar.h's token-id caches: stream 0 is conditional, stream 1
    (when guided) unconditional; each stream's prefix ids are right-aligned in the P slots and it
    never attends to the slots before them; its positions count from its own first id.

    prefixes: per image a list of one or two id sequences (cond[, uncond]).
    """

    def __init__(self, arch: FamilyArch, n_layer: int, P: int, H: int, W: int, prefixes,
                 guided: bool):
        self.P, self.H, self.W = P, H, W
        self.seq_len = P + H * (W + 1)
        self.guided = bool(guided)
        ns = 2 if guided else 1
        self.n_images = len(prefixes)
        self.prefix_ids = np.zeros((ns, self.n_images, P), np.int64)
        self.shift = np.zeros((ns, self.n_images), np.int64)
        for b, streams in enumerate(prefixes):
            for s in range(ns):
                ids = list(streams[s])
                if not 1 <= len(ids) <= P:
                    raise ValueError(f"prefix of {len(ids)} ids for {P} slots")
                self.shift[s, b] = P - len(ids)
                self.prefix_ids[s, b, P - len(ids):] = ids
        self.k: dict = {}
        self.v: dict = {}
        self.slots = np.full((self.n_images, self.seq_len), -1, np.int32)

    def cell_pos(self, r: int, c: int) -> int:
        return self.P + r * (self.W + 1) + c


def forward_pass(weights, arch: FamilyArch, cache: FamilyReferenceCache, queries,
                 cfg_scale: float) -> list:
    """One pass of queries (image, pos, token, chain, want_logits, guided) with the visibility
    of docs/semantics.md (own slot, committed slots, own chain; never an unwritten slot), K/V
    written per slot as the pass computes them. Returns the logits rows of the want_logits
    queries (guided: u + (c - u) * cfg_scale)."""
    w = weights
    c = cache
    P = c.P
    qs = [tuple(int(v) for v in q) for q in queries]
    for image, pos, _t, chain, _w, _g in qs:
        c.slots[image, pos] = 0 if pos < P else chain
    streams = (0, 1) if c.guided else (0,)
    D = w["embed_tokens.weight"].shape[1]
    nh, nkv = arch.n_heads, arch.n_kv_heads
    hd = D // nh
    cos, sin = rope_tables(c.seq_len, hd, arch.rope_theta)
    rows = [(i, s) for i in range(len(qs)) for s in streams]
    x = np.zeros((len(rows), D))
    for n, (i, s) in enumerate(rows):
        image, pos, token = qs[i][:3]
        tok = c.prefix_ids[s, image, pos] if pos < P else token
        x[n] = np.asarray(w["embed_tokens.weight"][tok], np.float64)

    def vis(i, s):
        image, pos, _t, chain = qs[i][:4]
        st = c.slots[image]
        sh = c.shift[s, image]
        if pos < sh:
            return [pos]
        return [q for q in range(sh, pos + 1)
                if q == pos or st[q] == 0 or (chain > 0 and st[q] == chain)]

    visible = {(i, s): vis(i, s) for i, s in rows}
    n_layers = 1 + max(int(k.split(".")[1]) for k in w if k.startswith("layers."))
    f64 = lambda n: np.asarray(w[n], np.float64)
    for layer in range(n_layers):
        g = lambda n: f64(f"layers.{layer}.{n}")
        h = x if arch.swin_norm else _rms(x, g("input_layernorm.weight"), arch.norm_eps)
        q = (h @ g("self_attn.q_proj.weight").T).reshape(-1, nh, hd)
        k = (h @ g("self_attn.k_proj.weight").T).reshape(-1, nkv, hd)
        v = (h @ g("self_attn.v_proj.weight").T).reshape(-1, nkv, hd)
        if arch.qk_norm:
            def ln(u, wt, b):
                u = (u - u.mean(-1, keepdims=True)) / np.sqrt(u.var(-1, keepdims=True)
                                                               + arch.qk_norm_eps)
                return u * _per_head(wt, u.shape[1]) + _per_head(b, u.shape[1])
            q = ln(q, g("self_attn.q_norm.weight"), g("self_attn.q_norm.bias"))
            k = ln(k, g("self_attn.k_norm.weight"), g("self_attn.k_norm.bias"))
        for n, (i, s) in enumerate(rows):
            image, pos = qs[i][:2]
            rp = max(pos - c.shift[s, image], 0)
            q[n] = q[n] * cos[rp] + _rotate_half(q[n]) * sin[rp]
            k[n] = k[n] * cos[rp] + _rotate_half(k[n]) * sin[rp]
            c.k[layer, s, image, pos] = k[n]
            c.v[layer, s, image, pos] = v[n]
        att = np.zeros((len(rows), nh, hd))
        for n, (i, s) in enumerate(rows):
            image = qs[i][0]
            keys = np.stack([c.k[layer, s, image, p] for p in visible[i, s]])
            vals = np.stack([c.v[layer, s, image, p] for p in visible[i, s]])
            for head in range(nh):
                sc = keys[:, head // (nh // nkv)] @ q[n, head] / np.sqrt(hd)
                sc = np.exp(sc - sc.max())
                att[n, head] = (sc / sc.sum()) @ vals[:, head // (nh // nkv)]
        o = att.reshape(len(rows), nh * hd) @ g("self_attn.o_proj.weight").T
        x = x + (_rms(o, g("input_layernorm.weight"), arch.norm_eps) if arch.swin_norm else o)
        h = x if arch.swin_norm else _rms(x, g("post_attention_layernorm.weight"), arch.norm_eps)
        a = h @ g("mlp.gate_proj.weight").T
        m = (a / (1.0 + np.exp(-a)) * (h @ g("mlp.up_proj.weight").T)) @ g("mlp.down_proj.weight").T
        x = x + (_rms(m, g("post_attention_layernorm.weight"), arch.norm_eps) if arch.swin_norm
                 else m)
    out = []
    for i, (_im, _p, _t, _c, want, guided) in enumerate(qs):
        if not want:
            continue
        rs = [n for n, (j, s) in enumerate(rows) if j == i]
        lg = [_rms(x[n], f64("norm.weight"), arch.norm_eps) @ f64("lm_head.weight").T for n in rs]
        out.append(lg[1] + (lg[0] - lg[1]) * cfg_scale if guided and c.guided else lg[0])
    return out
