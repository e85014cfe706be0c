"""Run the ``bench/`` modules in a short configuration and write one JSON record per benchmark.

Run from the repository root (``make bench`` does)::

    python -m bench.run_all                         # the default (quick) set -> runs/bench/
    python -m bench.run_all --only methods,metrics  # a subset
    python -m bench.run_all --all                   # also the slow ones (WinCLIP, 3D method comparison)
    python -m bench.run_all --list                  # what would run, with the exact commands

Each benchmark runs as its own subprocess (``python -m bench.<module> ...``, 2 OpenMP threads,
``OMP_WAIT_POLICY=PASSIVE``, ``HF_HUB_OFFLINE=1``) with its own arguments, kept small so the
whole default set takes a few minutes on 2 CPU cores; the numbers are smoke-level (few runs,
few images), not the published ones. Its output is parsed into rows and written to
``<out>/<NN>_<name>.json`` in the record format of ``bench/make_benchmarks.py`` (every row
carries the exact command, the date and the machine); ``<out>/BENCHMARKS.md`` renders them.
Nothing lands in git: to publish a record, copy it into ``bench/results/`` on purpose and run
``python -m bench.make_benchmarks``. Exit status 1 when any benchmark failed (its record says why).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- output parsers
def parse_markdown_table(stdout: str) -> list[dict[str, str]]:
    """Rows of the first markdown table in ``stdout`` (header, separator, rows), as strings."""
    lines = [ln.strip() for ln in stdout.splitlines()]
    for i, ln in enumerate(lines[:-1]):
        if ln.startswith("|") and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[i + 1]):
            header = [c.strip() for c in ln.strip("|").split("|")]
            rows = []
            for body in lines[i + 2:]:
                if not body.startswith("|"):
                    break
                cells = [c.strip() for c in body.strip("|").split("|")]
                rows.append(dict(zip(header, cells, strict=False)))
            return rows
    return []


def parse_json_lines(stdout: str) -> list[dict[str, str]]:
    """One row per line of ``stdout`` that is a JSON object (``bench_methods`` prints one per method)."""
    rows = []
    for ln in stdout.splitlines():
        ln = ln.strip()
        if ln.startswith("{"):
            try:
                obj = json.loads(ln)
            except json.JSONDecodeError:
                continue
            rows.append({k: _text(v) for k, v in obj.items()})
    return rows


def parse_metrics(stdout: str) -> list[dict[str, str]]:
    m = re.search(r"pixel_metrics: median ([\d.]+) s \((\d+) maps/s\).*?peak traced extra (\d+) MiB, "
                  r"process max RSS (\d+) MiB", stdout)
    if not m:
        return []
    row = {"measure": "pixel_metrics (AUROC, AP, F1-max, AUPRO)", "median_s": m[1], "maps_per_s": m[2],
           "peak_extra_mib": m[3], "peak_rss_mib": m[4]}
    rows = [row]
    im = re.search(r"image_metrics: ([\d.]+) s", stdout)
    if im:
        rows.append({"measure": "image_metrics", "median_s": im[1]})
    return rows


def parse_workflow(stdout: str) -> list[dict[str, str]]:
    """``bench_workflow`` prints ``  key   value`` lines (medians) after its summary header."""
    vals = dict(re.findall(r"^\s{2}(\w+)\s+(-?[\d.]+)\s*$", stdout, flags=re.M))
    if not vals:
        return []
    head = re.search(r"^(fsiad score .*)$", stdout, flags=re.M)
    return [{"run": head[1] if head else "fsiad score --demo textile", **vals}]


def _text(v: object) -> str:
    return json.dumps(v) if isinstance(v, list | dict) else str(v)


# ----------------------------------------------------------------------------- the benchmarks
@dataclass
class Bench:
    name: str
    module: str
    args: list[str]
    parse: Callable[[str], list[dict[str, str]]]
    what: str
    slow: bool = False
    env: dict[str, str] = field(default_factory=dict)

    def command(self) -> str:
        env = " ".join(f"{k}={v}" for k, v in {**BASE_ENV, **self.env}.items())
        return f"{env} python -m {self.module} {shlex.join(self.args)}".strip()


BASE_ENV = {"OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "2", "HF_HUB_OFFLINE": "1"}

BENCHES = [
    Bench("startup", "bench.bench_startup", ["--runs", "3"], parse_json_lines,
          "Wall time of `fsiad --help`, `fsiad methods` and `import fsiad` in a fresh interpreter."),
    Bench("metrics", "bench.metrics", ["--n", "200", "--side", "128", "--runs", "2"], parse_metrics,
          "Pixel and image metrics (incl. AUPRO) on synthetic maps: maps/s and memory."),
    Bench("encoders", "bench.bench_encoders",
          ["--encoders", "tf_efficientnet_lite0", "dinov2_vits14", "--batches", "1", "4", "--runs", "2"],
          parse_markdown_table, "Patch-feature extraction speed and peak RSS of the two offline encoders."),
    Bench("methods", "bench.bench_methods", ["--methods", "knn,padim,patchcore", "--n-test", "8", "--runs", "1"],
          parse_json_lines, "Fit time, predict images/s and peak RSS of the visual-memory methods (synthetic images)."),
    Bench("workflow", "bench.bench_workflow", ["--size", "16", "--runs", "1"], parse_workflow,
          "End-to-end `fsiad score --demo textile` (16 targets, 4 shots), per phase."),
    Bench("pointcloud_time", "bench.bench_pointcloud", ["time", "--size", "96", "--runs", "2"],
          parse_markdown_table, "FPFH and full BTF predict time per sample (synthetic MVTec 3D-AD format)."),
    Bench("pointcloud_compare", "bench.bench_pointcloud",
          ["compare", "--size", "64", "--shots", "4", "--seeds", "0", "--n-test", "3"], parse_markdown_table,
          "RGB-D method comparison on a small synthetic MVTec 3D-AD-format set.", slow=True),
    Bench("export", "bench.bench_export", ["--method", "patchcore", "--n", "16", "--engines", "torch,onnxruntime"],
          parse_json_lines, "Exported bundle (onnxruntime, no torch) against torch predict: images/s, peak RSS."),
    Bench("prompts", "bench.bench_prompts", ["--n-test", "8"], parse_json_lines,
          "`fsiad prompts compare` of 3 files against 3 separate evaluations (random-init CLIP).", slow=True),
    Bench("winclip", "bench.bench_winclip",
          ["--images", "1", "--repeats", "1", "--precisions", "fp32", "--no-multi-crop"], parse_markdown_table,
          "WinCLIP zero-shot / 4-shot images/s with random-init CLIP weights (timing only).", slow=True),
]


# ----------------------------------------------------------------------------- machine / running
def machine_description() -> str:
    """CPU model, core count, torch build and accelerator, load: the context a number needs."""
    cpu = platform.processor() or platform.machine()
    try:
        for ln in Path("/proc/cpuinfo").read_text().splitlines():
            if ln.startswith("model name"):
                cpu = ln.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    probe = ("import torch, json; c = torch.cuda.is_available(); "
             "print(json.dumps([torch.__version__, torch.cuda.get_device_name(0) if c else None]))")
    try:
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
        torch_v, gpu = json.loads(out.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError, OSError):
        torch_v, gpu = "unknown", None
    load = f"{os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "?"
    return (f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} CPUs, torch {torch_v}, "
            f"{'GPU ' + gpu if gpu else 'no GPU'} (benchmarks run on CPU); load average {load} at start")


def run_bench(b: Bench, out: Path, index: int, machine: str, timeout: float) -> dict:
    env = {**os.environ, **BASE_ENV, **b.env}
    argv = [sys.executable, "-m", b.module, *b.args]
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    t0 = time.perf_counter()
    try:
        p = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        rc, stdout, stderr = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        rc = None
        stdout = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        stderr = f"timed out after {timeout:.0f} s"
    wall = time.perf_counter() - t0
    parsed = parse_safely(b.parse, stdout) if rc == 0 else []
    status = "ok" if rc == 0 and parsed else ("failed" if rc != 0 else "no rows parsed")
    keys: list[str] = []
    for r in parsed:
        keys += [k for k in r if k not in keys]
    rows = [{"label": f"{b.name} {i + 1}", "values": r, "command": b.command(), "command_reconstructed": False,
             "date": date, "machine": machine} for i, r in enumerate(parsed)]
    tail = "\n".join((stderr if rc != 0 else stdout).strip().splitlines()[-15:])
    record = {
        "title": f"make bench: {b.name}",
        "intro": f"{b.what} Short configuration of `make bench` (smoke-level numbers). Status: **{status}** "
                 f"(exit {rc}, {wall:.1f} s wall).",
        "columns": [{"key": k, "label": k, "align": "left"} for k in keys],
        "rows": rows,
        "notes": [context_note(stdout)] if status == "ok" and context_note(stdout) else
                 [] if status == "ok" else [f"Command: `{b.command()}`. Output tail:\n\n```\n{tail}\n```"],
        "benchmark": b.name, "status": status, "returncode": rc, "wall_s": round(wall, 1),
        "stdout": stdout[-20000:], "stderr_tail": stderr[-4000:],
    }
    (out / f"{index:02d}_{b.name}.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return record


def context_note(stdout: str, limit: int = 8) -> str:
    """The benchmark's own header/footer lines (settings, peak memory): what the table rows lack."""
    lines = [ln.rstrip() for ln in stdout.splitlines()
             if ln.strip() and not ln.strip().startswith(("|", "{")) and not re.match(r"^\s{2}\w+\s+-?[\d.]+\s*$", ln)]
    if not lines:
        return ""
    return "Benchmark output besides the table:\n\n```\n" + "\n".join(lines[:limit]) + "\n```"


def parse_safely(parse: Callable[[str], list[dict[str, str]]], stdout: str) -> list[dict[str, str]]:
    try:
        return parse(stdout)
    except Exception:  # noqa: BLE001 - a parser bug must not lose the raw output, which is kept in the record
        return []


def summary_line(rec: dict) -> str:
    first = rec["rows"][0]["values"] if rec["rows"] else {}
    shown = ", ".join(f"{k}={v}" for k, v in list(first.items())[:5])
    return f"{rec['benchmark']:<20} {rec['status']:<15} {rec['wall_s']:>7.1f} s  {shown}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench", help="results folder [runs/bench]")
    ap.add_argument("--only", default=None, help="comma-separated benchmark names (see --list)")
    ap.add_argument("--all", action="store_true", help="include the slow benchmarks")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per benchmark [900]")
    ap.add_argument("--list", action="store_true", help="list the benchmarks and their commands, run nothing")
    a = ap.parse_args(argv)
    names = [b.name for b in BENCHES]
    if a.only:
        wanted = [n.strip() for n in a.only.split(",") if n.strip()]
        unknown = sorted(set(wanted) - set(names))
        if unknown:
            ap.error(f"unknown benchmark(s) {', '.join(unknown)}; available: {', '.join(names)}")
        chosen = [b for b in BENCHES if b.name in wanted]
    else:
        chosen = [b for b in BENCHES if a.all or not b.slow]
    if a.list:
        for b in BENCHES:
            mark = "*" if b in chosen else " "
            print(f"{mark} {b.name:<20}{' (slow)' if b.slow else '':<8} {b.command()}")
        print("\n* = would run with these arguments")
        return 0
    a.out.mkdir(parents=True, exist_ok=True)
    for old in a.out.glob("[0-9][0-9]_*.json"):  # a previous run's records; this run replaces them
        old.unlink()
    machine = machine_description()
    print(f"machine: {machine}\nwriting records to {a.out}\n", flush=True)
    records = []
    for b in chosen:
        print(f"-> {b.name}: {b.command()}", flush=True)
        rec = run_bench(b, a.out, BENCHES.index(b) + 1, machine, a.timeout)
        records.append(rec)
        print(f"   {summary_line(rec)}", flush=True)
    sys.path.insert(0, str(ROOT))
    from bench.make_benchmarks import RecordError, render

    md = a.out / "BENCHMARKS.md"
    try:
        md.write_text(render(a.out), encoding="utf-8")
    except RecordError as e:
        print(f"could not render {md}: {e}", file=sys.stderr)
    print("\nsummary")
    for rec in records:
        print("  " + summary_line(rec))
    failed = [r["benchmark"] for r in records if r["status"] != "ok"]
    print(f"\nrecords: {a.out}/NN_<name>.json; table: {md}")
    if failed:
        print(f"failed or unparsed: {', '.join(failed)} (see their records)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
