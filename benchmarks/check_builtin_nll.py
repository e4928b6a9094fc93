"""Does the C engine reproduce the PyTorch test-set NLL of the built-in model?

PyTorch's per-image NLL (nats, float16 weights cast to float32, float32 math, computed by
training/ on all 10,000 Fashion-MNIST test images) is stored in
benchmarks/results/pytorch_test_nll_nats.npy; zipar/data/builtin.json holds its mean in bits
per pixel. This script computes the same with the engine (teacher-forced Model.log_prob) and
prints both and their relative difference. Target: within 1e-3 relative.

    python benchmarks/check_builtin_nll.py [--n 10000]
"""
import argparse
import json
import os
import time

import numpy as np

import zipar
from zipar.fmnist import builtin
from zipar.fmnist import eval as zeval

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10000, help="first n test images")
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    model = zipar.load_default("pixels")
    tok = builtin.default_tokenizer()
    images, labels = zeval.test_set()
    n = min(args.n, len(images))
    tokens = tok.encode(images[:n])
    torch_nats = np.load(os.path.join(HERE, "results", "pytorch_test_nll_nats.npy"))[:n]
    t0 = time.perf_counter()
    ours = -model.log_prob(labels[:n], tokens, batch=args.batch)
    dt = time.perf_counter() - t0
    bits = lambda nats: float(nats.mean() / np.log(2) / (28 * 28))  # noqa: E731
    rel = abs(bits(ours) - bits(torch_nats)) / bits(torch_nats)
    per_image = float(np.max(np.abs(ours - torch_nats) / torch_nats))
    out = dict(images=n, engine_bits_per_pixel=bits(ours), pytorch_bits_per_pixel=bits(torch_nats),
               relative_difference=rel, max_per_image_relative_difference=per_image,
               target_met=rel <= 1e-3, seconds=dt,
               builtin_json_test_nll_bpp=builtin.builtin_info("pixels")["test_nll_bpp"])
    print(json.dumps(out, indent=1))
    with open(os.path.join(HERE, "results", "builtin_nll_check.json"), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
