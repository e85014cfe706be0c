"""What ``fsiad methods`` shows: the catalogue's methods with regime and summary, one method's
card (regime, encoder, weights here, typed options), and whether a method's encoder weights are
available here. Listing reads only the catalogue (no torch); weight checks load encoder modules.
"""

from __future__ import annotations

from typing import Any

from fsiad.fewshot import registry


def method_rows(check_weights: bool = False) -> list[str]:
    """One line per method (``*`` marks the default), optionally with its weights status."""
    rows = sorted(runtime_entries().values(), key=lambda e: e.name)
    width = max(len(e.name) for e in rows) + 2
    lines = []
    for e in rows:
        mark = "*" if e.name == registry.DEFAULT_METHOD else " "
        line = f"{mark} {e.name:<{width}}{e.regime or '-':<24}{e.summary}"
        if check_weights:
            line += f"  [{weights_line(e)}]"
        lines.append(line.rstrip())
    return lines


def weights_line(entry: registry.Entry) -> str:
    """``ready (ENCODER)``, ``needs weights: ENCODER`` or ``no encoder weights needed``."""
    if not entry.encoders:
        return "no encoder weights needed"
    from fsiad.fewshot.encoders import encoder_status

    for name in entry.encoders:
        try:
            if encoder_status(name)["available"]:
                return f"ready ({name})"
        except ValueError:  # unknown encoder (a plugin's): report it as missing
            continue
    if len(entry.encoders) == 1:
        return f"needs weights: {entry.encoders[0]} (see `fsiad models {entry.encoders[0]}`)"
    return f"needs weights: one of {', '.join(entry.encoders)} (see `fsiad models`)"


def runtime_entries() -> dict[str, registry.Entry]:
    """Catalogue entries plus methods registered at import time by code already loaded (tests)."""
    import sys

    out = registry.entries("method")
    base = sys.modules.get("fsiad.fewshot.methods.base")
    for name, cls in sorted(getattr(base, "_REGISTRY", {}).items()):
        if name not in out:
            doc = (cls.__doc__ or "").strip().splitlines()
            out[name] = registry.Entry("method", name, f"{cls.__module__}:{cls.__qualname__}",
                                       "zero-shot-transductive" if cls.transductive else cls.regime,
                                       doc[0] if doc else "", source="registered")
    return out


def _show(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        value = list(value)
    if isinstance(value, list):
        return "[" + ",".join(map(str, value)) + "]"
    return str(value)


def method_card(name: str) -> str:
    from fsiad.fewshot.methods.base import method_class

    cls = method_class(name)
    out: list[str] = []
    entry = runtime_entries().get(name) or registry.Entry("method", name, f"{cls.__module__}:{cls.__qualname__}")
    doc = (cls.__doc__ or "").strip().splitlines()
    summary = entry.summary or (doc[0] if doc else "")
    regime = "zero-shot-transductive" if cls.transductive else (entry.regime or cls.regime)
    default = " (default method)" if name == registry.DEFAULT_METHOD else ""
    out.append(f"{name}{default}: {summary}")
    out.append(f"  regime:   {regime}")
    enc = " | ".join(entry.encoders) if entry.encoders else "none"
    if len(entry.encoders) > 1:
        enc += " (first with weights here)"
    out.append(f"  encoder:  {enc}")
    out.append(f"  weights:  {weights_line(entry)}")
    out.append(f"  defined:  {entry.target}" + (f" ({entry.source})" if entry.source != "builtin" else ""))
    options = cls.options
    if options is None:
        out.append("\nOptions: not declared (the method checks its -o options itself).")
        return "\n".join(out)
    if not options:
        out.append("\nOptions: none (the method takes no -o options).")
        return "\n".join(out)
    out.append("\nOptions (-o KEY=VALUE):")
    rows = [(o.name, o.type_text(), _show(o.default), o.constraint_text(), o.help) for o in options]
    widths = [max(len(r[i]) for r in [("option", "type", "default", "allowed", ""), *rows]) for i in range(4)]
    head = ("option", "type", "default", "allowed")
    out.append("  " + "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + "  help")
    for r in rows:
        out.append("  " + "  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4])
    return "\n".join(out)
