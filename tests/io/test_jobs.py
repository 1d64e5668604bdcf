"""The one "same job" check shared by train, sweep and segment-stack."""

from __future__ import annotations

import json

import pytest

from tomoseg.errors import TomosegError
from tomoseg.io.jobs import check_same_job, job_difference, read_record


def test_difference_names_the_first_differing_nested_key():
    assert job_difference({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 2}}) is None
    assert job_difference({"a": 1, "b": {"c": 2}}, {"a": 1, "b": {"c": 3}}) == ("b.c", 2, 3)
    assert job_difference({"a": 1}, {"a": 1, "z": 0}) == ("z", None, 0)
    assert job_difference({"a": 1, "extra": 5}, {"a": 1}) is None  # only the identity counts


def test_check_same_job(tmp_path):
    assert check_same_job(tmp_path, "job.json", {"x": 1}, what="a job", remedy="fix it") is None
    (tmp_path / "job.json").write_text(json.dumps({"identity": {"x": 1}, "done": 3}))
    old = check_same_job(tmp_path, "job.json", {"x": 1}, what="a job", remedy="r", part="identity")
    assert old["done"] == 3
    with pytest.raises(
        TomosegError, match=r"holds a job with another x \(1 there, 2 now\); use --new"
    ):
        check_same_job(
            tmp_path, "job.json", {"x": 2}, what="a job", remedy="use --new", part="identity"
        )


def test_yaml_records_and_malformed_ones(tmp_path):
    (tmp_path / "config.yaml").write_text("lr: 0.1\nmodel: unet\n")
    assert read_record(tmp_path / "config.yaml") == {"lr": 0.1, "model": "unet"}
    with pytest.raises(TomosegError, match="another lr"):
        check_same_job(
            tmp_path, "config.yaml", {"model": "unet", "lr": 0.2}, what="a run", remedy="r"
        )
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(TomosegError, match="malformed"):
        read_record(tmp_path / "bad.json")
    (tmp_path / "list.json").write_text("[1]")
    with pytest.raises(TomosegError, match="mapping"):
        read_record(tmp_path / "list.json")


def test_settings_added_later_at_their_default_change_nothing():
    old = {"lr": 0.1}
    assert job_difference(old, {"lr": 0.1, "ema": None}, defaults={"ema": None}) is None
    assert job_difference(old, {"lr": 0.1, "ema": 0.99}, defaults={"ema": None}) == (
        "ema",
        None,
        0.99,
    )


def test_a_mapping_and_a_plain_value_differ():
    old = {"inference": {"decision": {"offset": 1.0}}}
    assert job_difference(old, {"inference": {"decision": None}}) == (
        "inference.decision",
        {"offset": 1.0},
        None,
    )
    assert job_difference({"inference": {"decision": None}}, old)[0] == "inference.decision"
