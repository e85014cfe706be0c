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


def mean_transform_penalty(thetas: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum over layers of ``||mean over the batch of Theta_l - I||^2``: zero when the transforms
    average to the identity, whatever each image's own transform (a common turn or zoom of every
    image registers nothing; it only resamples the maps)."""
    eye = torch.eye(2, 3, device=thetas[0].device, dtype=thetas[0].dtype)
    return sum(((t.mean(0) - eye) ** 2).sum() for t in thetas)


def registration_loss(heads: nn.Module, query: tuple[list[torch.Tensor], list[torch.Tensor]],
                      support: tuple[list[torch.Tensor], list[torch.Tensor]], shots: int,
                      prior: float = 0.0) -> torch.Tensor:
    """``siamese_loss`` of the last registered maps of ``register`` outputs, plus ``prior`` x the
    ``mean_transform_penalty`` of query and support transforms."""
    loss = siamese_loss(heads, query[0][-1], support[0][-1], shots)
    if prior:
        loss = loss + prior * (mean_transform_penalty(query[1]) + mean_transform_penalty(support[1]))
    return loss


def _add_stns_and_heads(net: nn.Module, channels: Sequence[int], grids: Sequence[Sequence[int]], mode: str) -> None:
    """One STN per feature stage and the Siamese heads on the last one (identity STNs)."""
    net.channels = [int(c) for c in channels]
    net.grids = [tuple(int(s) for s in g) for g in grids]
    net.mode = mode
    net.stn = nn.ModuleList(STNModule(c, g, mode) for c, g in zip(net.channels, net.grids, strict=True))
    net.projector = Projector(net.channels[-1])
    net.predictor = Predictor(net.channels[-1])


def siamese_loss(heads: nn.Module, query: torch.Tensor, support: torch.Tensor, shots: int) -> torch.Tensor:
    """Symmetric negative cosine of registered last-stage maps: ``query`` ``[B, C, h, w]``,
    ``support`` ``[B * shots, C, h, w]`` (grouped per query, averaged); ``heads`` has the
    ``projector`` and ``predictor``."""
    zs_in = support.view(query.shape[0], shots, *support.shape[1:]).mean(1)
    zq, zs = heads.projector(query), heads.projector(zs_in)
    pq, ps = heads.predictor(zq), heads.predictor(zs)
    return negative_cosine(pq, zs) / 2 + negative_cosine(ps, zq) / 2


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
        _add_stns_and_heads(self, channels, grids, mode)

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

    def loss(self, query: Sequence[torch.Tensor], support: Sequence[torch.Tensor], shots: int,
             prior: float = 0.0) -> torch.Tensor:
        """Symmetric negative-cosine registration loss (+ ``prior`` x ``mean_transform_penalty``).

        Args:
            query: per-stage ``[B, C, h, w]`` frozen features of B query images.
            support: per-stage ``[B * shots, C, h, w]`` (``shots`` supports per query, grouped).
            prior: weight of the penalty on the batch-mean transform (0: the paper's loss).
        """
        return registration_loss(self, self.register(query), self.register(support), shots, prior)


class CascadeRegistration(nn.Module):
    """RegAD's STN-encoder: encoder stages fine-tuned, an STN after each feature stage feeding the next.

    The paper's architecture on a CNN encoder's own stages (``TimmCNNEncoder.stage_modules``):
    stage outputs run through the stages in order; after each stage named in ``layers`` its STN
    predicts ``theta_l`` from the stage output, the output is warped by it and the WARPED map is
    what the next stage reads (and what ``register`` returns for that layer). ``Theta_l`` is the
    composite ``theta_1 o .. o theta_l`` (the transform of that layer's output relative to the
    input frame). The stages before ``trainable_from`` are frozen (training caches their output);
    the others are trained. Encoder stages always run in eval mode (their batch-norm statistics
    stay the ImageNet ones); the STNs' and heads' batch norms follow the module's training mode.

    Args:
        stages: ``(name, module)`` of every encoder stage up to the last of ``layers`` (in order).
        layers: stage names whose (warped) outputs are the features, finest first.
        channels, grids: channels and ``(h, w)`` of each layer's output.
        mode: STN parametrisation (``STN_MODES``).
        trainable_from: index into ``stages`` of the first fine-tuned stage.
    """

    def __init__(self, stages: Sequence[tuple[str, nn.Module]], layers: Sequence[str], channels: Sequence[int],
                 grids: Sequence[Sequence[int]], mode: str = "rotation", trainable_from: int = 0) -> None:
        super().__init__()
        names = [n for n, _ in stages]
        missing = [x for x in layers if x not in names]
        if missing or len(layers) != len(channels) or len(layers) != len(grids) or not layers:
            raise ValueError(f"CascadeRegistration: layers {list(layers)} must be stages of {names}, "
                             "one channel count and grid each")
        if not 0 <= trainable_from <= names.index(layers[0]):
            raise ValueError(f"CascadeRegistration: trainable_from {trainable_from} must be in [0, "
                             f"{names.index(layers[0])}] (the first feature stage)")
        self.names, self.layers = names, [str(x) for x in layers]
        self.stages = nn.ModuleList(m for _, m in stages)
        self.trainable_from = int(trainable_from)
        _add_stns_and_heads(self, channels, grids, mode)
        for i, m in enumerate(self.stages):
            m.requires_grad_(i >= self.trainable_from)
        self.stages.eval()

    def train(self, mode: bool = True) -> CascadeRegistration:
        super().train(mode)
        self.stages.eval()  # frozen batch-norm statistics in the encoder stages
        return self

    def prefix(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen stages (before ``trainable_from``) on the stem output."""
        for stage in self.stages[: self.trainable_from]:
            x = stage(x)
        return x

    def register(self, x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """``prefix`` output -> (warped layer outputs ``[N, C_l, h_l, w_l]``, composite transforms ``Theta_l``)."""
        total = identity_theta(x.shape[0], x.device)
        out, thetas = [], []
        for name, stage in zip(self.names[self.trainable_from :], self.stages[self.trainable_from :], strict=True):
            x = stage(x)
            if name in self.layers:
                theta = self.stn[len(out)](x)
                x = warp(x, theta)
                total = compose(total, theta)
                out.append(x)
                thetas.append(total)
                if len(out) == len(self.layers):
                    break
        return out, thetas

    def loss(self, query: torch.Tensor, support: torch.Tensor, shots: int, prior: float = 0.0) -> torch.Tensor:
        """Symmetric negative-cosine loss (+ ``prior`` x ``mean_transform_penalty``); ``query``
        ``[B, ...]`` and ``support`` ``[B * shots, ...]`` are ``prefix`` outputs (supports grouped)."""
        return registration_loss(self, self.register(query), self.register(support), shots, prior)
