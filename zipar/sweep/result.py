"""The records of a sweep: :class:`SweepResult` and :func:`format_table`."""

from __future__ import annotations

import csv
import json
from typing import List, Optional, Sequence

import numpy as np

from .grid import SETTING_KEYS
from .store import _Store

__all__ = ["SweepResult", "format_table"]

_BASE_COLUMNS = ("model",) + SETTING_KEYS + (
    "proxy_token", "n_samples", "batch_size", "forward_passes", "forward_passes_max",
    "raster_passes", "step_reduction", "mean_queries_per_pass", "proxies", "refeeds",
    "drafts_proposed", "drafts_accepted", "drafts_rejected", "resamples", "draft_acceptance",
    "seconds", "seconds_per_image")


class SweepResult:
    """Records of a sweep, in grid order (see :func:`sweep`).

    records: list of dicts (JSON values). cells: the settings of each record. out: the
    checkpoint directory or None. :meth:`tokens` gives a cell's generated grids.
    """

    def __init__(self, records, cells, out=None, hashes=None, tokens=None):
        self.records: List[dict] = list(records)
        self.cells: List[dict] = list(cells)
        self.out = out
        self._hashes = hashes
        self._tokens = tokens

    def __len__(self):
        return len(self.records)

    def __iter__(self):
        return iter(self.records)

    def __getitem__(self, i):
        return self.records[i]

    def __repr__(self):
        return f"<SweepResult {len(self.records)} cells, metrics {self.metric_columns}>"

    @property
    def columns(self) -> List[str]:
        """Every record key, base columns first, then metric columns in order of appearance."""
        cols = [k for k in _BASE_COLUMNS if any(k in r for r in self.records)]
        for r in self.records:
            cols += [k for k in r if k not in cols]
        return cols

    @property
    def metric_columns(self) -> List[str]:
        return [k for k in self.columns if k not in _BASE_COLUMNS]

    def tokens(self, i: int) -> np.ndarray:
        """Generated grids (n_samples, H, W) int32 of record i."""
        if self._tokens is not None and self._tokens[i] is not None:
            return self._tokens[i]
        if self.out is None:
            raise ValueError("no tokens kept")
        return _Store(self.out).tokens(self._hashes[i])

    def to_dataframe(self):
        """The records as a pandas DataFrame (pandas is optional)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("SweepResult.to_dataframe needs pandas (pip install pandas); "
                              ".records, .to_csv() and .to_json() work without it") from None
        return pd.DataFrame(self.records, columns=self.columns)

    def to_csv(self, path) -> None:
        """Write the records as CSV (empty field = None)."""
        cols = self.columns
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(cols)
            for r in self.records:
                w.writerow(["" if r.get(k) is None else r.get(k) for k in cols])

    def to_json(self, path) -> None:
        with open(path, "w") as f:
            json.dump(self.records, f, indent=1)

    def pareto(self, x: str = "forward_passes", y: Optional[str] = None, *,
               maximize: Sequence[str] = ()) -> List[dict]:
        """Records no other record beats on both x and y (lower is better unless the column is
        named in ``maximize``), sorted by x. ``y`` defaults to ``nll_bits`` when present, else
        the first metric column. Records where x or y is None are left out."""
        if y is None:
            metric = self.metric_columns
            if not metric:
                raise ValueError("no metric column: pass y=")
            y = "nll_bits" if "nll_bits" in metric else metric[0]
        for col in (x, y):
            if not any(col in r for r in self.records):
                raise KeyError(f"no column {col!r}; columns: {', '.join(self.columns)}")
        sx = -1.0 if x in maximize else 1.0
        sy = -1.0 if y in maximize else 1.0
        pts = [(sx * r[x], sy * r[y], i) for i, r in enumerate(self.records)
               if r.get(x) is not None and r.get(y) is not None]
        front = []
        for a in pts:
            dominated = any(b[0] <= a[0] and b[1] <= a[1] and (b[0] < a[0] or b[1] < a[1])
                            for b in pts)
            if not dominated:
                front.append(a)
        front.sort(key=lambda p: (p[0], p[1], p[2]))
        return [self.records[i] for _, _, i in front]


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def format_table(records: Sequence[dict], columns: Optional[Sequence[str]] = None) -> str:
    """A plain-text table of records: by default the settings that vary across them, then
    passes, step reduction, seconds per image and the metric columns."""
    if not records:
        return "(no records)"
    if columns is None:
        varying = [k for k in ("model",) + SETTING_KEYS
                   if len({json.dumps(r.get(k)) for r in records}) > 1]
        stats = ["forward_passes", "step_reduction", "mean_queries_per_pass", "draft_acceptance",
                 "seconds_per_image"]
        stats = [k for k in stats if any(r.get(k) is not None for r in records)]
        metric = []
        for r in records:
            metric += [k for k in r if k not in _BASE_COLUMNS and k not in metric]
        columns = (varying or ["policy"]) + stats + metric
    rows = [[_fmt(r.get(k)) for k in columns] for r in records]
    widths = [max(len(k), *(len(row[j]) for row in rows)) for j, k in enumerate(columns)]
    line = lambda cells: "  ".join(c.rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in rows])
