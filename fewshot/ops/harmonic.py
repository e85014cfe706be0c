"""Harmonic-mean aggregation (WinCLIP): over a dimension, and from windows onto patches.

Scores are non-negative (probabilities, ``(1 - cos) / 2`` distances); they are clamped to
``eps`` before the reciprocal so that a zero score gives a (near-)zero mean instead of NaN.
"""

from __future__ import annotations

import torch

__all__ = ["harmonic_mean", "window_incidence", "harmonic_window_aggregate"]

EPS = 1e-12


def harmonic_mean(x: torch.Tensor, dim: int = 0, eps: float = EPS) -> torch.Tensor:
    """``n / sum(1 / x)`` along ``dim``.

    Args:
        x: non-negative scores, any shape.
        dim: dimension to reduce (size ``n``).
        eps: lower clamp applied before the reciprocal.
    """
    return x.shape[dim] / x.clamp_min(eps).reciprocal().sum(dim)


def window_incidence(windows: torch.Tensor, num_patches: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """0/1 matrix ``[W, P]``: entry ``(w, p)`` is 1 when window ``w`` covers patch ``p``.

    Args:
        windows: ``LongTensor[W, m]`` patch indices (row-major over the grid) of each window.
        num_patches: ``P``, patches in the grid.

    Raises:
        ValueError: an index is out of range or some patch is covered by no window.
    """
    if windows.ndim != 2 or windows.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"windows must be an integer tensor [W, m], got {windows.dtype} {tuple(windows.shape)}")
    if windows.numel() and (int(windows.min()) < 0 or int(windows.max()) >= num_patches):
        raise ValueError(f"window indices must lie in [0, {num_patches})")
    inc = torch.zeros(windows.shape[0], num_patches, dtype=dtype, device=windows.device)
    inc.scatter_(1, windows.long(), 1.0)
    if bool((inc.sum(0) == 0).any()):
        raise ValueError("some patches are covered by no window; harmonic aggregation is undefined there")
    return inc


def harmonic_window_aggregate(scores: torch.Tensor, windows: torch.Tensor, num_patches: int,
                              eps: float = EPS, incidence: torch.Tensor | None = None) -> torch.Tensor:
    """Per patch, the harmonic mean of the scores of every window covering it.

    Args:
        scores: ``[..., W]`` non-negative window scores.
        windows: ``LongTensor[W, m]`` patch indices of each window.
        num_patches: ``P``.
        eps: lower clamp before the reciprocal.
        incidence: precomputed ``window_incidence(windows, P)`` (optional, saves a rebuild).

    Returns:
        ``[..., P]`` patch scores (one matrix product, no loop over patches or windows).
    """
    inc = window_incidence(windows, num_patches, scores.dtype) if incidence is None else incidence.to(scores.dtype)
    inc = inc.to(scores.device)
    recip_sum = scores.clamp_min(eps).reciprocal() @ inc
    return inc.sum(0) / recip_sum
