"""``--config FILE`` / ``--print-config``: a printed configuration, or a run's ``run.json``,
repeats the run exactly; flags on the command line override the file."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from tests.cli_helpers import assert_one_line_error, run_cli
from tests.workflow_helpers import make_inspection_tree, register_test_methods


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> dict[str, Path]:
    register_test_methods()
    return make_inspection_tree(tmp_path_factory.mktemp("cfg"))


def _scores(out: Path) -> dict[str, str]:
    with (out / "scores.csv").open() as fh:
        return {row["name"]: row["score"] for row in csv.DictReader(fh)}


def test_print_config_then_config_reproduces_the_run(tree, tmp_path):
    args = ["--method", "wf_pixdiff", "--shots", 3, "--seed", 5, "--threshold-rule", "mean+2std",
            "--normal", tree["normal"], "-q", tree["targets"]]
    first = run_cli("score", *args, "--out", tmp_path / "a")
    assert first.exit_code == 0, first.output

    printed = run_cli("score", *args, "--out", tmp_path / "b", "--print-config")
    assert printed.exit_code == 0 and not (tmp_path / "b").exists(), printed.output  # printing runs nothing
    cfg = yaml.safe_load(printed.stdout)
    assert cfg["shots"] == 3 and cfg["seed"] == 5 and cfg["threshold_rule"] == "mean+2std"
    (tmp_path / "run.yaml").write_text(printed.stdout)

    again = run_cli("score", "--config", tmp_path / "run.yaml")
    assert again.exit_code == 0, again.output
    assert _scores(tmp_path / "b") == _scores(tmp_path / "a")
    rec_a = json.loads((tmp_path / "a" / "run.json").read_text())
    rec_b = json.loads((tmp_path / "b" / "run.json").read_text())
    assert rec_a["threshold"]["threshold"] == rec_b["threshold"]["threshold"]


def test_run_json_repeats_the_run_and_flags_override(tree, tmp_path):
    first = run_cli("score", "--method", "wf_pixdiff", "--shots", 2, "--seed", 1, "--normal", tree["normal"],
                    "--out", tmp_path / "a", "-q", tree["targets"])
    assert first.exit_code == 0, first.output
    record = json.loads((tmp_path / "a" / "run.json").read_text())
    assert record["settings"]["cli_config"]["seed"] == 1
    again = run_cli("score", "--config", tmp_path / "a" / "run.json", "--out", tmp_path / "c")
    assert again.exit_code == 0, again.output
    assert _scores(tmp_path / "c") == _scores(tmp_path / "a")
    other = run_cli("score", "--config", tmp_path / "a" / "run.json", "--seed", 2, "--out", tmp_path / "d")
    assert other.exit_code == 0, other.output
    assert json.loads((tmp_path / "d" / "run.json").read_text())["settings"]["seed"] == 2


def test_bad_config_files_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    assert_one_line_error(run_cli("score", "--config", bad), "--config", "mapping")
    typo = tmp_path / "typo.yaml"
    typo.write_text("shotz: 4\n")
    assert_one_line_error(run_cli("score", "--config", typo), "shotz")
    assert_one_line_error(run_cli("score", "--config", tmp_path / "missing.yaml"), "missing.yaml")


def _leaf_commands():
    import click
    from fsiad.cli.main import COMMANDS, app

    ctx = click.Context(app)
    for name in COMMANDS:
        cmd = app.get_command(ctx, name)
        if isinstance(cmd, click.Group):
            yield from ((f"{name} {sub}", c) for sub, c in cmd.commands.items())
        else:
            yield name, cmd


def test_every_command_has_config_quiet_and_verbose():
    for name, cmd in _leaf_commands():
        opts = {o for p in cmd.params for o in getattr(p, "opts", [])}
        assert {"--config", "--print-config", "-q", "-v"} <= opts, (name, sorted(opts))


def test_quiet_and_verbose_run_and_restore(monkeypatch):
    import logging
    import os

    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    r = run_cli("models", "-q")
    assert r.exit_code == 0, r.output
    assert "TQDM_DISABLE" not in os.environ and logging.getLogger("fsiad").level == logging.NOTSET
    r = run_cli("prompts", "show", "-v")
    assert r.exit_code == 0 and "# total:" in r.stdout
