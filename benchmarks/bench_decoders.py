"""Seconds per image and peak RSS of the NumPy VQ decoders at the real sizes, random weights.

    PYTHONPATH=$PWD python3 benchmarks/bench_decoders.py                 # all three, full size
    PYTHONPATH=$PWD python3 benchmarks/bench_decoders.py --divide emu3=3  # Emu3 at 30x30, scaled

Cases (weights of the published shapes from zipar.families.*.random_*_state_dict):
- emu3:      Emu3-VisionTokenizer decoder, 90x90 codes -> 720x720 (ch 256, mult 1,2,2,4, attention
             in the middle and on level 3 over h*w positions);
- chameleon: Chameleon / Lumina-mGPT-512 VQGAN, 32x32 -> 512x512 (ch 128, mult 1,1,2,2,4);
- lumina768: the same VQGAN for Lumina-mGPT-7B-768's 48x48 grids -> 768x768.

Each case runs in its own subprocess (so its peak RSS is its own): build the decoder, one
warm-up-free decode of random codes, wall time. ``--divide case=s`` decodes an (H/s) x (W/s)
grid instead and projects the full size as ``(t - t_attn) * s^2 + t_attn * s^4``: convolutions,
norms and pixel work scale with the pixel count (s^2), the spatial attention's score matrix with
its square (s^4, an upper bound for its projection parts). The attention time is measured
separately by wrapping the attention blocks. Peak RSS is that of the reduced run when divided.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

CASES = {"emu3": (90, 90), "chameleon": (32, 32), "lumina768": (48, 48)}


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
    projected = (t - attn_time[0]) * s * s + attn_time[0] * s ** 4
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB -> MiB (Linux)
    return dict(case=name, grid=f"{h}x{w}", pixels=f"{px.shape[1]}x{px.shape[2]}",
                full_grid=f"{H}x{W}", divide=s, seconds=round(t, 2),
                attention_seconds=round(attn_time[0], 2), build_seconds=round(t_build, 2),
                projected_full_seconds=round(projected, 1), peak_rss_mib=round(rss),
                threads=threads)


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
          f"{'full-size s':>12} {'peak RSS MiB':>13}")
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
              f"{r['attention_seconds']:>7} {r['projected_full_seconds']:>12} "
              f"{r['peak_rss_mib']:>13}{note}")


if __name__ == "__main__":
    main()
