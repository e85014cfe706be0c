"""Every command with bad arguments: a non-zero exit, one line naming the problem, never a traceback.

Runs through the console script's error translator (``run_app``), as a user would see it.
Cases that need data files build tiny ones; none of them needs real weights.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from fsiad.cli.main import COMMANDS, app
from PIL import Image

from tests.cli_helpers import run_cli


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    good = root / "good"
    good.mkdir()
    for i in range(3):
        Image.new("RGB", (24, 24), (100 + i, 90, 80)).save(good / f"g{i}.png")
    notes = root / "notes.txt"
    notes.write_text("not an image\n")
    bad_yaml = root / "bad.yaml"
    bad_yaml.write_text("shots: [1, 2\n")
    unknown_key = root / "unknown.yaml"
    unknown_key.write_text("no_such_option: 3\n")
    afile = root / "afile"
    afile.write_text("x")
    return {"root": root, "good": good, "notes": notes, "bad_yaml": bad_yaml, "unknown_key": unknown_key,
            "afile": afile}


def _cases(f: dict[str, Path]) -> dict[str, tuple[list, str]]:
    out = f["root"] / "out"
    score = ["score", "--shots", 2, "--normal", f["good"], "--out", out]
    return {
        # every command: an unknown flag and a bad --config
        **{f"{name}-unknown-flag": ([name, "--no-such-flag"], "no-such-flag") for name in COMMANDS if name != "prompts"},
        **{f"{name}-config-bad-yaml": ([name, "--config", f["bad_yaml"]], "--config") for name in
           ("score", "fit", "predict", "eval", "inspect", "models", "methods")},
        "score-config-unknown-key": (["score", "--config", f["unknown_key"]], "no_such_option"),
        "prompts-unknown-sub": (["prompts", "nosuch"], "nosuch"),
        "prompts-show-missing-file": (["prompts", "show", "--prompts", f["root"] / "nope.yaml"], "nope.yaml"),
        "prompts-validate-not-yaml": (["prompts", "validate", f["notes"]], "notes.txt"),
        "prompts-init-under-a-file": (["prompts", "init", f["afile"] / "sub"], "afile"),
        # numeric options validated at parse time
        "score-batch-size-0": ([*score, "--batch-size", 0, f["good"]], "--batch-size"),
        "score-image-size-negative": ([*score, "--image-size", -14, f["good"]], "--image-size"),
        "score-image-size-0": ([*score, "--image-size", 0, f["good"]], "--image-size"),
        "score-chunk-size-0": ([*score, "--chunk-size", 0, f["good"]], "--chunk-size"),
        "score-shots-negative": (["score", "--shots", -1, "--normal", f["good"], "--out", out, f["good"]], "--shots"),
        "score-shots-text": (["score", "--shots", "four", "--normal", f["good"], "--out", out, f["good"]], "--shots"),
        "eval-chunk-size-0": (["eval", "--method", "knn", "--dataset", "textile", "--out", out, "--chunk-size", 0],
                              "--chunk-size"),
        # devices
        "score-device-cuda7": ([*score, "--device", "cuda:7", f["good"]], "cuda:7"),
        "score-device-bogus": ([*score, "--device", "tpu", f["good"]], "--device"),
        "score-precision-bogus": ([*score, "--precision", "fp8", f["good"]], "--precision"),
        # missing inputs
        "predict-missing-model": (["predict", "--model", f["root"] / "nomodel", "--out", out, f["good"]], "nomodel"),
        "inspect-missing-sample": (["inspect", f["root"] / "nope.png", "--normal", f["good"], "--out", out], "nope.png"),
        "models-unknown": (["models", "no_such_encoder"], "no_such_encoder"),
        "methods-unknown": (["methods", "no_such_method"], "no_such_method"),
        "eval-unknown-dataset": (["eval", "--method", "knn", "--dataset", "nosuch", "--root", f["good"],
                                  "--out", out], "nosuch"),
        "score-maeday-with-shots": (["score", "--method", "maeday", "--shots", 2, "--normal", f["good"], "--out", out,
                                     f["good"]], "zero-shot only"),
        "eval-maeday-with-shots": (["eval", "--method", "maeday", "--dataset", "textile", "--shots", 2, "--out", out],
                                   "zero-shot only"),
        "export-missing-model": (["export", "--model", f["root"] / "nomodel", "--out", out], "nomodel"),
        "export-not-a-model": (["export", "--model", f["good"], "--out", out], "model"),
        "train-regad-unknown-dataset": (["train", "regad", "--dataset", "nosuch", "--root", f["good"],
                                         "--out", out / "ckpt.safetensors"], "nosuch"),
        "score-out-is-a-file": (["score", "--shots", 2, "--normal", f["good"], "--out", f["afile"], f["good"]],
                                "afile"),
    }


CASE_NAMES = sorted(_cases({k: Path("/x") for k in
                            ("root", "good", "notes", "bad_yaml", "unknown_key", "afile")}))


@pytest.mark.parametrize("case", CASE_NAMES)
def test_bad_arguments_exit_non_zero_with_one_line(files, case):
    args, needle = _cases(files)[case]
    r = run_cli(*args)
    assert r.exit_code != 0, r.output
    assert "Traceback" not in r.output, r.output
    assert "internal error" not in r.output, r.output
    assert needle in r.output, (needle, r.output)


def test_every_command_is_covered():
    covered = {args[0] for args, _ in _cases({k: Path("/x") for k in
                                              ("root", "good", "notes", "bad_yaml", "unknown_key", "afile")}).values()}
    assert covered == set(COMMANDS)


def test_unexpected_errors_are_one_line_and_debug_shows_the_traceback(monkeypatch):
    import click

    @click.command("boom")
    def boom() -> None:
        raise ZeroDivisionError("bug here")

    monkeypatch.setitem(COMMANDS, "boom", ("cmd_methods", "methods_command", "test"))
    monkeypatch.setattr(type(app), "get_command", lambda self, ctx, name: boom if name == "boom" else None)
    r = run_cli("boom")
    assert r.exit_code == 3 and "internal error: ZeroDivisionError: bug here" in r.stderr
    assert "Traceback" not in r.output and "--debug" in r.stderr
    with pytest.raises(ZeroDivisionError):
        run_cli("--debug", "boom")


def test_help_imports_no_torch():
    code = ("import sys, io, contextlib\nfrom fsiad.cli.errors import run_app\nfrom fsiad.cli.main import app\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n    rc = run_app(app, ['--help'])\n"
            "heavy = [m for m in ('torch', 'open_clip', 'transformers', 'numpy') if m in sys.modules]\n"
            "print(rc, heavy)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "0 []", out
