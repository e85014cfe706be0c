"""RegAD's registration network on frozen encoder features (Huang et al., ECCV 2022).

Parts, as in the paper's ``models/stn.py`` / ``models/siamese.py`` (written anew here):

* ``STNModule``: conv3x3 -> 64, BN, ReLU, maxpool(3, 2, 1), conv3x3 -> 16, BN, ReLU, maxpool,
  FC(16 s^2 -> 1024), ReLU, FC(-> n_params); the last FC has zero weights and the identity
  bias, so every STN is the identity transform at initialisation. Modes ``rotation_scale``
  (paper default: angle a, sx, sy -> ``[[sx cos a, -sin a, 0], [sin a, sy cos a, 0]]``, exactly
  the paper's parametrisation), ``rotation``, ``translation``, ``rotation_translation``,
  ``affine``. Warps sample bilinearly with reflection padding.
* ``RegistrationNet``: one STN after each feature stage. The encoder is frozen and is NOT
  re-run on warped features (the paper's STN-ResNet feeds each warped stage into the next
  trainable stage). The frozen analogue of that cascade: stage ``l``'s map is first warped by
  the composite transform of the earlier stages, its STN predicts a residual ``theta_l``, and
  the stage output is warped (once, from the original map) by ``Theta_l = theta_1 o .. o theta_l``.
* The Siamese (SimSiam) head on the last stage: projection = 3 x 1x1 conv (BN + ReLU after the
  first two), predictor = 1x1 conv, BN, ReLU, 1x1 conv; loss = symmetric negative cosine
  ``-cos(p_q, sg(z_s)) / 2 - cos(p_s, sg(z_q)) / 2`` per grid position (mean), where ``z_s``
  is the projection of the mean registered support feature (K shots).

ViT encoders work the same way: their patch grids are ``[N, h, w, C]`` maps like CNN stages.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: STN parametrisations: number of regressed parameters and the identity bias
STN_MODES = {
    "rotation_scale": (3, (0.0, 1.0, 1.0)),
    "rotation": (1, (0.0,)),
    "translation": (2, (0.0, 0.0)),
    "rotation_translation": (3, (0.0, 0.0, 0.0)),
    "affine": (6, (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)),
}


def theta_from_params(p: torch.Tensor, mode: str) -> torch.Tensor:
    """Regressed parameters ``[N, n]`` -> affine matrices ``[N, 2, 3]`` (normalised coordinates)."""
    n = p.shape[0]
    if mode == "affine":
        return p.view(n, 2, 3)
    zero, one = p.new_zeros(n), p.new_ones(n)
    if mode == "rotation_scale":
        a, sx, sy = p.unbind(1)
        rows = [torch.cos(a) * sx, -torch.sin(a), zero, torch.sin(a), torch.cos(a) * sy, zero]
    elif mode == "rotation":
        a = p[:, 0]
        rows = [torch.cos(a), -torch.sin(a), zero, torch.sin(a), torch.cos(a), zero]
    elif mode == "translation":
        rows = [one, zero, p[:, 0], zero, one, p[:, 1]]
    elif mode == "rotation_translation":
        a, tx, ty = p.unbind(1)
        rows = [torch.cos(a), -torch.sin(a), tx, torch.sin(a), torch.cos(a), ty]
    else:
        raise ValueError(f"unknown STN mode {mode!r}; use one of {sorted(STN_MODES)}")
    return torch.stack(rows, 1).view(n, 2, 3)


def identity_theta(n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.eye(2, 3, device=device).expand(n, 2, 3).clone()


def _homog(theta: torch.Tensor) -> torch.Tensor:
    last = theta.new_tensor([0.0, 0.0, 1.0]).expand(theta.shape[0], 1, 3)
    return torch.cat([theta, last], 1)


def compose(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``warp(warp(x, a), b) ~= warp(x, compose(a, b))`` (sampling grids: ``a @ b``)."""
    return (_homog(a) @ _homog(b))[:, :2]


def invert(theta: torch.Tensor) -> torch.Tensor:
    """Inverse affine map ``[N, 2, 3]`` (2x2 inverse in closed form: no batched LAPACK call)."""
    a, b, c = theta[:, 0, 0], theta[:, 0, 1], theta[:, 0, 2]
    d, e, f = theta[:, 1, 0], theta[:, 1, 1], theta[:, 1, 2]
    det = a * e - b * d
    ia, ib, id_, ie = e / det, -b / det, -d / det, a / det
    rows = [ia, ib, -(ia * c + ib * f), id_, ie, -(id_ * c + ie * f)]
    return torch.stack(rows, 1).view(-1, 2, 3)


def warp(x: torch.Tensor, theta: torch.Tensor, padding: str = "reflection") -> torch.Tensor:
    """Sample ``x [N, C, h, w]`` on the grid ``theta`` maps the output to (bilinear)."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding, align_corners=False)


class STNModule(nn.Module):
    """Localisation net + transform regression of one stage (identity at initialisation)."""

    def __init__(self, channels: int, grid: Sequence[int], mode: str = "rotation_scale") -> None:
        super().__init__()
        if mode not in STN_MODES:
            raise ValueError(f"unknown STN mode {mode!r}; use one of {sorted(STN_MODES)}")
        self.mode = mode
        n_params, bias = STN_MODES[mode]
        h, w = (math.ceil(math.ceil(s / 2) / 2) for s in grid)
        self.conv = nn.Sequential(
            nn.Conv2d(channels, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
            nn.Conv2d(64, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
        )
        self.fc = nn.Sequential(nn.Linear(16 * h * w, 1024), nn.ReLU(), nn.Linear(1024, n_params))
        nn.init.zeros_(self.fc[2].weight)
        with torch.no_grad():
            self.fc[2].bias.copy_(torch.tensor(bias))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, C, h, w]`` -> transform ``[N, 2, 3]``."""
        return theta_from_params(self.fc(self.conv(x).flatten(1)), self.mode)


class Projector(nn.Module):
    """SimSiam projection: 1x1 conv, BN, ReLU, 1x1 conv, BN, ReLU, 1x1 conv."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
            nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
            nn.Conv2d(c, c, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Predictor(nn.Module):
    """SimSiam predictor: 1x1 conv, BN, ReLU, 1x1 conv."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(c, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                                 nn.Conv2d(c, c, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``-cos(p, stopgrad(z))`` over channels, mean over batch and positions."""
    return -F.cosine_similarity(p, z.detach(), dim=1).mean()


class RegistrationNet(nn.Module):
    """STNs after each frozen feature stage + Siamese projection/prediction heads.

    Args:
        channels: channels of each stage (finest first).
        grids: ``(h, w)`` of each stage.
        mode: STN parametrisation (``STN_MODES``).
    """

    def __init__(self, channels: Sequence[int], grids: Sequence[Sequence[int]], mode: str = "rotation_scale") -> None:
        super().__init__()
        if len(channels) != len(grids) or not channels:
            raise ValueError("RegistrationNet: one channel count and one grid per stage")
        self.channels = [int(c) for c in channels]
        self.grids = [tuple(int(s) for s in g) for g in grids]
        self.mode = mode
        self.stn = nn.ModuleList(STNModule(c, g, mode) for c, g in zip(self.channels, self.grids, strict=True))
        self.projector = Projector(self.channels[-1])
        self.predictor = Predictor(self.channels[-1])

    def register(self, feats: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Per-stage ``[N, C_l, h_l, w_l]`` -> (registered maps, composite transforms ``Theta_l``)."""
        if len(feats) != len(self.stn):
            raise ValueError(f"RegistrationNet: expected {len(self.stn)} stages, got {len(feats)}")
        total = identity_theta(feats[0].shape[0], feats[0].device)
        out, thetas = [], []
        for layer, (f, stn) in enumerate(zip(feats, self.stn, strict=True)):
            x = f if layer == 0 else warp(f, total)
            total = compose(total, stn(x))
            out.append(warp(f, total))
            thetas.append(total)
        return out, thetas

    def loss(self, query: Sequence[torch.Tensor], support: Sequence[torch.Tensor], shots: int) -> torch.Tensor:
        """Symmetric negative-cosine registration loss.

        Args:
            query: per-stage ``[B, C, h, w]`` frozen features of B query images.
            support: per-stage ``[B * shots, C, h, w]`` (``shots`` supports per query, grouped).
        """
        zq_in = self.register(query)[0][-1]
        s = self.register(support)[0][-1]
        zs_in = s.view(zq_in.shape[0], shots, *s.shape[1:]).mean(1)
        zq, zs = self.projector(zq_in), self.projector(zs_in)
        pq, ps = self.predictor(zq), self.predictor(zs)
        return negative_cosine(pq, zs) / 2 + negative_cosine(ps, zq) / 2
