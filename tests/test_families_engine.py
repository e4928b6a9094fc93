"""Emu3 and Chameleon (Lumina-mGPT) on the engine: loading Hugging Face folders, generation with
every policy, exactness of ZipAR on the new families, teacher-forced scoring, bad input; and
parity with transformers on tiny random checkpoints (tests/families_tiny.py; those tests skip
without torch / transformers / safetensors).

The torch-free tests use folders written here with NumPy in the transformers layouts."""

import json
import os

import numpy as np
import pytest

import zipar
from zipar import AdaptiveZipAR, Raster, ZipAR
from zipar.reference import families as rf
from zipar.io.errors import CheckpointError
from zipar.io.safetensors import write_safetensors
from zipar.reference import ReferenceZipAR

HERE = os.path.dirname(os.path.abspath(__file__))
ROLE = {name: i for i, name in enumerate(zipar.ROLES)}

# ---------------------------------------------------------------------------- NumPy folders

EMU_IDS = dict(pad=40, eol=41, eof=42, bos=43, eos=44, img=45, boi=46, eoi=47, vis0=48, K=32)
CH_IDS = dict(bos=0, img0=4, K=16, eoi=20, boi=21, eol=22, eot=23, size0=24)


def _tensors(rng, D, L, nh, nkv, F, V, qk_rows=None, scale=0.3):
    hd = D // nh
    t = {"embed_tokens.weight": rng.standard_normal((V, D)), "norm.weight":
         1 + 0.2 * rng.standard_normal(D), "lm_head.weight": scale * rng.standard_normal((V, D))}
    for i in range(L):
        p = f"layers.{i}."
        t.update({p + "input_layernorm.weight": 1 + 0.2 * rng.standard_normal(D),
                  p + "post_attention_layernorm.weight": 1 + 0.2 * rng.standard_normal(D),
                  p + "self_attn.q_proj.weight": scale * rng.standard_normal((nh * hd, D)),
                  p + "self_attn.k_proj.weight": scale * rng.standard_normal((nkv * hd, D)),
                  p + "self_attn.v_proj.weight": scale * rng.standard_normal((nkv * hd, D)),
                  p + "self_attn.o_proj.weight": scale * rng.standard_normal((D, nh * hd)),
                  p + "mlp.gate_proj.weight": scale * rng.standard_normal((F, D)),
                  p + "mlp.up_proj.weight": scale * rng.standard_normal((F, D)),
                  p + "mlp.down_proj.weight": scale * rng.standard_normal((D, F))})
        if qk_rows:
            for n, heads in (("q", qk_rows[0]), ("k", qk_rows[1])):
                t[p + f"self_attn.{n}_norm.weight"] = 1 + 0.2 * rng.standard_normal((heads, hd))
                t[p + f"self_attn.{n}_norm.bias"] = 0.1 * rng.standard_normal((heads, hd))
    return {k: np.asarray(v, np.float32) for k, v in t.items()}


def write_emu3(folder, *, seed=0, shards=3, max_pos=256, original=False):
    """A random Emu3 checkpoint in the *-hf layout (text_model.model.*, sharded + index) or the
    original BAAI layout (model.*, special ids in config.json)."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    V = EMU_IDS["vis0"] + EMU_IDS["K"]
    t = _tensors(rng, 32, 2, 4, 2, 48, V)
    if original:
        named = {("lm_head.weight" if k == "lm_head.weight" else "model." + k): v
                 for k, v in t.items()}
        cfg = dict(model_type="Emu3", architectures=["Emu3ForCausalLM"], hidden_size=32,
                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                   intermediate_size=48, vocab_size=V, rms_norm_eps=1e-5, rope_theta=1e6,
                   max_position_embeddings=max_pos,
                   **{f"{k}_token_id": EMU_IDS[k] for k in ("pad", "eol", "eof", "bos", "eos",
                                                            "img", "boi", "eoi")})
    else:
        named = {("text_model.lm_head.weight" if k == "lm_head.weight"
                  else "text_model.model." + k): v for k, v in t.items()}
        named["vqmodel.quantize.embedding.weight"] = np.zeros((EMU_IDS["K"], 4), np.float32)
        vocab = {f"t{i}": i for i in range(39)}
        vocab.update({"<|endoftext|>": 40, "<|extra_200|>": 41, "<|extra_201|>": 42,
                      "<|extra_203|>": 43, "<|extra_204|>": 44, "<|image token|>": 45,
                      "<|image start|>": 46, "<|image end|>": 47})
        vocab.update({f"<|visual token {k:06d}|>": 48 + k for k in range(EMU_IDS["K"])})
        cfg = dict(model_type="emu3", architectures=["Emu3ForConditionalGeneration"],
                   text_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, intermediate_size=48, vocab_size=V,
                                    rms_norm_eps=1e-5, max_position_embeddings=max_pos,
                                    rope_parameters={"rope_type": "default", "rope_theta": 1e6}),
                   vocabulary_map=vocab)
    json.dump(cfg, open(os.path.join(folder, "config.json"), "w"))
    names = sorted(named)
    wm = {}
    for s in range(shards):
        part = names[s::shards]
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        write_safetensors(os.path.join(folder, fname), {k: named[k] for k in part})
        wm.update({k: fname for k in part})
    json.dump({"metadata": {}, "weight_map": wm},
              open(os.path.join(folder, "model.safetensors.index.json"), "w"))
    return t


def write_chameleon(folder, *, seed=1, qk_rows=(4, 4), swin=False):
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    V = 64
    t = _tensors(rng, 32, 2, 4, 4, 48, V, qk_rows=qk_rows)
    named = {("lm_head.weight" if k == "lm_head.weight" else "model." + k): v for k, v in t.items()}
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<eoss>": 20, "<racm3:break>": 21,
             "<reserved08799>": 22, "<reserved08706>": 23}
    letters = lambda n: "".join("ABCDEFGHIJ"[int(d)] for d in str(n))
    vocab.update({f"IMGIMG{letters(k)}Z": 4 + k for k in range(16)})
    cfg = dict(model_type="chameleon", architectures=["ChameleonForConditionalGeneration"],
               hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
               intermediate_size=48, vocab_size=V, rms_norm_eps=1e-5, rope_theta=1e4,
               swin_norm=swin, max_position_embeddings=256, vocabulary_map=vocab)
    json.dump(cfg, open(os.path.join(folder, "config.json"), "w"))
    write_safetensors(os.path.join(folder, "model.safetensors"), named)
    return t


EMU_ARCH = rf.FamilyArch(n_heads=4, n_kv_heads=2, rope_theta=1e6)
CH_ARCH = rf.FamilyArch(n_heads=4, n_kv_heads=4, rope_theta=1e4, qk_norm=True)


def emu_prompt(text, H, W):
    e = EMU_IDS
    return [e["bos"], *text, e["boi"], 15 + H, 9, 15 + W, e["img"]]


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("emu3"))
    t = write_emu3(d)
    return zipar.load_emu3(d), t, d


@pytest.fixture(scope="module")
def cham(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("chameleon"))
    t = write_chameleon(d, qk_rows=(1, 1))  # the Lumina (1, hd) layout
    return zipar.load_chameleon(d, size_token_base=CH_IDS["size0"]), t, d


# ---------------------------------------------------------------------------- loading

def test_load_emu3_layouts_and_load_dispatch(emu, tmp_path):
    m, t, d = emu
    assert isinstance(m, zipar.Emu3Model)
    c = m.config
    assert (c.n_head, c.n_kv_head, c.rope_theta, c.image_lo, c.image_hi, c.eol) == \
        (4, 2, 1e6, 48, 80, 41)
    ids = emu_prompt([1, 2, 3], 3, 3) + [50, 51, 41, 60]
    want = rf.forward(t, EMU_ARCH, ids)
    assert np.abs(m.sequence_logits(ids) - want).max() <= 1e-4
    # the original BAAI layout gives the same model
    o = str(tmp_path / "orig")
    write_emu3(o, original=True)
    assert np.abs(zipar.load_emu3(o).sequence_logits(ids) - want).max() <= 1e-4
    assert isinstance(zipar.load(d), zipar.Emu3Model)
    # the weights of float32 shards stay memory-mapped (no copy)
    assert isinstance(m.weights["lm_head.weight"].base, np.memmap) or \
        isinstance(m.weights["lm_head.weight"], np.memmap)


def test_load_chameleon_lumina_layout_and_swin(cham, tmp_path):
    m, t, d = cham
    assert isinstance(m, zipar.ChameleonModel) and isinstance(zipar.load(d), zipar.ChameleonModel)
    ids = [0, 40, 41, 23, 21, 26, 26, 5, 6, 22]
    assert np.abs(m.sequence_logits(ids) - rf.forward(t, CH_ARCH, ids)).max() <= 1e-4
    s = str(tmp_path / "swin")
    ts = write_chameleon(s, swin=True)
    ms = zipar.load_chameleon(s, size_token_base=24)
    assert ms.config.swin_norm
    arch = rf.FamilyArch(4, 4, 1e4, qk_norm=True, swin_norm=True)
    assert np.abs(ms.sequence_logits(ids) - rf.forward(ts, arch, ids)).max() <= 1e-4


def test_load_errors(tmp_path, emu):
    _, _, d = emu
    # another architecture
    other = tmp_path / "llama"
    other.mkdir()
    (other / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(CheckpointError, match="not Emu3"):
        zipar.load_emu3(str(other))
    with pytest.raises(CheckpointError, match="not Chameleon"):
        zipar.load_chameleon(str(other))
    with pytest.raises(CheckpointError, match="llama"):
        zipar.load(str(other))
    with pytest.raises(CheckpointError, match="not Chameleon"):
        zipar.load_chameleon(d)
    # a missing shard
    miss = tmp_path / "missing"
    write_emu3(str(miss))
    os.remove(miss / "model-00002-of-00003.safetensors")
    with pytest.raises(CheckpointError, match="missing.*model-00002-of-00003"):
        zipar.load_emu3(str(miss))
    # a shard whose header disagrees with the index
    bad = tmp_path / "disagree"
    write_emu3(str(bad))
    idx = json.loads((bad / "model.safetensors.index.json").read_text())
    k = next(n for n, f in idx["weight_map"].items() if f.startswith("model-00001"))
    idx["weight_map"][k] = "model-00002-of-00003.safetensors"
    (bad / "model.safetensors.index.json").write_text(json.dumps(idx))
    with pytest.raises(CheckpointError, match="header disagrees"):
        zipar.load_emu3(str(bad))
    # a LlamaGen file passed to load_emu3
    with pytest.raises(CheckpointError, match="LlamaGen"):
        zipar.load_emu3(os.path.join(HERE, "fixtures", "c2i_tiny.safetensors"))
    with pytest.raises(CheckpointError, match="no such folder"):
        zipar.load_emu3(str(tmp_path / "nope"))
    # a tensor of the wrong shape
    shp = tmp_path / "shape"
    write_chameleon(str(shp), qk_rows=(3, 4))
    with pytest.raises(CheckpointError, match="q_norm"):
        zipar.load_chameleon(str(shp), size_token_base=24)


def test_repo_id_through_hub_cache(tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    cache = tmp_path / "hub"
    repo = cache / "models--acme--tiny-emu3"
    snap = repo / "snapshots" / ("0" * 40)
    write_emu3(str(snap))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    m = zipar.load_emu3("acme/tiny-emu3", cache_dir=str(cache))
    assert m.config.n_layer == 2
    assert isinstance(zipar.load("acme/tiny-emu3", cache_dir=str(cache)), zipar.Emu3Model)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    assert isinstance(zipar.load("acme/tiny-emu3"), zipar.Emu3Model)
    with pytest.raises(CheckpointError, match="cache"):
        zipar.load_emu3("acme/absent", cache_dir=str(cache))


# ---------------------------------------------------------------------------- generation

def test_generate_emu3_matches_reference_greedy(emu):
    m, t, _ = emu
    H, W = 3, 4
    pos, neg = emu_prompt([1, 2, 3], H, W), emu_prompt([5, 6, 7, 8, 10], H, W)
    e = EMU_IDS
    rule = lambda i: rf.emu3_allowed(i + 1, H, W, vis0=48, K=32, eol=e["eol"], eof=e["eof"],
                                     eoi=e["eoi"], eos=e["eos"], pad=e["pad"])
    want = rf.guided_greedy(t, EMU_ARCH, pos, neg, H * (W + 1) + 3, 3.0, rule)
    res = m.generate(pos, negative_prompt_ids=neg, grid=(H, W), cfg_scale=3.0, temperature=0)
    np.testing.assert_array_equal(res.ids[0], want)
    assert res.tokens.shape == (1, H, W)
    np.testing.assert_array_equal(res.tokens[0], want[:H * (W + 1)].reshape(H, W + 1)[:, :W] - 48)
    for pol in (ZipAR(W), ZipAR(W, schedule="paper"), AdaptiveZipAR(W), ReferenceZipAR(W)):
        r = m.generate(pos, negative_prompt_ids=neg, grid=(H, W), cfg_scale=3.0, temperature=0,
                       policy=pol)
        np.testing.assert_array_equal(r.ids, res.ids)


def test_generate_lumina_matches_reference_greedy(cham):
    m, t, _ = cham
    H, W = 4, 2
    prompt = [0, 40, 41, 42, 23]
    head = [21, 24 + H // 2, 24 + W // 2]
    rule = lambda i: rf.lumina_allowed(i + 1, H, W, img_lo=4, img_hi=20, eol=22, eoi=20)
    want = rf.guided_greedy(t, CH_ARCH, prompt + head, head, H * (W + 1) + 1, 3.0, rule)
    res = m.generate(prompt, grid=(H, W), cfg_scale=3.0, temperature=0)
    np.testing.assert_array_equal(res.ids[0], head + list(want))
    # a negative prompt goes before the head of the unconditional stream
    want2 = rf.guided_greedy(t, CH_ARCH, prompt + head, [0, 33] + head, H * (W + 1) + 1, 3.0,
                             rule)
    r2 = m.generate(prompt, negative_prompt_ids=[0, 33], grid=(H, W), cfg_scale=3.0,
                    temperature=0)
    np.testing.assert_array_equal(r2.ids[0, 3:], want2)


def test_sampling_stays_in_image_tokens_and_batches(emu):
    m, _, _ = emu
    H, W = 4, 4
    prompts = [emu_prompt([1], H, W), emu_prompt([1, 2, 3, 4, 5], H, W)]
    neg = emu_prompt([9], H, W)
    a = m.generate(prompts, negative_prompt_ids=neg, grid=(H, W), seed=3, top_k=5,
                   policy=ZipAR(2))
    assert a.tokens.shape == (2, H, W) and a.tokens.min() >= 0 and a.tokens.max() < 32
    assert (a.ids[:, W::W + 1][:, :H] == EMU_IDS["eol"]).all()
    # a token depends on (seed, sample id, position, context) only
    b = m.generate(prompts[1], negative_prompt_ids=neg, grid=(H, W), seed=3, top_k=5,
                   policy=ZipAR(2), sample_ids=[1])
    np.testing.assert_array_equal(b.tokens[0], a.tokens[1])
    u = m.generate(prompts[0], grid=(H, W), seed=3, cfg_scale=1.0, policy=AdaptiveZipAR(2))
    assert u.tokens.shape == (1, H, W)
    # E = 1 grids never feed a proxy: any valid one gives the same tokens; a constant is a code
    # (0 .. n_codes-1, the core gets its id), checked before anything runs
    for proxy in ("left", 0, m.config.n_codes - 1):
        c = m.generate(prompts, negative_prompt_ids=neg, grid=(H, W), seed=3, top_k=5,
                       policy=ZipAR(2, proxy=proxy))
        np.testing.assert_array_equal(c.tokens, a.tokens)
        assert c.stats["proxies"] == 0
    with pytest.raises(ValueError, match=f"valid ids are 0..{m.config.n_codes - 1}"):
        m.generate(prompts, negative_prompt_ids=neg, grid=(H, W),
                   policy=ZipAR(2, proxy=m.config.n_codes))
    with pytest.raises(ValueError, match="row_start_proxy"):
        m.generate(prompts, negative_prompt_ids=neg, grid=(H, W),
                   policy=ZipAR(2, proxy="calibrated"))


@pytest.mark.parametrize("family", ["emu3", "lumina"])
def test_every_window_pass_count_and_visibility(family, emu, cham):
    """6x6 grid: every window 1..W runs in W + (H-1)s passes (eager), ZipAR(W) equals raster,
    and a replay of each pass on the slot-by-slot reference, with the intended visibility
    (committed slots, own slot, own chain; never an unwritten slot; each CFG stream at its own
    positions), gives the engine's greedy token at every decode."""
    H = W = 6
    if family == "emu3":
        m, t, _ = emu
        arch = EMU_ARCH
        prompt, neg = emu_prompt([1, 2], H, W), emu_prompt([5, 6, 7, 8], H, W)
        conds = (prompt, neg)
    else:
        m, t, _ = cham
        arch = CH_ARCH
        prompt, neg = [0, 40, 23], None
        head = [21, 24 + H // 2, 24 + W // 2]
        conds = (prompt + head, head)
    c = m.config
    kw = dict(negative_prompt_ids=neg, grid=(H, W), cfg_scale=2.0, temperature=0)
    raster = m.generate(prompt, **kw)
    assert raster.stats["forward_passes"] == H * W
    P = max(len(conds[0]), len(conds[1]))
    for s in range(1, W + 1):
        res = m.generate(prompt, policy=ZipAR(s), trace=True, **kw)
        assert res.stats["forward_passes"] == W + (H - 1) * s
        if s == W:
            np.testing.assert_array_equal(res.tokens, raster.tokens)
        paper = m.generate(prompt, policy=ZipAR(s, schedule="paper"), **kw)
        assert paper.stats["forward_passes"] == (H * W if s >= W else 2 * W + (H - 2) * s)
        cache = rf.FamilyReferenceCache(arch, c.n_layer, P, H, W, [list(conds)], True)
        checked = 0
        for p in range(res.stats["forward_passes"]):
            rows = res.trace[res.trace[:, 0] == p]
            qs, decodes = [], []
            for _, img, r, col, role, tok in rows:
                name = zipar.ROLES[role]
                pos = col if r < 0 else cache.cell_pos(r, col)
                want = name in ("sample", "eor") or (name == "prefix" and col == P - 1)
                qs.append((int(img), int(pos), max(int(tok), 0), 0, int(want), 1))
                if want:
                    if name == "prefix":
                        decodes.append((0, 0))
                    elif name == "sample":
                        decodes.append((r, col + 1))
                    else:
                        decodes.append((r + 1, 0))
            lg = rf.forward_pass(t, arch, cache, qs, 2.0)
            for (r, col), row in zip(decodes, lg):
                best = c.image_lo + int(np.argmax(row[c.image_lo:c.image_hi]))
                assert best - c.image_lo == res.tokens[0, r, col], (s, p, r, col)
                checked += 1
        assert checked == H * W


def test_session_and_python_policy(emu):
    m, _, _ = emu
    H, W = 3, 3
    p = emu_prompt([1, 2], H, W)
    s = m.session(p, grid=(H, W))
    lg = s.prefill()
    assert lg.shape == (1, m.config.vocab_size)
    np.testing.assert_allclose(lg[0], m.sequence_logits(p)[-1], atol=1e-5)
    a = m.generate(p, grid=(H, W), cfg_scale=1.0, seed=2, policy=ReferenceZipAR(2))
    b = m.generate(p, grid=(H, W), cfg_scale=1.0, seed=2, policy=ZipAR(2))
    np.testing.assert_array_equal(a.tokens, b.tokens)


def test_teacher_forced_logits_and_log_prob(emu):
    m, t, _ = emu
    H, W = 2, 3
    p, n = emu_prompt([1, 2, 3], H, W), emu_prompt([4], H, W)
    codes = np.array([[[1, 2, 3], [4, 5, 6]]])
    seq = []
    for row in codes[0]:
        seq += [48 + int(x) for x in row] + [41]
    lg = m.logits(p, codes)
    full = rf.forward(t, EMU_ARCH, p + seq)
    want = full[[len(p) - 1 + i + i // W for i in range(H * W)]]
    assert np.abs(lg[0] - want).max() <= 1e-4
    g = m.logits(p, codes, negative_prompt_ids=n, cfg_scale=2.5)
    fu = rf.forward(t, EMU_ARCH, n + seq)
    wu = fu[[len(n) - 1 + i + i // W for i in range(H * W)]]
    assert np.abs(g[0] - (wu + (want - wu) * 2.5)).max() <= 1e-3
    lp = m.log_prob(p, codes)
    ref = rf.log_softmax(want[:, 48:80])[np.arange(H * W), codes.reshape(-1)].sum()
    assert abs(lp[0] - ref) < 1e-4
    full_lp = m.log_prob(p, codes, masked=False)
    assert full_lp[0] < lp[0]


def test_bad_input(emu, cham):
    m, _, _ = emu
    H, W = 3, 3
    p = emu_prompt([1], H, W)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        m.generate([43, 999, 45], grid=(H, W), cfg_scale=1.0)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        m.generate(p, negative_prompt_ids=[-1, 45], grid=(H, W))
    with pytest.raises(ValueError, match="max_position_embeddings"):
        m.generate(p, grid=(20, 20), cfg_scale=1.0)
    with pytest.raises(ValueError, match="no guidance"):
        m.generate(p, negative_prompt_ids=p, grid=(H, W), cfg_scale=1.0)
    with pytest.raises(ValueError, match="negative_prompt_ids"):
        m.generate(p, grid=(H, W), cfg_scale=3.0)
    with pytest.raises(ValueError, match="image token"):
        m.generate(p[:-1], grid=(H, W), cfg_scale=1.0)
    with pytest.raises(ValueError, match="grid"):
        m.generate(p, cfg_scale=1.0)
    with pytest.raises(ValueError, match="codes"):
        m.logits(p, np.full((1, H, W), 40))
    cm = cham[0]
    with pytest.raises(ValueError, match="even"):
        cm.generate([0, 23], grid=(3, 4))
    with pytest.raises(TypeError):
        m.generate(p, grid=(H, W), policy="raster")


# ---------------------------------------------------------------------------- transformers parity


def _load(out, which, ft):
    path = os.path.join(out, which)
    if which == "emu3":
        return zipar.load_emu3(path)
    return zipar.load_chameleon(path, size_token_base=ft.CHM["size0"])


@pytest.mark.parametrize("which", ["emu3", "chameleon", "chameleon_swin", "lumina"])
def test_transformers_teacher_forced_logits(families_tiny, which):
    out, fx, ft = families_tiny
    m = _load(out, which, ft)
    if which == "emu3":
        toks, want = fx["emu3_tf_tokens"], fx["emu3_tf_logits"]
    else:
        toks = fx["chameleon_tf_tokens"]
        want = fx["chameleon_swin_tf_logits_raw" if which == "chameleon_swin"
                  else "chameleon_tf_logits_raw"]
    got = m.sequence_logits(toks)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4


@pytest.mark.parametrize("which", ["emu3", "lumina"])
def test_transformers_greedy_cfg_generation(families_tiny, which):
    out, fx, ft = families_tiny
    m = _load(out, which, ft)
    H, W = ft.GRID
    if which == "emu3":
        kw = dict(prompt_ids=fx["emu3_pos_prompt"], negative_prompt_ids=fx["emu3_neg_prompt"])
        want, skip = fx["emu3_greedy_cfg_tokens"], 0
    else:
        prompt = fx["chameleon_prompt"][:-3]  # the engine appends [BOI, h, w]
        kw = dict(prompt_ids=prompt)
        want, skip = fx["chameleon_greedy_cfg_tokens"], 3
        np.testing.assert_array_equal(fx["chameleon_prompt"][-3:], fx["chameleon_uncond_prompt"])
    for pol in (Raster(), ZipAR(W), ZipAR(W, schedule="paper")):
        res = m.generate(grid=(H, W), cfg_scale=ft.CFG, temperature=0, policy=pol, **kw)
        np.testing.assert_array_equal(res.ids[0, skip:], want)


# ---------------------------------------------------------------------------- weight dtypes

def test_bfloat16_weights_kept_as_stored_and_exact(emu, tmp_path):
    import shutil

    from zipar.families import hf
    from zipar.io.dtypes import bfloat16_to_float32, float32_to_bfloat16

    m32, t, d = emu
    ids = emu_prompt([1, 2, 3], 3, 3) + [50, 51, 41, 60]
    # a float32 folder converted tensor by tensor: matrices bf16, norms float32
    mb = zipar.load_emu3(d, dtype="bfloat16")
    assert mb.dtype == "bfloat16" and m32.dtype == "float32"
    assert mb.weights["lm_head.weight"].dtype == np.uint16
    assert mb.weights["layers.0.mlp.down_proj.weight"].dtype == np.uint16
    assert mb.weights["norm.weight"].dtype == np.float32
    got = mb.sequence_logits(ids)
    # exactly the float32 engine on the widened weights (the kernels widen in registers)
    widened = {k: bfloat16_to_float32(v) if v.dtype == np.uint16 else v
               for k, v in mb.weights.items()}
    np.testing.assert_array_equal(got, zipar.Emu3Model(mb.config, widened).sequence_logits(ids))
    assert np.abs(got - m32.sequence_logits(ids)).max() > 0  # the rounding is really there
    # a bf16 file stays bf16 (dtype=None keeps the stored type) and memory-mapped
    o = tmp_path / "bf16"
    os.makedirs(o)
    shutil.copy(os.path.join(d, "config.json"), o / "config.json")
    raw = hf.read_folder_tensors(d)
    bf = {k: float32_to_bfloat16(np.asarray(v, np.float32)) for k, v in raw.items()
          if np.asarray(v).ndim == 2}
    write_safetensors(str(o / "model.safetensors"), {**raw, **bf}, bfloat16=sorted(bf))
    mf = zipar.load_emu3(str(o))
    assert mf.dtype == "bfloat16"
    w = mf.weights["lm_head.weight"]
    assert w.dtype == np.uint16 and (isinstance(w, np.memmap) or isinstance(w.base, np.memmap))
    np.testing.assert_array_equal(mf.sequence_logits(ids), got)
    with pytest.raises(ValueError, match="dtype"):
        zipar.load_emu3(d, dtype="int8")
