"""Per-position Gaussian statistics and Mahalanobis distance (PaDiM, RegAD).

Everything goes through a Cholesky factor of ``cov + eps I`` and triangular solves:
never ``linalg.inv``/``solve``/``lu_factor``, whose batched LU path fails with a oneMKL
SLASWP error on 2+ CPU threads.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class GaussianStats:
    """Per-position Gaussian.

    Attributes:
        mean: ``[P, C]`` float32.
        cov: ``[P, C, C]`` float32, already regularised (``+ eps I``).
        chol: ``[P, C, C]`` lower Cholesky factor of ``cov``.
    """

    mean: torch.Tensor
    cov: torch.Tensor
    chol: torch.Tensor


class GaussianAccumulator:
    """Streaming per-position mean/covariance (float64 sums) over batches ``[N, P, C]``."""

    def __init__(self) -> None:
        self.n = 0
        self.s1: torch.Tensor | None = None
        self.s2: torch.Tensor | None = None
        self.shift: torch.Tensor | None = None

    def update(self, features: torch.Tensor) -> None:
        """Add a batch of ``[N, P, C]`` features."""
        if features.ndim != 3:
            raise ValueError(f"gaussian: features must be [N, P, C], got {tuple(features.shape)}")
        f = features.double()
        if self.shift is None:  # shifted sums keep the float64 covariance accurate
            self.shift = f[0].clone()
            self.s1 = torch.zeros_like(self.shift)
            self.s2 = torch.zeros(f.shape[1], f.shape[2], f.shape[2], dtype=torch.float64, device=f.device)
        elif f.shape[1:] != self.shift.shape:
            raise ValueError(f"gaussian: batch shape {tuple(f.shape[1:])} differs from {tuple(self.shift.shape)}")
        d = f - self.shift
        self.s1 += d.sum(0)
        self.s2 += torch.einsum("npc,npd->pcd", d, d)
        self.n += f.shape[0]

    def finalize(self, eps: float = 0.01) -> GaussianStats:
        """Unbiased covariance (``N-1``; ``N`` when ``N == 1``) ``+ eps I`` and its Cholesky factor."""
        if self.n == 0:
            raise ValueError("gaussian: no features accumulated")
        mean_d = self.s1 / self.n
        cov = (self.s2 - self.n * torch.einsum("pc,pd->pcd", mean_d, mean_d)) / max(self.n - 1, 1)
        eye = torch.eye(cov.shape[-1], dtype=cov.dtype, device=cov.device)
        cov = cov + eps * eye
        chol, info = torch.linalg.cholesky_ex(cov)
        if int(info.max()) > 0:
            raise ValueError(f"gaussian: covariance not positive definite (eps={eps} too small)")
        # row-major like a loaded state: solve_triangular's result depends on the factor's strides
        # (cholesky returns it column-major), so a saved and reloaded model would differ by ~1e-6
        return GaussianStats((mean_d + self.shift).float(), cov.float(), chol.float().contiguous())


def fit_gaussian(features: torch.Tensor, eps: float = 0.01) -> GaussianStats:
    """Per-position Gaussian of ``[N, P, C]`` features (covariance ``+ eps I``)."""
    acc = GaussianAccumulator()
    acc.update(features)
    return acc.finalize(eps)


def mahalanobis(features: torch.Tensor, stats: GaussianStats, chunk: int = 256) -> torch.Tensor:
    """Mahalanobis distance ``sqrt((x - mu)^T cov^-1 (x - mu))`` per position.

    Args:
        features: ``[N, P, C]``.
        stats: ``GaussianStats`` with ``P`` positions.
        chunk: positions solved at once (bounds memory to ``chunk * C * N`` floats).

    Returns:
        ``[N, P]`` float32.
    """
    if features.ndim != 3 or features.shape[1:] != stats.mean.shape:
        raise ValueError(
            f"mahalanobis: features {tuple(features.shape)} do not match stats {tuple(stats.mean.shape)}"
        )
    out = torch.empty(features.shape[0], features.shape[1])
    for s in range(0, features.shape[1], chunk):
        d = (features[:, s : s + chunk].float() - stats.mean[s : s + chunk]).permute(1, 2, 0)  # [p, C, N]
        y = torch.linalg.solve_triangular(stats.chol[s : s + chunk], d, upper=False)
        out[:, s : s + chunk] = y.square().sum(1).T
    return out.sqrt_()
