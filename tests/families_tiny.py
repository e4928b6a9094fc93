"""Tiny random Emu3 and Chameleon (Lumina-mGPT) checkpoints and transformers reference outputs.

Written from the recipe in shared/spec/families.md section 6. Needs torch, transformers (5.x)
and safetensors; the tests call :func:`build` once per session (about 20 s on 2 cores) and skip
when those packages are missing. ``python tests/families_tiny.py OUT`` writes the same files:

    OUT/emu3/             Emu3ForConditionalGeneration.save_pretrained, sharded + index.json
    OUT/chameleon/        ChameleonForConditionalGeneration.save_pretrained (q/k norm (heads, hd))
    OUT/chameleon_swin/   the same tensors with swin_norm = true in config.json
    OUT/lumina/           the same decoder with q/k norm rows stored (1, hd), as Lumina-mGPT does
    OUT/fixtures.npz      token sequences, teacher-forced logits, greedy CFG tokens and scores

Token layouts (ids of the tiny vocabularies):
  Emu3 (V = 80): text 0..38, <image> 39, PAD 40, EOL 41, EOF 42, BOS 43, EOS 44, IMG 45, BOI 46,
    EOI 47, visual tokens 48 + k (K = 32); prompt BOS text BOI "4*4" IMG with digits 15 + d, '*' 9.
  Chameleon (V = 64): <s> 0, <pad> 1, </s> 2, image tokens 4 + k (K = 16, named IMGIMG...Z),
    EOI 20, BOI 21, EOL 22, end-of-turn 23, size tokens 24 + g.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np

GRID = (4, 4)
CFG = 3.0

EMU = dict(image=39, pad=40, eol=41, eof=42, bos=43, eos=44, img=45, boi=46, eoi=47, vis0=48, K=32)
CHM = dict(bos=0, pad=1, eos=2, img0=4, K=16, eoi=20, boi=21, eol=22, eot=23, size0=24)


def _letters(n: int) -> str:
    return "".join("ABCDEFGHIJ"[int(d)] for d in str(n))


def _randomise(model, seed: int, std: float = 0.3) -> None:
    """Every float parameter random (HF init leaves norms at 1 and biases at 0, which would hide
    a mishandled norm weight or bias): norm weights 1 + 0.2 N, biases 0.1 N, matrices std N."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "vqmodel" in name:
                continue
            if "norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(std * torch.randn(p.shape, generator=gen))


def _emu3(out: str, fx: dict) -> None:
    import torch
    from transformers import Emu3Config, Emu3ForConditionalGeneration

    H, W = GRID
    V = EMU["vis0"] + EMU["K"]
    vocab = {f"t{i}": i for i in range(39)}
    for name, key in (("<image>", "image"), ("<|endoftext|>", "pad"), ("<|extra_200|>", "eol"),
                      ("<|extra_201|>", "eof"), ("<|extra_203|>", "bos"), ("<|extra_204|>", "eos"),
                      ("<|image token|>", "img"), ("<|image start|>", "boi"),
                      ("<|image end|>", "eoi")):
        vocab[name] = EMU[key]
    for k in range(EMU["K"]):
        vocab[f"<|visual token {k:06d}|>"] = EMU["vis0"] + k
    cfg = Emu3Config(
        text_config=dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256, rms_norm_eps=1e-5,
                         rope_parameters={"rope_type": "default", "rope_theta": 1e6},
                         pad_token_id=EMU["pad"], bos_token_id=EMU["bos"],
                         eos_token_id=EMU["eos"]),
        vq_config=dict(codebook_size=EMU["K"], embed_dim=4, latent_channels=4, base_channels=32,
                       channel_multiplier=[1, 2], num_res_blocks=1, attn_resolutions=[1],
                       hidden_size=64, num_attention_heads=1, temporal_downsample_factor=4),
        vocabulary_map=vocab)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = Emu3ForConditionalGeneration(cfg).eval()
    _randomise(model, 1)
    model.save_pretrained(os.path.join(out, "emu3"), max_shard_size="100KB")
    model = Emu3ForConditionalGeneration.from_pretrained(os.path.join(out, "emu3"),
                                                         attn_implementation="eager").eval()

    def prompt(text):
        return [EMU["bos"], *text, EMU["boi"], 15 + H, 9, 15 + W, EMU["img"]]

    pos, neg = prompt([1, 2, 3]), prompt([5, 6, 7, 8, 10])  # the negative prompt is longer
    rng = np.random.default_rng(0)
    seg = []
    for row in rng.integers(0, EMU["K"], size=(H, W)):
        seg += [EMU["vis0"] + int(c) for c in row] + [EMU["eol"]]
    seg += [EMU["eof"], EMU["eoi"], EMU["eos"]]
    seq = pos + seg
    with torch.no_grad():
        fx["emu3_tf_tokens"] = np.array(seq)
        fx["emu3_tf_logits"] = model(torch.tensor([seq])).logits[0].float().numpy()

    n = (W + 1) * H

    def allowed(batch_id, ids):
        off = ids.shape[0] - (len(pos) - 1)  # 1 for the first generated token
        if off == n + 1:
            return [EMU["eof"]]
        if off == n + 2:
            return [EMU["eoi"]]
        if off >= n + 3:
            return [EMU["eos"]]
        if off % (W + 1) == 0:
            return [EMU["eol"]]
        return list(range(EMU["vis0"], V))

    with torch.no_grad():
        g = model.generate(torch.tensor([pos]), do_sample=False, max_new_tokens=n + 3,
                           prefix_allowed_tokens_fn=allowed, guidance_scale=CFG,
                           negative_prompt_ids=torch.tensor([neg]), output_scores=True,
                           return_dict_in_generate=True)
    fx["emu3_pos_prompt"] = np.array(pos)
    fx["emu3_neg_prompt"] = np.array(neg)
    fx["emu3_greedy_cfg_tokens"] = g.sequences[0, len(pos):].numpy()
    fx["emu3_greedy_cfg_scores"] = torch.stack(g.scores, 1)[0].float().numpy()


def _chameleon(out: str, fx: dict) -> None:
    import torch
    from safetensors.numpy import save_file
    from transformers import ChameleonConfig, ChameleonForConditionalGeneration, DynamicCache

    H, W = GRID
    V = 64
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "<eoss>": CHM["eoi"],
             "<racm3:break>": CHM["boi"], "<reserved08799>": CHM["eol"],
             "<reserved08706>": CHM["eot"], "<image>": 31}
    vocab.update({f"IMGIMG{_letters(k)}Z": CHM["img0"] + k for k in range(CHM["K"])})
    vocab.update({f"<size{g}>": CHM["size0"] + g for g in range(7)})
    vocab.update({f"t{i}": i for i in range(32, V)})
    kw = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
              rms_norm_eps=1e-5, rope_parameters={"rope_type": "default", "rope_theta": 1e4},
              bos_token_id=0, eos_token_id=2, pad_token_id=1, vocabulary_map=vocab,
              vq_config=dict(embed_dim=32, num_embeddings=CHM["K"], latent_channels=32,
                             base_channels=32, channel_multiplier=[1, 2], num_res_blocks=1,
                             resolution=16, attn_resolutions=[]))
    cfg = ChameleonConfig(swin_norm=False, **kw)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = ChameleonForConditionalGeneration(cfg).eval()
    _randomise(model, 4)
    # one q/k-norm row for all heads: the (1, hd) Lumina file is the same model
    with torch.no_grad():
        for layer in model.model.layers:
            for nrm in (layer.self_attn.q_norm, layer.self_attn.k_norm):
                nrm.weight.copy_(nrm.weight[:1].expand_as(nrm.weight).clone())
                nrm.bias.copy_(nrm.bias[:1].expand_as(nrm.bias).clone())
    model.save_pretrained(os.path.join(out, "chameleon"))
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}

    # swin_norm twin and Lumina-layout twin: folders with the same tensors
    for name, swin, lumina in (("chameleon_swin", True, False), ("lumina", False, True)):
        d = os.path.join(out, name)
        os.makedirs(d, exist_ok=True)
        conf = json.load(open(os.path.join(out, "chameleon", "config.json")))
        conf["swin_norm"] = swin
        json.dump(conf, open(os.path.join(d, "config.json"), "w"))
        tensors = {}
        for k, v in sd.items():
            if k.startswith("model.vqmodel."):
                continue
            if lumina and "_norm." in k and "self_attn" in k:
                v = v[:1]
            tensors[k] = np.ascontiguousarray(v)
        save_file(tensors, os.path.join(d, "model.safetensors"), metadata={"format": "pt"})

    def raw(m, ids, cache=None):
        # lm_head on the hidden states: ChameleonForConditionalGeneration.forward masks every
        # image token's logit (families.md 1.4)
        o = m.model(input_ids=ids, cache=cache, use_cache=cache is not None)
        return m.lm_head(o.last_hidden_state).float(), o.cache

    prompt = [CHM["bos"], 40, 41, 42, 43, CHM["eot"]]
    head = [CHM["boi"], CHM["size0"] + H // 2, CHM["size0"] + W // 2]
    rng = np.random.default_rng(1)
    seg = []
    for row in rng.integers(0, CHM["K"], size=(H, W)):
        seg += [CHM["img0"] + int(c) for c in row] + [CHM["eol"]]
    seq = prompt + head + seg + [CHM["eoi"], CHM["eot"]]
    swin = ChameleonForConditionalGeneration(ChameleonConfig(swin_norm=True, **kw)).eval()
    swin.load_state_dict(model.state_dict())
    with torch.no_grad():
        fx["chameleon_tf_tokens"] = np.array(seq)
        fx["chameleon_tf_logits_raw"] = raw(model, torch.tensor([seq]))[0][0].numpy()
        fx["chameleon_swin_tf_logits_raw"] = raw(swin, torch.tensor([seq]))[0][0].numpy()

    # greedy with Lumina's upstream CFG: uncond = [BOI, h, w] with its own cache and positions
    n = (W + 1) * H
    toks, scores = [], []
    with torch.no_grad():
        cc, cu = DynamicCache(config=model.config), DynamicCache(config=model.config)
        lc, cc = raw(model, torch.tensor([prompt + head]), cc)
        lu, cu = raw(model, torch.tensor([head]), cu)
        for i in range(n + 1):
            c, u = lc[0, -1].numpy(), lu[0, -1].numpy()
            s = u + CFG * (c - u)
            k = i + 1
            mask = np.full(V, -np.inf, np.float32)
            if k == n + 1 or k % (W + 1) == 0:  # forced: 0 at the token, -inf elsewhere
                mask[CHM["eoi"] if k == n + 1 else CHM["eol"]] = 0
                s = mask
            else:
                mask[CHM["img0"]:CHM["img0"] + CHM["K"]] = 0
                s = s + mask
            t = int(np.argmax(s))
            toks.append(t)
            scores.append(s)
            if i < n:
                lc, cc = raw(model, torch.tensor([[t]]), cc)
                lu, cu = raw(model, torch.tensor([[t]]), cu)
    fx["chameleon_prompt"] = np.array(prompt + head)
    fx["chameleon_uncond_prompt"] = np.array(head)
    fx["chameleon_greedy_cfg_tokens"] = np.array(toks)
    fx["chameleon_greedy_cfg_scores"] = np.stack(scores)


def build(out: str) -> dict:
    """Writes the checkpoints and fixtures.npz under ``out``; returns the fixtures."""
    os.makedirs(out, exist_ok=True)
    fx: dict = {}
    _emu3(out, fx)
    _chameleon(out, fx)
    np.savez(os.path.join(out, "fixtures.npz"), **fx)
    return fx


if __name__ == "__main__":
    target = sys.argv[1] if len(sys.argv) > 1 else "families_tiny_out"
    if os.path.exists(target):
        shutil.rmtree(target)
    f = build(target)
    print("emu3 greedy CFG tokens:", f["emu3_greedy_cfg_tokens"].tolist())
    print("chameleon greedy CFG tokens:", f["chameleon_greedy_cfg_tokens"].tolist())
