"""The on-disk store of finished sweep cells (atomic writes, resumable sweeps)."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Optional

import numpy as np

__all__ = ["CellStore"]


class _Store:
    """Finished cells on disk: <hash>.json {"key", "record", "metrics_done"} and <hash>.npy."""

    def __init__(self, out):
        self.out = os.fspath(out)
        os.makedirs(self.out, exist_ok=True)

    def paths(self, h: str):
        return os.path.join(self.out, h + ".json"), os.path.join(self.out, h + ".npy")

    def load(self, h: str, key: dict) -> Optional[dict]:
        jpath, npath = self.paths(h)
        try:
            with open(jpath) as f:
                data = json.load(f)
        except (OSError, ValueError):
            return None
        if data.get("key") != json.loads(json.dumps(key)) or not os.path.exists(npath):
            return None
        return data

    def tokens(self, h: str) -> np.ndarray:
        return np.load(self.paths(h)[1], allow_pickle=False)

    def _atomic(self, path: str, write):
        fd, tmp = tempfile.mkstemp(dir=self.out, prefix="." + os.path.basename(path) + ".",
                                   suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise

    def save(self, h: str, key: dict, result: dict):
        jpath, npath = self.paths(h)
        # tokens first: a cell counts as finished once its JSON exists
        self._atomic(npath, lambda f: np.save(f, result["tokens"], allow_pickle=False))
        doc = {"key": key, "record": result["record"], "metrics_done": result["metrics_done"]}
        self._atomic(jpath, lambda f: f.write(json.dumps(doc, indent=1).encode()))


CellStore = _Store
