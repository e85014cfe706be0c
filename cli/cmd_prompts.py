"""``fsiad prompts``: show, validate, create, compare and explain WinCLIP prompt ensembles.

The commands parse, call the library (``fsiad.prompts``, ``fsiad.fewshot.evaluation.prompts``,
``fsiad.fewshot.methods.winclip_prompts``) and print; errors go through the one translator.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from fsiad.prompts.loader import check, default_prompts_path, load_prompts


@click.group("prompts")
def prompts_group() -> None:
    """Prompt ensembles of the CLIP-based methods (normal/anomalous states x templates).

    \b
    The tuning loop:
      fsiad prompts init my/ --category metal_nut --extra-anomalous "bent {}"
      (edit my/prompts.yaml)
      fsiad prompts compare default my/prompts.yaml --targets data/mvtec/metal_nut --out runs/cmp
      fsiad prompts explain my/prompts.yaml --class-name metal_nut img1.png img2.png
    """


def _prompt_path(path: Path) -> Path:
    """``default`` (when no such file exists) names the packaged ensemble."""
    return default_prompts_path() if str(path) == "default" and not path.exists() else path


def _echo_warnings(warnings: list[str]) -> None:
    for w in warnings:
        click.echo(f"warning: {w}", err=True)


@prompts_group.command("show")
@click.option("--category", "-c", default="object", show_default=True,
              help="Category / class name (per-category aliases and extra states apply).")
@click.option("--prompts", "prompts_file", type=click.Path(dir_okay=False), default=None,
              help="Prompt file (YAML); default: the packaged ensemble.")
def show(category: str, prompts_file: str | None) -> None:
    """Print the expanded prompts of CATEGORY with counts (repeated entries reported)."""
    ps = load_prompts(prompts_file)
    cp = ps.expand(category)
    click.echo(f"# file: {ps.source}")
    click.echo(f"# category: {category} -> class name {cp.class_name!r}")
    for label, items in (("normal", cp.normal), ("anomalous", cp.anomalous)):
        repeats = len(items) - len(set(items))
        click.echo(f"## {label}: {len(items)} prompts" + (f" ({repeats} repeated)" if repeats else ""))
        for text in items:
            click.echo(f"  {text}")
    click.echo(f"# total: {len(cp.normal)} normal + {len(cp.anomalous)} anomalous = "
               f"{len(cp.normal) + len(cp.anomalous)} prompts")
    if ps.duplicates:
        click.echo(f"# {len(ps.duplicates)} repeated entr{'y' if len(ps.duplicates) == 1 else 'ies'} kept "
                   "(each repeat counts again in the mean):")
        for w in ps.duplicates:
            click.echo(f"#   {w}")


@prompts_group.command("validate")
@click.argument("file", type=click.Path(dir_okay=False))
def validate_cmd(file: str) -> None:
    """Check FILE; print one ``file:line: message`` per problem (exit 1 if any error).

    Repeated entries are warnings: they are kept (published ensembles repeat templates) and
    do not fail the check.
    """
    errors, warnings = check(file)
    for err in errors:
        click.echo(err, err=True)
    _echo_warnings(warnings)
    if errors:
        raise SystemExit(1)
    click.echo(f"{file}: OK" + (f" ({len(warnings)} repeated entr{'y' if len(warnings) == 1 else 'ies'} kept)"
                                if warnings else ""))


@prompts_group.command("init")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--force", is_flag=True, help="Overwrite an existing prompts.yaml with the default ensemble.")
@click.option("--category", default=None,
              help="Add / update this category's override (in the existing prompts.yaml if there is one).")
@click.option("--name", default=None, help="With --category: the words used for the object (e.g. 'metal nut').")
@click.option("--extra-normal", multiple=True, metavar="STATE",
              help="With --category: a normal state to add, with one {} (e.g. '{} without scratches'); repeatable.")
@click.option("--extra-anomalous", multiple=True, metavar="STATE",
              help="With --category: an anomalous state to add, with one {} (e.g. 'bent {}'); repeatable.")
def init(directory: str, force: bool, category: str | None, name: str | None, extra_normal: tuple[str, ...],
         extra_anomalous: tuple[str, ...]) -> None:
    """Write an editable copy of the default ensemble to DIRECTORY/prompts.yaml.

    With --category, the category's override (--name, --extra-normal, --extra-anomalous) is
    written into DIRECTORY/prompts.yaml (created from the default if absent, edited in place
    otherwise, the rest of the file untouched); the result is validated before it is written.
    """
    from fsiad.fewshot.errors import OptionError
    from fsiad.fewshot.fileio import atomic_write_text
    from fsiad.prompts.edit import set_category

    dst = Path(directory) / "prompts.yaml"
    if category is None and (name is not None or extra_normal or extra_anomalous):
        raise OptionError("--name / --extra-normal / --extra-anomalous need --category CATEGORY")
    exists = dst.exists()
    if exists and category is None and not force:
        raise OptionError(f"{dst}: already exists (use --force to overwrite, or --category to edit an override)")
    text = default_prompts_path().read_text(encoding="utf-8")
    if exists and not force:
        text = dst.read_text(encoding="utf-8")
    changes: list[str] = []
    if category is not None:
        text, changes = set_category(text, category, name=name, extra_normal=extra_normal,
                                     extra_anomalous=extra_anomalous, label=str(dst))
    if exists and not force and not changes:
        click.echo(f"{dst}: nothing to change for category {category!r}")
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(dst, text)
    verb = "updated" if exists and not force else "wrote"
    click.echo(f"{verb} {dst}" + (f" (category {category}: {'; '.join(changes)})" if changes else ""))
    if category is not None:
        cp = load_prompts(dst).expand(category)
        click.echo(f"{category}: class name {cp.class_name!r}, {len(cp.normal)} normal + {len(cp.anomalous)} "
                   f"anomalous prompts")
    click.echo(f"next: fsiad prompts compare default {dst} --targets <labelled images> --out DIR")


# -- compare / explain -----------------------------------------------------------------------------
def _encoder_options(f: Callable) -> Callable:
    from fsiad.fewshot.device import DEVICE_HELP, PRECISIONS

    opts = [
        click.option("--class-name", default=None,
                     help="Object name / category key of the prompts (default: the category's name, else 'object')."),
        click.option("--encoder", default=None, help="CLIP encoder (default: winclip's). See `fsiad models`."),
        click.option("--weights", default=None, type=click.Path(dir_okay=False), help="Explicit encoder weight file."),
        click.option("--device", default="auto", show_default=True, help=DEVICE_HELP),
        click.option("--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
                     help="Encoder autocast precision."),
        click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True,
                     help="Images per encoder forward."),
        click.option("-o", "--option", "options", multiple=True, metavar="KEY=VALUE",
                     help="winclip option (see `fsiad methods winclip`); repeatable."),
        click.option("--allow-random", is_flag=True, hidden=True, help="Random-init encoder (tests, timing)."),
        click.option("--normal", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Folder of normal images for --shots (default: the category's train/good)."),
        click.option("--shots", "-k", type=click.IntRange(min=0), default=0, show_default=True,
                     help="K normal references: 0 = zero-shot WinCLIP, K > 0 = WinCLIP+."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of the reference draw."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _method_config(kw: dict[str, Any]):
    from fsiad.cli.options import parse_options
    from fsiad.fewshot.methods.base import MethodConfig

    return MethodConfig(encoder=kw.pop("encoder"), weights=kw.pop("weights"), device=kw.pop("device"),
                        precision=kw.pop("precision"), batch_size=kw.pop("batch_size"),
                        allow_random=kw.pop("allow_random"), options=parse_options(kw.pop("options")))


@prompts_group.command("compare")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--targets", "-t", "targets", multiple=True, required=True, type=click.Path(path_type=Path),
              help="An MVTec-layout category folder (test/good, test/<defect>, ground_truth/), or images / "
                   "folders labelled by --labels; repeatable.")
@click.option("--labels", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="CSV with columns path,label (0/1 or normal/anomalous) for image targets.")
@click.option("--category", default=None, help="Category of an MVTec-layout root holding several.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder: compare.csv, scores.csv, report.md, report.html.")
@_encoder_options
def compare(files: tuple[Path, ...], **kw: Any) -> None:
    """Score the same labelled images with each prompt FILE and compare the metrics.

    FILE ``default`` is the packaged ensemble.

    Image and window embeddings (and WinCLIP+'s memory) are computed once; each file adds
    its text embeddings (cached) and the scoring. The numbers equal `fsiad eval` per file.
    """
    from fsiad.fewshot.evaluation.prompts import CompareConfig, compare_prompts, format_table

    cfg = CompareConfig(prompt_files=[_prompt_path(f) for f in files], targets=list(kw.pop("targets")), out=kw.pop("out"),
                        labels=kw.pop("labels"), category=kw.pop("category"), normal=kw.pop("normal"),
                        shots=kw.pop("shots"), seed=kw.pop("seed"), class_name=kw.pop("class_name"),
                        method_config=_method_config(kw))
    res = compare_prompts(cfg, say=lambda line: click.echo(line, err=True))
    for row in res.rows:
        if row["duplicates"]:
            click.echo(f"warning: {row['path']}: {row['duplicates']} repeated entries kept "
                       "(see fsiad prompts validate)", err=True)
    m = res.meta
    click.echo(f"{m['regime']}, class name {m['class_name']!r}, {m['n_images']} images "
               f"({m['n_anomalous']} anomalous), {m['shots']} reference(s)")
    click.echo(format_table(res))
    click.echo(f"(* best per column)  report: {cfg.out / 'report.html'}  table: {cfg.out / 'compare.csv'}")


@prompts_group.command("explain")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--top", type=click.IntRange(min=1), default=3, show_default=True,
              help="States / templates / nearest prompts listed per image.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write explain.csv and explain.md here.")
@_encoder_options
def explain_cmd(file: Path, images: tuple[Path, ...], top: int, out: Path | None, **kw: Any) -> None:
    """Per image: what the prompts of FILE do to its score.

    Similarity to the normal / anomalous prototypes, the states and templates that move the
    score most (score with all prompts minus score without that state / template: > 0 pushes
    towards anomalous), and the prompts nearest to the most anomalous window.
    """
    from fsiad.fewshot.errors import OptionError
    from fsiad.fewshot.fileio import OutputLock, atomic_write_text, check_out_not_input
    from fsiad.fewshot.methods.winclip import WinCLIP
    from fsiad.fewshot.methods.winclip_prompts import explain
    from fsiad.fewshot.workflow.references import select_references
    from fsiad.fewshot.workflow.targets import collect_samples

    file = _prompt_path(file)
    class_name = kw.pop("class_name")
    if not class_name:
        raise OptionError("--class-name: give the object's name or category key (e.g. metal_nut)")
    shots, seed, normal = kw.pop("shots"), kw.pop("seed"), kw.pop("normal")
    mc = _method_config(kw)
    mc.class_name, mc.prompts = class_name, str(file)
    load_prompts(file)  # an invalid file fails before the images are read
    samples = collect_samples(WinCLIP, list(images))
    if not samples:
        raise OptionError("no images found in IMAGES")
    refs = select_references(WinCLIP, shots, seed, normal) if shots else []
    if out is not None:
        check_out_not_input(out, [*images, normal, file])
    method = WinCLIP(mc)
    method.fit(method.prepare(refs) if refs else None)
    names = [str(s.path) for s in samples]
    result = explain(method, method.prepare(samples), names, nearest=top)
    rows = _explain_rows(result, top)
    for e in result:
        click.echo(f"{e.name}: score {e.score:.4f}  cos(normal) {e.sim_normal:+.4f}  cos(anomalous) "
                   f"{e.sim_anomalous:+.4f}")
        for d in e.top(("normal state", "anomalous state"), top):
            click.echo(f"  state     {d.delta:+.5f}  {d.kind}: {d.text}")
        for d in e.top(("template",), top):
            click.echo(f"  template  {d.delta:+.5f}  {d.text}")
        win = e.window
        click.echo(f"  most anomalous window: {win['scale']}x{win['scale']} patches at y,x "
                   f"{win['box'][0]},{win['box'][1]} (score {win['score']:.4f}); nearest prompts:")
        for cls, text, cos in e.nearest:
            click.echo(f"    {cos:+.4f}  [{cls}] {text}")
    click.echo("(delta = score with all prompts - score without it; > 0 pushes towards anomalous)")
    if out is not None:
        with OutputLock(out, "fsiad prompts explain"):
            atomic_write_text(out / "explain.csv", _csv(rows))
            atomic_write_text(out / "explain.md", _explain_md(file, class_name, len(refs), result, top))
        click.echo(f"written: {out / 'explain.csv'}, {out / 'explain.md'}")


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


commands = [prompts_group]
