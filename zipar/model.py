"""The Python face of the engine: :class:`Model` (weights, conditioning, generation, scoring).

The session objects (:class:`~zipar.session.GenerationResult`, :class:`~zipar.session.RawSession`)
live in zipar.session, the sampling settings in zipar.sampling.
"""

from __future__ import annotations

import json
import math
import re
import time
from typing import Dict, Mapping, Optional, cast

import numpy as np

from ._ext import core
from .config import ModelConfig
from .io.dtypes import as_float, float32_to_bfloat16
from .policies import Policy, Raster, _Builtin, policy_record
from .sampling import Sampling, check_sample_ids, is_guided
from ._checks import INT32_MAX, int_array, int_scalar
from .session import (GenerationResult, RawSession, expected_passes, histogram, progress_bar,
                      run_python_policy)

__all__ = ["Model", "GenerationResult", "RawSession", "expected_weight_shapes", "ROLES",  # noqa: F822
           "LAYER_KEYS", "random_model", "DTYPES", "KV_DTYPES", "convert_weight",
           "is_matrix"]

#: The per-layer weights, in the order of csrc/zipar.h's zp_layer_weights fields: the one list
#: the binding's weight sequence, the shape table and the checkpoint readers follow.
LAYER_KEYS = ("attention_norm.weight", "attention.wqkv.weight", "attention.wo.weight",
               "ffn_norm.weight", "feed_forward.w1.weight", "feed_forward.w3.weight",
               "feed_forward.w2.weight")


_LAYER_KEYS = LAYER_KEYS  # the old private name


def __getattr__(name):
    if name == "ROLES":  # read from the extension on first use (zipar.session)
        from . import session

        return session.ROLES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def layer_shapes(cfg: ModelConfig) -> Dict[str, tuple]:
    """Shapes of one layer's weights, keyed by :data:`LAYER_KEYS`."""
    D, hd = cfg.dim, cfg.head_dim
    qkv = (cfg.n_head + 2 * cast(int, cfg.n_kv_head)) * hd
    shapes = ((D,), (qkv, D), (D, cfg.n_head * hd), (D,), (cfg.hidden, D), (cfg.hidden, D),
              (D, cfg.hidden))
    return dict(zip(LAYER_KEYS, shapes))


def expected_weight_shapes(cfg: ModelConfig) -> Dict[str, tuple]:
    """State-dict names and shapes a Model of this config needs (docs/llamagen.md)."""
    D = cfg.dim
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
    per_layer = layer_shapes(cfg)
    for i in range(cfg.n_layer):
        for key, shape in per_layer.items():
            shapes[f"layers.{i}.{key}"] = shape
    return shapes


# Optional keys that are accepted and ignored (LlamaGen buffers recomputed here).
_IGNORED_KEYS = {"freqs_cis"}

#: Weight types of a Model: its matrices are stored as one of these; activations and every sum
#: stay float32. bfloat16 is held as uint16 bit patterns (NumPy has no bfloat16; the package
#: reads uint16 weights as bfloat16 throughout).
DTYPES = ("float32", "bfloat16", "float16")
# Storage of the K/V cache (zp_cache_set_kv_type): the default float32, or bfloat16 (half the
# bytes; keys and values rounded to nearest even, widened in registers; the rest stays float32).
KV_DTYPES = ("float32", "bfloat16")


def kv_type(kv_dtype) -> int:
    """The core's ZP_WTYPE_* for a K/V cache dtype name; ValueError for any other value."""
    if not isinstance(kv_dtype, str) or kv_dtype not in KV_DTYPES:
        raise ValueError(f"kv_dtype must be one of {KV_DTYPES}, got {kv_dtype!r:.80}")
    return int(getattr(core(), "ZP_WTYPE_F32" if kv_dtype == "float32" else "ZP_WTYPE_BF16"))
_NP_OF = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(np.uint16),
          "float16": np.dtype(np.float16)}

# The matrices the engine reads (and keeps in the Model's dtype); "module." / "_orig_mod."
# prefixes of raw checkpoint names allowed. Everything else (norms, class table, caption
# projection) is small and stays float32.
_MATRIX = re.compile(r"^(?:(?:module|_orig_mod)\.)*(?:tok_embeddings|output|layers\.\d+\."
                     r"(?:attention\.wqkv|attention\.wo|feed_forward\.w[123]))\.weight$")


def is_matrix(name: str) -> bool:
    """Whether the weight ``name`` is one the engine keeps in the Model's dtype."""
    return bool(_MATRIX.match(name))


def _check_finite(name: str, a: np.ndarray) -> None:
    if a.dtype == np.uint16:  # bfloat16 bits: exponent all ones is inf or NaN
        bad = ((a & np.uint16(0x7F80)) == np.uint16(0x7F80)).any()
    else:
        bad = not np.isfinite(a).all()
    if bad:
        raise ValueError(f"weight {name!r} contains NaN or inf")


def convert_weight(name: str, a, dtype: str = "float32", *, check: bool = True,
                   matrix: Optional[bool] = None) -> np.ndarray:
    """The C-contiguous array a Model of weight type ``dtype`` holds for weight ``name``.

    Matrices (:func:`is_matrix`) become ``dtype``: "float32", "bfloat16" (uint16 bit patterns,
    rounded to nearest even) or "float16" (rounded to nearest); every other weight float32.
    Input uint16 arrays are bfloat16 bits. An array already in its target type is returned as
    it is (no copy: a memory map stays a memory map). ``check``: ValueError on NaN or inf.
    ``matrix``: whether the weight is one the engine keeps in ``dtype`` (default: by its
    LlamaGen name, :func:`is_matrix`; other families name their matrices themselves).
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
    if not isinstance(a, np.ndarray):
        raise TypeError(f"weight {name!r} must be a numpy array, got {type(a).__name__}")
    target = dtype if (is_matrix(name) if matrix is None else matrix) else "float32"
    want = _NP_OF[target]
    if a.dtype == want and a.flags.c_contiguous and a.flags.aligned:
        out = a
    elif a.dtype == want:
        out = np.array(a, order="C")  # a contiguous, aligned copy
    elif target == "float32":
        out = as_float(name, a, np.float32)
    elif target == "bfloat16":
        out = float32_to_bfloat16(as_float(name, a, np.float32))
    else:
        with np.errstate(over="ignore"):  # beyond float16's range -> inf, refused below
            out = np.ascontiguousarray(as_float(name, a, np.float32).astype(np.float16))
    if check:
        _check_finite(name, out)
    return out


def _to_float32(name: str, a) -> np.ndarray:
    """float32 view (no copy when already C-contiguous float32) of a weight; uint16 = bfloat16."""
    out = as_float(name, a, np.float32)
    _check_finite(name, out)
    return out


def _softmax_logprob(logits: np.ndarray) -> np.ndarray:
    m = logits.max(axis=-1, keepdims=True)
    z = logits.astype(np.float64) - m
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


class Model:
    """A LlamaGen-architecture GPT on the zipar C core.

    ``weights`` maps LlamaGen state-dict names to NumPy arrays (docs/llamagen.md). Every key,
    shape and dtype is checked; missing or unexpected keys raise ``ValueError`` naming them
    (``freqs_cis`` is ignored).

    ``dtype`` is how the matrices (embeddings, attention and feed-forward projections, output
    head) are stored and read by every pass: "float32" (default), "bfloat16" or "float16"; the
    norms and the conditioning tables stay float32, and activations and all accumulation are
    float32 whatever ``dtype`` is (the kernels widen each weight in registers, exactly).
    bfloat16 arrays are uint16 bit patterns, in and out. Weights of another type are converted
    (float32 -> bfloat16 rounds to nearest even); arrays already C-contiguous in their target
    type are used in place, memory maps included: they are borrowed, the Model keeps them
    alive, and they must not be modified while it exists. ``model.dtype`` says which it is;
    :meth:`save` writes the weights as stored.

    ``row_start_proxy``: the token ``proxy="calibrated"`` feeds for a missing end of row (an int
    in ``[0, vocab_size)``, or None: not calibrated), usually the result of
    :func:`zipar.calibrate_proxy`; an attribute that may be set later, kept by :meth:`save`.
    """

    def __init__(self, config: ModelConfig, weights: Mapping[str, np.ndarray], *, tokenizer=None,
                 decoder=None, dtype: str = "float32", row_start_proxy: Optional[int] = None):
        if not isinstance(config, ModelConfig):
            raise TypeError("config must be a zipar.ModelConfig")
        if not isinstance(weights, Mapping):
            raise TypeError("weights must be a mapping of state-dict names to numpy arrays")
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")
        not_str = [k for k in weights if not isinstance(k, str)]
        if not_str:
            raise ValueError(f"weight names must be strings, got {not_str[0]!r:.80} "
                             f"({type(not_str[0]).__name__})")
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
            if not isinstance(a, np.ndarray):
                raise TypeError(f"weight {name!r} must be a numpy array of shape {shape}, got "
                                f"{type(a).__name__}")
            if a.shape != shape:
                raise ValueError(f"weight {name!r} has shape {getattr(a, 'shape', None)}, "
                                 f"expected {shape}")
            w[name] = convert_weight(name, a, dtype)
        self.config = config
        self._dtype = dtype
        self.row_start_proxy = row_start_proxy   # checked by the setter
        self.weights = w
        self.tokenizer = tokenizer
        self.decoder = decoder
        arrays = [w["tok_embeddings.weight"], w["norm.weight"], w["output.weight"]]
        for i in range(config.n_layer):
            arrays += [w[f"layers.{i}.{k}"] for k in LAYER_KEYS]
        wtype = {"float32": "ZP_WTYPE_F32", "bfloat16": "ZP_WTYPE_BF16",
                 "float16": "ZP_WTYPE_F16"}[dtype]
        self._core = core().Model(arrays, **config.c_kwargs(), wtype=getattr(core(), wtype))

    @property
    def dtype(self) -> str:
        """How the matrices are stored: "float32", "bfloat16" (uint16 bits) or "float16"."""
        return self._dtype

    @property
    def row_start_proxy(self) -> Optional[int]:
        """The calibrated row-start proxy token (``proxy="calibrated"``), or None."""
        return self._row_start_proxy

    @row_start_proxy.setter
    def row_start_proxy(self, token) -> None:
        if token is not None:
            V = self.config.vocab_size
            if isinstance(token, (bool, np.bool_)) or not isinstance(token, (int, np.integer)):
                raise TypeError(f"row_start_proxy must be an int token id or None, got "
                                f"{token!r:.80}")
            if not 0 <= token < V:
                raise ValueError(f"row_start_proxy {token} is outside the model's image tokens: "
                                 f"valid ids are 0..{V - 1}")
            token = int(token)
        self._row_start_proxy = token

    def _stored_config_json(self) -> str:
        """What :meth:`save` stores as the config: the ModelConfig's JSON, with the key
        "row_start_proxy" beside its fields when one is set."""
        if self.row_start_proxy is None:
            return self.config.to_json()
        return json.dumps(dict(self.config.to_dict(), row_start_proxy=self.row_start_proxy),
                          sort_keys=True)

    def _policy_kwargs(self, policy) -> dict:
        """The zp_policy fields of ``policy`` for this model (its grid width, its image tokens
        and its calibrated proxy)."""
        return policy.c_kwargs(self.config.W, n_tokens=self.config.vocab_size,
                               row_start_proxy=self.row_start_proxy)

    def __repr__(self):
        c = self.config
        n = sum(a.size for a in self.weights.values())
        return (f"<zipar.Model dim={c.dim} layers={c.n_layer} heads={c.n_head} grid={c.H}x{c.W} "
                f"vocab={c.vocab_size} params={n / 1e6:.1f}M dtype={self.dtype}>")

    def save(self, path) -> None:
        """Write the weights and config to ``.npz`` or ``.safetensors`` (by extension), in the
        stored dtype (bfloat16 matrices as BF16 tensors in .safetensors, as uint16 bit patterns
        in .npz); reload with ``zipar.load_llamagen(path)``, which keeps that dtype and the
        ``row_start_proxy``. No pickle is involved either way."""
        from .io.npz import write_npz
        from .io.safetensors import write_safetensors

        if str(path).endswith(".safetensors"):
            bf16 = [k for k, v in self.weights.items() if v.dtype == np.uint16]
            write_safetensors(path, self.weights, config_json=self._stored_config_json(),
                              bfloat16=bf16)
        else:
            write_npz(path, self.weights, config_json=self._stored_config_json())

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
        lab = int_array("labels", labels, 0, c.num_classes - 1)
        if lab.ndim == 0:
            lab = lab.reshape(1)
        if lab.ndim != 1 or lab.size == 0:
            raise ValueError(f"labels must be a non-empty 1-D sequence of ints, got {labels!r:.80}")
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
    def generate(self, labels=None, *, policy=None, cfg_scale: float = Sampling.cfg_scale,
                 cfg_interval: int = Sampling.cfg_interval,
                 temperature: float = Sampling.temperature, top_k: int = Sampling.top_k,
                 top_p: float = Sampling.top_p, seed: int = Sampling.seed, sample_ids=None,
                 captions=None, caption_mask=None, trace: bool = False, progress=False,
                 decode_images: bool = True, sampling: "Sampling | None" = None,
                 kv_dtype: str = "float32") -> GenerationResult:
        """Generate a batch of token grids.

        ``policy``: ``zipar.Raster()`` (default), ``zipar.ZipAR(window, ...)``,
        ``zipar.AdaptiveZipAR(min_window, ...)`` or a :class:`zipar.Policy` written in Python.
        ``temperature=0`` is greedy. The random stream is Philox4x32-10 keyed by ``seed`` with
        counter (draw, position, sample id): image i uses ``sample_ids[i]`` (default i), so a
        token does not depend on decoding order, batch composition or thread count.
        ``cfg_scale=1`` turns guidance off (other values, also below 1, use it);
        ``cfg_interval`` >= 0 stops guidance after that many tokens, as LlamaGen does.
        ``sampling``: a :class:`zipar.Sampling` given instead of the six sampling keywords.
        ``progress=True`` shows a tqdm bar over passes (console or notebook). Ctrl-C stops
        between passes: the ``KeyboardInterrupt`` carries ``.partial_result`` with every token
        decoded so far (-1 elsewhere).
        ``kv_dtype``: storage of the K/V cache, "float32" (default) or "bfloat16" (half the
        bytes and half attention's memory traffic; keys and values rounded to nearest even,
        everything else float32; tokens stay independent of batch and thread count, and ZipAR(W)
        still equals raster); ``stats["kv_cache_bytes"]`` is its size.
        """
        kvt = kv_type(kv_dtype)
        policy = Raster() if policy is None else policy
        if not isinstance(policy, (_Builtin, Policy)):
            raise TypeError("policy must be zipar.Raster(), zipar.ZipAR(...), "
                            "zipar.AdaptiveZipAR(...) or a zipar.Policy subclass")
        if sampling is None:
            sampling = Sampling(cfg_scale, cfg_interval, temperature, top_k, top_p, seed)
        elif not isinstance(sampling, Sampling):
            raise TypeError("sampling must be a zipar.Sampling")
        cond, unc, mask = self.prefix(labels, captions=captions, caption_mask=caption_mask)
        B = cond.shape[0]
        sids = check_sample_ids(sample_ids, B)
        c = self.config
        sess = core().Session(self._core, B, cond, unc, mask, sids, **sampling.c_kwargs(),
                              **self._policy_kwargs(policy), trace=bool(trace), kv_type=kvt)
        bar = progress_bar(progress, expected_passes(policy, c), "generate")
        t0 = time.perf_counter()
        try:
            if isinstance(policy, Policy):
                run_python_policy(sess, policy, B, (c.H, c.W), bar)
            else:
                sess.run(-1, bar.update_to if bar is not None else None)
        except KeyboardInterrupt as e:
            # Ctrl-C between passes: keep what was decoded (-1 elsewhere) on the exception
            partial = self._result(sess, policy, labels, sids, trace, t0, False, sampling,
                                   kv_dtype)
            setattr(e, "partial_result", partial)
            raise
        finally:
            if bar is not None:
                bar.close()
        return self._result(sess, policy, labels, sids, trace, t0, decode_images, sampling,
                            kv_dtype)

    def _result(self, sess, policy, labels, sids, trace, t0, decode_images, sampling,
                kv_dtype="float32"):
        c = self.config
        seconds = time.perf_counter() - t0
        stats = dict(sess.stats)
        pq = sess.pass_queries
        stats["queries_per_pass"] = histogram(pq)
        stats["mean_queries_per_pass"] = float(pq.mean()) if pq.size else 0.0
        stats["row_start_pass"] = sess.row_start
        stats["image_passes"] = sess.image_passes
        stats["image_queries"] = sess.image_queries
        stats["seconds"] = seconds
        stats["raster_passes"] = c.H * c.W
        stats["step_reduction"] = 1.0 - stats["forward_passes"] / (c.H * c.W)
        stats["kv_cache_bytes"] = sess.kv_bytes
        config = dict(model=c.to_dict(), policy=policy_record(policy, self.row_start_proxy),
                      **sampling.to_dict(), kv_dtype=kv_dtype,
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
               caption_mask=None, batch: int = 8, kv_dtype: str = "float32") -> np.ndarray:
        """Teacher-forced logits (B, H*W, vocab) predicting every grid cell, all in one pass per
        ``batch`` images (cell (0, 0) from the last conditioning position); ``kv_dtype`` as
        :meth:`generate`."""
        c = self.config
        kvt = kv_type(kv_dtype)
        batch = int_scalar("batch", batch, 1, INT32_MAX)
        cfg_scale = Sampling(cfg_scale=cfg_scale).cfg_scale  # a finite number
        cond, unc, mask = self.prefix(labels, captions=captions, caption_mask=caption_mask)
        toks = self._check_tokens(tokens, cond.shape[0])
        B = toks.shape[0]
        guided = is_guided(cfg_scale)
        out = np.empty((B, c.H * c.W, c.vocab_size), np.float32)
        for b0 in range(0, B, batch):
            b1 = min(B, b0 + batch)
            n = b1 - b0
            cache = core().Cache(self._core, n, guided, np.ascontiguousarray(cond[b0:b1]),
                                np.ascontiguousarray(unc[b0:b1]),
                                None if mask is None else np.ascontiguousarray(mask[b0:b1]),
                                kv_type=kvt)
            q, order = self._teacher_queries(toks[b0:b1], guided)
            lg = cache.forward(q, float(cfg_scale))
            out[b0:b1] = lg[order].reshape(n, c.H * c.W, c.vocab_size)
        return out

    def log_prob(self, labels=None, tokens=None, *, captions=None, caption_mask=None,
                 batch: int = 8, kv_dtype: str = "float32") -> np.ndarray:
        """Per-image log-likelihood (nats, float64) of token grids under the model (no CFG);
        ``kv_dtype`` as :meth:`generate`."""
        c = self.config
        kv_type(kv_dtype)
        batch = int_scalar("batch", batch, 1, INT32_MAX)
        toks = self._check_tokens(tokens, None)
        for what, v in (("labels", labels), ("captions", captions),
                        ("caption_mask", caption_mask)):
            if v is not None:
                n = np.asarray(v).reshape(-1).size if what == "labels" else len(np.asarray(v))
                if n != toks.shape[0]:
                    raise ValueError(f"{n} {what} for {toks.shape[0]} token grids: one each")
        out = np.empty(toks.shape[0])
        for b0 in range(0, toks.shape[0], batch):
            b1 = min(toks.shape[0], b0 + batch)
            lab = None if labels is None else np.asarray(labels).reshape(-1)[b0:b1]
            cap = None if captions is None else np.asarray(captions)[b0:b1]
            cm = None if caption_mask is None else np.asarray(caption_mask)[b0:b1]
            lg = self.logits(lab, toks[b0:b1], 1.0, captions=cap, caption_mask=cm, batch=batch,
                             kv_dtype=kv_dtype)
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
            raise ValueError(f"tokens must have shape (B, {c.H}, {c.W}), got {t.shape}")
        t = int_array("tokens", t, 0, c.vocab_size - 1)
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
                    token = int(toks[(b,) + c.cell_of(pos)])
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
        Slot p >= P holds grid cell ``config.cell_of(p)`` (column W: an end-of-row slot).
        """
        c = self.config
        cond, unc, mask = self.prefix(labels, captions=captions, caption_mask=caption_mask)
        toks = self._check_tokens(tokens, cond.shape[0])
        B = toks.shape[0]
        if cells is None:
            cells = np.array([(r, col) for r in range(c.H) for col in range(c.W)])
        cells = int_array("attention cells", cells)
        if cells.size % 2:
            raise ValueError(f"attention cells must be (row, col) pairs, got shape {cells.shape}")
        cells = cells.reshape(-1, 2)
        if cells.size and ((cells[:, 0] < 0).any() or (cells[:, 0] >= c.H).any() or
                           (cells[:, 1] < 0).any() or (cells[:, 1] >= c.W).any()):
            raise ValueError("attention cells out of the grid")
        layers = np.arange(c.n_layer) if layers is None else \
            int_array("layers", layers, 0, c.n_layer - 1).reshape(-1)
        heads = np.arange(c.n_head) if heads is None else \
            int_array("heads", heads, 0, c.n_head - 1).reshape(-1)
        cfg_scale = Sampling(cfg_scale=cfg_scale).cfg_scale
        guided = is_guided(cfg_scale)
        out = np.zeros((B, len(cells), len(layers), len(heads), c.seq_len), np.float32)
        for b in range(B):
            cache = core().Cache(self._core, 1, guided, np.ascontiguousarray(cond[b:b + 1]),
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
                seed: int = 0, sample_ids=None, kv_dtype: str = "float32") -> "RawSession":
        """A low-level session: explicit queries, chains, commit/discard (see RawSession);
        ``kv_dtype`` as :meth:`generate`."""
        sp = Sampling(cfg_scale=cfg_scale, seed=seed)  # finite scale, seed in [0, 2**64)
        kvt = kv_type(kv_dtype)
        cond, unc, mask = self.prefix(labels, captions=captions, caption_mask=caption_mask)
        return RawSession(self, cond, unc, mask, sp.cfg_scale, sp.seed,
                          check_sample_ids(sample_ids, cond.shape[0]), kv_type=kvt)


def random_model(*, dim=64, n_layer=2, n_head=4, vocab_size=64, grid=8, num_classes=10,
                 n_kv_head=None, eor=0, seed=0, scale=None, **kw) -> Model:
    """A model with random weights (for tests, benchmarks and examples)."""
    cfg = ModelConfig(dim=dim, n_layer=n_layer, n_head=n_head, vocab_size=vocab_size, grid=grid,
                      num_classes=num_classes, n_kv_head=n_kv_head, eor=eor, **kw)
    rng = np.random.default_rng(seed)
    w = {}
    for name, shape in expected_weight_shapes(cfg).items():
        if name.endswith("norm.weight"):
            w[name] = (1.0 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
        else:
            s = scale if scale is not None else 1.0 / np.sqrt(shape[-1])
            w[name] = (s * rng.standard_normal(shape)).astype(np.float32)
    return Model(cfg, w)



