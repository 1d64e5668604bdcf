"""Run folders are input: crafted weights metadata, ``run.json`` and ``decision.json`` give one
``error:`` line naming the file and the field (a ``TomosegError`` in the API), before any
allocation their numbers decide."""

from __future__ import annotations

import json
from pathlib import Path

import conftest
import numpy as np
import pytest
from conftest import write_png
from safetensors.torch import save_file

import tomoseg
from tomoseg.errors import TomosegError
from tomoseg.models.registry import build_model
from tomoseg.runtime.checkpoint import load_run, weights_metadata
from tomoseg.runtime.run_record import read_run_record

NET = {"name": "unet", "in_channels": 1, "num_classes": 2, "width": 4, "depth": 2}
META = {
    "model": NET,
    "classes": ["background", "cell"],
    "class_of_interest": "cell",
    "normalization": {"lower": 0.0, "upper": 255.0, "p_low": 0.5, "p_high": 99.5},
    "class_weights": [0.6, 2.5],
    "config": {"model": "unet", "width": 4, "depth": 2, "weights": "last"},
    "epoch": 1,
}
#: the most the resident memory may grow while a crafted file is refused (bytes)
FAST_FAIL_BYTES = 400 * 2**20


def one_error(run_cli, *args) -> str:
    """The one ``error:`` line, nothing else printed, no large allocation."""
    return conftest.one_error(run_cli, *args, warnings=False, max_growth=FAST_FAIL_BYTES)


def _deep(n: int) -> str:
    return "[" * n + "]" * n


def make_run(folder: Path, meta_text: str | None = None, **meta) -> Path:
    """A run folder with a tiny network's ``last.safetensors`` (metadata ``META`` updated by
    ``meta``, or the raw ``meta_text``) and a matching ``run.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in build_model(**NET).state_dict().items()}
    full = {**META, **meta}
    text = meta_text if meta_text is not None else json.dumps(full)
    save_file(state, str(folder / "last.safetensors"), metadata={"tomoseg": text})
    (folder / "run.json").write_text(json.dumps(META))
    return folder


@pytest.fixture
def image(tmp_path) -> Path:
    return write_png(tmp_path / "in" / "a.png", np.zeros((16, 16), np.uint8))


@pytest.fixture
def small_machine(monkeypatch):
    """This machine has 8 GiB, whatever it really has (the memory check is deterministic)."""
    monkeypatch.setattr("tomoseg.utils.files.machine_memory", lambda: 8 * 2**30)


# (metadata change, the field the message names)
BAD_METADATA = [
    ({"model": {**NET, "width": 200000}}, "model.width"),
    ({"model": {**NET, "num_classes": 10**9}}, "model.num_classes"),
    ({"model": {**NET, "depth": "abc"}}, "model.depth"),
    ({"model": {**NET, "name": "evil"}}, "model.name"),
    ({"model": {**NET, "in_channels": -1}}, "model.in_channels"),
    ({"classes": "background,cell"}, "classes"),
    ({"classes": ["background", "cell", "x"]}, "3 class names for a network of 2 classes"),
    ({"class_of_interest": "nucleus"}, "class_of_interest"),
    ({"normalization": {"lower": "low", "upper": 1.0}}, "normalization.lower"),
    ({"normalization": {"lower": 1.0, "upper": float("nan")}}, "normalization"),
    ({"normalization": [0, 1]}, "normalization"),
    ({"class_weights": [1.0, -2.0]}, "class_weights"),
    ({"epoch": "abc"}, "epoch"),
    ({"config": {"tile_overlap": "lots"}}, "config"),
]


@pytest.mark.parametrize("change, field", BAD_METADATA, ids=[f for _, f in BAD_METADATA])
def test_crafted_weights_metadata_is_one_line(run_cli, tmp_path, image, change, field):
    run = make_run(tmp_path / "run", **change)
    line = one_error(run_cli, "predict", run, image, "--out", tmp_path / "o", "--device", "cpu")
    assert "last.safetensors" in line and field in line, line
    with pytest.raises(TomosegError, match=field.split(".")[0]):
        load_run(run)
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


@pytest.mark.parametrize(
    "text, words",
    [(_deep(100_000), "nested 100000 levels"), ('{"epoch": ' + "9" * 5000 + "}", "5000 digits")],
    ids=["deep", "long-integer"],
)
def test_unbounded_metadata_json_is_one_line(run_cli, tmp_path, image, text, words):
    run = make_run(tmp_path / "run", meta_text=text)
    line = one_error(run_cli, "predict", run, image, "--out", tmp_path / "o", "--device", "cpu")
    assert "last.safetensors" in line and words in line, line
    with pytest.raises(TomosegError, match=words):
        tomoseg.Predictor.from_run(run)


def test_a_network_beyond_the_memory_is_refused_before_allocation(
    run_cli, tmp_path, image, small_machine
):
    # within the registry's limits, but 27e9 parameters (100 GiB) on an 8 GiB machine
    run = make_run(tmp_path / "run", model={**NET, "width": 512, "depth": 7})
    line = one_error(run_cli, "predict", run, image, "--out", tmp_path / "o", "--device", "cpu")
    assert "last.safetensors" in line and "GiB, more than this machine's 8 GiB" in line, line
    with pytest.raises(TomosegError, match="more than this machine"):
        load_run(run)


DECISION = {"class_id": 1, "offset": 0.0, "min_size": 0, "max_hole": 0}
BAD_DECISIONS = [
    ({"decision": {**DECISION, "class_id": 99}}, "decision.class_id"),
    ({"decision": {**DECISION, "class_id": -1}}, "decision.class_id"),
    ({"decision": {**DECISION, "offset": "0.5"}}, "decision.offset"),
    ({"decision": {**DECISION, "offset": float("nan")}}, "decision.offset"),
    ({"decision": {**DECISION, "offset": 1e300}}, "decision.offset"),
    ({"decision": {**DECISION, "min_size": -5}}, "decision.min_size"),
    ({"decision": {**DECISION, "min_size": 10**18}}, "decision.min_size"),
    ({"decision": {**DECISION, "max_hole": 2.5}}, "decision.max_hole"),
    ({"decision": DECISION, "epoch": "abc"}, "epoch"),
    ({"decision": [1, 2]}, "decision"),
    ({}, "decision"),
]


@pytest.mark.parametrize("record, field", BAD_DECISIONS, ids=[str(r) for r, _ in BAD_DECISIONS])
def test_crafted_decision_is_one_line(run_cli, tmp_path, image, record, field):
    run = make_run(tmp_path / "run")
    (run / "decision.json").write_text(json.dumps(record))
    line = one_error(run_cli, "predict", run, image, "--out", tmp_path / "o", "--device", "cpu")
    assert "decision.json" in line and field in line, line
    with pytest.raises(TomosegError, match="decision.json"):
        tomoseg.Predictor.from_run(run)


@pytest.mark.parametrize(
    "text", [_deep(50_000), '{"decision": {"class_id": ' + "1" * 5000 + "}}"], ids=["deep", "long"]
)
def test_unbounded_decision_json_is_one_line(run_cli, tmp_path, image, text):
    run = make_run(tmp_path / "run")
    (run / "decision.json").write_text(text)
    line = one_error(run_cli, "predict", run, image, "--out", tmp_path / "o", "--device", "cpu")
    assert "decision.json" in line, line


def test_a_valid_decision_and_run_still_segment(run_cli, tmp_path, image):
    run = make_run(tmp_path / "run")
    (run / "decision.json").write_text(json.dumps({"decision": DECISION, "epoch": 1}))
    code, out, err = run_cli("predict", run, image, "--out", tmp_path / "o", "--device", "cpu")
    assert code == 0, err
    assert (tmp_path / "o" / "a.png").is_file()


BAD_RECORDS = [
    (json.dumps({**META, "model": {**NET, "width": 10**6}}), "model.width"),
    (json.dumps({**META, "time_budget": {"plan": {"epochs": "many"}}}), "time_budget.plan.epochs"),
    (json.dumps({**META, "classes": 7}), "classes"),
    (_deep(10_000), "nested"),
    ('{"epoch": ' + "7" * 5000 + "}", "digits"),
    ("[1, 2]", "not a tomoseg run record"),
]


@pytest.mark.parametrize("text, field", BAD_RECORDS, ids=[f for _, f in BAD_RECORDS])
def test_crafted_run_record_is_one_error(tmp_path, text, field):
    run = make_run(tmp_path / "run")
    (run / "run.json").write_text(text)
    with pytest.raises(TomosegError, match="run.json") as exc:
        read_run_record(run)
    assert field in str(exc.value) and "\n" not in str(exc.value)


def test_run_record_keeps_fields_it_does_not_know(tmp_path):
    run = make_run(tmp_path / "run")
    (run / "run.json").write_text(json.dumps({**META, "epochs_done": 3, "complete": False}))
    assert read_run_record(run)["epochs_done"] == 3


def test_weights_metadata_written_by_training_passes(tmp_path):
    """The schema accepts what tomoseg writes (the metadata helper's own output)."""
    run = make_run(tmp_path / "run")
    assert weights_metadata(META)["tomoseg"] == json.dumps(META)
    assert load_run(run).classes == META["classes"]
