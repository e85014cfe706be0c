"""Data flows one way: CLI -> workflow -> data -> method -> ops -> encoders. ``fewshot/ops``
imports nothing from encoders or methods; the renderer and file primitives stay light."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_ops_import_no_encoder_or_method():
    bad = {}
    for f in sorted((ROOT / "fewshot" / "ops").glob("*.py")):
        hits = [m for m in _imports(f) if m.startswith(("fsiad.fewshot.encoders", "fsiad.fewshot.methods",
                                                         "fsiad.fewshot.workflow", "fsiad.cli"))]
        if hits:
            bad[f.name] = hits
    assert not bad, bad


def test_library_never_imports_the_cli():
    bad = {str(f.relative_to(ROOT)): [m for m in _imports(f) if m.startswith("fsiad.cli")]
           for d in ("fewshot", "pointcloud", "prompts") for f in (ROOT / d).rglob("*.py")}
    assert not {k: v for k, v in bad.items() if v}


def test_light_modules_load_no_torch():
    code = ("import sys\nimport fsiad, fsiad.fewshot.errors, fsiad.fewshot.fileio, fsiad.fewshot.device, "
            "fsiad.fewshot.registry, fsiad.fewshot.workflow.render, fsiad.fewshot.workflow.scores_file, "
            "fsiad.fewshot.methods.regime, fsiad.fewshot.methods.options, fsiad.fewshot.export.runner\n"
            "print('torch' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
