"""Emu3 and Chameleon (Lumina-mGPT): the NumPy reference (zipar/reference/families.py) against
transformers on tiny random checkpoints built by tests/families_tiny.py at test time.

Skips cleanly without torch / transformers / safetensors (CI installs them).
"""

import os

import numpy as np
import pytest

from zipar.reference import families as rf

HERE = os.path.dirname(os.path.abspath(__file__))


def _folder_tensors(d):
    from safetensors.numpy import load_file

    sd = {}
    for f in sorted(os.listdir(d)):
        if f.endswith(".safetensors"):
            sd.update(load_file(os.path.join(d, f)))
    return sd


def _canonical(sd):
    """On-disk names (Emu3 *-hf: text_model.model.* / text_model.lm_head; Chameleon: model.* /
    lm_head) -> the reference's canonical names; VQ tensors dropped."""
    out = {}
    for k, v in sd.items():
        if "vqmodel." in k:
            continue
        for pre in ("text_model.model.", "model.text_model.", "model."):
            if k.startswith(pre):
                k = k[len(pre):]
                break
        if k.startswith("text_model.lm_head."):
            k = k[len("text_model."):]
        out[k] = v
    return out


EMU3_ARCH = rf.FamilyArch(n_heads=4, n_kv_heads=2, rope_theta=1e6)
CHAM_ARCH = rf.FamilyArch(n_heads=4, n_kv_heads=4, rope_theta=1e4, qk_norm=True)


def _top_margin(scores):
    top2 = np.sort(scores, axis=1)[:, -2:]
    return float(np.min(np.where(np.isfinite(top2[:, 0]), top2[:, 1] - top2[:, 0], np.inf)))


@pytest.mark.parametrize("which", ["emu3", "chameleon", "chameleon_swin", "lumina"])
def test_reference_teacher_forced_logits(families_tiny, which):
    out, fx, _ = families_tiny
    w = _canonical(_folder_tensors(os.path.join(out, which)))
    if which == "emu3":
        arch, toks, want = EMU3_ARCH, fx["emu3_tf_tokens"], fx["emu3_tf_logits"]
    else:
        swin = which == "chameleon_swin"
        arch = rf.FamilyArch(n_heads=4, n_kv_heads=4, rope_theta=1e4, qk_norm=True,
                             swin_norm=swin)
        toks = fx["chameleon_tf_tokens"]
        want = fx["chameleon_swin_tf_logits_raw" if swin else "chameleon_tf_logits_raw"]
    if which == "lumina":
        assert w["layers.0.self_attn.q_norm.weight"].shape == (1, 16)
    got = rf.forward(w, arch, toks)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4


def test_reference_swin_differs(families_tiny):
    _, fx, _ = families_tiny  # the swin fixture is a different function of the same tensors
    assert np.abs(fx["chameleon_swin_tf_logits_raw"] - fx["chameleon_tf_logits_raw"]).max() > 0.1


def test_reference_emu3_greedy_cfg(families_tiny):
    out, fx, ft = families_tiny
    H, W = ft.GRID
    E = ft.EMU
    w = _canonical(_folder_tensors(os.path.join(out, "emu3")))
    want = fx["emu3_greedy_cfg_tokens"]
    assert _top_margin(fx["emu3_greedy_cfg_scores"]) > 0.01
    rule = lambda i: rf.emu3_allowed(i + 1, H, W, vis0=E["vis0"], K=E["K"], eol=E["eol"],
                                     eof=E["eof"], eoi=E["eoi"], eos=E["eos"], pad=E["pad"])
    got = rf.guided_greedy(w, EMU3_ARCH, fx["emu3_pos_prompt"], fx["emu3_neg_prompt"],
                           len(want), ft.CFG, rule)
    np.testing.assert_array_equal(got, want)
    # transformers' processed scores: log-softmax mix (Emu3's CFG processor), then the mask
    pos, neg = list(fx["emu3_pos_prompt"]), list(fx["emu3_neg_prompt"])
    lc = rf.log_softmax(rf.forward(w, EMU3_ARCH, pos + list(want)))[len(pos) - 1:-1]
    lu = rf.log_softmax(rf.forward(w, EMU3_ARCH, neg + list(want)))[len(neg) - 1:-1]
    mix = ft.CFG * (lc - lu) + lu
    scores = fx["emu3_greedy_cfg_scores"]
    for i in range(len(want)):
        ok = np.zeros(scores.shape[1], bool)
        ok[rule(i)] = True
        assert np.all(np.isneginf(scores[i][~ok]))
        assert np.abs(mix[i][ok] - scores[i][ok]).max() <= 1e-4


def test_reference_lumina_greedy_cfg(families_tiny):
    out, fx, ft = families_tiny
    H, W = ft.GRID
    C = ft.CHM
    w = _canonical(_folder_tensors(os.path.join(out, "lumina")))
    want = fx["chameleon_greedy_cfg_tokens"]
    assert _top_margin(fx["chameleon_greedy_cfg_scores"]) > 0.01
    rule = lambda i: rf.lumina_allowed(i + 1, H, W, img_lo=C["img0"], img_hi=C["img0"] + C["K"],
                                       eol=C["eol"], eoi=C["eoi"])
    got = rf.guided_greedy(w, CHAM_ARCH, fx["chameleon_prompt"], fx["chameleon_uncond_prompt"],
                           len(want), ft.CFG, rule)
    np.testing.assert_array_equal(got, want)


def test_reference_rope_is_rotate_half():
    # element i pairs with i + hd/2: rotating by position p then reading the dot product of two
    # rotated vectors depends only on the position difference (1-D RoPE)
    cos, sin = rf.rope_tables(40, 8, 1e4)
    rng = np.random.default_rng(0)
    q, k = rng.standard_normal(8), rng.standard_normal(8)
    rot = lambda x, p: x * cos[p] + rf._rotate_half(x) * sin[p]
    assert abs(rot(q, 7) @ rot(k, 3) - rot(q, 24) @ rot(k, 20)) < 1e-5
    assert abs(rot(q, 7) @ rot(k, 3) - rot(q, 7) @ rot(k, 4)) > 1e-3


def test_token_rules():
    kw = dict(vis0=48, K=32, eol=41, eof=42, eoi=47, eos=44, pad=40)
    H, W = 2, 2
    got = [rf.emu3_allowed(o, H, W, **kw) for o in range(1, 11)]
    vis = list(range(48, 80))
    assert got == [vis, vis, [41], vis, vis, [41], [42], [47], [44], [40]]
    lk = dict(img_lo=4, img_hi=20, eol=22, eoi=20)
    assert [rf.lumina_allowed(k, H, W, **lk) for k in range(1, 8)] == \
        [list(range(4, 20))] * 2 + [[22]] + [list(range(4, 20))] * 2 + [[22], [20]]
