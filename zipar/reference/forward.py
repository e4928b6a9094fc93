"""The slow, obviously correct NumPy reference of the whole engine.

Everything here is float64 with plain loops and einsum: clarity over speed. The tests use it to
check the fast C core (csrc/zipar.h) and mirror its semantics exactly:

- :class:`ReferenceModel`: the LlamaGen transformer (docs/llamagen.md) with the 2-D rotary layout, a
  KV cache whose slots carry visibility states, the one-pass forward primitive (``zp_forward``)
  and an independent teacher-forced path (:meth:`ReferenceModel.logits`) to compare it with.
- :func:`sampling_probs` and :func:`draw`: temperature / top-k / top-p and the inverse-CDF draw
  (``zp_sampling_probs``, ``zp_draw``).
- :func:`philox4x32_10` and :func:`uniform`: Random123's Philox4x32-10 and the 53-bit uniform
  (``zp_philox4x32_10``, ``zp_uniform``).

Nothing here is fast and nothing here is used by the runtime package.
"""

from __future__ import annotations

import math
from typing import Dict, Iterable, Mapping, Sequence, Tuple

import numpy as np

from ..config import ModelConfig
from ..io.dtypes import bfloat16_to_float32, float32_to_bfloat16
from ..model import LAYER_KEYS
from ..sampling import is_guided

__all__ = ["ReferenceModel", "ReferenceCache", "SLOT_UNWRITTEN", "SLOT_MASKED", "SLOT_COMMITTED",
           "sampling_probs", "draw", "philox4x32_10", "uniform", "reference_attention",
           "kv_round", "KV_DTYPES"]

# Slot states (zipar.h; tests/test_contract.py checks them against the core's ZP_SLOT_*; the
# reference keeps its own copy so that it runs without the extension): a query at position p
# with chain c sees slot q when q <= p and
# (q == p, or state[q] == SLOT_COMMITTED, or c > 0 and state[q] == c). > 0: tentative chain id.
SLOT_UNWRITTEN = -1
SLOT_MASKED = -2
SLOT_COMMITTED = 0


# ============================================================================ weights

def _as_float64(name: str, a) -> np.ndarray:
    """float64 copy of a weight; uint16 arrays are bfloat16 bit patterns (float32's high half)."""
    a = np.asarray(a)
    if a.dtype == np.uint16:
        a = bfloat16_to_float32(a)
    elif not np.issubdtype(a.dtype, np.floating):
        raise TypeError(f"weight {name!r} has dtype {a.dtype}; expected a float dtype or uint16 "
                        "(bfloat16 bits)")
    return np.array(a, dtype=np.float64)


# ============================================================================ small functions

KV_DTYPES = ("float32", "bfloat16")


def kv_round(x: np.ndarray, kv_dtype: str) -> np.ndarray:
    """Keys or values as a K/V cache of ``kv_dtype`` holds them (float64 here): "float32" leaves
    them as they are; "bfloat16" rounds them to float32 (the engine's working precision), then
    to bfloat16 with round-to-nearest-even (zp_cache_set_kv_type), and widens them back."""
    if kv_dtype == "float32":
        return x
    if kv_dtype != "bfloat16":
        raise ValueError(f"kv_dtype must be one of {KV_DTYPES}, got {kv_dtype!r:.80}")
    bits = float32_to_bfloat16(np.asarray(x, dtype=np.float32))
    return bfloat16_to_float32(bits).astype(np.float64).reshape(np.shape(x))


def rmsnorm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    """x * rsqrt(mean(x^2) + eps) * weight over the last axis."""
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def silu(x: np.ndarray) -> np.ndarray:
    return x / (1.0 + np.exp(-x))


def gelu_tanh(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - np.max(x, axis=-1, keepdims=True))
    return z / np.sum(z, axis=-1, keepdims=True)


def log_softmax(x: np.ndarray) -> np.ndarray:
    m = np.max(x, axis=-1, keepdims=True)
    return x - m - np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True))


# ============================================================================ the KV cache

class ReferenceCache:
    """KV cache of ``n_images`` images; with ``guided`` a second (unconditional) stream each.

    k, v: (n_layer, n_streams, n_images, seq_len, n_kv_head, head_dim) float64, stream 0 = cond,
    1 = uncond, holding what a K/V cache of ``kv_dtype`` stores (:func:`kv_round`). slots:
    (n_images, seq_len) int32 states shared by both streams (see SLOT_*). prefix: (n_streams,
    n_images, P, dim) conditioning embeddings; prefix_mask: (n_images, P) bool, True = valid key.
    """

    def __init__(self, config: ModelConfig, n_images: int, guided: bool, prefix_cond,
                 prefix_uncond=None, prefix_mask=None, kv_dtype: str = "float32"):
        kv_round(np.zeros(0), kv_dtype)  # checks the name
        c = config
        P, S = c.cls_token_num, c.seq_len
        if n_images < 1:
            raise ValueError("n_images must be >= 1")
        cond = np.asarray(prefix_cond, dtype=np.float64)
        if cond.shape != (n_images, P, c.dim):
            raise ValueError(f"prefix_cond must have shape {(n_images, P, c.dim)}, "
                             f"got {cond.shape}")
        streams = [cond]
        if guided:
            if prefix_uncond is None:
                raise ValueError("a guided cache needs prefix_uncond")
            unc = np.asarray(prefix_uncond, dtype=np.float64)
            if unc.shape != cond.shape:
                raise ValueError(f"prefix_uncond must have shape {cond.shape}, got {unc.shape}")
            streams.append(unc)
        if prefix_mask is None:
            mask = np.ones((n_images, P), dtype=bool)
        else:
            mask = np.asarray(prefix_mask) != 0
            if mask.shape != (n_images, P):
                raise ValueError(f"prefix_mask must have shape {(n_images, P)}, got {mask.shape}")
        self.config = c
        self.kv_dtype = kv_dtype
        self.n_images = n_images
        self.guided = bool(guided)
        self.prefix = np.stack(streams)
        self.prefix_mask = mask
        shape = (c.n_layer, len(streams), n_images, S, c.n_kv_head, c.head_dim)
        self.k = np.zeros(shape)
        self.v = np.zeros(shape)
        self.slots = np.full((n_images, S), SLOT_UNWRITTEN, dtype=np.int32)

    def visible(self, image: int, pos: int, chain: int) -> np.ndarray:
        """Slot indices a query (image, pos, chain) attends to, ascending."""
        st = self.slots[image]
        return np.array([q for q in range(pos + 1)
                         if q == pos or st[q] == SLOT_COMMITTED or (chain > 0 and st[q] == chain)],
                        dtype=np.int64)


# ============================================================================ the model

class ReferenceModel:
    """LlamaGen-architecture GPT in float64 (docs/llamagen.md), c2i or t2i (``caption_dim > 0``).

    ``weights`` maps LlamaGen state-dict names to arrays of any float dtype (uint16 = bfloat16
    bits); a ``freqs_cis`` entry is ignored (the rotary table is recomputed).
    """

    def __init__(self, config: ModelConfig, weights: Mapping[str, np.ndarray]):
        self.config = c = config
        self.w: Dict[str, np.ndarray] = {k: _as_float64(k, v) for k, v in weights.items()
                                         if k != "freqs_cis"}
        need = ["tok_embeddings.weight", "norm.weight", "output.weight"]
        if c.caption_dim:
            need += ["cls_embedding.cap_proj.fc1.weight", "cls_embedding.cap_proj.fc2.weight",
                     "cls_embedding.uncond_embedding"]
        else:
            need += ["cls_embedding.embedding_table.weight"]
        for i in range(c.n_layer):
            need += [f"layers.{i}.{k}" for k in LAYER_KEYS]
        missing = [k for k in need if k not in self.w]
        if missing:
            raise ValueError(f"missing weights: {missing}")
        self.rope_cos, self.rope_sin = self._rope_tables()

    # ------------------------------------------------------------------ rotary embedding
    def _rope_tables(self) -> Tuple[np.ndarray, np.ndarray]:
        """cos, sin: (seq_len, head_dim/2), one angle per adjacent pair (x[2i], x[2i+1]).

        Grid position P + r*(W+E) + c (c == W is the end-of-row slot of row r) rotates pair
        i < hd/4 by r * f_i and pair i >= hd/4 by c * f_(i - hd/4), f_j = base^(-2j / (hd/2)).
        Conditioning positions get cos = sin = 0: their q and k are exactly zero.
        """
        c = self.config
        hd, P, row_len = c.head_dim, c.cls_token_num, c.W + c.eor
        quarter = hd // 4
        cos = np.zeros((c.seq_len, hd // 2))
        sin = np.zeros((c.seq_len, hd // 2))
        for pos in range(P, c.seq_len):
            r, col = divmod(pos - P, row_len)
            for i in range(hd // 2):
                j, coord = (i, r) if i < quarter else (i - quarter, col)
                freq = 1.0 / c.rope_base ** (2.0 * j / (hd / 2))
                cos[pos, i] = math.cos(coord * freq)
                sin[pos, i] = math.sin(coord * freq)
        return cos, sin

    def rope(self, x: np.ndarray, pos: int) -> np.ndarray:
        """Rotate x (..., head_dim) for position pos: (x0*cos - x1*sin, x1*cos + x0*sin)."""
        cos, sin = self.rope_cos[pos], self.rope_sin[pos]
        x0, x1 = x[..., 0::2], x[..., 1::2]
        out = np.empty_like(x)
        out[..., 0::2] = x0 * cos - x1 * sin
        out[..., 1::2] = x1 * cos + x0 * sin
        return out

    # ------------------------------------------------------------------ conditioning
    def cap_proj(self, caption: np.ndarray) -> np.ndarray:
        """t2i caption projection fc2(gelu_tanh(fc1(caption))): (..., caption_dim) -> (..., dim)."""
        fc1 = self.w["cls_embedding.cap_proj.fc1.weight"]
        fc2 = self.w["cls_embedding.cap_proj.fc2.weight"]
        return gelu_tanh(np.asarray(caption, dtype=np.float64) @ fc1.T) @ fc2.T

    def prefix_embeddings(self, labels=None, captions=None) -> Tuple[np.ndarray, np.ndarray]:
        """(cond (B,P,dim), uncond (B,P,dim)). c2i: embedding_table[label], uncond the null class
        num_classes. t2i: cap_proj(caption), uncond cap_proj(uncond_embedding)."""
        c = self.config
        if c.caption_dim:
            cap = np.asarray(captions, dtype=np.float64)
            if cap.ndim != 3 or cap.shape[1:] != (c.cls_token_num, c.caption_dim):
                raise ValueError(f"captions must be (B, {c.cls_token_num}, {c.caption_dim})")
            unc = np.broadcast_to(self.w["cls_embedding.uncond_embedding"], cap.shape)
            return self.cap_proj(cap), self.cap_proj(unc)
        lab = np.atleast_1d(np.asarray(labels))
        if lab.ndim != 1 or not np.issubdtype(lab.dtype, np.integer):
            raise ValueError("labels must be a 1-D sequence of ints")
        if lab.size and (lab.min() < 0 or lab.max() >= c.num_classes):
            raise ValueError(f"labels must be in [0, {c.num_classes})")
        table = self.w["cls_embedding.embedding_table.weight"]
        cond = table[lab][:, None, :].copy()
        unc = np.repeat(table[c.num_classes][None, None, :], len(lab), axis=0)
        return cond, unc

    # ------------------------------------------------------------------ the forward primitive
    def new_cache(self, n_images: int, guided: bool, prefix_cond, prefix_uncond=None,
                  prefix_mask=None, kv_dtype: str = "float32") -> ReferenceCache:
        return ReferenceCache(self.config, n_images, guided, prefix_cond, prefix_uncond,
                              prefix_mask, kv_dtype)

    def forward(self, cache: ReferenceCache, queries: Iterable[Sequence[int]],
                cfg_scale: float) -> list:
        """One pass of queries (image, pos, token, chain, want_logits, guided), as zp_forward.

        1. Every query's slot state is set first: its chain, or for pos < P committed (masked
           where the prefix mask is 0). Visibility is then fixed for the whole pass.
        2. All queries run through the layers together; at each layer every query's k/v is
           written into its slot, then each query attends to its visible slots.
        3. Returns, in query order, the logits (vocab,) of the queries with want_logits: guided
           ones uncond + (cond - uncond) * cfg_scale, others cond. A guided cache runs both
           streams for every query.
        """
        c = self.config
        P, S = c.cls_token_num, c.seq_len
        qs = [tuple(int(v) for v in q) for q in queries]
        seen = set()
        for i, (image, pos, token, chain, _want, guided) in enumerate(qs):
            if not 0 <= image < cache.n_images:
                raise ValueError(f"query {i}: image {image} outside [0, {cache.n_images})")
            if not 0 <= pos < S:
                raise ValueError(f"query {i}: position {pos} outside [0, {S})")
            if pos >= P and not 0 <= token < c.vocab_size:
                raise ValueError(f"query {i}: token {token} outside [0, {c.vocab_size})")
            if chain < 0:
                raise ValueError(f"query {i}: negative chain")
            if guided and not cache.guided:
                raise ValueError(f"query {i}: guided query on an unguided cache")
            if (image, pos) in seen:
                raise ValueError(f"query {i}: slot (image {image}, position {pos}) written twice "
                                 "in one pass")
            seen.add((image, pos))

        # ---- 1. slot states
        for image, pos, _token, chain, _want, _guided in qs:
            if pos < P:
                cache.slots[image, pos] = SLOT_COMMITTED if cache.prefix_mask[image, pos] \
                    else SLOT_MASKED
            else:
                cache.slots[image, pos] = chain
        visible = [cache.visible(image, pos, chain) for image, pos, _t, chain, _w, _g in qs]

        # ---- 2. rows: (query index, stream) with their input embeddings
        # a guided cache runs the unconditional stream for every query (guided only decides
        # whether the logits are combined), so no visible slot is missing in either stream
        rows = [(i, s) for i, q in enumerate(qs) for s in ((0, 1) if cache.guided else (0,))]
        x = np.zeros((len(rows), c.dim))
        for n, (i, s) in enumerate(rows):
            image, pos, token = qs[i][:3]
            x[n] = (cache.prefix[s, image, pos] if pos < P
                    else self.w["tok_embeddings.weight"][token])

        hd, nh, nkv = c.head_dim, c.n_head, c.n_kv_head
        group = nh // nkv
        for layer in range(c.n_layer):
            pre = f"layers.{layer}."
            h = rmsnorm(x, self.w[pre + "attention_norm.weight"], c.norm_eps)
            qkv = h @ self.w[pre + "attention.wqkv.weight"].T
            q_all = qkv[:, :nh * hd].reshape(-1, nh, hd)
            k_all = qkv[:, nh * hd:(nh + nkv) * hd].reshape(-1, nkv, hd)
            v_all = qkv[:, (nh + nkv) * hd:].reshape(-1, nkv, hd)
            q_rot = np.empty_like(q_all)
            for n, (i, s) in enumerate(rows):   # write every query's k/v before any attention
                image, pos = qs[i][:2]
                q_rot[n] = self.rope(q_all[n], pos)
                cache.k[layer, s, image, pos] = kv_round(self.rope(k_all[n], pos), cache.kv_dtype)
                cache.v[layer, s, image, pos] = kv_round(v_all[n], cache.kv_dtype)
            att = np.zeros((len(rows), nh, hd))
            for n, (i, s) in enumerate(rows):
                image = qs[i][0]
                vis = visible[i]
                for head in range(nh):
                    keys = cache.k[layer, s, image, vis, head // group]     # (nv, hd)
                    vals = cache.v[layer, s, image, vis, head // group]
                    weights = softmax(keys @ q_rot[n, head] / math.sqrt(hd))
                    att[n, head] = weights @ vals
            x = x + att.reshape(len(rows), nh * hd) @ self.w[pre + "attention.wo.weight"].T
            h = rmsnorm(x, self.w[pre + "ffn_norm.weight"], c.norm_eps)
            ff = silu(h @ self.w[pre + "feed_forward.w1.weight"].T) * \
                (h @ self.w[pre + "feed_forward.w3.weight"].T)
            x = x + ff @ self.w[pre + "feed_forward.w2.weight"].T

        # ---- 3. output head and guidance
        out_rows = {}
        for n, (i, s) in enumerate(rows):
            if qs[i][4]:
                out_rows[(i, s)] = rmsnorm(x[n], self.w["norm.weight"], c.norm_eps) @ \
                    self.w["output.weight"].T
        result = []
        for i, q in enumerate(qs):
            if not q[4]:
                continue
            cond = out_rows[(i, 0)]
            if q[5]:
                unc = out_rows[(i, 1)]
                result.append(unc + (cond - unc) * cfg_scale)
            else:
                result.append(cond)
        return result

    # ------------------------------------------------------------------ teacher forcing
    def _sequence_tokens(self, tokens: np.ndarray) -> np.ndarray:
        """(B, H, W) grid -> (B, H*(W+E)) sequence tokens (end-of-row token inserted when E=1)."""
        c = self.config
        B = tokens.shape[0]
        if c.eor:
            eor = np.full((B, c.H, 1), c.eor_token, dtype=tokens.dtype)
            tokens = np.concatenate([tokens, eor], axis=2)
        return tokens.reshape(B, -1)

    def _full_pass(self, prefix: np.ndarray, mask: np.ndarray, seq_tokens: np.ndarray,
                   kv_dtype: str = "float32", kv=None) -> np.ndarray:
        """Logits (S, vocab) at every position of one image and stream: every slot committed, a
        full causal mask over the sequence (masked prefix keys visible only to themselves);
        keys and values as a ``kv_dtype`` cache holds them, or, given ``kv`` = (K, V) each
        (n_layer, S, n_kv_head, head_dim), those instead of the ones computed here."""
        c = self.config
        P, S, hd, nh, nkv = c.cls_token_num, c.seq_len, c.head_dim, c.n_head, c.n_kv_head
        x = np.concatenate([prefix, self.w["tok_embeddings.weight"][seq_tokens]], axis=0)
        allowed = np.tril(np.ones((S, S), dtype=bool))
        allowed[:, :P] &= mask[None, :]
        allowed |= np.eye(S, dtype=bool)
        # rotary as complex multiplication of adjacent pairs, written independently of rope()
        angle_cis = (self.rope_cos + 1j * self.rope_sin)[:, None, :]        # (S, 1, hd/2)
        for layer in range(c.n_layer):
            pre = f"layers.{layer}."
            h = rmsnorm(x, self.w[pre + "attention_norm.weight"], c.norm_eps)
            qkv = h @ self.w[pre + "attention.wqkv.weight"].T
            q = qkv[:, :nh * hd].reshape(S, nh, hd // 2, 2)
            k = qkv[:, nh * hd:(nh + nkv) * hd].reshape(S, nkv, hd // 2, 2)
            v = qkv[:, (nh + nkv) * hd:].reshape(S, nkv, hd)
            qc = (q[..., 0] + 1j * q[..., 1]) * angle_cis
            kc = (k[..., 0] + 1j * k[..., 1]) * angle_cis
            q = np.stack([qc.real, qc.imag], axis=-1).reshape(S, nh, hd)
            k = kv_round(np.stack([kc.real, kc.imag], axis=-1).reshape(S, nkv, hd), kv_dtype)
            v = kv_round(v, kv_dtype)
            if kv is not None:
                k, v = (np.asarray(a[layer], dtype=np.float64) for a in kv)
            k = np.repeat(k, nh // nkv, axis=1)      # head h uses kv head h // (nh / nkv)
            v = np.repeat(v, nh // nkv, axis=1)
            scores = np.einsum("qhd,khd->hqk", q, k) / math.sqrt(hd)
            scores = np.where(allowed[None], scores, -np.inf)
            att = np.einsum("hqk,khd->qhd", softmax(scores), v).reshape(S, nh * hd)
            x = x + att @ self.w[pre + "attention.wo.weight"].T
            h = rmsnorm(x, self.w[pre + "ffn_norm.weight"], c.norm_eps)
            x = x + (silu(h @ self.w[pre + "feed_forward.w1.weight"].T) *
                     (h @ self.w[pre + "feed_forward.w3.weight"].T)) @ \
                self.w[pre + "feed_forward.w2.weight"].T
        return rmsnorm(x, self.w["norm.weight"], c.norm_eps) @ self.w["output.weight"].T

    def _prefixes(self, labels_or_prefix, B: int):
        """(cond, uncond, mask) from labels (c2i) or a (cond, uncond[, mask]) tuple."""
        c = self.config
        if isinstance(labels_or_prefix, tuple) and len(labels_or_prefix) in (2, 3) and \
                np.ndim(labels_or_prefix[0]) == 3:
            cond = np.asarray(labels_or_prefix[0], dtype=np.float64)
            unc = np.asarray(labels_or_prefix[1], dtype=np.float64)
            mask = labels_or_prefix[2] if len(labels_or_prefix) == 3 else None
        else:
            cond, unc = self.prefix_embeddings(labels_or_prefix)
            mask = None
        mask = np.ones((B, c.cls_token_num), bool) if mask is None else np.asarray(mask) != 0
        if cond.shape[0] != B or unc.shape != cond.shape or mask.shape != (B, c.cls_token_num):
            raise ValueError("conditioning and tokens disagree on the batch size")
        return cond, unc, mask

    def logits(self, labels_or_prefix, tokens, cfg_scale: float = 1.0,
               kv_dtype: str = "float32", kv=None) -> np.ndarray:
        """Teacher-forced logits (B, H*W, vocab) predicting each grid cell in raster order.

        labels_or_prefix: class labels (c2i) or (cond, uncond[, mask]) prefix embeddings as from
        prefix_embeddings (t2i). tokens: (B, H, W). Cell (r, c) is predicted from position
        cell_pos(r, c) - 1: the last conditioning position, the cell to its left, or the end of
        the row above (its last cell when E=0, its end-of-row token when E=1). cfg_scale != 1
        runs the unconditional stream too and returns uncond + (cond - uncond) * cfg_scale.
        kv_dtype: keys and values as a cache of that dtype holds them (:func:`kv_round`).
        kv: optional (K, V), each (B, streams, n_layer, S, n_kv_head, head_dim) with stream 0
        the conditional and 1 the unconditional one: attention reads these keys and values
        instead of its own (a test feeds the engine's cache contents, to separate the rounding of
        each key and value from the rest of the computation).
        """
        kv_round(np.zeros(0), kv_dtype)
        c = self.config
        toks = np.asarray(tokens)
        if toks.ndim != 3 or toks.shape[1:] != (c.H, c.W):
            raise ValueError(f"tokens must be (B, {c.H}, {c.W}), got {toks.shape}")
        if toks.min() < 0 or toks.max() >= c.vocab_size:
            raise ValueError(f"tokens must be in [0, {c.vocab_size})")
        B = toks.shape[0]
        cond, unc, mask = self._prefixes(labels_or_prefix, B)
        seq = self._sequence_tokens(toks)
        predict_from = [c.cell_pos(r, col) - 1 for r in range(c.H) for col in range(c.W)]
        out = np.zeros((B, c.H * c.W, c.vocab_size))
        for b in range(B):
            given = [None, None] if kv is None else \
                [(kv[0][b, u], kv[1][b, u]) for u in range(np.shape(kv[0])[1])]
            lc = self._full_pass(cond[b], mask[b], seq[b], kv_dtype, given[0])[predict_from]
            if is_guided(cfg_scale):
                lu = self._full_pass(unc[b], mask[b], seq[b], kv_dtype, given[1])[predict_from]
                lc = lu + (lc - lu) * cfg_scale
            out[b] = lc
        return out

    def log_prob(self, labels_or_prefix, tokens) -> np.ndarray:
        """Per-image sum over the grid of log-softmax at the true tokens (cfg_scale 1): (B,)."""
        toks = np.asarray(tokens)
        ls = log_softmax(self.logits(labels_or_prefix, toks, 1.0))
        flat = toks.reshape(toks.shape[0], -1)
        return np.take_along_axis(ls, flat[..., None], axis=2)[..., 0].sum(axis=1)


# ============================================================================ attention capture

def reference_attention(ref_model: ReferenceModel, labels, tokens, cells=None, layers=None,
                        heads=None, cfg_scale: float = 1.0) -> np.ndarray:
    """Attention weights of a full committed teacher-forced pass, as Model.attention.

    Every position of each image is fed with its real token (end-of-row tokens inserted when
    E = 1), all slots committed. For each requested grid cell (r, c) (the query fed with that
    cell's token, at position cell_pos(r, c)), layer and head: the softmax weights of the
    conditional stream over all seq_len slots, 0 where the slot is invisible (after the query,
    or a masked caption position). Returns (B, n_cells, n_layers, n_heads, seq_len) float64.

    labels: class labels (c2i) or a (cond, uncond[, mask]) prefix tuple (t2i), as logits().
    tokens: (B, H, W). cells: (n, 2) (row, col), default every cell in raster order.
    layers / heads: default all. cfg_scale only has to be finite: the conditional stream's
    weights do not depend on guidance (the unconditional stream never mixes into it).
    """
    c = ref_model.config
    toks = np.asarray(tokens)
    if toks.ndim == 2:
        toks = toks[None]
    if toks.ndim != 3 or toks.shape[1:] != (c.H, c.W) or not np.issubdtype(toks.dtype, np.integer):
        raise ValueError(f"tokens must be integer (B, {c.H}, {c.W}), got {np.shape(tokens)}")
    if toks.size and (toks.min() < 0 or toks.max() >= c.vocab_size):
        raise ValueError(f"tokens must be in [0, {c.vocab_size})")
    if not math.isfinite(float(cfg_scale)):
        raise ValueError("cfg_scale must be finite")
    if cells is None:
        cells = [(r, col) for r in range(c.H) for col in range(c.W)]
    cells = np.asarray(cells, dtype=np.int64).reshape(-1, 2)
    bad = (cells[:, 0] < 0) | (cells[:, 0] >= c.H) | (cells[:, 1] < 0) | (cells[:, 1] >= c.W)
    if bad.any():
        raise ValueError(f"cell {tuple(cells[bad][0])} is outside the {c.H}x{c.W} grid")
    layers = np.arange(c.n_layer) if layers is None else np.asarray(layers, np.int64).reshape(-1)
    heads = np.arange(c.n_head) if heads is None else np.asarray(heads, np.int64).reshape(-1)
    if layers.size and (layers.min() < 0 or layers.max() >= c.n_layer):
        raise ValueError(f"layers must be in [0, {c.n_layer})")
    if heads.size and (heads.min() < 0 or heads.max() >= c.n_head):
        raise ValueError(f"heads must be in [0, {c.n_head})")
    B = toks.shape[0]
    cond, _unc, mask = ref_model._prefixes(labels, B)
    seq = ref_model._sequence_tokens(toks)
    query_pos = [c.cell_pos(int(r), int(col)) for r, col in cells]
    P, S, hd, nh, nkv = c.cls_token_num, c.seq_len, c.head_dim, c.n_head, c.n_kv_head
    w = ref_model.w
    # visible[q, k]: committed slots up to q, masked prefix slots only to themselves
    visible = np.tril(np.ones((S, S), dtype=bool))
    out = np.zeros((B, len(cells), len(layers), len(heads), S))
    for b in range(B):
        vis = visible.copy()
        vis[:, :P] &= mask[b][None, :]
        vis |= np.eye(S, dtype=bool)
        x = np.concatenate([cond[b], w["tok_embeddings.weight"][seq[b]]], axis=0)   # (S, dim)
        for layer in range(c.n_layer):
            pre = f"layers.{layer}."
            h = rmsnorm(x, w[pre + "attention_norm.weight"], c.norm_eps)
            qkv = h @ w[pre + "attention.wqkv.weight"].T
            q = qkv[:, :nh * hd].reshape(S, nh, hd)
            k = qkv[:, nh * hd:(nh + nkv) * hd].reshape(S, nkv, hd)
            v = qkv[:, (nh + nkv) * hd:].reshape(S, nkv, hd)
            q = np.stack([ref_model.rope(q[p], p) for p in range(S)])
            k = np.stack([ref_model.rope(k[p], p) for p in range(S)])
            weights = np.zeros((nh, S, S))                  # (head, query, key)
            for head in range(nh):
                kv = head // (nh // nkv)                    # grouped-query: shared kv head
                scores = q[:, head] @ k[:, kv].T / math.sqrt(hd)
                scores = np.where(vis, scores, -np.inf)
                weights[head] = softmax(scores)
            att = np.einsum("hqk,khd->qhd", weights,
                            np.repeat(v, nh // nkv, axis=1)).reshape(S, nh * hd)
            li = np.nonzero(layers == layer)[0]
            for j in li:
                for hi, head in enumerate(heads):
                    out[b, :, j, hi] = weights[head][query_pos]
            x = x + att @ w[pre + "attention.wo.weight"].T
            h = rmsnorm(x, w[pre + "ffn_norm.weight"], c.norm_eps)
            gate = silu(h @ w[pre + "feed_forward.w1.weight"].T)
            x = x + (gate * (h @ w[pre + "feed_forward.w3.weight"].T)) @ \
                w[pre + "feed_forward.w2.weight"].T
    return out


# ============================================================================ sampling

def sampling_probs(logits_row, temperature: float, top_k: int = 0,
                   top_p: float = 1.0) -> np.ndarray:
    """The sampling distribution (vocab,) float64 of one logits row, as zp_sampling_probs.

    temperature and top_p are rounded to float32 first, as the engine stores them (zp_sampling).
    temperature 0: one-hot at the argmax (lowest index on ties). Else z = logits / temperature;
    top_k > 0 keeps every z >= the k-th largest (ties kept); top_p < 1 sorts the survivors by
    probability descending (ties: lower index first) and keeps sorted token i iff i == 0 or the
    probability before it is <= top_p; softmax over the kept set.
    """
    lg = np.asarray(logits_row, dtype=np.float64)
    V = lg.shape[0]
    temperature = float(np.float32(temperature))
    top_p = float(np.float32(top_p))
    probs = np.zeros(V)
    if temperature == 0.0:
        best = 0
        for v in range(1, V):
            if lg[v] > lg[best]:
                best = v
        probs[best] = 1.0
        return probs
    z = lg / temperature
    keep = np.ones(V, dtype=bool)
    if 0 < top_k < V:   # compared on the logits: dividing by temperature > 0 keeps the order
        kth = np.sort(lg)[::-1][top_k - 1]
        keep = lg >= kth
    zmax = max(z[v] for v in range(V) if keep[v])
    for v in range(V):
        probs[v] = math.exp(z[v] - zmax) if keep[v] else 0.0
    probs /= probs.sum()
    if top_p < 1.0:
        order = sorted((v for v in range(V) if probs[v] > 0), key=lambda v: (-probs[v], v))
        before = 0.0
        for i, v in enumerate(order):
            p = probs[v]
            if i > 0 and before > top_p:
                keep[v] = False
            before += p
        probs = np.where(keep, probs, 0.0)
        probs /= probs.sum()
    return probs


def draw(probs, u: float) -> int:
    """Inverse-CDF draw as zp_draw: the first index with probs > 0 whose running sum (index
    order) exceeds u * sum(probs); if rounding leaves none, the last index with probs > 0."""
    p = np.asarray(probs, dtype=np.float64)
    total, last = 0.0, 0
    for v in range(p.shape[0]):
        total += p[v]
        if p[v] > 0:
            last = v
    target, acc = u * total, 0.0
    for v in range(p.shape[0]):
        if p[v] <= 0:
            continue
        acc += p[v]
        if acc > target:
            return v
    return last


# ============================================================================ Philox4x32-10

_M32 = 0xFFFFFFFF
PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57   # round multipliers
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85   # Weyl key increments


def philox4x32_10(ctr4: Sequence[int], key2: Sequence[int]) -> Tuple[int, int, int, int]:
    """Random123's Philox4x32 with 10 rounds: 4 x uint32 counter, 2 x uint32 key -> 4 x uint32."""
    c0, c1, c2, c3 = (int(v) & _M32 for v in ctr4)
    k0, k1 = (int(v) & _M32 for v in key2)
    for _ in range(10):
        p0 = PHILOX_M0 * c0
        p1 = PHILOX_M1 * c2
        hi0, lo0 = p0 >> 32, p0 & _M32
        hi1, lo1 = p1 >> 32, p1 & _M32
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + PHILOX_W0) & _M32
        k1 = (k1 + PHILOX_W1) & _M32
    return c0, c1, c2, c3


def uniform(seed: int, sample_id: int, pos: int, draw: int) -> float:
    """Uniform in [0, 1) with 53 random bits from counter (draw, pos, sample_id, 0) and key
    (seed low 32 bits, seed high 32 bits), as zp_uniform."""
    x = philox4x32_10((draw, pos, sample_id, 0), (seed & _M32, (seed >> 32) & _M32))
    a, b = x[0] >> 5, x[1] >> 6            # 27 + 26 bits
    return (a * 67108864 + b) / 2.0 ** 53
