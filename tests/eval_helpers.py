"""Fast methods of every regime for ``fsiad eval`` tests: the colour baseline under other regimes.

``register_eval_methods(monkeypatch)`` adds them to the method registry for one test (removed
afterwards, so ``fsiad methods`` elsewhere never lists them).
"""

from __future__ import annotations

from fsiad.fewshot.methods import base
from fsiad.fewshot.methods.color_gaussian import ColorGaussian


class AnyShotColor(ColorGaussian):
    """Few-shot colour baseline that declares its zero-shot mode (K = 0 allowed), as
    ``color_gaussian`` itself does."""

    name = "t_color_any"
    zero_shot_capable = True


class FewShotColor(ColorGaussian):
    """The colour baseline as a strict few-shot method (K = 0 refused)."""

    name = "t_color_few"
    zero_shot_capable = False


class FullDataColor(ColorGaussian):
    name = "t_color_full"
    regime = "full-data"
    zero_shot_capable = False


class ZeroShotColor(ColorGaussian):
    name = "t_color_zero"
    regime = "zero-shot"


class TransductiveColor(ColorGaussian):
    name = "t_color_transductive"
    regime = "zero-shot-transductive"
    transductive = True


EVAL_METHODS = (AnyShotColor, FewShotColor, FullDataColor, ZeroShotColor, TransductiveColor)


def register_eval_methods(monkeypatch) -> None:
    for cls in EVAL_METHODS:
        monkeypatch.setitem(base._REGISTRY, cls.name, cls)
