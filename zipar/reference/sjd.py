"""Speculative Jacobi decoding (SJD-style) written on the low-level session API.

An example of an acceptance rule implemented in Python with :meth:`zipar.Model.session`: each
pass feeds the last committed token plus up to ``window - 1`` draft tokens in one chain (the
drafts are visible only inside it); drafts are accepted left to right with
``u < min(1, p(x) / q(x))`` and the first rejection is resampled from ``norm(max(0, p - q))``.
New drafts for the positions after the frontier are drawn from the last distribution of the pass.
With ``window = 1`` no drafts exist and the decoder is raster decoding, token for token.
"""

from __future__ import annotations

import numpy as np

__all__ = ["sjd_generate"]

# draw indices of the counter-based stream (per position): 0 plain sample,
# 1 + 2*pass acceptance test, 2 + 2*pass residual, 2**20 + pass draft
_DRAFT_DRAW = 1 << 20


def sjd_generate(model, labels, window: int, *, seed: int = 0, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, cfg_scale: float = 1.0):
    """Returns (tokens (B, H, W) int32, forward passes, accepted drafts)."""
    if window < 1:
        raise ValueError("window must be >= 1")
    c = model.config
    if c.eor:
        raise ValueError("sjd_generate supports grids without end-of-row tokens")
    H, W = c.H, c.W
    L = H * W
    sess = model.session(labels, cfg_scale=cfg_scale, seed=seed)
    n = sess.n_images
    toks = np.full((n, L), -1, dtype=np.int64)

    def probs(lg):
        return sess.probs(lg, temperature, top_k, top_p)[0]

    def rc(i):
        return divmod(i, W)

    lg = sess.prefill()
    for b in range(n):
        toks[b, 0] = sess.draw(probs(lg[b]), sess.uniform(b, 0, 0, 0))
    frontier = np.ones(n, dtype=np.int64)  # positions < frontier are decided
    drafts = [[] for _ in range(n)]        # [(token, q)] for positions frontier, frontier+1, ...
    accepted_total = 0
    passes = 0
    while (frontier < L).any():
        img, row, col, tok, chain, owner = [], [], [], [], [], []
        for b in range(n):
            k = int(frontier[b])
            if k >= L:
                continue
            feed = [int(toks[b, k - 1])] + [x for x, _ in drafts[b][: window - 1]]
            for j, t in enumerate(feed):
                r, cc = rc(k - 1 + j)
                img.append(b), row.append(r), col.append(cc), tok.append(t)
                chain.append(0 if j == 0 else b + 1)
                owner.append(b)
        lg = sess.forward(img, row, col, tok, chain, 1)
        passes += 1
        rows_of = {}
        for b, l in zip(owner, lg):
            rows_of.setdefault(b, []).append(l)
        for b, rows in rows_of.items():
            k = int(frontier[b])
            n_drafts = len(rows) - 1
            decided = accepted = 0
            last = None
            for j in range(len(rows)):
                p = probs(rows[j])
                last = p
                if k + j >= L:  # every draft accepted up to the end of the grid
                    break
                r, cc = rc(k + j)
                if j < n_drafts:
                    x, q = drafts[b][j]
                    if sess.uniform(b, r, cc, 1 + 2 * passes) < min(1.0, p[x] / q[x]):
                        toks[b, k + j] = x
                        decided += 1
                        accepted += 1
                        continue
                    resid = np.maximum(p - q, 0.0)
                    src = resid if resid.sum() > 0 else p
                    toks[b, k + j] = sess.draw(src, sess.uniform(b, r, cc, 2 + 2 * passes))
                else:
                    toks[b, k + j] = sess.draw(p, sess.uniform(b, r, cc, 0))
                decided += 1
                break
            # draft slots: positions k .. k+n_drafts-1; accepted ones become committed
            accepted_total += accepted
            for j in range(n_drafts):
                r, cc = rc(k + j)
                (sess.commit if j < accepted else sess.discard)(b, r, cc)
            frontier[b] = k + decided
            drafts[b] = []
            for j in range(window - 1):
                pos = int(frontier[b]) + j
                if pos >= L:
                    break
                r, cc = rc(pos)
                drafts[b].append((sess.draw(last, sess.uniform(b, r, cc, _DRAFT_DRAW + passes)),
                                  last))
    return toks.reshape(n, H, W).astype(np.int32), passes + 1, accepted_total
