"""A value that a config's own validator refuses is one line in the project's words: pydantic's
"Value error, " prefix is dropped on every path (options, config files, pretraining)."""

from __future__ import annotations

import pytest

from tomoseg.config import load_config
from tomoseg.config.pretrain import pretrain_config
from tomoseg.errors import TomosegError


def test_an_option_out_of_range_has_no_pydantic_prefix():
    with pytest.raises(TomosegError) as info:
        load_config(None, {"aug_blur": 0.2})
    assert str(info.value).startswith("invalid option aug_blur=0.2: aug_blur must be")
    assert "Value error" not in str(info.value)


def test_a_config_file_out_of_range_has_no_pydantic_prefix(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("aug_blur: 0.2\n")
    with pytest.raises(TomosegError, match=r"aug_blur: aug_blur must be") as info:
        load_config(cfg)
    assert "Value error" not in str(info.value)


@pytest.mark.parametrize("given", [{"devices": 0}, {"base": {"devices": 0}}])
def test_pretrain_options_out_of_range_have_no_pydantic_prefix(given):
    with pytest.raises(TomosegError, match="devices must be an integer >= 1") as info:
        pretrain_config(**given)
    assert "Value error" not in str(info.value)


def test_the_cli_line_has_no_pydantic_prefix(run_cli, tmp_path):
    code, _, err = run_cli(
        "train", "--images", tmp_path, "--masks", tmp_path, "--out", tmp_path / "r",
        "--aug-blur", "0.2",
    )  # fmt: skip
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1, err
    assert lines[0].startswith("error: invalid option --aug-blur 0.2: aug_blur must be"), err
