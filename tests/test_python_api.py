"""The public Python API: the README's first Python example runs as written, ``import fsiad``
is light, and the generic folder names are not importable from outside the repository."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.memory_helpers import require_weights
from tests.workflow_helpers import texture

ROOT = Path(__file__).resolve().parents[1]


def _first_python_block() -> str:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert blocks, "README.md has no ```python block"
    return blocks[0]


def _parts(folder: Path) -> None:
    rng = np.random.default_rng(0)
    for sub, n, defect in (("good", 6, False), ("incoming", 3, False), ("incoming", 3, True)):
        d = folder / "parts" / sub
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(texture(rng, defect, side=64)).save(d / f"{'bad' if defect else 'ok'}_{i}.png")


def test_readme_first_python_example_runs_as_written(tmp_path):
    require_weights("dinov2_vits14")
    _parts(tmp_path)
    code = _first_python_block()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [ln.split() for ln in r.stdout.splitlines() if ln.strip()]
    assert len(lines) == 6, r.stdout
    scores = {Path(p).name: float(s) for p, s, _ in lines}
    assert all(d in ("anomalous", "normal") for *_, d in lines)
    bad = [v for k, v in scores.items() if k.startswith("bad")]
    ok = [v for k, v in scores.items() if k.startswith("ok")]
    assert min(bad) > max(ok), scores  # bright squares on stripes: an easy, separable set
    assert (tmp_path / "models" / "parts" / "model.json").is_file()

    # the saved model reloads from another working directory and predicts the same scores
    other = tmp_path / "elsewhere"
    other.mkdir()
    again = ("import fsiad, sys\nm = fsiad.load(sys.argv[1])\n"
             "for r in m.predict(sys.argv[2]):\n    print(r.path, r.score, r.decision)\n")
    r2 = subprocess.run([sys.executable, "-c", again, str(tmp_path / "models" / "parts"),
                         str(tmp_path / "parts" / "incoming")], cwd=other, env=env, capture_output=True,
                        text=True, timeout=600)
    assert r2.returncode == 0, r2.stderr[-3000:]
    scores2 = {Path(p).name: float(s) for p, s, _ in (ln.split() for ln in r2.stdout.splitlines() if ln.strip())}
    assert scores2.keys() == scores.keys()
    assert all(abs(scores2[k] - scores[k]) < 1e-3 for k in scores)  # the README rounds to 4 places


def test_import_fsiad_is_light_and_generic_names_are_not_installed(tmp_path):
    code = ("import sys, fsiad\nprint(fsiad.__version__, 'torch' in sys.modules)\n"
            "import importlib.util as u\n"
            "print([n for n in ('cli', 'prompts', 'fewshot', 'pointcloud') if u.find_spec(n) is not None])\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    first, generic = r.stdout.splitlines()
    assert first.split()[1] == "False", r.stdout  # torch not imported
    assert generic == "[]", r.stdout


def test_one_version_string():
    from importlib.metadata import version

    import fsiad

    assert version("fsiad") == fsiad.__version__
    assert "version =" not in (ROOT / "pyproject.toml").read_text().split("[project.optional-dependencies]")[0]


def test_api_errors_are_fsiad_errors(tmp_path):
    import fsiad

    with pytest.raises(fsiad.FsiadError):
        fsiad.fit(tmp_path / "missing", shots=2)
    with pytest.raises(fsiad.FsiadError):
        fsiad.load(tmp_path)
