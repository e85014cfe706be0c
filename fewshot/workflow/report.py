"""HTML report of one run: flagged list, threshold, warnings, metrics, histogram, image cards.

The page has no scripts, external fonts or remote links; it embeds no image: each card links
a small JPEG strip under ``thumbs/`` (lazy-loaded) and the full-size overlay under ``overlays/``,
so a run of 1,000 images stays a few MB and opens fast. Histogram and colour bar are inline SVG.
Cards are streamed to disk one at a time (``ReportWriter``).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em;color:#222;background:#fafafa}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#eee}.note{background:#fff7e0;border-left:4px solid #f0b400;padding:.5em 1em}
.grid{display:flex;flex-wrap:wrap;gap:10px}.card{background:#fff;border:1px solid #ccc;border-radius:4px;padding:6px;font-size:.78em;width:330px}
.card img{display:block;max-width:320px;height:96px;object-fit:contain}
.card.miss{border:3px solid #d00}.card.falsealarm{border:3px solid #f08000}
.warn{background:#ffe5e5;border-left:4px solid #d00;padding:.5em 1em}.bad{color:#b00}.card .name{font-family:monospace;word-break:break-all}
.anomalous{color:#b00;font-weight:bold}.normal{color:#070;font-weight:bold}.refs img{height:96px;margin:2px}
code{font-size:.9em}
"""


def _cell(value: Any) -> str:
    """A table cell: nested values as JSON, floats to 6 significant digits (run.json keeps them whole)."""
    if isinstance(value, (dict, list)):
        return f"<code>{escape(json.dumps(value, default=str))}</code>"
    if isinstance(value, float):
        return escape(f"{value:.6g}")
    return escape("" if value is None else str(value))


def table(rows: dict[str, Any]) -> str:
    """Two-column HTML table of ``key: value`` (nested values as JSON)."""
    body = "".join(f"<tr><th>{escape(str(k))}</th><td>{_cell(v)}</td></tr>" for k, v in rows.items())
    return f"<table>{body}</table>"


def histogram_svg(scores: Sequence[float], labels: Sequence[int | None] | None = None,
                  threshold: float | None = None, bins: int = 30, width: int = 640, height: int = 220,
                  from_labels: float | None = None) -> str:
    """Inline SVG histogram of image scores, stacked by label, with the threshold as a red line.

    Args:
        scores: ``[N]`` image scores.
        labels: ``[N]`` 0 / 1 / ``None`` (unknown), or ``None`` for all unknown.
        threshold: drawn when given.
        from_labels: the threshold the labels support (``labels_advice``), drawn in green when given.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0:
        return "<p>(no scores)</p>"
    lab = list(labels) if labels is not None else [None] * s.size
    lo, hi = float(s.min()), float(s.max())
    for t in (threshold, from_labels):
        if t is not None:
            lo, hi = min(lo, t), max(hi, t)
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.linspace(lo, hi, bins + 1)
    groups = [(0, "#4682b4", "normal"), (1, "#e8710a", "anomalous"), (None, "#888888", "unlabelled")]
    counts = {g: np.histogram(s[[lb == g for lb in lab]], bins=edges)[0] for g, _, _ in groups}
    top = max(1, int(sum(counts.values()).max()))
    ml, mb, mt = 40, 30, 20
    pw, ph = width - ml - 10, height - mb - mt
    bw = pw / bins
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'role="img" aria-label="score histogram" font-size="11" font-family="sans-serif">',
             f'<line x1="{ml}" y1="{mt + ph}" x2="{ml + pw}" y2="{mt + ph}" stroke="#333"/>',
             f'<line x1="{ml}" y1="{mt}" x2="{ml}" y2="{mt + ph}" stroke="#333"/>',
             f'<text x="{ml - 4}" y="{mt + 4}" text-anchor="end">{top}</text>',
             f'<text x="{ml - 4}" y="{mt + ph}" text-anchor="end">0</text>']
    base = np.zeros(bins)
    for g, colour, name in groups:
        c = counts[g]
        for i in np.nonzero(c)[0]:
            h = c[i] / top * ph
            y = mt + ph - (base[i] / top * ph) - h
            parts.append(f'<rect x="{ml + i * bw:.1f}" y="{y:.1f}" width="{max(bw - 1, 1):.1f}" height="{h:.1f}" '
                         f'fill="{colour}"><title>{name}: {c[i]} in [{edges[i]:.4g}, {edges[i + 1]:.4g})</title></rect>')
        base += c
    for frac in (0.0, 0.5, 1.0):
        v = lo + frac * (hi - lo)
        parts.append(f'<text x="{ml + frac * pw:.1f}" y="{mt + ph + 14}" text-anchor="middle">{v:.4g}</text>')
    parts.append(f'<text x="{ml + pw / 2:.1f}" y="{height - 2}" text-anchor="middle">image score</text>')
    legend_x = ml + 8
    for g, colour, name in groups:
        if counts[g].sum():
            parts.append(f'<rect x="{legend_x}" y="4" width="10" height="10" fill="{colour}"/>'
                         f'<text x="{legend_x + 14}" y="13">{name} ({int(counts[g].sum())})</text>')
            legend_x += 24 + 7 * len(name) + 30
    for t, colour, name, dy in ((threshold, "#d00", "threshold", 6), (from_labels, "#080", "from labels", 18)):
        if t is not None:  # labels on a white halo: readable where they cross the other line
            x = ml + (t - lo) / (hi - lo) * pw
            parts.append(f'<line x1="{x:.1f}" y1="{mt - 6}" x2="{x:.1f}" y2="{mt + ph}" stroke="{colour}" '
                         f'stroke-width="2" stroke-dasharray="5,3"/>'
                         f'<text x="{x + 3:.1f}" y="{mt + dy}" fill="{colour}" stroke="#fff" stroke-width="3" '
                         f'paint-order="stroke">{name} {t:.4g}</text>')
    parts.append("</svg>")
    return "".join(parts)


class ReportWriter:
    """Streams ``report.html``: ``header`` once, ``card`` per image (sorted by the caller), ``close``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        self._tmp = Path(tmp)  # unique: two writers of the same report never share a temporary file
        self._fh = os.fdopen(fd, "w", encoding="utf-8")
        self.n_cards = 0

    def header(self, title: str, summary: dict[str, Any], threshold_note: str, metrics: dict[str, Any] | None,
               histogram: str, settings: dict[str, Any], references: Sequence[tuple[str, str]],
               errors: Sequence[tuple[str, str]], n_images: int, warnings: Sequence[str] = (),
               colour_bar: str = "", flagged: Sequence[tuple[str, float, str | None]] = ()) -> None:
        """Write everything above the image cards.

        Args:
            references: ``(path, relative link of its thumbnail or "")`` of the normal references.
            errors: ``(path, reason)`` of targets that could not be scored.
            warnings: lines shown in a warning box (odd references and what to do).
            flagged: ``(name, score, evidence)`` of the flagged images (listed, highest score
                first; ``image-wide`` evidence is named).
        """
        w = self._fh.write
        w(f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
          f"<style>{_CSS}</style></head><body><h1>{escape(title)}</h1>")
        for line in warnings:
            w(f'<p class="warn">{escape(line)}</p>')
        w(table(summary))
        if flagged:
            items = sorted(flagged, key=lambda f: -f[1])
            w(f"<h2>Flagged ({len(items)} of {n_images})</h2><p class='flagged'>")
            w(", ".join(f'<a href="#img-{escape(n)}">{escape(n)}</a> ({sc:.4g}'
                        + (", image-wide change" if ev == "image-wide" else "") + ")"
                        for n, sc, ev in items) + "</p>")
        w(f'<h2>Threshold</h2><p class="note">{escape(threshold_note)}</p>')
        if metrics:
            advice = "".join(f"<p class='note'>{escape(x)}</p>" for x in labels_advice(metrics.get("from_labels")))
            w("<h2>Metrics over the scored images with known labels</h2>" + confusion_table(metrics) + advice
              + table({k: v for k, v in metrics.items() if k != "from_labels"}))
        w("<h2>Score histogram</h2>" + histogram)
        if errors:
            w(f"<h2>Targets not scored ({len(errors)})</h2><table><tr><th>path</th><th>reason</th></tr>")
            w("".join(f"<tr><td>{escape(p)}</td><td>{escape(r)}</td></tr>" for p, r in errors) + "</table>")
        w(f"<h2>Normal references ({len(references)})</h2><div class='refs'>")
        w("".join(f'<img alt="reference {escape(p)}" title="{escape(p)}" loading="lazy" src="{escape(b)}">'
                  if b else f"<code>{escape(p)} (unreadable now)</code> " for p, b in references))
        w("</div><h2>Run settings</h2>" + table(settings))
        w(f"<h2>Images: flagged first, then by score ({n_images})</h2><p>Each strip: original | anomaly heat "
          "(shown only where notable) | defect contour (magenta, flagged images). Click for the full-size "
          "overlay at the image's own size. Misses and false alarms (when labels are known) are framed in "
          "red and orange.</p>" + colour_bar + "<div class='grid'>")

    def card(self, rank: int, name: str, path: str, score: float, decision: str | None,
             label: int | None, links: dict[str, str], region: Any = None, defect: str | None = None) -> None:
        """One image card: linked thumbnail strip, score, decision, label, defect area and boxes."""
        dec = f' <span class="{decision}">{decision}</span>' if decision else ""
        lab = "" if label is None else f"<br>label: {'anomalous' if label else 'normal'}" + (
            f" ({escape(defect)})" if label and defect else "")
        kind = ""
        if label is not None and decision is not None:
            kind = " miss" if label == 1 and decision == "normal" else (
                " falsealarm" if label == 0 and decision == "anomalous" else "")
        tag = {" miss": " <b>MISS</b>", " falsealarm": " <b>FALSE ALARM</b>"}.get(kind, "")
        area = ""
        if region is not None:
            area = (f"<br>defect area {region.area_px} px ({region.area_pct:g} %), {len(region.boxes)} region(s)"
                    if region.area_px else "<br>no pixel above the pixel threshold")
        img = (f'<a href="{escape(links["overlay"])}"><img alt="{escape(name)}" loading="lazy" '
               f'src="{escape(links["thumb"])}"></a>' if "thumb" in links else "<p>(image unreadable)</p>")
        more = " ".join(f'<a href="{escape(v)}">{k}</a>' for k, v in links.items() if k in ("overlay", "mask"))
        self._fh.write(
            f'<div class="card{kind}" id="img-{escape(name)}">{img}<div>#{rank} score <b>{score:.6g}</b>{dec}{tag}'
            f'{lab}{area}</div><div class="name" title="{escape(path)}">{escape(name)}</div><div>{more}</div></div>'
        )
        self.n_cards += 1

    def close(self) -> Path:
        """Finish the page and move it onto ``path`` (atomically)."""
        self._fh.write("</div></body></html>\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self._tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the unfinished page (``path`` is left as it was)."""
        self._fh.close()
        self._tmp.unlink(missing_ok=True)


def labels_threshold(metrics: dict[str, Any] | None) -> float | None:
    """The threshold the labels support at the target (``from_labels.at_fpr``), or ``None``."""
    at = ((metrics or {}).get("from_labels") or {}).get("at_fpr")
    return float(at["threshold"]) if at else None


def labels_advice(from_labels: dict[str, Any] | None) -> list[str]:
    """Sentences on the thresholds the labelled targets support (``label_metrics``' ``from_labels``),
    for the console and the report; empty without them."""
    if not from_labels:
        return []
    target, n0 = from_labels["target_fpr"], from_labels["n_normal"]
    at, best = from_labels.get("at_fpr"), from_labels.get("f1_max")
    if at:
        lines = [f"from these labels: --threshold {at['threshold']:.6g} flags {at['recall']:.0%} of the defects at "
                 f"{at['false_positive_rate']:.1%} false alarms ({at['false_alarms']} of {n0} normal images; "
                 f"target {target:g})"]
    else:
        lines = [f"from these labels: no threshold at or below {target:g} false alarms flags a defect"]
    if best and at and best["threshold"] == at["threshold"]:
        lines[0] += f"; also the best F1 ({best['f1']:.3f})"
    elif best:
        lines.append(f"best F1 ({best['f1']:.3f}) at --threshold {best['threshold']:.6g}: {best['recall']:.0%} of the "
                     f"defects at {best['false_positive_rate']:.1%} false alarms")
    lines.append("both are chosen on these images: expect somewhat more misses and false alarms on new parts")
    if from_labels.get("note"):
        lines.append(str(from_labels["note"]))
    return lines


def confusion_table(m: dict[str, Any]) -> str:
    """2 x 2 confusion matrix at the threshold (empty without one)."""
    if "true_positives" not in m:
        return ""
    return ("<table class='confusion'><tr><th></th><th>flagged</th><th>passed</th></tr>"
            f"<tr><th>anomalous (label)</th><td>{m['true_positives']} (TP)</td><td class='bad'>{m['false_negatives']}"
            f" (miss)</td></tr><tr><th>normal (label)</th><td class='bad'>{m['false_positives']} (false alarm)</td>"
            f"<td>{m['true_negatives']} (TN)</td></tr></table>")
