"""The Python face of the engine: :class:`Model`, generation, scoring and the low-level session."""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np

from . import _core
from .config import ModelConfig
from .policies import AdaptiveZipAR, Policy, PolicyState, Raster, ZipAR, _Builtin

__all__ = ["Model", "GenerationResult", "RawSession", "expected_weight_shapes", "ROLES"]

#: Query roles recorded in traces (csrc/zipar.h ZP_ROLE_*).
ROLES = ("prefix", "sample", "proxy", "refeed", "verify", "draft", "eor")

_LAYER_KEYS = ("attention_norm.weight", "attention.wqkv.weight", "attention.wo.weight",
               "ffn_norm.weight", "feed_forward.w1.weight", "feed_forward.w3.weight",
               "feed_forward.w2.weight")


def expected_weight_shapes(cfg: ModelConfig) -> Dict[str, tuple]:
    """State-dict names and shapes a Model of this config needs (llamagen.md)."""
    D, hd = cfg.dim, cfg.head_dim
    shapes = {
        "tok_embeddings.weight": (cfg.vocab_size, D),
        "norm.weight": (D,),
        "output.weight": (cfg.vocab_size, D),
    }
    if cfg.caption_dim:
        shapes["cls_embedding.cap_proj.fc1.weight"] = (D, cfg.caption_dim)
        shapes["cls_embedding.cap_proj.fc2.weight"] = (D, D)
        shapes["cls_embedding.uncond_embedding"] = (cfg.cls_token_num, cfg.caption_dim)
    else:
        shapes["cls_embedding.embedding_table.weight"] = (cfg.num_classes + 1, D)
    qkv = (cfg.n_head + 2 * cfg.n_kv_head) * hd
    per_layer = ((D,), (qkv, D), (D, cfg.n_head * hd), (D,), (cfg.hidden, D), (cfg.hidden, D),
                 (D, cfg.hidden))
    for i in range(cfg.n_layer):
        for key, shape in zip(_LAYER_KEYS, per_layer):
            shapes[f"layers.{i}.{key}"] = shape
    return shapes


# Optional keys that are accepted and ignored (LlamaGen buffers recomputed here).
_IGNORED_KEYS = {"freqs_cis"}
_FLOAT_KINDS = (np.float32, np.float16, np.float64)


def _to_float32(name: str, a) -> np.ndarray:
    """float32 view (no copy when already C-contiguous float32) of a weight; uint16 = bfloat16."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"weight {name!r} must be a numpy array, got {type(a).__name__}")
    if a.dtype == np.uint16:  # bfloat16 bit patterns: the high half of a float32
        a = (a.astype(np.uint32) << 16).view(np.float32)
    elif a.dtype.type not in _FLOAT_KINDS:
        raise TypeError(f"weight {name!r} has dtype {a.dtype}; expected float32, float16, "
                        "float64 or bfloat16 given as uint16")
    out = np.ascontiguousarray(a, dtype=np.float32)
    if not np.isfinite(out).all():
        raise ValueError(f"weight {name!r} contains NaN or inf")
    return out


def _softmax_logprob(logits: np.ndarray) -> np.ndarray:
    m = logits.max(axis=-1, keepdims=True)
    z = logits.astype(np.float64) - m
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


@dataclasses.dataclass
class GenerationResult:
    """Output of :meth:`Model.generate`.

    tokens: (B, H, W) int32. stats: forward passes, queries per pass (histogram), proxies,
    refeeds, adaptive draft counters, per-row start passes, seconds. config: everything needed to
    reproduce the call. trace: when requested, (n, 6) int32 rows (pass, image, row, col, role,
    input token) of every query, row/col of the slot it writes (row -1: conditioning position
    col; col W: end-of-row slot), role names in ``zipar.ROLES``. images: uint8 pixels when a decoder or tokenizer is
    attached.
    """

    tokens: np.ndarray
    stats: Dict[str, Any]
    config: Dict[str, Any]
    trace: Optional[np.ndarray] = None
    images: Optional[np.ndarray] = None

    def trace_records(self):
        """The trace as a list of dicts (pass, image, row, col, role name)."""
        if self.trace is None:
            raise ValueError("generate(..., trace=True) records a trace")
        return [dict(pass_index=int(p), image=int(i), row=int(r), col=int(c), role=ROLES[k],
                     token=int(t)) for p, i, r, c, k, t in self.trace]


class Model:
    """A LlamaGen-architecture GPT on the zipar C core.

    ``weights`` maps LlamaGen state-dict names to NumPy arrays (llamagen.md). Every key, shape and
    dtype is checked; missing or unexpected keys raise ``ValueError`` naming them (``freqs_cis``
    is ignored). float16, float64 and bfloat16 (as uint16 bit patterns) are converted to float32
    copies; C-contiguous float32 arrays are used in place: they are borrowed, the Model keeps them
    alive, and they must not be modified while it exists.
    """

    def __init__(self, config: ModelConfig, weights: Mapping[str, np.ndarray], *, tokenizer=None,
                 decoder=None):
        if not isinstance(config, ModelConfig):
            raise TypeError("config must be a zipar.ModelConfig")
        if not isinstance(weights, Mapping):
            raise TypeError("weights must be a mapping of state-dict names to numpy arrays")
        expected = expected_weight_shapes(config)
        keys = set(weights) - _IGNORED_KEYS
        missing = sorted(set(expected) - keys)
        extra = sorted(keys - set(expected))
        if missing:
            raise ValueError(f"missing weight(s): {', '.join(missing[:8])}"
                             + (f" and {len(missing) - 8} more" if len(missing) > 8 else ""))
        if extra:
            raise ValueError(f"unexpected weight(s): {', '.join(extra[:8])}"
                             + (f" and {len(extra) - 8} more" if len(extra) > 8 else ""))
        w = {}
        for name, shape in expected.items():
            a = weights[name]
            if getattr(a, "shape", None) != shape:
                raise ValueError(f"weight {name!r} has shape {getattr(a, 'shape', None)}, "
                                 f"expected {shape}")
            w[name] = _to_float32(name, a)
        self.config = config
        self.weights = w
        self.tokenizer = tokenizer
        self.decoder = decoder
        arrays = [w["tok_embeddings.weight"], w["norm.weight"], w["output.weight"]]
        for i in range(config.n_layer):
            arrays += [w[f"layers.{i}.{k}"] for k in _LAYER_KEYS]
        c = config
        self._core = _core.Model(
            (c.dim, c.n_layer, c.n_head, c.n_kv_head, c.head_dim, c.hidden, c.vocab_size,
             c.cls_token_num, c.H, c.W, c.eor, c.eor_token, c.norm_eps, c.rope_base), arrays)

    def __repr__(self):
        c = self.config
        n = sum(a.size for a in self.weights.values())
        return (f"<zipar.Model dim={c.dim} layers={c.n_layer} heads={c.n_head} grid={c.H}x{c.W} "
                f"vocab={c.vocab_size} params={n / 1e6:.1f}M>")

    def save(self, path) -> None:
        """Write the weights and config to ``.npz`` or ``.safetensors`` (by extension); reload
        with ``zipar.load_llamagen(path)``. No pickle is involved either way."""
        from .checkpoint import save_npz, save_safetensors

        if str(path).endswith(".safetensors"):
            save_safetensors(path, self.config, self.weights)
        else:
            save_npz(path, self.config, self.weights)

    @property
    def n_params(self) -> int:
        return int(sum(a.size for a in self.weights.values()))

    # ------------------------------------------------------------------ conditioning
    def prefix(self, labels=None, *, captions=None, caption_mask=None):
        """Conditioning embeddings: (cond (B,P,dim), uncond (B,P,dim), mask (B,P) uint8 or None).

        c2i: class labels in [0, num_classes); the unconditional branch uses the null class
        ``num_classes``. t2i: caption embeddings (B, P, caption_dim) with an optional padding mask
        (1 = valid); the unconditional branch uses the stored ``uncond_embedding``.
        """
        c = self.config
        if c.caption_dim and labels is not None:
            raise ValueError("this is a text-conditioned model: pass captions, not labels")
        if not c.caption_dim and (captions is not None or caption_mask is not None):
            raise ValueError("this is a class-conditional model: pass labels, not captions")
        if c.caption_dim:
            if captions is None:
                raise ValueError("this is a text-conditioned model: pass captions=(B, "
                                 f"{c.cls_token_num}, {c.caption_dim}) embeddings")
            cap = np.asarray(captions)
            if cap.ndim != 3 or cap.shape[1:] != (c.cls_token_num, c.caption_dim):
                raise ValueError(f"captions must have shape (B, {c.cls_token_num}, "
                                 f"{c.caption_dim}), got {cap.shape}")
            if not np.issubdtype(cap.dtype, np.floating) or not np.isfinite(cap).all():
                raise ValueError("captions must be finite floats")
            cond = self._cap_proj(cap.astype(np.float32))
            unc = self._cap_proj(np.broadcast_to(self.weights["cls_embedding.uncond_embedding"],
                                                 cap.shape))
            mask = None
            if caption_mask is not None:
                m = np.asarray(caption_mask)
                if m.shape != cap.shape[:2]:
                    raise ValueError(f"caption_mask must have shape {cap.shape[:2]}, got {m.shape}")
                mask = np.ascontiguousarray(m != 0, dtype=np.uint8)
            return cond, unc, mask
        if labels is None:
            raise ValueError("class-conditional model: pass labels")
        lab = np.asarray(labels)
        if lab.ndim == 0:
            lab = lab.reshape(1)
        if lab.ndim != 1 or lab.size == 0 or not np.issubdtype(lab.dtype, np.integer):
            raise ValueError(f"labels must be a non-empty 1-D sequence of ints, got {labels!r}")
        if lab.min() < 0 or lab.max() >= c.num_classes:
            raise ValueError(f"labels must be in [0, {c.num_classes}); got min {lab.min()}, "
                             f"max {lab.max()}")
        table = self.weights["cls_embedding.embedding_table.weight"]
        cond = np.ascontiguousarray(table[lab][:, None, :])
        unc = np.ascontiguousarray(np.broadcast_to(table[c.num_classes], cond.shape))
        return cond, unc, None

    def _cap_proj(self, cap):
        fc1 = self.weights["cls_embedding.cap_proj.fc1.weight"]
        fc2 = self.weights["cls_embedding.cap_proj.fc2.weight"]
        h = cap @ fc1.T
        h = 0.5 * h * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (h + 0.044715 * h ** 3)))
        return np.ascontiguousarray((h @ fc2.T).astype(np.float32))

    # ------------------------------------------------------------------ generation
    def generate(self, labels=None, *, policy=None, cfg_scale: float = 4.0, cfg_interval: int = -1,
                 temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, seed: int = 0,
                 sample_ids=None, captions=None, caption_mask=None, trace: bool = False,
                 progress=False, decode_images: bool = True) -> GenerationResult:
        """Generate a batch of token grids.

        ``policy``: ``zipar.Raster()`` (default), ``zipar.ZipAR(window, ...)``,
        ``zipar.AdaptiveZipAR(min_window, ...)`` or a :class:`zipar.Policy` written in Python.
        ``temperature=0`` is greedy. The random stream is Philox4x32-10 keyed by ``seed`` with
        counter (draw, position, sample id): image i uses ``sample_ids[i]`` (default i), so a
        token does not depend on decoding order, batch composition or thread count.
        ``cfg_scale=1`` turns guidance off (other values, also below 1, use it);
        ``cfg_interval`` >= 0 stops guidance after that many tokens, as LlamaGen does.
        ``progress=True`` shows a tqdm bar over passes (console or notebook). Ctrl-C stops
        between passes: the ``KeyboardInterrupt`` carries ``.partial_result`` with every token
        decoded so far (-1 elsewhere).
        """
        policy = Raster() if policy is None else policy
        if not isinstance(policy, (_Builtin, Policy)):
            raise TypeError("policy must be zipar.Raster(), zipar.ZipAR(...), "
                            "zipar.AdaptiveZipAR(...) or a zipar.Policy subclass")
        sp = _sampling_tuple(cfg_scale, cfg_interval, temperature, top_k, top_p, seed)
        cond, unc, mask = self.prefix(labels, captions=captions, caption_mask=caption_mask)
        B = cond.shape[0]
        sids = _sample_ids(sample_ids, B)
        c = self.config
        pol_tuple = policy._c_tuple(c.W)
        sess = _core.Session(self._core, B, cond, unc, mask, sids, sp, pol_tuple, bool(trace))
        bar = _progress_bar(progress, _expected_passes(policy, c), "generate")
        t0 = time.perf_counter()
        try:
            if isinstance(policy, Policy):
                _run_python_policy(sess, policy, B, (c.H, c.W), bar)
            else:
                sess.run(-1, bar.update_to if bar is not None else None)
        except KeyboardInterrupt as e:
            # Ctrl-C between passes: keep what was decoded (-1 elsewhere) on the exception
            e.partial_result = self._result(sess, policy, labels, sids, trace, t0, False,
                                            cfg_scale, cfg_interval, temperature, top_k, top_p,
                                            seed)
            raise
        finally:
            if bar is not None:
                bar.close()
        return self._result(sess, policy, labels, sids, trace, t0, decode_images, cfg_scale,
                            cfg_interval, temperature, top_k, top_p, seed)

    def _result(self, sess, policy, labels, sids, trace, t0, decode_images, cfg_scale,
                cfg_interval, temperature, top_k, top_p, seed):
        c = self.config
        seconds = time.perf_counter() - t0
        stats = dict(sess.stats)
        pq = sess.pass_queries
        stats["queries_per_pass"] = _histogram(pq)
        stats["mean_queries_per_pass"] = float(pq.mean()) if pq.size else 0.0
        stats["row_start_pass"] = sess.row_start
        stats["seconds"] = seconds
        stats["raster_passes"] = c.H * c.W
        stats["step_reduction"] = 1.0 - stats["forward_passes"] / (c.H * c.W)
        config = dict(model=c.to_dict(), policy=policy.to_dict(), cfg_scale=float(cfg_scale),
                      cfg_interval=int(cfg_interval), temperature=float(temperature),
                      top_k=int(top_k), top_p=float(top_p), seed=int(seed),
                      sample_ids=sids.tolist(),
                      labels=None if labels is None else np.asarray(labels).reshape(-1).tolist())
        result = GenerationResult(tokens=sess.tokens, stats=stats, config=config,
                                  trace=sess.trace if trace else None)
        if decode_images and sess.done:
            result.images = self.decode(result.tokens)
        return result

    def decode(self, tokens):
        """Pixels for token grids, through the attached VQ decoder or tokenizer (else None)."""
        if self.decoder is not None:
            return self.decoder.decode(tokens)
        if self.tokenizer is not None:
            return self.tokenizer.decode(tokens)
        return None

    # ------------------------------------------------------------------ scoring
    def logits(self, labels=None, tokens=None, cfg_scale: float = 1.0, *, captions=None,
               caption_mask=None, batch: int = 8) -> np.ndarray:
        """Teacher-forced logits (B, H*W, vocab) predicting every grid cell, all in one pass per
        ``batch`` images (cell (0, 0) from the last conditioning position)."""
        c = self.config
        cond, unc, mask = self.prefix(labels, captions=captions, caption_mask=caption_mask)
        toks = self._check_tokens(tokens, cond.shape[0])
        B = toks.shape[0]
        guided = float(cfg_scale) != 1.0
        if not math.isfinite(float(cfg_scale)):
            raise ValueError("cfg_scale must be finite")
        out = np.empty((B, c.H * c.W, c.vocab_size), np.float32)
        for b0 in range(0, B, batch):
            b1 = min(B, b0 + batch)
            n = b1 - b0
            cache = _core.Cache(self._core, n, int(guided), np.ascontiguousarray(cond[b0:b1]),
                                np.ascontiguousarray(unc[b0:b1]),
                                None if mask is None else np.ascontiguousarray(mask[b0:b1]))
            q, order = self._teacher_queries(toks[b0:b1], guided)
            lg = cache.forward(q, float(cfg_scale))
            out[b0:b1] = lg[order].reshape(n, c.H * c.W, c.vocab_size)
        return out

    def log_prob(self, labels=None, tokens=None, *, captions=None, caption_mask=None,
                 batch: int = 8) -> np.ndarray:
        """Per-image log-likelihood (nats, float64) of token grids under the model (no CFG)."""
        c = self.config
        toks = self._check_tokens(tokens, None)
        out = np.empty(toks.shape[0])
        for b0 in range(0, toks.shape[0], batch):
            b1 = min(toks.shape[0], b0 + batch)
            lab = None if labels is None else np.asarray(labels).reshape(-1)[b0:b1]
            cap = None if captions is None else np.asarray(captions)[b0:b1]
            cm = None if caption_mask is None else np.asarray(caption_mask)[b0:b1]
            lg = self.logits(lab, toks[b0:b1], 1.0, captions=cap, caption_mask=cm, batch=batch)
            lp = _softmax_logprob(lg)
            flat = toks[b0:b1].reshape(b1 - b0, c.H * c.W)
            out[b0:b1] = np.take_along_axis(lp, flat[..., None], axis=2)[..., 0].sum(axis=1)
        return out

    def _check_tokens(self, tokens, B):
        c = self.config
        if tokens is None:
            raise ValueError("tokens are required")
        t = np.asarray(tokens)
        if t.ndim == 2:
            t = t[None]
        if t.ndim != 3 or t.shape[1:] != (c.H, c.W):
            raise ValueError(f"tokens must have shape (B, {c.H}, {c.W}), got {np.shape(tokens)}")
        if not np.issubdtype(t.dtype, np.integer):
            raise ValueError(f"tokens must be integers, got {t.dtype}")
        if t.size and (t.min() < 0 or t.max() >= c.vocab_size):
            raise ValueError(f"tokens must be in [0, {c.vocab_size})")
        if B is not None and t.shape[0] != B:
            raise ValueError(f"{t.shape[0]} token grids for {B} labels")
        return t.astype(np.int32)

    def _teacher_queries(self, toks, guided):
        """Queries of a full committed pass; returns (queries, order of logits rows per cell)."""
        c = self.config
        n = toks.shape[0]
        P, W, E = c.cls_token_num, c.W, c.eor
        rows = []
        cell_of_pos = {}  # position -> index of the cell its logits predict
        for p in range(P):
            rows.append((p, 0))
        for r in range(c.H):
            for col in range(W):
                rows.append((c.cell_pos(r, col), None))
            if E:
                rows.append((c.cell_pos(r, W), c.eor_token))
        # which positions predict a grid cell
        cell_of_pos[P - 1] = 0
        for r in range(c.H):
            for col in range(W):
                idx = r * W + col
                if idx + 1 < c.H * W:
                    nr, ncol = divmod(idx + 1, W)
                    prev = c.cell_pos(r, col) if ncol > 0 or not E else c.cell_pos(r, W)
                    cell_of_pos[prev] = idx + 1
        last = c.cell_pos(c.H - 1, W - 1)
        q = []
        pred = []
        for b in range(n):
            for pos, fixed in rows:
                if pos == last or (E and pos == c.cell_pos(c.H - 1, W)):
                    continue  # nothing after the final cell is needed
                if pos < P:
                    token = 0
                elif fixed is not None:
                    token = fixed
                else:
                    rel = pos - P
                    token = int(toks[b, rel // (W + E), rel % (W + E)])
                want = pos in cell_of_pos
                q.append((b, pos, token, 0, int(want), int(guided)))
                if want:
                    pred.append(b * c.H * W + cell_of_pos[pos])
        order = np.argsort(np.asarray(pred), kind="stable")
        return np.ascontiguousarray(np.asarray(q, dtype=np.int32)), order

    def attention(self, labels=None, tokens=None, *, cells=None, layers=None, heads=None,
                  cfg_scale: float = 1.0, captions=None, caption_mask=None) -> np.ndarray:
        """Attention weights of teacher-forced queries, from the engine.

        Feeds the full grid ``tokens`` (B, H, W) in one committed pass and returns, for every
        image, requested query cell, layer and head, the softmax weights over all sequence slots
        of the conditional stream: an array (B, n_cells, n_layers, n_heads, seq_len) whose rows
        sum to 1. ``cells``: (n, 2) grid cells (row, col) whose *input* query is captured (the
        query fed with that cell's token); default all cells. ``layers``/``heads``: default all.
        Slot p maps to grid cell ((p - P) // (W + E), (p - P) % (W + E)) for p >= P.
        """
        c = self.config
        cond, unc, mask = self.prefix(labels, captions=captions, caption_mask=caption_mask)
        toks = self._check_tokens(tokens, cond.shape[0])
        B = toks.shape[0]
        if cells is None:
            cells = np.array([(r, col) for r in range(c.H) for col in range(c.W)])
        cells = np.asarray(cells).reshape(-1, 2)
        if cells.size and ((cells[:, 0] < 0).any() or (cells[:, 0] >= c.H).any() or
                           (cells[:, 1] < 0).any() or (cells[:, 1] >= c.W).any()):
            raise ValueError("attention cells out of the grid")
        layers = np.arange(c.n_layer) if layers is None else np.asarray(layers).reshape(-1)
        heads = np.arange(c.n_head) if heads is None else np.asarray(heads).reshape(-1)
        if layers.size and (layers.min() < 0 or layers.max() >= c.n_layer):
            raise ValueError(f"layers must be in [0, {c.n_layer})")
        if heads.size and (heads.min() < 0 or heads.max() >= c.n_head):
            raise ValueError(f"heads must be in [0, {c.n_head})")
        guided = float(cfg_scale) != 1.0
        out = np.zeros((B, len(cells), len(layers), len(heads), c.seq_len), np.float32)
        for b in range(B):
            cache = _core.Cache(self._core, 1, int(guided), np.ascontiguousarray(cond[b:b + 1]),
                                np.ascontiguousarray(unc[b:b + 1]),
                                None if mask is None else np.ascontiguousarray(mask[b:b + 1]))
            q = self._full_queries(toks[b:b + 1], guided)
            index = {int(p): i for i, p in enumerate(q[:, 1])}
            want = [index[c.cell_pos(r, col)] for r, col in cells]
            req = np.array([(qi, l, h) for qi in want for l in layers for h in heads],
                           dtype=np.int32).reshape(-1, 3)
            buf = np.zeros((len(req), c.seq_len), np.float32)
            cap = (np.ascontiguousarray(req[:, 0]), np.ascontiguousarray(req[:, 1]),
                   np.ascontiguousarray(req[:, 2]), buf)
            cache.forward(np.ascontiguousarray(q), float(cfg_scale), cap)
            out[b] = buf.reshape(len(cells), len(layers), len(heads), c.seq_len)
        return out

    def _full_queries(self, toks, guided):
        """Every position of one image fed committed (the final cell too), no logits."""
        c = self.config
        P, W, E = c.cls_token_num, c.W, c.eor
        q = [(0, p, 0, 0, 0, int(guided)) for p in range(P)]
        for r in range(c.H):
            for col in range(W + E):
                tok = c.eor_token if col == W else int(toks[0, r, col])
                q.append((0, c.cell_pos(r, col), tok, 0, 0, int(guided)))
        return np.asarray(q, dtype=np.int32)

    # ------------------------------------------------------------------ low level
    def session(self, labels=None, *, cfg_scale: float = 1.0, captions=None, caption_mask=None,
                seed: int = 0, sample_ids=None) -> "RawSession":
        """A low-level session: explicit queries, chains, commit/discard (see RawSession)."""
        cond, unc, mask = self.prefix(labels, captions=captions, caption_mask=caption_mask)
        return RawSession(self, cond, unc, mask, float(cfg_scale), int(seed),
                          _sample_ids(sample_ids, cond.shape[0]))


class RawSession:
    """Direct access to the forward primitive for writing acceptance rules in Python.

    ``forward(image, row, col, token, chain, want_logits)`` (equal-length int sequences; row -1
    with col p addresses conditioning position p; col W an end-of-row slot) evaluates one pass and
    returns the logits of the queries that want them. Slots fed with ``chain > 0`` are tentative,
    visible only to queries of that chain, until :meth:`commit` (or :meth:`discard`).
    ``probs``/``uniform``/``draw`` expose the engine's sampling distribution and random stream.
    """

    def __init__(self, model, cond, unc, mask, cfg_scale, seed, sids):
        self.model = model
        self.cfg_scale = cfg_scale
        self.seed = seed
        self.sample_ids = sids
        self.n_images = cond.shape[0]
        self._cache = _core.Cache(model._core, self.n_images, int(cfg_scale != 1.0), cond, unc, mask)
        self.passes = 0

    @property
    def slots(self) -> np.ndarray:
        """(n_images, seq_len) slot states: -1 unwritten, -2 masked, 0 committed, >0 chain."""
        return self._cache.slots

    def position(self, row, col):
        c = self.model.config
        row, col = np.asarray(row), np.asarray(col)
        return np.where(row < 0, col, c.cls_token_num + row * (c.W + c.eor) + col)

    def prefill(self, want_logits=True):
        """Feed every conditioning position of every image; logits predicting cell (0, 0)."""
        P = self.model.config.cls_token_num
        n = self.n_images
        img = np.repeat(np.arange(n), P)
        col = np.tile(np.arange(P), n)
        want = (col == P - 1) & want_logits
        return self.forward(img, -np.ones_like(col), col, np.zeros_like(col), 0, want)

    def forward(self, image, row, col, token, chain=0, want_logits=True, guided=None,
                capture=None):
        c = self.model.config
        image, row, col, token = (np.atleast_1d(np.asarray(x)) for x in (image, row, col, token))
        n = image.size
        chain = np.broadcast_to(np.asarray(chain), (n,))
        want = np.broadcast_to(np.asarray(want_logits), (n,))
        if np.any((row >= c.H) | (col < 0) | (col > c.W - 1 + c.eor) |
                  ((row < 0) & (col >= c.cls_token_num))):
            raise ValueError("a query addresses a cell outside the grid")
        pos = self.position(row, col)
        if guided is None:
            g = np.full(n, int(self.cfg_scale != 1.0))
        else:
            g = np.broadcast_to(np.asarray(guided, dtype=np.int32), (n,))
        q = np.ascontiguousarray(np.stack([image, pos, token, chain, want.astype(np.int64), g],
                                          axis=1).astype(np.int32))
        out = self._cache.forward(q, self.cfg_scale, capture)
        self.passes += 1
        return out

    def commit(self, image, row, col):
        """Make tentative slots committed (visible to every later query)."""
        self.slots[np.asarray(image), self.position(row, col)] = 0

    def discard(self, image, row, col):
        """Forget tentative slots (unwritten again)."""
        self.slots[np.asarray(image), self.position(row, col)] = -1

    def probs(self, logits, temperature=1.0, top_k=0, top_p=1.0):
        _sampling_tuple(1.0, -1, temperature, top_k, top_p, 0)
        lg = np.ascontiguousarray(np.atleast_2d(logits), dtype=np.float32)
        return _core.sampling_probs(lg, float(temperature), int(top_k), float(top_p))

    def uniform(self, image, row, col, draw=0):
        pos = int(self.position(row, col))
        return _core.uniform(self.seed, int(self.sample_ids[image]), pos, int(draw))

    @staticmethod
    def draw(probs, u):
        return _core.draw(np.ascontiguousarray(probs, dtype=np.float64), float(u))


# ---------------------------------------------------------------------------- helpers

def _sampling_tuple(cfg_scale, cfg_interval, temperature, top_k, top_p, seed):
    def num(name, v):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
            raise TypeError(f"{name} must be a number, got {v!r}")
        if not math.isfinite(float(v)):
            raise ValueError(f"{name} must be finite, got {v!r}")
        return float(v)

    def integer(name, v):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {v!r}")
        return int(v)

    cfg_scale = num("cfg_scale", cfg_scale)
    temperature = num("temperature", temperature)
    top_p = num("top_p", top_p)
    cfg_interval = integer("cfg_interval", cfg_interval)
    top_k = integer("top_k", top_k)
    seed = integer("seed", seed)
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if cfg_interval < -1:
        raise ValueError(f"cfg_interval must be >= -1, got {cfg_interval}")
    if not 0 <= seed < 2 ** 64:
        raise ValueError("seed must be in [0, 2**64)")
    return (cfg_scale, cfg_interval, temperature, top_k, top_p, seed)


def _sample_ids(sample_ids, B):
    if sample_ids is None:
        return np.arange(B, dtype=np.uint32)
    s = np.asarray(sample_ids)
    if s.shape != (B,) or not np.issubdtype(s.dtype, np.integer):
        raise ValueError(f"sample_ids must be {B} ints")
    if s.min() < 0 or s.max() >= 2 ** 32:
        raise ValueError("sample_ids must be in [0, 2**32)")
    return np.ascontiguousarray(s, dtype=np.uint32)


def _histogram(pq):
    vals, counts = np.unique(pq, return_counts=True)
    return {int(v): int(n) for v, n in zip(vals, counts)}


def _expected_passes(policy, c):
    f = getattr(policy, "expected_passes", None)
    return f(c.H, c.W) if f is not None else None


def _progress_bar(progress, total, desc):
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    bar = tqdm(total=total, desc=desc, unit="pass", leave=False)

    def update_to(n):
        bar.update(n - bar.n)

    bar.update_to = update_to
    return bar


def _run_python_policy(sess, policy, B, grid, bar):
    policy.reset(B, grid)
    passes = 0
    while not sess.done:
        state = PolicyState(tokens=sess.tokens, progress=sess.progress, pass_index=passes)
        cells = policy.select(state)
        cells = np.ascontiguousarray(np.asarray(cells, dtype=np.int64).reshape(-1, 3),
                                     dtype=np.int32)
        if cells.shape[0] == 0:
            raise RuntimeError(f"{type(policy).__name__}.select returned no cells before the "
                               "grid was complete")
        sess.step(cells)
        passes += 1
        if bar is not None:
            bar.update_to(passes)
