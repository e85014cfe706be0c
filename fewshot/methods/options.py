"""Typed method options: each method declares its ``-o KEY=VALUE`` options once.

A method class lists its options as ``options = (Option(...), ...)``; ``resolve`` checks the
user's ``MethodConfig.options`` against that declaration, coerces CLI strings to the declared
type and returns ``{name: value}`` for every declared option (defaults filled in). Every
problem raises ``OptionError`` naming ``-o KEY`` (unknown key, with the known ones) or
``-o KEY=VALUE`` (wrong type, value outside the allowed range or choices).

Types (``Option.type``):

==========  =====================================================================
``int``     an integer (``5``; ``5.0`` is accepted, ``5.5`` and ``true`` are not)
``float``   a number (``0.1``, ``4``)
``bool``    ``true``/``false`` (also ``1``/``0``, ``yes``/``no``, ``on``/``off``)
``str``     a string (usually with ``choices``)
``ints``    a list of integers: ``[1,3,5]``, ``1,3,5`` or ``5`` -> ``(1, 3, 5)``
``layers``  encoder layers, block indices or names: ``[5,8]``, ``5,8``, ``blocks.2,blocks.4``
``dict``    a JSON object, e.g. ``{"rgb": 1.0, "fpfh": 2.0}`` (``item`` types its values)
==========  =====================================================================

``nullable=True`` accepts ``null`` / ``none`` for "use the built-in choice" (the default of
such options is usually ``None``). This module imports nothing heavy (no torch).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fsiad.fewshot.errors import OptionError

TYPES = ("int", "float", "bool", "str", "ints", "layers", "dict", "any")
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NULL = {"none", "null"}


@dataclass(frozen=True)
class Option:
    """One method option.

    Attributes:
        name: the key of ``-o KEY=VALUE``.
        type: one of ``TYPES`` (see the module docstring).
        default: the value the method uses when the option is not given.
        help: one line shown by ``fsiad methods NAME``.
        choices: allowed values (``str`` options).
        ge, gt, le, lt: numeric bounds (``>=``, ``>``, ``<=``, ``<``); for ``ints`` every item.
        nullable: ``None`` (``null`` / ``none`` on the command line) is allowed.
        item: value type of a ``dict`` option (``float``, ``int``, ...; ``None`` = any JSON).
    """

    name: str
    type: str
    default: Any = None
    help: str = ""
    choices: tuple[Any, ...] | None = None
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    nullable: bool = False
    item: str | None = None

    def __post_init__(self) -> None:
        if self.type not in TYPES:
            raise ValueError(f"option {self.name!r}: unknown type {self.type!r}; use one of {TYPES}")

    # -- description --------------------------------------------------------------------
    def type_text(self) -> str:
        """Short type for listings: ``int``, ``float``, ``list[int]``, ``int | None``, ..."""
        base = {"ints": "list[int]", "layers": "list[int|str]",
                "dict": f"dict[str, {self.item}]" if self.item else "dict"}.get(self.type, self.type)
        return f"{base} | None" if self.nullable else base

    def constraint_text(self) -> str:
        """``one of: a, b`` or ``>= 1, <= 10`` (empty when unconstrained)."""
        if self.choices:
            return "one of: " + ", ".join(_show(c) for c in self.choices)
        bounds = [f"{op} {_show(v)}" for op, v in ((">=", self.ge), (">", self.gt), ("<=", self.le), ("<", self.lt))
                  if v is not None]
        return ", ".join(bounds)

    def expected(self) -> str:
        """What a valid value is, for error messages."""
        what = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
                "ints": "a list of integers (e.g. [1,3] or 1,3)",
                "layers": "a list of layers (e.g. [5,8] or blocks.2,blocks.4)",
                "dict": "a JSON object (e.g. {\"key\": 1.0})", "any": "a value"}[self.type]
        if self.choices:
            what = self.constraint_text()
        elif self.constraint_text():
            what += " " + self.constraint_text()
        return what + (" or none" if self.nullable else "")

    # -- validation ---------------------------------------------------------------------
    def coerce(self, value: Any, method: str = "") -> Any:
        """The typed, checked value of ``value`` (a CLI string or an already parsed JSON value).

        Raises:
            OptionError: ``-o NAME=VALUE: expected ...`` (names the method when given).
        """
        if value is None or (self.nullable and isinstance(value, str) and value.strip().lower() in _NULL):
            if self.nullable or self.default is None:
                return None
            raise self._error(value, method)
        try:
            out = _COERCE[self.type](self, value)
        except (TypeError, ValueError, OverflowError):
            raise self._error(value, method) from None
        if self.choices is not None and out not in self.choices:
            raise self._error(value, method)
        for item in out if self.type == "ints" else [out] if self.type in ("int", "float") else []:
            if not _in_bounds(self, item):
                raise self._error(value, method)
        return out

    def _error(self, value: Any, method: str) -> OptionError:
        where = f" for method '{method}'" if method else ""
        return OptionError(f"-o {self.name}={_show(value)}: expected {self.expected()}{where}")


def _in_bounds(opt: Option, x: float) -> bool:
    return not ((opt.ge is not None and x < opt.ge) or (opt.gt is not None and x <= opt.gt)
                or (opt.le is not None and x > opt.le) or (opt.lt is not None and x >= opt.lt))


def _to_int(opt: Option, v: Any) -> int:
    if isinstance(v, bool):
        raise TypeError
    if isinstance(v, str):
        v = v.strip()
        try:
            return int(v)
        except ValueError:
            v = float(v)
    if isinstance(v, float):
        if not v.is_integer():
            raise ValueError
        return int(v)
    if isinstance(v, int):
        return v
    raise TypeError


def _to_float(opt: Option, v: Any) -> float:
    if isinstance(v, bool):
        raise TypeError
    if isinstance(v, (int, float, str)):
        out = float(v.strip() if isinstance(v, str) else v)
        if math.isnan(out):
            raise ValueError
        return out
    raise TypeError


def _to_bool(opt: Option, v: Any) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in _TRUE | _FALSE:
        return v.strip().lower() in _TRUE
    raise ValueError


def _to_str(opt: Option, v: Any) -> str:
    if isinstance(v, str):
        return v.strip()
    raise TypeError


def _items(v: Any) -> list[Any]:
    if isinstance(v, str):
        s = v.strip()
        if s.startswith("["):
            v = json.loads(s)
        else:
            return [p.strip() for p in s.split(",")]
    if isinstance(v, (list, tuple)):
        return list(v)
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return [v]
    raise TypeError


def _to_ints(opt: Option, v: Any) -> tuple[int, ...]:
    out = tuple(_to_int(opt, x) for x in _items(v))
    if not out:
        raise ValueError
    return out


def _to_layers(opt: Option, v: Any) -> list[int | str]:
    out: list[int | str] = []
    for x in _items(v):
        if isinstance(x, str):
            x = x.strip()
            if not x:
                raise ValueError
            out.append(int(x) if x.lstrip("-").isdigit() else x)
        else:
            out.append(_to_int(opt, x))
    if not out:
        raise ValueError
    return out


def _to_dict(opt: Option, v: Any) -> dict[str, Any]:
    if isinstance(v, str):
        v = json.loads(v)
    if not isinstance(v, Mapping):
        raise TypeError
    item = _COERCE[opt.item] if opt.item else None
    return {str(k): (item(opt, x) if item else x) for k, x in v.items()}


_COERCE = {"int": _to_int, "float": _to_float, "bool": _to_bool, "str": _to_str, "ints": _to_ints,
           "layers": _to_layers, "dict": _to_dict, "any": lambda opt, v: v}


def _show(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(list(value) if isinstance(value, tuple) else value)
    except (TypeError, ValueError):
        return repr(value)


def defaults(options: Iterable[Option]) -> dict[str, Any]:
    """``{name: default}`` of a declaration."""
    return {o.name: o.default for o in options}


def resolve(options: Iterable[Option], given: Mapping[str, Any], method: str = "") -> dict[str, Any]:
    """Check ``given`` against the declaration; returns every option's value (defaults filled in).

    Raises:
        OptionError: an unknown key (``-o KEY``, naming the method and the known keys), or a
            value of the wrong type / outside the allowed range or choices (``-o KEY=VALUE``).
    """
    decl = {o.name: o for o in options}
    out = {name: o.default for name, o in decl.items()}
    for key, value in given.items():
        if key not in decl:
            known = ", ".join(sorted(decl)) or "none (this method takes no -o options)"
            where = f"method '{method}'" if method else "this method"
            raise OptionError(f"-o {key}: unknown option for {where}; known options: {known}")
        out[key] = decl[key].coerce(value, method)
    return out


def untyped(default_values: Mapping[str, Any]) -> tuple[Option, ...]:
    """A declaration of untyped (``any``) options from a ``{name: default}`` dict (legacy methods)."""
    return tuple(Option(k, "any", v) for k, v in default_values.items())


__all__ = ["Option", "TYPES", "defaults", "resolve", "untyped"]
