"""The shared engine face of the 1-D-RoPE families (Emu3, Chameleon / Lumina-mGPT).

A :class:`FamilyModel` holds float32 weights under canonical names (zipar.reference.families)
and builds a core model per (prefix length, grid): the C model is a config plus borrowed
weights, so this costs only the rotary tables. Both CFG streams are token-id prefixes of their
own lengths, each at its own positions (csrc/zipar.h ``zp_cache_new_ids``); the end-of-line token
after every row is inserted by the scheduler (E = 1) and grid cells are sampled from the image
tokens only, which is each family's allowed-token rule inside the grid; the tokens after the grid
(EOF/EOI/EOS) are forced and appended to the returned id sequence.
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
from typing import Any, Dict, List, Mapping, Optional

import numpy as np

from .._ext import core
from ..model import DTYPES, convert_weight
from ..io.errors import CheckpointError
from ..policies import Policy, Raster, _Builtin
from ..sampling import Sampling, check_sample_ids, is_guided
from ..session import (GenerationResult, RawSession, expected_passes, histogram, progress_bar,
                       run_python_policy)

# The matrices of a family model (canonical names) kept in the model's dtype; the rest float32.
_FAMILY_MATRIX = re.compile(r"^(?:embed_tokens|lm_head|layers\.\d+\.(?:self_attn\.[qkvo]_proj|"
                            r"mlp\.(?:gate|up|down)_proj))\.weight$")


def stored_dtype(a: np.ndarray) -> str:
    """The dtype name of a stored matrix: uint16 is bfloat16 bits (zipar.io keeps BF16 so)."""
    return {np.dtype(np.uint16): "bfloat16", np.dtype(np.float16): "float16"}.get(
        np.asarray(a).dtype, "float32")


__all__ = ["FamilyConfig", "FamilyModel", "FamilyResult", "canonical_layer_names",
           "FAMILY_LAYER_KEYS"]

#: Per-layer canonical names, in the order of csrc/zipar.h's zp_layer_weights fields (q, k and
#: v are concatenated into wqkv); the q/k-norm rows only for qk_norm models.
FAMILY_LAYER_KEYS = ("input_layernorm.weight", "self_attn.qkv", "self_attn.o_proj.weight",
                     "post_attention_layernorm.weight", "mlp.gate_proj.weight",
                     "mlp.up_proj.weight", "mlp.down_proj.weight", "self_attn.q_norm.weight",
                     "self_attn.q_norm.bias", "self_attn.k_norm.weight", "self_attn.k_norm.bias")

QK_NORM_EPS = 1e-5  # hard-coded in Chameleon's LayerNorm (families.md 1.4)


@dataclasses.dataclass(frozen=True)
class FamilyConfig:
    """Architecture and token layout of an Emu3 or Chameleon checkpoint."""

    family: str
    dim: int
    n_layer: int
    n_head: int
    n_kv_head: int
    head_dim: int
    hidden: int
    vocab_size: int
    norm_eps: float
    rope_theta: float
    max_position_embeddings: int
    qk_norm: bool
    swin_norm: bool
    image_lo: int   # image (visual) tokens are ids image_lo .. image_hi-1, code = id - image_lo
    image_hi: int
    eol: int
    special: Dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def n_codes(self) -> int:
        return self.image_hi - self.image_lo

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    def shapes(self) -> Dict[str, tuple]:
        """Canonical names and shapes of every decoder tensor."""
        D, hd, V = self.dim, self.head_dim, self.vocab_size
        out = {"embed_tokens.weight": (V, D), "norm.weight": (D,), "lm_head.weight": (V, D)}
        for i in range(self.n_layer):
            p = f"layers.{i}."
            out.update({p + "input_layernorm.weight": (D,),
                        p + "self_attn.q_proj.weight": (self.n_head * hd, D),
                        p + "self_attn.k_proj.weight": (self.n_kv_head * hd, D),
                        p + "self_attn.v_proj.weight": (self.n_kv_head * hd, D),
                        p + "self_attn.o_proj.weight": (D, self.n_head * hd),
                        p + "post_attention_layernorm.weight": (D,),
                        p + "mlp.gate_proj.weight": (self.hidden, D),
                        p + "mlp.up_proj.weight": (self.hidden, D),
                        p + "mlp.down_proj.weight": (D, self.hidden)})
            if self.qk_norm:
                for n, heads in (("q", self.n_head), ("k", self.n_kv_head)):
                    out[p + f"self_attn.{n}_norm.weight"] = (heads, hd)
                    out[p + f"self_attn.{n}_norm.bias"] = (heads, hd)
        return out


def canonical_layer_names(weights: Mapping[str, np.ndarray], cfg: FamilyConfig,
                          where: str = "checkpoint") -> Dict[str, np.ndarray]:
    """Checks every canonical tensor's presence and shape; q/k-norm rows stored (P, hd) (P
    dividing the heads; Lumina: P = 1) or (hd,) are broadcast to one row per head."""
    want = cfg.shapes()
    missing = sorted(set(want) - set(weights))
    if missing:
        raise CheckpointError(f"{where}: missing tensor(s) {', '.join(missing[:5])}"
                              + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    extra = sorted(set(weights) - set(want))
    if extra:
        raise CheckpointError(f"{where}: unexpected tensor(s) {', '.join(extra[:5])}"
                              + (f" and {len(extra) - 5} more" if len(extra) > 5 else ""))
    out = {}
    for name, shape in want.items():
        a = weights[name]
        if "_norm." in name and "self_attn" in name and a.shape != shape:
            rows = a.reshape(1, -1) if a.ndim == 1 else a
            if rows.ndim != 2 or rows.shape[1] != shape[1] or shape[0] % rows.shape[0]:
                raise CheckpointError(f"{where}: {name} has shape {a.shape}; expected (P, "
                                      f"{shape[1]}) with P dividing {shape[0]} heads")
            a = np.repeat(rows, shape[0] // rows.shape[0], axis=0)  # head h uses row h // (n/P)
        if tuple(a.shape) != shape:
            raise CheckpointError(f"{where}: {name} has shape {tuple(a.shape)}, expected {shape}")
        out[name] = a
    return out


@dataclasses.dataclass
class FamilyResult(GenerationResult):
    """:class:`zipar.GenerationResult` plus ``ids``: (B, L) the raw generated id sequence as the
    family's own generation code produces it after the prompt (rows of image tokens each ending
    with EOL, and the tokens before and after the grid). ``tokens`` are the codes (B, H, W)."""

    ids: Optional[np.ndarray] = None


def _id_lists(x, what: str, V: int) -> List[List[int]]:
    """One list of ints per image, from a 1-D sequence (one image) or a sequence of them."""
    if isinstance(x, np.ndarray) and x.ndim == 2:
        rows = [list(r) for r in x]
    elif isinstance(x, np.ndarray) and x.ndim == 1:
        rows = [list(x)]
    else:
        try:
            seq = list(x)
        except TypeError:
            raise TypeError(f"{what} must be a sequence of token ids") from None
        if seq and all(isinstance(v, (list, tuple, np.ndarray)) for v in seq):
            rows = [list(r) for r in seq]
        else:
            rows = [seq]
    out = []
    for r in rows:
        if not r:
            raise ValueError(f"{what}: an empty prompt")
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in r):
            raise TypeError(f"{what} must hold ints")
        bad = [int(v) for v in r if not 0 <= int(v) < V]
        if bad:
            raise ValueError(f"{what}: token id(s) {bad[:5]} outside the vocabulary [0, {V})")
        out.append([int(v) for v in r])
    return out


def _check_grid(grid) -> tuple:
    try:
        H, W = (int(g) for g in grid)
    except (TypeError, ValueError):
        raise TypeError(f"grid must be (H, W), got {grid!r}") from None
    if H < 1 or W < 1:
        raise ValueError(f"grid must be positive, got {grid!r}")
    return H, W


class FamilyModel:
    """An Emu3 or Chameleon decoder on the zipar core (see the family subclasses)."""

    #: the family's sampling defaults (families.md 4)
    default_top_k = 0
    #: set by the loaders from the checkpoint folder (zipar.families.text.attach_folder_extras)
    tokenizer_path: Optional[str] = None
    vq_decoder: Any = None
    image_tokens: Any = None
    _tokenizer: Any = None

    def __init__(self, config: FamilyConfig, weights: Mapping[str, np.ndarray], *,
                 source: Optional[str] = None, dtype: Optional[str] = "float32"):
        """``dtype``: how the matrices (embeddings, q/k/v/o, gate/up/down, lm_head) are kept:
        "float32", "bfloat16" (uint16 bit patterns) or "float16"; None keeps the checkpoint's
        own type (a bf16 file stays bf16). Norms stay float32. Each tensor is converted on its
        own; one already in its target type (a memory map included) is used in place."""
        w = canonical_layer_names(weights, config, source or "weights")
        if dtype is None:
            dtype = stored_dtype(w["embed_tokens.weight"])
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES} or None, got {dtype!r}")
        self.config = config
        self.source = source
        self._dtype = dtype
        self.weights = {}
        for k, v in w.items():
            try:
                self.weights[k] = convert_weight(k, np.asarray(v), dtype,
                                                 matrix=bool(_FAMILY_MATRIX.match(k)))
            except ValueError as e:
                raise CheckpointError(f"{source or 'weights'}: {e}") from None
        arrays = [self.weights["embed_tokens.weight"], self.weights["norm.weight"],
                  self.weights["lm_head.weight"]]
        for i in range(config.n_layer):
            g = lambda n: self.weights[f"layers.{i}.{n}"]
            qkv = np.ascontiguousarray(np.concatenate(
                [g("self_attn.q_proj.weight"), g("self_attn.k_proj.weight"),
                 g("self_attn.v_proj.weight")], axis=0))
            arrays += [g("input_layernorm.weight"), qkv, g("self_attn.o_proj.weight"),
                       g("post_attention_layernorm.weight"), g("mlp.gate_proj.weight"),
                       g("mlp.up_proj.weight"), g("mlp.down_proj.weight")]
            if config.qk_norm:
                arrays += [np.ascontiguousarray(g(n)) for n in FAMILY_LAYER_KEYS[7:]]
        self._arrays = arrays
        self._cores: Dict[tuple, Any] = {}

    def __repr__(self):
        c = self.config
        return (f"<zipar.{type(self).__name__} dim={c.dim} layers={c.n_layer} heads={c.n_head}/"
                f"{c.n_kv_head} vocab={c.vocab_size} image tokens {c.image_lo}..{c.image_hi - 1}>")

    @property
    def dtype(self) -> str:
        """How the matrices are kept: "float32", "bfloat16" or "float16"."""
        return self._dtype

    @property
    def n_params(self) -> int:
        return int(sum(a.size for a in self.weights.values()))

    # ------------------------------------------------------------------ core models
    def _core(self, P: int, H: int, W: int):
        key = (P, H, W)
        m = self._cores.get(key)
        if m is None:
            c = self.config
            wtype = getattr(core(), {"float32": "ZP_WTYPE_F32", "bfloat16": "ZP_WTYPE_BF16",
                                     "float16": "ZP_WTYPE_F16"}[self._dtype])
            m = core().Model(self._arrays, wtype=wtype, dim=c.dim, n_layer=c.n_layer,
                             n_head=c.n_head,
                             n_kv_head=c.n_kv_head, head_dim=c.head_dim, hidden=c.hidden,
                             vocab=c.vocab_size, cls_token_num=P, grid_h=H, grid_w=W, eor=1,
                             eor_token=c.eol, norm_eps=c.norm_eps, rope_base=c.rope_theta,
                             rope_1d=1, qk_norm=int(c.qk_norm), qk_norm_eps=QK_NORM_EPS,
                             swin_norm=int(c.swin_norm), vis_lo=c.image_lo, vis_hi=c.image_hi)
            if len(self._cores) >= 8:
                self._cores.pop(next(iter(self._cores)))
            self._cores[key] = m
        return m

    # ------------------------------------------------------------------ prompts
    def _layout(self, prompt, negative, grid, guided):
        """(cond prefix, uncond prefix or None, ids before the grid, ids after the grid)."""
        raise NotImplementedError

    def _streams(self, prompt_ids, negative_prompt_ids, grid, guided):
        c = self.config
        H, W = grid
        if prompt_ids is None:
            raise ValueError("prompt_ids are required")
        prompts = _id_lists(prompt_ids, "prompt_ids", c.vocab_size)
        B = len(prompts)
        negs: List[Optional[List[int]]] = [None] * B
        if negative_prompt_ids is not None:
            if not guided:
                raise ValueError("negative_prompt_ids given but cfg_scale == 1: there is no "
                                 "guidance to use them")
            n = _id_lists(negative_prompt_ids, "negative_prompt_ids", c.vocab_size)
            if len(n) == 1:
                n = n * B
            if len(n) != B:
                raise ValueError(f"{len(n)} negative prompts for {B} prompts")
            negs = n
        conds, uncs, heads, tails = [], [], [], []
        for p, n in zip(prompts, negs):
            cp, up, head, tail = self._layout(p, n, grid, guided)
            for what, s in (("prompt", cp), ("negative prompt", up)):
                if s is None:
                    continue
                need = len(s) + H * (W + 1) + len(tail)
                if need > c.max_position_embeddings:
                    raise ValueError(f"the {what} ({len(s)} ids) and a {H}x{W} grid need {need} "
                                     f"positions; the model has max_position_embeddings "
                                     f"{c.max_position_embeddings}")
            conds.append(cp)
            uncs.append(up)
            heads.append(head)
            tails.append(tail)
        P = max([len(s) for s in conds] + [len(s) for s in uncs if s is not None])

        def pack(seqs):
            ids = np.zeros((B, P), np.int32)
            lens = np.zeros(B, np.int32)
            for b, s in enumerate(seqs):
                ids[b, P - len(s):] = s
                lens[b] = len(s)
            return ids, lens

        ic, lc = pack(conds)
        iu, lu = pack(uncs) if guided else (None, None)
        return P, ic, lc, iu, lu, heads, tails

    # ------------------------------------------------------------------ generation
    def generate(self, prompt_ids=None, *, negative_prompt_ids=None, grid=None, policy=None,
                 cfg_scale: float = 3.0, temperature: float = 1.0, top_k: Optional[int] = None,
                 top_p: float = 1.0, seed: int = 0, sample_ids=None, trace: bool = False,
                 progress=False, sampling: Optional[Sampling] = None, prompt=None,
                 negative_prompt=None, decode_images: bool = True) -> FamilyResult:
        """Generate H x W images after the given prompt(s).

        ``prompt_ids``: one id sequence or one per image (any lengths), as the family's
        processor makes it (see the subclass). ``negative_prompt_ids``: the unconditional
        stream's prompt, one or one per image (guidance, ``cfg_scale != 1``). ``policy``: as for
        LlamaGen (Raster, ZipAR, AdaptiveZipAR, a Python Policy). ``top_k`` defaults to the
        family's own (Emu3 2048, Lumina 2000). Returns codes (B, H, W) in ``tokens`` and the raw
        generated ids in ``ids``.

        ``prompt``: text (a str or one per image) instead of ids, built into the family's
        template with the folder's tokenizer file (zipar.families.text; ``grid`` then defaults
        to the family's own: Emu3 90x90, Lumina-mGPT 48x48); ``negative_prompt``: text for the
        unconditional stream (Emu3's default: its generation script's negative prompt).
        ``images``: pixels from the folder's VQ decoder when its weights were found."""
        if prompt is not None or negative_prompt is not None:
            from . import text as _text

            if prompt is None:
                raise ValueError("negative_prompt needs a text prompt=")
            if prompt_ids is not None or negative_prompt_ids is not None:
                raise ValueError("pass either prompt= (text) or prompt_ids= (token ids), "
                                 "not both")
            if grid is None:
                grid = _text.default_grid(self.config.family)
            guided = (sampling.guided if isinstance(sampling, Sampling)
                      else is_guided(cfg_scale))
            prompt_ids, negative_prompt_ids = _text.text_prompt_ids(
                self, prompt, negative_prompt, _check_grid(grid), guided)
        if grid is None:
            raise ValueError("grid=(H, W) is required")
        H, W = _check_grid(grid)
        policy = Raster() if policy is None else policy
        if not isinstance(policy, (_Builtin, Policy)):
            raise TypeError("policy must be zipar.Raster(), zipar.ZipAR(...), "
                            "zipar.AdaptiveZipAR(...) or a zipar.Policy subclass")
        if sampling is None:
            sampling = Sampling(cfg_scale, -1, temperature,
                                self.default_top_k if top_k is None else top_k, top_p, seed)
        elif not isinstance(sampling, Sampling):
            raise TypeError("sampling must be a zipar.Sampling")
        guided = sampling.guided
        P, ic, lc, iu, lu, heads, tails = self._streams(prompt_ids, negative_prompt_ids, (H, W),
                                                        guided)
        B = ic.shape[0]
        sids = check_sample_ids(sample_ids, B)
        cm = self._core(P, H, W)
        sess = core().Session(cm, B, None, prefix_ids=ic, prefix_len=lc, uncond_ids=iu,
                              uncond_len=lu, sample_ids=sids, **sampling.c_kwargs(),
                              **policy.c_kwargs(W, n_tokens=self.config.n_codes,
                                              token_offset=self.config.image_lo),
                              trace=bool(trace))
        grid_view = _GridConfig(H, W, P)
        bar = progress_bar(progress, expected_passes(policy, grid_view), "generate")
        t0 = time.perf_counter()
        try:
            if isinstance(policy, Policy):
                run_python_policy(sess, policy, B, (H, W), bar)
            else:
                sess.run(-1, bar.update_to if bar is not None else None)
        except KeyboardInterrupt as e:
            partial = self._result(sess, policy, sampling, sids, trace, t0, (H, W), P, heads,
                                   tails)
            setattr(e, "partial_result", partial)
            raise
        finally:
            if bar is not None:
                bar.close()
        res = self._result(sess, policy, sampling, sids, trace, t0, (H, W), P, heads, tails)
        if decode_images and sess.done:
            from .text import decode_images as _decode

            res.images = _decode(self, res.tokens)
        return res

    def _result(self, sess, policy, sampling, sids, trace, t0, grid, P, heads, tails):
        c = self.config
        H, W = grid
        stats = dict(sess.stats)
        pq = sess.pass_queries
        stats["queries_per_pass"] = histogram(pq)
        stats["mean_queries_per_pass"] = float(pq.mean()) if pq.size else 0.0
        stats["row_start_pass"] = sess.row_start
        stats["seconds"] = time.perf_counter() - t0
        stats["raster_passes"] = H * W
        stats["raster_steps_with_eol"] = H * (W + 1)  # the papers' count (EOL sampled)
        stats["step_reduction"] = 1.0 - stats["forward_passes"] / (H * W)
        ids_grid = np.asarray(sess.tokens)
        codes = np.where(ids_grid >= 0, ids_grid - c.image_lo, -1).astype(np.int32)
        rows = []
        for b in range(ids_grid.shape[0]):
            seq = list(heads[b])
            for r in range(H):
                seq += [int(t) for t in ids_grid[b, r]] + [c.eol]
            rows.append(seq + list(tails[b]))
        L = max(len(r) for r in rows)
        ids = np.full((len(rows), L), -1, np.int32)
        for b, r in enumerate(rows):
            ids[b, :len(r)] = r
        config = dict(model=c.to_dict(), grid=[H, W], prefix_slots=P, policy=policy.to_dict(),
                      **sampling.to_dict(), sample_ids=sids.tolist())
        return FamilyResult(tokens=codes, stats=stats, config=config,
                            trace=sess.trace if trace else None, ids=ids)

    # ------------------------------------------------------------------ scoring
    def sequence_logits(self, ids) -> np.ndarray:
        """Logits (L, vocab) of one id sequence at positions 0..L-1, teacher-forced in one pass:
        row t predicts token t+1 (what transformers' ``model(ids).logits`` returns)."""
        seq = _id_lists(ids, "ids", self.config.vocab_size)
        if len(seq) != 1:
            raise ValueError("sequence_logits takes one sequence")
        s = seq[0]
        L = len(s)
        if L > self.config.max_position_embeddings:
            raise ValueError(f"{L} ids exceed max_position_embeddings "
                             f"{self.config.max_position_embeddings}")
        cache = core().Cache(self._core(L, 1, 1), 1, False, None,
                             prefix_ids=np.asarray([s], np.int32),
                             prefix_len=np.asarray([L], np.int32))
        q = np.zeros((L, 6), np.int32)
        q[:, 1] = np.arange(L)
        q[:, 4] = 1
        return cache.forward(q, 1.0)

    def logits(self, prompt_ids=None, tokens=None, *, grid=None, negative_prompt_ids=None,
               cfg_scale: float = 1.0) -> np.ndarray:
        """Teacher-forced logits (B, H*W, vocab) predicting every grid cell from the prompt and
        the codes ``tokens`` (B, H, W) (EOL inserted after every row), in one pass; guided
        (u + (c - u) * cfg_scale, each stream at its own positions) when ``cfg_scale != 1``."""
        c = self.config
        toks = self._check_codes(tokens)
        B, H, W = toks.shape
        if grid is not None and _check_grid(grid) != (H, W):
            raise ValueError(f"grid {tuple(grid)} but tokens of shape {toks.shape}")
        guided = is_guided(float(cfg_scale))
        if not math.isfinite(float(cfg_scale)):
            raise ValueError("cfg_scale must be finite")
        P, ic, lc, iu, lu, _, _ = self._streams(prompt_ids, negative_prompt_ids, (H, W), guided)
        if ic.shape[0] != B:
            raise ValueError(f"{ic.shape[0]} prompts for {B} token grids")
        cache = core().Cache(self._core(P, H, W), B, guided, None, prefix_ids=ic, prefix_len=lc,
                             uncond_ids=iu, uncond_len=lu)
        q = []
        for b in range(B):
            for p in range(P):
                q.append((b, p, 0, 0, int(p == P - 1), int(guided)))
            for r in range(H):
                for col in range(W + 1):
                    if r == H - 1 and col >= W - 1:
                        continue  # nothing after the final cell is predicted
                    tok = c.eol if col == W else int(toks[b, r, col]) + c.image_lo
                    want = col != W - 1  # the last cell of a row predicts EOL: not a cell
                    q.append((b, P + r * (W + 1) + col, tok, 0, int(want), int(guided)))
        lg = cache.forward(np.ascontiguousarray(np.asarray(q, np.int32)), float(cfg_scale))
        return lg.reshape(B, H * W, c.vocab_size)

    def log_prob(self, prompt_ids=None, tokens=None, *, grid=None, masked: bool = True
                 ) -> np.ndarray:
        """Per-image log-likelihood (nats, float64) of code grids after the prompt(s), no CFG.
        ``masked``: normalised over the image tokens (the distribution generation samples from
        at temperature 1), else over the whole vocabulary."""
        c = self.config
        toks = self._check_codes(tokens)
        lg = self.logits(prompt_ids, toks).astype(np.float64)
        if masked:
            lg = lg[..., c.image_lo:c.image_hi]
            idx = toks.reshape(toks.shape[0], -1)
        else:
            idx = toks.reshape(toks.shape[0], -1) + c.image_lo
        m = lg.max(-1, keepdims=True)
        lp = lg - m - np.log(np.exp(lg - m).sum(-1, keepdims=True))
        return np.take_along_axis(lp, idx[..., None], axis=2)[..., 0].sum(axis=1)

    def _check_codes(self, tokens) -> np.ndarray:
        if tokens is None:
            raise ValueError("tokens (codes, (B, H, W)) are required")
        t = np.asarray(tokens)
        if t.ndim == 2:
            t = t[None]
        if t.ndim != 3 or not np.issubdtype(t.dtype, np.integer):
            raise ValueError(f"tokens must be integer codes of shape (B, H, W), got "
                             f"{t.shape} {t.dtype}")
        if t.size and (t.min() < 0 or t.max() >= self.config.n_codes):
            raise ValueError(f"codes must be in [0, {self.config.n_codes})")
        return t.astype(np.int32)

    # ------------------------------------------------------------------ low level
    def session(self, prompt_ids=None, *, grid=None, negative_prompt_ids=None,
                cfg_scale: float = 1.0, seed: int = 0, sample_ids=None) -> RawSession:
        """A low-level :class:`zipar.RawSession` over this prompt and grid: (row, col) address
        grid cells, row -1 the prefix slots (right-aligned prompts: slot p of a stream with a
        prompt of n ids holds id p - (P - n)). Its ``probs`` see the whole vocabulary: restrict
        to ``config.image_lo .. image_hi`` as generation does."""
        if grid is None:
            raise ValueError("grid=(H, W) is required")
        H, W = _check_grid(grid)
        guided = is_guided(float(cfg_scale))
        P, ic, lc, iu, lu, _, _ = self._streams(prompt_ids, negative_prompt_ids, (H, W), guided)
        sids = check_sample_ids(sample_ids, ic.shape[0])
        return _FamilyRawSession(self, _GridConfig(H, W, P, self.config.vocab_size),
                                 self._core(P, H, W),
                                 (ic, lc, iu, lu), float(cfg_scale), int(seed), sids)


class _GridConfig:
    """The grid-layout part of a config (what RawSession and the pass loop read)."""

    eor = 1

    def __init__(self, H, W, P, vocab_size=0):
        self.H, self.W, self.cls_token_num, self.vocab_size = H, W, P, vocab_size

    def position(self, row, col):
        row, col = np.asarray(row), np.asarray(col)
        return np.where(row < 0, col, self.cls_token_num + row * (self.W + 1) + col)


class _FamilyRawSession(RawSession):
    def __init__(self, fmodel, grid_cfg, core_model, prefixes, cfg_scale, seed, sids):
        ic, lc, iu, lu = prefixes

        class _View:  # what RawSession reads from its model
            config = grid_cfg
            _core = core_model

        self.family_model = fmodel
        self.model = _View()
        self.cfg_scale = cfg_scale
        self.seed = seed
        self.sample_ids = sids
        self.n_images = ic.shape[0]
        self.guided = is_guided(cfg_scale)
        self._cache = core().Cache(core_model, self.n_images, self.guided, None, prefix_ids=ic,
                                   prefix_len=lc, uncond_ids=iu, uncond_len=lu)
        self.passes = 0
