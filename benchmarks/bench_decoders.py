"""Seconds per image and peak RSS of the NumPy VQ decoders at the real sizes, random weights.

    PYTHONPATH=$PWD python3 benchmarks/bench_decoders.py                 # all three, full size
    PYTHONPATH=$PWD python3 benchmarks/bench_decoders.py --divide emu3=3  # Emu3 at 30x30, scaled

Cases (weights of the published shapes from zipar.families.*.random_*_state_dict):
- emu3:      Emu3-VisionTokenizer decoder, 90x90 codes -> 720x720 (ch 256, mult 1,2,2,4, attention
             in the middle and on level 3 over h*w positions);
- chameleon: Chameleon / Lumina-mGPT-512 VQGAN, 32x32 -> 512x512 (ch 128, mult 1,1,2,2,4);
- lumina768: the same VQGAN for Lumina-mGPT-7B-768's 48x48 grids -> 768x768.

Each case runs in its own subprocess (so its peak RSS is its own): build the decoder, one
warm-up-free decode of random codes, wall time. The convolution and attention FLOPs are counted
by a dry run (the layers replaced by shape-only stand-ins) at the measured and at the full size.
``--divide case=s`` decodes an (H/s) x (W/s) grid instead and projects the full size as
``(t - t_attn) * s^2 + t_attn * F_attn(full) / F_attn(measured)``: convolutions, norms and pixel
work scale with the pixel count, the spatial attention (timed separately by wrapping its blocks)
with its FLOPs (quadratic in the positions). Peak RSS is that of the reduced run when divided
(the largest single activation at full size is printed from the dry run).
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

CASES = {"emu3": (90, 90), "chameleon": (32, 32), "lumina768": (48, 48)}


def count_flops(dec, h, w):
    """(conv FLOPs, attention FLOPs, largest activation bytes) of one decode, by a dry run."""
    import numpy as np
    from zipar.families import chameleon_vq, emu3_vq, vq16

    n = {"conv": 0.0, "attn": 0.0, "act": 0}

    def conv(x, wm, b):
        H, W, C = x.shape
        n["conv"] += 2.0 * H * W * wm.shape[0] * wm.shape[1]
        n["act"] = max(n["act"], H * W * max(C, wm.shape[1]) * 4)
        return np.zeros((H, W, wm.shape[1]), np.float32)

    def attn(self, x, *a):
        H, W, C = x.shape
        N = H * W
        n["attn"] += 4.0 * N * N * C + 8.0 * N * C * C  # scores + weighted sum; q, k, v, out
        return x

    saved = [(m, k, getattr(m, k)) for m in (emu3_vq, chameleon_vq, vq16)
             for k in ("_conv3x3", "_conv1x1")]
    saved += [(c, "__call__", c.__call__) for c in (emu3_vq._Attn, vq16._Attn)]
    try:
        for m, k, _ in saved[:-2]:
            setattr(m, k, conv)
        emu3_vq._Attn.__call__ = attn
        vq16._Attn.__call__ = attn
        dec.decode_latent(np.zeros((1, dec.embed_dim, h, w), np.float32))
    finally:
        for m, k, v in saved:
            setattr(m, k, v)
    return n["conv"], n["attn"], n["act"]


def run_case(name, divide, threads):
    import numpy as np
    from zipar.families import chameleon_vq, emu3_vq

    H, W = CASES[name]
    h, w = H // divide, W // divide
    t0 = time.perf_counter()
    if name == "emu3":
        dec = emu3_vq.Emu3VQDecoder(emu3_vq.random_emu3_vq_state_dict())
        attn_cls = emu3_vq._Attn
    else:
        dec = chameleon_vq.ChameleonVQDecoder(chameleon_vq.random_chameleon_vq_state_dict())
        attn_cls = chameleon_vq._Attn
    t_build = time.perf_counter() - t0
    attn_time = [0.0]
    call = attn_cls.__call__

    def timed(self, *a):
        s = time.perf_counter()
        try:
            return call(self, *a)
        finally:
            attn_time[0] += time.perf_counter() - s

    attn_cls.__call__ = timed
    codes = np.random.default_rng(0).integers(0, dec.codebook_size, (1, h, w))
    t0 = time.perf_counter()
    px = dec.decode(codes)
    t = time.perf_counter() - t0
    attn_cls.__call__ = call
    s = divide
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB -> MiB (Linux)
    conv_m, attn_m, _ = count_flops(dec, h, w)  # after the RSS reading: the dry run allocates
    conv_f, attn_f, act_f = count_flops(dec, H, W)
    projected = (t - attn_time[0]) * s * s + attn_time[0] * (attn_f / attn_m if attn_m else 0)
    return dict(case=name, grid=f"{h}x{w}", pixels=f"{px.shape[1]}x{px.shape[2]}",
                full_grid=f"{H}x{W}", divide=s, seconds=round(t, 2),
                attention_seconds=round(attn_time[0], 2), build_seconds=round(t_build, 2),
                projected_full_seconds=round(projected, 1), peak_rss_mib=round(rss),
                threads=threads, gflop_measured=round((conv_m + attn_m) / 1e9),
                gflop_per_s=round((conv_m + attn_m) / 1e9 / t, 1),
                full_tflop=round((conv_f + attn_f) / 1e12, 2),
                full_largest_activation_mib=round(act_f / 2**20))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", default="emu3,chameleon,lumina768")
    ap.add_argument("--divide", default="", help="e.g. emu3=3: decode (H/3)x(W/3) and scale")
    ap.add_argument("--threads", type=int, default=1, help="OpenBLAS threads (default 1)")
    ap.add_argument("--case", help=argparse.SUPPRESS)  # child process
    args = ap.parse_args()
    divide = {k: int(v) for k, v in (p.split("=") for p in args.divide.split(",") if p)}
    if args.case:
        print(json.dumps(run_case(args.case, divide.get(args.case, 1), args.threads)))
        return
    env = dict(os.environ, OPENBLAS_NUM_THREADS=str(args.threads),
               OMP_NUM_THREADS=str(args.threads))
    import numpy as np
    print(f"numpy {np.__version__}, OpenBLAS threads {args.threads}, {os.cpu_count()} cpus, "
          f"load {os.getloadavg()[0]:.1f}")
    print(f"{'case':<10} {'grid':>7} {'pixels':>9} {'seconds':>8} {'attn s':>7} "
          f"{'GFLOP/s':>8} {'full TFLOP':>10} {'full-size s':>12} {'peak RSS MiB':>13}")
    for name in args.cases.split(","):
        cmd = [sys.executable, __file__, "--case", name, "--threads", str(args.threads),
               "--divide", args.divide]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if out.returncode != 0:
            print(f"{name}: failed\n{out.stderr}")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        note = "" if r["divide"] == 1 else f"  (measured at 1/{r['divide']} side, scaled)"
        print(f"{r['case']:<10} {r['grid']:>7} {r['pixels']:>9} {r['seconds']:>8} "
              f"{r['attention_seconds']:>7} {r['gflop_per_s']:>8} {r['full_tflop']:>10} "
              f"{r['projected_full_seconds']:>12} {r['peak_rss_mib']:>13}{note}")
        print(f"{'':<10} largest activation at full size: "
              f"{r['full_largest_activation_mib']} MiB")


if __name__ == "__main__":
    main()
