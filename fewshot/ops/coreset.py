"""Approximate greedy (k-center) coreset subsampling, as in PatchCore.

Algorithm (PatchCore, Roth et al. 2022, "approximate greedy coreset"): features are
randomly projected to ``proj_dim`` dimensions (Johnson-Lindenstrauss), then points are
added greedily, each time the point farthest from the current coreset.

Deviations from the official code (documented on purpose):
    * the ``num_starts`` random starting points ARE members of the coreset and the
      distance-to-coreset is initialised with the exact minimum distance to them (the
      official code initialises with the MEAN distance to the starts and does not add
      them; anomalib's single-start variant forgets the start point, anomalib #3459);
    * the projection is a seeded Gaussian matrix ``N(0, 1/proj_dim)`` (the official code
      uses an untrained ``nn.Linear``), and is skipped when ``C <= proj_dim``;
    * the greedy loop is exact but pruned with the triangle inequality: when a new centre
      ``c`` is added, a point ``x`` assigned to centre ``a`` can only get closer if
      ``d(a, c) < 2 d(x, a)``; only those points are re-measured (one mat-vec over all
      points when more than 1/8 of them qualify). The selected indices are the same as the
      plain greedy loop (up to float rounding ties), at a fraction of the cost once the
      coreset covers the data (cost per step ~ O(M) comparisons + O(t d) instead of O(M d)).
"""

from __future__ import annotations

import math

import torch


def project(features: torch.Tensor, proj_dim: int = 128, seed: int = 0, chunk: int = 65536) -> torch.Tensor:
    """Seeded Gaussian random projection ``[M, C] -> [M, proj_dim]`` (identity if ``C <= proj_dim``)."""
    m, c = features.shape
    if proj_dim <= 0 or c <= proj_dim:
        return features.float().contiguous()
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(c, proj_dim, generator=g) / math.sqrt(proj_dim)
    w = w.to(features.device)
    out = torch.empty(m, proj_dim, device=features.device)
    for s in range(0, m, chunk):
        out[s : s + chunk] = features[s : s + chunk].float() @ w
    return out


def coreset_size(m: int, ratio: float | None = None, n: int | None = None) -> int:
    """Number of points kept: ``n`` if given, else ``ceil(ratio * m)``, clipped to ``[1, m]``."""
    if (ratio is None) == (n is None):
        raise ValueError("coreset: give exactly one of ratio or n")
    if ratio is not None:
        if not 0.0 < ratio <= 1.0:
            raise ValueError(f"coreset: ratio must be in (0, 1], got {ratio}")
        n = math.ceil(ratio * m)
    if n < 1:
        raise ValueError(f"coreset: n must be >= 1, got {n}")
    return min(int(n), m)


def approximate_greedy_coreset(
    features: torch.Tensor,
    ratio: float | None = None,
    n: int | None = None,
    proj_dim: int = 128,
    num_starts: int = 10,
    seed: int = 0,
) -> torch.Tensor:
    """Indices of a greedy k-center coreset of ``features``.

    Args:
        features: ``[M, C]`` float.
        ratio: share of points kept (``ceil(ratio * M)``); exclusive with ``n``.
        n: number of points kept; exclusive with ``ratio``.
        proj_dim: random-projection dimension (``0`` = no projection).
        num_starts: random starting points (members of the coreset).
        seed: seed of the projection and the starting points.

    Returns:
        ``[n]`` int64 distinct indices into ``features``, in selection order.
    """
    if features.ndim != 2 or features.shape[0] == 0:
        raise ValueError(f"coreset: features must be a non-empty [M, C] tensor, got {tuple(features.shape)}")
    m = features.shape[0]
    n = coreset_size(m, ratio, n)
    if n == m:
        return torch.arange(m)
    x = project(features, proj_dim, seed)
    g = torch.Generator().manual_seed(seed)
    starts = torch.randperm(m, generator=g)[: max(1, min(num_starts, n))].to(x.device)
    return _greedy(x, starts, n)


def _greedy(x: torch.Tensor, starts: torch.Tensor, n: int) -> torch.Tensor:
    """Pruned exact farthest-point selection on ``x [M, d]`` starting from ``starts``."""
    m = x.shape[0]
    sel = torch.empty(n, dtype=torch.long, device=x.device)
    sel[: starts.numel()] = starts
    centers = torch.empty(n, x.shape[1], device=x.device)
    centers[: starts.numel()] = x[starts]
    # distance of every point to its nearest start, and which start
    mind = torch.empty(m, device=x.device)
    assign = torch.empty(m, dtype=torch.long, device=x.device)
    for s in range(0, m, 65536):
        d = torch.cdist(x[s : s + 65536], centers[: starts.numel()])
        mind[s : s + 65536], assign[s : s + 65536] = d.min(1)
    mind[starts] = 0.0
    assign[starts] = torch.arange(starts.numel(), device=x.device)
    xn = (x * x).sum(1)
    full_threshold = m // 8
    for t in range(starts.numel(), n):
        p = int(torch.argmax(mind))
        if float(mind[p]) <= 0.0:  # every remaining point duplicates a centre: fill arbitrarily
            taken = torch.zeros(m, dtype=torch.bool, device=x.device)
            taken[sel[:t]] = True
            sel[t:] = torch.nonzero(~taken).squeeze(1)[: n - t]
            break
        sel[t] = p
        c = x[p]
        centers[t] = c
        dc = (centers[:t] - c).norm(dim=1)  # distance of every existing centre to the new one
        maybe = dc[assign] < 2.0 * mind
        if int(maybe.sum()) > full_threshold:  # pruning does not pay off: one mat-vec over all points
            d = torch.addmv(xn + c.dot(c), x, c, alpha=-2.0).clamp_min_(0.0).sqrt_()
            closer = d < mind
            mind = torch.where(closer, d, mind)
            assign[closer] = t
        else:
            cand = torch.nonzero(maybe).squeeze(1)
            d = (x[cand] - c).norm(dim=1)
            closer = d < mind[cand]
            upd = cand[closer]
            mind[upd] = d[closer]
            assign[upd] = t
        mind[p] = 0.0
        assign[p] = t
    return sel
