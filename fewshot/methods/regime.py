"""The ONE shots-versus-regime rule, used by the workflow (``fsiad score/fit``) and by the
evaluation harness (``fsiad eval``).

* zero-shot methods take K >= 0 references;
* few-shot and full-data methods need K >= 1, unless the class sets
  ``zero_shot_capable = True`` (it also runs without references, e.g. ``color_gaussian``);
* transductive methods, and classes with ``max_references = 0`` (e.g. ``maeday``), take none.

Leave-one-out calibration needs one reference more than a fit (``min_references(cls) + 1``).
"""

from __future__ import annotations

from fsiad.fewshot.errors import OptionError


def regime_name(method_cls: type) -> str:
    return "zero-shot-transductive" if getattr(method_cls, "transductive", False) else str(method_cls.regime)


def min_references(method_cls: type) -> int:
    """Fewest references a fit of ``method_cls`` needs: 0 for zero-shot regimes, else 1."""
    if str(method_cls.regime).startswith("zero-shot") or getattr(method_cls, "zero_shot_capable", False):
        return 0
    return 1


def check_shots(method_cls: type, shots: int, default: str | None = None) -> None:
    """Refuse a number of shots the method's regime cannot use.

    Args:
        default: the method's default shot setting, named in the message when given.

    Raises:
        OptionError: negative K, K > 0 for a transductive method, K below ``min_references``.
    """
    name, regime = method_cls.name, regime_name(method_cls)
    hint = " (its default)" if default is not None else ""
    if shots < 0:
        raise OptionError(f"--shots {shots}: must be >= 0")
    if getattr(method_cls, "transductive", False) and shots > 0:
        raise OptionError(f"--shots {shots}: {name} is a {regime} method and takes no normal references; "
                          f"use --shots 0{hint}")
    if getattr(method_cls, "max_references", None) == 0 and shots > 0:
        raise OptionError(f"--shots {shots}: {name} is zero-shot only (it takes no normal references); "
                          f"use --shots 0")
    need = min_references(method_cls)
    if shots < need:
        alt = f"; use --shots {default}{hint} or counts >= {need}" if default is not None else ""
        raise OptionError(f"--shots {shots}: {name} is a {regime} method and needs K >= {need} normal "
                          f"references{alt}")
