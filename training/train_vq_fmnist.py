"""Train a miniature LlamaGen on Fashion-MNIST: a VQ tokenizer of LlamaGen's VQ-16 family, then a
LlamaGen c2i GPT on its tokens.

PyTorch is needed here only. Images: Fashion-MNIST 28x28 upscaled to 64x64 (bilinear, see
zipar/fmnist/resize.py), repeated over RGB, in [-1, 1].

VQ tokenizer (module structure and state-dict names of LlamaGen's VQModel, so zipar.vq decodes
it through the same code as vq_ds16_c2i.pt; only the sizes are small):
  encoder.conv_in 3x3 (3 -> ch); encoder.conv_blocks.{i}: res.{0..R-1} ResnetBlocks to
  ch * ch_mult[i], attn.{j} after each on the last level, downsample.conv (3x3 stride 2 after a
  (0, 1, 0, 1) zero pad) on all but the last; encoder.mid.{0,1,2} = res, attn, res;
  encoder.norm_out, swish, encoder.conv_out 3x3 (-> z_channels); quant_conv 1x1
  (-> embed_dim); quantize.embedding (codebook, rows l2-normalised at lookup, as is the
  encoder output); post_quant_conv 1x1 (-> z_channels); decoder as in llamagen.md with R + 1
  ResnetBlocks per level, AttnBlocks on level 0, nearest x2 + conv 3x3 upsampling on all but
  the last level. GroupNorm(32, eps 1e-6), swish. With ch_mult of length 3 the image side
  shrinks 4x: 64x64 images <-> 16x16 tokens.
  Losses: MSE reconstruction + codebook loss ||sg(z) - q||^2 + 0.25 * commitment
  ||z - sg(q)||^2 (straight-through gradient), no GAN and no perceptual loss. Codes unused for
  --restart-every steps are re-seeded from random encoder outputs of the batch (during the
  first 80% of training); codebook usage is logged.

GPT: the c2i GPT of training/train_fmnist.py (same module, imported), vocab = codebook size,
grid 16x16, 10 classes + the null class, class dropout 0.1 for CFG; trained on the tokens of
the training images and of their mirror images (tokens of flipped images, re-encoded).

Modes
  all        VQ, then GPT (one device run); writes everything under --out
  gpt        GPT only, on a tokenizer trained before (--tokenizer-state, the float32 state dict)
  reference  (CPU) zipar/data/fmnist_vq_reference.npz: golden PyTorch decoder outputs and the
             GPT's GPU log-likelihoods / logits, for the tests

Outputs of all (--out; at most 8 files so that they fit the device's return):
  fmnist_vq_tokenizer.npz   VQ state dict (encoder + decoder), float16, LlamaGen names
  fmnist_vq_gpt.npz         GPT state dict float16 + "__zipar_config__" (ModelConfig JSON)
  vq_state_fp32.pt          float32 tokenizer state (to re-run `gpt` without retraining)
  vq_data.npz               test tokens, train-token usage, reconstructions (28x28), GPT
                            per-image test NLL, logits of 2 test images, samples
  vq_training.json          records: configs, curves, codebook usage, recon errors, NLL
  vq_training.png           loss curves
  log_all.txt               the log, written line by line

Usage (from the repository root; the idx.gz files under --data):
  python3 training/train_vq_fmnist.py all --data .data --out /tmp/out --vq-budget 150 \
      --deadline 540
CPU smoke run (about a minute):
  python3 training/train_vq_fmnist.py all --subset 512 --ch 32 --vq-budget 10 --budget 10 \
      --dim 64 --n-layer 2 --n-head 4 --compile 0 --out /tmp/vqsmoke
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_file(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# the pixel model's script: GPT, train_gpt, nll_bits, load_data, the log function
tf = _load_file("train_fmnist", os.path.join(REPO, "training", "train_fmnist.py"))
# 28x28 <-> 64x64 image maps shared with the package (NumPy only)
fv = _load_file("zipar_fmnist_vq", os.path.join(REPO, "zipar", "fmnist", "resize.py"))
log = tf.log

GROUPS, GN_EPS = 32, 1e-6


# ============================================================================ VQ model

def Norm(c):
    return nn.GroupNorm(GROUPS, c, eps=GN_EPS, affine=True)


class ResnetBlock(nn.Module):
    def __init__(self, cin, cout):
        super().__init__()
        self.norm1 = Norm(cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = Norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm = Norm(c)
        self.q = nn.Conv2d(c, c, 1)
        self.k = nn.Conv2d(c, c, 1)
        self.v = nn.Conv2d(c, c, 1)
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x):
        B, C, H, W = x.shape
        h = self.norm(x)
        q = self.q(h).flatten(2).transpose(1, 2)  # (B, HW, C)
        k = self.k(h).flatten(2).transpose(1, 2)
        v = self.v(h).flatten(2).transpose(1, 2)
        o = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        o = o.transpose(1, 2).reshape(B, C, H, W)
        return x + self.proj_out(o)


class Downsample(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2, padding=0)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """One conv_blocks.{i}: res.{j} (+ attn.{j}) and an optional downsample / upsample."""

    def __init__(self, cin, cout, n_res, attn, resample):
        super().__init__()
        self.res = nn.ModuleList()
        self.attn = nn.ModuleList()
        for _ in range(n_res):
            self.res.append(ResnetBlock(cin, cout))
            cin = cout
            if attn:
                self.attn.append(AttnBlock(cout))
        if resample == "down":
            self.downsample = Downsample(cout)
        elif resample == "up":
            self.upsample = Upsample(cout)

    def forward(self, x):
        for j, r in enumerate(self.res):
            x = r(x)
            if len(self.attn):
                x = self.attn[j](x)
        if hasattr(self, "downsample"):
            x = self.downsample(x)
        if hasattr(self, "upsample"):
            x = self.upsample(x)
        return x


class Encoder(nn.Module):
    def __init__(self, ch, ch_mult, n_res, z_channels):
        super().__init__()
        n = len(ch_mult)
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        self.conv_blocks = nn.ModuleList()
        c = ch
        for i, m in enumerate(ch_mult):
            self.conv_blocks.append(Level(c, ch * m, n_res, attn=(i == n - 1),
                                          resample="down" if i != n - 1 else None))
            c = ch * m
        self.mid = nn.ModuleList([ResnetBlock(c, c), AttnBlock(c), ResnetBlock(c, c)])
        self.norm_out = Norm(c)
        self.conv_out = nn.Conv2d(c, z_channels, 3, padding=1)

    def forward(self, x):
        x = self.conv_in(x)
        for blk in self.conv_blocks:
            x = blk(x)
        for m in self.mid:
            x = m(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class Decoder(nn.Module):
    def __init__(self, ch, ch_mult, n_res, z_channels):
        super().__init__()
        n = len(ch_mult)
        c = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, c, 3, padding=1)
        self.mid = nn.ModuleList([ResnetBlock(c, c), AttnBlock(c), ResnetBlock(c, c)])
        self.conv_blocks = nn.ModuleList()
        for i in range(n):
            cout = ch * ch_mult[n - 1 - i]
            self.conv_blocks.append(Level(c, cout, n_res + 1, attn=(i == 0),
                                          resample="up" if i != n - 1 else None))
            c = cout
        self.norm_out = Norm(c)
        self.conv_out = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, z):
        x = self.conv_in(z)
        for m in self.mid:
            x = m(x)
        for blk in self.conv_blocks:
            x = blk(x)
        return self.conv_out(F.silu(self.norm_out(x)))


class VectorQuantizer(nn.Module):
    """l2-normalised codebook lookup (LlamaGen's codebook_l2_norm=True), straight-through."""

    def __init__(self, n_e, e_dim, beta):
        super().__init__()
        self.n_e, self.e_dim, self.beta = n_e, e_dim, beta
        self.embedding = nn.Embedding(n_e, e_dim)
        self.embedding.weight.data.uniform_(-1.0 / n_e, 1.0 / n_e)

    def codebook(self):
        return F.normalize(self.embedding.weight.float(), p=2, dim=-1)

    def indices(self, z):
        """z (B, e_dim, h, w) -> (normalised z as (N, e_dim), indices (B, h, w))."""
        B, _, h, w = z.shape
        zf = F.normalize(z.float().permute(0, 2, 3, 1).reshape(-1, self.e_dim), p=2, dim=-1)
        e = self.codebook()
        d = (zf * zf).sum(1, keepdim=True) + (e * e).sum(1)[None] - 2.0 * zf @ e.t()
        return zf, d.argmin(1).view(B, h, w)

    def forward(self, z):
        B, _, h, w = z.shape
        zf, idx = self.indices(z)
        q = self.codebook()[idx.view(-1)]
        codebook_loss = F.mse_loss(q, zf.detach())
        commit_loss = self.beta * F.mse_loss(zf, q.detach())
        q = zf + (q - zf).detach()
        q = q.view(B, h, w, self.e_dim).permute(0, 3, 1, 2)
        return q, codebook_loss, commit_loss, idx

    def lookup(self, idx):
        """indices (B, h, w) -> quantised latent (B, e_dim, h, w)."""
        return self.codebook()[idx].permute(0, 3, 1, 2)


class VQModel(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg["ch"], cfg["ch_mult"], cfg["num_res_blocks"],
                               cfg["z_channels"])
        self.quant_conv = nn.Conv2d(cfg["z_channels"], cfg["embed_dim"], 1)
        self.quantize = VectorQuantizer(cfg["codebook_size"], cfg["embed_dim"], cfg["beta"])
        self.post_quant_conv = nn.Conv2d(cfg["embed_dim"], cfg["z_channels"], 1)
        self.decoder = Decoder(cfg["ch"], cfg["ch_mult"], cfg["num_res_blocks"],
                               cfg["z_channels"])

    def encode(self, x):
        return self.quant_conv(self.encoder(x))

    def decode_latent(self, q):
        return self.decoder(self.post_quant_conv(q))

    def decode_tokens(self, idx):
        return self.decode_latent(self.quantize.lookup(idx))

    def forward(self, x):
        q, cb, cm, idx = self.quantize(self.encode(x))
        return self.decode_latent(q), cb, cm, idx


def vq_config(args):
    return {"ch": args.ch, "ch_mult": [int(m) for m in args.ch_mult.split(",")],
            "num_res_blocks": args.num_res_blocks, "z_channels": args.z_channels,
            "embed_dim": args.embed_dim, "codebook_size": args.codebook_size, "beta": 0.25,
            "image_size": fv.VQ_SIDE}


# ============================================================================ data

class Upscaler:
    """uint8 (B, 28, 28) on the device -> (B, 3, 64, 64) float in [-1, 1] (zipar.fmnist.resize's
    bilinear map, as two matrix products)."""

    def __init__(self, dev):
        self.m = torch.as_tensor(fv.bilinear_matrix(fv.SIDE, fv.VQ_SIDE), dtype=torch.float32,
                                 device=dev)

    def __call__(self, imgs, flip=None):
        x = self.m @ imgs.float() @ self.m.t()
        if flip is not None:
            x = torch.where(flip[:, None, None], x.flip(-1), x)
        return (x / 127.5 - 1.0)[:, None].expand(-1, 3, -1, -1).contiguous()


def to_pixels_torch(y):
    """Decoder output (B, 3, H, W) -> uint8 (B, H, W, 3) numpy, rounded half up (as zipar.vq)."""
    p = torch.floor(torch.clamp((y.float() + 1.0) * 127.5, 0.0, 255.0) + 0.5)
    return p.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def exact_mode():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


def round_fp16_(model):
    with torch.no_grad():
        for _, p in model.state_dict().items():
            if p.is_floating_point():
                p.copy_(p.to(torch.float16).float())


def usage_stats(tokens, n_e):
    counts = np.bincount(np.asarray(tokens).reshape(-1), minlength=n_e)
    p = counts / counts.sum()
    ent = -(p[p > 0] * np.log2(p[p > 0])).sum()
    return {"codes_used": int((counts > 0).sum()), "codebook_size": n_e,
            "fraction_used": float((counts > 0).mean()), "entropy_bits": float(ent),
            "perplexity": float(2.0 ** ent)}


# ============================================================================ VQ training

def train_vq(args, tx, vx, dev, deadline_t):
    cfg = vq_config(args)
    torch.manual_seed(args.seed)
    model = VQModel(cfg).to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    n_dec = sum(p.numel() for k, p in model.named_parameters()
                if k.startswith(("decoder.", "post_quant_conv.", "quantize.")))
    log(f"VQ {cfg} params {n_params / 1e6:.3f}M (decoder side {n_dec / 1e6:.3f}M)")
    opt = torch.optim.AdamW(model.parameters(), lr=args.vq_lr, betas=(0.9, 0.95),
                            weight_decay=0.0)
    up = Upscaler(dev)
    xs = torch.as_tensor(tx, device=dev)
    vs = torch.as_tensor(vx[:1000], device=dev)
    n, bs = len(tx), args.vq_batch
    use_bf16 = dev.type == "cuda"
    budget = min(args.vq_budget, max(5.0, deadline_t - time.time()))
    n_e = cfg["codebook_size"]
    window_counts = torch.zeros(n_e, device=dev, dtype=torch.long)
    history, restarts = [], 0
    t0 = time.time()
    step = 0
    acc = {"rec": 0.0, "cb": 0.0, "cm": 0.0, "n": 0}
    done = False
    while not done:
        perm = torch.randperm(n, device=dev)
        for b in range(n // bs):
            progress = (time.time() - t0) / budget
            if progress >= 1.0 or (args.vq_max_steps and step >= args.vq_max_steps):
                done = True
                break
            lr = args.vq_lr * min(1.0, (step + 1) / args.warmup) * \
                0.5 * (1 + math.cos(math.pi * progress))
            for g in opt.param_groups:
                g["lr"] = lr
            idx = perm[b * bs:(b + 1) * bs]
            x = up(xs[idx], flip=torch.rand(bs, device=dev) < 0.5)
            model.train()
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
                z = model.encode(x)
            q, cb, cm, codes = model.quantize(z.float())
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
                xr = model.decode_latent(q)
            rec = F.mse_loss(xr.float(), x)
            loss = rec + cb + cm
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            window_counts += torch.bincount(codes.view(-1), minlength=n_e)
            acc["rec"] += rec.detach()
            acc["cb"] += cb.detach()
            acc["cm"] += cm.detach()
            acc["n"] += 1
            if step % args.restart_every == 0:
                dead = (window_counts == 0).nonzero().view(-1)
                if len(dead) and progress < 0.8:
                    with torch.no_grad():
                        zf = F.normalize(z.detach().float().permute(0, 2, 3, 1)
                                         .reshape(-1, cfg["embed_dim"]), dim=-1)
                        pick = torch.randint(0, zf.shape[0], (len(dead),), device=dev)
                        model.quantize.embedding.weight.data[dead] = zf[pick]
                    restarts += len(dead)
                used = int((window_counts > 0).sum())
                window_counts.zero_()
                # held-out recon on 1000 test images (eval mode, bf16 as in training)
                model.eval()
                with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16,
                                                     enabled=use_bf16):
                    xv = up(vs)
                    xrv = model(xv)[0]
                val = F.mse_loss(xrv.float(), xv).item()
                k = acc["n"]
                entry = {"step": step, "elapsed_s": time.time() - t0, "lr": lr,
                         "rec_mse": float(acc["rec"]) / k, "codebook_loss": float(acc["cb"]) / k,
                         "commit_loss": float(acc["cm"]) / k, "val_rec_mse_1k": val,
                         "codes_used_window": used, "dead_restarted": int(len(dead))}
                history.append(entry)
                acc = {"rec": 0.0, "cb": 0.0, "cm": 0.0, "n": 0}
                log(f"  vq step {step} rec {entry['rec_mse']:.5f} val {val:.5f} cb "
                    f"{entry['codebook_loss']:.4f} cm {entry['commit_loss']:.4f} used {used} "
                    f"restarted {len(dead)} lr {lr:.2e} {entry['elapsed_s']:.0f}s")
    log(f"VQ trained: {step} steps in {time.time() - t0:.1f}s, {restarts} codes restarted")
    return model, {"config": cfg, "params": n_params, "decoder_side_params": n_dec,
                   "steps": step, "train_time_s": time.time() - t0, "curve": history,
                   "codes_restarted": restarts,
                   "hyper": {"lr": args.vq_lr, "batch": bs, "warmup": args.warmup,
                             "optimizer": "AdamW(0.9,0.95), no weight decay",
                             "loss": "MSE + codebook + 0.25 commitment",
                             "augment": "horizontal flips", "precision": "bf16 autocast",
                             "restart_every": args.restart_every}}


@torch.no_grad()
def encode_all(model, imgs, dev, flip=False, batch=1000):
    up = Upscaler(dev)
    out = []
    for i in range(0, len(imgs), batch):
        x = torch.as_tensor(imgs[i:i + batch], device=dev)
        f = torch.ones(len(x), dtype=torch.bool, device=dev) if flip else None
        _, idx = model.quantize.indices(model.encode(up(x, flip=f)))
        out.append(idx.cpu().numpy().astype(np.int16))
    return np.concatenate(out)


@torch.no_grad()
def decode_all(model, tokens, dev, batch=500):
    """tokens (N, 16, 16) -> (pixels uint8 (N, 64, 64, 3), raw float outputs on the device)."""
    pix = []
    for i in range(0, len(tokens), batch):
        t = torch.as_tensor(tokens[i:i + batch].astype(np.int64), device=dev)
        pix.append(to_pixels_torch(model.decode_tokens(t)))
    return np.concatenate(pix)


def evaluate_vq(model, tx, vx, dev):
    """Exact mode (float16-rounded weights, float32 math): tokens, usage, reconstruction."""
    model.eval()
    t0 = time.time()
    test_tokens = encode_all(model, vx, dev)
    train_tokens = encode_all(model, tx, dev)
    train_tokens_flip = encode_all(model, tx, dev, flip=True)
    n_e = model.cfg["codebook_size"]
    rec64 = decode_all(model, test_tokens, dev)
    rec28 = fv.to_grey28(rec64)
    # 64x64 MSE on [0, 255] against the upscaled input, and 28x28 MSE against the originals
    target64 = fv.upscale(vx)
    mse64 = float(np.mean((rec64.astype(np.float64).mean(3) - target64) ** 2))
    mse28 = float(np.mean((rec28.astype(np.float64) - vx.astype(np.float64)) ** 2))
    # floor of the 28 -> 64 -> 28 pipeline without the tokenizer
    rt = fv.to_grey28(np.repeat(np.floor(np.clip(target64, 0, 255) + 0.5).astype(np.uint8)
                                [..., None], 3, axis=3))
    mse_rt = float(np.mean((rt.astype(np.float64) - vx.astype(np.float64)) ** 2))
    rec = {"test_usage": usage_stats(test_tokens, n_e),
           "train_usage": usage_stats(train_tokens, n_e),
           "train_flipped_usage": usage_stats(train_tokens_flip, n_e),
           "recon_mse_64_u8": mse64, "recon_mse_28_u8": mse28,
           "recon_psnr_28_db": float(10 * np.log10(255.0 ** 2 / mse28)),
           "resize_roundtrip_mse_28_u8": mse_rt,
           "recon_unit": "MSE in 8-bit grey levels^2 over all 10,000 test images; 64: channel "
                         "mean of decoder pixels vs the bilinear upscale; 28: zipar.fmnist.resize."
                         "to_grey28(decoder pixels) vs the original test images",
           "eval_time_s": time.time() - t0}
    log(f"VQ eval: {json.dumps(rec)}")
    return test_tokens, train_tokens, train_tokens_flip, rec28, rec


def export_tokenizer(model, path):
    sd = {k: v.detach().cpu().to(torch.float16).numpy()
          for k, v in model.state_dict().items()}
    meta = dict(model.cfg)
    sd["__zipar_vq__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(path, **sd)


# ============================================================================ GPT

def gpt_config(args, vocab):
    """The zipar.ModelConfig fields (stored as __zipar_config__; load_llamagen reads them)."""
    return {"dim": args.dim, "n_layer": args.n_layer, "n_head": args.n_head,
            "vocab_size": vocab, "grid": [16, 16], "num_classes": 10, "n_kv_head": args.n_head,
            "cls_token_num": 1, "norm_eps": 1e-5, "rope_base": 10000.0,
            "hidden": tf.find_multiple(int(2 * 4 * args.dim / 3), 256), "eor": 0,
            "eor_token": 0, "caption_dim": 0}


@torch.no_grad()
def sample_tokens(model, labels, cfg_scale, seed, dev):
    model.eval()
    g = torch.Generator(device=dev).manual_seed(seed)
    lab = torch.as_tensor(labels, device=dev)
    return tf.sample(model, lab, cfg_scale, g).cpu().numpy().astype(np.int16)


def train_and_export_gpt(args, train_seqs, train_labels, test_tokens, vy, dev, deadline_t, out):
    vocab = args.codebook_size
    cfg = gpt_config(args, vocab)
    test_seqs = torch.as_tensor(test_tokens.reshape(len(test_tokens), -1).astype(np.int64))
    test_labels = torch.as_tensor(vy)
    budget = min(args.budget, deadline_t - time.time() - args.reserve)
    log(f"GPT budget {budget:.0f}s")
    model, history, train_time, n_params = tf.train_gpt(
        cfg, train_seqs, train_labels, test_seqs, test_labels, dev, budget, args)
    export = {k: v.detach().cpu().to(torch.float16).numpy() for k, v in model.state_dict().items()}
    export["__zipar_config__"] = np.frombuffer(json.dumps(cfg, sort_keys=True).encode(), np.uint8)
    np.savez(os.path.join(out, "fmnist_vq_gpt.npz"), **export)
    log("GPT exported")
    exact_mode()
    round_fp16_(model)
    model.float().eval()
    t0 = time.time()
    test_bpt, test_img_nll = tf.nll_bits(model, test_seqs, test_labels, exact=True)
    train_bpt, _ = tf.nll_bits(model, train_seqs[:10000], train_labels[:10000], exact=True)
    log(f"exact fp32 NLL: test {test_bpt:.6f} train(first 10k) {train_bpt:.6f} bits/token "
        f"({time.time() - t0:.1f}s)")
    with torch.no_grad():
        s = test_seqs[:2].to(dev)
        logits2 = model(s[:, :-1], test_labels[:2].to(dev)).float().cpu().numpy()
    rec = {"config": cfg, "params": n_params, "curve": history, "train_time_s": train_time,
           "test_nll_bits_per_token": test_bpt, "train_nll_bits_per_token_first10k": train_bpt,
           "test_nll_nats_per_image_mean": float(test_img_nll.mean()),
           "nll_unit": "bits per grid token, true class, float16-rounded weights in float32 "
                       "math (TF32 off), tokens from the float16-rounded encoder",
           "hyper": {"lr": args.lr, "wd": args.wd, "batch": args.batch, "warmup": args.warmup,
                     "dropout": args.dropout, "class_dropout": 0.1, "budget_s": budget,
                     "optimizer": "AdamW(0.9,0.95)", "schedule": "linear warmup, cosine in time",
                     "precision": "bf16 autocast", "compile": bool(args.compile),
                     "data": "tokens of the 60k training images and of their mirror images"}}
    arrays = {"gpt_test_nll_nats": test_img_nll.astype(np.float64),
              "gpt_logits_test2": logits2.astype(np.float32)}
    return model, rec, arrays


def plot(records, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib missing: no plot")
        return
    fig, axes = plt.subplots(1, 3, figsize=(15, 4), dpi=110)
    vq = records.get("vq")
    if vq:
        c = vq["curve"]
        st = [e["step"] for e in c]
        ax = axes[0]
        ax.semilogy(st, [e["rec_mse"] for e in c], label="train recon MSE ([-1,1] units)")
        ax.semilogy(st, [e["val_rec_mse_1k"] for e in c], label="test recon MSE (1k images)")
        ax.semilogy(st, [e["codebook_loss"] for e in c], label="codebook loss")
        ax.semilogy(st, [e["commit_loss"] for e in c], label="commitment loss (x0.25)")
        ax.set_xlabel("step")
        ax.set_title("VQ tokenizer")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax = axes[1]
        ax.plot(st, [e["codes_used_window"] for e in c], label="codes used in the window")
        ax.plot(st, [e["dead_restarted"] for e in c], label="dead codes re-seeded")
        ax.set_xlabel("step")
        ax.set_title(f"codebook ({vq['config']['codebook_size']} codes)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    g = records.get("gpt")
    if g:
        c = g["curve"]
        ep = [e["epoch"] - 1 + e["fraction"] for e in c]
        ax = axes[2]
        ax.plot(ep, [e["train_bpp_running"] for e in c], "o-", label="train (running, dropout)")
        ax.plot([e for e, h in zip(ep, c) if "test_bpp" in h],
                [h["test_bpp"] for h in c if "test_bpp" in h], "s-", label="test (bf16)")
        ax.axhline(g["test_nll_bits_per_token"], color="grey", ls=":",
                   label=f"test, fp16 weights: {g['test_nll_bits_per_token']:.4f}")
        ax.set_xlabel("epoch (120k sequences)")
        ax.set_ylabel("bits per token")
        ax.set_title("c2i GPT on VQ tokens")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)


def write_records(out, records):
    with open(os.path.join(out, "vq_training.json"), "w") as f:
        json.dump(records, f, indent=1)


# ============================================================================ modes

def run_all(args, dev):
    t_start = time.time()
    deadline_t = t_start + args.deadline
    tx, ty, vx, vy = tf.load_data(args.data)
    records = {"device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu",
               "torch": torch.__version__, "args": vars(args)}
    arrays = {}
    if args.mode == "all":
        vq, records["vq"] = train_vq(args, tx, vx, dev, t_start + args.vq_budget + 30)
        torch.save({"config": vq.cfg,
                    "state": {k: v.detach().cpu() for k, v in vq.state_dict().items()}},
                   os.path.join(args.out, "vq_state_fp32.pt"))
    else:
        saved = torch.load(args.tokenizer_state, map_location="cpu")
        vq = VQModel(saved["config"]).to(dev)
        vq.load_state_dict(saved["state"])
        records["vq"] = {"config": vq.cfg, "from": args.tokenizer_state}
    export_tokenizer(vq, os.path.join(args.out, "fmnist_vq_tokenizer.npz"))
    exact_mode()
    round_fp16_(vq)
    test_tokens, train_tokens, train_tokens_flip, rec28, rec = evaluate_vq(vq, tx, vx, dev)
    records["vq"].update(rec)
    arrays.update(test_tokens=test_tokens, recon_test_28=rec28,
                  train_token_counts=np.bincount(train_tokens.reshape(-1),
                                                 minlength=args.codebook_size))
    write_records(args.out, records)
    np.savez_compressed(os.path.join(args.out, "vq_data.npz"), **arrays)
    plot(records, os.path.join(args.out, "vq_training.png"))
    # back to fast math for the GPT's training
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.set_float32_matmul_precision("high")
    del vq
    if dev.type == "cuda":
        torch.cuda.empty_cache()

    train_seqs = torch.as_tensor(np.concatenate([train_tokens, train_tokens_flip])
                                 .reshape(2 * len(tx), -1).astype(np.int64))
    train_labels = torch.as_tensor(np.concatenate([ty, ty]))
    gpt, records["gpt"], garr = train_and_export_gpt(args, train_seqs, train_labels, test_tokens,
                                                     vy, dev, deadline_t, args.out)
    arrays.update(garr)
    write_records(args.out, records)
    np.savez_compressed(os.path.join(args.out, "vq_data.npz"), **arrays)
    plot(records, os.path.join(args.out, "vq_training.png"))
    log(f"records written at {time.time() - t_start:.1f}s")

    # samples (no KV cache; 256 tokens, so quick on a GPU), if time is left
    if args.samples_per_class and time.time() < deadline_t - 20:
        labels = np.repeat(np.arange(10), args.samples_per_class)
        t0 = time.time()
        for scale in (1.0, 4.0):
            if time.time() > deadline_t - 15:
                break
            arrays[f"samples_cfg{scale:g}"] = sample_tokens(gpt, labels, scale, 1234, dev) \
                .reshape(-1, 16, 16)
            log(f"samples cfg {scale:g}: {time.time() - t0:.1f}s")
        arrays["samples_labels"] = labels.astype(np.int32)
        np.savez_compressed(os.path.join(args.out, "vq_data.npz"), **arrays)
    log(f"total {time.time() - t_start:.1f}s")


def run_reference(args):
    """zipar/data/fmnist_vq_reference.npz: the golden values the package is tested against.

    decoder_tokens / decoder_output: the PyTorch decoder (float32, CPU) on --n-ref test token
    grids, from the shipped float16 weights. tokens / labels / loglik / logits*: the GPT side,
    as computed on the GPU by `all` (vq_data.npz, --tokens): the first 8 test images' tokens,
    their log-likelihoods (nats, float32 math with the float16 weights) and the logits of test
    image 0 at every 8th grid position."""
    with np.load(args.tokenizer) as z:
        cfg = json.loads(bytes(z["__zipar_vq__"]).decode())
        sd = {k: torch.as_tensor(z[k].astype(np.float32)) for k in z.files if k != "__zipar_vq__"}
    vq = VQModel(cfg)
    vq.load_state_dict(sd)
    vq.eval()
    data = np.load(args.tokens)
    test_tokens = data["test_tokens"].astype(np.int64)
    tokens = test_tokens[:args.n_ref]
    with torch.no_grad():
        y = vq.decode_tokens(torch.as_tensor(tokens)).numpy().astype(np.float32)
    vy = tf.load_idx(os.path.join(args.data, "t10k-labels-idx1-ubyte.gz"))
    pos = np.arange(0, 256, 8)
    np.savez_compressed(
        args.out_file, decoder_tokens=tokens.astype(np.int16), decoder_output=y,
        test_index=np.arange(8, dtype=np.int32), labels=vy[:8].astype(np.int32),
        tokens=test_tokens[:8].astype(np.int16),
        loglik=-data["gpt_test_nll_nats"][:8].astype(np.float64),
        logits_positions=pos.astype(np.int32),
        logits=data["gpt_logits_test2"][0, pos].astype(np.float32))
    log(f"wrote {args.out_file}: decoder outputs {y.shape} in [{y.min():.3f}, {y.max():.3f}]")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["all", "gpt", "reference"])
    ap.add_argument("--data", default=os.path.join(REPO, ".data"))
    ap.add_argument("--out", default="")
    ap.add_argument("--deadline", type=float, default=540,
                    help="seconds from the start by which everything must be written")
    ap.add_argument("--reserve", type=float, default=60,
                    help="seconds kept after the GPT's training for export and NLL")
    # VQ
    ap.add_argument("--ch", type=int, default=32)
    ap.add_argument("--ch-mult", default="1,2,2")
    ap.add_argument("--num-res-blocks", type=int, default=2)
    ap.add_argument("--z-channels", type=int, default=64)
    ap.add_argument("--embed-dim", type=int, default=8)
    ap.add_argument("--codebook-size", type=int, default=1024)
    ap.add_argument("--vq-lr", type=float, default=1e-3)
    ap.add_argument("--vq-batch", type=int, default=128)
    ap.add_argument("--vq-budget", type=float, default=150)
    ap.add_argument("--vq-max-steps", type=int, default=0)
    ap.add_argument("--restart-every", type=int, default=100)
    ap.add_argument("--tokenizer-state", default="", help="gpt mode: vq_state_fp32.pt")
    # GPT (names as in train_fmnist.py: its train_gpt reads them)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--n-layer", type=int, default=8)
    ap.add_argument("--n-head", type=int, default=8)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--wd", type=float, default=0.05)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--budget", type=float, default=330, help="GPT training wall seconds")
    ap.add_argument("--max-steps", type=int, default=0)
    ap.add_argument("--compile", type=int, default=1)
    ap.add_argument("--samples-per-class", type=int, default=50)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--subset", type=int, default=0, help="first N images only (CPU tests)")
    # reference
    ap.add_argument("--tokenizer", default="zipar/data/fmnist_vq_tokenizer.npz")
    ap.add_argument("--tokens", default="", help="reference: an npz holding test_tokens")
    ap.add_argument("--n-ref", type=int, default=3)
    ap.add_argument("--out-file", default="zipar/data/fmnist_vq_reference.npz")
    args = ap.parse_args(argv)
    if args.mode == "reference":
        torch.set_num_threads(2)
        run_reference(args)
        return
    if not args.out:
        ap.error("--out is required")
    os.makedirs(args.out, exist_ok=True)
    tf.LOG_PATH = os.path.join(args.out, f"log_{args.mode}.txt")
    open(tf.LOG_PATH, "w").close()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    log(f"device {dev} torch {torch.__version__} args {vars(args)}")
    if args.subset:
        full = tf.load_data

        def load_data(d):  # CPU smoke tests only
            tx, ty, vx, vy = full(d)
            return tx[:args.subset], ty[:args.subset], vx[:args.subset], vy[:args.subset]
        tf.load_data = load_data
    run_all(args, dev)


if __name__ == "__main__":
    main()
