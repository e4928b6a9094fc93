"""The engine against an independent PyTorch LlamaGen GPT forward (float64).

The PyTorch model below is written from the architecture facts in docs/llamagen.md alone, in
the shape of the published model code (full-sequence training-style forward, boolean attention
mask, rotary table with zeroed conditioning rows), and shares nothing with zipar.reference or
the C core. Random weights and tokens; teacher-forced logits must agree within 1e-4.
Skips when torch is not installed.
"""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import zipar  # noqa: E402
from zipar.model import expected_weight_shapes  # noqa: E402

TOL = 1e-4
f64 = torch.float64


# ============================================================================ the torch model

def rms_norm(x, weight, eps=1e-5):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rotary_table(cls_token_num, H, W, head_dim, base=10000.0):
    """(P + H*W, head_dim/2, 2) cos/sin per adjacent pair; the P conditioning rows are zero.

    Pair i < head_dim/4 turns by row * f_i, pair i >= head_dim/4 by col * f_(i - head_dim/4),
    f_j = base^(-2j / (head_dim/2)): rows first, then columns.
    """
    half = head_dim // 2
    freqs = 1.0 / base ** (torch.arange(0, half, 2, dtype=f64)[: half // 2] / half)
    rows = torch.outer(torch.arange(H, dtype=f64), freqs)            # (H, hd/4)
    cols = torch.outer(torch.arange(W, dtype=f64), freqs)            # (W, hd/4)
    angles = torch.cat([rows[:, None, :].expand(H, W, -1),
                        cols[None, :, :].expand(H, W, -1)], dim=-1)  # (H, W, hd/2)
    table = torch.stack([torch.cos(angles), torch.sin(angles)], dim=-1).reshape(H * W, half, 2)
    return torch.cat([torch.zeros(cls_token_num, half, 2, dtype=f64), table])


def apply_rotary(x, table):
    """x (B, S, heads, hd): rotate the adjacent pairs (x[2i], x[2i+1])."""
    xs = x.reshape(*x.shape[:-1], -1, 2)
    t = table[None, :, None]                                          # (1, S, 1, hd/2, 2)
    out = torch.stack([xs[..., 0] * t[..., 0] - xs[..., 1] * t[..., 1],
                       xs[..., 1] * t[..., 0] + xs[..., 0] * t[..., 1]], dim=-1)
    return out.flatten(3)


class TorchGPT:
    """LlamaGen GPT (c2i or t2i) in float64 from a state dict of numpy arrays."""

    def __init__(self, sd, *, n_head, n_kv_head, n_layer, grid, cls_token_num, num_classes=0):
        self.w = {k: torch.tensor(np.asarray(v, dtype=np.float64)) for k, v in sd.items()}
        self.n_head, self.n_kv_head, self.n_layer = n_head, n_kv_head, n_layer
        self.H, self.W = grid
        self.P = cls_token_num
        self.num_classes = num_classes
        self.dim = self.w["tok_embeddings.weight"].shape[1]
        self.head_dim = self.dim // n_head
        self.rope = rotary_table(self.P, self.H, self.W, self.head_dim)

    # ---- conditioning
    def class_prefix(self, labels):
        table = self.w["cls_embedding.embedding_table.weight"]
        lab = torch.as_tensor(labels)
        return table[lab][:, None, :], table[torch.full_like(lab, self.num_classes)][:, None, :]

    def caption_prefix(self, captions):
        def cap_proj(c):
            h = F.linear(c, self.w["cls_embedding.cap_proj.fc1.weight"])
            return F.linear(F.gelu(h, approximate="tanh"),
                            self.w["cls_embedding.cap_proj.fc2.weight"])

        caps = torch.tensor(np.asarray(captions, dtype=np.float64))
        unc = self.w["cls_embedding.uncond_embedding"].expand(caps.shape[0], -1, -1)
        return cap_proj(caps), cap_proj(unc)

    # ---- transformer
    def attention(self, i, x, allowed):
        B, S, _ = x.shape
        nh, nkv, hd = self.n_head, self.n_kv_head, self.head_dim
        p = f"layers.{i}.attention."
        q, k, v = F.linear(x, self.w[p + "wqkv.weight"]).split([nh * hd, nkv * hd, nkv * hd], -1)
        q = apply_rotary(q.view(B, S, nh, hd), self.rope)
        k = apply_rotary(k.view(B, S, nkv, hd), self.rope)
        v = v.view(B, S, nkv, hd)
        k = k.repeat_interleave(nh // nkv, dim=2)
        v = v.repeat_interleave(nh // nkv, dim=2)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))             # (B, heads, S, hd)
        scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
        scores = scores.masked_fill(~allowed[:, None], float("-inf"))
        out = torch.softmax(scores, dim=-1) @ v
        return F.linear(out.transpose(1, 2).reshape(B, S, nh * hd), self.w[p + "wo.weight"])

    def feed_forward(self, i, x):
        p = f"layers.{i}.feed_forward."
        return F.linear(F.silu(F.linear(x, self.w[p + "w1.weight"])) *
                        F.linear(x, self.w[p + "w3.weight"]), self.w[p + "w2.weight"])

    def forward(self, prefix, tokens, key_mask=None):
        """prefix (B, P, dim), tokens (B, H*W) -> logits (B, P + H*W, vocab)."""
        B = prefix.shape[0]
        x = torch.cat([prefix, self.w["tok_embeddings.weight"][tokens]], dim=1)
        S = x.shape[1]
        allowed = torch.tril(torch.ones(S, S, dtype=torch.bool)).expand(B, S, S).clone()
        if key_mask is not None:   # padded caption positions are no keys, but see themselves
            allowed[:, :, :self.P] &= key_mask[:, None, :]
            allowed |= torch.eye(S, dtype=torch.bool)
        for i in range(self.n_layer):
            x = x + self.attention(i, rms_norm(x, self.w[f"layers.{i}.attention_norm.weight"]),
                                   allowed)
            x = x + self.feed_forward(i, rms_norm(x, self.w[f"layers.{i}.ffn_norm.weight"]))
        return F.linear(rms_norm(x, self.w["norm.weight"]), self.w["output.weight"])

    def teacher_logits(self, cond, uncond, tokens, cfg_scale, key_mask=None):
        """Logits (B, H*W, vocab) predicting every cell: position P-1+n predicts cell n."""
        toks = torch.as_tensor(np.asarray(tokens).reshape(len(tokens), -1), dtype=torch.long)
        mask = None if key_mask is None else torch.as_tensor(np.asarray(key_mask) != 0)
        n = self.H * self.W
        lc = self.forward(cond, toks, mask)[:, self.P - 1: self.P - 1 + n]
        if cfg_scale != 1.0:
            lu = self.forward(uncond, toks, mask)[:, self.P - 1: self.P - 1 + n]
            lc = lu + (lc - lu) * cfg_scale
        return lc.numpy()


# ============================================================================ helpers

def random_weights(cfg, seed):
    rng = np.random.default_rng(seed)
    sd = {}
    for name, shape in expected_weight_shapes(cfg).items():
        if name.endswith("norm.weight"):
            sd[name] = 1.0 + 0.2 * rng.standard_normal(shape)
        elif name.endswith(("embedding_table.weight", "tok_embeddings.weight",
                            "uncond_embedding")):
            sd[name] = rng.standard_normal(shape)
        else:
            sd[name] = rng.standard_normal(shape) * 1.5 / math.sqrt(shape[-1])
    return {k: v.astype(np.float32) for k, v in sd.items()}


def torch_model(cfg, sd):
    return TorchGPT(sd, n_head=cfg.n_head, n_kv_head=cfg.n_kv_head, n_layer=cfg.n_layer,
                    grid=cfg.grid, cls_token_num=cfg.cls_token_num, num_classes=cfg.num_classes)


def assert_close(got, want):
    assert got.shape == want.shape
    assert np.abs(want).max() > 0.5          # not a degenerate comparison
    err = np.abs(got.astype(np.float64) - want).max()
    assert err <= TOL, f"max |engine - torch| = {err:.3g}"


# ============================================================================ c2i

C2I_CONFIGS = {
    "mha": dict(dim=64, n_layer=2, n_head=4, grid=4),
    "gqa": dict(dim=64, n_layer=3, n_head=8, n_kv_head=2, grid=(3, 5)),
    "hd20": dict(dim=40, n_layer=2, n_head=2, grid=(5, 3)),   # hd/4 odd, as GPT-3B's 100
}


@pytest.mark.parametrize("cfg_scale", [1.0, 4.0])
@pytest.mark.parametrize("name", sorted(C2I_CONFIGS))
def test_c2i_logits_match_torch(name, cfg_scale):
    cfg = zipar.ModelConfig(vocab_size=97, num_classes=10, **C2I_CONFIGS[name])
    sd = random_weights(cfg, seed=len(name))
    model = zipar.Model(cfg, sd)
    ref = torch_model(cfg, sd)
    rng = np.random.default_rng(1)
    labels = np.array([0, 9, 4])
    tokens = rng.integers(0, cfg.vocab_size, size=(3, cfg.H, cfg.W))
    cond, unc = ref.class_prefix(labels)
    want = ref.teacher_logits(cond, unc, tokens, cfg_scale)
    assert_close(model.logits(labels, tokens, cfg_scale=cfg_scale), want)


def test_c2i_log_prob_matches_torch():
    cfg = zipar.ModelConfig(vocab_size=97, num_classes=10, **C2I_CONFIGS["gqa"])
    sd = random_weights(cfg, seed=5)
    ref = torch_model(cfg, sd)
    tokens = np.random.default_rng(2).integers(0, 97, size=(2, cfg.H, cfg.W))
    cond, unc = ref.class_prefix([3, 7])
    lp = torch.log_softmax(torch.tensor(ref.teacher_logits(cond, unc, tokens, 1.0)), -1).numpy()
    want = np.take_along_axis(lp, tokens.reshape(2, -1, 1), axis=2)[..., 0].sum(1)
    np.testing.assert_allclose(zipar.Model(cfg, sd).log_prob([3, 7], tokens), want,
                               atol=1e-3, rtol=0)


def test_rotary_table_layout():
    """The table the torch model uses is the published layout (sanity of the test itself)."""
    t = rotary_table(2, 3, 4, 8)
    assert t.shape == (2 + 12, 4, 2)
    assert (t[:2] == 0).all()
    cell = 2 + 1 * 4 + 3                                      # (row 1, col 3)
    f = [1.0, 1.0 / 100.0]                                    # 10000^(-2j/4), j = 0, 1
    np.testing.assert_allclose(t[cell, :, 0].numpy(),
                               [math.cos(1 * f[0]), math.cos(1 * f[1]),
                                math.cos(3 * f[0]), math.cos(3 * f[1])])
    np.testing.assert_allclose(t[cell, :, 1].numpy(),
                               [math.sin(1 * f[0]), math.sin(1 * f[1]),
                                math.sin(3 * f[0]), math.sin(3 * f[1])])


# ============================================================================ t2i

@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("cfg_scale", [1.0, 4.0])
def test_t2i_logits_match_torch(cfg_scale, masked):
    cfg = zipar.ModelConfig(dim=32, n_layer=2, n_head=4, n_kv_head=2, vocab_size=61, grid=3,
                            num_classes=1, cls_token_num=120, caption_dim=24)
    sd = random_weights(cfg, seed=11)
    model = zipar.Model(cfg, sd)
    ref = torch_model(cfg, sd)
    rng = np.random.default_rng(3)
    caps = rng.standard_normal((3, 120, 24)).astype(np.float32)
    tokens = rng.integers(0, cfg.vocab_size, size=(3, cfg.H, cfg.W))
    mask = None
    if masked:
        mask = np.zeros((3, 120), np.uint8)
        mask[0, 100:] = 1                     # left padding, as LlamaGen's sampler
        mask[1, :] = 1                        # no padding
        mask[2, :7] = 1                       # right padding: the last position is masked
        mask[2, 50] = 1
    cond, unc = ref.caption_prefix(caps)
    want = ref.teacher_logits(cond, unc, tokens, cfg_scale, mask)
    got = model.logits(tokens=tokens, captions=caps, caption_mask=mask, cfg_scale=cfg_scale)
    assert_close(got, want)
    if masked:   # and the mask matters: without it the torch logits differ
        nomask = ref.teacher_logits(cond, unc, tokens, cfg_scale, None)
        assert np.abs(nomask[0] - want[0]).max() > 1e-2
        np.testing.assert_allclose(nomask[1], want[1], atol=1e-12)
