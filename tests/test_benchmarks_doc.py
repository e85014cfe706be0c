"""BENCHMARKS.md is generated from bench/results/*.json and must not drift from them."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _generator():
    spec = importlib.util.spec_from_file_location("bench_make_benchmarks", ROOT / "bench" / "make_benchmarks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_benchmarks_md_matches_records(tmp_path: Path) -> None:
    gen = _generator()
    out = tmp_path / "BENCHMARKS.md"
    assert gen.main(["--out", str(out)]) == 0
    committed = (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8")
    assert out.read_text(encoding="utf-8") == committed, (
        "BENCHMARKS.md is out of date with bench/results/*.json: run `python -m bench.make_benchmarks`")
    assert gen.main(["--check"]) == 0


def test_generation_is_deterministic() -> None:
    gen = _generator()
    assert gen.render() == gen.render()


def test_every_row_names_its_run() -> None:
    files = sorted((ROOT / "bench" / "results").glob("*.json"))
    assert files
    n_rows = 0
    for f in files:
        rec = json.loads(f.read_text(encoding="utf-8"))
        keys = {c["key"] for c in rec.get("columns", [])}
        for row in rec.get("rows", []):
            n_rows += 1
            where = f"{f.name}: {row.get('label')}"
            assert isinstance(row.get("command"), str) and row["command"].strip(), where
            assert row.get("date") and row.get("machine"), where
            assert isinstance(row.get("command_reconstructed", False), bool), where
            assert set(row["values"]) <= keys, where
            assert any(str(v).strip() for v in row["values"].values()), where
    assert n_rows > 0
    text = (ROOT / "BENCHMARKS.md").read_text(encoding="utf-8")
    assert "../shared" not in text


def test_rows_without_command_are_rejected(tmp_path: Path) -> None:
    gen = _generator()
    rec = {"title": "t", "columns": [{"key": "a", "label": "A"}],
           "rows": [{"label": "x", "values": {"a": "1"}, "date": "2026-01-01", "machine": "m"}]}
    (tmp_path / "r.json").write_text(json.dumps(rec))
    with pytest.raises(gen.RecordError, match="command"):
        gen.render(tmp_path)
