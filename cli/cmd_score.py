"""``fsiad score`` / ``fsiad fit`` / ``fsiad predict``: inspect images with K normal references.

``score`` = ``fit`` + ``predict`` in one go; a model folder written by ``fit`` lets ``predict``
reproduce ``score``'s numbers exactly on new images.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import click
from fsiad.cli.options import method_config_from, method_options
from fsiad.fewshot.data.base import DatasetError, Sample
from fsiad.fewshot.workflow.demo import DEFAULT_DEMO_SIZE, DEMO_TARGET_SEED, DEMOS

DEFAULT_METHOD = "knn"


def _reference_options(f: Callable) -> Callable:
    opts = [
        click.option("--shots", "-k", type=click.IntRange(min=0), required=True,
                     help="Number K of normal reference images (0 = zero-shot methods only)."),
        click.option("--seed", type=int, default=0, show_default=True, help="Seed of the reference draw."),
        click.option("--method", "-m", default=DEFAULT_METHOD, show_default=True, help="Method name."),
        click.option("--normal", type=click.Path(path_type=Path), default=None,
                     help="Folder of normal images (searched recursively) to draw the K references from."),
        click.option("--demo", type=click.Choice(DEMOS), default=None,
                     help="Use the embedded demo set (references from its nominal pool, targets a seeded mix)."),
        click.option("--threshold", type=float, default=None,
                     help="Decision threshold on the image score (default: calibrated on the references)."),
        click.option("--threshold-rule", default="max", show_default=True,
                     help="Rule over the leave-one-out scores of the references: 'max' or 'mean+<k>std'."),
    ]
    f = method_options(f)
    for opt in reversed(opts):
        f = opt(f)
    return f


def _target_options(f: Callable) -> Callable:
    opts = [
        click.option("--labels", type=click.Path(path_type=Path), default=None,
                     help="CSV with columns path,label (0/1 or normal/anomalous) for AUROC / AP / confusion."),
        click.option("--demo-size", type=click.IntRange(min=2), default=DEFAULT_DEMO_SIZE, show_default=True,
                     help="Number of demo targets (half nominal, half local/global defects)."),
        click.option("--chunk-size", type=click.IntRange(min=1), default=None,
                     help="Targets loaded at a time [score: 32; predict: the model's]."),
        click.option("--quiet", "-q", is_flag=True, help="No progress bars."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


@contextlib.contextmanager
def _clean_errors() -> Iterator[None]:
    """Turn expected input problems into one-line click errors."""
    from fsiad.fewshot.workflow.model import ModelError

    try:
        yield
    except (DatasetError, ModelError, FileNotFoundError) as e:
        raise click.ClickException(str(e)) from None
    except ValueError as e:  # bad method options / settings, raised with a one-line message
        raise click.ClickException(str(e).splitlines()[0] if str(e) else type(e).__name__) from None
    except KeyError as e:  # unknown method / encoder names
        raise click.ClickException(str(e.args[0]) if e.args else str(e)) from None


def _references(shots: int, seed: int, normal: Path | None, demo_cat: Any, method_name: str) -> list[Sample]:
    from fsiad.fewshot.data.sampling import sample_shots
    from fsiad.fewshot.methods import method_class
    from fsiad.fewshot.workflow.targets import collect_images

    cls = method_class(method_name)
    regime = cls.regime
    if cls.transductive and shots > 0:
        raise click.UsageError(f"--shots {shots}: {method_name} is {regime} (it uses no references); use --shots 0")
    if shots == 0:
        if not regime.startswith("zero-shot"):
            raise click.UsageError(f"--shots 0: {method_name} is a {regime} method and needs K >= 1 references")
        return []
    if demo_cat is not None:
        if normal is not None:
            raise click.UsageError("--normal and --demo are exclusive (the demo brings its own normal images)")
        pool = list(demo_cat.train)
    else:
        if normal is None:
            raise click.UsageError(f"--shots {shots} needs --normal DIR (a folder of normal images)")
        if not normal.is_dir():
            raise click.UsageError(f"--normal {normal}: not a folder")
        pool = [Sample(path=p, label=0) for p in collect_images([normal])]
        if not pool:
            raise click.UsageError(f"--normal {normal}: no images found (extensions .png .jpg .bmp .tif ...)")
    if shots > len(pool):
        raise click.UsageError(f"--shots {shots}: only {len(pool)} normal images available")
    return list(sample_shots(pool, shots, seed)) if shots < len(pool) else pool


def _targets(targets: tuple[Path, ...], labels: Path | None, demo_cat: Any, demo_size: int) -> list[Sample]:
    from fsiad.fewshot.workflow.demo import demo_targets
    from fsiad.fewshot.workflow.targets import collect_images, make_samples, read_labels_csv

    if demo_cat is not None:
        if targets:
            raise click.UsageError("--demo picks its own targets; do not pass TARGET paths with it")
        return demo_targets(demo_cat, demo_size)
    if not targets:
        raise click.UsageError("no TARGET given: pass image files or folders to score")
    paths = collect_images(targets)
    if not paths:
        raise click.UsageError(f"no images found in {', '.join(map(str, targets))}")
    return make_samples(paths, read_labels_csv(labels) if labels else None)


def _prepare_out(out: Path) -> None:
    """Create ``out`` and drop per-image outputs of an earlier run there."""
    out.mkdir(parents=True, exist_ok=True)
    for sub, ext in (("maps", "*.npy"), ("overlays", "*.png")):
        for old in (out / sub).glob(ext) if (out / sub).is_dir() else []:
            old.unlink()


def _rule(text: str):
    from fsiad.fewshot.workflow.thresholds import ThresholdRule

    try:
        return ThresholdRule.parse(text)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--threshold-rule") from None


def _fit(shots: int, seed: int, method: str, normal: Path | None, demo: str | None, threshold: float | None,
         threshold_rule: str, kwargs: dict[str, Any], demo_cat: Any = None):
    """Shared by ``score`` and ``fit``: references, method, calibration, final fit."""
    from fsiad.fewshot.methods import create_method
    from fsiad.fewshot.workflow.runner import fit_references

    rule = _rule(threshold_rule)
    cfg = method_config_from(kwargs)
    if demo_cat is not None and cfg.class_name == "object":
        cfg.class_name = demo_cat.name
    refs = _references(shots, seed, normal, demo_cat, method)
    click.echo(f"loading {method} ...", err=True)
    t0 = time.perf_counter()
    m = create_method(method, cfg)
    load_s = time.perf_counter() - t0
    click.echo(f"fitting on {len(refs)} reference(s) (seed {seed}) and calibrating the threshold ...", err=True)
    calibration, timings = fit_references(m, refs, seed, rule, threshold)
    info = {"shots": shots, "seed": seed, "normal": str(normal) if normal else None, "demo": demo,
            "threshold_rule": str(rule), "references": [str(r.path) for r in refs],
            "timings": {"load_s": round(load_s, 3), **timings}}
    return m, cfg, refs, calibration, info


def _finish(m: Any, run: Any, out: Path, calibration: Any, settings: dict, refs: list[Sample], quiet: bool,
            t0: float) -> None:
    from fsiad.fewshot.workflow.runner import write_outputs

    record = write_outputs(m, run, out, calibration, settings, refs, progress=not quiet, t_start=t0)
    click.echo(f"scored {record['n_scored']} image(s) with {m.name}, {len(refs)} reference(s); "
               f"{record['n_errors']} not scored" + (f" (see {out / 'errors.csv'})" if record["n_errors"] else ""))
    click.echo(calibration.description)
    metrics = record.get("metrics") or {}
    if "image_auroc" in metrics:
        click.echo(f"image AUROC over the {metrics['n_labelled']} scored labelled images: "
                   f"{metrics['image_auroc']:.4f} (AP {metrics['image_ap']:.4f})")
    if "true_positives" in metrics:
        click.echo(f"at the threshold: TP {metrics['true_positives']}, FP {metrics['false_positives']}, "
                   f"TN {metrics['true_negatives']}, FN {metrics['false_negatives']}")
    click.echo(f"report: {out / 'report.html'}  (scores: {out / 'scores.csv'}; {record['wall_s']:.0f} s)")
    if record["n_scored"] == 0:
        raise click.ClickException(f"none of the {record['n_errors']} target(s) could be read; see {out / 'errors.csv'}")


def _warn_overlap(refs: list[Sample], samples: list[Sample]) -> int:
    """Warn when targets are also references (they score near zero); return how many."""
    ref_paths = {r.path.resolve() for r in refs}
    n = sum(s.path.resolve() in ref_paths for s in samples)
    if n:
        click.echo(f"warning: {n} target(s) are also reference images (their scores are not a fair test)", err=True)
    return n


@click.command("score")
@click.argument("targets", nargs=-1, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@_reference_options
@_target_options
def score(targets: tuple[Path, ...], out: Path, shots: int, seed: int, method: str, normal: Path | None,
          demo: str | None, threshold: float | None, threshold_rule: str, labels: Path | None, demo_size: int,
          chunk_size: int | None, quiet: bool, **kwargs: Any) -> None:
    """Score TARGET images (files or folders) against K normal references; write OUT/report.html.

    OUT gets scores.csv (path, name, score, decision, label), maps/<name>.npy, overlays/<name>.png,
    report.html (self-contained), run.json, and errors.csv listing unreadable targets. Without
    --threshold, the threshold is the --threshold-rule (default max) of the leave-one-out scores
    of the K references (each scored by the method fitted on the other K-1); decision: anomalous
    when score >= threshold.

    \b
    Examples:
      fsiad score --shots 4 --demo textile --out runs/demo
      fsiad score --shots 4 --normal good/ --out runs/a new_images/
    """
    from fsiad.fewshot.workflow.demo import load_demo
    from fsiad.fewshot.workflow.runner import score_targets

    t0 = time.perf_counter()
    with _clean_errors():
        demo_cat = load_demo(demo) if demo else None
        samples = _targets(targets, labels, demo_cat, demo_size)
        chunk = chunk_size or 32
        m, cfg, refs, calibration, info = _fit(shots, seed, method, normal, demo, threshold, threshold_rule,
                                               kwargs, demo_cat)
        _prepare_out(out)
        n_overlap = _warn_overlap(refs, samples)
        run = score_targets(m, samples, out, chunk_size=chunk, seed=seed, progress=not quiet)
        settings = {"command": "score", "argv": sys.argv[1:], "method": method, **info,
                    "targets_also_references": n_overlap,
                    "targets": [str(t) for t in targets], "n_targets": len(samples), "labels": str(labels) if labels else None,
                    "demo_size": demo_size if demo else None, "demo_target_seed": DEMO_TARGET_SEED if demo else None,
                    "chunk_size": chunk, "config": asdict(cfg)}
        _finish(m, run, out, calibration, settings, refs, quiet, t0)


@click.command("fit")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Model folder to write.")
@_reference_options
@click.option("--chunk-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Targets loaded at a time by `fsiad predict` with this model.")
def fit(out: Path, shots: int, seed: int, method: str, normal: Path | None, demo: str | None,
        threshold: float | None, threshold_rule: str, chunk_size: int, **kwargs: Any) -> None:
    """Fit a method on K normal references and save a self-describing model folder OUT."""
    from fsiad.fewshot.workflow.demo import load_demo
    from fsiad.fewshot.workflow.model import save_model

    with _clean_errors():
        demo_cat = load_demo(demo) if demo else None
        m, cfg, refs, calibration, info = _fit(shots, seed, method, normal, demo, threshold, threshold_rule,
                                               kwargs, demo_cat)
        save_model(m, out, calibration, {**info, "chunk_size": chunk_size, "config": asdict(cfg)})
    enc = m.describe()
    click.echo(f"model saved to {out} ({m.name}, {len(refs)} reference(s), encoder "
               f"{json.dumps(enc.get('encoder'), default=str)[:120]})")
    click.echo(calibration.description)


@click.command("predict")
@click.argument("targets", nargs=-1, type=click.Path(path_type=Path))
@click.option("--model", "model_dir", required=True, type=click.Path(path_type=Path),
              help="Model folder written by `fsiad fit`.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@click.option("--threshold", type=float, default=None, help="Override the model's threshold.")
@click.option("--demo", type=click.Choice(DEMOS), default=None, help="Score the embedded demo's target mix.")
@click.option("--device", default=None, help="Override the model's device (cpu, cuda[:i]).")
@click.option("--batch-size", type=int, default=None, help="Override the model's batch size.")
@click.option("--weights", type=click.Path(dir_okay=False), default=None,
              help="Encoder weight file, if it moved (its checksum must match the model's).")
@_target_options
def predict(targets: tuple[Path, ...], model_dir: Path, out: Path, threshold: float | None, demo: str | None,
            device: str | None, batch_size: int | None, weights: str | None, labels: Path | None,
            demo_size: int, chunk_size: int | None, quiet: bool) -> None:
    """Score TARGET images with a model folder from `fsiad fit` (same outputs as `fsiad score`)."""
    from fsiad.fewshot.workflow.demo import load_demo
    from fsiad.fewshot.workflow.model import load_model
    from fsiad.fewshot.workflow.runner import score_targets
    from fsiad.fewshot.workflow.thresholds import Calibration, user_threshold

    t0 = time.perf_counter()
    with _clean_errors():
        demo_cat = load_demo(demo) if demo else None
        samples = _targets(targets, labels, demo_cat, demo_size)
        overrides = {k: v for k, v in {"device": device, "batch_size": batch_size, "weights": weights}.items()
                     if v is not None}
        m, meta = load_model(model_dir, **overrides)
        load_s = time.perf_counter() - t0
        calibration = user_threshold(threshold) if threshold is not None else Calibration.from_dict(meta["threshold"])
        chunk = chunk_size or int(meta.get("chunk_size", 32))
        refs = [Sample(path=Path(p), label=0) for p in meta.get("references", [])]
        _prepare_out(out)
        n_overlap = _warn_overlap(refs, samples)
        run = score_targets(m, samples, out, chunk_size=chunk, seed=int(meta.get("seed", 0)), progress=not quiet)
        settings = {"command": "predict", "argv": sys.argv[1:], "model": str(model_dir), "method": m.name,
                    **{k: meta.get(k) for k in ("shots", "seed", "normal", "demo", "threshold_rule", "references")},
                    "targets": [str(t) for t in targets], "n_targets": len(samples),
                    "labels": str(labels) if labels else None, "demo_size": demo_size if demo else None,
                    "demo_target_seed": DEMO_TARGET_SEED if demo else None, "chunk_size": chunk,
                    "targets_also_references": n_overlap, "overrides": overrides, "config": asdict(m.config), "timings": {"load_s": round(load_s, 3)}}
        _finish(m, run, out, calibration, settings, _existing(refs), quiet, t0)


def _existing(refs: list[Sample]) -> list[Sample]:
    """References still on disk (the report shows their thumbnails; run.json lists all)."""
    return [r for r in refs if r.path.is_file()]


commands = [score, fit, predict]
