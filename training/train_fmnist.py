"""Train zipar's built-in model: a LlamaGen c2i GPT on grey-quantised Fashion-MNIST, and the
small CNN classifier behind the package's FID-proxy.

PyTorch is needed here only; the package itself runs on NumPy and its C core. The GPT follows
docs/llamagen.md exactly (state-dict names, 2-D RoPE pair layout, zeroed
conditioning q/k, RMSNorm in float32, SwiGLU hidden = find_multiple(int(8*dim/3), 256)).

Modes
  main   train classifier + GPT on one palette size, export everything under --out
  sweep  short GPT runs for several palette sizes + classifier accuracy on quantised images,
         the measurements behind the choice of levels (training/README.md)

Outputs of main (--out): fmnist_gpt.npz, fmnist_classifier.npz, builtin_reference.npz,
builtin.json, training.json, training_loss.png, log.txt.

Usage (from the repository root; the idx.gz files under --data):
  python3 training/train_fmnist.py main --data .data --out /tmp/out --levels 16 --budget 440
  python3 training/train_fmnist.py sweep --data .data --out /tmp/out --sweep-levels 16,32,64
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# The tokenizer is NumPy only and importing zipar loads no C code, so the training machine needs
# no build: the checkout itself is put on the path.
sys.path.insert(0, REPO)
from zipar.fmnist.tokenizer import GreyTokenizer, load_idx  # noqa: E402

LOG_PATH = None  # set by main(): every line also goes to --out, flushed at once, so a run
                # killed at its time limit still leaves its log behind


def log(*args):
    line = " ".join(str(a) for a in args)
    print(line, flush=True)
    if LOG_PATH:
        with open(LOG_PATH, "a") as f:
            f.write(line + "\n")


def find_multiple(n, k):
    return n if n % k == 0 else n + k - (n % k)


# ============================================================================ LlamaGen c2i GPT

class RMSNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) * weight, the normalisation in float32."""

    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        xf = x.float()
        out = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return out.type_as(x) * self.weight


class LabelEmbedder(nn.Module):
    """Class embedding table with num_classes + 1 rows; row num_classes is the null class."""

    def __init__(self, num_classes, dim, dropout_prob):
        super().__init__()
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        self.embedding_table = nn.Embedding(num_classes + 1, dim)

    def forward(self, labels):
        if self.training and self.dropout_prob > 0:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return self.embedding_table(labels).unsqueeze(1)  # (B, 1, dim)


class Attention(nn.Module):
    def __init__(self, cfg, dropout):
        super().__init__()
        self.n_head, self.n_kv_head = cfg["n_head"], cfg["n_kv_head"]
        self.head_dim = cfg["dim"] // cfg["n_head"]
        total = (self.n_head + 2 * self.n_kv_head) * self.head_dim
        self.wqkv = nn.Linear(cfg["dim"], total, bias=False)
        self.wo = nn.Linear(cfg["dim"], cfg["dim"], bias=False)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        hd = self.head_dim
        q, k, v = self.wqkv(x).split(
            [self.n_head * hd, self.n_kv_head * hd, self.n_kv_head * hd], dim=-1)
        q = apply_rope(q.view(B, T, self.n_head, hd), cos, sin)
        k = apply_rope(k.view(B, T, self.n_kv_head, hd), cos, sin)
        v = v.view(B, T, self.n_kv_head, hd)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, heads, T, hd)
        if self.n_kv_head != self.n_head:
            rep = self.n_head // self.n_kv_head
            k = k.repeat_interleave(rep, dim=1)
            v = v.repeat_interleave(rep, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).reshape(B, T, self.n_head * hd)
        return self.resid_dropout(self.wo(y))


class FeedForward(nn.Module):
    def __init__(self, cfg, dropout):
        super().__init__()
        self.w1 = nn.Linear(cfg["dim"], cfg["hidden"], bias=False)
        self.w3 = nn.Linear(cfg["dim"], cfg["hidden"], bias=False)
        self.w2 = nn.Linear(cfg["hidden"], cfg["dim"], bias=False)
        self.ffn_dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.ffn_dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class Block(nn.Module):
    def __init__(self, cfg, dropout):
        super().__init__()
        self.attention_norm = RMSNorm(cfg["dim"], cfg["norm_eps"])
        self.attention = Attention(cfg, dropout)
        self.ffn_norm = RMSNorm(cfg["dim"], cfg["norm_eps"])
        self.feed_forward = FeedForward(cfg, dropout)

    def forward(self, x, cos, sin):
        h = x + self.attention(self.attention_norm(x), cos, sin)
        return h + self.feed_forward(self.ffn_norm(h))


def rope_table(cfg):
    """cos, sin of shape (cls_token_num + H*W, head_dim/2): the 2-D rotary layout of
    docs/llamagen.md.

    Pair i < hd/4 rotates by row * f_i, pair i >= hd/4 by col * f_(i - hd/4), with
    f_j = 1 / base^(2j / (hd/2)). Conditioning positions get cos = sin = 0 (their q, k vanish).
    """
    hd = cfg["dim"] // cfg["n_head"]
    H, W = cfg["grid"]
    P = cfg["cls_token_num"]
    nf = hd // 4
    j = torch.arange(nf, dtype=torch.float64)
    freqs = 1.0 / (cfg["rope_base"] ** (2.0 * j / (hd // 2)))
    rows = torch.arange(H, dtype=torch.float64).repeat_interleave(W)  # raster order
    cols = torch.arange(W, dtype=torch.float64).repeat(H)
    ang = torch.cat([rows[:, None] * freqs[None, :], cols[:, None] * freqs[None, :]], dim=1)
    cos = torch.cat([torch.zeros(P, hd // 2, dtype=torch.float64), torch.cos(ang)], dim=0)
    sin = torch.cat([torch.zeros(P, hd // 2, dtype=torch.float64), torch.sin(ang)], dim=0)
    return cos.float(), sin.float()


def apply_rope(x, cos, sin):
    """x: (B, T, heads, hd); adjacent pairs (x[2i], x[2i+1]) rotate; math in float32."""
    B, T, nh, hd = x.shape
    xf = x.float().reshape(B, T, nh, hd // 2, 2)
    x0, x1 = xf[..., 0], xf[..., 1]
    c = cos[:T].view(1, T, 1, hd // 2)
    s = sin[:T].view(1, T, 1, hd // 2)
    out = torch.stack([x0 * c - x1 * s, x1 * c + x0 * s], dim=-1)
    return out.reshape(B, T, nh, hd).type_as(x)


class GPT(nn.Module):
    """LlamaGen c2i transformer (cls_token_num = 1): forward(tokens (B, n), labels (B,)) ->
    float32 logits (B, n + 1, vocab), logits[:, i] predicting grid token i (raster order)."""

    def __init__(self, cfg, dropout=0.0, class_dropout=0.1):
        super().__init__()
        self.cfg = cfg
        self.cls_embedding = LabelEmbedder(cfg["num_classes"], cfg["dim"], class_dropout)
        self.tok_embeddings = nn.Embedding(cfg["vocab_size"], cfg["dim"])
        self.tok_dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList([Block(cfg, dropout) for _ in range(cfg["n_layer"])])
        self.norm = RMSNorm(cfg["dim"], cfg["norm_eps"])
        self.output = nn.Linear(cfg["dim"], cfg["vocab_size"], bias=False)
        cos, sin = rope_table(cfg)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.apply(self._init)
        nn.init.zeros_(self.output.weight)  # as LlamaGen

    @staticmethod
    def _init(m):
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    def forward(self, tokens, labels):
        """tokens (B, n) with n <= H*W - 1 input grid tokens; returns logits (B, n+1, vocab) in
        float32: logits[:, i] is the distribution of grid token i."""
        x = torch.cat([self.cls_embedding(labels), self.tok_embeddings(tokens)], dim=1)
        x = self.tok_dropout(x)
        for layer in self.layers:
            x = layer(x, self.rope_cos, self.rope_sin)
        return self.output(self.norm(x)).float()


def gpt_config(levels, dim, n_layer, n_head):
    return {
        "dim": dim, "n_layer": n_layer, "n_head": n_head, "vocab_size": levels,
        "grid": [28, 28], "num_classes": 10, "n_kv_head": n_head, "cls_token_num": 1,
        "norm_eps": 1e-5, "rope_base": 10000.0, "hidden": find_multiple(int(2 * 4 * dim / 3), 256),
    }


# ============================================================================ classifier

class CNN(nn.Module):
    """conv3x3(1->32)+ReLU+maxpool2, conv3x3(32->64)+ReLU+maxpool2, fc 3136->128 + ReLU
    (the feature layer), fc 128->10. Input: (grey/255 - mean) / std, shape (B, 1, 28, 28)."""

    def __init__(self, feat=128):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.fc1 = nn.Linear(64 * 7 * 7, feat)
        self.fc2 = nn.Linear(feat, 10)
        self.drop = nn.Dropout(0.3)

    def features(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return F.relu(self.fc1(x.flatten(1)))

    def forward(self, x):
        return self.fc2(self.drop(self.features(x)))


CLS_MEAN, CLS_STD = 0.2860, 0.3530  # Fashion-MNIST train pixel mean / std on [0, 1]


def cls_input(images_u8, dev):
    x = torch.as_tensor(images_u8, device=dev).float().div_(255.0)
    return ((x - CLS_MEAN) / CLS_STD).unsqueeze(1)


def train_classifier(train_x, train_y, test_x, test_y, dev, epochs, seed=0):
    """Train the CNN on uint8 images (already quantised by the caller if wanted)."""
    torch.manual_seed(seed)
    net = CNN().to(dev)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    n, bs = len(train_x), 256
    steps = epochs * (n // bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    xs = torch.as_tensor(train_x, device=dev)
    ys = torch.as_tensor(train_y, device=dev).long()
    t0 = time.time()
    for ep in range(epochs):
        net.train()
        perm = torch.randperm(n, device=dev)
        for b in range(n // bs):
            idx = perm[b * bs:(b + 1) * bs]
            x = cls_input(xs[idx], dev)
            flip = torch.rand(bs, device=dev) < 0.5  # horizontal flips: garments are symmetric
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            loss = F.cross_entropy(net(x), ys[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        acc = classifier_accuracy(net, test_x, test_y, dev)
        log(f"  classifier epoch {ep + 1}/{epochs} loss {loss.item():.4f} test acc {acc:.4f} "
            f"({time.time() - t0:.1f}s)")
    return net


@torch.no_grad()
def classifier_accuracy(net, x, y, dev):
    net.eval()
    correct = 0
    for i in range(0, len(x), 2000):
        pred = net(cls_input(x[i:i + 2000], dev)).argmax(1).cpu().numpy()
        correct += int((pred == y[i:i + 2000]).sum())
    return correct / len(x)


# ============================================================================ GPT training

def make_sequences(tokens):
    """(N, 28, 28) int tokens -> (N, 784) int64 raster sequences."""
    return torch.as_tensor(tokens.reshape(len(tokens), -1).astype(np.int64))


@torch.no_grad()
def nll_bits(model, seqs, labels, batch=500, exact=False):
    """Mean NLL in bits per grid token over (seqs, labels), and the per-image NLL in nats.

    exact=False: bf16 autocast (for the per-epoch curve). exact=True: float32 everything
    (the caller has already put float16-rounded weights in the model and disabled TF32)."""
    model.eval()
    dev = next(model.parameters()).device
    per_image = []
    for i in range(0, len(seqs), batch):
        s = seqs[i:i + batch].to(dev)
        lab = labels[i:i + batch].to(dev)
        autocast = not exact and dev.type == "cuda"
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            logits = model(s[:, :-1], lab)
        lp = torch.log_softmax(logits.float(), dim=-1)
        tok_lp = lp.gather(-1, s.unsqueeze(-1)).squeeze(-1)  # (B, 784)
        per_image.append((-tok_lp.double().sum(1)).cpu())
    per_image = torch.cat(per_image).numpy()
    bits = per_image.sum() / (seqs.shape[0] * seqs.shape[1]) / math.log(2.0)
    return float(bits), per_image


@torch.no_grad()
def sample(model, labels, cfg_scale, gen):
    """Raster sampling, temperature 1, no top-k; guided logits = u + (c - u) * cfg_scale."""
    model.eval()
    cfg = model.cfg
    n_tok = cfg["grid"][0] * cfg["grid"][1]
    B = labels.shape[0]
    null = torch.full_like(labels, cfg["num_classes"])
    tokens = torch.zeros(B, 0, dtype=torch.long, device=labels.device)
    for _ in range(n_tok):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=labels.device.type == "cuda"):
            if cfg_scale == 1.0:
                logits = model(tokens, labels)[:, -1].float()
            else:
                both = model(torch.cat([tokens, tokens]), torch.cat([labels, null]))[:, -1].float()
                cond, uncond = both[:B], both[B:]
                logits = uncond + (cond - uncond) * cfg_scale
        probs = torch.softmax(logits, dim=-1)
        nxt = torch.multinomial(probs, 1, generator=gen)
        tokens = torch.cat([tokens, nxt], dim=1)
    return tokens


def train_gpt(cfg, train_seqs, train_labels, test_seqs, test_labels, dev, budget_s, args,
              curve=True):
    """Train for budget_s seconds of wall time (evaluation included) with a time-based cosine
    learning-rate schedule, so the run uses the budget whatever the GPU's speed."""
    torch.manual_seed(args.seed)
    model = GPT(cfg, dropout=args.dropout, class_dropout=0.1).to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"GPT {cfg} params {n_params / 1e6:.3f}M")
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.wd},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), fused=(dev.type == "cuda"))
    step_fn = model
    if args.compile and dev.type == "cuda":
        try:
            step_fn = torch.compile(model)
        except Exception as e:  # noqa: BLE001 - fall back to eager on any compile problem
            log("torch.compile unavailable, eager:", repr(e))
    n, bs = len(train_seqs), args.batch
    steps_per_epoch = n // bs
    train_seqs_d, train_labels_d = train_seqs.to(dev), train_labels.to(dev)
    history = []
    t0 = time.time()
    step, epoch, done = 0, 0, False
    use_bf16 = dev.type == "cuda"
    while not done:
        epoch += 1
        model.train()
        perm = torch.randperm(n, device=dev)
        loss_sum = torch.zeros((), device=dev, dtype=torch.float64)
        n_steps = 0
        t_ep = time.time()
        for b in range(steps_per_epoch):
            progress = (time.time() - t0) / budget_s
            if progress >= 1.0 or (args.max_steps and step >= args.max_steps):
                done = True
                break
            lr = (args.lr * min(1.0, (step + 1) / args.warmup)
                  * 0.5 * (1 + math.cos(math.pi * progress)))
            for g in opt.param_groups:
                g["lr"] = lr
            idx = perm[b * bs:(b + 1) * bs]
            s, lab = train_seqs_d[idx], train_labels_d[idx]
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
                try:
                    logits = step_fn(s[:, :-1], lab)
                except Exception as e:  # noqa: BLE001 - compile failures surface at first call
                    if step_fn is model or step > 0:
                        raise
                    log("torch.compile failed at the first step, eager:", repr(e)[:500])
                    step_fn = model
                    logits = step_fn(s[:, :-1], lab)
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), s.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            loss_sum += loss.detach().double()
            n_steps += 1
            step += 1
            if step == 1:
                t_first = time.time() - t0
                log(f"  first step done at {t_first:.1f}s (includes compile if any)")
            if b % 20 == 0:
                _ = loss.item()  # keep the host within a few steps of the device
        if n_steps == 0:
            break
        train_bpp = float(loss_sum.item()) / n_steps / math.log(2.0)
        ep_time = time.time() - t_ep
        entry = {"epoch": epoch, "fraction": n_steps / steps_per_epoch, "steps": step,
                 "train_bpp_running": train_bpp, "lr_end": lr, "epoch_time_s": ep_time,
                 "elapsed_s": time.time() - t0}
        if curve or done:
            test_bpp, _ = nll_bits(model, test_seqs, test_labels)
            entry["test_bpp"] = test_bpp
        history.append(entry)
        log(f"  epoch {epoch} ({entry['fraction']:.2f}) steps {step} train {train_bpp:.4f} "
            f"test {entry.get('test_bpp', float('nan')):.4f} bpp lr {lr:.2e} "
            f"{ep_time:.1f}s elapsed {entry['elapsed_s']:.0f}s")
    train_time = time.time() - t0
    return model, history, train_time, n_params


def load_data(data_dir):
    def p(name):
        return os.path.join(data_dir, name)
    tx = load_idx(p("train-images-idx3-ubyte.gz"))
    ty = load_idx(p("train-labels-idx1-ubyte.gz")).astype(np.int64)
    vx = load_idx(p("t10k-images-idx3-ubyte.gz"))
    vy = load_idx(p("t10k-labels-idx1-ubyte.gz")).astype(np.int64)
    return tx, ty, vx, vy


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / mse))


# ============================================================================ modes

def run_sweep(args, dev):
    tx, ty, vx, vy = load_data(args.data)
    levels_list = [int(v) for v in args.sweep_levels.split(",")]
    result = {"gpt_seconds_each": args.sweep_seconds, "levels": {}}
    log("classifier on real (unquantised) images")
    net = train_classifier(tx, ty, vx, vy, dev, args.cls_epochs)
    result["classifier_real_test_acc"] = classifier_accuracy(net, vx, vy, dev)
    for L in levels_list:
        tok = GreyTokenizer(L)
        q_test = tok.quantize(vx)
        entry = {"psnr_test_db": psnr(q_test, vx),
                 "classifier_acc_on_quantised_test": classifier_accuracy(net, q_test, vy, dev)}
        cfg = gpt_config(L, args.dim, args.n_layer, args.n_head)
        model, hist, ttime, _ = train_gpt(
            cfg, make_sequences(tok.encode(tx)), torch.as_tensor(ty),
            make_sequences(tok.encode(vx)), torch.as_tensor(vy), dev, args.sweep_seconds, args,
            curve=False)
        entry["test_bpp_tokens"] = hist[-1]["test_bpp"]
        # the same NLL in bits per 8-bit pixel if each token spread its mass uniformly over the
        # grey values it stands for: adds log2(256 / L). Only a rough common scale.
        entry["test_bpp_8bit_equiv"] = hist[-1]["test_bpp"] + math.log2(256 / L)
        entry["steps"] = hist[-1]["steps"]
        entry["train_time_s"] = ttime
        result["levels"][str(L)] = entry
        log(f"levels {L}: {entry}")
        del model
        torch.cuda.empty_cache() if dev.type == "cuda" else None
    with open(os.path.join(args.out, "sweep.json"), "w") as f:
        json.dump(result, f, indent=1)


def run_main(args, dev):
    t_start = time.time()
    tx, ty, vx, vy = load_data(args.data)
    tok = GreyTokenizer(args.levels)
    qtx, qvx = tok.quantize(tx), tok.quantize(vx)

    # ---- classifier (trained on quantised images, the way generated images look)
    log(f"classifier on images quantised to {args.levels} levels")
    t0 = time.time()
    net = train_classifier(qtx, ty, qvx, vy, dev, args.cls_epochs)
    cls_time = time.time() - t0
    cls_acc_q = classifier_accuracy(net, qvx, vy, dev)
    cls_acc_real = classifier_accuracy(net, vx, vy, dev)
    log(f"classifier test acc quantised {cls_acc_q:.4f} real {cls_acc_real:.4f}")
    sd = {k: v.detach().cpu().float().numpy() for k, v in net.state_dict().items()}
    cls_meta = {"arch": "cnn2-fc128", "levels": args.levels, "input_mean": CLS_MEAN,
                "input_std": CLS_STD, "feature_dim": 128, "test_acc_quantised": cls_acc_q,
                "test_acc_real": cls_acc_real}
    sd["__zipar_classifier__"] = np.frombuffer(json.dumps(cls_meta).encode(), dtype=np.uint8)
    np.savez_compressed(os.path.join(args.out, "fmnist_classifier.npz"), **sd)
    # torch features of the first 64 test images: the NumPy forward in zipar/eval.py must match
    with torch.no_grad():
        net.eval()
        cls_ref_feat = net.features(cls_input(qvx[:64], dev)).cpu().numpy()

    # ---- GPT
    cfg = gpt_config(args.levels, args.dim, args.n_layer, args.n_head)
    train_seqs, test_seqs = make_sequences(tok.encode(tx)), make_sequences(tok.encode(vx))
    train_labels, test_labels = torch.as_tensor(ty), torch.as_tensor(vy)
    model, history, train_time, n_params = train_gpt(
        cfg, train_seqs, train_labels, test_seqs, test_labels, dev, args.budget, args)

    # ---- export: float16 weights under LlamaGen names
    export = {k: v.detach().cpu().to(torch.float16).numpy() for k, v in model.state_dict().items()}
    config_dict = dict(cfg)
    config_dict["levels"] = args.levels
    export["__zipar_config__"] = np.frombuffer(json.dumps(config_dict).encode(), dtype=np.uint8)
    np.savez(os.path.join(args.out, "fmnist_gpt.npz"), **export)
    log("exported", sorted(k for k in export if not k.startswith("layers.")))

    # ---- exact reference: fp16-rounded weights, float32 math, no TF32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    with torch.no_grad():
        for name, p in model.state_dict().items():
            p.copy_(p.to(torch.float16).float())
    model.float().eval()
    t0 = time.time()
    test_bpp, test_img_nll = nll_bits(model, test_seqs, test_labels, exact=True)
    train_bpp, _ = nll_bits(model, train_seqs, train_labels, exact=True)
    log(f"exact fp32 NLL: test {test_bpp:.6f} train {train_bpp:.6f} bits/token "
        f"({time.time() - t0:.1f}s)")

    ref_idx = np.arange(8)
    with torch.no_grad():
        s = test_seqs[ref_idx].to(dev)
        lab = test_labels[ref_idx].to(dev)
        logits = model(s[:, :-1], lab).float()  # (8, 784, V)
        logits_null = model(s[:2, :-1], torch.full_like(lab[:2], cfg["num_classes"])).float()
        lp = torch.log_softmax(logits, -1).gather(-1, s.unsqueeze(-1)).squeeze(-1)
        loglik = lp.double().sum(1).cpu().numpy()
    np.savez_compressed(
        os.path.join(args.out, "builtin_reference.npz"),
        labels=vy[ref_idx].astype(np.int32),
        tokens=tok.encode(vx[ref_idx]).astype(np.int32),
        test_index=ref_idx.astype(np.int32),
        logits=logits[:2].cpu().numpy().astype(np.float32),
        logits_null=logits_null.cpu().numpy().astype(np.float32),
        loglik=loglik.astype(np.float64),
        classifier_features=cls_ref_feat.astype(np.float32),
    )

    info = {
        "model": "LlamaGen c2i GPT on Fashion-MNIST, grey palette tokens",
        "config": config_dict,
        "levels": args.levels,
        "params": n_params,
        "test_nll_bpp": test_bpp,
        "train_nll_bpp": train_bpp,
        "nll_unit": "bits per grid token (= per pixel), conditional on the true class, "
                    "float16-rounded weights, float32 math",
        "test_nll_nats_per_image_mean": float(test_img_nll.mean()),
        "classifier_test_acc_quantised": cls_acc_q,
        "classifier_test_acc_real": cls_acc_real,
        "training_time_s": train_time,
        "classifier_training_time_s": cls_time,
        "epochs": history[-1]["epoch"] - 1 + history[-1]["fraction"],
        "steps": history[-1]["steps"],
        "device": torch.cuda.get_device_name(0) if dev.type == "cuda" else "cpu",
        "torch": torch.__version__,
    }
    with open(os.path.join(args.out, "builtin.json"), "w") as f:
        json.dump(info, f, indent=1)
    training = {
        "config": config_dict, "params": n_params,
        "hyper": {"lr": args.lr, "wd": args.wd, "batch": args.batch, "warmup": args.warmup,
                  "dropout": args.dropout, "class_dropout": 0.1, "budget_s": args.budget,
                  "optimizer": "AdamW(0.9,0.95)", "schedule": "linear warmup, cosine in time",
                  "precision": "bf16 autocast", "compile": bool(args.compile)},
        "curve": history, "train_nll_bpp_exact": train_bpp, "test_nll_bpp_exact": test_bpp,
        "training_time_s": train_time, "total_script_time_s": time.time() - t_start,
        "classifier": {"test_acc_quantised": cls_acc_q, "test_acc_real": cls_acc_real,
                       "epochs": args.cls_epochs},
    }
    with open(os.path.join(args.out, "training.json"), "w") as f:
        json.dump(training, f, indent=1)
    plot_curve(history, test_bpp, os.path.join(args.out, "training_loss.png"))
    log(f"results written at {time.time() - t_start:.1f}s")

    # ---- optional samples (no KV cache: slow, and last so that nothing above waits on it)
    if args.samples_per_class:
        t0 = time.time()
        sample_labels = torch.arange(cfg["num_classes"], device=dev).repeat_interleave(
            args.samples_per_class)
        samples = {}
        for scale in (1.0, 4.0):
            gen = torch.Generator(device=dev).manual_seed(1234)
            samples[f"cfg{scale:g}"] = sample(model, sample_labels, scale, gen).cpu().numpy()
            log(f"samples cfg {scale:g}: {time.time() - t0:.1f}s")
        np.savez_compressed(
            os.path.join(args.out, "samples_gpu.npz"),
            labels=sample_labels.cpu().numpy().astype(np.int32),
            **{k: v.reshape(-1, *cfg["grid"]).astype(np.int32) for k, v in samples.items()})
    log(f"total {time.time() - t_start:.1f}s")


def plot_curve(history, final_test, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib missing: no plot")
        return
    ep = [h["epoch"] - 1 + h["fraction"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot(ep, [h["train_bpp_running"] for h in history], "o-",
            label="train (running, dropout on)")
    ax.plot([e for e, h in zip(ep, history) if "test_bpp" in h],
            [h["test_bpp"] for h in history if "test_bpp" in h], "s-", label="test (bf16)")
    ax.axhline(final_test, color="grey", ls=":",
               label=f"test, exported fp16 weights: {final_test:.4f}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("NLL (bits per pixel token)")
    ax.set_title("LlamaGen c2i GPT on Fashion-MNIST")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["main", "sweep"])
    ap.add_argument("--data", default=os.path.join(REPO, ".data"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--levels", type=int, default=16)
    ap.add_argument("--sweep-levels", default="16,32,64")
    ap.add_argument("--sweep-seconds", type=float, default=45)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--n-layer", type=int, default=8)
    ap.add_argument("--n-head", type=int, default=8)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--wd", type=float, default=0.05)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--budget", type=float, default=440, help="GPT training wall seconds")
    ap.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (tests)")
    ap.add_argument("--cls-epochs", type=int, default=12)
    ap.add_argument("--compile", type=int, default=1)
    ap.add_argument("--samples-per-class", type=int, default=0,
                    help="draw this many raster samples per class at the end (slow, no cache)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--subset", type=int, default=0, help="use the first N images (CPU tests)")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    global LOG_PATH
    LOG_PATH = os.path.join(args.out, f"log_{args.mode}.txt")
    open(LOG_PATH, "w").close()
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    log(f"device {dev} torch {torch.__version__} args {vars(args)}")
    if args.subset:
        global load_data
        full = load_data

        def load_data(d):  # noqa: F811 - CPU smoke tests only
            tx, ty, vx, vy = full(d)
            return tx[:args.subset], ty[:args.subset], vx[:args.subset], vy[:args.subset]
    (run_main if args.mode == "main" else run_sweep)(args, dev)


if __name__ == "__main__":
    main()
