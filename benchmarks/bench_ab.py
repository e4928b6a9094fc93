"""Two builds of zipar side by side: built-in model, one engine thread, raster and ZipAR-4.

    python benchmarks/bench_ab.py OLD_CHECKOUT NEW_CHECKOUT [--images 16] [--repeats 3]

Each checkout must hold an in-place build (python setup.py build_ext --inplace). The two run
alternately in fresh processes, so load drift on a shared machine hits both; prints seconds per
image (median of the repeats), the speed-up, and whether the tokens are equal.
"""
import argparse
import json
import subprocess
import sys

import numpy as np

CHILD = r"""
import json, sys, time
import numpy as np
sys.path.insert(0, sys.argv[1])
import zipar
zipar.set_num_threads(1)
m = zipar.load_default("pixels")
labels = np.arange(int(sys.argv[2])) % 10
out = {}
for name, pol in (("raster", zipar.Raster()), ("ZipAR-4", zipar.ZipAR(4))):
    t0 = time.perf_counter()
    r = m.generate(labels, policy=pol, cfg_scale=1.0, seed=0, decode_images=False)
    out[name] = [(time.perf_counter() - t0) / len(labels), r.tokens.tolist()]
print(json.dumps(out))
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    runs = {"old": [], "new": []}
    for rep in range(args.repeats):
        for side in ("old", "new"):
            out = subprocess.run([sys.executable, "-c", CHILD, getattr(args, side),
                                  str(args.images)], capture_output=True, text=True, check=True,
                                 cwd="/").stdout
            runs[side].append(json.loads(out))
            print(side, rep, "  ".join(f"{k} {v[0]:.3f} s/img" for k, v in runs[side][-1].items()),
                  flush=True)
    for pol in runs["old"][0]:
        old = float(np.median([r[pol][0] for r in runs["old"]]))
        new = float(np.median([r[pol][0] for r in runs["new"]]))
        same = np.array_equal(runs["old"][-1][pol][1], runs["new"][-1][pol][1])
        print(f"{pol}: old {old:.3f} s/img, new {new:.3f} s/img, speed-up {old / new:.2f}x "
              f"(median of {args.repeats}), tokens equal: {same}")


if __name__ == "__main__":
    main()
