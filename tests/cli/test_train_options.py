"""``train``'s options are ``TrainConfig``'s fields: every field an option with its default
shown, a value typed on the command line reaches the run's config, and an option left out
keeps the config file's value."""

from __future__ import annotations

import re

import yaml
from conftest import make_dataset
from typer.testing import CliRunner

from tomoseg.cli import app
from tomoseg.config.schema import TrainConfig


def _shown(default: object, name: str) -> str:
    """How ``--help`` writes a field's default."""
    if isinstance(default, bool):
        flag = name.replace("_", "-")
        return flag if default else f"no-{flag}"
    return str(default)


def _help_lines() -> dict[str, str]:
    """``tomoseg train --help``: option -> its help text (wrapped lines joined)."""
    result = CliRunner().invoke(app, ["train", "--help"], env={"TERMINAL_WIDTH": "200"})
    assert result.exit_code == 0, result.output
    lines: dict[str, str] = {}
    current = None
    for line in result.output.splitlines():
        content = line.strip().strip("│").strip()
        m = re.match(r"(?:\*\s+)?(--[a-z0-9-]+)", content)
        if m:
            current = m.group(1)
            lines[current] = content
        elif current and content and not content.startswith(("╰", "╭")):
            lines[current] += " " + content
    return {k: " ".join(v.split()) for k, v in lines.items()}


def test_every_config_field_is_an_option_with_its_default():
    lines = _help_lines()
    missing, wrong = [], {}
    for name, field in TrainConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if flag not in lines:
            missing.append(flag)
            continue
        extra = field.json_schema_extra if isinstance(field.json_schema_extra, dict) else {}
        if extra.get("shown_default"):  # a default another field sets (epochs: the budget)
            expected = f"[default: ({extra['shown_default']})]"
            if expected not in lines[flag]:
                wrong[flag] = (expected, lines[flag].strip())
        elif field.default is not None:
            expected = f"[default: {_shown(field.default, name)}]"
            if expected not in lines[flag]:
                wrong[flag] = (expected, lines[flag].strip())
        assert field.description, f"TrainConfig.{name} has no description (its --help text)"
        assert field.description.split()[0] in lines[flag], f"{flag} lacks its description"
    assert not missing, f"TrainConfig fields without a train option: {missing}"
    assert not wrong, f"defaults not shown in train --help: {wrong}"
    for flag in ("--width", "--depth", "--focus-fraction", "--out", "--config", "--resume"):
        assert flag in lines


def test_typed_options_reach_the_config_and_the_rest_keep_the_file(tmp_path, run_cli):
    data = make_dataset(tmp_path / "d", shape=(48, 56))
    config = tmp_path / "base.yaml"
    config.write_text("lr: 0.005\nepochs: 1\nwidth: 8\ntile_size: 64\n")
    run = tmp_path / "run"
    code, _, err = run_cli(
        "train", "--data", data, "--out", run, "--config", config, "--width", "4",
        "--depth", "2", "--focus-fraction", "0.5", "--crop-size", "32", "--crops", "8",
        "--batch-size", "4", "--no-tune-decision", "--no-channels-last", "--quiet",
    )  # fmt: skip
    assert code == 0, err
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert (cfg["width"], cfg["depth"], cfg["focus_fraction"]) == (4, 2, 0.5)
    assert cfg["tune_decision"] is False and cfg["channels_last"] is False
    assert cfg["lr"] == 0.005 and cfg["epochs"] == 1 and cfg["tile_size"] == 64  # the file's
    assert cfg["batch_size"] == 4 and cfg["crops"] == 8


def test_a_bad_option_value_is_one_error_naming_the_option(tmp_path, run_cli):
    data = make_dataset(tmp_path / "d", shape=(48, 56))
    code, _, err = run_cli(
        "train", "--data", data, "--out", tmp_path / "r", "--depth", "9", "--quiet"
    )
    assert code == 1 and err.startswith("error:") and "--depth 9" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()
