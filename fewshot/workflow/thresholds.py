"""Decision thresholds: user-given, or calibrated on the normal references by leave-one-out.

Calibration rule (documented in ``run.json`` and the report): for each of the K reference
images, fit the method on the other K-1 references, score the held-out one; the K
leave-one-out (LOO) scores are summarised by ``max`` (default) or ``mean+<k>std``. A held-out
normal is scored by a model with one reference fewer than the final K-shot model, so LOO
scores are biased upwards: the threshold errs on the side of fewer false alarms.
LOO needs K >= 2 for methods that require references (K >= 1 for zero-shot methods) and is
unavailable for transductive methods (they score a set, not one image); there, and for
zero-shot runs without references, the run gives scores only unless ``--threshold`` is set.
"""

from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from fsiad.fewshot.data.base import Sample
from fsiad.fewshot.methods.base import AnomalyMethod

_MEAN_STD = re.compile(r"^mean\+(\d+(?:\.\d+)?)std$")


@dataclass(frozen=True)
class ThresholdRule:
    """How LOO scores become a threshold: ``max`` or ``mean+<k>std`` (population std)."""

    kind: str = "max"
    k: float = 0.0

    @staticmethod
    def parse(text: str) -> ThresholdRule:
        """``"max"`` or ``"mean+3std"`` -> rule; anything else raises ``ValueError``."""
        text = text.strip().lower().replace(" ", "")
        if text == "max":
            return ThresholdRule("max")
        m = _MEAN_STD.match(text)
        if m:
            return ThresholdRule("mean_std", float(m.group(1)))
        raise ValueError(f"unknown threshold rule {text!r}; use 'max' or 'mean+<k>std' (e.g. mean+3std)")

    def __str__(self) -> str:
        return "max" if self.kind == "max" else f"mean+{self.k:g}std"

    def apply(self, scores: Sequence[float]) -> float:
        """Threshold from LOO ``scores`` (at least one)."""
        s = np.asarray(scores, dtype=np.float64)
        if s.size == 0:
            raise ValueError("no leave-one-out scores to calibrate on")
        if self.kind == "max":
            return float(s.max())
        return float(s.mean() + self.k * s.std())


@dataclass
class Calibration:
    """The threshold of a run and how it was obtained.

    Attributes:
        threshold: image-score threshold (score >= threshold -> anomalous); ``None`` = scores only.
        source: ``user`` | ``loo`` | ``none``.
        rule: ``str(ThresholdRule)`` for ``loo``, else ``""``.
        description: one human-readable sentence for the report and the console.
        loo_scores: leave-one-out scores of the references (``loo`` only), in reference order.
    """

    threshold: float | None
    source: str
    rule: str = ""
    description: str = ""
    loo_scores: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Calibration:
        return Calibration(**d)


def user_threshold(value: float) -> Calibration:
    """A threshold given by the user."""
    if not math.isfinite(value):
        raise ValueError(f"threshold must be a finite number, got {value}")
    return Calibration(float(value), "user", "", f"user-given threshold {value:g}")


def loo_unavailable_reason(method: AnomalyMethod, n_refs: int) -> str | None:
    """Why LOO calibration cannot run (``None`` when it can)."""
    if method.transductive:
        return f"{method.name} is transductive (it scores a set of images, not one held-out image)"
    from fsiad.fewshot.workflow.references import min_references

    min_refs = min_references(type(method)) + 1  # one held out, the rest must make a fit
    if n_refs < min_refs:
        return f"leave-one-out needs at least {min_refs} reference image(s) for {method.name}, got {n_refs}"
    return None


def calibrate_loo(method: AnomalyMethod, refs: Sequence[Sample], rule: ThresholdRule, seed: int = 0) -> Calibration:
    """Leave-one-out threshold on ``refs``; ``method`` is left fitted on a subset (refit it).

    Wrap the call in ``feature_cache(method)`` to encode each reference once.
    """
    reason = loo_unavailable_reason(method, len(refs))
    if reason:
        return no_threshold(reason)
    scores = []
    for i in range(len(refs)):
        rest = [r for j, r in enumerate(refs) if j != i]
        torch.manual_seed(seed)
        method.fit(method.prepare(rest) if rest else None)
        scores.append(float(method.predict(method.prepare([refs[i]])).image_scores[0]))
    value = rule.apply(scores)
    desc = (f"threshold {value:.6g} = {rule} of {len(scores)} leave-one-out scores of the normal references "
            f"(each scored by a model fitted on the other {len(refs) - 1})")
    return Calibration(value, "loo", str(rule), desc, scores)


def no_threshold(reason: str) -> Calibration:
    """Scores only, with the reason stated."""
    return Calibration(None, "none", "", f"no threshold: {reason}; scores only (give --threshold to decide)")


@contextlib.contextmanager
def feature_cache(method: AnomalyMethod, max_bytes: int = 1 << 30) -> Iterator[None]:
    """Memoise the patch features of the method's encoders (attributes) inside the block.

    Features are cached per image content, so the K leave-one-out fits and the final fit
    encode each reference once; the cache is dropped on exit (targets are never cached).
    """
    encoders = method.encoders()
    for enc in encoders:
        enc.enable_cache(max_bytes)
    try:
        yield
    finally:
        for enc in encoders:
            enc.disable_cache()
