"""Prompt files: default ensemble, expansion, validation with line numbers, CLI."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from fsiad.cli.main import app
from fsiad.prompts import PromptError, default_prompts_path, load_prompts, validate
from fsiad.prompts.loader import check

from tests.cli_helpers import assert_one_line_error, run_cli


def test_default_ensemble_is_valid_and_deduplicated():
    assert validate(default_prompts_path()) == []
    ps = load_prompts()
    assert len(ps.templates) == len(set(ps.templates)) == 22
    assert "a jpeg corrupted photo of a {}." in ps.templates
    assert len(ps.normal_states) == 7 and len(ps.anomalous_states) == 4
    cp = ps.expand("bottle")
    assert (len(cp.normal), len(cp.anomalous)) == (154, 88)
    assert cp.normal[0] == "a cropped photo of the bottle."
    assert "a photo of a damaged bottle for anomaly detection." in cp.anomalous
    assert len(set(cp.normal)) == 154


def test_category_aliases_and_extra_states():
    ps = load_prompts()
    assert ps.expand("metal_nut").class_name == "metal nut"
    assert ps.expand("some_new_part").class_name == "some new part"
    pcb = ps.expand("pcb1")
    assert pcb.class_name == "printed circuit board"
    assert len(pcb.anomalous) == 5 * 22
    assert "a photo of a printed circuit board with bad soldering." in pcb.anomalous


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "p.yaml"
    p.write_text(text)
    return p


def test_validate_reports_file_and_line(tmp_path):
    p = _write(tmp_path, (
        "normal_states:\n"          # 1
        "  - '{}'\n"                # 2
        "  - 'perfect'\n"           # 3  missing placeholder
        "anomalous_states: []\n"    # 4  empty list
        "templates:\n"              # 5
        "  - 'a photo of a {}.'\n"  # 6
        "  - 'a photo of a {}.'\n"  # 7  duplicate: a warning, not an error
        "  - '{} and {}'\n"         # 8  two placeholders
        "colour: red\n"             # 9  unknown key
        "categories:\n"             # 10
        "  screw:\n"                # 11
        "    nmae: bolt\n"          # 12 unknown category key
    ))
    errs = validate(p)
    assert f"{p}:3: 'perfect' in 'normal_states' has no '{{}}' placeholder" in errs
    assert any(e.startswith(f"{p}:4:") and "empty list" in e for e in errs)
    assert not any("duplicates" in e for e in errs)
    (warning,) = check(p)[1]
    assert warning.startswith(f"{p}:7:") and "repeats entry 1 (line 6)" in warning and "kept" in warning
    assert any(e.startswith(f"{p}:8:") and "2 placeholders" in e for e in errs)
    assert any(e.startswith(f"{p}:9:") and "unknown key 'colour'" in e for e in errs)
    assert any(e.startswith(f"{p}:12:") and "unknown key 'nmae'" in e and "screw" in e for e in errs)
    assert len(errs) == 5
    with pytest.raises(PromptError):
        load_prompts(p)


def test_validate_syntax_error_and_missing_keys(tmp_path):
    p = _write(tmp_path, "normal_states: ['{}'\ntemplates: [\n")
    (err,) = validate(p)
    assert err.startswith(f"{p}:") and "YAML syntax error" in err
    q = _write(tmp_path, "templates: ['a {}']\n")
    errs = validate(q)
    assert f"{q}:1: missing required key 'normal_states'" in errs
    assert f"{q}:1: missing required key 'anomalous_states'" in errs


def test_cli_show_validate_init(tmp_path):
    runner = CliRunner()
    res = runner.invoke(app, ["prompts", "show", "--category", "metal_nut"])
    assert res.exit_code == 0, res.output
    assert "class name 'metal nut'" in res.output
    assert "## normal: 154 prompts" in res.output and "## anomalous: 88 prompts" in res.output
    assert "a photo of a metal nut with defect." in res.output

    res = runner.invoke(app, ["prompts", "init", str(tmp_path / "mine")])
    assert res.exit_code == 0, res.output
    copy = tmp_path / "mine" / "prompts.yaml"
    assert copy.read_text() == default_prompts_path().read_text()
    assert runner.invoke(app, ["prompts", "init", str(tmp_path / "mine")]).exit_code == 1

    res = runner.invoke(app, ["prompts", "validate", str(copy)])
    assert res.exit_code == 0 and "OK" in res.output
    copy.write_text(copy.read_text().replace('"flawless {}"', '"flawless"'))
    res = runner.invoke(app, ["prompts", "validate", str(copy)])
    assert res.exit_code == 1
    assert f"{copy}:" in res.output and "'flawless' in 'normal_states' has no '{}' placeholder" in res.output

    # the one error translator prints the invalid file as one line
    assert_one_line_error(run_cli("prompts", "show", "--prompts", copy), f"{copy}:", "placeholder")


def test_huge_prompt_file_refused_before_parsing(tmp_path):
    from fsiad.prompts.loader import MAX_PROMPT_FILE_BYTES, PromptError, load_prompts

    from tests.cli_helpers import assert_one_line_error, run_cli

    big = tmp_path / "big.yaml"
    big.write_text("normal_states: ['{}']\n#" + "x" * MAX_PROMPT_FILE_BYTES + "\n")
    with pytest.raises(PromptError, match="is not a prompt file"):
        load_prompts(big)
    assert_one_line_error(run_cli("prompts", "show", "--prompts", big), "big.yaml", "not a prompt file")
