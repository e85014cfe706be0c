"""Compare prompt files on labelled images: one encoding, one scoring per file.

``compare_prompts`` runs WinCLIP zero-shot (or WinCLIP+ with ``shots`` normal references) with
every prompt file on the same images and reports, per file, the image metrics (AUROC, AP,
F1-max) and, where masks exist, the pixel metrics (AUROC, AP, F1-max, AUPRO), with exactly the
numbers ``fsiad eval`` gives for each file on those images. The image and window embeddings
and the few-shot memory are computed once; each file only adds its text embeddings (disk
cache) and the scoring.

Images and labels come from an MVTec-layout category folder (``test/good``, ``test/<defect>``,
``ground_truth/<defect>/*_mask.png``; ``train/good`` is the reference pool) read by the
dataset reader, or from image files / folders labelled by a CSV ``path,label``.

Output folder (locked while written, never inside an input): ``compare.csv`` (one row per
file), ``scores.csv`` (one row per image, one score column per file), ``report.md`` and
``report.html``.
"""

from __future__ import annotations

import csv
import html
import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from fsiad.fewshot.data.base import Category, DatasetError, Sample
from fsiad.fewshot.errors import OptionError
from fsiad.fewshot.fileio import OutputLock, atomic_write_text, check_out_not_input
from fsiad.fewshot.methods.base import MethodConfig
from fsiad.fewshot.metrics import IMAGE_METRICS, PIXEL_METRICS, image_metrics, pixel_metrics
from fsiad.prompts.loader import PromptSet, load_prompts

__all__ = ["CompareConfig", "CompareResult", "compare_prompts", "read_targets", "format_table"]

METRIC_LABELS = {
    "image_auroc": "I-AUROC", "image_ap": "I-AP", "image_f1max": "I-F1max",
    "pixel_auroc": "P-AUROC", "pixel_ap": "P-AP", "pixel_f1max": "P-F1max", "pixel_aupro": "AUPRO",
}


@dataclass
class CompareConfig:
    """What to compare.

    Attributes:
        prompt_files: two or more prompt files (one is allowed: a single measurement).
        targets: one MVTec-layout category folder (or a dataset root with ``category``), or
            image files / folders labelled by ``labels``.
        out: output folder.
        labels: CSV ``path,label``; unlabelled targets are not scored.
        category: category of an MVTec-layout dataset root holding several.
        normal: folder of normal references (default with ``shots``: the category's ``train/good``).
        shots: K normal references (0 = zero-shot WinCLIP, K > 0 = WinCLIP+).
        seed: seed of the reference draw (same draw as ``fsiad eval`` / ``fsiad score``).
        class_name: object name (default: the category's name, else ``object``).
        method_config: encoder, weights, device, precision, batch size, options (``prompts``
            and ``class_name`` are set per file / from ``class_name``).
        chunk_size: images read and preprocessed at a time.
    """

    prompt_files: list[Path]
    targets: list[Path]
    out: Path
    labels: Path | None = None
    category: str | None = None
    normal: Path | None = None
    shots: int = 0
    seed: int = 0
    class_name: str | None = None
    method_config: MethodConfig = field(default_factory=MethodConfig)
    chunk_size: int = 32


@dataclass
class CompareResult:
    """Rows of ``compare.csv`` (one per file) and what the run did."""

    rows: list[dict[str, Any]]
    meta: dict[str, Any]
    scores: dict[str, np.ndarray]
    samples: list[Sample]

    @property
    def metric_keys(self) -> list[str]:
        keys = list(IMAGE_METRICS) + (list(PIXEL_METRICS) if self.meta["has_masks"] else [])
        return keys


def read_targets(targets: Sequence[Path], labels: Path | None, category: str | None) -> tuple[Category, bool]:
    """The labelled images: ``(category, from_dataset_layout)``.

    Without ``labels``, the single target must be an MVTec-layout category folder (or a root
    holding categories, one picked by ``category``). With ``labels``, targets are image files /
    folders and only the images the CSV labels are kept (no masks, no reference pool).

    Raises:
        DatasetError: no targets, unreadable layout, several categories without ``category``,
            no labelled image.
    """
    from fsiad.fewshot.data import load_dataset
    from fsiad.fewshot.methods.winclip import WinCLIP
    from fsiad.fewshot.workflow.targets import collect_samples, read_labels_csv

    if not targets:
        raise DatasetError("give the labelled images: an MVTec-layout category folder, or images with --labels CSV")
    if labels is None:
        if len(targets) != 1:
            raise DatasetError(f"{len(targets)} targets without --labels: give one MVTec-layout category folder "
                               "(test/good, test/<defect>, ground_truth/) or label the images with --labels CSV")
        cats = load_dataset("mvtec", targets[0], [category] if category else None)
        if len(cats) != 1:
            raise DatasetError(f"{targets[0]}: {len(cats)} categories ({', '.join(c.name for c in cats)}); "
                               "pick one with --category")
        return cats[0], True
    if category is not None:
        raise OptionError("--category selects a category of an MVTec-layout folder; it cannot be used with --labels")
    table = read_labels_csv(labels)
    samples = [s for s in collect_samples(WinCLIP, list(targets), table) if s.label is not None]
    if not samples:
        raise DatasetError(f"--labels {labels}: labels none of the target images (paths are relative to the CSV)")
    return Category("images", [], samples, has_masks=False, root=None), False


def _file_names(files: Sequence[Path]) -> list[str]:
    """Column names: the file names, or the paths when two files share a name."""
    names = [f.name for f in files]
    if len(set(names)) == len(names):
        return names
    return [str(f) for f in files]


def compare_prompts(cfg: CompareConfig, say: Callable[[str], None] | None = None) -> CompareResult:
    """Score the same images with every prompt file; write the comparison into ``cfg.out``.

    Raises:
        PromptError: a prompt file is invalid (checked before anything runs).
        OptionError: no prompt file, the same file twice, ``shots`` without a reference pool.
        DatasetError: bad targets / labels / reference folder.
        OutputOverlapError, OutputLockedError: ``cfg.out`` overlaps an input or is in use.
    """
    from fsiad.fewshot.data.sampling import sample_shots
    from fsiad.fewshot.evaluation.harness import load_masks
    from fsiad.fewshot.methods.winclip import WinCLIP
    from fsiad.fewshot.methods.winclip_prompts import encode, score_with, use_prompts
    from fsiad.fewshot.workflow.references import select_references

    say = say or (lambda _line: None)
    files = [Path(f) for f in cfg.prompt_files]
    if not files:
        raise OptionError("give at least one prompt file to compare")
    seen: dict[Path, Path] = {}
    for f in files:
        if f.resolve() in seen:
            raise OptionError(f"{f}: given twice (as {seen[f.resolve()]})")
        seen[f.resolve()] = f
    if cfg.shots < 0:
        raise OptionError(f"--shots {cfg.shots}: must be >= 0")
    prompt_sets: list[PromptSet] = [load_prompts(f) for f in files]
    category, from_layout = read_targets(cfg.targets, cfg.labels, cfg.category)
    class_name = cfg.class_name or (category.name if from_layout else "object")
    if cfg.shots and cfg.normal is None:
        if not category.train:
            raise OptionError(f"--shots {cfg.shots} needs --normal DIR (a folder of normal images)"
                              + (f"; {category.root} has no train/good" if from_layout else ""))
        if cfg.shots > len(category.train):
            raise DatasetError(f"--shots {cfg.shots}: {category.name} has only {len(category.train)} normal "
                               "training images")
        refs = sample_shots(category.train, cfg.shots, cfg.seed) if cfg.shots < len(category.train) \
            else list(category.train)
    else:
        refs = select_references(WinCLIP, cfg.shots, cfg.seed, cfg.normal) if cfg.shots else []
    check_out_not_input(cfg.out, [*cfg.targets, cfg.labels, cfg.normal, *files])

    mc = MethodConfig(**{**vars(cfg.method_config), "class_name": class_name, "prompts": str(files[0])})
    method = WinCLIP(mc)
    samples = list(category.test)
    labels = np.array([s.label for s in samples], dtype=np.int64)
    with OutputLock(cfg.out, "fsiad prompts compare"):
        t0 = time.perf_counter()
        method.fit(method.prepare(refs) if refs else None)
        chunks = [method.prepare(samples[i : i + cfg.chunk_size]) for i in range(0, len(samples), cfg.chunk_size)]
        encoded = encode(method, chunks)
        masks = load_masks(method, samples) if category.has_masks else None
        encode_s = time.perf_counter() - t0
        say(f"encoded {len(samples)} image(s) and {len(refs)} reference(s) once in {encode_s:.1f} s")
        rows: list[dict[str, Any]] = []
        scores: dict[str, np.ndarray] = {}
        for name, f, ps in zip(_file_names(files), files, prompt_sets, strict=True):
            t1 = time.perf_counter()
            use_prompts(method, ps)
            result = score_with(method, encoded)
            cp = method.class_prompts()
            row: dict[str, Any] = {"file": name, "path": str(f), "class_name": cp.class_name,
                                   "normal_prompts": len(cp.normal), "anomalous_prompts": len(cp.anomalous),
                                   "duplicates": len(ps.duplicates)}
            row.update(image_metrics(result.image_scores.numpy(), labels))
            if masks is not None:
                row.update(pixel_metrics(result.anomaly_maps.numpy(), masks.numpy()))
            row["score_s"] = round(time.perf_counter() - t1, 3)
            rows.append(row)
            scores[name] = result.image_scores.numpy()
            say(f"{name}: " + ", ".join(f"{METRIC_LABELS[k]} {row[k]:.4f}" for k in ("image_auroc", "pixel_auroc")
                                        if k in row) + f" ({row['score_s']:.1f} s)")
        meta = {
            "regime": "few-shot (WinCLIP+)" if refs else "zero-shot (WinCLIP)",
            "shots": len(refs), "seed": cfg.seed, "references": [str(s.path) for s in refs],
            "class_name": class_name, "category": category.name if from_layout else None,
            "targets": [str(t) for t in cfg.targets], "labels": str(cfg.labels) if cfg.labels else None,
            "n_images": len(samples), "n_anomalous": int(labels.sum()), "has_masks": masks is not None,
            "encoder": method.encoder.name,
            "encode_s": round(encode_s, 3),
        }
        res = CompareResult(rows, meta, scores, samples)
        write_outputs(cfg.out, res)
    return res


# -- outputs -------------------------------------------------------------------------------------
def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if v != v else f"{v:.4f}"
    return str(v)


def format_table(res: CompareResult) -> str:
    """Plain-text table: one row per file, metrics side by side, the best value of each marked ``*``."""
    keys = res.metric_keys
    head = ["file", "prompts (n/a)", "dup", *[METRIC_LABELS[k] for k in keys]]
    best = {k: max((r[k] for r in res.rows if r[k] == r[k]), default=None) for k in keys}
    body = []
    for r in res.rows:
        cells = [r["file"], f"{r['normal_prompts']}/{r['anomalous_prompts']}", str(r["duplicates"])]
        for k in keys:
            mark = "*" if len(res.rows) > 1 and best[k] is not None and r[k] == best[k] else " "
            cells.append(_fmt(r[k]) + mark)
        body.append(cells)
    widths = [max(len(x) for x in col) for col in zip(head, *body, strict=True)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [head, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _describe(meta: dict[str, Any]) -> str:
    where = f"category {meta['category']}" if meta["category"] else f"targets labelled by {meta['labels']}"
    return (f"{meta['regime']}, {meta['shots']} reference(s) (seed {meta['seed']}), class name "
            f"{meta['class_name']!r}; {meta['n_images']} images of {where} ({meta['n_anomalous']} anomalous), "
            f"pixel metrics: {'yes' if meta['has_masks'] else 'no masks'}; encoder {meta['encoder']}")


def write_outputs(out: Path, res: CompareResult) -> None:
    keys = res.metric_keys
    cols = ["file", "path", "class_name", "normal_prompts", "anomalous_prompts", "duplicates", *keys, "score_s"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(cols)
    for r in res.rows:
        w.writerow([_fmt(r[c]) for c in cols])
    atomic_write_text(out / "compare.csv", buf.getvalue())

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    names = list(res.scores)
    w.writerow(["path", "label", "defect", *names])
    for i, s in enumerate(res.samples):
        w.writerow([str(s.path), s.label, s.defect, *[f"{float(res.scores[n][i]):.6f}" for n in names]])
    atomic_write_text(out / "scores.csv", buf.getvalue())

    md = ["# Prompt comparison", "", _describe(res.meta), "",
          "| file | prompts (normal/anomalous) | repeated entries | " + " | ".join(METRIC_LABELS[k] for k in keys) + " |",
          "|---|---|---|" + "---|" * len(keys)]
    for r in res.rows:
        md.append(f"| {r['file']} | {r['normal_prompts']}/{r['anomalous_prompts']} | {r['duplicates']} | "
                  + " | ".join(_fmt(r[k]) for k in keys) + " |")
    md += ["", _READING, ""]
    atomic_write_text(out / "report.md", "\n".join(md))

    th = "".join(f"<th>{html.escape(c)}</th>" for c in
                 ["file", "prompts (normal/anomalous)", "repeated entries", *[METRIC_LABELS[k] for k in keys]])
    trs = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in
                         [r["file"], f"{r['normal_prompts']}/{r['anomalous_prompts']}", r["duplicates"],
                          *[_fmt(r[k]) for k in keys]]) + "</tr>" for r in res.rows)
    page = (f"<!doctype html><meta charset='utf-8'><title>fsiad prompt comparison</title>"
            f"<style>body{{font-family:sans-serif}}td,th{{padding:2px 8px;text-align:right}}</style>"
            f"<h1>Prompt comparison</h1><p>{html.escape(_describe(res.meta))}</p>"
            f"<table><tr>{th}</tr>{trs}</table><p>{html.escape(_READING)}</p>"
            f"<p>Per-image scores: scores.csv; this table: compare.csv.</p>")
    atomic_write_text(out / "report.html", page)


_READING = ("AUROC: probability that a random anomalous image (pixel) scores above a random normal one "
            "(0.5 = chance). AP: average precision of the anomalous class. F1max: best F1 over thresholds. "
            "AUPRO: per-defect-region overlap integrated up to 30% false-positive rate. Same images, same "
            "references: differences come from the prompts only; with few images a difference of a few "
            "points can be noise.")
