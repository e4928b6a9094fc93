"""Calibration of the row-start proxy: :func:`calibrate_proxy`.

When ZipAR starts row r before row r-1 is complete (E = 0 grids), the row-start query is fed a
stand-in for the missing token at (r-1, W-1). ``proxy="calibrated"`` feeds one fixed token, the
model's ``row_start_proxy``; :func:`calibrate_proxy` picks it as the most frequent row-end token
(last grid column) of raster samples, the token the real end of a row most often is.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict

import numpy as np

from ._checks import INT32_MAX, int_scalar
from .model import Model
from .policies import Raster
from .sampling import Sampling
from .session import progress_bar

__all__ = ["calibrate_proxy", "ProxyCalibration"]


@dataclasses.dataclass(frozen=True)
class ProxyCalibration:
    """What :func:`calibrate_proxy` found.

    token: the most frequent row-end token (ties: the smallest id); fraction: its share of the
    row ends; counts: (n_tokens,) int64, how many row ends are each token; n_samples: raster
    samples generated; n_row_ends: n_samples * H, the row ends counted; settings: the sampling
    settings (:meth:`zipar.Sampling.to_dict`) and the label rule.
    """

    token: int
    fraction: float
    counts: np.ndarray
    n_samples: int
    n_row_ends: int
    settings: Dict[str, Any]

    def to_dict(self) -> Dict[str, Any]:
        """A JSON-able record: token, fraction, n_samples, the sampling settings (seed,
        cfg_scale, ...), the label rule and how the token was chosen (counts left out)."""
        return dict(token=self.token, fraction=self.fraction, n_samples=self.n_samples,
                    **self.settings,
                    how="most frequent token in the last grid column (every row) of n_samples "
                        "raster samples, labels i % num_classes, sample ids 0..n_samples-1 "
                        "(zipar.calibrate_proxy; ties: smallest id)")


def calibrate_proxy(model, n_samples: int = 200, seed: int = 0,
                    cfg_scale: float = Sampling.cfg_scale, *, batch: int = 50,
                    progress: bool = False, **sampling) -> ProxyCalibration:
    """The most frequent row-end token of ``n_samples`` raster samples of a class-conditional
    ``model`` (a :class:`zipar.Model`), as a :class:`ProxyCalibration`.

    Sample i has label ``i % num_classes`` and sample id i (so the result does not depend on
    ``batch``), drawn with ``seed``, ``cfg_scale`` and the other sampling keywords of
    :meth:`zipar.Model.generate` (cfg_interval, temperature, top_k, top_p). Every row's last
    grid column (r, W-1), r = 0..H-1, is counted; the token with the largest count wins, the
    smallest id among equals. To use it: ``model.row_start_proxy = result.token``, then
    ``ZipAR(window, proxy="calibrated")``; ``Model.save`` keeps the token.
    """
    if not isinstance(model, Model):
        raise TypeError(f"calibrate_proxy needs a zipar.Model, got {type(model).__name__}")
    c = model.config
    if c.caption_dim:
        raise ValueError("calibrate_proxy samples class-conditional models (labels i % "
                         "num_classes); this one is text-conditioned")
    n_samples = int_scalar("n_samples", n_samples, 1, INT32_MAX)
    batch = int_scalar("batch", batch, 1, INT32_MAX)
    sp = Sampling(cfg_scale=cfg_scale, seed=seed, **sampling)
    counts = np.zeros(c.vocab_size, np.int64)
    bar = progress_bar(progress, n_samples, "calibrate")
    try:
        for b0 in range(0, n_samples, batch):
            b1 = min(n_samples, b0 + batch)
            ids = np.arange(b0, b1)
            res = model.generate(ids % c.num_classes, policy=Raster(), sampling=sp,
                                 sample_ids=ids, decode_images=False)
            counts += np.bincount(res.tokens[:, :, -1].reshape(-1), minlength=c.vocab_size)
            if bar is not None:
                bar.update_to(b1)
    finally:
        if bar is not None:
            bar.close()
    token = int(np.argmax(counts))   # the first maximum: the smallest id among ties
    n_ends = n_samples * c.H
    return ProxyCalibration(token=token, fraction=float(counts[token] / n_ends), counts=counts,
                            n_samples=n_samples, n_row_ends=n_ends,
                            settings=dict(sp.to_dict(), labels="i % num_classes"))
