"""Helpers of the benchmark scripts that feed numbers into BENCHMARKS.md, checked independently."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from bench.bench_decisions import best_f1_within, f1_max, min_fpr_for
from bench.bench_winclip import transformer_flops
from tests.clip_helpers import (  # noqa: F401 - fixtures
    fsiad_home_fixture,
    register_tiny_arch,
    tiny_encoder,
    tiny_fixture,
)


def _brute(scores: np.ndarray, labels: np.ndarray) -> list[tuple[float, float]]:
    """(false-alarm rate, F1) of ``score >= t`` for every distinct t, by explicit counting."""
    out = []
    for t in sorted(set(scores.tolist())):
        tp = fp = fn = 0
        for s, y in zip(scores.tolist(), labels.tolist(), strict=True):
            flagged = s >= t
            tp += flagged and y == 1
            fp += flagged and y == 0
            fn += (not flagged) and y == 1
        out.append((fp / (labels == 0).sum(), 2 * tp / (2 * tp + fp + fn)))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_decision_oracles_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 60)
    scores = np.round(rng.normal(labels * 1.2, 1.0), 1)  # rounded: ties across classes
    pts = _brute(scores, labels)
    assert f1_max(scores, labels) == pytest.approx(max(f for _, f in pts))
    for cap in (0.0, 0.02, 0.1, 0.3):
        within = [f for r, f in pts if r <= cap]
        assert best_f1_within(scores, labels, cap) == pytest.approx(max(within) if within else 0.0)
    best = max(f for _, f in pts)
    assert min_fpr_for(scores, labels, 0.9) == pytest.approx(min(r for r, f in pts if f >= 0.9 * best))


@torch.inference_mode()
def test_transformer_flops_match_torch_flop_counter(tiny):
    """The FLOP count behind the WinCLIP ceiling equals torch's own count of the forwards."""
    v = tiny.visual
    blocks = v.transformer.resblocks
    width, hidden, layers = int(v.transformer.width), int(blocks[0].mlp.c_fc.out_features), len(blocks)
    proj = 2 * width * int(v.proj.shape[1])
    for count, n, pooled in ((3, 5, True), (2, 10, True), (1, 226, False)):
        seq = torch.randn(count, n, width)
        # the math backend runs attention as counted batched products (the CPU flash kernel is not counted)
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as fc:
            if pooled:
                tiny._encode_pooled(seq)
            else:
                tiny._encode_sequences(seq)
        lin, att = transformer_flops([(count, n, pooled and tiny._cls_last)], width, hidden, layers)
        assert fc.get_total_flops() == lin + att + count * proj
