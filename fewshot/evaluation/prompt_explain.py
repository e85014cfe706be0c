"""``fsiad prompts explain`` as a library: what each state and template of a prompt file does to
the WinCLIP score of given images (``winclip_prompts.explain``), formatted for the console, a
CSV and a markdown table."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def explain_images(file: Path, images: Sequence[Path], class_name: str | None, config: Any, *, shots: int = 0,
                   seed: int = 0, normal: Path | None = None, top: int = 3, out: Path | None = None):
    """Explain the scores of ``images`` under the prompt ``file`` (WinCLIP, or WinCLIP+ with
    ``shots`` references drawn from ``normal``); write ``explain.csv`` / ``explain.md`` to ``out``.

    Returns:
        ``(explanations, n_references)``.
    """
    from fsiad.fewshot.errors import OptionError
    from fsiad.fewshot.fileio import OutputLock, atomic_write_text, check_out_not_input
    from fsiad.fewshot.methods.winclip import WinCLIP
    from fsiad.fewshot.methods.winclip_prompts import explain
    from fsiad.fewshot.workflow.references import select_references
    from fsiad.fewshot.workflow.targets import collect_samples
    from fsiad.prompts.loader import load_prompts

    if not class_name:
        raise OptionError("--class-name: give the object's name or category key (e.g. metal_nut)")
    config.class_name, config.prompts = class_name, str(file)
    load_prompts(file)  # an invalid file fails before the images are read
    samples = collect_samples(WinCLIP, list(images))
    if not samples:
        raise OptionError("no images found in IMAGES")
    refs = select_references(WinCLIP, shots, seed, normal) if shots else []
    if out is not None:
        check_out_not_input(out, [*images, normal, file])
    method = WinCLIP(config)
    method.fit(method.prepare(refs) if refs else None)
    result = explain(method, method.prepare(samples), [str(s.path) for s in samples], nearest=top)
    if out is not None:
        with OutputLock(out, "fsiad prompts explain"):
            atomic_write_text(out / "explain.csv", _csv(_explain_rows(result, top)))
            atomic_write_text(out / "explain.md", _explain_md(file, class_name, len(refs), result, top))
    return result, len(refs)


def format_explain(result: list, top: int) -> str:
    """The console text: per image its score, prototype similarities, top deltas, worst window."""
    lines = []
    for e in result:
        lines.append(f"{e.name}: score {e.score:.4f}  cos(normal) {e.sim_normal:+.4f}  cos(anomalous) "
                     f"{e.sim_anomalous:+.4f}")
        lines += [f"  state     {d.delta:+.5f}  {d.kind}: {d.text}"
                  for d in e.top(("normal state", "anomalous state"), top)]
        lines += [f"  template  {d.delta:+.5f}  {d.text}" for d in e.top(("template",), top)]
        win = e.window
        lines.append(f"  most anomalous window: {win['scale']}x{win['scale']} patches at y,x "
                     f"{win['box'][0]},{win['box'][1]} (score {win['score']:.4f}); nearest prompts:")
        lines += [f"    {cos:+.4f}  [{cls}] {text}" for cls, text, cos in e.nearest]
    lines.append("(delta = score with all prompts - score without it; > 0 pushes towards anomalous)")
    return "\n".join(lines)


def _explain_rows(result: list, top: int) -> list[list[Any]]:
    rows: list[list[Any]] = [["image", "kind", "item", "value"]]
    for e in result:
        rows += [[e.name, "score", "", f"{e.score:.6f}"], [e.name, "cos normal prototype", "", f"{e.sim_normal:.6f}"],
                 [e.name, "cos anomalous prototype", "", f"{e.sim_anomalous:.6f}"]]
        rows += [[e.name, f"delta {d.kind}", d.text, f"{d.delta:.6f}"] for d in e.deltas]
        w = e.window
        rows.append([e.name, "window", f"{w['scale']}x{w['scale']} y0,x0,y1,x1=" + ",".join(map(str, w["box"])),
                     f"{w['score']:.6f}"])
        rows += [[e.name, f"nearest {cls} prompt", text, f"{cos:.6f}"] for cls, text, cos in e.nearest]
    return rows


def _csv(rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return buf.getvalue()


def _explain_md(file: Path, class_name: str, shots: int, result: list, top: int) -> str:
    md = [f"# Prompt explanation: {file}", "",
          f"class name {class_name!r}, {shots} reference(s). delta = score with all prompts - score without "
          "that state / template (> 0: it pushes the image towards anomalous).", "",
          "| image | score | cos normal | cos anomalous | top states | top templates | nearest prompts (worst window) |",
          "|---|---|---|---|---|---|---|"]
    for e in result:
        st = "<br>".join(f"{d.delta:+.4f} {d.text}" for d in e.top(("normal state", "anomalous state"), top))
        tp = "<br>".join(f"{d.delta:+.4f} {d.text}" for d in e.top(("template",), top))
        nn = "<br>".join(f"{c:+.3f} [{k}] {t}" for k, t, c in e.nearest)
        md.append(f"| {e.name} | {e.score:.4f} | {e.sim_normal:+.4f} | {e.sim_anomalous:+.4f} | {st} | {tp} | {nn} |")
    return "\n".join(md) + "\n"
