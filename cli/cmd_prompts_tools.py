"""``fsiad prompts compare`` and ``fsiad prompts explain``: measure what a prompt file does.

Parsing and printing only: the work is ``fsiad.fewshot.evaluation.prompts.compare_prompts`` and
``fsiad.fewshot.evaluation.prompt_explain.explain_images``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from fsiad.cli.options import method_config_from, method_options
from fsiad.prompts.loader import default_prompts_path


def _prompt_path(path: Path) -> Path:
    """``default`` (when no such file exists) names the packaged ensemble."""
    return default_prompts_path() if str(path) == "default" and not path.exists() else path


def _encoder_options(f: Callable) -> Callable:
    """winclip's encoder options (the prompt files are the commands' own arguments) and the
    reference draw for WinCLIP+."""
    opts = [
        click.option("--normal", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Folder of normal images for --shots (default: the category's train/good)."),
        click.option("--shots", "-k", type=click.IntRange(min=0), default=0, show_default=True,
                     help="K normal references: 0 = zero-shot WinCLIP, K > 0 = WinCLIP+."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of the reference draw."),
    ]
    f = method_options(f, exclude=("prompts_file",))
    for opt in reversed(opts):
        f = opt(f)
    return f


@click.command("compare")
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
                        method_config=method_config_from(kw))
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


@click.command("explain")
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
    from fsiad.fewshot.evaluation.prompt_explain import explain_images, format_explain

    shots, seed, normal, class_name = kw.pop("shots"), kw.pop("seed"), kw.pop("normal"), kw.pop("class_name")
    result, _ = explain_images(_prompt_path(file), images, class_name, method_config_from(kw), shots=shots, seed=seed,
                               normal=normal, top=top, out=out)
    click.echo(format_explain(result, top))
    if out is not None:
        click.echo(f"written: {out / 'explain.csv'}, {out / 'explain.md'}")
