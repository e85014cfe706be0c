"""Start-up time of the command line: ``fsiad --help``, ``fsiad methods``, ``import fsiad``.

Each command runs ``--runs`` times in a fresh interpreter (the way a user starts it); prints the
median wall time in seconds as one JSON line per command, and whether torch was imported.

    python -m bench.bench_startup --runs 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

PROBES = {
    "fsiad --help": "from fsiad.cli.main import app; from fsiad.cli.errors import run_app; run_app(app, ['--help'])",
    "fsiad methods": "from fsiad.cli.main import app; from fsiad.cli.errors import run_app; run_app(app, ['methods'])",
    "import fsiad": "import fsiad",
    "import torch (for scale)": "import torch",
}
CHECK = "\nimport sys; print('TORCH_LOADED=%s' % ('torch' in sys.modules), file=sys.stderr)"


def measure(code: str, runs: int) -> tuple[float, bool]:
    times, torch_loaded = [], False
    for _ in range(runs):
        t0 = time.perf_counter()
        p = subprocess.run([sys.executable, "-c", code + CHECK], capture_output=True, text=True, check=True)
        times.append(time.perf_counter() - t0)
        torch_loaded = "TORCH_LOADED=True" in p.stderr
    return statistics.median(times), torch_loaded


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    for name, code in PROBES.items():
        wall, torch_loaded = measure(code, a.runs)
        print(json.dumps({"bench": "startup", "command": name, "median_wall_s": round(wall, 3),
                          "runs": a.runs, "torch_imported": torch_loaded}), flush=True)


if __name__ == "__main__":
    main()
