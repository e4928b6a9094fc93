"""Calibrate the row-start proxy of the built-in models and store it in their records.

For each built-in model (zipar.fmnist.builtin: "vq", "pixels") this runs
zipar.calibrate_proxy (the most frequent token in the last grid column of every row of
n raster samples, labels i % 10, sample ids 0..n-1) and writes the result under
"row_start_proxy" in the model's JSON record (zipar/data/fmnist_vq.json, builtin.json), which
zipar.load_default reads into ``model.row_start_proxy`` (the token ``proxy="calibrated"``
feeds). The rest of each record is left as it is.

    python benchmarks/calibrate_proxy.py                  # both models, 200 samples, cfg 2.0
    python benchmarks/calibrate_proxy.py --models vq --dry-run

Defaults: n = 200, seed 0, cfg_scale 2.0 (the CLI's default for the built-in models), other
sampling settings zipar's defaults (temperature 1, no top-k / top-p).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

import zipar
from zipar.fmnist.builtin import BUILTIN_NAMES, builtin_record_path


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(BUILTIN_NAMES), choices=BUILTIN_NAMES)
    p.add_argument("--n-samples", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cfg-scale", type=float, default=2.0)
    p.add_argument("--batch", type=int, default=50)
    p.add_argument("--dry-run", action="store_true", help="print, do not write the records")
    a = p.parse_args(argv)
    for name in a.models:
        model = zipar.load_default(name)
        t0 = time.perf_counter()
        cal = zipar.calibrate_proxy(model, n_samples=a.n_samples, seed=a.seed,
                                    cfg_scale=a.cfg_scale, batch=a.batch)
        seconds = time.perf_counter() - t0
        top = np.argsort(-cal.counts, kind="stable")[:5]
        print(f"{name}: token {cal.token}, {cal.fraction:.1%} of {cal.n_row_ends} row ends "
              f"({seconds:.0f} s); most frequent: "
              + ", ".join(f"{t} ({cal.counts[t] / cal.n_row_ends:.1%})" for t in top))
        if a.dry_run:
            continue
        path = builtin_record_path(name)
        with open(path) as f:
            record = json.load(f)
        record["row_start_proxy"] = cal.to_dict()
        with open(path, "w") as f:
            f.write(json.dumps(record, indent=1))   # the records' own layout (no final newline)
        print(f"  wrote {path}")


if __name__ == "__main__":
    main()
