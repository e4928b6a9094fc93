"""Tiny random Emu3-Gen and Lumina-mGPT checkpoint folders (tests, notebooks, CLI examples).

``write_tiny_emu3(folder)`` / ``write_tiny_lumina(folder)`` write what a downloaded folder
holds, at toy sizes and with random weights: config.json (with ``vocabulary_map``), safetensors
weights in the family's names, a word-level tokenizer.json whose special tokens carry the
family's real names (``<|image start|>``, ``<reserved08706>``, ...) at the config's ids, and the
VQ decoder's weights (Emu3: ``vqmodel.*`` tensors in the shards, as the ``*-hf`` folders;
Lumina-mGPT: ``vqgan.safetensors``). The images are noise: nothing here is trained.

Writing the tokenizer needs the ``tokenizers`` package (``tokenizer=False`` skips it).
"""

from __future__ import annotations

import json
import os
from typing import Dict, List

import numpy as np

from ..io.safetensors import write_safetensors

__all__ = ["write_tiny_emu3", "write_tiny_lumina", "EMU3_WORDS", "LUMINA_WORDS"]

EMU3_WORDS = ["[UNK]", *"0123456789", "*", ",", ".", "a", "red", "fox", "in", "the", "snow",
              "cat", "masterpiece", "film", "grained", "best", "quality", "lowres", "bad",
              "anatomy", "hands", "text", "blurry", "worst", "low", "jpeg", "artifacts",
              "watermark", "signature", "username"]
LUMINA_WORDS = ["Generate", "an", "image", "of", "according", "to", "the", "following",
                "prompt", ":", "a", "red", "fox", "in", "snow", "cat", ",", "."]


def _decoder_tensors(rng, D, L, nh, nkv, F, V, qk_norm, scale=0.3) -> Dict[str, np.ndarray]:
    hd = D // nh
    t = {"embed_tokens.weight": rng.standard_normal((V, D)),
         "norm.weight": 1 + 0.2 * rng.standard_normal(D),
         "lm_head.weight": scale * rng.standard_normal((V, D))}
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
        if qk_norm:  # Lumina's own layout: one row shared by all heads
            for n in ("q", "k"):
                t[p + f"self_attn.{n}_norm.weight"] = 1 + 0.2 * rng.standard_normal((1, hd))
                t[p + f"self_attn.{n}_norm.bias"] = 0.1 * rng.standard_normal((1, hd))
    return {k: np.asarray(v, np.float32) for k, v in t.items()}


def _write_tokenizer(path: str, vocab: Dict[str, int], words: List[str], specials: List[str]):
    try:
        from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    except ImportError:
        raise ImportError("writing a tiny tokenizer.json needs the 'tokenizers' package "
                          "(pip install tokenizers), or pass tokenizer=False") from None
    unk = "[UNK]" if "[UNK]" in vocab else "<unk>"
    tok = Tokenizer(models.WordLevel(vocab, unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    for s in specials:
        if tok.token_to_id(s) != vocab[s]:
            raise RuntimeError(f"tokenizers placed {s!r} at {tok.token_to_id(s)}, not "
                               f"{vocab[s]}")
    tok.save(path)


def write_tiny_emu3(folder, *, seed: int = 0, tokenizer: bool = True, vq: bool = True) -> str:
    """A tiny Emu3-Gen ``*-hf`` folder: vocabulary 80 (39 words, specials 40..47, 32 visual
    tokens 48..79), 2 layers of width 32, VQ decoder 2x upsampling (4x4 codes -> 8x8 px)."""
    from .emu3_vq import random_emu3_vq_state_dict

    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    K, V = 32, 80
    vocab = {w: i for i, w in enumerate(EMU3_WORDS)}
    vocab.update({"<image>": 39, "<|endoftext|>": 40, "<|extra_200|>": 41, "<|extra_201|>": 42,
                  "<|extra_203|>": 43, "<|extra_204|>": 44, "<|image token|>": 45,
                  "<|image start|>": 46, "<|image end|>": 47})
    vocab.update({f"<|visual token {k:06d}|>": 48 + k for k in range(K)})
    assert len(vocab) == V and sorted(vocab.values()) == list(range(V))
    t = _decoder_tensors(rng, 32, 2, 4, 2, 48, V, qk_norm=False)
    named = {("text_model.lm_head.weight" if k == "lm_head.weight"
              else "text_model.model." + k): v for k, v in t.items()}
    if vq:
        sd = random_emu3_vq_state_dict(ch=32, ch_mult=(1, 2), codebook_size=K,
                                       num_res_blocks=1, attn_levels=(1,), temporal_blocks=1,
                                       seed=seed + 1)
        named.update({"vqmodel." + k: v for k, v in sd.items()})
    cfg = dict(model_type="emu3", architectures=["Emu3ForConditionalGeneration"],
               torch_dtype="float32",
               text_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, intermediate_size=48, vocab_size=V,
                                rms_norm_eps=1e-5, max_position_embeddings=512,
                                rope_parameters={"rope_type": "default", "rope_theta": 1e6}),
               vocabulary_map=vocab)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)
    names = sorted(named)
    wm = {}
    for s in range(2):
        fname = f"model-{s + 1:05d}-of-00002.safetensors"
        part = names[s::2]
        write_safetensors(os.path.join(folder, fname), {k: named[k] for k in part})
        wm.update({k: fname for k in part})
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {}, "weight_map": wm}, f)
    if tokenizer:
        specials = [n for n in vocab if n.startswith("<")]
        _write_tokenizer(os.path.join(folder, "tokenizer.json"), vocab, EMU3_WORDS, specials)
    return folder


def write_tiny_lumina(folder, *, seed: int = 1, tokenizer: bool = True, vq: bool = True) -> str:
    """A tiny Lumina-mGPT folder (Chameleon layout, q/k norm rows (1, hd)): vocabulary 64
    (specials 0..3, 16 image tokens IMGIMG..Z 4..19, EOI 20, BOI 21, EOL 22, end-of-turn 23,
    size tokens <reserved08800..08806> 24..30, words 31..48), 2 layers of width 32, VQGAN 2x
    upsampling in vqgan.safetensors."""
    from .chameleon_vq import random_chameleon_vq_state_dict

    folder = os.fspath(folder)
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    K, V = 16, 64
    letters = lambda n: "".join("ABCDEFGHIJ"[int(d)] for d in str(n))  # noqa: E731
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<eoss>": 20, "<racm3:break>": 21,
             "<reserved08799>": 22, "<reserved08706>": 23}
    vocab.update({f"IMGIMG{letters(k)}Z": 4 + k for k in range(K)})
    vocab.update({f"<reserved{8800 + g:05d}>": 24 + g for g in range(7)})
    vocab.update({w: 31 + i for i, w in enumerate(LUMINA_WORDS)})
    vocab.update({f"w{i}": i for i in range(31 + len(LUMINA_WORDS), V)})
    assert sorted(vocab.values()) == list(range(V))
    t = _decoder_tensors(rng, 32, 2, 4, 4, 48, V, qk_norm=True)
    named = {("lm_head.weight" if k == "lm_head.weight" else "model." + k): v
             for k, v in t.items()}
    cfg = dict(model_type="chameleon", architectures=["ChameleonForConditionalGeneration"],
               torch_dtype="float32", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=4, intermediate_size=48, vocab_size=V, rms_norm_eps=1e-5,
               rope_theta=1e4, swin_norm=False, max_position_embeddings=512,
               vocabulary_map=vocab)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(cfg, f)
    write_safetensors(os.path.join(folder, "model.safetensors"), named)
    if vq:
        sd = random_chameleon_vq_state_dict(ch=32, ch_mult=(1, 2), z_channels=32, embed_dim=32,
                                            codebook_size=K, num_res_blocks=1, seed=seed + 1)
        write_safetensors(os.path.join(folder, "vqgan.safetensors"), sd)
    if tokenizer:
        specials = [n for n in vocab if n.startswith("<")]
        _write_tokenizer(os.path.join(folder, "tokenizer.json"), vocab, LUMINA_WORDS, specials)
    return folder
